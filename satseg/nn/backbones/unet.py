"""U-Net (Ronneberger et al. 2015, arXiv:1505.04597; 3D: Çiçek et al. 2016, arXiv:1606.06650).

Two conv–BN–ReLU per level, max-pool down, transposed-conv up, and concatenation skips that pass
through a skip gate, so the decoder's input channels follow from what the gate transfers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from satseg.device import autocast_in_force
from satseg.errors import ConfigError, look_up_option
from satseg.nn.base import SegmentationNet, level_factor, level_strides
from satseg.nn.blocks import DoubleConv, UpConv
from satseg.nn.gates import build_level_gates
from satseg.nn.layers import LayerSpec, conv_fn, interpolation_mode, layer_type
from satseg.nn.registry import register_dimensions

__all__ = ["UNet", "TRANSFERS"]

TRANSFERS = ("concat", "modulate")


class UNet(SegmentationNet):
    """U-Net with gated skips: ``(B, in_channels, *S) -> (B, out_channels, *S)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes, background included.
        skip: skip gate (``org``, ``st``, ``at``, ``sat``).
        features: channels per level, from the first level down to the bottleneck; sides of the
            input must be divisible by ``2 ** (len(features) - 1)``.
        norm: normalisation after every conv.
        act: activation.
        gate_options: options of every skip gate (see :func:`satseg.nn.gates.build_gate`), e.g.
            ``{"select_init": "keras-glorot", "attend_channels": 2}``.
        transfer: how an attending gate's maps enter the decoder: ``concat`` (the paper: concatenated with the
            up-sampled features) or ``modulate`` (also multiply the up-sampled features by ``1 + a``, ``a``
            the mean of the maps, so one map acts on every decoder channel); no effect with ``org``/``st``.
        align_channels: when a skip transfers one channel (``at``/``sat``), the up-convolution gives
            ``C - 1`` channels so the decoder conv reads ``C`` (a multiple of 8 suits tensor cores);
            no effect with ``org``/``st``.
        gate_levels: gate only the ``gate_levels`` finest skips, the deeper ones plain (``org``); ``all``: every
            skip (the paper). Default 1: in satseg's convergence study one-map skips cost Dice mostly at the
            deep levels, which hold little of the skip memory (``benchmarks/README.md``). See
            :func:`satseg.nn.gates.build_level_gates`.
        strides: down-sampling factor per level and axis (see :func:`satseg.nn.base.level_strides`); ``None``:
            2 on every axis. A factor 1 leaves an axis (e.g. the thick one of a 5 × 1 × 1 mm scan) unpooled at
            that level; the up-convolution of that level mirrors it.
        deep_supervision: add a 1×1 head to every decoder level but the last; in training mode the
            forward pass then returns ``[main, aux…]``, all full-size logits, aux from the finest scale to
            the coarsest (as DI2IN); eval mode returns the main logits only.
    """

    legacy_options = {**SegmentationNet.legacy_options, "gate_levels": "all"}
    """The base class's, plus ``gate_levels``: every skip was gated until the default became the finest only."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        skip: str = "sat",
        features: Sequence[int] = (16, 32, 64, 128, 256),
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        gate_options: Mapping[str, Any] | None = None,
        align_channels: bool = False,
        transfer: str = "concat",
        deep_supervision: bool = False,
        gate_levels: int | str | None = 1,
        strides: Sequence[Sequence[int] | int] | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, skip)
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ConfigError(f"`features` needs at least two positive widths, got {features}")
        self.features = features
        self.transfer = look_up_option(transfer, TRANSFERS, "transfer")
        self.align_channels = bool(align_channels)
        self.strides = level_strides(strides, len(features) - 1, spatial_dims)
        self.input_divisors = tuple(math.prod(axis) for axis in zip(*self.strides, strict=True))
        self.input_divisor = max(self.input_divisors)
        self.encoder = nn.ModuleList()
        in_ch = in_channels
        for width in features:
            self.encoder.append(DoubleConv(spatial_dims, in_ch, width, norm, act))
            in_ch = width
        pool = layer_type("maxpool", spatial_dims)
        self.pools = nn.ModuleList(pool(level_factor(s)) for s in self.strides)
        self.gates = build_level_gates(skip, spatial_dims, features[:-1], gate_levels, gate_options)
        if self.transfer == "modulate" and len({g.transfers_attention for g in self.gates}) > 1:
            raise ConfigError("`transfer='modulate'` needs every skip gated", hint="add `gate_levels=all`")
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(len(features) - 1)):
            width, transferred = features[level], self.gates[level].out_channels
            up_width = width - 1 if self.align_channels and transferred == 1 and width > 1 else width
            self.ups.append(UpConv(spatial_dims, features[level + 1], up_width, level_factor(self.strides[level])))
            self.decoder.append(DoubleConv(spatial_dims, up_width + transferred, width, norm, act))
        self.head = layer_type("conv", spatial_dims)(features[0], out_channels, 1)
        self.deep_supervision = bool(deep_supervision)
        conv = layer_type("conv", spatial_dims)
        # one head per decoder level except the last (finest), coarsest first like self.decoder
        self.aux_heads = (
            nn.ModuleList(conv(features[level], out_channels, 1) for level in reversed(range(1, len(features) - 1)))
            if self.deep_supervision
            else None
        )

    concat_free_training = True
    """Train without the decoder's concatenation buffers (see :func:`_decode_without_concat`); False: concatenate."""

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            if level:
                x = self.pools[level - 1](x)
            x = block(x)
            if level < len(self.gates):
                # Gate as soon as the level is computed: only the gate's output is kept for the decoder.
                skips.append(self.gates[level](x))
        supervise = self.training and self.aux_heads is not None
        modulate = self.transfer == "modulate" and self.gates[0].transfers_attention
        split = self.concat_free_training and self.training and torch.is_grad_enabled() and not modulate
        aux: list[Tensor] = []
        for i, (up, block, skip) in enumerate(zip(self.ups, self.decoder, reversed(skips), strict=True)):
            if split:
                x = _decode_without_concat(up, block, x, skip)
            else:
                x = up(x)
                if modulate:
                    x = x * (1 + skip.mean(dim=1, keepdim=True))
                x = block(torch.cat([x, skip], dim=1))
            if supervise and i < len(self.aux_heads):
                aux.insert(0, self.aux_heads[i](x))
        main = self.head(x)
        if not supervise:
            return main
        mode = interpolation_mode(self.spatial_dims)
        size = tuple(main.shape[2:])
        return [main, *(F.interpolate(a, size=size, mode=mode, align_corners=False) for a in aux)]


