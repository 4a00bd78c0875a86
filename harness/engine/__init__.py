"""Evaluation layer: a defense, a data set and an attack suite in, verified per-sample outcomes out.

``runner`` (the pipeline prepare -> clean pass -> attack: propose / verify -> record), ``verify``
(attacks only propose; this decides), ``eot`` (the one place EOT lives), ``models`` (build, train,
load defenses), ``calibrate`` (reject thresholds), and the trust checks: ``sanity`` (verdicts),
``gradcheck`` (declared vs real gradient), ``saturation`` (budget check). With ``harness.attacks``
and ``harness.datasets`` beside it; imports ``harness.store``, never a layer above it.
"""
