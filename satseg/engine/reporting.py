"""Rich tables for the CLI: evaluation summaries and skip-gate selection reports (no printing here)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

__all__ = ["TABLE_METRICS", "format_mean_std", "summary_table", "gate_table"]

#: Metrics shown in the summary table (all of them are in ``summary.json`` and ``per_case.csv``).
TABLE_METRICS: dict[str, str] = {
    "dice": "Dice",
    "iou": "IoU",
    "fpr": "FPR",
    "fnr": "FNR",
    "hd95": "HD95 mm",
    "assd": "ASSD mm",
    "nsd": "NSD",
}


def format_mean_std(entry: Mapping[str, Any], num_cases: int | None = None) -> str:
    """``"0.912 ± 0.034"`` from a :func:`~satseg.engine.evaluate.summarise` entry.

    Adds ``(n=…)`` when fewer than ``num_cases`` values were defined, and ``–`` when none was.
    """
    mean, std, n = entry["mean"], entry["std"], entry["n"]
    if n == 0 or mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean:.3g} ± {std:.2g}"
    return text if num_cases is None or n >= num_cases else f"{text} (n={n})"


def summary_table(summary: Mapping[str, Any], metrics: Mapping[str, str] = TABLE_METRICS) -> Table:
    """Mean ± std over cases per class (rows) and metric (columns).

    Args:
        summary: the dict from :func:`satseg.engine.evaluate.summarise` (or ``summary.json``).
        metrics: metric key → column title.
    """
    num_cases = summary.get("num_cases")
    tolerance = summary.get("tolerance_mm")
    caption = f"{num_cases} cases; mean ± std over cases"
    if tolerance is not None:
        caption += f"; NSD at {tolerance:g} mm"
    table = Table(title="Evaluation", caption=caption)
    table.add_column("class", no_wrap=True)
    table.add_column("label", justify="right")
    for title in metrics.values():
        table.add_column(title, justify="right")
    for name, entry in summary["classes"].items():
        per_class_cases = max(entry[m]["n"] + entry[m]["n_undefined"] for m in metrics)
        cells = [format_mean_std(entry[m], per_class_cases) for m in metrics]
        table.add_row(name, str(entry["label"]), *cells)
    return table


def gate_table(report: Sequence[Mapping[str, Any]]) -> Table:
    """Per-skip fraction of channels switched off, from :func:`satseg.engine.evaluate.gate_report`."""
    table = Table(title="Skip-gate channel selection", caption="trelu(W) == 0 switches a channel off")
    for title, justify in (("skip", "left"), ("gate", "left"), ("channels", "right"), ("off", "right")):
        table.add_column(title, justify=justify)
    table.add_column("selection trelu(W): min / median / max", justify="right")
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


def models_table(cards: Sequence[Mapping[str, Any]]) -> Table:
    """The shipped models (from :func:`satseg.engine.zoo.list_shipped_models`)."""
    table = Table(title="Shipped models", caption="satseg segment picks one by the input's dimensions and channels")
    for title in ("name", "input", "labels", "validation Dice", "params", "trained on"):
        table.add_column(title)
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
    """The demo's closing comparison of skip connections."""
    rows = result["rows"]
    table = Table(title="satseg demo: plain skips (org) vs select-attend-transfer (sat)",
                  caption=f"synthetic 3D data; whole demo {result['seconds']:.0f} s")  # fmt: skip
    classes = list(rows[0]["dice"])
    for title in ("skip", *(f"Dice {c}" for c in classes), "params", "skip channels", "skip memory", "off", "train"):
        table.add_column(title, justify="left" if title == "skip" else "right")
    for row in rows:
        table.add_row(
            row["skip"],
            *(format_mean_std({"mean": row["dice"][c], "std": row["dice_std"][c], "n": 1}) for c in classes),
            f"{row['params']:,}",
            "/".join(map(str, row["skip_channels"])),
            f"{row['skip_bytes'] / 2**10:.0f} KiB",
            "-" if row["channels_off"] is None else f"{100 * row['channels_off']:.0f} %",
            f"{row['train_seconds']:.0f} s",
        )
    return table
