"""Choose a model's post-processing on validation data: CRF parameters and clean-up.

``medseg tune-postprocess`` runs a model over the validation cases of a manifest once,
keeping the class probabilities, and then decides, as nnU-Net decides its
post-processing, from those validation cases only (never test data):

* the fully connected CRF's appearance parameters (w1, sigma_alpha, sigma_beta), by a
  small grid search (:func:`medseg.postprocess.crf_grid_search`); the best set is stored
  and used by ``medseg predict --crf``, with its measured Dice change;
* the connected-component clean-up (:func:`medseg.postprocess.select_cleanup`): keep the
  largest component of the foreground and/or of single classes, each kept only if it
  does not lower the mean validation Dice; 3D (brain) models only, since a microscopy
  image holds many objects by design.

The decisions are written into a copy of the checkpoint (``postprocess["crf"]``,
``postprocess["cleanup"]``, ``postprocess["tuning"]`` with the validation figures), which
``medseg predict -m tuned.pt`` then applies. The original checkpoint is not changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from medseg.checkpoint import Checkpoint, resave_checkpoint
from medseg.typing import PathLike


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune_postprocess` measured and wrote.

    Attributes:
        crf_table: One row per CRF parameter set plus the no-CRF baseline, best first
            (:func:`medseg.postprocess.crf_grid_search`); None when the CRF was not tuned.
        cleanup: The clean-up decision (:class:`medseg.postprocess.CleanupDecision`), or
            None when not tuned.
        cases: The validation cases used.
        output: The tuned checkpoint.
    """

    crf_table: pd.DataFrame | None
    cleanup: Any
    cases: list[str]
    output: Path


def cleanup_to_dict(decision: Any) -> dict[str, Any]:
    """A :class:`medseg.postprocess.CleanupDecision` as plain values for a checkpoint."""
    return {
        "foreground": bool(decision.foreground),
        "classes": [int(c) for c in decision.classes],
        "connectivity": int(decision.connectivity),
    }


