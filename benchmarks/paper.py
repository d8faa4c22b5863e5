"""Reproduce the SAT paper's Tables 1-3 and Figures 5-7 on public data (MSD hippocampus, PH2 skin).

Usage (from the repository root)::

    python benchmarks/paper.py --profile cpu            # train + score every configuration (resumable)
    python benchmarks/paper.py --profile cpu --report   # tables.md, summary.json, figures

Every finished configuration writes ``<results>/<profile>/runs/<name>.json`` and is skipped on the next
run; delete a file to redo it. Paper: Taghanaki et al., arXiv:1804.05181.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from profiles import PROFILES, SKIPS, VARIANTS, Profile  # noqa: E402
from runner import git_commit, prepare_dataset, run_config, time_variants, write_json  # noqa: E402

log = logging.getLogger("bench")


def default_data_root() -> Path:
    """``../shared/data`` next to the repository (or next to the folder holding a git worktree of it)."""
    for up in (ROOT.parent, ROOT.parent.parent):
        if (up / "shared" / "data").is_dir():
            return up / "shared" / "data"
    return ROOT.parent / "shared" / "data"


def plan_jobs(
    profile: Profile,
    datasets: list[str],
    only: list[str] | None,
    skips: list[str] | None = None,
    timing: bool = True,
    seed_from: int = 0,
) -> list[tuple]:
    """Every configuration of the profile, seed-major (all variants of seed 0 first, then seed 1, …),
    so a suite stopped early still has the same seeds for every variant; with ``profile.net_major`` every
    seed of a net comes before the next net (a complete comparison per net first). Timing jobs come first.
    """
    jobs: list[tuple] = []
    for ds in datasets:
        for net_key in profile.nets[ds]:
            if only and net_key not in only:
                continue
            if timing and profile.timing:
                jobs.append(("timing", ds, net_key, profile.tiramisu_skips if net_key == "tiramisu" else SKIPS, None))
    trains: list[tuple] = []
    for seed in range(seed_from, profile.seeds):
        for ds in datasets:
            for net_key, spec in profile.nets[ds].items():
                if only and net_key not in only:
                    continue
                if seed >= (spec.seeds or profile.seeds):
                    continue
                default = profile.tiramisu_skips if net_key == "tiramisu" else profile.skips or SKIPS
                for skip in skips or default:
                    if spec.skips and skip not in spec.skips:  # a net trained with some variants only
                        continue
                    trains.append(("train", ds, net_key, skip, seed))
    if profile.net_major:  # stable: within a net, still seed by seed
        nets = [(ds, n) for ds in datasets for n in profile.nets[ds]]
        trains.sort(key=lambda job: nets.index((job[1], job[2])))
    return jobs + trains


def job_file(runs: Path, job: tuple) -> Path:
    kind, ds, net_key, skip, seed = job
    return runs / (f"{ds}-{net_key}-timing.json" if kind == "timing" else f"{ds}-{net_key}-{skip}-s{seed}.json")


def shard_jobs(jobs: list[tuple], todo: list[tuple], index: int, count: int) -> list[tuple]:
    """Shard ``index`` of ``count``: every ``count``-th job of the whole plan from the ``index``-th, less those
    done. A job belongs to one shard whatever has finished, so shards relaunched after some jobs finished (in
    any shard) never run the same job twice, as sharding what is left would."""
    return [job for position, job in enumerate(jobs) if position % count == index and job in todo]


def run_suite(args: argparse.Namespace, profile: Profile) -> None:
    out = Path(args.results) / profile.name
    runs = out / "runs"
    cache = Path(args.cache)
    commit = git_commit(ROOT)
    if profile.require_clean and commit.endswith("+dirty") and not args.allow_dirty:
        raise SystemExit(
            f"profile {profile.name}: the working tree has uncommitted changes; commit them first "
            "(every run records the commit it ran from), or pass --allow-dirty for a trial"
        )
    prepared = {ds: prepare_dataset(profile.datasets[ds], Path(args.data), cache) for ds in args.datasets}
    jobs = plan_jobs(profile, args.datasets, args.only, args.skips, not args.no_timing, args.seed_from)
    todo = [j for j in jobs if not job_file(runs, j).is_file()]
    log.info("%d configurations, %d already done, %d to run", len(jobs), len(jobs) - len(todo), len(todo))
    if args.parallel > 1:
        run_parallel(args)
        return
    if args.shard:
        todo = shard_jobs(jobs, todo, *args.shard)
    started = time.perf_counter()
    for i, job in enumerate(todo, 1):
        kind, ds, net_key, skip, seed = job
        spec = profile.datasets[ds]
        t = time.perf_counter()
        if kind == "timing":
            data = time_variants(profile, spec, prepared[ds], net_key, skip, commit)
        else:
            data = run_config(profile, spec, prepared[ds], net_key, skip, seed, cache / "runs" / profile.name,
                              out, commit)  # fmt: skip
        write_json(job_file(runs, job), data)
        log.info("[%d/%d] %s done in %.0f s (suite %.1f min)", i, len(todo), job_file(runs, job).name,
                 time.perf_counter() - t, (time.perf_counter() - started) / 60)  # fmt: skip


def run_parallel(args: argparse.Namespace) -> None:
    """Run the suite as ``--parallel`` processes on disjoint shards of the jobs (e.g. several trainings on
    one GPU at once). Each finished job is its own JSON file, so the shards never write the same file."""
    argv, skip_next = [], False
    for a in args.argv:  # the same command line without --parallel
        if skip_next or a.startswith("--parallel="):
            skip_next = False
            continue
        if a == "--parallel":
            skip_next = True
            continue
        argv.append(a)
    procs = [
        subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv, "--shard", f"{k}/{args.parallel}"])
        for k in range(args.parallel)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"{sum(1 for c in codes if c)} of {len(codes)} shards failed (exit codes {codes})")


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text}")
    return int(index), int(count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--datasets", nargs="+", default=None, help="default: every dataset of the profile")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: the profile's)")
    parser.add_argument(
        "--seed-from", type=int, default=0, help="first seed to run (with --seeds N: seeds seed-from … N-1)"
    )
    parser.add_argument("--only", nargs="+", default=None, help="nets to run, e.g. unet vnet")
    parser.add_argument(
        "--skips",
        nargs="+",
        default=None,
        choices=sorted(VARIANTS),
        metavar="VARIANT",
        help=f"skip variants to train, e.g. org sat sat-k2-bn (default: org at st sat); known: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--no-timing", action="store_true", help="leave out the side-by-side timing sets")
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--cache", default=str(HERE / ".cache"), help="preprocessed data and checkpoints")
    parser.add_argument("--data", default=str(default_data_root()), help="folder holding the datasets")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the profile's)")
    parser.add_argument(
        "--allow-dirty", action="store_true", help="train even from uncommitted changes (recorded as +dirty)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny budgets, 2 test cases: checks the pipeline")
    parser.add_argument("--report", action="store_true", help="aggregate finished runs into tables and figures")
    parser.add_argument("--parallel", type=int, default=1, help="run the jobs in this many processes at once")
    parser.add_argument("--shard", type=_shard, default=None, help="run only every N-th job from the I-th: I/N")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("satseg").setLevel(logging.WARNING)

    profile = PROFILES[args.profile]
    if args.seeds is not None:
        profile = dataclasses.replace(profile, seeds=args.seeds)
    if args.smoke:
        profile = dataclasses.replace(
            profile,
            name=profile.name + "-smoke",
            train={k: {**v, "epochs": 1, "iters_per_epoch": 2} for k, v in profile.train.items()},
            datasets={k: dataclasses.replace(v, max_test_cases=2) for k, v in profile.datasets.items()},
            timing_repeats=1,
        )
    args.datasets = args.datasets or list(profile.datasets)
    threads = args.threads or profile.threads
    if threads:
        torch.set_num_threads(threads)
    if args.report:
        from report import write_report

        write_report(profile, Path(args.results) / profile.name, Path(args.cache), ROOT)
        return
    run_suite(args, profile)


if __name__ == "__main__":
    main()
