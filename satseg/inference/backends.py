"""The backends that run a model on one window: PyTorch (the lean module) and ONNX Runtime.

Each backend is a predictor, a callable ``(B, C, *S) -> logits (B, K, *S)`` that
:func:`satseg.inference.sliding_window.sliding_window_inference` runs on every window. On the CPU a
checkpoint is exported once to ONNX (:func:`cached_onnx_export`) and run with ONNX Runtime, which is faster.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from satseg import __version__
from satseg.device import local_rank
from satseg.errors import CheckpointError, ConfigError, SatsegError
from satseg.export.metadata import onnx_graph_matches, read_onnx_metadata
from satseg.export.run import export_model
from satseg.nn import SegmentationNet
from satseg.paths import safe_name

__all__ = ["BACKENDS", "torch_predictor", "OnnxPredictor", "onnx_providers", "cache_dir", "cached_onnx_export"]

BACKENDS = ("torch", "onnx")

log = logging.getLogger(__name__)


def torch_predictor(model: torch.nn.Module, device: torch.device) -> Callable[[Tensor], Tensor]:
    # No autocast here: sliding_window_inference autocasts to the run's own dtype (Segmenter.amp_dtype).
    model.to(device).eval()

    def predict(x: Tensor) -> Tensor:
        return model(x.to(device)).float()

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
    if kind == "cuda" or (kind == "auto" and cuda_ok and torch.cuda.is_available()):
        gpu = int(index) if index else local_rank()
        return [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxPredictor:
    """Run an exported ONNX model with ONNX Runtime as a callable ``(B, C, *S) -> (B, K, *S)`` logits.

    Inputs may live on any device; they are copied to the CPU as float32 for ONNX Runtime, which runs
    them on its own provider, and the logits come back as a CPU tensor.

    Args:
        path: the ``.onnx`` file written by :func:`export_onnx`.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see :func:`onnx_providers`).

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

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        providers = onnx_providers(device)
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as err:
            raise CheckpointError(f"ONNX Runtime cannot load `{self.path}`: {err}") from err
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

    def __call__(self, x: Tensor) -> Tensor:
        """Logits ``(B, K, *S)`` (CPU float32) for the input ``(B, C, *S)``."""
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
        root = Path(importlib.import_module(package).__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _model_digest(net: SegmentationNet, config: dict[str, Any]) -> str:
    """Fingerprint of weights, configuration, the export code and the versions of the tools that export."""
    import onnx

    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(f"satseg {__version__} torch {torch.__version__} onnx {onnx.__version__}".encode())
    digest.update(export_code_digest().encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def cached_onnx_export(net: SegmentationNet, config: dict[str, Any]) -> Path | None:
    """The model's lean ONNX export (parity-checked against PyTorch), made once and kept in :func:`cache_dir`.

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
        if path.is_file() and onnx_graph_matches(path):  # an export from before graph digests is made again
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        export_model(net, config, path)  # written through the one atomic writer: never a half file in the cache
    except (OSError, SatsegError) as err:
        log.warning("ONNX export for the CPU failed (%s); segmenting with PyTorch", err)
        return None
    log.info("exported the model for ONNX Runtime to `%s` (cached)", path)
    return path
