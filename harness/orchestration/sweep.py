"""Sweep plans: defenses x datasets x norms x suites expanded into independent jobs, run by an executor, merged.

One job = (defense, dataset, norm, suite, attack key, shard). A shard is a contiguous, block-aligned
range of the run's sample positions (blocks of ``batch_size``; see :func:`harness.engine.runner.blocks`),
so the merged records equal those of ``bench run`` with the same n, seed, batch size and attacks.

Every job recomputes the clean pass of its shard (deterministic, and cheap next to any attack)
instead of depending on a separate clean job: jobs stay fully independent, so executors need no
dependency graph and a retried or resumed job never waits on another one. The merge checks that
all jobs of a shard agree on the clean records.

Each job writes ``<results_dir>/.shards/<dataset>/<norm>/<defense>/<suite>/<attack>/shard-<k>-of-<S>.json``
atomically, holding its spec hash; a rerun skips jobs whose file exists with a matching hash. The hash
covers what determines the job's output: the job's fields and its attack's identity (the attack
spec with its effective EOT, and eps), not the suite file's text, so editing a comment or another
attack of the suite does not throw finished shards away. When all
jobs of a (dataset, norm, defense) are done, the merge writes ``<results_dir>/<dataset>/<norm>/<defense>.json``
with the same manifest keys as ``bench run``. ``bench sweep --merge-partial`` writes that file early, from
the attacks finished so far, naming the others in ``pending_attacks`` (the row reads as incomplete).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import re
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import datasets
from harness.errors import BenchUserError
from harness.store.results import SCHEMA_VERSION, atomic_write_json, load_result, result_path, write_result
from threat_models import NORMS, ThreatModel, default_threat, is_suite_file, load_suite

PLAN_KEYS = {"defenses", "datasets", "norms", "suites", "n", "seed", "shards", "device", "attacks", "batch_size", "eps", "num_cpus", "num_gpus", "arch", "options", "check_budget", "check_attacks"}
CLEAN_KEY = "_clean"  # job key of a suite with no attacks for a norm: the clean pass only

#: relative cost of the clean pass per sample (attacks declare their own ``cost``: FGM = 1 gradient step)
CLEAN_COST = 0.2


@dataclass(frozen=True)
class Plan:
    """A parsed sweep plan (see ``plans/fmnist-quick.toml``)."""

    defenses: tuple[str, ...]
    datasets: tuple[str, ...]
    norms: tuple[str, ...]
    suites: tuple[str, ...] = ("quick",)
    n: int = 200
    seed: int = 0
    shards: int = 1
    device: str = "auto"
    attacks: tuple[str, ...] | None = None
    batch_size: int = 100
    eps: float | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    arch: str | None = None
    options: tuple[tuple[str, Any], ...] = ()  # defense options, as `bench run --option KEY=VALUE`
    #: > 0: after a group's file is merged, the budget saturation check on its first that many samples
    #: (``bench run --check-budget N`` on the merged file; harness/engine/saturation.py)
    check_budget: int = 0
    #: the attacks the check runs (None: every gradient attack of the file): on a CPU the check of an
    #: inference-time defense can cost as much as its row, so a plan may check the headline attacks only
    check_attacks: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SweepJob:
    """One independent unit of work; executors pass it to :func:`run_job` (names only, no tensors)."""

    defense: str
    dataset: str
    norm: str
    suite: str
    attack: str  # attack key ("pgd", "fgm@0.2") or CLEAN_KEY
    shard: int
    shards: int
    start: int  # sample positions [start, stop) of the run's sorted sample ids
    stop: int
    n: int
    seed: int
    batch_size: int
    device: str = "auto"
    eps: float | None = None
    arch: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    #: identity of the attack this job runs (:func:`attack_identity`); "" for the clean pass
    attack_id: str = field(default="", compare=False)
    #: cost units per attacked sample of the attack as its suite configures it
    #: (:meth:`harness.attacks.base.Attack.cost_of` x EOT draws; 0 for the clean pass), for the estimates
    cost: float = field(default=0.0, compare=False)

    @property
    def name(self) -> str:
        """Human-readable job id."""
        return f"{self.dataset}/{self.norm}/{self.variant}/{self.suite}/{self.attack}/shard{self.shard}"

    @property
    def variant(self) -> str:
        from harness.engine.models import variant_key

        return variant_key(self.defense, self.defense_options)

    @property
    def defense_options(self) -> dict:
        """Constructor options of the defense (``arch`` plus the plan's ``options``)."""
        return {**({"arch": self.arch} if self.arch else {}), **dict(self.options)}

    @property
    def spec_hash(self) -> str:
        """Hash of everything that determines the job's output (resources and device excluded)."""
        d = asdict(self)
        for k in ("num_cpus", "num_gpus", "device", "cost"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def partial_path(self, results_dir: str | os.PathLike) -> Path:
        """Where the job's partial result goes (a suite file is filed under its name without the folder
        and ``.toml``: an absolute path must not take the file out of ``results_dir``)."""
        suite = Path(self.suite).stem if is_suite_file(self.suite) else self.suite
        return Path(results_dir) / ".shards" / self.dataset / self.norm / self.variant / suite / self.attack / f"shard-{self.shard}-of-{self.shards}.json"


def _strs(raw: dict, key: str, *, required: bool) -> tuple[str, ...] | None:
    v = raw.get(key)
    if v is None:
        if required:
            raise BenchUserError(f"plan: missing key {key!r} (a list of names)")
        return None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
        raise BenchUserError(f"plan: {key!r} must be a non-empty list of names, got {v!r}")
    return tuple(v)


def _int(raw: dict, key: str, default: int, lo: int) -> int:
    v = raw.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise BenchUserError(f"plan: {key!r} must be an integer >= {lo}, got {v!r}")
    return v


def _float(raw: dict, key: str, default: float | None) -> float | None:
    v = raw.get(key, default)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
        raise BenchUserError(f"plan: {key!r} must be a number >= 0, got {v!r}")
    return float(v)


def parse_plan(raw: dict) -> Plan:
    """Validate a plan dict (from TOML); unknown keys, names or bad values raise BenchUserError."""
    unknown = sorted(set(raw) - PLAN_KEYS)
    if unknown:
        raise BenchUserError(f"plan: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(PLAN_KEYS))}")
    device = raw.get("device", "auto")
    if not isinstance(device, str) or not device:
        raise BenchUserError(f"plan: 'device' must be a string like \"auto\", \"cpu\" or \"cuda\", got {device!r}")
    arch = raw.get("arch")
    if arch is not None and not isinstance(arch, str):
        raise BenchUserError(f"plan: 'arch' must be a string, got {arch!r}")
    options = raw.get("options", {})
    if not isinstance(options, dict) or "arch" in options or not all(isinstance(k, str) and k.isidentifier() for k in options):
        raise BenchUserError(f"plan: 'options' must be a table of defense options such as {{ precision = \"bf16\" }} (arch has its own key), got {options!r}")
    plan = Plan(
        defenses=_strs(raw, "defenses", required=True),
        datasets=_strs(raw, "datasets", required=True),
        norms=_strs(raw, "norms", required=True),
        suites=_strs(raw, "suites", required=False) or ("quick",),
        n=_int(raw, "n", 200, 1),
        seed=_int(raw, "seed", 0, 0),
        shards=_int(raw, "shards", 1, 1),
        device=device,
        attacks=_strs(raw, "attacks", required=False),
        batch_size=_int(raw, "batch_size", 100, 1),
        eps=_float(raw, "eps", None),
        num_cpus=_float(raw, "num_cpus", 1.0),
        num_gpus=_float(raw, "num_gpus", 0.0),
        arch=arch,
        options=tuple(sorted(options.items())),
        check_budget=_int(raw, "check_budget", 0, 0),
        check_attacks=_strs(raw, "check_attacks", required=False),
    )
    bad = [x for x in plan.norms if x not in NORMS]
    if bad:
        raise BenchUserError(f"plan: unknown norm(s) {', '.join(bad)}; use {', '.join(NORMS)}")
    if plan.check_attacks is not None:
        if not plan.check_budget:
            raise BenchUserError("plan: 'check_attacks' names the attacks of the budget check; set check_budget = N (samples) too")
        if plan.attacks is not None:
            bad = [a for a in plan.check_attacks if a not in plan.attacks]
            if bad:
                raise BenchUserError(f"plan: check_attacks {', '.join(bad)} not in the plan's attacks ({', '.join(plan.attacks)})")
        else:
            from harness.attacks import get_attack

            for a in plan.check_attacks:
                get_attack(a)  # an unknown name is a user error that lists the known ones
    if plan.num_gpus > 1 and plan.num_gpus != int(plan.num_gpus):
        raise BenchUserError(f"plan: num_gpus above 1 must be a whole number, got {plan.num_gpus}")
    return plan


def load_plan(path: str | os.PathLike) -> Plan:
    """Read and validate a plan TOML file."""
    p = Path(path)
    if not p.is_file():
        raise BenchUserError(f"plan file {p} not found")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise BenchUserError(f"plan {p}: invalid TOML ({exc})") from None
    return parse_plan(raw)


def shard_ranges(*, n: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """Split positions ``0..n`` into ``shards`` contiguous ranges made of whole batch-size blocks."""
    blocks = math.ceil(n / batch_size)
    if shards > blocks:
        raise BenchUserError(f"plan: shards={shards} but n={n} with batch_size={batch_size} gives only {blocks} batch(es); lower batch_size or shards")
    edges = [k * blocks // shards for k in range(shards + 1)]
    return [(edges[k] * batch_size, min(edges[k + 1] * batch_size, n)) for k in range(shards)]


def plan_attacks(plan: Plan, *, dataset: str, norm: str, suite, randomized: bool = False) -> list[tuple[str, str, float]]:
    """``(key, identity, cost)`` of each attack ``bench run`` would record for this combination (the
    plan's attack subset applied; identity: :func:`attack_identity`; cost: :func:`spec_cost`).
    ``suite``: a :class:`threat_models.Suite` loaded for the defense's ``randomized`` flag, or its name."""
    from harness.engine.runner import attack_jobs

    if isinstance(suite, str):
        suite = load_suite(suite, norm=norm, dataset=dataset, randomized=randomized)
    entries = suite.entries
    draws = max((e.spec.eot for e in entries), default=1) if randomized else 1  # as the runner's clean pass
    if plan.attacks:
        names = {e.spec.name for e in entries}
        entries = tuple(e for e in entries if e.spec.name in plan.attacks)
        if not entries and not (set(plan.attacks) & names):
            raise BenchUserError(f"plan: none of attacks {', '.join(plan.attacks)} is in suite {suite.name!r} for {norm}; available: {', '.join(sorted(names))}")
    threat = default_threat(dataset, norm) if plan.eps is None else ThreatModel(norm=norm, eps=plan.eps)
    # j.hash: the spec hash (with the eps for one eps of a sweep), as the result file's manifest records it
    out = [(j.key, attack_identity(j.hash, j.threat.eps, draws), spec_cost(j.spec, randomized=randomized)) for j in attack_jobs(entries, threat)]
    return out or [(CLEAN_KEY, attack_identity("", None, draws), 0.0)]


def expand(plan: Plan) -> list[SweepJob]:
    """All jobs of ``plan``, in a stable order (dataset, norm, defense, suite, attack, shard)."""
    from harness.engine.models import build_defense

    ranges = shard_ranges(n=plan.n, batch_size=plan.batch_size, shards=plan.shards)
    jobs = []
    for dataset in plan.datasets:
        datasets.get_info(dataset)  # validates the name (n is checked against the test set in the jobs)
        for norm in plan.norms:
            for defense in plan.defenses:
                randomized = build_defense(defense, dataset, **({"arch": plan.arch} if plan.arch else {}), **dict(plan.options)).randomized  # validates name, dataset, options
                seen: dict[str, str] = {}
                for suite in plan.suites:
                    parsed = load_suite(suite, norm=norm, dataset=dataset, randomized=randomized)
                    for key, identity, cost in plan_attacks(plan, dataset=dataset, norm=norm, suite=parsed, randomized=randomized):
                        if key in seen and key != CLEAN_KEY:
                            raise BenchUserError(f"plan: attack {key!r} is in suites {seen[key]!r} and {suite!r}; one result file holds it once, so list one of them")
                        seen[key] = suite
                        for k, (a, b) in enumerate(ranges):
                            jobs.append(SweepJob(defense=defense, dataset=dataset, norm=norm, suite=suite, attack=key, shard=k, shards=plan.shards, start=a, stop=b, n=plan.n, seed=plan.seed, batch_size=plan.batch_size, device=plan.device, eps=plan.eps, arch=plan.arch, options=plan.options, num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, attack_id=identity, cost=cost))
    return jobs


def attack_cost(key: str) -> float:
    """The declared cost (:attr:`harness.attacks.base.Attack.cost`) of an attack key (``fgm@0.2`` -> fgm's); 0 for the clean pass."""
    from harness.attacks import get_attack

    return 0.0 if key == CLEAN_KEY else float(get_attack(key.split("@")[0]).cost)


def spec_cost(spec, *, randomized: bool = False) -> float:
    """Cost units per attacked sample of an attack spec (an :class:`threat_models.AttackSpec` or the
    ``spec`` dict a result manifest records) on a defense that is ``randomized`` or not: the attack's
    :meth:`~harness.attacks.base.Attack.cost_of` its parameters, restarts and EOT draws."""
    from harness.attacks import get_attack

    if isinstance(spec, dict):
        name, params, restarts, eot = spec["name"], dict(spec.get("params") or {}), int(spec.get("restarts") or 1), int(spec.get("eot") or 1)
    else:
        name, params, restarts, eot = spec.name, spec.kwargs, spec.restarts, spec.eot
    return get_attack(name).cost_of(params, restarts, eot=eot, randomized=randomized)


def job_units(job: SweepJob) -> float:
    """Cost units per sample of a job: its attack (:attr:`SweepJob.cost`; the declared cost for a job
    built without one) plus the clean pass."""
    return (job.cost or attack_cost(job.attack)) + CLEAN_COST


def estimate_cost(jobs: list[SweepJob]) -> float:
    """A crude relative cost (FGM on one sample = 1): the attack's cost at the suite's budget x samples in the shard, plus clean passes."""
    return sum((j.stop - j.start) * job_units(j) for j in jobs)


def format_job_table(jobs: list[SweepJob], results_dir: str | os.PathLike | None = None) -> str:
    """The dry-run table: one row per job (with ``results_dir``: whether it is finished there) plus the
    count and the cost estimate (of the unfinished jobs, when ``results_dir`` is given)."""
    from tabulate import tabulate

    from harness.store.claims import holder, lock_path

    configs = today_configs(jobs) if results_dir is not None else None
    done = [results_dir is not None and is_done(j, results_dir, configs) for j in jobs]

    def status(j: SweepJob, d: bool) -> str:
        if d:
            return "done"
        who = holder(lock_path(j.partial_path(results_dir)))
        return "to run" if who is None else f"running ({who})"

    rows = [[i, j.defense, j.dataset, j.norm, j.suite, j.attack, f"{j.shard + 1}/{j.shards}", f"{j.start}-{j.stop}"] + ([status(j, d)] if results_dir is not None else [])
            for i, (j, d) in enumerate(zip(jobs, done))]
    table = tabulate(rows, headers=["#", "defense", "dataset", "norm", "suite", "attack", "shard", "samples"] + (["status"] if results_dir is not None else []))
    if results_dir is not None:
        todo = [j for j, d in zip(jobs, done) if not d]
        measured = measured_estimate(todo, results_dir)
        return (f"{table}\n\n{len(jobs)} jobs; estimated cost {estimate_cost(todo):,.0f} units (a rough estimate: each attack's relative cost at the suite's budget x samples per shard; FGM on one sample = 1)\n"
                f"{len(jobs) - len(todo)} finished in {results_dir}, {len(todo)} to run (the estimate counts those)" + (f"\n\n{measured}" if measured else ""))
    return f"{table}\n\n{len(jobs)} jobs; estimated cost {estimate_cost(jobs):,.0f} units (a rough estimate: each attack's relative cost at the suite's budget x samples per shard; FGM on one sample = 1)"


def _device_of(name: str) -> tuple[str | None, int | None]:
    """The kind of device and the torch threads a manifest's ``device`` names
    (:func:`harness.store.provenance.device_name`): ``("cpu", 2)`` for "cpu:x86_64:2 threads",
    ``("cuda", None)`` for "cuda:NVIDIA H100 80GB HBM3", ``(None, None)`` for several devices or an
    unknown text."""
    if not isinstance(name, str) or " + " in name:
        return None, None
    if name.startswith("cuda"):
        return "cuda", None
    m = re.fullmatch(r"cpu:[^:]*:(\d+) threads?", name.strip())
    return ("cpu", int(m.group(1))) if m else (("cpu", None) if name.startswith("cpu") else (None, None))


#: what the dry run's estimates are in: core-hours, so CPU shards count at their wall time x threads
#: and a GPU's shards not at all (their minutes are no core-hours)
CORE = ("cpu", 1)


def _shard_rates(results_dir: str | os.PathLike, *, here: tuple[str, int | None] | None = None) -> dict[tuple[str, str, str], list[float]]:
    """Seconds per cost unit (:func:`job_units`: the attack at the budget the shard ran, plus its clean
    pass) of every finished shard file under ``results_dir/.shards``, keyed by (dataset, defense
    variant, attack), whatever plan or suite wrote it: a PGD-40 shard prices a PGD-80 job at twice
    its time per sample. A file whose manifest lacks the spec is priced at the attack's declared cost.
    Each list is in the order the shards finished (their manifests' ``created``), the latest last.
    ``here`` (the kind of device and torch threads a job would run on; the deadline gate): only the
    shards computed on that kind of device count, and a CPU shard's rate is scaled by its threads /
    ``here``'s (:func:`harness.engine.saturation.on_threads`). Before stop 48 the gate priced a CPU job
    from whichever shard finished last: after the E-ABS L2 noise shards 7-8 ran on a lent H200 (about
    110 s each, vs 2135-2813 s on one CPU core) a CPU noise job would have been priced at a twentieth
    of its time, and one that ran on one thread beside another process was priced as such for a
    process that has both cores now (``--threads auto``)."""
    from harness.engine.saturation import on_threads

    timed: dict[tuple[str, str, str], list[tuple[str, float]]] = {}
    root = Path(results_dir) / ".shards"
    for f in sorted(root.glob("*/*/*/*/*/shard-*.json")) if root.is_dir() else []:
        dataset, _norm, variant, _suite, attack = f.relative_to(root).parts[:5]
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            man, n = data["manifest"], len(data["records"])
            entry = {} if attack == CLEAN_KEY else man["attacks"][attack]
            secs = float(entry.get("wall_time_s") or 0.0) + float(man.get("clean_wall_time_s") or 0.0)
            units = (spec_cost(entry["spec"], randomized=bool(man.get("randomized"))) if "spec" in entry else attack_cost(attack)) + CLEAN_COST
            created = str(man.get("created") or "")
            kind, threads = _device_of(man.get("device"))
            if kind == "cpu" and isinstance(man.get("threads_mean"), (int, float)) and man["threads_mean"] > 0:
                threads = man["threads_mean"]  # the time-weighted threads of a job whose count changed while it ran
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if here is not None and kind is not None:  # a shard that names no single device is taken as it is
            if kind != here[0]:
                continue  # another kind of device: says nothing about this one's time
            if kind == "cpu" and here[1]:
                secs = on_threads(secs, threads, here[1])
        if n:
            timed.setdefault((dataset, variant, attack), []).append((created, secs / n / units))
    return {k: [r for _, r in sorted(v, key=lambda t: t[0])] for k, v in timed.items()}


def job_seconds(job: SweepJob, rates: dict[tuple[str, str, str], float]) -> tuple[float | None, str]:
    """Estimated wall time of ``job`` from measured seconds per cost unit ``rates`` (one number per
    key of :func:`_shard_rates`), and how it was scaled: from the same defense and attack (either
    norm); else the attack's time on another defense, times the ratio of the two defenses' times on
    an attack both ran; else the defense's time per unit on PGD (or its mean over its other attacks)
    (rough: the declared costs are relative costs measured on a few models). ``(None, "")`` when
    nothing of this defense has been measured."""
    from statistics import mean

    d, v, a = job.dataset, job.variant, job.attack
    units = job_units(job) * (job.stop - job.start)
    mine = {att: r for (dd, vv, att), r in rates.items() if (dd, vv) == (d, v)}
    if a in mine:
        return mine[a] * units, "this attack on this defense"
    for (dd, other, att), r in sorted(rates.items()):
        shared = [x for x in mine if (dd, other, x) in rates and x != a]
        if dd == d and att == a and other != v and shared:
            ref = "pgd" if "pgd" in shared else shared[0]
            return r * mine[ref] / rates[(d, other, ref)] * units, f"{a} on {other} x ({ref} on {v} / {ref} on {other})"
    if not mine:
        return None, ""
    if "pgd" in mine:
        return mine["pgd"] * units, "cost units x this defense's time per unit on pgd (rough)"
    return mean(mine.values()) * units, "cost units x this defense's time per unit (rough)"


def measured_estimate(todo: list[SweepJob], results_dir: str | os.PathLike) -> str:
    """How long the unfinished jobs will take, scaled from the wall times of finished shard files in
    ``results_dir`` (any plan's), per cost unit (:func:`_shard_rates`, so a different budget of the same
    attack scales with it; the mean over the shards, scaled as :func:`job_seconds` says). One row per
    attack, or "" when nothing has been measured."""
    from statistics import mean

    from tabulate import tabulate

    rates = {k: mean(v) for k, v in _shard_rates(results_dir, here=CORE).items()}
    if not rates:
        return ""
    rows: dict[tuple, list] = {}
    for j in todo:
        secs, how = job_seconds(j, rates)
        if secs is None:
            continue
        row = rows.setdefault((j.variant, j.dataset, j.attack), [j.variant, j.dataset, j.attack, 0, 0.0, how])
        row[3] += 1
        row[4] += secs
    if not rows:
        return ""
    total = sum(r[4] for r in rows.values()) / 3600
    body = tabulate([[*r[:4], f"{r[4] / 3600:.1f}", r[5]] for r in rows.values()], headers=["defense", "dataset", "attack", "jobs to run", "core-hours", "scaled from"], disable_numparse=True)
    return (f"the jobs to run, scaled from the wall times of finished shards: about {total:.1f} core-hours "
            f"(one job per core; wall times depend on the machine and its load)\n\n{body}")


def check_estimate(plan: Plan, jobs: list[SweepJob], results_dir: str | os.PathLike) -> str:
    """What the plan's budget saturation check (``check_budget`` > 0) will cost once each group is
    merged, scaled like :func:`measured_estimate`: per checked attack, the measured seconds per cost
    unit of this defense and attack x the units of one restart of the stronger budget
    (:func:`harness.engine.saturation.stronger`) x the check's samples, for the first restart on every
    sample (on a randomized defense on the share the suite's attack left robust) and, for each further restart, on the share of the check's samples that survived the
    attack in the finished shards (the check attacks only the samples still standing). An upper
    bound where restarts stop early (on a deterministic defense, an attack whose seed probe shows it
    draws no randomness stops after its first restart). Attacks
    with no finished shard of this defense are listed as not estimated; finished checks are skipped."""
    from statistics import mean

    from tabulate import tabulate

    from harness.attacks import get_attack
    from harness.engine import saturation
    from harness.engine.models import build_defense, today_checkpoint_sha

    if not plan.check_budget:
        return ""
    rates = {k: mean(v) for k, v in _shard_rates(results_dir, here=CORE).items()}
    n = plan.check_budget
    rows, missing = [], []
    groups: dict[tuple[str, str, str, str], list[SweepJob]] = {}
    for j in jobs:
        if j.attack != CLEAN_KEY:
            groups.setdefault((j.dataset, j.norm, j.variant, j.suite), []).append(j)
    for (dataset, norm, variant, suite), gjobs in groups.items():
        path = result_path(results_dir, dataset, norm, variant)
        try:
            man = json.loads(path.read_text(encoding="utf-8"))["manifest"] if path.is_file() else {}
            check = man.get("budget_check") or {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            man, check = {}, {}
        if man.get("checkpoint_sha256") != today_checkpoint_sha(gjobs[0].defense, dataset, gjobs[0].defense_options):
            check = {}  # the file measured another checkpoint: its merge will start the check over (_kept_budget_check)
        randomized = build_defense(gjobs[0].defense, dataset, **gjobs[0].defense_options).randomized
        specs = {e.spec.name: e.spec for e in load_suite(suite, norm=norm, dataset=dataset, randomized=randomized).entries}
        for a in dict.fromkeys(j.attack.split("@")[0] for j in gjobs):
            if (plan.check_attacks is not None and a not in plan.check_attacks) or a not in specs or saturation.stronger(specs[a]) is None:
                continue  # what saturation.run checks: gradient attacks with a step count
            prev = (check.get("attacks") or {}).get(a) or {}
            if prev and "restarts_done" not in prev and check.get("n") == n:
                continue  # finished
            rate = rates.get((dataset, variant, a))
            if rate is not None:  # -> seconds per sample of one restart of the stronger budget
                spec, job = specs[a], next(jj for jj in gjobs if jj.attack.split("@")[0] == a)
                info = get_attack(a)
                # at least in proportion to the steps (DeepFool's declared cost ignores them: it stops
                # early, but not on the samples that stand)
                ratio = max(info.cost_of(saturation.stronger(spec).kwargs), info.cost_of(spec.kwargs) * saturation.FACTOR) / info.cost_of(spec.kwargs, spec.restarts)
                rate *= (job.cost or attack_cost(a)) * ratio
            else:
                missing.append(f"{variant}/{norm}/{a}")
                continue
            robust, total = 0, 0
            for jj in (jj for jj in gjobs if jj.attack == a and jj.start < n):
                try:
                    records = json.loads(jj.partial_path(results_dir).read_text(encoding="utf-8"))["records"]
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                for pos, r in enumerate(records, start=jj.start):
                    if pos < n and r.get("clean_correct"):
                        total += 1
                        robust += bool((r.get("attacks") or {}).get(a, {}).get("correct"))
            share = robust / total if total else 0.5
            done = int(prev.get("restarts_done") or 0)
            # restart 1 attacks every sample, on a randomized defense only the share the suite left robust
            passes = (0 if done else share if randomized else 1) + (saturation.RESTARTS - max(done, 1)) * share
            secs = rate * n * passes
            rows.append([variant, dataset, norm, a, f"{secs / 3600:.1f}", f"{100 * share:.0f}% of {total}" if total else "50% (assumed)"])
    if not rows and not missing:
        return ""
    head = f"the budget check ({saturation.FACTOR}x steps, {saturation.RESTARTS} restarts, first {n} samples), after each group is merged"
    out = [f"{head}: about {sum(float(r[4]) for r in rows):.1f} core-hours more (an upper bound: an attack that draws no randomness on a deterministic defense stops after one restart)" if rows else f"{head}:"]
    if rows:
        out += ["", tabulate(rows, headers=["defense", "dataset", "norm", "attack", "core-hours", "standing after the first pass"], disable_numparse=True)]
    if missing:
        out += ["", f"not estimated (no finished shard of that attack on that defense yet): {', '.join(missing)}"]
    return "\n".join(out)


def _cfg(job: SweepJob, *, attacks: tuple[str, ...] | None):
    from harness.engine.runner import RunConfig

    return RunConfig(defense=job.defense, dataset=job.dataset, norm=job.norm, suite=job.suite, n=job.n, seed=job.seed, device=job.device, batch_size=job.batch_size, eps=job.eps, attacks=attacks, progress=False, train_if_missing=False, arch=job.arch, defense_options=job.options)


def attack_identity(spec_hash: str, eps: float | None, score_draws: int) -> str:
    """What a job's output depends on in its suite: the attack spec (its hash, as the result manifest
    records it, covers name, params, restarts, seed and the EOT applied, and the eps of one eps of a
    sweep; "" for the clean pass), the eps it runs at, and the number of
    draws the clean pass scores a randomized defense with (the suite's largest EOT)."""
    return hashlib.sha256(f"{spec_hash}@{eps if eps is None else float(eps)!r}:{int(score_draws)}".encode()).hexdigest()[:12]


def _legacy_identity(saved: dict, attack: str) -> str | None:
    """The attack identity of a partial file written before jobs carried ``attack_id`` (they held the
    hash of the suite file's text instead), rebuilt from what its manifest records."""
    manifest = saved.get("manifest") or {}
    draws = manifest.get("score_draws", 1)
    if attack == CLEAN_KEY:
        return attack_identity("", None, draws)
    entry = (manifest.get("attacks") or {}).get(attack)
    if not isinstance(entry, dict) or "spec_hash" not in entry or "eps" not in entry:
        return None
    return attack_identity(entry["spec_hash"], entry["eps"], draws)


@dataclass(frozen=True)
class Today:
    """What a run of one defense would record today, for :func:`is_done`."""

    config: dict | None  # its ``defense_config`` (None: it cannot be built here)
    checkpoint_sha256: str | None  # the model card found now (None: no checkpoint, or cannot tell)


def today_configs(jobs: list[SweepJob]) -> dict[tuple, Today]:
    """Today's ``defense_config`` and checkpoint of every (defense, dataset, options) of ``jobs``
    (:func:`harness.engine.models.today_config`, :func:`harness.engine.models.today_checkpoint_sha`),
    for :func:`is_done`."""
    from harness.engine.models import today_checkpoint_sha, today_config

    out: dict[tuple, Today] = {}
    for j in jobs:
        key = (j.defense, j.dataset, j.options, j.arch)
        if key not in out:
            out[key] = Today(today_config(j.defense, j.dataset, j.defense_options), today_checkpoint_sha(j.defense, j.dataset, j.defense_options))
    return out


def is_done(job: SweepJob, results_dir: str | os.PathLike, configs: dict[tuple, Today] | None = None) -> bool:
    """True when the job's partial file exists and was written for this exact job spec (or, for a
    file from before ``attack_id`` existed, for the same job fields and the same attack spec and eps)
    and, with ``configs`` (:func:`today_configs`), for the defense's settings and checkpoint of today
    (a file computed before a recalibration, a new inference default or a retraining is not finished
    work: the sweep redoes it instead of merging another model's records)."""
    p = job.partial_path(results_dir)
    if not p.is_file():
        return False
    try:
        saved = json.loads(p.read_text(encoding="utf-8"))
        if configs is not None:
            from harness.engine.models import config_changes

            today = configs.get((job.defense, job.dataset, job.options, job.arch))
            man = saved.get("manifest", {})
            if today is not None and today.config is not None and config_changes(man.get("defense_config") or {}, today.config):
                return False
            recorded = man.get("checkpoint_sha256")
            if today is not None and today.checkpoint_sha256 and recorded and recorded != today.checkpoint_sha256:
                return False
        if saved.get("job_hash") == job.spec_hash:
            return True
        old = saved.get("job")
        if not isinstance(old, dict) or "suite_sha" not in old:
            return False
        mine = asdict(job)
        mine.pop("attack_id")
        mine.pop("cost")
        old = {k: v for k, v in old.items() if k not in ("suite_sha", "cost")}
        old["options"] = tuple(tuple(o) for o in old.get("options", ()))
        return old == mine and _legacy_identity(saved, job.attack) == job.attack_id
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return False


def run_job(job: SweepJob, results_dir: str) -> str:
    """Evaluate one job (on the worker: checkpoint and data are resolved here) with the stages of
    ``bench run`` (:mod:`harness.engine.runner`) and write its partial file."""
    from harness.engine.runner import Evaluation, attack, clean_pass, model_trust, prepare

    from harness.engine import threads

    start = threads.mark()
    ctx = prepare(_cfg(job, attacks=None), log=lambda *_: None)
    todo = [] if job.attack == CLEAN_KEY else [a for a in ctx.jobs if a.key == job.attack]
    if job.attack != CLEAN_KEY and not todo:
        raise BenchUserError(f"job {job.name}: attack {job.attack!r} not in suite {job.suite!r}")
    reused = shared_clean_pass(job, results_dir, ctx)
    ev = Evaluation.start(ctx, reused[0] if reused else clean_pass(ctx, job.start, job.stop))
    if reused:
        ev.manifest["clean_pass_from"] = reused[1]
    for a in todo:
        ev.add(attack(ctx, a, ev.records, job.start))
    if job.start == 0:  # the trust checks of `bench run` on the defense, on the same first block
        ev.manifest["model_warnings"], ev.manifest["gradient_check"] = model_trust(ctx)
    mean = threads.recorded(start)
    if mean != start[1]:  # --threads auto changed them while the job ran: its device names the count it started with
        ev.manifest["threads_mean"] = mean
    path = job.partial_path(results_dir)
    atomic_write_json(path, {"job": asdict(job), "job_hash": job.spec_hash, "manifest": ev.manifest, "records": ev.records})
    _test_hooks(job)
    return str(path)


#: the job fields that must agree for two jobs of one shard to share a clean pass (all but the attack's)
_SHARD_FIELDS = ("defense", "dataset", "norm", "suite", "shard", "shards", "start", "stop", "n", "seed", "batch_size", "eps", "arch", "options")


def shared_clean_pass(job: SweepJob, results_dir: str | os.PathLike, ctx):
    """The clean pass of a finished job of the same shard (another attack's partial file), as
    ``(CleanPass, "attack/shard-i-of-S")``, or None when there is none to reuse.

    The merge requires every job of a shard to have recorded the same clean verdicts; a randomized
    defense draws them from a generator whose stream differs between devices (a CUDA generator is
    not a CPU one, and a GPU batches the EOT draws), so a job on a GPU could disagree with the CPU
    jobs of its shard on a borderline sample. Reusing the recorded clean pass keeps a shard's jobs
    consistent on any mix of machines and saves the clean pass. Reused only from a file of the same
    shard and plan settings, of today's checkpoint and defense settings, on the same samples and
    labels; anything else (a corrupt file included) is passed over and the clean pass recomputed."""
    from harness.engine.models import config_changes
    from harness.engine.runner import CleanPass

    own = job.partial_path(results_dir)
    fields = asdict(job)
    mine = json.loads(json.dumps({k: fields[k] for k in _SHARD_FIELDS}))  # as a partial file holds it
    ids = ctx.ids[job.start:job.stop]
    for path in sorted(own.parent.parent.glob(f"*/{own.name}")):
        if path == own:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            other, man, records = data["job"], data["manifest"], data["records"]
            if {k: other.get(k) for k in _SHARD_FIELDS} != mine:
                continue
            if man.get("checkpoint_sha256") != ctx.manifest.get("checkpoint_sha256") or config_changes(ctx.manifest.get("defense_config") or {}, man.get("defense_config") or {}):
                continue
            if [r["index"] for r in records] != list(ids) or [r["label"] for r in records] != [int(v) for v in ctx.y[job.start:job.stop]]:
                continue
            if man.get("score_draws") != ctx.manifest.get("score_draws"):
                continue
            clean = [{k: v for k, v in r.items() if k != "attacks"} | {"attacks": {}} for r in records]
            return CleanPass(clean, float(man.get("clean_wall_time_s") or 0.0)), f"{path.parent.name}/{path.stem}"
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return None


def _test_hooks(job: SweepJob) -> None:
    """Test-only throttle: ``BENCH_SWEEP_JOB_SLEEP`` seconds after each job (lets tests kill a sweep mid-way)."""
    delay = os.environ.get("BENCH_SWEEP_JOB_SLEEP")
    if delay:
        time.sleep(float(delay))


def planned_check(plan: Plan) -> dict | None:
    """The budget check a plan asks for (``check_budget``, ``check_attacks``), as merged files record
    it (``budget_check_planned``); None when the plan has none."""
    if not plan.check_budget:
        return None
    return {"n": int(plan.check_budget), "attacks": None if plan.check_attacks is None else list(plan.check_attacks)}


def merge(jobs: list[SweepJob], results_dir: str | os.PathLike, *, command: str | None = None, configs: dict[tuple, Today] | None = None, force: bool = False, partial: bool = False, log=print,
          check: dict | None = None) -> list[Path]:
    """Write the canonical result file of every (dataset, norm, defense) whose jobs are all done
    (``configs``: today's defense settings, :func:`today_configs`; see :func:`is_done`).

    A file already merged from exactly these shard files (its ``shards_sha256``) is left as it is
    unless ``force``: rerunning a sweep for its other groups does not rewrite a finished group's
    file, so what was added to it since (a ``bench run --check-budget``, another attack) and its
    provenance stay untouched.

    ``partial`` (``bench sweep --merge-partial``): a group whose jobs are not all done is merged too,
    from the attacks whose shards are all finished; the others are named in the manifest's
    ``pending_attacks`` (``{key: "k/S shards"}``), which makes the row's verdict unreliable
    ("incomplete") until a later merge of the finished group replaces the file.

    ``check`` (:func:`planned_check`): the plan's budget check, recorded in each file as
    ``budget_check_planned``; until it has run, the row's verdict reads "budget check pending"
    (:func:`harness.engine.sanity.verdict`). A file merged already from the same shards gets (or
    loses) that record in place, without being rewritten otherwise.

    Each file is written under its write lock (:func:`_write_lock`), which a budget check's blocks
    take too; a file that a ``bench run`` holds (:func:`harness.engine.runner.claim_file`) is left
    as it is, with a line to ``log``, and merged by a later sweep."""
    from harness.store import claims

    groups: dict[tuple[str, str, str], list[SweepJob]] = {}
    for j in jobs:
        groups.setdefault((j.dataset, j.norm, j.variant), []).append(j)
    written = []
    for (dataset, norm, variant), gjobs in groups.items():
        done = [is_done(j, results_dir, configs) for j in gjobs]
        pending: dict[str, str] = {}
        if not all(done):
            if not partial:
                continue
            per_attack: dict[str, list[bool]] = {}
            for j, d in zip(gjobs, done):
                per_attack.setdefault(j.attack, []).append(d)
            pending = {a: f"{sum(ds)}/{len(ds)} shards" for a, ds in per_attack.items() if not all(ds)}
            gjobs = [j for j in gjobs if j.attack not in pending]
            if not gjobs:
                continue
        raw = {(j.attack, j.shard): j.partial_path(results_dir).read_bytes() for j in gjobs}
        digest = hashlib.sha256("\n".join(f"{a}/{s}:{hashlib.sha256(b).hexdigest()}" for (a, s), b in sorted(raw.items())).encode()).hexdigest()
        path = result_path(results_dir, dataset, norm, variant)
        if not force and _merged_digest(path) == digest and _merged_pending(path) == pending and _merged_planned(path) == check:
            continue  # merged already (asked again below, under the lock: another process may merge it meanwhile)
        with _write_lock(path):  # a sweep's check may be merging its block into the file meanwhile
            who = claims.holder(claims.lock_path(path))  # after taking the write lock: a bench run that starts later waits for it
            if who is not None:
                log(f"sweep: {path} not merged: a bench run writes it ({who}); rerun the sweep when it is done")
                continue
            if not force and _merged_digest(path) == digest and _merged_pending(path) == pending:
                if _merged_planned(path) != check:  # the same row: only the plan's check changed
                    data = json.loads(path.read_text(encoding="utf-8"))
                    _set_planned(data["manifest"], check)
                    write_result(path, data)
                    written.append(path)
                continue
            data = _merged_data(gjobs, results_dir, raw, digest, pending, path, command)
            _set_planned(data["manifest"], check)
            write_result(path, data)
            written.append(path)
    return written


def _merged_data(gjobs: list[SweepJob], results_dir: str | os.PathLike, raw: dict, digest: str, pending: dict[str, str], path: Path, command: str | None) -> dict:
    """The merged result file of one group (:func:`merge`) from its shard files' bytes ``raw``: records
    and attacks joined, provenance, the budget check kept from the file at ``path``, outcome checks."""
    from harness.engine.models import config_changes
    from harness.engine.sanity import outcome_checks
    from harness.store.provenance import code_commit, command_line

    dataset, norm, variant = gjobs[0].dataset, gjobs[0].norm, gjobs[0].variant
    parts = {key: json.loads(b.decode("utf-8")) for key, b in raw.items()}
    keys = list(dict.fromkeys(j.attack for j in gjobs))
    shards = sorted({j.shard for j in gjobs})
    first = parts[(keys[0], shards[0])]["manifest"]
    manifest = {k: v for k, v in first.items() if k not in ("clean_wall_time_s", "attacks", "model_warnings", "gradient_check", "clean_pass_from")}
    manifest["attacks"] = {}
    shas = {p["manifest"].get("checkpoint_sha256") for p in parts.values()}
    if len(shas) > 1:
        raise BenchUserError(f"{dataset}/{norm}/{variant}: shard files come from different checkpoints; delete {Path(results_dir) / '.shards'} (or that part of it) and rerun")
    mixed = sorted({c for p in parts.values() for c in config_changes(first.get("defense_config") or {}, p["manifest"].get("defense_config") or {})})
    if mixed:
        raise BenchUserError(f"{dataset}/{norm}/{variant}: shard files evaluated the defense with different settings ({'; '.join(mixed)}); rerun the sweep (it redoes the shards of other settings than today's)")
    data_sums = {(p["manifest"].get("data") or {}).get("checksum") for p in parts.values()}
    if len(data_sums) > 1:
        raise BenchUserError(f"{dataset}/{norm}/{variant}: shard files evaluated different data files (checksums "
                             f"{', '.join(sorted(str(c)[:12] for c in data_sums))}); delete {Path(results_dir) / '.shards'} (or that part of it) and rerun on one copy of the data")
    data_sources = sorted({str(p["manifest"]["data"]["source"]) for p in parts.values() if (p["manifest"].get("data") or {}).get("source")})
    if len(data_sources) > 1 and manifest.get("data"):
        # the same files (checksums agree) read from several places: name them all, not whichever
        # shard happens to come first (which changes as a partial merge gains attacks)
        manifest["data"] = dict(manifest["data"], source=" + ".join(data_sources))
    records = []
    clean_wall = 0.0
    for s in shards:
        base = parts[(keys[0], s)]
        recs = [{k: v for k, v in r.items() if k != "attacks"} | {"attacks": {}} for r in base["records"]]
        for key in keys:
            other = parts[(key, s)]["records"]
            if not _same_clean_pass(other, recs):
                raise BenchUserError(f"{dataset}/{norm}/{variant} shard {s}: jobs disagree on the clean pass (non-deterministic defense?); rerun with a fresh results dir")
            if key != CLEAN_KEY:
                for r, o in zip(recs, other, strict=True):
                    r["attacks"][key] = o["attacks"][key]
        records.extend(recs)
        clean_wall += base["manifest"].get("clean_wall_time_s") or 0.0
    for key in keys:
        if key == CLEAN_KEY:
            continue
        entry = dict(parts[(key, shards[0])]["manifest"]["attacks"][key])
        entry["wall_time_s"] = round(sum(parts[(key, s)]["manifest"]["attacks"][key]["wall_time_s"] for s in shards), 3)
        notes = list(dict.fromkeys(n for s in shards for n in parts[(key, s)]["manifest"]["attacks"][key].get("notes", [])))
        if notes:
            entry["notes"] = notes
        manifest["attacks"][key] = entry
    if [r["index"] for r in records] != manifest["sample_ids"]:
        raise BenchUserError(f"{dataset}/{norm}/{variant}: merged records do not cover the sample ids; delete {Path(results_dir) / '.shards'} and rerun")
    manifest["suite"] = "+".join(dict.fromkeys(j.suite for j in gjobs))
    manifest["command"] = command or command_line()
    manifest["clean_wall_time_s"] = round(clean_wall, 3)
    manifest["created"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if "gradient_check" in first:
        manifest["gradient_check"] = first["gradient_check"]
    manifest["shards_sha256"] = digest
    sources = _shard_sources({k: v["manifest"] for k, v in parts.items()}, {(j.attack, j.shard): j.partial_path(results_dir).stem for j in gjobs})
    if len(sources) > 1:
        # shards written at several commits or on several machines: the file says so instead
        # of passing the first shard's provenance off as the whole row's
        manifest["commit"] = code_commit()
        manifest["device"] = " + ".join(dict.fromkeys(s["device"] for s in sources))
        manifest["shard_sources"] = sources
    if pending:
        manifest["pending_attacks"] = pending
    kept, commands = _kept_budget_check(path, manifest, records)
    if kept:
        manifest["budget_check"] = kept
        # the commands that wrote the kept check (bench run --check-budget) stay on record
        earlier = [c for c in commands if c != manifest["command"]]
        if earlier:
            manifest["earlier_commands"] = earlier
    manifest["warnings"] = list(first.get("model_warnings", [])) + outcome_checks({"manifest": manifest, "records": records})
    return {"schema": SCHEMA_VERSION, "manifest": manifest, "records": records}


#: how far a float of the clean pass (a diagnostic such as ABS's ``certified_l2``) may move between
#: the jobs of one shard: an inference-time optimisation run at another thread count or commit
#: rounds differently (measured on E-ABS: up to 6e-4 relative); the verdicts must agree exactly
CLEAN_FLOAT_RTOL = 1e-2


def _same_clean_pass(a: list[dict], b: list[dict]) -> bool:
    """Whether two jobs of one shard recorded the same clean pass: the same samples, labels and
    verdicts (clean correct, abstained) exactly, and float diagnostics within :data:`CLEAN_FLOAT_RTOL`
    (the merged file keeps the first job's)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        ra = {k: v for k, v in ra.items() if k != "attacks"}
        rb = {k: v for k, v in rb.items() if k != "attacks"}
        if ra.keys() != rb.keys():
            return False
        for k, va in ra.items():
            vb = rb[k]
            if isinstance(va, float) and isinstance(vb, float):
                if not math.isclose(va, vb, rel_tol=CLEAN_FLOAT_RTOL, abs_tol=1e-6):
                    return False
            elif va != vb or type(va) is not type(vb):
                return False
    return True


def _shard_sources(manifests: dict[tuple[str, int], dict], names: dict[tuple[str, int], str]) -> list[dict]:
    """Who wrote the shard files of one merge: one entry per distinct (commit, device, package
    versions, data source), with the shards (``attack/shard-i-of-S``) it wrote."""
    out: dict[str, dict] = {}
    for key in sorted(manifests):
        m = manifests[key]
        src = {"commit": m.get("commit", "unknown"), "device": m.get("device", "unknown"), "versions": m.get("versions") or {},
               "data_source": (m.get("data") or {}).get("source", "unknown")}
        out.setdefault(json.dumps(src, sort_keys=True), dict(src, shards=[]))["shards"].append(f"{key[0]}/{names[key]}")
    return list(out.values())


def _merged_digest(path: Path) -> str | None:
    """The ``shards_sha256`` of the merged file at ``path`` (None when missing or unreadable)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))["manifest"].get("shards_sha256")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _set_planned(manifest: dict, check: dict | None) -> None:
    if check:
        manifest["budget_check_planned"] = check
    else:
        manifest.pop("budget_check_planned", None)


def _merged_planned(path: Path) -> dict | None:
    """The ``budget_check_planned`` of the merged file at ``path`` (None when it has none or is unreadable)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))["manifest"].get("budget_check_planned") or None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _merged_pending(path: Path) -> dict | None:
    """The ``pending_attacks`` of the merged file at ``path`` ({} when it has none, None when unreadable)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))["manifest"].get("pending_attacks") or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _kept_budget_check(path: Path, manifest: dict, records: list[dict]) -> tuple[dict | None, list[str]]:
    """The budget check (``bench run --check-budget`` on a merged file) of the file a merge replaces,
    for the attacks it still holds at the same budget on the same first samples, and the commands
    that wrote that file (its ``earlier_commands``, then its ``command``); else ``(None, [])``."""
    if not path.is_file():
        return None, []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))["manifest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, []
    check = old.get("budget_check") or {}
    n = int(check.get("n") or 0)
    if not n or old.get("sample_ids", [])[:n] != manifest["sample_ids"][:n] or old.get("checkpoint_sha256") != manifest.get("checkpoint_sha256"):
        return None, []
    attacks = {k: e for k, e in (check.get("attacks") or {}).items() if e.get("of") == (manifest["attacks"].get(k) or {}).get("spec_hash")}
    if not attacks:
        return None, []
    from harness.engine.saturation import worst_case

    commands = [c for c in [*(old.get("earlier_commands") or []), old.get("command")] if isinstance(c, str) and c]
    return dict(check, attacks=attacks, all=worst_case(records[:n], manifest["attacks"], attacks)), list(dict.fromkeys(commands))


def merge_partial(plan: Plan, *, results_dir: str | os.PathLike, log=print) -> list[Path]:
    """``bench sweep --merge-partial``: merge every group of ``plan`` from the attacks finished so far
    (:func:`merge` with ``partial``), run nothing; the budget check waits for the finished group."""
    from harness.store.provenance import command_line

    jobs = expand(plan)
    configs = today_configs(jobs)
    written = merge(jobs, results_dir, command=command_line(), configs=configs, partial=True, check=planned_check(plan))
    for path in written:
        pending = json.loads(path.read_text(encoding="utf-8"))["manifest"].get("pending_attacks") or {}
        log(f"wrote {path}" + (f" (pending: {', '.join(f'{a} {s}' for a, s in pending.items())})" if pending else ""))
    if not written:
        log("nothing to merge: no group has a newly finished attack")
    return written


def check_merged(jobs: list[SweepJob], results_dir: str | os.PathLike, *, n: int, attacks: tuple[str, ...] | None = None, configs=None, progress: bool = True, log=print,
                 deadline: float | None = None, pace=None, block: int = 0) -> list[Path]:
    """The budget saturation check on every merged file whose jobs are all done, in this process, one
    attack at a time (:func:`harness.engine.runner.check_file`; resumable block by block; a finished
    check is kept). Each attack's check is claimed with its own lock (``<file>.check-<attack>``), so
    other sweep processes check the file's other attacks meanwhile; a file whose check is finished, or
    whose next blocks cannot fit ``deadline``, is skipped before any defense is built (:func:`_check_left`).
    ``attacks``: check only these (the plan's ``check_attacks``); None checks every gradient attack.
    ``deadline`` (seconds since the epoch): start no block of a check that is estimated to end after
    it (:func:`harness.engine.saturation.run`) and no file's check once it has passed.
    ``pace()`` (``--threads auto``, :func:`fit_threads`) is called before each block of a check.
    ``block`` (``--check-block``): samples per block of the check (0: the default,
    :func:`harness.engine.saturation.check_block`).

    A group whose jobs are not all done is checked too when its file is a partial merge (``bench
    sweep --merge-partial``, :func:`merge`): the file is first merged again from the shards finished
    now (rewritten only if they changed), then the attacks whose shards are all finished are checked;
    the others wait. A later merge keeps the check (:func:`_kept_budget_check`). So the check's
    blocks can fill the time of a session that no remaining job fits in."""
    from dataclasses import replace

    from harness.engine import saturation
    from harness.engine.runner import check_file
    from harness.store import claims
    from harness.store.provenance import command_line

    groups: dict[tuple[str, str, str], list[SweepJob]] = {}
    for j in jobs:
        groups.setdefault((j.dataset, j.norm, j.variant), []).append(j)
    checked = []
    for (dataset, norm, variant), gjobs in groups.items():
        path = result_path(results_dir, dataset, norm, variant)
        if not path.is_file():
            continue
        finished: dict[str, bool] = {}
        complete = True
        for j in gjobs:
            ok = is_done(j, results_dir, configs)
            complete = complete and ok  # the clean-only job counts too
            if j.attack != CLEAN_KEY:
                name = j.attack.split("@")[0]
                finished[name] = finished.get(name, True) and ok
        names = tuple(finished)
        partial = not complete
        if partial:
            if not _merged_pending(path) or not any(finished.values()):
                continue  # a group still running is checked only when its file is a partial merge
            names = tuple(a for a, ok in finished.items() if ok)
            log(f"budget check of {path} (a partial merge): {', '.join(a for a, ok in finished.items() if not ok)} wait for their shards")
        if attacks is not None:
            left = [a for a in names if a not in attacks]
            names = tuple(a for a in names if a in attacks)
            if left:
                log(f"budget check of {path}: {', '.join(left)} left out by the plan's check_attacks")
        suites = {j.suite for j in gjobs}
        if not names or len(suites) > 1:
            if names:
                log(f"no budget check of {path}: it merges several suites ({', '.join(sorted(suites))}); run bench run --check-budget per suite")
            continue
        if deadline is not None and time.time() >= deadline:
            log(f"budget check of {path}: not started, the time limit is reached; rerun to continue")
            continue
        if partial:  # merged again from the shards finished now (rewritten only if they changed; merge holds the write lock)
            merge(gjobs, results_dir, command=command_line(), configs=configs, partial=True, log=log,
                  check={"n": int(n), "attacks": None if attacks is None else list(attacks)})
        why = _check_left(path, n, names, deadline, block=block)
        if why:
            log(f"budget check of {path}: {why}")
            continue
        try:
            doubled = saturation.checkable(load_result(path), names)
        except (BenchUserError, OSError, ValueError, KeyError, TypeError):
            doubled = names  # the run reports what is wrong with the file
        skipped = tuple(a for a in names if a not in doubled)  # recorded as not_checked with the first attack checked
        for name in doubled:  # one attack at a time, each under its own lock: other processes check the others
            held = claims.take(path.with_name(f"{path.name}.check-{name}"))
            if isinstance(held, str):
                log(f"budget check of {path}: {name} {held}")
                continue
            with held:
                who = claims.holder(claims.lock_path(path))  # after taking ours: a bench run that starts later sees ours
                if who is not None:
                    log(f"budget check of {path}: {name} not started: a bench run writes the file ({who}); rerun when it is done")
                    continue
                why = _check_left(path, n, (name,), deadline, block=block)  # re-read: another process may have finished it
                if why:
                    if not why.startswith("finished"):
                        log(f"budget check of {path}: {name} {why}")
                    continue
                log(f"budget check of {path}: {name} on its first {n} samples")
                cfg = replace(_cfg(gjobs[0], attacks=(name, *skipped)), results_dir=str(results_dir), check_budget=n, check_block=block, progress=progress)
                done = check_file(cfg, log=log, deadline=deadline, write_lock=lambda: _write_lock(path), pace=pace)
                checked += [done] if done not in checked else []
                skipped = ()
    return checked


@contextlib.contextmanager
def _write_lock(path: Path, *, wait_s: float = 120.0):
    """Hold ``path``'s write lock (``<file>.write.lock``, :mod:`harness.store.claims`) while one
    process merges its budget check entries into the file: waits up to ``wait_s`` for another's."""
    from harness.store import claims

    end = time.time() + wait_s
    while True:
        held = claims.take(path.with_name(f"{path.name}.write"))
        if not isinstance(held, str):
            break
        if time.time() > end:
            raise BenchUserError(f"cannot write {path}: {held}")
        time.sleep(0.2)
    with held:
        yield


def _check_left(path: Path, n: int, names: tuple[str, ...], deadline: float | None, *, clock=time.time, block: int = 0) -> str | None:
    """Why the budget check of the merged file ``path`` (attacks ``names``, first ``n`` samples) need
    not start now, read from the file alone (:func:`harness.engine.saturation.pending`): it is finished,
    or the next block of every attack it has left is estimated to end after ``deadline``
    (:func:`harness.engine.saturation.next_block_s`). None to start it: the whole evaluation that the
    sweep called for every file before stop 44 built the defense and reran its trust checks (E-ABS:
    about 3 min) before the check itself found nothing to do; this reads the file alone. A file that cannot be read starts it (the run reports the problem)."""
    from harness.engine import saturation

    try:
        data = load_result(path)
        left = saturation.pending(data, n, names)
    except (BenchUserError, OSError, ValueError, KeyError, TypeError):
        return None
    if not left:
        return f"finished on its first {min(n, len(data['records']))} samples; nothing to run"
    if deadline is None:
        return None
    time_left = deadline - clock()
    costs = {k: saturation.next_block_s(data, k, e, n=n, block=block or saturation.CHECK_BLOCK) for k, e in left.items()}
    if time_left > 0 and any(c is None or c <= time_left for c in costs.values()):
        return None
    est = ", ".join(f"{k} {c / 60:.0f} min" for k, c in costs.items())
    return f"not started: the next block of each attack left is estimated at {est} and {max(0.0, time_left) / 60:.0f} min are left; rerun to continue"


def time_gate(deadline: float, results_dir: str | os.PathLike, *, clock=time.time):
    """The check the local executor makes before it starts each job under ``bench sweep --time-limit``
    / ``--deadline`` (``deadline``: seconds since the epoch): None to start the job, else why not.
    A job is started only if its estimate (:func:`job_seconds`, scaled from the *latest* finished
    shard of each attack, re-read before every job so this run's own shards count: the first shards
    of a session often ran under other load) fits in the time left; a job nothing has been measured
    for is started while time is left. A job that is not started loses nothing (jobs are all or
    nothing: one killed at the deadline would be lost whole). Only shards computed on the job's kind
    of device count, scaled to this process's torch threads (``_shard_rates(here=...)``; ``pace()``,
    ``--threads auto``, runs before the gate so the estimate sees the threads the job will run on)."""

    import torch

    def gate(job: SweepJob) -> str | None:
        left = deadline - clock()
        if left <= 0:
            return "the time limit is reached"
        kind = job.device.split(":")[0] if job.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        here = (kind, torch.get_num_threads() if kind == "cpu" else None)
        rates = {k: v[-1] for k, v in _shard_rates(results_dir, here=here).items()}
        secs, how = job_seconds(job, rates)
        if secs is not None and secs > left:
            on = f"latest shard on this kind of device, scaled to {here[1]} thread(s)" if kind == "cpu" else f"latest shard on this kind of device, {kind}"
            return f"the next job ({job.name}) is estimated at {secs / 60:.0f} min ({how}, {on}) and {left / 60:.0f} min are left"
        return None

    return gate


def job_claim(results_dir: str | os.PathLike, configs: dict[tuple, Today] | None = None):
    """The check the local executor makes before each job so that several sweep processes can share
    one results directory (:mod:`harness.store.claims`): the job's lock
    (:class:`~harness.store.claims.Claim`, held while it runs), or why another process has it:
    it finished the job since this sweep listed its jobs, or is running it now."""
    from harness.store import claims

    def claim(job: SweepJob):
        if is_done(job, results_dir, configs):
            return "finished it meanwhile"
        got = claims.take(job.partial_path(results_dir))
        if not isinstance(got, str) and is_done(job, results_dir, configs):  # finished between the two looks
            got.release()
            return "finished it meanwhile"
        return got

    return claim


def get_executor(name: str, *, address: str | None = None):
    """The executor called ``name`` (``local`` or ``ray``)."""
    if name == "local":
        from harness.orchestration.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        from harness.orchestration.executors.ray_executor import RayExecutor

        return RayExecutor(address=address)
    raise BenchUserError(f"unknown executor {name!r}; use local or ray")


def check_only(jobs: list[SweepJob], only: tuple[str, ...]) -> None:
    """Refuse (:class:`BenchUserError`) ``--only`` names that are not attacks of the plan's jobs."""
    names = {j.attack.split("@")[0] for j in jobs}
    unknown = [a for a in only if a not in names]
    if unknown:
        raise BenchUserError(f"--only {', '.join(unknown)}: not among the plan's attacks ({', '.join(sorted(names))})")


def _cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fit_threads(results_dir: str | os.PathLike, *, log=print, cores: int | None = None) -> int:
    """``bench sweep --threads auto``: set this process's torch threads to its share of the cores,
    ``cores // (1 + others)`` (at least 1), ``others`` being the other sweep processes on this host
    that hold a lock under ``results_dir`` (:func:`harness.store.claims.neighbours`); logs a change and
    returns the count. Called before each job and each block of a budget check, so when one of two
    1-thread processes finishes its work, the other runs its next block on both cores (on this
    project's 2 cores E-ABS C&W-200 blocks ran 360 s a sample on one thread beside another process
    and 195 s alone, stop 46, and 153 s alone on two threads, stop 47), and a process that starts beside one with all the cores gets its
    share within 30 s: ``run_sweep`` calls this between the defense's forwards too
    (:func:`harness.engine.eot.between_forwards`; until stop 55 only at that one's next job or block,
    and the cores were oversubscribed until then, :func:`oversubscribed`)."""
    import torch

    from harness.store import claims

    others = claims.neighbours(results_dir) if Path(results_dir).is_dir() else []
    cores = _cores() if cores is None else cores
    want = max(1, cores // (1 + len(others)))
    have = torch.get_num_threads()
    if want != have:
        from harness.engine import threads as _threads

        _threads.set_threads(want)
        log(f"sweep: {want} torch thread(s) (was {have}): {len(others)} other sweep process(es) on this host work on {results_dir}; {cores} cores")
    return want


def oversubscribed(results_dir: str | os.PathLike, *, threads: int | None = None, cores: int | None = None) -> str | None:
    """Why this sweep process would oversubscribe the cores, or None: other sweep processes on this host
    work on ``results_dir`` (their locks, :func:`harness.store.claims.neighbours`) and this one
    runs ``threads`` torch threads (default: torch's) with more threads than cores in all, counting one
    per other process at least. Measured in stop 44: an E-ABS PGD-160 block ran 389 s a sample on 2
    threads beside a 1-thread process, 222 s on one thread beside another 1-thread process (stop 43)."""
    import torch

    from harness.store import claims

    others = claims.neighbours(results_dir) if Path(results_dir).is_dir() else []
    threads = torch.get_num_threads() if threads is None else threads
    cores = _cores() if cores is None else cores
    if not others or threads <= 1 or threads + len(others) <= cores:
        return None
    return (f"{len(others)} other sweep process(es) on this host work on {results_dir} (pid {', '.join(map(str, others))}) and this one runs "
            f"{threads} torch threads on {cores} cores: oversubscribed cores slow every process; start each with OMP_NUM_THREADS=1 "
            f"(or cores / processes)")


def landed_merge(plan: Plan, jobs: list[SweepJob], results_dir: str | os.PathLike, *, command: str | None, configs: dict[tuple, Today] | None, log=print,
                 check: bool = True, progress: bool = True, deadline: float | None = None, pace=None, check_block: int = 0):
    """The executors' ``landed(job)`` callback: when a job finishes, its group's file is written at
    once instead of when the sweep ends. The job's group finished: it is merged (:func:`merge`) and,
    with ``check`` (the local executor) and a plan with ``check_budget``, its budget check runs next
    (:func:`check_merged`, block by block under ``deadline``). The group's file is a partial merge
    (``--merge-partial``) and the job completed its attack: the file is merged again with that
    attack. Until stop 55 a sweep merged only at its end, so a row finished early in a session
    waited for the session's deadline, and its check got no time before it (the L∞ E-ABS row of
    stop 54 was merged at 13:10 with its PGD check pending). A failure here is logged, not raised:
    the sweep merges again at its end."""
    check_plan = planned_check(plan)

    def landed(job: SweepJob) -> None:
        key = (job.dataset, job.norm, job.variant)
        group = [j for j in jobs if (j.dataset, j.norm, j.variant) == key]
        path = result_path(results_dir, *key)
        try:
            done = [(j, is_done(j, results_dir, configs)) for j in group]
            complete = all(d for _, d in done)
            if not complete:
                attack_done = all(d for j, d in done if j.attack == job.attack)
                if not (attack_done and _merged_pending(path)):
                    return
            for p in merge(group, results_dir, command=command, configs=configs, partial=not complete, log=log, check=check_plan):
                log(f"wrote {p}" + ("" if complete else " (partial merge: " + ", ".join(f"{a} {s}" for a, s in (_merged_pending(p) or {}).items()) + " pending)"))
            if complete and check and plan.check_budget:
                check_merged(group, results_dir, n=plan.check_budget, attacks=plan.check_attacks, configs=configs, progress=progress, log=log,
                             deadline=deadline, pace=pace, block=check_block)
        except Exception as exc:  # noqa: BLE001 - the end of the sweep merges (and checks) again
            from harness.orchestration.executors import short_error

            log(f"sweep: WARNING: {path} not merged after {job.name} ({short_error(exc)}); the sweep merges it at its end")

    return landed


def _sweep_body(plan: Plan, *, results_dir: str, executor: str, address: str | None, max_retries: int, progress: bool, log, only, deadline, pace, check_block: int) -> dict[str, str]:
    """:func:`run_sweep` after its arguments are checked and its threads set: run, merge, check; returns the failures."""
    from harness.store.provenance import command_line

    jobs = expand(plan)
    if only is not None:
        check_only(jobs, only)
    configs = today_configs(jobs)
    done = [j for j in jobs if is_done(j, results_dir, configs)]
    todo = [j for j in jobs if not is_done(j, results_dir, configs)]
    later = [] if only is None else [j for j in todo if j.attack.split("@")[0] not in only]
    todo = [j for j in todo if j not in later]
    log(f"sweep: {len(jobs)} jobs; skipping {len(done)} finished jobs; running {len(todo)} on the {executor} executor"
        + (f"; {len(later)} of other attacks left for later (--only {','.join(only)})" if later else ""))
    if pace is not None:
        pace()
    elif executor == "local":
        warn = oversubscribed(results_dir)
        if warn:
            log(f"sweep: WARNING: {warn}")
    failures: dict[str, str] = {}
    command = command_line()
    if todo:  # groups whose jobs are all finished already are merged first: their files need not wait for the rest
        for path in merge(jobs, results_dir, command=command, configs=configs, check=planned_check(plan)):
            log(f"wrote {path}")
    if todo:
        ex = get_executor(executor, address=address)
        extra = {} if deadline is None else {"gate": time_gate(deadline, results_dir)}
        extra["landed"] = landed_merge(plan, jobs, results_dir, command=command, configs=configs, log=log,
                                       check=executor == "local", progress=progress, deadline=deadline, pace=pace, check_block=check_block)
        if executor == "local":  # Ray hands each job to one worker itself; local sweeps may be several processes
            extra["claim"] = job_claim(results_dir, configs)
            if pace is not None:
                extra["pace"] = pace
        failures = ex.run(todo, results_dir=str(results_dir), max_retries=max_retries, progress=progress, log=log, **extra)
    for path in merge(jobs, results_dir, command=command, configs=configs, check=planned_check(plan)):
        log(f"wrote {path}")
    if plan.check_budget and not failures:
        # under a time limit, block by block: no block starts that its estimate says ends after the deadline
        check_merged(jobs, results_dir, n=plan.check_budget, attacks=plan.check_attacks, configs=configs, progress=progress, log=log, deadline=deadline,
                      pace=pace, block=check_block)
        # a check of a partial merge that outlasted another sweep process's final merge of its group
        # saved the partial file over it: merge the finished group again (its check is kept)
        for path in merge(jobs, results_dir, command=command, configs=configs, check=planned_check(plan)):
            log(f"wrote {path}")
    return failures


def run_sweep(plan: Plan, *, results_dir: str, executor: str = "local", address: str | None = None, max_retries: int = 1, progress: bool = True, log=print,
              only: tuple[str, ...] | None = None, deadline: float | None = None, threads: int | str | None = None, check_block: int = 0) -> int:
    """Run every unfinished job of ``plan``, merge, and return the exit status (1 when jobs failed).

    ``only`` (``bench sweep --only``): run just the jobs of these attacks now; the plan still defines
    what a finished group is, so a group waits for its other attacks before it is merged (unlike a
    copy of the plan listing fewer attacks, whose merge would call the group finished).
    ``deadline`` (seconds since the epoch; ``--time-limit`` / ``--deadline``, local executor only):
    start no job that is not expected to finish by then (:func:`time_gate`), nor a block of the
    budget check (:func:`check_merged`); a rerun continues with the jobs and blocks left.
    ``threads`` (``--threads``, local executor only): torch threads of this process, or ``"auto"``:
    its share of the cores, fitted again before each job and check block (:func:`fit_threads`), and
    within one every 30 s between the defense's forwards (:func:`harness.engine.eot.between_forwards`).
    ``check_block`` (``--check-block``): samples per block of the budget check (0: the default)."""
    if deadline is not None and executor != "local":
        raise BenchUserError("--time-limit / --deadline work with the local executor only (Ray runs jobs in parallel; bound the cluster allocation instead)")
    if threads is not None and executor != "local":
        raise BenchUserError("--threads works with the local executor only (Ray gives each job the CPUs it asks for)")
    pace = None
    if threads == "auto":
        def pace():
            fit_threads(results_dir, log=log)
    elif threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    with contextlib.ExitStack() as stack:
        if pace is not None:  # also during a job: every 30 s between the defense's forwards (a second process may have started)
            from harness.engine import eot

            stack.enter_context(eot.between_forwards(pace))
        failures = _sweep_body(plan, results_dir=results_dir, executor=executor, address=address, max_retries=max_retries, progress=progress, log=log,
                               only=only, deadline=deadline, pace=pace, check_block=check_block)
    if failures:
        log(f"sweep: {len(failures)} job(s) failed after {max_retries} retr{'y' if max_retries == 1 else 'ies'}:")
        for name, err in failures.items():
            log(f"  FAILED {name}: {err}")
        return 1
    return 0
