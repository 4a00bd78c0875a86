"""Adversarially trained CNNs ``adv-linf`` / ``adv-l2`` (Madry et al. 2018; thesis section 2.3 "Models").

Thesis section 2.3: "For the adversarially trained model, we use the pre-trained CNN model and
retrain the model for 200 epochs with a learning rate 0.0001 and no learning rate decay" (Adam,
batch 512), without the noise augmentation of the other models. Each training step solves the inner
maximisation of Madry et al. eq. (2.1), ``min_theta E max_{||delta|| <= eps} L(theta, x + delta, y)``,
approximately with PGD and takes an Adam step on the cross-entropy of the PGD examples.

* Start: the trained ``cnn`` checkpoint of the same data set (and arch), declared by
  :meth:`AdversarialCNN.init_checkpoint_name` and found through the harness's checkpoint store
  (:class:`~defenses.base.TrainingServices`). If there is none, training stops with a
  :class:`~benchcore.errors.BenchUserError` that gives the ``bench train`` command for it (we do not
  train the 50-epoch CNN implicitly inside another training).
* Inner PGD: the harness's foolbox adapter (:func:`harness.attacks.run_attack` with an
  :class:`~threat_models.AttackSpec`, handed to ``fit`` as ``TrainingServices.run_attack``; this
  package does not import the harness), never a private copy: 10 steps, ``rel_stepsize`` 0.25 (step
  ``eps / 4``, i.e. 2.5 eps of travel), random start, at the data set's default eps
  (:func:`threat_models.default_threat`: FMNIST L∞ 0.1, L2 1.5). The network is in eval mode while
  attacked (BatchNorm statistics and dropout fixed) and in train mode for the update.
* Epochs: a CPU budget instead of the thesis's 200 (``EPOCHS``; PGD-10 training costs ~11 clean
  epochs per epoch). Every epoch reports clean validation accuracy and PGD validation accuracy on a
  fixed subset of the first ``val_pgd_samples`` validation images (same attack, fixed seed); both go
  into the model card's ``history``. The PGD validation runs at the data set's default eps (the
  evaluation threat, ``val_pgd_eps``) also when ``--set eps=...`` trains at another one.
* ``--set clean_weight=W`` (default 0, the thesis's Madry loss) trains on ``W CE(x) + (1 - W)
  CE(x_adv)`` (Goodfellow et al. 2015, eq. 6): the clean and PGD halves go through one forward pass.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import nn

from defenses.base import TrainingServices
from defenses.cnn import CNN, arch_checkpoint_name
from defenses.registry import register
from defenses.training import EpochEnd, TrainProgress, train_classifier
from benchcore.errors import BenchUserError
from threat_models import AttackSpec, ThreatModel, default_threat

#: CPU-budget epochs per data set (thesis: 200). FMNIST, 106 batches of 512 per epoch: PGD-10
#: training costs ~11 clean batches per batch, ~1 min per epoch on an idle 2-core CPU; measured
#: 19-23 min for the 10 epochs on one thread of a shared 2-core machine (model cards in checkpoints/).
EPOCHS = {"mnist": 10, "fmnist": 10}
DEFAULT_EPOCHS = 10


def pgd_spec(config: dict) -> AttackSpec:
    """The training PGD of ``config`` as an AttackSpec for the harness's foolbox adapter."""
    steps = int(config["pgd_steps"])
    if steps < 1:
        raise ValueError(f"pgd_steps must be >= 1, got {steps}")
    return AttackSpec("pgd", params=(("steps", steps), ("rel_stepsize", float(config["pgd_rel_stepsize"])), ("random_start", True)))


def pgd_examples(run_attack: Callable[..., list[torch.Tensor]], model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, spec: AttackSpec, *, seed: int) -> torch.Tensor:
    """PGD examples for ``model`` by ``run_attack`` (:attr:`TrainingServices.run_attack`; the model is
    attacked in eval mode and its previous mode restored), projected into ``threat``."""
    was = model.training
    model.eval()
    try:
        adv = run_attack(model, x, y, threat, spec, seed=seed)[0]
    finally:
        model.train(was)
    return threat.project(adv.detach(), x)


def clean_weight(config: dict) -> float:
    """The weight ``w`` of the clean cross-entropy in the training loss ``w CE(x) + (1 - w) CE(x_adv)``
    (Goodfellow et al. 2015, eq. 6, who use 0.5); 0 (the default) is Madry et al.'s loss on the PGD
    examples alone, as the thesis trains. A knob on the clean / robust trade-off beside the training eps."""
    w = config.get("clean_weight", 0.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) < 1.0:
        raise BenchUserError(f"training config: clean_weight must be a number in [0, 1), got {w!r} (1 would train without adversarial examples: use the cnn)")
    return float(w)


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


