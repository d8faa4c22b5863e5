"""The CPU sliding window chosen for throughput (`segment --tile auto`), checked against hand-computed sides
and against the window counts of `window_starts` (how many windows the tiling really runs)."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import satseg.inference.segmenter as segmenter_module
from satseg.cli import app
from satseg.data.io import Image, write_image
from satseg.errors import ConfigError
from satseg.inference.segmenter import load_segmenter
from satseg.inference.sliding_window import throughput_tile, window_starts
from satseg.nn import build_model
from satseg.runs import LAST, MAX_PATCH_VOXELS, save_checkpoint


def _computed_voxels(shape, window, overlap):
    """Voxels the network computes: windows per axis (as the tiling runs them) times the window's voxels."""
    counts = [len(window_starts(max(s, w), w, overlap)) for s, w in zip(shape, window, strict=True)]
    return math.prod(counts) * math.prod(window)


def test_a_scan_that_fits_is_one_window_rounded_up_to_the_divisor():
    assert throughput_tile((50, 70, 33), (16, 16, 16), 8, 0.5, 10**9) == (56, 72, 40)
    assert throughput_tile((10, 12), (16, 16), 8, 0.5, 10**9) == (16, 16)  # never below the training patch


def test_over_budget_the_cheapest_split_is_taken():
    # Half the scan fits. Three windows of 256 / (1 + 2 * 0.5) = 128 along one 256 axis compute
    # 3 x 4.19 M = 12.6 M voxels; two windows along both 256 axes (176 = ceil(256 / 1.5) rounded up to 8)
    # compute 4 x 3.96 M = 15.9 M; two windows along one axis only are over budget (5.8 M voxels).
    shape, patch, budget = (256, 256, 128), (48, 64, 48), 256 * 256 * 128 // 2
    tile = throughput_tile(shape, patch, 8, 0.5, budget)
    assert tile == (128, 256, 128)
    assert _computed_voxels(shape, tile, 0.5) == 3 * 128 * 256 * 128
    assert _computed_voxels(shape, (176, 176, 128), 0.5) == 4 * 176 * 176 * 128


@pytest.mark.parametrize("budget", [16 * 16, 24 * 24, 40 * 24, 48 * 40, 64 * 48])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_the_tile_is_as_cheap_as_an_exhaustive_search_over_every_allowed_window(budget, overlap):
    shape, patch = (60, 44), (16, 16)
    allowed = [(a, b) for a in range(16, 65, 8) for b in range(16, 49, 8) if a * b <= budget]
    cheapest = min(_computed_voxels(shape, w, overlap) for w in allowed)
    tile = throughput_tile(shape, patch, 8, overlap, budget)
    assert math.prod(tile) <= budget and _computed_voxels(shape, tile, overlap) == cheapest


@pytest.mark.parametrize("budget", [60**3, 100**3, 150**3, 220**3])
def test_tiles_fit_the_budget_and_compute_fewer_voxels_than_the_training_patch(budget):
    shape, patch, overlap = (200, 230, 120), (48, 64, 48), 0.5
    tile = throughput_tile(shape, patch, 8, overlap, budget)
    assert math.prod(tile) <= budget and all(t % 8 == 0 and t >= p for t, p in zip(tile, patch, strict=True))
    saving = 0.9 if budget < 100**3 else 0.5  # just above the patch's size there is little room
    assert _computed_voxels(shape, tile, overlap) < saving * _computed_voxels(shape, patch, overlap)


def test_a_budget_below_the_patch_keeps_the_patch():
    assert throughput_tile((200, 200, 200), (48, 64, 48), 8, 0.5, 1000) == (48, 64, 48)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    torch.manual_seed(0)
    arch = {"net": "unet3d", "skip": "sat", "in_channels": 1, "out_channels": 2, "features": [4, 8, 16]}
    plan = {
        "spatial_dims": 3, "num_channels": 1, "channel_names": ["MRI"], "modality": "mri",
        "labels": {"background": 0, "a": 1}, "spacing": None, "size": None,
        "normalization": [{"scheme": "zscore", "modality": "mri"}], "patch_size": [8, 8, 8],
    }  # fmt: skip
    folder = tmp_path_factory.mktemp("run")
    model = build_model(**arch).eval()
    save_checkpoint(folder / LAST, model=model, run_config={"model": model.config, "plan": plan})
    return load_segmenter(folder, device="cpu")


