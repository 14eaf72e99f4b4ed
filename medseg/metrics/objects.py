"""Object (instance) metrics: ISBI 2012 pixel, Rand and information scores, DSB2018 AP.

Instance maps are integer arrays ``(Z, Y, X)`` (2D: ``Z == 1``, or a plain ``(Y, X)``
array), one id per object, 0 = background; ids need not be contiguous. All counts come
from one sparse contingency table of paired ids (``np.unique`` on a combined key), never
from per-object loops. Re-exported by :mod:`medseg.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg._validate import check_instance_map
from medseg.typing import LabelArray

# ---------------------------------------------------------------------------
# Microscopy and instance metrics
# ---------------------------------------------------------------------------
#
# Instance maps are integer arrays (Z, Y, X) (2D: Z == 1, or a plain (Y, X) array), one id per
# object, 0 = background; ids need not be contiguous. All counts come from one sparse
# contingency table of paired ids (np.unique on a combined key), never from per-object loops.
#
# - pixel_error (ISBI 2012): fraction of pixels whose binary foreground (id != 0) differs.
# - foreground_iou (U-Net cell tracking table): |P & T| / |P | T| of the binary foregrounds.
# - isbi_scores: the challenge's final V_Rand and V_Info after border thinning.
# - rand_error: ISBI 2012 foreground-restricted adapted Rand error (Arganda-Carreras et al.,
#   Front. Neuroanat. 2015), see its docstring for the exact variant.
# - average_precision: DSB2018 mean over IoU thresholds of TP / (TP + FP + FN).
# - touching_split_rate: fraction of touching ground-truth pairs predicted as two objects.
#
# Empty policy as above: a ratio whose denominator is 0 is NaN.

DSB2018_IOU_THRESHOLDS: tuple[float, ...] = (
    0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95
)  # fmt: skip
"""Kaggle DSB2018 IoU thresholds, ``np.arange(0.5, 1.0, 0.05)`` rounded to 2 decimals."""


def _check_instances(arr: object, name: str, *, allow_bool: bool = False) -> np.ndarray:
    """``arr`` as a non-negative integer (Z, Y, X) map; (Y, X) gains a leading axis."""
    arr = check_instance_map(arr, name, ndims=(2, 3), allow_bool=allow_bool)
    return arr if arr.ndim == 3 else arr[None]


def _check_instance_pair(
    pred: object, target: object, names: tuple[str, str], *, allow_bool: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    p = _check_instances(pred, names[0], allow_bool=allow_bool)
    t = _check_instances(target, names[1], allow_bool=allow_bool)
    pred_shape, target_shape = pred.shape, target.shape  # type: ignore[attr-defined]
    if pred_shape != target_shape:  # compared as given: (Y, X) never equals (1, Y, X)
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {names[0]} "
            f"{pred_shape} and {names[1]} {target_shape}"
        )
    return p, t


def _contingency(
    p: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table of two id arrays of equal size.

    Returns:
        ``(p_ids, t_ids, pair_p, pair_t, counts)``: the sorted distinct ids of each map (0
        included if present), and for every co-occurring pair the indices into ``p_ids`` and
        ``t_ids`` with its voxel count (int64, all > 0).
    """
    p_ids, p_inv = np.unique(p.ravel(), return_inverse=True)
    t_ids, t_inv = np.unique(t.ravel(), return_inverse=True)
    key = p_inv.astype(np.int64).ravel() * t_ids.size + t_inv.ravel()  # one key per (p, t) pair
    pairs, counts = np.unique(key, return_counts=True)
    return p_ids, t_ids, pairs // t_ids.size, pairs % t_ids.size, counts.astype(np.int64)


