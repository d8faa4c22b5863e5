"""The frontier study (issue 23): its profile, run order, dirty-tree refusal, inference cost and report."""

import subprocess
import sys
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import frontier  # noqa: E402
import paper  # noqa: E402
from profiles import FRONTIER_SKIPS, PROFILES  # noqa: E402


def test_frontier_nets_double_per_level_and_the_run_order_is_width_by_width():
    profile = PROFILES["frontier"]
    assert profile.nets["ph2"]["unet-w6"].options["features"] == [6, 12, 24, 48]
    jobs = paper.plan_jobs(profile, ["ph2", "hippocampus"], None, timing=True)
    assert all(kind == "train" for kind, *_ in jobs)  # the profile plans no timing sets
    assert len(jobs) == 2 * 5 * len(FRONTIER_SKIPS) * 3 + 2 * 3  # and the default U-Net on PH2, two variants
    # every seed of the narrowest PH2 net first, seed by seed, the four variants within a seed
    first = [(ds, net, skip, seed) for _, ds, net, skip, seed in jobs[:12]]
    assert first == [("ph2", "unet-w4", skip, seed) for seed in range(3) for skip in FRONTIER_SKIPS]
    assert jobs[12][1:3] == ("ph2", "unet-w6")
    assert jobs[-1][1:3] == ("hippocampus", "unet-w16")


def test_the_default_unet_point_is_what_satseg_train_builds_by_default_plain_and_gated():
    """The frontier's `16x5` PH2 point is `build_model`'s default U-Net: trained as `org` and as shipped
    (finest skip gated) only, and its advised options build the very model `satseg train --net unet2d` does."""
    from satseg.nn import build_model

    profile = PROFILES["frontier"]
    jobs = paper.plan_jobs(profile, ["ph2"], ["unet5-w16"], timing=False)
    assert [(j[3], j[4]) for j in jobs] == [(skip, seed) for seed in range(3) for skip in ("org", "sat-fine1")]
    assert paper.plan_jobs(profile, ["ph2"], ["unet5-w16"], ["sat"], timing=False) == []  # not a variant it has
    specs = [s for s in frontier.architectures(profile, ["ph2"], list(FRONTIER_SKIPS)) if s["net"] == "unet5-w16"]
    assert [s["variant"] for s in specs] == ["org", "sat-fine1"]
    for spec in specs:
        default = build_model("unet2d", spec["skip"], 3, 2)
        assert repr(frontier._build(spec)) == repr(default)
    assert frontier.train_options(profile, "ph2", "unet5-w16", "sat-fine1") == (
        "--net unet2d --skip sat --features 16,32,64,128,256"
    )
    assert (frontier._width_label("unet5-w16"), frontier._width_label("unet-w16")) == ("16x5", "16")


def test_relaunched_shards_never_run_the_same_job_twice():
    """Two shards started, some jobs finished (more in one shard), both relaunched: what each runs is disjoint
    and together it is exactly what is left (sharding what is left would give a job to both)."""
    jobs = paper.plan_jobs(PROFILES["frontier"], ["hippocampus"], ["unet-w8", "unet-w12"], timing=False)
    first = [paper.shard_jobs(jobs, jobs, k, 2) for k in range(2)]
    assert first == [jobs[0::2], jobs[1::2]]
    done = first[0][:3] + first[1][:1]
    todo = [job for job in jobs if job not in done]
    again = [paper.shard_jobs(jobs, todo, k, 2) for k in range(2)]
    assert not set(again[0]) & set(again[1])
    assert sorted(again[0] + again[1]) == sorted(todo)
    assert todo[0::2] != again[0]  # the naive split of what is left differs here (and overlaps across relaunches)


def test_other_profiles_keep_the_seed_major_order():
    jobs = paper.plan_jobs(PROFILES["cpu"], ["ph2"], ["unet", "vnet"], timing=False)
    assert [j[2:] for j in jobs[:5]] == [("unet", s, 0) for s in ("org", "at", "st", "sat")] + [("vnet", "org", 0)]


