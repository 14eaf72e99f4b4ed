"""Evaluation reports: metric rows as pandas DataFrames, summaries and writers.

Tissue (class) reports: :func:`evaluate_case` turns one (pred, target) pair into one row per
named tissue plus a dict of case-level values; :func:`summarize` aggregates rows over cases with
NaN accounting (NaN is skipped in the means and counted, as nnU-Net and MONAI's
``get_not_nans`` do); :func:`write_report` writes CSV + Markdown files atomically.

Object (instance) reports, for microscopy: :func:`evaluate_instances` turns one pair of
instance maps into one row of pixel, Rand, DSB2018 AP and touching-pair metrics;
:func:`summarize_instances` averages them and pools the split rate; :func:`write_instance_report`
writes CSV + Markdown atomically. Metric definitions and the empty-mask policy are in
:mod:`medseg.metrics`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
from tabulate import tabulate

from medseg.io import atomic_output, check_output_path
from medseg.metrics import (
    MAX_NUM_CLASSES,
    average_precision,
    boundary_f1,
    check_label_maps,
    confusion_matrix,
    foreground_iou,
    isbi_scores,
    overlap_metrics,
    pixel_error,
    rand_error,
    surface_distances,
    touching_split_rate,
    weighted_dice,
)
from medseg.typing import LabelArray, PathLike

ROW_COLUMNS = (
    "case",
    "tissue",
    "label",
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "hd95_mm",
    "assd_mm",
    "hd_mm",
    "bf_score",
    "volume_ml",
    "target_volume_ml",
    "n_pred",
    "n_target",
)
"""Columns of the per-(case, tissue) rows returned by :func:`evaluate_case`, in order."""

METRIC_COLUMNS = ROW_COLUMNS[3:14]
"""The row columns that :func:`summarize` aggregates (dice ... target_volume_ml)."""

CASE_COLUMNS = ("case", "accuracy", "mean_iou", "fw_iou", "mean_class_accuracy", "weighted_dice")
"""Scalar case-level values of :func:`evaluate_case`'s dict (it also holds the confusion matrix)."""

_ITEM = re.compile(r"^\s*(-?\d+)\s*=\s*(\S(?:.*\S)?)\s*$")
_FORMAT_HINT = "use 'VALUE=NAME' items separated by commas, e.g. '1=CSF,2=GM,3=WM'"


def parse_label_names(text: str) -> dict[int, str]:
    """Parse ``"1=CSF,2=GM,3=WM"`` into ``{1: "CSF", 2: "GM", 3: "WM"}``.

    Whitespace around items, values and names is ignored. ``0=background`` may be given;
    reports skip label 0 anyway.

    Args:
        text: Comma-separated ``VALUE=NAME`` items; values are distinct non-negative ints,
            names distinct and non-empty.

    Returns:
        Label value -> tissue name, in the order given.

    Raises:
        TypeError: if ``text`` is not a string.
        ValueError: naming the bad item if an item is malformed, a value is negative or a
            value or name repeats.

    Example:
        >>> parse_label_names("1=CSF, 2=GM, 3=WM")
        {1: 'CSF', 2: 'GM', 3: 'WM'}
        >>> parse_label_names("0 = background,1=grey matter")
        {0: 'background', 1: 'grey matter'}
    """
    if not isinstance(text, str):
        raise TypeError(f"label names must be a string, got {type(text).__name__}; {_FORMAT_HINT}")
    if not text.strip():
        raise ValueError(f"label names must not be empty, got {text!r}; {_FORMAT_HINT}")
    names: dict[int, str] = {}
    for item in text.split(","):
        match = _ITEM.match(item)
        if match is None:
            raise ValueError(
                f"label names item must be VALUE=NAME, got {item.strip()!r} in {text!r}; "
                f"{_FORMAT_HINT}"
            )
        value, name = int(match.group(1)), match.group(2)
        if value < 0:
            raise ValueError(
                f"label value must be >= 0, got {value} in item {item.strip()!r} of {text!r}"
            )
        if value in names:
            raise ValueError(
                f"label values must be distinct, got {value} twice (item {item.strip()!r} "
                f"of {text!r})"
            )
        if name in names.values():
            raise ValueError(
                f"label names must be distinct, got {name!r} twice (item {item.strip()!r} "
                f"of {text!r})"
            )
        names[value] = name
    return names


