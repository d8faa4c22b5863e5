"""``satseg train``: one run, or (``--fold all``) one run per cross-validation fold, one after the other, in
``OUT/fold_<k>``.

The fold runs together are an ensemble (``satseg segment --model OUT``) and the data
``satseg postprocess OUT --data PREPROCESSED`` decides post-processing on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from satseg.data.store import load_splits
from satseg.runs import LAST
from satseg.training.config import TrainConfig
from satseg.training.loop import TrainResult
from satseg.training.resume import prepare_run
from satseg.training.trainer import train

__all__ = ["fold_run_dir", "train_runs", "RESUME_CHECKED"]

RESUME_CHECKED = ("net", "skip", "fold", "optimizer", "loss", "scheduler", "select_l1", "select_lr_scale", "augment",
                  "elastic", "deep_supervision", "amp", "amp_dtype", "compile", "seed", "deterministic",
                  "model_options", "steps")  # fmt: skip
"""Settings a resumed run keeps: given again (typed on the command line), each is checked against the run's."""


def fold_run_dir(out_dir: str | Path, fold: int) -> Path:
    """The run folder of fold ``fold`` under ``out_dir``."""
    return Path(out_dir) / f"fold_{fold}"


def train_runs(
    data_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    every_fold: bool = False,
    resume: bool = False,
    changeable: dict[str, Any] | None = None,
    given: set[str] | frozenset[str] = frozenset(),
    progress: bool = True,
) -> list[TrainResult]:
    """``satseg train``: train ``config`` into ``out_dir``, or every fold into ``out_dir/fold_<k>``.

    Args:
        every_fold: train each fold of ``splits.json`` into ``out_dir/fold_<k>``; else the one ``config.fold``.
        resume: continue the run(s) in ``out_dir`` from their last checkpoint.
        changeable: settings a resumed run may change (e.g. more ``epochs``), as given (None: not given).
        given: names of the :data:`RESUME_CHECKED` settings the user gave: on resume each must equal the run's.
    """
    overrides = {**(changeable or {}), **{k: getattr(config, k) for k in RESUME_CHECKED if k in given}}
    if not every_fold:
        return [train(data_dir, out_dir, config, resume=resume, resume_overrides=overrides, progress=progress)]
    # Every fold: sequentially, each in its own run folder. With ``resume``, folds whose run folder holds a
    # checkpoint continue and the others start; without it an existing fold run is an error (as for one run).
    # A resumed fold run is checked against the overrides and its own fold number (a run moved into the wrong
    # ``fold_K`` folder is refused, not continued as fold K).
    folds = range(len(load_splits(data_dir)))
    per_fold = {fold: {**overrides, "fold": fold} for fold in folds}
    # Every fold run is checked now, not after hours of training the folds before it.
    for fold in folds:
        if (fold_run_dir(out_dir, fold) / LAST).is_file():
            prepare_run(fold_run_dir(out_dir, fold), replace(config, fold=fold), resume, per_fold[fold])
    results = []
    for fold in folds:
        run_dir = fold_run_dir(out_dir, fold)
        again = resume and (run_dir / LAST).is_file()
        results.append(
            train(data_dir, run_dir, replace(config, fold=fold), resume=again, resume_overrides=per_fold[fold],
                  progress=progress)
        )  # fmt: skip
    return results
