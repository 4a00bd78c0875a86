"""The gradient-consistency check (harness/engine/gradcheck.py) on tiny linear defenses."""

import torch

from defenses.base import bpda_identity, straight_through
from harness.engine.gradcheck import check_gradients, describe, same_finding
from tests.attacks.helpers import LinearDefense, batch


class _Quantized(LinearDefense):
    name = "t-gc-quantized"

    def predict(self, x, *, generator=None):
        return super().predict(torch.round(x * 8) / 8)


class _QuantizedBPDA(LinearDefense):
    name = "t-gc-bpda"

    def predict(self, x, *, generator=None):
        return super().predict(bpda_identity(lambda t: torch.round(t * 8) / 8, x))


class _Shattered(LinearDefense):
    name = "t-gc-shattered"

    def predict(self, x, *, generator=None):
        return super().predict(x + 0.02 * torch.sin(1000 * x))


class _Exploding(LinearDefense):
    """Adds a term worth zero whose gradient is a million times the real one (undeclared)."""

    name = "t-gc-exploding"

    def predict(self, x, *, generator=None):
        s = super().predict(x)
        return s + 1e6 * (s - s.detach())


class _DeclaredSurrogate(_Exploding):
    name = "t-gc-declared"

    def predict(self, x, *, generator=None):
        s = LinearDefense.predict(self, x)
        return straight_through(s, 1e6 * s)


class _Noisy(LinearDefense):
    """Draws from the generator it is given: a randomized defense checked with common random numbers."""

    name = "t-gc-noisy"
    randomized = True

    def predict(self, x, *, generator=None):
        return super().predict((x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(0, 1))


def _check(defense, norm="linf", eps=0.1):
    d = defense().eval()
    x, y = batch(LinearDefense().net, n=8)
    return check_gradients(d, x, y, norm=norm, eps=eps)


def test_honest_gradient_is_consistent_in_both_norms():
    for norm, eps in (("linf", 0.1), ("l2", 1.0)):
        c = _check(LinearDefense, norm, eps)
        assert c.verdict == "consistent" and c.declared == {} and not c.problems, c
        assert all(s.agree for s in c.scales[:3])
        assert "matches finite differences" in describe(c.to_dict())


def test_zero_gradient_where_the_decision_changes_fails():
    c = _check(_Quantized)
    assert c.verdict == "inconsistent" and c.zero_gradient == 8
    assert any("zero where the decision changes" in p for p in c.problems)
    assert describe(c.to_dict()).startswith("gradient check FAILED")


def test_shattered_and_exploding_gradients_fail():
    assert _check(_Shattered).verdict == "inconsistent"
    c = _check(_Exploding)
    assert c.verdict == "inconsistent" and any("exploding" in p for p in c.problems), c.problems


def test_declared_surrogates_are_reported_as_such():
    for cls, helper in ((_QuantizedBPDA, "bpda_identity"), (_DeclaredSurrogate, "straight_through")):
        c = _check(cls)
        assert c.verdict == "surrogate" and helper in c.declared and not c.failed


def test_randomized_defense_is_checked_with_common_random_numbers():
    c = _check(_Noisy)
    assert c.verdict == "consistent", c


def _jitter(check: dict, dcos=0.0, dratio=0.0, dchanged=0.0, **top) -> dict:
    out = dict(check, **top)
    out["scales"] = [dict(s, cosine=None if s["cosine"] is None else s["cosine"] + dcos,
                          ratio=None if s["ratio"] is None else s["ratio"] * (1 + dratio),
                          changed=s["changed"] + dchanged) for s in check["scales"]]
    return out


def test_same_finding_tolerates_last_digit_jitter_only():
    c = _check(_Shattered).to_dict()
    probe = 1 / (c["samples"] * c["directions"])
    assert same_finding(c, c) and same_finding(c, _jitter(c, dcos=2e-4, dratio=5e-4, dchanged=probe))
    assert not same_finding(None, c)
    assert not same_finding(c, _jitter(c, dcos=0.01))  # a cosine that really moved
    assert not same_finding(c, _jitter(c, dratio=0.01))
    assert not same_finding(c, _jitter(c, dchanged=2.5 * probe))
    assert not same_finding(c, _jitter(c, verdict="consistent"))
    assert not same_finding(c, _jitter(c, zero_gradient=c["zero_gradient"] + 1))
    flipped = _jitter(c)
    flipped["scales"][0]["agree"] = not flipped["scales"][0]["agree"]
    assert not same_finding(c, flipped)


def test_a_rerun_keeps_a_recorded_check_that_found_the_same():
    from harness.engine.runner import Evaluation

    c = _check(_Exploding).to_dict()
    ev = Evaluation({"gradient_check": c, "attacks": {}}, [])
    ev.set_trust(["other", describe(_jitter(c, dratio=1e-4))], _jitter(c, dratio=1e-4))
    assert ev.manifest["gradient_check"] is c and ev.manifest["warnings"][:2] == ["other", describe(c)]
    moved = _jitter(c, dcos=0.05)
    ev.set_trust([describe(moved)], moved)
    assert ev.manifest["gradient_check"] is moved and ev.manifest["warnings"][0] == describe(moved)
