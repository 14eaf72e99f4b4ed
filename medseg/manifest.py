"""Data manifests: which cases exist, where their files are, and their split.

A manifest is a CSV (``data_manifests/<name>.csv``) with the columns ``case``, ``image``,
``label`` and ``split`` plus optional metadata columns, and a sidecar
``<name>.labels.json`` that names the label values. Paths are relative to a data root
given at run time, or absolute. The schema is documented in ``data_manifests/README.md``.
An nnU-Net v2 dataset folder and an MSD/MONAI datalist JSON load as manifests too
(:mod:`medseg.datalists`); :func:`write_manifest` writes one (``medseg manifest init``).

Every check collects all problems and raises once with the full list (ARCHITECTURE.md section 9):
:func:`load_manifest` checks the CSV itself, :func:`validate_manifest` opens the files,
and :func:`load_valid_manifest` does both.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from medseg import io, options
from medseg.datalists import Datalist, is_datalist, read_datalist
from medseg.discover import find_cases
from medseg.typing import PathLike

REQUIRED_COLUMNS: tuple[str, ...] = ("case", "image", "label", "split")
SPLITS: tuple[str, ...] = ("train", "val", "test")
DATA_ROOT_ENV = "MEDSEG_DATA_ROOT"
LABELS_SUFFIX = ".labels.json"
SCHEMA_DOC = "data_manifests/README.md"
_MAX_VALUES_SHOWN = 8  # other values listed per binary label problem
LABEL_FORMATS = options.LABEL_FORMATS
"""How a manifest's label files encode the truth (sidecar key ``label_format``):

* ``"classes"``: each value is a class index (IBSR: 0 bg, 1 CSF, 2 GM, 3 WM);
* ``"instances"``: 0 = background, every other value one object (DSB2018 and MICCAI
  nuclei, uint16 PNG); the class map is ``instances > 0`` and ids need not be contiguous;
* ``"binary"``: ``foreground_value`` marks the foreground class 1, 0 is class 0 (ISBI 2012:
  255 = cell interior, 0 = membrane); the objects are the foreground's 4-/6-connected
  components.
"""


@dataclass(frozen=True)
class Case:
    """One row of a manifest.

    Attributes:
        case: Unique case id, e.g. ``"IBSR_01"``.
        image: Image file (or DICOM folder) under the data root.
        label: Label map file under the data root, or None for an unlabelled case.
        split: ``"train"``, ``"val"`` or ``"test"``.
        metadata: The row's other columns, as the strings written in the CSV.
    """

    case: str
    image: Path
    label: Path | None
    split: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest: its cases with paths resolved against the data root.

    Attributes:
        path: The manifest CSV.
        data_root: The folder that the CSV's paths are relative to.
        cases: The cases, in file order.
        label_names: Class index -> class name, from the ``.labels.json`` sidecar;
            empty when the manifest has no sidecar.
        label_format: How label files encode the truth, one of :data:`LABEL_FORMATS`.
        foreground_value: The file value of the foreground for ``"binary"``, else None.
    """

    path: Path
    data_root: Path
    cases: tuple[Case, ...]
    label_names: dict[int, str]
    label_format: str = "classes"
    foreground_value: int | None = None

    def read_target(self, case: Case) -> Target:
        """Read one case's label file as classes (and instances), per :attr:`label_format`."""
        if case.label is None:
            raise ValueError(f"case {case.case!r} must have a label to read, got none")
        return read_target(
            case.label, label_format=self.label_format, foreground_value=self.foreground_value
        )

    @property
    def labels_path(self) -> Path:
        """The sidecar ``<name>.labels.json`` beside ``<name>.csv``."""
        return labels_path_for(self.path)

    def split(self, name: str) -> tuple[Case, ...]:
        """Return the cases of one split, in file order.

        Args:
            name: ``"train"``, ``"val"`` or ``"test"``.

        Example:
            >>> a = Case("a", Path("a.png"), None, "train")
            >>> b = Case("b", Path("b.png"), None, "val")
            >>> Manifest(Path("m.csv"), Path("."), (a, b), {}).split("val") == (b,)
            True
        """
        if name not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        return tuple(case for case in self.cases if case.split == name)


