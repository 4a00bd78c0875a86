"""Storage layer: what a run leaves on disk and where it came from.

``results`` (the typed result files, their one schema and atomic writing), ``checkpoints``
(safetensors weights + model cards, looked up and verified), ``provenance`` (code commit, package
versions, device). Imports nothing of ``harness`` but ``harness.errors`` (``tests/test_layers.py``).
"""
