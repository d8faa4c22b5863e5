"""Where sliding windows go and how their predictions are blended, without torch.

The tiling (:func:`window_starts`, :func:`throughput_tile`, :func:`window_slices`), the Gaussian importance
map and the argument checks are shared by both loops: :func:`satseg.inference.sliding_window.sliding_window_inference`
(PyTorch: any device, autocast) and :func:`blend_windows` here (NumPy, for ONNX Runtime's predictors), which
lets ``segment`` with a cached ONNX export run without importing torch (seconds of start-up). Both blend
softmax probabilities with the same weights in float32; see :mod:`satseg.inference.sliding_window` for the
method (Isensee et al., nnU-Net).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

from satseg.errors import CheckpointError, ConfigError
from satseg.runs import check_patch_size

__all__ = [
    "window_starts",
    "throughput_tile",
    "window_slices",
    "window_padding",
    "gaussian_weights",
    "mirror_axes",
    "check_window_arguments",
    "check_logits",
    "blend_windows",
]

SIGMA_SCALE = 1.0 / 8.0  # Gaussian sigma as a fraction of the patch side (nnU-Net's choice)
MIN_WEIGHT = 1e-4  # floor of the importance map (its maximum is 1): no window border counts for nothing


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


def window_padding(shape: Sequence[int], patch: Sequence[int]) -> tuple[list[int], list[int]]:
    """Zeros before and after each axis so that the scan is at least ``patch`` (symmetric, the odd one after)."""
    before = [max(0, p - s) // 2 for s, p in zip(shape, patch, strict=True)]
    after = [max(0, p - s) - b for s, p, b in zip(shape, patch, before, strict=True)]
    return before, after


def window_slices(padded: Sequence[int], patch: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """Every window of side ``patch`` over a (padded) scan of spatial shape ``padded``, in C order."""
    starts = [window_starts(s, p, overlap) for s, p in zip(padded, patch, strict=True)]
    return [tuple(slice(b, b + p) for b, p in zip(begin, patch, strict=True)) for begin in itertools.product(*starts)]


def gaussian_weights(patch_size: Sequence[int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """Gaussian importance map of a window: 1 at the centre, ``sigma = sigma_scale * side`` per axis.

    Returns:
        ``(*P)`` float32 array with maximum 1 and minimum at least :data:`MIN_WEIGHT` (computed in float64).
    """
    weight = np.ones((), dtype=np.float64)
    for side in patch_size:
        x = np.arange(side, dtype=np.float64) - (side - 1) / 2
        g = np.exp(-0.5 * (x / (sigma_scale * side)) ** 2)
        weight = weight[..., None] * g
    weight = weight / weight.max()
    return np.maximum(weight, MIN_WEIGHT).astype(np.float32)


def mirror_axes(spatial_dims: int, tta: bool) -> list[tuple[int, ...]]:
    """Axes of a ``(B, C, *P)`` batch to flip for each prediction: only ``()`` without test-time mirroring."""
    if not tta:
        return [()]
    axes = range(2, 2 + spatial_dims)
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]


def check_window_arguments(
    shape: Sequence[int], patch_size: Sequence[int], num_classes: int, overlap: float, sw_batch: int
) -> tuple[int, ...]:
    """The window sides, once the image ``shape`` ``(C, *S)`` and the settings are known to make sense.

    Raises:
        ConfigError: naming the first setting that does not.
    """
    shape = tuple(shape)
    dims = len(shape) - 1
    if dims not in (2, 3):
        raise ConfigError(f"`image` must be (C, *S) with 2 or 3 spatial axes, got shape {shape}")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != dims or min(patch) < 1:
        raise ConfigError(f"`patch_size` must give {dims} positive sides for an image of shape {shape}, got {patch}")
    check_patch_size(patch, "patch_size")
    if not 2 <= num_classes <= 256:
        raise ConfigError(f"`num_classes` must be in 2..256 (background included), got {num_classes}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"`overlap` must be in [0, 1), got {overlap}")
    if sw_batch < 1:
        raise ConfigError(f"`sw_batch` must be at least 1, got {sw_batch}")
    return patch


def check_logits(got: Sequence[int] | str, expected: Sequence[int], finite: bool, batch_shape: Sequence[int]) -> None:
    """Refuse a model output of the wrong shape (``got``: its shape, or its type's name when it is no array)
    or one holding NaN or Inf, for a window batch of ``batch_shape``."""
    if isinstance(got, str) or tuple(got) != tuple(expected):
        shown = got if isinstance(got, str) else tuple(got)
        raise ConfigError(
            f"the model returned {shown} for a window batch of shape {tuple(batch_shape)}; "
            f"expected ({', '.join(map(str, expected))})",
            hint="check that `num_classes` matches the model's output channels",
        )
    if not finite:
        # softmax of NaN is NaN and argmax of NaN is 0: the mask would silently be all background
        raise CheckpointError(
            "the model gave NaN or Inf for this input",
            hint="its weights or the input are broken; check the checkpoint and the scan",
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 in float32, in place on a float32 array."""
    logits = logits.astype(np.float32, copy=False)
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def blend_windows(
    predict: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    patch_size: Sequence[int],
    num_classes: int,
    *,
    overlap: float = 0.5,
    sw_batch: int = 4,
    tta: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The ``(K, *S)`` float32 softmax probabilities of a whole scan, from windows predicted on NumPy arrays.

    The same method as :func:`satseg.inference.sliding_window.sliding_window_inference` (padding, windows,
    mirrorings, Gaussian weights), on the CPU in float32, for a predictor that takes and gives arrays
    (an :class:`~satseg.inference.backends.OnnxPredictor`). Memory: the padded input, a ``K × V`` accumulator
    and a ``V`` weight sum (float32); the result is a view of the accumulator.

    Args:
        predict: ``(B, C, *P) float32 -> (B, K, *P)`` logits.
        image: ``(C, *S)`` scan, preprocessed as the model expects.
        patch_size, num_classes, overlap, sw_batch, tta, progress: as for ``sliding_window_inference``.

    Raises:
        ConfigError: a bad shape or setting, or a model output of the wrong shape.
        CheckpointError: the model gave NaN or Inf.
    """
    patch = check_window_arguments(image.shape, patch_size, num_classes, overlap, sw_batch)
    shape = tuple(image.shape[1:])
    before, after = window_padding(shape, patch)
    image = image.astype(np.float32, copy=False)
    if any(before) or any(after):
        image = np.pad(image, [(0, 0), *zip(before, after, strict=True)])
    padded = tuple(image.shape[1:])
    accumulator = np.zeros((num_classes, *padded), dtype=np.float32)
    weights = np.zeros(padded, dtype=np.float32)
    importance = gaussian_weights(patch)
    windows = window_slices(padded, patch, overlap)
    mirrors = mirror_axes(len(patch), tta)
    for first in range(0, len(windows), sw_batch):
        chunk = windows[first : first + sw_batch]
        batch = np.stack([image[(slice(None), *w)] for w in chunk])
        total = None
        for flips in mirrors:
            x = np.ascontiguousarray(np.flip(batch, flips)) if flips else batch
            logits = predict(x)
            expected = (len(chunk), num_classes, *patch)
            got = logits.shape if isinstance(logits, np.ndarray) else type(logits).__name__
            finite = isinstance(logits, np.ndarray) and bool(np.isfinite(logits).all())
            check_logits(got, expected, finite, x.shape)
            probs = _softmax(logits)
            probs = np.flip(probs, flips) if flips else probs
            total = probs if total is None else np.add(total, probs, out=total)
        if len(mirrors) > 1:
            total /= len(mirrors)
        total *= importance
        for w, p in zip(chunk, total, strict=True):
            accumulator[(slice(None), *w)] += p
            weights[w] += importance
        if progress is not None:
            progress(first + len(chunk), len(windows))
    crop = tuple(slice(b, b + s) for b, s in zip(before, shape, strict=True))
    result = accumulator[(slice(None), *crop)]
    result /= weights[crop]
    return result
