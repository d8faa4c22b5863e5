"""The backends that run a model on one window: PyTorch (the lean module) and ONNX Runtime.

Each backend is a predictor, a callable ``(B, C, *S) -> logits (B, K, *S)`` that
:func:`satseg.inference.sliding_window.sliding_window_inference` runs on every window. On the CPU a
checkpoint is exported once to ONNX (:func:`cached_onnx_export`) and run with ONNX Runtime, which is faster.

The cache also keeps, per checkpoint file, which export it became (:func:`find_cached_export`): a later
``segment`` finds the export from the checkpoint's bytes alone, without loading it, so that path runs without
torch (whose import takes seconds; benchmarks/results/segment-startup.md). torch is therefore imported here
only where it is used.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from satseg import __version__
from satseg.atomic import atomic_write_json
from satseg.device import local_rank
from satseg.errors import CheckpointError, ConfigError, SatsegError
from satseg.export.metadata import onnx_graph_matches, read_onnx_metadata
from satseg.paths import safe_name

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from satseg.nn import SegmentationNet

__all__ = [
    "BACKENDS",
    "torch_predictor",
    "OnnxPredictor",
    "onnx_providers",
    "cache_dir",
    "cached_onnx_export",
    "find_cached_export",
    "export_model",
    "unmap_freed_blocks",
]

BACKENDS = ("torch", "onnx")
_M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
_LOW_MEMORY_MMAP_THRESHOLD = 128 * 1024  # glibc's initial threshold, kept fixed

log = logging.getLogger(__name__)


def torch_predictor(model: torch.nn.Module, device: torch.device) -> Callable[[Tensor], Tensor]:
    """``(B, C, *S) -> logits (B, K, *S)`` float32 by ``model`` on ``device`` (in eval mode)."""
    # No autocast here: sliding_window_inference autocasts to the run's own dtype (Segmenter.amp_dtype).
    import torch

    model.to(device).eval()
    # 3D windows on the CPU run channels-last: oneDNN's preferred layout, 0.83x / 0.93x the time of the
    # contiguous layout (org / sat) at equal labels (benchmarks/results/cpu-roofline.md, near-idle machine).
    # Not measured in 2D nor on GPUs, so those keep the default layout.
    channels_last = device.type == "cpu" and any(p.dim() == 5 for p in model.parameters())
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)

    def predict(x: Tensor) -> Tensor:
        x = x.to(device)
        if channels_last and x.dim() == 5:
            return model(x.contiguous(memory_format=torch.channels_last_3d)).float().contiguous()
        return model(x).float()

    return predict


def onnx_providers(device: str) -> list[str | tuple[str, dict[str, Any]]]:
    """ONNX Runtime's execution providers, in priority order, for a ``--device`` setting.

    ``cuda:N`` runs on GPU ``N``; ``cuda`` and ``auto`` on this process's own GPU (``LOCAL_RANK`` under
    ``torchrun``, so ``segment --shard auto`` spreads the ranks over the GPUs); ``auto`` only when ONNX Runtime
    has the CUDA provider and a GPU is present, else the CPU.
    """
    import onnxruntime as ort

    spec = str(device).strip().lower()
    kind, _, index = spec.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"unknown device `{device}` for ONNX Runtime; valid: auto, cpu, cuda, cuda:N")
    cuda_ok = "CUDAExecutionProvider" in ort.get_available_providers()
    if kind == "cuda" and not cuda_ok:
        raise ConfigError(
            f"device `{device}` asked for, but this ONNX Runtime has no CUDAExecutionProvider",
            hint="install `onnxruntime-gpu` or use device `cpu`",
        )
    # onnxruntime-gpu lists the CUDA provider even on machines without a GPU: ask torch whether one is there.
    if kind == "cuda" or (kind == "auto" and cuda_ok and _torch_sees_cuda()):
        gpu = int(index) if index else local_rank()
        return [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@functools.cache
def unmap_freed_blocks() -> bool:
    """Have glibc's malloc map every block over 128 KiB on its own and unmap it when freed, for the rest of the
    process; False where the C library is not glibc (then nothing changes).

    glibc raises its mmap threshold (up to 32 MiB) each time a mapped block is freed, so that later blocks of up
    to that size come from the heap, where freed ones stay in the process's RSS in fragments: a sliding window's
    activations then add to the peak instead of being returned. Fixed at its initial value, every freed
    activation goes back to the kernel, at the cost of faulting its pages in again
    (benchmarks/results/cpu-rss-low-memory/). Only the environment (``MALLOC_MMAP_THRESHOLD_``) could set this
    at start-up; ``mallopt`` sets it in a running process.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _LOW_MEMORY_MMAP_THRESHOLD))


def _torch_sees_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def export_model(*args: Any, **kwargs: Any) -> Any:
    """:func:`satseg.export.run.export_model`, imported on first use (it needs torch)."""
    from satseg.export.run import export_model as export

    return export(*args, **kwargs)


class OnnxPredictor:
    """Run an exported ONNX model with ONNX Runtime as a callable ``(B, C, *S) -> (B, K, *S)`` logits.

    A NumPy array in gives a float32 array out (:func:`satseg.inference.tiling.blend_windows`, no torch); a
    tensor, on any device, is copied to the CPU as float32 and the logits come back as a CPU tensor. ONNX
    Runtime runs them on its own provider.

    On the CPU the session plans no memory pattern: from its second run on, ONNX Runtime would allocate one
    block sized for every activation of the graph, which the arena then holds beside its own (two 128^3 windows
    of a U-Net 24-192 peaked at 1,698 MiB with the pattern, 994 without, at the same time;
    benchmarks/results/cpu-rss-low-memory/).

    Args:
        path: the ``.onnx`` file written by :func:`export_onnx`.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see :func:`onnx_providers`).
        sha256: the file's expected SHA-256 (a cached export, whose digest was recorded when satseg wrote it):
            the bytes are checked against it and the metadata is read by ONNX Runtime itself, which spares
            importing ``onnx`` (over a second) to check the graph against its digest.
        low_memory: on the CPU, run without ONNX Runtime's memory arena (which keeps every block it grew by at
            its peak) and return freed blocks to the kernel (:func:`unmap_freed_blocks`, process-wide): the
            lowest peak RSS, where a gated model's smaller activations show, for somewhat slower windows.

    Attributes:
        metadata: the model's ``metadata_props``.
        providers: the ONNX Runtime execution providers in use, in priority order.
        in_channels: ``C`` of the input.
        num_classes: ``K`` of the output.
        spatial_dims: 2 or 3.

    Raises:
        CheckpointError: when the file is missing or ONNX Runtime cannot load it.
        ConfigError: for an unknown device, or ``cuda`` without the CUDA provider.
    """

    def __init__(
        self, path: str | Path, device: str = "auto", sha256: str | None = None, *, low_memory: bool = False
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        model: str | bytes = str(self.path)
        if sha256 is None:
            self.metadata = read_onnx_metadata(self.path)
        else:
            try:
                model = self.path.read_bytes()
            except OSError as err:
                raise CheckpointError(f"cannot read ONNX model `{self.path}`: {err}") from err
            if hashlib.sha256(model).hexdigest() != sha256:
                raise CheckpointError(f"`{self.path}`: changed since satseg recorded its digest")
        providers = onnx_providers(device)
        options = ort.SessionOptions()
        if providers == ["CPUExecutionProvider"]:
            options.enable_mem_pattern = False
            if low_memory:
                options.enable_cpu_mem_arena = False
                unmap_freed_blocks()
        try:
            self.session = ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as err:
            raise CheckpointError(f"ONNX Runtime cannot load `{self.path}`: {err}") from err
        if sha256 is not None:
            self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.providers = self.session.get_providers()
        first = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if first not in self.providers:
            log.warning("ONNX Runtime fell back from %s to %s for `%s`", first, self.providers, self.path)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) not in (4, 5):
            raise CheckpointError(
                f"ONNX model `{self.path}` must have one (B, C, *S) input and one output",
                hint="export it with `satseg export-onnx`",
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.spatial_dims = len(inputs[0].shape) - 2
        self.in_channels = inputs[0].shape[1] if isinstance(inputs[0].shape[1], int) else None
        self.num_classes = outputs[0].shape[1] if isinstance(outputs[0].shape[1], int) else None

    def __call__(self, x: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """Logits ``(B, K, *S)`` (CPU float32) for the input ``(B, C, *S)``: an array for an array, else a tensor."""
        if isinstance(x, np.ndarray):
            (logits,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, np.float32)})
            return logits
        import torch

        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(logits)

    def __repr__(self) -> str:
        return f"OnnxPredictor({str(self.path)!r}, providers={self.providers})"


