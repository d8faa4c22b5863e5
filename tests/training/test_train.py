"""Training runs on tiny synthetic tasks: learning, resume equivalence, checkpoints, errors."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from satseg.data.preprocess import preprocess_dataset
from satseg.data.synthetic import write_synthetic_msd
from satseg.errors import CheckpointError, DataError, SatsegError
from satseg.nn import build_model
from satseg.plots import PANEL_SIZE
from satseg.runs import load_checkpoint, load_run
from satseg.training.config import TrainConfig
from satseg.training.trainer import train


def make_preprocessed(folder, dims, num_cases=6, shape=None, seed=0):
    """A synthetic MSD dataset run through `preprocess_dataset`: the real on-disk format."""
    shape = shape or ((24, 24, 24) if dims == 3 else (48, 48))
    raw = write_synthetic_msd(
        folder.parent / f"{folder.name}_raw",
        num_cases,
        shape,
        spacing=(1.0,) * dims,
        seed=seed,
        oblique=False,
        two_structures=False,
        noise=0.2,
    )
    preprocess_dataset(raw, folder, folds=2, seed=0)
    return folder


TINY = {"model_options": {"features": [8, 16]}, "iters_per_epoch": 6, "deterministic": True, "device": "cpu"}


def _rows(run):
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_short_run_learns(tmp_path, dims):
    data = make_preprocessed(tmp_path / "data", dims)
    cfg = TrainConfig(
        net=f"unet{dims}d", skip="sat", epochs=8, batch=4, optimizer="adam", lr=3e-3, **{**TINY, "iters_per_epoch": 12}
    )
    result = train(data, tmp_path / "run", cfg, progress=False)
    rows = _rows(tmp_path / "run")
    assert len(rows) == 8
    assert float(rows[-1]["train_loss"]) < 0.6 * float(rows[0]["train_loss"])
    # all-background or random output scores ~0; only a model that learned the blob gets here
    assert result.best_dice > 0.75
    model, config = load_run(tmp_path / "run")
    assert config["model"]["skip"] == "sat" and not model.training


def test_resume_matches_uninterrupted_run(tmp_path):
    data = make_preprocessed(tmp_path / "data", 2, num_cases=4)
    cfg = TrainConfig(net="unet2d", skip="sat", epochs=4, batch=2, patch=(32, 32), **TINY)
    train(data, tmp_path / "full", cfg, progress=False)

    class Killed(Exception):
        pass

    def kill_after_second(epoch, row):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(data, tmp_path / "resumed", cfg, progress=False, callbacks=[kill_after_second])
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint_last.pt")["epoch"] == 2
    train(data, tmp_path / "resumed", cfg, resume=True, progress=False)
    full = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint_last.pt")
    assert resumed["epoch"] == full["epoch"] == 4
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert [r["train_loss"] for r in _rows(tmp_path / "full")] == [r["train_loss"] for r in _rows(tmp_path / "resumed")]


def test_run_folder_contents_and_safe_checkpoints(tmp_path):
    data = make_preprocessed(tmp_path / "data", 2, num_cases=4)
    cfg = TrainConfig(net="unet2d", skip="st", epochs=2, batch=2, patch=(32, 32), **TINY)
    train(data, tmp_path / "run", cfg, progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "checkpoint_last.pt", "checkpoint_best.pt", "metrics.csv", "progress.png", "train.log"):
        assert (run / name).is_file(), name
    with PILImage.open(run / "progress.png") as plot:  # redrawn every epoch beside metrics.csv
        plot.load()
        assert plot.format == "PNG" and plot.size == (PANEL_SIZE[0], 3 * PANEL_SIZE[1])
    config = json.loads((run / "config.json").read_text())
    # the defaults, written out
    gate_options = {"select_init": 0.5, "attend_channels": 1, "attend_norm": False, "attend_activation": "sigmoid"}
    assert config["model"] == {
        "net": "unet2d",
        "skip": "st",
        "in_channels": 1,
        "out_channels": 2,
        "features": [8, 16],
        "deep_supervision": True,
        "gate_options": gate_options,
        "gate_levels": 1,
        "strides": [[2, 2]],  # planned from the (isotropic) spacing
    }
    assert set(_rows(run)[0]) >= {"epoch", "lr", "train_loss", "dice_core", "dice_mean", "seconds"}
    # a checkpoint is plain data: it loads with weights_only=True (load_checkpoint enforces it)
    payload = torch.load(run / "checkpoint_last.pt", weights_only=True)
    assert payload["epoch"] == 2
    assert not list(run.glob(".*tmp*")), "temporary files left behind"


def test_errors_are_one_line(tmp_path):
    data = make_preprocessed(tmp_path / "data", 2, num_cases=4)
    cfg = TrainConfig(net="unet2d", epochs=1, batch=2, patch=(32, 32), **TINY)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(data, tmp_path / "run", cfg, resume=True, progress=False)
    with pytest.raises(SatsegError):
        train(tmp_path / "missing", tmp_path / "run", cfg, progress=False)
    train(data, tmp_path / "run", cfg, progress=False)
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(data, tmp_path / "run", cfg, progress=False)
    (tmp_path / "run" / "checkpoint_last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        train(data, tmp_path / "run", cfg, resume=True, progress=False)
    with pytest.raises(SatsegError, match="3D"):
        train(data, tmp_path / "run3", TrainConfig(net="unet3d", epochs=1, **TINY), progress=False)
    assert DataError  # noqa: B018 - imported for the missing-folder case once preprocess raises it


@pytest.mark.slow
@pytest.mark.parametrize("net", ["unet2d", "di2in2d"])
def test_torchrun_two_process_ddp_on_cpu(tmp_path, net):
    import os
    import socket
    import subprocess
    import sys

    data = make_preprocessed(tmp_path / "data", 2, num_cases=4)
    with socket.socket() as s:  # a free port for the gloo rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "satseg",
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--net",
        net,
        "--patch",
        "32,32",
        *(["--features", "8,16"] if net == "unet2d" else []),
        "--epochs",
        "2",
        "--iters",
        "4",
        "--batch",
        "2",
        "--device",
        "cpu",
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count('"run_dir"') == 1, "only rank 0 reports"
    assert len(_rows(tmp_path / "run")) == 2, "only rank 0 writes metrics"
    payload = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert payload["epoch"] == 2
    torch.manual_seed(0)
    from satseg.nn import build_model

    init = build_model(net, "sat", 1, 2, **({"features": [8, 16]} if net == "unet2d" else {})).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in payload["model"].items()), "weights were trained"


@pytest.mark.slow
def test_ddp_validation_longer_than_the_process_group_timeout_finishes(tmp_path):
    """Rank 0 validating alone would keep rank 1 in a collective for 4 × 1.5 s, past a 4 s timeout; validation
    sharded over both ranks (2 cases each, 3 s) keeps them in step, and the Dice is over all 4 cases."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from satseg.training.validation import validate

    data = make_preprocessed(tmp_path / "data", 2, num_cases=8, shape=(24, 24))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = Path(__file__).with_name("ddp_slow_validation.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(worker), str(data), str(tmp_path / "run"), "1.5"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SATSEG_DIST_TIMEOUT": "4"}
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("val_dice")]
    # the gathered Dice equals one process validating all the fold's cases with the saved weights
    from satseg.data.store import load_case, load_plan, load_splits

    plan, (fold,) = load_plan(data), load_splits(data)[:1]
    cases = [(c, *load_case(data, c)[:2]) for c in fold["val"]]
    model = build_model("unet2d", "sat", 1, 2, features=[4, 8])
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["model"])
    expected = validate(model, cases, plan["labels"], (16, 16), torch.device("cpu"))
    assert len(cases) == 4
    assert float(line.split()[1]) == pytest.approx(float(np.mean(list(expected.values()))), abs=1e-9)


