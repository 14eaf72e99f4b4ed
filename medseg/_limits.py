"""The guarded door of every image reader: a declared size is checked before it is allocated.

A header can declare any shape: a 452-byte NIfTI file may claim 30000³ float32 voxels.
Every reader of :mod:`medseg.io` calls :func:`check_declared_size` with the shape and
item size its header declares, before it reads or allocates the voxels, and the read is
refused in one line naming the file, the declared shape and the limit when

* the voxel count exceeds :func:`max_voxels` (``$MEDSEG_MAX_VOXELS``, default
  :data:`DEFAULT_MAX_VOXELS`, about 4 GB of float32), or
* the file cannot hold what it declares: an uncompressed file smaller than its voxel data,
  or a compressed one whose data would expand more than :data:`MAX_EXPANSION` times (deflate,
  used by ``.gz``, ``.mgz``, PNG and compressed MHA / TIFF, expands at most about 1032
  times; LZW about 2730 times).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

DEFAULT_MAX_VOXELS = 1_000_000_000
"""Voxels (all channels) one image may hold unless ``$MEDSEG_MAX_VOXELS`` says otherwise."""
LIMIT_ENV = "MEDSEG_MAX_VOXELS"
MAX_EXPANSION = 5000
"""More than any real codec's expansion (deflate ~1032, LZW ~2730)."""


class DeclaredSizeError(ValueError):
    """A file declares more voxels than the limit or than it can hold."""


def max_voxels() -> int:
    """The voxel limit: ``$MEDSEG_MAX_VOXELS`` if set (a positive integer), else the default.

    Raises:
        ValueError: the variable is set to something else.
    """
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_VOXELS
    try:
        value = float(text)  # 2e9 or 2000000000
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"${LIMIT_ENV} must be a positive number of voxels, got {text!r}")
    return int(value)


def _bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def check_declared_size(
    path: Path,
    what: str,
    shape: Sequence[int],
    itemsize: int,
    *,
    compressed: bool | None,
    file_bytes: int | None = None,
) -> None:
    """Refuse a read whose declared voxels exceed the limit or what the file can hold.

    Args:
        path: The file (or DICOM folder), for messages and its size.
        what: What the file is to the caller (``"input"``, ``"label"``).
        shape: The declared shape, any axes.
        itemsize: Bytes per stored value.
        compressed: Whether the voxel data are compressed; None: unknown (or stored in
            another file): only the voxel limit applies.
        file_bytes: The bytes that hold the data (default: ``path``'s size).

    Raises:
        DeclaredSizeError: (a ValueError) in one line, naming the file, the declared shape
            and the limit.
    """
    voxels = math.prod(int(n) for n in shape)
    limit = max_voxels()
    dims = "x".join(str(int(n)) for n in shape)
    if voxels > limit:
        raise DeclaredSizeError(
            f"{what} {str(path)!r} must have at most {limit:,} voxels (${LIMIT_ENV}), got a "
            f"declared shape {dims} = {voxels:,} voxels; raise ${LIMIT_ENV} if it is real"
        )
    if compressed is None:
        return
    if file_bytes is None:
        try:
            file_bytes = Path(path).stat().st_size
        except OSError:
            return
    data = voxels * max(1, int(itemsize))
    room = file_bytes * (MAX_EXPANSION if compressed else 1)
    if data > room:
        kind = "compressed " if compressed else ""
        raise DeclaredSizeError(
            f"{what} {str(path)!r} must hold the voxels its header declares, got a declared "
            f"shape {dims} ({_bytes(data)}) in a {kind}file of {_bytes(file_bytes)}; the file "
            "is truncated or its header is wrong"
        )
