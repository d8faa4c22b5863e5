"""`satseg segment`, `export-onnx`, default models and `evaluate --model`, on two tiny trained models.

Every geometry check compares the written mask with the input as SimpleITK and nibabel read it (independent
readers), never with what satseg itself reports.
"""

import csv
import json
import re
import shutil
from pathlib import Path

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
from satseg.errors import CheckpointError
from satseg.inference.batch import segment_inputs
from satseg.inference.preview import LEGEND_ROW, label_colour
from satseg.runs import load_run
from satseg.training.config import TrainConfig
from satseg.training.trainer import train
from satseg.zoo import default_model_for, list_shipped_models, resolve_model_path

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
# stored sagittal: the array's slice axis (SimpleITK index x) runs along physical z, tilted by a few degrees
SAGITTAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
SAGITTAL_TILTED = tuple((_rotation(6, -4, 3) @ SAGITTAL).ravel())


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
    elif kind == "nifti_sagittal":
        path = folder / "scan.nii.gz"
        sitk.WriteImage(_sitk_volume((1.9, 1.1, 0.8), (20.0, -7.0, 3.0), SAGITTAL_TILTED), str(path))
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
    elif kind in ("png", "jpeg"):
        path = folder / ("photo.png" if kind == "png" else "photo.jpg")
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
    "nifti_sagittal": ("scan_seg.nii.gz", 1e-6),
    "nrrd": ("scan_seg.nrrd", 1e-9),
    "mha": ("scan_seg.mha", 1e-9),
    "dicom": ("series_seg.nii.gz", 1e-4),
    "png": ("photo_seg.png", 0),
    "jpeg": ("photo_seg.png", 0),  # masks are never stored lossy
}


@pytest.mark.parametrize("kind", list(GEOMETRY_CASES))
def test_mask_lies_exactly_on_the_input_grid(kind, model3d, model2d, tmp_path):
    path = _write_input(kind, tmp_path)
    run = model2d[0] if kind in ("png", "jpeg") else model3d[0]
    report = segment_inputs([path], model=run, device="cpu")
    assert report.failures == []
    name, atol = GEOMETRY_CASES[kind]
    out_path = tmp_path / name
    assert report.results[0]["outputs"] == [str(out_path)]
    labels = _assert_same_grid(out_path, path, atol)
    assert set(np.unique(labels)) <= ({0, 255} if kind in ("png", "jpeg") else {0, 1})  # binary pictures: 0/255
    if kind.startswith("nifti"):
        _assert_same_nifti_header(out_path, path)
    if kind in ("png", "jpeg"):
        with PILImage.open(path) as src, PILImage.open(out_path) as mask:
            assert mask.size == src.size and mask.mode == "L"


