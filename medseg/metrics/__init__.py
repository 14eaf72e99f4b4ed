"""Segmentation metrics: one confusion matrix, overlap scores, boundary and surface distances.

Label maps follow ARCHITECTURE.md section 2: integer (normally uint8) arrays ``(Z, Y, X)`` with 0 as
background; 2D data has ``Z == 1``. Metric arguments are always ``(pred, target)`` and spacings
are ``spacing_mm = (z, y, x)`` in mm.

Overlap metrics (FCN paper, Long et al. CVPR 2015; MATLAB ``evaluateSemanticSegmentation``)
all derive from one K x K confusion matrix ``cm`` computed in a single vectorised counting pass,
with ``cm[t, p]`` = number of voxels whose target is ``t`` and prediction is ``p`` (rows =
target). For class k: TP = cm[k, k], |T_k| = row sum, |P_k| = column sum, FP = |P_k| - TP,
FN = |T_k| - TP, TN = all - TP - FP - FN, and

- precision = TP / |P_k|, recall = TP / |T_k|, specificity = TN / (TN + FP);
- Dice = 2 TP / (|P_k| + |T_k|), IoU = TP / (|P_k| + |T_k| - TP);
- pixel accuracy = sum_k TP_k / all; mean class accuracy = nanmean_k recall_k;
- mean IoU = nanmean_k IoU_k; frequency-weighted IoU = sum_k |T_k| IoU_k / sum_k |T_k|
  (all K classes, background included, as in the FCN paper);
- weighted Dice ("Wt. DC", Kumar et al. 2018, U-SegNet) = sum_k |T_k| Dice_k / sum_k |T_k| over
  the chosen foreground classes.

Empty classes (explicit policy, as nnU-Net and MONAI's default): a ratio whose denominator is 0
is NaN, never 0 or 1. So Dice and IoU are NaN when the class is absent from both pred and target
and 0 when it is absent from only one; precision is NaN when the class is never predicted,
recall when it is absent from the target. Means (mean IoU, mean class accuracy) skip NaN.
Class-weighted means give absent classes weight 0.

Boundary of a binary mask: the mask voxels with at least one face-connected (6-neighbourhood in
3D, 4 in 2D) neighbour outside the mask, i.e. ``mask & ~binary_erosion(mask, cross)``. Voxels
beyond the array border count as outside (erosion with ``border_value=0``), so a mask touching
the border has a boundary there. This is MONAI's convention (``get_mask_edges`` crops with a
zero-padded margin before eroding), so HD95 and ASSD agree with MONAI. A label map with
``Z == 1`` is treated as 2D: boundaries and distances are in-plane (y, x) and ``spacing_mm[0]``
is ignored (MONAI, given the same volume as 3D, would put every voxel on the boundary; give it
the 2D slice instead).

Surface distances use exact Euclidean distance transforms with ``sampling=spacing_mm``
(scipy), computed on the union bounding box of both masks (cropping changes nothing, since
voxels outside the box are background like those beyond the border); classes and the two EDTs
of every class run in a pool of up to ``os.cpu_count()`` threads (scipy releases the GIL).
With ``d(P->T)`` the distances from every pred boundary voxel to the nearest target boundary
voxel, and ``d(T->P)`` the reverse:

- HD = max(max d(P->T), max d(T->P));
- HD95 = max(q95 d(P->T), q95 d(T->P)), percentiles with linear interpolation, as MONAI
  ``HausdorffDistanceMetric(percentile=95, directed=False)``;
- ASSD = (sum d(P->T) + sum d(T->P)) / (n_P + n_T), the mean of the pooled distances, as MONAI
  ``SurfaceDistanceMetric(symmetric=True)`` computes it (not the mean of the two means).

BF score (Csurka et al. BMVC 2013; MATLAB ``bfscore``): boundary precision = fraction of pred
boundary voxels within ``tolerance_mm`` (distance <= tolerance_mm + 1e-6 mm, the allowance
absorbing floating-point rounding at exact ties) of the target boundary, boundary recall
symmetric, BF = 2PR / (P + R) (0 when P = R = 0). Only "within tolerance" matters, so instead
of EDTs each boundary voxel probes the few neighbour offsets inside the tolerance ellipsoid
(same test, exact; an EDT is used when the ellipsoid holds more than 2000 voxels).

HD, HD95, ASSD and BF are NaN when either mask is empty (never 0, never inf; MONAI returns inf
when only one is empty).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from scipy import ndimage

from medseg._validate import check_spacing_mm
from medseg.metrics.objects import (  # noqa: F401  (the object metrics, re-exported)
    DSB2018_IOU_THRESHOLDS,
    average_precision,
    foreground_iou,
    isbi_scores,
    match_instances,
    pixel_error,
    rand_error,
    thin_boundaries,
    touching_split_rate,
)
from medseg.typing import LabelArray

MAX_NUM_CLASSES = 4096
"""Largest ``num_classes`` accepted: the (K, K) matrix has K * K int64 counts."""

TOLERANCE_EPS_MM = 1e-6
"""Allowance (mm) added to ``tolerance_mm`` so that exact ties count as within tolerance."""

_MAX_BF_OFFSETS = 2000  # above this many neighbour offsets, boundary_f1 uses an EDT instead

_Key = TypeVar("_Key")
_Value = TypeVar("_Value")


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _check_label_array(arr: object, name: str) -> np.ndarray:
    """Return ``arr`` if it is an integer or bool ndarray, else raise TypeError."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy integer label map, got {type(arr).__name__}; "
            "convert with np.asarray(...)"
        )
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{name} must be an integer or bool label map, got dtype {arr.dtype}; "
            "round and cast with astype(np.uint8)"
        )
    return arr


