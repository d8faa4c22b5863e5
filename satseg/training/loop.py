"""The training loop, in named steps read top to bottom in :func:`run_loop`: each epoch is a training pass of
steps (:func:`_step`), a validation (:func:`_validate`), a checkpoint (:func:`_checkpoint`) and a stop
decision (the budget, :func:`_out_of_time`, agreed between ranks by :func:`_agree_to_stop`).

Reproducibility: every random choice of an epoch (patch sampling, augmentation, dropout) is seeded from
``(seed, epoch, rank)`` when the epoch starts (:func:`_start_epoch`), so resuming at epoch ``e`` replays
exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from satseg.atomic import atomic_write_text
from satseg.device import autocast_context, autocast_dtype
from satseg.errors import ConfigError
from satseg.nn import SegmentationNet
from satseg.plots import write_progress_plot
from satseg.progress import TrainProgress
from satseg.runs import BEST, LAST, save_checkpoint
from satseg.training.augment import AugmentConfig, augment_batch
from satseg.training.config import DEFAULT_ROTATION_DEG, TrainConfig
from satseg.training.distributed import DistContext
from satseg.training.ema import WeightEMA
from satseg.training.losses import deep_supervision_loss
from satseg.training.optim import lr_at, make_optimizer, param_groups, selection_penalty
from satseg.training.patches import PatchBatches, TrainingCase, to_device
from satseg.training.validation import mean_per_class, validate_cases

__all__ = [
    "run_loop",
    "TrainResult",
    "EpochCallback",
    "PROGRESS_PLOT",
    "mean_dice",
    "is_improvement",
]

logger = logging.getLogger("satseg.train")

EpochCallback = Callable[[int, dict[str, Any]], None]
"""Called after each epoch's checkpoint is written, with the epoch number and its metrics row."""

PROGRESS_PLOT = "progress.png"  # loss, validation Dice per class and learning rate, redrawn every epoch


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


def run_loop(
    model: SegmentationNet,
    run_config: dict[str, Any],
    config: TrainConfig,
    ctx: DistContext,
    out_dir: Path,
    train_cases: list[TrainingCase],
    val_cases: list,
    val_count: int,
    labels: dict[str, int],
    payload: dict[str, Any] | None,
    show_progress: bool,
    callbacks: Sequence[EpochCallback],
) -> TrainResult:
    """Train ``model`` (from ``payload`` when resuming) to the planned epochs, or until the time budget ends.

    Args:
        val_cases: this rank's share of the validation cases; ``val_count``: all ranks' together.
        payload: the last checkpoint of a resumed run, or None.
        callbacks: called after each epoch's checkpoint.
    """
    run, start_epoch = _start_session(model, run_config, config, ctx, out_dir, train_cases, val_count, payload,
                                      show_progress)  # fmt: skip
    last_dice: dict[str, float] = {}
    epoch_stop, steps_done, stopped = start_epoch, 0, False
    with run.progress:
        for epoch in range(start_epoch, config.epochs):
            epoch_start = time.perf_counter()
            lr = _start_epoch(run, epoch)
            losses, stopped = _train_epoch(run, epoch)
            stopped = _agree_to_stop(run, stopped)
            if not losses:  # the budget was spent before this epoch's first step
                epoch_stop = epoch
                run.progress.stop(f"stopped by --max-minutes {config.max_minutes:g} before epoch {epoch + 1}")
                break
            steps_done += len(losses)
            row: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses)), "steps": len(losses)}
            if val_count and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs or stopped):
                last_dice = _validate(run, val_cases, labels, row)
            row["seconds"] = round(time.perf_counter() - epoch_start, 3)
            _checkpoint(run, epoch, row)
            ctx.barrier()
            for callback in callbacks:
                callback(epoch, row)
            if stopped:
                epoch_stop = epoch + 1
                run.progress.stop(f"stopped by --max-minutes {config.max_minutes:g} in epoch {epoch + 1}")
                break
        else:
            epoch_stop = config.epochs
    return _result(run, epoch_stop, stopped, steps_done, last_dice)


