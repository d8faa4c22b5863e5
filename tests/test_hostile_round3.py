"""Round three of the hostile corpus: files named inside headers, two inputs one output, silent wrong results,
hangs, messages and formats (issue 24). Every refusal: exit code 1, one ``error:`` line naming the file."""

import os
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hostile import files_under, scan, tiny_run, write_nifti
from typer.testing import CliRunner

from satseg.cli import app
from satseg.data.io import read_image
from satseg.errors import DataError

SHAPE = (12, 16, 16)


@contextmanager
def no_hang(seconds: int = 20):
    """Fail (instead of blocking CI forever) when the body does not finish in time."""

    def fail(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def one_error(result, *names: str) -> str:
    """The one `error:` line of a refused command, which names every one of ``names``."""
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output and "unexpected" not in lines[0], result.output
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- 1. files named inside a header
def _mhd(folder: Path, data_file: str, size=(16, 16, 12), element="MET_UCHAR") -> Path:
    header = folder / "scan.mhd"
    header.write_text(
        f"ObjectType = Image\nNDims = 3\nDimSize = {' '.join(map(str, size))}\nElementType = {element}\n"
        f"ElementDataFile = {data_file}\n"
    )
    return header


def _nhdr(folder: Path, data_file: str, size=(16, 16, 12)) -> Path:
    header = folder / "scan.nhdr"
    header.write_text(
        f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {' '.join(map(str, size))}\nencoding: raw\n"
        f"data file: {data_file}\n"
    )
    return header


@pytest.mark.parametrize("write_header", [_mhd, _nhdr], ids=["mhd", "nhdr"])
def test_a_detached_header_reads_only_regular_files_beside_it(write_header, tmp_path):
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(256)) * 12)  # 3072 bytes: 16 x 16 x 12 voxels
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "ok.raw").write_bytes(secret.read_bytes())
    (folder / "link.raw").symlink_to(secret)
    os.mkfifo(folder / "pipe.raw")
    hostile = {
        str(secret): "absolute",
        "../secret.raw": "..",
        "sub/../../secret.raw": "..",
        "/dev/zero": "absolute",
        "link.raw": "link",
        "pipe.raw": "pipe",
        "sub": "folder",
    }
    for target, why in hostile.items():
        header = write_header(folder, target)
        with no_hang(), pytest.raises(DataError) as caught:
            read_image(header)
        assert str(header) in caught.value.message and why in caught.value.message, (target, caught.value.message)
    # the same bytes beside the header are read: the rule refuses places, not detached headers
    image = read_image(write_header(folder, "sub/ok.raw"))
    assert image.spatial_shape == (12, 16, 16)
    assert np.array_equal(image.array.ravel(), np.frombuffer(secret.read_bytes(), np.uint8))


@pytest.mark.parametrize("write_header", [_mhd, _nhdr], ids=["mhd", "nhdr"])
def test_a_detached_header_cannot_claim_more_voxels_than_its_data_file_holds(write_header, tmp_path):
    (tmp_path / "small.raw").write_bytes(b"\0" * 4096)
    header = write_header(tmp_path, "small.raw", size=(1000, 1000, 500))
    with pytest.raises(DataError, match="claims 500,000,000 bytes"):
        read_image(header)


def test_segment_refuses_a_header_pointing_outside_and_a_fifo_input_without_hanging(tmp_path):
    run = tiny_run(tmp_path / "run")
    folder = tmp_path / "in"
    folder.mkdir()
    header = _mhd(folder, "/dev/zero", size=(1000, 1000, 500))
    os.mkfifo(folder / "pipe.nii.gz")
    runner = CliRunner()
    for source in (header, folder / "pipe.nii.gz"):
        before = files_under(tmp_path)
        with no_hang():
            result = runner.invoke(app, ["segment", str(source), "-o", str(tmp_path / "o.nii.gz"), "--model", str(run)])
        one_error(result, str(source))
        assert files_under(tmp_path) == before
    # a pipe inside a folder fails that input only, never blocks the others
    write_nifti(folder / "good.nii.gz", scan(SHAPE))
    header.unlink()
    with no_hang():
        result = runner.invoke(app, ["segment", str(folder), "-o", str(tmp_path / "out"), "--model", str(run)])
    one_error(result, "pipe.nii.gz")
    assert (tmp_path / "out" / "good_seg.nii.gz").exists()


