"""The training plan: net from the data, pooling per axis from the spacing, patch/batch within a budget."""

import json
from dataclasses import replace

import pytest
import torch

from satseg.data.preprocess import preprocess_dataset
from satseg.data.synthetic import write_synthetic_msd
from satseg.nn import explicit_model_config
from satseg.runs import load_run
from satseg.training import planner
from satseg.training.config import TrainConfig
from satseg.training.planner import plan_strides, plan_training
from satseg.training.trainer import _model_config, train


def test_strides_for_a_thick_slice_volume_pool_in_plane_first():
    # 5 × 1 × 1 mm: z is pooled only once in-plane has reached 4 mm (5 ≤ 2 × 4), nnU-Net's rule, by hand
    assert plan_strides([5.0, 1.0, 1.0], [32, 128, 128], 4) == [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    # isotropic: every axis at every level, as the classic net
    assert plan_strides([1.0, 1.0], [256, 256], 4) == [[2, 2]] * 4
    # a side is never pooled below 4: 12 slices pool once (12 → 6), then stay
    assert plan_strides([1.0, 1.0, 1.0], [12, 64, 64], 3) == [[2, 2, 2], [1, 2, 2], [1, 2, 2]]


def _plan(spacing, shape):
    return {"spatial_dims": len(shape), "num_channels": 1, "labels": {"background": 0, "a": 1}, "spacing": spacing,
            "size": None, "median_spacing": spacing, "median_shape": shape, "patch_size": shape}  # fmt: skip


def test_patch_and_batch_stay_within_a_small_memory_budget(monkeypatch):
    plan = _plan([5.0, 1.0, 1.0], [24, 160, 160])
    config = TrainConfig(net="unet3d", model_options={"features": [4, 8, 16]})
    model_cfg = explicit_model_config(_model_config(config, plan))
    budget = 40 * 2**20
    monkeypatch.setattr(planner, "_memory_budget", lambda device: budget)
    new, cfg, result = plan_training(config, plan, torch.device("cpu"), model_cfg, set())
    assert result.batch >= 2 and result.step_memory_mib * 2**20 <= budget
    assert cfg["strides"][0] == [1, 2, 2]  # in-plane only at the first level
    divisors = [1, 1, 1]
    for level in cfg["strides"]:
        divisors = [d * s for d, s in zip(divisors, level, strict=True)]
    assert all(p % d == 0 for p, d in zip(new.patch, divisors, strict=True))
    # a larger budget never plans a smaller step
    monkeypatch.setattr(planner, "_memory_budget", lambda device: 16 * budget)
    _, _, roomy = plan_training(config, plan, torch.device("cpu"), model_cfg, set())
    assert roomy.step_memory_mib >= result.step_memory_mib
    # what the user gives is kept
    given = replace(config, patch=(8, 32, 32), batch=3, iters_per_epoch=7)
    fixed, _, kept = plan_training(given, plan, torch.device("cpu"), model_cfg, set())
    assert (fixed.patch, fixed.batch, fixed.iters_per_epoch) == ((8, 32, 32), 3, 7)
    assert kept.planned == ("strides",)


def test_steps_set_whole_epochs_adding_up_to_the_budget():
    plan = _plan([1.0, 1.0], [64, 64])
    config = TrainConfig(net="unet2d", iters_per_epoch=30, steps=100, model_options={"features": [4, 8]})
    model_cfg = explicit_model_config(_model_config(config, plan))
    new, _, _ = plan_training(config, plan, torch.device("cpu"), model_cfg, set())
    assert (new.epochs, new.iters_per_epoch) == (4, 25)


@pytest.fixture
def thick_slices(tmp_path):
    raw = write_synthetic_msd(tmp_path / "raw", 4, (8, 40, 40), spacing=(5.0, 1.0, 1.0), seed=0, oblique=False,
                              two_structures=False, noise=0.2)  # fmt: skip
    preprocess_dataset(raw, tmp_path / "pp", folds=2, seed=0)
    return tmp_path / "pp"


def test_train_without_net_plans_a_3d_unet_with_in_plane_pooling_and_records_it(thick_slices, tmp_path):
    config = TrainConfig(steps=3, device="cpu", deterministic=True, model_options={"features": [4, 8, 16]})
    result = train(thick_slices, tmp_path / "run", config, progress=False)
    assert result.epochs_done == 1
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["net"] == "unet3d" and saved["train"]["net"] == "unet3d"
    assert saved["model"]["strides"] == [[1, 2, 2], [1, 2, 2]]  # 5 mm never within twice 1 or 2 mm
    assert saved["train_plan"]["strides"] == [[1, 2, 2], [1, 2, 2]]
    assert saved["train"]["iters_per_epoch"] == 3 and saved["train"]["steps"] == 3
    model, _ = load_run(tmp_path / "run")  # rebuilds the planned net
    assert model.strides == ((1, 2, 2), (1, 2, 2)) and model.axis_divisors() == (1, 4, 4)


def test_max_minutes_is_checked_before_every_step_and_the_stop_is_explained(
    thick_slices, tmp_path, monkeypatch, capsys
):
    from satseg.cli.train import train_summary_lines
    from satseg.training import loop

    clock = iter(range(0, 10**6, 10))  # a fake clock: every reading is 10 s later than the one before
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
    config = TrainConfig(epochs=3, iters_per_epoch=50, batch=2, patch=(8, 16, 16), max_minutes=1.0, device="cpu",
                         model_options={"features": [4, 8, 16]})  # fmt: skip
    result = train(thick_slices, tmp_path / "run", config, progress=True)  # the bar ends, with the reason
    assert result.stopped_by_budget and result.epochs_done == 1
    assert "stopped by --max-minutes 1 in epoch 1" in capsys.readouterr().err
    assert 0 < result.steps_done < 50  # stopped inside the first epoch, not at its end
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and "dice_mean" in rows[0]  # the stopped epoch is validated and saved
    summary = result.summary()
    assert summary["lr_fraction_at_stop"] == pytest.approx((1 - 1 / 3) ** 0.9, abs=1e-3)
    lines = train_summary_lines(summary)
    assert any("never annealed" in line for line in lines) and all(len(line) <= 80 for line in lines[1:])


def test_an_old_run_s_settings_rebuild_without_planning():
    from satseg.nn import build_model, legacy_model_config

    # a run saved before planning: every setting recorded, no `steps`, no `strides`, no train_plan
    old = TrainConfig().to_dict() | {"net": "unet3d", "iters_per_epoch": 100, "patch": [48, 64, 48], "batch": 2}
    del old["steps"]
    config = TrainConfig.from_dict(old)
    assert (config.net, config.iters_per_epoch, config.patch, config.batch, config.steps) == (
        "unet3d", 100, (48, 64, 48), 2, None,
    )  # fmt: skip
    model = build_model(**legacy_model_config({"net": "unet3d", "skip": "sat", "in_channels": 1, "out_channels": 3,
                                               "features": [4, 8, 16]}))  # fmt: skip
    assert model.strides == ((2, 2, 2), (2, 2, 2)) and model.axis_divisors() == (4, 4, 4)
    assert "strides" not in model.config or model.config["strides"] is None
