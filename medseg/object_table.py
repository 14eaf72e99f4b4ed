"""A table of the objects of an instance map: what a cell-imaging lab measures next.

:func:`object_table` gives, per object: its id, its size in pixels (voxels for a stack)
and, when the file records a pixel size, in µm² (µm³), its centroid in pixels and its mean
intensity in each channel of the image as read. ``medseg predict --table`` writes it as
``<stem>_objects.csv`` (:func:`write_object_table`, atomically).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg.io import atomic_output
from medseg.typing import PathLike

UNKNOWN_PIXEL_MM = 1.0
"""The spacing medseg.io gives an image whose file records no pixel size (PNG, a TIFF
without resolution tags): a 1 mm pixel, which no microscope has. Physical sizes are left
out for it."""


def object_table(instances: np.ndarray, image: np.ndarray, *, spacing_mm: tuple[float, ...]) -> Any:
    """Measure every object of an instance map.

    Args:
        instances: Object ids, integer ``(Z, Y, X)``; 0 is background, ids need not be
            consecutive.
        image: Intensities as read, float ``(C, Z, Y, X)``, on the same grid.
        spacing_mm: Voxel size ``(z, y, x)`` in mm; in-plane sizes of exactly 1 mm mean
            "unknown" (:data:`UNKNOWN_PIXEL_MM`).

    Returns:
        A pandas DataFrame, one row per object in increasing id: ``id``, ``area_px`` (2D)
        or ``volume_voxels`` (Z > 1), ``area_um2`` / ``volume_um3`` when the pixel size is
        known, ``centroid_z`` (stacks only), ``centroid_y``, ``centroid_x`` (pixels, the
        mean index), and ``mean_intensity`` (one channel) or ``mean_intensity_c<k>``.

    Raises:
        ValueError: shapes that differ, or an instance map that is not integer.

    Example:
        >>> inst = np.array([[[0, 2, 2], [0, 0, 5]]])
        >>> img = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
        >>> object_table(inst, img, spacing_mm=(1.0, 1.0, 1.0)).values.tolist()
        [[2.0, 2.0, 0.0, 1.5, 1.5], [5.0, 1.0, 1.0, 2.0, 5.0]]
    """
    import pandas as pd

    if instances.dtype.kind not in "iub":
        raise ValueError(f"instances must be an integer map, got dtype {instances.dtype}")
    if image.ndim != 4 or image.shape[1:] != instances.shape:
        raise ValueError(
            f"image must be (C, Z, Y, X) with spatial shape {instances.shape}, got {image.shape}"
        )
    flat = instances.ravel().astype(np.int64)
    ids = np.unique(flat)
    ids = ids[ids != 0]
    index = np.searchsorted(ids, flat)  # position of each voxel's id among the objects
    inside = flat != 0
    where = index[inside]
    counts = np.bincount(where, minlength=len(ids)).astype(np.float64)
    stack = instances.shape[0] > 1
    table: dict[str, Any] = {"id": ids}
    size_key = "volume_voxels" if stack else "area_px"
    table[size_key] = counts.astype(np.int64)
    sz, sy, sx = (float(s) for s in spacing_mm)
    if not (sy == UNKNOWN_PIXEL_MM and sx == UNKNOWN_PIXEL_MM):
        um2 = (sy * 1000.0) * (sx * 1000.0)
        if stack:
            table["volume_um3"] = counts * um2 * sz * 1000.0
        else:
            table["area_um2"] = counts * um2
    coords = np.indices(instances.shape).reshape(3, -1)[:, inside]
    names = ("centroid_z", "centroid_y", "centroid_x")
    for axis, name in enumerate(names):
        if axis == 0 and not stack:
            continue
        table[name] = np.bincount(where, weights=coords[axis], minlength=len(ids)) / counts
    channels = image.shape[0]
    for c in range(channels):
        values = image[c].ravel()[inside].astype(np.float64)
        key = "mean_intensity" if channels == 1 else f"mean_intensity_c{c}"
        table[key] = np.bincount(where, weights=values, minlength=len(ids)) / counts
    return pd.DataFrame(table)


def write_object_table(path: PathLike, table: Any, *, overwrite: bool = False) -> Path:
    """Write an :func:`object_table` as CSV, atomically (temporary file, then rename).

    Args:
        path: Output ``.csv``.
        table: The DataFrame.
        overwrite: Replace an existing file.
    """
    with atomic_output(path, overwrite=overwrite) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return Path(path)
