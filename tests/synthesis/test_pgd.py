"""The synthesis PGD loop, seeds and settings (harness/experiments/synthesis.py) on tiny stub models."""

import math

import pytest
import torch

from defenses.base import Defense
from harness.errors import BenchUserError
from harness.experiments.synthesis import (
    PAPER_TABLE1,
    fit_seed_model,
    l2,
    l2_project,
    parse_judge,
    pgd_step,
    psnr,
    require_gradient,
    sample_seeds,
    square_masks,
    targeted_l2_pgd,
    task_setting,
)


class Linear(Defense):
    """K linear scores on 1x8x8 images (differentiable)."""

    name = "linear-stub"
    trainable = False

    def __init__(self, k=3, seed=0):
        super().__init__(num_classes=k, input_shape=(1, 8, 8), dataset="fmnist")
        self.w = torch.randn(k, 64, generator=torch.Generator().manual_seed(seed))

    def predict(self, x, *, generator=None):
        return 0.5 * x.flatten(1) @ self.w.T


class NoGradient(Linear):
    name = "nograd-stub"

    def predict(self, x, *, generator=None):
        with torch.no_grad():
            return super().predict(x)


def test_projection_keeps_the_l2_ball():
    g = torch.Generator().manual_seed(0)
    center = torch.rand(16, 1, 8, 8, generator=g)
    x = center + 3 * torch.randn(16, 1, 8, 8, generator=g)
    for eps in (0.05, 0.5, 2.0):
        p = l2_project(x, center, eps)
        assert (l2(p, center) <= eps * (1 + 1e-5)).all()
        # the clamp after the projection only moves coordinates towards the centre (which is in [0, 1])
        assert (l2(p.clamp(0, 1), center) <= eps * (1 + 1e-5)).all()
    inside = center + 1e-3 * torch.randn(16, 1, 8, 8, generator=g)
    assert torch.equal(l2_project(inside, center, 10.0), inside)  # already inside: unchanged


def test_pgd_steps_stay_in_the_ball_and_bounds():
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, 1, 8, 8, generator=g)
    x = x0.clone()
    for _ in range(50):
        x = pgd_step(x, torch.randn(8, 1, 8, 8, generator=g), x0, alpha=0.3, eps=0.7)
        assert (l2(x, x0) <= 0.7 * (1 + 1e-5)).all()
        assert x.min() >= 0 and x.max() <= 1


def test_full_pgd_projection_and_loss_decrease():
    model = Linear()
    x0 = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    res = targeted_l2_pgd(model, x0, target, eps=1.0, alpha=0.1, steps=30)
    assert res.losses.shape == (31, 6)
    assert (l2(res.x, x0) <= 1.0 + 1e-5).all()
    assert (res.losses[-1] <= res.losses[0]).all() and res.losses[-1].mean() < 0.5 * res.losses[0].mean()
    assert torch.equal(res.pred, model.predict(res.x).argmax(1))


def test_masked_inpainting_step_never_changes_pixels_outside_the_patch():
    model = Linear(seed=3)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(5, 1, 8, 8, generator=g)
    mask, corners = square_masks(5, (1, 8, 8), 3, g)
    assert mask.sum(dim=(1, 2, 3)).tolist() == [9.0] * 5
    res = targeted_l2_pgd(model, x0, torch.tensor([0, 1, 2, 0, 1]), eps=0.8, alpha=0.2, steps=25, mask=mask)
    outside = ~mask.bool()
    assert torch.equal(res.x[outside], x0[outside])
    assert (res.x[mask.bool()] != x0[mask.bool()]).any()  # the patch did change
    assert (l2(res.x, x0) <= 0.8 + 1e-5).all()
    # a single step with a dense gradient: still nothing outside the mask
    step = pgd_step(x0, torch.randn(5, 1, 8, 8, generator=g), x0, alpha=5.0, eps=100.0, mask=mask)
    assert torch.equal(step[outside], x0[outside])


def test_zero_gradient_makes_no_step():
    x0 = torch.rand(2, 1, 8, 8)
    assert torch.equal(pgd_step(x0, torch.zeros_like(x0), x0, alpha=1.0, eps=1.0), x0)


def _toy_data(n=300, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = (0.2 + 0.2 * y.view(-1, 1, 1, 1) + 0.05 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("kind", ["uniform", "univariate", "multivariate"])
def test_seeds_are_reproducible_and_class_conditional(kind):
    x, y = _toy_data()
    sm = fit_seed_model(x, y, 3)
    targets = torch.tensor([0, 1, 2] * 200)
    a = sample_seeds(sm, kind, targets, torch.Generator().manual_seed(7))
    b = sample_seeds(sm, kind, targets, torch.Generator().manual_seed(7))
    c = sample_seeds(sm, kind, targets, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (600, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    if kind != "uniform":  # class means of the seeds follow the data's (0.2, 0.4, 0.6)
        means = [float(a[targets == t].mean()) for t in range(3)]
        assert means == pytest.approx([0.2, 0.4, 0.6], abs=0.02)


def test_seed_model_covariance_is_exact_at_full_rank():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(400, 1, 2, 2, generator=g) * torch.tensor([1.0, 0.5, 0.2, 0.1]).view(1, 1, 2, 2)
    y = torch.zeros(400, dtype=torch.long)
    sm = fit_seed_model(x, y, 1)
    f = sm.factor[0].double()
    cov = torch.cov(x.flatten(1).double().T)
    assert torch.allclose(f @ f.T, cov, atol=1e-6)


def test_settings_scale_table1_to_the_resolution():
    s = task_setting("generate", (1, 28, 28), kind="uniform")
    scale = math.sqrt(784 / 150528)
    assert s.eps == pytest.approx(40 * scale) and s.alpha == pytest.approx(1 * scale) and s.steps == 100
    assert task_setting("generate", (1, 28, 28), kind="multivariate").steps == 60
    for task in ("inpaint", "superres", "translate"):
        t = task_setting(task, (1, 28, 28))
        assert (t.eps, t.steps) == (pytest.approx(PAPER_TABLE1[task].eps * scale), PAPER_TABLE1[task].steps)
    capped = task_setting("inpaint", (1, 28, 28), max_steps=72)
    assert capped.steps == 72 and capped.alpha * capped.steps == pytest.approx(0.1 * scale * 720) and capped.step_cap == 72
    with pytest.raises(BenchUserError, match="unknown task"):
        task_setting("colorize", (1, 28, 28))


def test_require_gradient():
    require_gradient(Linear(), torch.rand(2, 1, 8, 8))
    with pytest.raises(BenchUserError, match="declares no gradient"):
        require_gradient(NoGradient(), torch.rand(2, 1, 8, 8))


def test_parse_judge_and_metrics():
    j = parse_judge("eabs@ck/eabs.safetensors,steps=10,precision=bf16")
    assert (j.name, j.checkpoint, j.options) == ("eabs", "ck/eabs.safetensors", (("steps", 10), ("precision", "bf16")))
    assert parse_judge("cnn").checkpoint is None
    with pytest.raises(BenchUserError):
        parse_judge("cnn,steps")
    x = torch.zeros(1, 1, 4, 4)
    assert float(psnr(x + 0.1, x)) == pytest.approx(20.0)
