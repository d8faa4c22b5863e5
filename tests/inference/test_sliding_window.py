"""Sliding-window inference against whole-image forwards, hand-computed window positions and stitching."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from satseg.errors import ConfigError
from satseg.inference import sliding_window as inference
from satseg.inference.sliding_window import gaussian_importance, sliding_window_inference, window_starts
from satseg.nn import build_model


def _whole_image(model, image):
    """Reference: one forward of the whole (C, *S) image, softmax over classes, argmax."""
    with torch.no_grad():
        probs = torch.softmax(model(image[None]), dim=1)[0]
    return probs.argmax(0).to(torch.uint8), probs


def _pointwise(in_ch, classes, dims, seed=0):
    """A 1×1(×1) convolution: each voxel's logits depend only on that voxel, so windows cannot matter."""
    torch.manual_seed(seed)
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(in_ch, classes, 1)
    nn.init.normal_(conv.weight, std=2.0)
    return conv.eval()


# ---- window positions and the importance map, against values worked out by hand ----


@pytest.mark.parametrize(
    ("size", "patch", "overlap", "expected"),
    [
        (4, 4, 0.5, [0]),  # fits: one window
        (3, 4, 0.5, [0]),  # smaller (padded by the caller)
        (8, 4, 0.0, [0, 4]),  # no overlap: tiles side by side
        (10, 4, 0.5, [0, 2, 4, 6]),  # steps of exactly patch/2
        (11, 4, 0.5, [0, 2, 4, 5, 7]),  # 5 windows, step 7/4 = 1.75, rounded
        (10, 6, 0.5, [0, 2, 4]),  # max step 3, ceil(4/3) + 1 = 3 windows, step 2
        (5, 4, 0.9, [0, 1]),  # max step 0.4 clipped to 1
    ],
)
def test_window_starts_hand_computed(size, patch, overlap, expected):
    assert window_starts(size, patch, overlap) == expected


@pytest.mark.parametrize("size", [16, 17, 23, 31, 64, 100])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_windows_cover_every_position_within_step(size, overlap):
    patch = 16
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] == size - patch
    covered = np.zeros(size, dtype=int)
    for s in starts:
        covered[s : s + patch] += 1
    assert covered.min() >= 1
    assert max(np.diff(starts), default=0) <= math.ceil(patch * (1 - overlap))


def test_gaussian_importance_hand_values():
    # side 8, sigma = 1: positions are ±0.5, ±1.5, ±2.5, ±3.5 from the centre; max at ±0.5
    g = gaussian_importance((8,)).double()
    expected = np.exp(-0.5 * (np.arange(8) - 3.5) ** 2) / np.exp(-0.5 * 0.25)
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-6)
    g2 = gaussian_importance((8, 6))
    assert g2.shape == (8, 6) and float(g2.max()) == pytest.approx(1.0)
    side6 = np.exp(-0.5 * ((np.arange(6) - 2.5) / 0.75) ** 2) / np.exp(-0.5 * (0.5 / 0.75) ** 2)
    # the corners, 1.2e-5 before clamping, sit on the 1e-4 floor
    np.testing.assert_allclose(g2.numpy(), np.maximum(np.outer(expected, side6), 1e-4), rtol=1e-6)
    # 64³, sigma 8: the corner would be exp(-3 * (31.5² - 0.5²) / 128) ≈ 8e-11, clamped to the floor
    g3 = gaussian_importance((64, 64, 64))
    assert float(g3.min()) == pytest.approx(1e-4) and float(g3[32, 32, 32]) == pytest.approx(1.0)


# ---- equality with whole-image forwards ----


@pytest.mark.parametrize("dims", [2, 3])
def test_single_window_equals_whole_image_forward(dims):
    torch.manual_seed(0)
    model = build_model(f"unet{dims}d", skip="sat", in_channels=2, out_channels=3, features=(4, 8)).eval()
    image = torch.randn(2, *([16] * dims))
    labels, probs = _whole_image(model, image)
    result = sliding_window_inference(model, image, (16,) * dims, 3, return_probabilities=True)
    assert result.labels.dtype == torch.uint8 and result.labels.shape == image.shape[1:]
    assert torch.equal(result.labels, labels)
    torch.testing.assert_close(result.probabilities, probs, rtol=1e-5, atol=1e-6)
    # ordinary tensors, not inference tensors: callers may edit them in place
    result.labels[0] = 0
    result.probabilities.clamp_(0, 1)


@pytest.mark.parametrize(("dims", "shape"), [(2, (11, 13)), (3, (7, 16, 9))])
def test_smaller_than_patch_is_padded_symmetrically_and_cropped(dims, shape):
    torch.manual_seed(1)
    model = build_model(f"unet{dims}d", skip="sat", in_channels=1, out_channels=2, features=(4, 8)).eval()
    image = torch.randn(1, *shape)
    patch = (16,) * dims
    # independent padding: place the image in a zero patch, offset by floor(missing / 2)
    padded = torch.zeros(1, *patch)
    offset = tuple((p - s) // 2 for p, s in zip(patch, shape, strict=True))
    region = tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))
    padded[(slice(None), *region)] = image
    labels, probs = _whole_image(model, padded)
    result = sliding_window_inference(model, image, patch, 2, return_probabilities=True)
    assert torch.equal(result.labels, labels[region])
    torch.testing.assert_close(result.probabilities, probs[(slice(None), *region)], rtol=1e-5, atol=1e-6)
    result.probabilities.clamp_(0, 1)  # a cropped view of the accumulator, still editable in place


