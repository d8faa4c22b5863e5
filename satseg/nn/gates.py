"""Skip-connection gates: ``org``, ``st`` (select), ``at`` (attend) and ``sat`` (select-attend-transfer).

Paper: Taghanaki et al., "Select, Attend, and Transfer: Light, Learnable Skip Connections",
arXiv:1804.05181, Section 2. Every gate maps an encoder feature map ``(B, C, *spatial)`` to what the
skip transfers to the decoder: ``C`` channels (``org``, ``st``) or one attention channel (``at``, ``sat``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from satseg.errors import ConfigError, look_up_option
from satseg.nn.layers import conv_fn, layer_type

__all__ = [
    "SkipGate",
    "IdentityGate",
    "SelectGate",
    "AttendGate",
    "SelectAttendGate",
    "trelu",
    "build_gate",
    "build_level_gates",
    "list_gates",
    "selection_init",
    "gate_option_names",
    "SELECT_INITS",
    "ATTEND_ACTIVATIONS",
    "DEFAULT_GATE_OPTIONS",
]


def trelu(z: Tensor) -> Tensor:
    """Truncated ReLU (paper eq. 2): ``z`` clipped to ``[0, 1]``.

    Its gradient is 1 inside ``(0, 1)`` and 0 outside: a selection weight below 0 (channel off) or above 1
    (fully on) gets no gradient from the task loss — the dead zone. Only a term acting on ``W`` itself
    (none in the paper) could move it back; an L1 term on ``trelu(W)`` pushes weights *into* the dead zone.
    """
    return z.clamp(0.0, 1.0)


SELECT_INITS = ("keras-glorot", "tf-glorot")
"""Named initialisations of the selection vector ``W`` (besides a constant), see :func:`selection_init`."""

ATTEND_ACTIVATIONS = ("sigmoid", "identity")
"""What an attending gate applies to ``U = K ⋆ f_s``: the paper's sigmoid, or nothing (a linear projection)."""


def selection_init(init: float | str, channels: int) -> Tensor:
    """Initial selection vector ``W`` of shape ``(channels,)``.

    Args:
        init: a constant (e.g. ``0.5``: every channel half on, inside trelu's live zone), or the paper's
            Glorot uniform as its framework computes it for a 1-D weight (an inference: the paper names
            Keras 2 with TensorFlow and Glorot uniform for all weights, not the fans):

            * ``keras-glorot``: Keras 2.x ``_compute_fans`` gives a 1-D shape ``fan_in = fan_out = sqrt(C)``,
              so ``W ~ U(-a, a)`` with ``a = sqrt(3 / sqrt(C))``;
            * ``tf-glorot``: tf.keras gives ``fan_in = fan_out = C``, so ``a = sqrt(3 / C)``.

            With either, about half the channels start below 0, where trelu outputs exactly 0 and passes no
            gradient: they are off from the first step and stay off (the dead zone, see :func:`trelu`).
    """
    if isinstance(init, str):
        mode = look_up_option(init, SELECT_INITS, "select_init")
        fan = math.sqrt(channels) if mode == "keras-glorot" else float(channels)
        bound = math.sqrt(6.0 / (fan + fan))
        return torch.empty(channels).uniform_(-bound, bound)
    return torch.full((channels,), float(init))


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
    attend_channels: int = 1

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
        return self.attend_channels if self.transfers_attention else self.channels

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

    def __init__(self, spatial_dims: int, channels: int, select_init: float | str = 0.5, **kwargs: Any) -> None:
        super().__init__(spatial_dims, channels, **kwargs)
        # Default 0.5: inside (0, 1), where trelu passes gradients, so each channel can drift on or off.
        self.select_init = select_init
        self.select_weight = nn.Parameter(selection_init(select_init, channels))

    def selection(self) -> Tensor:
        return trelu(self.select_weight.detach())

    def selection_weights(self) -> Tensor:
        """``trelu(W)`` with its gradient (what an L1 term on the selection acts on)."""
        return trelu(self.select_weight)

    def _broadcast(self, w: Tensor) -> Tensor:
        return w.view(1, -1, *([1] * self.spatial_dims))


class SelectGate(_Selecting):
    """``st``: select only, ``f_s = f * trelu(W)``; ``C`` channels, switched-off ones exactly zero."""

    def forward(self, f: Tensor) -> Tensor:
        return f * self._broadcast(trelu(self.select_weight)).to(f.dtype)


class _Attending(SkipGate):
    """A gate with a 1×1(×1) convolution ``K`` to ``k`` channels, optional BN, then a sigmoid (eq. 3–4).

    Args:
        attend_channels: ``k``, attention maps transferred (the paper: 1).
        attend_norm: BatchNorm on ``U = K ⋆ f_s`` before the sigmoid (the paper puts BN "after each
            convolution layer"; whether that includes ``K`` is not said).
        attend_activation: ``sigmoid`` (the paper's eq. 4) or ``identity``: transfer ``U`` itself, a learned
            ``k``-channel linear projection of the selected features (not in the paper; an experiment on
            whether the sigmoid's bounded maps are what limits a one-channel skip).
    """

    transfers_attention = True

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        attend_channels: int = 1,
        attend_norm: bool = False,
        attend_activation: str = "sigmoid",
        **kwargs: Any,
    ) -> None:
        super().__init__(spatial_dims, channels, **kwargs)
        self.attend_activation = look_up_option(attend_activation, ATTEND_ACTIVATIONS, "attend_activation")
        if int(attend_channels) < 1:
            raise ConfigError(f"`attend_channels` must be at least 1, got {attend_channels}")
        self.attend_channels = int(attend_channels)
        self.attend = layer_type("conv", spatial_dims)(channels, self.attend_channels, kernel_size=1)
        norm = layer_type("batchnorm", spatial_dims)
        self.attend_norm = norm(self.attend_channels) if attend_norm else None

    def _attention(self, u: Tensor) -> Tensor:
        if self.attend_norm is not None:
            u = self.attend_norm(u)
        return self._remember(torch.sigmoid(u) if self.attend_activation == "sigmoid" else u)


