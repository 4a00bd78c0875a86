"""Boundary attack (Brendel et al. 2018) via foolbox's :class:`foolbox.attacks.BoundaryAttack`: the
thesis's decision-based gradient-free attack (Ju 2021, section 2.3 "Gradient-free attacks": "100000
iterations ... We initialize the Boundary attack with a random sample that is classified as a
different class from the ground truth").

Starting points: for every input ``i`` a random image ``j`` of the same batch whose *defense
prediction* (the attacked model's argmax, EOT-averaged for randomized defenses) differs from
``y_i``, drawn with a generator seeded from the restart's seed. The runner attacks batches of the
clean-correct test samples, so image ``j`` is a real test image of another class. Inputs without
such an image (a batch of one class, or of one sample) are left un-attacked: their candidate is the
clean input, which the verifier scores as not adversarial.

A minimization attack under the L2 distance (foolbox's BoundaryAttack minimises L2); the verifier
projects its candidates into the threat model and records the smallest verified distance.
Parameters (suite ``params``): ``steps`` (iterations; thesis 100000), ``spherical_step``,
``source_step``, ``source_step_convergance``, ``step_adaptation``, ``update_stats_every_k``
(foolbox's defaults: 0.01, 0.01, 1e-7, 1.5, 10). One iteration costs one forward pass of the batch,
plus one every ``update_stats_every_k`` iterations.
"""

from __future__ import annotations

import logging

import foolbox as fb
import torch

from harness.attacks.base import Attack
from harness.attacks.registry import register
from harness.errors import BenchUserError

log = logging.getLogger(__name__)

#: thesis section 2.3
PAPER_STEPS = 100_000
_FOOLBOX_KEYS = ("spherical_step", "source_step", "source_step_convergance", "step_adaptation", "update_stats_every_k")
#: redraws when a randomized defense changes its mind about a starting point between two queries
_START_TRIES = 3


def make(norm: str, p: dict) -> fb.attacks.BoundaryAttack:
    """Foolbox's BoundaryAttack with ``steps`` iterations (default: the thesis's 100000)."""
    steps = int(p.get("steps", PAPER_STEPS))
    if steps < 1:
        raise BenchUserError(f"boundary: steps must be >= 1, got {steps} (the thesis uses 100000)")
    unknown = set(p) - {"steps", *_FOOLBOX_KEYS}
    if unknown:
        raise BenchUserError(f"boundary: unknown parameter(s) {', '.join(sorted(unknown))}; known: steps, {', '.join(_FOOLBOX_KEYS)}")
    return fb.attacks.BoundaryAttack(steps=steps, **{k: p[k] for k in _FOOLBOX_KEYS if k in p})


@torch.no_grad()
def starting_points(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator, pool: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input a random image of ``pool`` (default: the batch) that ``model`` assigns a class other than ``y``.

    Returns ``(starts, found)``: ``starts`` like ``x`` (the input itself where none was found) and
    ``found`` a boolean ``(B,)``.
    """
    pool = x if pool is None else pool
    pred = model(pool).argmax(1)
    ok = pred[None, :] != y[:, None]  # (B, P): pool image j is another class for input i
    r = torch.rand(ok.shape, generator=generator, device=generator.device).to(x.device)
    j = r.masked_fill(~ok, -1.0).argmax(1)
    found = ok.any(1)
    starts = torch.where(found.view(-1, *([1] * (x.dim() - 1))), pool[j], x)
    return starts, found


def run(attack, *, model, x, y, seed, bounds=(0.0, 1.0)) -> torch.Tensor:
    """One restart: starting points from the batch, then foolbox's BoundaryAttack on the inputs that have one."""
    fmodel = fb.PyTorchModel(model, bounds=tuple(bounds), device=x.device)
    gen = torch.Generator(device=x.device if x.device.type == "cuda" else "cpu").manual_seed(seed)
    out = x.clone()
    starts, found = starting_points(model, x, y, generator=gen)
    for _ in range(_START_TRIES):
        idx = found.nonzero().flatten()
        if idx.numel() == 0:
            break
        try:
            raw, _clipped, _success = attack(fmodel, x[idx], y[idx], epsilons=None, starting_points=starts[idx])
        except ValueError as exc:
            if "starting_points are not adversarial" not in str(exc):
                raise
            # a randomized defense re-scored a starting point as its label: keep the ones it still rejects
            with torch.no_grad():
                still = model(starts[idx]).argmax(1) != y[idx]
            found[idx[~still]] = False
            continue
        out[idx] = raw.to(out.dtype)
        break
    else:
        found[:] = False
    missing = int((~found).sum())
    if missing:
        log.info("boundary: no starting point of another predicted class for %d of %d inputs; left un-attacked", missing, len(x))
    return out


def budget(p: dict, restarts: int) -> str:
    return f"{int(p.get('steps', PAPER_STEPS))} iterations x {restarts} restarts, start: random batch image of another predicted class"


@register
class Boundary(Attack):
    name, label, cost = "boundary", "Boundary", 2000
    cost_reference = {"steps": PAPER_STEPS}
    norms, kind, uses, library = ("l2",), "minimization", "gradient-free", "foolbox"
    description = ("Boundary attack (Brendel et al. 2018), decision-based, L2; started from a random batch image the defense "
                   "assigns another class (thesis 2.3)")

    def configure(self, norm, params):
        return make(norm, params)

    def propose(self, config, model, x, y, *, threat, seed, defense, report):
        return run(config, model=model, x=x, y=y, seed=seed, bounds=threat.bounds)

    def budget_params(self, p, restarts):
        return budget(p, restarts)
