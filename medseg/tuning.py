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
  image holds many objects by design;
* for 2D object models, how objects are made (:func:`object_grid_search`): connected
  components against the seeded watershed on the foreground probability
  (:func:`medseg.membranes.instances_from_probability`) over a grid of its parameters,
  and, for a three-class boundary model, its seeded growth at a few foreground
  thresholds (:data:`BOUNDARY_THRESHOLDS`, :func:`medseg.boundary.classes_from_probs`),
  scored by the mean validation Rand error (or DSB2018 AP).

The decisions are written into a copy of the checkpoint (``postprocess["crf"]``,
``postprocess["cleanup"]``, the object method and its parameters,
``postprocess["tuning"]`` with the validation figures), which
``medseg predict -m tuned.pt`` then applies. The original checkpoint is not changed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medseg import options
from medseg._errors import one_line
from medseg._progress import Bars
from medseg.boundary import LABEL_NAMES as BOUNDARY_LABEL_NAMES
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
        objects_table: One row per object setting (:func:`object_grid_search`), best
            first; None when objects were not tuned.
        failures: ``(case, reason)`` of validation cases that could not be predicted; the
            others were tuned on (the CLI then exits with status 1).
    """

    crf_table: pd.DataFrame | None
    cleanup: Any
    cases: list[str]
    output: Path
    objects_table: pd.DataFrame | None = None
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)


OBJECT_GRID: dict[str, tuple[float, ...]] = {
    "seed_threshold": (0.8, 0.9, 0.95),
    "seed_distance": (1.0, 2.0),
    "sigma": (0.0, 1.0, 2.0),
    "merge_threshold": (0.0, 0.3),
    "mask_threshold": (0.5, 0.3, 0.15),
}
"""The seeded-watershed settings :func:`object_grid_search` tries by default (108).

