"""Volume I/O: the only module that knows file axis order (ARCHITECTURE.md section 2).

In memory an image is ``float32 (C, Z, Y, X)``, a label map ``uint8 (Z, Y, X)`` and an
instance map ``int32 (Z, Y, X)``; 2D data has ``Z == 1``. Files come in other orders:

* NIfTI (``.nii``, ``.nii.gz``) and FreeSurfer MGH (``.mgz``, ``.mgh``), nibabel: arrays
  are ``(x, y, z[, c])``; transposed here. Both affines map voxel (x, y, z) to RAS.
* MetaImage / NRRD (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``) and DICOM series (a folder of
  DICOM files, whatever their names), SimpleITK: arrays are already ``(z, y, x)`` but
  spacing, origin and direction are ``(x, y, z)`` and in LPS world coordinates; converted
  to the RAS affine. A folder holding several series is read only with ``series=`` naming
  one (:func:`list_dicom_series` lists them).
* PNG (Pillow) and TIFF (tifffile) microscopy images: ``(y, x[, samples])`` planes,
  TIFF stacks ``(z, y, x)``; spacing from the TIFF resolution tags / ImageJ metadata.

:class:`Geometry` keeps the voxel-to-world mapping as a nibabel-style affine: it maps the
voxel index ``(x, y, z)`` -- the array index ``(z, y, x)`` reversed -- to RAS+ world
coordinates in mm.

Output files are always written atomically: data go to a temporary file in the
destination folder, which is renamed over the destination only once complete.
"""

from __future__ import annotations

import contextlib
import functools
import locale
import logging
import math
import os
import shutil
import struct
import tempfile
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from medseg import _dicom, _limits
from medseg._dicom import DicomSeries
from medseg.typing import PathLike, Shape3, Spacing3

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
MGH_SUFFIXES: tuple[str, ...] = (".mgz", ".mgh")
ITK_SUFFIXES: tuple[str, ...] = (".mha", ".mhd", ".nrrd", ".nhdr")
PNG_SUFFIXES: tuple[str, ...] = (".png",)
OME_TIFF_SUFFIXES: tuple[str, ...] = (".ome.tif", ".ome.tiff")
TIFF_SUFFIXES: tuple[str, ...] = (*OME_TIFF_SUFFIXES, ".tif", ".tiff")
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    NIFTI_SUFFIXES + MGH_SUFFIXES + ITK_SUFFIXES + PNG_SUFFIXES + TIFF_SUFFIXES
)
"""File suffixes read and written here. A DICOM series is a folder (a path without suffix)."""


def split_suffix(name: str) -> tuple[str, str]:
    """``"t1.nii.gz"`` -> ``("t1", ".nii.gz")``: the stem and the image suffix, in lower case.

    A name without an image suffix (e.g. a DICOM folder) keeps it all.

    Example:
        >>> split_suffix("IBSR_01_t1.NII.GZ"), split_suffix("series")
        (('IBSR_01_t1', '.nii.gz'), ('series', ''))
    """
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: len(name) - len(suffix)], suffix
    return name, ""


DICOM_SLICE_SUFFIX = ".dcm"
"""The suffix medseg gives the DICOM files it writes; read files may have any name."""

_FORMATS = {
    "nifti": NIFTI_SUFFIXES,
    "mgh": MGH_SUFFIXES,
    "itk": ITK_SUFFIXES,
    "png": PNG_SUFFIXES,
    "tiff": TIFF_SUFFIXES,
}
_FORMAT_NAMES = {
    "nifti": "NIfTI",
    "mgh": "FreeSurfer MGH",
    "itk": "MetaImage or NRRD",
    "png": "PNG",
    "tiff": "TIFF",
    "dicom": "a DICOM series",
}
# Formats whose header names a separate data file (``x.mhd`` + ``x.zraw``).
_DETACHED_SUFFIXES = (".mhd", ".nhdr")
# LPS (ITK, DICOM) <-> RAS (NIfTI, nibabel): flip the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# NIfTI ``xyzt_units`` spatial unit -> mm; "unknown" is read as mm, as nibabel and ITK do.
_NIFTI_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}
# NIfTI ``xyzt_units`` temporal units that make a 4th axis time ("hz", "ppm", "rads" are
# spectral); nibabel names.
_NIFTI_TIME_UNITS = ("sec", "msec", "usec")
# NIfTI intent codes: none, and NIFTI_INTENT_TIME_SERIES (the 4th/5th axis is time).
_NIFTI_INTENT_NONE = 0
_NIFTI_INTENT_TIME_SERIES = 2001
# FreeSurfer MGH data types (nibabel 5 adds uint16, which older FreeSurfer cannot read).
_MGH_DTYPES = (np.uint8, np.int16, np.int32, np.float32)
# ImageJ ``unit`` metadata -> mm.
_IMAGEJ_MM_PER_UNIT = {
    "mm": 1.0,
    "cm": 10.0,
    "m": 1000.0,
    "um": 1e-3,
    "micron": 1e-3,
    "microns": 1e-3,
    "\u00b5m": 1e-3,
    "\u03bcm": 1e-3,
    "nm": 1e-6,
}
_LABEL_MAX = 255
_INSTANCE_MAX = int(np.iinfo(np.int32).max)
_UINT16_MAX = int(np.iinfo(np.uint16).max)


def _full_suffix(path: Path) -> str:
    """Return the suffix including a compression suffix, e.g. ``.nii.gz``."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in {".gz", ".bz2"}:
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def check_output_path(path: PathLike, *, overwrite: bool = False) -> Path:
    """Check that ``path`` may be written.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
        FileNotFoundError: if the parent folder does not exist.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> check_output_path(d / "out.csv").name
        'out.csv'
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"output {str(path)!r} must not exist, got an existing file; "
            "pass --overwrite (overwrite=True) to replace it"
        )
    parent = path.parent
    if not parent.exists():
        raise FileNotFoundError(
            f"output folder {str(parent)!r} must exist, got a missing folder "
            f"(for output {str(path)!r}); create it first"
        )
    if not parent.is_dir():
        raise NotADirectoryError(
            f"output folder {str(parent)!r} must be a folder, got a file (for output {str(path)!r})"
        )
    try:  # a real probe: permissions, read-only mounts and pseudo file systems alike
        before = os.stat(parent)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
        with contextlib.suppress(OSError):  # the probe leaves the folder as it found it
            os.utime(parent, ns=(before.st_atime_ns, before.st_mtime_ns))
    except OSError as err:
        reason = (err.strerror or type(err).__name__).lower()
        raise PermissionError(
            f"output {str(path)!r} must be writable, got {reason} for its folder "
            f"{str(parent)!r}; choose another -o"
        ) from None
    return path


@contextlib.contextmanager
def atomic_output(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary file keeps the destination's suffix (e.g. ``.nii.gz``) so that
    writers choosing the format from the suffix work unchanged. If the body raises,
    the temporary file is removed and ``path`` is left untouched.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_output(out) as tmp:
        ...     _ = tmp.write_text("done")
        >>> out.read_text()
        'done'
    """
    path = check_output_path(path, overwrite=overwrite)
    suffix = _full_suffix(path)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not overwrite and path.exists():  # appeared while we were writing
            raise FileExistsError(
                f"output {str(path)!r} must not exist, got a file created during the write; "
                "pass --overwrite to replace it"
            )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------------------
# Geometry and volumes


class GeometryError(ValueError):
    """A voxel grid that cannot be used: non-positive or non-finite spacing, a singular or
    non-finite affine."""


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where the voxels of a volume lie in the world.

    Attributes:
        spacing_mm: Voxel size in (z, y, x) order, in mm. For NIfTI, the header zooms.
        affine: float64 (4, 4), read-only. Maps the voxel index (x, y, z) -- the array
            index (z, y, x) reversed -- to RAS+ world coordinates in mm (nibabel convention).
        header: The source file's header, kept so that writing a NIfTI file reproduces it
            (a nibabel header), or the source's SimpleITK / DICOM metadata (a dict, for
            reference only), or None. Ignored by comparisons.

    ``==`` means spacing and affine are exactly equal; :meth:`same_as` allows a tolerance.

    Example:
        >>> g = Geometry.from_spacing((3.0, 1.0, 0.5))
        >>> g.affine.diagonal().tolist()
        [0.5, 1.0, 3.0, 1.0]
        >>> g.same_as(Geometry((3.0, 1.0, 0.5), np.diag([0.5, 1.0, 3.0005, 1.0])))
        True
    """

    spacing_mm: Spacing3
    affine: npt.NDArray[np.float64]
    header: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in np.ravel(self.spacing_mm))
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise GeometryError(
                f"spacing_mm must be 3 positive finite sizes in mm (z, y, x), "
                f"got {self.spacing_mm!r}"
            )
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise GeometryError(f"affine must have shape (4, 4), got shape {affine.shape}")
        if not np.all(np.isfinite(affine)) or not np.array_equal(affine[3], [0, 0, 0, 1]):
            raise GeometryError(
                f"affine must be finite with last row (0, 0, 0, 1), got {affine.tolist()}"
            )
        # Invertible, whatever the voxel size (nm to m): compare the volume spanned by the
        # three voxel axes with the product of their lengths.
        lengths = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(lengths == 0) or abs(np.linalg.det(affine[:3, :3])) < 1e-6 * lengths.prod():
            raise GeometryError(f"affine must be invertible, got {_format_affine(affine)}")
        affine.setflags(write=False)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "affine", affine)

    @classmethod
    def from_spacing(cls, spacing_mm: Spacing3) -> Geometry:
        """Make an axis-aligned geometry with its origin at the world origin.

        Used for files without orientation (PNG, TIFF) and for synthetic data.

        Args:
            spacing_mm: Voxel size in (z, y, x) order, in mm.

        Example:
            >>> Geometry.from_spacing((2.0, 1.0, 0.5)).affine[:3, :3].diagonal().tolist()
            [0.5, 1.0, 2.0]
        """
        spacing = tuple(float(s) for s in np.ravel(spacing_mm))
        if len(spacing) != 3:
            raise ValueError(f"spacing_mm must be 3 sizes in mm (z, y, x), got {spacing_mm!r}")
        z, y, x = spacing
        return cls((z, y, x), np.diag([x, y, z, 1.0]))

    def same_as(self, other: Geometry, *, atol_mm: float = 1e-3) -> bool:
        """Return whether spacing and affine agree within ``atol_mm`` (mm, per entry).

        Example:
            >>> g = Geometry.from_spacing((1.0, 1.0, 1.0))
            >>> g.same_as(Geometry.from_spacing((1.0, 1.0, 1.01)))
            False
            >>> g.same_as(Geometry.from_spacing((1.0, 1.0, 1.01)), atol_mm=0.05)
            True
        """
        return bool(
            np.allclose(self.spacing_mm, other.spacing_mm, rtol=0.0, atol=atol_mm)
            and np.allclose(self.affine, other.affine, rtol=0.0, atol=atol_mm)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return self.spacing_mm == other.spacing_mm and np.array_equal(self.affine, other.affine)

    def __hash__(self) -> int:
        return hash((self.spacing_mm, self.affine.tobytes()))


@dataclass(frozen=True, eq=False)
class Volume:
    """An array read from (or to be written to) a file, with its geometry.

    Attributes:
        array: An image, float32 (C, Z, Y, X); a label map, uint8 (Z, Y, X); or an
            instance map, int32 (Z, Y, X). See ARCHITECTURE.md section 2.
        geometry: Voxel spacing and affine of the spatial axes (Z, Y, X).
        path: The file or DICOM folder it was read from, or None.

    Example:
        >>> v = Volume(np.zeros((1, 2, 3, 4), np.float32), Geometry.from_spacing((1, 1, 1)))
        >>> v.spatial_shape
        (2, 3, 4)
    """

    array: np.ndarray
    geometry: Geometry
    path: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray) or self.array.ndim not in (3, 4):
            shape = getattr(self.array, "shape", type(self.array).__name__)
            raise ValueError(f"array must be (C, Z, Y, X) or (Z, Y, X), got {shape}")
        _check_geometry(self.geometry)

    @property
    def spatial_shape(self) -> Shape3:
        """The shape (Z, Y, X) of the spatial axes, in voxels."""
        z, y, x = self.array.shape[-3:]
        return (int(z), int(y), int(x))