@dataclass
class _Session:
    """What the steps of one training session share."""

    config: TrainConfig
    ctx: DistContext
    model: SegmentationNet
    step_model: torch.nn.Module  # the model as stepped: wrapped by DDP and torch.compile when asked
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: WeightEMA | None
    amp_dtype: torch.dtype | None
    train_cases: list[TrainingCase]
    resident: bool
    augment: AugmentConfig
    spacing: list[float] | None
    run_config: dict[str, Any]
    out_dir: Path
    history: list[dict[str, Any]]
    batches_per_rank: int
    budget_seconds: float | None
    augment_generator: torch.Generator
    started: float
    progress: TrainProgress
    best_dice: float | None = None
    best_epoch: int | None = None

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def shipped(self) -> SegmentationNet:
        """The weights validated, saved and shipped: the EMA's with ``--ema``, else the model's."""
        return self.ema.module if self.ema is not None else self.model


def _start_session(
    model: SegmentationNet,
    run_config: dict[str, Any],
    config: TrainConfig,
    ctx: DistContext,
    out_dir: Path,
    train_cases: list[TrainingCase],
    val_count: int,
    payload: dict[str, Any] | None,
    show_progress: bool,
) -> tuple[_Session, int]:
    """The model on its device, the optimizer, scaler and EMA (restored when resuming); the first epoch."""
    device = ctx.device
    cuda = device.type == "cuda"
    model.to(device)
    if cuda and config.channels_last:
        model.to(memory_format=torch.channels_last if model.spatial_dims == 2 else torch.channels_last_3d)
    optimizer = make_optimizer(config, param_groups(model, config))
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
    augment_generator = torch.Generator(device=device)
    started = time.perf_counter()
    run = _Session(
        config, ctx, model, step_model, optimizer, scaler, ema, amp_dtype, train_cases, resident,
        _augment_config(config, model.spatial_dims), _data_spacing(run_config["plan"]), run_config, out_dir, history,
        batches_per_rank, None if config.max_minutes is None else 60.0 * config.max_minutes, augment_generator,
        started, TrainProgress(config.epochs, batches_per_rank, start_epoch, enabled=show_progress),
        best_dice, best_epoch,
    )  # fmt: skip
    return run, start_epoch


def _start_epoch(run: _Session, epoch: int) -> float:
    """Set the epoch's learning rate and seed its random choices from (seed, epoch, rank); returns the rate."""
    lr = lr_at(run.config, epoch)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    _seed_epoch(run.config.seed, epoch, run.ctx.rank)
    augment_seed = np.random.default_rng([run.config.seed, epoch, run.ctx.rank, 7]).integers(2**62)
    run.augment_generator.manual_seed(int(augment_seed))
    return lr


def _batches(run: _Session, epoch: int) -> Any:
    """The epoch's batches: cut on the device (resident cases), or through a DataLoader."""
    config, ctx = run.config, run.ctx
    indices = None
    if ctx.distributed:
        sampler = DistributedSampler(range(len(run.train_cases)), shuffle=True, seed=config.seed)
        sampler.set_epoch(epoch)
        indices = list(sampler)
    batches = PatchBatches(run.train_cases, config.patch, config.batch, run.batches_per_rank,
                           config.foreground_fraction, config.seed, epoch, ctx.rank, indices)  # fmt: skip
    if run.resident:
        return batches
    return DataLoader(batches, batch_size=None, num_workers=config.workers, pin_memory=run.device.type == "cuda")


def _train_epoch(run: _Session, epoch: int) -> tuple[list[float], bool]:
    """One training pass: a step per batch until the epoch ends or the budget does; ``(losses, stopped)``."""
    loader = _batches(run, epoch)
    run.model.train()
    losses: list[float] = []
    run.progress.start_epoch(epoch)
    for image, label in loader:
        if _out_of_time(run):  # checked before every step, so a long epoch never overruns the budget
            return losses, True
        losses.append(_step(run, image, label, epoch))
        run.progress.step(losses[-1])
    return losses, False


def _out_of_time(run: _Session) -> bool:
    """Whether this rank's clock has passed ``max_minutes`` (the only wall-clock rule: it stops, never anneals)."""
    return run.budget_seconds is not None and time.perf_counter() - run.started > run.budget_seconds