def _check_same_shape(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {pred.shape} "
            f"and target {target.shape}"
        )


def _check_values(arr: np.ndarray, name: str, num_classes: int) -> None:
    """Raise if ``arr`` holds a value outside ``[0, num_classes)``; name the value and voxel."""
    if arr.size == 0:
        return
    if np.iinfo(arr.dtype).min < 0:
        low = arr.min()
        if low < 0:
            where = np.unravel_index(int(np.argmax(arr < 0)), arr.shape)
            raise ValueError(
                f"{name} label values must be >= 0, got {int(low)} "
                f"(first at voxel {tuple(int(i) for i in where)})"
            )
    if np.iinfo(arr.dtype).max >= num_classes:
        high = arr.max()
        if high >= num_classes:
            where = np.unravel_index(int(np.argmax(arr >= num_classes)), arr.shape)
            raise ValueError(
                f"{name} label values must be < num_classes={num_classes}, got {int(high)} "
                f"(first at voxel {tuple(int(i) for i in where)}); "
                "raise num_classes or fix the label map"
            )


def _check_num_classes(num_classes: object) -> int:
    if (
        isinstance(num_classes, (bool, np.bool_))
        or not isinstance(num_classes, (int, np.integer))
        or not 1 <= num_classes <= MAX_NUM_CLASSES
    ):
        raise ValueError(
            f"num_classes must be an int in [1, {MAX_NUM_CLASSES}], got {num_classes!r}"
        )
    return int(num_classes)


def _check_cm(cm: object) -> np.ndarray:
    if not isinstance(cm, np.ndarray):
        raise TypeError(
            f"cm must be a numpy (K, K) confusion matrix, got {type(cm).__name__}; "
            "compute it with confusion_matrix(pred, target, num_classes=K)"
        )
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(
            f"cm must be a square (K, K) confusion matrix with K >= 1, got shape {cm.shape}"
        )
    if not np.issubdtype(cm.dtype, np.integer):
        raise TypeError(f"cm must hold integer counts, got dtype {cm.dtype}")
    if cm.size and cm.min() < 0:
        raise ValueError(f"cm must hold non-negative counts, got minimum {int(cm.min())}")
    return cm.astype(np.int64, copy=False)


def _check_classes(classes: object, name: str = "classes") -> list[int]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence | np.ndarray):
        raise TypeError(f"{name} must be a sequence of int labels, got {type(classes).__name__}")
    out = []
    for c in classes:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)) or c < 0:
            raise ValueError(
                f"{name} must hold non-negative int labels, got {c!r} in {list(classes)}"
            )
        out.append(int(c))
    return out


