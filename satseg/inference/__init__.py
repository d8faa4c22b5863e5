"""Inference: sliding window, the segmenter and its backends, batch segmentation of files and folders.

Names are imported lazily (importing the package does not load torch or the modules it does not use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "sliding_window_inference": "sliding_window",
    "Segmenter": "segmenter",
    "Segmentation": "segmenter",
    "load_segmenter": "segmenter",
    "segment_inputs": "batch",
    "SegmentReport": "batch",
    "check_fit": "input_guard",
    "keep_largest_components": "postprocess",
    "decide_lcc": "postprocess",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module `satseg.inference` has no attribute `{name}`")
    return getattr(importlib.import_module(f"satseg.inference.{_EXPORTS[name]}"), name)
