"""The figures of a shipped model's card: the shipped `sat` run and its `org` companion side by side.

For each run (trained identically but for the gate) this scores the fold's validation cases on their
original grids (``satseg evaluate``'s code), and measures what a user pays at inference on the CPU: the
whole ``satseg segment`` process on a few validation scans (fresh process each, one thread: wall seconds
and peak RSS from the kernel), and per training patch the parameters, the bytes the skips hand to the
decoder and the forward's peak tensor memory (``satseg params``'s code).

    python benchmarks/shipped_models.py --name hippocampus-unet3d-sat --data hippo_pp \\
        --run sat=/work/r22/runs/hippo-sat-w8 --run org=/work/r22/runs/hippo-org-w8

Results: ``benchmarks/results/shipped/<name>.json`` and ``<name>.md`` (the card's table). With
``--ship-to models/<name>`` the `sat` run's final weights (``checkpoint_last.pt``: the end of the poly schedule,
not an epoch picked on the validation cases) are written there as ``checkpoint.pt``, without the optimizer state
and with the training machine's data path replaced by ``(training machine)``.
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
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from satseg.atomic import atomic_write_json, atomic_write_text  # noqa: E402


def score(run: Path, data: Path, out: Path) -> dict[str, Any]:
    """Validation figures of ``run`` (per class: mean and std over cases of every metric)."""
    from satseg.evaluation.model import evaluate_model

    report, gates = evaluate_model(run, data, out, split="val", device="cpu", save_predictions=False)
    summary = report.summary
    return {"summary": summary, "gates": gates}


def segment_cost(run: Path, scans: list[str], threads: int = 1) -> dict[str, Any]:
    """Whole ``satseg segment`` processes, one per scan: wall seconds and peak RSS (MiB) of each."""
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        for i, scan in enumerate(scans):
            target = Path(tmp) / f"{i}{''.join(Path(scan).suffixes)}"
            cmd = [sys.executable, "-m", "satseg", "segment", scan, "--model", str(run), "-o", str(target),
                   "--device", "cpu", "--json"]  # fmt: skip
            started = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (kilobytes on Linux)
            wall = time.perf_counter() - started
            stdout = proc.stdout.read()
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"segment failed on {scan}: {proc.stderr.read()[-2000:]}")
            rows.append({"scan": scan, "wall_seconds": round(wall, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
                         "result": json.loads(stdout)["results"][0]})  # fmt: skip
    walls = sorted(r["wall_seconds"] for r in rows)
    return {"cases": rows, "median_wall_seconds": walls[len(walls) // 2],
            "max_peak_rss_mib": max(r["peak_rss_mib"] for r in rows)}  # fmt: skip


def architecture(run: Path) -> dict[str, Any]:
    """Parameters, skip bytes and forward peak tensor memory of the run's network on its training patch."""
    from satseg.nn.params import measure_variant
    from satseg.runs import load_run

    model, config = load_run(run)
    patch = config["train"]["patch"]
    return {"patch": patch, **measure_variant(model.float().cpu().eval(), patch)}


