"""The training loss against MONAI's DiceCELoss (the oracle, from the test extra), and the patch sampler's
foreground oversampling measured over many draws."""

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss
from torch.nn import functional as F

from satseg.training.losses import deep_supervision_loss, segmentation_loss, soft_dice_loss
from satseg.training.patches import PatchBatches, make_training_case


def _batch(classes: int, seed: int = 0, shape=(2, 9, 11)) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, K, *S)`` and labels ``(B, *S)`` in which every class is present, background the largest."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], classes, *shape[1:], generator=gen) * 2
    target = torch.randint(0, classes, (shape[0], *shape[1:]), generator=gen)
    target[:, : shape[1] // 2] = 0
    return logits, target


def _monai(kind: str, include_background: bool = False, **activation) -> torch.nn.Module:
    """satseg's convention in MONAI's words: batch Dice, smoothing 1e-5 above and below, labels one-hot encoded."""
    activation = activation or {"softmax": True, "to_onehot_y": True}
    options = dict(include_background=include_background, batch=True, smooth_nr=1e-5, smooth_dr=1e-5, **activation)
    return DiceCELoss(**options) if kind == "dice+ce" else DiceLoss(**options)


@pytest.mark.parametrize("classes", [2, 3, 4])
@pytest.mark.parametrize("spatial", [(9, 11), (5, 6, 7)])
def test_dice_ce_is_monai_s_without_the_background(classes, spatial):
    logits, target = _batch(classes, seed=classes, shape=(2, *spatial))
    ours = segmentation_loss(logits, target, "dice+ce")
    theirs = _monai("dice+ce")(logits, target.unsqueeze(1))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(segmentation_loss(logits, target, "dice"), _monai("dice")(logits, target.unsqueeze(1)))
    torch.testing.assert_close(segmentation_loss(logits, target, "ce"), F.cross_entropy(logits, target))
    # the background is left out of the Dice: with it, MONAI's figure differs (so this test can tell)
    with_background = _monai("dice", include_background=True)(logits, target.unsqueeze(1))
    assert abs(float(soft_dice_loss(logits, target)) - float(with_background)) > 1e-3


def test_one_channel_is_a_sigmoid_output_with_binary_cross_entropy():
    logits, target = _batch(2, seed=7)
    logits = logits[:, :1]
    theirs = _monai("dice+ce", include_background=True, sigmoid=True)(logits, target.unsqueeze(1).float())
    torch.testing.assert_close(segmentation_loss(logits, target, "dice+ce"), theirs, rtol=1e-5, atol=1e-6)


def test_a_perfect_prediction_has_zero_dice_loss_and_the_background_does_not_count():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    perfect = torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float() * 40 - 20  # softmax ≈ one-hot
    assert float(soft_dice_loss(perfect, target)) < 1e-6
    # background predicted perfectly, the foreground class missed entirely: Dice loss ≈ 1 (not ≈ 0.5, the
    # mean it would be if the background's Dice of ≈ 0.9 counted)
    missed = torch.stack([torch.full((1, 8, 8), 20.0), torch.full((1, 8, 8), -20.0)], dim=1)
    assert float(soft_dice_loss(missed, target)) == pytest.approx(1.0, abs=1e-5)


def test_deep_supervision_weights_halve_per_head_and_add_up_to_one():
    target = _batch(3, seed=1)[1]
    heads = [_batch(3, seed=10 + i)[0] for i in range(3)]  # main, aux1, aux2
    oracle = _monai("dice+ce")
    each = [float(oracle(h, target.unsqueeze(1))) for h in heads]
    assert len({round(v, 4) for v in each}) == 3  # the heads' losses differ: the weights are visible
    expected = (1.0 * each[0] + 0.5 * each[1] + 0.25 * each[2]) / 1.75  # 1, 1/2, 1/4, normalised
    assert float(deep_supervision_loss(heads, target)) == pytest.approx(expected, rel=1e-5)
    # one output (a net without deep supervision) is its own loss; a list of one has weight 1
    assert float(deep_supervision_loss(heads[0], target)) == pytest.approx(each[0], rel=1e-5)
    assert float(deep_supervision_loss(heads[:1], target)) == pytest.approx(each[0], rel=1e-5)


def _draw(case, fraction: float, batches: int = 100, batch: int = 30, seed: int = 0):
    sampler = PatchBatches([case], (8, 8), batch, batches, fraction, seed=seed, epoch=0)
    return torch.cat([labels for _, labels in sampler]).numpy()


@pytest.mark.parametrize("fraction", [0.0, 0.33, 0.7, 1.0])
def test_foreground_oversampling_fraction_over_many_draws(fraction):
    """One foreground voxel in a 200² image: a random 8² patch holds it with probability ≈ 0.2 %, a patch
    centred on foreground always does, at the centre. Over 3,000 patches the share of centred ones must
    match the fraction within 4 standard deviations of a binomial."""
    label = np.zeros((200, 200), np.uint8)
    label[120, 77] = 1
    case = make_training_case("c", np.zeros((1, 200, 200), np.float32), label, (8, 8))
    labels = _draw(case, fraction)
    centred = labels[:, 4, 4] == 1  # start = voxel − patch // 2: the voxel sits at (4, 4)
    holding = labels.reshape(len(labels), -1).max(1) == 1
    n = len(labels)
    chance = 64 / (193 * 193)  # a uniformly placed patch holding the voxel
    expected = fraction + (1 - fraction) * chance
    sigma = max(np.sqrt(expected * (1 - expected) / n), 1 / n)
    assert abs(holding.mean() - expected) <= 4 * sigma, (holding.mean(), expected)
    assert abs(centred.mean() - fraction) <= 4 * max(np.sqrt(fraction * (1 - fraction) / n), 1 / n)


def test_foreground_patches_pick_each_present_class_equally_often():
    """Class 1 fills a large block, class 2 is one voxel: a centred patch picks the class first (uniformly),
    then a voxel, so the single voxel is at the centre of about half the foreground patches."""
    label = np.zeros((200, 200), np.uint8)
    label[20:100, 20:100] = 1
    label[160, 150] = 2
    case = make_training_case("c", np.zeros((1, 200, 200), np.float32), label, (8, 8))
    labels = _draw(case, 1.0)
    on_small = (labels[:, 4, 4] == 2).mean()
    assert abs(on_small - 0.5) <= 4 * np.sqrt(0.25 / len(labels)), on_small
    assert ((labels[:, 4, 4] == 1).mean() + on_small) == pytest.approx(1.0)


def test_the_same_seed_draws_the_same_patches_and_another_seed_others():
    label = np.zeros((64, 64), np.uint8)
    label[10:20, 30:40] = 1
    image = np.random.default_rng(0).random((1, 64, 64)).astype(np.float32)
    case = make_training_case("c", image, label, (8, 8))
    first, again, other = (_draw(case, 0.33, batches=5, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
