"""Untrained tiny models saved as run folders or shipped-model folders, with a plan written by hand.

Their predictions mean nothing; the tests that use them check what satseg does around a model (which model
is picked, how probabilities are averaged and mapped back), against references computed independently.
"""

import json
from pathlib import Path

import torch

from satseg.nn import build_model
from satseg.runs import LAST, save_checkpoint


def mri_plan(spacing=(2.0, 2.0, 2.0), median_shape=(16, 16, 16), labels=("a", "b")) -> dict:
    """A 3D single-channel MRI plan (z-score per image) resampling to ``spacing``."""
    return {
        "spatial_dims": 3,
        "num_channels": 1,
        "channel_names": ["MRI"],
        "modality": "mri",
        "labels": {"background": 0, **{name: i + 1 for i, name in enumerate(labels)}},
        "spacing": list(spacing),
        "size": None,
        "normalization": [{"scheme": "zscore", "modality": "mri"}],
        "median_spacing": list(spacing),
        "median_shape": list(median_shape),
        "patch_size": [16, 16, 16],
    }


def ct_plan(spacing=(4.0, 4.0, 4.0), median_shape=(32, 32, 32)) -> dict:
    """A 3D CT plan (Hounsfield units clipped to -1000..1000) with one foreground class."""
    plan = mri_plan(spacing, median_shape, labels=("organ",))
    plan.update(channel_names=["CT"], modality="ct")
    plan["normalization"] = [{"scheme": "ct", "clip": [-1000.0, 1000.0], "mean": 0.0, "std": 500.0, "modality": "ct"}]
    return plan


def save_model(
    folder: Path, plan: dict, seed: int, *, shipped: bool = False, fold: int = 0, gain: float = 1.0
) -> Path:
    """An untrained UNet3D+SAT (widths 4, 8) for ``plan``: a run folder, or a shipped-model folder with a card.

    ``gain`` multiplies every convolution's weights: at 1.5 the untrained net's labels vary with the input
    (at 1 its biases mostly decide one class everywhere)."""
    torch.manual_seed(seed)
    arch = {"net": "unet3d", "skip": "sat", "in_channels": 1, "out_channels": len(plan["labels"]), "features": [4, 8]}
    model = build_model(**arch).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith("weight") and weight.ndim > 1:
                weight.mul_(gain)
    config = {"model": arch, "plan": plan, "train": {"fold": fold, "patch": [16, 16, 16]}}
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / ("checkpoint.pt" if shipped else LAST), model=model, run_config=config)
    if shipped:
        card = {"spatial_dims": 3, "num_channels": 1, "labels": [k for k in plan["labels"] if k != "background"]}
        (folder / "card.json").write_text(json.dumps(card), encoding="utf-8")
    return folder
