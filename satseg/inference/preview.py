"""Preview PNGs: the mask drawn over the image (2D) or over three orthogonal slices (3D); or, for evaluation
reports, the outlines of a reference and a prediction over the image."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from satseg.atomic import atomic_path

__all__ = [
    "overlay_png", "outline_png", "label_colour", "label_palette",
    "REFERENCE_COLOUR", "PREDICTION_COLOUR", "LEGEND_ROW",
]  # fmt: skip

_COLOURS = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240]],
    dtype=np.float32,
)


def _grey(image: np.ndarray) -> np.ndarray:
    """Scale to 0–255 between the 0.5 and 99.5 percentiles; ``(C, y, x)`` → ``(y, x, 3)`` (RGB kept)."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    scaled = np.clip((image - lo) / max(hi - lo, 1e-8), 0, 1) * 255
    return np.repeat(scaled[:1], 3, 0).transpose(1, 2, 0) if scaled.shape[0] != 3 else scaled.transpose(1, 2, 0)


def _blend(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float], alpha: float = 0.45) -> np.ndarray:
    rgb = _grey(image)
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = labels == value
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * _COLOURS[(int(value) - 1) % len(_COLOURS)]
    picture = PILImage.fromarray(rgb.astype(np.uint8))
    # Physical aspect: stretch rows so that a pixel is as tall as it is wide in mm.
    height = max(1, round(picture.height * spacing[0] / spacing[1]))
    picture = picture.resize((picture.width, height), PILImage.NEAREST)
    return np.asarray(picture)


def _views(image: np.ndarray, masks: list[np.ndarray], spacing: tuple[float, ...]):
    """The 2D picture, or 3D axial/coronal/sagittal slices through the masks' centre of mass, as
    ``(image (C, y, x), [mask (y, x)…], (row mm, column mm))`` (the volume's centre when the masks are empty)."""
    if masks[0].ndim == 2:
        return [(image, masks, tuple(spacing))]
    fg = np.argwhere(np.any([m > 0 for m in masks], axis=0))
    centre = fg.mean(0).round().astype(int) if len(fg) else np.array(masks[0].shape) // 2
    z, y, x = centre
    sz, sy, sx = spacing
    return [
        (image[:, z], [m[z] for m in masks], (sy, sx)),
        (image[:, :, y][:, ::-1], [m[:, y][::-1] for m in masks], (sz, sx)),
        (image[:, :, :, x][:, ::-1], [m[:, :, x][::-1] for m in masks], (sz, sy)),
    ]


LEGEND_ROW = 16  # px per legend entry, below the panels


def _with_legend(picture: PILImage.Image, legend: list[tuple[str, tuple[int, ...]]]) -> PILImage.Image:
    """``picture`` with a strip below it: a colour swatch and the name of each entry, one per row."""
    if not legend:
        return picture
    from PIL import ImageDraw

    width = max(picture.width, 160)
    out = PILImage.new("RGB", (width, picture.height + LEGEND_ROW * len(legend) + 4), (0, 0, 0))
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    for row, (name, colour) in enumerate(legend):
        top = picture.height + 4 + row * LEGEND_ROW
        draw.rectangle((4, top, 15, top + 11), fill=tuple(int(c) for c in colour))
        draw.text((20, top), name, fill=(255, 255, 255))
    return out


def _save_panels(
    panels: list[np.ndarray], path: str | Path, legend: list[tuple[str, tuple[int, ...]]] | None = None
) -> Path:
    """Panels side by side (4 px apart), enlarged to about 256 px tall, with a legend below, written as PNG."""
    height = max(p.shape[0] for p in panels)
    canvas = np.zeros((height, sum(p.shape[1] for p in panels) + 4 * (len(panels) - 1), 3), np.uint8)
    left = 0
    for panel in panels:
        canvas[: panel.shape[0], left : left + panel.shape[1]] = panel
        left += panel.shape[1] + 4
    picture = PILImage.fromarray(canvas)
    scale = max(1, 256 // max(height, 1))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), PILImage.NEAREST)
    picture = _with_legend(picture, legend or [])
    with atomic_path(path, suffix=".png") as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)


