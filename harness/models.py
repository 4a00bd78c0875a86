"""Build, train and load defenses: registry name + dataset -> ready-to-evaluate Defense."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from defenses.registry import get_defense
from harness import datasets
from harness.checkpoints import find_checkpoint, load_checkpoint, save_checkpoint, stem, user_dir
from harness.errors import BenchUserError
from harness.provenance import code_commit, command_line, device_name, package_versions


def build_defense(name: str, dataset: str):
    """Instantiate defense ``name`` for ``dataset`` (untrained)."""
    cls = get_defense(name)
    info = datasets.get_info(dataset)
    if dataset not in cls.datasets:
        raise BenchUserError(f"defense {name!r} does not support dataset {dataset!r} (supports: {', '.join(cls.datasets)})")
    return cls(num_classes=info.num_classes, input_shape=info.shape, dataset=dataset)


def _probe_seconds_per_epoch(model, train, config, device) -> float:
    """Time 2 training batches on a throw-away copy and extrapolate one epoch."""
    probe = copy.deepcopy(model)
    bs = int(config.get("batch_size", 512))
    sub = type("S", (), {})()
    sub.x, sub.y = train.x[: 2 * bs], train.y[: 2 * bs]
    cfg = dict(config, epochs=1)
    t0 = time.perf_counter()
    probe.fit(sub, None, config=cfg, device=device, generator=torch.Generator().manual_seed(0), progress=False)
    per_batch = (time.perf_counter() - t0) / max(1, -(-len(sub.x) // bs))
    return per_batch * -(-len(train.x) // bs)


def train_defense(
    name: str,
    dataset: str,
    *,
    device: torch.device,
    epochs: int | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    announce=print,
) -> Path:
    """Train ``name`` on ``dataset``'s train split (val split for monitoring), save checkpoint + card."""
    model = build_defense(name, dataset)
    if not model.trainable:
        raise BenchUserError(f"defense {name!r} has no weights to train")
    config = model.default_train_config(dataset)
    if epochs is not None:
        if epochs < 1:
            raise BenchUserError(f"--epochs must be >= 1, got {epochs}")
        config = dict(config, epochs=int(epochs))
    train = datasets.load(dataset, "train")
    val = datasets.load(dataset, "val")
    model.to(device)
    per_epoch = _probe_seconds_per_epoch(model, train, config, device) if "epochs" in config else float("nan")
    recipe = ", ".join(f"{k}={v}" for k, v in config.items())
    announce(f"training {name} on {dataset} ({len(train.x)} train / {len(val.x)} val images) with {recipe}; estimated {per_epoch * config.get('epochs', 1) / 60:.1f} min on {device_name(device)}")
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    metrics = model.fit(train, val, config=config, device=device, generator=gen, progress=progress)
    wall = time.perf_counter() - t0
    out = Path(out_dir) if out_dir else user_dir()
    path = out / f"{stem(model.checkpoint_name(), dataset)}.safetensors"
    card = {
        "defense": name,
        "dataset": dataset,
        "command": command_line(),
        "config": config,
        "epochs": metrics.get("epochs", config.get("epochs")),
        "seed": seed,
        "wall_time_s": round(wall, 1),
        "val_acc": metrics.get("val_acc"),
        "history": metrics.get("history", []),
        "data_checksum": train.checksum,
        "train_size": len(train.x),
        "code_commit": code_commit(),
        "device": device_name(device),
        "versions": package_versions(),
    }
    save_checkpoint(model.checkpoint_module(), path, card)
    announce(f"saved {path} (val accuracy {metrics.get('val_acc', float('nan')):.4f}, {wall / 60:.1f} min)")
    return path


def load_defense(
    name: str,
    dataset: str,
    *,
    device: torch.device,
    train_if_missing: bool = True,
    progress: bool = True,
    announce=print,
):
    """A ready defense in eval mode plus its checkpoint card (``{}`` for weight-free defenses)."""
    model = build_defense(name, dataset)
    card: dict = {}
    if model.trainable:
        ckpt_name = model.checkpoint_name()
        path = find_checkpoint(ckpt_name, dataset)
        if path is None:
            if not train_if_missing:
                raise BenchUserError(f"no checkpoint for {ckpt_name} on {dataset}; run `bench train --defense {ckpt_name} --dataset {dataset}`")
            announce(f"no checkpoint for {ckpt_name} on {dataset}: training it first")
            path = train_defense(ckpt_name, dataset, device=device, progress=progress, announce=announce)
        card = load_checkpoint(model.checkpoint_module(), path)
        card["path"] = str(path)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, card
