"""Reporting layer: documents that are pure functions of result files.

``tables`` (``bench table``), ``leaderboard`` (``leaderboard.md``), ``plots`` (robustness curves),
``robustbench_export``, and the reference reports, each driven by its TOML reference file:
``reproduction`` (``docs/thesis_fmnist.toml`` -> ``docs/reproduction.md``), ``smoothing_report``
(``docs/thesis_smoothing.toml`` -> ``docs/smoothing.md``), ``synthesis_report`` (``docs/synthesis.md``).
Reads ``harness.store``, uses the engine's trust verdicts; nothing below imports it.
"""
