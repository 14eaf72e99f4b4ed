"""The 2.5D volume path of :mod:`medseg.predict`, in memory: arrays in, arrays out.

:func:`predict_array` segments a normalised volume from overlapping 2.5D patches streamed
slab by slab (:func:`medseg.patches.predict_sliding_window`), reassembled by majority vote
by default (``"mean"`` and ``"gaussian"`` averaging are options); with an ROI it predicts
the ROI's box only (:func:`crop_box`). :func:`segment_volume` is the in-memory core that
:func:`medseg.predict.predict_case` and the Python API (:mod:`medseg.api`) share: brain
extraction, normalisation, the model's grid, prediction, post-processing and the way back
to the input's grid.

``fast=True`` runs the fully convolutional network once over every whole slice (its
neighbours as channels) instead of over overlapping patches: each voxel gets one
prediction instead of ~11 votes, so it is several times faster; the reassembly mode
does not apply, and the confidence is the winner's probability.

:mod:`medseg.predict` re-exports these names under their old import path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medseg._device import resolve_device
from medseg._inference import inference_network, prepare_image, refine_prediction
from medseg.checkpoint import Checkpoint
from medseg.io import Volume, resolve_slice_axis
from medseg.patches import PatchSpec, Reassembled, predict_sliding_window

PATCHES_PER_SLICE = 64  # batch_size is given in patches; fast mode batches whole slices
FAST_ROI_MARGIN = 64
"""Extra in-plane pixels around the ROI's box that whole-slice (``fast``) prediction keeps
as context (the built-in brain networks see about 40-70 px around a pixel)."""


def spec_from_checkpoint(ckpt: Checkpoint, slice_axis: int) -> PatchSpec:
    return ckpt.patch_settings.spec(slice_axis)


def _predict_in_box(
    model: torch.nn.Module,
    image: np.ndarray,
    spec: PatchSpec,
    roi: np.ndarray,
    *,
    mode: str,
    batch_size: int,
    device: str | torch.device | None,
    fast: bool,
    return_probs: bool,
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Reassembled:
    """:func:`predict_array` on the ROI's box only (its ``roi`` argument)."""
    roi = np.asarray(roi, dtype=bool)
    if roi.shape != image.shape[1:]:
        raise ValueError(f"roi must have shape {image.shape[1:]}, got {roi.shape}")
    box = crop_box(roi, spec, margin=FAST_ROI_MARGIN if fast else 0)
    sub = np.ascontiguousarray(image[(slice(None), *box)])
    sub_roi = roi[box]
    dev = resolve_device(device)
    if fast:
        inner = predict_array(
            model, sub, spec, mode=mode, batch_size=batch_size, device=dev, fast=True,
            return_probs=return_probs, roi=None, precision=precision, progress=progress,
        )  # fmt: skip
        # whole slices without an ROI voxel are background
        keep = np.moveaxis(sub_roi, spec.slice_axis, 0).any(axis=(1, 2))
        labels = np.moveaxis(inner.labels, spec.slice_axis, 0)
        labels[~keep] = 0
        conf = np.moveaxis(inner.confidence, spec.slice_axis, 0)
        conf[~keep] = 1.0
        if inner.probs is not None:
            probs = np.moveaxis(inner.probs, 1 + spec.slice_axis, 1)
            probs[:, ~keep] = 0.0
            probs[0, ~keep] = 1.0
    else:
        net, autocast = inference_network(model.to(dev).eval(), dev, precision)
        with autocast:
            inner = predict_sliding_window(
                sub, net, spec, mode=mode, batch_size=batch_size, device=dev,
                return_probs=return_probs, roi=sub_roi, progress=progress,
            )  # fmt: skip
    labels = np.zeros(roi.shape, np.uint8)
    labels[box] = inner.labels
    conf = np.ones(roi.shape, np.float32)
    conf[box] = inner.confidence
    probs_out = None
    if inner.probs is not None:
        probs_out = np.zeros((inner.probs.shape[0], *roi.shape), np.float32)
        probs_out[0] = 1.0
        probs_out[(slice(None), *box)] = inner.probs
    return Reassembled(labels, conf, probs_out)