@dataclass(frozen=True)
class Target:
    """A case's truth as classes and, for object data, instances.

    Attributes:
        classes: Class indices, uint8 ``(Z, Y, X)``, 0 = background.
        instances: Object ids, int32 ``(Z, Y, X)``, 0 = background (ids as in the file for
            ``"instances"``, connected components for ``"binary"``); None for ``"classes"``.
        geometry: The label file's geometry.
        path: The label file.
    """

    classes: np.ndarray
    instances: np.ndarray | None
    geometry: io.Geometry
    path: Path


def read_target(
    path: PathLike, *, label_format: str = "classes", foreground_value: int | None = None
) -> Target:
    """Read a label file as a :class:`Target` (see :data:`LABEL_FORMATS`).

    Args:
        path: Label file (or DICOM folder).
        label_format: ``"classes"``, ``"instances"`` or ``"binary"``.
        foreground_value: For ``"binary"``: the file value of the foreground (e.g. 255).

    Raises:
        ValueError: unknown format, a missing or needless ``foreground_value``, or a
            ``"binary"`` file holding values other than 0 and ``foreground_value``.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "em.png"
        >>> mask = np.array([[[255, 255, 0, 255]]], dtype=np.uint8)
        >>> _ = io.write_label(out, mask, io.Geometry.from_spacing((1.0, 1.0, 1.0)))
        >>> t = read_target(out, label_format="binary", foreground_value=255)
        >>> t.classes.tolist(), t.instances.tolist()
        ([[[1, 1, 0, 1]]], [[[1, 1, 0, 2]]])
    """
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {list(LABEL_FORMATS)}, got {label_format!r}")
    if (label_format == "binary") != (foreground_value is not None):
        raise ValueError(
            f"foreground_value must be given exactly for label_format 'binary', got "
            f"{foreground_value!r} with {label_format!r}"
        )
    path = Path(path)
    if label_format == "classes":
        label = io.read_label(path)
        return Target(label.array, None, label.geometry, path)
    values = io.read_instances(path)
    if label_format == "instances":
        return Target((values.array > 0).astype(np.uint8), values.array, values.geometry, path)
    from medseg.instances import instances_from_mask

    fg = values.array == foreground_value
    other = np.count_nonzero(~fg & (values.array != 0))
    if other:
        found = np.unique(values.array[~fg & (values.array != 0)])[:8].tolist()
        raise ValueError(
            f"label {str(path)!r} must hold only 0 and the foreground value {foreground_value} "
            f"(label_format 'binary'), got {other} voxel(s) with other values {found}"
        )
    return Target(fg.astype(np.uint8), instances_from_mask(fg), values.geometry, path)


def labels_path_for(path: PathLike) -> Path:
    """Return the label-names sidecar of a manifest: ``<name>.csv`` -> ``<name>.labels.json``.

    Example:
        >>> labels_path_for("data_manifests/ibsr18.csv").as_posix()
        'data_manifests/ibsr18.labels.json'
    """
    path = Path(path)
    return path.with_name(path.stem + LABELS_SUFFIX)


def resolve_data_root(data_root: PathLike | None = None) -> Path:
    """Return the data root: ``data_root`` if given, else ``$MEDSEG_DATA_ROOT``.

    Args:
        data_root: The folder that manifest paths are relative to; a relative path is
            taken from the current folder.

    Raises:
        ValueError: if neither is set.
        FileNotFoundError: if the folder does not exist.
    """
    source = "data_root"
    if data_root is None or str(data_root) == "":
        data_root = os.environ.get(DATA_ROOT_ENV, "")
        source = f"${DATA_ROOT_ENV}"
        if not data_root:
            raise ValueError(
                f"data_root must be given, got neither a data_root argument nor "
                f"${DATA_ROOT_ENV}; pass data_root=... or set {DATA_ROOT_ENV} to the folder "
                f"that the manifest paths start from (for data_manifests/*.csv in this repo: "
                f"export {DATA_ROOT_ENV}=../shared/data from the repo root)"
            )
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {str(root)!r} (from {source}) must be an existing folder, got a "
            f"missing path; check the path, or set {DATA_ROOT_ENV}"
        )
    return root.resolve()