def check_label_names(label_names: object) -> dict[int, str]:
    if not isinstance(label_names, Mapping):
        raise TypeError(
            f"label_names must be a dict {{label value: name}}, got {type(label_names).__name__}; "
            "build it with parse_label_names('1=CSF,2=GM,3=WM')"
        )
    out = {}
    for value, name in label_names.items():
        if (
            isinstance(value, (bool, np.bool_))
            or not isinstance(value, (int, np.integer))
            or not 0 <= value < MAX_NUM_CLASSES
        ):
            raise ValueError(
                f"label_names keys must be int label values in [0, {MAX_NUM_CLASSES}), "
                f"got {value!r}"
            )
        if not isinstance(name, str) or not name.strip():
            raise ValueError(
                f"label_names values must be non-empty strings, got {name!r} for {value}"
            )
        out[int(value)] = name
    if not any(value != 0 for value in out):
        raise ValueError(
            f"label_names must name at least one tissue label other than 0 (background), "
            f"got {label_names!r}"
        )
    return out


def _unknown_label_error(name: str, value: int, known: dict[int, str]) -> ValueError:
    listing = ", ".join(f"{k}={v}" for k, v in sorted(known.items()))
    return ValueError(
        f"{name} label values must be named in label_names ({listing}), got unknown label value "
        f"{value}; add it to label_names, e.g. '{value}=NAME'"
    )


def _check_known_values(
    arr: np.ndarray, name: str, known: dict[int, str], num_classes: int
) -> None:
    """Raise if ``arr`` holds a value >= num_classes (the smallest such value is named)."""
    if arr.size and arr.max() >= num_classes:
        value = int(arr[arr >= num_classes].min())
        raise _unknown_label_error(name, value, known)


