"""Synthetic segmentation data: the demo's dataset and the tests' training tasks.

Each case holds two structures of varied shape (an ellipsoid of random size and orientation, and a
smaller blob touching it) with their own intensities, over a smooth background, multiplied by a
smooth intensity inhomogeneity (bias field) and with Gaussian noise: a small, realistic-looking
task that a segmentation network must learn and thresholding alone does not solve.

:func:`write_synthetic_isbi` writes an electron-microscopy-like stand-in for ISBI-2012 as downloaded:
cells as Voronoi regions separated by dark membranes, with texture, blur and noise, in multipage TIFF stacks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["synthetic_case", "write_synthetic_msd", "synthetic_cells", "write_synthetic_isbi"]

LABELS = {"background": 0, "core": 1, "rim": 2}


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def synthetic_case(
    rng: np.random.Generator, shape: Sequence[int], noise: float = 0.35, two_structures: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and label map.

    Args:
        rng: the random generator (one case per call).
        shape: spatial shape, 2D or 3D, in array order.
        noise: standard deviation of the additive noise, relative to the structure contrast.
        two_structures: add the second structure (label 2); else a binary task.

    Returns:
        ``image`` float32 ``(*shape)`` and ``label`` uint8 ``(*shape)`` with values in ``LABELS``.
    """
    shape = tuple(int(s) for s in shape)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = [rng.uniform(0.35, 0.65) * s for s in shape]
    radii = [rng.uniform(0.14, 0.26) * min(shape) for _ in shape]
    rotation, _ = np.linalg.qr(rng.standard_normal((len(shape), len(shape))))
    offsets = np.stack([g - c for g, c in zip(grids, centre, strict=True)], axis=-1) @ rotation
    # A wobbly ellipsoid: the radius varies smoothly over the surface, so shapes differ from case to case.
    wobble = 1 + 0.15 * _smooth_field(rng, shape, sigma=max(shape) / 6)
    core = (sum((offsets[..., i] / r) ** 2 for i, r in enumerate(radii)) <= wobble**2).astype(bool)
    label = core.astype(np.uint8)
    if two_structures:
        # Centred just inside the core's surface along its first axis: a cap sticking out of it.
        direction = rotation[:, 0] * radii[0] * 1.1
        blob_centre = [c + d for c, d in zip(centre, direction, strict=True)]
        blob_radius = rng.uniform(0.7, 0.9) * float(np.mean(radii))
        blob = sum((g - c) ** 2 for g, c in zip(grids, blob_centre, strict=True)) <= blob_radius**2
        label[blob & ~core] = 2
    background = 0.5 + 0.15 * _smooth_field(rng, shape, sigma=max(shape) / 8)
    image = background + 1.0 * (label == 1) + 0.55 * (label == 2)
    bias = np.exp(0.25 * _smooth_field(rng, shape, sigma=max(shape) / 3))
    image = image * bias + noise * rng.standard_normal(shape)
    return (100 * image).astype(np.float32), label


