"""A trained model ready to segment scans: from a run folder, a checkpoint, an ONNX file or a shipped name.

:class:`Segmenter` applies the model's own preprocessing (its training plan), runs sliding-window
inference, and maps the prediction back onto the input's exact grid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from satseg.data.io import Image, with_array
from satseg.data.preprocess import preprocess_image, restore_labels, restore_probabilities
from satseg.engine.checkpoint import load_run
from satseg.engine.distributed import resolve_device
from satseg.engine.inference import sliding_window_inference, throughput_tile
from satseg.engine.params import LiveTensorBytes
from satseg.engine.zoo import resolve_model_path
from satseg.errors import CheckpointError, ConfigError, DataError, look_up_option
from satseg.nn import SegmentationNet, build_model
from satseg.nn.lean import make_lean

__all__ = ["Segmenter", "Segmentation", "load_segmenter", "BACKENDS", "TILES"]

BACKENDS = ("torch", "onnx")
TILES = ("auto", "patch")
"""Window choices besides explicit sides: ``auto`` (CPU: :func:`throughput_tile`; GPU: the training patch)."""
ONNX_CONFIG_KEY = "satseg_config"
"""ONNX metadata key holding the run configuration (model, plan) as JSON."""

log = logging.getLogger(__name__)

_CPU_WINDOW_BYTES = 4 * 2**30  # one CPU window's forward may take this much memory …
_CPU_MEMORY_SHARE = 0.25  # … and at most this share of the memory available now
_WINDOW_SLACK = 1.5  # allocator slack and ONNX Runtime's arena over the live tensors torch counts


def _available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as info:
            return next(int(line.split()[1]) * 1024 for line in info if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


@dataclass
class Segmentation:
    """One segmented scan: labels on the input grid, optional probabilities and attention maps."""

    labels: Image
    probabilities: Image | None = None
    attention: dict[str, Image] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    window: tuple[int, ...] = ()
    """The sliding window used, on the model's grid."""


