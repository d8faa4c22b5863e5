"""What the commands share: the one list parser, registry choices, the ``--amp`` option, and printing.

Logs and progress go to stderr; only results (tables, JSON) go to stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from satseg.errors import ConfigError, SatsegError, look_up_option

__all__ = [
    "LIST",
    "AmpOption",
    "out",
    "err",
    "split_items",
    "parse_sizes",
    "parse_settings",
    "registry_choice",
    "fill_choices",
    "print_json",
    "print_table",
]

out = Console(no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)
err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)

LIST = " Space- or comma-separated; may repeat."
"""Said in the help of every list option (see :mod:`satseg.cli.command` for how the values are gathered)."""

AmpOption = Annotated[
    bool | None,
    typer.Option(
        "--amp/--no-amp",
        help="Autocast to the run's amp dtype on any device, the CPU too (PyTorch backend); --no-amp: float32 "
        "\\[default: as the run records, CUDA only].",
    ),
]


def split_items(text: str | Sequence[str] | None, kind: type = str, keep_paths: bool = False) -> list | None:
    """Split a CLI list such as ``"org,st sat"``, ``"96x96x96"`` or ``["org", "st,sat"]`` into items of ``kind``.

    None stays None; an empty list is None, too (a list option that was not given). With ``keep_paths`` a
    value naming an existing file or folder stays whole (its name may hold spaces or commas).

    Raises:
        ConfigError: an item is not a valid ``kind``.
    """
    if text is None or (not isinstance(text, str) and not text):
        return None
    if keep_paths:
        values = [text] if isinstance(text, str) else list(text)
        return [item for v in values for item in ([v] if Path(v).exists() else split_items(v, kind) or [])]
    if not isinstance(text, str):  # the values of a repeated list option
        text = " ".join(text)
    items = text.replace(",", " ")
    if kind is int:
        items = items.replace("x", " ")
    try:
        return [kind(t) for t in items.split()]
    except ValueError as error:
        raise ConfigError(f"cannot read `{text}` as a list of {kind.__name__}", hint="e.g. 96,96,96") from error


def parse_sizes(text: str | Sequence[str]) -> tuple[int, ...]:
    """Parse ``96,96,96`` (or ``96x96x96``, ``96 96 96``, ``["96", "96,96"]``) into a tuple of positive ints."""
    try:
        values = tuple(split_items(text, int) or ())
    except ConfigError:
        values = ()
    if not values or min(values) < 1:
        shown = text if isinstance(text, str) else " ".join(text)
        raise typer.BadParameter(f"expected positive integers like `96,96,96`, got `{shown}`")
    return values


def parse_settings(text: str | Sequence[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` items (``"attend_channels=2,attend_norm=true"``) into a dict of typed values.

    Values read as int, then float, then ``true``/``false``, else stay text.
    """
    settings: dict[str, Any] = {}
    for item in split_items(text) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"cannot read `{item}` as key=value", hint="e.g. --gate attend_channels=2")
        settings[key] = _typed(raw)
    return settings


def _typed(raw: str) -> Any:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


_REGISTRIES = {"net": "models", "skip": "gates"}
"""Options whose choices are the registry's names: ``--net`` (backbones) and ``--skip`` (skip gates)."""


def _registry_names(kind: str) -> list[str]:
    from satseg.nn import list_gates, list_models  # torch: only when a command needs the registry

    return {"models": list_models, "gates": list_gates}[kind]()


def registry_choice(option: str) -> Callable[[str], str]:
    """A parser for ``--net``/``--skip``: the value must be a name in the registry, else the library's own
    one-line error (:func:`satseg.errors.look_up_option`, with its "did you mean")."""

    def parse(value: str) -> str:
        try:
            return look_up_option(value, _registry_names(_REGISTRIES[option]), option)
        except ConfigError as error:  # not a ValueError: typer would turn it into a usage box
            raise SatsegError(error.message, error.hint) from None

    return parse


def fill_choices(command: Any) -> None:
    """Put the registry's backbones and skip gates into help texts that ask for them (``{models}``, ``{gates}``);
    done when a command is resolved, so ``satseg --version`` needs no torch."""
    asking = [p for p in command.params if any(f"{{{k}}}" in (getattr(p, "help", None) or "") for k in _KINDS)]
    if not asking:
        return
    names = {kind: ", ".join(_registry_names(kind)) for kind in _KINDS}
    for param in asking:
        for kind, listed in names.items():
            param.help = param.help.replace("{" + kind + "}", listed)


_KINDS = tuple(_REGISTRIES.values())


def print_json(data: Any) -> None:
    """Write ``data`` as JSON to stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(table: Any) -> None:
    """Print a result table to stdout, laid out vertically when its figures would not fit the terminal."""
    from satseg.tables import fit_table

    out.print(fit_table(table, out.width))
