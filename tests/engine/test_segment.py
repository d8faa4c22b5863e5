"""`satseg segment`, `export-onnx`, default models and `evaluate --model`, on two tiny trained models.

Every geometry check compares the written mask with the input as SimpleITK and nibabel read it (independent
readers), never with what satseg itself reports.
"""

import csv
import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage
from typer.testing import CliRunner

from satseg.cli import app
from satseg.data.io import Image, write_image
from satseg.data.preprocess import preprocess_dataset
from satseg.data.synthetic import synthetic_case, write_synthetic_msd
from satseg.engine.checkpoint import load_run
from satseg.engine.config import TrainConfig
from satseg.engine.segment import segment_inputs
from satseg.engine.trainer import train
from satseg.engine.zoo import default_model_for, list_shipped_models, resolve_model_path
from satseg.errors import CheckpointError

pytestmark = pytest.mark.slow

TINY_TRAIN = {"epochs": 1, "iters_per_epoch": 3, "batch": 2, "optimizer": "adam", "lr": 3e-3, "device": "cpu"}


# ---------------------------------------------------------------- the two tiny models (trained once per module)
@pytest.fixture(scope="module")
def model3d(tmp_path_factory):
    """A tiny 3D UNet+SAT on 1-channel synthetic MSD volumes: ``(run folder, preprocessed folder)``."""
    root = tmp_path_factory.mktemp("model3d")
    raw = write_synthetic_msd(
        root / "raw", 3, (16, 16, 16), spacing=(1.0,) * 3, seed=0, oblique=False, two_structures=False, noise=0.2
    )
    preprocess_dataset(raw, root / "pp", folds=2, seed=0)
    config = TrainConfig(net="unet3d", skip="sat", patch=(16, 16, 16), model_options={"features": [4, 8]}, **TINY_TRAIN)
    train(root / "pp", root / "run", config, progress=False)
    return root / "run", root / "pp"


def _rgb_picture(rng, shape=(24, 24)):
    image, label = synthetic_case(rng, shape, noise=0.2, two_structures=False)
    grey = np.clip(image, 0, 255)
    return np.stack([grey, 0.8 * grey, 0.6 * grey], -1).astype(np.uint8), label


