"""The formats :mod:`medseg.io` reads and writes: the suffix -> format table,
:func:`split_suffix`, and the format of an input or output path (a suffix, or a DICOM
series folder).

Each format has one backend module: ``_nifti`` (NIfTI and FreeSurfer MGH, nibabel),
``_itk`` (MetaImage, NRRD and DICOM series, SimpleITK), ``_png`` (Pillow) and ``_tiff``
(tifffile); ``_dispatch`` calls the one a format names.
"""

from __future__ import annotations

from pathlib import Path

from medseg import _dicom
from medseg._files import full_suffix
from medseg.typing import PathLike

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


# --------------------------------------------------------------------------------------
# Format of a path


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
    suffix = full_suffix(path)
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
    suffix = full_suffix(path)
    if not suffix:
        return "dicom"
    fmt = _format_from_suffix(suffix)
    if fmt is None:
        raise ValueError(
            f"output {what} {str(path)!r} must have a suffix in {', '.join(SUPPORTED_SUFFIXES)} "
            f"or none (a DICOM series folder), got {suffix!r}"
        )
    return fmt


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
