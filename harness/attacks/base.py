"""The attack contract: one adapter shape for every attack, built-in or plugin.

An attack adapter is a subclass of :class:`Attack` that declares what it is (class attributes) and
proposes candidates (:meth:`Attack.propose`); the harness never trusts them: :mod:`harness.engine.verify`
projects, clamps and re-scores every candidate with the defense's ``predict``. Declarations are read
by the rest of the harness instead of lists kept elsewhere:

==============  =====================================================================================
``name``        registry name, used in suites and as the attack key of result files (``pgd``)
``label``       display name in tables and ``leaderboard.md`` (``PGD``)
``norms``       threat-model norms it supports
``kind``        ``"bounded"`` (finds x' inside the eps-ball) or ``"minimization"`` (the smallest
                adversarial x'; the verifier projects it and records the smallest distance)
``uses``        what it relies on (:data:`USES`): ``"gradient"`` (the defense's declared gradient),
                ``"gradient-free"`` (scores or decisions only), ``"transfer"`` (gradients of another
                model) or ``"fooling"`` (images of no class); the trust checks of
                :mod:`harness.engine.sanity` compare these groups, :mod:`harness.engine.saturation` doubles the
                budgets of gradient attacks with a ``steps`` parameter
``components``  component name -> what it uses, for attacks made of components that report which
                one found an adversarial (AutoAttack's Square is gradient-free)
``cost``        relative cost per attacked sample at the attack's default budget (FGM = 1 gradient step),
                for ``bench sweep --dry-run``
``cost_reference``  the suite parameter values at which ``cost`` is declared (``{"steps": 40}``):
                :meth:`Attack.cost_of` scales the cost linearly in each of them, the restarts and the EOT
                draws, so a suite's PGD-80 costs twice its PGD-40; empty: the cost does not depend on
                the budget (override ``cost_of`` where it depends otherwise: AutoAttack)
``library``     the library that does the work (``foolbox``, ``pyautoattack``, ...)
``description`` one sentence for ``bench list attacks``
``default_params``  parameters used when ``bench run --attacks NAME`` adds an attack its suite lacks
==============  =====================================================================================

Calls, per attack run of the runner (:func:`harness.attacks.run_attack`):

1. ``config = attack.configure(norm, params)`` -- validate the suite ``params`` (unknown keys and
   bad values raise :class:`harness.errors.BenchUserError`) and return whatever ``propose`` needs;
2. per restart, inside a ``torch.random.fork_rng`` seeded from the restart seed (foolbox and
   pyautoattack draw from torch's global RNG):
   ``attack.propose(config, model, x, y, threat=, seed=, defense=, report=) -> x_adv``, where
   ``model`` maps inputs in the threat model's bounds to scores (the harness's
   :class:`harness.engine.eot.EOTModel` around ``defense``), ``defense`` is the attacked defense itself
   (for adapters that need its metadata, e.g. its wrapped base) and ``report`` an
   :class:`AttackReport` collecting notes for the result manifest;
3. ``attack.budget(spec, randomized=)`` -- the human-readable budget recorded in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

#: what an attack relies on (the trust checks of :mod:`harness.engine.sanity` compare these groups)
USES = ("gradient", "gradient-free", "transfer", "fooling")
KINDS = ("bounded", "minimization")


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


class Attack:
    """Base class of attack adapters (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    kind: ClassVar[str] = "bounded"
    uses: ClassVar[str] = "gradient"
    components: ClassVar[dict[str, str]] = {}
    cost: ClassVar[float] = 20.0
    cost_reference: ClassVar[dict[str, float]] = {}
    library: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_params: ClassVar[dict[str, Any]] = {}

    def configure(self, norm: str, params: dict) -> Any:
        """Validate the suite parameters; the returned value is handed to :meth:`propose`."""
        return dict(params)

    def propose(self, config: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, threat, seed: int,
                defense: torch.nn.Module, report: AttackReport) -> torch.Tensor:
        """One restart: candidate adversarials for ``x`` (same shape), unverified."""
        raise NotImplementedError

    def cost_of(self, params: dict, restarts: int = 1, *, eot: int = 1, randomized: bool = False) -> float:
        """Relative cost per attacked sample of one run with suite ``params``, ``restarts`` and ``eot``
        draws per prediction (``randomized``: the attacked defense is, for attacks whose algorithm
        depends on it): ``cost`` x restarts x eot x, for each parameter of ``cost_reference``, the
        suite's value over the reference value (a parameter the suite leaves out is at its reference)."""
        scale = float(restarts) * float(eot)
        for key, ref in self.cost_reference.items():
            value = params.get(key, ref)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                scale *= float(value) / float(ref)
        return float(self.cost) * scale

    def budget_params(self, params: dict, restarts: int) -> str:
        """The budget of the attack's own parameters (the EOT draws are added by :meth:`budget`)."""
        return f"{params.get('steps', '?')} steps x {restarts} restarts"

    def budget(self, spec, *, randomized: bool | None = None) -> str:
        """Human-readable budget of one AttackSpec, EOT draws included.

        ``randomized``: whether the attacked defense is randomized (the suite's EOT policy), None
        when not known; attacks whose algorithm depends on it (AutoAttack) say so in the string.
        """
        return f"{self.budget_params(spec.kwargs, spec.restarts)}, EOT {spec.eot}"

    def uses_of(self, component: str | None) -> str:
        """What the component that found an adversarial relies on (the attack's own ``uses`` if unknown)."""
        return self.components.get(component, self.uses) if component else self.uses

    @classmethod
    def check_declaration(cls) -> None:
        """Raise ``ValueError`` when a class attribute of the contract is missing or invalid."""
        if not cls.name or not isinstance(cls.name, str) or "@" in cls.name or "," in cls.name:
            raise ValueError(f"{cls.__name__}: set `name` (a registry name without '@' or ',')")
        if not cls.label:
            raise ValueError(f"{cls.__name__}: set `label` (its display name, e.g. 'PGD')")
        if cls.kind not in KINDS:
            raise ValueError(f"{cls.__name__}: kind must be one of {', '.join(KINDS)}, got {cls.kind!r}")
        if cls.uses not in USES or any(u not in USES for u in cls.components.values()):
            raise ValueError(f"{cls.__name__}: uses (and components' uses) must be one of {', '.join(USES)}, got {cls.uses!r}")
        if not cls.norms or any(n not in ("linf", "l2") for n in cls.norms):
            raise ValueError(f"{cls.__name__}: norms must be a non-empty tuple of 'linf' / 'l2', got {cls.norms!r}")
        if not (isinstance(cls.cost, (int, float)) and cls.cost > 0):
            raise ValueError(f"{cls.__name__}: cost must be a number > 0 (FGM = 1), got {cls.cost!r}")
        if not isinstance(cls.cost_reference, dict) or any(not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for k, v in cls.cost_reference.items()):
            raise ValueError(f"{cls.__name__}: cost_reference must map parameter names to numbers > 0, got {cls.cost_reference!r}")
