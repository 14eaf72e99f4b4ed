"""Argument checks shared by several modules, one convention: ``check_x(value, name, ...)``.

A helper that two modules need lives here rather than being copied or imported as a
private name across modules (ARCHITECTURE.md section 1). Each check raises with the argument's
name, what was expected and what was received, and returns nothing or the normalised value.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def describe(value: object) -> str:
    """How a received value is named in messages: ``"ndarray of dtype float32"``, ``"list"``.

    Example:
        >>> describe(np.zeros(2, np.uint8)), describe([1])
        ('ndarray of dtype uint8', 'list')
    """
    if isinstance(value, np.ndarray):
        return f"ndarray of dtype {value.dtype}"
    return type(value).__name__


def preview(values: list, limit: int = 8) -> str:
    """At most ``limit`` values of a list, and how many there are.

    Example:
        >>> preview(list(range(10)), 3)
        '[0, 1, 2]... (10 values)'
    """
    if len(values) <= limit:
        return str(values)
    return f"{values[:limit]}... ({len(values)} values)"


def is_real(value: object) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_spatial_ndim(arr: np.ndarray, name: str) -> None:
    """``arr`` must be a non-empty 2D ``(Y, X)`` or 3D ``(Z, Y, X)`` array."""
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be 2D (Y, X) or 3D (Z, Y, X), got shape {arr.shape}; "
            "squeeze channel axes first"
        )
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")


def check_integer_map(value: object, name: str) -> None:
    """``value`` must be an integer (not bool) ndarray ``(Z, Y, X)`` of values >= 0."""
    if (
        not isinstance(value, np.ndarray)
        or value.dtype == np.bool_
        or not np.issubdtype(value.dtype, np.integer)
    ):
        raise TypeError(f"{name} must be an integer ndarray, got {describe(value)}")
    if value.ndim != 3:
        raise ValueError(f"{name} must be 3D (Z, Y, X) with Z == 1 for 2D, got shape {value.shape}")
    if value.size and int(value.min()) < 0:
        raise ValueError(f"{name} must hold values >= 0, got minimum {int(value.min())}")


def check_integer(value: object, name: str, *, minimum: int, unit: str = "", hint: str = "") -> int:
    """``value`` as an int if it is an integer (not a bool) >= ``minimum``, else ValueError.

    Example:
        >>> check_integer(3, "min_distance", minimum=1, unit="voxels")
        3
    """
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        what = f" ({unit})" if unit else ""
        fix = f"; {hint}" if hint else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{what}, got {value!r}{fix}")
    return int(value)


def check_spacing_mm(value: object, name: str = "spacing_mm") -> tuple[float, float, float]:
    """``value`` as 3 finite positive floats, the voxel size ``(z, y, x)`` in mm.

    Example:
        >>> check_spacing_mm([1.5, 1, 1])
        (1.5, 1.0, 1.0)
    """
    try:
        values = tuple(float(s) for s in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name} must be 3 positive numbers (z, y, x) in mm, got {value!r}"
        ) from err
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"{name} must be 3 positive numbers (z, y, x) in mm, got {value!r}")
    return values  # type: ignore[return-value]


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """``value`` as a float if it is a finite real number (not a bool) ``> 0``, or ``>= 0``
    with ``allow_zero``: TypeError for a non-number, ValueError for a bad value.

    Example:
        >>> check_positive(2, "sigma"), check_positive(0, "w0", allow_zero=True)
        (2.0, 0.0)
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise TypeError(f"{name} must be a number, got {describe(value)} {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(number) and (number >= 0 if allow_zero else number > 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def check_diameter(value: object, name: str) -> float | str | None:
    """An object diameter setting: None, ``"auto"``, ``"none"`` or a positive number of
    pixels (returned as float).

    Example:
        >>> check_diameter(30, "diameter"), check_diameter("auto", "diameter")
        (30.0, 'auto')
    """
    if value is None or value in ("auto", "none"):
        return value  # type: ignore[return-value]
    if is_real(value) and math.isfinite(float(value)) and float(value) > 0:  # type: ignore[arg-type]
        return float(value)  # type: ignore[arg-type]
    raise ValueError(f"{name} must be 'auto', 'none' or a positive number of pixels, got {value!r}")


def check_instance_map(
    value: object, name: str, *, ndims: tuple[int, ...] = (3,), allow_bool: bool = False
) -> np.ndarray:
    """``value`` as an instance map: an integer ndarray of ids >= 0 (0 background, each
    object one id), ``(Z, Y, X)`` with Z == 1 for 2D, or also ``(Y, X)`` when ``ndims``
    holds 2. A bool mask is refused (objects must be labelled first) unless ``allow_bool``,
    when it is read as ids 0 and 1. TypeError for a bad type or dtype, ValueError for a bad
    shape or a negative id (naming the first voxel that holds one).

    Example:
        >>> check_instance_map(np.array([[[0, 2], [2, 5]]]), "pred").shape
        (1, 2, 2)
    """
    what = f"{name} must be an integer ndarray (an instance map), got"
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{what} {describe(value)}; convert with np.asarray(...)")
    if value.dtype == np.bool_:
        if not allow_bool:
            raise TypeError(
                f"{what} a bool mask; label its objects first with "
                "medseg.instances.instances_from_mask"
            )
        value = value.view(np.uint8)
    if not np.issubdtype(value.dtype, np.integer):
        raise TypeError(f"{what} dtype {value.dtype}; cast ids with astype(np.int32)")
    if value.ndim not in ndims:
        shapes = " or ".join({2: "2D (Y, X)", 3: "3D (Z, Y, X)"}[n] for n in ndims)
        raise ValueError(
            f"{name} must be {shapes} with Z == 1 for 2D, got shape {value.shape}"
            + ("; add the axis with arr[np.newaxis]" if ndims == (3,) else "")
        )
    if value.size and np.iinfo(value.dtype).min < 0 and value.min() < 0:
        where = np.unravel_index(int(np.argmax(value < 0)), value.shape)
        raise ValueError(
            f"{name} ids must be >= 0, got {int(value.min())} "
            f"(first at voxel {tuple(int(i) for i in where)}); 0 is background"
        )
    return value
