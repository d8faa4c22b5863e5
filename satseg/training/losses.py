"""Segmentation losses: soft Dice, cross-entropy and their sum, with deep-supervision weighting."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from satseg.errors import look_up_option

__all__ = ["soft_dice_loss", "segmentation_loss", "deep_supervision_loss"]


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1e-5) -> Tensor:
    """1 − mean soft Dice over the foreground classes, counted over the whole batch ("batch Dice").

    Args:
        logits: ``(B, K, *S)``; ``K == 1`` is a sigmoid output, ``K > 1`` a softmax one.
        target: ``(B, *S)`` integer labels in ``[0, K)`` (``[0, 1]`` for ``K == 1``).
    """
    k = logits.shape[1]
    dims = [0] + list(range(2, logits.ndim))
    if k == 1:
        probs = torch.sigmoid(logits.float())
        onehot = target.unsqueeze(1).float()
    else:
        probs = torch.softmax(logits.float(), dim=1)[:, 1:]
        onehot = F.one_hot(target.long(), k).movedim(-1, 1)[:, 1:].float()
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return 1 - dice.mean()


def segmentation_loss(logits: Tensor, target: Tensor, kind: str = "dice+ce") -> Tensor:
    """``dice+ce`` (sum), ``dice`` or ``ce`` between logits ``(B, K, *S)`` and labels ``(B, *S)``."""
    kind = look_up_option(kind, ("dice+ce", "dice", "ce"), "loss")
    loss = logits.new_zeros((), dtype=torch.float32)
    if kind in ("dice+ce", "ce"):
        if logits.shape[1] == 1:
            loss = loss + F.binary_cross_entropy_with_logits(logits[:, 0].float(), target.float())
        else:
            loss = loss + F.cross_entropy(logits.float(), target.long())
    if kind in ("dice+ce", "dice"):
        loss = loss + soft_dice_loss(logits, target)
    return loss


def deep_supervision_loss(outputs: Tensor | Sequence[Tensor], target: Tensor, kind: str = "dice+ce") -> Tensor:
    """Loss of a single output, or of ``[main, aux1, …]`` with weights halving per head (normalised to 1)."""
    if isinstance(outputs, Tensor):
        return segmentation_loss(outputs, target, kind)
    weights = torch.tensor([0.5**i for i in range(len(outputs))])
    weights = weights / weights.sum()
    return sum(w * segmentation_loss(o, target, kind) for w, o in zip(weights.tolist(), outputs, strict=True))
