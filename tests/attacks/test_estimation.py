"""es-pgd: foolbox's ES gradient estimator with a per-sample margin loss (thesis 2.3 gradient-free PGD)."""

import eagerpy as ep
import foolbox as fb
import pytest
import torch
from torch import nn

from harness.attacks import budget_string, get_attack, run_attack
from harness.attacks.estimation import attack_class, make_config, margin_loss
from harness.errors import BenchUserError
from harness.engine.verify import verify
from tests.attacks.helpers import batch, linear_model
from threat_models import AttackSpec, ThreatModel


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_es_pgd_breaks_a_linear_model(norm, eps):
    model = linear_model()
    x, y = batch(model)
    threat = ThreatModel(norm=norm, eps=eps)
    spec = AttackSpec("es-pgd", params=(("steps", 10), ("samples", 20)))
    cands = run_attack(model, x, y, threat, spec, seed=0)
    assert len(cands) == 1 and cands[0].shape == x.shape
    assert threat.contains(cands[0], x, tol=1e-4).all()
    v = verify(model_defense(model), x, y, cands, threat, generator=None)
    assert (~v.correct).float().mean() > 0.5
    # reproducible: same seed, same candidates
    torch.testing.assert_close(run_attack(model, x, y, threat, spec, seed=0)[0], cands[0])


def model_defense(model):
    from tests.attacks.helpers import LinearDefense

    d = LinearDefense()
    d.net = model
    return d.eval()


def test_registered_with_informative_budget():
    info = get_attack("es-pgd")
    assert info.kind == "bounded" and set(info.norms) == {"linf", "l2"}
    text = budget_string(AttackSpec("es-pgd", params=(("steps", 50), ("samples", 100), ("sigma", 0.01))))
    assert "50 steps" in text and "100 ES samples" in text and "sigma 0.01" in text and "margin" in text
    with pytest.raises(BenchUserError, match="samples"):
        make_config("linf", {"samples": 1})


class _Temperature(nn.Module):
    """Linear logits scaled by exp(8 * x[0]): pixel 0 sets the confidence (1 -> ~3000x, 0 -> 1x)."""

    def __init__(self):
        super().__init__()
        self.lin = linear_model(4, seed=5)

    def forward(self, x):
        return self.lin(x) * torch.exp(8 * x.flatten(1)[:, :1])


class _SummedMargin(fb.attacks.LinfPGD):
    """Foolbox's default batch-summed loss shape, with the margin: the weak estimator we replace."""

    def get_loss_fn(self, model, labels):
        def loss_fn(inputs):
            return ep.astensor(margin_loss(model(inputs).raw, labels.raw).sum())

        return loss_fn


def _cosines(attack_cls, model, x, y, seed=0):
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    attack = attack_cls(steps=1, rel_stepsize=0.1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        loss_fn = attack.get_loss_fn(fmodel, ep.astensor(y))
        _, g = attack.value_and_grad(loss_fn, ep.astensor(x))
    xr = x.clone().requires_grad_(True)
    margin_loss(model(xr), y).sum().backward()
    est, true = g.raw.flatten(1), xr.grad.flatten(1)
    return torch.nn.functional.cosine_similarity(est, true, dim=1)


def test_per_sample_estimate_is_useful_for_low_and_high_confidence_samples():
    model = _Temperature().eval()
    x = 0.3 + 0.4 * torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 1.0 - 1e-3, 0.0 + 1e-3  # sample 0 very confident, sample 1 not
    x[:, 0, 0, 1:] = 0.5
    with torch.no_grad():
        y = model(x).argmax(1)
        m = -margin_loss(model(x), y)
    assert m[0] > 100 * m[1]  # very different confidence
    per_sample = _cosines(attack_class("linf", samples=200, sigma=0.001, bounds=(0, 1)), model, x, y)
    assert (per_sample > 0.5).all(), per_sample
    summed = fb.gradient_estimators.es_gradient_estimator(_SummedMargin, samples=200, sigma=0.001, bounds=(0, 1), clip=True)
    weak = _cosines(summed, model, x, y)
    assert weak[1] < 0.3 < per_sample[1]  # the batch-summed loss drowns the low-confidence sample
