"""Metrics against hand-computed cases, analytic distances, brute force and SimpleITK's own filters."""

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.distance import cdist

from satseg.errors import ConfigError, DataError
from satseg.evaluation.metrics import (
    absent_class_metrics,
    case_metrics,
    class_metrics,
    confusion_counts,
    distance_metrics,
    overlap_metrics,
    surface_areas,
    surface_distances,
    surface_mask,
)


def _blob(shape, seed, pad=2, sigma=2.0):
    """A smooth random blob, padded with background (SimpleITK's filters treat the border as foreground)."""
    rng = np.random.default_rng(seed)
    blob = ndimage.gaussian_filter(rng.random(shape), sigma) > 0.5
    return np.pad(blob, pad)


def _sitk(mask, spacing):
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))  # SimpleITK spacing is (x, y, z)
    return image


def test_overlap_on_hand_counted_arrays():
    pred = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
    ref = np.array([[0, 1, 1, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool)
    # TP: (0,1) (0,2) (1,1) = 3; FP: (0,0) (1,0) (1,2) = 3; FN: (2,1) (2,2) = 2; TN: 20 - 8 = 12
    counts = confusion_counts(pred, ref)
    assert counts == {"tp": 3, "fp": 3, "fn": 2, "tn": 12}
    values = overlap_metrics(counts)
    assert values["dice"] == pytest.approx(6 / 11)
    assert values["iou"] == pytest.approx(3 / 8)
    assert values["fpr"] == pytest.approx(3 / 15)
    assert values["fnr"] == pytest.approx(2 / 5)
    assert values["precision"] == pytest.approx(3 / 6)
    assert values["recall"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("shape", [(30, 34), (14, 16, 18)])
def test_overlap_matches_simpleitk_label_overlap_measures(shape):
    pred, ref = _blob(shape, 1), _blob(shape, 2)
    spacing = (2.0, 0.7, 0.9)[-len(shape) :]
    ours = overlap_metrics(confusion_counts(pred, ref))
    measures = sitk.LabelOverlapMeasuresImageFilter()
    measures.Execute(_sitk(pred, spacing), _sitk(ref, spacing))  # (source = prediction, target = reference)
    assert 0.2 < ours["dice"] < 0.9  # a real partial overlap, not a degenerate case
    assert ours["dice"] == pytest.approx(measures.GetDiceCoefficient(), rel=1e-12)
    assert ours["iou"] == pytest.approx(measures.GetJaccardCoefficient(), rel=1e-12)
    # ITK >= 5: FalsePositiveError = FP / (FP + TN) and FalseNegativeError = FN / (FN + TP), the paper's FPR/FNR
    assert ours["fpr"] == pytest.approx(measures.GetFalsePositiveError(), rel=1e-12)
    assert ours["fnr"] == pytest.approx(measures.GetFalseNegativeError(), rel=1e-12)
    assert 1 - ours["precision"] == pytest.approx(measures.GetFalseDiscoveryRate(), rel=1e-12)


@pytest.mark.parametrize("shape", [(30, 34), (12, 14, 16)])
def test_surface_is_simpleitk_face_connected_contour(shape):
    mask = _blob(shape, 3)
    contour = sitk.BinaryContour(_sitk(mask, (1.0,) * len(shape)), fullyConnected=False)
    expected = sitk.GetArrayFromImage(contour).astype(bool)
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(surface_mask(mask), expected)


@pytest.mark.parametrize(
    ("shape", "spacing"), [((28, 32), (0.6, 1.7)), ((12, 14, 16), (2.5, 0.7, 1.1)), ((10, 12, 12), (1.0, 1.0, 1.0))]
)
def test_hausdorff_matches_simpleitk_on_the_surfaces(shape, spacing):
    pred, ref = _blob(shape, 4), _blob(shape, 5)
    ours = distance_metrics(pred, ref, spacing)
    to_ref, to_pred = surface_distances(pred, ref, spacing)
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(_sitk(surface_mask(pred), spacing), _sitk(surface_mask(ref), spacing))
    assert ours["hd"] > 0
    assert ours["hd"] == pytest.approx(hausdorff.GetHausdorffDistance(), rel=1e-9)
    # SimpleITK's "average Hausdorff distance" is the mean of the two directed means
    assert (to_ref.mean() + to_pred.mean()) / 2 == pytest.approx(hausdorff.GetAverageHausdorffDistance(), rel=1e-9)
    assert ours["hd95"] <= ours["hd"]


def test_distances_on_a_hand_computed_case():
    # One pixel vs a 3-pixel row through it; spacing (y, x) = (0.5, 2.0) mm.
    pred = np.zeros((5, 7), bool)
    pred[2, 2] = True
    ref = np.zeros((5, 7), bool)
    ref[2, 2:5] = True
    # pred -> ref: [0]; ref -> pred: [0, 2, 4] mm
    values = distance_metrics(pred, ref, (0.5, 2.0), tolerance_mm=2.0)
    assert values["hd"] == pytest.approx(4.0)
    assert values["hd95"] == pytest.approx(3.8)  # 95th percentile of [0, 2, 4], linear: 2 + 0.9 * 2
    assert values["assd"] == pytest.approx((0 + 0 + 2 + 4) / 4)


@pytest.mark.parametrize("offset", [1, 3])
def test_parallel_planes_are_offset_times_spacing_apart(offset):
    spacing = (2.5, 0.8, 0.6)
    pred, ref = np.zeros((8, 6, 7), bool), np.zeros((8, 6, 7), bool)
    pred[2], ref[2 + offset] = True, True
    values = distance_metrics(pred, ref, spacing, tolerance_mm=offset * 2.5)
    for name in ("hd95", "hd", "assd"):
        assert values[name] == pytest.approx(offset * 2.5)
    assert values["nsd"] == pytest.approx(1.0)
    # the slabs' near faces are (offset - 1) slices apart, their far faces offset + 1: only the near ones count
    assert 0.0 < distance_metrics(pred, ref, spacing, tolerance_mm=offset * 2.5 - 0.1)["nsd"] < 1.0


def test_parallel_lines_in_2d_use_the_x_spacing():
    pred, ref = np.zeros((6, 9), bool), np.zeros((6, 9), bool)
    pred[:, 1], ref[:, 5] = True, True
    values = distance_metrics(pred, ref, (3.0, 0.25))
    assert values["hd95"] == pytest.approx(1.0) and values["assd"] == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(16, 18), (8, 9, 10)])
def test_cropped_distances_equal_brute_force_on_the_full_array(shape):
    # Unpadded blobs touch the array border, where the surface includes the edge voxels.
    pred, ref = _blob(shape, 6, pad=0, sigma=1.5), _blob(shape, 7, pad=0, sigma=1.5)
    spacing = (1.3, 0.4, 0.9)[-len(shape) :]
    points_pred = np.argwhere(surface_mask(pred)) * spacing
    points_ref = np.argwhere(surface_mask(ref)) * spacing
    pairwise = cdist(points_pred, points_ref)
    to_ref, to_pred = pairwise.min(axis=1), pairwise.min(axis=0)
    pooled = np.concatenate([to_ref, to_pred])
    values = distance_metrics(pred, ref, spacing, tolerance_mm=1.0)
    assert values["hd95"] == pytest.approx(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))
    assert values["hd"] == pytest.approx(pooled.max())
    assert values["assd"] == pytest.approx(pooled.mean())


