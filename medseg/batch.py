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
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg._batch_jobs import (  # noqa: F401  (public names re-exported from _batch_jobs)
    BRAIN_MASK_SUFFIX,
    DEFAULT_MODEL,
    DEFAULT_WORKERS,
    FIRST_COLUMNS,
    MODES,
    PREDICTION_SUFFIX,
    PREDICTIONS_DIR,
    REPORT_DIR,
    REPORT_STATE,
    SIDECAR_SUFFIX,
    BatchConfig,
    CaseOutcome,
    EvaluateJob,
    JobT,
    PredictJob,
)
from medseg._batch_plan import (  # noqa: F401  (public names re-exported from _batch_plan)
    _check_report_dir,
    _load_cases,
    _load_predict_model,
    _plan_predictions,
    _require_label_names,
    _write_report,
    cases_table,
    selected_cases,
)
from medseg._batch_tasks import (  # noqa: F401  (public names re-exported from _batch_tasks)
    _one_line,
    _raised_outcome,
    _read_sidecar,
    brain_mask_path,
    evaluate_task,
    predict_task,
    sidecar_path,
    volumes_path,
    worker_model,
    write_sidecar,
)
from medseg.manifest import Case
from medseg.typing import PathLike

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # heavy imports stay out of ``medseg --help``
    import pandas as pd


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
    _check_inputs_fit_the_model(config, cases)
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
    _check_inputs_fit_the_model(config, cases)
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


def _check_inputs_fit_the_model(config: BatchConfig, cases: Sequence[Case]) -> None:
    """2D images need a 2D model: with the default model, said before any work."""
    if config.model == DEFAULT_MODEL:
        from medseg.predict import check_default_model_inputs

        check_default_model_inputs(
            [c.image for c in cases],
            fix="medseg batch segments 3D volumes; run medseg predict -m nuclei on 2D images",
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