def test_a_frontier_variant_builds_the_registered_model_at_its_width():
    spec = {s["key"]: s for s in frontier.architectures(PROFILES["frontier"], ["ph2"], list(FRONTIER_SKIPS))}
    fine = spec["ph2-unet-w4-sat-fine1"]
    assert (fine["model"], fine["options"]["gate_levels"], fine["side"]) == ("unet2d", 1, 1024)
    model = frontier._build(fine)
    # 3 skips (the 32-channel level is the bottleneck): the finest gated to 1 map, the deeper two plain
    static = frontier.static_cost(fine)
    assert static["skip_channels"] == [1, 8, 16]
    assert static["skip_bytes"] == 4 * (1 * 1024**2 + 8 * 512**2 + 16 * 256**2)
    assert static["params"] == sum(p.numel() for p in model.parameters())


def test_a_dirty_tree_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(paper, "git_commit", lambda root: "abc+dirty")
    monkeypatch.setattr(paper, "prepare_dataset", lambda *a: pytest.fail("prepared data from a dirty tree"))
    args = Namespace(allow_dirty=False, results=str(tmp_path), cache=str(tmp_path), datasets=["ph2"], data="")
    with pytest.raises(SystemExit, match="uncommitted changes"):
        paper.run_suite(args, PROFILES["frontier"])
    assert replace(PROFILES["cpu"]).require_clean is False  # the older profiles keep running as before


def test_the_git_commit_records_a_dirty_tree(tmp_path):
    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert not paper.git_commit(tmp_path).endswith("+dirty")
    (tmp_path / "f").write_text("2")
    assert paper.git_commit(tmp_path).endswith("+dirty")


def test_the_cost_forward_runs_the_lean_onnx_model_on_a_small_volume():
    """The cost forward (lean model through ONNX Runtime) on a tiny 2D net, in this process."""
    spec = frontier.architectures(PROFILES["frontier"], ["ph2"], ["sat"])[0] | {"side": 64}
    out = frontier._ort_forward(spec)
    assert out["peak_bytes"] >= 0 and out["seconds"] > 0 and out["runs"] == frontier.REPEATS[2]


def test_the_low_memory_cost_forward_peaks_below_the_arena_s():
    """`segment --low-memory`'s peak of one forward (no arena, freed blocks unmapped), in a fresh process as the
    study measures it, against ONNX Runtime's arena in another: lower, for the same net and volume."""
    spec = frontier.architectures(PROFILES["frontier"], ["ph2"], ["org"])[0] | {"side": 512}
    arena = frontier._forward_in_fresh_process(spec)
    low = frontier._forward_in_fresh_process(spec, low_memory=True)
    assert 0 < low["peak_bytes"] < 0.9 * arena["peak_bytes"]


def _run(net, variant, seed, dice, half=None):
    cases = [{"case": f"c{i}", "dice": d, "fpr": 0.0, "fnr": 1.0 - d} for i, d in enumerate(dice)]
    return {"dataset": "ph2", "net": net, "skip": variant.split("-")[0], "variant": variant, "seed": seed,
            "cases": cases, "skip_channels": [1], "params": 10, "steps_done": 4, "gates": [], "commit": "abc",
            "train_seconds": 1.0, "step_seconds_mean": 0.5, "wall_seconds": 2.0,
            "half_budget": None if half is None else {"epochs": 1, "dice": half}}  # fmt: skip


