"""Finding cases in folders: case ids from file names, image-label matching, random splits.

``medseg manifest init IMAGES/ [--labels LABELS/]`` is built on these functions, and
``medseg batch run`` uses them when it is given a folder instead of a manifest.

Images are the files with a suffix that :mod:`medseg.io` reads (NIfTI, MGH, MHA/MHD, NRRD,
PNG, TIFF) and DICOM series folders, found recursively. A case id is the file name without
its suffix and without one trailing marker that names the file's role rather than the case:

* images: an nnU-Net channel suffix ``_0000`` or ``_t1``, ``_T1w``, ``_image``, ``_img``;
* labels: ``_labels``, ``_label``, ``_seg``, ``_segmentation``, ``_mask``, ``_dseg``,
  ``_gt``, then the image markers (``sub01_t1_seg`` -> ``sub01``).

So ``IBSR_01_t1.nii.gz`` and ``IBSR_01_labels.nii.gz`` are both case ``IBSR_01``, and
nnU-Net's ``imagesTr/brain_007_0000.nii.gz`` matches ``labelsTr/brain_007.nii.gz``. Without a
labels folder, the files whose names carry a label marker are the labels. The outputs that
``medseg predict`` writes beside a label map (``_confidence``, ``_probs``, ``_brainmask``,
``_overlay``) are never cases.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.io import SUPPORTED_SUFFIXES, is_dicom_folder, split_suffix
from medseg.typing import PathLike

IMAGE_MARKERS: tuple[str, ...] = ("_t1w", "_t1", "_image", "_img")
"""Trailing parts of an image's name that are not its case id (matched without case)."""
LABEL_MARKERS: tuple[str, ...] = (
    "_labels",
    "_label",
    "_segmentation",
    "_seg",
    "_mask",
    "_dseg",
    "_gt",
)
"""Trailing parts of a label file's name that are not its case id (matched without case)."""
OUTPUT_MARKERS: tuple[str, ...] = ("_confidence", "_probs", "_brainmask", "_overlay")
"""What ``medseg predict`` writes beside its label maps: never a case."""
_CHANNEL = re.compile(r"_\d{4}$")  # nnU-Net: <case>_0000 is channel 0


@dataclass
class FoundCases:
    """What :func:`find_cases` matched.

    Attributes:
        cases: ``(case id, image, label or None)`` sorted by case id.
        unmatched_labels: Label files whose case id has no image.
        ambiguous: ``(case id, files)`` for ids that two images or two labels share; these
            cases are left out.
    """

    cases: list[tuple[str, Path, Path | None]] = field(default_factory=list)
    unmatched_labels: list[Path] = field(default_factory=list)
    ambiguous: list[tuple[str, list[Path]]] = field(default_factory=list)

    @property
    def unlabelled(self) -> list[str]:
        """Case ids of the images without a label."""
        return [case for case, _, label in self.cases if label is None]


def _strip(stem: str, markers: Iterable[str]) -> str:
    lower = stem.lower()
    for marker in markers:
        if lower.endswith(marker) and len(stem) > len(marker):
            return stem[: len(stem) - len(marker)]
    return stem


def case_id(path: PathLike, *, label: bool = False) -> str:
    """The case id of an image (or, with ``label``, a label) file or DICOM folder.

    Example:
        >>> case_id("IBSR_01_t1.nii.gz"), case_id("brain_007_0000.nii.gz")
        ('IBSR_01', 'brain_007')
        >>> case_id("IBSR_01_labels.nii.gz", label=True), case_id("s1_T1w_seg.nii", label=True)
        ('IBSR_01', 's1')
    """
    stem = split_suffix(Path(path).name)[0]
    if label:
        stem = _strip(stem, LABEL_MARKERS)
    stripped = _CHANNEL.sub("", stem)
    return _strip(stripped, IMAGE_MARKERS) if stripped else stem


