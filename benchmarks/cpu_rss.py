"""Peak RSS of CPU ``segment`` windows for a large volume, ``org`` vs ``sat`` at equal width, each in a fresh process.

The lean U-Net is exported to ONNX once per gate (its own process, as ``segment`` caches it) and the window
picked as ``segment --tile auto`` does (``Segmenter.window``). Each row is then a fresh process that runs the
windows over a random volume at model spacing: on ONNX Runtime as a warm-cache ``segment`` does (the export
loaded, windows blended in NumPy by ``blend_windows``, torch never imported) in one of :data:`VARIANTS`
(session options, and glibc malloc tunables, which only take effect from the environment at process start),
or on PyTorch's lean path. It reports its peak RSS (``VmHWM``: ``ru_maxrss`` would keep the parent's from before the
exec) before and after the windows, and their time. ``--tile`` runs several windows of a given size: from the
second run of a shape on, ONNX Runtime's memory pattern (the ``onnx`` row) allocates one block for all of them.

    python benchmarks/cpu_rss.py --volume 128 128 128 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from satseg.atomic import atomic_write_json, atomic_write_text

FEATURES = (24, 48, 96, 192)
CLASSES = 3
PATCHES = {3: (48, 64, 48), 2: (256, 256)}  # a 2-sided --volume runs the 2D U-Net
_NO_ARENA = {"enable_cpu_mem_arena": False, "enable_mem_pattern": False}
_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # fixed: every block over 128 KiB is mmapped, and unmapped on free
# name: (ONNX Runtime session options, environment). "onnx" is what `segment` runs on the CPU.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "onnx": ({}, {}),
    "onnx_no_arena": (_NO_ARENA, {}),
    "onnx_no_pattern": ({"enable_mem_pattern": False}, {}),
    "onnx_no_arena_pattern_on": ({"enable_cpu_mem_arena": False}, {}),
    "onnx_mmap": ({}, _MMAP),
    "onnx_no_arena_mmap": (_NO_ARENA, _MMAP),
    "onnx_no_arena_mmap_trim": (_NO_ARENA, {**_MMAP, "MALLOC_TRIM_THRESHOLD_": "0"}),
    "onnx_no_arena_brk": (_NO_ARENA, {"MALLOC_MMAP_MAX_": "0"}),  # no mmap: freed blocks reused from the heap
    # as onnx_no_arena_mmap, set in the running process (glibc's mallopt) rather than by the environment:
    # `segment --low-memory` (satseg's own `unmap_freed_blocks`)
    "onnx_no_arena_mallopt": (_NO_ARENA, {}),
    "onnx_extended": ({"graph_optimization_level": "ORT_ENABLE_EXTENDED"}, {}),
    "onnx_basic": ({"graph_optimization_level": "ORT_ENABLE_BASIC"}, {}),
    "onnx_basic_no_arena": ({"graph_optimization_level": "ORT_ENABLE_BASIC", **_NO_ARENA}, {}),
    "torch": ({}, {}),
    "torch_mallopt": ({}, {}),  # `segment --backend torch --low-memory`
}


def _model_and_window(skip: str, volume: tuple[int, ...], features: tuple[int, ...]):
    import torch

    from satseg.inference.segmenter import Segmenter
    from satseg.nn import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net, patch = f"unet{len(volume)}d", list(PATCHES[len(volume)])
    model = build_model(net, skip, 1, CLASSES, features=features).eval()
    config = {"model": {"net": net, "skip": skip, "in_channels": 1, "out_channels": CLASSES,
                        "features": list(features)},
              "plan": {"labels": {"background": 0, "a": 1, "b": 2}, "patch_size": patch}}  # fmt: skip
    window, _ = Segmenter(model, config, skip, "torch", torch.device("cpu"), model).window(volume, "auto", 0.5)
    return model, list(window)


def export(skip: str, volume: tuple[int, ...], features: tuple[int, ...], path: Path) -> list[int]:
    """Export the lean model as ``segment`` caches it; return the window ``segment --tile auto`` picks."""
    from satseg.export.onnx import export_onnx
    from satseg.nn.lean import make_lean

    model, window = _model_and_window(skip, volume, features)
    export_onnx(make_lean(model), path, example_shape=(1, 1, *PATCHES[len(volume)]), metadata={}, check=False)
    return window


def _peak_rss() -> int:
    """This process's peak RSS in bytes since its exec (Linux)."""
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) * 1024


