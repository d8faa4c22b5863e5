"""The time-to-Dice benchmark end to end on a tiny synthetic dataset (smoke profile), and its threshold logic."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from time_to_dice import main, reached  # noqa: E402

from satseg.data.synthetic import write_synthetic_msd  # noqa: E402


def test_reached_is_the_first_point_at_or_above_each_threshold():
    points = [(10, 1.0, 0.5), (20, 2.5, 0.81), (30, 4.0, 0.79), (40, 5.0, 0.86)]
    curve = [{"step": s, "train_seconds": t, "dice": d} for s, t, d in points]
    assert reached(curve, (0.5, 0.8, 0.85, 0.9)) == {
        "0.50": {"step": 10, "train_seconds": 1.0},
        "0.80": {"step": 20, "train_seconds": 2.5},
        "0.85": {"step": 40, "train_seconds": 5.0},
        "0.90": None,
    }


def test_smoke_profile_end_to_end(tmp_path):
    raw = write_synthetic_msd(tmp_path / "raw", 4, (16, 16, 16), spacing=(1.0,) * 3, seed=0, oblique=False,
                              two_structures=False, noise=0.2)  # fmt: skip
    args = ["--profile", "smoke", "--dataset", str(raw), "--cache", str(tmp_path / "cache"),
            "--results", str(tmp_path / "results")]  # fmt: skip
    main(args)
    out = tmp_path / "results" / "time-to-dice-smoke"
    summary = json.loads((out / "results.json").read_text())
    assert [(r["gate"], r["seed"]) for r in summary["runs"]] == [("org", 0), ("sat", 0)]
    for run in summary["runs"]:
        assert [p["step"] for p in run["curve"]] == [2, 4]  # validated every 2 steps, 4 steps in all
        seconds = [p["train_seconds"] for p in run["curve"]]
        assert 0 < seconds[0] < seconds[1] <= run["wall_seconds"]
        assert run["reached"]["0.00"] == {k: run["curve"][0][k] for k in ("step", "train_seconds")}
        assert run["final_dice"] == run["curve"][-1]["dice"] and run["train_config"]["skip"] == run["gate"]
    table = (out / "table.md").read_text()
    assert "| org | 0 |" in table and "| sat | 0 |" in table
    # a rerun skips the finished trainings
    before = (out / "runs" / "org-s0.json").stat().st_mtime_ns
    main(args)
    assert (out / "runs" / "org-s0.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_concurrent_trainings_run_in_worker_processes(tmp_path):
    """The GPU profile's mechanics (one process per training, all at once), on the CPU smoke settings."""
    raw = write_synthetic_msd(tmp_path / "raw", 4, (16, 16, 16), spacing=(1.0,) * 3, seed=1, oblique=False,
                              two_structures=False, noise=0.2)  # fmt: skip
    main(["--profile", "smoke", "--dataset", str(raw), "--cache", str(tmp_path / "cache"),
          "--results", str(tmp_path / "results"), "--concurrent"])  # fmt: skip
    out = tmp_path / "results" / "time-to-dice-smoke"
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["gate"], len(r["curve"])) for r in runs] == [("org", 2), ("sat", 2)]
    assert (out / "runs" / "org-s0.json").is_file() and (out / "runs" / "sat-s0.json").is_file()
