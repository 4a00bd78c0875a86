"""Training loops shared by the classifier defenses (thesis section 2.3 "Models").

The thesis trains every model with Adam, batch size 512, initial learning rate 1e-3 halved every
200 epochs, and additive Gaussian noise augmentation (sigma 0.2 for MNIST/Fashion-MNIST, 0.01 for
SuperTraffic-10/SVHN). The adversarially trained models fine-tune the CNN with lr 1e-4.
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
    desc: str = "train",
) -> dict:
    """Minimise cross-entropy of ``model(x + noise)`` with Adam; returns metrics incl. per-epoch val accuracy.

    ``loss_fn(model, xb, yb, gen) -> loss`` replaces the default noisy cross-entropy (used by
    adversarial training). All randomness (shuffling, noise) comes from ``generator``.
    """
    epochs = int(config["epochs"])
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    bs = int(config["batch_size"])
    sigma = float(config.get("noise_sigma", 0.0))
    opt = torch.optim.Adam(model.parameters(), lr=float(config["lr"]))
    halve = int(config.get("lr_halve_every", 0) or 0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=halve, gamma=0.5) if halve else None
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
        history.append({"epoch": epoch + 1, "train_loss": total / seen, "val_acc": val_acc})
        bar.set_postfix(loss=f"{total / seen:.3f}", val_acc=f"{val_acc:.3f}")
    bar.close()
    model.eval()
    return {"epochs": epochs, "val_acc": history[-1]["val_acc"], "history": history, "train_wall_time_s": time.perf_counter() - t0}
