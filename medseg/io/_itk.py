"""MetaImage, NRRD and DICOM series (SimpleITK): arrays are ``(z, y, x)``, but spacing,
origin and direction are ``(x, y, z)`` in LPS world coordinates, converted here to the RAS
affine (ARCHITECTURE.md section 2)."""

from __future__ import annotations

import contextlib
import locale
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medseg import _dicom, _limits
from medseg._dicom import DicomSeries
from medseg._files import full_suffix
from medseg.io._formats import (
    _DETACHED_SUFFIXES,
    DICOM_SLICE_SUFFIX,
    SUPPORTED_SUFFIXES,
    _unreadable,
)
from medseg.io.geometry import _LPS_TO_RAS, Geometry, _Raw


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
    return "NRRD" if full_suffix(path) in (".nrrd", ".nhdr") else "MetaImage"


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
    if full_suffix(path) in _DETACHED_SUFFIXES:
        return True
    if full_suffix(path) not in (".mha", ".nrrd"):
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
    if full_suffix(path) not in (".mha", ".mhd"):
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
