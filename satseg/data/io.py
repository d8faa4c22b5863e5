"""One in-memory image type and its readers/writers for NIfTI, NRRD, MetaImage, DICOM series and 2D pictures.

Axis order (the contract every satseg module codes against):

* ``Image.array`` is channel first, ``(C, z, y, x)`` in 3D and ``(C, y, x)`` in 2D: the NumPy order SimpleITK's
  ``GetArrayFromImage`` gives, with the channel axis in front.
* ``Image.spacing`` has one value per *array* spatial axis, so ``(sz, sy, sx)`` in 3D (the reverse of
  SimpleITK's ``GetSpacing()``).
* ``Image.origin`` and ``Image.direction`` are exactly SimpleITK's ``GetOrigin()`` / ``GetDirection()``: physical
  LPS ``(x, y, z)`` and the row-major direction matrix.

Geometry is read by SimpleITK; NIfTI voxel data is read by nibabel (it refuses truncated ``.nii.gz`` files, where
SimpleITK silently returns garbage), and the NIfTI header is kept so that writing an image on the same grid back to
NIfTI keeps the original affine and sform/qform codes. 2D pictures (PNG, JPEG, BMP, TIFF) go through pillow: grey
gives one channel, RGB three (alpha dropped); spacing is always ``(1, 1)`` (a picture's dpi is a print setting that
writers fill with defaults, not a pixel size), origin ``(0, 0)``, identity direction; palette pictures keep their
indices.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from satseg.atomic import atomic_folder
from satseg.errors import ConfigError, DataError

__all__ = [
    "Image",
    "NiftiHeader",
    "read_image",
    "write_image",
    "with_array",
    "is_supported_image",
    "is_picture",
    "image_stem",
    "to_sitk",
    "from_sitk",
    "atomic_output",
    "IMAGE_SUFFIXES",
    "MAX_VOXELS",
    "check_image_path",
    "page_count",
    "write_stack",
]

log = logging.getLogger(__name__)

_NIFTI = (".nii.gz", ".nii")
_ITK = (".nrrd", ".nhdr", ".mha", ".mhd")
_PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")  # .gif: DRIVE's manual annotations
_READ_ONLY = (".hdr", ".dcm")  # a NIfTI/Analyze pair (.hdr + .img), one DICOM file: read, never written
IMAGE_SUFFIXES: tuple[str, ...] = _NIFTI + _ITK + _PICTURES + _READ_ONLY
"""File endings :func:`read_image` understands (a folder of ``.dcm`` files is read as a DICOM series)."""

MAX_VOXELS = 2**31
"""Largest number of voxels (times channels) an image may have: about 2.1 billion, four times a whole-body CT
of 512 × 512 × 2000; a header claiming more is refused before any memory is allocated."""
# DEFLATE (gzip, zlib) cannot compress by more than about 1032:1; slack for headers and small files.
_MAX_COMPRESSION = 1100
_SLACK_BYTES = 1 << 16


@dataclass(frozen=True)
class NiftiHeader:
    """The NIfTI header an image was read with, and the grid it describes.

    Attributes:
        raw: the header block as stored in the file (affine, sform/qform codes, intent, description).
        version: 1 or 2 (NIfTI-1 or NIfTI-2).
        spacing, origin, direction: the grid of that header in :class:`Image` conventions; the header is reused
            on writing only while the image still has exactly this grid.
    """

    raw: bytes
    version: int
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def to_nibabel(self) -> nib.Nifti1Header:
        """The header as a nibabel header object (a copy)."""
        cls = nib.Nifti2Header if self.version == 2 else nib.Nifti1Header
        return cls(binaryblock=self.raw)


@dataclass
class Image:
    """A channel-first image with its physical geometry.

    Attributes:
        array: voxel data ``(C, z, y, x)`` (3D) or ``(C, y, x)`` (2D).
        spacing: mm per array spatial axis, same order as ``array.shape[1:]``.
        origin: physical position (LPS ``x, y, z``) of the first voxel centre, as SimpleITK ``GetOrigin()``.
        direction: direction cosine matrix, row-major, as SimpleITK ``GetDirection()``.
        source_format: ``"nifti"``, ``"nrrd"``, ``"metaimage"``, ``"dicom"``, ``"picture"`` or ``"array"``.
        nifti: the NIfTI header read with the image (``None`` for other formats).
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    source_format: str = "array"
    nifti: NiftiHeader | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        dims = self.array.ndim - 1
        if dims not in (2, 3):
            raise DataError(f"image array must be (C, y, x) or (C, z, y, x), got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = tuple(float(d) for d in self.direction)
        if 0 in self.array.shape:
            raise DataError(f"image has an empty axis (array shape {self.array.shape}, channels first)")
        geometry = (*self.spacing, *self.origin, *self.direction)
        if not all(math.isfinite(v) for v in geometry) or any(s <= 0 for s in self.spacing):
            raise DataError(
                f"image geometry is not valid: spacing {self.spacing} (must be > 0), origin {self.origin}, "
                f"direction {self.direction} (must be finite); satseg will not guess a voxel size",
                hint="write the image again with its real voxel size and orientation",
            )
        if len(self.spacing) != dims or len(self.origin) != dims or len(self.direction) != dims * dims:
            raise DataError(
                f"image geometry does not match a {dims}D array: spacing {self.spacing}, origin {self.origin}, "
                f"direction {self.direction}"
            )

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return self.array.ndim - 1

    @property
    def num_channels(self) -> int:
        """Number of channels (first array axis)."""
        return int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``array.shape[1:]``."""
        return tuple(int(s) for s in self.array.shape[1:])


def image_stem(path: str | Path) -> str:
    """File name without its image ending: ``"case.nii.gz"`` -> ``"case"``, ``"IMD003.png"`` -> ``"IMD003"``."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), "")


def is_picture(path: str | Path) -> bool:
    """True for a 2D picture ending (PNG, JPEG, BMP, TIFF, GIF): no physical spacing, sizes are in pixels."""
    return _suffix(Path(path)) in _PICTURES


def is_supported_image(path: str | Path) -> bool:
    """True for a file with a supported ending, or a folder holding ``.dcm`` files (a DICOM series)."""
    path = Path(path)
    if path.is_dir():
        return any(p.suffix.lower() == ".dcm" for p in path.iterdir())
    return bool(_suffix(path)) and not path.name.startswith(".")


def with_array(image: Image, array: np.ndarray) -> Image:
    """A copy of ``image`` (geometry and metadata) holding ``array``.

    Args:
        image: the image whose grid the new array lies on.
        array: ``(C, *spatial)`` with the same spatial shape (a ``(*spatial)`` array gets a channel axis).

    Raises:
        DataError: if the spatial shape differs.
    """
    array = np.asarray(array)
    if array.ndim == image.spatial_dims:
        array = array[None]
    if tuple(array.shape[1:]) != image.spatial_shape:
        raise DataError(
            f"array of shape {array.shape} does not lie on the image grid {image.spatial_shape}",
            hint="resample it first (satseg.data.restore_labels maps predictions back to the original grid)",
        )
    return replace(image, array=array)


# ---------------------------------------------------------------- SimpleITK bridge
def from_sitk(img: sitk.Image, source_format: str = "array") -> Image:
    """Convert a SimpleITK image (scalar or vector pixels, 2D or 3D) to :class:`Image`."""
    array = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    else:
        array = array[None]
    return Image(
        array, tuple(reversed(img.GetSpacing())), img.GetOrigin(), img.GetDirection(), source_format=source_format
    )


def to_sitk(image: Image, channel: int | None = None) -> sitk.Image:
    """Convert to SimpleITK: one channel as a scalar image, or all channels as a vector image.

    Args:
        image: the image.
        channel: which channel; ``None`` takes all (scalar if there is one, vector pixels otherwise).
    """
    if channel is not None or image.num_channels == 1:
        img = sitk.GetImageFromArray(np.ascontiguousarray(image.array[channel or 0]))
    else:
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(image.array, 0, -1)), isVector=True)
    img.SetSpacing(tuple(reversed(image.spacing)))
    img.SetOrigin(image.origin)
    img.SetDirection(image.direction)
    return img


