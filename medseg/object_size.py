"""Object size: predicting a 2D image at the scale whose objects a model knows.

A 2D object model learns the object sizes of its training images: the shipped nuclei
model saw nuclei of about 7 to 50 pixels across. Much larger nuclei (a 100-pixel nucleus
under a high-magnification objective) are wider than its field of view, so their flat
interiors look like background and the model breaks them into fragments. Cellpose asks
for the objects' diameter and rescales the image to its training diameter; StarDist
users rescale by hand.

This module holds the pure parts of that (arrays in, arrays out):

* :func:`object_diameters`: the equivalent diameters of labelled objects, from which a
  training run records its median (the checkpoint's ``extra["object_size"]``), so that
  ``medseg predict --diameter D`` can scale an image by ``median / D``;
* :func:`rescale_image` and :func:`resize_probs`: to a scale and back (bilinear);
* :func:`foreground_confidence` and :func:`choose_scale`: the ``auto`` choice. The
  image is predicted at each of :data:`AUTO_SCALES` (the smaller ones cost little), and
  the scale whose foreground the model is most confident about wins, 1 on a tie. On
  images of the validation split zoomed 3x and 5x this recovered most of what the right
  scale gives, and at their own size it kept scale 1 on every image
  (``docs/REPRODUCTION.md``, "Object size").

Arrays follow ``STYLE.md`` §2: images float32 ``(C, Z, Y, X)`` and probabilities float32
``(K, Z, Y, X)``, each z plane resized on its own; label maps for diameters are 2D.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

#: Candidate scales of ``--diameter auto``: the image as it is and downscaled 2, 4 and 8x.
AUTO_SCALES: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)

#: Fixed scales (``--diameter D``) are kept within these bounds.
SCALE_LIMITS: tuple[float, float] = (1.0 / 16.0, 4.0)

#: A candidate scale is skipped when the image's shorter side would be below this (px).
MIN_SCALED_SIDE = 32


def object_diameters(labels: np.ndarray, *, instances: bool) -> np.ndarray:
    """The equivalent diameter ``2 * sqrt(area / pi)`` of every object of a 2D label map.

    Args:
        labels: Object ids (``instances``) or classes, integer ``(Z, Y, X)`` with
            ``Z == 1`` or ``(Y, X)``; 0 is background.
        instances: True: each non-zero id is one object. False: each 8-connected
            component of the non-zero pixels is one object.

    Returns:
        Diameters in pixels, float64 ``(N,)``, in no particular order (empty when the map
        has no object).

    Example:
        >>> m = np.zeros((1, 9, 9), np.uint8); m[0, 1:3, 1:3] = 1; m[0, 5:9, 5:9] = 1
        >>> object_diameters(m, instances=False).round(2).tolist()
        [2.26, 4.51]
    """
    plane = np.asarray(labels)
    if plane.ndim == 3:
        if plane.shape[0] != 1:
            raise ValueError(f"labels must be 2D (Z == 1), got shape {plane.shape}")
        plane = plane[0]
    if plane.ndim != 2 or not np.issubdtype(plane.dtype, np.integer):
        raise ValueError(f"labels must be an integer (Y, X) map, got {plane.dtype} {plane.shape}")
    if not instances:
        plane, _ = ndi.label(plane != 0, structure=np.ones((3, 3), bool))
    areas = np.bincount(plane.ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    return 2.0 * np.sqrt(areas / np.pi)


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """The ``(y, x)`` size of an image of ``shape`` at ``scale`` (rounded, at least 1)."""
    return (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))


def usable_scales(shape: tuple[int, int], scales: tuple[float, ...]) -> tuple[float, ...]:
    """The scales at which an image of ``shape`` ``(y, x)`` keeps a shorter side of at
    least :data:`MIN_SCALED_SIDE` pixels (scale 1 is always kept)."""
    side = min(shape)
    return tuple(s for s in scales if s == 1.0 or side * s >= MIN_SCALED_SIDE)


def rescale_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2D image to ``shape`` ``(y, x)``: bilinear, antialiased when shrinking.

    Args:
        image: float32 ``(C, Z, Y, X)``; each z plane is resized on its own.
        shape: The new ``(y, x)`` size in pixels.

    Returns:
        float32 ``(C, Z, y, x)``, contiguous.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be float32 (C, Z, Y, X), got shape {image.shape}")
    shrink = shape[0] < image.shape[2] or shape[1] < image.shape[3]
    return _resize(image, shape, antialias=shrink)


def _resize(array: np.ndarray, shape: tuple[int, int], *, antialias: bool) -> np.ndarray:
    """Bilinear resize of the last two axes of ``(C, Z, Y, X)``, plane by plane."""
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(1, 0, 2, 3)
    out = F.interpolate(
        t, size=(int(shape[0]), int(shape[1])), mode="bilinear", antialias=antialias,
        align_corners=False,
    )  # fmt: skip
    return np.ascontiguousarray(out.permute(1, 0, 2, 3).numpy(), dtype=np.float32)


def resize_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Class probabilities of a rescaled prediction brought back to ``shape`` ``(y, x)``.

    Bilinear interpolation of each class, which keeps every pixel's probabilities
    summing to 1 (a convex combination of distributions).

    Args:
        probs: float32 ``(K, Z, y, x)``.
        shape: The original ``(Y, X)``.

    Returns:
        float32 ``(K, Z, Y, X)``.
    """
    if probs.ndim != 4:
        raise ValueError(f"probs must be float32 (K, Z, Y, X), got shape {probs.shape}")
    return _resize(probs, shape, antialias=False)


