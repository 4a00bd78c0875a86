"""AutoAttack (Croce & Hein 2020) via ``pyautoattack`` 0.2.0: the benchmark the thesis uses for the
variational smoothing results (Ju 2021, chapter 4, section 4.3 "Threat model", Tables 4.1/4.2).

The version follows the defense's metadata: ``standard`` (APGD-CE, APGD-T, FAB-T, Square) for a
deterministic defense and ``rand`` (APGD-CE and APGD-DLR with AutoAttack's own EOT over 20 draws)
for a randomized one. For ``rand`` AutoAttack's EOT replaces the harness's: the defense is attacked
through a one-draw :class:`harness.engine.eot.EOTModel` sharing the runner's generator, so the draws are not
averaged twice. The resolved version is part of the budget string recorded in the result file, and
the result manifest's ``randomized`` flag says which rule applied.

Parameters (suite ``params``, all optional): ``version`` (force ``standard``/``rand``/``plus``),
``n_iter`` (APGD and FAB iterations; AutoAttack's 100), ``n_queries`` (Square; 5000),
``eot_iter`` (``rand`` EOT draws; 20), ``batch_size`` (AutoAttack's internal batch; default the
whole batch). Smaller ``n_iter`` keeps APGD's step-size checkpoints proportional (0.22 / 0.06 /
0.03 of the iterations, Croce & Hein 2020 section 3.2).

Components: the adapter runs AutoAttack's components in AutoAttack's order (``attacks_to_run`` of
the version), each through pyautoattack's own ``run_standard_evaluation`` on the inputs the earlier
components left robust -- what ``run_standard_evaluation`` does for the whole list -- so it knows per
input which component found the adversarial (``AttackReport.found_by``: ``apgd-ce``, ``apgd-t``,
``fab-t``, ``square``, ...). The trust checks count Square's finds as gradient-free
(:data:`COMPONENT_USES`): in AutoAttack ``standard`` Square only runs where the gradient components
failed, so a defense whose gradients are masked shows up as "Square did the work".

AutoAttack's warnings (``auto-attack`` logger: zero gradients, randomness, output range) are captured
into the report and land in the result manifest; anything its sub-attacks print is captured and
logged at DEBUG level. It seeds torch's global RNG itself, which :func:`harness.attacks.run_attack`
confines with ``fork_rng``. Candidates are AutoAttack's adversarials where it found one and the
clean inputs elsewhere; the harness verifies them like every other attack's.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

import torch

from harness.attacks.base import Attack
from harness.attacks.registry import register
from harness.errors import BenchUserError

log = logging.getLogger(__name__)

NORM_NAMES = {"linf": "Linf", "l2": "L2"}
VERSIONS = ("standard", "rand", "plus")
DEFAULT_N_ITER = 100
DEFAULT_N_QUERIES = 5000
DEFAULT_EOT_ITER = 20
#: what each AutoAttack component relies on (harness.engine.sanity groups attacks by it)
COMPONENT_USES = {"apgd-ce": "gradient", "apgd-dlr": "gradient", "apgd-t": "gradient", "fab": "gradient", "fab-t": "gradient", "square": "gradient-free"}


class _Capture(logging.Handler):
    """Collects AutoAttack's warning messages (one line each, deduplicated)."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = " ".join(record.getMessage().split())
        if msg not in self.messages:
            self.messages.append(msg)


@dataclass(frozen=True)
class AAConfig:
    """Validated AutoAttack parameters (``version=None``: from the defense's metadata)."""

    version: str | None
    n_iter: int | None
    n_queries: int | None
    eot_iter: int | None
    batch_size: int | None


def _opt_int(p: dict, key: str, minimum: int = 1) -> int | None:
    if key not in p:
        return None
    v = int(p[key])
    if v < minimum:
        raise BenchUserError(f"autoattack: {key} must be >= {minimum}, got {v}")
    return v