def check_label_maps(
    pred: object, target: object, spacing_mm: object
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    p = _check_label_array(pred, "pred")
    t = _check_label_array(target, "target")
    for arr, name in ((p, "pred"), (t, "target")):
        if arr.ndim != 3:
            raise ValueError(
                f"{name} must be a (Z, Y, X) label map, got ndim {arr.ndim} "
                f"with shape {arr.shape}; add a leading axis for 2D data (Z == 1)"
            )
    _check_same_shape(p, t)
    return p, t, check_spacing_mm(spacing_mm)


# ---------------------------------------------------------------------------
# Confusion matrix and overlap metrics
# ---------------------------------------------------------------------------


def confusion_matrix(pred: LabelArray, target: LabelArray, *, num_classes: int) -> np.ndarray:
    """Count voxels per (target, pred) label pair in one vectorised pass.

    The pair index ``target * K + pred`` is built in the smallest integer dtype that holds
    ``K * K`` (uint8 for K <= 16) and counted with ``torch.bincount`` on a zero-copy view,
    which avoids the int64 copy that ``np.bincount`` makes.

    Args:
        pred: Predicted labels, integer or bool, any shape (normally uint8 ``(Z, Y, X)``),
            values in ``[0, num_classes)``.
        target: Reference labels, same shape and value range as ``pred``.
        num_classes: K, the number of classes including background, in [1, 4096].

    Returns:
        int64 ``(K, K)`` matrix ``cm`` with ``cm[t, p]`` = number of voxels with target ``t``
        and prediction ``p`` (rows = target, columns = pred).

    Raises:
        TypeError: if an input is not an integer/bool ndarray.
        ValueError: if the shapes differ, ``num_classes`` is out of range, or a label value is
            negative or >= ``num_classes`` (the message names pred/target, value and voxel).

    Example:
        >>> pred = (np.arange(6) % 3).astype(np.uint8)  # [0 1 2 0 1 2]
        >>> target = np.array([0, 1, 1, 0, 1, 2], dtype=np.uint8)
        >>> confusion_matrix(pred, target, num_classes=3)
        array([[2, 0, 0],
               [0, 2, 1],
               [0, 0, 1]])
    """
    k = _check_num_classes(num_classes)
    p = _check_label_array(pred, "pred")
    t = _check_label_array(target, "target")
    _check_same_shape(p, t)
    _check_values(p, "pred", k)
    _check_values(t, "target", k)
    num_bins = k * k
    # smallest dtype holding target * K + pred < K * K; torch.bincount has no uint16 kernel
    if num_bins <= 256:
        index_dtype: type[np.integer] = np.uint8
    elif num_bins <= np.iinfo(np.int16).max + 1:
        index_dtype = np.int16
    else:
        index_dtype = np.int32
    # ravel is a view for contiguous input; values were checked, so the casts are exact
    flat_t = t.ravel().astype(index_dtype, copy=False)
    flat_p = p.ravel().astype(index_dtype, copy=False)
    index = np.multiply(flat_t, index_dtype(k), dtype=index_dtype)  # (N,) new buffer
    np.add(index, flat_p, out=index)
    counts = torch.bincount(torch.from_numpy(index), minlength=num_bins).numpy()
    return counts.reshape(k, k).astype(np.int64, copy=False)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise num / den as float64, NaN where den == 0 (no warnings)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a warning) if there are none."""
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else math.nan


@dataclass(frozen=True)
class OverlapMetrics:
    """Overlap metrics derived from one confusion matrix (definitions in the module docstring).

    Per-class arrays are float64 ``(K,)`` indexed by label value, background (0) included, with
    NaN where the denominator is 0.

    Attributes:
        confusion: int64 ``(K, K)``, ``confusion[t, p]`` (rows = target).
        accuracy: Global pixel accuracy, sum_k TP_k / number of voxels (FCN paper).
        precision: TP / |P_k|; NaN for classes never predicted.
        recall: TP / |T_k| (per-class accuracy); NaN for classes absent from the target.
        specificity: TN / (TN + FP); NaN if every voxel is target class k.
        dice: 2 TP / (|P_k| + |T_k|); NaN if absent from both, 0 if absent from one.
        iou: TP / (|P_k| + |T_k| - TP) (Jaccard); same empty policy as ``dice``.
        mean_iou: Mean IoU over the classes present in pred or target (IoU is NaN exactly for
            the classes absent from both, and those are skipped); background included, as in
            the FCN paper's mean IU and MATLAB ``MeanIoU``.
        fw_iou: Frequency-weighted IoU, sum_k |T_k| IoU_k / sum_k |T_k| over all classes.
        mean_class_accuracy: Mean of ``recall`` over the classes present in the target.
    """

    confusion: np.ndarray
    accuracy: float
    precision: np.ndarray
    recall: np.ndarray
    specificity: np.ndarray
    dice: np.ndarray
    iou: np.ndarray
    mean_iou: float
    fw_iou: float
    mean_class_accuracy: float


def overlap_metrics(cm: np.ndarray) -> OverlapMetrics:
    """Derive all overlap metrics from a confusion matrix (no pass over the voxels).

    Args:
        cm: Confusion matrix, integer ``(K, K)``, ``cm[t, p]`` (rows = target), as returned
            by :func:`confusion_matrix`.

    Returns:
        The metrics; per-class arrays are float64 ``(K,)``, read-only.

    Raises:
        TypeError: if ``cm`` is not an integer ndarray.
        ValueError: if ``cm`` is not square or holds negative counts.

    Example:
        >>> cm = np.array([[2, 0], [1, 1]])  # 4 voxels; one target-1 voxel predicted as 0
        >>> m = overlap_metrics(cm)
        >>> m.accuracy, m.dice.round(3).tolist(), round(m.mean_iou, 4)
        (0.75, [0.8, 0.667], 0.5833)
    """
    cm = _check_cm(cm)
    tp = np.diag(cm)
    n_target = cm.sum(axis=1)  # |T_k|, (K,)
    n_pred = cm.sum(axis=0)  # |P_k|, (K,)
    total = int(cm.sum())
    fp = n_pred - tp
    fn = n_target - tp
    tn = total - tp - fp - fn
    iou = _ratio(tp, n_pred + n_target - tp)
    recall = _ratio(tp, n_target)
    per_class = {
        "precision": _ratio(tp, n_pred),
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "dice": _ratio(2 * tp, n_pred + n_target),
        "iou": iou,
    }
    for values in per_class.values():
        values.flags.writeable = False
    weights = n_target.astype(np.float64)
    fw_iou = (
        float(np.sum(weights * np.where(n_target > 0, iou, 0.0)) / weights.sum())
        if total
        else math.nan
    )
    confusion = cm.copy()
    confusion.flags.writeable = False
    return OverlapMetrics(
        confusion=confusion,
        accuracy=float(tp.sum() / total) if total else math.nan,
        mean_iou=_nanmean(iou),
        fw_iou=fw_iou,
        mean_class_accuracy=_nanmean(recall),
        **per_class,
    )


def weighted_dice(cm: np.ndarray, *, classes: Sequence[int]) -> float:
    """Volume-weighted Dice ("Wt. DC" of U-SegNet, Kumar et al. 2018) over ``classes``.

    ``sum_k |T_k| Dice_k / sum_k |T_k|`` for k in ``classes``: classes absent from the target
    get weight 0. NaN if all the given classes are absent from the target.

    Args:
        cm: Confusion matrix, integer ``(K, K)``, ``cm[t, p]`` (rows = target).
        classes: Distinct labels to include, each in ``[0, K)``, normally the foreground
            tissues, e.g. ``[1, 2, 3]``.

    Returns:
        The weighted Dice in [0, 1], or NaN.

    Raises:
        TypeError: if ``cm`` or ``classes`` has the wrong type.
        ValueError: if ``classes`` is empty, repeats a label or holds a label outside [0, K).

    Example:
        >>> cm = np.array([[5, 0, 0], [1, 3, 0], [0, 1, 1]])  # Dice: 0.909, 0.75, 0.667
        >>> round(weighted_dice(cm, classes=[1, 2]), 4)  # (4 * 0.75 + 2 * 0.6667) / 6
        0.7222
    """
    cm = _check_cm(cm)
    labels = _check_classes(classes)
    k = cm.shape[0]
    if not labels or len(set(labels)) != len(labels) or max(labels) >= k:
        raise ValueError(
            f"classes must be distinct labels in [0, {k}) for a ({k}, {k}) confusion matrix, "
            f"got {labels}"
        )
    idx = np.asarray(labels)
    n_target = cm.sum(axis=1)[idx].astype(np.float64)
    if n_target.sum() == 0:
        return math.nan
    tp = np.diag(cm)[idx]
    dice = _ratio(2 * tp, n_target + cm.sum(axis=0)[idx])
    return float(np.sum(n_target * np.where(n_target > 0, dice, 0.0)) / n_target.sum())


def dice_score(pred: LabelArray, target: LabelArray, *, label: int) -> float:
    """Dice of one label: 2 |P & T| / (|P| + |T|) with P = (pred == label), T = (target == label).

    Args:
        pred: Predicted labels, integer or bool, any shape (normally uint8 ``(Z, Y, X)``).
        target: Reference labels, same shape as ``pred``.
        label: The label value to score, >= 0.

    Returns:
        Dice in [0, 1]; NaN if the label is absent from both, 0 if absent from one.

    Raises:
        TypeError: if an input is not an integer/bool ndarray.
        ValueError: if the shapes differ or ``label`` is not a non-negative int.

    Example:
        >>> target = (np.arange(10) < 5).astype(np.uint8)  # 5 voxels of label 1
        >>> pred = (np.arange(10) < 3).astype(np.uint8)  # 3 of them found
        >>> dice_score(pred, target, label=1)  # 2 * 3 / (3 + 5)
        0.75
    """
    p = _check_label_array(pred, "pred")
    t = _check_label_array(target, "target")
    _check_same_shape(p, t)
    (label,) = _check_classes([label], "label")
    pm = p == label
    tm = t == label
    den = int(np.count_nonzero(pm)) + int(np.count_nonzero(tm))
    return 2.0 * int(np.count_nonzero(pm & tm)) / den if den else math.nan


# ---------------------------------------------------------------------------
# Boundaries and distances
# ---------------------------------------------------------------------------


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask (outside the array counts as outside).

    ``mask`` is bool of any ndim; returns bool of the same shape.
    """
    interior = mask.copy()
    for axis in range(mask.ndim):
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        # along this axis, 1D example: interior[i] &= mask[i-1] & mask[i+1]
        interior[tuple(hi)] &= mask[tuple(lo)]
        interior[tuple(lo)] &= mask[tuple(hi)]
        edge: list[slice | int] = [slice(None)] * mask.ndim
        edge[axis] = 0
        interior[tuple(edge)] = False  # the neighbour beyond the border is outside
        edge[axis] = -1
        interior[tuple(edge)] = False
    return mask & ~interior


