"""The one ``satseg`` app: the commands of this package joined under the error handling of :mod:`.command`."""

from __future__ import annotations

from typing import Annotated

import typer

from satseg import __version__
from satseg.cli import demo, evaluate, export_onnx, models, params, postprocess, preprocess, segment, train
from satseg.cli.command import SatsegCommand, SatsegGroup
from satseg.cli.options import out

__all__ = ["app", "main"]

app = typer.Typer(
    cls=SatsegGroup,
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


for _name, _command, _hidden in (
    ("train", train.train, False),
    ("evaluate", evaluate.evaluate, False),
    ("params", params.params, False),
    ("count-params", params.params, True),  # the name the paper's code used
    ("preprocess", preprocess.preprocess, False),
    ("segment", segment.segment, False),
    ("export-onnx", export_onnx.export_onnx, False),
    ("postprocess", postprocess.postprocess, False),
    ("models", models.models, False),
    ("demo", demo.demo, False),
):
    app.command(_name, hidden=_hidden, cls=SatsegCommand)(_command)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="satseg")
