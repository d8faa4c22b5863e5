"""ONNX export: PyTorch vs ONNX Runtime parity at several sizes, metadata, atomic writes, the predictor."""

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from satseg.errors import CheckpointError, ConfigError
from satseg.export.metadata import graph_digest, read_onnx_metadata
from satseg.export.onnx import export_onnx
from satseg.inference.backends import OnnxPredictor
from satseg.inference.sliding_window import sliding_window_inference
from satseg.nn import build_model, list_models
from satseg.nn.lean import make_lean

# Tiny widths per registered model, so that every backbone is exported quickly. A model missing here is
# exported with its default options (slow but still checked): add its tiny configuration.
_VNET = {"base_features": 2, "convs_per_stage": (1, 2, 2), "kernel_size": 3}
_TIRAMISU = {"layers_per_block": (2, 1, 2), "growth_rate": 3, "first_features": 4, "dropout": 0.0}
_DI2IN = {"features": (3, 4, 8), "encoder_convs": (1, 1, 1), "decoder_convs": (1, 1), "supervision_levels": (1,)}
TINY = {
    "unet2d": {"features": (4, 8, 16)},
    "unet3d": {"features": (4, 8, 16)},
    "vnet2d": _VNET,
    "vnet3d": _VNET,
    "tiramisu2d": _TIRAMISU,
    "tiramisu3d": _TIRAMISU,
    "di2in2d": _DI2IN,
    "di2in3d": _DI2IN,
}


def test_every_registered_model_has_a_tiny_configuration():
    assert sorted(TINY) == sorted(list_models())


def _tiny_model(net, in_channels=2, out_channels=3, skip="sat"):
    torch.manual_seed(0)
    model = build_model(net, skip=skip, in_channels=in_channels, out_channels=out_channels, **TINY.get(net, {}))
    # make the exported constants non-trivial: BN statistics away from (0, 1); some selections off (W <= 0)
    # and some saturated (W >= 1), so the folded trelu(W) really changes the attention kernel
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    for name, param in model.named_parameters():
        if name.endswith("select_weight"):
            with torch.no_grad():
                param.uniform_(-0.5, 1.5)
    return model.eval()


def _side(model, at_least=8):
    divisor = model.input_divisor
    return divisor * math.ceil(at_least / divisor)


def _onnx_logits(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.slow
@pytest.mark.parametrize("net", list_models())
def test_onnx_parity_at_two_sizes(net, tmp_path):
    model = _tiny_model(net)
    dims, side = model.spatial_dims, _side(model)
    path = tmp_path / f"{net}.onnx"
    report = export_onnx(model, path, example_shape=(1, 2, *[side] * dims), metadata={"net": net})
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    # an independent check at a third, non-cubic size the export never saw
    d = model.input_divisor
    shape = (3, 2, *[side + d * k for k in (2, 0, 1)][:dims])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x).numpy()
    got = _onnx_logits(path, x)
    assert got.shape == expected.shape == (3, 3, *shape[2:])
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.slow
def test_dynamo_exporter_also_gives_dynamic_axes(tmp_path):
    model = _tiny_model("unet2d")
    report = export_onnx(model, tmp_path / "m.onnx", example_shape=(1, 2, 8, 8), metadata={}, exporter="dynamo")
    assert report.exporter == "dynamo" and report.max_abs_diff <= 1e-4
    x = torch.randn(2, 2, 24, 40)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(_onnx_logits(report.path, x) - expected).max() <= 1e-4


@pytest.mark.slow
def test_metadata_round_trip_and_atomic_replace(tmp_path):
    plan = {"spatial_dims": 2, "labels": {"background": 0, "liver": 1, "tumour": 2}, "note": "ünïcode\nline"}
    metadata = {"plan": json.dumps(plan), "labels": "background,liver,tumour"}
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an older file")
    model = _tiny_model("unet2d")
    report = export_onnx(model, path, example_shape=(1, 2, 8, 8), metadata=metadata, check=False)
    assert report.max_abs_diff is None and report.size_bytes == path.stat().st_size
    stored = read_onnx_metadata(path)
    assert stored.pop("satseg_graph_sha256") == graph_digest(onnx.load(str(path)))  # the graph, checked on load
    assert stored == metadata
    assert json.loads(OnnxPredictor(path, device="cpu").metadata["plan"]) == plan
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left behind


class _NotExportable(nn.Module):
    """Uses an operator that ONNX has no translation for."""

    def forward(self, x):
        return torch.linalg.eigvalsh(x @ x.transpose(-1, -2))


