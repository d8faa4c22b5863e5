"""Train, score and time one benchmark configuration with satseg's library (no CLI subprocesses).

Each configuration writes one JSON file when it is complete (atomically), so an interrupted suite
resumes by skipping the files that exist.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from profiles import VARIANTS, DatasetSpec, Profile

from satseg.atomic import atomic_write_text
from satseg.data.datasets import mask_to_labels
from satseg.data.io import read_image
from satseg.data.preprocess import preprocess_dataset, restore_labels
from satseg.data.store import load_case, load_plan, load_splits
from satseg.evaluation.metrics import confusion_counts, overlap_metrics
from satseg.evaluation.report import gate_report
from satseg.inference.sliding_window import sliding_window_inference
from satseg.nn import build_model
from satseg.nn.params import LiveTensorBytes, measure_variant
from satseg.runs import load_run
from satseg.training.config import TrainConfig
from satseg.training.losses import deep_supervision_loss
from satseg.training.trainer import train

__all__ = [
    "machine_info",
    "git_commit",
    "prepare_dataset",
    "preprocessed_dir",
    "test_cases",
    "run_config",
    "time_variants",
    "write_json",
]

log = logging.getLogger("bench")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as compact-indented JSON through satseg's one atomic writer."""
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def git_commit(root: Path) -> str:
    """The checked-out commit (with ``+dirty`` when tracked files changed), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=root, capture_output=True, text=True)
        return sha + ("+dirty" if dirty.stdout.strip() else "") if sha else "unknown"
    except OSError:
        return "unknown"


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, load, torch version and device of this run."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info


def prepare_dataset(spec: DatasetSpec, data_root: Path, cache: Path) -> Path:
    """Preprocess ``spec`` into the cache (once) and make a training view whose split has no validation.

    The training view ``<cache>/<name>-train`` holds the plan, ``cases`` (a link to the preprocessed
    cases) and a one-fold ``splits.json`` with the test fold's training cases and no validation cases, so
    training never looks at the test cases (no early stopping or best-checkpoint choice on them).

    Returns:
        The preprocessed folder (the training view is next to it).
    """
    out = preprocessed_dir(spec, cache)
    if not (out / "splits.json").is_file():
        log.info("preprocessing %s into %s", spec.source, out)
        preprocess_dataset(data_root / spec.source, out, size=spec.size, folds=spec.folds, seed=spec.split_seed)
    view = train_view(out)
    if not (view / "splits.json").is_file():
        view.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "plan.json", view / "plan.json")
        if not (view / "cases").exists():
            (view / "cases").symlink_to((out / "cases").resolve(), target_is_directory=True)
        fold = load_splits(out)[spec.test_fold]
        write_json(view / "splits.json", [{"train": sorted(fold["train"]), "val": []}])
    return out


def preprocessed_dir(spec: DatasetSpec, cache: Path) -> Path:
    """Where :func:`prepare_dataset` puts a dataset, e.g. ``<cache>/ph2_64`` for PH2 resized to 64 × 64."""
    return cache / (f"{spec.name}_{spec.size[0]}" if spec.size else spec.name)


def train_view(preprocessed: Path) -> Path:
    """The training view of a preprocessed folder (see :func:`prepare_dataset`)."""
    return preprocessed.with_name(preprocessed.name + "-train")


def test_cases(spec: DatasetSpec, preprocessed: Path) -> list[str]:
    """The held-out cases: fold ``test_fold`` of ``splits.json`` (first ``max_test_cases`` when set)."""
    cases = sorted(load_splits(preprocessed)[spec.test_fold]["val"])
    return cases if spec.max_test_cases is None else cases[: spec.max_test_cases]


def model_name(net_key: str, spatial_dims: int) -> str:
    """Registered model name of a net key, e.g. ``("unet", 3) -> "unet3d"``."""
    return f"{net_key}{spatial_dims}d"


def _reference(props: dict, plan: dict) -> np.ndarray:
    ref = read_image(props["label_file"]).array
    return mask_to_labels(ref) if plan.get("layout") == "paired" else ref[0]


def score_model(model, preprocessed: Path, cases: list[str], patch, device: str) -> list[dict[str, Any]]:
    """Segment each test case (sliding windows on the preprocessed grid), restore it to the original grid
    and score it against the original label file: Dice, FPR, FNR per foreground class and their mean.
    """
    plan = load_plan(preprocessed)
    labels = {k: v for k, v in plan["labels"].items() if v != 0}
    model.eval()
    rows = []
    for case_id in cases:
        image, _, props = load_case(preprocessed, case_id)
        start = time.perf_counter()
        result = sliding_window_inference(
            model, torch.from_numpy(image), patch, len(plan["labels"]), overlap=0.5, device=device
        )
        seconds = time.perf_counter() - start
        pred = restore_labels(result.labels.numpy(), props)
        ref = _reference(props, plan)
        per_class = {}
        for name, value in labels.items():
            m = overlap_metrics(confusion_counts(pred == value, ref == value))
            per_class[name] = {k: float(m[k]) for k in ("dice", "fpr", "fnr")}
        row = {"case": case_id, "inference_s": round(seconds, 4), "classes": per_class}
        for k in ("dice", "fpr", "fnr"):
            values = [c[k] for c in per_class.values() if not np.isnan(c[k])]
            row[k] = float(np.mean(values)) if values else float("nan")
        rows.append(row)
    return rows


def _score_half(
    run_dir: Path, epochs: int, preprocessed: Path, cases: list[str], patch, device: str
) -> dict[str, Any] | None:
    """Mean test Dice of the weights saved after ``epochs`` (half the budget); None when the run kept none."""
    half = run_dir / "checkpoint_half.pt"
    if not half.is_file():
        return None
    model, _ = load_run(half)
    rows = score_model(model.to(device), preprocessed, cases, patch, device)
    return {"epochs": epochs, "dice": float(np.nanmean([r["dice"] for r in rows]))}


RUN_COMMIT = "benchmark_commit.txt"
"""Written into a benchmark's run folder after its first epoch: the commit the training runs from."""


