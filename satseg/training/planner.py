"""The training plan of a new run: network dimensionality, pooling per axis, patch, batch and epoch length.

What nnU-Net plans, sized for the device the run trains on:

* the net: a U-Net of the data's dimensionality when none is named;
* pooling per axis from the spacing: an axis is pooled at a level only while its spacing there is at most
  twice the finest axis's (and its side stays at least 4), so a 5 × 1 × 1 mm scan pools in-plane first;
* patch and batch from a budget: the activation memory of a training step (counted on the ``meta`` device,
  so planning allocates nothing) within a share of the device's memory and, on the CPU, the step's forward
  and backward FLOPs within a nominal second; the patch starts at the median case shape and its largest
  side is shrunk until a batch of 2 fits;
* the epoch length from the same nominal throughput, so the first validation comes within minutes.

Every figure comes from the data, the network and the device *type* (never from a timing of this machine),
so a run's plan is the same on an idle or a loaded machine. The plan fills only the settings the user left
out; it is recorded in the run (``config.json``: ``train_plan``), and a resumed or old run keeps its own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from satseg.device import autocast_dtype
from satseg.nn import build_model
from satseg.nn.registry import model_accepts
from satseg.training.config import TrainConfig

__all__ = ["TrainPlan", "plan_training", "plan_strides", "default_net"]

# Nominal throughput per device type (dense fp32 conv training on CPU; bf16 on a recent GPU). They turn
# FLOPs into seconds for planning only: a busier or faster machine changes the run's wall time, not its plan.
CPU_FLOPS = 25e9
CUDA_FLOPS = 40e12
CPU_STEP_SECONDS = {2: 1.0, 3: 4.0}  # a training step on the CPU at the nominal throughput
EPOCH_SECONDS = {"cpu": 120.0, "cuda": 60.0}  # the first validation within minutes
ITERS_RANGE = (10, 250)  # nnU-Net's epoch is 250 steps
BATCH_CAP = {2: 32, 3: 8}
PATCH_CAP = {2: 1024, 3: 192}
CPU_MEMORY_SHARE = 0.25
CUDA_MEMORY_SHARE = 0.5
BACKWARD_FACTOR = 3.0  # forward + backward ≈ 3 forwards
MIN_POOLED_SIDE = 4


def default_net(spatial_dims: int) -> str:
    """The backbone used when ``--net`` is not given: a U-Net of the data's dimensionality."""
    return f"unet{spatial_dims}d"


def plan_strides(spacing: Sequence[float] | None, patch: Sequence[int], levels: int) -> list[list[int]]:
    """Down-sampling factor per level and axis (nnU-Net's rule).

    An axis is pooled at a level when its spacing there is at most twice the finest one's and its side
    stays at least 4 after pooling; its spacing then doubles. ``spacing`` None: every axis alike.
    """
    current = list(spacing) if spacing else [1.0] * len(patch)
    sides = [float(p) for p in patch]
    strides = []
    for _ in range(levels):
        finest = min(current)
        pairs = zip(current, sides, strict=True)
        level = [2 if s <= 2 * finest and side / 2 >= MIN_POOLED_SIDE else 1 for s, side in pairs]
        if not any(level):
            level = [1] * len(patch)
        strides.append(level)
        current = [s * f for s, f in zip(current, level, strict=True)]
        sides = [side / f for side, f in zip(sides, level, strict=True)]
    return strides