class AdversarialCNN(CNN):
    """The CNN (same network, ``predict`` = logits) fine-tuned with PGD adversarial training."""

    norm: ClassVar[str] = ""
    gradient_policy = "exact autograd gradient of the logits"
    #: the harness's attacks and checkpoint store, handed over before ``fit`` (:meth:`use_training_services`)
    _services: TrainingServices | None = None

    def default_train_config(self, dataset: str) -> dict:
        """Thesis section 2.3: Adam, lr 1e-4, no decay, batch 512, from the trained CNN; PGD-10 at the default eps."""
        threat = default_threat(dataset, self.norm)
        return {
            "init": self.init_checkpoint_name(),
            "optimizer": "adam",
            "lr": 1e-4,
            "lr_halve_every": 0,
            "batch_size": 512,
            "epochs": EPOCHS.get(dataset, DEFAULT_EPOCHS),
            "noise_sigma": 0.0,
            "attack": "pgd",
            "norm": self.norm,
            "eps": threat.eps,
            "pgd_steps": 10,
            "pgd_rel_stepsize": 0.25,
            "val_pgd_samples": 500,
            "clean_weight": 0.0,
        }

    def init_checkpoint_name(self) -> str:
        """The checkpoint fine-tuning starts from: the ``cnn`` of the same arch."""
        return arch_checkpoint_name(CNN.name, self.arch)

    def checkpoint_name(self) -> str:
        return arch_checkpoint_name(self.name, self.arch)

    def extra_info(self) -> dict:
        return {"arch": self.arch, "adversarial_training": f"PGD {self.norm}"}

    def use_training_services(self, services: TrainingServices) -> None:
        """Keep the harness's PGD and checkpoint store for :meth:`fit`."""
        self._services = services

    def _require_services(self) -> TrainingServices:
        if self._services is None:
            raise RuntimeError(f"{self.name} trains with the harness's PGD and checkpoint store: call use_training_services() before fit() "
                               "(harness.engine.models.train_defense, i.e. `bench train`, does)")
        return self._services

    def _load_init(self) -> dict:
        services = self._require_services()
        name = self.init_checkpoint_name()
        path = services.find_checkpoint(name, self.dataset)
        if path is None:
            arch = "" if self.arch == "table2.1" else f" --arch {self.arch}"
            raise BenchUserError(
                f"{self.name} fine-tunes the trained cnn, but there is no {name} checkpoint for {self.dataset}; "
                f"train it first with `bench train --defense cnn --dataset {self.dataset}{arch}`"
            )
        card = services.load_checkpoint(self, path)  # same module layout as the CNN's checkpoint
        return {"path": str(path), "sha256": card["sha256"], "val_acc": card.get("val_acc"), "epochs": card.get("epochs")}

    def fit(self, train, val, *, config, device, generator, progress=True, resume: TrainProgress | None = None, on_epoch_end: EpochEnd | None = None) -> dict:
        """Fine-tune from :meth:`init_checkpoint_name` (Madry PGD training). ``resume`` continues an
        interrupted fine-tuning bit for bit (``bench train --resume``: the weights, optimiser, schedule
        and random state come from its training state, the init checkpoint is not loaded again);
        ``on_epoch_end`` receives the progress after every epoch, with the init checkpoint in ``extra``."""
        if config.get("norm", self.norm) != self.norm:
            raise ValueError(f"{self.name} trains against {self.norm} PGD; the config says norm={config['norm']!r}")
        init = resume.extra.get("init_checkpoint") if resume is not None else self._load_init()
        run_attack = self._require_services().run_attack
        self.to(device)
        threat = ThreatModel(norm=self.norm, eps=float(config["eps"]))
        spec = pgd_spec(config)

        w = clean_weight(config)

        def loss_fn(model, xb, yb, gen):
            adv = pgd_examples(run_attack, model, xb, yb, threat, spec, seed=_seed(gen))
            if w == 0.0:
                return nn.functional.cross_entropy(model(adv), yb)
            # Goodfellow et al. (2015) eq. 6: w CE(x) + (1 - w) CE(x_adv), one forward over both halves
            clean, robust = model(torch.cat([xb, adv])).split(len(xb))
            return w * nn.functional.cross_entropy(clean, yb) + (1 - w) * nn.functional.cross_entropy(robust, yb)

        val_fn = None
        n_val = int(config.get("val_pgd_samples", 0))
        # validated at the evaluation threat (the data set's default eps), also when training at
        # another eps (`--set eps=...`, tuning the clean / robust trade-off): comparable across recipes
        evaluation = ThreatModel(norm=self.norm, eps=default_threat(self.dataset, self.norm).eps)
        if val is not None and len(val.x) and n_val > 0:
            xv, yv = val.x[:n_val].to(device), val.y[:n_val].to(device)

            def val_fn(model):
                adv = pgd_examples(run_attack, model, xv, yv, evaluation, spec, seed=0)  # fixed seed: comparable across epochs
                with torch.no_grad():
                    return {"val_pgd_acc": (model(adv).argmax(1) == yv).float().mean().item(), "val_pgd_eps": evaluation.eps}

        metrics = train_classifier(self.net, train, val, config=config, device=device, generator=generator, progress=progress, loss_fn=loss_fn, val_fn=val_fn,
                                   desc=f"train {self.checkpoint_name()}", resume=resume, on_epoch_end=on_epoch_end, extra={"init_checkpoint": init})
        return dict(metrics, init_checkpoint=init)


@register
class AdvLinf(AdversarialCNN):
    """Adv-L∞ of thesis Tables 2.2-2.5: the CNN adversarially trained with L∞ PGD."""

    name = "adv-linf"
    paper = "Madry et al. 2018 PGD adversarial training; Ju 2021 thesis section 2.3 (Adv-L∞, fine-tuned CNN)"
    norm = "linf"


@register
class AdvL2(AdversarialCNN):
    """Adv-L2 of thesis Tables 2.2-2.5: the CNN adversarially trained with L2 PGD."""

    name = "adv-l2"
    paper = "Madry et al. 2018 PGD adversarial training; Ju 2021 thesis section 2.3 (Adv-L2, fine-tuned CNN)"
    norm = "l2"