def is_label_name(path: PathLike) -> bool:
    """Whether a file's name ends with a label marker (``x_seg.nii.gz``, ``x_labels.png``)."""
    stem = split_suffix(Path(path).name)[0].lower()
    return any(stem.endswith(marker) and len(stem) > len(marker) for marker in LABEL_MARKERS)


def image_files(folder: PathLike, *, recursive: bool = True) -> list[Path]:
    """The images under ``folder``: readable files and DICOM series folders, sorted.

    Hidden entries and :data:`OUTPUT_MARKERS` files are skipped; a DICOM folder (``folder``
    itself included) is one image and is not searched further.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"folder {str(root)!r} must exist, got a missing folder")
    if is_dicom_folder(root):
        return [root]  # the folder is one series
    found: list[Path] = []
    pending = [root]
    seen = {root.resolve()}  # symbolic links that loop are followed once
    while pending:
        current = pending.pop()
        for entry in sorted(current.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if is_dicom_folder(entry):
                    found.append(entry)
                elif recursive and entry.resolve() not in seen:
                    seen.add(entry.resolve())
                    pending.append(entry)
            elif entry.name.lower().endswith(SUPPORTED_SUFFIXES):
                stem = split_suffix(entry.name)[0].lower()
                if not stem.endswith(OUTPUT_MARKERS):
                    found.append(entry)
    return sorted(found)


def input_files(path: PathLike) -> list[Path]:
    """What ``medseg predict PATH`` segments: a file or DICOM folder itself, or the images
    directly in a folder (not its subfolders; DICOM series folders in it count), sorted.

    The outputs of an earlier ``medseg predict`` in the folder (:data:`OUTPUT_MARKERS`) and
    hidden files are left out.

    Raises:
        FileNotFoundError: nothing at ``path``, or a folder without images.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("b.nii.gz", "a.png", "a_confidence.nii.gz", "notes.txt"):
        ...     _ = (folder / name).write_bytes(b"")
        >>> [p.name for p in input_files(folder)]
        ['a.png', 'b.nii.gz']
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {str(path)!r} must exist, got nothing there")
    if not path.is_dir() or is_dicom_folder(path):
        return [path]
    found = image_files(path, recursive=False)
    if not found:
        raise FileNotFoundError(
            f"input folder {str(path)!r} must contain images "
            f"({', '.join(SUPPORTED_SUFFIXES)} or DICOM series folders), got none"
        )
    return found


def find_cases(images: PathLike, labels: PathLike | None = None) -> FoundCases:
    """Match the images under ``images`` with the labels under ``labels`` by case id.

    Args:
        images: Folder searched recursively for images (and, without ``labels``, for the
            label files among them, told by their label marker).
        labels: Folder of label files, or None.

    Returns:
        The matched cases (an image without a label is unlabelled), the labels without an
        image and the ids that are ambiguous.

    Raises:
        FileNotFoundError: a folder is missing. ValueError: no image was found.
    """
    files = image_files(images)
    if labels is None:
        label_files = [f for f in files if is_label_name(f)]
        image_list = [f for f in files if not is_label_name(f)]
    else:
        label_files = image_files(labels)
        image_list = files
    if not image_list:
        raise ValueError(
            f"images folder {str(images)!r} must contain images "
            f"({', '.join(SUPPORTED_SUFFIXES)} or DICOM series), got none"
        )
    by_image = _group(image_list, label=False)
    by_label = _group(label_files, label=True)
    found = FoundCases()
    for case in sorted(by_image):
        paths = by_image[case]
        label_paths = by_label.get(case, [])
        if len(paths) > 1 or len(label_paths) > 1:
            found.ambiguous.append((case, paths + label_paths))
            continue
        found.cases.append((case, paths[0], label_paths[0] if label_paths else None))
    found.unmatched_labels = sorted(
        path for case, paths in by_label.items() if case not in by_image for path in paths
    )
    return found


def _group(paths: list[Path], *, label: bool) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(case_id(path, label=label), []).append(path)
    return groups


