"""``satseg segment``: segment files, folders and DICOM series; write masks on the inputs' exact grids.

Before any heavy work each input is compared with the model's training plan (:mod:`satseg.inference.input_guard`):
a scan the model was not made for (CT for an MRI model, a far larger field of view, …) is refused unless
``force``; with no model given, only a shipped model the scan fits is picked. A failure on one input
(unreadable file, a scan that does not fit, existing output, and any unexpected error such as running out
of memory) is recorded and the batch goes on; the report lists every failure. No output may be one of the
inputs, even with ``overwrite``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from satseg.atomic import remove_stale_temporaries
from satseg.data.io import (
    Image,
    check_image_path,
    image_stem,
    is_supported_image,
    page_count,
    read_image,
    write_image,
    write_stack,
)
from satseg.errors import ConfigError, DataError, SatsegError
from satseg.inference.input_guard import Misfit, check_fit, describe_scan
from satseg.inference.segmenter import Segmenter, load_segmenter
from satseg.paths import check_name_length, check_output
from satseg.progress import ItemProgress
from satseg.zoo import default_model_for, shipped_models_for

__all__ = [
    "SegmentReport",
    "segment_inputs",
    "expand_inputs",
    "output_path",
    "plan_outputs",
    "label_volumes",
    "parse_shard",
    "shard_inputs",
    "write_mask",
]

logger = logging.getLogger("satseg.segment")

# Masks are written in the input's format, except where that format is lossy or spans several files.
_OUTPUT_NAME = re.compile(r"(.+)_(?:seg|probabilities|preview|attention_.+)")
_OUTPUT_SUFFIX = {
    ".jpg": ".png", ".jpeg": ".png", ".gif": ".png", ".mhd": ".mha", ".nhdr": ".nrrd", ".hdr": ".nii.gz",
    ".dcm": ".nii.gz",
}  # fmt: skip


@dataclass
class SegmentReport:
    """What a ``segment`` run did: one entry per input, and the failures."""

    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    """Inputs whose mask existed already (``skip_existing`` / ``shard``): finished by an earlier run."""
    shard: tuple[int, int] | None = None
    total_inputs: int = 0
    """Inputs of the whole run, before sharding."""

    @property
    def ok(self) -> bool:
        return not self.failures


def expand_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, Path | None]]:
    """Files, DICOM series folders, and the supported files and series inside plain folders.

    Returns:
        ``(input, folder it came from or None)`` pairs; a folder's inputs go to a folder of outputs.
    """
    found: list[tuple[Path, Path | None]] = []
    for item in map(Path, inputs):
        if item.is_dir() and not is_supported_image(item):
            members = sorted(p for p in item.iterdir() if is_supported_image(p) and not p.name.startswith("."))
            if not members:
                raise DataError(f"`{item}`: no supported images in this folder")
            outputs = _own_outputs(members)
            if outputs:
                logger.info("`%s`: leaving out %d earlier satseg output(s), e.g. `%s`", item, len(outputs), outputs[0])
            found += [(p, item) for p in members if p not in outputs]
        else:
            found.append((item, None))
    return found


# (index, count) from the environment of a cluster launcher: torchrun, srun, a SLURM job array.
_SHARD_ENVIRONMENTS = (
    ("RANK", "WORLD_SIZE", None),
    ("SLURM_PROCID", "SLURM_NTASKS", None),
    ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"),
)


def parse_shard(text: str, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """``"I/N"`` (0 ≤ I < N) or ``"auto"`` → ``(I, N)``.

    ``auto`` reads the launcher's environment: ``RANK``/``WORLD_SIZE`` (torchrun), ``SLURM_PROCID``/
    ``SLURM_NTASKS`` (srun), or ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN``/``SLURM_ARRAY_TASK_COUNT``
    (a job array); ``0/1`` when none is set.

    Raises:
        ConfigError: not ``I/N`` with ``0 <= I < N``.
    """
    environ = os.environ if environ is None else environ
    if text.strip().lower() == "auto":
        for index_key, count_key, offset_key in _SHARD_ENVIRONMENTS:
            if index_key in environ and count_key in environ:
                offset = int(environ.get(offset_key, "0")) if offset_key else 0
                text = f"{int(environ[index_key]) - offset}/{environ[count_key]}"
                break
        else:
            return 0, 1
    index, sep, count = text.strip().partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise ConfigError(f"cannot read `{text}` as a shard", hint="give I/N with 0 <= I < N, e.g. 0/4, or auto")
    return int(index), int(count)


def shard_inputs(pairs: Sequence[tuple[Path, Path | None]], index: int, count: int) -> list[tuple[Path, Path | None]]:
    """Shard ``index`` of ``count``: every ``count``-th input from the ``index``-th, in sorted order.

    Every shard sorts the same list the same way, so the shards are disjoint and together cover it.
    """
    return sorted(pairs, key=lambda pair: str(pair[0]))[index::count]


def _own_outputs(members: Sequence[Path]) -> list[Path]:
    """The members that are outputs ``segment`` wrote beside another member (``<stem>_seg.*``, previews, …)."""
    stems = {image_stem(p) for p in members}
    own = []
    for path in members:
        match = _OUTPUT_NAME.fullmatch(image_stem(path))
        if match is not None and match.group(1) in stems:
            own.append(path)
    return own


def output_path(
    source: Path, output: Path | None, from_folder: Path | None, multiple: bool, suffix: str = "_seg"
) -> Path:
    """Where the mask of ``source`` goes: ``<stem>_seg.<ext>`` beside it, in ``output``, or at ``output``."""
    if source.is_dir():  # a DICOM series becomes a NIfTI volume
        ext = ".nii.gz"
    else:
        ext = source.name[len(image_stem(source)) :]
        ext = _OUTPUT_SUFFIX.get(ext.lower(), ext)
    name = f"{image_stem(source)}{suffix}{ext}"
    if output is None:
        return source.parent / name  # a DICOM series folder's mask goes beside the folder, too
    if multiple or from_folder is not None or output.is_dir() or not output.suffix:
        return output / name
    return output


def plan_outputs(
    pairs: Sequence[tuple[Path, Path | None]], output: Path | None, multiple: bool
) -> dict[Path, Path]:
    """The mask path of every input of the whole run, refusing before any work two inputs that would share one.

    ``a.png`` + ``a.jpg`` (both ``a_seg.png``), ``vol.mha`` + ``vol.mhd``, or ``sub-1/t1.nii.gz`` +
    ``sub-2/t1.nii.gz`` into one ``-o`` folder: with ``--overwrite`` one mask would silently replace the other,
    with ``--skip-existing`` the second would be reported as done. Seen from the whole batch, before sharding.

    Raises:
        ConfigError: naming both inputs and the output they would share; or an output with an unknown ending.
    """
    if output is not None:
        check_name_length(output)
    planned: dict[Path, Path] = {}
    owner: dict[str, Path] = {}
    for source, folder in pairs:
        if not source.is_dir() and not is_supported_image(source):
            continue  # refused as an input when its turn comes (the batch goes on), not for its output's name
        target = check_name_length(output_path(source, output, folder, multiple))
        check_image_path(target)  # an unknown ending is refused now, not after minutes of inference
        key = os.path.normcase(os.path.abspath(target))
        if key in owner and owner[key] != source:
            raise ConfigError(
                f"`{owner[key]}` and `{source}` would both be segmented into `{target}`",
                hint="segment them into different -o folders, or rename one of them",
            )
        owner[key] = source
        planned[source] = target
    return planned


def label_volumes(labels: np.ndarray, spacing: Sequence[float], names: dict[str, int]) -> dict[str, float]:
    """Per foreground label: volume in ml (3D) or area in mm² (2D; in pixels for pictures, whose spacing is 1)."""
    unit = float(np.prod(spacing)) / (1000.0 if labels.ndim == 3 else 1.0)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(names.values()) + 1)
    return {name: float(counts[v]) * unit for name, v in names.items() if v != 0}


ModelArg = str | Path | Sequence[str | Path]


Loader = Callable[[ModelArg], Segmenter]
"""``load_segmenter`` with the run's device, backend, precision and memory settings bound."""


