"""Random training patches with foreground oversampling, batched per epoch and reproducible by seed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

__all__ = ["TrainingCase", "make_training_case", "PatchBatches", "epoch_rng", "to_device"]

_MAX_FG_SAMPLES = 20_000  # foreground voxels kept per class to centre patches on; plenty for sampling


@dataclass
class TrainingCase:
    """One preprocessed case padded to at least the patch size.

    Attributes:
        case_id: the case's name.
        image: ``(C, *S)`` float32 (a NumPy array, or a tensor already on the training device).
        label: ``(*S)`` uint8 (idem).
        foreground: per foreground class present, an ``(N, dims)`` array of voxel indices.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    foreground: list[np.ndarray]


def make_training_case(case_id: str, image: np.ndarray, label: np.ndarray, patch: Sequence[int]) -> TrainingCase:
    """Pad ``image``/``label`` to at least ``patch`` (image with 0, label with background) and index foreground."""
    pad = [(0, max(0, p - s)) for p, s in zip(patch, label.shape, strict=True)]
    if any(after for _, after in pad):
        image = np.pad(image, [(0, 0), *pad])
        label = np.pad(label, pad)
    rng = np.random.default_rng(0)
    foreground = []
    for value in np.unique(label):
        if value == 0:
            continue
        coords = np.argwhere(label == value)
        if len(coords) > _MAX_FG_SAMPLES:
            coords = coords[rng.choice(len(coords), _MAX_FG_SAMPLES, replace=False)]
        foreground.append(coords)
    return TrainingCase(case_id, np.ascontiguousarray(image, np.float32), np.ascontiguousarray(label), foreground)


def to_device(cases: Sequence[TrainingCase], device: torch.device) -> list[TrainingCase]:
    """The cases with image and label moved to ``device`` as tensors (foreground indices stay NumPy)."""
    moved = []
    for case in cases:
        image, label = torch.from_numpy(case.image).to(device), torch.from_numpy(case.label).to(device)
        moved.append(TrainingCase(case.case_id, image, label, case.foreground))
    return moved


def epoch_rng(seed: int, epoch: int, rank: int = 0, worker: int = 0) -> np.random.Generator:
    """The NumPy generator of one (seed, epoch, rank, worker): resuming at an epoch replays it exactly."""
    return np.random.default_rng([seed, epoch, rank, worker])


def _sample(case: TrainingCase, patch: Sequence[int], rng: np.random.Generator, foreground: bool):
    shape = case.label.shape
    if foreground and case.foreground:
        coords = case.foreground[rng.integers(len(case.foreground))]
        centre = coords[rng.integers(len(coords))]
        start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch, shape, strict=True)]
    else:
        start = [int(rng.integers(0, s - p + 1)) for p, s in zip(patch, shape, strict=True)]
    window = tuple(slice(b, b + p) for b, p in zip(start, patch, strict=True))
    return case.image[(slice(None), *window)], case.label[window]


class PatchBatches(IterableDataset):
    """The training batches of one epoch: ``(image (B, C, *P), label (B, *P))`` tensors.

    Each batch draws its cases uniformly from ``cases`` (or the subset ``case_indices``) and centres a
    ``foreground_fraction`` share of its patches on a random foreground voxel. With DataLoader workers,
    batches are split round-robin between workers, each seeded by (seed, epoch, rank, worker), so a
    given setting always yields the same batches.
    """

    def __init__(
        self,
        cases: Sequence[TrainingCase],
        patch: Sequence[int],
        batch_size: int,
        num_batches: int,
        foreground_fraction: float,
        seed: int,
        epoch: int,
        rank: int = 0,
        case_indices: Sequence[int] | None = None,
    ) -> None:
        self.cases = cases
        self.patch = tuple(patch)
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.foreground_fraction = foreground_fraction
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.case_indices = list(range(len(cases))) if case_indices is None else list(case_indices)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rng = epoch_rng(self.seed, self.epoch, self.rank, worker)
        for _ in range(worker, self.num_batches, workers):
            images, labels = [], []
            for _ in range(self.batch_size):
                case = self.cases[self.case_indices[rng.integers(len(self.case_indices))]]
                image, label = _sample(case, self.patch, rng, rng.random() < self.foreground_fraction)
                images.append(image)
                labels.append(label)
            if isinstance(images[0], torch.Tensor):  # cases resident on the training device: cut there
                yield torch.stack(images), torch.stack(labels).long()
            else:
                yield torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels).astype(np.int64))
