"""Mixed precision on the CPU: CUDA's autocast code path, run with the CPU's autocast, for every backbone and gate.

No GPU is needed: ``--amp`` autocasts on the CPU too (bf16 natively on AVX-512 BF16/AMX CPUs, fp16 with the
CPU's half kernels), so the dtype mismatches a CUDA run would hit (a recomputation outside autocast, a float32
operand added into a bf16 tensor) show here. The references are the same networks in float32.
"""

import json

import pytest
import torch
from typer.testing import CliRunner

from satseg.cli import app
from satseg.data.io import read_image
from satseg.data.preprocess import preprocess_dataset
from satseg.data.synthetic import write_synthetic_msd
from satseg.device import amp_mode, autocast_dtype
from satseg.inference.segmenter import load_segmenter
from satseg.nn import build_model, list_gates, list_models
from satseg.nn.lean import make_lean
from satseg.runs import load_checkpoint
from satseg.training.config import TrainConfig
from satseg.training.trainer import train
from tests.nn.test_backbones import PARAMS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
runner = CliRunner()


def _options(net: str) -> dict:
    """The backbone's tiny options with its default gating (U-Net/V-Net: the finest skip; deeper ones plain)."""
    return {k: v for k, v in PARAMS[net]["options"].items() if k != "gate_levels"}


