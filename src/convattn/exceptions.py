"""Errors raised by convattn.

Every error subclasses a built-in (``ValueError``, ``TypeError``, ...) so existing
``except`` clauses keep working, and every message names the component, what it
expected and what it received.
"""

from __future__ import annotations

__all__ = [
    "ConvattnError",
    "ShapeError",
    "DTypeError",
    "ConfigError",
    "UnknownOptionError",
    "DatasetNotFoundError",
    "CheckpointError",
    "RunDirectoryError",
    "RunDivergedError",
]


class ConvattnError(Exception):
    """Base class of every convattn error."""


class ShapeError(ConvattnError, ValueError):
    """A tensor has the wrong number of dimensions, channels or spatial size."""


class DTypeError(ConvattnError, TypeError):
    """A tensor has a dtype the component cannot take (e.g. integer images)."""


class ConfigError(ConvattnError, ValueError):
    """A constructor argument, option or configuration value is invalid."""


class UnknownOptionError(ConvattnError, TypeError):
    """A layer, model or function was given a keyword option it does not take."""


class DatasetNotFoundError(ConvattnError, FileNotFoundError):
    """Dataset files are missing and cannot be downloaded."""


class CheckpointError(ConvattnError, RuntimeError):
    """A checkpoint is truncated, corrupt, or carries pickled code."""


class RunDirectoryError(ConvattnError, OSError):
    """A run directory cannot be created, written or locked (another run holds it, a full disk, ...)."""


class RunDivergedError(ConvattnError, ArithmeticError):
    """Training stopped at a non-finite loss or gradient norm; the run's results.json says ``diverged``."""

    #: ``convattn train`` exits with this status when a run diverges (2 is a usage error).
    exit_status = 3
