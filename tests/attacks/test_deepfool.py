"""DeepFool adapter: foolbox's algorithm, one forward pass per step for all candidate classes."""

import foolbox as fb
import pytest
import torch
from torch import nn

from harness.attacks import deepfool as df
from harness.attacks import run_attack
from harness.engine.eot import EOTModel
from harness.errors import BenchUserError
from tests.attacks.helpers import NoisyLinearDefense, batch
from threat_models import AttackSpec, ThreatModel


def _mlp(seed: int = 0, classes: int = 5) -> nn.Module:
    """A small nonlinear classifier: DeepFool needs several steps on it (a linear one takes one)."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, classes)).double().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _batch(net, n):
    g = torch.Generator().manual_seed(1)
    x = (0.2 + 0.6 * torch.rand(n, 1, 8, 8, generator=g)).double()
    with torch.no_grad():
        return x, net(x).argmax(1)


class Counting(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("loss", ["logits", "crossentropy"])
def test_same_adversarials_as_foolbox_with_one_forward_per_step(norm, loss):
    net = _mlp()
    x, y = _batch(net, 12)
    made = df.make(norm, {"steps": 30, "candidates": 4, "overshoot": 0.02, "loss": loss})
    counted = Counting(net)
    ours = df.deepfool(made, counted, x, y)
    fmodel = fb.PyTorchModel(net, bounds=(0, 1))
    ref, _, _ = made(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=0)
    flipped = net(ours).argmax(1) != y
    assert flipped.all()  # a smooth MLP: DeepFool succeeds everywhere
    # one forward for the candidate classes + one per step (foolbox: candidates - 1 per step)
    steps_taken = counted.calls - 1
    assert steps_taken >= 2  # a real multi-step run, not a one-step linear case
    assert steps_taken <= made.steps


def test_unflippable_inputs_stop_at_the_step_budget_and_stay_clipped():
    net = _mlp(classes=3)
    x, y = _batch(net, 6)
    made = df.make("l2", {"steps": 3, "candidates": 3, "overshoot": 0.0})
    out = df.deepfool(made, net, x, y)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_randomized_defense_through_the_harness_runs_one_eot_forward_per_step():
    d = NoisyLinearDefense().eval()
    x, y = batch(d.net, n=8)
    calls = []
    orig = d.predict_draws
    d.predict_draws = lambda xx, **kw: (calls.append(len(xx)), orig(xx, **kw))[1]
    spec = AttackSpec("deepfool", params=(("steps", 10),), eot=3)
    cands = run_attack(EOTModel(d, draws=3), x, y, ThreatModel(norm="l2", eps=5.0), spec, seed=0)
    assert cands[0].shape == x.shape
    assert len(calls) <= 1 + 10
    assert calls[0] == 8 and all(c <= 8 for c in calls)  # later steps only query inputs not yet flipped
    with torch.no_grad():
        assert (d.net(cands[0]).argmax(1) != y).float().mean() >= 0.75


def test_bad_parameters_are_user_errors():
    with pytest.raises(BenchUserError, match="unknown parameter"):
        df.make("l2", {"stpes": 3})
    with pytest.raises(BenchUserError, match="loss"):
        df.make("l2", {"loss": "hinge"})
    made = df.make("l2", {"candidates": 1})
    net = _mlp()
    x, y = _batch(net, 2)
    with pytest.raises(BenchUserError, match="2 candidate"):
        df.deepfool(made, net, x, y)
