"""``satseg export-onnx``: a trained run as one self-contained ONNX file.

The run configuration (model, preprocessing plan, label names) travels in the ONNX metadata, so
``satseg segment --model model.onnx`` needs nothing else.
"""

from __future__ import annotations

from pathlib import Path

from satseg.errors import ConfigError
from satseg.export.metadata import model_metadata
from satseg.export.onnx import ExportReport, export_onnx
from satseg.nn import SegmentationNet
from satseg.nn.lean import make_lean
from satseg.paths import check_output
from satseg.runs import BEST, LAST, RUN_CONFIG, check_patch_size, load_run
from satseg.zoo import resolve_model_path

__all__ = ["export_run", "export_model"]


def export_run(
    run: str | Path, output: str | Path, *, opset: int = 17, tolerance: float = 1e-4, overwrite: bool = False
) -> ExportReport:
    """Export a run folder, checkpoint or shipped model to ONNX, checking parity with PyTorch.

    Args:
        run: run folder, checkpoint or shipped model name.
        output: the ``.onnx`` file to write (atomically).
        opset: ONNX opset.
        tolerance: largest accepted |PyTorch − ONNX Runtime| on the logits (fp32).
        overwrite: replace an existing ``output`` (never the run's own files).

    Raises:
        ConfigError: ``output`` exists (without ``overwrite``), is a folder, or is one of the run's files.
        CheckpointError: the run cannot be loaded, or the exported model disagrees with PyTorch.
    """
    source = resolve_model_path(run)
    inputs = [source / n for n in (BEST, LAST, RUN_CONFIG)] if source.is_dir() else [source]
    check_output(output, inputs=inputs, overwrite=overwrite)  # before the minutes an export takes
    if not str(output).lower().endswith(".onnx") or str(output).endswith(("/", "\\")):
        raise ConfigError(
            f"`{output}`: the output of export-onnx is one `.onnx` file", hint=f"e.g. `{Path(output) / 'model.onnx'}`"
            if not Path(output).suffix else f"e.g. `{Path(output).with_suffix('.onnx')}`",
        )
    model, config = load_run(source)
    return export_model(model, config, output, opset=opset, tolerance=tolerance, source=source)


def export_model(
    model: SegmentationNet,
    config: dict,
    output: str | Path,
    *,
    opset: int = 17,
    tolerance: float = 1e-4,
    source: str | Path = "model",
) -> ExportReport:
    """Export a loaded model with its run configuration (see :func:`export_run`); ``output`` is written
    atomically and replaced if it exists (the caller checks it). ``source`` names the model in errors."""
    plan = config["plan"]
    patch = check_patch_size(config.get("train", {}).get("patch") or plan["patch_size"], source)
    metadata = model_metadata(config, model.input_divisor)
    example = (1, int(plan["num_channels"]), *patch)
    # The lean module (BN and selections folded, pruned `st` channels, no skip concatenation) is what ships.
    lean = make_lean(model)
    return export_onnx(lean, output, example_shape=example, metadata=metadata, opset=opset, tolerance=tolerance)
