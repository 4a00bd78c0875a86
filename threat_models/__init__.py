"""Threat models and attack specifications: frozen values that go into result files.

* :class:`ThreatModel` -- norm, eps, input bounds; ``project`` / ``contains`` / ``distance``.
* :class:`AttackSpec` -- attack name, parameters, restarts, EOT draws, seed; ``spec_hash``.
* ``eps.toml`` -- per-dataset eps of the thesis (section 2.3); ``suites/*.toml`` -- attack suites.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import torch

from benchcore.errors import BenchUserError

NORMS = ("linf", "l2")
NORM_LABEL = {"linf": "L∞", "l2": "L2"}


@dataclass(frozen=True)
class ThreatModel:
    """An Lp ball of radius ``eps`` around each clean input, intersected with ``bounds``."""

    norm: str
    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)
    eps_label: str = ""

    def __post_init__(self):
        if self.norm not in NORMS:
            raise BenchUserError(f"unknown norm {self.norm!r}; use one of {', '.join(NORMS)}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0):
            raise BenchUserError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if self.norm == "linf" and self.eps > 1:
            raise BenchUserError(f"L∞ eps {self.eps} exceeds the [0,1] input range; use a value in [0, 1]")
        if not self.eps_label:
            object.__setattr__(self, "eps_label", f"{self.eps:g}")

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample Lp distance ``(B,)``."""
        d = (x_adv - x).flatten(1)
        return d.abs().amax(1) if self.norm == "linf" else d.norm(p=2, dim=1)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project ``x_adv`` onto the eps-ball around ``x`` and clamp to ``bounds``."""
        d = x_adv - x
        if self.norm == "linf":
            d = d.clamp(-self.eps, self.eps)
        else:
            n = d.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
            factor = (self.eps / n).clamp(max=1.0)
            d = d * factor.view(-1, *([1] * (d.dim() - 1)))
        lo, hi = self.bounds
        out = (x + d).clamp(lo, hi)
        if self.norm == "l2":
            # clamping can only shrink an L2 perturbation, so the result stays in the ball
            pass
        return out

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, *, tol: float = 1e-5) -> torch.Tensor:
        """Boolean ``(B,)``: inside the ball (up to ``tol``) and inside bounds."""
        lo, hi = self.bounds
        flat = x_adv.flatten(1)
        in_bounds = (flat >= lo - tol).all(1) & (flat <= hi + tol).all(1)
        return in_bounds & (self.distance(x_adv, x) <= self.eps + tol)


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite. ``params`` are passed to the attack adapter as keyword arguments."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    restarts: int = 1
    eot: int = 1
    seed: int = 0
    label: str = ""

    def __post_init__(self):
        if self.restarts < 1 or self.eot < 1:
            raise BenchUserError(f"attack {self.name}: restarts and eot must be >= 1")
        object.__setattr__(self, "params", tuple(sorted(dict(self.params).items())))

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = dict(self.params)
        return d

    def spec_hash(self) -> str:
        """Stable 12-hex-digit hash of the spec (independent of dict order and Python version)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def with_eot(self, eot: int) -> "AttackSpec":
        return AttackSpec(self.name, self.params, self.restarts, eot, self.seed, self.label)


def _read_toml(name: str) -> dict:
    return tomllib.loads(resources.files("threat_models").joinpath(name).read_text(encoding="utf-8"))


def default_threat(dataset: str, norm: str) -> ThreatModel:
    """The thesis threat model for ``dataset`` and ``norm`` (eps.toml)."""
    if norm not in NORMS:
        raise BenchUserError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    table = _read_toml("eps.toml")
    if dataset not in table:
        raise BenchUserError(f"no default eps for dataset {dataset!r}; known: {', '.join(sorted(table))}")
    entry = table[dataset][norm]
    return ThreatModel(norm=norm, eps=float(entry["eps"]), eps_label=str(entry.get("label", "")))


def list_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("threat_models").joinpath("suites").iterdir() if p.name.endswith(".toml"))


def is_suite_file(name: str) -> bool:
    """True when ``--suite`` names a TOML file of the user's rather than a shipped suite."""
    return name.endswith(".toml") or "/" in name or os.sep in name


def suite_text(name: str) -> str:
    """The TOML text of a shipped suite (``quick``) or of a suite file (``my-suite.toml``)."""
    if is_suite_file(name):
        try:
            with open(name, encoding="utf-8") as fh:
                return fh.read()
        except OSError as exc:
            raise BenchUserError(f"suite file {name}: cannot read it ({exc.strerror or exc})") from None
    if name not in list_suites():
        raise BenchUserError(f"unknown suite {name!r}; known: {', '.join(list_suites())} (or the path of a suite .toml file)")
    return resources.files("threat_models").joinpath(f"suites/{name}.toml").read_text(encoding="utf-8")


