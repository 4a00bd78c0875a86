"""Gradient-consistency check: does the declared attack gradient describe the defense's real decision?

The harness never trusts a declared gradient (DESIGN.md "Trust"). On a few clean inputs it compares
the gradient that ``predict``'s backward declares with finite differences of the decision itself,
the margin ``m(x) = s_y(x) - max_{k != y} s_k(x)`` of the true class (Athalye et al. 2018 section 3;
Carlini et al. 2019 "On evaluating adversarial robustness", section 5.2 checklist):

* random directions ``u`` of unit length in the threat model's norm (signs for L∞, Gaussian for L2),
* step sizes ``h = eps * (1e-3, 1e-2, 1e-1, 1)``; ``x' = clamp(x + h u)``,
* first-order prediction ``<grad m(x), x' - x>`` against the real change ``m(x') - m(x)``,
  summarised per step size by their cosine over all (input, direction) pairs and the ratio of
  their norms.

A randomized defense is evaluated with common random numbers (the same generator seed for ``x``
and ``x'``, one draw), so the finite difference measures the decision, not its noise.

Verdicts (``GradientCheck.verdict``):

``consistent``
    at the three smallest step sizes where the decision or the prediction changes measurably, the
    cosine is at least ``MIN_COSINE`` and the norm ratio lies within ``RATIO_RANGE``.
``inconsistent``
    otherwise: a zero gradient where the decision changes (quantisation, saturation), noisy or
    shattered gradients (low cosine), exploding or vanishing magnitudes (ratio), non-finite values.
    Unless the defense declared a surrogate, this marks its result unreliable.
``surrogate``
    the defense declared its gradient with ``straight_through`` / ``bpda_identity`` (BPDA, the
    envelope gradient of ABS/E-ABS): finite differences of the decision are not expected to match,
    so the check is reported, not held against it; the attacks that use no gradient (Square,
    transfer, Boundary) decide whether the declared gradient misleads.
``flat``
    the decision never changed along the tested directions up to eps and the gradient is zero:
    nothing to compare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from defenses.base import declared_gradients

SCALES = (1e-3, 1e-2, 1e-1, 1.0)
MIN_COSINE = 0.8
RATIO_RANGE = (0.2, 5.0)
DIRECTIONS = 4
SAMPLES = 8


@dataclass(frozen=True)
class ScaleAgreement:
    """Declared gradient vs finite differences at one step size."""

    h: float
    cosine: float | None  # None when the prediction or the change is all zero
    ratio: float | None  # ||real change|| / ||first-order prediction||; None when the prediction is zero
    changed: float  # fraction of (input, direction) pairs whose margin changed measurably
    agree: bool | None  # None: nothing measurable at this step size


@dataclass(frozen=True)
class GradientCheck:
    """Result of :func:`check_gradients` (recorded as the manifest's ``gradient_check``)."""

    verdict: str  # consistent | inconsistent | surrogate | flat
    declared: dict[str, int]  # gradient helpers predict used: {"straight_through": 1} ...; {} = plain autograd
    samples: int
    directions: int
    zero_gradient: int  # inputs whose declared gradient is exactly zero
    nonfinite_gradient: int
    scales: tuple[ScaleAgreement, ...] = field(default_factory=tuple)
    problems: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def failed(self) -> bool:
        """True when the check speaks against the declared gradient (surrogates excepted)."""
        return self.verdict == "inconsistent"


def _margin(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = scores.gather(1, y[:, None]).squeeze(1)
    other = scores.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def _scores(defense, x: torch.Tensor, seed: int, grad: bool) -> torch.Tensor:
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with torch.set_grad_enabled(grad):
        return defense.predict(x, generator=gen)


def _directions(shape, norm: str, generator: torch.Generator, device) -> torch.Tensor:
    u = torch.randn(shape, generator=generator).to(device)
    if norm == "linf":
        return u.sign()
    return u / u.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (len(shape) - 1)))


def _agreement(h: float, pred: torch.Tensor, act: torch.Tensor, tol: torch.Tensor) -> ScaleAgreement:
    changed = act.abs() > tol
    pn, an = float(pred.norm()), float(act.norm())
    pred_on = bool((pred.abs() > tol).any())
    if not changed.any() and not pred_on:
        return ScaleAgreement(h, None, None, 0.0, None)
    cos = float((pred * act).sum() / (pn * an)) if pn > 0 and an > 0 else None
    ratio = an / pn if pn > 0 else None
    ok = cos is not None and cos >= MIN_COSINE and ratio is not None and RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]
    return ScaleAgreement(h, None if cos is None else round(cos, 4), None if ratio is None else float(f"{ratio:.4g}"), round(float(changed.float().mean()), 4), ok)


