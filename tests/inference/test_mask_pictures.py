"""Masks people can open: binary pictures as 0/255, several classes as palette pictures whose indices are the
labels, and the masks of ISBI-2012-style TIFF stacks (evaluate: a PNG per page; segment: a TIFF stack)."""

import csv

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageSequence

from satseg.data.datasets import mask_to_labels
from satseg.data.io import Image, read_image
from satseg.data.preprocess import preprocess_dataset
from satseg.errors import ConfigError
from satseg.inference.batch import segment_inputs, write_mask
from satseg.inference.preview import label_colour, label_palette
from satseg.training.config import TrainConfig
from satseg.training.trainer import train

TINY_TRAIN = {"epochs": 1, "iters_per_epoch": 3, "batch": 2, "optimizer": "adam", "lr": 3e-3, "device": "cpu"}


def _labels(num_classes, shape=(12, 16), seed=0):
    """A 2D label map holding every value 0..num_classes-1 (each class a band, then shuffled rows)."""
    labels = (np.arange(shape[0] * shape[1]) % num_classes).reshape(shape).astype(np.uint8)
    return np.random.default_rng(seed).permutation(labels)


def _image(labels):
    return Image(labels[None], (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), source_format="picture")


@pytest.mark.parametrize("num_classes", [3, 12])  # 12: more classes than the preview has colours
@pytest.mark.parametrize("ending", [".png", ".tif", ".bmp"])
def test_a_multi_class_mask_is_a_palette_picture_whose_indices_are_the_labels(tmp_path, num_classes, ending):
    labels = _labels(num_classes)
    names = {"background": 0, **{f"class{v}": v for v in range(1, num_classes)}}
    path = tmp_path / f"mask{ending}"
    written = write_mask(_image(labels), path, names, overwrite=False)
    assert written == names  # the values in the file are the labels themselves
    with PILImage.open(path) as picture:
        assert picture.mode == "P"
        np.testing.assert_array_equal(np.asarray(picture), labels)  # the raw indices, as any reader sees them
        rgb = np.asarray(picture.convert("RGB"))  # what a viewer shows
    # satseg reads the labels back exactly, also as a training mask (preprocess's mask_to_labels)
    back = read_image(path)
    np.testing.assert_array_equal(back.array[0], labels)
    np.testing.assert_array_equal(mask_to_labels(back.array), labels)
    # a viewer sees one distinct colour per class: black background, each class in its preview colour
    colours = {v: {tuple(c) for c in rgb[labels == v]} for v in range(num_classes)}
    assert all(len(c) == 1 for c in colours.values())
    assert len({next(iter(c)) for c in colours.values()}) == num_classes
    assert colours[0] == {(0, 0, 0)}
    assert all(colours[v] == {label_colour(v)} for v in range(1, num_classes))


def test_a_binary_mask_stays_0_255_grey(tmp_path):
    labels = _labels(2)
    write_mask(_image(labels), tmp_path / "m.png", {"background": 0, "lesion": 1}, overwrite=False)
    with PILImage.open(tmp_path / "m.png") as picture:
        assert picture.mode == "L"
        np.testing.assert_array_equal(np.asarray(picture), labels * 255)


def test_the_palette_has_distinct_colours_and_none_is_grey_but_the_background():
    palette = np.array(label_palette(256))
    assert len({tuple(c) for c in palette}) == 256
    assert tuple(palette[0]) == (0, 0, 0)
    assert np.all(palette[1:].max(axis=1) != palette[1:].min(axis=1))  # a grey palette would be read as grey values
    assert [label_colour(v) for v in range(1, 8)] == [tuple(c) for c in palette[1:8]]


def test_the_pages_of_a_multi_class_stack_keep_their_labels(tmp_path):
    pages = [_labels(4, seed=k) for k in range(3)]
    write_mask([_image(p) for p in pages], tmp_path / "m.tif", {"bg": 0, "a": 1, "b": 2, "c": 3}, overwrite=False)
    with PILImage.open(tmp_path / "m.tif") as stack:
        read = [np.asarray(frame.copy()) for frame in ImageSequence.Iterator(stack)]
        assert stack.n_frames == 3 and stack.mode == "P"
    for k, page in enumerate(pages):
        np.testing.assert_array_equal(read[k], page)
        np.testing.assert_array_equal(read_image(tmp_path / "m.tif", k).array[0], page)


