"""Planning and reporting for the batch engine (:mod:`medseg.batch`, which re-exports its
public names).

Everything checked before anything is written (the manifest's cases, the model and its
settings, the report folder), the predict jobs of the unfinished cases (finished ones are
skipped, unless made with other settings), and the cases table and cohort report
(:func:`medseg.cohort.write_cohort_report`) with the digest that keeps an unchanged report
untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg._batch_jobs import (
    FIRST_COLUMNS,
    PREDICTION_SUFFIX,
    REPORT_STATE,
    BatchConfig,
    CaseOutcome,
    PredictJob,
)
from medseg._batch_tasks import (
    _cpu_count,
    _read_sidecar,
    brain_mask_path,
    sidecar_path,
    volumes_path,
)
from medseg.io import atomic_output
from medseg.manifest import Case, Manifest, load_manifest

if TYPE_CHECKING:  # heavy imports stay out of ``medseg --help``
    import pandas as pd

    from medseg.checkpoint import Checkpoint

# the settings a finished case must share to be skipped (in <case>.json "settings")
_COMPARED_SETTINGS = ("checkpoint_sha256", "fast", "mode", "skull_strip", "n4")


# --------------------------------------------------------------------------------------
# Planning (validation before anything is written)


def selected_cases(config: BatchConfig) -> tuple[Case, ...]:
    """The cases a run of ``config`` works on (its split of the manifest), checked as the
    run checks them (for progress bars that need the count first)."""
    return _load_cases(config)[1]


def _load_cases(config: BatchConfig) -> tuple[Manifest, tuple[Case, ...]]:
    manifest = load_manifest(config.manifest, data_root=config.data_root)
    if manifest.label_format != "classes":
        raise ValueError(
            f"manifest {str(config.manifest)!r} must hold tissue label maps (label_format "
            f"'classes') for medseg batch, got {manifest.label_format!r}; use medseg evaluate "
            "--manifest for object metrics"
        )
    cases = manifest.split(config.split) if config.split is not None else manifest.cases
    if not cases:
        raise ValueError(
            f"manifest {str(config.manifest)!r} must have cases in split {config.split!r}, got none"
        )
    columns = ["split", *cases[0].metadata]
    if config.group_by is not None and config.group_by not in columns:
        raise ValueError(
            f"--group-by must be a manifest column ({', '.join(columns)}), got {config.group_by!r}"
        )
    if config.scheduler is None:
        from medseg._device import resolve_device

        resolve_device(config.device)  # CUDA asked for but absent: fail before any work
    return manifest, cases


def _load_predict_model(config: BatchConfig, manifest: Manifest) -> tuple[Checkpoint, dict]:
    from medseg.checkpoint import load_checkpoint, resolve_checkpoint

    ckpt = load_checkpoint(config.model)
    if ckpt.is_tile_model or ckpt.num_slices < 2:
        raise ValueError(
            f"-m/--model must be a 2.5D tissue model for medseg batch, got the 2D model "
            f"{config.model!r}; use medseg predict for microscopy images"
        )
    names = {int(k): str(v) for k, v in ckpt.label_names.items()}
    theirs = manifest.label_names
    if theirs and {k: v for k, v in theirs.items() if k} != {k: v for k, v in names.items() if k}:
        raise ValueError(
            f"-m/--model labels must match the manifest's ({str(manifest.labels_path)!r}: "
            f"{theirs}), got {names} from {config.model!r}"
        )
    path = resolve_checkpoint(config.model)
    settings = {
        "model": config.model,
        "checkpoint_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "fast": bool(config.fast),
        # --fast predicts each voxel once: no reassembly mode to record
        "mode": None if config.fast else config.mode or ckpt.inference_settings.mode,
        "skull_strip": _skull_strip_setting(config.skull_strip, ckpt),
        "n4": bool(config.n4),
        "label_names": {str(k): v for k, v in sorted(names.items())},
    }
    return ckpt, settings


def _skull_strip_setting(mode: str, ckpt: Checkpoint) -> str:
    """The skull stripping a case gets: ``"auto"`` means ``"never"`` for a non-brain model."""
    return "never" if mode == "auto" and not ckpt.uses_brain_extraction else mode


def _writes_brain_mask(config: BatchConfig, ckpt: Checkpoint) -> bool:
    """Whether predict_case finds a brain mask (:func:`medseg.predict.segment_volume`)."""
    return ckpt.uses_brain_extraction or config.skull_strip == "always" or config.n4


def _case_outputs(case: Case, output: Path, *, brain_mask: bool, volumes: bool) -> dict[str, Path]:
    """Every file predict_task writes for a case except its ``<case>.json``."""
    from medseg.predict import output_paths

    targets = output_paths(case.image, output, confidence=True, probs=False)
    if brain_mask:
        targets["brain_mask"] = brain_mask_path(output)
    if volumes:
        targets["report"] = volumes_path(output)
    return targets


def _require_label_names(manifest: Manifest) -> dict[int, str]:
    if not manifest.label_names:
        raise FileNotFoundError(
            f"label names {str(manifest.labels_path)!r} must exist for medseg batch evaluate "
            'to name the tissues, got a missing file; write {"labels": {"0": "background", '
            '"1": "CSF", ...}}'
        )
    return dict(manifest.label_names)


def _local_threads(config: BatchConfig) -> int | None:
    """Torch threads per task (:mod:`medseg.batch`)."""
    if config.threads is not None or config.scheduler is not None:
        return config.threads
    workers = config.num_workers
    if not workers:
        return None
    return max(1, _cpu_count() // workers)


def _model_ref(model: str) -> str:
    """A built-in name as is (each worker's own copy), a file as an absolute path."""
    from medseg.checkpoint import BUILTIN_MODELS

    return model if model in BUILTIN_MODELS else str(Path(model).resolve())


def _plan_predictions(
    config: BatchConfig,
    ckpt: Checkpoint,
    cases: Sequence[Case],
    pred_dir: Path,
    settings: dict,
) -> tuple[list[PredictJob], dict[str, CaseOutcome]]:
    """Jobs for unfinished cases, and outcomes for finished ones (:mod:`medseg.batch`)."""
    writes_mask = _writes_brain_mask(config, ckpt)
    # predict_case writes <case>_volumes.csv for brain models (report=True)
    writes_volumes = ckpt.uses_brain_extraction
    # sidecars written before a setting was recorded: the value it had then
    earlier = {"skull_strip": _skull_strip_setting("auto", ckpt), "n4": False}
    jobs: list[PredictJob] = []
    skipped: dict[str, CaseOutcome] = {}
    stale: list[str] = []
    compared = _COMPARED_SETTINGS
    for c in cases:
        output = pred_dir / f"{c.case}{PREDICTION_SUFFIX}"
        targets = _case_outputs(c, output, brain_mask=writes_mask, volumes=writes_volumes)
        sidecar = _read_sidecar(sidecar_path(output))
        present = [p.exists() for p in targets.values()]
        finished = all(present) and sidecar is not None and sidecar.get("status") == "ok"
        if finished and not config.overwrite:
            assert sidecar is not None
            made = {**earlier, **(sidecar.get("settings") or {})}
            differ = [k for k in compared if made.get(k) != settings[k]]
            if differ:
                stale.append(f"{c.case} ({', '.join(_setting(k, made.get(k)) for k in differ)})")
            seconds = sidecar.get("seconds")
            skipped[c.case] = CaseOutcome(
                c.case,
                "skipped",
                image=str(c.image),
                prediction=str(output),
                seconds=math.nan if seconds is None else float(seconds),
            )
            continue
        jobs.append(
            PredictJob(
                case=c.case,
                image=c.image,
                output=output,
                model=_model_ref(config.model),
                device=config.device,
                mode=config.mode,
                fast=config.fast,
                # a partial case (killed mid-write) is ours to replace
                overwrite=config.overwrite or any(present),
                threads=_local_threads(config),
                settings=settings,
                skull_strip=config.skull_strip,
                n4=config.n4,
                brain_mask=targets.get("brain_mask"),
            )
        )
    if stale:
        now = ", ".join(_setting(k, settings[k]) for k in compared)
        raise ValueError(
            f"finished predictions in {str(pred_dir)!r} must have been made with the same "
            f"settings to be skipped ({now}), got {len(stale)} that differ: "
            f"{'; '.join(stale[:3])}; pass --overwrite to redo them or choose another --out"
        )
    return jobs, skipped


def _setting(key: str, value: object) -> str:
    """``fast=True``; a checkpoint digest shortened to 12 characters."""
    if key == "checkpoint_sha256" and isinstance(value, str):
        return f"checkpoint {value[:12]}"
    return f"{key}={value!r}"


def _check_report_dir(report_dir: Path, *, overwrite: bool) -> None:
    from medseg.cohort import REPORT_FILES

    if report_dir.exists() and not report_dir.is_dir():
        raise FileExistsError(
            f"report folder {str(report_dir)!r} must be a folder, got a file; choose another --out"
        )
    foreign = [n for n in REPORT_FILES if (report_dir / n).exists()]
    if foreign and not (report_dir / REPORT_STATE).exists() and not overwrite:
        raise FileExistsError(
            f"report folder {str(report_dir)!r} must hold no report that medseg batch did not "
            f"write, got {foreign} without {REPORT_STATE}; pass --overwrite or choose another "
            "--out"
        )


# --------------------------------------------------------------------------------------
# Report


def cases_table(
    manifest: Manifest,
    cases: Sequence[Case],
    outcomes: Sequence[CaseOutcome],
    label_names: dict[int, str],
) -> pd.DataFrame:
    """The cases table of :func:`medseg.cohort.write_cohort_report`, one row per case.

    Columns: :data:`FIRST_COLUMNS`, ``split`` and the manifest's other columns (as written),
    the :func:`medseg.cohort.statistic_keys`, the :func:`medseg.cohort.tiv_keys` (``tiv_ml``
    and ``<tissue>_fraction_of_tiv``; NaN for a case without a brain mask), and, if any
    case has a label,
    ``dice_<tissue>`` per non-background label and ``weighted_dice`` (NaN where unknown).
    ``status`` is ``"ok"`` or ``"failed"``.
    """
    import pandas as pd

    from medseg.cohort import statistic_keys, tiv_keys

    stat_keys = statistic_keys(label_names) + tiv_keys(label_names)
    labelled = any(c.label is not None for c in cases)
    dice_keys = [f"dice_{n}" for k, n in sorted(label_names.items()) if k != 0] if labelled else []
    dice_keys += ["weighted_dice"] if labelled else []
    meta_keys = ["split", *(cases[0].metadata if cases else {})]
    records = []
    for case, o in zip(cases, outcomes, strict=True):
        rec: dict[str, Any] = {
            "case": case.case,
            "status": "failed" if o.failed else "ok",
            "error": o.error,
            "stage": o.stage,
            "image": str(case.image),
            "prediction": o.prediction,
            "label": str(case.label or ""),
            "seconds": float(o.seconds),
            "split": case.split,
        }
        rec |= {k: case.metadata.get(k, "") for k in meta_keys[1:]}
        rec |= {k: float(o.values.get(k, math.nan)) for k in stat_keys + dice_keys}
        records.append(rec)
    columns = [*FIRST_COLUMNS, *meta_keys, *stat_keys, *dice_keys]
    return pd.DataFrame.from_records(records, columns=columns)


def _write_report(
    config: BatchConfig,
    manifest: Manifest,
    frame: pd.DataFrame,
    report_dir: Path,
    label_names: dict[int, str],
) -> list[Path]:
    """Write the cohort report unless the same report is already there."""
    from medseg import __version__
    from medseg.cohort import REPORT_FILES, write_cohort_report

    title = f"medseg batch: {manifest.path.name}" + (
        f", split {config.split}" if config.split else ""
    )
    names = {str(k): v for k, v in sorted(label_names.items())}
    digest = hashlib.sha256(
        json.dumps([names, config.group_by, title]).encode() + frame.to_csv(index=False).encode()
    ).hexdigest()
    state_path = report_dir / REPORT_STATE
    state = _read_sidecar(state_path)
    if (
        state is not None
        and state.get("cases_sha256") == digest
        and all((report_dir / n).exists() for n in REPORT_FILES)
    ):
        return []
    written = write_cohort_report(
        frame,
        report_dir,
        label_names=label_names,
        group_by=config.group_by,
        overwrite=True,
        title=title,
    )
    resolved = {
        "manifest": str(manifest.path),
        "data_root": str(manifest.data_root),
        "split": config.split,
        "group_by": config.group_by,
        "label_names": names,
        "medseg_version": __version__,
        "cases_sha256": digest,
    }
    with atomic_output(state_path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(resolved, indent=2) + "\n", encoding="utf-8")
    return [*written, state_path]
