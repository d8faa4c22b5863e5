"""Preprocess a dataset for training, and map predictions back onto the original grid.

Pipeline per case (the same for training data and for new scans at inference, :func:`preprocess_image`):

0. transpose the array axes to the common order (physical z, y, x) chosen by the direction cosines
   (:func:`~satseg.data.grid.axis_order`), so cases stored sagittal and axial line up (nnU-Net does the same);
1. crop to the foreground: CT voxels above :data:`CT_BODY_HU` (air, about −1000 HU, and padding are left out),
   other channels' non-zero voxels (any channel; training also keeps every labelled voxel);
2. normalise each channel: ``ct`` = clip to the dataset foreground's 0.5–99.5 percentiles, then z-score with the
   dataset mean/std; ``mri`` = z-score per image over its foreground mask (non-zero voxels; the rest becomes 0,
   as in nnU-Net); ``rgb``, ``grey`` (pictures) = per-channel z-score with the dataset mean/std;
3. resample the crop with ``sitk.Resample``: to the plan's spacing (cubic B-spline for images, nearest neighbour
   for labels, so no new label values appear) or, for 2D sets with ``size``, a plain resize to exactly ``H x W``
   (aspect ratio is not kept; the per-axis scale is recorded, so :func:`restore_labels` maps back exactly).

The properties of each case record the original grid (shape, spacing, origin, direction), the axis order, the
crop box, the grid of the preprocessed array and the NIfTI header, which is everything the way back needs.
Plans written before these steps were recorded keep the old ones (see :func:`~satseg.data.plan.preprocessing_steps`).
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from satseg.atomic import atomic_path, atomic_write_json, exclusive, remove_stale_temporaries
from satseg.data.datasets import Case, Dataset, discover_dataset
from satseg.data.grid import (
    Grid,
    axis_order,
    crop_grid,
    nonzero_box,
    resample,
    shape_grid,
    spacing_grid,
    transpose_array,
    transpose_grid,
)
from satseg.data.io import MAX_VOXELS, Image
from satseg.data.plan import build_plan, majority, make_splits, parse_size, parse_spacing, preprocessing_steps
from satseg.data.store import load_case, load_plan, load_splits
from satseg.data.validate import BadCase, CaseScan, InvalidCasesError, load_case_pair, scan_case
from satseg.errors import ConfigError, DataError
from satseg.paths import safe_name

__all__ = [
    "PreprocessReport",
    "preprocess_dataset",
    "preprocess_image",
    "restore_labels",
    "restore_probabilities",
    "restore_argmax",
    "load_plan",
    "load_case",
    "load_splits",
    "foreground_mask",
    "CT_BODY_HU",
]

CT_BODY_HU = -500.0
"""CT voxels above this (Hounsfield units) are body, table or tissue; air (−1000) and padding (−1024…) are not."""

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- one image
def foreground_mask(array: np.ndarray, plan: dict) -> np.ndarray:
    """``(*S)`` mask of the voxels to keep: any channel's foreground (CT: above :data:`CT_BODY_HU`, else non-zero).

    Plans from before foreground cropping use every channel's non-zero voxels (the old crop).
    """
    if preprocessing_steps(plan)["crop"] != "foreground":
        return np.any(array != 0, axis=0)
    mask = np.zeros(array.shape[1:], dtype=bool)
    for channel, norm in zip(array, plan["normalization"], strict=True):
        mask |= channel > CT_BODY_HU if norm["scheme"] == "ct" else channel != 0
    return mask


def _normalise(array: np.ndarray, plan: dict, mask: np.ndarray) -> np.ndarray:
    masked = preprocessing_steps(plan)["zscore"] == "foreground" and bool(mask.any()) and not bool(mask.all())
    out = np.empty(array.shape, dtype=np.float32)
    for c, (channel, norm) in enumerate(zip(array, plan["normalization"], strict=True)):
        values = channel.astype(np.float32)
        if norm["scheme"] == "ct":
            values = np.clip(values, *norm["clip"])
        if norm["scheme"] == "zscore":
            inside = values[mask] if masked else values
            mean, std = float(inside.mean()), float(inside.std())
        else:
            mean, std = norm["mean"], norm["std"]
        out[c] = (values - mean) / max(std, 1e-8)
        if masked and norm["scheme"] == "zscore":
            out[c][~mask] = 0.0  # background is the foreground's mean, whatever the scanner put there
    return out


def _target_grid(cropped: Grid, plan: dict) -> Grid:
    if plan.get("size"):
        return shape_grid(cropped, tuple(plan["size"]))
    if plan.get("spacing"):
        return spacing_grid(cropped, tuple(plan["spacing"]))
    return cropped


def _check_image(image: Image, plan: dict) -> None:
    """The one check of an image against a plan, for training data and new scans alike."""
    if image.spatial_dims != plan["spatial_dims"] or image.num_channels != plan["num_channels"]:
        raise DataError(
            f"image is {image.spatial_dims}D with {image.num_channels} channel(s); the plan expects "
            f"{plan['spatial_dims']}D with {plan['num_channels']} ({', '.join(plan['channel_names'])})"
        )
    if np.issubdtype(image.array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(image.array)))
        if bad:
            # One NaN turns a whole normalised image into NaN, and the mask silently into all background.
            raise DataError(
                f"image holds {bad} NaN or Inf voxel(s); satseg will not guess values for them",
                hint="fix the scan (e.g. replace them with the image minimum) and try again",
            )


def _check_target(target: Grid, channels: int) -> None:
    """Refuse a resampled grid too large to allocate (a tiny spacing in a header makes millions of slices)."""
    voxels = int(np.prod(target.shape, dtype=np.int64)) * channels
    if voxels > MAX_VOXELS:
        raise DataError(
            f"resampling to the plan's grid would make {list(target.shape)} voxels per channel, more than satseg's "
            f"limit of {MAX_VOXELS:,}",
            hint="check the image's spacing in its header",
        )


def _preprocess(image: Image, label: np.ndarray | None, plan: dict) -> tuple[np.ndarray, np.ndarray | None, dict]:
    _check_image(image, plan)
    original = Grid.of(image)
    order = axis_order(original) if preprocessing_steps(plan)["reorient"] else tuple(range(image.spatial_dims))
    oriented = transpose_grid(original, order)
    source = transpose_array(image.array, order)
    if label is not None:
        label = transpose_array(label, order, channels=False)
    mask = foreground_mask(source, plan)
    box = nonzero_box(mask[None], label)
    cropped = crop_grid(oriented, box)
    inner = tuple(slice(a, b) for a, b in box)
    region = (slice(None), *inner)
    target = _target_grid(cropped, plan)
    _check_target(target, image.num_channels)
    normalised = _normalise(source[region], plan, mask[inner])
    array = resample(normalised, cropped, target, "bspline", dtype=np.float32)
    out_label = None
    if label is not None:
        out_label = resample(label[None][region], cropped, target, "nearest", dtype=np.uint8)[0]
    props = {
        "original": original.to_dict(),
        "axis_order": list(order),
        "crop_box": [list(b) for b in box],
        "cropped": cropped.to_dict(),
        "grid": target.to_dict(),
        "num_channels": image.num_channels,
        "source_format": image.source_format,
        "nifti_header": None if image.nifti is None else base64.b64encode(image.nifti.raw).decode("ascii"),
    }
    return array, out_label, props


def preprocess_image(image: Image, plan: dict) -> tuple[np.ndarray, dict]:
    """Turn a new scan into model input exactly as the training cases were made.

    Args:
        image: the scan, as read by :func:`satseg.data.read_image`.
        plan: :func:`load_plan` of the preprocessed training folder.

    Returns:
        ``(C, *S)`` float32 model input, and the properties :func:`restore_labels` needs.

    Raises:
        DataError: the image's dimensionality or channel count does not match the plan.
    """
    array, _, props = _preprocess(image, None, plan)
    return array, props


def _back(array: np.ndarray, props: dict, interpolator: str, fill: np.ndarray, dtype: type) -> np.ndarray:
    grid, cropped, original = (Grid.from_dict(props[k]) for k in ("grid", "cropped", "original"))
    if tuple(array.shape[1:]) != grid.shape:
        shape = list(array.shape[1:])
        raise DataError(f"prediction of shape {shape} is not on the preprocessed grid {list(grid.shape)}")
    order = tuple(props.get("axis_order", range(len(original.shape))))
    oriented = transpose_grid(original, order)
    inside = resample(array, grid, cropped, interpolator, dtype=dtype)
    out = np.empty((array.shape[0], *oriented.shape), dtype=dtype)
    out[:] = fill.reshape(-1, *([1] * len(original.shape)))
    out[(slice(None), *(slice(a, b) for a, b in props["crop_box"]))] = inside
    return transpose_array(out, tuple(int(i) for i in np.argsort(order)))  # back to the input's own axis order


def restore_labels(labels: np.ndarray, props: dict) -> np.ndarray:
    """Map a label map on the preprocessed grid back onto the original image grid (nearest neighbour).

    Args:
        labels: ``(*S)`` integer labels on the grid of the preprocessed case.
        props: the case properties (:func:`preprocess_image` or :func:`load_case`).

    Returns:
        ``(*S_original)`` labels, background (0) outside the crop box; same dtype as ``labels``.
    """
    labels = np.asarray(labels)
    return _back(labels[None], props, "nearest", np.zeros(1), labels.dtype)[0]


def restore_probabilities(probs: np.ndarray, props: dict) -> np.ndarray:
    """Map class probabilities ``(K, *S)`` back onto the original grid (linear interpolation).

    Outside the crop box the background (channel 0) has probability 1, every other class 0.
    """
    fill = np.zeros(probs.shape[0])
    fill[0] = 1.0
    return _back(np.asarray(probs, dtype=np.float32), props, "linear", fill, np.float32)


def restore_argmax(probs: np.ndarray, props: dict) -> np.ndarray:
    """Labels on the original grid from class probabilities ``(K, *S)`` on the preprocessed grid.

    Each class's probability is resampled linearly onto the original grid (outside the crop box: background),
    then the argmax is taken. This follows the model's boundary between voxels of the coarser grid, where
    resampling the argmax labels with nearest neighbour would give staircases. Classes are resampled one at a
    time against a running maximum, so memory is two float32 and one uint8 copy of the original grid whatever
    the number of classes. Ties go to the lower class, as with ``np.argmax``.

    Returns:
        ``(*S_original)`` uint8 labels.
    """
    probs = np.asarray(probs)
    best = labels = None
    for k in range(probs.shape[0]):
        fill = np.array([1.0 if k == 0 else 0.0])
        p = _back(probs[k : k + 1].astype(np.float32, copy=False), props, "linear", fill, np.float32)[0]
        if best is None:
            best, labels = p, np.zeros(p.shape, dtype=np.uint8)
            continue
        higher = p > best
        labels[higher] = k
        np.maximum(best, p, out=best)
    return labels


# ---------------------------------------------------------------- whole datasets
@dataclass
class PreprocessReport:
    """What :func:`preprocess_dataset` did."""

    output: Path
    plan: dict
    written: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    bad: list[BadCase] = field(default_factory=list)
    seconds: float = 0.0


def _write_json(path: Path, data: object) -> None:
    atomic_write_json(path, data)


def _write_case(case: Case, dataset: Dataset, plan: dict, cases_dir: Path) -> str:
    safe_name(case.case_id, "case id", case.images[0])
    image, label = load_case_pair(case, dataset)
    array, out_label, props = _preprocess(image, label, plan)
    props |= {
        "case_id": case.case_id,
        "image_files": [str(p) for p in case.images],
        "label_file": None if case.label is None else str(case.label),
        "shape": list(array.shape[1:]),
        "label_values": [] if out_label is None else np.unique(out_label).tolist(),
    }
    if case.page is not None:  # a page of a TIFF stack: image_files[0] and label_file are the stacks
        props["page"] = case.page
    arrays = {"image": array} if out_label is None else {"image": array, "label": out_label}
    with atomic_path(cases_dir / f"{case.case_id}.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    _write_json(cases_dir / f"{case.case_id}.json", props)  # written last: its presence marks a finished case
    return case.case_id


_ORPHAN_POLL_S = 0.5


def _exit_with_parent(parent: int) -> None:
    """Watch the parent from a daemon thread and end this worker as soon as it is gone.

    A pool's workers only notice a parent that died of SIGKILL when they next read a job; busy or idle they
    would otherwise live on (and hold memory) for as long as their current case takes, or for ever.
    """
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_ORPHAN_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="satseg-parent-watch", daemon=True).start()


def _worker_setup(parent: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    _exit_with_parent(parent)


def _run(fn: Callable, jobs: list[tuple], workers: int, label: str, progress: bool) -> list:
    bar = nullcontext()
    if progress and jobs:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        bar = Progress(*columns, console=Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR"))))
    results = []
    with bar:
        task = bar.add_task(label, total=len(jobs)) if progress and jobs else None
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(fn(*job))
                if task is not None:
                    bar.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=_worker_setup, initargs=(os.getpid(),)) as pool:
                for result in pool.map(fn, *zip(*jobs, strict=True)):
                    results.append(result)
                    if task is not None:
                        bar.advance(task)
    return results


def _sort_out(scans: list[CaseScan], dataset: Dataset) -> tuple[list[CaseScan], list[BadCase]]:
    bad = [s.bad for s in scans if s.bad is not None]
    good = [s for s in scans if s.bad is None]
    if not good:
        return [], bad
    dims = majority([s.spatial_dims for s in good])
    channels = majority([s.num_channels for s in good])
    keep = []
    for s in good:
        file = str(next(c for c in dataset.cases if c.case_id == s.case_id).images[0])
        if s.spatial_dims != dims:
            bad.append(BadCase(s.case_id, file, f"image is {s.spatial_dims}D where {dims}D is expected"))
        elif s.num_channels != channels:
            bad.append(BadCase(s.case_id, file, f"image has {s.num_channels} channel(s) where {channels} expected"))
        else:
            keep.append(s)
    return keep, bad


def _prepare_output(output: Path, plan: dict, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output `{output}` exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        if not (output / "plan.json").is_file():
            raise ConfigError(f"output `{output}` is a non-empty folder without plan.json", hint="choose another -o")
        if load_plan(output) != plan:
            raise ConfigError(
                f"output `{output}` was preprocessed with other settings or data", hint="pass --overwrite or another -o"
            )
    try:
        (output / "cases").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create `{output / 'cases'}`: {err.strerror or err}", hint="choose another -o"
        ) from err


def preprocess_dataset(
    dataset: str | Path,
    output: str | Path,
    *,
    spacing: str | Sequence[float] | None = "auto",
    modality: str = "auto",
    size: Sequence[int] | None = None,
    folds: int = 5,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: bool = False,
    image_dir: str | Path | None = None,
    label_dir: str | Path | None = None,
) -> PreprocessReport:
    """Validate every case of a dataset folder, then write ``plan.json``, ``splits.json`` and ``cases/``.

    Args:
        dataset: MSD, nnU-Net v2 or paired ``images/`` + ``masks/`` folder (None with ``image_dir``/``label_dir``).
        output: the preprocessed folder.
        spacing: ``"auto"`` (3D: the dataset's median spacing; 2D: keep), ``"keep"``, or mm per array axis.
        modality: ``"auto"`` (from dataset.json; paired folders: rgb or grey), ``"ct"``, ``"mri"``, ``"rgb"`` or
            ``"grey"``.
        size: 2D only: resize every case to ``(H, W)`` (plain resize, aspect not kept).
        folds: number of cross-validation folds in ``splits.json``.
        seed: seed of the fold assignment.
        workers: processes (1 = in this process).
        overwrite: redo finished cases and accept an output made with other settings.
        skip_bad: leave out cases that fail validation instead of stopping.
        progress: show a progress bar on stderr.
        image_dir, label_dir: paired folders given explicitly (``--images DIR --labels DIR``).

    Raises:
        InvalidCasesError: some cases fail validation (and ``skip_bad`` is False); nothing is written.
        ConfigError: invalid options, or an output folder made with other settings.
        DataError: the dataset folder is missing, empty or in no known layout.
    """
    start = time.perf_counter()
    target, size = parse_spacing(spacing), parse_size(size)
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1")
    data = discover_dataset(dataset, image_dir=image_dir, label_dir=label_dir)
    scans = _run(scan_case, [(c, data, seed) for c in data.cases], workers, "validating", progress)
    good, bad = _sort_out(scans, data)
    if bad and (not skip_bad or not good):
        first = bad[0]
        what = f"`{first.file}`: {first.reason}"
        message = what if len(bad) == 1 else f"{len(bad)} of {len(scans)} cases failed validation; first: {what}"
        hint = "fix or remove them, or pass --skip-bad to leave them out" if good else None
        raise InvalidCasesError(message, bad, hint)
    plan = build_plan(data, good, spacing=target, modality=modality, size=size)
    splits = make_splits(plan["cases"], folds, seed)
    output = Path(output)
    _prepare_output(output, plan, overwrite)
    with exclusive(output, "preprocessing"):  # two preprocess runs into one -o would break each other
        return _write_output(output, data, plan, splits, good, bad, overwrite, workers, progress, start)


def _write_output(output, data, plan, splits, good, bad, overwrite, workers, progress, start) -> PreprocessReport:
    """The writing half of :func:`preprocess_dataset`, run while holding the output's lock."""
    for folder in (output, output / "cases"):  # left by a run that was killed mid-write (never another's: locked)
        for stale in remove_stale_temporaries(folder):
            log.info("removed `%s`, left by an interrupted run", stale)
    _write_json(output / "plan.json", plan)
    cases_dir = output / "cases"
    chosen = {s.case_id for s in good}
    todo, reused = [], []
    for case in data.cases:
        if case.case_id not in chosen:
            continue
        done = (cases_dir / f"{case.case_id}.json").is_file() and (cases_dir / f"{case.case_id}.npz").is_file()
        (reused if done and not overwrite else todo).append(case)
    written = _run(_write_case, [(c, data, plan, cases_dir) for c in todo], workers, "preprocessing", progress)
    _write_json(output / "splits.json", splits)
    report = PreprocessReport(output, plan, written, [c.case_id for c in reused], bad)
    report.seconds = time.perf_counter() - start
    log.info("preprocessed %d case(s) into `%s` in %.1f s", len(written), output, report.seconds)
    return report
