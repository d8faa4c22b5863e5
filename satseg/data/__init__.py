"""Image I/O, dataset layouts and preprocessing (see :mod:`satseg.data.io` for the axis conventions).

Names are imported lazily, so that code reading preprocessed folders (:mod:`satseg.data.store`)
does not pull in SimpleITK and nibabel.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Image": "io",
    "read_image": "io",
    "write_image": "io",
    "with_array": "io",
    "is_supported_image": "io",
    "image_stem": "io",
    "Grid": "grid",
    "Case": "datasets",
    "Dataset": "datasets",
    "discover_dataset": "datasets",
    "mask_to_labels": "datasets",
    "BadCase": "validate",
    "InvalidCasesError": "validate",
    "PreprocessReport": "preprocess",
    "preprocess_dataset": "preprocess",
    "preprocess_image": "preprocess",
    "restore_labels": "preprocess",
    "restore_probabilities": "preprocess",
    "restore_argmax": "preprocess",
    "load_plan": "store",
    "load_case": "store",
    "load_splits": "store",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module `satseg.data` has no attribute `{name}`")
    return getattr(importlib.import_module(f"satseg.data.{_EXPORTS[name]}"), name)
