"""Tissue statistics of one brain segmentation (pure): volumes in mL, brain volume, ICV, GM
fraction, mean vote agreement, and the TIV with each tissue's fraction of it.

:func:`tissue_statistics` takes one label map (and optionally its confidence map) and
:func:`tiv_statistics` adds the TIV from a brain mask; :func:`statistic_keys` and
:func:`tiv_keys` give their keys in order. The batch engine stores these as columns of its
cases frame, and :mod:`medseg.cohort` (which re-exports these names) reports them.

Definitions:

* ``<name>_ml``: voxels of that label x voxel volume (prod(spacing_mm) mm^3) / 1000.
* ``brain_ml``: GM + WM (total brain volume without CSF); ``icv_ml``: every non-background
  label (intracranial volume as segmented); ``gm_fraction``: GM / (GM + WM + CSF).
* ``tiv_ml``: voxels of the brain mask x voxel volume / 1000 (total intracranial volume
  when the skull was stripped); ``<name>_fraction_of_tiv``: ``<name>_ml / tiv_ml``.
* ``mean_agreement``: mean of the confidence map (vote agreement, or the winner's
  probability with ``--fast``) over non-background voxels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from medseg._validate import check_spacing_mm
from medseg.report import check_label_names
from medseg.typing import FloatArray, LabelArray

SUMMARY_KEYS = ("brain_ml", "icv_ml", "gm_fraction", "mean_agreement")
"""Keys of :func:`tissue_statistics` after the per-tissue ``<name>_ml`` keys, in order."""

TIV_KEY = "tiv_ml"
"""Key of the TIV (brain-mask volume, mL) in :func:`tiv_statistics`."""

# Spellings of the three brain tissues, after lower-casing and turning "_" / "-" into spaces.
_TISSUE_ALIASES = {
    "GM": ("gm", "grey matter", "gray matter"),
    "WM": ("wm", "white matter"),
    "CSF": ("csf", "cerebrospinal fluid"),
}


# --------------------------------------------------------------------------------------
# Per-case statistics (pure)


def _norm_name(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def _brain_labels(names: Mapping[int, str]) -> dict[str, int]:
    """Map "GM" / "WM" / "CSF" to the label value whose name spells that tissue."""
    found: dict[str, int] = {}
    for value, name in names.items():
        if value == 0:
            continue
        for tissue, aliases in _TISSUE_ALIASES.items():
            if _norm_name(name) in aliases:
                if tissue in found:
                    raise ValueError(
                        f"label_names must name {tissue} once, got {names[found[tissue]]!r} "
                        f"(label {found[tissue]}) and {name!r} (label {value}); merge them"
                    )
                found[tissue] = value
    return found


def _tissue_labels(label_names: object) -> dict[int, str]:
    """Validated non-background labels -> names, ascending by value."""
    names = check_label_names(label_names)
    tissues = {value: names[value] for value in sorted(names) if value != 0}
    reserved = {f"{name}_ml" for name in tissues.values()} & {*SUMMARY_KEYS, TIV_KEY}
    if reserved:
        raise ValueError(
            f"label_names must not give a key reserved for the summary values, got "
            f"{sorted(reserved)}; rename the tissue"
        )
    return tissues


def statistic_keys(label_names: Mapping[int, str]) -> list[str]:
    """The keys :func:`tissue_statistics` returns for ``label_names``, in order.

    Args:
        label_names: Label value -> tissue name; 0 (background) is skipped.

    Example:
        >>> statistic_keys({0: "background", 1: "CSF", 3: "WM", 2: "GM"})
        ['CSF_ml', 'GM_ml', 'WM_ml', 'brain_ml', 'icv_ml', 'gm_fraction', 'mean_agreement']
    """
    return [f"{name}_ml" for name in _tissue_labels(label_names).values()] + list(SUMMARY_KEYS)


def tissue_statistics(
    labels: LabelArray,
    *,
    spacing_mm: Sequence[float],
    label_names: Mapping[int, str],
    confidence: FloatArray | None = None,
) -> dict[str, float]:
    """Tissue volumes, brain volume, ICV, GM fraction and mean agreement of one label map.

    GM, WM and CSF are found by label name, case-insensitively: "GM", "grey matter",
    "gray matter" (also with "_" or "-"); "WM", "white matter"; "CSF",
    "cerebrospinal fluid". The brain keys that need a tissue whose name is absent are NaN.

    Args:
        labels: Label map, uint8 ``(Z, Y, X)`` (any integer dtype), values 0 (background)
            or keys of ``label_names``.
        spacing_mm: Voxel size ``(z, y, x)`` in mm.
        label_names: Label value -> tissue name; 0 (background) may be absent.
        confidence: Vote agreement (or winner probability), float ``(Z, Y, X)`` in [0, 1],
            or None.

    Returns:
        ``"<name>_ml"`` per non-background label (voxels x prod(spacing_mm) / 1000, mL),
        ``"brain_ml"`` (GM + WM, mL), ``"icv_ml"`` (all non-background labels, mL),
        ``"gm_fraction"`` (GM / (GM + WM + CSF); NaN when that is 0) and
        ``"mean_agreement"`` (mean confidence over non-background voxels; NaN without a
        confidence map or without such voxels). Keys in the order of :func:`statistic_keys`.

    Raises:
        TypeError: if ``labels`` is not an integer ndarray, ``confidence`` not a float
            ndarray, or ``label_names`` not a dict.
        ValueError: for a shape that is not ``(Z, Y, X)``, a label value not in
            ``label_names``, a confidence map of another shape or with values outside
            [0, 1], bad ``spacing_mm``, or label names that give a tissue twice or a key
            reserved for the summary values.

    Example:
        >>> labels = (np.arange(24).reshape(2, 3, 4) % 4).astype(np.uint8)  # 6 voxels each
        >>> s = tissue_statistics(labels, spacing_mm=(20.0, 10.0, 5.0),  # 1 mL voxels
        ...                       label_names={1: "CSF", 2: "GM", 3: "WM"})
        >>> s["GM_ml"], s["brain_ml"], s["icv_ml"], round(s["gm_fraction"], 4)
        (6.0, 12.0, 18.0, 0.3333)
    """
    tissues = _tissue_labels(label_names)
    brain = _brain_labels(tissues)
    counts = _label_counts(labels, tissues)
    voxel_ml = math.prod(check_spacing_mm(spacing_mm)) / 1000.0
    volumes = {value: float(counts[value]) * voxel_ml for value in tissues}
    out = {f"{name}_ml": volumes[value] for value, name in tissues.items()}
    gm, wm, csf = (volumes[brain[t]] if t in brain else math.nan for t in ("GM", "WM", "CSF"))
    out["brain_ml"] = gm + wm
    out["icv_ml"] = float(counts[1:].sum()) * voxel_ml
    total = gm + wm + csf
    out["gm_fraction"] = gm / total if total > 0 else math.nan  # NaN stays NaN
    out["mean_agreement"] = _mean_agreement(labels, confidence)
    return out


def tiv_keys(label_names: Mapping[int, str]) -> list[str]:
    """The keys :func:`tiv_statistics` returns for ``label_names``, in order.

    Example:
        >>> tiv_keys({0: "background", 1: "CSF", 2: "GM", 3: "WM"})
        ['tiv_ml', 'CSF_fraction_of_tiv', 'GM_fraction_of_tiv', 'WM_fraction_of_tiv']
    """
    tissues = _tissue_labels(label_names)
    return [TIV_KEY] + [f"{name}_fraction_of_tiv" for name in tissues.values()]


def tiv_statistics(
    labels: LabelArray,
    brain_mask: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    label_names: Mapping[int, str],
) -> dict[str, float]:
    """The TIV (brain-mask volume) and each tissue's volume as a fraction of it.

    Args:
        labels: Label map, uint8 ``(Z, Y, X)`` (any integer dtype), values 0 or keys of
            ``label_names``.
        brain_mask: The brain mask on the same grid, bool or integer ``(Z, Y, X)`` with
            values 0 and 1 (``medseg predict --brain-mask`` writes uint8).
        spacing_mm: Voxel size ``(z, y, x)`` in mm.
        label_names: Label value -> tissue name; 0 (background) may be absent.

    Returns:
        ``"tiv_ml"`` (mask voxels x prod(spacing_mm) / 1000, mL) and
        ``"<name>_fraction_of_tiv"`` per non-background label (the tissue's voxels over
        the mask's, wherever they lie; NaN for an empty mask), in the order of
        :func:`tiv_keys`.

    Raises:
        TypeError: ``labels`` not an integer ndarray, ``brain_mask`` not a bool or integer
            ndarray. ValueError: as :func:`tissue_statistics`, a mask of another shape, or
            mask values other than 0 and 1.

    Example:
        >>> labels = np.array([[[0, 1, 2, 2]]], np.uint8)
        >>> mask = np.array([[[1, 1, 1, 1]]], np.uint8)
        >>> s = tiv_statistics(labels, mask, spacing_mm=(10.0, 10.0, 10.0),  # 1 mL voxels
        ...                    label_names={1: "CSF", 2: "GM"})
        >>> s["tiv_ml"], s["CSF_fraction_of_tiv"], s["GM_fraction_of_tiv"]
        (4.0, 0.25, 0.5)
    """
    tissues = _tissue_labels(label_names)
    counts = _label_counts(labels, tissues)
    voxel_ml = math.prod(check_spacing_mm(spacing_mm)) / 1000.0
    if not isinstance(brain_mask, np.ndarray) or brain_mask.dtype.kind not in "bui":
        kind = brain_mask.dtype if isinstance(brain_mask, np.ndarray) else type(brain_mask)
        name = getattr(kind, "__name__", kind)
        raise TypeError(
            f"brain_mask must be a bool or integer ndarray (uint8 (Z, Y, X), 1 = brain), "
            f"got {name}; read masks with medseg.io.read_label"
        )
    if brain_mask.shape != labels.shape:
        raise ValueError(
            f"brain_mask must have the shape of labels {labels.shape}, got {brain_mask.shape}"
        )
    inside = int(np.count_nonzero(brain_mask))
    if brain_mask.dtype.kind != "b" and inside != int(np.count_nonzero(brain_mask == 1)):
        values = sorted(int(v) for v in np.unique(brain_mask) if v not in (0, 1))
        raise ValueError(
            f"brain_mask must hold only 0 and 1, got value(s) {values[:5]}; pass a binary mask"
        )
    out = {TIV_KEY: inside * voxel_ml}
    for value, name in tissues.items():
        out[f"{name}_fraction_of_tiv"] = float(counts[value]) / inside if inside else math.nan
    return out


def _label_counts(labels: object, tissues: Mapping[int, str]) -> np.ndarray:
    """Voxels per label value, int ``(max(tissues) + 1,)`` at least; validates ``labels``."""
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "ui":
        kind = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise TypeError(
            f"labels must be an integer ndarray (uint8 (Z, Y, X)), got {kind}; "
            "read label maps with medseg.io.read_label"
        )
    if labels.ndim != 3:
        raise ValueError(
            f"labels must be a (Z, Y, X) label map, got shape {labels.shape}; "
            "add a leading axis for 2D data (Z == 1)"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got minimum {int(labels.min())}")
    counts = np.bincount(labels.ravel(), minlength=max(tissues) + 1)
    unknown = [v for v in np.flatnonzero(counts) if v != 0 and v not in tissues]
    if unknown:
        listing = ", ".join(f"{k}={v}" for k, v in tissues.items())
        raise ValueError(
            f"labels must hold only 0 and values named in label_names ({listing}), got "
            f"unknown label value(s) {[int(v) for v in unknown]}; add them to label_names"
        )
    return counts


def _mean_agreement(labels: np.ndarray, confidence: object) -> float:
    if confidence is None:
        return math.nan
    if not isinstance(confidence, np.ndarray) or confidence.dtype.kind != "f":
        kind = confidence.dtype if isinstance(confidence, np.ndarray) else type(confidence)
        name = getattr(kind, "__name__", kind)
        raise TypeError(
            f"confidence must be a float ndarray (float32 (Z, Y, X) in [0, 1]) or None, got {name}"
        )
    if confidence.shape != labels.shape:
        raise ValueError(
            f"confidence must have the shape of labels {labels.shape}, got {confidence.shape}"
        )
    tissue = confidence[labels != 0].astype(np.float64)
    bad = ~((tissue >= 0) & (tissue <= 1))  # also catches NaN
    if bad.any():
        raise ValueError(
            f"confidence must be in [0, 1] on the labelled voxels, got {int(bad.sum())} "
            f"voxel(s) outside (e.g. {float(tissue[bad][0])!r}); pass the vote-agreement map"
        )
    return float(tissue.mean()) if tissue.size else math.nan
