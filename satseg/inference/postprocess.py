"""Largest-connected-component post-processing, applied per class as a run folder records it.

The decision (which classes it helps) is made by scoring validation cases, an evaluation job:
:func:`satseg.evaluation.postprocess.decide_lcc` writes ``postprocess.json`` into each run folder;
``satseg segment`` (and ``evaluate --model``) then applies what the run records; ``--lcc/--no-lcc`` overrides it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from satseg.errors import CheckpointError

__all__ = ["POSTPROCESS_FILE", "keep_largest_component", "keep_largest_components", "read_lcc"]

POSTPROCESS_FILE = "postprocess.json"


def keep_largest_component(labels: np.ndarray, value: int) -> np.ndarray:
    """``labels`` with every voxel of class ``value`` outside its largest connected component set to 0.

    Components connect through faces, edges and corners (full connectivity, as nnU-Net). A new array is
    returned; the input is not changed.
    """
    from scipy import ndimage  # a third of a second to import: only where a class is post-processed

    out = np.array(labels, copy=True)
    mask = out == value
    structure = ndimage.generate_binary_structure(out.ndim, out.ndim)
    components, count = ndimage.label(mask, structure=structure)
    if count > 1:
        sizes = np.bincount(components.ravel())[1:]
        out[mask & (components != int(np.argmax(sizes)) + 1)] = 0
    return out


def keep_largest_components(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """:func:`keep_largest_component` for each class in ``values`` (``labels`` itself when there are none)."""
    for value in values:
        labels = keep_largest_component(labels, value)
    return labels


def read_lcc(run_dir: str | Path, labels: dict[str, int]) -> list[str]:
    """The classes a run folder's ``postprocess.json`` switches post-processing on for (none without the file).

    Raises:
        CheckpointError: the file is unreadable or names classes the model does not predict.
    """
    path = Path(run_dir) / POSTPROCESS_FILE
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        chosen = [name for name, on in record["lcc"].items() if on]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"`{path}`: unreadable post-processing record ({err})") from err
    unknown = [name for name in chosen if name not in labels]
    if unknown:
        raise CheckpointError(f"`{path}`: classes {unknown} are not among the model's {list(labels)}")
    return chosen
