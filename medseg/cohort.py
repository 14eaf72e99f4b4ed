"""Cohort reports: tissue volumes per case and one self-contained HTML report per cohort.

Three layers, as elsewhere in medseg:

* :func:`tissue_statistics` is pure: one label map (and optionally its confidence map) in,
  tissue volumes in mL, brain volume, intracranial volume, grey-matter fraction and mean
  vote agreement out; :func:`tiv_statistics` adds the TIV and each tissue's fraction of it
  from a brain mask. The batch engine stores these as columns of its cases frame.
* :func:`order_cases`, :func:`case_table`, :func:`group_summary` and :func:`failed_table`
  are pure too: a cases DataFrame in, a table DataFrame out.
* :func:`write_cohort_report` renders those tables, matplotlib plots (Dice box plots per
  group, volumes per group and against numeric metadata) and overlay thumbnails into
  ``cases.csv``, ``report.md`` and a self-contained ``report.html`` (inline CSS, PNGs as
  base64 data URIs, no network access), all written atomically.

Definitions (also printed in the report):

* ``<name>_ml``: voxels of that label x voxel volume (prod(spacing_mm) mm^3) / 1000.
* ``brain_ml``: GM + WM (total brain volume without CSF); ``icv_ml``: every non-background
  label (intracranial volume as segmented); ``gm_fraction``: GM / (GM + WM + CSF).
* ``tiv_ml``: voxels of the brain mask x voxel volume / 1000 (total intracranial volume
  when the skull was stripped); ``<name>_fraction_of_tiv``: ``<name>_ml / tiv_ml``. The
  report shows these columns when the cases frame has ``tiv_ml``.
* ``mean_agreement``: mean of the confidence map (vote agreement, or the winner's
  probability with ``--fast``) over non-background voxels.
* Quality control: a case is flagged when its mean agreement is below ``qc_threshold``
  (default :data:`QC_THRESHOLD` = 0.9, a fixed value rather than one relative to the
  cohort, so a flag means the same thing in a cohort of 3 and of 300; the shipped brain
  model gives about 0.92 on IBSR-18 with ``--fast``).
* Order, worst first: failed cases, then by ``weighted_dice`` ascending, then by
  ``mean_agreement`` ascending (cases without a reference come after those with one),
  then by case name.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from medseg.io import atomic_output, axial_axis, check_output_path, read_image, read_label
from medseg.metrics import _check_spacing
from medseg.report import _check_label_names
from medseg.typing import FloatArray, LabelArray, PathLike
from medseg.visualize import _color, overlay_rgb

QC_THRESHOLD = 0.9
"""Default ``qc_threshold``: cases whose mean agreement is below it are flagged."""

NUM_THUMBNAILS = 3
"""Default ``num_thumbnails``: overlay thumbnails of this many worst and best cases each."""

SUMMARY_KEYS = ("brain_ml", "icv_ml", "gm_fraction", "mean_agreement")
"""Keys of :func:`tissue_statistics` after the per-tissue ``<name>_ml`` keys, in order."""

TIV_KEY = "tiv_ml"
"""Key of the TIV (brain-mask volume, mL) in :func:`tiv_statistics`."""

REPORT_FILES = ("cases.csv", "report.md", "report.html")
"""The files :func:`write_cohort_report` writes into its output folder, in order."""

STATUSES = ("ok", "failed")
"""Allowed values of the ``status`` column."""

# Spellings of the three brain tissues, after lower-casing and turning "_" / "-" into spaces.
_TISSUE_ALIASES = {
    "GM": ("gm", "grey matter", "gray matter"),
    "WM": ("wm", "white matter"),
    "CSF": ("csf", "cerebrospinal fluid"),
}
_MISSING_GROUP = "(missing)"
_OVERALL_GROUP = "(all)"
_DASH = "\u2013"  # shown for NaN


# --------------------------------------------------------------------------------------
# Per-case statistics (pure)


def _norm_name(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def _brain_labels(names: Mapping[int, str]) -> dict[str, int]:
    """Map "GM" / "WM" / "CSF" to the label value whose name spells that tissue."""
    found: dict[str, int] = {}
    for value, name in names.items():
        if value == 0:
            continue
        for tissue, aliases in _TISSUE_ALIASES.items():
            if _norm_name(name) in aliases:
                if tissue in found:
                    raise ValueError(
                        f"label_names must name {tissue} once, got {names[found[tissue]]!r} "
                        f"(label {found[tissue]}) and {name!r} (label {value}); merge them"
                    )
                found[tissue] = value
    return found


def _tissue_labels(label_names: object) -> dict[int, str]:
    """Validated non-background labels -> names, ascending by value."""
    names = _check_label_names(label_names)
    tissues = {value: names[value] for value in sorted(names) if value != 0}
    reserved = {f"{name}_ml" for name in tissues.values()} & {*SUMMARY_KEYS, TIV_KEY}
    if reserved:
        raise ValueError(
            f"label_names must not give a key reserved for the summary values, got "
            f"{sorted(reserved)}; rename the tissue"
        )
    return tissues


def statistic_keys(label_names: Mapping[int, str]) -> list[str]:
    """The keys :func:`tissue_statistics` returns for ``label_names``, in order.

    Args:
        label_names: Label value -> tissue name; 0 (background) is skipped.

    Example:
        >>> statistic_keys({0: "background", 1: "CSF", 3: "WM", 2: "GM"})
        ['CSF_ml', 'GM_ml', 'WM_ml', 'brain_ml', 'icv_ml', 'gm_fraction', 'mean_agreement']
    """
    return [f"{name}_ml" for name in _tissue_labels(label_names).values()] + list(SUMMARY_KEYS)


def tissue_statistics(
    labels: LabelArray,
    *,
    spacing_mm: Sequence[float],
    label_names: Mapping[int, str],
    confidence: FloatArray | None = None,
) -> dict[str, float]:
    """Tissue volumes, brain volume, ICV, GM fraction and mean agreement of one label map.

    GM, WM and CSF are found by label name, case-insensitively: "GM", "grey matter",
    "gray matter" (also with "_" or "-"); "WM", "white matter"; "CSF",
    "cerebrospinal fluid". The brain keys that need a tissue whose name is absent are NaN.

    Args:
        labels: Label map, uint8 ``(Z, Y, X)`` (any integer dtype), values 0 (background)
            or keys of ``label_names``.
        spacing_mm: Voxel size ``(z, y, x)`` in mm.
        label_names: Label value -> tissue name; 0 (background) may be absent.
        confidence: Vote agreement (or winner probability), float ``(Z, Y, X)`` in [0, 1],
            or None.

    Returns:
        ``"<name>_ml"`` per non-background label (voxels x prod(spacing_mm) / 1000, mL),
        ``"brain_ml"`` (GM + WM, mL), ``"icv_ml"`` (all non-background labels, mL),
        ``"gm_fraction"`` (GM / (GM + WM + CSF); NaN when that is 0) and
        ``"mean_agreement"`` (mean confidence over non-background voxels; NaN without a
        confidence map or without such voxels). Keys in the order of :func:`statistic_keys`.

    Raises:
        TypeError: if ``labels`` is not an integer ndarray, ``confidence`` not a float
            ndarray, or ``label_names`` not a dict.
        ValueError: for a shape that is not ``(Z, Y, X)``, a label value not in
            ``label_names``, a confidence map of another shape or with values outside
            [0, 1], bad ``spacing_mm``, or label names that give a tissue twice or a key
            reserved for the summary values.

    Example:
        >>> labels = (np.arange(24).reshape(2, 3, 4) % 4).astype(np.uint8)  # 6 voxels each
        >>> s = tissue_statistics(labels, spacing_mm=(20.0, 10.0, 5.0),  # 1 mL voxels
        ...                       label_names={1: "CSF", 2: "GM", 3: "WM"})
        >>> s["GM_ml"], s["brain_ml"], s["icv_ml"], round(s["gm_fraction"], 4)
        (6.0, 12.0, 18.0, 0.3333)
    """
    tissues = _tissue_labels(label_names)
    brain = _brain_labels(tissues)
    counts = _label_counts(labels, tissues)
    voxel_ml = math.prod(_check_spacing(spacing_mm)) / 1000.0
    volumes = {value: float(counts[value]) * voxel_ml for value in tissues}
    out = {f"{name}_ml": volumes[value] for value, name in tissues.items()}
    gm, wm, csf = (volumes[brain[t]] if t in brain else math.nan for t in ("GM", "WM", "CSF"))
    out["brain_ml"] = gm + wm
    out["icv_ml"] = float(counts[1:].sum()) * voxel_ml
    total = gm + wm + csf
    out["gm_fraction"] = gm / total if total > 0 else math.nan  # NaN stays NaN
    out["mean_agreement"] = _mean_agreement(labels, confidence)
    return out


def tiv_keys(label_names: Mapping[int, str]) -> list[str]:
    """The keys :func:`tiv_statistics` returns for ``label_names``, in order.

    Example:
        >>> tiv_keys({0: "background", 1: "CSF", 2: "GM", 3: "WM"})
        ['tiv_ml', 'CSF_fraction_of_tiv', 'GM_fraction_of_tiv', 'WM_fraction_of_tiv']
    """
    tissues = _tissue_labels(label_names)
    return [TIV_KEY] + [f"{name}_fraction_of_tiv" for name in tissues.values()]


def tiv_statistics(
    labels: LabelArray,
    brain_mask: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    label_names: Mapping[int, str],
) -> dict[str, float]:
    """The TIV (brain-mask volume) and each tissue's volume as a fraction of it.

    Args:
        labels: Label map, uint8 ``(Z, Y, X)`` (any integer dtype), values 0 or keys of
            ``label_names``.
        brain_mask: The brain mask on the same grid, bool or integer ``(Z, Y, X)`` with
            values 0 and 1 (``medseg predict --brain-mask`` writes uint8).
        spacing_mm: Voxel size ``(z, y, x)`` in mm.
        label_names: Label value -> tissue name; 0 (background) may be absent.

    Returns:
        ``"tiv_ml"`` (mask voxels x prod(spacing_mm) / 1000, mL) and
        ``"<name>_fraction_of_tiv"`` per non-background label (the tissue's voxels over
        the mask's, wherever they lie; NaN for an empty mask), in the order of
        :func:`tiv_keys`.

    Raises:
        TypeError: ``labels`` not an integer ndarray, ``brain_mask`` not a bool or integer
            ndarray. ValueError: as :func:`tissue_statistics`, a mask of another shape, or
            mask values other than 0 and 1.

    Example:
        >>> labels = np.array([[[0, 1, 2, 2]]], np.uint8)
        >>> mask = np.array([[[1, 1, 1, 1]]], np.uint8)
        >>> s = tiv_statistics(labels, mask, spacing_mm=(10.0, 10.0, 10.0),  # 1 mL voxels
        ...                    label_names={1: "CSF", 2: "GM"})
        >>> s["tiv_ml"], s["CSF_fraction_of_tiv"], s["GM_fraction_of_tiv"]
        (4.0, 0.25, 0.5)
    """
    tissues = _tissue_labels(label_names)
    counts = _label_counts(labels, tissues)
    voxel_ml = math.prod(_check_spacing(spacing_mm)) / 1000.0
    if not isinstance(brain_mask, np.ndarray) or brain_mask.dtype.kind not in "bui":
        kind = brain_mask.dtype if isinstance(brain_mask, np.ndarray) else type(brain_mask)
        name = getattr(kind, "__name__", kind)
        raise TypeError(
            f"brain_mask must be a bool or integer ndarray (uint8 (Z, Y, X), 1 = brain), "
            f"got {name}; read masks with medseg.io.read_label"
        )
    if brain_mask.shape != labels.shape:
        raise ValueError(
            f"brain_mask must have the shape of labels {labels.shape}, got {brain_mask.shape}"
        )
    inside = int(np.count_nonzero(brain_mask))
    if brain_mask.dtype.kind != "b" and inside != int(np.count_nonzero(brain_mask == 1)):
        values = sorted(int(v) for v in np.unique(brain_mask) if v not in (0, 1))
        raise ValueError(
            f"brain_mask must hold only 0 and 1, got value(s) {values[:5]}; pass a binary mask"
        )
    out = {TIV_KEY: inside * voxel_ml}
    for value, name in tissues.items():
        out[f"{name}_fraction_of_tiv"] = float(counts[value]) / inside if inside else math.nan
    return out


def _label_counts(labels: object, tissues: Mapping[int, str]) -> np.ndarray:
    """Voxels per label value, int ``(max(tissues) + 1,)`` at least; validates ``labels``."""
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "ui":
        kind = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise TypeError(
            f"labels must be an integer ndarray (uint8 (Z, Y, X)), got {kind}; "
            "read label maps with medseg.io.read_label"
        )
    if labels.ndim != 3:
        raise ValueError(
            f"labels must be a (Z, Y, X) label map, got shape {labels.shape}; "
            "add a leading axis for 2D data (Z == 1)"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got minimum {int(labels.min())}")
    counts = np.bincount(labels.ravel(), minlength=max(tissues) + 1)
    unknown = [v for v in np.flatnonzero(counts) if v != 0 and v not in tissues]
    if unknown:
        listing = ", ".join(f"{k}={v}" for k, v in tissues.items())
        raise ValueError(
            f"labels must hold only 0 and values named in label_names ({listing}), got "
            f"unknown label value(s) {[int(v) for v in unknown]}; add them to label_names"
        )
    return counts


def _mean_agreement(labels: np.ndarray, confidence: object) -> float:
    if confidence is None:
        return math.nan
    if not isinstance(confidence, np.ndarray) or confidence.dtype.kind != "f":
        kind = confidence.dtype if isinstance(confidence, np.ndarray) else type(confidence)
        name = getattr(kind, "__name__", kind)
        raise TypeError(
            f"confidence must be a float ndarray (float32 (Z, Y, X) in [0, 1]) or None, got {name}"
        )
    if confidence.shape != labels.shape:
        raise ValueError(
            f"confidence must have the shape of labels {labels.shape}, got {confidence.shape}"
        )
    tissue = confidence[labels != 0].astype(np.float64)
    bad = ~((tissue >= 0) & (tissue <= 1))  # also catches NaN
    if bad.any():
        raise ValueError(
            f"confidence must be in [0, 1] on the labelled voxels, got {int(bad.sum())} "
            f"voxel(s) outside (e.g. {float(tissue[bad][0])!r}); pass the vote-agreement map"
        )
    return float(tissue.mean()) if tissue.size else math.nan


# --------------------------------------------------------------------------------------
# Tables (pure)


def _check_cases(cases: object, label_names: object) -> tuple[pd.DataFrame, dict[int, str]]:
    """Validate the cases frame; return a copy with defaults and numeric metric columns."""
    tissues = _tissue_labels(label_names)
    if not isinstance(cases, pd.DataFrame):
        raise TypeError(
            f"cases must be a pandas DataFrame with one row per case, got {type(cases).__name__}"
        )
    missing = [c for c in ("case", "status") if c not in cases.columns]
    if missing:
        raise ValueError(
            f"cases must have the columns 'case' and 'status', got {list(cases.columns)} "
            f"(missing {missing})"
        )
    if cases.empty:
        raise ValueError("cases must have at least one row, got an empty DataFrame")
    frame = cases.copy().reset_index(drop=True)
    frame["case"] = frame["case"].astype(str)
    duplicated = sorted(set(frame.loc[frame["case"].duplicated(), "case"]))
    if duplicated:
        raise ValueError(f"cases 'case' values must be unique, got duplicates {duplicated}")
    bad = sorted({repr(s) for s in frame["status"] if s not in STATUSES})
    if bad:
        raise ValueError(f"cases 'status' must be one of {list(STATUSES)}, got {', '.join(bad)}")
    for column in ("error", "stage", "image", "prediction", "label"):
        if column not in frame.columns:
            frame[column] = ""
        frame[column] = frame[column].fillna("").astype(str)
    for column in _metric_columns(frame, tissues, present_only=True):
        if not pd.api.types.is_numeric_dtype(frame[column]) or frame[column].dtype == bool:
            try:
                frame[column] = pd.to_numeric(frame[column]).astype(np.float64)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"cases column {column!r} must be numeric, got values such as "
                    f"{frame[column].iloc[0]!r}"
                ) from err
    return frame, tissues


def _dice_columns(frame: pd.DataFrame, tissues: Mapping[int, str]) -> list[str]:
    return [f"dice_{name}" for name in tissues.values() if f"dice_{name}" in frame.columns]


def _metric_columns(
    frame: pd.DataFrame, tissues: Mapping[int, str], *, present_only: bool = False
) -> list[str]:
    """weighted_dice, dice_<name>..., <name>_ml..., brain/ICV/GM fraction/agreement, and
    the TIV keys (:func:`tiv_keys`) when ``frame`` has ``tiv_ml``."""
    dice = (["weighted_dice"] if "weighted_dice" in frame.columns else []) + _dice_columns(
        frame, tissues
    )
    stats = [f"{name}_ml" for name in tissues.values()] + list(SUMMARY_KEYS)
    if present_only:
        stats = [c for c in stats if c in frame.columns]
    tiv = tiv_keys(tissues) if TIV_KEY in frame.columns else []
    if present_only:
        tiv = [c for c in tiv if c in frame.columns]
    return dice + stats + tiv


def _check_group_by(frame: pd.DataFrame, group_by: object) -> None:
    if group_by is None:
        return
    if not isinstance(group_by, str) or group_by not in frame.columns:
        raise ValueError(
            f"group_by must be a column of cases, got {group_by!r}; available columns: "
            f"{', '.join(map(str, frame.columns))}"
        )


def _check_threshold(qc_threshold: object) -> float:
    if (
        isinstance(qc_threshold, (bool, np.bool_))
        or not isinstance(qc_threshold, (int, float, np.integer, np.floating))
        or not 0 <= float(qc_threshold) <= 1
    ):
        raise ValueError(f"qc_threshold must be a number in [0, 1], got {qc_threshold!r}")
    return float(qc_threshold)


def _is_missing(value: object) -> bool:
    return (isinstance(value, str) and not value.strip()) or (
        not isinstance(value, str) and bool(pd.isna(value))
    )


def _as_numbers(values: pd.Series) -> pd.Series | None:
    """``values`` as float64 (missing -> NaN) if every present value is a number, else None.

    Manifest metadata arrive as text ("31", ""), so numbers are recognised in strings too.
    """
    if pd.api.types.is_bool_dtype(values):
        return None
    missing = values.map(_is_missing).astype(bool)
    numbers = pd.to_numeric(values.where(~missing), errors="coerce").astype(np.float64)
    return None if (numbers.isna() & ~missing).any() else numbers


def _group_values(frame: pd.DataFrame, group_by: str | None) -> tuple[pd.Series, list[str]]:
    """Each row's group as a string, and the groups in display order (missing last).

    Missing values (NaN, None, "") form the group "(missing)"; groups sort by number when
    every present value is one, else by text.
    """
    if group_by is None:
        return pd.Series("all", index=frame.index), ["all"]
    values = frame[group_by]
    missing = values.map(_is_missing).astype(bool)
    labels = values.map(str).where(~missing, _MISSING_GROUP)
    numbers = _as_numbers(values)
    present = pd.DataFrame({"label": labels, "key": numbers if numbers is not None else 0.0})
    present = present[~missing].sort_values(["key", "label"], kind="mergesort")
    order = list(dict.fromkeys(present["label"]))
    if missing.any():
        order.append(_MISSING_GROUP)
    return labels, order


def _sort_worst_first(frame: pd.DataFrame) -> pd.DataFrame:
    nan = pd.Series(np.nan, index=frame.index)
    key = pd.DataFrame(
        {
            "ok": (frame["status"] == "ok").astype(int),  # failed (0) first
            "dice": frame["weighted_dice"] if "weighted_dice" in frame.columns else nan,
            "agreement": frame["mean_agreement"] if "mean_agreement" in frame.columns else nan,
            "case": frame["case"],
        }
    )
    order = key.sort_values(
        ["ok", "dice", "agreement", "case"], na_position="last", kind="mergesort"
    ).index
    return frame.loc[order].reset_index(drop=True)


def order_cases(cases: pd.DataFrame, *, label_names: Mapping[int, str]) -> pd.DataFrame:
    """The cases frame ordered worst first.

    Order: failed cases, then ``weighted_dice`` ascending, then ``mean_agreement``
    ascending (NaN after numbers in both, so cases without a reference follow those with
    one and are ordered among themselves by agreement), then ``case``.

    Args:
        cases: One row per case with at least ``case`` and ``status`` ("ok" / "failed");
            see :func:`write_cohort_report` for the other columns.
        label_names: Label value -> tissue name (names the ``dice_<name>`` columns).

    Returns:
        A copy, index reset, with missing ``error`` / ``stage`` / ``image`` /
        ``prediction`` / ``label`` columns added as "" and metric columns as float64.

    Raises:
        TypeError: if ``cases`` is not a DataFrame.
        ValueError: for missing ``case`` / ``status`` columns, no rows, repeated cases,
            unknown statuses or non-numeric metric columns.

    Example:
        >>> cases = pd.DataFrame({"case": ["a", "b", "c"], "status": ["ok", "failed", "ok"],
        ...                       "weighted_dice": [0.9, np.nan, 0.8]})
        >>> order_cases(cases, label_names={1: "GM"})["case"].tolist()
        ['b', 'c', 'a']
    """
    frame, _ = _check_cases(cases, label_names)
    return _sort_worst_first(frame)


def case_table(
    cases: pd.DataFrame,
    *,
    label_names: Mapping[int, str],
    group_by: str | None = None,
    qc_threshold: float = QC_THRESHOLD,
) -> pd.DataFrame:
    """Per-case Dice, volumes and QC flag of the successful cases, worst first.

    Args:
        cases: The cases frame (see :func:`write_cohort_report`).
        label_names: Label value -> tissue name.
        group_by: A column of ``cases`` to show beside the case name, or None.
        qc_threshold: Mean agreement below which a case is flagged, in [0, 1].

    Returns:
        One row per case with status "ok", in :func:`order_cases` order, columns: ``case``,
        ``group_by`` (if given), ``weighted_dice`` and ``dice_<name>`` (those present in
        ``cases``), ``<name>_ml`` per tissue, ``brain_ml``, ``icv_ml``, ``gm_fraction``,
        ``mean_agreement`` (NaN where ``cases`` lacks the column), when ``cases`` has
        ``tiv_ml``: ``tiv_ml`` and ``<name>_fraction_of_tiv`` per tissue, and ``qc_flag`` (bool:
        mean agreement below ``qc_threshold``; False where it is NaN).

    Raises:
        TypeError / ValueError: as :func:`order_cases`; ValueError also for an unknown
            ``group_by`` or a ``qc_threshold`` outside [0, 1].

    Example:
        >>> cases = pd.DataFrame({"case": ["a", "b"], "status": "ok",
        ...                       "mean_agreement": [0.95, 0.7]})
        >>> case_table(cases, label_names={1: "GM"})[["case", "qc_flag"]].values.tolist()
        [['b', True], ['a', False]]
    """
    frame, tissues = _check_cases(cases, label_names)
    _check_group_by(frame, group_by)
    threshold = _check_threshold(qc_threshold)
    ordered = _sort_worst_first(frame)
    ok = ordered[ordered["status"] == "ok"].reset_index(drop=True)
    table = ok.reindex(columns=_metric_columns(ok, tissues))
    agreement = table["mean_agreement"].astype(np.float64)
    table["qc_flag"] = (agreement < threshold).to_numpy(dtype=bool)
    front = ok[["case"] + ([group_by] if group_by is not None else [])]
    return pd.concat([front, table], axis=1)


def group_summary(
    cases: pd.DataFrame,
    *,
    label_names: Mapping[int, str],
    group_by: str | None = None,
    qc_threshold: float = QC_THRESHOLD,
) -> pd.DataFrame:
    """Mean and standard deviation of Dice, volumes and agreement per group.

    Args:
        cases: The cases frame (see :func:`write_cohort_report`).
        label_names: Label value -> tissue name.
        group_by: A column of ``cases`` whose values form the groups (missing values form
            the group "(missing)"), or None for one group "all".
        qc_threshold: Mean agreement below which a case is flagged, in [0, 1].

    Returns:
        One row per group (sorted by value, "(missing)" last), then, when ``group_by`` is
        given, a row "(all)" over every case. Columns: ``group`` (str), ``n_cases``,
        ``n_failed``, ``n_flagged`` (ints) and, per metric ``m`` of :func:`case_table`,
        ``m_mean`` and ``m_std`` over the successful cases, NaN skipped (sample std,
        ddof=1: NaN with fewer than 2 values).

    Raises:
        TypeError / ValueError: as :func:`case_table`.

    Example:
        >>> cases = pd.DataFrame({"case": list("abc"), "status": ["ok", "ok", "failed"],
        ...                       "site": ["x", "x", "y"], "GM_ml": [10.0, 14.0, np.nan]})
        >>> s = group_summary(cases, label_names={2: "GM"}, group_by="site")
        >>> s[["group", "n_cases", "n_failed", "GM_ml_mean"]].values.tolist()
        [['x', 2, 0, 12.0], ['y', 1, 1, nan], ['(all)', 3, 1, 12.0]]
    """
    frame, tissues = _check_cases(cases, label_names)
    _check_group_by(frame, group_by)
    threshold = _check_threshold(qc_threshold)
    metrics = _metric_columns(frame, tissues)
    values = frame.reindex(columns=metrics).astype(np.float64)
    groups, order = _group_values(frame, group_by)
    selections = [(name, groups == name) for name in order]
    if group_by is not None:
        selections.append((_OVERALL_GROUP, pd.Series(True, index=frame.index)))
    ok = frame["status"] == "ok"
    flagged = ok & (values["mean_agreement"] < threshold)
    records = []
    for name, selected in selections:
        record: dict[str, Any] = {
            "group": name,
            "n_cases": int(selected.sum()),
            "n_failed": int((selected & ~ok).sum()),
            "n_flagged": int((selected & flagged).sum()),
        }
        for m in metrics:
            column = values.loc[selected & ok, m]
            record[f"{m}_mean"] = float(column.mean(skipna=True))
            record[f"{m}_std"] = float(column.std(skipna=True, ddof=1))
        records.append(record)
    columns = ["group", "n_cases", "n_failed", "n_flagged"] + [
        f"{m}_{stat}" for m in metrics for stat in ("mean", "std")
    ]
    return pd.DataFrame.from_records(records, columns=columns)


def failed_table(cases: pd.DataFrame, *, label_names: Mapping[int, str]) -> pd.DataFrame:
    """The failed cases with the stage that failed and the error, sorted by case.

    Args:
        cases: The cases frame (see :func:`write_cohort_report`).
        label_names: Label value -> tissue name.

    Returns:
        Columns ``case``, ``stage``, ``error`` (str), one row per case with status
        "failed"; empty when none failed.

    Raises:
        TypeError / ValueError: as :func:`order_cases`.

    Example:
        >>> cases = pd.DataFrame({"case": ["a", "b"], "status": ["failed", "ok"],
        ...                       "stage": ["predict", ""], "error": ["no file", ""]})
        >>> failed_table(cases, label_names={1: "GM"}).values.tolist()
        [['a', 'predict', 'no file']]
    """
    frame, _ = _check_cases(cases, label_names)
    failed = frame[frame["status"] == "failed"].sort_values("case", kind="mergesort")
    return failed[["case", "stage", "error"]].reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Formatting


def _header(column: str) -> str:
    fixed = {
        "case": "case",
        "weighted_dice": "weighted Dice",
        "brain_ml": "brain (mL)",
        "icv_ml": "ICV (mL)",
        "tiv_ml": "TIV (mL)",
        "gm_fraction": "GM fraction",
        "mean_agreement": "mean agreement",
        "qc_flag": "QC",
        "n_cases": "cases",
        "n_failed": "failed",
        "n_flagged": "flagged",
    }
    if column in fixed:
        return fixed[column]
    if column.startswith("dice_"):
        return f"Dice {column[len('dice_') :]}"
    if column.endswith("_fraction_of_tiv"):
        return f"{column[: -len('_fraction_of_tiv')]} / TIV"
    if column.endswith("_ml"):
        return f"{column[: -len('_ml')]} (mL)"
    return column


def _digits(column: str) -> int:
    return 1 if column.endswith("_ml") else 3


def _format_value(value: object, column: str) -> str:
    if column == "qc_flag":
        return "LOW AGREEMENT" if bool(value) else ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _DASH if math.isnan(value) else f"{value:.{_digits(column)}f}"
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return _DASH
    return str(value)


def _mean_sd(mean: float, std: float, column: str) -> str:
    if math.isnan(mean):
        return _DASH
    d = _digits(column)
    return f"{mean:.{d}f}" if math.isnan(std) else f"{mean:.{d}f} \u00b1 {std:.{d}f}"


def _formatted_case_table(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = [_header(str(c)) for c in table.columns]
    rows = [
        [_format_value(v, str(c)) for c, v in zip(table.columns, row, strict=True)]
        for row in table.itertuples(index=False)
    ]
    return headers, rows


def _formatted_summary(
    summary: pd.DataFrame, group_by: str | None
) -> tuple[list[str], list[list[str]]]:
    """The summary transposed for reading: one row per count or metric, one column per group."""
    metrics = [str(c)[: -len("_mean")] for c in summary.columns if str(c).endswith("_mean")]
    records = summary.to_dict("records")
    headers = [group_by or "group"] + [str(r["group"]) for r in records]
    rows = [
        [_header(c)] + [str(r[c]) for r in records] for c in ("n_cases", "n_failed", "n_flagged")
    ]
    for m in metrics:
        rows.append([_header(m)] + [_mean_sd(r[f"{m}_mean"], r[f"{m}_std"], m) for r in records])
    return headers, rows


def _markdown_cell(text: str) -> str:
    """One line; "|" and "<" backslash-escaped so cells neither split nor become raw HTML."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "\\<")


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    body = [[_markdown_cell(c) for c in row] for row in rows]
    return tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True)


