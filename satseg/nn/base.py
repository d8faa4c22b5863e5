"""The interface every satseg backbone implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from satseg.errors import ConfigError
from satseg.nn.gates import DEFAULT_GATE_OPTIONS, SkipGate

__all__ = ["SegmentationNet", "level_strides", "level_factor"]


def level_strides(strides: Sequence[Sequence[int] | int] | None, levels: int, spatial_dims: int) -> tuple:
    """Per-level, per-axis down-sampling factors: ``None`` is 2 on every axis at every level (the classic
    net); otherwise one entry per level, each an int or one factor (1 or 2) per axis, e.g. ``[[1, 2, 2], 2]``
    for a thick-slice volume whose first level pools in-plane only (nnU-Net's anisotropic plans).

    Raises:
        ConfigError: a wrong number of levels or axes, or a factor other than 1 or 2.
    """
    if strides is None:
        return tuple((2,) * spatial_dims for _ in range(levels))
    out = []
    for entry in strides:
        axes = (int(entry),) * spatial_dims if isinstance(entry, int | float) else tuple(int(s) for s in entry)
        if len(axes) != spatial_dims or any(s not in (1, 2) for s in axes):
            raise ConfigError(f"`strides` entry {entry!r}: need {spatial_dims} factors of 1 or 2")
        out.append(axes)
    if len(out) != levels:
        raise ConfigError(f"`strides` needs {levels} levels (one per down-sampling), got {len(out)}")
    return tuple(out)


def level_factor(axes: tuple[int, ...]) -> int | tuple[int, ...]:
    """A layer's kernel/stride: an int when every axis has the same factor (the modules of the classic net)."""
    return axes[0] if len(set(axes)) == 1 else axes


class SegmentationNet(nn.Module):
    """Base class of the backbones: an encoder–decoder whose long skips pass through :class:`SkipGate` s.

    ``forward`` maps ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``. Each side
    of the input must be divisible by :attr:`input_divisor`. A backbone with deep supervision returns,
    in training mode with :attr:`deep_supervision` set, a list ``[main, aux1, …]`` of full-size logits.

    Attributes:
        config: the arguments that rebuild this model with :func:`satseg.nn.build_model`.
    """

    input_divisor: int = 1
    input_divisors: tuple[int, ...] | None = None
    """Per-axis divisors when the net pools axes differently (``strides``); ``input_divisor`` is their largest."""
    deep_supervision: bool = False
    legacy_options: dict[str, Any] = {"gate_options": DEFAULT_GATE_OPTIONS}
    """Options whose default changed since satseg 0.1.0, with that release's values: every new checkpoint
    records them explicitly; one that does not predates them and is rebuilt with these values."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, skip: str) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"`spatial_dims` must be 2 or 3, got {spatial_dims}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value < 1:
                raise ConfigError(f"`{name}` must be at least 1, got {value}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.skip = skip
        self.config: dict[str, Any] = {}

    def skip_gates(self) -> list[tuple[str, SkipGate]]:
        """Every skip gate with its qualified name, encoder order (long skips, then any inner ones)."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, SkipGate)]

    def axis_divisors(self) -> tuple[int, ...]:
        """What each input side must be divisible by (the product of that axis's down-sampling factors)."""
        return self.input_divisors or (self.input_divisor,) * self.spatial_dims

    def keep_attention(self, keep: bool = True) -> None:
        """Make every attending gate keep its last attention map (see :attr:`SkipGate.last_attention`)."""
        for _, gate in self.skip_gates():
            gate.keep_attention = keep
            if not keep:
                gate.last_attention = None

    def check_input_shape(self, x: Tensor) -> None:
        """Raise ConfigError when ``x`` is not ``(B, in_channels, *spatial)`` with sides divisible."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ConfigError(
                f"expected input (B, {self.in_channels}, {', '.join('S' * self.spatial_dims)}), got {tuple(x.shape)}"
            )
        sides = tuple(x.shape[2:])
        divisors = self.axis_divisors()
        if any(s % d for s, d in zip(sides, divisors, strict=True)):
            padded = tuple(-(-s // d) * d for s, d in zip(sides, divisors, strict=True))
            raise ConfigError(
                f"input sides {sides} must be divisible by "
                f"{divisors[0] if len(set(divisors)) == 1 else divisors}",
                hint=f"pad the input to {padded}",
            )
