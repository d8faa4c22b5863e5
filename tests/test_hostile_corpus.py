"""A corpus of malformed files, built here, fed to every command that reads files (postprocess included).

For every (command, hostile input) pair: exit code 1, exactly one line starting with ``error:``, no traceback,
no file created, changed or left half-written anywhere (outputs are asked for under ``out/``, which must not
appear). Oversized headers run in a child process whose peak memory (``ru_maxrss``) must stay within a bound.
"""

import gzip
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hostile import files_under, scan, tiny_plan, tiny_run, write_nifti
from typer.testing import CliRunner

from satseg.cli import app
from satseg.runs import LAST

GOOD_SHAPE = (12, 16, 16)


# ---------------------------------------------------------------- hostile files
def _nifti_header(shape, dtype=np.float32) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` grey pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def hostile_images(folder: Path) -> dict[str, Path]:
    """Malformed image files and folders (their names say what is wrong)."""
    folder.mkdir(parents=True)
    good = write_nifti(folder / "good.nii.gz", scan(GOOD_SHAPE)).read_bytes()
    files = {
        "truncated.nii.gz": good[: len(good) // 2],
        "not_gzip.nii.gz": b"\x1f\x8b not a NIfTI file at all " * 10,
        "empty.nii": b"",
        "zero_axis.nii": _nifti_header((4, 0, 4)),
        "truncated.png": _png_claiming(64, 64)[:40],
        "garbage.nrrd": b"NRRD0004\ntype: float\ndimension: banana\n\n",
    }
    paths = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    nan = scan(GOOD_SHAPE)
    nan[2, 3, 4] = np.nan
    paths["one_nan.nii.gz"] = write_nifti(folder / "one_nan.nii.gz", nan)
    dicom = folder / "garbage_dicom"
    dicom.mkdir()
    (dicom / "IM0001.dcm").write_bytes(b"DICM" + b"\0" * 200)
    paths["garbage_dicom"] = dicom
    (folder / "good.nii.gz").unlink()
    return paths


def oversized_images(folder: Path) -> dict[str, Path]:
    """Headers claiming about a gigabyte of voxels, in files of a few hundred bytes."""
    folder.mkdir(parents=True)
    files = {
        "huge.nii.gz": gzip.compress(_nifti_header((1000, 1000, 1000), np.uint8) + b"\0" * 4096),
        "huge.nii": _nifti_header((1000, 1000, 1000), np.uint8) + b"\0" * 4096,
        "huge.nrrd": b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1000 1000 1000\nencoding: raw\n\n" + b"\0" * 4096,
        "huge.mha": (
            b"ObjectType = Image\nNDims = 3\nDimSize = 1000 1000 1000\nElementType = MET_UCHAR\n"
            b"ElementDataFile = LOCAL\n" + b"\0" * 4096
        ),
        "huge.png": _png_claiming(30000, 30000),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def hostile_models(folder: Path, good_run: Path) -> dict[str, Path]:
    """Broken checkpoints and ONNX files."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True)
    raw = (good_run / LAST).read_bytes()
    payload = torch.load(good_run / LAST, weights_only=True)
    paths = {}
    (folder / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    paths["truncated.pt"] = folder / "truncated.pt"
    corrupted = bytearray(raw)
    corrupted[len(raw) // 2] ^= 0xFF
    (folder / "corrupted.pt").write_bytes(bytes(corrupted))
    paths["corrupted.pt"] = folder / "corrupted.pt"
    no_plan = {**payload, "config": {k: v for k, v in payload["config"].items() if k != "plan"}}
    torch.save(no_plan, folder / "no_plan.pt")
    paths["no_plan.pt"] = folder / "no_plan.pt"
    torch.save({**payload, "extra": Path("/")}, folder / "objects.pt")
    paths["objects.pt"] = folder / "objects.pt"
    nan = {**payload, "model": {k: v.clone() for k, v in payload["model"].items()}}
    next(v for v in nan["model"].values() if v.is_floating_point()).view(-1)[0] = float("nan")
    torch.save(nan, folder / "nan_weights.pt")
    paths["nan_weights.pt"] = folder / "nan_weights.pt"
    (folder / "garbage.onnx").write_bytes(b"not a protobuf" * 10)
    paths["garbage.onnx"] = folder / "garbage.onnx"
    dims = ["B", "C", "Z", "Y", "X"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])],
        "identity",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims)],
    )
    for name, metadata in (("no_metadata.onnx", {}), ("bad_metadata.onnx", {"satseg_config": "{not json"})):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save_model(model, str(folder / name))
        paths[name] = folder / name
    return paths


def hostile_runs(folder: Path, good_run: Path, models: dict[str, Path]) -> dict[str, Path]:
    """Run folders holding a broken checkpoint, or a good one with a broken ``postprocess.json``."""
    paths = {}
    for name, model in models.items():
        if name.endswith(".pt"):
            run = folder / f"checkpoint_{name[:-3]}"
            run.mkdir(parents=True)
            (run / LAST).write_bytes(model.read_bytes())
            paths[run.name] = run
    records = {
        "record_not_json": b"{",
        "record_a_list": b"[]",
        "record_not_utf8": b'{"lcc": {"\xff": true}}',
        "record_unknown_class": json.dumps({"lcc": {"tumour": True}}).encode(),
        "record_is_folder": None,  # postprocess.json is a folder: postprocess cannot write its record there
    }
    for name, record in records.items():
        run = folder / name
        run.mkdir(parents=True)
        (run / LAST).write_bytes((good_run / LAST).read_bytes())
        if record is None:
            (run / "postprocess.json").mkdir()
        else:
            (run / "postprocess.json").write_bytes(record)
        paths[name] = run
    return paths


def hostile_datasets(folder: Path) -> dict[str, Path]:
    """Dataset folders whose dataset.json is malformed (the images are fine)."""
    metas = {
        "json_list": b"[1, 2, 3]",
        "labels_list": json.dumps({"modality": {"0": "MRI"}, "labels": ["background", "x"]}).encode(),
        "modality_key": json.dumps({"modality": {"zero": "MRI"}, "labels": {"0": "background", "1": "x"}}).encode(),
        "not_utf8": b'{"labels": {"0": "\xff\xfe background"}}',
        "not_json": b"{labels: 0",
    }
    paths = {}
    image = scan(GOOD_SHAPE)
    for name, meta in metas.items():
        root = folder / name
        for sub in ("imagesTr", "labelsTr"):
            (root / sub).mkdir(parents=True)
        for i in range(2):
            write_nifti(root / "imagesTr" / f"c{i}.nii.gz", image)
            write_nifti(root / "labelsTr" / f"c{i}.nii.gz", (image > 1).astype(np.uint8))
        (root / "dataset.json").write_bytes(meta)
        paths[name] = root
    return paths


def hostile_preprocessed(folder: Path) -> dict[str, Path]:
    """Preprocessed folders (for train and evaluate --model) with a broken plan, splits or case."""

    def make(name, plan=None, splits=None, case=None):
        root = folder / name
        (root / "cases").mkdir(parents=True)
        (root / "plan.json").write_bytes(plan if plan is not None else json.dumps(tiny_plan(3)).encode())
        default = [{"train": ["a"], "val": ["a"]}]
        (root / "splits.json").write_bytes(splits if splits is not None else json.dumps(default).encode())
        if case is not None:
            (root / "cases" / "a.npz").write_bytes(case)
            (root / "cases" / "a.json").write_text("{}")
        return root

    return {
        "plan_not_json": make("plan_not_json", plan=b"{"),
        "plan_a_list": make("plan_a_list", plan=b"[]"),
        "splits_escape": make("splits_escape", splits=json.dumps([{"train": ["../../x"], "val": []}]).encode()),
        "splits_not_folds": make("splits_not_folds", splits=b'{"train": "a"}'),
        "case_truncated": make("case_truncated", case=b"PK\x03\x04 truncated"),
    }


# ---------------------------------------------------------------- the corpus
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    run3d = tiny_run(root / "run3d", dims=3)
    models = hostile_models(root / "models", run3d)
    (root / "good").mkdir()
    good = write_nifti(root / "good" / "scan.nii.gz", scan(GOOD_SHAPE))
    (root / "a_file").write_text("a file, not a folder")
    return {
        "root": root,
        "run": run3d,
        "good": good,
        "images": hostile_images(root / "images"),
        "models": models,
        "runs": hostile_runs(root / "runs", run3d, models),
        "datasets": hostile_datasets(root / "datasets"),
        "preprocessed": hostile_preprocessed(root / "preprocessed"),
    }


def _invocations(c) -> list[tuple[str, list[str]]]:
    root, run, good, out = c["root"], str(c["run"]), str(c["good"]), str(c["root"] / "out")
    cases = []
    for name, path in c["images"].items():
        cases.append((f"segment {name}", ["segment", str(path), "-o", f"{out}/x.nii.gz", "--model", run]))
        pred = root / "pred" / name  # evaluate --pred/--gt: the hostile file as prediction of case `c`
        cases.append((f"evaluate {name}", ["evaluate", "--pred", str(pred), "--gt", str(root / "gt"), "-o", out]))
    for name, path in c["models"].items():
        cases.append((f"segment --model {name}", ["segment", good, "-o", f"{out}/x.nii.gz", "--model", str(path)]))
        if name.endswith(".pt"):
            cases.append((f"export-onnx {name}", ["export-onnx", str(path), "-o", f"{out}/m.onnx"]))
        data = str(c["preprocessed"]["splits_escape"])
        cases.append((f"evaluate --model {name}", ["evaluate", "--model", str(path), "--data", data, "-o", out]))
    for name, path in c["runs"].items():
        data = str(c["preprocessed"]["case_truncated"])
        if name != "record_is_folder":  # (segment reads no record from a folder)
            cases.append((f"segment --model {name}", ["segment", good, "-o", f"{out}/x.nii.gz", "--model", str(path)]))
        # --overwrite: the old record is replaced, so the broken one is read (or found to be a folder), not just seen
        postprocess = ["postprocess", str(path), "--data", data, "--overwrite", "--device", "cpu"]
        cases.append((f"postprocess {name}", postprocess))
    for name, path in c["datasets"].items():
        cases.append((f"preprocess {name}", ["preprocess", str(path), "-o", f"{out}/pp"]))
    for name, path in c["preprocessed"].items():
        cases.append((f"train {name}", ["train", "--data", str(path), "--out", f"{out}/run", "--device", "cpu"]))
        cases.append((f"evaluate --data {name}", ["evaluate", "--model", run, "--data", str(path), "-o", out]))
        cases.append((f"postprocess --data {name}", ["postprocess", run, "--data", str(path), "--device", "cpu"]))
    for where in (f"{root}/a_file/x", "/proc/satseg-test/x"):  # outputs that cannot be written
        cases.append((f"segment -o {where}", ["segment", good, "-o", f"{where}.nii.gz", "--model", run]))
        cases.append((f"export-onnx -o {where}", ["export-onnx", run, "-o", f"{where}.onnx"]))
        dataset = str(c["datasets"]["json_list"].parent / "ok")
        cases.append((f"preprocess -o {where}", ["preprocess", dataset, "-o", where]))
    cases.append(("export-onnx -o a folder", ["export-onnx", run, "-o", str(root / "images")]))
    cases.append(("segment -o x.txt", ["segment", good, "-o", f"{out}/x.txt", "--model", run]))
    return cases


def _prepare_side_inputs(c) -> None:
    """Reference folders for the evaluate cases and one good dataset for the unwritable-output cases."""
    root = c["root"]
    if (root / "gt").exists():
        return
    (root / "gt").mkdir()
    write_nifti(root / "gt" / "c.nii.gz", (scan(GOOD_SHAPE) > 1).astype(np.uint8))
    for name, path in c["images"].items():
        folder = root / "pred" / name
        folder.mkdir(parents=True)
        target = folder / ("c" + path.name[path.name.index(".") :] if "." in path.name else "c")
        if path.is_dir():  # a DICOM folder is not a label file: use a garbage .nii.gz of the same bytes
            target = folder / "c.nii.gz"
            target.write_bytes(next(path.iterdir()).read_bytes())
        else:
            target.write_bytes(path.read_bytes())
    ok = c["datasets"]["json_list"].parent / "ok"
    for sub in ("imagesTr", "labelsTr"):
        (ok / sub).mkdir(parents=True)
    image = scan(GOOD_SHAPE)
    for i in range(2):
        write_nifti(ok / "imagesTr" / f"c{i}.nii.gz", image)
        write_nifti(ok / "labelsTr" / f"c{i}.nii.gz", (image > 1).astype(np.uint8))
    (ok / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "x"}}))


def test_every_command_refuses_every_malformed_input_cleanly(corpus):
    _prepare_side_inputs(corpus)
    root = corpus["root"]
    runner = CliRunner()
    problems = []
    invocations = _invocations(corpus)
    assert len(invocations) > 50
    for label, args in invocations:
        before = files_under(root)
        result = runner.invoke(app, args)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        after = files_under(root)
        if result.exit_code != 1 or len(errors) != 1 or "Traceback" in result.output or after != before:
            changed = sorted(after ^ before)[:3]
            problems.append(f"{label}: exit {result.exit_code}, {len(errors)} error line(s), changed {changed}: "
                            f"{result.output.strip()[-300:]}")  # fmt: skip
        elif "unexpected" in errors[0]:
            problems.append(f"{label}: not a clear error: {errors[0]}")
    assert problems == []


def test_oversized_headers_are_refused_within_a_memory_bound(tmp_path):
    """In a child process: every command meets files claiming ~1 GB; its peak memory may grow by 200 MB at most."""
    images = oversized_images(tmp_path / "huge")
    run = tiny_run(tmp_path / "run", dims=3)
    (tmp_path / "gt").mkdir()
    write_nifti(tmp_path / "gt" / "huge.nii.gz", (scan(GOOD_SHAPE) > 1).astype(np.uint8))
    dataset = tmp_path / "dataset"
    for sub in ("imagesTr", "labelsTr"):
        (dataset / sub).mkdir(parents=True)
    (dataset / "imagesTr" / "huge.nii.gz").write_bytes(images["huge.nii.gz"].read_bytes())
    write_nifti(dataset / "labelsTr" / "huge.nii.gz", np.zeros(GOOD_SHAPE, np.uint8))
    (dataset / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "bg", "1": "x"}}))
    calls = [
        ["segment", str(p), "-o", str(tmp_path / "out" / "x.nii.gz"), "--model", str(run)] for p in images.values()
    ]
    for name in ("huge.nii.gz", "huge.nii"):
        pred = tmp_path / "pred" / name
        pred.mkdir(parents=True)
        (pred / name).write_bytes(images[name].read_bytes())
        calls.append(["evaluate", "--pred", str(pred), "--gt", str(tmp_path / "gt"), "-o", str(tmp_path / "out")])
    calls.append(["preprocess", str(dataset), "-o", str(tmp_path / "out" / "pp")])
    warm_up = ["segment", str(tmp_path / "gt" / "huge.nii.gz"), "--model", str(run), "-o", "/proc/none.nii.gz"]
    script = textwrap.dedent(
        f"""
        import json, resource, sys
        from typer.testing import CliRunner
        from satseg.cli import app
        runner = CliRunner()
        runner.invoke(app, {warm_up!r})  # imports and one model load: the baseline
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        codes = [runner.invoke(app, args).exit_code for args in {calls!r}]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"codes": codes, "growth_kb": peak - base}}))
        """
    )
    limit = 6 * 2**30  # a safety net only: the bound asserted below is far lower

    def cap_address_space():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, preexec_fn=cap_address_space
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == [1] * len(calls)
    assert result["growth_kb"] < 200 * 1024
    assert not (tmp_path / "out").exists()
