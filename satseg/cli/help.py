"""``--help`` that is whole at any width: option names never cut, help wrapped beneath them, grouped by panel.

Options are grouped by their ``rich_help_panel`` (Data, Model, …) into sections of click's own help formatter,
which puts a long option name on its own line instead of cutting it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["format_command_help", "format_help_text"]


def format_help_text(command: Any, formatter: Any) -> None:
    """The command's docstring, paragraph by paragraph, wrapped to the terminal."""
    if command.help:
        formatter.write_paragraph()
        with formatter.indentation():
            for paragraph in _plain(command.help).split("\n\n"):
                formatter.write_text(" ".join(paragraph.split()))


def format_command_help(command: Any, ctx: Any, formatter: Any) -> None:
    """Usage, help text, then one section per panel of parameters."""
    command.format_usage(ctx, formatter)
    format_help_text(command, formatter)
    sections: dict[str, list[tuple[str, str]]] = {}
    for param in command.get_params(ctx):
        record = _help_record(param)
        if record is not None:
            default = "Arguments" if param.param_type_name == "argument" else "Options"
            sections.setdefault(getattr(param, "rich_help_panel", None) or default, []).append(record)
    for name, rows in sections.items():
        with formatter.section(name):
            formatter.write_dl(rows)


def _plain(text: str) -> str:
    """Help text without rich's escapes and markup (``\\[default: …]`` → ``[default: …]``)."""
    return text.replace("\\[", "[")


def _metavar(param: Any) -> str:
    """What an option takes, in capitals (``PATH``, ``INT``), or nothing for a flag."""
    if getattr(param, "is_flag", False):
        return ""
    if param.metavar:
        return param.metavar
    bare = param.bare_type()
    element = bare[5:-1] if bare.startswith("list[") else bare
    names = {"bool": "", "int": "INT", "float": "NUMBER", "Path": "PATH", "str": "TEXT"}
    return names.get(element, element.upper())


def _help_record(param: Any) -> tuple[str, str] | None:
    if getattr(param, "hidden", False):
        return None
    metavar = _metavar(param)
    if param.param_type_name == "argument":
        name = (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")
        return name, _plain(param.help or "")
    names = ", ".join(param.opts)
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    text = _plain(param.help or "")
    default = param.default
    hidden_default = default is None or default is False or default is ... or getattr(param, "is_flag", False)
    if param.show_default is not False and not hidden_default:
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        text += f" [default: {shown}]" if "[default:" not in text else ""
    elif getattr(param, "is_flag", False) and param.secondary_opts and param.default is not None:
        chosen = param.opts[0] if param.default else param.secondary_opts[0]
        text += f" [default: {chosen}]"
    return (f"{names} {metavar}" if metavar else names), text.strip()
