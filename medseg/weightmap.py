"""Class-balance and touching-cell border weight maps (U-Net, eq. 2) and dataset class weights.

Arrays follow STYLE.md section 2: label and instance maps are ``(Z, Y, X)`` with 0 as
background, 2D data has ``Z == 1``, and a weight map is float32 ``(Z, Y, X)``.

**Border weight map** (Ronneberger et al., "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI 2015, eq. 2)::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

with ``d1`` / ``d2`` the distance from pixel ``x`` to the nearest / second-nearest cell.
:func:`unet_weight_map` computes it from an instance map; conventions:

* **Distance**: from a background pixel to the nearest pixel *of* the cell (Euclidean, in
  pixels or in the unit of ``spacing``), so a pixel next to a cell has distance 1.
  Two cells 2 px apart give d1 = 1 and d2 = 2 at each gap pixel.
* **Border term on background only**: the paper's formula is unmasked, but its figure 3
  shows the term on the separating background, and that is where it matters; cell pixels
  get ``w_c`` only (hover_net and deepCyAn mask it the same way).
* **w_c** balances the two classes of the image, background and cell: by default
  ``w_c(k) = N / (K * N_k)`` with N pixels, ``N_k`` pixels of class k and K the number of
  classes present (1 or 2), so both classes carry the same total weight N / K. An image
  of background only (or of cells only) gets ``w_c = 1`` everywhere.
* **Fewer than two cells**: the border term needs a second cell; where there is none
  (``d2 = inf``) it is 0, so an empty or single-cell image gets ``w_c`` only.
* **Touching cells**: cells that touch directly have no background between them and so
  no border term there. Carve a separating gap first if the instance map has none
  (hover_net removes a 1-px boundary; deepflash2 uses a morphological closing).
* After an elastic deformation, recompute the map on the deformed instance map (or warp
  the map with the same field, linearly).

**Dataset class weights** for a weighted cross-entropy, over any iterable of label maps
(streamed, one map in memory at a time) or a manifest: median frequency balancing
(Eigen & Fergus, ICCV 2015; SegNet, Badrinarayanan et al., TPAMI 2017) and natural
frequency balancing (SegNet: no balancing, weight 1), see the functions.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from medseg import io
from medseg.manifest import Manifest
from medseg.typing import FloatArray, LabelArray

BORDER_TOLERANCE = 1e-5
"""Largest border-term value dropped by :func:`unet_weight_map`'s windowing (see there)."""

CLASS_WEIGHT_METHODS = ("median", "natural")


# ---------------------------------------------------------------------------
# Border weight map
# ---------------------------------------------------------------------------


