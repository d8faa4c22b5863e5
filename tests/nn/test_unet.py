"""U-Net parameter count against a formula derived by hand from its layers."""

import pytest

from satseg.nn import build_model


def _hand_count(features, in_ch, out_ch, dims, skip):
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
        total += gate_params[skip](f)
        total += below * f * k2 + f  # transposed conv up
        total += double_conv(f + gate_out[skip](f), f)
    return total + features[0] * out_ch + out_ch


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("skip", ["org", "st", "at", "sat"])
def test_unet_param_count_matches_hand_formula(dims, skip):
    features = (4, 8, 16)
    model = build_model(f"unet{dims}d", skip=skip, in_channels=2, out_channels=3, features=features)
    n = sum(p.numel() for p in model.parameters())
    assert n == _hand_count(features, 2, 3, dims, skip)
    # a concrete case worked out on paper: 2D, org, features (4, 8, 16), 2 in, 3 out
    if (dims, skip) == (2, "org"):
        assert n == 7_603  # enc 240+912+3552, dec 132+456+520+1776, head 15