def make_config(norm: str, p: dict) -> AAConfig:
    unknown = set(p) - {"version", "n_iter", "n_queries", "eot_iter", "batch_size"}
    if unknown:
        raise BenchUserError(f"autoattack: unknown parameter(s) {', '.join(sorted(unknown))}; known: version, n_iter, n_queries, eot_iter, batch_size")
    version = p.get("version")
    if version is not None and version not in VERSIONS:
        raise BenchUserError(f"autoattack: version must be one of {', '.join(VERSIONS)} (or left out to follow the defense), got {version!r}")
    return AAConfig(version, _opt_int(p, "n_iter"), _opt_int(p, "n_queries"), _opt_int(p, "eot_iter"), _opt_int(p, "batch_size"))


def resolve_version(cfg: AAConfig, defense: torch.nn.Module) -> str:
    """``cfg.version`` if set, else ``rand`` for a randomized defense and ``standard`` otherwise."""
    if cfg.version is not None:
        return cfg.version
    return "rand" if getattr(defense, "randomized", False) else "standard"


def _one_draw(model: torch.nn.Module) -> torch.nn.Module:
    """For ``rand``: the defense behind an EOTModel without the harness's averaging (AutoAttack does EOT)."""
    from harness.engine.eot import EOTModel

    if isinstance(model, EOTModel) and model.draws > 1:
        return EOTModel(model.defense, draws=1, generator=model.generator)
    return model


def _shrink_iterations(apgd, n_iter: int) -> None:
    """Set APGD's iterations and its step-size checkpoint schedule (Croce & Hein 2020, section 3.2)."""
    apgd.n_iter = apgd.n_iter_orig = n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


def build(cfg: AAConfig, model: torch.nn.Module, *, norm: str, eps: float, version: str, num_classes: int, device: torch.device, seed: int):
    """A configured ``pyautoattack.AutoAttack``."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as exc:  # pragma: no cover - pyautoattack is a dependency
        raise BenchUserError(f"autoattack needs pyautoattack ({exc}); `pip install -c constraints.txt pyautoattack==0.2.0`") from None
    aa = AutoAttack(model, norm=NORM_NAMES[norm], eps=float(eps), version=version, device=device, seed=seed)
    aa.verbose = log.isEnabledFor(logging.DEBUG)
    if cfg.n_iter is not None:
        _shrink_iterations(aa.apgd, cfg.n_iter)
        _shrink_iterations(aa.apgd_targeted, cfg.n_iter)
        aa.fab.n_iter = cfg.n_iter
    if cfg.n_queries is not None:
        aa.square.n_queries = cfg.n_queries
    if cfg.eot_iter is not None and version == "rand":
        aa.apgd.eot_iter = cfg.eot_iter
    # targeted attacks try the top-9 other classes; fewer classes than 10 need fewer targets
    targets = min(9, num_classes - 1)
    aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, targets)
    aa.fab.n_target_classes = min(aa.fab.n_target_classes, targets)
    return aa


def run(cfg: AAConfig, *, model, defense, x, y, threat, seed, report=None) -> torch.Tensor:
    """One restart of AutoAttack on the batch; returns its adversarials (clean inputs where it found none).

    Components run one after another on the inputs still robust (AutoAttack's own order and rule);
    ``report.found_by`` gets the component that found each adversarial, ``report.notes`` AutoAttack's warnings.
    """
    if tuple(threat.bounds) != (0.0, 1.0):
        raise BenchUserError(f"autoattack assumes inputs in [0, 1], the threat model has bounds {threat.bounds}; use another attack")
    version = resolve_version(cfg, defense)
    target = _one_draw(model) if version == "rand" else model
    with torch.no_grad():
        num_classes = int(target(x[:1]).shape[1])
    aa = build(cfg, target, norm=threat.norm, eps=threat.eps, version=version, num_classes=num_classes, device=x.device, seed=int(seed % (2**31)))
    components = list(aa.attacks_to_run)
    out = x.clone()
    found_by: list[str | None] = [None] * len(x)
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    capture = _Capture()
    aa_log = logging.getLogger("auto-attack")
    aa_log.addHandler(capture)
    printed = io.StringIO()
    found = {}
    try:
        for comp in components:
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            aa.attacks_to_run = [comp]
            with contextlib.redirect_stdout(printed):
                adv, _y_adv = aa.run_standard_evaluation(x[idx], y[idx], batch_size=cfg.batch_size or len(idx))
            changed = (adv != x[idx]).flatten(1).any(1)  # AutoAttack returns the clean input where it failed
            hit = idx[changed]
            out[hit] = adv[changed].to(out.dtype)
            robust[hit] = False
            for i in hit.tolist():
                found_by[i] = comp
            found[comp] = int(changed.sum())
    finally:
        aa_log.removeHandler(capture)
        aa.attacks_to_run = components
    if printed.getvalue().strip():
        log.debug("autoattack output:\n%s", printed.getvalue().rstrip())
    if report is not None:
        for m in capture.messages:
            report.note(f"AutoAttack: {m}")
        free = sum(n for c, n in found.items() if COMPONENT_USES.get(c) == "gradient-free")
        if free:
            report.note(f"AutoAttack: its gradient-free Square component found adversarials the gradient components missed ({free} in one batch)")
        report.found_by.append(found_by)
    return out.detach()


def budget_for(spec, *, randomized: bool | None = None) -> str:
    """Full budget string of an AttackSpec, the version resolved as the adapter will: from ``randomized``
    (the attacked defense's flag, the suite's EOT policy); unknown or deterministic: "standard (rand if
    the defense is randomized)"."""
    cfg = make_config("linf", spec.kwargs)
    n_iter = cfg.n_iter or DEFAULT_N_ITER
    version = cfg.version
    if version is None:
        version = "rand" if randomized else "standard (rand if the defense is randomized)"
    if version == "rand":
        return f"AutoAttack rand: APGD-CE + APGD-DLR, {n_iter} iterations, AutoAttack EOT {cfg.eot_iter or DEFAULT_EOT_ITER} draws (replaces the harness EOT) x {spec.restarts} restarts"
    parts = f"APGD-CE + APGD-T + FAB-T {n_iter} iterations + Square {cfg.n_queries or DEFAULT_N_QUERIES} queries"
    if version == "plus":
        parts = f"APGD-CE/DLR + FAB + Square + APGD-T + FAB-T, {n_iter} iterations, Square {cfg.n_queries or DEFAULT_N_QUERIES} queries"
    return f"AutoAttack {version}: {parts} x {spec.restarts} restarts, EOT {spec.eot}"