@pytest.fixture(scope="module")
def model2d(tmp_path_factory):
    """A tiny 2D UNet+SAT on an RGB paired-folder dataset of PNGs: ``(run folder, preprocessed folder)``."""
    root = tmp_path_factory.mktemp("model2d")
    (root / "raw" / "images").mkdir(parents=True)
    (root / "raw" / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        rgb, label = _rgb_picture(rng)
        PILImage.fromarray(rgb).save(root / "raw" / "images" / f"c{i}.png")
        PILImage.fromarray(label * 255).save(root / "raw" / "masks" / f"c{i}.png")
    preprocess_dataset(root / "raw", root / "pp", folds=2, seed=0)
    config = TrainConfig(net="unet2d", skip="sat", patch=(16, 16), model_options={"features": [4, 8]}, **TINY_TRAIN)
    train(root / "pp", root / "run", config, progress=False)
    return root / "run", root / "pp"


# ---------------------------------------------------------------- test inputs with non-trivial grids
def _rotation(ax, ay, az):
    """Rotation matrix from angles in degrees about x, y, z."""
    a, b, c = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


# oblique; the second also flips the y axis (left-handed, far from RAS or LPS)
OBLIQUE = tuple(_rotation(20, -15, 10).ravel())
OBLIQUE_FLIPPED = tuple((_rotation(-8, 25, 30) @ np.diag([1, -1, 1])).ravel())


def _volume(shape=(12, 18, 14), seed=3):
    """Synthetic MRI-like intensities (what the 3D model was trained on), ``(z, y, x)``."""
    image, _ = synthetic_case(np.random.default_rng(seed), shape, noise=0.2, two_structures=False)
    return image


def _sitk_volume(spacing_xyz, origin, direction, array=None):
    img = sitk.GetImageFromArray(_volume() if array is None else array)
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def _write_input(kind, folder):
    """Write one test input of ``kind``; return its path."""
    if kind == "nifti_lps":  # written by SimpleITK from an LPS direction matrix
        path = folder / "scan.nii.gz"
        sitk.WriteImage(_sitk_volume((0.8, 1.3, 2.1), (-31.5, 12.25, 48.0), OBLIQUE), str(path))
    elif kind == "nifti_ras":  # written by nibabel from a RAS affine; sform (aligned) and qform codes differ
        path = folder / "scan.nii.gz"
        affine = np.eye(4)
        affine[:3, :3] = _rotation(5, 12, -20) @ np.diag([1.7, 0.8, 1.2])
        affine[:3, 3] = (10.5, -22.0, 3.75)
        data = np.transpose(_volume(), (2, 1, 0)).astype(np.int16)  # (z, y, x) -> (x, y, z)
        nii = nib.Nifti1Image(data, None)
        nii.set_sform(affine, code=2)
        nii.set_qform(affine, code=1)
        nib.save(nii, str(path))
    elif kind == "nrrd":
        path = folder / "scan.nrrd"
        sitk.WriteImage(_sitk_volume((1.1, 0.7, 1.9), (4.0, -3.5, 100.0), OBLIQUE_FLIPPED), str(path))
    elif kind == "mha":
        path = folder / "scan.mha"
        sitk.WriteImage(_sitk_volume((0.9, 0.9, 2.5), (-100.0, 50.0, -7.5), OBLIQUE), str(path))
    elif kind == "dicom":  # a series folder
        path = folder / "series"
        array = _volume()[None].astype(np.int16)
        write_image(Image(array, (2.0, 0.75, 0.9), (12.0, -40.5, 33.0), OBLIQUE), path)
    elif kind == "png":
        path = folder / "photo.png"
        PILImage.fromarray(_rgb_picture(np.random.default_rng(7), (20, 28))[0]).save(path)
    return path


def _read_reference(path):
    """The input as SimpleITK reads it (a folder: its DICOM series)."""
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def _assert_same_grid(out_path, in_path, atol=1e-6):
    out, ref = sitk.ReadImage(str(out_path)), _read_reference(in_path)
    assert out.GetSize() == ref.GetSize()
    assert out.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_allclose(out.GetSpacing(), ref.GetSpacing(), rtol=0, atol=atol)
    np.testing.assert_allclose(out.GetOrigin(), ref.GetOrigin(), rtol=0, atol=atol)
    np.testing.assert_allclose(out.GetDirection(), ref.GetDirection(), rtol=0, atol=atol)
    return sitk.GetArrayFromImage(out)


def _assert_same_nifti_header(out_path, in_path):
    out, ref = nib.load(str(out_path)), nib.load(str(in_path))
    np.testing.assert_array_equal(out.affine, ref.affine)
    out_sform, out_scode = out.get_sform(coded=True)
    ref_sform, ref_scode = ref.get_sform(coded=True)
    out_qform, out_qcode = out.get_qform(coded=True)
    ref_qform, ref_qcode = ref.get_qform(coded=True)
    assert (int(out_scode), int(out_qcode)) == (int(ref_scode), int(ref_qcode))
    np.testing.assert_array_equal(out_sform, ref_sform)
    np.testing.assert_allclose(out_qform, ref_qform, rtol=0, atol=1e-6)


GEOMETRY_CASES = {
    # kind: (output name, tolerance). DICOM positions are text and the NIfTI output stores float32 affines.
    "nifti_lps": ("scan_seg.nii.gz", 1e-6),
    "nifti_ras": ("scan_seg.nii.gz", 1e-6),
    "nrrd": ("scan_seg.nrrd", 1e-9),
    "mha": ("scan_seg.mha", 1e-9),
    "dicom": ("series_seg.nii.gz", 1e-4),
    "png": ("photo_seg.png", 0),
}


@pytest.mark.parametrize("kind", list(GEOMETRY_CASES))
def test_mask_lies_exactly_on_the_input_grid(kind, model3d, model2d, tmp_path):
    path = _write_input(kind, tmp_path)
    run = model2d[0] if kind == "png" else model3d[0]
    report = segment_inputs([path], model=run, device="cpu")
    assert report.failures == []
    name, atol = GEOMETRY_CASES[kind]
    out_path = tmp_path / name
    assert report.results[0]["outputs"] == [str(out_path)]
    labels = _assert_same_grid(out_path, path, atol)
    assert set(np.unique(labels)) <= {0, 1}
    if kind.startswith("nifti"):
        _assert_same_nifti_header(out_path, path)
    if kind == "png":
        with PILImage.open(path) as src, PILImage.open(out_path) as mask:
            assert mask.size == src.size and mask.mode == "L"


def test_cli_mask_lies_on_an_oblique_flipped_nrrd(model3d, tmp_path):
    path = _write_input("nrrd", tmp_path)
    target = tmp_path / "out" / "mask.nrrd"
    result = CliRunner().invoke(app, ["segment", str(path), "-o", str(target), "--model", str(model3d[0]), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    _assert_same_grid(target, path, atol=1e-9)
