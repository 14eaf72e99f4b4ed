"""The torch path: per-sample augmentation of a batch with ``grid_sample``, on any device.

:func:`apply_augment_torch`, :func:`warp_torch`, :func:`elastic_deform_torch` and
:func:`adjust_intensity_torch` are the torch versions of the numpy path; the map and the
cubic B-spline sampler are in :mod:`medseg.augment._torch_grid`. A batch is
``(N, C, Z, Y, X)`` (ARCHITECTURE.md section 2); the maths is in the package docstring of
:mod:`medseg.augment` ("the module docstring" below). torch is imported inside the
functions, so importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.augment._torch_grid import _bspline_sample_torch, _torch_grid, _TorchGrid
from medseg.augment.field import _z_index
from medseg.augment.params import (
    AffineParams,
    AugmentParams,
    ElasticParams,
    IntensityParams,
    _check_shape_matches,
    _crop_bounds,
    gaussian_kernel1d,
    noise_field,
)
from medseg.typing import Shape3

if TYPE_CHECKING:
    import torch

TORCH_MODES = ("nearest", "bilinear", "bicubic", "bspline")


# ---------------------------------------------------------------------------
# torch path
# ---------------------------------------------------------------------------


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
        mode, crop: As :func:`warp_torch`.

    Returns and raises as :func:`warp_torch`.

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
    if any(p.blur_sigma > 0 for p in items):
        out = torch.stack(
            [
                _blur_torch(out[i], p.blur_sigma) if p.blur_sigma > 0 else out[i]
                for i, p in enumerate(items)
            ]
        )
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
    if any(p.noise_std > 0 for p in items):
        noise = np.zeros(tuple(batch.shape), np.float32)
        for i, p in enumerate(items):
            field = noise_field(p, tuple(batch.shape[1:]))
            if field is not None:
                noise[i] = field
        out = out + torch.from_numpy(noise).to(device=batch.device, dtype=batch.dtype)
    return out


def _blur_torch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """In-plane Gaussian blur of one sample ``(C, Z, Y, X)``: the weights of
    :func:`gaussian_kernel1d` along Y then X, the edges mirrored (scipy's ``"mirror"``)."""
    import torch

    weights = torch.as_tensor(gaussian_kernel1d(sigma), dtype=x.dtype, device=x.device)
    radius = (len(weights) - 1) // 2
    for axis in (2, 3):
        size = x.shape[axis]
        period = max(2 * (size - 1), 1)
        i = np.abs(np.arange(-radius, size + radius)) % period
        index = torch.as_tensor(np.where(i >= size, period - i, i), device=x.device)
        windows = x.index_select(axis, index).unfold(axis, len(weights), 1)
        x = (windows * weights).sum(-1)
    return x


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

    Returns ``(image, label, weight)`` (None stays None) and raises as
    :func:`apply_augment`, for tensors and ``mode``.

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
