"""User-facing errors: the harness's name for :mod:`benchcore.errors` (where they live, so that
``threat_models`` and ``defenses`` raise them without importing the harness)."""

from benchcore.errors import BenchUserError, CheckpointError, DataCorruptError, DataMissingError, InputError

__all__ = ["BenchUserError", "CheckpointError", "DataCorruptError", "DataMissingError", "InputError"]
