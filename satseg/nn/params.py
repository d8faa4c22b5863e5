"""What the skip gates save: parameters, transferred channels, skip memory, FLOPs and peak memory.

The numbers behind the SAT paper's Table 3 (and more), measured on the models satseg builds.
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from satseg.device import resolve_device
from satseg.errors import ConfigError, look_up_option
from satseg.nn import build_model, list_gates, list_models
from satseg.nn.base import SegmentationNet
from satseg.nn.registry import model_accepts

__all__ = ["compare_variants", "compare_models", "default_patch", "measure_variant", "LiveTensorBytes"]

log = logging.getLogger(__name__)

DEFAULT_PATCH = {2: (64, 64), 3: (32, 32, 32)}


def default_patch(net: str) -> tuple[int, ...]:
    """The patch used when none is given: 64×64 for 2D nets, 32×32×32 for 3D nets."""
    return DEFAULT_PATCH[int(net[-2])]


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storage that operators allocate and that are alive at once.

    Each storage an operator returns is counted once, from its creation until the last tensor viewing it
    is garbage-collected; storage that existed before (weights, the input) is not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._refs: dict[int, int] = {}

    def _release(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = {id(a) for a in tree_flatten((args, kwargs or {}))[0] if isinstance(a, Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor) or id(t) in before:
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if key in self._refs:
                self._refs[key] += 1
            else:
                self._refs[key] = 1
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, key, nbytes)
        return out


@contextmanager
def _gate_outputs(model: SegmentationNet) -> Iterator[list[tuple[str, Tensor]]]:
    seen: list[tuple[str, Tensor]] = []
    handles = [
        gate.register_forward_hook(lambda _m, _i, out, name=name: seen.append((name, out)))
        for name, gate in model.skip_gates()
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _peak_memory(model: SegmentationNet, x: Tensor) -> int:
    """Peak bytes allocated by one forward pass beyond the weights and the input."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        with torch.no_grad():
            model(x)
        torch.cuda.synchronize(x.device)
        return int(torch.cuda.max_memory_allocated(x.device) - base)
    tracker = LiveTensorBytes()
    with torch.no_grad(), tracker:
        model(x)
    return int(tracker.peak)


def measure_variant(
    model: SegmentationNet, patch: Sequence[int], *, flops: bool = True, memory: bool = True
) -> dict[str, Any]:
    """Measure one built model on a batch-1 zero input of size ``patch`` (eval mode, fp32).

    Returns:
        ``params``, ``skip_channels`` (per gate, in :meth:`SegmentationNet.skip_gates` order),
        ``skip_bytes`` (bytes of everything the gates hand to the decoder), ``flops`` (forward,
        :class:`torch.utils.flop_counter.FlopCounterMode`, or None) and ``peak_memory_bytes`` (or None):
        on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated before; on CPU the peak
        bytes of tensor storage the forward's operators allocate and keep alive at once (tracked at the
        dispatcher; allocator caching and kernel workspaces are not included).
    """
    params = sum(p.numel() for p in model.parameters())
    if not memory:  # shapes and FLOPs need no values: on the meta device nothing is allocated, whatever the patch
        model = copy.deepcopy(model).to("meta")
    device = next(model.parameters()).device
    x = torch.zeros(1, model.in_channels, *patch, device=device)
    model.check_input_shape(x)
    model.eval()
    counter = FlopCounterMode(display=False) if flops else None
    with torch.no_grad(), _gate_outputs(model) as seen:
        if counter is not None:
            with counter:
                model(x)
        else:
            model(x)
    return {
        "params": params,
        "skip_channels": [int(out.shape[1]) for _, out in seen],
        "skip_bytes": sum(out.numel() * out.element_size() for _, out in seen),
        "flops": int(counter.get_total_flops()) if counter is not None else None,
        "peak_memory_bytes": _peak_memory(model, x) if memory else None,
    }


def compare_variants(
    net: str,
    skips: Sequence[str] = ("org", "st", "at", "sat"),
    patch: Sequence[int] | None = None,
    *,
    in_channels: int = 1,
    out_channels: int = 2,
    flops: bool = True,
    memory: bool = True,
    device: str = "cpu",
    **options: Any,
) -> list[dict[str, Any]]:
    """Build ``net`` with each skip gate in ``skips`` and measure it (see :func:`measure_variant`).

    Args:
        net: one of :func:`satseg.nn.list_models`.
        skips: gates to compare; ``params_change_pct`` is relative to ``org`` (built even if not listed).
        patch: spatial size of the test input; :func:`default_patch` when None.
        in_channels: image channels.
        out_channels: classes.
        flops: count forward FLOPs.
        memory: measure the peak memory of one forward pass.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (:func:`satseg.device.resolve_device`).
        **options: backbone options passed to :func:`satseg.nn.build_model`.

    Returns:
        One dict per gate: ``net``, ``skip``, ``patch``, ``params``, ``params_change_pct``,
        ``skip_channels``, ``skip_bytes``, ``flops``, ``peak_memory_bytes``.

    Raises:
        ConfigError: unknown net, gate or option; a patch of the wrong length or not divisible.
    """
    net = look_up_option(net, list_models(), "net")
    skips = [look_up_option(s, list_gates(), "skip") for s in skips]
    if not skips:
        raise ConfigError("`--compare` needs at least one skip gate", hint=f"choose from {', '.join(list_gates())}")
    dims = int(net[-2])
    patch = tuple(int(p) for p in (default_patch(net) if patch is None else patch))
    if len(patch) != dims or min(patch) < 1:
        raise ConfigError(f"`patch` for {net} needs {dims} positive sides, got {list(patch)}")
    device = str(resolve_device(device))  # the one device policy: refuses cuda without a GPU

    def build(skip: str) -> SegmentationNet:
        return build_model(net, skip, in_channels, out_channels, **options).to(device)

    org_params = None if "org" in skips else sum(p.numel() for p in build("org").parameters())
    rows = []
    for skip in skips:
        log.info("measuring %s with %s skips on %s", net, skip, list(patch))
        row = {
            "net": net,
            "skip": skip,
            "patch": list(patch),
            **measure_variant(build(skip), patch, flops=flops, memory=memory),
        }
        if skip == "org":
            org_params = row["params"]
        rows.append(row)
    for row in rows:
        row["params_change_pct"] = 100.0 * (row["params"] - org_params) / org_params
    return rows


def compare_models(
    nets: Sequence[str] | None = None,
    skips: Sequence[str] = ("org", "sat"),
    *,
    net_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> list[dict]:
    """:func:`compare_variants` for several nets (every registered one when ``nets`` is None).

    A given ``patch`` must suit every net's dimension; without one each net gets :func:`default_patch`.
    Each of ``net_options`` (backbone options) goes to the nets that take it (``gate_levels`` to all but
    Tiramisu); one that no net takes raises ConfigError. ``kwargs`` go to :func:`compare_variants`.
    """
    nets = list_models() if nets is None else [look_up_option(n, list_models(), "net") for n in nets]
    options = dict(net_options or {})
    for key in options:
        if not any(model_accepts(net, key) for net in nets):
            raise ConfigError(f"no net of {', '.join(nets)} takes the option `{key}`")
    rows = []
    for net in nets:
        accepted = {k: v for k, v in options.items() if model_accepts(net, k)}
        rows.extend(compare_variants(net, skips, **kwargs, **accepted))
    return rows
