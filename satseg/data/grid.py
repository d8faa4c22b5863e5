"""Voxel grids, cropping and resampling with SimpleITK (the arithmetic is SimpleITK's, not hand-rolled).

A :class:`Grid` is the geometry of an array: shape and spacing in array axis order, origin and direction as
SimpleITK gives them. Resampled grids keep the physical *edges* of the region they cover aligned (the first voxel
of the new grid starts where the first old voxel starts), so that resampling there and back is consistent and an
unchanged spacing gives back the very same grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from satseg.data.io import Image

__all__ = [
    "Grid",
    "nonzero_box",
    "crop_grid",
    "spacing_grid",
    "shape_grid",
    "resample",
    "INTERPOLATORS",
    "axis_order",
    "transpose_grid",
    "transpose_array",
]

INTERPOLATORS = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}


@dataclass(frozen=True)
class Grid:
    """Geometry of an array (see :mod:`satseg.data.io` for axis conventions).

    Attributes:
        shape: spatial shape, array order.
        spacing: mm per array axis.
        origin: physical position of voxel ``0``, SimpleITK order.
        direction: row-major direction matrix, SimpleITK order.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: Image) -> Grid:
        """The grid of an :class:`~satseg.data.io.Image`."""
        return cls(image.spatial_shape, image.spacing, image.origin, image.direction)

    @classmethod
    def from_dict(cls, data: dict) -> Grid:
        """Inverse of :meth:`to_dict`."""
        return cls(*(tuple(data[k]) for k in ("shape", "spacing", "origin", "direction")))

    def to_dict(self) -> dict:
        """JSON-friendly form (lists)."""
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    def _sitk(self) -> sitk.Image:
        """A one-voxel SimpleITK image carrying this geometry, for index <-> point arithmetic."""
        img = sitk.Image([1] * len(self.shape), sitk.sitkUInt8)
        img.SetSpacing(tuple(reversed(self.spacing)))
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def point(self, index_xyz: tuple[float, ...]) -> tuple[float, ...]:
        """Physical point of a continuous index given in SimpleITK (x, y, z) order."""
        return self._sitk().TransformContinuousIndexToPhysicalPoint([float(i) for i in index_xyz])


def axis_order(grid: Grid) -> tuple[int, ...]:
    """The array-axis permutation that puts a case in the common order (physical z, y, x), as nnU-Net does.

    Each array axis runs along a direction cosine; the permutation ``p`` (new array axis ``i`` = old axis
    ``p[i]``) pairs array axes with physical axes so that the summed ``|cos|`` is largest. An axial scan
    gives the identity; a sagittal one brings its slice axis (physical x) last.
    """
    dims = len(grid.shape)
    direction = np.abs(np.asarray(grid.direction, dtype=float).reshape(dims, dims))

    # new array axis i is physical axis dims-1-i; old array axis a is SimpleITK index axis dims-1-a
    def score(perm: tuple[int, ...]) -> float:
        return float(sum(direction[dims - 1 - i, dims - 1 - a] for i, a in enumerate(perm)))

    best = max(itertools.permutations(range(dims)), key=score)
    identity = tuple(range(dims))
    return identity if score(identity) >= score(best) - 1e-9 else tuple(int(a) for a in best)


def transpose_grid(grid: Grid, perm: tuple[int, ...]) -> Grid:
    """The grid of the array transposed by ``perm`` (see :func:`axis_order`): the same voxels in space.

    Voxel 0 stays voxel 0, so the origin is unchanged; shape, spacing and the direction's columns follow.
    """
    dims = len(grid.shape)
    old = np.asarray(grid.direction, dtype=float).reshape(dims, dims)
    new = np.empty_like(old)
    for i, a in enumerate(perm):
        new[:, dims - 1 - i] = old[:, dims - 1 - a]
    return Grid(
        tuple(grid.shape[a] for a in perm),
        tuple(grid.spacing[a] for a in perm),
        grid.origin,
        tuple(float(v) for v in new.ravel()),
    )


def transpose_array(array: np.ndarray, perm: tuple[int, ...], channels: bool = True) -> np.ndarray:
    """``array`` (``(C, *S)``, or ``(*S)`` with ``channels=False``) with its spatial axes permuted by ``perm``."""
    if tuple(perm) == tuple(range(len(perm))):
        return array
    lead = [0] if channels else []
    offset = 1 if channels else 0
    return np.ascontiguousarray(array.transpose(*lead, *(a + offset for a in perm)))