def _cached(model: ModelArg, cache: dict, load: Loader) -> Segmenter:
    key = str(model) if isinstance(model, (str, Path)) else tuple(map(str, model))
    if key not in cache:
        cache[key] = load(model)
    return cache[key]


def _refusal(misfits: list[Misfit]) -> str:
    return "; ".join(str(m) for m in misfits if m.refuse)


FORCEABLE = ("field of view",)
"""Refusals ``--force`` may override with a meaningful result: a crop or a wider view of the same kind of
scan can still show the structure. Other intensities (CT against MRI), other dimensions or far too many
voxels cannot, so ``--force`` is not offered for them."""


def _forceable(misfits: list[Misfit]) -> bool:
    return all(m.what in FORCEABLE for m in misfits if m.refuse)


def _train_hint(image: Image) -> str:
    return (
        f"it needs a model trained on scans like it ({describe_scan(image)}): satseg preprocess DATASET -o PP; "
        "satseg train --data PP --out RUN; then --model RUN"
    )


def _segmenter_for(
    image: Image,
    source: Path,
    model: ModelArg | None,
    cache: dict,
    load: Loader,
    force: bool,
) -> tuple[Segmenter, list[Misfit]]:
    """The model for ``image`` (given, or the shipped one it fits) and how the image differs from its plan.

    Raises:
        DataError: the image does not fit (the given model, or any shipped one) and ``force`` is off.
    """
    if model is not None:
        segmenter = _cached(model, cache, load)
        segmenter.check_image(image, source)  # no --force for images the network cannot take at all
        misfits = check_fit(image, segmenter.plan)
        if _refusal(misfits) and not force:
            raise DataError(
                f"does not fit model `{segmenter.name}`: {_refusal(misfits)}",
                hint=_train_hint(image) + ("; or pass --force to try this model anyway" if _forceable(misfits) else ""),
            )
        return segmenter, misfits
    default_model_for(image.spatial_dims, image.num_channels)  # raises when no shipped model takes such images
    tried = []
    for card in shipped_models_for(image.spatial_dims, image.num_channels):
        segmenter = _cached(card["name"], cache, load)
        misfits = check_fit(image, segmenter.plan)
        if not _refusal(misfits):
            return segmenter, misfits
        tried.append((segmenter, misfits))
    if force:
        return next(((s, m) for s, m in tried if _forceable(m)), tried[0])
    reasons = "; ".join(f"`{s.name}` knows other scans: {_refusal(m)}" for s, m in tried)
    closest = next((s for s, m in tried if _forceable(m)), None)
    raise DataError(
        f"no shipped model fits this {describe_scan(image)} ({reasons})",
        hint=_train_hint(image) + (f"; or pass --force to try `{closest.name}` anyway" if closest else ""),
    )