``mask_threshold`` is the foreground probability above which a pixel belongs to an object:
the ISBI 2012 challenge scored every submission at its best threshold of the membrane map,
per metric; here the threshold of the objects is chosen on validation data instead, while
the class map (``_mask.png``, and its pixel error) stays the argmax."""

BOUNDARY_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6)
"""The foreground thresholds :func:`object_grid_search` tries for a three-class boundary
model's objects (``method: boundary``, ``mask_threshold``): 0.5 is the more likely of
object and background; lower values make objects larger."""

OBJECT_METRICS = options.OBJECT_METRICS
"""What :func:`object_grid_search` can choose by: mean foreground-restricted Rand error
(lower is better; ISBI 2012) or mean DSB2018 AP@0.5:0.95 (higher is better)."""


def object_grid_search(
    cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    min_size: int = 0,
    metric: str = "rand_error",
    grid: dict[str, tuple[float, ...]] | None = None,
    boundary_probs: list[np.ndarray] | None = None,
    boundary_thresholds: tuple[float, ...] = BOUNDARY_THRESHOLDS,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Score connected components and every seeded-watershed setting on validation cases.

    With ``boundary_probs`` (a three-class boundary model) the boundary objects at each of
    ``boundary_thresholds`` are scored too (``method`` ``boundary``, the threshold in
    ``mask_threshold``).

    Args:
        cases: One ``(labels, probability, target)`` per case: the predicted class map
            uint8 ``(Z, Y, X)``, the foreground probability float32 ``(Z, Y, X)``
            (``1 - probs[0]``) and the reference instances, integer ``(Z, Y, X)``.
        min_size: Smallest object kept, pixels (the checkpoint's).
        metric: One of :data:`OBJECT_METRICS`; the table is sorted best first by it.
        grid: Values to try per parameter of
            :func:`medseg.membranes.instances_from_probability` (default
            :data:`OBJECT_GRID`; missing keys take the default values).
        boundary_probs: One float ``(3, Z, Y, X)`` per case (background, interior,
            boundary), or None.
        boundary_thresholds: The ``mask_threshold`` values tried with ``boundary_probs``,
            each in (0, 1).
        progress: Called as ``progress(done, total)`` in settings scored; None: silent.

    Returns:
        One row per setting: ``method`` (``components``, ``seeded`` or ``boundary``), the
        five parameters (NaN where a method has none), the mean ``rand_error`` and ``ap``
        over cases, sorted best first (ties keep the order: components, seeded, boundary).

    Raises:
        ValueError: for no case, an unknown metric or grid key, or an empty grid entry.
    """
    from medseg.instances import instances_from_prediction
    from medseg.membranes import SEEDED_DEFAULTS, instances_from_probability
    from medseg.metrics import average_precision, rand_error

    if not cases:
        raise ValueError("cases must hold at least one validation case, got none")
    if metric not in OBJECT_METRICS:
        raise ValueError(f"metric must be one of {', '.join(OBJECT_METRICS)}, got {metric!r}")
    values = dict(OBJECT_GRID if grid is None else grid)
    unknown = sorted(set(values) - set(SEEDED_DEFAULTS))
    if unknown:
        raise ValueError(f"grid keys must be among {', '.join(SEEDED_DEFAULTS)}, got {unknown}")
    names = list(OBJECT_GRID)
    axes = []
    for name in names:
        tried = tuple(values.get(name, (SEEDED_DEFAULTS[name],)))
        if not tried:
            raise ValueError(f"grid[{name!r}] must hold at least one value, got none")
        axes.append(tried)

    def score(maps: list[np.ndarray]) -> dict[str, float]:
        pairs = [(p, t) for p, (_, _, t) in zip(maps, cases, strict=True)]
        rand = [rand_error(p, t)["rand_error"] for p, t in pairs]
        ap = [float(average_precision(p, t)["ap"]) for p, t in pairs]  # type: ignore[arg-type]
        return {"rand_error": float(np.nanmean(rand)), "ap": float(np.nanmean(ap))}

    rows = [
        {
            "method": "components",
            **{n: math.nan for n in names},
            **score(
                [
                    instances_from_prediction(lab, method="components", min_size=min_size)
                    for lab, _, _ in cases
                ]
            ),
        }
    ]
    if boundary_probs is not None and len(boundary_probs) != len(cases):
        raise ValueError(
            f"boundary_probs must hold one array per case ({len(cases)}), got {len(boundary_probs)}"
        )
    total = 1 + math.prod(len(a) for a in axes)
    total += len(boundary_thresholds) if boundary_probs is not None else 0
    for setting in itertools.product(*axes):
        params = dict(zip(names, (float(v) for v in setting), strict=True))
        maps = [
            instances_from_probability(prob, min_size=min_size, **params) for _, prob, _ in cases
        ]
        rows.append({"method": "seeded", **params, **score(maps)})
        if progress is not None:
            progress(len(rows), total)
    for threshold in boundary_thresholds if boundary_probs is not None else ():
        from medseg.boundary import classes_from_probs, instances_from_boundary

        maps = [
            instances_from_boundary(
                classes_from_probs(p, mask_threshold=float(threshold)), min_size=min_size
            )
            for p in boundary_probs or ()
        ]
        params = {n: math.nan for n in names} | {"mask_threshold": float(threshold)}
        rows.append({"method": "boundary", **params, **score(maps)})
        if progress is not None:
            progress(len(rows), total)
    table = pd.DataFrame(rows)
    return table.sort_values(
        metric, ascending=metric == "rand_error", kind="stable", ignore_index=True
    )


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
    objects: bool = True,
    objects_metric: str = "rand_error",
    objects_grid: dict[str, tuple[float, ...]] | None = None,
    overwrite: bool = False,
    progress: bool = False,
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
        objects: Choose how objects are made (2D object models only;
            :func:`object_grid_search`), stored as the checkpoint's object method.
        objects_metric: What the object setting is chosen by (:data:`OBJECT_METRICS`).
        objects_grid: Seeded-watershed values to try (default :data:`OBJECT_GRID`).
        overwrite: Replace an existing ``output``.
        progress: Bars on a terminal for the predicted cases and the object grid
            (:class:`medseg._progress.Bars`).

    Raises:
        ValueError: no labelled case in the split, nothing to tune, or bad inputs.
        FileExistsError: ``output`` exists and ``overwrite`` is False (checked first).
    """
    from medseg.io import check_output_path
    from medseg.manifest import load_valid_manifest
    from medseg.postprocess import crf_grid_search, select_cleanup
    from medseg.predict import resolve_device

    check_output_path(output, overwrite=overwrite)
    object_model = checkpoint.is_tile_model
    cleanup = cleanup and not object_model
    objects = objects and object_model
    if not crf and not cleanup and not objects:
        raise ValueError(
            "tune-postprocess must tune something, got --no-crf with --no-cleanup"
            + (
                " and --no-objects"
                if object_model
                else " (--objects applies to 2D object models only)"
            )
        )
    if objects and objects_metric not in OBJECT_METRICS:
        raise ValueError(
            f"--objects-metric must be one of {', '.join(OBJECT_METRICS)}, got {objects_metric!r}"
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
    object_cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    boundary_model = objects and checkpoint.label_names == BOUNDARY_LABEL_NAMES
    boundary_probs: list[np.ndarray] = []
    bars = Bars(len(cases), "tune: predict", enabled=None if progress else False)
    used: list[str] = []
    failures: list[tuple[str, str]] = []
    with bars:
        for case in cases:
            try:  # one case's failure is reported; the others still tune
                entry = _tune_case(
                    case, loaded, checkpoint, net, dev,
                    object_model=object_model, fast=fast, objects=objects, crf=crf,
                    progress=bars.item(case.case),
                )  # fmt: skip
            except Exception as err:
                failures.append((case.case, one_line(err)))
                bars.advance()
                continue
            pred, target, object_case, crf_case, probs = entry
            preds.append(pred)
            targets.append(target)
            if object_case is not None:
                object_cases.append(object_case)
                if boundary_model and probs is not None:
                    boundary_probs.append(probs)
            if crf_case is not None:
                crf_cases.append(crf_case)
            used.append(case.case)
            bars.advance()
    if not used:
        first, reason = failures[0]
        raise ValueError(
            f"tune-postprocess must predict at least one validation case, got {len(failures)} "
            f"failure(s), first {first}: {reason}"
        )
    stored = dict(checkpoint.extra.get("postprocess") or {})
    tuning: dict[str, Any] = {"split": split, "cases": used, "fast": fast}
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
    objects_table = None
    if objects:
        min_size = checkpoint.postprocess_settings.min_size
        with Bars(1, "tune: objects", unit="", enabled=None if progress else False) as grid_bars:
            objects_table = object_grid_search(
                object_cases,
                min_size=min_size,
                metric=objects_metric,
                grid=objects_grid,
                boundary_probs=boundary_probs if boundary_model else None,
                progress=grid_bars.item("settings", unit="settings"),
            )
        object_cases.clear()
        boundary_probs.clear()
        best = objects_table.iloc[0]
        for key in OBJECT_GRID:
            stored.pop(key, None)
        stored["method"] = str(best["method"])
        if best["method"] == "seeded":
            stored.update({k: float(best[k]) for k in OBJECT_GRID})
        if best["method"] == "boundary":
            stored["mask_threshold"] = float(best["mask_threshold"])
        components = objects_table[objects_table["method"] == "components"].iloc[0]
        tuning["objects"] = {
            "metric": objects_metric,
            "best": {k: _plain(float(best[k])) for k in (*OBJECT_GRID, "rand_error", "ap")},
            "method": str(best["method"]),
            "components": {k: _plain(float(components[k])) for k in ("rand_error", "ap")},
            "settings_tried": int(len(objects_table)),
        }
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
    return TuneResult(table, decision, used, out, objects_table, failures)


def _tune_case(
    case: Any,
    loaded: Any,
    checkpoint: Checkpoint,
    net: torch.nn.Module,
    dev: torch.device,
    *,
    object_model: bool,
    fast: bool,
    objects: bool,
    crf: bool,
    progress: Callable[[int, int], None],
) -> tuple[np.ndarray, np.ndarray, tuple | None, tuple | None, np.ndarray | None]:
    """One validation case for :func:`tune_postprocess`: the prediction, the target,
    what the object and CRF searches need (None when not searched) and the class
    probabilities of an object model (None for a 3D model)."""
    from medseg.io import read_image
    from medseg.predict import prepare_image, segment_objects, segment_volume

    image = read_image(case.image, allow_2d=object_model)
    what = f"case {case.case!r} ({str(case.image)!r})"
    if object_model:
        result, _ = segment_objects(
            image, checkpoint, net, what=what, device=dev, return_probs=True, progress=progress
        )
    else:
        result = segment_volume(
            image, checkpoint, net, what=what, device=dev, fast=fast,
            return_probs=True, cleanup=False, progress=progress,
        )  # fmt: skip
    read = loaded.read_target(case)
    target = read.classes
    if target.shape != result.labels.shape:
        raise ValueError(
            f"label of case {case.case!r} must have the image's shape "
            f"{result.labels.shape}, got {target.shape}"
        )
    object_case = None
    if objects:
        if read.instances is None:
            raise ValueError(
                f"label of case {case.case!r} must give objects to tune them, got a class map only"
            )
        foreground = (1.0 - result.probs[0]).astype(np.float32)
        object_case = (result.labels, foreground, np.asarray(read.instances))
    crf_case = None
    if crf:
        normed = prepare_image(image, checkpoint, what=what)
        crf_case = (
            torch.from_numpy(result.probs).to(dev),
            torch.from_numpy(normed).to(dev),
            target,
            image.geometry.spacing_mm,
        )
    return result.labels, target, object_case, crf_case, result.probs if object_model else None


def _plain(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def objects_table_markdown(table: pd.DataFrame, *, top: int = 5) -> str:
    """Connected components, the best ``top`` seeded settings and the boundary rows (a
    boundary model's) as Markdown (for the CLI)."""
    shown = pd.concat(
        [
            table[table["method"] == "components"],
            table[table["method"] == "seeded"].head(top),
            table[table["method"] == "boundary"],
        ]
    )
    return shown.to_markdown(index=False, floatfmt=".4f")


def objects_choice(table: pd.DataFrame) -> str:
    """The chosen (first) row of :func:`object_grid_search` in words, e.g.
    ``boundary, mask_threshold 0.4 (rand_error 0.1160, ap 0.5816)``."""
    best = table.iloc[0]
    method = str(best["method"])
    if method == "seeded":
        params = ", ".join(f"{k} {float(best[k]):g}" for k in OBJECT_GRID)
    elif method == "boundary":
        params = f"mask_threshold {float(best['mask_threshold']):g}"
    else:
        params = ""
    scores = f"(rand_error {float(best['rand_error']):.4f}, ap {float(best['ap']):.4f})"
    return f"{method}, {params} {scores}" if params else f"{method} {scores}"


def crf_table_markdown(table: pd.DataFrame, *, top: int = 5) -> str:
    """The best ``top`` CRF rows and the baseline as a Markdown table (for the CLI)."""
    shown = pd.concat([table[~table["crf"]], table[table["crf"]].head(top)])
    cols = ["crf", "w_appearance", "sigma_alpha_mm", "sigma_beta", "mean_dice", "delta_dice"]
    cols += [c for c in table.columns if c.startswith("dice_")]
    return shown[cols].to_markdown(index=False, floatfmt=".4f")
