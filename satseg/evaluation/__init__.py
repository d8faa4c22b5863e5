"""Evaluation: metrics, scoring folders of masks or a trained model, and the reports they write.

Names are imported lazily (importing the package does not load torch or the modules it does not use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "case_metrics": "metrics",
    "METRICS": "metrics",
    "evaluate_folders": "folders",
    "evaluate_model": "model",
    "EvaluationReport": "report",
    "summarise": "report",
    "gate_report": "report",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module `satseg.evaluation` has no attribute `{name}`")
    return getattr(importlib.import_module(f"satseg.evaluation.{_EXPORTS[name]}"), name)
