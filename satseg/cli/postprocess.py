"""``satseg postprocess``: decide per class, from the runs' validation cases, whether the largest component helps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from satseg.cli.options import AmpOption, err, out, print_json

__all__ = ["postprocess"]


def postprocess(
    runs: Annotated[
        list[Path], typer.Argument(metavar="RUN", help="Run folders of the folds, or the folder holding them.")
    ],
    data: Annotated[Path, typer.Option("--data", help="Preprocessed folder the runs were trained on.")],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: AmpOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier decision.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Decide per class from the runs' validation cases whether keeping the largest component helps; record it.

    Writes `postprocess.json` into every run; `satseg segment` then applies it (`--lcc/--no-lcc` overrides).
    """
    from satseg.evaluation.postprocess import decide_lcc

    record = decide_lcc(runs, data, device=device, amp=amp, overwrite=overwrite, progress=True)
    if as_json:
        print_json(record)
        return
    for name, on in record["lcc"].items():
        without, with_lcc = record["dice_without"][name], record["dice_with"][name]
        choice = "on" if on else "off"
        out.print(f"{name}: largest component {choice} (Dice {without:.4f} without, {with_lcc:.4f} with)")
    err.print(f"recorded in {len(record['runs'])} run(s) over {record['cases']} validation case(s)", highlight=False)