def _decode_without_concat(up: nn.Module, block: nn.Sequential, coarse: Tensor, skip: Tensor) -> Tensor:
    """``block(cat([up(coarse), skip]))`` for training, without the concatenation buffer.

    The block's first conv is split by input channels, ``conv_up(u) + conv_skip(skip)``. Autograd would keep
    ``u = up(coarse)`` for ``conv_up``'s weight gradient: it keeps ``coarse`` instead (the transposed conv
    keeps it anyway) and recomputes ``u`` in the backward pass (a stride-2, kernel-2 transposed conv: a few
    per cent of the 3×3 conv's cost). So a decoder level holds no copy of ``up``'s output nor of the skip
    (only the gate's output, which the gate keeps for its own backward: one channel for ``at``/``sat``).
    Equal to the concatenating forward up to float summation order (forward and gradients).

    The recomputation re-enters the autocast state of the forward pass (as ``torch.utils.checkpoint`` does),
    so under mixed precision it gives ``u`` in the dtype the forward saw, bit for bit.
    """
    u = up(coarse)
    first = block[0]
    conv = first[0]
    n = u.shape[1]
    if torch.compiler.is_compiling():  # the compiler plans its own recomputation; hooks would break the graph
        y = conv._conv_forward(u, conv.weight[:, :n], conv.bias)
    else:
        key = (u.data_ptr(), u.shape)
        autocast = autocast_in_force(coarse.device.type)

        def pack(t: Tensor):
            return None if (t.data_ptr(), t.shape) == key else t

        def unpack(t):
            if t is not None:
                return t
            with torch.no_grad(), autocast:
                return up(coarse)

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            y = conv._conv_forward(u, conv.weight[:, :n], conv.bias)
    del u
    y += conv_fn(skip.ndim - 2)(skip, conv.weight[:, n:], None, conv.stride, conv.padding, conv.dilation, conv.groups)
    y = first[2](first[1](y))
    for later in list(block)[1:]:
        y = later(y)
    return y


register_dimensions(
    "unet",
    UNet,
    {
        2: "2D U-Net (Ronneberger et al. 2015).",
        3: "3D U-Net (Çiçek et al. 2016).",
    },
)
