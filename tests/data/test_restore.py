"""Preprocess -> restore lands on the original grid; checked against SimpleITK running the same chain itself."""

import numpy as np
import pytest
import SimpleITK as sitk
from synthetic import blob_case, oblique_image

from satseg.data import preprocess_image, read_image, restore_labels, restore_probabilities, with_array, write_image
from satseg.data.grid import nonzero_box
from satseg.errors import DataError


def make_plan(spacing=None, size=None, dims=3):
    return {
        "spatial_dims": dims,
        "num_channels": 1,
        "channel_names": ["MRI"],
        "spacing": spacing,
        "size": size,
        "normalization": [{"scheme": "zscore"}],
    }


@pytest.fixture
def scan(tmp_path):
    image, label = blob_case(np.random.default_rng(0), shape=(12, 14, 16), margin=2)
    sitk.WriteImage(oblique_image(image), str(tmp_path / "img.nii.gz"))
    sitk.WriteImage(oblique_image(label), str(tmp_path / "lab.nii.gz"))
    return tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", label


def test_unchanged_spacing_restores_exactly(scan, tmp_path):
    img_path, _, label = scan
    image = read_image(img_path)
    array, props = preprocess_image(image, make_plan(spacing=list(image.spacing)))
    box = nonzero_box(image.array)
    assert array.shape == (1, *(b - a for a, b in box)) == (1, 8, 10, 12)  # cropped to the non-zero region
    crop = tuple(slice(a, b) for a, b in box)
    restored = restore_labels(label[crop], props)
    np.testing.assert_array_equal(restored, label)
    # written with the scan's metadata, the mask has the scan's grid exactly as SimpleITK reads it
    write_image(with_array(image, restored), tmp_path / "pred.nii.gz")
    a, b = sitk.ReadImage(str(img_path)), sitk.ReadImage(str(tmp_path / "pred.nii.gz"))
    assert a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection()


def test_resampled_chain_matches_simpleitk(scan):
    img_path, lab_path, label = scan
    image = read_image(img_path)
    target = (2.0, 1.2, 0.6)  # per array axis (z, y, x); original is (2.5, 0.9, 0.7)
    array, props = preprocess_image(image, make_plan(spacing=list(target)))

    # the same chain, done by SimpleITK alone: crop, resample (edge-aligned grid), resample back, pad
    (z0, z1), (y0, y1), (x0, x1) = nonzero_box(image.array)
    lab = sitk.ReadImage(str(lab_path))
    cropped = lab[x0:x1, y0:y1, z0:z1]
    new_spacing = tuple(reversed(target))
    triples = zip(cropped.GetSize(), cropped.GetSpacing(), new_spacing, strict=True)
    size = [max(1, round(n * s / t)) for n, s, t in triples]
    first = [-0.5 + 0.5 * t / s for s, t in zip(cropped.GetSpacing(), new_spacing, strict=True)]
    reference = sitk.Image(size, sitk.sitkUInt8)
    reference.SetSpacing(new_spacing)
    reference.SetDirection(cropped.GetDirection())
    reference.SetOrigin(cropped.TransformContinuousIndexToPhysicalPoint(first))
    nearest = (sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8, True)  # nearest-voxel extrapolation
    down = sitk.Resample(cropped, reference, *nearest)
    back = sitk.Resample(down, cropped, *nearest)
    upper = [a - b for a, b in zip(lab.GetSize(), (x1, y1, z1), strict=True)]
    full = sitk.ConstantPad(back, (x0, y0, z0), upper, 0)

    assert array.shape[1:] == sitk.GetArrayFromImage(down).shape
    assert props["grid"]["shape"] == list(array.shape[1:])
    restored = restore_labels(sitk.GetArrayFromImage(down), props)
    np.testing.assert_array_equal(restored, sitk.GetArrayFromImage(full))
    assert restored.shape == label.shape
    for value in (1, 2):  # and the round trip stays close to the original mask
        a, b = restored == value, label == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8