class _PythonState(nn.Module):
    """Its output depends on a Python counter, which the exported graph freezes at its export value."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.calls


@pytest.mark.slow
def test_failed_export_or_parity_leaves_the_old_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(CheckpointError, match="export"):
        export_onnx(_NotExportable(), path, example_shape=(1, 1, 4, 4), metadata={})
    with pytest.raises(CheckpointError, match="differs from PyTorch"):
        export_onnx(_PythonState(), path, example_shape=(1, 1, 4, 4), metadata={})
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left behind


def test_export_rejects_bad_arguments(tmp_path):
    model = _tiny_model("unet2d")  # input sides must be divisible by 4
    with pytest.raises(ConfigError, match="divisible"):
        export_onnx(model, tmp_path / "m.onnx", example_shape=(1, 2, 10, 8), metadata={})
    with pytest.raises(ConfigError, match="example_shape"):
        export_onnx(model, tmp_path / "m.onnx", example_shape=(2, 8, 8), metadata={})
    with pytest.raises(ConfigError, match="strings"):
        export_onnx(model, tmp_path / "m.onnx", example_shape=(1, 2, 8, 8), metadata={"k": 3})
    with pytest.raises(ConfigError, match="exporter"):
        export_onnx(model, tmp_path / "m.onnx", example_shape=(1, 2, 8, 8), metadata={}, exporter="jit")
    with pytest.raises(ConfigError, match="does not exist"):
        export_onnx(model, tmp_path / "no" / "m.onnx", example_shape=(1, 2, 8, 8), metadata={})
    assert list(tmp_path.iterdir()) == []


def test_predictor_rejects_missing_or_broken_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        OnnxPredictor(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    with pytest.raises(CheckpointError, match="broken.onnx"):
        OnnxPredictor(broken)


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_onnx_predictor_is_a_drop_in_for_sliding_windows(dims, tmp_path):
    model = _tiny_model(f"unet{dims}d")
    path = tmp_path / "m.onnx"
    export_onnx(model, path, example_shape=(1, 2, *[8] * dims), metadata={}, check=False)
    predictor = OnnxPredictor(path, device="cpu")
    assert predictor.providers == ["CPUExecutionProvider"]
    assert (predictor.spatial_dims, predictor.in_channels, predictor.num_classes) == (dims, 2, 3)
    image = torch.randn(2, *[13, 19, 11][:dims], generator=torch.Generator().manual_seed(5))
    kwargs = {"overlap": 0.5, "sw_batch": 3, "return_probabilities": True}
    ours = sliding_window_inference(predictor, image, (8,) * dims, 3, **kwargs)
    ref = sliding_window_inference(model, image, (8,) * dims, 3, **kwargs)
    torch.testing.assert_close(ours.probabilities, ref.probabilities, rtol=1e-4, atol=1e-5)
    assert torch.equal(ours.labels, ref.labels)
    with pytest.raises(ConfigError, match="device"):
        OnnxPredictor(path, device="gpu")


def _graph_peak_bytes(path, shape):
    """Peak bytes of live tensors running the graph node by node, each output a new tensor freed after its last
    reader (no in-place reuse, no fusion): what the graph itself asks of a runtime."""
    model = onnx.load(str(path))
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, shape, strict=True):
        dim.Clear()
        dim.dim_value = value
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    size = {}
    for info in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        size[info.name] = 4 * math.prod(d.dim_value for d in info.type.tensor_type.shape.dim)
    last = {name: i for i, node in enumerate(model.graph.node) for name in node.input}
    live = {model.graph.input[0].name: size[model.graph.input[0].name]}
    peak = 0
    for i, node in enumerate(model.graph.node):
        live.update({name: size.get(name, 0) for name in node.output})
        peak = max(peak, sum(live.values()))
        live = {name: b for name, b in live.items() if last.get(name, len(model.graph.node)) > i}
    return peak


@pytest.mark.slow
def test_exported_lean_unet_holds_what_its_skips_hand_over(tmp_path):
    # The lean graph has no in-place writes (a traced `y[a:b] += t` became Slice, Add and ScatterND: three
    # more full-size tensors at the finest decoder level, the same for every gate).
    full = 32**3 * 4  # one full-size channel, U-Net 8-16-32 at 32³
    peaks = {}
    for skip in ("org", "sat"):
        torch.manual_seed(0)
        model = build_model("unet3d", skip, 1, 2, features=(8, 16, 32)).eval()
        path = tmp_path / f"{skip}.onnx"
        report = export_onnx(make_lean(model), path, example_shape=(1, 1, 16, 16, 16), metadata={})
        assert report.max_abs_diff <= 1e-4  # the graph's sum against the lean module's in-place one
        assert "ScatterND" not in {node.op_type for node in onnx.load(str(path)).graph.node}
        peaks[skip] = _graph_peak_bytes(path, (1, 1, 32, 32, 32)) / full
    # Hand count at the finest decoder level, in full-size channels. org: its held skip (8) beside
    # conv_up(up) (8), conv_skip(skip) (8), then their sum (8) beside both terms: 24. sat: the up-sampled
    # tensor (8), the one-channel map (1) and their concatenation (9): 18.
    assert 24 <= peaks["org"] < 24.5
    assert 18 <= peaks["sat"] < 18.5
