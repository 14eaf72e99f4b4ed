"""Objects from a foreground probability map: a seeded watershed that does not leak.

Connected components of a thresholded cell-interior map (the ``components`` method) join
two cells wherever the predicted membrane between them has a one-pixel gap, and one such
merge of two large cells costs more Rand error than thousands of wrong pixels (ISBI 2012
EM; Arganda-Carreras et al., Front. Neuroanat. 2015). The usual remedy of the
connectomics field is a seeded watershed on the boundary probability:

1. the foreground probability ``p`` is smoothed by a Gaussian of ``sigma`` pixels;
2. seeds are the connected parts of the confidently interior region, ``p > seed_threshold``,
   that lie at least ``seed_distance`` pixels inside it (Euclidean distance transform), so a
   gap in a membrane leaves two seeds where components leave one object;
3. each seed floods the foreground ``p > mask_threshold`` (at 0.5, the class map of a
   two-class model; lower, thinner membranes) in order of rising boundary probability ``1 - p``
   (``skimage.segmentation.watershed``), so neighbouring cells meet where the boundary
   evidence is strongest, even inside a gap; foreground parts without a seed keep an id
   of their own;
4. optionally, two touching regions whose shared boundary is weak, a mean ``1 - p`` over the
   touching pixel pairs below ``merge_threshold``, are merged (two seeds in one cell);
5. the ids are renumbered 1..N. ``min_size`` drops foreground components under that many
   pixels before anything else, as the ``components`` method drops them, so at
   ``mask_threshold`` 0.5 both methods keep the same pixels and differ only in how they
   divide them.

Pixels at or below ``mask_threshold`` (membranes) stay 0. The parameters are chosen on
validation data by ``medseg tune-postprocess`` and stored in the checkpoint
(``postprocess.method: seeded``).

Arrays follow ARCHITECTURE.md section 2: ``(Z, Y, X)``, 2D as ``Z == 1`` (then every step works
in-plane); instance maps are int32 with 0 = background. Pure: inputs are never modified.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.instances import relabel_sequential
from medseg.typing import FloatArray, LabelArray

SEEDED_DEFAULTS: dict[str, float] = {
    "seed_threshold": 0.8,
    "seed_distance": 1.0,
    "sigma": 1.0,
    "mask_threshold": 0.5,
    "merge_threshold": 0.0,
}
"""Default parameters of :func:`instances_from_probability` (``merge_threshold`` 0: no merging)."""


def seeded_parameters(settings: dict[str, Any] | None) -> dict[str, float]:
    """The :func:`instances_from_probability` parameters held in a post-processing dict.

    Args:
        settings: A checkpoint's ``postprocess`` dict (or overrides); missing keys take
            :data:`SEEDED_DEFAULTS`, other keys are ignored.

    Returns:
        ``{name: float}`` for every key of :data:`SEEDED_DEFAULTS`.

    Example:
        >>> seeded_parameters({"method": "seeded", "sigma": 2})["sigma"]
        2.0
    """
    settings = settings or {}
    return {k: float(settings.get(k, v)) for k, v in SEEDED_DEFAULTS.items()}


def instances_from_probability(
    probability: FloatArray,
    *,
    seed_threshold: float = SEEDED_DEFAULTS["seed_threshold"],
    seed_distance: float = SEEDED_DEFAULTS["seed_distance"],
    sigma: float = SEEDED_DEFAULTS["sigma"],
    mask_threshold: float = SEEDED_DEFAULTS["mask_threshold"],
    merge_threshold: float = SEEDED_DEFAULTS["merge_threshold"],
    min_size: int = 0,
) -> LabelArray:
    """Objects of a foreground probability map by a seeded watershed (see the module doc).

    Args:
        probability: Foreground (e.g. cell interior) probability, float ``(Z, Y, X)`` in
            [0, 1]; for a softmax model ``1 - probs[0]``.
        seed_threshold: Seeds lie where the smoothed probability exceeds this, in (0, 1).
        seed_distance: ... and at least this many pixels inside that region (>= 1; 1 keeps
            every such pixel).
        sigma: Gaussian smoothing of the probability, pixels (0: none).
        mask_threshold: The foreground flooded is ``probability > mask_threshold``, in (0, 1).
        merge_threshold: Touching regions whose mean boundary probability ``1 - p`` over
            their touching pixel pairs is below this are merged, in [0, 1] (0: never).
        min_size: Foreground components under this many pixels are dropped first (>= 0).

    Returns:
        Instance map, int32 ``(Z, Y, X)``: 0 = background, objects 1..N.

    Raises:
        TypeError: if ``probability`` is not a floating ndarray.
        ValueError: for a shape other than ``(Z, Y, X)``, values outside [0, 1] or NaN, or a
            parameter out of range.

    Example:
        >>> p = np.full((1, 1, 9), 0.95, dtype=np.float32)
        >>> p[0, 0, 3:6] = (0.7, 0.6, 0.55)  # a faint membrane: components join the two cells
        >>> instances_from_probability(p, sigma=0).tolist()
        [[[1, 1, 1, 1, 1, 2, 2, 2, 2]]]
    """
    prob = _check_probability(probability)
    _check_unit("seed_threshold", seed_threshold, open_interval=True)
    _check_unit("mask_threshold", mask_threshold, open_interval=True)
    _check_unit("merge_threshold", merge_threshold, open_interval=False)
    if not _is_real(seed_distance) or not seed_distance >= 1:
        raise ValueError(f"seed_distance must be a number >= 1 (pixels), got {seed_distance!r}")
    if not _is_real(sigma) or not sigma >= 0:
        raise ValueError(f"sigma must be a number >= 0 (pixels), got {sigma!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral) or min_size < 0:
        raise ValueError(f"min_size must be an integer >= 0 (pixels), got {min_size!r}")

    from skimage.segmentation import watershed

    shape = prob.shape
    work = prob[0] if shape[0] == 1 else prob  # 2D: in-plane, no z neighbours
    smooth = ndimage.gaussian_filter(work, float(sigma)) if sigma > 0 else work
    structure = ndimage.generate_binary_structure(work.ndim, 1)
    mask = work > mask_threshold
    if min_size > 0:  # noise: whole foreground components, as the components method drops
        parts, _ = ndimage.label(mask, structure=structure)
        mask &= (np.bincount(parts.ravel()) >= min_size)[parts] & (parts > 0)
    interior = (smooth > seed_threshold) & mask
    inside = ndimage.distance_transform_edt(interior) >= float(seed_distance)
    seeds, num_seeds = ndimage.label(inside, structure=structure)
    labels = watershed(1.0 - smooth, markers=seeds, mask=mask, connectivity=1)
    labels = labels.astype(np.int32, copy=False)
    rest, _ = ndimage.label(mask & (labels == 0), structure=structure)
    labels = np.where(rest > 0, rest + num_seeds, labels).astype(np.int32)
    if merge_threshold > 0:
        labels = merge_weak_boundaries(labels, 1.0 - smooth, threshold=float(merge_threshold))
    return relabel_sequential(labels.reshape(shape)).astype(np.int32, copy=False)


def boundary_strengths(
    labels: np.ndarray, boundary: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean boundary value between every pair of face-touching objects.

    Args:
        labels: Instance ids, integer, any ndim (here ``(Y, X)`` or ``(Z, Y, X)``), 0 =
            background (never part of a pair).
        boundary: Boundary evidence, float, same shape (e.g. ``1 - p``).

    Returns:
        ``(a, b, strength)``: int64 ids with ``a < b``, one entry per touching pair, and the
        float64 mean over their touching face-neighbour pixel pairs of the larger of the two
        pixels' boundary values, ordered by ``(a, b)``.
    """
    a_all, b_all, v_all = [], [], []
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        la, lb = labels[tuple(lo)], labels[tuple(hi)]
        touch = (la != lb) & (la > 0) & (lb > 0)
        a_all.append(np.minimum(la, lb)[touch].astype(np.int64))
        b_all.append(np.maximum(la, lb)[touch].astype(np.int64))
        v_all.append(np.maximum(boundary[tuple(lo)], boundary[tuple(hi)])[touch])
    a = np.concatenate(a_all)
    b = np.concatenate(b_all)
    values = np.concatenate(v_all).astype(np.float64)
    if a.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.float64)
    key = a * (int(labels.max()) + 1) + b
    pairs, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    totals = np.bincount(inverse.ravel(), weights=values)
    width = int(labels.max()) + 1
    return pairs // width, pairs % width, totals / counts


