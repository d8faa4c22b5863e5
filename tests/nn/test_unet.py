"""U-Net parameter count against a formula derived by hand from its layers."""

import pytest

from satseg.errors import ConfigError
from satseg.nn import build_model


def _hand_count(features, in_ch, out_ch, dims, skip, gate_levels=None):
    k3, k2 = 3**dims, 2**dims

    def double_conv(a, b):  # two convs with bias, each followed by BN (weight + bias)
        return a * b * k3 + b + 2 * b + b * b * k3 + b + 2 * b

    gate_params = {"org": lambda c: 0, "st": lambda c: c, "at": lambda c: c + 1, "sat": lambda c: 2 * c + 1}
    gate_out = {"org": lambda c: c, "st": lambda c: c, "at": lambda c: 1, "sat": lambda c: 1}
    total, prev = 0, in_ch
    for f in features:
        total += double_conv(prev, f)
        prev = f
    for i in range(len(features) - 1):
        f, below = features[i], features[i + 1]
        level_skip = skip if gate_levels is None or i < gate_levels else "org"
        total += gate_params[level_skip](f)
        total += below * f * k2 + f  # transposed conv up
        total += double_conv(f + gate_out[level_skip](f), f)
    return total + features[0] * out_ch + out_ch


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("skip", ["org", "st", "at", "sat"])
def test_unet_param_count_matches_hand_formula(dims, skip):
    features = (4, 8, 16)
    model = build_model(f"unet{dims}d", skip=skip, in_channels=2, out_channels=3, features=features)
    n = sum(p.numel() for p in model.parameters())
    assert n == _hand_count(features, 2, 3, dims, skip, gate_levels=1)  # the default: the finest skip gated
    every = build_model(f"unet{dims}d", skip=skip, in_channels=2, out_channels=3, features=features, gate_levels="all")
    assert sum(p.numel() for p in every.parameters()) == _hand_count(features, 2, 3, dims, skip)
    # a concrete case worked out on paper: 2D, org, features (4, 8, 16), 2 in, 3 out
    if (dims, skip) == (2, "org"):
        assert n == 7_603  # enc 240+912+3552, dec 132+456+520+1776, head 15


@pytest.mark.parametrize("gate_levels", [0, 1, 2])
def test_gate_levels_gates_only_the_finest_skips(gate_levels):
    features = (4, 8, 16)
    model = build_model("unet3d", skip="sat", in_channels=1, out_channels=2, features=features, gate_levels=gate_levels)
    n = sum(p.numel() for p in model.parameters())
    assert n == _hand_count(features, 1, 2, 3, "sat", gate_levels)
    # finest first: gated skips transfer one map, the deeper ones every channel
    assert [g.out_channels for g in model.gates] == [1 if i < gate_levels else f for i, f in enumerate(features[:-1])]
    if gate_levels == 0:  # nothing gated: exactly the plain-skip net
        assert n == sum(
            p.numel()
            for p in build_model("unet3d", skip="org", in_channels=1, out_channels=2, features=features).parameters()
        )


@pytest.mark.parametrize("bad", [{"gate_levels": 3}, {"gate_levels": -1}, {"gate_levels": 1, "transfer": "modulate"}])
def test_gate_levels_refuses_impossible_settings(bad):
    with pytest.raises(ConfigError):
        build_model("unet2d", skip="sat", in_channels=1, out_channels=2, features=(4, 8, 16), **bad)
