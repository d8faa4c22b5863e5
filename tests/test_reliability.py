"""Reliability and safety, one test per class of defect: data loss, silent wrong results, memory, clear errors.

Every test builds its own hostile input and checks the behaviour against what the input really is (a file's
bytes before and after, an independently computed size, a NaN placed by hand), never against satseg's report.
"""

import datetime
import json
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import LABELS, files_under, scan, tiny_plan, tiny_run, write_nifti
from typer.testing import CliRunner

from satseg.cli import app
from satseg.data.io import Image, read_image, write_image
from satseg.data.store import load_case, load_splits
from satseg.errors import CheckpointError, ConfigError, DataError
from satseg.evaluation.folders import evaluate_folders
from satseg.evaluation.model import evaluate_model
from satseg.export.onnx import export_onnx
from satseg.inference.batch import segment_inputs
from satseg.inference.segmenter import load_segmenter
from satseg.inference.sliding_window import sliding_window_inference
from satseg.nn import build_model
from satseg.runs import LAST, load_checkpoint, load_run
from satseg.training.trainer import train

runner = CliRunner()


def _cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


# ---------------------------------------------------------------- data loss and escapes
def test_export_onnx_never_replaces_an_existing_file_or_its_own_checkpoint(tmp_path):
    run = tiny_run(tmp_path / "run", dims=2)
    checkpoint = run / LAST
    before = checkpoint.read_bytes()
    for extra in ([], ["--overwrite"]):  # the input is protected even with --overwrite
        result = _cli("export-onnx", run, "-o", checkpoint, *extra)
        assert result.exit_code == 1 and "never overwrites an input" in result.output
        assert checkpoint.read_bytes() == before
    other = tmp_path / "old.onnx"
    other.write_bytes(b"keep me")
    result = _cli("export-onnx", run, "-o", other)
    assert result.exit_code == 1 and "already exists" in result.output and other.read_bytes() == b"keep me"
    result = _cli("export-onnx", run, "-o", tmp_path)  # a folder is not an output file
    assert result.exit_code == 1 and "is a folder" in result.output
    result = _cli("export-onnx", run, "-o", other, "--overwrite")
    assert result.exit_code == 0, result.output
    assert other.read_bytes()[:2] != b"ke" and stat.S_IMODE(other.stat().st_mode) == 0o666 & ~_umask()


@pytest.mark.parametrize("hostile", ["../outside", "/tmp/abs", ".hidden", "a/b", "", 7])
def test_names_read_from_files_never_become_paths(hostile, tmp_path):
    from satseg.paths import safe_name

    with pytest.raises(DataError, match="satseg will not turn it into a file name"):
        safe_name(hostile, "case id", "splits.json")
    data = tmp_path / "pp"
    (data / "cases").mkdir(parents=True)
    (data / "plan.json").write_text(json.dumps(tiny_plan(3)))
    (data / "splits.json").write_text(json.dumps([{"train": ["ok"], "val": [hostile]}]))
    with pytest.raises(DataError):
        load_splits(data)
    with pytest.raises(DataError):
        load_case(data, hostile)


def _preprocessed(folder: Path, dims: int, splits: list) -> Path:
    """A preprocessed folder's plan.json and splits.json (the cases are added by the tests that need them)."""
    (folder / "cases").mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps(tiny_plan(dims)))
    (folder / "splits.json").write_text(json.dumps(splits))
    return folder


def test_evaluate_model_with_a_hostile_case_id_writes_nothing_outside_its_output(tmp_path):
    run = tiny_run(tmp_path / "run", dims=3)
    data = _preprocessed(tmp_path / "work" / "pp", 3, [{"train": ["a"], "val": ["../../escaped"]}])
    # the case the id points at exists, so an unchecked id is read and its prediction written outside -o
    image = write_nifti(tmp_path / "scan.nii.gz", scan())
    label = write_nifti(tmp_path / "label.nii.gz", (scan() > 1).astype(np.uint8))
    props = {"image_files": [str(image)], "label_file": str(label)}
    (tmp_path / "work" / "escaped.json").write_text(json.dumps(props))
    np.savez(tmp_path / "work" / "escaped.npz", image=np.zeros((1, 4, 4, 4), np.float32))
    before = files_under(tmp_path)
    result = _cli("evaluate", "--model", run, "--data", data, "-o", tmp_path / "work" / "eval")
    assert result.exit_code == 1 and "case id" in result.output
    assert files_under(tmp_path) == before


def test_segment_never_replaces_its_input_with_the_mask(tmp_path):
    run = tiny_run(tmp_path / "run", dims=3)
    source = write_nifti(tmp_path / "scan.nii.gz", scan())
    before = source.read_bytes()
    result = _cli("segment", source, "-o", source, "--overwrite", "--model", run, "--device", "cpu")
    assert result.exit_code == 1 and "never overwrites an input" in result.output
    assert source.read_bytes() == before