@dataclass(frozen=True, eq=False)
class VolumeInfo:
    """What a file says about its volume, read without its voxel data.

    Attributes:
        spatial_shape: (Z, Y, X), in voxels.
        num_channels: C, after dropping an all-opaque alpha channel (not checked here).
            A time series counts its time points here, as the readers return them.
        geometry: Voxel spacing and affine.
        path: The file or DICOM folder.
        num_timepoints: T > 1 when the file is a 4D time series (e.g. fMRI) rather than
            a multi-channel image, else 1. Decided from the header (see
            :func:`read_volume_info`); the readers still return T as channels.
    """

    spatial_shape: Shape3
    num_channels: int
    geometry: Geometry
    path: Path | None = None
    num_timepoints: int = 1

    @property
    def is_time_series(self) -> bool:
        """Whether the file is a time series (``num_timepoints > 1``), not channels."""
        return self.num_timepoints > 1


class _Raw(NamedTuple):
    """A volume as read, before the image / label conversion."""

    array: np.ndarray | None  # (C, Z, Y, X), file dtype; None when only the header was read
    shape: tuple[int, int, int, int]  # (C, Z, Y, X)
    geometry: Geometry
    num_timepoints: int = 1  # T > 1: C holds the time points of a time series


# --------------------------------------------------------------------------------------
# Public reading


def read_image(path: PathLike, *, allow_2d: bool = True, series: str | int | None = None) -> Volume:
    """Read an image as float32 (C, Z, Y, X).

    Args:
        path: A NIfTI, FreeSurfer MGH, MetaImage, NRRD, PNG or TIFF file, or a folder
            holding DICOM files (any file names).
        allow_2d: If False, a 2D image (Z == 1) is an error.
        series: For a DICOM folder: the series to read, by SeriesInstanceUID (str) or
            SeriesNumber (int or numeric str). None reads the folder's only series; a
            folder with several series then is an error that lists them. Must be None
            for other inputs.

    Returns:
        The image: float32 (C, Z, Y, X), intensities as stored (NIfTI scaling applied),
        with its geometry. PNG and TIFF RGB give C == 3; an alpha channel that is fully
        opaque is dropped. A 4D NIfTI / MGH file gives its 4th axis as C, also for a time
        series (check :attr:`VolumeInfo.num_timepoints` to refuse those).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        TypeError: if ``series`` is not None, a str or an int.
        ValueError: for an unsupported suffix, a folder without DICOM files, an unreadable
            file, NaN/Inf intensities, transparent pixels, unsupported axes, a 2D image
            when ``allow_2d`` is False, or a DICOM series that ``series`` does not pick
            out (several series and no ``series``, or no match).

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "image.nii.gz"
        >>> image = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
        >>> _ = write_image(out, image, Geometry.from_spacing((2.0, 1.0, 1.0)))
        >>> read_image(out).array.shape, read_image(out).geometry.spacing_mm
        ((1, 2, 3, 4), (2.0, 1.0, 1.0))
    """
    path = Path(path)
    raw = _read_raw(path, "image", load_data=True, indexed=False, series=series)
    return Volume(_image_array(raw, path, allow_2d=allow_2d), raw.geometry, path)


def read_label(path: PathLike, *, allow_2d: bool = True, series: str | int | None = None) -> Volume:
    """Read a label map as uint8 (Z, Y, X).

    Args:
        path: A NIfTI, MGH, MetaImage, NRRD, PNG or TIFF file, or a DICOM folder.
            Palette PNG / TIFF files give their palette indices.
        allow_2d: If False, a 2D label map (Z == 1) is an error.
        series: For a DICOM folder, the series to read, as in :func:`read_image`.

    Returns:
        The label map: uint8 (Z, Y, X), class values 0..255 with 0 as background.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unreadable file, more than one channel, values that are not
            integers in 0..255 (use :func:`read_instances` for instance maps), 2D input
            when ``allow_2d`` is False, or a DICOM series ``series`` does not pick out.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "label.png"
        >>> label = np.array([[[0, 1, 2], [3, 2, 1]]], dtype=np.uint8)
        >>> _ = write_label(out, label, Geometry.from_spacing((1.0, 1.0, 1.0)))
        >>> read_label(out).array.tolist()
        [[[0, 1, 2], [3, 2, 1]]]
    """
    path = Path(path)
    values = _read_single_channel(path, "label", allow_2d=allow_2d, series=series)
    return Volume(_label_array(values.array, path), values.geometry, path)


def read_instances(
    path: PathLike, *, allow_2d: bool = True, series: str | int | None = None
) -> Volume:
    """Read an instance map (one value per object, e.g. uint16 PNG) as int32 (Z, Y, X).

    Args:
        path: Any supported file or DICOM folder; typically a 16-bit PNG.
        allow_2d: If False, a 2D map (Z == 1) is an error.
        series: For a DICOM folder, the series to read, as in :func:`read_image`.

    Returns:
        The instance map: int32 (Z, Y, X), 0 = background, 1..N = objects.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unreadable file, more than one channel, or values that are
            not integers in 0..2**31 - 1.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "nuclei.png"
        >>> instances = np.array([[[0, 300, 65535]]], dtype=np.int32)
        >>> _ = write_instances(out, instances, Geometry.from_spacing((1.0, 1.0, 1.0)))
        >>> read_instances(out).array.tolist()
        [[[0, 300, 65535]]]
    """
    path = Path(path)
    values = _read_single_channel(path, "instance map", allow_2d=allow_2d, series=series)
    return Volume(_instance_array(values.array, path), values.geometry, path)


def read_volume_info(path: PathLike, *, series: str | int | None = None) -> VolumeInfo:
    """Read shape and geometry from a file's header, without its voxel data where possible.

    NIfTI, MGH, MetaImage/NRRD, PNG and TIFF are read header-only, so a truncated file may
    pass here; a DICOM series is read whole.

    A 4D NIfTI file ``(x, y, z, t)`` with ``t > 1`` is a time series (``num_timepoints``
    is ``t``) when its header says so: the intent is "time series", or the 4th axis has a
    time unit (``xyzt_units`` sec, msec or usec), or it has no unit and a step
    ``pixdim[4]`` other than 0 and 1 (1 is nibabel's default for any 4D image, so it says
    nothing). Otherwise, and always with a 5th (vector) axis, the 4th axis is channels.
    A multi-frame MGH file is a time series when its TR is set (> 0). Other formats are
    never time series.

    Args:
        path: Any supported file or DICOM folder.
        series: For a DICOM folder, the series to read, as in :func:`read_image`.

    Returns:
        The spatial shape (Z, Y, X), number of channels, geometry and number of time points.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unsupported suffix, an unreadable header or a DICOM series
            ``series`` does not pick out.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "label.mha"
        >>> label = np.zeros((2, 3, 4), dtype=np.uint8)
        >>> _ = write_label(out, label, Geometry.from_spacing((2.0, 1.0, 1.0)))
        >>> read_volume_info(out).spatial_shape
        (2, 3, 4)
    """
    path = Path(path)
    raw = _read_raw(path, "file", load_data=False, indexed=True, series=series)
    num_channels, z, y, x = raw.shape
    return VolumeInfo((z, y, x), num_channels, raw.geometry, path, raw.num_timepoints)


def is_dicom_folder(path: PathLike) -> bool:
    """Return whether ``path`` is a folder holding DICOM files (of any name).

    A file is DICOM when its bytes 128:132 are ``b"DICM"`` (the DICOM Part 10 marker);
    the file name does not matter (``IM0001``, ``1.2.840...``, ``x.dcm``). Only the
    first 64 files in directory order are opened, so a huge folder stays fast; a
    ``DICOMDIR`` index and subfolders do not count. Never raises.

    Args:
        path: Any path.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> is_dicom_folder(folder)
        False
        >>> _ = (folder / "IM0001").write_bytes(bytes(128) + b"DICM" + bytes(16))
        >>> is_dicom_folder(folder), is_dicom_folder(folder / "IM0001")
        (True, False)
    """
    return _dicom.probe_folder(Path(path))


def dicom_series_files(folder: PathLike, series: str | int | None = None) -> list[Path]:
    """The files of the series that :func:`read_image` reads from a DICOM folder, in slice
    order: ``series`` (a SeriesInstanceUID or SeriesNumber) or the folder's only series.

    Raises:
        ValueError: no series, or several and ``series`` does not pick one.
    """
    folder = Path(folder)
    found = _scan_dicom_series(folder, "input")
    if not found:
        raise ValueError(f"input {str(folder)!r} must hold a DICOM image series, got none")
    return list(_dicom.choose_series(found, series, folder=folder, what="input").files)


