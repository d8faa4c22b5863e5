"""Training settings as one frozen dataclass, saved with every run so it can be rebuilt."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from satseg.device import AMP_DTYPES, amp_mode
from satseg.errors import ConfigError, look_up_option

__all__ = ["TrainConfig", "OPTIMIZERS", "LOSSES", "SCHEDULERS", "DEFAULT_LR", "DEFAULT_ROTATION_DEG"]

OPTIMIZERS = ("adadelta", "adam", "sgd")
LOSSES = ("dice+ce", "dice", "ce")
SCHEDULERS = ("poly", "constant")
# Paper defaults for Adadelta (lr 1.0, rho 0.95, eps 1e-8); common defaults for the others.
DEFAULT_LR = {"adadelta": 1.0, "adam": 1e-3, "sgd": 1e-2}
DEFAULT_ROTATION_DEG = {2: 180.0, 3: 30.0}
"""``rotation_deg`` when not given, by spatial dims (nnU-Net's)."""

DATA, MODEL, OPTIM, HARDWARE, RUN = "Data", "Model", "Optimisation", "Hardware", "Run control"
"""Groups of settings (the panels of ``satseg train --help``)."""


def _setting(default: Any, group: str, help: str, **cli: Any) -> Any:
    """A field with its default and the short help ``satseg train`` shows for it (``metadata``): the one place
    both are written. ``cli`` holds presentation hints: ``flag`` (the option's name when it is not the field's),
    ``metavar``, ``switch`` (a lone ``--flag``, no ``--no-flag``)."""
    return field(default=default, metadata={"panel": group, "help": help, **cli})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run, besides the data folder.

    Args:
        net: backbone name (see :func:`satseg.nn.list_models`); ``None``: a U-Net of the data's dimensionality.
        skip: skip gate, ``org``, ``st``, ``at`` or ``sat``.
        fold: which fold of ``splits.json`` to validate on (``-1``: train on all cases, no validation).
        epochs: number of epochs.
        iters_per_epoch: training batches per epoch; ``None``: planned so an epoch takes about two minutes on
            the CPU, one on a GPU, at a nominal throughput (:mod:`satseg.training.planner`).
        steps: total training steps (the load-independent budget): sets ``epochs`` to whole epochs of about
            ``iters_per_epoch`` steps adding up to it; ``None``: ``epochs`` × ``iters_per_epoch``.
        patch: patch size per array axis; ``None``: planned from the median case shape and the device's budget.
        batch: patches per batch; ``None``: planned from the device's budget (at least 2).
        optimizer: ``adadelta`` (paper), ``adam`` or ``sgd`` (Nesterov momentum 0.99).
        lr: learning rate; ``None`` takes the optimizer's default (Adadelta 1.0, Adam 1e-3, SGD 1e-2).
        scheduler: ``poly`` (lr × (1 − epoch/epochs)^0.9) or ``constant`` (the paper: Adadelta with
            decay 0). Either follows the planned epochs only: ``max_minutes`` stops a run early but never
            changes its learning rate, so a result does not depend on the machine's load.
        loss: ``dice+ce``, ``dice`` or ``ce``.
        weight_decay: L2 weight decay.
        foreground_fraction: share of patches centred on a foreground voxel.
        augment: on-the-fly augmentation on the training device (mirroring, 90° and continuous rotations
            respecting anisotropy, scaling, intensity scale/shift, gamma, noise; see :mod:`satseg.training.augment`).
        rotation_deg: largest continuous rotation in degrees (0: none); ``None``: :data:`DEFAULT_ROTATION_DEG`.
        elastic: add a cheap elastic deformation (a smooth random field of up to 3 voxels) to the augmentation.
        deep_supervision: train the auxiliary heads of backbones that have them (U-Net, DI2IN).
        ema: keep an exponential moving average of the weights with this decay (e.g. 0.999) and validate,
            save and ship the averaged weights; ``None``: off.
        resident: keep the training cases on the training device and cut patches there (no data loader);
            ``None``: on for CUDA when the cases take at most a quarter of its free memory.
        amp: mixed precision (autocast to ``amp_dtype``): ``auto`` on CUDA only, ``on`` on every device (the
            CPU too: CUDA's mixed-precision code path, bf16 native on CPUs with AVX-512 BF16/AMX), ``off``
            never; ``True``/``False`` mean ``on``/``off``. See :mod:`satseg.device`.
        amp_dtype: ``bf16`` or ``fp16``.
        channels_last: channels-last memory format on CUDA.
        compile: ``torch.compile`` the model.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:i``.
        seed: seed of every random choice; with ``deterministic`` a run is exactly repeatable on CPU.
        deterministic: ask PyTorch for deterministic algorithms.
        val_every: validate every this many epochs (and at the last epoch).
        workers: data-loading worker processes (0: in the main process).
        max_minutes: stop after the first training step past this wall-time budget (``None``: no budget); the
            stopped run's last checkpoint is the end of the last whole epoch, and its learning rate never annealed.
        select_l1: weight λ of an L1 term ``λ · Σ trelu(W)`` over every selection weight of every
            ``st``/``sat`` gate (Keras' ``l1(λ)`` regulariser convention: a sum), pushing channels off.
        select_lr_scale: learning-rate multiplier of the selection weights ``W`` (Adadelta moves a weight
            about 1e-4 per step at first, too little for a channel to travel from 0.5 to 0 in a short run).
        model_options: extra backbone options, e.g. ``{"features": [16, 32, 64]}``.
    """

    net: str | None = _setting(None, MODEL, "Backbone: {models}. Default: the U-Net of the data's dimensionality.")
    skip: str = _setting("sat", MODEL, "Skip gate: {gates}.")
    fold: int = _setting(
        0, DATA, "Fold of splits.json to validate on; -1: train on all cases; `all`: each fold in OUT/fold_K."
    )
    epochs: int = _setting(50, OPTIM, "Epochs.")
    iters_per_epoch: int | None = _setting(
        None, OPTIM, "Batches per epoch [default: planned, ~2 min on a CPU].", flag="--iters"
    )
    patch: tuple[int, ...] | None = _setting(
        None, DATA, "Patch per axis, e.g. 96,96,96 [default: planned for the data and device].", metavar="SIZES"
    )
    batch: int | None = _setting(None, DATA, "Patches per batch [default: planned for the device].")
    optimizer: str = _setting("adadelta", OPTIM, "adadelta (paper), adam or sgd.")
    lr: float | None = _setting(
        None, OPTIM, f"Learning rate [default: {', '.join(f'{v:g} {k}' for k, v in DEFAULT_LR.items())}]."
    )
    scheduler: str = _setting(
        "poly", OPTIM, "poly (decay over the planned epochs) or constant (the paper: Adadelta, decay 0)."
    )
    loss: str = _setting("dice+ce", OPTIM, "dice+ce, dice or ce.")
    weight_decay: float = _setting(0.0, OPTIM, "L2 weight decay.")
    foreground_fraction: float = _setting(0.33, DATA, "Share of patches centred on a foreground voxel.")
    augment: bool = _setting(True, DATA, "Augment batches on the training device.")
    rotation_deg: float | None = _setting(
        None,
        DATA,
        "Largest continuous rotation, degrees; 0: none [default: "
        f"{DEFAULT_ROTATION_DEG[2]:g} 2D, {DEFAULT_ROTATION_DEG[3]:g} 3D].",
    )
    elastic: bool = _setting(False, DATA, "Add a cheap elastic deformation.", switch=True)
    deep_supervision: bool = _setting(True, OPTIM, "Train auxiliary heads where the backbone has them (U-Net, DI2IN).")
    ema: float | None = _setting(None, OPTIM, "Validate and ship an EMA of the weights, e.g. 0.999.", metavar="DECAY")
    resident: bool | None = _setting(None, HARDWARE, "Keep the cases on the device [default: CUDA if they fit].")
    amp: str = _setting(
        "auto", HARDWARE, "Mixed precision, autocast to --amp-dtype [default: on CUDA only; --amp: the CPU too]."
    )
    amp_dtype: str = _setting("bf16", HARDWARE, "bf16 or fp16.")
    channels_last: bool = _setting(True, HARDWARE, "Channels-last memory format on CUDA.")
    compile: bool = _setting(False, HARDWARE, "torch.compile the model.", switch=True)
    device: str = _setting("auto", HARDWARE, "auto, cpu, cuda or cuda:N.")
    seed: int = _setting(0, OPTIM, "Seed of every random choice.")
    deterministic: bool = _setting(False, HARDWARE, "Deterministic algorithms.", switch=True)
    val_every: int = _setting(1, RUN, "Validate every N epochs.")
    workers: int = _setting(0, DATA, "Data-loading worker processes.")
    max_minutes: float | None = _setting(
        None, RUN, "Stop at the first step past this many minutes (the LR does not anneal: prefer --steps)."
    )
    select_l1: float = _setting(0.0, OPTIM, "Weight of an L1 term on trelu(W) (st/sat selection).")
    select_lr_scale: float = _setting(1.0, OPTIM, "Learning-rate multiplier of the selection weights W.")
    model_options: dict[str, Any] = field(default_factory=dict, metadata={"panel": MODEL})
    steps: int | None = _setting(
        None, OPTIM, "Total training steps: the budget that does not depend on the machine's load (sets --epochs)."
    )

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # NaN passes every `<`/`>` check below: refuse it (and infinity) first
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"`{item.name}` must be a finite number, got {value}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"`lr` (the learning rate) must be greater than 0, got {self.lr}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"`seed` must be in [0, 2**32), got {self.seed}", hint="e.g. --seed 0")
        look_up_option(self.optimizer, OPTIMIZERS, "optimizer")
        look_up_option(self.loss, LOSSES, "loss")
        look_up_option(self.scheduler, SCHEDULERS, "scheduler")
        look_up_option(self.amp_dtype, AMP_DTYPES, "amp dtype")
        # an explicit True/False from the API means on/off (a run's recorded `true` is read by from_dict)
        object.__setattr__(self, "amp", amp_mode({True: "on", False: "off"}.get(self.amp, self.amp)))
        for name in ("epochs", "iters_per_epoch", "val_every", "steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"`batch` must be at least 1, got {self.batch}")
        if self.workers < 0:
            raise ConfigError(f"`workers` must be 0 or more, got {self.workers}")
        if self.rotation_deg is not None and not 0.0 <= self.rotation_deg <= 180.0:
            raise ConfigError(f"`rotation_deg` must be in [0, 180], got {self.rotation_deg}")
        if self.ema is not None and not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"`ema` decay must be in [0, 1), e.g. 0.999, got {self.ema}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ConfigError(f"`foreground_fraction` must be in [0, 1], got {self.foreground_fraction}")
        if self.select_l1 < 0 or self.select_lr_scale <= 0:
            raise ConfigError(
                f"need select_l1 ≥ 0 and select_lr_scale > 0, got {self.select_l1} and {self.select_lr_scale}"
            )
        if self.patch is not None:
            object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))

    @property
    def learning_rate(self) -> float:
        """The learning rate in force: ``lr`` or the optimizer's default."""
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["patch"] = None if self.patch is None else list(self.patch)
        return data

    @classmethod
    def from_options(cls, **options: Any) -> TrainConfig:
        """Build from keyword options, leaving out the ``None`` ones (the CLI's "not given")."""
        return cls(**{k: v for k, v in options.items() if v is not None})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output, refusing unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            look_up_option(key, known, "training setting")
        if "amp" in data:  # runs saved before `amp` had three values recorded `true` for what is now `auto`
            data = {**data, "amp": amp_mode(data["amp"])}
        return cls(**data)
