"""Data augmentation: elastic deformation, shift, rotation, flips, zoom and grey values.

Arrays follow ARCHITECTURE.md section 2: an image is float ``(C, Z, Y, X)``, a label map is integer
``(Z, Y, X)``, a weight map is float ``(Z, Y, X)`` and a torch batch is ``(N, C, Z, Y, X)``.
Spatial sizes, shifts and displacements are in pixels (voxels), in ``(z, y, x)`` order.
Every random operation is split into a ``sample_*_params(rng, ...)`` that draws all its
random numbers from an explicit :class:`numpy.random.Generator` and a deterministic apply
(ARCHITECTURE.md section 10), so image, label and weight map share one draw.

**Elastic deformation** (Ronneberger, Fischer and Brox, "U-Net", MICCAI 2015, section 3.1:
"random displacement vectors on a coarse 3 by 3 grid ... sampled from a Gaussian
distribution with 10 pixels standard deviation. Per-pixel displacements are then computed
using bicubic interpolation"), made precise:

* ``ndim`` deformed axes: ``ndim=2`` deforms ``(y, x)`` and shares one in-plane field by all
  ``Z`` slices (2.5D: the neighbouring slices of a patch move together); ``ndim=3`` deforms
  ``(z, y, x)``. Every deformed axis needs at least 2 pixels.
* Control points sit at ``linspace(0, size - 1, G)`` along each deformed axis: the image
  corners, edge midpoints and centre for the paper's ``G = 3``.
* The coarse displacements ``D``, shape ``(ndim, G, ..., G)``, are i.i.d. ``N(0, sigma^2)``
  pixels, ``sigma = 10``.
* "Bicubic" is **cubic B-spline interpolation through the control values**, separable per
  axis: along an axis of ``size`` pixels, pixel ``i`` sits at grid position
  ``t_i = (G - 1) i / (size - 1)`` and ``W[i, :]`` (:func:`interpolation_matrix`, shape
  ``(size, G)``) holds the weights of the ``G`` control values, so the field is
  ``d[c] = W_y @ D[c] @ W_x.T`` (2D) or ``D[c]`` contracted with ``W_z, W_y, W_x`` (3D) --
  the same few matrix products in numpy (float64) and torch (the batch's dtype, any
  device). The spline coefficients solve the interpolation condition with **mirror**
  boundary conditions (the grid continued symmetrically about its end points, so the field
  has zero slope at the image border). This is the field of elasticdeform's
  ``deform_grid`` (same placement, kernel and boundary), checked in the tests.
* Pull-back convention: output pixel ``p`` takes the input value at ``p + d(p)``.

**Other spatial augmentations** (:class:`AffineParams`): a shift ``t`` in pixels (the content
moves by ``+t``), a rotation about the image centre ``c = (size - 1) / 2`` (a positive angle
turns the content the way ``np.rot90(a, 1, axes=(a0, a1))`` does, ``+90`` degrees being
exactly ``np.rot90``; 2.5D: one in-plane angle about z; 3D: angles about the z, y and x
axes, applied x first), flips per axis and an isotropic zoom ``s`` about the centre (objects
look ``s`` times as large; ``zoom_range``, log-uniform, as MONAI's ``RandZoom`` or nnU-Net's
scaling). **One resampling:** rotation, zoom, shift, flips and the elastic field compose
into one map, output pixel ``p`` reading input position

    ``q(p) = c + (R / s) . F(p + d(p) - c) - t``

with ``R`` the inverse (pull) rotation and ``F`` the flip (``-1`` on flipped axes), so the
image is interpolated once. In 2.5D a z flip or crop only reorders slices. When the map is
a pure permutation (zero field, no rotation or shift, flips only), the output is gathered
instead of interpolated, which makes zero displacement exactly the identity.

**Boundary:** positions outside the image are **mirrored** about the edge pixel centres
(``-1 -> 1``, ``size -> size - 2``): ``scipy.ndimage`` mode ``"mirror"``, torch
``grid_sample(padding_mode="reflection", align_corners=True)``.

**Interpolation.** numpy path (``scipy.ndimage.map_coordinates``): ``order`` 0 (nearest,
ties round up), 1 (linear) or 3 (cubic B-spline, exact prefilter in float64; the default, as
elasticdeform). Torch path (``grid_sample``): ``mode`` ``"nearest"`` (ties round to even),
``"bilinear"`` (linear in 3D too), ``"bicubic"`` (torch's Keys cubic convolution,
``a = -0.75``; 2D and 2.5D only) or ``"bspline"`` (cubic B-spline, the same kernel as
``order=3``: a prefilter of two truncated geometric series, 16 taps each, relative error
< 1e-8 before rounding, then ``2**ndim`` linear fetches, Sigg and Hadwiger, GPU Gems 2,
ch. 20, 2005). Label maps always use nearest (no new label values), weight maps linear.

**Grey values** (images only, after the spatial part, per channel): gamma
``x' = m + (M - m) ((x - m) / (M - m))**gamma`` with ``m, M`` the channel's min and max
(range kept), then contrast ``x' = mu + k (x - mu)`` with ``mu`` the channel mean.
``gamma`` is drawn log-uniform from ``gamma_range`` and ``k`` uniform from
``contrast_range``; nnU-Net uses ``(0.7, 1.5)`` and ``(0.75, 1.25)``. The defaults
``(1, 1)`` switch them off: the U-Net paper names grey-value variation without ranges.

**numpy vs torch agreement** (same params; max |difference| / image range; measured in
benchmarks/results_augment.md, bounded in tests/test_augment.py): linear 3e-6 on a smooth
512x512 image and 5e-5 on white noise (test bound 1e-4); cubic B-spline 4e-6 smooth and
1.3e-4 on white noise (torch samples at float32 positions, good to ~3e-8 (size - 1) px,
and noise has large spline coefficients). Nearest label maps: identical in the measured
cases; they can differ only where a position lies within float32 rounding of a half-pixel
tie (exact ties: scipy rounds up, torch to even); test bound 1e-3 of the pixels. The numpy
path equals elasticdeform's ``deform_grid(..., mode="mirror")``: 0 difference for orders 0
and 1, 6e-8 for order 3.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from medseg.typing import FloatArray, LabelArray, Shape3

if TYPE_CHECKING:
    import torch

TORCH_MODES = ("nearest", "bilinear", "bicubic", "bspline")
NUMPY_ORDERS = (0, 1, 2, 3, 4, 5)
BSPLINE_POLE = math.sqrt(3.0) - 2.0  # pole of the cubic B-spline prefilter
PREFILTER_DOUBLINGS = 4  # each one-sided geometric series keeps 2**4 = 16 terms
WINDOW_MARGIN = 26  # px beyond the sampled region prefiltered by the numpy path (|z|^24 ~ 2e-14)
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
    """

    gamma: float = 1.0
    contrast: float = 1.0

    def __post_init__(self) -> None:
        for name in ("gamma", "contrast"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
            object.__setattr__(self, name, value)


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
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        _check_ndim(self.ndim)
        if self.interpolation not in ("bicubic", "bilinear", "bspline"):
            raise ValueError(
                f"interpolation must be 'bicubic', 'bilinear' or 'bspline', got "
                f"{self.interpolation!r}"
            )
        _check_nonnegative(self.elastic_sigma, "elastic_sigma")
        _check_grid_points(self.elastic_grid_points)
        _check_nonnegative(self.max_shift, "max_shift")
        _check_nonnegative(self.max_rotation_deg, "max_rotation_deg")
        _check_nonnegative(self.max_tilt_deg, "max_tilt_deg")
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


# ---------------------------------------------------------------------------
# Validation helpers (error format: ARCHITECTURE.md section 9)
# ---------------------------------------------------------------------------


def _check_ndim(ndim: Any) -> int:
    if isinstance(ndim, bool) or ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 (in-plane, 2.5D) or 3, got {ndim!r}")
    return int(ndim)


def _check_nonnegative(value: Any, name: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return v


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


# ---------------------------------------------------------------------------
# The coarse-to-fine interpolation (the paper's "bicubic interpolation")
# ---------------------------------------------------------------------------


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror integer indices into ``[0, n)`` about the end points (-1 -> 1, n -> n - 2)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * n - 2
    m = np.abs(index) % period
    return np.where(m > n - 1, period - m, m)


def _bspline3(x: np.ndarray) -> np.ndarray:
    """Cubic B-spline kernel beta3(x): 2/3 - x^2 + |x|^3/2 on |x| < 1, (2 - |x|)^3/6 below 2."""
    a = np.abs(x)
    return np.where(
        a < 1, 2.0 / 3.0 - a**2 + a**3 / 2.0, np.where(a < 2, (2.0 - a) ** 3 / 6.0, 0.0)
    )


@functools.lru_cache(maxsize=128)
def _interpolation_matrix_cached(size: int, grid_points: int) -> np.ndarray:
    g = grid_points
    # Collocation: the spline sum_k c_k beta3(t - k) equals the control value f_i at t = i,
    # with coefficients continued by mirroring, so (c_{i-1} + 4 c_i + c_{i+1}) / 6 = f_i.
    collocation = np.zeros((g, g))
    for i in range(g):
        for k, b in ((-1, 1 / 6), (0, 4 / 6), (1, 1 / 6)):
            collocation[i, _mirror(np.array(i + k), g)] += b
    # Basis: row i holds beta3(t_i - k) for the 4 knots k around t_i, folded by mirroring.
    t = (g - 1) * np.arange(size, dtype=np.float64) / max(size - 1, 1)
    basis = np.zeros((size, g))
    rows = np.arange(size)
    first = np.floor(t).astype(np.int64) - 1
    for j in range(4):
        knot = first + j
        np.add.at(basis, (rows, _mirror(knot, g)), _bspline3(t - knot))
    w = np.linalg.solve(collocation.T, basis.T).T  # basis @ inv(collocation)
    w.setflags(write=False)
    return w


def interpolation_matrix(size: int, grid_points: int = PAPER_GRID_POINTS) -> np.ndarray:
    """Weights that interpolate ``grid_points`` control values to ``size`` pixels.

    Cubic B-spline interpolation with mirror boundary conditions; control point ``j`` sits at
    pixel ``j (size - 1) / (grid_points - 1)`` (see the module docstring). Rows sum to 1 and
    the rows at control points are unit vectors.

    Args:
        size: Pixels along the axis, >= 2.
        grid_points: Control points ``G`` along the axis, >= 2.

    Returns:
        ``W``, float64 ``(size, grid_points)``, read-only: ``values = W @ control_values``.

    Raises:
        ValueError: If ``size`` < 2 or ``grid_points`` < 2.

    Example:
        >>> w = interpolation_matrix(5, 3)
        >>> w.shape, bool(np.allclose(w[[0, 2, 4]], np.eye(3)))
        ((5, 3), True)
        >>> (32 * w[1]).round(9)  # pixel 1, halfway between control points 0 and 1
        array([19., 16., -3.])
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size must be an int >= 2, got {size!r}")
    return _interpolation_matrix_cached(int(size), _check_grid_points(grid_points))


def _field_numpy(params: ElasticParams, bounds: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Per-pixel displacement, float64 (ndim, *cropped deformed shape)."""
    axes = _deformed_axes(params.ndim)
    w = [
        interpolation_matrix(params.spatial_shape[a], params.grid_points)[slice(*bounds[a])]
        for a in axes
    ]
    d = params.displacement
    if params.ndim == 2:  # (2, G, G) -> (2, Y', X')
        return w[0] @ (d @ w[1].T)
    g = params.grid_points
    t = d @ w[2].T  # (3, G, G, X')
    t = np.matmul(w[1], t)  # (3, G, Y', X')
    zs = w[0].shape[0]
    return (w[0] @ t.reshape(3, g, -1)).reshape(3, zs, *t.shape[2:])


def displacement_field(params: ElasticParams, *, crop: Sequence[slice] | None = None) -> FloatArray:
    """The per-pixel displacement of an elastic draw (numpy, float64 arithmetic).

    Args:
        params: From :func:`sample_elastic_params`.
        crop: Optional 3 slices ``(z, y, x)`` selecting a window of the image.

    Returns:
        Displacement in pixels, float32 ``(ndim, Y', X')`` for ``ndim=2`` (shared by all
        slices) or ``(3, Z', Y', X')`` for ``ndim=3``; component order ``(y, x)`` or
        ``(z, y, x)``. Output pixel ``p`` samples the input at ``p + d(p)``.

    Example:
        >>> p = ElasticParams(np.ones((2, 3, 3)), spatial_shape=(1, 4, 5))
        >>> displacement_field(p).shape
        (2, 4, 5)
        >>> float(displacement_field(p).min()), float(displacement_field(p).max())
        (1.0, 1.0)
    """
    bounds = _crop_bounds(crop, params.spatial_shape)
    return _field_numpy(params, bounds).astype(np.float32)


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
    sigma = _check_nonnegative(sigma, "sigma")
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
) -> IntensityParams:
    """Draw a gamma (log-uniform) and a contrast factor (uniform); always 2 numbers.

    Args:
        rng: The random generator.
        gamma_range: ``(low, high)``, ``0 < low <= high``; nnU-Net uses ``(0.7, 1.5)``.
        contrast_range: ``(low, high)``, ``0 < low <= high``; nnU-Net uses ``(0.75, 1.25)``.

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
    u = rng.uniform(0.0, 1.0, 2)
    gamma = math.exp(math.log(glo) + u[0] * (math.log(ghi) - math.log(glo)))
    return IntensityParams(gamma=gamma, contrast=clo + u[1] * (chi - clo))


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
        rng, gamma_range=config.gamma_range, contrast_range=config.contrast_range
    )
    return AugmentParams(affine=affine, elastic=elastic, intensity=intensity)


# ---------------------------------------------------------------------------
# The composed pull-back map (shared by the numpy and torch paths)
# ---------------------------------------------------------------------------


def _deformed_axes(ndim: int) -> tuple[int, ...]:
    return (1, 2) if ndim == 2 else (0, 1, 2)


def _cos_sin_deg(deg: float) -> tuple[float, float]:
    """cos and sin of an angle in degrees, exact for multiples of 90."""
    quarter = deg / 90.0
    if quarter.is_integer():
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[int(quarter) % 4]
    rad = math.radians(deg)
    return math.cos(rad), math.sin(rad)


def _plane_rotation(ndim: int, a: int, b: int, deg: float) -> np.ndarray:
    """Forward rotation in the (a, b) plane: a' = cos a - sin b, b' = sin a + cos b."""
    c, s = _cos_sin_deg(deg)
    r = np.eye(ndim)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def _pull_rotation(affine: AffineParams) -> np.ndarray:
    """Pull-back linear map (inverse of the forward rotation times zoom), (ndim, ndim) in
    deformed axes: an output pixel at ``p`` reads the source at ``c + R^T (p - c) / zoom``."""
    angles = affine.rotation_deg
    assert angles is not None  # filled in by AffineParams.__post_init__
    if affine.ndim == 2:
        forward = _plane_rotation(2, 0, 1, angles[0])
    else:
        about_z, about_y, about_x = angles
        forward = (
            _plane_rotation(3, 1, 2, about_z)
            @ _plane_rotation(3, 0, 2, about_y)
            @ _plane_rotation(3, 0, 1, about_x)
        )
    return forward.T if affine.zoom == 1.0 else forward.T / affine.zoom


@dataclass(frozen=True)
class _Coefficients:
    """Small per-sample numbers of the map q(p) = index(p) + u(p), in deformed axes.

    ``index`` is the flipped pixel index; ``u = lin @ (p - c) + mix @ d(p) - shift`` with
    ``lin = (R - I) F`` and ``mix = R F``; ``lin`` is None when zero.
    """

    flips: tuple[bool, ...]
    lin: np.ndarray | None
    mix: np.ndarray
    shift: np.ndarray
    centre: np.ndarray


def _coefficients(affine: AffineParams) -> _Coefficients:
    axes = _deformed_axes(affine.ndim)
    flips = tuple(a in affine.flip_axes for a in axes)
    f = np.diag([-1.0 if fl else 1.0 for fl in flips])
    r = _pull_rotation(affine)
    lin = (r - np.eye(affine.ndim)) @ f
    centre = np.array([(affine.spatial_shape[a] - 1) / 2.0 for a in axes])
    return _Coefficients(
        flips=flips,
        lin=None if not lin.any() else lin,
        mix=r @ f,
        shift=np.asarray(affine.shift, dtype=np.float64),
        centre=centre,
    )


def _z_index(affine: AffineParams, bounds: tuple[tuple[int, int], ...]) -> np.ndarray | None:
    """2.5D: source slice of each output slice (crop, then z flip); None if all, in order."""
    z_size = affine.spatial_shape[0]
    lo, hi = bounds[0]
    if lo == 0 and hi == z_size and 0 not in affine.flip_axes:
        return None
    idx = np.arange(lo, hi)
    return z_size - 1 - idx if 0 in affine.flip_axes else idx


def _is_permutation(coef: _Coefficients) -> bool:
    """No rotation and a whole-pixel shift: with no field, q(p) is a pixel index."""
    return coef.lin is None and bool(np.all(coef.shift == np.round(coef.shift)))


def _source_index(
    spatial_shape: Shape3,
    ndim: int,
    bounds: tuple[tuple[int, int], ...],
    coef: _Coefficients,
    with_shift: bool,
) -> tuple[np.ndarray, ...]:
    """Per deformed axis, the flipped (and, if ``with_shift``, shifted and mirrored) index."""
    out = []
    for i, a in enumerate(_deformed_axes(ndim)):
        size = spatial_shape[a]
        idx = np.arange(*bounds[a])
        if coef.flips[i]:
            idx = size - 1 - idx
        if with_shift:
            idx = _mirror(idx - int(round(coef.shift[i])), size)
        out.append(idx)
    return tuple(out)


def _broadcast_1d(v: Any, axis: int, ndim: int) -> Any:
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


@dataclass(frozen=True)
class _Plan:
    """The numpy pull-back map for one image: index arrays plus an offset field (or None)."""

    ndim: int
    z_index: np.ndarray | None  # 2.5D only
    index: tuple[np.ndarray, ...]  # per deformed axis, int64 (out_a,)
    offset: np.ndarray | None  # float64 (ndim, *out) pixels; None = pure permutation

    def coordinates(self) -> np.ndarray:
        assert self.offset is not None
        coords = self.offset.copy()
        for a, idx in enumerate(self.index):
            coords[a] += _broadcast_1d(idx.astype(np.float64), a, self.ndim)
        return coords


def _plan_numpy(
    spatial_shape: Shape3,
    ndim: int,
    elastic: ElasticParams | None,
    affine: AffineParams | None,
    bounds: tuple[tuple[int, int], ...],
) -> _Plan:
    if affine is None:
        affine = AffineParams(spatial_shape, ndim=ndim)
    axes = _deformed_axes(ndim)
    coef = _coefficients(affine)
    z_index = _z_index(affine, bounds) if ndim == 2 else None
    has_field = elastic is not None and bool(np.any(elastic.displacement))
    if not has_field and _is_permutation(coef):
        return _Plan(ndim, z_index, _source_index(spatial_shape, ndim, bounds, coef, True), None)
    index = _source_index(spatial_shape, ndim, bounds, coef, False)
    out_shape = tuple(hi - lo for a in axes for lo, hi in [bounds[a]])
    offset = np.zeros((ndim, *out_shape))
    rel = [
        np.arange(*bounds[a], dtype=np.float64) - c for a, c in zip(axes, coef.centre, strict=True)
    ]
    d = _field_numpy(elastic, bounds) if has_field and elastic is not None else None
    for i in range(ndim):
        if coef.lin is not None:
            for j in range(ndim):
                if coef.lin[i, j] != 0:
                    offset[i] += coef.lin[i, j] * _broadcast_1d(rel[j], j, ndim)
        if d is not None:
            for j in range(ndim):
                if coef.mix[i, j] != 0:
                    offset[i] += coef.mix[i, j] * d[j]
        offset[i] -= coef.shift[i]
    return _Plan(ndim, z_index, index, offset)


# ---------------------------------------------------------------------------
# numpy / scipy path
# ---------------------------------------------------------------------------


def _prefilter_window(
    array: np.ndarray, coords: np.ndarray, spatial_axes: tuple[int, ...]
) -> np.ndarray:
    """Restrict a spline resampling to the input window it reads (crops are cheap).

    The spline prefilter is global, but its influence decays as |z|^k (z = sqrt(3) - 2), so
    a window reaching ``WINDOW_MARGIN`` pixels beyond the sampled positions changes the
    result by < 1e-13 of the image range. ``coords`` is shifted in place to the window.
    """
    window = []
    for k, ax in enumerate(spatial_axes):
        size = array.shape[ax]
        lo = int(np.floor(coords[k].min())) - WINDOW_MARGIN
        hi = int(np.floor(coords[k].max())) + 2 + WINDOW_MARGIN
        if lo >= 0 and hi <= size and hi - lo < size:
            window.append(slice(lo, hi))
            coords[k] -= lo
        else:
            window.append(slice(None))
    index = [slice(None)] * array.ndim
    for ax, sl in zip(spatial_axes, window, strict=True):
        index[ax] = sl
    return array[tuple(index)]


def _resample_numpy(array: np.ndarray, plan: _Plan, order: int) -> np.ndarray:
    """Resample ``array`` (L, Z, Y, X) with ``plan`` -> (L, Z', Y', X'), same dtype."""
    if plan.z_index is not None:
        array = array[:, plan.z_index]
    if plan.offset is None:  # pure permutation (flips / crop): gather, exact
        if plan.ndim == 2:
            iy, ix = plan.index
            return np.ascontiguousarray(array[:, :, iy[:, None], ix[None, :]])
        iz, iy, ix = plan.index
        return np.ascontiguousarray(
            array[:, iz[:, None, None], iy[None, :, None], ix[None, None, :]]
        )
    coords = plan.coordinates()
    spatial_axes = (2, 3) if plan.ndim == 2 else (1, 2, 3)
    if order >= 2:  # exact spline prefilter in float64, along the deformed axes only
        array = _prefilter_window(array, coords, spatial_axes)
        src = array.astype(np.float64)
        for ax in spatial_axes:
            src = ndimage.spline_filter1d(
                src, order=order, axis=ax, mode="mirror", output=np.float64
            )
    else:
        src = array
    lead = array.shape[:2] if plan.ndim == 2 else array.shape[:1]  # (L, Z') or (L,)
    out = np.empty((*lead, *coords.shape[1:]), dtype=array.dtype)
    flat_src = src.reshape(-1, *src.shape[4 - plan.ndim :])
    flat_out = out.reshape(-1, *out.shape[4 - plan.ndim :])
    for k in range(flat_src.shape[0]):
        ndimage.map_coordinates(
            flat_src[k], coords, output=flat_out[k], order=order, mode="mirror", prefilter=False
        )
    return out


def _warp_numpy_all(
    image: np.ndarray | None,
    label: np.ndarray | None,
    weight: np.ndarray | None,
    elastic: ElasticParams | None,
    affine: AffineParams | None,
    order: int,
    crop: Any,
    spatial_shape: Shape3,
    ndim: int,
) -> tuple[Any, Any, Any]:
    bounds = _crop_bounds(crop, spatial_shape)
    plan = _plan_numpy(spatial_shape, ndim, elastic, affine, bounds)
    out_image = _resample_numpy(image, plan, order) if image is not None else None
    out_label = _resample_numpy(label[None], plan, 0)[0] if label is not None else None
    out_weight = _resample_numpy(weight[None], plan, 1)[0] if weight is not None else None
    return out_image, out_label, out_weight


def _params_frame(elastic: ElasticParams | None, affine: AffineParams | None) -> tuple[Shape3, int]:
    if elastic is None and affine is None:
        raise ValueError("elastic and affine must not both be None; pass at least one")
    if elastic is not None and not isinstance(elastic, ElasticParams):
        raise TypeError(f"elastic must be ElasticParams, got {type(elastic).__name__}")
    if affine is not None and not isinstance(affine, AffineParams):
        raise TypeError(f"affine must be AffineParams, got {type(affine).__name__}")
    ref = elastic if elastic is not None else affine
    assert ref is not None
    if elastic is not None and affine is not None:
        if (elastic.spatial_shape, elastic.ndim) != (affine.spatial_shape, affine.ndim):
            raise ValueError(
                f"elastic and affine params must share spatial_shape and ndim, got "
                f"{elastic.spatial_shape}/{elastic.ndim} vs {affine.spatial_shape}/{affine.ndim}"
            )
    return ref.spatial_shape, ref.ndim


def warp_image(
    image: FloatArray,
    *,
    elastic: ElasticParams | None = None,
    affine: AffineParams | None = None,
    order: int = 3,
    crop: Sequence[slice] | None = None,
) -> FloatArray:
    """Apply elastic and/or affine params to an image with one resampling (numpy/scipy).

    Args:
        image: Intensities, float ``(C, Z, Y, X)``; not modified.
        elastic: Elastic params, or None.
        affine: Shift/rotation/flip params, or None.
        order: Spline order: 0 nearest, 1 linear, 3 cubic B-spline (default, as the paper's
            bicubic and elasticdeform).
        crop: Optional 3 slices ``(z, y, x)``: compute only this window of the output (the
            map is that of the whole image; elasticdeform's ``crop=``). Orders >= 2 still
            prefilter the whole image.

    Returns:
        Warped image, same dtype, ``(C, Z', Y', X')`` (the crop's shape, else the input's).

    Raises:
        TypeError: For a wrong array or params type.
        ValueError: For a wrong shape, order or crop, or mismatched params.

    Example:
        >>> image = np.arange(35, dtype=np.float32).reshape(1, 1, 5, 7)
        >>> out = warp_image(image, affine=AffineParams((1, 5, 7), shift=(0, 1)), order=1)
        >>> out[0, 0, 0]  # content moved one pixel right, mirrored in at the left edge
        array([1., 0., 1., 2., 3., 4., 5.], dtype=float32)
    """
    shape, ndim = _params_frame(elastic, affine)
    _check_array(image, "image", 4, "float", "(C, Z, Y, X)")
    _check_shape_matches(image.shape[1:], shape, "image")
    order = _check_order(order)
    return _warp_numpy_all(image, None, None, elastic, affine, order, crop, shape, ndim)[0]


def warp_label(
    label: LabelArray,
    *,
    elastic: ElasticParams | None = None,
    affine: AffineParams | None = None,
    crop: Sequence[slice] | None = None,
) -> LabelArray:
    """Apply elastic and/or affine params to a label map, nearest neighbour (numpy/scipy).

    Args:
        label: Integer or bool ``(Z, Y, X)``; not modified.
        elastic: Elastic params, or None.
        affine: Shift/rotation/flip params, or None.
        crop: Optional 3 slices ``(z, y, x)`` (see :func:`warp_image`).

    Returns:
        Warped labels, same dtype, ``(Z', Y', X')``; every value occurs in ``label``.

    Raises:
        TypeError: For a wrong array or params type.
        ValueError: For a wrong shape or crop, or mismatched params.

    Example:
        >>> label = np.arange(35, dtype=np.uint8).reshape(1, 5, 7)
        >>> warp_label(label, affine=AffineParams((1, 5, 7), flip_axes=(1,)))[0, :, 0]
        array([28, 21, 14,  7,  0], dtype=uint8)
    """
    shape, ndim = _params_frame(elastic, affine)
    _check_array(label, "label", 3, "int", "(Z, Y, X)")
    _check_shape_matches(label.shape, shape, "label")
    return _warp_numpy_all(None, label, None, elastic, affine, 0, crop, shape, ndim)[1]


def elastic_deform(
    image: FloatArray,
    params: ElasticParams,
    *,
    order: int = 3,
    crop: Sequence[slice] | None = None,
) -> FloatArray:
    """U-Net elastic deformation of an image (numpy/scipy ``map_coordinates``).

    Args:
        image: Intensities, float ``(C, Z, Y, X)``; not modified.
        params: From :func:`sample_elastic_params` for ``image.shape[1:]``.
        order: 0 nearest, 1 linear, 3 cubic B-spline (default).
        crop: Optional 3 slices ``(z, y, x)``: evaluate only this output window.

    Returns:
        Deformed image, same dtype, ``(C, Z', Y', X')``.

    Raises:
        TypeError: For a wrong array or params type.
        ValueError: For a wrong shape, order or crop.

    Example:
        >>> image = np.arange(35, dtype=np.float32).reshape(1, 1, 5, 7)
        >>> zero = ElasticParams(np.zeros((2, 3, 3)), spatial_shape=(1, 5, 7))
        >>> bool(np.array_equal(elastic_deform(image, zero), image))
        True
    """
    if not isinstance(params, ElasticParams):
        raise TypeError(f"params must be ElasticParams, got {type(params).__name__}")
    return warp_image(image, elastic=params, order=order, crop=crop)


def elastic_deform_label(
    label: LabelArray, params: ElasticParams, *, crop: Sequence[slice] | None = None
) -> LabelArray:
    """U-Net elastic deformation of a label map, nearest neighbour (no new values).

    Args:
        label: Integer or bool ``(Z, Y, X)``; not modified.
        params: From :func:`sample_elastic_params` for ``label.shape``.
        crop: Optional 3 slices ``(z, y, x)``.

    Returns:
        Deformed labels, same dtype, ``(Z', Y', X')``.

    Raises:
        TypeError: For a wrong array or params type.
        ValueError: For a wrong shape or crop.

    Example:
        >>> label = (np.arange(400).reshape(1, 20, 20) % 3).astype(np.uint8)
        >>> p = ElasticParams(np.full((2, 3, 3), 0.4), spatial_shape=(1, 20, 20))
        >>> sorted(np.unique(elastic_deform_label(label, p)).tolist())
        [0, 1, 2]
    """
    if not isinstance(params, ElasticParams):
        raise TypeError(f"params must be ElasticParams, got {type(params).__name__}")
    return warp_label(label, elastic=params, crop=crop)


def elastic_deform_sample(
    image: FloatArray,
    label: LabelArray | None,
    weight: FloatArray | None = None,
    *,
    params: ElasticParams,
    order: int = 3,
    crop: Sequence[slice] | None = None,
) -> tuple[FloatArray, LabelArray | None, FloatArray | None]:
    """Deform image (``order``), label map (nearest) and weight map (linear) with one field.

    Args:
        image: Intensities, float ``(C, Z, Y, X)``.
        label: Integer ``(Z, Y, X)``, or None.
        weight: Float ``(Z, Y, X)`` (e.g. the U-Net weight map), or None.
        params: From :func:`sample_elastic_params` for ``image.shape[1:]``.
        order: Image interpolation: 1 linear or 3 cubic B-spline (default); 0 allowed.
        crop: Optional 3 slices ``(z, y, x)``.

    Returns:
        ``(image, label, weight)`` deformed; None stays None.

    Raises:
        TypeError: For a wrong array or params type.
        ValueError: For mismatched shapes, a wrong order or crop.

    Example:
        >>> image = np.zeros((1, 1, 8, 8), np.float32); label = np.zeros((1, 8, 8), np.uint8)
        >>> p = ElasticParams(np.ones((2, 3, 3)), spatial_shape=(1, 8, 8))
        >>> [a.shape for a in elastic_deform_sample(image, label, params=p)[:2]]
        [(1, 1, 8, 8), (1, 8, 8)]
    """
    if not isinstance(params, ElasticParams):
        raise TypeError(f"params must be ElasticParams, got {type(params).__name__}")
    shape, ndim = params.spatial_shape, params.ndim
    _check_sample_arrays(image, label, weight, shape)
    order = _check_order(order)
    return _warp_numpy_all(image, label, weight, params, None, order, crop, shape, ndim)


def _check_sample_arrays(image: Any, label: Any, weight: Any, shape: Shape3) -> None:
    _check_array(image, "image", 4, "float", "(C, Z, Y, X)")
    _check_shape_matches(image.shape[1:], shape, "image")
    if label is not None:
        _check_array(label, "label", 3, "int", "(Z, Y, X)")
        _check_shape_matches(label.shape, shape, "label")
    if weight is not None:
        _check_array(weight, "weight", 3, "float", "(Z, Y, X)")
        _check_shape_matches(weight.shape, shape, "weight")


def adjust_intensity(image: FloatArray, params: IntensityParams) -> FloatArray:
    """Grey-value variation: gamma (range kept), then contrast about the mean, per channel.

    Args:
        image: Intensities, float ``(C, Z, Y, X)``; not modified.
        params: From :func:`sample_intensity_params`. Factors equal to 1 are skipped
            (exact identity). A constant channel is left unchanged by gamma.

    Returns:
        Adjusted image, same dtype and shape.

    Raises:
        TypeError: For a wrong array or params type.
        ValueError: For a wrong shape.

    Example:
        >>> image = np.array([0.0, 1.0, 2.0, 4.0], np.float32).reshape(1, 1, 1, 4)
        >>> adjust_intensity(image, IntensityParams(gamma=2.0))[0, 0, 0]
        array([0.  , 0.25, 1.  , 4.  ], dtype=float32)
        >>> adjust_intensity(image, IntensityParams(contrast=2.0))[0, 0, 0]
        array([-1.75,  0.25,  2.25,  6.25], dtype=float32)
    """
    _check_array(image, "image", 4, "float", "(C, Z, Y, X)")
    if not isinstance(params, IntensityParams):
        raise TypeError(f"params must be IntensityParams, got {type(params).__name__}")
    out = _adjust_intensity_numpy(image, params)
    return out.copy() if out is image else out


def _adjust_intensity_numpy(image: np.ndarray, params: IntensityParams) -> np.ndarray:
    """adjust_intensity without checks; returns ``image`` itself when nothing changes."""
    out = image
    dt = image.dtype.type
    if params.gamma != 1.0:
        lo = out.min(axis=(1, 2, 3), keepdims=True)
        span = out.max(axis=(1, 2, 3), keepdims=True) - lo
        safe = np.where(span > 0, span, dt(1))
        scaled = np.power((out - lo) / safe, dt(params.gamma))
        out = np.where(span > 0, lo + span * scaled, out).astype(image.dtype, copy=False)
    if params.contrast != 1.0:
        mean = out.mean(axis=(1, 2, 3), keepdims=True, dtype=np.float64).astype(image.dtype)
        out = (mean + dt(params.contrast) * (out - mean)).astype(image.dtype, copy=False)
    return out


def apply_augment(
    image: FloatArray,
    label: LabelArray | None,
    weight: FloatArray | None,
    params: AugmentParams,
    *,
    order: int = 3,
    crop: Sequence[slice] | None = None,
) -> tuple[FloatArray, LabelArray | None, FloatArray | None]:
    """Apply one augmentation draw: one spatial resampling, then grey values (images only).

    Order: (1) flips, rotation, shift and the elastic field composed into one map (module
    docstring), image interpolated with ``order``, label nearest, weight linear; (2) gamma,
    then contrast, on the image.

    Args:
        image: Intensities, float ``(C, Z, Y, X)``.
        label: Integer ``(Z, Y, X)``, or None.
        weight: Float ``(Z, Y, X)``, or None.
        params: From :func:`sample_augment_params` for ``image.shape[1:]``.
        order: Image interpolation order (0, 1, 3 = cubic B-spline).
        crop: Optional 3 slices ``(z, y, x)``: compute only this output window.

    Returns:
        ``(image, label, weight)``; None stays None.

    Raises:
        TypeError: For a wrong array or params type.
        ValueError: For mismatched shapes, a wrong order or crop.

    Example:
        >>> image = np.arange(35, dtype=np.float32).reshape(1, 1, 5, 7)
        >>> p = AugmentParams(AffineParams((1, 5, 7), flip_axes=(2,)))
        >>> apply_augment(image, None, None, p)[0][0, 0, 0]
        array([6., 5., 4., 3., 2., 1., 0.], dtype=float32)
    """
    if not isinstance(params, AugmentParams):
        raise TypeError(f"params must be AugmentParams, got {type(params).__name__}")
    shape, ndim = params.spatial_shape, params.ndim
    _check_sample_arrays(image, label, weight, shape)
    order = _check_order(order)
    out_image, out_label, out_weight = _warp_numpy_all(
        image, label, weight, params.elastic, params.affine, order, crop, shape, ndim
    )
    return _adjust_intensity_numpy(out_image, params.intensity), out_label, out_weight


# ---------------------------------------------------------------------------
# torch path
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _grid_positions(size: int, dtype_name: str) -> np.ndarray:
    """Pixel centres 0 .. size - 1 normalized for grid_sample(align_corners=True): [-1, 1].

    Rounded once to the grid's dtype; float32 holds pixel positions to ~3e-8 (size - 1)
    pixels, which bounds the torch path's agreement with the float64 numpy coordinates.
    """
    g = (2.0 * np.arange(size) / (size - 1) - 1.0).astype(dtype_name)
    g.setflags(write=False)
    return g


def _prefilter_axis_torch(x: torch.Tensor, dim: int, lo: int, hi: int) -> torch.Tensor:
    """Cubic B-spline coefficients ``lo .. hi - 1`` along ``dim``, mirror boundaries.

    The exact filter is ``-6 z / ((1 - z D)(1 - z / D))``, z = sqrt(3) - 2; each factor
    ``1 / (1 - z D)`` is truncated to ``sum_{k<16} z^k D^k = prod_j (1 + z^(2^j) D^(2^j))``
    (|z|^16 < 1e-9), 4 shifted adds per direction on a mirror-extended copy. The result is
    local (support +-15), so a window ``[lo, hi)`` is bit-identical to the same entries of the
    whole axis; ``lo`` < 0 or ``hi`` > size read the mirror image.
    """
    pad = 2**PREFILTER_DOUBLINGS - 1
    idx = _mirror(np.arange(lo - pad, hi + pad), x.shape[dim])
    y = x.index_select(dim, _torch_index(idx, x.device))
    for j in range(PREFILTER_DOUBLINGS):  # causal: y[m] += z^s y[m - s]
        s = 2**j
        length = y.shape[dim] - s
        y = y.narrow(dim, s, length) + BSPLINE_POLE**s * y.narrow(dim, 0, length)
    for j in range(PREFILTER_DOUBLINGS):  # anti-causal: y[m] += z^s y[m + s]
        s = 2**j
        length = y.shape[dim] - s
        y = y.narrow(dim, 0, length) + BSPLINE_POLE**s * y.narrow(dim, s, length)
    return y * (-6.0 * BSPLINE_POLE)


def _torch_index(values: np.ndarray, device: Any) -> torch.Tensor:
    import torch

    return torch.as_tensor(values, dtype=torch.long, device=device)


def _bspline_fetches_torch(q: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cubic B-spline interpolation at ``q`` as two linear fetches (Sigg and Hadwiger 2005).

    With ``b = floor(q)``, ``t = q - b`` and knot weights ``w0..w3`` on ``b - 1 .. b + 2``,
    ``sum_k w_k c_k = g0 lin(b - 1 + w1 / g0) + g1 lin(b + 1 + w3 / g1)`` where
    ``g0 = w0 + w1 = (5 - 3t - 3t^2 + 2t^3) / 6 >= 1/6`` and ``g1 = 1 - g0 >= 1/6``. Computed
    in place (``q`` is overwritten). Returns the two positions (pixels) and ``g0``, ``g1``.
    """
    import torch

    base = torch.floor(q)
    t = q.sub_(base)
    t2 = t * t
    six_g0 = t.mul(2.0).sub_(3.0).mul_(t).sub_(3.0).mul_(t).add_(5.0)
    six_w1 = t.mul(3.0).sub_(6.0).mul_(t2).add_(4.0)
    six_g1 = torch.sub(6.0, six_g0)
    h0 = six_w1.div_(six_g0).add_(base).sub_(1.0)  # b - 1 + w1 / g0
    h1 = t2.mul_(t).div_(six_g1).add_(base).add_(1.0)  # b + 1 + w3 / g1
    return h0, h1, six_g0.mul_(1.0 / 6.0), six_g1.mul_(1.0 / 6.0)


def _bspline_sample_torch(src: torch.Tensor, grid: _TorchGrid) -> torch.Tensor:
    """Cubic B-spline resampling of src (N, L, *spatial): prefilter + 2**ndim linear fetches.

    Along each axis only the coefficients the fetches read are computed (a window, when it
    is smaller than the axis; e.g. for a crop), else the whole axis with mirror reflection.
    """
    import torch
    import torch.nn.functional as F

    fetch = [list(_bspline_fetches_torch(grid.pixels(a))) for a in range(grid.ndim)]
    for a in range(grid.ndim):
        dim = src.ndim - grid.ndim + a
        size = grid.sizes[a]
        lo = int(torch.floor(fetch[a][0].min()).item())
        hi = max(int(torch.floor(fetch[a][1].max()).item()) + 2, lo + 2)
        if hi - lo >= size:
            lo, hi = 0, size  # whole axis; grid_sample mirrors positions outside
        src = _prefilter_axis_torch(src, dim, lo, hi)
        scale = 2.0 / (hi - lo - 1)
        for c in (0, 1):  # to grid_sample's [-1, 1] over the window
            fetch[a][c] = fetch[a][c].sub_(lo).mul_(scale).sub_(1.0)
    shape = fetch[0][0].shape
    pos = torch.empty((*shape, grid.ndim), dtype=src.dtype, device=src.device)
    out = None
    for combo in np.ndindex(*(2,) * grid.ndim):
        weight = fetch[0][2 + combo[0]]
        for a in range(1, grid.ndim):
            weight = weight * fetch[a][2 + combo[a]]
        for a, c in enumerate(combo):
            pos[..., grid.ndim - 1 - a] = fetch[a][c]  # grid_sample wants (x, y[, z])
        sampled = F.grid_sample(
            src, pos, mode="bilinear", padding_mode="reflection", align_corners=True
        )
        if out is None:
            out = sampled.mul_(weight.unsqueeze(1))
        else:
            out.addcmul_(sampled, weight.unsqueeze(1))
    assert out is not None
    return out


class _TorchGrid:
    """Per-batch pull-back map on the device: q = index + u (pixels) per deformed axis.

    ``index[a]`` is the (N, out_a) integer source index (flipped; shifted and mirrored for
    permutations), ``u[a]`` the (N, *out) offset in pixels, or ``u`` None for a permutation.
    """

    def __init__(
        self,
        sizes: tuple[int, ...],
        index: list[torch.Tensor],
        u: list[torch.Tensor] | None,
        dtype: Any,
    ) -> None:
        self.ndim = len(sizes)
        self.sizes = sizes
        self.index = index
        self.u = u
        self.dtype = dtype
        self._normalized: torch.Tensor | None = None

    def normalized(self) -> torch.Tensor:
        """grid for grid_sample, (N, *out, ndim) with the last axis in (x, y[, z]) order."""
        import torch

        if self._normalized is None:
            n = self.index[0].shape[0]
            out_shape = tuple(int(i.shape[1]) for i in self.index)
            device = self.index[0].device
            grid = torch.empty((n, *out_shape, self.ndim), dtype=self.dtype, device=device)
            for a in range(self.ndim):
                table = torch.tensor(
                    _grid_positions(self.sizes[a], _np_dtype(self.dtype)), device=device
                )
                base = _broadcast_n(table[self.index[a]], a, self.ndim)
                target = grid[..., self.ndim - 1 - a]  # grid_sample wants (x, y[, z])
                if self.u is None:
                    target.copy_(base.expand(target.shape))
                else:  # strided write, no stacking copy
                    torch.add(base, self.u[a], alpha=2.0 / (self.sizes[a] - 1), out=target)
            self._normalized = grid
        return self._normalized

    def pixels(self, a: int) -> torch.Tensor:
        """Source position along deformed axis ``a`` in pixels, (N, *out)."""
        q = _broadcast_n(self.index[a].to(self.dtype), a, self.ndim)
        return q if self.u is None else q + self.u[a]


def _np_dtype(dtype: Any) -> str:
    import torch

    return "float64" if dtype == torch.float64 else "float32"


def _broadcast_n(v: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """(N, out_axis) -> (N, 1, .., out_axis, .., 1) for broadcasting over ndim axes."""
    shape = [v.shape[0]] + [1] * ndim
    shape[1 + axis] = v.shape[1]
    return v.reshape(shape)


def _field_torch(
    elastic: Sequence[ElasticParams],
    bounds: tuple[tuple[int, int], ...],
    dtype: Any,
    device: Any,
) -> torch.Tensor:
    """Per-pixel displacement (N, ndim, *out) from the coarse grids, same matrices as numpy."""
    import torch

    ref = elastic[0]
    axes = _deformed_axes(ref.ndim)
    w = [
        torch.tensor(
            interpolation_matrix(ref.spatial_shape[a], ref.grid_points)[slice(*bounds[a])],
            dtype=dtype,
            device=device,
        )
        for a in axes
    ]
    d = torch.as_tensor(np.stack([e.displacement for e in elastic]), dtype=dtype, device=device)
    n, g = d.shape[0], ref.grid_points
    if ref.ndim == 2:  # (N, 2, G, G) -> (N, 2, Y', X')
        return w[0] @ (d @ w[1].T)
    t = d @ w[2].T  # (N, 3, G, G, X')
    t = torch.matmul(w[1], t)  # (N, 3, G, Y', X')
    z_out = w[0].shape[0]
    return (w[0] @ t.reshape(n, 3, g, -1)).reshape(n, 3, z_out, *t.shape[3:])


def _torch_grid(
    spatial_shape: Shape3,
    ndim: int,
    elastic: Sequence[ElasticParams] | None,
    affine: Sequence[AffineParams],
    bounds: tuple[tuple[int, int], ...],
    dtype: Any,
    device: Any,
) -> _TorchGrid:
    import torch

    axes = _deformed_axes(ndim)
    n = len(affine)
    coefs = [_coefficients(a) for a in affine]
    has_field = elastic is not None and any(bool(np.any(e.displacement)) for e in elastic)
    permutation = not has_field and all(_is_permutation(c) for c in coefs)
    sources = [_source_index(spatial_shape, ndim, bounds, c, permutation) for c in coefs]
    index = [torch.as_tensor(np.stack([s[i] for s in sources]), device=device) for i in range(ndim)]
    sizes = tuple(spatial_shape[a] for a in axes)
    if permutation:
        return _TorchGrid(sizes, index, None, dtype)
    out_shape = tuple(hi - lo for a in axes for lo, hi in [bounds[a]])
    # u_i = sum_j lin_ij (p_j - c_j) + sum_j mix_ij d_j - shift_i, per sample (N, ndim, ndim)
    zero = np.zeros((ndim, ndim))
    lin = np.stack([zero if c.lin is None else c.lin for c in coefs])
    mix = np.stack([c.mix for c in coefs])
    shift = np.stack([c.shift for c in coefs])
    centre = coefs[0].centre
    d = _field_torch(elastic, bounds, dtype, device) if has_field and elastic else None
    bshape = (n,) + (1,) * ndim

    def per_sample(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=dtype, device=device).reshape(bshape)

    u = []
    for i in range(ndim):
        terms: list[torch.Tensor] = []
        for j, a in enumerate(axes):  # affine part: cheap broadcasts of 1D ramps
            if lin[:, i, j].any():
                rel = torch.arange(*bounds[a], dtype=dtype, device=device) - float(centre[j])
                terms.append(per_sample(lin[:, i, j]) * _broadcast_1d(rel, j + 1, ndim + 1))
        if shift[:, i].any():
            terms.append(per_sample(-shift[:, i]))
        if d is not None:
            for j in range(ndim):
                if np.all(mix[:, i, j] == 1.0):
                    terms.append(d[:, j])
                elif mix[:, i, j].any():
                    terms.append(per_sample(mix[:, i, j]) * d[:, j])
        total = terms[0] if terms else torch.zeros(bshape, dtype=dtype, device=device)
        for term in terms[1:]:
            total = total + term
        u.append(total.expand((n, *out_shape)))
    return _TorchGrid(sizes, index, u, dtype)


def _check_batch(batch: Any, name: str, ndim: int, layout: str) -> torch.Tensor:
    import torch

    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(batch).__name__}")
    if batch.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}D {layout}, got shape {tuple(batch.shape)}")
    return batch


def _check_params_list(params_list: Any, cls: type, name: str, n: int) -> list[Any]:
    if isinstance(params_list, cls) or not isinstance(params_list, Sequence):
        raise TypeError(
            f"{name} must be a sequence of {cls.__name__}, one per sample, "
            f"got {type(params_list).__name__}"
        )
    items = list(params_list)
    if len(items) != n or not all(isinstance(p, cls) for p in items):
        raise ValueError(
            f"{name} must hold {n} {cls.__name__} (one per sample), got {len(items)} "
            f"({sorted({type(p).__name__ for p in items})})"
        )
    return items


def _check_torch_frame(
    elastic: list[ElasticParams] | None, affine: list[AffineParams] | None, spatial: tuple
) -> tuple[Shape3, int]:
    refs = (elastic or []) + (affine or [])
    if not refs:
        raise ValueError("elastic and affine must not both be None; pass at least one")
    frames = {(p.spatial_shape, p.ndim) for p in refs}
    if len(frames) != 1:
        raise ValueError(f"all params must share spatial_shape and ndim, got {sorted(frames)}")
    shape, ndim = frames.pop()
    _check_shape_matches(spatial, shape, "batch")
    if elastic is not None and len({e.grid_points for e in elastic}) != 1:
        raise ValueError("elastic params of one batch must share grid_points")
    return shape, ndim


def _sample_torch(
    batch: torch.Tensor, grid: _TorchGrid, mode: str, z_index: list[np.ndarray | None]
) -> torch.Tensor:
    """Resample (N, L, Z, Y, X) with the grid -> (N, L, Z', Y', X')."""
    import torch
    import torch.nn.functional as F

    if any(z is not None for z in z_index):
        z_full = np.arange(batch.shape[2])
        batch = torch.stack(
            [
                b.index_select(1, torch.as_tensor(z_full if z is None else z, device=b.device))
                for b, z in zip(batch, z_index, strict=True)
            ]
        )
    n, channels, z = batch.shape[:3]
    if grid.u is None:  # permutation for every sample: gather, exact
        outs = []
        for k in range(n):
            b = batch[k]
            for a in range(grid.ndim):
                b = b.index_select(b.ndim - grid.ndim + a, grid.index[a][k])
            outs.append(b)
        return torch.stack(outs)
    if grid.ndim == 2:
        src = batch.reshape(n, channels * z, *batch.shape[3:])
    else:
        src = batch
    if mode == "bspline":
        out = _bspline_sample_torch(src, grid)
    else:
        out = F.grid_sample(
            src, grid.normalized(), mode=mode, padding_mode="reflection", align_corners=True
        )
    if grid.ndim == 2:
        out = out.reshape(n, channels, z, *out.shape[2:])
    return out


def _as_float_for_sampling(batch: torch.Tensor, mode: str, name: str) -> tuple[torch.Tensor, Any]:
    import torch

    if batch.is_floating_point():
        if batch.dtype not in (torch.float32, torch.float64):
            return batch.float(), batch.dtype
        return batch, None
    if mode != "nearest":
        raise ValueError(
            f"{name} with integer dtype {batch.dtype} needs mode='nearest', got {mode!r}; "
            "convert to float for interpolation"
        )
    small = batch.dtype in (torch.uint8, torch.int8, torch.int16, torch.bool)
    return batch.to(torch.float32 if small else torch.float64), batch.dtype


def _check_mode(mode: Any, ndim: int) -> str:
    if mode not in TORCH_MODES:
        raise ValueError(f"mode must be one of {TORCH_MODES}, got {mode!r}")
    if mode == "bicubic" and ndim == 3:
        raise ValueError(
            "mode 'bicubic' must be used with ndim=2 params (torch grid_sample has no 3D "
            "bicubic), got ndim=3; use mode='bspline'"
        )
    return str(mode)


def _warp_torch_all(
    image: torch.Tensor | None,
    label: torch.Tensor | None,
    weight: torch.Tensor | None,
    elastic: list[ElasticParams] | None,
    affine: list[AffineParams] | None,
    mode: str,
    crop: Any,
    shape: Shape3,
    ndim: int,
    ref: torch.Tensor,
) -> tuple[Any, Any, Any]:

    n = ref.shape[0]
    bounds = _crop_bounds(crop, shape)
    affine_list = affine if affine is not None else [AffineParams(shape, ndim=ndim)] * n
    z_index = [_z_index(a, bounds) if ndim == 2 else None for a in affine_list]
    cache: dict[Any, _TorchGrid] = {}

    def grid_for(dtype: Any) -> _TorchGrid:
        if dtype not in cache:
            cache[dtype] = _torch_grid(shape, ndim, elastic, affine_list, bounds, dtype, ref.device)
        return cache[dtype]

    def run(x: torch.Tensor, m: str, name: str) -> torch.Tensor:
        xf, orig = _as_float_for_sampling(x, m, name)
        out = _sample_torch(xf, grid_for(xf.dtype), m, z_index)
        return out if orig is None else out.to(orig)  # nearest: exact integers

    out_image = run(image, mode, "image") if image is not None else None
    out_label = run(label.unsqueeze(1), "nearest", "label")[:, 0] if label is not None else None
    out_weight = (
        run(weight.unsqueeze(1), "bilinear", "weight")[:, 0] if weight is not None else None
    )
    return out_image, out_label, out_weight


def warp_torch(
    batch: torch.Tensor,
    *,
    elastic: Sequence[ElasticParams] | None = None,
    affine: Sequence[AffineParams] | None = None,
    mode: str = "bilinear",
    crop: Sequence[slice] | None = None,
) -> torch.Tensor:
    """Apply per-sample elastic and/or affine params to a batch with one ``grid_sample``.

    The map is built on the batch's device from the same interpolation matrices as the
    numpy path (module docstring); works on CPU and GPU.

    Args:
        batch: ``(N, C, Z, Y, X)`` float (or integer with ``mode="nearest"``).
        elastic: N elastic params, or None.
        affine: N affine params, or None.
        mode: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` (Keys, 2D/2.5D only) or
            ``"bspline"`` (cubic B-spline, matches numpy ``order=3``).
        crop: Optional 3 slices ``(z, y, x)``: compute only this output window.

    Returns:
        ``(N, C, Z', Y', X')``, same dtype and device.

    Raises:
        TypeError: For a wrong tensor or params type.
        ValueError: For a wrong shape, mode or crop, or mismatched params.

    Example:
        >>> import torch
        >>> batch = torch.arange(35.0).reshape(1, 1, 1, 5, 7)
        >>> out = warp_torch(batch, affine=[AffineParams((1, 5, 7), shift=(0, 1))])
        >>> out[0, 0, 0, 0].tolist()
        [1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    """
    batch = _check_batch(batch, "batch", 5, "(N, C, Z, Y, X)")
    n = batch.shape[0]
    e = _check_params_list(elastic, ElasticParams, "elastic", n) if elastic is not None else None
    a = _check_params_list(affine, AffineParams, "affine", n) if affine is not None else None
    shape, ndim = _check_torch_frame(e, a, tuple(batch.shape[2:]))
    mode = _check_mode(mode, ndim)
    return _warp_torch_all(batch, None, None, e, a, mode, crop, shape, ndim, batch)[0]


def elastic_deform_torch(
    batch: torch.Tensor,
    params_list: Sequence[ElasticParams],
    *,
    mode: str = "bilinear",
    crop: Sequence[slice] | None = None,
) -> torch.Tensor:
    """U-Net elastic deformation of a batch, one field per sample (torch, any device).

    Args:
        batch: ``(N, C, Z, Y, X)`` float, or integer labels with ``mode="nearest"``.
        params_list: N params from :func:`sample_elastic_params`, one per sample.
        mode: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` (2D/2.5D) or ``"bspline"``.
        crop: Optional 3 slices ``(z, y, x)``.

    Returns:
        ``(N, C, Z', Y', X')``, same dtype and device.

    Raises:
        TypeError: For a wrong tensor or params type.
        ValueError: For a wrong shape, mode or crop, or mismatched params.

    Example:
        >>> import torch
        >>> batch = torch.arange(70.0).reshape(2, 1, 1, 5, 7)
        >>> zero = ElasticParams(np.zeros((2, 3, 3)), spatial_shape=(1, 5, 7))
        >>> bool(torch.equal(elastic_deform_torch(batch, [zero, zero]), batch))
        True
    """
    return warp_torch(batch, elastic=params_list, mode=mode, crop=crop)


def adjust_intensity_torch(
    batch: torch.Tensor, params_list: Sequence[IntensityParams]
) -> torch.Tensor:
    """Per-sample grey-value variation of a float batch (torch version of adjust_intensity).

    Args:
        batch: Intensities, float ``(N, C, Z, Y, X)``; not modified.
        params_list: N intensity params.

    Returns:
        Adjusted batch, same dtype, shape and device.

    Raises:
        TypeError: For a wrong tensor, dtype or params type.
        ValueError: For a wrong shape or number of params.

    Example:
        >>> import torch
        >>> batch = torch.tensor([0.0, 1.0, 2.0, 4.0]).reshape(1, 1, 1, 1, 4)
        >>> adjust_intensity_torch(batch, [IntensityParams(gamma=2.0)]).flatten().tolist()
        [0.0, 0.25, 1.0, 4.0]
    """

    batch = _check_batch(batch, "batch", 5, "(N, C, Z, Y, X)")
    if not batch.is_floating_point():
        raise TypeError(f"batch must have a float dtype, got {batch.dtype}")
    items = _check_params_list(params_list, IntensityParams, "params_list", batch.shape[0])
    out = _adjust_intensity_torch(batch, items)
    return out.clone() if out is batch else out


def _adjust_intensity_torch(batch: torch.Tensor, items: list[IntensityParams]) -> torch.Tensor:
    """adjust_intensity_torch without checks; returns ``batch`` itself when nothing changes."""
    import torch

    shape = (batch.shape[0], 1, 1, 1, 1)
    dims = (2, 3, 4)
    out = batch
    gammas = [p.gamma for p in items]
    if any(g != 1.0 for g in gammas):
        gamma = torch.tensor(gammas, dtype=batch.dtype, device=batch.device).reshape(shape)
        lo = out.amin(dim=dims, keepdim=True)
        span = out.amax(dim=dims, keepdim=True) - lo
        safe = torch.where(span > 0, span, torch.ones_like(span))
        adjusted = lo + span * torch.pow((out - lo) / safe, gamma)
        keep = (gamma == 1.0) | (span <= 0)
        out = torch.where(keep, out, adjusted)
    contrasts = [p.contrast for p in items]
    if any(c != 1.0 for c in contrasts):
        k = torch.tensor(contrasts, dtype=batch.dtype, device=batch.device).reshape(shape)
        mean = out.mean(dim=dims, keepdim=True, dtype=torch.float64).to(batch.dtype)
        out = torch.where(k == 1.0, out, mean + k * (out - mean))
    return out


def apply_augment_torch(
    image: torch.Tensor,
    label: torch.Tensor | None,
    weight: torch.Tensor | None,
    params_list: Sequence[AugmentParams],
    *,
    mode: str = "bilinear",
    crop: Sequence[slice] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Torch version of :func:`apply_augment` for a batch, one draw per sample, any device.

    Args:
        image: Intensities, float ``(N, C, Z, Y, X)``.
        label: Integer ``(N, Z, Y, X)`` (nearest), or None.
        weight: Float ``(N, Z, Y, X)`` (linear), or None.
        params_list: N params from :func:`sample_augment_params`.
        mode: Image mode: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or ``"bspline"``.
        crop: Optional 3 slices ``(z, y, x)``.

    Returns:
        ``(image, label, weight)``; None stays None.

    Raises:
        TypeError: For a wrong tensor or params type.
        ValueError: For mismatched shapes, a wrong mode or crop.

    Example:
        >>> import torch
        >>> image = torch.arange(35.0).reshape(1, 1, 1, 5, 7)
        >>> p = AugmentParams(AffineParams((1, 5, 7), flip_axes=(2,)))
        >>> apply_augment_torch(image, None, None, [p])[0][0, 0, 0, 0].tolist()
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    """
    image = _check_batch(image, "image", 5, "(N, C, Z, Y, X)")
    if not image.is_floating_point():
        raise TypeError(f"image must have a float dtype, got {image.dtype}")
    n = image.shape[0]
    items = _check_params_list(params_list, AugmentParams, "params_list", n)
    spatial = tuple(image.shape[2:])
    if label is not None:
        label = _check_batch(label, "label", 4, "(N, Z, Y, X)")
        if label.is_floating_point() or tuple(label.shape) != (n, *spatial):
            raise ValueError(
                f"label must be an integer (N, Z, Y, X) tensor of shape {(n, *spatial)}, got "
                f"{label.dtype} {tuple(label.shape)}"
            )
    if weight is not None:
        weight = _check_batch(weight, "weight", 4, "(N, Z, Y, X)")
        if not weight.is_floating_point() or tuple(weight.shape) != (n, *spatial):
            raise ValueError(
                f"weight must be a float (N, Z, Y, X) tensor of shape {(n, *spatial)}, got "
                f"{weight.dtype} {tuple(weight.shape)}"
            )
    affine = [p.affine for p in items]
    with_field = [p.elastic for p in items if p.elastic is not None]
    elastic: list[ElasticParams] | None = None
    if with_field and len(with_field) != n:
        elastic = [
            p.elastic
            if p.elastic is not None
            else ElasticParams(
                np.zeros_like(with_field[0].displacement),
                p.spatial_shape,
                ndim=p.ndim,
                sigma=0.0,
                grid_points=with_field[0].grid_points,
            )
            for p in items
        ]
    elif with_field:
        elastic = with_field
    shape, ndim = _check_torch_frame(elastic, affine, spatial)
    mode = _check_mode(mode, ndim)
    if elastic is None and all(
        not any(a.shift) and not any(a.rotation_deg) and a.zoom == 1.0 for a in affine
    ):
        # flips alone move whole pixels: reverse indices instead of resampling
        bounds = _crop_bounds(crop, shape)
        out_image = _flip_crop_torch(image, affine, bounds)
        out_label, out_weight = (
            None if x is None else _flip_crop_torch(x, affine, bounds) for x in (label, weight)
        )
    else:
        out_image, out_label, out_weight = _warp_torch_all(
            image, label, weight, elastic, affine, mode, crop, shape, ndim, image
        )
    return _adjust_intensity_torch(out_image, [p.intensity for p in items]), out_label, out_weight


def _flip_crop_torch(
    x: torch.Tensor, affine: list[AffineParams], bounds: tuple[tuple[int, int], ...]
) -> torch.Tensor:
    """Each sample of ``x`` (N, ..., Z, Y, X) mirrored along its params' ``flip_axes``,
    then cropped to ``bounds``: what resampling with a flip-only transform gives, exactly."""
    import torch

    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(affine):
        groups.setdefault(a.flip_axes, []).append(i)
    lead = x.ndim - 3  # N and any channel dims before (Z, Y, X)
    out = x
    if set(groups) != {()}:
        out = torch.empty_like(x)
        for axes, members in groups.items():
            index = torch.as_tensor(members, device=x.device)
            part = x[index]
            out[index] = part.flip([lead + a for a in axes]) if axes else part
    window = (slice(None),) * lead + tuple(slice(a, b) for a, b in bounds)
    return out[window].contiguous()
