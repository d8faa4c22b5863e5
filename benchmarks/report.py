"""Aggregate finished benchmark runs into ``tables.md`` and ``summary.json`` (and the figures).

Statistics:

* **Over cases** (the paper's ``mean ± std``): each test case's metric is first averaged over the seeds,
  then mean ± std (sample std, ddof=1) are taken over the test cases.
* **Over seeds**: each seed's mean over the test cases, then mean ± std over the seeds.
* **Paired test**: two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences
  dropped) of a gate's seed-averaged per-case Dice against ``org``'s on the same cases.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from profiles import SKIPS, TABLE3_NETS, Profile
from runner import git_commit, machine_info, write_json
from scipy.stats import wilcoxon

from satseg.atomic import atomic_write_text
from satseg.nn import build_model

__all__ = ["load_runs", "aggregate", "write_report", "PAPER"]

NET_NAMES = {"unet": "U-Net", "vnet": "V-Net", "tiramisu": "Tiramisu"}
DATA_NAMES = {"hippocampus": "Hippocampus MRI (3D)", "ph2": "PH2 skin (2D)"}

PAPER = {
    "table1": {  # Dice of the paper's Table 1 (prostate MRI / ISIC skin), for reference only
        ("MRI", "unet"): {"org": 0.87, "at": 0.88, "st": 0.88, "sat": 0.88},
        ("MRI", "vnet"): {"org": 0.85, "at": 0.86, "st": 0.86, "sat": 0.87},
        ("Skin", "unet"): {"org": 0.79, "at": 0.79, "st": 0.79, "sat": 0.81},
        ("Skin", "vnet"): {"org": 0.81, "at": 0.82, "st": 0.82, "sat": 0.83},
    },
    "table2": {("MRI", "tiramisu"): {"org": 0.79, "sat": 0.82}, ("Skin", "tiramisu"): {"org": 0.79, "sat": 0.81}},
    "channels_off_pct": {("MRI", "unet"): 55.7, ("Skin", "unet"): 66.7, ("MRI", "vnet"): 57.0, ("Skin", "vnet"): 54.5},
    "table3_reduction_pct": {
        "U-Net": (30.2, 30.6),
        "V-Net": (7.3, 8.02),
        "Tiramisu": (20.7, 20.7),
        "DI2IN": (12.3, None),  # liver CT
    },
}
PAPER_DATA = {"hippocampus": "MRI", "ph2": "Skin"}


def load_runs(runs_dir: Path) -> tuple[list[dict], dict[tuple[str, str], dict]]:
    """Training runs and timing measurements found in ``runs_dir``."""
    runs, timing = [], {}
    for path in sorted(runs_dir.glob("*.json")):
        data = json.loads(path.read_text())
        if path.stem.endswith("-timing"):
            timing[(data["dataset"], data["net"])] = data
        else:
            runs.append(data)
    return runs, timing


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _fmt(pair: tuple[float, float], digits: int = 3) -> str:
    m, s = pair
    return "–" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def aggregate(runs: list[dict]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Per (dataset, net, skip): seed-averaged per-case metrics, over-case and over-seed statistics."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["dataset"], run["net"], run.get("variant", run["skip"]))].append(run)
    out = {}
    for key, group in groups.items():
        group.sort(key=lambda r: r["seed"])
        cases = sorted(set.intersection(*(set(c["case"] for c in r["cases"]) for r in group)))
        per_case = {m: {} for m in ("dice", "fpr", "fnr")}
        for m in per_case:
            for case in cases:
                values = [next(c[m] for c in r["cases"] if c["case"] == case) for r in group]
                per_case[m][case] = float(np.nanmean(values))
        seed_means = {m: [float(np.nanmean([c[m] for c in r["cases"]])) for r in group] for m in ("dice", "fpr", "fnr")}
        gates = defaultdict(list)
        for r in group:
            for g in r["gates"]:
                gates[g["skip"]].append(100.0 * g["fraction_off"])
        out[key] = {
            "seeds": [r["seed"] for r in group],
            "cases": cases,
            "per_case": per_case,
            "over_cases": {m: _mean_std(per_case[m].values()) for m in per_case},
            "over_seeds": {m: _mean_std(v) for m, v in seed_means.items()},
            "seed_means": seed_means,
            "skip_channels": group[0]["skip_channels"],
            "params": group[0]["params"],
            "steps": group[0]["steps_done"],
            "train_seconds": _mean_std([r["train_seconds"] for r in group]),
            "step_seconds": _mean_std([r["step_seconds_mean"] for r in group]),
            "pct_off_per_gate": {g: _mean_std(v) for g, v in gates.items()},
            "pct_off_all": _mean_std([100.0 * g["fraction_off"] for r in group for g in r["gates"]]),
            "selection_range": (
                min((min(g["selection"]) for r in group for g in r["gates"] if g.get("selection")), default=math.nan),
                max((max(g["selection"]) for r in group for g in r["gates"] if g.get("selection")), default=math.nan),
            ),
            "pct_off_per_run": [
                float(np.mean([100.0 * g["fraction_off"] for g in r["gates"]])) for r in group if r["gates"]
            ],
            "wall_seconds": sum(r["wall_seconds"] for r in group),
        }
    return out


def paired_test(agg: dict, ds: str, net: str, skip: str, base: str = "org") -> dict[str, Any] | None:
    """Wilcoxon signed-rank test of ``skip`` vs ``base`` on seed-averaged per-case Dice."""
    a, b = agg.get((ds, net, skip)), agg.get((ds, net, base))
    if a is None or b is None:
        return None
    cases = sorted(set(a["per_case"]["dice"]) & set(b["per_case"]["dice"]))
    x = np.array([a["per_case"]["dice"][c] for c in cases])
    y = np.array([b["per_case"]["dice"][c] for c in cases])
    diff = x - y
    if np.allclose(diff, 0):
        return {"n": len(cases), "delta": 0.0, "p": 1.0, "wins": 0, "losses": 0}
    stat = wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    return {
        "n": len(cases),
        "delta": float(diff.mean()),
        "p": float(stat.pvalue),
        "wins": int((diff > 0).sum()),
        "losses": int((diff < 0).sum()),
    }


def _channels_text(skip: str, entry: dict) -> str:
    chans = "/".join(str(c) for c in entry["skip_channels"])
    if skip in ("org", "st"):
        return f"N = {chans}" if len(chans) < 24 else f"N ({len(entry['skip_channels'])} skips)"
    return f"1 × {len(entry['skip_channels'])} skips"


def _p_text(test: dict | None) -> str:
    if test is None:
        return "–"
    return f"{test['delta']:+.3f} (p = {test['p']:.3g}, {test['wins']}↑/{test['losses']}↓)"


def accuracy_table(agg: dict, datasets: list[str], nets: list[str], skips: tuple[str, ...]) -> list[str]:
    lines = [
        "| Data | Model | Method | #C transferred | Dice | FPR | FNR | Dice over seeds | seeds | "
        "ΔDice vs ORG (Wilcoxon p, cases ↑/↓) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds in datasets:
        for net in nets:
            for skip in skips:
                e = agg.get((ds, net, skip))
                if e is None:
                    continue
                oc, os_ = e["over_cases"], e["over_seeds"]
                test = None if skip == "org" else paired_test(agg, ds, net, skip)
                lines.append(
                    f"| {DATA_NAMES[ds]} | {NET_NAMES[net]} | {skip.upper()} | {_channels_text(skip, e)} | "
                    f"{_fmt(oc['dice'])} | {_fmt(oc['fpr'], 4)} | {_fmt(oc['fnr'])} | {_fmt(os_['dice'])} | "
                    f"{len(e['seeds'])} | {_p_text(test)} |"
                )
    return lines


def channels_off_table(agg: dict, datasets: list[str]) -> list[str]:
    lines = [
        "| Data | Model | Gate | % off per skip (mean ± std over seeds) | % off, all skips | trelu(W) min–max "
        "(init 0.5) | paper % off |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds in datasets:
        for net in ("unet", "vnet", "tiramisu"):
            for skip in ("st", "sat"):
                e = agg.get((ds, net, skip))
                if e is None or not e["pct_off_per_gate"]:
                    continue
                per = ", ".join(f"{m:.0f} ± {s:.0f}" for m, s in e["pct_off_per_gate"].values())
                if len(e["pct_off_per_gate"]) > 6:
                    per = f"{len(e['pct_off_per_gate'])} gates; range of means " + (
                        f"{min(m for m, _ in e['pct_off_per_gate'].values()):.0f}–"
                        f"{max(m for m, _ in e['pct_off_per_gate'].values()):.0f}"
                    )
                paper = PAPER["channels_off_pct"].get((PAPER_DATA[ds], net))
                lines.append(
                    f"| {DATA_NAMES[ds]} | {NET_NAMES[net]} | {skip.upper()} | {per} | "
                    f"{_fmt(e['pct_off_all'], 1)} | {e['selection_range'][0]:.3f}–{e['selection_range'][1]:.3f} | "
                    f"{'–' if paper is None else f'{paper}'} |"
                )
    return lines


def table3_rows() -> list[dict[str, Any]]:
    """Parameters of ORG and SAT at satseg's paper-like default widths (3D: 1 → 2 classes; 2D: RGB → 2)."""
    rows = []
    for name, (net3, net2, options) in TABLE3_NETS.items():
        for dims, net, cin in ((3, net3, 1), (2, net2, 3)):
            org = sum(p.numel() for p in build_model(net, "org", cin, 2, **options).parameters())
            sat = sum(p.numel() for p in build_model(net, "sat", cin, 2, **options).parameters())
            rows.append({"net": name, "model": net, "dims": dims, "org": org, "sat": sat,
                         "reduction_pct": 100.0 * (org - sat) / org})  # fmt: skip
    return rows


