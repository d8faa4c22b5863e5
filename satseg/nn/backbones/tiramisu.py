"""One Hundred Layers Tiramisu / FC-DenseNet (Jégou et al. 2017, arXiv:1611.09326), 2D or 3D, gated.

Layout (as the authors' Lasagne code): a 3×3(×3) first conv (48 channels), then ``n_pool`` dense blocks
each followed by a transition down (BN–ReLU–1×1 conv–dropout–max-pool), a bottleneck dense block, and
``n_pool`` transition ups (3×3(×3) transposed conv, stride 2, output padding 1: exactly doubles every
side) each followed by a dense block; a 1×1 conv gives the logits. Dense layers are BN–ReLU–3×3 conv–
dropout adding ``growth_rate`` channels. The pre-activation layout means every conv's output meets a BN
before the next conv (the head is the only conv without one).

Gates (Taghanaki et al., Fig. 4), two kinds:

* **Long skips**: the output of each down-path dense block goes through a gate before it is
  concatenated with the transition-up output at the start of the matching up-path block.
* **Inside each dense block** (all ``2 * n_pool + 1`` blocks): the block input ``x`` feeds the first
  layer unchanged; the copy of ``x`` carried past it, i.e. the ``x`` in every later concatenation
  ``cat(x, y_1, …, y_{j-1})`` (input of layer ``j ≥ 2``) and in the block output ``cat(x, y_1, …, y_n)``,
  is replaced by ``gate(x)``. With ``org`` this is exactly FC-DenseNet; with ``at``/``sat`` one channel
  of ``x`` travels through the block instead of all of them.

Up-path blocks pass only their new features ``cat(y_1, …, y_n)`` to the next transition up; the last
one passes ``cat(gate(x), y_1, …, y_n)`` to the head, as in the original code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from satseg.errors import ConfigError, look_up_option
from satseg.nn.base import SegmentationNet
from satseg.nn.gates import build_gate
from satseg.nn.layers import LayerSpec, layer_type, make_act, make_norm
from satseg.nn.registry import register_dimensions

__all__ = ["Tiramisu", "DenseBlock", "PRESETS", "DENSE_GATINGS"]

DENSE_GATINGS = ("down", "all", "none")
"""Where gates sit inside dense blocks; see :class:`Tiramisu`'s ``dense_gating``."""

PRESETS: dict[str, tuple[tuple[int, ...], int]] = {
    "fcdensenet56": ((4,) * 11, 12),
    "fcdensenet67": ((5,) * 11, 16),
    "fcdensenet103": ((4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4), 16),
}
"""Preset name -> (layers per block, down path | bottleneck | up path; growth rate) from Jégou et al."""


