"""Gradient-masking sanity checks: a zero-gradient defense, hidden randomness, gradient-free wins."""

import torch
from torch import nn

from defenses.base import Defense, bpda_identity
from harness.engine.sanity import group_accuracies, model_checks, outcome_checks, verdict
from tests.stats.make_results import bools, fake_result


class _Linear(Defense):
    name = "t-linear"
    trainable = False

    def __init__(self, **kw):
        super().__init__(num_classes=3, input_shape=(1, 4, 4), dataset="fmnist", **kw)
        self.fc = nn.Linear(16, 3)

    def predict(self, x, *, generator=None):
        return self.fc(x.flatten(1))


class _ZeroGrad(_Linear):
    """Rounds its input with a straight zero gradient: the classic masked-gradient layer."""

    name = "t-zero-grad"

    def predict(self, x, *, generator=None):
        return self.fc((x * 255).round().div(255).flatten(1))  # round() has zero gradient


class _SecretlyRandom(_Linear):
    name = "t-secret"

    def predict(self, x, *, generator=None):
        return self.fc(x.flatten(1)) + torch.randn(x.shape[0], 3, generator=generator)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


def test_zero_gradient_layer_triggers_warning():
    x, y = _data()
    assert model_checks(_Linear().eval(), x, y, draws=1) == []
    w = model_checks(_ZeroGrad().eval(), x, y, draws=1)
    assert any("zero attack gradient on 8/8" in m for m in w)


def test_bpda_fixes_the_zero_gradient():
    class _Fixed(_Linear):
        name = "t-fixed"

        def predict(self, x, *, generator=None):
            return self.fc(bpda_identity(lambda t: (t * 255).round() / 255, x).flatten(1))

    x, y = _data()
    assert model_checks(_Fixed().eval(), x, y, draws=1) == []


def test_hidden_randomness_is_flagged():
    x, y = _data()
    assert any("randomized=True" in m for m in model_checks(_SecretlyRandom().eval(), x, y, draws=1))


def test_gradient_free_beating_gradient_attacks_is_flagged():
    n = 100
    masked = fake_result("d", "fmnist", "linf", bools(90, n), {"pgd": bools(80, n), "square": bools(40, n)})
    fine = fake_result("d", "fmnist", "linf", bools(90, n), {"pgd": bools(10, n), "square": bools(85, n)})
    assert any("(40.0%) beat the gradient attacks (80.0%" in m for m in outcome_checks(masked))
    assert outcome_checks(fine) == []
    assert not verdict(masked).reliable and verdict(masked).reasons == ("Square/gradient-free beat gradient attacks",)
    assert verdict(fine).reliable and verdict(fine).checked
    # within the Wilson interval of the gradient attacks' accuracy: not flagged
    close = fake_result("d", "fmnist", "linf", bools(90, n), {"pgd": bools(30, n), "square": bools(24, n)})
    assert verdict(close).reliable


def test_only_gradient_attacks_and_noise_is_unchecked():
    n = 100
    data = fake_result("d", "fmnist", "linf", bools(90, n), {"pgd": bools(10, n), "noise": bools(85, n)})
    v = verdict(data)
    assert v.reliable and not v.checked and "unchecked" in v.label
    assert any("no gradient-free or transfer attack ran" in m for m in outcome_checks(data))


def test_autoattack_square_finds_count_as_gradient_free():
    n = 100
    data = fake_result("d", "fmnist", "linf", bools(90, n), {"pgd": bools(88, n), "autoattack": bools(45, n)})
    data["manifest"]["attacks"]["autoattack"]["budget"] = "AutoAttack standard: APGD-CE + APGD-T + FAB-T 20 iterations + Square 500 queries"
    for r in data["records"]:
        if r["clean_correct"] and not r["attacks"]["autoattack"]["correct"]:
            r["attacks"]["autoattack"]["by"] = "square"
    assert group_accuracies(data)["gradient"][0] == 88 and group_accuracies(data)["gradient-free"][0] == 45
    assert verdict(data).reasons == ("Square/gradient-free beat gradient attacks",)
    for r in data["records"]:  # the same outcomes found by APGD: nothing wrong with the gradient
        r["attacks"]["autoattack"].pop("by", None)
    assert verdict(data).reliable


def test_accuracy_rising_with_eps_is_flagged():
    n = 100
    data = fake_result("d", "fmnist", "linf", bools(90, n), {"fgm@0.1": bools(50, n), "fgm@0.2": bools(70, n)})
    data["manifest"]["attacks"]["fgm@0.1"]["eps"] = 0.1
    data["manifest"]["attacks"]["fgm@0.2"]["eps"] = 0.2
    assert any("accuracy rises" in m for m in outcome_checks(data))


def test_randomness_that_flips_verdicts_is_reported_for_randomized_defenses():
    class _Noisy(_SecretlyRandom):
        name = "t-noisy"
        randomized = True

    class _Calm(_Linear):
        name = "t-calm"
        randomized = True  # declared randomized, scores constant: nothing to report

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 4, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    noisy = [m for m in model_checks(_Noisy().eval(), x, y, draws=1) if "disagree" in m]
    assert len(noisy) == 1 and "of the same 64 clean inputs" in noisy[0]
    assert not [m for m in model_checks(_Calm().eval(), x, y, draws=1) if "disagree" in m]
    # averaging more draws shrinks the flips (the estimator the verification uses)
    def flips(draws):
        m = [w for w in model_checks(_Noisy().eval(), x, y, draws=draws) if "disagree" in w]
        return int(m[0].split("disagree on ")[1].split(" ")[0]) if m else 0

    assert flips(50) < flips(1)


def test_transfer_beating_white_box_gradient_attacks_is_flagged():
    n = 100
    masked = fake_result("d", "fmnist", "linf", bools(90, n), {"autoattack": bools(27, n), "transfer": bools(10, n)})
    fine = fake_result("d", "fmnist", "linf", bools(90, n), {"autoattack": bools(27, n), "transfer": bools(25, n)})
    assert any("transfer attacks from a source model (10.0%) beat the gradient attacks (27.0%" in m for m in outcome_checks(masked))
    assert outcome_checks(fine) == []
    assert verdict(masked).reasons == ("transfer beat gradient attacks",)


def test_failed_gradient_check_or_undeclared_randomness_is_unreliable():
    n = 100
    data = fake_result("d", "fmnist", "linf", bools(90, n), {"pgd": bools(10, n), "transfer": bools(12, n)})
    assert verdict(data).reliable
    data["manifest"]["gradient_check"] = {"verdict": "surrogate", "declared": {"bpda_identity": 1}}
    assert verdict(data).reliable
    data["manifest"]["gradient_check"] = {"verdict": "inconsistent", "declared": {}}
    assert verdict(data).reasons == ("gradient check failed",)
    data["manifest"]["gradient_check"] = {"verdict": "consistent"}
    data["manifest"]["warnings"] = model_checks(_SecretlyRandom().eval(), *_data(), draws=1)
    assert verdict(data).reasons == ("undeclared randomness",)