def evaluate_case(
    pred: LabelArray,
    target: LabelArray,
    *,
    label_names: dict[int, str],
    spacing_mm: Sequence[float],
    case: str = "case",
    distances: bool = True,
    tolerance_mm: float = 2.0,
) -> tuple[pd.DataFrame, dict]:
    """Evaluate one segmentation: one row per named tissue plus case-level values.

    Overlap metrics come from one confusion matrix over label values 0..max(label_names);
    HD95 / ASSD / HD (mm) and the BF score follow :mod:`medseg.metrics`, with NaN for a
    tissue empty in pred or target. Case-level accuracy, mean IoU, frequency-weighted IoU and
    mean class accuracy include background (0), as in the FCN paper; the weighted Dice covers
    the tissue labels only.

    Args:
        pred: Predicted labels, integer ``(Z, Y, X)`` (normally uint8).
        target: Reference labels, same shape as ``pred``.
        label_names: Label value -> tissue name; label 0 is background and gets no row.
            Every value in pred or target must be 0 or a key here.
        spacing_mm: Voxel spacing ``(z, y, x)`` in mm.
        case: Case identifier written in the ``case`` column.
        distances: Compute HD95 / ASSD / HD / BF (the slow part); NaN when False.
        tolerance_mm: BF score boundary tolerance in mm.

    Returns:
        ``(rows, case_values)``. ``rows`` has the columns :data:`ROW_COLUMNS`, one row per
        tissue label in ascending order: float64 metrics, ``volume_ml`` / ``target_volume_ml``
        the predicted / reference tissue volumes in mL (voxels * prod(spacing_mm) / 1000) and
        int ``n_pred`` / ``n_target`` voxel counts. ``case_values`` holds ``case``,
        ``accuracy``, ``mean_iou``, ``fw_iou``, ``mean_class_accuracy``, ``weighted_dice``,
        ``confusion`` (nested list, ``confusion[t][p]``, rows = target) and
        ``confusion_labels`` (the label value of each row/column).

    Raises:
        TypeError: if an array is not an integer ndarray or ``label_names`` is not a dict.
        ValueError: if pred or target holds a label value not in ``label_names`` ("unknown
            label value"), a negative value, the shapes differ, an array is not 3D, or
            ``label_names`` / ``spacing_mm`` / ``tolerance_mm`` are invalid.

    Example:
        >>> target = (np.arange(8).reshape(1, 2, 4) % 4 == 0).astype(np.uint8)  # 2 voxels
        >>> rows, _ = evaluate_case(target, target, label_names={1: "GM"}, spacing_mm=(1, 2, 5))
        >>> rows[["tissue", "dice", "hd95_mm", "volume_ml", "n_target"]].to_dict("records")
        [{'tissue': 'GM', 'dice': 1.0, 'hd95_mm': 0.0, 'volume_ml': 0.02, 'n_target': 2}]
    """
    names = check_label_names(label_names)
    p, t, spacing = check_label_maps(pred, target, spacing_mm)
    known = {0: names.get(0, "background"), **names}
    num_classes = max(known) + 1
    _check_known_values(p, "pred", known, num_classes)
    _check_known_values(t, "target", known, num_classes)
    cm = confusion_matrix(p, t, num_classes=num_classes)  # also rejects negative values
    for value in range(num_classes):
        if value not in known:
            if cm[:, value].any():
                raise _unknown_label_error("pred", value, known)
            if cm[value].any():
                raise _unknown_label_error("target", value, known)
    tissues = sorted(value for value in names if value != 0)
    metrics = overlap_metrics(cm)
    idx = np.asarray(tissues)
    voxel_ml = math.prod(spacing) / 1000.0
    n_pred = cm.sum(axis=0)[idx]
    n_target = cm.sum(axis=1)[idx]
    if distances:
        dist = surface_distances(p, t, classes=tissues, spacing_mm=spacing, percentile=95.0)
        bf = boundary_f1(p, t, classes=tissues, spacing_mm=spacing, tolerance_mm=tolerance_mm)
    else:
        nan = np.full(len(tissues), np.nan)
        dist = {"hd95_mm": nan, "assd_mm": nan, "hd_mm": nan}
        bf = nan
    rows = pd.DataFrame(
        {
            "case": [str(case)] * len(tissues),
            "tissue": [names[k] for k in tissues],
            "label": np.asarray(tissues, dtype=np.int64),
            "dice": metrics.dice[idx],
            "iou": metrics.iou[idx],
            "precision": metrics.precision[idx],
            "recall": metrics.recall[idx],
            "specificity": metrics.specificity[idx],
            "hd95_mm": dist["hd95_mm"],
            "assd_mm": dist["assd_mm"],
            "hd_mm": dist["hd_mm"],
            "bf_score": bf,
            "volume_ml": n_pred * voxel_ml,
            "target_volume_ml": n_target * voxel_ml,
            "n_pred": n_pred.astype(np.int64),
            "n_target": n_target.astype(np.int64),
        },
        columns=list(ROW_COLUMNS),
    )
    case_values = {
        "case": str(case),
        "accuracy": metrics.accuracy,
        "mean_iou": metrics.mean_iou,
        "fw_iou": metrics.fw_iou,
        "mean_class_accuracy": metrics.mean_class_accuracy,
        "weighted_dice": weighted_dice(cm, classes=tissues),
        "confusion": cm.tolist(),
        "confusion_labels": list(range(num_classes)),
    }
    return rows, case_values


