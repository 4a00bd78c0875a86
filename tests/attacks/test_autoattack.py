"""AutoAttack adapter (pyautoattack 0.2.0): standard for deterministic, rand (own EOT) for randomized defenses."""

import logging

import pytest
import torch

from harness.attacks import budget_string, get_attack, run_attack
from harness.attacks import autoattack as aa_mod
from harness.engine.eot import EOTModel
from harness.errors import BenchUserError
from harness.engine.verify import verify
from tests.attacks.helpers import LinearDefense, NoisyLinearDefense, batch
from threat_models import AttackSpec, ThreatModel

CHEAP = (("n_iter", 5), ("n_queries", 20), ("eot_iter", 2))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_standard_on_a_deterministic_model_breaks_it(norm, eps, monkeypatch):
    d = LinearDefense().eval()
    x, y = batch(d.net)
    model = EOTModel(d, draws=5)  # draws are ignored for a deterministic defense
    seen = []
    real_build = aa_mod.build
    monkeypatch.setattr(aa_mod, "build", lambda *a, **k: seen.append(k["version"]) or real_build(*a, **k))
    threat = ThreatModel(norm=norm, eps=eps)
    cands = run_attack(model, x, y, threat, AttackSpec("autoattack", params=CHEAP), seed=0)
    assert seen == ["standard"]
    assert cands[0].shape == x.shape
    v = verify(d, x, y, cands, threat, generator=None)
    assert (~v.correct).float().mean() > 0.5


def test_rand_for_a_randomized_defense_with_autoattacks_own_eot(monkeypatch):
    d = NoisyLinearDefense().eval()
    x, y = batch(d.net, n=6)
    model = EOTModel(d, draws=5, generator=torch.Generator().manual_seed(0))
    seen = []
    real_build = aa_mod.build

    def spy(cfg, target, **k):
        seen.append((k["version"], getattr(target, "draws", None)))
        aa = real_build(cfg, target, **k)
        seen.append(aa.apgd.eot_iter)
        return aa

    monkeypatch.setattr(aa_mod, "build", spy)
    threat = ThreatModel(norm="linf", eps=0.1)
    spec = AttackSpec("autoattack", params=CHEAP, eot=5)
    cands = run_attack(model, x, y, threat, spec, seed=0)
    assert seen == [("rand", 1), 2]  # AutoAttack's EOT (2 draws here), on a one-draw model
    assert cands[0].shape == x.shape and threat.contains(cands[0], x, tol=1e-4).all()
    text = budget_string(spec, randomized=d.randomized)
    assert "AutoAttack rand" in text and "EOT 2" in text


def test_version_is_recorded_in_the_budget_and_can_be_forced():
    det = budget_string(AttackSpec("autoattack"))
    assert det.startswith("AutoAttack standard") and "100 iterations" in det and "5000 queries" in det
    # the version follows the suite's EOT policy (the defense's flag), not the spec's EOT draws
    assert budget_string(AttackSpec("autoattack", eot=5), randomized=True).startswith("AutoAttack rand")
    assert budget_string(AttackSpec("autoattack", eot=5), randomized=False).startswith("AutoAttack standard")
    forced = aa_mod.make_config("linf", {"version": "standard"})
    assert aa_mod.resolve_version(forced, EOTModel(NoisyLinearDefense(), draws=5)) == "standard"
    assert aa_mod.resolve_version(aa_mod.make_config("linf", {}), LinearDefense()) == "standard"
    assert aa_mod.resolve_version(aa_mod.make_config("linf", {}), NoisyLinearDefense()) == "rand"
    with pytest.raises(BenchUserError, match="version"):
        aa_mod.make_config("linf", {"version": "fast"})
    assert get_attack("autoattack").kind == "bounded" and get_attack("autoattack").library == "pyautoattack"


def test_prints_do_not_reach_stdout(capsys, caplog):
    """Verbose AutoAttack (DEBUG logging) reports its progress through logging, never on stdout (which holds bench's tables)."""
    d = LinearDefense().eval()
    x, y = batch(d.net, n=4)
    with caplog.at_level(logging.DEBUG):
        run_attack(d, x, y, ThreatModel(norm="linf", eps=0.1), AttackSpec("autoattack", params=CHEAP), seed=0)
    assert capsys.readouterr().out == ""
    progress = [r for r in caplog.records if r.levelno == logging.DEBUG and "robust accuracy" in r.getMessage()]
    assert progress and {r.name for r in progress} <= {"auto-attack", "harness.attacks.autoattack"}  # AutoAttack's own report
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_attack(d, x, y, ThreatModel(norm="linf", eps=0.1), AttackSpec("autoattack", params=CHEAP), seed=0)
    assert capsys.readouterr().out == "" and not [r for r in caplog.records if "robust accuracy" in r.getMessage()]


def _masked():
    """A zero-gradient (quantised) linear defense and 16 inputs on its quantisation grid, labelled by it."""
    from tests.attacks.test_transfer import MaskedWrapper

    d = MaskedWrapper().eval()
    x, y = batch(d.base.net, n=16)
    x = (x * 8).round() / 8
    with torch.no_grad():
        y = d.predict(x).argmax(1)
    return d, x, y


def test_components_and_warnings_are_reported_for_a_masked_defense():
    """Zero gradients blind APGD and FAB (beyond their random starts); Square finds more, and the report says which found what."""
    from harness.attacks import AttackReport

    d, x, y = _masked()
    report = AttackReport()
    threat = ThreatModel(norm="linf", eps=0.25)
    cands = run_attack(EOTModel(d), x, y, threat, AttackSpec("autoattack", params=(("n_iter", 5), ("n_queries", 300))), seed=0, report=report)
    (found,) = report.found_by
    v = verify(d, x, y, cands, threat, generator=None)
    assert (~v.correct).sum() >= 4
    by = [found[i] for i in range(len(x)) if not v.correct[i]]
    assert set(by) <= {"apgd-ce", "apgd-t", "fab-t", "square"} and "square" in by, by
    assert all(f is None for i, f in enumerate(found) if v.correct[i])
    assert any("zero gradient" in n for n in report.notes), report.notes
    assert any("Square component found adversarials" in n for n in report.notes)
    assert get_attack("autoattack").uses_of("square") == "gradient-free" and get_attack("autoattack").uses_of("apgd-ce") == "gradient"


def test_square_alone_breaks_a_masked_defense():
    d, x, y = _masked()
    threat = ThreatModel(norm="linf", eps=0.25)
    spec = AttackSpec("square", params=(("n_queries", 300),))
    cands = run_attack(EOTModel(d), x, y, threat, spec, seed=0)
    v = verify(d, x, y, cands, threat, generator=None)
    assert (~v.correct).sum() >= 8
    torch.testing.assert_close(run_attack(EOTModel(d), x, y, threat, spec, seed=0)[0], cands[0])  # seeded
    assert budget_string(spec).startswith("300 queries") and get_attack("square").uses == "gradient-free"
    with pytest.raises(BenchUserError, match="n_queries"):
        run_attack(EOTModel(d), x, y, threat, AttackSpec("square", params=(("n_queries", 0),)), seed=0)