def load_label_names(path: PathLike) -> dict[int, str]:
    """Read a ``.labels.json`` sidecar: ``{"labels": {"0": "background", "1": "CSF"}}``.

    Args:
        path: The JSON file.

    Returns:
        Label value (0..255) -> class name, sorted by value.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: listing every problem (bad JSON, keys that are not 0..255, empty or
            repeated names).

    Example:
        >>> import tempfile, pathlib
        >>> sidecar = pathlib.Path(tempfile.mkdtemp()) / "toy.labels.json"
        >>> _ = sidecar.write_text('{"labels": {"1": "cell", "0": "background"}}')
        >>> load_label_names(sidecar)
        {0: 'background', 1: 'cell'}
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label names {str(path)!r} must exist, got a missing file")
    names, problems = _parse_label_names(path)
    if problems:
        raise ValueError(_problem_list(f"label names {str(path)!r}", problems))
    return names


def load_manifest(path: PathLike, *, data_root: PathLike | None = None) -> Manifest:
    """Load a manifest CSV and check its schema; files are not opened (see validate_manifest).

    Args:
        path: The manifest CSV; a sidecar ``<name>.labels.json`` beside it is read if present.
            Also an nnU-Net v2 dataset folder (or its ``dataset.json``), an MSD/MONAI
            datalist ``.json`` (:mod:`medseg.datalists`), or a folder of images, whose
            cases (:func:`medseg.discover.find_cases`) are all ``test``.
        data_root: The folder the CSV's relative paths start from; default
            ``$MEDSEG_DATA_ROOT``, not needed when every path is absolute. For a JSON
            datalist the default is the JSON file's folder.

    Returns:
        The manifest, with every path resolved against the data root.

    Raises:
        FileNotFoundError: if the CSV or the data root does not exist.
        ValueError: if no data root is set for relative paths, or listing every schema
            problem: missing or repeated columns, duplicate case ids, empty paths, paths of
            another operating system, unknown splits, rows of the wrong length, a bad sidecar.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (root / "toy.csv").write_text("case,image,label,split\\nc1,c1.png,,test\\n")
        >>> load_manifest(root / "toy.csv", data_root=root).cases[0].image == root / "c1.png"
        True
    """
    manifest, problems = _read_any(Path(path), data_root)
    if problems:
        raise ValueError(_problem_list(f"manifest {str(manifest.path)!r}", problems))
    return manifest


def validate_manifest(manifest: Manifest, *, check_labels: bool = True) -> list[str]:
    """Open every file of a manifest and return all problems found (empty = valid).

    Images are read header-only. Labels are read whole when ``check_labels`` is True, to
    check their values by the manifest's :attr:`Manifest.label_format`; else header-only.

    Checks: files exist and can be read; each label is one-channel and on its image's
    voxel grid (shape, spacing, affine, see :func:`medseg.io.check_same_grid`); label
    values, by format: ``"classes"``: integers 0..255 declared in the ``.labels.json``
    sidecar; ``"instances"``: integers 0..2**31 - 1 (any ids, contiguous or not);
    ``"binary"``: only 0 and ``foreground_value``. A label that is all background is valid.

    Args:
        manifest: A loaded manifest.
        check_labels: Read label data and check the values.

    Returns:
        One line per problem, each starting with the case id.
    """
    problems: list[str] = []
    has_labels = any(case.label is not None for case in manifest.cases)
    if check_labels and has_labels and not manifest.label_names:
        problems.append(
            f"label names {str(manifest.labels_path)!r} must exist to check label values, "
            "got a missing file; create it or pass check_labels=False"
        )
    for case in manifest.cases:
        problems += _validate_case(case, manifest, check_labels=check_labels)
    return problems


def require_valid(manifest: Manifest, *, check_labels: bool = True) -> None:
    """Raise one ValueError listing every problem that :func:`validate_manifest` finds."""
    problems = validate_manifest(manifest, check_labels=check_labels)
    if problems:
        raise ValueError(_problem_list(f"manifest {str(manifest.path)!r}", problems))


def load_valid_manifest(
    path: PathLike, *, data_root: PathLike | None = None, check_labels: bool = True
) -> Manifest:
    """Load a manifest and validate its files, raising once with every problem of both kinds.

    Rows with a schema problem (absolute path, duplicate id, ...) are reported and their
    files are not opened; the files of every other row are checked as in
    :func:`validate_manifest`.

    Args:
        path: The manifest CSV.
        data_root: The folder the CSV's paths are relative to; default ``$MEDSEG_DATA_ROOT``.
        check_labels: Read label data and check the values.

    Raises:
        FileNotFoundError: if the CSV or the data root does not exist.
        ValueError: listing every schema and file problem.
    """
    manifest, problems = _read_any(Path(path), data_root)
    problems += validate_manifest(manifest, check_labels=check_labels)
    if problems:
        raise ValueError(_problem_list(f"manifest {str(manifest.path)!r}", problems))
    return manifest


def write_manifest(
    path: PathLike,
    cases: Sequence[Case],
    *,
    label_names: Mapping[int, str] | None = None,
    label_format: str = "classes",
    foreground_value: int | None = None,
    data_root: PathLike | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write cases as a manifest CSV and, with ``label_names``, its ``.labels.json`` sidecar.

    Args:
        path: The CSV to write (atomically; the sidecar beside it).
        cases: The rows; the metadata columns are the union of the cases' keys.
        label_names: Value -> name for the sidecar (None: no sidecar).
        label_format: The sidecar's ``label_format`` (one of :data:`LABEL_FORMATS`).
        foreground_value: The sidecar's ``foreground_value`` for ``"binary"``.
        data_root: Write paths relative to this folder when they are under it; the others
            (and all, without it) are written absolute.
        overwrite: Replace existing files.

    Returns:
        The files written.

    Raises:
        FileExistsError: a file exists and ``overwrite`` is False (nothing is written).
        ValueError: a bad label format, or a case id repeated.
    """
    if label_format not in LABEL_FORMATS:
        raise ValueError(
            f"label_format must be one of {', '.join(LABEL_FORMATS)}, got {label_format!r}"
        )
    ids = [case.case for case in cases]
    repeated = sorted({c for c in ids if ids.count(c) > 1})
    if repeated:
        raise ValueError(f"case ids must be unique, got {', '.join(repeated[:5])} repeated")
    path = Path(path)
    sidecar = labels_path_for(path)
    targets = [path] + ([sidecar] if label_names is not None else [])
    for target in targets:
        io.check_output_path(target, overwrite=overwrite)
    root = Path(data_root).expanduser().resolve() if data_root is not None else None
    columns = list(dict.fromkeys(k for case in cases for k in case.metadata))
    buffer = StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*REQUIRED_COLUMNS, *columns])
    for case in cases:
        label = _written(case.label, root) if case.label is not None else ""
        extra = [str(case.metadata.get(column, "")) for column in columns]
        writer.writerow([case.case, _written(case.image, root), label, case.split, *extra])
    with io.atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    if label_names is not None:
        data: dict[str, Any] = {"labels": {str(k): v for k, v in sorted(label_names.items())}}
        if label_format != "classes":
            data["label_format"] = label_format
        if foreground_value is not None:
            data["foreground_value"] = int(foreground_value)
        with io.atomic_output(sidecar, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return targets


def _written(path: Path, root: Path | None) -> str:
    """A path as a manifest holds it: POSIX, relative to ``root`` when under it."""
    absolute = Path(path).expanduser().resolve()
    if root is not None:
        try:
            return absolute.relative_to(root).as_posix()
        except ValueError:
            pass
    return absolute.as_posix()


# --------------------------------------------------------------------------------------
# Parsing


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


# --------------------------------------------------------------------------------------
# Validation


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _validate_case(case: Case, manifest: Manifest, *, check_labels: bool) -> list[str]:
    prefix = f"case {case.case!r}"
    root = manifest.data_root
    problems: list[str] = []

    def open_file(what: str, path: Path, reader: Any) -> Any:
        if not path.exists():
            problems.append(
                f"{prefix}: {what} {_relative(path, root)!r} must exist under the data root "
                f"{str(root)!r}, got a missing path"
            )
            return None
        try:
            return reader(path)
        except (ValueError, OSError) as err:
            problems.append(f"{prefix}: {err}")
            return None

    image = open_file("image", case.image, io.read_volume_info)
    if case.label is None:
        return problems
    if check_labels and manifest.label_format == "classes":
        label = open_file("label", case.label, io.read_label)
        if label is not None and manifest.label_names:
            problems += _undeclared_values(prefix, label, manifest)
    elif check_labels:  # "instances" or "binary": ids may exceed 255
        label = open_file("label", case.label, io.read_instances)
        if label is not None and manifest.label_format == "binary":
            problems += _non_binary_values(prefix, label, manifest)
    else:
        label = open_file("label", case.label, io.read_volume_info)
        if label is not None and label.num_channels != 1:
            problems.append(
                f"{prefix}: label {_relative(case.label, root)!r} must have one channel, "
                f"got {label.num_channels}"
            )
    if image is not None and label is not None:
        try:
            io.check_same_grid(image, label)
        except ValueError as err:
            problems.append(f"{prefix}: {err}")
    return problems


def _undeclared_values(prefix: str, label: io.Volume, manifest: Manifest) -> list[str]:
    counts = np.bincount(label.array.ravel(), minlength=256)  # label is uint8
    undeclared = [v for v in np.flatnonzero(counts).tolist() if v not in manifest.label_names]
    if not undeclared:
        return []
    assert label.path is not None  # read from a file
    declared = ", ".join(str(v) for v in manifest.label_names)
    found = ", ".join(f"{v} ({_count(int(counts[v]), 'voxel')})" for v in undeclared)
    return [
        f"{prefix}: label {_relative(label.path, manifest.data_root)!r} must hold only the "
        f"values declared in {manifest.labels_path.name} ({declared}), got {found}; "
        "declare them or fix the label map"
    ]


def _non_binary_values(prefix: str, label: io.Volume, manifest: Manifest) -> list[str]:
    """The problem of a ``"binary"`` label holding values other than 0 and the foreground."""
    foreground = manifest.foreground_value
    if foreground is None:  # a bad sidecar, reported by load_manifest
        return []
    values, counts = np.unique(label.array, return_counts=True)
    other = [
        (int(v), int(n)) for v, n in zip(values, counts, strict=True) if v not in (0, foreground)
    ]
    if not other:
        return []
    assert label.path is not None  # read from a file
    shown = other[:_MAX_VALUES_SHOWN]
    found = ", ".join(f"{v} ({_count(n, 'voxel')})" for v, n in shown)
    if len(other) > len(shown):
        found += f" and {len(other) - len(shown)} more value(s)"
    return [
        f"{prefix}: label {_relative(label.path, manifest.data_root)!r} must hold only 0 and "
        f"the foreground value {foreground} (label_format 'binary' in "
        f"{manifest.labels_path.name}), got {found}; fix the label map or use label_format "
        "'classes' or 'instances'"
    ]


def _count(number: int, noun: str) -> str:
    """``1 voxel``, ``2 voxels``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
