"""The one check every output path and every file-derived name passes before satseg writes anything.

* :func:`safe_name` — a name read from a file (a case id in ``splits.json``, a ``dataset.json`` entry, ONNX
  metadata) becomes part of a path only if it is one plain file name: no folder separator, no ``..``, no
  leading dot, no control character. A hostile ``"../../x"`` can therefore never write outside the output folder.
* :func:`check_output` — an output file is refused when it exists (unless ``overwrite``), when it is a folder,
  and always when it is one of the inputs (``--overwrite`` never replaces a scan with its mask, nor a
  checkpoint with its export).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from satseg.errors import ConfigError, DataError

__all__ = ["safe_name", "check_output", "check_name_length", "same_file", "MAX_OUTPUT_NAME"]

_MAX_NAME = 200
MAX_OUTPUT_NAME = 255 - 32
"""Longest output file name (bytes): 255 less what :mod:`satseg.atomic`'s temporary name adds."""


def safe_name(name: object, what: str, source: str | Path) -> str:
    """Return ``name`` if it can be used as one file name inside an output folder.

    Args:
        name: the value read from ``source``.
        what: what it is, e.g. ``"case id"``.
        source: the file it came from (named in the error).

    Raises:
        DataError: for a non-string, empty, too long, hidden (leading dot) name, or one holding a folder
            separator, ``..`` or a control character.
    """
    text = name if isinstance(name, str) else None
    problem = None
    if text is None:
        problem = f"is a {type(name).__name__}, not a string"
    elif not text or len(text) > _MAX_NAME:
        problem = "is empty" if not text else f"is longer than {_MAX_NAME} characters"
    elif "/" in text or "\\" in text or (os.altsep and os.altsep in text):
        problem = "holds a folder separator"
    elif text.startswith("."):
        problem = "starts with a dot (`..` or a hidden file)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in text):
        problem = "holds a control character"
    if problem is not None:
        raise DataError(
            f"`{source}`: {what} {name!r} {problem}; satseg will not turn it into a file name",
            hint=f"use plain names (letters, digits, `_`, `-`) for every {what}",
        )
    return text


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name the same existing file or folder (links and ``..`` resolved)."""
    a, b = Path(a), Path(b)
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_name_length(path: str | Path) -> Path:
    """Refuse an output name too long for the file system (with the temporary name it is written through).

    Raises:
        ConfigError: naming the path, before any work.
    """
    path = Path(path)
    if len(path.name.encode()) > MAX_OUTPUT_NAME:
        raise ConfigError(
            f"`{path}`: the file name is {len(path.name.encode())} bytes long; file systems allow 255, and satseg "
            f"writes through a temporary name that is longer still (at most {MAX_OUTPUT_NAME} bytes)",
            hint="choose a shorter output name (or rename the input)",
        )
    return path


def check_output(path: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> Path:
    """Refuse to write ``path`` when that would lose data; return it otherwise.

    Args:
        path: the output file.
        inputs: files the command reads; ``path`` may never be one of them (links and ``..`` resolved).
        overwrite: allow replacing an existing output that is not an input.

    Raises:
        ConfigError: ``path`` is an input, a folder, or exists without ``overwrite``.
    """
    path = check_name_length(path)
    for source in map(Path, inputs):
        # realpath, not resolve(): a symlink loop among the inputs must not fail the check of every output
        if same_file(path, source) or os.path.realpath(path) == os.path.realpath(source):
            raise ConfigError(
                f"`{path}` is the input `{source}`; satseg never overwrites an input", hint="choose another output path"
            )
    if path.is_dir():
        raise ConfigError(f"`{path}` is a folder; the output must be a file", hint=f"e.g. `{path / 'out'}`")
    if path.exists() and not overwrite:
        raise ConfigError(f"`{path}` already exists", hint="pass --overwrite to replace it, or choose another path")
    return path
