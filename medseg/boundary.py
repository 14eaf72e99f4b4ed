"""The three-class boundary head for touching objects: targets and seeded watershed.

A foreground / background network merges touching nuclei into one component; the U-Net
paper answers with a carved gap and a weight map (:mod:`medseg.weightmap`). The DSB2018
field learned a simpler target that a network learns more easily: three classes,

* 0 = background,
* 1 = interior (object pixels away from any other label),
* 2 = boundary (object pixels within ``width`` pixels of the background or of another
  object; between two touching objects both rims are boundary, so their interiors are
  apart by ``2 * width`` pixels).

At prediction every connected interior region is one object's seed, and the seeds grow
through the predicted foreground (interior and boundary) by geodesic dilation, so the
boundary pixels are given back to the nearest seed and touching objects meet where their
rims meet. Foreground regions that hold no interior (objects smaller than their rim)
are objects of their own.

Array conventions follow STYLE.md section 2: maps are ``(Z, Y, X)``, 2D data as
``Z == 1`` (handled in-plane). Every function is pure.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

from medseg.instances import relabel_sequential, remove_small_objects
from medseg.typing import LabelArray

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
LABEL_NAMES = {BACKGROUND: "background", INTERIOR: "interior", BOUNDARY: "boundary"}
"""Class names of a boundary-head model, as stored in its checkpoint."""


def boundary_classes(instances: LabelArray, *, width: int = 1) -> LabelArray:
    """The three-class target of an instance map (module docstring).

    A pixel of object ``a`` is boundary when some pixel within ``width`` pixels of it
    along each axis (a ``(2 width + 1)`` square in-plane for ``Z == 1``, a cube in 3D)
    holds a different id, background included. Only pixels inside the image count, so
    an object cut by the image edge gets no rim along it.

    Args:
        instances: Instance map, integer, ``(Z, Y, X)``: 0 = background, positive ids.
        width: Rim width in pixels, an integer >= 1.

    Returns:
        Classes, uint8 ``(Z, Y, X)``: 0 background, 1 interior, 2 boundary.

    Raises:
        TypeError: ``instances`` is not an integer ndarray.
        ValueError: not 3D, negative ids, or a bad ``width``.

    Example:
        >>> boundary_classes(np.array([[[0, 1, 1, 1, 1, 2, 2, 2]]])).tolist()
        [[[0, 2, 1, 1, 2, 2, 1, 1]]]
    """
    _check_map(instances, "instances")
    if not isinstance(width, numbers.Integral) or isinstance(width, bool) or width < 1:
        raise ValueError(f"width must be an integer >= 1 (pixels), got {width!r}")
    ids = instances.astype(np.int64)
    planar = ids.shape[0] == 1
    arr = ids[0] if planar else ids
    size = 2 * int(width) + 1
    # Some pixel in the window holds another id <=> the window's max or min differs.
    # Edge ("nearest") padding repeats pixels of the same window, so only pixels inside
    # the image take part.
    high = ndimage.maximum_filter(arr, size=size, mode="nearest")
    low = ndimage.minimum_filter(arr, size=size, mode="nearest")
    rim = (arr > 0) & ((high != arr) | (low != arr))
    out = np.where(arr > 0, INTERIOR, BACKGROUND).astype(np.uint8)
    out[rim] = BOUNDARY
    return out[None] if planar else out


def instances_from_boundary(
    classes: LabelArray, *, min_size: int = 0, connectivity: int = 1
) -> LabelArray:
    """Objects from a predicted three-class map: seeded watershed (module docstring).

    1. Seeds: the connected components of the interior (class 1), numbered in raster
       order of their first pixel.
    2. Growth: step by step, every unlabelled foreground pixel (class 1 or 2) next to a
       labelled one takes the largest id among its labelled neighbours of the previous
       step (geodesic dilation inside the foreground), until nothing changes.
    3. Foreground regions that no seed reached become objects of their own, numbered
       after the seeds in raster order.
    4. Objects smaller than ``min_size`` pixels are removed and the rest renumbered 1..N.

    Args:
        classes: Class map, integer ``(Z, Y, X)``: 0 background, 1 interior, 2 boundary.
        min_size: Smallest object kept, pixels; 0 keeps all.
        connectivity: Neighbours of a pixel for seeds and growth: 1 = faces (4 in 2D),
            2 = also diagonals in-plane (8 in 2D); 3 for all 26 in 3D.

    Returns:
        Instance map, int32 ``(Z, Y, X)``: 0 background, 1..N objects.

    Raises:
        TypeError: ``classes`` is not an integer ndarray.
        ValueError: not 3D, values outside 0..2, a bad ``min_size`` or ``connectivity``.

    Example:
        >>> classes = np.array([[[2, 1, 1, 2, 2, 1, 2, 0, 2]]])
        >>> instances_from_boundary(classes).tolist()
        [[[1, 1, 1, 1, 2, 2, 2, 0, 3]]]
    """
    _check_map(classes, "classes")
    if classes.size and int(classes.max()) > BOUNDARY:
        raise ValueError(
            f"classes must hold 0 (background), 1 (interior) and 2 (boundary), got value "
            f"{int(classes.max())}; is this a three-class boundary model's output?"
        )
    if not isinstance(min_size, numbers.Integral) or isinstance(min_size, bool) or min_size < 0:
        raise ValueError(f"min_size must be an integer >= 0 (pixels), got {min_size!r}")
    shape = classes.shape
    planar = shape[0] == 1
    arr = classes[0] if planar else classes
    rank = arr.ndim
    if (
        not isinstance(connectivity, numbers.Integral)
        or isinstance(connectivity, bool)
        or not 1 <= connectivity <= rank
    ):
        raise ValueError(
            f"connectivity must be an integer in 1..{rank} for a {rank}D map, got {connectivity!r}"
        )
    structure = ndimage.generate_binary_structure(rank, int(connectivity))
    foreground = arr > 0
    seeds, num_seeds = ndimage.label(arr == INTERIOR, structure=structure)
    labels = seeds.astype(np.int32)
    while True:
        grown = ndimage.grey_dilation(labels, footprint=structure, mode="constant", cval=0)
        new = foreground & (labels == 0) & (grown > 0)
        if not new.any():
            break
        labels[new] = grown[new]
    rest, _ = ndimage.label(foreground & (labels == 0), structure=structure)
    labels[rest > 0] = rest[rest > 0] + num_seeds
    out = relabel_sequential(labels.reshape(shape))
    if min_size > 1:
        out = remove_small_objects(out, min_size=int(min_size))
    return out


def _check_map(value: object, name: str) -> None:
    if (
        not isinstance(value, np.ndarray)
        or value.dtype == np.bool_
        or not np.issubdtype(value.dtype, np.integer)
    ):
        kind = (
            f"ndarray of dtype {value.dtype}"
            if isinstance(value, np.ndarray)
            else type(value).__name__
        )
        raise TypeError(f"{name} must be an integer ndarray, got {kind}")
    if value.ndim != 3:
        raise ValueError(f"{name} must be 3D (Z, Y, X) with Z == 1 for 2D, got shape {value.shape}")
    if value.size and int(value.min()) < 0:
        raise ValueError(f"{name} must hold values >= 0, got minimum {int(value.min())}")