def _check_rows(
    rows: object, required: Sequence[str], *, source: str = "evaluate_case"
) -> pd.DataFrame:
    """``rows`` as a DataFrame with the ``required`` columns, made by ``source``."""
    if not isinstance(rows, pd.DataFrame):
        raise TypeError(
            f"rows must be a pandas DataFrame of {source} rows, got {type(rows).__name__}"
        )
    missing = [c for c in required if c not in rows.columns]
    if missing:
        raise ValueError(
            f"rows must have the columns {list(required)}, got {list(rows.columns)} "
            f"(missing {missing}); build rows with {source}"
        )
    return rows


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-tissue mean and standard deviation over cases, skipping and counting NaN.

    Args:
        rows: Per-(case, tissue) rows, e.g. ``pd.concat`` of :func:`evaluate_case` outputs;
            needs ``tissue`` and ``label``, and uses whichever of :data:`METRIC_COLUMNS` it has.

    Returns:
        One row per tissue, ordered by label: ``tissue``, ``label``, ``n_cases`` (rows for that
        tissue) and, per metric ``m``, ``m_mean`` and ``m_std`` over the non-NaN values (sample
        std, ddof=1: NaN with fewer than 2 values) and ``m_n_nan`` (int count of NaN values).

    Raises:
        TypeError: if ``rows`` is not a DataFrame.
        ValueError: if ``tissue`` or ``label`` is missing.

    Example:
        >>> rows = pd.DataFrame({"tissue": ["GM"] * 3, "label": 2, "dice": [0.8, 0.6, np.nan]})
        >>> s = summarize(rows)
        >>> s[["tissue", "n_cases", "dice_mean", "dice_n_nan"]].round(3).to_dict("records")
        [{'tissue': 'GM', 'n_cases': 3, 'dice_mean': 0.7, 'dice_n_nan': 1}]
    """
    rows = _check_rows(rows, ("tissue", "label"))
    metrics = [c for c in METRIC_COLUMNS if c in rows.columns]
    records = []
    for (label, tissue), group in rows.groupby(["label", "tissue"], sort=True):
        record: dict[str, object] = {"tissue": tissue, "label": int(label), "n_cases": len(group)}
        for m in metrics:
            values = group[m].astype(np.float64)
            record[f"{m}_mean"] = float(values.mean(skipna=True))
            record[f"{m}_std"] = float(values.std(skipna=True, ddof=1))
            record[f"{m}_n_nan"] = int(values.isna().sum())
        records.append(record)
    columns = ["tissue", "label", "n_cases"] + [
        f"{m}_{stat}" for m in metrics for stat in ("mean", "std", "n_nan")
    ]
    return pd.DataFrame.from_records(records, columns=columns)


def _cases_frame(cases: Sequence[Mapping]) -> pd.DataFrame:
    if not isinstance(cases, Sequence) or not all(isinstance(c, Mapping) for c in cases):
        raise TypeError(
            f"cases must be a list of dicts from evaluate_case, got {type(cases).__name__}"
        )
    missing = sorted({c for case in cases for c in CASE_COLUMNS if c not in case})
    if missing:
        raise ValueError(
            f"cases must be dicts with the keys {list(CASE_COLUMNS)}, got dicts missing "
            f"{missing}; build them with evaluate_case"
        )
    extra = [k for k in ("confusion", "confusion_labels") if any(k in case for case in cases)]
    records = []
    for case in cases:
        record = {c: case[c] for c in CASE_COLUMNS}
        for key in extra:  # nested lists as JSON text, one CSV cell each
            record[key] = json.dumps(case[key]) if key in case else ""
        records.append(record)
    return pd.DataFrame.from_records(records, columns=[*CASE_COLUMNS, *extra])


def _summary_markdown(summary: pd.DataFrame) -> str:
    metrics = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    table = []
    for _, r in summary.iterrows():
        cells = [r["tissue"], r["n_cases"]]
        cells += [
            f"{r[f'{m}_mean']:.4f} ± {r[f'{m}_std']:.4f} ({r[f'{m}_n_nan']})" for m in metrics
        ]
        table.append(cells)
    return tabulate(table, headers=["tissue", "n_cases", *metrics], tablefmt="pipe")


def _check_report_targets(targets: Sequence[Path], *, overwrite: bool) -> None:
    """Raise before anything is written if a target exists (all named) or a folder is missing."""
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"report outputs must not exist, got existing {existing}; "
            "pass --overwrite (overwrite=True) to replace them"
        )
    for target in targets:
        check_output_path(target, overwrite=overwrite)  # the folder must exist


def _report_path(path: PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"report path must end in .csv, got {str(path)!r}; e.g. 'report.csv'")
    return path


def write_report(
    rows: pd.DataFrame, cases: list[dict], path: PathLike, *, overwrite: bool = False
) -> list[Path]:
    """Write the per-tissue CSV, a Markdown report and a case-level CSV, all or nothing.

    Files: ``path`` (CSV of ``rows``), ``path`` with suffix ``.md`` (per-case table, case-level
    table and per-tissue summary as "mean ± std (n_nan)") and ``<stem>_cases.csv`` (case-level
    values; the confusion matrix as a JSON nested list). Every target is checked before any
    is written; each is written to a temporary file by :func:`medseg.io.atomic_output` and
    the three are renamed into place only once all have been written.

    Args:
        rows: Per-(case, tissue) rows with the columns :data:`ROW_COLUMNS`.
        cases: Case-level dicts from :func:`evaluate_case`, one per case.
        path: Destination of the rows CSV; must end in ``.csv``; its folder must exist.
        overwrite: Replace existing files instead of raising.

    Returns:
        The three paths written: rows CSV, Markdown, cases CSV.

    Raises:
        FileExistsError: if any target exists and ``overwrite`` is False (all are named).
        FileNotFoundError: if the destination folder does not exist.
        TypeError / ValueError: if ``rows`` or ``cases`` lack the expected columns or keys, or
            ``path`` does not end in ``.csv``.

    Example:
        >>> import tempfile
        >>> x = np.ones((1, 2, 3), dtype=np.uint8)
        >>> rows, case = evaluate_case(x, x, label_names={1: "WM"}, spacing_mm=(1, 1, 1))
        >>> out = Path(tempfile.mkdtemp()) / "report.csv"
        >>> [p.name for p in write_report(rows, [case], out)]
        ['report.csv', 'report.md', 'report_cases.csv']
    """
    rows = _check_rows(rows, ROW_COLUMNS)
    case_frame = _cases_frame(cases)
    path = _report_path(path)
    targets = [path, path.with_suffix(".md"), path.with_name(f"{path.stem}_cases.csv")]
    _check_report_targets(targets, overwrite=overwrite)

    summary = summarize(rows)
    case_table = case_frame[list(CASE_COLUMNS)]  # the confusion matrices stay in the CSV
    markdown = "\n".join(
        [
            "# Segmentation report",
            "",
            "## Per case and tissue",
            "",
            tabulate(rows, headers="keys", tablefmt="pipe", showindex=False, floatfmt=".4f"),
            "",
            "## Per case",
            "",
            tabulate(case_table, headers="keys", tablefmt="pipe", showindex=False, floatfmt=".4f"),
            "",
            "## Summary over cases: mean ± std (number of NaN cases, skipped in the mean)",
            "",
            _summary_markdown(summary),
            "",
        ]
    )
    with contextlib.ExitStack() as stack:  # renames happen only when every write succeeded
        tmp_rows, tmp_md, tmp_cases = (
            stack.enter_context(atomic_output(t, overwrite=overwrite)) for t in targets
        )
        rows.to_csv(tmp_rows, index=False)
        tmp_md.write_text(markdown, encoding="utf-8")
        case_frame.to_csv(tmp_cases, index=False)
    return targets


def format_table(rows: pd.DataFrame) -> str:
    """A compact plain-text table of the main per-tissue metrics, for printing.

    Args:
        rows: Per-(case, tissue) rows from :func:`evaluate_case` (needs ``case``, ``tissue``
            and ``dice``; other metric columns are shown when present).

    Returns:
        The table as one string (no trailing newline); NaN shows as ``nan``.

    Raises:
        TypeError: if ``rows`` is not a DataFrame.
        ValueError: if ``case``, ``tissue`` or ``dice`` is missing.

    Example:
        >>> rows = pd.DataFrame({"case": ["c1"], "tissue": ["GM"], "dice": [0.81234]})
        >>> print(format_table(rows))
        case    tissue      dice
        ------  --------  ------
        c1      GM         0.812
    """
    rows = _check_rows(rows, ("case", "tissue", "dice"))
    shown = ["case", "tissue"] + [
        c
        for c in ("dice", "iou", "hd95_mm", "assd_mm", "bf_score", "volume_ml", "target_volume_ml")
        if c in rows.columns
    ]
    return tabulate(rows[shown], headers="keys", tablefmt="simple", showindex=False, floatfmt=".3f")


# --------------------------------------------------------------------------------------
# Object (instance) reports: microscopy nuclei and cells

INSTANCE_COLUMNS = (
    "case",
    "num_pred",
    "num_target",
    "pixel_iou",
    "dice",
    "bf_score",
    "pixel_error",
    "rand_error",
    "rand_precision",
    "rand_recall",
    "v_rand",
    "v_info",
    "ap",
    "ap_50",
    "f1_at_05",
    "split_rate",
    "touching_pairs",
    "touching_split",
)
"""Keys of :func:`evaluate_instances`' row (one row per case), in order."""

