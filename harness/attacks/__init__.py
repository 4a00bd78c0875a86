"""Attack adapters: thin wrappers over foolbox 3, pyautoattack (and plugins) that *propose* adversarial candidates.

Every attack, built-in or plugin, is an :class:`harness.attacks.base.Attack` subclass in the
registry (:mod:`harness.attacks.registry`, entry-point group ``bench.attacks``): it declares its
label, kind, what it uses, norms, budget string and cost, and proposes candidates per restart
(the contract is documented in :mod:`harness.attacks.base`). Candidates are never trusted:
:mod:`harness.engine.verify` projects, clamps and re-scores them with the defense's ``predict``.

Built-ins: PGD, FGM, DDN, C&W, noise (:mod:`harness.attacks.foolbox_attacks`); DeepFool with one
forward pass per step (:mod:`harness.attacks.deepfool`); the gradient-free attacks of thesis section
2.3, ``boundary`` (:mod:`harness.attacks.boundary`) and ``es-pgd`` (:mod:`harness.attacks.estimation`);
Square (:mod:`harness.attacks.square`); AutoAttack (thesis chapter 4, :mod:`harness.attacks.autoattack`);
transfer from a source model (a gradient-masking check, :mod:`harness.attacks.transfer`).

Foolbox draws its random starts from torch's global RNG; :func:`run_attack` runs each restart inside
``torch.random.fork_rng`` seeded from the spec, so results are reproducible and the caller's global
RNG state is untouched.
"""

from __future__ import annotations

import torch

from harness.attacks.base import USES, Attack, AttackReport
from harness.attacks.registry import ENTRY_POINT_GROUP, broken_plugins, find_attack, get_attack, list_attacks, origin_of, register
from harness.errors import BenchUserError

__all__ = ["USES", "Attack", "AttackReport", "ENTRY_POINT_GROUP", "broken_plugins", "budget_string", "find_attack", "get_attack",
           "list_attacks", "origin_of", "register", "run_attack"]


def budget_string(spec, *, randomized: bool | None = None) -> str:
    """Human-readable budget of one AttackSpec, EOT draws included (``randomized``: the attacked
    defense's flag when known; see :meth:`Attack.budget`)."""
    return get_attack(spec.name).budget(spec, randomized=randomized)


def run_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat, spec, *, seed: int, report: AttackReport | None = None) -> list[torch.Tensor]:
    """Run ``spec`` against ``model`` on one batch; one candidate batch per restart (unverified).

    ``model`` is the attacked defense, usually behind an :class:`harness.engine.eot.EOTModel`.
    ``report``, when given, collects what the adapter reports besides candidates (:class:`AttackReport`).
    """
    from harness.engine.eot import EOTModel

    attack = get_attack(spec.name)
    if threat.norm not in attack.norms:
        raise BenchUserError(f"attack {spec.name!r} does not support norm {threat.norm} (supports {', '.join(attack.norms)})")
    config = attack.configure(threat.norm, spec.kwargs)
    defense = model.defense if isinstance(model, EOTModel) else model
    devices = [x.device] if x.device.type == "cuda" else []
    out = []
    for r in range(spec.restarts):
        restart_seed = seed * 1_000_003 + r
        sub = AttackReport()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(restart_seed)
            raw = attack.propose(config, model, x, y, threat=threat, seed=restart_seed, defense=defense, report=sub)
        out.append(raw.detach())
        if report is not None:
            for n in sub.notes:
                report.note(n)
            report.found_by.append(sub.found_by[0] if sub.found_by else None)
    return out