def _class_boundaries(
    pred: np.ndarray, target: np.ndarray, label: int, spacing_mm: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]] | None:
    """Boundaries of pred == label and target == label, cropped to their union bounding box.

    Returns ``(pred_boundary, target_boundary, spacing)`` (bool, 3D, or 2D with ``spacing``
    (y, x) when Z == 1), or None when either mask is empty.
    """
    pm = pred == label
    tm = target == label
    if not pm.any() or not tm.any():
        return None
    spacing: tuple[float, ...] = spacing_mm
    if pm.shape[0] == 1:  # 2D: in-plane neighbours and distances only
        pm, tm, spacing = pm[0], tm[0], spacing_mm[1:]
    union = pm | tm
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    crop = tuple(box)
    return _boundary(pm[crop]), _boundary(tm[crop]), spacing


def _directed_distances(
    from_boundary: np.ndarray, to_boundary: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """Distances in mm, float64 (n,), from each from_boundary voxel to the nearest to_boundary."""
    dist = ndimage.distance_transform_edt(~to_boundary, sampling=spacing)
    return dist[from_boundary]


def _run_parallel(fn: Callable[..., _Value], tasks: dict[_Key, tuple]) -> dict[_Key, _Value]:
    """``{key: fn(*args)}`` over threads (numpy and scipy's EDT release the GIL)."""
    workers = min(len(tasks), os.cpu_count() or 1)
    if workers <= 1:
        return {key: fn(*args) for key, args in tasks.items()}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(fn, *args) for key, args in tasks.items()}
        return {key: future.result() for key, future in futures.items()}


