"""``satseg demo``: the whole workflow on synthetic data, with no data and no download.

It writes a small synthetic 3D MRI-like dataset (two structures of varied shape, intensity
inhomogeneity and noise, on an oblique, anisotropic grid) into a temporary folder, then runs
preprocess → train (``org`` and ``sat``) → evaluate → segment → params, and ends with one table
comparing the two skip connections. Sized to finish in about three minutes on a 2-core CPU.

Training is budgeted in steps (epochs × iterations), never in wall-clock time: a loaded machine takes
longer but prints the same table, and a budget that was cut short is said so in the table.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from satseg.data.preprocess import preprocess_dataset
from satseg.data.synthetic import write_synthetic_msd
from satseg.errors import ConfigError
from satseg.evaluation.model import evaluate_model
from satseg.inference.batch import segment_inputs
from satseg.nn.params import compare_variants
from satseg.training.config import TrainConfig
from satseg.training.trainer import train

__all__ = ["DemoSettings", "run_demo"]

logger = logging.getLogger("satseg.demo")


@dataclass(frozen=True)
class DemoSettings:
    """Size of the demo. The defaults finish in about three minutes on an idle 2-core CPU.

    Each model trains ``epochs × iters_per_epoch`` steps (384: about 80 s on 2 cores, validation included;
    96 steps left the thin rim class unlearned).
    """

    cases: int = 16
    shape: tuple[int, int, int] = (32, 40, 36)
    spacing: tuple[float, float, float] = (1.2, 0.9, 1.1)
    features: tuple[int, ...] = (8, 16, 32, 64)
    patch: tuple[int, int, int] = (32, 32, 32)
    epochs: int = 16
    iters_per_epoch: int = 24
    batch: int = 2
    skips: tuple[str, ...] = ("org", "sat")
    seed: int = 0
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


def run_demo(
    settings: DemoSettings | None = None,
    workdir: str | Path | None = None,
    step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the comparison rows and the paths it wrote.

    Args:
        settings: demo size.
        workdir: where to work; a temporary folder (removed afterwards) when None.
        step: called with a one-line description as each stage starts.
    """
    settings = settings or DemoSettings()
    announce = step or (lambda text: logger.info(text))
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="satseg-demo-") as tmp:
            return _run(settings, Path(tmp), announce)
    workdir = Path(workdir)
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ConfigError(
            f"`{workdir}` already exists and is not empty; the demo would overwrite files in it",
            hint="give --keep a new or empty folder",
        )
    return _run(settings, workdir, announce)


def _run(s: DemoSettings, work: Path, announce: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    announce(f"1/5 writing {s.cases} synthetic MRI-like volumes {s.shape} on an oblique grid into `{work}`")
    raw = write_synthetic_msd(work / "raw", s.cases, s.shape, s.spacing, seed=s.seed)
    announce("2/5 preprocessing (validate, resample, normalise, crop, plan, splits)")
    preprocess_dataset(raw, work / "preprocessed", folds=4, seed=s.seed, progress=True)
    rows = []
    for skip in s.skips:
        steps = s.epochs * s.iters_per_epoch
        announce(f"3/5 training unet3d with `{skip}` skips ({s.epochs} epochs × {s.iters_per_epoch} = {steps} steps)")
        config = TrainConfig(
            net="unet3d", skip=skip, epochs=s.epochs, iters_per_epoch=s.iters_per_epoch, batch=s.batch,
            patch=s.patch, optimizer="adam", lr=3e-3, device=s.device, seed=s.seed,
            model_options={"features": list(s.features)},
        )  # fmt: skip
        cpu_started = time.process_time()  # CPU seconds: what a step costs, whatever else the machine runs
        result = train(work / "preprocessed", work / f"run-{skip}", config)
        cpu_seconds = time.process_time() - cpu_started
        plan = json.loads((work / f"run-{skip}" / "config.json").read_text()).get("train_plan", {})
        on_cpu = str(plan.get("device", "cpu")).startswith("cpu")
        announce(f"4/5 evaluating `{skip}` on the validation cases (original grids)")
        report, gates = evaluate_model(work / f"run-{skip}", work / "preprocessed", work / f"eval-{skip}",
                                       device=s.device, save_predictions=False)  # fmt: skip
        classes = report.summary["classes"]
        measured = compare_variants("unet3d", [skip], s.patch, flops=False, memory=False,
                                    features=list(s.features), out_channels=3)[0]  # fmt: skip
        off = [g["fraction_off"] for g in gates]
        rows.append(
            {
                "skip": skip,
                "dice": {name: classes[name]["dice"]["mean"] for name in classes},
                "dice_std": {name: classes[name]["dice"]["std"] for name in classes},
                "params": measured["params"],
                "skip_channels": measured["skip_channels"],
                "skip_bytes": measured["skip_bytes"],
                "channels_off": sum(off) / len(off) if off else None,
                "train_seconds": result.seconds,
                # training and validation CPU time per step; None on a GPU (the CPU only feeds it there)
                "cpu_seconds_per_step": cpu_seconds / max(result.steps_done, 1) if on_cpu else None,
                "epochs": result.epochs_done,
                "steps_done": result.steps_done,
                "steps_planned": steps,
            }
        )
    announce("5/5 segmenting an unseen volume with the `sat` model (mask + preview PNG on the input grid)")
    scan = work / "scan.nii.gz"
    write_synthetic_msd(work / "unseen", 1, s.shape, s.spacing, seed=s.seed + 1000)
    (work / "unseen" / "imagesTr" / "synth_000.nii.gz").rename(scan)
    segmented = segment_inputs([scan], model=work / f"run-{s.skips[-1]}", device=s.device, preview=True)
    return {"rows": rows, "workdir": str(work), "segmented": segmented.results,
            "seconds": time.perf_counter() - started}  # fmt: skip
