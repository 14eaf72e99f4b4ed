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

Array conventions follow ARCHITECTURE.md section 2: maps are ``(Z, Y, X)``, 2D data as
``Z == 1`` (handled in-plane). Every function is pure.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

from medseg._validate import check_integer_map, describe, is_real
from medseg.instances import (  # noqa: F401  (instances_from_boundary re-exported)
    BACKGROUND,
    BOUNDARY,
    INTERIOR,
    instances_from_boundary,
)
from medseg.typing import LabelArray

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
    check_integer_map(instances, "instances")
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


def classes_from_probs(probs: np.ndarray, *, mask_threshold: float = 0.5) -> LabelArray:
    """A boundary head's class map decided foreground first, from its probabilities.

    The argmax of three classes calls a pixel background whenever background is the
    single most likely class, even where the two object classes together are more
    likely (``p = (0.4, 0.3, 0.3)``). Here a pixel is an object pixel where its
    foreground probability ``1 - p(background)`` is above ``mask_threshold`` (0.5: the
    more likely of object and background), and an object pixel is interior where
    ``p(interior) >= p(boundary)``, else boundary. Objects then come from
    :func:`instances_from_boundary` as for a class map.

    Args:
        probs: Class probabilities, floating ``(3, Z, Y, X)``: background, interior,
            boundary.
        mask_threshold: Foreground probability above which a pixel is an object pixel,
            in (0, 1).

    Returns:
        Classes, uint8 ``(Z, Y, X)``: 0 background, 1 interior, 2 boundary.

    Raises:
        TypeError: ``probs`` is not a floating ndarray.
        ValueError: not ``(3, Z, Y, X)``, or ``mask_threshold`` outside (0, 1).

    Example:
        >>> p = np.array([[0.4, 0.6, 0.2], [0.3, 0.1, 0.5], [0.3, 0.3, 0.3]])[:, None, None]
        >>> classes_from_probs(p).tolist(), p.argmax(0).tolist()
        ([[[1, 0, 1]]], [[[0, 0, 1]]])
    """
    if not isinstance(probs, np.ndarray) or not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"probs must be a floating ndarray, got {describe(probs)}")
    if probs.ndim != 4 or probs.shape[0] != 3:
        raise ValueError(
            f"probs must be (3, Z, Y, X) (background, interior, boundary), got shape {probs.shape}"
        )
    if not is_real(mask_threshold) or not 0 < mask_threshold < 1:
        raise ValueError(f"mask_threshold must be a number in (0, 1), got {mask_threshold!r}")
    foreground = 1.0 - probs[BACKGROUND] > mask_threshold
    inner = probs[INTERIOR] >= probs[BOUNDARY]
    out = np.where(inner, INTERIOR, BOUNDARY).astype(np.uint8)
    out[~foreground] = BACKGROUND
    return out
