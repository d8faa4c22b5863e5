"""``train``: a run's setup — the plan, the model, the cases, the run folder — before the loop (:mod:`.loop`).

Reproducibility: every random choice of an epoch (patch sampling, augmentation, dropout) is seeded
from ``(seed, epoch, rank)``, so resuming at epoch ``e`` replays exactly what an uninterrupted run
would have done; with ``deterministic`` on the CPU a resumed run ends with bit-identical weights.
Resuming (which settings may change, the same data) is checked in :mod:`.resume`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from satseg import __version__
from satseg.atomic import atomic_write_json, exclusive, remove_stale_temporaries
from satseg.data.store import load_case, load_plan, load_splits
from satseg.errors import ConfigError
from satseg.nn import build_model, explicit_model_config, legacy_model_config
from satseg.nn.registry import model_accepts
from satseg.progress import note
from satseg.runs import RUN_CONFIG, check_patch_size
from satseg.training.config import TrainConfig
from satseg.training.distributed import init_distributed
from satseg.training.loop import EpochCallback, TrainResult, run_loop
from satseg.training.patches import make_training_case
from satseg.training.planner import default_net, plan_training
from satseg.training.resume import check_resumed_data, prepare_run

__all__ = ["train"]

logger = logging.getLogger("satseg.train")


def _check_dimensions(model_cfg: dict[str, Any], spatial_dims: int, net: str, model: Any = None) -> None:
    """Refuse a backbone of the wrong dimensionality before anything is planned or built for real."""
    if model is None:
        with torch.device("meta"):
            model = build_model(**model_cfg)
    if int(model.spatial_dims) != spatial_dims:
        raise ConfigError(
            f"`--net {net}` is {model.spatial_dims}D but the dataset is {spatial_dims}D",
            hint=f"leave --net out (a {spatial_dims}D U-Net is planned) or pick a {spatial_dims}D backbone, "
            f"e.g. --net {default_net(spatial_dims)}",
        )


def _model_config(config: TrainConfig, plan: dict) -> dict[str, Any]:
    model_cfg = {
        "net": config.net,
        "skip": config.skip,
        "in_channels": int(plan["num_channels"]),
        "out_channels": len(plan["labels"]),
        **config.model_options,
    }
    if model_accepts(config.net, "deep_supervision"):
        model_cfg.setdefault("deep_supervision", config.deep_supervision)
    return model_cfg


def _load_cases(data_dir: Path, ids: Sequence[str], patch: Sequence[int] | None) -> list:
    cases = []
    for case_id in ids:
        image, label, _ = load_case(data_dir, case_id)
        if label is None:
            raise ConfigError(f"case `{case_id}` in `{data_dir}` has no label and cannot be used for training")
        cases.append(make_training_case(case_id, image, label, patch) if patch else (case_id, image, label))
    return cases


@contextlib.contextmanager
def _keeps_global_torch_state() -> Iterator[None]:
    """Restore what training changes process-wide: deterministic algorithms, cuDNN benchmark, the RNG state.

    A library call must not leave the caller's process in another mode (e.g. deterministic algorithms that
    make every later op slower or warn).
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    rng = torch.get_rng_state()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.set_rng_state(rng)


