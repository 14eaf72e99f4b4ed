"""The displacement field and the composed pull-back map, shared by the numpy and torch paths.

:func:`interpolation_matrix` holds the weights of the coarse-to-fine cubic B-spline
interpolation (the U-Net paper's "bicubic interpolation"), :func:`displacement_field` the
per-pixel elastic field. The private helpers compose flips, rotation, zoom, shift and the
field into one map ``q(p)`` per sample (:class:`_Coefficients`); :func:`_plan_numpy` is that
map for the numpy path, and :mod:`medseg.augment._torch_grid` builds it on a torch device.
The maths is in the package docstring of :mod:`medseg.augment` ("the module docstring"
below).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.augment.params import (
    PAPER_GRID_POINTS,
    AffineParams,
    ElasticParams,
    _check_grid_points,
    _crop_bounds,
    _deformed_axes,
)
from medseg.typing import FloatArray, Shape3

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
# The composed pull-back map (shared by the numpy and torch paths)
# ---------------------------------------------------------------------------


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
