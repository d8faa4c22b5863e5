"""Export: a trained model as one self-contained ONNX file (graph, parity check, metadata).

Names are imported lazily (importing the package does not load torch or the modules it does not use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "export_run": "run",
    "export_model": "run",
    "export_onnx": "onnx",
    "ExportReport": "onnx",
    "read_onnx_metadata": "metadata",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module `satseg.export` has no attribute `{name}`")
    return getattr(importlib.import_module(f"satseg.export.{_EXPORTS[name]}"), name)
