import torch

from defenses.base import bpda_identity, straight_through


def test_straight_through_values_of_real_gradient_of_surrogate():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    real = torch.tensor([10.0, 20.0])  # computed without a graph
    out = straight_through(real, 3 * x)
    assert torch.equal(out, real)
    out.sum().backward()
    assert torch.equal(x.grad, torch.tensor([3.0, 3.0]))


def test_bpda_identity_thresholds_forward_and_passes_gradient():
    x = torch.tensor([0.2, 0.7], requires_grad=True)
    y = bpda_identity(lambda t: (t > 0.5).float(), x)
    assert torch.equal(y, torch.tensor([0.0, 1.0]))
    (y * torch.tensor([2.0, 5.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([2.0, 5.0]))  # identity-passed, not zero