def tune_postprocess(
    checkpoint: Checkpoint,
    manifest: PathLike,
    output: PathLike,
    *,
    data_root: PathLike | None = None,
    split: str = "val",
    device: str | None = None,
    fast: bool = False,
    crf: bool = True,
    cleanup: bool = True,
    crf_grid: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> TuneResult:
    """Tune the CRF and choose the clean-up on a manifest's validation cases.

    Args:
        checkpoint: The model to tune (loaded).
        manifest: Manifest CSV whose ``split`` cases have labels.
        output: The tuned checkpoint to write (atomically).
        data_root: Root of the manifest's paths (default ``$MEDSEG_DATA_ROOT``).
        split: The validation split.
        device: Where prediction and the CRF run (``"auto"``: CUDA if available).
        fast: Predict whole slices (``--fast``) instead of voting patches.
        crf: Tune the CRF's appearance parameters.
        cleanup: Choose the connected-component clean-up (3D models only).
        crf_grid: Values to try, keys ``w_appearance``, ``sigma_alpha_mm``,
            ``sigma_beta`` (default: :func:`medseg.postprocess.crf_grid_search`'s).
        overwrite: Replace an existing ``output``.

    Raises:
        ValueError: no labelled case in the split, nothing to tune, or bad inputs.
        FileExistsError: ``output`` exists and ``overwrite`` is False (checked first).
    """
    from medseg.io import check_output_path, read_image
    from medseg.manifest import load_valid_manifest
    from medseg.postprocess import crf_grid_search, select_cleanup
    from medseg.predict import prepare_image, resolve_device, segment_objects, segment_volume

    check_output_path(output, overwrite=overwrite)
    object_model = str(checkpoint.inference.get("mode")) == "tile"
    cleanup = cleanup and not object_model
    if not crf and not cleanup:
        raise ValueError(
            "tune-postprocess must tune something, got --no-crf with --no-cleanup"
            + (" (clean-up applies to 3D models only)" if object_model else "")
        )
    loaded = load_valid_manifest(manifest, data_root=data_root)
    cases = [c for c in loaded.cases if c.split == split and c.label is not None]
    if not cases:
        raise ValueError(
            f"manifest {str(manifest)!r} must have labelled cases in split {split!r}, got none"
        )
    dev = resolve_device(device)
    net = checkpoint.build_model(dev)
    classes = sorted(k for k in checkpoint.label_names if k != 0)
    crf_cases, preds, targets = [], [], []
    for case in cases:
        image = read_image(case.image, allow_2d=object_model)
        what = f"case {case.case!r} ({str(case.image)!r})"
        if object_model:
            result, _ = segment_objects(
                image, checkpoint, net, what=what, device=dev, return_probs=True
            )
        else:
            result = segment_volume(
                image,
                checkpoint,
                net,
                what=what,
                device=dev,
                fast=fast,
                return_probs=True,
                cleanup=False,
            )
        target = loaded.read_target(case).classes
        if target.shape != result.labels.shape:
            raise ValueError(
                f"label of case {case.case!r} must have the image's shape "
                f"{result.labels.shape}, got {target.shape}"
            )
        preds.append(result.labels)
        targets.append(target)
        if crf:
            normed = prepare_image(image, checkpoint, what=what)
            crf_cases.append(
                (
                    torch.from_numpy(result.probs).to(dev),
                    torch.from_numpy(normed).to(dev),
                    target,
                    image.geometry.spacing_mm,
                )
            )
    stored = dict(checkpoint.extra.get("postprocess") or {})
    tuning: dict[str, Any] = {"split": split, "cases": [c.case for c in cases], "fast": fast}
    table = None
    if crf:
        table = crf_grid_search(
            crf_cases, num_classes=checkpoint.num_classes, classes=classes, **(crf_grid or {})
        )
        crf_cases.clear()
        best = table[table["crf"]].iloc[0]
        stored["crf"] = {
            k: (int(best[k]) if k == "num_iterations" else float(best[k]))
            for k in (
                "w_appearance",
                "sigma_alpha_mm",
                "sigma_beta",
                "w_smoothness",
                "sigma_gamma_mm",
                "num_iterations",
            )
        }
        baseline = float(table.loc[~table["crf"], "mean_dice"].iloc[0])
        tuning["crf_mean_dice"] = float(best["mean_dice"])
        tuning["no_crf_mean_dice"] = baseline
    decision = None
    if cleanup:
        decision = select_cleanup(
            preds, targets, num_classes=checkpoint.num_classes, classes=classes
        )
        stored["cleanup"] = cleanup_to_dict(decision)
        tuning["cleanup_candidates"] = [
            {
                "target": str(c.target),
                "dice_before": _plain(c.dice_before),
                "dice_after": _plain(c.dice_after),
                "applied": bool(c.applied),
            }
            for c in decision.candidates
        ]
    stored["tuning"] = tuning
    half = any(v.dtype == torch.float16 for v in checkpoint.state_dict.values())
    out = resave_checkpoint(
        checkpoint,
        output,
        model=net,
        extra={**checkpoint.extra, "postprocess": stored},
        half=half,
        overwrite=overwrite,
    )
    return TuneResult(table, decision, [c.case for c in cases], out)


def _plain(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def crf_table_markdown(table: pd.DataFrame, *, top: int = 5) -> str:
    """The best ``top`` CRF rows and the baseline as a Markdown table (for the CLI)."""
    shown = pd.concat([table[~table["crf"]], table[table["crf"]].head(top)])
    cols = ["crf", "w_appearance", "sigma_alpha_mm", "sigma_beta", "mean_dice", "delta_dice"]
    cols += [c for c in table.columns if c.startswith("dice_")]
    return shown[cols].to_markdown(index=False, floatfmt=".4f")