def list_dicom_series(folder: PathLike) -> list[DicomSeries]:
    """List the DICOM series in a folder (not its subfolders), from their headers.

    No pixel data is read: GDCM groups the files by SeriesInstanceUID and one header per
    series gives its SeriesNumber, SeriesDescription, modality and slice size.

    Args:
        folder: A folder holding DICOM files of any name.

    Returns:
        The series, sorted by SeriesNumber (series without one last), then UID; empty
        if the folder holds no DICOM image series.

    Raises:
        FileNotFoundError: if ``folder`` does not exist.
        ValueError: if ``folder`` is not a folder, or GDCM cannot scan it.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp()) / "series"
        >>> image = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
        >>> _ = write_image(folder, image, Geometry.from_spacing((2.0, 1.0, 1.0)))
        >>> [(s.number, s.description, s.num_files, s.rows, s.columns)
        ...  for s in list_dicom_series(folder)]
        [(1, 'written by medseg', 2, 3, 4)]
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"folder {str(folder)!r} must exist, got a missing path")
    if not folder.is_dir():
        raise ValueError(
            f"folder {str(folder)!r} must be a folder of DICOM files, got a file; "
            "pass the folder that holds it"
        )
    return _scan_dicom_series(folder, "folder")


# --------------------------------------------------------------------------------------
# Public writing


def write_image(
    path: PathLike, image: np.ndarray, geometry: Geometry, *, overwrite: bool = False
) -> Path:
    """Write an image atomically; the format follows the suffix.

    NIfTI, MetaImage, NRRD and TIFF store float32 exactly. PNG stores 2D images whose
    values are integers in 0..255 (C == 1 or 3) or 0..65535 (C == 1). A path without a
    suffix is written as a DICOM series folder, for one-channel images whose values are
    integers in -32768..32767 (stored as int16).

    Args:
        path: Output file (or DICOM folder). Its parent folder must exist.
        image: Intensities, float32 (C, Z, Y, X); other real dtypes are cast to float32.
        geometry: Spacing and affine to store, e.g. the source image's. A NIfTI source
            header in ``geometry.header`` is copied into NIfTI output.
        overwrite: Replace an existing output.

    Returns:
        ``path``.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
        ValueError: for an unsupported suffix, a bad shape, NaN/Inf values, or values the
            format cannot store. Nothing is written then.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "image.tif"
        >>> image = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) / 8
        >>> _ = write_image(out, image, Geometry.from_spacing((2.0, 0.5, 0.5)))
        >>> np.array_equal(read_image(out).array, image)
        True
    """
    path = Path(path)
    fmt = _output_format(path, "image")
    _check_geometry(geometry)
    image = _as_image_array(image)
    _check_writable_layout(image.shape, image.shape, geometry, fmt, path, "image")
    data = _image_for_format(image, fmt, path)
    return _write(path, data, geometry, fmt, overwrite=overwrite)


def write_label(
    path: PathLike, label: np.ndarray, geometry: Geometry, *, overwrite: bool = False
) -> Path:
    """Write a label map atomically as uint8; the format follows the suffix.

    NIfTI output copies the source header in ``geometry.header`` (qform/sform codes, units,
    affine, zooms) with the data type set to uint8, so the geometry survives exactly.
    PNG needs Z == 1. A path without a suffix (a DICOM series folder) is refused: a label
    map goes to DICOM as a DICOM Segmentation of its source series
    (:func:`medseg.dicom_seg.write_dicom_seg`, ``--output-format dicom-seg``), which
    viewers link to the scan; the DICOM image writer is for images.

    Args:
        path: Output file. Its parent folder must exist.
        label: Class values 0..255, uint8 (Z, Y, X); any integer dtype is cast.
        geometry: Spacing and affine to store, normally the source image's.
        overwrite: Replace an existing output.

    Returns:
        ``path``.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
        ValueError: for an unsupported suffix, a bad shape or dtype, or values outside
            0..255. Nothing is written then.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "label.nii.gz"
        >>> label = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
        >>> _ = write_label(out, label, Geometry.from_spacing((2.0, 1.0, 1.0)))
        >>> np.array_equal(read_label(out).array, label)
        True
    """
    path = Path(path)
    fmt = _output_format(path, "label")
    _refuse_dicom_labels(path, fmt, "label map")
    _check_geometry(geometry)
    values = _as_integer_map(label, "label", high=_LABEL_MAX)
    _check_writable_layout((1, *values.shape), values.shape, geometry, fmt, path, "label")
    data = values.astype(np.uint8)[None]  # (Z, Y, X) -> (1, Z, Y, X)
    return _write(path, data, geometry, fmt, overwrite=overwrite)


def write_instances(
    path: PathLike, instances: np.ndarray, geometry: Geometry, *, overwrite: bool = False
) -> Path:
    """Write an instance map atomically: uint16 when the maximum allows, else int32.

    PNG and TIFF hold at most 65535 instances; NIfTI, MetaImage and NRRD hold up to
    2**31 - 1. A DICOM folder is refused, as by :func:`write_label`.

    Args:
        path: Output file. Its parent folder must exist.
        instances: Object ids, int32 (Z, Y, X), 0 = background; any integer dtype is cast.
        geometry: Spacing and affine to store.
        overwrite: Replace an existing output.

    Returns:
        ``path``.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
        ValueError: for a bad shape or dtype, negative ids, or more ids than the format
            holds. Nothing is written then.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "nuclei.tif"
        >>> instances = np.arange(24, dtype=np.int32).reshape(2, 3, 4) * 1000
        >>> _ = write_instances(out, instances, Geometry.from_spacing((1.0, 1.0, 1.0)))
        >>> np.array_equal(read_instances(out).array, instances)
        True
    """
    path = Path(path)
    fmt = _output_format(path, "instance map")
    _refuse_dicom_labels(path, fmt, "instance map")
    _check_geometry(geometry)
    values = _as_integer_map(instances, "instances", high=_INSTANCE_MAX)
    _check_writable_layout((1, *values.shape), values.shape, geometry, fmt, path, "instances")
    max_id = int(values.max(initial=0))
    data: np.ndarray
    if max_id <= _UINT16_MAX:
        data = values.astype(np.uint16)[None]
    elif fmt in ("png", "tiff", "dicom"):
        raise ValueError(
            f"instances written to {str(path)!r} must be at most {_UINT16_MAX} for "
            f"{_FORMAT_NAMES[fmt]}, got maximum id {max_id}; write .nii.gz instead"
        )
    else:
        data = values.astype(np.int32)[None]
    return _write(path, data, geometry, fmt, overwrite=overwrite)


# --------------------------------------------------------------------------------------
# Public in-memory NIfTI (nibabel images, no file)

NIFTI_KINDS: tuple[str, ...] = ("image", "label", "instances")
"""What :func:`volume_from_nifti` reads a nibabel image as."""


def to_nifti(data: np.ndarray, geometry: Geometry) -> Any:
    """Make an in-memory NIfTI image of an array, as :func:`write_image` would store it.

    The nibabel image holds ``(x, y, z)`` data (``(x, y, z, c)`` for C > 1) and the
    geometry's affine; a NIfTI source header in ``geometry.header`` is copied (units,
    qform/sform codes) with the data type set to ``data``'s, exactly as the writers do.
    The data are a copy: changing ``data`` later does not change the image.

    Args:
        data: A label or instance map, integer ``(Z, Y, X)`` (e.g. uint8), or an image,
            real ``(C, Z, Y, X)`` (e.g. float32); the dtype is kept.
        geometry: Spacing and affine, e.g. the source image's.

    Returns:
        A ``nibabel.Nifti1Image`` (a ``Nifti2Image`` when the source header was NIfTI-2).

    Raises:
        TypeError: if ``data`` is not a numpy array or ``geometry`` not a Geometry.
        ValueError: if ``data`` is not ``(Z, Y, X)`` or ``(C, Z, Y, X)`` of real numbers.

    Example:
        >>> labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)  # (Z, Y, X)
        >>> img = to_nifti(labels, Geometry.from_spacing((2.0, 1.0, 0.5)))
        >>> img.shape, img.get_data_dtype().name, [float(s) for s in img.header.get_zooms()]
        ((4, 3, 2), 'uint8', [0.5, 1.0, 2.0])
        >>> int(np.asanyarray(img.dataobj)[3, 2, 1]) == int(labels[1, 2, 3])
        True
    """
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy array, got {type(data).__name__}")
    if data.ndim not in (3, 4) or data.size == 0 or data.dtype.kind not in "biuf":
        raise ValueError(
            f"data must be a non-empty real array, (Z, Y, X) map or (C, Z, Y, X) image, got "
            f"shape {data.shape} and dtype {data.dtype}"
        )
    _check_geometry(geometry)
    stored = data.astype(np.uint8) if data.dtype.kind == "b" else data
    czyx = stored[None] if stored.ndim == 3 else stored  # (Z, Y, X) -> (1, Z, Y, X)
    return _nifti_image(np.array(czyx, copy=True), geometry)


def volume_from_nifti(image: Any, *, kind: str = "image", allow_2d: bool = True) -> Volume:
    """Convert an in-memory nibabel NIfTI image as :func:`read_image` etc. read files.

    Args:
        image: A ``nibabel.Nifti1Image`` (or ``Nifti2Image``), e.g. from ``nibabel.load``
            or ``nilearn``; its data are ``(x, y, z[, c])``.
        kind: ``"image"`` (as :func:`read_image`), ``"label"`` (:func:`read_label`) or
            ``"instances"`` (:func:`read_instances`).
        allow_2d: If False, 2D data (Z == 1) is an error.

    Returns:
        An image float32 ``(C, Z, Y, X)``, a label map uint8 ``(Z, Y, X)`` or an instance
        map int32 ``(Z, Y, X)``, with the geometry (spacing in mm, affine, the header kept
        for writing) and ``path`` None.

    Raises:
        TypeError: if ``image`` is not a nibabel NIfTI image.
        ValueError: for a bad ``kind`` or the data problems the readers report.

    Example:
        >>> import nibabel as nib
        >>> xyz = np.arange(24, dtype=np.int16).reshape(4, 3, 2)  # (x, y, z)
        >>> v = volume_from_nifti(nib.Nifti1Image(xyz, np.diag([0.5, 1.0, 2.0, 1.0])))
        >>> v.array.shape, v.array.dtype.name, v.geometry.spacing_mm
        ((1, 2, 3, 4), 'float32', (2.0, 1.0, 0.5))
    """
    import nibabel as nib

    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise TypeError(
            f"image must be a nibabel.Nifti1Image, got {type(image).__name__}; convert other "
            "nibabel images with nibabel.Nifti1Image(numpy.asarray(img.dataobj), img.affine)"
        )
    name = Path("<nibabel image>")  # names the image in messages
    return _in_memory(
        lambda what: _raw_from_nifti(image, name, what, load_data=True), name, kind, allow_2d
    )


def _in_memory(read: Callable[[str], _Raw], name: Path, kind: str, allow_2d: bool) -> Volume:
    """An in-memory image converted by ``read(what)`` as the file readers of ``kind`` do."""
    if kind not in NIFTI_KINDS:
        raise ValueError(f"kind must be one of {', '.join(NIFTI_KINDS)}, got {kind!r}")
    what = {"image": "image", "label": "label", "instances": "instance map"}[kind]
    raw = read(what)
    if kind == "image":
        return Volume(_image_array(raw, name, allow_2d=allow_2d), raw.geometry)
    values = _single_channel_array(raw, name, what, allow_2d=allow_2d)
    if kind == "label":
        return Volume(_label_array(values, name), raw.geometry)
    return Volume(_instance_array(values, name), raw.geometry)


def volume_from_sitk(image: Any, *, kind: str = "image", allow_2d: bool = True) -> Volume:
    """Convert an in-memory ``SimpleITK.Image`` as :func:`read_image` etc. read MHA files.

    Args:
        image: A ``SimpleITK.Image`` (2D or 3D, scalar or vector pixels, LPS geometry).
        kind: ``"image"``, ``"label"`` or ``"instances"``, as :func:`volume_from_nifti`.
        allow_2d: If False, 2D data (Z == 1) is an error.

    Returns:
        As :func:`volume_from_nifti`: the array in medseg's axes with spacing and RAS+
        affine, ``path`` None.

    Raises:
        TypeError: if ``image`` is not a SimpleITK image.

    Example:
        >>> import SimpleITK as sitk
        >>> img = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.int16))  # (z, y, x)
        >>> img.SetSpacing((0.5, 1.0, 2.0))  # (x, y, z)
        >>> v = volume_from_sitk(img)
        >>> v.array.shape, v.geometry.spacing_mm
        ((1, 2, 3, 4), (2.0, 1.0, 0.5))
    """
    import SimpleITK as sitk

    if not isinstance(image, sitk.Image):
        raise TypeError(f"image must be a SimpleITK.Image, got {type(image).__name__}")
    name = Path("<SimpleITK image>")
    return _in_memory(lambda what: _raw_from_sitk(image, name, what, {}), name, kind, allow_2d)


# --------------------------------------------------------------------------------------
# Public grid helpers


def check_same_grid(
    a: Volume | VolumeInfo, b: Volume | VolumeInfo, *, atol_mm: float = 1e-3
) -> None:
    """Check that two volumes share one voxel grid: shape (Z, Y, X), spacing and affine.

    Channels are not compared, so an image (C, Z, Y, X) matches its label (Z, Y, X).

    Args:
        a: The reference volume, e.g. the image (or its header from read_volume_info).
        b: The volume that must match it, e.g. the label map.
        atol_mm: Tolerance in mm for every spacing and affine entry.

    Raises:
        ValueError: naming both files and giving both shapes, and both spacings and
            affines where they differ.

    Example:
        >>> g = Geometry.from_spacing((1.0, 1.0, 1.0))
        >>> image = Volume(np.zeros((1, 2, 3, 4), np.float32), g, Path("image.nii.gz"))
        >>> check_same_grid(image, Volume(np.zeros((2, 3, 4), np.uint8), g))
        >>> check_same_grid(image, Volume(np.zeros((2, 3, 5), np.uint8), g))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: '<in memory>' must be on the same voxel grid as 'image.nii.gz' ...; ...
    """
    differences = []
    same_shape = a.spatial_shape == b.spatial_shape
    ga, gb = a.geometry, b.geometry
    if not np.allclose(ga.spacing_mm, gb.spacing_mm, rtol=0.0, atol=atol_mm):
        differences.append(
            f"spacing_mm {_format_floats(gb.spacing_mm)} vs {_format_floats(ga.spacing_mm)}"
        )
    if not np.allclose(ga.affine, gb.affine, rtol=0.0, atol=atol_mm):
        differences.append(f"affine {_format_affine(gb.affine)} vs {_format_affine(ga.affine)}")
    if same_shape and not differences:
        return
    got = ", ".join([f"shape (Z, Y, X) {b.spatial_shape} vs {a.spatial_shape}", *differences])
    raise ValueError(
        f"{_describe_path(b.path)} must be on the same voxel grid as {_describe_path(a.path)} "
        f"(within {atol_mm:g} mm), got {got}; resample one onto the other"
    )


def resolve_slice_axis(slice_axis: str | int, geometry: Geometry) -> int:
    """``"axial"`` -> the array axis closest to superior-inferior (:func:`axial_axis`); the
    ints 0, 1, 2 pass through.

    Example:
        >>> resolve_slice_axis("axial", Geometry.from_spacing((2.0, 1.0, 1.0)))
        0
    """
    if slice_axis == "axial":
        return axial_axis(geometry)
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 'axial', 0, 1 or 2, got {slice_axis!r}")
    return int(slice_axis)


def axial_axis(geometry: Geometry) -> int:
    """Return the array axis (0, 1 or 2 of (Z, Y, X)) closest to world superior-inferior.

    This is the slice axis for 2.5D models working on axial slices. The affine decides,
    so the answer does not depend on the sign of any axis; a tie goes to the lower
    voxel axis (x before y before z).

    Args:
        geometry: Spacing and affine of the volume.

    Example:
        >>> axial_axis(Geometry.from_spacing((1.5, 1.0, 1.0)))
        0
        >>> coronal = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
        >>> axial_axis(Geometry((1.0, 1.0, 1.0), coronal))
        1
    """
    columns = geometry.affine[:3, :3]  # column v = world step of voxel axis v (x, y, z)
    superior_fraction = np.abs(columns[2]) / np.linalg.norm(columns, axis=0)
    voxel_axis = int(np.argmax(superior_fraction))  # 0 = x, 1 = y, 2 = z
    return 2 - voxel_axis  # voxel (x, y, z) = array axes (2, 1, 0)


# --------------------------------------------------------------------------------------
# Dispatch and checks


def _format_from_suffix(suffix: str) -> str | None:
    for name, suffixes in _FORMATS.items():
        if suffix in suffixes:
            return name
    return None


def _unsupported_suffix(path: Path, what: str, suffix: str) -> ValueError:
    if suffix == DICOM_SLICE_SUFFIX:
        hint = "; pass the folder that holds the .dcm files"
    elif _dicom.is_dicom_file(path):  # scanners name DICOM files IM0001, 1.2.840..., ...
        hint = "; it is a DICOM file: pass the folder that holds the series' files"
    else:
        hint = ""
    return ValueError(
        f"{what} {str(path)!r} must have a suffix in {', '.join(SUPPORTED_SUFFIXES)} or be a "
        f"DICOM series folder, got {suffix or 'no suffix'!r}{hint}"
    )


def _not_a_dicom_folder(path: Path, what: str) -> ValueError:
    num_files, num_folders, has_dicomdir = _dicom.count_entries(path)
    if has_dicomdir:
        fix = "it holds a DICOMDIR index: pass the subfolder that holds the series' files"
    elif num_folders:
        fix = "pass the subfolder that holds the DICOM files, or an image file"
    else:
        fix = "give a folder of DICOM files, or a file with a suffix in " + ", ".join(
            SUPPORTED_SUFFIXES
        )
    return ValueError(
        f"{what} {str(path)!r} must be a folder holding a DICOM series, got a folder with "
        f"no DICOM file ({num_files} file(s), {num_folders} subfolder(s); files are DICOM "
        f"by the DICM marker at byte 128, among the first {_dicom.MAX_PROBED_FILES}); {fix}"
    )


def _input_format(path: Path, what: str) -> str:
    """Return the format of an input path; a folder must hold DICOM files."""
    if path.is_dir():
        if not is_dicom_folder(path):
            raise _not_a_dicom_folder(path, what)
        return "dicom"
    suffix = _full_suffix(path)
    fmt = _format_from_suffix(suffix)
    if fmt is None and suffix:
        raise _unsupported_suffix(path, what, suffix)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} must exist, got a missing path")
    if fmt is None:
        raise _unsupported_suffix(path, what, suffix)
    return fmt


def _output_format(path: Path, what: str) -> str:
    """Return the format of an output path; no suffix means a DICOM series folder."""
    suffix = _full_suffix(path)
    if not suffix:
        return "dicom"
    fmt = _format_from_suffix(suffix)
    if fmt is None:
        raise ValueError(
            f"output {what} {str(path)!r} must have a suffix in {', '.join(SUPPORTED_SUFFIXES)} "
            f"or none (a DICOM series folder), got {suffix!r}"
        )
    return fmt


class _ForwardToMedseg(logging.Handler):
    """nibabel's log records, re-sent to the ``medseg.io`` logger at debug level."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(__name__).debug("nibabel: %s", record.getMessage())


