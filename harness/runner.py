"""Evaluate one defense on one dataset and norm with one attack suite; write the result file.

Data flow: dataset -> defense -> attack (propose) -> verify -> record. The result file is rewritten
atomically after the clean pass and after every attack, so an interrupted run keeps every finished
attack and a rerun resumes with the first unfinished one (``fresh=True`` recomputes everything).

Eps sweeps: an attack of a suite may list ``eps = [0.0, 0.1, ...]`` (e.g. ``suites/fgm-sweep.toml``,
Yao et al. Table 1). It then runs once per eps, each verified against a ThreatModel with that eps and
recorded under its own attack key ``<name>@<eps>`` (``fgm@0.2``) whose manifest entry holds the eps.

Batching and randomness: samples are processed in blocks of ``batch_size`` consecutive sample ids,
each block seeded from (seed, attack hash, block index), so the records of a sample do not depend
on how the samples are split into sweep shards (:mod:`harness.sweep` evaluates block-aligned
ranges with :func:`evaluate_samples`, the same function ``bench run`` uses).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness import datasets, saturation
from harness.attacks import AttackReport, broken_plugins, find_attack, get_attack, origin_of, run_attack
from harness.eot import EOTModel
from harness.errors import BenchUserError
from harness.gradcheck import check_gradients, describe
from harness.models import load_defense, variant_key
from harness.provenance import code_commit, command_line, device_name, package_versions, resolve_device
from harness.results import SCHEMA_VERSION, load_result, result_path, write_result
from harness.sanity import model_checks, outcome_checks
from harness.verify import score, verify
from threat_models import NORMS, AttackSpec, Suite, SuiteAttack, ThreatModel, default_threat, load_suite


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one evaluation (recorded in the manifest)."""

    defense: str
    dataset: str
    norm: str
    suite: str = "quick"
    n: int = 200
    seed: int = 0
    device: str = "auto"
    results_dir: str = "results"
    fresh: bool = False
    batch_size: int = 100
    eps: float | None = None
    attacks: tuple[str, ...] | None = None  # subset of the suite's attacks, by name
    progress: bool = True
    train_if_missing: bool = True
    arch: str | None = None  # network option of the CNN family (--arch); results go to <defense>-<arch>.json
    defense_options: tuple[tuple[str, Any], ...] = ()  # other constructor options (--option KEY=VALUE)
    check_budget: int = 0  # > 0: budget saturation check on the first that many samples (harness/saturation.py)

    @property
    def options(self) -> dict:
        """Constructor options of the defense (unset ones left out)."""
        opts = {"arch": self.arch} if self.arch is not None else {}
        opts.update(dict(self.defense_options))
        return opts


@dataclass(frozen=True)
class AttackJob:
    """One attack run of a suite: the spec, the threat model it is verified against and its result key."""

    key: str  # attack key in the result file: "pgd", or "fgm@0.2" for one eps of a sweep
    spec: AttackSpec
    threat: ThreatModel
    hash: str  # spec hash (plus the eps for a sweep): a finished attack with this hash is not rerun
    randomized: bool = False  # the suite's EOT policy: the attacked defense is randomized

    @property
    def budget(self) -> str:
        """The attack's declared budget string of this job."""
        return get_attack(self.spec.name).budget(self.spec, randomized=self.randomized)


