"""Sliding-window inference: tile a whole scan into patches, predict, and stitch Gaussian-weighted softmax.

A model trained on ``patch_size`` crops is applied to a scan of any size ``S`` by running it on
overlapping windows and blending the per-window softmax probabilities with a Gaussian importance map,
which trusts the centre of each window more than its borders (Isensee et al., nnU-Net, Nature Methods
2021, arXiv:1809.10486). Optional test-time augmentation averages the predictions of every mirrored copy.

Memory, for ``K`` classes, ``C`` channels and ``V`` voxels of the (padded) scan, all float32:

* the padded input, ``C × V × 4`` bytes (a view of the input when no padding is needed);
* the probability accumulator ``K × V × 4`` bytes plus the weight sum ``V × 4`` bytes, held on the
  device when it is CUDA and they take at most a quarter of its free memory, else on the CPU;
* the labels, ``V`` bytes, and slab-sized temporaries bounded by ``_SLAB_BYTES``.

Normalisation and argmax run in place, slab by slab along the first spatial axis, so no second
full-size ``K × V`` copy is ever made; with ``return_probabilities`` the normalised accumulator itself
is returned (moved to the CPU if it lived on the device).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from satseg.device import autocast_context
from satseg.errors import CheckpointError, ConfigError
from satseg.runs import check_patch_size

__all__ = [
    "SlidingWindowResult",
    "sliding_window_inference",
    "window_starts",
    "gaussian_importance",
    "throughput_tile",
]

log = logging.getLogger(__name__)

Predictor = Callable[[Tensor], Tensor]
ProgressCallback = Callable[[int, int], None]

_SIGMA_SCALE = 1.0 / 8.0  # Gaussian sigma as a fraction of the patch side (nnU-Net's choice)
_MIN_WEIGHT = 1e-4  # floor of the importance map (its maximum is 1): no window border counts for nothing
_DEVICE_MEMORY_FRACTION = 0.25  # accumulator on a CUDA device only if it takes at most this share of free memory
_SLAB_BYTES = 64 * 2**20  # size of the temporaries made by the slab-wise normalisation and argmax


@dataclass
class SlidingWindowResult:
    """What :func:`sliding_window_inference` returns.

    Attributes:
        labels: ``(*S)`` uint8 CPU tensor, the argmax class of every voxel.
        probabilities: ``(K, *S)`` float32 CPU tensor of softmax probabilities (they sum to 1 over ``K``),
            or None unless asked for. It may be a non-contiguous view when the scan was padded.
    """

    labels: Tensor
    probabilities: Tensor | None = None


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start positions of windows of side ``patch`` along an axis of length ``size >= patch``.

    The first window starts at 0, the last ends at ``size``, and the starts are spread evenly with
    steps no larger than ``patch * (1 - overlap)`` (at least 1), so every position is covered.

    Args:
        size: length of the axis (already padded to at least ``patch``).
        patch: window side.
        overlap: fraction of ``patch`` that neighbouring windows share at least, in ``[0, 1)``.

    Returns:
        Increasing start positions.
    """
    if size <= patch:
        return [0]
    max_step = max(1.0, patch * (1.0 - overlap))
    count = math.ceil((size - patch) / max_step) + 1
    step = (size - patch) / (count - 1)
    return [round(i * step) for i in range(count)]