def segment_inputs(
    inputs: Sequence[str | Path],
    *,
    output: str | Path | None = None,
    model: ModelArg | None = None,
    device: str = "auto",
    backend: str | None = None,
    amp: bool | None = None,
    low_memory: bool = False,
    overlap: float = 0.5,
    sw_batch: int = 4,
    tile: str | Sequence[int] = "auto",
    tta: bool = False,
    save_probabilities: bool = False,
    save_attention: bool = False,
    preview: bool = False,
    overwrite: bool = False,
    skip_existing: bool = False,
    shard: tuple[int, int] | None = None,
    force: bool = False,
    lcc: bool | None = None,
    progress: bool = False,
    on_done: Callable[[str, dict[str, Any]], None] | None = None,
) -> SegmentReport:
    """Segment every input; see ``satseg segment --help`` for the options.

    Args:
        output: the mask file (one input), or the folder of masks (several inputs, a folder, or a string
            ending in ``/``); None writes each mask beside its input.
        model: a model (run folder, checkpoint, ONNX file, shipped name), a folder of fold runs or a list of
            models (averaged as one ensemble); None picks the shipped model each input fits.
        amp: autocast the windows (True, on any device, the CPU too), run float32 (False), or as each run
            records (None); see :mod:`satseg.device`.
        low_memory: on the CPU, the lowest peak RSS for somewhat slower windows (see :func:`load_segmenter`).
        tile: the sliding window: ``auto`` (on the CPU the largest window that fits memory, for
            throughput; on a GPU the training patch), ``patch``, or sides (see ``Segmenter.window``).
        skip_existing: leave out inputs whose mask exists (a finished earlier run; the mask is written
            last, so its presence means every output of that input is complete). ``overwrite`` wins.
        shard: ``(I, N)``: segment only shard ``I`` of ``N`` (see :func:`shard_inputs`); implies
            ``skip_existing``, so a shard that is run again resumes where it stopped.
        force: segment inputs that do not fit the model's training data (the differences are warnings).
        lcc: largest-component post-processing for every class (True), none (False) or as the run records.
        progress: show bars over the inputs and the current input's windows, with remaining time, on stderr.
        on_done: called as each input finishes, with ``"result"`` or ``"failure"`` and its report entry (the
            command line prints each file's line then, not at the end).

    Returns:
        A report with, per input, the files written, per-label volumes and timings, the failures and the
        inputs skipped.
    """
    pairs = expand_inputs(inputs)
    sources = [p for p, _ in pairs]  # every input of the run: no shard writes over any of them
    as_folder = isinstance(output, str) and output.endswith(("/", os.sep))  # `-o x.nii.gz/` names a folder
    output = None if output is None else Path(output)
    # from the whole run: a shard with one input still writes into the folder
    multiple = len(pairs) > 1 or as_folder
    targets = plan_outputs(pairs, output, multiple)  # the whole run, before sharding: no two share a mask
    report = SegmentReport(shard=shard, total_inputs=len(pairs))
    if shard is not None:
        pairs = shard_inputs(pairs, *shard)
        skip_existing = True
    cache: dict[str, Segmenter] = {}
    load = functools.partial(load_segmenter, device=device, backend=backend, amp=amp, low_memory=low_memory)
    if model is not None:  # a model that cannot be loaded is one error for the run, not one per input
        _cached(model, cache, load)
    with ItemProgress(len(pairs), "segmenting", enabled=progress) as bar:
        for source, _folder in pairs:
            bar.item(source.name)
            started = time.perf_counter()
            try:
                target = targets.get(source)
                if target is None:
                    read_image(source)  # says why the input cannot be read: missing, or not an image format
                    raise DataError(f"`{source}` is not a supported image format")
                if skip_existing and not overwrite and target.exists():
                    report.skipped.append(str(source))
                    continue
                check_output(target, inputs=sources, overwrite=overwrite)
                if save_probabilities:  # the longest name this input will get: too long is refused now
                    leftover = skip_existing and not target.exists()  # an unfinished earlier run's (see below)
                    probabilities = _extra_path(target, "_probabilities.nii.gz")
                    check_output(probabilities, inputs=sources, overwrite=overwrite or leftover)
                pages = page_count(source)  # a multipage TIFF stack (ISBI-2012) is segmented page by page
                if pages > 1:
                    _check_stack_output(source, target, save_probabilities, save_attention, preview)
                images = [read_image(source, k) for k in range(pages)] if pages > 1 else [read_image(source)]
                image = images[0]
                check_output_holds(target, image)  # `-o out.png` for a 3D scan: refused before inference
                segmenter, misfits = _segmenter_for(image, source, model, cache, load, force)
                for misfit in misfits:
                    logger.debug("%s: %s", source, misfit)  # the report prints it once
                report.models[str(source)] = segmenter.name
                segs = [
                    segmenter.segment(
                        page, overlap=overlap, sw_batch=sw_batch, tta=tta, probabilities=save_probabilities,
                        attention=save_attention, tile=tile, source=source, lcc=lcc, progress=bar.windows,
                    )
                    for page in images
                ]  # fmt: skip
                seg = segs[0]
                if pages > 1:
                    mask_values = write_mask([s.labels for s in segs], target, segmenter.labels, overwrite=overwrite)
                    written = [target]
                else:
                    written, mask_values = _write_outputs(
                        source, target, image, seg, segmenter, preview, save_probabilities, overwrite, sources,
                        resume=skip_existing,
                    )  # fmt: skip
            except SatsegError as error:
                _fail(report, on_done, {"input": str(source), "error": error.message, "hint": error.hint})
                continue
            except Exception as error:  # noqa: BLE001 - out of memory, ONNX Runtime, a full disk: this file failed, not the batch
                message, hint = _unforeseen(error)
                logger.debug("%s: %s", source, message, exc_info=True)
                _fail(report, on_done, {"input": str(source), "error": message, "hint": hint})
                continue
            labels = seg.labels.array[0]
            volumes = [label_volumes(s.labels.array[0], image.spacing, segmenter.labels) for s in segs]
            timings = {k: sum(s.timings.get(k, 0.0) for s in segs) for k in seg.timings}
            report.results.append(
                {
                    "input": str(source),
                    "model": segmenter.name,
                    "backend": segmenter.backend,
                    "models_averaged": segmenter.members,
                    "largest_component": seg.lcc,
                    "warnings": [str(m) for m in misfits],
                    "outputs": [str(p) for p in written],
                    "mask_values": mask_values,
                    "shape": ([len(segs)] if len(segs) > 1 else []) + list(labels.shape),  # pages first
                    "spacing": list(image.spacing),
                    "window": list(seg.window),
                    # a picture has no physical spacing: its areas are pixel counts, not mm²
                    "unit": "px" if image.source_format == "picture" else "ml" if labels.ndim == 3 else "mm2",
                    "volumes": {name: sum(v[name] for v in volumes) for name in volumes[0]},  # all pages
                    "timings": {**{k: round(v, 4) for k, v in timings.items()},
                                "total_s": round(time.perf_counter() - started, 4)},
                }
            )  # fmt: skip
            if on_done is not None:
                on_done("result", report.results[-1])
    return report


