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

**Grey values** (images only, after the spatial part, per channel): first an in-plane
Gaussian blur (along Y and X, standard deviation ``blur_sigma`` px uniform in its range for
a fraction ``blur_prob`` of the samples, edges mirrored; the weights of
:func:`~medseg.augment.params.gaussian_kernel1d`, scipy's ``gaussian_filter`` kernel, on
both paths), then gamma
``x' = m + (M - m) ((x - m) / (M - m))**gamma`` with ``m, M`` the channel's min and max
(range kept), then contrast ``x' = mu + k (x - mu)`` with ``mu`` the channel mean.
``gamma`` is drawn log-uniform from ``gamma_range`` and ``k`` uniform from
``contrast_range``; nnU-Net uses ``(0.7, 1.5)`` and ``(0.75, 1.25)``. The defaults
``(1, 1)`` switch them off: the U-Net paper names grey-value variation without ranges.
Last, additive Gaussian noise ``x' = x + s n`` with ``n`` standard normal per voxel and
channel, ``s`` uniform in ``noise_std`` for a fraction ``noise_prob`` of the samples (as
nnU-Net's Gaussian noise), in the grey units of the normalised image; ``n`` comes from a
seed stored in the params (:func:`~medseg.augment.params.noise_field`), so the numpy and
torch paths add the same noise (float32, then the image's dtype). The default ``(0, 0)``
switches it off.

**numpy vs torch agreement** (same params; max |difference| / image range; measured in
benchmarks/results_augment.md, bounded in tests/test_augment.py): linear 3e-6 on a smooth
512x512 image and 5e-5 on white noise (test bound 1e-4); cubic B-spline 4e-6 smooth and
1.3e-4 on white noise (torch samples at float32 positions, good to ~3e-8 (size - 1) px,
and noise has large spline coefficients). Nearest label maps: identical in the measured
cases; they can differ only where a position lies within float32 rounding of a half-pixel
tie (exact ties: scipy rounds up, torch to even); test bound 1e-3 of the pixels. The numpy
path equals elasticdeform's ``deform_grid(..., mode="mirror")``: 0 difference for orders 0
and 1, 6e-8 for order 3.

**Layout.** :mod:`~medseg.augment.params` (the params dataclasses, their checks and the
``sample_*_params``), :mod:`~medseg.augment.field` (the interpolation matrix, the
displacement field and the composed pull-back map shared by both paths), ``_numpy_path``
(scipy), ``_torch_grid`` (the map on a torch device and the B-spline sampler) and
``_torch_path`` (torch), and :mod:`~medseg.augment.objects` (object contrast: some
annotated objects of a training patch made fainter, before the spatial part); the public
names are importable from ``medseg.augment``.
"""

from __future__ import annotations

from medseg.augment._numpy_path import (
    WINDOW_MARGIN,
    adjust_intensity,
    apply_augment,
    elastic_deform,
    elastic_deform_label,
    elastic_deform_sample,
    warp_image,
    warp_label,
)
from medseg.augment._numpy_path import _resample_numpy as _resample_numpy
from medseg.augment._torch_grid import BSPLINE_POLE, PREFILTER_DOUBLINGS
from medseg.augment._torch_grid import _TorchGrid as _TorchGrid
from medseg.augment._torch_path import (
    TORCH_MODES,
    adjust_intensity_torch,
    apply_augment_torch,
    elastic_deform_torch,
    warp_torch,
)
from medseg.augment._torch_path import _sample_torch as _sample_torch
from medseg.augment.field import _Plan as _Plan
from medseg.augment.field import displacement_field, interpolation_matrix
from medseg.augment.params import (
    NUMPY_ORDERS,
    PAPER_GRID_POINTS,
    PAPER_SIGMA,
    AffineParams,
    AugmentConfig,
    AugmentParams,
    ElasticParams,
    IntensityParams,
    gaussian_kernel1d,
    noise_field,
    sample_affine_params,
    sample_augment_params,
    sample_elastic_params,
    sample_intensity_params,
)

__all__ = [
    "BSPLINE_POLE",
    "NUMPY_ORDERS",
    "PAPER_GRID_POINTS",
    "PAPER_SIGMA",
    "PREFILTER_DOUBLINGS",
    "TORCH_MODES",
    "WINDOW_MARGIN",
    "AffineParams",
    "AugmentConfig",
    "AugmentParams",
    "ElasticParams",
    "IntensityParams",
    "adjust_intensity",
    "adjust_intensity_torch",
    "apply_augment",
    "apply_augment_torch",
    "displacement_field",
    "elastic_deform",
    "elastic_deform_label",
    "elastic_deform_sample",
    "elastic_deform_torch",
    "gaussian_kernel1d",
    "interpolation_matrix",
    "noise_field",
    "sample_affine_params",
    "sample_augment_params",
    "sample_elastic_params",
    "sample_intensity_params",
    "warp_image",
    "warp_label",
    "warp_torch",
]
