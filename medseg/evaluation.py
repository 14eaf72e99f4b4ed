"""Evaluate label-map files: one pair, or every case of a manifest.

This module reads files (through :mod:`medseg.io`), checks that prediction and
reference share one voxel grid, computes the per-tissue report of
:func:`medseg.report.evaluate_case` on the whole reassembled volume, and writes the
report atomically. A manifest run keeps going past a bad case (missing prediction,
unreadable file, grid mismatch, unknown label value) and reports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medseg.io import SUPPORTED_SUFFIXES, Volume, check_output_path, check_same_grid, read_label
from medseg.report import evaluate_case, parse_label_names, summarize, write_report
from medseg.typing import PathLike


@dataclass
class EvaluationResult:
    """What an evaluation produced.

    Attributes:
        rows: One row per (case, tissue) (columns of :data:`medseg.report.ROW_COLUMNS`).
        cases: Case-level values (accuracy, mean IoU, fwIoU, weighted Dice, confusion).
        summary: Per-tissue mean, std and NaN count over cases (:func:`summarize`).
        failures: ``(case, error message)`` for every case that could not be evaluated.
        written: Report files written (empty without an output path).
    """

    rows: pd.DataFrame
    cases: list[dict]
    summary: pd.DataFrame
    failures: list[tuple[str, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def report_paths(output: PathLike) -> list[Path]:
    """The files a report at ``output`` consists of: CSV, Markdown, case-level CSV.

    Example:
        >>> [p.name for p in report_paths("out/report.csv")]
        ['report.csv', 'report.md', 'report_cases.csv']
    """
    output = Path(output)
    if output.suffix.lower() != ".csv":
        raise ValueError(f"--output must end in .csv, got {str(output)!r}")
    return [output, output.with_suffix(".md"), output.with_name(f"{output.stem}_cases.csv")]


def _resolve_label_names(
    labels: str | Mapping[int, str] | None, volumes: list[Volume]
) -> dict[int, str]:
    if isinstance(labels, str):
        return parse_label_names(labels)
    if labels is not None:
        return dict(labels)
    # no names given: name every non-zero value present "label_<v>"
    values = sorted(set().union(*(np.unique(v.array).tolist() for v in volumes)) - {0})
    return {int(v): f"label_{int(v)}" for v in values}


def _evaluate_pair(
    pred_path: Path,
    label_path: Path,
    *,
    case: str,
    labels: str | Mapping[int, str] | None,
    distances: bool,
    tolerance_mm: float,
) -> tuple[pd.DataFrame, dict]:
    pred = read_label(pred_path)
    target = read_label(label_path)
    check_same_grid(pred, target)
    names = _resolve_label_names(labels, [pred, target])
    try:
        return evaluate_case(
            pred.array,
            target.array,
            label_names=names,
            spacing_mm=target.geometry.spacing_mm,
            case=case,
            distances=distances,
            tolerance_mm=tolerance_mm,
        )
    except ValueError as err:  # name the files: the core only knows "pred" and "target"
        raise ValueError(f"{err} (pred {str(pred_path)!r}, label {str(label_path)!r})") from err


def _finish(
    rows: list[pd.DataFrame],
    cases: list[dict],
    failures: list[tuple[str, str]],
    output: PathLike | None,
    overwrite: bool,
) -> EvaluationResult:
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    summary = summarize(frame) if rows else pd.DataFrame()
    result = EvaluationResult(frame, cases, summary, failures)
    if output is not None and rows:
        result.written = write_report(frame, cases, output, overwrite=overwrite)
    return result


def _check_outputs(output: PathLike | None, overwrite: bool) -> None:
    """Fail before any work if a report file exists (nothing is computed or written)."""
    if output is None:
        return
    for path in report_paths(output):
        check_output_path(path, overwrite=overwrite)


def evaluate_files(
    pred: PathLike,
    label: PathLike,
    *,
    labels: str | Mapping[int, str] | None = None,
    case: str | None = None,
    distances: bool = True,
    tolerance_mm: float = 2.0,
    output: PathLike | None = None,
    overwrite: bool = False,
) -> EvaluationResult:
    """Evaluate one predicted label map against its reference.

    Args:
        pred: Predicted label map file.
        label: Reference label map file; must share the prediction's grid (shape, spacing,
            affine).
        labels: Tissue names, as ``"1=CSF,2=GM,3=WM"`` or a dict; default ``label_<v>``
            for every non-zero value present.
        case: Case name in the report (default: the prediction's file name).
        distances: Also compute HD95, ASSD and boundary F1.
        tolerance_mm: Boundary F1 tolerance in mm.
        output: Report CSV path (a ``.md`` and ``_cases.csv`` are written beside it).
        overwrite: Replace existing report files.

    Raises:
        FileNotFoundError: a file is missing. FileExistsError: a report file exists.
        ValueError: unreadable file, grid mismatch, unknown label value.
    """
    _check_outputs(output, overwrite)
    pred, label = Path(pred), Path(label)
    name = case or pred.name.split(".")[0]
    rows, values = _evaluate_pair(
        pred, label, case=name, labels=labels, distances=distances, tolerance_mm=tolerance_mm
    )
    return _finish([rows], [values], [], output, overwrite)


def find_prediction(pred_dir: PathLike, case: str) -> Path:
    """The prediction file of ``case`` in ``pred_dir``: ``<case><suffix>``.

    Raises:
        FileNotFoundError: if no file or folder ``<case>.<supported suffix>`` exists.
        ValueError: if several do.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"--pred-dir {str(pred_dir)!r} must be a folder, got nothing there")
    found = [
        pred_dir / f"{case}{s}" for s in SUPPORTED_SUFFIXES if (pred_dir / f"{case}{s}").exists()
    ]
    if not found:
        raise FileNotFoundError(
            f"prediction for case {case!r} must exist as {case}<suffix> in {str(pred_dir)!r} "
            f"(suffixes {', '.join(SUPPORTED_SUFFIXES)}), got none"
        )
    if len(found) > 1:
        raise ValueError(
            f"prediction for case {case!r} must be one file, got {[p.name for p in found]}"
        )
    return found[0]


