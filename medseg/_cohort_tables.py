"""The cohort tables of :mod:`medseg.cohort` (pure) and their formatting.

:func:`order_cases`, :func:`case_table`, :func:`group_summary` and :func:`failed_table`
take a cases DataFrame and return a table DataFrame; the private helpers below them turn
tables into text cells, Markdown and HTML for :func:`medseg.cohort.write_cohort_report`.
:mod:`medseg.cohort` re-exports the public names; see its docstring for the columns,
the quality-control flag and the order (worst first).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from medseg.tissue_stats import SUMMARY_KEYS, TIV_KEY, _tissue_labels, tiv_keys

QC_THRESHOLD = 0.9
"""Default ``qc_threshold``: cases whose mean agreement is below it are flagged."""

STATUSES = ("ok", "failed")
"""Allowed values of the ``status`` column."""

_MISSING_GROUP = "(missing)"
_OVERALL_GROUP = "(all)"
_DASH = "\u2013"  # shown for NaN


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
        cases, label_names, qc_threshold: As :func:`case_table`.
        group_by: A column of ``cases`` whose values form the groups (missing values form
            the group "(missing)"), or None for one group "all".

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
