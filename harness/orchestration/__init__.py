"""Orchestration layer: many evaluations as independent jobs.

``sweep`` (plans expanded into block-aligned shards, run through the engine's stages, merged into
the file ``bench run`` writes) and ``executors`` (local, Ray). Nothing below imports it.
"""
