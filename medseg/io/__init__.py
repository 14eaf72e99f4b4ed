"""Volume I/O: the only package that knows file axis order (ARCHITECTURE.md section 2).

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

The package: :mod:`medseg.io.geometry` (:class:`Geometry`, :class:`Volume`, the grid
helpers); ``_formats`` (the suffix -> format table); one module per backend (``_nifti``
for NIfTI and MGH, ``_itk`` for MetaImage, NRRD and DICOM, ``_png``, ``_tiff``);
``_checks`` (array checks and conversions) and ``_dispatch`` (format -> backend). The
atomic-file helpers live in :mod:`medseg._files`. This module holds the public reading and
writing functions and re-exports the rest, so ``from medseg.io import name`` keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medseg import _dicom
from medseg._dicom import DicomSeries
from medseg._files import (  # noqa: F401  (re-exported: their home is medseg._files)
    atomic_output,
    check_output_path,
)
from medseg.io._checks import (
    _INSTANCE_MAX,
    _LABEL_MAX,
    _UINT16_MAX,
    _as_image_array,
    _as_integer_map,
    _check_writable_layout,
    _image_array,
    _image_for_format,
    _instance_array,
    _label_array,
    _refuse_dicom_labels,
    _single_channel_array,
)
from medseg.io._dispatch import _read_raw, _read_single_channel, _write
from medseg.io._formats import (  # noqa: F401  (re-exported: the suffix table)
    _FORMAT_NAMES,
    DICOM_SLICE_SUFFIX,
    ITK_SUFFIXES,
    MGH_SUFFIXES,
    NIFTI_SUFFIXES,
    OME_TIFF_SUFFIXES,
    PNG_SUFFIXES,
    SUPPORTED_SUFFIXES,
    TIFF_SUFFIXES,
    _output_format,
    is_dicom_folder,
    split_suffix,
)
from medseg.io._itk import _raw_from_sitk, _scan_dicom_series
from medseg.io._nifti import _nifti_image, _raw_from_nifti
from medseg.io.geometry import (  # noqa: F401  (re-exported: geometry and grid helpers)
    Geometry,
    GeometryError,
    Volume,
    VolumeInfo,
    _check_geometry,
    _Raw,
    axial_axis,
    check_same_grid,
    resolve_slice_axis,
)
from medseg.typing import PathLike

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
    path, fmt, values = _integer_output(path, label, geometry, "label", "label map", _LABEL_MAX)
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
    path, fmt, values = _integer_output(
        path, instances, geometry, "instances", "instance map", _INSTANCE_MAX
    )
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


def _integer_output(
    path: PathLike, array: np.ndarray, geometry: Geometry, name: str, what: str, high: int
) -> tuple[Path, str, np.ndarray]:
    """The checks of :func:`write_label` and :func:`write_instances` before anything is
    written: the format of ``path`` (not a DICOM folder), the geometry, integer values in
    0..``high`` and a layout the format holds. ``name`` is the argument, ``what`` the thing
    written; returns the path, its format and the values as an integer (Z, Y, X) array."""
    path = Path(path)
    fmt = _output_format(path, "label" if name == "label" else what)
    _refuse_dicom_labels(path, fmt, what)
    _check_geometry(geometry)
    values = _as_integer_map(array, name, high=high)
    _check_writable_layout((1, *values.shape), values.shape, geometry, fmt, path, name)
    return path, fmt, values


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
