"""V-Net (Milletari et al. 2016, "V-Net: Fully Convolutional Neural Networks for Volumetric Medical
Image Segmentation", arXiv:1606.04797), in 2D or 3D, with gated skips.

Residual stages of 5×5(×5) convolutions (1, 2, 3, 3, 3 per stage by default), each conv followed by
BN and PReLU; 2×2(×2) stride-2 convolutions go down, 2×2(×2) stride-2 transposed convolutions go up.
The decoder follows MONAI's ``UpTransition``, sized from the gate: a decoder stage concatenates the
up-sampled features (the skip level's width ``w``) with what the gate transfers (``g`` channels); its first
conv maps those ``w + g`` channels to the stage width ``2w`` and the rest stay at ``2w``. The residual is
the concatenation zero-padded to ``2w`` channels (parameter-free; for ``org``/``st``, where ``g = w``, it
is exactly MONAI's ``xcat``). So a gate changes only the first conv after each concatenation, which is
what the SAT paper's Table 3 V-Net counts imply (its ``org`` − ``sat`` difference, 5,377,620, is within
0.04 % of this design's 5,379,516 at the paper's widths).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from satseg.errors import ConfigError
from satseg.nn.base import SegmentationNet, level_factor, level_strides
from satseg.nn.blocks import ConvNormAct
from satseg.nn.gates import build_level_gates
from satseg.nn.layers import LayerSpec, layer_type, make_act, make_norm
from satseg.nn.registry import register_dimensions

__all__ = ["VNet", "ResidualStage"]


class ResidualStage(nn.Module):
    """``n`` conv–BN–act layers plus a residual add: ``(B, Cin, *S) -> (B, C, *S)``.

    The first conv maps ``in_channels`` (default ``C``) to ``C``; the residual is the input with
    ``C - in_channels`` zero channels appended.

    Args:
        spatial_dims: 2 or 3.
        channels: width ``C`` of the stage.
        num_convs: convolutions in the stage (at least 1).
        kernel_size: convolution kernel (5 in V-Net).
        norm: normalisation after every conv.
        act: activation (PReLU in V-Net), also applied after the residual add.
        in_channels: input channels, at most ``channels``; defaults to ``channels``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        num_convs: int,
        kernel_size: int,
        norm: LayerSpec,
        act: LayerSpec,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        cin = channels if in_channels is None else in_channels
        if cin > channels:
            raise ConfigError(f"a residual stage cannot narrow {cin} channels to {channels}")
        self.pad = channels - cin
        self.convs = nn.Sequential(
            *(
                ConvNormAct(spatial_dims, cin if i == 0 else channels, channels, kernel_size, norm=norm, act=act)
                for i in range(num_convs)
            )
        )
        self.act = make_act(act, channels)

    def forward(self, x: Tensor) -> Tensor:
        residual = x
        if self.pad:  # zero channels appended: the residual of the first `in_channels` channels only
            residual = torch.cat([x, x.new_zeros(x.shape[0], self.pad, *x.shape[2:])], dim=1)
        return self.act(self.convs(x) + residual)


class _Down(nn.Module):
    """Stride-2 2×2(×2) conv–BN–act, then a residual stage: ``(B, Cin, *S) -> (B, Cout, *S/2)``."""

    def __init__(self, dims: int, cin: int, cout: int, num_convs: int, kernel: int, norm, act, factor=2) -> None:
        super().__init__()
        self.down = ConvNormAct(dims, cin, cout, kernel_size=factor, stride=factor, norm=norm, act=act)
        self.stage = ResidualStage(dims, cout, num_convs, kernel, norm, act)

    def forward(self, x: Tensor) -> Tensor:
        return self.stage(self.down(x))


