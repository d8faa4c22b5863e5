"""``satseg train``: its options are :class:`~satseg.training.config.TrainConfig`'s fields.

Each field's default, help and panel are written once, in ``TrainConfig`` (see ``_setting`` there); this module
turns them into options (:func:`config_parameters`), adds the few that are not settings (``--data``, ``--out``,
``--resume``, ``--json``), calls :func:`satseg.training.crossval.train_runs` and prints the result.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from satseg.cli.options import LIST, out, parse_settings, parse_sizes, print_json, registry_choice
from satseg.cli.params import net_option
from satseg.errors import ConfigError
from satseg.training.config import DATA, HARDWARE, MODEL, OPTIM, RUN, TrainConfig

__all__ = ["train", "config_parameters", "train_summary_lines"]

PANELS = (DATA, MODEL, OPTIM, HARDWARE, RUN)
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_CLI_TYPES: dict[str, Any] = {"fold": str, "patch": list[str] | None, "amp": bool | None}
"""Fields read from another type than they are stored in: ``--fold all``, ``--patch 96 96``, ``--amp/--no-amp``."""
_CLI_DEFAULTS: dict[str, Any] = {"fold": "0", "amp": None}
_MODEL_OPTIONS = [  # `model_options`, given as three options
    ("gate", typer.Option(
        metavar="KEY=VALUE", rich_help_panel=MODEL,
        help="Skip-gate options: select_init (0.5, keras-glorot, tf-glorot), attend_channels, attend_norm, "
        "attend_activation (sigmoid, identity)." + LIST)),
    ("net_options", net_option(rich_help_panel=MODEL)),
    ("features", typer.Option(
        metavar="WIDTHS", help="Backbone widths per level, e.g. 16,32,64,128." + LIST, rich_help_panel=MODEL)),
]  # fmt: skip


def config_parameters() -> list[inspect.Parameter]:
    """One keyword parameter (a Typer option) per ``TrainConfig`` field, in panel order, then field order."""
    hints = typing.get_type_hints(TrainConfig)
    found: list[tuple[int, inspect.Parameter]] = []
    for name, item in _FIELDS.items():
        panel = PANELS.index(item.metadata["panel"])
        if name == "model_options":
            found += [(panel, _keyword(n, Annotated[list[str] | None, o], None)) for n, o in _MODEL_OPTIONS]
            continue
        kind = _CLI_TYPES.get(name, hints[name])
        dashed = item.metadata.get("flag", "--" + name.replace("_", "-"))
        is_bool = kind in (bool, bool | None)
        declared = dashed if not is_bool or item.metadata.get("switch") else f"{dashed}/--no-{dashed[2:]}"
        help_text = item.metadata["help"].replace("[", "\\[") + (LIST if kind == list[str] | None else "")
        option = typer.Option(
            declared, help=help_text, rich_help_panel=item.metadata["panel"], metavar=item.metadata.get("metavar"),
            parser=registry_choice(name) if name in ("net", "skip") else None,
        )  # fmt: skip
        found.append((panel, _keyword(name, Annotated[kind, option], _CLI_DEFAULTS.get(name, item.default))))
    return [parameter for _, parameter in sorted(found, key=lambda pair: pair[0])]


def _keyword(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def train(ctx: typer.Context, data: Path, out_dir: Path, resume: bool, json_output: bool, **options: Any) -> None:
    """Train a segmentation model on a preprocessed dataset. Works under `torchrun --nproc_per_node N` (DDP).

    Writes config.json, checkpoints, metrics.csv, progress.png (loss, validation Dice, learning rate) and train.log.
    """
    from satseg.training.crossval import RESUME_CHECKED, train_runs

    fold = options.pop("fold")
    every_fold = fold.strip().lower() == "all"
    try:
        options["fold"] = 0 if every_fold else int(fold)
    except ValueError:
        raise ConfigError(f"--fold `{fold}` is not a fold number or `all`") from None
    options["patch"] = parse_sizes(options["patch"]) if options["patch"] else None
    gate, net_options, features = (options.pop(name) for name, _ in _MODEL_OPTIONS)
    options["model_options"] = (
        parse_settings(net_options)
        | ({"features": list(parse_sizes(features))} if features else {})
        | ({"gate_options": parse_settings(gate)} if gate else {})
    )
    config = TrainConfig.from_options(**options)
    # With --resume, every setting typed on the command line is checked against the run's (none is ignored).
    typed = {n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"}
    given = typed | ({"model_options"} if typed & {name for name, _ in _MODEL_OPTIONS} else set())
    changeable = {name: getattr(config, name) for name in given & set(_FIELDS) - set(RESUME_CHECKED)}
    results = train_runs(data, out_dir, config, every_fold=every_fold, resume=resume, changeable=changeable,
                         given=given, progress=True)  # fmt: skip
    if not results[0].is_main:  # under torchrun only rank 0 reports
        return
    summaries = [r.summary() for r in results]
    if json_output:
        print_json(summaries if every_fold else summaries[0])
        return
    for summary in summaries:
        for line in train_summary_lines(summary):
            out.print(line, highlight=False)


train.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        _keyword("ctx", typer.Context, inspect.Parameter.empty),
        _keyword("data", Annotated[Path, typer.Option(
            "--data", help="Preprocessed folder (from `satseg preprocess`).", rich_help_panel=DATA)], ...),
        *[p for p in config_parameters() if p.annotation.__metadata__[0].rich_help_panel != RUN],
        _keyword("out_dir", Annotated[Path, typer.Option(
            "--out", "-o", help="Run folder to create (or to continue with --resume).", rich_help_panel=RUN)], ...),
        _keyword("resume", Annotated[bool, typer.Option(
            "--resume", help="Continue the run in --out from its last checkpoint.", rich_help_panel=RUN)], False),
        *[p for p in config_parameters() if p.annotation.__metadata__[0].rich_help_panel == RUN],
        _keyword("json_output", Annotated[bool, typer.Option(
            "--json", help="Print the result as JSON.", rich_help_panel=RUN)], False),
    ]
)  # fmt: skip


def _dice_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def train_summary_lines(summary: dict[str, Any]) -> list[str]:
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
