"""Checks and conversions of volume arrays (ARCHITECTURE.md sections 2 and 9): a volume
as read to medseg's image, label and instance arrays, and an array to be written to what
its output format stores, with a one-line error before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.io._formats import _FORMAT_NAMES, SUPPORTED_SUFFIXES
from medseg.io.geometry import _LPS_TO_RAS, Geometry, _format_affine, _Raw

_LABEL_MAX = 255
_INSTANCE_MAX = int(np.iinfo(np.int32).max)
_UINT16_MAX = int(np.iinfo(np.uint16).max)


# --------------------------------------------------------------------------------------
# Read arrays


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


def _check_opaque(alpha: np.ndarray, opaque: float, path: Path, what: str) -> None:
    num_transparent = int(np.count_nonzero(alpha != opaque))
    if num_transparent:
        raise ValueError(
            f"{what} {str(path)!r} must be opaque (alpha {opaque:g} everywhere), got "
            f"{num_transparent} transparent or translucent pixel(s); flatten it onto a "
            "background first"
        )


# --------------------------------------------------------------------------------------
# Arrays to write


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


# --------------------------------------------------------------------------------------
# Message helpers


def _format_number(value: float | np.number) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"
