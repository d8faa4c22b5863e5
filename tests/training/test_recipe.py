"""The training recipe: augmentation geometry, EMA, deep supervision, resident data, one AMP dtype, NaN-safe best."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from satseg.data.preprocess import preprocess_dataset
from satseg.data.synthetic import write_synthetic_msd
from satseg.nn import build_model
from satseg.nn.lean import make_lean
from satseg.runs import load_checkpoint
from satseg.training import loop
from satseg.training.augment import AugmentConfig, augment_batch, rotation_axes
from satseg.training.config import TrainConfig
from satseg.training.ema import WeightEMA
from satseg.training.loop import is_improvement, mean_dice
from satseg.training.trainer import train

SPATIAL_ONLY = {"intensity_scale": 0.0, "intensity_shift": 0.0, "gamma": 0.0, "noise": 0.0}


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


# ---------------------------------------------------------------- augmentation geometry
@pytest.mark.parametrize("shape", [(40, 48), (24, 28, 32)])
def test_spatial_augmentation_keeps_label_on_the_image_feature(shape):
    """A bright blob labelled 1: after rotation, scaling, elastic field, flips, the label still covers it."""
    b = 6
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [0.35 * s for s in shape]  # off-centre, so a rotation moves it
    radius2 = sum(((g - c) / (0.18 * s)) ** 2 for g, c, s in zip(grids, centre, shape, strict=True))
    blob = torch.from_numpy(radius2 < 1)
    label = blob.long().expand(b, *shape).clone()
    image = blob.float().expand(b, 1, *shape).clone()
    cfg = AugmentConfig(rotate=1.0, rotate_max_deg=40.0, scale=1.0, elastic=1.0, **SPATIAL_ONLY)
    out_image, out_label = augment_batch(image, label, torch.Generator().manual_seed(3), cfg)
    assert out_image.shape == image.shape and out_label.shape == label.shape
    for i in range(b):
        moved = out_label[i] == 1
        assert _dice(moved, blob) < 0.95  # the transform really moved the blob …
        assert _dice(moved, out_image[i, 0] > 0.5) > 0.9  # … and image and label moved together


def test_continuous_rotation_is_rigid_in_millimetres():
    """With 2 mm × 1 mm pixels a rotation keeps the blob's physical area (a voxel-space rotation would not)."""
    shape = (32, 64)
    yy, xx = np.meshgrid(np.arange(shape[0]) * 2.0, np.arange(shape[1]) * 1.0, indexing="ij")
    blob = torch.from_numpy(((yy - 32) / 12) ** 2 + ((xx - 32) / 20) ** 2 < 1)
    label = blob.long().expand(8, *shape).clone()
    cfg = AugmentConfig(flip=0, rotate90=0, rotate=1.0, rotate_max_deg=90.0, scale=0.0, **SPATIAL_ONLY)
    _, out = augment_batch(label[:, None].float(), label, torch.Generator().manual_seed(0), cfg, spacing=(2.0, 1.0))
    area = float(blob.sum())
    for i in range(8):
        assert abs(float((out[i] == 1).sum()) - area) / area < 0.06


def test_rotation_axes_follow_nnunet_anisotropy_rule():
    assert rotation_axes((1.0, 1.0, 1.0), 3) == [0, 1, 2]
    assert rotation_axes((2.5, 1.0, 1.0), 3) == [0, 1, 2]  # ratio <= 3: all planes
    assert rotation_axes((5.0, 0.8, 0.9), 3) == [1, 2]  # thick z: in-plane only
    assert rotation_axes((0.7, 4.0, 0.7), 3) == [0, 2]
    assert rotation_axes(None, 2) == [0, 1]


@pytest.mark.parametrize("spacing, mixes", [((5.0, 1.0, 1.0), False), ((1.0, 1.0, 1.0), True)])
def test_anisotropic_rotation_never_mixes_thick_and_thin_axes(spacing, mixes):
    """Channel 0 holds z+1 in slice z, channel 1 is all ones; their ratio after resampling is the z a voxel came
    from (zero padding weighs both alike). If no rotation mixes z with y/x, it is constant within each output slice."""
    n = 16
    z = (torch.arange(n, dtype=torch.float32) + 1).view(1, n, 1, 1).expand(16, n, n, n)
    image = torch.stack([z, torch.ones_like(z)], dim=1).clone()
    label = torch.zeros(16, n, n, n, dtype=torch.int64)
    cfg = AugmentConfig(flip=0.5, rotate90=1.0, rotate=1.0, rotate_max_deg=45, scale=0.5, elastic=1.0, **SPATIAL_ONLY)
    out, _ = augment_batch(image, label, torch.Generator().manual_seed(1), cfg, spacing=spacing)
    spread = 0.0
    for sample in out:
        for value, weight in zip(sample[0], sample[1], strict=True):  # one z slice
            source = value[weight > 0.05] / weight[weight > 0.05]  # elsewhere: padding left by the transform
            if source.numel():
                spread = max(spread, float(source.max() - source.min()))
    assert (spread > 1.0) == mixes