def write_synthetic_msd(
    folder: str | Path,
    num_cases: int,
    shape: Sequence[int] = (40, 48, 44),
    spacing: Sequence[float] = (1.2, 0.9, 1.1),
    seed: int = 0,
    oblique: bool = True,
    two_structures: bool = True,
    noise: float = 0.35,
) -> Path:
    """Write a Medical-Segmentation-Decathlon-style dataset of synthetic MRI-like NIfTI volumes.

    Args:
        folder: dataset root (``imagesTr/``, ``labelsTr/``, ``dataset.json`` are written).
        num_cases: number of labelled cases.
        shape: array shape ``(z, y, x)`` (2D shapes write 2D NIfTI).
        spacing: voxel spacing in mm per array axis.
        seed: random seed.
        oblique: use a rotated direction matrix and a non-zero origin (a non-trivial grid).
        two_structures: two foreground labels (``core``, ``rim``); else one (``core``).
        noise: noise level (see :func:`synthetic_case`).

    Returns:
        The dataset folder.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dims = len(shape)
    if oblique and dims == 3:
        angle = np.deg2rad(12.0)
        c, s = np.cos(angle), np.sin(angle)
        direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    else:
        direction = tuple(np.eye(dims).flatten())
    origin = tuple(rng.uniform(-80, 80, dims)) if oblique else (0.0,) * dims
    training = []
    for i in range(num_cases):
        image, label = synthetic_case(rng, shape, noise=noise, two_structures=two_structures)
        name = f"synth_{i:03d}.nii.gz"
        for array, sub in ((image, "imagesTr"), (label, "labelsTr")):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing(tuple(float(v) for v in reversed(spacing)))
            itk.SetOrigin(origin)
            itk.SetDirection(direction)
            sitk.WriteImage(itk, str(folder / sub / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "SatsegSynthetic",
        "description": "Synthetic MRI-like volumes made by satseg (no real data)",
        "modality": {"0": "MRI"},
        "labels": {str(v): k for k, v in LABELS.items() if two_structures or v < 2},
        "numTraining": num_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return folder


def synthetic_cells(
    rng: np.random.Generator, size: Sequence[int], cell: float = 48.0, membrane: float = 4.0, noise: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """One EM-like 8-bit picture of cells and its ISBI-style label (255 cell interior, 0 membrane).

    Cells are the Voronoi regions of random seeds (about one per ``cell``² pixels); a membrane is every pixel
    within ``membrane / 2`` of another cell. The picture: bright cell interiors of varied brightness and texture,
    dark membranes, blurred, with Gaussian noise (``noise`` relative to the membrane contrast).

    Returns:
        ``image`` uint8 ``(y, x)`` and ``label`` uint8 ``(y, x)`` with values 0 and 255.
    """
    size = tuple(int(v) for v in size)
    seeds = max(2, round(size[0] * size[1] / cell**2))
    marks = np.zeros(size, dtype=np.int32)
    marks[rng.integers(0, size[0], seeds), rng.integers(0, size[1], seeds)] = np.arange(1, seeds + 1)
    _, (iy, ix) = ndimage.distance_transform_edt(marks == 0, return_indices=True)
    cells = marks[iy, ix]  # the Voronoi region (seed number) of every pixel
    border = np.zeros(size, dtype=bool)
    border[:-1] |= cells[:-1] != cells[1:]
    border[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    inside = ndimage.distance_transform_edt(~border) > membrane / 2
    brightness = rng.uniform(0.55, 1.0, seeds + 1)[cells]
    image = brightness * (0.9 + 0.1 * _smooth_field(rng, size, sigma=3.0))
    image = np.where(inside, image, 0.15)
    image = ndimage.gaussian_filter(image, 1.0) + noise * 0.7 * rng.standard_normal(size)
    return np.clip(image * 200 + 20, 0, 255).astype(np.uint8), (inside * 255).astype(np.uint8)


def write_synthetic_isbi(
    folder: str | Path, pages: int = 30, size: Sequence[int] = (512, 512), seed: int = 0, test_pages: int | None = None
) -> Path:
    """Write ISBI-2012 as downloaded, with synthetic cells: ``train-volume.tif`` and ``train-labels.tif``
    (``pages``-page 8-bit TIFF stacks; labels 255 cell interior, 0 membrane) and ``test-volume.tif``
    (``test_pages`` pages, default ``pages``; 0 for none) without labels.

    Returns:
        The folder.
    """
    from PIL import Image as PILImage

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stacks: dict[str, list] = {"train-volume.tif": [], "train-labels.tif": [], "test-volume.tif": []}
    for k in range(pages + (pages if test_pages is None else test_pages)):
        image, label = synthetic_cells(rng, size)
        if k < pages:
            stacks["train-volume.tif"].append(PILImage.fromarray(image))
            stacks["train-labels.tif"].append(PILImage.fromarray(label))
        else:
            stacks["test-volume.tif"].append(PILImage.fromarray(image))
    for name, frames in stacks.items():
        if frames:
            frames[0].save(folder / name, save_all=True, append_images=frames[1:])
    return folder
