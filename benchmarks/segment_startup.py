"""Whole-process time and peak RSS of ``satseg segment`` on one scan with a warm export cache, before and after.

Each variant is a fresh ``python -m satseg segment SCAN -o OUT --overwrite --json`` process, run with
``PYTHONPATH`` set to the source tree it measures, timed from start to exit with ``os.wait4`` (wall time, user +
sys CPU time, peak RSS ``ru_maxrss``); ``--json``'s timings give the in-process phases. Variants run
interleaved, round by round, after one untimed run each that warms the export cache (and the OS's file cache).
One extra run per variant under ``python -X importtime`` records where the imports go.

Bytecode caching is on (``PYTHONDONTWRITEBYTECODE`` is dropped): a user's installed package has its ``.pyc``
files; without them every run recompiles satseg's modules (~0.1 s more; the results of 2026-12-04 02:06 were
taken so).

On a busy machine the wall time grows with the load; the CPU time (user + sys) is what an idle machine's wall
time comes near for this mostly single-threaded process (ONNX Runtime's own threads can make it exceed the
wall time). The load average is recorded before and after every round.

    git worktree add --detach /tmp/before <commit before the change>
    python benchmarks/segment_startup.py --scan imagesTr/hippocampus_003.nii.gz --before /tmp/before \\
        --rounds 5 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from satseg.atomic import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "benchmarks"))

from runner import git_commit  # noqa: E402

TARGET_S = 1.0  # issue 26: one hippocampus case, whole process, warm cache, idle machine


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_once(tree: Path, args: list[str], env: dict[str, str], importtime: bool = False) -> dict:
    """One ``segment`` process: wall and CPU seconds, peak RSS, its JSON timings (or its import times)."""
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "satseg", "segment", *args]
    env = {**env, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=tree)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"segment failed in {tree} ({process.returncode}): {stderr[-2000:]}")
    if importtime:
        return {"imports": top_imports(stderr)}
    result = json.loads(stdout)["results"][0]
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "backend": result["backend"],
        "timings": result["timings"],
    }


def top_imports(stderr: str, count: int = 12) -> dict[str, float]:
    """Cumulative seconds of the modules ``-X importtime`` lists, for the ``count`` largest of its first two levels,
    and ``torch_imported``/``onnx_imported`` flags."""
    rows = []
    names = set()
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        names.add(name.strip())
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        if depth <= 1:
            rows.append((int(cumulative) / 1e6, name.strip()))
    top = {name: round(seconds, 3) for seconds, name in sorted(rows, reverse=True)[:count]}
    top["torch_imported"] = float("torch" in names)
    top["onnx_imported"] = float("onnx" in names)
    return top


def summary(runs: list[dict]) -> dict:
    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 3)

    phases = {k: round(statistics.median(r["timings"][k] for r in runs), 3) for k in runs[0]["timings"]}
    return {
        "wall_s": median("wall_s"),
        "wall_min_s": min(r["wall_s"] for r in runs),
        "cpu_s": median("cpu_s"),
        "cpu_min_s": min(r["cpu_s"] for r in runs),
        "peak_rss_mib": median("peak_rss_mib"),
        "backend": runs[0]["backend"],
        "phases_s": phases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", type=Path, required=True, help="one scan, e.g. MSD hippocampus_003.nii.gz")
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the commit before the change")
    parser.add_argument("--after", type=Path, default=HERE, help="the tree after it (default: this one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=None, help="SATSEG_CACHE (default: a fresh temporary one)")
    parser.add_argument("--out", type=Path, default=HERE / "benchmarks" / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="segment-startup-") as tmp:  # outputs and the default cache
        results = measure(args, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "segment-startup.json", results)
    atomic_write_text(args.out / "segment-startup.md", report(results))
    print(report(results))


def measure(args: argparse.Namespace, work: Path) -> dict:
    """The interleaved rounds of every variant; ``work`` holds the masks written and the default cache."""
    scan = args.scan.resolve()
    cache = (args.cache or work / "cache").resolve()
    # Without PYTHONDONTWRITEBYTECODE: an installed package has its bytecode cached (pip compiles at install; an
    # editable one caches on the first import, the untimed warm-up here), so a user's process does not recompile.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"SATSEG_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    variants = {
        "before (default: cached ONNX export)": (args.before.resolve(), []),
        "after (default: cached ONNX export)": (args.after.resolve(), []),
        "after, --backend torch": (args.after.resolve(), ["--backend", "torch"]),
    }
    for tree, extra in variants.values():  # warm the cache and the file cache; not timed
        run_once(tree, [str(scan), "-o", str(work / "warm.nii.gz"), "--overwrite", "--json", *extra], env)
    imports = {
        name: run_once(tree, [str(scan), "-o", str(work / "i.nii.gz"), "--overwrite", *extra], env, importtime=True)
        for name, (tree, extra) in variants.items()
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    loads = []
    for round_ in range(args.rounds):
        before_load = load()
        for name, (tree, extra) in variants.items():
            out = work / f"{round_}.nii.gz"
            runs[name].append(run_once(tree, [str(scan), "-o", str(out), "--overwrite", "--json", *extra], env))
            print(f"round {round_ + 1}: {name}: {runs[name][-1]['wall_s']:.2f} s wall", flush=True)
        loads.append({"before": before_load, "after": load()})
    return {
        "scan": str(scan),
        "commits": {name: git_commit(tree) for name, (tree, _) in variants.items()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "env": {"OMP_NUM_THREADS": "1", "bytecode_cache": True},
        "rounds": args.rounds,
        "loads": loads,
        "target_s": TARGET_S,
        "summary": {name: summary(r) for name, r in runs.items()},
        "imports": {name: i["imports"] for name, i in imports.items()},
        "runs": runs,
    }


def report(results: dict) -> str:
    loads = results["loads"]
    bytecode = ", bytecode cache on (as installed)" if results.get("env", {}).get("bytecode_cache") else ""
    lines = [
        f"# `satseg segment` start-up: one scan, whole process, warm export cache ({Path(results['scan']).name})",
        "",
        f"{results['date']}; {results['rounds']} rounds, variants interleaved; {results['cpus']} CPUs, "
        f"OMP_NUM_THREADS=1{bytecode}; load average (1, 5, 15 min) before the first round {loads[0]['before']}, "
        f"after the last {loads[-1]['after']}.",
        "Commits: " + "; ".join(f"{name}: {c}" for name, c in results["commits"].items()) + ".",
        "",
        "| variant | backend | wall s (median) | wall s (min) | CPU s (median) | CPU s (min) | peak RSS MiB | "
        "in-process s | torch imported |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in results["summary"].items():
        torch_imported = "yes" if results["imports"][name].get("torch_imported") else "no"
        lines.append(
            f"| {name} | {s['backend']} | {s['wall_s']:.2f} | {s['wall_min_s']:.2f} | {s['cpu_s']:.2f} | "
            f"{s['cpu_min_s']:.2f} | {s['peak_rss_mib']:.0f} | {s['phases_s'].get('total_s', 0):.2f} | "
            f"{torch_imported} |"
        )
    lines += ["", f"Target (issue 26): ≤ {results['target_s']:.1f} s whole process on an idle machine.", ""]
    lines += ["In-process phases (median s, from `--json`):", ""]
    for name, s in results["summary"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in s["phases_s"].items()))
    lines += ["", "Largest imports (cumulative s, one `-X importtime` run each; first two levels):", ""]
    for name, imports in results["imports"].items():
        shown = {k: v for k, v in imports.items() if not k.endswith("_imported")}
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in list(shown.items())[:8]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