# ---------------------------------------------------------------- silent wrong results
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_single_nan_or_inf_voxel_is_refused_not_segmented_as_background(bad, tmp_path):
    run = tiny_run(tmp_path / "run", dims=3)
    image = scan()
    image[3, 4, 5] = bad
    source = write_nifti(tmp_path / "scan.nii.gz", image)
    report = segment_inputs([source], model=run, device="cpu")
    assert not report.results and "1 NaN or Inf voxel" in report.failures[0]["error"]
    assert not (tmp_path / "scan_seg.nii.gz").exists()


def test_evaluate_refuses_a_truncated_prediction(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    label = (scan() > 1).astype(np.uint8)
    write_nifti(tmp_path / "gt" / "c.nii.gz", label)
    whole = write_nifti(tmp_path / "pred" / "c.nii.gz", label).read_bytes()
    (tmp_path / "pred" / "c.nii.gz").write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(DataError, match="c.nii.gz"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    result = _cli("evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "-o", tmp_path / "out")
    assert result.exit_code == 1 and not (tmp_path / "out").exists()


def _flip_a_weight_byte(path: Path) -> None:
    """Flip one byte inside the first tensor's storage (the zip member's CRC no longer matches)."""
    with zipfile.ZipFile(path) as archive:
        member = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 64)
    raw = bytearray(path.read_bytes())
    # local header: 30 bytes + name + extra field (its length is at offset 28 of the local header)
    extra = int.from_bytes(raw[member.header_offset + 28 : member.header_offset + 30], "little")
    raw[member.header_offset + 30 + len(member.filename.encode()) + extra + 16] ^= 0x40
    path.write_bytes(bytes(raw))


def test_a_checkpoint_with_one_corrupted_byte_is_refused(tmp_path):
    run = tiny_run(tmp_path / "run", dims=2)
    _flip_a_weight_byte(run / LAST)
    assert torch.load(run / LAST, weights_only=True)["epoch"] == 1, "torch itself does not notice"
    with pytest.raises(CheckpointError, match="corrupted"):
        load_run(run)


def test_non_finite_weights_and_outputs_are_refused(tmp_path):
    run = tiny_run(tmp_path / "run", dims=2, nan_weight=True)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_run(run)
    # ONNX parity: max(0.0, nan) == 0.0 used to report a perfect export of a model of NaN
    model = build_model("unet2d", "sat", 1, 2, features=[4, 8]).eval()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        export_onnx(model, tmp_path / "m.onnx", example_shape=(1, 1, 16, 16), metadata={})
    assert not (tmp_path / "m.onnx").exists()
    # any predictor (ONNX Runtime included) giving NaN: refused, not argmaxed into background
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        sliding_window_inference(
            lambda x: torch.full((x.shape[0], 2, *x.shape[2:]), np.nan), torch.ones(1, 8, 8), (8, 8), 2
        )


def test_labels_in_no_prediction_and_no_reference_are_reported(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    label = (scan() > 1).astype(np.uint8)
    write_nifti(tmp_path / "pred" / "c.nii.gz", label)
    write_nifti(tmp_path / "gt" / "c.nii.gz", label)
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", labels={"core": 1, "tumour": 3})
    assert report.summary["classes"]["tumour"]["dice"]["mean"] == 1.0  # the convention for "both empty"
    assert report.summary["absent_classes"] == ["tumour"]
    result = _cli("evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--labels", "core=1,tumour=3")
    assert result.exit_code == 0 and "warning: class `tumour`" in result.output


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    array = np.random.default_rng(0).integers(0, 100, (6, 8, 8)).astype(np.int16)
    write_image(Image(array[None], (2.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)), tmp_path / "series")
    assert read_image(tmp_path / "series").spatial_shape == (6, 8, 8)
    (tmp_path / "series" / "IM00003.dcm").unlink()
    with pytest.raises(DataError, match="not evenly spaced"):
        read_image(tmp_path / "series")


# ---------------------------------------------------------------- memory and processes
@pytest.mark.parametrize("name", ["liar.nii", "liar.nii.gz"])
def test_an_impossible_header_is_refused_before_allocating(name, tmp_path):
    import gzip
    import tracemalloc

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((400, 400, 400))  # 256 MB of float32 promised by a file of about a kilobyte
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 1000
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20
    assert "the file has" in info.value.message


def test_preprocess_workers_end_with_a_killed_parent(tmp_path):
    script = (
        "import os, sys, time\n"
        "from satseg.data.preprocess import _run\n"
        "print(os.getpid(), flush=True)\n"
        "_run(time.sleep, [(60,), (60,)], 2, 'x', False)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    workers: list[int] = []
    deadline = time.monotonic() + 30
    while len(workers) < 2 and time.monotonic() < deadline:  # the pool starts its workers
        time.sleep(0.2)
        children = Path(f"/proc/{pid}/task/{pid}/children")
        workers = [int(p) for p in children.read_text().split()] if children.exists() else []
    assert len(workers) == 2
    os.kill(pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [w for w in workers if _alive(w)]
    for w in alive:  # leave nothing behind even when the test fails
        os.kill(w, signal.SIGKILL)
    assert alive == []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_one_slice_volume_is_refused_by_a_3d_model(tmp_path):
    run = tiny_run(tmp_path / "run", dims=3)
    source = write_nifti(tmp_path / "flat.nii.gz", scan((1, 64, 64)))
    report = segment_inputs([source], model=run, device="cpu")
    assert "single-slice" in report.failures[0]["error"]


def test_an_oversized_patch_is_refused_before_training(tmp_path):
    data = _preprocessed(tmp_path / "pp", 3, [{"train": [], "val": []}])
    result = _cli("train", "--data", data, "--out", tmp_path / "run", "--patch", "1024,1024,1024", "--device", "cpu")
    assert result.exit_code == 1 and "voxels per window" in result.output
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- errors that should be clear
def test_a_batch_goes_on_after_any_per_file_exception(tmp_path, monkeypatch):
    from satseg.inference import batch as segment_module

    run = tiny_run(tmp_path / "run", dims=3)
    first = write_nifti(tmp_path / "a.nii.gz", scan(seed=1))
    second = write_nifti(tmp_path / "b.nii.gz", scan(seed=2))
    real = segment_module.read_image

    def read_or_run_out_of_memory(path):
        if Path(path).name == "a.nii.gz":
            raise MemoryError("cannot allocate 8 GB")
        return real(path)

    monkeypatch.setattr(segment_module, "read_image", read_or_run_out_of_memory)
    report = segment_inputs([first, second], model=run, device="cpu")
    assert [f["input"] for f in report.failures] == [str(first)] and "out of memory" in report.failures[0]["error"]
    assert [r["input"] for r in report.results] == [str(second)] and (tmp_path / "b_seg.nii.gz").is_file()


def test_a_checkpoint_holding_python_objects_says_why_it_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"format": "satseg-checkpoint/1", "when": datetime.date(2020, 1, 1)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "Python objects" in info.value.message and "weights_only=False" not in str(info.value)


def test_resume_refuses_settings_it_would_ignore(tmp_path):
    from satseg.training.config import TrainConfig

    run = tiny_run(tmp_path / "run", dims=2)  # a run interrupted after epoch 1 (it holds checkpoint_last.pt)
    data = _preprocessed(tmp_path / "pp", 2, [{"train": [], "val": []}])
    config = TrainConfig(net="unet2d")
    for overrides, reason in (({"net": "vnet2d"}, "net 'vnet2d'"), ({"lr": 0.5}, "lr 0.5"), ({"epochs": 0}, None)):
        with pytest.raises(ConfigError, match=reason or "epochs"):
            if reason is None:  # fewer epochs than done: "epoch 14/5"
                payload = load_checkpoint(run / "checkpoint_last.pt")
                payload["epoch"] = 14
                torch.save(payload, run / "checkpoint_last.pt")
                overrides = {"epochs": 5}
            train(data, run, config, resume=True, resume_overrides=overrides, progress=False)
    result = _cli("train", "--data", data, "--out", run, "--resume", "--skip", "org", "--device", "cpu")
    assert result.exit_code == 1 and "skip 'org'" in result.output


def test_resume_refuses_the_training_recipe_options_it_would_ignore(tmp_path):
    run = tiny_run(tmp_path / "run", dims=2)  # trained without EMA and elastic, with deep supervision, rotation 180
    data = _preprocessed(tmp_path / "pp", 2, [{"train": [], "val": []}])
    before = files_under(tmp_path)
    for option, reason in (
        (["--ema", "0.9"], "ema 0.9 (the run has None)"),
        (["--rotation-deg", "10"], "rotation_deg 10.0 (the run has None)"),
        (["--elastic"], "elastic True (the run has False)"),
        (["--no-deep-supervision"], "deep_supervision False (the run has True)"),
        (["--no-augment"], "augment False (the run has True)"),
        (["--select-l1", "0.001"], "select_l1 0.001 (the run has 0.0)"),
        (["--scheduler", "constant"], "scheduler 'constant' (the run has 'poly')"),
        (["--gate", "attend_channels=2"], "model_options"),
    ):
        result = _cli("train", "--data", data, "--out", run, "--resume", "--device", "cpu", *option)
        assert result.exit_code == 1 and reason in result.output, (option, result.output)
    assert files_under(tmp_path) == before


def test_train_fold_all_checks_every_fold_run_before_any_fold_trains(tmp_path):
    data = _preprocessed(tmp_path / "pp", 2, [{"train": [], "val": []}, {"train": [], "val": []}])
    cv = tmp_path / "cv"
    tiny_run(cv / "fold_0", dims=2, fold=0)
    tiny_run(cv / "fold_1", dims=2, fold=0)  # fold 0's run copied into fold 1's folder
    before = files_under(tmp_path)
    # fold 0 alone would resume (and train, on no cases); fold 1 is refused first
    result = _cli("train", "--data", data, "--out", cv, "--fold", "all", "--resume", "--device", "cpu")
    assert result.exit_code == 1 and "fold 1 (the run has 0)" in result.output, result.output
    result = _cli("train", "--data", data, "--out", cv, "--fold", "all", "--resume", "--ema", "0.5", "--device", "cpu")
    assert result.exit_code == 1 and "ema 0.5" in result.output and "fold_0" in result.output, result.output
    result = _cli("train", "--data", data, "--out", cv, "--fold", "all", "--device", "cpu")  # without --resume
    assert result.exit_code == 1 and "already holds a run" in result.output, result.output
    assert files_under(tmp_path) == before


def test_small_errors_are_clear_and_early(tmp_path, monkeypatch):
    import nibabel as nib

    from satseg.inference.segmenter import Segmenter

    header = nib.Nifti1Header()
    header.set_data_shape((4, 0, 4))
    header["vox_offset"] = 352
    (tmp_path / "empty.nii").write_bytes(header.binaryblock + b"\0" * 4)
    with pytest.raises(DataError, match="empty axis") as info:
        read_image(tmp_path / "empty.nii")
    assert "channel" not in info.value.message.split("(")[0]
    # an unknown output ending is refused before the model runs
    run = tiny_run(tmp_path / "run", dims=3)
    monkeypatch.setattr(Segmenter, "segment", lambda *a, **k: pytest.fail("inference ran"))
    with pytest.raises(ConfigError, match="unknown image ending"):  # the whole run's outputs, planned first
        segment_inputs([write_nifti(tmp_path / "s.nii.gz", scan())], output=tmp_path / "x.txt", model=run)


def test_outputs_get_the_usual_permissions_and_killed_writers_leave_no_temporaries(tmp_path, msd_like):
    from satseg.data.preprocess import preprocess_dataset

    out = tmp_path / "pp"
    preprocess_dataset(msd_like, out, folds=2)
    stale = out / "cases" / ".case_0.npz.abc123.tmp"
    stale.mkdir()  # what a writer killed by SIGKILL leaves
    (stale / "case_0.npz").write_bytes(b"half")
    preprocess_dataset(msd_like, out, folds=2)
    assert not stale.exists() and not [p for p in out.rglob(".*") if ".tmp" in p.name]
    expected = 0o666 & ~_umask()
    for path in (out / "plan.json", out / "splits.json", *out.glob("cases/*")):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def msd_like(tmp_path):
    """A 4-case MSD dataset of tiny volumes."""
    root = tmp_path / "raw"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for i in range(4):
        image = scan((10, 12, 12), seed=i)
        write_nifti(root / "imagesTr" / f"case_{i}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"case_{i}.nii.gz", (image > 1).astype(np.uint8))
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "c"}}))
    return root


# ---------------------------------------------------------------- found in code review
def test_evaluate_model_refuses_to_validate_on_training_cases(tmp_path):
    _preprocessed(tmp_path / "pp", 3, [{"train": ["a"], "val": ["b"]}, {"train": ["b"], "val": ["a"]}])
    run = tiny_run(tmp_path / "run", dims=3, fold=-1)
    with pytest.raises(ConfigError, match="every case"):
        evaluate_model(run, tmp_path / "pp", tmp_path / "eval", split="val")
    run = tiny_run(tmp_path / "run0", dims=3, fold=0)
    with pytest.raises(ConfigError, match="among its training cases"):
        evaluate_model(run, tmp_path / "pp", tmp_path / "eval", split="val", fold=1)
    assert not (tmp_path / "eval").exists()


def test_attention_maps_are_computed_window_by_window(tmp_path):
    run = tiny_run(tmp_path / "run", dims=3)
    segmenter = load_segmenter(run, device="cpu")
    seen = []
    hook = segmenter.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[2:])))
    image = Image(scan((20, 40, 40))[None], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    seg = segmenter.segment(image, attention=True)
    hook.remove()
    assert seen and set(seen) == {(16, 16, 16)}, "the reference model only ever sees patch-sized windows"
    for name, attention in seg.attention.items():
        assert attention.spatial_shape == image.spatial_shape, name
        assert 0.0 <= attention.array.min() and attention.array.max() <= 1.0
    assert set(seg.attention) and LABELS
