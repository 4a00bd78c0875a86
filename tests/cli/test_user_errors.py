"""User errors exit 2 with one readable line and no traceback."""

import pytest

from tests.conftest import run_bench


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--defense", "does-not-exist", "--norm", "linf"], "unknown defense"),
        (["run", "--defense", "cnn", "--norm", "linf", "--n", "-5"], "positive integer"),
        (["run", "--defense", "cnn", "--norm", "linf", "--n", "0"], "positive integer"),
        (["run", "--defense", "cnn", "--norm", "l7"], "invalid choice"),
        (["run", "--defense", "cnn", "--norm", "linf", "--dataset", "imagenet"], "unknown data"),
        (["run", "--defense", "cnn", "--norm", "linf", "--eps", "nan"], "eps"),
        (["run", "--defense", "cnn", "--norm", "linf", "--suite", "huge"], "unknown suite"),
        (["table", "--norm", "linf", "--results-dir", "/nonexistent-dir"], "no results"),
        (["frobnicate"], "invalid choice"),
        (["run", "--defense", "cnn", "--norm", "linf", "--suite", "smoke", "--attacks", "deepfool"], "not in suite 'smoke'"),
        (["train", "--defense", "cnn", "--epochs", "1", "--set", "lr_schedul=cosine"], "unknown training-config key"),
        (["train", "--defense", "cnn", "--epochs", "1", "--set", "lr_schedule"], "key=value"),
        (["train", "--defense", "cnn", "--epochs", "2", "--set", "lr_schedule=cosine", "--set", "anneal_epochs=5"], "anneal_epochs"),
        (["train", "--defense", "cnn", "--epochs", "1", "--set", "lr_schedule=triangle"], "unknown lr_schedule"),
    ],
)
def test_user_error_exit_2_one_line(bench_env, args, needle):
    r = run_bench(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("bench: error:")
    assert needle in lines[0].lower()
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command", [["leaderboard"], ["leaderboard", "--check"], ["reproduction"]])
def test_missing_results_dir_writes_nothing(bench_env, command):
    out = bench_env / "report.md"
    r = run_bench(*command, "--results-dir", str(bench_env / "no-such-results"), "--out", str(out))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip().startswith("bench: error: results directory") and "not found" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_missing_data_names_files(bench_env, tmp_path):
    r = run_bench("run", "--defense", "cnn", "--norm", "linf", "--dataset", "mnist", "--no-train")
    assert r.returncode == 2
    assert "t10k-images-idx3-ubyte.gz" in r.stderr or "train-images-idx3-ubyte.gz" in r.stderr
    assert "Traceback" not in r.stderr


def test_corrupt_checkpoint_is_a_user_error(bench_env):
    ck = bench_env / "ckpt"
    ck.mkdir()
    (ck / "cnn-fmnist.safetensors").write_bytes(b"this is not a safetensors file")
    r = run_bench("run", "--defense", "cnn", "--norm", "linf", "--n", "5", "--results-dir", str(bench_env / "r"))
    assert r.returncode == 2, r.stderr
    assert "safetensors" in r.stderr and "Traceback" not in r.stderr


def test_list_commands(bench_env):
    for what in ("defenses", "attacks", "datasets", "suites"):
        r = run_bench("list", what)
        assert r.returncode == 0, r.stderr
    assert "cnn" in run_bench("list", "defenses").stdout
    assert "deepfool" in run_bench("list", "attacks").stdout