def unet_weight_map(
    instances: LabelArray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Mapping[int, float] | Sequence[float] | None = None,
    spacing: Sequence[float] | None = None,
) -> FloatArray:
    """Return the U-Net weight map (eq. 2) of an instance map: class balance + cell borders.

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))`` on background
    pixels and ``w(x) = w_c(x)`` on cell pixels, with ``d1`` / ``d2`` the distance from
    ``x`` to the nearest pixel of the nearest / second-nearest cell (adjacent pixels have
    distance 1; ``d2 = inf`` where there is no second cell, giving a border term of 0).
    Conventions and pitfalls are in the module docstring.

    A 2D map, ``(Y, X)`` or ``(1, Y, X)``, gets in-plane 2D distances; a stack with
    ``Z > 1`` gets 3D distances. ``w_c`` is computed on this map alone.

    **Algorithm** (exact to ``BORDER_TOLERANCE``; the naive method computes one distance
    transform per cell over the whole image and sorts them, O(cells x pixels)). Let
    ``tol = BORDER_TOLERANCE = 1e-5``, ``R = sigma * sqrt(2 * ln(w0 / tol))`` (0 if
    ``w0 <= tol``), so that ``w0 * exp(-R**2 / (2 * sigma**2)) = tol``, and ``s`` = the
    spacing (1 by default). Each cell's exact Euclidean distance transform (scipy's
    feature transform) is computed only inside its bounding box grown by
    ``floor((R - min(s)) / s)`` voxels per axis, clipped to the image, and a running
    smallest and second-smallest squared distance per pixel is kept over these windows.
    Proof that the result is within tol of eq. (2) at every background pixel x:

    1. Inside a cell's window the windowed distance is the true distance, because the
       whole cell lies in the window (its bounding box does).
    2. If ``d1(x) + d2(x) <= R``: as ``d1(x) >= min(s)`` (x is not a cell pixel), both
       nearest cells have a pixel within ``R - min(s)`` of x, hence within
       ``(R - min(s)) / s`` voxels along every axis, so x lies in both windows. The
       running minima see both exact distances and no smaller ones (every windowed
       distance is a true distance), so the term is exact.
    3. Otherwise the computed ``d1``, ``d2`` are the two smallest over a subset of the
       cells, hence ``>=`` the true ones (or inf), so both the true and the computed term
       lie in ``[0, tol)``: they differ by less than tol.

    The float64 map is thus within 1e-5 of eq. (2); rounding to float32 adds at most half
    an ulp of ``w`` (3.1e-5 while ``w < 1024``), so it agrees with any other float32
    rounding of eq. (2), e.g. the naive computation, to ``1e-5 + 1 ulp < 1e-4``.
    Cost: about (cells x window size) instead of (cells x image size); for the defaults
    R = 26.3 px, so each window is the bounding box grown by 25 px.

    Args:
        instances: Instance map, integer (not bool), ``(Y, X)`` or ``(Z, Y, X)``:
            0 = background, any positive id = one cell; ids need not be contiguous.
        w0: Border weight, > 0 (the paper uses 10).
        sigma: Width of the border term, > 0, in pixels (or in the unit of ``spacing``);
            the paper uses 5. This is sigma, not sigma**2.
        class_weights: ``w_c`` as ``{0: background, 1: cell}`` or a 2-sequence
            ``(background, cell)`` of finite values >= 0; default balances the classes
            of this map (see the module docstring).
        spacing: Voxel size ``(z, y, x)`` (or ``(y, x)`` for a ``(Y, X)`` map), > 0, in
            the unit of ``sigma``; default 1 (distances in voxels). For a 2D map the z
            entry is ignored.

    Returns:
        The weight map: float32, the shape of ``instances``, >= 0 (unitless).

    Raises:
        TypeError: if ``instances`` is not an integer ndarray.
        ValueError: for a bad ndim, an empty map, negative ids, ``w0`` or ``sigma`` not
            > 0, bad ``class_weights`` or a bad ``spacing``.

    Example:
        >>> cells = np.array([[[1, 1, 0, 0, 2, 2]]])  # 2 cells, 2-px gap
        >>> w = unet_weight_map(cells)  # gap: 1.5 + 10 * exp(-(1 + 2)**2 / 50)
        >>> w.dtype, w.shape
        (dtype('float32'), (1, 1, 6))
        >>> [round(float(v), 4) for v in w.ravel()]
        [0.75, 0.75, 9.8527, 9.8527, 0.75, 0.75]
    """
    _check_instances(instances, "instances")
    w0 = _check_positive(w0, "w0")
    sigma = _check_positive(sigma, "sigma")
    plane = instances[0] if instances.ndim == 3 and instances.shape[0] == 1 else instances
    sampling = _check_spacing(spacing, instances.ndim, plane.ndim)
    background = plane == 0
    w_background, w_cell = _class_weights(class_weights, background)

    radius = sigma * math.sqrt(2.0 * math.log(max(w0 / BORDER_TOLERANCE, 1.0)))
    d1, d2 = _two_nearest_distances(plane, background, radius=radius, sampling=sampling)
    # d2 is inf where there is no second cell: exp(-inf) = 0
    total = d1 + d2
    border = w0 * np.exp(-(total * total) / (2.0 * sigma * sigma))
    weight = np.where(background, w_background, w_cell)
    weight[background] += border
    return weight.astype(np.float32, copy=False).reshape(instances.shape)


