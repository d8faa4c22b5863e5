"""The training loop behind ``satseg train``: patches, augmentation, validation, checkpoints, resume, DDP.

Reproducibility: every random choice of an epoch (patch sampling, augmentation, dropout) is seeded
from ``(seed, epoch, rank)``, so resuming at epoch ``e`` replays exactly what an uninterrupted run
would have done; with ``deterministic`` on the CPU a resumed run ends with bit-identical weights.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from satseg import __version__
from satseg.atomic import atomic_write_json, atomic_write_text, exclusive, remove_stale_temporaries
from satseg.data.store import load_case, load_plan, load_splits
from satseg.device import autocast_context, autocast_dtype
from satseg.errors import CheckpointError, ConfigError
from satseg.nn import SegmentationNet, build_model, explicit_model_config, legacy_model_config
from satseg.nn.registry import model_accepts
from satseg.plots import write_progress_plot
from satseg.progress import TrainProgress, note
from satseg.runs import BEST, LAST, RUN_CONFIG, check_patch_size, load_checkpoint, save_checkpoint
from satseg.training.augment import AugmentConfig, augment_batch
from satseg.training.config import TrainConfig
from satseg.training.distributed import DistContext, init_distributed
from satseg.training.ema import WeightEMA
from satseg.training.losses import deep_supervision_loss
from satseg.training.patches import PatchBatches, TrainingCase, make_training_case, to_device
from satseg.training.planner import default_net, plan_training
from satseg.training.validation import mean_per_class, validate_cases

__all__ = [
    "train",
    "prepare_run",
    "TrainResult",
    "EpochCallback",
    "RESUMABLE_OVERRIDES",
    "mean_dice",
    "is_improvement",
]

logger = logging.getLogger("satseg.train")

EpochCallback = Callable[[int, dict[str, Any]], None]
"""Called after each epoch's checkpoint is written, with the epoch number and its metrics row."""

PROGRESS_PLOT = "progress.png"  # loss, validation Dice per class and learning rate, redrawn every epoch

# Settings a resumed run may change; everything else must match the interrupted run.
RESUMABLE_OVERRIDES = ("epochs", "max_minutes", "workers", "device", "val_every", "compile", "resident")


@dataclass
class TrainResult:
    """What a finished (or budget-stopped) run reached.

    The honest figure is :attr:`final_dice`: the validation Dice of the weights the run ships
    (``checkpoint_last.pt``: the final weights, or their EMA with ``--ema``). :attr:`best_dice` is the
    best epoch's, chosen on that same validation, so it is optimistic.
    """

    run_dir: Path
    epochs_done: int
    best_dice: float | None
    best_epoch: int | None
    last_dice: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    is_main: bool = True
    final_dice: float | None = None
    final_weights: str = "final"
    stopped_by_budget: bool = False
    epochs_planned: int | None = None
    steps_done: int = 0
    lr_at_stop: float | None = None
    max_minutes: float | None = None

    def summary(self) -> dict[str, Any]:
        """Plain-JSON summary for ``--json``."""
        return {
            "run_dir": str(self.run_dir),
            "epochs_done": self.epochs_done,
            "val_dice": self.final_dice,
            "val_dice_weights": self.final_weights,
            "best_dice": self.best_dice,
            "best_epoch": None if self.best_epoch is None else self.best_epoch + 1,
            "epochs_planned": self.epochs_planned,
            "steps_done": self.steps_done,
            "stopped_by_budget": self.stopped_by_budget,
            "lr_fraction_at_stop": None if self.lr_at_stop is None else round(self.lr_at_stop, 3),
            "best_dice_note": "optimistic: the epoch was chosen on this same validation",
            "last_dice": self.last_dice,
            "seconds": round(self.seconds, 2),
        }


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


