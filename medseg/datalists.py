"""Other tools' dataset descriptions, read as manifests: nnU-Net v2 and MSD/MONAI datalists.

:func:`medseg.manifest.load_manifest` calls :func:`read_datalist` when ``--manifest`` names

* a folder holding an nnU-Net v2 ``dataset.json`` (``imagesTr/``, ``labelsTr/``,
  ``imagesTs/``), or that ``dataset.json`` itself. Cases are ``imagesTr/<case>_0000<ending>``
  with ``labelsTr/<case><ending>`` (split ``train``) and ``imagesTs/<case>_0000<ending>``
  (``test``, unlabelled), or the explicit ``"dataset"`` entry when the file has one. A
  ``splits_final.json`` beside it (nnU-Net's, copied from the preprocessed folder) marks
  fold 0's validation cases ``val``. Label names come from ``"labels"``
  (``{"background": 0, "GM": 1}``); only one input channel is supported.
* any other ``.json`` file: a Medical Segmentation Decathlon ``dataset.json`` or a MONAI
  datalist (what ``monai.data.load_decathlon_datalist`` reads): ``"training"``,
  ``"validation"`` and ``"test"`` lists of ``{"image": ..., "label": ...}`` (test items may
  be bare paths) become the ``train``, ``val`` and ``test`` splits; other keys of an item
  (e.g. ``"fold"``) become metadata columns; ``"labels"`` (``{"0": "background"}``) names
  the values.

Paths are relative to the JSON file's folder (as MONAI's ``base_dir`` defaults), or to an
explicit data root; absolute paths are used as they are. This module imports nothing from
medseg but the case-id rule of :mod:`medseg.discover` (for items without a ``"case"``): it
returns plain rows and every problem found.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.discover import case_id
from medseg.typing import PathLike

NNUNET_FILE = "dataset.json"
SPLITS_FILE = "splits_final.json"
_CHANNEL = re.compile(r"_(\d{4})$")


@dataclass
class DatalistRow:
    """One case: id, image and label paths as written (relative or absolute), split, extras."""

    case: str
    image: str
    label: str | None
    split: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Datalist:
    """A read dataset description.

    Attributes:
        source: The JSON file.
        base: The folder that relative paths start from.
        kind: ``"nnunet"`` or ``"datalist"``.
        rows: The cases, in file order.
        label_names: Value -> name.
        problems: Everything wrong with the file, one line each (empty: usable).
    """

    source: Path
    base: Path
    kind: str
    rows: list[DatalistRow] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def is_datalist(path: PathLike) -> bool:
    """Whether ``path`` is a JSON file or a folder holding an nnU-Net ``dataset.json``.

    Example:
        >>> is_datalist("data_manifests/ibsr18.csv"), is_datalist("Dataset001/dataset.json")
        (False, True)
    """
    path = Path(path)
    return path.suffix.lower() == ".json" or (path.is_dir() and (path / NNUNET_FILE).is_file())


def read_datalist(path: PathLike, *, data_root: PathLike | None = None) -> Datalist:
    """Read an nnU-Net v2 dataset folder or ``dataset.json``, or an MSD/MONAI datalist.

    Args:
        path: The folder or JSON file (see the module docstring).
        data_root: Where relative paths start (default: the JSON file's folder).

    Raises:
        FileNotFoundError: the file is missing. ValueError: it is not JSON (the other
            problems are collected in :attr:`Datalist.problems`).
    """
    path = Path(path)
    source = path / NNUNET_FILE if path.is_dir() else path
    if not source.is_file():
        raise FileNotFoundError(f"manifest {str(source)!r} must exist, got a missing file")
    try:
        data = json.loads(source.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"manifest {str(source)!r} must be JSON, got {err}") from None
    except RecursionError:
        raise ValueError(
            f"manifest {str(source)!r} must be a datalist, got JSON nested too deeply to read"
        ) from None
    base = Path(data_root).expanduser().resolve() if data_root else source.parent.resolve()
    if not isinstance(data, dict):
        raise ValueError(
            f"manifest {str(source)!r} must be a JSON object, got {type(data).__name__}"
        )
    if "channel_names" in data or "dataset" in data or "file_ending" in data:
        out = Datalist(source, base, "nnunet")
        _read_nnunet(data, out)
    else:
        out = Datalist(source, base, "datalist")
        _read_msd(data, out)
    if not out.rows and not out.problems:
        out.problems.append("the dataset must list at least one case, got none")
    return out


def _read_nnunet(data: dict[str, Any], out: Datalist) -> None:
    channels = data.get("channel_names", data.get("modality", {}))
    if isinstance(channels, dict) and len(channels) > 1:
        out.problems.append(
            f"channel_names must hold one channel (medseg models take one image), got "
            f"{len(channels)}: {', '.join(map(str, channels.values()))}"
        )
    labels = data.get("labels", {})
    if not isinstance(labels, dict) or not labels:
        out.problems.append(f'labels must be an object like {{"background": 0}}, got {labels!r}')
    else:
        for name, value in labels.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
                out.problems.append(
                    f"labels[{name!r}] must be a value 0..255 (region labels are not "
                    f"supported), got {value!r}"
                )
            else:
                out.label_names[value] = str(name)
    ending = str(data.get("file_ending", ".nii.gz"))
    if "dataset" in data:
        entries = data["dataset"]
        if not isinstance(entries, dict):
            out.problems.append(f"dataset must be an object of cases, got {type(entries).__name__}")
            return
        for case, entry in entries.items():
            images = entry.get("images") if isinstance(entry, dict) else None
            if not isinstance(images, list) or len(images) != 1:
                out.problems.append(f"dataset[{case!r}].images must list one file, got {images!r}")
                continue
            label = entry.get("label")
            out.rows.append(DatalistRow(str(case), str(images[0]), label and str(label), "train"))
    else:
        for folder, split in (("imagesTr", "train"), ("imagesTs", "test")):
            out.rows += _nnunet_folder(out, folder, split, ending)
        if not (out.base / "imagesTr").is_dir():
            out.problems.append(f"folder {str(out.base / 'imagesTr')!r} must exist, got none")
        expected = data.get("numTraining")
        found = sum(row.split == "train" for row in out.rows)
        if isinstance(expected, int) and expected != found:
            out.problems.append(f"numTraining is {expected}, but imagesTr holds {found} cases")
    _apply_nnunet_split(out)


def _nnunet_folder(out: Datalist, folder: str, split: str, ending: str) -> list[DatalistRow]:
    where = out.base / folder
    if not where.is_dir():
        return []
    rows = []
    for image in sorted(where.iterdir()):
        if not image.name.endswith(ending) or image.name.startswith("."):
            continue
        stem = image.name[: len(image.name) - len(ending)]
        match = _CHANNEL.search(stem)
        if match is None:
            out.problems.append(
                f"{folder}/{image.name} must be named <case>_0000{ending}, got no channel suffix"
            )
            continue
        if match.group(1) != "0000":
            continue  # another channel: reported through channel_names
        case = stem[: match.start()]
        label = None
        if split == "train":
            label_path = out.base / "labelsTr" / f"{case}{ending}"
            label = f"labelsTr/{case}{ending}"
            if not label_path.is_file():
                out.problems.append(f"case {case!r}: label {label!r} must exist, got none")
                continue
        rows.append(DatalistRow(case, f"{folder}/{image.name}", label, split))
    return rows


def _apply_nnunet_split(out: Datalist) -> None:
    splits = out.source.parent / SPLITS_FILE
    if not splits.is_file():
        return
    try:
        folds = json.loads(splits.read_text(encoding="utf-8"))
        val = set(folds[0]["val"])
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
        out.problems.append(f"{SPLITS_FILE} must list folds with 'val' cases, got {err!r}")
        return
    for row in out.rows:
        if row.case in val and row.split == "train":
            row.split = "val"


def _read_msd(data: dict[str, Any], out: Datalist) -> None:
    labels = data.get("labels", {})
    if isinstance(labels, dict):
        for key, name in labels.items():
            text = str(key).strip()
            if text.isdigit() and 0 <= int(text) <= 255:
                out.label_names[int(text)] = str(name)
            else:
                out.problems.append(f"labels key {key!r} must be a value 0..255, got {key!r}")
    known = [k for k in ("training", "validation", "test") if k in data]
    if not known:
        out.problems.append(
            "a datalist must have a 'training', 'validation' or 'test' list, got keys "
            f"{', '.join(map(repr, data)) or 'none'}"
        )
    seen: set[str] = set()
    for key, split in (("training", "train"), ("validation", "val"), ("test", "test")):
        items = data.get(key, [])
        if not isinstance(items, list):
            out.problems.append(f"{key} must be a list, got {type(items).__name__}")
            continue
        for number, item in enumerate(items):
            row = _msd_row(item, split, f"{key}[{number}]", out.problems)
            if row is None:
                continue
            if row.case in seen:
                out.problems.append(
                    f"{key}[{number}]: case {row.case!r} must be unique, got it twice"
                )
                continue
            seen.add(row.case)
            out.rows.append(row)


def _msd_row(item: Any, split: str, where: str, problems: list[str]) -> DatalistRow | None:
    if isinstance(item, str):
        item = {"image": item}
    if not isinstance(item, dict) or "image" not in item:
        problems.append(f"{where} must be a path or an object with 'image', got {item!r}")
        return None
    image = item["image"]
    if isinstance(image, list):
        if len(image) != 1:
            problems.append(f"{where}.image must be one file (one channel), got {len(image)}")
            return None
        image = image[0]
    label = item.get("label")
    if isinstance(label, list):
        label = label[0] if len(label) == 1 else None
    case = item.get("case") or item.get("case_id") or item.get("id") or case_id(str(image))
    extra = {
        str(k): str(v)
        for k, v in item.items()
        if k not in ("image", "label", "case", "case_id", "id") and not isinstance(v, dict | list)
    }
    return DatalistRow(str(case), str(image), str(label) if label else None, split, extra)
