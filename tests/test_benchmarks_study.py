"""The convergence study's table: differences to ORG paired by seed, half-budget Dice, channels off, skip bytes."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from study import study_markdown, study_rows  # noqa: E402


def _run(variant, seed, dice, half=None, off_init=0.0, off_end=0.0, gate=None, skip=None, selection=(0.5, 0.5)):
    cases = [{"case": f"c{i}", "dice": d, "fpr": 0.0, "fnr": 1.0 - d, "classes": {"a": {"dice": d}}}
             for i, d in enumerate(dice)]  # fmt: skip
    skip = skip or ("org" if variant == "org" else "sat")
    gates = [] if skip == "org" else [{"skip": "gates.0", "fraction_off": off_end, "selection": list(selection)}]
    gates_init = [] if skip == "org" else [{"skip": "gates.0", "fraction_off": off_init, "selection": [0.5]}]
    options = {"features": [2, 4]} | ({"gate_options": gate} if gate else {})
    return {"dataset": "hippocampus", "net": "unet", "model": "unet2d", "skip": skip, "variant": variant,
            "seed": seed, "cases": cases, "skip_channels": [1], "params": 10, "steps_done": 4,
            "train_seconds": 1.0, "step_seconds_mean": 0.5, "wall_seconds": 2.0, "gates": gates,
            "gates_init": gates_init, "half_budget": None if half is None else {"epochs": 1, "dice": half},
            "train_config": {"skip": skip, "model_options": options, "patch": [8, 8]}}  # fmt: skip


def test_study_rows_pair_by_seed_and_report_selection_and_cost():
    runs = [
        _run("org", 0, [0.8, 0.9], half=0.7),
        _run("org", 1, [0.6, 0.7], half=0.6),
        _run("sat-k2", 0, [0.7, 0.8], half=0.5, off_init=0.5, off_end=1.0, gate={"attend_channels": 2}),
        _run("sat-k2", 1, [0.6, 0.6], half=0.5, off_init=0.5, off_end=0.0, gate={"attend_channels": 2}),
    ]
    rows = {r["variant"]: r for r in study_rows(runs)}
    sat = rows["sat-k2"]
    # seed means: org 0.85, 0.65; sat 0.75, 0.60 -> differences -0.10, -0.05
    assert sat["delta_vs_org_by_seed"] == pytest.approx({0: -0.10, 1: -0.05})
    assert sat["delta_vs_org"][0] == pytest.approx(-0.075)
    assert sat["dice_half_budget"] == pytest.approx(0.5) and rows["org"]["dice_half_budget"] == pytest.approx(0.65)
    assert (sat["pct_off_init"], sat["pct_off_end"]) == pytest.approx((50.0, 50.0))
    # skips of a 2-level 2D U-Net on an 8x8 patch, batch 1, float32: org holds the 2-channel level-0 map,
    # sat-k2 two attention maps of the same size
    assert rows["org"]["skip_bytes_per_patch"] == 2 * 8 * 8 * 4
    assert sat["skip_bytes_per_patch"] == 2 * 8 * 8 * 4
    text = study_markdown(list(rows.values()), "t")
    assert "-0.075" in text and "50 % → 50 %" in text


def test_pruned_selection_channels_do_not_count_as_skip_memory():
    runs = [_run("org", 0, [0.8]), _run("st-l1", 0, [0.8], skip="st", selection=(0.0, 0.7))]
    rows = {r["variant"]: r for r in study_rows(runs)}
    # the lean path drops the switched-off channel: one of org's two level-0 channels is held
    assert rows["st-l1"]["skip_bytes_per_patch"] == rows["org"]["skip_bytes_per_patch"] // 2
