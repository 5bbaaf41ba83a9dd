"""Errors a user can cause, each carrying a one-line message that says what to do.

The CLI catches :class:`DiffusionError` and prints only its message (no traceback), so every
message here must stand on its own: name the bad input and the fix.
"""


class DiffusionError(Exception):
    """Base class for mistakes in input: bad config values, missing data, unusable checkpoints."""


class ConfigError(DiffusionError, ValueError):
    """A configuration value is outside its allowed range."""


class DataError(DiffusionError):
    """A dataset could not be found, downloaded or decoded."""


class CheckpointError(DiffusionError):
    """A checkpoint is missing, corrupt, or was trained with an incompatible config."""


class TrainingDiverged(DiffusionError):
    """The training loss became NaN or infinite."""
