"""The Defense contract for the example plugin (``examples/plugin-defense``, not installed in the test
environment): the same checks as for the registry's defenses, plus the report's loss and the shipped weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.contract import test_defense_contract as contract

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plugin():
    sys.path.insert(0, str(ROOT / "examples" / "plugin-defense"))
    try:
        import bench_linear_svm
    finally:
        sys.path.pop(0)
    return bench_linear_svm


@pytest.fixture
def defense(plugin):
    d = plugin.LinearSVM(num_classes=10, input_shape=(1, 28, 28), dataset="fmnist")
    d.use_smoke_test_budget()
    return d.eval()


@pytest.mark.parametrize("check", ["test_predict_shape_and_finite", "test_declared_gradient_is_finite_and_nonzero",
                                   "test_determinism_matches_declaration", "test_abstain_and_metadata", "test_hooks_are_instance_methods",
                                   "test_certified_radius_is_none_or_a_nonnegative_bound", "test_init_checkpoint_is_none_or_a_registered_checkpoint",
                                   "test_rejection_is_declared", "test_wrapper_declarations"])
def test_contract(defense, check):
    getattr(contract, check)(defense)


def test_hinge_loss_is_the_reports(plugin):
    """L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + Delta) (Vuong, "Multiclass SVM or Hinge loss"), mean over i."""
    s = torch.tensor([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0]])
    y = torch.tensor([0, 1])
    # cs231n's worked example: row 0 -> max(0, 5.1 - 3.2 + 1) + max(0, -1.7 - 3.2 + 1) = 2.9; row 1 -> 0
    assert plugin.hinge_loss(s, y, delta=1.0).item() == pytest.approx((2.9 + 0.0) / 2)


def test_shipped_checkpoint_loads(plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CHECKPOINTS", str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from harness.store import checkpoints

    monkeypatch.setattr(checkpoints, "shipped_dir", lambda: tmp_path / "no-shipped")
    d = plugin.LinearSVM(num_classes=10, input_shape=(1, 28, 28), dataset="fmnist")
    card = d.load_external_weights(norm="linf")
    assert card["path"].endswith("bench_linear_svm/checkpoints/linear-svm-fmnist.safetensors")
    assert card["config"]["delta"] == 1.0 and card["config"]["reg_report"] == 2.5e-4
    assert d.mean.abs().sum() > 0  # the mean image is part of the weights
    from harness.errors import CheckpointError

    with pytest.raises(CheckpointError, match="bench train --defense linear-svm --dataset svhn"):
        plugin.LinearSVM(num_classes=10, input_shape=(3, 32, 32), dataset="svhn").load_external_weights(norm="linf")