def test_auto_window_on_cpu_is_the_scan_one_per_pass_unless_memory_says_otherwise(segmenter, monkeypatch):
    assert segmenter.window((20, 30, 9), "auto", 0.5, 4) == ((20, 32, 12), 1)
    assert segmenter.window((20, 30, 9), "patch", 0.5, 4) == ((8, 8, 8), 4)
    assert segmenter.window((20, 30, 9), (12, 16, 8), 0.5, 4) == ((12, 16, 8), 4)
    per_voxel = segmenter.window_bytes_per_voxel()
    # Widths 4, 8, 16: the first level's conv outputs alone are 4 channels of float32 per voxel.
    assert 16 < per_voxel < 4000
    budget = int(per_voxel * segmenter_module._WINDOW_SLACK * 2000)  # room for 2,000 voxels: 12 x 12 x 12
    monkeypatch.setattr(segmenter_module, "_CPU_WINDOW_BYTES", budget)
    window, batch = segmenter.window((20, 30, 9), "auto", 0.5, 4)
    assert batch == 1 and math.prod(window) <= 2000 and all(w % 4 == 0 for w in window)
    for bad in [(12, 16), (12, 16, 10)]:
        with pytest.raises(ConfigError, match="multiple of 4"):
            segmenter.window((20, 30, 9), bad)


def test_auto_window_segments_a_scan_as_one_forward_of_the_padded_scan(segmenter):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(1, 20, 30, 9)).astype(np.float32) + 3.0
    image = Image(array, (1.0, 1.0, 1.0), (0, 0, 0), tuple(np.eye(3).ravel()))
    seg = segmenter.segment(image, tile="auto")
    assert seg.window == (20, 32, 12)
    # Reference: the reference model itself on the z-scored scan zero-padded symmetrically to the window.
    x = torch.from_numpy((array - array.mean()) / array.std())
    x = torch.nn.functional.pad(x, (1, 2, 1, 1, 0, 0))[None]
    with torch.no_grad():
        expected = segmenter.model(x)[0].argmax(0)[:, 1:31, 1:10]
    assert np.array_equal(seg.labels.array[0], expected.numpy().astype(np.uint8))


def test_cpu_default_backend_is_onnx_runtime_exported_once_and_agrees_with_torch(segmenter, tmp_path, monkeypatch):
    monkeypatch.setenv("SATSEG_CACHE", str(tmp_path / "cache"))
    folder = segmenter.name
    first = load_segmenter(folder, device="cpu")
    exports = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert first.backend == "onnx" and len(exports) == 1
    stamp = exports[0].stat().st_mtime_ns
    second = load_segmenter(folder, device="cpu")
    assert second.backend == "onnx" and exports[0].stat().st_mtime_ns == stamp  # reused, not exported again
    torch_segmenter = load_segmenter(folder, device="cpu", backend="torch")
    assert torch_segmenter.backend == "torch"
    rng = np.random.default_rng(1)
    image = Image(rng.normal(size=(1, 20, 30, 9)).astype(np.float32), (1.0,) * 3, (0, 0, 0), tuple(np.eye(3).ravel()))
    onnx_seg = first.segment(image, tile="patch", probabilities=True)
    torch_seg = torch_segmenter.segment(image, tile="patch", probabilities=True)
    np.testing.assert_allclose(onnx_seg.probabilities.array, torch_seg.probabilities.array, atol=1e-5)
    assert first.model is not None  # the torch model stays for attention maps


def test_windows_stay_within_satseg_s_bound_on_any_scan(segmenter, monkeypatch):
    monkeypatch.setattr(segmenter_module, "_CPU_WINDOW_BYTES", 2**50)  # memory would allow any window …
    monkeypatch.setattr(segmenter_module, "_available_memory", lambda: None)
    window, _ = segmenter.window((300, 300, 300), "auto", 0.5, 4)
    assert math.prod(window) <= MAX_PATCH_VOXELS < 300**3  # … the 256³-voxel bound still splits the scan
    assert all(w % 4 == 0 for w in window)
    with pytest.raises(ConfigError, match="voxels per window"):
        segmenter.window((300, 300, 300), (300, 300, 300))