def test_sagittal_store_is_segmented_like_the_axial_one(model3d, tmp_path):
    """The same volume stored axial and sagittal: preprocessing transposes both to one axis order, so the
    model sees the same input and the sagittal mask is the axial one transposed, on the sagittal grid."""
    volume = _volume(shape=(16, 20, 18))
    axial = _sitk_volume((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), volume)
    sagittal = _sitk_volume((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(SAGITTAL.ravel()), volume.transpose(2, 1, 0))
    sitk.WriteImage(axial, str(tmp_path / "axial.nii.gz"))
    sitk.WriteImage(sagittal, str(tmp_path / "sagittal.nii.gz"))
    report = segment_inputs([tmp_path / "axial.nii.gz", tmp_path / "sagittal.nii.gz"], model=model3d[0], device="cpu",
                            save_probabilities=True)  # fmt: skip
    assert report.failures == []
    mask_a = _assert_same_grid(tmp_path / "axial_seg.nii.gz", tmp_path / "axial.nii.gz")
    mask_s = _assert_same_grid(tmp_path / "sagittal_seg.nii.gz", tmp_path / "sagittal.nii.gz")
    np.testing.assert_array_equal(mask_s, mask_a.transpose(2, 1, 0))
    probs_a = nib.load(str(tmp_path / "axial_probabilities.nii.gz")).get_fdata()
    probs_s = nib.load(str(tmp_path / "sagittal_probabilities.nii.gz")).get_fdata()
    assert probs_a.std() > 0.01  # a model that outputs something non-constant, so the comparison means something
    np.testing.assert_allclose(probs_s, np.swapaxes(probs_a, 0, 2), atol=1e-5)


def test_cli_mask_lies_on_an_oblique_flipped_nrrd(model3d, tmp_path):
    path = _write_input("nrrd", tmp_path)
    target = tmp_path / "out" / "mask.nrrd"
    result = CliRunner().invoke(
        app, ["segment", str(path), "-o", str(target), "--model", str(model3d[0]), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    _assert_same_grid(target, path, atol=1e-9)


# ---------------------------------------------------------------- batches, failures, overwriting
def _write_nifti_xyz(data, path):
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))


def _tmp_leftovers(folder):
    return [p for p in folder.rglob("*") if p.name.startswith(".") or "tmp" in p.name]


def test_batch_goes_on_after_failures_and_lists_them(model3d, tmp_path):
    batch, out = tmp_path / "batch", tmp_path / "out"
    batch.mkdir()
    sitk.WriteImage(_sitk_volume((0.8, 1.3, 2.1), (-31.5, 12.25, 48.0), OBLIQUE), str(batch / "a.nii.gz"))
    sitk.WriteImage(_sitk_volume((1.1, 0.7, 1.9), (4.0, -3.5, 100.0), OBLIQUE_FLIPPED), str(batch / "b.nrrd"))
    (batch / "c_corrupt.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file" * 20)
    _write_nifti_xyz(np.zeros((20, 20), np.float32), batch / "d_flat.nii.gz")  # 2D, the model is 3D
    _write_nifti_xyz(np.zeros((14, 12, 10, 2), np.float32), batch / "e_two_channels.nii.gz")  # model takes 1
    args = ["segment", str(batch), "-o", str(out), "--model", str(model3d[0]), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_seg.nii.gz", "b_seg.nrrd"]
    _assert_same_grid(out / "a_seg.nii.gz", batch / "a.nii.gz")
    _assert_same_grid(out / "b_seg.nrrd", batch / "b.nrrd", atol=1e-9)
    failed = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(failed) == 3
    for line, name, reason in zip(
        failed,
        ["c_corrupt.nii.gz", "d_flat.nii.gz", "e_two_channels.nii.gz"],
        ["cannot be read", "2D", "2 channel"],
        strict=True,
    ):
        assert name in line and reason in line, line
        # each error once (not logged, then listed again); progress-bar lines aside
        assert len([x for x in result.stderr.splitlines() if name in x and "remaining" not in x]) == 1
    assert _tmp_leftovers(tmp_path) == []

    # the outputs exist now: without --overwrite each good input fails naming its output; the bad ones fail again
    stamp = (out / "a_seg.nii.gz").stat().st_mtime_ns
    again = CliRunner().invoke(app, [*args, "--json"])
    assert again.exit_code == 1
    failures = {f["input"]: f["error"] for f in json.loads(again.stdout)["failures"]}
    assert len(failures) == 5 and json.loads(again.stdout)["results"] == []
    assert "a_seg.nii.gz" in failures[str(batch / "a.nii.gz")] and "exists" in failures[str(batch / "a.nii.gz")]
    assert (out / "a_seg.nii.gz").stat().st_mtime_ns == stamp
    hints = {f["input"]: f["hint"] for f in json.loads(again.stdout)["failures"]}
    assert "--overwrite" in hints[str(batch / "a.nii.gz")]  # the failure list keeps each error's hint

    # --overwrite replaces them (a damaged output becomes a valid mask again)
    (out / "a_seg.nii.gz").write_bytes(b"damaged")
    replaced = CliRunner().invoke(app, [*args, "--overwrite"])
    assert replaced.exit_code == 1  # the three bad inputs still fail
    _assert_same_grid(out / "a_seg.nii.gz", batch / "a.nii.gz")
    assert _tmp_leftovers(tmp_path) == []


def test_each_file_is_reported_as_it_finishes(model3d, tmp_path, monkeypatch):
    from satseg.inference import batch as batch_module

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        sitk.WriteImage(_sitk_volume((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), OBLIQUE), str(folder / f"{name}.nii.gz"))
    (folder / "c_corrupt.nii.gz").write_bytes(b"not a NIfTI file")
    events = []
    reader = batch_module.read_image
    monkeypatch.setattr(batch_module, "read_image", lambda p: events.append(("read", p.name)) or reader(p))
    batch_module.segment_inputs(
        [folder], output=tmp_path / "out", model=str(model3d[0]), device="cpu",
        on_done=lambda kind, entry: events.append((kind, Path(entry["input"]).name)),
    )  # fmt: skip
    assert events == [("read", "a.nii.gz"), ("result", "a.nii.gz"), ("read", "b.nii.gz"), ("result", "b.nii.gz"),
                      ("read", "c_corrupt.nii.gz"), ("failure", "c_corrupt.nii.gz")]  # fmt: skip


def test_masks_written_beside_the_inputs_are_not_segmented_again(model3d, tmp_path):
    sitk.WriteImage(_sitk_volume((0.8, 1.3, 2.1), (-31.5, 12.25, 48.0), OBLIQUE), str(tmp_path / "a.nii.gz"))
    first = segment_inputs([tmp_path], model=model3d[0], device="cpu", preview=True, save_probabilities=True)
    assert first.failures == [] and len(first.results) == 1
    second = segment_inputs([tmp_path], model=model3d[0], device="cpu", overwrite=True)
    assert [r["input"] for r in second.results] == [str(tmp_path / "a.nii.gz")] and second.failures == []
    assert not list(tmp_path.glob("*_seg_seg*"))


# ---------------------------------------------------------------- volumes, previews, probabilities, attention
def test_json_volumes_match_voxel_counts_times_voxel_volume(model3d, tmp_path):
    path = _write_input("mha", tmp_path)
    result = CliRunner().invoke(app, ["segment", str(path), "--model", str(model3d[0]), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["results"]
    mask = sitk.ReadImage(entry["outputs"][0])
    count = int((sitk.GetArrayFromImage(mask) == 1).sum())
    assert count > 0
    expected_ml = count * float(np.prod(sitk.ReadImage(str(path)).GetSpacing())) / 1000.0
    assert entry["unit"] == "ml"
    assert entry["volumes"] == {"core": pytest.approx(expected_ml, rel=1e-12)}
    # progress (scans and windows, with remaining time) goes to stderr; stdout holds the JSON alone
    assert "segmenting" in result.stderr and "remaining" in result.stderr and path.name in result.stderr
    assert "1/1" in result.stderr and "segmenting" not in result.stdout


def test_item_progress_counts_items_and_windows():
    from satseg.progress import ItemProgress

    with ItemProgress(2, "segmenting", enabled=True) as bar:
        bar.item("a.nii.gz")
        bar.windows(3, 8)
        tasks = {t.description.strip(): t for t in bar._progress.tasks}
        assert (tasks["a.nii.gz"].completed, tasks["a.nii.gz"].total) == (3, 8)
        assert tasks["segmenting"].completed == 0
        bar.item("b.nii.gz")
        tasks = {t.description.strip(): t for t in bar._progress.tasks}
        assert tasks["segmenting"].completed == 1 and tasks["b.nii.gz"].completed == 0
    assert bar._progress.tasks[0].completed == 2  # the last item counts when the run ends


def test_preview_png_colours_exactly_the_masked_voxels(model3d, tmp_path):
    path = tmp_path / "cube.nii.gz"
    sitk.WriteImage(_sitk_volume((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), OBLIQUE, _volume((16, 16, 16))), str(path))
    report = segment_inputs([path], model=model3d[0], device="cpu", preview=True)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cube_seg.nii.gz")))
    assert 0 < labels.sum() < labels.size
    with PILImage.open(tmp_path / "cube_preview.png") as png:
        assert png.mode == "RGB"
        whole = np.asarray(png).astype(int)
    assert str(tmp_path / "cube_preview.png") in report.results[0]["outputs"]
    # three 16x16 panels 4 px apart, enlarged 16x; grey pixels have r == g == b, the overlay colour does not
    assert whole.shape == (256 + LEGEND_ROW + 4, (3 * 16 + 2 * 4) * 16, 3)
    picture, legend = whole[:256], whole[256:]
    # the legend: the label's colour beside its name ("core")
    assert np.all(legend == np.array(label_colour(1)), axis=-1).sum() == 12 * 12
    assert (legend.min(axis=-1) > 128).any()  # the name, in white
    z = int(np.argwhere(labels > 0).mean(0).round()[0])
    axial = picture[8:256:16, 8:256:16]
    np.testing.assert_array_equal(axial[..., 0] != axial[..., 1], labels[z] > 0)


def test_probabilities_and_attention_maps_lie_on_the_input_grid(model3d, tmp_path):
    path = _write_input("nifti_lps", tmp_path)
    report = segment_inputs([path], model=model3d[0], device="cpu", save_probabilities=True, save_attention=True)
    assert report.failures == []
    reference = nib.load(str(path))
    labels = np.asarray(nib.load(str(tmp_path / "scan_seg.nii.gz")).dataobj)
    probs = nib.load(str(tmp_path / "scan_probabilities.nii.gz"))
    np.testing.assert_array_equal(probs.affine, reference.affine)
    p = probs.get_fdata()
    assert p.shape == (*reference.shape, 2)
    assert p.min() >= 0 and p.max() <= 1
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert labels.shape == reference.shape
    model, _ = load_run(model3d[0])
    gates = [name.replace(".", "_") for name, gate in model.skip_gates() if gate.transfers_attention]
    assert len(gates) >= 1
    for name in gates:
        attention = nib.load(str(tmp_path / f"scan_attention_{name}.nii.gz"))
        np.testing.assert_array_equal(attention.affine, reference.affine)
        a = attention.get_fdata()
        assert a.shape == reference.shape and a.min() >= 0 and a.max() <= 1 and a.std() > 0
    maps = sorted(p.name for p in tmp_path.glob("scan_attention_*"))
    assert maps == sorted(f"scan_attention_{name}.nii.gz" for name in gates)


def test_probabilities_agree_with_the_mask_on_the_model_grid(model3d, tmp_path):
    # on the training grid (1 mm, nothing to resample) the mask is exactly the argmax of the probabilities
    path = tmp_path / "cube.nii.gz"
    sitk.WriteImage(_sitk_volume((1.0, 1.0, 1.0), (5.0, 6.0, 7.0), OBLIQUE, _volume((16, 16, 16))), str(path))
    segment_inputs([path], model=model3d[0], device="cpu", save_probabilities=True)
    labels = np.asarray(nib.load(str(tmp_path / "cube_seg.nii.gz")).dataobj)
    probs = nib.load(str(tmp_path / "cube_probabilities.nii.gz")).get_fdata()
    assert 0 < labels.sum() < labels.size
    np.testing.assert_array_equal(probs.argmax(-1), labels)


# ---------------------------------------------------------------- ONNX
def test_export_onnx_then_segment_with_onnx_runtime(model3d, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    result = CliRunner().invoke(app, ["export-onnx", str(model3d[0]), "-o", str(onnx_path), "--opset", "17"])
    assert result.exit_code == 0, result.output
    diff = float(re.search(r"max \|torch − onnxruntime\| = (\S+)", result.stdout).group(1))
    assert 0 <= diff <= 1e-4 and onnx_path.is_file()
    path = _write_input("nifti_lps", tmp_path)
    torch_out, onnx_out = tmp_path / "torch_seg.nii.gz", tmp_path / "onnx_seg.nii.gz"
    segment_inputs([path], output=torch_out, model=model3d[0], device="cpu")
    cli = CliRunner().invoke(
        app, ["segment", str(path), "-o", str(onnx_out), "--model", str(onnx_path), "--device", "cpu"]
    )
    assert cli.exit_code == 0, cli.output
    # same logits up to ~1e-6: labels can only differ where two classes tie within that, i.e. (almost) never
    torch_labels = _assert_same_grid(torch_out, path)
    onnx_labels = _assert_same_grid(onnx_out, path)
    assert (torch_labels == onnx_labels).mean() >= 0.999
    explicit = segment_inputs([path], output=tmp_path / "x.nii.gz", model=onnx_path, backend="onnx", device="cpu")
    assert explicit.failures == [] and explicit.results[0]["model"] == str(onnx_path)
    wrong = CliRunner().invoke(app, ["segment", str(path), "-o", str(tmp_path / "y.nii.gz"), "--model",
                                     str(model3d[0]), "--backend", "onnx", "--device", "cpu"])  # fmt: skip
    # a model that cannot be used is one error for the whole command, with the fix
    assert wrong.exit_code == 1 and "segmenting" not in wrong.stderr
    assert "error: `" in wrong.stderr and "needs an exported model" in wrong.stderr
    assert "hint: run `satseg export-onnx" in wrong.stderr


# ---------------------------------------------------------------- default models
def _models_dir(folder, model3d, model2d):
    for name, run, dims, channels in (("tiny3d", model3d[0], 3, 1), ("tiny2d", model2d[0], 2, 3)):
        (folder / name).mkdir(parents=True)
        shutil.copy(run / "checkpoint_last.pt", folder / name / "checkpoint.pt")
        card = {"spatial_dims": dims, "num_channels": channels, "net": f"unet{dims}d"}
        (folder / name / "card.json").write_text(json.dumps(card))
    return folder


def test_default_model_follows_dimensionality_and_channels(model3d, model2d, tmp_path, monkeypatch):
    models = _models_dir(tmp_path / "models", model3d, model2d)
    assert [c["name"] for c in list_shipped_models(models)] == ["tiny2d", "tiny3d"]
    assert default_model_for(3, 1, models)["name"] == "tiny3d"
    assert default_model_for(2, 3, models)["name"] == "tiny2d"
    with pytest.raises(CheckpointError, match="2D images with 1 channel"):
        default_model_for(2, 1, models)
    assert resolve_model_path("tiny2d", models) == models / "tiny2d" / "checkpoint.pt"
    assert resolve_model_path(model3d[0], models) == model3d[0]
    with pytest.raises(CheckpointError, match="no such run folder") as info:
        resolve_model_path("tiny4d", models)
    assert "tiny2d, tiny3d" in info.value.hint

    import satseg.zoo as zoo

    monkeypatch.setattr(zoo, "MODELS_DIR", models)
    volume, photo = _write_input("nifti_lps", tmp_path), _write_input("png", tmp_path)
    PILImage.fromarray(np.full((8, 8), 90, np.uint8)).save(tmp_path / "grey.png")
    report = segment_inputs([volume, photo, tmp_path / "grey.png"], output=tmp_path / "out", device="cpu")
    assert report.models == {str(volume): "tiny3d", str(photo): "tiny2d"}
    ((failure),) = report.failures
    assert failure["input"] == str(tmp_path / "grey.png") and "2D images with 1 channel" in failure["error"]
    _assert_same_grid(tmp_path / "out" / "scan_seg.nii.gz", volume)
    _assert_same_grid(tmp_path / "out" / "photo_seg.png", photo, atol=0)


def test_broken_model_card_is_a_checkpoint_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="card.json"):
        list_shipped_models(tmp_path)


# ---------------------------------------------------------------- evaluate --model
def test_evaluate_model_scores_against_the_original_labels(model3d, tmp_path):
    run, data = model3d
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(run), "--data", str(data), "--split", "all", "-o", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "all" and summary["fold"] == 0
    printed = CliRunner().invoke(app, [*args, "--json"])
    assert printed.exit_code == 0 and json.loads(printed.stdout) == json.loads((out / "summary.json").read_text())
    assert "evaluating" in printed.stderr and "3/3" in printed.stderr and "remaining" in printed.stderr
    with (out / "per_case.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["case"] for r in rows) == ["synth_000", "synth_001", "synth_002"]
    raw = data.parent / "raw" / "labelsTr"
    for row in rows:
        prediction = out / "predictions" / f"{row['case']}.nii.gz"
        _assert_same_grid(prediction, raw / f"{row['case']}.nii.gz")
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction))) == 1
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / f"{row['case']}.nii.gz"))) == 1
        dice = 2 * (pred & ref).sum() / (pred.sum() + ref.sum())
        assert float(row["dice"]) == pytest.approx(dice, rel=1e-9), row["case"]
    # the visual report: Dice per case, and outlines of the worst cases over their images
    worst = sorted(rows, key=lambda r: (float(r["dice"]), r["case"]))
    drawn = sorted(p.name for p in (out / "report").glob("worst_*.png"))
    assert drawn == [f"worst_{i}_{r['case']}.png" for i, r in enumerate(worst, start=1)]
    for png in [out / "report" / "dice_per_case.png", *(out / "report").glob("worst_*.png")]:
        with PILImage.open(png) as picture:
            picture.load()
            assert picture.format == "PNG" and 100 <= picture.width <= 2000 and 40 <= picture.height <= 2000


