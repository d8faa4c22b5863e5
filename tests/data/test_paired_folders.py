"""Paired 2D picture sets as public datasets ship them: singular folders, DRIVE-style names, grey pictures."""

import json
import re

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from satseg.cli import app
from satseg.data import discover_dataset, load_case, load_plan, preprocess_dataset
from satseg.errors import DataError

runner = CliRunner()


def _picture_set(root, image_dir, mask_dir, names, grey=False, mask_ext=".png"):
    """Pictures named ``names[i][0]`` in ``image_dir`` and 0/255 masks ``names[i][1]`` in ``mask_dir``."""
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    pixels = []
    for i, (image_name, mask_name) in enumerate(names):
        shape = (18 + i, 22) if grey else (18 + i, 22, 3)
        picture = rng.integers(1, 256, size=shape, dtype=np.uint8)
        mask = np.zeros((18 + i, 22), np.uint8)
        mask[4 + i : 12, 5:15] = 255
        PILImage.fromarray(picture).save(root / image_dir / image_name)
        PILImage.fromarray(mask).save(root / mask_dir / mask_name)
        pixels.append(picture.reshape(-1, 1 if grey else 3))
    return np.concatenate(pixels).astype(np.float64)


def test_singular_folder_names_pair_by_name(tmp_path):
    names = [(f"{i}.png", f"{i}.png") for i in range(3)]  # ISBI-2012 EM: image/ + label/
    _picture_set(tmp_path / "em", "image", "label", names, grey=True)
    dataset = discover_dataset(tmp_path / "em")
    assert dataset.layout == "paired" and [c.case_id for c in dataset.cases] == ["0", "1", "2"]
    assert all(c.label is not None and c.label.name == c.images[0].name for c in dataset.cases)
    assert dataset.pairing["by"] == "file name" and dataset.pairing["pairs"] == 3


def test_drive_names_pair_by_leading_case_id_and_gif_masks_are_read(tmp_path):
    names = [(f"{i}_training.tif", f"{i}_manual1.gif") for i in (21, 22, 23, 24)]
    _picture_set(tmp_path / "drive", "images", "1st_manual", names)
    dataset = discover_dataset(tmp_path / "drive")
    pairs = {c.images[0].name: c.label.name for c in dataset.cases}
    assert pairs == dict(names)
    assert dataset.pairing["by"] == "leading case id" and dataset.pairing["example"] == list(names[0])
    preprocess_dataset(tmp_path / "drive", tmp_path / "pp", folds=2)
    _, label, _ = load_case(tmp_path / "pp", "21_training")
    expected = np.zeros((18, 22), np.uint8)
    expected[4:12, 5:15] = 1  # the 0/255 GIF mask, read through its grey palette
    np.testing.assert_array_equal(label, expected)
    assert load_plan(tmp_path / "pp")["pairing"]["by"] == "leading case id"


def test_a_shared_leading_word_falls_back_to_the_case_number(tmp_path):
    names = [(f"case_00{i}_img.png", f"case_00{i}_gt.png") for i in range(1, 4)]
    _picture_set(tmp_path / "set", "images", "masks", names)
    dataset = discover_dataset(tmp_path / "set")
    assert {c.images[0].name: c.label.name for c in dataset.cases} == dict(names)
    assert dataset.pairing["by"] == "first number in the name"


def test_ambiguous_pairings_are_refused(tmp_path):
    names = [("21_left.png", "21_manual_a.png"), ("21_right.png", "21_manual_b.png")]
    _picture_set(tmp_path / "twins", "images", "masks", names)
    with pytest.raises(DataError, match=r"cannot pair images with masks.*`21` names 2 image\(s\) and 2 mask\(s\)"):
        discover_dataset(tmp_path / "twins")


