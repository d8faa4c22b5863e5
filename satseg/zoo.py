"""The shipped default models in ``models/`` and how a model argument is resolved.

Each shipped model is a folder ``models/<name>/`` holding ``checkpoint.pt`` (a satseg checkpoint),
``card.md`` (the model card) and ``card.json`` (its key figures, read by ``satseg models``). Beside them,
``frontier.json`` is the measured frontier of Dice against inference memory (width x gate, written by
``benchmarks/frontier.py --report``), from which ``satseg params --budget`` picks what fits a budget.

The repository keeps them in its top-level ``models/``; an installed wheel carries them as package data
in ``satseg/models/`` (see ``setup.py``). :data:`MODELS_DIR` is the packaged folder when there is one,
else the source checkout's ``models/`` beside the package (editable install, ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import satseg
from satseg.errors import CheckpointError

__all__ = [
    "MODELS_DIR",
    "list_shipped_models",
    "resolve_model_path",
    "default_model_for",
    "shipped_models_for",
    "load_frontier",
    "fit_budget",
]


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


FRONTIER_FIELDS = ("dataset", "dims", "width", "variant", "train_options", "dice", "dice_std", "seeds", "peak_mib")
"""What every point of ``frontier.json`` must give (it may give more: seconds, params, skip MiB, levels)."""


def load_frontier(path: Path | None = None) -> dict[str, Any]:
    """The measured frontier (``models/frontier.json``): ``{"reference": {dims: side}, "points": [...]}``.

    Raises:
        CheckpointError: the file is missing, is not JSON, or a point lacks one of :data:`FRONTIER_FIELDS`.
    """
    path = Path(MODELS_DIR / "frontier.json" if path is None else path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"`{path}`: cannot read the measured frontier: {err}") from err
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list) or not all(isinstance(p, dict) and set(FRONTIER_FIELDS) <= set(p) for p in points):
        raise CheckpointError(f"`{path}`: every frontier point needs {', '.join(FRONTIER_FIELDS)}")
    for point in points:
        numbers = [point[k] for k in ("dims", "width", "dice", "dice_std", "seeds", "peak_mib")]
        # optional: the peak of `--low-memory`, and the U-Net's levels
        numbers += [point[k] for k in ("peak_low_memory_mib", "levels") if point.get(k) is not None]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise CheckpointError(f"`{path}`: a frontier point has a non-numeric figure: {point}")
    return data


STILL_RISING = 0.005
"""Advice from a point whose Dice rose more than this between half and full training budget is provisional."""


def _best_dice(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The point of highest mean Dice; on a tie the one of smaller peak."""
    return max(points, key=lambda p: (p["dice"], -p["peak_mib"]), default=None)


def _still_rising(point: dict[str, Any] | None) -> float | None:
    """The point's rise of Dice from half to full training budget, when it exceeds :data:`STILL_RISING`."""
    rise = None if point is None else point.get("half_to_full")
    return rise if isinstance(rise, (int, float)) and rise > STILL_RISING else None


def fit_budget(
    frontier: dict[str, Any], budget_mib: float, dims: int | None = None, *, low_memory: bool = False
) -> list[dict[str, Any]]:
    """Per measured dataset, the width x gate with the best mean Dice whose inference peak fits ``budget_mib``.

    The peak is the frontier's own measure (one CPU forward of its reference volume), so a budget means
    memory for that volume; each row also names the best plain (``org``) network that fits, so the gain of
    gating over narrowing is plain to see. A dataset where nothing fits gets ``best: None`` and the
    smallest peak measured. When the best point's Dice was still rising at the end of training (by more
    than :data:`STILL_RISING` from half to full budget), ``still_rising`` holds that rise: provisional advice.

    Args:
        frontier: from :func:`load_frontier`.
        budget_mib: peak inference memory allowed, MiB.
        dims: only datasets of this many spatial dimensions (``None``: all).
        low_memory: judge by the peak of ``segment --low-memory`` (``peak_low_memory_mib``), which
            ONNX Runtime's arena does not round up; the rows' ``peak_mib`` is then that peak.

    Raises:
        CheckpointError: ``low_memory`` and the frontier has no such peaks.
    """
    if low_memory:
        measured = [p for p in frontier["points"] if isinstance(p.get("peak_low_memory_mib"), (int, float))]
        if not measured:
            raise CheckpointError(
                "the measured frontier has no --low-memory peaks",
                hint="measure them: python benchmarks/frontier.py --cost --report",
            )
        frontier = frontier | {"points": [p | {"peak_mib": p["peak_low_memory_mib"]} for p in measured]}
    rows = []
    datasets = dict.fromkeys(p["dataset"] for p in frontier["points"] if dims in (None, p["dims"]))
    for dataset in datasets:
        points = [p for p in frontier["points"] if p["dataset"] == dataset]
        fits = [p for p in points if p["peak_mib"] <= budget_mib]
        best = _best_dice(fits)
        rows.append({
            "dataset": dataset,
            "dims": points[0]["dims"],
            "reference_side": frontier.get("reference", {}).get(str(points[0]["dims"])),
            "budget_mib": budget_mib,
            "best": best,
            "best_org": _best_dice([p for p in fits if p["variant"] == "org"]),
            "smallest_peak_mib": min(p["peak_mib"] for p in points),
            "still_rising": _still_rising(best),
            "low_memory": low_memory,
        })  # fmt: skip
    return rows
