"""Rich tables for the CLI: evaluation summaries, skip-gate reports, parameter and demo comparisons (no printing).

Every table keeps its numbers whole: numeric columns never wrap, and :func:`fit_table` turns a table that
would not fit the terminal into a vertical layout instead of letting rich cut its figures ("1,750,5…").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import RenderableType
from rich.table import Column, Table
from rich.text import Text

__all__ = [
    "TABLE_METRICS",
    "format_mean_std",
    "fit_table",
    "summary_table",
    "gate_table",
    "params_table",
    "budget_table",
    "models_table",
    "demo_table",
]

#: Metrics shown in the summary table (all of them are in ``summary.json`` and ``per_case.csv``).
TABLE_METRICS: dict[str, str] = {
    "dice": "Dice",
    "iou": "IoU",
    "fpr": "FPR",
    "fnr": "FNR",
    "hd95": "HD95\nmm",
    "assd": "ASSD\nmm",
    "nsd": "NSD",
}


def format_mean_std(entry: Mapping[str, Any], num_cases: int | None = None) -> str:
    """``"0.912 ± 0.034"`` from a :func:`~satseg.evaluation.folders.summarise` entry.

    Adds ``(n=…)`` when fewer than ``num_cases`` values were defined, and ``–`` when none was.
    """
    mean, std, n = entry["mean"], entry["std"], entry["n"]
    if n == 0 or mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean:.3g} ± {std:.2g}"
    return text if num_cases is None or n >= num_cases else f"{text} (n={n})"


def _cell_text(cell: Any) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def _header(column: Column) -> str:
    """A column's title on one line (tables break long titles over two lines to stay narrow)."""
    return " ".join(_cell_text(column.header).split())


def _needed_width(column: Column) -> int:
    """Narrowest width that keeps every figure whole: a no-wrap column's longest cell, else its longest word."""
    cells = [_cell_text(column.header), *map(_cell_text, column.cells)]
    if column.no_wrap:
        return max((len(line) for c in cells for line in c.splitlines() or [""]), default=1)
    return max((len(word) for c in cells for word in c.split()), default=1)


def _width_of(table: Table) -> int:
    """Total width :func:`fit_table` needs for ``table`` (cells, padding and borders)."""
    pad = table.padding[1] + table.padding[3]
    edges = 0 if table.pad_edge else pad
    borders = (len(table.columns) - 1 + (2 if table.show_edge else 0)) if table.box is not None else 0
    return sum(_needed_width(c) + pad for c in table.columns) - edges + borders


def _rows(table: Table) -> list[list[str]]:
    return [list(cells) for cells in zip(*(map(_cell_text, c.cells) for c in table.columns), strict=True)]


def _transposed(table: Table) -> Table:
    """One column per row of ``table`` (named by its first cell), one row per other column."""
    rows = _rows(table)
    flipped = Table(title=table.title, caption=table.caption)
    flipped.add_column(_header(table.columns[0]))
    for row in rows:
        flipped.add_column(row[0], justify="right", no_wrap=True)
    for index, column in enumerate(table.columns[1:], start=1):
        flipped.add_row(_header(column), *(row[index] for row in rows))
    return flipped


def _stacked(table: Table) -> Table:
    """Each row of ``table`` as a block of ``header  value`` lines: the narrowest layout."""
    stacked = Table(title=table.title, caption=table.caption, show_header=False, box=box.SIMPLE_HEAD)
    stacked.add_column(style="bold")
    stacked.add_column(overflow="fold")
    headers = [_header(c) for c in table.columns]
    for row in _rows(table):
        for header, value in zip(headers, row, strict=True):
            stacked.add_row(header, value)
        stacked.add_section()
    return stacked


def fit_table(table: Table, width: int) -> RenderableType:
    """``table`` when its figures fit in ``width`` columns, else the same content laid out vertically.

    Vertical means transposed (one column per row) when that fits, else one block of lines per row.
    Each column of the returned table is given its needed width as a minimum, so rich never cuts a figure.
    """
    for candidate in (table, _transposed(table)):
        if _width_of(candidate) <= width:
            for column in candidate.columns:
                column.min_width = _needed_width(column)
            return candidate
    return _stacked(table)


