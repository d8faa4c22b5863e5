"""Every command in README.md runs: here (on synthetic stand-ins for its data) or in `.ci/run`."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from satseg.cli import app
from satseg.data.synthetic import write_synthetic_isbi, write_synthetic_msd

ROOT = Path(__file__).resolve().parents[1]
# Keep README training commands short here: a single-value option given twice takes the last value.
FAST_TRAIN = ["--epochs", "1", "--iters", "2", "--batch", "2", "--features", "4,8", "--patch", "16,16,16",
              "--device", "cpu"]  # fmt: skip
CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
INSTALL = f'{CPU_TORCH} && pip install -e ".[test]"'  # contributors
INSTALL_USER = f"{CPU_TORCH} && pip install ."  # users
# CI installs the same CPU build of torch from a local wheel (no network there), then satseg with its tests
RUN_BY_CI = ("satseg demo", "python -m pytest -q", INSTALL, INSTALL_USER)


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_commands_not_run_here_are_run_by_ci():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in RUN_BY_CI:
        assert command in readme_commands(), f"README no longer shows `{command}`"
    assert "satseg demo" in ci and "python -m pytest -q" in ci
    assert "pip install -q torch==2.13.0" in ci and 'pip install -q -e ".[test]"' in ci


def _optional_dependencies() -> dict[str, list[str]]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
        from pip._vendor import tomli as tomllib
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["project"]["optional-dependencies"]


def test_readme_install_line_installs_what_the_test_command_needs():
    installs = [c for c in readme_commands() if "pip install" in c and "-e" in c]
    assert installs, "README shows no `pip install -e` line"
    extras_found = re.findall(r"\.\[([\w,-]+)\]", installs[0])
    assert extras_found, f"`{installs[0]}` installs no extras, so the tests' tools (pytest) are missing"
    declared = _optional_dependencies()
    requirements = []
    for extra in extras_found[0].split(","):
        assert extra in declared, f"README installs extra `{extra}`, pyproject.toml has {sorted(declared)}"
        requirements += declared[extra]
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}
    assert "pytest" in names
    # the README tells the new user how to run the tests, with the module that install line provides
    assert "python -m pytest -q" in readme_commands()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.index("python -m pytest -q") < text.index("## Segment your own scan")


def _drive_like(root: Path, cases: int = 6) -> None:
    """DRIVE's training folder in miniature: images/, 1st_manual/ (vessels) and mask/ (the field of view)."""
    import numpy as np
    from PIL import Image

    for name in ("images", "1st_manual", "mask"):
        (root / name).mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    disc = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 15**2).astype(np.uint8) * 255
    for i in range(21, 21 + cases):
        vessels = np.zeros((32, 32), np.uint8)
        vessels[rng.integers(4, 28), 4:28] = 255
        vessels[4:28, rng.integers(4, 28)] = 255
        picture = np.stack([200 - vessels // 3, 90 - vessels // 4, 40 + 0 * vessels], -1).astype(np.uint8)
        Image.fromarray(picture).save(root / "images" / f"{i}_training.png")
        Image.fromarray(vessels).save(root / "1st_manual" / f"{i}_manual1.png")
        Image.fromarray(disc).save(root / "mask" / f"{i}_training_mask.png")


@pytest.mark.slow
def test_readme_workflow_commands_run(tmp_path, monkeypatch):
    dataset = write_synthetic_msd(tmp_path / "Task04_Hippocampus", 6, (20, 24, 20), seed=3)
    (dataset / "imagesTs").mkdir()
    shutil.copy(dataset / "imagesTr" / "synth_000.nii.gz", dataset / "imagesTs" / "hippocampus_118.nii.gz")
    shutil.copy(dataset / "imagesTr" / "synth_001.nii.gz", tmp_path / "scan.nii.gz")
    _drive_like(tmp_path / "drive" / "training")
    write_synthetic_isbi(tmp_path / "isbi2012", pages=6, size=(32, 32), test_pages=2)  # the stacks as downloaded
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    ran = []
    for command in readme_commands():
        if command in RUN_BY_CI:
            continue
        args = shlex.split(command)
        if args[0] == "torchrun":
            args = [sys.executable, "-m", "torch.distributed.run", *args[1:]]
            args[args.index("--nproc_per_node") + 1] = "2"
            proc = subprocess.run(
                args + FAST_TRAIN, capture_output=True, encoding="utf-8", errors="replace", timeout=300
            )
            assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
        else:
            assert args[0] == "satseg", command
            args = args[1:]
            if args[0] == "train":
                pictures = "drive_pp" in args or "isbi_pp" in args  # 2D
                args += FAST_TRAIN if not pictures else [*FAST_TRAIN[:-4], "--patch", "16,16"]
            if args[0] == "params":
                args += ["--no-flops", "--no-memory"]
            result = runner.invoke(app, args)
            assert result.exit_code == 0, f"{command}\n{result.output[-2000:]}"
        ran.append(command)
    assert (tmp_path / "scan_seg.nii.gz").is_file()
    assert (tmp_path / "isbi_pp" / "cases" / "train-volume_05.npz").is_file()
    assert (tmp_path / "onnx_out" / "hippocampus_118_seg.nii.gz").is_file()
    assert len(ran) >= 8
