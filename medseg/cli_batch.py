"""``medseg batch``: segment and report on a whole manifest, on a local or remote Dask cluster.

The commands only parse options into a :class:`medseg.batch.BatchConfig`, call one engine
function and print a progress line per case and a summary; :mod:`medseg.batch` documents
the output layout, resuming, failures and how to run on a cluster. Torch, Dask and pandas
load inside the command bodies, so ``medseg --help`` stays instant. Exit status 1 when a
case failed (after everything else was written) or for a bad argument (nothing written).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from medseg.options import ReassemblyMode, SkullStrip

batch_app = typer.Typer(
    name="batch",
    help="Segment and report on a whole manifest, on a local or remote Dask cluster.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ManifestOption = Annotated[
    Path,
    typer.Option(
        "--manifest",
        help="Manifest CSV (case,image,label,split[,metadata...]), nnU-Net dataset folder, "
        "MSD/MONAI datalist JSON, or a folder of images.",
    ),
]
DataRootOption = Annotated[
    Optional[Path],
    typer.Option("--data-root", help="Root of manifest paths (default: $MEDSEG_DATA_ROOT)."),
]
ModelOption = Annotated[
    str,
    typer.Option("-m", "--model", help="Checkpoint file or built-in model name (2.5D tissue)."),
]
WorkersOption = Annotated[
    Optional[int],
    typer.Option(
        "--workers",
        help="Local Dask worker processes, 1 thread each (default 2; 0: no Dask, this process).",
    ),
]
SchedulerOption = Annotated[
    Optional[str],
    typer.Option("--scheduler", help="Run on an existing Dask cluster, e.g. tcp://10.0.0.5:8786."),
]
ThreadsOption = Annotated[
    Optional[int],
    typer.Option("--threads", help="Torch threads per worker (default: cores // workers)."),
]
DeviceOption = Annotated[
    str, typer.Option("--device", help="auto, cpu, mps, cuda or cuda:N (as the workers see it).")
]
SplitOption = Annotated[
    Optional[str], typer.Option("--split", help="Only cases of this split (train, val, test).")
]
FastOption = Annotated[
    bool, typer.Option("--fast", help="Whole slices instead of overlapping patches.")
]
ModeOption = Annotated[
    Optional[ReassemblyMode],
    typer.Option("--mode", help="Reassembly: vote, mean or gaussian (default: the model's)."),
]
SkullStripOption = Annotated[
    SkullStrip,
    typer.Option(
        "--skull-strip",
        help="Brain models: auto (strip the skull with deepbet only if the image still has "
        "it), always or never.",
    ),
]
N4Option = Annotated[
    bool, typer.Option("--n4", help="Brain models: N4 bias-field correction inside the brain.")
]
GroupByOption = Annotated[
    Optional[str],
    typer.Option("--group-by", help="Manifest column that groups the report, e.g. split."),
]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Redo finished cases; replace a report not written by medseg batch."
    ),
]
TimeoutOption = Annotated[
    float,
    typer.Option("--connect-timeout-s", help="Seconds to wait for --scheduler to answer."),
]
DebugOption = Annotated[
    bool, typer.Option("--debug", help="Show tracebacks (of failed cases too).")
]


@batch_app.command("predict")
def predict_cmd(
    manifest: ManifestOption,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Prediction folder: <case>.nii.gz, _confidence, .json (brain models: also "
            "_brainmask, _volumes.csv).",
        ),
    ],
    data_root: DataRootOption = None,
    model: ModelOption = "brain-tissue",
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    threads: ThreadsOption = None,
    device: DeviceOption = "auto",
    split: SplitOption = None,
    fast: FastOption = False,
    mode: ModeOption = None,
    skull_strip: SkullStripOption = "auto",
    n4: N4Option = False,
    overwrite: OverwriteOption = False,
    connect_timeout_s: TimeoutOption = 10.0,
    debug: DebugOption = False,
) -> None:
    """Segment every case of a manifest (label map + confidence map); skip finished ones."""
    from medseg.batch import BatchConfig, predict_manifest

    config = BatchConfig(
        manifest,
        data_root,
        model=model,
        workers=workers,
        scheduler=scheduler,
        threads=threads,
        device=device,
        split=split,
        fast=fast,
        mode=mode,
        skull_strip=skull_strip,
        n4=n4,
        overwrite=overwrite,
        connect_timeout_s=connect_timeout_s,
    )
    _finish(
        _with_bars("predict", config, lambda show: predict_manifest(config, out, on_case=show)),
        debug=debug,
    )


@batch_app.command("evaluate")
def evaluate_cmd(
    manifest: ManifestOption,
    pred_dir: Annotated[
        Path,
        typer.Option(
            "--pred-dir", help="Folder of <case>.nii.gz (+ _confidence, _brainmask for the TIV)."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Report folder: cases.csv, report.md, report.html.")
    ],
    data_root: DataRootOption = None,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    split: SplitOption = None,
    group_by: GroupByOption = None,
    overwrite: OverwriteOption = False,
    connect_timeout_s: TimeoutOption = 10.0,
    debug: DebugOption = False,
) -> None:
    """Tissue volumes, TIV, GM fraction, agreement and Dice per case; write the cohort report."""
    from medseg.batch import BatchConfig, evaluate_predictions

    config = BatchConfig(
        manifest,
        data_root,
        workers=workers,
        scheduler=scheduler,
        split=split,
        group_by=group_by,
        overwrite=overwrite,
        connect_timeout_s=connect_timeout_s,
    )
    result = _with_bars(
        "evaluate", config, lambda show: evaluate_predictions(config, pred_dir, out, on_case=show)
    )
    _finish(result, debug=debug)


@batch_app.command("run")
def run_cmd(
    manifest: ManifestOption,
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: predictions/ and report/ inside.")
    ],
    data_root: DataRootOption = None,
    model: ModelOption = "brain-tissue",
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    threads: ThreadsOption = None,
    device: DeviceOption = "auto",
    split: SplitOption = None,
    fast: FastOption = False,
    mode: ModeOption = None,
    skull_strip: SkullStripOption = "auto",
    n4: N4Option = False,
    group_by: GroupByOption = None,
    overwrite: OverwriteOption = False,
    connect_timeout_s: TimeoutOption = 10.0,
    debug: DebugOption = False,
) -> None:
    """Predict and evaluate every case, then write the cohort report (batch predict + evaluate)."""
    from medseg.batch import BatchConfig, run_batch

    config = BatchConfig(
        manifest,
        data_root,
        model=model,
        workers=workers,
        scheduler=scheduler,
        threads=threads,
        device=device,
        split=split,
        fast=fast,
        mode=mode,
        skull_strip=skull_strip,
        n4=n4,
        group_by=group_by,
        overwrite=overwrite,
        connect_timeout_s=connect_timeout_s,
    )
    _finish(
        _with_bars("run", config, lambda show: run_batch(config, out, on_case=show)), debug=debug
    )


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    width = None if sys.stdout.isatty() else 200
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def _with_bars(command: str, config: Any, work: Any) -> Any:
    """Run ``work(on_case)`` under a progress bar over the cases (and stages, for ``run``)."""
    from medseg._progress import Bars
    from medseg.batch import selected_cases

    stages = 2 if command == "run" else 1
    with Bars(len(selected_cases(config)) * stages, f"batch {command}", unit="steps") as bars:
        return work(_progress(command, bars.advance))


def _progress(command: str, advance: Any = None) -> Any:
    """The on_case callback: one rich line per case and stage, failures in red."""
    from medseg.batch import format_outcome

    console = _console()
    count = {"predict": 0, "evaluate": 0}

    def show(outcome) -> None:
        stage = "predict" if outcome.status in ("predicted", "skipped") else "evaluate"
        if outcome.failed:
            stage = outcome.stage or stage
        count[stage] += 1
        prefix = f"[{stage} {count[stage]}]" if command == "run" else f"[{count[stage]}]"
        style = "red" if outcome.failed else ("dim" if outcome.status == "skipped" else None)
        console.print(f"{prefix} {format_outcome(outcome)}", style=style, markup=False)
        if advance is not None:
            advance()

    return show


def _finish(result, *, debug: bool) -> None:
    """Print the summary (and failures on stderr); exit 1 when a case failed."""
    console = _console()
    for path in result.written:
        console.print(f"wrote {path}", markup=False)
    console.print(result.summary(), markup=False)
    if result.failures:
        err = _console(stderr=True)
        err.print(f"{result.num_failed} case(s) failed:", markup=False)
        for outcome in result.failures:
            err.print(f"  {outcome.case} ({outcome.stage}): {outcome.error}", markup=False)
            if debug and outcome.traceback:
                err.print(outcome.traceback, markup=False)
        raise typer.Exit(1)
