"""Every registered backbone × every skip gate, on tiny configurations."""

import pytest
import torch

from satseg.errors import ConfigError
from satseg.nn import build_model, list_gates, list_models

_TIRAMISU = {"layers_per_block": (2, 1, 2), "growth_rate": 3, "first_features": 4, "dropout": 0.0}
# Per-model tiny options, input side and number of outputs in training mode (deep supervision). Every skip
# gated (U-Net and V-Net gate the finest only by default), so each gate is `skip`.
PARAMS = {
    "unet2d": {"options": {"features": (2, 4, 8), "gate_levels": "all"}, "side": 8, "outputs": 1},
    "unet3d": {"options": {"features": (2, 4, 8), "gate_levels": "all"}, "side": 8, "outputs": 1},
    "vnet2d": {
        "options": {"base_features": 2, "convs_per_stage": (1, 2, 2), "kernel_size": 3, "gate_levels": "all"},
        "side": 8,
        "outputs": 1,
    },
    "vnet3d": {
        "options": {"base_features": 2, "convs_per_stage": (1, 2, 2), "kernel_size": 3, "gate_levels": "all"},
        "side": 8,
        "outputs": 1,
    },
    # Tiramisu with every skip gated (long skips and inside every dense block), so each gate is `skip`.
    "tiramisu2d": {
        "options": {**_TIRAMISU, "dense_gating": "all", "gate_long_skips": True},
        "side": 8,
        "outputs": 1,
    },
    "tiramisu3d": {
        "options": {**_TIRAMISU, "dense_gating": "all", "gate_long_skips": True},
        "side": 8,
        "outputs": 1,
    },
    "di2in2d": {
        "options": {
            "features": (3, 4, 8),
            "encoder_convs": (1, 1, 1),
            "decoder_convs": (1, 1),
            "supervision_levels": (1,),
        },
        "side": 8,
        "outputs": 2,
    },
    "di2in3d": {
        "options": {
            "features": (3, 4, 8),
            "encoder_convs": (1, 1, 1),
            "decoder_convs": (1, 1),
            "supervision_levels": (1,),
        },
        "side": 8,
        "outputs": 2,
    },
}
IN_CH, OUT_CH = 2, 3


def _dims(net):
    return int(net[-2])


def _build(net, skip):
    torch.manual_seed(0)
    return build_model(net, skip=skip, in_channels=IN_CH, out_channels=OUT_CH, **PARAMS[net]["options"])


def _input(net, batch=2):
    side = PARAMS[net]["side"]
    return torch.randn(batch, IN_CH, *([side] * _dims(net)))


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_every_registered_model_has_tiny_params():
    assert sorted(PARAMS) == list_models()


@pytest.mark.parametrize("skip", list_gates())
@pytest.mark.parametrize("net", sorted(PARAMS))
def test_forward_backward_reaches_every_gate(net, skip):
    model = _build(net, skip).train()
    x = _input(net)
    out = model(x)
    outs = out if isinstance(out, list) else [out]
    assert len(outs) == PARAMS[net]["outputs"]
    for o in outs:
        assert o.shape == (2, OUT_CH, *x.shape[2:])
    sum(o.square().mean() for o in outs).backward()
    gates = model.skip_gates()
    assert gates
    for name, gate in gates:
        for pname, param in gate.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"
    trainable = {"org": 0, "st": 1, "at": 2, "sat": 3}[skip]  # W; K weight + bias; both
    assert all(len(list(g.parameters())) == trainable for _, g in gates)