def test_preprocessed_image_is_normalised_bspline_resampling(scan):
    img_path, _, _ = scan
    image = read_image(img_path)
    array, _ = preprocess_image(image, make_plan(spacing=[2.0, 1.2, 0.6]))
    (z0, z1), (y0, y1), (x0, x1) = nonzero_box(image.array)
    cropped = sitk.Cast(sitk.ReadImage(str(img_path))[x0:x1, y0:y1, z0:z1], sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(cropped)
    normalised = sitk.GetImageFromArray((values - values.mean()) / values.std())
    normalised.CopyInformation(cropped)
    expected = sitk.Resample(normalised, sitk.Image(cropped), sitk.Transform(), sitk.sitkBSpline, 0.0)
    same_grid, _ = preprocess_image(image, make_plan(spacing=list(image.spacing)))
    np.testing.assert_allclose(same_grid[0], sitk.GetArrayFromImage(expected), atol=1e-4)
    assert array.dtype == np.float32 and np.isfinite(array).all()


def test_restore_probabilities_and_shape_check(scan):
    img_path, _, _ = scan
    image = read_image(img_path)
    array, props = preprocess_image(image, make_plan(spacing=[2.0, 1.2, 0.6]))
    probs = np.random.default_rng(1).random((3, *array.shape[1:])).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    back = restore_probabilities(probs, props)
    assert back.shape == (3, *image.spatial_shape)
    np.testing.assert_allclose(back.sum(0), 1.0, atol=1e-5)  # linear interpolation keeps the sum
    assert back[0, 0, 0, 0] == 1.0 and back[1:, 0, 0, 0].sum() == 0.0  # outside the crop: background
    with pytest.raises(DataError, match="not on the preprocessed grid"):
        restore_labels(np.zeros((2, 2, 2), np.uint8), props)
    with pytest.raises(DataError, match="plan expects"):
        preprocess_image(with_array(image, np.zeros((2, *image.spatial_shape))), make_plan())


def test_2d_resize_maps_back_to_original_size():
    from satseg.data import Image

    label = np.zeros((30, 50), np.uint8)
    label[5:20, 10:40] = 1
    rgb = np.stack([label * 200 + 20] * 3).astype(np.uint8)
    image = Image(rgb, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    plan = make_plan(size=[16, 16], dims=2) | {"num_channels": 3, "channel_names": list("RGB")}
    plan["normalization"] = [{"scheme": "rgb", "mean": 0.0, "std": 1.0}] * 3
    array, props = preprocess_image(image, plan)
    assert array.shape == (3, 16, 16)
    np.testing.assert_allclose(props["grid"]["spacing"], (30 / 16, 50 / 16))  # plain resize: per-axis scale
    restored = restore_labels((array[0] > 110).astype(np.uint8), props)
    assert restored.shape == (30, 50)
    assert (restored != label).mean() < 0.1
    np.testing.assert_array_equal(restore_labels(np.ones((16, 16), np.uint8), props), 1)  # covers every pixel


def _physical_zyx(image: sitk.Image) -> np.ndarray:
    """``(3, *shape)`` physical coordinates (z, y, x) of every voxel centre of an axis-aligned image."""
    assert np.allclose(image.GetDirection(), np.eye(3).ravel())
    grid = zip(image.GetOrigin(), image.GetSpacing(), image.GetSize(), strict=True)
    x, y, z = (o + s * np.arange(n) for o, s, n in grid)
    return np.stack(np.meshgrid(z, y, x, indexing="ij"))


def test_probabilities_return_to_the_scan_before_the_argmax():
    """A sphere predicted on a coarse isotropic grid, returned to a fine anisotropic scan.

    The 'model' knows the sphere exactly: its probability is a logistic of the signed distance to the surface,
    evaluated at the coarse voxel centres. On the scan, argmax of linearly resampled probabilities must be
    closer to the true sphere than nearest-neighbour resampled labels, and equal SimpleITK's own linear
    resampling of each class followed by argmax.
    """
    from satseg.data import restore_argmax
    from satseg.data.io import from_sitk

    scan = sitk.GetImageFromArray(np.ones((24, 64, 64), np.float32))  # (z, y, x); non-zero everywhere: no crop
    scan.SetSpacing((0.7, 0.7, 2.0))
    scan.SetOrigin((-22.0, -22.0, -23.0))
    array, props = preprocess_image(from_sitk(scan), make_plan(spacing=[3.0, 3.0, 3.0]))
    radius = 14.0

    coarse = sitk.GetImageFromArray(np.zeros(array.shape[1:], np.float32))
    coarse.SetSpacing((3.0, 3.0, 3.0))
    coarse.SetOrigin(props["grid"]["origin"])
    assert tuple(props["grid"]["spacing"]) == (3.0, 3.0, 3.0)
    distance = np.linalg.norm(_physical_zyx(coarse), axis=0) - radius
    inside = 1.0 / (1.0 + np.exp(distance / 1.5))
    probs = np.stack([1.0 - inside, inside]).astype(np.float32)

    truth = np.linalg.norm(_physical_zyx(scan), axis=0) < radius
    by_probabilities = restore_argmax(probs, props)
    by_labels = restore_labels(probs.argmax(0).astype(np.uint8), props)

    def dice(mask):
        return 2 * (mask & truth).sum() / (mask.sum() + truth.sum())

    assert by_probabilities.shape == truth.shape
    assert dice(by_probabilities == 1) > 0.97
    assert dice(by_probabilities == 1) > dice(by_labels == 1) + 0.01
    assert (by_probabilities.astype(bool) != truth).sum() < 0.7 * (by_labels.astype(bool) != truth).sum()

    resampled = []
    for p in probs:
        image = sitk.GetImageFromArray(p)
        image.CopyInformation(coarse)
        resampled.append(sitk.GetArrayFromImage(sitk.Resample(image, scan, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                              sitk.sitkFloat32, True)))  # fmt: skip
    np.testing.assert_array_equal(by_probabilities, np.argmax(np.stack(resampled), axis=0))
