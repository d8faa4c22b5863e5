"""Segmentation metrics on label arrays: overlap (Dice, IoU, FPR, FNR, precision, recall) and surface distances.

Pure NumPy/SciPy; arrays are in the contract's axis order (``(z, y, x)`` in 3D, ``(y, x)`` in 2D) and
``spacing`` gives the voxel size in mm for each ARRAY axis, in the same order.

Conventions (also in the README):

* **Counts.** Per class, ``TP``, ``FP``, ``FN``, ``TN`` over the whole array; ``FPR = FP / (FP + TN)`` and
  ``FNR = FN / (FN + TP)`` as in Taghanaki et al., arXiv:1804.05181, Tables 1–3; they equal SimpleITK's
  ``LabelOverlapMeasuresImageFilter`` ``FalsePositiveError`` and ``FalseNegativeError`` (ITK ≥ 5).
* **Surface.** The surface of a mask is ``mask XOR binary_erosion(mask, face-connectivity cross)``: the
  foreground voxels with at least one background face neighbour; outside the array counts as background.
  This is SimpleITK's ``BinaryContourImageFilter`` with ``fullyConnected=False`` and MONAI's default.
* **Surface distances.** For each surface voxel of one mask, the Euclidean distance in mm (``spacing``
  applied) to the nearest surface voxel of the other mask (``distance_transform_edt`` of the other
  surface's complement), in both directions.
* **HD95** is the larger of the two directed 95th percentiles (NumPy's linear interpolation), as MONAI's
  ``compute_hausdorff_distance(percentile=95)``; **HD** (HD100) the larger of the two maxima, which is the
  Hausdorff distance between the two surfaces (SimpleITK's ``HausdorffDistanceImageFilter`` on the surface
  images); **ASSD** the mean of all distances of both directions pooled
  (``(Σ d(A→B) + Σ d(B→A)) / (|∂A| + |∂B|)``).
* **Surface Dice (NSD)** at tolerance ``τ`` mm (Nikolov et al., arXiv:1809.04430), exactly as their reference
  implementation (DeepMind's ``surface-distance``, which MONAI's ``compute_surface_dice(use_subvoxels=True)``
  reproduces): the surface is made of marching-cubes elements of each 2×2×2 (2D: 2×2) neighbourhood of voxels,
  each with its area in mm² (2D: its length in mm) at the spacing (:mod:`satseg.evaluation.surface_table`);
  an element is "within τ" when the distance from its neighbourhood to the nearest element of the other
  surface is, and ``NSD = (area of ∂A within τ of ∂B + area of ∂B within τ of ∂A) / (area of ∂A + area of ∂B)``.
* **Empty masks.** Both empty (the class is absent and correctly not predicted): Dice = IoU = precision =
  recall = NSD = 1, FNR = 0, HD95 = HD = ASSD = 0. Exactly one empty: Dice = IoU = NSD = 0 and the
  distances are NaN (undefined). Any other ratio whose denominator is zero (e.g. precision with an empty
  prediction, recall with an empty reference) is NaN. NaN values are left out of means and counted
  separately (see :func:`satseg.evaluation.report.summarise`). This is satseg's one Dice convention:
  validation during training (:mod:`satseg.training.validation`) and the post-processing decision
  (:mod:`satseg.evaluation.postprocess`) score with :func:`dice` too.

Distances are computed on the union bounding box of the two masks only (exact: every surface voxel lies
inside it and everything outside it is background), so large volumes with small structures stay fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from satseg.errors import ConfigError, DataError
from satseg.evaluation.surface_table import ENCODING_KERNEL, code_to_measure

__all__ = [
    "METRICS",
    "COUNTS",
    "confusion_counts",
    "overlap_metrics",
    "dice",
    "surface_mask",
    "surface_distances",
    "surface_areas",
    "surface_dice",
    "distance_metrics",
    "class_metrics",
    "absent_class_metrics",
    "case_metrics",
]

#: Scored metrics, in table order. ``hd`` is HD100 (the maximum); distances are in mm.
METRICS: tuple[str, ...] = ("dice", "iou", "fpr", "fnr", "precision", "recall", "hd95", "hd", "assd", "nsd")
#: Voxel counts reported next to the metrics.
COUNTS: tuple[str, ...] = ("tp", "fp", "fn", "tn")

# Distance metrics of the two empty cases (see the module docstring).
_BOTH_EMPTY = {"hd95": 0.0, "hd": 0.0, "assd": 0.0, "nsd": 1.0}
_ONE_EMPTY = {"hd95": math.nan, "hd": math.nan, "assd": math.nan, "nsd": 0.0}
# Slack for ``d <= tolerance`` so that e.g. 10 × 0.1 mm still counts as within 1 mm.
_TOLERANCE_SLACK_MM = 1e-6


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else math.nan


def confusion_counts(pred_mask: np.ndarray, ref_mask: np.ndarray) -> dict[str, int]:
    """Voxel counts of one class.

    Args:
        pred_mask: boolean prediction, any shape.
        ref_mask: boolean reference, same shape.

    Returns:
        ``{"tp", "fp", "fn", "tn"}`` as Python ints.
    """
    pred_mask, ref_mask = _check_pair(pred_mask, ref_mask)
    tp = int(np.count_nonzero(pred_mask & ref_mask))
    fp = int(np.count_nonzero(pred_mask)) - tp
    fn = int(np.count_nonzero(ref_mask)) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(pred_mask.size) - tp - fp - fn}


def overlap_metrics(counts: Mapping[str, int]) -> dict[str, float]:
    """Dice, IoU, FPR, FNR, precision and recall from voxel counts (empty conventions in the module doc).

    Args:
        counts: ``tp``, ``fp``, ``fn``, ``tn`` as from :func:`confusion_counts`.

    Returns:
        ``{"dice", "iou", "fpr", "fnr", "precision", "recall"}``; NaN where undefined.
    """
    tp, fp, fn, tn = (int(counts[k]) for k in COUNTS)
    if tp + fp + fn == 0:  # neither mask has the class: a perfect "nothing there"
        return {"dice": 1.0, "iou": 1.0, "fpr": _ratio(fp, fp + tn), "fnr": 0.0, "precision": 1.0, "recall": 1.0}
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "fpr": _ratio(fp, fp + tn),
        "fnr": _ratio(fn, fn + tp),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


def dice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice of one class's boolean masks, with the empty-mask conventions of the module doc (both empty: 1)."""
    return overlap_metrics(confusion_counts(pred_mask, ref_mask))["dice"]


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: foreground voxels with a background face neighbour.

    Args:
        mask: boolean array, any number of dimensions; outside the array counts as background.

    Returns:
        Boolean array of the same shape (equal to SimpleITK ``BinaryContour(fullyConnected=False)``).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def surface_areas(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Per voxel, the area (mm², or mm in 2D) of its faces between the mask and background.

    Args:
        mask: boolean array ``(*spatial)``; outside the array counts as background.
        spacing: voxel size in mm per array axis.

    Returns:
        float64 array of the mask's shape; non-zero exactly on :func:`surface_mask`. Its sum is the area of the
        voxelised surface (the perimeter in 2D).
    """
    mask = np.asarray(mask, dtype=bool)
    spacing = _check_spacing(spacing, mask.ndim)
    padded = np.pad(mask, 1, constant_values=False)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    voxel = math.prod(spacing)
    areas = np.zeros(mask.shape, dtype=np.float64)
    for axis in range(mask.ndim):
        exposed = np.zeros(mask.shape, dtype=np.int8)
        for step in (-1, 1):
            neighbour = np.roll(padded, step, axis=axis)[inner]
            exposed += mask & ~neighbour
        areas += exposed * (voxel / spacing[axis])
    return areas


def surface_distances(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm, both ways.

    Args:
        pred_mask: boolean prediction ``(*spatial)``, non-empty.
        ref_mask: boolean reference, same shape, non-empty.
        spacing: voxel size in mm per array axis.

    Returns:
        ``(pred_to_ref, ref_to_pred)``: for every surface voxel of one mask (in C order), the distance to
        the nearest surface voxel of the other.

    Raises:
        DataError: if the masks differ in shape or one is empty (distances are undefined).
    """
    pred_mask, ref_mask = _check_pair(pred_mask, ref_mask)
    spacing = _check_spacing(spacing, pred_mask.ndim)
    box = _union_box(pred_mask, ref_mask)
    if box is None or not pred_mask[box].any() or not ref_mask[box].any():
        raise DataError("surface distances need two non-empty masks; one of them is empty")
    pred_surface, ref_surface = surface_mask(pred_mask[box]), surface_mask(ref_mask[box])
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_ref[pred_surface], to_pred[ref_surface]


def distance_metrics(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 1.0
) -> dict[str, float]:
    """HD95, HD (maximum), ASSD and surface Dice at ``tolerance_mm`` for one class.

    Args:
        pred_mask: boolean prediction ``(*spatial)``.
        ref_mask: boolean reference, same shape.
        spacing: voxel size in mm per array axis.
        tolerance_mm: surface Dice tolerance ``τ`` in mm (≥ 0).

    Returns:
        ``{"hd95", "hd", "assd", "nsd"}``; empty masks follow the module's conventions.
    """
    tolerance_mm = _check_tolerance(tolerance_mm)
    pred_mask, ref_mask = _check_pair(pred_mask, ref_mask)
    has_pred, has_ref = bool(pred_mask.any()), bool(ref_mask.any())
    if not has_pred and not has_ref:
        return dict(_BOTH_EMPTY)
    if not has_pred or not has_ref:
        return dict(_ONE_EMPTY)
    to_ref, to_pred = surface_distances(pred_mask, ref_mask, spacing)
    pooled = np.concatenate([to_ref, to_pred])
    return {
        "hd95": float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95))),
        "hd": float(max(to_ref.max(), to_pred.max())),
        "assd": float(pooled.mean()),
        "nsd": surface_dice(pred_mask, ref_mask, spacing, tolerance_mm),
    }


