"""Ensembles average probabilities; largest-component post-processing is decided per class and applied as recorded."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from tiny_models import mri_plan, save_model
from typer.testing import CliRunner

from satseg.atomic import atomic_write_json
from satseg.cli import app
from satseg.data.io import Image
from satseg.data.synthetic import write_synthetic_msd
from satseg.errors import ConfigError
from satseg.evaluation.postprocess import decide_lcc
from satseg.inference.postprocess import POSTPROCESS_FILE, keep_largest_component
from satseg.inference.segmenter import load_segmenter


def _scan(seed=0, shape=(14, 20, 18), spacing=(1.5, 1.2, 1.3)):
    """An MRI-like scan off the plan's 2 mm grid, so that preprocessing and the return both resample."""
    array = np.random.default_rng(seed).random(shape).astype(np.float32) * 300 + 20
    return Image(array[None], spacing, (3.0, -2.0, 1.0), tuple(np.eye(3).ravel()))


@pytest.fixture
def runs(tmp_path):
    """Two untrained runs (different weights) on the same plan, as the two folds of one folder."""
    return [save_model(tmp_path / "cv" / f"fold_{k}", mri_plan(), seed=10 + k, fold=k) for k in range(2)]


def test_ensemble_probabilities_are_the_mean_of_the_members(runs):
    image = _scan()
    one, two = (load_segmenter(r, device="cpu").segment(image, probabilities=True) for r in runs)
    both = load_segmenter(runs, device="cpu")
    assert both.members == 2
    seg = both.segment(image, probabilities=True)
    mean = (one.probabilities.array + two.probabilities.array) / 2
    assert np.abs(one.probabilities.array - two.probabilities.array).max() > 1e-3  # the members differ
    np.testing.assert_allclose(seg.probabilities.array, mean, atol=2e-6)
    ranked = np.sort(mean, axis=0)
    clear = ranked[-1] - ranked[-2] > 1e-4  # away from ties, the labels are the mean's argmax
    np.testing.assert_array_equal(seg.labels.array[0][clear], mean.argmax(0)[clear])

    folder = load_segmenter(runs[0].parent, device="cpu")  # a folder of fold runs is the same ensemble
    assert folder.members == 2
    np.testing.assert_allclose(folder.segment(image, probabilities=True).probabilities.array, mean, atol=2e-6)


def test_a_low_memory_ensemble_runs_its_members_on_onnx_runtime_with_the_same_mean(runs, monkeypatch):
    """With --low-memory the members run on ONNX Runtime without its arena (each session returns its
    activations after every window, as PyTorch does): the same mean probabilities as the PyTorch ensemble.
    glibc's process-wide setting is recorded, not made, in this shared test process."""
    import satseg.inference.backends as backends

    calls = []
    monkeypatch.setattr(backends, "unmap_freed_blocks", lambda: calls.append(1) or True)
    image = _scan()
    reference = load_segmenter(runs, device="cpu")
    assert reference.backend == "torch"  # the default ensemble: PyTorch members
    low = load_segmenter(runs, device="cpu", low_memory=True)
    assert low.backend == "onnx" and low.members == 2 and len(calls) == 2
    assert not any(p.session.get_session_options().enable_cpu_mem_arena for p in (m.predict for m in low.parts))
    expected = reference.segment(image, probabilities=True).probabilities.array
    np.testing.assert_allclose(low.segment(image, probabilities=True).probabilities.array, expected, atol=1e-5)


def test_models_with_other_preprocessing_are_not_averaged(runs, tmp_path):
    other = save_model(tmp_path / "other", mri_plan(spacing=(1.0, 1.0, 1.0)), seed=3)
    with pytest.raises(ConfigError, match="plans differ in spacing"):
        load_segmenter([runs[0], other], device="cpu")


