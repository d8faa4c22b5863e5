"""`satseg params --budget`: the best measured width x gate within a memory budget (issue 23), hand-checked."""

import json

import pytest
from typer.testing import CliRunner

import satseg.zoo
from satseg.cli import app
from satseg.errors import CheckpointError
from satseg.zoo import fit_budget, load_frontier

runner = CliRunner()


def _point(dataset, dims, width, variant, dice, peak):
    return {"dataset": dataset, "dims": dims, "width": width, "variant": variant, "dice": dice, "dice_std": 0.01,
            "seeds": 3, "peak_mib": peak, "train_options": f"--net unet{dims}d --skip {variant} --features {width}"}


POINTS = [
    _point("ph2", 2, 4, "org", 0.90, 100.0),
    _point("ph2", 2, 4, "sat", 0.91, 90.0),
    _point("ph2", 2, 8, "org", 0.93, 200.0),
    _point("ph2", 2, 8, "sat", 0.94, 160.0),
    _point("ph2", 2, 6, "sat", 0.94, 150.0),  # the same Dice as w8 sat at a smaller peak
    _point("hippocampus", 3, 4, "org", 0.80, 1000.0),
]
FRONTIER = {"reference": {"2": 1024, "3": 256}, "points": POINTS}


def test_the_best_dice_that_fits_and_the_best_plain_net_that_fits():
    ph2, hippo = fit_budget(FRONTIER, 155)
    assert (ph2["best"]["width"], ph2["best"]["variant"]) == (6, "sat")
    assert (ph2["best_org"]["width"], ph2["reference_side"]) == (4, 1024)
    assert hippo["best"] is None and hippo["best_org"] is None and hippo["smallest_peak_mib"] == 1000.0
    (ph2,) = fit_budget(FRONTIER, 250, dims=2)
    assert (ph2["best"]["width"], ph2["best"]["variant"], ph2["best_org"]["width"]) == (6, "sat", 8)  # tie: smaller
    (ph2,) = fit_budget(FRONTIER, 95, dims=2)
    assert (ph2["best"]["width"], ph2["best"]["variant"], ph2["best_org"]) == (4, "sat", None)


def test_a_frontier_without_the_fields_is_refused_in_one_line(tmp_path):
    broken = tmp_path / "frontier.json"
    broken.write_text(json.dumps({"points": [{"dataset": "ph2"}]}))
    with pytest.raises(CheckpointError, match="every frontier point needs"):
        load_frontier(broken)
    for bad in ({"dice": "0.9"}, {"peak_low_memory_mib": float("nan")}, {"peak_low_memory_mib": True}):
        broken.write_text(json.dumps({"points": [POINTS[0] | bad]}))
        with pytest.raises(CheckpointError, match="non-numeric figure"):
            load_frontier(broken)
    broken.write_text(json.dumps({"points": [POINTS[0] | {"peak_low_memory_mib": None}]}))  # not measured: fine
    assert load_frontier(broken)["points"][0]["peak_low_memory_mib"] is None
    broken.write_text("{")
    with pytest.raises(CheckpointError, match="cannot read the measured frontier"):
        load_frontier(broken)


