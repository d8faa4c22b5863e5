"""``satseg preprocess``: validate a dataset, then resample, normalise and crop every case."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from satseg.cli.options import LIST, err, out, parse_sizes, print_json, split_items
from satseg.errors import ConfigError

__all__ = ["preprocess"]


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
        typer.Option(metavar="SPACING", help="`auto` (3D: median spacing; 2D: keep), `keep`, or mm z,y,x." + LIST),
    ] = ["auto"],  # noqa: B006
    modality: Annotated[
        str, typer.Option(help="`auto` (dataset.json; pictures: rgb or grey), `ct`, `mri`, `rgb` or `grey`.")
    ] = "auto",
    size: Annotated[
        list[str] | None, typer.Option(metavar="H,W", help="2D only: resize to H W (plain resize)." + LIST)
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
