"""Side-by-side efficiency of the backbones × skip gates, their lean inference path, ONNX Runtime and MONAI.

For each configuration (a backbone with a skip gate, or MONAI's ``BasicUNet`` / ``AttentionUnet`` at the
U-Net's widths): parameters, forward FLOPs, training step time and peak memory (eager, and compiled on
CUDA), whole-volume and sliding-window inference time and peak memory in PyTorch eager, PyTorch lean
(:func:`satseg.nn.lean.make_lean`) and ONNX Runtime (the lean model exported with ``torch.onnx.export``).
Then ratios against ``org`` and against MONAI, and the issue's targets with pass/fail.

Timing: median of ``repeats`` runs after warm-up, ``torch.cuda.synchronize`` around each on CUDA.
Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated before the step
(weights, optimizer state and input excluded); ONNX Runtime's CUDA memory is not visible to PyTorch
and is not reported. On the CPU every measurement runs in a fresh spawned process, and the peak is
the rise of the process's peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) over the first
run, after the model and the input were built: allocator slack and library workspaces included.

Usage::

    python benchmarks/efficiency.py --device cpu --quick
    python benchmarks/efficiency.py --device cuda

Results: ``benchmarks/results/efficiency-<device>.json`` (rewritten after every configuration, so an
interrupted run keeps what it measured) and ``efficiency-<device>.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from satseg.atomic import atomic_write_text  # noqa: E402
from satseg.nn import build_model  # noqa: E402
from satseg.nn.lean import make_lean, prune_report  # noqa: E402
from satseg.nn.registry import model_accepts  # noqa: E402

UNET_WIDTHS = (16, 32, 64, 128, 256)
# Per device: U-Net/MONAI sizes (training patch, batch, volume, sliding-window patch) and other nets' sizes.
SIZES = {
    "cuda": {
        "patch": 128,
        "batch": 2,
        "volume": 256,
        "window": 128,
        "overlap": 0.5,
        "other_patch": 96,
        "other_volume": 128,
    },
    "cpu": {"patch": 32, "batch": 2, "volume": 64, "window": 32, "overlap": 0.0, "other_patch": 32, "other_volume": 64},
}
OTHER_OPTIONS = {
    "cuda": {"vnet3d": {}, "di2in3d": {}, "tiramisu3d": {"dropout": 0.0}},
    "cpu": {
        "vnet3d": {"base_features": 8, "convs_per_stage": (1, 2, 3, 3), "kernel_size": 3},
        "di2in3d": {},
        "tiramisu3d": {"layers_per_block": (3, 3, 3, 3, 3), "growth_rate": 8, "first_features": 16, "dropout": 0.0},
    },
}
IN_CH, OUT_CH = 1, 2
OFF_FRACTION = 0.3  # synthetic "trained" selection: this fraction of st/sat channels switched off


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------- models
def build(spec: dict[str, Any]) -> torch.nn.Module:
    """Build the configuration ``spec`` (seeded; st/sat get OFF_FRACTION of their channels off)."""
    torch.manual_seed(0)
    if spec["net"] == "monai-basicunet":
        from monai.networks.nets import BasicUNet

        return BasicUNet(3, IN_CH, OUT_CH, features=(*UNET_WIDTHS, UNET_WIDTHS[0]))
    if spec["net"] == "monai-attentionunet":
        from monai.networks.nets import AttentionUnet

        return AttentionUnet(3, IN_CH, OUT_CH, channels=UNET_WIDTHS, strides=(2,) * (len(UNET_WIDTHS) - 1))
    options = dict(spec["options"])
    if model_accepts(spec["net"], "gate_levels"):  # the paper's gating (every skip), as the committed results
        options.setdefault("gate_levels", "all")
    concat = options.pop("_concat_training", False)
    model = build_model(spec["net"], spec["skip"], IN_CH, OUT_CH, **options)
    if concat:  # the former training forward, with the decoder's concatenation buffers
        model.concat_free_training = False
    with torch.no_grad():
        for _, gate in model.skip_gates():
            if hasattr(gate, "select_weight"):
                off = torch.rand(gate.channels) < OFF_FRACTION
                gate.select_weight[off] = -0.5
    return model


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _maxrss_bytes() -> int:
    """This process's peak resident set size: ``VmHWM`` on Linux (``ru_maxrss`` there would include the
    parent's size, which Linux carries across the spawn's ``exec``), ``ru_maxrss`` elsewhere."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024


