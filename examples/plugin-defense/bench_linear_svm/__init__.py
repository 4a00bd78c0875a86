"""A linear multi-class SVM on raw pixels, packaged as a bench plugin (entry point ``bench.defenses``).

The loss is the one of the Vuong CIFAR-10 report ("Multiclass SVM or Hinge loss"), the
Weston-Watkins / cs231n multi-class hinge loss with margin ``Delta`` and L2 regularisation:

    L = 1/N sum_i sum_{j != y_i} max(0, f(x_i)_j - f(x_i)_{y_i} + Delta) + lambda sum_kl W_kl^2

with ``f(x) = W (x - mean) + b`` on flattened, mean-subtracted pixels (the report's preprocessing:
"subtract the image mean across ... training data"). The report trains on 0..255 pixels with SGD at
learning rate 1e-7, lambda = 2.5e-4, 1500 iterations; bench's inputs are in [0, 1], so the same
optimisation is SGD at ``lr = 1e-7 * 255^2`` with ``lambda / 255^2`` on the weights of the [0, 1]
pixels (the scores, and hence the loss, are then identical at every iteration: ``W' = 255 W``).
Batch 200 (cs231n's default; the report gives none), Delta = 1.

Weights: ``bench train --defense linear-svm`` writes a checkpoint as for any defense; the plugin
also ships one trained on Fashion-MNIST in its package (``bench_linear_svm/checkpoints/``), used when
bench's own checkpoint directories have none (:meth:`LinearSVM.load_external_weights`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import nn

from defenses.base import Defense

#: the report's pixel scale: its recipe is for 0..255 pixels
PIXEL_SCALE = 255.0
PACKAGE_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


def hinge_loss(scores: torch.Tensor, y: torch.Tensor, *, delta: float) -> torch.Tensor:
    """Mean over the batch of ``sum_{j != y} max(0, s_j - s_y + delta)`` (the report's data loss)."""
    margin = (scores - scores.gather(1, y[:, None]) + delta).scatter(1, y[:, None], 0.0)
    return margin.clamp_min(0).sum(1).mean()


class LinearSVM(Defense):
    """Scores ``W (x - mean) + b``; trained with the report's multi-class hinge loss + L2 penalty."""

    name = "linear-svm"
    paper = "Vuong 2020, CIFAR-10 ResNet/SVM report (linear multiclass SVM baseline, hinge loss with margin and L2 regularisation)"
    gradient_policy = "exact autograd gradient of the linear scores"

    def __init__(self, *, num_classes, input_shape, dataset):
        super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        d = math.prod(self.input_shape)
        self.linear = nn.Linear(d, num_classes)
        self.register_buffer("mean", torch.zeros(d))

    def predict(self, x, *, generator=None):
        return self.linear(x.flatten(1) - self.mean)

    def default_train_config(self, dataset):
        """The report's recipe in its own units (0..255 pixels): converted in :meth:`fit`."""
        return {"optimizer": "sgd", "lr_report": 1e-7, "reg_report": 2.5e-4, "delta": 1.0, "iterations": 1500, "batch_size": 200, "epochs": 1}

    def fit(self, train, val, *, config, device, generator, progress=True):
        """SGD on the report's loss; ``epochs`` repeats the ``iterations`` (the harness's epoch count)."""
        scale2 = PIXEL_SCALE ** 2
        lr, reg = float(config["lr_report"]) * scale2, float(config["reg_report"]) / scale2
        delta, bs = float(config["delta"]), int(config["batch_size"])
        iterations = int(config["iterations"]) * int(config.get("epochs", 1))
        self.to(device)
        with torch.no_grad():
            self.mean.copy_(train.x.flatten(1).mean(0).to(device))
        opt = torch.optim.SGD(self.linear.parameters(), lr=lr)
        t0 = time.perf_counter()
        history = []
        for it in range(iterations):
            idx = torch.randint(0, len(train.x), (bs,), generator=generator)  # sampling with replacement, as cs231n's SVM
            s = self.predict(train.x[idx].to(device))
            loss = hinge_loss(s, train.y[idx].to(device), delta=delta) + reg * self.linear.weight.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (it + 1) % 100 == 0:
                history.append({"iteration": it + 1, "loss": loss.item()})
        with torch.no_grad():
            val_acc = (self.predict(val.x.to(device)).argmax(1).cpu() == val.y).float().mean().item() if val is not None else float("nan")
        return {"epochs": int(config.get("epochs", 1)), "val_acc": val_acc, "history": history, "train_wall_time_s": time.perf_counter() - t0,
                "effective_recipe": {"lr": lr, "reg": reg, "iterations": iterations, "pixel_scale": PIXEL_SCALE}}

    def load_external_weights(self, *, norm=None):
        """bench's own checkpoint of ``linear-svm`` on this data set if there is one (``bench train``),
        else the one shipped in this package; the model card comes with it."""
        from harness.store.checkpoints import find_checkpoint, load_checkpoint, stem
        from harness.errors import CheckpointError

        path = find_checkpoint(self.name, self.dataset)
        if path is None:
            shipped = PACKAGE_CHECKPOINTS / f"{stem(self.name, self.dataset)}.safetensors"
            if not shipped.is_file():
                raise CheckpointError(f"no checkpoint for linear-svm on {self.dataset}; run `bench train --defense linear-svm --dataset {self.dataset}`")
            path = shipped
        card = load_checkpoint(self, path)
        card["path"] = str(path)
        return card
