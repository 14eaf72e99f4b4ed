"""NIfTI and FreeSurfer MGH files (nibabel): arrays are ``(x, y, z[, c])`` in the file and
``(C, Z, Y, X)`` in memory (ARCHITECTURE.md section 2); both affines map voxel (x, y, z)
to RAS in mm."""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medseg import _limits
from medseg.io._formats import _unreadable
from medseg.io.geometry import Geometry, _Raw

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