def table3(rows: list[dict], timing: dict) -> list[str]:
    lines = [
        "| Network | Model | Original (ORG) | Proposed (SAT) | Reduction | paper reduction (MRI / skin) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = PAPER["table3_reduction_pct"][r["net"]]
        ptxt = " / ".join("–" if p is None else f"{p} %" for p in paper)
        lines.append(
            f"| {r['net']} | `{r['model']}` (default widths) | {r['org']:,} | {r['sat']:,} | "
            f"{r['reduction_pct']:.1f} % | {ptxt} |"
        )
    for (ds, net), t in sorted(timing.items()):
        v = t["variants"]
        if "org" in v and "sat" in v:
            org, sat = v["org"]["params"], v["sat"]["params"]
            lines.append(
                f"| {NET_NAMES[net]} | `{t['model']}` as trained here ({ds}) | {org:,} | {sat:,} | "
                f"{100 * (org - sat) / org:.1f} % | |"
            )
    return lines


def timing_table(timing: dict, agg: dict) -> list[str]:
    lines = [
        "| Data | Model | Gate | params | skip ch. | skip MB / patch | fwd GFLOP / patch | train step ms "
        "(side by side) | train peak MB | inference ms / case | train step ms (in the training runs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (ds, net), t in sorted(timing.items()):
        for skip, v in t["variants"].items():
            e = agg.get((ds, net, skip))
            in_runs = "–" if e is None else _fmt(tuple(1000 * x for x in e["step_seconds"]), 0)
            lines.append(
                f"| {ds} | {NET_NAMES[net]} | {skip.upper()} | {v['params']:,} | "
                f"{'/'.join(map(str, v['skip_channels']))[:20]} | {v['skip_bytes_per_patch'] / 2**20:.2f} | "
                f"{v['forward_flops_per_patch'] / 1e9:.2f} | {1000 * v['train_step_s_median']:.0f} | "
                f"{v['train_peak_bytes'] / 2**20:.1f} | {1000 * v['inference_s_per_case_median']:.0f} | {in_runs} |"
            )
    return lines


def seeds_table(agg: dict, datasets: list[str]) -> list[str]:
    lines = ["| Data | Model | Gate | Dice per seed (mean over cases) |", "|---|---|---|---|"]
    for ds in datasets:
        for net in ("unet", "vnet", "tiramisu"):
            for skip in SKIPS:
                e = agg.get((ds, net, skip))
                if e is None:
                    continue
                per = ", ".join(f"s{s}: {d:.3f}" for s, d in zip(e["seeds"], e["seed_means"]["dice"], strict=True))
                lines.append(f"| {ds} | {NET_NAMES[net]} | {skip.upper()} | {per} |")
    return lines


def claims(agg: dict, datasets: list[str], timing: dict, t3: list[dict]) -> list[dict[str, Any]]:
    """Each of the paper's claims checked against this run, with the numbers behind the verdict."""
    out = []
    for ds in datasets:
        for net in ("unet", "vnet", "tiramisu"):
            test = paired_test(agg, ds, net, "sat")
            if test is None:
                continue
            sig = test["p"] < 0.05
            verdict = (
                "SAT better (significant)"
                if sig and test["delta"] > 0
                else "SAT worse (significant)"
                if sig
                else "no significant difference"
            )
            org_std = agg[(ds, net, "org")]["over_cases"]["dice"][1]
            sat_std = agg[(ds, net, "sat")]["over_cases"]["dice"][1]
            at = paired_test(agg, ds, net, "at", base="sat")
            out.append({
                "dataset": ds, "net": net, "sat_minus_org_dice": test["delta"], "p": test["p"],
                "verdict": verdict, "org_std": org_std, "sat_std": sat_std, "at_minus_sat_dice": None if at is None
                else at["delta"], "at_vs_sat_p": None if at is None else at["p"],
            })  # fmt: skip
    return out


def claims_table(rows: list[dict]) -> list[str]:
    lines = [
        "| Data | Model | SAT − ORG Dice | p (Wilcoxon) | verdict | std over cases ORG → SAT | AT − SAT Dice (p) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        at = "–" if r["at_minus_sat_dice"] is None else f"{r['at_minus_sat_dice']:+.3f} (p = {r['at_vs_sat_p']:.3g})"
        lines.append(
            f"| {r['dataset']} | {NET_NAMES[r['net']]} | {r['sat_minus_org_dice']:+.3f} | {r['p']:.3g} | "
            f"{r['verdict']} | {r['org_std']:.3f} → {r['sat_std']:.3f} | {at} |"
        )
    return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else "|".join(map(str, k))): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_report(profile: Profile, out: Path, cache: Path, root: Path) -> None:
    """Write ``tables.md``, ``summary.json`` and the figures for the finished runs under ``out/runs``."""
    started = time.perf_counter()
    runs, timing = load_runs(out / "runs")
    agg = aggregate(runs)
    datasets = [d for d in profile.datasets if any(r["dataset"] == d for r in runs)]
    t3 = table3_rows()
    claim_rows = claims(agg, datasets, timing, t3)
    suite_seconds = sum(r["wall_seconds"] for r in runs) + sum(t["wall_seconds"] for t in timing.values())
    commits = sorted({r["commit"] for r in runs} | {t["commit"] for t in timing.values()})
    machine = runs[0]["machine"] if runs else machine_info()
    planned = {ds: b["epochs"] * b["iters_per_epoch"] for ds, b in profile.train.items()}
    short = [f"{r['dataset']}-{r['net']}-{r['skip']}-s{r['seed']} ({r['steps_done']} steps)" for r in runs
             if r["steps_done"] < planned.get(r["dataset"], 0)]  # fmt: skip
    budget_line = (
        "every run completed its planned steps (" + ", ".join(f"{ds}: {n}" for ds, n in planned.items()) + ")"
        if not short
        else "stopped early by `max_minutes`: " + ", ".join(short)
    )
    figures: list[str] = []
    try:
        from figures import make_figures

        figures = make_figures(profile, out, cache)
    except Exception as err:  # figures need the cached checkpoints; the tables do not
        figures = [f"(figures not made: {type(err).__name__}: {err})"]

    md = [
        f"# SAT paper reproduction — profile `{profile.name}`",
        "",
        f"- Machine: {machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']} "
        f"({machine['torch_threads']} thread(s)), CUDA: {machine.get('cuda') or 'none'}",
        f"- Commit(s) of the runs: {', '.join(commits)}; report made at {git_commit(root)}",
        f"- Wall time of the suite: {suite_seconds / 60:.1f} min of training, scoring and timing "
        f"({len(runs)} training runs, {len(timing)} timing sets)",
        "- Test split: fold 0 of `splits.json` (`--folds 5 --seed 0`), never seen in training "
        "(no validation, the last checkpoint is scored); scored on each case's original grid against its "
        "original label file. Hippocampus: mean over the two classes (anterior, posterior) per case.",
        f"- Budget per run (same for every gate): {json.dumps(profile.train)}; {budget_line}",
        *[f"- {n}" for n in profile.notes],
        "",
        "Mean ± std **over test cases** (each case averaged over seeds first), as in the paper; "
        "'Dice over seeds' is mean ± std of the per-seed means. ΔDice: mean paired difference to ORG, "
        "two-sided Wilcoxon signed-rank p over cases, and the number of cases that got better/worse.",
        "",
        "## Table 1 — U-Net and V-Net × ORG, AT, ST, SAT",
        "",
        *accuracy_table(agg, datasets, ["unet", "vnet"], SKIPS),
        "",
        "Paper (prostate MRI / ISIC skin, Dice): "
        + "; ".join(
            f"{d} {NET_NAMES[n]} " + ", ".join(f"{k.upper()} {v}" for k, v in row.items())
            for (d, n), row in PAPER["table1"].items()
        ),
        "",
        "## Table 2 — Tiramisu ORG vs SAT",
        "",
        *accuracy_table(agg, datasets, ["tiramisu"], ("org", "sat")),
        "",
        "Paper: MRI ORG 0.79 → SAT 0.82; skin ORG 0.79 → SAT 0.81.",
        "",
        "## Table 3 — parameters before/after",
        "",
        *table3(t3, timing),
        "",
        "## Channels switched off by the selection (trelu(W) = 0)",
        "",
        *channels_off_table(agg, datasets),
        "",
        "## The paper's claims on this data",
        "",
        *claims_table(claim_rows),
        "",
        "## Dice per seed",
        "",
        *seeds_table(agg, datasets),
        "",
        "## Time and memory, measured side by side",
        "",
        "Untrained models of each net built with every gate in one process; each round times one training "
        "step (batch and patch of the profile) of every variant in turn, then sliding-window inference of "
        "3 test cases. Medians over the rounds. " + (next(iter(timing.values()))["memory_method"] if timing else ""),
        "",
        *timing_table(timing, agg),
        "",
        "## Figures",
        "",
        *[f"- {f}" for f in figures],
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tables.md", "\n".join(md))
    summary = {
        "profile": profile.name,
        "machine": machine,
        "commits": commits,
        "report_commit": git_commit(root),
        "suite_wall_seconds": suite_seconds,
        "report_seconds": round(time.perf_counter() - started, 1),
        "train_budget": profile.train,
        "runs_stopped_early": short,
        "results": {
            "|".join(k): {kk: vv for kk, vv in v.items() if kk not in ("per_case", "cases")} for k, v in agg.items()
        },
        "paired_tests": {
            f"{ds}|{net}|{skip}": paired_test(agg, ds, net, skip)
            for (ds, net, skip) in agg
            if skip != "org" and paired_test(agg, ds, net, skip) is not None
        },
        "claims": claim_rows,
        "table3": t3,
        "timing": {f"{ds}|{net}": t["variants"] for (ds, net), t in timing.items()},
        "figures": figures,
    }
    write_json(out / "summary.json", _jsonable(summary))
