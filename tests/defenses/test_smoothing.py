"""Variational randomized smoothing (thesis chapter 4, Algorithm 5) over a base defense."""

import pytest
import torch
import torch.nn.functional as F

from defenses.base import Defense
from defenses.registry import list_defenses
from defenses.smoothing import smoothed
from harness.errors import BenchUserError
from harness.engine.models import build_defense


class Counting(Defense):
    """A linear base that records the number of rows of every ``predict`` call."""

    name = "test-counting"
    trainable = False

    def __init__(self, *, num_classes, input_shape, dataset):
        super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(num_classes, 64, generator=g), requires_grad=False)
        self.calls: list[int] = []

    def predict(self, x, *, generator=None):
        self.calls.append(x.shape[0])
        return x.flatten(1) @ self.w.T


VSmoothCounting = smoothed(Counting)


def _d(**kw):
    return VSmoothCounting(num_classes=4, input_shape=(1, 8, 8), dataset="fmnist", **kw).eval()


X = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def gen(s):
    return torch.Generator().manual_seed(s)


def test_registered_and_configured():
    names = list_defenses()
    assert {"vsmooth-cnn", "vsmooth-cnn-gauss"} <= set(names)
    d = build_defense("vsmooth-cnn-gauss", "fmnist", steps=2, norm="l2")
    assert d.randomized and d.base.name == "cnn-gauss" and d.checkpoint_name() == "cnn-gauss"
    info = d.info().extra
    assert info["radius"] == 1.5 and info["sigma"] == 0.05 and info["steps"] == 2 and info["base"] == "cnn-gauss"
    assert build_defense("vsmooth-cnn", "fmnist").radius == pytest.approx(0.1)  # FMNIST L∞ eps
    with pytest.raises(BenchUserError, match="norm"):
        build_defense("vsmooth-cnn", "fmnist", norm="l1")
    with pytest.raises(BenchUserError, match="does not take"):
        build_defense("vsmooth-cnn", "fmnist", bogus=1)


def test_batched_over_classes_one_base_call_per_step():
    d = _d(steps=2)
    s = d.predict(X, generator=gen(0))
    assert s.shape == (3, 4)
    assert d.base.calls == [12, 12, 12]  # 2 optimisation steps + the noise draw, each on B*K rows
    d.base.calls.clear()
    assert d.predict_draws(X, draws=5, generator=gen(0)).shape == (5, 3, 4)
    assert d.base.calls == [12, 12, 60]  # mu* shared by the draws


def test_randomness_only_from_the_generator():
    d = _d()
    a, b = d.predict(X, generator=gen(7)), d.predict(X, generator=gen(7))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, d.predict(X, generator=gen(8)))
    torch.testing.assert_close(d.predict_draws(X, draws=1, generator=gen(3))[0], d.predict(X, generator=gen(3)))
    state = torch.random.get_rng_state()
    d.predict(X, generator=gen(1))
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_noise_means_stay_in_the_ball_and_raise_the_target_class():
    for norm, radius in (("linf", 0.1), ("l2", 0.5)):
        d = _d(norm=norm, radius=radius, random_start=False)
        mu = d.noise_means(X, generator=gen(0))
        xr = X.repeat_interleave(4, 0)
        dist = mu.flatten(1).abs().amax(1) if norm == "linf" else mu.flatten(1).norm(dim=1)
        assert (dist <= radius + 1e-5).all() and ((xr + mu) >= 0).all() and ((xr + mu) <= 1).all()
        target = torch.arange(4).repeat(3)
        lp = lambda z: F.log_softmax(d.base.predict(z), 1).gather(1, target[:, None])  # noqa: E731
        assert (lp(xr + mu) >= lp(xr) - 1e-5).all()  # targeted ascent towards each class


