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

from satseg import __version__
from satseg.errors import SatsegError

try:  # typer < 0.22 runs on click; newer typer vendors it as typer._click
    from click import ClickException
except ModuleNotFoundError:  # pragma: no cover - depends on the installed typer
    from typer._click import ClickException

__all__ = ["app", "main"]

# Logs and progress go to stderr; only results (tables, JSON) go to stdout.
out = Console(no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)
err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)


class _SatsegGroup(TyperGroup):
    """Turns every SatsegError (and any unexpected exception) into one `error:` line and exit code 1."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException):
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


def print_json(data: Any) -> None:
    """Write ``data`` as JSON to stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="satseg")


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
