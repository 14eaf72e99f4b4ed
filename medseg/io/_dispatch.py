"""Reading and writing through the backends: each format's reader and writer, nibabel's
and ITK's messages kept off stderr (ARCHITECTURE.md section 9), and every output written
atomically (:mod:`medseg._files`)."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from medseg import _dicom, _limits
from medseg._files import (
    atomic_output,
    atomic_output_detached,
    atomic_output_folder,
    full_suffix,
)
from medseg.io._checks import _single_channel_array
from medseg.io._formats import _DETACHED_SUFFIXES, _FORMAT_NAMES, OME_TIFF_SUFFIXES, _input_format
from medseg.io._itk import (
    _itk_warnings_off,
    _locale_kept,
    _read_dicom,
    _read_itk,
    _voxels_elsewhere,
    _write_dicom,
    _write_itk,
)
from medseg.io._nifti import _read_mgh, _read_nifti, _write_mgh, _write_nifti
from medseg.io._png import _read_png, _write_png
from medseg.io._tiff import _read_tiff, _write_tiff
from medseg.io.geometry import Geometry, GeometryError, Volume, _Raw


class _ForwardToMedseg(logging.Handler):
    """nibabel's log records, re-sent to the ``medseg.io`` logger at debug level."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("medseg.io").debug("nibabel: %s", record.getMessage())


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
            compressed = fmt not in ("nifti", "mgh") or full_suffix(path) in (".nii.gz", ".mgz")
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


def _write(path: Path, data: np.ndarray, geometry: Geometry, fmt: str, *, overwrite: bool) -> Path:
    """Write (C, Z, Y, X) data, already in its output dtype, atomically."""
    if fmt == "dicom":
        with atomic_output_folder(path, overwrite=overwrite) as folder:
            with _locale_kept():
                _write_dicom(folder, data, geometry)
    elif full_suffix(path) in _DETACHED_SUFFIXES:
        with atomic_output_detached(path, overwrite=overwrite) as tmp:
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
