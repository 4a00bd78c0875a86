"""PGD with evolution-strategies gradient estimation (``es-pgd``): the thesis's "PGD attack with
gradient estimation" (Ju 2021, section 2.3 "Gradient-free attacks": 50 steps).

Foolbox's :func:`foolbox.gradient_estimators.es_gradient_estimator` wraps a PGD class and replaces
its ``value_and_grad`` with an antithetic finite-difference estimate
``g = sum_k (L(x + s n_k) - L(x - s n_k)) n_k / (4 s samples)`` (``samples // 2`` pairs). Two changes
make it usable on trained models, both through foolbox's documented ``get_loss_fn`` override point:

* **Margin loss** ``max_{j != y} z_j - z_y`` instead of cross-entropy: on a confident model the
  cross-entropy differences underflow to exactly 0 in float32 and the estimate vanishes.
* **Per-sample loss.** PGD's default loss is summed over the batch, so the estimate for sample
  ``i`` is multiplied by the loss change of *every* sample of the batch -- noise from the others
  that grows with the batch size and drowns low-margin samples next to high-margin ones. Our loss
  returns one value per sample shaped ``(B, 1, ..., 1)``; the estimator's
  ``(pos_loss - neg_loss) * noise`` then broadcasts per sample, so each sample's gradient is
  estimated from its own loss only, in one batched forward per probe (no Python loop over samples).

The normalised step of PGD (sign for L∞, unit L2 direction for L2) makes the estimate's scale
irrelevant. Parameters (suite ``params``): ``steps`` (thesis 50), ``samples`` (probes per step,
default 50 = 25 antithetic pairs), ``sigma`` (probe std in input units, default 0.01 for inputs in
[0, 1]), ``rel_stepsize`` (default 2.5 / steps), ``random_start`` (default True). One step costs
``samples + 1`` forward passes of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import eagerpy as ep
import foolbox as fb
import torch

from harness.attacks.base import Attack
from harness.attacks.registry import register
from harness.errors import BenchUserError

DEFAULT_STEPS = 50
DEFAULT_SAMPLES = 50
DEFAULT_SIGMA = 0.01


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample margin ``max_{j != y} z_j - z_y`` ``(B,)``: positive exactly when misclassified."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return other - true


class PerSampleMarginLoss:
    """Mixin for foolbox gradient-descent attacks: per-sample margin loss shaped ``(B, 1, ..., 1)``.

    Only valid under a gradient estimator (autograd needs a scalar loss); the loss value PGD gets
    back from ``value_and_grad`` is unused.
    """

    def get_loss_fn(self, model, labels):
        lab = labels.raw if isinstance(labels, ep.Tensor) else labels

        def loss_fn(inputs: ep.Tensor) -> ep.Tensor:
            with torch.no_grad():
                logits = model(inputs).raw
                m = margin_loss(logits, lab)
            return ep.astensor(m.reshape(-1, *([1] * (inputs.ndim - 1))))

        return loss_fn


class _MarginLinfPGD(PerSampleMarginLoss, fb.attacks.LinfPGD):
    pass


class _MarginL2PGD(PerSampleMarginLoss, fb.attacks.L2PGD):
    pass


@dataclass(frozen=True)
class ESConfig:
    """Validated ``es-pgd`` parameters."""

    norm: str
    steps: int
    samples: int
    sigma: float
    rel_stepsize: float
    random_start: bool


def make_config(norm: str, p: dict) -> ESConfig:
    """Validate the suite parameters of ``es-pgd`` (see module docstring for defaults)."""
    steps = int(p.get("steps", DEFAULT_STEPS))
    samples = int(p.get("samples", DEFAULT_SAMPLES))
    sigma = float(p.get("sigma", DEFAULT_SIGMA))
    if steps < 1:
        raise BenchUserError(f"es-pgd: steps must be >= 1, got {steps} (the thesis uses 50)")
    if samples < 2:
        raise BenchUserError(f"es-pgd: samples must be >= 2 (antithetic pairs), got {samples}")
    if not sigma > 0:
        raise BenchUserError(f"es-pgd: sigma must be > 0, got {sigma} (e.g. 0.01 for inputs in [0, 1])")
    rel = float(p.get("rel_stepsize", 2.5 / steps))
    return ESConfig(norm, steps, samples, sigma, rel, bool(p.get("random_start", True)))


def attack_class(norm: str, *, samples: int, sigma: float, bounds: tuple[float, float]) -> type:
    """Foolbox's ES-estimated PGD class for ``norm`` with the per-sample margin loss."""
    base = _MarginLinfPGD if norm == "linf" else _MarginL2PGD
    return fb.gradient_estimators.es_gradient_estimator(base, samples=samples, sigma=sigma, bounds=bounds, clip=True)


def build(cfg: ESConfig, bounds: tuple[float, float]):
    """The foolbox attack instance for ``cfg``."""
    cls = attack_class(cfg.norm, samples=cfg.samples, sigma=cfg.sigma, bounds=bounds)
    return cls(steps=cfg.steps, rel_stepsize=cfg.rel_stepsize, random_start=cfg.random_start)


def run(cfg: ESConfig, *, model, x, y, threat) -> torch.Tensor:
    """One restart of ``es-pgd`` (inside the caller's seeded ``fork_rng``: foolbox draws the probes)."""
    attack = build(cfg, tuple(threat.bounds))
    fmodel = fb.PyTorchModel(model, bounds=threat.bounds, device=x.device)
    raw, _clipped, _success = attack(fmodel, x, y, epsilons=threat.eps)
    return raw


def budget(p: dict, restarts: int) -> str:
    cfg = make_config("linf", p)
    return f"{cfg.steps} steps x {cfg.samples} ES samples (sigma {cfg.sigma:g}, per-sample margin loss) x {restarts} restarts"


@register
class ESPGD(Attack):
    name, label, cost = "es-pgd", "ES-PGD", 1000
    cost_reference = {"steps": DEFAULT_STEPS, "samples": DEFAULT_SAMPLES}
    uses, library = "gradient-free", "foolbox"
    description = "PGD with evolution-strategies gradient estimation (foolbox es_gradient_estimator), per-sample margin loss (thesis 2.3)"

    def configure(self, norm, params):
        return make_config(norm, params)

    def propose(self, config, model, x, y, *, threat, seed, defense, report):
        return run(config, model=model, x=x, y=y, threat=threat)

    def budget_params(self, p, restarts):
        return budget(p, restarts)