def _one_writer(func: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """Run ``train`` holding the lock of an existing run folder: two ``--resume`` of one run cannot proceed
    together. Under torchrun only rank 0 holds it (the other ranks are the same run)."""

    @functools.wraps(func)
    def locked(data_dir: str | Path, out_dir: str | Path, *args: Any, **kwargs: Any) -> TrainResult:
        if Path(out_dir).is_dir() and int(os.environ.get("RANK", "0")) == 0:
            with exclusive(out_dir, "training"):
                for stale in remove_stale_temporaries(out_dir):  # a killed run's, never another's: we hold the lock
                    logger.info("removed `%s`, left by an interrupted run", stale)
                return func(data_dir, out_dir, *args, **kwargs)
        return func(data_dir, out_dir, *args, **kwargs)

    return locked


@_one_writer
@_keeps_global_torch_state()
def train(
    data_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    resume_overrides: dict[str, Any] | None = None,
    progress: bool = True,
    callbacks: Sequence[EpochCallback] = (),
) -> TrainResult:
    """Train a model on a preprocessed dataset (see ``satseg preprocess``) into a run folder.

    Args:
        data_dir: folder written by :func:`satseg.data.preprocess.preprocess_dataset`.
        out_dir: run folder: ``config.json``, ``checkpoint_last.pt``, ``checkpoint_best.pt``,
            ``metrics.csv``, ``progress.png``, ``train.log``.
        config: training settings (ignored on resume, except :data:`RESUMABLE_OVERRIDES`).
        resume: continue the run in ``out_dir`` from its last checkpoint.
        resume_overrides: settings to change when resuming (e.g. more ``epochs``).
        progress: show a progress bar on stderr (rank 0 only).
        callbacks: called after each epoch.

    Raises:
        DataError: the preprocessed folder is missing or incomplete.
        CheckpointError: resuming without a checkpoint, or starting over an existing run.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    plan = load_plan(data_dir)
    config, payload = prepare_run(out_dir, config, resume, resume_overrides or {})
    ctx = init_distributed(config.device)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True

    spatial_dims = int(plan["spatial_dims"])
    labels: dict[str, int] = plan["labels"]
    # a resumed run rebuilds exactly the model it saved (a 0.1.0 run: with 0.1.0's defaults); a new run
    # records every option whose default may change, so its checkpoints keep meaning the same model
    train_plan = None
    if payload is not None:
        model_cfg = legacy_model_config(dict(payload["config"]["model"]))
    else:
        net = config.net or default_net(spatial_dims)
        model_cfg = explicit_model_config(_model_config(replace(config, net=net), plan))
        _check_dimensions(model_cfg, spatial_dims, net)
        config, model_cfg, train_plan = plan_training(config, plan, ctx.device, model_cfg, set(config.model_options))
    patch = check_patch_size(config.patch)
    if len(patch) != spatial_dims:
        raise ConfigError(f"`patch` needs {spatial_dims} sizes for this {spatial_dims}D dataset, got {patch}")
    largest = plan.get("median_shape") or patch
    if any(p > 2 * max(s, 16) for p, s in zip(patch, largest, strict=False)):
        logger.warning(
            "patch %s is over twice the median case shape %s: most of every patch is padding", patch, largest
        )
    torch.manual_seed(config.seed)  # the initial weights, too, follow from the seed
    model = build_model(**model_cfg)
    _check_dimensions(model_cfg, spatial_dims, config.net, model)
    divisors = model.axis_divisors()
    if any(p % d for p, d in zip(patch, divisors, strict=True)):
        shown = divisors[0] if len(set(divisors)) == 1 else divisors
        raise ConfigError(
            f"patch {patch} must be divisible by {shown} for `{config.net}`",
            hint=f"use --patch {' '.join(str(-(-p // d) * d) for p, d in zip(patch, divisors, strict=True))}",
        )
    if train_plan is not None and progress and ctx.is_main:
        for line in train_plan.lines():
            note(line)
    run_config = {
        "satseg_version": __version__,
        "model": model_cfg,
        "train": config.to_dict(),
        "plan": plan,
        "data_dir": str(data_dir.resolve()),
    }
    if train_plan is not None:
        run_config["train_plan"] = train_plan.to_dict()
    elif payload is not None and "train_plan" in payload["config"]:
        run_config["train_plan"] = payload["config"]["train_plan"]

    splits = load_splits(data_dir)
    if config.fold == -1:
        train_ids, val_ids = sorted({c for s in splits[:1] for c in s["train"] + s["val"]}), []
    elif 0 <= config.fold < len(splits):
        train_ids, val_ids = splits[config.fold]["train"], splits[config.fold]["val"]
    else:
        raise ConfigError(f"`fold` must be -1 (all cases) or 0..{len(splits) - 1}, got {config.fold}")
    run_config["cases"] = {"train": sorted(train_ids), "val": sorted(val_ids)}
    if payload is not None:
        check_resumed_data(out_dir, data_dir, payload["config"], run_config)
    # Every case is read before the run folder is made: unreadable data leaves no half-made run behind.
    train_cases = _load_cases(data_dir, train_ids, config.patch)
    # Every rank validates its share of the cases (ranks stay in step: none waits out another's validation).
    val_cases = _load_cases(data_dir, ctx.shard(val_ids), None)

    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / RUN_CONFIG, run_config)
    log_handler = _attach_log(out_dir / "train.log") if ctx.is_main else None
    try:
        return run_loop(
            model,
            run_config,
            config,
            ctx,
            out_dir,
            train_cases,
            val_cases,
            len(val_ids),
            labels,
            payload,
            progress and ctx.is_main,
            callbacks,
        )
    finally:
        if log_handler is not None:
            logging.getLogger("satseg").removeHandler(log_handler)
            log_handler.close()
        if ctx.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _attach_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("satseg")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler
