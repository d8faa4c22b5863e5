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

    python benchmarks/time_to_dice.py --profile cpu-ship     # the shipped models' plan: widths x patches, one thread
    python benchmarks/time_to_dice.py --from-runs RUN... --name shipped   # tabulate finished `satseg train` runs

Results: ``benchmarks/results/time-to-dice-<profile>/results.json`` and ``table.md``; each training also
writes ``runs/[<variant>-]<gate>-s<seed>.json`` when it finishes (a rerun skips finished trainings).
A profile may train several variants (a width and a patch each) of every gate. Besides the wall seconds each
point records the process's CPU seconds (one thread: what the step costs whatever the machine's load) and
the load average.
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
class Variant:
    """One size of the network and patch in a profile: its label and the ``TrainConfig`` fields it overrides."""

    label: str  # "" for a profile's single, unnamed setting
    train: dict[str, Any]


def _ship_variant(width: int, patch: tuple[int, ...]) -> Variant:
    features = [width * 2**level for level in range(4)]
    return Variant(f"w{width}-p{patch[0]}", {"patch": patch, "model_options": {"features": features}})


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
    variants: tuple[Variant, ...] = (Variant("", {}),)  # network sizes and patches, each trained per gate
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
    "cpu-ship": TimeToDiceProfile(
        name="cpu-ship",
        source="msd_hippocampus",
        net="unet3d",
        train={"batch": 2, "device": "cpu"},  # otherwise `satseg train`'s recipe: Adadelta 1.0, poly decay
        variants=(
            _ship_variant(4, (24, 32, 24)),
            _ship_variant(8, (24, 32, 24)),
            _ship_variant(8, (40, 56, 40)),
            _ship_variant(16, (40, 56, 40)),
        ),
        val_every=250,
        max_steps=2000,
        thresholds=(0.70, 0.80, 0.85),
        threads=1,
        val_cases=12,
        notes=[
            "The shipped hippocampus model's CPU plan (issue 22): today's default `sat` (finest skip gated) and "
            "`org`, U-Net 3D at base widths 4, 8, 16 (doubling per level) with a 24x32x24 patch or one covering "
            "a whole crop (40x56x40), batch 2, `satseg train`'s recipe (Adadelta 1.0, poly decay over "
            "2,000 steps), one thread, 12 validation cases.",
        ],
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
def recipe(profile: TimeToDiceProfile, gate: str, seed: int, variant: Variant | None = None) -> TrainConfig:
    """The training settings of one gate, seed and variant: the profile's recipe with the variant's sizes,
    validated every ``val_every`` steps."""
    epochs = -(-profile.max_steps // profile.val_every)
    train = {**profile.train, **(variant.train if variant else {})}
    return TrainConfig(net=profile.net, skip=gate, seed=seed, fold=0, epochs=epochs,
                       iters_per_epoch=profile.val_every, val_every=1, **train)  # fmt: skip


def job_name(variant: str, gate: str, seed: int) -> str:
    """The file stem of one training's record (a profile's single unnamed variant keeps ``<gate>-s<seed>``)."""
    return f"{variant}-{gate}-s{seed}" if variant else f"{gate}-s{seed}"


def _variant(profile: TimeToDiceProfile, label: str) -> Variant:
    by_label = {v.label: v for v in profile.variants}
    if label not in by_label:
        raise SystemExit(f"profile {profile.name!r} has no variant {label!r}: {sorted(by_label)}")
    return by_label[label]


def reached(curve: list[dict[str, float]], thresholds: tuple[float, ...]) -> dict[str, dict[str, float] | None]:
    """For each threshold, the first validation point whose Dice reaches it (``None``: never reached)."""
    out: dict[str, dict[str, float] | None] = {}
    for t in thresholds:
        hit = next((p for p in curve if p["dice"] >= t), None)
        out[f"{t:.2f}"] = None if hit is None else {"step": hit["step"], "train_seconds": hit["train_seconds"]}
    return out


def train_one(
    profile: TimeToDiceProfile, view: Path, gate: str, seed: int, work: Path, variant: Variant | None = None
) -> dict[str, Any]:
    """Train one gate/seed/variant and return its Dice-versus-steps curve and the thresholds it reached."""
    import os

    from satseg.training.trainer import train

    variant = variant or profile.variants[0]
    config = recipe(profile, gate, seed, variant)
    run_dir = work / job_name(variant.label, gate, seed)
    if run_dir.exists():  # an interrupted attempt: start over
        import shutil

        shutil.rmtree(run_dir)
    curve: list[dict[str, float]] = []
    spent = 0.0
    cpu_started = time.process_time()

    def record(epoch: int, row: dict[str, Any]) -> None:
        nonlocal spent
        spent += float(row["seconds"]) - float(row.get("val_seconds", 0.0))
        if "dice_mean" in row:
            step = (epoch + 1) * profile.val_every
            curve.append({"step": step, "train_seconds": round(spent, 3), "dice": float(row["dice_mean"]),
                          "cpu_seconds": round(time.process_time() - cpu_started, 2),
                          "load": round(os.getloadavg()[0], 2)})  # fmt: skip

    started = time.perf_counter()
    result = train(view, run_dir, config, progress=False, callbacks=[record])
    return {
        "variant": variant.label,
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
    heads = [f"Dice {t:g}: steps (s)" for t in profile.thresholds]
    named = any(run.get("variant") for run in runs)
    per_step = any(run["curve"] and "cpu_seconds" in run["curve"][-1] for run in runs)
    first = ["variant"] * named + ["gate", "seed"]
    last = ["final Dice", "best epoch (optimistic)", "steps"] + ["CPU s/step"] * per_step
    lines = [
        f"# Time to Dice ({profile.name} profile)",
        "",
        f"`{profile.net}` on `{profile.source}`, fold {profile.fold}; validation every {profile.val_every} steps "
        "on the preprocessed grid. Seconds are training time (validation excluded)"
        + (
            ", wall clock under the load recorded per point; CPU s/step is the process's CPU time (one thread, "
            "validation included) per step, which the load does not change."
            if per_step
            else "."
        ),
        "",
        "| " + " | ".join(first + heads + last) + " |",
        "|" + "---|" * len(first + heads + last),
    ]
    for run in sorted(runs, key=lambda r: (r.get("variant", ""), r["gate"], r["seed"])):
        cells = [run.get("variant", "")] * named + [run["gate"], str(run["seed"])]
        for t in profile.thresholds:
            hit = run["reached"][f"{t:.2f}"]
            cells.append("not reached" if hit is None else f"{hit['step']} ({hit['train_seconds']:.0f} s)")
        cells.append("n/a" if run["final_dice"] is None else f"{run['final_dice']:.3f}")
        cells.append("n/a" if run["best_dice_optimistic"] is None else f"{run['best_dice_optimistic']:.3f}")
        cells.append(str(run["steps_done"]))
        if per_step:
            end = run["curve"][-1] if run["curve"] else {}
            cells.append(f"{end['cpu_seconds'] / end['step']:.2f}" if "cpu_seconds" in end else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- {n}" for n in profile.notes), ""]
    return "\n".join(lines)


def run_suite(profile: TimeToDiceProfile, view: Path, out: Path, work: Path, argv_base: list[str]) -> list[dict]:
    jobs = [(v, g, s) for v in profile.variants for s in range(profile.seeds) for g in profile.gates]

    def done(job: tuple[Variant, str, int]) -> Path:
        return out / "runs" / f"{job_name(job[0].label, job[1], job[2])}.json"

    todo = [job for job in jobs if not done(job).is_file()]
    if profile.concurrent and len(todo) > 1:
        procs = [
            subprocess.Popen([sys.executable, __file__, *argv_base, "--worker", g, str(s), *[v.label] * bool(v.label)])
            for v, g, s in todo
        ]  # one process per training: they share the GPU, each with its own CUDA context
        failed = [todo[i][1:] for i, p in enumerate(procs) if p.wait() != 0]
        if failed:
            raise SystemExit(f"trainings failed: {failed}")
    else:
        for v, g, s in todo:  # one at a time, each record written as soon as its training ends
            atomic_write_json(done((v, g, s)), train_one(profile, view, g, s, work, v))
    return [json.loads(done(job).read_text()) for job in jobs]


def run_record(run_dir: Path, thresholds: tuple[float, ...]) -> dict[str, Any]:
    """A finished or running ``satseg train`` folder as a time-to-Dice record (its ``metrics.csv`` curve).

    Steps and Dice come from the run's own log; seconds are its training wall time (validation excluded).
    """
    import csv

    config = json.loads((run_dir / "config.json").read_text())
    curve: list[dict[str, float]] = []
    steps = 0
    spent = 0.0
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            steps += int(row["steps"])
            spent += float(row["seconds"]) - float(row.get("val_seconds") or 0.0)
            if row.get("dice_mean"):
                curve.append({"step": steps, "train_seconds": round(spent, 3), "dice": float(row["dice_mean"])})
    model, train = config["model"], config["train"]
    width = model.get("features", [None])[0]
    return {
        "variant": f"w{width}-p{train['patch'][0]}",
        "gate": model["skip"],
        "seed": train["seed"],
        "net": model["net"],
        "run": run_dir.name,
        "train_config": train,
        "curve": curve,
        "reached": reached(curve, thresholds),
        "final_dice": curve[-1]["dice"] if curve else None,
        "final_weights": "final",
        "best_dice_optimistic": max((p["dice"] for p in curve), default=None),
        "steps_done": steps,
    }


def tabulate_runs(run_dirs: list[Path], name: str, thresholds: tuple[float, ...], results: Path) -> Path:
    """Write ``time-to-dice-<name>/`` (``results.json``, ``table.md``) from ``satseg train`` run folders."""
    runs = [run_record(Path(r), thresholds) for r in run_dirs]
    source = Path(json.loads((Path(run_dirs[0]) / "config.json").read_text())["data_dir"]).name
    profile = TimeToDiceProfile(
        name=name, source=source, net=runs[0]["net"], train={}, val_every=0,
        max_steps=max(r["steps_done"] for r in runs), thresholds=thresholds,
        notes=[f"From `satseg train` run folders: {', '.join(r['run'] for r in runs)}; validation on every "
               "epoch's end (the runs' own schedule), all the fold's validation cases."],
    )  # fmt: skip
    out = results / f"time-to-dice-{name}"
    atomic_write_json(out / "results.json", {"runs": runs, "machine": _machine(), "commit": _commit()})
    atomic_write_text(out / "table.md", table(profile, runs).replace("validation every 0 steps", "validation"))
    log.info("wrote %s", out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--dataset", default=None, help="raw dataset folder (default: <data root>/<profile source>)")
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--cache", default=str(HERE / ".cache"), help="preprocessed data and run folders")
    parser.add_argument("--prepare-only", action="store_true", help="preprocess into the cache, then stop")
    parser.add_argument("--concurrent", action="store_true", help="one process per training, all at once")
    parser.add_argument("--from-runs", nargs="+", type=Path, metavar="RUN",
                        help="tabulate these `satseg train` run folders instead of training (see --name)")  # fmt: skip
    parser.add_argument("--name", default="runs", help="with --from-runs: results go to time-to-dice-NAME")
    parser.add_argument("--thresholds", default="0.70,0.80,0.85", help="with --from-runs: Dice thresholds")
    parser.add_argument("--worker", nargs="+", metavar="GATE SEED [VARIANT]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("satseg").setLevel(logging.WARNING)
    if args.from_runs:
        tabulate_runs(args.from_runs, args.name, tuple(float(t) for t in args.thresholds.split(",")),
                      Path(args.results))  # fmt: skip
        return
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
        gate, seed, label = args.worker[0], int(args.worker[1]), (args.worker[2:] or [""])[0]
        view = view_dir(profile, cache)
        record = train_one(profile, view, gate, seed, work, _variant(profile, label))
        atomic_write_json(out / "runs" / f"{job_name(label, gate, seed)}.json", record)
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