def _fail(report: SegmentReport, on_done: Callable | None, failure: dict[str, Any]) -> None:
    """Record a failed input; it is reported once (by ``on_done``, or by whoever reads the report)."""
    report.failures.append(failure)
    if on_done is not None:
        on_done("failure", failure)
    else:
        logger.debug("%s: %s", failure["input"], failure["error"])


PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
"""Endings that hold one 2D picture only (TIFF may hold a stack, NIfTI/NRRD/MetaImage any grid)."""


def check_output_holds(target: Path, image: Image) -> None:
    """Refuse an output whose format cannot hold a mask on ``image``'s grid (a 3D mask as PNG)."""
    suffix = target.suffix.lower()
    if image.spatial_dims == 3 and suffix in PICTURE_SUFFIXES:
        raise ConfigError(
            f"`{target.name}`: a {suffix} picture cannot hold the 3D mask of this scan ({image.spatial_shape})",
            hint=f"use -o {image_stem(target)}.nii.gz (or .nrrd, .mha)",
        )


def mask_for_picture(labels: Image, label_values: dict[str, int]) -> tuple[Image, dict[str, int]]:
    """A binary mask as 0/255 (white on black in any viewer); other masks keep their label values.

    Returns:
        ``(the image to write, label name → value written)``.
    """
    if len(label_values) == 2 and set(label_values.values()) == {0, 1}:
        scaled = (labels.array > 0).astype(np.uint8) * 255
        return replace(labels, array=scaled), {name: 255 * value for name, value in label_values.items()}
    return labels, dict(label_values)


