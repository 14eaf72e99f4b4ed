"""The worker side of the batch engine (:mod:`medseg.batch`, which re-exports its public names).

The tasks that predict (:func:`predict_task`) and evaluate (:func:`evaluate_task`) one case,
the per-process model cache they share (:func:`worker_model`), a case's ``<case>.json``
sidecar and output paths, and the helpers that give a task its device and torch threads and
turn its failure into a failed :class:`~medseg._batch_jobs.CaseOutcome` with a one-line
error. The tasks are module-level functions: Dask pickles them by reference, and a worker
imports them by name (``medseg._batch_tasks.predict_task``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg._batch_jobs import (
    BRAIN_MASK_SUFFIX,
    PREDICTION_SUFFIX,
    SIDECAR_SUFFIX,
    CaseOutcome,
    EvaluateJob,
    PredictJob,
)
from medseg.io import atomic_output

if TYPE_CHECKING:  # heavy imports stay out of ``medseg --help``
    import torch

    from medseg.checkpoint import Checkpoint

_USER_ERRORS = (ValueError, TypeError, OSError, KeyError)

# Per-process model cache (see the docstring of medseg.batch): one entry, replaced when
# another checkpoint or device is asked for. ``_MODEL_LOADS`` counts builds per key in this
# process.
_MODEL_CACHE: dict[tuple[str, int, int, str], tuple[Checkpoint, torch.nn.Module]] = {}
_MODEL_LOADS: dict[tuple[str, int, int, str], int] = {}
_MODEL_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------
# Worker tasks


def worker_model(model: str, device: str) -> tuple[Checkpoint, torch.nn.Module, int]:
    """This process's network for ``model`` on ``device``, built once and then reused.

    The cache holds one model (a new checkpoint or device replaces it), keyed by the
    checkpoint file's resolved path, size and mtime and by the device.

    Args:
        model: Checkpoint file or built-in model name.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (``"auto"``/``"cuda"`` in a
            local Dask worker on a machine with several GPUs: GPU ``worker number % count``).

    Returns:
        ``(checkpoint, network, loads)``: loads is how often this process has built it.
    """
    from medseg.checkpoint import resolve_checkpoint
    from medseg.predict import load_predictor

    path = resolve_checkpoint(model).resolve()
    stat = path.stat()
    dev = _worker_device(device)
    key = (str(path), stat.st_size, stat.st_mtime_ns, dev)
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE.clear()  # one model per worker
            _MODEL_CACHE[key] = load_predictor([path], device=dev)
            _MODEL_LOADS[key] = _MODEL_LOADS.get(key, 0) + 1
        ckpt, net = _MODEL_CACHE[key]
        return ckpt, net, _MODEL_LOADS[key]


def predict_task(job: PredictJob) -> CaseOutcome:
    """Predict one case on a worker; write its outputs and, on success, its ``<case>.json``.

    Errors of the case are caught and returned as a failed outcome (the caller records it).
    """
    from medseg.predict import predict_case

    outcome = CaseOutcome(job.case, "predicted", image=str(job.image), worker_pid=os.getpid())
    try:
        with _torch_threads(job.threads if job.threads is not None else _worker_threads()):
            ckpt, net, outcome.model_loads = worker_model(job.model, job.device)
            result = predict_case(
                job.image,
                ckpt,
                job.output,
                model=net,
                device=_worker_device(job.device),
                mode=job.mode,
                fast=job.fast,
                confidence=True,
                overwrite=job.overwrite,
                skull_strip=None if job.skull_strip == "auto" else job.skull_strip,
                n4=job.n4,
                brain_mask=job.brain_mask,
            )
    except Exception as err:
        return _failed(outcome, "predict", err, job.image)
    outcome.prediction = str(job.output)
    outcome.seconds = float(result.seconds)
    write_sidecar(job.output, outcome, job.settings)
    return outcome


def evaluate_task(job: EvaluateJob) -> CaseOutcome:
    """Clinical statistics (and Dice for a labelled case) of one prediction, on a worker.

    Errors of the case are caught and returned as a failed outcome (the caller records it).
    """
    outcome = CaseOutcome(
        job.case,
        "evaluated",
        image=str(job.image),
        label=str(job.label or ""),
        seconds=job.seconds,
        worker_pid=os.getpid(),
    )
    try:
        outcome.values = _case_values(job, outcome)
    except Exception as err:
        return _failed(outcome, "evaluate", err, job.image)
    return outcome


def _case_values(job: EvaluateJob, outcome: CaseOutcome) -> dict[str, float]:
    """Tissue statistics (label, confidence maps), TIV (brain mask), Dice (the label)."""
    from medseg.cohort import tissue_statistics, tiv_statistics
    from medseg.evaluation import find_prediction
    from medseg.io import check_same_grid, read_image, read_label
    from medseg.predict import output_paths
    from medseg.report import evaluate_case

    pred_path = find_prediction(job.pred_dir, job.case, image=job.image)
    outcome.prediction = str(pred_path)
    pred = read_label(pred_path)
    conf_path = output_paths(job.image, pred_path, confidence=True, probs=False)["confidence"]
    confidence = None
    if conf_path.exists():
        conf = read_image(conf_path)
        check_same_grid(pred, conf)
        confidence = conf.array[0]  # (1, Z, Y, X) -> (Z, Y, X)
    values = dict(
        tissue_statistics(
            pred.array,
            spacing_mm=pred.geometry.spacing_mm,
            label_names=job.label_names,
            confidence=confidence,
        )
    )
    mask_path = job.pred_dir / f"{job.case}{BRAIN_MASK_SUFFIX}"
    report = job.pred_dir / f"{job.case}_volumes.csv"  # no TIV row: the mask is no brain mask
    has_tiv = not report.exists() or "\nTIV," in report.read_text()
    if mask_path.exists() and has_tiv:
        mask = read_label(mask_path)
        check_same_grid(pred, mask)
        values |= tiv_statistics(
            pred.array,
            mask.array,
            spacing_mm=pred.geometry.spacing_mm,
            label_names=job.label_names,
        )
    if job.label is not None:
        target = read_label(job.label)
        check_same_grid(pred, target)
        try:
            rows, case_values = evaluate_case(
                pred.array,
                target.array,
                label_names=job.label_names,
                spacing_mm=target.geometry.spacing_mm,
                case=job.case,
                distances=False,
            )
        except ValueError as err:  # the core only knows "pred" and "target"
            raise ValueError(f"{err} (pred {str(pred_path)!r}, label {str(job.label)!r})") from err
        for rec in rows[["tissue", "dice"]].to_dict("records"):
            values[f"dice_{rec['tissue']}"] = float(rec["dice"])
        values["weighted_dice"] = float(case_values["weighted_dice"])
    return {k: float(v) for k, v in values.items()}


# --------------------------------------------------------------------------------------
# Sidecars and output paths


def write_sidecar(output: Path, outcome: CaseOutcome, settings: dict[str, Any]) -> Path:
    """Write ``<case>.json`` beside the label map ``output``, atomically.

    An existing sidecar is replaced, unless it already holds the same text (so rerunning a
    case that fails the same way changes no file).
    """
    path = sidecar_path(output)
    data = {
        "case": outcome.case,
        "status": "failed" if outcome.failed else "ok",
        "error": outcome.error,
        "image": outcome.image,
        "seconds": None if math.isnan(outcome.seconds) else outcome.seconds,
        "settings": settings,
    }
    text = json.dumps(data, indent=2) + "\n"
    if _read_text(path) != text:  # the same failure again leaves the file alone
        with atomic_output(path, overwrite=True) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return path


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's contents; None if absent or unreadable (then the case is redone)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def sidecar_path(output: Path) -> Path:
    """``dir/<case>.nii.gz`` -> ``dir/<case>.json``.

    Example:
        >>> sidecar_path(Path("out/IBSR_01.nii.gz")).as_posix()
        'out/IBSR_01.json'
    """
    return output.with_name(output.name[: -len(PREDICTION_SUFFIX)] + SIDECAR_SUFFIX)


def brain_mask_path(output: Path) -> Path:
    """``dir/<case>.nii.gz`` -> ``dir/<case>_brainmask.nii.gz``.

    Example:
        >>> brain_mask_path(Path("out/IBSR_01.nii.gz")).as_posix()
        'out/IBSR_01_brainmask.nii.gz'
    """
    return output.with_name(output.name[: -len(PREDICTION_SUFFIX)] + BRAIN_MASK_SUFFIX)


def volumes_path(output: Path) -> Path:
    """Where :func:`medseg.predict.predict_case` writes the volumes CSV of ``output``.

    Example:
        >>> volumes_path(Path("out/IBSR_01.nii.gz")).as_posix()
        'out/IBSR_01_volumes.csv'
    """
    stem = output.name[: -len(PREDICTION_SUFFIX)]
    stem = stem[: -len("_seg")] if stem.endswith("_seg") else stem  # as predict_case does
    return output.with_name(f"{stem}_volumes.csv")


# --------------------------------------------------------------------------------------
# Task helpers


def _worker_device(device: str) -> str:
    """Resolve ``device`` in this process; local workers on a multi-GPU machine spread out."""
    import torch

    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return "cpu" if device == "auto" else device
    count = torch.cuda.device_count()
    name: object = None
    if count > 1:
        try:
            from distributed import get_worker

            name = get_worker().name
        except (ImportError, ValueError):  # not in a Dask worker
            name = None
    return f"cuda:{name % count}" if isinstance(name, int) else "cuda"


def _worker_threads() -> int | None:
    """Torch threads in a remote Dask worker: its CPUs // its Dask threads; None elsewhere.

    Dask's nanny sets ``OMP_NUM_THREADS=1``, which would leave torch one thread; the CPUs are
    those this process may run on (a SLURM job's allocation), shared by its task threads.
    """
    try:
        from distributed import get_worker

        nthreads = int(get_worker().state.nthreads)
    except (ImportError, ValueError):  # not in a Dask worker
        return None
    return max(1, _cpu_count() // max(1, nthreads))


def _cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch threads (None: unchanged), restoring the old number."""
    import torch

    old = torch.get_num_threads()
    if threads is not None and threads != old:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads is not None and torch.get_num_threads() != old:
            torch.set_num_threads(old)


def _failed(outcome: CaseOutcome, stage: str, err: BaseException, path: Path) -> CaseOutcome:
    outcome.status, outcome.stage = "failed", stage
    outcome.error = _error_line(err, path)
    outcome.traceback = "".join(traceback.format_exception(err))
    return outcome


def _raised_outcome(job: PredictJob | EvaluateJob, err: BaseException) -> CaseOutcome:
    """The outcome of a task that raised instead of returning (e.g. ``KilledWorker``)."""
    outcome = CaseOutcome(job.case, "failed", image=str(job.image))
    if type(err).__name__ == "KilledWorker":  # the message names a random task key
        verb = "predicting" if job.stage == "predict" else "evaluating"
        outcome.stage = job.stage
        outcome.error = (
            f"image {str(job.image)!r}: the worker process died while {verb} it, on every "
            "retry (KilledWorker); it may exhaust the worker's memory or crash a reader"
        )
        return outcome
    return _failed(outcome, job.stage, err, job.image)


def _error_line(err: BaseException, path: Path) -> str:
    text = _one_line(err)
    if not isinstance(err, _USER_ERRORS):
        text = f"{type(err).__name__}: {text}"
    if str(path) not in text:
        text = f"{text} (image {str(path)!r})"
    return text


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
