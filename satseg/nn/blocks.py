"""Small building blocks shared by the backbones; dimension chosen by ``spatial_dims``."""

from __future__ import annotations

from torch import Tensor, nn

from satseg.nn.layers import LayerSpec, layer_type, make_act, make_norm

__all__ = ["ConvNormAct", "DoubleConv", "UpConv"]


class ConvNormAct(nn.Sequential):
    """Convolution, then normalisation, then activation: ``(B, in, *S) -> (B, out, *S / stride)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: convolution kernel size; padding keeps the size ("same") for odd kernels.
        stride: convolution stride.
        norm: normalisation spec (``"batch"`` by default: the paper puts BN after every conv).
        act: activation spec.
        bias: whether the convolution has a bias.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...] = 3,
        stride: int | tuple[int, ...] = 1,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        bias: bool = True,
    ) -> None:
        conv = layer_type("conv", spatial_dims)(
            in_channels, out_channels, kernel_size, stride=stride, padding=_same_padding(kernel_size), bias=bias
        )
        super().__init__(conv, make_norm(norm, spatial_dims, out_channels), make_act(act, out_channels))


def _same_padding(kernel_size: int | tuple[int, ...]) -> int | tuple[int, ...]:
    if isinstance(kernel_size, int):
        return (kernel_size - 1) // 2
    return tuple((k - 1) // 2 for k in kernel_size)


class DoubleConv(nn.Sequential):
    """Two :class:`ConvNormAct` in a row, as each U-Net level has: ``(B, in, *S) -> (B, out, *S)``."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
    ) -> None:
        super().__init__(
            ConvNormAct(spatial_dims, in_channels, out_channels, norm=norm, act=act),
            ConvNormAct(spatial_dims, out_channels, out_channels, norm=norm, act=act),
        )


class UpConv(nn.Module):
    """Transposed convolution that multiplies every side by its factor: ``(B, in, *S) -> (B, out, *2S)``."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, factor: int | tuple[int, ...] = 2
    ) -> None:
        super().__init__()
        self.up = layer_type("convtranspose", spatial_dims)(in_channels, out_channels, factor, stride=factor)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(x)
