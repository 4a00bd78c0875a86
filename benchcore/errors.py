"""User-facing errors.

Anything a user can fix (unknown name, bad value, missing data file, corrupt checkpoint) raises
:class:`BenchUserError`; the CLI prints its message on one line and exits with status 2.
"""


class BenchUserError(Exception):
    """An error caused by user input or the user's environment; the message says how to fix it."""


class DataMissingError(BenchUserError):
    """A data set's files are not on disk and cannot be downloaded."""


class DataCorruptError(BenchUserError):
    """A data set's files exist but fail their checksum or cannot be parsed."""


class CheckpointError(BenchUserError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


class InputError(BenchUserError, ValueError):
    """Inputs handed to a defense through the harness are malformed (NaN/inf, out of bounds, wrong shape)."""