class _Up(nn.Module):
    """Up-conv–BN–act to ``width``, concat the gated skip (``g`` ch), residual stage ``width + g -> 2·width``."""

    def __init__(
        self, dims: int, cin: int, width: int, gate_channels: int, num_convs: int, kernel, norm, act, factor=2
    ) -> None:
        super().__init__()
        self.up = nn.Sequential(
            layer_type("convtranspose", dims)(cin, width, factor, stride=factor),
            make_norm(norm, dims, width),
            make_act(act, width),
        )
        self.out_channels = 2 * width
        self.stage = ResidualStage(dims, self.out_channels, num_convs, kernel, norm, act, width + gate_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.stage(torch.cat([self.up(x), skip], dim=1))


class VNet(SegmentationNet):
    """V-Net with gated skips: ``(B, in_channels, *S) -> (B, out_channels, *S)``.

    Stage ``s`` has width ``base_features * 2**s``; the first stage's residual is the input repeated to
    ``base_features`` channels (a 1×1 projection when ``base_features`` is not a multiple of
    ``in_channels``). Decoder stage ``s`` repeats ``convs_per_stage[s]`` convs, mirroring the encoder.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes, background included.
        skip: skip gate (``org``, ``st``, ``at``, ``sat``).
        base_features: width of the first stage (16 in the paper).
        convs_per_stage: convolutions per encoder stage, first to bottleneck; sides of the input must be
            divisible by ``2 ** (len(convs_per_stage) - 1)`` (16 by default).
        kernel_size: odd kernel of the stage convolutions (5 in the paper).
        norm: normalisation after every conv.
        act: activation (PReLU in the paper).
        gate_options: options of every skip gate (see :func:`satseg.nn.gates.build_gate`), e.g.
            ``{"select_init": "keras-glorot", "attend_channels": 2}``.
        gate_levels: gate only the ``gate_levels`` finest skips, the deeper ones plain (``org``); ``all``: every
            skip (the paper). Default 1: in satseg's convergence study one-map skips cost Dice mostly at the
            deep levels, which hold little of the skip memory (``benchmarks/README.md``). See
            :func:`satseg.nn.gates.build_level_gates`.
        strides: down-sampling factor per stage and axis (see :func:`satseg.nn.base.level_strides`); ``None``:
            2 on every axis.
    """

    legacy_options = {**SegmentationNet.legacy_options, "gate_levels": "all"}
    """The base class's, plus ``gate_levels``: every skip was gated until the default became the finest only."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        skip: str = "sat",
        base_features: int = 16,
        convs_per_stage: Sequence[int] = (1, 2, 3, 3, 3),
        kernel_size: int = 5,
        norm: LayerSpec = "batch",
        act: LayerSpec = "prelu",
        gate_options: Mapping[str, Any] | None = None,
        gate_levels: int | str | None = 1,
        strides: Sequence[Sequence[int] | int] | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, skip)
        convs = tuple(int(n) for n in convs_per_stage)
        if len(convs) < 2 or min(convs) < 1:
            raise ConfigError(f"`convs_per_stage` needs at least two stages of at least one conv, got {convs}")
        if base_features < 1:
            raise ConfigError(f"`base_features` must be at least 1, got {base_features}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"`kernel_size` must be odd and positive, got {kernel_size}")
        widths = [base_features * 2**s for s in range(len(convs))]
        self.widths = tuple(widths)
        self.strides = level_strides(strides, len(convs) - 1, spatial_dims)
        self.input_divisors = tuple(math.prod(axis) for axis in zip(*self.strides, strict=True))
        self.input_divisor = max(self.input_divisors)
        self.input_conv = ConvNormAct(spatial_dims, in_channels, widths[0], kernel_size, norm=norm, act=act)
        self.input_act = make_act(act, widths[0])
        self.repeat = widths[0] // in_channels if widths[0] % in_channels == 0 else 0
        conv = layer_type("conv", spatial_dims)
        self.input_proj = None if self.repeat else conv(in_channels, widths[0], 1)
        self.input_stage = (
            ResidualStage(spatial_dims, widths[0], convs[0] - 1, kernel_size, norm, act) if convs[0] > 1 else None
        )
        self.downs = nn.ModuleList(
            _Down(spatial_dims, widths[s - 1], widths[s], convs[s], kernel_size, norm, act, level_factor(stride))
            for s, stride in enumerate(self.strides, start=1)
        )
        self.gates = build_level_gates(skip, spatial_dims, widths[:-1], gate_levels, gate_options)
        self.ups = nn.ModuleList()
        cin = widths[-1]
        for s in reversed(range(len(convs) - 1)):
            factor = level_factor(self.strides[s])
            up = _Up(spatial_dims, cin, widths[s], self.gates[s].out_channels, convs[s], kernel_size, norm, act, factor)
            self.ups.append(up)
            cin = up.out_channels
        self.head = conv(cin, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        residual = x.repeat_interleave(self.repeat, dim=1) if self.repeat else self.input_proj(x)
        x = self.input_act(self.input_conv(x) + residual)
        if self.input_stage is not None:
            x = self.input_stage(x)
        skips = [self.gates[0](x)]
        for s, down in enumerate(self.downs, start=1):
            x = down(x)
            if s < len(self.gates):
                skips.append(self.gates[s](x))
        for up, skip in zip(self.ups, reversed(skips), strict=True):
            x = up(x, skip)
        return self.head(x)


register_dimensions(
    "vnet",
    VNet,
    {
        2: "2D V-Net (the paper's 3D V-Net with 2D operations).",
        3: "3D V-Net (Milletari et al. 2016).",
    },
)
