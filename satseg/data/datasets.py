"""Find the cases of a dataset folder: Medical Segmentation Decathlon, nnU-Net v2, or paired image/mask folders.

* **MSD**: ``imagesTr/``, ``labelsTr/``, optional ``imagesTs/``, ``dataset.json`` with ``modality`` and ``labels``
  (``{"0": "background", "1": "name"}``). Multi-channel cases are one 4D file.
* **nnU-Net v2**: ``imagesTr/CASE_0000.nii.gz`` (one file per channel), ``labelsTr/CASE.nii.gz``, ``dataset.json``
  with ``channel_names``, ``labels`` (``{"background": 0, "name": 1}``) and ``file_ending``.
* **Paired folders**: ``images/`` with ``masks/`` (or ``labels/``), matched by file stem; a mask may carry one of
  the suffixes ``_segmentation``, ``_mask``, ``_lesion``, ``_seg``, ``_label``. A ``dataset.json`` with ``labels``
  is optional (default ``{"background": 0, "foreground": 1}``).

Masks of 2D picture sets are turned into label indices by :func:`mask_to_labels`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satseg.data.io import IMAGE_SUFFIXES, image_stem
from satseg.errors import DataError

__all__ = ["Case", "Dataset", "discover_dataset", "mask_to_labels", "MASK_SUFFIXES", "MODALITIES"]

log = logging.getLogger(__name__)

MASK_SUFFIXES: tuple[str, ...] = ("_segmentation", "_mask", "_lesion", "_seg", "_label")
MODALITIES: tuple[str, ...] = ("ct", "mri", "rgb")


@dataclass(frozen=True)
class Case:
    """One case of a dataset.

    Attributes:
        case_id: unique name (file stem, nnU-Net case identifier).
        images: the image file(s): one file holding all channels, or one file per channel (nnU-Net).
        label: the label file, or None for unlabelled (test) cases.
        problem: a structural problem found while listing (e.g. a missing channel file), reported by validation.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    problem: str | None = None


@dataclass(frozen=True)
class Dataset:
    """A dataset folder, as :func:`discover_dataset` understood it.

    Attributes:
        root: the folder.
        layout: ``"msd"``, ``"nnunet"`` or ``"paired"``.
        cases: labelled cases first, then unlabelled ones.
        labels: label name -> value, background 0 included.
        channel_names: one name per channel (None when the layout does not say; validation fills it in).
        modalities: normalisation family per channel (``ct``, ``mri``, ``rgb``), None where unknown.
        mask_pictures: True when labels are 2D picture masks (0/255 or RGB) to convert with :func:`mask_to_labels`.
    """

    root: Path
    layout: str
    cases: tuple[Case, ...]
    labels: dict[str, int]
    channel_names: tuple[str, ...] | None
    modalities: tuple[str | None, ...] | None
    mask_pictures: bool = False


def _modality_of(name: str) -> str:
    """Map a dataset.json channel description to a normalisation family."""
    low = str(name).lower()
    if low == "ct":
        return "ct"
    if low in ("rgb", "rgb_to_0_1", "rescale_to_0_1", "noNorm".lower(), "red", "green", "blue"):
        return "rgb"
    return "mri"


