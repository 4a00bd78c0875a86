"""The c-VAE decomposition classifier (Yao et al. 2019 section 3): label enumeration, the logic flow on
hand-made components, the single-label decision and its declared gradient, the training loss."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from defenses.base import declared_gradients
from defenses.cvae import CVAE
from harness.errors import BenchUserError, CheckpointError
from harness.engine.models import build_defense


def test_candidate_sets_hand_made_example():
    """y* = [0.1, 0.5, 0.9, 0.3] with y_l = 0.2, y_u = 0.8: component 0 off, 2 on, 1 and 3 undecided -> 4 candidates."""
    y = torch.tensor([[0.1, 0.5, 0.9, 0.3], [0.95, 0.05, 0.85, 0.1]])
    cand, owner = CVAE.candidate_sets(y, 0.2, 0.8, max_undecided=4)
    assert owner.tolist() == [0, 0, 0, 0, 1]
    got = {tuple(int(v) for v in c) for c in cand[:4]}
    assert got == {(0, 0, 1, 0), (0, 0, 1, 1), (0, 1, 1, 0), (0, 1, 1, 1)}
    assert cand[4].tolist() == [1, 0, 1, 0]  # everything decided: one candidate


def test_candidate_sets_cap_enumerates_those_nearest_half():
    y = torch.tensor([[0.45, 0.3, 0.7, 0.52]])
    cand, owner = CVAE.candidate_sets(y, 0.2, 0.8, max_undecided=2)
    assert len(cand) == 4
    # components 0 and 3 (nearest 0.5) are enumerated; 1 rounds to 0, 2 to 1
    assert (cand[:, 1] == 0).all() and (cand[:, 2] == 1).all()
    assert {(int(c[0]), int(c[3])) for c in cand} == {(0, 0), (0, 1), (1, 0), (1, 1)}


class _Fixed(torch.nn.Module):
    """A decoder that draws a fixed image (z only enters with weight 0, so gradients exist)."""

    def __init__(self, image):
        super().__init__()
        self.image = image

    def forward(self, z):
        return self.image[None].expand(len(z), -1, -1, -1) + 0.0 * z.sum(-1)[:, None, None, None]


def _hand_made_model():
    """A ts-shaped c-VAE whose decoders draw fixed, disjoint component images."""
    m = CVAE(num_classes=4, input_shape=(1, 64, 64), dataset="ts", multilabel=True).eval()
    templates = torch.zeros(4, 1, 64, 64)
    for i in range(4):
        templates[i, 0, 16 * i : 16 * i + 12, 8:56] = 1.0
    m.decoders = torch.nn.ModuleList(_Fixed(t) for t in templates)
    m.config = replace(m.config, steps=60, lr=0.05, refine_steps=2, c=0.1, beta=5.0, b=-2.5, y_lower=0.2, y_upper=0.8)
    return m, templates


def test_refinement_picks_the_best_candidate():
    """Undecided components are enumerated and the candidate with the smallest ||x^f - x||^2 wins."""
    m, t = _hand_made_model()
    x = (t[0] + t[2])[None]
    f, _ = m._refine(x.expand(4, -1, -1, -1), torch.zeros(4, 4, 8), torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0.]]))
    assert f.argmin().item() == 0 and f[0].item() == 0.0
    m.config = replace(m.config, steps=0, y_init=0.5, y_lower=0.2, y_upper=0.8)  # y* = 0.5 everywhere: all 16 sets enumerated
    out = m.decompose(x)
    assert out["candidates"].tolist() == [16] and out["labels"].tolist() == [[1, 0, 1, 0]]


def test_decompose_recovers_components_of_a_composite():
    m, t = _hand_made_model()
    x = torch.stack([t[0] + t[2], t[1] + t[3], t[0] + t[1] + t[3]])
    out = m.decompose(x, trace=True)
    assert out["labels"].tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 1]]
    assert out["y_trace"].shape == (61, 3, 4)
    torch.testing.assert_close(out["x_f"], x)
    assert not out["noise"].any()


def test_noise_threshold_rejects():
    m, t = _hand_made_model()
    m.config = replace(m.config, noise_threshold=1.0)
    x = torch.stack([t[0] + t[2], torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0))])
    assert m.decompose(x)["noise"].tolist() == [False, True]


def test_decision_scores_follow_the_candidates():
    f = torch.tensor([[1.0, 5.0, 0.5, 2.0]])
    cand = torch.tensor([[True, True, False, False]])
    s = CVAE.decision_scores(f, cand)
    assert s.argmax(1).item() == 0  # class 2 has the smallest loss but was switched off (y* < y_l)
    assert (s[0, 2:] < s[0, :2].min()).all()


def test_single_label_predict_gradient_is_the_envelope():
    m = build_defense("cvae", "fmnist").eval()
    m.use_smoke_test_budget()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with declared_gradients() as seen:
        s = m.predict(x)
    assert seen["straight_through"] == 1
    s[:, 3].sum().backward()
    out = m.infer(x.detach())
    torch.testing.assert_close(x.grad, 2 * (out["parts"][:, 3] - x.detach()), atol=1e-5, rtol=1e-4)


def test_abstain_uses_the_noise_threshold():
    m = build_defense("cvae", "fmnist").eval()
    m.use_smoke_test_budget()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    s = m.predict(x)
    assert not m.abstain(x, s).any()
    m.config = replace(m.config, noise_threshold=-1.0)
    assert m.abstain(x, s).all()  # the last predict's loss against the current threshold
    assert m.abstain(x[:2], m.predict(x[1:])).all()  # an input it has not seen last: inference reruns


def test_load_card_applies_and_refuses():
    m = build_defense("cvae", "fmnist", steps=7)
    m.load_card({"inference": {"beta": 2.0, "b": -1.0, "noise_threshold": 3.5, "steps": 30}})
    assert m.config.beta == 2.0 and m.config.noise_threshold == 3.5 and m.config.steps == 7  # --option wins
    with pytest.raises(CheckpointError, match="unknown inference key"):
        m.load_card({"inference": {"bogus": 1}})
    with pytest.raises(BenchUserError, match="y_lower"):
        m.load_card({"inference": {"y_lower": 0.9, "y_upper": 0.1}})


def test_training_loss_uses_only_present_components():
    m = CVAE(num_classes=4, input_shape=(1, 64, 64), dataset="ts", multilabel=True)
    x = torch.rand(3, 1, 64, 64)
    y = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 1], [1, 0, 0, 1]]).float()
    loss = m.loss(x, y, generator=torch.Generator().manual_seed(0), kl_weight=1.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert m.decoders[1].net[0].weight.grad is not None  # component 1 appears in sample 1
    m.zero_grad()
    m.loss(x, torch.tensor([[1, 0, 0, 0]] * 3).float(), generator=torch.Generator().manual_seed(0), kl_weight=1.0).backward()
    assert m.decoders[2].net[0].weight.grad is None


def test_multilabel_model_refuses_predict():
    m = CVAE(num_classes=4, input_shape=(1, 64, 64), dataset="ts", multilabel=True)
    with pytest.raises(BenchUserError, match="multi-label"):
        m.predict(torch.rand(1, 1, 64, 64))


def test_shipped_checkpoint_loads_with_its_card():
    """checkpoints/cvae-fmnist: weights verified against the card, the validation choice applied."""
    from harness.store import checkpoints

    path = checkpoints.shipped_dir() / "cvae-fmnist.safetensors"
    if not path.is_file():
        pytest.skip("no shipped cvae checkpoint")
    m = CVAE(num_classes=10, input_shape=(1, 28, 28), dataset="fmnist")
    card = checkpoints.load_checkpoint(m, path)
    m.load_card(card)
    assert card["defense"] == "cvae" and card["inference"]["noise_threshold"] is not None
    assert m.config.noise_threshold == card["inference"]["noise_threshold"] and m.config.beta == card["inference"]["beta"]
    assert {"beta", "b", "c", "y_lower"} <= set(card["selection"]["grid"][0])
    m.eval()
    m.use_smoke_test_budget()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    s = m.predict(x)
    assert s.shape == (2, 10) and torch.isfinite(s).all()
    assert m.abstain(x, s).dtype == torch.bool