def pixel_error(pred: LabelArray, target: LabelArray) -> float:
    """ISBI 2012 pixel error: fraction of voxels whose binary foreground differs.

    Args:
        pred: Predicted labels or instances, integer or bool, (Z, Y, X) or (Y, X), >= 0;
            foreground = ``pred != 0``.
        target: Reference labels or instances, same shape; foreground = ``target != 0``.

    Returns:
        ``mean((pred != 0) != (target != 0))`` in [0, 1]; NaN for an empty array.

    Raises:
        TypeError: if an input is not an integer/bool ndarray.
        ValueError: if an input is not 2D/3D, holds negative values, or the shapes differ.

    Example:
        >>> target = (np.arange(8) < 4).reshape(1, 2, 4).astype(np.uint8)
        >>> pred = (np.arange(8) < 6).reshape(1, 2, 4).astype(np.uint8)
        >>> pixel_error(pred, target)  # 2 of 8 voxels differ
        0.25
    """
    p, t = _check_instance_pair(pred, target, ("pred", "target"), allow_bool=True)
    if p.size == 0:
        return math.nan
    return int(np.count_nonzero((p != 0) != (t != 0))) / p.size


def foreground_iou(pred: LabelArray, target: LabelArray) -> float:
    """Pixel IoU of the binary foregrounds, as in the U-Net cell tracking table.

    Ronneberger et al., MICCAI 2015, Table 2 (e.g. PhC-U373 0.9203): IoU of ``pred != 0``
    against ``target != 0`` over all voxels.

    Args:
        pred: Predicted labels or instances, integer or bool, (Z, Y, X) or (Y, X), >= 0.
        target: Reference labels or instances, same shape.

    Returns:
        ``|P & T| / |P | T|`` in [0, 1]; NaN when both foregrounds are empty.

    Raises:
        TypeError: if an input is not an integer/bool ndarray.
        ValueError: if an input is not 2D/3D, holds negative values, or the shapes differ.

    Example:
        >>> target = (np.arange(8) < 4).reshape(2, 4).astype(np.uint8)
        >>> pred = (np.arange(8) < 6).reshape(2, 4).astype(np.uint8)
        >>> foreground_iou(pred, target)  # 4 / 6
        0.6666666666666666
    """
    p, t = _check_instance_pair(pred, target, ("pred", "target"), allow_bool=True)
    pm = p != 0
    tm = t != 0
    union = int(np.count_nonzero(pm | tm))
    return int(np.count_nonzero(pm & tm)) / union if union else math.nan


