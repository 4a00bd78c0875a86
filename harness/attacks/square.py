"""Square Attack (Andriushchenko et al. 2020) on its own, via ``pyautoattack``'s ``SquareAttack``.

A score-based attack: random square-shaped updates at the boundary of the eps-ball, kept when they
lower the margin ``z_y - max_{j != y} z_j`` of the defense's scores. It never looks at a gradient,
so it is the harness's default check against masked gradients (zero, shattered, saturated or
wrongly declared): when Square beats the gradient attacks, the declared gradient is not to be
trusted (:mod:`harness.engine.sanity`). Inside AutoAttack ``standard`` it only runs on the samples that
the gradient components failed on, with the budget of the whole AutoAttack; here it runs on every
clean-correct sample.

Parameters (suite ``params``): ``n_queries`` (default 5000, AutoAttack's), ``p_init`` (initial
fraction of pixels changed, default 0.8, AutoAttack's), ``restarts`` from the spec. Randomized
defenses are queried through the harness's EOT model (mean scores of ``eot`` draws per query).
Each query is one forward pass of the still-robust part of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.attacks.base import Attack
from harness.attacks.registry import register
from harness.errors import BenchUserError

DEFAULT_N_QUERIES = 5000
DEFAULT_P_INIT = 0.8
NORM_NAMES = {"linf": "Linf", "l2": "L2"}


@dataclass(frozen=True)
class SquareConfig:
    """Validated Square parameters."""

    n_queries: int
    p_init: float


def make_config(norm: str, p: dict) -> SquareConfig:
    unknown = set(p) - {"n_queries", "p_init"}
    if unknown:
        raise BenchUserError(f"square: unknown parameter(s) {', '.join(sorted(unknown))}; known: n_queries, p_init")
    n_queries = int(p.get("n_queries", DEFAULT_N_QUERIES))
    p_init = float(p.get("p_init", DEFAULT_P_INIT))
    if n_queries < 1:
        raise BenchUserError(f"square: n_queries must be >= 1, got {n_queries}")
    if not 0 < p_init <= 1:
        raise BenchUserError(f"square: p_init must be in (0, 1], got {p_init}")
    return SquareConfig(n_queries, p_init)


def budget(p: dict, restarts: int) -> str:
    cfg = make_config("linf", p)
    return f"{cfg.n_queries} queries (p_init {cfg.p_init:g}) x {restarts} restarts"


def run(cfg: SquareConfig, *, model, x, y, threat, seed) -> torch.Tensor:
    """One restart of Square on the batch; its adversarials where found, the clean inputs elsewhere."""
    if tuple(threat.bounds) != (0.0, 1.0):
        raise BenchUserError(f"square assumes inputs in [0, 1], the threat model has bounds {threat.bounds}; use another attack")
    from pyautoattack.square import SquareAttack

    attack = SquareAttack(model, norm=NORM_NAMES[threat.norm], n_queries=cfg.n_queries, eps=float(threat.eps), p_init=cfg.p_init,
                          n_restarts=1, seed=int(seed % (2**31)), verbose=False, device=x.device, resc_schedule=False)
    with torch.no_grad():
        return attack.perturb(x, y).detach()


@register
class Square(Attack):
    name, label, cost = "square", "Square", 2000
    cost_reference = {"n_queries": DEFAULT_N_QUERIES}
    uses, library = "gradient-free", "pyautoattack"
    description = ("Square Attack (Andriushchenko et al. 2020), score-based random search on every clean-correct sample: "
                   "a check against masked gradients")

    def configure(self, norm, params):
        return make_config(norm, params)

    def propose(self, config, model, x, y, *, threat, seed, defense, report):
        return run(config, model=model, x=x, y=y, threat=threat, seed=seed)

    def budget_params(self, p, restarts):
        return budget(p, restarts)
