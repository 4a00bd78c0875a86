"""Experiments with their own command and result format, outside the attack pipeline.

``synthesis`` (``bench synthesize``: image synthesis with a classifier's gradient), ``decompose``
(``bench decompose``: the c-VAE decomposition experiments), ``fooling`` (``bench neat``: defenses
scored on NEAT fooling images). They use the engine and the store; their documents live in
``harness.report``.
"""