# ---------------------------------------------------------------- EMA
def test_ema_matches_hand_computation():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = WeightEMA(model, decay=0.9)
    expected = torch.tensor([[1.0, 2.0]])
    for n, new in enumerate(([[3.0, 0.0]], [[-1.0, 4.0]], [[0.5, 0.5]])):
        with torch.no_grad():
            model[0].weight.copy_(torch.tensor(new))
            model[1].running_mean.fill_(float(n + 7))
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))  # warm-up: 0.1, 2/11, 3/12
        expected = d * expected + (1 - d) * torch.tensor(new)
        torch.testing.assert_close(ema.module[0].weight, expected)
        assert float(ema.module[1].running_mean) == n + 7  # buffers are copied, not averaged
    assert ema.updates == 3 and not ema.module[0].weight.requires_grad


# ---------------------------------------------------------------- deep supervision
def test_unet_deep_supervision_heads_train_only():
    model = build_model("unet3d", "sat", 1, 3, features=[4, 8, 16], deep_supervision=True)
    x = torch.randn(2, 1, 16, 16, 16)
    outputs = model.train()(x)
    assert isinstance(outputs, list) and len(outputs) == 2  # main + one aux (3 levels: 2 decoder levels)
    assert all(o.shape == (2, 3, 16, 16, 16) for o in outputs)
    assert not torch.allclose(outputs[0], outputs[1])
    main = model.eval()(x)
    assert isinstance(main, torch.Tensor)
    torch.testing.assert_close(make_lean(model)(x), main, atol=1e-5, rtol=1e-4)
    plain = build_model("unet3d", "sat", 1, 3, features=[4, 8, 16])
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters()) == 8 * 3 + 3


# ---------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def data3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    raw = write_synthetic_msd(root / "raw", 4, (16, 16, 16), spacing=(1.0,) * 3, seed=0, oblique=False,
                              two_structures=False, noise=0.2)  # fmt: skip
    preprocess_dataset(raw, root / "pp", folds=2, seed=0)
    return root / "pp"


TINY = dict(net="unet3d", patch=(16, 16, 16), batch=2, iters_per_epoch=2, optimizer="adam", lr=1e-3,
            device="cpu", deterministic=True, model_options={"features": [4, 8]})  # fmt: skip


def test_resident_data_gives_the_same_run(data3d, tmp_path):
    """Cutting patches from resident tensors replays exactly the loader's batches (same seeds, same weights)."""
    for resident in (False, True):
        train(data3d, tmp_path / f"r{resident}", TrainConfig(epochs=2, resident=resident, **TINY), progress=False)
    a = load_checkpoint(tmp_path / "rFalse" / "checkpoint_last.pt")["model"]
    b = load_checkpoint(tmp_path / "rTrue" / "checkpoint_last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ema_run_ships_and_resumes_the_average(data3d, tmp_path):
    config = TrainConfig(epochs=2, ema=0.9, **TINY)
    result = train(data3d, tmp_path / "run", config, progress=False)
    payload = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert payload["ema"]["updates"] == 4 and result.final_weights == "ema"
    trained = payload["train_model"]
    assert any(not torch.equal(payload["model"][k], trained[k]) for k in trained if trained[k].is_floating_point())
    assert result.final_dice == pytest.approx(float(result.history[-1]["dice_mean"]))
    assert result.summary()["val_dice"] == result.final_dice
    # resuming restores the trained weights (not the average) and the EMA: same end as an uninterrupted run
    train(data3d, tmp_path / "short", TrainConfig(epochs=1, ema=0.9, **TINY), progress=False)
    train(data3d, tmp_path / "short", None, resume=True, resume_overrides={"epochs": 2}, progress=False)
    resumed = load_checkpoint(tmp_path / "short" / "checkpoint_last.pt")
    for key in ("model", "train_model"):
        assert all(torch.equal(payload[key][k], resumed[key][k]) for k in payload[key]), key


def test_nan_dice_never_freezes_the_best_checkpoint(data3d, tmp_path, monkeypatch):
    """A class absent from every validation case gives NaN Dice; the best epoch must follow the defined ones."""
    scores = iter([0.2, 0.6, 0.4])
    monkeypatch.setattr(loop, "validate_cases", lambda *a, **k: [{"core": next(scores), "absent": float("nan")}])
    result = train(data3d, tmp_path / "run", TrainConfig(epochs=3, **TINY), progress=False)
    assert result.best_epoch == 1 and result.best_dice == pytest.approx(0.6)
    assert load_checkpoint(tmp_path / "run" / "checkpoint_best.pt")["epoch"] == 2
    assert result.final_dice == pytest.approx(0.4)  # the honest figure: the final weights'


def test_mean_dice_and_improvement_treat_nan_as_missing():
    assert mean_dice({"a": 0.5, "b": float("nan"), "c": 0.7}) == pytest.approx(0.6)
    assert math.isnan(mean_dice({"a": float("nan")}))
    assert is_improvement(0.1, float("nan")) and is_improvement(0.1, None)
    assert not is_improvement(float("nan"), 0.1) and not is_improvement(float("nan"), None)
    assert not is_improvement(0.3, 0.4) and is_improvement(0.5, 0.4)


# (one AMP dtype per run, on every device: tests/training/test_mixed_precision.py)
