"""The ``satseg`` command line: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer._click.exceptions import UsageError
from typer.core import TyperCommand, TyperGroup
from typer.exceptions import Abort, Exit, TyperException

from satseg import __version__
from satseg.errors import ConfigError, SatsegError, look_up_option

__all__ = ["app", "main"]

# Logs and progress go to stderr; only results (tables, JSON) go to stdout.
out = Console(no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)
err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)


class _SatsegGroup(TyperGroup):
    """Turns every SatsegError (and any unexpected exception) into one `error:` line and exit code 1.

    It also gathers the values of list options (see :func:`gather_list_values`) and fills the registry's
    backbones and gates into help texts (``{models}``, ``{gates}``) only when a command is resolved, so that
    ``satseg --version`` does not import torch.
    """

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            _fill_choices(command)
            rest = gather_list_values(rest, command.params)
        return name, command, rest

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _format_params_help(self, ctx, formatter)
        rows = [(name, self.get_command(ctx, name).get_short_help_str(limit=500)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, text in rows if not self.get_command(ctx, name).hidden])

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as error:  # a missing or unknown option: the same one-line style, exit code 2
            if (ctx.obj or {}).get("debug"):
                raise
            err.print(f"[red]error:[/] {error.format_message()}", markup=True, highlight=False)
            where = error.ctx.command_path if error.ctx is not None else "satseg"
            err.print(f"hint: see `{where} --help`", highlight=False)
            raise typer.Exit(2) from None
        except (Exit, Abort, TyperException):
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
        except OSError as error:  # a path the library did not check: still one line naming it
            if (ctx.obj or {}).get("debug"):
                raise
            where = f"`{error.filename}`: " if error.filename else ""
            err.print(f"[red]error:[/] {where}{error.strerror or error}", markup=True, highlight=False)
            raise typer.Exit(1) from None
        except MemoryError:
            if (ctx.obj or {}).get("debug"):
                raise
            err.print("[red]error:[/] out of memory", markup=True, highlight=False)
            err.print("hint: use a smaller input, patch or --sw-batch", highlight=False)
            raise typer.Exit(1) from None
        except Exception as error:  # noqa: BLE001 - the CLI must never show a bare traceback
            if (ctx.obj or {}).get("debug"):
                raise
            err.print(f"[red]error:[/] unexpected {type(error).__name__}: {error}", markup=True, highlight=False)
            err.print("hint: rerun with `satseg --debug …` for the traceback and report it", highlight=False)
            raise typer.Exit(1) from None


class _SatsegCommand(TyperCommand):
    """A command whose ``--help`` is whole at any width: option names never cut, help wrapped beneath them.

    Options are grouped by their ``rich_help_panel`` (data, model, …) into sections of click's own help
    formatter, which puts a long option name on its own line instead of cutting it.
    """

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _format_params_help(self, ctx, formatter)
        self.format_epilog(ctx, formatter)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [piece.replace("{", "").replace("}", "") for piece in super().collect_usage_pieces(ctx)]

    def format_help_text(self, ctx: Any, formatter: Any) -> None:
        _format_help_text(self, formatter)


def _format_help_text(command: Any, formatter: Any) -> None:
    if command.help:
        formatter.write_paragraph()
        with formatter.indentation():
            for paragraph in _plain(command.help).split("\n\n"):
                formatter.write_text(" ".join(paragraph.split()))


def _format_params_help(self: Any, ctx: Any, formatter: Any) -> None:
    self.format_usage(ctx, formatter)
    _format_help_text(self, formatter)
    sections: dict[str, list[tuple[str, str]]] = {}
    for param in self.get_params(ctx):
        record = _help_record(param, ctx)
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


def _help_record(param: Any, ctx: Any) -> tuple[str, str] | None:
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
    except ValueError as err:
        raise ConfigError(f"cannot read `{text}` as a list of {kind.__name__}", hint="e.g. 96,96,96") from err


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


def _is_number_list(token: str) -> bool:
    try:
        return bool(split_items(token, float))
    except ConfigError:
        return False


def gather_list_values(args: list[str], params: Sequence[Any]) -> list[str]:
    """Let list options take several values: ``--compare org sat`` becomes ``--compare org --compare sat``.

    List options are the ``multiple`` options (typed ``list[str]``); together with :func:`split_items` every
    list option accepts space-separated values, comma-separated lists and repeated options alike. A bare
    token after a list option's value joins that list; in a command with positional arguments only a
    numeric one does (``--spacing 1 1 1 DATASET`` leaves ``DATASET`` alone).
    """
    list_opts = {name for p in params if getattr(p, "multiple", False) for name in getattr(p, "opts", ())}
    if not list_opts:
        return args
    has_positionals = any(getattr(p, "param_type_name", "") == "argument" for p in params)
    gathered: list[str] = []
    current: str | None = None  # the list option whose extra values are being gathered
    awaiting_value = False
    for index, token in enumerate(args):
        if token == "--":
            gathered += args[index:]
            break
        if awaiting_value:
            gathered.append(token)
            awaiting_value = False
            continue
        if current and not token.startswith("-") and (not has_positionals or _is_number_list(token)):
            gathered += [current, token]
            continue
        current = None
        name = token.split("=", 1)[0]
        if name in list_opts:
            current, awaiting_value = name, "=" not in token
        gathered.append(token)
    return gathered


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


def _fill_choices(command: Any) -> None:
    """Put the registry's backbones and skip gates into help texts that ask for them (``{models}``, ``{gates}``);
    done when a command is resolved, so ``satseg --version`` needs no torch."""
    asking = [p for p in command.params if "{models}" in (getattr(p, "help", None) or "")]
    asking += [p for p in command.params if "{gates}" in (getattr(p, "help", None) or "")]
    if not asking:
        return
    names = {kind: ", ".join(_registry_names(kind)) for kind in _REGISTRIES.values()}
    for param in asking:
        for kind, listed in names.items():
            param.help = param.help.replace("{" + kind + "}", listed)


def print_json(data: Any) -> None:
    """Write ``data`` as JSON to stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="satseg")


