"""preprocess_dataset on synthetic MSD, nnU-Net and paired-folder datasets, including bad cases."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage
from synthetic import blob_case, oblique_image

from satseg.data import InvalidCasesError, discover_dataset, load_case, load_plan, preprocess_dataset, read_image
from satseg.errors import ConfigError, DataError


def test_msd_outputs(msd_dataset, tmp_path):
    out = tmp_path / "pp"
    report = preprocess_dataset(msd_dataset, out, folds=2, seed=3)
    plan = load_plan(out)
    assert plan["layout"] == "msd" and plan["spatial_dims"] == 3 and plan["num_channels"] == 1
    assert plan["labels"] == {"background": 0, "anterior": 1, "posterior": 2}
    assert plan["modality"] == "mri" and plan["normalization"][0]["scheme"] == "zscore"
    assert plan["spacing"] == [2.0, 1.0, 1.0]  # `auto`: the median spacing, array axis order (z, y, x)
    # median over all 5 cases (z sizes 10, 11, 10, 11, 10)
    assert plan["cases"] == ["case_0", "case_1", "case_2", "case_3"] and plan["test_cases"] == ["case_4"]
    assert plan["median_shape"] == [10.0, 12.0, 14.0] and plan["patch_size"] == [16, 16, 16]
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits) == 2
    assert sorted(splits[0]["val"] + splits[1]["val"]) == plan["cases"]
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == plan["cases"] and not set(fold["train"]) & set(fold["val"])
    image, label, props = load_case(out, "case_0")
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(msd_dataset / "labelsTr" / "case_0.nii.gz")))
    box = tuple(slice(a, b) for a, b in props["crop_box"])
    np.testing.assert_array_equal(label, original[box])  # spacing unchanged: the crop, voxel for voxel
    assert image.dtype == np.float32 and abs(float(image.mean())) < 1e-4  # z-scored per image
    assert props["original"]["shape"] == list(original.shape) and props["nifti_header"]
    test_image, test_label, _ = load_case(out, "case_4")
    assert test_label is None and test_image.ndim == 4
    assert sorted(report.written) == [f"case_{i}" for i in range(5)]
    # a second run reuses the finished cases; other settings are refused unless --overwrite
    again = preprocess_dataset(msd_dataset, out, folds=2, seed=3)
    assert again.written == [] and len(again.reused) == 5
    with pytest.raises(ConfigError, match="other settings"):
        preprocess_dataset(msd_dataset, out, spacing="2 2 2", folds=2)
    redo = preprocess_dataset(msd_dataset, out, spacing=[3, 2, 2], folds=2, overwrite=True)
    assert len(redo.written) == 5 and load_plan(out)["spacing"] == [3.0, 2.0, 2.0]


def test_workers_give_identical_cases(msd_dataset, tmp_path):
    preprocess_dataset(msd_dataset, tmp_path / "one", spacing="1.5,1,0.8", folds=2, workers=1)
    preprocess_dataset(msd_dataset, tmp_path / "two", spacing="1.5,1,0.8", folds=2, workers=2)
    for i in range(5):
        a, b = load_case(tmp_path / "one", f"case_{i}"), load_case(tmp_path / "two", f"case_{i}")
        np.testing.assert_array_equal(a[0], b[0])
        assert (a[1] is None and b[1] is None) or np.array_equal(a[1], b[1])


def test_nnunet_ct_statistics(tmp_path):
    root = tmp_path / "nnunet"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(4)
    foreground = [[], []]
    for i in range(3):
        image, label = blob_case(rng, shape=(8, 10, 12))
        for c in range(2):
            channel = image * (c + 1) - 1000 * c
            channel[label == 0] = np.where(image[label == 0] != 0, channel[label == 0], 0)
            sitk.WriteImage(oblique_image(channel), str(root / "imagesTr" / f"ct{i}_{c:04d}.nii.gz"))
            foreground[c].append(channel[label > 0])
        sitk.WriteImage(oblique_image(label), str(root / "labelsTr" / f"ct{i}.nii.gz"))
    meta = {"channel_names": {"0": "CT", "1": "CT"}, "labels": {"background": 0, "a": 1, "b": 2}}
    meta["file_ending"] = ".nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    preprocess_dataset(root, tmp_path / "pp", folds=3)
    plan = load_plan(tmp_path / "pp")
    assert plan["layout"] == "nnunet" and plan["num_channels"] == 2 and plan["channel_names"] == ["CT", "CT"]
    for c in range(2):
        values = np.concatenate(foreground[c]).astype(np.float64)  # fewer than the sampling cap: all of them
        low, high = np.percentile(values, [0.5, 99.5])
        norm = plan["normalization"][c]
        assert norm["scheme"] == "ct"
        np.testing.assert_allclose(norm["clip"], [low, high], rtol=1e-6)
        np.testing.assert_allclose(norm["mean"], np.clip(values, low, high).mean(), rtol=1e-5)
    image, label, _ = load_case(tmp_path / "pp", "ct0")
    assert image.shape[0] == 2 and label.max() == 2


def make_paired(root, n=3, suffix="_segmentation"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(5)
    pixels = []
    for i in range(n):
        rgb = rng.integers(1, 256, size=(20 + i, 30, 3), dtype=np.uint8)
        mask = np.zeros((20 + i, 30), np.uint8)
        mask[5:15, 8:20] = 255
        PILImage.fromarray(rgb).save(root / "images" / f"IMD{i}.png")
        PILImage.fromarray(mask).save(root / "masks" / f"IMD{i}{suffix}.png")
        pixels.append(rgb.reshape(-1, 3))
    return np.concatenate(pixels).astype(np.float64)


def test_paired_rgb_with_resize(tmp_path):
    pixels = make_paired(tmp_path / "skin")
    preprocess_dataset(tmp_path / "skin", tmp_path / "pp", size=[16, 24], folds=3)
    plan = load_plan(tmp_path / "pp")
    assert plan["layout"] == "paired" and plan["modality"] == "rgb" and plan["channel_names"] == ["R", "G", "B"]
    assert plan["size"] == [16, 24] and plan["spacing"] is None and plan["patch_size"] == [16, 32]
    for c, norm in enumerate(plan["normalization"]):
        np.testing.assert_allclose([norm["mean"], norm["std"]], [pixels[:, c].mean(), pixels[:, c].std()], rtol=1e-9)
    image, label, props = load_case(tmp_path / "pp", "IMD1")
    assert image.shape == (3, 16, 24) and label.shape == (16, 24)
    assert set(np.unique(label)) == {0, 1}  # 0/255 mask -> label indices
    assert props["original"]["shape"] == [21, 30]


def test_paired_errors(tmp_path):
    make_paired(tmp_path / "skin", suffix="_mask")
    (tmp_path / "skin" / "masks" / "IMD2_mask.png").unlink()
    with pytest.raises(InvalidCasesError, match="IMD2.png.*no mask") as info:
        preprocess_dataset(tmp_path / "skin", tmp_path / "pp", folds=2)
    assert [b.case_id for b in info.value.bad] == ["IMD2"]
    assert not (tmp_path / "pp").exists()  # nothing written
    report = preprocess_dataset(tmp_path / "skin", tmp_path / "pp", folds=2, skip_bad=True)
    assert sorted(report.written) == ["IMD0", "IMD1"] and report.bad[0].case_id == "IMD2"


def test_bad_cases_are_listed_and_nothing_is_written(msd_dataset, tmp_path):
    raw = (msd_dataset / "imagesTr" / "case_1.nii.gz").read_bytes()
    (msd_dataset / "imagesTr" / "case_1.nii.gz").write_bytes(raw[: len(raw) // 2])  # truncated
    label = sitk.ReadImage(str(msd_dataset / "labelsTr" / "case_2.nii.gz"))
    label.SetSpacing((1.0, 1.0, 3.0))  # geometry mismatch
    sitk.WriteImage(label, str(msd_dataset / "labelsTr" / "case_2.nii.gz"))
    four_d = sitk.JoinSeries([sitk.ReadImage(str(msd_dataset / "imagesTr" / "case_3.nii.gz"))] * 2)
    sitk.WriteImage(four_d, str(msd_dataset / "imagesTr" / "case_3.nii.gz"))  # 4D where 3D is declared
    with pytest.raises(InvalidCasesError) as info:
        preprocess_dataset(msd_dataset, tmp_path / "pp", folds=2)
    reasons = {b.case_id: (b.file, b.reason) for b in info.value.bad}
    assert set(reasons) == {"case_1", "case_2", "case_3"}
    assert reasons["case_1"][0].endswith("imagesTr/case_1.nii.gz") and "truncated" in reasons["case_1"][1]
    assert reasons["case_2"][0].endswith("labelsTr/case_2.nii.gz") and "spacing" in reasons["case_2"][1]
    assert "declares 1 channel" in reasons["case_3"][1]
    assert not (tmp_path / "pp").exists()
    with pytest.raises(ConfigError, match="only 1 labelled"):  # skipping leaves too few cases for 5 folds
        preprocess_dataset(msd_dataset, tmp_path / "pp", skip_bad=True)


def test_label_values_and_nan_are_checked(msd_dataset, tmp_path):
    label = sitk.ReadImage(str(msd_dataset / "labelsTr" / "case_0.nii.gz"))
    array = sitk.GetArrayFromImage(label)
    array[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(label)
    sitk.WriteImage(bad, str(msd_dataset / "labelsTr" / "case_0.nii.gz"))
    image = read_image(msd_dataset / "imagesTr" / "case_1.nii.gz")
    values = image.array[0].copy()
    values[3, 3, 3] = np.nan
    nan_img = sitk.GetImageFromArray(values)
    nan_img.CopyInformation(sitk.ReadImage(str(msd_dataset / "imagesTr" / "case_1.nii.gz")))
    sitk.WriteImage(nan_img, str(msd_dataset / "imagesTr" / "case_1.nii.gz"))
    with pytest.raises(InvalidCasesError) as info:
        preprocess_dataset(msd_dataset, tmp_path / "pp", folds=2)
    reasons = {b.case_id: b.reason for b in info.value.bad}
    assert "[7] are not declared" in reasons["case_0"] and "NaN" in reasons["case_1"]


def test_dataset_level_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        discover_dataset(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="neither `imagesTr/` nor `images/`"):
        discover_dataset(tmp_path / "other")
    for spacing in ("fast", "1 2 3 4", "0 1 1"):
        with pytest.raises(ConfigError, match="--spacing"):
            preprocess_dataset(tmp_path / "other", tmp_path / "pp", spacing=spacing)