def _neighbourhood_codes(mask: np.ndarray) -> np.ndarray:
    """The code of every 2×2×2 (2D: 2×2) neighbourhood of ``mask`` (bit weights ``ENCODING_KERNEL``)."""
    kernel = ENCODING_KERNEL[mask.ndim]
    codes = np.zeros(tuple(n - 1 for n in mask.shape), dtype=np.int64)
    for offset in np.ndindex(kernel.shape):
        window = tuple(slice(o, o + n - 1) for o, n in zip(offset, mask.shape, strict=True))
        codes += int(kernel[offset]) * mask[window]
    return codes


def surface_dice(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 1.0
) -> float:
    """Surface Dice (NSD) of two non-empty boolean masks at ``tolerance_mm`` (see the module doc).

    Raises:
        DataError: if a mask is empty (the caller applies the empty-mask conventions).
    """
    pred_mask, ref_mask = _check_pair(pred_mask, ref_mask)
    spacing = _check_spacing(spacing, pred_mask.ndim)
    box = _union_box(pred_mask, ref_mask)
    if box is None or not pred_mask[box].any() or not ref_mask[box].any():
        raise DataError("surface Dice needs two non-empty masks; one of them is empty")
    table = code_to_measure(spacing)
    full = len(table) - 1
    edges, areas = [], []
    for mask in (pred_mask, ref_mask):
        codes = _neighbourhood_codes(np.pad(mask[box], 1).astype(np.int64))  # outside the array: background
        edge = (codes != 0) & (codes != full)
        edges.append(edge)
        areas.append(table[codes[edge]])
    # distances between element centres on the neighbourhood grid (the voxel corners), spacing applied
    to_ref = ndimage.distance_transform_edt(~edges[1], sampling=spacing)[edges[0]]
    to_pred = ndimage.distance_transform_edt(~edges[0], sampling=spacing)[edges[1]]
    limit = _check_tolerance(tolerance_mm) + _TOLERANCE_SLACK_MM
    within = float(areas[0][to_ref <= limit].sum() + areas[1][to_pred <= limit].sum())
    return within / float(areas[0].sum() + areas[1].sum())


