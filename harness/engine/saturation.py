"""Budget saturation check: is an attack's budget enough, or would more steps find more?

No anchor paper reports it (AutoAttack only warns about randomness), yet a robust accuracy measured
with too few steps over-reports robustness, most of all for defenses whose prediction is itself an
optimisation (ABS / E-ABS, thesis section 2.2). For every *gradient* attack of a result file with a
step budget (``steps`` in its parameters: PGD, DeepFool, DDN, C&W), the check reruns the attack on
the first ``n`` (default 100) samples of the file with ``FACTOR`` times the steps and ``RESTARTS``
restarts (EOT draws unchanged), verifies its candidates like any attack (:mod:`harness.engine.verify`) and
records in the manifest::

    "budget_check": {"n": 100, "factor": 2, "restarts": 5, "threshold": 0.02,
                     "attacks": {"pgd": {"of": <spec hash checked>, "spec_hash": ..., "budget": ...,
                                         "budget_doubled": ..., "acc": 0.54, "acc_doubled": 0.52,
                                         "delta": 0.02, "acc_both": 0.51, "drop": 0.03, "saturated": false,
                                         "wall_time_s": ...,
                                         "found_more": [<test-set indices robust at the suite's budget,
                                                         broken by the doubled one>]}},
                     "all": {"acc": 0.40, "acc_doubled": 0.40, "delta": 0.0}}

The restarts run one at a time, each with its own seed (the doubled spec with one restart, hashed
with the restart's number): a sample counts as broken by the doubled budget when any restart's
verified candidate breaks it, which is what one run with all restarts verifies too. So a restart
attacks only the samples every earlier restart left standing (a broken sample stays broken): on a
defense that keeps 40% of its samples, restarts 2-5 cost 40% of the first; they pack the samples
still standing into the fewest blocks of at most 1.5 x the block size (:func:`_blocks_of`).
On a deterministic defense restart 1 attacks every sample; restarts 2-5 attack only the standing
samples that the suite's budget left robust as well, the only ones whose fate can change the verdict
(``found_more`` / ``drop``): a sample the suite's run broke counts as broken under both budgets
whatever the doubled run does. Should restart 1 miss one of the suite's breaks, the entry says
``"acc_doubled_bound": true``: ``acc_doubled`` holds restart 1's outcome for the samples the suite
broke, an upper bound on the doubled attack's accuracy on its own (``bench table`` prints it with
"≤"). On a *randomized* defense restart 1, too, attacks only the clean-correct samples the suite's
budget left robust, packed like a later restart's (:func:`_blocks_of`), and the entry records
``"scope": "suite-robust"`` with ``acc_doubled`` and ``delta`` None (not measured; ``bench table``
prints "—"): there the doubled run alone misses some of the suite's breaks with fresh draws anyway
(9 of the 33 samples E-ABS L2's DDN check re-attacked in its restart 2 were such, stop 44), so the
stand-alone figure was a bound, while attacking the suite's breaks again cost most of restart 1
(E-ABS L∞ PGD-80 leaves about a third of its clean-correct samples robust: restart 1 of PGD-160 on the
first 50 samples falls from about 43 attacked samples in five position blocks to about 15 in one
packed block). ``drop``, ``found_more``, the verdict and ``all`` are the same figures either way.
Once a restart has ended with the attack's ``drop`` above the threshold, its own verdict is decided
(unsaturated: more restarts only break more), and the further restarts attack only the standing
samples that every *other* attack leaves robust (:func:`robust_elsewhere`, at the suite's budget and
at the doubled one where checked): the only ones whose fate can still change the row's worst case,
``all``. The entry records ``narrowed_from`` (the first such restart) and a ``note``; its ``drop`` is
then a lower bound (``bench table``, the reproduction notes and the verdict say "at least"). On E-ABS
L2 (stop 66) this cut C&W-200's restarts 2-5 from 26 samples each to 12. On a deterministic
defense, before each further restart a seed probe runs the attack with the previous restart's
seed and with the next one on the first :data:`PROBE` samples still standing (both calls see the
same batches); when the two propose bit-identical candidates (DeepFool, DDN, C&W: no
random start) the attack draws no randomness and the remaining restarts would repeat the previous
one, so the check ends there (``restarts_run`` and a ``note`` say so). This costs 2 x PROBE samples
of one restart instead of the whole of each repeated one (on ABS the doubled C&W is hours per
restart). As a second guard, two restarts that propose bit-identical candidates for the same
samples end the check too; a check whose restarts broke every sample the suite's budget left robust
ends early too (further restarts cannot change ``drop``).

The check is resumable block by block (``batch_size`` samples, at most :func:`check_block`: :data:`CHECK_BLOCK`
or ``--check-block``): after
each block the entry is saved with ``"restarts_done": r`` (the restarts finished), ``"blocks_done"``
(the blocks of the next restart finished, with their candidate digests), the samples still standing
(``robust_doubled``), the samples a packed restart attacks and its block sizes (``pool``,
``pool_blocks``; restarts 2-5) and the seconds
per attacked sample of the latest block, the torch threads and the kind of device it ran on
(``sample_s``, ``sample_threads``, ``sample_device``, for a deadline; a rate from another kind of
device is not used); these are dropped once all
have run, so an interrupted check loses at most one block of one restart (on this project's CPU,
one restart of the doubled PGD-80 on all 100 first samples took 35 minutes on ABS; on E-ABS a block of 25 samples at EOT 5 was estimated at 70-80 min, longer than
the time a session has left after its sweep jobs, hence blocks of 10). A partial entry already
proves an unsaturated budget when its ``drop`` exceeds the threshold (more restarts only break
more samples); ``saturated`` stays None until every restart has run.

``acc_doubled`` is the doubled attack's accuracy on its own and ``delta`` = ``acc - acc_doubled``. The
verdict uses ``drop`` = ``len(found_more) / n``, the accuracy the row's figure loses when the doubled
budget's breaks count too (``acc_both`` = ``acc - drop``: robust under both budgets). ``drop >= delta``
always, and it is the honest figure on a randomized defense: there a doubled run on its own can leave
standing samples the suite's run broke (a fresh random start, fresh EOT draws), and those cancel
the samples it newly breaks in ``delta`` (E-ABS L∞, 40 samples of PGD-160: 2 new breaks, 2 misses,
``delta`` 0). An attack is *not saturated* when ``drop > threshold`` (2 points): ``bench table`` marks
it and :mod:`harness.engine.sanity` warns (:func:`attack_drop` reads files written before ``drop``). ``all``
compares the worst case over every attack on those samples with and without the doubled runs (a
sample counts as robust only if the doubled attacks fail too); when that headline figure drops by
more than the threshold, the row's verdict is unreliable. Attacks that are not gradient attacks,
have no step budget (AutoAttack runs at its own fixed budget; noise, Square and transfer are checks,
not step-limited optimisers) are not rerun. The records of the result file are left as they were:
their budget is the suite's.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace

import torch

from benchcore.errors import BenchUserError
from harness.attacks import get_attack
from harness.engine import threads
from threat_models import AttackSpec

DEFAULT_N = 100
FACTOR = 2
RESTARTS = 5
THRESHOLD = 0.02
CHECK_BLOCK = 10  # samples per resumable block of the check (at most the run's batch size): on E-ABS
# one block of the doubled PGD (PGD-160, EOT 5) is about 30-35 min on one core, so the time a session
# has left after its sweep jobs is used (blocks of 25 were 70-80 min and started in no session)
PROBE = 2  # samples on which two seeds are compared before a further restart of a deterministic defense


def check_block(cfg) -> int:
    """Samples per resumable block of the check: the run's ``check_block`` (``bench run / sweep
    --check-block N``) when set, else :data:`CHECK_BLOCK`. A later restart packs its standing samples
    into blocks of up to 1.5 x this (:func:`pack`). Larger blocks suit a GPU, where an
    inference-time-optimising defense is bound by its kernel launches and a block's time hardly grows
    with its samples (stop 48, one H100, E-ABS C&W 2 x 200 at EOT 5: restarts 3-5 of the L2 check, 28
    standing samples each as one block of ``--check-block 20``, took 204 s together; on this project's
    CPU a block of 14 took about 36 min on two threads). A restart already begun keeps the blocks it
    began with (its saved ``pool_blocks``; position blocks of an unfinished first restart under another
    size start that restart over)."""
    n = getattr(cfg, "check_block", 0) or 0
    return int(n) if int(n) > 0 else CHECK_BLOCK


def stronger(spec: AttackSpec, *, factor: int = FACTOR, restarts: int = RESTARTS) -> AttackSpec | None:
    """``spec`` with ``factor`` times the steps and at least ``restarts`` restarts, or None when the
    check does not apply (not a gradient attack, or no ``steps`` parameter)."""
    info = get_attack(spec.name)  # its declaration: what it uses
    steps = spec.kwargs.get("steps")
    if info.uses != "gradient" or not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        return None
    params = dict(spec.kwargs, steps=factor * steps)
    return AttackSpec(spec.name, tuple(params.items()), max(restarts, spec.restarts), spec.eot, spec.seed, spec.label)


def _hash(spec: AttackSpec, eps: float) -> str:
    return hashlib.sha256(f"budget-check:{spec.spec_hash()}@{eps!r}".encode()).hexdigest()[:12]


def _acc(records: list[dict], key: str) -> float:
    return sum(bool(r["attacks"][key]["correct"]) for r in records if key in r["attacks"]) / max(1, len(records))


def run(ctx, data: dict, *, n: int = DEFAULT_N, save=None, log=None, deadline: float | None = None, clock=time.time, pace=None) -> dict:
    """Run the check for ``ctx``'s attacks that ``data`` (the result file of ``ctx``, read only) holds.

    Resumable: an attack whose entry was computed for the same spec (``of``) and doubled spec is
    kept, or continued from its next restart when it holds ``restarts_done``; ``save(entry)`` is called
    with the ``budget_check`` entry so far after each restart (``bench run`` records it in its file
    there). Returns the ``budget_check`` manifest entry.

    ``deadline`` (seconds since the epoch; ``bench sweep --time-limit / --deadline``): start no block
    (or seed probe) that its estimate says ends after it: seconds per attacked sample of the
    attack's latest block (saved with a partial entry as ``sample_s``, so a later session knows it,
    scaled to this process's torch threads from the ``sample_threads`` it ran on: :func:`on_threads`)
    x the samples the block attacks. A block nothing has been measured for starts while time is
    left only when the row itself has no wall time for the attack; else it is priced from the row
    (:func:`_row_rate`). An attack whose next block does not fit waits for a rerun and the check goes
    on with the next attack (a cheaper one may fit); it returns what it has (saved as after any
    block) and a rerun continues it.

    ``pace()`` is called before each block and seed probe starts (``bench sweep --threads auto``
    fits the process's torch threads to the cores other processes leave free).
    """
    from harness.engine.runner import AttackJob, attack, blocks  # the runner calls this module

    man = data["manifest"]
    m = min(int(n), len(data["records"]))
    old = man.get("budget_check") or {}
    if old.get("n") != m or old.get("factor") != FACTOR or old.get("restarts") != RESTARTS:
        old = {}
    entry = {"n": m, "factor": FACTOR, "restarts": RESTARTS, "threshold": THRESHOLD, "attacks": dict(old.get("attacks") or {})}
    for key, e in entry["attacks"].items():  # a finished entry's verdict follows its rounded drop (older files compared the unrounded one)
        if isinstance(e, dict) and "restarts_done" not in e and isinstance(e.get("delta"), (int, float)):
            entry["attacks"][key] = dict(e, saturated=attack_drop(e, m) <= THRESHOLD)
    head = data["records"][:m]
    done = man.get("attacks") or {}
    jobs, skipped = [], []
    for job in ctx.jobs:
        if job.key not in done or done[job.key].get("spec_hash") != job.hash:
            continue  # only what the file holds, at the budget it holds
        spec2 = stronger(job.spec)
        if spec2 is None:
            skipped.append(job.key)
            continue
        h2 = _hash(spec2, job.threat.eps)
        prev = entry["attacks"].get(job.key) or {}
        if prev.get("of") == job.hash and prev.get("spec_hash") == h2 and "restarts_done" not in prev:
            continue  # finished
        jobs.append((job, AttackJob(job.key, spec2, job.threat, h2, job.randomized)))
    entry["attacks"] = {k: v for k, v in entry["attacks"].items() if k in done and v.get("of") == done[k].get("spec_hash")}
    if skipped:
        entry["not_checked"] = skipped
    clean = [{k: v for k, v in r.items() if k != "attacks"} | {"attacks": {}} for r in head]
    run_bs = ctx.cfg.batch_size  # the block size of checks saved before CHECK_BLOCK
    block = check_block(ctx.cfg)
    if ctx.cfg.batch_size > block:  # the check's own blocks: resumable in pieces of at most `block` samples
        ctx = replace(ctx, cfg=replace(ctx.cfg, batch_size=block))
    device = torch.device(ctx.device).type  # a saved rate is used only on the kind of device it was measured on
    spans = blocks(ctx, 0, m)
    stopped = False
    for orig, job in jobs:
        try:
            prev = entry["attacks"].get(orig.key) or {}
            partial = prev.get("of") == orig.hash and prev.get("spec_hash") == job.hash and "restarts_done" in prev
            first = int(prev["restarts_done"]) if partial else 0
            # blocks finished under another block size (files before CHECK_BLOCK): that restart starts
            # over from the samples still standing (those its finished blocks broke stay broken)
            same_blocks = int(prev.get("block_size") or run_bs) == ctx.cfg.batch_size
            first_block = int(prev.get("blocks_done") or 0) if partial and same_blocks else 0
            block_sha = list(prev.get("block_sha256") or []) if partial and first_block else []
            # a randomized defense's restart 1 attacks only the suite-robust samples (module docstring): the
            # clean errors, broken under any budget, do not stand
            packed = bool(job.randomized)
            standing = set(prev.get("robust_doubled") or []) if partial else {r["index"] for r in head if not packed or r["clean_correct"]}
            wall = float(prev.get("wall_time_s") or 0.0) if partial else 0.0
            last = prev.get("candidates_sha256") if partial else None
            total = job.spec.restarts
            acc = _acc(head, orig.key)
            # restarts 2-5 attack only these: a sample the suite's budget broke counts as broken under both budgets
            suite_robust = {r["index"] for r in head if (r["attacks"].get(orig.key) or {}).get("correct")}
            bound = bool(prev.get("acc_doubled_bound")) if partial else False
            narrowed = prev.get("narrowed_from") if partial else None  # the restart from which only robust_elsewhere samples were attacked
            rate = prev.get("sample_s") if partial else None  # seconds per attacked sample, latest block
            rate_threads = prev.get("sample_threads") if partial else None  # the torch threads it ran on
            if rate is not None and prev.get("sample_device", "cpu") != device:  # entries before stop 48: measured on a CPU
                if log is not None and deadline is not None:
                    log(f"  budget check {orig.key}: the saved rate ({float(rate):.0f} s a sample) was measured on {prev.get('sample_device', 'cpu')}, not {device}: not used for the deadline estimate")
                rate = rate_threads = None
            row_rate = _row_rate(data["records"], done.get(orig.key) or {}, orig.key)

            def out_of_time(count: int, what: str) -> bool:
                left = None if deadline is None else deadline - clock()
                why = None
                per, how = (on_threads(rate, rate_threads), "latest block" + _scaled(rate_threads)) if rate is not None else (row_rate, f"the row's own {orig.key} x {FACTOR}") if row_rate is not None else (None, "")
                if left is not None and left <= 0:
                    why = "the time limit is reached"
                elif left is not None and per is not None and per * count > left:
                    why = f"{what} is estimated at {per * count / 60:.0f} min ({per:.0f} s a sample, {how}) and {left / 60:.0f} min are left"
                if why and log is not None:
                    log(f"  budget check {orig.key}: stopping before {what}: {why}; rerun to continue (finished blocks are saved)")
                return why is not None

            for k in range(first, total):
                one = AttackJob(f"{orig.key} check {k + 1}/{total}", replace(job.spec, restarts=1), job.threat, f"{job.hash}:restart{k}", job.randomized)
                if k > 0 and not job.randomized and standing & suite_robust:
                    if pace is not None:  # first: the estimate prices the block at the threads it will run on
                        pace()
                    if out_of_time(2 * PROBE, f"the seed probe of restart {k + 1}"):
                        raise _OutOfTime(final=deadline is not None and clock() >= deadline)
                    same, probe_wall = _seed_probe(ctx, one, k, clean, standing & suite_robust, spans)
                    wall += probe_wall
                    if same:  # the attack ignores its seed: restart k would repeat restart k - 1
                        e = _entry(orig, job, head, standing, acc, m, wall, complete=True, bound=bound, alone=not packed)
                        e["restarts_run"], e["stopped"], e["probed"] = k, "deterministic", same
                        e["note"] = (f"a probe on {same} sample(s) still standing: the seeds of restarts {k} and {k + 1} proposed identical candidates "
                                     f"(a deterministic defense and an attack that draws no randomness): restarts {k + 1}-{total} would repeat "
                                     f"restart {k} and were not run")
                        entry["attacks"][orig.key] = e
                        entry["all"] = worst_case(head, done, entry["attacks"])
                        if log is not None:
                            log(f"  budget check {orig.key:<9} accuracy {acc:.3f} -> {len(standing) / max(1, m):.3f} with {job.budget} on the first {m} samples "
                                f"(restart {k + 1}'s seed proposed restart {k}'s candidates: the attack is deterministic here)")
                        if save is not None:
                            save(entry)
                        break
                # a sample an earlier restart broke stays broken: attack only the ones still standing
                # (after restart 1, or from the start on a randomized defense, only those the suite's budget
                # left robust too: the others cannot change the verdict)
                bound = bound or (k > 0 and not packed and bool(standing - suite_robust))
                # once the attack's own verdict is decided (unsaturated), a restart attacks only the samples
                # every other attack leaves robust: the rest cannot change the row's worst case (stop 66)
                if narrowed is None and k > 0 and round(len(suite_robust - standing) / max(1, m), 6) > THRESHOLD:  # _entry's drop
                    narrowed = k + 1
                elsewhere = robust_elsewhere(head, entry["attacks"], orig.key) if narrowed is not None else None
                bound = bound or (elsewhere is not None and not packed and bool(standing - elsewhere))
                todo = [r | {"clean_correct": bool(r["clean_correct"]) and r["index"] in standing and ((k == 0 and not packed) or r["index"] in suite_robust)
                             and (elsewhere is None or r["index"] in elsewhere)} for r in clean]
                start_block = first_block if k == first else 0
                digests = block_sha if k == first else []
                resumed = prev if k == first and start_block else None
                plan, pool = _blocks_of(ctx, one, k, todo, head, spans, resumed, packed=packed)
                for bi in range(start_block, len(plan)):
                    bctx, b0, recs, hrecs, bjob = plan[bi]
                    count = sum(bool(r["clean_correct"]) for r in recs)
                    if pace is not None:  # first: the estimate prices the block at the threads it will run on
                        pace()
                    if count and out_of_time(count, f"block {bi + 1} of {len(plan)} of restart {k + 1}"):
                        raise _OutOfTime(final=deadline is not None and clock() >= deadline)
                    span = threads.mark()
                    run_b = attack(bctx, bjob or one, recs, b0)
                    if count:  # the threads it ran on: --threads auto may change them during the block
                        rate, rate_threads = run_b.entry["wall_time_s"] / count, threads.recorded(span)
                    standing -= {r["index"] for r, o in zip(hrecs, run_b.outcomes) if not o["correct"]}
                    wall += run_b.entry["wall_time_s"]
                    digests = [*digests, run_b.candidates_sha256]
                    if bi + 1 < len(plan):  # resumable block by block within a restart
                        e = _entry(orig, job, head, standing, acc, m, wall, complete=False, bound=bound, alone=not packed)
                        e.update(restarts_done=k, blocks_done=bi + 1, block_size=ctx.cfg.batch_size, block_sha256=digests, robust_doubled=sorted(standing), candidates_sha256=last, sample_s=rate,
                                 sample_threads=rate_threads, sample_device=device)
                        if pool is not None:
                            e["pool"], e["pool_blocks"] = pool, [len(p[2]) for p in plan]
                        if narrowed is not None:
                            e["narrowed_from"] = narrowed
                        entry["attacks"][orig.key] = e
                        entry["all"] = worst_case(head, done, entry["attacks"])
                        if save is not None:
                            save(entry)
                digest = hashlib.sha256("".join(digests).encode()).hexdigest()
                acc2 = len(standing) / max(1, m)
                # a deterministic defense and two seeds that proposed the very same candidates for the
                # same samples: the attack draws no randomness here, so the remaining restarts would repeat them
                repeated = not job.randomized and digest == last
                last = digest
                # every sample the suite's budget left robust is broken: more restarts cannot change the verdict
                exhausted = not standing & suite_robust and k + 1 < total
                complete = k + 1 == total or repeated or exhausted
                e = _entry(orig, job, head, standing, acc, m, wall, complete=complete, bound=bound, alone=not packed)
                if repeated:
                    e["restarts_run"], e["stopped"] = k + 1, "deterministic"
                    e["note"] = (f"restarts {k} and {k + 1} proposed identical candidates (a deterministic defense and an attack that "
                                 f"draws no randomness): the other {total - k - 1} would repeat them and were not run")
                if exhausted and not repeated:
                    e["restarts_run"], e["stopped"] = k + 1, "all broken"
                    e["note"] = (f"every sample the suite's budget left robust was broken after {k + 1} restart(s): the other {total - k - 1} "
                                 "could not change the verdict and were not run")
                if narrowed is not None:
                    e["narrowed_from"] = narrowed
                    e["note"] = ((e.get("note", "") + "; ") if e.get("note") else "") + (
                        f"restarts {narrowed}-{total} attacked only the samples every other attack left robust (the drop already exceeded "
                        f"the threshold, so this attack's verdict was decided; only those samples can change the worst case): its drop is a lower bound")
                if not complete:
                    e["restarts_done"] = k + 1
                    e["robust_doubled"] = sorted(standing)
                    e["candidates_sha256"] = last
                    e["sample_s"], e["sample_threads"], e["sample_device"] = rate, rate_threads, device
                entry["attacks"][orig.key] = e
                entry["all"] = worst_case(head, done, entry["attacks"])
                if log is not None:
                    so_far = f" (restart {k + 1} repeated restart {k}: the attack is deterministic here)" if repeated else "" if complete else f" (restart {k + 1} of {total})"
                    figure = f"{acc2:.3f}" if not packed else f"{e['acc_both']:.3f} counting both budgets"
                    log(f"  budget check {orig.key:<9} accuracy {acc:.3f} -> {figure} with {job.budget} on the first {m} samples{so_far}")
                if save is not None:
                    save(entry)
                if complete:
                    break
        except _OutOfTime as why:
            if why.final:
                return _stop(entry, head, done)
            stopped = True  # this attack waits for a rerun; a cheaper one after it may still fit
    if stopped:
        return _stop(entry, head, done)
    if not jobs and entry["attacks"]:
        entry["all"] = worst_case(head, done, entry["attacks"])
    return entry


def merge_entry(data: dict, entry: dict, keys) -> dict:
    """The ``budget_check`` entry of the result file ``data`` as it is now on disk, with the entries of
    attacks ``keys`` taken from ``entry`` (one process's :func:`run`) and the others kept: several
    processes may check one file's attacks at the same time (``bench sweep`` claims one attack at a
    time), each writing only its own. A file checked with another ``n``, factor or restart count
    keeps none of its old entries. ``all`` is recomputed over every entry."""
    old = data["manifest"].get("budget_check") or {}
    same = all(old.get(k) == entry.get(k) for k in ("n", "factor", "restarts"))
    done = data["manifest"].get("attacks") or {}
    attacks = {k: v for k, v in (old.get("attacks") or {}).items() if k in done} if same else {}
    for k in keys:
        if k in (entry.get("attacks") or {}):
            attacks[k] = entry["attacks"][k]
    out = {k: v for k, v in entry.items() if k not in ("attacks", "all", "not_checked")}
    out["attacks"] = {k: attacks[k] for k in done if k in attacks}  # in the file's attack order
    skipped = [k for k in done if k in set(old.get("not_checked") or [] if same else []) | set(entry.get("not_checked") or [])]
    if skipped:
        out["not_checked"] = skipped
    if out["attacks"]:
        out["all"] = worst_case(data["records"][: int(out["n"])], done, out["attacks"])
    return out


def so_far(records: list[dict], e: dict, key: str) -> dict | None:
    """While the first restart of attack ``key``'s check runs (``e`` its partial entry): accuracy with
    the suite's budget, with the doubled one alone and under both, on the samples of its finished
    blocks (``records``: the result file's). None otherwise. The entry's own ``acc_doubled`` counts
    the samples not yet attacked as standing: a bound that reads oddly until they are."""
    if e.get("restarts_done") != 0 or not e.get("blocks_done") or not e.get("block_size") or "pool" in e:
        return None  # a packed restart 1 (randomized defense) attacks only suite-robust samples: its entry's drop is already exact
    seen = records[: min(int(e["blocks_done"]) * int(e["block_size"]), len(records))]
    standing = set(e.get("robust_doubled") or [])
    n = max(1, len(seen))
    acc = _acc(seen, key)
    acc2 = sum(r["index"] in standing for r in seen) / n
    both = sum(bool(r["attacks"][key]["correct"]) and r["index"] in standing for r in seen if key in r["attacks"]) / n
    return {"n": len(seen), "acc": acc, "acc_doubled": acc2, "delta": round(acc - acc2, 6), "acc_both": both, "drop": round(acc - both, 6)}


class _OutOfTime(Exception):
    """An attack's next block of the check does not fit before the deadline (``final``: none will,
    the deadline has passed); :func:`run` goes on with the next attack unless ``final``."""

    def __init__(self, *, final: bool):
        super().__init__("out of time")
        self.final = final


def _stop(entry: dict, head: list[dict], done: dict) -> dict:
    """The entry as saved after the last finished block, when a deadline stops the check."""
    if entry["attacks"]:
        entry["all"] = worst_case(head, done, entry["attacks"])
    return entry


def robust_elsewhere(head: list[dict], checks: dict, key: str) -> set:
    """The samples of ``head`` (the checked records) that every attack of the row other than ``key``
    leaves robust, at the suite's budget and, where ``checks`` (the ``budget_check`` attack entries)
    has one, at the doubled one: the only samples whose fate under ``key`` can change the worst case
    over all attacks (a sample another attack breaks is not robust in All whatever ``key`` does)."""
    found = {i for k, e in checks.items() if k != key and isinstance(e, dict) for i in (e.get("found_more") or [])}
    return {r["index"] for r in head if r["index"] not in found and all(bool(o.get("correct")) for a, o in r["attacks"].items() if a != key)}


def narrowable(entry: dict, m: int) -> bool:
    """Whether the restarts of a check after ``entry`` (its partial entry) may attack only the samples
    :func:`robust_elsewhere`: its own verdict is already decided (its ``drop`` exceeds the threshold,
    and further restarts only break more), so what is left to learn is whether the doubled attack
    changes the worst case over all attacks, and only those samples can."""
    return isinstance(entry, dict) and int(entry.get("restarts_done") or 0) >= 1 and attack_drop(entry, m) > THRESHOLD


def _blocks_of(ctx, one, k: int, todo: list[dict], head: list[dict], spans, resumed: dict | None, *, packed: bool = False):
    """The blocks restart ``k`` (job ``one``) runs: ``(context, start, clean records, result records,
    job or None)`` each, and the pool it packs (None for position blocks).

    Restart 1 attacks every sample: the position blocks ``spans`` of ``ctx`` (``packed``, a randomized
    defense: it attacks only the suite-robust samples, packed as a later restart). A later restart attacks
    only the samples still standing (``todo``'s clean-correct ones), packed in order (their *pool*,
    saved with a partial entry with its block sizes, so that a resumed restart keeps its blocks) into
    the fewest blocks of at most 1.5 x ``batch_size`` samples, of balanced sizes (:func:`pack`):
    position blocks would hold 2-3 standing samples each, and one call of an inference-time defense
    has a cost that hardly shrinks with its batch (E-ABS decodes its candidate set for every forward
    pass: a PGD-160 block of 2 samples took 838 s, one of 10 about 1700-1950 s, so 13 standing samples
    cost about 2300 s as one block and 2700 s as blocks of 10 and 3). Each packed block is one batch of
    its own context, seeded from its job (the restart's, with the block's number). A restart begun
    with position blocks (a partial entry without a pool) finishes with them; one saved before
    ``pool_blocks`` keeps its blocks of ``batch_size``."""
    if (k == 0 and not packed) or (resumed is not None and "pool" not in resumed):
        return [(ctx, b0, todo[b0:b1], head[b0:b1], None) for b0, b1 in spans], None
    at_of = {r["index"]: p for p, r in enumerate(head)}
    pool = list(resumed["pool"]) if resumed is not None else [r["index"] for r in todo if r["clean_correct"]]
    bs = ctx.cfg.batch_size
    if resumed is not None and "pool_blocks" in resumed:
        sizes = [int(b) for b in resumed["pool_blocks"]]
    elif resumed is not None:
        sizes = [min(bs, len(pool) - c0) for c0 in range(0, len(pool), bs)]
    else:
        sizes = pack(len(pool), bs)
    if sum(sizes) != len(pool) or min(sizes, default=1) < 1:
        raise BenchUserError(f"budget check: the saved pool of restart {k + 1} ({len(pool)} samples) does not match its blocks {sizes}; delete the partial budget_check entry to rerun that restart")
    plan, c0 = [], 0
    for bi, size in enumerate(sizes):
        at = [at_of[i] for i in pool[c0:c0 + size]]
        sub = replace(ctx, ids=[ctx.ids[p] for p in at], x=ctx.x[at], y=ctx.y[at], cfg=replace(ctx.cfg, batch_size=size))
        plan.append((sub, 0, [todo[p] for p in at], [head[p] for p in at], replace(one, hash=f"{one.hash}:block{bi}")))
        c0 += size
    return plan, pool


def pack(count: int, batch_size: int) -> list[int]:
    """Block sizes for ``count`` samples: the fewest blocks of at most ``batch_size + batch_size // 2``
    (at least 1), as equal as they can be, larger first (13 standing at batch size 10: one block of 13;
    16: 8 + 8; 31: 11 + 10 + 10)."""
    if count <= 0:
        return []
    cap = max(1, batch_size + batch_size // 2)
    nb = -(-count // cap)
    q, r = divmod(count, nb)
    return [q + 1] * r + [q] * (nb - r)


def _seed_probe(ctx, one, k: int, clean: list[dict], standing: set, spans) -> tuple[int, float]:
    """Run restart ``k``'s job ``one`` and the same job with restart ``k - 1``'s seed on the first
    :data:`PROBE` samples still standing (both calls see the same batches). Returns (the number of
    samples probed if the two proposed bit-identical candidates, else 0; their wall time)."""
    from harness.engine.runner import AttackJob, attack

    pick = [i for i, r in enumerate(clean) if r["clean_correct"] and r["index"] in standing][:PROBE]
    if not pick:
        return 0, 0.0
    b0 = next(a for a, b in spans if a <= pick[0] < b)  # the attack runs whole blocks (its seeds are per block)
    b1 = next(b for a, b in spans if a <= pick[-1] < b)
    recs = [r | {"clean_correct": i in pick} for i, r in enumerate(clean[b0:b1], start=b0)]
    stem = one.hash.rsplit(":", 1)[0]
    runs = [attack(ctx, AttackJob(f"{one.key} seed probe", one.spec, one.threat, f"{stem}:restart{r}", one.randomized), recs, b0) for r in (k - 1, k)]
    wall = sum(r.entry["wall_time_s"] for r in runs)
    return (len(pick) if runs[0].candidates_sha256 == runs[1].candidates_sha256 else 0), wall


def _entry(orig, job, head: list[dict], standing: set, acc: float, m: int, wall: float, *, complete: bool, bound: bool = False, alone: bool = True) -> dict:
    """The check's entry for attack job ``orig`` (rerun as ``job``) with the samples ``standing`` so far
    (``bound``: a later restart skipped standing samples the suite's budget broke, so ``acc_doubled`` is an upper bound;
    ``alone=False``: the doubled run attacked only the suite-robust samples, so its accuracy alone is not measured)."""
    acc2 = len(standing) / max(1, m) if alone else None
    # test-set indices robust at the suite's budget but broken by the doubled one
    found = [r["index"] for r in head if r["attacks"][orig.key]["correct"] and r["index"] not in standing]
    drop = round(len(found) / max(1, m), 6)  # rounded: 0.49 - 0.47 is a drop of exactly 2 points, not 2.0000000000000018
    return {
        "of": orig.hash, "spec_hash": job.hash, "budget": orig.budget,
        "budget_doubled": job.budget, "restarts": job.spec.restarts, "acc": acc, "acc_doubled": acc2,
        "delta": None if acc2 is None else round(acc - acc2, 6), "acc_both": round(acc - drop, 6), "drop": drop,
        # decided once every restart ran, or earlier when the drop already exceeds the threshold
        # (later restarts and blocks only break more samples)
        "saturated": (drop <= THRESHOLD) if complete else (False if drop > THRESHOLD else None),
        "wall_time_s": round(wall, 3),
        "found_more": found,
    } | ({"acc_doubled_bound": True} if bound and alone else {}) | ({} if alone else {"scope": "suite-robust"})


def attack_drop(e: dict, n: int | None) -> float:
    """Accuracy the row's figure loses on the ``n`` checked samples when the doubled budget's breaks
    count too (entry ``e``'s ``found_more`` over ``n``); at least its stand-alone ``delta`` (an entry
    without ``found_more`` has only that)."""
    delta = float(e.get("delta") or 0)
    found = e.get("found_more")
    if isinstance(found, list) and isinstance(n, int) and n > 0:
        return max(delta, round(len(found) / n, 6))
    return delta


def on_threads(rate: float, then, now: int | None = None) -> float:
    """Seconds per sample ``rate``, measured on ``then`` torch threads, expected on ``now`` (default:
    this process's count): ``rate x then / now``, the ideal scaling (``rate`` itself when ``then`` is
    unknown: entries saved before stop 47). Only the deadline estimate uses it. ``bench sweep --threads
    auto`` gives a process the cores another one left, so the rate of its latest block, measured on
    one thread beside that process, would keep a block that fits from starting (stop 47: E-ABS C&W-200
    restart 2 block 1 ran 388 s a sample on one thread beside DDN and the test suite; block 2 was
    refused at 91 min with 57 left). A rate measured beside other processes includes their
    contention, so the ideal scaling is not the optimistic bound it looks: that block's 388 s a sample
    scale to 194 s on two threads, and block 2 then ran 153 s a sample on two threads alone."""
    now = torch.get_num_threads() if now is None else now
    if isinstance(then, (int, float)) and not isinstance(then, bool) and then > 0 and now > 0:  # a float: a time-weighted mean (harness.engine.threads)
        return float(rate) * then / now
    return float(rate)


def _scaled(then) -> str:
    """How the deadline message names a rate scaled by :func:`on_threads` ("" when it is not)."""
    if on_threads(1.0, then) == 1.0:
        return ""
    return f", measured on {then} thread(s), scaled to this process's {torch.get_num_threads()}"


def _row_rate(records: list[dict], entry: dict, key: str) -> float | None:
    """Seconds per attacked sample of a check block nothing has been measured for: the row's own run
    of attack ``key`` (its ``wall_time_s`` over the samples it attacked, the clean-correct ones)
    times :data:`FACTOR` (the doubled steps). An upper bound for attacks that stop early (DeepFool,
    DDN); None when the row has no wall time for it."""
    wall = entry.get("wall_time_s")
    attacked = sum(bool(r.get("clean_correct")) and key in (r.get("attacks") or {}) for r in records)
    if not isinstance(wall, (int, float)) or wall <= 0 or not attacked:
        return None
    return FACTOR * float(wall) / attacked


def worst_case(head: list[dict], attacks: dict, checked: dict) -> dict:
    """Accuracy under the worst case over every attack on the checked samples ``head``, without and
    with the doubled runs (a sample stays robust only if no doubled attack broke it), and the drop."""
    keys = [k for k in attacks if all(k in r["attacks"] for r in head)]
    if not head or not keys:
        return {"acc": None, "acc_doubled": None, "delta": None}
    broken = {i for e in checked.values() for i in e.get("found_more", [])}
    base = [bool(r["clean_correct"]) and all(r["attacks"][k]["correct"] for k in keys) for r in head]
    both = [ok and r["index"] not in broken for r, ok in zip(head, base)]
    acc, acc2 = sum(base) / len(head), sum(both) / len(head)
    return {"acc": acc, "acc_doubled": acc2, "delta": round(acc - acc2, 6)}


def unsaturated(data: dict) -> list[tuple[str, dict]]:
    """``(attack key, entry)`` of the attacks whose doubled budget broke more than the threshold of the
    checked samples that the suite's budget left robust (:func:`attack_drop`)."""
    check = data["manifest"].get("budget_check") or {}
    thr = float(check.get("threshold", THRESHOLD))
    return [(k, e) for k, e in (check.get("attacks") or {}).items() if isinstance(e, dict) and attack_drop(e, check.get("n")) > thr]


def _doubled_of(entry: dict) -> tuple[AttackSpec | None, str | None]:
    """The doubled spec of a result file's attack entry (its ``spec`` as saved) and that spec's check
    hash (:func:`_hash`, at the entry's ``eps``): (None, None) when the check does not apply to it or
    the entry is not a harness attack spec (a plugin's unknown name, an old file)."""
    spec = (entry or {}).get("spec") or {}
    try:
        orig = AttackSpec(spec["name"], tuple((spec.get("params") or {}).items()), int(spec.get("restarts", 1)), int(spec.get("eot", 1)),
                          int(spec.get("seed", 0)), str(spec.get("label", "")))
        doubled = stronger(orig)
    except (KeyError, TypeError, ValueError, BenchUserError):
        return None, None
    if doubled is None:
        return None, None
    eps = entry.get("eps")
    return doubled, (_hash(doubled, eps) if isinstance(eps, (int, float)) and not isinstance(eps, bool) else None)


def checkable(data: dict, names) -> tuple[str, ...]:
    """Of the attack names ``names``, those that the result file ``data`` holds with a step budget the
    check doubles (:func:`stronger`); the others are its ``not_checked``."""
    doubled = {(e.get("spec") or {}).get("name") or k.split("@")[0] for k, e in (data["manifest"].get("attacks") or {}).items()
               if isinstance(e, dict) and _doubled_of(e)[0] is not None}
    return tuple(a for a in names if a in doubled)


def pending(data: dict, n: int = DEFAULT_N, attacks=None) -> dict[str, dict]:
    """The attacks of the result file ``data`` whose budget check on its first ``n`` samples has work
    left, as :func:`run` would see it, without building the defense: attack key -> its partial entry
    (``{}`` when not started, or when its entry is for another budget, ``n``, factor or restart count).
    Only the gradient attacks with a step budget that the check doubles; ``attacks``: only these
    attack names (a plan's ``check_attacks``). ``bench sweep`` skips a file with none (a finished check
    costs nothing: no defense to load, no trust checks to rerun) and one whose next blocks cannot fit
    its deadline (:func:`next_block_s`)."""
    man = data.get("manifest") or {}
    m = min(int(n), len(data.get("records") or []))
    check = man.get("budget_check") or {}
    same = check.get("n") == m and check.get("factor") == FACTOR and check.get("restarts") == RESTARTS
    out = {}
    for key, a in (man.get("attacks") or {}).items():
        if not isinstance(a, dict) or (attacks is not None and ((a.get("spec") or {}).get("name") or key.split("@")[0]) not in attacks):
            continue
        doubled, h2 = _doubled_of(a)
        if doubled is None:
            continue
        e = (check.get("attacks") or {}).get(key) if same else None
        ours = isinstance(e, dict) and e.get("of") == a.get("spec_hash") and h2 is not None and e.get("spec_hash") == h2
        if not ours or "restarts_done" in e:
            out[key] = dict(e) if ours else {}
    return out


def next_block_s(data: dict, key: str, entry: dict, *, n: int = DEFAULT_N, block: int = CHECK_BLOCK, threads: int | None = None,
                 device: str | None = None) -> float | None:
    """Estimated seconds of the next piece of attack ``key``'s check on the first ``n`` samples
    (``entry``: its partial entry from :func:`pending`, ``{}`` when not started), priced as :func:`run`
    prices it: seconds per attacked sample of its latest block (``sample_s``), else the row's own run
    of the attack (:func:`_row_rate`), x the samples that piece attacks: the clean-correct ones of the
    next position block in restart 1 (on a randomized defense, whose restart 1 packs the suite-robust
    samples as a later restart does, its next packed block), the next packed block of the samples still standing and robust
    at the suite's budget in later restarts (on a deterministic defense the seed probe of :data:`PROBE` x 2 samples comes first).
    ``block``: the check's block size (the run's batch size when smaller). A ``sample_s`` measured on
    ``sample_threads`` torch threads is scaled to ``threads`` (default: this process's; :func:`on_threads`);
    one measured on another kind of device than ``device`` (``"cpu"`` / ``"cuda"``; default: CUDA
    where torch sees it, as ``--device auto``) is not used. None when nothing prices it."""
    records = data.get("records") or []
    m = min(int(n), len(records))
    rate = entry.get("sample_s")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0 and entry.get("sample_device", "cpu") == device:
        rate = on_threads(rate, entry.get("sample_threads"), threads)
    else:
        rate = _row_rate(records, (data["manifest"].get("attacks") or {}).get(key) or {}, key)
    if rate is None:
        return None
    r, b = int(entry.get("restarts_done") or 0), int(entry.get("blocks_done") or 0)
    bs = int(entry.get("block_size") or block)
    packed = data["manifest"].get("randomized") is True  # restart 1 packs the suite-robust samples too (run)
    if r == 0 and not packed and not entry.get("pool"):
        count = sum(bool(x.get("clean_correct")) for x in records[b * bs:min((b + 1) * bs, m)])
    elif b and entry.get("pool_blocks"):
        sizes, pool = [int(s) for s in entry["pool_blocks"]], list(entry.get("pool") or [])
        # the members of the block the suite's budget left robust (a pool saved before restarts skipped the others holds both)
        member = pool[sum(sizes[:b]):sum(sizes[:b + 1])] if b < len(sizes) else []
        robust = {x["index"] for x in records[:m] if (x.get("attacks", {}).get(key) or {}).get("correct")}
        count = sum(i in robust for i in member) if member else 0
    else:
        standing = set(entry.get("robust_doubled") or []) if r else {x["index"] for x in records[:m] if x.get("clean_correct")}
        if r and (entry.get("narrowed_from") or narrowable(entry, m)):  # only the samples every other attack leaves robust (run)
            standing &= robust_elsewhere(records[:m], (data["manifest"].get("budget_check") or {}).get("attacks") or {}, key)
        count = (pack(sum(x["index"] in standing and bool((x.get("attacks", {}).get(key) or {}).get("correct")) for x in records[:m]), bs) or [0])[0]
        if not b and data["manifest"].get("randomized") is False:
            count = min(count, 2 * PROBE)
    return float(rate) * count


def unchecked(data: dict) -> list[str]:
    """The row's gradient attacks that its budget check (when it has one) has not finished: not
    started (``"pgd: not checked"``; e.g. a plan's ``check_attacks`` or a deadline left it out)
    or stopped between blocks or restarts (``"pgd: 2 of 5 restarts and 1 block of restart 3 of 5 done"``). The drop of the worst case
    (:func:`headline_drop`) covers the finished attacks only, so a row can read as saturated while
    one of its attacks was never doubled; :mod:`harness.engine.sanity` warns with these."""
    check = data["manifest"].get("budget_check") or {}
    if not check:
        return []
    done = check.get("attacks") or {}
    out = []
    for key, entry in (data["manifest"].get("attacks") or {}).items():
        e = done.get(key)
        if _doubled_of(entry)[0] is None or (isinstance(e, dict) and e.get("saturated") is False):
            continue  # not doubled by the check, or already shown unsaturated (more blocks only break more)
        if not isinstance(e, dict):
            out.append(f"{key}: not checked")
        elif progress(e):
            out.append(f"{key}: {progress(e)}")
    return out


def progress(entry: dict) -> str | None:
    """How far an unfinished check entry got (``"2 of 5 restarts and 1 block of restart 3 of 5
    done"``), or None when it is finished (it has no ``restarts_done``)."""
    if "restarts_done" not in entry:
        return None
    r, b, total = int(entry["restarts_done"]), int(entry.get("blocks_done") or 0), int(entry.get("restarts") or RESTARTS)
    blocks = f"{b} block{'s' if b != 1 else ''} of restart {r + 1}"
    return f"{r} of {total} restarts and {blocks} done" if r and b else f"{r} of {total} restarts done" if r else f"{blocks} of {total} done"


def headline_drop(data: dict) -> float | None:
    """How much the worst case over all attacks drops on the checked samples with the doubled budgets."""
    check = data["manifest"].get("budget_check") or {}
    d = (check.get("all") or {}).get("delta")
    return None if d is None else float(d)
