"""What runs around the network in both prediction paths of :mod:`medseg.predict`.

* Precision: :data:`PRECISIONS`, :func:`uses_bf16` and :func:`inference_network`, which runs
  the network in bfloat16 where the device computes bfloat16 natively.
* Input: :func:`prepare_image` checks an image's channels against a checkpoint and
  normalises it as in training. A grey image given to a 2D object model trained on RGB is
  repeated into three channels (grey stored as RGB, as DSB2018's fluorescence images are).
* Output: :func:`refine_prediction` applies the fully connected CRF and the
  largest-component clean-up chosen on validation data (:mod:`medseg.postprocess`,
  :mod:`medseg.tuning`).

:mod:`medseg.predict` re-exports these names under their old import path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medseg import options
from medseg._device import resolve_device
from medseg.checkpoint import Checkpoint
from medseg.io import Volume
from medseg.normalize import normalize_intensity
from medseg.patches import Reassembled

PRECISIONS = options.PRECISIONS
"""Inference precision: ``"auto"`` runs the network under bfloat16 autocast where the
device computes bfloat16 natively (CUDA; CPUs with AMX or AVX-512 BF16), else float32."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's own check: AMX/AVX-512 BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether the network runs in bfloat16 (:data:`PRECISIONS`).

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return precision == "bf16"


class _Bfloat16(torch.nn.Module):
    """A copy of a network with bfloat16 weights: float32 in, float32 logits out.

    On the CPU this is faster than autocast, which casts around every layer (measured on
    the U-SegNet: 3,448 -> 3,848 patches/s); the outputs agree with autocast's to bfloat16
    precision.
    """

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        import copy

        self.network = copy.deepcopy(network).to(torch.bfloat16).eval()
        self.divisor = getattr(network, "divisor", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.to(torch.bfloat16)).float()


def inference_network(
    model: torch.nn.Module, device: torch.device, precision: str = "auto"
) -> tuple[torch.nn.Module, Any]:
    """The network and the context a forward pass runs in, for a precision.

    float32: the network itself, no context. bfloat16: on CUDA, autocast (as in training);
    on the CPU, a bfloat16 copy of the network (:class:`_Bfloat16`).

    Raises:
        ValueError: an unknown precision.
    """
    import contextlib

    if not uses_bf16(device, precision):
        return model, contextlib.nullcontext()
    if device.type == "cuda":
        return model, torch.autocast("cuda", torch.bfloat16)
    return _Bfloat16(model).to(device), contextlib.nullcontext()


def prepare_image(volume: Volume, checkpoint: Checkpoint, *, what: str) -> np.ndarray:
    """Check an image's channels against a checkpoint and normalise it as in training.

    A grey image given to a 2D object model trained on RGB is repeated into three
    channels (grey stored as RGB, as DSB2018's fluorescence images are). A model trained
    with ``data.colour: grey`` takes any number of channels, turned into one grey channel
    with a dark background (:func:`medseg.normalize.grey_dark_background`).

    Args:
        volume: The image as read, intensities float32 ``(C, Z, Y, X)``.
        checkpoint: Gives the expected channels and the normalisation.
        what: How errors name the image, e.g. ``"input 'a.nii.gz'"``.

    Returns:
        Normalised intensities, float32 ``(C', Z, Y, X)``.

    Raises:
        ValueError: wrong number of channels, or an image normalisation refuses
            (e.g. constant).
    """
    array = volume.array
    channels = array.shape[0]
    norm = checkpoint.normalization_settings
    if norm.colour != "keep":  # any stain -> one grey channel, dark background
        from medseg.normalize import model_input_channels

        array = model_input_channels(array, norm.colour)
    elif checkpoint.is_tile_model and channels == 1 and checkpoint.image_channels == 3:
        array = np.repeat(array, 3, axis=0)  # grey stored as RGB (module docstring)
    elif channels != checkpoint.image_channels:
        fix = "; convert it to greyscale first" if channels == 3 else ""
        raise ValueError(
            f"{what} must have {checkpoint.image_channels} channel(s) for this model "
            f"({checkpoint.model_name}), got {channels}{fix}"
        )
    mask = np.ones(array.shape[1:], bool) if norm.mask == "all" else None
    try:
        normed, _ = normalize_intensity(
            array, method=norm.method, percentiles=norm.percentiles, mask=mask
        )
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from err
    return normed


def refine_prediction(
    result: Reassembled,
    image: np.ndarray,
    spacing_mm: Any,
    checkpoint: Checkpoint,
    *,
    crf: bool | dict[str, Any] = False,
    cleanup: bool = True,
    device: str | torch.device | None = None,
    keep_probs: bool = True,
) -> Reassembled:
    """Post-process a prediction: fully connected CRF, then connected-component clean-up.

    The CRF (:func:`medseg.postprocess.dense_crf`) takes the class probabilities and the
    normalised image; its labels are the argmax of the mean-field marginals, and the
    confidence becomes the winner's marginal. The clean-up keeps the largest connected
    component of the foreground and/or of single classes, as stored in the checkpoint's
    ``postprocess["cleanup"]`` by ``medseg tune-postprocess``, which keeps a clean-up only
    if it does not lower the mean validation Dice (nnU-Net's rule).

    Args:
        result: Labels uint8 ``(Z, Y, X)``, confidence float32 ``(Z, Y, X)``, and the class
            probabilities float32 ``(K, Z, Y, X)`` (required when ``crf``).
        image: The normalised image the network saw, float32 ``(C, Z, Y, X)``.
        spacing_mm: Voxel size ``(z, y, x)`` in mm (the CRF's position features).
        checkpoint: Supplies the tuned CRF parameters and the clean-up decision.
        crf: False (off), True (the checkpoint's tuned parameters, else the defaults) or a
            dict of :func:`medseg.postprocess.dense_crf` keyword arguments.
        cleanup: Apply the checkpoint's clean-up decision (if any).
        device: Where the CRF runs (``"auto"``: CUDA if available).
        keep_probs: Keep the probabilities (the CRF's marginals after a CRF) in the result.

    Returns:
        A new :class:`medseg.patches.Reassembled` (numpy), or ``result`` itself when
        nothing applies.
    """
    stored = checkpoint.postprocess_settings
    labels, conf, probs = result.labels, result.confidence, result.probs
    if crf is not False:
        if probs is None:
            raise ValueError("result.probs must hold the class probabilities for the CRF, got None")
        from medseg.postprocess import dense_crf

        params = dict(stored.crf or {}) if crf is True else dict(crf)
        dev = resolve_device(device)
        q = dense_crf(
            torch.from_numpy(np.ascontiguousarray(probs)).to(dev),
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(dev),
            spacing_mm=tuple(float(s) for s in spacing_mm),
            **params,
        )
        best = q.max(0)
        labels = best.indices.to(torch.uint8).cpu().numpy()
        conf = best.values.float().cpu().numpy()
        probs = q.float().cpu().numpy()
    decision = stored.cleanup if cleanup else None
    if decision and (decision.get("foreground") or decision.get("classes")):
        from medseg.postprocess import CleanupDecision, apply_cleanup

        labels = apply_cleanup(
            labels,
            CleanupDecision(
                foreground=bool(decision.get("foreground")),
                classes=tuple(int(c) for c in decision.get("classes", ())),
                connectivity=int(decision.get("connectivity", 3)),
                candidates=(),
            ),
        )
    if labels is result.labels and (keep_probs or probs is None):
        return result
    return Reassembled(labels, conf, probs if keep_probs else None)