def parse_split_fractions(items: Iterable[str]) -> dict[str, float]:
    """``["val=0.2", "test=3"]`` -> ``{"val": 0.2, "test": 3.0}`` (a fraction or a count).

    Raises:
        ValueError: naming ``--split``, for a bad item, an unknown split or a total of
            fractions of 1 or more.

    Example:
        >>> parse_split_fractions(["val=0.2"])
        {'val': 0.2}
    """
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in ("val", "test"):
            raise ValueError(f"--split must be val=FRACTION or test=FRACTION, got {item!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(
                f"--split {name} must be a fraction in (0, 1) or a count, got {value!r}"
            ) from None
        if not (0 < number < 1 or (number >= 1 and number.is_integer())):
            raise ValueError(f"--split {name} must be a fraction in (0, 1) or a count, got {value}")
        out[name.strip()] = number
    if sum(v for v in out.values() if v < 1) >= 1:
        raise ValueError(f"--split fractions must leave cases to train on, got {items!r}")
    return out


def assign_splits(
    cases: Iterable[str], fractions: Mapping[str, float], *, seed: int = 0
) -> dict[str, str]:
    """Case id -> ``train``/``val``/``test``: a seeded random draw of the given sizes.

    Args:
        cases: The labelled case ids.
        fractions: ``{"val": 0.2}``: a fraction (rounded, at least 1 case) or a count per
            split; what is left trains.
        seed: Seed of the draw; the same ids, fractions and seed give the same split.

    Raises:
        ValueError: the splits would leave no case to train on.

    Example:
        >>> sorted(assign_splits(["a", "b", "c", "d", "e"], {"val": 0.2}).values())
        ['train', 'train', 'train', 'train', 'val']
    """
    ids = sorted(cases)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    out = dict.fromkeys(ids, "train")
    start = 0
    for name in ("val", "test"):
        if name not in fractions:
            continue
        value = fractions[name]
        count = int(value) if value >= 1 else max(1, round(value * len(ids)))
        for case in order[start : start + count]:
            out[case] = name
        start += count
    if ids and start >= len(ids):
        raise ValueError(
            f"--split must leave at least one of the {len(ids)} labelled cases to train on, "
            f"got {dict(fractions)}"
        )
    return out


MAX_CLASSES = 64
"""More distinct values than this in ``"classes"`` label files suggests object ids."""


def label_names_from_files(
    labels: Iterable[PathLike], label_format: str = "classes"
) -> tuple[dict[int, str], int | None]:
    """Names for the values found in label files, and the binary foreground value.

    ``"classes"``: every value found, ``0`` named ``background`` and ``v`` ``label_v``;
    ``"instances"``: ``{0: background, 1: object}`` (no file is read); ``"binary"``: the
    files must hold two values, 0 and the foreground value, named background/foreground.

    Raises:
        ValueError: naming the file, for classes past :data:`MAX_CLASSES` values or binary
            files with other values.

    Example:
        >>> label_names_from_files([], "instances")
        ({0: 'background', 1: 'object'}, None)
    """
    from medseg.io import read_instances, read_label

    if label_format == "instances":
        return {0: "background", 1: "object"}, None
    values: set[int] = set()
    for path in labels:
        reader = read_label if label_format == "classes" else read_instances
        found = {int(v) for v in np.unique(reader(path).array)}
        values |= found
        if label_format == "classes" and len(values) > MAX_CLASSES:
            raise ValueError(
                f"label {str(path)!r} must hold class values (at most {MAX_CLASSES} in all), "
                f"got {len(values)} distinct values; use --label-format instances for object "
                "ids"
            )
        if label_format == "binary" and len(values - {0}) > 1:
            raise ValueError(
                f"label {str(path)!r} must hold 0 and one foreground value for --label-format "
                f"binary, got {sorted(values)[:8]}"
            )
    if label_format == "binary":
        foreground = max(values - {0}, default=None)
        if foreground is None:
            raise ValueError("labels must hold a foreground value for binary, got only 0")
        return {0: "background", 1: "foreground"}, foreground
    return {v: "background" if v == 0 else f"label_{v}" for v in sorted(values | {0})}, None
