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

The data types live in :mod:`medseg._manifest_types`, the parsing in
:mod:`medseg._manifest_parse` and the file checks in :mod:`medseg._manifest_checks`; this
module re-exports their public names.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from io import StringIO
from pathlib import Path
from typing import Any

from medseg import io
from medseg._manifest_checks import _validate_case
from medseg._manifest_parse import (  # noqa: F401  (re-exported: their home is _manifest_parse)
    UNSAFE_CASE,
    _parse_label_names,
    _problem_list,
    _read_any,
    case_id_problem,
)
from medseg._manifest_types import (  # noqa: F401  (re-exported: their home is _manifest_types)
    DATA_ROOT_ENV,
    LABEL_FORMATS,
    LABELS_SUFFIX,
    REQUIRED_COLUMNS,
    SCHEMA_DOC,
    SPLITS,
    Case,
    Manifest,
    Target,
    labels_path_for,
    read_target,
    resolve_data_root,
)
from medseg.typing import PathLike


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
