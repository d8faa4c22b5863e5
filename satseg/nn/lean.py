"""Lean inference path: a trained :class:`SegmentationNet` rewritten for fast, small, eval-only inference.

:func:`make_lean` returns a module with the model's input/output contract, ``(B, in, *S) -> logits
(B, out, *S)`` (main output only), equal to ``model.eval()(x)`` up to float rounding, with:

* every BatchNorm that follows a (transposed) convolution folded into it, with its eval statistics;
* ``sat``'s selection folded into the 1×1(×1) attention kernel, ``K · trelu(W)``;
* gates applied as soon as the encoder produces a level, so only what the skip transfers is held
  (one channel for ``at``/``sat``, the selected channels for ``st``);
* the decoder's first convolution after a concatenation computed as ``conv_up(up) + conv_skip(skip)``
  without materialising the concatenation, the skip term added in place channel chunk by chunk (in an
  exported graph, which has no in-place writes, a thin skip such as ``sat``'s map is concatenated instead
  and a wide one's term added: see :meth:`LeanSkipConv._graph`);
  ``st``'s selection folded into ``conv_skip``'s input-channel weights;
* with ``prune``: ``st`` channels whose selection is zero dropped from the held skip and from
  ``conv_skip`` (a physically smaller exported model);
* in-place activations, and every full-size tensor released as soon as it is no longer needed.

U-Net, V-Net and DI2IN get a lean forward of their own. FC-DenseNet (Tiramisu) is pre-activation
(BN–ReLU–conv, every feature read by several BNs with different statistics), so nothing folds into a
preceding conv: its lean form only folds the ``sat``/``at`` gates and drops dropout.

A U-Net built with ``align_channels=True`` (its up-convolution gives ``C − 1`` channels when the skip
transfers one) keeps the concatenation, which then has ``C`` channels, a multiple of 8 for tensor cores.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from satseg.errors import ConfigError
from satseg.nn.base import SegmentationNet
from satseg.nn.gates import AttendGate, IdentityGate, SelectAttendGate, SelectGate, SkipGate, trelu
from satseg.nn.layers import conv_fn, layer_types

__all__ = ["make_lean", "prune_report", "fold_bn", "LeanNet", "LeanGate", "LeanSkipConv"]

_CONV, _CONVT, _BN = layer_types("conv"), layer_types("convtranspose"), layer_types("batchnorm")


@torch.no_grad()
def fold_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``conv`` (conv or transposed conv) that computes ``bn(conv(x))`` with ``bn``'s eval statistics.

    torch's ``fuse_conv_bn_eval`` does the folding; it insists on eval mode, so it is given eval copies (the
    model being rewritten keeps its mode). Every BN satseg folds follows a plain (transposed) conv, the
    gates' attention BN included (its conv already holds ``K · trelu(W)``), so no folding is hand-written.
    """
    return fuse_conv_bn_eval(copy.deepcopy(conv).eval(), copy.deepcopy(bn).eval(), transpose=isinstance(conv, _CONVT))


def _fold_sequentials(module: nn.Module) -> None:
    """In place: in every ``nn.Sequential``, a BatchNorm right after a (transposed) conv is folded into it."""
    for child in module.children():
        _fold_sequentials(child)
    if not isinstance(module, nn.Sequential):
        return
    items = list(module)
    for i in range(len(items) - 1):
        if isinstance(items[i], _CONV + _CONVT) and isinstance(items[i + 1], _BN) and items[i + 1].track_running_stats:
            module[i] = fold_bn(items[i], items[i + 1])
            module[i + 1] = nn.Identity()


def _strip_identities(seq: nn.Sequential) -> nn.Sequential:
    return nn.Sequential(*(m for m in seq if not isinstance(m, nn.Identity)))


