import pytest
import torch

from harness.errors import BenchUserError
from threat_models import AttackSpec, ThreatModel, default_threat, list_suites, load_suite


def test_linf_project_and_contains():
    t = ThreatModel(norm="linf", eps=0.1)
    x = torch.full((2, 1, 4, 4), 0.5)
    far = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    p = t.project(far, x)
    assert t.contains(p, x).all()
    assert (p - x).abs().max() <= 0.1 + 1e-7
    assert not t.contains(far, x).all()


def test_l2_project_and_bounds():
    t = ThreatModel(norm="l2", eps=1.5)
    x = torch.zeros(3, 1, 8, 8)
    far = x + 5 * torch.ones_like(x)
    p = t.project(far, x)
    assert t.contains(p, x).all()
    assert p.min() >= 0 and p.max() <= 1
    assert torch.allclose(t.distance(p, x), torch.full((3,), 1.5), atol=1e-5)


def test_bad_threat_values():
    with pytest.raises(BenchUserError):
        ThreatModel(norm="l1", eps=0.1)
    with pytest.raises(BenchUserError):
        ThreatModel(norm="linf", eps=float("nan"))
    with pytest.raises(BenchUserError):
        ThreatModel(norm="linf", eps=-1)


def test_thesis_eps():
    assert default_threat("fmnist", "linf").eps == 0.1
    assert default_threat("mnist", "linf").eps == 0.3
    assert default_threat("svhn", "linf").eps_label == "8/255"
    assert default_threat("cifar10", "l2").eps == 1.5


def test_spec_hash_stable_and_order_independent():
    a = AttackSpec("pgd", (("steps", 80), ("rel_stepsize", 0.03)), restarts=5)
    b = AttackSpec("pgd", (("rel_stepsize", 0.03), ("steps", 80)), restarts=5)
    assert a.spec_hash() == b.spec_hash()
    assert a.spec_hash() != a.with_eot(5).spec_hash()


def test_paper_suite_matches_thesis():
    assert {"paper", "quick"} <= set(list_suites())
    linf = {s.name: s for s in load_suite("paper", norm="linf", dataset="fmnist").attacks}
    l2 = {s.name: s for s in load_suite("paper", norm="l2", dataset="svhn", randomized=True).attacks}
    masking = {"square", "transfer"}  # not in the thesis: the masking checks (issue 12)
    assert set(linf) == {"pgd", "deepfool", "noise", "es-pgd", "autoattack"} | masking
    assert set(l2) == {"pgd", "deepfool", "ddn", "cw", "noise", "boundary", "es-pgd", "autoattack"} | masking
    assert linf["square"].kwargs == {"n_queries": 5000} and linf["transfer"].kwargs["source"] == "auto"
    assert linf["pgd"].kwargs["steps"] == 80 and linf["pgd"].restarts == 5 and linf["pgd"].eot == 1
    assert l2["pgd"].restarts == 20 and l2["pgd"].eot == 5
    assert l2["deepfool"].kwargs["steps"] == 100 and l2["ddn"].kwargs["steps"] == 80
    assert l2["cw"].kwargs["binary_search_steps"] == 5 and l2["cw"].kwargs["steps"] == 100


def test_unknown_suite():
    with pytest.raises(BenchUserError, match="unknown suite"):
        load_suite("nope", norm="linf", dataset="fmnist")


def test_masking_checks_are_appended_unless_a_suite_opts_out(tmp_path):
    own = tmp_path / "mine.toml"
    own.write_text('description = "mine"\n[[attack]]\nname = "pgd"\nparams = { steps = 5 }\n[[attack]]\nname = "square"\nparams = { n_queries = 10 }\n')
    names = [(s.name, s.kwargs) for s in load_suite(str(own), norm="linf", dataset="fmnist").attacks]
    assert names[:2] == [("pgd", {"steps": 5}), ("square", {"n_queries": 10})]  # the suite's own square is kept
    assert [n for n, _ in names] == ["pgd", "square", "transfer"]
    own.write_text('description = "mine"\nmasking_checks = false\n[[attack]]\nname = "pgd"\n')
    assert [s.name for s in load_suite(str(own), norm="linf", dataset="fmnist").attacks] == ["pgd"]
    assert [s.name for s in load_suite("smoke", norm="l2", dataset="fmnist").attacks] == ["pgd", "transfer"]
    with pytest.raises(BenchUserError, match="cannot read"):
        load_suite(str(tmp_path / "missing.toml"), norm="linf", dataset="fmnist")
    own.write_text("[[attack]\nname=")
    with pytest.raises(BenchUserError, match="not valid TOML"):
        load_suite(str(own), norm="linf", dataset="fmnist")


def test_randomized_overrides_apply_to_randomized_defenses_only(tmp_path):
    """`[attack.randomized]`: params / restarts for randomized defenses, before the dataset's overrides."""
    own = tmp_path / "kinds.toml"
    own.write_text('masking_checks = false\neot_randomized = 5\n[[attack]]\nname = "cw"\nnorms = ["l2"]\n'
                   'params = { binary_search_steps = 5, steps = 100, initial_const = 0.001 }\n'
                   '[attack.randomized]\nparams = { binary_search_steps = 2, initial_const = 1.0 }\nrestarts = 2\n'
                   '[attack.dataset.svhn]\nparams = { steps = 50 }\n')
    (det,) = load_suite(str(own), norm="l2", dataset="fmnist").attacks
    (rnd,) = load_suite(str(own), norm="l2", dataset="fmnist", randomized=True).attacks
    (rnd_svhn,) = load_suite(str(own), norm="l2", dataset="svhn", randomized=True).attacks
    assert det.kwargs == {"binary_search_steps": 5, "steps": 100, "initial_const": 0.001} and (det.restarts, det.eot) == (1, 1)
    assert rnd.kwargs == {"binary_search_steps": 2, "steps": 100, "initial_const": 1.0} and (rnd.restarts, rnd.eot) == (2, 5)
    assert rnd_svhn.kwargs == {"binary_search_steps": 2, "steps": 50, "initial_const": 1.0}
    own.write_text('[[attack]]\nname = "cw"\n[attack.randomized]\nsteps = 3\n')
    with pytest.raises(BenchUserError, match=r"\[attack.randomized\] of 'cw' may set params \(a table\) and restarts only"):
        load_suite(str(own), norm="l2", dataset="fmnist")
