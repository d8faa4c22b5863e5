"""``satseg export-onnx``: one self-contained ONNX file, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from satseg.cli.options import out, print_json

__all__ = ["export_onnx"]


def export_onnx(
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
    if as_json:
        print_json({"path": str(report.path), "opset": report.opset, "max_abs_diff": report.max_abs_diff,
                    "checked_shapes": report.checked_shapes, "size_bytes": report.size_bytes})  # fmt: skip
        return
    out.print(f"wrote `{report.path}` ({report.size_bytes / 2**20:.1f} MB); max |torch − onnxruntime| = "
              f"{report.max_abs_diff:.2e} over shapes {list(report.checked_shapes)}", highlight=False)  # fmt: skip
