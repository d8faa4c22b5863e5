"""The ``satseg`` command line: one small module per command (parse, call one entry point, print), joined in
one Typer app (:mod:`satseg.cli.app`). No logic lives here."""

from satseg.cli.app import app, main

__all__ = ["app", "main"]