def child(
    skip: str, backend: str, volume: tuple[int, ...], features: tuple[int, ...], path: Path, window: list[int]
) -> dict:
    """ONNX Runtime as a warm-cache ``segment`` runs it: the cached export, windows blended in NumPy, no torch."""
    if backend.endswith("_mallopt"):
        from satseg.inference.backends import unmap_freed_blocks

        assert unmap_freed_blocks()
    if backend.startswith("torch"):
        import torch

        from satseg.inference.sliding_window import sliding_window_inference
        from satseg.nn.lean import make_lean

        model, _ = _model_and_window(skip, volume, features)
        predict, image = make_lean(model), torch.randn(1, *volume)

        def run():
            with torch.inference_mode():
                sliding_window_inference(predict, image, window, CLASSES, overlap=0.5, sw_batch=1)
    else:
        import numpy as np
        import onnxruntime as ort

        from satseg.inference.tiling import blend_windows

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        for key, value in VARIANTS[backend][0].items():
            setattr(options, key, getattr(ort.GraphOptimizationLevel, value) if key.endswith("level") else value)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        image = np.random.default_rng(0).standard_normal((1, *volume), dtype=np.float32)

        def run():
            blend_windows(lambda x: session.run(None, {name: x})[0], image, window, CLASSES, overlap=0.5, sw_batch=1)

    before = _peak_rss()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    return {"skip": skip, "backend": backend, "window": window, "rss_before_mib": before / 2**20,
            "peak_rss_mib": peak / 2**20, "windows_s": seconds, "torch_imported": "torch" in sys.modules}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume", type=int, nargs="+", default=(256, 256, 256), help="3 sides, or 2 for 2D")
    parser.add_argument("--features", type=int, nargs=4, default=FEATURES, help="the U-Net's widths per level")
    parser.add_argument("--backends", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="repeatable")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--export", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, nargs="+", help="window sides (default: as `segment --tile auto`)")
    parser.add_argument("--window", type=int, nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    volume, features = tuple(args.volume), tuple(args.features)
    if len(volume) not in PATCHES:
        parser.error("--volume takes 2 or 3 sides")
    if args.export:
        print(json.dumps(export(args.export[0], volume, features, Path(args.export[1]))))
        return 0
    if args.child:
        skip, backend, model = args.child[0], args.child[1].split(":")[0], Path(args.child[1].split(":", 1)[1])
        print(json.dumps(child(skip, backend, volume, features, model, args.window)))
        return 0
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    rows, models, windows = [], Path(tempfile.mkdtemp()), {}
    sizes = ["--volume", *map(str, volume), "--features", *map(str, features)]
    for skip in ("org", "sat"):  # one export per gate, in its own process, as the export cache holds it
        command = [sys.executable, __file__, "--export", skip, str(models / f"{skip}.onnx"), *sizes]
        windows[skip] = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        windows[skip] = args.tile or windows[skip]
    for backend in args.backends:
        for skip in ("org", "sat"):
            target = f"{backend}:{models / f'{skip}.onnx'}"
            out = subprocess.run(
                [sys.executable, __file__, "--child", skip, target, *sizes, "--window", *map(str, windows[skip])],
                capture_output=True, text=True, check=True, env={**os.environ, **VARIANTS[backend][1]},
            )  # fmt: skip
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    result = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"), "volume": args.volume,
              "features": features, "load_before": load_before,
              "load_after": Path("/proc/loadavg").read_text().split()[:3], "rows": rows}  # fmt: skip
    lines = [
        f"# CPU segment peak RSS: {'x'.join(map(str, args.volume))} volume, U-Net {features}, org vs sat",
        "",
        f"commit {commit}; {result['date']}; load before {load_before}, after {result['load_after']} (shared "
        "2-core machine, loaded); one fresh process per row, 1 thread, "
        + (f"windows of {args.tile}, overlap 0.5." if args.tile else "window as `segment --tile auto` picks it."),
        "Increment: peak RSS minus the RSS before the windows. / onnx: windows' time over the `onnx` row's "
        "(same skip).",
        "Variants (session options; environment): "
        + "; ".join(
            f"`{name}` {opts or 'defaults'}{' ' + str(env) if env else ''}"
            for name, (opts, env) in VARIANTS.items()
            if name in args.backends
        ),
        "",
        "| variant | skip | window | RSS before MiB | peak RSS MiB | sat / org | increment MiB | sat / org | windows s "
        "| / onnx |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, row in enumerate(rows):
        org = rows[i - (row["skip"] == "sat")]  # each variant runs org, then sat (a variant may repeat)
        base = next((r for r in rows if r["backend"] == "onnx" and r["skip"] == row["skip"]), row)
        grown, org_grown = row["peak_rss_mib"] - row["rss_before_mib"], org["peak_rss_mib"] - org["rss_before_mib"]
        lines.append(
            f"| {row['backend']} | {row['skip']} | {'x'.join(map(str, row['window']))} | {row['rss_before_mib']:.0f} "
            f"| {row['peak_rss_mib']:.0f} | {row['peak_rss_mib'] / org['peak_rss_mib']:.3f} | {grown:.0f} "
            f"| {grown / max(org_grown, 1e-9):.3f} | {row['windows_s']:.1f} "
            f"| {row['windows_s'] / base['windows_s']:.2f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "cpu-rss.json", result)
    atomic_write_text(args.out / "cpu-rss.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
