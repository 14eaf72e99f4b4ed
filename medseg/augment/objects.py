"""Object contrast augmentation: some annotated objects of a training patch made fainter.

Why (issue #16): the nucleus model misses faint nuclei on images it has never seen. On the
33 external DSB2018 test images, fluorescence nuclei whose median grey value sits 10-20 %
of the image's range above the background are found (IoU > 0.5) 58 % of the time, against
86 % at the same contrast on the validation images; the faint pale nuclei of unseen H&E
tissue are almost never found. The training images rarely hold a faint nucleus next to
bright ones, so the network learns that a nucleus is among the brightest things in a field.

The operation, on a normalised patch ``x`` ``(C, Y, X)`` and its class map ``t``
``(Y, X)`` (after :func:`medseg.normalize` and before the spatial augmentation):

1. The objects are the 4-connected components of ``t == 1`` (the nucleus interior of the
   boundary head's targets, the foreground of the two-class targets). Every pixel of the
   other object classes (``t >= 2``: the boundary rim) and every background pixel within
   ``OBJECT_MARGIN`` px of an object joins its nearest object (Euclidean distance transform),
   so the region covers the rim and the dim edge outside a tight annotation. (A rim pixel
   whose interior lies outside the patch joins the nearest object in the patch.)
2. Each object is chosen with probability ``prob``; a chosen object gets a factor ``f``
   uniform in ``factor_range``, the others 1.
3. The per-pixel factor ``F`` is 1 off the objects and ``f`` on object ``k``, smoothed by a
   Gaussian of ``OBJECT_SMOOTH`` px (edges mirrored) so no step appears at the region's edge.
4. ``x' = b + F (x - b)`` per channel, ``b`` the channel's median over the background pixels
   (``t == 0``) of the patch: a chosen object keeps its texture and shape, at ``f`` times
   its contrast above the background. A patch with no background or no object is unchanged.

The random numbers come from the caller's generator (one uniform per object for the choice,
then one per object for the factor), drawn only when the option is on, so a config without
it draws the same numbers as before it existed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

OBJECT_MARGIN = 2.0
"""Background pixels within this distance (px) of an object join it (its dim edge)."""

OBJECT_SMOOTH = 1.0
"""Standard deviation (px) of the Gaussian that smooths the factor map."""


def object_regions(classes: np.ndarray, margin: float = OBJECT_MARGIN) -> np.ndarray:
    """The object regions of a class map: ``(Y, X)`` int32, 0 outside, ``k`` on object ``k``.

    Objects are the 4-connected components of ``classes == 1``; pixels of classes ``>= 2``
    and background pixels within ``margin`` px join the nearest object.

    Example:
        >>> t = np.zeros((1, 7), np.int64); t[0, 1] = 1; t[0, 2] = 2; t[0, 5] = 1
        >>> object_regions(t, margin=1.0).tolist()
        [[1, 1, 1, 0, 2, 2, 2]]
    """
    if classes.ndim != 2:
        raise ValueError(f"classes must be 2D (Y, X), got shape {tuple(classes.shape)}")
    seeds, count = ndimage.label(classes == 1)
    if count == 0:
        return seeds.astype(np.int32)
    distance, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    nearest = seeds[iy, ix]
    joins = (classes >= 2) | ((classes == 0) & (distance <= margin))
    return np.where((seeds > 0) | joins, nearest, 0).astype(np.int32)


def sample_object_factors(
    rng: np.random.Generator, count: int, prob: float, factor_range: tuple[float, float]
) -> np.ndarray:
    """Contrast factors of ``count`` objects: ``f`` uniform in ``factor_range`` for each
    object chosen with probability ``prob``, 1 for the others; float64 ``(count,)``."""
    chosen = rng.random(count) < prob
    factors = rng.uniform(factor_range[0], factor_range[1], count)
    return np.where(chosen, factors, 1.0)


def scale_object_contrast(
    image: np.ndarray, classes: np.ndarray, factors: np.ndarray, regions: np.ndarray | None = None
) -> np.ndarray:
    """``image`` ``(C, Y, X)`` with object ``k``'s contrast above the background scaled by
    ``factors[k - 1]`` (module docstring, steps 3-4); float32, a new array.

    Example:
        >>> t = np.zeros((1, 9), np.int64); t[0, 4] = 1
        >>> x = np.where(t == 1, 1.0, 0.2)[None].astype(np.float32)
        >>> y = scale_object_contrast(x, t, np.array([0.5]))
        >>> round(float(y[0, 0, 4]), 2) < 1.0, round(float(y[0, 0, 0]), 3)
        (True, 0.2)
    """
    if regions is None:
        regions = object_regions(classes)
    out = image.astype(np.float32, copy=True)
    background = classes == 0
    if not background.any() or regions.max() == 0:
        return out
    per_object = np.concatenate([[1.0], np.asarray(factors, np.float64)])
    factor = ndimage.gaussian_filter(per_object[regions], OBJECT_SMOOTH, mode="mirror")
    for c in range(out.shape[0]):
        level = float(np.median(out[c][background]))
        out[c] = level + factor * (out[c] - level)
    return out


def augment_object_contrast(
    images: np.ndarray,
    classes: np.ndarray,
    rng: np.random.Generator,
    prob: float,
    factor_range: tuple[float, float],
) -> np.ndarray:
    """:func:`scale_object_contrast` on each patch of a batch ``(N, C, Y, X)`` with class
    maps ``(N, Y, X)``, the factors drawn from ``rng`` patch by patch."""
    out = np.empty(images.shape, np.float32)
    for i in range(len(images)):
        regions = object_regions(classes[i])
        factors = sample_object_factors(rng, int(regions.max()), prob, factor_range)
        out[i] = scale_object_contrast(images[i], classes[i], factors, regions)
    return out


def object_contrast_torch(inputs: Any, targets: Any, rng: np.random.Generator, a: Any) -> Any:
    """:func:`augment_object_contrast` on a torch batch (any device): ``inputs``
    ``(N, C, Y, X)``, ``targets`` ``(N, Y, X)``; ``a`` holds ``object_contrast_prob`` and
    ``object_contrast_range``. Returns the new inputs on the same device and dtype."""
    import torch

    images = inputs.detach().float().cpu().numpy()
    classes = targets.detach().cpu().numpy()
    out = augment_object_contrast(
        images, classes, rng, a.object_contrast_prob, a.object_contrast_range
    )
    return torch.from_numpy(out).to(device=inputs.device, dtype=inputs.dtype)
