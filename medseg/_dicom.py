"""DICOM folders for :mod:`medseg.io` (private): which files are DICOM, which series a folder holds.

Scanners and converters name DICOM files anything (``IM0001``, ``1.2.840.113619...``,
``N2D_0001.dcm``), so a file is recognised by its content: a DICOM Part 10 file has the
four bytes ``DICM`` after a 128-byte preamble. A folder may hold several series (a
localizer, a T1, a T2, derived maps ...); they are told apart by SeriesInstanceUID, as
GDCM (through SimpleITK) groups them, and described from one header per series.

Public names are re-exported by :mod:`medseg.io`, the only public reader.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

DICOM_MAGIC = b"DICM"
"""Bytes 128:132 of a DICOM Part 10 file."""
DICOM_MAGIC_OFFSET = 128
MAX_PROBED_FILES = 64
"""At most this many files of a folder are opened to decide whether it holds DICOM files."""
DICOMDIR_NAME = "DICOMDIR"
"""A DICOM media index: a DICOM file, but no image; the images lie in subfolders."""

# DICOM tags read from one header per series ("group|element", as SimpleITK names them).
_SERIES_NUMBER = "0020|0011"
_SERIES_DESCRIPTION = "0008|103e"
_MODALITY = "0008|0060"
_ROWS = "0028|0010"
_COLUMNS = "0028|0011"
_INTEGER = re.compile(r"[+-]?\d+")


def is_dicom_file(path: Path) -> bool:
    """Return whether ``path`` is a regular file with the DICOM Part 10 marker.

    Unreadable files and files shorter than 132 bytes are not DICOM; nothing raises.
    """
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(len(DICOM_MAGIC)) == DICOM_MAGIC
    except OSError:
        return False


def probe_folder(folder: Path) -> bool:
    """Return whether ``folder`` holds a DICOM file among its first ``MAX_PROBED_FILES``.

    Only regular files directly in ``folder`` count (in directory order, not sorted, so a
    huge folder costs ``MAX_PROBED_FILES`` small reads); a ``DICOMDIR`` index does not.
    """
    try:
        with os.scandir(folder) as entries:
            files = (
                Path(e.path)
                for e in entries
                if e.name.upper() != DICOMDIR_NAME and _is_regular_file(e)
            )
            return any(is_dicom_file(p) for p in itertools.islice(files, MAX_PROBED_FILES))
    except OSError:  # not a folder, missing, or unreadable
        return False


def _is_regular_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()  # follows symbolic links
    except OSError:
        return False


def count_entries(folder: Path) -> tuple[int, int, bool]:
    """(number of files, number of subfolders, whether a DICOMDIR is there), for messages."""
    num_files = num_folders = 0
    has_dicomdir = False
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                num_folders += 1
            else:
                num_files += 1
                has_dicomdir |= entry.name.upper() == DICOMDIR_NAME
    return num_files, num_folders, has_dicomdir


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series of a folder, described from its headers.

    Attributes:
        uid: SeriesInstanceUID (0020,000E), which groups the files into the series.
        number: SeriesNumber (0020,0011), or None if absent or not an integer.
        description: SeriesDescription (0008,103E), ``""`` if absent.
        modality: Modality (0008,0060), e.g. ``"MR"``, ``""`` if absent.
        num_files: Number of files (slices) in the series.
        rows: Rows (0028,0010) of a slice, i.e. its size along y in pixels, or None.
        columns: Columns (0028,0011) of a slice, i.e. its size along x in pixels, or None.
        files: The series' files, in slice order (as GDCM sorts them by position).
    """

    uid: str
    number: int | None
    description: str
    modality: str
    num_files: int
    rows: int | None = None
    columns: int | None = None
    files: tuple[Path, ...] = field(default=(), repr=False, compare=False)

    def summary(self) -> str:
        """One line: ``number 'description' (N files, uid UID)``.

        Example:
            >>> DicomSeries("1.2.3", 401, "anat-T1w", "MR", 384).summary()
            "401 'anat-T1w' (384 files, uid 1.2.3)"
        """
        number = "-" if self.number is None else str(self.number)
        files = "1 file" if self.num_files == 1 else f"{self.num_files} files"
        return f"{number} {self.description!r} ({files}, uid {self.uid})"