def surface_distances(
    pred: LabelArray,
    target: LabelArray,
    *,
    classes: Sequence[int],
    spacing_mm: Sequence[float],
    percentile: float = 95.0,
) -> dict[str, np.ndarray]:
    """Symmetric Hausdorff distance, its percentile version and ASSD per class, in mm.

    Definitions, boundary convention and the agreement with MONAI are in the module
    docstring. Each value is NaN when the class is empty in pred or in target.

    Args:
        pred: Predicted labels, integer ``(Z, Y, X)`` (normally uint8); ``Z == 1`` is 2D.
        target: Reference labels, same shape as ``pred``.
        classes: Labels to evaluate, each >= 0.
        spacing_mm: Voxel spacing ``(z, y, x)`` in mm, all > 0.
        percentile: Percentile of the directed distances for the robust Hausdorff distance,
            in [0, 100].

    Returns:
        Dict of float64 ``(len(classes),)`` arrays in mm: ``"hd95_mm"`` (the key reads
        ``f"hd{percentile:g}_mm"``, so ``"hd95_mm"`` by default), ``"assd_mm"`` and
        ``"hd_mm"`` (maximum).

    Raises:
        TypeError: if an input is not an integer/bool ndarray or ``classes`` is not a sequence.
        ValueError: if an array is not 3D, the shapes differ, ``spacing_mm`` is not 3 positive
            numbers, a class is negative or ``percentile`` is outside [0, 100].

    Example:
        >>> target = np.zeros((1, 5, 6), dtype=np.uint8); target[0, 1:4, 1:4] = 1
        >>> pred = np.roll(target, 1, axis=2)  # shifted by one 2 mm column
        >>> d = surface_distances(pred, target, classes=[1], spacing_mm=(1, 1, 2))
        >>> d["hd95_mm"].tolist(), d["hd_mm"].tolist(), d["assd_mm"].tolist()  # 7 + 7 mm / 16
        ([2.0], [2.0], [0.875])
    """
    p, t, spacing = check_label_maps(pred, target, spacing_mm)
    labels = _check_classes(classes)
    if isinstance(percentile, (bool, np.bool_)) or not (
        isinstance(percentile, (int, float, np.integer, np.floating)) and 0 <= percentile <= 100
    ):
        raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}")
    hd_q = np.full(len(labels), np.nan)
    hd = np.full(len(labels), np.nan)
    assd = np.full(len(labels), np.nan)
    found = _run_parallel(
        _class_boundaries, {i: (p, t, label, spacing) for i, label in enumerate(labels)}
    )
    tasks = {}  # (class index, direction) -> (from, to, spacing); one EDT each
    for i, pair in found.items():
        if pair is not None:
            pb, tb, sp = pair
            tasks[i, "pt"] = (pb, tb, sp)
            tasks[i, "tp"] = (tb, pb, sp)
    distances = _run_parallel(_directed_distances, tasks)
    for i, pair in found.items():
        if pair is None:
            continue
        d_pt, d_tp = distances[i, "pt"], distances[i, "tp"]
        hd_q[i] = max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile))
        hd[i] = max(d_pt.max(), d_tp.max())
        assd[i] = (d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size)
    return {f"hd{float(percentile):g}_mm": hd_q, "assd_mm": assd, "hd_mm": hd}


