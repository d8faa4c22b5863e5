"""The one ``satseg`` app: the commands of this package joined under the error handling of :mod:`.command`."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Annotated, NoReturn

import typer

from satseg import __version__
from satseg.cli import demo, evaluate, export_onnx, models, params, postprocess, preprocess, segment, train
from satseg.cli.command import SatsegCommand, SatsegGroup
from satseg.cli.options import out
from satseg.device import quiet_openmp_waits

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


def main() -> NoReturn:
    """Console-script entry point: run the command, then end the process (see :func:`_end_process`)."""
    quiet_openmp_waits()  # before any command imports torch
    try:
        app(prog_name="satseg")
    except SystemExit as stop:
        _end_process(stop.code)
    _end_process(0)


def _end_process(code: int | str | None) -> NoReturn:
    """Exit as ``sys.exit(code)`` would, without the interpreter's teardown of every loaded module.

    Tearing down the extension modules a command loads (SimpleITK, ONNX Runtime, NumPy, pydantic-core) takes
    ~0.2 s, a fifth of a one-scan ``segment`` (benchmarks/results/segment-startup.md). Every file satseg
    writes is closed (and renamed into place) before the command returns, so nothing is lost by skipping it:
    what a clean exit still owes is done here: other threads joined, ``atexit`` handlers run (logging's
    flush among them), standard streams flushed.
    """
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): the message to stderr, status 1
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # what the interpreter runs first: executors' exit hooks, then non-daemon threads joined
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (satseg ... | head): nothing more can reach it
            pass
    os._exit(code)
