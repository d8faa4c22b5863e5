"""`satseg params`: parameter, skip-memory and FLOP comparison against hand computation."""

import json

import pytest
from typer.testing import CliRunner

from satseg.cli import app
from satseg.errors import ConfigError
from satseg.nn import list_models
from satseg.nn.params import compare_variants

runner = CliRunner()


def test_unet_skip_bytes_flops_and_params_by_hand():
    features = (4, 8, 16)
    rows = compare_variants(
        "unet2d", ["org", "sat"], [16, 16], in_channels=1, out_channels=2, features=features, gate_levels="all"
    )
    org, sat = rows
    # skips at levels 0 and 1: (4 ch × 16²) + (8 ch × 8²) fp32 values; SAT: one channel each
    assert org["skip_bytes"] == (4 * 16 * 16 + 8 * 8 * 8) * 4
    assert sat["skip_bytes"] == (16 * 16 + 8 * 8) * 4
    assert org["skip_channels"] == [4, 8] and sat["skip_channels"] == [1, 1]
    # the decoder's first conv after each concat loses (C - 1) input channels; gates add 2C + 1
    saved = sum((c - 1) * c * 9 - (2 * c + 1) for c in features[:2])
    assert org["params"] - sat["params"] == saved
    assert sat["params_change_pct"] == pytest.approx(-100 * saved / org["params"])
    # FLOPs of those first convs: 2 · C_out · C_in · 9 per output pixel
    conv_flops = sum(2 * c * (c - 1) * 9 * (16 // 2**i) ** 2 for i, c in enumerate(features[:2]))
    attend_flops = sum(2 * c * (16 // 2**i) ** 2 for i, c in enumerate(features[:2]))  # 1×1 conv C→1
    assert org["flops"] - sat["flops"] == conv_flops - attend_flops
    assert sat["peak_memory_bytes"] < org["peak_memory_bytes"]
    assert org["peak_memory_bytes"] >= org["skip_bytes"]
    # the default gates the finest skip only: one channel there, every channel at level 1
    fine = compare_variants("unet2d", ["sat"], [16, 16], features=features, flops=False, memory=False)[0]
    assert fine["skip_channels"] == [1, 8] and fine["skip_bytes"] == (16 * 16 + 8 * 8 * 8) * 4
    assert org["params"] - fine["params"] == (4 - 1) * 4 * 9 - (2 * 4 + 1)


def test_cli_all_nets_json():
    result = runner.invoke(
        app, ["params", "--net", "all", "--compare", "org,st,at,sat", "--patch", "16,16,16", "--no-memory", "--json"]
    )
    # 16³ suits only nets whose input divisor divides 16, and no 2D net: ask one dimension at a time
    assert result.exit_code == 1
    result = runner.invoke(
        app, ["params", "--net", "unet3d", "--compare", "org,st,at,sat", "--patch", "16,16,16", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["skip"] for r in rows] == ["org", "st", "at", "sat"]
    assert rows[0]["skip_bytes"] == (16 * 16**3 + 32 * 8**3 + 64 * 4**3 + 128 * 2**3) * 4
    assert rows[3]["skip_bytes"] == (16**3 + 32 * 8**3 + 64 * 4**3 + 128 * 2**3) * 4  # the finest skip gated
    args = ["params", "--net", "unet3d", "--compare", "sat", "--patch", "16,16,16", "--no-memory", "--json"]
    result = runner.invoke(app, [*args, "--net-option", "gate_levels=all"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["skip_bytes"] == (16**3 + 8**3 + 4**3 + 2**3) * 4  # the paper: every skip
    result = runner.invoke(app, [*args, "--net-option", "gate_level=all"])
    assert result.exit_code == 1 and "gate_level" in result.output


def test_cli_net_all_table_and_alias(monkeypatch):
    import satseg.nn.params as params

    # every registered net, default configs, tiny patches: only parameter counts (no FLOPs, no memory)
    monkeypatch.setattr(params, "DEFAULT_PATCH", {2: (32, 32), 3: (32, 32, 32)})
    args = ["count-params", "--net", "all", "--compare", "org,sat", "--no-flops", "--no-memory", "--json"]
    result = runner.invoke(app, [*args, "--net-option", "gate_levels=all"])  # the paper's Table 3
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert sorted({r["net"] for r in rows}) == list_models()
    for r in rows:
        if r["skip"] == "sat":
            assert r["params_change_pct"] < 0 and 1 in r["skip_channels"]
            if not r["net"].startswith("tiramisu"):  # Tiramisu's default keeps its long skips plain
                assert set(r["skip_channels"]) == {1}
    defaults = json.loads(runner.invoke(app, args).stdout)
    for r in defaults:  # U-Net and V-Net gate the finest skip only by default
        if r["skip"] == "sat" and r["net"][:4] in ("unet", "vnet"):
            assert r["skip_channels"][0] == 1 and min(r["skip_channels"][1:]) > 1
    assert "count-params" not in runner.invoke(app, ["--help"]).output


def test_cli_errors_are_one_line():
    result = runner.invoke(app, ["params", "--net", "vnet9d"])
    assert result.exit_code == 1 and "valid:" in result.output
    result = runner.invoke(app, ["params", "--net", "unet2d", "--patch", "30,30"])
    assert result.exit_code == 1 and "divisible by 16" in result.output
    with pytest.raises(ConfigError, match="2 positive sides"):
        compare_variants("unet2d", ["org"], [32, 32, 32])
