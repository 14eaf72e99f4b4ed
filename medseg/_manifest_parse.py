"""Parsing for :mod:`medseg.manifest` (which re-exports :func:`case_id_problem` and
:data:`UNSAFE_CASE`): the manifest CSV and its ``.labels.json`` sidecar, row by row, an
nnU-Net or MSD/MONAI datalist (:mod:`medseg.datalists`) and a folder of images
(:mod:`medseg.discover`), collecting every schema problem (ARCHITECTURE.md section 9).
"""

from __future__ import annotations

import csv
import json
import re
from io import StringIO
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from medseg._manifest_types import (
    LABEL_FORMATS,
    REQUIRED_COLUMNS,
    SCHEMA_DOC,
    SPLITS,
    Case,
    Manifest,
    labels_path_for,
    resolve_data_root,
)
from medseg.datalists import Datalist, is_datalist, read_datalist
from medseg.discover import find_cases
from medseg.typing import PathLike


def _problem_list(subject: str, problems: list[str]) -> str:
    """The aggregated error: a summary line, then one problem per line."""
    lines = "\n".join(f"  - {problem}" for problem in problems)
    return (
        f"{subject} must follow {SCHEMA_DOC} and point to readable, consistent files, "
        f"got {len(problems)} problem(s):\n{lines}"
    )


def _parse_label_names(path: Path) -> tuple[dict[int, str], list[str]]:
    """Parse a ``.labels.json`` sidecar; return the names and every problem."""
    where = f"label names {str(path)!r}"
    example = '{"labels": {"0": "background", "1": "CSF"}}'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        return {}, [
            f"{where} must be valid JSON like {example}, got a parse error at line "
            f"{err.lineno} column {err.colno} ({err.msg})"
        ]
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        return {}, [f"{where} must be an object like {example}, got {_short_json(data)}"]
    problems = []
    names: dict[int, str] = {}
    for key, name in labels.items():
        text = key.strip()
        value = int(text) if text.isascii() and text.isdigit() else -1
        if not 0 <= value <= 255:
            problems.append(f"{where}: key {key!r} must be a label value 0..255, got {key!r}")
        elif value in names:
            problems.append(f"{where}: key {key!r} must be unique, got a second key for {value}")
        elif not isinstance(name, str) or not name.strip():
            problems.append(
                f"{where}: name of label {value} must be a non-empty string, got {name!r}"
            )
        else:
            names[value] = name.strip()
    all_names = list(names.values())
    repeated = sorted({name for name in all_names if all_names.count(name) > 1})
    problems += [f"{where}: name {name!r} must name one label, got several" for name in repeated]
    return dict(sorted(names.items())), problems


def _parse_label_format(path: Path) -> tuple[str, int | None, list[str]]:
    """The sidecar's optional ``label_format`` and ``foreground_value``, and their problems."""
    where = f"label names {str(path)!r}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return "classes", None, []  # reported by _parse_label_names
    if not isinstance(data, dict):
        return "classes", None, []
    fmt = data.get("label_format", "classes")
    fg = data.get("foreground_value")
    problems = []
    if fmt not in LABEL_FORMATS:
        problems.append(f"{where}: label_format must be one of {list(LABEL_FORMATS)}, got {fmt!r}")
        fmt = "classes"
    if fmt == "binary":
        if isinstance(fg, bool) or not isinstance(fg, int) or not 1 <= fg <= 65535:
            problems.append(
                f"{where}: foreground_value must be an integer 1..65535 for label_format "
                f"'binary', got {fg!r}"
            )
            fg = None
    elif fg is not None:
        problems.append(
            f"{where}: foreground_value must be absent unless label_format is 'binary', got "
            f"{fg!r} with label_format {fmt!r}"
        )
        fg = None
    return fmt, fg, problems


def _short_json(data: Any, limit: int = 80) -> str:
    text = json.dumps(data)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_absolute(text: str) -> bool:
    """True for POSIX, Windows (drive or UNC) and home-relative paths."""
    return (
        PurePosixPath(text).is_absolute()
        or bool(PureWindowsPath(text).drive)
        or text.startswith(("\\", "~"))
    )


def _check_path(text: str, column: str, line: int, problems: list[str]) -> bool:
    """A path this system can use: relative and inside the data root, absolute here, or
    ``~/...``."""
    if _is_absolute(text) and not Path(text).expanduser().is_absolute():
        problems.append(
            f"line {line}: {column} {text!r} must be a path on this system, got an absolute "
            f"path of another one; write it relative to the data root"
        )
        return False
    if not _is_absolute(text) and ".." in PurePosixPath(text.replace("\\", "/")).parts:
        problems.append(
            f"line {line}: {column} {text!r} must stay inside the data root, got a path with "
            "'..'; write it absolute if the file really lies elsewhere"
        )
        return False
    return True


