"""Evolution reaches the threshold on an easy source model, batch-scored, seeded, leaving no global state."""

import random

import pytest
import torch

from harness.attacks.neat import FoolingSet, evolve_fooling_images
from tests.neat.helpers import BrightnessModel, QuadrantModel


def _evolve(model, **kw):
    args = dict(num_classes=2, shape=(1, 8, 8), threshold=0.9, population=8, generations=8, seed=0, progress=False)
    args.update(kw)
    return evolve_fooling_images(model, **args)


def test_reaches_threshold_on_easy_model():
    model = BrightnessModel()
    fs = _evolve(model)
    assert isinstance(fs, FoolingSet) and len(fs) == 2
    assert tuple(fs.images.shape) == (2, 1, 8, 8)
    assert float(fs.images.min()) >= 0 and float(fs.images.max()) <= 1
    assert fs.targets.tolist() == [0, 1]
    assert fs.reached.all()
    assert (fs.confidences >= 0.9).all()
    assert ((fs.generations >= 1) & (fs.generations <= 8)).all()
    # one batched predict per generation, not one per genome
    assert model.calls == int(fs.generations.sum())
    # the stored confidence is the source's softmax of the target on the stored image
    p = torch.softmax(model.predict(fs.images).double(), 1)
    torch.testing.assert_close(p[torch.arange(2), fs.targets], fs.confidences, rtol=1e-5, atol=1e-6)
    # class 0 = bright, class 1 = dark
    assert fs.images[0].mean() > 0.5 > fs.images[1].mean()


def test_evolution_improves_over_generations():
    # the first generation is not good enough here: NEAT has to evolve the x*y pattern
    fs = _evolve(QuadrantModel(), population=10, generations=20)
    assert fs.reached.all() and (fs.confidences >= 0.9).all()
    assert int(fs.generations.max()) > 1


def test_unreachable_threshold_uses_the_budget():
    fs = _evolve(BrightnessModel(gain=1.0), generations=3, targets=[1])  # max confidence ~0.62 < 0.9
    assert fs.targets.tolist() == [1]
    assert not fs.reached.any()
    assert fs.generations.tolist() == [3]
    assert 0.5 < float(fs.confidences[0]) < 0.9


def test_seeded_and_no_global_random_state_left_behind():
    random.seed(1234)
    before = random.getstate()
    a = _evolve(BrightnessModel(gain=3.0), generations=3, runs_per_target=2)
    assert random.getstate() == before
    b = _evolve(BrightnessModel(gain=3.0), generations=3, runs_per_target=2)
    c = _evolve(BrightnessModel(gain=3.0), generations=3, runs_per_target=2, seed=1)
    assert len(a) == 4 and a.targets.tolist() == [0, 0, 1, 1]
    assert torch.equal(a.images, b.images) and torch.equal(a.confidences, b.confidences)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images[0], a.images[1])  # runs of one target use different seeds


@pytest.mark.parametrize("kw,match", [
    (dict(threshold=1.5), "threshold"),
    (dict(population=1), "population"),
    (dict(generations=0), "generations"),
    (dict(targets=[2]), "targets"),
    (dict(shape=(1, 8)), "shape"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        _evolve(BrightnessModel(), **kw)
