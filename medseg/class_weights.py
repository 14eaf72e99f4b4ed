"""Dataset class weights for a weighted cross-entropy: median and natural frequency balancing.

Over any iterable of label maps (streamed, one map in memory at a time) or a manifest:
median frequency balancing (Eigen & Fergus, ICCV 2015; SegNet, Badrinarayanan et al.,
TPAMI 2017) and natural frequency balancing (SegNet: no balancing, weight 1), see the
functions. Label maps are uint8 ``(Z, Y, X)`` (ARCHITECTURE.md section 2).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np

from medseg import io
from medseg._validate import check_integer, describe
from medseg.manifest import Manifest
from medseg.typing import LabelArray

CLASS_WEIGHT_METHODS = ("median", "natural")
"""What :func:`manifest_class_weights` computes (``loss.class_weights`` in a config)."""


def class_frequencies(
    labels: Iterable[LabelArray], *, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Count pixels per class over label maps, streaming (one map in memory at a time).

    Args:
        labels: An iterable (list, generator) of label maps, each integer or bool, any
            shape (normally uint8 ``(Z, Y, X)``), values in ``0..num_classes-1``. Each map
            counts as one image. A single ndarray is refused (iterating it would take its
            first axis as images); wrap it: ``[label]``.
        num_classes: K, the number of classes, background included; >= 1.

    Returns:
        ``(pixel_counts, image_pixels)``, both int64 ``(K,)``: the pixels of class c over
        all maps, and the total pixels of the maps in which class c is present (0 for a
        class never present).

    Raises:
        TypeError: if ``labels`` is a single ndarray or not iterable, or a map is not an
            integer or bool ndarray.
        ValueError: if ``num_classes`` < 1 or a map holds a value outside 0..K-1.

    Example:
        >>> maps = [np.array([[[0, 0, 1, 1]]]), np.array([[[0, 2, 2, 2]]])]
        >>> counts, image_pixels = class_frequencies(maps, num_classes=3)
        >>> counts.tolist(), image_pixels.tolist()
        ([3, 2, 3], [8, 4, 4])
    """
    num_classes = _check_num_classes(num_classes)
    counts = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for index, label in enumerate(_iterate_labels(labels)):
        per_image = _count_classes(label, num_classes, f"labels[{index}]")
        counts += per_image
        image_pixels[per_image > 0] += label.size
    return counts, image_pixels


def median_frequency_weights(labels: Iterable[LabelArray], *, num_classes: int) -> np.ndarray:
    """Return median-frequency-balancing class weights (SegNet; Eigen & Fergus 2015).

    ``freq(c) = pixels of class c / total pixels of the images where c is present`` and
    ``weight(c) = median(freq) / freq(c)``, the median taken over the classes present
    (mean of the two middle values for an even count), so large classes get weights < 1
    and the smallest ones the largest (Badrinarayanan et al., "SegNet", TPAMI 2017,
    section 3.2). A class never present gets weight 0 and a warning.

    Args:
        labels: Iterable of label maps, each one image; see :func:`class_frequencies`.
        num_classes: K, background included.

    Returns:
        Class weights, float64 ``(K,)``, >= 0 (unitless), for a weighted cross-entropy.

    Raises:
        TypeError, ValueError: as :func:`class_frequencies`; ValueError also if the maps
            hold no pixel at all.

    Warns:
        UserWarning: naming the classes that never occur (weight 0).

    Example:
        >>> maps = [np.array([[[0, 0, 1, 1]]]), np.array([[[0, 2, 2, 2]]])]
        >>> freq = [3 / 8, 2 / 4, 3 / 4]  # median 0.5
        >>> median_frequency_weights(maps, num_classes=3).round(4).tolist()
        [1.3333, 1.0, 0.6667]
    """
    counts, image_pixels = class_frequencies(labels, num_classes=num_classes)
    return _weights_from_frequencies(counts, image_pixels, "median", stacklevel=3)


def natural_frequency_weights(labels: Iterable[LabelArray], *, num_classes: int) -> np.ndarray:
    """Return natural-frequency-balancing class weights: 1 for every class present.

    SegNet (Badrinarayanan et al., TPAMI 2017, section 3.2) compares median frequency
    balancing with "training the different variants without class balancing or
    equivalently using natural frequency balancing": every pixel counts once, so each
    class weighs in with its natural frequency. The weights are therefore 1, i.e. an
    unweighted loss. For symmetry with :func:`median_frequency_weights`, a class never
    present gets weight 0 and a warning (it has no pixel, so the loss is the same).

    Args:
        labels: Iterable of label maps, each one image; see :func:`class_frequencies`.
        num_classes: K, background included.

    Returns:
        Class weights, float64 ``(K,)``: 1 for classes present, 0 for absent ones.

    Raises:
        TypeError, ValueError: as :func:`median_frequency_weights`.

    Warns:
        UserWarning: naming the classes that never occur (weight 0).

    Example:
        >>> maps = [np.array([[[0, 0, 1, 1]]]), np.array([[[0, 2, 2, 2]]])]
        >>> natural_frequency_weights(maps, num_classes=3).tolist()
        [1.0, 1.0, 1.0]
    """
    counts, image_pixels = class_frequencies(labels, num_classes=num_classes)
    return _weights_from_frequencies(counts, image_pixels, "natural", stacklevel=3)


