"""Attack adapters: thin wrappers over foolbox 3 (and pyautoattack) that *propose* adversarial candidates.

Every adapter has the signature ``run(model, x, y, threat, spec, seed) -> list[Tensor]`` where
``model`` is a plain ``nn.Module`` mapping inputs in [0,1] to scores (the harness passes an
:class:`harness.eot.EOTModel`), and returns one candidate batch per restart. Candidates are never
trusted: :mod:`harness.verify` projects, clamps and re-scores them with the defense's ``predict``.

An :class:`AttackInfo` builds its attack with ``make(norm, params)``; by default the result is a
foolbox attack called as ``attack(fmodel, x, y, epsilons=...)``. Adapters that need more (starting
points, another library) set ``run``: it is called per restart, inside the same seeded
``fork_rng``, as ``run(made, model=, fmodel=, x=, y=, threat=, params=, seed=)`` and returns the
candidate batch. ``spec_budget(spec)``, when set, gives the whole budget string of a spec.

DeepFool runs foolbox's algorithm with one forward pass per step (:mod:`harness.attacks.deepfool`).
Gradient-free attacks of thesis section 2.3: ``boundary`` (:mod:`harness.attacks.boundary`) and
``es-pgd`` (:mod:`harness.attacks.estimation`); AutoAttack (thesis chapter 4):
:mod:`harness.attacks.autoattack`; transfer from a source model (a gradient-masking check):
:mod:`harness.attacks.transfer`.

Foolbox draws its random starts from torch's global RNG; adapters run each restart inside
``torch.random.fork_rng`` seeded from the spec, so results are reproducible and the caller's global
RNG state is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import foolbox as fb
import torch

from harness.attacks import autoattack as _autoattack
from harness.attacks import boundary as _boundary
from harness.attacks import deepfool as _deepfool
from harness.attacks import estimation as _estimation
from harness.attacks import square as _square
from harness.attacks import transfer as _transfer
from harness.errors import BenchUserError


#: what an attack relies on (the trust checks of :mod:`harness.sanity` compare these groups)
USES = ("gradient", "gradient-free", "transfer")


@dataclass(frozen=True)
class AttackInfo:
    """Static facts about one attack adapter."""

    name: str
    norms: tuple[str, ...]
    kind: str  # "bounded": finds x' inside the eps-ball; "minimization": smallest adversarial x'
    library: str
    description: str
    make: Callable[[str, dict], object]  # (norm, params) -> foolbox attack (or the config ``run`` takes)
    budget: Callable[[dict, int], str]
    #: custom call per restart (see module docstring); None: ``make``'s foolbox attack with ``epsilons``
    run: Callable[..., torch.Tensor] | None = None
    #: whole budget string of an AttackSpec (overrides ``budget`` + ", EOT n")
    spec_budget: Callable[[Any], str] | None = None
    #: "gradient" (uses the defense's declared gradient), "gradient-free" (scores or decisions only)
    #: or "transfer" (gradients of another model); attacks made of components say per component
    #: which one found an adversarial (``AttackReport.found_by``, e.g. AutoAttack's Square)
    uses: str = "gradient"
    #: component name -> what it uses, for attacks that report ``found_by``
    components: dict[str, str] = field(default_factory=dict)

    def uses_of(self, component: str | None) -> str:
        """What the component that found an adversarial relies on (the attack's own ``uses`` if unknown)."""
        return self.components.get(component, self.uses) if component else self.uses


@dataclass
class AttackReport:
    """What an adapter reports besides its candidates; the runner records it in the result file.

    ``notes``: messages for the manifest (the attacked library's warnings, the transfer source used).
    ``found_by``: per restart, per input, the component that found the candidate (None: not found
    or not known), for attacks made of components (AutoAttack).
    """

    notes: list[str] = field(default_factory=list)
    found_by: list[list[str | None] | None] = field(default_factory=list)

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)


def _pgd(norm: str, p: dict):
    cls = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
    return cls(steps=int(p.get("steps", 40)), rel_stepsize=float(p.get("rel_stepsize", 2.5 / p.get("steps", 40))), random_start=bool(p.get("random_start", True)))


def _fgm(norm: str, p: dict):
    return fb.attacks.FGSM(random_start=bool(p.get("random_start", False))) if norm == "linf" else fb.attacks.FGM(random_start=bool(p.get("random_start", False)))


def _ddn(norm: str, p: dict):
    return fb.attacks.DDNAttack(steps=int(p.get("steps", 80)), init_epsilon=float(p.get("init_epsilon", 1.0)), gamma=float(p.get("gamma", 0.05)))


def _cw(norm: str, p: dict):
    return fb.attacks.L2CarliniWagnerAttack(
        binary_search_steps=int(p.get("binary_search_steps", 5)),
        steps=int(p.get("steps", 100)),
        stepsize=float(p.get("stepsize", 0.01)),
        confidence=float(p.get("confidence", 0.0)),
        initial_const=float(p.get("initial_const", 1e-3)),
        abort_early=bool(p.get("abort_early", True)),
    )


def _noise(norm: str, p: dict):
    repeats = int(p.get("repeats", 100))
    if norm == "l2":
        return fb.attacks.L2RepeatedAdditiveGaussianNoiseAttack(repeats=repeats, check_trivial=True)
    return fb.attacks.LinfRepeatedAdditiveUniformNoiseAttack(repeats=repeats, check_trivial=True)


