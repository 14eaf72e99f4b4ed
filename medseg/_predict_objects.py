"""The 2D object path of :mod:`medseg.predict` (microscopy; checkpoints with inference
mode ``"tile"``).

:func:`segment_objects` predicts an image of any size in memory by the U-Net overlap-tile
strategy (:mod:`medseg.tiling`), then separates the foreground into objects as configured
(:func:`medseg.instances.instances_from_prediction`). :func:`write_overlay` writes the
objects' overlay PNG. :func:`medseg.predict.predict_case` writes the three files: the class
mask, the instance map (uint16) and the overlay.

:mod:`medseg.predict` re-exports these names under their old import path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg._device import resolve_device
from medseg._inference import prepare_image, refine_prediction
from medseg.checkpoint import Checkpoint
from medseg.io import Volume
from medseg.object_size import (
    AUTO_SCALES,
    choose_scale,
    foreground_confidence,
    rescale_image,
    resize_probs,
    scale_for_diameter,
    scaled_shape,
    usable_scales,
)
from medseg.patches import Reassembled
from medseg.typing import PathLike


def segment_objects(
    volume: Volume, checkpoint: Checkpoint, net: torch.nn.Module, **options: Any
) -> tuple[Reassembled, np.ndarray]:
    """Segment a 2D image in memory with an object model: classes, then objects.

    :func:`segment_objects_scaled` (the same keyword ``options``: ``what``, ``device``,
    ``batch_size``, ``return_probs``, ``crf``, ``objects``, ``diameter``, ``progress``)
    without the scale it chose.
    """
    result, instances, _ = segment_objects_scaled(volume, checkpoint, net, **options)
    return result, instances


def segment_objects_scaled(
    volume: Volume,
    checkpoint: Checkpoint,
    net: torch.nn.Module,
    *,
    what: str,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    return_probs: bool = False,
    crf: bool | dict[str, Any] = False,
    objects: dict[str, Any] | None = None,
    diameter: float | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Reassembled, np.ndarray, float]:
    """Segment a 2D image in memory with an object model: classes, then objects, and the
    scale the network saw the image at.

    Overlap-tile prediction (:func:`medseg.tiling.predict_tiled`) at the scale
    ``diameter`` asks for (:mod:`medseg.object_size`; the probabilities are brought back
    to the image's size), optional CRF (:func:`refine_prediction`), then objects from
    the class mask as the checkpoint's post-processing says, with ``objects`` overriding
    it (:func:`medseg.instances.instances_from_prediction`). A three-class boundary
    model's objects (``boundary``) come from its probabilities, decided foreground first
    at the post-processing's ``mask_threshold`` (:func:`medseg.boundary.classes_from_probs`);
    its class map stays the argmax. ``progress(done, total)`` is called in tiles, as
    :func:`medseg.tiling.predict_tiled` does (in thousandths of the work for ``auto``).

    Args:
        diameter: None: the checkpoint's ``inference["diameter"]`` (none stored: the
            image as it is). ``"auto"``: each scale of
            :data:`medseg.object_size.AUTO_SCALES`, keeping the one the model is surest
            of (:func:`medseg.object_size.choose_scale`). ``"none"``: the image as it
            is. A number: the objects' typical diameter in pixels; the image is scaled
            by the training median diameter (``extra["object_size"]``) over it.

    Returns:
        The class prediction (labels uint8 ``(Z, Y, X)``, confidence, probs or None), the
        instance map, int32 ``(Z, Y, X)`` (0 background, 1..N objects), and the scale
        (1.0: the image as it is; 0.25: shrunk 4x).

    Raises:
        ValueError: a bad ``diameter``, or a number for a checkpoint that does not record
            its training diameter.
    """
    from medseg.instances import instances_from_prediction
    from medseg.tiling import predict_tiled

    pp = checkpoint.postprocess_settings.updated(objects)
    seeded = pp.method == "seeded"
    # a three-class head's objects: decided foreground first, from the probabilities
    boundary = pp.method == "boundary" and checkpoint.num_classes == 3
    normed = prepare_image(volume, checkpoint, what=what)
    scales = candidate_scales(checkpoint, diameter, normed.shape[2:])
    inf = checkpoint.inference_settings
    want_probs = return_probs or seeded or boundary or crf is not False

    def predict_at(scale: float, report: Callable[[int, int], None] | None) -> Reassembled:
        if scale == 1.0:
            return predict_tiled(
                normed, net, tile_size=inf.tile_size, halo=inf.halo,
                batch_size=batch_size or inf.batch_size, device=resolve_device(device),
                return_probs=want_probs or len(scales) > 1, progress=report,
            )  # fmt: skip
        shape = normed.shape[2:]
        small = predict_tiled(
            rescale_image(normed, scaled_shape(shape, scale)), net, tile_size=inf.tile_size,
            halo=inf.halo, batch_size=batch_size or inf.batch_size,
            device=resolve_device(device), return_probs=True, progress=report,
        )  # fmt: skip
        probs = resize_probs(small.probs, shape)
        return Reassembled(probs.argmax(0).astype(np.uint8), probs.max(0), probs)

    if len(scales) == 1:
        scale = scales[0]
        result = predict_at(scale, progress)
    else:  # each scale in turn; only the prediction of the scale chosen so far is kept
        threshold = pp.mask_threshold if boundary else 0.5
        confidence: dict[float, float] = {}
        for i, s in enumerate(scales):
            report = None if progress is None else _share(progress, i, len(scales))
            candidate = predict_at(s, report)
            confidence[s] = foreground_confidence(candidate.probs, threshold=threshold)
            if choose_scale(confidence) == s:
                scale, result = s, candidate
    result = refine_prediction(
        result, normed, volume.geometry.spacing_mm, checkpoint,
        crf=crf, cleanup=False, device=device, keep_probs=return_probs or seeded or boundary,
    )  # fmt: skip
    if boundary:
        from medseg.boundary import classes_from_probs, instances_from_boundary

        classes = classes_from_probs(result.probs, mask_threshold=pp.mask_threshold)
        instances = instances_from_boundary(classes, min_size=pp.min_size)
        if not return_probs:
            result = Reassembled(result.labels, result.confidence)
        return result, instances, scale
    if seeded:
        from medseg.membranes import instances_from_probability

        instances = instances_from_probability(
            1.0 - result.probs[0], min_size=pp.min_size, **pp.seeded_parameters()
        )
        if not return_probs:
            result = Reassembled(result.labels, result.confidence)
        return result, instances, scale
    instances = instances_from_prediction(
        result.labels,
        method="components" if pp.method == "none" else pp.method,
        min_size=pp.min_size,
        fill=pp.fill_gaps,
    )
    return result, instances, scale


def training_diameter(checkpoint: Checkpoint) -> float | None:
    """The median equivalent diameter of the training objects in pixels, as the training
    run recorded it (``extra["object_size"]["median_diameter"]``), or None."""
    stored = checkpoint.extra.get("object_size") or {}
    value = stored.get("median_diameter")
    return None if value is None else float(value)


def candidate_scales(
    checkpoint: Checkpoint, diameter: float | str | None, shape: tuple[int, ...]
) -> tuple[float, ...]:
    """The scales :func:`segment_objects_scaled` predicts an image of ``shape`` ``(Y, X)``
    at, for ``diameter`` (its Args).

    Raises:
        ValueError: an unknown word, a diameter out of range, or a number for a
            checkpoint without a recorded training diameter.
    """
    if diameter is None:
        diameter = checkpoint.inference_settings.diameter
    if diameter is None or diameter == "none":
        return (1.0,)
    if diameter == "auto":
        return usable_scales((int(shape[0]), int(shape[1])), AUTO_SCALES)
    if isinstance(diameter, str) or isinstance(diameter, bool):
        raise ValueError(f"diameter must be 'auto', 'none' or a number of pixels, got {diameter!r}")
    trained = training_diameter(checkpoint)
    if trained is None:
        raise ValueError(
            f"diameter must be 'auto' or 'none' for checkpoint {checkpoint.model_name!r}: it does "
            f"not record the diameter of its training objects, got {diameter!r}"
        )
    return (scale_for_diameter(float(diameter), trained),)


def _share(
    progress: Callable[[int, int], None], index: int, count: int
) -> Callable[[int, int], None]:
    """``progress`` for pass ``index`` of ``count``, in thousandths of all passes."""

    def report(done: int, total: int) -> None:
        progress(1000 * index + (1000 * done) // max(total, 1), 1000 * count)

    return report


def write_overlay(
    path: PathLike, image: np.ndarray, instances: np.ndarray, *, overwrite: bool = False
) -> Path:
    """Write the object overlay of the middle slice as an RGB PNG, atomically.

    Args:
        path: Output ``.png``.
        image: Intensities as read, float32 ``(C, Z, Y, X)``, C = 1 or 3.
        instances: Object ids, integer ``(Z, Y, X)``.
        overwrite: Replace an existing file.
    """
    from PIL import Image

    from medseg.io import atomic_output
    from medseg.visualize import instance_overlay_rgb

    z = image.shape[1] // 2
    plane = image[:, z] if image.shape[0] in (1, 3) else image[:1, z]
    rgb = instance_overlay_rgb(plane, instances[z])
    with atomic_output(path, overwrite=overwrite) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return Path(path)