def _step(run: _Session, image: torch.Tensor, label: torch.Tensor, epoch: int) -> float:
    """One optimisation step on a batch (augmented on the device); returns its loss."""
    config, device = run.config, run.device
    image = image.to(device, non_blocking=True)
    label = label.to(device, non_blocking=True)
    if config.augment:
        image, label = augment_batch(image, label, run.augment_generator, run.augment, run.spacing)
    if device.type == "cuda" and config.channels_last:
        fmt = torch.channels_last if image.ndim == 4 else torch.channels_last_3d
        image = image.contiguous(memory_format=fmt)
    with autocast_context(device, run.amp_dtype):
        outputs = run.step_model(image)
    loss = deep_supervision_loss(outputs, label, config.loss)
    if config.select_l1:
        penalty = selection_penalty(run.model)
        if penalty is not None:
            loss = loss + config.select_l1 * penalty
    if not torch.isfinite(loss):
        raise ConfigError(
            f"training diverged at epoch {epoch} (loss {loss.item()})",
            hint="lower --lr, or try --optimizer adam; the last good checkpoint is kept",
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.ema is not None:
        run.ema.update(run.model)
    return loss.item()


def _agree_to_stop(run: _Session, stopped: bool) -> bool:
    """Every rank stops at the same step when one's clock has passed the budget."""
    if not run.ctx.distributed:
        return stopped
    flag = torch.tensor([float(stopped)], device=run.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _validate(run: _Session, val_cases: list, labels: dict[str, int], row: dict[str, Any]) -> dict[str, float]:
    """Score the shipped weights on the validation cases (each rank its share); adds the Dice to ``row``."""
    val_start = time.perf_counter()
    mine = validate_cases(run.shipped, val_cases, labels, run.config.patch, run.device, run.amp_dtype)
    dice = mean_per_class(run.ctx.gather_shards(mine), labels)
    row.update({f"dice_{name}": d for name, d in dice.items()})
    row["dice_mean"] = mean_dice(dice)
    row["val_seconds"] = round(time.perf_counter() - val_start, 3)
    return dice


def _checkpoint(run: _Session, epoch: int, row: dict[str, Any]) -> None:
    """Rank 0 saves the last (and, when it improved, the best) checkpoint, metrics.csv and progress.png."""
    if not run.ctx.is_main:
        return
    improved = "dice_mean" in row and is_improvement(row["dice_mean"], run.best_dice)
    if improved:
        run.best_dice, run.best_epoch = row["dice_mean"], epoch
    state = {
        "epoch": epoch + 1,
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "best_dice": run.best_dice,
        "best_epoch": run.best_epoch,
    }
    if run.ema is not None:  # "model" holds the EMA weights (what inference loads); these resume training
        state |= {"train_model": run.model.state_dict(), "ema": run.ema.state()}
    save_checkpoint(run.out_dir / LAST, model=run.shipped, run_config=run.run_config, **state)
    if improved:
        save_checkpoint(run.out_dir / BEST, model=run.shipped, run_config=run.run_config, **state)
    run.history.append(row)
    _write_history(run.out_dir / "metrics.csv", run.history)
    write_progress_plot(run.history, run.out_dir / PROGRESS_PLOT)
    logger.info("epoch %d: %s", epoch, {k: row[k] for k in row if k != "epoch"})
    run.progress.end_epoch(row)


def _result(run: _Session, epoch: int, stopped: bool, steps_done: int, last_dice: dict[str, float]) -> TrainResult:
    config, history = run.config, run.history
    if stopped and run.ctx.is_main:
        logger.info("stopped by the %.1f-minute budget after %d steps", config.max_minutes, steps_done)
    annealing = stopped and config.scheduler == "poly"
    lr_at_stop = lr_at(config, epoch) / config.learning_rate if annealing else None
    final = history[-1] if history and int(history[-1]["epoch"]) == epoch - 1 else {}
    final_dice = float(final["dice_mean"]) if final.get("dice_mean") not in (None, "") else None
    return TrainResult(
        run.out_dir, epoch, run.best_dice, run.best_epoch, last_dice, time.perf_counter() - run.started, history,
        run.ctx.is_main, final_dice, "ema" if run.ema is not None else "final", stopped_by_budget=stopped,
        epochs_planned=config.epochs, steps_done=steps_done, lr_at_stop=lr_at_stop, max_minutes=config.max_minutes,
    )  # fmt: skip


# ---------------------------------------------------------------- helpers of the steps
def mean_dice(per_class: dict[str, float]) -> float:
    """Mean over the classes with a defined Dice (NaN: no validation case scored it); NaN if none."""
    values = [v for v in per_class.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def is_improvement(score: float | None, best: float | None) -> bool:
    """Whether ``score`` beats ``best``, NaN and None counting as −inf (so a NaN never freezes the best)."""

    def key(value: float | None) -> float:
        return -math.inf if value is None or math.isnan(value) else value

    return score is not None and not math.isnan(score) and key(score) > key(best)


def _augment_config(config: TrainConfig, spatial_dims: int) -> AugmentConfig:
    degrees = config.rotation_deg if config.rotation_deg is not None else DEFAULT_ROTATION_DEG[spatial_dims]
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
