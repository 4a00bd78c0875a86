"""Transfer attack: PGD on the base model defeats a wrapper whose own gradient is masked."""

import pytest
import torch

from harness.attacks import budget_string, run_attack
from harness.engine.eot import EOTModel
from harness.errors import BenchUserError
from harness.engine.verify import verify
from tests.attacks.helpers import LinearDefense, batch
from threat_models import AttackSpec, ThreatModel


class MaskedWrapper(LinearDefense):
    """Quantises its input before the base linear model: zero gradient everywhere (masked)."""

    name = "test-masked-wrapper"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.base = LinearDefense()

    def predict(self, x, *, generator=None):
        return self.base.predict((x * 8).round() / 8)

    def wrapped_base(self):
        return self.base


def _attack(spec, defense, x, y, threat):
    cands = run_attack(EOTModel(defense), x, y, threat, spec, seed=0)
    return verify(defense, x, y, cands, threat, generator=None)


def test_transfer_from_base_breaks_what_masked_pgd_cannot():
    d = MaskedWrapper().eval()
    x, y = batch(d.base.net, n=16)
    x = (x * 8).round() / 8  # on the quantisation grid
    with torch.no_grad():
        y = d.predict(x).argmax(1)
    threat = ThreatModel(norm="linf", eps=0.25)
    own = _attack(AttackSpec("pgd", params=(("steps", 20),)), d, x, y, threat)
    transfer = _attack(AttackSpec("transfer", params=(("steps", 20),)), d, x, y, threat)
    assert int(own.correct.sum()) >= 14  # zero gradient: only PGD's random start can get lucky
    assert int(transfer.correct.sum()) <= 4
    s = budget_string(AttackSpec("transfer", params=(("steps", 20),)))
    assert "PGD 20 steps" in s and "base model" in s


def test_transfer_parameters_are_checked():
    x, y = batch(LinearDefense().net, n=2)
    with pytest.raises(BenchUserError, match="unknown parameter"):
        run_attack(EOTModel(LinearDefense()), x, y, ThreatModel(norm="l2", eps=1.0), AttackSpec("transfer", params=(("stps", 3),)), seed=0)
