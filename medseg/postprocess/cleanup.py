"""Connected-component clean-up of label maps, part of :mod:`medseg.postprocess`.

Connected-component clean-up (nnU-Net's "remove all but the largest component", Isensee
et al., Nature Methods 2021): :func:`keep_largest_component` keeps, for each chosen class
(or for all foreground labels taken as one), only its largest connected component and
sets the other voxels of that class to background 0; :func:`select_cleanup` decides from
validation cases which of these clean-ups to apply (foreground first, then each class,
each kept only if it does not lower the mean validation Dice of the classes), and
:func:`apply_cleanup` applies the decision to new predictions. :func:`select_cleanup`
lives in :mod:`medseg.postprocess.tuning`, next to the CRF's parameter search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from medseg.typing import LabelArray

# ---------------------------------------------------------------------------
# Connected-component clean-up
# ---------------------------------------------------------------------------


def _structure(connectivity: object) -> np.ndarray:
    if isinstance(connectivity, (bool, np.bool_)) or not isinstance(
        connectivity, (int, np.integer)
    ):
        raise TypeError(f"connectivity must be an int in {{1, 2, 3}}, got {connectivity!r}")
    if connectivity not in (1, 2, 3):
        raise ValueError(
            f"connectivity must be 1 (faces), 2 (faces + edges) or 3 (full), got {connectivity}"
        )
    return ndimage.generate_binary_structure(3, int(connectivity))


def _check_pred(pred: object, name: str = "pred") -> np.ndarray:
    if not isinstance(pred, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy uint8 (Z, Y, X) label map, got {type(pred).__name__}"
        )
    if not np.issubdtype(pred.dtype, np.integer):
        raise TypeError(f"{name} must be an integer label map, got dtype {pred.dtype}")
    if pred.ndim != 3:
        raise ValueError(
            f"{name} must be a (Z, Y, X) label map, got shape {pred.shape}; "
            "add a leading axis for 2D data (Z == 1)"
        )
    return pred


def _largest_component(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Bool mask of the largest component of ``mask`` (the first in raster order on ties)."""
    components, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def keep_largest_component(
    pred: LabelArray,
    *,
    classes: Sequence[int] | Literal["foreground"],
    connectivity: int = 3,
) -> np.ndarray:
    """Keep only the largest connected component of each class; the rest becomes 0.

    nnU-Net's "remove all but the largest component". For each label in ``classes`` the
    voxels of that label outside its largest component are set to background 0 (labels
    not listed are unchanged). With ``classes="foreground"`` all non-zero labels are taken
    together as one mask, and every non-zero voxel outside its largest component becomes 0
    (the labels inside keep their values). On equal sizes the component met first in
    raster (z, y, x) order is kept.

    Args:
        pred: Predicted labels, integer ``(Z, Y, X)`` (normally uint8), 0 = background.
        classes: Labels to clean, e.g. ``[1, 2, 3]``, or ``"foreground"``.
        connectivity: Neighbours: 1 = faces (6 in 3D, 4 in 2D), 2 = faces and edges
            (18, 8), 3 = also corners (26, 8), as ``scipy.ndimage.generate_binary_structure``.
            The default, full connectivity, is nnU-Net's (skimage ``label``'s default).

    Returns:
        A new label map, same dtype and shape as ``pred``.

    Raises:
        TypeError: if ``pred`` is not an integer ndarray or ``classes`` has the wrong type.
        ValueError: if ``pred`` is not 3D, ``classes`` holds a negative label or 0, or
            ``connectivity`` is not 1, 2 or 3.

    Example:
        >>> pred = np.array([[[1, 1, 0, 1, 2, 2, 0, 2]]], np.uint8)
        >>> keep_largest_component(pred, classes=[1, 2])[0, 0].tolist()
        [1, 1, 0, 0, 2, 2, 0, 0]
        >>> keep_largest_component(pred, classes="foreground")[0, 0].tolist()
        [0, 0, 0, 1, 2, 2, 0, 0]
    """
    p = _check_pred(pred)
    structure = _structure(connectivity)
    out = p.copy()
    if isinstance(classes, str):
        if classes != "foreground":
            raise ValueError(
                f'classes must be a sequence of labels or "foreground", got {classes!r}'
            )
        foreground = p != 0
        out[foreground & ~_largest_component(foreground, structure)] = 0
        return out
    for label in _check_cleanup_classes(classes):
        mask = p == label
        if mask.any():
            out[mask & ~_largest_component(mask, structure)] = 0
    return out


def _check_cleanup_classes(classes: object) -> list[int]:
    if isinstance(classes, (bytes,)) or not isinstance(classes, Sequence | np.ndarray):
        raise TypeError(
            f'classes must be a sequence of int labels or "foreground", got {classes!r}'
        )
    labels = []
    for c in classes:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
            raise TypeError(f"classes must hold int labels, got {c!r} in {list(classes)}")
        if c <= 0:
            raise ValueError(
                f"classes must hold foreground labels > 0, got {int(c)} in {list(classes)}; "
                "background cannot be cleaned"
            )
        labels.append(int(c))
    return labels


@dataclass(frozen=True)
class CleanupCandidate:
    """One clean-up tried by :func:`select_cleanup`.

    Attributes:
        target: ``"foreground"`` or the class label cleaned.
        dice_before: Mean validation Dice of the classes before this step.
        dice_after: The same after applying it (on top of the steps already applied).
        applied: Whether it was kept (``dice_after >= dice_before``).
    """

    target: int | str
    dice_before: float
    dice_after: float
    applied: bool


@dataclass(frozen=True)
class CleanupDecision:
    """Which clean-ups to apply, as decided by :func:`select_cleanup`.

    Attributes:
        foreground: Keep the largest component of all foreground labels together first.
        classes: Then keep the largest component of each of these labels.
        connectivity: Neighbourhood used (see :func:`keep_largest_component`).
        candidates: Every step tried, in order, with its Dice before and after.
    """

    foreground: bool
    classes: tuple[int, ...]
    connectivity: int
    candidates: tuple[CleanupCandidate, ...]


def apply_cleanup(pred: LabelArray, decision: CleanupDecision) -> np.ndarray:
    """Apply the clean-ups chosen by :func:`select_cleanup` to one prediction.

    Args:
        pred: Predicted labels, integer ``(Z, Y, X)``, 0 = background.
        decision: What to apply.

    Returns:
        The cleaned label map, same dtype and shape (a copy even if nothing is applied).

    Example:
        >>> decision = CleanupDecision(False, (1,), 1, ())
        >>> apply_cleanup(np.array([[[1, 0, 1, 1]]], np.uint8), decision)[0, 0].tolist()
        [0, 0, 1, 1]
    """
    if not isinstance(decision, CleanupDecision):
        raise TypeError(f"decision must be a CleanupDecision, got {type(decision).__name__}")
    out = _check_pred(pred).copy()
    if decision.foreground:
        out = keep_largest_component(out, classes="foreground", connectivity=decision.connectivity)
    if decision.classes:
        out = keep_largest_component(
            out, classes=list(decision.classes), connectivity=decision.connectivity
        )
    return out