def _two_nearest_distances(
    plane: np.ndarray, background: np.ndarray, *, radius: float, sampling: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and second-smallest distance to a cell at the background pixels, float64 (M,).

    Exact where d1 + d2 <= radius, larger (or inf) elsewhere; see unet_weight_map for the
    proof. Running minima are kept on squared distances, exact integers for unit spacing.
    """
    unit = all(s == 1.0 for s in sampling)
    if unit:  # squared distances fit int32 unless an axis is longer than ~32k
        fits = sum((n - 1) ** 2 for n in plane.shape) < np.iinfo(np.int32).max
        dtype: type[np.generic] = np.int32 if fits else np.int64
        far: float = 2**31 - 1 if fits else 2**63 - 1  # dtype's max: "no cell seen yet"
    else:
        dtype, far = np.float64, math.inf
    sq1 = np.full(plane.shape, far, dtype=dtype)
    sq2 = np.full(plane.shape, far, dtype=dtype)
    # a background pixel is >= min(sampling) from any cell, so when d1 + d2 <= radius both
    # cells lie within radius - min(sampling) of it (1e-9: guards the floor against rounding)
    reach = radius - min(sampling)
    grow = [max(math.floor(reach / s + 1e-9), 0) for s in sampling]

    max_id = int(plane.max())
    if max_id > plane.size:  # sparse huge ids: relabel to 1..N so find_objects stays small
        _, inverse = np.unique(plane, return_inverse=True)
        offset = 0 if plane.min() == 0 else 1
        plane = (inverse.reshape(plane.shape) + offset).astype(np.int64, copy=False)
    for index, box in enumerate(ndimage.find_objects(plane), start=1):
        if box is None:  # an id that does not occur
            continue
        window = tuple(
            slice(max(s.start - g, 0), min(s.stop + g, n))
            for s, g, n in zip(box, grow, plane.shape, strict=True)
        )
        sq = _squared_distance_to(plane[window] == index, sampling, unit, dtype)
        near1 = sq1[window]  # views: updated in place
        near2 = sq2[window]
        np.minimum(near2, np.maximum(near1, sq), out=near2)  # uses the old d1
        np.minimum(near1, sq, out=near1)

    sq1, sq2 = sq1[background], sq2[background]
    d1 = np.where(sq1 == far, math.inf, np.sqrt(sq1, dtype=np.float64))
    d2 = np.where(sq2 == far, math.inf, np.sqrt(sq2, dtype=np.float64))
    return d1, d2


def _squared_distance_to(
    cell: np.ndarray, sampling: tuple[float, ...], unit: bool, dtype: type[np.generic]
) -> np.ndarray:
    """Squared Euclidean distance from every pixel of the window to the nearest cell pixel.

    The whole cell lies in the window, so this is the distance in the whole image. It
    comes from scipy's exact feature transform (nearest cell pixel per pixel).
    """
    nearest = ndimage.distance_transform_edt(
        ~cell, sampling=None if unit else sampling, return_distances=False, return_indices=True
    )
    sq = np.zeros(cell.shape, dtype=dtype)
    for axis, size in enumerate(cell.shape):
        shape = [1] * cell.ndim
        shape[axis] = size
        coords = np.arange(size, dtype=np.int32).reshape(shape)
        delta = (nearest[axis] - coords).astype(dtype, copy=False)  # (window shape)
        if not unit:
            delta *= sampling[axis]
        sq += delta * delta
    return sq


def _class_weights(
    class_weights: Mapping[int, float] | Sequence[float] | None, background: np.ndarray
) -> tuple[float, float]:
    """(w_c background, w_c cell): given, or N / (K * N_k) over the K classes present."""
    if class_weights is None:
        n = background.size
        n_background = int(np.count_nonzero(background))
        n_cell = n - n_background
        present = (n_background > 0) + (n_cell > 0)
        w_background = n / (present * n_background) if n_background else 1.0
        w_cell = n / (present * n_cell) if n_cell else 1.0
        return w_background, w_cell
    if isinstance(class_weights, Mapping):
        if set(class_weights) != {0, 1}:
            raise ValueError(
                f"class_weights must have the keys {{0, 1}} (background, cell), got keys "
                f"{sorted(class_weights, key=repr)}; e.g. class_weights={{0: 1.0, 1: 2.0}}"
            )
        values = [class_weights[0], class_weights[1]]
    elif isinstance(class_weights, Sequence) and not isinstance(class_weights, str):
        if len(class_weights) != 2:
            raise ValueError(
                f"class_weights must be 2 values (background, cell), got {len(class_weights)}"
                f": {list(class_weights)}"
            )
        values = list(class_weights)
    else:
        raise TypeError(
            f"class_weights must be a dict {{0: w, 1: w}}, a 2-sequence or None, got "
            f"{type(class_weights).__name__}"
        )
    for value in values:
        if not _is_real(value) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"class_weights must be finite numbers >= 0, got {values!r}; "
                "e.g. class_weights=(1.0, 2.0)"
            )
    return float(values[0]), float(values[1])


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
        check_shape=lambda m: _check_ndim(m, "mask"),
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


# ---------------------------------------------------------------------------
# Dataset class weights
# ---------------------------------------------------------------------------


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
            f"{name} must be a bool or integer ndarray, got {_describe(mask)}; "
            f"threshold first, e.g. {threshold_hint}"
        )
    check_shape(mask)
    if mask.dtype != np.bool_ and mask.size:
        values = np.unique(mask)
        if values[0] < 0 or np.count_nonzero(values) > 1:
            raise ValueError(
                f"{name} must hold 0 and one positive value, got values "
                f"{_preview(values.tolist())}; {value_hint}"
            )


def class_frequencies(
    labels: Iterable[LabelArray], *, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Count pixels per class over label maps, streaming (one map in memory at a time).

    Args:
        labels: An iterable (list, generator) of label maps, each integer or bool, any
            shape (normally uint8 ``(Z, Y, X)``), values in ``0..num_classes-1``. Each map
            counts as one image. A single ndarray is refused (iterating it would take its
            first axis as images); wrap it: ``[label]``.
        num_classes: K, the number of classes, background included; >= 1.

    Returns:
        ``(pixel_counts, image_pixels)``, both int64 ``(K,)``: the pixels of class c over
        all maps, and the total pixels of the maps in which class c is present (0 for a
        class never present).

    Raises:
        TypeError: if ``labels`` is a single ndarray or not iterable, or a map is not an
            integer or bool ndarray.
        ValueError: if ``num_classes`` < 1 or a map holds a value outside 0..K-1.

    Example:
        >>> maps = [np.array([[[0, 0, 1, 1]]]), np.array([[[0, 2, 2, 2]]])]
        >>> counts, image_pixels = class_frequencies(maps, num_classes=3)
        >>> counts.tolist(), image_pixels.tolist()
        ([3, 2, 3], [8, 4, 4])
    """
    num_classes = _check_num_classes(num_classes)
    counts = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for index, label in enumerate(_iterate_labels(labels)):
        per_image = _count_classes(label, num_classes, f"labels[{index}]")
        counts += per_image
        image_pixels[per_image > 0] += label.size
    return counts, image_pixels


def median_frequency_weights(labels: Iterable[LabelArray], *, num_classes: int) -> np.ndarray:
    """Return median-frequency-balancing class weights (SegNet; Eigen & Fergus 2015).

    ``freq(c) = pixels of class c / total pixels of the images where c is present`` and
    ``weight(c) = median(freq) / freq(c)``, the median taken over the classes present
    (mean of the two middle values for an even count), so large classes get weights < 1
    and the smallest ones the largest (Badrinarayanan et al., "SegNet", TPAMI 2017,
    section 3.2). A class never present gets weight 0 and a warning.

    Args:
        labels: Iterable of label maps, each one image; see :func:`class_frequencies`.
        num_classes: K, background included.

    Returns:
        Class weights, float64 ``(K,)``, >= 0 (unitless), for a weighted cross-entropy.

    Raises:
        TypeError, ValueError: as :func:`class_frequencies`; ValueError also if the maps
            hold no pixel at all.

    Warns:
        UserWarning: naming the classes that never occur (weight 0).

    Example:
        >>> maps = [np.array([[[0, 0, 1, 1]]]), np.array([[[0, 2, 2, 2]]])]
        >>> freq = [3 / 8, 2 / 4, 3 / 4]  # median 0.5
        >>> median_frequency_weights(maps, num_classes=3).round(4).tolist()
        [1.3333, 1.0, 0.6667]
    """
    counts, image_pixels = class_frequencies(labels, num_classes=num_classes)
    return _weights_from_frequencies(counts, image_pixels, "median", stacklevel=3)


def natural_frequency_weights(labels: Iterable[LabelArray], *, num_classes: int) -> np.ndarray:
    """Return natural-frequency-balancing class weights: 1 for every class present.

    SegNet (Badrinarayanan et al., TPAMI 2017, section 3.2) compares median frequency
    balancing with "training the different variants without class balancing or
    equivalently using natural frequency balancing": every pixel counts once, so each
    class weighs in with its natural frequency. The weights are therefore 1, i.e. an
    unweighted loss. For symmetry with :func:`median_frequency_weights`, a class never
    present gets weight 0 and a warning (it has no pixel, so the loss is the same).

    Args:
        labels: Iterable of label maps, each one image; see :func:`class_frequencies`.
        num_classes: K, background included.

    Returns:
        Class weights, float64 ``(K,)``: 1 for classes present, 0 for absent ones.

    Raises:
        TypeError, ValueError: as :func:`median_frequency_weights`.

    Warns:
        UserWarning: naming the classes that never occur (weight 0).

    Example:
        >>> maps = [np.array([[[0, 0, 1, 1]]]), np.array([[[0, 2, 2, 2]]])]
        >>> natural_frequency_weights(maps, num_classes=3).tolist()
        [1.0, 1.0, 1.0]
    """
    counts, image_pixels = class_frequencies(labels, num_classes=num_classes)
    return _weights_from_frequencies(counts, image_pixels, "natural", stacklevel=3)


def manifest_class_weights(
    manifest: Manifest,
    *,
    num_classes: int,
    method: Literal["median", "natural"] = "median",
    split: str | None = None,
) -> np.ndarray:
    """Return class weights over the label maps of a manifest, read one at a time.

    Each case's label map (read with :func:`medseg.io.read_label`, uint8 ``(Z, Y, X)``)
    counts as one image, a whole volume for 3D data. Cases without a label are skipped.

    Args:
        manifest: A loaded manifest (:func:`medseg.manifest.load_manifest`).
        num_classes: K, background included.
        method: ``"median"`` (:func:`median_frequency_weights`) or ``"natural"``
            (:func:`natural_frequency_weights`).
        split: Use only this split (``"train"``, ``"val"`` or ``"test"``); default all
            cases. Compute training weights on ``"train"``.

    Returns:
        Class weights, float64 ``(K,)``, >= 0.

    Raises:
        TypeError: if ``manifest`` is not a Manifest.
        ValueError: for a bad ``method`` or ``split``, no labelled case, or a label map
            with values outside 0..K-1 (the message names its file).
        FileNotFoundError: if a label file is missing.

    Warns:
        UserWarning: naming the classes that never occur (weight 0).
    """
    if not isinstance(manifest, Manifest):
        raise TypeError(
            f"manifest must be a medseg.manifest.Manifest, got {type(manifest).__name__}; "
            "load it with load_manifest(path, data_root=...)"
        )
    if method not in CLASS_WEIGHT_METHODS:
        raise ValueError(
            f"method must be one of {', '.join(map(repr, CLASS_WEIGHT_METHODS))}, got {method!r}"
        )
    num_classes = _check_num_classes(num_classes)
    cases = manifest.cases if split is None else manifest.split(split)
    paths = [case.label for case in cases if case.label is not None]
    if not paths:
        where = "" if split is None else f" in split {split!r}"
        raise ValueError(
            f"manifest {str(manifest.path)!r} must have at least one case with a label"
            f"{where}, got none; add label paths or choose another split"
        )
    counts = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for path in paths:
        label = io.read_label(path).array
        per_image = _count_classes(label, num_classes, f"label file {str(path)!r}")
        counts += per_image
        image_pixels[per_image > 0] += label.size
    return _weights_from_frequencies(counts, image_pixels, method, stacklevel=3)


def _weights_from_frequencies(
    counts: np.ndarray, image_pixels: np.ndarray, method: str, *, stacklevel: int
) -> np.ndarray:
    present = counts > 0
    if not present.any():
        raise ValueError(
            "labels must hold at least one pixel, got no label map or only empty ones; "
            "pass a non-empty list of label maps"
        )
    weights = np.zeros(counts.shape, dtype=np.float64)
    if method == "median":
        freq = counts[present] / image_pixels[present]
        weights[present] = np.median(freq) / freq
    else:
        weights[present] = 1.0
    if not present.all():
        absent = np.flatnonzero(~present).tolist()
        warnings.warn(
            f"classes {absent} never occur in the label maps; their weight is 0. "
            "Check num_classes or the label maps",
            stacklevel=stacklevel + 1,
        )
    return weights


def _iterate_labels(labels: Iterable[LabelArray]) -> Iterator[np.ndarray]:
    if isinstance(labels, np.ndarray):
        raise TypeError(
            f"labels must be an iterable of label maps, got a single ndarray of shape "
            f"{labels.shape}; wrap it in a list: [label]"
        )
    try:
        iterator = iter(labels)
    except TypeError as err:
        raise TypeError(
            f"labels must be an iterable of label maps, got {type(labels).__name__}"
        ) from err
    yield from iterator


def _count_classes(label: object, num_classes: int, name: str) -> np.ndarray:
    """Pixels per class of one map, int64 (K,), after checking its dtype and values."""
    if not isinstance(label, np.ndarray) or not (
        label.dtype == np.bool_ or np.issubdtype(label.dtype, np.integer)
    ):
        raise TypeError(
            f"{name} must be an integer or bool label map, got {_describe(label)}; "
            "cast with astype(np.uint8)"
        )
    flat = label.ravel()
    if flat.dtype == np.bool_:
        flat = flat.view(np.uint8)
    if flat.size:
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"{name} values must be in 0..{num_classes - 1} (num_classes={num_classes}), "
                f"got {bad}; raise num_classes or fix the label map"
            )
    return np.bincount(flat, minlength=num_classes).astype(np.int64, copy=False)


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray of dtype {value.dtype}"
    return type(value).__name__