_DATA, _MODEL, _OPTIM, _HARDWARE, _RUN = "Data", "Model", "Optimisation", "Hardware", "Run control"
_LIST = " Space- or comma-separated; may repeat."
_AmpOption = Annotated[
    bool | None,
    typer.Option(
        "--amp/--no-amp",
        help="Autocast to the run's amp dtype on any device, the CPU too (PyTorch backend); --no-amp: float32 "
        "\\[default: as the run records, CUDA only].",
    ),
]


def _net_option_flag(**kwargs: Any) -> Any:
    """``--net-option KEY=VALUE``, shared by ``train`` and ``params``."""
    return typer.Option(
        "--net-option",
        metavar="KEY=VALUE",
        help="Backbone options, e.g. gate_levels=all (gate every skip, the paper; U-Net and V-Net gate the "
        "finest only by default), transfer=modulate." + _LIST,
        **kwargs,
    )


@app.command(cls=_SatsegCommand)
def train(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Option("--data", help="Preprocessed folder (from `satseg preprocess`).", rich_help_panel=_DATA)
    ],
    fold: Annotated[
        str,
        typer.Option(
            help="Fold of splits.json to validate on; -1: train on all cases; `all`: each fold in OUT/fold_K.",
            rich_help_panel=_DATA,
        ),
    ] = "0",
    patch: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SIZES",
            help="Patch per axis, e.g. 96,96,96 \\[default: planned for the data and device]." + _LIST,
            rich_help_panel=_DATA,
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(help="Patches per batch \\[default: planned for the device].", rich_help_panel=_DATA),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Data-loading worker processes \\[default: 0].", rich_help_panel=_DATA)
    ] = None,
    augment: Annotated[
        bool, typer.Option(help="Augment batches on the training device.", rich_help_panel=_DATA)
    ] = True,
    rotation_deg: Annotated[
        float | None,
        typer.Option(
            help="Largest continuous rotation, degrees; 0: none \\[default: 180 2D, 30 3D].", rich_help_panel=_DATA
        ),
    ] = None,
    elastic: Annotated[
        bool, typer.Option("--elastic", help="Add a cheap elastic deformation.", rich_help_panel=_DATA)
    ] = False,
    net: Annotated[
        str | None,
        typer.Option(
            parser=registry_choice("net"),
            help="Backbone: {models}. Default: the U-Net of the data's dimensionality.",
            rich_help_panel=_MODEL,
        ),
    ] = None,
    skip: Annotated[
        str, typer.Option(parser=registry_choice("skip"), help="Skip gate: {gates}.", rich_help_panel=_MODEL)
    ] = "sat",
    gate: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="Skip-gate options: select_init (0.5, keras-glorot, tf-glorot), attend_channels, attend_norm, "
            "attend_activation (sigmoid, identity)." + _LIST,
            rich_help_panel=_MODEL,
        ),
    ] = None,
    net_option: Annotated[list[str] | None, _net_option_flag(rich_help_panel=_MODEL)] = None,
    features: Annotated[
        list[str] | None,
        typer.Option(
            metavar="WIDTHS", help="Backbone widths per level, e.g. 16,32,64,128." + _LIST, rich_help_panel=_MODEL
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs \\[default: 50].", rich_help_panel=_OPTIM)] = None,
    iters: Annotated[
        int | None,
        typer.Option(
            "--iters", help="Batches per epoch \\[default: planned, ~2 min on a CPU].", rich_help_panel=_OPTIM
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            help="Total training steps: the budget that does not depend on the machine's load (sets --epochs).",
            rich_help_panel=_OPTIM,
        ),
    ] = None,
    optimizer: Annotated[str, typer.Option(help="adadelta (paper), adam or sgd.", rich_help_panel=_OPTIM)] = "adadelta",
    lr: Annotated[
        float | None,
        typer.Option(help="Learning rate \\[default: 1.0 adadelta, 1e-3 adam, 1e-2 sgd].", rich_help_panel=_OPTIM),
    ] = None,
    loss: Annotated[str, typer.Option(help="dice+ce, dice or ce.", rich_help_panel=_OPTIM)] = "dice+ce",
    scheduler: Annotated[
        str,
        typer.Option(
            help="poly (decay over the planned epochs) or constant (the paper: Adadelta, decay 0).",
            rich_help_panel=_OPTIM,
        ),
    ] = "poly",
    select_l1: Annotated[
        float, typer.Option(help="Weight of an L1 term on trelu(W) (st/sat selection).", rich_help_panel=_OPTIM)
    ] = 0.0,
    select_lr_scale: Annotated[
        float, typer.Option(help="Learning-rate multiplier of the selection weights W.", rich_help_panel=_OPTIM)
    ] = 1.0,
    deep_supervision: Annotated[
        bool,
        typer.Option(help="Train auxiliary heads where the backbone has them (U-Net, DI2IN).", rich_help_panel=_OPTIM),
    ] = True,
    ema: Annotated[
        float | None,
        typer.Option(
            metavar="DECAY", help="Validate and ship an EMA of the weights, e.g. 0.999.", rich_help_panel=_OPTIM
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.", rich_help_panel=_OPTIM)] = 0,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N \\[default: auto].", rich_help_panel=_HARDWARE)
    ] = None,
    resident: Annotated[
        bool | None,
        typer.Option(
            "--resident/--no-resident",
            help="Keep the cases on the device \\[default: CUDA if they fit].",
            rich_help_panel=_HARDWARE,
        ),
    ] = None,
    amp: Annotated[
        bool | None,
        typer.Option(
            "--amp/--no-amp",
            help="Mixed precision, autocast to --amp-dtype \\[default: on CUDA only; --amp: the CPU too].",
            rich_help_panel=_HARDWARE,
        ),
    ] = None,
    amp_dtype: Annotated[str, typer.Option(help="bf16 or fp16.", rich_help_panel=_HARDWARE)] = "bf16",
    compile: Annotated[
        bool, typer.Option("--compile", help="torch.compile the model.", rich_help_panel=_HARDWARE)
    ] = False,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="Deterministic algorithms.", rich_help_panel=_HARDWARE)
    ] = False,
    out_dir: Annotated[
        Path,
        typer.Option("--out", "-o", help="Run folder to create (or to continue with --resume).", rich_help_panel=_RUN),
    ] = ...,  # required; listed here so that the help's panels read data → run control
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the run in --out from its last checkpoint.", rich_help_panel=_RUN),
    ] = False,
    val_every: Annotated[
        int | None, typer.Option(help="Validate every N epochs \\[default: 1].", rich_help_panel=_RUN)
    ] = None,
    max_minutes: Annotated[
        float | None,
        typer.Option(
            help="Stop at the first step past this many minutes (the LR does not anneal: prefer --steps).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON.", rich_help_panel=_RUN)
    ] = False,
) -> None:
    """Train a segmentation model on a preprocessed dataset. Works under `torchrun --nproc_per_node N` (DDP).

    Writes config.json, checkpoints, metrics.csv, progress.png (loss, validation Dice, learning rate) and train.log.
    """
    from satseg.training.config import TrainConfig
    from satseg.training.crossval import train_runs

    every_fold = fold.strip().lower() == "all"
    try:
        fold_number = 0 if every_fold else int(fold)
    except ValueError:
        raise ConfigError(f"--fold `{fold}` is not a fold number or `all`") from None
    changeable = dict(epochs=epochs, iters_per_epoch=iters, batch=batch, lr=lr, device=device, val_every=val_every,
                      workers=workers, max_minutes=max_minutes, patch=parse_sizes(patch) if patch else None,
                      rotation_deg=rotation_deg, ema=ema, resident=resident)  # fmt: skip
    model_options = (
        parse_settings(net_option)
        | ({"features": list(parse_sizes(features))} if features else {})
        | ({"gate_options": parse_settings(gate)} if gate else {})
    )
    config = TrainConfig.from_options(
        net=net, skip=skip, fold=fold_number, optimizer=optimizer, loss=loss, scheduler=scheduler,
        select_l1=select_l1, select_lr_scale=select_lr_scale, augment=augment, elastic=elastic,
        deep_supervision=deep_supervision, amp=amp, amp_dtype=amp_dtype, compile=compile, seed=seed,
        deterministic=deterministic, model_options=model_options, steps=steps, **changeable,
    )  # fmt: skip
    # With --resume, every setting typed on the command line is checked against the run's (none is ignored).
    typed = {n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"}
    given = typed | ({"model_options"} if typed & {"features", "gate", "net_option"} else set())
    results = train_runs(data, out_dir, config, every_fold=every_fold, resume=resume, changeable=changeable,
                         given=given, progress=True)  # fmt: skip
    if not results[0].is_main:  # under torchrun only rank 0 reports
        return
    summaries = [r.summary() for r in results]
    if json_output:
        print_json(summaries if every_fold else summaries[0])
        return
    for summary in summaries:
        for line in _train_summary_lines(summary):
            out.print(line, highlight=False)


def _dice_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _train_summary_lines(summary: dict[str, Any]) -> list[str]:
    """A finished run in short lines (80 columns); epochs are counted from 1, as the progress shows them."""
    lines = [
        f"run `{summary['run_dir']}`:",
        f"  {summary['epochs_done']} of {summary['epochs_planned']} epochs, {summary['steps_done']} steps this session",
        f"  val Dice {_dice_text(summary['val_dice'])} ({summary['val_dice_weights']} weights, "
        "in checkpoint_last.pt)",
    ]
    if summary["best_epoch"] is not None:
        lines.append(
            f"  best epoch {summary['best_epoch']}: {_dice_text(summary['best_dice'])} "
            "(optimistic: chosen on this same validation)"
        )
    if summary["stopped_by_budget"]:
        lines.append(f"  stopped by --max-minutes after epoch {summary['epochs_done']} of {summary['epochs_planned']}")
        if summary["lr_fraction_at_stop"] is not None:
            lines.append(
                f"  the learning rate was still {summary['lr_fraction_at_stop']:.2f} of its start (never annealed)"
            )
        lines += [
            "  an unfinished run: `--resume` continues it; --steps N gives a budget that",
            "  ends with the schedule (the same on an idle or a busy machine)",
        ]
    return lines


@app.command(cls=_SatsegCommand)
def evaluate(
    pred: Annotated[Path | None, typer.Option("--pred", exists=True, file_okay=False, help="Predicted labels.")] = None,
    gt: Annotated[Path | None, typer.Option("--gt", exists=True, file_okay=False, help="Reference labels.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Run folder or model: predict, then score.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Preprocessed folder whose cases --model scores.")] = None,
    split: Annotated[str, typer.Option("--split", help="With --model: val, train or all.")] = "val",
    fold: Annotated[int | None, typer.Option("--fold", help="With --model: fold \\[default: the run's].")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", file_okay=False, help="Folder for per_case.csv, summary.json.")
    ] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help="Surface Dice tolerance in mm.")] = 1.0,
    labels: Annotated[
        list[str] | None,
        typer.Option("--labels", help="Classes as name=value, e.g. `liver=1,tumour=2` (--pred/--gt)." + _LIST),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Cases scored in parallel (--pred/--gt).")] = 1,
    device: Annotated[str, typer.Option(help="With --model: auto, cpu, cuda or cuda:N.")] = "auto",
    amp: _AmpOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json to stdout instead of the table.")] = False,
) -> None:
    """Score segmentations: Dice, IoU, FPR, FNR, precision, recall, HD95, ASSD, surface Dice (mean ± std).

    Either `--pred DIR --gt DIR` (files matched by case name, `case.nii.gz` ↔ `case_seg.nii.gz`), or
    `--model RUN --data PREPROCESSED --split val` (segments the split's cases, scores them on their original grids).
    """
    from satseg.evaluation.folders import evaluate_folders, parse_labels
    from satseg.tables import gate_table, summary_table

    gates = []
    if model is not None and data is not None:
        from satseg.evaluation.model import evaluate_model

        report, gates = evaluate_model(
            model,
            data,
            output or _evaluation_folder(Path(model), split),
            split=split,
            fold=fold,
            tolerance_mm=tolerance,
            device=device,
            amp=amp,
            progress=True,
        )
    elif pred is not None and gt is not None:
        report = evaluate_folders(
            pred,
            gt,
            output or pred,
            labels=parse_labels(",".join(split_items(labels))) if labels else None,
            tolerance_mm=tolerance,
            workers=workers,
        )
    else:
        raise ConfigError("give either `--pred DIR --gt DIR` or `--model RUN --data PREPROCESSED`")
    if as_json:  # what summary.json holds (with --model it includes the gate report)
        print_json({**report.summary, "gates": gates} if model is not None else report.summary)
        return
    _print_table(summary_table(report.summary))
    if gates:
        _print_table(gate_table(gates))
    for name in report.summary.get("absent_classes", []):
        err.print(f"warning: class `{name}` is in no prediction and no reference: its scores only say 'both empty'; "
                  "check --labels", highlight=False)  # fmt: skip
    figures = f" and {len(report.figures)} PNG(s) in `{report.figures[0].parent}`" if report.figures else ""
    err.print(f"wrote `{report.per_case_csv}`, `{report.summary_json}`{figures}", highlight=False)


