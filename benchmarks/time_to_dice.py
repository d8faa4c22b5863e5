"""Time to Dice: how many steps and seconds ORG and SAT skips need to reach validation Dice thresholds.

Both gates train with the same recipe (``satseg train``'s, see the profile) on MSD hippocampus
preprocessed by ``satseg preprocess``; every ``val_every`` steps the weights the run would ship (final
or EMA) are validated on the fold's validation cases (sliding windows on the preprocessed grid), and the
first step at which the mean Dice reaches each threshold is recorded, with the training seconds spent
until then (validation time left out).

Usage (from the repository root)::

    python benchmarks/time_to_dice.py --profile cpu          # tiny, one thread
    python benchmarks/time_to_dice.py --profile gpu          # ~8 minutes of one H100: trainings run concurrently
    python benchmarks/time_to_dice.py --profile gpu --prepare-only   # preprocess into the cache (needs SimpleITK)

Results: ``benchmarks/results/time-to-dice-<profile>/results.json`` and ``table.md``; each training also
writes ``runs/<gate>-s<seed>.json`` when it finishes (a rerun skips finished trainings).
Concurrent trainings share the device: their seconds are each one's wall time under that sharing (equal
for every gate, so comparable with each other, not with a training that has the device alone); steps
are unaffected.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from satseg.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from satseg.data.store import load_splits  # noqa: E402
from satseg.training.config import TrainConfig  # noqa: E402

log = logging.getLogger("bench.ttd")


@dataclass(frozen=True)
class TimeToDiceProfile:
    """One time-to-Dice setting: data, recipe, budget, thresholds and how trainings share the machine."""

    name: str
    source: str  # dataset folder under the data root
    net: str
    train: dict[str, Any]  # TrainConfig fields shared by every gate (the recipe)
    val_every: int  # steps between validations
    max_steps: int
    thresholds: tuple[float, ...]
    gates: tuple[str, ...] = ("org", "sat")
    seeds: int = 1
    concurrent: bool = False  # one process per training, all at once (GPU)
    threads: int | None = None
    val_cases: int | None = None  # first N validation cases of the fold (None: all)
    fold: int = 0
    folds: int = 5
    notes: list[str] = field(default_factory=list)


PROFILES: dict[str, TimeToDiceProfile] = {
    "gpu": TimeToDiceProfile(
        name="gpu",
        source="msd_hippocampus",
        net="unet3d",
        train={
            "batch": 16,
            "optimizer": "adam",
            "lr": 3e-3,
            "ema": 0.99,
            "device": "cuda",
            "compile": False,
            "resident": True,
            "max_minutes": 7.0,
        },  # fmt: skip
        val_every=100,
        max_steps=4000,
        thresholds=(0.80, 0.85, 0.88),
        seeds=2,
        concurrent=True,
        notes=[
            "U-Net 3D at satseg's default widths, the plan's patch, batch 16, Adam 3e-3 with poly decay over "
            "max_steps, EMA 0.99, bf16, augmentation on the GPU, cases resident on the GPU.",
            "Four trainings (ORG and SAT, two seeds) run at once on one GPU, each in its own process; "
            "each stops at max_steps or after 7 minutes.",
        ],
    ),
    "cpu": TimeToDiceProfile(
        name="cpu",
        source="msd_hippocampus",
        net="unet3d",
        train={
            "batch": 2,
            "patch": (24, 32, 24),
            "optimizer": "adam",
            "lr": 3e-3,
            "ema": 0.99,
            "device": "cpu",
            "model_options": {"features": [8, 16, 32, 64]},
            "max_minutes": 10.0,
        },  # fmt: skip
        val_every=50,
        max_steps=600,
        thresholds=(0.60, 0.70, 0.80),
        threads=1,
        val_cases=12,
        notes=["A scaled CPU version: small widths and patches, one thread, 12 validation cases."],
    ),
    "smoke": TimeToDiceProfile(
        name="smoke",
        source="msd_hippocampus",
        net="unet3d",
        train={
            "batch": 2,
            "patch": (16, 16, 16),
            "optimizer": "adam",
            "lr": 3e-3,
            "device": "cpu",
            "model_options": {"features": [4, 8]},
        },  # fmt: skip
        val_every=2,
        max_steps=4,
        thresholds=(0.0, 0.99),
        threads=1,
        val_cases=2,
        folds=2,
        notes=["Checks the pipeline only."],
    ),
}


# ---------------------------------------------------------------- data
def cache_dir(profile: TimeToDiceProfile, cache: Path) -> Path:
    """The preprocessed dataset (shared by the profiles; carry it to a GPU host that lacks SimpleITK)."""
    return cache / f"ttd-{profile.source}"


def view_dir(profile: TimeToDiceProfile, cache: Path) -> Path:
    """The profile's training view of the preprocessed dataset."""
    return cache / f"ttd-{profile.source}-{profile.name}"


