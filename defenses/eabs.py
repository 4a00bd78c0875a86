"""E-ABS (thesis chapter 2) and the ablations of thesis Table 2.6.

E-ABS = ABS + **A** (adversarial autoencoder, eq. 2.3) + **D** (shared encoder and discriminative
loss, eq. 2.4-2.5) + **V** (variational inference over mean and variance, eq. 2.6). Training follows
Algorithm 1 with beta = 1, gamma = 10. The ablation variants switch the extensions on independently:
``a-abs``, ``d-abs``, ``v-abs``, ``ad-abs``, ``av-abs``, ``dv-abs`` (``adv-abs`` is ``eabs``).
Implementation in :mod:`defenses.generative`.
"""

from defenses.generative import GenerativeClassifier
from defenses.registry import register


def _variant(name: str, a: bool, d: bool, v: bool, doc: str) -> type:
    cls = type(
        name.replace("-", "_").upper(),
        (GenerativeClassifier,),
        {"name": name, "aae": a, "discriminative": d, "variational": v, "randomized": v, "__doc__": doc, "__module__": __name__},
    )
    return register(cls)


EABS = _variant("eabs", True, True, True, "E-ABS: AAE + shared encoder with discriminative loss + variational inference (thesis Algorithm 1, eq. 2.5-2.6).")
A_ABS = _variant("a-abs", True, False, False, "Ablation A-ABS (thesis Table 2.6): ABS with per-class adversarial autoencoders.")
D_ABS = _variant("d-abs", False, True, False, "Ablation D-ABS (thesis Table 2.6): ABS with a shared encoder and the discriminative loss.")
V_ABS = _variant("v-abs", False, False, True, "Ablation V-ABS (thesis Table 2.6): ABS with variational inference (eq. 2.6).")
AD_ABS = _variant("ad-abs", True, True, False, "Ablation AD-ABS (thesis Table 2.6).")
AV_ABS = _variant("av-abs", True, False, True, "Ablation AV-ABS (thesis Table 2.6).")
DV_ABS = _variant("dv-abs", False, True, True, "Ablation DV-ABS (thesis Table 2.6).")
