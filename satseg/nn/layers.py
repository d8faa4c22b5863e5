"""Layer factories keyed by (kind, spatial_dims), and norm/activation specs.

One place decides whether a block uses 2D or 3D layers, so blocks and backbones are written once
(as MONAI's ``Conv[Conv.CONV, dims]`` factories do).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from satseg.errors import ConfigError, look_up_option

__all__ = [
    "layer_type",
    "layer_types",
    "conv_fn",
    "interpolation_mode",
    "make_norm",
    "make_act",
    "LayerSpec",
    "init_glorot_uniform",
]

LayerSpec = str | tuple[str, dict[str, Any]] | None
"""A layer named by a string, or ``(name, kwargs)``, or ``None`` for no layer."""

_LAYERS: dict[str, dict[int, type[nn.Module]]] = {
    "conv": {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d},
    "convtranspose": {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d},
    "batchnorm": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "instancenorm": {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
    "maxpool": {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d},
    "avgpool": {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d},
    "dropout": {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d},
}

_CONV_FN: dict[int, Callable[..., Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}

_NORMS = {"batch": "batchnorm", "instance": "instancenorm"}
_ACTS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}
_INPLACE_ACTS = {"relu", "leakyrelu", "elu"}


def layer_type(kind: str, spatial_dims: int) -> type[nn.Module]:
    """Return the layer class of ``kind`` (conv, convtranspose, batchnorm, …) for 1, 2 or 3 dims."""
    kind = look_up_option(kind, _LAYERS, "layer kind")
    if spatial_dims not in _LAYERS[kind]:
        raise ConfigError(f"`spatial_dims` must be 1, 2 or 3, got {spatial_dims}")
    return _LAYERS[kind][spatial_dims]


def layer_types(kind: str) -> tuple[type[nn.Module], ...]:
    """Every class of ``kind`` (1, 2 and 3 dims), for ``isinstance`` checks."""
    return tuple(_LAYERS[look_up_option(kind, _LAYERS, "layer kind")].values())


def interpolation_mode(spatial_dims: int) -> str:
    """The (multi)linear mode of ``F.interpolate`` for 1, 2 or 3 dims: ``linear``, ``bilinear``, ``trilinear``."""
    if spatial_dims not in _INTERPOLATION:
        raise ConfigError(f"`spatial_dims` must be 1, 2 or 3, got {spatial_dims}")
    return _INTERPOLATION[spatial_dims]


def conv_fn(spatial_dims: int) -> Callable[..., Tensor]:
    """The functional convolution (``F.conv1d``/``conv2d``/``conv3d``) for 1, 2 or 3 dims, for computed weights."""
    if spatial_dims not in _CONV_FN:
        raise ConfigError(f"`spatial_dims` must be 1, 2 or 3, got {spatial_dims}")
    return _CONV_FN[spatial_dims]


def _split(spec: LayerSpec) -> tuple[str | None, dict[str, Any]]:
    if spec is None:
        return None, {}
    if isinstance(spec, str):
        return spec.lower(), {}
    name, kwargs = spec
    return name.lower(), dict(kwargs)


def make_norm(spec: LayerSpec, spatial_dims: int, channels: int) -> nn.Module:
    """Build a normalisation layer from ``"batch"``, ``"instance"``, ``(name, kwargs)`` or ``None``."""
    name, kwargs = _split(spec)
    if name is None:
        return nn.Identity()
    name = look_up_option(name, _NORMS, "norm")
    if name == "instance":
        kwargs.setdefault("affine", True)
    return layer_type(_NORMS[name], spatial_dims)(channels, **kwargs)


def make_act(spec: LayerSpec, channels: int | None = None) -> nn.Module:
    """Build an activation from ``"relu"``, ``("leakyrelu", {"negative_slope": 0.01})``, … or ``None``.

    ``prelu`` learns one slope per channel when ``channels`` is given.
    """
    name, kwargs = _split(spec)
    if name is None:
        return nn.Identity()
    name = look_up_option(name, _ACTS, "activation")
    if name == "prelu" and channels is not None:
        kwargs.setdefault("num_parameters", channels)
    if name in _INPLACE_ACTS:
        kwargs.setdefault("inplace", True)
    return _ACTS[name](**kwargs)


def init_glorot_uniform(module: nn.Module) -> None:
    """Glorot (Xavier) uniform weights and zero biases for every conv, as the paper trains with."""
    conv_types = layer_types("conv") + layer_types("convtranspose")
    for m in module.modules():
        if isinstance(m, conv_types):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
