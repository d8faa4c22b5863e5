"""Outline previews for evaluation reports: reference in green, prediction in red, on the right pixels."""

import numpy as np
from PIL import Image as PILImage

from satseg.evaluation.visual_report import CaseView, WorstCases, case_dice
from satseg.inference.preview import LEGEND_ROW, PREDICTION_COLOUR, REFERENCE_COLOUR, outline_png


def _read(path) -> np.ndarray:
    with PILImage.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def test_outlines_sit_on_the_mask_borders_2d(tmp_path):
    reference = np.zeros((64, 64), np.uint8)
    reference[10:30, 10:30] = 1
    prediction = np.zeros_like(reference)
    prediction[40:50, 40:60] = 1
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(1, 64, 64)
    whole = _read(outline_png(image, reference, prediction, (1.0, 1.0), tmp_path / "case.png"))
    scale = 256 // 64
    # the panel, then a legend below it: a swatch of each colour beside its name
    assert whole.shape == (64 * scale + 2 * LEGEND_ROW + 4, 64 * scale, 3)
    pixels, legend = whole[: 64 * scale], whole[64 * scale :]
    for colour in (REFERENCE_COLOUR, PREDICTION_COLOUR):
        assert np.all(legend == np.array(colour, np.uint8), axis=-1).sum() == 12 * 12
    assert (legend.min(axis=-1) > 128).any()  # the names, in white
    at = lambda r, c: tuple(pixels[r * scale, c * scale])  # noqa: E731
    assert at(10, 20) == REFERENCE_COLOUR and at(29, 20) == REFERENCE_COLOUR and at(20, 10) == REFERENCE_COLOUR
    assert at(40, 50) == PREDICTION_COLOUR and at(45, 59) == PREDICTION_COLOUR
    assert at(20, 20) not in (REFERENCE_COLOUR, PREDICTION_COLOUR)  # inside: the image shows through
    assert at(45, 50) not in (REFERENCE_COLOUR, PREDICTION_COLOUR)
    border = np.all(pixels == np.array(REFERENCE_COLOUR, np.uint8), axis=-1)[::scale, ::scale]
    assert border.sum() == 4 * 20 - 4  # the square's perimeter, nothing else


def test_outlines_of_a_3d_case_without_image_cut_through_both_masks(tmp_path):
    reference = np.zeros((8, 16, 16), np.uint8)
    reference[2:6, 4:12, 4:12] = 2
    prediction = np.zeros_like(reference)  # a missed structure still shows: the slices go through the reference
    pixels = _read(outline_png(None, reference, prediction, (2.0, 1.0, 1.0), tmp_path / "case.png"))
    pixels = pixels[: -(2 * LEGEND_ROW + 4)]  # the panels, without the legend's swatches
    assert np.any(np.all(pixels == np.array(REFERENCE_COLOUR, np.uint8), axis=-1))
    assert not np.any(np.all(pixels == np.array(PREDICTION_COLOUR, np.uint8), axis=-1))


def test_worst_cases_keep_only_the_lowest_scores():
    rows = [{"case": c, "dice": d} for c, d in [("a", 0.9), ("a", 0.7), ("b", float("nan")), ("c", 0.2), ("d", 0.5)]]
    scores = case_dice(rows)
    assert scores["a"] == 0.8 and np.isnan(scores["b"]) and scores["c"] == 0.2
    worst = WorstCases(2)
    view = CaseView(None, np.zeros((2, 2)), np.zeros((2, 2)), (1.0, 1.0))
    for case, score in scores.items():
        worst.offer(case, score, view)
    assert [c for c in "abcd" if worst.get(c) is not None] == ["c", "d"]
