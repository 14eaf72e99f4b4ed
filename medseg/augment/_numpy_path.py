"""The numpy/scipy path: one resampling of image, label map and weight map, then grey values.

``scipy.ndimage.map_coordinates`` with mirror boundaries reads the composed pull-back map of
:mod:`medseg.augment.field`: images with ``order`` 0, 1 or 3 (cubic B-spline, exact
prefilter in float64), label maps nearest, weight maps linear. Arrays follow ARCHITECTURE.md
section 2; the maths is in the package docstring of :mod:`medseg.augment` ("the module
docstring" below).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.augment.field import _Plan, _plan_numpy
from medseg.augment.params import (
    AffineParams,
    AugmentParams,
    ElasticParams,
    IntensityParams,
    _check_array,
    _check_order,
    _check_shape_matches,
    _crop_bounds,
    gaussian_kernel1d,
    noise_field,
)
from medseg.typing import FloatArray, LabelArray, Shape3

WINDOW_MARGIN = 26  # px beyond the sampled region prefiltered by the numpy path (|z|^24 ~ 2e-14)


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
    """Grey-value variation: in-plane Gaussian blur, gamma (range kept), then contrast
    about the mean, per channel, then additive Gaussian noise.

    Args:
        image: Intensities, float ``(C, Z, Y, X)``; not modified.
        params: From :func:`sample_intensity_params`. Factors equal to 1 and a zero
            ``noise_std`` or ``blur_sigma`` are skipped (exact identity). A constant
            channel is left unchanged by gamma.

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
    if params.blur_sigma > 0:  # along Y and X, mirrored at the edges
        weights = gaussian_kernel1d(params.blur_sigma)
        for axis in (2, 3):
            out = ndimage.correlate1d(out, weights, axis=axis, mode="mirror")
    if params.gamma != 1.0:
        lo = out.min(axis=(1, 2, 3), keepdims=True)
        span = out.max(axis=(1, 2, 3), keepdims=True) - lo
        safe = np.where(span > 0, span, dt(1))
        scaled = np.power((out - lo) / safe, dt(params.gamma))
        out = np.where(span > 0, lo + span * scaled, out).astype(image.dtype, copy=False)
    if params.contrast != 1.0:
        mean = out.mean(axis=(1, 2, 3), keepdims=True, dtype=np.float64).astype(image.dtype)
        out = (mean + dt(params.contrast) * (out - mean)).astype(image.dtype, copy=False)
    noise = noise_field(params, out.shape)
    if noise is not None:
        out = (out + noise.astype(image.dtype, copy=False)).astype(image.dtype, copy=False)
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
    docstring), image interpolated with ``order``, label nearest, weight linear; (2) blur,
    gamma, contrast, then noise, on the image.

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
