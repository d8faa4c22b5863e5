"""The shipped default models in ``models/`` and how a model argument is resolved.

Each shipped model is a folder ``models/<name>/`` holding ``checkpoint.pt`` (a satseg checkpoint),
``card.md`` (the model card) and ``card.json`` (its key figures, read by ``satseg models``).

The repository keeps them in its top-level ``models/``; an installed wheel carries them as package data
in ``satseg/models/`` (see ``setup.py``). :data:`MODELS_DIR` is the packaged folder when there is one,
else the source checkout's ``models/`` beside the package (editable install, ``PYTHONPATH``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import satseg
from satseg.errors import CheckpointError

__all__ = ["MODELS_DIR", "list_shipped_models", "resolve_model_path", "default_model_for", "shipped_models_for"]


def _models_dir() -> Path:
    package = Path(satseg.__file__).resolve().parent
    packaged = package / "models"
    return packaged if packaged.is_dir() else package.parent / "models"


MODELS_DIR = _models_dir()
"""Where the shipped models are: ``satseg/models/`` in an installed wheel, else the checkout's ``models/``."""


def list_shipped_models(models_dir: Path | None = None) -> list[dict[str, Any]]:
    """The shipped models' cards (``card.json``), each with its ``name`` and ``path``, sorted by name.

    Args:
        models_dir: the folder of shipped models; default :data:`MODELS_DIR`.

    Raises:
        CheckpointError: a ``card.json`` is not a JSON object.
    """
    models_dir = Path(MODELS_DIR if models_dir is None else models_dir)
    cards = []
    if models_dir.is_dir():
        for card in sorted(models_dir.glob("*/card.json")):
            try:
                data = json.loads(card.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CheckpointError(f"`{card}`: broken model card: {err}") from err
            if not isinstance(data, dict):
                raise CheckpointError(f"`{card}`: a model card must be a JSON object")
            data.update(name=card.parent.name, path=str(card.parent / "checkpoint.pt"))
            cards.append(data)
    return cards


def resolve_model_path(model: str | Path, models_dir: Path | None = None) -> Path:
    """A run folder, checkpoint or ONNX file as given, or a shipped model's checkpoint by name.

    Args:
        model: a path, or the name of a folder in ``models_dir`` (default :data:`MODELS_DIR`).
    """
    models_dir = Path(MODELS_DIR if models_dir is None else models_dir)
    path = Path(model)
    if path.exists():
        return path
    shipped = models_dir / str(model) / "checkpoint.pt"
    if shipped.is_file():
        return shipped
    names = [c["name"] for c in list_shipped_models(models_dir)]
    raise CheckpointError(
        f"`{model}`: no such run folder, model file or shipped model",
        hint=f"shipped models: {', '.join(names) or 'none'}; or pass a run folder from `satseg train`",
    )


def shipped_models_for(spatial_dims: int, num_channels: int, models_dir: Path | None = None) -> list[dict[str, Any]]:
    """The shipped models whose cards say they take ``spatial_dims``-D images with ``num_channels`` channels.

    Whether a scan fits one of them otherwise (modality, field of view…) is :mod:`satseg.inference.input_guard`'s
    question, answered from the model's plan.
    """
    cards = list_shipped_models(models_dir)
    return [c for c in cards if c.get("spatial_dims") == spatial_dims and c.get("num_channels") == num_channels]


def default_model_for(spatial_dims: int, num_channels: int, models_dir: Path | None = None) -> dict[str, Any]:
    """The first shipped model whose card says it takes ``spatial_dims``-D images with ``num_channels`` channels.

    Args:
        spatial_dims: 2 or 3.
        num_channels: channels of the image.
        models_dir: the folder of shipped models; default :data:`MODELS_DIR`.
    """
    for card in shipped_models_for(spatial_dims, num_channels, models_dir):
        return card
    raise CheckpointError(
        f"no shipped model takes {spatial_dims}D images with {num_channels} channel(s)",
        hint="pass --model with a run folder or an exported .onnx file",
    )
