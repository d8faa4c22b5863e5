"""The CPU against its own peak: reference kernels beside satseg's achieved GFLOP/s, in one run.

References (what one large kernel reaches in this process): a 2048² matmul in float32 and bf16, one Conv3d
32→32 on 64³ in float32 and under bf16 autocast. Beside them, for ``org`` and ``sat`` U-Nets of equal width:
one training step (float32 and bf16 autocast) and whole-volume ``segment`` windows on ONNX Runtime (as
``segment`` opens it, and with tuned session options) and on the lean PyTorch path (float32, channels-last,
bf16 autocast). FLOPs are counted with ``torch.utils.flop_counter`` (forward, or forward + backward for a
step); every figure is a fraction of the fp32 matmul reference. Variants run interleaved, round by round.

    python benchmarks/cpu_roofline.py --threads 1 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from satseg.atomic import atomic_write_json, atomic_write_text
from satseg.inference.sliding_window import sliding_window_inference
from satseg.nn import build_model
from satseg.nn.lean import make_lean

FEATURES = (24, 48, 96, 192)  # the shipped hippocampus model's widths
CLASSES = 3


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def count_flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels here (AVX-512 BF16 or AMX): elsewhere bf16 is emulated, ~100x slower."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def references(bf16: bool) -> dict[str, tuple]:
    """name -> (run, flops). Without native bf16 the bf16 matmul runs at 512² only (it would take minutes)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    side = 2048 if bf16 else 512
    ab, bb = a[:side, :side].bfloat16(), b[:side, :side].bfloat16()
    conv = torch.nn.Conv3d(32, 32, 3, padding=1).eval()
    x = torch.randn(1, 32, 64, 64, 64)
    conv_flops = 2 * 32 * 32 * 27 * 64**3

    def conv_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x)

    refs = {
        "matmul_fp32": (lambda: a @ b, 2 * 2048**3),
        f"matmul_bf16_{side}": (lambda: ab @ bb, 2 * side**3),
        "conv3d_fp32": (lambda: conv(x), conv_flops),
    }
    if bf16:
        refs["conv3d_bf16"] = (conv_bf16, conv_flops)
    return refs


def ort_session(path: Path, threads: int, tuned: bool, arena: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if tuned:  # as the torch rows: ``threads`` threads (``segment`` leaves ORT its default, the physical cores)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = arena
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(x):
        return torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x.numpy())})[0])

    return predict