def _dims(net: str) -> int:
    return int(net[-2])


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A tiny preprocessed dataset per dimensionality (sides a multiple of every tiny net's divisor)."""
    root = tmp_path_factory.mktemp("amp-data")
    out = {}
    for dims, shape in ((2, (16, 16)), (3, (12, 12, 12))):
        raw = write_synthetic_msd(root / f"raw{dims}", 4, shape, spacing=(1.0,) * dims, seed=dims, oblique=False,
                                  two_structures=False, noise=0.2)  # fmt: skip
        out[dims] = preprocess_dataset(raw, root / f"pp{dims}", folds=2, seed=0) and root / f"pp{dims}"
    return out


# ---------------------------------------------------------------- the policy
@pytest.mark.parametrize(
    "recorded, device, override, expected",
    [
        ({}, CPU, None, None),  # the default, auto: CUDA only
        ({}, CUDA, None, torch.bfloat16),
        ({"amp": True}, CPU, None, None),  # runs saved before `amp` had three values: `true` was auto
        ({"amp": True, "amp_dtype": "fp16"}, CUDA, None, torch.float16),
        ({"amp": "on", "amp_dtype": "fp16"}, CPU, None, torch.float16),
        ({"amp": "on"}, CPU, False, None),
        ({"amp": "off"}, CUDA, None, None),
        ({"amp": False}, CPU, True, torch.bfloat16),
        ({"amp": "auto"}, CPU, True, torch.bfloat16),
    ],
)
def test_autocast_dtype_follows_the_run_the_device_and_the_override(recorded, device, override, expected):
    assert autocast_dtype(device, recorded, override) == expected


def test_train_config_amp_settings():
    assert TrainConfig().amp == "auto"
    assert TrainConfig(amp=True).amp == "on" and TrainConfig(amp=False).amp == "off"
    assert TrainConfig.from_dict({"amp": True}).amp == "auto"  # a recorded `true` is the old auto
    assert TrainConfig.from_dict(TrainConfig(amp="on").to_dict()).amp == "on"
    assert amp_mode(None) == "auto"
    with pytest.raises(Exception, match="amp setting"):
        TrainConfig(amp="sometimes")


# ---------------------------------------------------------------- the defects, at their depth
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("dims", [2, 3])
def test_concat_free_unet_trains_under_autocast_like_the_concatenating_one(dims, dtype):
    """The decoder's recomputed up-sampling re-enters the forward's autocast state (it used to fail: BFloat16
    input, Float weight), and adds no error: its gradients are as close to the float32 ones as those of the
    concatenating decoder under the same autocast."""
    torch.manual_seed(0)
    model = build_model(f"unet{dims}d", "sat", 1, 3, features=(4, 8, 16), gate_levels="all").train()
    x = torch.randn(2, 1, *([16] * dims))
    weight = torch.randn(2, 3, *([16] * dims))  # a linear loss: the gradients are the network's alone

    def gradients(concat_free, autocast_dtype):
        model.concat_free_training = concat_free
        model.zero_grad()
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            out = model(x)
        assert out.dtype == (autocast_dtype or torch.float32)
        (out.float() * weight).mean().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    reference = gradients(False, None)
    free_error = float((gradients(True, DTYPES[dtype]) - reference).norm() / reference.norm())
    concat_error = float((gradients(False, DTYPES[dtype]) - reference).norm() / reference.norm())
    assert free_error <= 1.5 * concat_error + 1e-3, (free_error, concat_error)


@pytest.mark.parametrize("net", list_models())
@pytest.mark.parametrize("skip", list_gates())
def test_lean_path_under_bf16_autocast_matches_the_float32_model(net, skip):
    """Every backbone × gate: the lean module under bf16 autocast (V-Net's plain levels used to fail with
    `index_add_(): self (BFloat16) and source (Float)`) against the eager float32 model, within bf16 error."""
    torch.manual_seed(0)
    model = build_model(net, skip, 1, 3, **_options(net))
    x = torch.randn(2, 1, *([PARAMS[net]["side"]] * _dims(net)))
    model.train()
    with torch.no_grad():
        model(x)  # BN statistics away from their init, so the folding is not trivial
    model.eval()
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lean = make_lean(model)(x)
    assert lean.dtype == torch.bfloat16
    scale = float(reference.abs().max())
    torch.testing.assert_close(lean.float(), reference, rtol=0, atol=0.03 * scale + 1e-3)


# ---------------------------------------------------------------- through the trainer and the CLI
def _train_tiny(data, out, net, skip, dtype, **extra):
    config = TrainConfig(
        net=net, skip=skip, epochs=1, iters_per_epoch=1, batch=2, patch=(8,) * _dims(net), optimizer="adam",
        lr=1e-3, amp="on", amp_dtype=dtype, device="cpu", augment=False, model_options=_options(net), **extra,
    )  # fmt: skip
    return train(data, out, config, progress=False)


@pytest.mark.parametrize("net", list_models())
@pytest.mark.parametrize("skip", list_gates())
def test_one_bf16_training_step_and_validation_for_every_backbone_and_gate(datasets, tmp_path, net, skip):
    result = _train_tiny(datasets[_dims(net)], tmp_path / "run", net, skip, "bf16")
    assert result.epochs_done == 1
    row = result.history[-1]
    assert torch.isfinite(torch.tensor(row["train_loss"])) and 0.0 <= row["dice_mean"] <= 1.0
    payload = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert payload["config"]["train"]["amp"] == "on"
    assert all(v.dtype != torch.bfloat16 for v in payload["model"].values()), "weights stay float32"


@pytest.mark.parametrize("net", ["unet3d", "vnet3d", "di2in2d", "tiramisu2d"])
def test_one_fp16_training_step_with_the_grad_scaler(datasets, tmp_path, net):
    """fp16 needs the gradient scaler; on the CPU it is torch's CPU GradScaler, saved with the checkpoint."""
    result = _train_tiny(datasets[_dims(net)], tmp_path / "run", net, "sat", "fp16")
    assert result.epochs_done == 1
    payload = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert payload["scaler"]["scale"] > 0


def _conv_output_dtypes(segmenter):
    """Record the dtype of every conv output the lean model makes (the real precision of the windows)."""
    seen = set()
    (lean,) = [c.cell_contents for c in segmenter.predict.__closure__ if isinstance(c.cell_contents, torch.nn.Module)]
    for m in lean.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d):
            m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    return seen


# Small but default-shaped networks through the command line (scalar options only), and the patch each needs.
CLI_NETS = {
    "unet": (["--features", "4,8"], 8),
    "vnet": (["--net-option", "base_features=2", "--net-option", "kernel_size=3"], 16),
    "di2in": ([], 16),
    "tiramisu": (["--net-option", "growth_rate=2", "--net-option", "first_features=4"], 32),
}


# 3D DI2IN and FC-DenseNet take 10-20 s each at their default depth: `org` runs through the trainer test above
CLI_CASES = [(net, skip) for net in list_models() for skip in ("org", "sat")
             if skip == "sat" or net not in ("di2in3d", "tiramisu3d")]  # fmt: skip


