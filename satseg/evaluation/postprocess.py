"""Deciding per class whether keeping the largest connected component helps, from cross-validation.

``satseg postprocess RUN… --data PREPROCESSED`` segments each run's validation cases, scores every class with
and without keeping its largest connected component only, and records in each run folder
(``postprocess.json``) the classes whose mean validation Dice it raises. Applying the record is inference's
(:mod:`satseg.inference.postprocess`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from satseg.atomic import atomic_write_json
from satseg.data.store import load_plan
from satseg.errors import ConfigError
from satseg.evaluation.metrics import dice
from satseg.evaluation.model import read_original_case, split_cases
from satseg.inference.postprocess import POSTPROCESS_FILE, keep_largest_component
from satseg.inference.segmenter import expand_models, load_segmenter
from satseg.paths import check_output
from satseg.progress import ItemProgress

__all__ = ["decide_lcc"]


def decide_lcc(
    runs: Sequence[str | Path],
    data_dir: str | Path,
    *,
    device: str = "auto",
    amp: bool | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Score each run's validation cases with and without the largest component per class; record the choice.

    A class gets post-processing when its mean Dice over all validation cases of all runs (cross-validation
    when the runs are the folds) is higher with it. The same record is written to every run folder.

    Args:
        runs: run folders (each trained on one fold of ``data_dir``), or a folder of them.
        data_dir: the preprocessed folder the runs were trained on.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: autocast (True, on any device), float32 (False) or as each run records (None).
        overwrite: replace an earlier ``postprocess.json``.
        progress: show bars over the validation cases and the current case's windows, on stderr.

    Returns:
        The record: ``lcc`` (class -> on), ``dice_without``, ``dice_with``, ``cases``, ``runs``, ``data``.

    Raises:
        ConfigError: a run is not a run folder, was trained on all cases or on data with other labels, or
            already has a record (without ``overwrite``), or its record's path is a folder.
    """
    folders = []
    for folder in (Path(r) for r in expand_models(runs)):  # one run given twice (`A A`, `A ./A`) counts once
        if all(os.path.realpath(folder) != os.path.realpath(seen) for seen in folders):
            folders.append(folder)
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"`{folder}`: post-processing is recorded in a run folder; this is not one")
        check_output(folder / POSTPROCESS_FILE, overwrite=overwrite)  # refused before minutes of segmenting
    plan = load_plan(data_dir)
    work = []  # (run, its segmenter, its validation cases); all known first, so the bar knows its total
    for folder in folders:
        segmenter = load_segmenter(folder, device=device, amp=amp)
        if plan.get("labels") != segmenter.labels:  # runs of other data: their "validation cases" mean nothing
            raise ConfigError(
                f"`{folder}` predicts labels {segmenter.labels}, but `{data_dir}` has {plan.get('labels')}",
                hint="give the preprocessed folder the runs were trained on",
            )
        fold = int(segmenter.config.get("train", {}).get("fold", 0))
        if fold < 0:
            raise ConfigError(f"`{folder}` was trained on all cases: no validation cases to decide on")
        work.append((folder, segmenter, split_cases(data_dir, "val", fold)))
    scores: dict[str, dict[bool, list[float]]] = {}
    with ItemProgress(sum(len(cases) for *_, cases in work), "scoring", enabled=progress) as bar:
        for _, segmenter, cases in work:
            classes = {name: value for name, value in segmenter.labels.items() if value != 0}
            for case_id in cases:
                bar.item(case_id)
                image, ref, source = read_original_case(data_dir, case_id)
                labels = segmenter.segment(image, source=source, lcc=False, progress=bar.windows).labels.array[0]
                for name, value in classes.items():
                    per_class = scores.setdefault(name, {False: [], True: []})
                    per_class[False].append(dice(labels == value, ref == value))
                    per_class[True].append(dice(keep_largest_component(labels, value) == value, ref == value))
    mean = {name: {k: _mean(v) for k, v in s.items()} for name, s in scores.items()}
    record = {
        "lcc": {name: bool(m[True] > m[False]) for name, m in mean.items()},
        "dice_without": {name: m[False] for name, m in mean.items()},
        "dice_with": {name: m[True] for name, m in mean.items()},
        "cases": len(next(iter(scores.values()))[False]) if scores else 0,
        "runs": [str(f) for f in folders],
        "data": str(data_dir),
    }
    for folder in folders:
        atomic_write_json(folder / POSTPROCESS_FILE, record)
    return record


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
