"""Peak RSS of CPU ``segment`` windows for a large volume, ``org`` vs ``sat`` at equal width, each in a fresh process.

Each child builds the U-Net, exports its lean form to ONNX as ``segment`` does, picks the window as
``segment --tile auto`` does (``Segmenter.window``) and runs the sliding window over a random volume at model
spacing, on ONNX Runtime with its memory arena (the default) or without it, or on PyTorch's lean path;
it reports its peak RSS (``ru_maxrss``) before and after the windows.

    python benchmarks/cpu_rss.py --volume 256 256 256 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from satseg.atomic import atomic_write_json, atomic_write_text

FEATURES = (24, 48, 96, 192)
CLASSES = 3
PATCH = (48, 64, 48)


def child(skip: str, backend: str, volume: tuple[int, ...]) -> dict:
    import torch

    from satseg.export.onnx import export_onnx
    from satseg.inference.segmenter import Segmenter
    from satseg.inference.sliding_window import sliding_window_inference
    from satseg.nn import build_model
    from satseg.nn.lean import make_lean

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("unet3d", skip, 1, CLASSES, features=FEATURES).eval()
    config = {"model": {"net": "unet3d", "skip": skip, "in_channels": 1, "out_channels": CLASSES,
                        "features": list(FEATURES)},
              "plan": {"labels": {"background": 0, "a": 1, "b": 2}, "patch_size": list(PATCH)}}  # fmt: skip
    window, _ = Segmenter(model, config, skip, "torch", torch.device("cpu"), model).window(volume, "auto", 0.5)
    lean = make_lean(model)
    if backend.startswith("onnx"):
        import onnxruntime as ort

        path = Path(tempfile.mkdtemp()) / "lean.onnx"
        export_onnx(lean, path, example_shape=(1, 1, *PATCH), metadata={}, check=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        if backend == "onnx_no_arena":
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def predict(x):
            return torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    else:
        predict = lean
    x = torch.randn(1, *volume)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with torch.inference_mode():
        sliding_window_inference(predict, x, window, CLASSES, overlap=0.5, sw_batch=1)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"skip": skip, "backend": backend, "window": window, "rss_before_mib": before / 2**20,
            "peak_rss_mib": peak / 2**20, "windows_s": seconds}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume", type=int, nargs=3, default=(256, 256, 256))
    parser.add_argument("--backends", nargs="+", default=["onnx", "onnx_no_arena", "torch"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], tuple(args.volume))))
        return 0
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    rows = []
    for backend in args.backends:
        for skip in ("org", "sat"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", skip, backend, "--volume", *map(str, args.volume)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    result = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"), "volume": args.volume,
              "features": FEATURES, "load_before": load_before,
              "load_after": Path("/proc/loadavg").read_text().split()[:3], "rows": rows}  # fmt: skip
    lines = [
        f"# CPU segment peak RSS: {'x'.join(map(str, args.volume))} volume, U-Net {FEATURES}, org vs sat",
        "",
        f"commit {commit}; {result['date']}; load before {load_before}, after {result['load_after']} (shared "
        "2-core machine, loaded); one fresh process per row, 1 thread, window as `segment --tile auto` picks it.",
        "",
        "| backend | skip | window | RSS before windows MiB | peak RSS MiB | sat / org | windows s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        org = next(r for r in rows if r["backend"] == row["backend"] and r["skip"] == "org")
        lines.append(
            f"| {row['backend']} | {row['skip']} | {'x'.join(map(str, row['window']))} | {row['rss_before_mib']:.0f} "
            f"| {row['peak_rss_mib']:.0f} | {row['peak_rss_mib'] / org['peak_rss_mib']:.3f} | {row['windows_s']:.1f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "cpu-rss.json", result)
    atomic_write_text(args.out / "cpu-rss.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
