"""``satseg segment``: masks on each input's own grid, one line per input as it finishes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from satseg.cli.options import LIST, AmpOption, err, out, parse_sizes, print_json, split_items

__all__ = ["segment"]


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
    amp: AmpOption = None,
    low_memory: Annotated[
        bool,
        typer.Option(
            "--low-memory",
            help="CPU: the lowest peak memory (no ONNX Runtime arena, freed memory returned at once); windows "
            "run ~1.1x (3D U-Net) to ~1.6x (thin 2D nets) as long.",
        ),
    ] = False,
    overlap: Annotated[float, typer.Option(min=0.0, max=0.95, help="Sliding-window overlap.")] = 0.5,
    sw_batch: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 4,
    tile: Annotated[
        list[str],
        typer.Option(
            metavar="SIZES",
            help="Sliding window: auto (CPU: the largest that fits memory, one per pass; GPU: the training "
            "patch), patch, or sides like 128,128,128." + LIST,
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
        inputs, output=output, model=chosen, device=device, backend=backend, amp=amp, low_memory=low_memory,
        overlap=overlap,
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
