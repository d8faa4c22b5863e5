"""Peak RSS and time of a CPU ensemble ``segment`` (three U-Net 24-192 members, a 128³ scan), each run a fresh
process, variants interleaved: PyTorch members (the default) against ``--low-memory``, whose members run on
ONNX Runtime without its arena (each session returns its activations after every window).

Members are untrained (seeded weights: cost does not depend on training); the scan is random at the plan's
spacing, so no resampling. One untimed run per variant first caches the exports. ``--before`` adds the same
command from another checkout. The peak is the child's ``ru_maxrss`` (its parent, this script, stays small).

    python benchmarks/ensemble_memory.py --rounds 2 --out benchmarks/results/ensemble-memory
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from satseg.atomic import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parents[1]
FEATURES = [24, 48, 96, 192]
MEMBERS = 3
SIDE = 128


def make_inputs(folder: Path) -> tuple[list[Path], Path]:
    """Three run folders on one 1 mm MRI plan and a random 128³ scan."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from satseg.data.plan import PLAN_FORMAT
    from satseg.nn import build_model
    from satseg.runs import LAST, save_checkpoint

    plan = {"format": PLAN_FORMAT, "dataset": "synthetic", "layout": "msd", "spatial_dims": 3, "num_channels": 1,
            "channel_names": ["MRI"], "modality": "mri", "labels": {"background": 0, "a": 1, "b": 2},
            "spacing": [1.0] * 3, "size": None, "normalization": [{"scheme": "zscore", "modality": "mri"}],
            "median_spacing": [1.0] * 3, "median_shape": [float(SIDE)] * 3, "patch_size": [48, 64, 48],
            "cases": [], "test_cases": []}  # fmt: skip
    runs = []
    for k in range(MEMBERS):
        torch.manual_seed(k)
        arch = {"net": "unet3d", "skip": "sat", "in_channels": 1, "out_channels": 3, "features": FEATURES,
                "gate_levels": 1}  # fmt: skip
        config = {"model": arch, "plan": plan, "train": {"fold": k, "patch": [48, 64, 48]}}
        runs.append(folder / f"fold_{k}")
        runs[-1].mkdir(parents=True)
        save_checkpoint(runs[-1] / LAST, model=build_model(**arch).eval(), run_config=config)
    scan = folder / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).standard_normal((SIDE,) * 3, np.float32)), scan)
    return runs, scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", type=Path, default=None, help="another checkout to run beside this one")
    parser.add_argument("--out", type=Path, default=HERE / "benchmarks" / "results" / "ensemble-memory")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE / "benchmarks"))
    from runner import git_commit
    from segment_startup import run_once  # one `segment` process: wall s, its own peak RSS, its backend

    variants = {"default (PyTorch members)": (HERE, []), "--low-memory": (HERE, ["--low-memory"])}
    if args.before:
        variants = {"before": (args.before.resolve(), [])} | variants
    commits = {name: git_commit(tree) for name, (tree, _) in variants.items()}  # the code that runs
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    loads = []
    with tempfile.TemporaryDirectory(prefix="ensemble-memory-") as tmp:
        work = Path(tmp)
        members, scan = make_inputs(work)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "SATSEG_CACHE": str(work / "cache")}
        common = [str(scan), *[f"--model={m}" for m in members], "--device", "cpu", "--overwrite", "--json"]
        for tree, extra in variants.values():  # caches the exports; not timed
            run_once(tree, [*common, "-o", str(work / "warm.nii.gz"), *extra], env)
        for round_ in range(args.rounds):
            loads.append(list(os.getloadavg()))
            for name, (tree, extra) in variants.items():
                runs[name].append(run_once(tree, [*common, "-o", str(work / f"{round_}.nii.gz"), *extra], env))
                print(f"round {round_ + 1}: {name}: {runs[name][-1]}", flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
              "commits": commits,
              "members": MEMBERS, "features": FEATURES, "side": SIDE, "loads": loads + [list(os.getloadavg())],
              "runs": runs}  # fmt: skip
    base = runs["default (PyTorch members)"]
    lines = [
        f"# CPU ensemble `segment`: {MEMBERS} U-Net {FEATURES} members, a {SIDE}³ scan",
        "",
        f"{result['date']}; {result['cpus']} CPUs, OMP_NUM_THREADS=1; load average before each round and after "
        f"the last: {result['loads']}; commits: {result['commits']}. One fresh process per run, interleaved.",
        "",
        "| variant | backend | peak RSS MiB (runs) | / default | wall s (runs) | / default |",
        "|---|---|---|---:|---|---:|",
    ]
    for name, rows in runs.items():
        peak = [r["peak_rss_mib"] for r in rows]
        wall = [r["wall_s"] for r in rows]
        peak_ratio = sum(peak) / sum(r["peak_rss_mib"] for r in base)
        wall_ratio = sum(wall) / sum(r["wall_s"] for r in base)
        lines.append(f"| {name} | {rows[0]['backend']} | {', '.join(f'{p:.0f}' for p in peak)} | {peak_ratio:.2f} "
                     f"| {', '.join(f'{w:.1f}' for w in wall)} | {wall_ratio:.2f} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "ensemble-memory.json", result)
    atomic_write_text(args.out / "ensemble-memory.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