def check_gradients(defense, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float, bounds=(0.0, 1.0), seed: int = 0,
                    samples: int = SAMPLES, directions: int = DIRECTIONS, scales=SCALES) -> GradientCheck:
    """Compare ``defense``'s declared gradient of the true-class margin with finite differences of its decision."""
    x, y = x[:samples].detach(), y[:samples]
    n, d, s = len(x), directions, len(scales)
    base_eps = eps if eps > 0 else (0.1 if norm == "linf" else 1.0)
    lo, hi = bounds
    # layout: (scale, sample, direction) flattened; every position has its own copy of its input, so
    # the same generator seed gives each position the same random draws in x0 and x1 (common random numbers)
    x0 = x.repeat_interleave(d, 0).repeat(s, *([1] * (x.dim() - 1)))
    y0 = y.repeat_interleave(d).repeat(s)
    gen = torch.Generator().manual_seed(seed + 7919)
    u = _directions(x0.shape, norm, gen, x.device)
    h = torch.tensor([base_eps * c for c in scales], device=x.device, dtype=x.dtype).repeat_interleave(n * d)
    x1 = (x0 + h.view(-1, *([1] * (x.dim() - 1))) * u).clamp(lo, hi)

    xg = x0.clone().requires_grad_(True)
    with declared_gradients() as used:
        m0 = _margin(_scores(defense, xg, seed, grad=True), y0)
    if m0.requires_grad:
        (g,) = torch.autograd.grad(m0.sum(), xg, allow_unused=True)
    else:
        g = None
    if g is None:
        g = torch.zeros_like(x0)
    m0 = m0.detach()
    with torch.no_grad():
        m1 = _margin(_scores(defense, x1, seed, grad=False), y0)
    flat = g[: n * d].flatten(1)  # gradients of the first scale's block: one per (sample, direction)
    per_sample = flat.view(n, d, -1)[:, 0]
    nonfinite = int((~torch.isfinite(per_sample)).any(1).sum())
    zero = int((per_sample.abs().sum(1) == 0).sum())
    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    pred = (g * (x1 - x0)).flatten(1).sum(1)
    act = m1 - m0
    tol = 1e-5 * (1 + m0.abs())
    rows = []
    for i, c in enumerate(scales):
        sl = slice(i * n * d, (i + 1) * n * d)
        rows.append(_agreement(base_eps * c, pred[sl], act[sl], tol[sl]))
    informative = [r for r in rows if r.agree is not None][:3]
    problems = []
    if nonfinite:
        problems.append(f"non-finite declared gradient on {nonfinite}/{n} inputs")
    if not informative:
        verdict = "flat" if not nonfinite else "inconsistent"
    else:
        bad = [r for r in informative if not r.agree]
        for r in bad:
            if r.cosine is None and (r.ratio is None):
                problems.append(f"the declared gradient is zero where the decision changes (step {r.h:g}: {r.changed:.0%} of probes change the margin)")
            elif r.cosine is None:
                problems.append(f"step {r.h:g}: the decision does not change where the declared gradient predicts a change")
            elif r.cosine < MIN_COSINE:
                problems.append(f"step {r.h:g}: declared gradient and finite differences disagree (cosine {r.cosine:.2f} < {MIN_COSINE})")
            else:
                kind = "vanishing" if r.ratio > RATIO_RANGE[1] else "exploding"
                problems.append(f"step {r.h:g}: declared gradient magnitude off by a factor {r.ratio:.3g} ({kind})")
        verdict = "inconsistent" if bad or nonfinite else "consistent"
    declared = dict(sorted(used.items()))
    if verdict == "inconsistent" and declared and not nonfinite:
        verdict = "surrogate"
    return GradientCheck(verdict, declared, n, d, zero, nonfinite, tuple(rows), tuple(problems))


#: two runs of the check whose numbers differ by less than this found the same (floating-point
#: reductions differ with the thread count; the values are rounded to 4 digits, so a last digit can flip)
SAME_COSINE, SAME_RATIO = 1e-3, 1e-3


def same_finding(old: dict | None, new: dict) -> bool:
    """True when two recorded checks (``GradientCheck.to_dict()``) say the same: equal verdict,
    declared gradients, counts and per-step agreement, with cosines within ``SAME_COSINE``, ratios
    within a relative ``SAME_RATIO`` and changed fractions within one probe. A rerun that only adds
    to a result file keeps the recorded check then, so the file is not rewritten for jitter."""
    if not old:
        return False
    keys = ("verdict", "declared", "samples", "directions", "zero_gradient", "nonfinite_gradient")
    if any(old.get(k) != new.get(k) for k in keys):
        return False
    a, b = old.get("scales") or [], new.get("scales") or []
    if len(a) != len(b):
        return False
    probe = 1.0 / max(1, (new.get("samples") or 1) * (new.get("directions") or 1))

    def close(x, y, tol, rel=False):
        if x is None or y is None:
            return x is None and y is None
        return abs(x - y) <= tol * (max(abs(x), abs(y)) if rel else 1.0)

    return all(
        r.get("h") == q.get("h") and r.get("agree") == q.get("agree")
        and close(r.get("cosine"), q.get("cosine"), SAME_COSINE)
        and close(r.get("ratio"), q.get("ratio"), SAME_RATIO, rel=True)
        and close(r.get("changed"), q.get("changed"), probe + 1e-9)
        for r, q in zip(a, b)
    )


def describe(check: dict) -> str:
    """One line for tables and logs from a manifest's ``gradient_check`` dict."""
    verdict = check.get("verdict", "?")
    declared = check.get("declared") or {}
    how = "declared " + " + ".join(declared) if declared else "plain autograd"
    if verdict == "consistent":
        return f"gradient check: the declared gradient ({how}) matches finite differences of the decision"
    if verdict == "surrogate":
        return f"gradient check: surrogate gradient ({how}) disagrees with finite differences of the decision, as a surrogate may; trust rests on the gradient-free and transfer attacks"
    if verdict == "flat":
        return "gradient check: the decision did not change along any probe up to eps and the gradient is zero; nothing to compare"
    probs = "; ".join(check.get("problems") or []) or "inconsistent"
    return f"gradient check FAILED ({how}): {probs}"