def prepare(profile: TimeToDiceProfile, dataset: Path, cache: Path) -> Path:
    """Preprocess ``dataset`` (once) and write the training view: the fold's training and validation cases.

    Returns:
        The view folder to train on (``plan.json``, ``cases`` linked, ``splits.json`` with one fold).
    """
    out = cache_dir(profile, cache)
    if not (out / "splits.json").is_file():
        from satseg.data.preprocess import preprocess_dataset  # needs SimpleITK: only when preprocessing

        log.info("preprocessing %s into %s", dataset, out)
        preprocess_dataset(dataset, out, folds=profile.folds, seed=0)
    view = view_dir(profile, cache)
    fold = load_splits(out)[profile.fold]
    val = sorted(fold["val"])[: profile.val_cases] if profile.val_cases else sorted(fold["val"])
    view.mkdir(parents=True, exist_ok=True)
    (view / "plan.json").write_text((out / "plan.json").read_text())
    if (view / "cases").is_symlink() and not (view / "cases").exists():
        (view / "cases").unlink()  # made on another machine
    if not (view / "cases").exists():  # relative, so the cache folder can be copied elsewhere
        (view / "cases").symlink_to(Path("..") / out.name / "cases", target_is_directory=True)
    atomic_write_json(view / "splits.json", [{"train": sorted(fold["train"]), "val": val}])
    return view


