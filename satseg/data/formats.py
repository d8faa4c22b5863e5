"""DICOM series and 2D picture (PNG, JPEG, BMP, TIFF) readers and writers behind :mod:`satseg.data.io`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image as PILImage
from PIL import ImageSequence

from satseg.data.io import Image, from_sitk, to_sitk, with_array
from satseg.errors import DataError

__all__ = ["read_dicom", "write_dicom", "read_picture", "write_picture", "write_picture_stack", "picture_pages"]

log = logging.getLogger(__name__)


def read_dicom(folder: Path) -> Image:
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise DataError(f"`{folder}` is a folder without a DICOM series", hint="give an image file or a DICOM folder")
    files = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in ids}
    if len(ids) > 1:  # picking one would be a guess (and equal lengths leave nothing to pick by)
        listed = ", ".join(f"{sid} ({len(names)} files)" for sid, names in files.items())
        raise DataError(
            f"`{folder}` holds {len(ids)} DICOM series: {listed}; satseg will not guess which one to segment",
            hint="put each series in its own folder",
        )
    series = ids[0]
    _check_slice_spacing(folder, files[series])
    reader.SetFileNames(files[series])
    return from_sitk(reader.Execute(), "dicom")


_SLICE_SPACING_RTOL = 0.01  # 1 %: scanners write positions to a few decimals


def _check_slice_spacing(folder: Path, files: Sequence[str]) -> None:
    """Refuse a series whose slices are not evenly spaced (a missing or duplicated slice).

    ITK would stack such slices as if evenly spaced and only print a warning: every mm and ml measured on
    the result would then be wrong without a word.
    """
    if len(files) < 3:
        return
    header = sitk.ImageFileReader()
    positions, normal = [], None
    for name in files:
        header.SetFileName(name)
        header.ReadImageInformation()
        if not header.HasMetaDataKey("0020|0032") or not header.HasMetaDataKey("0020|0037"):
            return  # no positions (e.g. secondary capture): nothing to check against
        position = np.array([float(v) for v in header.GetMetaData("0020|0032").split("\\")])
        if normal is None:
            cosines = np.array([float(v) for v in header.GetMetaData("0020|0037").split("\\")])
            normal = np.cross(cosines[:3], cosines[3:])
        positions.append(float(position @ normal))
    gaps = np.diff(np.sort(positions))
    typical = float(np.median(gaps))
    if typical <= 0 or np.any(np.abs(gaps - typical) > _SLICE_SPACING_RTOL * typical):
        worst = int(np.argmax(np.abs(gaps - typical)))
        raise DataError(
            f"`{folder}`: the DICOM slices are not evenly spaced (gap of {gaps[worst]:.3g} mm after slice {worst + 1} "
            f"of {len(files)}, {typical:.3g} mm elsewhere): a slice is missing or duplicated",
            hint="export the complete series again; satseg will not stack uneven slices as if they were even",
        )


def picture_pages(path: Path) -> list[tuple[int, int]]:
    """``(height, width)`` of every page of a picture (one for most files; a multipage TIFF stack has several).

    Pages are listed with pillow's ImageSequence from the file's headers; no pixels are decoded.
    """
    with PILImage.open(path) as pic:
        return [(frame.height, frame.width) for frame in ImageSequence.Iterator(pic)]


def read_picture(path: Path, page: int | None = None) -> Image:
    """One 2D picture; ``page`` picks a page of a multipage TIFF stack (a stack without ``page`` is refused)."""
    with PILImage.open(path) as pic:
        frames = getattr(pic, "n_frames", 1)
        if page is None and frames > 1:
            tiff = path.suffix.lower() in (".tif", ".tiff")
            raise DataError(
                f"`{path}` is a stack of {frames} pages; satseg reads single 2D pictures",
                hint="`satseg segment` takes a TIFF stack whole (page by page); a folder of X-volume.tif + "
                "X-labels.tif stacks is a dataset for `satseg preprocess`"
                if tiff
                else "save the frame you mean as a picture of its own",
            )
        if page is not None and not 0 <= page < frames:
            raise DataError(f"`{path}` has {frames} page(s); page {page} does not exist")
        if page is not None:
            pic = ImageSequence.Iterator(pic)[page]
        pic.load()
        if pic.mode in ("RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            pic = pic.convert("RGB")
        elif pic.mode in ("LA", "PA"):
            pic = pic.getchannel(0)
        if pic.mode == "P" and _grey_palette(pic):  # e.g. GIF masks: the palette's grey values, not its indices
            pic = pic.convert("L")
        array = np.asarray(pic)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    array = np.moveaxis(array, -1, 0) if array.ndim == 3 else array[None]
    # dpi is a print setting (writers store 72, 96 or even 1 by default), not a pixel size: spacing stays 1
    return Image(np.ascontiguousarray(array), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), source_format="picture")


def _grey_palette(pic: PILImage.Image) -> bool:
    """True when every palette entry is a grey (r == g == b); colour palettes keep their indices (class maps)."""
    palette = np.asarray(pic.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(len(palette)) and bool(np.all(palette == palette[:, :1]))


def write_picture(image: Image, path: Path, palette: Sequence[tuple[int, int, int]] | None = None) -> None:
    """Write a 2D grey or RGB picture; with ``palette``, a label map as palette indices (PIL mode ``P``).

    A palette picture shows each label in its colour in any viewer, and :func:`read_picture` gives back the
    indices (a palette with colours is never read as grey).
    """
    _save(_picture(image, path, palette), path, image)


def write_picture_stack(pages: Sequence[Image], path: Path, palette: Sequence[tuple[int, int, int]] | None = None):
    """Write 2D pictures as the pages of one multipage TIFF (as ISBI-2012's ``train-labels.tif``)."""
    pictures = [_picture(page, path, palette) for page in pages]
    _save(pictures[0], path, pages[0], save_all=True, append_images=pictures[1:])


def _save(pic: PILImage.Image, path: Path, image: Image, **options) -> None:
    try:
        pic.save(path, **options)
    except OSError as err:
        raise DataError(f"`{path.name}`: cannot store {image.array.dtype} data in this format: {err}") from err


def _picture(image: Image, path: Path, palette: Sequence[tuple[int, int, int]] | None) -> PILImage.Image:
    if image.spatial_dims != 2 or image.num_channels not in (1, 3):
        raise DataError(f"`{path.name}`: pictures hold 2D grey or RGB images, got array {image.array.shape}")
    array = image.array
    if array.dtype != np.uint8 and array.size and array.min() >= 0 and array.max() <= 255:
        if np.all(np.mod(array, 1) == 0):
            array = array.astype(np.uint8)
    allowed = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int32), np.dtype(np.float32)}
    if array.dtype not in allowed or (array.shape[0] == 3 and array.dtype != np.uint8):
        raise DataError(f"`{path.name}`: cannot store {array.dtype} data with {array.shape[0]} channel(s) as a picture")
    if palette is not None:
        return _palette_picture(array, palette, path)
    return PILImage.fromarray(np.moveaxis(array, 0, -1) if array.shape[0] == 3 else array[0])