def label_colour(value: int) -> tuple[int, int, int]:
    """The colour a label value is drawn in (in previews, and in palette masks: :func:`label_palette`)."""
    if 1 <= int(value) <= len(_COLOURS):
        return tuple(int(c) for c in _COLOURS[int(value) - 1])
    return label_palette(int(value) + 1)[int(value)] if value > 0 else (0, 0, 0)


def label_palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct colours for the label values ``0 … count-1``: black for the background, the preview
    colours, then hues spaced by the golden angle at alternating saturation and brightness (none grey)."""
    colours = [(0, 0, 0), *(tuple(int(c) for c in rgb) for rgb in _COLOURS[: max(0, count - 1)])]
    step = 0
    while len(colours) < count:
        hue = (step * 0.618033988749895) % 1.0
        saturation, value = 0.9 - 0.35 * (step % 2), 0.95 - 0.3 * ((step // 2) % 2)
        colour = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        if colour not in colours:
            colours.append(colour)
        step += 1
    return colours[:count]


def overlay_png(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, ...],
    path: str | Path,
    names: dict[str, int] | None = None,
) -> Path:
    """Write a PNG of ``labels`` over ``image``, with a legend of the label names below.

    Args:
        image: ``(C, *S)`` intensities.
        labels: ``(*S)`` label map on the same grid.
        spacing: mm per array axis, for the panels' aspect ratio.
        path: the PNG to write (atomically).
        names: label name → value (background left out of the legend); None: the values are the names.

    For 3D, three panels show the axial, coronal and sagittal slices through the mask's centre of mass
    (the volume's centre when the mask is empty).
    """
    values = names or {str(int(v)): int(v) for v in np.unique(labels) if v != 0}
    legend = [(name, label_colour(value)) for name, value in sorted(values.items(), key=lambda kv: kv[1]) if value]
    panels = [_blend(im, masks[0], sp) for im, masks, sp in _views(image, [labels], spacing)]
    return _save_panels(panels, path, legend)


REFERENCE_COLOUR = (60, 200, 75)  # green
PREDICTION_COLOUR = (230, 25, 75)  # red


def _outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` that touch a pixel outside it (4-neighbourhood)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _outlines(image: np.ndarray, masks: list[np.ndarray], spacing: tuple[float, float]) -> np.ndarray:
    rgb = _grey(image)
    for mask, colour in zip(masks, (REFERENCE_COLOUR, PREDICTION_COLOUR), strict=False):
        for value in np.unique(mask):
            if value != 0:
                rgb[_outline(mask == value)] = colour
    picture = PILImage.fromarray(rgb.astype(np.uint8))
    height = max(1, round(picture.height * spacing[0] / spacing[1]))
    return np.asarray(picture.resize((picture.width, height), PILImage.NEAREST))


def outline_png(
    image: np.ndarray | None,
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: tuple[float, ...],
    path: str | Path,
) -> Path:
    """Write a PNG of the reference (green) and predicted (red) outlines over ``image``.

    Args:
        image: ``(C, *S)`` intensities, or None to draw on black (e.g. scoring folders of label files).
        reference, prediction: ``(*S)`` label maps on the image's grid; every label value is outlined.
        spacing: mm per array axis.
        path: the PNG to write (atomically).

    For 3D, the slices go through the centre of mass of both masks together, so a missed structure shows.
    """
    if image is None:
        image = np.zeros((1, *reference.shape), np.float32)
    views = _views(image, [reference, prediction], spacing)
    legend = [("reference", REFERENCE_COLOUR), ("prediction", PREDICTION_COLOUR)]
    return _save_panels([_outlines(im, masks, sp) for im, masks, sp in views], path, legend)