def foreground_confidence(probs: np.ndarray, *, threshold: float = 0.5) -> float:
    """How sure a model is about the objects it found: the mean, over foreground pixels,
    of the winning class's probability.

    A pixel is foreground where ``1 - p(background) > threshold``. Objects far larger
    than the training objects come out as fragments, with many uncertain pixels;
    the same image at the right scale gives whole objects with sure pixels.

    Args:
        probs: Class probabilities, float ``(K, Z, Y, X)``, class 0 background.
        threshold: Foreground probability above which a pixel counts, in (0, 1).

    Returns:
        The mean in [0, 1], or NaN when no pixel is foreground.

    Example:
        >>> p = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.6]], np.float32)[:, None, None]
        >>> round(foreground_confidence(p), 3)  # pixels 2 and 3: max 0.8 and 0.6
        0.7
    """
    if probs.ndim != 4 or probs.shape[0] < 2:
        raise ValueError(f"probs must be (K, Z, Y, X) with K >= 2, got shape {probs.shape}")
    fg = (1.0 - probs[0]) > threshold
    if not fg.any():
        return float("nan")
    return float(probs.max(axis=0)[fg].mean())


def choose_scale(confidence: Mapping[float, float]) -> float:
    """The scale with the highest :func:`foreground_confidence`; scale 1 on a tie or when
    every value is NaN.

    Example:
        >>> choose_scale({1.0: 0.63, 0.5: 0.90, 0.25: 0.90})
        0.5
        >>> choose_scale({1.0: 0.91, 0.5: 0.87})
        1.0
    """
    best, best_value = 1.0, confidence.get(1.0, float("nan"))
    for scale in sorted(confidence, reverse=True):
        value = confidence[scale]
        if np.isnan(value):
            continue
        if np.isnan(best_value) or value > best_value:
            best, best_value = scale, value
    return best


def scale_for_diameter(diameter: float, training_diameter: float) -> float:
    """The scale that brings objects of ``diameter`` px to the training median.

    Raises:
        ValueError: ``diameter`` is not a positive finite number, or the scale falls
            outside :data:`SCALE_LIMITS`.

    Example:
        >>> scale_for_diameter(72.0, 18.0)
        0.25
    """
    if not np.isfinite(diameter) or diameter <= 0:
        raise ValueError(f"diameter must be a positive number of pixels, got {diameter!r}")
    scale = float(training_diameter) / float(diameter)
    low, high = SCALE_LIMITS
    if not low <= scale <= high:
        raise ValueError(
            f"diameter must be between {training_diameter / high:g} and "
            f"{training_diameter / low:g} pixels for this model (trained on objects of "
            f"{training_diameter:g} px), got {diameter:g}"
        )
    return scale


def describe_scale(scale: float) -> str:
    """One line for a prediction's scale (empty for 1).

    Example:
        >>> describe_scale(0.25)
        'predicted at scale 0.25: the image shrunk 4x, to objects of the training size'
    """
    if scale == 1.0:
        return ""
    how = f"shrunk {1 / scale:.3g}x" if scale < 1 else f"enlarged {scale:.3g}x"
    return f"predicted at scale {scale:.3g}: the image {how}, to objects of the training size"