def select_attacks(suite: Suite, names, *, norm: str) -> tuple[SuiteAttack, ...]:
    """The suite's attacks named in ``names`` (``--attacks``), in suite order, followed by registered
    plugin attacks the suite does not list, run with their declared ``default_params`` (a built-in attack
    runs only at the budget of a suite that lists it)."""
    listed = {e.spec.name for e in suite.entries}
    extra = []
    for name in dict.fromkeys(names):
        if name in listed:
            continue
        attack = find_attack(name)
        if attack is None and name in broken_plugins():
            get_attack(name)  # raises: the plugin failed to load, and why
        if attack is not None and origin_of(name) == "built-in":  # a built-in's budget is its suite's
            raise BenchUserError(f"attack {name} is not in suite {suite.name!r} for {norm}; available: {', '.join(e.spec.name for e in suite.entries)}"
                                 f" (built-in attacks run at a suite's budget: pick a suite that lists {name}, or a suite file of your own)")
        if attack is None or norm not in attack.norms:
            raise BenchUserError(f"attack(s) {name} not in suite {suite.name!r} for {norm}; available: {', '.join(e.spec.name for e in suite.entries)}"
                                 " (or any registered attack for the norm: see `bench list attacks`)")
        extra.append(SuiteAttack(AttackSpec(name, tuple(attack.default_params.items()), eot=suite.eot)))
    return tuple(e for e in suite.entries if e.spec.name in names) + tuple(extra)


def attack_jobs(entries, threat: ThreatModel, *, randomized: bool = False) -> list[AttackJob]:
    """Expand a suite's attacks (:class:`threat_models.SuiteAttack`) into jobs: one per attack, or one
    per eps for an attack with an eps sweep."""
    jobs = []
    for entry in entries:
        spec = entry.spec
        if entry.eps is None:
            jobs.append(AttackJob(spec.name, spec, threat, spec.spec_hash(), randomized))
            continue
        for e in entry.eps:
            t = ThreatModel(norm=threat.norm, eps=e, bounds=threat.bounds)
            h = hashlib.sha256(f"{spec.spec_hash()}@{e!r}".encode()).hexdigest()[:12]
            jobs.append(AttackJob(f"{spec.name}@{t.eps_label}", spec, t, h, randomized))
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise BenchUserError(f"the suite runs an attack twice under the same key ({', '.join(sorted({k for k in keys if keys.count(k) > 1}))}); give each eps only once")
    return jobs


def sample_ids(test_size: int, n: int, seed: int) -> list[int]:
    """The first ``n`` indices of a seeded permutation of the test set, sorted.

    Prefix property: the ids for ``n=200`` are a subset of those for ``n=1000`` with the same seed,
    so every defense evaluated with the same seed shares its samples (needed for McNemar).
    """
    if not 1 <= n <= test_size:
        raise BenchUserError(f"--n must be between 1 and {test_size} (the test-set size), got {n}")
    perm = torch.randperm(test_size, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[:n].tolist())


