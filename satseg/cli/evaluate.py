"""``satseg evaluate``: score folders of masks, or a model on a preprocessed split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from satseg.cli.options import LIST, AmpOption, err, print_json, print_table, split_items
from satseg.errors import ConfigError

__all__ = ["evaluate", "evaluation_folder"]


def evaluate(
    pred: Annotated[Path | None, typer.Option("--pred", exists=True, file_okay=False, help="Predicted labels.")] = None,
    gt: Annotated[Path | None, typer.Option("--gt", exists=True, file_okay=False, help="Reference labels.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Run folder or model: predict, then score.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Preprocessed folder whose cases --model scores.")] = None,
    split: Annotated[str, typer.Option("--split", help="With --model: val, train or all.")] = "val",
    fold: Annotated[int | None, typer.Option("--fold", help="With --model: fold \\[default: the run's].")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", file_okay=False, help="Folder for per_case.csv, summary.json.")
    ] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help="Surface Dice tolerance in mm.")] = 1.0,
    labels: Annotated[
        list[str] | None,
        typer.Option("--labels", help="Classes as name=value, e.g. `liver=1,tumour=2` (--pred/--gt)." + LIST),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Cases scored in parallel (--pred/--gt).")] = 1,
    device: Annotated[str, typer.Option(help="With --model: auto, cpu, cuda or cuda:N.")] = "auto",
    amp: AmpOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json to stdout instead of the table.")] = False,
) -> None:
    """Score segmentations: Dice, IoU, FPR, FNR, precision, recall, HD95, ASSD, surface Dice (mean ± std).

    Either `--pred DIR --gt DIR` (files matched by case name, `case.nii.gz` ↔ `case_seg.nii.gz`), or
    `--model RUN --data PREPROCESSED --split val` (segments the split's cases, scores them on their original grids).
    """
    from satseg.evaluation.folders import evaluate_folders, parse_labels
    from satseg.tables import gate_table, summary_table

    gates = []
    if model is not None and data is not None:
        from satseg.evaluation.model import evaluate_model

        folder = output or evaluation_folder(Path(model), split)
        report, gates = evaluate_model(model, data, folder, split=split, fold=fold, tolerance_mm=tolerance,
                                       device=device, amp=amp, progress=True)  # fmt: skip
    elif pred is not None and gt is not None:
        classes = parse_labels(",".join(split_items(labels))) if labels else None
        report = evaluate_folders(pred, gt, output or pred, labels=classes, tolerance_mm=tolerance, workers=workers)
    else:
        raise ConfigError("give either `--pred DIR --gt DIR` or `--model RUN --data PREPROCESSED`")
    if as_json:  # what summary.json holds (with --model it includes the gate report)
        print_json({**report.summary, "gates": gates} if model is not None else report.summary)
        return
    print_table(summary_table(report.summary))
    if gates:
        print_table(gate_table(gates))
    for name in report.summary.get("absent_classes", []):
        err.print(f"warning: class `{name}` is in no prediction and no reference: its scores only say 'both empty'; "
                  "check --labels", highlight=False)  # fmt: skip
    figures = f" and {len(report.figures)} PNG(s) in `{report.figures[0].parent}`" if report.figures else ""
    err.print(f"wrote `{report.per_case_csv}`, `{report.summary_json}`{figures}", highlight=False)


def evaluation_folder(model: Path, split: str) -> Path:
    """``evaluate --model`` without -o: inside a run folder, beside a model file (never inside the file)."""
    return model / f"eval_{split}" if model.is_dir() else model.with_name(f"{model.name}_eval_{split}")
