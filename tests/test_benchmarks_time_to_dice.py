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


def test_variants_train_every_gate_at_every_size_and_record_cpu_time(tmp_path, monkeypatch):
    import dataclasses

    import time_to_dice
    from time_to_dice import PROFILES, Variant

    sizes = (
        Variant("w2", {"model_options": {"features": [2, 4]}}),
        Variant("w4", {"model_options": {"features": [4, 8]}}),
    )
    monkeypatch.setitem(
        PROFILES, "smoke-sizes", dataclasses.replace(PROFILES["smoke"], name="smoke-sizes", variants=sizes)
    )
    raw = write_synthetic_msd(tmp_path / "raw", 4, (16, 16, 16), spacing=(1.0,) * 3, seed=2, oblique=False,
                              two_structures=False, noise=0.2)  # fmt: skip
    time_to_dice.main(["--profile", "smoke-sizes", "--dataset", str(raw), "--cache", str(tmp_path / "cache"),
                       "--results", str(tmp_path / "results")])  # fmt: skip
    out = tmp_path / "results" / "time-to-dice-smoke-sizes"
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["variant"], r["gate"]) for r in runs] == [("w2", "org"), ("w2", "sat"), ("w4", "org"), ("w4", "sat")]
    for run in runs:
        assert (out / "runs" / f"{run['variant']}-{run['gate']}-s0.json").is_file()
        width = {"w2": 2, "w4": 4}[run["variant"]]
        assert run["train_config"]["model_options"]["features"] == [width, 2 * width]
        cpu = [p["cpu_seconds"] for p in run["curve"]]
        assert 0 < cpu[0] < cpu[1] and all(p["load"] >= 0 for p in run["curve"])
    rows = [line for line in (out / "table.md").read_text().splitlines() if line.startswith("| w")]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| w2", "org"],
        ["| w2", "sat"],
        ["| w4", "org"],
        ["| w4", "sat"],
    ]
    per_step = [float(row.rstrip(" |").rsplit("| ", 1)[1]) for row in rows]
    assert per_step == [pytest.approx(r["curve"][-1]["cpu_seconds"] / 4, abs=0.006) for r in runs]


def test_from_runs_reads_the_curve_of_satseg_run_folders(tmp_path):
    import csv

    from satseg.data.preprocess import preprocess_dataset
    from satseg.training.config import TrainConfig
    from satseg.training.trainer import train

    raw = write_synthetic_msd(tmp_path / "raw", 4, (16, 16, 16), spacing=(1.0,) * 3, seed=3, oblique=False,
                              two_structures=False, noise=0.2)  # fmt: skip
    preprocess_dataset(raw, tmp_path / "pp", folds=2, seed=0)
    config = TrainConfig(net="unet3d", skip="org", epochs=3, iters_per_epoch=2, val_every=2, patch=(16, 16, 16),
                         batch=2, device="cpu", model_options={"features": [2, 4]})  # fmt: skip
    train(tmp_path / "pp", tmp_path / "run", config, progress=False)
    main(["--from-runs", str(tmp_path / "run"), "--name", "mine", "--thresholds", "0.0,1.01",
          "--results", str(tmp_path / "results")])  # fmt: skip
    out = tmp_path / "results" / "time-to-dice-mine"
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    validated = [r for r in rows if r["dice_mean"]]  # epochs 2 and 3 (every 2nd and the last)
    assert [p["step"] for p in run["curve"]] == [4, 6] and len(validated) == 2
    assert [p["dice"] for p in run["curve"]] == [float(r["dice_mean"]) for r in validated]
    assert run["reached"]["0.00"]["step"] == 4 and run["reached"]["1.01"] is None
    assert (run["variant"], run["gate"], run["steps_done"]) == ("w2-p16", "org", 6)
    assert "| w2-p16 | org | 0 | 4 (" in (out / "table.md").read_text()


def test_cpu_ship_profile_sizes_fit_the_unet():
    from time_to_dice import PROFILES, recipe

    profile = PROFILES["cpu-ship"]
    for variant in profile.variants:
        config = recipe(profile, "sat", 0, variant)
        width = config.model_options["features"][0]
        assert variant.label == f"w{width}-p{config.patch[0]}"
        assert config.model_options["features"] == [width, 2 * width, 4 * width, 8 * width]
        assert all(side % 8 == 0 for side in config.patch)  # three poolings by 2
        assert config.epochs * config.iters_per_epoch == profile.max_steps and config.skip == "sat"
