"""What satseg stores in an exported ONNX file's metadata, and how it is read back.

The run configuration (model, preprocessing plan, label names) travels as JSON under
:data:`ONNX_CONFIG_KEY`, so ``satseg segment --model model.onnx`` needs nothing but the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from satseg import __version__
from satseg.errors import CheckpointError

__all__ = [
    "ONNX_CONFIG_KEY",
    "GRAPH_DIGEST_KEY",
    "INPUT_DIVISOR_KEY",
    "onnx_input_divisor",
    "model_metadata",
    "graph_digest",
    "read_onnx_metadata",
    "onnx_graph_matches",
    "onnx_run_config",
]

ONNX_CONFIG_KEY = "satseg_config"
"""ONNX metadata key holding the run configuration (model, plan) as JSON."""
GRAPH_DIGEST_KEY = "satseg_graph_sha256"
"""ONNX metadata key holding :func:`graph_digest` of the exported graph."""
INPUT_DIVISOR_KEY = "satseg_input_divisor"
"""ONNX metadata key holding the network's input divisor (every window side is a multiple of it), so a window
can be chosen for an export without rebuilding the network in torch."""


def model_metadata(config: dict[str, Any], input_divisor: int | None = None) -> dict[str, str]:
    """The string metadata an export of a run with configuration ``config`` carries."""
    metadata = {
        ONNX_CONFIG_KEY: json.dumps(config),
        "labels": json.dumps(config["plan"]["labels"]),
        "satseg_version": __version__,
    }
    if input_divisor is not None:
        metadata[INPUT_DIVISOR_KEY] = str(int(input_divisor))
    return metadata


def onnx_input_divisor(metadata: dict[str, str]) -> int | None:
    """The input divisor recorded at export, or None (an export from before it was recorded, or a bad value)."""
    text = metadata.get(INPUT_DIVISOR_KEY, "")
    return int(text) if text.isascii() and text.isdigit() and 1 <= int(text) <= 2**16 else None


def graph_digest(proto: Any) -> str:
    """SHA-256 of an ONNX model's graph (nodes, weights, inputs, outputs), stored at export under
    :data:`GRAPH_DIGEST_KEY`: metadata copied onto another graph, or a graph edited after export, no longer match."""
    return hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict; a satseg export's graph is checked against its digest.

    Raises:
        CheckpointError: when the file is missing or is not an ONNX model, or carries satseg's run
            configuration on a graph satseg did not export with it.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model `{path}` does not exist")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as err:
        raise CheckpointError(f"cannot read ONNX model `{path}`: {err}") from err
    metadata = {p.key: p.value for p in proto.metadata_props}
    if ONNX_CONFIG_KEY in metadata and metadata.get(GRAPH_DIGEST_KEY) != graph_digest(proto):
        raise CheckpointError(
            f"`{path}`: its graph is not the one satseg exported with this metadata (metadata copied onto another "
            "graph, the graph edited, or an export from before graph digests)",
            hint="export the model again with `satseg export-onnx`",
        )
    return metadata


def onnx_graph_matches(path: str | Path) -> bool:
    """True when ``path`` is a satseg export whose graph matches its digest (e.g. a cached export to reuse)."""
    try:
        return ONNX_CONFIG_KEY in read_onnx_metadata(path)
    except CheckpointError:
        return False


def onnx_run_config(path: Path, metadata: dict[str, str]) -> Any:
    """The run configuration in an ONNX file's metadata, telling "not satseg's" from "damaged"."""
    if ONNX_CONFIG_KEY not in metadata:
        raise CheckpointError(
            f"`{path}`: not exported by satseg (no `{ONNX_CONFIG_KEY}` metadata)",
            hint="export the model with `satseg export-onnx`",
        )
    try:
        return json.loads(metadata[ONNX_CONFIG_KEY])
    except ValueError as err:
        raise CheckpointError(
            f"`{path}`: its `{ONNX_CONFIG_KEY}` metadata is not valid JSON ({err})",
            hint="the file was edited or damaged; export it again with `satseg export-onnx`",
        ) from err
