"""What satseg stores in an exported ONNX file's metadata, and how it is read back.

The run configuration (model, preprocessing plan, label names) travels as JSON under
:data:`ONNX_CONFIG_KEY`, so ``satseg segment --model model.onnx`` needs nothing but the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from satseg import __version__
from satseg.errors import CheckpointError

__all__ = ["ONNX_CONFIG_KEY", "model_metadata", "read_onnx_metadata", "onnx_run_config"]

ONNX_CONFIG_KEY = "satseg_config"
"""ONNX metadata key holding the run configuration (model, plan) as JSON."""


def model_metadata(config: dict[str, Any]) -> dict[str, str]:
    """The string metadata an export of a run with configuration ``config`` carries."""
    return {
        ONNX_CONFIG_KEY: json.dumps(config),
        "labels": json.dumps(config["plan"]["labels"]),
        "satseg_version": __version__,
    }


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict.

    Raises:
        CheckpointError: when the file is missing or is not an ONNX model.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model `{path}` does not exist")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as err:
        raise CheckpointError(f"cannot read ONNX model `{path}`: {err}") from err
    return {p.key: p.value for p in proto.metadata_props}


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
