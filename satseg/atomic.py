"""Atomic file writes: write to a temporary name in the target folder, then rename over the target.

A crash or Ctrl-C mid-write leaves the previous file (or no file) in place, never a truncated one. Every
temporary name starts with ``.<final name>.`` and holds ``.tmp``; a process killed with SIGKILL cannot clean
up, so writers of a folder they own call :func:`remove_stale_temporaries` when they start again.

Outputs get the usual permissions (``0o666`` minus the umask, folders ``0o777`` minus the umask), not the
``0o600`` that :func:`tempfile.mkstemp` gives its files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from satseg.errors import ConfigError

__all__ = [
    "atomic_path",
    "atomic_folder",
    "atomic_write_text",
    "atomic_write_json",
    "make_parent",
    "remove_stale_temporaries",
    "exclusive",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: Path) -> None:
    """Give a temporary file or folder the permissions a plain ``open``/``mkdir`` would have given it."""
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def make_parent(path: str | Path) -> Path:
    """Create the folder of ``path``; an impossible one (under a file, read-only, ``/proc``) is a ConfigError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.parent.is_dir():
            raise NotADirectoryError(20, "not a folder", str(path.parent))
    except OSError as err:
        raise ConfigError(
            f"cannot write `{path}`: {err.strerror or err} (`{err.filename or path.parent}`)",
            hint="choose an output in a folder you can write to",
        ) from err
    return path


@contextlib.contextmanager
def _cannot_write(path: Path) -> Iterator[None]:
    """Turn an OSError raised while writing ``path`` into a one-line ConfigError naming it.

    Writers that wrap the OS error in their own (PyTorch's ``PytorchStreamWriter failed writing file``,
    SimpleITK's ``RuntimeError``) are caught by their cause or their words: a full disk is named as such.
    """
    try:
        yield
    except OSError as err:
        raise ConfigError(
            f"cannot write `{path}`: {err.strerror or err}",
            hint="check the output folder, its permissions and free space",
        ) from err
    except RuntimeError as err:
        text = str(err).lower()
        if not isinstance(err.__cause__, OSError) and not any(w in text for w in ("write", "space", "disk")):
            raise
        reason = str(err.__cause__) if isinstance(err.__cause__, OSError) else str(err).strip().splitlines()[-1]
        raise ConfigError(
            f"cannot write `{path}`: {reason[:200]}", hint="check the output folder, its permissions and free space"
        ) from err


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    Args:
        path: the final file.
        suffix: suffix of the temporary file (some writers pick the format from it); defaults to the
            final name's suffixes, so ``x.nii.gz`` is written through ``.x.nii.gz.XXXX.tmp.nii.gz``.

    Raises:
        ConfigError: the folder cannot be created or written to (naming the path).
    """
    path = make_parent(path)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    with _cannot_write(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
        os.close(fd)
    try:
        with _cannot_write(path):  # a full disk while writing names the output, not the temporary
            yield Path(tmp)
        with _cannot_write(path):
            _usual_mode(Path(tmp))
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success what was written there is moved beside it.

    Files written into the temporary folder under other names (e.g. the ``.raw`` of a ``.mhd``) are moved
    too, data files before the one named like ``path``, so a reader never sees a half-written output. A
    folder named like ``path`` (a DICOM series) replaces the old one.
    """
    path = make_parent(path)
    with _cannot_write(path):
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with _cannot_write(path):
            yield tmp_dir
        produced = sorted(tmp_dir.iterdir(), key=lambda p: p.name == path.name)
        with _cannot_write(path):
            for item in produced:
                target = path.parent / item.name
                _usual_mode(item)
                if item.is_dir():
                    trash = None
                    if target.exists():
                        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=path.parent))
                        os.replace(target, trash / target.name)
                    os.replace(item, target)
                    if trash is not None:
                        shutil.rmtree(trash, ignore_errors=True)
                else:
                    os.replace(item, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def remove_stale_temporaries(folder: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporaries this module left in ``folder`` when its writer was killed (SIGKILL, power loss).

    Only call it on a folder the caller owns (no other writer at work there), or give ``names``: then only
    the temporaries of those final names go (an output the caller alone writes, e.g. its input's mask while
    other shards write other masks into the same folder).

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefixes = None if names is None else tuple(f".{name}." for name in names)
    stale = [
        p
        for p in folder.iterdir()
        if p.name.startswith(".") and ".tmp" in p.name and (prefixes is None or p.name.startswith(prefixes))
    ]
    for item in stale:
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data: Any, default: Callable[[Any], Any] = str) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, default=default) + "\n")


LOCK_NAME = ".satseg.lock"


@contextlib.contextmanager
def exclusive(folder: str | Path, what: str) -> Iterator[None]:
    """Hold the one writer's lock of the existing ``folder`` (``.satseg.lock`` in it) while the body runs.

    Two ``train --resume`` of one run, or two ``preprocess`` into one ``-o``, would write over each other's
    files: the second is refused at once. The lock is an ``flock``, which the kernel releases when its
    process dies (even by SIGKILL), so a killed run never leaves a stale lock behind.

    Raises:
        ConfigError: another process holds the lock (naming the folder), or the lock cannot be made.
    """
    import fcntl

    lock_path = Path(folder) / LOCK_NAME
    with _cannot_write(lock_path):
        handle = open(lock_path, "a")  # noqa: SIM115 - held open for the whole body
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"`{folder}` is in use: another satseg process is {what} there",
                hint="wait for it to finish (or stop it), then run again",
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)  # leave the folder as it was; the lock ends with the process anyway
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