def test_surface_areas_are_voxel_face_areas():
    """A 2 x 4 rectangle and the same one with a 5th column, y spacing 1 mm and x spacing 4 mm: perimeters
    2 * (16 + 2) = 36 mm and 2 * (20 + 2) = 44 mm."""
    ref = np.zeros((8, 10), bool)
    ref[2:4, 2:6] = True
    pred = ref.copy()
    pred[2:4, 6] = True
    spacing = (1.0, 4.0)
    assert surface_areas(pred, spacing).sum() == pytest.approx(44.0)
    assert surface_areas(ref, spacing).sum() == pytest.approx(36.0)


def test_small_structure_in_a_large_volume_gives_the_same_values_as_alone():
    pred, ref = _blob((6, 7, 8), 8, pad=1, sigma=1.0), _blob((6, 7, 8), 9, pad=1, sigma=1.0)
    big_pred, big_ref = np.zeros((40, 50, 60), bool), np.zeros((40, 50, 60), bool)
    big_pred[20:28, 30:39, 5:15], big_ref[20:28, 30:39, 5:15] = pred, ref
    spacing = (3.0, 0.5, 0.5)
    big, alone = class_metrics(big_pred, big_ref, spacing), class_metrics(pred, ref, spacing)
    assert big["tn"] == alone["tn"] + 40 * 50 * 60 - pred.size
    assert big["fpr"] == pytest.approx(big["fp"] / (big["fp"] + big["tn"]))
    for name in ("tn", "fpr"):  # the only values that depend on the background around the structure
        big.pop(name), alone.pop(name)
    assert big == pytest.approx(alone)


def test_both_empty_is_a_perfect_absence():
    empty = np.zeros((4, 5), bool)
    values = class_metrics(empty, empty, (1.0, 1.0))
    expected = {"dice": 1, "iou": 1, "fpr": 0, "fnr": 0, "precision": 1, "recall": 1, "hd95": 0, "hd": 0}
    assert values == pytest.approx({**expected, "assd": 0, "nsd": 1, "tp": 0, "fp": 0, "fn": 0, "tn": 20})
    assert absent_class_metrics(20) == values


