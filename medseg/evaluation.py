"""Evaluate label-map files: one pair, or every case of a manifest.

This module reads files (through :mod:`medseg.io`), checks that prediction and
reference share one voxel grid, computes the report and writes it atomically. The
label format (:data:`medseg.manifest.LABEL_FORMATS`) picks the report:

* ``"classes"`` (brain MRI tissues): the per-tissue report of
  :func:`medseg.report.evaluate_case` on the whole reassembled volume;
* ``"instances"`` / ``"binary"`` (microscopy nuclei and cells): the object report of
  :func:`medseg.report.evaluate_instances` (pixel IoU, Rand error, DSB2018 AP, touching-pair
  split rate). The reference objects come from :func:`medseg.manifest.read_target`; the
  prediction is read by :func:`medseg.io.read_instances` (see :func:`prediction_instances`).

A manifest run keeps going past a bad case (missing prediction, unreadable file, grid
mismatch, unknown label value) and reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from medseg._errors import one_line
from medseg.io import (
    SUPPORTED_SUFFIXES,
    Volume,
    check_output_path,
    check_same_grid,
    read_instances,
    read_label,
)
from medseg.manifest import LABEL_FORMATS, Case, load_manifest, read_target
from medseg.report import (
    INSTANCE_COLUMNS,
    evaluate_case,
    evaluate_instances,
    instance_report_paths,
    parse_label_names,
    summarize,
    summarize_instances,
    write_instance_report,
    write_report,
)
from medseg.typing import LabelArray, PathLike

T = TypeVar("T")

INSTANCES_SUFFIX = "_instances"
"""Name part of the instance-map prediction ``<case>_instances.<ext>`` written by predict."""


@dataclass
class EvaluationResult:
    """What an evaluation produced.

    Attributes:
        rows: ``"classes"``: one row per (case, tissue) (columns of
            :data:`medseg.report.ROW_COLUMNS`). Object formats: one row per case (columns of
            :data:`medseg.report.INSTANCE_COLUMNS`).
        cases: ``"classes"``: case-level values (accuracy, mean IoU, fwIoU, weighted Dice,
            confusion). Object formats: the rows as dicts, one per case.
        summary: ``"classes"``: per-tissue mean, std and NaN count over cases
            (:func:`summarize`). Object formats: the one-row
            :func:`~medseg.report.summarize_instances` (means, NaN counts, pooled split rate).
        failures: ``(case, error message)`` for every case that could not be evaluated.
        written: Report files written (empty without an output path).
        label_format: The label format evaluated, one of :data:`medseg.manifest.LABEL_FORMATS`.
    """

    rows: pd.DataFrame
    cases: list[dict]
    summary: pd.DataFrame
    failures: list[tuple[str, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    label_format: str = "classes"

    @property
    def is_objects(self) -> bool:
        """Whether this is an object (instance) report rather than a per-tissue one."""
        return self.label_format != "classes"


def report_paths(output: PathLike, *, label_format: str = "classes") -> list[Path]:
    """The files a report at ``output`` consists of.

    ``"classes"``: CSV, Markdown, case-level CSV. Object formats: CSV and Markdown.

    Example:
        >>> [p.name for p in report_paths("out/report.csv")]
        ['report.csv', 'report.md', 'report_cases.csv']
        >>> [p.name for p in report_paths("out/report.csv", label_format="instances")]
        ['report.csv', 'report.md']
    """
    output = Path(output)
    if output.suffix.lower() != ".csv":
        raise ValueError(f"--output must end in .csv, got {str(output)!r}")
    if label_format != "classes":
        return instance_report_paths(output)
    return [output, output.with_suffix(".md"), output.with_name(f"{output.stem}_cases.csv")]


def _check_label_format(label_format: object, foreground_value: object) -> None:
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {list(LABEL_FORMATS)}, got {label_format!r}")
    if label_format == "binary":
        if (
            isinstance(foreground_value, bool)
            or not isinstance(foreground_value, (int, np.integer))
            or not 1 <= foreground_value <= 65535
        ):
            raise ValueError(
                f"foreground_value must be an integer 1..65535 for label_format 'binary', got "
                f"{foreground_value!r}; e.g. 255 for ISBI 2012 labels (--foreground-value 255)"
            )
    elif foreground_value is not None:
        raise ValueError(
            f"foreground_value must be omitted unless label_format is 'binary', got "
            f"{foreground_value!r} with label_format {label_format!r}"
        )


def _check_no_label_names(labels: object, label_format: str) -> None:
    if labels is not None and label_format != "classes":
        raise ValueError(
            f"labels must be omitted for label_format {label_format!r} (object metrics use no "
            f"tissue names), got {labels!r}"
        )


def prediction_instances(pred: LabelArray) -> LabelArray:
    """The objects of a predicted map: the map itself, or its components if it is a mask.

    A prediction holding at most one non-zero value (values in ``{0, v}``, e.g. a 0/1 or
    0/255 mask such as predict's ``<case>_mask.png`` or a binary label file) is a foreground
    mask, and its objects are its 4-connected components in 2D (6-connected in 3D), as for a
    ``"binary"`` reference. Anything else is an instance map and is returned as is: every
    distinct non-zero value is one object. Pass predict's ``<case>_instances.png`` to evaluate
    split touching objects; the components of a mask merge every touching pair. (So an
    instance map with a single object is also split into its components.)

    Args:
        pred: Predicted ids or mask, integer ``(Z, Y, X)``, >= 0, 0 = background.

    Returns:
        Object ids, int32 ``(Z, Y, X)`` (``pred`` unchanged, or its components 1..N in
        raster order).

    Example:
        >>> mask = np.array([[[255, 255, 0, 255]]], dtype=np.int32)
        >>> prediction_instances(mask).tolist()
        [[[1, 1, 0, 2]]]
        >>> prediction_instances(np.array([[[3, 5, 0, 5]]], dtype=np.int32)).tolist()
        [[[3, 5, 0, 5]]]
    """
    from medseg.instances import instances_from_mask

    values = np.unique(pred)
    if np.count_nonzero(values) <= 1:
        return instances_from_mask(pred != 0)
    return pred


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


def _evaluate_objects(
    pred_path: Path,
    label_path: Path,
    *,
    case: str,
    label_format: str,
    foreground_value: int | None,
) -> dict:
    target = read_target(label_path, label_format=label_format, foreground_value=foreground_value)
    pred = read_instances(pred_path)
    # (target, pred): the message says the prediction must be on the label's grid
    check_same_grid(Volume(target.classes, target.geometry, label_path), pred)
    assert target.instances is not None  # object formats always give instances
    try:
        return evaluate_instances(prediction_instances(pred.array), target.instances, case=case)
    except ValueError as err:  # name the files: the core only knows the array names
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


def _finish_objects(
    cases: list[dict],
    failures: list[tuple[str, str]],
    output: PathLike | None,
    overwrite: bool,
    label_format: str,
) -> EvaluationResult:
    frame = pd.DataFrame.from_records(cases, columns=list(INSTANCE_COLUMNS))
    summary = summarize_instances(frame) if cases else pd.DataFrame()
    result = EvaluationResult(frame, cases, summary, failures, label_format=label_format)
    if output is not None and cases:
        result.written = write_instance_report(frame, output, overwrite=overwrite)
    return result


def _check_outputs(output: PathLike | None, overwrite: bool, label_format: str = "classes") -> None:
    """Fail before any work if a report file exists (nothing is computed or written)."""
    if output is None:
        return
    for path in report_paths(output, label_format=label_format):
        check_output_path(path, overwrite=overwrite)


def evaluate_files(
    pred: PathLike,
    label: PathLike,
    *,
    labels: str | Mapping[int, str] | None = None,
    case: str | None = None,
    distances: bool = True,
    tolerance_mm: float = 2.0,
    label_format: str = "classes",
    foreground_value: int | None = None,
    output: PathLike | None = None,
    overwrite: bool = False,
) -> EvaluationResult:
    """Evaluate one predicted label map against its reference.

    With ``label_format="classes"`` this is the per-tissue report; with ``"instances"`` or
    ``"binary"`` the object report (one row, :data:`medseg.report.INSTANCE_COLUMNS`). For
    object formats the prediction is read as an instance map and a 0/v mask is split into its
    connected components (:func:`prediction_instances`): pass predict's
    ``<case>_instances.png`` to score split touching objects, or a mask (``_mask.png``, a
    binary label file) to score its components.

    Args:
        pred: Predicted label map, instance map or mask file.
        label: Reference label map file; must share the prediction's grid (shape, spacing,
            affine).
        labels: Tissue names, as ``"1=CSF,2=GM,3=WM"`` or a dict; default ``label_<v>``
            for every non-zero value present. ``"classes"`` only.
        case: Case name in the report (default: the prediction's file name, without a
            ``_instances`` ending for object formats).
        distances: Also compute HD95, ASSD and boundary F1 (``"classes"`` only).
        tolerance_mm: Boundary F1 tolerance in mm (``"classes"`` only).
        label_format: How ``label`` encodes the truth: ``"classes"`` (class indices),
            ``"instances"`` (0 = background, one id per object) or ``"binary"`` (objects are
            the connected components of ``foreground_value``).
        foreground_value: For ``"binary"`` only: the label file's foreground value (e.g. 255
            for ISBI 2012, where 0 is membrane).
        output: Report CSV path (a ``.md``, and for ``"classes"`` a ``_cases.csv``, are
            written beside it).
        overwrite: Replace existing report files.

    Raises:
        FileNotFoundError: a file is missing. FileExistsError: a report file exists.
        ValueError: unreadable file, grid mismatch, unknown label value, a bad
            ``label_format`` / ``foreground_value``, or ``labels`` with an object format.
    """
    _check_label_format(label_format, foreground_value)
    _check_no_label_names(labels, label_format)
    _check_outputs(output, overwrite, label_format)
    pred, label = Path(pred), Path(label)
    name = case or pred.name.split(".")[0]
    if label_format != "classes":
        row = _evaluate_objects(
            pred,
            label,
            case=case or name.removesuffix(INSTANCES_SUFFIX),
            label_format=label_format,
            foreground_value=foreground_value,
        )
        return _finish_objects([row], [], output, overwrite, label_format)
    rows, values = _evaluate_pair(
        pred, label, case=name, labels=labels, distances=distances, tolerance_mm=tolerance_mm
    )
    return _finish([rows], [values], [], output, overwrite)


def prediction_names(case: str, *, label_format: str = "classes", image: PathLike | None = None):
    """The file stems that :func:`find_prediction` tries, in order.

    ``"classes"``: ``<case>``, then ``<case>_seg`` (what ``medseg predict DIR -o OUT``
    writes); object formats: ``<case>_instances`` (the instance map that predict writes
    beside ``_mask`` and ``_overlay``), then ``<case>``. With the case's ``image``, the
    same names built from the image file's stem follow (predict names its outputs after
    the input file, which need not be the case id).

    Example:
        >>> prediction_names("IBSR_01", image="data/IBSR_01_t1.nii.gz")
        ['IBSR_01', 'IBSR_01_seg', 'IBSR_01_t1', 'IBSR_01_t1_seg']
    """
    stems = [case]
    if image is not None:
        name = Path(image).name
        suffix = max(
            (s for s in SUPPORTED_SUFFIXES if name.lower().endswith(s)), key=len, default=""
        )
        stem = name[: len(name) - len(suffix)]
        if stem != case:
            stems.append(stem)
    if label_format == "classes":
        return [n for s in stems for n in (s, f"{s}_seg")]
    return [n for s in stems for n in (f"{s}{INSTANCES_SUFFIX}", s)]


def find_prediction(
    pred_dir: PathLike,
    case: str,
    *,
    label_format: str = "classes",
    image: PathLike | None = None,
) -> Path:
    """The prediction file of ``case`` in ``pred_dir``: the first of
    :func:`prediction_names` that exists with a supported suffix.

    Raises:
        FileNotFoundError: if no such file or folder exists.
        ValueError: if several exist under the name that is looked for.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"--pred-dir {str(pred_dir)!r} must be a folder, got nothing there")
    stems = prediction_names(case, label_format=label_format, image=image)
    found: list[Path] = []
    for stem in stems:  # the first name with a file wins
        found = [
            pred_dir / f"{stem}{s}"
            for s in SUPPORTED_SUFFIXES
            if (pred_dir / f"{stem}{s}").exists()
        ]
        if found:
            break
    if not found:
        names = " or ".join(f"{stem}<suffix>" for stem in stems)
        raise FileNotFoundError(
            f"prediction for case {case!r} must exist as {names} in {str(pred_dir)!r} "
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
    label_format: str | None = None,
    foreground_value: int | None = None,
    output: PathLike | None = None,
    overwrite: bool = False,
) -> EvaluationResult:
    """Evaluate the predictions of every labelled case of a manifest.

    The label format comes from the manifest's sidecar (``label_format``, default
    ``"classes"``): per-tissue metrics for ``"classes"``, object metrics otherwise (see
    :func:`evaluate_files`). A case that fails (missing prediction, unreadable file, grid
    mismatch, unknown label value) is recorded in ``failures`` with its error; the other
    cases still run.

    Args:
        manifest: Manifest CSV (``data_manifests/``); label names and format come from its
            sidecar unless ``labels`` is given.
        pred_dir: Folder with one prediction per case, named ``<case><suffix>`` (object
            formats: ``<case>_instances<suffix>`` first, see :func:`find_prediction`).
        data_root: Root of the manifest's relative paths (default ``$MEDSEG_DATA_ROOT``).
        split: Only evaluate cases of this split (default: all labelled cases).
        label_format, foreground_value: None (the sidecar decides) or the sidecar's own
            values; anything else is an error.
        labels, distances, tolerance_mm, output, overwrite: As :func:`evaluate_files`.
    """
    loaded = load_manifest(manifest, data_root=data_root)
    fmt, fg = loaded.label_format, loaded.foreground_value
    sidecar = str(loaded.labels_path)
    if label_format is not None and label_format != fmt:
        raise ValueError(
            f"label_format must be the manifest's {fmt!r} (from {sidecar!r}) or omitted, got "
            f"{label_format!r}; drop --label-format in manifest mode"
        )
    if foreground_value is not None and foreground_value != fg:
        raise ValueError(
            f"foreground_value must be the manifest's {fg!r} (from {sidecar!r}) or omitted, got "
            f"{foreground_value!r}; drop --foreground-value in manifest mode"
        )
    _check_no_label_names(labels, fmt)
    _check_outputs(output, overwrite, fmt)
    cases = loaded.split(split) if split is not None else loaded.cases
    cases = tuple(c for c in cases if c.label is not None)
    if not cases:
        raise ValueError(
            f"manifest {str(manifest)!r} must have labelled cases"
            f"{f' in split {split!r}' if split else ''}, got none"
        )
    if fmt != "classes":
        return _evaluate_manifest_objects(cases, pred_dir, fmt, fg, output, overwrite)
    names = labels if labels is not None else loaded.label_names

    def score(c: Case) -> tuple[Any, Any]:
        assert c.label is not None  # unlabelled cases were filtered out above
        pred_path = find_prediction(pred_dir, c.case, image=c.image)
        return _evaluate_pair(
            pred_path, c.label, case=c.case, labels=names, distances=distances,
            tolerance_mm=tolerance_mm,
        )  # fmt: skip

    scored, failures = _each_case(cases, score)
    rows, values = [r for r, _ in scored], [v for _, v in scored]
    return _finish(rows, values, failures, output, overwrite)


def _each_case(cases: Sequence[Case], score: Callable[[Case], T]) -> tuple[list[T], list]:
    """``score(case)`` for every case, in order; a case that raises is left out and listed
    as ``(case id, one-line message)`` (ARCHITECTURE.md section 9), the others go on."""
    done: list[T] = []
    failures: list[tuple[str, str]] = []
    for c in cases:
        try:
            done.append(score(c))
        except Exception as err:  # one case's failure, whatever it is, stops only it
            failures.append((c.case, one_line(err)))
    return done, failures


def _evaluate_manifest_objects(
    cases: Sequence[Case],
    pred_dir: PathLike,
    label_format: str,
    foreground_value: int | None,
    output: PathLike | None,
    overwrite: bool,
) -> EvaluationResult:

    def score(c: Case) -> dict[str, Any]:
        assert c.label is not None  # unlabelled cases were filtered out by the caller
        pred_path = find_prediction(pred_dir, c.case, label_format=label_format, image=c.image)
        return _evaluate_objects(
            pred_path, c.label, case=c.case, label_format=label_format,
            foreground_value=foreground_value,
        )  # fmt: skip

    rows, failures = _each_case(cases, score)
    return _finish_objects(rows, failures, output, overwrite, label_format)