def _suite_tables(name: str, text: str) -> tuple[dict, list[dict]]:
    """``(raw TOML, attack tables)`` of a suite's text, with the default masking checks appended.

    Unless the suite says ``masking_checks = false``, every attack of ``masking.toml`` (Square and
    a transfer attack: attacks that do not use the defense's declared gradient) that the suite does
    not list by name is appended, so that a gradient-masked defense cannot pass any suite unnoticed.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchUserError(f"suite {name!r} is not valid TOML ({exc})") from None
    tables = list(raw.get("attack", []))
    if not isinstance(tables, list) or not all(isinstance(a, dict) and isinstance(a.get("name"), str) for a in tables):
        raise BenchUserError(f"suite {name!r}: every [[attack]] needs a name")
    checks = raw.get("masking_checks", True)
    if not isinstance(checks, bool):
        raise BenchUserError(f"suite {name!r}: masking_checks must be true or false, got {checks!r}")
    if checks:
        listed = {a["name"] for a in tables}
        tables += [dict(a, appended=True) for a in _read_toml("masking.toml").get("attack", []) if a["name"] not in listed]
    return raw, tables


@dataclass(frozen=True)
class SuiteAttack:
    """One attack of a suite for one norm and dataset: its spec and, for an eps sweep, the eps values
    it runs at (``eps = [0.0, 0.1, ...]`` in the suite; None: the threat model's eps)."""

    spec: AttackSpec
    eps: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Suite:
    """A suite parsed for one norm, dataset and kind of defense (eps comes from the threat model).

    ``randomized``: whether it was loaded for a randomized defense -- the EOT policy: every spec then
    has ``eot = eot_randomized`` draws (1 otherwise), and attacks whose algorithm depends on it
    (AutoAttack's ``rand`` version) read it from here, not from the specs. ``sha256``: hash of the
    suite's TOML text (sweep shards record it).
    """

    name: str
    description: str
    entries: tuple[SuiteAttack, ...] = field(default_factory=tuple)
    eot_randomized: int = 1
    randomized: bool = False
    sha256: str = ""

    @property
    def attacks(self) -> tuple[AttackSpec, ...]:
        """The specs of :attr:`entries`, in suite order."""
        return tuple(e.spec for e in self.entries)

    @property
    def eot(self) -> int:
        """EOT draws of this suite's specs (``eot_randomized`` for a randomized defense, else 1)."""
        return self.eot_randomized if self.randomized else 1


def _eps_sweep(suite: str, a: dict, dataset: str) -> tuple[float, ...] | None:
    eps = a.get("dataset", {}).get(dataset, {}).get("eps", a.get("eps"))
    if eps is None:
        return None
    if not isinstance(eps, list) or not eps or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in eps):
        raise BenchUserError(f"suite {suite!r}, attack {a.get('name')!r}: eps must be a non-empty list of numbers, e.g. eps = [0.0, 0.1, 0.2]")
    return tuple(float(e) for e in eps)


def load_suite(name: str, *, norm: str, dataset: str, randomized: bool = False) -> Suite:
    """Suite ``name`` for ``norm`` (its attacks that list the norm); dataset overrides applied; EOT set
    for randomized defenses; eps sweeps parsed. The one parser of suite files.

    TOML layout::

        description = "..."
        eot_randomized = 5
        [[attack]]               # one table per attack
        name = "pgd"
        norms = ["linf", "l2"]
        restarts = 5
        params = { steps = 80, rel_stepsize = 0.0333 }
        eps = [0.0, 0.1, 0.2]    # optional: an eps sweep (one run per eps)
        [attack.dataset.svhn]    # optional per-dataset overrides (params, restarts, eps)
        restarts = 20
        [attack.randomized]      # optional overrides for randomized defenses (params, restarts),
        params = { steps = 40 }  # applied before the dataset's
    """
    if norm not in NORMS:
        raise BenchUserError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    text = suite_text(name)
    raw, tables = _suite_tables(name, text)
    eot_randomized = int(raw.get("eot_randomized", 1))
    eot = eot_randomized if randomized else 1
    entries = []
    for a in tables:
        if norm not in a.get("norms", NORMS):
            continue
        over = a.get("dataset", {}).get(dataset, {})
        kind = a.get("randomized", {})
        if not isinstance(kind, dict) or set(kind) - {"params", "restarts"} or not isinstance(kind.get("params", {}), dict):
            raise BenchUserError(f"suite {name!r}: [attack.randomized] of {a['name']!r} may set params (a table) and restarts only")
        kind = kind if randomized else {}
        params = {**a.get("params", {}), **kind.get("params", {}), **over.get("params", {})}
        spec = AttackSpec(
            name=a["name"],
            params=tuple(params.items()),
            restarts=int(over.get("restarts", kind.get("restarts", a.get("restarts", 1)))),
            eot=eot,
            seed=int(a.get("seed", 0)),
            label=a.get("label", ""),
        )
        entries.append(SuiteAttack(spec, _eps_sweep(name, a, dataset)))
    return Suite(name=name, description=raw.get("description", ""), entries=tuple(entries), eot_randomized=eot_randomized,
                 randomized=bool(randomized), sha256=hashlib.sha256(text.encode()).hexdigest())