def test_an_ensemble_window_suits_every_member_and_runs_in_torch(segmenter, tmp_path):
    # A second run on the same plan whose U-Net pools once (divisor 2): the ensemble's sides stay multiples of 4.
    arch = {"net": "unet3d", "skip": "org", "in_channels": 1, "out_channels": 2, "features": [4, 8]}
    save_checkpoint(tmp_path / "shallow" / LAST, model=build_model(**arch).eval(),
                    run_config={"model": arch, "plan": segmenter.plan})  # fmt: skip
    shallow = load_segmenter(tmp_path / "shallow", device="cpu")
    assert shallow.input_divisor() == 2 and segmenter.input_divisor() == 4
    both = load_segmenter([segmenter.name, tmp_path / "shallow"], device="cpu")
    assert both.members == 2 and both.input_divisor() == 4
    # One model runs in ONNX Runtime on the CPU; an ensemble's members in PyTorch (one arena each would add up).
    assert segmenter.backend == shallow.backend == "onnx" and both.backend == "torch"
    assert both.window_bytes_per_voxel() > max(segmenter.window_bytes_per_voxel(), shallow.window_bytes_per_voxel())
    assert both.window((18, 30, 9), "auto")[0] == (20, 32, 12)
    with pytest.raises(ConfigError, match="multiple of 4"):
        both.window((18, 30, 9), (18, 30, 10))


@pytest.mark.parametrize(
    "tile", [["--tile", "8", "16", "12"], ["--tile", "8,16,12"], ["--tile", "8", "--tile", "16,12"]]
)
def test_cli_tile_is_a_list_option(segmenter, tmp_path, tile):
    rng = np.random.default_rng(2)
    array = rng.normal(size=(1, 20, 30, 9)).astype(np.float32) + 3.0
    write_image(Image(array, (1.0, 1.0, 1.0), (0, 0, 0), tuple(np.eye(3).ravel())), tmp_path / "scan.nii.gz")
    args = ["segment", "--model", segmenter.name, "--device", "cpu", "-o", str(tmp_path / "out"), "--json", *tile]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "scan.nii.gz")])
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)["results"]
    assert entry["window"] == [8, 16, 12] and entry["backend"] == "onnx"


def test_window_memory_is_measured_once_and_kept_beside_the_cached_export(tmp_path, monkeypatch):
    monkeypatch.setenv("SATSEG_CACHE", str(tmp_path / "cache"))
    arch = {"net": "unet3d", "skip": "sat", "in_channels": 1, "out_channels": 2, "features": [4, 8]}
    plan = {
        "spatial_dims": 3, "num_channels": 1, "channel_names": ["MRI"], "modality": "mri",
        "labels": {"background": 0, "a": 1}, "spacing": None, "size": None,
        "normalization": [{"scheme": "zscore", "modality": "mri"}], "patch_size": [8, 8, 8],
    }  # fmt: skip
    model = build_model(**arch).eval()
    save_checkpoint(tmp_path / LAST, model=model, run_config={"model": model.config, "plan": plan})
    first = load_segmenter(tmp_path, device="cpu")
    assert first.backend == "onnx" and first.voxel_bytes_file.parent == tmp_path / "cache" / "onnx"
    measured = first.window_bytes_per_voxel()
    assert json.loads(first.voxel_bytes_file.read_text()) == {"window_bytes_per_voxel": measured}

    # A new process reads it back and never measures (the measurement's first use imports torch._dynamo).
    class NoMeasuring:
        def __init__(self):
            raise AssertionError("measured again")

    monkeypatch.setattr("satseg.nn.params.LiveTensorBytes", NoMeasuring)  # imported where it measures
    second = load_segmenter(tmp_path, device="cpu")
    assert second.window_bytes_per_voxel() == measured
    assert second.window((20, 30, 9), "auto", 0.5, 4) == first.window((20, 30, 9), "auto", 0.5, 4)

    # A corrupt or nonsensical cache entry is measured again and rewritten, never trusted.
    monkeypatch.undo()
    monkeypatch.setenv("SATSEG_CACHE", str(tmp_path / "cache"))
    for bad in ["{", '{"window_bytes_per_voxel": -1}', '{"window_bytes_per_voxel": "NaN"}', "[]"]:
        first.voxel_bytes_file.write_text(bad)
        assert load_segmenter(tmp_path, device="cpu").window_bytes_per_voxel() == measured
        assert json.loads(first.voxel_bytes_file.read_text()) == {"window_bytes_per_voxel": measured}
