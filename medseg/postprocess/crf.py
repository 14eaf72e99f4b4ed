"""The fully connected CRF (:func:`dense_crf`) of :mod:`medseg.postprocess`.

Input checks, the smoothness kernel, the bilateral grid of the appearance kernel and
mean-field inference. The parameter search is in :mod:`medseg.postprocess.tuning`.

Fully connected CRF (Krähenbühl & Koltun, NIPS 2011, "Efficient Inference in Fully
Connected CRFs with Gaussian Edge Potentials"; used by DeepLab v1/v2). For labels
``x_i`` of every voxel ``i`` the energy is

    E(x) = sum_i psi_u(x_i) + sum_{i < j} mu(x_i, x_j) k(f_i, f_j)

with the unary ``psi_u(x_i = l) = -log P_i(l)`` from the network's softmax probabilities
(clamped below at :data:`PROB_FLOOR`), the Potts compatibility ``mu(l, l') = [l != l']``
and two Gaussian kernels (paper eq. 3):

    k(f_i, f_j) = w_appearance * exp(-|p_i - p_j|^2 / (2 sigma_alpha_mm^2)
                                     - |I_i - I_j|^2 / (2 sigma_beta^2))
                + w_smoothness * exp(-|p_i - p_j|^2 / (2 sigma_gamma_mm^2)),

where ``p`` is the voxel position in mm (index times ``spacing_mm``, (z, y, x)) and ``I``
the vector of the image's C channel intensities, in the units of the image as given.

Inference is the paper's Algorithm 1 (naive mean field): ``Q = softmax(-U)``, then
``num_iterations`` times: message passing ``m_i(l) = sum_m w_m sum_{j != i} k_m(f_i, f_j)
Q_j(l)`` for both kernels, the Potts compatibility transform ``sum_{l'} mu(l, l') m_i(l')
= M_i - m_i(l)`` (``M_i = sum_l m_i(l)``), adding the unary and normalising
``Q_i(l) = softmax_l(-U_i(l) - M_i + m_i(l))``. ``M_i`` is the same for every label, so
it cancels in the softmax and is never formed (this also avoids cancellation in float32).
Messages are the raw kernel sums of the paper, not normalised: a weight multiplies a sum
over all neighbours, so it is roughly "nats per neighbour" (see the defaults below).

Filtering, the costly step, is done in O(N):

* Smoothness kernel: exact. The Gaussian over positions is separable, so it is three 1D
  convolutions (zero padding: voxels outside the image do not exist) with taps
  ``exp(-(n * spacing)^2 / (2 sigma_gamma_mm^2))`` truncated at :data:`TRUNCATE`
  standard deviations (``|n| * spacing <= 4 sigma``; the dropped tail holds less than
  6.4e-5 of each 1D kernel's mass); the ``i == j`` term (value 1) is subtracted. Against
  the exact dense mean field, Q agrees to 2.2e-5 (measured, tests).
* Appearance (bilateral) kernel: a bilateral grid (Paris & Durand, ECCV 2006; Chen, Paris
  & Durand, SIGGRAPH 2007), written in torch so it runs on the input's device. The
  d-dimensional feature ``f = (p / sigma_alpha_mm, I / sigma_beta)`` (spatial axes of size
  1 are dropped: a 3D MRI has d = 4, a 2D grey image d = 3, a 2D RGB image d = 5) is
  *splatted* with multilinear (tent) weights onto the 2^d corners of its cell in a dense
  grid of spacing ``h`` = :data:`GRID_CELL` standard deviations, the grid is *blurred* by a
  separable Gaussian of standard deviation ``sqrt(1 - h^2 / 3)`` (the two tents add
  ``h^2 / 6`` each, so the total variance is that of the kernel, 1 per feature; taps
  truncated at 4 standard deviations and scaled to the kernel's mass (2 pi)^(d/2)), and
  *sliced* back with the same weights. Each voxel is first splatted onto its own base
  cell (one wide ``index_add`` of 2^d x K columns per voxel), then the occupied base cells
  onto their corners, so the per-voxel cost is O(2^d K) and the grid's O(cells K). The
  ``i == j`` term is removed exactly: a voxel's response to itself is the product over
  features of ``((1 - t)^2 + t^2) g_0 + 2 t (1 - t) g_1`` (t: its position in the cell,
  g_0, g_1: the central and next tap).

  Memory and accuracy: the grid has ``prod_a (floor(extent_a / h) + 2)`` cells, extent_a
  being the feature's range in standard deviations; when that exceeds
  :data:`MAX_GRID_CELLS` (2^24, 64 MiB per class), ``h`` is coarsened by steps of 5 % up
  to :data:`MAX_GRID_CELL` (1.0; beyond it the error grows fast, see below), and beyond
  that a ValueError asks for larger sigmas or a crop. Per voxel the grid keeps an int64
  cell index, 2^d float32 weights and a float32 self-response. Small sigmas on large
  volumes therefore cost accuracy: a 256 x 128 x 256 IBSR volume (z-scores in [-3.7, 3.7])
  gets h = 0.55 at sigma_alpha 5 mm / sigma_beta 0.5 but h = 0.94 at the defaults (3 mm /
  0.25), and 2 mm / 0.125 does not fit. ``benchmarks/results_crf.md`` gives the grid, time
  and peak memory of :func:`dense_crf` on that volume.

  Approximation error (measured against pair-by-pair sums, ``tests/reference.py``): the
  kernel sums ``sum_j k(f_i, f_j) v_j`` have a median relative error of 0.5-1.5 % and a
  maximum of 3-9 % at h = 0.5 (tiny noise images and a 24 x 32 x 32 mm IBSR crop with
  sigma_alpha 3-10 mm, sigma_beta 0.25-1); 1-3 % and 8-15 % at h = 0.7; 2-4 % and 15-34 %
  at h = 0.94; 5-8 % and 29-113 % at h = 1.25 (hence the limit at 1). The total mass is
  within 2 % at h <= 1. A single pair at distance 1 (kernel exp(-1) = 0.3679) gets 0.3665
  at h = 0.5.
  Against the exact dense mean field (``tests/reference.py: dense_crf_naive``) on tiny 2D
  grey, 2D RGB and 3D images with the appearance term contributing 1-3 nats, Q differs by
  at most 0.071 (median 0.011) and 95-100 % of the labels are equal (180 runs). Far
  stronger coupling (10+ nats) puts the mean field at a bifurcation, where any kernel
  error, this one included, can flip whole regions.

Units of ``sigma_beta``: those of ``image``. medseg feeds z-scored intensities for MRI
(:func:`medseg.normalize.normalize_intensity`, mean 0 and std 1 inside the head), so
``sigma_beta = 0.25`` is a quarter of the brain's intensity spread (IBSR_04: CSF -1.5 +-
0.65, grey matter -0.32 +- 0.60, white matter 1.08 +- 0.51 z-units). 8-bit microscopy
images are normalised before prediction too (the shipped nuclei model z-scores each
channel over the whole image), so ``sigma_beta`` is in z-units there as well; for an
image scaled to [0, 1] instead, DeepLab's ``sigma_beta = 13`` grey levels of 255 is 0.05.

Defaults, for z-scored brain T1 at about 1 mm (see each constant):
``w_appearance`` :data:`DEFAULT_W_APPEARANCE`, ``sigma_alpha_mm``
:data:`DEFAULT_SIGMA_ALPHA_MM`, ``sigma_beta`` :data:`DEFAULT_SIGMA_BETA`,
``w_smoothness`` :data:`DEFAULT_W_SMOOTHNESS`, ``sigma_gamma_mm``
:data:`DEFAULT_SIGMA_GAMMA_MM`, 5 iterations. They were chosen by :func:`crf_grid_search`
on the central 64 axial slices of one validation volume (IBSR_04, shipped brain-tissue
model, fast mode): mean Dice of CSF/GM/WM 0.8872 without CRF, 0.8898 with smoothness
alone (w 0.3), 0.8911 at these defaults (the slab's grid had h = 0.57); ``sigma_beta =
0.5`` or ``sigma_alpha_mm = 5`` with larger weights lowered it (to 0.847 at w 0.03, 5 mm,
0.5). On the whole volume (h = 0.99) the defaults give 0.8847 against 0.8819 without CRF
(CSF +1.6, GM +0.03, WM -0.7 points). Tune them on the validation cases of the model at
hand (the choice above saw one case only).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from medseg._validate import check_positive, check_spacing_mm

DEFAULT_W_APPEARANCE = 0.01
"""Appearance weight. At 3 mm and 0.25 z-units about 100 voxels of the head carry a weight
near 1 (322 within the spatial Gaussian at IBSR's spacing, a third of them close enough in
intensity), so a voxel whose look-alikes all belong to another class gets about 1 nat:
uncertain voxels move, confident ones do not."""

DEFAULT_SIGMA_ALPHA_MM = 3.0
"""Appearance range (mm): a few voxels, below the width of a gyrus (~5-10 mm)."""

DEFAULT_SIGMA_BETA = 0.25
"""Appearance intensity scale, z-units: half the within-tissue spread of a z-scored T1
(std 0.5-0.65) and a sixth of the grey/white contrast (1.4), so only voxels of nearly the
same intensity support each other (0.5 lowered white-matter Dice on IBSR_04)."""

DEFAULT_W_SMOOTHNESS = 0.3
"""Smoothness weight. At 1 mm the 3D kernel sums to about 11 at IBSR's 0.94 x 1.5 x 0.94
mm spacing, so an isolated voxel gets about 3 nats towards its neighbours' label, while a
voxel on a flat boundary (half of its neighbours on each side) gets nearly none (1.0
lowered Dice on IBSR_04)."""

DEFAULT_SIGMA_GAMMA_MM = 1.0
"""Smoothness range (mm): about one voxel, removing isolated voxels and small jags."""

DEFAULT_NUM_ITERATIONS = 5
"""Mean-field iterations (the paper's and DeepLab's choice; Q changes little after)."""

PROB_FLOOR = 1e-6
"""Probabilities are clamped below at this value before ``-log``, so a class the network
gave probability 0 keeps a finite unary (13.8 nats) and the CRF can still choose it."""

TRUNCATE = 4.0
"""Smoothness kernel radius in standard deviations (as scipy.ndimage.gaussian_filter)."""

GRID_CELL = 0.5
"""Bilateral grid spacing, in standard deviations of the appearance kernel."""

MAX_GRID_CELL = 1.0
"""Coarsest grid spacing allowed when the grid must be coarsened to fit."""

MAX_GRID_CELLS = 1 << 24
"""Most grid cells (times K float32 values); the spacing is coarsened to fit."""

GRID_CHUNK = 1 << 18
"""Voxels per chunk when splatting and slicing (bounds temporary memory)."""

PROB_SUM_TOLERANCE = 1e-3
"""Allowed deviation of ``probs.sum(0)`` from 1 (softmax outputs in float32)."""


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _check_tensor(value: object, name: str, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor ({what}), got {type(value).__name__}; "
            "convert with torch.from_numpy(...)"
        )
    if value.ndim != 4:
        raise ValueError(
            f"{name} must be 4D {what}, got shape {tuple(value.shape)}; "
            "add a Z axis of size 1 for 2D data"
        )
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor ({what}), got {value.dtype}")
    return value


def _check_crf_inputs(probs: object, image: object) -> tuple[torch.Tensor, torch.Tensor]:
    p = _check_tensor(probs, "probs", "(K, Z, Y, X) softmax probabilities")
    im = _check_tensor(image, "image", "(C, Z, Y, X) intensities")
    if p.shape[0] < 2:
        raise ValueError(f"probs must have K >= 2 classes on axis 0, got shape {tuple(p.shape)}")
    if p.shape[1:] != im.shape[1:]:
        raise ValueError(
            f"probs and image must have the same spatial shape (Z, Y, X), got probs "
            f"{tuple(p.shape)} and image {tuple(im.shape)}"
        )
    if p.device != im.device:
        raise ValueError(
            f"probs and image must be on the same device, got {p.device} and {im.device}; "
            "move one with .to(...)"
        )
    if p.numel() == 0:
        raise ValueError(f"probs must not be empty, got shape {tuple(p.shape)}")
    low, high = float(p.min()), float(p.max())
    if not (0.0 <= low and high <= 1.0):  # also catches NaN
        raise ValueError(
            f"probs must hold probabilities in [0, 1], got range [{low:.4g}, {high:.4g}]; "
            "apply softmax over axis 0 to logits"
        )
    sums = p.sum(0, dtype=torch.float64)
    worst = float((sums - 1.0).abs().max())
    if worst > PROB_SUM_TOLERANCE:
        raise ValueError(
            f"probs must sum to 1 over the classes (axis 0) within {PROB_SUM_TOLERANCE:g}, got "
            f"a deviation of {worst:.4g}; apply softmax over axis 0"
        )
    if not bool(torch.isfinite(im).all()):
        raise ValueError("image must hold finite intensities, got NaN or inf")
    return p, im


def _check_iterations(value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"num_iterations must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"num_iterations must be >= 1, got {value}")
    return int(value)


# ---------------------------------------------------------------------------
# Smoothness kernel: exact separable Gaussian over positions
# ---------------------------------------------------------------------------


def _convolve_axis(values: torch.Tensor, taps: list[float], axis: int) -> torch.Tensor:
    """Correlate ``values`` with ``taps`` (odd length, centred) along ``axis``, zero padding.

    Shifted multiply-adds, which beat ``conv3d`` with 1D kernels on CPU and run anywhere.
    """
    n = values.shape[axis]
    radius = len(taps) // 2
    pad = [0, 0] * (values.ndim - 1 - axis) + [radius, radius]
    padded = torch.nn.functional.pad(values, pad)
    out = padded.narrow(axis, 0, n) * taps[0]
    for t in range(1, len(taps)):
        out.add_(padded.narrow(axis, t, n), alpha=taps[t])
    return out


def _smooth(values: torch.Tensor, sigma_mm: float, spacing_mm: tuple[float, ...]) -> torch.Tensor:
    """sum_{j != i} exp(-|p_i - p_j|^2 / (2 sigma^2)) values_j; values (K, Z, Y, X)."""
    out = values
    for axis in range(3):
        # taps exp(-(n * spacing)^2 / (2 sigma^2)) for |n| * spacing <= TRUNCATE * sigma
        radius = min(
            int(math.floor(TRUNCATE * sigma_mm / spacing_mm[axis])), values.shape[1 + axis] - 1
        )
        if radius == 0:
            continue  # only the tap exp(0) = 1 reaches a voxel of the image
        taps = [
            math.exp(-((n * spacing_mm[axis]) ** 2) / (2.0 * sigma_mm**2))
            for n in range(-radius, radius + 1)
        ]
        out = _convolve_axis(out, taps, 1 + axis)
    return out - values  # drop the i == j term (kernel value 1)


# ---------------------------------------------------------------------------
# Appearance kernel: bilateral grid (Paris & Durand 2006; Chen, Paris & Durand 2007)
# ---------------------------------------------------------------------------


class _BilateralGrid:
    """Splat / blur / slice on a dense grid over the bilateral feature space.

    Built once per image and reused by every mean-field iteration. ``filter(values)``
    approximates ``sum_{j != i} exp(-|f_i - f_j|^2 / 2) values_j`` for the features
    ``f = (p / sigma_alpha_mm, I / sigma_beta)`` (module docstring).

    Attributes:
        cell: Grid spacing h in feature units (standard deviations).
        dims: Grid shape, one entry per feature.
        inverse: Index of each voxel's base cell among ``cells``, int64 ``(N,)``.
        cells: Flat grid index of every occupied base cell, int64 ``(U,)``.
        weights: Multilinear weight of each voxel on the 2^d corners of its base cell,
            float32 ``(N, 2^d)`` (rows sum to 1; corners in ``itertools.product`` order).
        offsets: Flat-index offset of each of the 2^d cell corners, int64 ``(2^d,)``.
        taps: Blur taps (2 r + 1 floats), scaled so that each axis has mass sqrt(2 pi).
        self_response: Each voxel's response to itself, float32 ``(N,)``.
    """

    def __init__(
        self,
        image: torch.Tensor,
        spacing_mm: tuple[float, float, float],
        sigma_alpha_mm: float,
        sigma_beta: float,
    ) -> None:
        dev = image.device
        shape = tuple(image.shape[1:])
        axes = [a for a in range(3) if shape[a] > 1]  # singleton axes carry no feature
        steps = [spacing_mm[a] / sigma_alpha_mm for a in axes]
        channels = image.reshape(image.shape[0], -1)  # (C, N)
        low = [0.0] * len(axes) + [float(v) / sigma_beta for v in channels.amin(1).tolist()]
        high = [(shape[a] - 1) * s for a, s in zip(axes, steps, strict=True)] + [
            float(v) / sigma_beta for v in channels.amax(1).tolist()
        ]
        d = len(low)
        extent = [hi - lo for lo, hi in zip(low, high, strict=True)]
        self.cell = _grid_cell(extent)
        self.dims = [int(math.floor(e / self.cell)) + 2 for e in extent]
        self.dim = d
        self.strides = [math.prod(self.dims[i + 1 :]) for i in range(d)]
        num_points = channels.shape[1]

        # Blur: tents add variance h^2 / 6 twice per axis, so the Gaussian on the grid has
        # variance 1 - h^2 / 3 (total 1); taps scaled to the mass sqrt(2 pi) per axis.
        sigma = math.sqrt(1.0 - self.cell**2 / 3.0)
        radius = int(math.ceil(TRUNCATE * sigma / self.cell))
        taps = [
            math.exp(-((n * self.cell) ** 2) / (2.0 * sigma**2)) for n in range(-radius, radius + 1)
        ]
        scale = math.sqrt(2.0 * math.pi) / (self.cell * math.fsum(taps))
        self.taps = [t * scale for t in taps]
        g0, g1 = self.taps[radius], self.taps[radius + 1]

        def locate(g: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """Grid coordinate -> (base contribution to the flat index, fraction, self term)."""
            b = torch.floor(g).clamp_(0, self.dims[i] - 2)
            t = (g - b).to(torch.float32)
            # response of a voxel to itself along this axis (module docstring)
            r = ((1 - t) ** 2 + t**2) * g0 + 2 * t * (1 - t) * g1
            return b.to(torch.int64) * self.strides[i], t, r

        # spatial features are index * step: 1D tables per axis, broadcast per slab
        tables = {}
        for i, a in enumerate(axes):
            g = torch.arange(shape[a], dtype=torch.float64, device=dev) * (steps[i] / self.cell)
            tables[a] = locate(g, i)
        num_spatial = len(axes)
        self.inverse = torch.empty(num_points, dtype=torch.int64, device=dev)  # base first
        self.weights = torch.empty(num_points, 2**d, dtype=torch.float32, device=dev)
        self.self_response = torch.empty(num_points, dtype=torch.float32, device=dev)
        plane = shape[1] * shape[2]
        slab = max(1, GRID_CHUNK // plane)
        for z0 in range(0, shape[0], slab):
            z1 = min(z0 + slab, shape[0])
            n = (z1 - z0) * plane
            base = torch.zeros(1, 1, 1, dtype=torch.int64, device=dev)
            w = torch.ones(1, 1, 1, 1, dtype=torch.float32, device=dev)
            resp = torch.ones(1, 1, 1, dtype=torch.float32, device=dev)
            for a in axes:  # corner bits in itertools.product order (first = slowest)
                b, t, r = (x[z0:z1] if a == 0 else x for x in tables[a])
                view = [1, 1, 1]
                view[a] = -1
                base = base + b.view(view)
                t4 = t.view(*view, 1)
                w = torch.stack((w * (1 - t4), w * t4), dim=-1).flatten(-2)
                resp = resp * r.view(view)
            full = (z1 - z0, shape[1], shape[2])
            flat_base = base.expand(full).reshape(n)
            flat_w = w.expand(*full, 2**num_spatial).reshape(n, -1)
            flat_resp = resp.expand(full).reshape(n)
            for c in range(image.shape[0]):  # intensity features, per voxel
                i = num_spatial + c
                g = channels[c, z0 * plane : z1 * plane].to(torch.float64) / sigma_beta - low[i]
                b, t, r = locate(g / self.cell, i)
                flat_base = flat_base + b
                flat_w = torch.stack((flat_w * (1 - t[:, None]), flat_w * t[:, None]), -1)
                flat_w = flat_w.flatten(-2)
                flat_resp = flat_resp * r
            self.inverse[z0 * plane : z1 * plane] = flat_base
            self.weights[z0 * plane : z1 * plane] = flat_w
            self.self_response[z0 * plane : z1 * plane] = flat_resp
        self.cells, self.inverse = torch.unique(self.inverse, return_inverse=True)
        corners = torch.tensor(list(itertools.product((0, 1), repeat=d)), device=dev)
        self.offsets = (corners * torch.tensor(self.strides, device=dev)).sum(1)  # (2^d,)

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Approximate ``sum_{j != i} exp(-|f_i - f_j|^2 / 2) values_j``.

        Args:
            values: float32 ``(N, K)``.

        Returns:
            float32 ``(N, K)``.
        """
        num_points, k = values.shape
        num_corners = self.offsets.numel()
        # splat: first onto each voxel's base cell, one column per corner (wide rows) ...
        per_cell = values.new_zeros(self.cells.numel(), num_corners * k)
        for start in range(0, num_points, GRID_CHUNK):
            stop = min(start + GRID_CHUNK, num_points)
            w = self.weights[start:stop]  # (n, 2^d)
            spread = (w[:, :, None] * values[start:stop, None, :]).reshape(stop - start, -1)
            per_cell.index_add_(0, self.inverse[start:stop], spread)
        per_cell = per_cell.view(-1, num_corners, k)
        # ... then onto the corners themselves
        grid = values.new_zeros(math.prod(self.dims), k)
        for c in range(num_corners):
            grid.index_add_(0, self.cells + self.offsets[c], per_cell[:, c])
        del per_cell
        blurred = _blur(grid.T.reshape(k, *self.dims), self.taps)
        grid = blurred.reshape(k, -1).T.contiguous()  # (cells, K)
        # slice: gather the corners of every base cell, then weight per voxel
        corner_values = grid[self.cells[:, None] + self.offsets[None, :]]  # (U, 2^d, K)
        del grid
        out = values.new_empty(num_points, k)
        for start in range(0, num_points, GRID_CHUNK):
            stop = min(start + GRID_CHUNK, num_points)
            w = self.weights[start:stop]
            out[start:stop] = torch.bmm(w[:, None, :], corner_values[self.inverse[start:stop]])[
                :, 0
            ]
        out -= self.self_response[:, None] * values
        return out


