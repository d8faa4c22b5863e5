"""On-the-fly augmentation of whole batches on the training device (GPU when training there).

Spatial transforms (flips, 90° rotations, scaling) move image and label together; intensity
transforms (scale, shift, gamma, noise) touch the image only. Every random choice comes from the
given generator, so a seeded run is repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["AugmentConfig", "augment_batch"]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (per sample)."""

    flip: float = 0.5
    rotate90: float = 0.5
    scale: float = 0.2
    scale_range: tuple[float, float] = (0.8, 1.25)
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


def _flip_and_rotate(image: Tensor, label: Tensor, cfg: AugmentConfig, gen: torch.Generator):
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
        planes = [(a, c) for a in range(dims) for c in range(a + 1, dims) if lbl.shape[a] == lbl.shape[c]]
        if planes and draws[i, dims] < cfg.rotate90:
            a, c = planes[min(int(draws[i, dims + 1] * len(planes)), len(planes) - 1)]
            k = 1 + min(int(draws[i, dims + 2] * 3), 2)
            img = torch.rot90(img, k, (a + 1, c + 1))
            lbl = torch.rot90(lbl, k, (a, c))
        images.append(img)
        labels.append(lbl)
    return torch.stack(images).contiguous(), torch.stack(labels).contiguous()


def _scale(image: Tensor, label: Tensor, cfg: AugmentConfig, gen: torch.Generator):
    b, dims = label.shape[0], label.ndim - 1
    chosen = torch.rand(b, generator=gen, device=gen.device) < cfg.scale
    factors = _uniform(b, *cfg.scale_range, gen, gen.device)
    factors = torch.where(chosen, factors, torch.ones_like(factors)).to(image.device)
    if not bool(chosen.any()):
        return image, label
    theta = torch.zeros(b, dims, dims + 1, device=image.device)
    for d in range(dims):
        theta[:, d, d] = 1.0 / factors  # zoom in by `factor`: sample a smaller region
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
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
    image: Tensor, label: Tensor, generator: torch.Generator, config: AugmentConfig | None = None
) -> tuple[Tensor, Tensor]:
    """Augment a batch in place of the device it lives on.

    Args:
        image: ``(B, C, *P)`` float.
        label: ``(B, *P)`` integer labels.
        generator: a seeded generator on the same device as the tensors.
        config: probabilities and ranges; defaults to :class:`AugmentConfig`.

    Returns:
        The augmented ``(image, label)``, same shapes.
    """
    cfg = config or AugmentConfig()
    image, label = _flip_and_rotate(image, label, cfg, generator)
    image, label = _scale(image, label, cfg, generator)
    return _intensity(image, cfg, generator), label