def _ball_offsets(spacing: tuple[float, ...], radius_mm: float) -> np.ndarray:
    """Integer offsets (n, ndim) with Euclidean length <= radius_mm, sorted by length."""
    reach = [int(math.floor(radius_mm / s)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)  # (M, ndim)
    length = np.sqrt(np.sum((offsets * np.asarray(spacing)) ** 2, axis=1))
    keep = length <= radius_mm
    order = np.argsort(length[keep], kind="stable")
    return offsets[keep][order]


def _count_within(
    from_boundary: np.ndarray, to_boundary: np.ndarray, spacing: tuple[float, ...], radius_mm: float
) -> int:
    """Number of ``from_boundary`` voxels within ``radius_mm`` of a ``to_boundary`` voxel.

    Probes the few neighbour offsets inside the tolerance ball at each (sparse) boundary voxel,
    nearest offsets first, dropping voxels once matched; an EDT when the ball is large.
    """
    offsets = _ball_offsets(spacing, radius_mm)
    if len(offsets) > _MAX_BF_OFFSETS:
        dist = _directed_distances(from_boundary, to_boundary, spacing)
        return int(np.count_nonzero(dist <= radius_mm))
    reach = np.abs(offsets).max(axis=0)  # (ndim,) voxels of padding per axis
    padded = np.pad(to_boundary, [(int(r), int(r)) for r in reach])
    strides = np.array(padded.strides) // padded.itemsize  # bool: 1 byte per voxel
    coords = np.nonzero(from_boundary)
    remaining = sum((c + r) * s for c, r, s in zip(coords, reach, strides, strict=True))
    flat = padded.ravel()
    for step in offsets @ strides:
        hit = flat[remaining + step]
        if hit.any():
            remaining = remaining[~hit]
            if remaining.size == 0:
                break
    return int(from_boundary.sum() - remaining.size)


def boundary_f1(
    pred: LabelArray,
    target: LabelArray,
    *,
    classes: Sequence[int],
    spacing_mm: Sequence[float],
    tolerance_mm: float = 2.0,
) -> np.ndarray:
    """BF score per class: harmonic mean of boundary precision and recall within a tolerance.

    Csurka et al., "What is a good evaluation measure for semantic segmentation?", BMVC 2013;
    MATLAB ``bfscore`` with the tolerance in mm instead of pixels. Definitions and the boundary
    convention are in the module docstring.

    Args:
        pred: Predicted labels, integer ``(Z, Y, X)`` (normally uint8); ``Z == 1`` is 2D.
        target: Reference labels, same shape as ``pred``.
        classes: Labels to evaluate, each >= 0.
        spacing_mm: Voxel spacing ``(z, y, x)`` in mm, all > 0.
        tolerance_mm: Distance in mm within which a boundary voxel counts as matched, >= 0.

    Returns:
        float64 ``(len(classes),)`` BF scores in [0, 1]; NaN where the class is empty in pred
        or in target.

    Raises:
        TypeError: if an input is not an integer/bool ndarray or ``classes`` is not a sequence.
        ValueError: if an array is not 3D, the shapes differ, ``spacing_mm`` is not 3 positive
            numbers, a class is negative or ``tolerance_mm`` is negative or not finite.

    Example:
        >>> target = np.zeros((1, 5, 6), dtype=np.uint8); target[0, 1:4, 1:4] = 1
        >>> pred = np.roll(target, 1, axis=2)  # shifted by one 2 mm column
        >>> boundary_f1(pred, target, classes=[1, 2], spacing_mm=(1, 1, 2), tolerance_mm=1.0)
        array([0.625,   nan])
    """
    p, t, spacing = check_label_maps(pred, target, spacing_mm)
    labels = _check_classes(classes)
    if isinstance(tolerance_mm, (bool, np.bool_)) or not (
        isinstance(tolerance_mm, (int, float, np.integer, np.floating))
        and math.isfinite(tolerance_mm)
        and tolerance_mm >= 0
    ):
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm!r}")
    radius = float(tolerance_mm) + TOLERANCE_EPS_MM
    tasks = {i: (p, t, label, spacing, radius) for i, label in enumerate(labels)}
    scores = _run_parallel(_class_boundary_f1, tasks)  # one class per thread
    return np.array([scores[i] for i in range(len(labels))], dtype=np.float64)


def _class_boundary_f1(
    pred: np.ndarray,
    target: np.ndarray,
    label: int,
    spacing_mm: tuple[float, float, float],
    radius_mm: float,
) -> float:
    """BF score of one label (NaN if empty in pred or target); see :func:`boundary_f1`."""
    found = _class_boundaries(pred, target, label, spacing_mm)
    if found is None:
        return math.nan
    pb, tb, sp = found
    precision = _count_within(pb, tb, sp, radius_mm) / int(np.count_nonzero(pb))
    recall = _count_within(tb, pb, sp, radius_mm) / int(np.count_nonzero(tb))
    total = precision + recall
    return 2 * precision * recall / total if total > 0 else 0.0