def test_gradient_flows_through_the_noise_draw_with_mu_fixed():
    d = _d(steps=1)
    x = X.clone().requires_grad_(True)
    g = gen(5)
    s = d.predict(x, generator=g)
    s[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the same computation by hand with mu* and the noise as constants
    g2 = gen(5)
    mu = d.noise_means(X, generator=g2)
    noise = torch.randn((12, 1, 8, 8), generator=g2)
    x2 = X.clone().requires_grad_(True)
    z = x2.repeat_interleave(4, 0) + mu + d.sigma * noise
    target = torch.arange(4).repeat(3)
    manual = F.log_softmax(d.base.predict(z), 1).gather(1, target[:, None]).view(3, 4)
    torch.testing.assert_close(manual.detach(), s.detach())
    manual[:, 1].sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_real_cnn_base_under_no_grad_and_eot():
    from harness.engine.eot import EOTModel

    d = build_defense("vsmooth-cnn", "fmnist").eval()
    x = torch.rand(2, 1, 28, 28, generator=gen(0))
    with torch.no_grad():  # the verifier scores under no_grad: mu* optimisation still needs a gradient
        s = d.predict(x, generator=gen(0))
    assert s.shape == (2, 10) and torch.isfinite(s).all() and (s <= 0).all()
    m = EOTModel(d, draws=3, generator=gen(1))
    xg = x.clone().requires_grad_(True)
    m(xg)[:, 0].sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_invalid_options():
    for bad in ({"sigma": 0}, {"radius": -1.0}, {"steps": -1}, {"rel_stepsize": 0.0}):
        with pytest.raises(BenchUserError):
            _d(**bad)
    with pytest.raises(ValueError):
        smoothed(int)


def test_execution_options_share_the_result_file():
    from harness.engine.models import variant_key

    assert variant_key("eabs", {"precision": "bf16"}) == "eabs"
    assert variant_key("eabs", {"precision": "bf16", "steps": 20}) == "eabs-steps20"
    assert variant_key("cnn", {"arch": "resnet18"}) == "cnn-resnet18"


def test_mu_ball_follows_the_evaluation_threat_unless_set_as_option():
    d = build_defense("vsmooth-cnn", "fmnist")
    d.set_threat("l2", 0.7)
    assert (d.norm, d.radius) == ("l2", 0.7) and d.info().extra["radius"] == 0.7
    d.set_threat("linf", 0.03)
    assert (d.norm, d.radius) == ("linf", 0.03)
    fixed = build_defense("vsmooth-cnn", "fmnist", radius=0.05)  # radius given: the norm still follows
    fixed.set_threat("linf", 0.2)
    assert (fixed.norm, fixed.radius) == ("linf", 0.05)
    pinned = build_defense("vsmooth-cnn", "fmnist", norm="linf")  # norm given: radius follows only that norm's eps
    pinned.set_threat("l2", 1.5)
    assert (pinned.norm, pinned.radius) == ("linf", 0.1)
    pinned.set_threat("linf", 0.05)
    assert pinned.radius == 0.05


def test_run_passes_threat_and_options_to_the_defense(bench_env):
    """`bench run --norm l2 --eps E --option steps=2`: the manifest records the ball the defense used."""
    import json

    from tests.conftest import run_bench

    r = run_bench("train", "--defense", "cnn-gauss", "--dataset", "fmnist", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    res = bench_env / "res"
    r = run_bench("run", "--defense", "vsmooth-cnn-gauss", "--norm", "l2", "--eps", "0.5", "--n", "8", "--suite", "smoke",
                  "--attacks", "pgd", "--option", "steps=2", "--results-dir", str(res), "--quiet")
    assert r.returncode == 0, r.stderr
    data = json.loads((res / "fmnist" / "l2" / "vsmooth-cnn-gauss-steps2.json").read_text())
    m = data["manifest"]
    assert m["defense_options"] == {"steps": 2}
    # randomized: every attacked sample's verdict carries its second, independent scoring (harness/engine/verify.py)
    attacked = [r["attacks"]["pgd"] for r in data["records"] if r["clean_correct"]]
    assert attacked and all(isinstance(o["recheck_flip"], bool) for o in attacked)
    assert all("recheck_flip" not in r["attacks"]["pgd"] for r in data["records"] if not r["clean_correct"])
    assert (m["defense_config"]["norm"], m["defense_config"]["radius"], m["defense_config"]["steps"]) == ("l2", 0.5, 2)
    # resuming a file computed with other (execution) options is refused instead of mixing them
    f = res / "fmnist" / "l2" / "vsmooth-cnn-gauss-steps2.json"
    data = json.loads(f.read_text())
    data["manifest"]["defense_options"] = {"steps": 2, "precision": "bf16"}
    f.write_text(json.dumps(data))
    r = run_bench("run", "--defense", "vsmooth-cnn-gauss", "--norm", "l2", "--eps", "0.5", "--n", "8", "--suite", "smoke",
                  "--attacks", "pgd", "--option", "steps=2", "--results-dir", str(res), "--quiet")
    assert r.returncode == 2 and "defense options" in r.stderr
    r = run_bench("run", "--defense", "vsmooth-cnn-gauss", "--norm", "l2", "--option", "bogus", "--results-dir", str(res))
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr and "Traceback" not in r.stderr
    r = run_bench("run", "--defense", "cnn", "--norm", "l2", "--option", "steps=2", "--results-dir", str(res))
    assert r.returncode == 2 and "does not take option(s) steps" in r.stderr
    # a wrapper validates against its declared options: the base's (binary-cnn: arch), plus its own (vsmooth-*)
    r = run_bench("run", "--defense", "binary-cnn", "--norm", "l2", "--option", "steps=2", "--results-dir", str(res))
    assert r.returncode == 2 and "defense 'binary-cnn' does not take option(s) steps (its options: arch); drop it" in r.stderr