def scan_series(folder: Path) -> list[DicomSeries]:
    """The DICOM series of ``folder`` (not its subfolders), sorted by SeriesNumber then UID.

    Reads headers only: GDCM groups the files by SeriesInstanceUID and sorts each series,
    then one file per series gives the descriptive tags. Call with SimpleITK warnings off
    and the process locale kept (see :mod:`medseg.io`).

    Raises:
        RuntimeError: from SimpleITK, if GDCM cannot scan the folder.
    """
    import SimpleITK as sitk

    found = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = tuple(
            Path(name) for name in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        )
        if not files:
            continue
        tags = _header_tags(files[0])
        found.append(
            DicomSeries(
                uid=uid,
                number=_integer(tags.get(_SERIES_NUMBER, "")),
                description=tags.get(_SERIES_DESCRIPTION, "").strip(),
                modality=tags.get(_MODALITY, "").strip(),
                num_files=len(files),
                rows=_integer(tags.get(_ROWS, "")),
                columns=_integer(tags.get(_COLUMNS, "")),
                files=files,
            )
        )
    return sorted(found, key=lambda s: (s.number is None, s.number or 0, s.uid))


def _header_tags(path: Path) -> dict[str, str]:
    """The descriptive tags of one DICOM file; a tag that cannot be read is left out."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    tags = {}
    for key in (_SERIES_NUMBER, _SERIES_DESCRIPTION, _MODALITY, _ROWS, _COLUMNS):
        try:
            if reader.HasMetaDataKey(key):
                tags[key] = reader.GetMetaData(key)
        except (RuntimeError, UnicodeDecodeError):  # e.g. a description not in UTF-8
            continue
    return tags


def _integer(text: str) -> int | None:
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def check_series_argument(series: object) -> str | int | None:
    """Check the ``series`` argument of the readers: None, a UID / number string or an int.

    Raises:
        TypeError: for any other type (a bool included).
    """
    if series is None or isinstance(series, str):
        return series
    if isinstance(series, int) and not isinstance(series, bool):
        return series
    raise TypeError(
        "series must be a SeriesInstanceUID (str) or a SeriesNumber (int or numeric str), "
        f"got {type(series).__name__} {series!r}"
    )


def choose_series(
    found: list[DicomSeries], series: str | int | None, *, folder: Path, what: str
) -> DicomSeries:
    """Pick the series that ``series`` names, or the only one when ``series`` is None.

    A string equal to a series' UID picks it; otherwise an integer (or a string of one)
    picks the series with that SeriesNumber.

    Args:
        found: The folder's series, at least one (from :func:`scan_series`).
        series: A SeriesInstanceUID, a SeriesNumber, or None.
        folder: The folder, named in messages.
        what: What is read (``"image"``, ``"label"``...), named in messages.

    Raises:
        ValueError: with several series and ``series`` None, or when ``series`` matches
            no series or several; the message lists every series of the folder.
    """
    listing = ", ".join(s.summary() for s in found)
    where = f"{what} {str(folder)!r}"
    if series is None:
        if len(found) == 1:
            return found[0]
        raise ValueError(
            f"{where} must hold one DICOM series or name one, got {len(found)} series: "
            f"{listing}; choose one with --series UID|NUMBER (series= in Python)"
        )
    if isinstance(series, str):
        by_uid = [s for s in found if s.uid == series.strip()]
        if by_uid:
            return by_uid[0]
    number = series if isinstance(series, int) else _integer(series)
    matches = [s for s in found if number is not None and s.number == number]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(
            f"series {series!r} must name one series of {where}, got {len(matches)} series "
            f"with SeriesNumber {number}: {', '.join(s.summary() for s in matches)}; "
            "choose one by its UID"
        )
    raise ValueError(
        f"series {series!r} must be the SeriesInstanceUID or SeriesNumber of a series in "
        f"{where}, got no match among {len(found)} series: {listing}"
    )
