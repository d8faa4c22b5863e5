"""Training: configuration, the loop, losses, augmentation, patch sampling, validation, DDP, EMA, cross-validation.

Names are imported lazily (importing the package does not load torch or the modules it does not use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "config",
    "TrainResult": "trainer",
    "train": "trainer",
    "prepare_run": "trainer",
    "train_folds": "crossval",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module `satseg.training` has no attribute `{name}`")
    return getattr(importlib.import_module(f"satseg.training.{_EXPORTS[name]}"), name)