INSTANCE_METRIC_COLUMNS = INSTANCE_COLUMNS[3:16]
"""The float metrics that :func:`summarize_instances` averages (pixel_iou ... split_rate)."""

INSTANCE_BF_TOLERANCE_PX = 2.0
"""Boundary tolerance of the object report's ``bf_score``, in pixels (2, like IBSR's 2 mm)."""

INSTANCE_COUNT_COLUMNS = ("num_pred", "num_target", "touching_pairs", "touching_split")
"""The int counts that :func:`summarize_instances` sums over cases."""


def evaluate_instances(
    pred_instances: LabelArray, target_instances: LabelArray, *, case: str = "case"
) -> dict[str, object]:
    """Evaluate one object segmentation: pixel, Rand, DSB2018 and touching-pair metrics.

    Definitions are in :mod:`medseg.metrics`: ``pixel_iou`` is the foreground IoU of the U-Net
    cell tracking table (:func:`~medseg.metrics.foreground_iou`), ``dice`` the foreground Dice
    ``2 |P & T| / (|P| + |T|)``, ``bf_score`` the boundary F1 of the binary foregrounds within
    :data:`INSTANCE_BF_TOLERANCE_PX` pixels (:func:`~medseg.metrics.boundary_f1` with unit
    spacing; NaN if either foreground is empty), ``pixel_error`` and the
    foreground-restricted ``rand_error`` (with its ``rand_precision`` / ``rand_recall``)
    follow ISBI 2012, ``v_rand`` / ``v_info`` are the challenge's final scores after border
    thinning (:func:`~medseg.metrics.isbi_scores`; 1 = perfect), ``ap`` is the DSB2018
    mean over IoU thresholds 0.5, 0.55, ..., 0.95 of TP / (TP + FP + FN), ``ap_50`` that
    ratio at IoU > 0.5 and ``f1_at_05`` the F1 there; ``split_rate`` is
    ``touching_split / touching_pairs`` over face-adjacent target pairs
    (:func:`~medseg.metrics.touching_split_rate`).
    Empty policy: a ratio with a zero denominator is NaN (two empty foregrounds, no objects in
    either map, no touching pair).

    Args:
        pred_instances: Predicted object ids, integer ``(Z, Y, X)`` (or ``(Y, X)``), >= 0,
            0 = background; ids need not be contiguous.
        target_instances: Reference object ids, same shape and conventions.
        case: Case identifier written in the ``case`` key.

    Returns:
        One row, keys :data:`INSTANCE_COLUMNS`: ``case`` (str), ``num_pred`` / ``num_target``
        (int object counts), the float metrics in [0, 1] or NaN, and ``touching_pairs`` /
        ``touching_split`` (int).

    Raises:
        TypeError: if an input is not an integer ndarray.
        ValueError: if an input is not 2D/3D, holds negative ids, or the shapes differ.

    Example:
        >>> target = np.array([[[1, 1, 2, 2, 0, 3]]])  # 1 and 2 touch
        >>> pred = np.array([[[5, 5, 5, 5, 0, 9]]])  # 1 and 2 merged; IoU 0.5 is no match
        >>> row = evaluate_instances(pred, target, case="c1")
        >>> row["num_pred"], row["num_target"], row["ap"], row["f1_at_05"], row["split_rate"]
        (2, 3, 0.25, 0.4, 0.0)
    """
    pixel_iou = foreground_iou(pred_instances, target_instances)  # validates both arrays
    pred_fg = np.asarray(pred_instances) != 0
    target_fg = np.asarray(target_instances) != 0
    fg_sum = int(np.count_nonzero(pred_fg)) + int(np.count_nonzero(target_fg))
    dice = 2.0 * int(np.count_nonzero(pred_fg & target_fg)) / fg_sum if fg_sum else math.nan
    rand = rand_error(pred_instances, target_instances, foreground_restricted=True)
    isbi = isbi_scores(pred_instances, target_instances)
    bf = boundary_f1(
        pred_fg.reshape((-1, *pred_fg.shape[-2:])),  # (Y, X) -> (1, Y, X)
        target_fg.reshape((-1, *target_fg.shape[-2:])),
        classes=[1],
        spacing_mm=(1.0, 1.0, 1.0),
        tolerance_mm=INSTANCE_BF_TOLERANCE_PX,
    )[0]
    scores = average_precision(pred_instances, target_instances)
    precision = np.asarray(scores["precision"], dtype=np.float64)
    split = touching_split_rate(pred_instances, target_instances)
    return {
        "case": str(case),
        "num_pred": int(cast(int, scores["num_pred"])),
        "num_target": int(cast(int, scores["num_target"])),
        "pixel_iou": float(pixel_iou),
        "dice": float(dice),
        "bf_score": float(bf),
        "pixel_error": float(pixel_error(pred_instances, target_instances)),
        "rand_error": float(rand["rand_error"]),
        "rand_precision": float(rand["rand_precision"]),
        "rand_recall": float(rand["rand_recall"]),
        "v_rand": float(isbi["v_rand"]),
        "v_info": float(isbi["v_info"]),
        "ap": float(cast(float, scores["ap"])),
        "ap_50": float(precision[0]),  # the default thresholds start at 0.5
        "f1_at_05": float(cast(float, scores["f1_at_05"])),
        "split_rate": float(split["split_rate"]),
        "touching_pairs": int(split["num_pairs"]),
        "touching_split": int(split["num_split"]),
    }


