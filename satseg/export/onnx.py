"""ONNX export of a network: a graph with dynamic axes, string metadata and a parity check against PyTorch.

The exported graph takes ``image`` ``(B, C, *S)`` and returns ``logits`` ``(B, K, *S)``, with the batch
and every spatial axis dynamic (each side must still be divisible by the model's ``input_divisor``).
String metadata (e.g. the preprocessing plan as JSON and the label names) travels in the model's
``metadata_props`` (what satseg stores there: :mod:`satseg.export.metadata`). The file is run with ONNX
Runtime by :class:`satseg.inference.backends.OnnxPredictor`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from satseg.atomic import atomic_path
from satseg.errors import CheckpointError, ConfigError, look_up_option
from satseg.export.metadata import GRAPH_DIGEST_KEY, graph_digest

__all__ = ["ExportReport", "export_onnx", "EXPORTERS", "INPUT_NAME", "OUTPUT_NAME"]

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
EXPORTERS = ("torchscript", "dynamo")


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` did.

    Attributes:
        path: the written ``.onnx`` file.
        opset: ONNX opset of the graph.
        exporter: ``torchscript`` or ``dynamo``.
        max_abs_diff: largest ``|PyTorch - ONNX Runtime|`` logit difference over the checked shapes
            (None when ``check=False``).
        checked_shapes: input shapes ``(B, C, *S)`` run through both for the check.
        size_bytes: size of the written file.
        metadata: the metadata stored in the file.
    """

    path: Path
    opset: int
    exporter: str
    max_abs_diff: float | None
    checked_shapes: tuple[tuple[int, ...], ...]
    size_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)


def _second_shape(example_shape: tuple[int, ...], divisor: int) -> tuple[int, ...]:
    """Another valid input shape (batch + 1, each side + divisor, sides different) to prove the axes are dynamic."""
    batch, channels, *sides = example_shape
    return (batch + 1, channels, *(s + divisor * (i + 1) for i, s in enumerate(sides)))


def _export_proto(model: nn.Module, example: Tensor, opset: int, exporter: str):
    """Export ``model`` (eval, CPU) on ``example`` to an in-memory ``onnx.ModelProto``."""
    import onnx

    spatial = range(2, example.ndim)
    if exporter == "torchscript":
        axes = {0: "batch", **{d: f"s{d - 2}" for d in spatial}}
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated in torch 2.9+
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                opset_version=opset,
                do_constant_folding=True,
            )
        return onnx.load_model_from_string(buffer.getvalue())
    from torch.export import Dim

    shapes = ({0: Dim.AUTO, **{d: Dim.AUTO for d in spatial}},)  # one entry per positional argument
    chatter = io.StringIO()  # the dynamo exporter prints progress to stdout, which belongs to the CLI's results
    with contextlib.redirect_stdout(chatter):
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=shapes,
            opset_version=opset,
            verbose=False,
        )
    log.debug("dynamo exporter: %s", chatter.getvalue().strip())
    return program.model_proto


