"""TIFF and OME-TIFF files (tifffile): series axes such as ``"YX"``, ``"ZYX"``, ``"YXS"``,
``"ZCYX"`` in the file, ``(C, Z, Y, X)`` in memory (ARCHITECTURE.md section 2); spacing
from OME-XML, ImageJ metadata or the resolution tags."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medseg import _limits
from medseg.io._checks import _check_opaque
from medseg.io._formats import _unreadable
from medseg.io.geometry import Geometry, _Raw
from medseg.typing import Spacing3

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
