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
from satseg.engine.checkpoint import check_run_config, load_run
from satseg.engine.distributed import resolve_device
from satseg.engine.inference import check_patch_size, sliding_window_inference
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
        if dims == 3 and min(image.spatial_shape) == 1:
            # A flat picture saved as a one-slice volume: padded to a 3D patch, it takes minutes and means nothing.
            raise DataError(
                f"`{source}`: a single-slice volume (shape {list(image.spatial_shape)}) cannot be segmented by the "
                f"3D model `{self.name}`",
                hint="use a 2D model for 2D pictures, or give the whole volume",
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
    ) -> Segmentation:
        """Segment one scan; the returned images share the input's grid exactly."""
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
        )
        timings["inference_s"] = time.perf_counter() - start
        start = time.perf_counter()
        labels = restore_labels(result.labels.numpy(), props)
        seg = Segmentation(with_array(image, labels[None].astype(np.uint8)), timings=timings)
        if probabilities and result.probabilities is not None:
            probs = restore_probabilities(result.probabilities.numpy(), props)
            seg.probabilities = with_array(image, probs)
        if attention:
            maps = self._attention(array, props, overlap, sw_batch)
            seg.attention = {k: with_array(image, v[None]) for k, v in maps.items()}
        timings["restore_s"] = time.perf_counter() - start
        return seg

    @torch.inference_mode()
    def _attention(
        self, array: np.ndarray, props: dict, overlap: float = 0.5, sw_batch: int = 4
    ) -> dict[str, np.ndarray]:
        """Each attending gate's map, window by window like the segmentation, resampled onto the original grid.

        Windows of the model's patch size keep device memory bounded on any scan (a whole-image forward pass
        of a large CT would not fit); the maps are blended with the same Gaussian weights as the probabilities.
        """
        if self.model is None:
            raise DataError("attention maps need the PyTorch model", hint="use a run folder, not an ONNX file")
        model = self.model.to(self.device).eval()
        gates = [(name, g) for name, g in model.skip_gates() if g.transfers_attention]
        if not gates:
            return {}
        mode = "bilinear" if model.spatial_dims == 2 else "trilinear"

        def maps_of(x: Tensor) -> Tensor:
            """``(B, C, *P) -> (B, 1 + gates, *P)``: a zero channel, then every gate's map at window size."""
            model(x.to(self.device))
            maps = [
                F.interpolate(g.last_attention.float(), size=x.shape[2:], mode=mode, align_corners=False)
                for _, g in gates
            ]
            return torch.cat([torch.zeros_like(maps[0]), *maps], dim=1)

        model.keep_attention(True)
        try:
            result = sliding_window_inference(
                maps_of, torch.from_numpy(array), self.patch, len(gates) + 1, overlap=overlap, sw_batch=sw_batch,
                device=self.device, return_probabilities=True, softmax=False,
            )  # fmt: skip
        finally:
            model.keep_attention(False)
        # restore_probabilities fills channel 0 with 1 and the others with 0 outside the crop box:
        # the leading zero channel makes every attention map 0 there.
        restored = restore_probabilities(result.probabilities.numpy(), props)[1:]
        return {name.replace(".", "_"): m for (name, _), m in zip(gates, restored, strict=True)}


def _torch_predictor(model: torch.nn.Module, device: torch.device) -> Callable[[Tensor], Tensor]:
    model.to(device).eval()
    use_amp = device.type == "cuda"

    def predict(x: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            return model(x.to(device)).float()

    return predict


def _onnx_config(path: Path, metadata: dict[str, str]) -> Any:
    """The run configuration in an ONNX file's metadata, telling "not satseg's" from "damaged"."""
    if ONNX_CONFIG_KEY not in metadata:
        raise CheckpointError(
            f"`{path}`: not exported by satseg (no `{ONNX_CONFIG_KEY}` metadata)",
            hint="export the model with `satseg export-onnx`",
        )
    try:
        return json.loads(metadata[ONNX_CONFIG_KEY])
    except ValueError as err:
        raise CheckpointError(
            f"`{path}`: its `{ONNX_CONFIG_KEY}` metadata is not valid JSON ({err})",
            hint="the file was edited or damaged; export it again with `satseg export-onnx`",
        ) from err


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
        config = check_run_config(_onnx_config(path, predictor.metadata), path)
        check_patch_size(Segmenter(predictor, config, str(model), "onnx", torch_device).patch, path)
        return Segmenter(predictor, config, str(model), "onnx", torch_device)
    net, config = load_run(path)
    check_patch_size(Segmenter(net, config, str(model), "torch", torch_device).patch, path)
    # Windows run through the lean inference module (BN and gate selections folded, no skip concatenation);
    # the reference model is kept for attention maps.
    lean = make_lean(net)
    return Segmenter(_torch_predictor(lean, torch_device), config, str(model), "torch", torch_device, net)
