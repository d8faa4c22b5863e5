"""Checkpoints and run folders: atomic saves, safe loads (``weights_only=True``), model rebuilding, and the
checks on what a run configuration holds (its plan, its patch size). Used by training, inference and export alike.

A checkpoint holds plain data only (tensors, numbers, strings, lists, dicts): the run configuration,
the unwrapped model ``state_dict``, the optimizer state and the epoch. Loading never executes code
from the file.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satseg import __version__
from satseg.atomic import atomic_path
from satseg.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from satseg.nn import SegmentationNet

# torch is imported where it is used: the checks on a run configuration and the choice of a run's checkpoint
# file serve `segment` with a cached ONNX export, which runs without torch.

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "unwrap_model",
    "load_run",
    "checkpoint_file",
    "model_from_checkpoint",
    "check_run_config",
    "check_patch_size",
    "MAX_PATCH_VOXELS",
    "RUN_CONFIG",
    "LAST",
    "BEST",
]

CHECKPOINT_FORMAT = "satseg-checkpoint/1"
RUN_CONFIG = "config.json"
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
MAX_PATCH_VOXELS = 256**3
"""Largest window (patch) satseg trains or predicts with: 256³ or 4096² voxels. Activations of one such window
already take gigabytes; a larger one comes from a typo or a hostile plan, not from a GPU that could hold it."""


def check_patch_size(patch: Sequence[int], source: str | Any = "--patch") -> tuple[int, ...]:
    """Refuse a patch (window) size that is not positive or exceeds :data:`MAX_PATCH_VOXELS`.

    Args:
        patch: sides per spatial axis.
        source: where it came from (``--patch`` or the model file), named in the error.

    Raises:
        ConfigError: naming ``source``.
    """
    sides = tuple(int(p) for p in patch)
    if not sides or min(sides) < 1 or math.prod(sides) > MAX_PATCH_VOXELS:
        raise ConfigError(
            f"`{source}`: patch {list(sides)} has {math.prod(sides):,} voxels; satseg takes 1 to "
            f"{MAX_PATCH_VOXELS:,} voxels per window",
            hint="use a smaller patch, e.g. the plan's patch_size",
        )
    return sides


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
    import torch

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
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since 1.6; anything else is no checkpoint
        raise CheckpointError(
            f"`{path}`: not a readable checkpoint (not a PyTorch zip archive)",
            hint="the file is truncated, corrupted or not a satseg checkpoint; use another run's checkpoint",
        )
    _check_integrity(path)
    import torch

    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise _unreadable(path, err) from err
        raise CheckpointError(
            f"`{path}`: holds Python objects beyond tensors and plain data, which satseg will not load "
            "(unpickling objects can run any code on this machine)",
            hint="use a checkpoint written by `satseg train`; load it elsewhere only if you trust its source",
        ) from err
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as err:
        raise _unreadable(path, err) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"`{path}`: not a satseg checkpoint (format {CHECKPOINT_FORMAT} expected)")
    check_run_config(payload.get("config"), path)
    return payload


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return CheckpointError(
        f"`{path}`: not a readable checkpoint ({reason[:200]})",
        hint="the file is truncated, corrupted or not a satseg checkpoint; use another run's checkpoint",
    )


def _check_integrity(path: Path) -> None:
    """Check every member's CRC-32 (torch.load does not): one flipped byte must not load as a changed weight."""
    if not zipfile.is_zipfile(path):
        return  # not a zip: torch.load refuses it (or reads a legacy file, which has no checksums)
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise _unreadable(path, err) from err
    if broken is not None:
        raise CheckpointError(
            f"`{path}`: corrupted (the checksum of `{broken}` is wrong)",
            hint="the file was damaged on disk or in transfer; copy it again or use another checkpoint",
        )


def check_run_config(config: Any, source: str | Path) -> dict[str, Any]:
    """Check the run configuration stored in a checkpoint or ONNX file before anything uses it.

    Raises:
        CheckpointError: naming the first missing or malformed entry.
    """

    def bad(what: str) -> CheckpointError:
        return CheckpointError(
            f"`{source}`: its run configuration {what}", hint="use a checkpoint or model exported by satseg"
        )

    if not isinstance(config, dict):
        raise bad("is missing")
    for key in ("model", "plan"):
        if not isinstance(config.get(key), dict):
            raise bad(f"has no `{key}`")
    plan = config["plan"]
    labels = plan.get("labels")
    # `type(v) is int`: JSON true/false are Python bools, which isinstance(…, int) would take for 1 and 0
    if not isinstance(labels, dict) or not all(type(v) is int and 0 <= v < 256 for v in labels.values()):
        raise bad("has no `plan.labels` mapping class names to integer values 0..255")
    if len(labels) < 2 or 0 not in labels.values():
        raise bad("needs a background (0) and at least one class in `plan.labels`")
    if sorted(labels.values()) != list(range(len(labels))):  # {0, 1, 7}: output channel 2 would be written as 2
        raise bad(f"has `plan.labels` values {sorted(labels.values())}; a model's classes are 0, 1, 2, … without gaps")
    if (
        plan.get("spatial_dims") not in (2, 3)
        or not isinstance(plan.get("num_channels"), int)
        or plan["num_channels"] < 1
    ):
        raise bad("has no valid `plan.spatial_dims` (2 or 3) and `plan.num_channels`")
    train = config.get("train")
    patch = (train.get("patch") if isinstance(train, dict) else None) or plan.get("patch_size")
    if (
        not isinstance(patch, list)
        or len(patch) != plan["spatial_dims"]
        or not all(isinstance(p, int) and p >= 1 for p in patch)
    ):
        raise bad(f"has no valid patch size for {plan['spatial_dims']}D (got {patch!r})")
    for key in ("normalization",):
        if not isinstance(plan.get(key), list) or len(plan[key]) != plan["num_channels"]:
            raise bad(f"has no `plan.{key}` for its {plan['num_channels']} channel(s)")
    return config


def model_from_checkpoint(payload: dict[str, Any], source: str | Path = "checkpoint") -> SegmentationNet:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    import torch

    from satseg.nn import build_model, legacy_model_config

    try:
        model = build_model(**legacy_model_config(payload["config"]["model"]))
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"`{source}`: its model configuration cannot be rebuilt ({err})") from err
    weights = payload.get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"`{source}`: holds no model weights")
    broken = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise CheckpointError(
            f"`{source}`: {len(broken)} weight tensor(s) hold NaN or Inf (e.g. `{broken[0]}`); the model would "
            "give empty or random masks",
            hint="training diverged or the file is damaged; use an earlier checkpoint",
        )
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"`{source}`: weights do not fit the model it describes ({first[:200]})") from err
    return model.eval()


def checkpoint_file(run_dir: str | Path, which: str = "last") -> Path:
    """The checkpoint file :func:`load_run` reads for a run folder (or a checkpoint file itself).

    Raises:
        CheckpointError: no such folder or file, or no checkpoint in the folder.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    if not run_dir.is_dir():
        raise CheckpointError(f"`{run_dir}`: no such run folder or checkpoint")
    path = run_dir / (BEST if which == "best" else LAST)
    if which == "best" and not path.is_file():
        path = run_dir / LAST
    if not path.is_file():
        raise CheckpointError(
            f"`{run_dir}`: no checkpoint in this folder", hint="train first with `satseg train … --out DIR`"
        )
    return path


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
    path = checkpoint_file(run_dir, which)
    payload = load_checkpoint(path)
    return model_from_checkpoint(payload, path), payload["config"]
