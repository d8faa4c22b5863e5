"""Gate options: selection initialisations, BN on the attention conv, k attention maps, U-Net's transfer."""

import math

import pytest
import torch

from satseg.errors import ConfigError
from satseg.nn import build_model
from satseg.nn.gates import build_gate, selection_init, trelu
from satseg.nn.lean import make_lean


@pytest.mark.parametrize(
    ("mode", "bound"),
    [("keras-glorot", lambda c: math.sqrt(3 / math.sqrt(c))), ("tf-glorot", lambda c: math.sqrt(3 / c))],
)
def test_glorot_selection_init_follows_the_frameworks_fans(mode, bound):
    channels = 256
    torch.manual_seed(0)
    w = torch.cat([selection_init(mode, channels) for _ in range(40)])
    a = bound(channels)  # Keras 2: fan_in = fan_out = sqrt(C) for a 1-D weight; tf.keras: fan = C
    assert w.abs().max() <= a and w.abs().max() > 0.98 * a
    assert w.var().item() == pytest.approx(a * a / 3, rel=0.05)  # variance of U(-a, a)
    assert w.mean().item() == pytest.approx(0.0, abs=0.03 * a)
    # about half the channels start below zero: trelu gives them exactly 0 (off)
    assert (trelu(w) == 0).float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_constant_selection_init_and_unknown_mode():
    assert torch.equal(selection_init(0.25, 3), torch.full((3,), 0.25))
    gate = build_gate("sat", 2, 6, select_init="keras-glorot")
    assert gate.select_weight.shape == (6,) and gate.select_weight.std() > 0
    with pytest.raises(ConfigError, match="keras-glorot"):
        build_gate("st", 2, 4, select_init="glorot")


def test_dead_zone_gets_no_gradient():
    gate = build_gate("sat", 2, 3, select_init=0.5)
    with torch.no_grad():
        gate.select_weight.copy_(torch.tensor([-0.2, 0.5, 1.3]))
    gate(torch.randn(2, 3, 4, 4)).sum().backward()
    grad = gate.select_weight.grad
    assert grad[0] == 0 and grad[2] == 0 and grad[1] != 0


