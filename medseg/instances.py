"""Instances from a predicted semantic foreground (U-Net microscopy post-processing).

A U-Net trained on nuclei or cells predicts a foreground / background map; counting and
per-object metrics need one id per object. Touching objects merge into one connected
component, so besides plain components this module offers a seeded watershed on the
Euclidean distance transform, the classic way to split touching, roughly convex nuclei.

Array conventions follow ARCHITECTURE.md section 2: label maps are ``(Z, Y, X)`` with 2D data as
``Z == 1``; instance maps are int32 with 0 = background and 1..N = objects. Every function
is pure: arrays in, new arrays out, inputs never modified.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from medseg import options
from medseg._validate import (
    check_instance_map,
    check_integer,
    check_integer_map,
    check_spatial_ndim,
    describe,
    is_real,
    preview,
)
from medseg.typing import FloatArray, LabelArray

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
"""The classes of a three-class boundary model (:mod:`medseg.boundary` makes its targets)."""

METHODS = ("components", "watershed")
"""Valid ``method`` values of :func:`instances_from_foreground`."""

OBJECT_METHODS = options.OBJECT_METHODS
"""The object methods of a 2D model's post-processing: ``"boundary"`` is the seeded
watershed of a three-class boundary model (:mod:`medseg.boundary`), ``"seeded"`` the
seeded watershed on the foreground probability (:mod:`medseg.membranes`; it needs the
probabilities, so :func:`instances_from_prediction`, which sees a class map, refuses it)."""

LEVEL_STEP = 0.25
"""Quantisation step of the distance map for watershed flooding, in voxels."""


def relabel_sequential(instances: LabelArray) -> LabelArray:
    """Renumber the ids of an instance map to 1..N, keeping their order.

    Args:
        instances: Instance map, integer, ``(Z, Y, X)``: 0 = background, any positive ids
            (gaps allowed, e.g. after removing objects).

    Returns:
        Instance map, int32, the shape of ``instances``: 0 stays background and the k-th
        smallest positive id becomes k.

    Raises:
        TypeError: if ``instances`` is not an integer ndarray (bool included).
        ValueError: if it is not 3D ``(Z, Y, X)`` or holds negative ids.

    Example:
        >>> instances = np.array([[[0, 7, 7, 3, 0, 42]]])
        >>> relabel_sequential(instances).tolist()
        [[[0, 2, 2, 1, 0, 3]]]
    """
    check_instance_map(instances, "instances")
    ids, inverse = np.unique(instances, return_inverse=True)
    return _renumber(ids, inverse.reshape(-1), ids != 0, instances.shape)


def remove_small_objects(instances: LabelArray, *, min_size: int) -> LabelArray:
    """Drop instances with fewer than ``min_size`` voxels and renumber the rest 1..N.

    Args:
        instances: Instance map, integer, ``(Z, Y, X)``: 0 = background, positive ids.
        min_size: Smallest size kept, in voxels; 0 or 1 keeps every object.

    Returns:
        Instance map, int32, the shape of ``instances``: removed objects become 0 and the
        kept ones are renumbered 1..N in the order of their original ids.

    Raises:
        TypeError: if ``instances`` is not an integer ndarray (bool included).
        ValueError: if it is not 3D, holds negative ids, or ``min_size`` is not an
            integer >= 0.

    Example:
        >>> instances = np.array([[[5, 5, 5, 0, 9, 2, 2]]])
        >>> remove_small_objects(instances, min_size=2).tolist()
        [[[2, 2, 2, 0, 0, 1, 1]]]
    """
    check_instance_map(instances, "instances")
    min_size = _check_min_size(min_size)
    ids, inverse = np.unique(instances, return_inverse=True)
    inverse = inverse.reshape(-1)
    sizes = np.bincount(inverse, minlength=ids.size)  # voxels per id, in ids order
    return _renumber(ids, inverse, (ids != 0) & (sizes >= min_size), instances.shape)


def instances_from_foreground(
    foreground: LabelArray,
    *,
    method: str = "components",
    min_size: int = 0,
    min_distance: int = 3,
    min_height: float = 2.0,
    sigma: float = 1.0,
    connectivity: int = 1,
) -> LabelArray:
    """Split a binary foreground into object instances.

    ``"components"``: one instance per connected component (through
    :func:`medseg.weightmap.instances_from_mask`).

    ``"watershed"``: a seeded watershed on the Euclidean distance transform, which splits
    touching convex objects (nuclei) at their necks:

    1. ``dist``: distance of each foreground voxel to the background, in voxels
       (``scipy.ndimage.distance_transform_edt``; computed in-plane when ``Z == 1``),
       smoothed by a Gaussian of ``sigma`` voxels to break pixel-grid ties.
    2. Seeds: foreground voxels where ``dist`` equals its maximum over a window of
       ``2 * min_distance + 1`` voxels (``scipy.ndimage.maximum_filter``) and
       ``dist >= min_height``; a lower peak is noise on an object's rim, not an object
       centre. Touching seed voxels (plateaus) are labelled together as one seed.
    3. Every connected component of the foreground that got no seed (objects thinner
       than ``2 * min_height``) becomes a seed of its own, so no object is lost.
    4. Flooding: the cost ``max(dist) - dist`` is quantised to uint16 levels of
       ``LEVEL_STEP`` voxels; level by level, from low cost (object centres) to high
       (rims and necks), every seed grows by geodesic dilation through the unlabelled
       foreground at or below that level, so neighbouring seeds meet at the necks. The
       flooding never enters the background. (``scipy.ndimage.watershed_ift`` is not
       used: as of scipy 1.17 it lets one seed flood across a ridge into a lower
       basin, e.g. it gives ``[1, 1, 1, 1, 1, 2, 2]`` for costs ``[0, 1, 2, 3, 2, 1,
       0]`` with seeds at both ends.)

    Args:
        foreground: Binary mask, bool or integer, ``(Z, Y, X)`` (``Z == 1`` for 2D):
            0 = background, one positive value (e.g. 1 or 255) = foreground.
        method: ``"components"`` or ``"watershed"``.
        min_size: Instances smaller than this many voxels are removed (then the rest
            renumbered, see :func:`remove_small_objects`); 0 keeps all.
        min_distance: Half-width in voxels of the window in which a seed must be the
            highest distance value; roughly the smallest object radius to split off.
            Watershed only.
        min_height: Smallest distance to the background, in voxels, of a seed. Watershed
            only.
        sigma: Gaussian smoothing of the distance map before seed detection, in voxels;
            0 disables it. Watershed only.
        connectivity: Neighbours that join voxels: 1 = faces only up to the spatial rank
            (2 for 2D, 3 for 3D) = all neighbours.

    Returns:
        Instance map, int32, the shape of ``foreground``: 0 = background, 1..N = objects
        (components in raster order of their first voxel; watershed objects in the order
        of their seeds).

    Raises:
        TypeError: if ``foreground`` is not a bool or integer ndarray.
        ValueError: for a ndim other than 3, values other than 0 and one positive value,
            an unknown ``method``, ``min_size < 0``, ``min_distance < 1``, a negative
            ``min_height`` or ``sigma``, or a bad ``connectivity``.

    Example:
        >>> foreground = np.array([[[1, 1, 0, 1], [0, 0, 0, 1]]], dtype=bool)
        >>> instances_from_foreground(foreground).tolist()
        [[[1, 1, 0, 2], [0, 0, 0, 2]]]
        >>> instances_from_foreground(foreground, method="watershed").tolist()
        [[[1, 1, 0, 2], [0, 0, 0, 2]]]
    """
    _check_foreground(foreground)
    if method not in METHODS:
        raise ValueError(
            f"method must be one of {list(METHODS)}, got {method!r}; "
            "use 'watershed' to split touching objects"
        )
    min_size = _check_min_size(min_size)
    check_integer(
        min_distance, "min_distance", minimum=1, unit="voxels",
        hint="use about the smallest object radius",
    )  # fmt: skip
    for name, value in (("min_height", min_height), ("sigma", sigma)):
        if not is_real(value) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0 (voxels), got {value!r}")
    # Validates connectivity against the spatial rank (2 when Z == 1).
    components = instances_from_mask(foreground != 0, connectivity=connectivity)
    if method == "watershed":
        instances = _watershed(
            foreground != 0,
            components,
            min_distance=int(min_distance),
            min_height=float(min_height),
            sigma=float(sigma),
            connectivity=int(connectivity),
        )
    else:
        instances = components
    if min_size > 1:
        instances = remove_small_objects(instances, min_size=min_size)
    return instances


def _face_shifts(instances: np.ndarray) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """Index pairs (here, neighbour) for every face-adjacent direction; in-plane for Z == 1."""
    axes = (1, 2) if instances.shape[0] == 1 else (0, 1, 2)
    pairs = []
    for axis in axes:
        for step in (1, -1):
            here = [slice(None)] * 3
            there = [slice(None)] * 3
            here[axis] = slice(0, -1) if step == 1 else slice(1, None)
            there[axis] = slice(1, None) if step == 1 else slice(0, -1)
            pairs.append((tuple(here), tuple(there)))
    return pairs


def carve_touching(instances: LabelArray) -> LabelArray:
    """Open a one-pixel background gap between touching objects (training targets).

    Instance maps such as DSB2018's have touching nuclei with no background between
    them, so a foreground / background target cannot teach a network to separate them,
    and the U-Net border weight (:func:`medseg.weightmap.unet_weight_map`) has no
    background there to weigh. This sets to 0 every voxel of object ``a`` that has a
    face neighbour (4 in 2D / ``Z == 1``, 6 in 3D) of an object ``b > a``: only the
    lower id gives up its rim, so the gap is one voxel wide and no two remaining objects
    touch by a face. :func:`fill_gaps` undoes it on predictions.

    Args:
        instances: Instance map, integer, ``(Z, Y, X)``: 0 = background, positive ids.

    Returns:
        Instance map, int32, the shape of ``instances``, with the gaps set to 0.

    Raises:
        TypeError: if ``instances`` is not an integer ndarray. ValueError: not 3D or
            negative ids.

    Example:
        >>> carve_touching(np.array([[[1, 1, 2, 2, 0, 3]]])).tolist()
        [[[1, 0, 2, 2, 0, 3]]]
    """
    check_instance_map(instances, "instances")
    ids = instances.astype(np.int32)
    remove = np.zeros(ids.shape, dtype=bool)
    for here, there in _face_shifts(ids):
        a, b = ids[here], ids[there]
        remove[here] |= (a > 0) & (b > a)
    out = ids.copy()
    out[remove] = 0
    return out


def fill_gaps(instances: LabelArray) -> LabelArray:
    """Give each background voxel between two objects to the lower id (inverse of carving).

    A background voxel whose face neighbours (4 in 2D / ``Z == 1``, 6 in 3D) hold at least
    two different object ids joins the smallest of them; other voxels are unchanged. On
    a map carved by :func:`carve_touching` this gives a carved voxel of ``a`` back to
    ``a`` when one of its neighbours is still ``a`` and another is a different object
    (every neighbour with an id below ``a`` was itself carved, so ``a`` is the smallest
    around it). It is not an exact inverse: a carved voxel with no ``a`` neighbour left
    (a one-voxel-wide rim) stays background; where four objects meet, a carved corner
    voxel can go to another object; and true background voxels next to two objects (in
    the notch where two outlines part, or between diagonal neighbours) are filled too.

    Args:
        instances: Instance map, integer, ``(Z, Y, X)``: 0 = background, positive ids.

    Returns:
        Instance map, int32, the shape of ``instances``.

    Raises:
        TypeError: if ``instances`` is not an integer ndarray. ValueError: not 3D or
            negative ids.

    Example:
        >>> fill_gaps(np.array([[[1, 0, 2, 2, 0, 0, 3]]])).tolist()
        [[[1, 1, 2, 2, 0, 0, 3]]]
    """
    check_instance_map(instances, "instances")
    ids = instances.astype(np.int32)
    big = np.iinfo(np.int32).max
    low = np.full(ids.shape, big, dtype=np.int32)
    high = np.zeros(ids.shape, dtype=np.int32)
    for here, there in _face_shifts(ids):
        b = ids[there]
        low[here] = np.where(b > 0, np.minimum(low[here], b), low[here])
        high[here] = np.maximum(high[here], b)
    out = ids.copy()
    between = (ids == 0) & (high > 0) & (low < high)
    out[between] = low[between]
    return out


def instances_from_prediction(
    pred: LabelArray, *, method: str = "components", min_size: int = 0, fill: bool = False
) -> LabelArray:
    """Objects of a predicted class map: the configured post-processing of a 2D model.

    With ``"components"`` or ``"watershed"`` every non-zero class counts as foreground
    and ``method`` and ``min_size`` are those of :func:`instances_from_foreground`; with
    ``fill`` the gaps that a model trained on carved targets (:func:`carve_touching`)
    leaves between touching objects are given back (:func:`fill_gaps`) after small
    objects are removed. ``"boundary"`` reads a three-class boundary model's map
    (0 background, 1 interior, 2 boundary) and grows the interiors through the
    foreground (:func:`medseg.boundary.instances_from_boundary`); ``fill`` does not apply.

    Args:
        pred: Class map, integer, ``(Z, Y, X)``, 0 = background.
        method: One of :data:`OBJECT_METHODS`.
        min_size: Smallest object kept, voxels.
        fill: Apply :func:`fill_gaps` (components and watershed).

    Returns:
        Instance map, int32 ``(Z, Y, X)``, ids 1..N.

    Example:
        >>> pred = np.array([[[1, 0, 1, 1, 0, 0, 1]]], dtype=np.uint8)
        >>> instances_from_prediction(pred, fill=True).tolist()
        [[[1, 1, 2, 2, 0, 0, 3]]]
        >>> instances_from_prediction(np.array([[[2, 1, 2, 2, 1, 2]]]), method="boundary").tolist()
        [[[1, 1, 1, 2, 2, 2]]]
    """
    check_instance_map(pred, "pred")
    if method == "boundary":
        return instances_from_boundary(pred, min_size=min_size)
    if method == "seeded":
        raise ValueError(
            "method 'seeded' needs the foreground probability, got a class map; use "
            "medseg.membranes.instances_from_probability(1 - probs[0], ...)"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(OBJECT_METHODS)}, got {method!r}")
    instances = instances_from_foreground(
        (pred > 0).astype(np.uint8), method=method, min_size=min_size
    )
    return fill_gaps(instances) if fill else instances


def semantic_from_probs(probs: FloatArray, *, threshold: float = 0.5) -> LabelArray:
    """Foreground mask from class probabilities, e.g. a softmax U-Net output.

    Args:
        probs: Probabilities, floating, either ``(K, Z, Y, X)`` with K >= 2 classes
            (background = class 0; class 1 is the foreground, other classes are ignored)
            or ``(Z, Y, X)`` holding the foreground probability. Values in [0, 1].
        threshold: A voxel is foreground where its class-1 probability is strictly
            greater than this, in (0, 1).

    Returns:
        Mask, uint8, ``(Z, Y, X)``: 1 = foreground, 0 = background.

    Raises:
        TypeError: if ``probs`` is not a floating ndarray.
        ValueError: for a ndim other than 3 or 4, K < 2, or ``threshold`` outside (0, 1).

    Example:
        >>> probs = np.arange(4, dtype=np.float32).reshape(1, 1, 4) / 4
        >>> semantic_from_probs(probs).tolist()
        [[[0, 0, 0, 1]]]
        >>> semantic_from_probs(np.stack([1 - probs, probs]), threshold=0.2).tolist()
        [[[0, 1, 1, 1]]]
    """
    if not isinstance(probs, np.ndarray) or not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(
            f"probs must be a floating ndarray, got {describe(probs)}; "
            "apply softmax to the logits first"
        )
    if probs.ndim == 4:
        if probs.shape[0] < 2:
            raise ValueError(
                f"probs must have K >= 2 classes on axis 0 of (K, Z, Y, X), got shape "
                f"{probs.shape}; pass the (Z, Y, X) foreground probability instead"
            )
        probs = probs[1]
    elif probs.ndim != 3:
        raise ValueError(
            f"probs must be (K, Z, Y, X) or (Z, Y, X), got shape {probs.shape}; "
            "take one case out of the batch axis first"
        )
    if not is_real(threshold) or not 0 < threshold < 1:
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
    return (probs > threshold).astype(np.uint8)


# ---------------------------------------------------------------------------
# Watershed
# ---------------------------------------------------------------------------


def _watershed(
    mask: np.ndarray,
    components: np.ndarray,
    *,
    min_distance: int,
    min_height: float,
    sigma: float,
    connectivity: int,
) -> np.ndarray:
    """Seeded distance-transform watershed; see :func:`instances_from_foreground`."""
    shape = mask.shape
    if shape[0] == 1:  # 2D: work in-plane, so the single slice has no z neighbours
        mask, components = mask[0], components[0]
    if not mask.any():
        return np.zeros(shape, dtype=np.int32)
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)

    # Pad by one background voxel so objects touching the border get a finite
    # distance there (as if the image continued with background).
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))
    dist = dist[(slice(1, -1),) * mask.ndim]
    smooth = ndimage.gaussian_filter(dist, sigma) if sigma > 0 else dist
    peaks = smooth == ndimage.maximum_filter(smooth, size=2 * min_distance + 1)
    peaks &= mask & (dist >= min_height)
    markers, num_seeds = ndimage.label(peaks, structure=structure)  # plateaus -> one seed

    # Components without a seed become a seed of their own (thin or small objects).
    seeded = np.bincount(components[peaks], minlength=int(components.max()) + 1) > 0
    seeded[0] = True
    lut = np.zeros(seeded.size, dtype=np.int32)
    unseeded = np.flatnonzero(~seeded)
    lut[unseeded] = num_seeds + 1 + np.arange(unseeded.size, dtype=np.int32)
    fallback = lut[components]
    markers = np.where(fallback > 0, fallback, markers).astype(np.int32)

    # Flood by levels of the inverted distance, quantised to LEVEL_STEP voxels (uint16):
    # at level t every seed grows (geodesic dilation) through the unlabelled foreground
    # whose cost is <= t, until stable. Objects meet at the necks, where dist is lowest.
    cost = np.zeros(mask.shape, dtype=np.uint16)
    cost[mask] = np.floor((dist.max() - dist[mask]) / LEVEL_STEP).astype(np.uint16)
    flooded = markers
    for level in np.unique(cost[mask]):
        region = mask & (cost <= level)
        while True:
            grown = ndimage.grey_dilation(flooded, footprint=structure)
            new = region & (flooded == 0) & (grown > 0)
            if not new.any():
                break
            flooded = np.where(new, grown, flooded)
    return relabel_sequential(flooded.reshape(shape))


# ---------------------------------------------------------------------------
# Instances from a binary mask
# ---------------------------------------------------------------------------


def instances_from_mask(mask: LabelArray, *, connectivity: int = 1) -> LabelArray:
    """Label the connected components of a binary mask: one instance per component.

    For datasets that give only foreground / background, e.g. ISBI 2012 EM, whose labels
    are **255 = cell interior** and 0 = membrane (the dark class is the boundary): the
    cells are the components of the 255 region, separated by membranes. Pass the
    foreground as non-zero: for a mask with the opposite polarity pass ``mask == 0``.

    Args:
        mask: Binary mask, bool or integer, ``(Y, X)`` or ``(Z, Y, X)``: 0 = background,
            one positive value (e.g. 1 or 255) = foreground. A ``(1, Y, X)`` mask is 2D.
        connectivity: Neighbours that join pixels: 1 = faces only (4 in 2D, 6 in 3D) up
            to the map's spatial rank (2 in 2D: 8 neighbours; 3 in 3D: 26).

    Returns:
        Instance map, int32, the shape of ``mask``: 0 = background, 1..N = components in
        raster order of their first pixel.

    Raises:
        TypeError: if ``mask`` is not a bool or integer ndarray.
        ValueError: for a bad ndim, negative or several different positive values, or a
            bad ``connectivity``.

    Example:
        >>> mask = np.array([[[255, 255, 0, 255], [0, 0, 0, 255]]], dtype=np.uint8)
        >>> instances_from_mask(mask).tolist()
        [[[1, 1, 0, 2], [0, 0, 0, 2]]]
    """
    check_binary_mask(
        mask,
        "mask",
        check_shape=lambda m: check_spatial_ndim(m, "mask"),
        threshold_hint="mask > 0.5",
        value_hint="pass (label == k) for one class",
    )
    assert isinstance(mask, np.ndarray)  # checked above
    plane = mask[0] if mask.ndim == 3 and mask.shape[0] == 1 else mask
    if (
        not isinstance(connectivity, numbers.Integral)
        or isinstance(connectivity, bool)
        or not 1 <= connectivity <= plane.ndim
    ):
        raise ValueError(
            f"connectivity must be an integer in 1..{plane.ndim} for a {plane.ndim}D mask, "
            f"got {connectivity!r}; 1 = face neighbours, {plane.ndim} = all neighbours"
        )
    structure = ndimage.generate_binary_structure(plane.ndim, int(connectivity))
    out = np.zeros(plane.shape, dtype=np.int32)
    ndimage.label(plane != 0, structure=structure, output=out)
    return out.reshape(mask.shape)


def check_binary_mask(
    mask: object,
    name: str,
    *,
    check_shape: Callable[[np.ndarray], None],
    threshold_hint: str,
    value_hint: str,
) -> None:
    """Raise unless ``mask`` is a bool or integer ndarray holding 0 and one positive value.

    Args:
        mask: The candidate mask.
        name: Its argument name, for messages.
        check_shape: Called on the array after the type check (raises on a bad shape).
        threshold_hint: How to make a mask from probabilities, e.g. ``"mask > 0.5"``.
        value_hint: How to fix several positive values.

    Raises:
        TypeError: not a bool or integer ndarray. ValueError: a bad shape (from
            ``check_shape``), negative values or several positive values.
    """
    if not isinstance(mask, np.ndarray) or not (
        mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)
    ):
        raise TypeError(
            f"{name} must be a bool or integer ndarray, got {describe(mask)}; "
            f"threshold first, e.g. {threshold_hint}"
        )
    check_shape(mask)
    if mask.dtype != np.bool_ and mask.size:
        values = np.unique(mask)
        if values[0] < 0 or np.count_nonzero(values) > 1:
            raise ValueError(
                f"{name} must hold 0 and one positive value, got values "
                f"{preview(values.tolist())}; {value_hint}"
            )


def instances_from_boundary(
    classes: LabelArray, *, min_size: int = 0, connectivity: int = 1
) -> LabelArray:
    """Objects from a predicted three-class map: seeded watershed (:mod:`medseg.boundary`).

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
    check_integer_map(classes, "classes")
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


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _renumber(
    ids: np.ndarray, inverse: np.ndarray, keep: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    # ids = [0, 3, 7, 42], keep = [F, T, F, T] -> new ids [0, 1, 0, 2]
    new_ids = (np.cumsum(keep) * keep).astype(np.int32)
    return new_ids[inverse].reshape(shape)


def _check_foreground(foreground: object) -> None:
    check_binary_mask(
        foreground,
        "foreground",
        check_shape=lambda m: _check_zyx(m, "foreground"),
        threshold_hint="semantic_from_probs(probs)",
        value_hint="pass (label > 0) to binarise an instance map",
    )


def _check_zyx(arr: np.ndarray, name: str) -> None:
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must be 3D (Z, Y, X) with Z == 1 for 2D, got shape {arr.shape}; "
            "add the axis with arr[np.newaxis]"
        )


def _check_min_size(min_size: object) -> int:
    if not isinstance(min_size, numbers.Integral) or isinstance(min_size, bool) or min_size < 0:
        raise ValueError(
            f"min_size must be an integer >= 0 (voxels), got {min_size!r}; 0 keeps all"
        )
    return int(min_size)