@dataclass(frozen=True)
class TrainPlan:
    """What the planner chose and why, recorded in the run and printed before training."""

    device: str
    net: str
    patch: tuple[int, ...]
    batch: int
    iters_per_epoch: int
    epochs: int
    strides: list[list[int]] | None
    step_gflops: float
    step_memory_mib: float
    memory_budget_mib: float
    nominal_step_seconds: float
    planned: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "net": self.net,
            "patch": list(self.patch),
            "batch": self.batch,
            "iters_per_epoch": self.iters_per_epoch,
            "epochs": self.epochs,
            "strides": self.strides,
            "step_gflops": round(self.step_gflops, 1),
            "step_memory_mib": round(self.step_memory_mib),
            "memory_budget_mib": round(self.memory_budget_mib),
            "nominal_step_seconds": round(self.nominal_step_seconds, 2),
            "planned": list(self.planned),
        }

    def lines(self) -> list[str]:
        """The plan in a few short lines (each under 80 columns); ``*``: planned, not given."""
        auto = set(self.planned)

        def mark(name: str) -> str:
            return "*" if name in auto else ""

        out = [
            f"plan: {self.net}{mark('net')} on {self.device}, patch {'×'.join(map(str, self.patch))}"
            f"{mark('patch')}, batch {self.batch}{mark('batch')}",
            f"  {self.epochs} epochs × {self.iters_per_epoch} steps{mark('iters_per_epoch')}"
            f" = {self.epochs * self.iters_per_epoch} steps",
            f"  a step: ~{self.step_gflops:.0f} GFLOP, ~{self.step_memory_mib:.0f} MiB"
            f" (budget {self.memory_budget_mib:.0f} MiB)",
        ]
        if self.strides is not None:
            text = " ".join("×".join(map(str, s)) for s in self.strides)
            out.append(f"  pooling per level: {text}{mark('strides')}")
        if auto:
            out.append("  (* planned for this data and device; give the option to set it)")
        return out


def _memory_budget(device: torch.device) -> float:
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return CUDA_MEMORY_SHARE * total
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = 16 * 2**30
    return CPU_MEMORY_SHARE * total


