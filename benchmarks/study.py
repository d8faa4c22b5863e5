"""Convergence study of the skip variants: Dice against ORG at convergence, selection at init and end, cost.

Usage (from the repository root, after ``benchmarks/paper.py --profile cpu-conv --skips …`` has run)::

    python benchmarks/study.py --profile cpu-conv

Reads ``<results>/<profile>/runs/*.json`` and writes ``study.md`` and ``study.json`` next to them. Per
dataset × net and variant: Dice (mean ± std over seeds of the per-run mean over test cases), Dice at half
the budget (has it levelled off?), the difference to ORG paired by seed, a two-sided Wilcoxon signed-rank
test against ORG on the seed-averaged per-case Dice (the cases are the paired units; with 3 seeds a
seed-level test cannot reach p < 0.25, so it is not reported as a test), channels switched off at init and
at the end, parameters, and the bytes the skips hold for one training patch.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from profiles import VARIANTS  # noqa: E402
from report import aggregate, load_runs, paired_test  # noqa: E402
from runner import write_json  # noqa: E402

from satseg.atomic import atomic_write_text  # noqa: E402
from satseg.nn import build_model, legacy_model_config  # noqa: E402
from satseg.nn.lean import LeanGate, make_lean  # noqa: E402

__all__ = ["study_rows", "study_markdown", "main"]


def _pct_off(runs: list[dict], key: str) -> float:
    values = [100.0 * g["fraction_off"] for r in runs for g in r.get(key) or []]
    return float(np.mean(values)) if values else math.nan


def skip_bytes(run: dict) -> int:
    """Bytes the skips of ``run``'s model hold for the decoder on one training patch (batch 1, fp32), as the
    lean inference path holds them: ``st`` channels that training switched off are pruned."""
    cfg = run["train_config"]
    channels = 3 if run["dataset"] == "ph2" else 1
    classes = len(run["cases"][0]["classes"]) + 1
    # a run that does not record gate_levels predates it (every skip gated): read it as a saved configuration
    arch = {"net": run["model"], "skip": cfg["skip"], "in_channels": channels, "out_channels": classes}
    model = build_model(**legacy_model_config({**arch, **cfg["model_options"]})).eval()
    selecting = [g for _, g in model.skip_gates() if hasattr(g, "select_weight")]
    with torch.no_grad():
        for gate, record in zip(selecting, run.get("gates") or [], strict=False):
            gate.select_weight.copy_(torch.tensor(record["selection"]))
    held: list[int] = []
    lean = make_lean(model, prune=True)
    for m in lean.modules():
        if isinstance(m, LeanGate):
            m.register_forward_hook(lambda _m, _i, out: held.append(0 if out is None else out.numel() * 4))
    with torch.no_grad():
        lean(torch.zeros(1, channels, *cfg["patch"]))
    return sum(held)


def _variant(run: dict) -> str:
    return run.get("variant", run["skip"])


def _paired_on_common_seeds(runs: list[dict], ds: str, net: str, variant: str) -> dict[str, Any] | None:
    """Wilcoxon of ``variant`` vs ``org`` on per-case Dice averaged over the seeds both have."""
    mine = [r for r in runs if (r["dataset"], r["net"], _variant(r)) == (ds, net, variant)]
    org = [r for r in runs if (r["dataset"], r["net"], _variant(r)) == (ds, net, "org")]
    common = {r["seed"] for r in mine} & {r["seed"] for r in org}
    if not common:
        return None
    pair = [r for r in mine + org if r["seed"] in common]
    return paired_test(aggregate(pair), ds, net, variant)


def study_rows(runs: list[dict]) -> list[dict[str, Any]]:
    """One row per (dataset, net, variant) with the study's figures (see the module docstring)."""
    agg = aggregate(runs)
    rows = []
    for (ds, net, variant), entry in sorted(agg.items()):
        group = [r for r in runs if (r["dataset"], r["net"], _variant(r)) == (ds, net, variant)]
        base = agg.get((ds, net, "org"))
        by_seed = {}
        if base is not None and variant != "org":
            org = dict(zip(base["seeds"], base["seed_means"]["dice"], strict=True))
            by_seed = {
                s: d - org[s] for s, d in zip(entry["seeds"], entry["seed_means"]["dice"], strict=True) if s in org
            }
        halves = [r["half_budget"]["dice"] for r in group if r.get("half_budget")]
        test = _paired_on_common_seeds(runs, ds, net, variant) if variant != "org" else None
        rows.append(
            {
                "dataset": ds,
                "net": net,
                "variant": variant,
                "about": VARIANTS[variant].about if variant in VARIANTS else "",
                "seeds": entry["seeds"],
                "steps": entry["steps"],
                "dice": entry["over_seeds"]["dice"],
                "dice_per_seed": entry["seed_means"]["dice"],
                "dice_half_budget": float(np.mean(halves)) if halves else math.nan,
                "delta_vs_org_by_seed": by_seed,
                "delta_vs_org": (float(np.mean(list(by_seed.values()))), float(np.std(list(by_seed.values()), ddof=1)))
                if len(by_seed) > 1
                else (math.nan, math.nan),
                "wilcoxon_vs_org": test,
                "pct_off_init": _pct_off(group, "gates_init"),
                "pct_off_end": _pct_off(group, "gates"),
                "params": entry["params"],
                "skip_channels": entry["skip_channels"],
                "skip_bytes_per_patch": int(np.mean([skip_bytes(r) for r in group])),
            }
        )
    return rows


