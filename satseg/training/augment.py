"""On-the-fly augmentation of whole batches on the training device (GPU when training there).

Spatial transforms (mirroring, 90° rotations, continuous rotation, scaling, an optional cheap elastic
deformation) move image and label together, the continuous ones through one ``grid_sample`` per
batch; intensity transforms (scale, shift, gamma, noise) touch the image only. Every random choice
comes from the given generator, so a seeded run is repeatable.

Anisotropy (nnU-Net's rule): when the voxel spacing's largest/smallest ratio exceeds
:data:`ANISOTROPY_RATIO`, rotations (90° and continuous) and the elastic field act only in the plane
of the axes whose spacing is close to the finest, so a thick axis is never swapped or mixed with a
thin one. Continuous rotations are done in millimetres, so moderately anisotropic voxels are not
sheared either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from satseg.nn.layers import interpolation_mode

__all__ = ["AugmentConfig", "augment_batch", "rotation_axes", "ANISOTROPY_RATIO"]

ANISOTROPY_RATIO = 3.0
"""Spacing ratio (largest / smallest) above which rotations stay in the plane of the fine axes."""


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (per sample)."""

    flip: float = 0.5
    rotate90: float = 0.5
    rotate: float = 0.2
    rotate_max_deg: float = 30.0
    scale: float = 0.2
    scale_range: tuple[float, float] = (0.8, 1.25)
    elastic: float = 0.0
    elastic_max_voxels: float = 3.0
    elastic_grid: int = 4
    intensity_scale: float = 0.15
    intensity_scale_range: tuple[float, float] = (0.75, 1.25)
    intensity_shift: float = 0.15
    intensity_shift_std: float = 0.1
    gamma: float = 0.15
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise: float = 0.15
    noise_std_max: float = 0.1


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


def _per_sample(values: Tensor, ndim: int) -> Tensor:
    return values.view(-1, *([1] * (ndim - 1)))


def rotation_axes(spacing: Sequence[float] | None, dims: int) -> list[int]:
    """The axes rotations may mix: all of them, or (anisotropic spacing) those close to the finest.

    Args:
        spacing: mm per array axis of the training data (None: isotropic).
        dims: number of spatial axes.
    """
    if spacing is None or len(spacing) != dims:
        return list(range(dims))
    finest = min(spacing)
    if max(spacing) / finest <= ANISOTROPY_RATIO:
        return list(range(dims))
    return [a for a in range(dims) if spacing[a] / finest <= ANISOTROPY_RATIO]


def _flip_and_rotate(image: Tensor, label: Tensor, cfg: AugmentConfig, gen: torch.Generator, axes: list[int]):
    dims = label.ndim - 1
    b = label.shape[0]
    draws = torch.rand(b, dims + 3, generator=gen, device=gen.device).cpu()
    images, labels = [], []
    for i in range(b):
        img, lbl = image[i], label[i]
        flip_axes = [a for a in range(dims) if draws[i, a] < cfg.flip]
        if flip_axes:
            img = img.flip([a + 1 for a in flip_axes])
            lbl = lbl.flip(flip_axes)
        # Rotate by k·90° in a plane whose two sides are equal, so the patch keeps its shape.
        planes = [(a, c) for a in axes for c in axes if a < c and lbl.shape[a] == lbl.shape[c]]
        if planes and draws[i, dims] < cfg.rotate90:
            a, c = planes[min(int(draws[i, dims + 1] * len(planes)), len(planes) - 1)]
            k = 1 + min(int(draws[i, dims + 2] * 3), 2)
            img = torch.rot90(img, k, (a + 1, c + 1))
            lbl = torch.rot90(lbl, k, (a, c))
        images.append(img)
        labels.append(lbl)
    return torch.stack(images).contiguous(), torch.stack(labels).contiguous()


def _rotation_matrix(angles: Tensor, dims: int, axes: list[int]) -> Tensor:
    """``(B, dims, dims)`` rotations in array-axis order: one angle per plane of ``axes`` (radians)."""
    b = angles.shape[0]
    rot = torch.eye(dims, device=angles.device).expand(b, dims, dims).clone()
    planes = [(a, c) for a in axes for c in axes if a < c]
    for p, (a, c) in enumerate(planes):
        cos, sin = torch.cos(angles[:, p]), torch.sin(angles[:, p])
        plane = torch.eye(dims, device=angles.device).expand(b, dims, dims).clone()
        plane[:, a, a], plane[:, a, c], plane[:, c, a], plane[:, c, c] = cos, -sin, sin, cos
        rot = plane @ rot
    return rot


