"""``satseg demo``: the whole workflow on synthetic data, `org` against `sat` skips."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from satseg.cli.options import err, print_json, print_table

__all__ = ["demo"]


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
    from satseg.demo import DemoSettings, run_demo
    from satseg.tables import demo_table

    result = run_demo(DemoSettings(device=device), keep, step=lambda text: err.rule(text, align="left"))
    print_json(result) if as_json else print_table(demo_table(result))
