"""Input binarization at 0.5 as a wrapper over any registered defense (Schott et al. 2019, "binary CNN";
the binarization baseline of Yao et al., Table 1).

``binarized(Base)`` returns a Defense class named ``binary-<base>`` whose ``predict`` thresholds the
input at 0.5 and passes the result to ``Base``'s ``predict``. It has no weights of its own: it loads
the base's checkpoint (a :class:`~defenses.wrapper.WrapperDefense`: every hook but the decision is
the base's), and ``bench train --defense binary-<base>`` trains the base. The threshold has zero gradient almost
everywhere, so the declared attack gradient is BPDA with the identity (Athalye et al. 2018, section
4.1): the backward pass treats the threshold as the identity, so the gradient w.r.t. ``x`` equals
the base's declared gradient evaluated at the binarized input.

Built in: ``binary-cnn``. Another base, e.g. in a plugin::

    from defenses.binarize import binarized
    from defenses.registry import get_defense, register
    register(binarized(get_defense("cnn-gauss")))   # -> "binary-cnn-gauss"
"""

from __future__ import annotations

import torch

from defenses.base import Defense, bpda_identity
from defenses.cnn import CNN
from defenses.registry import register
from defenses.wrapper import WrapperDefense, require_base, wrapper_class

THRESHOLD = 0.5


def binarize(x: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """``1`` where ``x > threshold``, else ``0`` (same dtype and shape as ``x``)."""
    return (x > threshold).to(x.dtype)


class Binarized(WrapperDefense):
    """A defense on inputs binarized at :attr:`threshold`, with the straight-through (BPDA identity) gradient.

    Made per base by :func:`binarized`; only the decision differs from the base's.
    """

    #: the binarization threshold (set per class by :func:`binarized`)
    threshold: float = THRESHOLD

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The binarized input, with the identity as its gradient (BPDA)."""
        return bpda_identity(lambda t: binarize(t, self.threshold), x)

    def predict(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.base.predict(self.transform(x), generator=generator)

    def predict_draws(self, x: torch.Tensor, *, draws: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.base.predict_draws(self.transform(x), draws=draws, generator=generator)

    def abstain(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.base.abstain(binarize(x, self.threshold), scores)

    def wrapper_info(self) -> dict:
        return {"threshold": self.threshold}


def binarized(base_cls: type[Defense], *, threshold: float = THRESHOLD) -> type[Defense]:
    """A Defense class ``binary-<base_cls.name>`` that binarizes its input at ``threshold`` before ``base_cls``.

    The wrapper's constructor takes the same keyword options as the base's (e.g. ``arch``) and
    forwards them; randomness, dataset support and abstention are the base's.
    """
    require_base(base_cls, "binarized()")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"binarization threshold must lie in (0, 1), got {threshold}")
    return wrapper_class(
        Binarized, base_cls,
        name=f"binary-{base_cls.name}",
        class_name=f"Binarized{base_cls.__name__}",
        __doc__=f"{base_cls.__name__} on inputs binarized at {threshold:g}, straight-through (BPDA identity) gradient.",
        paper=f"Schott et al. 2019 (binary CNN) / Yao et al. Table 1: input binarization at {threshold:g} in front of {base_cls.name} ({base_cls.paper})",
        gradient_policy=f"straight-through BPDA identity over the binarization at {threshold:g}, then the base's gradient ({base_cls.gradient_policy})",
        threshold=float(threshold),
    )


BinaryCNN = register(binarized(CNN))