def test_several_label_folders_are_refused_and_explicit_folders_resolve_it(tmp_path):
    names = [(f"{i}_training.png", f"{i}_manual1.png") for i in (21, 22, 23)]
    _picture_set(tmp_path / "drive", "images", "1st_manual", names)
    _picture_set(tmp_path / "drive", "images2", "mask", [(f"{i}_training_mask.png", f"{i}_training_mask.png")
                                                          for i in (21, 22, 23)])  # fmt: skip
    with pytest.raises(DataError, match=r"several folders that could hold the labels \(mask/, 1st_manual/\)"):
        discover_dataset(tmp_path / "drive")
    drive = tmp_path / "drive"
    args = ["--images", str(drive / "images"), "--labels", str(drive / "1st_manual")]
    result = runner.invoke(app, ["preprocess", *args, "-o", str(tmp_path / "pp"), "--folds", "2"])
    assert result.exit_code == 0, result.output
    shown = re.sub(r"[\s│]+", " ", result.output)  # the panel may wrap the line
    assert "pairs: 3, images/ ↔ 1st_manual/ by leading case id e.g. 21_training.png ↔ 21_manual1.png" in shown
    assert "mask values: 0 → 0, 255 → 1" in shown and "folders not used: images2/, mask/" in shown
    assert "None" not in shown and "{" not in shown and "[" not in shown  # words, not Python reprs
    assert load_plan(tmp_path / "pp")["cases"] == ["21_training", "22_training", "23_training"]


def test_grey_pictures_are_recorded_as_grey_with_dataset_statistics(tmp_path):
    pixels = _picture_set(tmp_path / "em", "image", "label", [(f"{i}.png", f"{i}.png") for i in range(3)], grey=True)
    result = runner.invoke(app, ["preprocess", str(tmp_path / "em"), "-o", str(tmp_path / "pp"), "--folds", "2",
                                 "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["modality"] == "grey"
    plan = load_plan(tmp_path / "pp")
    assert plan["modality"] == "grey" and plan["num_channels"] == 1
    (norm,) = plan["normalization"]
    assert norm["modality"] == "grey"
    np.testing.assert_allclose([norm["mean"], norm["std"]], [pixels.mean(), pixels.std()], rtol=1e-9)
    image, _, _ = load_case(tmp_path / "pp", "0")
    assert abs(float(image.mean())) < 0.5  # z-scored with the dataset's statistics


def _drive(root):
    """DRIVE's training folder: images/, 1st_manual/ (vessels) and mask/ (the round field of view)."""
    names = [(f"{i}_training.png", f"{i}_manual1.png") for i in (21, 22, 23)]
    _picture_set(root, "images", "1st_manual", names)
    (root / "mask").mkdir()
    yy, xx = np.mgrid[0:20, 0:22]
    disc = (((yy - 10) / 9.5) ** 2 + ((xx - 11) / 10.5) ** 2 <= 1).astype(np.uint8) * 255
    for i in (21, 22, 23):
        PILImage.fromarray(disc).save(root / "mask" / f"{i}_training_mask.png")


def test_a_field_of_view_mask_folder_is_never_suggested_as_labels(tmp_path):
    _drive(tmp_path / "drive" / "training")
    with pytest.raises(DataError) as info:
        discover_dataset(tmp_path / "drive" / "training")
    assert "mask/ holds field-of-view masks" in info.value.message
    assert "--labels 1st_manual" in info.value.hint and "--labels mask" not in info.value.hint
    # the hint's command works: --labels NAME picks the folder inside the dataset
    dataset = discover_dataset(tmp_path / "drive" / "training", label_dir="1st_manual")
    assert [c.label.name for c in dataset.cases] == ["21_manual1.png", "22_manual1.png", "23_manual1.png"]


def test_a_dataset_one_level_down_is_named(tmp_path):
    _drive(tmp_path / "drive" / "training")
    _drive(tmp_path / "drive" / "test")
    with pytest.raises(DataError) as info:
        discover_dataset(tmp_path / "drive")
    assert "is not a dataset folder" in info.value.message
    assert info.value.hint.endswith(f"`satseg preprocess {tmp_path / 'drive' / 'training'}`?")
