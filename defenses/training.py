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
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

NOISE_SIGMA = {"mnist": 0.2, "fmnist": 0.2, "svhn": 0.01, "supertraffic10": 0.01, "gtsrb": 0.01, "cifar10": 0.01}


@dataclass
class TrainProgress:
    """Where a training stands after ``epoch`` finished epochs: what a resumable ``fit`` hands to its
    ``on_epoch_end`` callback and takes back as ``resume`` to continue bit for bit.

    The caller (:func:`harness.engine.models.train_defense`) owns the random generators: it saves their
    states with this and restores them before calling ``fit(resume=...)``.
    """

    epoch: int
    history: list[dict] = field(default_factory=list)
    #: optimiser state dicts by name (``"model"``; E-ABS also ``"discriminator"``)
    optimizers: dict[str, dict] = field(default_factory=dict)
    scheduler: dict | None = None
    #: further facts of the training that every epoch's card records and a resume gets back
    #: (JSON-able; e.g. the checkpoint a fine-tuning started from)
    extra: dict = field(default_factory=dict)


EpochEnd = Callable[[TrainProgress], None]


def restore_progress(resume: TrainProgress | None, optimizers: dict[str, torch.optim.Optimizer], scheduler) -> tuple[int, list[dict]]:
    """Load ``resume``'s optimiser / scheduler states; returns (first epoch to run, history so far)."""
    if resume is None:
        return 0, []
    if set(resume.optimizers) != set(optimizers):
        raise ValueError(f"training state has optimisers {sorted(resume.optimizers)}, this training uses {sorted(optimizers)}")
    for name, opt in optimizers.items():
        opt.load_state_dict(resume.optimizers[name])
    if scheduler is not None and resume.scheduler is not None:
        if set(resume.scheduler) >= set(scheduler.state_dict()):
            scheduler.load_state_dict(resume.scheduler)
        else:  # the resume changed the kind of schedule (e.g. a constant rate now annealed): continue at its epoch
            scheduler.last_epoch = int(resume.scheduler.get("last_epoch", resume.epoch))
        # the rate of the next epoch comes from the schedule in force: a resume may have changed the
        # lambda (more epochs, a new anneal) while the optimiser came back with the old schedule's last
        # rate; for an unchanged schedule this is the restored rate (LambdaLR's own formula)
        factors = [f(scheduler.last_epoch) for f in getattr(scheduler, "lr_lambdas", [])]
        for group, base, f in zip(opt_groups(optimizers), scheduler.base_lrs, factors):
            group["lr"] = base * f
    return int(resume.epoch), [dict(h) for h in resume.history]


def opt_groups(optimizers: dict[str, torch.optim.Optimizer]) -> list[dict]:
    """The parameter groups of the first optimiser (the one the schedule drives)."""
    return list(next(iter(optimizers.values())).param_groups)


def report_progress(on_epoch_end: EpochEnd | None, epoch: int, history: list[dict], optimizers: dict[str, torch.optim.Optimizer], scheduler, extra: dict | None = None) -> None:
    if on_epoch_end is not None:
        on_epoch_end(TrainProgress(epoch, [dict(h) for h in history], {k: o.state_dict() for k, o in optimizers.items()}, None if scheduler is None else scheduler.state_dict(), dict(extra or {})))


def encode_state(state, tensors: dict[str, torch.Tensor], prefix: str):
    """JSON-able copy of a state dict (optimiser, scheduler) with every tensor moved into
    ``tensors`` under ``prefix/...`` (for safetensors) and replaced by ``{"__tensor__": name}``.
    Dicts with non-string keys (optimiser states keyed by parameter index) and tuples keep their types."""
    if isinstance(state, torch.Tensor):
        name = f"{prefix}#{len(tensors)}"
        tensors[name] = state
        return {"__tensor__": name}
    if isinstance(state, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in state):
            return {k: encode_state(v, tensors, prefix) for k, v in state.items()}
        return {"__items__": [[encode_state(k, tensors, prefix), encode_state(v, tensors, prefix)] for k, v in state.items()]}
    if isinstance(state, tuple):
        return {"__tuple__": [encode_state(v, tensors, prefix) for v in state]}
    if isinstance(state, list):
        return [encode_state(v, tensors, prefix) for v in state]
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise TypeError(f"cannot store a {type(state).__name__} in a training state")