def _f(value: float, digits: int = 3, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def study_markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The study's tables as Markdown: accuracy at convergence, then Dice against skip memory."""
    lines = [f"# {title}", ""]
    for ds, net in sorted({(r["dataset"], r["net"]) for r in rows}):
        group = [r for r in rows if (r["dataset"], r["net"]) == (ds, net)]
        lines += [
            f"## {ds}, {net} ({group[0]['steps']} steps per run)",
            "",
            "| variant | seeds | Dice (mean ± std over seeds) | Dice at half budget | Δ vs org by seed "
            "(mean ± std) | Wilcoxon p vs org, cases ↑/↓ | channels off: init → end |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in group:
            test = r["wilcoxon_vs_org"]
            p = f"{test['p']:.2g} ({test['wins']}↑/{test['losses']}↓)" if test else "–"
            per_seed = ", ".join(_f(d, sign=True) for d in r["delta_vs_org_by_seed"].values())
            delta = (
                f"{_f(r['delta_vs_org'][0], sign=True)} ± {_f(r['delta_vs_org'][1])} ({per_seed})" if per_seed else "–"
            )
            off = "–" if math.isnan(r["pct_off_init"]) else f"{r['pct_off_init']:.0f} % → {r['pct_off_end']:.0f} %"
            lines.append(
                f"| {r['variant']} | {len(r['seeds'])} | {_f(r['dice'][0])} ± {_f(r['dice'][1])} | "
                f"{_f(r['dice_half_budget'])} | {delta} | {p} | {off} |"
            )
        lines += [""]
    lines += [
        "## Dice against what the skips cost",
        "",
        "| data | net | variant | Dice | skip KiB per patch | vs org | params | vs org |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        org = next((o for o in rows if (o["dataset"], o["net"], o["variant"]) == (r["dataset"], r["net"], "org")), None)
        kib = r["skip_bytes_per_patch"] / 1024 if r["skip_bytes_per_patch"] else math.nan
        mem_ratio = (
            r["skip_bytes_per_patch"] / org["skip_bytes_per_patch"] if org and org["skip_bytes_per_patch"] else math.nan
        )
        par_ratio = r["params"] / org["params"] if org else math.nan
        lines.append(
            f"| {r['dataset']} | {r['net']} | {r['variant']} | {_f(r['dice'][0])} | {_f(kib, 1)} | "
            f"{_f(mem_ratio, 2)}× | {r['params']:,} | {_f(par_ratio, 3)}× |"
        )
    lines += ["", "Variants: " + "; ".join(f"`{v.name}`: {v.about}" for v in VARIANTS.values()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu-conv")
    parser.add_argument("--results", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    out = Path(args.results) / args.profile
    runs, _ = load_runs(out / "runs")
    rows = study_rows(runs)
    atomic_write_text(out / "study.md", study_markdown(rows, f"Convergence study, profile `{args.profile}`"))
    write_json(out / "study.json", rows)
    print((out / "study.md").read_text("utf-8"))


if __name__ == "__main__":
    main()
