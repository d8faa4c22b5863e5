"""Validation during training: full-image sliding-window inference and per-class Dice."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from satseg.evaluation.metrics import dice
from satseg.inference.sliding_window import sliding_window_inference
from satseg.nn import SegmentationNet

__all__ = ["validate", "validate_cases", "mean_per_class", "dice_per_class"]


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: dict[str, int]) -> dict[str, float]:
    """Dice of each foreground label, by :func:`satseg.evaluation.metrics.dice` (both empty: 1, as in evaluation)."""
    return {name: dice(pred == value, ref == value) for name, value in labels.items() if value != 0}


@torch.inference_mode()
def validate_cases(
    model: SegmentationNet,
    cases: Sequence[tuple[str, np.ndarray, np.ndarray]],
    labels: dict[str, int],
    patch: Sequence[int],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> list[dict[str, float]]:
    """Dice per foreground label of each of ``cases`` (``(id, image (C,*S), label (*S))``), in their order.

    ``amp_dtype``: the run's autocast dtype on ``device`` (:func:`satseg.device.autocast_dtype`; None: float32).
    """
    was_training = model.training
    model.eval()
    per_case = []
    for _, image, label in cases:
        result = sliding_window_inference(
            model, torch.from_numpy(image), patch, len(labels), overlap=0.5, device=device, amp_dtype=amp_dtype
        )
        per_case.append(dice_per_class(result.labels.numpy(), label, labels))
    model.train(was_training)
    return per_case


def mean_per_class(per_case: Sequence[dict[str, float]], labels: dict[str, int]) -> dict[str, float]:
    """Mean Dice per foreground label over cases, NaNs ignored (NaN where no case has one)."""
    names = [n for n, v in labels.items() if v != 0]
    means = {}
    for name in names:
        values = [c[name] for c in per_case if not np.isnan(c[name])]
        means[name] = float(np.mean(values)) if values else float("nan")
    return means


def validate(
    model: SegmentationNet,
    cases: Sequence[tuple[str, np.ndarray, np.ndarray]],
    labels: dict[str, int],
    patch: Sequence[int],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean Dice per foreground label over ``cases``: :func:`validate_cases` then :func:`mean_per_class`."""
    return mean_per_class(validate_cases(model, cases, labels, patch, device, amp_dtype), labels)
