"""Stain augmentation of brightfield colour images in the haematoxylin-eosin-DAB space.

Tellez et al. ("Quantifying the effects of data augmentation and stain color normalization
in convolutional neural networks for computational pathology", Medical Image Analysis 58,
2019; first in IEEE TMI 37, 2018) perturb the stain concentrations of an H&E image: the
image is unmixed into haematoxylin, eosin and DAB by colour deconvolution (Ruifrok and
Johnston, Anal. Quant. Cytol. Histol. 23, 2001), each concentration ``s_i`` becomes
``alpha_i * s_i + beta_i`` with ``alpha_i`` uniform in ``[1 - sigma, 1 + sigma]`` and
``beta_i`` uniform in ``[-sigma, sigma]``, and the image is mixed back. Their "HED-light"
setting is ``sigma = 0.05``, "HED-strong" ``sigma = 0.2``. Here the amounts are optical
densities (natural logarithm), in which offsets of 0.05 darken a white background by at
most 11 % (green, ``1 - exp(-0.05 * 2.26)``), a light perturbation. Scikit-image's
``rgb2hed`` (version 0.19 on) divides the amounts by ``ln(10^6)``, so a sigma meant for
its units is 13.8 times as strong here. Negative amounts are kept (``rgb2hed`` clips them
at 0), so that no perturbation gives the image back.

Only a light-background colour image has stains to perturb: three channels that are not
all equal, whose grey values skew negative (:func:`medseg.normalize.grey_dark_background`).
Fluorescence and grey images are left alone (:func:`is_stained_colour`).

Arrays follow ARCHITECTURE.md section 2: an image is ``(C, Z, Y, X)``. Intensities are on
the file's scale: white is 255 for an 8-bit image, 65535 for a 16-bit one
(:func:`white_level`).
"""

from __future__ import annotations

import numpy as np

from medseg.normalize import grey_dark_background

RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
"""Rows: the optical-density colours (R, G, B) of haematoxylin, eosin and DAB (Ruifrok and
Johnston 2001), as scikit-image's ``rgb_from_hed``."""
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def white_level(image: np.ndarray) -> float:
    """The intensity of unattenuated light: 255 for 8-bit values, 65535 for 16-bit ones.

    Example:
        >>> white_level(np.array([0.0, 200.0])), white_level(np.array([300.0]))
        (255.0, 65535.0)
    """
    top = float(np.max(image)) if image.size else 0.0
    if top <= 255:
        return 255.0
    if top <= 65535:
        return 65535.0
    return top


def is_stained_colour(image: np.ndarray) -> bool:
    """Whether an image ``(C, Z, Y, X)`` is brightfield colour: 3 channels, not all equal,
    a light background (:func:`medseg.normalize.grey_dark_background` inverts it)."""
    if image.ndim != 4 or image.shape[0] != 3:
        return False
    if np.array_equal(image[0], image[1]) and np.array_equal(image[1], image[2]):
        return False
    return grey_dark_background(image)[1]


def draw_stain_jitter(rng: np.random.Generator, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha, beta)``, each 3 values (H, E, DAB): ``alpha`` uniform in ``[1 - sigma,
    1 + sigma]``, ``beta`` uniform in ``[-sigma, sigma]``; six draws from ``rng``."""
    if not 0 <= sigma < 1:
        raise ValueError(f"sigma must be in [0, 1), got {sigma!r}")
    alpha = rng.uniform(1 - sigma, 1 + sigma, 3)
    beta = rng.uniform(-sigma, sigma, 3)
    return alpha, beta


def jitter_stains(
    image: np.ndarray, alpha: np.ndarray, beta: np.ndarray, *, white: float | None = None
) -> np.ndarray:
    """The image with its H, E and DAB concentrations ``s`` made ``alpha * s + beta``.

    Per pixel, the optical density ``od = -ln(I / white)`` (``I`` at least ``white *
    1e-6``) is unmixed as ``s = od @ inv(RGB_FROM_HED)``, perturbed, and mixed back:
    ``I' = white * exp(-s' @ RGB_FROM_HED)``, clipped to ``[0, white]``. The amounts are
    not clipped at 0, so ``alpha = 1, beta = 0`` gives the image back.

    Args:
        image: RGB intensities ``(3, Z, Y, X)``, on the file's scale.
        alpha: Three factors (H, E, DAB); ones leave the image as it is.
        beta: Three offsets (H, E, DAB), in optical density (natural logarithm).
        white: The intensity of unattenuated light; :func:`white_level` when None.

    Returns:
        float32 ``(3, Z, Y, X)`` on the same scale, within ``[0, white]``.

    Raises:
        ValueError: the image is not ``(3, Z, Y, X)``, or alpha / beta are not 3 values.
    """
    if image.ndim != 4 or image.shape[0] != 3:
        raise ValueError(f"image must be RGB (3, Z, Y, X), got shape {tuple(image.shape)}")
    alpha = np.asarray(alpha, np.float64)
    beta = np.asarray(beta, np.float64)
    if alpha.shape != (3,) or beta.shape != (3,):
        raise ValueError(
            f"alpha and beta must hold 3 values (H, E, DAB), got shapes {alpha.shape} and "
            f"{beta.shape}"
        )
    white = white_level(image) if white is None else float(white)
    rgb = np.moveaxis(image.astype(np.float64) / white, 0, -1)
    od = -np.log(np.clip(rgb, 1e-6, None))
    stains = od @ HED_FROM_RGB
    od_new = (stains * alpha + beta) @ RGB_FROM_HED
    out = np.clip(np.exp(-od_new), 0.0, 1.0)
    return (np.moveaxis(out, -1, 0) * white).astype(np.float32)
