"""Wrappers: a defense in front of (or around) another registered defense, by plain composition.

A :class:`WrapperDefense` holds an instance of its base defense in ``self.base`` and answers every
hook of the contract for it, once, here: the checkpoint (name, module, model card), the training
recipe and ``fit``, the threat model, the smoke-test budget, the training services, external
weights, ``extra_info`` (the base's, after the wrapper's own fields). A concrete wrapper overrides
only what it changes (``predict``, ``predict_draws``, ``abstain``, its own options) and is made
per base class by :func:`wrapper_class`, since the registry keys a class by its ``name``
(``binary-cnn``, ``vsmooth-cnn``, ...).

A wrapper's constructor takes its base's keyword options plus its own (:attr:`WrapperDefense.own_options`,
with their defaults); :meth:`WrapperDefense.option_names` declares both to the harness
(``bench run --option KEY=VALUE``). Capabilities that the wrapper changes are not delegated: a
certified radius of the base says nothing about the wrapped decision, and a reject threshold is
calibrated for the base's scores, so a wrapper has neither unless it declares them itself.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from defenses.base import Defense, TrainingServices


class WrapperDefense(Defense):
    """A defense that wraps ``base_class``: ``self.base`` is the base instance, built with the base's options.

    Without overrides it is the identity wrapper (same decision as the base).
    """

    #: the wrapped Defense class (set per base by :func:`wrapper_class`)
    base_class: ClassVar[type[Defense]] = Defense
    #: the wrapper's own constructor options and their defaults; all other options go to the base
    own_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, num_classes: int, input_shape: tuple[int, int, int], dataset: str, **options: Any):
        super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        base_options = {k: v for k, v in options.items() if k not in self.own_options}
        self.base = self.base_class(num_classes=num_classes, input_shape=input_shape, dataset=dataset, **base_options)

    def own(self, options: dict[str, Any]) -> dict[str, Any]:
        """The wrapper's own options out of the constructor's ``options``, defaults filled in."""
        return {key: options.get(key, default) for key, default in self.own_options.items()}

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The base's options, then the wrapper's own."""
        return (*cls.base_class.option_names(), *cls.own_options)

    # -- the decision: the base's unless overridden --------------------------------------------
    def predict(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.base.predict(x, generator=generator)

    def predict_draws(self, x: torch.Tensor, *, draws: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.base.predict_draws(x, draws=draws, generator=generator)

    def abstain(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.base.abstain(x, scores)

    # -- everything else belongs to the base ------------------------------------------------------
    def wrapped_base(self) -> Defense:
        return self.base

    def checkpoint_name(self) -> str:
        """The base's checkpoint (a wrapper has no weights of its own)."""
        return self.base.checkpoint_name()

    def checkpoint_module(self) -> torch.nn.Module:
        return self.base.checkpoint_module()

    def init_checkpoint_name(self) -> str | None:
        return self.base.init_checkpoint_name()

    def load_external_weights(self, *, norm: str | None) -> dict | None:
        return self.base.load_external_weights(norm=norm)

    def load_card(self, card: dict) -> None:
        """Settings of the checkpoint's card belong to the base."""
        self.base.load_card(card)

    def default_train_config(self, dataset: str) -> dict:
        return self.base.default_train_config(dataset)

    def use_training_services(self, services: TrainingServices) -> None:
        self.base.use_training_services(services)

    def fit(self, train, val, *, config, device, generator, progress=True) -> dict:
        """Train the base (the checkpoint is the base's)."""
        return self.base.fit(train, val, config=config, device=device, generator=generator, progress=progress)

    def set_threat(self, norm: str, eps: float) -> None:
        self.base.set_threat(norm, eps)

    def use_smoke_test_budget(self) -> None:
        self.base.use_smoke_test_budget()

    def wrapper_info(self) -> dict[str, Any]:
        """The wrapper's own metadata, recorded between ``base`` and the base's ``extra_info``."""
        return {}

    def extra_info(self) -> dict[str, Any]:
        return {"base": self.base_class.name, **self.wrapper_info(), **self.base.extra_info()}


def require_base(base_cls: Any, what: str) -> None:
    """Raise ValueError unless ``base_cls`` is a Defense subclass with a registry name (``what``: the factory, for the message)."""
    if not (isinstance(base_cls, type) and issubclass(base_cls, Defense)) or not base_cls.name:
        raise ValueError(f"{what} needs a registered Defense subclass with a name, got {base_cls!r}")


def wrapper_class(wrapper: type[WrapperDefense], base_cls: type[Defense], *, name: str, class_name: str, **attrs: Any) -> type[WrapperDefense]:
    """A subclass ``class_name`` of ``wrapper`` over ``base_cls`` with registry name ``name``; ``attrs``
    set further class attributes (``paper``, ``gradient_policy``, ``__doc__`` ...). Dataset support,
    trainability and randomness are the base's unless ``attrs`` say otherwise."""
    require_base(base_cls, "wrapper_class()")
    ns = {"name": name, "base_class": base_cls, "randomized": base_cls.randomized, "datasets": base_cls.datasets,
          "trainable": base_cls.trainable, "__module__": wrapper.__module__, "__qualname__": class_name, **attrs}
    return type(class_name, (wrapper,), ns)