class LeanGate(nn.Module):
    """A skip gate for inference: ``(B, C, *S) ->`` what the skip holds until the decoder needs it.

    ``org``: ``f`` itself; ``st``: the kept channels of ``f`` (their selection is folded into the consumer's
    weights, see :attr:`scale`); ``at``/``sat``: ``sigmoid(K' ⋆ f)`` with ``K' = K · trelu(W)``, one channel.

    Args:
        gate: the trained gate.
        prune: drop ``st`` channels whose selection is zero.
    """

    def __init__(self, gate: SkipGate, prune: bool = True) -> None:
        super().__init__()
        self.spatial_dims = gate.spatial_dims
        self.attention = gate.transfers_attention
        keep = torch.arange(gate.out_channels)  # one channel for at/sat: their attention map
        scale = torch.ones(gate.out_channels)
        if isinstance(gate, SelectGate):
            scale = trelu(gate.select_weight.detach().float())
            if prune:
                keep = torch.nonzero(scale).flatten()
        elif not isinstance(gate, IdentityGate | AttendGate | SelectAttendGate):
            raise ConfigError(f"the lean path does not know the skip gate {type(gate).__name__}")
        self.conv: nn.Module | None = None
        self.sigmoid = self.attention and gate.attend_activation == "sigmoid"
        if self.attention:
            self.conv = copy.deepcopy(gate.attend)
            if isinstance(gate, SelectAttendGate):
                with torch.no_grad():
                    self.conv.weight.copy_(gate.folded_weight())
            if gate.attend_norm is not None:
                self.conv = fold_bn(self.conv, gate.attend_norm)
        self.register_buffer("keep", keep, persistent=False)
        self.pruned = len(keep) < gate.channels
        # Selection of the held channels, to be folded into whatever reads them.
        self.register_buffer("scale", scale[keep].clone(), persistent=False)
        self.out_channels = gate.out_channels if self.attention else len(keep)

    def forward(self, f: Tensor) -> Tensor | None:
        if self.conv is not None:
            u = self.conv(f)
            return torch.sigmoid_(u) if self.sigmoid else u
        if self.out_channels == 0:
            return None
        return f.index_select(1, self.keep) if self.pruned else f


class LeanSkipConv(nn.Module):
    """The first conv after ``cat([up, skip])``, split: ``act(conv_up(up) + conv_skip(skip))``.

    Args:
        conv: the (BN-folded) conv reading the concatenation.
        up_channels: channels of ``up`` (the first ones of the concatenation).
        gate: the skip's :class:`LeanGate` (its kept channels and folded selection).
        act: the activation after the conv.
        concat: keep the concatenation (one conv over ``cat``), e.g. when its width is tensor-core aligned.
        chunk: output channels per in-place skip term (bounds the temporary); None: one add.
    """

    def __init__(
        self, conv: nn.Module, up_channels: int, gate: LeanGate, act: nn.Module, concat: bool = False, chunk: int = 8
    ) -> None:
        super().__init__()
        weight = conv.weight.detach()
        skip_w = weight[:, up_channels:].index_select(1, gate.keep) * gate.scale.view(1, -1, *[1] * (weight.ndim - 2))
        self.concat = concat and gate.out_channels > 0
        self.chunk = chunk
        self.spatial_dims = weight.ndim - 2
        self.padding, self.stride = conv.padding, conv.stride
        self.conv_up = copy.deepcopy(conv)
        if self.concat:
            self.conv_up.weight = nn.Parameter(torch.cat([weight[:, :up_channels], skip_w], dim=1).clone())
            self.skip_weight = None
        else:
            self.conv_up.weight = nn.Parameter(weight[:, :up_channels].clone())
            self.skip_weight = nn.Parameter(skip_w.clone()) if gate.out_channels else None
        self.act = act
        self.thin_skip = 2 * skip_w.shape[1] < up_channels  # exported as a concatenation, see _graph

    def run(self, box: list[Tensor], skip: Tensor | None) -> Tensor:
        """Compute from ``box = [up]`` (emptied, so ``up`` is freed once used) and the held skip."""
        up = box.pop()
        if self.concat:
            cat = torch.cat([up, skip], dim=1)
            del up
            return self.act(self.conv_up(cat))
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self.act(self._graph(up, skip))
        y = self.conv_up(up)
        del up
        if self.skip_weight is not None:
            conv, n = conv_fn(self.spatial_dims), self.skip_weight.shape[0]
            # Chunk a one-channel skip's term (cheap to recompute per chunk); add a wide skip's term at once.
            step = n if self.chunk is None or self.skip_weight.shape[1] > 1 else self.chunk
            for a in range(0, n, step):  # in place, a chunk of output channels at a time: a small temporary
                y[:, a : a + step] += conv(skip, self.skip_weight[a : a + step], None, self.stride, self.padding)
        return self.act(y)

    def _graph(self, up: Tensor, skip: Tensor | None) -> Tensor:
        """The same sum without in-place writes, for an exported graph (ONNX has none: a traced ``y[a:b] += t``
        becomes Slice, Add and ScatterND, three more full-size tensors alive at the decoder's finest level).

        A thin skip (fewer than half of ``up``'s channels, e.g. ``sat``'s one-channel map) is concatenated to
        ``up`` and read by one conv: at most ``up``, the skip and their concatenation are alive (about two
        ``up``s), where ``conv(up) + conv(skip)`` holds three full-width outputs at its add. A wide skip
        (``org``) holds itself anyway: its concatenation would cost one more, so its term is added.
        """
        if self.skip_weight is None:
            return self.conv_up(up)
        conv = conv_fn(self.spatial_dims)
        if self.thin_skip:
            weight = torch.cat([self.conv_up.weight, self.skip_weight], dim=1)
            return conv(torch.cat([up, skip], dim=1), weight, self.conv_up.bias, self.stride, self.padding)
        return self.conv_up(up) + conv(skip, self.skip_weight, None, self.stride, self.padding)


