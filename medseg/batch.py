"""Batch segmentation of a whole manifest on a Dask cluster: predict, evaluate, report.

Three stages, each usable alone (``medseg batch predict|evaluate|run``):

* :func:`predict_manifest` segments every case of a manifest with
  :func:`medseg.predict.predict_case` into one folder: ``<case>.nii.gz`` (labels, uint8),
  ``<case>_confidence.nii.gz`` (vote agreement, float32, always written) and ``<case>.json``
  (status, error, seconds and the prediction settings: checkpoint SHA-256, ``fast``,
  ``mode``, ``skull_strip``, ``n4``), all written atomically. A brain model (one trained on
  skull-stripped T1, :func:`medseg.predict.uses_brain_extraction`, e.g. ``brain-tissue``)
  also writes ``<case>_brainmask.nii.gz`` (uint8, 1 = brain: the TIV) and
  ``<case>_volumes.csv`` (:func:`medseg.volumes.write_volume_report`).
* :func:`evaluate_predictions` computes, per case, the clinical statistics of
  :func:`medseg.cohort.tissue_statistics` (GM/WM/CSF volumes in mL, brain volume, GM fraction,
  mean vote agreement inside the brain as a quality-control flag) from the label and
  confidence maps, the TIV and each tissue's fraction of it
  (:func:`medseg.cohort.tiv_statistics`) where ``<case>_brainmask.nii.gz`` exists, and,
  for labelled cases, the per-tissue Dice and weighted Dice of
  :func:`medseg.report.evaluate_case`; then :func:`medseg.cohort.write_cohort_report` writes
  ``cases.csv``, ``report.md`` and ``report.html``.
* :func:`run_batch` does both: predictions in ``<out>/predictions``, report in ``<out>/report``.

**Resumable and safe.** A case is finished when its label map, confidence map (and, for
a brain model, its brain mask and volumes CSV) and a ``<case>.json`` with status ``"ok"``
exist; finished cases are skipped (``overwrite=True`` redoes them), and a case with only
some of these files (a run killed mid-case) is redone. Skipping a case made with other
settings (another checkpoint, ``fast``, ``mode``, ``skull_strip`` or ``n4``) is an error,
not a silent mix. A failing case -- unreadable file, wrong shape, a worker process
that died (Dask raises ``KilledWorker`` once ``distributed.scheduler.allowed-failures``
workers died running it) -- becomes a failed :class:`CaseOutcome` with a one-line error
naming the file; the other cases finish, and :attr:`BatchResult.num_failed` says so (the
CLI exits 1 after writing everything). The report is rewritten only when its content would
change (a digest of the cases table is kept in ``batch_report.json``), so a rerun that has
nothing new to do writes nothing.

**Where it runs.** ``workers=N`` (default 2) starts an embedded
:class:`distributed.LocalCluster` of N worker processes with one Dask thread each, and
torch uses ``max(1, cpus // N)`` threads in each (``threads`` overrides). ``workers=0`` runs
the same tasks in this process, without Dask. ``scheduler="tcp://host:port"`` runs them on
an existing cluster, with no code change; its workers must have medseg installed and see
the manifest's files and the output folder at the same paths (a shared filesystem). There
each task uses ``max(1, cpus // nthreads)`` torch threads (cpus: those the worker process
may run on; nthreads: its Dask threads), so run one worker process per job or node, with
``--nthreads 1`` for CPU inference, or pass ``threads``. E.g. on SLURM with dask-jobqueue::

    from dask_jobqueue import SLURMCluster
    # one worker process with one Dask thread per job; torch gets the job's 8 CPUs
    cluster = SLURMCluster(cores=1, processes=1, job_cpu=8, memory="32GB",
                           walltime="02:00:00", job_extra_directives=["--gres=gpu:1"])
    cluster.scale(jobs=4)             # 4 jobs: 4 workers, 4 models, 4 cases at a time
    print(cluster.scheduler_address)  # tcp://10.0.0.5:8786
    # then: medseg batch run --manifest M --out D --scheduler tcp://10.0.0.5:8786 --device cuda

(or ``dask scheduler`` on one node and ``dask worker tcp://...:8786 --nworkers 1
--nthreads 1`` on each of the others). Tasks queue until workers join.

**One model per worker.** Each worker process keeps one network in a per-process cache
keyed by checkpoint file (path, size, mtime) and device (:func:`worker_model`): it is built
once per worker and then reused for every case, not rebuilt per case. A worker with a GPU
holds its model on it; with several GPUs on one machine, local workers are spread over them
by worker number. Each :class:`CaseOutcome` carries the worker's process id and how often
that process built the model, so the property can be checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medseg import options
from medseg._device import check_device_name
from medseg.io import atomic_output
from medseg.manifest import Case, Manifest, load_manifest
from medseg.preprocess import SKULL_STRIP_MODES
from medseg.typing import PathLike

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # heavy imports stay out of ``medseg --help``
    import pandas as pd
    import torch

    from medseg.checkpoint import Checkpoint

DEFAULT_MODEL = "brain-tissue"
DEFAULT_WORKERS = 2
PREDICTION_SUFFIX = ".nii.gz"
SIDECAR_SUFFIX = ".json"
BRAIN_MASK_SUFFIX = "_brainmask.nii.gz"
PREDICTIONS_DIR = "predictions"
REPORT_DIR = "report"
REPORT_STATE = "batch_report.json"
MODES = options.REASSEMBLY_MODES
FIRST_COLUMNS = ("case", "status", "error", "stage", "image", "prediction", "label", "seconds")
"""The leading columns of the cases table (the contract of :mod:`medseg.cohort`)."""

_USER_ERRORS = (ValueError, TypeError, OSError, KeyError)
# the settings a finished case must share to be skipped (in <case>.json "settings")
_COMPARED_SETTINGS = ("checkpoint_sha256", "fast", "mode", "skull_strip", "n4")

# Per-process model cache (see the module docstring): one entry, replaced when another
# checkpoint or device is asked for. ``_MODEL_LOADS`` counts builds per key in this process.
_MODEL_CACHE: dict[tuple[str, int, int, str], tuple[Checkpoint, torch.nn.Module]] = {}
_MODEL_LOADS: dict[tuple[str, int, int, str], int] = {}
_MODEL_LOCK = threading.Lock()


@dataclass(frozen=True)
class BatchConfig:
    """How to run a batch; validated on creation.

    Attributes:
        manifest: Manifest CSV (``data_manifests/``).
        data_root: Root of the manifest's relative paths (default ``$MEDSEG_DATA_ROOT``).
        model: Checkpoint file or built-in model name (a 2.5D tissue model).
        workers: Local Dask worker processes; 0 runs in this process without Dask. None:
            :data:`DEFAULT_WORKERS` (must be None with ``scheduler``).
        scheduler: Address of an existing Dask scheduler, e.g. ``"tcp://10.0.0.5:8786"``.
        threads: Torch threads per task; None: ``max(1, cpus // workers)`` locally,
            ``max(1, cpus // nthreads)`` in a remote worker, unchanged in this process.
        device: ``"auto"``, ``"cpu"``, ``"mps"``, ``"cuda"`` or ``"cuda:N"``, as seen by the
            workers.
        split: Only cases of this split (``"train"``, ``"val"``, ``"test"``); None: all.
        fast: Whole slices instead of overlapping patches (:func:`medseg.predict.predict_volume`).
        mode: Reassembly ``"vote"``, ``"mean"`` or ``"gaussian"``; None: the checkpoint's.
        skull_strip: Brain models: ``"auto"`` (strip the skull with deepbet only if the
            image still has it), ``"always"`` or ``"never"``
            (:func:`medseg.preprocess.brain_mask`).
        n4: N4 bias-field correction inside the brain mask before predicting.
        group_by: Manifest column that the report groups cases by (e.g. ``"split"``).
        overwrite: Redo finished cases; replace a report folder not written by a batch.
        connect_timeout_s: Seconds to wait for ``scheduler`` to answer.
    """

    manifest: Path
    data_root: Path | None = None
    model: str = DEFAULT_MODEL
    workers: int | None = None
    scheduler: str | None = None
    threads: int | None = None
    device: str = "auto"
    split: str | None = None
    fast: bool = False
    mode: str | None = None
    skull_strip: str = "auto"
    n4: bool = False
    group_by: str | None = None
    overwrite: bool = False
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "manifest", Path(self.manifest))
        if self.data_root is not None:
            object.__setattr__(self, "data_root", Path(self.data_root))
        w = self.workers
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 0):
            raise ValueError(
                f"--workers must be an integer >= 0 (0: no Dask, run in this process), got {w!r}"
            )
        if self.scheduler is not None:
            if not isinstance(self.scheduler, str) or not self.scheduler.strip():
                raise ValueError(
                    f"--scheduler must be an address like tcp://host:8786, got {self.scheduler!r}"
                )
            if w is not None:
                raise ValueError(
                    f"--workers must be omitted with --scheduler (the cluster has its own "
                    f"workers), got --workers {w} and --scheduler {self.scheduler!r}"
                )
        t = self.threads
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
            raise ValueError(f"--threads must be an integer >= 1, got {t!r}")
        check_device_name(self.device)
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"--mode must be vote, mean or gaussian, got {self.mode!r}")
        if self.skull_strip not in SKULL_STRIP_MODES:
            raise ValueError(
                f"--skull-strip must be one of {', '.join(SKULL_STRIP_MODES)}, got "
                f"{self.skull_strip!r}"
            )
        if not self.connect_timeout_s > 0:
            raise ValueError(
                f"connect_timeout_s must be > 0 seconds, got {self.connect_timeout_s!r}"
            )

    @property
    def num_workers(self) -> int | None:
        """Local worker processes (None on a remote cluster)."""
        if self.scheduler is not None:
            return None
        return DEFAULT_WORKERS if self.workers is None else self.workers


@dataclass
class CaseOutcome:
    """What happened to one case in one stage.

    Attributes:
        case: Case id.
        status: ``"predicted"``, ``"skipped"`` (finished earlier), ``"evaluated"`` or
            ``"failed"``.
        stage: Where it failed, ``"predict"`` or ``"evaluate"``; ``""`` when it did not.
        error: One line naming the file; ``""`` when it did not fail.
        image, prediction, label: Absolute paths (``""`` when there is none).
        seconds: Prediction time in s (read, predict, write; NaN when unknown).
        values: Evaluate stage: the :func:`medseg.cohort.tissue_statistics` keys, the
            :func:`medseg.cohort.tiv_statistics` keys when the case has a brain mask, and
            ``dice_<tissue>`` and ``weighted_dice`` for labelled cases.
        worker_pid: Process that ran the task (None when no task ran).
        model_loads: How often that process had built this model when the task ended.
        traceback: The failure's traceback, for ``--debug``; ``""`` otherwise.
    """

    case: str
    status: str
    stage: str = ""
    error: str = ""
    image: str = ""
    prediction: str = ""
    label: str = ""
    seconds: float = math.nan
    values: dict[str, float] = field(default_factory=dict)
    worker_pid: int | None = None
    model_loads: int | None = None
    traceback: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass
class BatchResult:
    """What a batch did.

    Attributes:
        predicted: Predict-stage outcomes in manifest order (empty for ``evaluate``).
        evaluated: Evaluate-stage outcomes in manifest order (empty for ``predict``); a case
            that failed to predict appears here failed with stage ``"predict"``.
        cases: The cases table given to the report (None for ``predict``).
        pred_dir: Folder of the predictions.
        report_dir: Folder of the report (None for ``predict``).
        written: Report files written by this run (empty when the report was unchanged).
    """

    predicted: list[CaseOutcome] = field(default_factory=list)
    evaluated: list[CaseOutcome] = field(default_factory=list)
    cases: pd.DataFrame | None = None
    pred_dir: Path | None = None
    report_dir: Path | None = None
    written: list[Path] = field(default_factory=list)

    @property
    def outcomes(self) -> list[CaseOutcome]:
        """The final outcome per case: evaluated if that stage ran, else predicted."""
        return self.evaluated or self.predicted

    @property
    def failures(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def num_failed(self) -> int:
        return len(self.failures)

    @property
    def num_predicted(self) -> int:
        return sum(o.status == "predicted" for o in self.predicted)

    @property
    def num_skipped(self) -> int:
        return sum(o.status == "skipped" for o in self.predicted)

    @property
    def num_evaluated(self) -> int:
        return sum(o.status == "evaluated" for o in self.evaluated)

    def summary(self) -> str:
        """One line, e.g. ``"8 predicted, 0 skipped, 1 failed; report: out/report"``."""
        parts = []
        if self.predicted:
            parts += [f"{self.num_predicted} predicted", f"{self.num_skipped} skipped"]
        else:
            parts.append(f"{self.num_evaluated} evaluated")
        parts.append(f"{self.num_failed} failed")
        text = ", ".join(parts)
        if self.report_dir is not None:
            state = "" if self.written else " (unchanged)"
            return f"{text}; report: {self.report_dir / 'report.html'}{state}"
        return f"{text}; predictions: {self.pred_dir}"


@dataclass(frozen=True)
class PredictJob:
    """One predict task, sent to a worker (plain picklable values).

    ``brain_mask`` is where the brain mask goes (None: not written, a non-brain model).
    """

    case: str
    image: Path
    output: Path
    model: str
    device: str
    mode: str | None
    fast: bool
    overwrite: bool
    threads: int | None
    settings: dict[str, Any]
    stage: str = "predict"
    skull_strip: str = "auto"
    n4: bool = False
    brain_mask: Path | None = None


@dataclass(frozen=True)
class EvaluateJob:
    """One evaluate task, sent to a worker (plain picklable values)."""

    case: str
    image: Path
    label: Path | None
    pred_dir: Path
    label_names: dict[int, str]
    seconds: float
    stage: str = "evaluate"


JobT = TypeVar("JobT", PredictJob, EvaluateJob)


# --------------------------------------------------------------------------------------
# Public entry points


def predict_manifest(
    config: BatchConfig,
    out_dir: PathLike,
    *,
    on_case: Callable[[CaseOutcome], None] | None = None,
) -> BatchResult:
    """Segment every case of a manifest (module docstring: layout, resuming, clusters).

    Args:
        config: The batch settings.
        out_dir: Prediction folder (created).
        on_case: Called with each case's outcome as it arrives (skipped cases first).

    Returns:
        :class:`BatchResult` with ``predicted`` filled.

    Raises:
        FileNotFoundError, ValueError, OSError: bad arguments, found before anything is
            written (missing manifest, bad checkpoint, unknown split, unreachable scheduler,
            a finished case made with other settings).
    """
    manifest, cases = _load_cases(config)
    ckpt, settings = _load_predict_model(config, manifest)
    pred_dir = Path(out_dir)
    jobs, skipped = _plan_predictions(config, ckpt, cases, pred_dir, settings)
    # every case finished: no cluster to start
    with open_client(config) if jobs else contextlib.nullcontext() as client:
        pred_dir.mkdir(parents=True, exist_ok=True)
        predicted = _predict(jobs, skipped, cases, client, on_case)
    return BatchResult(predicted=predicted, pred_dir=pred_dir)


def evaluate_predictions(
    config: BatchConfig,
    pred_dir: PathLike,
    report_dir: PathLike,
    *,
    on_case: Callable[[CaseOutcome], None] | None = None,
) -> BatchResult:
    """Compute clinical statistics and Dice per case and write the cohort report.

    Args:
        config: The batch settings (``model``, ``fast``, ``mode``, ``skull_strip``, ``n4``
            are not used).
        pred_dir: Folder of ``<case>.nii.gz`` and ``<case>_confidence.nii.gz`` (from
            :func:`predict_manifest`, or any ``<case><suffix>`` label maps; without a
            confidence map, ``mean_agreement`` is NaN) and, for brain models,
            ``<case>_brainmask.nii.gz`` (without it, ``tiv_ml`` and the
            ``<tissue>_fraction_of_tiv`` columns are NaN).
        report_dir: Report folder (created).
        on_case: Called with each case's outcome as it arrives.

    Returns:
        :class:`BatchResult` with ``evaluated``, ``cases`` and ``written`` filled.
    """
    manifest, cases = _load_cases(config)
    label_names = _require_label_names(manifest)
    pred_dir, report_dir = Path(pred_dir), Path(report_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(
            f"--pred-dir {str(pred_dir)!r} must be a folder of predictions, got nothing there"
        )
    _check_report_dir(report_dir, overwrite=config.overwrite)
    with open_client(config) as client:
        evaluated = _evaluate(config, cases, pred_dir, label_names, client, on_case, None)
    frame = cases_table(manifest, cases, evaluated, label_names)
    report_dir.mkdir(parents=True, exist_ok=True)
    written = _write_report(config, manifest, frame, report_dir, label_names)
    return BatchResult(
        evaluated=evaluated, cases=frame, pred_dir=pred_dir, report_dir=report_dir, written=written
    )


def run_batch(
    config: BatchConfig,
    out_dir: PathLike,
    *,
    on_case: Callable[[CaseOutcome], None] | None = None,
) -> BatchResult:
    """Predict, evaluate and report: ``<out_dir>/predictions`` and ``<out_dir>/report``.

    One cluster serves both stages. A case that fails to predict is reported as failed
    (stage ``"predict"``) and not evaluated. Arguments and errors as
    :func:`predict_manifest`; ``on_case`` is called once per case and stage.
    """
    manifest, cases = _load_cases(config)
    ckpt, settings = _load_predict_model(config, manifest)
    label_names = manifest.label_names or dict(ckpt.label_names)
    out = Path(out_dir)
    pred_dir, report_dir = out / PREDICTIONS_DIR, out / REPORT_DIR
    jobs, skipped = _plan_predictions(config, ckpt, cases, pred_dir, settings)
    _check_report_dir(report_dir, overwrite=config.overwrite)
    with open_client(config) as client:
        pred_dir.mkdir(parents=True, exist_ok=True)
        predicted = _predict(jobs, skipped, cases, client, on_case)
        evaluated = _evaluate(config, cases, pred_dir, label_names, client, on_case, predicted)
    frame = cases_table(manifest, cases, evaluated, label_names)
    report_dir.mkdir(parents=True, exist_ok=True)
    written = _write_report(config, manifest, frame, report_dir, label_names)
    return BatchResult(
        predicted=predicted,
        evaluated=evaluated,
        cases=frame,
        pred_dir=pred_dir,
        report_dir=report_dir,
        written=written,
    )


@contextlib.contextmanager
def open_client(config: BatchConfig) -> Iterator[Any]:
    """Yield a Dask client for ``config`` (None for ``workers=0``); close what it opened.

    ``scheduler`` connects to an existing cluster (left running afterwards); otherwise an
    embedded :class:`distributed.LocalCluster` of ``workers`` processes, one Dask thread
    each, is started and shut down.

    Raises:
        ValueError: a malformed ``scheduler`` address. OSError: no scheduler answered.
    """
    if config.scheduler is not None:
        from distributed import Client

        try:
            client = Client(
                config.scheduler, timeout=config.connect_timeout_s, set_as_default=False
            )
        except ValueError as err:
            raise ValueError(
                f"--scheduler must be an address like tcp://host:8786, got "
                f"{config.scheduler!r} ({_one_line(err)})"
            ) from err
        except OSError as err:  # TimeoutError included
            raise OSError(
                f"--scheduler {config.scheduler!r} must be a reachable Dask scheduler, got no "
                f"answer within {config.connect_timeout_s:g} s ({_one_line(err)}); check the "
                "address, or start one (dask scheduler; dask worker ADDRESS)"
            ) from err
        logger.info("Dask dashboard: %s", client.dashboard_link)
        try:
            yield client
        finally:
            client.close()
        return
    workers = config.num_workers
    if not workers:
        yield None
        return
    from distributed import Client

    cluster = start_local_cluster(workers)
    try:
        client = Client(cluster, set_as_default=False)
        logger.info("Dask dashboard: %s", client.dashboard_link)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def start_local_cluster(workers: int) -> Any:
    """The embedded :class:`distributed.LocalCluster`: ``workers`` processes, 1 thread each.

    Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_`` in its workers to return freed memory to
    the OS at once; that also turns off glibc's adaptive mmap threshold, so every large
    array of a case is mapped and zeroed afresh (about 2.5 s of system time per IBSR case
    with ``--fast``, measured on 2 cores). The batch workers run without it.
    """
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )


def map_cases(
    fn: Callable[[JobT], CaseOutcome],
    jobs: Sequence[JobT],
    *,
    client: Any = None,
    on_done: Callable[[CaseOutcome], None] | None = None,
) -> list[CaseOutcome]:
    """Run ``fn(job)`` for every job, in this process (``client`` None) or as Dask tasks.

    ``fn`` records a case's own errors in its outcome. A task that raises instead -- above
    all ``KilledWorker``, when every worker that ran it died -- gives a failed outcome
    naming the job's image; the other jobs still run.

    Args:
        fn: A module-level function (Dask pickles it by reference) or a closure.
        jobs: Objects with ``case``, ``image`` and ``stage`` attributes.
        client: A :class:`distributed.Client`, or None.
        on_done: Called with each outcome as it arrives (completion order).

    Returns:
        The outcomes in job order.
    """
    results: list[CaseOutcome | None] = [None] * len(jobs)

    def done(i: int, outcome: CaseOutcome) -> None:
        results[i] = outcome
        if on_done is not None:
            on_done(outcome)

    if client is None:
        for i, job in enumerate(jobs):
            try:
                outcome = fn(job)
            except Exception as err:  # as a task that raises: recorded, the others run
                outcome = _raised_outcome(job, err)
            done(i, outcome)
    elif jobs:
        from distributed import as_completed

        token = os.urandom(4).hex()
        futures = [
            client.submit(fn, job, key=f"{job.stage}-{job.case}-{token}", pure=False, priority=-i)
            for i, job in enumerate(jobs)
        ]
        index = {future.key: i for i, future in enumerate(futures)}
        for future in as_completed(futures, loop=client.loop):
            i = index[future.key]
            try:
                outcome = future.result()
            except Exception as err:  # KilledWorker, lost scheduler, ...
                outcome = _raised_outcome(jobs[i], err)
            future.release()
            done(i, outcome)
    assert all(r is not None for r in results)  # every job was done above
    return [r for r in results if r is not None]


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
    from medseg.predict import load_model

    path = resolve_checkpoint(model).resolve()
    stat = path.stat()
    dev = _worker_device(device)
    key = (str(path), stat.st_size, stat.st_mtime_ns, dev)
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE.clear()  # one model per worker
            _MODEL_CACHE[key] = load_model(path, device=dev)
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


def format_outcome(outcome: CaseOutcome) -> str:
    """One progress line for a case, e.g. ``"IBSR_01: predicted in 5.8 s"``."""
    if outcome.failed:
        return f"{outcome.case}: FAILED ({outcome.stage}): {outcome.error}"
    if outcome.status == "skipped":
        return f"{outcome.case}: skipped (finished earlier)"
    if outcome.status == "predicted":
        return f"{outcome.case}: predicted in {outcome.seconds:.1f} s"
    v = outcome.values
    parts = [
        f"{k[:-3]} {v[k]:.1f} mL"
        for k in v
        if k.endswith("_ml") and k not in ("brain_ml", "icv_ml", "tiv_ml") and math.isfinite(v[k])
    ]
    if math.isfinite(v.get("tiv_ml", math.nan)):
        parts.append(f"TIV {v['tiv_ml']:.1f} mL")
    for key, name in (("gm_fraction", "GM fraction"), ("mean_agreement", "agreement")):
        if math.isfinite(v.get(key, math.nan)):
            parts.append(f"{name} {v[key]:.3f}")
    if math.isfinite(v.get("weighted_dice", math.nan)):
        parts.append(f"weighted Dice {v['weighted_dice']:.3f}")
    return f"{outcome.case}: " + ", ".join(parts)


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
    if str(ckpt.inference.get("mode")) == "tile" or int(ckpt.patch.get("num_slices", 1)) < 2:
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
        "mode": None if config.fast else config.mode or str(ckpt.inference.get("mode", "vote")),
        "skull_strip": _skull_strip_setting(config.skull_strip, ckpt),
        "n4": bool(config.n4),
        "label_names": {str(k): v for k, v in sorted(names.items())},
    }
    return ckpt, settings


def _skull_strip_setting(mode: str, ckpt: Checkpoint) -> str:
    """The skull stripping a case gets: ``"auto"`` means ``"never"`` for a non-brain model."""
    from medseg.predict import uses_brain_extraction

    return "never" if mode == "auto" and not uses_brain_extraction(ckpt) else mode


def _writes_brain_mask(config: BatchConfig, ckpt: Checkpoint) -> bool:
    """Whether predict_case finds a brain mask (:func:`medseg.predict.segment_volume`)."""
    from medseg.predict import uses_brain_extraction

    return uses_brain_extraction(ckpt) or config.skull_strip == "always" or config.n4


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
    """Torch threads per task (module docstring)."""
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
    """Jobs for unfinished cases, and outcomes for finished ones (module docstring)."""
    from medseg.predict import uses_brain_extraction

    writes_mask = _writes_brain_mask(config, ckpt)
    # predict_case writes <case>_volumes.csv for brain models (report=True)
    writes_volumes = uses_brain_extraction(ckpt)
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
# Stages


def _predict(
    jobs: list[PredictJob],
    skipped: dict[str, CaseOutcome],
    cases: Sequence[Case],
    client: Any,
    on_case: Callable[[CaseOutcome], None] | None,
) -> list[CaseOutcome]:
    for outcome in skipped.values():
        if on_case is not None:
            on_case(outcome)

    def done(outcome: CaseOutcome) -> None:
        if outcome.failed:  # recorded so that evaluate alone reports why
            job = next(j for j in jobs if j.case == outcome.case)
            write_sidecar(job.output, outcome, job.settings)
        if on_case is not None:
            on_case(outcome)

    ran = {o.case: o for o in map_cases(predict_task, jobs, client=client, on_done=done)}
    return [skipped[c.case] if c.case in skipped else ran[c.case] for c in cases]


def _evaluate(
    config: BatchConfig,
    cases: Sequence[Case],
    pred_dir: Path,
    label_names: dict[int, str],
    client: Any,
    on_case: Callable[[CaseOutcome], None] | None,
    predicted: Sequence[CaseOutcome] | None,
) -> list[CaseOutcome]:
    """Evaluate every case; a failed prediction (this run, or a sidecar's) stays failed."""
    failed: dict[str, CaseOutcome] = {}
    jobs = []
    for i, c in enumerate(cases):
        seconds = math.nan
        if predicted is not None:
            prior: CaseOutcome | None = predicted[i]
        else:
            prior = _outcome_from_sidecar(c, pred_dir)
        if prior is not None and prior.failed:
            failed[c.case] = dataclasses.replace(prior, label=str(c.label or ""), values={})
            if predicted is None and on_case is not None:
                on_case(failed[c.case])
            continue
        if prior is not None:
            seconds = prior.seconds
        jobs.append(
            EvaluateJob(
                case=c.case,
                image=c.image,
                label=c.label,
                pred_dir=pred_dir,
                label_names=label_names,
                seconds=seconds,
            )
        )
    ran = {o.case: o for o in map_cases(evaluate_task, jobs, client=client, on_done=on_case)}
    return [failed[c.case] if c.case in failed else ran[c.case] for c in cases]


def _outcome_from_sidecar(case: Case, pred_dir: Path) -> CaseOutcome | None:
    sidecar = _read_sidecar(pred_dir / f"{case.case}{SIDECAR_SUFFIX}")
    if sidecar is None:
        return None
    seconds = sidecar.get("seconds")
    ok = sidecar.get("status") == "ok"
    return CaseOutcome(
        case.case,
        "predicted" if ok else "failed",
        stage="" if ok else "predict",
        error="" if ok else str(sidecar.get("error", "")),
        image=str(case.image),
        seconds=math.nan if seconds is None else float(seconds),
    )


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's contents; None if absent or unreadable (then the case is redone)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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
