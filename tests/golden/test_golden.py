"""Stored ("golden") outputs of each shipped model: a fixed seeded input through the loaded model (CPU,
float32, eval mode), on the torch path and on the lean path, must give the stored logits.

A refactor that changes what a shipped model computes fails here. The stored values are regenerated with
``python -m tests.golden.regenerate`` only when that behaviour is meant to change (see its docstring).
"""

import json

import numpy as np
import pytest
import torch
from regenerate import GOLDEN_DIR, model_logits, shipped_models

RTOL = 1e-4


def test_every_shipped_model_has_stored_outputs():
    assert shipped_models(), "no shipped models found in models/"
    assert sorted(p.stem for p in GOLDEN_DIR.glob("*.json")) == shipped_models()


@pytest.mark.parametrize("name", shipped_models())
def test_shipped_model_logits_match_stored_values(name):
    stored = json.loads((GOLDEN_DIR / f"{name}.json").read_text(encoding="utf-8"))
    for path, logits in model_logits(name).items():
        ref = stored[path]
        assert list(logits.shape) == ref["shape"], path
        flat = logits.double().flatten()
        # Relative to the logits' spread: a value near zero gets the same absolute slack as a large one.
        atol = RTOL * ref["std"]
        np.testing.assert_allclose(flat[ref["indices"]].numpy(), ref["values"], rtol=RTOL, atol=atol, err_msg=path)
        for key, value in (("mean", flat.mean()), ("std", flat.std()), ("min", flat.min()), ("max", flat.max())):
            np.testing.assert_allclose(value.item(), ref[key], rtol=RTOL, atol=atol, err_msg=f"{path} {key}")
        np.testing.assert_allclose(flat.abs().sum().item(), ref["abs_sum"], rtol=RTOL, err_msg=f"{path} abs_sum")
        counts = torch.bincount(logits.argmax(1).flatten(), minlength=logits.shape[1]).tolist()
        # A near-tie may flip a voxel or two under float rounding; more than that is a changed model.
        assert np.abs(np.subtract(counts, ref["argmax_counts"])).sum() <= 2, (path, counts, ref["argmax_counts"])