@contextlib.contextmanager
def _library_messages() -> Iterator[None]:
    """While a file is read, nibabel's header fix-up lines and ITK's warnings do not reach
    stderr: medseg checks the same things and says so in its own one-line errors; the
    library's words go to the ``medseg.io`` debug log (``medseg -vv``)."""
    nib_logger = logging.getLogger("nibabel.global")
    handlers, propagate = list(nib_logger.handlers), nib_logger.propagate
    nib_logger.handlers = [_ForwardToMedseg()]
    nib_logger.propagate = False
    try:
        with _itk_warnings_off():
            yield
    finally:
        nib_logger.handlers = handlers
        nib_logger.propagate = propagate


def _read_raw(
    path: Path, what: str, *, load_data: bool, indexed: bool, series: str | int | None = None
) -> _Raw:
    """Read any supported input as (C, Z, Y, X) in its file dtype."""
    series = _dicom.check_series_argument(series)
    fmt = _input_format(path, what)
    if series is not None and fmt != "dicom":
        raise ValueError(
            f"series must be None for {what} {str(path)!r}, which is a {_FORMAT_NAMES[fmt]} "
            f"file and not a DICOM folder, got {series!r}; drop --series (series=)"
        )
    try:
        with _library_messages():
            if fmt == "nifti":
                raw = _read_nifti(path, what, load_data=load_data)
            elif fmt == "mgh":
                raw = _read_mgh(path, what, load_data=load_data)
            elif fmt == "itk":
                raw = _read_itk(path, what, load_data=load_data)
            elif fmt == "dicom":
                raw = _read_dicom(path, what, series=series)
            elif fmt == "png":
                raw = _read_png(path, what, load_data=load_data, indexed=indexed)
            else:
                raw = _read_tiff(path, what, load_data=load_data, indexed=indexed)
    except GeometryError as err:
        raise ValueError(f"{what} {str(path)!r} must have a usable voxel grid, got {err}") from None
    if 0 in raw.shape:
        raise ValueError(
            f"{what} {str(path)!r} must have at least one voxel along every axis, got shape "
            f"(C, Z, Y, X) {raw.shape}"
        )
    if not load_data:  # a header read checks what a full read would (validate = read)
        compressed = None
        if path.is_file() and not _voxels_elsewhere(path):
            compressed = fmt not in ("nifti", "mgh") or _full_suffix(path) in (".nii.gz", ".mgz")
        _limits.check_declared_size(path, what, raw.shape, 1, compressed=compressed)
    if raw.array is not None and raw.array.dtype.kind not in "biuf":
        raise ValueError(
            f"{what} {str(path)!r} must hold real numbers, got dtype {raw.array.dtype}"
        )
    return raw


def _read_single_channel(
    path: Path, what: str, *, allow_2d: bool, series: str | int | None
) -> Volume:
    """Read a label or instance map as (Z, Y, X) in its file dtype."""
    raw = _read_raw(path, what, load_data=True, indexed=True, series=series)
    return Volume(_single_channel_array(raw, path, what, allow_2d=allow_2d), raw.geometry, path)