def rand_error(
    pred_instances: LabelArray,
    target_instances: LabelArray,
    *,
    foreground_restricted: bool = True,
) -> dict[str, float]:
    """Adapted Rand error (ISBI 2012 "V-Rand" complement), Arganda-Carreras et al. 2015.

    With the contingency table ``p_ij`` (voxels in pred segment i and target segment j),
    ``t_i = sum_j p_ij`` (pred segment sizes) and ``s_j = sum_i p_ij`` (target segment sizes)::

        precision = sum_ij p_ij^2 / sum_i t_i^2
        recall    = sum_ij p_ij^2 / sum_j s_j^2
        F         = 2 P R / (P + R),   rand_error = 1 - F

    This is the pair-counting definition over ORDERED voxel pairs (x, y), self-pairs x == y
    included: precision = fraction of pairs in the same pred segment that are also in the same
    target segment; recall the converse. (Unordered pairs without self-pairs would use
    ``p (p - 1) / 2`` and give slightly different numbers.)

    ``foreground_restricted=True`` (ISBI 2012 scripts' convention): only voxels with
    ``target > 0`` take part (target background is excluded), and every voxel predicted as
    background (pred id 0) there is its own singleton segment, contributing 1 to
    ``sum p_ij^2`` and 1 to ``sum t_i^2``; so missing foreground lowers recall, never
    precision. ``foreground_restricted=False``: all voxels take part and id 0 is an ordinary
    segment in both maps (plain Rand F-score).

    Args:
        pred_instances: Predicted ids, integer, (Z, Y, X) or (Y, X), >= 0, 0 = background;
            ids need not be contiguous.
        target_instances: Reference ids, same shape and conventions.
        foreground_restricted: Restrict to the target foreground (see above).

    Returns:
        ``{"rand_error", "rand_precision", "rand_recall"}`` as floats; all NaN when no voxel
        takes part (empty target foreground when restricted, empty array otherwise).

    Raises:
        TypeError: if an input is not an integer ndarray.
        ValueError: if an input is not 2D/3D, holds negative ids, or the shapes differ.

    Example:
        >>> target = np.array([[1, 1, 2, 2]])  # two objects
        >>> pred = np.array([[5, 5, 5, 5]])  # merged: precision 8 / 16, recall 8 / 8
        >>> {k: round(v, 4) for k, v in rand_error(pred, target).items()}
        {'rand_error': 0.3333, 'rand_precision': 0.5, 'rand_recall': 1.0}
    """
    p, t = _check_instance_pair(
        pred_instances, target_instances, ("pred_instances", "target_instances")
    )
    if foreground_restricted:
        inside = t > 0
        p, t = p[inside], t[inside]  # (M,) voxels of the target foreground
    if p.size == 0:
        return {"rand_error": math.nan, "rand_precision": math.nan, "rand_recall": math.nan}
    p_ids, _, pair_p, pair_t, counts = _contingency(p, t)
    n = counts.astype(np.float64)
    pred_sizes = np.bincount(pair_p, weights=n, minlength=p_ids.size)  # t_i
    target_sizes = np.bincount(pair_t, weights=n)  # s_j
    sum_pt = float(np.sum(n * n))
    sum_p = float(np.sum(pred_sizes * pred_sizes))
    if foreground_restricted and p_ids[0] == 0:
        # pred background voxels are singletons: replace c^2 by c in both sums
        num_bg = float(pred_sizes[0])
        sum_p += num_bg - num_bg * num_bg
        sum_pt += num_bg - float(np.sum(n[pair_p == 0] ** 2))
    sum_t = float(np.sum(target_sizes * target_sizes))
    precision = sum_pt / sum_p
    recall = sum_pt / sum_t
    f_score = 2.0 * precision * recall / (precision + recall)
    return {"rand_error": 1.0 - f_score, "rand_precision": precision, "rand_recall": recall}


def thin_boundaries(pred_instances: LabelArray, mask: np.ndarray) -> np.ndarray:
    """Give every background pixel of a prediction to a neighbouring object, in-plane.

    The ISBI 2012 challenge's final scores (Arganda-Carreras et al., Front. Neuroanat. 2015)
    are computed "after border thinning", so that the width of the predicted membranes does
    not count: each pass gives every pixel with id 0 the largest id among its 3 x 3
    in-plane neighbours (simultaneously), and passes repeat until no pixel of ``mask`` has
    id 0. A section without any predicted object keeps id 0 as one segment.

    Args:
        pred_instances: Predicted ids, integer ``(Z, Y, X)``, >= 0, 0 = boundary/background.
        mask: Where the ids must be non-zero (the target foreground), bool, same shape.

    Returns:
        A new int64 ``(Z, Y, X)`` map; pixels outside ``mask`` may be filled too.

    Example:
        >>> pred = np.array([[[1, 0, 0, 2]]])
        >>> thin_boundaries(pred, np.ones_like(pred, dtype=bool)).tolist()
        [[[1, 1, 2, 2]]]
    """
    out = np.asarray(pred_instances).astype(np.int64)
    footprint = np.ones((1, 3, 3), dtype=bool)
    while True:
        missing = (out == 0) & mask
        if not missing.any():
            return out
        grown = ndimage.maximum_filter(out, footprint=footprint, mode="constant", cval=0)
        new = (out == 0) & (grown > 0)
        if not (new & mask).any():  # only sections without any object are left
            return out
        out = np.where(new, grown, out)


