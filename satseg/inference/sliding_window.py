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
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from satseg.device import autocast_context
from satseg.errors import ConfigError
from satseg.inference.tiling import (
    SIGMA_SCALE,
    check_logits,
    check_window_arguments,
    gaussian_weights,
    mirror_axes,
    throughput_tile,
    window_padding,
    window_slices,
    window_starts,
)

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


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = SIGMA_SCALE) -> Tensor:
    """:func:`~satseg.inference.tiling.gaussian_weights` as a tensor: ``(*P)`` float32, 1 at the centre, at least
    ``MIN_WEIGHT`` at the borders."""
    return torch.from_numpy(gaussian_weights(patch_size, sigma_scale))


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
    patch = check_window_arguments(image.shape, patch_size, num_classes, overlap, sw_batch)
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
        expected = (batch.shape[0], num_classes, *batch.shape[2:])
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        finite = isinstance(logits, Tensor) and tuple(logits.shape) == expected and bool(torch.isfinite(logits).all())
        check_logits(got, expected, finite, x.shape)
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
    pad_before, pad_after = window_padding(shape, patch)
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

    windows = window_slices(padded, patch, overlap)
    mirrors = mirror_axes(len(patch), tta)
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
