"""Resuming a run: its checkpoint, the settings it may change, and the data it must continue on."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from satseg.errors import CheckpointError, ConfigError
from satseg.runs import LAST, load_checkpoint
from satseg.training.config import TrainConfig

__all__ = ["prepare_run", "check_resumed_data", "RESUMABLE_OVERRIDES"]

RESUMABLE_OVERRIDES = ("epochs", "max_minutes", "workers", "device", "val_every", "compile", "resident")
"""Settings a resumed run may change; everything else must match the interrupted run."""


def prepare_run(
    out_dir: Path, config: TrainConfig, resume: bool, overrides: dict[str, Any]
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """Resolve the configuration (the checkpoint's on resume) and check the run folder; nothing is written.

    Returns:
        ``(configuration in force, the last checkpoint's payload or None)``.

    Raises:
        CheckpointError: resuming without a checkpoint, or starting over an existing run.
        ConfigError: on resume, a setting in ``overrides`` that differs from the run's and may not change.
    """
    last = out_dir / LAST
    if resume:
        if not last.is_file():
            raise CheckpointError(f"`{out_dir}`: nothing to resume (no {LAST})", hint="start the run without --resume")
        payload = load_checkpoint(last)
        saved = TrainConfig.from_dict(payload["config"]["train"])
        given = {k: v for k, v in overrides.items() if v is not None}
        _check_resume_overrides(out_dir, saved, given, int(payload["epoch"]))
        config = replace(saved, **{k: v for k, v in given.items() if k in RESUMABLE_OVERRIDES})
        return config, payload
    if last.is_file():
        raise CheckpointError(
            f"`{out_dir}` already holds a run", hint="continue it with --resume, or pick another --out folder"
        )
    return config, None


def check_resumed_data(out_dir: Path, data_dir: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """A resumed run continues on the data it started with: the same plan and the same fold's cases."""
    differs = []
    if json.loads(json.dumps(saved.get("plan"))) != json.loads(json.dumps(now["plan"])):
        differs.append("its plan (plan.json)")
    if "cases" in saved and saved["cases"] != now["cases"]:  # runs from before cases were recorded: plan only
        differs.append("the fold's train/val cases (splits.json)")
    if differs:
        raise ConfigError(
            f"`{data_dir}` is not the data `{out_dir}` was trained on: {' and '.join(differs)} differ"
            f" (the run started on `{saved.get('data_dir', '?')}`)",
            hint="resume with the run's own --data folder, or train a new run with --out elsewhere",
        )


def _check_resume_overrides(out_dir: Path, saved: TrainConfig, given: dict[str, Any], epochs_done: int) -> None:
    """Refuse settings a resumed run cannot take (rather than ignoring them without a word)."""
    conflicts = []
    for key, value in given.items():
        if key in RESUMABLE_OVERRIDES:
            continue
        kept = saved.learning_rate if key == "lr" else getattr(saved, key, None)
        if key == "patch" and value is not None:
            value = tuple(value)
        if value != kept:
            conflicts.append(f"{key} {value!r} (the run has {kept!r})")
    if conflicts:
        raise ConfigError(
            f"`{out_dir}`: --resume continues the run with its own settings; these differ: {'; '.join(conflicts)}",
            hint=f"leave them out (only {', '.join(RESUMABLE_OVERRIDES)} may change), or use a new --out",
        )
    epochs = given.get("epochs")
    if epochs is not None and epochs < epochs_done:
        raise ConfigError(
            f"`{out_dir}`: --epochs {epochs} is fewer than the {epochs_done} epochs the run has done",
            hint=f"give --epochs above {epochs_done} to train on, or leave it out",
        )