@register
class AutoAttackAdapter(Attack):
    # standard, per sample that stands: APGD-CE + APGD-T (9 targets) at 100 iterations = 1000
    # gradient steps, then FAB-T and Square on top; broken samples leave after the first component
    name, label, cost = "autoattack", "AutoAttack", 1000
    library = "pyautoattack"
    components = dict(COMPONENT_USES)
    description = "AutoAttack (Croce & Hein 2020): standard for deterministic defenses, rand (own EOT) for randomized ones (thesis ch. 4)"

    def configure(self, norm, params):
        return make_config(norm, params)

    def propose(self, config, model, x, y, *, threat, seed, defense, report):
        return run(config, model=model, defense=defense, x=x, y=y, threat=threat, seed=seed, report=report)

    def budget(self, spec, *, randomized=None):
        return budget_for(spec, randomized=randomized)

    def cost_of(self, params, restarts=1, *, eot=1, randomized=False):
        """``rand`` (a randomized defense, or forced): APGD-CE + APGD-DLR, ``n_iter`` iterations of
        ``eot_iter`` one-draw gradients each (AutoAttack's EOT replaces the harness's ``eot``);
        otherwise ``cost`` scaled by ``n_iter`` / 100 and the EOT draws."""
        version = params.get("version") or ("rand" if randomized else "standard")
        n_iter = int(params.get("n_iter") or DEFAULT_N_ITER)
        if version == "rand":
            return float(2 * n_iter * int(params.get("eot_iter") or DEFAULT_EOT_ITER) * restarts)
        return float(self.cost) * n_iter / DEFAULT_N_ITER * restarts * eot
