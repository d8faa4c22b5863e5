"""The preprocessing plan: target grid, normalisation statistics, labels, channels, patch size and folds.

``plan.json`` is what training and inference read back; every value in it is plain JSON.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from satseg.data.datasets import MODALITIES, Dataset
from satseg.data.validate import CaseScan
from satseg.errors import ConfigError, DataError, look_up_option

__all__ = [
    "parse_spacing",
    "parse_size",
    "build_plan",
    "make_splits",
    "suggest_patch_size",
    "preprocessing_steps",
    "PLAN_FORMAT",
    "PREPROCESSING",
]

log = logging.getLogger(__name__)

PLAN_FORMAT = "satseg-preprocessed/1"
PREPROCESSING = {"reorient": True, "crop": "foreground", "zscore": "foreground"}
"""How new plans preprocess a case (see :mod:`satseg.data.preprocess`)."""
_LEGACY_PREPROCESSING = {"reorient": False, "crop": "nonzero", "zscore": "all"}
_DIVISOR = 16
_PATCH_CAP = {2: 512, 3: 128}


def parse_spacing(value: str | Sequence[float] | None) -> str | tuple[float, ...]:
    """Parse ``--spacing``: ``"auto"`` (median of the dataset), ``"keep"`` (no resampling) or 2–3 numbers.

    Numbers are per array axis (z, y, x) and may be given as ``"2 2 2"``, ``"2,2,2"`` or a sequence.

    Raises:
        ConfigError: for anything else, or non-positive values.
    """
    if value is None:
        return "auto"
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", "keep"):
            return text
        parts = text.replace(",", " ").split()
    else:
        parts = list(value)
    try:
        numbers = tuple(float(p) for p in parts)
    except ValueError as err:
        raise ConfigError(
            f"--spacing `{value}` is not `auto`, `keep` or 2-3 numbers", hint="e.g. --spacing auto or --spacing 2,2,2"
        ) from err
    if len(numbers) not in (2, 3) or not all(math.isfinite(n) and n > 0 for n in numbers):
        raise ConfigError(f"--spacing `{value}` must be 2 or 3 positive numbers (mm per z, y, x axis)")
    return numbers


def parse_size(size: Sequence[int] | None) -> tuple[int, int] | None:
    """Check ``--size H W`` (2D resize); None means no resize.

    Raises:
        ConfigError: unless two positive integers.
    """
    if size is None:
        return None
    size = tuple(size)
    if len(size) != 2 or not all(int(s) == s and s > 0 for s in size):
        raise ConfigError(f"--size `{size}` must be two positive integers H W")
    return (int(size[0]), int(size[1]))


def suggest_patch_size(median_shape: Sequence[float]) -> list[int]:
    """Median shape rounded up to a multiple of 16 (a 4-level net's input divisor), capped at 128 (3D) / 512 (2D)."""
    cap = _PATCH_CAP[len(median_shape)]
    return [min(cap, max(_DIVISOR, int(math.ceil(s / _DIVISOR)) * _DIVISOR)) for s in median_shape]


def _modalities(dataset: Dataset, option: str, num_channels: int) -> list[str]:
    if option != "auto":
        return [option] * num_channels
    if dataset.layout in ("paired", "stacks"):  # pictures: colour or grey, named for what they are
        return ["rgb" if num_channels == 3 else "grey"] * num_channels
    if dataset.modalities and len(dataset.modalities) == num_channels:
        return [m or "mri" for m in dataset.modalities]
    log.warning("`%s`: dataset.json names no modality; normalising as MRI (z-score per image)", dataset.root)
    return ["mri"] * num_channels


def _normalisation(kind: str, channel: int, scans: list[CaseScan]) -> dict:
    if kind == "mri":
        return {"scheme": "zscore"}
    if kind in ("rgb", "grey"):  # pictures: z-score per channel with the dataset's mean and std
        total = np.sum([s.sums[channel] for s in scans], axis=0, dtype=np.float64)
        mean = total[0] / total[2]
        std = math.sqrt(max(total[1] / total[2] - mean * mean, 0.0))
        return {"scheme": kind, "mean": float(mean), "std": float(max(std, 1e-8))}
    samples = [s.foreground[channel] for s in scans if s.foreground and s.foreground[channel].size]
    if not samples:
        raise DataError("CT normalisation needs labelled foreground voxels, and no training label has any")
    values = np.concatenate(samples).astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    return {
        "scheme": "ct",
        "clip": [float(low), float(high)],
        "mean": float(clipped.mean()),
        "std": float(max(clipped.std(), 1e-8)),
    }


def _channel_names(dataset: Dataset, num_channels: int) -> list[str]:
    if dataset.channel_names:
        return list(dataset.channel_names)
    return ["R", "G", "B"] if num_channels == 3 else [f"channel{c}" for c in range(num_channels)]


def build_plan(
    dataset: Dataset,
    scans: list[CaseScan],
    *,
    spacing: str | tuple[float, ...],
    modality: str,
    size: tuple[int, int] | None,
) -> dict:
    """Turn the scans of the good cases into ``plan.json`` content.

    Args:
        dataset: the dataset.
        scans: the good cases' scans (labelled and unlabelled).
        spacing: from :func:`parse_spacing`.
        modality: ``auto`` or one of ``ct``, ``mri``, ``rgb``, ``grey`` (all channels).
        size: 2D resize ``(H, W)`` or None.

    Raises:
        ConfigError: options that do not fit the data (3D spacing for 2D images, ``--size`` for 3D…).
    """
    look_up_option(modality, ("auto", *MODALITIES), "modality")
    dims = scans[0].spatial_dims
    channels = scans[0].num_channels
    train = [s for s in scans if s.labelled]
    if size is not None and dims != 2:
        raise ConfigError(f"--size is for 2D images; `{dataset.root}` holds 3D images", hint="use --spacing instead")
    if size is not None and spacing not in ("auto", "keep"):
        raise ConfigError("--spacing and --size both given; for 2D sets pick one")
    if isinstance(spacing, tuple) and len(spacing) != dims:
        raise ConfigError(f"--spacing has {len(spacing)} values but the images are {dims}D")
    median_spacing = np.median([s.spacing for s in scans], axis=0)
    if spacing == "auto":
        target = None if dims == 2 else tuple(float(s) for s in median_spacing)
    else:
        target = None if spacing == "keep" else spacing
    shapes = []
    for s in scans:
        if size is not None:
            shapes.append(size)
        elif target is not None:
            shapes.append([max(1, round(n * a / b)) for n, a, b in zip(s.shape, s.spacing, target, strict=True)])
        else:
            shapes.append(s.shape)
    median_shape = [float(v) for v in np.median(shapes, axis=0)]
    kinds = _modalities(dataset, modality, channels)
    return {
        "format": PLAN_FORMAT,
        "dataset": str(dataset.root),
        "layout": dataset.layout,
        "spatial_dims": dims,
        "num_channels": channels,
        "channel_names": _channel_names(dataset, channels),
        "modality": kinds[0] if len(set(kinds)) == 1 else "mixed",
        "labels": dict(sorted(dataset.labels.items(), key=lambda kv: kv[1])),
        "preprocessing": dict(PREPROCESSING),
        "spacing": None if target is None else list(target),
        "size": None if size is None else list(size),
        "normalization": [_normalisation(k, c, train or scans) | {"modality": k} for c, k in enumerate(kinds)],
        "median_spacing": [float(v) for v in median_spacing],
        "median_shape": median_shape,
        "patch_size": suggest_patch_size(median_shape),
        "cases": sorted(s.case_id for s in train),
        "test_cases": sorted(s.case_id for s in scans if not s.labelled),
    } | ({"pairing": dataset.pairing} if dataset.pairing else {})


def preprocessing_steps(plan: dict) -> dict:
    """The steps a plan's cases went through; plans written before the steps were recorded get the old ones
    (no reorientation, non-zero crop, z-score over the whole crop), so shipped models keep their input."""
    return {**_LEGACY_PREPROCESSING, **plan.get("preprocessing", {})}


def make_splits(case_ids: Sequence[str], folds: int, seed: int) -> list[dict[str, list[str]]]:
    """``folds`` cross-validation folds: shuffled with ``seed``, each case validated exactly once.

    Raises:
        ConfigError: fewer than 2 folds, or fewer labelled cases than folds.
    """
    if folds < 2:
        raise ConfigError(f"--folds {folds}: need at least 2 folds")
    ids = sorted(case_ids)
    if len(ids) < folds:
        raise ConfigError(f"--folds {folds}: only {len(ids)} labelled case(s)", hint="use fewer folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = np.array_split(order, folds)
    splits = []
    for k, val in enumerate(parts):
        train = [ids[i] for j, part in enumerate(parts) if j != k for i in part]
        splits.append({"train": sorted(train), "val": sorted(ids[i] for i in val)})
    return splits


def majority(values: list) -> object:
    """Most common value (first seen wins ties)."""
    return Counter(values).most_common(1)[0][0]
