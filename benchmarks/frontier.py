"""Dice against inference memory (issue 23): does a light skip beat a narrower plain network?

Usage (from the repository root)::

    python benchmarks/paper.py --profile frontier          # train: width by width, resumable
    python benchmarks/frontier.py --cost                   # inference cost per architecture (resumable)
    python benchmarks/frontier.py --report                 # frontier.md, frontier.json, frontier.png
    python benchmarks/frontier.py --profile frontier-2x --budget-check frontier   # Dice at 2x the steps

Inference cost is what ``satseg segment`` pays on the CPU: the lean model (``make_lean``) exported to ONNX
and run by ONNX Runtime (one thread, ``segment``'s default session options), one forward of a reference
volume (3D: 256³, 2D: 1024²) as one window, the window ``segment`` takes when the scan fits. Each
architecture is measured once (cost does not depend on the trained weights: seeded random weights) in a
fresh spawned process; its peak memory is the rise of the process's peak resident set size (``VmHWM``) over
the first forward, after model, session and input were built; its time is the fastest of ``REPEATS``
forwards. Parameters and skip bytes (what the gates hand to the decoder, fp32, on the reference volume)
are counted on the meta device. Each architecture's peak is measured again, in another fresh process, as
``segment --low-memory`` runs it (no arena, freed blocks unmapped: ``unmap_freed_blocks``), where the
arena's doubling steps do not round it up.

Per (dataset, width, variant) the report gives Dice (mean ± std over seeds), Dice at half the budget (the
convergence check), a two-sided Wilcoxon signed-rank test on the seed-averaged per-case Dice against the
``org`` of the same width and against the ``org`` whose peak inference memory is nearest (on a log scale),
and the cost columns.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from profiles import PROFILES, VARIANTS, Profile  # noqa: E402
from report import aggregate, load_runs  # noqa: E402
from runner import git_commit, machine_info, write_json  # noqa: E402
from scipy.stats import wilcoxon  # noqa: E402

from satseg.atomic import atomic_path, atomic_write_text  # noqa: E402

__all__ = [
    "IO",
    "REFERENCE_SIDE",
    "activation_bytes",
    "architectures",
    "measure_cost",
    "frontier_rows",
    "frontier_markdown",
    "budget_check",
    "train_options",
    "advice",
    "main",
]

IO = {"ph2": (2, 3, 2), "hippocampus": (3, 1, 3)}
"""dataset -> (spatial dims, input channels, classes) of its models."""

REFERENCE_SIDE = {2: 1024, 3: 256}
"""Side of the reference volume whose inference cost is measured."""

REPEATS = {2: 3, 3: 1}
"""Forwards per architecture: peak memory over the first, time the fastest (least disturbed by the machine's load)."""


def architectures(profile: Profile, datasets: list[str], variants: list[str]) -> list[dict[str, Any]]:
    """One cost specification per (dataset, net, variant) of the profile."""
    specs = []
    for ds in datasets:
        dims, in_ch, classes = IO[ds]
        for net_key, net in profile.nets[ds].items():
            for name in variants:
                if net.skips and name not in net.skips:
                    continue
                variant = VARIANTS[name]
                options = dict(net.options) | variant.model
                if variant.gate:
                    options["gate_options"] = dict(variant.gate)
                specs.append(
                    {
                        "key": f"{ds}-{net_key}-{name}",
                        "dataset": ds,
                        "net": net_key,
                        "variant": name,
                        "model": f"{net.key}{dims}d",
                        "skip": variant.skip,
                        "in_channels": in_ch,
                        "classes": classes,
                        "options": options,
                        "side": REFERENCE_SIDE[dims],
                        "dims": dims,
                    }
                )
    return specs


def _build(spec: dict[str, Any]):
    from satseg.nn import build_model

    torch.manual_seed(0)
    return build_model(spec["model"], spec["skip"], spec["in_channels"], spec["classes"], **spec["options"]).eval()


def static_cost(spec: dict[str, Any]) -> dict[str, Any]:
    """Parameters and skip bytes on the reference volume (meta device: nothing is computed)."""
    from satseg.nn.params import measure_variant

    measured = measure_variant(_build(spec), [spec["side"]] * spec["dims"], flops=False, memory=False)
    return {k: measured[k] for k in ("params", "skip_bytes", "skip_channels")}


ACTIVATION_SIDE = {2: 128, 3: 32}
"""Side on which the lean model's live activations are tracked (then scaled to the reference volume)."""


def activation_bytes(spec: dict[str, Any]) -> int:
    """Peak bytes of activations alive at once in one lean forward (PyTorch, tracked at the dispatcher),
    on a small volume scaled by voxels to the reference volume, as ``Segmenter.window_bytes_per_voxel``
    sizes windows: a load-free measure without ONNX Runtime's arena, which rounds its growth up."""
    from satseg.nn.lean import make_lean
    from satseg.nn.params import LiveTensorBytes

    side, dims = ACTIVATION_SIDE[spec["dims"]], spec["dims"]
    lean = make_lean(_build(spec))
    tracker = LiveTensorBytes()
    with torch.no_grad(), tracker:
        lean(torch.zeros(1, spec["in_channels"], *[side] * dims))
    return int(tracker.peak * (spec["side"] / side) ** dims)


def _peak_rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def _ort_forward(spec: dict[str, Any], low_memory: bool = False) -> dict[str, Any]:
    """In a fresh process: export the lean model, one ONNX Runtime forward of the reference volume (as
    ``segment --low-memory`` runs it when ``low_memory``)."""
    import onnxruntime as ort

    from satseg.export.onnx import export_onnx
    from satseg.inference.backends import unmap_freed_blocks
    from satseg.nn.lean import make_lean

    torch.set_num_threads(1)
    lean = make_lean(_build(spec))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lean.onnx"
        small = max(32, 2 * lean.input_divisor)
        example = (1, spec["in_channels"], *[small] * spec["dims"])
        export_onnx(lean, path, example_shape=example, metadata={}, check=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        if low_memory:
            options.enable_cpu_mem_arena = options.enable_mem_pattern = False
            unmap_freed_blocks()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, spec["in_channels"], *[spec["side"]] * spec["dims"]), dtype=np.float32)
        base = _peak_rss()
        times = []
        for _ in range(REPEATS[spec["dims"]]):
            start = time.perf_counter()
            session.run(None, {name: x})
            times.append(time.perf_counter() - start)
            if len(times) == 1:
                peak = _peak_rss() - base
    return {"peak_bytes": int(peak), "seconds": round(min(times), 3), "runs": len(times)}


