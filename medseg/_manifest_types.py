"""The data types of :mod:`medseg.manifest` (which re-exports them): the manifest's
vocabularies (columns, splits, label formats), :class:`Case`, :class:`Manifest`,
:class:`Target` with :func:`read_target`, and the path helpers :func:`labels_path_for`
and :func:`resolve_data_root`.

The schema is documented in ``data_manifests/README.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg import io, options
from medseg.typing import PathLike

REQUIRED_COLUMNS: tuple[str, ...] = ("case", "image", "label", "split")
SPLITS: tuple[str, ...] = ("train", "val", "test")
DATA_ROOT_ENV = "MEDSEG_DATA_ROOT"
LABELS_SUFFIX = ".labels.json"
SCHEMA_DOC = "data_manifests/README.md"
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