def nonzero_box(array: np.ndarray, extra: np.ndarray | None = None) -> tuple[tuple[int, int], ...]:
    """Bounding box ``((start, stop), …)`` per spatial axis of the voxels where any channel is non-zero.

    Args:
        array: ``(C, *spatial)``.
        extra: optional ``(*spatial)`` mask whose non-zero voxels are included too (labels in training).

    Returns:
        The whole array when nothing is non-zero.
    """
    mask = np.any(array != 0, axis=0)
    if extra is not None:
        mask |= extra != 0
    if not mask.any():
        return tuple((0, int(s)) for s in mask.shape)
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def crop_grid(grid: Grid, box: tuple[tuple[int, int], ...]) -> Grid:
    """The grid of ``array[..., box]``: same spacing and direction, origin moved to the box's first voxel."""
    start_xyz = tuple(reversed([b[0] for b in box]))
    shape = tuple(b[1] - b[0] for b in box)
    return Grid(shape, grid.spacing, grid.point(start_xyz), grid.direction)


def _edge_aligned(grid: Grid, shape: tuple[int, ...], spacing: tuple[float, ...]) -> Grid:
    # first new voxel centre lies half a new voxel inside the old region's edge (old continuous index -0.5)
    first = [-0.5 + 0.5 * new / old for new, old in zip(spacing, grid.spacing, strict=True)]
    return Grid(tuple(shape), tuple(spacing), grid.point(tuple(reversed(first))), grid.direction)


def spacing_grid(grid: Grid, spacing: tuple[float, ...]) -> Grid:
    """Grid covering the same region as ``grid`` at ``spacing`` (shape rounded, at least 1)."""
    if tuple(spacing) == tuple(grid.spacing):
        return grid
    triples = zip(grid.shape, grid.spacing, spacing, strict=True)
    shape = tuple(max(1, int(round(n * old / new))) for n, old, new in triples)
    return _edge_aligned(grid, shape, tuple(float(s) for s in spacing))


def shape_grid(grid: Grid, shape: tuple[int, ...]) -> Grid:
    """Grid covering exactly the same region as ``grid`` with ``shape`` voxels (a plain resize)."""
    if tuple(shape) == tuple(grid.shape):
        return grid
    spacing = tuple(old * n / m for old, n, m in zip(grid.spacing, grid.shape, shape, strict=True))
    return _edge_aligned(grid, tuple(int(s) for s in shape), spacing)


def resample(
    array: np.ndarray,
    source: Grid,
    target: Grid,
    interpolator: str = "linear",
    *,
    default: float = 0.0,
    dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Resample each channel of ``array`` from ``source`` onto ``target`` with ``sitk.Resample``.

    Args:
        array: ``(C, *source.shape)``.
        source: grid of ``array``.
        target: output grid.
        interpolator: ``"nearest"`` (labels: no new values), ``"linear"`` or ``"bspline"`` (cubic).
        default: value for points outside ``source`` (unused: points past the edge take the nearest voxel).
        dtype: output dtype (default: the input's for nearest, float32 otherwise).

    Returns:
        ``(C, *target.shape)``; a plain copy when the grids are equal.
    """
    nearest = interpolator == "nearest"
    dtype = np.dtype(dtype or (array.dtype if nearest else np.float32))
    if source == target:
        return array.astype(dtype, copy=True)
    work = array if nearest else array.astype(np.float32, copy=False)
    if work.dtype == bool or work.dtype == np.int8:
        work = work.astype(np.uint8)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(s) for s in reversed(target.shape)])
    resampler.SetOutputSpacing(tuple(reversed(target.spacing)))
    resampler.SetOutputOrigin(target.origin)
    resampler.SetOutputDirection(target.direction)
    resampler.SetInterpolator(INTERPOLATORS[interpolator])
    resampler.SetDefaultPixelValue(float(default))
    resampler.SetUseNearestNeighborExtrapolator(True)  # rounded grid sizes may reach half a voxel past the edge
    out = np.empty((array.shape[0], *target.shape), dtype=dtype)
    for c in range(array.shape[0]):
        img = sitk.GetImageFromArray(np.ascontiguousarray(work[c]))
        img.SetSpacing(tuple(reversed(source.spacing)))
        img.SetOrigin(source.origin)
        img.SetDirection(source.direction)
        out[c] = sitk.GetArrayFromImage(resampler.Execute(img)).astype(dtype, copy=False)
    return out
