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
from medseg.patches import Reassembled
from medseg.typing import PathLike


def segment_objects(
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
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Reassembled, np.ndarray]:
    """Segment a 2D image in memory with an object model: classes, then objects.

    Overlap-tile prediction (:func:`medseg.tiling.predict_tiled`), optional CRF
    (:func:`refine_prediction`), then objects from the class mask as the checkpoint's
    post-processing says, with ``objects`` overriding it
    (:func:`medseg.instances.instances_from_prediction`). A three-class boundary model's
    objects (``boundary``) come from its probabilities, decided foreground first at the
    post-processing's ``mask_threshold`` (:func:`medseg.boundary.classes_from_probs`);
    its class map stays the argmax. ``progress(done, total)`` is
    called in tiles, as :func:`medseg.tiling.predict_tiled` does.

    Returns:
        The class prediction (labels uint8 ``(Z, Y, X)``, confidence, probs or None) and
        the instance map, int32 ``(Z, Y, X)`` (0 background, 1..N objects).
    """
    from medseg.instances import instances_from_prediction
    from medseg.tiling import predict_tiled

    pp = checkpoint.postprocess_settings.updated(objects)
    seeded = pp.method == "seeded"
    # a three-class head's objects: decided foreground first, from the probabilities
    boundary = pp.method == "boundary" and checkpoint.num_classes == 3
    normed = prepare_image(volume, checkpoint, what=what)
    inf = checkpoint.inference_settings
    result = predict_tiled(
        normed,
        net,
        tile_size=inf.tile_size,
        halo=inf.halo,
        batch_size=batch_size or inf.batch_size,
        device=resolve_device(device),
        return_probs=return_probs or seeded or boundary or crf is not False,
        progress=progress,
    )
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
        return result, instances
    if seeded:
        from medseg.membranes import instances_from_probability

        instances = instances_from_probability(
            1.0 - result.probs[0], min_size=pp.min_size, **pp.seeded_parameters()
        )
        if not return_probs:
            result = Reassembled(result.labels, result.confidence)
        return result, instances
    instances = instances_from_prediction(
        result.labels,
        method="components" if pp.method == "none" else pp.method,
        min_size=pp.min_size,
        fill=pp.fill_gaps,
    )
    return result, instances


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