class AttendGate(_Attending):
    """``at``: attend only, ``sigmoid(K ⋆ f)`` (W fixed to ones); ``k`` (default one) channels transferred."""

    def forward(self, f: Tensor) -> Tensor:
        return self._attention(self.attend(f))


class SelectAttendGate(_Attending, _Selecting):
    """``sat``: select then attend, ``sigmoid(K ⋆ (f * trelu(W)))``; ``k`` (default one) channels transferred.

    The selection is folded into the 1×1 convolution's weights (``K · trelu(W)``), which is exactly
    equal to eq. 1–4 and never materialises the full-size ``f_s``.
    """

    def folded_weight(self) -> Tensor:
        """The attention kernel with the selection folded in, ``(k, C, 1, …)``."""
        return self.attend.weight * self._broadcast(trelu(self.select_weight))

    def forward(self, f: Tensor) -> Tensor:
        weight = self.folded_weight().to(f.dtype)
        bias = self.attend.bias.to(f.dtype) if self.attend.bias is not None else None
        return self._attention(conv_fn(self.spatial_dims)(f, weight, bias))

    def forward_literal(self, f: Tensor) -> Tensor:
        """Eq. 1–4 computed literally (materialising ``f_s``); for tests and the paper's Fig. 5."""
        f_s = f * self._broadcast(trelu(self.select_weight))
        return self._attention(self.attend(f_s))


_GATES: dict[str, type[SkipGate]] = {
    "org": IdentityGate,
    "st": SelectGate,
    "at": AttendGate,
    "sat": SelectAttendGate,
}


def list_gates() -> list[str]:
    """Names of the skip gates: ``org``, ``st``, ``at``, ``sat``."""
    return list(_GATES)


_SELECT_OPTIONS = ("select_init",)
_ATTEND_OPTIONS = ("attend_channels", "attend_norm", "attend_activation")

DEFAULT_GATE_OPTIONS: dict[str, Any] = {
    "select_init": 0.5,
    "attend_channels": 1,
    "attend_norm": False,
    "attend_activation": "sigmoid",
}
"""The gate options a model gets unless it says otherwise (recorded explicitly in every new checkpoint); satseg
0.1.0, which recorded none, built these too."""



def gate_option_names() -> tuple[str, ...]:
    """Every gate option :func:`build_gate` accepts (each gate uses those that apply to it)."""
    return _SELECT_OPTIONS + _ATTEND_OPTIONS


def build_level_gates(
    skip: str,
    spatial_dims: int,
    widths: Sequence[int],
    gate_levels: int | str | None = None,
    gate_options: Mapping[str, Any] | None = None,
) -> nn.ModuleList:
    """One gate per long skip, finest level first: ``skip`` on the ``gate_levels`` finest, ``org`` deeper.

    The finest skip holds most of the skip memory (each level has ``2**spatial_dims`` times the voxels of the
    next and about half its channels); the deeper ones hold most of the decoder's skip parameters.

    Args:
        skip: the gate of the gated levels (one of :func:`list_gates`).
        spatial_dims: 2 or 3.
        widths: channels of each skipped encoder level, finest first.
        gate_levels: how many of the finest skips get ``skip``; ``all`` or None: every one (the paper).
        gate_options: options of the gated skips (see :func:`build_gate`).

    Raises:
        ConfigError: ``gate_levels`` outside ``0 … len(widths)``, or a bad gate or option.
    """
    if gate_levels in (None, "all"):
        gated = len(widths)
    elif isinstance(gate_levels, int) and 0 <= gate_levels <= len(widths):
        gated = gate_levels
    else:
        raise ConfigError(f"`gate_levels` must be `all` or 0 … {len(widths)} (the skips), got {gate_levels!r}")
    return nn.ModuleList(
        build_gate(skip if level < gated else "org", spatial_dims, width, **(gate_options or {}))
        for level, width in enumerate(widths)
    )


def build_gate(skip: str, spatial_dims: int, channels: int, **options: Any) -> SkipGate:
    """Build the gate named ``skip`` for a ``channels``-channel feature map.

    Args:
        skip: one of :func:`list_gates`.
        spatial_dims: 2 or 3.
        channels: channels of the encoder feature map.
        **options: gate options (:func:`gate_option_names`); each gate takes those that apply to it
            (``select_init`` for ``st``/``sat``; ``attend_channels``, ``attend_norm`` for ``at``/``sat``)
            and ignores the rest, so one set of options serves every gate of a comparison.

    Raises:
        ConfigError: unknown gate or option.
    """
    cls = _GATES[look_up_option(skip, _GATES, "skip")]
    for key in options:
        look_up_option(key, gate_option_names(), "gate option")
    options = {**DEFAULT_GATE_OPTIONS, **options}
    applies = (_SELECT_OPTIONS if issubclass(cls, _Selecting) else ()) + (
        _ATTEND_OPTIONS if issubclass(cls, _Attending) else ()
    )
    return cls(spatial_dims, channels, **{k: v for k, v in options.items() if k in applies})