def cache_dir() -> Path:
    """Where exported models are cached: ``$SATSEG_CACHE``, ``$XDG_CACHE_HOME/satseg`` or ``~/.cache/satseg``."""
    if os.environ.get("SATSEG_CACHE"):
        return Path(os.environ["SATSEG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "satseg"


EXPORT_CODE = ("satseg.nn", "satseg.export")
"""The packages whose source decides what an export computes: the networks, the lean rewrite and the exporter."""


@functools.cache
def export_code_digest(packages: tuple[str, ...] = EXPORT_CODE) -> str:
    """Fingerprint of the source of ``packages``: any edit to the networks, the lean rewrite or the exporter
    changes it, so a cached export is never reused by code that would export something else."""
    digest = hashlib.sha256()
    for package in packages:
        # find_spec locates the package without running it (satseg.nn's __init__ would import torch)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"cannot find the source of package `{package}`")
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _model_digest(net: SegmentationNet, config: dict[str, Any]) -> str:
    """Fingerprint of weights, configuration, the export code and the versions of the tools that export."""
    import onnx
    import torch

    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(f"satseg {__version__} torch {torch.__version__} onnx {onnx.__version__}".encode())
    digest.update(export_code_digest().encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _export_environment() -> str:
    """What, besides a checkpoint's bytes, decides its export: satseg's and the exporting tools' versions (read
    from the installed packages' metadata, without importing them) and the export code's source."""
    versions = []
    for package in ("torch", "onnx"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} missing")
    return f"satseg {__version__} {' '.join(versions)} code {export_code_digest()}"


def _checkpoint_key(checkpoint: Path) -> str:
    """Fingerprint of a checkpoint file's bytes and :func:`_export_environment`: the name of its cache entry."""
    digest = hashlib.sha256(_export_environment().encode())
    with open(checkpoint, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


def _entry_path(checkpoint: Path) -> Path:
    return cache_dir() / "onnx" / "checkpoints" / f"{_checkpoint_key(checkpoint)}.json"


def find_cached_export(checkpoint: str | Path) -> tuple[Path, str] | None:
    """The cached export of ``checkpoint`` and its file's SHA-256, found from the checkpoint's bytes without
    loading it (no torch); None when there is none yet (or its entry is unreadable or names no plain file)."""
    try:
        entry = json.loads(_entry_path(Path(checkpoint)).read_text(encoding="utf-8"))
        name = safe_name(entry["export"], "cached export", "the cache")
        sha256 = entry["sha256"]
    except (OSError, ValueError, KeyError, TypeError, SatsegError):
        return None
    if not (isinstance(sha256, str) and len(sha256) == 64) or not name.endswith(".onnx"):
        return None
    path = cache_dir() / "onnx" / name
    return (path, sha256) if path.is_file() else None


def _record_export(checkpoint: Path, export: Path) -> None:
    """Remember that ``checkpoint`` became ``export`` (see :func:`find_cached_export`); a failure only costs time."""
    try:
        sha256 = hashlib.sha256(export.read_bytes()).hexdigest()
        entry = _entry_path(checkpoint)
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(entry, {"export": export.name, "sha256": sha256, "checkpoint": str(checkpoint)})
    except OSError as err:
        log.info("cannot record the export of `%s` in the cache: %s", checkpoint, err)


def cached_onnx_export(
    net: SegmentationNet, config: dict[str, Any], checkpoint: str | Path | None = None
) -> Path | None:
    """The model's lean ONNX export (parity-checked against PyTorch), made once and kept in :func:`cache_dir`.

    Args:
        checkpoint: the file ``net`` was loaded from: its export is recorded for :func:`find_cached_export`.

    Returns None (PyTorch is used instead, with a log line saying why) when ONNX Runtime is not installed
    or the export, its parity check or the cache folder fails.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    try:
        # The net's name comes from the checkpoint: it becomes part of the file name only if it is a plain name.
        net_name = safe_name(str(config["model"].get("net", "model")), "model name", "the run configuration")
        path = cache_dir() / "onnx" / f"{net_name}-{_model_digest(net, config)}.onnx"
        if not (path.is_file() and onnx_graph_matches(path)):  # an export from before graph digests is made again
            path.parent.mkdir(parents=True, exist_ok=True)
            export_model(net, config, path)  # through the one atomic writer: never a half file in the cache
            log.info("exported the model for ONNX Runtime to `%s` (cached)", path)
    except (OSError, SatsegError) as err:
        log.warning("ONNX export for the CPU failed (%s); segmenting with PyTorch", err)
        return None
    if checkpoint is not None:
        _record_export(Path(checkpoint), path)
    return path