def _batch_seed(seed: int, tag: str, batch: int) -> int:
    h = hashlib.sha256(f"{seed}:{tag}:{batch}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


@dataclass(frozen=True)
class EvalContext:
    """A prepared evaluation: the loaded defense, the samples, the attack jobs and the manifest skeleton.

    Built by :func:`prepare`; shared by ``bench run`` (:func:`evaluate`) and sweep jobs
    (:mod:`harness.sweep`), so both compute records with exactly the same code.
    """

    cfg: RunConfig
    device: torch.device
    threat: ThreatModel
    ids: list[int]
    x: torch.Tensor  # test images of ``ids`` (CPU)
    y: torch.Tensor
    defense: object
    card: dict
    draws: int
    jobs: list[AttackJob]
    manifest: dict  # everything but "clean_wall_time_s" and "created"; "attacks" is empty


@dataclass(frozen=True)
class SampleResult:
    """What :func:`evaluate_samples` computed for one block-aligned range of sample positions."""

    records: list[dict]  # per-sample records in sample-id order, with the given attacks filled in
    clean_wall_time_s: float
    attacks: dict[str, dict]  # attack key -> manifest entry (spec, hash, eps, wall time, ...)


def prepare(cfg: RunConfig, *, log=print) -> EvalContext:
    """Validate ``cfg``, load data and defense and expand the suite into attack jobs."""
    if cfg.norm not in NORMS:
        raise BenchUserError(f"unknown norm {cfg.norm!r}; use one of {', '.join(NORMS)}")
    if cfg.batch_size < 1:
        raise BenchUserError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    device = resolve_device(cfg.device)
    info = datasets.get_info(cfg.dataset)
    threat = default_threat(cfg.dataset, cfg.norm)
    if cfg.eps is not None:
        threat = ThreatModel(norm=cfg.norm, eps=float(cfg.eps))
        diameter = math.prod(info.shape) ** 0.5 * (threat.bounds[1] - threat.bounds[0])
        if cfg.norm == "l2" and threat.eps > diameter:
            raise BenchUserError(f"L2 eps {threat.eps:g} exceeds the diameter of {cfg.dataset}'s input space ({diameter:.4g} for {'x'.join(map(str, info.shape))} images in {threat.bounds}): every image is in the ball; use a smaller eps")
    # validate the suite and the attack names before any training
    unseen = load_suite(cfg.suite, norm=cfg.norm, dataset=cfg.dataset)
    if cfg.attacks:
        select_attacks(unseen, cfg.attacks, norm=cfg.norm)
    test = datasets.load(cfg.dataset, "test")
    ids = sample_ids(len(test.x), cfg.n, cfg.seed)
    defense, card = load_defense(cfg.defense, cfg.dataset, device=device, train_if_missing=cfg.train_if_missing, progress=cfg.progress, announce=log, options=cfg.options, norm=cfg.norm)
    defense.set_threat(threat.norm, threat.eps)
    suite = load_suite(cfg.suite, norm=cfg.norm, dataset=cfg.dataset, randomized=defense.randomized)
    entries = select_attacks(suite, cfg.attacks, norm=cfg.norm) if cfg.attacks else suite.entries
    jobs = attack_jobs(entries, threat, randomized=suite.randomized)
    draws = max((e.spec.eot for e in entries), default=1) if defense.randomized else 1
    dinfo = defense.info()
    manifest = {
        "defense": cfg.defense,
        "defense_options": cfg.options,
        "dataset": cfg.dataset,
        "norm": cfg.norm,
        "eps": threat.eps,
        "eps_label": threat.eps_label,
        "suite": cfg.suite,
        "seed": cfg.seed,
        "n": len(ids),
        "sample_ids": ids,
        "device": device_name(device),
        "versions": package_versions(),
        "commit": code_commit(),
        "command": command_line(),
        "data": datasets.provenance(test),
        "checkpoint_sha256": card.get("sha256"),
        "checkpoint_epochs": card.get("epochs"),
        "randomized": dinfo.randomized,
        "score_draws": draws,
        "gradient_policy": dinfo.gradient_policy,
        "paper": dinfo.paper,
        "defense_config": dinfo.extra,
        "attacks": {},
    }
    return EvalContext(cfg=cfg, device=device, threat=threat, ids=ids, x=test.x[ids], y=test.y[ids], defense=defense, card=card, draws=draws, jobs=jobs, manifest=manifest)


def evaluate_samples(
    ctx: EvalContext,
    *,
    start: int = 0,
    stop: int | None = None,
    jobs: list[AttackJob] | None = None,
    records: list[dict] | None = None,
    on_clean=None,
    on_attack=None,
    log=None,
) -> SampleResult:
    """Clean pass plus ``jobs`` (default: all of ``ctx.jobs``) on sample positions ``[start, stop)`` of ``ctx.ids``.

    Batching is by *blocks* of ``batch_size`` consecutive sample positions (block ``b`` holds
    positions ``b*bs .. b*bs+bs-1``); an attack runs on the clean-correct samples of one block at a
    time, with generator seeds from (seed, attack hash, block index). So a sample's record depends
    only on ``(n, seed, batch_size)``, never on which range is evaluated: ``start`` must be a
    multiple of ``batch_size``, and evaluating the blocks in several ranges (sweep shards) gives
    exactly the records of one run over all of them.

    ``records`` (clean records of the range from an earlier run) skips the clean pass. ``on_clean(records,
    wall)`` and ``on_attack(key, entry, records)`` are called after the clean pass and after each attack
    (``bench run`` rewrites its result file there).
    """
    cfg, device, bs, draws = ctx.cfg, ctx.device, ctx.cfg.batch_size, ctx.draws
    stop = len(ctx.ids) if stop is None else stop
    if start % bs or not 0 <= start <= stop <= len(ctx.ids):
        raise BenchUserError(f"sample range [{start}, {stop}) is not block-aligned for batch size {bs} and n={len(ctx.ids)}")
    jobs = ctx.jobs if jobs is None else jobs
    blocks = [(b, min(b + bs, stop)) for b in range(start, stop, bs)]
    clean_wall = 0.0
    if records is None:
        t0 = time.perf_counter()
        records = []
        for b0, b1 in blocks:
            gen = torch.Generator(device=device).manual_seed(_batch_seed(cfg.seed, "clean", b0 // bs))
            xb, yb = ctx.x[b0:b1].to(device), ctx.y[b0:b1].to(device)
            ok, abst = score(ctx.defense, xb, yb, generator=gen, draws=draws)
            # thesis eq. 2.7: an L2 lower bound on the adversarial distance, for defenses that have one
            cert = ctx.defense.certified_radius(xb, yb, generator=gen) if cfg.norm == "l2" else None
            for j in range(len(xb)):
                records.append({"index": ctx.ids[b0 + j], "label": int(yb[j]), "clean_correct": bool(ok[j]), "clean_abstained": bool(abst[j]), "attacks": {}})
                if cert is not None:
                    records[-1]["certified_l2"] = float(cert[j])
        clean_wall = time.perf_counter() - t0
        if on_clean is not None:
            on_clean(records, clean_wall)
    if len(records) != stop - start:
        raise BenchUserError(f"{len(records)} clean records for {stop - start} samples; pass --fresh to recompute")
    clean_ok = [r["clean_correct"] for r in records]
    entries: dict[str, dict] = {}
    for job in jobs:
        spec, threat, h = job.spec, job.threat, job.hash
        ainfo = get_attack(spec.name)
        model = EOTModel(ctx.defense, draws=spec.eot)
        t0 = time.perf_counter()
        results = {}
        report = AttackReport()
        bar = tqdm(total=sum(clean_ok), desc=f"{job.key} ({job.budget})", unit="img", disable=not cfg.progress, dynamic_ncols=True)
        for b0, b1 in blocks:
            idx = [p for p in range(b0, b1) if clean_ok[p - start]]  # positions in ctx.ids
            if not idx:
                continue
            xb, yb = ctx.x[idx].to(device), ctx.y[idx].to(device)
            seed = _batch_seed(cfg.seed, h, b0 // bs)
            model.generator = torch.Generator(device=device).manual_seed(seed)
            block = AttackReport()
            cands = run_attack(model, xb, yb, threat, spec, seed=seed % (1 << 31), report=block)
            for n in block.notes:
                report.note(n)
            vgen = torch.Generator(device=device).manual_seed(seed ^ 0x5EED)
            v = verify(ctx.defense, xb, yb, cands, threat, clean_correct=torch.ones(len(idx), dtype=torch.bool, device=device), generator=vgen, draws=draws, unbounded=ainfo.kind == "minimization")
            for j, p in enumerate(idx):
                results[p - start] = {"correct": bool(v.correct[j]), "abstained": bool(v.abstained[j]), "norm": _num(float(v.norm[j]))}
                if ainfo.kind == "minimization":
                    results[p - start]["min_norm"] = _num(float(v.min_norm[j]))
                r = int(v.kept[j])
                if r >= 0 and r < len(block.found_by) and block.found_by[r] is not None and block.found_by[r][j] is not None:
                    results[p - start]["by"] = block.found_by[r][j]  # the component that found the kept adversarial
            bar.update(len(idx))
        bar.close()
        for k, r in enumerate(records):
            if k in results:
                r["attacks"][job.key] = results[k]
            else:  # misclassified (or abstained on) before the attack: adversarial at distance 0
                entry = {"correct": False, "abstained": bool(r["clean_abstained"]), "norm": 0.0}
                if ainfo.kind == "minimization":
                    entry["min_norm"] = 0.0
                r["attacks"][job.key] = entry
        wall = time.perf_counter() - t0
        entries[job.key] = {
            "spec": spec.to_dict(),
            "spec_hash": h,
            "eps": threat.eps,
            "eps_label": threat.eps_label,
            "kind": ainfo.kind,
            "library": ainfo.library,
            "budget": job.budget,
            "wall_time_s": round(wall, 3),
        }
        if report.notes:
            entries[job.key]["notes"] = list(report.notes)
        if on_attack is not None:
            on_attack(job.key, entries[job.key], records)
        if log is not None and records:
            acc = sum(r["attacks"][job.key]["correct"] for r in records) / len(records)
            log(f"  {job.key:<9} accuracy {acc:.3f}  ({job.budget}; {wall:.1f} s)")
    return SampleResult(records=records, clean_wall_time_s=round(clean_wall, 3), attacks=entries)


def check_results_dir(results_dir: str | os.PathLike, dataset: str, norm: str) -> Path:
    """The folder a run writes to, created and proven writable *before* any expensive work.

    A path that is a file, or a folder that cannot be written, is a :class:`BenchUserError`.
    """
    root = Path(results_dir)
    for p in (root, *root.parents):
        if p.exists() and not p.is_dir():
            raise BenchUserError(f"--results-dir {results_dir}: {p} is a file, not a directory; pass a directory")
    folder = root / dataset / norm
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise BenchUserError(f"--results-dir {results_dir}: cannot write to {folder} ({exc.strerror or exc}); pass a writable directory") from None
    return folder


def _check_same_evaluation(path: Path, old: dict, ctx: EvalContext, manifest: dict) -> None:
    """Refuse to mix another evaluation into an existing result file (``--fresh`` overrides)."""
    om = old["manifest"]
    same = om.get("sample_ids") == ctx.ids and om.get("eps") == ctx.threat.eps and om.get("checkpoint_sha256") == manifest["checkpoint_sha256"]
    if not same:
        raise BenchUserError(
            f"{path} holds a different evaluation (n={om.get('n')}, seed={om.get('seed')}, eps={om.get('eps')}, or another checkpoint); "
            "pass --fresh to overwrite it or --results-dir to write elsewhere"
        )
    if (om.get("defense_options") or {}) != manifest["defense_options"]:
        raise BenchUserError(
            f"{path} was computed with defense options {om.get('defense_options') or {}}, this run has {manifest['defense_options']}; "
            "rerun with the same options, or pass --fresh / --results-dir"
        )
    if om.get("suite") != manifest["suite"]:
        raise BenchUserError(
            f"{path} holds the {om.get('suite')!r} suite, this run asks for {manifest['suite']!r}: one file holds one evaluation; "
            "pass --fresh to replace it or --results-dir to write elsewhere"
        )
    done = om.get("attacks") or {}
    changed = [job for job in ctx.jobs if job.key in done and done[job.key].get("spec_hash") != job.hash]
    if changed:
        what = "; ".join(f"{j.key}: file has '{done[j.key].get('budget')}', this run '{j.budget}'" for j in changed)
        raise BenchUserError(f"{path} holds other budgets for attacks this run would redo ({what}); pass --fresh to replace the file or --results-dir to write elsewhere")


def model_trust(ctx: EvalContext) -> tuple[list[str], dict]:
    """The checks of the defense itself on the first block of samples: the warnings of
    :func:`harness.sanity.model_checks` and the gradient-consistency check (:mod:`harness.gradcheck`)."""
    cfg = ctx.cfg
    n0 = min(len(ctx.ids), cfg.batch_size)
    x0, y0 = ctx.x[:n0].to(ctx.device), ctx.y[:n0].to(ctx.device)
    warnings = model_checks(ctx.defense, x0, y0, draws=ctx.draws, seed=cfg.seed)
    check = check_gradients(ctx.defense, x0, y0, norm=ctx.threat.norm, eps=ctx.threat.eps, bounds=ctx.threat.bounds, seed=cfg.seed).to_dict()
    if check["verdict"] != "consistent":
        warnings.append(describe(check))
    return warnings, check


def final_checks(ctx: EvalContext, data: dict, *, log=None) -> None:
    """The trust checks recorded in every manifest: :func:`model_trust` and the outcome checks of
    :mod:`harness.sanity` (``warnings``, ``gradient_check``)."""
    warnings, check = model_trust(ctx)
    data["manifest"]["gradient_check"] = check
    data["manifest"]["warnings"] = warnings + outcome_checks(data)
    if log is not None:
        for w in data["manifest"]["warnings"]:
            log(f"WARNING: {w}")


def evaluate(cfg: RunConfig, *, log=print) -> Path:
    """Run ``cfg`` and return the path of the result file."""
    if cfg.norm not in NORMS:
        raise BenchUserError(f"unknown norm {cfg.norm!r}; use one of {', '.join(NORMS)}")
    datasets.get_info(cfg.dataset)
    datasets.require_single_label(cfg.dataset, "bench run")
    check_results_dir(cfg.results_dir, cfg.dataset, cfg.norm)
    ctx = prepare(cfg, log=log)
    manifest = dict(ctx.manifest, attacks={})
    path = result_path(cfg.results_dir, cfg.dataset, cfg.norm, variant_key(cfg.defense, cfg.options))
    data = None
    if path.exists() and not cfg.fresh:
        old = load_result(path)
        _check_same_evaluation(path, old, ctx, manifest)
        data = old
        data["manifest"].update({k: v for k, v in manifest.items() if k != "attacks"})
        log(f"resuming {path}: {len(old['manifest'].get('attacks', {}))} attack(s) already done")
    holder: dict = {"data": data}

    def on_clean(recs, wall):
        m = dict(manifest)
        m["clean_wall_time_s"] = round(wall, 3)
        m["created"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        holder["data"] = {"schema": SCHEMA_VERSION, "manifest": m, "records": recs}
        write_result(path, holder["data"])

    def on_attack(key, entry, recs):
        holder["data"]["manifest"]["attacks"][key] = entry
        write_result(path, holder["data"])

    todo = []
    for job in ctx.jobs:
        done = data["manifest"]["attacks"].get(job.key) if data is not None else None
        if not (done and done.get("spec_hash") == job.hash):
            todo.append(job)
    existing = data["records"] if data is not None else None
    if existing is not None:
        ok = sum(r["clean_correct"] for r in existing)
        log(f"{cfg.defense} on {cfg.dataset}: clean accuracy {ok / len(existing):.3f} on {len(ctx.ids)} samples ({ctx.threat.norm} eps={ctx.threat.eps_label})")

    def on_clean_log(recs, wall):
        on_clean(recs, wall)
        ok = sum(r["clean_correct"] for r in recs)
        log(f"{cfg.defense} on {cfg.dataset}: clean accuracy {ok / len(recs):.3f} on {len(ctx.ids)} samples ({ctx.threat.norm} eps={ctx.threat.eps_label})")

    evaluate_samples(ctx, jobs=todo, records=existing, on_clean=on_clean_log, on_attack=on_attack, log=log)
    final = holder["data"]
    if cfg.check_budget:
        saturation.run(ctx, final, n=cfg.check_budget, write=lambda d: write_result(path, d), log=log)
    final_checks(ctx, final, log=log)
    write_result(path, final)
    return path


def config_dict(cfg: RunConfig) -> dict:
    return asdict(cfg)
