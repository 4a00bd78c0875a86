"""ABS / E-ABS: grouped modules match separate ones, envelope gradient (eq. 2.9), bound (eq. 2.7), training."""

from dataclasses import asdict

import pytest
import torch
from torch import nn

from defenses.generative import InferenceConfig
from defenses.networks import Decoder, layout_for
from defenses.networks.grouped import GroupedDecoder, fold_batchnorm
from harness.engine.models import build_defense


def _small(name):
    m = build_defense(name, "fmnist")
    m.inference = InferenceConfig(steps=4, candidates=50)
    return m


def _randomize_bn(module):
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)


def test_grouped_decoder_equals_separate_decoders():
    layout = layout_for("fmnist")
    grouped = GroupedDecoder(layout, (1, 28, 28), 3)
    _randomize_bn(grouped)
    grouped.eval()
    z = torch.randn(4, 3, layout.latent)
    out = grouped(z)
    for g in range(3):
        dec = Decoder(layout, (1, 28, 28)).eval()
        dec.fc[0].weight.data.copy_(grouped.fc.weight[g].T)
        dec.fc[0].bias.data.copy_(grouped.fc.bias[g])
        src = [m for m in grouped.net if isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d))]
        dst = [m for m in dec.net if isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d))]
        for s, t in zip(src, dst):
            if isinstance(s, nn.ConvTranspose2d):
                n_in = s.in_channels // 3
                t.weight.data.copy_(s.weight[g * n_in : (g + 1) * n_in])
                t.bias.data.copy_(s.bias[g * t.out_channels : (g + 1) * t.out_channels])
            else:
                sl = slice(g * t.num_features, (g + 1) * t.num_features)
                t.weight.data.copy_(s.weight[sl])
                t.bias.data.copy_(s.bias[sl])
                t.running_mean.copy_(s.running_mean[sl])
                t.running_var.copy_(s.running_var[sl])
        torch.testing.assert_close(out[:, g], dec(z[:, g]), atol=1e-5, rtol=1e-4)


def test_fold_batchnorm_is_exact():
    layout = layout_for("fmnist")
    dec = GroupedDecoder(layout, (1, 28, 28), 2)
    _randomize_bn(dec)
    dec.eval()
    h = torch.randn(3, 2 * layout.decoder[0].channels, 1, 1)
    torch.testing.assert_close(fold_batchnorm(dec.net)(h), dec.net(h), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["eabs", "abs"])
