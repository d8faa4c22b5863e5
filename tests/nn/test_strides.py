"""Per-axis down-sampling (``strides``): shapes by hand, lean path and ONNX export equal to the eager model."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from satseg.errors import ConfigError
from satseg.export.onnx import export_onnx
from satseg.nn import build_model
from satseg.nn.base import level_strides
from satseg.nn.lean import make_lean

ANISO = [[1, 2, 2], [2, 2, 2]]  # the first level pools in-plane only, as for a 5 × 1 × 1 mm scan
TINY = {
    "unet3d": {"features": (4, 8, 16)},
    "vnet3d": {"base_features": 2, "convs_per_stage": (1, 1, 1), "kernel_size": 3},
}


def _model(net, skip="sat"):
    torch.manual_seed(0)
    model = build_model(net, skip=skip, in_channels=1, out_channels=3, strides=ANISO, **TINY[net])
    for module in model.modules():  # BN statistics away from (0, 1), so folding them is really checked
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_level_strides_reads_ints_and_axes_and_refuses_the_rest():
    assert level_strides(None, 2, 3) == ((2, 2, 2), (2, 2, 2))
    assert level_strides([[1, 2, 2], 2], 2, 3) == ((1, 2, 2), (2, 2, 2))
    for bad in ([[1, 2], 2], [[3, 2, 2], 2], [2]):
        with pytest.raises(ConfigError):
            level_strides(bad, 2, 3)


@pytest.mark.parametrize("net", sorted(TINY))
def test_anisotropic_strides_keep_the_thick_axis_at_the_first_level(net):
    model = _model(net)
    # z is pooled once (2), y and x twice (4): a side of 2 slices is enough in z, 4 in-plane
    assert model.input_divisors == (2, 4, 4)
    sizes = []
    stages = model.encoder if net == "unet3d" else model.downs
    hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(tuple(o.shape[2:]))) for m in stages]
    with torch.no_grad():
        out = model(torch.randn(1, 1, 6, 12, 8))
    for h in hooks:
        h.remove()
    assert out.shape == (1, 3, 6, 12, 8)
    coarser = sizes if net == "vnet3d" else sizes[1:]
    assert coarser == [(6, 6, 4), (3, 3, 2)]  # by hand: (6,12,8) / (1,2,2) then / (2,2,2)
    with pytest.raises(ConfigError, match="divisible"):
        model.check_input_shape(torch.zeros(1, 1, 3, 12, 8))


@pytest.mark.parametrize("net", sorted(TINY))
def test_lean_path_matches_eager_with_anisotropic_strides(net):
    model = _model(net)
    x = torch.randn(2, 1, 4, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        got = make_lean(model)(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("net", sorted(TINY))
def test_onnx_export_matches_eager_with_anisotropic_strides(net, tmp_path):
    model = _model(net)
    path = tmp_path / f"{net}.onnx"
    report = export_onnx(model, path, example_shape=(1, 1, 4, 8, 8), metadata={"net": net})
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    x = torch.randn(1, 1, 2, 12, 4, generator=torch.Generator().manual_seed(2))  # a shape the export never saw
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