def train_resumable(
    data: Path, run_dir: Path, config: TrainConfig, commit: str, callbacks: list[Any]
) -> tuple[Any, int]:
    """Train into ``run_dir``, continuing an interrupted attempt when it ran from the same clean commit.

    A resumed training is bit-identical to an uninterrupted one (the trainer's own guarantee, tested in
    ``tests/training/test_train.py``), so a suite stopped mid-run loses at most an epoch. An attempt from
    other or uncommitted code, or one with no checkpoint yet, starts over. Returns the result and the epoch
    the training resumed at (0: from scratch).
    """
    marker = run_dir / RUN_COMMIT
    resume = (
        not commit.endswith("+dirty")
        and (run_dir / "checkpoint_last.pt").is_file()
        and marker.is_file()
        and marker.read_text() == commit
    )
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    ran: list[int] = []

    def mark(epoch: int, row: dict[str, Any]) -> None:
        ran.append(epoch)
        if not marker.is_file():
            atomic_write_text(marker, commit)

    # the trainer logs where it resumes; the epochs this attempt ran tell where that was
    result = train(data, run_dir, config, resume=resume, progress=False, callbacks=[mark, *callbacks])
    return result, result.epochs_done - len(ran)


def run_config(
    profile: Profile,
    spec: DatasetSpec,
    preprocessed: Path,
    net_key: str,
    variant_name: str,
    seed: int,
    runs_dir: Path,
    results: Path,
    commit: str,
) -> dict[str, Any]:
    """Train one (dataset, net, skip variant, seed) with the profile's budget, score it on the test fold.

    Besides the final weights, the weights at half the budget are scored (has Dice levelled off?), and
    the selection of the freshly initialised model is recorded (channels off at init vs at the end).
    """
    variant = VARIANTS[variant_name]
    net_spec = profile.nets[spec.name][net_key]
    net = model_name(net_spec.key, spec.spatial_dims)  # the profile's key may name a width: unet-w8
    budget = profile.train[spec.name]
    options = dict(net_spec.options) | variant.model | ({"gate_options": dict(variant.gate)} if variant.gate else {})
    config = TrainConfig(
        net=net,
        skip=variant.skip,
        fold=0,
        seed=seed,
        device=profile.device,
        model_options=options,
        val_every=budget["epochs"],
        **{k: v for k, v in budget.items()},
        **variant.train,
    )
    plan = load_plan(preprocessed)
    torch.manual_seed(seed)  # as the trainer does, so this is the run's own initial model
    gates_init = gate_report(build_model(net, variant.skip, int(plan["num_channels"]), len(plan["labels"]), **options))
    run_dir = runs_dir / f"{spec.name}-{net_key}-{variant_name}-s{seed}"
    half_epoch = config.epochs // 2

    def keep_half(epoch: int, row: dict[str, Any]) -> None:
        if epoch + 1 == half_epoch:
            shutil.copy(run_dir / "checkpoint_last.pt", run_dir / "checkpoint_half.pt")

    started = time.perf_counter()
    result, resumed_from = train_resumable(train_view(preprocessed), run_dir, config, commit, [keep_half])
    epoch_s = [float(r["seconds"]) for r in result.history]
    # a resumed run's wall clock covers only its last attempt: count the epochs' own time instead
    train_s = sum(epoch_s) if resumed_from else time.perf_counter() - started
    model, _ = load_run(run_dir, "last")
    device = "cuda" if profile.device == "cuda" and torch.cuda.is_available() else "cpu"
    model.to(device)
    cases = test_cases(spec, preprocessed)
    rows = score_model(model, preprocessed, cases, config.patch, device)
    half = _score_half(run_dir, half_epoch, preprocessed, cases, config.patch, device)
    steps = sum(1 for _ in result.history) * config.iters_per_epoch
    measured = measure_variant(model.cpu(), config.patch, flops=False, memory=False)
    return {
        "dataset": spec.name,
        "net": net_key,
        "model": net,
        "skip": variant.skip,
        "variant": variant_name,
        "gate_options": dict(variant.gate),
        "seed": seed,
        "profile": profile.name,
        "train_config": config.to_dict(),
        "steps_done": steps,
        "epochs_done": result.epochs_done,
        "train_seconds": round(train_s, 2),
        "resumed_from_epoch": resumed_from,
        "step_seconds_mean": round(sum(epoch_s) / max(steps, 1), 4),
        "final_train_loss": float(result.history[-1]["train_loss"]) if result.history else None,
        "params": measured["params"],
        "skip_channels": measured["skip_channels"],
        "skip_bytes_per_patch": measured["skip_bytes"],
        "test_fold": spec.test_fold,
        "num_test_cases": len(cases),
        "cases": rows,
        "gates": gate_report(model),
        "gates_init": gates_init,
        "half_budget": half,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "machine": machine_info(),
        "commit": commit,
    }