def _palette_picture(array: np.ndarray, palette: Sequence[tuple[int, int, int]], path: Path) -> PILImage.Image:
    """A label map ``(1, y, x)`` as a mode ``P`` picture whose colour ``i`` is ``palette[i]``."""
    if array.shape[0] != 1 or array.dtype != np.uint8 or (array.size and int(array.max()) >= len(palette)):
        top = int(array.max()) if array.size else 0
        raise DataError(
            f"`{path.name}`: a palette picture holds labels 0..{len(palette) - 1}, got {array.dtype} up to {top}"
        )
    pic = PILImage.fromarray(array[0]).convert("P")  # grey L to P keeps each value as its index
    pic.putpalette([int(c) for colour in palette for c in colour])
    return pic


def write_dicom(image: Image, folder: Path) -> None:
    if image.spatial_dims != 3 or image.num_channels != 1:
        raise DataError(f"`{folder.name}`: a DICOM series holds one 3D channel, got array {image.array.shape}")
    array = image.array[0]
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.mod(array, 1) == 0):
            raise DataError(f"`{folder.name}`: DICOM series are written for integer images only")
    if array.min() < -(2**15) or array.max() >= 2**15:
        raise DataError(f"`{folder.name}`: values outside int16 cannot be written as DICOM")
    img = to_sitk(with_array(image, array.astype(np.int16)))
    folder.mkdir()
    series_uid = f"1.2.826.0.1.3680043.2.1125.{uuid.uuid4().int % 10**30}"
    direction = img.GetDirection()
    orientation = "\\".join(f"{v:.10g}" for v in (*direction[0:9:3], *direction[1:9:3]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        item = img[:, :, k]
        position = img.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "OT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.7",
            "0020|000d": series_uid + ".1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.10g}" for v in position),
            "0020|0013": str(k + 1),
            "0018|0050": f"{img.GetSpacing()[2]:.10g}",
            "0028|0030": f"{img.GetSpacing()[1]:.10g}\\{img.GetSpacing()[0]:.10g}",
        }
        for key, value in tags.items():
            item.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{k:05d}.dcm"))
        writer.Execute(item)