class LeanNet(nn.Module):
    """Base of the lean modules: ``(B, in_channels, *S) -> logits (B, out_channels, *S)``, eval only.

    Attributes:
        source_config: the ``config`` of the model it was made from.
    """

    def __init__(self, model: SegmentationNet) -> None:
        super().__init__()
        self.spatial_dims, self.in_channels, self.out_channels = (
            model.spatial_dims,
            model.in_channels,
            model.out_channels,
        )
        self.input_divisor = model.input_divisor
        self.source_config: dict[str, Any] = dict(model.config)

    def train(self, mode: bool = True) -> LeanNet:
        return super().train(False)


def _split_first(seq: nn.Sequential, up_channels: int, gate: LeanGate, concat: bool) -> tuple[LeanSkipConv, nn.Module]:
    """``seq`` is a Sequential of folded ConvNormAct blocks reading a concatenation: split its first conv."""
    first = _strip_identities(seq[0])
    conv, act = first[0], (first[1] if len(first) > 1 else nn.Identity())
    return LeanSkipConv(conv, up_channels, gate, act, concat=concat), nn.Sequential(*list(seq)[1:])


class _LeanUNet(LeanNet):
    def __init__(self, model: SegmentationNet, prune: bool) -> None:
        super().__init__(model)
        m = copy.deepcopy(model).eval()
        _fold_sequentials(m)
        self.encoder, self.pools, self.head = m.encoder, m.pools, m.head
        self.gates = nn.ModuleList(LeanGate(g, prune) for g in m.gates)
        self.ups = m.ups
        align = getattr(m, "align_channels", False)
        self.modulate = m.transfer == "modulate" and m.gates[0].transfers_attention
        self.first, self.rest = nn.ModuleList(), nn.ModuleList()
        for up, block, level in zip(m.ups, m.decoder, reversed(range(len(m.gates))), strict=True):
            first, rest = _split_first(block, up.up.out_channels, self.gates[level], concat=align)
            self.first.append(first)
            self.rest.append(rest)

    def forward(self, x: Tensor) -> Tensor:
        held: list[Tensor | None] = []
        for level, block in enumerate(self.encoder):
            if level:
                x = self.pools[level - 1](x)
            x = block(x)
            if level < len(self.gates):
                held.append(self.gates[level](x))
        for up, first, rest in zip(self.ups, self.first, self.rest, strict=True):
            box, skip = [up(x)], held.pop()
            del x  # the coarser level is no longer needed
            if self.modulate:
                box[0].mul_(skip.mean(dim=1, keepdim=True).add_(1))
            x = rest(first.run(box, skip))
        return self.head(x)


