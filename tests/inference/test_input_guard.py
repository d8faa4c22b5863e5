"""The input guard of `satseg segment`: a scan is compared with the model's training plan before any heavy work."""

import time

import numpy as np
import pytest
import SimpleITK as sitk
from tiny_models import ct_plan, mri_plan, save_model

from satseg import zoo
from satseg.data.io import Image
from satseg.inference.batch import segment_inputs
from satseg.inference.input_guard import check_fit, describe_scan, looks_like_ct

HIPPOCAMPUS_LIKE = mri_plan(spacing=(1.0, 1.0, 1.0), median_shape=(36, 50, 35))


def _volume(array, spacing):
    """A 3D :class:`Image` (array z, y, x; spacing per array axis) at the origin, axis-aligned."""
    return Image(array[None].astype(np.float32), tuple(spacing), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))


def _ct(shape=(120, 100, 110), spacing=(3.0, 3.0, 3.0), seed=0):
    """A CT-like body in air: -1000 HU outside an ellipsoid of soft tissue (about 40 HU)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    body = sum(((g - s / 2) / (0.4 * s)) ** 2 for g, s in zip((zz, yy, xx), shape, strict=True)) < 1
    return np.where(body, rng.normal(40, 20, shape), rng.normal(-1000, 5, shape))


def _mri(shape=(36, 50, 35), seed=0):
    return np.random.default_rng(seed).random(shape) * 400


def test_ct_with_a_large_field_of_view_does_not_fit_a_small_mri_plan():
    image = _volume(_ct(), (3.0, 3.0, 3.0))
    misfits = {m.what: m for m in check_fit(image, HIPPOCAMPUS_LIKE)}
    assert set(misfits) == {"intensities", "field of view", "voxels"}  # 3 mm is not more than 3 x 1 mm
    assert all(m.refuse for m in misfits.values())
    assert "360 x 300 x 330 mm" in misfits["field of view"].detail  # 120 x 3, 100 x 3, 110 x 3
    assert "36 x 50 x 35 mm" in misfits["field of view"].detail
    assert f"{360 * 300 * 330:,} after resampling" in misfits["voxels"].detail  # at the plan's 1 mm
    assert "CT (HU), 360 x 300 x 330 mm at 3 x 3 x 3 mm" in describe_scan(image)


def test_scans_like_the_training_cases_fit():
    assert check_fit(_volume(_mri(), (1.0, 1.0, 1.0)), HIPPOCAMPUS_LIKE) == []
    assert check_fit(_volume(_mri((40, 44, 30)), (1.1, 1.0, 1.2)), HIPPOCAMPUS_LIKE) == []
    assert check_fit(_volume(_ct((32, 32, 32), seed=1), (4.0, 4.0, 4.0)), ct_plan()) == []


def test_each_difference_is_named():
    mri = _volume(_mri((10, 14, 10)), (3.5, 3.5, 3.5))  # the same field of view, coarse: a warning only
    (spacing,) = check_fit(mri, HIPPOCAMPUS_LIKE)
    assert spacing.what == "spacing" and not spacing.refuse and "3.5 x 3.5 x 3.5 mm" in spacing.detail
    (intensities,) = check_fit(_volume(_mri((32, 32, 32)), (4.0, 4.0, 4.0)), ct_plan())  # MRI for a CT model
    assert intensities.what == "intensities" and intensities.refuse and "knows CT" in intensities.detail
    tiny = check_fit(_volume(_mri((5, 5, 5)), (1.0, 1.0, 1.0)), HIPPOCAMPUS_LIKE)
    assert [m.what for m in tiny] == ["field of view"]  # 5 mm against 35-50 mm: far outside, too
    two_channels = Image(np.zeros((2, 8, 8, 8), np.float32), (1.0,) * 3, (0.0,) * 3, tuple(np.eye(3).ravel()))
    (channels,) = check_fit(two_channels, HIPPOCAMPUS_LIKE)
    assert channels.what == "dimensions and channels"


def test_pictures_are_checked_for_8_bit_colour_and_not_for_size():
    plan = {"spatial_dims": 2, "num_channels": 3, "modality": "rgb", "size": [128, 128], "spacing": None,
            "median_shape": [128.0, 128.0], "median_spacing": [1.0, 1.0]}  # fmt: skip
    picture = Image(np.full((3, 900, 1200), 128.0), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    assert check_fit(picture, plan) == []  # every picture is resized to 128 x 128: size does not matter
    (misfit,) = check_fit(Image(np.full((3, 90, 120), 4000.0), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)), plan)
    assert misfit.what == "intensities" and "0..255" in misfit.detail


def test_grey_pictures_are_checked_for_8_bit_grey():
    plan = {"spatial_dims": 2, "num_channels": 1, "modality": "grey", "size": [64, 64], "spacing": None,
            "median_shape": [64.0, 64.0], "median_spacing": [1.0, 1.0]}  # fmt: skip
    grey = Image(np.full((1, 300, 400), 200.0), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), source_format="picture")
    assert check_fit(grey, plan) == []
    assert describe_scan(grey) == "2D grey picture, 300 x 400 mm at 1 x 1 mm"  # 300 x 400 pixels of 1 mm
    (misfit,) = check_fit(Image(np.full((1, 30, 40), -1000.0), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)), plan)
    assert misfit.what == "intensities" and "8-bit grey (0..255)" in misfit.detail and "-1000..-1000" in misfit.detail


def test_ct_detection_needs_air():
    assert looks_like_ct(_volume(_ct((20, 20, 20)), (1.0,) * 3))
    assert not looks_like_ct(_volume(_mri((20, 20, 20)), (1.0,) * 3))
    assert not looks_like_ct(_volume(_mri((20, 20, 20)) - 100, (1.0,) * 3))  # small negatives are not HU air


def _write(array, spacing_zyx, path):
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """Two shipped 3D single-channel models: a small-crop MRI one (first by name) and a large-field CT one."""
    models = tmp_path / "models"
    save_model(models / "a-mri-crops", mri_plan(), seed=0, shipped=True)
    save_model(models / "b-ct-body", ct_plan(), seed=1, shipped=True)
    monkeypatch.setattr(zoo, "MODELS_DIR", models)
    return models


def test_auto_pick_takes_only_a_model_the_scan_fits(shipped, tmp_path):
    ct = _write(_ct((30, 30, 30), (4.0, 4.0, 4.0)), (4.0, 4.0, 4.0), tmp_path / "ct.nii.gz")
    mri = _write(_mri((16, 16, 16)), (2.0, 2.0, 2.0), tmp_path / "mri.nii.gz")
    report = segment_inputs([ct, mri], output=tmp_path / "out", device="cpu")
    assert report.ok, report.failures
    assert report.models == {str(ct): "b-ct-body", str(mri): "a-mri-crops"}


def test_no_fitting_shipped_model_is_refused_within_seconds_unless_forced(tmp_path, monkeypatch):
    models = tmp_path / "models"
    save_model(models / "mri-crops", mri_plan(), seed=0, shipped=True)
    monkeypatch.setattr(zoo, "MODELS_DIR", models)
    ct = _write(_ct((60, 50, 55), (3.0, 3.0, 3.0)), (3.0, 3.0, 3.0), tmp_path / "ct.nii.gz")
    started = time.perf_counter()
    report = segment_inputs([ct], device="cpu")
    assert time.perf_counter() - started < 10
    (failure,) = report.failures
    assert failure["error"].startswith("no shipped model fits this 3D CT (HU), 180 x 150 x 165 mm")
    for what in ("`mri-crops`", "intensities", "field of view", "voxels"):
        assert what in failure["error"]
    # a CT in an MRI model cannot give a meaningful mask: no --force offered, but how to train the right model
    assert "--force" not in failure["hint"] and not (tmp_path / "ct_seg.nii.gz").exists()
    assert "a model trained on scans like it (3D CT (HU)" in failure["hint"] and "satseg train" in failure["hint"]
    # an MRI whose field of view alone differs (a wider crop of the same kind of scan) may be forced
    wide = _write(_mri((36, 150, 105)), (1.0, 1.0, 1.0), tmp_path / "wide_mri.nii.gz")
    (unfit,) = segment_inputs([wide], device="cpu").failures
    assert "field of view" in unfit["error"] and "intensities" not in unfit["error"]
    assert "--force to try `mri-crops`" in unfit["hint"]

    small = _write(_ct((12, 12, 12), (4.0, 4.0, 4.0)), (4.0, 4.0, 4.0), tmp_path / "small_ct.nii.gz")
    forced = segment_inputs([small], device="cpu", force=True)
    (result,) = forced.results
    assert result["model"] == "mri-crops" and any("intensities" in w for w in result["warnings"])
    assert sitk.ReadImage(str(tmp_path / "small_ct_seg.nii.gz")).GetSize() == (12, 12, 12)


def test_a_given_model_refuses_what_it_does_not_fit(tmp_path):
    run = save_model(tmp_path / "run", mri_plan(), seed=0)
    ct = _write(_ct((30, 30, 30), (4.0, 4.0, 4.0)), (4.0, 4.0, 4.0), tmp_path / "ct.nii.gz")
    (failure,) = segment_inputs([ct], model=run, device="cpu").failures
    assert failure["error"].startswith(f"does not fit model `{run}`: intensities")
    assert "3D CT (HU), 120 x 120 x 120 mm" in failure["hint"]
