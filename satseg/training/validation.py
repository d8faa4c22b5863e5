"""Validation during training: full-image sliding-window inference and per-class Dice."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from satseg.evaluation.metrics import dice
from satseg.inference.sliding_window import sliding_window_inference
from satseg.nn import SegmentationNet

__all__ = ["validate", "dice_per_class"]


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: dict[str, int]) -> dict[str, float]:
    """Dice of each foreground label, by :func:`satseg.evaluation.metrics.dice` (both empty: 1, as in evaluation)."""
    return {name: dice(pred == value, ref == value) for name, value in labels.items() if value != 0}


@torch.inference_mode()
def validate(
    model: SegmentationNet,
    cases: Sequence[tuple[str, np.ndarray, np.ndarray]],
    labels: dict[str, int],
    patch: Sequence[int],
    device: torch.device,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.bfloat16,
) -> dict[str, float]:
    """Mean Dice per foreground label over ``cases`` (``(id, image (C,*S), label (*S))``), NaNs ignored."""
    was_training = model.training
    model.eval()
    per_case = []
    for _, image, label in cases:
        result = sliding_window_inference(
            model, torch.from_numpy(image), patch, len(labels), overlap=0.5, device=device, amp=amp,
            amp_dtype=amp_dtype,
        )  # fmt: skip
        per_case.append(dice_per_class(result.labels.numpy(), label, labels))
    model.train(was_training)
    return {
        name: float(np.nanmean([c[name] for c in per_case])) if per_case else float("nan")
        for name in (n for n, v in labels.items() if v != 0)
    }
