"""Provenance recorded in result manifests and model cards: code commit, package versions, device."""

from __future__ import annotations

import platform
import subprocess
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

_PACKAGES = ("robust-bench-harness", "torch", "foolbox", "numpy", "pyautoattack", "statsmodels", "safetensors")


# What "the code" is for ``+dirty``: a modified result file, report or checkpoint in the working tree does not change
# the code that produced a result (a sweep merges while other result files are modified); a Python file, the
# package's data (embedded data sets) or the install's pins do.
_CODE_PATHSPECS = (":(glob)**/*.py", "harness", "pyproject.toml", "constraints.txt")


@lru_cache(maxsize=1)
def code_commit() -> str:
    """``git`` commit of the source tree (``+dirty`` when its code has local changes), or "unknown"."""
    return _code_commit_of(Path(__file__).resolve().parent.parent)


def _code_commit_of(root: Path) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *_CODE_PATHSPECS],
                               cwd=root, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.machine()}:{torch.get_num_threads()} threads"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. ``cuda`` without a GPU is a user error. On CUDA,
    TF32 is switched off (:func:`full_fp32`)."""
    from harness.errors import BenchUserError

    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchUserError("--device cuda was requested but torch sees no CUDA device; use --device cpu or auto")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise BenchUserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        full_fp32()
    return device


def full_fp32() -> None:
    """Full fp32 arithmetic on CUDA: torch lets cuDNN convolutions run in TF32 by default on Ampere
    and later GPUs (about 3 significant digits fewer than fp32), and matrix products where a program
    allows it. A result computed on a GPU then differs from one computed on a CPU by more than its
    random draws and summation order, and its verification (the decision at an adversarial
    candidate that sits on the boundary) by the GPU's rounding. Both are switched off for every bench
    command on a GPU; a defense that wants lower precision says so itself (E-ABS ``precision=bf16``)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def command_line() -> str:
    argv0 = sys.argv[0] if sys.argv else ""
    is_bench = argv0.endswith("bench") or argv0.replace("\\", "/").endswith("harness/cli.py")  # console script or python -m harness.cli
    return " ".join(["bench", *sys.argv[1:]]) if is_bench else " ".join(sys.argv)
