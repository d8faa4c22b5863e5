"""Validation during training and evaluation score Dice with one convention (satseg.evaluation.metrics)."""

import numpy as np
import pytest

from satseg.evaluation.metrics import case_metrics, dice
from satseg.training.validation import dice_per_class

LABELS = {"background": 0, "a": 1, "b": 2}


def _evaluation_dice(pred, ref):
    scores = case_metrics(pred, ref, labels={"a": 1, "b": 2}, spacing=(1.0, 1.0))
    return {name: metrics["dice"] for name, metrics in scores.items()}


@pytest.mark.parametrize(
    ("pred_b", "ref_b", "expected"),
    [
        (False, False, 1.0),  # class b in neither mask: a perfect "nothing there"
        (True, False, 0.0),  # predicted but absent from the reference
        (False, True, 0.0),  # present but missed
    ],
)
def test_validation_and_metrics_agree_on_empty_masks(pred_b, ref_b, expected):
    pred, ref = np.zeros((6, 6), np.uint8), np.zeros((6, 6), np.uint8)
    pred[1:3, 1:3] = ref[1:4, 1:3] = 1  # class a: 4 predicted, 6 reference, 4 overlapping -> 2*4/10
    if pred_b:
        pred[4:6, 4:6] = 2
    if ref_b:
        ref[4:6, 4:6] = 2
    validation = dice_per_class(pred, ref, LABELS)
    assert validation == {"a": pytest.approx(0.8), "b": expected}
    assert dice(pred == 2, ref == 2) == expected
    assert _evaluation_dice(pred, ref) == pytest.approx(validation)