# ---------------------------------------------------------------- reading
def _sitk_error(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(err).__name__
    return text.removeprefix("sitk::ERROR:").strip()


def read_image(path: str | Path, page: int | None = None) -> Image:
    """Read a NIfTI, NRRD, MetaImage, 2D picture or DICOM series folder.

    Args:
        path: an image file, or a folder holding one DICOM series.
        page: pictures only: the page of a multipage TIFF stack (ISBI-2012's ``train-volume.tif``), from 0.

    Returns:
        The image, channel first (see the module docstring for axis order).

    Raises:
        DataError: naming the file and why it cannot be read (missing, unsupported, truncated, corrupt).
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise DataError(f"`{path}` is a link to nothing that exists (a broken link or a link loop)")
        raise DataError(f"`{path}` does not exist")
    if not path.is_dir():
        check_regular_file(path)  # a FIFO or device would block or never end: refused before it is opened
    if page is not None and _suffix(path) not in _PICTURES:
        raise DataError(f"`{path}`: only pictures (TIFF stacks) have pages")
    try:
        if path.is_dir():
            from satseg.data import formats  # pillow and DICOM series: not on a volume's start-up

            return formats.read_dicom(path)
        suffix = _suffix(path)
        if suffix in (*_NIFTI, ".hdr"):
            return _read_nifti(path)
        if suffix == ".dcm":  # one DICOM file (a folder of them is a series)
            return from_sitk(sitk.ReadImage(str(path)), "dicom")
        if suffix in _ITK:
            # .nhdr and .mhd (and any .nrrd/.mha naming a data file) keep their voxels in another file: it must
            # be a regular file inside the header's folder, and its size bounds what the header may claim
            data_file, compressed = referenced_data_file(path)
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            voxels = math.prod(reader.GetSize()) * reader.GetNumberOfComponents()
            check_claimed_size(path, voxels, 1, data_file.stat().st_size, compressed=compressed)
            return from_sitk(reader.Execute(), "nrrd" if suffix in (".nrrd", ".nhdr") else "metaimage")
        if suffix in _PICTURES:
            from satseg.data import formats

            return formats.read_picture(path, page)
    except DataError as err:
        if f"`{path}`" in err.message:
            raise
        raise DataError(f"`{path}`: {err.message}", err.hint) from err
    except RuntimeError as err:  # SimpleITK
        reason = _sitk_error(err).replace(f' for "{path}"', "").replace(f'"{path}"', "it")  # the path once
        raise DataError(f"`{path}` cannot be read: {reason}") from err
    except MemoryError as err:
        raise DataError(f"`{path}` is too large to read into memory") from err
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as err:
        reason = str(err).replace(f"File {path} ", "").replace(str(path), "the file")  # the path once per line
        raise DataError(f"`{path}` cannot be read (truncated or corrupt file?): {reason}") from err
    except Exception as err:  # e.g. pillow's DecompressionBombError: one line naming the file, never a traceback
        raise DataError(f"`{path}` cannot be read: {type(err).__name__}: {err}") from err
    raise DataError(
        f"`{path}` is not a supported image", hint=f"supported endings: {', '.join(IMAGE_SUFFIXES)}, DICOM folders"
    )


def _read_nifti(path: Path) -> Image:
    nii = nib.load(str(path))
    nheader = nii.header
    if isinstance(nii, nib.Cifti2Image) or 3000 <= int(np.asarray(nheader.get("intent_code", 0))) < 3100:
        raise DataError(
            f"`{path}` is a CIFTI file (values on brain surfaces and parcels, not an image on a voxel grid)",
            hint="satseg segments images on a grid: NIfTI, NRRD, MetaImage, DICOM, pictures",
        )
    dtype = nheader.get_data_dtype()
    if dtype.kind == "c":
        raise DataError(
            f"`{path}` holds complex voxels ({dtype}); satseg will not drop their imaginary part",
            hint="save the magnitude (or the real part) as a real-valued image",
        )
    with nib.openers.ImageOpener(str(path)) as f:  # as stored: nibabel's load quietly sets a pixdim of 0 to 1
        stored_header = type(nheader).from_fileobj(f, check=False)
    _check_nifti_geometry(path, stored_header)
    try:
        size, components, spacing, origin, direction = _sitk_nifti_geometry(path)
    except RuntimeError:  # NIfTI-2 and other headers ITK has no reader for: the same grid from nibabel
        size, components, spacing, origin, direction = _nibabel_nifti_geometry(path, nii)
    dims = min(len(size), 3)
    stored = dtype.itemsize * math.prod(nheader.get_data_shape())
    check_claimed_size(path, math.prod(size) * components, 1, None)
    voxels_file = path
    if path.name.lower().endswith(".hdr"):  # the voxels are in the .img beside it: a regular file, bounding the claim
        voxels_file = next((p for p in (path.with_suffix(".img"), path.with_suffix(".IMG")) if p.exists()), None)
        if voxels_file is None:
            raise DataError(f"`{path}` is a header without its `{path.with_suffix('.img').name}` beside it")
        check_regular_file(voxels_file, named_in=path)
    compressed = voxels_file.name.lower().endswith(".gz")
    check_claimed_size(path, stored, 1, voxels_file.stat().st_size, compressed=compressed)
    data = np.asanyarray(nii.dataobj)  # raises on truncated files
    if data.dtype.names:  # RGB24 / RGBA32: one channel per colour
        data = np.stack([data[name] for name in data.dtype.names], axis=-1)
    data = data.reshape(*size[:dims], -1, order="F")
    array = np.ascontiguousarray(np.transpose(data, tuple(range(dims, -1, -1))))
    header = NiftiHeader(
        raw=bytes(nheader.binaryblock),
        version=2 if isinstance(nheader, nib.Nifti2Header) else 1,
        spacing=tuple(reversed(spacing)),
        origin=tuple(origin),
        direction=direction,
    )
    return Image(array, header.spacing, header.origin, header.direction, source_format="nifti", nifti=header)


def _check_nifti_geometry(path: Path, header: nib.Nifti1Header) -> None:
    """Refuse a voxel size of 0 or NaN, or a NaN in the transform the file declares: never guess 1 mm."""
    shape = header.get_data_shape()
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)[1 : 1 + min(len(shape), 3)]
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise DataError(
            f"`{path}`: its header gives voxel size {[float(p) for p in pixdim]} (pixdim); satseg will not "
            "guess 1 mm (every volume and distance would be wrong)",
            hint="write the image again with its real voxel size",
        )
    fields = []
    if int(header["sform_code"]) > 0:
        fields += ["srow_x", "srow_y", "srow_z"]
    if int(header["qform_code"]) > 0:
        fields += ["quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"]
    bad = [name for name in fields if not np.all(np.isfinite(np.asarray(header[name], dtype=np.float64)))]
    if bad:
        raise DataError(
            f"`{path}`: its header's orientation holds NaN or infinity (`{bad[0]}`); the image has no valid grid",
            hint="write the image again with a valid affine",
        )


def _sitk_nifti_geometry(path: Path) -> tuple:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    dims = min(len(size), 3)
    if len(size) > 4 or (len(size) == 4 and reader.GetNumberOfComponents() > 1):
        raise DataError(f"`{path}` has {len(size)} dimensions with vector pixels; satseg reads at most (x, y, z, c)")
    if 0 in size:
        raise DataError(f"`{path}` has an empty axis: its header gives size {list(size)} (x, y, z, …)")
    full = np.asarray(reader.GetDirection()).reshape(len(size), len(size))
    direction = tuple(full[:dims, :dims].ravel())
    return size, reader.GetNumberOfComponents(), reader.GetSpacing()[:dims], reader.GetOrigin()[:dims], direction


def _nibabel_nifti_geometry(path: Path, nii: nib.Nifti1Image) -> tuple:
    """The grid of the affine nibabel reads (sform, else qform), in SimpleITK's LPS conventions."""
    size = tuple(int(s) for s in nii.header.get_data_shape())
    if len(size) > 4 or len(size) < 2:
        raise DataError(f"`{path}` has {len(size)} dimensions; satseg reads (x, y), (x, y, z) or (x, y, z, c)")
    if 0 in size:
        raise DataError(f"`{path}` has an empty axis: its header gives size {list(size)} (x, y, z, …)")
    dims = min(len(size), 3)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(nii.affine, dtype=np.float64)
    columns = lps[:dims, :dims]
    spacing = np.linalg.norm(columns, axis=0)
    if not np.all(np.isfinite(lps)) or np.any(spacing <= 0):
        raise DataError(f"`{path}`: its affine has no valid grid (voxel size {spacing.tolist()})")
    return size, 1, tuple(spacing), tuple(lps[:dims, 3]), tuple((columns / spacing).ravel())


def check_regular_file(path: Path, *, named_in: Path | None = None) -> None:
    """Refuse anything but a regular file (after links): a FIFO would hang the reader, ``/dev/zero`` never ends.

    Raises:
        DataError: naming ``path`` (and the header ``named_in`` that points at it).
    """
    where = f"`{named_in}` names data file `{path}`, which" if named_in else f"`{path}`"
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise DataError(f"{where} cannot be opened: {err.strerror or err}") from err
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise DataError(f"{where} is {kind}; satseg reads images from regular files only")


_HEADER_BYTES = 1 << 16  # NRRD and MetaImage headers are text lines before the voxels: a few hundred bytes
_NRRD_DATA_FILE = re.compile(rb"^data ?file:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)
_META_DATA_FILE = re.compile(rb"^ElementDataFile[ \t]*=[ \t]*(.*?)[ \t]*$", re.MULTILINE)


def referenced_data_file(header: Path) -> tuple[Path, bool]:
    """The file holding the voxels of a NRRD or MetaImage header, checked by the one rule for referenced files.

    A detached header (``.nhdr``, ``.mhd``, or a ``.nrrd``/``.mha`` naming a data file) may only point at a
    regular file inside its own folder, by a relative name: never an absolute path, ``..``, a link leading
    out, a device or a pipe. Lists and patterns of data files are not supported.

    Returns:
        ``(data file, whether its voxels may be compressed)``; the header itself when the voxels follow it.

    Raises:
        DataError: naming the header and the data file it points at.
    """
    with open(header, "rb") as f:
        head = f.read(_HEADER_BYTES)
    if header.name.lower().endswith((".nrrd", ".nhdr")):
        head = head.split(b"\n\n", 1)[0]
        match = _NRRD_DATA_FILE.search(head)
        encoding = re.search(rb"^encoding:[ \t]*(\S+)", head, re.IGNORECASE | re.MULTILINE)
        compressed = encoding is None or encoding.group(1).lower() not in (b"raw", b"ascii", b"text", b"txt")
    else:
        match = _META_DATA_FILE.search(head)
        compressed = re.search(rb"^CompressedData[ \t]*=[ \t]*True", head, re.IGNORECASE | re.MULTILINE) is not None
        if match is not None and match.group(1).upper() == b"LOCAL":
            match = None
    if match is None:
        return header, compressed
    name = match.group(1).decode("utf-8", "replace")
    refused = None
    if not name or name.upper().startswith("LIST") or "%" in name or " " in name.strip():
        refused = "a list or pattern of data files, which satseg does not read"
    elif Path(name).is_absolute() or name.startswith("~"):
        refused = "an absolute path"
    elif ".." in Path(name).parts:
        refused = "a path leading out of the header's folder (`..`)"
    if refused is None:
        target = header.parent / name
        inside = os.path.realpath(header.parent)
        if os.path.commonpath([inside, os.path.realpath(target)]) != inside:
            refused = "a link leading out of the header's folder"
    if refused is not None:
        raise DataError(
            f"`{header}` names data file `{name}`: {refused}; satseg only reads data files beside their header",
            hint="keep the header and its data file in one folder, with a relative name in the header",
        )
    check_regular_file(target, named_in=header)
    return target, compressed


def check_claimed_size(
    path: Path, claimed: int, itemsize: int, file_bytes: int | None, *, compressed: bool = True
) -> None:
    """Refuse, before anything is allocated, a header whose voxel count cannot be real.

    Args:
        path: the file (named in the error).
        claimed: elements the header announces (voxels times channels).
        itemsize: bytes per element at least.
        file_bytes: size of the file holding the voxels, or None when unknown.
        compressed: the voxels may be DEFLATE-compressed (at most about 1032:1).

    Raises:
        DataError: more than :data:`MAX_VOXELS` elements, or more bytes than the file can hold.
    """
    if claimed > MAX_VOXELS:
        raise DataError(
            f"`{path}`: its header claims {claimed:,} voxels, more than satseg's limit of {MAX_VOXELS:,}",
            hint="a corrupt or hostile header, or crop/downsample the image first",
        )
    if file_bytes is not None:
        room = file_bytes * (_MAX_COMPRESSION if compressed else 1) + (_SLACK_BYTES if compressed else 0)
        if claimed * itemsize > room:
            raise DataError(
                f"`{path}`: its header claims {claimed * itemsize:,} bytes of voxels but the file has {file_bytes:,} "
                "bytes (truncated, or a corrupt header)",
                hint="export the image again",
            )


# ---------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_output(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move what was written there onto ``path``.

    The image flavour of :func:`satseg.atomic.atomic_folder`: files written beside the temporary path (the
    ``.raw`` of a ``.mhd``) are moved too, and a folder (DICOM series) replaces the old one.

    Args:
        path: the final file or folder.
        overwrite: if False, refuse when ``path`` exists.

    Raises:
        ConfigError: if ``path`` exists and ``overwrite`` is False, or cannot be written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"`{path}` already exists", hint="choose another path or allow overwriting")
    with atomic_folder(path) as tmp_dir:
        yield tmp_dir / path.name


def check_image_path(path: str | Path) -> str:
    """The image ending of an output path (``""`` for a DICOM folder); refuse an unknown ending before any work.

    Raises:
        ConfigError: ``path`` has an ending that is not an image format.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix in _READ_ONLY:
        raise ConfigError(f"`{path}`: satseg reads `{suffix}` files but does not write them", hint="write .nii.gz")
    if not suffix and path.suffix:
        raise ConfigError(f"`{path}`: unknown image ending `{path.suffix}`", hint=f"use one of {IMAGE_SUFFIXES}")
    return suffix


def _storable(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype in (np.int64, np.uint64) and array.size and array.min() >= -(2**31) and array.max() < 2**31:
        return array.astype(np.int32)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def write_image(
    image: Image,
    path: str | Path,
    *,
    overwrite: bool = False,
    palette: Sequence[tuple[int, int, int]] | None = None,
) -> None:
    """Write ``image`` atomically; the format follows the ending (no ending: a DICOM series folder).

    NIfTI: if the image still has the grid of the NIfTI header it was read with, that header is reused (same
    affine, sform/qform codes); otherwise SimpleITK writes a fresh header from the geometry.

    Args:
        image: the image to write.
        path: ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``, ``.png``/``.jpg``/``.bmp``/``.tif``, or
            a folder path without ending (DICOM series, integer 3D images only).
        overwrite: replace an existing output.
        palette: pictures only: write a label map as palette indices, label ``i`` in colour ``palette[i]``
            (visible in any viewer; reading it back gives the labels).

    Raises:
        ConfigError: the path exists and ``overwrite`` is False.
        DataError: the image cannot be stored in that format (e.g. float data as PNG).
    """
    path = Path(path)
    suffix = check_image_path(path)
    image = replace(image, array=_storable(np.asarray(image.array)))
    with atomic_output(path, overwrite=overwrite) as tmp:
        if suffix in _NIFTI and _header_fits(image):
            _write_nifti_with_header(image, tmp)
        elif suffix in _NIFTI + _ITK:
            sitk.WriteImage(to_sitk(image), str(tmp), useCompression=suffix != ".nii")
        else:
            from satseg.data import formats  # pillow and the DICOM writer: not on a volume's start-up

            if suffix in _PICTURES:
                formats.write_picture(image, tmp, palette)
            else:
                formats.write_dicom(image, tmp)


def page_count(path: str | Path) -> int:
    """The number of pages of a multipage TIFF stack; 1 for any other image (and for a file pillow cannot open:
    :func:`read_image` then says what is wrong with it)."""
    path = Path(path)
    if _suffix(path) not in (".tif", ".tiff") or not path.is_file():
        return 1
    from satseg.data import formats

    try:
        return len(formats.picture_pages(path))
    except Exception:  # noqa: BLE001 - reported by read_image, in its words
        return 1


def write_stack(
    pages: Sequence[Image],
    path: str | Path,
    *,
    overwrite: bool = False,
    palette: Sequence[tuple[int, int, int]] | None = None,
) -> None:
    """Write 2D pictures as the pages of one multipage TIFF stack, atomically (see :func:`write_image`).

    Raises:
        ConfigError: ``path`` is not a ``.tif``/``.tiff``, or exists and ``overwrite`` is False.
        DataError: a page is not a 2D grey or RGB picture.
    """
    path = Path(path)
    if _suffix(path) not in (".tif", ".tiff"):
        raise ConfigError(f"`{path}`: a stack of pages is written as one .tif", hint=f"use {image_stem(path)}.tif")
    from satseg.data import formats

    pages = [replace(page, array=_storable(np.asarray(page.array))) for page in pages]
    with atomic_output(path, overwrite=overwrite) as tmp:
        formats.write_picture_stack(pages, tmp, palette)


def _header_fits(image: Image) -> bool:
    h = image.nifti
    return (
        h is not None
        and np.allclose(h.spacing, image.spacing, rtol=0, atol=1e-6)
        and np.allclose(h.origin, image.origin, rtol=0, atol=1e-6)
        and np.allclose(h.direction, image.direction, rtol=0, atol=1e-6)
    )


def _write_nifti_with_header(image: Image, path: Path) -> None:
    header = image.nifti.to_nibabel()
    dims = image.spatial_dims
    data = np.transpose(image.array, tuple(range(dims, -1, -1)))  # (x, y, z, C)
    if image.num_channels == 1:
        data = data[..., 0]
    header.set_data_dtype(data.dtype)
    header["cal_min"], header["cal_max"] = 0, 0
    cls = nib.Nifti2Image if image.nifti.version == 2 else nib.Nifti1Image
    out = cls(data, None, header=header)
    out.header.set_slope_inter(1.0, 0.0)
    nib.save(out, str(path))
