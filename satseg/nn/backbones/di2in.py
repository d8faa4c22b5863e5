"""DI2IN, the deep image-to-image network of Yang et al. 2017 ("Automatic liver segmentation using an
adversarial image-to-image network", arXiv:1707.08037), 2D or 3D, with gated skips.

A convolutional encoder–decoder: stride-2 3×3(×3) convolutions go down, bilinear/trilinear up-sampling
followed by a 3×3(×3) convolution goes up, encoder features are concatenated into the decoder through
skip gates, and 1×1(×1) heads at several decoder scales give deep supervision (each up-sampled to full
size). Every conv except the heads is followed by BN and ReLU. Only the generator is built here: the
adversarial discriminator of Yang et al. is a training device, not part of the segmenter.

Layer plan of the default configuration (``features=(20, 28, 52, 84, 126)``, ``encoder_convs=(3, 1, 1,
2, 2)``, ``decoder_convs=(2, 1, 1, 2)``, ``supervision_levels=(1, 2, 3)``; level 0 at full size, ``/2``
a stride-2 conv, ``g`` the channels the gate transfers: ``w`` for ``org``/``st``, 1 for ``at``/``sat``)::

    encoder  level 0: conv(in→20), conv(20→20), conv(20→20)        -> skip 0 (20 ch)
             level 1: conv/2(20→28)                                 -> skip 1 (28 ch)
             level 2: conv/2(28→52)                                 -> skip 2 (52 ch)
             level 3: conv/2(52→84), conv(84→84)                    -> skip 3 (84 ch)
             level 4: conv/2(84→126), conv(126→126)                    (bottleneck)
    decoder  level 3: up×2, conv(126→84), cat gate(skip 3), conv(84+g→84), conv(84→84), head (aux)
             level 2: up×2, conv(84→52),  cat gate(skip 2), conv(52+g→52),              head (aux)
             level 1: up×2, conv(52→28),  cat gate(skip 1), conv(28+g→28),              head (aux)
             level 0: up×2, conv(28→20),  cat gate(skip 0), conv(20+g→20), conv(20→20), head (main)

Every ``conv`` is 3×3(×3) with bias, BN and ReLU; heads are 1×1(×1) convs to ``out_channels``.

The SAT paper reports 2,353,089 parameters for its 3D DI2IN and 2,063,053 with SAT gates (Keras; we
assume one input and one sigmoid output channel). The original layer plan is not published, so the
default widths and conv counts above were fitted to those two counts. With ``in_channels=1,
out_channels=1`` the 3D default has 2,353,148 trainable parameters with ``org`` (+59, +0.0025 %) and
2,063,000 with ``sat`` (−53, −0.0026 %).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from satseg.errors import ConfigError
from satseg.nn.base import SegmentationNet
from satseg.nn.blocks import ConvNormAct
from satseg.nn.gates import build_level_gates
from satseg.nn.layers import LayerSpec, interpolation_mode, layer_type
from satseg.nn.registry import register_dimensions

__all__ = ["DI2IN"]


class DI2IN(SegmentationNet):
    """DI2IN with gated skips and deep supervision: ``(B, in_channels, *S) -> (B, out_channels, *S)``.

    In training mode with ``deep_supervision=True`` the forward pass returns ``[main, aux…]``, every
    entry full-size logits ``(B, out_channels, *S)``, aux heads ordered from the finest scale to the
    coarsest; in eval mode (or with ``deep_supervision=False``) only the main logits.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes, background included (1 for a sigmoid output as in the paper).
        skip: skip gate (``org``, ``st``, ``at``, ``sat``).
        features: widths per level, full size down to the bottleneck; sides of the input must be
            divisible by ``2 ** (len(features) - 1)``.
        encoder_convs: convolutions per encoder level (the stride-2 one included for levels ≥ 1).
        decoder_convs: convolutions after each concatenation, per decoder level ``0 … len - 2``.
        supervision_levels: decoder levels (1 … len - 2) with an auxiliary head.
        deep_supervision: build the auxiliary heads and return their logits too in training mode.
        norm: normalisation after every conv.
        act: activation.
        gate_options: options of every skip gate (see :func:`satseg.nn.gates.build_gate`), e.g.
            ``{"select_init": "keras-glorot", "attend_channels": 2}``.
        gate_levels: gate only the ``gate_levels`` finest skips, the deeper ones plain (``org``); ``all`` (the
            default): every skip (the paper; DI2IN was not in the study that moved U-Net and V-Net to 1). See
            :func:`satseg.nn.gates.build_level_gates`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        skip: str = "sat",
        features: Sequence[int] = (20, 28, 52, 84, 126),
        encoder_convs: Sequence[int] = (3, 1, 1, 2, 2),
        decoder_convs: Sequence[int] = (2, 1, 1, 2),
        supervision_levels: Sequence[int] = (1, 2, 3),
        deep_supervision: bool = True,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        gate_options: Mapping[str, Any] | None = None,
        gate_levels: int | str | None = "all",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, skip)
        widths = tuple(int(f) for f in features)
        enc, dec = tuple(int(n) for n in encoder_convs), tuple(int(n) for n in decoder_convs)
        sup = tuple(sorted({int(s) for s in supervision_levels}))
        if len(widths) < 2 or min(widths) < 1:
            raise ConfigError(f"`features` needs at least two positive widths, got {widths}")
        if len(enc) != len(widths) or min(enc) < 1:
            raise ConfigError(f"`encoder_convs` needs {len(widths)} entries ≥ 1 (one per level), got {enc}")
        if len(dec) != len(widths) - 1 or min(dec) < 1:
            raise ConfigError(f"`decoder_convs` needs {len(widths) - 1} entries ≥ 1 (one per decoder level), got {dec}")
        if any(not 1 <= s <= len(widths) - 2 for s in sup):
            raise ConfigError(f"`supervision_levels` must lie in 1 … {len(widths) - 2}, got {sup}")
        self.widths, self.supervision_levels = widths, sup
        self.deep_supervision = bool(deep_supervision)
        self.input_divisor = 2 ** (len(widths) - 1)
        dims = spatial_dims
        self.mode = interpolation_mode(dims)

        def convs(cin: int, cout: int, n: int, stride: int = 1) -> nn.Sequential:
            first = ConvNormAct(dims, cin, cout, 3, stride=stride, norm=norm, act=act)
            return nn.Sequential(first, *(ConvNormAct(dims, cout, cout, 3, norm=norm, act=act) for _ in range(n - 1)))

        self.encoder = nn.ModuleList(
            convs(in_channels if lvl == 0 else widths[lvl - 1], widths[lvl], enc[lvl], stride=1 if lvl == 0 else 2)
            for lvl in range(len(widths))
        )
        self.gates = build_level_gates(skip, dims, widths[:-1], gate_levels, gate_options)
        self.up_convs, self.decoder = nn.ModuleList(), nn.ModuleList()
        self.heads = nn.ModuleDict()
        conv1 = layer_type("conv", dims)
        for lvl in reversed(range(len(widths) - 1)):
            self.up_convs.append(convs(widths[lvl + 1], widths[lvl], 1))
            self.decoder.append(convs(widths[lvl] + self.gates[lvl].out_channels, widths[lvl], dec[lvl]))
            # Auxiliary heads only where they are trained: an unused head gets no gradient, which breaks DDP.
            if lvl == 0 or (self.deep_supervision and lvl in sup):
                self.heads[str(lvl)] = conv1(widths[lvl], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        size = x.shape[2:]
        skips = []
        for lvl, block in enumerate(self.encoder):
            x = block(x)
            if lvl < len(self.gates):
                skips.append(self.gates[lvl](x))
        aux: list[Tensor] = []
        supervise = self.training and self.deep_supervision
        for i, (up_conv, block) in enumerate(zip(self.up_convs, self.decoder, strict=True)):
            lvl = len(self.gates) - 1 - i
            x = up_conv(F.interpolate(x, scale_factor=2.0, mode=self.mode, align_corners=False))
            x = block(torch.cat([x, skips[lvl]], dim=1))
            if supervise and lvl in self.supervision_levels:
                aux.insert(0, F.interpolate(self.heads[str(lvl)](x), size=size, mode=self.mode, align_corners=False))
        main = self.heads["0"](x)
        return [main, *aux] if supervise else main


register_dimensions(
    "di2in",
    DI2IN,
    {
        2: "2D DI2IN (the 3D network with 2D operations).",
        3: "3D DI2IN (Yang et al. 2017).",
    },
)