def isbi_scores(pred_instances: LabelArray, target_instances: LabelArray) -> dict[str, float]:
    """ISBI 2012 final scores V_Rand and V_Info, foreground-restricted, after border thinning.

    Arganda-Carreras et al., Front. Neuroanat. 2015, eqs. 3-6. The prediction's background
    (boundary) pixels are first given to neighbouring objects (:func:`thin_boundaries`);
    then only pixels of the target foreground (``target > 0``) take part. With ``p_ij`` the
    fraction of those pixels in predicted segment i and target segment j, ``s_i`` and
    ``t_j`` the marginals, and H the entropy (natural log)::

        V_Rand_split = sum p_ij^2 / sum t_j^2      V_Info_split = I(S; T) / H(S)
        V_Rand_merge = sum p_ij^2 / sum s_i^2      V_Info_merge = I(S; T) / H(T)

    and ``V_Rand``, ``V_Info`` their harmonic means (the challenge's alpha = 0.5). A split
    score is lowered only by split errors (one target object cut into several predicted
    ones), a merge score only by merges. All are in [0, 1], 1 = perfect. A ratio whose
    entropy denominator is 0 (a single segment) is 1: nothing can be split or merged.

    Args:
        pred_instances: Predicted ids, integer ``(Z, Y, X)`` or ``(Y, X)``, >= 0,
            0 = boundary/background; ids need not be contiguous.
        target_instances: Reference ids, same shape and conventions.

    Returns:
        ``{"v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split",
        "v_info_merge"}`` as floats; all NaN when the target has no foreground.

    Raises:
        TypeError: if an input is not an integer ndarray.
        ValueError: if an input is not 2D/3D, holds negative ids, or the shapes differ.

    Example:
        >>> target = np.array([[1, 1, 0, 2, 2]])  # two cells and a membrane
        >>> pred = np.array([[3, 3, 3, 3, 3]])  # merged: the gap is gone
        >>> s = isbi_scores(pred, target)
        >>> round(s["v_rand_split"], 3), round(s["v_rand_merge"], 3), round(s["v_info"], 3)
        (1.0, 0.5, 0.0)
    """
    p, t = _check_instance_pair(
        pred_instances, target_instances, ("pred_instances", "target_instances")
    )
    names = ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")
    inside = t > 0
    if not inside.any():
        return dict.fromkeys(names, math.nan)
    p = thin_boundaries(p, inside)[inside]
    _, _, pair_p, pair_t, counts = _contingency(p, t[inside])
    joint = counts / counts.sum()
    pred_marginal = np.bincount(pair_p, weights=joint)
    target_marginal = np.bincount(pair_t, weights=joint)
    pred_marginal = pred_marginal[pred_marginal > 0]
    target_marginal = target_marginal[target_marginal > 0]
    sum_joint = float(np.sum(joint**2))
    rand_split = sum_joint / float(np.sum(target_marginal**2))
    rand_merge = sum_joint / float(np.sum(pred_marginal**2))
    h_pred = float(-np.sum(pred_marginal * np.log(pred_marginal)))
    h_target = float(-np.sum(target_marginal * np.log(target_marginal)))
    h_joint = float(-np.sum(joint * np.log(joint)))
    info = max(h_pred + h_target - h_joint, 0.0)
    info_split = info / h_pred if h_pred > 0 else 1.0
    info_merge = info / h_target if h_target > 0 else 1.0
    return {
        "v_rand": 2.0 * rand_split * rand_merge / (rand_split + rand_merge),
        "v_rand_split": rand_split,
        "v_rand_merge": rand_merge,
        "v_info": _harmonic(info_split, info_merge),
        "v_info_split": info_split,
        "v_info_merge": info_merge,
    }


def _harmonic(a: float, b: float) -> float:
    return 2.0 * a * b / (a + b) if a + b > 0 else 0.0