@pytest.mark.parametrize("dims", [2, 3])
def test_attend_norm_puts_bn_between_kernel_and_sigmoid(dims):
    torch.manual_seed(0)
    gate = build_gate("sat", dims, 5, attend_norm=True, attend_channels=2).eval()
    with torch.no_grad():
        gate.attend_norm.running_mean.copy_(torch.tensor([0.3, -1.0]))
        gate.attend_norm.running_var.copy_(torch.tensor([2.0, 0.5]))
        gate.attend_norm.weight.copy_(torch.tensor([1.5, -0.7]))
        gate.attend_norm.bias.copy_(torch.tensor([0.1, 0.2]))
    f = torch.randn(2, 5, *[4] * dims)
    w = trelu(gate.select_weight).view(1, -1, *[1] * dims)
    bias = gate.attend.bias.view(1, -1, *[1] * dims)
    u = torch.einsum("bc...,kc->bk...", f * w, gate.attend.weight.flatten(1)) + bias
    bn = gate.attend_norm
    shape = (1, -1, *[1] * dims)
    u = (u - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    expected = torch.sigmoid(u * bn.weight.view(shape) + bn.bias.view(shape))
    torch.testing.assert_close(gate(f), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gate.forward_literal(f), expected, atol=1e-5, rtol=1e-5)
    assert gate.out_channels == 2
    # identity activation: the same BN-normalised projection, without the sigmoid
    linear = build_gate("sat", dims, 5, attend_norm=True, attend_channels=2, attend_activation="identity").eval()
    linear.load_state_dict(gate.state_dict())
    torch.testing.assert_close(linear(f), torch.logit(expected), atol=1e-4, rtol=1e-4)


def test_options_apply_only_to_the_gates_they_concern():
    assert build_gate("org", 2, 4, attend_channels=3, select_init="tf-glorot").out_channels == 4
    assert build_gate("st", 2, 4, attend_channels=3).out_channels == 4
    assert build_gate("at", 2, 4, attend_channels=3, select_init=0.1).out_channels == 3
    with pytest.raises(ConfigError, match="attend_channels"):
        build_gate("sat", 2, 4, attend_chanels=2)
    with pytest.raises(ConfigError, match="at least 1"):
        build_gate("sat", 2, 4, attend_channels=0)
    with pytest.raises(ConfigError, match="attend_activation"):
        build_gate("sat", 2, 4, attend_activation="tanh")


@pytest.mark.parametrize(
    ("net", "extra", "activation"),
    [
        ("unet2d", {}, "sigmoid"),
        ("unet2d", {"transfer": "modulate"}, "sigmoid"),
        ("vnet2d", {"base_features": 4}, "sigmoid"),
        ("di2in2d", {}, "sigmoid"),
        ("unet2d", {}, "identity"),
    ],
)
def test_k_maps_with_bn_widen_the_decoder_and_stay_lean_exact(net, extra, activation):
    torch.manual_seed(0)
    gate_options = {"attend_channels": 3, "attend_norm": True, "attend_activation": activation}
    options = {"gate_options": gate_options, "gate_levels": "all", **extra}
    model = build_model(net, "sat", in_channels=1, out_channels=2, **options).train()
    for _ in range(3):
        model(torch.randn(2, 1, 32, 32))
    model.eval()
    assert {g.out_channels for _, g in model.skip_gates()} == {3}
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(make_lean(model)(x), model(x), atol=1e-4, rtol=1e-4)


def test_modulate_scales_the_decoder_by_the_map():
    torch.manual_seed(0)
    concat = build_model("unet2d", "sat", features=[4, 8], transfer="concat").eval()
    modulate = build_model("unet2d", "sat", features=[4, 8], transfer="modulate").eval()
    modulate.load_state_dict(concat.state_dict())
    seen = {}
    modulate.decoder[0].register_forward_hook(lambda m, i, o: seen.__setitem__("in", i[0]))
    concat.decoder[0].register_forward_hook(lambda m, i, o: seen.__setitem__("ref", i[0]))
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        modulate(x)
        concat(x)
    a = seen["ref"][:, -1:]  # the attention map, last channel of the concatenation
    torch.testing.assert_close(seen["in"][:, :-1], seen["ref"][:, :-1] * (1 + a))
    torch.testing.assert_close(seen["in"][:, -1:], a)


def test_old_checkpoints_keep_meaning_the_model_they_were_saved_with(tmp_path):
    from satseg.nn import explicit_model_config
    from satseg.runs import load_run, save_checkpoint

    # satseg 0.1.0 saved Tiramisu configs without gate options; its Tiramisu gated every skip
    tiny = {"layers_per_block": [2, 1, 2], "growth_rate": 3, "first_features": 4}
    old_config = {"net": "tiramisu2d", "skip": "sat", "in_channels": 1, "out_channels": 2, **tiny}
    torch.manual_seed(0)
    old = build_model(**old_config, dense_gating="all", gate_long_skips=True).eval()
    plan = {"spatial_dims": 2, "num_channels": 1, "labels": {"background": 0, "a": 1}, "patch_size": [8, 8],
            "normalization": [{"scheme": "zscore"}]}  # fmt: skip
    save_checkpoint(tmp_path / "old.pt", model=old, run_config={"model": old_config, "plan": plan})
    loaded, _ = load_run(tmp_path / "old.pt")
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), old(x))
    # a new configuration writes those options out, so a later change of defaults cannot reinterpret it
    explicit = explicit_model_config(old_config)
    assert explicit["gate_options"]["attend_channels"] >= 1 and explicit["dense_gating"] == "down"
    new = build_model(**explicit).eval()
    save_checkpoint(tmp_path / "new.pt", model=new, run_config={"model": explicit, "plan": plan})
    with torch.no_grad():
        torch.testing.assert_close(load_run(tmp_path / "new.pt")[0](x), new(x))