def _load_json(path: Path) -> dict:
    """``dataset.json`` as a dict; anything else (not UTF-8, not JSON, a list) is a one-line DataError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(
            f"`{path}` is not UTF-8 text: {err.reason} at byte {err.start}", hint="save it as UTF-8"
        ) from err
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"`{path}` is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DataError(f"`{path}` must hold a JSON object, not a {type(data).__name__}", hint='e.g. {"labels": {...}}')
    return data


def _as_mapping(meta: dict, key: str, path: Path, example: str) -> dict:
    value = meta.get(key, {})
    if not isinstance(value, dict):
        raise DataError(
            f"`{path}`: `{key}` must be a JSON object, not a {type(value).__name__}", hint=f"e.g. {example}"
        )
    return value


def _channels_in_order(channels: dict, key: str, path: Path) -> list[str]:
    """Channel names ordered by their integer keys (``{"0": "CT"}``)."""
    try:
        ordered = sorted(channels.items(), key=lambda kv: int(kv[0]))
    except ValueError as err:
        raise DataError(f"`{path}`: the keys of `{key}` must be channel numbers 0, 1, …: {err}") from err
    return [str(v) for _, v in ordered]


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (p.is_file() or p.is_dir()))


def _images(folder: Path) -> list[Path]:
    return [p for p in _files(folder) if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)]


def discover_dataset(root: str | Path) -> Dataset:
    """Recognise the layout of ``root`` and list its cases.

    Args:
        root: the dataset folder.

    Raises:
        DataError: the folder is missing, empty, or in no known layout (the message says what was looked for).
    """
    root = Path(root).resolve()  # cases record absolute paths, valid from any working folder
    if not root.exists():
        raise DataError(f"`{root}` does not exist", hint="give the dataset folder (MSD, nnU-Net or images/+masks/)")
    if not root.is_dir():
        raise DataError(f"`{root}` is not a folder", hint="give the dataset folder, not a file")
    if (root / "imagesTr").is_dir():
        meta = _load_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
        dataset = _nnunet(root, meta) if "channel_names" in meta else _msd(root, meta)
    elif (root / "images").is_dir():
        dataset = _paired(root)
    elif not _files(root):
        raise DataError(f"`{root}` is empty", hint="expected imagesTr/ + labelsTr/ + dataset.json, or images/ + masks/")
    else:
        raise DataError(
            f"`{root}` is not a dataset folder: found neither `imagesTr/` nor `images/`",
            hint="expected imagesTr/ + labelsTr/ (+ dataset.json) or images/ + masks/",
        )
    if not dataset.cases:
        raise DataError(f"`{root}` holds no images in its {dataset.layout} layout")
    return dataset


def _labels_from_msd(meta: dict, root: Path) -> dict[str, int]:
    raw = meta.get("labels")
    if not raw:
        raise DataError(f"`{root / 'dataset.json'}` has no `labels`", hint='add e.g. "labels": {"0": "background"}')
    raw = _as_mapping(meta, "labels", root / "dataset.json", '"labels": {"0": "background", "1": "liver"}')
    try:
        return {str(name): int(value) for value, name in raw.items()}
    except (TypeError, ValueError) as err:
        raise DataError(f"`{root / 'dataset.json'}`: `labels` must map values to names: {err}") from err


def _msd(root: Path, meta: dict) -> Dataset:
    if not meta:
        raise DataError(f"`{root}` has `imagesTr/` but no readable `dataset.json`", hint="add the MSD dataset.json")
    labels = _labels_from_msd(meta, root)
    where = root / "dataset.json"
    names = _channels_in_order(_as_mapping(meta, "modality", where, '"modality": {"0": "CT"}'), "modality", where)
    cases: list[Case] = []
    for image in _images(root / "imagesTr"):
        label = root / "labelsTr" / image.name
        problem = None if label.is_file() else f"no label `{label.name}` in labelsTr/"
        cases.append(Case(image_stem(image), (image,), label, problem))
    cases += [Case(image_stem(p), (p,), None) for p in _images(root / "imagesTs")]
    return Dataset(
        root, "msd", tuple(cases), labels, tuple(names) or None, tuple(_modality_of(n) for n in names) or None
    )


def _nnunet(root: Path, meta: dict) -> Dataset:
    where = root / "dataset.json"
    channels = _as_mapping(meta, "channel_names", where, '"channel_names": {"0": "CT"}')
    names = _channels_in_order(channels, "channel_names", where)
    try:
        labels = {str(k): int(v) for k, v in meta["labels"].items()}
    except (KeyError, AttributeError, TypeError, ValueError) as err:
        raise DataError(f"`{where}`: `labels` must map names to values", hint='"labels": {"background": 0}') from err
    ending = str(meta.get("file_ending", ".nii.gz"))
    if ending.lower() not in IMAGE_SUFFIXES:  # it becomes part of every path read: no `../` tricks
        raise DataError(f"`{where}`: `file_ending` {ending!r} is not an image ending", hint=f"one of {IMAGE_SUFFIXES}")

    def group(folder: Path, labelled: bool) -> list[Case]:
        found: dict[str, dict[int, Path]] = {}
        for path in _files(folder):
            stem = path.name[: -len(ending)] if path.name.endswith(ending) else None
            if stem is None or len(stem) < 6 or stem[-5] != "_" or not stem[-4:].isdigit():
                continue
            found.setdefault(stem[:-5], {})[int(stem[-4:])] = path
        out = []
        for case_id, files in sorted(found.items()):
            missing = [f"{case_id}_{c:04d}{ending}" for c in range(len(names)) if c not in files]
            label = root / "labelsTr" / f"{case_id}{ending}" if labelled else None
            problem = f"missing channel file(s) {', '.join(missing)}" if missing else None
            if label is not None and not label.is_file() and problem is None:
                problem = f"no label `{label.name}` in labelsTr/"
            images = tuple(files[c] for c in sorted(files))
            out.append(Case(case_id, images, label, problem))
        return out

    cases = group(root / "imagesTr", True) + group(root / "imagesTs", False)
    return Dataset(root, "nnunet", tuple(cases), labels, tuple(names), tuple(_modality_of(n) for n in names))


def _paired(root: Path) -> Dataset:
    mask_dir = next((root / n for n in ("masks", "labels", "ground_truth") if (root / n).is_dir()), None)
    if mask_dir is None:
        raise DataError(f"`{root}` has `images/` but no `masks/` or `labels/` folder")
    masks: dict[str, Path] = {}
    for mask in _images(mask_dir):
        stem = image_stem(mask)
        for suffix in MASK_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        masks[stem] = mask
    cases = []
    for image in _images(root / "images"):
        stem = image_stem(image)
        mask = masks.pop(stem, None)
        problem = None if mask is not None else f"no mask named `{stem}[suffix].*` in {mask_dir.name}/"
        cases.append(Case(stem, (image,), mask, problem))
    if masks:
        log.warning("%d mask(s) in `%s` have no image (e.g. `%s`); ignored", len(masks), mask_dir, next(iter(masks)))
    meta_path = root / "dataset.json"
    meta = _load_json(meta_path) if meta_path.is_file() else {}
    labels = {"background": 0, "foreground": 1}
    if "labels" in meta:
        raw = _as_mapping(meta, "labels", meta_path, '"labels": {"background": 0, "lesion": 1}')
        first = next(iter(raw), "0")
        try:
            labels = _labels_from_msd(meta, root) if str(first).isdigit() else {str(k): int(v) for k, v in raw.items()}
        except (TypeError, ValueError) as err:
            raise DataError(f"`{meta_path}`: `labels` must map names to integer values: {err}") from err
    return Dataset(root, "paired", tuple(cases), labels, None, None, mask_pictures=True)


def mask_to_labels(array: np.ndarray) -> np.ndarray:
    """Convert a 2D picture mask ``(C, y, x)`` into label indices ``(y, x)``.

    Rules: grey masks whose values are only 0 and 255 become 0/1; other grey masks are kept as label indices; RGB
    masks whose three channels are equal are treated as grey; other RGB (colour) masks become 1 wherever any channel
    is non-zero (binary: one foreground class).

    Args:
        array: the mask as read, ``(1, y, x)`` or ``(3, y, x)``.
    """
    if array.shape[0] > 1 and not all(np.array_equal(array[0], array[c]) for c in range(1, array.shape[0])):
        return np.any(array != 0, axis=0).astype(np.uint8)
    grey = array[0]
    values = np.unique(grey)
    if values.size <= 2 and values.max(initial=0) == 255 and set(values.tolist()) <= {0, 255}:
        return (grey == 255).astype(np.uint8)
    return grey