def test_envelope_gradient_matches_eq_2_9(name):
    m = _small(name).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    out = m.infer(x.detach(), generator=torch.Generator().manual_seed(2))
    scores = m.predict(x, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(scores, -out["loss"][0])  # forward = the real decision values
    scores[:, 4].sum().backward()
    expected = 2 * (out["recon"][0][:, 4] - x.detach())  # d(-||x - G_4(z*)||^2)/dx
    torch.testing.assert_close(x.grad, expected, atol=1e-5, rtol=1e-4)


def test_eabs_is_randomized_abs_is_not_and_draws_share_matching():
    e, a = _small("eabs").eval(), _small("abs").eval()
    assert e.randomized and not a.randomized
    x = torch.rand(2, 1, 28, 28)
    s1 = e.predict(x, generator=torch.Generator().manual_seed(0))
    s2 = e.predict(x, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(s1, s2)
    d = e.predict_draws(x, draws=3, generator=torch.Generator().manual_seed(0))
    assert d.shape == (3, 2, 10)
    torch.testing.assert_close(a.predict(x), a.predict(x))


def test_eot_draws_on_several_threads_equal_the_draws_on_one(monkeypatch):
    """On a CPU the EOT draws of a seeded call run on the torch threads (one Python thread each):
    every draw has its own generator, so the scores are those of the same call on one thread, the
    draws differ from each other, and the process's torch threads are restored afterwards."""
    import threading

    from defenses import generative

    e = build_defense("eabs", "fmnist", steps=3, candidates=20).eval()
    x = torch.rand(3, 1, 28, 28)
    was = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = e.predict_draws(x, draws=4, generator=torch.Generator().manual_seed(7))
        torch.set_num_threads(2)
        seen = set()
        real = generative.GenerativeClassifier._optimise

        def spy(self, *a, **k):
            seen.add(threading.current_thread().name.split("_")[0])
            return real(self, *a, **k)

        monkeypatch.setattr(generative.GenerativeClassifier, "_optimise", spy)
        two = e.predict_draws(x, draws=4, generator=torch.Generator().manual_seed(7))
        assert seen == {"eot-draw"}, seen  # the draws ran on the pool's threads
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(was)
    torch.testing.assert_close(one, two, rtol=0, atol=0)
    assert not torch.allclose(one[0], one[1])  # separate randomness per draw
    assert generative.draws_in_parallel([lambda i=i: i * i for i in range(5)], threads=2) == [0, 1, 4, 9, 16]


def test_certified_radius_nonnegative_and_zero_when_wrong():
    m = _small("abs").eval()
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    scores = m.predict(x)
    y = scores.argmax(1)
    r = m.certified_radius(x, y)
    assert (r >= 0).all() and torch.isfinite(r).all()
    wrong = (y + 1) % 10
    assert (m.certified_radius(x, wrong) == 0).all()


def test_certified_radius_is_eq_2_7_computed_by_hand(monkeypatch):
    """eps* = min_{k != y} (d_k^2 - l_y*) / (2 d_k + 2 d_y), d_k = ||x - G_k(z_k*)||, clamped at 0, 0 when wrong;
    inference replaced by known reconstructions (3 classes, x = 0, reconstructions c * e_0 so that d_k = c)."""
    m = _small("abs").eval()
    dists = torch.tensor([[1.0, 3.0, 2.0],   # y = 0: k=1 (9 - 1) / (6 + 2) = 1.0, k=2 (4 - 1) / (4 + 2) = 0.5 -> 0.5
                          [2.0, 2.5, 4.0],   # y = 0: k=1 (6.25 - 4) / (5 + 4) = 0.25, k=2 (16 - 4) / (8 + 4) = 1.0 -> 0.25
                          [1.0, 1.1, 5.0],   # y = 0 with a regulariser in l_y = 2.0: k=1 (1.21 - 2) < 0 -> clamped to 0
                          [1.0, 3.0, 2.0]])  # y = 1, but the decision (argmin loss) is 0 -> 0
    losses = torch.tensor([[1.0, 9.5, 4.2], [4.0, 6.25, 16.0], [2.0, 2.5, 26.0], [1.0, 9.5, 4.2]])
    y = torch.tensor([0, 0, 0, 1])
    x = torch.zeros(4, 1, 28, 28)
    e0 = torch.zeros(1, 28, 28)
    e0[0, 0, 0] = 1.0
    recon = dists[:, :, None, None, None] * e0  # (B, K, 1, 28, 28)
    monkeypatch.setattr(m, "infer", lambda x, draws=1, generator=None: {"loss": losses[None], "recon": recon[None]})
    r = m.certified_radius(x, y)
    torch.testing.assert_close(r, torch.tensor([0.5, 0.25, 0.0, 0.0]))


@pytest.mark.parametrize("name", ["eabs", "abs", "av-abs"])
def test_training_runs_and_learns_on_tiny_data(bench_env, name):
    from harness import datasets

    train, val = datasets.load("fmnist", "train"), datasets.load("fmnist", "val")
    m = build_defense(name, "fmnist")
    cfg = dict(m.default_train_config("fmnist"), epochs=3, batch_size=100)
    metrics = m.fit(train, val, config=cfg, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), progress=False)
    losses = [h["train_loss"] for h in metrics["history"]]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_bf16_inference_option_keeps_final_losses_fp32():
    """--option precision=bf16: only the optimisation path is bf16; the scores at z* are fp32 decodes."""
    from harness.errors import BenchUserError

    fp = build_defense("abs", "fmnist", steps=6, candidates=40).eval()
    bf = build_defense("abs", "fmnist", steps=6, candidates=40, precision="bf16").eval()
    bf.load_state_dict(fp.state_dict())
    assert bf.info().extra["inference"]["precision"] == "bf16" and fp.inference.precision == "fp32"
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    out = bf.infer(x)
    z, loss = out["z"][0], out["loss"][0]
    with torch.no_grad():
        exact = bf._loss(x, bf._decode_eval(z), z, z, None)
    assert loss.dtype == torch.float32 and torch.allclose(loss, exact, rtol=1e-5, atol=1e-4)
    # the path to z* differs only by rounding: the class losses stay close to the fp32 inference
    ref = fp.infer(x)["loss"][0]
    assert torch.allclose(loss, ref, rtol=0.05)
    with pytest.raises(BenchUserError, match="precision"):
        build_defense("abs", "fmnist", precision="fp8")
    with pytest.raises(BenchUserError, match="steps"):
        build_defense("eabs", "fmnist", steps=-1)


def test_candidate_cache_survives_eval_but_not_weight_changes():
    """The harness wraps the defense in a new EOTModel (which calls eval()) per attack: that must not
    recompute the 8000-candidate cache; an optimiser step or a new state dict must."""
    from harness.engine.eot import EOTModel

    m = _small("eabs").eval()
    x = torch.rand(2, 1, 28, 28)
    m.predict(x)
    first = m._cache
    EOTModel(m, draws=2)(x)
    m.train().eval()
    m.predict(x)
    assert m._cache is first
    with torch.no_grad():
        m.decoder.fc.weight.add_(0.1)  # what an optimiser step does: in-place update
    m.predict(x)
    assert m._cache is not first
    second = m._cache
    m.load_state_dict(m.state_dict())
    m.predict(x)
    assert m._cache is not second
    third = m._cache
    m.inference = InferenceConfig(steps=4, candidates=20)
    m.predict(x)
    assert m._cache is not third and m._cache["recon"].shape[1] == 20


def test_inference_step_size_defaults_and_option():
    from defenses.generative import VARIATIONAL_LOGVAR_LR, VARIATIONAL_MEAN_LR
    from harness.errors import BenchUserError

    for name in ("eabs", "v-abs"):
        inf = build_defense(name, "fmnist").inference
        assert (inf.lr, inf.lr_logvar) == (VARIATIONAL_MEAN_LR, VARIATIONAL_LOGVAR_LR) == (0.01, 0.4)
    assert build_defense("abs", "fmnist").inference.lr == 0.05
    assert build_defense("eabs", "fmnist", lr=0.1).inference.lr == 0.1
    for bad in (0, -0.1, float("nan"), "fast"):
        with pytest.raises(BenchUserError, match="lr"):
            build_defense("eabs", "fmnist", lr=bad)


def test_score_at_mean_evaluates_the_final_loss_at_the_variational_mean():
    from harness.errors import BenchUserError

    torch.manual_seed(0)
    m = build_defense("eabs", "fmnist", steps=3, candidates=20, score_at="mean").eval()
    x = torch.rand(2, 1, 28, 28)
    out = m.infer(x, draws=2, generator=torch.Generator().manual_seed(1))
    # the optimisation still samples, the final loss does not: z* is a mean, not mu + sigma * eps
    sampled = build_defense("eabs", "fmnist", steps=3, candidates=20).eval()
    sampled.load_state_dict(m.state_dict())
    a = sampled.infer(x, draws=1, generator=torch.Generator().manual_seed(1))["loss"]
    b = m.infer(x, draws=1, generator=torch.Generator().manual_seed(1))["loss"]
    assert not torch.equal(a, b) and out["loss"].shape == (2, 2, 10)
    assert m.extra_info()["inference"]["score_at"] == "mean"
    with pytest.raises(BenchUserError, match="score_at"):
        build_defense("eabs", "fmnist", score_at="median")


def test_lr_logvar_sets_the_step_size_of_the_log_variance_only(monkeypatch):
    from defenses.generative import VARIATIONAL_LOGVAR_LR, VARIATIONAL_MEAN_LR
    from harness.errors import BenchUserError

    torch.manual_seed(0)
    base = build_defense("eabs", "fmnist", steps=2, candidates=20).eval()
    assert base.inference.lr_logvar == VARIATIONAL_LOGVAR_LR
    seen = []
    real_adam = torch.optim.Adam

    def spy(groups, lr):
        opt = real_adam(groups, lr=lr)
        seen.append([g["lr"] for g in opt.param_groups])
        return opt

    monkeypatch.setattr(torch.optim, "Adam", spy)
    x = torch.rand(2, 1, 28, 28)
    base.infer(x, generator=torch.Generator().manual_seed(0))
    split = build_defense("eabs", "fmnist", steps=2, candidates=20, lr=0.05, lr_logvar=0.8).eval()
    split.load_state_dict(base.state_dict())
    split.infer(x, generator=torch.Generator().manual_seed(0))
    mean_only = build_defense("abs", "fmnist", steps=2, candidates=20, lr_logvar=0.8).eval()
    mean_only.infer(x)
    assert seen == [[VARIATIONAL_MEAN_LR, VARIATIONAL_LOGVAR_LR], [0.05, 0.8], [0.05]]  # ABS optimises no variance
    assert split.extra_info()["inference"]["lr_logvar"] == 0.8
    for bad in (0, -1.0, float("inf"), "fast", True):
        with pytest.raises(BenchUserError, match="lr_logvar"):
            build_defense("eabs", "fmnist", lr_logvar=bad)


def test_a_threshold_calibrated_for_other_inference_settings_is_a_warning():
    from harness.engine.sanity import model_checks

    card = {"reject_threshold": 30.0, "reject_calibration": {"defense_config": {"inference": asdict(build_defense("abs", "fmnist").inference)}}}
    same = build_defense("abs", "fmnist", precision="bf16")  # an execution option: same settings
    same.load_card(card)
    assert same.settings_warnings() == []
    other = build_defense("abs", "fmnist", steps=3, candidates=20)
    other.load_card(card)
    (w,) = other.settings_warnings()
    assert "steps 50 -> 3" in w and "candidates 8000 -> 20" in w and "bench calibrate" in w
    other.load_card({"reject_threshold": 30.0})  # an older card: nothing to compare with
    assert other.settings_warnings() == []
    other.load_card(card)
    torch.manual_seed(0)
    assert w in model_checks(other.eval(), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), draws=1)  # recorded by bench run
