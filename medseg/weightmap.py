"""Class-balance and touching-cell border weight maps (U-Net, eq. 2).

Arrays follow ARCHITECTURE.md section 2: label and instance maps are ``(Z, Y, X)`` with 0 as
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

The dataset class weights (median and natural frequency balancing) live in
:mod:`medseg.class_weights`; they are re-exported here under their old import path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from medseg._validate import (
    check_instance_map,
    check_positive,
    check_spatial_ndim,
    is_real,
)
from medseg.class_weights import (  # noqa: F401  (re-exported: their home is class_weights)
    CLASS_WEIGHT_METHODS,
    class_frequencies,
    manifest_class_weights,
    median_frequency_weights,
    natural_frequency_weights,
)
from medseg.instances import (  # noqa: F401  (re-exported: their home is medseg.instances)
    check_binary_mask,
    instances_from_mask,
)
from medseg.typing import FloatArray, LabelArray

BORDER_TOLERANCE = 1e-5
"""Largest border-term value dropped by :func:`unet_weight_map`'s windowing (see there)."""


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
    check_instance_map(instances, "instances", ndims=(2, 3))
    check_spatial_ndim(instances, "instances")  # and not empty
    w0 = check_positive(w0, "w0")
    sigma = check_positive(sigma, "sigma")
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
        if not is_real(value) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"class_weights must be finite numbers >= 0, got {values!r}; "
                "e.g. class_weights=(1.0, 2.0)"
            )
    return float(values[0]), float(values[1])


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


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
        or not all(is_real(s) and math.isfinite(s) and s > 0 for s in spacing)
    ):
        expected = "(z, y, x) or (y, x)" if input_ndim == 2 else "(z, y, x)"
        raise ValueError(
            f"spacing must be {expected} of finite numbers > 0, got {spacing!r}; "
            "e.g. spacing=(4.0, 1.0, 1.0) for slices 4 times thicker than pixels"
        )
    return tuple(float(s) for s in spacing)[-plane_ndim:]
