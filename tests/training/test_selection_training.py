"""Training options of the selection study: L1 on trelu(W), W's learning-rate scale, a clock-free schedule."""

import csv
import itertools

import pytest
import torch
from test_train import TINY, make_preprocessed

import satseg.training.loop as loop
from satseg.errors import ConfigError
from satseg.nn import build_model
from satseg.runs import load_checkpoint, load_run
from satseg.training.config import TrainConfig
from satseg.training.optim import lr_at, selection_penalty
from satseg.training.trainer import train


def _selection(run):
    state = load_checkpoint(run / "checkpoint_last.pt")["model"]
    return torch.cat([v.flatten() for k, v in sorted(state.items()) if k.endswith("select_weight")])


def test_selection_penalty_is_the_sum_of_trelu_w():
    model = build_model("unet2d", "sat", features=[2, 3, 4], gate_levels="all")
    with torch.no_grad():
        model.gates[0].select_weight.copy_(torch.tensor([-0.5, 0.25]))
        model.gates[1].select_weight.copy_(torch.tensor([1.5, 0.5, 0.0]))
    assert selection_penalty(model).item() == pytest.approx(0.25 + 1.0 + 0.5)
    assert selection_penalty(build_model("unet2d", "org", features=[2, 3])) is None


def test_l1_term_and_lr_scale_move_w_by_the_expected_step(tmp_path):
    # One SGD step (Nesterov, momentum 0.99: the first step is lr·(1 + 0.99)·grad). The L1 term adds λ to the
    # gradient of every W inside (0, 1), and the selection's own learning rate is lr · scale.
    data = make_preprocessed(tmp_path / "data", 2, num_cases=4)
    base = {**TINY, "iters_per_epoch": 1}
    common = dict(net="unet2d", skip="sat", epochs=1, batch=2, patch=(32, 32), optimizer="sgd", lr=0.01, **base)
    lam, scale = 0.5, 3.0
    train(data, tmp_path / "plain", TrainConfig(**common, select_lr_scale=scale), progress=False)
    train(data, tmp_path / "l1", TrainConfig(**common, select_lr_scale=scale, select_l1=lam), progress=False)
    w_plain, w_l1 = _selection(tmp_path / "plain"), _selection(tmp_path / "l1")
    torch.testing.assert_close(w_l1 - w_plain, torch.full_like(w_plain, -0.01 * scale * 1.99 * lam))
    train(data, tmp_path / "unscaled", TrainConfig(**common), progress=False)
    step_scaled = w_plain - 0.5
    step_unscaled = _selection(tmp_path / "unscaled") - 0.5
    torch.testing.assert_close(step_scaled, scale * step_unscaled, atol=1e-6, rtol=1e-4)


def test_bad_selection_settings_are_refused():
    with pytest.raises(ConfigError, match="select_l1"):
        TrainConfig(select_l1=-1.0)
    with pytest.raises(ConfigError, match="select_lr_scale"):
        TrainConfig(select_lr_scale=0.0)


def test_schedule_follows_epochs_not_the_clock(tmp_path, monkeypatch):
    # A clock that runs 30 s per reading: the 10-minute budget ends the run early, but every epoch that
    # ran used the planned poly rate (before, the rate decayed over elapsed time when that ran out first).
    data = make_preprocessed(tmp_path / "data", 2, num_cases=4)
    ticks = itertools.count()
    monkeypatch.setattr(loop.time, "perf_counter", lambda: 30.0 * next(ticks))
    epochs = 40
    cfg = TrainConfig(net="unet2d", skip="sat", epochs=epochs, batch=2, patch=(32, 32), max_minutes=10.0, **TINY)
    result = train(data, tmp_path / "run", cfg, progress=False)
    with (tmp_path / "run" / "metrics.csv").open() as fh:
        rates = [float(r["lr"]) for r in csv.DictReader(fh)]
    assert 1 <= len(rates) < epochs and result.epochs_done == len(rates)
    assert rates == pytest.approx([(1 - e / epochs) ** 0.9 for e in range(len(rates))])
    constant = TrainConfig(scheduler="constant", epochs=epochs)
    assert {lr_at(constant, e) for e in range(epochs)} == {1.0}


def test_train_cli_gate_options_reach_the_run(tmp_path):
    import json

    from typer.testing import CliRunner

    from satseg.cli import app
    from satseg.cli.options import parse_settings

    assert parse_settings(["attend_channels=2,attend_norm=true", "select_init=keras-glorot"]) == {
        "attend_channels": 2,
        "attend_norm": True,
        "select_init": "keras-glorot",
    }
    assert parse_settings("select_init=0.25") == {"select_init": 0.25}
    with pytest.raises(ConfigError, match="key=value"):
        parse_settings("attend_channels")
    data = make_preprocessed(tmp_path / "data", 2, num_cases=4)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--net", "unet2d", "--features", "4,8,16"]
    args += [
        "--gate",
        "attend_channels=2",
        "--gate",
        "attend_norm=true",
        "--net-option",
        "gate_levels=1",
        "--epochs",
        "1",
        "--iters",
        "1",
    ]
    args += ["--patch", "32,32", "--batch", "2", "--device", "cpu", "--scheduler", "constant", "--select-l1", "1e-3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["gate_options"] == {
        "select_init": 0.5,
        "attend_channels": 2,
        "attend_norm": True,
        "attend_activation": "sigmoid",
    }
    assert config["model"]["gate_levels"] == 1
    model, _ = load_run(tmp_path / "run")
    assert [g.out_channels for g in model.gates] == [2, 8]  # the finest skip gated, the deeper one plain
    bad = CliRunner().invoke(app, [*args[:4], str(tmp_path / "run2"), *args[5:], "--net-option", "gate_level=1"])
    assert bad.exit_code == 1 and "gate_level" in bad.output and "Traceback" not in bad.output
    assert config["train"]["scheduler"] == "constant" and config["train"]["select_l1"] == 1e-3
