"""The ``satseg`` command line: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit, TyperException

from satseg import __version__
from satseg.errors import SatsegError

__all__ = ["app", "main"]

# Logs and progress go to stderr; only results (tables, JSON) go to stdout.
out = Console(no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)
err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)


class _SatsegGroup(TyperGroup):
    """Turns every SatsegError (and any unexpected exception) into one `error:` line and exit code 1."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (Exit, Abort, TyperException):
            raise
        except SatsegError as error:
            if (ctx.obj or {}).get("debug"):
                raise
            err.print(f"[red]error:[/] {error.message}", markup=True, highlight=False)
            if error.hint:
                err.print(f"hint: {error.hint}", highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("error: interrupted; finished outputs are kept, unfinished ones were not written")
            raise typer.Exit(130) from None
        except Exception as error:  # noqa: BLE001 - the CLI must never show a bare traceback
            if (ctx.obj or {}).get("debug"):
                raise
            err.print(f"[red]error:[/] unexpected {type(error).__name__}: {error}", markup=True, highlight=False)
            err.print("hint: rerun with `satseg --debug …` for the traceback and report it", highlight=False)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_SatsegGroup,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    help="2D and 3D medical image segmentation with light, learnable skip connections (SAT gates).",
)


def _version(value: bool) -> None:
    if value:
        out.print(f"satseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """satseg: segment 2D and 3D medical images with U-Net, V-Net, Tiramisu and DI2IN using SAT skips."""
    ctx.obj = {"debug": debug}


def parse_sizes(text: str) -> tuple[int, ...]:
    """Parse ``96,96,96`` (or ``96x96x96``, ``96 96 96``) into a tuple of positive ints."""
    parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise typer.BadParameter(f"expected positive integers like `96,96,96`, got `{text}`")
    return values


def print_json(data: Any) -> None:
    """Write ``data`` as JSON to stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="satseg")