def evaluate_manifest(
    manifest: PathLike,
    pred_dir: PathLike,
    *,
    data_root: PathLike | None = None,
    split: str | None = None,
    labels: str | Mapping[int, str] | None = None,
    distances: bool = True,
    tolerance_mm: float = 2.0,
    output: PathLike | None = None,
    overwrite: bool = False,
) -> EvaluationResult:
    """Evaluate the predictions of every labelled case of a manifest.

    A case that fails (missing prediction, unreadable file, grid mismatch, unknown label
    value) is recorded in ``failures`` with its error; the other cases still run.

    Args:
        manifest: Manifest CSV (``data_manifests/``); label names come from its sidecar
            unless ``labels`` is given.
        pred_dir: Folder with one prediction per case, named ``<case><suffix>``.
        data_root: Root of the manifest's relative paths (default ``$MEDSEG_DATA_ROOT``).
        split: Only evaluate cases of this split (default: all labelled cases).
        labels, distances, tolerance_mm, output, overwrite: As :func:`evaluate_files`.
    """
    from medseg.manifest import load_manifest

    _check_outputs(output, overwrite)
    loaded = load_manifest(manifest, data_root=data_root)
    cases = loaded.split(split) if split is not None else loaded.cases
    cases = tuple(c for c in cases if c.label is not None)
    if not cases:
        raise ValueError(
            f"manifest {str(manifest)!r} must have labelled cases"
            f"{f' in split {split!r}' if split else ''}, got none"
        )
    names = labels if labels is not None else loaded.label_names
    rows, values, failures = [], [], []
    for c in cases:
        assert c.label is not None  # unlabelled cases were filtered out above
        try:
            pred_path = find_prediction(pred_dir, c.case)
            case_rows, case_values = _evaluate_pair(
                pred_path,
                c.label,
                case=c.case,
                labels=names,
                distances=distances,
                tolerance_mm=tolerance_mm,
            )
        except (ValueError, OSError) as err:
            failures.append((c.case, " ".join(str(err).split())))
            continue
        rows.append(case_rows)
        values.append(case_values)
    return _finish(rows, values, failures, output, overwrite)
