"""The torch path's map on the device and its cubic B-spline sampler.

:class:`_TorchGrid` holds a batch's pull-back map ``q = index + u`` (pixels, per deformed
axis) on the batch's device; :func:`_torch_grid` builds it from the same coefficients and
interpolation matrices as the numpy path (:mod:`medseg.augment.field`), and
:func:`_bspline_sample_torch` samples it with a truncated cubic B-spline prefilter and
``2**ndim`` linear fetches. The maths is in the package docstring of :mod:`medseg.augment`.
torch is imported inside the functions, so importing this module does not import torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.augment.field import (
    _broadcast_1d,
    _coefficients,
    _is_permutation,
    _mirror,
    _source_index,
    interpolation_matrix,
)
from medseg.augment.params import AffineParams, ElasticParams, _deformed_axes
from medseg.typing import Shape3

if TYPE_CHECKING:
    import torch

BSPLINE_POLE = math.sqrt(3.0) - 2.0  # pole of the cubic B-spline prefilter
PREFILTER_DOUBLINGS = 4  # each one-sided geometric series keeps 2**4 = 16 terms


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
