"""`segment` with a cached CPU export runs without torch (issue 26): the export is found from the checkpoint's
bytes, and the windows, resampling and writing run on NumPy, SimpleITK and ONNX Runtime.

References: the subprocess's own ``-X importtime`` list (torch appears in it on the cold run, so the check can
fail), the PyTorch backend's mask and probabilities, SciPy's softmax and Gaussian window, and the input's own
grid read back with SimpleITK.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.signal.windows import gaussian
from scipy.special import softmax
from tiny_models import mri_plan, save_model

import satseg
import satseg.device as device_module
import satseg.inference.backends as backends
from satseg.inference.segmenter import load_segmenter
from satseg.inference.sliding_window import sliding_window_inference
from satseg.inference.tiling import blend_windows, gaussian_weights
from satseg.runs import LAST

REPO = Path(satseg.__file__).resolve().parents[1]


# ---------------------------------------------------------------- the NumPy blend against the PyTorch one
def _logits(x: np.ndarray) -> np.ndarray:
    """``(B, 1, *P) -> (B, 3, *P)`` logits, not mirror-symmetric (a running sum along the last axis)."""
    x = x[:, 0].astype(np.float64)
    running = np.cumsum(x, axis=-1) / x.shape[-1]
    return np.stack([x, 0.5 - x**2, running], axis=1).astype(np.float32)


def _torch_logits(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(_logits(x.numpy()))


@pytest.mark.parametrize(
    "shape, patch, tta, sw_batch",
    [((13, 22, 9), (8, 8, 12), False, 3), ((13, 22, 9), (8, 8, 12), True, 2), ((30, 17), (16, 8), True, 4)],
)
def test_numpy_blend_matches_the_torch_sliding_window(shape, patch, tta, sw_batch):
    """Padding (9 < 12), several windows per axis, mirrorings and batches: the same probabilities."""
    image = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    reference = sliding_window_inference(
        _torch_logits, torch.from_numpy(image), patch, 3, overlap=0.5, sw_batch=sw_batch, tta=tta,
        return_probabilities=True,
    ).probabilities.numpy()  # fmt: skip
    seen = []
    probs = blend_windows(
        _logits, image, patch, 3, overlap=0.5, sw_batch=sw_batch, tta=tta, progress=lambda d, t: seen.append((d, t))
    )
    assert probs.shape == (3, *shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, reference, atol=2e-6)
    assert seen[-1][0] == seen[-1][1] > 1
    ordered = np.sort(reference, axis=0)
    decided = ordered[-1] - ordered[-2] > 1e-4  # away from near-ties, the labels are the same
    assert (probs.argmax(0) == reference.argmax(0))[decided].all()


def test_numpy_blend_of_one_window_is_the_softmax_of_one_forward_pass():
    image = np.random.default_rng(1).normal(size=(1, 6, 10, 8)).astype(np.float32)
    probs = blend_windows(_logits, image, (8, 16, 8), 3)  # padded to 8 x 16 x 8: one window
    padded = np.pad(image, [(0, 0), (1, 1), (3, 3), (0, 0)])
    expected = softmax(_logits(padded[None]).astype(np.float64), axis=1)[0][:, 1:7, 3:13, :]
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_gaussian_weights_are_scipy_gaussian_windows_multiplied():
    weights = gaussian_weights((8, 13, 4))
    expected = np.einsum("i,j,k->ijk", *(gaussian(side, side / 8) for side in (8, 13, 4)))
    expected = np.maximum(expected / expected.max(), 1e-4)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert weights.dtype == np.float32


# ---------------------------------------------------------------- the cache found from a checkpoint's bytes
def test_cached_export_is_found_from_the_checkpoint_bytes_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("SATSEG_CACHE", str(tmp_path / "cache"))
    run = save_model(tmp_path / "run", mri_plan(), seed=0)
    assert backends.find_cached_export(run / LAST) is None  # nothing exported yet
    cold = load_segmenter(run, device="cpu")
    assert cold.backend == "onnx" and cold.model is not None
    onnx_path, sha256 = backends.find_cached_export(run / LAST)
    assert onnx_path.parent == tmp_path / "cache" / "onnx" and onnx_path.suffix == ".onnx"

    warm = load_segmenter(run, device="cpu")  # found without loading the checkpoint
    assert warm.backend == "onnx" and warm.model is None and warm.checkpoint == run / LAST
    assert warm.config == cold.config and warm.input_divisor() == cold.reference_model().input_divisor

    other = save_model(tmp_path / "other", mri_plan(), seed=1)  # other weights: another key, no entry
    assert backends.find_cached_export(other / LAST) is None

    # A changed export is not used: the checkpoint is loaded again, exported again and recorded again.
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    reloaded = load_segmenter(run, device="cpu")
    assert reloaded.backend == "onnx" and reloaded.model is not None
    assert backends.find_cached_export(run / LAST)[1] == sha256 != __import__("hashlib").sha256(data).hexdigest()
    assert load_segmenter(run, device="cpu").model is None  # warm again

    # A hostile entry (a name leaving the cache folder) is ignored, never followed.
    entry = next((tmp_path / "cache" / "onnx" / "checkpoints").glob("*.json"))
    (tmp_path / "evil.onnx").write_bytes(onnx_path.read_bytes())
    entry.write_text(json.dumps({"export": "../../evil.onnx", "sha256": sha256}))
    assert backends.find_cached_export(run / LAST) is None


def test_attention_maps_from_a_warm_export_load_the_checkpoint_on_demand(tmp_path, monkeypatch):
    from satseg.data.io import Image

    monkeypatch.setenv("SATSEG_CACHE", str(tmp_path / "cache"))
    run = save_model(tmp_path / "run", mri_plan(), seed=0)
    cold = load_segmenter(run, device="cpu")
    warm = load_segmenter(run, device="cpu")
    assert warm.model is None
    array = np.random.default_rng(2).normal(100, 20, size=(1, 14, 18, 12)).astype(np.float32)
    image = Image(array, spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))
    expected, got = cold.segment(image, attention=True), warm.segment(image, attention=True)
    assert warm.model is not None and set(got.attention) == set(expected.attention) != set()
    for name, maps in expected.attention.items():
        np.testing.assert_allclose(got.attention[name].array, maps.array, atol=1e-6)
    np.testing.assert_array_equal(got.labels.array, expected.labels.array)


def test_surely_cpu_is_decided_without_torch(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(device_module, "_GPU_NODES", (str(tmp_path / "no-such-node"),))
    assert device_module.surely_cpu("cpu") and device_module.surely_cpu("auto")
    assert not device_module.surely_cpu("cuda") and not device_module.surely_cpu("cuda:0")
    (tmp_path / "nvidia0").touch()
    monkeypatch.setattr(device_module, "_GPU_NODES", (str(tmp_path / "nvidia0"),))
    assert not device_module.surely_cpu("auto")  # a GPU may be there: torch decides
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device_module.surely_cpu("auto")


# ---------------------------------------------------------------- the whole command in a fresh process
def _segment(args: list[str], cache: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``python -X importtime -m satseg segment …`` and the modules that process imported."""
    env = {**os.environ, "SATSEG_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [sys.executable, "-X", "importtime", "-m", "satseg", "segment", *args]
    result = subprocess.run(
        command, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600, cwd=REPO
    )  # UTF-8 whatever the locale (CI runs with an ASCII one)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result, imported


def _uses_torch(imported: set[str]) -> bool:
    return any(name == "torch" or name.startswith("torch.") for name in imported)


def _read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


@pytest.mark.slow
def test_segment_with_a_warm_cache_imports_no_torch_and_writes_the_same_mask(tmp_path):
    run = save_model(tmp_path / "run", mri_plan(), seed=0, gain=1.5)
    # An oblique, anisotropic scan off the plan's 2 mm grid: resampled there and back.
    rng = np.random.default_rng(3)
    zyx = np.mgrid[0:15, 0:22, 0:19].astype(np.float32)
    blob = np.exp(-(((zyx - np.array([7, 11, 9])[:, None, None, None]) / 4.0) ** 2).sum(0))
    scan = sitk.GetImageFromArray((100 + 80 * blob + rng.normal(0, 5, blob.shape)).astype(np.float32))
    scan.SetSpacing((1.7, 1.3, 2.4))
    scan.SetOrigin((-12.5, 30.25, 7.0))
    angle = 0.3
    scan.SetDirection((np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, -1.0))
    source = tmp_path / "scan.nii.gz"
    sitk.WriteImage(scan, str(source))
    cache = tmp_path / "cache"
    common = [str(source), "--model", str(run), "--device", "cpu", "--save-probabilities"]

    cold, cold_imports = _segment([*common, "-o", str(tmp_path / "cold" / "scan_seg.nii.gz"), "--json"], cache)
    assert _uses_torch(cold_imports)  # the cold run loads the checkpoint and exports it …
    assert json.loads(cold.stdout)["results"][0]["backend"] == "onnx"  # … for ONNX Runtime
    result, warm_imports = _segment([*common, "-o", str(tmp_path / "warm" / "scan_seg.nii.gz"), "--json"], cache)
    assert "numpy" in warm_imports and "onnxruntime" in warm_imports  # the parse sees what was imported …
    assert not _uses_torch(warm_imports) and "onnx" not in warm_imports  # … and neither torch nor onnx,
    assert "PIL" not in warm_imports  # nor pillow (pictures and previews only)
    assert json.loads(result.stdout)["results"][0]["backend"] == "onnx"
    _, _ = _segment([*common, "-o", str(tmp_path / "torch" / "scan_seg.nii.gz"), "--backend", "torch"], cache)

    original = _read(source)
    masks = {kind: _read(tmp_path / kind / "scan_seg.nii.gz") for kind in ("cold", "warm", "torch")}
    for mask in masks.values():  # exactly the input's grid
        assert mask.GetSize() == original.GetSize()
        assert mask.GetSpacing() == original.GetSpacing() and mask.GetOrigin() == original.GetOrigin()
        assert mask.GetDirection() == original.GetDirection()
    labels = {kind: sitk.GetArrayFromImage(mask) for kind, mask in masks.items()}
    np.testing.assert_array_equal(labels["warm"], labels["cold"])  # the same export, the same blend
    probs = sitk.GetArrayFromImage(_read(tmp_path / "torch" / "scan_probabilities.nii.gz"))  # (K, z, y, x)
    warm_probs = sitk.GetArrayFromImage(_read(tmp_path / "warm" / "scan_probabilities.nii.gz"))
    assert probs.shape == (3, *labels["torch"].shape)
    np.testing.assert_allclose(warm_probs, probs, atol=1e-4)  # ONNX Runtime against PyTorch
    ordered = np.sort(probs, axis=0)
    decided = ordered[-1] - ordered[-2] > 1e-3
    assert (labels["warm"] == labels["torch"])[decided].all()
    assert (labels["warm"] == labels["torch"]).mean() >= 0.9999
    assert len(np.unique(labels["torch"])) > 1  # not an all-background mask agreeing trivially


def test_a_warm_export_is_not_used_where_the_windows_must_autocast(tmp_path, monkeypatch):
    """`--amp` (bf16 autocast, what a GPU run takes) and a run trained with `amp: on` keep the PyTorch backend
    on the CPU even when the export is cached: ONNX Runtime's graph is float32."""
    monkeypatch.setenv("SATSEG_CACHE", str(tmp_path / "cache"))
    run = save_model(tmp_path / "run", mri_plan(), seed=0)
    load_segmenter(run, device="cpu")  # cold: exports and records
    assert load_segmenter(run, device="cpu").backend == "onnx"  # warm
    with_amp = load_segmenter(run, device="cpu", amp=True)
    assert with_amp.backend == "torch" and with_amp.amp_dtype is not None
    assert load_segmenter(run, device="cpu", amp=False).backend == "onnx"