def crop_box(roi: np.ndarray, spec: PatchSpec, *, margin: int = 0) -> tuple[slice, slice, slice]:
    """The box of a volume that a sliding window needs to predict an ROI exactly.

    Every window of the full volume's grid that touches the ROI lies inside the box at the
    same place: along each axis the box starts on a multiple of the stride and reaches one
    patch beyond the ROI, and along the slice axis it also holds the neighbouring slices a
    2.5D patch reads. ROI voxels therefore get the same votes as on the whole volume.

    Args:
        roi: bool ``(Z, Y, X)``.
        spec: The patch spec (size, stride, slices, slice axis).
        margin: Extra in-plane voxels on each side (whole-slice prediction's context).

    Returns:
        ``(z, y, x)`` slices in the input's axis order.

    Example:
        >>> roi = np.zeros((9, 50, 60), bool); roi[4, 25, 30] = True
        >>> crop_box(roi, PatchSpec.two_and_half_d(8, 4))
        (slice(3, 6, None), slice(16, 34, None), slice(20, 39, None))
    """
    from medseg.preprocess import bounding_box

    axis = spec.slice_axis
    moved = np.moveaxis(roi, axis, 0)
    tight = bounding_box(moved, (0, 0, 0))
    box = []
    for i in range(3):
        lo, hi, n = tight[i].start, tight[i].stop, moved.shape[i]
        p, st = spec.patch_size[i], spec.stride[i]
        extra = spec.num_slices // 2 if i == 0 else margin  # 2.5D neighbours / context
        start = (max(0, lo - p + 1 - extra) // st) * st
        stop = min(n, hi + p - 1 + extra + (1 if st > 1 else 0))
        box.append(slice(start, stop))
    rest = [a for a in range(3) if a != axis]
    out = [slice(0, 0)] * 3
    out[axis], out[rest[0]], out[rest[1]] = box[0], box[1], box[2]
    return (out[0], out[1], out[2])


def predict_array(
    model: torch.nn.Module,
    image: np.ndarray,
    spec: PatchSpec,
    *,
    mode: str = "vote",
    batch_size: int = 512,
    device: str | torch.device | None = None,
    fast: bool = False,
    return_probs: bool = False,
    roi: np.ndarray | None = None,
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Reassembled:
    """Segment a normalised volume.

    Args:
        model: Maps ``(B, C * num_slices, py, px)`` to logits ``(B, K, py, px)``.
        image: Normalised intensities, float32 ``(C, Z, Y, X)``.
        spec: Patch size, stride, slices and slice axis (as the model was trained).
        mode: ``"vote"``, ``"mean"`` or ``"gaussian"`` reassembly (ignored when ``fast``).
        batch_size: Patches (or slices, when ``fast``) per forward pass.
        device: Where the model runs (``"auto"``: CUDA if available).
        fast: Whole slices instead of overlapping patches (module docstring).
        return_probs: Also return class probabilities ``(K, Z, Y, X)``.
        roi: bool ``(Z, Y, X)`` (a brain mask) or None. The volume is cropped to the ROI's
            box plus the context a window needs (:func:`crop_box`), and patches that hold
            no ROI voxel vote background without running the model, so ROI voxels get
            exactly the votes they would get without it. With ``fast``, the whole-slice
            network runs on the ROI's slices (and their neighbours, as context) cropped
            in-plane to the box plus :data:`FAST_ROI_MARGIN` pixels: ROI voxels near the
            box's edge may see less context than on the whole slice. Outside the box, and
            on slices without ROI voxels: background, confidence 1.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (:func:`inference_network`).
        progress: ``progress(done, total)`` in patches (or slices, when ``fast``), as
            :func:`medseg.patches.predict_sliding_window` calls it; None: silent.

    Returns:
        :class:`medseg.patches.Reassembled` with numpy arrays: labels uint8 ``(Z, Y, X)``,
        confidence float32 ``(Z, Y, X)``, probs or None.
    """
    if roi is not None:
        return _predict_in_box(
            model, image, spec, roi,
            mode=mode, batch_size=batch_size, device=device, fast=fast,
            return_probs=return_probs, precision=precision, progress=progress,
        )  # fmt: skip
    dev = resolve_device(device)
    model, autocast = inference_network(model.to(dev).eval(), dev, precision)
    if not fast:
        with autocast:
            return predict_sliding_window(
                image,
                model,
                spec,
                mode=mode,
                batch_size=batch_size,
                device=dev,
                return_probs=return_probs,
                progress=progress,
            )
    # whole slices: one "patch" per slice, padded in-plane to the model's divisor
    divisor = int(getattr(model, "divisor", 1))
    moved = np.moveaxis(image, 1 + spec.slice_axis, 1)
    ny, nx = moved.shape[2:]
    py, px = -(-ny // divisor) * divisor, -(-nx // divisor) * divisor
    pad = (
        (0, 0),
        (0, 0),
        ((py - ny) // 2, py - ny - (py - ny) // 2),
        ((px - nx) // 2, px - nx - (px - nx) // 2),
    )
    padded = np.pad(moved, pad, mode="reflect" if min(ny, nx) > 1 else "edge")
    whole = PatchSpec((1, py, px), (1, py, px), num_slices=spec.num_slices, pad_mode=spec.pad_mode)
    # a whole slice is roughly as much work as PATCHES_PER_SLICE 40x40 patches
    slices_per_batch = max(1, batch_size // PATCHES_PER_SLICE)
    with autocast:
        out = predict_sliding_window(
            padded,
            model,
            whole,
            mode="mean",
            batch_size=slices_per_batch,
            device=dev,
            return_probs=return_probs,
            patches_per_slab=slices_per_batch,
            progress=progress,
        )
    crop = (slice(None), slice(pad[2][0], pad[2][0] + ny), slice(pad[3][0], pad[3][0] + nx))
    labels = np.moveaxis(out.labels[crop], 0, spec.slice_axis)
    conf = np.moveaxis(out.confidence[crop], 0, spec.slice_axis)
    probs = None
    if out.probs is not None:
        probs = np.moveaxis(out.probs[(slice(None), *crop)], 1, 1 + spec.slice_axis)
    return Reassembled(np.ascontiguousarray(labels), np.ascontiguousarray(conf), probs)


@dataclass(frozen=True)
class VolumePrediction(Reassembled):
    """A brain model's prediction in the input's grid, with what happened before it.

    Attributes:
        labels, confidence, probs: As :class:`medseg.patches.Reassembled`, on the input's
            grid.
        brain: The brain mask and the skull-stripping decision
            (:class:`medseg.preprocess.BrainMask`), or None for models that take any volume.
        mapping: How the input was turned and resampled to the model's grid
            (:class:`medseg.preprocess.GridMapping`), or None when the model records no grid.
    """

    brain: Any = None
    mapping: Any = None


def uses_brain_extraction(checkpoint: Checkpoint) -> bool:
    """Whether a checkpoint was trained on skull-stripped T1 (built-in brain models)."""
    return checkpoint.uses_brain_extraction


def model_grid(checkpoint: Checkpoint):
    """The checkpoint's :class:`medseg.preprocess.ModelGrid`, or None if it records none."""
    from medseg.preprocess import ModelGrid

    values = checkpoint.extra.get("grid")
    return None if not values else ModelGrid.from_dict(values)


def segment_volume(
    volume: Volume,
    checkpoint: Checkpoint,
    net: torch.nn.Module,
    *,
    what: str,
    device: str | torch.device | None = None,
    mode: str | None = None,
    fast: bool = False,
    batch_size: int | None = None,
    return_probs: bool = False,
    crf: bool | dict[str, Any] = False,
    cleanup: bool = True,
    skull_strip: str | None = None,
    n4: bool = False,
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> VolumePrediction:
    """Segment a 3D volume in memory with a 2.5D model (the core of :func:`predict_case`).

    For a brain model (one trained on skull-stripped T1, :func:`uses_brain_extraction`):
    finds the brain and strips the skull if the image still has it
    (:func:`medseg.preprocess.brain_mask`), optionally corrects the bias field inside the
    brain (:func:`medseg.preprocess.n4_correct`). Then normalises as the checkpoint says
    (:func:`prepare_image`), turns and resamples to the model's grid if the checkpoint
    records one (:class:`medseg.preprocess.GridMapping`), predicts along the checkpoint's
    slice axis on the brain's box only (:func:`predict_array`), post-processes
    (:func:`refine_prediction`) and brings the result back to the input's grid (labels
    nearest, confidence and probabilities linear). Labels outside a mask that medseg
    stripped are background.

    Args:
        volume: The image as read, float32 ``(C, Z, Y, X)`` with its geometry.
        checkpoint, net: The model (``net`` may be a :class:`medseg.ensemble.CombinedPredictor`).
        what: How errors name the image.
        device, mode, fast, batch_size: As :func:`predict_array` (None: the checkpoint's).
        return_probs: Keep the class probabilities ``(K, Z, Y, X)`` in the result.
        crf, cleanup: As :func:`refine_prediction`.
        skull_strip: ``"auto"``, ``"always"`` or ``"never"``; None: ``"auto"`` for brain
            models, ``"never"`` for others.
        n4: N4 bias-field correction inside the brain mask before normalising.
        precision, progress: As :func:`predict_array`.

    Returns:
        :class:`VolumePrediction`: labels uint8 ``(Z, Y, X)``, confidence float32
        ``(Z, Y, X)``, probs or None, the brain mask and the grid mapping.
    """
    from medseg.preprocess import GridMapping, brain_mask, n4_correct

    check_brain_input(volume, checkpoint, what=what)
    brain_model = checkpoint.uses_brain_extraction
    strip = skull_strip or ("auto" if brain_model else "never")
    image, geometry = volume.array, volume.geometry
    brain = None
    if brain_model or strip != "never" or n4:
        brain = brain_mask(image, geometry, mode=strip, device=resolve_device(device), what=what)
        if brain.stripped:
            image = np.where(brain.mask, image, np.float32(0)).astype(np.float32, copy=False)
        if n4:
            image = n4_correct(image, brain.mask, geometry.spacing_mm)
    normed = prepare_image(Volume(image, geometry), checkpoint, what=what)
    mapping = GridMapping.between(volume.spatial_shape, geometry, model_grid(checkpoint))
    roi = None if brain is None else brain.mask
    if not mapping.is_identity:
        normed = mapping.to_model(normed, order=1)
        roi = None if roi is None else mapping.to_model(roi.astype(np.uint8), order=0) > 0
        geometry = mapping.geometry
    axis = resolve_slice_axis(checkpoint.patch_settings.slice_axis, geometry)
    spec = spec_from_checkpoint(checkpoint, axis)
    shape = normed.shape[1:]
    # a small input can shrink below one patch on the model's grid: pad with background
    rest = [a for a in range(3) if a != axis]
    need = {axis: spec.patch_size[0], rest[0]: spec.patch_size[1], rest[1]: spec.patch_size[2]}
    pad = [(0, max(0, need[a] - shape[a]) if not mapping.is_identity else 0) for a in range(3)]
    if any(after for _, after in pad):
        normed = np.pad(normed, [(0, 0), *pad])
        roi = None if roi is None else np.pad(roi, pad)
    result = predict_array(
        net,
        normed,
        spec,
        mode=mode or checkpoint.inference_settings.mode,
        batch_size=batch_size or checkpoint.inference_settings.batch_size,
        device=device,
        fast=fast,
        return_probs=return_probs or crf is not False,
        roi=roi,
        precision=precision,
        progress=progress,
    )
    if any(after for _, after in pad):
        inside = tuple(slice(0, n) for n in shape)
        normed = normed[(slice(None), *inside)]
        result = Reassembled(
            result.labels[inside],
            result.confidence[inside],
            None if result.probs is None else result.probs[(slice(None), *inside)],
        )
    result = refine_prediction(
        result, normed, geometry.spacing_mm, checkpoint,
        crf=crf, cleanup=cleanup, device=device, keep_probs=return_probs,
    )  # fmt: skip
    labels, conf, probs = result.labels, result.confidence, result.probs
    if not mapping.is_identity:
        labels = mapping.to_input(labels, order=0)
        conf = mapping.to_input(conf, order=1)
        probs = None if probs is None else mapping.to_input(probs, order=1)
    if brain is not None and brain.stripped:
        labels = np.where(brain.mask, labels, np.uint8(0)).astype(np.uint8, copy=False)
    return VolumePrediction(labels, conf, probs, brain=brain, mapping=mapping)


def check_brain_input(volume: Volume, checkpoint: Checkpoint, *, what: str) -> None:
    """Refuse what a 3D (2.5D) model cannot segment, in one line.

    Raises:
        ValueError: a 2D image (one slice), or a 4D series (several volumes, e.g. fMRI or
            DWI) given to a model that takes one channel.
    """
    channels, shape = volume.array.shape[0], volume.spatial_shape
    name = checkpoint.model_name
    if channels > checkpoint.image_channels == 1:
        raise ValueError(
            f"{what} must have 1 channel (one 3D volume) for this model ({name}), got "
            f"{channels}: a 4D series of {channels} volumes of {shape} (Z, Y, X); extract "
            "the T1 volume first (e.g. fslroi, or nibabel: img.slicer[..., 0])"
        )
    if checkpoint.num_slices > 1 and min(shape) == 1:
        raise ValueError(
            f"{what} must be a 3D volume for this model ({name}), got a 2D image of shape "
            f"{shape} (Z, Y, X); use a 2D model (-m nuclei, -m em-membrane) for 2D images"
        )
