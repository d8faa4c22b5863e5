"""The ``satseg`` command line: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

try:
    from click import ClickException, Context
    from click.exceptions import Abort, Exit
except ModuleNotFoundError:  # Typer >= 0.2x vendors click as typer._click
    from typer import Abort, Exit
    from typer._click import ClickException, Context

from satseg import __version__
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
        except (Exit, Abort, ClickException):
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
