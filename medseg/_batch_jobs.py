"""The values of the batch engine (:mod:`medseg.batch`, which re-exports every name here).

Its constants (output file names, the leading columns of the cases table), the settings of
a run (:class:`BatchConfig`, validated on creation), the jobs sent to the workers
(:class:`PredictJob`, :class:`EvaluateJob`: plain picklable values) and the
:class:`CaseOutcome` each task returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from medseg import options
from medseg._device import check_device_name
from medseg.preprocess import SKULL_STRIP_MODES

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
        fast: Whole slices instead of overlapping patches (:func:`medseg.predict.predict_array`).
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