def test_frontier_rows_pair_against_same_width_and_nearest_memory_org(tmp_path):
    org4 = [0.50, 0.60, 0.70, 0.80, 0.90]
    org8 = [0.60, 0.70, 0.80, 0.90, 0.95]
    sat8 = [0.55, 0.66, 0.77, 0.88, 0.99]  # vs org8: 4 lower, 1 higher; vs org4: all 5 higher
    runs = [
        _run("unet-w4", "org", 0, org4, half=0.6),
        _run("unet-w8", "org", 0, org8),
        _run("unet-w8", "sat", 0, sat8),
        _run("unet-w8", "sat", 1, sat8),  # a seed org has not: left out of the same-width pairing
    ]
    costs = {
        "ph2-unet-w4-org": {"peak_bytes": 100 * 2**20, "seconds": 1.0, "params": 1, "skip_bytes": 1},
        "ph2-unet-w8-org": {"peak_bytes": 400 * 2**20, "seconds": 2.0, "params": 2, "skip_bytes": 2},
        "ph2-unet-w8-sat": {"peak_bytes": 150 * 2**20, "seconds": 2.0, "params": 2, "skip_bytes": 1,
                            "low_memory": {"peak_bytes": 90 * 2**20, "seconds": 2.5}},
    }  # fmt: skip
    rows = {(r["net"], r["variant"]): r for r in frontier.frontier_rows(runs, costs)}
    assert rows[("unet-w4", "org")]["half_to_full"] == pytest.approx(0.7 - 0.6)
    sat = rows[("unet-w8", "sat")]
    same = sat["vs_org_same_width"]
    assert (same["wins"], same["losses"]) == (1, 4)
    assert same["delta"] == pytest.approx(sum(s - o for s, o in zip(sat8, org8, strict=True)) / 5)
    # 150 MiB is nearer to 100 than to 400 on a log scale: paired against the w4 org, all 5 cases higher
    assert sat["nearest_org"] == "unet-w4"
    near = sat["vs_org_nearest_memory"]
    assert (near["wins"], near["losses"], near["p"]) == (5, 0, pytest.approx(2 / 32))
    frontier.frontier_png(list(rows.values()), tmp_path / "f.png")
    with pytest.raises(KeyError):  # a measure the rows lack draws no empty figure silently
        frontier.frontier_png(list(rows.values()), tmp_path / "g.png", "not_a_measure")
    from PIL import Image

    assert Image.open(tmp_path / "f.png").size == (frontier._PANEL[0], frontier._PANEL[1])
    md = frontier.frontier_markdown(list(rows.values()), PROFILES["frontier"])
    assert "| ph2 | 8 | `sat` | 2 |" in md and "w4: +0." in md
    assert sat["peak_bytes_low_memory"] == 90 * 2**20 and "| 150 | 90 |" in md  # arena peak, then low-memory
    frontier.frontier_png(list(rows.values()), tmp_path / "low.png", "peak_bytes_low_memory")
    assert Image.open(tmp_path / "low.png").size == (frontier._PANEL[0], frontier._PANEL[1])


def test_a_deeper_net_is_labelled_by_its_levels_and_ordered_after_the_study_s(tmp_path):
    dice = [0.6, 0.7, 0.8]
    runs = [_run("unet5-w16", "org", 0, dice), _run("unet-w16", "org", 0, dice), _run("unet-w4", "org", 0, dice)]
    costs = {f"ph2-{n}-org": {"peak_bytes": 2**20 * m, "seconds": 1.0, "params": 1, "skip_bytes": 1}
             for n, m in (("unet5-w16", 100), ("unet-w16", 200), ("unet-w4", 50))}  # fmt: skip
    rows = frontier.frontier_rows(runs, costs)
    assert [(r["net"], r["levels"]) for r in rows] == [("unet-w4", 4), ("unet-w16", 4), ("unet5-w16", 5)]
    md = frontier.frontier_markdown(rows, PROFILES["frontier"])
    assert "| ph2 | 16x5 | `org` |" in md and "| ph2 | 16 | `org` |" in md
    frontier.frontier_png(rows, tmp_path / "f.png")  # the deeper point is drawn as a marker off the curve


def test_activation_bytes_scale_the_small_volume_peak_to_the_reference_volume():
    spec = frontier.architectures(PROFILES["frontier"], ["ph2"], ["org"])[0]
    side = frontier.ACTIVATION_SIDE[2]
    at_small = frontier.activation_bytes(spec | {"side": side})
    assert frontier.activation_bytes(spec | {"side": 2 * side}) == 4 * at_small
    # the input's first conv output (4 channels, fp32) alone is alive at some point: a lower bound
    assert at_small >= 4 * 4 * side**2


