"""The Defense contract, checked for every registered defense (new defenses are covered automatically),
each on a data set it declares (its input shape and number of classes come from that data set)."""

import functools
import inspect

import pytest
import torch

from defenses.base import Defense
from defenses.registry import get_defense, list_defenses
from defenses.wrapper import WrapperDefense
from harness import datasets
from harness.errors import BenchUserError
from harness.engine.models import build_defense

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


@functools.cache
def _checkpoint_names(dataset: str) -> frozenset[str]:
    """Checkpoint names of the registered trainable defenses on ``dataset`` (default options)."""
    return frozenset(build_defense(n, dataset).checkpoint_name() for n, c in list_defenses().items() if c.trainable and dataset in c.datasets)


def test_hooks_are_instance_methods(defense):
    """One kind of method per hook: everything but ``option_names`` is asked of the instance."""
    for hook in ("checkpoint_name", "default_train_config", "checkpoint_module", "init_checkpoint_name", "certified_radius",
                 "load_card", "load_external_weights", "wrapped_base", "use_training_services", "extra_info"):
        attr = inspect.getattr_static(type(defense), hook)
        assert not isinstance(attr, (classmethod, staticmethod)), f"{defense.name}.{hook} is a {type(attr).__name__}"
    assert isinstance(inspect.getattr_static(type(defense), "option_names"), classmethod)
    assert isinstance(defense.checkpoint_name(), str) and defense.checkpoint_name()
    cfg = defense.default_train_config(defense.dataset)
    assert isinstance(cfg, dict) and (cfg or not defense.trainable)


def test_certified_radius_is_none_or_a_nonnegative_bound(defense):
    x = _x(defense, 3)
    y = torch.tensor([0, 1, 2]) % defense.num_classes
    r = defense.certified_radius(x, y, generator=torch.Generator().manual_seed(1))
    if r is not None:
        assert r.shape == (3,) and r.dtype.is_floating_point
        assert torch.isfinite(r).all() and (r >= 0).all()
        with torch.no_grad():
            wrong = defense.predict(x, generator=torch.Generator().manual_seed(1)).argmax(1) != y
        assert (r[wrong] == 0).all()  # no bound where the prediction is wrong


def test_init_checkpoint_is_none_or_a_registered_checkpoint(defense):
    init = defense.init_checkpoint_name()
    assert init is None or init in _checkpoint_names(defense.dataset), f"{defense.name} starts from {init!r}, which no registered defense trains"
    if init is not None:
        assert init != defense.checkpoint_name()


def test_rejection_is_declared(defense):
    """``supports_rejection`` defenses take a threshold from the card; the others never have one."""
    x = _x(defense, 2)
    s = defense.predict(x, generator=torch.Generator().manual_seed(1))
    assert defense.reject_threshold is None  # nothing calibrated yet: never rejects on that ground
    if defense.supports_rejection:
        defense.load_card({"reject_threshold": float("inf")})
        assert defense.reject_threshold == float("inf") and not defense.abstain(x, s).any()
        defense.load_card({"reject_threshold": -float("inf")})
        assert defense.abstain(x, s).all()  # every statistic exceeds -inf
        defense.load_card({})
        assert defense.reject_threshold is None


def test_wrapper_declarations(defense):
    base = defense.wrapped_base()
    if base is None:
        assert not isinstance(defense, WrapperDefense)
        return
    assert isinstance(defense, WrapperDefense) and isinstance(base, Defense) and base is not defense
    assert type(base) is type(defense).base_class and base.dataset == defense.dataset
    assert defense.checkpoint_name() == base.checkpoint_name() and defense.checkpoint_module() is base.checkpoint_module()
    assert defense.default_train_config(defense.dataset) == base.default_train_config(defense.dataset)
    assert defense.init_checkpoint_name() == base.init_checkpoint_name()
    assert defense.info().extra["base"] == base.name
    names = type(defense).option_names()
    assert names[: len(base.option_names())] == base.option_names()  # the base's options first, then the wrapper's own
    assert set(names) - set(base.option_names()) == set(type(defense).own_options)


def test_option_names_are_what_the_constructor_takes():
    for name, cls in list_defenses().items():
        names = cls.option_names()
        assert isinstance(names, tuple) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
        assert not {"self", "num_classes", "input_shape", "dataset"} & set(names)
        if not issubclass(cls, WrapperDefense):
            assert set(names) <= set(inspect.signature(cls.__init__).parameters), name


def test_options_are_validated_against_the_declared_names():
    """A wrapper takes its base's options (forwarded) and its own; anything else is a one-line user error."""
    d = build_defense("binary-cnn", "cifar10", arch="resnet18")
    assert d.base.arch == "resnet18" and d.info().extra == {"base": "cnn", "threshold": 0.5, "arch": "resnet18"}
    v = build_defense("vsmooth-cnn", "cifar10", arch="resnet18", steps=2)
    assert v.base.arch == "resnet18" and v.steps == 2
    with pytest.raises(BenchUserError, match=r"defense 'binary-cnn' does not take option\(s\) steps \(its options: arch\); drop it"):
        build_defense("binary-cnn", "fmnist", steps=2)
    with pytest.raises(BenchUserError, match=r"\(its options: arch, norm, radius, steps, sigma, rel_stepsize, random_start\)"):
        build_defense("vsmooth-cnn", "fmnist", bogus=1)
    with pytest.raises(BenchUserError, match="32x32 RGB"):  # the base's own check of its option
        build_defense("binary-cnn", "fmnist", arch="resnet18")


def test_unknown_defense_is_a_one_line_user_error():
    with pytest.raises(BenchUserError) as exc:
        get_defense("no-such-defense")
    assert "no-such-defense" in str(exc.value) and "\n" not in str(exc.value)
