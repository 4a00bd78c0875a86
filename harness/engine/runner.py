"""Evaluate one defense on one dataset and norm with one attack suite; write the result file.

The pipeline, top to bottom (one function per stage, no shared mutable state between them):

1. :func:`prepare` -- validate the configuration, load the data and the defense, expand the suite
   into :class:`AttackJob` s (:class:`EvalContext`);
2. :func:`clean_pass` -- score the clean samples (:class:`CleanPass`);
3. per attack job, :func:`attack` -- :func:`propose` candidates block by block, :func:`harness.engine.verify.verify`
   them with the defense's real ``predict``, one outcome per sample (:class:`AttackRun`);
4. :class:`Evaluation` -- the one owner of the manifest and the records: it records the clean pass
   and each attack run, the budget check (:mod:`harness.engine.saturation`) and the trust checks
   (:func:`model_trust`), and saves the file atomically after each stage.

:func:`evaluate` (``bench run``) chains them; a sweep job (:func:`harness.orchestration.sweep.run_job`) runs the same
stages on a block-aligned range of samples. An interrupted run keeps every finished attack and a
rerun resumes with the first unfinished one (``fresh=True`` recomputes everything).

Eps sweeps: an attack of a suite may list ``eps = [0.0, 0.1, ...]`` (e.g. ``suites/fgm-sweep.toml``,
Yao et al. Table 1). It then runs once per eps, each verified against a ThreatModel with that eps and
recorded under its own attack key ``<name>@<eps>`` (``fgm@0.2``) whose manifest entry holds the eps.

Batching and randomness: samples are processed in blocks of ``batch_size`` consecutive sample ids
(:func:`blocks`), each block seeded from (seed, attack hash, block index), so the records of a sample
do not depend on how the samples are split into sweep shards.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
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

from benchcore.io import dumps_json
from harness import datasets
from harness.engine import saturation
from harness.attacks import AttackReport, broken_plugins, find_attack, get_attack, origin_of, run_attack
from harness.engine.eot import EOTModel
from harness.errors import BenchUserError
from harness.engine.gradcheck import check_gradients, describe, same_finding
from harness.engine.models import config_changes, load_defense, variant_key
from harness.store.provenance import code_commit, command_line, device_name, package_versions, resolve_device
from harness.store.results import SCHEMA_VERSION, load_result, result_path, write_result
from harness.engine.sanity import is_outcome_check, model_checks, outcome_checks
from harness.engine.verify import score, verify
from threat_models import NORMS, AttackSpec, Suite, SuiteAttack, ThreatModel, default_threat, load_suite

#: seeds the second, independent scoring of a randomized defense's candidates (verify's ``recheck``)
#: from the block seed; the first scoring keeps its own stream (``seed ^ 0x5EED``), so results of
#: earlier versions stay reproducible
RECHECK_SALT = 0x2EC4EC


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
    check_budget: int = 0  # > 0: budget saturation check on the first that many samples (harness/engine/saturation.py)
    check_block: int = 0  # samples per resumable block of that check (0: saturation.CHECK_BLOCK, sized for a CPU core)

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
    (:mod:`harness.orchestration.sweep`), so both compute records with exactly the same code.
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


# -- stage 1: prepare ---------------------------------------------------------------------------

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


# -- stage 2: clean pass ------------------------------------------------------------------------

def blocks(ctx: EvalContext, start: int = 0, stop: int | None = None) -> list[tuple[int, int]]:
    """The blocks ``(b0, b1)`` of sample positions ``[start, stop)``: ``batch_size`` consecutive
    positions each, block ``k`` holding ``k*bs .. k*bs+bs-1``. A sample's records depend only on
    ``(n, seed, batch_size)`` (every block is seeded from its index), never on which range is evaluated,
    so ``start`` must be a multiple of ``batch_size``: sweep shards give exactly the records of one run."""
    bs = ctx.cfg.batch_size
    stop = len(ctx.ids) if stop is None else stop
    if start % bs or not 0 <= start <= stop <= len(ctx.ids):
        raise BenchUserError(f"sample range [{start}, {stop}) is not block-aligned for batch size {bs} and n={len(ctx.ids)}")
    return [(b, min(b + bs, stop)) for b in range(start, stop, bs)]


@dataclass(frozen=True)
class CleanPass:
    """The clean records of a range of sample positions (no attack outcomes yet) and its wall time."""

    records: list[dict]
    wall_time_s: float

    @property
    def accuracy(self) -> float:
        return sum(r["clean_correct"] for r in self.records) / max(1, len(self.records))


def clean_pass(ctx: EvalContext, start: int = 0, stop: int | None = None) -> CleanPass:
    """Score the clean samples of ``[start, stop)`` with the real ``predict`` (``ctx.draws`` draws for a
    randomized defense), plus the certified L2 radius of thesis eq. 2.7 where the defense has one."""
    bs, device = ctx.cfg.batch_size, ctx.device
    t0 = time.perf_counter()
    records: list[dict] = []
    for b0, b1 in blocks(ctx, start, stop):
        gen = torch.Generator(device=device).manual_seed(_batch_seed(ctx.cfg.seed, "clean", b0 // bs))
        xb, yb = ctx.x[b0:b1].to(device), ctx.y[b0:b1].to(device)
        ok, abst = score(ctx.defense, xb, yb, generator=gen, draws=ctx.draws)
        cert = ctx.defense.certified_radius(xb, yb, generator=gen) if ctx.cfg.norm == "l2" else None
        for j in range(len(xb)):
            records.append({"index": ctx.ids[b0 + j], "label": int(yb[j]), "clean_correct": bool(ok[j]), "clean_abstained": bool(abst[j]), "attacks": {}})
            if cert is not None:
                records[-1]["certified_l2"] = float(cert[j])
    return CleanPass(records, round(time.perf_counter() - t0, 3))


# -- stage 3: attack: propose -> verify -> outcomes ---------------------------------------------

@dataclass(frozen=True)
class AttackRun:
    """One attack job on a range of samples: the manifest entry and one outcome per record of the range."""

    key: str
    entry: dict  # AttackEntry of the manifest: spec, hash, eps, kind, library, budget, wall time, notes
    outcomes: list[dict]  # Outcome per record, in record order
    candidates_sha256: str = ""  # digest of every candidate proposed, in order (two runs that proposed the same)

    @property
    def accuracy(self) -> float:
        return sum(o["correct"] for o in self.outcomes) / max(1, len(self.outcomes))


def propose(ctx: EvalContext, job: AttackJob, xb: torch.Tensor, yb: torch.Tensor, seed: int) -> tuple[list[torch.Tensor], AttackReport]:
    """The attack's unverified candidates (one batch per restart) for one block of clean-correct
    samples, against the defense behind EOT (the suite's draws), and what the adapter reported."""
    model = EOTModel(ctx.defense, draws=job.spec.eot)
    model.generator = torch.Generator(device=ctx.device).manual_seed(seed)
    report = AttackReport()
    cands = run_attack(model, xb, yb, job.threat, job.spec, seed=seed % (1 << 31), report=report)
    return cands, report


def outcome(v, j: int, report: AttackReport, *, minimization: bool) -> dict:
    """The Outcome of sample ``j`` of a verified block ``v`` (:class:`harness.engine.verify.Verified`)."""
    out = {"correct": bool(v.correct[j]), "abstained": bool(v.abstained[j]), "norm": _num(float(v.norm[j]))}
    if minimization:
        out["min_norm"] = _num(float(v.min_norm[j]))
    r = int(v.kept[j])  # the restart whose candidate was kept; the component that found it (AutoAttack)
    if 0 <= r < len(report.found_by) and report.found_by[r] is not None and report.found_by[r][j] is not None:
        out["by"] = report.found_by[r][j]
    if v.recheck_flip is not None:
        out["recheck_flip"] = bool(v.recheck_flip[j])
    return out


def not_attacked(record: dict, *, minimization: bool) -> dict:
    """The Outcome of a sample misclassified (or abstained on) before the attack: adversarial at distance 0.
    The one place this rule lives (:func:`harness.engine.verify.verify` sees clean-correct samples only)."""
    out = {"correct": False, "abstained": bool(record["clean_abstained"]), "norm": 0.0}
    if minimization:
        out["min_norm"] = 0.0
    return out


def attack(ctx: EvalContext, job: AttackJob, clean: list[dict], start: int = 0) -> AttackRun:
    """Run ``job`` on the clean-correct samples of the range whose clean records are ``clean``
    (positions ``start .. start+len(clean)``), block by block: propose, then verify every candidate
    with the defense's real ``predict`` (:mod:`harness.engine.verify`); the others are :func:`not_attacked`."""
    bs, device = ctx.cfg.batch_size, ctx.device
    minimization = get_attack(job.spec.name).kind == "minimization"
    ok = [r["clean_correct"] for r in clean]
    found: dict[int, dict] = {}
    notes = AttackReport()
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    with tqdm(total=sum(ok), desc=f"{job.key} ({job.budget})", unit="img", disable=not ctx.cfg.progress, dynamic_ncols=True) as bar:
        for b0, b1 in blocks(ctx, start, start + len(clean)):
            idx = [p for p in range(b0, b1) if ok[p - start]]  # positions in ctx.ids
            if not idx:
                continue
            xb, yb = ctx.x[idx].to(device), ctx.y[idx].to(device)
            seed = _batch_seed(ctx.cfg.seed, job.hash, b0 // bs)
            cands, report = propose(ctx, job, xb, yb, seed)
            for c in cands:
                digest.update(c.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            for n in report.notes:
                notes.note(n)
            vgen = torch.Generator(device=device).manual_seed(seed ^ 0x5EED)
            rgen = torch.Generator(device=device).manual_seed(seed ^ RECHECK_SALT) if ctx.defense.randomized else None
            v = verify(ctx.defense, xb, yb, cands, job.threat, generator=vgen, draws=ctx.draws, unbounded=minimization, recheck=rgen)
            for j, p in enumerate(idx):
                found[p - start] = outcome(v, j, report, minimization=minimization)
            bar.update(len(idx))
    outcomes = [found[k] if k in found else not_attacked(r, minimization=minimization) for k, r in enumerate(clean)]
    info = get_attack(job.spec.name)
    entry = {
        "spec": job.spec.to_dict(),
        "spec_hash": job.hash,
        "eps": job.threat.eps,
        "eps_label": job.threat.eps_label,
        "kind": info.kind,
        "library": info.library,
        "budget": job.budget,
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    if notes.notes:
        entry["notes"] = list(notes.notes)
    return AttackRun(job.key, entry, outcomes, digest.hexdigest()[:16])


# -- stage 4: record: the evaluation being built, and its checks -------------------------------

class Evaluation:
    """The result being built: the one owner of its manifest and records (the dict of a
    :class:`harness.store.results.ResultFile`), filled stage by stage and saved atomically after each."""

    def __init__(self, manifest: dict, records: list[dict]):
        self.manifest = manifest
        self.records = records
        #: the content of the file as :meth:`resume` found it (:func:`_content`); None for a new evaluation
        self.loaded: str | None = None

    @classmethod
    def start(cls, ctx: EvalContext, clean: CleanPass) -> "Evaluation":
        """A new evaluation from its clean pass."""
        manifest = dict(ctx.manifest, attacks={}, clean_wall_time_s=clean.wall_time_s, created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        return cls(manifest, clean.records)

    @classmethod
    def resume(cls, path: Path, ctx: EvalContext) -> "Evaluation":
        """The evaluation of an existing result file, refreshed with this run's provenance; refused
        (:class:`BenchUserError`) when the file holds another evaluation."""
        old = load_result(path)
        _check_same_evaluation(path, old, ctx, ctx.manifest)
        before, now = old["manifest"].get("command"), ctx.manifest.get("command")
        if before and before != now:  # provenance: the commands that wrote the file's earlier attacks stay on record
            earlier = [c for c in old["manifest"].get("earlier_commands", []) if c != before]
            old["manifest"]["earlier_commands"] = [*earlier, before]
        loaded = _content(old)
        wrote_on, wrote_with = old["manifest"].get("device"), old["manifest"].get("versions")
        read_from = (old["manifest"].get("data") or {}).get("source")
        old["manifest"].update({k: v for k, v in ctx.manifest.items() if k != "attacks"})
        data = old["manifest"].get("data") or {}
        if read_from and data.get("source") and data["source"] not in read_from.split(" + "):
            # the same files (checksums agree, see _check_same_evaluation) read from another place: name both
            old["manifest"]["data"] = dict(data, source=" + ".join(sorted({*read_from.split(" + "), data["source"]})))
        if wrote_on and wrote_on != old["manifest"].get("device"):  # the file's earlier attacks ran elsewhere: name every device
            old["manifest"]["device"] = " + ".join(dict.fromkeys([*wrote_on.split(" + "), old["manifest"]["device"]]))
        if wrote_with and wrote_with != old["manifest"].get("versions"):
            # ... and with other package versions (a lent GPU machine's own torch): each set stays on record
            earlier = [v for v in old["manifest"].get("earlier_versions", []) if v != wrote_with and v != old["manifest"].get("versions")]
            old["manifest"]["earlier_versions"] = [*earlier, wrote_with]
        ev = cls(old["manifest"], old["records"])
        ev.loaded = loaded
        return ev

    @property
    def changed(self) -> bool:
        """False for a resumed evaluation that holds nothing the file did not (same records, attacks,
        budget check and trust checks: only this run's provenance differs)."""
        return self.loaded is None or self.loaded != _content(self.data)

    @property
    def clean_accuracy(self) -> float:
        return sum(r["clean_correct"] for r in self.records) / max(1, len(self.records))

    def is_done(self, job: AttackJob) -> bool:
        """True when the file holds ``job`` at the same budget (same spec hash)."""
        done = self.manifest["attacks"].get(job.key)
        return bool(done) and done.get("spec_hash") == job.hash

    def add(self, run: AttackRun) -> None:
        """Record an attack: its manifest entry and one outcome per record."""
        if len(run.outcomes) != len(self.records):
            raise RuntimeError(f"attack {run.key}: {len(run.outcomes)} outcomes for {len(self.records)} records; this is a harness bug")
        for r, o in zip(self.records, run.outcomes):
            r["attacks"][run.key] = o
        self.manifest["attacks"][run.key] = run.entry

    def set_budget_check(self, entry: dict) -> None:
        self.manifest["budget_check"] = entry

    def set_trust(self, warnings: list[str], gradient_check: dict) -> None:
        """The trust checks: the defense's own (:func:`model_trust`) plus those of the outcomes (:func:`harness.engine.sanity.outcome_checks`).
        A recorded gradient check that found the same (:func:`harness.engine.gradcheck.same_finding`:
        only the last digits differ, e.g. under another thread count) is kept."""
        kept = self.manifest.get("gradient_check")
        if same_finding(kept, gradient_check):  # its warning line (if any) is the kept check's too
            warnings = [describe(kept) if w == describe(gradient_check) else w for w in warnings]
        else:
            self.manifest["gradient_check"] = gradient_check
        self.manifest["warnings"] = list(warnings) + outcome_checks(self.data)

    @property
    def data(self) -> dict:
        return {"schema": SCHEMA_VERSION, "manifest": self.manifest, "records": self.records}

    def save(self, path: Path) -> Path:
        return write_result(path, self.data)


#: manifest fields that say who wrote a file, on what: a rerun that adds nothing does not rewrite them
PROVENANCE_KEYS = frozenset({"versions", "earlier_versions", "commit", "command", "earlier_commands", "device", "shard_sources"})


def _content(data: dict) -> str:
    """A result's content without its provenance, normalised as the file writes it."""
    return dumps_json({"manifest": {k: v for k, v in data["manifest"].items() if k not in PROVENANCE_KEYS}, "records": data["records"]})


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
    was, now = (om.get("data") or {}).get("checksum"), (manifest.get("data") or {}).get("checksum")
    if was and now and was != now:
        raise BenchUserError(
            f"{path} was computed on other data files (checksum {was[:12]}, this run's {now[:12]}): its attacks would not be on these "
            "images; point the run at the same copy of the data, or pass --fresh / --results-dir"
        )
    changed = config_changes(om.get("defense_config") or {}, manifest.get("defense_config") or {})
    if changed:
        raise BenchUserError(
            f"{path} evaluated the defense with other settings ({'; '.join(changed)}), e.g. before a recalibration or a new "
            "inference default: its attacks would not be this defense's; pass --fresh to replace it or --results-dir to write elsewhere"
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
    :func:`harness.engine.sanity.model_checks` and the gradient-consistency check (:mod:`harness.engine.gradcheck`)."""
    cfg = ctx.cfg
    n0 = min(len(ctx.ids), cfg.batch_size)
    x0, y0 = ctx.x[:n0].to(ctx.device), ctx.y[:n0].to(ctx.device)
    warnings = model_checks(ctx.defense, x0, y0, draws=ctx.draws, seed=cfg.seed)
    check = check_gradients(ctx.defense, x0, y0, norm=ctx.threat.norm, eps=ctx.threat.eps, bounds=ctx.threat.bounds, seed=cfg.seed).to_dict()
    if check["verdict"] != "consistent":
        warnings.append(describe(check))
    return warnings, check


def evaluate(cfg: RunConfig, *, log=print, check_deadline: float | None = None) -> Path:
    """Run ``cfg`` and return the path of the result file: prepare -> clean pass -> for each attack
    not yet in the file: propose -> verify -> record -> save; then the budget check and the trust checks."""
    if cfg.norm not in NORMS:
        raise BenchUserError(f"unknown norm {cfg.norm!r}; use one of {', '.join(NORMS)}")
    datasets.get_info(cfg.dataset)
    datasets.require_single_label(cfg.dataset, "bench run")
    check_results_dir(cfg.results_dir, cfg.dataset, cfg.norm)
    path = result_path(cfg.results_dir, cfg.dataset, cfg.norm, variant_key(cfg.defense, cfg.options))
    with claim_file(path):
        return _evaluate(cfg, path, log=log, check_deadline=check_deadline)


@contextlib.contextmanager
def claim_file(path: Path, *, wait_s: float = 120.0):
    """Hold the result file ``path`` for a whole ``bench run`` (its lock ``<file>.lock``,
    :mod:`harness.store.claims`), so that nothing else writes it meanwhile: the run saves the
    file whole after each attack and would drop what another process added in between. Refused
    (:class:`BenchUserError`, before any defense is built) when another ``bench run`` holds the file,
    or when a ``bench sweep`` checks the budget of one of its attacks (``<file>.check-<attack>.lock``;
    the sweep checks this lock after taking its own, so one of the two always sees the other). A
    sweep's short write (``<file>.write.lock``: a merge, one block of a check) is waited for up to
    ``wait_s``."""
    from harness.store import claims

    held = claims.take(path)
    if isinstance(held, str):
        who = claims.holder(claims.lock_path(path)) or "another process"
        raise BenchUserError(f"{path} is being written by another process ({who}); wait for it to finish, or pass --results-dir to write elsewhere")
    with held:
        prefix = f"{path.name}.check-"
        for lock in sorted(path.parent.glob(f"{glob.escape(prefix)}*.lock")):
            who = claims.holder(lock)
            if who is not None:
                name = lock.name[len(prefix):-len(".lock")]
                raise BenchUserError(f"bench sweep is checking the budget of {name} on {path} ({who}); a run now would overwrite its blocks: "
                                     "wait for it to finish, or pass --results-dir to write elsewhere")
        write = claims.lock_path(path.with_name(f"{path.name}.write"))
        end = time.time() + wait_s
        while (who := claims.holder(write)) is not None:
            if time.time() > end:
                raise BenchUserError(f"{path} is being written by bench sweep ({who}); rerun when it is done")
            time.sleep(0.2)
        yield


def _evaluate(cfg: RunConfig, path: Path, *, log=print, check_deadline: float | None = None) -> Path:
    """:func:`evaluate` with the result file ``path`` held."""
    ctx = prepare(cfg, log=log)
    if path.exists() and not cfg.fresh:
        ev = Evaluation.resume(path, ctx)
        log(f"resuming {path}: {len(ev.manifest['attacks'])} attack(s) already done")
    else:
        ev = Evaluation.start(ctx, clean_pass(ctx))
        ev.save(path)
    log(f"{cfg.defense} on {cfg.dataset}: clean accuracy {ev.clean_accuracy:.3f} on {len(ctx.ids)} samples ({ctx.threat.norm} eps={ctx.threat.eps_label})")
    for job in ctx.jobs:
        if ev.is_done(job):
            continue
        run = attack(ctx, job, ev.records)
        ev.add(run)
        ev.save(path)
        log(f"  {job.key:<9} accuracy {run.accuracy:.3f}  ({job.budget}; {run.entry['wall_time_s']:.1f} s)")
    if cfg.check_budget:
        def keep(entry: dict) -> None:  # resumable: saved after each doubled attack
            ev.set_budget_check(entry)
            ev.save(path)

        # check_deadline (bench sweep --time-limit): no block of the check starts that would end after it
        ev.set_budget_check(saturation.run(ctx, ev.data, n=cfg.check_budget, save=keep, log=log, deadline=check_deadline))
    ev.set_trust(*model_trust(ctx))
    for w in ev.manifest["warnings"]:
        log(f"WARNING: {w}")
    if not ev.changed:  # a rerun with nothing left to do leaves the file (and its provenance) as it was
        log(f"{path}: up to date, left unchanged")
        return path
    return ev.save(path)


def check_file(cfg: RunConfig, *, log=print, deadline: float | None = None, write_lock=None, pace=None) -> Path:
    """The budget check (:mod:`harness.engine.saturation`, on the first ``cfg.check_budget`` samples)
    of the attacks ``cfg.attacks`` of ``cfg``'s existing result file, and nothing else: no clean pass,
    no attack, no trust checks of the defense (the file has them; an inference-time defense pays
    minutes for them). After each block the entries of *these* attacks are merged into the file as it
    is then on disk (:func:`harness.engine.saturation.merge_entry`) under ``write_lock()`` (a context
    manager; ``bench sweep`` passes a lock file), so other processes may check the file's other
    attacks at the same time; the outcome checks (the warnings on saturation) are refreshed with it.
    ``deadline`` and ``pace`` as :func:`harness.engine.saturation.run`. Returns the file's path."""
    if not cfg.check_budget:
        raise BenchUserError("check_file needs check_budget > 0")
    ctx = prepare(cfg, log=log)
    path = result_path(cfg.results_dir, cfg.dataset, cfg.norm, variant_key(cfg.defense, cfg.options))
    if not path.is_file():
        raise BenchUserError(f"no result file {path} to check; run the evaluation first")
    data = load_result(path)
    _check_same_evaluation(path, data, ctx, ctx.manifest)
    keys = [job.key for job in ctx.jobs]
    lock = write_lock or contextlib.nullcontext

    def keep(entry: dict) -> None:
        with lock():
            ev = Evaluation.resume(path, ctx)
            ev.set_budget_check(saturation.merge_entry(ev.data, entry, keys))
            # the file's outcome warnings (any wording, :func:`is_outcome_check`) are refreshed; the defense's own stay
            ev.manifest["warnings"] = [w for w in ev.manifest.get("warnings", []) if not is_outcome_check(w)] + outcome_checks(ev.data)
            if ev.changed:
                ev.save(path)

    keep(saturation.run(ctx, data, n=cfg.check_budget, save=keep, log=log, deadline=deadline, pace=pace))
    return path


def config_dict(cfg: RunConfig) -> dict:
    return asdict(cfg)
