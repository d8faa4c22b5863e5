"""Errors raised for bad user input, bad data and bad checkpoints.

The CLI catches :class:`SatsegError` once and prints a one-line ``error: …`` message (plus an optional
``hint: …``); library users catch the same classes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["SatsegError", "ConfigError", "DataError", "CheckpointError", "look_up_option"]


class SatsegError(Exception):
    """Base class of every error satseg raises on purpose.

    Args:
        message: one line saying what is wrong (name the file, parameter or value).
        hint: optional one line saying what to do about it.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} (hint: {self.hint})"


class ConfigError(SatsegError, ValueError):
    """An option or configuration value is invalid."""


class DataError(SatsegError):
    """An input image, label or dataset cannot be used."""


class CheckpointError(SatsegError):
    """A checkpoint, run folder or exported model cannot be loaded."""


def look_up_option(value: str, options: Iterable[str], what: str) -> str:
    """Return ``value`` if it is one of ``options``; else raise a ConfigError naming the closest match.

    Args:
        value: the name the user gave.
        options: the valid names.
        what: what the name is for, e.g. ``"net"``.

    Raises:
        ConfigError: listing the valid names and the closest one.
    """
    valid = sorted(options)
    if value in valid:
        return value
    close = difflib.get_close_matches(str(value), valid, n=1)
    suggestion = f"; did you mean `{close[0]}`?" if close else ""
    raise ConfigError(f"unknown {what} `{value}`{suggestion} valid: {', '.join(valid)}")