@pytest.mark.parametrize(
    ("shape", "patch"),
    [
        ((37, 23), (8, 8)),  # odd sides, many windows
        ((5, 30), (8, 8)),  # one side padded, the other tiled
        ((9, 13, 7), (4, 8, 4)),
        ((3, 17, 10), (8, 8, 4)),
    ],
)
@pytest.mark.parametrize("sw_batch", [1, 3])
@pytest.mark.parametrize("tta", [False, True])
def test_pointwise_model_equals_whole_image_with_many_windows(shape, patch, sw_batch, tta):
    dims = len(shape)
    model = _pointwise(2, 4, dims, seed=len(shape) + sw_batch)
    image = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    labels, probs = _whole_image(model, image)
    result = sliding_window_inference(
        model, image, patch, 4, overlap=0.5, sw_batch=sw_batch, tta=tta, return_probabilities=True
    )
    torch.testing.assert_close(result.probabilities, probs, rtol=1e-5, atol=1e-6)
    assert torch.equal(result.labels, labels)


def test_slab_wise_argmax_equals_one_shot(monkeypatch):
    model = _pointwise(1, 3, 3)
    image = torch.randn(1, 9, 12, 10, generator=torch.Generator().manual_seed(4))
    whole = sliding_window_inference(model, image, (4, 4, 4), 3, return_probabilities=True)
    monkeypatch.setattr(inference, "_SLAB_BYTES", 1)  # one plane per slab
    slabbed = sliding_window_inference(model, image, (4, 4, 4), 3)
    assert torch.equal(slabbed.labels, whole.labels)
    assert torch.equal(whole.labels, whole.probabilities.argmax(0).to(torch.uint8))


# ---- stitching and mirroring, against hand-built references ----


class _WindowConstant(nn.Module):
    """Class-1 logit over a whole window = the window's first column index (read from the image)."""

    def forward(self, x):
        start = x[:, 0, 0, 0].view(-1, 1, 1)
        logit1 = start.expand(-1, *x.shape[2:])
        return torch.stack([torch.zeros_like(logit1), logit1], dim=1)


def test_gaussian_stitching_matches_hand_reference():
    # image (1, 4, 10) whose value is the column index; patch (4, 6), overlap 0.5 -> columns 0, 2, 4
    image = torch.arange(10.0).expand(1, 4, 10).clone()
    result = sliding_window_inference(_WindowConstant().eval(), image, (4, 6), 2, return_probabilities=True)
    rows = np.exp(-0.5 * ((np.arange(4) - 1.5) / 0.5) ** 2)  # sigma = side / 8
    cols = np.exp(-0.5 * ((np.arange(6) - 2.5) / 0.75) ** 2)
    g = np.outer(rows, cols)
    g = np.maximum(g / g.max(), 1e-4)  # the documented floor (reached in the window's corners)
    num, den = np.zeros((4, 10)), np.zeros((4, 10))
    for s in (0, 2, 4):
        num[:, s : s + 6] += g * (1 / (1 + np.exp(-s)))
        den[:, s : s + 6] += g
    expected = num / den
    np.testing.assert_allclose(result.probabilities[1].numpy(), expected, rtol=1e-5)


class _Ramp(nn.Module):
    """Logits that ignore the input: class 1 rises along the last axis of the window."""

    def forward(self, x):
        ramp = torch.linspace(-3, 3, x.shape[-1]).expand(x.shape[0], *x.shape[2:])
        return torch.stack([torch.zeros_like(ramp), ramp], dim=1)


def test_tta_averages_the_mirrored_predictions():
    image = torch.randn(1, 6, 6)
    result = sliding_window_inference(_Ramp().eval(), image, (6, 6), 2, tta=True, return_probabilities=True)
    p = torch.sigmoid(torch.linspace(-3, 3, 6))
    # 4 mirrorings; the two that flip the last axis see the ramp reversed after flipping back
    expected = ((p + p.flip(0)) / 2).expand(6, 6)
    torch.testing.assert_close(result.probabilities[1], expected)
    plain = sliding_window_inference(_Ramp().eval(), image, (6, 6), 2, return_probabilities=True)
    torch.testing.assert_close(plain.probabilities[1], p.expand(6, 6))


def test_progress_reports_window_counts():
    calls = []
    # (4, 10) with patch (4, 6): 1 × 3 windows (starts 0, 2, 4), two per batch
    sliding_window_inference(
        _Ramp().eval(), torch.zeros(1, 4, 10), (4, 6), 2, sw_batch=2, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(2, 3), (3, 3)]


# ---- invalid input ----


def test_invalid_arguments_raise_config_error():
    model = _pointwise(1, 2, 2)
    image = torch.zeros(1, 8, 8)
    with pytest.raises(ConfigError, match="patch_size"):
        sliding_window_inference(model, image, (8, 8, 8), 2)
    with pytest.raises(ConfigError, match="overlap"):
        sliding_window_inference(model, image, (8, 8), 2, overlap=1.0)
    with pytest.raises(ConfigError, match="sw_batch"):
        sliding_window_inference(model, image, (8, 8), 2, sw_batch=0)
    with pytest.raises(ConfigError, match="num_classes"):
        sliding_window_inference(model, image, (8, 8), 300)
    with pytest.raises(ConfigError, match="num_classes"):
        sliding_window_inference(model, image, (8, 8), 3)  # the model gives 2 classes
    with pytest.raises(ConfigError, match="image"):
        sliding_window_inference(model, torch.zeros(8, 8), (8, 8), 2)
    with pytest.raises(ConfigError, match="training mode"):
        sliding_window_inference(model.train(), image, (8, 8), 2)
