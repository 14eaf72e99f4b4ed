"""One training step of :func:`medseg.train.train`: the batch augmentation on the device
(:mod:`medseg.augment`, evaluated only on the patch, the margin giving context) and the
optimisation step, with deep supervision and bf16 autocast. ``benchmarks/bench_train.py``
times these same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from medseg.augment import apply_augment_torch, sample_augment_params
from medseg.augment.objects import object_contrast_torch
from medseg.config import TrainConfig
from medseg.data import crop_margin


def augment_batch(
    inputs, targets, weights, config: TrainConfig, rng, crop, margin: int, context: int
):
    """Augment a batch of margin patches (and weight maps) on its device; return the
    network inputs (margin cropped) and the targets and weights of the output window.

    With ``augment.object_contrast_prob`` > 0 the objects of the class maps are first made
    fainter (:mod:`medseg.augment.objects`, on the CPU: a connected-component labelling).
    """
    size = config.patches.size
    shape = (1, inputs.shape[-2], inputs.shape[-1])
    a = config.augment
    if a.object_contrast_prob > 0:  # faint objects, on the class map's objects
        inputs = object_contrast_torch(inputs, targets, rng, a)
    active = (
        a.elastic_sigma > 0
        or a.max_shift > 0
        or a.max_rotation_deg > 0
        or a.zoom_range != (1.0, 1.0)
        or a.flip_axes
        or a.gamma_range != (1.0, 1.0)
        or a.contrast_range != (1.0, 1.0)
        or a.adds_noise
        or a.adds_blur
    )
    if not active:
        image = crop_margin(inputs, margin)
        label = crop_margin(targets, margin + context)
        weight = None if weights is None else crop_margin(weights, margin + context)
        return image, label, weight
    in_plane = replace(a, ndim=2)
    params = [sample_augment_params(rng, shape, in_plane) for _ in range(len(inputs))]
    warped, warped_label, warped_weight = apply_augment_torch(
        inputs[:, :, None],
        targets[:, None],
        None if weights is None else weights[:, None],
        params,
        mode=a.interpolation,
        crop=crop,
    )
    assert warped_label is not None
    n, full = len(inputs), size + 2 * context
    image = warped[:, :, 0].reshape(n, -1, full, full)
    label = crop_margin(warped_label[:, 0], context)
    weight = None if warped_weight is None else crop_margin(warped_weight[:, 0], context)
    return image, label, weight


class Heads(torch.nn.Module):
    """Training view of a deep-supervision model: ``forward`` returns every head.

    Going through ``forward`` (rather than calling ``forward_heads`` directly) keeps DDP's
    gradient synchronisation and ``torch.compile`` working.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_heads(x)  # type: ignore[operator]


def training_step(
    net: Callable[[torch.Tensor], Any],
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    deep_supervision: bool,
    amp: bool,
) -> torch.Tensor:
    """One optimisation step of :func:`train` on a batch; returns the (attached) loss.

    The forward pass runs under bfloat16 autocast when ``amp`` (CUDA only); the loss is
    computed in float32 on every head for UNet++ (``deep_supervision``), with the U-Net
    weight map when ``weights`` is given. ``benchmarks/bench_train.py`` times this same
    function on synthetic tensors.
    """
    with torch.autocast(inputs.device.type, torch.bfloat16, enabled=amp):
        if deep_supervision:  # UNet++: the loss sees every head
            loss = criterion([h.float() for h in net(inputs)], targets)
        elif weights is not None:  # U-Net weight map (eq. 1)
            loss = criterion(net(inputs).float(), targets, weights)
        else:
            loss = criterion(net(inputs).float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss
