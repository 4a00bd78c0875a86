"""A zoo of gradient-masked defenses and their adaptive twins (tests only).

Every masked member makes the decision of a trained ``cnn`` (the test session's checkpoint, on the
tiny fixture data) through a transform or an output that breaks the declared gradient in one classic
way (Athalye et al. 2018): zero gradients (quantisation), saturated gradients (softmax of scaled
logits), shattered gradients (a high-frequency input transform), undeclared randomness. Its twin
makes the *same* decision with the gradient an adaptive attacker would use (BPDA / straight-through,
the logits, declared randomness for EOT). The classifier lives in ``self.inner`` (not ``.base``), so
the harness cannot simply attack the unmasked network: its transfer attack must find a source itself.
"""

from __future__ import annotations

import torch

from defenses.base import Defense, bpda_identity
from defenses.cnn import CNN


def quantize(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x * 7) / 7


def shatter(x: torch.Tensor) -> torch.Tensor:
    return (x + 0.02 * torch.sin(1000 * x)).clamp(0, 1)


class _Wrapped(Defense):
    """A trained ``cnn`` behind a twist; shares the cnn checkpoint."""

    trainable = True
    paper = "test zoo"

    def __init__(self, *, num_classes, input_shape, dataset):
        super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        self.inner = CNN(num_classes=num_classes, input_shape=input_shape, dataset=dataset)

    def checkpoint_name(self) -> str:
        return "cnn"

    def checkpoint_module(self):
        return self.inner

    def default_train_config(self, dataset):
        return self.inner.default_train_config(dataset)


class ZeroGrad(_Wrapped):
    name = "zoo-zero-grad"
    gradient_policy = "plain autograd through rounding (zero)"

    def predict(self, x, *, generator=None):
        return self.inner.predict(quantize(x))


class ZeroGradBPDA(ZeroGrad):
    name = "zoo-zero-grad-bpda"
    gradient_policy = "BPDA identity through the rounding"

    def predict(self, x, *, generator=None):
        return self.inner.predict(bpda_identity(quantize, x))


class Saturated(_Wrapped):
    name = "zoo-saturated"
    gradient_policy = "plain autograd of softmax(100 logits) (saturated: zero)"

    def predict(self, x, *, generator=None):
        return torch.softmax(100 * self.inner.predict(x), dim=1)


class SaturatedAdaptive(Saturated):
    """The same decision (argmax) scored by the logits, as an adaptive attacker would attack it."""

    name = "zoo-saturated-adaptive"
    gradient_policy = "autograd of the logits"

    def predict(self, x, *, generator=None):
        return self.inner.predict(x)


class Shattered(_Wrapped):
    name = "zoo-shattered"
    gradient_policy = "plain autograd through x + 0.02 sin(1000 x) (shattered)"

    def predict(self, x, *, generator=None):
        return self.inner.predict(shatter(x))


class ShatteredBPDA(Shattered):
    name = "zoo-shattered-bpda"
    gradient_policy = "BPDA identity through the shattering transform"

    def predict(self, x, *, generator=None):
        return self.inner.predict(bpda_identity(shatter, x))


class SecretlyRandom(_Wrapped):
    """Adds noise from torch's global RNG and says it is deterministic: no EOT, no repeated scoring."""

    name = "zoo-secret-random"
    gradient_policy = "plain autograd through one undeclared noise draw"

    def predict(self, x, *, generator=None):
        return self.inner.predict((x + 0.3 * torch.randn_like(x)).clamp(0, 1))


class DeclaredRandom(SecretlyRandom):
    """The same noise, declared: the harness then attacks with EOT and scores with repeated draws."""

    name = "zoo-declared-random"
    randomized = True

    def predict(self, x, *, generator=None):
        noise = torch.randn(x.shape, generator=generator, device=x.device) if generator is not None else torch.randn_like(x)
        return self.inner.predict((x + 0.3 * noise).clamp(0, 1))


#: masked member -> the twin attacked adaptively (the same decision)
PAIRS = {
    ZeroGrad: ZeroGradBPDA,
    Saturated: SaturatedAdaptive,
    Shattered: ShatteredBPDA,
    SecretlyRandom: DeclaredRandom,
}
ALL = [*PAIRS, *PAIRS.values()]