UNSAFE_CASE = re.compile(r"[/\\\x00]|^\.")
"""Case ids that cannot name an output file: a path separator, NUL or a leading dot."""


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name output files (``<case>.nii.gz``), or None.

    Example:
        >>> case_id_problem("IBSR_01") is None, case_id_problem("../etc")
        (True, "case '../etc' must be usable as a file name (no '/', '\\\\' or leading '.')")
    """
    if UNSAFE_CASE.search(case_id):
        return f"case {case_id!r} must be usable as a file name (no '/', '\\' or leading '.')"
    return None


def _resolve(text: str, root: Path | None, needs_root: list[str]) -> Path:
    """``text`` as an absolute path: itself if absolute, else under ``root``."""
    path = Path(text).expanduser()
    if path.is_absolute():
        return path
    if root is None:
        needs_root.append(text)
        return path
    return root / path


def _read_any(path: Path, data_root: PathLike | None) -> tuple[Manifest, list[str]]:
    """Parse a manifest CSV or a JSON datalist; return it and every schema problem."""
    if is_datalist(path):
        return _from_datalist(read_datalist(path, data_root=data_root))
    if path.is_dir():
        return _from_folder(path), []
    if not path.is_file():
        raise FileNotFoundError(f"manifest {str(path)!r} must exist, got a missing file")
    try:
        root: Path | None = resolve_data_root(data_root)
    except ValueError:  # no root given: fine while every path is absolute
        root = None
    manifest, problems, needs_root = _parse_manifest(path, root)
    if needs_root:
        resolve_data_root(data_root)  # raises the error that says how to give one
    return manifest, problems


def _from_folder(folder: Path) -> Manifest:
    """A folder of images (labels beside them, :mod:`medseg.discover`): every case ``test``."""
    found = find_cases(folder)
    cases = tuple(
        Case(case, image.resolve(), label.resolve() if label else None, "test")
        for case, image, label in found.cases
    )
    return Manifest(folder.resolve(), folder.resolve(), cases, {})


def _from_datalist(data: Datalist) -> tuple[Manifest, list[str]]:
    columns = sorted({key for row in data.rows for key in row.metadata})
    cases = []
    for row in data.rows:
        label = _resolve(row.label, data.base, []) if row.label else None
        metadata = {column: row.metadata.get(column, "") for column in columns}
        cases.append(Case(row.case, _resolve(row.image, data.base, []), label, row.split, metadata))
    manifest = Manifest(data.source.resolve(), data.base, tuple(cases), dict(data.label_names))
    unsafe = [problem for c in cases if (problem := case_id_problem(c.case))]
    return manifest, list(data.problems) + unsafe


def _parse_manifest(path: Path, root: Path | None) -> tuple[Manifest, list[str], list[str]]:
    """Parse the CSV; return the usable cases, every schema problem and the relative paths
    that need a data root (``root`` None)."""
    problems: list[str] = []
    needs_root: list[str] = []
    shown_root = root if root is not None else path.parent.resolve()
    label_names: dict[int, str] = {}
    labels_path = labels_path_for(path)
    num_rows = 0
    if labels_path.is_file():
        label_names, problems = _parse_label_names(labels_path)
        label_format, foreground_value, format_problems = _parse_label_format(labels_path)
        problems += format_problems
    else:
        label_format, foreground_value = "classes", None
    cases: list[Case] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"manifest {str(path)!r} must be UTF-8 text, got byte {err.object[err.start]:#04x} "
            f"at offset {err.start}; save it as UTF-8 CSV"
        ) from err
    if "\0" in text:
        raise ValueError(f"manifest {str(path)!r} must be CSV text, got NUL bytes (a binary file?)")
    with StringIO(text, newline="") as file:
        reader = csv.reader(file)
        header = [column.strip() for column in next(reader, [])]
        problems += _check_header(header)
        if any(column not in header for column in REQUIRED_COLUMNS):
            empty = Manifest(
                path.resolve(), shown_root, (), label_names, label_format, foreground_value
            )
            return empty, problems, needs_root
        first_line: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            if not any(value.strip() for value in row):
                continue  # blank line
            num_rows += 1
            case = _parse_row(row, header, line, root, first_line, problems, needs_root)
            if case is not None:
                cases.append(case)
    if not num_rows:
        problems.append("the manifest must list at least one case, got none")
    manifest = Manifest(
        path.resolve(), shown_root, tuple(cases), label_names, label_format, foreground_value
    )
    return manifest, problems, needs_root


def _check_header(header: list[str]) -> list[str]:
    problems = []
    if not any(header):
        return [f"the first line must be a header with columns {', '.join(REQUIRED_COLUMNS)}"]
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        problems.append(
            f"header must have the columns {', '.join(REQUIRED_COLUMNS)}, got "
            f"{', '.join(header)} (missing: {', '.join(missing)})"
        )
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        problems.append(f"header columns must be unique, got {', '.join(map(repr, repeated))}")
    if "" in header:
        problems.append(f"header columns must all have names, got an empty name in {header}")
    return problems


def _parse_row(
    row: list[str],
    header: list[str],
    line: int,
    root: Path | None,
    first_line: dict[str, int],
    problems: list[str],
    needs_root: list[str],
) -> Case | None:
    """Check one row; return its Case, or None if its files cannot be looked at."""
    if len(row) != len(header):
        problems.append(
            f"line {line}: must have {len(header)} fields like the header, got {len(row)}"
        )
        return None
    values = {column: value.strip() for column, value in zip(header, row, strict=True)}
    case_id, image, label, split = (values[column] for column in REQUIRED_COLUMNS)
    usable = True
    if not case_id:
        problems.append(f"line {line}: case must be a non-empty id, got an empty field")
        usable = False
    elif case_id in first_line:
        problems.append(
            f"line {line}: case {case_id!r} must be unique, got a duplicate of line "
            f"{first_line[case_id]}"
        )
        usable = False
    elif case_id_problem(case_id):
        problems.append(f"line {line}: {case_id_problem(case_id)}")
        usable = False
    else:
        first_line[case_id] = line
    if not image:
        problems.append(f"line {line}: image must be a path, got an empty field")
        usable = False
    else:
        usable = _check_path(image, "image", line, problems) and usable
    if label:
        usable = _check_path(label, "label", line, problems) and usable
    if split not in SPLITS:
        problems.append(f"line {line}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not usable:
        return None
    metadata = {column: value for column, value in values.items() if column not in REQUIRED_COLUMNS}
    label_path = _resolve(label, root, needs_root) if label else None
    return Case(case_id, _resolve(image, root, needs_root), label_path, split, metadata)