@pytest.mark.parametrize("variant", FRONTIER_SKIPS)
def test_the_advised_train_options_build_the_measured_architecture(variant):
    """`params --budget` prints these options: `satseg train`'s own parser must turn them into the very net measured."""
    import shlex

    import typer

    from satseg.cli import app
    from satseg.cli.options import parse_settings, parse_sizes
    from satseg.nn import build_model

    profile = PROFILES["frontier"]
    words = shlex.split(frontier.train_options(profile, "hippocampus", "unet-w6", variant))
    command = typer.main.get_command(app).commands["train"]
    with command.make_context("train", [*words, "--data", "d", "--out", "o"], resilient_parsing=True) as ctx:
        parsed = ctx.params
    options = parse_settings(parsed["net_options"]) | {"features": list(parse_sizes(parsed["features"]))}
    if parsed["gate"]:
        options["gate_options"] = parse_settings(parsed["gate"])
    built = build_model(parsed["net"], parsed["skip"], 1, 3, **options)
    spec = next(s for s in frontier.architectures(profile, ["hippocampus"], [variant]) if s["net"] == "unet-w6")
    measured = frontier._build(spec)
    assert sum(p.numel() for p in built.parameters()) == sum(p.numel() for p in measured.parameters())
    assert repr(built) == repr(measured)


def test_the_advice_file_holds_every_costed_point_and_what_trains_it(tmp_path):
    rows = [
        {"dataset": "ph2", "net": "unet-w4", "width": 4, "variant": "org", "seeds": [0, 1, 2], "dice": (0.9, 0.01),
         "peak_bytes": 100 * 2**20, "seconds": 1.0, "params": 5, "commits": ["abc"],
         "peak_bytes_low_memory": 60 * 2**20},
        {"dataset": "ph2", "net": "unet-w4", "width": 4, "variant": "sat", "seeds": [0, 1, 2], "dice": (0.8, 0.0),
         "peak_bytes": None, "seconds": None, "params": None, "commits": ["abc"]},
        {"dataset": "ph2", "net": "unet-w8", "width": 8, "variant": "sat", "seeds": [0], "dice": (0.95, 0.0),
         "peak_bytes": 90 * 2**20, "seconds": 1.0, "params": 5, "commits": ["abc"]},
    ]  # fmt: skip
    data = frontier.advice(rows, PROFILES["frontier"])
    # no cost measured, or 1 of the profile's 3 seeds trained (its Dice not yet comparable): no point
    assert [p["variant"] for p in data["points"]] == ["org"]
    point = data["points"][0]
    assert (point["dims"], point["peak_mib"], point["seeds"], point["dice"]) == (2, 100.0, 3, 0.9)
    assert point["peak_low_memory_mib"] == 60.0 and point["levels"] == 4
    assert point["train_options"] == "--net unet2d --skip org --features 4,8,16,32"
    assert data["reference"] == {"2": 1024, "3": 256}


