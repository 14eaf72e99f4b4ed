"""Streaming sliding-window prediction (:func:`predict_sliding_window`).

Patches are extracted a slab of slices at a time, sent through the predictor in batches and
folded into a slab accumulator, so peak memory is bounded by the slab, not by the number of
patches in the volume. :func:`active_windows` finds the patches that hold a region of
interest. Arrays follow ARCHITECTURE.md section 2; the reassembly modes are defined in the
package docstring of :mod:`medseg.patches`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medseg.options import REASSEMBLY_MODES
from medseg.patches._backend import _as_index, _is_torch
from medseg.patches.grid import PatchGrid, PatchSpec, _check_image, _extract_for_starts, make_grid
from medseg.patches.reassembly import Reassembled, _concat, _SlabAccumulator, _split_logits

DEFAULT_PATCHES_PER_SLAB = 4096


def _num_groups(grid: PatchGrid, patches_per_slab: int) -> int:
    per_start = grid.grid_shape[1] * grid.grid_shape[2]
    return max(1, patches_per_slab // per_start)


def predict_sliding_window(
    image: Any,
    predictor: Callable[[Any], Any],
    spec: PatchSpec,
    *,
    mode: str = "vote",
    batch_size: int = 1024,
    patches_per_slab: int = DEFAULT_PATCHES_PER_SLAB,
    return_probs: bool = False,
    device: Any = None,
    channels_last: bool = True,
    roi: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Reassembled:
    """Predict a whole volume from overlapping patches, streaming slab by slab.

    Patches are extracted for a slab of slices at a time, sent through ``predictor`` in
    batches of ``batch_size``, and folded into per-class counters (or probability sums)
    that cover only the slab; finished slices are reduced to labels right away. Peak
    memory is therefore set by ``patches_per_slab``, not by the size of the volume.

    Args:
        image: Intensities, float32 ``(C, Z, Y, X)``, numpy or torch (any device).
        predictor: Maps a float32 torch batch of model inputs ((B, C * num_slices, py,
            px) for one-slice patches, else (B, C, pz, py, px)) to logits (B, K, py, px)
            or (B, K, pz, py, px). Called under ``torch.inference_mode()``.
        spec: Patch size, stride, slices, slice axis and padding.
        mode: ``"vote"`` (default), ``"mean"`` or ``"gaussian"``.
        batch_size: Patches per predictor call.
        patches_per_slab: About how many patches are extracted and reduced at once.
        return_probs: Also return mean probabilities (K, Z, Y, X).
        device: Where patches are extracted and reduced (default: the image's device,
            CPU for numpy input). The predictor is called on tensors on this device.
        channels_last: Hand the predictor channels-last tensors (NHWC / NDHWC memory,
            the same logical shape), which oneDNN and cuDNN convolutions run several
            times faster. Pass False for a predictor that calls ``.view`` on its input.
        roi: bool ``(Z, Y, X)`` (input axis order) or None. With a region of interest (a
            brain mask), a patch whose output window holds no ROI voxel is not sent to
            the predictor: it votes background (probability 1 for class 0). Voxels of the
            ROI get exactly the votes they would get without it.
        progress: Called as ``progress(done, total)`` with the number of patches finished
            (skipped ROI patches included) after every slab; None (default): silent.

    Returns:
        :class:`Reassembled` in the input's axis order, numpy for numpy input and torch
        (on ``device``) for torch input.

    Example:
        >>> import torch
        >>> img = np.random.default_rng(0).random((1, 4, 12, 12), dtype=np.float32)
        >>> def predictor(x):  # class 1 where the centre slice is bright
        ...     centre = x[:, 1:2]
        ...     return torch.cat([0.5 - centre, centre - 0.5], dim=1)
        >>> out = predict_sliding_window(img, predictor, PatchSpec.two_and_half_d(8, 2))
        >>> bool((out.labels == (img[0] > 0.5)).all())
        True
    """
    import torch

    _check_image(image)
    if mode not in REASSEMBLY_MODES:
        raise ValueError(f"mode must be one of {REASSEMBLY_MODES}, got {mode!r}")
    if batch_size < 1 or patches_per_slab < 1:
        raise ValueError(
            f"batch_size and patches_per_slab must be >= 1, got {batch_size} and {patches_per_slab}"
        )
    is_numpy = not _is_torch(image)
    vol = torch.from_numpy(np.ascontiguousarray(image)) if is_numpy else image
    if device is not None:
        vol = vol.to(device)
    vol = vol.float().movedim(1 + spec.slice_axis, 1)
    grid = make_grid(vol.shape[1:], spec)
    active = None
    if roi is not None:
        roi = np.asarray(roi, dtype=bool)
        if roi.shape != tuple(image.shape[1:]):
            raise ValueError(
                f"roi must have the image's spatial shape {tuple(image.shape[1:])}, got {roi.shape}"
            )
        active = active_windows(np.moveaxis(roi, spec.slice_axis, 0), grid)

    out_shape = grid.spatial_shape
    labels_out = torch.empty(out_shape, dtype=torch.uint8, device=vol.device)
    conf_out = torch.empty(out_shape, dtype=torch.float32, device=vol.device)
    probs_out = None
    acc: _SlabAccumulator | None = None
    zs = grid.starts[0]
    step = _num_groups(grid, patches_per_slab)
    k = 0
    finished = 0
    with torch.inference_mode():
        for a in range(0, len(zs), step):
            z_index = slice(a, min(a + step, len(zs)))
            inputs = _extract_for_starts(vol, grid, z_index)
            if channels_last:
                fmt = torch.channels_last if inputs.ndim == 4 else torch.channels_last_3d
                inputs = inputs.contiguous(memory_format=fmt)
            keep = None if active is None else active[z_index].reshape(-1)
            run = inputs
            if keep is not None and not keep.all():
                # at least one patch, so that the number of classes is known
                idx = np.flatnonzero(keep) if keep.any() or acc is not None else np.arange(1)
                run = inputs[_as_index(inputs, idx)]
            label_parts, prob_parts = [], []
            for b in range(0, run.shape[0], batch_size):
                logits = predictor(run[b : b + batch_size])
                _check_logits(logits, run[b : b + batch_size], spec)
                lab, prob = _split_logits(logits, mode, return_probs)
                label_parts.append(lab)
                prob_parts.append(prob)
            if label_parts:
                k = int(logits.shape[1])
            if run is not inputs and keep is not None:
                label_parts, prob_parts = _background_elsewhere(
                    label_parts,
                    prob_parts,
                    idx,
                    keep,
                    inputs,
                    spec,
                    k,
                    want_probs=return_probs or mode != "vote",
                )
            if acc is None:
                if k > 256:
                    raise ValueError(f"predictor must return at most 256 classes, got {k}")
                acc = _SlabAccumulator(grid, mode, k, return_probs, vol)
                if return_probs:
                    probs_out = torch.empty((k, *out_shape), dtype=torch.float32, device=vol.device)
            labels = _concat(label_parts, 0).reshape(-1, *spec.patch_size)
            probs = None
            if prob_parts[0] is not None:
                probs = _concat(prob_parts, 0).reshape(-1, k, *spec.patch_size)
            acc.add(z_index, labels, probs)
            done = int(zs[z_index.stop]) if z_index.stop < len(zs) else out_shape[0]
            lo = acc.lo
            part = acc.emit(done)
            labels_out[lo:done] = part.labels
            conf_out[lo:done] = part.confidence
            if probs_out is not None:
                probs_out[:, lo:done] = part.probs
            if progress is not None:
                finished += inputs.shape[0]
                progress(finished, grid.num_patches)
    axis = spec.slice_axis
    labels_t, conf_t = labels_out.movedim(0, axis), conf_out.movedim(0, axis)
    probs_t = None if probs_out is None else probs_out.movedim(1, 1 + axis)
    if is_numpy:
        return Reassembled(
            np.ascontiguousarray(labels_t.cpu().numpy()),
            np.ascontiguousarray(conf_t.cpu().numpy()),
            None if probs_t is None else np.ascontiguousarray(probs_t.cpu().numpy()),
        )
    return Reassembled(labels_t, conf_t, probs_t)


def active_windows(roi: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """Which patches of a grid hold at least one ROI voxel in their output window.

    Args:
        roi: bool ``(Z, Y, X)`` with the grid's slice axis first.
        grid: The patch grid of that volume.

    Returns:
        bool ``grid.grid_shape`` ``(nz, ny, nx)``, z-major like :meth:`PatchGrid.locations`.

    Example:
        >>> roi = np.zeros((1, 6, 6), bool); roi[0, 5, 5] = True
        >>> g = make_grid((1, 6, 6), PatchSpec((1, 4, 4), (1, 2, 2)))
        >>> active_windows(roi, g).astype(int).tolist()
        [[[0, 0], [0, 1]]]
    """
    # summed-volume table: a window's sum from its 8 corners (inclusion-exclusion)
    table = np.zeros(tuple(n + 1 for n in roi.shape), dtype=np.int64)
    table[1:, 1:, 1:] = roi.cumsum(0).cumsum(1).cumsum(2)
    lo = np.meshgrid(*grid.starts, indexing="ij")
    hi = [a + p for a, p in zip(lo, grid.spec.patch_size, strict=True)]
    total = np.zeros(grid.grid_shape, dtype=np.int64)
    for corner in range(8):
        pick = [(hi, lo)[(corner >> axis) & 1][axis] for axis in range(3)]
        sign = -1 if bin(corner).count("1") % 2 else 1
        total += sign * table[pick[0], pick[1], pick[2]]
    return total > 0


def _background_elsewhere(
    label_parts: list[Any],
    prob_parts: list[Any],
    idx: np.ndarray,
    keep: np.ndarray,
    inputs: Any,
    spec: PatchSpec,
    k: int,
    want_probs: bool,
) -> tuple[list[Any], list[Any]]:
    """Predictions for every patch of a slab from those of the patches ``idx``: patches
    outside the ROI (``keep`` False) vote background (class 0, probability 1)."""
    import torch

    num, dev = int(inputs.shape[0]), inputs.device
    out_shape = tuple(spec.patch_size[1:]) if spec.is_2d_model_input else tuple(spec.patch_size)
    full = torch.zeros((num, *out_shape), dtype=torch.int64, device=dev)
    ran = np.flatnonzero(keep[idx]) if len(idx) else idx  # the patches run that count
    if label_parts:
        labels = _concat(label_parts, 0)
        full[torch.as_tensor(idx[ran], device=dev)] = labels[torch.as_tensor(ran, device=dev)]
    probs_full = None
    if want_probs:
        probs_full = torch.zeros((num, k, *out_shape), dtype=torch.float32, device=dev)
        probs_full[:, 0] = 1.0
        if prob_parts:
            probs = _concat(prob_parts, 0)
            where = torch.as_tensor(idx[ran], device=dev)
            probs_full[where] = probs[torch.as_tensor(ran, device=dev)].float()
    return [full], [probs_full]


def _check_logits(logits: Any, inputs: Any, spec: PatchSpec) -> None:
    expected_spatial = (
        tuple(inputs.shape[2:]) if not spec.is_2d_model_input else tuple(spec.patch_size[1:])
    )
    if (
        not _is_torch(logits)
        or logits.ndim != 2 + len(expected_spatial)
        or tuple(logits.shape[2:]) != expected_spatial
        or logits.shape[0] != inputs.shape[0]
    ):
        got = tuple(logits.shape) if hasattr(logits, "shape") else type(logits).__name__
        raise ValueError(
            f"predictor output must be a torch tensor of shape ({inputs.shape[0]}, K, "
            f"{', '.join(map(str, expected_spatial))}), got {got}"
        )