def test_evaluate_model_reads_picture_masks_as_labels(model2d, tmp_path):
    """PNG masks stored as 0/255 are scored as label 1, as `satseg preprocess` read them."""
    from satseg.evaluation.model import evaluate_model

    run, data = model2d
    report, _ = evaluate_model(run, data, tmp_path / "eval", split="all", device="cpu")
    masks = sorted((data.parent / "raw" / "masks").glob("*.png"))
    with (tmp_path / "eval" / "per_case.csv").open() as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    for mask in masks:
        ref = np.asarray(PILImage.open(mask)) == 255
        row = rows[mask.stem]
        assert int(row["fn"]) + int(row["tp"]) == int(ref.sum()) > 0, mask.name


def test_evaluate_model_writes_predictions_in_the_dataset_s_picture_format(model2d, tmp_path):
    from satseg.evaluation.model import evaluate_model

    run, data = model2d
    evaluate_model(run, data, tmp_path / "eval", split="all", device="cpu")
    with (tmp_path / "eval" / "per_case.csv").open() as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    predictions = sorted((tmp_path / "eval" / "predictions").iterdir())
    assert [p.name for p in predictions] == ["c0.png", "c1.png", "c2.png"]  # PNG masks in, PNG masks out
    for path in predictions:
        mask = np.asarray(PILImage.open(path))
        assert set(np.unique(mask).tolist()) <= {0, 255}  # white on black, not 0/1
        row = rows[path.stem]
        assert int((mask == 255).sum()) == int(row["tp"]) + int(row["fp"])


