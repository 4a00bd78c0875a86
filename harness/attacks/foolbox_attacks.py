"""Foolbox 3 attacks called as they are: PGD, FGM/FGSM, DDN, Carlini-Wagner L2, repeated additive noise.

Each adapter builds the foolbox attack from the suite parameters (:meth:`FoolboxAttack.build`) and
calls it as ``attack(fmodel, x, y, epsilons=eps)`` (``eps=None`` for minimization attacks); foolbox
draws its random starts from torch's global RNG, which :func:`harness.attacks.run_attack` seeds per
restart inside ``fork_rng``.
"""

from __future__ import annotations

import foolbox as fb

from harness.attacks.base import Attack
from harness.attacks.registry import register


class FoolboxAttack(Attack):
    """An attack that is one foolbox attack object (the config :meth:`configure` returns)."""

    library = "foolbox"

    def build(self, norm: str, p: dict):
        raise NotImplementedError

    def configure(self, norm: str, params: dict):
        return self.build(norm, params)

    def propose(self, config, model, x, y, *, threat, seed, defense, report):
        fmodel = fb.PyTorchModel(model, bounds=threat.bounds, device=x.device)
        raw, _clipped, _success = config(fmodel, x, y, epsilons=None if self.kind == "minimization" else threat.eps)
        return raw


def pgd(norm: str, p: dict):
    """Foolbox's PGD for ``norm`` (random start; ``rel_stepsize`` default 2.5 / steps)."""
    cls = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
    return cls(steps=int(p.get("steps", 40)), rel_stepsize=float(p.get("rel_stepsize", 2.5 / p.get("steps", 40))), random_start=bool(p.get("random_start", True)))


@register
class PGD(FoolboxAttack):
    name, label, cost = "pgd", "PGD", 40
    cost_reference = {"steps": 40}
    description = "Projected gradient descent with random start (Madry et al. 2018)"

    def build(self, norm, p):
        return pgd(norm, p)


@register
class FGM(FoolboxAttack):
    name, label, cost = "fgm", "FGM", 1
    description = "Fast gradient (sign) method, one step to the eps-ball boundary (FGSM for L∞, FGM for L2)"

    def build(self, norm, p):
        cls = fb.attacks.FGSM if norm == "linf" else fb.attacks.FGM
        return cls(random_start=bool(p.get("random_start", False)))

    def budget_params(self, p, restarts):
        return f"1 step x {restarts} restarts"


@register
class DDN(FoolboxAttack):
    # a DDN step costs about a PGD step (ABS, paper-generative sweep shards: 8.35 s per sample for
    # DDN-80, 7.58 s for PGD-80, one core)
    name, label, cost = "ddn", "DDN", 80
    cost_reference = {"steps": 80}
    norms, kind = ("l2",), "minimization"
    description = "Decoupled direction and norm (Rony et al. 2019)"

    def build(self, norm, p):
        return fb.attacks.DDNAttack(steps=int(p.get("steps", 80)), init_epsilon=float(p.get("init_epsilon", 1.0)), gamma=float(p.get("gamma", 0.05)))


@register
class CW(FoolboxAttack):
    # measured: 5 x 100 steps took 10.2x PGD-80's time per sample on ABS (77.5 s vs 7.58 s, one
    # core), i.e. about 800 PGD steps
    name, label, cost = "cw", "CW", 800
    cost_reference = {"binary_search_steps": 5, "steps": 100}
    norms, kind = ("l2",), "minimization"
    description = "Carlini-Wagner L2 (2017) with binary search over the constant"

    def build(self, norm, p):
        return fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=int(p.get("binary_search_steps", 5)),
            steps=int(p.get("steps", 100)),
            stepsize=float(p.get("stepsize", 0.01)),
            confidence=float(p.get("confidence", 0.0)),
            initial_const=float(p.get("initial_const", 1e-3)),
            abort_early=bool(p.get("abort_early", True)),
        )

    def budget_params(self, p, restarts):
        return f"{p.get('binary_search_steps', 5)} binary searches x {p.get('steps', 100)} steps x {restarts} restarts"


@register
class Noise(FoolboxAttack):
    # measured, 100 draws per sample: 2.3x PGD-80's time on ABS (17.2 s vs 7.58 s), 1.6x on E-ABS
    # (146 s vs 90.6 s): on an inference-time defense a forward pass costs about as much as a gradient step
    name, label, cost = "noise", "Noise", 150
    cost_reference = {"repeats": 100}
    uses = "gradient-free"
    description = "Repeated additive noise at the eps-ball boundary (Gaussian for L2, uniform for L∞: foolbox has no L∞ Gaussian)"

    def build(self, norm, p):
        repeats = int(p.get("repeats", 100))
        if norm == "l2":
            return fb.attacks.L2RepeatedAdditiveGaussianNoiseAttack(repeats=repeats, check_trivial=True)
        return fb.attacks.LinfRepeatedAdditiveUniformNoiseAttack(repeats=repeats, check_trivial=True)

    def budget_params(self, p, restarts):
        return f"{p.get('repeats', 100)} draws x {restarts} restarts"