def _bn_act_conv(dims: int, cin: int, cout: int, kernel: int, dropout: float, norm, act) -> nn.Sequential:
    conv = layer_type("conv", dims)(cin, cout, kernel, padding=kernel // 2)
    drop = layer_type("dropout", dims)(dropout) if dropout > 0 else nn.Identity()
    return nn.Sequential(make_norm(norm, dims, cin), make_act(act, cin), conv, drop)


class DenseBlock(nn.Module):
    """Dense block whose carried input passes a gate: ``(B, C, *S) -> ((B, g + n·k, *S), (B, n·k, *S))``.

    Returns ``(cat(gate(x), y_1, …, y_n), cat(y_1, …, y_n))``; see the module docstring for where the
    gate sits. A one-layer block built with ``returns_input=False`` has no gate (nothing would use it)
    and returns ``(None, y_1)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: block input channels ``C``.
        num_layers: dense layers ``n``.
        growth_rate: channels ``k`` each layer adds.
        skip: gate on the carried block input.
        dropout: dropout after each conv.
        norm: normalisation (before each conv).
        act: activation.
        gate_options: options of every skip gate (see :func:`satseg.nn.gates.build_gate`), e.g.
            ``{"select_init": "keras-glorot", "attend_channels": 2}``.
        returns_input: whether the caller uses the first output (the carried input with the new features).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_layers: int,
        growth_rate: int,
        skip: str,
        dropout: float = 0.2,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        gate_options: Mapping[str, Any] | None = None,
        returns_input: bool = True,
        gate_output: bool = True,
    ) -> None:
        super().__init__()
        # A one-layer block whose caller keeps only the new features never uses the carried input: no gate.
        used = returns_input or num_layers > 1
        self.gate = build_gate(skip, spatial_dims, in_channels, **(gate_options or {})) if used else None
        carried = self.gate.out_channels if used else 0
        self.layers = nn.ModuleList(
            _bn_act_conv(
                spatial_dims, in_channels if j == 0 else carried + j * growth_rate, growth_rate, 3, dropout, norm, act
            )
            for j in range(num_layers)
        )
        self.new_channels = num_layers * growth_rate
        self.gate_output = gate_output or not used
        self.out_channels = (carried if self.gate_output else in_channels if used else 0) + self.new_channels

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        new = [self.layers[0](x)]
        if self.gate is None:
            return None, new[0]
        carried = self.gate(x)
        for layer in self.layers[1:]:
            new.append(layer(torch.cat([carried, *new], dim=1)))
        new_features = torch.cat(new, dim=1)
        return torch.cat([carried if self.gate_output else x, new_features], dim=1), new_features


class Tiramisu(SegmentationNet):
    """FC-DenseNet with gated long and dense-block skips: ``(B, in_channels, *S) -> (B, out_channels, *S)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes, background included.
        skip: skip gate (``org``, ``st``, ``at``, ``sat``), used on every long and dense-block skip.
        preset: ``fcdensenet56`` (default), ``fcdensenet67`` or ``fcdensenet103``.
        layers_per_block: overrides the preset: an odd number of entries, down path, bottleneck, up path
            (symmetric lengths); sides of the input must be divisible by ``2 ** (len // 2)``.
        growth_rate: overrides the preset's growth rate ``k``.
        first_features: channels of the first 3×3(×3) conv (48 in the paper).
        dropout: dropout probability after each conv (0.2 in the paper).
        norm: normalisation.
        act: activation.
        gate_options: options of every skip gate (see :func:`satseg.nn.gates.build_gate`), e.g.
            ``{"select_init": "keras-glorot", "attend_channels": 2}``.
        dense_gating: gates inside dense blocks (the paper's Fig. 4): ``down`` (default) gates what the
            layers of each down-path block read (the block still passes its whole input on); ``all`` gates
            the carried input of every block, in what the layers read and in the block output (so the down
            path never accumulates channels: ~80 % fewer parameters); ``none`` keeps plain dense blocks.
        gate_long_skips: gate the encoder–decoder skips too (default False). The default pair reproduces the
            paper's Table 3 saving (17.4 % for FC-DenseNet67 2D vs the paper's 17.05 %; its text says
            ~20.7 %); gating the long skips as well, as the paper's text describes, saves at least 25 % with
            any dense gating, so the paper's count implies they were not gated — an inference.
    """

    legacy_options = {**SegmentationNet.legacy_options, "dense_gating": "all", "gate_long_skips": True}

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        skip: str = "sat",
        preset: str = "fcdensenet56",
        layers_per_block: Sequence[int] | None = None,
        growth_rate: int | None = None,
        first_features: int = 48,
        dropout: float = 0.2,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        gate_options: Mapping[str, Any] | None = None,
        dense_gating: str = "down",
        gate_long_skips: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, skip)
        dense_gating = look_up_option(dense_gating, DENSE_GATINGS, "dense_gating")
        inner_down = skip if dense_gating != "none" else "org"
        inner_rest = skip if dense_gating == "all" else "org"
        self.dense_gating, self.gate_long_skips = dense_gating, bool(gate_long_skips)
        preset_layers, preset_k = PRESETS[look_up_option(preset, PRESETS, "Tiramisu preset")]
        layers = tuple(int(n) for n in (preset_layers if layers_per_block is None else layers_per_block))
        k = int(preset_k if growth_rate is None else growth_rate)
        if len(layers) < 3 or len(layers) % 2 == 0 or min(layers) < 1:
            raise ConfigError(
                f"`layers_per_block` needs an odd number (≥ 3) of positive entries, got {layers}",
                hint="give down-path blocks, the bottleneck, then as many up-path blocks, e.g. [2, 2, 2]",
            )
        if k < 1 or first_features < 1 or not 0 <= dropout < 1:
            raise ConfigError(
                f"need growth_rate ≥ 1, first_features ≥ 1, 0 ≤ dropout < 1; got {k}, {first_features}, {dropout}"
            )
        n_pool = len(layers) // 2
        self.layers_per_block, self.growth_rate = layers, k
        self.input_divisor = 2**n_pool
        opts = {
            "dropout": dropout,
            "norm": norm,
            "act": act,
            "gate_options": gate_options,
            "gate_output": dense_gating == "all",
        }
        dims = spatial_dims
        self.first = layer_type("conv", dims)(in_channels, first_features, 3, padding=1)
        self.gates = nn.ModuleList()  # long skips, registered first so skip_gates() lists them first
        self.down_blocks, self.trans_down = nn.ModuleList(), nn.ModuleList()
        skip_channels, ch = [], first_features
        for i in range(n_pool):
            block = DenseBlock(dims, ch, layers[i], k, inner_down, **opts)
            ch = block.out_channels
            skip_channels.append(ch)
            self.down_blocks.append(block)
            self.trans_down.append(
                nn.Sequential(_bn_act_conv(dims, ch, ch, 1, dropout, norm, act), layer_type("maxpool", dims)(2))
            )
        for c in skip_channels:
            self.gates.append(build_gate(skip if gate_long_skips else "org", dims, c, **(gate_options or {})))
        self.bottleneck = DenseBlock(dims, ch, layers[n_pool], k, inner_rest, **opts, returns_input=False)
        up_in = self.bottleneck.new_channels
        self.trans_up, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for i in range(n_pool):
            level = n_pool - 1 - i
            self.trans_up.append(
                layer_type("convtranspose", dims)(up_in, up_in, 3, stride=2, padding=1, output_padding=1)
            )
            cin = up_in + self.gates[level].out_channels
            last = i == n_pool - 1
            block = DenseBlock(dims, cin, layers[n_pool + 1 + i], k, inner_rest, **opts, returns_input=last)
            self.up_blocks.append(block)
            up_in = block.new_channels
        self.head = layer_type("conv", dims)(self.up_blocks[-1].out_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.first(x)
        skips = []
        for block, down, gate in zip(self.down_blocks, self.trans_down, self.gates, strict=True):
            x, _ = block(x)
            skips.append(gate(x))
            x = down(x)
        full, new = self.bottleneck(x)
        for up, block, skip in zip(self.trans_up, self.up_blocks, reversed(skips), strict=True):
            full, new = block(torch.cat([up(new), skip], dim=1))
        return self.head(full)


register_dimensions(
    "tiramisu",
    Tiramisu,
    {
        2: "2D One Hundred Layers Tiramisu (Jégou et al. 2017).",
        3: "3D Tiramisu (the 2D network with 3D operations, as the SAT paper does).",
    },
)