def _image_array(raw: _Raw, path: Path, *, allow_2d: bool) -> np.ndarray:
    """A read image as float32 (C, Z, Y, X), checked for 2D input and NaN/Inf."""
    assert raw.array is not None  # read with load_data=True
    _check_allow_2d(raw.shape, path, "image", allow_2d=allow_2d)
    image = np.ascontiguousarray(raw.array, dtype=np.float32)
    if raw.array.dtype.kind == "f":
        num_bad = int(np.count_nonzero(~np.isfinite(image)))
        if num_bad:
            raise ValueError(
                f"image {str(path)!r} must have finite intensities, got {num_bad} NaN/Inf "
                f"voxel(s) of {image.size}; fix or mask them in the source file"
            )
    return image


def _single_channel_array(raw: _Raw, path: Path, what: str, *, allow_2d: bool) -> np.ndarray:
    """A read label or instance map as (Z, Y, X) in its file dtype."""
    assert raw.array is not None  # read with load_data=True
    if raw.shape[0] != 1:
        raise ValueError(
            f"{what} {str(path)!r} must have one channel, got {raw.shape[0]} channels "
            f"(shape (C, Z, Y, X) {raw.shape}); label and instance maps are single-channel"
        )
    _check_allow_2d(raw.shape[1:], path, what, allow_2d=allow_2d)
    return raw.array[0]


def _label_array(values: np.ndarray, path: Path) -> np.ndarray:
    """(Z, Y, X) label values as uint8, checked to be integers in 0..255."""
    _check_integer_values(
        values,
        name=f"label {str(path)!r}",
        high=_LABEL_MAX,
        fix="; read instance maps with read_instances",
    )
    return np.ascontiguousarray(values, dtype=np.uint8)


def _instance_array(values: np.ndarray, path: Path) -> np.ndarray:
    """(Z, Y, X) object ids as int32, checked to be integers in 0..2**31 - 1."""
    _check_integer_values(values, name=f"instance map {str(path)!r}", high=_INSTANCE_MAX)
    return np.ascontiguousarray(values, dtype=np.int32)


def _check_allow_2d(shape: tuple[int, ...], path: Path, what: str, *, allow_2d: bool) -> None:
    if not allow_2d and shape[-3] == 1:
        raise ValueError(
            f"{what} {str(path)!r} must be 3D (Z > 1), got shape {tuple(shape)}; "
            "give a 3D volume, or pass allow_2d=True for 2D data"
        )


def _check_geometry(geometry: object) -> None:
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a medseg.io.Geometry, got {type(geometry).__name__}")


def _check_integer_values(values: np.ndarray, *, name: str, high: int, fix: str = "") -> None:
    """Raise unless every value is an integer in 0..high."""
    kind = values.dtype.kind
    if kind == "b" or values.size == 0 or (kind == "u" and np.iinfo(values.dtype).max <= high):
        return
    if kind not in "iuf":
        raise ValueError(f"{name} must hold integers in 0..{high}, got dtype {values.dtype}")
    if kind == "f":
        num_bad = int(np.count_nonzero(~np.isfinite(values)))
        if num_bad:
            raise ValueError(
                f"{name} must hold integers in 0..{high}, got {num_bad} NaN/Inf voxel(s)"
            )
        fractional = values != np.round(values)
        if fractional.any():
            example = float(values[fractional].flat[0])
            raise ValueError(
                f"{name} must hold integers in 0..{high}, got non-integer value {example:g} "
                f"in {int(np.count_nonzero(fractional))} voxel(s)"
            )
    low_value, high_value = values.min(), values.max()
    if low_value < 0 or high_value > high:
        bad = low_value if low_value < 0 else high_value
        num_bad = int(np.count_nonzero((values < 0) | (values > high)))
        raise ValueError(
            f"{name} must hold integers in 0..{high}, got value {_format_number(bad)} "
            f"({num_bad} voxel(s) outside 0..{high}){fix}"
        )


