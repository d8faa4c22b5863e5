"""Pairing images with their masks in two folders: by file name, or else by a case id in the names.

``case.png`` ↔ ``case_mask.png`` (a mask suffix in :data:`MASK_SUFFIXES` is dropped); when names differ, the
leading case id (``21_training.tif`` ↔ ``21_manual1.gif``, DRIVE) or the first number in the name, whichever
pairs more images and names no image or mask twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from satseg.data.io import image_stem
from satseg.errors import DataError

__all__ = ["MASK_SUFFIXES", "mask_stem", "pair_files"]

MASK_SUFFIXES: tuple[str, ...] = ("_segmentation", "_mask", "_lesion", "_seg", "_label")
"""Endings of mask names dropped before pairing (``case_seg.png`` pairs with ``case.png``)."""


def mask_stem(mask: Path) -> str:
    stem = image_stem(mask)
    for suffix in MASK_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _leading_token(stem: str) -> str | None:
    """``21_training`` → ``21``; ``case-07 left`` → ``case``: the stem up to its first separator."""
    token = re.split(r"[_\-. ]", stem, maxsplit=1)[0]
    return token or None


def _first_number(stem: str) -> str | None:
    """``case_007_img`` → ``7``: the first run of digits, without leading zeros."""
    match = re.search(r"\d+", stem)
    return str(int(match.group())) if match else None


_CASE_IDS: tuple[tuple[str, Callable[[str], str | None]], ...] = (
    ("leading case id", _leading_token),
    ("first number in the name", _first_number),
)


def _pair_by(key: Callable[[str], str | None], images: list[Path], masks: list[Path]):
    """Pairs of images and masks that share ``key``; and the keys that name several images or masks."""
    by_key: dict[str, tuple[list[Path], list[Path]]] = {}
    for image in images:
        if (k := key(image_stem(image))) is not None:
            by_key.setdefault(k, ([], []))[0].append(image)
    for mask in masks:
        if (k := key(mask_stem(mask))) is not None and k in by_key:
            by_key[k][1].append(mask)
    pairs = {ims[0]: ms[0] for ims, ms in by_key.values() if len(ims) == 1 and len(ms) == 1}
    ambiguous = {k: (ims, ms) for k, (ims, ms) in by_key.items() if ms and (len(ims) > 1 or len(ms) > 1)}
    return pairs, ambiguous


def pair_files(images: list[Path], masks: list[Path], image_dir: Path, mask_dir: Path) -> tuple[dict, str]:
    """Pair images with masks: by name, or else by a case id when that pairs more (and unambiguously)."""
    named = {mask_stem(m): m for m in masks}
    pairs = {im: named[image_stem(im)] for im in images if image_stem(im) in named}
    rule = "file name"
    if len(pairs) < len(images):
        clashes = []
        for name, key in _CASE_IDS:
            by_id, ambiguous = _pair_by(key, images, masks)
            if ambiguous:
                clashes.append((name, ambiguous))
            elif len(by_id) > len(pairs):
                return by_id, name
        if clashes and not pairs:
            name, ambiguous = clashes[0]
            k, (ims, ms) = next(iter(ambiguous.items()))
            files = ", ".join(f"`{p.name}`" for p in [*ims, *ms][:4])
            raise DataError(
                f"`{image_dir}` and `{mask_dir}`: cannot pair images with masks: their names differ, and by "
                f"{name} `{k}` names {len(ims)} image(s) and {len(ms)} mask(s) ({files})",
                hint="give each image one mask with the same name or the same leading case id",
            )
    return pairs, rule