@pytest.mark.parametrize("skip", list_gates())
@pytest.mark.parametrize("net", sorted(PARAMS))
def test_gates_transfer_the_channels_they_promise(net, skip):
    model = _build(net, skip).eval()
    gates = model.skip_gates()
    off = {}
    for name, gate in gates:
        if skip == "st":  # switch off every other channel
            with torch.no_grad():
                gate.select_weight[::2] = -1.0
            off[name] = torch.arange(gate.channels)[::2]
    seen = {}

    def hook(name):
        def fn(module, inputs, output):
            seen[name] = (inputs[0].shape[1], output)

        return fn

    handles = [gate.register_forward_hook(hook(name)) for name, gate in gates]
    with torch.no_grad():
        model(_input(net))
    for h in handles:
        h.remove()
    assert set(seen) == {name for name, _ in gates}
    for name, gate in gates:
        in_ch, output = seen[name]
        expected = 1 if skip in ("at", "sat") else in_ch
        assert output.shape[1] == expected == gate.out_channels
        if skip == "st":
            assert torch.count_nonzero(output[:, off[name]]) == 0
            kept = torch.arange(gate.channels)[1::2]
            assert torch.count_nonzero(output[:, kept]) > 0
        if skip in ("at", "sat"):
            assert bool(((output > 0) & (output < 1)).all())  # a sigmoid attention map


@pytest.mark.parametrize("net", sorted(PARAMS))
def test_one_channel_gates_shrink_the_model(net):
    n_org = _n_params(_build(net, "org"))
    assert _n_params(_build(net, "at")) < n_org
    assert _n_params(_build(net, "sat")) < n_org
    # st adds exactly one selection weight per gated channel
    st = _build(net, "st")
    assert _n_params(st) == n_org + sum(g.channels for _, g in st.skip_gates())


@pytest.mark.parametrize("net", sorted(PARAMS))
def test_eval_mode_returns_only_main_logits(net):
    model = _build(net, "sat").eval()
    out = model(_input(net))
    assert isinstance(out, torch.Tensor) and out.shape[1] == OUT_CH


def test_di2in_deep_supervision_off_returns_tensor_in_training():
    model = build_model("di2in2d", "sat", **{**PARAMS["di2in2d"]["options"], "deep_supervision": False}).train()
    assert isinstance(model(torch.randn(2, 1, 8, 8)), torch.Tensor)


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_di2in_every_parameter_gets_a_gradient(deep_supervision):
    """DDP without find_unused_parameters fails on a parameter that gets no gradient (e.g. an unused aux head)."""
    options = {**PARAMS["di2in2d"]["options"], "deep_supervision": deep_supervision}
    model = build_model("di2in2d", "sat", **options).train()
    out = model(torch.randn(2, 1, 8, 8))
    sum(o.sum() for o in out).backward() if isinstance(out, list) else out.sum().backward()
    idle = [name for name, p in model.named_parameters() if p.grad is None]
    assert idle == []


@pytest.mark.parametrize("net", sorted(PARAMS))
def test_check_input_shape_rejects_bad_inputs(net):
    model = _build(net, "sat")
    good = _input(net, batch=1)
    model.check_input_shape(good)
    bad_side = torch.zeros(1, IN_CH, *([PARAMS[net]["side"] + 1] * _dims(net)))
    with pytest.raises(ConfigError, match="divisible"):
        model.check_input_shape(bad_side)
    with pytest.raises(ConfigError, match="expected input"):
        model.check_input_shape(torch.zeros(1, IN_CH + 1, *good.shape[2:]))


def test_unknown_net_lists_valid_names():
    with pytest.raises(ConfigError, match="vnet3d") as info:
        build_model("vnet4d")
    assert all(name in info.value.message for name in list_models())


@pytest.mark.parametrize("net", sorted(PARAMS))
def test_unknown_option_lists_valid_options(net):
    with pytest.raises(ConfigError, match="gate_options"):
        build_model(net, no_such_option=1)


def test_unknown_tiramisu_preset_lists_presets():
    with pytest.raises(ConfigError, match="fcdensenet103"):
        build_model("tiramisu2d", preset="fcdensenet100")


@pytest.mark.parametrize(
    ("net", "options"),
    [
        ("vnet3d", {"convs_per_stage": (1,)}),
        ("vnet3d", {"kernel_size": 4}),
        ("tiramisu2d", {"layers_per_block": (2, 2)}),
        ("di2in3d", {"features": (2, 4), "encoder_convs": (1,)}),
        ("di2in3d", {"features": (2, 4, 8), "supervision_levels": (2,)}),
    ],
)
def test_bad_options_raise_config_error(net, options):
    with pytest.raises(ConfigError):
        build_model(net, **options)
