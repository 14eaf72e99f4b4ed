"""Tissue volumes of a brain segmentation: the per-case report and its plausibility check.

:func:`write_volume_report` writes what ``medseg predict`` reports for a brain model
(``<stem>_volumes.csv``): each tissue's volume in mL and as a fraction of the intracranial
volume (TIV, the brain mask's volume), the brain (every tissue) and the TIV.
:func:`warn_implausible_brain` warns, in one line, when the brain is outside an adult's
range, the first sign of a skull left on, a partial scan, a child or another contrast.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping
from pathlib import Path

from medseg.io import atomic_output
from medseg.typing import PathLike

PLAUSIBLE_BRAIN_ML = (800.0, 2200.0)
"""Adult brain volume (CSF + GM + WM), mL, outside which a segmentation gets a warning."""


def warn_implausible_brain(volumes_ml: Mapping[str, float], what: str) -> None:
    """Warn (one line) when the tissues add up to a brain outside an adult's range.

    Args:
        volumes_ml: Tissue name -> volume in mL (background excluded).
        what: How the warning names the input, e.g. ``"input 't1.nii.gz'"``.

    Example:
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_implausible_brain({"GM": 5000.0, "WM": 2500.0}, "input 'x'")
        >>> "got 7.50 L" in str(caught[0].message)
        True
    """
    low, high = PLAUSIBLE_BRAIN_ML
    brain = float(sum(volumes_ml.values()))
    if low <= brain <= high:
        return
    hint = (
        "; is it a skull-stripped or raw T1 of an adult head? try --skull-strip always"
        if brain > high
        else "; is it a whole adult brain T1 (not a slab, a child, or another contrast)?"
    )
    warnings.warn(
        f"{what}: brain volume (CSF + GM + WM) must be about {low / 1000:.1f}-"
        f"{high / 1000:.1f} L for an adult, got {brain / 1000:.2f} L{hint}",
        stacklevel=3,
    )


def write_volume_report(
    path: PathLike,
    volumes_ml: Mapping[str, float],
    tiv_ml: float | None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a case's tissue volumes as CSV, atomically.

    Columns: ``structure, volume_ml, fraction_of_tiv``; rows: each tissue, ``brain`` (their
    sum) and ``TIV``. ``fraction_of_tiv`` is empty without a TIV.

    Args:
        path: Output ``.csv``.
        volumes_ml: Tissue name -> volume in mL.
        tiv_ml: The intracranial volume in mL, or None.
        overwrite: Replace an existing file.
    """
    rows = [*volumes_ml.items(), ("brain", float(sum(volumes_ml.values())))]
    if tiv_ml is not None:
        rows.append(("TIV", tiv_ml))
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["structure", "volume_ml", "fraction_of_tiv"])
            for name, ml in rows:
                frac = f"{ml / tiv_ml:.4f}" if tiv_ml else ""
                writer.writerow([name, f"{ml:.2f}", frac])
    return Path(path)