def summarize_instances(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of the object metrics over cases (NaN skipped and counted), pooled counts.

    Args:
        rows: One row per case with the columns :data:`INSTANCE_COLUMNS`, e.g.
            ``pd.DataFrame([evaluate_instances(...), ...])``.

    Returns:
        A one-row DataFrame: ``n_cases``; per metric ``m`` of :data:`INSTANCE_METRIC_COLUMNS`
        ``m_mean`` and ``m_std`` over the non-NaN cases (sample std, ddof=1) and ``m_n_nan``
        (int); the sums of :data:`INSTANCE_COUNT_COLUMNS`; and ``split_rate_pooled`` = sum of
        ``touching_split`` / sum of ``touching_pairs`` over all cases (NaN without pairs), which
        weights every touching pair equally where ``split_rate_mean`` weights every case.

    Raises:
        TypeError: if ``rows`` is not a DataFrame.
        ValueError: if a column of :data:`INSTANCE_COLUMNS` is missing.

    Example:
        >>> rows = pd.DataFrame({"case": ["a", "b", "c"], "num_pred": 1, "num_target": 1,
        ...     "ap": [0.2, 0.6, np.nan], "split_rate": [0.0, 0.75, np.nan],
        ...     "touching_pairs": [1, 4, 0], "touching_split": [0, 3, 0]})
        >>> rows = rows.reindex(columns=INSTANCE_COLUMNS)
        >>> s = summarize_instances(rows).to_dict("records")[0]
        >>> round(s["ap_mean"], 3), s["ap_n_nan"], s["split_rate_mean"], s["split_rate_pooled"]
        (0.4, 1, 0.375, 0.6)
    """
    rows = _check_rows(rows, INSTANCE_COLUMNS, source="evaluate_instances")
    record: dict[str, object] = {"n_cases": len(rows)}
    for m in INSTANCE_METRIC_COLUMNS:
        values = rows[m].astype(np.float64)
        record[f"{m}_mean"] = float(values.mean(skipna=True))
        record[f"{m}_std"] = float(values.std(skipna=True, ddof=1))
        record[f"{m}_n_nan"] = int(values.isna().sum())
    for c in INSTANCE_COUNT_COLUMNS:
        record[c] = int(rows[c].fillna(0).astype(np.int64).sum())
    pairs = cast(int, record["touching_pairs"])
    record["split_rate_pooled"] = cast(int, record["touching_split"]) / pairs if pairs else math.nan
    return pd.DataFrame.from_records([record])


def instance_report_paths(path: PathLike) -> list[Path]:
    """The files :func:`write_instance_report` writes for ``path``: the CSV and a ``.md``.

    Example:
        >>> [p.name for p in instance_report_paths("out/nuclei.csv")]
        ['nuclei.csv', 'nuclei.md']
    """
    path = _report_path(path)
    return [path, path.with_suffix(".md")]


def _instance_summary_markdown(summary: pd.DataFrame) -> str:
    s = summary.to_dict("records")[0]
    table = [
        [m, f"{s[f'{m}_mean']:.4f} ± {s[f'{m}_std']:.4f} ({s[f'{m}_n_nan']})"]
        for m in INSTANCE_METRIC_COLUMNS
    ]
    lines = [tabulate(table, headers=["metric", "mean ± std (n_nan)"], tablefmt="pipe"), ""]
    lines.append(
        f"Pooled split rate over all touching pairs: {s['touching_split']} / "
        f"{s['touching_pairs']} = {s['split_rate_pooled']:.4f}. Objects: "
        f"{s['num_pred']} predicted, {s['num_target']} in the reference."
    )
    return "\n".join(lines)


def write_instance_report(
    rows: pd.DataFrame, path: PathLike, *, overwrite: bool = False
) -> list[Path]:
    """Write the per-case object metrics as CSV and a Markdown report, all or nothing.

    Files: ``path`` (CSV of ``rows``, columns :data:`INSTANCE_COLUMNS`) and ``path`` with
    suffix ``.md`` (per-case table and the :func:`summarize_instances` summary). Both targets
    are checked before either is written; each is written to a temporary file by
    :func:`medseg.io.atomic_output` and both are renamed into place only once both are written.

    Args:
        rows: One row per case from :func:`evaluate_instances`.
        path: Destination of the CSV; must end in ``.csv``; its folder must exist.
        overwrite: Replace existing files instead of raising.

    Returns:
        The two paths written: CSV, Markdown.

    Raises:
        FileExistsError: if a target exists and ``overwrite`` is False (all are named).
        FileNotFoundError: if the destination folder does not exist.
        TypeError / ValueError: if ``rows`` lacks the expected columns or ``path`` does not
            end in ``.csv``.

    Example:
        >>> import tempfile
        >>> x = np.array([[[1, 1, 0, 2]]])
        >>> rows = pd.DataFrame([evaluate_instances(x, x, case="c1")])
        >>> out = Path(tempfile.mkdtemp()) / "nuclei.csv"
        >>> [p.name for p in write_instance_report(rows, out)]
        ['nuclei.csv', 'nuclei.md']
    """
    summary = summarize_instances(rows)  # also checks rows
    targets = instance_report_paths(path)
    _check_report_targets(targets, overwrite=overwrite)
    markdown = "\n".join(
        [
            "# Object segmentation report",
            "",
            "## Per case",
            "",
            tabulate(
                rows[list(INSTANCE_COLUMNS)],
                headers="keys",
                tablefmt="pipe",
                showindex=False,
                floatfmt=".4f",
            ),
            "",
            f"## Summary over {len(rows)} cases: mean ± std (number of NaN cases, skipped in "
            "the mean)",
            "",
            _instance_summary_markdown(summary),
            "",
        ]
    )
    with contextlib.ExitStack() as stack:  # renames happen only when every write succeeded
        tmp_rows, tmp_md = (
            stack.enter_context(atomic_output(t, overwrite=overwrite)) for t in targets
        )
        rows[list(INSTANCE_COLUMNS)].to_csv(tmp_rows, index=False)
        tmp_md.write_text(markdown, encoding="utf-8")
    return targets
