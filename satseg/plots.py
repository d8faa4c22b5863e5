"""Plots drawn with Pillow alone (no matplotlib): the training progress and per-case scores.

``progress.png`` (like nnU-Net's) has three panels over the epochs: training loss, validation Dice per
class (and their mean) and the learning rate. ``bar_chart_png`` draws one horizontal bar per case.
Every PNG is written through :mod:`satseg.atomic`, so a reader never sees half a file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from satseg.atomic import atomic_path

__all__ = ["write_progress_plot", "bar_chart_png", "PANEL_SIZE"]

PANEL_SIZE = (800, 220)  # width, height of one panel in pixels
_MARGIN = (64, 28, 150, 30)  # left, top, right (legend), bottom
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip
_MEAN_COLOUR = (0, 0, 0)


def _number(value: Any) -> float | None:
    """A finite float from a metrics row (rows read back from metrics.csv hold strings; empty = not measured)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _series(history: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    points = []
    for row in history:
        x, y = _number(row.get("epoch")), _number(row.get(key))
        if x is not None and y is not None:
            points.append((x + 1, y))  # epochs are counted from 1 on the axis
    return points


def _label(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def _panel(
    title: str,
    series: Sequence[tuple[str, list[tuple[float, float]], tuple[int, int, int]]],
    x_range: tuple[float, float],
    y_range: tuple[float, float] | None = None,
) -> PILImage.Image:
    """One chart: axes, min/max ticks, a polyline (and dots) per series, and a legend on the right."""
    width, height = PANEL_SIZE
    left, top, right, bottom = _MARGIN
    panel = PILImage.new("RGB", PANEL_SIZE, "white")
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    draw.text((left, 6), title, fill="black", font=font)
    x0, y0, x1, y1 = left, top, width - right, height - bottom
    draw.rectangle((x0, y0, x1, y1), outline=(90, 90, 90))
    values = [y for _, points, _ in series for _, y in points]
    if y_range is None:
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
        y_range = (low - pad, high + pad)
    lo_x, hi_x = x_range
    lo_y, hi_y = y_range

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        px = x0 + (x - lo_x) / max(hi_x - lo_x, 1e-12) * (x1 - x0)
        y = min(max(y, lo_y), hi_y)  # a fixed range (Dice 0–1) never draws outside its box
        py = y1 - (y - lo_y) / max(hi_y - lo_y, 1e-12) * (y1 - y0)
        return px, py

    for value in (lo_y, hi_y):
        _, py = to_pixel(lo_x, value)
        draw.text((4, py - 6), _label(value), fill="black", font=font)
    draw.text((x0, y1 + 6), f"epoch {lo_x:g}", fill="black", font=font)
    end_label = f"{hi_x:g}"
    draw.text((x1 - 6 * len(end_label), y1 + 6), end_label, fill="black", font=font)
    for index, (name, points, colour) in enumerate(series):
        pixels = [to_pixel(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        legend_y = y0 + 14 * index
        draw.line((x1 + 10, legend_y + 6, x1 + 28, legend_y + 6), fill=colour, width=3)
        draw.text((x1 + 34, legend_y), name[:18], fill="black", font=font)
    return panel


def write_progress_plot(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write the training-progress PNG of a run: loss, validation Dice per class and learning rate per epoch.

    Args:
        history: the rows of ``metrics.csv`` (``epoch``, ``train_loss``, ``lr``, ``dice_<class>``, ``dice_mean``).
        path: the PNG to write (atomically).
    """
    epochs = [x for x, _ in _series(history, "train_loss")] or [1.0]
    x_range = (1.0, max(max(epochs), 2.0))
    dice_keys = [k for k in dict.fromkeys(k for row in history for k in row) if k.startswith("dice_")]
    classes = [k for k in dice_keys if k != "dice_mean"]
    dice = [(k[len("dice_") :], _series(history, k), _PALETTE[i % len(_PALETTE)]) for i, k in enumerate(classes)]
    if "dice_mean" in dice_keys:
        dice.append(("mean", _series(history, "dice_mean"), _MEAN_COLOUR))
    panels = [
        _panel("training loss", [("train loss", _series(history, "train_loss"), _PALETTE[0])], x_range),
        _panel("validation Dice", dice, x_range, (0.0, 1.0)),
        _panel("learning rate", [("lr", _series(history, "lr"), _PALETTE[3])], x_range),
    ]
    picture = PILImage.new("RGB", (PANEL_SIZE[0], PANEL_SIZE[1] * len(panels)), "white")
    for index, panel in enumerate(panels):
        picture.paste(panel, (0, index * PANEL_SIZE[1]))
    with atomic_path(path, suffix=".png") as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)


def bar_chart_png(title: str, bars: Sequence[tuple[str, float]], path: str | Path, value_range=(0.0, 1.0)) -> Path:
    """Horizontal bars, one per ``(name, value)`` (NaN drawn as an empty bar marked "n/a"), written atomically."""
    font = ImageFont.load_default()
    row, left, right, top = 16, 170, 70, 28
    width = 720
    height = top + row * max(len(bars), 1) + 24
    picture = PILImage.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((8, 6), title, fill="black", font=font)
    lo, hi = value_range
    span = width - left - right
    for index, (name, value) in enumerate(bars):
        y = top + index * row
        draw.text((8, y + 2), name[:26], fill="black", font=font)
        number = _number(value)
        if number is None:
            draw.text((left + 4, y + 2), "n/a", fill=(120, 120, 120), font=font)
            continue
        length = (min(max(number, lo), hi) - lo) / max(hi - lo, 1e-12) * span
        draw.rectangle((left, y + 2, left + length, y + row - 3), fill=_PALETTE[0])
        draw.text((left + length + 4, y + 2), f"{number:.3f}", fill="black", font=font)
    draw.line((left, top - 2, left, height - 20), fill=(90, 90, 90))
    with atomic_path(path, suffix=".png") as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)