def variants(volume, patch, batch, threads, workdir: Path, bf16: bool) -> tuple[dict, dict]:
    """name -> (run, flops) for every measured path, plus name -> labels-producing runs for agreement."""
    from satseg.export.onnx import export_onnx

    out, label_fns = {}, {}
    x_volume = torch.randn(1, *volume)
    x_train = torch.randn(batch, 1, *patch)
    y_train = torch.randint(0, CLASSES, (batch, *patch))
    for skip in ("org", "sat"):
        torch.manual_seed(0)
        model = build_model("unet3d", skip, 1, CLASSES, features=FEATURES)
        lean = make_lean(model.eval()).eval()
        lean_cl = make_lean(model.eval()).eval().to(memory_format=torch.channels_last_3d)
        path = workdir / f"{skip}.onnx"
        export_onnx(lean, path, example_shape=(1, 1, *patch), metadata={}, check=False)
        fwd_flops = count_flops(lambda lean=lean: lean(torch.zeros(1, 1, *volume)))

        def segment(predict, amp=None, x=x_volume):
            with torch.inference_mode():
                return sliding_window_inference(
                    predict, x, volume, CLASSES, overlap=0.5, sw_batch=1, amp_dtype=amp
                ).labels

        def lean_cl_predict(x, lean_cl=lean_cl):
            return lean_cl(x.contiguous(memory_format=torch.channels_last_3d)).contiguous()

        segs = {
            "segment_ort_2threads_default": lambda p=ort_session(path, threads, tuned=False): segment(p),
            "segment_ort_1thread": lambda p=ort_session(path, threads, tuned=True): segment(p),
            "segment_torch_fp32": lambda lean=lean: segment(lean),
            "segment_torch_fp32_cl": lambda predict=lean_cl_predict: segment(predict),
        }
        if bf16:
            segs["segment_torch_bf16"] = lambda lean=lean: segment(lean, torch.bfloat16)
        for name, fn in segs.items():
            out[f"{name}/{skip}"] = (fn, fwd_flops)
            label_fns[f"{name}/{skip}"] = fn

        model_t = build_model("unet3d", skip, 1, CLASSES, features=FEATURES).train()
        opt = torch.optim.SGD(model_t.parameters(), lr=1e-3)

        def step(amp, model_t=model_t, opt=opt):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model_t(x_train).float(), y_train)
            loss.backward()
            opt.step()

        train_flops = count_flops(lambda step=step: step(False))
        out[f"train_fp32/{skip}"] = (lambda step=step: step(False), train_flops)
        if bf16:
            out[f"train_bf16/{skip}"] = (lambda step=step: step(True), train_flops)
    return out, label_fns


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--volume", type=int, nargs=3, default=(64, 96, 64))
    parser.add_argument("--patch", type=int, nargs=3, default=(48, 64, 48))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    started = time.strftime("%Y-%m-%d %H:%M")
    bf16 = native_bf16()
    refs = references(bf16)
    measured, label_fns = variants(tuple(args.volume), tuple(args.patch), args.batch, args.threads,
                                   Path(tempfile.mkdtemp()), bf16)  # fmt: skip
    every = {**refs, **measured}
    for fn, _ in every.values():  # warm-up: oneDNN primitive caches, ORT's arena
        fn()
    times = {name: [] for name in every}
    for r in range(args.rounds):
        for name in every if r % 2 == 0 else list(every)[::-1]:
            fn = every[name][0]
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    reference = {}
    for skip in ("org", "sat"):
        base = label_fns[f"segment_torch_fp32/{skip}"]()
        for name, fn in label_fns.items():
            if name.endswith(skip):
                reference[name] = float((fn() == base).float().mean())
    peak = refs["matmul_fp32"][1] / statistics.median(times["matmul_fp32"])
    rows = {}
    for name, (_, flops) in every.items():
        median = statistics.median(times[name])
        rows[name] = {
            "median_s": median,
            "gflops": flops / 1e9,
            "gflop_per_s": flops / median / 1e9,
            "fraction_of_fp32_matmul": flops / median / peak,
            "label_agreement_vs_torch_fp32": reference.get(name),
        }
    result = {
        "commit": commit(),
        "date": started,
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": bf16,
        "load_before": load_before,
        "load_after": Path("/proc/loadavg").read_text().split()[:3],
        "volume": args.volume,
        "patch": args.patch,
        "batch": args.batch,
        "features": FEATURES,
        "rounds": args.rounds,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "cpu-roofline.json", result)
    text = markdown(result)
    atomic_write_text(args.out / "cpu-roofline.md", text)
    print(text)
    return 0


def markdown(r: dict) -> str:
    lines = [
        f"# CPU roofline: U-Net {r['features']} org vs sat, {r['threads']} thread(s)",
        "",
        f"commit {r['commit']}; torch {r['torch']}; {r['date']}; load average before {r['load_before']}, after "
        f"{r['load_after']} (a shared 2-core machine, loaded: ratios within the run are the comparable figures).",
        f"CPU flags: {' '.join(r['cpu_flags'])}; torch CPU capability {r['cpu_capability']}; native bf16 (oneDNN): "
        f"{r['native_bf16']}" + ("" if r["native_bf16"] else " — bf16 model variants skipped (emulated bf16 is slow)."),
        f"Segment: one whole-volume window of {'x'.join(map(str, r['volume']))}; training step: batch "
        f"{r['batch']} of {'x'.join(map(str, r['patch']))}, SGD. Median of {r['rounds']} interleaved rounds.",
        "",
        "| measurement | median s | GFLOP | GFLOP/s | of fp32 matmul | labels = torch fp32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in r["rows"].items():
        agree = row["label_agreement_vs_torch_fp32"]
        lines.append(
            f"| {name} | {row['median_s']:.3f} | {row['gflops']:.1f} | {row['gflop_per_s']:.1f} | "
            f"{row['fraction_of_fp32_matmul']:.2f} | {'–' if agree is None else f'{agree:.5f}'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
