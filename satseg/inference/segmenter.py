"""A trained model ready to segment scans: from a run folder, a checkpoint, an ONNX file or a shipped name.

:class:`Segmenter` applies the model's own preprocessing (its training plan), runs sliding-window
inference, and maps the prediction back onto the input's exact grid: the class probabilities are
resampled (linear) and the argmax is taken there. Several models (e.g. the runs of every fold) make one
ensemble that averages their probabilities; the largest-connected-component post-processing a run
records (``satseg postprocess``) is applied to the labels.

A single checkpoint on the CPU runs through its cached ONNX export; once that export exists,
:func:`load_segmenter` finds it from the checkpoint's bytes and the whole ``segment`` runs on NumPy, SciPy,
SimpleITK and ONNX Runtime without importing torch (seconds of start-up). torch is therefore imported in
this module only where it is used: the PyTorch backend, ensembles, attention maps.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from satseg.atomic import atomic_write_json
from satseg.data.io import Image, with_array
from satseg.data.preprocess import preprocess_image, restore_argmax, restore_probabilities
from satseg.device import autocast_dtype, autocasts, resolve_device, surely_cpu
from satseg.errors import CheckpointError, ConfigError, DataError, look_up_option
from satseg.export.metadata import onnx_input_divisor, onnx_run_config
from satseg.inference.backends import (
    BACKENDS,
    OnnxPredictor,
    cached_onnx_export,
    find_cached_export,
    torch_predictor,
    unmap_freed_blocks,
)
from satseg.inference.postprocess import keep_largest_components, read_lcc
from satseg.inference.tiling import blend_windows, throughput_tile
from satseg.runs import BEST, LAST, MAX_PATCH_VOXELS, check_patch_size, check_run_config, checkpoint_file, load_run
from satseg.zoo import resolve_model_path

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from satseg.nn import SegmentationNet

__all__ = ["Segmenter", "Segmentation", "load_segmenter", "ensemble", "expand_models", "BACKENDS", "TILES"]

TILES = ("auto", "patch")
"""Window choices besides explicit sides: ``auto`` (CPU: :func:`throughput_tile`; GPU: the training patch)."""

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
    """One segmented scan: labels on the input grid, optional probabilities and attention maps.

    ``lcc`` names the classes reduced to their largest connected component.
    """

    labels: Image
    probabilities: Image | None = None
    attention: dict[str, Image] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    window: tuple[int, ...] = ()
    """The sliding window used, on the model's grid."""
    lcc: list[str] = field(default_factory=list)


