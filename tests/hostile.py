"""Helpers of the reliability tests: an untrained tiny run folder (no training needed) and file writers.

The run folders hold a real satseg checkpoint (``save_checkpoint``) of a freshly initialised network with a
hand-written plan, so segment, evaluate and export-onnx run on them in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from satseg.data.plan import PLAN_FORMAT
from satseg.nn import build_model
from satseg.runs import LAST, save_checkpoint
from satseg.training.config import TrainConfig

LABELS = {"background": 0, "core": 1}


def tiny_plan(dims: int, patch: int = 16) -> dict:
    """A plan as `satseg preprocess` writes it: one MRI channel, no resampling, z-score per image."""
    return {
        "format": PLAN_FORMAT,
        "dataset": "synthetic",
        "layout": "msd",
        "spatial_dims": dims,
        "num_channels": 1,
        "channel_names": ["MRI"],
        "modality": "mri",
        "labels": dict(LABELS),
        "spacing": None,
        "size": None,
        "normalization": [{"scheme": "zscore", "modality": "mri"}],
        "median_spacing": [1.0] * dims,
        "median_shape": [float(patch)] * dims,
        "patch_size": [patch] * dims,
        "cases": [],
        "test_cases": [],
    }


def tiny_run(folder: Path, dims: int = 3, *, fold: int = 0, nan_weight: bool = False) -> Path:
    """A run folder with an untrained UNet+SAT (features 4, 8) ``checkpoint_last.pt`` (what load_run reads)."""
    torch.manual_seed(0)
    net = f"unet{dims}d"
    model = build_model(net, "sat", 1, len(LABELS), features=[4, 8])
    if nan_weight:
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = float("nan")
    config = {
        "model": {"net": net, "skip": "sat", "in_channels": 1, "out_channels": len(LABELS), "features": [4, 8]},
        "train": TrainConfig(net=net, fold=fold, patch=(16,) * dims, model_options={"features": [4, 8]}).to_dict(),
        "plan": tiny_plan(dims),
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / LAST, model=model, run_config=config, epoch=1)
    return folder


def write_nifti(path: Path, array_zyx: np.ndarray, spacing_zyx=None) -> Path:
    """Write a ``(z, y, x)`` or ``(y, x)`` array as NIfTI with an axis-aligned affine."""
    data = np.transpose(array_zyx)  # -> (x, y, z)
    spacing = tuple(reversed(spacing_zyx)) if spacing_zyx else (1.0,) * data.ndim
    affine = np.diag([*spacing, *([1.0] * (4 - len(spacing)))])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def scan(shape=(20, 24, 24), seed: int = 0) -> np.ndarray:
    """A float32 scan with a bright ellipsoid (what a tiny model segments without complaint)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = sum(g**2 for g in grids) < 0.4
    return (inside * 2.0 + rng.normal(0, 0.1, shape)).astype(np.float32)


def files_under(folder: Path) -> set[str]:
    """Every file and folder under ``folder`` (hidden ones too), relative."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}
