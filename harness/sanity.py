"""Gradient-masking sanity checks (Athalye et al. 2018; Carlini et al. 2019 checklist).

Run with every ``bench run`` and recorded as warnings in the result manifest (``bench table`` prints
them). A warning is not a verdict; it says where the evaluation may over-report robustness:

* zero or non-finite attack gradients on clean inputs (gradient attacks are blind there),
* randomness in a defense that declares itself deterministic (EOT would be needed),
* for a randomized defense, how often its own randomness flips the verdict on a clean input (two
  independent scorings disagree): the "All" row takes the worst case over every attack's fresh
  re-scoring, so part of a gap between "All" and the best single attack can be this randomness,
* gradient-free attacks beating gradient attacks by a margin (gradients are probably masked),
* a transfer attack (PGD on a source model such as the wrapped base) beating the white-box gradient
  attacks on the defense itself by a margin (the defense's declared gradient misleads),
* accuracy that increases with eps within an eps sweep (the attack is not working properly).
"""

from __future__ import annotations

import torch

from harness.eot import EOTModel

GRADIENT_FREE = frozenset({"noise", "boundary", "es-pgd"})
GRADIENT_BASED = frozenset({"pgd", "fgm", "deepfool", "ddn", "cw", "autoattack"})
TRANSFER = frozenset({"transfer"})
MARGIN = 0.05  # accuracy points (as a fraction) a gradient-free attack may beat the gradient ones by
FLIP_WARN = 0.02  # fraction of clean inputs whose verdict two scorings of a randomized defense may disagree on silently


def model_checks(defense, x: torch.Tensor, y: torch.Tensor, *, draws: int, seed: int = 0, max_samples: int = 16) -> list[str]:
    """Gradient checks on ``max_samples`` clean inputs; determinism / randomness checks on all of ``x``."""
    from harness.verify import score

    warnings = []
    if defense.randomized and len(x) > 1:
        a, _ = score(defense, x, y, generator=torch.Generator(device=x.device).manual_seed(seed + 1), draws=draws)
        b, _ = score(defense, x, y, generator=torch.Generator(device=x.device).manual_seed(seed + 2), draws=draws)
        flips = int((a != b).sum())
        if flips / len(x) >= FLIP_WARN:
            warnings.append(
                f"randomized defense: two independent scorings ({draws} draw(s) each) of the same {len(x)} clean inputs disagree on "
                f"{flips} ({flips / len(x):.0%}); every attack's verification is a fresh scoring, so the All row's worst case "
                "includes flips from this randomness alone"
            )
    x, y = x[:max_samples], y[:max_samples]
    xg = x.clone().requires_grad_(True)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    scores = EOTModel(defense, draws=draws, generator=gen)(xg)
    torch.nn.functional.cross_entropy(scores, y).backward()
    g = xg.grad
    if g is None:
        return [f"no gradient reaches the input on {len(x)} clean samples: gradient attacks cannot work; check the declared attack gradient"]
    flat = g.flatten(1)
    bad = int((~torch.isfinite(flat)).any(1).sum())
    if bad:
        warnings.append(f"non-finite attack gradients on {bad}/{len(x)} clean samples")
    zero = int((flat.abs().sum(1) == 0).sum())
    if zero:
        warnings.append(f"zero attack gradient on {zero}/{len(x)} clean samples: gradient masking? gradient attacks are blind there")
    if not defense.randomized:
        with torch.no_grad():
            a = defense.predict(x, generator=torch.Generator(device=x.device).manual_seed(seed + 1))
            b = defense.predict(x, generator=torch.Generator(device=x.device).manual_seed(seed + 2))
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            warnings.append("defense declares itself deterministic but its scores change between calls: it should be randomized=True (EOT)")
    return warnings


def outcome_checks(data: dict, *, margin: float = MARGIN) -> list[str]:
    """Checks on the per-sample outcomes of a result file."""
    recs, attacks = data["records"], data["manifest"].get("attacks", {})
    if not recs:
        return []
    acc = {k: sum(r["attacks"][k]["correct"] for r in recs if k in r["attacks"]) / len(recs) for k in attacks}
    warnings = []
    base = {k: k.split("@")[0] for k in acc}
    free = {k: a for k, a in acc.items() if base[k] in GRADIENT_FREE and "@" not in k}
    grad = {k: a for k, a in acc.items() if base[k] in GRADIENT_BASED and "@" not in k}
    transfer = {k: a for k, a in acc.items() if base[k] in TRANSFER and "@" not in k}
    if grad:
        kg, ag = min(grad.items(), key=lambda t: t[1])
        if free:
            kf, af = min(free.items(), key=lambda t: t[1])
            if af < ag - margin:
                warnings.append(f"gradient-free {kf} ({af:.1%}) beats the best gradient attack {kg} ({ag:.1%}) by more than {margin:.0%}: gradients may be masked")
        if transfer:
            kt, at = min(transfer.items(), key=lambda t: t[1])
            if at < ag - margin:
                warnings.append(f"{kt} from a source model ({at:.1%}) beats the best white-box gradient attack {kg} ({ag:.1%}) by more than {margin:.0%}: the defense's attack gradient misleads (masked or obfuscated)")
    sweeps: dict[str, list[tuple[float, float]]] = {}
    for k, a in acc.items():
        if "@" in k and "eps" in attacks[k]:
            sweeps.setdefault(base[k], []).append((float(attacks[k]["eps"]), a))
    for name, pts in sweeps.items():
        pts.sort()
        for (e0, a0), (e1, a1) in zip(pts, pts[1:]):
            if a1 > a0 + margin:
                warnings.append(f"{name}: accuracy rises from {a0:.1%} at eps {e0:g} to {a1:.1%} at eps {e1:g}: the attack is not working properly")
    return warnings
