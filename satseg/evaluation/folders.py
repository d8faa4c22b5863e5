"""Score folders of predicted label images against reference ones (``satseg evaluate PRED GT``).

Files are matched by case name: the file name without its image extension (one of
:data:`satseg.data.io.IMAGE_SUFFIXES`, e.g. ``.nii.gz`` or ``.png``) and without one trailing ``_seg``,
``_segmentation``, ``_label``, ``_labels``, ``_gt``, ``_mask``, ``_pred`` or ``_prediction``; so
``pred/case_001.nii.gz`` is scored against ``gt/case_001_seg.nii.gz``. Every prediction needs a reference;
a reference without a prediction (a failed segmentation) scores 0 for every class (Dice, IoU, NSD, recall;
distances undefined) and is listed in the report: it never vanishes from the means. Metric definitions and the
empty-mask conventions are in :mod:`satseg.evaluation.metrics`; the report written (``per_case.csv``,
``summary.json``) in :mod:`satseg.evaluation.report`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from satseg.data.io import IMAGE_SUFFIXES, is_picture
from satseg.errors import ConfigError, DataError
from satseg.evaluation.metrics import absent_class_metrics, case_metrics
from satseg.evaluation.report import EvaluationReport, absent_classes, summarise, write_report

__all__ = ["LabelVolume", "case_name", "match_cases", "parse_labels", "evaluate_case", "evaluate_folders"]

logger = logging.getLogger(__name__)

_CASE_SUFFIXES = ("_segmentation", "_seg", "_labels", "_label", "_gt", "_mask", "_prediction", "_pred")
# Geometry tolerances: spacing (relative), origin (mm), direction cosines (absolute).
_SPACING_RTOL, _ORIGIN_ATOL_MM, _DIRECTION_ATOL = 1e-4, 1e-3, 1e-4

class LabelVolume(NamedTuple):
    """A label image: ``array`` ``(*spatial)`` in contract axis order and its geometry.

    ``spacing`` is in mm per array axis; ``origin`` and ``direction`` are as SimpleITK gives them.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


Reader = Callable[[Path], Any]


def case_name(path: str | Path) -> str | None:
    """The case a label file belongs to, or None if the file is not a supported image.

    Args:
        path: a file name or path, e.g. ``"case_001_seg.nii.gz"``.

    Returns:
        The case name, e.g. ``"case_001"``.
    """
    name = Path(path).name
    lower = name.lower()
    extension = next((ext for ext in IMAGE_SUFFIXES if lower.endswith(ext)), None)
    if extension is None or name.startswith("."):
        return None
    stem = name[: -len(extension)]
    for suffix in _CASE_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _cases_in(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"the {what} folder `{folder}` does not exist or is not a folder")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = case_name(path) if path.is_file() else None
        if name is None:
            continue
        if name in cases:
            raise DataError(
                f"`{cases[name]}` and `{path}` in the {what} folder are both case `{name}`",
                hint="keep one file per case",
            )
        cases[name] = path
    return cases


