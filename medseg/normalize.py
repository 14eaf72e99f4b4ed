"""Per-volume intensity normalisation inside a head (foreground) mask.

MRI intensities have no absolute scale: IBSR-18 maxima range from 79 to over 1000
between subjects. Each volume is therefore normalised on its own, using only the
voxels inside its mask (by default the non-zero voxels, which is the head of a
skull-stripped T1), as nnU-Net does for MRI with its non-zero mask:

* ``"zscore"``: (x - mean) / std of the masked voxels;
* ``"percentile"``: (x - p_low) / (p_high - p_low) with the masked voxels'
  percentiles (default 1 and 99), so the bulk of the head spans [0, 1].

Voxels outside the mask are set to 0 after normalisation, so background looks the
same in every volume. The statistics used are returned, to be stored with a model.

Microscopy comes in several stains: fluorescence (bright nuclei on a dark background),
brightfield and H&E (dark, coloured nuclei on a light background).
:func:`grey_dark_background` maps them all to one grey channel with a dark background,
so that one network sees one kind of image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("zscore", "percentile")

LIGHT_BACKGROUND_SKEW = 0.5
"""Grey images whose intensity skewness is below this have a light background.

Few bright objects on a dark background skew the histogram right (DSB2018 stage-1
training set, fluorescence: skewness 0.68 to 23.8); few dark objects on a light
background skew it left (brightfield: -2.65 to -1.54; colour H&E: -7.7 to 0.2).
The threshold lies between the two groups of the training images."""


@dataclass(frozen=True)
class NormalizationStats:
    """What a normalisation used: ``(x - offset) / scale`` inside the mask, 0 outside."""

    method: str
    offset: float
    scale: float
    num_masked: int

    def as_dict(self) -> dict:
        return asdict(self)


def normalize_intensity(
    image: np.ndarray,
    *,
    method: str = "zscore",
    mask: np.ndarray | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> tuple[np.ndarray, NormalizationStats]:
    """Normalise a volume's intensities inside its mask.

    Args:
        image: Intensities, float ``(C, Z, Y, X)``. All channels share one mask; each
            channel is normalised with its own statistics.
        method: ``"zscore"`` or ``"percentile"`` (module docstring).
        mask: bool ``(Z, Y, X)``; default: voxels where any channel is non-zero.
        percentiles: ``(low, high)`` in percent, for ``"percentile"``.

    Returns:
        ``(normalised, stats)``: float32 ``(C, Z, Y, X)``, and the statistics of the first
        channel (medseg's brain models take one channel; multi-channel inputs are
        normalised per channel the same way).

    Raises:
        ValueError: unknown method, bad percentiles, a mask of the wrong shape, an empty
            mask, or a constant image inside the mask (nothing to scale).

    Example:
        >>> img = np.array([0, 0, 2, 4, 6], np.float32).reshape(1, 1, 1, 5)
        >>> out, stats = normalize_intensity(img)
        >>> [round(float(v), 3) for v in out.ravel()], stats.offset
        ([0.0, 0.0, -1.225, 0.0, 1.225], 4.0)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if image.ndim != 4:
        raise ValueError(f"image must be 4D (C, Z, Y, X), got shape {tuple(image.shape)}")
    low, high = (float(p) for p in percentiles)
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if mask is None:
        mask = (image != 0).any(axis=0)
    elif mask.shape != image.shape[1:]:
        raise ValueError(
            f"mask must have the image's spatial shape {tuple(image.shape[1:])}, "
            f"got {tuple(mask.shape)}"
        )
    mask = mask.astype(bool, copy=False)
    num = int(mask.sum())
    if num == 0:
        raise ValueError(
            "mask must contain at least one voxel, got an empty mask; is the image all zeros?"
        )
    out = np.zeros(image.shape, dtype=np.float32)
    first: NormalizationStats | None = None
    for c in range(image.shape[0]):
        values = image[c][mask].astype(np.float64)
        if method == "zscore":
            offset, scale = float(values.mean()), float(values.std())
        else:
            p_low, p_high = np.percentile(values, [low, high])
            offset, scale = float(p_low), float(p_high - p_low)
        if not scale > 0:
            raise ValueError(
                f"image channel {c} must vary inside the mask, got a constant value "
                f"{float(values[0]):g}; nothing to normalise"
            )
        out[c][mask] = ((values - offset) / scale).astype(np.float32)
        if first is None:
            first = NormalizationStats(method, offset, scale, num)
    assert first is not None
    return out, first


