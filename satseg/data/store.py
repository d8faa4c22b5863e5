"""Reading a preprocessed folder (``plan.json``, ``splits.json``, ``cases/``) with NumPy alone.

Training and inference load preprocessed data through this module, so they need neither SimpleITK
nor nibabel (which only reading and writing original scans does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from satseg.errors import DataError

__all__ = ["load_plan", "load_splits", "load_case"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"`{path}` does not exist", hint="run `satseg preprocess DATASET -o FOLDER` first") from err
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"`{path}` cannot be read: {err}") from err


def load_plan(folder: str | Path) -> dict:
    """Read ``plan.json`` of a preprocessed folder.

    Raises:
        DataError: missing or unreadable plan.
    """
    return _read_json(Path(folder) / "plan.json")


def load_splits(folder: str | Path) -> list[dict[str, list[str]]]:
    """Read ``splits.json`` of a preprocessed folder: ``[{"train": [...], "val": [...]}, ...]``.

    Raises:
        DataError: missing or unreadable splits.
    """
    return _read_json(Path(folder) / "splits.json")


def load_case(folder: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read a preprocessed case: image ``(C, *S)`` float32, label ``(*S)`` uint8 or None, properties.

    Raises:
        DataError: the case is missing or unreadable.
    """
    base = Path(folder) / "cases" / case_id
    try:
        props = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
        with np.load(base.with_suffix(".npz")) as data:
            return data["image"], (data["label"] if "label" in data else None), props
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"preprocessed case `{base}` cannot be read: {err}") from err
