"""Verification: attacks only propose; the harness decides.

Every candidate is projected into the threat model (eps-ball and input bounds), checked with
``ThreatModel.contains`` and re-scored with the defense's real ``predict`` (fresh random draws for a
randomized defense). A sample counts as broken only if a verified candidate is misclassified or
abstained on. Per sample the smallest verified adversarial is kept. Foolbox's own success flags are
never used.

For a randomized defense one scoring is itself a random draw: a candidate near the decision boundary
can be judged robust by one ``draws``-draw mean and broken by the next. With ``recheck`` (a second,
independent generator) every projected candidate is scored a second time and :attr:`Verified.recheck_flip`
says per sample whether that second scoring reverses the verdict (a robust sample one of whose
candidates it misclassifies; a broken sample whose kept adversarial it classifies correctly). The
verdict stays the first scoring's (an unbiased estimate of one fresh scoring); the flips measure how
reliable it is (reported by ``bench table``, :func:`harness.stats.recheck_summary`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.errors import InputError

#: how far outside the input bounds a value may lie before it is an error (float rounding of attacks)
BOUNDS_TOL = 1e-4


def check_inputs(defense, x: torch.Tensor, *, bounds: tuple[float, float] = (0.0, 1.0), tol: float = BOUNDS_TOL) -> None:
    """Raise :class:`InputError` unless ``x`` is a finite ``(B, C, H, W)`` batch of the defense's input
    shape with values in ``bounds`` (up to ``tol``): the harness boundary every input to a defense crosses."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"inputs must be a floating-point tensor, got {type(x).__name__}{'' if not isinstance(x, torch.Tensor) else ' of ' + str(x.dtype)}")
    shape = tuple(getattr(defense, "input_shape", ()) or ())
    if x.dim() != 4 or (shape and tuple(x.shape[1:]) != shape):
        want = f"(B, {', '.join(map(str, shape))})" if shape else "(B, C, H, W)"
        raise InputError(f"inputs of shape {tuple(x.shape)} do not fit defense {getattr(defense, 'name', '?')!r}, which takes {want}")
    if not torch.isfinite(x.detach()).all():
        raise InputError("inputs contain NaN or infinite values")
    lo, hi = bounds
    xmin, xmax = (float(v) for v in torch.aminmax(x.detach())) if x.numel() else (lo, hi)
    if xmin < lo - tol or xmax > hi + tol:
        raise InputError(f"inputs range over [{xmin:.4g}, {xmax:.4g}], outside the bounds [{lo:g}, {hi:g}]; scale images to [{lo:g}, {hi:g}] (e.g. divide 8-bit pixels by 255)")


def mean_scores(defense, x: torch.Tensor, *, generator: torch.Generator | None, draws: int = 1) -> torch.Tensor:
    """The scores the harness judges by: ``predict``, or for a randomized defense the mean of ``draws``
    independent draws (the estimator the EOT attack gradient uses)."""
    n = draws if defense.randomized else 1
    return defense.predict_draws(x, draws=n, generator=generator).mean(0) if n > 1 else defense.predict(x, generator=generator)


@torch.no_grad()
def score(defense, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None, draws: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct, abstained)`` per sample under the real ``predict``.

    For a randomized defense the scores of ``draws`` independent draws are averaged before the
    argmax (the same estimator the EOT attack gradient uses). Abstaining counts as incorrect.
    """
    check_inputs(defense, x)
    s = mean_scores(defense, x, generator=generator, draws=draws)
    if s.dim() != 2 or s.shape[0] != x.shape[0]:
        raise RuntimeError(f"defense {defense.name!r} returned scores of shape {tuple(s.shape)}, expected ({x.shape[0]}, K)")
    abst = defense.abstain(x, s).to(torch.bool)
    correct = (s.argmax(1) == y) & ~abst
    return correct, abst


@dataclass
class Verified:
    """Per-sample outcome of one attack on one batch."""

    correct: torch.Tensor  # bool (B,): still correctly classified after the attack
    abstained: torch.Tensor  # bool (B,): the kept adversarial was an abstention
    norm: torch.Tensor  # float (B,): norm of the kept adversarial inside the ball; nan if none
    min_norm: torch.Tensor  # float (B,): smallest verified adversarial at any distance (minimization attacks); nan if none
    kept: torch.Tensor | None = None  # long (B,): restart whose candidate is the kept adversarial; -1 if none
    recheck_flip: torch.Tensor | None = None  # bool (B,): an independent second scoring reverses the verdict (``recheck``)


@torch.no_grad()
def verify(defense, x, y, candidates: list[torch.Tensor], threat, *, generator, draws: int = 1, unbounded: bool = False,
           recheck: torch.Generator | None = None) -> Verified:
    """Verify attack ``candidates`` (one batch per restart) against ``defense`` for inputs ``x`` that
    the defense classifies correctly (the runner attacks only those; a sample misclassified to begin
    with is recorded as adversarial at distance 0 by :func:`harness.engine.runner.not_attacked`).

    ``unbounded=True`` (minimization attacks) additionally re-scores each candidate *without*
    projection to record the smallest adversarial distance found at any size. ``recheck`` (randomized
    defenses; ignored for deterministic ones): a generator for a second, independent scoring of every
    projected candidate (module docstring).
    """
    check_inputs(defense, x, bounds=threat.bounds)
    b = x.shape[0]
    nan = torch.full((b,), float("nan"), device=x.device)
    best = nan.clone()
    best_abst = torch.zeros(b, dtype=torch.bool, device=x.device)
    best_min = nan.clone()
    kept = torch.full((b,), -1, dtype=torch.long, device=x.device)
    second = [] if recheck is not None and defense.randomized else None  # per restart: correct under the second scoring
    for r, cand in enumerate(candidates):
        if cand.shape != x.shape:
            raise RuntimeError(f"attack returned candidates of shape {tuple(cand.shape)} for inputs {tuple(x.shape)}")
        cand = torch.nan_to_num(cand.to(x.dtype), nan=0.0)
        proj = threat.project(cand, x)
        if not threat.contains(proj, x).all():
            raise RuntimeError("projection left the threat model; this is a harness bug")
        ok, abst = score(defense, proj, y, generator=generator, draws=draws)
        if second is not None:
            second.append(score(defense, proj, y, generator=recheck, draws=draws)[0])
        adv = ~ok
        d = threat.distance(proj, x)
        better = adv & (torch.isnan(best) | (d < best))
        best = torch.where(better, d, best)
        kept = torch.where(better, torch.full_like(kept, r), kept)
        best_abst = torch.where(better, abst, best_abst)
        if unbounded:
            lo, hi = threat.bounds
            raw = cand.clamp(lo, hi)
            ok_raw, _ = score(defense, raw, y, generator=generator, draws=draws)
            adv_raw = ~ok_raw
            d_raw = threat.distance(raw, x)
            # the projected candidate is an adversarial too, possibly closer
            for a, dd in ((adv_raw, d_raw), (adv, d)):
                m = a & (torch.isnan(best_min) | (dd < best_min))
                best_min = torch.where(m, dd, best_min)
    if not unbounded:
        best_min = nan
    correct = torch.isnan(best)
    flip = None
    if second is not None and second:
        ok2 = torch.stack(second)  # (restarts, B)
        kept_ok2 = ok2.gather(0, kept.clamp_min(0)[None])[0]
        flip = torch.where(correct, ~ok2.all(0), kept_ok2)
    return Verified(correct=correct, abstained=best_abst & ~correct, norm=best, min_norm=best_min, kept=torch.where(correct, torch.full_like(kept, -1), kept),
                    recheck_flip=flip)