def test_params_budget_prints_the_fit_and_how_to_train_it(tmp_path, monkeypatch):
    (tmp_path / "frontier.json").write_text(json.dumps(FRONTIER))
    monkeypatch.setattr(satseg.zoo, "MODELS_DIR", tmp_path)
    result = runner.invoke(app, ["params", "--budget", "155"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if "satseg train" not in line]  # commands stay whole
    assert max(len(line) for line in table) <= 80
    assert "w6 sat" in result.output and "0.940" in result.output and "> 1000" in result.output
    assert "ph2: satseg train --net unet2d --skip sat --features 6" in result.output
    rows = json.loads(runner.invoke(app, ["params", "--budget", "155", "--json"]).stdout)
    assert [r["best"] and r["best"]["width"] for r in rows] == [6, None]


def test_the_shipped_frontier_loads_and_every_point_trains_a_unet():
    points = load_frontier()["points"]
    assert points, "models/frontier.json holds no point"
    assert all(p["train_options"].startswith(f"--net unet{p['dims']}d ") for p in points)


def test_advice_from_a_point_whose_dice_still_rose_in_training_is_called_provisional(tmp_path, monkeypatch):
    rising = [p | {"half_to_full": 0.001} for p in POINTS[:5]] + [POINTS[5] | {"half_to_full": 0.046}]
    rising[4]["half_to_full"] = 0.005  # the ph2 pick at 155 MiB (w6 sat): at the threshold, not above it
    rising[1]["half_to_full"] = 0.02  # a ph2 point that is not the pick does not make the advice provisional
    ph2, hippo = fit_budget({"points": rising}, 2000)
    assert ph2["still_rising"] is None and hippo["still_rising"] == 0.046
    (ph2,) = fit_budget({"points": rising}, 95, dims=2)  # the rising w4 sat is the only fit
    assert ph2["still_rising"] == 0.02
    ph2, hippo = fit_budget(FRONTIER, 2000)  # a frontier written before the check was recorded
    assert ph2["still_rising"] is None and hippo["still_rising"] is None
    (tmp_path / "frontier.json").write_text(json.dumps({"points": rising}))
    monkeypatch.setattr(satseg.zoo, "MODELS_DIR", tmp_path)
    result = runner.invoke(app, ["params", "--budget", "2000"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "hippocampus: provisional, still rising (+0.046" in result.output and "ph2: provisional" not in result.output
    assert max(len(line) for line in result.output.splitlines() if "satseg train" not in line) <= 80


def test_a_low_memory_budget_is_judged_by_the_low_memory_peaks(tmp_path, monkeypatch):
    """Without the arena the gated w8 net fits 120 MiB (its arena peak, 160, does not); a frontier without
    such peaks is refused in one line."""
    low = {(4, "org"): 70.0, (4, "sat"): 60.0, (8, "org"): 150.0, (8, "sat"): 110.0, (6, "sat"): 105.0}
    points = [p | {"peak_low_memory_mib": low[(p["width"], p["variant"])] if p["dims"] == 2 else 900.0} for p in POINTS]
    (ph2, hippo) = fit_budget({"points": points}, 120, low_memory=True)
    assert (ph2["best"]["width"], ph2["best"]["variant"], ph2["best"]["peak_mib"]) == (6, "sat", 105.0)
    assert ph2["best_org"]["width"] == 4 and hippo["best"] is None and hippo["smallest_peak_mib"] == 900.0
    (ph2,) = fit_budget({"points": points}, 120, dims=2)  # the arena's peaks: only the w4 nets fit
    assert (ph2["best"]["width"], ph2["best"]["variant"]) == (4, "sat")
    with pytest.raises(CheckpointError, match="no --low-memory peaks"):
        fit_budget(FRONTIER, 120, low_memory=True)
    (tmp_path / "frontier.json").write_text(json.dumps({"reference": FRONTIER["reference"], "points": points}))
    monkeypatch.setattr(satseg.zoo, "MODELS_DIR", tmp_path)
    result = runner.invoke(app, ["params", "--budget", "120", "--low-memory"], env={"COLUMNS": "80"},
                           terminal_width=80)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "w6 sat" in result.output and "--low-memory" in result.output
    assert max(len(line) for line in result.output.splitlines() if "satseg train" not in line) <= 80


def test_points_that_give_their_levels_are_named_width_x_levels(tmp_path, monkeypatch):
    """A frontier with U-Nets of two depths (the study's 4 levels, the default's 5) names each by both."""
    points = [p | {"levels": 4} for p in POINTS] + [_point("ph2", 2, 16, "org", 0.95, 150.0) | {"levels": 5}]
    (tmp_path / "frontier.json").write_text(json.dumps({"reference": FRONTIER["reference"], "points": points}))
    monkeypatch.setattr(satseg.zoo, "MODELS_DIR", tmp_path)
    result = runner.invoke(app, ["params", "--budget", "155"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "w16x5 org" in result.output and "4 levels" in result.output  # the best fit (and best org), a legend
    assert max(len(line) for line in result.output.splitlines() if "satseg train" not in line) <= 80
    (tmp_path / "frontier.json").write_text(json.dumps({"points": [points[0] | {"levels": "four"}]}))
    with pytest.raises(CheckpointError, match="non-numeric"):
        load_frontier(tmp_path / "frontier.json")
