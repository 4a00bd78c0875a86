"""Input binarization at 0.5 as a wrapper over any registered defense (Schott et al. 2019, "binary CNN";
the binarization baseline of Yao et al., Table 1).

``binarized(Base)`` returns a Defense class named ``binary-<base>`` whose ``predict`` thresholds the
input at 0.5 and passes the result to ``Base``'s ``predict``. It has no weights of its own: it loads
the base's checkpoint (``checkpoint_name`` / ``checkpoint_module`` delegate to the base), and
``bench train --defense binary-<base>`` trains the base. The threshold has zero gradient almost
everywhere, so the declared attack gradient is BPDA with the identity (Athalye et al. 2018, section
4.1): the backward pass treats the threshold as the identity, so the gradient w.r.t. ``x`` equals
the base's declared gradient evaluated at the binarized input.

Built in: ``binary-cnn``. Another base, e.g. in a plugin::

    from defenses.binarize import binarized
    from defenses.registry import get_defense, register
    register(binarized(get_defense("cnn-gauss")))   # -> "binary-cnn-gauss"
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from defenses.base import Defense, bpda_identity
from defenses.cnn import CNN
from defenses.registry import register

THRESHOLD = 0.5


def binarize(x: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """``1`` where ``x > threshold``, else ``0`` (same dtype and shape as ``x``)."""
    return (x > threshold).to(x.dtype)


def binarized(base_cls: type[Defense], *, threshold: float = THRESHOLD) -> type[Defense]:
    """A Defense class ``binary-<base_cls.name>`` that binarizes its input at ``threshold`` before ``base_cls``.

    The wrapper's constructor takes the same keyword options as the base's (e.g. ``arch``) and
    forwards them; randomness, dataset support and abstention are the base's.
    """
    if not (isinstance(base_cls, type) and issubclass(base_cls, Defense)) or not base_cls.name:
        raise ValueError(f"binarized() needs a registered Defense subclass with a name, got {base_cls!r}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"binarization threshold must lie in (0, 1), got {threshold}")

    class Binarized(Defense):
        __doc__ = f"{base_cls.__name__} on inputs binarized at {threshold:g}, straight-through (BPDA identity) gradient."

        name = f"binary-{base_cls.name}"
        paper = f"Schott et al. 2019 (binary CNN) / Yao et al. Table 1: input binarization at {threshold:g} in front of {base_cls.name} ({base_cls.paper})"
        gradient_policy = f"straight-through BPDA identity over the binarization at {threshold:g}, then the base's gradient ({base_cls.gradient_policy})"
        randomized = base_cls.randomized
        datasets = base_cls.datasets
        trainable = base_cls.trainable
        base_class = base_cls

        def __init__(self, *, num_classes: int, input_shape: tuple[int, int, int], dataset: str, **options: Any):
            super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
            self.threshold = float(threshold)
            self.base = base_cls(num_classes=num_classes, input_shape=input_shape, dataset=dataset, **options)

        def transform(self, x: torch.Tensor) -> torch.Tensor:
            """The binarized input, with the identity as its gradient (BPDA)."""
            return bpda_identity(lambda t: binarize(t, self.threshold), x)

        def predict(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
            return self.base.predict(self.transform(x), generator=generator)

        def predict_draws(self, x: torch.Tensor, *, draws: int, generator: torch.Generator | None = None) -> torch.Tensor:
            return self.base.predict_draws(self.transform(x), draws=draws, generator=generator)

        def abstain(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            return self.base.abstain(binarize(x, self.threshold), scores)

        def checkpoint_name(self) -> str:
            """The base's checkpoint (binarization has no weights)."""
            return self.base.checkpoint_name()

        def checkpoint_module(self) -> torch.nn.Module:
            return self.base.checkpoint_module()

        def default_train_config(self, dataset: str) -> dict:
            return self.base.default_train_config(dataset)

        def fit(self, train, val, *, config, device, generator, progress=True) -> dict:
            """Train the base on the raw inputs (the checkpoint is the base's)."""
            return self.base.fit(train, val, config=config, device=device, generator=generator, progress=progress)

        def extra_info(self) -> dict:
            return {"base": base_cls.name, "threshold": self.threshold, **self.base.extra_info()}

    # the wrapper takes exactly the base's options: expose the base's signature to introspection
    Binarized.__init__.__signature__ = inspect.signature(base_cls.__init__)
    Binarized.__name__ = Binarized.__qualname__ = f"Binarized{base_cls.__name__}"
    Binarized.__module__ = __name__
    return Binarized


BinaryCNN = register(binarized(CNN))