class _Peak:
    """Peak memory of the first call inside the context: CUDA allocator peak, or CPU peak-RSS rise."""

    def __init__(self, device: str) -> None:
        self.device, self.bytes = device, None

    def __enter__(self) -> _Peak:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _maxrss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.bytes = _maxrss_bytes() - self.base


def _time(fn, device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def _loss(out, target):
    outs = out if isinstance(out, list | tuple) else [out]
    return sum(F.cross_entropy(o, target) for o in outs)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (``spec["mode"]``) of one configuration; returns ``ms`` and ``peak_mb`` or a ``note``."""
    device, mode, reps = spec["device"], spec["mode"], spec["repeats"]
    if mode.startswith("sw_"):
        reps = max(1, reps // 5)  # a sliding window is many forwards already
    warm = 1 if device == "cpu" else 3
    if device == "cpu":
        torch.set_num_threads(spec["threads"])
    model = build(spec).to(device)
    result: dict[str, Any] = {}
    if mode in ("train", "train_compiled"):
        side, batch = spec["patch"], spec["batch"]
        x = torch.randn(batch, IN_CH, *[side] * 3, device=device)
        y = torch.randint(0, OUT_CH, (batch, *[side] * 3), device=device)
        model.train()
        net = model
        if mode == "train_compiled":
            # max-autotune: Triton autotuning and CUDA graphs (the patch shape is fixed).
            net = torch.compile(model, mode=spec.get("compile_mode") or None)
        opt = torch.optim.Adam(model.parameters(), 1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            _loss(net(x), y).backward()
            opt.step()

        if mode == "train_compiled" or device == "cuda":
            t = time.perf_counter()
            step()  # compiles / allocates optimizer state; excluded from the peak
            _sync(device)
            result["first_step_s"] = round(time.perf_counter() - t, 2)
        with _Peak(device) as peak:
            step()
        result["ms"] = _time(step, device, warm - 1, reps)
    else:
        side = spec["volume"]
        x = torch.randn(1, IN_CH, *[side] * 3, device=device)
        model.eval()
        if mode.endswith("lean"):
            model = make_lean(model)
        if mode == "whole_ort":
            predict = _ort_predictor(model, x, device)
            if isinstance(predict, str):
                return {"note": predict}
        else:
            predict = model
        if mode.startswith("sw_"):
            try:
                from satseg.inference.sliding_window import sliding_window_inference
            except ImportError:
                return {"note": "satseg.inference.sliding_window not available"}
            window = spec["window"]

            def run():
                with torch.inference_mode():
                    sliding_window_inference(
                        predict, x[0].cpu(), [window] * 3, OUT_CH, overlap=spec["overlap"], device=device
                    )
        else:

            def run():
                with torch.inference_mode():
                    predict(x)

        if device == "cuda":
            run()  # cuDNN autotuning, lazy allocations
        with _Peak(device) as peak:
            run()
        result["ms"] = _time(run, device, warm - 1, reps)
    result["peak_mb"] = None if peak.bytes is None else round(peak.bytes / 2**20, 1)
    if mode == "whole_ort" and device == "cuda":
        result["peak_mb"] = None  # ORT's CUDA allocations are invisible to torch.cuda
    return result


def _ort_predictor(model, x: torch.Tensor, device: str):
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime not installed"
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDA provider"
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    try:
        # A small example with dynamic sides: tracing at the full volume would run it on the CPU.
        torch.onnx.export(
            model.cpu(),
            (x[:, :, :32, :32, :32].cpu(),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            dynamic_axes={"image": {0: "batch", 2: "d", 3: "h", 4: "w"}},
        )
    except Exception as err:  # a benchmark reports and goes on
        return f"ONNX export failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
    options = ort.SessionOptions()
    if device == "cpu":
        options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=providers)
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        return "onnxruntime CUDA provider failed to load (CUDA/cuDNN libraries missing?)"
    name = session.get_inputs()[0].name
    if device == "cpu":
        array = x.cpu().numpy()
        return lambda _x: session.run(None, {name: array})
    binding = session.io_binding()
    xc = x.contiguous()
    binding.bind_input(name, "cuda", 0, np.float32, tuple(xc.shape), xc.data_ptr())
    binding.bind_output(session.get_outputs()[0].name, "cuda")
    return lambda _x: session.run_with_iobinding(binding)


def run_measure(spec: dict[str, Any]) -> dict[str, Any]:
    """On CPU in a fresh spawned process (clean peak RSS); on CUDA in this process."""
    try:
        if spec["device"] == "cuda":
            out = measure(spec)
            torch.cuda.empty_cache()
            return out
        with mp.get_context("spawn").Pool(1) as pool:
            return pool.apply(measure, (spec,))
    except Exception as err:  # a benchmark reports and goes on
        return {"note": f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"}


# --------------------------------------------------------------------------------------------- static
def _flops(model: torch.nn.Module, side: int) -> float:
    """Forward GFLOPs of a batch-1 ``side``³ input, counted on the meta device (no computation)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.to("meta")(torch.zeros(1, IN_CH, *[side] * 3, device="meta"))
    return counter.get_total_flops() / 1e9


def static_info(spec: dict[str, Any]) -> dict[str, Any]:
    model = build(spec).eval()
    info: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    if not spec["net"].startswith("monai"):
        lean = make_lean(model)
        info["lean_params"] = sum(p.numel() for p in lean.parameters())
        if spec["skip"] in ("st", "sat"):
            info["prune"] = prune_report(model)
        info["lean_gflops_patch"] = _flops(lean, spec["patch"])
        info["lean_gflops_volume"] = _flops(lean, spec["volume"])
    info["gflops_patch"] = _flops(model, spec["patch"])
    info["gflops_volume"] = _flops(build(spec).eval(), spec["volume"])
    return info


# Dense peak TFLOP/s (no sparsity) by device-name fragment: fp32 on CUDA cores, TF32 and bf16 on tensor cores
# (vendor data sheets; SXM parts). fp32 convolutions run as TF32 when torch.backends.cudnn.allow_tf32 (default).
DEVICE_PEAKS = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
    "H100 80GB HBM3": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0},
    "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
}


