"""Checkpoints and run folders: atomic saves, safe loads (``weights_only=True``), model rebuilding.

A checkpoint holds plain data only (tensors, numbers, strings, lists, dicts): the run configuration,
the unwrapped model ``state_dict``, the optimizer state and the epoch. Loading never executes code
from the file.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satseg import __version__
from satseg.atomic import atomic_path
from satseg.errors import CheckpointError, ConfigError
from satseg.nn import SegmentationNet, build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "unwrap_model",
    "load_run",
    "model_from_checkpoint",
    "RUN_CONFIG",
    "LAST",
    "BEST",
]

CHECKPOINT_FORMAT = "satseg-checkpoint/1"
RUN_CONFIG = "config.json"
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | Path, *, model: nn.Module, run_config: dict[str, Any], **state: Any) -> None:
    """Save ``model`` (unwrapped), the run configuration and any extra ``state`` to ``path`` atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "satseg_version": __version__,
        "config": run_config,
        "model": unwrap_model(model).state_dict(),
        **state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a satseg checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: missing, truncated, not a satseg checkpoint, or holding code objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"`{path}`: no such checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"`{path}`: not a readable checkpoint ({reason[:200]})",
            hint="the file is truncated, corrupted or not a satseg checkpoint; use another run's checkpoint",
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"`{path}`: not a satseg checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return payload


def model_from_checkpoint(payload: dict[str, Any], source: str | Path = "checkpoint") -> SegmentationNet:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    try:
        model = build_model(**payload["config"]["model"])
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"`{source}`: its model configuration cannot be rebuilt ({err})") from err
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"`{source}`: weights do not fit the model it describes ({first[:200]})") from err
    return model.eval()


def load_run(run_dir: str | Path, which: str = "last") -> tuple[SegmentationNet, dict[str, Any]]:
    """Rebuild a trained model from a run folder (or a checkpoint file).

    Args:
        run_dir: a folder made by ``satseg train`` (or a ``.pt`` checkpoint file).
        which: ``last`` (default: the final weights, or their EMA, whose validation score is the run's honest
            figure) or ``best`` (the epoch chosen on the validation itself, so its score is optimistic; falls
            back to ``last`` when no validation ran).

    Returns:
        The model in eval mode on the CPU, and the run configuration (model, plan, training settings).
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        path = run_dir
    elif run_dir.is_dir():
        path = run_dir / (BEST if which == "best" else LAST)
        if which == "best" and not path.is_file():
            path = run_dir / LAST
        if not path.is_file():
            raise CheckpointError(
                f"`{run_dir}`: no checkpoint in this folder", hint="train first with `satseg train … --out DIR`"
            )
    else:
        raise CheckpointError(f"`{run_dir}`: no such run folder or checkpoint")
    payload = load_checkpoint(path)
    return model_from_checkpoint(payload, path), payload["config"]


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run folder."""
    path = Path(run_dir) / RUN_CONFIG
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"`{path}`: cannot read the run configuration ({err})") from err
