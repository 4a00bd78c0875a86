"""score_fooling: fooled / abstained / other, abstaining counted as the defense's success."""

import pytest
import torch

from defenses.base import Defense
from harness.attacks.neat import FoolingSet
from harness.experiments.fooling import score_fooling


class HalfAbstainer(Defense):
    """Predicts the class stored in pixel (0, 0, 0) * 10; abstains on every image whose pixel (0, 0, 1) > 0.5."""

    name = "half-abstainer"
    trainable = False

    def __init__(self):
        super().__init__(num_classes=3, input_shape=(1, 4, 4), dataset="fmnist")

    def predict(self, x, *, generator=None):
        cls = (x[:, 0, 0, 0] * 10).round().long()
        return torch.nn.functional.one_hot(cls, 3).float() * 5

    def abstain(self, x, scores):
        return x[:, 0, 0, 1] > 0.5


def _set(preds, abstains, targets, reached):
    n = len(preds)
    x = torch.zeros(n, 1, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(preds, dtype=torch.float32) / 10
    x[:, 0, 0, 1] = torch.tensor(abstains, dtype=torch.float32)
    return FoolingSet(x, torch.tensor(targets), torch.full((n,), 0.95, dtype=torch.float64), torch.ones(n, dtype=torch.long), torch.tensor(reached), 0.9)


def test_counts_and_rates():
    # image:      0  1  2  3  4  5  6  7
    preds = [0, 1, 2, 0, 1, 2, 0, 0]
    abstains = [1, 0, 1, 0, 1, 0, 1, 0]  # half of the images
    targets = [0, 1, 0, 0, 2, 1, 2, 2]
    reached = [True] * 7 + [False]  # image 7 did not reach the threshold: not an attack
    s = score_fooling(HalfAbstainer(), _set(preds, abstains, targets, reached), generator=None)
    # scored 0..6: abstained 0,2,4,6; fooled 1 (1==1), 3 (0==0); other 5 (2!=1)
    assert (s["n"], s["fooled"], s["abstained"], s["other"]) == (7, 2, 4, 1)
    assert s["fooled_rate"] == pytest.approx(2 / 7)
    assert s["abstained_rate"] == s["rejection_rate"] == pytest.approx(4 / 7)
    assert s["other_rate"] == pytest.approx(1 / 7)
    assert [r["outcome"] for r in s["records"]] == ["abstained", "fooled", "abstained", "fooled", "abstained", "other", "abstained"]
    assert [r["index"] for r in s["records"]] == list(range(7))

    s_all = score_fooling(HalfAbstainer(), _set(preds, abstains, targets, reached), generator=None, only_reached=False)
    assert (s_all["n"], s_all["fooled"], s_all["abstained"], s_all["other"]) == (8, 2, 4, 2)


def test_nothing_reached_gives_no_rates():
    s = score_fooling(HalfAbstainer(), _set([0], [0], [0], [False]), generator=None)
    assert s["n"] == 0 and s["fooled_rate"] is None and s["rejection_rate"] is None and s["records"] == []