# ---------------------------------------------------------------- one training
def recipe(profile: TimeToDiceProfile, gate: str, seed: int) -> TrainConfig:
    """The training settings of one gate and seed: the profile's recipe, validated every ``val_every`` steps."""
    epochs = -(-profile.max_steps // profile.val_every)
    return TrainConfig(net=profile.net, skip=gate, seed=seed, fold=0, epochs=epochs,
                       iters_per_epoch=profile.val_every, val_every=1, **profile.train)  # fmt: skip


def reached(curve: list[dict[str, float]], thresholds: tuple[float, ...]) -> dict[str, dict[str, float] | None]:
    """For each threshold, the first validation point whose Dice reaches it (``None``: never reached)."""
    out: dict[str, dict[str, float] | None] = {}
    for t in thresholds:
        hit = next((p for p in curve if p["dice"] >= t), None)
        out[f"{t:.2f}"] = None if hit is None else {"step": hit["step"], "train_seconds": hit["train_seconds"]}
    return out


def train_one(profile: TimeToDiceProfile, view: Path, gate: str, seed: int, work: Path) -> dict[str, Any]:
    """Train one gate/seed and return its Dice-versus-steps curve and the thresholds it reached."""
    from satseg.training.trainer import train

    config = recipe(profile, gate, seed)
    run_dir = work / f"{gate}-s{seed}"
    if run_dir.exists():  # an interrupted attempt: start over
        import shutil

        shutil.rmtree(run_dir)
    curve: list[dict[str, float]] = []
    spent = 0.0

    def record(epoch: int, row: dict[str, Any]) -> None:
        nonlocal spent
        spent += float(row["seconds"]) - float(row.get("val_seconds", 0.0))
        if "dice_mean" in row:
            step = (epoch + 1) * profile.val_every
            curve.append({"step": step, "train_seconds": round(spent, 3), "dice": float(row["dice_mean"])})

    started = time.perf_counter()
    result = train(view, run_dir, config, progress=False, callbacks=[record])
    return {
        "gate": gate,
        "seed": seed,
        "net": profile.net,
        "train_config": config.to_dict(),
        "curve": curve,
        "reached": reached(curve, profile.thresholds),
        "final_dice": result.final_dice,
        "final_weights": result.final_weights,
        "best_dice_optimistic": result.best_dice,
        "steps_done": result.epochs_done * profile.val_every,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


# ---------------------------------------------------------------- the suite
def _machine() -> dict[str, Any]:
    try:
        from runner import machine_info  # imports SimpleITK (scoring); absent on some GPU hosts
    except ImportError:
        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return {"torch": torch.__version__, "cuda": cuda}
    return machine_info()


def _commit() -> str:
    try:
        from runner import git_commit
    except ImportError:
        return "unknown"
    return git_commit(ROOT)


def table(profile: TimeToDiceProfile, runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per training, steps / seconds to each threshold, final and best-epoch Dice."""
    heads = [f"Dice {t:.2f}: steps (s)" for t in profile.thresholds]
    lines = [
        f"# Time to Dice ({profile.name} profile)",
        "",
        f"`{profile.net}` on `{profile.source}`, fold {profile.fold}; validation every {profile.val_every} steps "
        "on the preprocessed grid. Seconds are training time (validation excluded).",
        "",
        "| gate | seed | " + " | ".join(heads) + " | final Dice | best epoch (optimistic) | steps |",
        "|---|---|" + "---|" * len(heads) + "---|---|---|",
    ]
    for run in sorted(runs, key=lambda r: (r["gate"], r["seed"])):
        cells = []
        for t in profile.thresholds:
            hit = run["reached"][f"{t:.2f}"]
            cells.append("not reached" if hit is None else f"{hit['step']} ({hit['train_seconds']:.0f} s)")
        final = "n/a" if run["final_dice"] is None else f"{run['final_dice']:.3f}"
        best = "n/a" if run["best_dice_optimistic"] is None else f"{run['best_dice_optimistic']:.3f}"
        lines.append(f"| {run['gate']} | {run['seed']} | " + " | ".join(cells) + f" | {final} | {best} | "
                     f"{run['steps_done']} |")  # fmt: skip
    lines += ["", *(f"- {n}" for n in profile.notes), ""]
    return "\n".join(lines)


def run_suite(profile: TimeToDiceProfile, view: Path, out: Path, work: Path, argv_base: list[str]) -> list[dict]:
    jobs = [(g, s) for s in range(profile.seeds) for g in profile.gates]
    todo = [(g, s) for g, s in jobs if not (out / "runs" / f"{g}-s{s}.json").is_file()]
    if profile.concurrent and len(todo) > 1:
        procs = [
            subprocess.Popen([sys.executable, __file__, *argv_base, "--worker", g, str(s)]) for g, s in todo
        ]  # one process per training: they share the GPU, each with its own CUDA context
        failed = [todo[i] for i, p in enumerate(procs) if p.wait() != 0]
        if failed:
            raise SystemExit(f"trainings failed: {failed}")
    else:
        for g, s in todo:
            atomic_write_json(out / "runs" / f"{g}-s{s}.json", train_one(profile, view, g, s, work))
    return [json.loads((out / "runs" / f"{g}-s{s}.json").read_text()) for g, s in jobs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--dataset", default=None, help="raw dataset folder (default: <data root>/<profile source>)")
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--cache", default=str(HERE / ".cache"), help="preprocessed data and run folders")
    parser.add_argument("--prepare-only", action="store_true", help="preprocess into the cache, then stop")
    parser.add_argument("--concurrent", action="store_true", help="one process per training, all at once")
    parser.add_argument("--worker", nargs=2, metavar=("GATE", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("satseg").setLevel(logging.WARNING)
    profile = PROFILES[args.profile]
    if args.concurrent:
        profile = dataclasses.replace(profile, concurrent=True)
    if profile.threads:
        torch.set_num_threads(profile.threads)
    cache = Path(args.cache)
    out = Path(args.results) / f"time-to-dice-{profile.name}"
    work = cache / "runs" / f"time-to-dice-{profile.name}"
    base = ["--profile", profile.name, "--results", args.results, "--cache", args.cache]
    if args.worker:  # a child of a concurrent suite: the view exists already
        gate, seed = args.worker[0], int(args.worker[1])
        view = view_dir(profile, cache)
        atomic_write_json(out / "runs" / f"{gate}-s{seed}.json", train_one(profile, view, gate, seed, work))
        return
    if args.dataset is None:
        from paper import default_data_root

        args.dataset = str(default_data_root() / profile.source)
    view = prepare(profile, Path(args.dataset), cache)
    if args.prepare_only:
        return
    started = time.perf_counter()
    runs = run_suite(profile, view, out, work, base)
    summary = {
        "profile": dataclasses.asdict(profile),
        "runs": runs,
        "suite_wall_seconds": round(time.perf_counter() - started, 2),
        "machine": _machine(),
        "commit": _commit(),
    }
    atomic_write_json(out / "results.json", summary)
    atomic_write_text(out / "table.md", table(profile, runs))
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