def test_train_restores_the_global_torch_state_it_changes(tmp_path):
    data = make_preprocessed(tmp_path / "data", 2, num_cases=4, shape=(32, 32))
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    cfg = TrainConfig(net="unet2d", skip="sat", epochs=1, batch=2, patch=(32, 32), **{**TINY, "iters_per_epoch": 2})
    train(data, tmp_path / "run", cfg, progress=False)
    assert not torch.are_deterministic_algorithms_enabled()  # the run itself was deterministic
    assert torch.backends.cudnn.benchmark is False
    assert torch.equal(torch.get_rng_state(), rng)


def test_resume_refuses_other_data(tmp_path):
    data = make_preprocessed(tmp_path / "data", 2, num_cases=4, shape=(32, 32))
    other = make_preprocessed(tmp_path / "other", 2, num_cases=5, shape=(32, 32), seed=1)
    cfg = TrainConfig(net="unet2d", skip="sat", epochs=1, batch=2, patch=(32, 32), **{**TINY, "iters_per_epoch": 2})
    train(data, tmp_path / "run", cfg, progress=False)
    with pytest.raises(SatsegError, match="not the data") as caught:
        train(other, tmp_path / "run", replace(cfg, epochs=2), resume=True, progress=False)
    assert str(other) in caught.value.message and "plan" in caught.value.message
    splits = json.loads((data / "splits.json").read_text())
    splits[0]["train"], splits[0]["val"] = splits[0]["val"], splits[0]["train"]  # same plan, other cases
    (data / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(SatsegError, match="train/val cases"):
        train(data, tmp_path / "run", replace(cfg, epochs=2), resume=True, progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["epoch"] == 1


def test_a_run_and_a_preprocessed_folder_have_one_writer_at_a_time(tmp_path):
    from satseg.atomic import exclusive

    data = make_preprocessed(tmp_path / "data", 2, num_cases=4, shape=(32, 32))
    cfg = TrainConfig(net="unet2d", skip="sat", epochs=1, batch=2, patch=(32, 32), **{**TINY, "iters_per_epoch": 2})
    train(data, tmp_path / "run", cfg, progress=False)
    with exclusive(tmp_path / "run", "training"):  # as another `train --resume` of this run would hold it
        with pytest.raises(SatsegError, match="in use") as caught:
            train(data, tmp_path / "run", replace(cfg, epochs=2), resume=True, progress=False)
        assert str(tmp_path / "run") in caught.value.message
    assert load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["epoch"] == 1
    (tmp_path / "run" / ".checkpoint_last.pt.k1ll3d00.tmp.pt").write_bytes(b"left by a SIGKILL")
    train(data, tmp_path / "run", replace(cfg, epochs=2), resume=True, progress=False)  # free again
    assert not (tmp_path / "run" / ".satseg.lock").exists()
    assert not list((tmp_path / "run").glob(".*.tmp*"))  # the killed run's temporary is gone
    raw = tmp_path / "data_raw"
    with exclusive(data, "preprocessing"), pytest.raises(SatsegError, match="in use"):
        preprocess_dataset(raw, data, folds=2, seed=0)