GREY_LIGHT = ("mean", "darkest")
"""How :func:`grey_dark_background` makes a light-background image grey: the mean of its
channels, or its darkest channel at each pixel (where the stain absorbs most)."""


def grey_dark_background(image: np.ndarray, *, light: str = "mean") -> tuple[np.ndarray, bool]:
    """One grey channel with a dark background, from a microscopy image of any stain.

    The grey value is the mean of the channels. When its skewness is below
    :data:`LIGHT_BACKGROUND_SKEW` (a light background with dark objects: brightfield,
    H&E) the grey image is inverted (``max + min - grey``), so objects are bright on a
    dark background as in fluorescence; the value range is kept. With ``light="darkest"``
    such an image's grey value is the minimum over its channels instead of the mean
    (before the inversion); a dark-background image keeps the mean, since a fluorescence
    stain may light one channel only.

    Args:
        image: Intensities ``(C, Z, Y, X)``, any C >= 1 (grey, RGB).
        light: One of :data:`GREY_LIGHT`.

    Returns:
        ``(grey, inverted)``: float32 ``(1, Z, Y, X)`` and whether it was inverted.

    Raises:
        ValueError: the image is not 4D, or ``light`` is unknown.

    Example:
        >>> light = np.full((3, 1, 4, 4), 200.0, np.float32); light[:, 0, 1, 1] = 20.0
        >>> grey, inverted = grey_dark_background(light)
        >>> inverted, float(grey[0, 0, 1, 1]), float(grey[0, 0, 0, 0])
        (True, 200.0, 20.0)
    """
    if image.ndim != 4:
        raise ValueError(f"image must be 4D (C, Z, Y, X), got shape {tuple(image.shape)}")
    if light not in GREY_LIGHT:
        raise ValueError(f"light must be one of {list(GREY_LIGHT)}, got {light!r}")
    grey = image.astype(np.float64).mean(axis=0)
    std = float(grey.std())
    skew = float((((grey - grey.mean()) / std) ** 3).mean()) if std > 0 else 0.0
    inverted = skew < LIGHT_BACKGROUND_SKEW and std > 0
    if inverted:
        if light == "darkest":
            grey = image.astype(np.float64).min(axis=0)
        grey = grey.max() + grey.min() - grey
    return grey[None].astype(np.float32), bool(inverted)


def model_input_channels(image: np.ndarray, colour: str) -> np.ndarray:
    """A microscopy image's channels as a model with ``data.colour: colour`` takes them.

    ``"keep"``: as read. ``"grey"``: :func:`grey_dark_background` (mean of the channels).
    ``"grey-darkest"``: the same with the darkest channel for a light-background image.
    The same function serves training and prediction, so both see one input.

    Args:
        image: Intensities ``(C, Z, Y, X)``.
        colour: One of :data:`medseg.options.INPUT_COLOURS`.

    Returns:
        float32 ``(1, Z, Y, X)`` for the grey options; ``image`` itself for ``"keep"``.

    Raises:
        ValueError: unknown ``colour``, or an image :func:`grey_dark_background` refuses.

    Example:
        >>> he = np.full((3, 1, 2, 2), 220.0, np.float32); he[:, 0, 0, 0] = (60, 20, 140)
        >>> grey = model_input_channels(he, "grey")[0, 0]  # mean 73.3 at the nucleus
        >>> round(float(grey[0, 0]), 1), round(float(grey[1, 1]), 1)  # nucleus, background
        (220.0, 73.3)
        >>> darkest = model_input_channels(he, "grey-darkest")[0, 0]  # 20 at the nucleus
        >>> float(darkest[0, 0]), float(darkest[1, 1])  # a contrast of 200, not 147
        (220.0, 20.0)
    """
    from medseg.options import INPUT_COLOURS

    if colour == "keep":
        return image
    if colour not in INPUT_COLOURS:
        raise ValueError(f"colour must be one of {list(INPUT_COLOURS)}, got {colour!r}")
    light = "darkest" if colour == "grey-darkest" else "mean"
    return grey_dark_background(image, light=light)[0]
