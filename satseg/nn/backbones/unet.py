"""U-Net (Ronneberger et al. 2015, arXiv:1505.04597; 3D: Çiçek et al. 2016, arXiv:1606.06650).

Two conv–BN–ReLU per level, max-pool down, transposed-conv up, and concatenation skips that pass
through a skip gate, so the decoder's input channels follow from what the gate transfers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from satseg.errors import ConfigError
from satseg.nn.base import SegmentationNet
from satseg.nn.blocks import DoubleConv, UpConv
from satseg.nn.gates import build_gate
from satseg.nn.layers import LayerSpec, layer_type
from satseg.nn.registry import register_model

__all__ = ["UNet"]


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
        select_init: initial selection weight of ``st``/``sat`` gates.
        align_channels: when a skip transfers one channel (``at``/``sat``), the up-convolution gives
            ``C - 1`` channels so the decoder conv reads ``C`` (a multiple of 8 suits tensor cores);
            no effect with ``org``/``st``.
        deep_supervision: add a 1×1 head to every decoder level but the last; in training mode the
            forward pass then returns ``[main, aux…]``, all full-size logits, aux from the finest scale to
            the coarsest (as DI2IN); eval mode returns the main logits only.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        skip: str = "sat",
        features: Sequence[int] = (16, 32, 64, 128, 256),
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        select_init: float = 0.5,
        align_channels: bool = False,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, skip)
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ConfigError(f"`features` needs at least two positive widths, got {features}")
        self.features = features
        self.align_channels = bool(align_channels)
        self.input_divisor = 2 ** (len(features) - 1)
        self.encoder = nn.ModuleList()
        in_ch = in_channels
        for width in features:
            self.encoder.append(DoubleConv(spatial_dims, in_ch, width, norm, act))
            in_ch = width
        self.pool = layer_type("maxpool", spatial_dims)(2)
        self.gates = nn.ModuleList(
            build_gate(skip, spatial_dims, width, select_init=select_init) for width in features[:-1]
        )
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(len(features) - 1)):
            width, transferred = features[level], self.gates[level].out_channels
            up_width = width - 1 if self.align_channels and transferred == 1 and width > 1 else width
            self.ups.append(UpConv(spatial_dims, features[level + 1], up_width))
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

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            if level:
                x = self.pool(x)
            x = block(x)
            if level < len(self.gates):
                # Gate as soon as the level is computed: only the gate's output is kept for the decoder.
                skips.append(self.gates[level](x))
        supervise = self.training and self.aux_heads is not None
        aux: list[Tensor] = []
        for i, (up, block, skip) in enumerate(zip(self.ups, self.decoder, reversed(skips), strict=True)):
            x = block(torch.cat([up(x), skip], dim=1))
            if supervise and i < len(self.aux_heads):
                aux.insert(0, self.aux_heads[i](x))
        main = self.head(x)
        if not supervise:
            return main
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        size = tuple(main.shape[2:])
        return [main, *(F.interpolate(a, size=size, mode=mode, align_corners=False) for a in aux)]


@register_model("unet2d", UNet)
def unet2d(**kwargs) -> UNet:
    """2D U-Net (Ronneberger et al. 2015)."""
    return UNet(2, **kwargs)


@register_model("unet3d", UNet)
def unet3d(**kwargs) -> UNet:
    """3D U-Net (Çiçek et al. 2016)."""
    return UNet(3, **kwargs)