def match_cases(pred_dir: str | Path, gt_dir: str | Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair prediction and reference files by case name.

    Args:
        pred_dir: folder of predicted label images.
        gt_dir: folder of reference label images.

    Returns:
        ``([(case, pred_path, gt_path), …] sorted by case, [reference cases without a prediction])``.

    Raises:
        DataError: if a folder is missing, has no label images, holds two files of one case, or a
            prediction has no reference.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds, refs = _cases_in(pred_dir, "prediction"), _cases_in(gt_dir, "reference")
    for what, folder, found in (("prediction", pred_dir, preds), ("reference", gt_dir, refs)):
        if not found:
            raise DataError(
                f"no label images in the {what} folder `{folder}`",
                hint=f"supported: {', '.join(IMAGE_SUFFIXES)}",
            )
    orphans = sorted(set(preds) - set(refs))
    if orphans:
        shown = ", ".join(f"`{preds[c].name}`" for c in orphans[:5]) + (" …" if len(orphans) > 5 else "")
        raise DataError(
            f"{len(orphans)} prediction(s) in `{pred_dir}` have no reference in `{gt_dir}`: {shown}",
            hint="name files by case (`case.nii.gz` or `case_seg.nii.gz`) in both folders",
        )
    matched = [(case, preds[case], refs[case]) for case in sorted(preds)]
    return matched, sorted(set(refs) - set(preds))


def parse_labels(text: str) -> dict[str, int]:
    """Parse ``"liver=1,tumour=2"`` into ``{"liver": 1, "tumour": 2}``.

    Raises:
        ConfigError: naming the malformed pair.
    """
    labels: dict[str, int] = {}
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = pair.partition("=")
        try:
            number = int(value)
        except ValueError:
            number = -1
        if not sep or not name.strip() or number < 0:
            raise ConfigError(f"bad `--labels` entry `{pair}`: expected name=value with value ≥ 0, e.g. `liver=1`")
        if name.strip() in labels:
            raise ConfigError(f"`--labels` names class `{name.strip()}` twice")
        labels[name.strip()] = number
    if not labels:
        raise ConfigError("`--labels` is empty; give name=value pairs, e.g. `liver=1,tumour=2`")
    return labels


def _read_label(path: Path) -> LabelVolume:
    """Read a label image with satseg's own reader, which refuses truncated and corrupt files.

    2D pictures: grey (or RGB with equal channels) only; 0/255 masks become 0/1.
    """
    from satseg.data.io import read_image

    image = read_image(path)
    array = image.array
    if image.source_format == "picture":
        if not all(np.array_equal(array[0], array[c]) for c in range(1, array.shape[0])):
            raise DataError(f"`{path}` is a colour image, not a label image", hint="save labels as greyscale")
        array = array[0]
        if np.isin(array, (0, 255)).all():
            array = (array == 255).astype(np.uint8)
        return LabelVolume(array, image.spacing, image.origin, image.direction)
    if image.num_channels != 1:
        raise DataError(f"`{path}` has {image.num_channels} components; a label image has one")
    return LabelVolume(array[0], image.spacing, image.origin, image.direction)


def _as_volume(image: Any, path: Path) -> LabelVolume:
    """Accept a :class:`LabelVolume`/tuple or a ``satseg.data.io.Image`` (``(1, *S)`` array); check labels."""
    if hasattr(image, "array"):
        image = LabelVolume(image.array, tuple(image.spacing), tuple(image.origin), tuple(image.direction))
    array, spacing, origin, direction = image
    array = np.asarray(array)
    if array.ndim == len(spacing) + 1 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != len(spacing):
        raise DataError(f"`{path}` has shape {array.shape}; a label image has one channel")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise DataError(f"`{path}` holds non-integer values; it looks like a probability map, not labels")
        array = array.astype(np.int64)
    return LabelVolume(array, tuple(float(s) for s in spacing), tuple(origin), tuple(direction))


def _check_geometry(pred: LabelVolume, ref: LabelVolume, pred_path: Path, gt_path: Path) -> None:
    problems = []
    if pred.array.shape != ref.array.shape:
        problems.append(f"shape {pred.array.shape} vs {ref.array.shape}")
    elif not np.allclose(pred.spacing, ref.spacing, rtol=_SPACING_RTOL, atol=0):
        problems.append(f"spacing {pred.spacing} vs {ref.spacing}")
    elif len(pred.origin) != len(ref.origin) or not np.allclose(pred.origin, ref.origin, atol=_ORIGIN_ATOL_MM):
        problems.append(f"origin {pred.origin} vs {ref.origin}")
    elif len(pred.direction) != len(ref.direction) or not np.allclose(
        pred.direction, ref.direction, atol=_DIRECTION_ATOL
    ):
        problems.append(f"direction {pred.direction} vs {ref.direction}")
    if problems:
        raise DataError(
            f"`{pred_path}` and `{gt_path}` are not on the same grid: {problems[0]}",
            hint="a prediction must have its reference's shape, spacing, origin and direction",
        )


def evaluate_case(
    case: str,
    pred_path: Path,
    gt_path: Path,
    labels: Mapping[str, int] | None = None,
    tolerance_mm: float = 1.0,
    reader: Reader | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Read one prediction/reference pair, check their geometry and score every class.

    Args:
        case: the case name written in the rows.
        pred_path: predicted label image.
        gt_path: reference label image.
        labels: class name → label value; None scores every non-zero value present in either image
            (named ``label_<value>``).
        tolerance_mm: surface Dice tolerance in mm.
        reader: ``path -> LabelVolume`` (or an object with ``array``, ``spacing``, ``origin``, ``direction``).

    Returns:
        ``(rows, number of voxels)``; rows as in :attr:`EvaluationReport.rows`.

    Raises:
        DataError: if a file cannot be read or the two are not on the same grid.
    """
    read = reader or _read_label
    pred, ref = _as_volume(read(pred_path), pred_path), _as_volume(read(gt_path), gt_path)
    _check_geometry(pred, ref, pred_path, gt_path)
    if labels is None:
        present = np.union1d(np.unique(pred.array), np.unique(ref.array))
        labels = {f"label_{int(v)}": int(v) for v in present if v != 0}
    scores = case_metrics(pred.array, ref.array, labels, ref.spacing, tolerance_mm)
    rows = [{"case": case, "class": name, "label": int(labels[name]), **values} for name, values in scores.items()]
    logger.debug("scored %s (%d classes)", case, len(rows))
    return rows, int(ref.array.size)


def _run_case(item: tuple[str, Path, Path], **options: Any) -> tuple[list[dict[str, Any]], int]:
    return evaluate_case(*item, **options)


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path | None = None,
    labels: Mapping[str, int] | None = None,
    tolerance_mm: float = 1.0,
    workers: int = 1,
    reader: Reader | None = None,
) -> EvaluationReport:
    """Score every prediction in ``pred_dir`` against its reference in ``gt_dir``.

    Args:
        pred_dir: folder of predicted label images (any supported format).
        gt_dir: folder of reference label images, matched by case name (see the module doc).
        out_dir: where to write ``per_case.csv`` and ``summary.json`` (atomically); None writes nothing.
        labels: class name → label value (value 0, background, is not scored); None scores every non-zero
            value found in any case, named ``label_<value>``, a class absent from a case counting as
            correctly absent there.
        tolerance_mm: surface Dice tolerance in mm.
        workers: cases scored in parallel processes (1: in this process).
        reader: ``path -> LabelVolume``-like reader; defaults to :func:`satseg.data.io.read_image`.

    Returns:
        The :class:`EvaluationReport`.

    Raises:
        DataError: for missing folders, unmatched predictions, unreadable files or mismatched geometry.
        ConfigError: for a bad ``workers`` or ``tolerance_mm``.
    """
    if workers < 1:
        raise ConfigError(f"`workers` must be ≥ 1, got {workers}")
    if not math.isfinite(float(tolerance_mm)) or tolerance_mm < 0:
        raise ConfigError(f"the surface Dice tolerance must be ≥ 0 mm, got {tolerance_mm}")
    matched, missing = match_cases(pred_dir, gt_dir)
    if missing:  # a failed segmentation must not make the method look better: it scores 0, never vanishes
        logger.warning("%d reference case(s) have no prediction and score 0: %s", len(missing), missing)
    chosen = None if labels is None else {name: int(v) for name, v in labels.items() if int(v) != 0}
    if chosen is not None and not chosen:
        raise ConfigError("`labels` names only the background (0); give at least one foreground class")
    run = partial(_run_case, labels=chosen, tolerance_mm=tolerance_mm, reader=reader)
    if workers == 1 or len(matched) == 1:
        results = [run(item) for item in matched]
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(matched))) as pool:
            results = list(pool.map(run, matched))
    references = _cases_in(Path(gt_dir), "reference")
    unpredicted = [(case, _as_volume((reader or _read_label)(references[case]), references[case])) for case in missing]
    if chosen is None:  # every non-zero value of any prediction or reference
        values = {row["label"] for case_rows, _ in results for row in case_rows}
        values |= {int(v) for _, ref in unpredicted for v in np.unique(ref.array) if v != 0}
        chosen = {f"label_{v}": v for v in sorted(values)}
        if not chosen:
            raise DataError(
                f"no prediction in `{pred_dir}` and no reference in `{gt_dir}` holds a foreground label: "
                "nothing to score",
                hint="check the folders (all masks are empty), or name the classes with --labels",
            )
    rows, chosen = _complete_rows(matched, results, chosen)
    rows += [_missing_row(case, ref.array, name, value) for case, ref in unpredicted for name, value in chosen.items()]
    absent = absent_classes(rows)
    if absent:
        logger.warning("class(es) %s occur in no prediction and no reference; check the labels", absent)
    pictures = all(is_picture(path) for path in references.values())
    summary = {
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
        "tolerance_mm": float(tolerance_mm),
        "distance_unit": "px" if pictures else "mm",  # pictures have no physical spacing: distances in pixels
        "labels": chosen,
        "missing_predictions": missing,
        "absent_classes": absent,
        **summarise(rows),
    }
    report = EvaluationReport(rows=rows, summary=summary, labels=chosen, missing_predictions=missing)
    if out_dir is not None:
        files = {case: (pred_path, gt_path) for case, pred_path, gt_path in matched}
        files.update({case: (None, references[case]) for case in missing})  # outlined against no prediction
        scored = [path for pair in files.values() for path in pair if path is not None]
        write_report(report, out_dir, views=partial(_view_files, files, reader or _read_label), inputs=scored)
    return report


def _view_files(files: Mapping[str, tuple[Path | None, Path]], read: Reader, case: str):
    """A case of a folder evaluation, read back for its preview (no image: outlines on black)."""
    from satseg.evaluation.visual_report import CaseView

    pred_path, gt_path = files[case]
    ref = _as_volume(read(gt_path), gt_path)
    pred = np.zeros_like(ref.array) if pred_path is None else _as_volume(read(pred_path), pred_path).array
    return CaseView(None, ref.array, pred, ref.spacing)


def _missing_row(case: str, ref: np.ndarray, name: str, value: int) -> dict[str, Any]:
    """The row of a case without a prediction: the worst score (Dice, IoU, NSD, recall 0), distances undefined."""
    fn = int(np.count_nonzero(ref == value))
    return {
        "case": case, "class": name, "label": value, "dice": 0.0, "iou": 0.0, "fpr": math.nan,
        "fnr": 1.0 if fn else math.nan, "precision": math.nan, "recall": 0.0 if fn else math.nan, "hd95": math.nan,
        "hd": math.nan, "assd": math.nan, "nsd": 0.0, "tp": 0, "fp": 0, "fn": fn, "tn": int(ref.size) - fn,
    }  # fmt: skip


def _complete_rows(
    matched: Sequence[tuple[str, Path, Path]],
    results: Sequence[tuple[list[dict[str, Any]], int]],
    chosen: dict[str, int] | None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """With discovered labels, add 'correctly absent' rows so every case scores every class; sort rows."""
    if chosen is None:
        values = sorted({row["label"] for case_rows, _ in results for row in case_rows})
        chosen = {f"label_{v}": v for v in values}
    order = {name: i for i, name in enumerate(chosen)}
    rows: list[dict[str, Any]] = []
    for (case, _, _), (case_rows, num_voxels) in zip(matched, results, strict=True):
        scored = {row["class"] for row in case_rows}
        absent = [
            {"case": case, "class": name, "label": value, **absent_class_metrics(num_voxels)}
            for name, value in chosen.items()
            if name not in scored
        ]
        rows.extend(sorted(case_rows + absent, key=lambda row: order[row["class"]]))
    return rows, chosen