def _spatial(
    image: Tensor,
    label: Tensor,
    cfg: AugmentConfig,
    gen: torch.Generator,
    axes: list[int],
    spacing: Sequence[float] | None,
):
    """Rotation (in mm), scaling and the elastic field, resampled once: bilinear image, nearest label."""
    b, dims, dev = label.shape[0], label.ndim - 1, gen.device
    planes = len(axes) * (len(axes) - 1) // 2
    rotate = (torch.rand(b, generator=gen, device=dev) < cfg.rotate) & (planes > 0) & (cfg.rotate_max_deg > 0)
    limit = math.radians(cfg.rotate_max_deg)
    angles = _uniform(b * max(planes, 1), -limit, limit, gen, dev).view(b, max(planes, 1))
    angles = torch.where(rotate[:, None], angles, torch.zeros_like(angles))
    zoom = torch.rand(b, generator=gen, device=dev) < cfg.scale
    factors = _uniform(b, *cfg.scale_range, gen, dev)
    factors = torch.where(zoom, factors, torch.ones_like(factors))
    elastic = torch.rand(b, generator=gen, device=dev) < cfg.elastic
    coarse = torch.randn(b, dims, *([cfg.elastic_grid] * dims), generator=gen, device=dev)
    if not bool((rotate | zoom | elastic).any()):
        return image, label
    sides = torch.tensor(label.shape[1:], dtype=torch.float32, device=dev)
    mm = torch.tensor(spacing if spacing is not None and len(spacing) == dims else [1.0] * dims, device=dev)
    half = sides * mm / 2  # normalised coordinate 1 is this many mm from the centre, per axis
    rot = _rotation_matrix(angles, dims, axes) if planes else torch.eye(dims, device=dev).expand(b, dims, dims)
    # output point (normalised) -> mm -> rotate and zoom in (sample a smaller region) -> input normalised
    theta_arr = (rot / factors.view(b, 1, 1)) * half.view(1, 1, dims) / half.view(1, dims, 1)
    theta = torch.zeros(b, dims, dims + 1, device=dev)
    theta[:, :, :dims] = theta_arr.flip(1).flip(2)  # grid coordinates are (x, y[, z]): reversed array order
    grid = F.affine_grid(theta.to(image.device), list(image.shape), align_corners=False)
    if bool(elastic.any()) and cfg.elastic_max_voxels > 0:
        mode = interpolation_mode(dims)
        field = F.interpolate(coarse, size=tuple(label.shape[1:]), mode=mode, align_corners=True)
        field = field / field.flatten(1).abs().amax(1).clamp_min(1e-6).view(b, *([1] * (dims + 1)))
        strength = _uniform(b, 0.0, cfg.elastic_max_voxels, gen, dev) * elastic
        moving = torch.zeros(dims, device=dev)
        moving[axes] = 1.0  # anisotropic data: the thick axis does not move
        voxels = field * (strength.view(b, 1, *([1] * dims)) * moving.view(1, dims, *([1] * dims)))
        normalised = voxels * (2.0 / sides.view(1, dims, *([1] * dims)))
        grid = grid + normalised.flip(1).movedim(1, -1).to(image.device)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    label = F.grid_sample(label.unsqueeze(1).float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return image, label[:, 0].to(torch.int64)


def _intensity(image: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    b, nd, dev = image.shape[0], image.ndim, gen.device

    def chosen(p: float) -> Tensor:
        return _per_sample((torch.rand(b, generator=gen, device=dev) < p).to(image.device), nd)

    scale = _per_sample(_uniform(b, *cfg.intensity_scale_range, gen, dev).to(image.device), nd)
    image = torch.where(chosen(cfg.intensity_scale), image * scale, image)
    shift = _per_sample((torch.randn(b, generator=gen, device=dev) * cfg.intensity_shift_std).to(image.device), nd)
    image = torch.where(chosen(cfg.intensity_shift), image + shift, image)
    # Gamma on intensities rescaled to [0, 1] per sample, then mapped back to the original range.
    flat = image.flatten(1)
    lo, hi = _per_sample(flat.min(1).values, nd), _per_sample(flat.max(1).values, nd)
    gamma = _per_sample(_uniform(b, *cfg.gamma_range, gen, dev).to(image.device), nd)
    unit = ((image - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    image = torch.where(chosen(cfg.gamma), unit.pow(gamma) * (hi - lo) + lo, image)
    std = _per_sample(_uniform(b, 0.0, cfg.noise_std_max, gen, dev).to(image.device), nd)
    noise = torch.randn(image.shape, generator=gen, device=dev).to(image.device)
    return torch.where(chosen(cfg.noise), image + noise * std, image)


def augment_batch(
    image: Tensor,
    label: Tensor,
    generator: torch.Generator,
    config: AugmentConfig | None = None,
    spacing: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Augment a batch in place of the device it lives on.

    Args:
        image: ``(B, C, *P)`` float.
        label: ``(B, *P)`` integer labels.
        generator: a seeded generator on the same device as the tensors.
        config: probabilities and ranges; defaults to :class:`AugmentConfig`.
        spacing: mm per array axis of the data (None: isotropic); decides which axes rotations may mix
            (see :func:`rotation_axes`) and makes continuous rotations rigid in millimetres.

    Returns:
        The augmented ``(image, label)``, same shapes.
    """
    cfg = config or AugmentConfig()
    axes = rotation_axes(spacing, label.ndim - 1)
    image, label = _flip_and_rotate(image, label, cfg, generator, axes)
    image, label = _spatial(image, label, cfg, generator, axes, spacing)
    return _intensity(image, cfg, generator), label
