"""Validation during training: whole cases predicted as ``medseg predict`` would, then
Dice and, for object models, the microscopy metrics; the selection score that keeps
``best.pt`` (ARCHITECTURE.md section 3).

:func:`validate` predicts every validation case through the patch engine with the
configured reassembly (majority vote by default), or 2D images by overlap-tile
(:mod:`medseg.tiling`), and computes Dice on the whole case, not on patches; with object
targets also AP, F1, pixel IoU, Rand error and the touching-pair split rate after the
configured post-processing. :mod:`medseg.train` calls it and re-exports its names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from medseg.config import TrainConfig
from medseg.data import TrainingVolume
from medseg.metrics import confusion_matrix, overlap_metrics
from medseg.patches import PatchSpec, predict_sliding_window


def patch_spec(config: TrainConfig, slice_axis: int = 0) -> PatchSpec:
    """The training/inference patch spec of a config (slice axis resolved per volume)."""
    p = config.patches
    return PatchSpec.two_and_half_d(
        p.size, p.stride, num_slices=p.num_slices, slice_axis=slice_axis, pad_mode=p.pad_mode
    )


def uses_amp(config: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast: on CUDA with ``amp``; on a CPU with native bf16 (AMX / AVX-512
    BF16, :func:`medseg.predict.cpu_has_native_bf16`) with ``cpu_amp``."""
    if device.type == "cuda":
        return bool(config.amp)
    if device.type == "cpu" and config.cpu_amp:
        from medseg.predict import cpu_has_native_bf16

        return cpu_has_native_bf16()
    return False


