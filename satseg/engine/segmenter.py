"""A trained model ready to segment scans: from a run folder, a checkpoint, an ONNX file or a shipped name.

:class:`Segmenter` applies the model's own preprocessing (its training plan), runs sliding-window
inference, and maps the prediction back onto the input's exact grid.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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
from satseg.engine.inference import sliding_window_inference
from satseg.engine.zoo import resolve_model_path
from satseg.errors import CheckpointError, DataError, look_up_option
from satseg.nn import SegmentationNet
from satseg.nn.lean import make_lean

__all__ = ["Segmenter", "Segmentation", "load_segmenter", "BACKENDS"]

BACKENDS = ("torch", "onnx")
ONNX_CONFIG_KEY = "satseg_config"
"""ONNX metadata key holding the run configuration (model, plan) as JSON."""


@dataclass
class Segmentation:
    """One segmented scan: labels on the input grid, optional probabilities and attention maps."""

    labels: Image
    probabilities: Image | None = None
    attention: dict[str, Image] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


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
        source: str | Path = "image",
        progress: Callable[[int, int], None] | None = None,
    ) -> Segmentation:
        """Segment one scan; the returned images share the input's grid exactly.

        ``progress(done, total)`` is called with the sliding windows predicted so far.
        """
        self.check_image(image, source)
        timings = {}
        start = time.perf_counter()
        array, props = preprocess_image(image, self.plan)
        timings["preprocess_s"] = time.perf_counter() - start
        start = time.perf_counter()
        result = sliding_window_inference(
            self.predict,
            torch.from_numpy(array),
            self.patch,
            len(self.labels),
            overlap=overlap,
            sw_batch=sw_batch,
            device=self.device,
            tta=tta,
            return_probabilities=probabilities,
            progress=progress,
        )
        timings["inference_s"] = time.perf_counter() - start
        start = time.perf_counter()
        labels = restore_labels(result.labels.numpy(), props)
        seg = Segmentation(with_array(image, labels[None].astype(np.uint8)), timings=timings)
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
        backend: ``torch`` or ``onnx``; default: ``onnx`` for ``.onnx`` files, else ``torch``.
    """
    path = resolve_model_path(model)
    backend = look_up_option(backend or ("onnx" if path.suffix == ".onnx" else "torch"), BACKENDS, "backend")
    torch_device = resolve_device(device)
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
    # Windows run through the lean inference module (BN and gate selections folded, no skip concatenation);
    # the reference model is kept for attention maps.
    lean = make_lean(net)
    return Segmenter(_torch_predictor(lean, torch_device), config, str(model), "torch", torch_device, net)