def mean_dice(per_class: dict[str, float]) -> float:
    """Mean over the classes with a defined Dice (NaN: no validation case scored it); NaN if none."""
    values = [v for v in per_class.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def is_improvement(score: float | None, best: float | None) -> bool:
    """Whether ``score`` beats ``best``, NaN and None counting as −inf (so a NaN never freezes the best)."""

    def key(value: float | None) -> float:
        return -math.inf if value is None or math.isnan(value) else value

    return score is not None and not math.isnan(score) and key(score) > key(best)


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


def _augment_config(config: TrainConfig, spatial_dims: int) -> AugmentConfig:
    degrees = config.rotation_deg if config.rotation_deg is not None else (180.0 if spatial_dims == 2 else 30.0)
    return AugmentConfig(rotate_max_deg=degrees, elastic=0.2 if config.elastic else 0.0)


def _data_spacing(plan: dict) -> list[float] | None:
    """mm per array axis of the preprocessed cases (None when each case keeps its own, e.g. 2D resizes)."""
    if plan.get("spacing"):
        return list(plan["spacing"])
    return None if plan.get("size") else plan.get("median_spacing")


def _resident(config: TrainConfig, device: torch.device, cases: Sequence[TrainingCase]) -> bool:
    if config.resident is not None:
        return config.resident
    if device.type != "cuda" or config.workers:
        return False
    nbytes = sum(c.image.nbytes + c.label.nbytes for c in cases)
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free / 4


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    torch.manual_seed(int(np.random.default_rng([seed, epoch, rank, 99]).integers(2**62)))


def _param_groups(model: SegmentationNet, config: TrainConfig) -> list[dict[str, Any]]:
    """Every parameter in one group, or two when the selection weights get their own learning-rate scale."""
    select = [g.select_weight for _, g in model.skip_gates() if hasattr(g, "select_weight")]
    if config.select_lr_scale == 1.0 or not select:
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]
    ids = {id(p) for p in select}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "lr_scale": 1.0}, {"params": select, "lr_scale": config.select_lr_scale}]


def selection_penalty(model: SegmentationNet) -> torch.Tensor | None:
    """``Σ trelu(W)`` over the selection weights of every selecting gate (None when there are none)."""
    terms = [g.selection_weights().sum() for _, g in model.skip_gates() if hasattr(g, "select_weight")]
    return torch.stack(terms).sum() if terms else None


def _make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    lr, wd = config.learning_rate, config.weight_decay
    if config.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=0.95, eps=1e-8, weight_decay=wd)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=wd)


