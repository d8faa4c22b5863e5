"""The app's command classes: one ``error:`` line for every failure, whole help, and list options.

A list option (a ``multiple`` option, typed ``list[str]``) takes every value that follows it:
``--compare org sat`` reads as ``--compare org --compare sat``. Together with
:func:`satseg.cli.options.split_items` each list option accepts space-separated values, comma-separated
lists and repeated options alike. The values are taken by click's parser itself (see
:func:`_take_following_values`), so ``--`` and ``--opt=value`` keep their usual meaning.
"""

from __future__ import annotations

from typing import Any

import typer
from typer._click.exceptions import UsageError
from typer.core import TyperCommand, TyperGroup
from typer.exceptions import Abort, Exit, TyperException

from satseg.cli.help import format_command_help, format_help_text
from satseg.cli.options import err, fill_choices, split_items
from satseg.errors import ConfigError, SatsegError

__all__ = ["SatsegGroup", "SatsegCommand"]


class SatsegGroup(TyperGroup):
    """Turns every SatsegError (and any unexpected exception) into one `error:` line and exit code 1.

    It also fills the registry's backbones and gates into help texts (``{models}``, ``{gates}``) only when a
    command is resolved, so that ``satseg --version`` does not import torch.
    """

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            fill_choices(command)
        return name, command, rest

    def format_help(self, ctx: Any, formatter: Any) -> None:
        format_command_help(self, ctx, formatter)
        rows = [(name, self.get_command(ctx, name).get_short_help_str(limit=500)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, text in rows if not self.get_command(ctx, name).hidden])

    def invoke(self, ctx: typer.Context) -> Any:
        debug = bool((ctx.obj or {}).get("debug"))
        try:
            return super().invoke(ctx)
        except UsageError as error:  # a missing or unknown option: the same one-line style, exit code 2
            if debug:
                raise
            err.print(f"[red]error:[/] {error.format_message()}", markup=True, highlight=False)
            where = error.ctx.command_path if error.ctx is not None else "satseg"
            err.print(f"hint: see `{where} --help`", highlight=False)
            raise typer.Exit(2) from None
        except (Exit, Abort, TyperException):
            raise
        except KeyboardInterrupt:
            err.print("error: interrupted; finished outputs are kept, unfinished ones were not written")
            raise typer.Exit(130) from None
        except Exception as error:  # noqa: BLE001 - the CLI must never show a bare traceback
            if debug:
                raise
            message, hint = _one_line(error)
            err.print(f"[red]error:[/] {message}", markup=True, highlight=False)
            if hint:
                err.print(f"hint: {hint}", highlight=False)
            raise typer.Exit(1) from None


def _one_line(error: Exception) -> tuple[str, str | None]:
    """The ``error:`` line and the optional ``hint:`` for an exception that reached the command line."""
    if isinstance(error, SatsegError):
        return error.message, error.hint
    if isinstance(error, OSError):  # a path the library did not check: still one line naming it
        where = f"`{error.filename}`: " if error.filename else ""
        return f"{where}{error.strerror or error}", None
    if isinstance(error, MemoryError):
        return "out of memory", "use a smaller input, patch or --sw-batch"
    hint = "rerun with `satseg --debug …` for the traceback and report it"
    return f"unexpected {type(error).__name__}: {error}", hint


class SatsegCommand(TyperCommand):
    """A command whose ``--help`` is whole at any width and whose list options take several values."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        format_command_help(self, ctx, formatter)
        self.format_epilog(ctx, formatter)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [piece.replace("{", "").replace("}", "") for piece in super().collect_usage_pieces(ctx)]

    def format_help_text(self, ctx: Any, formatter: Any) -> None:
        format_help_text(self, formatter)

    def make_parser(self, ctx: Any) -> Any:
        parser = super().make_parser(ctx)
        params = self.get_params(ctx)
        numbers_only = any(p.param_type_name == "argument" for p in params)
        for param in params:
            if getattr(param, "multiple", False):
                for name in param.opts:
                    _take_following_values(parser._long_opt.get(name) or parser._short_opt[name], numbers_only)
        return parser


def _take_following_values(option: Any, numbers_only: bool) -> None:
    """Make a parsed list option also take the bare values after its own (``--compare org sat``).

    In a command with positional arguments only numbers join the list (``--spacing 1 1 1 DATASET`` leaves
    ``DATASET`` to its argument); an option name or ``--`` ends the list.
    """
    process = option.process

    def take(value: Any, state: Any) -> None:
        process(value, state)
        while state.rargs and not state.rargs[0].startswith("-") and (not numbers_only or _numbers(state.rargs[0])):
            process(state.rargs.pop(0), state)

    option.process = take


def _numbers(token: str) -> bool:
    try:
        return bool(split_items(token, float))
    except ConfigError:
        return False
