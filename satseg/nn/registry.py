"""Model registry: one builder per backbone and dimension, looked up by name.

Example::

    >>> from satseg.nn import build_model
    >>> model = build_model("unet3d", skip="sat", in_channels=1, out_channels=3)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from satseg.errors import look_up_option
from satseg.nn.base import SegmentationNet
from satseg.nn.gates import DEFAULT_GATE_OPTIONS, list_gates
from satseg.nn.layers import init_glorot_uniform

__all__ = [
    "register_model",
    "register_dimensions",
    "list_models",
    "build_model",
    "model_accepts",
    "explicit_model_config",
    "legacy_model_config",
]

ModelBuilder = Callable[..., SegmentationNet]
_MODELS: dict[str, tuple[ModelBuilder, type[SegmentationNet]]] = {}


def register_model(name: str, model_class: type[SegmentationNet]) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder of ``model_class`` under ``name``; refuses a name registered twice.

    The class's ``__init__`` signature tells :func:`build_model` which options are valid.
    """

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"a model named `{name}` is already registered")
        _MODELS[name] = (fn, model_class)
        return fn

    return decorator


def register_dimensions(prefix: str, model_class: type[SegmentationNet], docs: dict[int, str]) -> None:
    """Register ``<prefix>2d``/``<prefix>3d``: ``model_class(spatial_dims, **options)`` for each dimension in
    ``docs`` (dimension → the builder's one-line description, shown by ``help()``)."""
    for dims, doc in docs.items():

        def build(dims: int = dims, **options: Any) -> SegmentationNet:
            return model_class(dims, **options)

        build.__name__ = build.__qualname__ = f"{prefix}{dims}d"
        build.__doc__ = doc
        register_model(build.__name__, model_class)(build)


def list_models() -> list[str]:
    """Names of every registered model, e.g. ``unet2d``, ``unet3d``, ``vnet3d``, …"""
    import satseg.nn.backbones  # noqa: F401  (registers the builders)

    return sorted(_MODELS)


def model_accepts(net: str, option: str) -> bool:
    """Whether backbone ``net`` takes ``option`` (e.g. ``deep_supervision``)."""
    net = look_up_option(net, list_models(), "net")
    return option in inspect.signature(_MODELS[net][1].__init__).parameters


def build_model(
    net: str, skip: str = "sat", in_channels: int = 1, out_channels: int = 2, **options: Any
) -> SegmentationNet:
    """Build a registered backbone with the given skip gate, Glorot-uniform initialised.

    Args:
        net: one of :func:`list_models`.
        skip: ``org``, ``st``, ``at`` or ``sat``.
        in_channels: image channels.
        out_channels: classes, background included.
        **options: backbone options (e.g. ``features`` widths); unknown ones raise ConfigError.

    Raises:
        ConfigError: for an unknown net, skip or option.
    """
    net = look_up_option(net, list_models(), "net")
    skip = look_up_option(skip, list_gates(), "skip")
    builder, model_class = _MODELS[net]
    fixed = {"self", "spatial_dims", "skip", "in_channels", "out_channels"}
    accepted = set(inspect.signature(model_class.__init__).parameters) - fixed
    for key in options:
        look_up_option(key, accepted, f"option of `{net}`")
    model = builder(skip=skip, in_channels=in_channels, out_channels=out_channels, **options)
    init_glorot_uniform(model)
    # every option whose default has changed is written out, so a checkpoint of this model rebuilds it
    model.config = explicit_model_config(
        {"net": net, "skip": skip, "in_channels": in_channels, "out_channels": out_channels, **options}
    )
    return model


def _model_class(net: str) -> type[SegmentationNet]:
    return _MODELS[look_up_option(net, list_models(), "net")][1]


def explicit_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (``build_model`` keyword arguments) with every option whose default has changed between
    releases written out, so a checkpoint keeps meaning the same model when a later release changes them."""
    cls = _model_class(config["net"])
    defaults = inspect.signature(cls.__init__).parameters
    out = dict(config)
    for key in cls.legacy_options:
        if key == "gate_options":
            out[key] = {**DEFAULT_GATE_OPTIONS, **(config.get(key) or {})}
        else:
            out.setdefault(key, defaults[key].default)
    return out


def legacy_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """The model a saved configuration describes: an option whose default changed but that the configuration
    does not record predates its recording, so it takes the value it had then (see
    ``SegmentationNet.legacy_options``): satseg 0.1.0 recorded no gate options, 0.2.0's first checkpoints no
    ``gate_levels``."""
    return {**_model_class(config["net"]).legacy_options, **config}