def test_largest_component_removes_a_distant_blob_only():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:10, 2:10] = 1  # 512 voxels
    labels[15:17, 15:17, 15:17] = 1  # a distant blob of 8
    labels[10, 10, 10] = 1  # touches the big cube at a corner only: connected (full connectivity)
    labels[14:18, 2:4, 2:4] = 2  # class 2 is left alone
    kept = keep_largest_component(labels, 1)
    expected = labels.copy()
    expected[15:17, 15:17, 15:17] = 0
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(keep_largest_component(kept, 1), kept)  # one component: unchanged


def _sphere(shape, centre, radius):
    return np.linalg.norm(np.indices(shape) - np.reshape(centre, (3, 1, 1, 1)), axis=0) < radius


def test_decision_follows_validation_dice_and_is_recorded_in_every_run(tmp_path, monkeypatch):
    """Class a: predictions carry a stray blob (the component helps). Class b: two true parts (it hurts)."""
    shape = (24, 24, 24)
    reference = np.zeros(shape, np.uint8)
    reference[_sphere(shape, (8, 8, 8), 5)] = 1
    reference[_sphere(shape, (8, 18, 18), 3)] = 2
    reference[_sphere(shape, (18, 18, 8), 2.5)] = 2
    prediction = reference.copy()
    prediction[_sphere(shape, (19, 6, 19), 2)] = 1

    class Stub:
        labels = {"background": 0, "a": 1, "b": 2}
        config = {"train": {"fold": 0}}

        def segment(self, image, source, lcc, progress):
            assert lcc is False
            progress(1, 1)  # the bar over the current case's windows (satseg postprocess shows it)
            return type("Seg", (), {"labels": Image(prediction[None], (1.0,) * 3, (0.0,) * 3, (1.0,) * 9)})()

    import satseg.evaluation.postprocess as deciding

    monkeypatch.setattr(deciding, "load_segmenter", lambda run, device, amp=None: Stub())
    monkeypatch.setattr(deciding, "split_cases", lambda data, split, fold: ["c0", "c1"])
    monkeypatch.setattr(deciding, "read_original_case", lambda data, case: (None, reference, case))
    folders = [tmp_path / "fold_0", tmp_path / "fold_1"]
    for folder in folders:
        folder.mkdir()
    for name, labels in (("pp", Stub.labels), ("other_pp", {"background": 0, "liver": 1})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "plan.json").write_text(json.dumps({"labels": labels}), encoding="utf-8")
    with pytest.raises(ConfigError, match="predicts labels"):  # runs of other data decide nothing
        decide_lcc(folders, tmp_path / "other_pp")
    assert not any((folder / POSTPROCESS_FILE).exists() for folder in folders)
    record = decide_lcc(folders, tmp_path / "pp", progress=True)

    a, stray = reference == 1, _sphere(shape, (19, 6, 19), 2)
    b_big, b_all = _sphere(shape, (8, 18, 18), 3), reference == 2
    assert record["lcc"] == {"a": True, "b": False}
    assert record["dice_without"]["a"] == pytest.approx(2 * a.sum() / (2 * a.sum() + stray.sum()))
    assert record["dice_with"]["a"] == pytest.approx(1.0)
    assert record["dice_with"]["b"] == pytest.approx(2 * b_big.sum() / (b_big.sum() + b_all.sum()))
    assert record["cases"] == 4  # two cases for each of two runs
    for folder in folders:
        assert json.loads((folder / POSTPROCESS_FILE).read_text(encoding="utf-8")) == record
    with pytest.raises(ConfigError, match="exists"):  # never replaced without --overwrite
        decide_lcc(folders, tmp_path / "pp")
    # one run given twice (`postprocess A A`, `A ./A/`) counts its cases once
    twice = decide_lcc([folders[0], folders[0], f"{folders[0]}/"], tmp_path / "pp", overwrite=True)
    assert twice["cases"] == 2 and len(twice["runs"]) == 1


