"""The benchmark report's statistics: seed-averaged per-case metrics, spreads and the paired test."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from report import aggregate, paired_test  # noqa: E402


def _run(skip, seed, dice):
    cases = [{"case": f"c{i}", "dice": d, "fpr": 0.0, "fnr": 1.0 - d} for i, d in enumerate(dice)]
    return {"dataset": "d", "net": "unet", "skip": skip, "seed": seed, "cases": cases, "skip_channels": [4, 8],
            "params": 10, "steps_done": 2, "train_seconds": 1.0, "step_seconds_mean": 0.5, "wall_seconds": 2.0,
            "gates": [] if skip == "org" else [{"skip": "gates.0", "fraction_off": 0.25},
                                               {"skip": "gates.1", "fraction_off": 0.75}]}  # fmt: skip


def test_cases_are_averaged_over_seeds_before_the_spread_over_cases():
    runs = [_run("org", 0, [0.2, 0.4, 0.6]), _run("org", 1, [0.4, 0.6, 0.8])]
    entry = aggregate(runs)[("d", "unet", "org")]
    # per case over seeds: 0.3, 0.5, 0.7 -> mean 0.5, sample std 0.2
    assert entry["over_cases"]["dice"] == pytest.approx((0.5, 0.2))
    # per seed over cases: 0.4, 0.6 -> mean 0.5, sample std sqrt(0.02)
    assert entry["over_seeds"]["dice"] == pytest.approx((0.5, 0.02**0.5))


def test_channels_off_is_reported_in_percent_per_gate():
    entry = aggregate([_run("sat", 0, [0.5]), _run("sat", 1, [0.5])])[("d", "unet", "sat")]
    assert entry["pct_off_per_gate"]["gates.0"] == pytest.approx((25.0, 0.0))
    assert entry["pct_off_all"][0] == pytest.approx(50.0)


def test_paired_test_is_the_exact_two_sided_wilcoxon():
    org = _run("org", 0, [0.1, 0.2, 0.3, 0.4, 0.5])
    sat = _run("sat", 0, [0.15, 0.3, 0.33, 0.6, 0.52])  # all 5 differences positive
    result = paired_test(aggregate([org, sat]), "d", "unet", "sat")
    # exact null distribution of W+ for n = 5: P(W+ = 15) = 1/32, two-sided 2/32
    assert result["p"] == pytest.approx(2 / 32)
    assert (result["wins"], result["losses"]) == (5, 0)
    assert result["delta"] == pytest.approx(0.08)
