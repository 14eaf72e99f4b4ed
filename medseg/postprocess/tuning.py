"""Choosing the post-processing on validation cases, part of :mod:`medseg.postprocess`.

:func:`crf_grid_search` scores :func:`~medseg.postprocess.crf.dense_crf` for every set of
appearance parameters of a grid, and :func:`select_cleanup` decides which
largest-component clean-ups (:mod:`medseg.postprocess.cleanup`) to keep. Both score by
the mean over classes of each class's mean validation Dice. ``medseg tune-postprocess``
(:mod:`medseg.tuning`) runs them on a model's validation cases and stores the choice in
the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

from medseg._validate import check_positive, check_spacing_mm
from medseg.metrics import confusion_matrix, overlap_metrics
from medseg.postprocess.cleanup import (
    CleanupCandidate,
    CleanupDecision,
    _check_cleanup_classes,
    _check_pred,
    _structure,
    keep_largest_component,
)
from medseg.postprocess.crf import (
    DEFAULT_NUM_ITERATIONS,
    DEFAULT_SIGMA_GAMMA_MM,
    DEFAULT_W_SMOOTHNESS,
    _BilateralGrid,
    _check_crf_inputs,
    _check_iterations,
    _mean_field,
)
from medseg.typing import LabelArray

# ---------------------------------------------------------------------------
# Grid search
# ---------------------------------------------------------------------------


def _as_tuple(values: object, name: str) -> tuple[float, ...]:
    if isinstance(values, (int, float, np.number)) and not isinstance(values, bool):
        return (float(values),)
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray):
        raise TypeError(f"{name} must be a number or a sequence of numbers, got {values!r}")
    if len(values) == 0:
        raise ValueError(f"{name} must hold at least one value, got {values!r}")
    return tuple(float(v) for v in values)


def _check_eval_classes(classes: object, num_classes: int) -> list[int]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence | np.ndarray):
        raise TypeError(f"classes must be a sequence of int labels, got {classes!r}")
    labels = []
    for c in classes:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
            raise TypeError(f"classes must hold int labels, got {c!r} in {list(classes)}")
        labels.append(int(c))
    if (
        not labels
        or len(set(labels)) != len(labels)
        or not all(0 <= c < num_classes for c in labels)
    ):
        raise ValueError(f"classes must be distinct labels in [0, {num_classes}), got {labels}")
    return labels


def _class_dice(
    pred: LabelArray, target: LabelArray, num_classes: int, classes: list[int]
) -> np.ndarray:
    """Dice of each class in ``classes``, float64 ``(len(classes),)``, NaN if absent from both."""
    cm = confusion_matrix(pred, target, num_classes=num_classes)
    return np.asarray(overlap_metrics(cm).dice)[classes]


def _mean_dice(per_case: list[np.ndarray]) -> tuple[float, np.ndarray]:
    """(mean over classes of the per-class means over cases, per-class means); NaN skipped."""
    table = np.stack(per_case)  # (cases, classes)
    valid = ~np.isnan(table)
    counts = valid.sum(0)
    sums = np.where(valid, table, 0.0).sum(0)
    per_class = np.full(table.shape[1], np.nan)
    np.divide(sums, counts, out=per_class, where=counts > 0)
    finite = per_class[~np.isnan(per_class)]
    return (float(finite.mean()) if finite.size else math.nan), per_class


def crf_grid_search(
    cases: Sequence[tuple[torch.Tensor, torch.Tensor, LabelArray, Sequence[float]]],
    *,
    num_classes: int,
    classes: Sequence[int],
    w_appearance: Sequence[float] = (0.003, 0.01, 0.03),
    sigma_alpha_mm: Sequence[float] = (3.0, 5.0, 8.0),
    sigma_beta: Sequence[float] = (0.25, 0.5, 1.0),
    w_smoothness: float = DEFAULT_W_SMOOTHNESS,
    sigma_gamma_mm: float = DEFAULT_SIGMA_GAMMA_MM,
    num_iterations: int = DEFAULT_NUM_ITERATIONS,
) -> pd.DataFrame:
    """Mean validation Dice of :func:`dense_crf` for every appearance parameter set.

    Every combination of ``w_appearance`` x ``sigma_alpha_mm`` x ``sigma_beta`` is run on
    every case (the bilateral grid is built once per case and (sigma_alpha_mm, sigma_beta) pair
    and reused for all weights), with the smoothness kernel fixed. Labels are the argmax of
    Q. The score of a parameter set is the mean over ``classes`` of each class's mean Dice
    over the cases (NaN Dice, a class absent from both pred and target, skipped).

    Args:
        cases: ``(probs, image, target, spacing_mm)`` tuples: probs float ``(K, Z, Y, X)``
            and image float ``(C, Z, Y, X)`` tensors as :func:`dense_crf` takes them,
            target uint8 ``(Z, Y, X)`` ndarray of labels in ``[0, num_classes)``,
            spacing_mm (z, y, x) in mm.
        num_classes: K, the number of classes including background.
        classes: Labels whose Dice is averaged, e.g. ``[1, 2, 3]``.
        w_appearance, sigma_alpha_mm, sigma_beta: Values tried (as :func:`dense_crf`).
        w_smoothness, sigma_gamma_mm, num_iterations: Fixed for every run.

    Returns:
        One row per parameter set plus one baseline row (``crf`` False: argmax of probs,
        parameters NaN), best first (ties keep grid order, baseline first). Columns:
        ``crf``, ``w_appearance``, ``sigma_alpha_mm``, ``sigma_beta``, ``w_smoothness``,
        ``sigma_gamma_mm``, ``num_iterations``, ``mean_dice``, ``delta_dice`` (vs the
        baseline) and ``dice_<k>`` (mean over cases) for each class k.

    Raises:
        ValueError: no cases, a target of the wrong shape or values, bad classes, or
            any error of :func:`dense_crf`.

    Example:
        >>> probs = torch.tensor([0.9, 0.55, 0.1, 0.1, 0.1, 0.45, 0.9, 0.9]).reshape(2, 1, 1, 4)
        >>> target = np.array([[[0, 1, 1, 1]]], np.uint8)  # argmax of probs: [0, 0, 1, 1]
        >>> case = (probs, torch.zeros(1, 1, 1, 4), target, (1.0, 1.0, 1.0))
        >>> table = crf_grid_search([case], num_classes=2, classes=[1], w_appearance=[0.0],
        ...                         sigma_alpha_mm=[5.0], sigma_beta=[0.5], w_smoothness=2.0)
        >>> table[["crf", "mean_dice"]].to_numpy().tolist()  # CRF flips pixel 1 to class 1
        [[True, 1.0], [False, 0.8]]
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    labels = _check_eval_classes(classes, int(num_classes))
    if len(cases) == 0:
        raise ValueError("cases must hold at least one (probs, image, target, spacing_mm) tuple")
    w1s = [
        check_positive(w, "w_appearance", allow_zero=True)
        for w in _as_tuple(w_appearance, "w_appearance")
    ]
    sas = [check_positive(s, "sigma_alpha_mm") for s in _as_tuple(sigma_alpha_mm, "sigma_alpha_mm")]
    sbs = [check_positive(s, "sigma_beta") for s in _as_tuple(sigma_beta, "sigma_beta")]
    w2 = check_positive(w_smoothness, "w_smoothness", allow_zero=True)
    sg = check_positive(sigma_gamma_mm, "sigma_gamma_mm")
    iterations = _check_iterations(num_iterations)

    checked = []  # validate every case before the (slow) runs
    for number, case in enumerate(cases):
        if not isinstance(case, (tuple, list)) or len(case) != 4:
            raise ValueError(
                f"cases[{number}] must be a (probs, image, target, spacing_mm) tuple, "
                f"got {type(case).__name__}"
            )
        probs, image, target, spacing_mm = case
        p, im = _check_crf_inputs(probs, image)
        if p.shape[0] != num_classes:
            raise ValueError(
                f"cases[{number}] probs must have num_classes={num_classes} channels, "
                f"got shape {tuple(p.shape)}"
            )
        if not isinstance(target, np.ndarray) or target.shape != tuple(p.shape[1:]):
            raise ValueError(
                f"cases[{number}] target must be a (Z, Y, X) ndarray of shape "
                f"{tuple(p.shape[1:])}, got {getattr(target, 'shape', type(target).__name__)}"
            )
        checked.append((p.to(torch.float32), im, target, check_spacing_mm(spacing_mm)))

    def score(q: torch.Tensor, target: np.ndarray) -> np.ndarray:
        pred = q.argmax(0).to(torch.uint8).cpu().numpy()
        return _class_dice(pred, target, int(num_classes), labels)

    combos = [(w1, sa, sb) for w1 in w1s for sa in sas for sb in sbs]
    baseline: list[np.ndarray] = []
    scores: dict[tuple[float, float, float], list[np.ndarray]] = {key: [] for key in combos}
    with torch.no_grad():
        for p, im, target, spacing in checked:
            baseline.append(score(p, target))
            # w_appearance == 0 does not depend on the appearance sigmas: run it once
            smooth_only = None
            if 0.0 in w1s:
                smooth_only = score(_mean_field(p, None, 0.0, w2, sg, spacing, iterations), target)
            for sa in sas:
                for sb in sbs:
                    grid = _BilateralGrid(im, spacing, sa, sb) if max(w1s) > 0 else None
                    for w1 in w1s:
                        if w1 == 0.0 and smooth_only is not None:
                            scores[(w1, sa, sb)].append(smooth_only)
                        else:
                            q = _mean_field(p, grid, w1, w2, sg, spacing, iterations)
                            scores[(w1, sa, sb)].append(score(q, target))
                    del grid

    base_mean, base_per_class = _mean_dice(baseline)
    rows = [
        {
            "crf": False,
            "w_appearance": math.nan,
            "sigma_alpha_mm": math.nan,
            "sigma_beta": math.nan,
            "w_smoothness": math.nan,
            "sigma_gamma_mm": math.nan,
            "num_iterations": 0,
            "mean_dice": base_mean,
            **{f"dice_{c}": v for c, v in zip(labels, base_per_class, strict=True)},
        }
    ]
    for (w1, sa, sb), per_case in scores.items():
        mean, per_class = _mean_dice(per_case)
        rows.append(
            {
                "crf": True,
                "w_appearance": w1,
                "sigma_alpha_mm": sa,
                "sigma_beta": sb,
                "w_smoothness": w2,
                "sigma_gamma_mm": sg,
                "num_iterations": iterations,
                "mean_dice": mean,
                **{f"dice_{c}": v for c, v in zip(labels, per_class, strict=True)},
            }
        )
    table = pd.DataFrame(rows)
    table.insert(
        table.columns.get_loc("mean_dice") + 1, "delta_dice", table["mean_dice"] - base_mean
    )
    return table.sort_values("mean_dice", ascending=False, kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------
# Clean-up selection
# ---------------------------------------------------------------------------


def select_cleanup(
    preds: Sequence[LabelArray],
    targets: Sequence[LabelArray],
    *,
    num_classes: int,
    classes: Sequence[int],
    connectivity: int = 3,
) -> CleanupDecision:
    """Decide from validation cases which largest-component clean-ups help (nnU-Net).

    Candidates are tried in order: all foreground labels as one, then each of ``classes``.
    Each is applied on top of the ones already kept and kept only if it does not lower the
    mean validation Dice of ``classes`` (``dice_after >= dice_before``; an unchanged
    prediction counts as "not lower", so a clean-up that changes nothing is kept). The
    mean Dice is the mean over ``classes`` of each class's mean Dice over the cases (NaN
    skipped), as in nnU-Net's summary.

    Args:
        preds: Predicted label maps, integer ``(Z, Y, X)`` each.
        targets: Reference label maps, same shapes as ``preds``.
        num_classes: K, the number of classes including background.
        classes: Foreground labels evaluated and tried one by one, e.g. ``[1, 2, 3]``.
        connectivity: As :func:`keep_largest_component`.

    Returns:
        The decision, with every candidate's Dice before and after.

    Raises:
        ValueError: if the lists are empty or of different lengths, shapes differ, labels
            are out of range, or ``classes`` holds 0.

    Example:
        >>> pred = np.array([[[1, 1, 0, 1, 0, 0]]], np.uint8)
        >>> target = np.array([[[1, 1, 0, 0, 0, 0]]], np.uint8)
        >>> d = select_cleanup([pred], [target], num_classes=2, classes=[1], connectivity=1)
        >>> d.foreground, d.classes, round(d.candidates[0].dice_before, 3)
        (True, (1,), 0.8)
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    labels = _check_eval_classes(classes, int(num_classes))
    _check_cleanup_classes(labels)
    _structure(connectivity)
    if len(preds) == 0 or len(preds) != len(targets):
        raise ValueError(
            f"preds and targets must be non-empty lists of the same length, got "
            f"{len(preds)} and {len(targets)}"
        )
    current = [_check_pred(p, f"preds[{i}]") for i, p in enumerate(preds)]
    refs = [_check_pred(t, f"targets[{i}]") for i, t in enumerate(targets)]

    def score(maps: list[np.ndarray]) -> float:
        return _mean_dice(
            [_class_dice(p, t, int(num_classes), labels) for p, t in zip(maps, refs, strict=True)]
        )[0]

    before = score(current)
    candidates = []
    keep_foreground = False
    kept: list[int] = []
    steps: list[int | str] = ["foreground", *labels]
    for step in steps:
        trial_classes: Sequence[int] | Literal["foreground"] = (
            "foreground" if step == "foreground" else [int(step)]
        )
        trial = [
            keep_largest_component(p, classes=trial_classes, connectivity=connectivity)
            for p in current
        ]
        after = score(trial)
        applied = bool(after >= before) or (math.isnan(after) and math.isnan(before))
        candidates.append(CleanupCandidate(step, before, after, applied))
        if applied:
            current, before = trial, after
            if step == "foreground":
                keep_foreground = True
            else:
                kept.append(int(step))
    return CleanupDecision(keep_foreground, tuple(kept), int(connectivity), tuple(candidates))