def _steps_budget(p: dict, restarts: int) -> str:
    return f"{p.get('steps', '?')} steps x {restarts} restarts"


ATTACKS: dict[str, AttackInfo] = {
    a.name: a
    for a in (
        AttackInfo("pgd", ("linf", "l2"), "bounded", "foolbox", "Projected gradient descent with random start (Madry et al. 2018)", _pgd, _steps_budget),
        AttackInfo("fgm", ("linf", "l2"), "bounded", "foolbox", "Fast gradient (sign) method, one step to the eps-ball boundary (FGSM for L∞, FGM for L2)", _fgm, lambda p, r: f"1 step x {r} restarts"),
        AttackInfo(
            "deepfool", ("linf", "l2"), "minimization", "foolbox",
            "DeepFool (Moosavi-Dezfooli et al. 2016), foolbox's algorithm, logits loss, overshoot 0.02; all candidate gradients from one forward pass per step",
            _deepfool.make, _steps_budget, run=_deepfool.run,
        ),
        AttackInfo("ddn", ("l2",), "minimization", "foolbox", "Decoupled direction and norm (Rony et al. 2019)", _ddn, _steps_budget),
        AttackInfo("cw", ("l2",), "minimization", "foolbox", "Carlini-Wagner L2 (2017) with binary search over the constant", _cw, lambda p, r: f"{p.get('binary_search_steps', 5)} binary searches x {p.get('steps', 100)} steps x {r} restarts"),
        AttackInfo("noise", ("linf", "l2"), "bounded", "foolbox", "Repeated additive noise at the eps-ball boundary (Gaussian for L2, uniform for L∞: foolbox has no L∞ Gaussian)", _noise, lambda p, r: f"{p.get('repeats', 100)} draws x {r} restarts", uses="gradient-free"),
        AttackInfo(
            "boundary", ("l2",), "minimization", "foolbox",
            "Boundary attack (Brendel et al. 2018), decision-based, L2; started from a random batch image the defense assigns another class (thesis 2.3)",
            _boundary.make, _boundary.budget, run=_boundary.run, uses="gradient-free",
        ),
        AttackInfo(
            "es-pgd", ("linf", "l2"), "bounded", "foolbox",
            "PGD with evolution-strategies gradient estimation (foolbox es_gradient_estimator), per-sample margin loss (thesis 2.3)",
            _estimation.make_config, _estimation.budget, run=_estimation.run, uses="gradient-free",
        ),
        AttackInfo(
            "square", ("linf", "l2"), "bounded", "pyautoattack",
            "Square Attack (Andriushchenko et al. 2020), score-based random search on every clean-correct sample: a check against masked gradients",
            _square.make_config, _square.budget, run=_square.run, uses="gradient-free",
        ),
        AttackInfo(
            "transfer", ("linf", "l2"), "bounded", "foolbox",
            "PGD on a source model (the wrapped base, the data set's reference CNN or a surrogate distilled from the defense), verified on the defense: a gradient-masking check",
            _transfer.make_config, _transfer.budget, run=_transfer.run, spec_budget=lambda spec: _transfer.budget(spec.kwargs, spec.restarts),
            uses="transfer",
        ),
        AttackInfo(
            "autoattack", ("linf", "l2"), "bounded", "pyautoattack",
            "AutoAttack (Croce & Hein 2020): standard for deterministic defenses, rand (own EOT) for randomized ones (thesis ch. 4)",
            _autoattack.make_config, lambda p, r: f"AutoAttack x {r} restarts", run=_autoattack.run, spec_budget=_autoattack.budget_for,
            components=dict(_autoattack.COMPONENT_USES),
        ),
    )
}


def get_attack(name: str) -> AttackInfo:
    try:
        return ATTACKS[name]
    except KeyError:
        raise BenchUserError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}") from None


def budget_string(spec) -> str:
    """Human-readable budget of one AttackSpec, EOT draws included."""
    info = get_attack(spec.name)
    if info.spec_budget is not None:
        return info.spec_budget(spec)
    return f"{info.budget(spec.kwargs, spec.restarts)}, EOT {spec.eot}"


def run_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat, spec, *, seed: int, report: AttackReport | None = None) -> list[torch.Tensor]:
    """Run ``spec`` against ``model`` on one batch; one candidate batch per restart (unverified).

    ``report``, when given, collects what the adapter reports besides candidates (:class:`AttackReport`).
    """
    info = get_attack(spec.name)
    if threat.norm not in info.norms:
        raise BenchUserError(f"attack {spec.name!r} does not support norm {threat.norm} (supports {', '.join(info.norms)})")
    attack = info.make(threat.norm, spec.kwargs)
    fmodel = fb.PyTorchModel(model, bounds=threat.bounds, device=x.device)
    eps = None if info.kind == "minimization" else threat.eps
    devices = [x.device] if x.device.type == "cuda" else []
    out = []
    for r in range(spec.restarts):
        restart_seed = seed * 1_000_003 + r
        sub = AttackReport()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(restart_seed)
            if info.run is None:
                raw, _clipped, _success = attack(fmodel, x, y, epsilons=eps)
            else:
                raw = info.run(attack, model=model, fmodel=fmodel, x=x, y=y, threat=threat, params=spec.kwargs, seed=restart_seed, report=sub)
        out.append(raw.detach())
        if report is not None:
            for n in sub.notes:
                report.note(n)
            report.found_by.append(sub.found_by[0] if sub.found_by else None)
    return out
