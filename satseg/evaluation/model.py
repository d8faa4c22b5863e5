"""``satseg evaluate --model RUN --data PREPROCESSED``: predict a split's cases, then score them.

Each case is read from its original files (recorded by ``satseg preprocess``), segmented exactly as
``satseg segment`` would, and scored on its original grid against its original label, so the figures
are what a user of the model gets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from satseg.data.datasets import mask_to_labels
from satseg.data.io import image_stem, is_supported_image, read_image
from satseg.data.store import load_case, load_plan, load_splits
from satseg.errors import ConfigError, DataError, look_up_option
from satseg.evaluation.metrics import case_metrics
from satseg.evaluation.report import EvaluationReport, absent_classes, gate_report, summarise, write_report
from satseg.evaluation.visual_report import CaseView, WorstCases, case_dice
from satseg.inference.batch import write_mask
from satseg.inference.segmenter import load_segmenter
from satseg.paths import check_output, safe_name
from satseg.progress import ItemProgress

__all__ = ["evaluate_model", "split_cases", "read_original_case"]


def split_cases(data_dir: str | Path, split: str, fold: int) -> list[str]:
    """Case ids of ``split`` (``val``, ``train`` or ``all``) of fold ``fold`` of a preprocessed folder."""
    split = look_up_option(split, ("val", "train", "all"), "split")
    splits = load_splits(data_dir)
    if not 0 <= fold < len(splits):
        raise ConfigError(f"`fold` must be 0..{len(splits) - 1}, got {fold}")
    if split == "all":
        return sorted(splits[fold]["train"] + splits[fold]["val"])
    return list(splits[fold][split])


def evaluate_model(
    run: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "val",
    fold: int | None = None,
    tolerance_mm: float = 1.0,
    device: str = "auto",
    amp: bool | None = None,
    save_predictions: bool = True,
    progress: bool = False,
) -> tuple[EvaluationReport, list[dict[str, Any]]]:
    """Segment the cases of a split with a trained model and score them on their original grids.

    Args:
        run: run folder, checkpoint or shipped model name.
        data_dir: the preprocessed folder the cases come from.
        out_dir: where ``per_case.csv``, ``summary.json``, ``predictions/`` and the visual ``report/`` go.
        split: ``val`` (default), ``train`` or ``all``.
        fold: the fold; default: the one the model was trained with (0 if unknown).
        tolerance_mm: surface Dice tolerance.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: autocast (True, on any device), float32 (False) or as the run records (None).
        save_predictions: also write each predicted mask to ``predictions/``.
        progress: show bars over the cases and the current case's windows, with remaining time, on stderr.

    Returns:
        The evaluation report and the model's gate report (channels switched off per skip).
    """
    segmenter = load_segmenter(run, device=device, amp=amp)
    trained_fold = segmenter.config.get("train", {}).get("fold")
    _check_unseen(run, split, fold, trained_fold)
    if fold is None:
        fold = max(0, int(trained_fold or 0))
    plan = load_plan(data_dir)
    if plan["labels"] != segmenter.labels:
        raise ConfigError(f"`{run}` predicts labels {segmenter.labels}, but `{data_dir}` has {plan['labels']}")
    labels = {k: v for k, v in segmenter.labels.items() if v != 0}
    out_dir = Path(out_dir)
    rows: list[dict[str, Any]] = []
    worst = WorstCases()  # the images of the lowest-scoring cases, for the report's previews
    case_ids = split_cases(data_dir, split, fold)
    with ItemProgress(len(case_ids), "evaluating", enabled=progress) as bar:
        for case_id in case_ids:
            bar.item(case_id)
            image, ref, source = read_original_case(data_dir, case_id)
            seg = segmenter.segment(image, source=source, progress=bar.windows)
            if save_predictions:  # the dataset's own format (a PNG per page of a TIFF stack), 0/255 or palette
                suffix = _label_suffix(data_dir, case_id)
                target = out_dir / "predictions" / f"{case_id}{suffix}"  # case ids are checked plain names
                check_output(target, inputs=[source], overwrite=True)  # an earlier prediction, never the scan
                write_mask(seg.labels, target, segmenter.labels, overwrite=True)
            scores = case_metrics(seg.labels.array[0], ref, labels, image.spacing, tolerance_mm)
            case_rows = [{"case": case_id, "class": n, "label": labels[n], **v} for n, v in scores.items()]
            view = CaseView(image.array, ref, seg.labels.array[0], tuple(image.spacing))
            worst.offer(case_id, case_dice(case_rows)[case_id], view)
            rows += case_rows
    summary = {"model": str(run), "data": str(data_dir), "split": split, "fold": fold,
               "tolerance_mm": tolerance_mm, "labels": labels, "absent_classes": absent_classes(rows),
               **summarise(rows)}  # fmt: skip
    report = EvaluationReport(rows=rows, summary=summary, labels=labels, missing_predictions=[])
    gates = gate_report(segmenter.model) if segmenter.model is not None else []
    write_report(report, out_dir, {"gates": gates}, views=worst.get)
    return report, gates


def _check_unseen(run: str | Path, split: str, fold: int | None, trained_fold: int | None) -> None:
    """Refuse to report training cases as validation cases (scores that look better than the model is)."""
    if split != "val" or trained_fold is None:
        return
    if int(trained_fold) == -1:
        raise ConfigError(
            f"`{run}` was trained on every case (--fold -1): no `val` split is unseen by it",
            hint="evaluate it on other data (`satseg evaluate --pred/--gt`), or use --split train knowingly",
        )
    if fold is not None and int(fold) != int(trained_fold):
        raise ConfigError(
            f"`{run}` was trained with fold {trained_fold}; the val cases of fold {fold} are among its training cases",
            hint=f"leave out --fold (or pass --fold {trained_fold})",
        )


def read_original_case(data_dir: str | Path, case_id: str) -> tuple[Any, Any, str]:
    """A preprocessed case's original image and reference labels, read from the files it was made from.

    Returns:
        ``(image, labels (*S) on the image's grid, the image's file name)``.

    Raises:
        DataError: the case has no label.
    """
    _, _, props = load_case(data_dir, case_id)
    if not props.get("label_file"):
        raise DataError(f"case `{case_id}` has no label to score against")
    page = props.get("page")  # a page of a TIFF stack (ISBI-2012): image and label are read from their stacks
    image = read_image(props["image_files"][0], page) if len(props["image_files"]) == 1 else _stack(props)
    reference = read_image(props["label_file"], page)
    # Picture masks (0/255, colour) become label indices exactly as `satseg preprocess` read them.
    ref = mask_to_labels(reference.array) if reference.source_format == "picture" else reference.array[0]
    return image, ref, props["image_files"][0]


def _label_suffix(data_dir: str | Path, case_id: str) -> str:
    """The ending of the case's own label file (``.png``, ``.gif``, ``.nii.gz``…); ``.nii.gz`` when unknown;
    ``.png`` for a page of a TIFF stack."""
    base = Path(data_dir) / "cases" / safe_name(case_id, "case id", Path(data_dir))
    try:
        props = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
        label = props.get("label_file")
    except (OSError, ValueError, AttributeError):
        props, label = {}, None
    if not label:
        return ".nii.gz"
    if props.get("page") is not None:  # one page of a TIFF stack: a PNG that any viewer opens
        return ".png"
    suffix = Path(label).name[len(image_stem(Path(label))) :].lower()
    return suffix if suffix and is_supported_image(Path(f"x{suffix}")) else ".nii.gz"


def _stack(props: dict[str, Any]):
    """A multi-channel case stored one file per channel (nnU-Net layout) read back as one image."""
    import numpy as np

    from satseg.data.io import with_array

    images = [read_image(p) for p in props["image_files"]]
    return with_array(images[0], np.concatenate([im.array for im in images]))
