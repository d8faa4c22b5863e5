"""U-Net training without the decoder's concatenation buffers: equal to the concatenating forward (outputs and
every gradient) and lower in peak memory, measured by satseg's live-tensor tracker."""

import copy

import pytest
import torch
from torch.nn import functional as F

from satseg.nn import build_model
from satseg.nn.params import LiveTensorBytes


def _step(model, x, y):
    """One loss and backward; with deep supervision every head's output counts (aux heads get gradients)."""
    model.zero_grad(set_to_none=True)
    outs = model(x)
    outs = outs if isinstance(outs, list) else [outs]
    sum(F.cross_entropy(out, y) for out in outs).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return torch.stack([out.detach() for out in outs]), grads


@pytest.mark.parametrize(
    "net, skip, options",
    [
        ("unet3d", "org", {}),
        ("unet3d", "st", {}),
        ("unet3d", "at", {}),
        ("unet3d", "sat", {}),
        ("unet3d", "sat", {"align_channels": True}),
        ("unet3d", "sat", {"gate_options": {"attend_channels": 2, "attend_norm": True}}),
        ("unet2d", "sat", {}),
        ("unet2d", "org", {}),
        ("unet3d", "sat", {"deep_supervision": True}),
        ("unet2d", "org", {"deep_supervision": True}),
    ],
)
def test_concat_free_training_matches_the_concatenating_forward_and_gradients(net, skip, options):
    torch.manual_seed(0)
    split = build_model(net, skip, 1, 3, features=(4, 8, 16), **options).train()
    concat = copy.deepcopy(split)
    concat.concat_free_training = False
    dims = int(net[-2])
    x = torch.randn(2, 1, *[12] * dims)
    y = torch.randint(0, 3, (2, *[12] * dims))
    out_split, grads_split = _step(split, x, y)
    out_concat, grads_concat = _step(concat, x, y)
    assert out_split.shape[0] == (2 if options.get("deep_supervision") else 1)  # main (+ one aux head)
    torch.testing.assert_close(out_split, out_concat, rtol=1e-5, atol=1e-5)
    assert grads_split.keys() == grads_concat.keys() == {n for n, _ in split.named_parameters()}
    for name, grad in grads_concat.items():
        torch.testing.assert_close(grads_split[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_modulate_and_eval_keep_the_concatenating_forward(deep_supervision):
    torch.manual_seed(0)
    model = build_model(
        "unet3d",
        "sat",
        1,
        2,
        features=(4, 8, 16),
        transfer="modulate",
        gate_levels="all",
        deep_supervision=deep_supervision,
    ).train()
    reference = copy.deepcopy(model)
    reference.concat_free_training = False
    x = torch.randn(1, 1, 8, 8, 8)
    out, expected = model(x), reference(x)
    if deep_supervision:
        assert len(out) == len(expected) == 2
    for a, b in zip(out if deep_supervision else [out], expected if deep_supervision else [expected], strict=True):
        assert torch.equal(a, b)  # modulate: the same code path, bit for bit
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("skip", ["org", "sat"])
def test_concat_free_training_lowers_the_peak_of_live_tensors(skip):
    torch.manual_seed(0)
    x, y = torch.randn(2, 1, 16, 16, 16), torch.randint(0, 2, (2, 16, 16, 16))
    peaks = {}
    for free in (True, False):
        model = build_model("unet3d", skip, 1, 2, features=(8, 16, 32)).train()
        model.concat_free_training = free
        tracker = LiveTensorBytes()
        with tracker:
            F.cross_entropy(model(x), y).backward()
        peaks[free] = tracker.peak
    # At least the first level's up-sampled half of the concatenation: 8 channels x 2 x 16^3 float32.
    assert peaks[True] <= peaks[False] - 8 * 2 * 16**3 * 4
