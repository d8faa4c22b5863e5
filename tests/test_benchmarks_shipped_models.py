"""benchmarks/shipped_models.py end to end on a tiny synthetic dataset: a `sat` run and its `org` companion."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from shipped_models import main  # noqa: E402

from satseg.data.preprocess import preprocess_dataset  # noqa: E402
from satseg.data.synthetic import write_synthetic_msd  # noqa: E402
from satseg.training.config import TrainConfig  # noqa: E402
from satseg.training.trainer import train  # noqa: E402


@pytest.mark.slow
def test_card_figures_of_a_sat_run_and_its_org_companion(tmp_path):
    raw = write_synthetic_msd(tmp_path / "raw", 4, (16, 16, 16), spacing=(1.0,) * 3, seed=4, oblique=False,
                              two_structures=False, noise=0.2)  # fmt: skip
    preprocess_dataset(raw, tmp_path / "pp", folds=2, seed=0)
    runs = {}
    for gate in ("sat", "org"):
        config = TrainConfig(net="unet3d", skip=gate, epochs=1, iters_per_epoch=2, patch=(16, 16, 16), batch=2,
                             device="cpu", model_options={"features": [2, 4]})  # fmt: skip
        train(tmp_path / "pp", tmp_path / gate, config, progress=False)
        runs[gate] = tmp_path / gate
    main(["--name", "tiny", "--data", str(tmp_path / "pp"), "--run", f"sat={runs['sat']}",
          "--run", f"org={runs['org']}", "--scans", "1", "--out", str(tmp_path / "out"),
          "--ship-to", str(tmp_path / "models" / "tiny")])  # fmt: skip
    record = json.loads((tmp_path / "out" / "tiny.json").read_text(encoding="utf-8"))
    sat, org = record["runs"]["sat"], record["runs"]["org"]
    # One skip (features 2, 4: one pooling) at the finest level, 16³ fp32: org hands over its 2 channels,
    # the default sat gate one map.
    assert org["architecture"]["skip_bytes"] == 2 * 16**3 * 4 and sat["architecture"]["skip_bytes"] == 16**3 * 4
    for run in (sat, org):
        (case,) = run["segment"]["cases"]
        assert case["peak_rss_mib"] > 50 and case["wall_seconds"] > 0  # a real process that imported torch
        assert Path(case["scan"]).is_file() and case["result"]["input"] == case["scan"]
        (dice,) = [entry["dice"] for entry in run["validation"]["summary"]["classes"].values()]
        assert dice["n"] == 2 and 0.0 <= dice["mean"] <= 1.0  # fold 0 of 2 holds back 2 of the 4 cases
    # the shipped checkpoint: the sat run's final weights, loadable, without optimizer state or the data path
    from satseg.runs import load_checkpoint, load_run

    shipped = load_checkpoint(tmp_path / "models" / "tiny" / "checkpoint.pt")
    last = load_checkpoint(runs["sat"] / "checkpoint_last.pt")
    assert "optimizer" in last and not {"optimizer", "scheduler"} & set(shipped)
    assert shipped["config"]["data_dir"] == "(training machine)" and shipped["config"]["model"]["skip"] == "sat"
    assert all(torch.equal(shipped["model"][k], v) for k, v in last["model"].items())
    model, _ = load_run(tmp_path / "models" / "tiny" / "checkpoint.pt")
    assert model.skip == "sat"
    table = (tmp_path / "out" / "tiny.md").read_text(encoding="utf-8")
    assert "| sat |" in table and "(0.50×)" in table