def _forward_in_fresh_process(spec: dict[str, Any], low_memory: bool = False) -> dict[str, Any]:
    """:func:`_ort_forward` in a fresh spawned process (a clean peak RSS, and glibc's setting stays there)."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_ort_forward, (spec, low_memory))


def measure_cost(spec: dict[str, Any]) -> dict[str, Any]:
    """Static counts here, the ONNX Runtime forward in a fresh spawned process."""
    return static_cost(spec) | _forward_in_fresh_process(spec)


def run_costs(profile: Profile, path: Path, datasets: list[str], variants: list[str]) -> dict[str, Any]:
    """Measure every architecture not yet in ``path``, and its ``--low-memory`` peak where that is missing
    (the file rewritten atomically after each one)."""
    data = json.loads(path.read_text()) if path.is_file() else {"entries": {}}
    entries = data["entries"]
    todo = [s for s in architectures(profile, datasets, variants) if "low_memory" not in entries.get(s["key"], {})]
    todo.sort(key=lambda s: (s["dims"], s["options"]["features"][0]))  # cheapest first
    for spec in todo:
        started = time.perf_counter()
        stamp = {"commit": git_commit(ROOT), "machine": machine_info()}
        if spec["key"] not in entries:
            entry = {k: spec[k] for k in ("dataset", "net", "variant", "model", "side")}
            entries[spec["key"]] = entry | measure_cost(spec) | stamp
            write_json(path, data)
        entry = entries[spec["key"]]
        entry["low_memory"] = _forward_in_fresh_process(spec, low_memory=True) | stamp
        write_json(path, data)
        print(f"{spec['key']}: {entry['peak_bytes'] / 2**20:.0f} MiB, --low-memory "
              f"{entry['low_memory']['peak_bytes'] / 2**20:.0f} MiB ({time.perf_counter() - started:.0f} s)",
              flush=True)  # fmt: skip
    return data


# ------------------------------------------------------------------------------------------------ report
def _wilcoxon(a: dict[str, float], b: dict[str, float]) -> dict[str, Any] | None:
    cases = sorted(set(a) & set(b))
    if not cases:
        return None
    x, y = np.array([a[c] for c in cases]), np.array([b[c] for c in cases])
    diff = x - y
    p = 1.0 if np.allclose(diff, 0) else float(wilcoxon(x, y, zero_method="wilcox").pvalue)
    return {"n": len(cases), "delta": float(diff.mean()), "p": p, "wins": int((diff > 0).sum()),
            "losses": int((diff < 0).sum())}  # fmt: skip


def _width(net: str) -> int:
    return int(net.rsplit("w", 1)[1])


STUDY_LEVELS = 4
"""Levels of the study's U-Nets (``unet-w<width>``); another depth is named in the key (``unet5-w16``)."""