def ship_checkpoint(run: Path, target: Path, overwrite: bool = False) -> Path:
    """Write ``run``'s final checkpoint as a shipped model's ``target/checkpoint.pt`` (weights and config only)."""
    import torch

    from satseg.atomic import atomic_path
    from satseg.runs import load_checkpoint

    payload = load_checkpoint(run / "checkpoint_last.pt")
    config = {**payload["config"], "data_dir": "(training machine)"}
    shipped = {key: payload[key] for key in ("format", "satseg_version", "model", "epoch") if key in payload}
    from satseg.paths import check_output

    check_output(target / "checkpoint.pt", inputs=[run / "checkpoint_last.pt"], overwrite=overwrite)
    target.mkdir(parents=True, exist_ok=True)
    with atomic_path(target / "checkpoint.pt") as tmp:
        torch.save({**shipped, "config": config}, tmp)
    return target / "checkpoint.pt"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the shipped model's name (file stem of the results)")
    parser.add_argument("--data", type=Path, required=True, help="the preprocessed folder the runs trained on")
    parser.add_argument("--run", action="append", required=True, metavar="GATE=RUN", help="a run, e.g. sat=runs/x")
    parser.add_argument("--scans", type=int, default=5, help="validation scans segmented for the cost figures")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "shipped")
    parser.add_argument("--ship-to", type=Path, help="write the sat run's final weights here as checkpoint.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint.pt in --ship-to")
    args = parser.parse_args(argv)
    from runner import git_commit, machine_info

    from satseg.data.store import load_case
    from satseg.evaluation.model import split_cases

    runs = dict(item.split("=", 1) for item in args.run)
    if args.ship_to:  # refuse before the long scoring, not after it
        from satseg.paths import check_output

        check_output(args.ship_to / "checkpoint.pt", overwrite=args.overwrite)
    record: dict[str, Any] = {"name": args.name, "data": str(args.data), "commit": git_commit(HERE.parent),
                              "machine": machine_info(), "load_before": os.getloadavg(), "runs": {}}  # fmt: skip
    for gate, run in runs.items():
        run = Path(run)
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        fold = int(config["train"]["fold"])
        scans = [load_case(args.data, c)[2]["image_files"][0] for c in split_cases(args.data, "val", fold)]
        with tempfile.TemporaryDirectory() as tmp:
            validation = score(run, args.data, Path(tmp))
        record["runs"][gate] = {
            "run": str(run),
            "train": config["train"],
            "model": config["model"],
            "validation": validation,
            "segment": segment_cost(run, scans[: args.scans]),
            "architecture": architecture(run),
        }
        print(f"{gate}: {json.dumps(validation['summary'].get('classes', validation['summary']))[:300]}")
    record["load_after"] = os.getloadavg()
    atomic_write_json(args.out / f"{args.name}.json", record)
    atomic_write_text(args.out / f"{args.name}.md", card_table(record))
    print(card_table(record))
    if args.ship_to:
        print(f"wrote {ship_checkpoint(Path(runs['sat']), args.ship_to, args.overwrite)}")


def card_table(record: dict[str, Any]) -> str:
    """Markdown: Dice per class and inference cost per gate, with ratios against `org`."""
    runs = record["runs"]
    org = runs.get("org")
    lines = [f"# {record['name']}: shipped `sat` and its `org` companion", "",
             f"commit {record['commit'][:7]}; load before {_load(record['load_before'])}, after "
             f"{_load(record['load_after'])} (1, 5, 15 min)", "",
             "| gate | " + " | ".join(f"Dice {c}" for c in _classes(runs)) +
             " | params | skip KiB per patch | forward peak MiB | segment s per scan | peak RSS MiB |",
             "|---|" + "---:|" * (len(_classes(runs)) + 5)]  # fmt: skip
    for gate, r in runs.items():
        arch, seg = r["architecture"], r["segment"]
        dice = [_dice(r, c) for c in _classes(runs)]

        def ratio(value: float, key: str, part: str = "architecture", gate: str = gate) -> str:
            base = org[part][key] if org else None
            return f" ({value / base:.2f}×)" if base and gate != "org" else ""

        lines.append(
            f"| {gate} | " + " | ".join(dice) + f" | {arch['params']:,} | {arch['skip_bytes'] / 1024:,.0f}"
            f"{ratio(arch['skip_bytes'], 'skip_bytes')} | {arch['peak_memory_bytes'] / 2**20:,.1f}"
            f"{ratio(arch['peak_memory_bytes'], 'peak_memory_bytes')} | {seg['median_wall_seconds']:.2f} | "
            f"{seg['max_peak_rss_mib']:,.0f}{ratio(seg['max_peak_rss_mib'], 'max_peak_rss_mib', 'segment')} |"
        )
    lines += [
        "",
        "Dice: mean ± std over the fold's validation cases on their original grids. Segment: the whole "
        "`satseg segment` process per scan (median), one thread, a fresh process each, peak RSS from the kernel.",
        "",
    ]
    return "\n".join(lines)


def _load(load: list[float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def _classes(runs: dict[str, Any]) -> list[str]:
    first = next(iter(runs.values()))["validation"]["summary"]
    return list(first["labels"])


def _dice(run: dict[str, Any], cls: str) -> str:
    stats = run["validation"]["summary"]["classes"][cls]["dice"]
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


if __name__ == "__main__":
    main()
