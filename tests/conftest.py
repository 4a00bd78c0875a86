"""Shared fixtures: an isolated environment with tiny, learnable Fashion-MNIST-format data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.datasets.fixtures import IDX_NAMES, write_idx_gz

#: One torch (OpenMP) thread per test process, and for the ``bench`` subprocesses the tests start
#: (they inherit the environment). The README runs the suite on 2 xdist workers; with torch's default
#: of one thread per core, each worker's thread pool spun on the core the other worker needed (the
#: masked-zoo tests took 502 s with the default and 167 s with one thread, on this 2-core machine
#: beside two single-thread sweeps). A value the user set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    """Apply :data:`OMP_NUM_THREADS` to torch too, in case a plugin imported it before this file."""
    import torch

    try:
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    except ValueError:
        pass  # not a number: torch's own default, as OpenMP would do


def write_learnable_idx(d: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> None:
    """IDX files (canonical Fashion-MNIST names) whose class is a bright 7x7 block at a class-specific place."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.int32)
        for i, c in enumerate(y):
            r, q = divmod(int(c), 5)
            x[i, 4 + 12 * r : 11 + 12 * r, 1 + 5 * q : 8 + 5 * q] += 180
        return np.clip(x, 0, 255).astype(np.uint8), y

    xt, yt = make(n_train)
    xs, ys = make(n_test)
    for key, arr in {"train_images": xt, "train_labels": yt, "test_images": xs, "test_labels": ys}.items():
        write_idx_gz(d / IDX_NAMES[key], arr)


@pytest.fixture
def bench_env(tmp_path, monkeypatch):
    """Point data, checkpoints and caches at tmp dirs; tiny learnable fmnist data in $BENCH_DATA."""
    data = tmp_path / "data"
    write_learnable_idx(data / "fmnist")
    env = {
        "BENCH_DATA": str(data),
        "BENCH_CHECKPOINTS": str(tmp_path / "ckpt"),
        "BENCH_SKIP_CHECKSUM": "1",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from harness import datasets

    monkeypatch.setattr(datasets, "SYSTEM_DATA_ROOT", tmp_path / "no-system-data")
    if hasattr(datasets, "clear_caches"):
        datasets.clear_caches()
    return tmp_path


def run_bench(*args: str, cwd=None, env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real ``bench`` console entry point in a subprocess (environment inherited)."""
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
