"""The Defense contract, checked for every registered defense (new defenses are covered automatically),
each on a data set it declares (its input shape and number of classes come from that data set)."""

import pytest
import torch

from defenses.registry import get_defense, list_defenses
from harness import datasets
from harness.errors import BenchUserError
from harness.models import build_defense

CASES = [(name, cls.datasets[0]) for name, cls in sorted(list_defenses().items())]


@pytest.fixture(params=CASES, ids=[f"{n}-{d}" for n, d in CASES])
def defense(request):
    name, dataset = request.param
    d = build_defense(name, dataset)
    d.use_smoke_test_budget()
    d.eval()
    return d


def _x(defense, n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *defense.input_shape, generator=torch.Generator().manual_seed(seed))


def test_built_for_its_data_set(defense):
    info = datasets.get_info(defense.dataset)
    assert defense.dataset in type(defense).datasets
    assert tuple(defense.input_shape) == tuple(info.shape) and defense.num_classes == info.num_classes


def test_predict_shape_and_finite(defense):
    s = defense.predict(_x(defense, 4), generator=torch.Generator().manual_seed(1))
    assert s.shape == (4, defense.num_classes)
    assert torch.isfinite(s).all()


def test_declared_gradient_is_finite_and_nonzero(defense):
    x = _x(defense, 3).requires_grad_(True)
    s = defense.predict(x, generator=torch.Generator().manual_seed(1))
    s.gather(1, torch.tensor([[0], [1], [2]]) % defense.num_classes).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_determinism_matches_declaration(defense):
    x = _x(defense, 4)
    a = defense.predict(x, generator=torch.Generator().manual_seed(7))
    b = defense.predict(x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)  # same generator state -> same scores, randomized or not
    c = defense.predict(x, generator=torch.Generator().manual_seed(8))
    if defense.randomized:
        assert not torch.allclose(a, c)  # a randomized defense draws from the generator it is given
    else:
        torch.testing.assert_close(a, c)


def test_abstain_and_metadata(defense):
    x = _x(defense, 2)
    s = defense.predict(x)
    ab = defense.abstain(x, s)
    assert ab.dtype == torch.bool and ab.shape == (2,)
    info = defense.info()
    assert info.name == defense.name and info.randomized == defense.randomized and tuple(info.datasets) == tuple(type(defense).datasets)
    assert info.gradient_policy and info.gradient_policy.count(". ") == 0  # one sentence
    assert info.paper


def test_unknown_defense_is_a_one_line_user_error():
    with pytest.raises(BenchUserError) as exc:
        get_defense("no-such-defense")
    assert "no-such-defense" in str(exc.value) and "\n" not in str(exc.value)
