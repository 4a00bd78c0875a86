"""Issue-12 trust gaps: result files refuse to mix evaluations, manifests and cards carry data
provenance, and bad inputs end in exit 2 with one line (or a clear InputError in the Python API)."""

import json

import pytest
import torch

from tests.conftest import run_bench


@pytest.fixture
def trained(bench_env):
    r = run_bench("train", "--defense", "cnn", "--dataset", "fmnist", "--epochs", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    return bench_env


def _one_error_line(r, needle):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("bench: error:") and "Traceback" not in r.stderr, r.stderr
    assert needle in lines[0], lines[0]


def test_another_suite_or_budget_is_refused_and_keeps_the_old_records(trained):
    out = trained / "r"
    args = ["run", "--defense", "cnn", "--norm", "linf", "--n", "20", "--results-dir", str(out), "--quiet"]
    assert run_bench(*args, "--suite", "quick", "--attacks", "pgd").returncode == 0
    path = out / "fmnist" / "linf" / "cnn.json"
    before = path.read_text()
    _one_error_line(run_bench(*args, "--suite", "smoke"), "'quick' suite")
    assert path.read_text() == before
    # the same attack name at another budget (a suite file with PGD-5) is refused too
    suite = trained / "pgd5.toml"
    suite.write_text('description = "x"\nmasking_checks = false\n[[attack]]\nname = "pgd"\nparams = { steps = 5 }\n')
    (out2 := trained / "r2").mkdir()
    assert run_bench(*args[:-3], "--results-dir", str(out2), "--quiet", "--suite", str(suite)).returncode == 0
    data = json.loads((out2 / "fmnist" / "linf" / "cnn.json").read_text())
    data["manifest"]["suite"] = "quick"  # pretend the suite names agree: the budget still differs
    (out2 / "fmnist" / "linf" / "cnn.json").write_text(json.dumps(data))
    _one_error_line(run_bench(*args[:-3], "--results-dir", str(out2), "--quiet", "--suite", "quick", "--attacks", "pgd"), "other budgets")
    # --fresh replaces
    assert run_bench(*args, "--suite", "smoke", "--fresh").returncode == 0
    assert json.loads(path.read_text())["manifest"]["suite"] == "smoke"


def test_a_file_of_the_defense_with_other_settings_is_refused(trained):
    out = trained / "r"
    args = ["run", "--defense", "cnn", "--norm", "linf", "--n", "20", "--results-dir", str(out), "--quiet", "--suite", "quick"]
    assert run_bench(*args, "--attacks", "fgm").returncode == 0
    path = out / "fmnist" / "linf" / "cnn.json"
    data = json.loads(path.read_text())
    # as if the file came from before a change of the defense's settings (here: its recorded architecture)
    data["manifest"]["defense_config"]["arch"] = "older-arch"
    path.write_text(json.dumps(data))
    before = path.read_text()
    _one_error_line(run_bench(*args, "--attacks", "fgm,pgd"), "arch 'older-arch' -> 'table2.1'")
    assert path.read_text() == before  # nothing mixed in
    # a key the file does not record (a setting added since) does not block the resume
    del data["manifest"]["defense_config"]["arch"]
    path.write_text(json.dumps(data))
    assert run_bench(*args, "--attacks", "fgm,pgd").returncode == 0
    assert set(json.loads(path.read_text())["manifest"]["attacks"]) == {"fgm", "pgd"}


def test_manifest_and_card_record_data_provenance(trained):
    out = trained / "r"
    assert run_bench("run", "--defense", "cnn", "--norm", "linf", "--n", "10", "--attacks", "fgm", "--results-dir", str(out), "--quiet").returncode == 0
    data = json.loads((out / "fmnist" / "linf" / "cnn.json").read_text())["manifest"]["data"]
    assert data["split"] == "test" and data["size"] == 200 and data["checksum_verified"] is False  # BENCH_SKIP_CHECKSUM=1
    assert str(trained / "data" / "fmnist") == data["source"]
    assert {f["name"] for f in data["files"]} == {"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}
    assert all(f["size_bytes"] > 0 and len(f["sha256"]) == 64 for f in data["files"])
    card = json.loads((trained / "cache" / "bench" / "checkpoints" / "cnn-fmnist.json").read_text())
    assert card["data_provenance"]["checksum_verified"] is False and card["data_provenance"]["split"] == "train"


def test_a_file_of_other_data_files_is_refused_and_another_copy_of_the_same_is_named(trained):
    """Resuming a result file checks the data's content checksum: other images are refused (nothing
    mixed in); the same files read from another place resume, and ``data.source`` names both."""
    out = trained / "r"
    args = ["run", "--defense", "cnn", "--norm", "linf", "--n", "10", "--results-dir", str(out), "--quiet", "--suite", "quick"]
    assert run_bench(*args, "--attacks", "fgm").returncode == 0
    path = out / "fmnist" / "linf" / "cnn.json"
    data = json.loads(path.read_text())
    here = data["manifest"]["data"]["source"]
    data["manifest"]["data"]["source"] = "/elsewhere/fmnist"  # as if the file was begun on a machine with another copy
    path.write_text(json.dumps(data))
    assert run_bench(*args, "--attacks", "fgm,pgd").returncode == 0
    resumed = json.loads(path.read_text())["manifest"]
    assert set(resumed["attacks"]) == {"fgm", "pgd"} and resumed["data"]["source"] == " + ".join(sorted([here, "/elsewhere/fmnist"]))
    data = json.loads(path.read_text())
    data["manifest"]["data"]["checksum"] = "0" * 64
    path.write_text(json.dumps(data))
    before = path.read_text()
    _one_error_line(run_bench(*args, "--attacks", "fgm,pgd,deepfool"), "other data files")
    assert path.read_text() == before


def test_results_dir_that_is_a_file_or_unwritable(trained):
    f = trained / "afile"
    f.write_text("x")
    _one_error_line(run_bench("run", "--defense", "cnn", "--norm", "linf", "--n", "5", "--results-dir", str(f)), "is a file")
    _one_error_line(run_bench("run", "--defense", "cnn", "--norm", "linf", "--n", "5", "--results-dir", str(f / "sub")), "is a file")
    # /proc refuses new directories even to root (a read-only location)
    _one_error_line(run_bench("run", "--defense", "cnn", "--norm", "linf", "--n", "5", "--results-dir", "/proc/bench-results"), "cannot write")


def test_model_card_that_is_not_an_object(trained):
    card = trained / "cache" / "bench" / "checkpoints" / "cnn-fmnist.json"
    card.write_text("[1, 2, 3]")
    _one_error_line(run_bench("run", "--defense", "cnn", "--norm", "linf", "--n", "5", "--results-dir", str(trained / "r")), "not an object")


def test_l2_eps_above_the_input_diameter(bench_env):
    _one_error_line(run_bench("run", "--defense", "cnn", "--norm", "l2", "--eps", "1e9"), "diameter")


def test_python_api_validates_inputs_at_the_harness_boundary():
    from harness.engine.eot import EOTModel
    from harness.errors import InputError
    from harness.engine.verify import score
    from tests.attacks.helpers import LinearDefense

    d = LinearDefense().eval()
    ok = torch.rand(2, 1, 8, 8)
    y = torch.zeros(2, dtype=torch.long)
    EOTModel(d)(ok)
    bad = {
        "NaN": ok.clone().index_put_((torch.tensor([0]),), torch.tensor(float("nan"))),
        "outside the bounds": ok * 255,
        "do not fit": torch.rand(2, 1, 9, 9),
    }
    for needle, x in bad.items():
        for call in (lambda t: EOTModel(d)(t), lambda t: score(d, t, y, generator=None)):
            with pytest.raises(InputError, match=needle):
                call(x)
    with pytest.raises(ValueError):  # InputError is a ValueError for API users
        EOTModel(d)(ok * 255)
