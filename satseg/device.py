"""Where a job runs and in which precision: one policy for training, validation, ``segment`` and ``evaluate``.

Device: ``auto`` is the process's own CUDA device (``LOCAL_RANK`` under ``torchrun``) when there is one, else
the CPU; ``cpu``, ``cuda`` (the local rank's GPU) and ``cuda:N`` are taken as given.

Precision: a run records ``amp`` and ``amp_dtype`` (``bf16`` or ``fp16``), and every job that runs the run's
model reads them through :func:`autocast_dtype`:

* ``auto`` (the default): autocast to ``amp_dtype`` on CUDA, float32 on the CPU;
* ``on``: autocast on every device. On the CPU this runs CUDA's mixed-precision code path with the CPU's
  autocast rules (bf16 is native on CPUs with AVX-512 BF16 or AMX; fp16 has CPU kernels too), which is how
  the CUDA path is tested on machines without a GPU;
* ``off``: float32 everywhere.

``segment``, ``evaluate --model`` and ``postprocess`` may override the run's setting (``--amp``/``--no-amp``).
Runs saved before ``amp`` had three values recorded ``true`` for what is now ``auto``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from satseg.errors import ConfigError, look_up_option

__all__ = [
    "AMP_DTYPES",
    "AMP_MODES",
    "amp_mode",
    "autocast_context",
    "autocast_in_force",
    "autocast_dtype",
    "autocasts",
    "cpu_has_native_bf16",
    "surely_cpu",
    "local_rank",
    "quiet_openmp_waits",
    "resolve_device",
]

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, so that settings (TrainConfig) and the CLI's --help need no torch.
AMP_DTYPES: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16"}
"""The ``--amp-dtype`` names and the autocast dtypes they stand for (``torch.bfloat16``, ``torch.float16``)."""
AMP_MODES = ("auto", "on", "off")
"""``--amp`` settings: autocast on CUDA only, on every device, or never."""

log = logging.getLogger(__name__)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX). Elsewhere bf16 is emulated: a 512²
    matmul ran at 0.2 GFLOP/s against 44 for float32 on an AVX2 CPU (benchmarks/results/cpu-roofline.md)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def _warn_emulated_bf16() -> None:
    log.warning(
        "bf16 autocast on a CPU without native bf16 (AVX-512 BF16 or AMX) is emulated and far slower than "
        "float32: run without --amp for speed"
    )


OPENMP_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""Settings by which a user has chosen how OpenMP's waiting threads behave (GNU's and Intel's runtimes)."""


def quiet_openmp_waits(environ: MutableMapping[str, str] | None = None, load: float | None = None) -> bool:
    """Let torch's OpenMP threads sleep instead of spin while they wait when other work keeps the CPU busy.

    GNU OpenMP (torch's CPU thread pool on Linux) lets a waiting thread spin up to 300,000 polls between two
    parallel regions. Alone on the machine that saves a wake-up per region; beside other busy processes the
    spinning threads take the cores the working thread needs. A training step of the demo's 3D U-Net on 2
    cores (``benchmarks/results/cpu-threads.md``): idle, spinning 0.148 s and ``OMP_WAIT_POLICY=PASSIVE``
    0.159 s (1.07x); beside one busy process 0.47 vs 0.42 s (0.88x); beside two, 0.57-7.7 vs 0.47-0.76 s.
    The policy never changes a result (identical weights), only the time, so it follows the load: passive
    when the 1-minute load average is at least 1 (a core's worth of other work), left alone otherwise, and
    never where the user set ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME``. It takes effect only
    before torch is imported (the runtime reads it once), so the CLI calls it first. Returns whether it set
    the policy.
    """
    environ = os.environ if environ is None else environ
    if any(name in environ for name in OPENMP_WAIT_SETTINGS):
        return False
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this platform: keep the runtime's default
            return False
    if load < 1.0:
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def local_rank() -> int:
    """This process's rank on its node: ``LOCAL_RANK`` under ``torchrun``, else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


_GPU_NODES = ("/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")  # NVIDIA, ROCm, WSL's GPU


def surely_cpu(spec: str) -> bool:
    """True when the device ``spec`` can only mean the CPU, decided without importing torch (which takes
    seconds): ``cpu``, or ``auto`` where ``CUDA_VISIBLE_DEVICES`` hides every GPU or no GPU driver is present.
    False means "ask :func:`resolve_device`", not "a GPU is there"."""
    spec = str(spec).strip().lower()
    if spec == "cpu":
        return True
    if spec != "auto":
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return True
    return not any(os.path.exists(node) for node in _GPU_NODES)


def resolve_device(spec: str, rank: int | None = None) -> torch.device:
    """``auto`` → the process's CUDA device if there is one, else CPU; ``cpu``, ``cuda``, ``cuda:i`` as given.

    Args:
        spec: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        rank: the GPU that ``auto`` and ``cuda`` mean; default :func:`local_rank`.
    """
    import torch

    rank = local_rank() if rank is None else rank
    if spec == "auto":
        return torch.device(f"cuda:{rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device `{spec}`; valid: auto, cpu, cuda, cuda:N") from err
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device `{spec}`; valid: auto, cpu, cuda, cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device `{spec}` asked for, but CUDA is not available here", hint="use --device cpu")
        if device.index is None:
            device = torch.device(f"cuda:{rank}")
    return device


def amp_mode(value: str | bool | None) -> str:
    """``auto``, ``on`` or ``off`` for a recorded or given ``amp`` setting.

    ``None`` (not recorded) and ``True`` (what runs recorded before the setting had three values) are ``auto``.
    """
    if value is None or value is True:
        return "auto"
    if value is False:
        return "off"
    return look_up_option(str(value).lower(), AMP_MODES, "amp setting")


def autocast_dtype(
    device: torch.device, train: Mapping[str, Any] | None, override: bool | None = None
) -> torch.dtype | None:
    """The dtype a run's model runs in on ``device`` (None: float32).

    Args:
        device: where the model runs.
        train: the run's training settings (``amp``, ``amp_dtype``); None: a run without them (defaults).
        override: ``True``/``False`` from a command's ``--amp``/``--no-amp``; None: the run's setting.
    """
    if not autocasts(device.type, train, override):
        return None
    import torch

    train = train or {}
    dtype = getattr(torch, AMP_DTYPES[look_up_option(str(train.get("amp_dtype", "bf16")), AMP_DTYPES, "amp dtype")])
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_native_bf16():
        _warn_emulated_bf16()
    return dtype


def autocasts(device_type: str, train: Mapping[str, Any] | None, override: bool | None = None) -> bool:
    """Whether a run's model autocasts on a device of ``device_type`` (``cpu``, ``cuda``): the decision of
    :func:`autocast_dtype`, without torch."""
    train = train or {}
    mode = amp_mode(train.get("amp")) if override is None else ("on" if override else "off")
    return mode == "on" or (mode == "auto" and device_type == "cuda")


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` (CPU or CUDA); a no-op when ``dtype`` is None (float32)."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def autocast_in_force(device_type: str) -> contextlib.AbstractContextManager:
    """A context that re-enters the autocast settings in force now for ``device_type``, for a recomputation
    that runs later (during backward), as ``torch.utils.checkpoint`` does; a no-op for devices autocast does
    not know, such as ``meta``, on which the planner counts a step's memory."""
    import torch

    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(
        device_type,
        dtype=torch.get_autocast_dtype(device_type),
        enabled=torch.is_autocast_enabled(device_type),
        cache_enabled=torch.is_autocast_cache_enabled(),
    )