def _measure(model_cfg: dict[str, Any], patch: Sequence[int], amp: bool) -> tuple[float, float]:
    """Forward FLOPs and training activation bytes of one sample, on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = build_model(**model_cfg)
    model.train()
    held = [0]

    def count(_module, _inputs, output) -> None:
        for t in output if isinstance(output, list | tuple) else [output]:
            if isinstance(t, torch.Tensor):
                held[0] += t.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    # two samples (train-mode BatchNorm refuses one value per channel at a 1-voxel bottleneck), halved below
    x = torch.empty(2, int(model_cfg["in_channels"]), *patch, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    for h in hooks:
        h.remove()
    # every layer's output is kept for backward; gradients of about as much again at the peak
    bytes_per_value = 2 if amp else 4
    return float(counter.get_total_flops()) / 2, held[0] * bytes_per_value


def _round_up(value: float, divisor: int) -> int:
    return max(divisor, int(math.ceil(value / divisor)) * divisor)


def plan_training(
    config: TrainConfig, plan: dict, device: torch.device, model_cfg: dict[str, Any], user_set: set[str]
) -> tuple[TrainConfig, dict[str, Any], TrainPlan]:
    """Fill the settings of a new run that the user left out (``None`` in ``config``).

    Args:
        config: the run's settings; ``net``, ``patch``, ``batch`` and ``iters_per_epoch`` may be None.
        plan: the preprocessed dataset's ``plan.json``.
        device: the training device.
        model_cfg: ``build_model`` arguments (from the config and the plan; ``net`` resolved).
        user_set: model options the user gave (``strides`` is planned only when not among them).

    Returns:
        ``(config with every field set, model configuration, the plan)``.
    """
    dims = int(plan["spatial_dims"])
    planned = [n for n in ("net", "patch", "batch", "iters_per_epoch") if getattr(config, n) is None]
    net = model_cfg["net"]
    spacing = plan.get("spacing") or (None if plan.get("size") else plan.get("median_spacing"))
    median = [float(s) for s in plan.get("median_shape") or plan["patch_size"]]
    amp = autocast_dtype(device, config.to_dict()) is not None  # the precision this run will train in
    budget = _memory_budget(device)
    cpu = device.type != "cuda"
    step_budget = CPU_STEP_SECONDS[dims] * CPU_FLOPS if cpu else math.inf
    plan_pooling = model_accepts(net, "strides") and "strides" not in user_set
    with torch.device("meta"):
        probe = build_model(**model_cfg)
    levels = len(probe.strides) if plan_pooling else 0
    fixed_divisors = probe.axis_divisors()

    def configure(patch: Sequence[int]) -> dict[str, Any]:
        if not plan_pooling:
            return model_cfg
        return {**model_cfg, "strides": plan_strides(spacing, patch, levels)}

    def divisors(cfg: dict[str, Any]) -> tuple[int, ...]:
        if not plan_pooling:
            return fixed_divisors
        return tuple(math.prod(axis) for axis in zip(*cfg["strides"], strict=True))

    extent = list(spacing) if spacing else [1.0] * dims

    if config.patch is not None:
        patch = tuple(config.patch)
        cfg = configure(patch)
    else:
        patch = tuple(min(PATCH_CAP[dims], max(1, round(s))) for s in median)
        for _ in range(200):  # each round shrinks one side; the bound only guards against a cycle
            cfg = configure(patch)
            patch_div = tuple(_round_up(p, d) for p, d in zip(patch, divisors(cfg), strict=True))
            flops, memory = _measure(cfg, patch_div, amp)
            fits = 2 * memory <= budget and 2 * BACKWARD_FACTOR * flops <= step_budget
            div = divisors(cfg)
            shrinkable = [a for a in range(dims) if patch_div[a] > div[a]]
            if fits or not shrinkable:
                patch = patch_div
                break
            # shrink the side longest in millimetres (nnU-Net shrinks the one largest against the median shape)
            axis = max(shrinkable, key=lambda a: (patch_div[a] * extent[a], a))
            smaller = list(patch_div)
            smaller[axis] = max(div[axis], int(patch_div[axis] * 0.85) // div[axis] * div[axis])
            if smaller[axis] == patch_div[axis]:
                smaller[axis] -= div[axis]
            patch = tuple(smaller)
        else:
            cfg = configure(patch)
            patch = tuple(_round_up(p, d) for p, d in zip(patch, divisors(cfg), strict=True))
    flops, memory = _measure(cfg, patch, amp)
    step_flops_one = BACKWARD_FACTOR * flops
    if config.batch is not None:
        batch = config.batch
    else:
        by_memory = budget // max(memory, 1.0)
        by_time = step_budget // max(step_flops_one, 1.0) if cpu else math.inf
        batch = int(max(2, min(BATCH_CAP[dims], by_memory, by_time)))
    throughput = CPU_FLOPS if cpu else CUDA_FLOPS
    step_seconds = batch * step_flops_one / throughput
    epochs = config.epochs
    if config.iters_per_epoch is not None:
        iters = config.iters_per_epoch
    else:
        iters = int(min(ITERS_RANGE[1], max(ITERS_RANGE[0], EPOCH_SECONDS[device.type if not cpu else "cpu"]
                                            // max(step_seconds, 1e-9))))  # fmt: skip
    if config.steps is not None:  # a total budget of steps: whole epochs of (about) equal length
        epochs = max(1, math.ceil(config.steps / iters))
        iters = math.ceil(config.steps / epochs)
    new_config = replace(config, net=net, patch=tuple(patch), batch=batch, iters_per_epoch=iters, epochs=epochs)
    if plan_pooling:
        planned.append("strides")
    result = TrainPlan(
        device=str(device), net=net, patch=tuple(patch), batch=batch, iters_per_epoch=iters, epochs=epochs,
        strides=cfg.get("strides"), step_gflops=batch * step_flops_one / 1e9, step_memory_mib=batch * memory / 2**20,
        memory_budget_mib=budget / 2**20, nominal_step_seconds=step_seconds, planned=tuple(planned),
    )  # fmt: skip
    return new_config, cfg, result