class _LeanVNet(LeanNet):
    def __init__(self, model: SegmentationNet, prune: bool) -> None:
        super().__init__(model)
        m = copy.deepcopy(model).eval()
        _fold_sequentials(m)
        self.gates = nn.ModuleList(LeanGate(g, prune) for g in m.gates)
        self.first, self.rest, self.up_layers, self.up_acts = (
            nn.ModuleList(),
            nn.ModuleList(),
            nn.ModuleList(),
            nn.ModuleList(),
        )
        self.widths: list[int] = []
        for up, level in zip(m.ups, reversed(range(len(m.gates))), strict=True):
            width = up.out_channels // 2
            first, rest = _split_first(up.stage.convs, width, self.gates[level], concat=False)
            self.first.append(first)
            self.rest.append(rest)
            self.up_layers.append(_strip_identities(up.up))
            self.up_acts.append(up.stage.act)
            self.widths.append(width)
        del m.gates, m.ups
        self.m = m  # the encoder is used as it is (BN folded)

    def forward(self, x: Tensor) -> Tensor:
        m = self.m
        residual = x.repeat_interleave(m.repeat, dim=1) if m.repeat else m.input_proj(x)
        x = m.input_act(m.input_conv(x) + residual)
        del residual
        if m.input_stage is not None:
            x = m.input_stage(x)
        held = [self.gates[0](x)]
        for s, down in enumerate(m.downs, start=1):
            x = down(x)
            if s < len(self.gates):
                held.append(self.gates[s](x))
        for i, up in enumerate(self.up_layers):
            u = up(x)
            del x
            skip, gate, width = held.pop(), self.gates[len(self.gates) - 1 - i], self.widths[i]
            y = self.rest[i](self.first[i].run([u], skip))
            y[:, :width] += u  # the residual is cat(up, skip) zero-padded to 2·width channels
            del u
            if skip is not None:
                channels = width + gate.keep  # at/sat: keep is arange(k), the attention maps
                if not gate.attention:  # the selection folded into the held channels, in the skip's dtype
                    skip = skip * gate.scale.view(1, -1, *[1] * (skip.ndim - 2)).to(skip.dtype)
                # under autocast y and the skip may differ in dtype (e.g. a bf16 conv output and an fp32 map)
                y.index_add_(1, channels.to(y.device), skip.to(y.dtype))
            x = self.up_acts[i](y)
        return m.head(x)


class _LeanDI2IN(LeanNet):
    def __init__(self, model: SegmentationNet, prune: bool) -> None:
        super().__init__(model)
        m = copy.deepcopy(model).eval()
        _fold_sequentials(m)
        self.encoder, self.up_convs, self.head, self.mode = m.encoder, m.up_convs, m.heads["0"], m.mode
        self.gates = nn.ModuleList(LeanGate(g, prune) for g in m.gates)
        self.first, self.rest = nn.ModuleList(), nn.ModuleList()
        for i, block in enumerate(m.decoder):
            level = len(m.gates) - 1 - i
            first, rest = _split_first(block, m.widths[level], self.gates[level], concat=False)
            self.first.append(first)
            self.rest.append(rest)

    def forward(self, x: Tensor) -> Tensor:
        held: list[Tensor | None] = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < len(self.gates):
                held.append(self.gates[level](x))
        for up_conv, first, rest in zip(self.up_convs, self.first, self.rest, strict=True):
            box = [up_conv(F.interpolate(x, scale_factor=2.0, mode=self.mode, align_corners=False))]
            del x
            x = rest(first.run(box, held.pop()))
        return self.head(x)


class _FoldedAttention(nn.Module):
    """An ``at``/``sat`` gate as a plain ``sigmoid(K' ⋆ f)``; ``st`` as ``f · trelu(W)`` with a constant W."""

    def __init__(self, gate: SkipGate) -> None:
        super().__init__()
        self.inner = LeanGate(gate, prune=False)
        self.select = isinstance(gate, SelectGate)

    def forward(self, f: Tensor) -> Tensor:
        if self.select:
            return f * self.inner.scale.view(1, -1, *[1] * (f.ndim - 2)).to(f.dtype)
        return self.inner(f)