@app.command()
def train(
    data: Annotated[Path, typer.Option("--data", help="Preprocessed folder (from `satseg preprocess`).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create (or to continue with --resume).")],
    net: Annotated[
        str, typer.Option(help="Backbone: unet2d unet3d vnet2d vnet3d tiramisu2d tiramisu3d di2in2d di2in3d.")
    ] = "unet3d",
    skip: Annotated[str, typer.Option(help="Skip gate: org, st, at, sat.")] = "sat",
    fold: Annotated[int, typer.Option(help="Fold of splits.json to validate on; -1 trains on all cases.")] = 0,
    epochs: Annotated[int | None, typer.Option(help="Epochs \\[default: 50].")] = None,
    iters: Annotated[int | None, typer.Option("--iters", help="Batches per epoch \\[default: 100].")] = None,
    patch: Annotated[
        str | None, typer.Option(metavar="SIZES", help="Patch per axis, e.g. 96,96,96 \\[default: plan's].")
    ] = None,
    batch: Annotated[int | None, typer.Option(help="Patches per batch \\[default: 2 in 3D, 12 in 2D].")] = None,
    optimizer: Annotated[str, typer.Option(help="adadelta (paper), adam or sgd.")] = "adadelta",
    lr: Annotated[
        float | None, typer.Option(help="Learning rate \\[default: 1.0 adadelta, 1e-3 adam, 1e-2 sgd].")
    ] = None,
    loss: Annotated[str, typer.Option(help="dice+ce, dice or ce.")] = "dice+ce",
    features: Annotated[
        str | None, typer.Option(metavar="WIDTHS", help="Backbone widths per level, e.g. 16,32,64,128.")
    ] = None,
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA.")] = True,
    amp_dtype: Annotated[str, typer.Option(help="bf16 or fp16.")] = "bf16",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N \\[default: auto].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="Deterministic algorithms.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    val_every: Annotated[int | None, typer.Option(help="Validate every N epochs \\[default: 1].")] = None,
    workers: Annotated[int | None, typer.Option(help="Data-loading worker processes \\[default: 0].")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after the epoch that passes this budget.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a segmentation model on a preprocessed dataset. Works under `torchrun --nproc_per_node N` (DDP)."""
    from satseg.engine.config import TrainConfig
    from satseg.engine.trainer import train as run_training

    options = dict(
        epochs=epochs,
        iters_per_epoch=iters,
        batch=batch,
        lr=lr,
        device=device,
        val_every=val_every,
        workers=workers,
        max_minutes=max_minutes,
        patch=parse_sizes(patch) if patch else None,
    )
    config = TrainConfig.from_options(
        net=net,
        skip=skip,
        fold=fold,
        optimizer=optimizer,
        loss=loss,
        amp=amp,
        amp_dtype=amp_dtype,
        compile=compile,
        seed=seed,
        deterministic=deterministic,
        model_options={"features": list(parse_sizes(features))} if features else {},
        **options,
    )
    result = run_training(data, out_dir, config, resume=resume, resume_overrides=options, progress=True)
    summary = result.summary()
    if not result.is_main:  # under torchrun only rank 0 reports
        return
    if json_output:
        print_json(summary)
    else:
        out.print(f"run `{result.run_dir}`: {result.epochs_done} epochs, best val Dice {summary['best_dice']}")


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Option("--pred", exists=True, file_okay=False, help="Folder of predicted labels.")],
    gt: Annotated[Path, typer.Option("--gt", exists=True, file_okay=False, help="Folder of reference labels.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            file_okay=False,
            help="Folder for per_case.csv and summary.json (default: the --pred folder).",
        ),
    ] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help="Surface Dice tolerance in mm.")] = 1.0,
    labels: Annotated[
        str | None,
        typer.Option(
            "--labels", help="Classes as name=value, e.g. `liver=1,tumour=2` (default: every non-zero label found)."
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Cases scored in parallel.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json to stdout instead of the table.")] = False,
) -> None:
    """Score predicted label images against references: Dice, IoU, FPR, FNR, HD95, ASSD, surface Dice.

    Files are matched by case name (`case.nii.gz` ↔ `case_seg.nii.gz`); distances use the images' spacing.
    """
    from satseg.engine.evaluate import evaluate_folders, parse_labels
    from satseg.engine.reporting import summary_table

    report = evaluate_folders(
        pred,
        gt,
        output or pred,
        labels=parse_labels(labels) if labels else None,
        tolerance_mm=tolerance,
        workers=workers,
    )
    if as_json:
        print_json(report.summary)
        return
    out.print(summary_table(report.summary))
    err.print(f"wrote `{report.per_case_csv}` and `{report.summary_json}`", highlight=False)


def _params_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(
        "net", "skip", "params", "vs org", "skip channels", "skip MB", "GFLOPs", "peak MB", title="Skip gates"
    )
    table.columns[4].overflow = "fold"
    for r in rows:
        mb = lambda v: "-" if v is None else f"{v / 2**20:.2f}"  # noqa: E731
        table.add_row(
            r["net"], r["skip"], f"{r['params']:,}", f"{r['params_change_pct']:+.1f} %",
            ",".join(map(str, r["skip_channels"])), mb(r["skip_bytes"]),
            "-" if r["flops"] is None else f"{r['flops'] / 1e9:.2f}", mb(r["peak_memory_bytes"]),
        )  # fmt: skip
    out.print(table)


def params(
    net: Annotated[str, typer.Option("--net", help="Backbone name, or `all` for every registered one.")] = "all",
    compare: Annotated[str, typer.Option("--compare", help="Skip gates, e.g. org,st,at,sat.")] = "org,st,at,sat",
    patch: Annotated[
        str | None, typer.Option("--patch", help="Patch sides, e.g. 96,96,96 (default 64² / 32³).")
    ] = None,
    in_channels: Annotated[int, typer.Option("--in-channels")] = 1,
    out_channels: Annotated[int, typer.Option("--out-channels")] = 2,
    flops: Annotated[bool, typer.Option("--flops/--no-flops", help="Count forward FLOPs.")] = True,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure peak forward memory.")] = True,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Compare skip gates: parameters, channels and bytes the skips transfer, FLOPs, peak memory."""
    from satseg.engine.params import compare_models, split_items

    rows = compare_models(
        None if net == "all" else [net], split_items(compare), patch=split_items(patch, int), in_channels=in_channels,
        out_channels=out_channels, flops=flops, memory=memory, device=device,
    )  # fmt: skip
    print_json(rows) if as_json else _params_table(rows)


app.command("params")(params)
app.command("count-params", hidden=True)(params)


@app.command()
def preprocess(
    dataset: Annotated[Path, typer.Argument(help="MSD, nnU-Net v2 or images/+masks/ dataset folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Preprocessed folder to write.")],
    spacing: Annotated[str, typer.Option(help="`auto` (3D: median spacing; 2D: keep), `keep`, or mm z,y,x.")] = "auto",
    modality: Annotated[str, typer.Option(help="`auto` (from dataset.json), `ct`, `mri` or `rgb`.")] = "auto",
    size: Annotated[tuple[int, int] | None, typer.Option(help="2D only: resize to H W (plain resize).")] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds in splits.json.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo finished cases.")] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave out cases that fail validation.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Validate a dataset, then resample, normalise and crop every case into OUTPUT (plan.json, splits.json, cases/)."""
    from satseg.data import InvalidCasesError, preprocess_dataset

    options = dict(spacing=spacing, modality=modality, size=size, folds=folds, seed=seed, workers=workers)
    try:
        report = preprocess_dataset(
            dataset, output, **options, overwrite=overwrite, skip_bad=skip_bad, progress=not as_json
        )
    except InvalidCasesError as error:
        _bad_table(error.bad)
        raise
    if report.bad:
        _bad_table(report.bad, "skipped")
    plan = report.plan
    summary = {"output": str(report.output), "written": len(report.written), "reused": len(report.reused)}
    summary |= {"skipped_bad": [b.case_id for b in report.bad], "seconds": round(report.seconds, 2)}
    summary |= {k: plan[k] for k in ("spatial_dims", "modality", "spacing", "size", "patch_size", "labels")}
    if as_json:
        print_json(summary)
    else:
        out.print(Panel("\n".join(f"{k}: {v}" for k, v in summary.items()), title="satseg preprocess", expand=False))


def _bad_table(bad: list, title: str = "cases that failed validation") -> None:
    """Print the bad cases (file, reason) as one table on stderr."""
    table = Table(title=title)
    for column in ("case", "file", "reason"):
        table.add_column(column, overflow="fold")
    for row in bad:
        table.add_row(row.case_id, row.file, row.reason)
    err.print(table)