def test_segment_applies_the_recorded_post_processing(runs):
    image = _scan(seed=4)
    plain = load_segmenter(runs[0], device="cpu").segment(image, lcc=False).labels.array[0]
    atomic_write_json(runs[0] / POSTPROCESS_FILE, {"lcc": {"a": False, "b": True}})
    segmenter = load_segmenter(runs[0], device="cpu")
    assert segmenter.lcc == ["b"]
    recorded = segmenter.segment(image)
    assert recorded.lcc == ["b"]
    expected = keep_largest_component(plain, 2)
    assert (expected != plain).any()  # the untrained model's class b comes in several pieces
    np.testing.assert_array_equal(recorded.labels.array[0], expected)
    everything = segmenter.segment(image, lcc=True)
    np.testing.assert_array_equal(everything.labels.array[0], keep_largest_component(expected, 1))
    np.testing.assert_array_equal(segmenter.segment(image, lcc=False).labels.array[0], plain)


def test_segment_model_list_forms_make_the_same_ensemble(runs, tmp_path):
    """`--model A --model B`, `--model A,B` and the folder of both runs all average the two runs."""
    from satseg.data.io import write_image

    image = _scan(seed=2)
    scan = tmp_path / "scan.nii.gz"
    write_image(image, scan)
    expected = load_segmenter(runs, device="cpu").segment(image).labels.array[0]
    forms = {
        "repeated": ["--model", str(runs[0]), "--model", str(runs[1])],
        "commas": ["--model", f"{runs[0]},{runs[1]}"],
        "folder": ["--model", str(runs[0].parent)],
    }
    for name, model_args in forms.items():
        target = tmp_path / f"{name}.nii.gz"
        result = CliRunner().invoke(app, ["segment", str(scan), "-o", str(target), *model_args, "--device", "cpu",
                                          "--json"])  # fmt: skip
        assert result.exit_code == 0, (name, result.output)
        (row,) = json.loads(result.stdout)["results"]
        assert row["models_averaged"] == 2, name
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target))), expected, err_msg=name)

    renamed = runs[0].parent / "fold,0"  # a run folder whose name holds a comma stays one model
    runs[0].rename(renamed)
    result = CliRunner().invoke(app, ["segment", str(scan), "-o", str(tmp_path / "one.nii.gz"), "--model",
                                      str(renamed), "--device", "cpu", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["models_averaged"] == 1


@pytest.mark.slow
def test_train_every_fold_then_segment_with_their_ensemble(tmp_path):
    from satseg.data.preprocess import preprocess_dataset

    raw = write_synthetic_msd(tmp_path / "raw", 4, (16, 16, 16), spacing=(1.0,) * 3, seed=0, oblique=False,
                              two_structures=False, noise=0.2)  # fmt: skip
    preprocess_dataset(raw, tmp_path / "pp", folds=2, seed=0)
    args = ["train", "--data", str(tmp_path / "pp"), "--out", str(tmp_path / "cv"), "--fold", "all", "--net",
            "unet3d", "--features", "4,8", "--patch", "16,16,16", "--epochs", "1", "--iters", "2", "--batch", "2",
            "--optimizer", "adam", "--device", "cpu", "--json"]  # fmt: skip
    trained = CliRunner().invoke(app, args)
    assert trained.exit_code == 0, trained.output
    assert [r["run_dir"] for r in json.loads(trained.stdout)] == [str(tmp_path / "cv" / f"fold_{k}") for k in (0, 1)]
    for k in (0, 1):
        config = json.loads((tmp_path / "cv" / f"fold_{k}" / "config.json").read_text(encoding="utf-8"))
        assert config["train"]["fold"] == k
    again = CliRunner().invoke(app, args)  # finished folds are not trained over
    assert again.exit_code == 1 and "already holds a run" in again.stderr

    scan = next((raw / "imagesTr").glob("*.nii.gz"))
    segmented = CliRunner().invoke(app, ["segment", str(scan), "-o", str(tmp_path / "seg.nii.gz"), "--model",
                                         str(tmp_path / "cv"), "--device", "cpu", "--json"])  # fmt: skip
    assert segmented.exit_code == 0, segmented.output
    (result,) = json.loads(segmented.stdout)["results"]
    assert result["models_averaged"] == 2
    assert sitk.ReadImage(str(tmp_path / "seg.nii.gz")).GetSize() == sitk.ReadImage(str(scan)).GetSize()