def merge_weak_boundaries(
    labels: np.ndarray, boundary: np.ndarray, *, threshold: float
) -> np.ndarray:
    """Merge face-touching objects whose mean shared boundary value is below ``threshold``.

    Every pair whose :func:`boundary_strengths` value is ``< threshold`` is joined (single
    linkage: chains merge too); a merged object takes the smallest id of its members.

    Args:
        labels: Instance ids, integer, any ndim, 0 = background.
        boundary: Boundary evidence, float, same shape.
        threshold: Merge below this mean boundary value.

    Returns:
        A new int32 map of the same shape (ids not renumbered).
    """
    a, b, strength = boundary_strengths(labels, boundary)
    parent = np.arange(int(labels.max()) + 1, dtype=np.int64)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    weak = strength < threshold
    for i, j in zip(a[weak].tolist(), b[weak].tolist(), strict=True):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(parent.size)], dtype=np.int32)
    return roots[labels]


def _check_probability(probability: object) -> np.ndarray:
    if not isinstance(probability, np.ndarray) or not np.issubdtype(probability.dtype, np.floating):
        got = (
            f"ndarray of dtype {probability.dtype}"
            if isinstance(probability, np.ndarray)
            else type(probability).__name__
        )
        raise TypeError(
            f"probability must be a floating ndarray (Z, Y, X) in [0, 1], got {got}; "
            "pass 1 - probs[0] of the softmax"
        )
    if probability.ndim != 3:
        raise ValueError(
            f"probability must be a (Z, Y, X) array (2D as Z == 1), got shape {probability.shape}"
        )
    if probability.size and not (
        np.isfinite(probability).all() and probability.min() >= 0 and probability.max() <= 1
    ):
        raise ValueError(
            "probability must hold finite values in [0, 1], got range "
            f"[{float(np.nanmin(probability))}, {float(np.nanmax(probability))}]"
            + (" with NaN" if np.isnan(probability).any() else "")
        )
    return probability.astype(np.float32, copy=False)


def _is_real(value: object) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))  # type: ignore[arg-type]
    )


def _check_unit(name: str, value: object, *, open_interval: bool) -> None:
    if open_interval:
        ok = _is_real(value) and 0 < float(value) < 1  # type: ignore[arg-type]
        want = "in (0, 1)"
    else:
        ok = _is_real(value) and 0 <= float(value) <= 1  # type: ignore[arg-type]
        want = "in [0, 1]"
    if not ok:
        raise ValueError(f"{name} must be a number {want}, got {value!r}")