@pytest.mark.parametrize("net, skip", CLI_CASES)
def test_cli_train_with_amp_then_segment_with_torch(datasets, tmp_path, net, skip):
    """The issue's check: `satseg train --device cpu --amp --amp-dtype bf16`, then `satseg segment --backend
    torch` of that run, for every backbone in 2D and 3D with `org` and `sat`."""
    dims = _dims(net)
    options, side = CLI_NETS[net[:-2]]
    run = tmp_path / "run"
    args = ["train", "--data", str(datasets[dims]), "--out", str(run), "--net", net, "--skip", skip, "--epochs", "1",
            "--iters", "1", "--batch", "2", "--patch", ",".join([str(side)] * dims), "--device", "cpu", "--amp",
            "--amp-dtype", "bf16", "--optimizer", "adam", "--no-augment", *options]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    scan = sorted((datasets[dims].parent / f"raw{dims}" / "imagesTr").iterdir())[0]
    mask_path = tmp_path / f"mask{''.join(scan.suffixes)}"
    result = runner.invoke(app, ["segment", str(scan), "--model", str(run), "--backend", "torch", "--device", "cpu",
                                 "-o", str(mask_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    mask, image = read_image(mask_path), read_image(scan)
    assert mask.array.shape[1:] == image.array.shape[1:] and mask.spacing == image.spacing


def test_segment_runs_in_the_recorded_dtype_and_amp_overrides_it(datasets, tmp_path):
    """A run trained with --amp segments in bf16 on the CPU (torch backend chosen, the export is float32);
    --no-amp gives float32 and the ONNX default; a default run stays float32 on the CPU unless --amp."""
    _train_tiny(datasets[3], tmp_path / "on", "unet3d", "sat", "bf16")
    scan = read_image(sorted((datasets[3].parent / "raw3" / "imagesTr").iterdir())[0])
    on = load_segmenter(tmp_path / "on", device="cpu")
    assert on.backend == "torch" and on.amp_dtype == torch.bfloat16
    seen = _conv_output_dtypes(on)
    on.segment(scan)
    assert seen == {torch.bfloat16}
    off = load_segmenter(tmp_path / "on", device="cpu", amp=False)
    assert off.backend == "onnx" and off.amp_dtype is None
    forced = load_segmenter(tmp_path / "on", device="cpu", backend="torch", amp=False)
    seen = _conv_output_dtypes(forced)
    forced.segment(scan)
    assert seen == {torch.float32}
    with pytest.raises(Exception, match="float32 export"):
        load_segmenter(tmp_path / "on", device="cpu", backend="onnx", amp=True)


def test_evaluate_and_postprocess_of_a_vnet_under_bf16_autocast(datasets, tmp_path):
    """`evaluate --model` and `postprocess` of a V-Net (its deeper skips plain) with --amp: both used to fail on
    every case in the lean V-Net's skip addition; their Dice agrees with float32 within bf16's error."""
    run = tmp_path / "run"
    _train_tiny(datasets[3], run, "vnet3d", "org", "bf16")
    scores = {}
    for flag in ("--amp", "--no-amp"):
        out = tmp_path / f"eval{flag}"
        result = runner.invoke(app, ["evaluate", "--model", str(run), "--data", str(datasets[3]), "--device", "cpu",
                                     flag, "-o", str(out), "--json"])  # fmt: skip
        assert result.exit_code == 0, result.output
        scores[flag] = json.loads(result.stdout)["classes"]["core"]
    # nearly every voxel gets the same label in bf16 and float32: the Dice moves by a few voxels at most
    assert scores["--amp"]["dice"]["n"] == scores["--no-amp"]["dice"]["n"] == 2
    assert scores["--amp"]["dice"]["mean"] == pytest.approx(scores["--no-amp"]["dice"]["mean"], abs=0.01)
    assert scores["--amp"]["recall"]["mean"] == pytest.approx(scores["--no-amp"]["recall"]["mean"], abs=0.01)
    result = runner.invoke(app, ["postprocess", str(run), "--data", str(datasets[3]), "--device", "cpu", "--amp",
                                 "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["lcc"]) == {"core"}
