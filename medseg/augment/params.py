"""Augmentation parameters: the frozen draws, their argument checks and ``sample_*_params``.

Every random operation is split into a ``sample_*_params(rng, ...)`` that draws all its random
numbers from an explicit :class:`numpy.random.Generator` and a deterministic apply
(ARCHITECTURE.md section 10); the applies are in :mod:`medseg.augment._numpy_path` and
:mod:`medseg.augment._torch_path`. The conventions and formulas are in the package docstring
of :mod:`medseg.augment` ("the module docstring" below). Errors follow ARCHITECTURE.md
section 9.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg._validate import check_positive
from medseg.typing import Shape3

NUMPY_ORDERS = (0, 1, 2, 3, 4, 5)
PAPER_SIGMA = 10.0  # px, U-Net paper section 3.1
PAPER_GRID_POINTS = 3


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ElasticParams:
    """One draw of the U-Net elastic deformation (deterministic once sampled).

    Attributes:
        displacement: Coarse displacements in pixels, float64 ``(ndim, G, ..., G)``;
            component order ``(y, x)`` (``ndim=2``) or ``(z, y, x)`` (``ndim=3``).
            Stored read-only.
        spatial_shape: ``(Z, Y, X)`` of the image it was drawn for.
        ndim: 2 (one in-plane field shared by all slices, 2.5D) or 3.
        sigma: Standard deviation it was drawn with, in pixels (for the record).
        grid_points: ``G``, control points per deformed axis (for the record).
    """

    displacement: np.ndarray
    spatial_shape: Shape3
    ndim: int = 2
    sigma: float = PAPER_SIGMA
    grid_points: int = PAPER_GRID_POINTS

    def __post_init__(self) -> None:
        shape = _check_spatial_shape(self.spatial_shape, self.ndim)
        disp = np.array(self.displacement, dtype=np.float64)
        g = _check_grid_points(self.grid_points)
        expected = (self.ndim,) + (g,) * self.ndim
        if disp.shape != expected:
            raise ValueError(
                f"displacement must have shape (ndim, G, ...) = {expected}, got {disp.shape}; "
                "draw it with sample_elastic_params"
            )
        if not np.all(np.isfinite(disp)):
            raise ValueError("displacement must be finite, got NaN or inf")
        disp.setflags(write=False)
        object.__setattr__(self, "displacement", disp)
        object.__setattr__(self, "spatial_shape", shape)


@dataclass(frozen=True)
class AffineParams:
    """Shift, rotation and flips (deterministic; all defaults are the identity).

    Attributes:
        spatial_shape: ``(Z, Y, X)`` of the image they apply to.
        ndim: 2 (in-plane, 2.5D) or 3.
        shift: Translation of the content in pixels along the deformed axes, ``(y, x)`` or
            ``(z, y, x)``; ``None`` means zeros.
        rotation_deg: Degrees; ``(about_z,)`` for ``ndim=2``, ``(about_z, about_y,
            about_x)`` for ``ndim=3`` (applied x first). A positive angle about an axis turns
            the content as ``np.rot90`` does in the plane of the two other axes taken in
            ``(z, y, x)`` order. ``None`` means zeros.
        flip_axes: Spatial axes to reverse, from ``0, 1, 2`` (z, y, x). In 2.5D a z flip
            reverses the slice order.
        zoom: Isotropic magnification of the content about the centre along the deformed
            axes, > 0: 2 shows every object twice as large, 0.5 half as large; 1 is none.
    """

    spatial_shape: Shape3
    ndim: int = 2
    shift: tuple[float, ...] | None = None
    rotation_deg: tuple[float, ...] | None = None
    flip_axes: tuple[int, ...] = ()
    zoom: float = 1.0

    def __post_init__(self) -> None:
        shape = _check_spatial_shape(self.spatial_shape, self.ndim)
        object.__setattr__(self, "spatial_shape", shape)
        n_rot = 1 if self.ndim == 2 else 3
        shift = (0.0,) * self.ndim if self.shift is None else tuple(float(s) for s in self.shift)
        rot = (
            (0.0,) * n_rot
            if self.rotation_deg is None
            else tuple(float(r) for r in self.rotation_deg)
        )
        if len(shift) != self.ndim or not all(math.isfinite(s) for s in shift):
            raise ValueError(
                f"shift must be {self.ndim} finite pixel values (one per deformed axis), "
                f"got {self.shift}"
            )
        if len(rot) != n_rot or not all(math.isfinite(r) for r in rot):
            raise ValueError(
                f"rotation_deg must be {n_rot} finite angle(s) for ndim={self.ndim}, "
                f"got {self.rotation_deg}"
            )
        flips = tuple(sorted({int(a) for a in self.flip_axes}))
        if any(a not in (0, 1, 2) for a in flips):
            raise ValueError(
                f"flip_axes must be spatial axes 0, 1, 2 (z, y, x), got {self.flip_axes}"
            )
        zoom = float(self.zoom)
        if not (math.isfinite(zoom) and zoom > 0):
            raise ValueError(f"zoom must be a finite number > 0, got {self.zoom}")
        object.__setattr__(self, "shift", shift)
        object.__setattr__(self, "rotation_deg", rot)
        object.__setattr__(self, "flip_axes", flips)
        object.__setattr__(self, "zoom", zoom)


@dataclass(frozen=True)
class IntensityParams:
    """Grey-value variation of images (see the module docstring for the formulas).

    Attributes:
        gamma: Gamma exponent, > 0; 1 leaves the image unchanged.
        contrast: Contrast factor about the channel mean, > 0; 1 leaves it unchanged.
        noise_std: Standard deviation of the additive Gaussian noise, in the image's
            (normalised) grey units, >= 0; 0 adds none.
        noise_seed: Seed of the noise: the noise of an image of shape ``(C, Z, Y, X)`` is
            ``noise_std * default_rng(noise_seed).standard_normal((C, Z, Y, X), float32)``
            on both paths (:func:`noise_field`), so they add the same noise.
        blur_sigma: In-plane Gaussian blur (along Y and X), standard deviation in pixels,
            >= 0; 0 blurs nothing. The kernel is :func:`gaussian_kernel1d` on both paths.
    """

    gamma: float = 1.0
    contrast: float = 1.0
    noise_std: float = 0.0
    noise_seed: int = 0
    blur_sigma: float = 0.0

    def __post_init__(self) -> None:
        for name in ("gamma", "contrast"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
            object.__setattr__(self, name, value)
        std = float(self.noise_std)
        if not (math.isfinite(std) and std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0, got {self.noise_std}")
        object.__setattr__(self, "noise_std", std)
        blur = float(self.blur_sigma)
        if not (math.isfinite(blur) and blur >= 0):
            raise ValueError(f"blur_sigma must be a finite number >= 0, got {self.blur_sigma}")
        object.__setattr__(self, "blur_sigma", blur)
        seed = self.noise_seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"noise_seed must be an int >= 0, got {seed!r}")
        object.__setattr__(self, "noise_seed", int(seed))


def noise_field(params: IntensityParams, shape: tuple[int, ...]) -> np.ndarray | None:
    """The additive noise of ``params`` for an image of ``shape``, float32, or None when
    ``noise_std`` is 0 (the numpy and torch paths both add this array)."""
    if params.noise_std == 0:
        return None
    rng = np.random.default_rng(params.noise_seed)
    noise = rng.standard_normal(tuple(shape), dtype=np.float32)
    noise *= np.float32(params.noise_std)
    return noise


BLUR_TRUNCATE = 4.0  # kernel radius in standard deviations, as scipy.ndimage.gaussian_filter


def gaussian_kernel1d(sigma: float) -> np.ndarray:
    """Normalised 1D Gaussian weights, float64, radius ``int(4 sigma + 0.5)`` (scipy's
    ``gaussian_filter`` kernel); both augmentation paths blur with these weights."""
    radius = int(BLUR_TRUNCATE * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return weights / weights.sum()


@dataclass(frozen=True, eq=False)
class AugmentParams:
    """One draw of the whole augmentation (see :func:`apply_augment`).

    Attributes:
        affine: Shift, rotation and flips; also fixes ``spatial_shape`` and ``ndim``.
        elastic: Elastic deformation, or ``None`` for none.
        intensity: Grey-value variation.
    """

    affine: AffineParams
    elastic: ElasticParams | None = None
    intensity: IntensityParams = field(default_factory=IntensityParams)

    def __post_init__(self) -> None:
        for name, cls in (("affine", AffineParams), ("intensity", IntensityParams)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(
                    f"{name} must be {cls.__name__}, got {type(getattr(self, name)).__name__}"
                )
        e = self.elastic
        if e is not None and not isinstance(e, ElasticParams):
            raise TypeError(f"elastic must be ElasticParams or None, got {type(e).__name__}")
        if e is not None and (e.spatial_shape, e.ndim) != (
            self.affine.spatial_shape,
            self.affine.ndim,
        ):
            raise ValueError(
                f"elastic params must match affine params, got spatial_shape/ndim "
                f"{e.spatial_shape}/{e.ndim} vs {self.affine.spatial_shape}/{self.affine.ndim}"
            )

    @property
    def spatial_shape(self) -> Shape3:
        return self.affine.spatial_shape

    @property
    def ndim(self) -> int:
        return self.affine.ndim


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges for :func:`sample_augment_params`; the defaults do only the paper's elastic step.

    Attributes:
        ndim: 2 (in-plane transforms shared by all slices, 2.5D) or 3.
        elastic_sigma: Std of the coarse displacements in pixels (U-Net paper: 10); 0 = off.
        elastic_grid_points: Control points per deformed axis (U-Net paper: 3).
        max_shift: Shift drawn uniform in ``[-max_shift, max_shift]`` px per deformed axis.
        max_rotation_deg: In-plane angle (about z) uniform in ``[-max, max]`` degrees.
        max_tilt_deg: 3D only: angles about y and x uniform in ``[-max, max]`` degrees.
        flip_axes: Spatial axes (0, 1, 2 = z, y, x) that may be flipped.
        flip_prob: Probability of flipping each axis in ``flip_axes``.
        gamma_range: ``(low, high)``, ``0 < low <= high``; gamma is log-uniform in it.
        contrast_range: ``(low, high)``, ``0 < low <= high``; contrast factor uniform in it.
        zoom_range: ``(low, high)``, ``0 < low <= high``; the zoom (:class:`AffineParams`)
            is log-uniform in it. It is drawn only when the range is not ``(1, 1)``, so a
            config without zoom draws the same numbers as before zoom existed.
        noise_std: ``(low, high)``, ``0 <= low <= high``: the standard deviation of additive
            Gaussian noise, uniform in it, in the normalised grey units (after per-image
            normalisation). Drawn only when ``high > 0`` and ``noise_prob > 0``, so a
            config without noise draws the same numbers as before noise existed.
        noise_prob: Probability that a sample gets noise, in ``[0, 1]``.
        blur_sigma: ``(low, high)``, ``0 <= low <= high``: the in-plane Gaussian blur's
            standard deviation in pixels, uniform in it; drawn only when ``high > 0`` and
            ``blur_prob > 0`` (as the noise).
        blur_prob: Probability that a sample is blurred, in ``[0, 1]``.
        object_contrast_prob: Probability that each annotated object of a patch has its
            contrast above the background scaled (:mod:`medseg.augment.objects`, before
            the spatial part), in ``[0, 1]``; 0 (the default) switches it off.
        object_contrast_range: ``(low, high)``, ``0 < low <= high``: the factor of a chosen
            object, uniform in it.
        stain_sigma: The H&E stain perturbation of Tellez et al. (:mod:`medseg.augment.stain`,
            "HED-light" 0.05, "HED-strong" 0.2), in ``[0, 1)``; 0 (the default) switches
            it off. Training redraws it for every brightfield colour training image at the
            start of each epoch and computes that image's model input again from it.
        interpolation: Image resampling when training: ``"bicubic"`` (U-Net paper),
            ``"bilinear"`` or ``"bspline"`` (labels always use nearest neighbour, weight
            maps linear interpolation).
    """

    ndim: int = 2
    elastic_sigma: float = PAPER_SIGMA
    elastic_grid_points: int = PAPER_GRID_POINTS
    max_shift: float = 0.0
    max_rotation_deg: float = 0.0
    max_tilt_deg: float = 0.0
    flip_axes: tuple[int, ...] = ()
    flip_prob: float = 0.5
    gamma_range: tuple[float, float] = (1.0, 1.0)
    contrast_range: tuple[float, float] = (1.0, 1.0)
    zoom_range: tuple[float, float] = (1.0, 1.0)
    noise_std: tuple[float, float] = (0.0, 0.0)
    noise_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.0, 0.0)
    blur_prob: float = 1.0
    object_contrast_prob: float = 0.0
    object_contrast_range: tuple[float, float] = (1.0, 1.0)
    stain_sigma: float = 0.0
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        _check_ndim(self.ndim)
        if self.interpolation not in ("bicubic", "bilinear", "bspline"):
            raise ValueError(
                f"interpolation must be 'bicubic', 'bilinear' or 'bspline', got "
                f"{self.interpolation!r}"
            )
        check_positive(self.elastic_sigma, "elastic_sigma", allow_zero=True)
        _check_grid_points(self.elastic_grid_points)
        check_positive(self.max_shift, "max_shift", allow_zero=True)
        check_positive(self.max_rotation_deg, "max_rotation_deg", allow_zero=True)
        check_positive(self.max_tilt_deg, "max_tilt_deg", allow_zero=True)
        if self.ndim == 2 and self.max_tilt_deg != 0:
            raise ValueError(
                f"max_tilt_deg must be 0 for ndim=2 (in-plane only), got {self.max_tilt_deg}; "
                "use ndim=3"
            )
        flips = tuple(int(a) for a in self.flip_axes)
        if any(a not in (0, 1, 2) for a in flips):
            raise ValueError(
                f"flip_axes must be spatial axes 0, 1, 2 (z, y, x), got {self.flip_axes}"
            )
        object.__setattr__(self, "flip_axes", flips)
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")
        object.__setattr__(self, "gamma_range", _check_range(self.gamma_range, "gamma_range"))
        object.__setattr__(
            self, "contrast_range", _check_range(self.contrast_range, "contrast_range")
        )
        object.__setattr__(self, "zoom_range", _check_range(self.zoom_range, "zoom_range"))
        object.__setattr__(self, "noise_std", _check_nonneg_range(self.noise_std, "noise_std"))
        object.__setattr__(self, "blur_sigma", _check_nonneg_range(self.blur_sigma, "blur_sigma"))
        object.__setattr__(
            self,
            "object_contrast_range",
            _check_range(self.object_contrast_range, "object_contrast_range"),
        )
        if not 0.0 <= self.stain_sigma < 1.0:
            raise ValueError(f"stain_sigma must be in [0, 1), got {self.stain_sigma}")
        for name in ("noise_prob", "blur_prob", "object_contrast_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def adds_noise(self) -> bool:
        """Whether :func:`sample_augment_params` draws noise (``noise_std`` high > 0 and
        ``noise_prob`` > 0)."""
        return self.noise_std[1] > 0 and self.noise_prob > 0

    @property
    def adds_blur(self) -> bool:
        """Whether :func:`sample_augment_params` draws a blur."""
        return self.blur_sigma[1] > 0 and self.blur_prob > 0


# ---------------------------------------------------------------------------
# Validation helpers (error format: ARCHITECTURE.md section 9)
# ---------------------------------------------------------------------------


def _check_ndim(ndim: Any) -> int:
    if isinstance(ndim, bool) or ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 (in-plane, 2.5D) or 3, got {ndim!r}")
    return int(ndim)


def _check_grid_points(grid_points: Any) -> int:
    if (
        isinstance(grid_points, bool)
        or not isinstance(grid_points, (int, np.integer))
        or grid_points < 2
    ):
        raise ValueError(f"grid_points must be an int >= 2, got {grid_points!r}")
    return int(grid_points)


def _check_range(value: Any, name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {tuple(value)}")
    return lo, hi


def _check_nonneg_range(value: Any, name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {tuple(value)}")
    return lo, hi


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; "
            "create one with np.random.default_rng(seed)"
        )
    return rng


def _check_spatial_shape(spatial_shape: Any, ndim: int) -> Shape3:
    ndim = _check_ndim(ndim)
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"spatial_shape must be 3 positive sizes (Z, Y, X), got {tuple(spatial_shape)}"
        )
    deformed = shape[3 - ndim :]
    if min(deformed) < 2:
        axes = "(Y, X)" if ndim == 2 else "(Z, Y, X)"
        hint = "; use ndim=2 for single-slice images" if ndim == 3 else ""
        raise ValueError(
            f"spatial_shape must have >= 2 pixels along the deformed axes {axes} for "
            f"ndim={ndim}, got {shape}{hint}"
        )
    return shape  # type: ignore[return-value]


def _check_order(order: Any) -> int:
    if isinstance(order, bool) or order not in NUMPY_ORDERS:
        raise ValueError(f"order must be one of {NUMPY_ORDERS} (3 = cubic B-spline), got {order!r}")
    return int(order)


def _check_array(x: Any, name: str, ndim: int, kind: str, layout: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array {layout}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}D {layout}, got shape {x.shape}")
    ok = (
        np.issubdtype(x.dtype, np.floating)
        if kind == "float"
        else (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_)
    )
    if not ok:
        want = "a float dtype" if kind == "float" else "an integer or bool dtype"
        raise TypeError(f"{name} must have {want}, got {x.dtype}")
    return x


def _check_shape_matches(shape: tuple[int, ...], spatial_shape: Shape3, name: str) -> None:
    if tuple(shape) != tuple(spatial_shape):
        raise ValueError(
            f"{name} spatial shape must equal the params' spatial_shape {spatial_shape}, got "
            f"{tuple(shape)}; sample the params for this shape (use crop= for a window)"
        )


def _crop_bounds(crop: Any, spatial_shape: Shape3) -> tuple[tuple[int, int], ...]:
    """``crop`` (3 slices in z, y, x order, or None) -> ((start, stop),) * 3."""
    if crop is None:
        return tuple((0, s) for s in spatial_shape)
    if not isinstance(crop, (tuple, list)) or len(crop) != 3:
        raise ValueError(f"crop must be 3 slices (z, y, x) or None, got {crop!r}")
    bounds = []
    for sl, size in zip(crop, spatial_shape, strict=True):
        if not isinstance(sl, slice) or sl.step not in (None, 1):
            raise ValueError(f"crop must hold slices with step 1, got {crop!r}")
        start = 0 if sl.start is None else int(sl.start)
        stop = size if sl.stop is None else int(sl.stop)
        if not 0 <= start < stop <= size:
            raise ValueError(
                f"crop must satisfy 0 <= start < stop <= size on each axis of {spatial_shape}, "
                f"got {crop!r}"
            )
        bounds.append((start, stop))
    return tuple(bounds)


def _deformed_axes(ndim: int) -> tuple[int, ...]:
    return (1, 2) if ndim == 2 else (0, 1, 2)


# ---------------------------------------------------------------------------
# Sampling the random parameters
# ---------------------------------------------------------------------------


def sample_elastic_params(
    rng: np.random.Generator,
    spatial_shape: Shape3 | Sequence[int],
    *,
    sigma: float = PAPER_SIGMA,
    grid_points: int = PAPER_GRID_POINTS,
    ndim: int = 2,
) -> ElasticParams:
    """Draw the coarse displacement grid of the U-Net elastic deformation.

    Draws ``ndim * grid_points**ndim`` standard normals from ``rng`` (always this many).
    Warns when ``sigma`` is large for the control-point spacing (risk of folding).

    Args:
        rng: The random generator.
        spatial_shape: ``(Z, Y, X)`` of the image, in pixels.
        sigma: Standard deviation of the displacements in pixels (U-Net paper: 10).
        grid_points: Control points per deformed axis (U-Net paper: 3).
        ndim: 2 (one (y, x) field shared by all slices, 2.5D) or 3 (a (z, y, x) field).

    Returns:
        The params; ``displacement`` is float64 ``(ndim, G, ..., G)`` pixels.

    Raises:
        TypeError: If ``rng`` is not a numpy Generator.
        ValueError: If ``spatial_shape``, ``sigma``, ``grid_points`` or ``ndim`` is invalid.

    Example:
        >>> p = sample_elastic_params(np.random.default_rng(0), (3, 512, 512))
        >>> p.displacement.shape, p.sigma
        ((2, 3, 3), 10.0)
    """
    rng = _check_rng(rng)
    shape = _check_spatial_shape(spatial_shape, ndim)
    sigma = check_positive(sigma, "sigma", allow_zero=True)
    g = _check_grid_points(grid_points)
    spacing = min((shape[a] - 1) / (g - 1) for a in _deformed_axes(ndim))
    if 2.0 * math.sqrt(2.0) * sigma > spacing:
        warnings.warn(
            f"sigma={sigma} px is large for control points {spacing:.1f} px apart: neighbouring "
            "displacements often differ by more than the spacing, which folds the image; "
            "deform the whole slice and crop (crop=...) or lower sigma",
            stacklevel=2,
        )
    disp = rng.standard_normal((ndim,) + (g,) * ndim) * sigma
    return ElasticParams(disp, shape, ndim=ndim, sigma=sigma, grid_points=g)


def sample_affine_params(
    rng: np.random.Generator,
    spatial_shape: Shape3 | Sequence[int],
    *,
    ndim: int = 2,
    max_shift: float = 0.0,
    max_rotation_deg: float = 0.0,
    max_tilt_deg: float = 0.0,
    flip_axes: Sequence[int] = (),
    flip_prob: float = 0.5,
    zoom_range: tuple[float, float] = (1.0, 1.0),
) -> AffineParams:
    """Draw a shift, rotation, flips and zoom (zero ranges give the identity).

    Draws, in this order: ``ndim`` shifts, 1 (``ndim=2``) or 3 angles, one uniform per axis
    of ``flip_axes`` -- always that many numbers, whatever the ranges -- then one uniform
    for the zoom, only when ``zoom_range`` is not ``(1, 1)``.

    Args:
        rng: The random generator.
        spatial_shape: ``(Z, Y, X)`` of the image, in pixels.
        ndim: 2 (in-plane) or 3.
        max_shift: Each shift is uniform in ``[-max_shift, max_shift]`` pixels.
        max_rotation_deg: The angle about z is uniform in ``[-max, max]`` degrees.
        max_tilt_deg: ``ndim=3`` only: the angles about y and x, uniform in ``[-max, max]``.
        flip_axes: Axes (0, 1, 2 = z, y, x) each flipped with probability ``flip_prob``.
        flip_prob: In ``[0, 1]``.
        zoom_range: The zoom is log-uniform in ``(low, high)``, ``0 < low <= high``.

    Returns:
        The params.

    Raises:
        TypeError: If ``rng`` is not a numpy Generator.
        ValueError: For an invalid range, axis or shape (via :class:`AugmentConfig`).

    Example:
        >>> p = sample_affine_params(np.random.default_rng(0), (1, 64, 64), flip_axes=(2,),
        ...                          flip_prob=1.0)
        >>> p.flip_axes, p.shift, p.rotation_deg
        ((2,), (0.0, 0.0), (0.0,))
    """
    rng = _check_rng(rng)
    cfg = AugmentConfig(
        ndim=ndim,
        max_shift=max_shift,
        max_rotation_deg=max_rotation_deg,
        max_tilt_deg=max_tilt_deg,
        flip_axes=tuple(flip_axes),
        flip_prob=flip_prob,
        zoom_range=zoom_range,
    )
    return _sample_affine(rng, spatial_shape, cfg)


def _sample_affine(
    rng: np.random.Generator, spatial_shape: Any, cfg: AugmentConfig
) -> AffineParams:
    shape = _check_spatial_shape(spatial_shape, cfg.ndim)
    shift = rng.uniform(-1.0, 1.0, cfg.ndim) * cfg.max_shift
    angles = rng.uniform(-1.0, 1.0, 1 if cfg.ndim == 2 else 3)
    scale = np.array([cfg.max_rotation_deg] + [cfg.max_tilt_deg] * (len(angles) - 1))
    flips = rng.uniform(0.0, 1.0, len(cfg.flip_axes)) < cfg.flip_prob
    zoom = 1.0
    if cfg.zoom_range != (1.0, 1.0):
        lo, hi = (math.log(z) for z in cfg.zoom_range)
        zoom = math.exp(lo + float(rng.uniform(0.0, 1.0)) * (hi - lo))
    return AffineParams(
        shape,
        ndim=cfg.ndim,
        shift=tuple(float(s) + 0.0 for s in shift),  # + 0.0 turns -0.0 into 0.0
        rotation_deg=tuple(float(a) + 0.0 for a in angles * scale),
        flip_axes=tuple(a for a, f in zip(cfg.flip_axes, flips, strict=True) if f),
        zoom=zoom,
    )


def sample_intensity_params(
    rng: np.random.Generator,
    *,
    gamma_range: tuple[float, float] = (1.0, 1.0),
    contrast_range: tuple[float, float] = (1.0, 1.0),
    noise_std: tuple[float, float] = (0.0, 0.0),
    noise_prob: float = 1.0,
    blur_sigma: tuple[float, float] = (0.0, 0.0),
    blur_prob: float = 1.0,
) -> IntensityParams:
    """Draw a gamma (log-uniform), a contrast factor (uniform), Gaussian noise and a blur.

    Draws 2 uniforms (gamma, contrast), then, only when ``noise_std[1] > 0`` and
    ``noise_prob > 0``, 3 more: whether the sample gets noise, its standard deviation
    (uniform in ``noise_std``) and the noise seed; then, only when ``blur_sigma[1] > 0``
    and ``blur_prob > 0``, 2 more: whether the sample is blurred and the blur's sigma.

    Args:
        rng: The random generator.
        gamma_range: ``(low, high)``, ``0 < low <= high``; nnU-Net uses ``(0.7, 1.5)``.
        contrast_range: ``(low, high)``, ``0 < low <= high``; nnU-Net uses ``(0.75, 1.25)``.
        noise_std: ``(low, high)``, ``0 <= low <= high``, grey units.
        noise_prob: Probability of noise, in ``[0, 1]``.
        blur_sigma: ``(low, high)``, ``0 <= low <= high``, pixels.
        blur_prob: Probability of a blur, in ``[0, 1]``.

    Returns:
        The params.

    Raises:
        TypeError: If ``rng`` is not a numpy Generator.
        ValueError: If a range is invalid.

    Example:
        >>> p = sample_intensity_params(np.random.default_rng(0), gamma_range=(0.7, 1.5))
        >>> 0.7 <= p.gamma <= 1.5, p.contrast
        (True, 1.0)
    """
    rng = _check_rng(rng)
    glo, ghi = _check_range(gamma_range, "gamma_range")
    clo, chi = _check_range(contrast_range, "contrast_range")
    nlo, nhi = _check_nonneg_range(noise_std, "noise_std")
    blo, bhi = _check_nonneg_range(blur_sigma, "blur_sigma")
    for name, prob in (("noise_prob", noise_prob), ("blur_prob", blur_prob)):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {prob}")
    u = rng.uniform(0.0, 1.0, 2)
    gamma = math.exp(math.log(glo) + u[0] * (math.log(ghi) - math.log(glo)))
    std, seed = 0.0, 0
    if nhi > 0 and noise_prob > 0:
        apply, level = rng.uniform(0.0, 1.0, 2)
        seed = int(rng.integers(0, 2**63 - 1))
        std = nlo + float(level) * (nhi - nlo) if apply < noise_prob else 0.0
    blur = 0.0
    if bhi > 0 and blur_prob > 0:
        apply, level = rng.uniform(0.0, 1.0, 2)
        blur = blo + float(level) * (bhi - blo) if apply < blur_prob else 0.0
    return IntensityParams(
        gamma=gamma,
        contrast=clo + u[1] * (chi - clo),
        noise_std=std,
        noise_seed=seed,
        blur_sigma=blur,
    )


def sample_augment_params(
    rng: np.random.Generator,
    spatial_shape: Shape3 | Sequence[int],
    config: AugmentConfig,
) -> AugmentParams:
    """Draw one full augmentation: elastic (if ``elastic_sigma > 0``), affine, intensity.

    Args:
        rng: The random generator; drawn from in the order elastic, affine, intensity.
        spatial_shape: ``(Z, Y, X)`` of the image, in pixels.
        config: The ranges.

    Returns:
        The params, for :func:`apply_augment` or :func:`apply_augment_torch`.

    Raises:
        TypeError: If ``rng`` or ``config`` has the wrong type.
        ValueError: If ``spatial_shape`` is invalid for ``config.ndim``.

    Example:
        >>> cfg = AugmentConfig(max_rotation_deg=15.0, flip_axes=(1, 2))
        >>> p = sample_augment_params(np.random.default_rng(0), (1, 128, 128), cfg)
        >>> p.elastic.displacement.shape, abs(p.affine.rotation_deg[0]) <= 15.0
        ((2, 3, 3), True)
    """
    rng = _check_rng(rng)
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}")
    elastic = None
    if config.elastic_sigma > 0:
        elastic = sample_elastic_params(
            rng,
            spatial_shape,
            sigma=config.elastic_sigma,
            grid_points=config.elastic_grid_points,
            ndim=config.ndim,
        )
    affine = _sample_affine(rng, spatial_shape, config)
    intensity = sample_intensity_params(
        rng,
        gamma_range=config.gamma_range,
        contrast_range=config.contrast_range,
        noise_std=config.noise_std,
        noise_prob=config.noise_prob,
        blur_sigma=config.blur_sigma,
        blur_prob=config.blur_prob,
    )
    return AugmentParams(affine=affine, elastic=elastic, intensity=intensity)
