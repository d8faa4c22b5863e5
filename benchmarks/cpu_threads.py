"""Training beside other busy processes: OpenMP's wait policy, side by side, on an idle and a loaded CPU.

torch runs its CPU kernels on libgomp's thread pool, one thread per core. Between two parallel regions a
waiting thread spins (libgomp's default: up to 300,000 polls) before it sleeps. Alone on the machine that
saves a wake-up per region; beside another busy process the spinning threads take the cores the working
thread needs, and a step of many small kernels (the demo's 3D U-Net) can slow by several times.
``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep at once; ``GOMP_SPINCOUNT=10000`` spins 30 times less.

Each variant is a fresh process (libgomp reads its settings when torch loads it) that trains the demo's
network (``satseg.demo.DemoSettings``: U-Net 3D, ``sat``, 32³ patches, batch 2) for ``--steps`` steps after one
untimed step, beside 0, 1 or 2 background processes that spin a Python loop (the "other work" on the
machine). Variants and loads run interleaved, round by round. Every process hashes its final weights: a
wait policy that changed a bit of the result would show there (one thread, as a reference, does change bits:
its reductions split differently).

    python benchmarks/cpu_threads.py --rounds 3 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from satseg.device import OPENMP_WAIT_SETTINGS

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "benchmarks"))

VARIANTS: dict[str, dict[str, str]] = {
    "spin (libgomp default)": {},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one thread": {"OMP_NUM_THREADS": "1"},
}
"""Environment each training process gets on top of the benchmark's own (OpenMP settings removed)."""

OPENMP_VARIABLES = (*OPENMP_WAIT_SETTINGS, "OMP_NUM_THREADS", "OMP_DISPLAY_ENV")


def _without_openmp_settings() -> dict[str, str]:
    """This process's environment less every OpenMP setting, to which each variant adds its own."""
    return {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES}


def cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def worker(steps: int) -> dict:
    """Train the demo's network ``steps`` steps (after one untimed); seconds per step and a hash of the weights."""
    import torch

    from satseg.demo import DemoSettings
    from satseg.nn import build_model
    from satseg.training.losses import deep_supervision_loss

    demo = DemoSettings()
    torch.manual_seed(0)
    model = build_model("unet3d", "sat", 1, 3, features=list(demo.features))
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.95, eps=1e-8)
    generator = torch.Generator().manual_seed(1)

    def step() -> None:
        x = torch.randn(demo.batch, 1, *demo.patch, generator=generator)
        y = torch.randint(0, 3, (demo.batch, *demo.patch), generator=generator)
        loss = deep_supervision_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    digest = hashlib.sha256()
    for value in model.state_dict().values():
        digest.update(value.detach().contiguous().numpy().tobytes())
    return {"step_s": round(seconds, 4), "threads": torch.get_num_threads(), "weights": digest.hexdigest()[:16]}


def run_variant(extra: dict[str, str], steps: int) -> dict:
    env = _without_openmp_settings() | extra
    done = subprocess.run(
        [sys.executable, __file__, "--worker", str(steps)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"worker failed ({extra}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spinners(count: int) -> list[subprocess.Popen]:
    """``count`` processes that keep one core busy each (pure Python: no OpenMP of their own)."""
    env = _without_openmp_settings()
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], env=env) for _ in range(count)]


def measure(rounds: int, steps: int, loads: list[int]) -> dict:
    runs: dict[str, dict[int, list[dict]]] = {name: {k: [] for k in loads} for name in VARIANTS}
    load_average = []
    for round_ in range(rounds):
        for busy in loads:
            background = spinners(busy)
            try:
                time.sleep(0.5 if busy else 0)
                before = [round(x, 2) for x in os.getloadavg()]
                for name, extra in VARIANTS.items():
                    result = run_variant(extra, steps)
                    runs[name][busy].append(result)
                    print(f"round {round_ + 1}, {busy} busy: {name}: {result['step_s']:.3f} s/step", flush=True)
                load_average.append({"round": round_, "busy": busy, "before": before})
            finally:
                for process in background:
                    process.kill()
                    process.wait()
    return {"runs": runs, "loads": load_average}


def summarise(runs: dict[str, dict[int, list[dict]]]) -> dict:
    reference = "spin (libgomp default)"
    table = {}
    for name, by_load in runs.items():
        table[name] = {}
        for busy, rows in by_load.items():
            median = statistics.median(r["step_s"] for r in rows)
            base = statistics.median(r["step_s"] for r in runs[reference][busy])
            idle = statistics.median(r["step_s"] for r in runs[reference][min(by_load)])
            table[name][busy] = {
                "step_s": round(median, 4),
                "min_step_s": min(r["step_s"] for r in rows),
                "vs_default_same_load": round(median / base, 3),
                "vs_default_idle": round(median / idle, 3),
                "threads": rows[0]["threads"],
                "weights": sorted({r["weights"] for r in rows}),
            }
    return table


def report(results: dict) -> str:
    loads = results["busy_processes"]
    lines = [
        "# Training beside busy processes: OpenMP wait policy (`benchmarks/cpu_threads.py`)",
        "",
        f"{results['date']}; commit {results['commit']}; {results['cpu']}, {results['cpus']} CPUs; "
        f"torch {results['torch']}; {results['rounds']} rounds, variants and loads interleaved; "
        f"{results['steps']} timed steps per process (the demo's network: U-Net 3D `sat`, 32³ patches, batch 2).",
        f"Load average before each set: {', '.join(str(x['before'][0]) for x in results['loads'])}.",
        "",
        "Seconds per training step (median over rounds) and, in brackets, the ratio to the default at the same "
        "load; `busy` = background processes spinning a Python loop.",
        "",
        "| variant | threads | " + " | ".join(f"{k} busy" for k in loads) + " | weights |",
        "|---|---:|" + "---:|" * len(loads) + "---|",
    ]
    for name, by_load in results["summary"].items():
        first = by_load[loads[0]]
        cells = [f"{by_load[k]['step_s']:.3f} ({by_load[k]['vs_default_same_load']:.2f}x)" for k in loads]
        weights = sorted({w for k in loads for w in by_load[k]["weights"]})
        lines.append(f"| {name} | {first['threads']} | " + " | ".join(cells) + f" | {', '.join(weights)} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per process")
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="background busy processes")
    parser.add_argument("--out", type=Path, default=HERE / "benchmarks" / "results")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker)))
        return

    import torch
    from cpu_roofline import cpu_flags
    from runner import git_commit

    from satseg.atomic import atomic_write_json, atomic_write_text

    measured = measure(args.rounds, args.steps, sorted(args.busy))
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(HERE),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "steps": args.steps,
        "busy_processes": sorted(args.busy),
        "loads": measured["loads"],
        "summary": summarise(measured["runs"]),
        "runs": measured["runs"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "cpu-threads.json", results)
    atomic_write_text(args.out / "cpu-threads.md", report(results))
    print(report(results))


if __name__ == "__main__":
    main()