def test_the_budget_check_pairs_each_point_with_itself_at_twice_the_steps_on_shared_seeds():
    org_short, org_long = [0.50, 0.60, 0.70, 0.80, 0.90], [0.60, 0.70, 0.80, 0.90, 0.95]
    sat_short, sat_long = [0.40, 0.50, 0.60, 0.70, 0.80], [0.61, 0.71, 0.81, 0.91, 0.96]
    short = [
        _run("unet-w8", "org", 0, org_short), _run("unet-w8", "sat", 0, sat_short),
        _run("unet-w8", "sat", 1, [0.0] * 5),  # no long run of seed 1: left out everywhere
        _run("unet-w4", "org", 0, org_short),  # no long run at all: no row
    ]  # fmt: skip
    long = [_run("unet-w8", "org", 0, org_long), _run("unet-w8", "sat", 0, sat_long)]
    for r in long:
        r["steps_done"] = 8
    rows = {(r["net"], r["variant"]): r for r in frontier.budget_check(short, long)}
    assert set(rows) == {("unet-w8", "org"), ("unet-w8", "sat")}
    sat = rows[("unet-w8", "sat")]
    assert sat["seeds"] == [0] and sat["steps"] == [[4], [8]]
    assert (sat["dice_short"], sat["dice_long"]) == (pytest.approx(0.6), pytest.approx(0.8))
    up = sat["long_vs_short"]
    assert (up["delta"], up["wins"], up["losses"], up["p"]) == (pytest.approx(0.2), 5, 0, pytest.approx(2 / 32))
    # behind org by 0.1 on every case at the short budget, ahead by 0.01 at the long one
    assert (sat["gap_short"]["delta"], sat["gap_short"]["losses"]) == (pytest.approx(-0.1), 5)
    assert (sat["gap_long"]["delta"], sat["gap_long"]["wins"]) == (pytest.approx(0.01), 5)
    assert "gap_short" not in rows[("unet-w8", "org")]
    md = frontier.budget_check_markdown(list(rows.values()), PROFILES["frontier"], PROFILES["frontier-2x"])
    assert "| ph2 | 8 | `sat` | 1 | 4 | 0.600 | 8 | 0.800 | +0.200, p = 0.062 (5/0) | -0.100" in md


def test_the_budget_check_profile_doubles_the_frontier_steps_and_keeps_everything_else():
    short, long = PROFILES["frontier"], PROFILES["frontier-2x"]
    a, b = short.train["hippocampus"], long.train["hippocampus"]
    assert b["epochs"] == 2 * a["epochs"] and {**b, "epochs": a["epochs"]} == a
    assert long.nets["hippocampus"] == short.nets["hippocampus"] and long.skips == short.skips
    assert long.require_clean and long.datasets["hippocampus"] == short.datasets["hippocampus"]


def test_an_interrupted_benchmark_training_resumes_only_from_the_same_clean_commit(tmp_path):
    """A suite stopped mid-training continues the run (same weights as an uninterrupted one); a run from other
    code, from a dirty tree, or with no commit marker starts over."""
    import runner
    import torch
    from training.test_train import TINY, make_preprocessed

    from satseg.runs import load_checkpoint
    from satseg.training.config import TrainConfig

    data = make_preprocessed(tmp_path / "data", 2, num_cases=4)
    cfg = TrainConfig(net="unet2d", skip="sat", epochs=4, batch=2, patch=(32, 32), **TINY)
    full, fresh = runner.train_resumable(data, tmp_path / "full", cfg, "c1", [])
    assert fresh == 0 and (tmp_path / "full" / runner.RUN_COMMIT).read_text() == "c1"

    class Killed(Exception):
        pass

    def kill_after_second(epoch, row):
        if epoch == 1:
            raise Killed

    run = tmp_path / "run"
    with pytest.raises(Killed):
        runner.train_resumable(data, run, cfg, "c1", [kill_after_second])
    seen = []
    result, resumed_from = runner.train_resumable(data, run, cfg, "c1", [lambda e, r: seen.append(e)])
    assert resumed_from == 2 and seen == [2, 3]  # only the epochs left ran
    assert [float(r["train_loss"]) for r in result.history] == [r["train_loss"] for r in full.history]
    weights = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")["model"]
    again = load_checkpoint(run / "checkpoint_last.pt")["model"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)

    seen.clear()  # finished but never scored (a crash while scoring): nothing left to train
    assert runner.train_resumable(data, run, cfg, "c1", [lambda e, r: seen.append(e)])[1] == 4 and seen == []

    for commit in ("c2", "c1+dirty"):  # other code, or uncommitted code: never continued
        run = tmp_path / commit
        with pytest.raises(Killed):
            runner.train_resumable(data, run, cfg, "c1", [kill_after_second])
        seen.clear()
        _, resumed_from = runner.train_resumable(data, run, cfg, commit, [lambda e, r: seen.append(e)])
        assert resumed_from == 0 and seen == [0, 1, 2, 3]
