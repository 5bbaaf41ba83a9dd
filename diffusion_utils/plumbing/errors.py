"""Errors a user can cause, each carrying a one-line message that says what to do.

The CLI catches :class:`DiffusionError` and prints only its message (no traceback), so every
message here must stand on its own: name the bad input and the fix.
"""

import textwrap


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


class RunFolderError(DiffusionError):
    """An output folder cannot be created or written, or another run is using it."""


def short_reason(err: BaseException, width: int = 100) -> str:
    """Someone else's exception as a reason inside one of our messages: its first line, shortened
    at a word boundary (never mid-word), or its type's name when it has no message."""
    text = str(err).strip()
    text = text.splitlines()[0] if text else type(err).__name__
    return textwrap.shorten(text, width, placeholder=" …")
