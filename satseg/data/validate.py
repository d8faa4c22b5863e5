"""Load and check the cases of a dataset before anything is written.

Every case is read: images and label must be readable, on the same grid, with the declared number of channels,
finite values and label values within the declared labels. Problems are collected as :class:`BadCase` rows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from satseg.data.datasets import Case, Dataset, mask_to_labels
from satseg.data.grid import Grid, axis_order, transpose_grid
from satseg.data.io import Image, read_image, with_array
from satseg.errors import DataError

__all__ = ["BadCase", "CaseScan", "InvalidCasesError", "load_case_pair", "scan_case"]

_FOREGROUND_SAMPLES = 10_000


@dataclass(frozen=True)
class BadCase:
    """One case that failed validation: which file and why."""

    case_id: str
    file: str
    reason: str


class InvalidCasesError(DataError):
    """Some cases failed validation; ``bad`` lists them (the CLI prints them as a table)."""

    def __init__(self, message: str, bad: list[BadCase], hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.bad = bad


@dataclass
class CaseScan:
    """What validation learned about one case (statistics feed the plan)."""

    case_id: str
    labelled: bool
    bad: BadCase | None = None
    spatial_dims: int = 0
    num_channels: int = 0
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    sums: list[tuple[float, float, int]] = field(default_factory=list)  # per channel: sum, sum of squares, count
    foreground: list[np.ndarray] = field(default_factory=list)  # per channel: sampled intensities under labels


class _Bad(Exception):
    def __init__(self, file: Path | str, reason: str) -> None:
        super().__init__(reason)
        self.file, self.reason = str(file), reason


def _same_grid(a: Image, b: Image) -> str | None:
    if a.spatial_shape != b.spatial_shape:
        return f"shape {list(b.spatial_shape)} differs from the image's {list(a.spatial_shape)}"
    scale = max(max(a.spacing), 1.0)
    for name, tol in (("spacing", 1e-4 * scale), ("origin", 1e-3 * scale), ("direction", 1e-4)):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        if not np.allclose(x, y, rtol=0, atol=tol):
            return f"{name} {np.round(y, 4).tolist()} differs from the image's {np.round(x, 4).tolist()}"
    return None


def _read(path: Path, page: int | None = None) -> Image:
    """The image at ``path`` (``page`` of a TIFF stack); a problem is a :class:`_Bad` naming the file (and page)."""
    try:
        return read_image(path, page)
    except DataError as err:
        raise _Bad(_where(path, page), err.message.replace(f"`{path}`", "").strip(" :") or err.message) from err


def _where(path: Path, page: int | None) -> str:
    return str(path) if page is None else f"{path} (page {page})"


def load_case_pair(case: Case, dataset: Dataset) -> tuple[Image, np.ndarray | None]:
    """Read a case: image with all channels, and its label ``(*spatial)`` as integers (None if unlabelled).

    Raises:
        DataError: naming the file and the reason, if the case is unusable.
    """
    try:
        return _load(case, dataset)
    except _Bad as bad:
        raise DataError(f"`{bad.file}`: {bad.reason}") from bad


def _load(case: Case, dataset: Dataset) -> tuple[Image, np.ndarray | None]:
    if case.problem:
        raise _Bad(case.images[0], case.problem)
    images = [_read(p, case.page) for p in case.images]
    image = images[0]
    for path, other in zip(case.images[1:], images[1:], strict=True):
        if other.num_channels != 1 or other.spatial_dims != image.spatial_dims:
            raise _Bad(path, f"channel file has {other.num_channels} channel(s) in {other.spatial_dims}D")
        problem = _same_grid(image, other)
        if problem:
            raise _Bad(path, f"channel grid differs: {problem}")
    if len(images) > 1:
        image = with_array(image, np.concatenate([im.array for im in images]))
    expected = len(dataset.channel_names) if dataset.channel_names else None
    if expected is not None and image.num_channels != expected:
        shape = "x".join(map(str, image.spatial_shape))
        kind = f"{image.spatial_dims + 1}D ({shape} x {image.num_channels})" if image.num_channels > 1 else "3D"
        declared = f"image is {kind} but dataset.json declares {expected} channel(s)"
        raise _Bad(_where(case.images[0], case.page), declared)
    if np.issubdtype(image.array.dtype, np.floating) and not np.isfinite(image.array).all():
        raise _Bad(_where(case.images[0], case.page), "image holds NaN or Inf values")
    if case.label is None:
        return image, None
    label_image = _read(case.label, case.page)
    label_file = _where(case.label, case.page)
    if dataset.mask_pictures and label_image.spatial_dims == 2:
        label_image = with_array(label_image, mask_to_labels(label_image.array))
    if label_image.num_channels != 1 or label_image.spatial_dims != image.spatial_dims:
        raise _Bad(
            label_file, f"label is {label_image.spatial_dims}D with {label_image.num_channels} channels, expected one"
        )
    problem = _same_grid(image, label_image) if not dataset.mask_pictures else None
    if dataset.mask_pictures and label_image.spatial_shape != image.spatial_shape:
        problem = f"shape {list(label_image.spatial_shape)} differs from the image's {list(image.spatial_shape)}"
    if problem:
        raise _Bad(label_file, f"label grid differs: {problem}")
    label = label_image.array[0]
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all() or np.any(np.mod(label, 1) != 0):
            raise _Bad(label_file, "label holds non-integer values")
    values = set(np.unique(label).astype(np.int64).tolist())
    unknown = sorted(values - set(dataset.labels.values()))
    if unknown:
        raise _Bad(label_file, f"label values {unknown} are not declared (labels: {sorted(dataset.labels.values())})")
    if max(values, default=0) > 255 or min(values, default=0) < 0:
        raise _Bad(label_file, "label values must lie in 0..255")
    return image, label.astype(np.uint8)


def scan_case(case: Case, dataset: Dataset, seed: int = 0) -> CaseScan:
    """Validate one case and collect the statistics the plan needs (never raises for bad data).

    Args:
        case: the case.
        dataset: its dataset (declared channels and labels).
        seed: seed of the foreground intensity sampling.
    """
    scan = CaseScan(case.case_id, case.label is not None)
    try:
        image, label = _load(case, dataset)
    except _Bad as bad:
        scan.bad = BadCase(case.case_id, bad.file, bad.reason)
        return scan
    scan.spatial_dims, scan.num_channels = image.spatial_dims, image.num_channels
    # in the common axis order preprocessing transposes every case to (the plan's spacing and shapes follow it)
    oriented = transpose_grid(Grid.of(image), axis_order(Grid.of(image)))
    scan.shape, scan.spacing = oriented.shape, oriented.spacing
    rng = np.random.default_rng([seed, zlib.crc32(case.case_id.encode())])
    fg = None if label is None else np.flatnonzero(label)
    if fg is not None and fg.size > _FOREGROUND_SAMPLES:
        fg = rng.choice(fg, _FOREGROUND_SAMPLES, replace=False)
    for channel in image.array:
        values = channel.astype(np.float64)
        scan.sums.append((float(values.sum()), float(np.square(values).sum()), int(values.size)))
        if fg is not None:
            scan.foreground.append(channel.ravel()[fg].astype(np.float32))
    return scan