def _lr_at(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch``: constant, or poly decay over the planned epochs.

    It depends on the epoch only, never on elapsed time: ``max_minutes`` may stop a run early, but the
    schedule (and so the result of every epoch that runs) is the same on an idle or a loaded machine.
    """
    if config.scheduler == "constant":
        return config.learning_rate
    return config.learning_rate * max(0.0, 1 - epoch / config.epochs) ** 0.9


def _read_history(path: Path, before_epoch: int) -> list[dict[str, Any]]:
    """Rows of an earlier ``metrics.csv`` for epochs already checkpointed (later rows were lost work)."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh) if int(row["epoch"]) < before_epoch]


def _write_history(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _load_cases(data_dir: Path, ids: Sequence[str], patch: Sequence[int] | None) -> list:
    cases = []
    for case_id in ids:
        image, label, _ = load_case(data_dir, case_id)
        if label is None:
            raise ConfigError(f"case `{case_id}` in `{data_dir}` has no label and cannot be used for training")
        cases.append(make_training_case(case_id, image, label, patch) if patch else (case_id, image, label))
    return cases


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


def _check_resumed_data(out_dir: Path, data_dir: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
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
        _check_resumed_data(out_dir, data_dir, payload["config"], run_config)
    # Every case is read before the run folder is made: unreadable data leaves no half-made run behind.
    train_cases = _load_cases(data_dir, train_ids, config.patch)
    # Every rank validates its share of the cases (ranks stay in step: none waits out another's validation).
    val_cases = _load_cases(data_dir, ctx.shard(val_ids), None)

    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / RUN_CONFIG, run_config)
    log_handler = _attach_log(out_dir / "train.log") if ctx.is_main else None
    try:
        return _run(
            model,
            run_config,
            config,
            ctx,
            data_dir,
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


def _run(
    model: SegmentationNet,
    run_config: dict[str, Any],
    config: TrainConfig,
    ctx: DistContext,
    data_dir: Path,
    out_dir: Path,
    train_cases: list[TrainingCase],
    val_cases: list,
    val_count: int,
    labels: dict[str, int],
    payload: dict[str, Any] | None,
    show_progress: bool,
    callbacks: Sequence[EpochCallback],
) -> TrainResult:
    device = ctx.device
    cuda = device.type == "cuda"
    model.to(device)
    if cuda and config.channels_last:
        model.to(memory_format=torch.channels_last if model.spatial_dims == 2 else torch.channels_last_3d)
    optimizer = _make_optimizer(config, _param_groups(model, config))
    # One dtype per run (recorded in its config): training, validation, segment and evaluate all use it.
    amp_dtype = autocast_dtype(device, config.to_dict())
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = WeightEMA(model, config.ema) if config.ema is not None else None
    start_epoch, best_dice, best_epoch = 0, None, None
    if payload is not None:
        model.load_state_dict(payload.get("train_model", payload["model"]))
        if ema is not None:
            ema.load(payload["model"], payload["ema"])
        optimizer.load_state_dict(payload["optimizer"])
        if payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        start_epoch, best_dice, best_epoch = payload["epoch"], payload.get("best_dice"), payload.get("best_epoch")
        logger.info("resuming %s at epoch %d", out_dir, start_epoch)
    history = _read_history(out_dir / "metrics.csv", start_epoch) if ctx.is_main else []

    resident = _resident(config, device, train_cases)
    if resident:
        train_cases = to_device(train_cases, device)
    augment_cfg = _augment_config(config, model.spatial_dims)
    spacing = _data_spacing(run_config["plan"])
    logger.info(
        "training %s/%s on %d cases (%s), validating on %d",
        config.net, config.skip, len(train_cases), "resident on " + str(device) if resident else "loaded",
        val_count,
    )  # fmt: skip

    step_model: torch.nn.Module = model
    if ctx.distributed:
        step_model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if config.compile:
        step_model = torch.compile(step_model)
    batches_per_rank = math.ceil(config.iters_per_epoch / ctx.world_size)
    budget_seconds = None if config.max_minutes is None else 60.0 * config.max_minutes
    stopped = False
    aug_gen = torch.Generator(device=device)
    started = time.perf_counter()
    progress = TrainProgress(config.epochs, batches_per_rank, start_epoch, enabled=show_progress)
    last_dice: dict[str, float] = {}
    epoch = epoch_stop = start_epoch
    steps_done = 0
    with progress:
        for epoch in range(start_epoch, config.epochs):
            epoch_start = time.perf_counter()
            lr = _lr_at(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            _seed_epoch(config.seed, epoch, ctx.rank)
            aug_gen.manual_seed(int(np.random.default_rng([config.seed, epoch, ctx.rank, 7]).integers(2**62)))
            indices = None
            if ctx.distributed:
                sampler = DistributedSampler(range(len(train_cases)), shuffle=True, seed=config.seed)
                sampler.set_epoch(epoch)
                indices = list(sampler)
            batches = PatchBatches(
                train_cases,
                config.patch,
                config.batch,
                batches_per_rank,
                config.foreground_fraction,
                config.seed,
                epoch,
                ctx.rank,
                indices,
            )
            loader = (
                batches
                if resident
                else DataLoader(batches, batch_size=None, num_workers=config.workers, pin_memory=cuda)
            )
            model.train()
            losses = []
            progress.start_epoch(epoch)
            for image, label in loader:
                if budget_seconds is not None and time.perf_counter() - started > budget_seconds:
                    stopped = True  # checked before every step, so a long epoch never overruns the budget
                    break
                image = image.to(device, non_blocking=True)
                label = label.to(device, non_blocking=True)
                if config.augment:
                    image, label = augment_batch(image, label, aug_gen, augment_cfg, spacing)
                if cuda and config.channels_last:
                    fmt = torch.channels_last if image.ndim == 4 else torch.channels_last_3d
                    image = image.contiguous(memory_format=fmt)
                with autocast_context(device, amp_dtype):
                    outputs = step_model(image)
                loss = deep_supervision_loss(outputs, label, config.loss)
                if config.select_l1:
                    penalty = selection_penalty(model)
                    if penalty is not None:
                        loss = loss + config.select_l1 * penalty
                if not torch.isfinite(loss):
                    raise ConfigError(
                        f"training diverged at epoch {epoch} (loss {loss.item()})",
                        hint="lower --lr, or try --optimizer adam; the last good checkpoint is kept",
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update(model)
                losses.append(loss.item())
                progress.step(losses[-1])

            if ctx.distributed:  # every rank stops at the same step when one's clock has passed the budget
                flag = torch.tensor([float(stopped)], device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                stopped = bool(flag.item())
            if not losses:  # the budget was spent before this epoch's first step
                epoch_stop = epoch
                progress.stop(f"stopped by --max-minutes {config.max_minutes:g} before epoch {epoch + 1}")
                break
            steps_done += len(losses)
            row: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses)), "steps": len(losses)}
            validate_now = val_count and (
                (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs or stopped
            )
            shipped = ema.module if ema is not None else model  # the weights validated, saved and shipped
            if validate_now:
                val_start = time.perf_counter()
                mine = validate_cases(shipped, val_cases, labels, config.patch, device, amp_dtype)
                last_dice = mean_per_class(ctx.gather_shards(mine), labels)
                row.update({f"dice_{name}": d for name, d in last_dice.items()})
                row["dice_mean"] = mean_dice(last_dice)
                row["val_seconds"] = round(time.perf_counter() - val_start, 3)
            row["seconds"] = round(time.perf_counter() - epoch_start, 3)
            if ctx.is_main:
                improved = "dice_mean" in row and is_improvement(row["dice_mean"], best_dice)
                if improved:
                    best_dice, best_epoch = row["dice_mean"], epoch
                state = {
                    "epoch": epoch + 1,
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "best_dice": best_dice,
                    "best_epoch": best_epoch,
                }
                if ema is not None:  # "model" holds the EMA weights (what inference loads); these resume training
                    state |= {"train_model": model.state_dict(), "ema": ema.state()}
                save_checkpoint(out_dir / LAST, model=shipped, run_config=run_config, **state)
                if improved:
                    save_checkpoint(out_dir / BEST, model=shipped, run_config=run_config, **state)
                history.append(row)
                _write_history(out_dir / "metrics.csv", history)
                write_progress_plot(history, out_dir / PROGRESS_PLOT)
                logger.info("epoch %d: %s", epoch, {k: row[k] for k in row if k != "epoch"})
                progress.end_epoch(row)
            ctx.barrier()
            for callback in callbacks:
                callback(epoch, row)
            if stopped:
                epoch_stop = epoch + 1
                progress.stop(f"stopped by --max-minutes {config.max_minutes:g} in epoch {epoch + 1}")
                break
        else:
            epoch_stop = config.epochs
    epoch = epoch_stop
    if stopped and ctx.is_main:
        logger.info("stopped by the %.1f-minute budget after %d steps", config.max_minutes, steps_done)
    annealing = stopped and config.scheduler == "poly"
    lr_at_stop = _lr_at(config, epoch) / config.learning_rate if annealing else None
    final = history[-1] if history and int(history[-1]["epoch"]) == epoch - 1 else {}
    final_dice = float(final["dice_mean"]) if final.get("dice_mean") not in (None, "") else None
    return TrainResult(
        out_dir, epoch, best_dice, best_epoch, last_dice, time.perf_counter() - started, history, ctx.is_main,
        final_dice, "ema" if ema is not None else "final", stopped_by_budget=stopped, epochs_planned=config.epochs,
        steps_done=steps_done, lr_at_stop=lr_at_stop,
        max_minutes=config.max_minutes,
    )  # fmt: skip
