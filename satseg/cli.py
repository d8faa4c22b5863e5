"""The ``satseg`` command line: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

try:  # typer < 0.2x runs on click; newer typer vendors it as `typer._click`
    from click import ClickException, Context
except ImportError:  # pragma: no cover - depends on the installed typer
    from typer._click import ClickException, Context

from satseg import __version__
from satseg.engine.evaluate import evaluate_folders, parse_labels
from satseg.engine.reporting import summary_table
from satseg.errors import SatsegError

__all__ = ["app", "main"]

# Logs and progress go to stderr; only results (tables, JSON) go to stdout.
out = Console(no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)
err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")))


class _SatsegGroup(TyperGroup):
    """Turns every SatsegError (and any unexpected exception) into one `error:` line and exit code 1."""

    def invoke(self, ctx: Context) -> Any:
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
