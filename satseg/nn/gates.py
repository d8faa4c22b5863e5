"""Skip-connection gates: ``org``, ``st`` (select), ``at`` (attend) and ``sat`` (select-attend-transfer).

Paper: Taghanaki et al., "Select, Attend, and Transfer: Light, Learnable Skip Connections",
arXiv:1804.05181, Section 2. Every gate maps an encoder feature map ``(B, C, *spatial)`` to what the
skip transfers to the decoder: ``C`` channels (``org``, ``st``) or one attention channel (``at``, ``sat``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from satseg.errors import ConfigError, look_up_option

__all__ = [
    "SkipGate",
    "IdentityGate",
    "SelectGate",
    "AttendGate",
    "SelectAttendGate",
    "trelu",
    "build_gate",
    "list_gates",
]


def trelu(z: Tensor) -> Tensor:
    """Truncated ReLU (paper eq. 2): ``z`` clipped to ``[0, 1]``."""
    return z.clamp(0.0, 1.0)


_CONV_FN: dict[int, Callable[..., Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class SkipGate(nn.Module):
    """What every skip gate shares: its transferred channel count and its selection report.

    Args:
        spatial_dims: 2 or 3.
        channels: channels ``C`` of the encoder feature map the gate receives.

    Attributes:
        keep_attention: when True, the gate keeps its last attention map in ``last_attention``
            (``(B, 1, *spatial)``, detached) for reports and overlays.
    """

    transfers_attention: bool = False

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"`spatial_dims` must be 2 or 3, got {spatial_dims}")
        if channels < 1:
            raise ConfigError(f"a skip gate needs at least one channel, got {channels}")
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.keep_attention = False
        self.last_attention: Tensor | None = None

    @property
    def out_channels(self) -> int:
        """Channels this gate transfers to the decoder."""
        return 1 if self.transfers_attention else self.channels

    def selection(self) -> Tensor | None:
        """``trelu(W)`` per channel (detached), or None for gates that do not select."""
        return None

    def fraction_off(self) -> float | None:
        """Fraction of channels switched off (``trelu(W) == 0``), or None for gates that do not select."""
        sel = self.selection()
        return None if sel is None else float((sel == 0).float().mean())

    def _remember(self, attention: Tensor) -> Tensor:
        if self.keep_attention:
            self.last_attention = attention.detach()
        return attention

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, channels={self.channels}, out_channels={self.out_channels}"


class IdentityGate(SkipGate):
    """``org``: the plain skip, all ``C`` channels transferred unchanged."""

    def forward(self, f: Tensor) -> Tensor:
        return f


class _Selecting(SkipGate):
    """A gate with a learned per-channel selection vector ``W`` (paper eq. 1)."""

    def __init__(self, spatial_dims: int, channels: int, select_init: float = 0.5) -> None:
        super().__init__(spatial_dims, channels)
        # Start inside (0, 1), where trelu passes gradients, so each channel can drift on or off.
        self.select_weight = nn.Parameter(torch.full((channels,), float(select_init)))

    def selection(self) -> Tensor:
        return trelu(self.select_weight.detach())

    def _broadcast(self, w: Tensor) -> Tensor:
        return w.view(1, -1, *([1] * self.spatial_dims))


class SelectGate(_Selecting):
    """``st``: select only, ``f_s = f * trelu(W)``; ``C`` channels, switched-off ones exactly zero."""

    def forward(self, f: Tensor) -> Tensor:
        return f * self._broadcast(trelu(self.select_weight)).to(f.dtype)


class _Attending(SkipGate):
    """A gate with a 1×1(×1) convolution ``K`` to one channel followed by a sigmoid (eq. 3–4)."""

    transfers_attention = True

    def __init__(self, spatial_dims: int, channels: int, **kwargs) -> None:
        super().__init__(spatial_dims, channels, **kwargs)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.attend = conv(channels, 1, kernel_size=1)


class AttendGate(_Attending):
    """``at``: attend only, ``sigmoid(K ⋆ f)`` (W fixed to ones); one channel transferred."""

    def forward(self, f: Tensor) -> Tensor:
        return self._remember(torch.sigmoid(self.attend(f)))


class SelectAttendGate(_Attending, _Selecting):
    """``sat``: select then attend, ``sigmoid(K ⋆ (f * trelu(W)))``; one channel transferred.

    The selection is folded into the 1×1 convolution's weights (``K · trelu(W)``), which is exactly
    equal to eq. 1–4 and never materialises the full-size ``f_s``.
    """

    def folded_weight(self) -> Tensor:
        """The attention kernel with the selection folded in, ``(1, C, 1, …)``."""
        return self.attend.weight * self._broadcast(trelu(self.select_weight))

    def forward(self, f: Tensor) -> Tensor:
        weight = self.folded_weight().to(f.dtype)
        bias = self.attend.bias.to(f.dtype) if self.attend.bias is not None else None
        return self._remember(torch.sigmoid(_CONV_FN[self.spatial_dims](f, weight, bias)))

    def forward_literal(self, f: Tensor) -> Tensor:
        """Eq. 1–4 computed literally (materialising ``f_s``); for tests and the paper's Fig. 5."""
        f_s = f * self._broadcast(trelu(self.select_weight))
        return torch.sigmoid(self.attend(f_s))


_GATES: dict[str, type[SkipGate]] = {
    "org": IdentityGate,
    "st": SelectGate,
    "at": AttendGate,
    "sat": SelectAttendGate,
}


def list_gates() -> list[str]:
    """Names of the skip gates: ``org``, ``st``, ``at``, ``sat``."""
    return list(_GATES)


def build_gate(skip: str, spatial_dims: int, channels: int, **options) -> SkipGate:
    """Build the gate named ``skip`` for a ``channels``-channel feature map.

    Args:
        skip: one of :func:`list_gates`.
        spatial_dims: 2 or 3.
        channels: channels of the encoder feature map.
        **options: ``select_init`` for the selecting gates (``st``, ``sat``).
    """
    cls = _GATES[look_up_option(skip, _GATES, "skip")]
    if not issubclass(cls, _Selecting):
        options.pop("select_init", None)
    return cls(spatial_dims, channels, **options)
