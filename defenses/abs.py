"""ABS (Schott et al. 2019) as the thesis's baseline: same Table 2.1 modules as E-ABS, one VAE per
class (own encoder and decoder, trained on that class only), no discriminator; inference by thesis
eq. 2.2 -- best of 8000 random latents, then gradient optimisation of the mean with unit variance.
Implementation shared with E-ABS in :mod:`defenses.generative`."""

from defenses.generative import GenerativeClassifier
from defenses.registry import register


@register
class ABS(GenerativeClassifier):
    """Analysis by Synthesis: per-class VAEs, mean-only inference (thesis eq. 2.2)."""

    name = "abs"
    paper = "Schott et al. 2019 (ABS), as re-implemented in Ju 2021 thesis section 2.3"
