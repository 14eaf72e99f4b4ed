"""BIDS input and BIDS-derivatives output for ``medseg predict BIDS_ROOT -o OUT``.

Input: a BIDS dataset (a folder with ``dataset_description.json`` or ``sub-*`` folders);
its T1-weighted images are ``sub-<label>/[ses-<label>/]anat/*_T1w.nii[.gz]`` (only the
``sub-*`` folders at the top are searched, so ``derivatives/``, ``sourcedata/`` and
``code/`` never are).

Output, as BIDS derivatives expect (BIDS 1.9, "Derivatives: imaging data types"):

* ``OUT/sub-XX/[ses-YY/]anat/<entities>_desc-medseg_dseg.nii.gz``: the label map, named
  after its source with the ``_T1w`` suffix replaced (all entities kept, e.g. ``acq-``,
  ``run-``), with a ``_dseg.json`` sidecar naming its ``Sources`` (BIDS URIs) and the model;
* ``OUT/sub-XX/[ses-YY/]anat/<entities>_desc-medseg_volumes.tsv``: each tissue's volume
  (mL) and share of the total intracranial volume, and the brain and TIV;
* ``OUT/dseg.tsv``: ``index``/``name`` of the label values, inherited by every ``dseg``;
* ``OUT/volumes.tsv``: one row per image (``participant_id``, ``session_id``, ``source``,
  one column per tissue, brain and TIV, mL); a later run updates its own rows;
* ``OUT/dataset_description.json``: ``DatasetType: derivative``, ``GeneratedBy`` medseg
  and its version, ``SourceDatasets``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medseg.io import atomic_output, check_output_path
from medseg.typing import PathLike

BIDS_VERSION = "1.9.0"
"""The BIDS version the derivatives follow."""
DESC = "medseg"
"""The ``desc-`` entity of medseg's outputs."""
_T1W = re.compile(r"^(sub-[A-Za-z0-9]+(?:_[a-z]+-[A-Za-z0-9]+)*)_T1w\.nii(\.gz)?$")


@dataclass(frozen=True)
class BidsImage:
    """One T1w image of a BIDS dataset.

    Attributes:
        path: The image file.
        relative: Its path inside the dataset (POSIX).
        subject: ``sub-`` label, e.g. ``"01"``.
        session: ``ses-`` label, or ``""``.
        entities: The file name's entities before ``_T1w``, e.g. ``"sub-01_ses-1_run-2"``.
    """

    path: Path
    relative: str
    subject: str
    session: str
    entities: str

    def derivative(self, out: PathLike, suffix: str, extension: str) -> Path:
        """``OUT/sub-XX/[ses-YY/]anat/<entities>_desc-medseg_<suffix><extension>``."""
        folder = Path(out) / Path(self.relative).parent
        return folder / f"{self.entities}_desc-{DESC}_{suffix}{extension}"


def is_bids_root(path: PathLike) -> bool:
    """Whether ``path`` is a BIDS dataset: ``dataset_description.json`` or ``sub-*`` folders.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> is_bids_root(root)
        False
        >>> (root / "sub-01" / "anat").mkdir(parents=True)
        >>> is_bids_root(root)
        True
    """
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "dataset_description.json").is_file():
        return True
    return any(p.is_dir() and p.name.startswith("sub-") for p in path.iterdir())


def find_t1w(root: PathLike) -> list[BidsImage]:
    """The T1w images of a BIDS dataset, sorted by path (module docstring for the layout).

    Raises:
        ValueError: the dataset holds no ``*_T1w.nii[.gz]`` image.
    """
    root = Path(root)
    found = []
    for subject in sorted(root.glob("sub-*")):
        if not subject.is_dir():
            continue
        folders = [subject / "anat", *sorted(s / "anat" for s in subject.glob("ses-*"))]
        for anat in folders:
            if not anat.is_dir():
                continue
            for path in sorted(anat.iterdir()):
                match = _T1W.match(path.name)
                if match is None:
                    continue
                entities = match.group(1)
                session = re.search(r"_ses-([A-Za-z0-9]+)", entities)
                found.append(
                    BidsImage(
                        path,
                        path.relative_to(root).as_posix(),
                        subject.name[len("sub-") :],
                        session.group(1) if session else "",
                        entities,
                    )
                )
    if not found:
        raise ValueError(
            f"BIDS dataset {str(root)!r} must hold T1w images "
            "(sub-*/[ses-*/]anat/*_T1w.nii[.gz]), got none"
        )
    return found


def dataset_description(source: PathLike, model: str, version: str) -> dict:
    """The derivative's ``dataset_description.json`` content."""
    return {
        "Name": "medseg brain tissue segmentation",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "medseg",
                "Version": version,
                "Description": f"medseg predict -m {model}",
            }
        ],
        "SourceDatasets": [{"URL": Path(source).resolve().as_uri()}],
    }