def _preview(values: list, limit: int = 8) -> str:
    if len(values) <= limit:
        return str(values)
    return f"{values[:limit]}... ({len(values)} values)"


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_ndim(arr: np.ndarray, name: str) -> None:
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be 2D (Y, X) or 3D (Z, Y, X), got shape {arr.shape}; "
            "squeeze channel axes first"
        )
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")


def _check_instances(instances: object, name: str) -> None:
    if not isinstance(instances, np.ndarray):
        raise TypeError(
            f"{name} must be an integer ndarray (instance map), got {_describe(instances)}; "
            "convert with np.asarray(...)"
        )
    if instances.dtype == np.bool_:
        raise TypeError(
            f"{name} must be an integer instance map, got a bool mask; "
            "label its cells with instances_from_mask(mask)"
        )
    if not np.issubdtype(instances.dtype, np.integer):
        raise TypeError(
            f"{name} must be an integer instance map, got dtype {instances.dtype}; "
            "cast with astype(np.int32) if the values are whole numbers"
        )
    _check_ndim(instances, name)
    if np.issubdtype(instances.dtype, np.signedinteger):
        low = int(instances.min())
        if low < 0:
            where = np.unravel_index(int(np.argmax(instances < 0)), instances.shape)
            raise ValueError(
                f"{name} ids must be >= 0 (0 = background), got {low} "
                f"(first at {tuple(int(i) for i in where)})"
            )


