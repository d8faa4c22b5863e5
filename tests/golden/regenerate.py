"""Regenerate the stored ("golden") outputs of the shipped models: ``python -m tests.golden.regenerate``.

Run it only when a shipped model's behaviour is *meant* to change (new weights in ``models/``, a deliberate
change to what a backbone or gate computes). A refactor must leave these numbers alone: if
``tests/golden/test_golden.py`` fails after a change that was not supposed to alter any output, the change
is wrong, not the stored values. Say in the commit message why the stored values changed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from satseg.nn.lean import make_lean
from satseg.runs import load_run

GOLDEN_DIR = Path(__file__).resolve().parent
MODELS_DIR = GOLDEN_DIR.parents[1] / "models"
SEED = 0
SAMPLES = 64
# Small inputs the models' pooling divides exactly (U-Net 3D: 3 poolings, U-Net 2D: 4), fast on a CPU.
INPUT_SIZE = {2: (64, 48), 3: (24, 32, 16)}


def shipped_models() -> list[str]:
    """The names of the shipped models (the folders of ``models/`` holding a checkpoint)."""
    return sorted(p.parent.name for p in MODELS_DIR.glob("*/checkpoint.pt"))


def golden_input(spatial_dims: int, channels: int) -> torch.Tensor:
    """The fixed, seeded input ``(1, channels, *INPUT_SIZE[spatial_dims])`` (float32, CPU)."""
    generator = torch.Generator().manual_seed(SEED)
    return torch.randn((1, channels, *INPUT_SIZE[spatial_dims]), generator=generator, dtype=torch.float32)


def sample_indices(numel: int) -> torch.Tensor:
    """``SAMPLES`` fixed flat positions in a logits tensor of ``numel`` values (seeded, sorted)."""
    generator = torch.Generator().manual_seed(SEED + 1)
    return torch.randperm(numel, generator=generator)[:SAMPLES].sort().values


def model_logits(name: str) -> dict[str, torch.Tensor]:
    """The logits of the shipped model ``name`` for :func:`golden_input`: torch path and lean path."""
    torch.manual_seed(SEED)
    model, config = load_run(MODELS_DIR / name / "checkpoint.pt")
    model = model.float().cpu().eval()
    plan = config["plan"]
    x = golden_input(plan["spatial_dims"], plan["num_channels"])
    with torch.no_grad():
        out = model(x)
        torch_logits = out[0] if isinstance(out, (list, tuple)) else out
        lean_logits = make_lean(model)(x)
    return {"torch": torch_logits, "lean": lean_logits}


def summarise(logits: torch.Tensor) -> dict[str, object]:
    """Summary statistics (float64) and :data:`SAMPLES` sampled values of ``logits``."""
    flat = logits.detach().double().flatten()
    return {
        "shape": list(logits.shape),
        "mean": flat.mean().item(),
        "std": flat.std().item(),
        "min": flat.min().item(),
        "max": flat.max().item(),
        "abs_sum": flat.abs().sum().item(),
        "argmax_counts": torch.bincount(logits.argmax(1).flatten(), minlength=logits.shape[1]).tolist(),
        "indices": sample_indices(flat.numel()).tolist(),
        "values": flat[sample_indices(flat.numel())].tolist(),
    }


def main() -> int:
    for name in shipped_models():
        stored = {"model": name, "seed": SEED, **{path: summarise(t) for path, t in model_logits(name).items()}}
        target = GOLDEN_DIR / f"{name}.json"
        text = json.dumps(stored, indent=1)
        text = re.sub(r"\[[^\[\]{}]*\]", lambda m: json.dumps(json.loads(m.group())), text)  # lists on one line
        target.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