def throughput_tile(
    shape: Sequence[int], patch: Sequence[int], divisor: int, overlap: float, max_voxels: int
) -> tuple[int, ...]:
    """The window that computes the fewest voxels in all, among those of at most ``max_voxels`` voxels.

    Fully convolutional networks take windows of any size divisible by their ``divisor``. With overlap
    ``o``, windows of the training patch compute most voxels several times (``≈ 1/(1 - o)`` times per
    axis); the whole scan in one window computes each voxel once. Per axis, ``n`` windows cover a side ``S``
    with windows of side ``S / (1 + (n - 1)(1 - o))`` (rounded up to ``divisor``); every combination of
    window counts, from one per axis to the training patch's, is scored by the voxels its windows compute
    (``windows × window voxels``, as :func:`window_starts` tiles them) and the cheapest that fits is taken.

    Args:
        shape: the (preprocessed) scan's spatial shape.
        patch: the training patch; no side goes below it (nor below ``divisor``).
        divisor: every side is a multiple of it (the network's ``input_divisor``).
        overlap: the sliding-window overlap in ``[0, 1)``.
        max_voxels: largest window, in voxels (memory bound).

    Returns:
        Window sides; ``patch`` itself when even it is over ``max_voxels``.
    """
    floors = [max(int(p), divisor) for p in patch]
    options = []  # per axis: (side, windows along the axis)
    for size, floor in zip(shape, floors, strict=True):
        most = len(window_starts(max(size, floor), floor, overlap))
        sides = set()
        for count in range(1, most + 1):
            wanted = math.ceil(size / (1 + (count - 1) * (1 - overlap)))
            sides.add(max(floor, -(-wanted // divisor) * divisor))
        options.append([(t, len(window_starts(max(size, t), t, overlap))) for t in sorted(sides)])
    best: tuple[int, int, tuple[int, ...]] | None = None
    for combo in itertools.product(*options):
        sides = tuple(t for t, _ in combo)
        if math.prod(sides) > max_voxels:
            continue
        windows = math.prod(n for _, n in combo)
        key = (windows * math.prod(sides), windows, sides)
        best = key if best is None or key < best else best
    return best[2] if best is not None else tuple(int(p) for p in patch)


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = _SIGMA_SCALE) -> Tensor:
    """Gaussian importance map of a window: 1 at the centre, ``sigma = sigma_scale * side`` per axis.

    Args:
        patch_size: window sides ``(*P)``.
        sigma_scale: sigma as a fraction of each side.

    Returns:
        ``(*P)`` float32 tensor with maximum 1 and minimum at least ``_MIN_WEIGHT``.
    """
    weight = torch.ones((), dtype=torch.float64)
    for side in patch_size:
        x = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
        g = torch.exp(-0.5 * (x / (sigma_scale * side)) ** 2)
        weight = weight.unsqueeze(-1) * g
    weight = weight / weight.max()
    return weight.clamp_min(_MIN_WEIGHT).float()


def _mirror_sets(spatial_dims: int, tta: bool) -> list[tuple[int, ...]]:
    """Tensor dims to flip for each prediction of a ``(B, C, *P)`` batch: only ``()`` without TTA."""
    if not tta:
        return [()]
    axes = range(2, 2 + spatial_dims)
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]


def _accumulator_device(device: torch.device, nbytes: int) -> torch.device:
    """The CUDA device when the accumulator fits in a quarter of its free memory, else the CPU."""
    if device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes <= free * _DEVICE_MEMORY_FRACTION else torch.device("cpu")


def _check_arguments(
    predict: Predictor,
    image: Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float,
    sw_batch: int,
    device: torch.device,
) -> tuple[int, ...]:
    dims = image.ndim - 1
    if dims not in (2, 3):
        raise ConfigError(f"`image` must be (C, *S) with 2 or 3 spatial axes, got shape {tuple(image.shape)}")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != dims or min(patch) < 1:
        raise ConfigError(
            f"`patch_size` must give {dims} positive sides for an image of shape {tuple(image.shape)}, got {patch}"
        )
    check_patch_size(patch, "patch_size")
    if not 2 <= num_classes <= 256:
        raise ConfigError(f"`num_classes` must be in 2..256 (background included), got {num_classes}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"`overlap` must be in [0, 1), got {overlap}")
    if sw_batch < 1:
        raise ConfigError(f"`sw_batch` must be at least 1, got {sw_batch}")
    if isinstance(predict, nn.Module):
        if predict.training:
            raise ConfigError("the model is in training mode", hint="call `model.eval()` before inference")
        param = next(predict.parameters(), None)
        if param is not None and param.device.type != device.type:
            raise ConfigError(
                f"the model is on `{param.device}` but inference runs on `{device}`",
                hint=f"move it first: `model.to('{device}')`",
            )
    return patch


def _predict_probabilities(
    predict: Predictor,
    batch: Tensor,
    mirrors: list[tuple[int, ...]],
    num_classes: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
    softmax: bool = True,
) -> Tensor:
    """Mean softmax (or raw output) over the mirrored copies of ``batch``: ``(B, C, *P) -> (B, K, *P)`` float32."""
    total = None
    for flips in mirrors:
        x = batch.flip(flips) if flips else batch
        with autocast():
            logits = predict(x)
        if not isinstance(logits, Tensor) or logits.shape != (batch.shape[0], num_classes, *batch.shape[2:]):
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ConfigError(
                f"the model returned {got} for a window batch of shape {tuple(x.shape)}; "
                f"expected ({batch.shape[0]}, {num_classes}, {', '.join(map(str, batch.shape[2:]))})",
                hint="check that `num_classes` matches the model's output channels",
            )
        if not bool(torch.isfinite(logits).all()):
            # softmax of NaN is NaN and argmax of NaN is 0: the mask would silently be all background
            raise CheckpointError(
                "the model gave NaN or Inf for this input",
                hint="its weights or the input are broken; check the checkpoint and the scan",
            )
        probs = torch.softmax(logits.float(), dim=1) if softmax else logits.float()
        probs = probs.flip(flips) if flips else probs
        total = probs if total is None else total.add_(probs)
    return total.div_(len(mirrors)) if len(mirrors) > 1 else total


def _normalise_and_argmax(accumulator: Tensor, weights: Tensor, labels: Tensor) -> None:
    """In place: ``accumulator /= weights``; ``labels = argmax``, slab by slab along the first spatial axis."""
    depth = accumulator.shape[1]
    plane_bytes = max(1, accumulator[:, :1].numel()) * 4
    rows = max(1, _SLAB_BYTES // plane_bytes)
    for z0 in range(0, depth, rows):
        z1 = min(depth, z0 + rows)
        slab = accumulator[:, z0:z1]
        slab.div_(weights[z0:z1])
        labels[z0:z1] = slab.argmax(dim=0).to(device=labels.device, dtype=labels.dtype)


@torch.no_grad()
def sliding_window_inference(
    predict: Predictor,
    image: Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    *,
    overlap: float = 0.5,
    sw_batch: int = 4,
    device: str | torch.device = "cpu",
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    return_probabilities: bool = False,
    progress: ProgressCallback | None = None,
    softmax: bool = True,
) -> SlidingWindowResult:
    """Segment a whole scan with a patch-trained model by Gaussian-weighted sliding windows.

    The scan is zero-padded symmetrically to at least ``patch_size`` (and cropped back), tiled by
    windows whose starts come from :func:`window_starts`, and each batch of ``sw_batch`` windows is
    sent to ``device``. Softmax probabilities are weighted by :func:`gaussian_importance`, summed, and
    divided by the summed weights; the labels are their argmax. When the scan fits in one window the
    result equals one forward pass of the (padded) scan. See the module docstring for memory use.

    Args:
        predict: callable ``(B, C, *P) -> (B, K, *P)`` logits, e.g. a torch module in eval mode already
            on ``device`` or an :class:`~satseg.inference.backends.OnnxPredictor`.
        image: ``(C, *S)`` scan (2D or 3D), preprocessed as the model expects; usually on the CPU.
        patch_size: window sides ``(*P)``, e.g. the plan's ``patch_size``; each must suit the model
            (divisible by its ``input_divisor``).
        num_classes: ``K``, the model's output channels (background included).
        overlap: fraction of a window that neighbouring windows share at least, in ``[0, 1)``.
        sw_batch: windows per forward pass.
        device: where the windows are predicted (``"cpu"``, ``"cuda"``, ``"cuda:1"``, …).
        tta: average the predictions of all ``2 ** spatial_dims`` mirrorings (flips of every subset of
            spatial axes), each flipped back before averaging the softmax.
        amp_dtype: autocast the windows to this dtype, on any device (None: float32); the run's own, from
            :func:`satseg.device.autocast_dtype`. Probabilities are always float32.
        return_probabilities: also return the ``(K, *S)`` probabilities.
        progress: called as ``progress(done, total)`` with window counts after every batch.
        softmax: blend softmax probabilities; False blends the raw outputs (e.g. attention maps in ``[0, 1]``),
            returned as ``probabilities``.

    Returns:
        :class:`SlidingWindowResult` with ``labels`` ``(*S)`` uint8 and optional ``probabilities``.

    Raises:
        ConfigError: for a bad shape, patch size, class count, overlap or batch size, a model in
            training mode or on another device, or a model output of the wrong shape.
    """
    device = torch.device(device)
    patch = _check_arguments(predict, image, patch_size, num_classes, overlap, sw_batch, device)
    shape = tuple(image.shape[1:])
    pad_before = [max(0, p - s) // 2 for s, p in zip(shape, patch, strict=True)]
    pad_after = [max(0, p - s) - b for s, p, b in zip(shape, patch, pad_before, strict=True)]
    if not image.is_floating_point():
        image = image.float()
    if any(pad_before) or any(pad_after):
        pads = [n for b, a in zip(reversed(pad_before), reversed(pad_after), strict=True) for n in (b, a)]
        image = F.pad(image, pads)
    padded = tuple(image.shape[1:])

    voxels = math.prod(padded)
    acc_device = _accumulator_device(device, (num_classes + 1) * voxels * 4)
    log.debug("sliding window: %s padded to %s, accumulator on %s", shape, padded, acc_device)
    accumulator = torch.zeros((num_classes, *padded), dtype=torch.float32, device=acc_device)
    weights = torch.zeros(padded, dtype=torch.float32, device=acc_device)
    importance = gaussian_importance(patch).to(acc_device)

    starts = [window_starts(s, p, overlap) for s, p in zip(padded, patch, strict=True)]
    windows = [
        tuple(slice(b, b + p) for b, p in zip(begin, patch, strict=True)) for begin in itertools.product(*starts)
    ]
    mirrors = _mirror_sets(len(patch), tta)
    autocast = functools.partial(autocast_context, device, amp_dtype)

    # The outputs are ordinary tensors (made above); the windows are inference tensors, so callers may
    # edit the returned labels and probabilities in place.
    labels = torch.empty(shape, dtype=torch.uint8)
    crop = tuple(slice(b, b + s) for b, s in zip(pad_before, shape, strict=True))
    result, result_weights = accumulator[(slice(None), *crop)], weights[crop]
    with torch.inference_mode():
        for first in range(0, len(windows), sw_batch):
            chunk = windows[first : first + sw_batch]
            batch = torch.stack([image[(slice(None), *w)] for w in chunk]).to(device, non_blocking=True)
            probs = _predict_probabilities(predict, batch, mirrors, num_classes, autocast, softmax).to(acc_device)
            probs.mul_(importance)
            for w, p in zip(chunk, probs, strict=True):
                accumulator[(slice(None), *w)] += p
                weights[w] += importance
            if progress is not None:
                progress(first + len(chunk), len(windows))
        _normalise_and_argmax(result, result_weights, labels)
    probabilities = result.cpu() if return_probabilities else None
    return SlidingWindowResult(labels=labels, probabilities=probabilities)
