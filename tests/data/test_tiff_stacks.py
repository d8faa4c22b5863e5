"""ISBI-2012 as downloaded: ``train-volume.tif`` + ``train-labels.tif`` multipage stacks, one 2D case per page."""

import re

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from satseg.cli import app
from satseg.data import discover_dataset, load_case, load_plan, preprocess_dataset, read_image
from satseg.data.grid import Grid
from satseg.errors import DataError

runner = CliRunner()
SHAPE = (20, 24)


def _save_stack(path, pages):
    pictures = [PILImage.fromarray(page) for page in pages]
    pictures[0].save(path, save_all=True, append_images=pictures[1:])


def _isbi(root, pages=3, test_pages=2, label_shapes=None, seed=0):
    """Stacks of grey pages (values 1..255: no zero border to crop) and 0/255 labels (255 = cell interior)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = [rng.integers(1, 256, SHAPE, dtype=np.uint8) for _ in range(pages)]
    labels = []
    for k, shape in enumerate(label_shapes or [SHAPE] * pages):
        label = np.full(shape, 255, np.uint8)
        label[:, 5 + k] = 0  # a membrane, one column further on each page
        label[3 + k, :] = 0
        labels.append(label)
    _save_stack(root / "train-volume.tif", images)
    _save_stack(root / "train-labels.tif", labels)
    if test_pages:
        _save_stack(root / "test-volume.tif", [rng.integers(1, 256, SHAPE, dtype=np.uint8) for _ in range(test_pages)])
    return images, labels


def test_each_page_is_a_2d_case_with_its_label_mapped_like_a_png_mask(tmp_path):
    images, labels = _isbi(tmp_path / "isbi")
    dataset = discover_dataset(tmp_path / "isbi")
    assert dataset.layout == "stacks"
    ids = [c.case_id for c in dataset.cases]
    assert ids == ["train-volume_00", "train-volume_01", "train-volume_02", "test-volume_00", "test-volume_01"]
    assert [c.page for c in dataset.cases] == [0, 1, 2, 0, 1]
    assert [c.label is None for c in dataset.cases] == [False] * 3 + [True] * 2  # test-volume: unlabelled cases

    report = preprocess_dataset(tmp_path / "isbi", tmp_path / "pp", folds=3)
    plan = load_plan(tmp_path / "pp")
    assert plan["cases"] == ids[:3] and plan["test_cases"] == ids[3:]  # as imagesTs/: preprocessed, never trained on
    assert plan["modality"] == "grey" and plan["pairing"]["mask_values"] == "0 → 0, 255 → 1"
    assert sorted(report.written) == sorted(ids)
    # grey pictures: z-score with the mean and std of the training pages' pixels
    pixels = np.concatenate([im.ravel() for im in images]).astype(np.float64)
    for k in range(3):
        image, label, props = load_case(tmp_path / "pp", f"train-volume_0{k}")
        np.testing.assert_array_equal(label, (labels[k] == 255).astype(np.uint8))  # 255 → 1, page for page
        np.testing.assert_allclose(image[0], (images[k] - pixels.mean()) / pixels.std(), atol=1e-4)
        assert props["page"] == k and props["image_files"] == [str(tmp_path / "isbi" / "train-volume.tif")]
    # the same page as a PNG has exactly the same grid: geometry is that of the 2D picture path
    PILImage.fromarray(images[1]).save(tmp_path / "page1.png")
    _, _, props = load_case(tmp_path / "pp", "train-volume_01")
    assert props["original"] == Grid.of(read_image(tmp_path / "page1.png")).to_dict()
    assert props["grid"] == props["original"]


def test_the_summary_names_the_stacks_the_mapping_and_the_unlabelled_pages(tmp_path):
    _isbi(tmp_path / "isbi", test_pages=2)
    result = runner.invoke(app, ["preprocess", str(tmp_path / "isbi"), "-o", str(tmp_path / "pp"), "--folds", "3"])
    assert result.exit_code == 0, result.output
    assert "pairs: 3, train-volume.tif ↔ train-labels.tif by page" in result.output
    assert "mask values: 0 → 0, 255 → 1" in result.output and "2D grey" in result.output
    assert "without labels: 2 case(s), preprocessed but not trained on" in result.output


def test_a_page_is_read_on_its_own_and_a_whole_stack_is_refused_as_one_picture(tmp_path):
    images, _ = _isbi(tmp_path / "isbi")
    stack = tmp_path / "isbi" / "train-volume.tif"
    np.testing.assert_array_equal(read_image(stack, 2).array[0], images[2])
    with pytest.raises(DataError, match=r"is a stack of 3 pages"):
        read_image(stack)
    with pytest.raises(DataError, match=r"has 3 page\(s\); page 3 does not exist"):
        read_image(stack, 3)


@pytest.mark.parametrize(
    ("label_shapes", "expected"),
    [
        ([SHAPE, SHAPE], r"`[^`]*train-labels\.tif` has 2 page\(s\) but `train-volume\.tif` has 3"),
        ([SHAPE, (20, 25), SHAPE], r"`[^`]*train-labels\.tif`: page 1 is 20×25 but page 1 of `train-volume\.tif` is 20×24"),  # noqa: E501
    ],
)
def test_stacks_that_do_not_match_page_for_page_are_refused_in_one_line(tmp_path, label_shapes, expected):
    images, _ = _isbi(tmp_path / "isbi", pages=3, label_shapes=label_shapes)
    with pytest.raises(DataError, match=expected):
        discover_dataset(tmp_path / "isbi")
    result = runner.invoke(app, ["preprocess", str(tmp_path / "isbi"), "-o", str(tmp_path / "pp")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert re.search(expected, lines[0]) and lines[0].startswith("error:"), result.output
    assert not (tmp_path / "pp").exists()  # nothing half-written


def test_a_stack_of_images_without_labels_is_refused_as_training_data(tmp_path):
    root = tmp_path / "isbi"
    root.mkdir()
    _save_stack(root / "test-volume.tif", [np.full(SHAPE, 7, np.uint8)] * 2)
    with pytest.raises(DataError, match=r"`test-volume\.tif` hold\(s\) images without labels") as info:
        discover_dataset(root)
    assert "train-labels.tif" in info.value.hint
