"""What every layer of bench shares and nothing else: the user-error types (:mod:`benchcore.errors`),
atomic file writing and file hashing (:mod:`benchcore.io`), the user's checkpoint folder
(:mod:`benchcore.paths`) and the plugin registries (:mod:`benchcore.plugins`).

It imports none of ``threat_models``, ``defenses`` and ``harness``, so those packages layer on it
without an import cycle: ``benchcore`` <- ``threat_models`` <- ``defenses`` <- ``harness``
(``tests/test_layers.py`` imports each alone in a fresh interpreter and checks ``sys.modules``).
"""
