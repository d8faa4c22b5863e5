"""Find the cases of a dataset folder: Medical Segmentation Decathlon, nnU-Net v2, or paired image/mask folders.

* **MSD**: ``imagesTr/``, ``labelsTr/``, optional ``imagesTs/``, ``dataset.json`` with ``modality`` and ``labels``
  (``{"0": "background", "1": "name"}``). Multi-channel cases are one 4D file.
* **nnU-Net v2**: ``imagesTr/CASE_0000.nii.gz`` (one file per channel), ``labelsTr/CASE.nii.gz``, ``dataset.json``
  with ``channel_names``, ``labels`` (``{"background": 0, "name": 1}``) and ``file_ending``.
* **Paired folders**: an image folder (``images/``, ``image/``, ``imgs/``, ``img/``) with one label folder
  (``masks/``, ``mask/``, ``labels/``, ``label/``, ``ground_truth/``, ``gt/``, ``annotations/``, ``1st_manual/``,
  ``manual/``), or any two folders given explicitly. Files pair by stem; a mask may carry one of the suffixes
  ``_segmentation``, ``_mask``, ``_lesion``, ``_seg``, ``_label``. When the names differ otherwise (DRIVE:
  ``21_training.tif`` ↔ ``21_manual1.gif``), files pair by their leading case id, if that id names exactly one
  image and one mask; an id shared by several files is refused rather than guessed. ``Dataset.pairing`` says how
  the pairs were formed. A ``dataset.json`` with ``labels`` is optional (default
  ``{"background": 0, "foreground": 1}``).
* **TIFF stacks** (ISBI-2012 as downloaded): ``X-volume.tif`` multipage stacks of 2D images, each with its
  ``X-labels.tif`` beside it (same number of pages, page for page the same size); every page is one 2D case
  ``X-volume_00``, ``X-volume_01``, … (``Case.page``). A stack without labels (``test-volume.tif``) gives
  unlabelled cases, as ``imagesTs/`` does; a folder holding no labelled stack is refused.

Masks of 2D picture sets are turned into label indices by :func:`mask_to_labels`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satseg.data.io import IMAGE_SUFFIXES, image_stem
from satseg.data.pairing import pair_files
from satseg.errors import DataError

__all__ = ["Case", "Dataset", "discover_dataset", "mask_to_labels", "MODALITIES"]

log = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("ct", "mri", "rgb", "grey")
IMAGE_DIRS: tuple[str, ...] = ("images", "image", "imgs", "img")
LABEL_DIRS: tuple[str, ...] = (
    "masks", "mask", "labels", "label", "ground_truth", "groundtruth", "gt", "annotations", "1st_manual", "manual",
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One case of a dataset.

    Attributes:
        case_id: unique name (file stem, nnU-Net case identifier).
        images: the image file(s): one file holding all channels, or one file per channel (nnU-Net).
        label: the label file, or None for unlabelled (test) cases.
        problem: a structural problem found while listing (e.g. a missing channel file), reported by validation.
        page: TIFF stacks: the page of ``images[0]`` (and of ``label``) this case is, from 0; None otherwise.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    problem: str | None = None
    page: int | None = None


@dataclass(frozen=True)
class Dataset:
    """A dataset folder, as :func:`discover_dataset` understood it.

    Attributes:
        root: the folder.
        layout: ``"msd"``, ``"nnunet"``, ``"paired"`` or ``"stacks"``.
        cases: labelled cases first, then unlabelled ones.
        labels: label name -> value, background 0 included.
        channel_names: one name per channel (None when the layout does not say; validation fills it in).
        modalities: normalisation family per channel (``ct``, ``mri``, ``rgb``), None where unknown.
        mask_pictures: True when labels are 2D picture masks (0/255 or RGB) to convert with :func:`mask_to_labels`.
        pairing: paired folders and stacks: how images and masks were paired (folders or files, rule, an example).
    """

    root: Path
    layout: str
    cases: tuple[Case, ...]
    labels: dict[str, int]
    channel_names: tuple[str, ...] | None
    modalities: tuple[str | None, ...] | None
    mask_pictures: bool = False
    pairing: dict | None = None

    def __post_init__(self) -> None:
        check_label_values(self.labels, self.root / "dataset.json")
        # `case_000.nii.gz` + `case_000.nii`: one id for two files would keep one case and put the id into the
        # splits twice (one case in both train and val of a fold)
        seen: dict[str, Case] = {}
        for case in self.cases:
            if case.case_id in seen:
                first, second = seen[case.case_id].images[0], case.images[0]
                raise DataError(
                    f"`{first}` and `{second}` are both case `{case.case_id}`; every case needs its own name",
                    hint="remove or rename one of them",
                )
            seen[case.case_id] = case


MAX_LABEL = 255
"""Largest label value: masks are stored as 8-bit integers and every later step (train, segment) relies on it."""


def check_label_values(labels: dict[str, int], source: str | Path) -> None:
    """Refuse a label set satseg cannot train on: the values must be 0, 1, …, N-1 (0 the background), ≤ 255.

    A gap (0, 1, 4) would make class 4 an output channel that does not exist (training failed with an
    IndexError); negative values or values above 255 were accepted here and refused by every later step.

    Raises:
        DataError: naming ``source`` and the values.
    """
    values = sorted(int(v) for v in labels.values())
    problem = None
    if len(set(values)) != len(values):
        problem = "two classes share one value"
    elif values and (values[0] < 0 or values[-1] > MAX_LABEL):
        problem = f"values must be 0 to {MAX_LABEL}"
    elif values != list(range(len(values))):
        problem = "the values must be 0, 1, 2, … without gaps (0 the background)"
    if problem is not None:
        raise DataError(
            f"`{source}`: labels {dict(sorted(labels.items(), key=lambda item: item[1]))}: {problem}",
            hint="renumber the classes 0 (background), 1, 2, … in dataset.json and in the label images",
        )


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


def _named_dirs(root: Path, names: tuple[str, ...]) -> list[Path]:
    """The subfolders of ``root`` whose name (any case) is one of ``names``, in the order of ``names``."""
    found = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    return [found[n] for n in names if n in found]


def discover_dataset(
    root: str | Path | None = None, *, image_dir: str | Path | None = None, label_dir: str | Path | None = None
) -> Dataset:
    """Recognise the layout of ``root`` and list its cases.

    Args:
        root: the dataset folder (may be None when ``image_dir`` and ``label_dir`` are given).
        image_dir, label_dir: two folders of paired images and masks, given explicitly (any names). With
            ``root``, ``label_dir`` alone picks the label folder among ``root``'s (a name inside it, e.g.
            DRIVE's ``1st_manual``) and the image folder is found as usual.

    Raises:
        DataError: the folder is missing, empty, or in no known layout (the message says what was looked for),
            or images and masks cannot be paired unambiguously.
    """
    if root is not None and image_dir is None and label_dir is not None:
        root_path = Path(root).resolve()
        inside = root_path / label_dir
        if not Path(label_dir).is_absolute() and inside.is_dir():
            label_dir = inside
        images = _named_dirs(root_path, IMAGE_DIRS)
        if len(images) == 1:
            image_dir = images[0]
    if image_dir is not None or label_dir is not None:
        if image_dir is None or label_dir is None:
            raise DataError("give both --images DIR and --labels DIR", hint="or give the dataset folder alone")
        image_dir, label_dir = Path(image_dir).resolve(), Path(label_dir).resolve()
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise DataError(f"`{folder}` is not a folder", hint="--images and --labels take folders of files")
        dataset = _paired(Path(root).resolve() if root is not None else image_dir.parent, image_dir, label_dir)
        if not dataset.cases:
            raise DataError(f"`{image_dir}` holds no images")
        return dataset
    if root is None:
        raise DataError("no dataset given", hint="give the dataset folder, or --images DIR --labels DIR")
    root = Path(root).resolve()  # cases record absolute paths, valid from any working folder
    if not root.exists():
        raise DataError(f"`{root}` does not exist", hint="give the dataset folder (MSD, nnU-Net or images/+masks/)")
    if not root.is_dir():
        raise DataError(f"`{root}` is not a folder", hint="give the dataset folder, not a file")
    if (root / "imagesTr").is_dir():
        meta = _load_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
        dataset = _nnunet(root, meta) if "channel_names" in meta else _msd(root, meta)
    elif _named_dirs(root, IMAGE_DIRS):
        dataset = _paired(root, *_paired_dirs(root))
    elif not _files(root):
        raise DataError(f"`{root}` is empty", hint="expected imagesTr/ + labelsTr/ + dataset.json, or images/ + masks/")
    else:
        stacks = _stack_files(root)
        if stacks:
            return _stacks(root, stacks)
        inside = [p for p in _files(root) if p.is_dir() and ((p / "imagesTr").is_dir() or _named_dirs(p, IMAGE_DIRS))]
        inside.sort(key=lambda p: not p.name.lower().startswith("train"))  # the training set first
        if inside:
            names = " or ".join(f"`{p}`" for p in inside[:3])
            raise DataError(
                f"`{root}` is not a dataset folder, but {names} inside it may be",
                hint=f"did you mean `satseg preprocess {inside[0]}`?",
            )
        raise DataError(
            f"`{root}` is not a dataset folder: found neither `imagesTr/` nor `images/` nor `X-volume.tif` stacks",
            hint="expected imagesTr/ + labelsTr/ (+ dataset.json), images/ + masks/ (or image/ + label/), "
            "X-volume.tif + X-labels.tif stacks, or give --images DIR --labels DIR",
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


def _paired_dirs(root: Path) -> tuple[Path, Path]:
    """The image and label folders of a paired dataset; refuses when several could be the labels."""
    images = _named_dirs(root, IMAGE_DIRS)
    labels = _named_dirs(root, LABEL_DIRS)
    names = ", ".join(f"{p.name}/" for p in images)
    if len(images) > 1:
        raise DataError(f"`{root}` has several image folders ({names})", hint="pick one: --images DIR --labels DIR")
    if not labels:
        raise DataError(
            f"`{root}` has `{images[0].name}/` but no label folder ({', '.join(f'{n}/' for n in LABEL_DIRS[:4])}, …)",
            hint="add the masks folder, or give --images DIR --labels DIR",
        )
    if len(labels) > 1:
        found = ", ".join(f"{p.name}/" for p in labels)
        # a folder of field-of-view masks (DRIVE's mask/: the round retina) is never suggested as the labels
        masks = [p for p in labels if field_of_view_share(p) is None]
        views = [p for p in labels if p not in masks]
        note = "".join(
            f"; {p.name}/ holds field-of-view masks ({100 * field_of_view_share(p):.0f} % of each image), not labels"
            for p in views
        )
        choice = " or ".join(f"--labels {p.name}" for p in (masks or labels)[:2])
        raise DataError(
            f"`{root}` has several folders that could hold the labels ({found}){note}",
            hint=f"pick one: satseg preprocess {root} {choice} -o OUT",
        )
    return images[0], labels[0]


FIELD_OF_VIEW_SHARE = 0.5


def field_of_view_share(folder: Path) -> float | None:
    """The foreground share of the first mask in ``folder`` when it looks like a field-of-view mask (one
    region covering more than half of the picture, e.g. DRIVE's ``mask/``); None otherwise."""
    from PIL import Image, UnidentifiedImageError

    pictures = [p for p in _images(folder) if p.suffix.lower() in (".gif", ".png", ".bmp", ".tif", ".tiff", ".jpg")]
    if not pictures:
        return None
    try:
        with Image.open(pictures[0]) as picture:
            values = np.asarray(picture.convert("L"))
    except (OSError, UnidentifiedImageError):
        return None
    share = float((values > 0).mean())
    return share if share > FIELD_OF_VIEW_SHARE else None


def _paired(root: Path, image_dir: Path, mask_dir: Path) -> Dataset:
    images, masks = _images(image_dir), _images(mask_dir)
    pairs, rule = pair_files(images, masks, image_dir, mask_dir)
    cases = []
    for image in images:
        stem = image_stem(image)
        mask = pairs.get(image)
        problem = None if mask is not None else f"no mask named `{stem}[suffix].*` in {mask_dir.name}/"
        cases.append(Case(stem, (image,), mask, problem))
    unused = sorted(set(masks) - set(pairs.values()))
    if unused:
        log.warning("%d mask(s) in `%s` have no image (e.g. `%s`); ignored", len(unused), mask_dir, unused[0].name)
    example = next(iter(pairs.items()), None)
    pairing = {
        "images": str(image_dir),
        "labels": str(mask_dir),
        "by": rule,
        "pairs": len(pairs),
        "example": [example[0].name, example[1].name] if example else None,
        "mask_values": _mask_mapping(example[1]) if example else None,
        "ignored_folders": sorted(
            f"{p.name}/" for p in _files(root) if p.is_dir() and p.resolve() not in (image_dir, mask_dir)
        ),
    }
    if example:
        log.info("paired %d image(s) in `%s/` with masks in `%s/` by %s (e.g. `%s` ↔ `%s`)", len(pairs),
                 image_dir.name, mask_dir.name, rule, example[0].name, example[1].name)  # fmt: skip
    return Dataset(root, "paired", tuple(cases), _picture_labels(root), None, None, mask_pictures=True, pairing=pairing)


def _picture_labels(root: Path) -> dict[str, int]:
    """The labels of a picture set: ``dataset.json``'s ``labels`` if it has one, else background 0, foreground 1."""
    meta_path = root / "dataset.json"
    meta = _load_json(meta_path) if meta_path.is_file() else {}
    if "labels" not in meta:
        return {"background": 0, "foreground": 1}
    raw = _as_mapping(meta, "labels", meta_path, '"labels": {"background": 0, "lesion": 1}')
    first = next(iter(raw), "0")
    try:
        return _labels_from_msd(meta, root) if str(first).isdigit() else {str(k): int(v) for k, v in raw.items()}
    except (TypeError, ValueError) as err:
        raise DataError(f"`{meta_path}`: `labels` must map names to integer values: {err}") from err


_STACK_ENDINGS = (".tif", ".tiff")
_VOLUME, _LABELS = "volume", "labels"


def _stack_files(root: Path) -> list[Path]:
    """The image stacks of a folder: ``*volume.tif`` files (ISBI-2012: ``train-volume.tif``, ``test-volume.tif``)."""
    return [
        p for p in _images(root) if p.suffix.lower() in _STACK_ENDINGS and image_stem(p).lower().endswith(_VOLUME)
    ]


def _stack_label(volume: Path) -> Path | None:
    """``X-labels.tif`` (or ``.tiff``) beside ``X-volume.tif``, if there is one."""
    stem = image_stem(volume)[: -len(_VOLUME)]
    found = [volume.parent / f"{stem}{_LABELS}{ending}" for ending in _STACK_ENDINGS]
    return next((p for p in found if p.is_file()), None)


def _pages(stack: Path) -> list[tuple[int, int]]:
    from satseg.data.formats import picture_pages

    try:
        return picture_pages(stack)
    except Exception as err:  # noqa: BLE001 - pillow raises many kinds for a broken file: one line naming it
        raise DataError(f"`{stack}` cannot be read as a TIFF stack: {err}", hint="download or export it again") from err


def _stacks(root: Path, volumes: list[Path]) -> Dataset:
    """The cases of ``X-volume.tif`` (+ ``X-labels.tif``) stacks, one 2D case per page."""
    cases: list[Case] = []
    pairing: dict | None = None
    labelled_pages = 0
    for volume in volumes:
        label = _stack_label(volume)
        pages = _pages(volume)
        if label is not None:
            label_pages = _pages(label)
            if len(label_pages) != len(pages):
                raise DataError(
                    f"`{label}` has {len(label_pages)} page(s) but `{volume.name}` has {len(pages)}: "
                    "each image page needs its label page",
                    hint=f"use the labels made for `{volume.name}`",
                )
            for k, (size, label_size) in enumerate(zip(pages, label_pages, strict=True)):
                if size != label_size:
                    raise DataError(
                        f"`{label}`: page {k} is {label_size[0]}×{label_size[1]} but page {k} of `{volume.name}` "
                        f"is {size[0]}×{size[1]} (height × width)",
                        hint=f"use the labels made for `{volume.name}`",
                    )
            labelled_pages += len(pages)
            if pairing is None:
                pairing = {
                    "images": str(volume),
                    "labels": str(label),
                    "by": "page",
                    "pairs": 0,
                    "example": [f"{volume.name} page 0", f"{label.name} page 0"],
                    "mask_values": _mask_mapping(label, page=0),
                    "ignored_folders": sorted(f"{p.name}/" for p in _files(root) if p.is_dir()),
                }
        digits = max(2, len(str(len(pages) - 1)))
        stem = image_stem(volume)
        cases += [Case(f"{stem}_{k:0{digits}d}", (volume,), label, page=k) for k in range(len(pages))]
    if pairing is None:
        names = ", ".join(f"`{v.name}`" for v in volumes)
        raise DataError(
            f"`{root}`: {names} hold(s) images without labels (no `{image_stem(volumes[0])[: -len(_VOLUME)]}"
            f"{_LABELS}.tif` beside it); there is nothing to train on",
            hint="put the labels stack beside it (ISBI-2012: train-volume.tif with train-labels.tif)",
        )
    pairing["pairs"] = labelled_pages
    cases.sort(key=lambda c: c.label is None)  # labelled cases first
    return Dataset(root, "stacks", tuple(cases), _picture_labels(root), None, None, mask_pictures=True, pairing=pairing)


def _mask_mapping(mask: Path, page: int | None = None) -> str | None:
    """How the example mask's values become labels, in words (e.g. ``255 → 1``), for the preprocess summary."""
    from satseg.data.io import read_image

    try:
        array = read_image(mask, page).array
    except Exception:  # noqa: BLE001 - a summary line only; validation reports unreadable masks properly
        return None
    if array.ndim == 2:
        array = array[None]
    labels = mask_to_labels(array)
    before = sorted(np.unique(array).tolist())
    after = sorted(np.unique(labels).tolist())
    if array.shape[0] > 1 and not all(np.array_equal(array[0], array[c]) for c in range(1, array.shape[0])):
        return "colour mask: any non-zero colour → 1"
    if before == after:
        return f"values kept as labels ({', '.join(map(str, after[:6]))})"
    return ", ".join(f"{b} → {a}" for b, a in zip(before, after, strict=False))


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