def _evaluation_folder(model: Path, split: str) -> Path:
    """``evaluate --model`` without -o: inside a run folder, beside a model file (never inside the file)."""
    return model / f"eval_{split}" if model.is_dir() else model.with_name(f"{model.name}_eval_{split}")


def _print_table(table: Table) -> None:
    """Print a result table to stdout, laid out vertically when its figures would not fit the terminal."""
    from satseg.tables import fit_table

    out.print(fit_table(table, out.width))


def params(
    net: Annotated[
        list[str],
        typer.Option("--net", metavar="NETS", help="Backbones ({models}), or `all` for every one." + _LIST),
    ] = ["all"],  # noqa: B006 - typer needs a list default; it is never mutated
    compare: Annotated[
        list[str],
        typer.Option("--compare", metavar="GATES", help="Skip gates to compare ({gates})." + _LIST),
    ] = ["org,st,at,sat"],  # noqa: B006
    patch: Annotated[
        list[str] | None,
        typer.Option("--patch", metavar="SIZES", help="Patch sides, e.g. 96,96,96 (default 64² / 32³)." + _LIST),
    ] = None,
    in_channels: Annotated[int, typer.Option("--in-channels")] = 1,
    out_channels: Annotated[int, typer.Option("--out-channels")] = 2,
    flops: Annotated[bool, typer.Option("--flops/--no-flops", help="Count forward FLOPs.")] = True,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure peak forward memory.")] = True,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    net_option: Annotated[list[str] | None, _net_option_flag()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Compare skip gates: parameters, channels and bytes the skips transfer, FLOPs, peak memory.

    The paper's Table 3 (every skip gated): `satseg params --net all --compare org,sat --net-option gate_levels=all`.
    """
    from satseg.nn.params import compare_models

    rows = compare_models(
        None if split_items(net) == ["all"] else split_items(net), split_items(compare),
        patch=list(parse_sizes(patch)) if patch else None, in_channels=in_channels,
        out_channels=out_channels, flops=flops, memory=memory, device=device, net_options=parse_settings(net_option),
    )  # fmt: skip
    if as_json:
        print_json(rows)
    else:
        from satseg.tables import params_table

        _print_table(params_table(rows))


app.command("params", cls=_SatsegCommand)(params)
app.command("count-params", hidden=True, cls=_SatsegCommand)(params)


@app.command(cls=_SatsegCommand)
def preprocess(
    dataset: Annotated[
        Path | None,
        typer.Argument(metavar="DATASET", help="MSD, nnU-Net v2 or images/+masks/ (image/+label/, …) dataset folder."),
    ] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Preprocessed folder to write.")] = ...,
    images: Annotated[
        Path | None, typer.Option("--images", file_okay=False, help="Folder of images (with --labels, no DATASET).")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", file_okay=False, help="Folder of their masks, paired by name or case id.")
    ] = None,
    spacing: Annotated[
        list[str],
        typer.Option(metavar="SPACING", help="`auto` (3D: median spacing; 2D: keep), `keep`, or mm z,y,x." + _LIST),
    ] = ["auto"],  # noqa: B006
    modality: Annotated[
        str, typer.Option(help="`auto` (dataset.json; pictures: rgb or grey), `ct`, `mri`, `rgb` or `grey`.")
    ] = "auto",
    size: Annotated[
        list[str] | None, typer.Option(metavar="H,W", help="2D only: resize to H W (plain resize)." + _LIST)
    ] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds in splits.json.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo finished cases.")] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave out cases that fail validation.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Validate a dataset, then resample, normalise and crop every case into OUTPUT (plan.json, splits.json, cases/).

    Paired picture sets may also be given as two folders: `--images DIR --labels DIR`.
    """
    from satseg.data import InvalidCasesError, preprocess_dataset

    if dataset is None and images is None:
        raise ConfigError("give the dataset folder, or --images DIR --labels DIR")
    spacing_items = split_items(spacing)
    options = dict(spacing=spacing_items[0] if len(spacing_items) == 1 else spacing_items, modality=modality,
                   size=parse_sizes(size) if size else None, folds=folds, seed=seed, workers=workers)  # fmt: skip
    try:
        report = preprocess_dataset(
            dataset, output, **options, overwrite=overwrite, skip_bad=skip_bad, progress=not as_json,
            image_dir=images, label_dir=labels,
        )  # fmt: skip
    except InvalidCasesError as error:
        _bad_table(error.bad)
        raise
    if report.bad:
        _bad_table(report.bad, "skipped")
    plan = report.plan
    summary = {"output": str(report.output), "written": len(report.written), "reused": len(report.reused)}
    summary |= {"skipped_bad": [b.case_id for b in report.bad], "seconds": round(report.seconds, 2)}
    summary |= {k: plan[k] for k in ("spatial_dims", "modality", "spacing", "size", "patch_size", "labels")}
    if plan.get("pairing"):
        summary["pairing"] = plan["pairing"]
    if as_json:
        print_json(summary)
    else:
        for line in _preprocess_lines(summary, plan):
            out.print(line, highlight=False)


def _preprocess_lines(summary: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    """The preprocess summary in plain words (no Python reprs), each line short."""
    grid = (
        f"spacing {' × '.join(f'{v:g}' for v in plan['spacing'])} mm"
        if plan.get("spacing")
        else (f"resized to {' × '.join(map(str, plan['size']))}" if plan.get("size") else "each image's own grid")
    )
    labels = ", ".join(f"{value} {name}" for name, value in sorted(plan["labels"].items(), key=lambda kv: kv[1]))
    lines = [
        f"preprocessed into `{summary['output']}` in {summary['seconds']:.1f} s",
        f"  cases: {summary['written']} written, {summary['reused']} reused"
        + (f", {len(summary['skipped_bad'])} skipped (bad)" if summary["skipped_bad"] else ""),
        f"  {plan['spatial_dims']}D {plan['modality']}, {grid}",
        f"  labels: {labels}",
    ]
    pairing = plan.get("pairing")
    if pairing:
        folders = " ↔ ".join(Path(p).name + "/" * Path(p).is_dir() for p in (pairing["images"], pairing["labels"]))
        lines.append(f"  pairs: {pairing['pairs']}, {folders} by {pairing['by']}")
        if pairing.get("example"):
            lines.append(f"    e.g. {pairing['example'][0]} ↔ {pairing['example'][1]}")
        if pairing.get("mask_values"):
            lines.append(f"  mask values: {pairing['mask_values']}")
        if pairing.get("ignored_folders"):
            lines.append(f"  folders not used: {', '.join(pairing['ignored_folders'])}")
    if plan.get("test_cases"):
        lines.append(f"  without labels: {len(plan['test_cases'])} case(s), preprocessed but not trained on")
    if summary["skipped_bad"]:
        lines.append(f"  skipped: {', '.join(summary['skipped_bad'])}")
    return lines


def _bad_table(bad: list, title: str = "cases that failed validation") -> None:
    """Print the bad cases (file, reason) as one table on stderr."""
    table = Table(title=title)
    for column in ("case", "file", "reason"):
        table.add_column(column, overflow="fold")
    for row in bad:
        table.add_row(row.case_id, row.file, row.reason)
    err.print(table)


@app.command(cls=_SatsegCommand)
def segment(
    inputs: Annotated[
        list[Path], typer.Argument(metavar="INPUT", help="Image files, folders of images, or DICOM series folders.")
    ],
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Output file, or folder (for several, or ending in /).")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Run folder, checkpoint, model.onnx, shipped model or folder of fold runs; several are averaged "
            "\\[default: the shipped model the input fits]. Comma-separated; may repeat."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: Annotated[
        str | None,
        typer.Option(help="torch or onnx \\[default: onnx for .onnx files, and on the CPU unless --amp]."),
    ] = None,
    amp: _AmpOption = None,
    overlap: Annotated[float, typer.Option(min=0.0, max=0.95, help="Sliding-window overlap.")] = 0.5,
    sw_batch: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 4,
    tile: Annotated[
        list[str],
        typer.Option(
            metavar="SIZES",
            help="Sliding window: auto (CPU: the largest that fits memory, one per pass; GPU: the training "
            "patch), patch, or sides like 128,128,128." + _LIST,
        ),
    ] = ["auto"],  # noqa: B006
    tta: Annotated[bool, typer.Option("--tta", help="Average over all mirrorings.")] = False,
    save_probabilities: Annotated[bool, typer.Option("--save-probabilities", help="Also write probabilities.")] = False,
    save_attention: Annotated[bool, typer.Option("--save-attention", help="Write each gate's attention map.")] = False,
    preview: Annotated[bool, typer.Option("--preview", help="Write a PNG of the mask over the image.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Leave out inputs whose mask exists (resume a run).")
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Segment only shard I of N (I/N, or auto from torchrun/SLURM); skips existing masks.",
            metavar="I/N|auto",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Segment inputs unlike the model's training scans (warn only).")
    ] = False,
    lcc: Annotated[
        bool | None,
        typer.Option("--lcc/--no-lcc", help="Keep each class's largest component \\[default: as the run records]."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print volumes (ml) / areas (mm², px for pictures) and timings as JSON.")
    ] = False,
) -> None:
    """Segment scans; each mask has exactly its input's grid, spacing, origin and direction (`<stem>_seg.<ext>`)."""
    from satseg.inference.batch import parse_shard, segment_inputs

    models = split_items(model, keep_paths=True)
    chosen = None if not models else models[0] if len(models) == 1 else models
    report = segment_inputs(
        inputs, output=output, model=chosen, device=device, backend=backend, amp=amp, overlap=overlap,
        sw_batch=sw_batch,
        tile=_tile(tile), tta=tta, save_probabilities=save_probabilities, save_attention=save_attention,
        preview=preview, overwrite=overwrite, skip_existing=skip_existing,
        shard=None if shard is None else parse_shard(shard), force=force, lcc=lcc, progress=True,
        on_done=None if as_json else _print_segment_line,
    )  # fmt: skip
    _print_segment_report(report, as_json)
    if report.failures:
        raise typer.Exit(1)


def _print_segment_report(report: Any, as_json: bool) -> None:
    """Each output with its volumes on stdout (or JSON); skipped inputs, warnings and failures on stderr."""
    if report.skipped:
        where = f"shard {report.shard[0]}/{report.shard[1]}: " if report.shard else ""
        err.print(f"{where}skipped {len(report.skipped)} input(s) whose mask exists already", highlight=False)
    if as_json:
        print_json({"results": report.results, "failures": report.failures, "skipped": report.skipped})
        return
    if not report.results and not report.failures and not report.skipped:
        err.print("nothing to segment", highlight=False)


def _print_segment_line(kind: str, entry: dict[str, Any]) -> None:
    """One input's line as soon as it finishes: its mask and volumes on stdout, or its error on stderr."""
    if kind == "failure":
        where = "" if f"`{entry['input']}`" in entry["error"] else f"`{entry['input']}`: "  # the path once
        err.print(Text.assemble(("error:", "red"), f" {where}{entry['error']}"), highlight=False)
        if entry["hint"]:
            err.print(f"hint: {entry['hint']}", highlight=False)
        return
    for warning in entry["warnings"]:
        err.print(f"warning: `{entry['input']}`: {warning}", highlight=False)
    sizes = ", ".join(f"{k} {v:.2f} {entry['unit']}" for k, v in entry["volumes"].items())
    scaled = {k: v for k, v in entry.get("mask_values", {}).items() if v == 255}
    values = "".join(f"; {k} = {v} in the mask" for k, v in scaled.items())
    out.print(f"{entry['outputs'][0]}  ({entry['model']}; {sizes}{values})", highlight=False)


def _tile(values: list[str]) -> str | tuple[int, ...]:
    """``--tile``: ``auto`` or ``patch`` as given, else window sides (the one list parser)."""
    items = split_items(values) or ["auto"]
    if len(items) == 1 and items[0].lower() in ("auto", "patch"):
        return items[0].lower()
    return parse_sizes(items)


@app.command("export-onnx", cls=_SatsegCommand)
def export_onnx_command(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run folder, checkpoint or shipped model name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .onnx file to write.")],
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output (never the input).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the export report as JSON.")] = False,
) -> None:
    """Export a trained model to ONNX (dynamic batch and spatial axes, plan and labels in its metadata).

    The same random input runs through PyTorch and ONNX Runtime; the largest difference is printed and must be ≤ 1e-4.
    """
    from satseg.export.run import export_run

    report = export_run(run, output, opset=opset, overwrite=overwrite)
    summary = {"path": str(report.path), "opset": report.opset, "max_abs_diff": report.max_abs_diff,
               "checked_shapes": report.checked_shapes, "size_bytes": report.size_bytes}  # fmt: skip
    if as_json:
        print_json(summary)
    else:
        out.print(f"wrote `{report.path}` ({report.size_bytes / 2**20:.1f} MB); max |torch − onnxruntime| = "
                  f"{report.max_abs_diff:.2e} over shapes {list(report.checked_shapes)}", highlight=False)  # fmt: skip


@app.command(cls=_SatsegCommand)
def postprocess(
    runs: Annotated[
        list[Path], typer.Argument(metavar="RUN", help="Run folders of the folds, or the folder holding them.")
    ],
    data: Annotated[Path, typer.Option("--data", help="Preprocessed folder the runs were trained on.")],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: _AmpOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier decision.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Decide per class from the runs' validation cases whether keeping the largest component helps; record it.

    Writes `postprocess.json` into every run; `satseg segment` then applies it (`--lcc/--no-lcc` overrides).
    """
    from satseg.inference.postprocess import decide_lcc

    record = decide_lcc(runs, data, device=device, amp=amp, overwrite=overwrite, progress=True)
    if as_json:
        print_json(record)
        return
    for name, on in record["lcc"].items():
        without, with_lcc = record["dice_without"][name], record["dice_with"][name]
        choice = "on" if on else "off"
        out.print(f"{name}: largest component {choice} (Dice {without:.4f} without, {with_lcc:.4f} with)")
    err.print(f"recorded in {len(record['runs'])} run(s) over {record['cases']} validation case(s)", highlight=False)


@app.command(cls=_SatsegCommand)
def models(as_json: Annotated[bool, typer.Option("--json", help="Print the cards as JSON.")] = False) -> None:
    """List the shipped default models with their cards' key figures."""
    from satseg.tables import models_table
    from satseg.zoo import list_shipped_models

    cards = list_shipped_models()
    print_json(cards) if as_json else _print_table(models_table(cards))


@app.command(cls=_SatsegCommand)
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
    print_json(result) if as_json else _print_table(demo_table(result))
