"""The lean inference path against the reference model it was made from, per backbone and gate."""

import pytest
import torch
from test_backbones import IN_CH, OUT_CH, PARAMS

from satseg.errors import ConfigError
from satseg.nn import build_model, list_gates, list_models
from satseg.nn.lean import LeanGate, make_lean, prune_report
from satseg.nn.params import LiveTensorBytes


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waiting on a shared machine (the suite is 20× faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


def _trained(net, skip, seed=0, **extra):
    """A model with non-trivial BN statistics and selection weights, some of them negative (channels off)."""
    torch.manual_seed(seed)
    options = {**PARAMS[net]["options"], **extra}
    model = build_model(net, skip=skip, in_channels=IN_CH, out_channels=OUT_CH, **options).train()
    side, dims = PARAMS[net]["side"], int(net[-2])
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, IN_CH, *[side] * dims) * 2 + 0.5)
        for _, gate in model.skip_gates():
            if hasattr(gate, "select_weight"):
                gate.select_weight.uniform_(-0.6, 1.3)
                gate.select_weight[0] = -1.0  # at least one channel off per gate
    return model.eval()


def _input(net, seed=1):
    torch.manual_seed(seed)
    side, dims = PARAMS[net]["side"], int(net[-2])
    return torch.randn(2, IN_CH, *[side] * dims)


@pytest.mark.parametrize("skip", list_gates())
@pytest.mark.parametrize("net", list_models())
def test_lean_equals_reference(net, skip):
    model = _trained(net, skip)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _input(net)
    with torch.no_grad():
        ref = model(x)
        lean = make_lean(model, chunk=1)
        out = lean(x)
        whole = make_lean(model, chunk=None)(x)
    assert out.shape == ref.shape == (2, OUT_CH, *x.shape[2:])
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(whole, ref, atol=1e-4, rtol=1e-4)
    assert _n_params(lean) <= _n_params(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    assert not lean.train().training  # eval only


@pytest.mark.parametrize("net", ["unet3d", "vnet2d", "di2in2d"])
def test_lean_has_no_batchnorm_and_prunes_switched_off_st_channels(net):
    model = _trained(net, "st")
    lean = make_lean(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in lean.modules())
    gates = [m for m in lean.modules() if isinstance(m, LeanGate)]
    for (_, gate), lean_gate in zip(model.skip_gates(), gates, strict=True):
        assert lean_gate.out_channels == int((gate.selection() > 0).sum()) < gate.channels
        with torch.no_grad():
            held = lean_gate(torch.randn(1, gate.channels, *[4] * model.spatial_dims))
        assert (held is None) if lean_gate.out_channels == 0 else held.shape[1] == lean_gate.out_channels


def test_unet_pruning_saving_matches_hand_count():
    model = _trained("unet2d", "st")  # features (2, 4, 8), 3×3 decoder convs
    report = prune_report(model)
    # Each switched-off channel of the level-l skip removes the decoder conv's 3·3·features[l] weights;
    # folding removes each BN's weight and bias and every gate's selection vector.
    features, k = (2, 4, 8), 9
    off = list(report["channels_off"].values())
    assert sum(off) > 0
    pruned = sum(n * k * features[level] for level, n in enumerate(off))
    n_bn = 2 * 2 * (len(features) + len(features) - 1)  # two BNs per double conv
    folded = sum(2 * c for c in [f for f in features for _ in range(2)] + [f for f in features[:-1] for _ in range(2)])
    assert n_bn == 20
    selection = sum(features[:-1])
    assert report["params"] - report["lean_params"] == folded + selection
    assert report["lean_params"] - report["pruned_params"] == pruned
    assert report["saved_params"] == report["params"] - report["pruned_params"]
    assert report["pruned_bytes"] < report["lean_bytes"] < report["bytes"]


@pytest.mark.parametrize("skip", ["sat", "org"])
def test_align_channels_makes_the_decoder_read_a_multiple_of_8(skip):
    torch.manual_seed(0)
    model = build_model("unet2d", skip, 1, 2, features=(8, 16, 32), align_channels=True, gate_levels="all")
    for up, block in zip(model.ups, model.decoder, strict=True):
        width = block[0][0].out_channels
        assert block[0][0].in_channels == (width if skip == "sat" else 2 * width)
        assert up.up.out_channels == (width - 1 if skip == "sat" else width)
    rebuilt = build_model(**model.config)  # the option round-trips through the config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 16, 16))
    model.eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(make_lean(model)(x), model(x), atol=1e-4, rtol=1e-4)


def test_lean_sat_holds_less_memory_than_the_eager_model():
    torch.manual_seed(0)
    model = build_model("unet3d", "sat", 1, 2, features=(8, 16, 32)).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    peaks = []
    for net in (model, make_lean(model)):
        tracker = LiveTensorBytes()
        with torch.no_grad(), tracker:
            net(x)
        peaks.append(tracker.peak)
    # Full-size channels alive at once. Eager: the concatenation (9), the conv output (8) and its BN output
    # (8). Lean: the up-sampled tensor (8) and the conv output (8) with the one-channel attention (1).
    full = 32**3 * 4
    assert peaks[0] >= 25 * full
    assert peaks[1] <= 17.1 * full


def test_make_lean_refuses_other_modules():
    with pytest.raises(ConfigError, match="SegmentationNet"):
        make_lean(torch.nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize("net", ["unet2d", "unet3d", "vnet2d", "di2in3d"])
def test_lean_equals_reference_with_only_the_finest_skip_gated(net):
    model = _trained(net, "sat", gate_levels=1)
    x = _input(net)
    with torch.no_grad():
        ref, out = model(x), make_lean(model, chunk=1)(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert [type(g).__name__ for g in model.gates][:2] == ["SelectAttendGate", "IdentityGate"]