def test_empty_prediction_conventions():
    pred, ref = np.zeros((4, 5), bool), np.zeros((4, 5), bool)
    ref[1, 1:3] = True
    values = class_metrics(pred, ref, (1.0, 1.0))
    assert (values["dice"], values["iou"], values["nsd"], values["recall"], values["fnr"]) == (0, 0, 0, 0, 1)
    assert values["fpr"] == 0
    for name in ("precision", "hd95", "hd", "assd"):
        assert math.isnan(values[name]), name


def test_empty_reference_conventions():
    pred, ref = np.zeros((4, 5), bool), np.zeros((4, 5), bool)
    pred[0, :] = True
    values = class_metrics(pred, ref, (1.0, 1.0))
    assert (values["dice"], values["iou"], values["nsd"], values["precision"]) == (0, 0, 0, 0)
    assert values["fpr"] == pytest.approx(5 / 20)
    for name in ("recall", "fnr", "hd95", "hd", "assd"):
        assert math.isnan(values[name]), name


def test_case_metrics_scores_each_named_class_and_skips_background():
    ref = np.zeros((6, 6), np.uint8)
    ref[1:3, 1:3], ref[4:6, 4:6] = 1, 2
    pred = ref.copy()
    pred[1, 1] = 0
    pred[0, 5] = 2
    scores = case_metrics(pred, ref, {"background": 0, "liver": 1, "tumour": 2}, (1.0, 2.0))
    assert list(scores) == ["liver", "tumour"]
    assert scores["liver"]["dice"] == pytest.approx(2 * 3 / (3 + 4))
    assert scores["tumour"]["dice"] == pytest.approx(2 * 4 / (5 + 4))
    assert scores["tumour"] == class_metrics(pred == 2, ref == 2, (1.0, 2.0))


def test_bad_inputs_raise_satseg_errors():
    a = np.zeros((4, 5), np.uint8)
    with pytest.raises(DataError, match="shape"):
        case_metrics(a, np.zeros((5, 4), np.uint8), {"x": 1}, (1.0, 1.0))
    with pytest.raises(ConfigError, match="spacing"):
        case_metrics(a, a, {"x": 1}, (1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="spacing"):
        distance_metrics(a == 0, a == 0, (1.0, -1.0))
    with pytest.raises(ConfigError, match="tolerance"):
        distance_metrics(a == 0, a == 0, (1.0, 1.0), tolerance_mm=-1)
    with pytest.raises(DataError, match="empty"):
        surface_distances(a == 1, a == 0, (1.0, 1.0))


def _random_shape(shape, seed):
    rng = np.random.default_rng(seed)
    from scipy import ndimage as ndi

    field = ndi.gaussian_filter(rng.normal(size=shape), 1.5)
    return field > np.percentile(field, 70)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "shape, spacing",
    [((14, 16, 12), (3.0, 0.7, 0.9)), ((10, 12, 14), (0.5, 2.5, 1.0)), ((30, 28), (0.6, 2.2)), ((24, 26), (1.0, 1.0))],
)
def test_surface_dice_agrees_with_the_reference_implementation(shape, spacing, seed):
    """MONAI's compute_surface_dice(use_subvoxels=True) reproduces Nikolov et al.'s surface-distance: the oracle."""
    import torch
    from monai import metrics as monai_metrics  # the reference, from the test extra

    pred, ref = _random_shape(shape, seed), _random_shape(shape, seed + 100)
    for tolerance in (0.5, 1.0, 2.0):
        ours = distance_metrics(pred, ref, spacing, tolerance_mm=tolerance)["nsd"]
        as_onehot = [torch.from_numpy(np.stack([~m, m])[None].astype(np.float32)) for m in (pred, ref)]
        theirs = monai_metrics.compute_surface_dice(
            *as_onehot, [tolerance], spacing=list(spacing), use_subvoxels=True
        ).item()
        assert ours == pytest.approx(theirs, abs=1e-3), (tolerance, ours, theirs)


def test_surface_dice_elements_on_a_hand_computed_rectangle():
    """A 2 x 4 rectangle at spacing (1, 4) mm: marching squares cut each corner cell diagonally (half the cell's
    diagonal, 0.5 * hypot(1, 4)), run 3 cells of 4 mm along each long side and 1 cell of 1 mm along each short one."""
    from satseg.evaluation.metrics import _neighbourhood_codes
    from satseg.evaluation.surface_table import code_to_measure

    ref = np.zeros((8, 10), bool)
    ref[2:4, 2:6] = True
    codes = _neighbourhood_codes(ref.astype(np.int64))
    length = code_to_measure((1.0, 4.0))[codes].sum()
    assert length == pytest.approx(2 * 3 * 4 + 2 * 1 + 4 * 0.5 * np.hypot(1, 4))
    assert distance_metrics(ref, ref, (1.0, 4.0))["nsd"] == 1.0
    far = np.zeros((8, 10), bool)
    far[6:8, 0:2] = True
    assert distance_metrics(ref, far, (1.0, 4.0), tolerance_mm=1.0)["nsd"] == 0.0