def _check_positive(value: object, name: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_spacing(
    spacing: Sequence[float] | None, input_ndim: int, plane_ndim: int
) -> tuple[float, ...]:
    """Sampling per axis of the computed plane: (z, y, x) or (y, x)."""
    if spacing is None:
        return (1.0,) * plane_ndim
    allowed = (2, 3) if input_ndim == 2 else (3,)
    if (
        isinstance(spacing, (str, bytes))
        or not isinstance(spacing, Sequence)
        or len(spacing) not in allowed
        or not all(_is_real(s) and math.isfinite(s) and s > 0 for s in spacing)
    ):
        expected = "(z, y, x) or (y, x)" if input_ndim == 2 else "(z, y, x)"
        raise ValueError(
            f"spacing must be {expected} of finite numbers > 0, got {spacing!r}; "
            "e.g. spacing=(4.0, 1.0, 1.0) for slices 4 times thicker than pixels"
        )
    return tuple(float(s) for s in spacing)[-plane_ndim:]


def _check_num_classes(num_classes: object) -> int:
    if (
        not isinstance(num_classes, numbers.Integral)
        or isinstance(num_classes, bool)
        or num_classes < 1
    ):
        raise ValueError(
            f"num_classes must be an integer >= 1 (background included), got {num_classes!r}"
        )
    return int(num_classes)