def decode_state(obj, tensors: dict[str, torch.Tensor]):
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {decode_state(k, tensors): decode_state(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
        return {k: decode_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    return obj


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


#: training-config keys a recipe may set beyond its defaults (``bench train --set KEY=VALUE``)
OPTIONAL_CONFIG_KEYS = frozenset({"optimizer", "lr_schedule", "warmup_epochs", "anneal_epochs", "lr_halve_every", "weight_decay", "momentum", "nesterov", "augment", "crop_padding"})


def lr_factor(epoch: int, *, epochs: int, warmup: int = 0, anneal: int | None = None) -> float:
    """Learning-rate multiplier for (0-based) ``epoch`` of ``epochs``: linear warm-up over the first
    ``warmup`` epochs, constant, then a cosine decay to ~0 over the last ``anneal`` epochs (``None``:
    every epoch after the warm-up). The cosine is sampled at the end of each epoch, so the last epoch
    still trains at a small positive rate."""
    if warmup and epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = epochs - warmup if anneal is None else int(anneal)
    start = epochs - span
    if span <= 0 or epoch < start:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - start + 1) / (span + 1)))


def make_scheduler(opt: torch.optim.Optimizer, config: dict, epochs: int):
    """Per-epoch schedule from the training config.

    ``lr_schedule = "cosine"``: without ``warmup_epochs`` / ``anneal_epochs`` torch's cosine to 0
    over ``epochs`` (the ResNet recipe); with them :func:`lr_factor` (warm-up, constant, cosine over
    the last ``anneal_epochs``; the short-budget recipe of the generative models, issue 14).
    Otherwise halve every ``lr_halve_every`` epochs (thesis; 0: constant)."""
    schedule = str(config.get("lr_schedule", "") or "")
    warmup = int(config.get("warmup_epochs", 0) or 0)
    anneal = config.get("anneal_epochs")
    if schedule == "cosine" and not warmup and anneal is None:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if schedule == "cosine":
        if warmup < 0 or (anneal is not None and not 0 < int(anneal) <= epochs):
            raise ValueError(f"warmup_epochs must be >= 0 and anneal_epochs in 1..epochs ({epochs}); got {warmup}, {anneal}")
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_factor(e, epochs=epochs, warmup=warmup, anneal=None if anneal is None else int(anneal)))
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
    resume: TrainProgress | None = None,
    on_epoch_end: EpochEnd | None = None,
    extra: dict | None = None,
) -> dict:
    """Minimise cross-entropy of ``model(x + noise)``; returns metrics incl. per-epoch val accuracy.

    Config keys: ``epochs``, ``batch_size``, ``lr``, ``noise_sigma``, ``lr_halve_every`` (thesis
    recipe, Adam) and optionally ``optimizer`` ("adam"/"sgd"), ``momentum``, ``weight_decay``,
    ``nesterov``, ``lr_schedule`` ("cosine"), ``augment`` ("crop"/"crop-flip"), ``crop_padding``.
    ``loss_fn(model, xb, yb, gen) -> loss`` replaces the default noisy cross-entropy (used by
    adversarial training; it is called in train mode and must leave the model in train mode).
    ``val_fn(model) -> {name: value}`` adds metrics to every epoch's history entry, the progress
    bar and the returned metrics (called in eval mode). All randomness (shuffling, noise, crops)
    comes from ``generator``. ``resume`` continues a training after ``resume.epoch`` of the
    ``epochs`` epochs (optimiser and schedule as they were); ``on_epoch_end`` receives the
    :class:`TrainProgress` after every epoch (``bench train`` writes the checkpoint there), with
    ``extra`` (facts of this training for every epoch's card, :attr:`TrainProgress.extra`).
    """
    epochs = int(config["epochs"])
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    bs = int(config["batch_size"])
    sigma = float(config.get("noise_sigma", 0.0))
    augment = str(config.get("augment", "") or "")
    padding = int(config.get("crop_padding", 4))
    model.to(device)
    opt = make_optimizer(model.parameters(), config)
    sched = make_scheduler(opt, config, epochs)
    start, history = restore_progress(resume, {"model": opt}, sched)
    x_all, y_all = train.x, train.y
    n = len(x_all)
    t0 = time.perf_counter()
    steps = math.ceil(n / bs)
    bar = tqdm(total=(epochs - start) * steps, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True)
    for epoch in range(start, epochs):
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
        report_progress(on_epoch_end, epoch + 1, history, {"model": opt}, sched, extra)
    bar.close()
    model.eval()
    extra = {k: v for k, v in history[-1].items() if k not in ("epoch", "train_loss", "val_acc")}
    return {"epochs": epochs, "val_acc": history[-1]["val_acc"], **extra, "history": history, "train_wall_time_s": time.perf_counter() - t0}
