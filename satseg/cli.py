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
from rich.text import Text
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit, TyperException

from satseg import __version__
from satseg.errors import ConfigError, SatsegError

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
        except OSError as error:  # a path the library did not check: still one line naming it
            if (ctx.obj or {}).get("debug"):
                raise
            where = f"`{error.filename}`: " if error.filename else ""
            err.print(f"[red]error:[/] {where}{error.strerror or error}", markup=True, highlight=False)
            raise typer.Exit(1) from None
        except MemoryError:
            if (ctx.obj or {}).get("debug"):
                raise
            err.print("[red]error:[/] out of memory", markup=True, highlight=False)
            err.print("hint: use a smaller input, patch or --sw-batch", highlight=False)
            raise typer.Exit(1) from None
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


def split_items(text: str | None, kind: type = str) -> list | None:
    """Split a CLI list such as ``"org,st sat"`` or ``"96x96x96"`` into items of ``kind`` (None stays None).

    Raises:
        ConfigError: an item is not a valid ``kind``.
    """
    if text is None:
        return None
    items = text.replace(",", " ")
    if kind is int:
        items = items.replace("x", " ")
    try:
        return [kind(t) for t in items.split()]
    except ValueError as err:
        raise ConfigError(f"cannot read `{text}` as a list of {kind.__name__}", hint="e.g. 96,96,96") from err


def parse_sizes(text: str) -> tuple[int, ...]:
    """Parse ``96,96,96`` (or ``96x96x96``, ``96 96 96``) into a tuple of positive ints."""
    try:
        values = tuple(split_items(text, int))
    except ConfigError:
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
    ctx: typer.Context,
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
    # With --resume, every setting typed on the command line is checked against the run's (none is ignored).
    typed = {n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"}
    fixed = ("net", "skip", "fold", "optimizer", "loss", "amp", "amp_dtype", "compile", "seed", "deterministic")
    overrides = {**options, **{k: getattr(config, k) for k in fixed if k in typed}}
    if "features" in typed:
        overrides["model_options"] = config.model_options
    result = run_training(data, out_dir, config, resume=resume, resume_overrides=overrides, progress=True)
    summary = result.summary()
    if not result.is_main:  # under torchrun only rank 0 reports
        return
    if json_output:
        print_json(summary)
    else:
        out.print(f"run `{result.run_dir}`: {result.epochs_done} epochs, best val Dice {summary['best_dice']}")


@app.command()
def evaluate(
    pred: Annotated[Path | None, typer.Option("--pred", exists=True, file_okay=False, help="Predicted labels.")] = None,
    gt: Annotated[Path | None, typer.Option("--gt", exists=True, file_okay=False, help="Reference labels.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Run folder or model: predict, then score.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Preprocessed folder whose cases --model scores.")] = None,
    split: Annotated[str, typer.Option("--split", help="With --model: val, train or all.")] = "val",
    fold: Annotated[int | None, typer.Option("--fold", help="With --model: fold \\[default: the run's].")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", file_okay=False, help="Folder for per_case.csv, summary.json.")
    ] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help="Surface Dice tolerance in mm.")] = 1.0,
    labels: Annotated[
        str | None, typer.Option("--labels", help="Classes as name=value, e.g. `liver=1,tumour=2` (--pred/--gt).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Cases scored in parallel (--pred/--gt).")] = 1,
    device: Annotated[str, typer.Option(help="With --model: auto, cpu, cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json to stdout instead of the table.")] = False,
) -> None:
    """Score segmentations: Dice, IoU, FPR, FNR, precision, recall, HD95, ASSD, surface Dice (mean ± std).

    Either `--pred DIR --gt DIR` (files matched by case name, `case.nii.gz` ↔ `case_seg.nii.gz`), or
    `--model RUN --data PREPROCESSED --split val` (segments the split's cases, scores them on their original grids).
    """
    from satseg.engine.evaluate import evaluate_folders, parse_labels
    from satseg.engine.reporting import gate_table, summary_table

    gates = []
    if model is not None and data is not None:
        from satseg.engine.evaluate_model import evaluate_model

        report, gates = evaluate_model(
            model,
            data,
            output or Path(model) / f"eval_{split}",
            split=split,
            fold=fold,
            tolerance_mm=tolerance,
            device=device,
            progress=_status("segmenting"),
        )
    elif pred is not None and gt is not None:
        report = evaluate_folders(
            pred,
            gt,
            output or pred,
            labels=parse_labels(labels) if labels else None,
            tolerance_mm=tolerance,
            workers=workers,
        )
    else:
        raise ConfigError("give either `--pred DIR --gt DIR` or `--model RUN --data PREPROCESSED`")
    if as_json:  # what summary.json holds (with --model it includes the gate report)
        print_json({**report.summary, "gates": gates} if model is not None else report.summary)
        return
    out.print(summary_table(report.summary))
    if gates:
        out.print(gate_table(gates))
    for name in report.summary.get("absent_classes", []):
        err.print(f"warning: class `{name}` is in no prediction and no reference: its scores only say 'both empty'; "
                  "check --labels", highlight=False)  # fmt: skip
    err.print(f"wrote `{report.per_case_csv}` and `{report.summary_json}`", highlight=False)


