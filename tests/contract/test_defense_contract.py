"""The Defense contract, checked for every registered defense (new defenses are covered automatically)."""

import pytest
import torch

from defenses.base import Defense
from defenses.registry import list_defenses
from harness.models import build_defense

NAMES = sorted(list_defenses())


@pytest.fixture(params=NAMES)
def defense(request):
    d = build_defense(request.param, "fmnist")
    d.use_smoke_test_budget()
    d.eval()
    return d


def test_registry_has_builtins():
    assert "cnn" in NAMES


def test_predict_shape_and_finite(defense):
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    s = defense.predict(x, generator=torch.Generator().manual_seed(1))
    assert s.shape == (4, defense.num_classes)
    assert torch.isfinite(s).all()


def test_declared_gradient_is_finite_and_nonzero(defense):
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    s = defense.predict(x, generator=torch.Generator().manual_seed(1))
    s.gather(1, torch.tensor([[0], [1], [2]])).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_determinism_matches_declaration(defense):
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    a = defense.predict(x, generator=torch.Generator().manual_seed(7))
    b = defense.predict(x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)  # same generator state -> same scores, randomized or not
    if not defense.randomized:
        c = defense.predict(x, generator=torch.Generator().manual_seed(8))
        torch.testing.assert_close(a, c)


def test_abstain_and_metadata(defense):
    x = torch.rand(2, 1, 28, 28)
    s = defense.predict(x)
    ab = defense.abstain(x, s)
    assert ab.dtype == torch.bool and ab.shape == (2,)
    info = defense.info()
    assert info.name == defense.name
    assert info.gradient_policy and info.gradient_policy.count(". ") == 0
    assert isinstance(defense, Defense)
