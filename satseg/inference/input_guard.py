"""Does a scan fit a model? Compare it with the model's training plan before any heavy work.

A model only knows the kind of scan it was trained on. :func:`check_fit` compares a scan with the plan
(``plan.json``, stored in every checkpoint) on what can be read without running the model:

* dimensionality and channels;
* intensities: CT in Hounsfield units (air at about -1000) against MRI, and 8-bit colour or grey pictures;
* the physical field of view against the training cases' typical one;
* the spacing, and the number of voxels the scan has once resampled to the plan's spacing.

Each finding is a :class:`Misfit`; ``refuse`` ones make ``satseg segment`` stop (``--force`` goes on),
the others are warnings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from satseg.data.grid import Grid, axis_order
from satseg.data.io import Image
from satseg.data.plan import preprocessing_steps

__all__ = ["Misfit", "check_fit", "describe_scan", "looks_like_ct", "FOV_FACTOR", "SPACING_FACTOR", "VOXEL_FACTOR"]

FOV_FACTOR = 3.0
"""A scan whose extent along an axis is more than this many times the training median (or less than its
inverse) is outside what the model has seen."""
SPACING_FACTOR = 3.0
"""Spacing this many times coarser or finer than the plan's: a warning (resampling handles it, detail may not)."""
VOXEL_FACTOR = 50.0
"""More voxels than this many training-median cases after resampling: refused (slow, and out of distribution)."""
_CT_AIR = -500.0  # Hounsfield units well below soft tissue and fat: air, lungs, the scanner's padding
_CT_FRACTION = 0.01  # share of voxels below _CT_AIR that marks a CT in HU (MRI intensities are not negative)
_SAMPLE = 2_000_000  # voxels looked at for intensity statistics


@dataclass(frozen=True)
class Misfit:
    """One way a scan differs from a model's training data.

    Attributes:
        what: the property (``channels``, ``intensities``, ``field of view``, ``spacing``, ``voxels``).
        detail: how they differ, in words.
        refuse: True when the result would be meaningless or the run unreasonably long.
    """

    what: str
    detail: str
    refuse: bool = True

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}"


def _sample(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    step = max(1, flat.size // _SAMPLE)
    return flat[::step].astype(np.float32, copy=False)


def looks_like_ct(image: Image) -> bool:
    """True when the first channel holds Hounsfield units: at least 1 % of voxels below -500 (air)."""
    values = _sample(image.array[0])
    return values.size > 0 and float(np.mean(values < _CT_AIR)) >= _CT_FRACTION


def _extent(shape: Sequence[float], spacing: Sequence[float]) -> list[float]:
    return [float(n) * float(s) for n, s in zip(shape, spacing, strict=True)]


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.0f}" for v in values) + " mm"


def _spacing_text(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.2g}" for v in values) + " mm"


def describe_scan(image: Image) -> str:
    """The scan in the words a model card would use: ``3D CT (HU), 366 x 303 x 336 mm at 3 x 3 x 3 mm``."""
    if image.num_channels == 3 and image.spatial_dims == 2:
        kind = "RGB picture"
    elif image.spatial_dims == 2 and image.source_format == "picture":
        kind = "grey picture"
    elif looks_like_ct(image):
        kind = "CT (HU)"
    else:
        kind = "MRI-like scan" if image.num_channels == 1 else f"{image.num_channels}-channel scan"
    extent = _extent(image.spatial_shape, image.spacing)
    return f"{image.spatial_dims}D {kind}, {_mm(extent)} at {_spacing_text(image.spacing)}"


def _intensity_misfits(image: Image, plan: dict[str, Any]) -> list[Misfit]:
    modality = plan.get("modality")
    if modality == "mri" and looks_like_ct(image):
        return [Misfit("intensities", "Hounsfield units of a CT (air below -500), the model knows MRI")]
    if modality == "ct" and not looks_like_ct(image):
        lowest = float(_sample(image.array[0]).min())
        return [Misfit("intensities", f"no air in Hounsfield units (lowest value {lowest:g}), the model knows CT")]
    if modality in ("rgb", "grey"):  # pictures: 8-bit colour, or 8-bit grey (paired 2D sets such as DRIVE)
        values = _sample(image.array)
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 255:
            kind = "colour" if modality == "rgb" else "grey"
            return [Misfit("intensities", f"values {low:g}..{high:g}, the model knows 8-bit {kind} (0..255)")]
    return []


def _as_planned(image: Image, plan: dict[str, Any]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and spacing in the axis order preprocessing gives the scan (the plan's statistics are in it):
    a sagittal scan of an axially planned model is compared after its reorientation, not in stored order."""
    if not preprocessing_steps(plan).get("reorient"):
        return image.spatial_shape, image.spacing
    order = axis_order(Grid.of(image))
    return tuple(image.spatial_shape[a] for a in order), tuple(image.spacing[a] for a in order)


def _geometry_misfits(image: Image, plan: dict[str, Any]) -> list[Misfit]:
    if plan.get("size"):  # every image is resized to the plan's size: neither extent nor spacing matter
        return []
    median_shape = plan.get("median_shape")
    plan_spacing = plan.get("spacing") or plan.get("median_spacing")
    if not median_shape or not plan_spacing or len(median_shape) != image.spatial_dims:
        return []  # a plan from before these statistics were recorded
    found = []
    shape, spacing = _as_planned(image, plan)
    trained = _extent(median_shape, plan_spacing)
    scan = _extent(shape, spacing)
    ratios = [s / t for s, t in zip(scan, trained, strict=True)]
    if max(ratios) > FOV_FACTOR or min(ratios) < 1 / FOV_FACTOR:
        found.append(Misfit("field of view", f"{_mm(scan)}, the model knows about {_mm(trained)}"))
    target = plan.get("spacing")
    if target:
        steps = [s / t for s, t in zip(spacing, target, strict=True)]
        if max(steps) > SPACING_FACTOR or min(steps) < 1 / SPACING_FACTOR:
            detail = f"{_spacing_text(spacing)}, resampled to the model's {_spacing_text(target)}"
            found.append(Misfit("spacing", detail, refuse=False))
        voxels = math.prod(max(1, round(e / t)) for e, t in zip(scan, target, strict=True))
        typical = math.prod(median_shape)
        if voxels > VOXEL_FACTOR * typical:
            detail = f"{voxels:,} after resampling, {voxels / typical:.0f} times a training case"
            found.append(Misfit("voxels", detail))
    return found


def check_fit(image: Image, plan: dict[str, Any]) -> list[Misfit]:
    """Every way ``image`` differs from the scans ``plan`` was made from (empty: it fits).

    Args:
        image: the scan, as read by :func:`satseg.data.read_image`.
        plan: the model's training plan (``Segmenter.plan``).
    """
    dims, channels = int(plan["spatial_dims"]), int(plan["num_channels"])
    if image.spatial_dims != dims or image.num_channels != channels:
        detail = f"{image.spatial_dims}D with {image.num_channels}, the model takes {dims}D with {channels}"
        return [Misfit("dimensions and channels", detail)]
    return _intensity_misfits(image, plan) + _geometry_misfits(image, plan)
