"""File checks for :func:`medseg.manifest.validate_manifest`: one case's image and label
are opened, their grids compared and the label values checked by the manifest's label
format, collecting every problem (ARCHITECTURE.md section 9).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg import io
from medseg._manifest_types import Case, Manifest

_MAX_VALUES_SHOWN = 8  # other values listed per binary label problem


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
