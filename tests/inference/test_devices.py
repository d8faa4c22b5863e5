"""Device choice under a launcher (faked on the CPU) and the CPU export cache's key."""

import pytest
import torch
from tiny_models import mri_plan, save_model

import satseg.inference.backends as backends
from satseg.device import resolve_device
from satseg.errors import ConfigError
from satseg.inference.segmenter import load_segmenter
from satseg.runs import load_run


@pytest.fixture
def fake_gpus(monkeypatch):
    """Four CUDA devices as torch and onnxruntime-gpu would report them, and a torchrun rank 2 of 4."""
    import onnxruntime as ort

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")


def test_torch_device_is_the_local_ranks_gpu(fake_gpus):
    assert resolve_device("auto") == torch.device("cuda:2")
    assert resolve_device("cuda") == torch.device("cuda:2")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.parametrize("spec, gpu", [("auto", 2), ("cuda", 2), ("cuda:3", 3), ("CUDA:1", 1)])
def test_onnx_runtime_gets_the_device_id(fake_gpus, spec, gpu):
    assert backends.onnx_providers(spec) == [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]


def test_onnx_runtime_devices_without_a_gpu(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert backends.onnx_providers("auto") == ["CPUExecutionProvider"]  # onnxruntime-gpu on a GPU-less machine
    assert backends.onnx_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="no CUDAExecutionProvider"):
        backends.onnx_providers("cuda:1")
    for bad in ("cuda:x", "cpu:1", "gpu"):
        with pytest.raises(ConfigError, match="unknown device"):
            backends.onnx_providers(bad)


def test_segment_shard_auto_puts_each_rank_on_its_gpu_with_both_backends(fake_gpus, tmp_path, monkeypatch):
    """`torchrun … satseg segment --shard auto`: the torch backend and ONNX Runtime both take LOCAL_RANK's GPU."""
    import onnxruntime as ort

    run = save_model(tmp_path / "run", mri_plan(), seed=0)
    onnx_file = backends.export_model(*load_run(run), tmp_path / "m.onnx").path
    seen = {}

    class Session(ort.InferenceSession):  # a CPU session that records what it was asked for
        def __init__(self, path, providers=None, **kwargs):
            seen["providers"] = providers
            super().__init__(path, providers=["CPUExecutionProvider"], **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Session)
    onnx = load_segmenter(onnx_file)
    assert seen["providers"][0] == ("CUDAExecutionProvider", {"device_id": 2})
    assert onnx.device == torch.device("cuda:2")
    monkeypatch.setattr("satseg.inference.segmenter.torch_predictor", lambda model, device: device)
    torch_backend = load_segmenter(run, backend="torch")
    assert torch_backend.device == torch.device("cuda:2") and torch_backend.predict == torch.device("cuda:2")


def test_cpu_export_cache_misses_when_the_export_code_changes(tmp_path, monkeypatch):
    """The cache key covers the weights and the source of the networks, lean rewrite and exporter."""
    monkeypatch.setenv("SATSEG_CACHE", str(tmp_path / "cache"))
    net, config = load_run(save_model(tmp_path / "run", mri_plan(), seed=0))
    first = backends.cached_onnx_export(net, config)
    assert backends.cached_onnx_export(net, config) == first  # a hit
    monkeypatch.setattr(backends, "export_code_digest", lambda: "a changed lean rewrite")
    second = backends.cached_onnx_export(net, config)
    assert second != first and second.is_file() and first.is_file()
    torch.manual_seed(1)
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    assert backends.cached_onnx_export(net, config) not in (first, second)  # other weights: another export


def test_export_code_digest_reads_the_lean_rewrite_and_the_exporter(tmp_path, monkeypatch):
    package = tmp_path / "fake_export_code"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rewrite.py").write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = backends.export_code_digest.__wrapped__(("fake_export_code",))
    (package / "rewrite.py").write_text("SCALE = 2\n")
    assert backends.export_code_digest.__wrapped__(("fake_export_code",)) != before
    assert set(backends.EXPORT_CODE) >= {"satseg.nn", "satseg.export"}  # lean.py and export/onnx.py live there


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_autocast_warns_only_where_bf16_is_emulated(monkeypatch, caplog, native):
    import satseg.device as device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    device._warn_emulated_bf16.cache_clear()
    cpu = torch.device("cpu")
    with caplog.at_level("WARNING", logger="satseg.device"):
        assert device.autocast_dtype(cpu, {"amp": "on", "amp_dtype": "bf16"}) is torch.bfloat16
        assert device.autocast_dtype(cpu, {"amp": "on", "amp_dtype": "fp16"}) is torch.float16
        assert device.autocast_dtype(cpu, {"amp": "auto"}) is None  # float32 on the CPU: nothing to warn about
        assert device.autocast_dtype(cpu, {"amp": "off"}, override=True) is torch.bfloat16  # --amp
    warnings = [r for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == (0 if native else 1)  # once per process, not once per call
    device._warn_emulated_bf16.cache_clear()


def test_cpu_torch_windows_run_channels_last_in_3d_with_the_same_logits():
    """The CPU PyTorch path runs 3D windows channels-last (faster there) and must give the contiguous path's logits."""
    import copy

    import torch

    from satseg.inference.backends import torch_predictor
    from satseg.nn import build_model
    from satseg.nn.lean import make_lean

    torch.manual_seed(0)
    for dims, side in ((3, 16), (2, 32)):
        lean = make_lean(build_model(f"unet{dims}d", "sat", 1, 3, features=(4, 8, 16)).eval())
        x = torch.randn(2, 1, *[side] * dims)
        with torch.no_grad():
            reference = copy.deepcopy(lean)(x)
            logits = torch_predictor(lean, torch.device("cpu"))(x)
        conv = next(p for p in lean.parameters() if p.dim() == dims + 2)
        assert conv.is_contiguous(memory_format=torch.channels_last_3d) == (dims == 3)
        assert logits.is_contiguous()
        torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-5)
        assert torch.equal(logits.argmax(1), reference.argmax(1))
