"""CUDA paths: mixed precision, channels-last, torch.compile, GPU sliding window. Run where a GPU is present."""

import json

import numpy as np
import pytest
import torch

from satseg.data.synthetic import synthetic_case
from satseg.inference.sliding_window import sliding_window_inference
from satseg.nn import build_model
from satseg.training.config import TrainConfig
from satseg.training.trainer import train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _write_store(folder, num_cases=6, shape=(24, 24, 24)):
    """A preprocessed folder written directly in the store format (GPU hosts lack SimpleITK for preprocessing)."""
    rng = np.random.default_rng(0)
    (folder / "cases").mkdir(parents=True)
    ids = [f"case{i}" for i in range(num_cases)]
    for case_id in ids:
        image, label = synthetic_case(rng, shape, noise=0.2, two_structures=False)
        image = (image - image.mean()) / image.std()
        np.savez_compressed(folder / "cases" / f"{case_id}.npz", image=image[None], label=label)
        (folder / "cases" / f"{case_id}.json").write_text("{}")
    plan = {"spatial_dims": 3, "num_channels": 1, "labels": {"background": 0, "core": 1}, "patch_size": [16] * 3}
    (folder / "plan.json").write_text(json.dumps(plan))
    (folder / "splits.json").write_text(json.dumps([{"train": ids[:-2], "val": ids[-2:]}]))
    return folder


@cuda
@pytest.mark.parametrize("amp_dtype", ["bf16", "fp16"])
def test_cuda_training_with_amp_and_channels_last_learns(tmp_path, amp_dtype):
    data = _write_store(tmp_path / "data")
    cfg = TrainConfig(net="unet3d", skip="sat", epochs=6, iters_per_epoch=12, batch=4, patch=(16, 16, 16),
                      optimizer="adam", lr=3e-3, amp_dtype=amp_dtype, device="cuda",
                      model_options={"features": [8, 16]})  # fmt: skip
    result = train(data, tmp_path / "run", cfg, progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert result.best_dice > 0.6


@cuda
def test_compiled_model_matches_eager():
    torch.manual_seed(0)
    model = build_model("unet3d", "sat", 1, 3, features=[8, 16, 32]).cuda().eval()
    x = torch.randn(2, 1, 32, 32, 32, device="cuda")
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, atol=1e-3, rtol=1e-3)


@cuda
def test_gpu_sliding_window_matches_cpu():
    torch.manual_seed(0)
    model = build_model("unet3d", "sat", 1, 3, features=[8, 16]).eval()
    image = torch.randn(1, 40, 36, 44)
    on_cpu = sliding_window_inference(model, image, (16, 16, 16), 3, device="cpu", return_probabilities=True)
    on_gpu = sliding_window_inference(model.cuda(), image, (16, 16, 16), 3, device="cuda", amp=False,
                                      return_probabilities=True)  # fmt: skip
    torch.testing.assert_close(on_gpu.probabilities, on_cpu.probabilities, atol=1e-4, rtol=1e-4)
    assert (on_gpu.labels == on_cpu.labels).float().mean() > 0.999