def write_mask(
    labels: Image | Sequence[Image], target: Path, label_values: dict[str, int], *, overwrite: bool
) -> dict[str, int]:
    """Write a predicted label map at ``target``, in the format of its ending; a list of 2D label maps as the
    pages of one TIFF stack (the mask of a stack).

    Pictures are made for viewers: a binary mask as 0/255; more classes as palette indices (PIL mode ``P``), each
    class in its preview colour, so the classes are visible and reading the file gives back the label values.

    Returns:
        Label name → value written.
    """
    pages = list(labels) if isinstance(labels, Sequence) else None
    if pages is None and target.suffix.lower() not in PICTURE_SUFFIXES + (".tif", ".tiff"):
        write_image(labels, target, overwrite=overwrite)
        return dict(label_values)
    from satseg.inference.preview import label_palette  # pillow: pictures only, not on a volume's start-up

    binary = len(label_values) == 2 and set(label_values.values()) == {0, 1}
    palette = None if binary else label_palette(max(label_values.values()) + 1)  # several classes: i in colour i
    written = [mask_for_picture(page, label_values) for page in (pages or [labels])]
    masks = [replace(mask, array=mask.array.astype(np.uint8)) for mask, _ in written]
    if pages is not None:
        write_stack(masks, target, overwrite=overwrite, palette=palette)
    else:
        write_image(masks[0], target, overwrite=overwrite, palette=palette)
    return written[0][1]


