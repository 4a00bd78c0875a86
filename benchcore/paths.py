"""Where bench keeps its files in the user's cache (shared by the harness's checkpoint store and the
defenses that keep their own stores, such as RobustBench's layout)."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_cache_dir


def user_checkpoint_dir() -> Path:
    """Where ``bench train`` writes by default: ``user_cache_dir("bench")/checkpoints``."""
    return Path(user_cache_dir("bench")) / "checkpoints"