def _as_image_array(image: object) -> np.ndarray:
    """Check an image argument and return it as float32 (C, Z, Y, X)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(
            f"image must be float32 (C, Z, Y, X), got shape {image.shape}; "
            "add a channel axis with image[None]"
        )
    if image.dtype.kind not in "biuf" or image.size == 0:
        raise ValueError(
            f"image must be non-empty float32 (C, Z, Y, X), got dtype {image.dtype} "
            f"and shape {image.shape}"
        )
    image = image.astype(np.float32, copy=False)
    num_bad = int(np.count_nonzero(~np.isfinite(image)))
    if num_bad:
        raise ValueError(f"image must have finite values, got {num_bad} NaN/Inf voxel(s)")
    return image


def _as_integer_map(values: object, name: str, *, high: int) -> np.ndarray:
    """Check a label / instance map argument: integer (Z, Y, X) with values in 0..high."""
    if not isinstance(values, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(values).__name__}")
    if values.ndim != 3 or values.size == 0:
        raise ValueError(
            f"{name} must be a non-empty (Z, Y, X) array, got shape {values.shape}; "
            "use shape (1, Y, X) for 2D data"
        )
    if values.dtype.kind not in "biu":
        raise ValueError(
            f"{name} must have an integer dtype, got {values.dtype}; "
            "round and cast explicitly, e.g. np.rint(x).astype(np.uint8)"
        )
    _check_integer_values(values, name=name, high=high)
    return values


def _check_writable_layout(
    shape: tuple[int, ...],
    user_shape: tuple[int, ...],
    geometry: Geometry,
    fmt: str,
    path: Path,
    what: str,
) -> None:
    """Check that a (C, Z, Y, X) array fits the output format, before anything is written."""
    num_channels, z = shape[0], shape[1]
    where = f"{what} written to {str(path)!r}"
    if fmt == "png":
        if z != 1:
            raise ValueError(
                f"{where} must be 2D (Z == 1) for PNG, got shape {tuple(user_shape)}; "
                "write .tif or .nii.gz for 3D data"
            )
        if num_channels not in (1, 3):
            raise ValueError(
                f"{where} must have 1 or 3 channels for PNG, got {num_channels}; "
                "write .tif or .nii.gz instead"
            )
    if fmt == "dicom":
        if num_channels != 1:
            raise ValueError(
                f"{where} must have one channel for DICOM, got {num_channels}; "
                "write .nii.gz instead"
            )
        lps = _LPS_TO_RAS @ geometry.affine[:3, :3]
        direction = lps / np.linalg.norm(lps, axis=0)
        orthonormal = np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)
        if not orthonormal or np.linalg.det(direction) < 0:
            raise ValueError(
                f"{where} must have a right-handed orthogonal voxel grid for DICOM, "
                f"got affine {_format_affine(geometry.affine)}; write .nii.gz instead"
            )


def _image_for_format(image: np.ndarray, fmt: str, path: Path) -> np.ndarray:
    """Convert a float32 image to the integer type PNG or DICOM stores, if exact."""
    if fmt == "png":
        dtypes: list[type[np.integer]] = [np.uint8] + ([np.uint16] if image.shape[0] == 1 else [])
        fix = "write .tif to keep float32 values"
    elif fmt == "dicom":
        dtypes, fix = [np.int16], "write .nii.gz to keep float32 values"
    else:
        return image
    integral = bool(np.all(image == np.round(image)))
    low, high = float(image.min()), float(image.max())
    for dtype in dtypes:
        info = np.iinfo(dtype)
        if integral and low >= info.min and high <= info.max:
            return image.astype(dtype)
    ranges = " or ".join(f"{np.iinfo(d).min}..{np.iinfo(d).max}" for d in dtypes)
    kind = "values" if integral else "non-integer values"
    raise ValueError(
        f"image written to {str(path)!r} must hold integers in {ranges} for "
        f"{_FORMAT_NAMES[fmt]}, got {kind} in [{low:g}, {high:g}]; {fix}"
    )


def _refuse_dicom_labels(path: Path, fmt: str, what: str) -> None:
    if fmt == "dicom":
        raise ValueError(
            f"output {str(path)!r} must be a file with a suffix ({', '.join(SUPPORTED_SUFFIXES)}) "
            f"for a {what}, got a path without one (a DICOM series folder); a {what} goes to "
            "DICOM as a DICOM Segmentation of its source series: medseg predict SERIES "
            "--output-format dicom-seg"
        )


def _write(path: Path, data: np.ndarray, geometry: Geometry, fmt: str, *, overwrite: bool) -> Path:
    """Write (C, Z, Y, X) data, already in its output dtype, atomically."""
    if fmt == "dicom":
        with _atomic_output_folder(path, overwrite=overwrite) as folder:
            with _locale_kept():
                _write_dicom(folder, data, geometry)
    elif _full_suffix(path) in _DETACHED_SUFFIXES:
        with _atomic_output_detached(path, overwrite=overwrite) as tmp:
            _write_itk(tmp, data, geometry)
    else:
        writers: dict[str, Callable[[Path, np.ndarray, Geometry], None]] = {
            "nifti": _write_nifti,
            "mgh": _write_mgh,
            "itk": _write_itk,
            "png": _write_png,
            "tiff": functools.partial(
                _write_tiff, ome=path.name.lower().endswith(OME_TIFF_SUFFIXES)
            ),
        }
        with atomic_output(path, overwrite=overwrite) as tmp:
            writers[fmt](tmp, data, geometry)
    return path


@contextlib.contextmanager
def _atomic_output_folder(path: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_output`, for an output folder: yield a temporary folder, rename it."""
    path = check_output_path(path, overwrite=overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = tmp.with_name(tmp.name + ".old")
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            if not overwrite:  # appeared while we were writing
                raise FileExistsError(
                    f"output {str(path)!r} must not exist, got one created during the write; "
                    "pass --overwrite to replace it"
                )
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            _remove(leftover)


@contextlib.contextmanager
def _atomic_output_detached(path: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_output`, for a header that names its data file (``.mhd``).

    Yields ``path``'s name inside a temporary folder; the writer puts the data file
    beside it. All files are then moved next to ``path``, the header last, so a reader
    never finds a header without its data.
    """
    path = check_output_path(path, overwrite=overwrite)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield folder / path.name
        written = sorted(folder.iterdir(), key=lambda p: p.name == path.name)  # header last
        if not overwrite:
            for existing in (path.parent / p.name for p in written):
                if existing.exists():
                    raise FileExistsError(
                        f"output {str(existing)!r} must not exist, got an existing file "
                        f"(written with {str(path)!r}); pass --overwrite to replace it"
                    )
        for item in written:
            os.replace(item, path.parent / item.name)
    finally:
        _remove(folder)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------------------
# Message helpers


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unreadable(path: Path, what: str, fmt_name: str, err: BaseException) -> ValueError:
    return ValueError(
        f"{what} {str(path)!r} must be a readable {fmt_name} file, got one that could not "
        f"be read as {fmt_name} ({_one_line(err)}); check that it is complete and not corrupt"
    )


def _describe_path(path: Path | None) -> str:
    return repr(str(path)) if path is not None else "'<in memory>'"


def _format_number(value: float | np.number) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


def _format_floats(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _format_affine(affine: np.ndarray) -> str:
    """One-line affine: the top three rows, ``[a b c d; ...]``."""
    return "[" + "; ".join(" ".join(f"{v:.6g}" for v in row) for row in affine[:3]) + "]"


# --------------------------------------------------------------------------------------
# NIfTI (nibabel): arrays are (x, y, z[, c])


def _nifti_errors() -> tuple[type[BaseException], ...]:
    import nibabel as nib

    return (
        OSError,
        EOFError,
        ValueError,
        zlib.error,
        struct.error,
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
    )


def _nifti_xyzc_shape(shape: tuple[int, ...], path: Path, what: str) -> tuple[int, ...]:
    """File shape -> (X, Y, Z, C).

    Singleton axes after z are dropped first: (x, y, z, 1) and (x, y, z, 1, 1) are one
    channel, (x, y, z, t, 1) is t channels. 2D gets Z = 1; a 5D vector image
    (x, y, z, 1, c) loses its singleton t.
    """
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 2:
        return (*dims, 1, 1)
    if len(dims) == 3:
        return (*dims, 1)
    if len(dims) == 4:
        return tuple(dims)
    if len(dims) == 5 and dims[3] == 1:
        return (*dims[:3], dims[4])
    raise ValueError(
        f"{what} {str(path)!r} must be a 2D, 3D or 4D (x, y, z, channels) NIfTI file, "
        f"got shape {shape}"
    )


def _nifti_mm_per_unit(header: Any) -> float:
    spatial_unit = header.get_xyzt_units()[0]
    return _NIFTI_MM_PER_UNIT.get(spatial_unit, 1.0)


def _nifti_num_timepoints(header: Any, shape: tuple[int, ...]) -> int:
    """T for a NIfTI time series, else 1 (rules in :func:`read_volume_info`).

    Example:
        >>> import nibabel as nib
        >>> header = nib.Nifti1Header()
        >>> header.set_data_shape((4, 3, 2, 5))  # nibabel's default: pixdim[4] 1, no units
        >>> _nifti_num_timepoints(header, (4, 3, 2, 5))
        1
        >>> header.set_xyzt_units("mm", "sec")
        >>> _nifti_num_timepoints(header, (4, 3, 2, 5))
        5
    """
    extra = [int(n) for n in shape[3:]]
    if not any(n > 1 for n in extra):
        return 1
    intent = int(header["intent_code"])
    if intent == _NIFTI_INTENT_TIME_SERIES and sum(n > 1 for n in extra) == 1:
        return max(extra)  # a time series in t or as the per-voxel vector
    if extra[0] <= 1 or any(n > 1 for n in extra[1:]) or intent != _NIFTI_INTENT_NONE:
        return 1  # a vector image, or statistics / labels / ... in the 4th axis
    time_unit = header.get_xyzt_units()[1]
    step = float(header["pixdim"][4])
    if time_unit in _NIFTI_TIME_UNITS or (time_unit == "unknown" and step > 0 and step != 1):
        return extra[0]
    return 1


def _check_nifti_pixdim(path: Path, what: str) -> None:
    """Refuse zero, negative or non-finite voxel sizes as the file stores them (nibabel
    would log a line and silently use 1 or the absolute value)."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as file, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # garbage gets nibabel's own error below
            first = file.read(4)
            file.seek(0)
            sizes = {struct.unpack(e + "i", first)[0] for e in "<>"} if len(first) == 4 else set()
            kind = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header
            header = kind.from_fileobj(file, check=False)
            ndim = int(header["dim"][0])
            pixdim = [float(v) for v in header["pixdim"][1 : 1 + min(max(ndim, 0), 3)]]
    except Exception:  # not readable as a header: nibabel's own error says so below
        return
    if not all(math.isfinite(v) and v > 0 for v in pixdim):
        raise ValueError(
            f"{what} {str(path)!r} must have positive, finite voxel sizes, got pixdim (x, y, z) "
            f"{tuple(pixdim)}; fix the header (its volumes in mL depend on it)"
        )


def _read_nifti(path: Path, what: str, *, load_data: bool) -> _Raw:
    import nibabel as nib

    _check_nifti_pixdim(path, what)
    try:
        image = nib.load(path, mmap=False)
    except _nifti_errors() as err:
        raise _unreadable(path, what, "NIfTI", err) from err
    return _raw_from_nifti(image, path, what, load_data=load_data)


def _raw_from_nifti(image: Any, path: Path, what: str, *, load_data: bool) -> _Raw:
    """A loaded nibabel image (``path`` names it in messages) as (C, Z, Y, X)."""
    import nibabel as nib

    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise ValueError(f"{what} {str(path)!r} must be NIfTI, got {type(image).__name__}")
    header = image.header
    x, y, z, c = _nifti_xyzc_shape(tuple(int(n) for n in image.shape), path, what)
    mm_per_unit = _nifti_mm_per_unit(header)
    zooms = [float(s) for s in header.get_zooms()[:3]] + [1.0] * (3 - len(image.shape[:3]))
    if not all(np.isfinite(s) and s > 0 for s in zooms):
        raise ValueError(
            f"{what} {str(path)!r} must have positive voxel sizes, got zooms {tuple(zooms)}"
        )
    affine = np.array(image.affine, dtype=np.float64)
    affine[:3] *= mm_per_unit  # world coordinates in mm
    spacing = (zooms[2] * mm_per_unit, zooms[1] * mm_per_unit, zooms[0] * mm_per_unit)
    geometry = Geometry(spacing, affine, header=header)
    num_timepoints = _nifti_num_timepoints(header, tuple(int(n) for n in image.shape))
    array = None
    if load_data:
        array = _czyx_data(image, (x, y, z, c), path, what, "NIfTI", _nifti_errors())
    return _Raw(array, (c, z, y, x), geometry, num_timepoints)


def _czyx_data(
    image: Any,
    xyzc: tuple[int, ...],
    path: Path,
    what: str,
    fmt: str,
    errors: tuple[type[BaseException], ...],
) -> np.ndarray:
    """A nibabel image's voxels, file order (X, Y, Z[, C]) -> (C, Z, Y, X)."""
    if path.name != "<nibabel image>":  # a file: its size bounds what it can hold
        itemsize = int(image.get_data_dtype().itemsize)
        compressed = path.name.lower().endswith((".gz", ".mgz"))
        _limits.check_declared_size(path, what, xyzc, itemsize, compressed=compressed)
    try:
        data = np.asanyarray(image.dataobj)
    except errors as err:
        raise _unreadable(path, what, fmt, err) from err
    return data.reshape(xyzc).transpose(3, 2, 1, 0)


def _write_nifti(tmp: Path, data: np.ndarray, geometry: Geometry) -> None:
    _nifti_image(data, geometry).to_filename(str(tmp))


def _nifti_image(data: np.ndarray, geometry: Geometry) -> Any:
    """(C, Z, Y, X) data in its output dtype -> an in-memory nibabel image, (x, y, z[, c])."""
    import nibabel as nib

    xyzc = data.transpose(3, 2, 1, 0)  # (C, Z, Y, X) -> (X, Y, Z, C)
    xyz_data = xyzc[..., 0] if data.shape[0] == 1 else xyzc
    source = geometry.header if isinstance(geometry.header, nib.Nifti1Header) else None
    header = source.copy() if source is not None else nib.Nifti1Header()
    mm_per_unit = _nifti_mm_per_unit(header) if source is not None else 1.0
    affine = geometry.affine.copy()
    affine[:3] /= mm_per_unit  # back to the header's spatial unit
    header.set_data_shape(xyz_data.shape)
    header.set_data_dtype(data.dtype)
    zooms = tuple(s / mm_per_unit for s in reversed(geometry.spacing_mm))
    header.set_zooms(zooms + tuple(header.get_zooms()[3:]))
    if source is None:
        header.set_xyzt_units("mm", "sec")
        header.set_sform(affine, code="scanner")
        header.set_qform(affine, code="scanner")
    elif not np.allclose(header.get_best_affine(), affine, rtol=0.0, atol=1e-5):
        # The geometry was changed after reading: store it, keeping the source's codes.
        header.set_sform(affine, code=int(header["sform_code"]) or "aligned")
        if int(header["qform_code"]):
            header.set_qform(affine, code=int(header["qform_code"]))
    if data.shape[0] > 1:  # channels, not time: no time unit, nibabel's default step
        header.set_xyzt_units(header.get_xyzt_units()[0], "unknown")
        header["pixdim"][4] = 1.0
    header.set_slope_inter(None, None)
    header["cal_min"], header["cal_max"] = 0.0, 0.0  # the source's display range no longer applies
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    return image_class(xyz_data, affine, header=header)


# --------------------------------------------------------------------------------------
# FreeSurfer MGH / MGZ (nibabel): arrays are (x, y, z[, frames]); the affine maps voxel
# (x, y, z) to RAS in mm (FreeSurfer's "vox2ras"), as NIfTI's does


def _mgh_errors() -> tuple[type[BaseException], ...]:
    from nibabel.freesurfer.mghformat import MGHError

    return (*_nifti_errors(), MGHError, TypeError)  # TypeError: a file shorter than a header


def _read_mgh(path: Path, what: str, *, load_data: bool) -> _Raw:
    from nibabel.freesurfer.mghformat import MGHImage

    errors = _mgh_errors()
    try:
        image = MGHImage.from_filename(str(path))
        header = image.header
        shape = tuple(int(n) for n in image.shape)  # (x, y, z) or (x, y, z, frames)
        zooms = tuple(float(s) for s in header["delta"])  # (x, y, z), mm
        tr_ms = float(header["tr"])
        affine = np.array(image.affine, dtype=np.float64)
    except errors as err:
        raise _unreadable(path, what, "FreeSurfer MGH", err) from err
    if not all(np.isfinite(s) and s > 0 for s in zooms):
        raise ValueError(
            f"{what} {str(path)!r} must have positive voxel sizes, got delta (x, y, z) {zooms}"
        )
    x, y, z = shape[:3]
    c = shape[3] if len(shape) == 4 else 1
    geometry = Geometry((zooms[2], zooms[1], zooms[0]), affine, header=header)
    num_timepoints = c if c > 1 and tr_ms > 0 else 1  # frames with a TR are time
    array = None
    if load_data:
        array = _czyx_data(image, (x, y, z, c), path, what, "FreeSurfer MGH", errors)
    return _Raw(array, (c, z, y, x), geometry, num_timepoints)


def _write_mgh(tmp: Path, data: np.ndarray, geometry: Geometry) -> None:
    """(C, Z, Y, X) data -> MGH (x, y, z[, frames]); types MGH lacks (uint16) as int32."""
    from nibabel.freesurfer.mghformat import MGHHeader, MGHImage

    xyzc = data.transpose(3, 2, 1, 0)  # (C, Z, Y, X) -> (X, Y, Z, C)
    xyz_data = xyzc[..., 0] if data.shape[0] == 1 else xyzc
    if xyz_data.dtype.type not in _MGH_DTYPES:
        xyz_data = xyz_data.astype(np.int32)  # exact for uint16 instance ids
    image = MGHImage(np.ascontiguousarray(xyz_data), geometry.affine)
    source = geometry.header
    if isinstance(source, MGHHeader) and data.shape[0] == 1:  # frames written here: no TR
        for key in ("tr", "flip_angle", "te", "ti"):  # the scan parameters FreeSurfer keeps
            image.header[key] = source[key]
    image.to_filename(str(tmp))


# --------------------------------------------------------------------------------------
# MetaImage / NRRD / DICOM (SimpleITK): arrays are (z, y, x); spacing etc. (x, y, z), LPS


def _geometry_from_itk(
    spacing: tuple[float, ...],
    origin: tuple[float, ...],
    direction: tuple[float, ...],
    header: dict[str, str],
) -> Geometry:
    """SimpleITK spacing / origin / direction (x, y, z, LPS) -> RAS affine geometry."""
    dim = len(spacing)
    num = min(dim, 3)  # a 2D image gets z = 1 mm; a 4D one keeps its first three axes
    spacing_xyz, origin_xyz, direction_xyz = np.ones(3), np.zeros(3), np.eye(3)
    spacing_xyz[:num] = spacing[:num]
    origin_xyz[:num] = origin[:num]
    direction_xyz[:num, :num] = np.reshape(direction, (dim, dim))[:num, :num]
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction_xyz @ np.diag(spacing_xyz)
    affine[:3, 3] = _LPS_TO_RAS @ origin_xyz
    x, y, z = spacing_xyz
    return Geometry((float(z), float(y), float(x)), affine, header=header)


def _itk_frame(
    geometry: Geometry,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """RAS affine -> SimpleITK spacing, origin, direction (x, y, z, LPS).

    The spacing is the affine's voxel size, which equals ``geometry.spacing_mm`` for
    every geometry read from a consistent file.
    """
    lps = _LPS_TO_RAS @ geometry.affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    direction = lps / spacing
    origin = _LPS_TO_RAS @ geometry.affine[:3, 3]
    return (
        tuple(float(s) for s in spacing),
        tuple(float(o) for o in origin),
        tuple(float(d) for d in direction.ravel()),
    )


def _itk_czyx_shape(
    size: tuple[int, ...], num_components: int, path: Path, what: str
) -> tuple[int, int, int, int]:
    if len(size) == 2:
        return (num_components, 1, size[1], size[0])
    if len(size) == 3:
        return (num_components, size[2], size[1], size[0])
    if len(size) == 4 and num_components == 1:
        return (size[3], size[2], size[1], size[0])
    raise ValueError(
        f"{what} {str(path)!r} must be a 2D or 3D image, or 3D with channels, got a "
        f"{len(size)}D image of size (x, y, z, ...) {size} with {num_components} component(s)"
    )


@contextlib.contextmanager
def _itk_warnings_off() -> Iterator[None]:
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _itk_format_name(path: Path) -> str:
    return "NRRD" if _full_suffix(path) in (".nrrd", ".nhdr") else "MetaImage"


def _itk_metadata(source: Any) -> dict[str, str]:
    return {key: source.GetMetaData(key) for key in source.GetMetaDataKeys()}


def _raw_from_sitk(image: Any, path: Path, what: str, header: dict[str, str]) -> _Raw:
    import SimpleITK as sitk

    size = tuple(image.GetSize())
    num_components = image.GetNumberOfComponentsPerPixel()
    shape = _itk_czyx_shape(size, num_components, path, what)
    array = sitk.GetArrayFromImage(image)  # (z, y, x[, c]); (y, x[, c]) in 2D; (c, z, y, x) in 4D
    if num_components > 1:
        array = np.moveaxis(array, -1, 0)  # components first
    array = array.reshape(shape)  # inserts C = 1 and, in 2D, Z = 1
    geometry = _geometry_from_itk(
        image.GetSpacing(), image.GetOrigin(), image.GetDirection(), header
    )
    return _Raw(array, shape, geometry)


def _voxels_elsewhere(path: Path) -> bool:
    """Whether a header file keeps its voxels in another file (.mhd, .nhdr, or a .mha /
    .nrrd whose header names a data file): its own size says nothing about them."""
    if _full_suffix(path) in _DETACHED_SUFFIXES:
        return True
    if _full_suffix(path) not in (".mha", ".nrrd"):
        return False
    try:
        with open(path, "rb") as file:
            head = file.read(4096).lower()
    except OSError:
        return False
    if b"data file:" in head or b"datafile:" in head:  # NRRD
        return True
    for line in head.split(b"\n"):  # MetaImage: ElementDataFile other than LOCAL
        key, sep, value = line.partition(b"=")
        if sep and key.strip() == b"elementdatafile":
            return value.strip() != b"local"
    return False


def _check_meta_spacing(path: Path, what: str) -> None:
    """Refuse a MetaImage header whose ElementSpacing is zero, negative or not a number
    (ITK would fail obscurely or silently take the absolute value)."""
    if _full_suffix(path) not in (".mha", ".mhd"):
        return
    try:
        with open(path, "rb") as file:
            head = file.read(4096).split(b"\n")
    except OSError:
        return
    for line in head:
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep or key.strip() not in ("ElementSpacing", "ElementSize"):
            continue
        try:
            sizes = [float(v) for v in value.split()]
        except ValueError:
            sizes = [math.nan]
        if not sizes or not all(math.isfinite(v) and v > 0 for v in sizes):
            raise ValueError(
                f"{what} {str(path)!r} must have positive, finite voxel sizes, got "
                f"{key.strip()} = {value.strip()}; fix the header (its volumes in mL depend on it)"
            )
        if key.strip() == "ElementSpacing":
            return


def _read_itk(path: Path, what: str, *, load_data: bool) -> _Raw:
    import SimpleITK as sitk

    _check_meta_spacing(path, what)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        if load_data:
            size = (*reader.GetSize(), reader.GetNumberOfComponents())
            itemsize = sitk.GetArrayFromImage(sitk.Image(1, 1, reader.GetPixelID())).itemsize
            detached = _voxels_elsewhere(path)
            _limits.check_declared_size(
                path, what, size, itemsize, compressed=None if detached else True
            )
            image = reader.Execute()
            return _raw_from_sitk(image, path, what, _itk_metadata(image))
    except RuntimeError as err:
        raise _unreadable(path, what, _itk_format_name(path), err) from err
    size = tuple(reader.GetSize())
    shape = _itk_czyx_shape(size, reader.GetNumberOfComponents(), path, what)
    geometry = _geometry_from_itk(
        reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), _itk_metadata(reader)
    )
    return _Raw(None, shape, geometry)


def _to_sitk(data: np.ndarray, geometry: Geometry) -> Any:
    """(C, Z, Y, X) array + geometry -> 3D SimpleITK image (vector pixels if C > 1)."""
    import SimpleITK as sitk

    if data.shape[0] == 1:
        image = sitk.GetImageFromArray(data[0])
    else:
        image = sitk.GetImageFromArray(np.moveaxis(data, 0, -1), isVector=True)  # (Z, Y, X, C)
    spacing, origin, direction = _itk_frame(geometry)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _write_itk(tmp: Path, data: np.ndarray, geometry: Geometry) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(_to_sitk(data, geometry), str(tmp), useCompression=True)


@contextlib.contextmanager
def _locale_kept() -> Iterator[None]:
    """Restore the process locale after SimpleITK's DICOM (GDCM) code.

    GDCM switches the C locale to "C", which silently turns Python's default text
    encoding into ASCII for the rest of the process (any later ``open()`` of a report
    with a non-ASCII character then fails).
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _scan_dicom_series(folder: Path, what: str) -> list[DicomSeries]:
    """The series of a DICOM folder (GDCM, headers only), as :func:`list_dicom_series`."""
    try:
        with _locale_kept(), _itk_warnings_off():  # ITK prints "No Series were found" itself
            return _dicom.scan_series(folder)
    except RuntimeError as err:
        raise _unreadable(folder, what, "DICOM", err) from err


def _read_dicom(folder: Path, what: str, *, series: str | int | None) -> _Raw:
    """Read the DICOM series ``series`` names (or the only one) of a folder, whole."""
    import SimpleITK as sitk

    found = _scan_dicom_series(folder, what)
    if not found:
        num_files = sum(1 for p in folder.iterdir() if p.is_file())
        raise ValueError(
            f"{what} {str(folder)!r} must be a folder holding a DICOM series, got a folder "
            f"with DICOM files but no image series ({num_files} file(s)); give a folder of "
            "DICOM image files, or a file with a suffix in " + ", ".join(SUPPORTED_SUFFIXES)
        )
    chosen = _dicom.choose_series(found, series, folder=folder, what=what)
    if chosen.rows and chosen.columns:  # frames x rows x columns, at least a byte each
        total = sum(f.stat().st_size for f in chosen.files)
        shape = (len(chosen.files), chosen.rows, chosen.columns)
        _limits.check_declared_size(folder, what, shape, 1, compressed=True, file_bytes=total)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in chosen.files])
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with _locale_kept():
            image = reader.Execute()
    except RuntimeError as err:
        raise _unreadable(folder, what, "DICOM", err) from err
    header = {key: reader.GetMetaData(0, key) for key in reader.GetMetaDataKeys(0)}
    return _raw_from_sitk(image, folder, what, header)


def _dicom_decimal(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    return f"{value:.10g}"


def _new_uid() -> str:
    """A unique DICOM UID from a random UUID (the ``2.25`` root, ISO/IEC 9834-8)."""
    return f"2.25.{uuid.uuid4().int}"


def _write_dicom(folder: Path, data: np.ndarray, geometry: Geometry) -> None:
    """Write (1, Z, Y, X) integer data as one DICOM file per z slice."""
    import SimpleITK as sitk

    image = _to_sitk(data, geometry)
    d = image.GetDirection()  # row-major 3x3; columns are the voxel axes' directions
    orientation = "\\".join(_dicom_decimal(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    z_spacing = _dicom_decimal(image.GetSpacing()[2])
    series_tags = {
        "0008|0008": "DERIVED\\SECONDARY",  # image type
        "0008|0060": "OT",  # modality: other
        "0008|103e": "written by medseg",  # series description
        "0020|000d": _new_uid(),  # study instance UID
        "0020|000e": _new_uid(),  # series instance UID
        "0020|0052": _new_uid(),  # frame of reference UID
        "0020|0011": "1",  # series number
        "0020|0037": orientation,  # image orientation (patient)
        "0018|0050": z_spacing,  # slice thickness
        "0018|0088": z_spacing,  # spacing between slices
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # keep our series UID so that the slices form one series
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_tags = {
            **series_tags,
            "0008|0018": _new_uid(),  # SOP instance UID
            "0020|0013": str(k + 1),  # instance number
            "0020|0032": "\\".join(_dicom_decimal(v) for v in position),  # image position
        }
        for key, value in slice_tags.items():
            plane.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{k:04d}{DICOM_SLICE_SUFFIX}"))
        writer.Execute(plane)


# --------------------------------------------------------------------------------------
# PNG (Pillow): (y, x) or (y, x, samples)

_PNG_GRAY_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F")
_PNG_CHANNELS = {**{mode: 1 for mode in _PNG_GRAY_MODES}, "LA": 1, "RGB": 3, "RGBA": 3}


def _check_opaque(alpha: np.ndarray, opaque: float, path: Path, what: str) -> None:
    num_transparent = int(np.count_nonzero(alpha != opaque))
    if num_transparent:
        raise ValueError(
            f"{what} {str(path)!r} must be opaque (alpha {opaque:g} everywhere), got "
            f"{num_transparent} transparent or translucent pixel(s); flatten it onto a "
            "background first"
        )


def _read_png(path: Path, what: str, *, load_data: bool, indexed: bool) -> _Raw:
    from PIL import Image

    array = None
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: the size is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil = Image.open(path)
        with pil:
            file_format, mode = pil.format, pil.mode
            num_frames = getattr(pil, "n_frames", 1)
            width, height = pil.size
            if load_data and file_format == "PNG" and num_frames == 1:
                bands = len(pil.getbands())
                _limits.check_declared_size(path, what, (height, width, bands), 1, compressed=True)
                pil.load()
                if mode == "P" and not indexed:  # an image shows its palette colours
                    mode = "RGBA" if "transparency" in pil.info else "RGB"
                    array = np.array(pil.convert(mode))
                else:
                    array = np.array(pil)
    except _limits.DeclaredSizeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, what, "PNG", err) from err
    if file_format != "PNG":
        raise ValueError(f"{what} {str(path)!r} must hold PNG data, got {file_format} data")
    if num_frames != 1:
        raise ValueError(
            f"{what} {str(path)!r} must be a single-frame PNG, got {num_frames} frames"
        )
    if mode == "P" and not indexed and not load_data:
        mode = "RGB"
    if mode not in _PNG_CHANNELS:
        raise ValueError(
            f"{what} {str(path)!r} must be a grayscale, RGB or RGBA PNG, got Pillow mode {mode!r}"
        )
    shape = (_PNG_CHANNELS[mode], 1, height, width)
    geometry = Geometry.from_spacing((1.0, 1.0, 1.0))
    if array is None:
        return _Raw(None, shape, geometry)
    if mode in ("LA", "RGBA"):
        _check_opaque(array[..., -1], 255, path, what)
        array = array[..., :-1]
    if array.ndim == 3:
        array = np.moveaxis(array, -1, 0)  # (Y, X, C) -> (C, Y, X)
    return _Raw(array.reshape(shape), shape, geometry)


def _write_png(tmp: Path, data: np.ndarray, geometry: Geometry) -> None:
    from PIL import Image

    plane = data[:, 0]  # (C, 1, Y, X) -> (C, Y, X)
    pixels = plane[0] if plane.shape[0] == 1 else np.moveaxis(plane, 0, -1)  # RGB: (Y, X, 3)
    Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG")


# --------------------------------------------------------------------------------------
# TIFF (tifffile): series axes such as "YX", "ZYX", "IYX", "YXS", "ZCYX"

# tifffile axis letter -> role: C = channels (C, or S = samples of RGB / extra samples),
# Z = stack (Z, or I / Q = pages without metadata), Y, X.
_TIFF_ROLES = {"C": "C", "S": "C", "Z": "Z", "I": "Z", "Q": "Z", "Y": "Y", "X": "X"}


def _tiff_spacing_mm(tif: Any, page: Any) -> Spacing3:
    """(z, y, x) spacing in mm: OME-XML physical sizes, else ImageJ metadata and the
    resolution tags (read with tifffile's own helpers); 1.0 along an axis without one."""
    import tifffile

    if tif.is_ome:
        found = _ome_spacing_mm(tif.ome_metadata)
        if found is not None:
            return found
    imagej = tif.imagej_metadata or {}
    mm_per_unit = _IMAGEJ_MM_PER_UNIT.get(str(imagej.get("unit", "")).strip().lower())
    units = {
        tifffile.RESUNIT.INCH: 25.4,
        tifffile.RESUNIT.CENTIMETER: 10.0,
        tifffile.RESUNIT.MILLIMETER: 1.0,
        tifffile.RESUNIT.MICROMETER: 1e-3,
    }
    if mm_per_unit is None:
        mm_per_unit = units.get(page.resolutionunit)
    if mm_per_unit is None:
        return (1.0, 1.0, 1.0)
    # pixels per (ResolutionUnit or ImageJ) unit; a missing tag reads as 1, so check it
    x_res, y_res = page.get_resolution()
    x = mm_per_unit / x_res if "XResolution" in page.tags and x_res > 0 else 1.0
    y = mm_per_unit / y_res if "YResolution" in page.tags and y_res > 0 else 1.0
    z_spacing = float(imagej.get("spacing", 0) or 0)
    return (z_spacing * mm_per_unit if z_spacing > 0 else 1.0, y, x)


_OME_MM_PER_UNIT = {**_IMAGEJ_MM_PER_UNIT, "pm": 1e-9, "\u00c5": 1e-7, "a": 1e-7}


def _ome_spacing_mm(xml: str | None) -> Spacing3 | None:
    """(z, y, x) mm from the first image's ``Pixels`` PhysicalSize* (unit default µm), or
    None when the OME-XML gives no in-plane size."""
    import tifffile

    try:
        ome = tifffile.xml2dict(xml or "").get("OME", {})
    except Exception:  # malformed XML: fall back to the TIFF tags
        return None
    image = ome.get("Image", {})
    if isinstance(image, list):
        image = image[0] if image else {}
    pixels = image.get("Pixels", {}) if isinstance(image, dict) else {}
    if not isinstance(pixels, dict) or "PhysicalSizeX" not in pixels:
        return None

    def size(axis: str) -> float:
        value = pixels.get(f"PhysicalSize{axis}")
        unit = str(pixels.get(f"PhysicalSize{axis}Unit", "\u00b5m")).strip().lower()
        factor = _OME_MM_PER_UNIT.get(unit)
        try:
            number = float(str(value))
        except ValueError:
            return 1.0
        return number * factor if factor is not None and number > 0 else 1.0

    return (size("Z"), size("Y"), size("X"))


def _read_tiff(path: Path, what: str, *, load_data: bool, indexed: bool) -> _Raw:
    import tifffile

    errors = (OSError, ValueError, EOFError, struct.error, zlib.error, tifffile.TiffFileError)
    try:
        with tifffile.TiffFile(path) as tif:
            num_series = len(tif.series)
            series = tif.series[0]
            page = series.keyframe
            axes, shape = series.axes, tuple(int(n) for n in series.shape)
            photometric, extrasamples = page.photometric, tuple(page.extrasamples)
            spacing = _tiff_spacing_mm(tif, page)
            data = None
            if load_data and num_series == 1:
                compressed = page.compression != tifffile.COMPRESSION.NONE
                itemsize = int(series.dtype.itemsize)
                _limits.check_declared_size(path, what, shape, itemsize, compressed=compressed)
                data = series.asarray()
    except _limits.DeclaredSizeError:
        raise
    except errors as err:
        raise _unreadable(path, what, "TIFF", err) from err
    if num_series != 1:
        raise ValueError(f"{what} {str(path)!r} must hold one image series, got {num_series}")
    kept = [(axis, n) for axis, n in zip(axes, shape, strict=True) if n > 1 or axis in "YX"]
    roles = "".join(_TIFF_ROLES.get(axis, "?") for axis, _ in kept)
    if "?" in roles or sorted(roles) != sorted(set(roles)) or not {"Y", "X"} <= set(roles):
        raise ValueError(
            f"{what} {str(path)!r} must have axes Y, X and at most one stack axis (Z, I, Q) "
            f"and one channel axis (C, S), got axes {axes!r} with shape {shape}"
        )
    p = tifffile.PHOTOMETRIC
    if photometric == p.PALETTE and not indexed:
        raise ValueError(
            f"{what} {str(path)!r} must be a grayscale or RGB TIFF, got a palette (indexed "
            "colour) TIFF; convert it to RGB first"
        )
    has_samples = any(axis == "S" for axis, _ in kept)
    if has_samples and photometric not in (p.RGB, p.MINISBLACK):
        raise ValueError(
            f"{what} {str(path)!r} must be a grayscale or RGB TIFF, got photometric "
            f"{getattr(photometric, 'name', photometric)} with {dict(kept)['S']} samples per pixel"
        )
    has_alpha = has_samples and bool(extrasamples) and extrasamples[-1] in (1, 2)  # (un)assoc.
    sizes = dict(zip(roles, (n for _, n in kept), strict=True))
    num_channels = sizes.get("C", 1) - int(has_alpha)
    czyx = (num_channels, sizes.get("Z", 1), sizes["Y"], sizes["X"])
    geometry = Geometry.from_spacing(spacing)
    if data is None:
        return _Raw(None, czyx, geometry)
    order = [roles.index(role) for role in "CZYX" if role in roles]
    array = data.reshape([n for _, n in kept]).transpose(order)
    if has_alpha:
        opaque = np.iinfo(array.dtype).max if array.dtype.kind in "iu" else 1.0
        _check_opaque(array[-1], opaque, path, what)
        array = array[:-1]
    return _Raw(array.reshape(czyx), czyx, geometry)


def _write_tiff(tmp: Path, data: np.ndarray, geometry: Geometry, *, ome: bool = False) -> None:
    """Write an ImageJ hyperstack (Z, C, Y, X) with spacing in micrometres, or with ``ome``
    an OME-TIFF whose Pixels carry the physical sizes (µm)."""
    import tifffile

    z_um, y_um, x_um = (s * 1000.0 for s in geometry.spacing_mm)
    if ome:
        tifffile.imwrite(
            tmp,
            np.ascontiguousarray(data.transpose(1, 0, 2, 3)),  # (C, Z, Y, X) -> (Z, C, Y, X)
            ome=True,
            photometric="minisblack",
            resolution=(1.0 / x_um, 1.0 / y_um),
            resolutionunit="MICROMETER",
            metadata={
                "axes": "ZCYX",
                "PhysicalSizeX": x_um,
                "PhysicalSizeXUnit": "\u00b5m",
                "PhysicalSizeY": y_um,
                "PhysicalSizeYUnit": "\u00b5m",
                "PhysicalSizeZ": z_um,
                "PhysicalSizeZUnit": "\u00b5m",
            },
        )
        return
    tifffile.imwrite(
        tmp,
        np.ascontiguousarray(data.transpose(1, 0, 2, 3)),  # (C, Z, Y, X) -> ImageJ (Z, C, Y, X)
        imagej=True,
        photometric="minisblack",
        resolution=(1.0 / x_um, 1.0 / y_um),
        metadata={"axes": "ZCYX", "spacing": z_um, "unit": "um"},
    )