@dataclass
class Segmenter:
    """A model plus everything needed to apply it to a scan.

    Attributes:
        predict: ``Tensor (B, C, *P) -> logits (B, K, *P)``.
        config: the run configuration (``model``, ``plan``, ``train``).
        name: where the model came from (run folder, file or shipped name).
        backend: ``torch`` or ``onnx``.
        device: where windows run: a ``torch.device``, or ``"cpu"`` for a cached export loaded without torch.
        model: the torch module (``None`` for ONNX files and ensembles, and for a cached export loaded without
            torch, whose ``checkpoint`` is loaded when attention maps ask for it).
        lcc: classes whose largest connected component alone is kept, as the run records it.
        members: how many models are averaged (1 unless an :func:`ensemble`).
        parts: the ensemble's members.
        amp: ``--amp``/``--no-amp`` for this job (None: the run's own setting, see :mod:`satseg.device`).
    """

    predict: Callable[[Tensor], Tensor]
    config: dict[str, Any]
    name: str
    backend: str
    device: torch.device | str
    model: SegmentationNet | None = None
    lcc: list[str] = field(default_factory=list)
    members: int = 1
    parts: list[Segmenter] = field(default_factory=list)
    """An :func:`ensemble`'s members (empty for one model): the window must suit each of them."""
    amp: bool | None = None
    voxel_bytes_file: Path | None = None
    """Where :meth:`window_bytes_per_voxel` is kept between processes (beside the cached CPU export): measuring
    it imports ``torch._dynamo`` (the dispatch mode's first use), which costs seconds of every ``segment``."""
    checkpoint: Path | None = None
    """The checkpoint file behind a cached export loaded without torch: :attr:`model` is loaded from it on demand."""
    divisor: int | None = None
    """The network's input divisor when known without torch (recorded in the export's metadata)."""

    @property
    def device_type(self) -> str:
        """``cpu`` or ``cuda``: where windows run."""
        return self.device if isinstance(self.device, str) else self.device.type

    @property
    def plan(self) -> dict[str, Any]:
        return self.config["plan"]

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The dtype windows run in on this device (None: float32): the run's, unless ``amp`` overrides it.

        ONNX Runtime runs the float32 export, so always None there.
        """
        if self.backend == "onnx":
            return None
        return autocast_dtype(self.device, self.config.get("train"), self.amp)

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
            from satseg.nn import build_model

            self.__dict__["_shape_model"] = build_model(**self.config["model"]).eval()
        return self.__dict__["_shape_model"]

    def torch_model(self) -> SegmentationNet | None:
        """The trained torch module: :attr:`model`, or loaded from :attr:`checkpoint` the first time it is asked for."""
        if self.model is None and self.checkpoint is not None:
            self.model = load_run(self.checkpoint)[0]
        return self.model

    def input_divisor(self) -> int:
        """Every window side must be a multiple of this (for an ensemble: of every member's divisor)."""
        if self.parts:
            return math.lcm(*(part.input_divisor() for part in self.parts))
        if self.divisor is not None:
            return self.divisor
        return self.reference_model().input_divisor

    def window_bytes_per_voxel(self) -> float:
        """Bytes one window's forward needs per voxel: the lean model's peak of live tensors on a small
        window (activations scale with the voxels), plus the window, its softmax and its weighted copy.

        An ensemble runs its members one after the other: the largest member's peak, plus the members'
        log-probabilities it stacks."""
        if "_voxel_bytes" not in self.__dict__ and self.voxel_bytes_file is not None:
            self.__dict__["_voxel_bytes"] = _read_voxel_bytes(self.voxel_bytes_file)
        if self.__dict__.get("_voxel_bytes") is None:
            if self.parts:
                stacked = 4 * len(self.labels) * (len(self.parts) + 1)
                voxel_bytes = max(part.window_bytes_per_voxel() for part in self.parts) + stacked
            else:
                import torch

                from satseg.nn.lean import make_lean
                from satseg.nn.params import LiveTensorBytes

                model = self.reference_model()
                lean = make_lean(model).cpu()
                side = max(16, 2 * model.input_divisor)
                x = torch.zeros(1, model.in_channels, *[side] * model.spatial_dims)
                tracker = LiveTensorBytes()
                with torch.no_grad(), tracker:
                    lean(x)
                extra = 4 * (2 * model.out_channels + model.in_channels)
                voxel_bytes = tracker.peak / side**model.spatial_dims + extra
            self.__dict__["_voxel_bytes"] = voxel_bytes
            if self.voxel_bytes_file is not None:
                try:
                    atomic_write_json(self.voxel_bytes_file, {"window_bytes_per_voxel": voxel_bytes})
                except OSError as err:  # a cache that cannot be written only costs time
                    log.info("cannot cache the window memory in `%s`: %s", self.voxel_bytes_file, err)
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
            if tile == "patch" or self.device_type != "cpu":
                return self.patch, sw_batch
            budget = _CPU_WINDOW_BYTES
            available = _available_memory()
            if available is not None:
                budget = min(budget, int(available * _CPU_MEMORY_SHARE))
            max_voxels = int(budget / (self.window_bytes_per_voxel() * _WINDOW_SLACK))
            max_voxels = min(max_voxels, MAX_PATCH_VOXELS)  # satseg's bound on any window
            return throughput_tile(shape, self.patch, self.input_divisor(), overlap, max_voxels), 1
        sides = tuple(int(t) for t in tile)
        divisor = self.input_divisor()
        if len(sides) != len(shape) or any(t < 1 or t % divisor for t in sides):
            raise ConfigError(
                f"tile {'x'.join(map(str, sides))} does not fit model `{self.name}`",
                hint=f"give {len(shape)} sides, each a multiple of {divisor}, or auto / patch",
            )
        return check_patch_size(sides, "--tile"), sw_batch

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
        tile: str | Sequence[int] = "auto",
        source: str | Path = "image",
        lcc: bool | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Segmentation:
        """Segment one scan; the returned images share the input's grid exactly.

        Args:
            tile: the sliding window, see :meth:`window`.
            lcc: keep only the largest connected component of every class (True), of none (False), or of
                the classes the run records (None, the default).
            progress: called as ``progress(done, total)`` with the sliding windows predicted so far.
        """
        self.check_image(image, source)
        timings = {}
        start = time.perf_counter()
        array, props = preprocess_image(image, self.plan)
        timings["preprocess_s"] = time.perf_counter() - start
        start = time.perf_counter()
        window, sw_batch = self.window(array.shape[1:], tile, overlap, sw_batch)
        if isinstance(self.predict, OnnxPredictor):
            # ONNX Runtime takes and gives arrays: the windows are blended in NumPy, with no torch to import.
            grid_probs = blend_windows(
                self.predict, array, window, len(self.labels), overlap=overlap, sw_batch=sw_batch, tta=tta,
                progress=progress,
            )  # fmt: skip
        else:
            import torch

            from satseg.inference.sliding_window import sliding_window_inference

            result = sliding_window_inference(
                self.predict,
                torch.from_numpy(array),
                window,
                len(self.labels),
                overlap=overlap,
                sw_batch=sw_batch,
                device=self.device,
                amp_dtype=self.amp_dtype,
                tta=tta,
                return_probabilities=True,  # the argmax is taken on the input's grid (restore_argmax)
                progress=progress,
            )
            grid_probs = result.probabilities.numpy()
        timings["inference_s"] = time.perf_counter() - start
        start = time.perf_counter()
        labels = restore_argmax(grid_probs, props)
        classes = self._lcc_classes(lcc)
        labels = keep_largest_components(labels, [self.labels[name] for name in classes])
        seg = Segmentation(with_array(image, labels[None]), timings=timings, window=window, lcc=classes)
        if probabilities:
            seg.probabilities = with_array(image, restore_probabilities(grid_probs, props))
        if attention:
            maps = self._attention(array, props, overlap, sw_batch)
            seg.attention = {k: with_array(image, v[None]) for k, v in maps.items()}
        timings["restore_s"] = time.perf_counter() - start
        return seg

    def _lcc_classes(self, lcc: bool | None) -> list[str]:
        if lcc is None:
            return list(self.lcc)
        return [name for name, value in self.labels.items() if value != 0] if lcc else []

    def _attention(
        self, array: np.ndarray, props: dict, overlap: float = 0.5, sw_batch: int = 4
    ) -> dict[str, np.ndarray]:
        """Each attending gate's map, window by window like the segmentation, resampled onto the original grid.

        Windows of the model's patch size keep device memory bounded on any scan (a whole-image forward pass
        of a large CT would not fit); the maps are blended with the same Gaussian weights as the probabilities.
        """
        import torch

        with torch.inference_mode():
            return self._attention_maps(array, props, overlap, sw_batch)

    def _attention_maps(self, array: np.ndarray, props: dict, overlap: float, sw_batch: int) -> dict[str, np.ndarray]:
        import torch
        from torch.nn import functional as F

        from satseg.inference.sliding_window import sliding_window_inference
        from satseg.nn.layers import interpolation_mode

        if self.torch_model() is None:
            raise DataError(
                "attention maps need one PyTorch model", hint="use one run folder, not an ONNX file or an ensemble"
            )
        model = self.model.to(self.device).eval()
        gates = [(name, g) for name, g in model.skip_gates() if g.transfers_attention]
        if not gates:
            return {}
        mode = interpolation_mode(model.spatial_dims)

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
            # The windows run in the run's own autocast dtype, as its segmentation does.
            result = sliding_window_inference(
                maps_of, torch.from_numpy(array), self.patch, len(gates) + 1, overlap=overlap, sw_batch=sw_batch,
                device=self.device, amp_dtype=self.amp_dtype, return_probabilities=True, softmax=False,
            )  # fmt: skip
        finally:
            model.keep_attention(False)
        # restore_probabilities fills channel 0 with 1 and the others with 0 outside the crop box:
        # the leading zero channel makes every attention map 0 there.
        restored = restore_probabilities(result.probabilities.numpy(), props)[1:]
        return {name.replace(".", "_"): m for (name, _), m in zip(gates, restored, strict=True)}


def _read_voxel_bytes(path: Path) -> float | None:
    """The cached bytes per window voxel, or None when the file is missing or does not hold a positive number."""
    try:
        value = json.loads(path.read_text())["window_bytes_per_voxel"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


# What must agree for several models to share one preprocessing of the scan and one set of classes.
_PREPROCESSING_KEYS = ("spatial_dims", "num_channels", "labels", "spacing", "size", "normalization")


def expand_models(models: str | Path | Sequence[str | Path]) -> list[str | Path]:
    """The models named: a folder holding run folders (e.g. ``fold_0`` … ``fold_4``) stands for those runs."""
    items = [models] if isinstance(models, (str, Path)) else list(models)
    found: list[str | Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir() and not any((path / name).is_file() for name in (BEST, LAST)):
            runs = sorted(d for d in path.iterdir() if d.is_dir() and any((d / n).is_file() for n in (BEST, LAST)))
            if runs:
                found += runs
                continue
        found.append(item)
    if not found:
        raise ConfigError("no model given")
    return found


def ensemble(members: Sequence[Segmenter], name: str | None = None) -> Segmenter:
    """One segmenter averaging the members' softmax probabilities (each window, each mirroring).

    The members must share the preprocessing and classes (e.g. the fold runs of one preprocessed
    folder). The ensemble's predictor returns ``log(mean_m softmax(logits_m))``, whose softmax is exactly
    the mean probability, so sliding windows, test-time mirroring and the return to the scan work as for
    one model. A class is post-processed (largest component) when every member records it.

    Raises:
        ConfigError: members preprocess differently or predict other classes.
    """
    first = members[0]
    if len(members) == 1:
        return first
    for other in members[1:]:
        differs = [k for k in _PREPROCESSING_KEYS if first.plan.get(k) != other.plan.get(k)]
        if differs:
            raise ConfigError(
                f"`{other.name}` and `{first.name}` cannot be averaged: their plans differ in {', '.join(differs)}",
                hint="ensemble runs trained on the same preprocessed folder",
            )
    predictors = [m.predict for m in members]
    log_count = math.log(len(predictors))

    def predict(x: Tensor) -> Tensor:
        import torch

        logs = torch.stack([torch.log_softmax(p(x).float(), dim=1) for p in predictors])
        return torch.logsumexp(logs, dim=0) - log_count

    lcc = [c for c in first.lcc if all(c in m.lcc for m in members)]
    label = name or " + ".join(m.name for m in members)
    backend = first.backend if all(m.backend == first.backend for m in members) else "mixed"
    return Segmenter(
        predict, first.config, label, backend, first.device, None, lcc, len(members), list(members), first.amp
    )


def load_segmenter(
    model: str | Path | Sequence[str | Path],
    *,
    device: str = "auto",
    backend: str | None = None,
    amp: bool | None = None,
    low_memory: bool = False,
) -> Segmenter:
    """Load a model, or several as one :func:`ensemble`, for segmentation.

    Args:
        model: a run folder, a ``.pt`` checkpoint, an exported ``.onnx`` file, a shipped model name
            (see ``satseg models``), a folder of run folders (one per fold), or a list of these.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        backend: ``torch`` or ``onnx``; default: ``onnx`` for ``.onnx`` files and, on the CPU, for a single run
            folder, checkpoint or shipped model too (its lean form exported once to :func:`cache_dir`, falling
            back to ``torch`` when ONNX Runtime is missing or the export fails); ``torch`` on GPUs and for
            the members of an ensemble (see the comment below), and wherever the windows autocast (the export
            is float32).
        amp: ``True``: autocast to the run's ``amp_dtype`` on any device (the CPU too); ``False``: float32;
            None: the run's own setting (see :mod:`satseg.device`).
        low_memory: on the CPU, the lowest peak RSS for somewhat slower windows: ONNX Runtime without its
            memory arena (:class:`OnnxPredictor`), and freed blocks returned to the kernel for the rest of the
            process (:func:`unmap_freed_blocks`; PyTorch's windows gain a little from it too, ~4 %).

    Raises:
        ConfigError: ``amp=True`` with ``backend="onnx"`` (ONNX Runtime runs the float32 export).
    """
    if amp and backend == "onnx":
        raise ConfigError("--amp autocasts PyTorch; ONNX Runtime runs the float32 export", hint="use --backend torch")
    models = expand_models(model)
    if len(models) > 1:
        # An ensemble runs on PyTorch unless --backend onnx or --low-memory says otherwise: torch frees each
        # member's activations before the next member runs, whereas every ONNX Runtime session keeps its own
        # memory arena at its peak, so N sessions on the large CPU windows would need about N times the memory.
        # Without the arena (low_memory) a session returns its activations after each window as torch does.
        name = str(model) if isinstance(model, (str, Path)) else None
        members = [_load_one(m, device, backend, amp, low_memory, cpu_onnx=low_memory) for m in models]
        return ensemble(members, name)
    return _load_one(models[0], device, backend, amp, low_memory)


def _check_onnx_shape(predictor: OnnxPredictor, config: dict, path: Path) -> None:
    """The graph takes the plan's channels and dimensions and gives one logit per label (a structural check)."""
    plan = config["plan"]
    expected = (int(plan["num_channels"]), len(plan["labels"]), int(plan["spatial_dims"]))
    found = (predictor.in_channels, predictor.num_classes, predictor.spatial_dims)
    if any(isinstance(f, int) and f != e for f, e in zip(found, expected, strict=True)):
        raise CheckpointError(
            f"`{path}`: its graph takes {found[0]} channel(s) in {found[2]}D and gives {found[1]} class(es), but its "
            f"metadata describes {expected[0]} channel(s) in {expected[2]}D and {expected[1]} classes",
            hint="export the model again with `satseg export-onnx`",
        )


def _load_one(
    model: str | Path,
    device: str,
    backend: str | None,
    amp: bool | None,
    low_memory: bool = False,
    cpu_onnx: bool = True,
) -> Segmenter:
    """One model; ``cpu_onnx``: with no ``backend`` given, run a checkpoint on the CPU through its cached
    ONNX export (see :func:`load_segmenter`)."""
    path = resolve_model_path(model)
    if backend is None and cpu_onnx and path.suffix != ".onnx" and amp is not True and surely_cpu(device):
        warm = _load_cached_export(model, path, amp, low_memory)
        if warm is not None:
            return warm
    backend_given = backend
    backend = look_up_option(backend or ("onnx" if path.suffix == ".onnx" else "torch"), BACKENDS, "backend")
    # Under torchrun (e.g. `segment --shard auto`) each process takes its own GPU (its LOCAL_RANK).
    torch_device = resolve_device(device)
    if backend == "onnx":
        if path.suffix != ".onnx":
            raise CheckpointError(
                f"`{path}`: --backend onnx needs an exported model",
                hint=f"run `satseg export-onnx {path} -o model.onnx`",
            )
        predictor = OnnxPredictor(path, device=device, low_memory=low_memory)
        config = check_run_config(onnx_run_config(path, predictor.metadata), path)
        _check_onnx_shape(predictor, config, path)
        check_patch_size(Segmenter(predictor, config, str(model), "onnx", torch_device).patch, path)
        divisor = onnx_input_divisor(predictor.metadata)
        return Segmenter(predictor, config, str(model), "onnx", torch_device, divisor=divisor)
    net, config = load_run(path)
    check_patch_size(Segmenter(net, config, str(model), "torch", torch_device).patch, path)
    lcc = read_lcc(path if path.is_dir() else path.parent, config["plan"]["labels"])
    autocast = autocast_dtype(torch_device, config.get("train"), amp) is not None
    if backend_given is None and cpu_onnx and torch_device.type == "cpu" and not autocast:
        # On the CPU ONNX Runtime runs the lean model faster than PyTorch (benchmarks/results/cpu-segment.md):
        # export it once per model to the cache; any failure falls back to PyTorch.
        onnx_path = cached_onnx_export(net, config, checkpoint_file(path))
        if onnx_path is not None:
            predictor = OnnxPredictor(onnx_path, device="cpu", low_memory=low_memory)
            voxel_bytes = onnx_path.with_suffix(".window.json")  # keyed like the export: same weights and code
            return Segmenter(
                predictor, config, str(model), "onnx", torch_device, net, lcc, voxel_bytes_file=voxel_bytes
            )
    # Windows run through the lean inference module (BN and gate selections folded, no skip concatenation);
    # the reference model is kept for attention maps.
    from satseg.nn.lean import make_lean

    lean = make_lean(net)
    if low_memory and torch_device.type == "cpu":
        unmap_freed_blocks()
    predictor = torch_predictor(lean, torch_device)
    return Segmenter(predictor, config, str(model), "torch", torch_device, net, lcc, amp=amp)


def _load_cached_export(model: str | Path, path: Path, amp: bool | None, low_memory: bool) -> Segmenter | None:
    """The checkpoint's cached CPU export, found from the checkpoint's bytes and loaded without torch; None when
    there is none yet, or it cannot be used as it is (then :func:`_load_one` loads the checkpoint and says why)."""
    try:
        checkpoint = checkpoint_file(path)
    except CheckpointError:
        return None
    found = find_cached_export(checkpoint)
    if found is None:
        return None
    onnx_path, sha256 = found
    try:
        predictor = OnnxPredictor(onnx_path, device="cpu", sha256=sha256, low_memory=low_memory)
        config = check_run_config(onnx_run_config(onnx_path, predictor.metadata), onnx_path)
        _check_onnx_shape(predictor, config, onnx_path)
    except CheckpointError as err:
        log.info("cached export `%s` not used (%s); loading `%s`", onnx_path, err.message, checkpoint)
        return None
    divisor = onnx_input_divisor(predictor.metadata)
    if divisor is None or autocasts("cpu", config.get("train"), amp):
        return None  # the windows must autocast: the PyTorch backend, as for a checkpoint without an export
    lcc = read_lcc(path if path.is_dir() else path.parent, config["plan"]["labels"])
    voxel_bytes = onnx_path.with_suffix(".window.json")
    segmenter = Segmenter(
        predictor, config, str(model), "onnx", "cpu", None, lcc, voxel_bytes_file=voxel_bytes,
        checkpoint=checkpoint, divisor=divisor,
    )  # fmt: skip
    check_patch_size(segmenter.patch, path)
    return segmenter