def class_metrics(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 1.0
) -> dict[str, float]:
    """Every metric of :data:`METRICS` plus the voxel counts of :data:`COUNTS` for one class.

    Arguments as for :func:`distance_metrics`. Returns metric name → value (counts as float-compatible ints).
    """
    counts = confusion_counts(pred_mask, ref_mask)
    values: dict[str, float] = {
        **overlap_metrics(counts),
        **distance_metrics(pred_mask, ref_mask, spacing, tolerance_mm),
    }
    return {**{name: values[name] for name in METRICS}, **counts}


def absent_class_metrics(num_voxels: int) -> dict[str, float]:
    """What :func:`class_metrics` gives for a class absent from both masks of ``num_voxels`` voxels.

    Args:
        num_voxels: voxels in the case (all of them true negatives).

    Returns:
        Metric name → value, without building the empty masks.
    """
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": int(num_voxels)}
    values = {**overlap_metrics(counts), **_BOTH_EMPTY}
    return {**{name: values[name] for name in METRICS}, **counts}


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Mapping[str, int],
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Per-class metrics of one case.

    Args:
        pred: predicted label array ``(*spatial)`` (integer labels).
        ref: reference label array, same shape.
        labels: class name → label value; value 0 (background) is skipped.
        spacing: voxel size in mm per array axis.
        tolerance_mm: surface Dice tolerance in mm.

    Returns:
        Class name → (metric name → value), see :func:`class_metrics`.

    Raises:
        DataError: if the arrays differ in shape or ``spacing`` does not match their dimensions.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise DataError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = _check_spacing(spacing, pred.ndim)
    return {
        name: class_metrics(pred == value, ref == value, spacing, tolerance_mm)
        for name, value in labels.items()
        if int(value) != 0
    }


def _check_pair(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred_mask, ref_mask = np.asarray(pred_mask, dtype=bool), np.asarray(ref_mask, dtype=bool)
    if pred_mask.shape != ref_mask.shape:
        raise DataError(f"prediction shape {pred_mask.shape} differs from reference shape {ref_mask.shape}")
    return pred_mask, ref_mask


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ConfigError(f"`spacing` must be {ndim} positive numbers (mm per array axis), got {values}")
    return values


def _check_tolerance(tolerance_mm: float) -> float:
    value = float(tolerance_mm)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"the surface Dice tolerance must be ≥ 0 mm, got {tolerance_mm}")
    return value


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of ``a | b`` as slices, or None when both are empty."""
    union = a | b
    if not union.any():
        return None
    box = []
    for axis in range(union.ndim):
        hits = np.flatnonzero(union.any(axis=tuple(i for i in range(union.ndim) if i != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)