def check_derivatives_folder(out: PathLike, *, overwrite: bool = False) -> bool:
    """Whether ``OUT/dataset_description.json`` exists and is medseg's (then it is kept).

    Raises:
        FileExistsError: it is another pipeline's and ``overwrite`` is False (call this
            before any work, so that nothing is written into another pipeline's folder).
    """
    description = Path(out) / "dataset_description.json"
    if not description.is_file() or overwrite:
        return False
    try:
        existing = json.loads(description.read_text(encoding="utf-8"))
        ours = existing.get("GeneratedBy", [{}])[0].get("Name") == "medseg"
    except (json.JSONDecodeError, AttributeError, IndexError, TypeError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise FileExistsError(
            f"output {str(description)!r} must be medseg's derivative description, got "
            "another pipeline's; choose another -o folder or pass --overwrite"
        )
    return True


def write_dataset_files(
    out: PathLike,
    source: PathLike,
    *,
    label_names: Mapping[int, str],
    model: str,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``dataset_description.json`` and ``dseg.tsv`` (module docstring).

    A ``dataset_description.json`` that medseg wrote before is kept; another one (of a
    different pipeline) is refused unless ``overwrite``.

    Returns:
        The files written.

    Raises:
        FileExistsError: ``OUT/dataset_description.json`` is not medseg's.
    """
    from medseg import __version__

    out = Path(out)
    written = []
    description = out / "dataset_description.json"
    if check_derivatives_folder(out, overwrite=overwrite):
        pass  # medseg's own description: kept
    else:
        with atomic_output(description, overwrite=True) as tmp:
            text = json.dumps(dataset_description(source, model, __version__), indent=2)
            tmp.write_text(text + "\n", encoding="utf-8")
        written.append(description)
    table = out / "dseg.tsv"
    rows = [["index", "name"], *[[str(k), v] for k, v in sorted(label_names.items())]]
    with atomic_output(table, overwrite=True) as tmp:
        tmp.write_text(_tsv(rows), encoding="utf-8")
    written.append(table)
    return written


def write_sidecar(path: PathLike, image: BidsImage, *, model: str, overwrite: bool) -> Path:
    """The ``_dseg.json`` of a label map: its source (a BIDS URI) and how it was made."""
    data = {
        "Sources": [f"bids:raw:{image.relative}"],
        "Description": f"Brain tissue classes predicted by medseg ({model}); see dseg.tsv.",
        "Manual": False,
    }
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def write_subject_volumes(
    path: PathLike,
    volumes_ml: Mapping[str, float],
    tiv_ml: float | None,
    *,
    overwrite: bool,
) -> Path:
    """One image's ``_volumes.tsv``: ``tissue``, ``volume_ml``, ``fraction_of_tiv``."""
    rows = [["tissue", "volume_ml", "fraction_of_tiv"]]
    brain = float(sum(volumes_ml.values()))
    items = [*volumes_ml.items(), ("brain", brain)]
    if tiv_ml:
        items.append(("TIV", tiv_ml))
    for name, value in items:
        share = f"{value / tiv_ml:.4f}" if tiv_ml else "n/a"
        rows.append([name, f"{value:.2f}", share])
    check_output_path(path, overwrite=overwrite)
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(_tsv(rows), encoding="utf-8")
    return Path(path)


def update_group_volumes(out: PathLike, rows: Sequence[Mapping[str, str]]) -> Path:
    """Merge this run's rows into ``OUT/volumes.tsv`` (keyed by ``source``) and rewrite it."""
    path = Path(out) / "volumes.tsv"
    merged: dict[str, dict[str, str]] = {}
    if path.is_file():
        with path.open(encoding="utf-8", newline="") as file:
            for row in csv.DictReader(file, delimiter="\t"):
                merged[row["source"]] = dict(row)
    for new in rows:
        merged[new["source"]] = dict(new)
    columns: list[str] = []
    for row in merged.values():
        columns += [c for c in row if c not in columns]
    table = [columns] + [[row.get(c, "n/a") for c in columns] for _, row in sorted(merged.items())]
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(_tsv(table), encoding="utf-8")
    return path


def group_row(image: BidsImage, volumes_ml: Mapping[str, float], tiv_ml: float | None) -> dict:
    """One image's row of ``OUT/volumes.tsv``."""
    row = {
        "participant_id": f"sub-{image.subject}",
        "session_id": f"ses-{image.session}" if image.session else "n/a",
        "source": image.relative,
    }
    row.update({f"{name}_ml": f"{value:.2f}" for name, value in volumes_ml.items()})
    row["brain_ml"] = f"{sum(volumes_ml.values()):.2f}"
    row["tiv_ml"] = f"{tiv_ml:.2f}" if tiv_ml else "n/a"
    return row


def _tsv(rows: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter="\t", lineterminator="\n").writerows(rows)
    return buffer.getvalue()