class _LeanGeneric(LeanNet):
    """The model's own forward with folded gates and the eval-time BNs it cannot fold (pre-activation nets)."""

    def __init__(self, model: SegmentationNet, prune: bool) -> None:
        super().__init__(model)
        m = copy.deepcopy(model).eval()
        _fold_sequentials(m)
        for name, gate in list(m.skip_gates()):
            parent = m.get_submodule(name.rpartition(".")[0]) if "." in name else m
            key = name.rpartition(".")[2]
            if isinstance(gate, IdentityGate):
                continue
            if isinstance(parent, nn.ModuleList):
                parent[int(key)] = _FoldedAttention(gate)
            else:
                setattr(parent, key, _FoldedAttention(gate))
        for name, mod in list(m.named_modules()):
            if isinstance(mod, (nn.Dropout, *layer_types("dropout"))) and name:
                parent = m.get_submodule(name.rpartition(".")[0]) if "." in name else m
                setattr(parent, name.rpartition(".")[2], nn.Identity())  # an attribute or a Sequential's item
        self.m = m

    def forward(self, x: Tensor) -> Tensor:
        return self.m(x)


def _lean_class(model: SegmentationNet) -> type[LeanNet]:
    from satseg.nn.backbones import DI2IN, UNet, VNet

    for cls, lean in ((UNet, _LeanUNet), (VNet, _LeanVNet), (DI2IN, _LeanDI2IN)):
        if isinstance(model, cls):
            return lean
    return _LeanGeneric


def make_lean(model: SegmentationNet, *, prune: bool = True, chunk: int | None = 8) -> LeanNet:
    """Rewrite a trained model for inference (see the module docstring); the model itself is not changed.

    Args:
        model: a trained backbone (its BatchNorm running statistics are used).
        prune: drop ``st`` channels whose selection is zero (only where they feed a conv directly).
        chunk: output channels per in-place skip term of a split conv (None: the whole term at once).

    Returns:
        An eval-only module ``(B, in, *S) -> logits (B, out, *S)`` equal to ``model.eval()(x)``.

    Raises:
        ConfigError: ``model`` is not a :class:`SegmentationNet`.
    """
    if not isinstance(model, SegmentationNet):
        raise ConfigError(f"make_lean needs a satseg SegmentationNet, got {type(model).__name__}")
    device = next(model.parameters()).device
    with torch.no_grad():  # rewrite on the CPU (gate buffers are made there), then move to the model's device
        lean = _lean_class(model)(copy.deepcopy(model).cpu(), prune)
    for m in lean.modules():
        if isinstance(m, LeanSkipConv):
            m.chunk = chunk
    return lean.to(device).eval()


def _size(module: nn.Module) -> tuple[int, int]:
    tensors = list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
    return sum(p.numel() for p in module.parameters()), sum(t.numel() * t.element_size() for t in tensors)


def prune_report(model: SegmentationNet) -> dict[str, Any]:
    """What the lean path saves: parameters and bytes of ``model``, of its lean form, and of the pruned one.

    Returns:
        ``params``/``bytes`` of the model (bytes include BN statistics), ``lean_params``/``lean_bytes``
        (folded, not pruned), ``pruned_params``/``pruned_bytes`` (folded and pruned), ``saved_params``
        and ``saved_pct`` (pruned lean vs the model), and ``channels_off`` per gate (selection zero).
    """
    params, nbytes = _size(model)
    lean_params, lean_bytes = _size(make_lean(model, prune=False))
    pruned_params, pruned_bytes = _size(make_lean(model, prune=True))
    return {
        "params": params,
        "bytes": nbytes,
        "lean_params": lean_params,
        "lean_bytes": lean_bytes,
        "pruned_params": pruned_params,
        "pruned_bytes": pruned_bytes,
        "saved_params": params - pruned_params,
        "saved_pct": 100.0 * (params - pruned_params) / params,
        "channels_off": {
            name: int((g.selection() == 0).sum()) for name, g in model.skip_gates() if g.selection() is not None
        },
    }