def _train_step_peak(model, x: torch.Tensor, y: torch.Tensor) -> int:
    """Peak bytes of tensor storage alive at once during one forward + backward (beyond weights/input)."""
    model.zero_grad(set_to_none=True)
    tracker = LiveTensorBytes()
    with tracker:
        loss = deep_supervision_loss(model(x), y, "dice+ce")
        loss.backward()
    del loss
    return int(tracker.peak)


def time_variants(
    profile: Profile, spec: DatasetSpec, preprocessed: Path, net_key: str, skips, commit: str
) -> dict[str, Any]:
    """Train-step time, train-step peak memory and inference time per case of every skip gate of one net,
    measured side by side in one process with the variants interleaved round by round (so a change in the
    machine's load hits every variant alike). Weights are untrained (time and memory do not depend on them).
    """
    started = time.perf_counter()
    net_spec = profile.nets[spec.name][net_key]
    net = model_name(net_key, spec.spatial_dims)
    plan = load_plan(preprocessed)
    budget = profile.train[spec.name]
    patch, batch = tuple(budget["patch"]), int(budget["batch"])
    device = torch.device("cuda" if profile.device == "cuda" and torch.cuda.is_available() else "cpu")
    k = len(plan["labels"])
    models, optims = {}, {}
    for skip in skips:
        torch.manual_seed(0)
        models[skip] = build_model(net, skip, int(plan["num_channels"]), k, **net_spec.options).to(device)
        optims[skip] = torch.optim.Adadelta(models[skip].parameters(), lr=1.0, rho=0.95, eps=1e-8)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, int(plan["num_channels"]), *patch, generator=gen).to(device)
    y = torch.randint(0, k, (batch, *patch), generator=gen).to(device)
    cases = test_cases(spec, preprocessed)[:3]
    images = [torch.from_numpy(load_case(preprocessed, c)[0]) for c in cases]
    step_s: dict[str, list[float]] = {s: [] for s in skips}
    infer_s: dict[str, list[float]] = {s: [] for s in skips}
    peak: dict[str, int] = {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for skip in skips:  # warm-up and memory
        model = models[skip].train()
        if device.type == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            deep_supervision_loss(model(x), y, "dice+ce").backward()
            sync()
            peak[skip] = int(torch.cuda.max_memory_allocated(device) - base)
        else:
            peak[skip] = _train_step_peak(model, x, y)
    for _ in range(profile.timing_repeats):
        for skip in skips:
            model, opt = models[skip].train(), optims[skip]
            sync()
            t = time.perf_counter()
            loss = deep_supervision_loss(model(x), y, "dice+ce")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            step_s[skip].append(time.perf_counter() - t)
        for skip in skips:
            model = models[skip].eval()
            for image in images:
                sync()
                t = time.perf_counter()
                sliding_window_inference(model, image, patch, k, overlap=0.5, device=device)
                sync()
                infer_s[skip].append(time.perf_counter() - t)
    variants = {}
    for skip in skips:
        m = measure_variant(models[skip].eval().cpu(), patch, flops=True, memory=False)
        variants[skip] = {
            "train_step_s_median": statistics.median(step_s[skip]),
            "train_step_s_all": [round(v, 4) for v in step_s[skip]],
            "train_peak_bytes": peak[skip],
            "inference_s_per_case_median": statistics.median(infer_s[skip]),
            "params": m["params"],
            "skip_channels": m["skip_channels"],
            "skip_bytes_per_patch": m["skip_bytes"],
            "forward_flops_per_patch": m["flops"],
        }
    return {
        "dataset": spec.name,
        "net": net_key,
        "model": net,
        "profile": profile.name,
        "patch": list(patch),
        "batch": batch,
        "repeats": profile.timing_repeats,
        "inference_cases": cases,
        "memory_method": (
            "CUDA: torch.cuda.max_memory_allocated minus allocated before, one forward+backward"
            if device.type == "cuda"
            else "CPU: peak bytes of tensor storage alive at once during one forward+backward, tracked at the "
            "torch dispatcher (satseg.nn.params); excludes weights, input, allocator caching and workspaces"
        ),
        "variants": variants,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "machine": machine_info(),
        "commit": commit,
    }
