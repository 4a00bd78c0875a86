"""``--defense robustbench:<Name>``: RobustBench-layout checkpoints evaluated without the package.

The run test swaps the ``Standard`` entry's WRN-28-10 for a WRN-10-1 (same key scheme, 1/500 of the
compute) so that ``bench run`` on 20 CIFAR-10 fixture images stays fast on a CPU; the real WRN-28-10
entry is loaded from a RobustBench-layout file in a separate test (one forward pass).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from defenses import robustbench as rb
from harness.cli import main
from harness.errors import BenchUserError, CheckpointError
from harness.engine.models import load_defense
from tests.conftest import run_bench
from tests.datasets.fixtures import write_cifar

CPU = torch.device("cpu")


def _layout(root, name="Standard", threat="Linf"):
    d = root / "ckpt" / "robustbench" / "cifar10" / threat
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}.pt"


def _random_state(entry: rb.Entry, prefix: str = "module.") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {prefix + k: v.clone() for k, v in entry.build(10).state_dict().items()}


@pytest.fixture
def cifar(bench_env):
    write_cifar(bench_env / "data" / "cifar10", n_per_batch=2, n_test=20)
    return bench_env


@pytest.fixture
def tiny_standard(monkeypatch):
    """The Standard entry with a WRN-10-1 instead of WRN-28-10 (same RobustBench key scheme)."""
    tiny = dataclasses.replace(rb.ENTRIES["Standard"], arch_kwargs={"depth": 10, "widen_factor": 1})
    monkeypatch.setitem(rb.ENTRIES, "Standard", tiny)
    return tiny


def test_run_robustbench_standard_on_cifar_fixture(cifar, tiny_standard, capsys):
    path = _layout(cifar)
    torch.save(_random_state(tiny_standard), path)  # RobustBench keys with a DataParallel prefix
    out = cifar / "results"
    rc = main(["run", "--defense", "robustbench:Standard", "--dataset", "cifar10", "--norm", "linf", "--n", "20", "--suite", "smoke",
               "--attacks", "pgd", "--device", "cpu", "--quiet", "--results-dir", str(out)])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "cifar10" / "linf" / "robustbench-Standard.json").read_text())
    man = data["manifest"]
    assert man["defense"] == "robustbench:Standard" and man["n"] == 20 and man["eps_label"] == "8/255"
    assert man["checkpoint_sha256"] and len(man["checkpoint_sha256"]) == 64
    assert man["defense_config"]["robustbench_entry"] == "Standard" and man["defense_config"]["checkpoint_threat_model"] == "Linf"
    assert "autograd" in man["gradient_policy"] and man["randomized"] is False
    assert len(data["records"]) == 20 and all("pgd" in r["attacks"] for r in data["records"])
    assert man["gradient_check"]["verdict"] == "consistent"  # plain autograd agrees with finite differences


def test_defense_contract_on_cifar10(tiny_standard):
    """The checks of tests/contract (which builds every registered defense for fmnist) for a family member."""
    from harness.engine.models import build_defense

    d = build_defense("robustbench:Standard", "cifar10").eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    s = d.predict(x, generator=torch.Generator().manual_seed(1))
    assert s.shape == (3, 10) and torch.isfinite(s).all()
    s.gather(1, torch.tensor([[0], [1], [2]])).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    torch.testing.assert_close(d.predict(x.detach(), generator=torch.Generator().manual_seed(7)), d.predict(x.detach(), generator=torch.Generator().manual_seed(8)))
    assert not d.abstain(x, s).any()
    info = d.info()
    assert info.name == "robustbench:Standard" and not info.randomized and info.gradient_policy.count(". ") == 0 and "Croce" in info.paper


def test_real_wrn_28_10_standard_loads_robustbench_layout(cifar):
    entry = rb.ENTRIES["Standard"]
    state = _random_state(entry)
    torch.save({"state_dict": state}, _layout(cifar))  # the form of Carmon et al.'s file: {"state_dict": {"module....": ...}}
    model, card = load_defense("robustbench:Standard", "cifar10", device=CPU, norm="linf")
    assert card["path"].endswith("robustbench/cifar10/Linf/Standard.pt") and card["architecture"] == "WideResNet-28-10"
    assert torch.equal(model.net.fc.weight, state["module.fc.weight"])
    assert model.predict(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_wong2020fast_without_mu_sigma_uses_the_table(cifar):
    entry = rb.ENTRIES["Wong2020Fast"]
    state = {k: v for k, v in _random_state(entry, prefix="").items() if k not in ("mu", "sigma")}
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(_layout(cifar, "Wong2020Fast").with_suffix(".safetensors")))
    model, card = load_defense("robustbench:Wong2020Fast", "cifar10", device=CPU, norm="l2")  # a Linf entry, evaluated under L2
    assert card["format"] == "safetensors"
    info = model.extra_info()
    assert info["normalization_from"].startswith("RobustBench entry table") and info["checkpoint_threat_model"] == "Linf"
    assert torch.allclose(model.net.sigma.flatten(), torch.tensor(rb.CIFAR10_STD))


def test_missing_checkpoint_names_the_path(cifar, tiny_standard, capsys):
    rc = main(["run", "--defense", "robustbench:Standard", "--dataset", "cifar10", "--norm", "linf", "--n", "20", "--quiet", "--results-dir", str(cifar / "r")])
    err = capsys.readouterr().err
    expected = cifar / "ckpt" / "robustbench" / "cifar10" / "Linf" / "Standard.pt"
    assert rc == 2 and err.startswith("bench: error: ") and err.count("\n") == 1
    assert str(expected) in err


def test_missing_checkpoint_cli_exit_2(cifar):
    proc = run_bench("run", "--defense", "robustbench:Carmon2019Unlabeled", "--dataset", "cifar10", "--norm", "linf", "--n", "20", "--quiet", "--results-dir", str(cifar / "r"))
    assert proc.returncode == 2, proc.stderr
    assert str(cifar / "ckpt" / "robustbench" / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_full_pickle_is_refused(cifar, tiny_standard, capsys):
    net = tiny_standard.build(10)
    torch.save(net, _layout(cifar))  # a pickled module: weights_only cannot read it
    with pytest.raises(CheckpointError, match="full pickle"):
        load_defense("robustbench:Standard", "cifar10", device=CPU, norm="linf")
    rc = main(["run", "--defense", "robustbench:Standard", "--dataset", "cifar10", "--norm", "linf", "--n", "20", "--quiet", "--results-dir", str(cifar / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "full pickle" in err and "pickled defenses.networks.wide_resnet.WideResNet" in err and err.count("\n") == 1


def test_wrong_architecture_is_a_checkpoint_error(cifar, tiny_standard):
    torch.save(_random_state(rb.ENTRIES["Wong2020Fast"]), _layout(cifar))
    with pytest.raises(CheckpointError, match="does not fit RobustBench entry Standard"):
        load_defense("robustbench:Standard", "cifar10", device=CPU, norm="linf")


def test_prefixes_are_stripped():
    t = torch.zeros(1)
    assert list(rb.strip_prefixes({"module.model.fc.weight": t, "model.bn1.bias": t, "conv1.weight": t})) == ["fc.weight", "bn1.bias", "conv1.weight"]


def test_unknown_entry_without_the_package_is_one_line(cifar, capsys):
    rc = main(["run", "--defense", "robustbench:NoSuchModel", "--dataset", "cifar10", "--norm", "linf", "--n", "20", "--quiet", "--results-dir", str(cifar / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "robustbench package cannot be imported" in err and "Standard" in err


def test_download_needs_opt_in_and_gdown(cifar, tiny_standard, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_gdown(name, *a, **k):
        if name == "gdown":
            raise ImportError("no gdown")
        return real_import(name, *a, **k)

    monkeypatch.setenv(rb.DOWNLOAD_ENV, "1")
    monkeypatch.setattr(builtins, "__import__", no_gdown)
    with pytest.raises(CheckpointError, match="needs the gdown package"):
        load_defense("robustbench:Standard", "cifar10", device=CPU, norm="linf")


def test_other_datasets_are_refused(bench_env):
    with pytest.raises(BenchUserError, match="does not support dataset"):
        load_defense("robustbench:Standard", "fmnist", device=CPU)


def test_cannot_be_trained(cifar, capsys):
    rc = main(["train", "--defense", "robustbench:Standard", "--dataset", "cifar10", "--quiet"])
    assert rc == 2 and "no weights to train" in capsys.readouterr().err


def test_optional_package_path_with_a_stand_in_module(cifar, monkeypatch):
    """Names outside bench's table go to robustbench.utils.load_model where the package imports (a stand-in here)."""
    import sys
    import types

    from defenses.networks.wide_resnet import WideResNet

    calls = []

    def load_model(name, model_dir, dataset, threat_model):
        calls.append((name, model_dir, dataset, threat_model))
        net = WideResNet(10, 1)
        net.load_state_dict(torch.load(f"{model_dir}/{dataset}/{threat_model}/{name}.pt", weights_only=True))
        return net.eval()

    utils = types.ModuleType("robustbench.utils")
    utils.load_model = load_model
    utils.all_models = {"cifar10": {"Linf": {"SomeZooModel": {}}}}
    pkg = types.ModuleType("robustbench")
    pkg.utils = utils
    monkeypatch.setitem(sys.modules, "robustbench", pkg)
    monkeypatch.setitem(sys.modules, "robustbench.utils", utils)
    monkeypatch.setattr(rb, "_CLASSES", {})
    torch.save(WideResNet(10, 1).state_dict(), _layout(cifar, "SomeZooModel"))
    model, card = load_defense("robustbench:SomeZooModel", "cifar10", device=CPU, norm="linf")
    assert calls and calls[0][0] == "SomeZooModel" and calls[0][3] == "Linf"
    assert model.predict(torch.rand(2, 3, 32, 32)).shape == (2, 10) and len(card["sha256"]) == 64
    assert model.extra_info()["loaded_by"] == "robustbench.utils.load_model"
    with pytest.raises(BenchUserError, match="not a RobustBench model-zoo entry"):
        load_defense("robustbench:NotInTheZoo", "cifar10", device=CPU, norm="linf")
    torch.save(WideResNet(10, 1), _layout(cifar, "SomeZooModel"))  # a full pickle is refused before robustbench unpickles it
    with pytest.raises(CheckpointError, match="full pickle"):
        load_defense("robustbench:SomeZooModel", "cifar10", device=CPU, norm="linf")