def manifest_class_weights(
    manifest: Manifest,
    *,
    num_classes: int,
    method: Literal["median", "natural"] = "median",
    split: str | None = None,
) -> np.ndarray:
    """Return class weights over the label maps of a manifest, read one at a time.

    Each case's label map (read with :func:`medseg.io.read_label`, uint8 ``(Z, Y, X)``)
    counts as one image, a whole volume for 3D data. Cases without a label are skipped.

    Args:
        manifest: A loaded manifest (:func:`medseg.manifest.load_manifest`).
        num_classes: K, background included.
        method: ``"median"`` (:func:`median_frequency_weights`) or ``"natural"``
            (:func:`natural_frequency_weights`).
        split: Use only this split (``"train"``, ``"val"`` or ``"test"``); default all
            cases. Compute training weights on ``"train"``.

    Returns:
        Class weights, float64 ``(K,)``, >= 0.

    Raises:
        TypeError: if ``manifest`` is not a Manifest.
        ValueError: for a bad ``method`` or ``split``, no labelled case, or a label map
            with values outside 0..K-1 (the message names its file).
        FileNotFoundError: if a label file is missing.

    Warns:
        UserWarning: naming the classes that never occur (weight 0).
    """
    if not isinstance(manifest, Manifest):
        raise TypeError(
            f"manifest must be a medseg.manifest.Manifest, got {type(manifest).__name__}; "
            "load it with load_manifest(path, data_root=...)"
        )
    if method not in CLASS_WEIGHT_METHODS:
        raise ValueError(
            f"method must be one of {', '.join(map(repr, CLASS_WEIGHT_METHODS))}, got {method!r}"
        )
    num_classes = _check_num_classes(num_classes)
    cases = manifest.cases if split is None else manifest.split(split)
    paths = [case.label for case in cases if case.label is not None]
    if not paths:
        where = "" if split is None else f" in split {split!r}"
        raise ValueError(
            f"manifest {str(manifest.path)!r} must have at least one case with a label"
            f"{where}, got none; add label paths or choose another split"
        )
    counts = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for path in paths:
        label = io.read_label(path).array
        per_image = _count_classes(label, num_classes, f"label file {str(path)!r}")
        counts += per_image
        image_pixels[per_image > 0] += label.size
    return _weights_from_frequencies(counts, image_pixels, method, stacklevel=3)


def _weights_from_frequencies(
    counts: np.ndarray, image_pixels: np.ndarray, method: str, *, stacklevel: int
) -> np.ndarray:
    present = counts > 0
    if not present.any():
        raise ValueError(
            "labels must hold at least one pixel, got no label map or only empty ones; "
            "pass a non-empty list of label maps"
        )
    weights = np.zeros(counts.shape, dtype=np.float64)
    if method == "median":
        freq = counts[present] / image_pixels[present]
        weights[present] = np.median(freq) / freq
    else:
        weights[present] = 1.0
    if not present.all():
        absent = np.flatnonzero(~present).tolist()
        warnings.warn(
            f"classes {absent} never occur in the label maps; their weight is 0. "
            "Check num_classes or the label maps",
            stacklevel=stacklevel + 1,
        )
    return weights


def _iterate_labels(labels: Iterable[LabelArray]) -> Iterator[np.ndarray]:
    if isinstance(labels, np.ndarray):
        raise TypeError(
            f"labels must be an iterable of label maps, got a single ndarray of shape "
            f"{labels.shape}; wrap it in a list: [label]"
        )
    try:
        iterator = iter(labels)
    except TypeError as err:
        raise TypeError(
            f"labels must be an iterable of label maps, got {type(labels).__name__}"
        ) from err
    yield from iterator


def _count_classes(label: object, num_classes: int, name: str) -> np.ndarray:
    """Pixels per class of one map, int64 (K,), after checking its dtype and values."""
    if not isinstance(label, np.ndarray) or not (
        label.dtype == np.bool_ or np.issubdtype(label.dtype, np.integer)
    ):
        raise TypeError(
            f"{name} must be an integer or bool label map, got {describe(label)}; "
            "cast with astype(np.uint8)"
        )
    flat = label.ravel()
    if flat.dtype == np.bool_:
        flat = flat.view(np.uint8)
    if flat.size:
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"{name} values must be in 0..{num_classes - 1} (num_classes={num_classes}), "
                f"got {bad}; raise num_classes or fix the label map"
            )
    return np.bincount(flat, minlength=num_classes).astype(np.int64, copy=False)


def _check_num_classes(num_classes: object) -> int:
    return check_integer(num_classes, "num_classes", minimum=1, unit="background included")