def _max_abs_diff(model: nn.Module, path: Path, shapes: Sequence[tuple[int, ...]]) -> float:
    """Largest ``|PyTorch - ONNX Runtime|`` over random inputs of ``shapes`` (CPU, float32)."""
    import onnxruntime as ort

    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for shape in shapes:
            x = torch.randn(shape, generator=generator)
            with torch.inference_mode():
                expected = model(x).numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            if got.shape != expected.shape:
                raise CheckpointError(
                    f"the exported graph gives shape {got.shape} for input {shape}, not {expected.shape}"
                )
            if not (np.isfinite(got).all() and np.isfinite(expected).all()):
                # max(0.0, nan) is 0.0: without this check a model of NaN would pass with a difference of 0
                raise CheckpointError(
                    f"the model gives NaN or Inf for a random input of shape {shape}; it cannot be exported",
                    hint="its weights are broken (diverged training or a damaged file)",
                )
            worst = max(worst, float(np.abs(got - expected).max()))
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"ONNX Runtime cannot run the exported graph: {_first_line(err)}") from err
    return worst


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    example_shape: Sequence[int],
    metadata: Mapping[str, str],
    opset: int = 17,
    check: bool = True,
    tolerance: float = 1e-4,
    exporter: str = "torchscript",
) -> ExportReport:
    """Export ``model`` to ONNX with dynamic batch and spatial axes, string metadata and a parity check.

    The export runs on a CPU copy of the model in eval mode (the model passed in is left untouched).
    The file is written to a temporary name beside ``path``, checked, and only then moved onto ``path``,
    so a failed export or check leaves any earlier file as it was. With ``check``, random inputs of
    ``example_shape`` and of a second, larger shape (batch + 1, each side + ``input_divisor`` times its
    axis number) run through PyTorch and ONNX Runtime (CPU provider, float32, so no TF32 or cuDNN
    differences), which proves the axes are dynamic; a logit difference above ``tolerance`` raises.

    Args:
        model: a network ``(B, C, *S) -> (B, K, *S)`` (e.g. a :class:`~satseg.nn.SegmentationNet`).
        path: the ``.onnx`` file to write; its folder must exist. An existing file is replaced.
        example_shape: ``(B, C, *S)`` of the example input; sides must suit the model.
        metadata: string key/value pairs stored in ``metadata_props`` (e.g. ``plan`` as JSON).
        opset: ONNX opset version.
        check: compare PyTorch and ONNX Runtime outputs after writing.
        tolerance: largest allowed absolute logit difference.
        exporter: ``torchscript`` (fast, deprecated in torch but exact dynamic axes) or ``dynamo``
            (``torch.export``-based; slower to export).

    Returns:
        :class:`ExportReport`.

    Raises:
        ConfigError: for a bad example shape, metadata, exporter or output folder.
        CheckpointError: when the export fails or the parity check exceeds ``tolerance``.
    """
    path = Path(path)
    exporter = look_up_option(exporter, EXPORTERS, "ONNX exporter")
    shape = tuple(int(s) for s in example_shape)
    if len(shape) not in (4, 5) or min(shape) < 1:
        raise ConfigError(f"`example_shape` must be (B, C, *S) with 2 or 3 positive sides, got {shape}")
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ConfigError(f"ONNX metadata keys and values must be strings; not so for {bad}")
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write `{path}`: folder `{path.parent}` does not exist")

    cpu_model = copy.deepcopy(model).cpu().eval()
    if hasattr(cpu_model, "check_input_shape"):
        cpu_model.check_input_shape(torch.empty(shape, device="meta"))
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    try:
        proto = _export_proto(cpu_model, example, opset, exporter)
    except Exception as err:
        raise CheckpointError(
            f"ONNX export of {type(model).__name__} with the {exporter} exporter failed: {_first_line(err)}",
            hint="try the other exporter (`torchscript` or `dynamo`) or another opset",
        ) from err
    del proto.metadata_props[:]
    for key, value in {**metadata, GRAPH_DIGEST_KEY: graph_digest(proto)}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    import onnx

    # checked before it replaces `path`: a failed export leaves no file behind
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
        shapes: tuple[tuple[int, ...], ...] = ()
        diff = None
        if check:
            shapes = (shape, _second_shape(shape, int(getattr(cpu_model, "input_divisor", 1))))
            diff = _max_abs_diff(cpu_model, tmp, shapes)
            log.info("ONNX parity on %s: max |diff| = %.3g", shapes, diff)
            if diff > tolerance:
                raise CheckpointError(
                    f"the ONNX export of {type(model).__name__} differs from PyTorch by {diff:.3g} "
                    f"(tolerance {tolerance:g}); `{path}` was not written",
                    hint="try the other exporter or opset",
                )
    return ExportReport(
        path=path,
        opset=opset,
        exporter=exporter,
        max_abs_diff=diff,
        checked_shapes=shapes,
        size_bytes=path.stat().st_size,
        metadata=dict(metadata),
    )