def summary_table(summary: Mapping[str, Any], metrics: Mapping[str, str] = TABLE_METRICS) -> Table:
    """Mean ± std over cases per class (rows) and metric (columns).

    Args:
        summary: the dict from :func:`satseg.evaluation.folders.summarise` (or ``summary.json``).
        metrics: metric key → column title.
    """
    num_cases = summary.get("num_cases")
    tolerance = summary.get("tolerance_mm")
    unit = summary.get("distance_unit", "mm")  # px for pictures, which have no physical spacing
    caption = f"{num_cases} cases; mean ± std over cases"
    if tolerance is not None:
        caption += f"; NSD at {tolerance:g} {unit}"
    table = Table(title="Evaluation", caption=caption)
    table.add_column("class")
    table.add_column("label", justify="right", no_wrap=True)
    for title in metrics.values():
        table.add_column(title.replace("\nmm", f"\n{unit}"), justify="right", no_wrap=True)
    for name, entry in summary["classes"].items():
        per_class_cases = max(entry[m]["n"] + entry[m]["n_undefined"] for m in metrics)
        cells = [format_mean_std(entry[m], per_class_cases) for m in metrics]
        table.add_row(name, str(entry["label"]), *cells)
    return table


def gate_table(report: Sequence[Mapping[str, Any]]) -> Table:
    """Per-skip fraction of channels switched off, from :func:`satseg.evaluation.report.gate_report`."""
    table = Table(title="Skip-gate channel selection", caption="trelu(W) == 0 switches a channel off")
    table.add_column("skip", overflow="fold")
    table.add_column("gate", no_wrap=True)
    table.add_column("channels", justify="right", no_wrap=True)
    table.add_column("off", justify="right", no_wrap=True)
    table.add_column("selection trelu(W): min / median / max", justify="right", no_wrap=True)
    for row in report:
        values = sorted(row["selection"])
        spread = f"{values[0]:.3g} / {values[len(values) // 2]:.3g} / {values[-1]:.3g}"
        table.add_row(
            row["skip"],
            row["gate"],
            str(row["channels"]),
            f"{row['channels_off']} ({100 * row['fraction_off']:.0f} %)",
            spread,
        )
    return table


