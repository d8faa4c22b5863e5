"""`satseg segment --shard I/N` and `--skip-existing`: shards are disjoint, their union is an unsharded run,
and a shard run again resumes (finished masks are skipped, not overwritten, not an error).

The model is an untrained tiny U-Net saved as a run folder with a plan written by hand: its predictions mean
nothing, the tests compare what satseg writes across runs, byte for byte as SimpleITK reads it.
"""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from satseg.cli import app
from satseg.data.io import Image, write_image
from satseg.errors import ConfigError
from satseg.inference.batch import parse_shard, segment_inputs, shard_inputs
from satseg.nn import build_model
from satseg.runs import LAST, save_checkpoint

PLAN = {
    "spatial_dims": 3,
    "num_channels": 1,
    "channel_names": ["MRI"],
    "modality": "mri",
    "labels": {"background": 0, "a": 1},
    "spacing": None,  # model spacing: no resampling
    "size": None,
    "normalization": [{"scheme": "zscore", "modality": "mri"}],
    "patch_size": [8, 8, 8],
}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    torch.manual_seed(0)
    arch = {"net": "unet3d", "skip": "sat", "in_channels": 1, "out_channels": 2, "features": [4, 8]}
    folder = tmp_path_factory.mktemp("run")
    config = {"model": arch, "plan": PLAN, "train": {"patch": [8, 8, 8]}}
    save_checkpoint(folder / LAST, model=build_model(**arch).eval(), run_config=config)
    return folder


def _scans(folder, count=5):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        array = rng.normal(size=(1, 6 + i, 9, 7)).astype(np.float32) + 1.0  # non-zero: no crop
        write_image(Image(array, (1.0, 1.5, 2.0), (i, 0, 0), tuple(np.eye(3).ravel())), folder / f"s{i}.nii.gz")
    return folder


def _masks(folder):
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*_seg.nii.gz"))}


def test_parse_shard_reads_i_of_n_and_the_launchers_environment():
    assert parse_shard("2/5") == (2, 5)
    assert parse_shard("auto", {}) == (0, 1)
    assert parse_shard("auto", {"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)  # torchrun
    assert parse_shard("auto", {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == (1, 2)  # srun
    job_array = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert parse_shard("auto", job_array) == (1, 3)  # sbatch --array 10-12
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_shards_are_disjoint_and_cover_every_input_whatever_the_order():
    pairs = [(f"x{i}", None) for i in (7, 3, 9, 0, 5, 1, 8)]
    shards = [shard_inputs(pairs, i, 3) for i in range(3)]
    shards_of_reversed = [shard_inputs(pairs[::-1], i, 3) for i in range(3)]
    assert shards == shards_of_reversed  # the split depends on the inputs, not on the order they were listed
    names = [p for shard in shards for p, _ in shard]
    assert sorted(names) == sorted(p for p, _ in pairs) and len(set(names)) == len(names)
    assert [p for p, _ in shards[0]] == ["x0", "x5", "x9"]  # sorted: x0 x1 x3 x5 x7 x8 x9; every 3rd from 0


def test_union_of_shards_equals_an_unsharded_run_and_a_rerun_resumes(run_folder, tmp_path):
    scans = _scans(tmp_path / "scans")
    whole = segment_inputs([scans], output=tmp_path / "whole", model=run_folder, device="cpu")
    assert whole.ok and len(whole.results) == 5
    reports = [
        segment_inputs([scans], output=tmp_path / "sharded", model=run_folder, device="cpu", shard=(i, 3))
        for i in range(3)
    ]
    # s0 s1 s2 s3 s4 -> shard 0: s0 s3, shard 1: s1 s4, shard 2: s2 (one input, still written into the folder)
    assert [[r["input"][-9:] for r in rep.results] for rep in reports] == [
        ["s0.nii.gz", "s3.nii.gz"],
        ["s1.nii.gz", "s4.nii.gz"],
        ["s2.nii.gz"],
    ]
    expected, got = _masks(tmp_path / "whole"), _masks(tmp_path / "sharded")
    assert sorted(got) == sorted(expected) == [f"s{i}_seg.nii.gz" for i in range(5)]
    for name, mask in expected.items():
        np.testing.assert_array_equal(got[name], mask)
    # Shard 1 is "killed" after its first mask: it resumes, skipping that one and writing the other.
    (tmp_path / "sharded" / "s4_seg.nii.gz").unlink()
    before = (tmp_path / "sharded" / "s1_seg.nii.gz").stat().st_mtime_ns
    again = segment_inputs([scans], output=tmp_path / "sharded", model=run_folder, device="cpu", shard=(1, 3))
    assert again.ok and again.skipped == [str(scans / "s1.nii.gz")]
    assert [r["input"] for r in again.results] == [str(scans / "s4.nii.gz")]
    assert (tmp_path / "sharded" / "s1_seg.nii.gz").stat().st_mtime_ns == before  # not rewritten
    np.testing.assert_array_equal(_masks(tmp_path / "sharded")["s4_seg.nii.gz"], expected["s4_seg.nii.gz"])


def test_cli_shard_says_how_many_it_skipped_and_unsharded_reruns_still_refuse(run_folder, tmp_path):
    scans = _scans(tmp_path / "scans", count=2)
    out = tmp_path / "out"
    args = ["segment", str(scans), "-o", str(out), "--model", str(run_folder), "--device", "cpu"]
    first = CliRunner().invoke(app, [*args, "--shard", "0/1"])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(app, [*args, "--shard", "0/1"])
    assert second.exit_code == 0 and "skipped 2 input(s)" in second.output
    plain = CliRunner().invoke(app, args)  # without --shard / --skip-existing an existing mask is an error
    assert plain.exit_code == 1 and "s0_seg.nii.gz` already exists" in plain.output
    resumed = CliRunner().invoke(app, [*args, "--skip-existing"])
    assert resumed.exit_code == 0 and "skipped 2 input(s)" in resumed.output
    bad = CliRunner().invoke(app, [*args, "--shard", "2/2"])
    assert bad.exit_code == 1 and "shard" in bad.output