def _status(verb: str):
    """A progress callback that prints `verb item` to stderr (one line per item)."""
    return lambda item: err.print(f"{verb} {item}", highlight=False)


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
    from satseg.engine.params import compare_models

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


@app.command()
def segment(
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders of images, or DICOM series folders.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file, or folder for several.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Run folder, checkpoint, model.onnx or shipped model \\[default: by input].")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: Annotated[str | None, typer.Option(help="torch or onnx \\[default: onnx for .onnx files].")] = None,
    overlap: Annotated[float, typer.Option(min=0.0, max=0.95, help="Sliding-window overlap.")] = 0.5,
    sw_batch: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 4,
    tta: Annotated[bool, typer.Option("--tta", help="Average over all mirrorings.")] = False,
    save_probabilities: Annotated[bool, typer.Option("--save-probabilities", help="Also write probabilities.")] = False,
    save_attention: Annotated[bool, typer.Option("--save-attention", help="Write each gate's attention map.")] = False,
    preview: Annotated[bool, typer.Option("--preview", help="Write a PNG of the mask over the image.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print volumes (ml) / areas (mm²) and timings as JSON.")
    ] = False,
) -> None:
    """Segment scans; each mask has exactly its input's grid, spacing, origin and direction (`<stem>_seg.<ext>`)."""
    from satseg.engine.segment import segment_inputs

    report = segment_inputs(
        inputs, output=output, model=model, device=device, backend=backend, overlap=overlap, sw_batch=sw_batch,
        tta=tta, save_probabilities=save_probabilities, save_attention=save_attention, preview=preview,
        overwrite=overwrite, progress=_status("segmenting"),
    )  # fmt: skip
    if as_json:
        print_json({"results": report.results, "failures": report.failures})
    else:
        for result in report.results:
            sizes = ", ".join(f"{k} {v:.2f} {result['unit']}" for k, v in result["volumes"].items())
            out.print(f"{result['outputs'][0]}  ({result['model']}; {sizes})", highlight=False)
        for failure in report.failures:
            hint = f" (hint: {failure['hint']})" if failure["hint"] else ""
            line = Text.assemble(("error:", "red"), f" `{failure['input']}`: {failure['error']}{hint}")
            err.print(line, highlight=False)
    if report.failures:
        raise typer.Exit(1)


@app.command("export-onnx")
def export_onnx_command(
    run: Annotated[str, typer.Argument(help="Run folder, checkpoint or shipped model name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .onnx file to write.")],
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output (never the input).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the export report as JSON.")] = False,
) -> None:
    """Export a trained model to ONNX (dynamic batch and spatial axes, plan and labels in its metadata).

    The same random input runs through PyTorch and ONNX Runtime; the largest difference is printed and must be ≤ 1e-4.
    """
    from satseg.engine.export import export_run

    report = export_run(run, output, opset=opset, overwrite=overwrite)
    summary = {"path": str(report.path), "opset": report.opset, "max_abs_diff": report.max_abs_diff,
               "checked_shapes": report.checked_shapes, "size_bytes": report.size_bytes}  # fmt: skip
    if as_json:
        print_json(summary)
    else:
        out.print(f"wrote `{report.path}` ({report.size_bytes / 2**20:.1f} MB); max |torch − onnxruntime| = "
                  f"{report.max_abs_diff:.2e} over shapes {list(report.checked_shapes)}", highlight=False)  # fmt: skip


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print the cards as JSON.")] = False) -> None:
    """List the shipped default models with their cards' key figures."""
    from satseg.engine.reporting import models_table
    from satseg.engine.zoo import list_shipped_models

    cards = list_shipped_models()
    print_json(cards) if as_json else out.print(models_table(cards))


@app.command()
def demo(
    keep: Annotated[
        Path | None, typer.Option("--keep", help="Work in this folder and keep it (default: temporary).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Run the whole workflow on synthetic data (no data, no download) and compare `org` with `sat` skips.

    preprocess → train (org, sat) → evaluate → segment → params, in a few minutes on a CPU.
    """
    from satseg.engine.demo import DemoSettings, run_demo
    from satseg.engine.reporting import demo_table

    result = run_demo(DemoSettings(device=device), keep, step=lambda text: err.rule(text, align="left"))
    print_json(result) if as_json else out.print(demo_table(result))
