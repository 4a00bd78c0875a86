"""Boundary attack adapter: started from a batch image the model assigns another class (thesis 2.3)."""

import pytest
import torch

from harness.attacks import budget_string, get_attack, run_attack
from harness.attacks.boundary import starting_points
from harness.errors import BenchUserError
from harness.engine.verify import verify
from tests.attacks.helpers import LinearDefense, NoisyLinearDefense, batch
from threat_models import AttackSpec, ThreatModel, load_suite


def _setup(n=8):
    d = LinearDefense().eval()
    x, y = batch(d.net, n=n)
    return d, x, y


def test_starting_points_are_other_class_images_of_the_batch():
    d, x, y = _setup()
    starts, found = starting_points(d.net, x, y, generator=torch.Generator().manual_seed(0))
    assert found.all()
    pred = d.net(starts).argmax(1)
    assert (pred != y).all()
    assert all(any(torch.equal(s, xi) for xi in x) for s in starts)  # real images of the batch


def test_boundary_finds_small_adversarials_and_records_min_norm():
    d, x, y = _setup()
    threat = ThreatModel(norm="l2", eps=1.0)
    spec = AttackSpec("boundary", params=(("steps", 200),))
    cands = run_attack(d, x, y, threat, spec, seed=0)
    assert len(cands) == 1 and cands[0].shape == x.shape
    v = verify(d, x, y, cands, threat, generator=None, unbounded=True)
    assert (~v.correct).any()
    assert torch.isfinite(v.min_norm).all()  # every sample had a start, so every one has an adversarial
    start_dist = (starting_points(d.net, x, y, generator=torch.Generator().manual_seed(0))[0] - x).flatten(1).norm(dim=1)
    assert v.min_norm.mean() < start_dist.mean()  # the walk moved towards the inputs


def test_sample_without_a_starting_point_is_left_unattacked():
    d, x, y = _setup()
    cls = int(y[0])
    keep = (y == cls).nonzero().flatten()
    xs, ys = x[keep], y[keep]  # one class only: no start for anyone
    cands = run_attack(d, xs, ys, ThreatModel(norm="l2", eps=1.0), AttackSpec("boundary", params=(("steps", 20),)), seed=0)
    torch.testing.assert_close(cands[0], xs)
    # a single odd sample out: only it gets attacked
    other = (y != cls).nonzero().flatten()[:1]
    xm, ym = torch.cat([xs, x[other]]), torch.cat([ys, y[other]])
    cands = run_attack(d, xm, ym, ThreatModel(norm="l2", eps=1.0), AttackSpec("boundary", params=(("steps", 20),)), seed=0)
    assert not torch.equal(cands[0], xm)


def test_randomized_defense_runs():
    d = NoisyLinearDefense().eval()
    x, y = batch(d.net, n=6)
    from harness.engine.eot import EOTModel

    m = EOTModel(d, draws=3, generator=torch.Generator().manual_seed(0))
    cands = run_attack(m, x, y, ThreatModel(norm="l2", eps=1.0), AttackSpec("boundary", params=(("steps", 30),), eot=3), seed=1)
    assert cands[0].shape == x.shape and torch.isfinite(cands[0]).all()


def test_registered_as_l2_minimization_with_budget_and_paper_steps():
    info = get_attack("boundary")
    assert info.kind == "minimization" and info.norms == ("l2",)
    assert "100000 iterations" in budget_string(AttackSpec("boundary", params=(("steps", 100000),)))
    paper = {s.name: s for s in load_suite("paper", norm="l2", dataset="fmnist").attacks}
    assert paper["boundary"].kwargs["steps"] == 100000
    with pytest.raises(BenchUserError, match="unknown parameter"):
        info.configure("l2", {"stepz": 3})
