"""Parameter counts of the new backbones against formulas worked out by hand from their layer plans."""

import pytest

from satseg.nn import build_model


def _n(model):
    return sum(p.numel() for p in model.parameters())


def _conv_bn(cin, cout, k):  # conv with bias, then BN (weight + bias)
    return cin * cout * k + 3 * cout


@pytest.mark.parametrize("skip", ["org", "sat"])
def test_di2in3d_default_matches_layer_plan(skip):
    k = 27
    w = (20, 28, 52, 84, 126)
    enc, dec = (3, 1, 1, 2, 2), (2, 1, 1, 2)
    total = 0
    for lvl, n in enumerate(enc):
        total += _conv_bn(1 if lvl == 0 else w[lvl - 1], w[lvl], k) + (n - 1) * _conv_bn(w[lvl], w[lvl], k)
    for lvl in range(4):
        g = w[lvl] if skip == "org" else 1
        total += 0 if skip == "org" else 2 * w[lvl] + 1  # W (C) + K (C weights, 1 bias)
        total += _conv_bn(w[lvl + 1], w[lvl], k) + _conv_bn(w[lvl] + g, w[lvl], k)
        total += (dec[lvl] - 1) * _conv_bn(w[lvl], w[lvl], k)
        total += w[lvl] + 1  # 1x1 head to one channel (main at level 0, aux at 1, 2, 3)
    assert _n(build_model("di2in3d", skip, in_channels=1, out_channels=1)) == total
    # the figures quoted in the DI2IN docstring and the paper's counts
    assert total == {"org": 2_353_148, "sat": 2_063_000}[skip]
    paper = {"org": 2_353_089, "sat": 2_063_053}[skip]
    assert abs(total - paper) / paper < 1e-4


@pytest.mark.parametrize("dims", [2, 3])
def test_vnet_gate_changes_only_first_conv_after_each_concat(dims):
    base, kernel = 3, 3
    opts = {"base_features": base, "convs_per_stage": (1, 2, 2, 2), "kernel_size": kernel}
    n_org = _n(build_model(f"vnet{dims}d", "org", **opts))
    n_sat = _n(build_model(f"vnet{dims}d", "sat", gate_levels="all", **opts))
    # each skip level of width C feeds a 2C-wide first conv: C - 1 fewer input channels; gate costs 2C + 1
    widths = [base * 2**s for s in range(3)]
    saved = [(c - 1) * 2 * c * kernel**dims - (2 * c + 1) for c in widths]
    assert n_org - n_sat == sum(saved)
    # the default gates the finest skip only: the saving of the first level alone
    assert n_org - _n(build_model(f"vnet{dims}d", "sat", **opts)) == saved[0]


def test_tiramisu_fcdensenet103_matches_hand_count():
    # 2D FC-DenseNet103, org, 3 input channels, 12 classes (CamVid setting of Jégou et al.)
    layers, k, first = (4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4), 16, 48

    def layer(cin):  # BN(cin) + 3x3 conv to k
        return 2 * cin + cin * k * 9 + k

    total, ch, skips = 3 * first * 9 + first, first, []
    for n in layers[:5]:
        total += sum(layer(ch + j * k) for j in range(n))
        ch += n * k
        skips.append(ch)
        total += 2 * ch + ch * ch + ch  # transition down: BN + 1x1 conv
    total += sum(layer(ch + j * k) for j in range(layers[5]))
    up = layers[5] * k
    for i, n in enumerate(layers[6:]):
        total += up * up * 9 + up  # transposed 3x3 conv
        cin = up + skips[4 - i]
        total += sum(layer(cin + j * k) for j in range(n))
        up, ch = n * k, cin + n * k
    total += ch * 12 + 12
    assert _n(build_model("tiramisu2d", "org", in_channels=3, out_channels=12, preset="fcdensenet103")) == total
    assert 9.2e6 < total < 9.5e6  # Jégou et al. report 9.4M parameters


def test_tiramisu_default_sat_reproduces_the_paper_saving():
    # FC-DenseNet67 2D, 3 input channels, 1 output: the paper's skin Tiramisu (Table 3: 3,459,185 → 2,869,312).
    layers, k, first = 5, 16, 48
    n_org = _n(build_model("tiramisu2d", "org", in_channels=3, out_channels=1, preset="fcdensenet67"))
    n_sat = _n(build_model("tiramisu2d", "sat", in_channels=3, out_channels=1, preset="fcdensenet67"))
    # Gates sit inside the five down-path blocks: layers 2..n read 1 + j·k channels instead of C + j·k
    # (C − 1 fewer inputs to a BN (2 params each) and a 3×3 conv), and each gate costs 2C + 1.
    saved, c = 0, first
    for _ in range(5):
        saved += (layers - 1) * (c - 1) * (9 * k + 2) - (2 * c + 1)
        c += layers * k
    assert n_org - n_sat == saved
    assert abs(n_org - 3_459_185) / 3_459_185 < 1e-3
    assert 100 * saved / n_org == pytest.approx(17.05, abs=1.0)  # the paper's Table 3 saving


def test_tiramisu_gating_options_order_their_savings():
    opts = {"in_channels": 1, "out_channels": 2, "preset": "fcdensenet56"}
    n_org = _n(build_model("tiramisu2d", "org", **opts))
    saving = {
        (g, long): 1 - _n(build_model("tiramisu2d", "sat", dense_gating=g, gate_long_skips=long, **opts)) / n_org
        for g in ("none", "down", "all")
        for long in (False, True)
    }
    assert saving[("none", False)] == 0  # nothing gated: sat is org plus nothing
    assert 0 < saving[("down", False)] < saving[("none", True)] < saving[("down", True)] < saving[("all", True)]
