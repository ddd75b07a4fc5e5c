"""Errors meant for the person at the keyboard.

Every error the library raises on bad input is a :class:`DeepClustError` whose message is one
line that says what is wrong and what to do. The CLI prints it without a traceback and exits
with status 2.
"""

from __future__ import annotations


class DeepClustError(Exception):
    """Base class: a one-line, user-facing message."""


class ConfigError(DeepClustError, ValueError):
    """A config key, value or command-line flag is wrong."""


class DataError(DeepClustError, ValueError):
    """A dataset is missing, empty, corrupt or has the wrong shape."""


class CheckpointError(DeepClustError):
    """A checkpoint or run directory is missing or belongs to something else."""


class StorageError(DeepClustError):
    """A file of a run could not be written (disk full, quota, permissions, read-only disk)."""


class DataTypeError(DataError, TypeError):
    """The input is not numeric at all (e.g. an object array of dicts): a TypeError, as scikit-learn expects."""
