"""The CPU execution path of the packed Table 2.1 modules (copy by copy, channels-last) computes the
same function as the packed (grouped) program: outputs, gradients, BatchNorm statistics, random draws."""

import copy

import pytest
import torch

from defenses.networks import layout_for
from defenses.networks.grouped import GroupedDecoder, GroupedEncoder, per_group_default
from harness.engine.models import build_defense

LAYOUT = layout_for("fmnist")


def _run(module, x, seed):
    torch.manual_seed(seed)  # dropout
    x = x.clone().requires_grad_(True)
    out = module(x)
    out = torch.cat(out, -1) if isinstance(out, tuple) else out
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad, {k: p.grad.clone() for k, p in module.named_parameters()}, module.state_dict()


@pytest.mark.parametrize("kind, groups", [("decoder", 3), ("encoder", 3), ("encoder", 1)])
def test_per_group_path_equals_packed_path_in_training(kind, groups):
    torch.manual_seed(0)
    if kind == "decoder":
        packed, x = GroupedDecoder(LAYOUT, (1, 28, 28), groups), torch.randn(6, groups, LAYOUT.latent)
    else:
        packed, x = GroupedEncoder((1, 28, 28), LAYOUT, groups), torch.rand(6, groups, 1, 28, 28)
        packed.channels_last = False
    split = copy.deepcopy(packed)
    packed.per_group, split.per_group = False, True
    split.channels_last = True
    o1, gx1, gp1, s1 = _run(packed.train(), x, seed=5)
    o2, gx2, gp2, s2 = _run(split.train(), x, seed=5)
    torch.testing.assert_close(o2, o1, rtol=1e-4, atol=1e-5)  # also: the same dropout mask
    torch.testing.assert_close(gx2, gx1, rtol=1e-3, atol=1e-4 * gx1.abs().max().item())
    for k in gp1:
        if not (k.endswith("bias") and ("net." in k or "convs." in k)):  # biases before BatchNorm: exact gradient 0
            torch.testing.assert_close(gp2[k], gp1[k], rtol=1e-3, atol=1e-3 * gp1[k].abs().max().item(), msg=k)
    for k in s1:  # running statistics updated in place through the views, num_batches_tracked once
        torch.testing.assert_close(s2[k], s1[k], rtol=1e-4, atol=1e-6, msg=k)
    packed.eval(), split.eval()
    with torch.no_grad():
        e1, e2 = packed(x), split(x)
    e1, e2 = (torch.cat(e, -1) if isinstance(e, tuple) else e for e in (e1, e2))
    torch.testing.assert_close(e2, e1, rtol=1e-4, atol=1e-5)


def test_path_is_chosen_by_device():
    assert per_group_default(torch.device("cpu"), 10)
    assert not per_group_default(torch.device("cpu"), 1)
    assert not per_group_default(torch.device("cuda"), 10)


def test_eabs_train_step_is_the_same_on_both_paths():
    """One Algorithm 1 step from the same weights and draws: loss and gradients agree."""
    torch.manual_seed(0)
    a = build_defense("eabs", "fmnist").train()
    b = copy.deepcopy(a)
    a.decoder.per_group, a.encoder.channels_last = False, False
    b.decoder.per_group, b.encoder.channels_last = True, True
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 10
    losses = []
    for m in (a, b):
        opt = torch.optim.Adam(list(m.encoder.parameters()) + list(m.decoder.parameters()), lr=1e-3)
        dopt = torch.optim.Adam(m.discriminator.parameters(), lr=1e-3)
        torch.manual_seed(3)
        losses.append(m.train_step(x, y, opt=opt, dopt=dopt, generator=torch.Generator().manual_seed(4), beta=1.0, gamma=10.0, sigma=0.2))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)
    ga = {k: p.grad for k, p in a.named_parameters()}
    gb = {k: p.grad for k, p in b.named_parameters()}
    for k in ga:
        if not (k.endswith("bias") and ("net." in k or "convs." in k)):  # biases before BatchNorm: exact gradient 0
            torch.testing.assert_close(gb[k], ga[k], rtol=1e-3, atol=1e-3 * ga[k].abs().max().item(), msg=k)
