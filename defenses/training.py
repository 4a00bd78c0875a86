"""Training loops shared by the classifier defenses (thesis section 2.3 "Models").

The thesis trains every model with Adam, batch size 512, initial learning rate 1e-3 halved every
200 epochs, and additive Gaussian noise augmentation (sigma 0.2 for MNIST/Fashion-MNIST, 0.01 for
SuperTraffic-10/SVHN). The adversarially trained models fine-tune the CNN with lr 1e-4
(:mod:`defenses.adversarial`). The ResNet-18 option (:mod:`defenses.resnet`) uses the usual CIFAR
recipe instead: SGD with momentum and weight decay, a cosine learning-rate schedule, random crops
and flips; the config keys for those are optional, so the thesis recipes read as before.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm.auto import tqdm

NOISE_SIGMA = {"mnist": 0.2, "fmnist": 0.2, "svhn": 0.01, "supertraffic10": 0.01, "gtsrb": 0.01, "cifar10": 0.01}


def supervised_recipe(dataset: str) -> dict:
    """Thesis recipe for the CNN on ``dataset`` (50 epochs: a CPU budget; the thesis trains 500)."""
    return {"optimizer": "adam", "lr": 1e-3, "batch_size": 512, "epochs": 50, "lr_halve_every": 200, "noise_sigma": NOISE_SIGMA.get(dataset, 0.01)}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device, batch_size: int = 1000) -> float:
    """Clean accuracy of ``model(x)`` logits, in eval mode."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size].to(device))
        correct += (out.argmax(1).cpu() == y[i : i + batch_size]).sum().item()
    model.train(was)
    return correct / max(1, len(x))


AUGMENTATIONS = ("", "crop", "crop-flip")


def make_optimizer(params, config: dict) -> torch.optim.Optimizer:
    """Adam (default; thesis section 2.3) or SGD with ``momentum`` / ``weight_decay`` / ``nesterov``."""
    name = str(config.get("optimizer", "adam")).lower()
    lr = float(config["lr"])
    wd = float(config.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(config.get("momentum", 0.0)), weight_decay=wd, nesterov=bool(config.get("nesterov", False)))
    raise ValueError(f"unknown optimizer {name!r} in the training config; use 'adam' or 'sgd'")


def make_scheduler(opt: torch.optim.Optimizer, config: dict, epochs: int):
    """Per-epoch schedule: ``lr_schedule = "cosine"`` (to 0 over ``epochs``), else halve every ``lr_halve_every`` epochs (0: constant)."""
    schedule = str(config.get("lr_schedule", "") or "")
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if schedule not in ("", "step"):
        raise ValueError(f"unknown lr_schedule {schedule!r} in the training config; use 'cosine' or leave it out")
    halve = int(config.get("lr_halve_every", 0) or 0)
    return torch.optim.lr_scheduler.StepLR(opt, step_size=halve, gamma=0.5) if halve else None


def augment_batch(xb: torch.Tensor, *, mode: str, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random ``HxW`` crops of the zero-padded batch (``"crop"``), plus horizontal flips with p=0.5 (``"crop-flip"``).

    Vectorised over the batch; offsets and flips are drawn on the CPU from ``generator``.
    """
    if mode not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {mode!r} in the training config; use one of {', '.join(repr(a) for a in AUGMENTATIONS)}")
    if not mode:
        return xb
    b, c, h, w = xb.shape
    if padding > 0:
        padded = nn.functional.pad(xb, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(xb.device)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(xb.device)
        rows = (oy[:, None] + torch.arange(h, device=xb.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=xb.device))[:, None, None, :]
        xb = padded[torch.arange(b, device=xb.device)[:, None, None, None], torch.arange(c, device=xb.device)[None, :, None, None], rows, cols]
    if mode == "crop-flip":
        flip = (torch.rand(b, generator=generator) < 0.5).to(xb.device)
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
    return xb


def train_classifier(
    model: nn.Module,
    train,
    val,
    *,
    config: dict,
    device: torch.device,
    generator: torch.Generator,
    progress: bool = True,
    loss_fn=None,
    val_fn=None,
    desc: str = "train",
) -> dict:
    """Minimise cross-entropy of ``model(x + noise)``; returns metrics incl. per-epoch val accuracy.

    Config keys: ``epochs``, ``batch_size``, ``lr``, ``noise_sigma``, ``lr_halve_every`` (thesis
    recipe, Adam) and optionally ``optimizer`` ("adam"/"sgd"), ``momentum``, ``weight_decay``,
    ``nesterov``, ``lr_schedule`` ("cosine"), ``augment`` ("crop"/"crop-flip"), ``crop_padding``.
    ``loss_fn(model, xb, yb, gen) -> loss`` replaces the default noisy cross-entropy (used by
    adversarial training; it is called in train mode and must leave the model in train mode).
    ``val_fn(model) -> {name: value}`` adds metrics to every epoch's history entry, the progress
    bar and the returned metrics (called in eval mode). All randomness (shuffling, noise, crops)
    comes from ``generator``.
    """
    epochs = int(config["epochs"])
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    bs = int(config["batch_size"])
    sigma = float(config.get("noise_sigma", 0.0))
    augment = str(config.get("augment", "") or "")
    padding = int(config.get("crop_padding", 4))
    opt = make_optimizer(model.parameters(), config)
    sched = make_scheduler(opt, config, epochs)
    x_all, y_all = train.x, train.y
    n = len(x_all)
    history = []
    t0 = time.perf_counter()
    model.to(device)
    steps = math.ceil(n / bs)
    bar = tqdm(total=epochs * steps, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=generator)
        total, seen = 0.0, 0
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            xb, yb = x_all[idx].to(device), y_all[idx].to(device)
            if augment:
                xb = augment_batch(xb, mode=augment, padding=padding, generator=generator)
            if loss_fn is None:
                if sigma > 0:
                    noise = torch.randn(xb.shape, generator=generator).to(device) * sigma
                    xb = (xb + noise).clamp(0, 1)
                loss = nn.functional.cross_entropy(model(xb), yb)
            else:
                loss = loss_fn(model, xb, yb, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            bar.update(1)
        if sched is not None:
            sched.step()
        val_acc = accuracy(model, val.x, val.y, device=device) if val is not None and len(val.x) else float("nan")
        entry = {"epoch": epoch + 1, "train_loss": total / seen, "val_acc": val_acc}
        if val_fn is not None:
            model.eval()
            entry.update({k: float(v) for k, v in val_fn(model).items()})
        history.append(entry)
        bar.set_postfix(loss=f"{total / seen:.3f}", **{k: f"{v:.3f}" for k, v in entry.items() if k.startswith("val_")})
    bar.close()
    model.eval()
    extra = {k: v for k, v in history[-1].items() if k not in ("epoch", "train_loss", "val_acc")}
    return {"epochs": epochs, "val_acc": history[-1]["val_acc"], **extra, "history": history, "train_wall_time_s": time.perf_counter() - t0}