def test_sitk_writes_detached_images_that_satseg_reads_back(tmp_path):
    image = sitk.GetImageFromArray(scan(SHAPE))
    for name in ("v.mhd", "v.nhdr"):
        sitk.WriteImage(image, str(tmp_path / name))
        assert np.allclose(read_image(tmp_path / name).array[0], scan(SHAPE))


# ---------------------------------------------------------------- 2. two inputs, one output
def _picture(path: Path) -> Path:
    from PIL import Image as PILImage

    PILImage.fromarray((scan((16, 16)) * 60 + 60).clip(0, 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--skip-existing"], ["--shard", "0/2"], ["--shard", "1/2"]])
def test_two_inputs_that_would_share_a_mask_are_refused_before_any_work(extra, tmp_path):
    run = tiny_run(tmp_path / "run", dims=2)
    folder = tmp_path / "in"
    folder.mkdir()
    _picture(folder / "a.png")
    _picture(folder / "a.jpg")  # both a_seg.png
    (folder / "a_seg.png").write_bytes(b"an earlier mask")  # skip-existing must not call the collision done
    before = files_under(tmp_path)
    result = CliRunner().invoke(app, ["segment", str(folder), "--model", str(run), *extra])
    one_error(result, "a.png", "a.jpg", "a_seg.png")
    assert files_under(tmp_path) == before and "skipped" not in result.output


def test_same_named_files_of_different_folders_into_one_output_folder_are_refused(tmp_path):
    run = tiny_run(tmp_path / "run")
    sources = []
    for sub in ("sub-1", "sub-2"):
        (tmp_path / sub).mkdir()
        sources.append(str(write_nifti(tmp_path / sub / "t1.nii.gz", scan(SHAPE))))
    result = CliRunner().invoke(app, ["segment", *sources, "-o", str(tmp_path / "out"), "--model", str(run)])
    one_error(result, *sources)
    assert not (tmp_path / "out").exists()


def test_preprocess_refuses_two_files_of_one_case_id(tmp_path):
    root = tmp_path / "ds"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for name in ("case_000.nii.gz", "case_000.nii", "case_001.nii.gz"):
        write_nifti(root / "imagesTr" / name, scan(SHAPE))
        write_nifti(root / "labelsTr" / name, (scan(SHAPE) > 1).astype(np.uint8))
    (root / "dataset.json").write_text('{"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "x"}}')
    result = CliRunner().invoke(app, ["preprocess", str(root), "-o", str(tmp_path / "pp")])
    one_error(result, "case_000.nii.gz", "case_000.nii`", "case_000")
    assert not (tmp_path / "pp").exists()


def test_demo_keep_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["demo", "--keep", str(tmp_path)])
    one_error(result, str(tmp_path))
    assert files_under(tmp_path) == {"notes.txt"} and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_failed_input_is_named_once_on_one_line(tmp_path):
    run = tiny_run(tmp_path / "run")
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    result = CliRunner().invoke(app, ["segment", str(tmp_path / "bad.nii.gz"), "--model", str(run)])
    line = one_error(result, "bad.nii.gz")
    assert line.count("bad.nii.gz") == 1 and "warning" not in result.output, result.output


# ---------------------------------------------------------------- 3. silent wrong results: geometry and voxels at load
def _raw_nifti(path: Path, array_xyz: np.ndarray, **fields) -> Path:
    """A NIfTI-1 file written byte by byte, so that header fields nibabel would fix on saving stay as given."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(array_xyz.shape)
    header.set_data_dtype(array_xyz.dtype)
    header.set_sform(np.diag([2.0, 3.0, 4.0, 1.0]), code=1)
    header.set_qform(np.diag([2.0, 3.0, 4.0, 1.0]), code=1)
    header["vox_offset"] = 352
    for key, value in fields.items():
        header[key] = value
    path.write_bytes(header.binaryblock + b"\0" * 4 + array_xyz.tobytes(order="F"))
    return path


@pytest.mark.parametrize(
    "fields, why",
    [
        ({"pixdim": [1, 0, 3, 4, 1, 1, 1, 1], "sform_code": 0, "qform_code": 0}, "voxel size"),
        ({"pixdim": [1, np.nan, 3, 4, 1, 1, 1, 1], "sform_code": 0, "qform_code": 0}, "voxel size"),
        ({"srow_x": [2, np.nan, 0, 0]}, "srow_x"),
        ({"sform_code": 0, "quatern_b": np.nan}, "quatern_b"),
    ],
    ids=["pixdim0", "pixdim_nan", "sform_nan", "qform_nan"],
)
def test_an_invalid_nifti_grid_is_refused_not_guessed(fields, why, tmp_path):
    path = _raw_nifti(tmp_path / "bad.nii", scan((8, 9, 10)), **fields)
    with pytest.raises(DataError, match=why) as caught:
        read_image(path)
    assert str(path) in caught.value.message
    assert read_image(_raw_nifti(tmp_path / "ok.nii", scan((8, 9, 10)))).spacing == (4.0, 3.0, 2.0)


def test_complex_nifti_is_refused_and_rgb24_gives_three_channels(tmp_path):
    import nibabel as nib

    data = scan((8, 9, 10))
    nib.save(nib.Nifti1Image((data + 1j * data).astype(np.complex64), np.eye(4)), tmp_path / "complex.nii")
    with pytest.raises(DataError, match="complex"):
        read_image(tmp_path / "complex.nii")
    rgb = np.zeros((8, 9, 10), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"] = 7
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii")
    image = read_image(tmp_path / "rgb.nii")
    assert image.array.shape == (3, 10, 9, 8) and image.array[1].min() == 7 and image.array[[0, 2]].max() == 0


def test_nifti2_gets_the_grid_simpleitk_gives_the_same_file_as_nifti1(tmp_path):
    import nibabel as nib

    affine = np.array([[0, 0, 2.5, -10], [-1.2, 0.1, 0, 20], [0.1, 1.2, 0, 3], [0, 0, 0, 1.0]])
    data = scan((8, 9, 10))
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "one.nii.gz")
    nib.save(nib.Nifti2Image(data, affine), tmp_path / "two.nii.gz")
    one, two = read_image(tmp_path / "one.nii.gz"), read_image(tmp_path / "two.nii.gz")  # SimpleITK, nibabel
    assert np.array_equal(one.array, two.array)
    for a, b in ((one.spacing, two.spacing), (one.origin, two.origin), (one.direction, two.direction)):
        assert np.allclose(a, b, atol=1e-5), (a, b)


def test_a_cifti_file_is_refused_as_not_an_image_on_a_grid(tmp_path):
    import nibabel as nib

    header = nib.Nifti2Header()
    header.set_data_shape((1, 1, 1, 1, 6, 6))
    header.set_intent("ConnDense")
    nib.save(nib.Nifti2Image(np.zeros((1, 1, 1, 1, 6, 6), np.float32), np.eye(4), header), tmp_path / "x.dconn.nii")
    with pytest.raises(DataError, match="CIFTI"):
        read_image(tmp_path / "x.dconn.nii")


def test_an_analyze_pair_and_one_dicom_file_are_read_and_minc_is_refused_as_an_input(tmp_path):
    import nibabel as nib

    run = tiny_run(tmp_path / "run")
    data = scan(SHAPE)
    nib.save(nib.Nifti1Pair(np.transpose(data), np.diag([-1.5, -1.5, 2.0, 1.0])), tmp_path / "pair.hdr")
    pair = read_image(tmp_path / "pair.hdr")
    assert np.allclose(pair.array[0], data) and pair.spacing == (2.0, 1.5, 1.5)
    sitk.WriteImage(sitk.Cast(sitk.GetImageFromArray((data[0] * 100).astype(np.int16)), sitk.sitkInt16),
                    str(tmp_path / "one.dcm"))  # fmt: skip
    assert read_image(tmp_path / "one.dcm").array.shape[-2:] == SHAPE[1:]
    result = CliRunner().invoke(app, ["segment", str(tmp_path / "pair.hdr"), "--model", str(run)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pair_seg.nii.gz").exists()
    (tmp_path / "brain.mnc").write_bytes(b"CDF\x01" + b"\0" * 64)
    result = CliRunner().invoke(app, ["segment", str(tmp_path / "brain.mnc"), "--model", str(run)])
    line = one_error(result, "brain.mnc")
    assert "not a supported image" in line and "_seg" not in line


def test_a_dicom_folder_with_two_series_is_refused_not_guessed(tmp_path):
    from satseg.data.io import Image, write_image

    volume = (scan((4, 8, 8)) * 100).astype(np.int16)[None]
    for name in ("s1", "s2"):
        write_image(Image(volume, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())), tmp_path / name)
    both = tmp_path / "both"
    both.mkdir()
    for name in ("s1", "s2"):
        for f in (tmp_path / name).iterdir():
            f.rename(both / f"{name}_{f.name}")
    with pytest.raises(DataError, match="2 DICOM series") as caught:
        read_image(both)
    assert str(both) in caught.value.message


# ---------------------------------------------------------------- 4. evaluation
def _label_folders(tmp_path: Path, cases: dict[str, tuple[np.ndarray | None, np.ndarray]]) -> tuple[Path, Path]:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(parents=True)
    gt.mkdir(parents=True)
    for case, (p, g) in cases.items():
        if p is not None:
            write_nifti(pred / f"{case}.nii.gz", p.astype(np.uint8))
        write_nifti(gt / f"{case}.nii.gz", g.astype(np.uint8))
    return pred, gt


def test_a_missing_prediction_scores_zero_and_never_vanishes_from_the_means(tmp_path):
    from satseg.evaluation.folders import evaluate_folders

    ref = np.zeros(SHAPE, np.uint8)
    ref[3:8, 4:10, 4:10] = 1
    pred, gt = _label_folders(tmp_path, {"good": (ref, ref), "failed": (None, ref)})
    report = evaluate_folders(pred, gt, tmp_path / "out")
    dice = report.summary["classes"]["label_1"]["dice"]
    assert report.summary["num_cases"] == 2 and report.missing_predictions == ["failed"]
    assert dice["mean"] == pytest.approx(0.5) and dice["n"] == 2  # (1 + 0) / 2: the failure counts
    failed = next(row for row in report.rows if row["case"] == "failed")
    assert (failed["dice"], failed["nsd"], failed["fn"], failed["tp"]) == (0.0, 0.0, int(ref.sum()), 0)
    assert "failed" in (tmp_path / "out" / "per_case.csv").read_text()


def test_all_empty_masks_are_refused_and_a_ghost_class_stays_out_of_the_foreground_mean(tmp_path):
    from satseg.evaluation.folders import evaluate_folders

    empty = np.zeros(SHAPE, np.uint8)
    pred, gt = _label_folders(tmp_path, {"a": (empty, empty)})
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "o")])
    one_error(result, str(pred), "foreground")
    assert not (tmp_path / "o").exists()
    ref = empty.copy()
    ref[2:6, 2:6, 2:6] = 1
    guess = np.roll(ref, 2, axis=2)
    pred, gt = _label_folders(tmp_path / "ghost", {"a": (guess, ref)})
    report = evaluate_folders(pred, gt, labels={"core": 1, "ghost": 7})
    dice_core = report.summary["classes"]["core"]["dice"]["mean"]
    assert report.summary["classes"]["ghost"]["dice"]["mean"] == 1.0  # both empty, per the convention
    assert report.summary["foreground_mean"]["dice"] == pytest.approx(dice_core) and dice_core < 1.0


def test_evaluate_model_file_without_output_writes_beside_the_file(tmp_path, monkeypatch):
    from satseg.cli.evaluate import evaluation_folder

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert evaluation_folder(model, "val") == tmp_path / "m.onnx_eval_val"
    assert evaluation_folder(tmp_path, "val") == tmp_path / "eval_val"


# ---------------------------------------------------------------- 5/6. robustness and messages of outputs
def test_output_names_a_folder_by_its_trailing_slash_and_long_names_are_refused_before_inference(tmp_path):
    run = tiny_run(tmp_path / "run")
    source = str(write_nifti(tmp_path / "s.nii.gz", scan(SHAPE)))
    runner = CliRunner()
    for folder in ("dir.v2/", "x.nii.gz/"):
        result = runner.invoke(app, ["segment", source, "--model", str(run), "-o", f"{tmp_path}/{folder}"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / folder / "s_seg.nii.gz").is_file()
    long_name = str(tmp_path / ("x" * 240 + ".nii.gz"))
    before = files_under(tmp_path)
    line = one_error(runner.invoke(app, ["segment", source, "--model", str(run), "-o", long_name]), "x" * 240)
    assert "bytes long" in line
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("name", ["newdir/", "model.nii.gz", "model"])
def test_export_onnx_writes_only_an_onnx_file(name, tmp_path):
    run = tiny_run(tmp_path / "run")
    before = files_under(tmp_path)
    one_error(CliRunner().invoke(app, ["export-onnx", str(run), "-o", str(tmp_path / name)]), ".onnx")
    assert files_under(tmp_path) == before


def test_one_symlink_loop_in_a_folder_fails_that_input_only(tmp_path):
    run = tiny_run(tmp_path / "run")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "loop.nii.gz").symlink_to(folder / "loop.nii.gz")
    write_nifti(folder / "good.nii.gz", scan(SHAPE))
    result = CliRunner().invoke(app, ["segment", str(folder), "--model", str(run)])
    one_error(result, "loop.nii.gz", "link loop")
    assert (folder / "good_seg.nii.gz").is_file()


def test_random_bytes_are_not_called_a_checkpoint_with_python_objects(tmp_path):
    run = tiny_run(tmp_path / "run")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    source = str(write_nifti(tmp_path / "s.nii.gz", scan(SHAPE)))
    result = CliRunner().invoke(app, ["segment", source, "--model", str(tmp_path / "random.pt")])
    line = one_error(result, "random.pt", "not a readable checkpoint")
    assert "Python objects" not in line and run.exists()


@pytest.mark.parametrize(
    "option, value", [("--lr", "nan"), ("--lr", "-1"), ("--lr", "inf"), ("--seed", str(10**30)), ("--ema", "nan")]
)
def test_impossible_training_numbers_are_refused_by_name(option, value, tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "pp"), "--out", str(tmp_path / "r"),
                                      option, value])  # fmt: skip
    one_error(result, option.lstrip("-"), value if value != str(10**30) else "seed")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "labels", [{"0": "bg", "1": "a", "4": "b"}, {"0": "bg", "1": "a", "300": "b"}, {"-1": "bg", "0": "a", "1": "b"}]
)
def test_preprocess_refuses_label_sets_training_cannot_use(labels, tmp_path):
    import json

    root = tmp_path / "ds"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    write_nifti(root / "imagesTr" / "c0.nii.gz", scan(SHAPE))
    write_nifti(root / "labelsTr" / "c0.nii.gz", (scan(SHAPE) > 1).astype(np.uint8))
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": labels}))
    result = CliRunner().invoke(app, ["preprocess", str(root), "-o", str(tmp_path / "pp")])
    one_error(result, "dataset.json", "labels")
    assert not (tmp_path / "pp").exists()


def test_params_without_memory_counts_on_the_meta_device(tmp_path):
    """Shapes and FLOPs of a huge patch without allocating it (in a child process capped at 3 GB)."""
    import subprocess
    import sys
    import textwrap

    from satseg.nn import build_model
    from satseg.nn.params import measure_variant

    model = build_model("unet3d", "sat", 1, 2, features=[4, 8])
    real, meta = measure_variant(model, (16, 16, 16), memory=True), measure_variant(model, (16, 16, 16), memory=False)
    assert {k: v for k, v in real.items() if k != "peak_memory_bytes"} == {
        k: v for k, v in meta.items() if k != "peak_memory_bytes"
    }
    script = textwrap.dedent(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
        from satseg.nn import build_model
        from satseg.nn.params import measure_variant
        out = measure_variant(build_model("unet3d", "sat", 1, 2, features=[4, 8]), (512, 512, 512), memory=False)
        print(out["skip_bytes"], out["flops"])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
    skip_bytes, flops = map(int, proc.stdout.split())
    assert skip_bytes == meta["skip_bytes"] * 32**3 and flops > meta["flops"] * 30000


# ---------------------------------------------------------------- 8. review items
def test_the_generic_lean_rewrite_takes_a_backbone_holding_a_plain_dropout_attribute():
    import torch
    from torch import nn

    from satseg.nn import build_model
    from satseg.nn.lean import make_lean

    torch.manual_seed(0)
    model = build_model("tiramisu2d", "sat", 1, 2).eval()
    model.extra_dropout = nn.Dropout(0.5)  # an attribute, not an item of a Sequential
    x = torch.randn(1, 1, 32, 32)
    lean = make_lean(model)
    with torch.no_grad():
        assert torch.allclose(lean(x), model(x), atol=1e-4)
    assert not any(isinstance(m, nn.Dropout) for m in lean.modules())


def test_the_input_guard_compares_a_scan_with_the_plan_after_reorientation():
    from satseg.data.grid import Grid, transpose_grid
    from satseg.data.io import Image
    from satseg.inference.input_guard import check_fit

    plan = {
        "spatial_dims": 3, "num_channels": 1, "modality": "mri", "spacing": [1.0, 1.0, 1.0], "size": None,
        "median_spacing": [1.0, 1.0, 1.0], "median_shape": [12, 60, 60], "preprocessing": {"reorient": True},
    }  # fmt: skip
    axial = np.random.default_rng(0).random((12, 60, 60)).astype(np.float32)
    canonical = Grid((12, 60, 60), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    stored = transpose_grid(canonical, (2, 1, 0))  # the same voxels in space, kept in another axis order
    permuted = Image(np.transpose(axial, (2, 1, 0))[None], stored.spacing, stored.origin, stored.direction)
    assert check_fit(Image(axial[None], (1.0,) * 3, (0.0,) * 3, tuple(np.eye(3).ravel())), plan) == []
    assert check_fit(permuted, plan) == []
    assert [m.what for m in check_fit(permuted, {**plan, "preprocessing": {"reorient": False}})] == ["field of view"]


def test_pictures_report_pixels_not_millimetres(tmp_path):
    import json

    from PIL import Image as PILImage

    run = tiny_run(tmp_path / "run", dims=2)
    source = _picture(tmp_path / "p.png")
    result = CliRunner().invoke(app, ["segment", str(source), "--model", str(run), "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["results"]
    assert entry["unit"] == "px"
    for name in ("pred", "gt"):
        (tmp_path / name).mkdir()
        mask = np.zeros((16, 16), np.uint8)
        mask[4:10, 4 + (name == "pred") : 10] = 255
        PILImage.fromarray(mask).save(tmp_path / name / "c.png")
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                                      "-o", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert " px" in result.stdout and " mm" not in result.stdout, result.stdout
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["distance_unit"] == "px"


# ---------------------------------------------------------------- 3. ONNX files that are not what their metadata says
def _export(tmp_path: Path) -> Path:
    run = tiny_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["export-onnx", str(run), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    return tmp_path / "m.onnx"


def _with_metadata(proto, metadata: dict[str, str]):
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto


def test_onnx_metadata_copied_onto_another_graph_or_impossible_labels_are_refused(tmp_path):
    import json

    import onnx
    from onnx import TensorProto, helper

    from satseg.export.metadata import GRAPH_DIGEST_KEY, ONNX_CONFIG_KEY, graph_digest

    good = _export(tmp_path)
    source = str(write_nifti(tmp_path / "s.nii.gz", scan(SHAPE)))
    proto = onnx.load(str(good))
    metadata = {p.key: p.value for p in proto.metadata_props}
    dims = ["B", 2, "Z", "Y", "X"]
    foreign = helper.make_model(
        helper.make_graph(
            [helper.make_node("Concat", ["image", "image"], ["logits"], axis=1)], "not_satseg",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 1, "Z", "Y", "X"])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims)],
        ),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
    )  # fmt: skip
    onnx.save(_with_metadata(foreign, metadata), str(tmp_path / "copied.onnx"))  # the real export's digest
    identity = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["image"], ["logits"])], "identity",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 1, "Z", "Y", "X"])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 1, "Z", "Y", "X"])],
        ),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
    )  # fmt: skip
    # a digest recomputed on purpose is no signature: the structure (1 class for 2 labels) still gives it away
    forged = {**metadata, GRAPH_DIGEST_KEY: graph_digest(identity)}
    onnx.save(_with_metadata(identity, forged), str(tmp_path / "re.onnx"))
    config = json.loads(metadata[ONNX_CONFIG_KEY])
    config["plan"]["labels"] = {"background": 0, "core": 1, "edge": 7}
    onnx.save(_with_metadata(onnx.load(str(good)), {**metadata, ONNX_CONFIG_KEY: json.dumps(config)}),
              str(tmp_path / "gap.onnx"))  # fmt: skip
    config["plan"]["labels"] = {"background": False, "core": True}
    onnx.save(_with_metadata(onnx.load(str(good)), {**metadata, ONNX_CONFIG_KEY: json.dumps(config)}),
              str(tmp_path / "bool.onnx"))  # fmt: skip
    runner = CliRunner()
    why = {"copied.onnx": "graph is not the one", "re.onnx": "gives 1 class", "gap.onnx": "without gaps",
           "bool.onnx": "integer values"}  # fmt: skip
    for name, reason in why.items():
        for models in (str(tmp_path / name), f"{good},{tmp_path / name}"):  # alone and in an ensemble
            result = runner.invoke(app, ["segment", source, "-o", str(tmp_path / "o.nii.gz"), "--model", models])
            one_error(result, name, reason)
    assert not (tmp_path / "o.nii.gz").exists()
    result = runner.invoke(app, ["segment", source, "-o", str(tmp_path / "o.nii.gz"), "--model", str(good)])
    assert result.exit_code == 0, result.output


def test_a_killed_batch_leaves_nothing_that_breaks_a_skip_existing_rerun(tmp_path):
    run = tiny_run(tmp_path / "run")
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        write_nifti(folder / f"{name}.nii.gz", scan(SHAPE))
    out = tmp_path / "out"
    out.mkdir()
    # what SIGKILL mid-write of `a` leaves: its probabilities (written before the mask), a temporary folder
    (out / "a_probabilities.nii.gz").write_bytes(b"half of an earlier run")
    (out / ".a_seg.nii.gz.k1ll3d00.tmp").mkdir()
    (out / ".a_seg.nii.gz.k1ll3d00.tmp" / "a_seg.nii.gz").write_bytes(b"partial")
    (out / ".other_seg.nii.gz.5h4rd000.tmp").mkdir()  # another shard's, still at work: not ours to remove
    args = ["segment", str(folder), "-o", str(out), "--model", str(run), "--save-probabilities", "--skip-existing"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {"a_seg.nii.gz", "b_seg.nii.gz", "a_probabilities.nii.gz", ".other_seg.nii.gz.5h4rd000.tmp"} <= set(
        files_under(out)
    )
    assert ".a_seg.nii.gz.k1ll3d00.tmp" not in files_under(out)
    assert read_image(out / "a_probabilities.nii.gz").num_channels == 2


# ---------------------------------------------------------------- 6. a full disk
def test_a_full_disk_names_the_output_and_leaves_no_half_report(tmp_path, monkeypatch):
    import errno

    ref = np.zeros(SHAPE, np.uint8)
    ref[3:8, 4:10, 4:10] = 1
    pred, gt = _label_folders(tmp_path, {"c": (ref, ref)})
    out = tmp_path / "out"
    real_write_text = Path.write_text

    def full_disk(self, *args, **kwargs):
        if "summary.json" in self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out)])
    line = one_error(result, str(out / "summary.json"), "No space left")
    assert ".tmp" not in line
    assert not (out / "per_case.csv").exists() and [p for p in out.iterdir() if p.is_file()] == []


def test_a_full_disk_inside_a_writer_that_wraps_the_os_error_names_the_output(tmp_path, monkeypatch):
    import torch

    from satseg.errors import ConfigError
    from satseg.runs import save_checkpoint

    def torch_full_disk(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", torch_full_disk)
    with pytest.raises(ConfigError, match="cannot write") as caught:
        save_checkpoint(tmp_path / "checkpoint_last.pt", model=torch.nn.Linear(1, 1), run_config={})
    assert str(tmp_path / "checkpoint_last.pt") in caught.value.message and list(tmp_path.iterdir()) == []
