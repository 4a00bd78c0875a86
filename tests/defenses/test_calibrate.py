"""`bench calibrate`: reject threshold of a generative classifier set on the validation split."""

import pytest
import torch

from harness.engine.calibrate import best_class_loss, calibrate
from harness.errors import BenchUserError
from harness.engine.models import load_defense, train_defense
from tests.conftest import run_bench


def _smoke_budget_loads(monkeypatch):
    """calibrate() loads the defense with its full inference budget; shrink it for a fast test."""
    import harness.engine.models

    def load(*args, **kwargs):
        model, card = load_defense(*args, **kwargs)
        model.use_smoke_test_budget()
        return model, card

    monkeypatch.setattr(harness.engine.models, "load_defense", load)


def test_calibrate_writes_threshold_that_load_applies(bench_env, monkeypatch):
    from harness import datasets

    train_defense("abs", "fmnist", device=torch.device("cpu"), epochs=1, progress=False, announce=lambda *_: None, config_overrides={"batch_size": 100})
    _smoke_budget_loads(monkeypatch)
    out = calibrate("abs", "fmnist", quantile=0.75, n=40, progress=False, announce=lambda *_: None, test_n=30, batch_size=16)
    cal = out["reject_calibration"]
    assert cal["n"] == 40 and cal["quantile"] == 0.75 and 0.0 <= cal["val_acc_inference"] <= 1.0
    # the inference it ran with is recorded (the smoke-test budget here), the threshold it sets is not
    assert cal["defense_config"]["inference"]["steps"] == 3 and "reject_threshold" not in cal["defense_config"]
    # about a quarter of the calibration images lie above the 0.75 quantile
    assert 0.15 <= cal["val_rejected"] <= 0.3

    model, card = load_defense("abs", "fmnist", device=torch.device("cpu"), train_if_missing=False, announce=lambda *_: None)
    model.use_smoke_test_budget()
    assert card["reject_threshold"] == out["reject_threshold"] == model.reject_threshold
    assert model.info().extra["reject_threshold"] == out["reject_threshold"]
    # abstain is exactly "best class loss above the threshold", on the same images calibrate used
    from harness.engine.runner import sample_ids

    val = datasets.load("fmnist", "val")
    x = val.x[sample_ids(len(val.x), 40, 0)]
    with torch.no_grad():
        scores = model.predict(x)
    assert torch.equal(model.abstain(x, scores), best_class_loss(scores) > out["reject_threshold"])
    assert float(model.abstain(x, scores).float().mean()) == pytest.approx(cal["val_rejected"], abs=1e-6)
    # the test-set figure is bench run's clean scoring of the first 30 test images, threshold applied
    from harness.engine.verify import score

    test = datasets.load("fmnist", "test")
    ok, abst = score(model, test.x[:30], test.y[:30], generator=None)
    t = card["test_clean_accuracy"]
    assert t["n"] == 30 and t["acc"] == round(float(ok.float().mean()), 4) and t["abstained"] == round(float(abst.float().mean()), 4)
    with pytest.raises(BenchUserError, match="exceeds"):
        calibrate("abs", "fmnist", n=10, progress=False, announce=lambda *_: None, test_n=10**6)


def test_calibrate_user_errors(bench_env):
    with pytest.raises(BenchUserError, match="no reject option"):
        calibrate("cnn", "fmnist", n=10, progress=False, announce=lambda *_: None)
    with pytest.raises(BenchUserError, match="no checkpoint"):
        calibrate("d-abs", "fmnist", n=10, progress=False, announce=lambda *_: None)
    r = run_bench("calibrate", "--defense", "cnn", "--dataset", "fmnist", "--quantile", "1.5")
    assert r.returncode == 2 and "quantile" in r.stderr and "Traceback" not in r.stderr