def params_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The skip-gate cost comparison of ``satseg params`` (rows from :func:`satseg.nn.params.compare_models`)."""
    table = Table(title="Skip gates", caption="skip MiB: the skips' tensors for one patch; peak MiB: forward pass",
                  pad_edge=False)  # fmt: skip
    table.add_column("net", no_wrap=True)
    table.add_column("skip", no_wrap=True)
    for title in ("params", "vs\norg"):
        table.add_column(title, justify="right", no_wrap=True)
    table.add_column("skip channels")  # a list: wraps after its commas
    for title in ("skip\nMiB", "GFLOPs", "peak\nMiB"):
        table.add_column(title, justify="right", no_wrap=True)

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value / 2**20:.2f}"

    for r in rows:
        table.add_row(
            r["net"], r["skip"], f"{r['params']:,}", f"{r['params_change_pct']:+.1f} %",
            ", ".join(map(str, r["skip_channels"])), mib(r["skip_bytes"]),
            "-" if r["flops"] is None else f"{r['flops'] / 1e9:.2f}", mib(r["peak_memory_bytes"]),
        )  # fmt: skip
    return table


def _has_levels(row: Mapping[str, Any]) -> bool:
    return any(point and point.get("levels") for point in (row["best"], row["best_org"]))


def budget_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """What fits a memory budget, per measured dataset (rows from :func:`satseg.zoo.fit_budget`)."""
    table = Table(
        title=f"Best measured Dice within {rows[0]['budget_mib']:g} MiB" if rows else "Best measured Dice",
        caption=("peak: one CPU forward of the volume with --low-memory" if rows and rows[0].get("low_memory")
                 else "peak: one CPU forward (ONNX Runtime) of the volume")
        + "; Dice: mean of the seeds"
        + ("\nw8x4: base width 8 (doubling per level), 4 levels" if any(_has_levels(r) for r in rows) else ""),
        pad_edge=False,
    )
    for title in ("data", "best fit", "Dice", "peak\nMiB", "best org", "Dice"):
        table.add_column(title, justify="right" if title in ("Dice", "peak\nMiB") else "left")

    def name(point: Mapping[str, Any] | None) -> str:  # w8x4: base width 8, 4 levels
        if point is None:
            return "-"
        depth = f"x{point['levels']}" if point.get("levels") else ""
        return f"w{point['width']}{depth} {point['variant']}"

    def dice(point: Mapping[str, Any] | None) -> str:
        return "-" if point is None else f"{point['dice']:.3f}"

    for r in rows:
        side = r["reference_side"]
        where = f"{r['dataset']} ({side}^{r['dims']})" if side else r["dataset"]
        best = r["best"]
        peak = f"{best['peak_mib']:.0f}" if best else f"> {r['smallest_peak_mib']:.0f}"
        table.add_row(where, name(best), dice(best), peak, name(r["best_org"]), dice(r["best_org"]))
    return table


def models_table(cards: Sequence[Mapping[str, Any]]) -> Table:
    """The shipped models (from :func:`satseg.zoo.list_shipped_models`)."""
    table = Table(title="Shipped models", caption="satseg segment picks one by the input's dimensions and channels")
    for title in ("name", "input", "labels", "validation Dice", "params", "trained on"):
        table.add_column(title, no_wrap=title in ("name", "params"), justify="right" if title == "params" else "left")
    for card in cards:
        dice = ", ".join(f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in card.get("dice", {}).items())
        table.add_row(
            card["name"],
            f"{card.get('spatial_dims')}D, {card.get('num_channels')} ch",
            ", ".join(card.get("labels", [])),
            dice or "-",
            f"{card.get('params', 0):,}",
            card.get("dataset", "-"),
        )
    return table


def demo_table(result: Mapping[str, Any]) -> Table:
    """The demo's closing comparison of skip connections; says so when a training budget was cut short."""
    rows = result["rows"]
    short = [r for r in rows if r.get("steps_done", 0) < r.get("steps_planned", 0)]
    caption = "synthetic 3D data"
    if rows and "steps_planned" in rows[0]:
        caption += f"; {rows[0]['steps_planned']} training steps per model"
    if rows and rows[0].get("cpu_seconds_per_step") is not None:
        caption += "; CPU s/step: CPU time per step (training and validation), not wall time"
    for r in short:
        caption += f"; CUT SHORT: `{r['skip']}` trained {r['steps_done']} of {r['steps_planned']} steps"
    table = Table(title="satseg demo: plain skips (org) vs select-attend-transfer (sat)", caption=caption)
    classes = list(rows[0]["dice"])
    table.add_column("skip", no_wrap=True)
    for title in (*(f"Dice {c}" for c in classes), "params"):
        table.add_column(title, justify="right", no_wrap=True)
    table.add_column("skip channels", justify="right")
    for title in ("skip\nKiB", "off", "steps", "CPU\ns/step"):
        table.add_column(title, justify="right", no_wrap=True)
    for row in rows:
        steps = f"{row.get('steps_done', '?')}/{row.get('steps_planned', '?')}"
        table.add_row(
            row["skip"],
            *(format_mean_std({"mean": row["dice"][c], "std": row["dice_std"][c], "n": 1}) for c in classes),
            f"{row['params']:,}",
            ", ".join(map(str, row["skip_channels"])),
            f"{row['skip_bytes'] / 2**10:.0f}",
            "-" if row["channels_off"] is None else f"{100 * row['channels_off']:.0f} %",
            steps + (" (cut short)" if row in short else ""),
            "–" if row.get("cpu_seconds_per_step") is None else f"{row['cpu_seconds_per_step']:.2f}",
        )
    return table
