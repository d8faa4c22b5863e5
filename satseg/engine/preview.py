"""Preview PNGs: the mask drawn over the image (2D) or over three orthogonal slices (3D)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from satseg.atomic import atomic_path

__all__ = ["overlay_png"]

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


def overlay_png(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...], path: str | Path) -> Path:
    """Write a PNG of ``labels`` over ``image``.

    Args:
        image: ``(C, *S)`` intensities.
        labels: ``(*S)`` label map on the same grid.
        spacing: mm per array axis, for the panels' aspect ratio.
        path: the PNG to write (atomically).

    For 3D, three panels show the axial, coronal and sagittal slices through the mask's centre of mass
    (the volume's centre when the mask is empty).
    """
    if labels.ndim == 2:
        panels = [_blend(image, labels, spacing)]
    else:
        fg = np.argwhere(labels > 0)
        centre = fg.mean(0).round().astype(int) if len(fg) else np.array(labels.shape) // 2
        z, y, x = centre
        sz, sy, sx = spacing
        panels = [
            _blend(image[:, z], labels[z], (sy, sx)),
            _blend(image[:, :, y][:, ::-1], labels[:, y][::-1], (sz, sx)),
            _blend(image[:, :, :, x][:, ::-1], labels[:, :, x][::-1], (sz, sy)),
        ]
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
    with atomic_path(path, suffix=".png") as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)