def device_peak(name: str) -> dict[str, float] | None:
    return next((peak for key, peak in DEVICE_PEAKS.items() if key in name), None)


def achieved(rows: dict[str, dict], device: str, device_name: str) -> dict[str, Any]:
    """Achieved TFLOP/s (CUDA) or GFLOP/s (CPU) of whole-volume inference, lean and eager, and the share of the
    device's dense peak (CUDA: fp32 and TF32; the benchmark runs fp32 with cuDNN's default TF32)."""
    out: dict[str, Any] = {}
    peak = device_peak(device_name) if device == "cuda" else None
    for name, row in rows.items():
        for mode, key in (("whole_lean", "lean_gflops_volume"), ("whole_eager", "gflops_volume")):
            ms, gflops = _get(rows, name, mode), row.get(key)
            if not ms or not gflops:
                continue
            rate = gflops / ms  # GFLOP per ms = TFLOP/s
            entry = {"tflops": round(rate, 2)} if device == "cuda" else {"gflops": round(rate * 1000, 2)}
            if peak:
                entry |= {f"of_{p}_peak": round(rate / v, 3) for p, v in peak.items() if p != "bf16"}
            out[f"{name}/{mode}"] = entry
    return out


# --------------------------------------------------------------------------------------------- report
def _ratio(a, b):
    return None if a is None or b is None or not b else round(a / b, 3)


def _get(rows, name, mode, key="ms"):
    row = rows.get(name)
    return None if row is None else row.get("modes", {}).get(mode, {}).get(key)


