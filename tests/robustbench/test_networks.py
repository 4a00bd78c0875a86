"""State-dict keys and shapes of our WideResNet / PreAct ResNet-18 against RobustBench's definitions.

The expected lists are derived by hand from RobustBench's ``robustbench/model_zoo/architectures/
wide_resnet.py`` (TRADES naming: ``conv1``; ``block{1,2,3}.layer.{i}`` with ``bn1``, ``conv1``, ``bn2``,
``conv2`` and, where the width changes, ``convShortcut``; ``bn1``; ``fc``) and ``resnet.py``
(``PreActResNet(PreActBlock, [2, 2, 2, 2])``: ``conv1``; ``layer{1..4}.{0,1}`` with ``bn1``,
``conv1``, ``bn2``, ``conv2`` and ``shortcut.0`` where the width or stride changes; ``linear``), plus
the ``mu`` / ``sigma`` buffers of ``Wong2020FastNet``. They do not call our code.
"""

from __future__ import annotations

import pytest
import torch

from defenses.networks.preact_resnet import PreActResNet18
from defenses.networks.wide_resnet import WideResNet
from defenses.robustbench import ENTRIES


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,), f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def robustbench_wrn_keys(depth: int, k: int, *, sub_block1: bool = False, classes: int = 10) -> dict[str, tuple[int, ...]]:
    n = (depth - 4) // 6
    w = [16, 16 * k, 32 * k, 64 * k]
    keys = {"conv1.weight": (16, 3, 3, 3)}
    groups = [("block1", w[0], w[1]), ("block2", w[1], w[2]), ("block3", w[2], w[3])]
    if sub_block1:
        groups.insert(1, ("sub_block1", w[0], w[1]))
    for name, cin, cout in groups:
        for i in range(n):
            a = cin if i == 0 else cout
            p = f"{name}.layer.{i}"
            keys.update(_bn(f"{p}.bn1", a))
            keys[f"{p}.conv1.weight"] = (cout, a, 3, 3)
            keys.update(_bn(f"{p}.bn2", cout))
            keys[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            if a != cout:
                keys[f"{p}.convShortcut.weight"] = (cout, a, 1, 1)
    keys.update(_bn("bn1", w[3]))
    keys["fc.weight"] = (classes, w[3])
    keys["fc.bias"] = (classes,)
    return keys


def robustbench_preact18_keys(*, normalized: bool = False, classes: int = 10) -> dict[str, tuple[int, ...]]:
    keys = {"conv1.weight": (64, 3, 3, 3)}
    cin = 64
    for s, planes in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            stride = 2 if (s > 1 and j == 0) else 1
            p = f"layer{s}.{j}"
            keys.update(_bn(f"{p}.bn1", cin))
            keys[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            keys.update(_bn(f"{p}.bn2", planes))
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            if stride != 1 or cin != planes:
                keys[f"{p}.shortcut.0.weight"] = (planes, cin, 1, 1)
            cin = planes
    keys["linear.weight"] = (classes, 512)
    keys["linear.bias"] = (classes,)
    if normalized:
        keys["mu"] = (1, 3, 1, 1)
        keys["sigma"] = (1, 3, 1, 1)
    return keys


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_wrn_28_10_matches_robustbench_standard():
    expected = robustbench_wrn_keys(28, 10)
    net = ENTRIES["Standard"].build(10)
    assert isinstance(net, WideResNet) and (net.depth, net.widen_factor) == (28, 10)
    assert _shapes(net) == expected
    assert len(expected) == 155 and expected["block3.layer.3.conv2.weight"] == (640, 640, 3, 3)
    assert sum(p.numel() for p in net.parameters()) == 36_479_194  # WRN-28-10, 36.5 M (Zagoruyko & Komodakis Table 3)


def test_wrn_28_10_sub_block1_matches_carmon2019():
    assert _shapes(ENTRIES["Carmon2019Unlabeled"].build(10)) == robustbench_wrn_keys(28, 10, sub_block1=True)


def test_wrn_34_10():
    assert _shapes(WideResNet(34, 10)) == robustbench_wrn_keys(34, 10)
    assert _shapes(ENTRIES["Zhang2019Theoretically"].build(10)) == robustbench_wrn_keys(34, 10, sub_block1=True)


def test_preact_resnet18_matches_robustbench_wong2020fast():
    assert _shapes(PreActResNet18()) == robustbench_preact18_keys()
    net = ENTRIES["Wong2020Fast"].build(10)
    assert _shapes(net) == robustbench_preact18_keys(normalized=True)
    assert torch.allclose(net.mu.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert sum(p.numel() for p in net.parameters()) == 11_171_146


@pytest.mark.parametrize("net", [WideResNet(10, 1), WideResNet(16, 2, mean=(0.5,) * 3, std=(0.25,) * 3), PreActResNet18(widths=(8, 8, 16, 16)),
                                 PreActResNet18(widths=(8, 8, 16, 16), shortcut_from="preact", final_bn=True)])
def test_small_networks_run_and_differentiate(net):
    net.eval()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_sub_block1_is_unused_in_forward():
    torch.manual_seed(0)
    a = WideResNet(10, 1, sub_block1=True).eval()
    x = torch.rand(2, 3, 32, 32)
    before = a(x)
    with torch.no_grad():
        for p in a.sub_block1.parameters():
            p.add_(1.0)
    assert torch.equal(before, a(x))


def test_bad_depth_is_a_value_error():
    with pytest.raises(ValueError, match="6N \\+ 4"):
        WideResNet(27, 10)
