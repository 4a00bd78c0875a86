"""Checkpoints: safetensors weights + a model-card JSON, looked up and verified before loading.

A checkpoint for defense ``D`` on dataset ``S`` is the pair ``D-S.safetensors`` / ``D-S.json`` in
the first of these directories that has it: ``$BENCH_CHECKPOINTS``, the user cache
(``~/.cache/bench/checkpoints``), the shipped ``checkpoints/`` package. Weights are read with
safetensors (no pickle, so a checkpoint cannot run code); the card's sha256 must match the file.

**Training state** (``bench train`` writes it at the end of every epoch, ``bench train --resume``
continues from it bit for bit): ``D-S.state.safetensors`` next to the weights, one self-contained
file written atomically (temporary file + ``os.replace``) *before* the weights / card pair: the
model's state dict (``model/...``), the optimiser moments, the random generators' states (tensors)
and, in the safetensors header's metadata, one JSON document with the rest (optimiser
hyperparameters, scheduler state, epoch, planned epochs, the card). A training stopped at any
moment therefore leaves either the previous epoch's state file or the new one, never a torn one;
the card names the state file it belongs to (``train_state``: file, sha256, epoch). Old cards
without ``train_state`` load as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from harness.errors import CheckpointError
from benchcore.io import atomic_write, atomic_write_json, sha256_file
from benchcore.paths import user_checkpoint_dir

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


def shipped_dir() -> Path:
    """The ``checkpoints`` package directory (works for editable and regular installs)."""
    try:
        import checkpoints  # the shipped package

        return Path(checkpoints.__file__).resolve().parent
    except ImportError:
        return SHIPPED_DIR


def user_dir() -> Path:
    """Where ``bench train`` writes by default (:func:`benchcore.paths.user_checkpoint_dir`)."""
    return user_checkpoint_dir()


def search_dirs() -> list[Path]:
    """Checkpoint directories in look-up order."""
    dirs = []
    if os.environ.get("BENCH_CHECKPOINTS"):
        dirs.append(Path(os.environ["BENCH_CHECKPOINTS"]))
    dirs += [user_dir(), shipped_dir()]
    return dirs


def stem(defense: str, dataset: str) -> str:
    return f"{defense}-{dataset}"


def find_checkpoint(defense: str, dataset: str) -> Path | None:
    """Path of the first ``<defense>-<dataset>.safetensors`` in :func:`search_dirs`, or None."""
    for d in search_dirs():
        p = d / f"{stem(defense, dataset)}.safetensors"
        if p.is_file():
            return p
    return None


def save_checkpoint(module: torch.nn.Module, path: str | os.PathLike, card: dict) -> dict:
    """Write ``module``'s state dict as safetensors and its model card (with the file's sha256)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))
    card = dict(card, weights=path.name, sha256=sha256_file(path))
    atomic_write_json(path.with_suffix(".json"), card)
    return card


TRAIN_STATE_KEY = "bench-train-state"


def train_state_path(path: str | os.PathLike) -> Path:
    """``D-S.state.safetensors`` for the checkpoint ``D-S.safetensors``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.state.safetensors")


def save_train_state(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """Write a training state atomically (one file: tensors + ``meta`` as JSON metadata); returns its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # no shared storage
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={TRAIN_STATE_KEY: json.dumps(meta, allow_nan=True)}))
    return sha256_file(path)


def load_train_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)`` of a training state file (safetensors: no pickle)."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as fh:
            meta = json.loads((fh.metadata() or {})[TRAIN_STATE_KEY])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"training state {path} is not readable ({exc}); resume is impossible, train again without --resume") from None
    return tensors, meta


def read_card(path: str | os.PathLike) -> dict:
    """The model card next to a checkpoint file (empty dict if there is none)."""
    card = Path(path).with_suffix(".json")
    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"model card {card} is not valid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"model card {card} cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"model card {card} holds a JSON {type(data).__name__}, not an object; restore it or retrain with `bench train`")
    return data


def load_checkpoint(module: torch.nn.Module, path: str | os.PathLike) -> dict:
    """Load weights into ``module`` (strict); verify the card's hash; return the card (+ ``sha256``)."""
    path = Path(path)
    digest = sha256_file(path)
    card = read_card(path)
    if card.get("sha256") and card["sha256"] != digest:
        raise CheckpointError(f"checkpoint {path} does not match the sha256 in its model card (file changed or corrupt); retrain with `bench train`")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({exc}); delete it and retrain with `bench train`") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit the model ({first}); was it trained for another defense or dataset?") from None
    return dict(card, sha256=digest)