def match_instances(
    pred_instances: LabelArray, target_instances: LabelArray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every overlapping (pred object, target object) pair, as a sparse list.

    Args:
        pred_instances: Predicted ids, integer, (Z, Y, X) or (Y, X), >= 0, 0 = background;
            ids need not be contiguous.
        target_instances: Reference ids, same shape and conventions.

    Returns:
        ``(pred_ids, target_ids, iou)``: int64, int64 and float64 arrays of shape (M,), one
        entry per pair of objects (ids > 0) sharing at least one voxel, sorted by
        (pred id, target id); ``iou = |P & T| / |P | T|`` in (0, 1]. Pairs with IoU > 0.5
        are one-to-one.

    Raises:
        TypeError: if an input is not an integer ndarray.
        ValueError: if an input is not 2D/3D, holds negative ids, or the shapes differ.

    Example:
        >>> target = np.array([[1, 1, 1, 0, 2, 2]])
        >>> pred = np.array([[7, 7, 0, 0, 7, 9]])
        >>> pred_ids, target_ids, iou = match_instances(pred, target)
        >>> pred_ids.tolist(), target_ids.tolist(), iou.round(3).tolist()
        ([7, 7, 9], [1, 2, 2], [0.5, 0.25, 0.5])
    """
    p, t = _check_instance_pair(
        pred_instances, target_instances, ("pred_instances", "target_instances")
    )
    return _match(p, t)


def _match(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p_ids, t_ids, pair_p, pair_t, counts = _contingency(p, t)
    p_sizes = np.bincount(pair_p, weights=counts, minlength=p_ids.size)
    t_sizes = np.bincount(pair_t, weights=counts, minlength=t_ids.size)
    keep = (p_ids[pair_p] != 0) & (t_ids[pair_t] != 0)
    pair_p, pair_t, inter = pair_p[keep], pair_t[keep], counts[keep].astype(np.float64)
    iou = inter / (p_sizes[pair_p] + t_sizes[pair_t] - inter)
    return p_ids[pair_p].astype(np.int64), t_ids[pair_t].astype(np.int64), iou


def _num_objects(arr: np.ndarray) -> int:
    ids = np.unique(arr)
    return int(ids.size - (ids.size > 0 and ids[0] == 0))


def average_precision(
    pred_instances: LabelArray,
    target_instances: LabelArray,
    *,
    thresholds: Sequence[float] | np.ndarray = DSB2018_IOU_THRESHOLDS,
) -> dict[str, object]:
    """Kaggle DSB2018 instance score: mean over IoU thresholds of TP / (TP + FP + FN).

    At threshold t a pred object and a target object match when their IoU is strictly above t
    (one-to-one for t >= 0.5, so no assignment step is needed). TP = matched pairs, FP =
    unmatched pred objects, FN = unmatched target objects, precision(t) = TP / (TP + FP + FN),
    and ``ap`` = mean of precision(t) over ``thresholds``. ``f1_at_05`` is the F1 at IoU > 0.5,
    2 TP / (2 TP + FP + FN). Empty policy: when both maps hold no object every ratio is NaN;
    when only one is empty they are 0.

    Args:
        pred_instances: Predicted ids, integer, (Z, Y, X) or (Y, X), >= 0, 0 = background;
            ids need not be contiguous.
        target_instances: Reference ids, same shape and conventions.
        thresholds: IoU thresholds, each in [0.5, 1]; default 0.5, 0.55, ..., 0.95.

    Returns:
        Dict with ``ap`` (float), ``thresholds`` and ``precision`` (float64 (T,)), ``num_tp``
        (int64 (T,)), ``f1_at_05`` (float), ``num_pred`` and ``num_target`` (int).

    Raises:
        TypeError: if an input is not an integer ndarray.
        ValueError: if an input is not 2D/3D, holds negative ids, the shapes differ, or
            ``thresholds`` is empty or has a value outside [0.5, 1].

    Example:
        >>> target = np.array([[1, 1, 0, 2, 2, 2]])
        >>> pred = np.array([[4, 4, 0, 0, 5, 5]])  # IoU 1 and 2/3
        >>> out = average_precision(pred, target)
        >>> out["precision"].round(3).tolist()[2:6], round(out["ap"], 3), out["f1_at_05"]
        ([1.0, 1.0, 0.333, 0.333], 0.6, 1.0)
    """
    p, t = _check_instance_pair(
        pred_instances, target_instances, ("pred_instances", "target_instances")
    )
    try:
        thr = np.asarray(thresholds, dtype=np.float64).ravel()
    except (TypeError, ValueError) as err:
        raise ValueError(f"thresholds must be numbers in [0.5, 1], got {thresholds!r}") from err
    if thr.size == 0 or not np.all((thr >= 0.5) & (thr <= 1.0)):
        raise ValueError(
            f"thresholds must be a non-empty sequence of IoU values in [0.5, 1], got "
            f"{thr.tolist()}; below 0.5 matches are not unique"
        )
    _, _, iou = _match(p, t)
    num_pred, num_target = _num_objects(p), _num_objects(t)
    num_tp = np.count_nonzero(iou[None, :] > thr[:, None], axis=1).astype(np.int64)  # (T,)
    den = (num_pred + num_target - num_tp).astype(np.float64)  # TP + FP + FN
    precision = np.full(den.shape, np.nan)
    np.divide(num_tp, den, out=precision, where=den != 0)
    tp_05 = int(np.count_nonzero(iou > 0.5))
    f1_den = num_pred + num_target  # 2 TP + FP + FN
    return {
        "ap": float(precision.mean()),
        "thresholds": thr,
        "precision": precision,
        "num_tp": num_tp,
        "f1_at_05": 2.0 * tp_05 / f1_den if f1_den else math.nan,
        "num_pred": num_pred,
        "num_target": num_target,
    }


def _touching_pairs(t: np.ndarray) -> np.ndarray:
    """Distinct (a, b), a < b, of target ids whose voxels are face-adjacent; int64 (M, 2)."""
    found = [np.empty((0, 2), dtype=np.int64)]
    for axis in range(t.ndim):  # (1, Y, X) has no z neighbours: 4-adjacency in 2D
        size = t.shape[axis]
        lo = np.take(t, np.arange(size - 1), axis=axis).ravel()
        hi = np.take(t, np.arange(1, size), axis=axis).ravel()
        touch = (lo != hi) & (lo > 0) & (hi > 0)
        a, b = lo[touch].astype(np.int64), hi[touch].astype(np.int64)
        found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    return np.unique(np.concatenate(found), axis=0)


def touching_split_rate(
    pred_instances: LabelArray, target_instances: LabelArray
) -> dict[str, float | int]:
    """Fraction of touching ground-truth pairs that the prediction separates.

    A touching pair is two target objects with face-adjacent voxels (4-adjacency in 2D / Z == 1,
    6-adjacency in 3D). Each target object's match is the pred object with IoU > 0.5 (unique
    when it exists). A pair (a, b) is split when both a and b have a match and the matches
    differ; since IoU > 0.5 matching is one-to-one, that is when both are matched.

    Args:
        pred_instances: Predicted ids, integer, (Z, Y, X) or (Y, X), >= 0, 0 = background;
            ids need not be contiguous.
        target_instances: Reference ids, same shape and conventions.

    Returns:
        ``{"split_rate", "num_pairs", "num_split"}``: ``num_split / num_pairs`` as a float (NaN
        when the target has no touching pair) and the two counts as ints.

    Raises:
        TypeError: if an input is not an integer ndarray.
        ValueError: if an input is not 2D/3D, holds negative ids, or the shapes differ.

    Example:
        >>> target = np.array([[1, 1, 2, 2, 0, 3]])  # 1-2 touch, 3 is alone
        >>> touching_split_rate(target, target)
        {'split_rate': 1.0, 'num_pairs': 1, 'num_split': 1}
    """
    p, t = _check_instance_pair(
        pred_instances, target_instances, ("pred_instances", "target_instances")
    )
    pairs = _touching_pairs(t)  # (M, 2)
    num_pairs = int(pairs.shape[0])
    if num_pairs == 0:
        return {"split_rate": math.nan, "num_pairs": 0, "num_split": 0}
    _, target_ids, iou = _match(p, t)
    matched = np.sort(target_ids[iou > 0.5])  # target ids with a match, each once
    is_matched = np.isin(pairs, matched)  # (M, 2)
    num_split = int(np.count_nonzero(is_matched.all(axis=1)))
    return {"split_rate": num_split / num_pairs, "num_pairs": num_pairs, "num_split": num_split}