# ---------------------------------------------------------------- a tiny model trained on ISBI-like stacks
def _save_stack(path, pages):
    pictures = [PILImage.fromarray(page) for page in pages]
    pictures[0].save(path, save_all=True, append_images=pictures[1:])


@pytest.fixture(scope="module")
def stack_model(tmp_path_factory):
    """A tiny 2D UNet+SAT trained on 4 pages of ``train-volume.tif``: ``(run, preprocessed folder, raw folder)``."""
    from satseg.data.synthetic import synthetic_cells

    root = tmp_path_factory.mktemp("stacks")
    raw = root / "isbi"
    raw.mkdir()
    rng = np.random.default_rng(0)
    pages = [synthetic_cells(rng, (24, 24), cell=10.0, membrane=2.0) for _ in range(6)]
    _save_stack(raw / "train-volume.tif", [image for image, _ in pages[:4]])
    _save_stack(raw / "train-labels.tif", [label for _, label in pages[:4]])
    _save_stack(raw / "test-volume.tif", [image for image, _ in pages[4:]])
    preprocess_dataset(raw, root / "pp", folds=2, seed=0)
    config = TrainConfig(net="unet2d", skip="sat", patch=(16, 16), model_options={"features": [4, 8]}, **TINY_TRAIN)
    train(root / "pp", root / "run", config, progress=False)
    return root / "run", root / "pp", raw


def test_evaluate_writes_a_png_per_page_scored_against_the_label_page(stack_model, tmp_path):
    from satseg.evaluation.model import evaluate_model

    run, data, raw = stack_model
    evaluate_model(run, data, tmp_path / "eval", split="all", device="cpu")
    with (tmp_path / "eval" / "per_case.csv").open() as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    predictions = sorted((tmp_path / "eval" / "predictions").iterdir())
    assert [p.name for p in predictions] == [f"train-volume_0{k}.png" for k in range(4)]
    with PILImage.open(raw / "train-labels.tif") as stack:
        references = [np.asarray(frame.copy()) == 255 for frame in ImageSequence.Iterator(stack)]
    for k, path in enumerate(predictions):
        mask = np.asarray(PILImage.open(path))
        assert mask.shape == (24, 24) and set(np.unique(mask).tolist()) <= {0, 255}
        row = rows[path.stem]
        assert int((mask == 255).sum()) == int(row["tp"]) + int(row["fp"])
        assert int(row["tp"]) + int(row["fn"]) == int(references[k].sum()) > 0  # scored against page k's label


def test_segment_of_a_stack_writes_a_stack_whose_pages_are_the_pages_masks(stack_model, tmp_path):
    run, _, raw = stack_model
    report = segment_inputs([raw / "test-volume.tif"], output=tmp_path / "out", model=run, device="cpu")
    assert report.ok, report.failures
    (result,) = report.results
    assert result["outputs"] == [str(tmp_path / "out" / "test-volume_seg.tif")] and result["shape"] == [2, 24, 24]
    with PILImage.open(raw / "test-volume.tif") as stack:
        pages = [frame.copy() for frame in ImageSequence.Iterator(stack)]
    with PILImage.open(tmp_path / "out" / "test-volume_seg.tif") as stack:
        masks = [np.asarray(frame.copy()) for frame in ImageSequence.Iterator(stack)]
    assert len(masks) == 2
    area = 0
    for k, page in enumerate(pages):  # the reference: each page segmented on its own, as a PNG
        page.save(tmp_path / f"page{k}.png")
        single_mask = tmp_path / f"page{k}_seg.png"
        single = segment_inputs([tmp_path / f"page{k}.png"], output=single_mask, model=run, device="cpu")
        assert single.ok, single.failures
        np.testing.assert_array_equal(masks[k], np.asarray(PILImage.open(single_mask)))
        assert set(np.unique(masks[k]).tolist()) <= {0, 255}
        area += int((masks[k] == 255).sum())
    assert result["volumes"] == {"foreground": float(area)} and result["unit"] == "px"


def test_a_stack_s_mask_must_be_a_stack(stack_model, tmp_path):
    run, _, raw = stack_model
    report = segment_inputs([raw / "test-volume.tif"], output=tmp_path / "m.png", model=run, device="cpu")
    (failure,) = report.failures
    assert "is a stack of pages; its mask is a stack too" in failure["error"] and not (tmp_path / "m.png").exists()
    with pytest.raises(ConfigError, match="stack of pages is written as one .tif"):
        from satseg.data.io import write_stack

        write_stack([_image(_labels(2))], tmp_path / "m.png")
