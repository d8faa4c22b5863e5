"""The optimiser of a run: parameter groups (the selection weights' own rate), the learning-rate schedule,
and the selection's L1 term."""

from __future__ import annotations

from typing import Any

import torch

from satseg.nn import SegmentationNet
from satseg.training.config import TrainConfig

__all__ = ["param_groups", "make_optimizer", "lr_at", "selection_penalty"]


def param_groups(model: SegmentationNet, config: TrainConfig) -> list[dict[str, Any]]:
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


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    lr, wd = config.learning_rate, config.weight_decay
    if config.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=0.95, eps=1e-8, weight_decay=wd)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=wd)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch``: constant, or poly decay over the planned epochs.

    It depends on the epoch only, never on elapsed time: ``max_minutes`` may stop a run early, but the
    schedule (and so the result of every epoch that runs) is the same on an idle or a loaded machine.
    """
    if config.scheduler == "constant":
        return config.learning_rate
    return config.learning_rate * max(0.0, 1 - epoch / config.epochs) ** 0.9