def _levels(net: str) -> int:
    """U-Net levels from the net key: ``unet-w8`` has the study's 4, ``unet5-w16`` (the default U-Net) 5."""
    prefix = net.rsplit("-w", 1)[0]
    return int(prefix[len("unet"):] or STUDY_LEVELS)


def _width_label(net: str) -> str:
    """``8`` for the study's 4-level nets, ``16x5`` for a 5-level one."""
    levels = _levels(net)
    return f"{_width(net)}" + (f"x{levels}" if levels != STUDY_LEVELS else "")


def _variant_key(run: dict) -> tuple[str, str, str]:
    return run["dataset"], run["net"], run.get("variant", run["skip"])


def frontier_rows(runs: list[dict], costs: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per (dataset, width, variant): Dice, convergence, paired tests, inference cost."""
    agg = aggregate(runs)
    rows = []
    order = sorted(agg.items(), key=lambda kv: (kv[0][0], _levels(kv[0][1]), _width(kv[0][1]), kv[0][2]))
    for (ds, net, variant), entry in order:
        group = [r for r in runs if _variant_key(r) == (ds, net, variant)]
        halves = [r["half_budget"]["dice"] for r in group if r.get("half_budget")]
        cost = costs.get(f"{ds}-{net}-{variant}", {})
        row: dict[str, Any] = {
            "dataset": ds, "net": net, "width": _width(net), "levels": _levels(net), "variant": variant,
            "seeds": entry["seeds"],
            "dice": entry["over_seeds"]["dice"], "dice_per_seed": entry["seed_means"]["dice"],
            "dice_half": float(np.mean(halves)) if halves else math.nan,
            "steps": sorted({r["steps_done"] for r in group}), "commits": sorted({r["commit"] for r in group}),
            "peak_bytes": cost.get("peak_bytes"), "seconds": cost.get("seconds"), "params": cost.get("params"),
            "peak_bytes_low_memory": cost.get("low_memory", {}).get("peak_bytes"),
            "skip_bytes": cost.get("skip_bytes"), "activation_bytes": cost.get("activation_bytes"),
        }  # fmt: skip
        row["half_to_full"] = row["dice"][0] - row["dice_half"] if halves else math.nan
        org = agg.get((ds, net, "org"))
        if variant != "org" and org is not None:
            common = {s for s in entry["seeds"]} & set(org["seeds"])
            same = aggregate([r for r in runs if _variant_key(r) in ((ds, net, variant), (ds, net, "org"))
                              and r["seed"] in common])  # fmt: skip
            row["vs_org_same_width"] = _wilcoxon(same[(ds, net, variant)]["per_case"]["dice"],
                                                 same[(ds, net, "org")]["per_case"]["dice"])  # fmt: skip
        rows.append(row)
    # the org of nearest peak inference memory (log scale), among the org widths that have runs and a cost
    for row in rows:
        orgs = [o for o in rows if o["dataset"] == row["dataset"] and o["variant"] == "org" and o["peak_bytes"]]
        if row["variant"] == "org" or not orgs or not row["peak_bytes"]:
            continue
        near = min(orgs, key=lambda o: abs(math.log(o["peak_bytes"] / row["peak_bytes"])))
        row["nearest_org"] = near["net"]
        mine = agg[(row["dataset"], row["net"], row["variant"])]["per_case"]["dice"]
        row["vs_org_nearest_memory"] = _wilcoxon(mine, agg[(row["dataset"], near["net"], "org")]["per_case"]["dice"])
    return rows


def _per_case(runs: list[dict], key: tuple[str, str, str], seeds: set[int]) -> dict[str, float]:
    """Seed-averaged per-case Dice of one (dataset, net, variant) over the given seeds."""
    return aggregate([r for r in runs if _variant_key(r) == key and r["seed"] in seeds])[key]["per_case"]["dice"]


def budget_check(short: list[dict], long: list[dict]) -> list[dict[str, Any]]:
    """Per (dataset, width, variant) trained at both budgets: Dice at each on the seeds both have, the paired
    test of the long budget against the short one, and the variant's gap to ``org`` of the same width at
    each budget (on the seeds that all four groups have)."""
    seeds: dict[tuple[str, str, str], dict[str, set[int]]] = {}
    for name, runs in (("short", short), ("long", long)):
        for r in runs:
            seeds.setdefault(_variant_key(r), {"short": set(), "long": set()})[name].add(r["seed"])
    rows = []
    for key in sorted(seeds, key=lambda k: (k[0], _width(k[1]), k[2])):
        both = seeds[key]["short"] & seeds[key]["long"]
        if not both:
            continue
        ds, net, variant = key
        a, b = _per_case(short, key, both), _per_case(long, key, both)
        row: dict[str, Any] = {
            "dataset": ds, "net": net, "width": _width(net), "variant": variant, "seeds": sorted(both),
            "steps": [sorted({r["steps_done"] for r in runs if _variant_key(r) == key and r["seed"] in both})
                      for runs in (short, long)],
            "dice_short": float(np.mean(list(a.values()))), "dice_long": float(np.mean(list(b.values()))),
            "long_vs_short": _wilcoxon(b, a),
        }  # fmt: skip
        org = (ds, net, "org")
        if variant != "org" and org in seeds:
            paired = both & seeds[org]["short"] & seeds[org]["long"]
            if paired:
                row["gap_seeds"] = sorted(paired)
                row["gap_short"] = _wilcoxon(_per_case(short, key, paired), _per_case(short, org, paired))
                row["gap_long"] = _wilcoxon(_per_case(long, key, paired), _per_case(long, org, paired))
        rows.append(row)
    return rows


def budget_check_markdown(rows: list[dict[str, Any]], short: Profile, long: Profile) -> str:
    lines = [
        f"# Budget check: `{short.name}` against `{long.name}` (issue 23)",
        "",
        *[f"- {n}" for n in long.notes[:1]],
        "",
        "Dice: mean over cases of the seed-averaged per-case Dice, on the seeds both budgets have. Tests: "
        "two-sided Wilcoxon signed-rank on seed-averaged per-case Dice (Δ, p, cases up/down): the long budget "
        "against the short one, and each variant against `org` of the same width at each budget.",
        "",
        "| data | width | variant | seeds | steps | Dice | steps | Dice | long − short | gap to `org` "
        "(short) | gap to `org` (long) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        (s_steps, l_steps) = ("/".join(map(str, x)) for x in r["steps"])
        lines.append(
            f"| {r['dataset']} | {r['width']} | `{r['variant']}` | {len(r['seeds'])} | {s_steps} "
            f"| {r['dice_short']:.3f} | {l_steps} | {r['dice_long']:.3f} | {_test(r['long_vs_short'])} "
            f"| {_test(r.get('gap_short'))} | {_test(r.get('gap_long'))} |"
        )
    return "\n".join([*lines, ""])


def _mib(value) -> str:
    return "–" if not value else f"{value / 2**20:.0f}"


def _test(t: dict | None) -> str:
    return "–" if not t else f"{t['delta']:+.3f}, p = {t['p']:.2g} ({t['wins']}/{t['losses']})"


def frontier_markdown(rows: list[dict[str, Any]], profile: Profile) -> str:
    lines = [
        "# Frontier: Dice against inference memory (issue 23)",
        "",
        *[f"- {n}" for n in profile.notes],
        "",
        "Peak memory and time: one ONNX Runtime forward (lean model, one thread) of a 1024² (PH2) or 256³ "
        "(hippocampus) volume, peak-RSS rise in a fresh process (ONNX Runtime's arena rounds it up; low-mem: as "
        "`segment --low-memory` runs it, no arena); activations: "
        "the lean forward's peak of live tensors (PyTorch, scaled from a small volume). Skip bytes on the same "
        "volume, fp32. "
        "Tests: two-sided Wilcoxon signed-rank on seed-averaged per-case Dice (Δ, p, cases up/down); "
        "against `org` of the same width on the seeds both have, and against the `org` of nearest peak memory.",
        "",
        "| data | width | variant | seeds | Dice | half → full | vs `org` same width | nearest-memory `org` "
        "| peak MiB | low-mem MiB | activations MiB | time s | params | skip MiB |",
        "|---|---:|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mean, std = r["dice"]
        near = "–"
        if r.get("nearest_org"):
            near = f"w{_width_label(r['nearest_org'])}: {_test(r.get('vs_org_nearest_memory'))}"
        half = "–" if math.isnan(r["dice_half"]) else f"{r['dice_half']:.3f} ({r['half_to_full']:+.3f})"
        seconds = "–" if r["seconds"] is None else f"{r['seconds']:.2f}"
        lines.append(
            f"| {r['dataset']} | {_width_label(r['net'])} | `{r['variant']}` | {len(r['seeds'])} "
            f"| {mean:.3f} ± {std:.3f} "
            f"| {half} | {_test(r.get('vs_org_same_width'))} | {near} | {_mib(r['peak_bytes'])} "
            f"| {_mib(r.get('peak_bytes_low_memory'))} | {_mib(r.get('activation_bytes'))} | {seconds} "
            f"| {r['params'] or '–'} | {_mib(r['skip_bytes'])} |"
        )
    commits = sorted({c for r in rows for c in r["commits"]})
    lines += ["", f"Runs from commit(s): {', '.join(c[:10] for c in commits)}.", ""]
    return "\n".join(lines)


_COLOURS = {"org": (0, 0, 0), "sat": (214, 39, 40), "sat-fine1": (31, 119, 180), "sat-k2-bn-lin": (44, 160, 44)}


_PANEL = (760, 320, 70, 30, 150, 40)  # width, height, margins left, top, right (legend), bottom


def _frontier_panel(ds: str, points: list[dict[str, Any]], x_key: str, x_title: str):
    """One dataset's panel: a curve per variant over log2 peak MiB, ± std over seeds as bars."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, left, top, right, bottom = _PANEL
    panel = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(panel), ImageFont.load_default()
    x0, y0, x1, y1 = left, top, width - right, height - bottom
    draw.rectangle((x0, y0, x1, y1), outline=(90, 90, 90))
    mems = [math.log2(r[x_key] / 2**20) for r in points]
    lo_x, hi_x = min(mems) - 0.2, max(mems) + 0.2
    ys = [r["dice"][0] + s * r["dice"][1] for r in points for s in (-1, 1)]
    lo_y, hi_y = min(ys) - 0.005, max(ys) + 0.005

    def px(mib_log2: float, dice: float) -> tuple[float, float]:
        return x0 + (mib_log2 - lo_x) / (hi_x - lo_x) * (x1 - x0), y1 - (dice - lo_y) / (hi_y - lo_y) * (y1 - y0)

    draw.text((x0, 8), f"{ds}: test Dice vs {x_title}", fill="black", font=font)
    for value in (lo_y, hi_y):
        draw.text((6, px(lo_x, value)[1] - 6), f"{value:.3f}", fill="black", font=font)
    for e in range(math.ceil(lo_x), math.floor(hi_x) + 1):
        x, _ = px(e, lo_y)
        draw.line((x, y1, x, y1 + 4), fill="black")
        draw.text((x - 10, y1 + 6), f"{2**e:g}", fill="black", font=font)
    draw.text((x1 - 90, y1 + 20), "MiB (log)", fill="black", font=font)
    variants = [v for v in _COLOURS if any(r["variant"] == v for r in points)]
    for k, v in enumerate(variants):
        colour = _COLOURS[v]
        mine = sorted((r for r in points if r["variant"] == v), key=lambda r: r[x_key])
        curve = [r for r in mine if r.get("levels", STUDY_LEVELS) == STUDY_LEVELS]  # another depth: a marker
        pixels = [px(math.log2(r[x_key] / 2**20), r["dice"][0]) for r in curve]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for r in mine:
            x, y = px(math.log2(r[x_key] / 2**20), r["dice"][0])
            draw.line((x, px(0, r["dice"][0] + r["dice"][1])[1], x, px(0, r["dice"][0] - r["dice"][1])[1]), fill=colour)
            if r.get("levels", STUDY_LEVELS) == STUDY_LEVELS:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
            else:
                draw.rectangle((x - 4, y - 4, x + 4, y + 4), outline=colour, width=2)
            draw.text((x + 4, y - 12), f"w{_width_label(r['net'])}", fill=colour, font=font)
        draw.line((x1 + 10, y0 + 14 * k + 6, x1 + 28, y0 + 14 * k + 6), fill=colour, width=3)
        draw.text((x1 + 34, y0 + 14 * k), v, fill="black", font=font)
    return panel


X_AXES = {
    "peak_bytes": "peak inference memory (lean, ONNX Runtime, CPU)",
    "activation_bytes": "peak live activations (lean forward)",
    "peak_bytes_low_memory": "peak inference memory, segment --low-memory (CPU)",
}
"""Memory measures the figure can put on its x axis."""


def frontier_png(rows: list[dict[str, Any]], path: Path, x_key: str = "peak_bytes") -> Path:
    """Dice against a memory measure (log axis), one curve per variant, ± std over seeds; a panel per dataset."""
    from PIL import Image

    title = X_AXES[x_key]  # KeyError for a measure the rows do not have
    datasets = sorted({r["dataset"] for r in rows if r.get(x_key)})
    picture = Image.new("RGB", (_PANEL[0], _PANEL[1] * max(len(datasets), 1)), "white")
    for index, ds in enumerate(datasets):
        picture.paste(
            _frontier_panel(ds, [r for r in rows if r["dataset"] == ds and r.get(x_key)], x_key, title),
            (0, index * _PANEL[1]),
        )
    with atomic_path(path, suffix=".png") as tmp:
        picture.save(tmp, format="PNG")
    return path


UNET_GATE_LEVELS = 1
"""U-Net's default ``gate_levels`` (the finest skip): a variant that keeps it needs no ``--net-option``."""


def train_options(profile: Profile, dataset: str, net: str, variant: str) -> str:
    """The ``satseg train`` options that build the frontier's ``net`` x ``variant`` (what ``params --budget`` shows)."""
    spec = next(s for s in architectures(profile, [dataset], [variant]) if s["net"] == net)
    options = dict(spec["options"])
    features = ",".join(map(str, options["features"]))
    words = [f"--net {spec['model']}", f"--skip {spec['skip']}", f"--features {features}"]
    if spec["skip"] != "org" and options.get("gate_levels", UNET_GATE_LEVELS) != UNET_GATE_LEVELS:
        words.append(f"--net-option gate_levels={options['gate_levels']}")
    for key, value in options.get("gate_options", {}).items():
        words.append(f"--gate {key}={str(value).lower() if isinstance(value, bool) else value}")
    return " ".join(words)


def _rounded_mib(size: int | None) -> float | None:
    return None if size is None else round(size / 2**20, 1)


def advice(rows: list[dict[str, Any]], profile: Profile) -> dict[str, Any]:
    """The measured frontier as ``satseg params --budget`` reads it (``models/frontier.json``): every point with
    its Dice over the seeds, its rise from half to full training budget, its measured peak and the options that
    train it. Points without a cost, or with fewer seeds than the profile's (still training), are left out."""
    points = [
        {
            "dataset": r["dataset"], "dims": IO[r["dataset"]][0], "width": r["width"], "levels": _levels(r["net"]),
            "variant": r["variant"],
            "train_options": train_options(profile, r["dataset"], r["net"], r["variant"]),
            "dice": round(r["dice"][0], 4), "dice_std": round(r["dice"][1], 4), "seeds": len(r["seeds"]),
            "peak_mib": round(r["peak_bytes"] / 2**20, 1), "seconds": r["seconds"], "params": r["params"],
            "peak_low_memory_mib": _rounded_mib(r.get("peak_bytes_low_memory")),
            "half_to_full": None if math.isnan(r.get("half_to_full", math.nan)) else round(r["half_to_full"], 4),
        }
        for r in rows
        if r["peak_bytes"] and len(r["seeds"]) >= profile.seeds
    ]  # fmt: skip
    return {
        "about": "Dice against peak inference memory (benchmarks/results/frontier, issue 23): one CPU forward "
        "(ONNX Runtime, lean model, one thread) of a reference volume of side `reference` per dimension; Dice on "
        "the test fold, mean over seeds. Written by `benchmarks/frontier.py --report`.",
        "reference": {str(d): side for d, side in REFERENCE_SIDE.items()},
        "commits": sorted({c for r in rows for c in r["commits"]}),
        "points": points,
    }


def write_report(profile: Profile, out: Path, advice_file: Path | None = None) -> list[dict[str, Any]]:
    runs, _ = load_runs(out / "runs")
    cost_file = out / "cost.json"
    costs = json.loads(cost_file.read_text())["entries"] if cost_file.is_file() else {}
    specs = architectures(profile, list(profile.datasets), list(profile.skips or ()))
    for spec in specs:  # computed here, not measured: the same on every machine
        if spec["key"] in costs:
            costs[spec["key"]] = costs[spec["key"]] | {"activation_bytes": activation_bytes(spec)}
    rows = frontier_rows(runs, costs)
    write_json(out / "frontier.json", {"profile": profile.name, "rows": rows})
    if advice_file is not None:
        write_json(advice_file, advice(rows, profile))
    atomic_write_text(out / "frontier.md", frontier_markdown(rows, profile))
    if any(r["peak_bytes"] for r in rows):
        frontier_png(rows, out / "frontier.png")
        frontier_png(rows, out / "frontier-activations.png", "activation_bytes")
    if any(r.get("peak_bytes_low_memory") for r in rows):
        frontier_png(rows, out / "frontier-low-memory.png", "peak_bytes_low_memory")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="frontier")
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--datasets", nargs="+", default=None, help="default: the profile's")
    parser.add_argument("--variants", nargs="+", default=None, help="default: the profile's skips")
    parser.add_argument("--cost", action="store_true", help="measure inference cost per architecture")
    parser.add_argument("--report", action="store_true", help="table, JSON and figure from the finished runs")
    parser.add_argument(
        "--budget-check",
        metavar="PROFILE",
        default=None,
        help="compare the profile's runs, seed by seed, with the same points of PROFILE (a shorter budget)",
    )
    parser.add_argument(
        "--advice", default=str(ROOT / "models" / "frontier.json"),
        help="with --report: where to write the frontier `satseg params --budget` reads ('' for nowhere)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    profile = PROFILES[args.profile]
    out = Path(args.results) / profile.name
    if args.cost:
        run_costs(profile, out / "cost.json", args.datasets or list(profile.datasets),
                  args.variants or list(profile.skips or ()))  # fmt: skip
    if args.report:
        rows = write_report(profile, out, Path(args.advice) if args.advice else None)
        print(f"{len(rows)} points -> {out / 'frontier.md'}")
    if args.budget_check:
        short = PROFILES[args.budget_check]
        rows = budget_check(load_runs(Path(args.results) / short.name / "runs")[0], load_runs(out / "runs")[0])
        write_json(out / "budget-check.json", {"short": short.name, "long": profile.name, "rows": rows})
        atomic_write_text(out / "budget-check.md", budget_check_markdown(rows, short, profile))
        print(f"{len(rows)} points -> {out / 'budget-check.md'}")


if __name__ == "__main__":
    main()
