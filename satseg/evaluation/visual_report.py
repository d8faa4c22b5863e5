"""The visual part of an evaluation report: Dice per case as a chart, and outline previews of the worst cases.

Written into ``<output>/report/``: ``dice_per_case.png`` (one bar per case, mean Dice over classes, worst
first) and ``worst_<rank>_<case>.png`` (reference outlined in green, prediction in red, over the image when
it is known), so a user sees where the model fails. A subfolder keeps the PNGs out of a predictions folder
that may be scored again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from satseg.inference.preview import outline_png
from satseg.paths import check_output, safe_name
from satseg.plots import bar_chart_png

__all__ = ["REPORT_DIR", "WORST_CASES", "CaseView", "WorstCases", "case_dice", "write_visual_report"]

REPORT_DIR = "report"
WORST_CASES = 3


class CaseView(NamedTuple):
    """What a preview of one case draws: ``image`` ``(C, *S)`` (or None), the two label maps ``(*S)``, mm/axis."""

    image: np.ndarray | None
    reference: np.ndarray
    prediction: np.ndarray
    spacing: tuple[float, ...]


def case_dice(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean Dice over the classes of each case (undefined classes left out; NaN when none is defined)."""
    values: dict[str, list[float]] = {}
    for row in rows:
        dice = float(row["dice"])
        values.setdefault(row["case"], [])
        if math.isfinite(dice):
            values[row["case"]].append(dice)
    return {case: float(np.mean(v)) if v else math.nan for case, v in values.items()}


class WorstCases:
    """Keeps the views of the ``n`` lowest-scoring cases offered so far (memory for ``n`` cases, not all)."""

    def __init__(self, n: int = WORST_CASES) -> None:
        self.n = n
        self._kept: dict[str, tuple[float, CaseView]] = {}

    def offer(self, case: str, dice: float, view: CaseView) -> None:
        if not math.isfinite(dice):
            return
        self._kept[case] = (dice, view)
        if len(self._kept) > self.n:
            del self._kept[max(self._kept, key=lambda c: (self._kept[c][0], c))]  # ties: as the report ranks

    def get(self, case: str) -> CaseView | None:
        kept = self._kept.get(case)
        return None if kept is None else kept[1]


def write_visual_report(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    view: Callable[[str], CaseView | None],
    n: int = WORST_CASES,
    inputs: Sequence[str | Path] = (),
) -> list[Path]:
    """Write ``report/dice_per_case.png`` and the outline previews of the ``n`` worst cases.

    Args:
        rows: the per-case rows of the evaluation.
        out_dir: the evaluation's output folder.
        view: the images of a case, by name (None: that case is not drawn).
        n: how many of the worst cases to draw.
        inputs: the scored files; no PNG may replace one of them (earlier reports are replaced).

    Returns:
        The PNGs written.
    """
    folder = Path(out_dir) / REPORT_DIR
    scores = case_dice(rows)
    ranked = sorted(scores.items(), key=lambda kv: (not math.isfinite(kv[1]), kv[1], kv[0]))
    chart = check_output(folder / "dice_per_case.png", inputs=inputs, overwrite=True)
    written = [bar_chart_png("Dice per case (mean over classes), worst first", ranked, chart)]
    for rank, (case, dice) in enumerate(ranked[:n], start=1):
        shown = view(case) if math.isfinite(dice) else None
        if shown is not None:
            # case names come from file names or splits.json: one plain name, never a path
            name = safe_name(f"worst_{rank}_{case}.png", "report file name", out_dir)
            path = check_output(folder / name, inputs=inputs, overwrite=True)
            written.append(outline_png(shown.image, shown.reference, shown.prediction, shown.spacing, path))
    return written
