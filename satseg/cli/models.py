"""``satseg models``: the shipped default models and their cards' key figures."""

from __future__ import annotations

from typing import Annotated

import typer

from satseg.cli.options import print_json, print_table

__all__ = ["models"]


def models(as_json: Annotated[bool, typer.Option("--json", help="Print the cards as JSON.")] = False) -> None:
    """List the shipped default models with their cards' key figures."""
    from satseg.tables import models_table
    from satseg.zoo import list_shipped_models

    cards = list_shipped_models()
    print_json(cards) if as_json else print_table(models_table(cards))
