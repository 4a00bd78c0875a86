"""Transfer attack: PGD on a *source* model, candidates verified on the attacked defense.

A check against gradient masking for defenses whose own gradient may mislead (randomized inner
optimisation, non-differentiable preprocessing): white-box PGD on a related, plainly differentiable
model, then the harness verifies the candidates with the defense's real ``predict`` as for every
attack. Useful above all for wrappers: variational smoothing (thesis Algorithm 5) over ``cnn`` is
attacked through ``cnn`` itself, whose adversarial examples the smoothing has to undo with its
one-step inner optimisation.

Parameters (suite ``params``): ``source`` -- ``"base"`` (default: the wrapped base of a wrapper
defense such as ``vsmooth-*`` or ``binary-*``; the defense itself when it wraps nothing) or a
registered defense name with a checkpoint for the data set; ``steps`` (default 100) and
``rel_stepsize`` (default 2.5 / steps) of foolbox's PGD with random start. Restarts come from the
spec. No EOT: the source is evaluated as it is (a randomized source gets foolbox's single draws).
"""

from __future__ import annotations

import foolbox as fb
import torch

from harness.errors import BenchUserError

_KNOWN = {"source", "steps", "rel_stepsize"}
_SOURCES: dict[tuple[str, str, str], torch.nn.Module] = {}


def make_config(norm: str, p: dict) -> dict:
    unknown = set(p) - _KNOWN
    if unknown:
        raise BenchUserError(f"transfer: unknown parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KNOWN))}")
    steps = int(p.get("steps", 100))
    if steps < 1:
        raise BenchUserError(f"transfer: steps must be >= 1, got {steps}")
    source = str(p.get("source", "base"))
    return {"norm": norm, "source": source, "steps": steps, "rel_stepsize": float(p.get("rel_stepsize", 2.5 / steps))}


def budget(p: dict, restarts: int) -> str:
    steps = int(p.get("steps", 100))
    source = p.get("source", "base")
    src = "the defense's base model (itself if it wraps none)" if source == "base" else f"source model {source}"
    return f"PGD {steps} steps on {src} x {restarts} restarts, transferred (no EOT)"


def source_model(defense, name: str) -> torch.nn.Module:
    """The source of ``defense``: its base (``"base"``) or a loaded defense ``name`` (cached)."""
    if name == "base":
        return getattr(defense, "base", defense)
    device = next((t.device for t in defense.parameters()), torch.device("cpu"))
    key = (name, defense.dataset, str(device))
    if key not in _SOURCES:
        from harness.models import load_defense

        model, _card = load_defense(name, defense.dataset, device=device, train_if_missing=False, progress=False, announce=lambda *_: None)
        _SOURCES[key] = model
    return _SOURCES[key]


def run(cfg: dict, *, model, fmodel, x, y, threat, params, seed) -> torch.Tensor:
    """One restart: foolbox PGD (random start) against the source, returning the raw candidates."""
    defense = getattr(model, "defense", model)  # the runner passes an EOTModel around the defense
    source = source_model(defense, cfg["source"])
    from harness.attacks import _pgd  # the harness's PGD (foolbox, random start)

    src = fb.PyTorchModel(source.eval(), bounds=threat.bounds, device=x.device)
    attack = _pgd(cfg["norm"], {"steps": cfg["steps"], "rel_stepsize": cfg["rel_stepsize"]})
    raw, _clipped, _success = attack(src, x, y, epsilons=threat.eps)
    return raw
