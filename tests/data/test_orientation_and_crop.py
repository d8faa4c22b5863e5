"""Reorientation to a common axis order, foreground crop for CT, and MRI z-score over the foreground mask."""

import numpy as np
import pytest
import SimpleITK as sitk
from synthetic import blob_case

from satseg.data import Image, preprocess_image, restore_labels, restore_probabilities
from satseg.data.grid import Grid, axis_order, transpose_grid
from satseg.data.plan import PREPROCESSING

# a sagittal store: array axes run along physical (x, y, z), i.e. SimpleITK index axes along (z, y, x)
SAGITTAL = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)


def make_plan(spacing=None, scheme="zscore", legacy=False):
    plan = {
        "spatial_dims": 3,
        "num_channels": 1,
        "channel_names": ["X"],
        "spacing": spacing,
        "size": None,
        "normalization": [{"scheme": scheme, "clip": [-200.0, 300.0], "mean": 50.0, "std": 80.0}],
    }
    return plan if legacy else plan | {"preprocessing": dict(PREPROCESSING)}


@pytest.fixture
def axial_and_sagittal():
    """The same physical volume stored axial (identity direction) and sagittal (array axes reversed)."""
    image, label = blob_case(np.random.default_rng(0), shape=(12, 14, 16), margin=2)
    spacing, origin = (2.5, 0.9, 0.7), (10.0, -3.0, 5.0)
    axial = Image(image[None], spacing, origin, tuple(np.eye(3).ravel()))
    sagittal = Image(image.transpose(2, 1, 0)[None].copy(), spacing[::-1], origin, SAGITTAL)
    return axial, sagittal, label


def test_sagittal_store_describes_the_same_voxels(axial_and_sagittal):
    """The fixture itself, checked by SimpleITK: voxel (z, y, x) of the axial store is at the same point in both."""
    axial, sagittal, _ = axial_and_sagittal
    a = sitk.GetImageFromArray(axial.array[0])
    s = sitk.GetImageFromArray(sagittal.array[0])
    for img, src in ((a, axial), (s, sagittal)):
        img.SetSpacing(src.spacing[::-1])
        img.SetOrigin(src.origin)
        img.SetDirection(src.direction)
    point = a.TransformIndexToPhysicalPoint((3, 5, 7))  # x, y, z index of the axial store
    assert s.TransformPhysicalPointToIndex(point) == (7, 5, 3)
    assert a[3, 5, 7] == s[7, 5, 3]


def test_axis_order_by_direction_cosines(axial_and_sagittal):
    axial, sagittal, _ = axial_and_sagittal
    assert axis_order(Grid.of(axial)) == (0, 1, 2)
    assert axis_order(Grid.of(sagittal)) == (2, 1, 0)
    oriented = transpose_grid(Grid.of(sagittal), (2, 1, 0))
    assert oriented == Grid.of(axial)  # the transposed sagittal grid is the axial grid, exactly
    # a slightly oblique sagittal store still maps to its closest axes
    tilt = sitk.VersorTransform((0.0, 1.0, 0.0), 0.2).GetMatrix()
    oblique = np.asarray(tilt).reshape(3, 3) @ np.asarray(SAGITTAL).reshape(3, 3)
    assert axis_order(Grid((4, 5, 6), (1.0, 1.0, 1.0), (0.0,) * 3, tuple(oblique.ravel()))) == (2, 1, 0)


@pytest.mark.parametrize("spacing", [None, [2.0, 1.0, 0.8]])
def test_sagittal_and_axial_stores_give_the_same_model_input(axial_and_sagittal, spacing):
    axial, sagittal, label = axial_and_sagittal
    plan = make_plan(spacing)
    a, props_a = preprocess_image(axial, plan)
    s, props_s = preprocess_image(sagittal, plan)
    assert props_s["axis_order"] == [2, 1, 0] and props_a["axis_order"] == [0, 1, 2]
    np.testing.assert_allclose(s, a, atol=1e-5)
    # a prediction goes back to each store's own axis order: the sagittal mask is the axial one, transposed
    prediction = (a[0] > 0.5).astype(np.uint8)
    back_a, back_s = restore_labels(prediction, props_a), restore_labels(prediction, props_s)
    assert back_s.shape == sagittal.spatial_shape
    np.testing.assert_array_equal(back_s, back_a.transpose(2, 1, 0))
    probs = np.stack([1 - a[0], a[0]]).clip(0, 1)
    np.testing.assert_allclose(
        restore_probabilities(probs, props_s), restore_probabilities(probs, props_a).transpose(0, 3, 2, 1), atol=1e-5
    )


def test_sagittal_round_trip_is_exact_at_unchanged_spacing(axial_and_sagittal):
    _, sagittal, label = axial_and_sagittal
    array, props = preprocess_image(sagittal, make_plan())
    box = tuple(slice(a, b) for a, b in props["crop_box"])  # in the common (axial) order
    restored = restore_labels(label[box], props)
    np.testing.assert_array_equal(restored, label.transpose(2, 1, 0))


def test_legacy_plans_keep_their_preprocessing(axial_and_sagittal):
    _, sagittal, _ = axial_and_sagittal
    array, props = preprocess_image(sagittal, make_plan(legacy=True))
    assert props["axis_order"] == [0, 1, 2] and array.shape[1:] == (12, 10, 8)


def test_ct_is_cropped_to_the_body():
    """Air at −1024 HU fills the volume around a body block: the crop is the body's box (non-zero crop: all)."""
    rng = np.random.default_rng(0)
    ct = np.full((20, 24, 28), -1024.0, np.float32) + rng.normal(0, 5, (20, 24, 28)).astype(np.float32)
    ct[4:15, 6:19, 3:21] = rng.normal(40, 30, (11, 13, 18))
    image = Image(ct[None], (3.0, 1.0, 1.0), (0.0,) * 3, tuple(np.eye(3).ravel()))
    array, props = preprocess_image(image, make_plan(scheme="ct"))
    assert props["crop_box"] == [[4, 15], [6, 19], [3, 21]]
    np.testing.assert_allclose(array[0], (np.clip(ct[4:15, 6:19, 3:21], -200, 300) - 50) / 80, atol=1e-4)
    _, legacy = preprocess_image(image, make_plan(scheme="ct", legacy=True))
    assert legacy["crop_box"] == [[0, 20], [0, 24], [0, 28]]


def test_mri_zscore_uses_the_foreground_mask():
    """Two blobs in opposite corners: the crop box holds background too; only foreground voxels set the z-score."""
    rng = np.random.default_rng(1)
    mri = np.zeros((16, 16, 16), np.float32)
    mri[1:6, 1:6, 1:6] = rng.normal(300, 40, (5, 5, 5))
    mri[10:15, 10:15, 10:15] = rng.normal(500, 40, (5, 5, 5))
    image = Image(mri[None], (1.0, 1.0, 1.0), (0.0,) * 3, tuple(np.eye(3).ravel()))
    array, props = preprocess_image(image, make_plan())
    assert props["crop_box"] == [[1, 15]] * 3
    crop = mri[1:15, 1:15, 1:15]
    fg = crop != 0
    values = crop[fg]
    np.testing.assert_allclose(array[0][fg], (values - values.mean()) / values.std(), rtol=1e-4, atol=1e-4)
    assert np.all(array[0][~fg] == 0)
    assert abs(float(array[0][fg].mean())) < 1e-4 and abs(float(array[0][fg].std()) - 1) < 1e-4