@dataclass
class Segmenter:
    """A model plus everything needed to apply it to a scan.

    Attributes:
        predict: ``Tensor (B, C, *P) -> logits (B, K, *P)``.
        config: the run configuration (``model``, ``plan``, ``train``).
        name: where the model came from (run folder, file or shipped name).
        backend: ``torch`` or ``onnx``.
        device: where windows run.
        model: the torch module (``None`` for ONNX), needed for attention maps.
    """

    predict: Callable[[Tensor], Tensor]
    config: dict[str, Any]
    name: str
    backend: str
    device: torch.device
    model: SegmentationNet | None = None

    @property
    def plan(self) -> dict[str, Any]:
        return self.config["plan"]

    @property
    def labels(self) -> dict[str, int]:
        return dict(self.plan["labels"])

    @property
    def patch(self) -> tuple[int, ...]:
        train = self.config.get("train", {})
        return tuple(train.get("patch") or self.plan["patch_size"])

    def reference_model(self) -> SegmentationNet:
        """The torch model; for an ONNX file one rebuilt, untrained, from its configuration (for its input
        divisor and memory only: never for predictions, so ``model`` stays None)."""
        if self.model is not None:
            return self.model
        if "_shape_model" not in self.__dict__:
            self.__dict__["_shape_model"] = build_model(**self.config["model"]).eval()
        return self.__dict__["_shape_model"]

    def window_bytes_per_voxel(self) -> float:
        """Bytes one window's forward needs per voxel: the lean model's peak of live tensors on a small
        window (activations scale with the voxels), plus the window, its softmax and its weighted copy."""
        if "_voxel_bytes" not in self.__dict__:
            model = self.reference_model()
            lean = make_lean(model).cpu()
            side = max(16, 2 * model.input_divisor)
            x = torch.zeros(1, model.in_channels, *[side] * model.spatial_dims)
            tracker = LiveTensorBytes()
            with torch.no_grad(), tracker:
                lean(x)
            extra = 4 * (2 * model.out_channels + model.in_channels)
            self.__dict__["_voxel_bytes"] = tracker.peak / side**model.spatial_dims + extra
        return self.__dict__["_voxel_bytes"]

    def window(
        self, shape: Sequence[int], tile: str | Sequence[int] = "auto", overlap: float = 0.5, sw_batch: int = 4
    ) -> tuple[tuple[int, ...], int]:
        """Window sides and windows per forward for a preprocessed scan of spatial ``shape``.

        ``auto`` on the CPU picks :func:`throughput_tile` (the whole scan when its forward fits in
        ``_CPU_WINDOW_BYTES`` and a quarter of the available memory, else the fewest windows that fit) and one
        window per forward: large windows keep the cores busy, batching them would only multiply memory.
        ``auto`` on a GPU and ``patch`` use the training patch; explicit sides are checked against the net.

        Raises:
            ConfigError: unknown ``tile``, or sides of the wrong count or not divisible by the net's divisor.
        """
        if isinstance(tile, str):
            tile = look_up_option(tile, TILES, "tile")
            if tile == "patch" or self.device.type != "cpu":
                return self.patch, sw_batch
            budget = _CPU_WINDOW_BYTES
            available = _available_memory()
            if available is not None:
                budget = min(budget, int(available * _CPU_MEMORY_SHARE))
            max_voxels = int(budget / (self.window_bytes_per_voxel() * _WINDOW_SLACK))
            divisor = self.reference_model().input_divisor
            return throughput_tile(shape, self.patch, divisor, overlap, max_voxels), 1
        sides = tuple(int(t) for t in tile)
        divisor = self.reference_model().input_divisor
        if len(sides) != len(shape) or any(t < 1 or t % divisor for t in sides):
            raise ConfigError(
                f"tile {'x'.join(map(str, sides))} does not fit model `{self.name}`",
                hint=f"give {len(shape)} sides, each a multiple of {divisor}, or auto / patch",
            )
        return sides, sw_batch

    def check_image(self, image: Image, source: str | Path) -> None:
        """Raise DataError (naming ``source``) when the image's dimensionality or channels do not fit."""
        dims, channels = int(self.plan["spatial_dims"]), int(self.plan["num_channels"])
        if image.spatial_dims != dims or image.num_channels != channels:
            raise DataError(
                f"`{source}`: a {image.spatial_dims}D image with {image.num_channels} channel(s) does not fit "
                f"model `{self.name}`, which takes {dims}D images with {channels} channel(s)"
            )

    def segment(
        self,
        image: Image,
        *,
        overlap: float = 0.5,
        sw_batch: int = 4,
        tta: bool = False,
        probabilities: bool = False,
        attention: bool = False,
        tile: str | Sequence[int] = "auto",
        source: str | Path = "image",
    ) -> Segmentation:
        """Segment one scan; the returned images share the input's grid exactly.

        ``tile``: the sliding window, see :meth:`window`.
        """
        self.check_image(image, source)
        timings = {}
        start = time.perf_counter()
        array, props = preprocess_image(image, self.plan)
        timings["preprocess_s"] = time.perf_counter() - start
        start = time.perf_counter()
        window, sw_batch = self.window(array.shape[1:], tile, overlap, sw_batch)
        result = sliding_window_inference(
            self.predict,
            torch.from_numpy(array),
            window,
            len(self.labels),
            overlap=overlap,
            sw_batch=sw_batch,
            device=self.device,
            tta=tta,
            return_probabilities=probabilities,
        )
        timings["inference_s"] = time.perf_counter() - start
        start = time.perf_counter()
        labels = restore_labels(result.labels.numpy(), props)
        seg = Segmentation(with_array(image, labels[None].astype(np.uint8)), timings=timings, window=window)
        if probabilities and result.probabilities is not None:
            probs = restore_probabilities(result.probabilities.numpy(), props)
            seg.probabilities = with_array(image, probs)
        if attention:
            seg.attention = {k: with_array(image, v[None]) for k, v in self._attention(array, props).items()}
        timings["restore_s"] = time.perf_counter() - start
        return seg

    @torch.inference_mode()
    def _attention(self, array: np.ndarray, props: dict) -> dict[str, np.ndarray]:
        """Each attending gate's map from one whole-image forward, resampled onto the original grid."""
        if self.model is None:
            raise DataError("attention maps need the PyTorch model", hint="use a run folder, not an ONNX file")
        model = self.model.to(self.device).eval()
        gates = [(name, g) for name, g in model.skip_gates() if g.transfers_attention]
        if not gates:
            return {}
        shape = array.shape[1:]
        padded = [-(-s // model.input_divisor) * model.input_divisor for s in shape]
        pad = [p for s, t in zip(reversed(shape), reversed(padded), strict=True) for p in (0, t - s)]
        x = F.pad(torch.from_numpy(array)[None], pad).to(self.device)
        model.keep_attention(True)
        try:
            model(x)
            maps = []
            for _, gate in gates:
                mode = "bilinear" if model.spatial_dims == 2 else "trilinear"
                up = F.interpolate(gate.last_attention.float(), size=padded, mode=mode, align_corners=False)
                maps.append(up[0, 0][tuple(slice(0, s) for s in shape)].cpu().numpy())
        finally:
            model.keep_attention(False)
        # restore_probabilities fills channel 0 with 1 and the others with 0 outside the crop box:
        # a leading dummy channel makes every attention map 0 there.
        stacked = np.stack([np.zeros_like(maps[0]), *maps])
        restored = restore_probabilities(stacked, props)[1:]
        return {name.replace(".", "_"): m for (name, _), m in zip(gates, restored, strict=True)}


def _torch_predictor(model: torch.nn.Module, device: torch.device) -> Callable[[Tensor], Tensor]:
    model.to(device).eval()
    use_amp = device.type == "cuda"

    def predict(x: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            return model(x.to(device)).float()

    return predict


def load_segmenter(model: str | Path, *, device: str = "auto", backend: str | None = None) -> Segmenter:
    """Load a model for segmentation.

    Args:
        model: a run folder, a ``.pt`` checkpoint, an exported ``.onnx`` file, or a shipped model name
            (see ``satseg models``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        backend: ``torch`` or ``onnx``; default: ``onnx`` for ``.onnx`` files and, on the CPU, for run folders,
            checkpoints and shipped models too (their lean form exported once to :func:`cache_dir`, falling back
            to ``torch`` when ONNX Runtime is missing or the export fails); ``torch`` on GPUs.
    """
    path = resolve_model_path(model)
    backend_given = backend
    backend = look_up_option(backend or ("onnx" if path.suffix == ".onnx" else "torch"), BACKENDS, "backend")
    # Under torchrun (e.g. `segment --shard auto`) each process takes its own GPU.
    torch_device = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if backend == "onnx":
        if path.suffix != ".onnx":
            raise CheckpointError(
                f"`{path}`: --backend onnx needs an exported model",
                hint=f"run `satseg export-onnx {path} -o model.onnx`",
            )
        from satseg.engine.onnx_export import OnnxPredictor

        predictor = OnnxPredictor(path, device=device)
        try:
            config = json.loads(predictor.metadata[ONNX_CONFIG_KEY])
        except (KeyError, json.JSONDecodeError) as err:
            raise CheckpointError(f"`{path}`: not exported by satseg (no `{ONNX_CONFIG_KEY}` metadata)") from err
        return Segmenter(predictor, config, str(model), "onnx", torch_device)
    net, config = load_run(path)
    if backend_given is None and torch_device.type == "cpu":
        # On the CPU ONNX Runtime runs the lean model faster than PyTorch (benchmarks/results/cpu-segment.md):
        # export it once per model to the cache; any failure falls back to PyTorch.
        onnx_path = cached_onnx_export(net, config)
        if onnx_path is not None:
            from satseg.engine.onnx_export import OnnxPredictor

            predictor = OnnxPredictor(onnx_path, device="cpu")
            return Segmenter(predictor, config, str(model), "onnx", torch_device, net)
    # Windows run through the lean inference module (BN and gate selections folded, no skip concatenation);
    # the reference model is kept for attention maps.
    lean = make_lean(net)
    return Segmenter(_torch_predictor(lean, torch_device), config, str(model), "torch", torch_device, net)


def cache_dir() -> Path:
    """Where exported models are cached: ``$SATSEG_CACHE``, ``$XDG_CACHE_HOME/satseg`` or ``~/.cache/satseg``."""
    if os.environ.get("SATSEG_CACHE"):
        return Path(os.environ["SATSEG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "satseg"


def _model_digest(net: SegmentationNet, config: dict[str, Any]) -> str:
    """Fingerprint of weights, configuration and the versions that shape the export."""
    from satseg import __version__

    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(f"satseg {__version__} torch {torch.__version__}".encode())
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
    path = cache_dir() / "onnx" / f"{config['model'].get('net', 'model')}-{_model_digest(net, config)}.onnx"
    if path.is_file():
        return path
    from satseg.engine.export import export_model

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        export_model(net, config, path)
    except (OSError, CheckpointError, ConfigError) as err:
        log.warning("ONNX export for the CPU failed (%s); segmenting with PyTorch", err)
        return None
    log.info("exported the model for ONNX Runtime to `%s` (cached)", path)
    return path