def predict_validation_volume(
    model: torch.nn.Module,
    vol: TrainingVolume,
    config: TrainConfig,
    device: torch.device,
    *,
    with_probs: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Predict one validation case as ``medseg predict`` would: uint8 ``(Z, Y, X)``.

    With ``with_probs`` (tile models) it returns ``(labels, probs)``, the latter float32
    ``(K, Z, Y, X)``: what ``postprocess.method: seeded`` (``1 - probs[0]``) and
    ``boundary`` need.
    ``progress(done, total)`` is called in patches or tiles.
    """
    image, _ = vol.unpadded()
    inf = config.inference
    with torch.autocast(device.type, torch.bfloat16, enabled=uses_amp(config, device)):
        if inf.is_tile:
            from medseg.tiling import predict_tiled

            tiled = predict_tiled(
                image.cpu().numpy(),
                model,
                tile_size=inf.tile_size,
                halo=inf.halo,
                batch_size=inf.batch_size,
                device=device,
                return_probs=with_probs,
                progress=progress,
            )
            if with_probs:
                return tiled.labels, tiled.probs
            return tiled.labels
        out = predict_sliding_window(
            image,
            model,
            patch_spec(config),
            mode=inf.mode,
            batch_size=inf.batch_size,
            progress=progress,
        )
    return out.labels.cpu().numpy()


def object_metrics(pred_instances: np.ndarray, target_instances: np.ndarray) -> dict[str, float]:
    """The microscopy metrics of one case (U-Net paper, ISBI 2012, DSB2018)."""
    from medseg.metrics import average_precision, foreground_iou, rand_error, touching_split_rate

    ap = average_precision(pred_instances, target_instances)
    split = touching_split_rate(pred_instances, target_instances)
    return {
        "ap": float(ap["ap"]),  # type: ignore[arg-type]
        "f1_at_05": float(ap["f1_at_05"]),  # type: ignore[arg-type]
        "pixel_iou": foreground_iou(pred_instances, target_instances),
        "rand_error": float(rand_error(pred_instances, target_instances)["rand_error"]),
        "num_pairs": int(split["num_pairs"]),
        "num_split": int(split["num_split"]),
    }


def validate(
    model: torch.nn.Module,
    volumes: list[TrainingVolume],
    config: TrainConfig,
    device: torch.device,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics on whole predicted validation cases (majority vote or overlap-tile).

    Returns ``mean_dice`` and per-class ``dice`` (foreground classes, mean over cases),
    ``per_case`` Dice and, with ``postprocess.method`` set and object targets, the means
    of :func:`object_metrics` over cases plus the pooled touching-pair ``split_rate``.
    With ``progress``, bars show the cases and the current case's patches on a terminal
    (:class:`medseg._progress.Bars`).
    """
    from medseg._progress import Bars

    with Bars(len(volumes), "validation", enabled=None if progress else False) as bars:
        return _validate(model, volumes, config, device, bars)


def _validate(
    model: torch.nn.Module,
    volumes: list[TrainingVolume],
    config: TrainConfig,
    device: torch.device,
    bars: Any,
) -> dict[str, Any]:
    """:func:`validate` inside its progress bars."""
    from medseg.instances import instances_from_prediction

    model.eval()
    k = config.data.num_classes
    per_case: dict[str, list[float]] = {}
    objects: dict[str, dict[str, float]] = {}
    pp = config.postprocess
    boundary = pp.method == "boundary" and k == 3  # a three-class head
    with_probs = (pp.method == "seeded" or boundary) and config.inference.is_tile
    for vol in volumes:
        probs = None
        step = bars.item(vol.case)
        if with_probs:
            labels, probs = predict_validation_volume(
                model, vol, config, device, with_probs=True, progress=step
            )
        else:
            labels = predict_validation_volume(model, vol, config, device, progress=step)
        _, label = vol.unpadded()
        case_cm = confusion_matrix(labels, label.cpu().numpy(), num_classes=k)
        per_case[vol.case] = overlap_metrics(case_cm).dice[1:].tolist()
        if pp.method != "none" and vol.instances is not None:
            if probs is not None and pp.method == "seeded":
                from medseg.membranes import instances_from_probability

                pred = instances_from_probability(
                    (1.0 - probs[0]).astype(np.float32),
                    min_size=pp.min_size,
                    **pp.seeded_parameters(),
                )
            elif probs is not None:  # boundary: foreground first, as medseg predict does
                from medseg.boundary import classes_from_probs, instances_from_boundary

                pred = instances_from_boundary(
                    classes_from_probs(probs, mask_threshold=pp.mask_threshold),
                    min_size=pp.min_size,
                )
            else:
                pred = instances_from_prediction(
                    labels, method=pp.method, min_size=pp.min_size, fill=pp.fill_gaps
                )
            objects[vol.case] = object_metrics(pred, vol.instances)
        bars.advance()
    dice = np.array([np.nanmean([d[c] for d in per_case.values()]) for c in range(k - 1)])
    model.train()
    result: dict[str, Any] = {
        "mean_dice": float(np.nanmean(dice)),
        "dice": dice.tolist(),
        "per_case": per_case,
    }
    if objects:
        for key in ("ap", "f1_at_05", "pixel_iou", "rand_error"):
            result[key] = float(np.nanmean([m[key] for m in objects.values()]))
        pairs = sum(m["num_pairs"] for m in objects.values())
        split = sum(m["num_split"] for m in objects.values())
        result["split_rate"] = split / pairs if pairs else float("nan")
        result["objects"] = objects
    return result


def selection_score(metrics: dict[str, Any], name: str) -> float:
    """Higher is better: the metric, or minus it for ``rand_error``; -inf when missing."""
    value = metrics.get(name)
    if value is None or not np.isfinite(value):
        return -math.inf
    return -float(value) if name == "rand_error" else float(value)


def best_epoch(rows: list[dict[str, Any]], select: str) -> int | None:
    """The epoch whose validation gave the best selection score (the first of ties)."""
    scored = [
        (selection_score({select: r["val_select"]}, select), -int(r["epoch"]))
        for r in rows
        if r.get("val_select") not in ("", None)
    ]
    return -max(scored)[1] if scored else None


def json_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Validation metrics as plain values (checkpoints load with weights_only=True)."""
    return json.loads(json.dumps(metrics, default=float))