def _check_stack_output(source: Path, target: Path, probabilities: bool, attention: bool, preview: bool) -> None:
    """The mask of a TIFF stack is a TIFF stack (same pages, 0/255 or palette); the extras are for single images."""
    if target.suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError(
            f"`{source}` is a stack of pages; its mask is a stack too, not `{target.name}`",
            hint=f"use -o {image_stem(target)}.tif",
        )
    if probabilities or attention or preview:
        raise ConfigError(
            f"`{source}` is a stack of pages: --save-probabilities, --save-attention and --preview are for single "
            "images",
            hint="leave them out, or save the pages as pictures",
        )


def _unforeseen(error: Exception) -> tuple[str, str]:
    """One-line message and hint for an exception satseg did not raise on purpose."""
    if isinstance(error, MemoryError):
        return "out of memory while segmenting this file", "use a smaller --sw-batch, or a machine with more memory"
    text = str(error).strip()
    detail = f": {text.splitlines()[0][:300]}" if text else ""
    return f"unexpected {type(error).__name__}{detail}", "the other files went on; please report this one"


def _extra_path(target: Path, ending: str) -> Path:
    """``<stem><ending>`` beside the mask ``<stem>_seg.<ext>``."""
    stem = image_stem(target)
    return target.parent / f"{stem.removesuffix('_seg')}{ending}"


def _write_outputs(
    source, target, image, seg, segmenter, preview, save_probabilities, overwrite, sources, resume=False
) -> tuple[list[Path], dict[str, int]]:
    """Write the mask and the extras; refuse before writing anything when one of them exists or is an input."""
    stem = image_stem(target)[: -len("_seg")] if image_stem(target).endswith("_seg") else image_stem(target)
    # Probabilities and attention maps are floats: NIfTI, also for 2D pictures (a PNG would be lossy).
    extras: list[tuple[Path, Image | None]] = []
    if save_probabilities and seg.probabilities is not None:
        extras.append((target.parent / f"{stem}_probabilities.nii.gz", seg.probabilities))
    extras += [(target.parent / f"{stem}_attention_{name}.nii.gz", a) for name, a in seg.attention.items()]
    if preview:
        extras.append((target.parent / f"{stem}_preview.png", None))
    # A mask is written last: without it, extras already there are leftovers of this input's unfinished run
    # (killed mid-write), which a resumed run (--skip-existing, --shard) replaces instead of failing on them.
    unfinished = resume and not target.exists()
    for path in [target, *(p for p, _ in extras)]:
        check_output(path, inputs=sources, overwrite=overwrite or (unfinished and path != target))
    remove_stale_temporaries(target.parent, [target.name, *(p.name for p, _ in extras)])
    for path, extra in extras:
        if extra is not None:
            write_image(extra, path, overwrite=overwrite or unfinished)
        else:
            from satseg.inference.preview import overlay_png  # pillow: only when a preview is asked for

            overlay_png(image.array, seg.labels.array[0], image.spacing, path, segmenter.labels)
    # The mask last: when it exists, every output of this input is complete (what a resumed run checks).
    values = write_mask(seg.labels, target, segmenter.labels, overwrite=overwrite)
    return [target, *(p for p, _ in extras)], values