def ratios(rows: dict[str, dict]) -> tuple[dict, list[dict]]:
    out: dict[str, Any] = {}
    for name, row in rows.items():
        if row["net"].startswith("monai"):
            continue
        org = f"{row['net']}/org"
        r = {}
        for mode in row.get("modes", {}):
            for key in ("ms", "peak_mb"):
                r[f"{mode}.{key}_vs_org"] = _ratio(_get(rows, name, mode, key), _get(rows, org, mode, key))
        for key in ("ms", "peak_mb"):
            r[f"whole_lean.{key}_vs_org_eager"] = _ratio(
                _get(rows, name, "whole_lean", key), _get(rows, org, "whole_eager", key)
            )
            for monai in ("monai-attentionunet", "monai-basicunet"):
                r[f"whole_lean.{key}_vs_{monai}"] = _ratio(
                    _get(rows, name, "whole_lean", key), _get(rows, monai, "whole_eager", key)
                )
        r["train_compiled_speedup"] = _ratio(_get(rows, name, "train"), _get(rows, name, "train_compiled"))
        out[name] = r
    sat = out.get("unet3d/sat", {})
    # Like for like: lean vs lean, eager vs eager, training vs training (issue 16's targets).
    targets = [
        ("lean sat whole-volume time / lean org", sat.get("whole_lean.ms_vs_org"), "<=", 0.8),
        ("lean sat whole-volume peak / lean org", sat.get("whole_lean.peak_mb_vs_org"), "<=", 0.75),
        ("eager sat whole-volume time / eager org", sat.get("whole_eager.ms_vs_org"), "<=", 0.8),
        ("eager sat whole-volume peak / eager org", sat.get("whole_eager.peak_mb_vs_org"), "<=", 0.75),
        ("sat training step time / org", sat.get("train.ms_vs_org"), "<=", 0.95),
        ("sat training step peak / org", sat.get("train.peak_mb_vs_org"), "<=", 0.85),
        ("sat compiled training speed-up over eager", sat.get("train_compiled_speedup"), ">=", 2.0),
        # Not like for like (what `segment` runs against what a plain model runs), kept for reference.
        ("lean sat whole-volume time / org eager (mixed)", sat.get("whole_lean.ms_vs_org_eager"), "<=", 0.6),
        ("lean sat whole-volume peak / org eager (mixed)", sat.get("whole_lean.peak_mb_vs_org_eager"), "<=", 0.65),
    ]
    checks = [
        {
            "target": t,
            "value": v,
            "bound": f"{op} {b}",
            "met": None if v is None else (v <= b if op == "<=" else v >= b),
        }
        for t, v, op, b in targets
    ]
    return out, checks


def write(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1, default=str))


