"""Exponential moving average (EMA) of a model's weights, the weights a run with ``--ema`` validates and ships.

After every optimiser step each floating-point parameter moves towards the trained one,
``ema = d·ema + (1 − d)·weight``, with the decay warmed up as ``d = min(decay, (1 + n) / (10 + n))`` for
the ``n``-th update (so the first updates are not dominated by the random initial weights). Buffers
(batch-norm running statistics, counters) are copied, not averaged: they describe the activations of
the current weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from satseg.errors import ConfigError

__all__ = ["WeightEMA", "ema_decay_at"]


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used for update number ``updates`` (0-based): ``min(decay, (1 + n) / (10 + n))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightEMA:
    """A shadow copy of ``model`` whose parameters follow the trained ones by EMA.

    Args:
        model: the (unwrapped) model being trained.
        decay: target decay in ``[0, 1)``, e.g. 0.999.

    Attributes:
        module: the averaged model (eval mode), to validate, save and ship.
        updates: number of :meth:`update` calls so far.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"`ema` decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards ``model``'s current weights (call after each optimiser step)."""
        d = ema_decay_at(self.decay, self.updates)
        params = dict(model.named_parameters())
        for name, shadow in self.module.named_parameters():
            shadow.lerp_(params[name].detach(), 1.0 - d)
        buffers = dict(model.named_buffers())
        for name, shadow in self.module.named_buffers():
            shadow.copy_(buffers[name])
        self.updates += 1

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps to resume the average."""
        return {"decay": self.decay, "updates": self.updates}

    def load(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Restore the shadow weights and the update count saved by :meth:`state`."""
        self.module.load_state_dict(weights)
        self.updates = int(state["updates"])
