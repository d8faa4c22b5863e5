"""Skip gates against the paper's equations 1–4, computed literally."""

import pytest
import torch

from satseg.errors import ConfigError
from satseg.nn import build_gate, list_gates, trelu


def test_trelu_matches_eq2():
    z = torch.tensor([-2.0, -0.0, 0.3, 1.0, 7.5])
    assert torch.equal(trelu(z), torch.tensor([0.0, 0.0, 0.3, 1.0, 1.0]))


@pytest.mark.parametrize("dims", [2, 3])
def test_org_is_identity(dims):
    f = torch.randn(2, 5, *([6] * dims))
    gate = build_gate("org", dims, 5)
    assert gate.out_channels == 5
    assert torch.equal(gate(f), f)
    assert gate.selection() is None and gate.fraction_off() is None


@pytest.mark.parametrize("dims", [2, 3])
def test_st_switches_channels_off_exactly(dims):
    f = torch.randn(2, 4, *([5] * dims))
    gate = build_gate("st", dims, 4)
    with torch.no_grad():
        gate.select_weight.copy_(torch.tensor([-0.5, 0.25, 1.7, 0.0]))
    y = gate(f)
    assert y.shape == f.shape and gate.out_channels == 4
    assert torch.count_nonzero(y[:, 0]) == 0 and torch.count_nonzero(y[:, 3]) == 0
    torch.testing.assert_close(y[:, 1], f[:, 1] * 0.25)
    torch.testing.assert_close(y[:, 2], f[:, 2])
    assert gate.fraction_off() == pytest.approx(0.5)


@pytest.mark.parametrize("dims", [2, 3])
def test_at_is_sigmoid_of_weighted_channel_sum(dims):
    f = torch.randn(2, 3, *([4] * dims))
    gate = build_gate("at", dims, 3)
    k = gate.attend.weight.detach().flatten()
    expected = torch.sigmoid(torch.einsum("bc...,c->b...", f, k) + gate.attend.bias.detach()).unsqueeze(1)
    torch.testing.assert_close(gate(f), expected)
    assert gate.out_channels == 1


@pytest.mark.parametrize("dims", [2, 3])
def test_sat_folded_equals_literal_eq1_to_4(dims):
    torch.manual_seed(0)
    f = torch.randn(2, 6, *([5] * dims), dtype=torch.float64)
    gate = build_gate("sat", dims, 6).double()
    with torch.no_grad():
        gate.select_weight.copy_(torch.tensor([-1.0, 0.2, 0.9, 1.5, 0.0, 0.6]))
    w = trelu(gate.select_weight.detach())
    k = gate.attend.weight.detach().flatten()
    by_hand = torch.sigmoid(torch.einsum("bc...,c->b...", f * w.view(1, -1, *[1] * dims), k) + gate.attend.bias)
    torch.testing.assert_close(gate(f), by_hand.unsqueeze(1).detach())
    torch.testing.assert_close(gate(f), gate.forward_literal(f))
    assert gate.fraction_off() == pytest.approx(2 / 6)


@pytest.mark.parametrize("skip", ["st", "at", "sat"])
def test_gradients_reach_w_and_k(skip):
    gate = build_gate(skip, 3, 4)
    gate(torch.randn(1, 4, 3, 3, 3)).sum().backward()
    for name, p in gate.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_keep_attention_records_last_map():
    gate = build_gate("sat", 2, 3)
    gate(torch.randn(1, 3, 4, 4))
    assert gate.last_attention is None
    gate.keep_attention = True
    y = gate(torch.randn(1, 3, 4, 4))
    assert torch.equal(gate.last_attention, y.detach())


def test_unknown_gate_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown skip `sta`; did you mean `st`\? valid: at, org, sat, st"):
        build_gate("sta", 2, 4)
    assert sorted(list_gates()) == ["at", "org", "sat", "st"]