def _html_table(
    headers: list[str],
    rows: list[list[str]],
    *,
    row_classes: Sequence[str] | None = None,
    pre_columns: Sequence[int] = (),
    css_class: str = "",
) -> str:
    lines = [f'<table class="{css_class}">' if css_class else "<table>", "<thead><tr>"]
    lines += [f"<th>{html.escape(h)}</th>" for h in headers]
    lines.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes else ""
        lines.append(f'<tr class="{html.escape(cls)}">' if cls else "<tr>")
        for j, cell in enumerate(row):
            text = html.escape(cell)
            lines.append(f"<td><pre>{text}</pre></td>" if j in pre_columns else f"<td>{text}</td>")
        lines.append("</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Plots and thumbnails (matplotlib's object API: no pyplot state, thread-safe, Agg)


def _png_bytes(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _box_panel(ax: Any, groups: list[str], series: list[np.ndarray], ylabel: str) -> None:
    """Box per group with the cases drawn over it (fixed horizontal offsets, no RNG)."""
    positions = [i + 1 for i, s in enumerate(series) if s.size]
    data = [s for s in series if s.size]
    ax.boxplot(data, positions=positions, widths=0.5, showfliers=False)
    for pos, values in zip(positions, data, strict=True):
        offsets = np.linspace(-0.12, 0.12, values.size) if values.size > 1 else np.zeros(1)
        ax.plot(pos + offsets, values, "o", ms=4, alpha=0.7, color="tab:blue")
    crowded = len(groups) > 3 or sum(len(g) for g in groups) > 18
    ax.set_xticks(
        range(1, len(groups) + 1),
        groups,
        rotation=30 if crowded else 0,
        ha="right" if crowded else "center",
        fontsize=8,
    )
    ax.set_xlim(0.4, len(groups) + 0.6)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def _panel_grid(num: int, width: float, height: float) -> tuple[Any, list[Any]]:
    ncols = min(num, 4)
    nrows = math.ceil(num / ncols)
    fig = _new_figure(width * ncols, height * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[num:]:
        ax.set_visible(False)
    return fig, axes[:num]


def _per_group_plot(
    table: pd.DataFrame, columns: list[str], groups: pd.Series, order: list[str], title: str
) -> bytes | None:
    """Box plots of ``columns`` per group, one panel per column with data; None if none."""
    shown = [c for c in columns if table[c].notna().any()]
    if not shown:
        return None
    fig, axes = _panel_grid(len(shown), 3.2, 3.0)
    for ax, column in zip(axes, shown, strict=True):
        series = [table.loc[groups == g, column].dropna().to_numpy(np.float64) for g in order]
        _box_panel(ax, order, series, _header(column))
        ax.set_title(_header(column), fontsize=10)
    fig.suptitle(title, fontsize=11)
    return _png_bytes(fig)


def _scatter_plot(
    table: pd.DataFrame, x_columns: list[str], groups: pd.Series, order: list[str]
) -> bytes | None:
    """brain_ml and gm_fraction against numeric metadata, coloured by group."""
    pairs = [
        (x, y)
        for x in x_columns
        for y in ("brain_ml", "gm_fraction")
        if (table[x].notna() & table[y].notna()).sum() >= 2
    ]
    if not pairs:
        return None
    fig, axes = _panel_grid(len(pairs), 3.4, 3.0)
    for ax, (x, y) in zip(axes, pairs, strict=True):
        for k, group in enumerate(order):
            part = table[groups == group]
            ax.plot(part[x], part[y], "o", ms=5, alpha=0.8, color=f"C{k % 10}", label=group)
        ax.set_xlabel(x)
        ax.set_ylabel(_header(y))
        ax.grid(alpha=0.3)
    if len(order) > 1:
        axes[0].legend(fontsize=8)
    fig.suptitle("Volumes against metadata", fontsize=11)
    return _png_bytes(fig)


def _numeric_metadata(
    frame: pd.DataFrame, tissues: Mapping[int, str], group_by: str | None
) -> pd.DataFrame:
    """Up to two metadata columns whose values are all numbers (or missing), as float64."""
    known = {"case", "status", "error", "stage", "image", "prediction", "label", "seconds"}
    known |= set(_metric_columns(frame, tissues)) | {"qc_flag"}
    out = {}
    for column in frame.columns:
        if column in known or column == group_by or not isinstance(column, str):
            continue
        numbers = _as_numbers(frame[column])
        if numbers is not None and numbers.dropna().nunique() >= 2:
            out[column] = numbers
        if len(out) == 2:  # two metadata axes keep the report short
            break
    return pd.DataFrame(out, index=frame.index)


def _axial_slices(row: Mapping[str, Any]) -> tuple[list[np.ndarray], list[str], float]:
    """Mid axial slices of image, prediction and (if any) reference; and the aspect ratio."""
    image = read_image(row["image"])
    pred = read_label(row["prediction"])
    volumes = [pred]
    if row["label"]:
        volumes.append(read_label(row["label"]))
    for volume in volumes:
        if volume.spatial_shape != image.spatial_shape:
            raise ValueError(
                f"label map {str(volume.path)!r} must have the image's shape "
                f"{image.spatial_shape}, got {volume.spatial_shape}"
            )
    axis = axial_axis(pred.geometry)
    # middle of the predicted tissue along the axial axis (the array middle if none)
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(np.any(pred.array != 0, axis=other))
    index = int((present[0] + present[-1]) // 2) if present.size else pred.spatial_shape[axis] // 2
    grey = np.take(image.array[0], index, axis=axis).astype(np.float64)
    slices = [grey] + [np.take(v.array, index, axis=axis) for v in volumes]
    # crop to the labelled tissue of this slice plus a margin, so small brains stay legible
    tissue = np.any(np.stack(slices[1:]) != 0, axis=0)
    if tissue.any():
        box = []
        for ax in (0, 1):
            hit = np.flatnonzero(tissue.any(axis=1 - ax))
            margin = 2 + (hit[-1] - hit[0]) // 12
            box.append(slice(max(hit[0] - margin, 0), hit[-1] + margin + 1))
        slices = [s[box[0], box[1]] for s in slices]
    spacing = pred.geometry.spacing_mm
    aspect = spacing[other[0]] / spacing[other[1]]
    names = ["prediction", "reference"][: len(volumes)]
    return slices, names, aspect


def _thumbnail(row: Mapping[str, Any], tissues: Mapping[int, str]) -> bytes:
    from matplotlib.patches import Patch

    slices, names, aspect = _axial_slices(row)
    grey, maps = slices[0], slices[1:]
    fig = _new_figure(2.6 * len(maps), 3.0)
    axes = np.atleast_1d(fig.subplots(1, len(maps))).ravel()
    for ax, labels, name in zip(axes, maps, names, strict=True):
        ax.imshow(overlay_rgb(grey, labels), origin="lower", aspect=aspect)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    present = sorted({int(v) for m in maps for v in np.unique(m) if v != 0})
    handles = [Patch(color=_color(v), label=tissues.get(v, str(v))) for v in present]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    return _png_bytes(fig)


def _thumbnail_cases(ordered_ok: pd.DataFrame, num: int) -> tuple[list[int], list[int]]:
    """Row positions of the worst ``num`` and (other) best ``num`` cases with predictions."""
    eligible = [i for i, p in enumerate(ordered_ok["prediction"]) if p]
    worst = eligible[:num]
    best = [i for i in reversed(eligible[num:])][:num]
    return worst, best


# --------------------------------------------------------------------------------------
# Writing

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px;
       color: #1d2329; background: #fff; max-width: 1400px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de; }
p.note, ul.note { color: #57606a; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f3f5f7; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #f8f9fa; }
tr.flagged td { background: #fff1c2; }
table.failed th { background: #fbe2e2; }
table.failed td, table.failed th { text-align: left; }
td { white-space: nowrap; }
td pre { margin: 0; white-space: pre-wrap; font-size: 0.95em; max-width: 900px; }
figure { display: inline-block; margin: 6px 12px 12px 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #e1e4e8; }
figcaption { font-size: 0.8em; color: #57606a; }
div.missing { display: inline-block; padding: 12px; border: 1px dashed #c00; color: #900; }
"""

# Counts the <img> elements that decoded (naturalWidth > 0) once the page has loaded, so a
# headless browser can check that every plot and thumbnail rendered.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
  }
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-images-loaded", String(loaded));
});
"""


def _img(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'
    )


def _case_caption(row: Mapping[str, Any]) -> str:
    parts = [str(row["case"])]
    for column, name in (("weighted_dice", "weighted Dice"), ("mean_agreement", "agreement")):
        value = row.get(column, math.nan)
        if isinstance(value, (float, np.floating)) and not math.isnan(value):
            parts.append(f"{name} {value:.3f}")
    return " \u00b7 ".join(parts)


def _thumbnail_html(row: Mapping[str, Any], tissues: Mapping[int, str]) -> str:
    caption = _case_caption(row)
    try:
        png = _thumbnail(row, tissues)
    except (OSError, ValueError) as err:
        warnings.warn(f"thumbnail of case {row['case']!r} skipped: {err}", stacklevel=3)
        return f'<div class="missing">{html.escape(caption)}: thumbnail unavailable: ' + (
            f"{html.escape(str(err))}</div>"
        )
    return _img(png, f"overlay of case {row['case']}", caption)


def _definitions(qc_threshold: float, *, tiv: bool = False) -> list[str]:
    volumes = (
        "Volumes: voxels \u00d7 voxel volume / 1000 (mL). Brain = GM + WM; ICV = every "
        "labelled tissue; GM fraction = GM / (GM + WM + CSF)."
    )
    if tiv:
        volumes += (
            " TIV = volume of the brain mask (the intracranial volume when the skull was "
            "stripped); <tissue> / TIV = the tissue's volume divided by it."
        )
    return [
        volumes,
        "Mean agreement: mean confidence (vote agreement, or the winning probability with "
        f"--fast) over labelled voxels. QC flags cases with mean agreement below "
        f"{qc_threshold:g}.",
        "Cases are ordered worst first: by weighted Dice ascending, then by mean agreement "
        "ascending (cases without a reference label after those with one).",
    ]


def write_cohort_report(
    cases: pd.DataFrame,
    out_dir: PathLike,
    *,
    label_names: Mapping[int, str],
    group_by: str | None = None,
    overwrite: bool = False,
    title: str | None = None,
    qc_threshold: float = QC_THRESHOLD,
    num_thumbnails: int = NUM_THUMBNAILS,
) -> list[Path]:
    """Write ``cases.csv``, ``report.md`` and a self-contained ``report.html`` for a cohort.

    The HTML report shows, in order: the failed cases with stage and error; per-tissue
    Dice box plots per group (when Dice columns have values), brain volume and GM fraction
    per group (with ``group_by``) and against numeric metadata columns (at most two, e.g.
    ``age``; numbers stored as text count); mean ± SD per group; the per-case table worst
    first with a QC flag (mean agreement below ``qc_threshold``); and mid-axial overlay
    thumbnails of the worst
    and best ``num_thumbnails`` cases (prediction, and the reference beside it when a label
    file is given), read from the case files. CSS, plots and thumbnails are inline (PNG
    data URIs); nothing is loaded from the network. ``report.md`` has the same tables;
    ``cases.csv`` is ``cases`` worst first (:func:`order_cases`) with a ``qc_flag`` column.

    A thumbnail whose files cannot be read is replaced by a note and a warning.

    Args:
        cases: One row per case: ``case`` (str), ``status`` ("ok" / "failed"), ``error``
            (str, "" when ok), ``stage`` ("predict", "evaluate" or ""), ``image``,
            ``prediction`` and ``label`` (absolute paths, or "" when absent), ``seconds``
            (float), any metadata columns (e.g. ``split``, ``sex``, ``age``), the
            :func:`tissue_statistics` keys, optionally the :func:`tiv_keys` (shown when
            ``tiv_ml`` is a column) and, for cases with a reference,
            ``dice_<name>`` per tissue and ``weighted_dice`` (NaN where unknown).
        out_dir: Existing folder that receives the three files.
        label_names: Label value -> tissue name, e.g. ``{1: "CSF", 2: "GM", 3: "WM"}``.
        group_by: A column of ``cases`` whose values group the plots and summaries.
        overwrite: Replace existing report files instead of raising.
        title: Heading of the report; default "Cohort report".
        qc_threshold: Mean agreement below which a case is flagged, in [0, 1].
        num_thumbnails: Worst and best cases shown as thumbnails (each), >= 0.

    Returns:
        The paths written: ``out_dir/cases.csv``, ``out_dir/report.md``,
        ``out_dir/report.html``.

    Raises:
        FileExistsError: if a report file exists and ``overwrite`` is False (nothing is
            written then).
        FileNotFoundError: if ``out_dir`` does not exist.
        TypeError / ValueError: for a bad cases frame (see :func:`order_cases`), an unknown
            ``group_by`` column, or bad ``label_names``, ``qc_threshold``,
            ``num_thumbnails`` or ``title``.
    """
    frame, tissues = _check_cases(cases, label_names)
    _check_group_by(frame, group_by)
    threshold = _check_threshold(qc_threshold)
    if (
        isinstance(num_thumbnails, (bool, np.bool_))
        or not isinstance(num_thumbnails, (int, np.integer))
        or num_thumbnails < 0
    ):
        raise ValueError(f"num_thumbnails must be an int >= 0, got {num_thumbnails!r}")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
    heading = title or "Cohort report"
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(
            f"out_dir must be an existing folder, got {str(out)!r}; create it first"
        )
    targets = [out / name for name in REPORT_FILES]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"report files must not exist, got existing {existing}; "
            "pass --overwrite (overwrite=True) to replace them"
        )
    for target in targets:
        check_output_path(target, overwrite=overwrite)

    ordered = _sort_worst_first(frame)
    ok_rows = ordered[ordered["status"] == "ok"].reset_index(drop=True)
    table = case_table(frame, label_names=tissues, group_by=group_by, qc_threshold=threshold)
    summary = group_summary(frame, label_names=tissues, group_by=group_by, qc_threshold=threshold)
    failed = failed_table(frame, label_names=tissues)
    groups, order = _group_values(ok_rows, group_by)
    metrics = ok_rows.reindex(columns=_metric_columns(ok_rows, tissues))

    plots: list[tuple[str, bytes]] = []
    dice_columns = _dice_columns(ok_rows, tissues)
    if "weighted_dice" in ok_rows.columns:
        dice_columns.append("weighted_dice")
    dice_png = _per_group_plot(metrics, dice_columns, groups, order, "Dice per tissue")
    if dice_png is not None:
        plots.append(("Dice per tissue and group", dice_png))
    if group_by is not None:
        volume_png = _per_group_plot(
            metrics, ["brain_ml", "gm_fraction"], groups, order, f"Volumes by {group_by}"
        )
        if volume_png is not None:
            plots.append((f"brain volume and GM fraction by {group_by}", volume_png))
    metadata = _numeric_metadata(ok_rows, tissues, group_by)
    if not metadata.empty:
        with_meta = pd.concat([metrics, metadata], axis=1)
        scatter_png = _scatter_plot(with_meta, list(metadata.columns), groups, order)
        if scatter_png is not None:
            plots.append(("volumes against metadata", scatter_png))

    worst, best = _thumbnail_cases(ok_rows, int(num_thumbnails))
    records = ok_rows.to_dict("records")
    thumbs_worst = [_thumbnail_html(records[i], tissues) for i in worst]
    thumbs_best = [_thumbnail_html(records[i], tissues) for i in best]

    case_headers, case_cells = _formatted_case_table(table)
    summary_headers, summary_cells = _formatted_summary(summary, group_by)
    failed_headers = ["case", "stage", "error"]
    failed_cells = [[str(v) for v in row] for row in failed.itertuples(index=False)]
    num_flagged = int(table["qc_flag"].sum())
    overview = (
        f"{len(frame)} cases: {len(ok_rows)} ok, {len(failed)} failed; {num_flagged} flagged "
        f"for low mean agreement (< {threshold:g})."
    )

    definitions = _definitions(threshold, tiv=TIV_KEY in frame.columns)

    # ---- HTML
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(heading)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head><body>",
        f"<h1>{html.escape(heading)}</h1>",
        f"<p>{html.escape(overview)}</p>",
        '<ul class="note">' + "".join(f"<li>{html.escape(d)}</li>" for d in definitions) + "</ul>",
    ]
    if len(failed):
        parts += [
            f"<h2>Failed cases ({len(failed)})</h2>",
            _html_table(failed_headers, failed_cells, pre_columns=(2,), css_class="failed"),
        ]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [_img(png, alt, alt) for alt, png in plots]
    parts += [
        f"<h2>Summary per {html.escape(group_by) if group_by else 'cohort'}: mean \u00b1 SD "
        "over successful cases</h2>",
        _html_table(summary_headers, summary_cells),
        f"<h2>Cases, worst first ({len(ok_rows)})</h2>",
        _html_table(
            case_headers,
            case_cells,
            row_classes=["flagged" if f else "" for f in table["qc_flag"]],
        ),
    ]
    if thumbs_worst or thumbs_best:
        parts.append("<h2>Overlays: mid axial slice</h2>")
        if thumbs_worst:
            parts += ["<h3>Worst cases</h3>", *thumbs_worst]
        if thumbs_best:
            parts += ["<h3>Best cases</h3>", *thumbs_best]
    parts.append("</body></html>\n")
    page = "\n".join(parts)

    # ---- Markdown
    md = [f"# {_markdown_cell(heading)}", "", overview, ""]
    md += [f"- {d}" for d in definitions] + [""]
    if len(failed):
        md += [
            f"## Failed cases ({len(failed)})",
            "",
            _markdown_table(failed_headers, failed_cells),
        ]
        md.append("")
    md += [
        f"## Summary per {_markdown_cell(group_by) if group_by else 'cohort'}: mean \u00b1 SD "
        "over successful cases",
        "",
        _markdown_table(summary_headers, summary_cells),
        "",
        f"## Cases, worst first ({len(ok_rows)})",
        "",
        _markdown_table(case_headers, case_cells),
        "",
        "Plots and overlay thumbnails are in report.html.",
        "",
    ]

    # ---- cases.csv: every case, worst first, with the QC flag
    csv_frame = ordered.copy()
    agreement = ordered.get("mean_agreement", pd.Series(np.nan, index=ordered.index))
    csv_frame["qc_flag"] = (
        (ordered["status"] == "ok") & (agreement.astype(np.float64) < threshold)
    ).to_numpy(dtype=bool)

    with contextlib.ExitStack() as stack:  # renames happen only when every write succeeded
        tmp_csv, tmp_md, tmp_html = (
            stack.enter_context(atomic_output(t, overwrite=overwrite)) for t in targets
        )
        csv_frame.to_csv(tmp_csv, index=False)
        tmp_md.write_text("\n".join(md), encoding="utf-8")
        tmp_html.write_text(page, encoding="utf-8")
    return targets
