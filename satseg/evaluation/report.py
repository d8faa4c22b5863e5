"""The tabular evaluation report: per-case rows, their summary (mean ± std per class), the gate report.

:func:`write_report` writes ``per_case.csv`` and ``summary.json`` atomically (and, given case views, the
visual report of :mod:`satseg.evaluation.visual_report`). Used by both folder evaluation
(:mod:`satseg.evaluation.folders`) and model evaluation (:mod:`satseg.evaluation.model`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satseg.atomic import atomic_path
from satseg.evaluation.metrics import COUNTS, METRICS
from satseg.paths import check_output

__all__ = ["ROW_FIELDS", "EvaluationReport", "write_report", "summarise", "absent_classes", "gate_report"]

#: Columns of ``per_case.csv``: one row per case and class.
ROW_FIELDS: tuple[str, ...] = ("case", "class", "label", *METRICS, *COUNTS)



@dataclass
class EvaluationReport:
    """The result of :func:`evaluate_folders`.

    Attributes:
        rows: one dict per case and class with the keys of ``ROW_FIELDS``.
        summary: what :func:`summarise` gives, plus the run's settings; written as ``summary.json``.
        labels: class name → label value that was scored.
        missing_predictions: reference cases that had no prediction (each scored 0).
        per_case_csv: path of ``per_case.csv``, or None when nothing was written.
        summary_json: path of ``summary.json``, or None when nothing was written.
        figures: the visual report's PNGs (Dice per case, worst cases' outlines), see
            :mod:`satseg.evaluation.visual_report`.
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    labels: dict[str, int]
    missing_predictions: list[str] = field(default_factory=list)
    per_case_csv: Path | None = None
    summary_json: Path | None = None
    figures: list[Path] = field(default_factory=list)


def write_report(
    report: EvaluationReport,
    out_dir: str | Path,
    extra: Mapping[str, Any] | None = None,
    views: Callable[[str], Any] | None = None,
    inputs: Sequence[str | Path] = (),
) -> None:
    """Write ``per_case.csv`` and ``summary.json`` (with ``extra`` keys added) into ``out_dir``, atomically.

    With ``views`` (case name → :class:`~satseg.evaluation.visual_report.CaseView` or None), also the visual report:
    ``report/dice_per_case.png`` and outline previews of the worst cases. Earlier reports are replaced; none
    of the files may be one of ``inputs`` (the scored files).
    """
    out_dir = Path(out_dir)
    report.per_case_csv, report.summary_json = out_dir / "per_case.csv", out_dir / "summary.json"
    for path in (report.per_case_csv, report.summary_json):
        check_output(path, inputs=inputs, overwrite=True)
    summary_text = json.dumps(_json_safe({**report.summary, **(extra or {})}), indent=2) + "\n"
    # both or neither: a full disk must not leave a new per_case.csv beside an old (or no) summary.json
    with atomic_path(report.per_case_csv) as csv_tmp, atomic_path(report.summary_json) as json_tmp:
        csv_tmp.write_text(_csv_text(report.rows), encoding="utf-8")
        json_tmp.write_text(summary_text, encoding="utf-8")
    if views is not None and report.rows:
        from satseg.evaluation.visual_report import write_visual_report

        report.figures = write_visual_report(report.rows, out_dir, views, inputs=inputs)


def absent_classes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Classes found in no prediction and no reference of any case.

    Their Dice of 1.0 only says "both empty" everywhere: usually a wrong ``--labels`` value, never evidence
    that the model finds the class.
    """
    seen: dict[str, bool] = {}
    for row in rows:
        present = bool(row.get("tp", 1) or row.get("fp", 0) or row.get("fn", 0))  # rows without counts: present
        seen[row["class"]] = seen.get(row["class"], False) or present
    return [name for name, present in seen.items() if not present]


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std over cases for each class and metric, as in the paper's tables.

    NaN (undefined) values are left out and counted. ``std`` is the population standard deviation
    (NumPy's default, ``ddof=0``).

    Args:
        rows: per-case rows with ``case``, ``class``, ``label`` and the :data:`~satseg.evaluation.metrics.METRICS`.

    Returns:
        ``{"num_cases": int, "classes": {class: {"label": int, metric: {"mean", "std", "n", "n_undefined"}}},
        "foreground_mean": {metric: mean of the class means}}`` (classes found in no prediction and no
        reference left out of it); JSON-ready: a mean or std with ``n == 0``
        is None.
    """
    classes: dict[str, dict[str, Any]] = {}
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["class"], []).append(row)
    for name, class_rows in grouped.items():
        entry: dict[str, Any] = {"label": int(class_rows[0]["label"])}
        for metric in METRICS:
            values = np.array([float(row[metric]) for row in class_rows], dtype=float)
            defined = values[np.isfinite(values)]
            entry[metric] = {
                "mean": float(defined.mean()) if defined.size else None,
                "std": float(defined.std()) if defined.size else None,
                "n": int(defined.size),
                "n_undefined": int(values.size - defined.size),
            }
        classes[name] = entry
    foreground = {}
    ghosts = set(absent_classes(rows))  # in no prediction and no reference: their 1.0 is no evidence
    for metric in METRICS:
        means = [e[metric]["mean"] for c, e in classes.items() if e[metric]["mean"] is not None and c not in ghosts]
        foreground[metric] = float(np.mean(means)) if means else None
    return {"num_cases": len({row["case"] for row in rows}), "classes": classes, "foreground_mean": foreground}


def gate_report(model: Any) -> list[dict[str, Any]]:
    """Per-skip channel selection of a model with ``st``/``sat`` gates (the paper reports 55–67 % off).

    Args:
        model: a :class:`satseg.nn.SegmentationNet` (anything with ``skip_gates()``).

    Returns:
        One dict per selecting gate, in encoder order: ``skip`` (qualified module name), ``gate``
        (``st`` or ``sat``), ``channels``, ``channels_off``, ``fraction_off`` and ``selection``
        (``trelu(W)`` per channel). Empty for ``org``/``at`` models.
    """
    from satseg.nn.gates import SelectAttendGate

    report = []
    for name, gate in model.skip_gates():
        selection = gate.selection()
        if selection is None:
            continue
        values = [float(v) for v in selection.flatten().tolist()]
        report.append(
            {
                "skip": name,
                "gate": "sat" if isinstance(gate, SelectAttendGate) else "st",
                "channels": len(values),
                "channels_off": sum(v == 0 for v in values),
                "fraction_off": float(gate.fraction_off()),
                "selection": values,
            }
        )
    return report


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(row[key]) for key in ROW_FIELDS})
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def _json_safe(value: Any) -> Any:
    """NaN/inf become null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
