"""Multi-process training under ``torchrun``: process group set-up, device choice, rank helpers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from satseg.device import local_rank, resolve_device
from satseg.errors import ConfigError

__all__ = ["DistContext", "init_distributed", "process_group_timeout", "TIMEOUT_ENV"]

TIMEOUT_ENV = "SATSEG_DIST_TIMEOUT"
"""Seconds a process waits for the others at a collective (default: PyTorch's, 10 min NCCL, 30 min gloo)."""


T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and reports validation (which every rank shares)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (every ``world_size``-th, from ``rank``): the shares partition them."""
        return list(items[self.rank :: self.world_size])

    def gather_shards(self, mine: Sequence[T]) -> list[T]:
        """Undo :meth:`shard` across processes: every rank's results, in the order of the sharded items.

        A collective: every rank calls it, each with the results of its own share; each gets them all.
        """
        if not self.distributed:
            return list(mine)
        parts: list[list[T] | None] = [None] * self.world_size
        dist.all_gather_object(parts, list(mine))
        total = sum(len(p) for p in parts)
        return [parts[i % self.world_size][i // self.world_size] for i in range(total)]


def init_distributed(device_spec: str) -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); else a single process.

    NCCL serves CUDA devices and gloo the CPU. The collectives wait :func:`process_group_timeout` for a slow
    rank; the training loop keeps the ranks in step (validation is sharded over every rank, see
    :meth:`DistContext.shard`), so no rank waits long for another.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    node_rank = local_rank()
    device = resolve_device(device_spec, node_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = process_group_timeout()
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, **({"timeout": timeout} if timeout is not None else {}))
    return DistContext(rank, world_size, node_rank, device)


def process_group_timeout() -> timedelta | None:
    """The collectives' timeout from ``$SATSEG_DIST_TIMEOUT`` (seconds); None: PyTorch's default."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"${TIMEOUT_ENV} must be a positive number of seconds, got `{text}`")
    return timedelta(seconds=seconds)