def _grid_cell(extent: list[float]) -> float:
    """Grid spacing h (feature units): GRID_CELL, coarsened until the grid fits."""
    cell = GRID_CELL
    while math.prod(int(math.floor(e / cell)) + 2 for e in extent) > MAX_GRID_CELLS:
        cell *= 1.05
        if cell > MAX_GRID_CELL:
            size = math.prod(int(math.floor(e / MAX_GRID_CELL)) + 2 for e in extent)
            raise ValueError(
                f"sigma_alpha_mm and sigma_beta must be large enough for the bilateral grid to "
                f"fit in {MAX_GRID_CELLS} cells, got {size} cells at the coarsest spacing "
                f"{MAX_GRID_CELL} for a {len(extent)}-D feature space; increase "
                "sigma_alpha_mm or sigma_beta (or crop the image)"
            )
    return cell


def _blur(grid: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Separable convolution of ``grid`` (K, *dims) with ``taps`` along every grid axis
    (zero padding: mass leaving the grid is never read back)."""
    for axis in range(1, grid.ndim):
        grid = _convolve_axis(grid, taps, axis)
    return grid


# ---------------------------------------------------------------------------
# Mean field
# ---------------------------------------------------------------------------


def _mean_field(
    probs: torch.Tensor,
    grid: _BilateralGrid | None,
    w_appearance: float,
    w_smoothness: float,
    sigma_gamma_mm: float,
    spacing_mm: tuple[float, float, float],
    num_iterations: int,
) -> torch.Tensor:
    """Algorithm 1 of the paper; probs float32 (K, Z, Y, X) -> Q float32 (K, Z, Y, X)."""
    k = probs.shape[0]
    spatial = probs.shape[1:]
    neg_unary = torch.log(probs.clamp(min=PROB_FLOOR))  # -U, (K, Z, Y, X)
    q = torch.softmax(neg_unary, dim=0)
    for _ in range(num_iterations):
        logits = neg_unary.clone()
        if grid is not None and w_appearance > 0:
            message = grid.filter(q.reshape(k, -1).T.contiguous())  # (N, K)
            logits += w_appearance * message.T.reshape(k, *spatial)
        if w_smoothness > 0:
            logits += w_smoothness * _smooth(q, sigma_gamma_mm, spacing_mm)
        # Potts: energy U + M - m; M is constant over labels and cancels in the softmax
        q = torch.softmax(logits, dim=0)
    return q


def dense_crf(
    probs: torch.Tensor,
    image: torch.Tensor,
    *,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    w_appearance: float = DEFAULT_W_APPEARANCE,
    sigma_alpha_mm: float = DEFAULT_SIGMA_ALPHA_MM,
    sigma_beta: float = DEFAULT_SIGMA_BETA,
    w_smoothness: float = DEFAULT_W_SMOOTHNESS,
    sigma_gamma_mm: float = DEFAULT_SIGMA_GAMMA_MM,
    num_iterations: int = DEFAULT_NUM_ITERATIONS,
) -> torch.Tensor:
    """Fully connected CRF with Gaussian edge potentials, mean-field inference.

    Krähenbühl & Koltun 2011, eq. 3 and Algorithm 1; energy, filtering and approximation
    error in the module docstring. Runs on the device of ``probs`` (CPU or CUDA) in
    float32. Memory is O(N (d + 1)) for N voxels and a d-dimensional appearance feature
    (d = number of spatial axes of size > 1 plus C).

    Args:
        probs: Softmax probabilities, float ``(K, Z, Y, X)``, K >= 2, values in [0, 1]
            summing to 1 over K (within 1e-3). Clamped below at :data:`PROB_FLOOR`.
        image: Intensities, float ``(C, Z, Y, X)`` on the same device, C >= 1, in the
            units ``sigma_beta`` is given in (z-scores for MRI; module docstring).
        spacing_mm: Voxel spacing (z, y, x) in mm; positions are index times spacing.
        w_appearance: Weight w1 >= 0 of the appearance (bilateral) kernel.
        sigma_alpha_mm: Positional scale of the appearance kernel, mm, > 0.
        sigma_beta: Intensity scale of the appearance kernel, image units, > 0.
        w_smoothness: Weight w2 >= 0 of the smoothness kernel.
        sigma_gamma_mm: Positional scale of the smoothness kernel, mm, > 0.
        num_iterations: Mean-field iterations, >= 1.

    Returns:
        Mean-field marginals Q, float32 ``(K, Z, Y, X)`` on the input's device, summing to 1
        over K; take ``argmax(0)`` for labels. With both weights 0 this is ``probs``
        (renormalised after clamping).

    Raises:
        TypeError: if ``probs`` or ``image`` is not a floating-point tensor, or a parameter
            has the wrong type.
        ValueError: for mismatched shapes or devices, probabilities outside [0, 1] or not
            summing to 1, non-finite intensities, non-positive sigmas or spacing, negative
            weights, ``num_iterations < 1``, or sigmas too small for the bilateral grid.

    Example:
        >>> probs = torch.tensor([0.9, 0.2, 0.1, 0.8]).reshape(2, 1, 1, 2)  # (K, Z, Y, X)
        >>> image = torch.zeros(1, 1, 1, 2)  # two pixels 1 mm apart: kernel exp(-1/2)
        >>> q = dense_crf(probs, image, w_appearance=0.0, w_smoothness=1.0, num_iterations=1)
        >>> [round(v, 3) for v in q[0].flatten().tolist()]  # softmax(log P_0 + 0.607 P_1)
        [0.862, 0.289]
    """
    p, im = _check_crf_inputs(probs, image)
    spacing = check_spacing_mm(spacing_mm)
    w1 = check_positive(w_appearance, "w_appearance", allow_zero=True)
    sa = check_positive(sigma_alpha_mm, "sigma_alpha_mm")
    sb = check_positive(sigma_beta, "sigma_beta")
    w2 = check_positive(w_smoothness, "w_smoothness", allow_zero=True)
    sg = check_positive(sigma_gamma_mm, "sigma_gamma_mm")
    iterations = _check_iterations(num_iterations)
    with torch.no_grad():
        p = p.to(torch.float32)
        grid = _BilateralGrid(im, spacing, sa, sb) if w1 > 0 else None
        return _mean_field(p, grid, w1, w2, sg, spacing, iterations)
