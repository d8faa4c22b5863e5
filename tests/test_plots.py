"""Pillow-drawn plots: the training progress PNG and per-case bar charts."""

import numpy as np
from PIL import Image as PILImage

from satseg.plots import _MEAN_COLOUR, _PALETTE, PANEL_SIZE, bar_chart_png, write_progress_plot


def _history(epochs: int) -> list[dict]:
    # as metrics.csv reads back: strings, and no Dice on epochs that were not validated
    rows = []
    for e in range(epochs):
        row = {"epoch": str(e), "lr": str(1.0 * (1 - e / epochs) ** 0.9), "train_loss": str(1.5 / (e + 1))}
        if e % 2 == 1:
            row |= {"dice_core": str(0.2 + 0.1 * e), "dice_rim": str(0.1 + 0.05 * e), "dice_mean": "0.3"}
        rows.append(row)
    return rows


def _has_colour(pixels: np.ndarray, colour) -> bool:
    return bool(np.any(np.all(pixels == np.array(colour, np.uint8), axis=-1)))


def test_progress_plot_draws_loss_dice_per_class_and_lr(tmp_path):
    path = write_progress_plot(_history(6), tmp_path / "progress.png")
    with PILImage.open(path) as plot:
        plot.load()
        assert plot.format == "PNG" and plot.size == (PANEL_SIZE[0], 3 * PANEL_SIZE[1])
        pixels = np.asarray(plot.convert("RGB"))
    height = PANEL_SIZE[1]
    loss, dice, lr = pixels[:height], pixels[height : 2 * height], pixels[2 * height :]
    assert _has_colour(loss, _PALETTE[0])
    # one colour per class (core, rim) and black for their mean, in the Dice panel only
    assert _has_colour(dice, _PALETTE[0]) and _has_colour(dice, _PALETTE[1]) and _has_colour(dice, _MEAN_COLOUR)
    assert _has_colour(lr, _PALETTE[3]) and not _has_colour(loss, _PALETTE[3])
    assert not list(tmp_path.glob(".*tmp*"))


def test_progress_plot_of_a_first_epoch_without_validation(tmp_path):
    path = write_progress_plot(_history(1), tmp_path / "progress.png")
    with PILImage.open(path) as plot:
        plot.load()
        assert plot.size == (PANEL_SIZE[0], 3 * PANEL_SIZE[1])


def test_bar_chart_draws_one_bar_per_case_scaled_to_its_value(tmp_path):
    path = bar_chart_png("Dice per case", [("a", 1.0), ("b", 0.5), ("c", float("nan"))], tmp_path / "bars.png")
    with PILImage.open(path) as chart:
        chart.load()
        pixels = np.asarray(chart.convert("RGB"))
    bar = np.all(pixels == np.array(_PALETTE[0], np.uint8), axis=-1)
    rows = [np.flatnonzero(line) for line in bar if line.any()]
    widths = sorted({int(r.max() - r.min() + 1) for r in rows})
    assert len(widths) == 2  # two drawn bars (the NaN case gets none)
    assert abs(widths[1] - 2 * widths[0]) <= 2  # 1.0 is twice as long as 0.5
