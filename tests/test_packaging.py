"""A wheel built from the repository carries the shipped models, and an install of it lists and uses them.

The wheel is installed with ``pip --target`` into a temporary folder, and ``python -m satseg`` runs from an
unrelated working directory with ``PYTHONPATH`` pointing at that folder only, so nothing of the checkout can
stand in for the installed package.
"""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MODEL_FILES = ("checkpoint.pt", "card.md", "card.json")
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "satseg", "models")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _can_build_offline() -> bool:
    """setuptools with a built-in bdist_wheel (>= 70.1) in this interpreter: no build environment to download."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    import setuptools

    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(wheel, install folder)``: the repository built into a wheel and installed with ``--no-deps``."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a clean copy: setuptools would reuse a stale build/ folder of the checkout.
    source = root / "source"
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(root / "dist")]
    if _can_build_offline():
        command.append("--no-build-isolation")
    subprocess.run(command, check=True, cwd=root, capture_output=True)
    (wheel,) = (root / "dist").glob("satseg-*.whl")
    target = root / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, cwd=root, capture_output=True)
    return wheel, target


def _shipped_in_repository() -> list[str]:
    names = sorted(p.name for p in (REPO / "models").iterdir() if (p / "checkpoint.pt").is_file())
    assert {"hippocampus-unet3d-sat", "skin-lesion-unet2d-sat"} <= set(names)
    return names


def _run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target), "NO_COLOR": "1"}
    # satseg writes UTF-8 (progress bars on stderr); decode it as such whatever this machine's locale is
    return subprocess.run(
        [sys.executable, "-m", "satseg", *args], cwd=cwd, env=env, capture_output=True, encoding="utf-8", timeout=300
    )


def test_wheel_holds_every_shipped_model_byte_for_byte(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for model in _shipped_in_repository():
            for file in MODEL_FILES:
                member = f"satseg/models/{model}/{file}"
                assert member in names, member
                assert _sha256(archive.read(member)) == _sha256((REPO / "models" / model / file).read_bytes())
        # the measured frontier `satseg params --budget` reads
        assert archive.read("satseg/models/frontier.json") == (REPO / "models" / "frontier.json").read_bytes()


def test_installed_wheel_lists_and_uses_the_shipped_models(installed, tmp_path):
    _, target = installed
    listed = _run_installed(target, tmp_path, "models", "--json")
    assert listed.returncode == 0, listed.stderr
    cards = json.loads(listed.stdout)
    assert sorted(c["name"] for c in cards) == _shipped_in_repository()
    for card in cards:  # the installed package's own copy, not the checkout's
        assert Path(card["path"]).resolve().is_relative_to(target.resolve())
    budget = _run_installed(target, tmp_path, "params", "--budget", "100000", "--json")  # the frontier travels too
    assert budget.returncode == 0, budget.stderr
    assert all(row["best"] for row in json.loads(budget.stdout))

    # An MRI-like crop near the hippocampus model's field of view, and an 8-bit RGB picture.
    rng = np.random.default_rng(0)
    volume = sitk.GetImageFromArray((rng.random((34, 48, 36)) * 300 + 50).astype(np.float32))
    volume.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(volume, str(tmp_path / "crop.nii.gz"))
    picture = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    PILImage.fromarray(picture).save(tmp_path / "skin.png")
    segmented = _run_installed(target, tmp_path, "segment", "crop.nii.gz", "skin.png", "--json", "--device", "cpu")
    assert segmented.returncode == 0, segmented.stderr
    results = {Path(r["input"]).name: r for r in json.loads(segmented.stdout)["results"]}
    assert results["crop.nii.gz"]["model"] == "hippocampus-unet3d-sat"
    assert results["skin.png"]["model"] == "skin-lesion-unet2d-sat"
    mask = sitk.ReadImage(str(tmp_path / "crop_seg.nii.gz"))
    assert mask.GetSize() == volume.GetSize()
    assert np.asarray(PILImage.open(tmp_path / "skin_seg.png")).shape == picture.shape[:2]
