"""Image I/O against SimpleITK's and nibabel's own reading of the same files."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage
from synthetic import oblique_image

from satseg.data import Image, image_stem, is_supported_image, mask_to_labels, read_image, with_array, write_image
from satseg.errors import ConfigError, DataError

VOLUME = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)


def assert_same_geometry(a: sitk.Image, b: sitk.Image, tol=1e-6):
    assert a.GetSize() == b.GetSize()
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(a, getter)(), getattr(b, getter)(), atol=tol, rtol=0)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_volume_round_trip_matches_simpleitk(tmp_path, ending):
    reference = oblique_image(VOLUME)
    sitk.WriteImage(reference, str(tmp_path / f"in{ending}"))
    image = read_image(tmp_path / f"in{ending}")
    assert image.array.shape == (1, 4, 5, 6) and image.spatial_dims == 3 and image.num_channels == 1
    np.testing.assert_array_equal(image.array[0], VOLUME)
    np.testing.assert_allclose(image.spacing, (2.5, 0.9, 0.7), rtol=1e-6)  # array axis order (z, y, x)
    write_image(image, tmp_path / f"out{ending}")
    back = sitk.ReadImage(str(tmp_path / f"out{ending}"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), VOLUME)
    assert_same_geometry(back, reference)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_nifti_label_keeps_affine_and_codes(tmp_path):
    affine = np.array([[0.0, -0.8, 0.1, 30.0], [0.9, 0.0, 0.0, -12.0], [0.0, 0.05, 2.4, 7.0], [0, 0, 0, 1]])
    src = nib.Nifti1Image(np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32), affine)
    src.header.set_sform(affine, code=2)
    src.header.set_qform(affine, code=1)
    nib.save(src, tmp_path / "scan.nii.gz")
    image = read_image(tmp_path / "scan.nii.gz")
    mask = (image.array[0] > 0).astype(np.uint8)
    write_image(with_array(image, mask), tmp_path / "mask.nii.gz")
    a, b = nib.load(tmp_path / "scan.nii.gz"), nib.load(tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(a.affine, b.affine)
    for getter in ("get_sform", "get_qform"):
        (am, ac), (bm, bc) = getattr(a.header, getter)(coded=True), getattr(b.header, getter)(coded=True)
        assert ac == bc and np.array_equal(am, bm)
    assert b.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(b.dataobj).transpose(2, 1, 0), mask)


def test_nifti_4d_is_channel_first(tmp_path):
    data = np.random.default_rng(1).normal(size=(6, 5, 4, 2)).astype(np.float32)  # (x, y, z, c)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 2.0, 3.0, 1.0])), tmp_path / "mc.nii.gz")
    image = read_image(tmp_path / "mc.nii.gz")
    assert image.array.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(image.array[1], data[..., 1].transpose(2, 1, 0))
    np.testing.assert_allclose(image.spacing, (3.0, 2.0, 1.0))


def test_dicom_series_round_trip(tmp_path):
    reference = oblique_image(VOLUME, spacing=(0.5, 0.75, 3.0))
    write_image(read_image_from(reference, tmp_path), tmp_path / "series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    independent = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(independent), VOLUME)
    assert_same_geometry(independent, reference, tol=1e-5)
    ours = read_image(tmp_path / "series")
    assert ours.source_format == "dicom" and is_supported_image(tmp_path / "series")
    np.testing.assert_array_equal(ours.array[0], VOLUME)


def read_image_from(img: sitk.Image, folder) -> Image:
    sitk.WriteImage(img, str(folder / "tmp.mha"))
    return read_image(folder / "tmp.mha")


@pytest.mark.parametrize("ending", [".png", ".bmp", ".tif", ".jpg"])
def test_pictures_rgb_and_grey(tmp_path, ending):
    rgb = np.random.default_rng(2).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(tmp_path / f"rgb{ending}")
    PILImage.fromarray(rgb[..., 0]).save(tmp_path / f"grey{ending}")
    image, grey = read_image(tmp_path / f"rgb{ending}"), read_image(tmp_path / f"grey{ending}")
    assert image.array.shape == (3, 7, 9) and grey.array.shape == (1, 7, 9)
    assert image.spacing == (1.0, 1.0) and image.origin == (0.0, 0.0) and image.direction == (1.0, 0.0, 0.0, 1.0)
    if ending != ".jpg":  # lossless formats keep the values
        np.testing.assert_array_equal(image.array, np.moveaxis(rgb, -1, 0))
        write_image(image, tmp_path / f"out{ending}")
        np.testing.assert_array_equal(np.asarray(PILImage.open(tmp_path / f"out{ending}")), rgb)


def test_mask_conversion():
    grey = np.array([[[0, 255], [255, 0]]], np.uint8)
    np.testing.assert_array_equal(mask_to_labels(grey), [[0, 1], [1, 0]])
    indices = np.array([[[0, 1], [2, 0]]], np.uint8)
    np.testing.assert_array_equal(mask_to_labels(indices), [[0, 1], [2, 0]])
    colour = np.zeros((3, 2, 2), np.uint8)
    colour[0, 0, 1] = 200
    colour[2, 1, 0] = 30
    np.testing.assert_array_equal(mask_to_labels(colour), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(mask_to_labels(np.repeat(grey, 3, axis=0)), [[0, 1], [1, 0]])


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz")
    sitk.WriteImage(oblique_image(np.random.default_rng(3).normal(size=(8, 9, 10))), str(tmp_path / "ok.nii.gz"))
    raw = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cut.nii.gz"):
        read_image(tmp_path / "cut.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a supported image"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="without a DICOM series"):
        read_image(tmp_path / "empty")
    assert gzip.decompress(raw)  # the intact file really is a gzip stream


def test_with_array_and_write_refusals(tmp_path):
    image = Image(np.zeros((1, 3, 4), np.uint8), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    assert with_array(image, np.ones((3, 4))).array.shape == (1, 3, 4)
    with pytest.raises(DataError, match="does not lie on the image grid"):
        with_array(image, np.ones((3, 5)))
    write_image(image, tmp_path / "a.png")
    with pytest.raises(ConfigError, match="already exists"):
        write_image(image, tmp_path / "a.png")
    with pytest.raises(ConfigError, match="unknown image ending"):
        write_image(image, tmp_path / "a.xyz")
    assert image_stem("dir/case_0001.nii.gz") == "case_0001" and image_stem("IMD003.png") == "IMD003"