def test_binary_png_mask_is_0_255_and_says_so(model2d, tmp_path):
    run, _ = model2d
    rgb, _ = _rgb_picture(np.random.default_rng(5))
    source = tmp_path / "skin.png"
    PILImage.fromarray(rgb).save(source)
    args = ["segment", str(source), "--model", str(run), "--device", "cpu", "--backend", "torch"]
    as_png = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "m.png"), "--json"])
    as_nifti = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "m.nii.gz")])
    assert as_png.exit_code == 0 and as_nifti.exit_code == 0, as_png.output + as_nifti.output
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.nii.gz")))
    png = np.asarray(PILImage.open(tmp_path / "m.png"))
    assert np.array_equal(png, labels.reshape(png.shape).astype(np.uint8) * 255)
    (result,) = json.loads(as_png.stdout)["results"]
    assert sorted(result["mask_values"].values()) == [0, 255]


def test_a_picture_output_for_a_3d_scan_is_refused_before_inference(model3d, tmp_path, monkeypatch):
    from satseg.inference.segmenter import Segmenter

    source = tmp_path / "scan.nii.gz"
    sitk.WriteImage(_sitk_volume((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), OBLIQUE), str(source))
    monkeypatch.setattr(Segmenter, "segment", lambda *a, **k: pytest.fail("inference ran"))
    args = ["segment", str(source), "--model", str(model3d[0]), "-o", str(tmp_path / "o.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "a .png picture cannot hold the 3D mask" in result.stderr and "o.nii.gz" in result.stderr
    assert not (tmp_path / "o.png").exists()
