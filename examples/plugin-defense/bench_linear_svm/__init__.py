"""A linear multi-class SVM on raw pixels, packaged as a bench plugin (entry point ``bench.defenses``)."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from defenses.base import Defense


class LinearSVM(Defense):
    """Scores ``W x + b``; trained with the Crammer-Singer multi-class hinge loss + L2 penalty."""

    name = "linear-svm"
    paper = "Vuong, CIFAR-10 ResNet/SVM report (linear SVM baseline)"
    gradient_policy = "exact autograd gradient of the linear scores"

    def __init__(self, *, num_classes, input_shape, dataset):
        super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        self.linear = nn.Linear(math.prod(self.input_shape), num_classes)

    def predict(self, x, *, generator=None):
        return self.linear(x.flatten(1))

    @classmethod
    def default_train_config(cls, dataset):
        return {"epochs": 5, "lr": 1e-3, "batch_size": 256, "weight_decay": 1e-4}

    def fit(self, train, val, *, config, device, generator, progress=True):
        opt = torch.optim.Adam(self.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
        t0 = time.perf_counter()
        for _ in range(int(config["epochs"])):
            perm = torch.randperm(len(train.x), generator=generator)
            for i in range(0, len(perm), config["batch_size"]):
                idx = perm[i : i + config["batch_size"]]
                s = self.predict(train.x[idx].to(device))
                y = train.y[idx].to(device)
                margin = (s - s.gather(1, y[:, None]) + 1).scatter(1, y[:, None], 0)
                loss = margin.clamp_min(0).amax(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            val_acc = (self.predict(val.x.to(device)).argmax(1).cpu() == val.y).float().mean().item() if val is not None else float("nan")
        return {"epochs": int(config["epochs"]), "val_acc": val_acc, "train_wall_time_s": time.perf_counter() - t0}
