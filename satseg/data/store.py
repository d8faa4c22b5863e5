"""Reading a preprocessed folder (``plan.json``, ``splits.json``, ``cases/``) with NumPy alone.

Training and inference load preprocessed data through this module, so they need neither SimpleITK
nor nibabel (which only reading and writing original scans does).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from satseg.errors import DataError
from satseg.paths import safe_name

__all__ = ["load_plan", "load_splits", "load_case"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"`{path}` does not exist", hint="run `satseg preprocess DATASET -o FOLDER` first") from err
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"`{path}` cannot be read: {err}") from err


def load_plan(folder: str | Path) -> dict:
    """Read ``plan.json`` of a preprocessed folder.

    Raises:
        DataError: missing or unreadable plan, or case ids that are not plain file names.
    """
    path = Path(folder) / "plan.json"
    plan = _read_json(path)
    if not isinstance(plan, dict):
        raise DataError(f"`{path}` must hold a JSON object", hint="run `satseg preprocess` again")
    for key in ("cases", "test_cases"):
        for case_id in plan.get(key) or []:
            safe_name(case_id, "case id", path)
    return plan


def load_splits(folder: str | Path) -> list[dict[str, list[str]]]:
    """Read ``splits.json`` of a preprocessed folder: ``[{"train": [...], "val": [...]}, ...]``.

    Raises:
        DataError: missing or unreadable splits, or a case id that is not a plain file name (``../x``).
    """
    path = Path(folder) / "splits.json"
    splits = _read_json(path)
    shape_ok = isinstance(splits, list) and all(
        isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list) for s in splits
    )
    if not shape_ok or not splits:
        raise DataError(f'`{path}` must be a list of {{"train": [...], "val": [...]}} folds')
    for fold in splits:
        for case_id in fold["train"] + fold["val"]:
            safe_name(case_id, "case id", path)  # ids become file names under cases/ and predictions/
    return splits


def load_case(folder: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read a preprocessed case: image ``(C, *S)`` float32, label ``(*S)`` uint8 or None, properties.

    Raises:
        DataError: the case is missing or unreadable.
    """
    base = Path(folder) / "cases" / safe_name(case_id, "case id", Path(folder))
    try:
        props = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
        with np.load(base.with_suffix(".npz")) as data:
            return data["image"], (data["label"] if "label" in data else None), props
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(
            f"preprocessed case `{base}` cannot be read: {err}", hint="run `satseg preprocess … --overwrite` again"
        ) from err