def markdown(payload: dict) -> str:
    modes = ["train", "train_compiled", "whole_eager", "whole_lean", "whole_ort", "sw_eager", "sw_lean"]
    lines = [
        f"# Efficiency, {payload['device_name']}",
        "",
        f"torch {payload['torch']}; sizes {payload['sizes']}; {payload['date']}.",
        "Times in ms (median), peak memory in MiB (see benchmarks/README.md for how it is measured).",
        "",
        "| config | params | GFLOPs | " + " | ".join(f"{m} ms | {m} MiB" for m in modes) + " |",
        "|---|---:|---:|" + "---:|---:|" * len(modes),
    ]
    for name, row in payload["rows"].items():
        cells = [name, f"{row.get('params', '')}", f"{row.get('gflops_patch', 0):.1f}"]
        for m in modes:
            res = row.get("modes", {}).get(m, {})
            cells += [_fmt(res.get("ms")), _fmt(res.get("peak_mb"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Targets (like for like: lean vs lean, eager vs eager)", ""]
    lines += ["| target | value | bound | met |", "|---|---:|---|---|"]
    for c in payload.get("targets", []):
        lines.append(f"| {c['target']} | {_fmt(c['value'])} | {c['bound']} | {c['met']} |")
    if payload.get("achieved"):
        unit = "TFLOP/s" if payload["device"] == "cuda" else "GFLOP/s"
        peak = payload.get("device_peak")
        lines += ["", f"## Achieved {unit}, whole-volume inference (fp32)", ""]
        if peak:
            lines.append(f"Device dense peak: fp32 {peak['fp32']}, TF32 {peak['tf32']}, bf16 {peak['bf16']} TFLOP/s.")
            lines.append("")
        lines += ["| config / mode | rate | of fp32 peak | of TF32 peak |", "|---|---:|---:|---:|"]
        for k, e in payload["achieved"].items():
            rate = e.get("tflops", e.get("gflops"))
            lines.append(f"| {k} | {rate} | {_fmt(e.get('of_fp32_peak'))} | {_fmt(e.get('of_tf32_peak'))} |")
    prunes = {n: r["prune"] for n, r in payload["rows"].items() if "prune" in r}
    if prunes:
        lines += ["", f"## Pruning (synthetic: {OFF_FRACTION:.0%} of selection weights negative)", ""]
        lines += [
            "| config | params | lean | lean+pruned | saved | bytes → pruned bytes |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for n, p in prunes.items():
            lines.append(
                f"| {n} | {p['params']} | {p['lean_params']} | {p['pruned_params']} | {p['saved_pct']:.1f} % | "
                f"{p['bytes']} → {p['pruned_bytes']} |"
            )
    notes = [
        f"- {n}: {m}: {r['note']}"
        for n, row in payload["rows"].items()
        for m, r in row.get("modes", {}).items()
        if "note" in r
    ]
    if notes or payload.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in payload.get("notes", [])], *notes]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if isinstance(v, float) and abs(v) < 10 else f"{v:.0f}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------------------------- CPU segment
SEGMENT_FEATURES = (24, 48, 96, 192)  # the shipped hippocampus model's widths
SEGMENT_PATCH = (48, 64, 48)  # and its training patch
SEGMENT_CLASSES = 3


def _segment_variants(model, window: tuple[int, ...], threads: int, workdir: Path) -> tuple[dict, dict]:
    """The predictors compared by ``--cpu-segment``, all with ``model``'s weights: name -> ``run(x) -> labels``."""
    from satseg.inference.sliding_window import sliding_window_inference

    lean = make_lean(model)
    notes: dict[str, str] = {}

    def satseg_sw(predict, tile=window, batch=1):
        def run(x):
            return sliding_window_inference(predict, x, tile, SEGMENT_CLASSES, overlap=0.5, sw_batch=batch).labels

        return run

    variants = {"torch_lean": satseg_sw(lean), "torch_eager": satseg_sw(model)}
    try:
        import onnxruntime as ort

        from satseg.export.onnx import export_onnx

        path = workdir / "lean.onnx"
        export_onnx(lean, path, example_shape=(1, IN_CH, *SEGMENT_PATCH), metadata={}, check=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def ort_predict(x):
            return torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x.numpy())})[0])

        variants["ort_lean"] = satseg_sw(ort_predict)
    except Exception as err:  # a benchmark reports and goes on
        notes["ort_lean"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    try:
        from monai.inferers import sliding_window_inference as monai_sw

        def monai_run(x):
            with torch.inference_mode():
                logits = monai_sw(x[None], window, 1, model, overlap=0.5, mode="gaussian")
            return logits[0].argmax(0).to(torch.uint8)

        variants["monai_eager"] = monai_run
    except ImportError:
        notes["monai_eager"] = "MONAI not installed"
    return variants, notes


def cpu_segment(args) -> int:
    """``segment`` of one volume at model spacing on the CPU: ONNX Runtime lean vs PyTorch eager vs PyTorch lean
    vs MONAI's sliding window, same weights, same window (``Segmenter.window``'s auto choice), interleaved round by
    round so the machine's load hits every variant alike; plus the training-patch tiling (the former default),
    timed on a few of its windows and scaled to all of them."""
    from satseg.inference.segmenter import Segmenter
    from satseg.inference.sliding_window import throughput_tile, window_starts

    threads = torch.get_num_threads()
    volume = tuple(args.volume)
    torch.manual_seed(0)
    model = build_model("unet3d", "sat", IN_CH, SEGMENT_CLASSES, features=SEGMENT_FEATURES, gate_levels="all").eval()
    config = {"model": {"net": "unet3d", "skip": "sat", "in_channels": IN_CH, "out_channels": SEGMENT_CLASSES,
                        "features": list(SEGMENT_FEATURES)},
              "plan": {"labels": {"background": 0, "a": 1, "b": 2}, "patch_size": list(SEGMENT_PATCH)}}  # fmt: skip
    segmenter = Segmenter(model, config, "benchmark", "torch", torch.device("cpu"), model)
    window, _ = segmenter.window(volume, "auto", 0.5)
    x = torch.randn(IN_CH, *volume)
    workdir = Path(tempfile.mkdtemp())
    variants, notes = _segment_variants(model, window, threads, workdir)
    times: dict[str, list[float]] = {name: [] for name in variants}
    labels: dict[str, torch.Tensor] = {}
    started = time.perf_counter()
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in order:
            t = time.perf_counter()
            with torch.inference_mode():
                labels[name] = variants[name](x)
            times[name].append(time.perf_counter() - t)
            log(f"[{time.perf_counter() - started:5.0f} s] round {r}: {name} {times[name][-1]:.2f} s")
        if time.perf_counter() - started > args.budget_s:
            notes["rounds"] = f"stopped after {r + 1} round(s): --budget-s {args.budget_s:.0f} spent"
            break
    # The former default: windows of the training patch (overlap 0.5, 4 per pass), timed on 8 windows.
    counts = [len(window_starts(max(v, p), p, 0.5)) for v, p in zip(volume, SEGMENT_PATCH, strict=True)]
    lean = make_lean(model)
    batch = torch.randn(4, IN_CH, *SEGMENT_PATCH)
    with torch.inference_mode():
        lean(batch)
        t = time.perf_counter()
        for _ in range(2):
            lean(batch)
        per_window = (time.perf_counter() - t) / 8
    median = {name: statistics.median(v) for name, v in times.items()}
    best = min(median, key=median.get)
    reference = labels.get("torch_eager")
    result = {
        "mode": "cpu-segment",
        "device_name": f"CPU ({platform.processor() or platform.machine()}, {threads} threads)",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "volume": volume,
        "features": SEGMENT_FEATURES,
        "classes": SEGMENT_CLASSES,
        "window": window,
        "auto_window_fits_memory": tuple(window) == throughput_tile(volume, SEGMENT_PATCH, 8, 0.5, 10**12),
        "window_bytes_per_voxel": segmenter.window_bytes_per_voxel(),
        "times_s": times,
        "median_s": median,
        "fastest": best,
        "ratios_vs_torch_lean": {n: round(m / median["torch_lean"], 3) for n, m in median.items()},
        "ratios_vs_fastest": {n: round(m / median[best], 3) for n, m in median.items()},
        "label_agreement_vs_torch_eager": {
            n: float((lab == reference).float().mean()) for n, lab in labels.items() if reference is not None
        },
        "training_patch_tiling": {
            "patch": SEGMENT_PATCH,
            "windows": math.prod(counts),
            "per_window_s": per_window,
            "estimated_s": per_window * math.prod(counts),
            "ratio_vs_torch_lean_auto_window": round(per_window * math.prod(counts) / median["torch_lean"], 3),
        },
        # FLOPs the windows compute (padding and overlap included) over the time they took.
        "gflops_per_s_torch_lean": round(
            _flops_volume(lean, window)
            * math.prod(len(window_starts(max(v, w), w, 0.5)) for v, w in zip(volume, window, strict=True))
            / median["torch_lean"],
            2,
        ),  # fmt: skip
        "notes": notes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out / "cpu-segment.json", result)
    (args.out / "cpu-segment.md").write_text(_segment_markdown(result))
    log(_segment_markdown(result))
    return 0


def _flops_volume(model, volume) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        copy.deepcopy(model).to("meta")(torch.zeros(1, IN_CH, *volume, device="meta"))
    return counter.get_total_flops() / 1e9


def _segment_markdown(r: dict) -> str:
    lines = [
        f"# CPU segment: {'x'.join(map(str, r['volume']))} volume, U-Net {r['features']} sat, {r['device_name']}",
        "",
        f"torch {r['torch']}; {r['date']}; load average {r['load_average']}; window "
        f"{'x'.join(map(str, r['window']))} (`segment --tile auto`), overlap 0.5, one window per pass.",
        "Variants interleaved round by round; median seconds; ratios are the comparable figures on a loaded machine.",
        "",
        "| backend | median s | vs torch lean | vs fastest | labels equal to eager |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in r["median_s"].items():
        agree = r["label_agreement_vs_torch_eager"].get(name)
        lines.append(
            f"| {name} | {m:.2f} | {r['ratios_vs_torch_lean'][name]:.3f} | {r['ratios_vs_fastest'][name]:.3f} | "
            f"{'–' if agree is None else f'{agree:.5f}'} |"
        )
    t = r["training_patch_tiling"]
    lines += [
        "",
        f"Fastest: **{r['fastest']}**. Lean PyTorch reached {r['gflops_per_s_torch_lean']} GFLOP/s.",
        f"The training-patch tiling (the former default: {t['windows']} windows of "
        f"{'x'.join(map(str, t['patch']))}, 4 per pass) would take ~{t['estimated_s']:.1f} s "
        f"({t['ratio_vs_torch_lean_auto_window']}x the auto window with torch lean; timed on 8 windows).",
    ]
    if r["notes"]:
        lines += ["", *[f"- {k}: {v}" for k, v in r["notes"].items()]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- main
def configurations(
    device: str, nets: list[str], skips: list[str], quick: bool = False, concat_rows: bool = False
) -> list[dict[str, Any]]:
    s = SIZES[device]
    configs = []
    for net in nets:
        if net.startswith("monai"):
            configs.append(
                {"name": net, "net": net, "skip": None, "options": {}, "patch": s["patch"], "volume": s["volume"]}
            )
            continue
        if net == "unet3d":
            options, patch, volume = {"features": UNET_WIDTHS}, s["patch"], s["volume"]
        else:
            options, patch, volume = OTHER_OPTIONS[device][net], s["other_patch"], s["other_volume"]
        for skip in [s for s in skips if not quick or net == "unet3d" or s in ("org", "sat")]:
            configs.append(
                {
                    "name": f"{net}/{skip}",
                    "net": net,
                    "skip": skip,
                    "options": options,
                    "patch": patch,
                    "volume": volume,
                }
            )
        if net == "unet3d" and concat_rows:
            for skip in [s for s in ("org", "sat") if s in skips]:
                configs.append(
                    {
                        "name": f"unet3d/{skip}-concat",
                        "net": net,
                        "skip": skip,
                        "options": {**options, "_concat_training": True},
                        "patch": patch,
                        "volume": volume,
                    }
                )
        if net == "unet3d" and "sat" in skips:
            configs.append(
                {
                    "name": "unet3d/sat-align",
                    "net": net,
                    "skip": "sat",
                    "options": {**options, "align_channels": True},
                    "patch": patch,
                    "volume": volume,
                }
            )
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nets", default="unet3d,monai-attentionunet,monai-basicunet,vnet3d,di2in3d,tiramisu3d")
    parser.add_argument("--skips", default="org,st,at,sat")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 repeats; other nets only org/sat; ORT and sliding windows only for U-Net org/sat and MONAI",
    )
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting measurements after this long")
    parser.add_argument("--no-compile", action="store_true", help="skip U-Net sat's compiled training step (CUDA)")
    parser.add_argument(
        "--compile-mode", default="default", help="torch.compile mode of the compiled step, e.g. max-autotune"
    )
    parser.add_argument(
        "--concat-rows", action="store_true", help="also train U-Net org/sat with the concatenating decoder (before)"
    )
    parser.add_argument("--compile-all", action="store_true", help="compiled training step for every U-Net row")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--cpu-segment",
        action="store_true",
        help="only `segment` of one volume on the CPU: ORT lean vs torch eager vs torch lean vs MONAI",
    )
    parser.add_argument("--volume", type=lambda t: [int(v) for v in t.replace("x", ",").split(",")],
                        default=[256, 256, 128], help="--cpu-segment: volume sides (default 256,256,128)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="--cpu-segment: interleaved rounds")
    args = parser.parse_args(argv)
    if args.cpu_segment:
        if args.budget_s is None:
            args.budget_s = 240.0
        return cpu_segment(args)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        log("error: --device cuda but CUDA is not available")
        return 1
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    budget = args.budget_s if args.budget_s is not None else (210.0 if device == "cuda" else None)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    notes = []
    try:
        import monai  # noqa: F401
    except ImportError:
        nets = [n for n in nets if not n.startswith("monai")]
        notes.append("MONAI not installed (pip install monai): MONAI rows skipped")
        log(notes[-1])
    skips = [s.strip() for s in args.skips.split(",") if s.strip()]
    repeats = 2 if args.quick else (3 if device == "cpu" else 10)
    threads = torch.get_num_threads()
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"efficiency-{device}.json"
    md_path = args.out / f"efficiency-{device}.md"
    payload: dict[str, Any] = {
        "device": device,
        "device_name": torch.cuda.get_device_name()
        if device == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {threads} threads)",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "sizes": {**SIZES[device], "unet_widths": UNET_WIDTHS},
        "repeats": repeats,
        "compile_mode": args.compile_mode,
        "off_fraction": OFF_FRACTION,
        "notes": notes,
        "rows": {},
    }
    start = time.perf_counter()
    for cfg in configurations(device, nets, skips, args.quick, args.concat_rows):
        name = cfg.pop("name")
        row = payload["rows"].setdefault(
            name, {**{k: cfg[k] for k in ("net", "skip", "options", "patch", "volume")}, "modes": {}}
        )
        try:
            row.update(static_info(cfg))
        except Exception as err:
            row["static_note"] = f"{type(err).__name__}: {err}"
        modes = ["train"]
        if (
            device == "cuda"
            and not args.no_compile
            and (name == "unet3d/sat" or args.compile_all and "unet3d/" in name)
        ):
            modes.append("train_compiled")
        monai_net = cfg["net"].startswith("monai")
        # --quick: ONNX Runtime and sliding windows only for U-Net org/sat (and sliding windows for MONAI).
        full = not args.quick or name in ("unet3d/org", "unet3d/sat")
        modes += ["whole_eager"] + ([] if monai_net else ["whole_lean"] + (["whole_ort"] if full else []))
        if full or monai_net:
            modes += ["sw_eager"] + ([] if monai_net else ["sw_lean"])
        if cfg["options"].get("_concat_training"):  # "before" rows: only the training step changed
            modes = [m for m in modes if m.startswith("train")]
        for mode in modes:
            if budget is not None and time.perf_counter() - start > budget:
                row["modes"][mode] = {"note": f"skipped: time budget {budget:.0f} s spent"}
                continue
            spec = {**cfg, "mode": mode, "device": device, "repeats": repeats, "threads": threads}
            spec["compile_mode"] = None if args.compile_mode == "default" else args.compile_mode
            spec.update(
                overlap=SIZES[device]["overlap"],
                batch=SIZES[device]["batch"],
                window=SIZES[device]["window"]
                if cfg["net"] == "unet3d" or cfg["net"].startswith("monai")
                else cfg["patch"],
            )
            t = time.perf_counter()
            res = run_measure(spec)
            row["modes"][mode] = res
            took = time.perf_counter() - t
            log(f"[{time.perf_counter() - start:6.0f} s] {name:24s} {mode:15s} {json.dumps(res)} ({took:.0f} s)")
            payload["ratios"], payload["targets"] = ratios(payload["rows"])
            write(json_path, payload)
    payload["ratios"], payload["targets"] = ratios(payload["rows"])
    payload["achieved"] = achieved(payload["rows"], device, payload["device_name"])
    payload["device_peak"] = device_peak(payload["device_name"]) if device == "cuda" else None
    payload["elapsed_s"] = round(time.perf_counter() - start, 1)
    write(json_path, payload)
    md_path.write_text(markdown(payload))
    for c in payload["targets"]:
        log(f"target: {c['target']}: {c['value']} ({c['bound']}) -> {c['met']}")
    log(f"wrote {json_path} and {md_path} in {payload['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
