"""The ``medseg`` command line (Typer + rich).

Heavy imports (torch, numpy, nibabel, pandas) happen inside the command bodies so
that ``medseg --help`` answers instantly. One handler, :func:`main`, turns expected
errors into a one-line ``Error: ...`` message and exit status 1; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from medseg.options import (
    CombineMode,
    LabelFormat,
    ObjectMethod,
    ObjectMetric,
    OutputFormat,
    Precision,
    ReassemblyMode,
    SkullStrip,
    TtaMode,
)


def _readable_list_arguments() -> None:
    """Typer shows a list argument's type as ``<list[Path]>``; show ``<path>`` instead (the
    argument's name already ends in ``...``).

    Only the help text of ``TyperArgument`` changes (recent Typer); parsing is untouched.
    """
    from typer import core

    argument = getattr(core, "TyperArgument", None)
    original = getattr(argument, "display_type_rich", None)
    if argument is None or original is None or getattr(original, "medseg", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> Any:
        text = original(self, ctx)
        if isinstance(text, str) and text.startswith("<list[") and text.endswith("]>"):
            return f"<{text[len('<list[') : -2].lower()}>"
        return text

    display_type_rich.medseg = True  # type: ignore[attr-defined]
    argument.display_type_rich = display_type_rich


_readable_list_arguments()

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
"""``-h`` as well as ``--help``, on every command."""

app = typer.Typer(
    name="medseg",
    help="Segment 3D brain MRI and microscopy images; evaluate segmentations.",
    no_args_is_help=True,
    context_settings=HELP_OPTIONS,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Errors that are the user's input, reported in one line. Anything else is a bug
# and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, OSError, KeyError)
_STATE = {"debug": False}  # set by main(): --debug anywhere on the command line


def _print_version(value: bool) -> None:
    if value:
        from medseg import __version__

        typer.echo(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback when a command fails.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose", "-v", count=True, help="More messages from the library (-vv: debug)."
        ),
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")
    ] = False,
) -> None:
    """Segment 3D brain MRI and microscopy images; evaluate segmentations."""
    from medseg._logging import configure

    configure(verbosity=-1 if quiet else verbose)


@app.command("version")
def version_cmd() -> None:
    """Print the medseg version."""
    from medseg import __version__

    typer.echo(__version__)


@app.command("train")
def train_cmd(
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML/JSON run configuration.")
    ] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override one key, e.g. --set schedule.epochs=5 (repeatable).",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in out_dir from its last.pt.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start again in an out_dir that holds a run.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    no_weight_map: Annotated[
        bool,
        typer.Option(
            "--no-weight-map",
            help="Ablation: train with plain cross-entropy instead of the U-Net weight map.",
        ),
    ] = False,
    extend_epochs: Annotated[
        int,
        typer.Option(
            "--extend-epochs",
            metavar="N",
            help="With --resume: train N epochs more than the run planned (recorded in "
            "config.json and log.csv). Other changes to a resumed run are refused.",
        ),
    ] = 0,
) -> None:
    """Train a model: 2.5D patches, augmentation, whole-volume validation, checkpoints."""
    from medseg.config import load_config
    from medseg.train import is_main_process, train

    if resume and overwrite:
        raise ValueError("--resume and --overwrite must not be combined, got both")
    overrides = list(set_ or [])
    resolved = load_config(config, overrides)
    if no_weight_map:
        if not resolved.loss.weight_map:
            raise ValueError(
                "--no-weight-map needs a config that trains with a weight map "
                f"(loss.weight_map true), got loss.name {resolved.loss.name!r} without one"
            )
        resolved = load_config(config, overrides + ["loss.weight_map=false", "loss.name=ce"])
    from medseg._logging import progress_wanted

    best = train(
        resolved,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet and progress_wanted(),
        extend_epochs=extend_epochs,
    )
    if is_main_process():  # under torchrun, one line rather than one per rank
        typer.echo(f"best checkpoint: {best}")


@app.command("predict")
def predict_cmd(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="INPUT...", help="Image files or folders of images (NIfTI, MHA, ...)."
        ),
    ],
    model: Annotated[
        Optional[list[str]],
        typer.Option(
            "-m",
            "--model",
            metavar="MODEL",
            help="Checkpoint file or built-in model name: brain-tissue (default, 3D T1), "
            "brain-tissue-unetpp (3D T1, more accurate, slower), nuclei, em-membrane (2D "
            "microscopy). Repeat to ensemble several checkpoints.",
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option("-o", "--output", help="Output file (one input) or folder. Default: ./"),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, mps or cuda[:N].")] = "auto",
    mode: Annotated[
        Optional[ReassemblyMode],
        typer.Option("--mode", help="Reassembly: vote, mean or gaussian (default: the model's)."),
    ] = None,
    fast: Annotated[
        bool, typer.Option("--fast", help="Whole slices instead of overlapping patches.")
    ] = False,
    confidence: Annotated[
        bool, typer.Option("--confidence", help="Also write the vote-agreement map.")
    ] = False,
    probs: Annotated[
        bool, typer.Option("--probs", help="Also write the class probabilities.")
    ] = False,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", help="Patches per forward pass.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs.")
    ] = False,
    objects: Annotated[
        Optional[ObjectMethod],
        typer.Option(
            "--objects",
            help="2D models: components, watershed, boundary (a three-class boundary "
            "model's seeded watershed) or seeded (watershed on the cell probability, EM); "
            "default: the model's post-processing.",
        ),
    ] = None,
    min_size: Annotated[
        Optional[int],
        typer.Option("--min-size", help="2D models: drop objects smaller than this (pixels)."),
    ] = None,
    tta: Annotated[
        TtaMode,
        typer.Option(
            "--tta",
            help="Test-time augmentation: none, flip (mirror the in-plane axes flipped in "
            "training) or flip-all (both in-plane axes).",
        ),
    ] = "none",
    ensemble: Annotated[
        CombineMode,
        typer.Option("--ensemble", help="How several -m models / TTA views combine: mean, vote."),
    ] = "mean",
    crf: Annotated[
        bool,
        typer.Option("--crf", help="Refine with the fully connected CRF (the model's tuning)."),
    ] = False,
    cleanup: Annotated[
        bool,
        typer.Option(
            "--cleanup/--no-cleanup",
            help="Apply the connected-component clean-up chosen on validation data (if any).",
        ),
    ] = True,
    skull_strip: Annotated[
        SkullStrip,
        typer.Option(
            "--skull-strip",
            help="Brain models: auto (strip the skull with deepbet only if the image still "
            "has it), always or never.",
        ),
    ] = "auto",
    brain_mask: Annotated[
        Optional[Path],
        typer.Option(
            "--brain-mask",
            help="Brain models: also write the brain mask (uint8) here (one input) or, for "
            "several inputs, into this folder as <stem>_brainmask.nii.gz.",
        ),
    ] = None,
    n4: Annotated[
        bool,
        typer.Option("--n4", help="Brain models: N4 bias-field correction inside the brain."),
    ] = False,
    series: Annotated[
        Optional[str],
        typer.Option(
            "--series",
            help="DICOM folder with several series: the SeriesInstanceUID or SeriesNumber "
            "to segment (medseg info DIR lists them).",
        ),
    ] = None,
    overlay: Annotated[
        bool,
        typer.Option(
            "--overlay",
            help="3D models: also write <stem>_overlay.png (three views: tissues, brain mask).",
        ),
    ] = False,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--output-format",
            help="auto: the label map's format follows -o's suffix (NIfTI by default); "
            "dicom-seg: a DICOM Segmentation of a DICOM series input, <name>_seg.dcm, linked "
            "to the scan (needs pip install 'medseg[dicom]').",
        ),
    ] = "auto",
    table: Annotated[
        bool,
        typer.Option(
            "--table",
            help="2D object models: also write <stem>_objects.csv (id, area in px and in "
            "µm² when the file records a pixel size, centroid, mean intensity).",
        ),
    ] = False,
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            help="3D models: auto (bfloat16 where the CPU or GPU computes it natively, about "
            "2x faster; else float32), fp32 or bf16.",
        ),
    ] = "auto",
) -> None:
    """Segment volumes with a trained model; write label maps in the input geometry.

    Brain models take raw scanner T1s (DICOM folders, NIfTI, MGZ): the skull is removed
    when present, the image is turned and resampled to the model's grid and the labels
    come back on the input's grid, with a <stem>_volumes.csv of tissue volumes and TIV.
    """
    from medseg.ensemble import COMBINE_MODES, TTA_MODES
    from medseg.io import is_dicom_folder
    from medseg.predict import load_predictor, predict_case

    if tta not in TTA_MODES:
        raise ValueError(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    if ensemble not in COMBINE_MODES:
        raise ValueError(f"--ensemble must be one of {', '.join(COMBINE_MODES)}, got {ensemble!r}")
    if mode is not None and mode not in ("vote", "mean", "gaussian"):
        raise ValueError(f"--mode must be vote, mean or gaussian, got {mode!r}")
    from medseg.instances import OBJECT_METHODS

    if objects is not None and objects not in OBJECT_METHODS:
        raise ValueError(f"--objects must be one of {', '.join(OBJECT_METHODS)}, got {objects!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if min_size is not None and min_size < 0:
        raise ValueError(f"--min-size must be >= 0 pixels, got {min_size}")
    from medseg.predict import PRECISIONS
    from medseg.preprocess import SKULL_STRIP_MODES

    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")

    if skull_strip not in SKULL_STRIP_MODES:
        raise ValueError(
            f"--skull-strip must be one of {', '.join(SKULL_STRIP_MODES)}, got {skull_strip!r}"
        )
    overrides = {k: v for k, v in (("method", objects), ("min_size", min_size)) if v is not None}
    from medseg.bids import find_t1w, is_bids_root
    from medseg.discover import input_files

    files: list[Path] = []
    bids: dict[Path, Any] = {}  # image -> its BidsImage, for a BIDS dataset input
    for item in inputs:
        if item.is_dir() and not is_dicom_folder(item) and is_bids_root(item):
            if len(inputs) > 1 or output is None or output.suffix:
                raise ValueError(
                    f"a BIDS dataset input ({str(item)!r}) must come alone, with -o a folder "
                    f"(e.g. {str(item / 'derivatives' / 'medseg')!r}), got "
                    f"{len(inputs)} input(s) and -o {str(output) if output else 'missing'}"
                )
            from medseg.bids import check_derivatives_folder

            check_derivatives_folder(output, overwrite=overwrite)
            bids_root = item
            for image in find_t1w(item):
                bids[image.path] = image
                files.append(image.path)
        else:
            files.extend(input_files(item))
    out = output if output is not None else Path(".")
    if len(files) > 1 and out.suffix:
        raise ValueError(
            f"--output must be a folder for {len(files)} inputs, got the file name {str(out)!r}"
        )
    if len(files) > 1 or not out.suffix:
        out.mkdir(parents=True, exist_ok=True)
    if model is None:
        from medseg.io import read_volume_info

        flat = []
        for path in files:
            try:
                if path.is_file() and read_volume_info(path).spatial_shape[0] == 1:
                    flat.append(path)
            except (ValueError, OSError):
                continue  # reported with the other failures below
        if flat and len(flat) == len(files):  # in a mixed batch, each 2D input fails alone
            raise ValueError(
                f"-m/--model must name a 2D model for the 2D image {str(flat[0])!r}, got none "
                "(the default brain-tissue model segments 3D T1 volumes); use -m nuclei "
                "or -m em-membrane"
            )
    ckpt, net = load_predictor(model or ["brain-tissue"], device=device, tta=tta, combine=ensemble)
    if brain_mask is not None and len(files) > 1 and brain_mask.suffix:
        raise ValueError(
            f"--brain-mask must be a folder for {len(files)} inputs, got the file name "
            f"{str(brain_mask)!r}"
        )
    from medseg._progress import Bars

    failures = []
    bids_rows = []
    with Bars(len(files), "predict", unit="images") as bars:
        for path in files:
            mask_path = brain_mask
            if brain_mask is not None and (len(files) > 1 or not brain_mask.suffix):
                brain_mask.mkdir(parents=True, exist_ok=True)
                mask_path = brain_mask / f"{_stem(path)}_brainmask.nii.gz"
            target = out
            if path in bids:
                target = _bids_targets(bids[path], out, overwrite)
            try:
                result = predict_case(
                    path,
                    ckpt,
                    target,
                    model=net,
                    device=device,
                    mode=mode,
                    fast=fast,
                    confidence=confidence,
                    probs=probs,
                    batch_size=batch_size,
                    overwrite=overwrite,
                    objects=overrides,
                    crf=crf,
                    cleanup=cleanup,
                    skull_strip=skull_strip if skull_strip != "auto" else None,
                    n4=n4,
                    brain_mask=mask_path,
                    series=series,
                    overlay=overlay,
                    precision=precision,
                    table=table,
                    progress=bars.item(path.name),
                    report=path not in bids,
                    output_format=output_format,
                )
                if path in bids:
                    bids_rows.append(_bids_outputs(bids[path], out, result, model, overwrite))
            except Exception as exc:  # one input's failure, whatever it is, stops only it
                if len(files) == 1 or _STATE["debug"]:
                    raise
                from medseg._errors import one_line

                failures.append((path, one_line(exc)))  # MemoryError, torch errors, ...
                bars.advance()
                continue
            if result.num_objects is not None:
                n = result.num_objects
                summary = f"{n} object" if n == 1 else f"{n} objects"
            else:
                summary = ", ".join(f"{k} {v:.1f} mL" for k, v in result.volumes_ml.items())
                if result.tiv_ml:
                    summary = ", ".join(
                        f"{k} {v:.1f} mL ({100 * v / result.tiv_ml:.1f}% of TIV)"
                        for k, v in result.volumes_ml.items()
                    )
                    summary += f"; brain {result.brain_ml:.1f} mL, TIV {result.tiv_ml:.1f} mL"
            bars.print(f"{path}: {summary} ({result.seconds:.1f} s)")
            for step in (result.skull_strip, result.resampled):
                if step:
                    bars.print(f"  {step}")
            for written in result.written:
                bars.print(f"  wrote {written}")
            bars.advance()
    if bids:
        from medseg.bids import update_group_volumes, write_dataset_files

        name = ", ".join(model or ["brain-tissue"])
        files_written = write_dataset_files(
            out, bids_root, label_names=ckpt.label_names, model=name, overwrite=overwrite
        )
        if bids_rows:
            files_written.append(update_group_volumes(out, bids_rows))
        for path in files_written:
            typer.echo(f"wrote {path}")
    if failures:
        err = _error_console()
        err.print(f"{len(failures)} of {len(files)} input(s) failed:", markup=False)
        for path, message in failures:
            err.print(f"  {path}: {message}", markup=False)
        raise typer.Exit(1)


def _bids_targets(image, out: Path, overwrite: bool) -> Path:
    """The label map of a BIDS image in the derivatives folder (and its checked siblings)."""
    from medseg.io import check_output_path

    target = image.derivative(out, "dseg", ".nii.gz")
    target.parent.mkdir(parents=True, exist_ok=True)
    for sibling in (
        image.derivative(out, "dseg", ".json"),
        image.derivative(out, "volumes", ".tsv"),
    ):
        check_output_path(sibling, overwrite=overwrite)  # before any work on this image
    return target


def _bids_outputs(image, out: Path, result, model, overwrite: bool) -> dict:
    """Write a BIDS image's ``_dseg.json`` and ``_volumes.tsv``; its ``volumes.tsv`` row."""
    from medseg.bids import group_row, write_sidecar, write_subject_volumes

    name = ", ".join(model or ["brain-tissue"])
    sidecar = image.derivative(out, "dseg", ".json")
    table = image.derivative(out, "volumes", ".tsv")
    write_sidecar(sidecar, image, model=name, overwrite=overwrite)
    write_subject_volumes(table, result.volumes_ml, result.tiv_ml, overwrite=overwrite)
    result.written += [sidecar, table]
    return group_row(image, result.volumes_ml, result.tiv_ml)


@app.command("export")
def export_cmd(
    output: Annotated[
        Path, typer.Argument(help="Output file: .onnx (ONNX) or .pt/.ts (TorchScript).")
    ],
    model: Annotated[
        str,
        typer.Option("-m", "--model", help="Checkpoint file or built-in model name."),
    ] = "brain-tissue",
    format: Annotated[
        Optional[str],
        typer.Option("--format", help="onnx or torchscript (default: from the suffix)."),
    ] = None,
    opset: Annotated[
        Optional[int], typer.Option("--opset", help="ONNX opset (default: the exporter's).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing file.")
    ] = False,
) -> None:
    """Export a model to ONNX or TorchScript, checked against PyTorch after writing."""
    from medseg.checkpoint import load_checkpoint
    from medseg.export import export_model

    result = export_model(
        load_checkpoint(model), output, format=format, overwrite=overwrite, opset=opset
    )
    typer.echo(result.summary())


@app.command("tune-postprocess")
def tune_postprocess_cmd(
    output: Annotated[Path, typer.Argument(help="The tuned checkpoint to write (.pt).")],
    manifest: Annotated[
        Path,
        typer.Option(
            "--manifest",
            help="Manifest CSV (or nnU-Net folder, datalist JSON) with labelled validation cases.",
        ),
    ],
    model: Annotated[
        str, typer.Option("-m", "--model", help="Checkpoint file or built-in model name.")
    ] = "brain-tissue",
    data_root: Annotated[
        Optional[Path],
        typer.Option("--data-root", help="Root of manifest paths (default: $MEDSEG_DATA_ROOT)."),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="The validation split.")] = "val",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, mps or cuda[:N].")] = "auto",
    fast: Annotated[
        bool, typer.Option("--fast", help="Predict whole slices instead of voting patches.")
    ] = False,
    crf: Annotated[
        bool, typer.Option("--crf/--no-crf", help="Grid-search the CRF's appearance kernel.")
    ] = True,
    cleanup: Annotated[
        bool,
        typer.Option("--cleanup/--no-cleanup", help="Choose the largest-component clean-up."),
    ] = True,
    w_appearance: Annotated[
        Optional[list[float]],
        typer.Option("--w-appearance", metavar="W1", help="CRF w1 values to try (repeatable)."),
    ] = None,
    sigma_alpha_mm: Annotated[
        Optional[list[float]],
        typer.Option(
            "--sigma-alpha-mm", metavar="MM", help="CRF position sigma values to try (mm)."
        ),
    ] = None,
    sigma_beta: Annotated[
        Optional[list[float]],
        typer.Option(
            "--sigma-beta", metavar="SIGMA", help="CRF intensity sigma values (normalised units)."
        ),
    ] = None,
    objects: Annotated[
        bool,
        typer.Option(
            "--objects/--no-objects",
            help="2D object models: choose components or the seeded watershed (and its "
            "parameters).",
        ),
    ] = True,
    objects_metric: Annotated[
        ObjectMetric,
        typer.Option("--objects-metric", help="Choose objects by rand_error (EM) or ap (nuclei)."),
    ] = "rand_error",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output.")
    ] = False,
) -> None:
    """Choose CRF parameters, the clean-up or the object method on validation cases; write a
    tuned checkpoint."""
    from medseg.checkpoint import load_checkpoint
    from medseg.tuning import crf_table_markdown, objects_table_markdown, tune_postprocess

    grid = {
        k: tuple(v)
        for k, v in (
            ("w_appearance", w_appearance),
            ("sigma_alpha_mm", sigma_alpha_mm),
            ("sigma_beta", sigma_beta),
        )
        if v
    }
    result = tune_postprocess(
        load_checkpoint(model),
        manifest,
        output,
        data_root=data_root,
        split=split,
        device=device,
        fast=fast,
        crf=crf,
        cleanup=cleanup,
        crf_grid=grid,
        objects=objects,
        objects_metric=objects_metric,
        overwrite=overwrite,
        progress=True,
    )
    typer.echo(f"validation cases ({split}): {', '.join(result.cases)}")
    if result.objects_table is not None:
        tried = len(result.objects_table)
        typer.echo(f"objects ({tried} settings, best first by {objects_metric}):")
        typer.echo(objects_table_markdown(result.objects_table))
    if result.crf_table is not None:
        typer.echo("CRF grid search (best first; the first row is without CRF):")
        typer.echo(crf_table_markdown(result.crf_table))
        table = result.crf_table
        gain = float(table.loc[table["crf"], "delta_dice"].iloc[0])
        if gain < 0:
            typer.echo(
                f"the best CRF setting lowered the mean validation Dice by {-gain:.4f}: "
                "predict without --crf for this model (the parameters are stored anyway)"
            )
    if result.cleanup is not None:
        typer.echo("largest-component clean-up (kept if the mean Dice does not drop):")
        for c in result.cleanup.candidates:
            verdict = "kept" if c.applied else "rejected"
            typer.echo(
                f"  {c.target}: mean Dice {c.dice_before:.4f} -> {c.dice_after:.4f} ({verdict})"
            )
    typer.echo(f"wrote {result.output}")
    if result.failures:  # tuned on the others; the exit status says it was not all
        err = _error_console()
        err.print(
            f"{len(result.failures)} validation case(s) failed and were left out:", markup=False
        )
        for case, reason in result.failures:
            err.print(f"  {case}: {reason}", markup=False)
        raise typer.Exit(1)


@app.command("models")
def models_cmd() -> None:
    """List the built-in models and what input they expect."""
    from medseg.checkpoint import BUILTIN_MODELS, load_checkpoint

    for name in sorted(BUILTIN_MODELS):
        try:
            ckpt = load_checkpoint(name)
        except FileNotFoundError:
            typer.echo(f"{name}: not installed")
            continue
        labels = ", ".join(f"{k}={v}" for k, v in sorted(ckpt.label_names.items()) if k)
        p = ckpt.patch
        norm = f"{ckpt.normalization.get('method')} normalisation"
        if ckpt.inference.get("mode") == "tile":
            if ckpt.normalization.get("colour") == "grey":
                channels = "any-stain (grey, RGB or H&E; made grey with a dark background)"
            elif ckpt.image_channels == 3:
                channels = "RGB (grey is repeated)"
            else:
                channels = "greyscale"
            pp = ckpt.extra.get("postprocess") or {}
            typer.echo(
                f"{name}: {ckpt.model_name} {ckpt.model_kwargs}; input: 2D {channels} PNG/TIFF "
                f"image (or TIFF stack: predicted slice by slice, objects joined in 3D), any "
                f"size, overlap-tile with {ckpt.inference.get('tile_size')} px output tiles; "
                f"labels: {labels}; "
                f"objects: {pp.get('method', 'components')}; {norm} over the whole image"
            )
            continue
        line = (
            f"{name}: {ckpt.model_name} {ckpt.model_kwargs}; input: {ckpt.image_channels}-channel "
            f"3D volume, {p['size']}x{p['size']} patches on {p['num_slices']} slices "
            f"({p['slice_axis']}); labels: {labels}; {norm}"
        )
        line += _brain_input_text(ckpt)
        typer.echo(line)


def _brain_input_text(ckpt) -> str:
    """What a 3D model expects of its input and how its labels are defined (``models``)."""
    from medseg.predict import model_grid, uses_brain_extraction

    text = ""
    if uses_brain_extraction(ckpt):
        text += (
            "; input requirements: a T1-weighted adult head (DICOM folder, NIfTI, MGZ, ...), "
            "raw or skull-stripped: the skull is removed with deepbet when present "
            "(--skull-strip auto)"
        )
    grid = model_grid(ckpt)
    if grid is not None:
        low, high = grid.spacing_range_mm
        span = " x ".join(
            f"{lo:.3g}" if abs(lo - hi) < 1e-6 else f"{lo:.3g}-{hi:.3g}"
            for lo, hi in zip(low, high, strict=True)
        )
        text += (
            f"; trained on {grid.orientation or 'mixed'}-oriented voxels of {span} mm (z, y, x): "
            "other orientations are turned and other spacings resampled, and the labels come "
            "back on the input's grid"
        )
    note = (ckpt.extra.get("input") or {}).get("labels_note")
    if note:
        text += f"; {note}"
    return text


@app.command("evaluate")
def evaluate_cmd(
    pred: Annotated[
        Optional[Path],
        typer.Argument(help="Predicted label map, instance map or mask (any supported format)."),
    ] = None,
    label: Annotated[
        Optional[Path], typer.Argument(help="Reference label map with the same grid.")
    ] = None,
    manifest: Annotated[
        Optional[Path],
        typer.Option(
            "--manifest",
            help="Manifest CSV, nnU-Net folder, datalist JSON or image folder: evaluate every "
            "case that has a label.",
        ),
    ] = None,
    pred_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--pred-dir",
            help="With --manifest: folder holding <case>.nii.gz etc. (object label formats: "
            "<case>_instances.png first, else <case>.png).",
        ),
    ] = None,
    data_root: Annotated[
        Optional[Path],
        typer.Option("--data-root", help="Root of manifest paths (default: $MEDSEG_DATA_ROOT)."),
    ] = None,
    split: Annotated[
        Optional[str], typer.Option("--split", help="With --manifest: only cases of this split.")
    ] = None,
    labels: Annotated[
        Optional[str],
        typer.Option(
            "--labels", help='Label names, e.g. "1=CSF,2=GM,3=WM" (default: manifest sidecar).'
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "-o",
            "--output",
            help="Report CSV; a .md (and for classes a _cases.csv) is written beside.",
        ),
    ] = None,
    tolerance_mm: Annotated[
        float, typer.Option("--tolerance-mm", help="Boundary F1 tolerance in mm.")
    ] = 2.0,
    distances: Annotated[
        bool,
        typer.Option("--distances/--no-distances", help="Compute HD95, ASSD and boundary F1."),
    ] = True,
    label_format: Annotated[
        Optional[LabelFormat],
        typer.Option(
            "--label-format",
            help="How LABEL encodes the truth: classes (tissue metrics; default), instances "
            "(0 bg, one id per object) or binary (objects = components of --foreground-value); "
            "instances/binary give object metrics. With --manifest the sidecar decides.",
        ),
    ] = None,
    foreground_value: Annotated[
        Optional[int],
        typer.Option(
            "--foreground-value",
            help="With --label-format binary: LABEL's foreground value, e.g. 255 (ISBI 2012).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing report files.")
    ] = False,
) -> None:
    """Per-tissue Dice, IoU, HD95, BF and volumes, or object metrics (AP, Rand error, splits)."""
    from medseg import evaluation

    formats = ("classes", "instances", "binary")
    if label_format is not None and label_format not in formats:
        raise ValueError(
            f"--label-format must be classes, instances or binary, got {label_format!r}"
        )
    if manifest is not None:
        if pred is not None or label is not None:
            raise ValueError(
                "PRED and LABEL must be omitted with --manifest, got "
                f"{[str(p) for p in (pred, label) if p is not None]}"
            )
        if pred_dir is None:
            raise ValueError("--pred-dir must be given with --manifest, got nothing")
        result = evaluation.evaluate_manifest(
            manifest,
            pred_dir,
            data_root=data_root,
            split=split,
            labels=labels,
            distances=distances,
            tolerance_mm=tolerance_mm,
            label_format=label_format,
            foreground_value=foreground_value,
            output=output,
            overwrite=overwrite,
        )
    else:
        if pred is None or label is None:
            raise ValueError(
                "PRED and LABEL must both be given (or use --manifest with --pred-dir), "
                f"got PRED={pred} LABEL={label}"
            )
        result = evaluation.evaluate_files(
            pred,
            label,
            labels=labels,
            distances=distances,
            tolerance_mm=tolerance_mm,
            label_format=label_format or "classes",
            foreground_value=foreground_value,
            output=output,
            overwrite=overwrite,
        )
    _print_result(result)
    if result.failures:
        raise typer.Exit(1)


def _stem(path: Path) -> str:
    """A file's name without its image suffix (``t1.nii.gz`` -> ``t1``), or a folder's name."""
    from medseg.predict import split_suffix

    return split_suffix(path.name)[0]


def _fmt(value, digits: int = 4) -> str:
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _print_result(result) -> None:
    """Print per-tissue rows, case-level values, the summary and failures with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    rows = result.rows
    if result.is_objects:
        _print_objects(result, console)
    elif len(rows):
        table = Table(title="Per-tissue metrics", title_justify="left")
        cols = ["case", "tissue", "label", "dice", "iou", "precision", "recall", "hd95_mm"]
        cols += ["bf_score", "volume_ml", "target_volume_ml"]
        headers = {"precision": "prec", "hd95_mm": "hd95 mm", "bf_score": "BF"}
        headers |= {"volume_ml": "vol mL", "target_volume_ml": "ref mL"}
        for col in cols:
            justify: Literal["left", "right"] = "left" if col in ("case", "tissue") else "right"
            table.add_column(headers.get(col, col), justify=justify)
        for rec in rows[cols].to_dict("records"):
            digits = {"volume_ml": 2, "target_volume_ml": 2, "hd95_mm": 2}
            table.add_row(*(_fmt(rec[c], digits.get(c, 4)) for c in cols))
        console.print(table)
        case_table = Table(title="Case-level metrics", title_justify="left")
        case_cols = ["case", "accuracy", "mean_iou", "fw_iou", "mean_class_accuracy"]
        case_cols += ["weighted_dice"]
        case_headers = {"mean_class_accuracy": "mean acc", "weighted_dice": "wt. Dice"}
        for col in case_cols:
            justify = "left" if col == "case" else "right"  # type: ignore[assignment]
            case_table.add_column(case_headers.get(col, col), justify=justify)
        for values in result.cases:
            case_table.add_row(*(_fmt(values[c]) for c in case_cols))
        console.print(case_table)
        if len(result.cases) == 1:
            values = result.cases[0]
            cm_table = Table(
                title="Confusion matrix (rows: reference, columns: prediction)",
                title_justify="left",
            )
            cm_table.add_column("label")
            for lab in values["confusion_labels"]:
                cm_table.add_column(str(lab), justify="right")
            for lab, counts in zip(values["confusion_labels"], values["confusion"], strict=True):
                cm_table.add_row(str(lab), *(str(int(c)) for c in counts))
            console.print(cm_table)
        else:
            summary = result.summary
            sum_table = Table(
                title=f"Mean ± std over {len(result.cases)} cases (NaN cases)", title_justify="left"
            )
            metrics = ["dice", "iou", "precision", "recall", "hd95_mm", "bf_score", "volume_ml"]
            sum_table.add_column("tissue")
            for m in metrics:
                sum_table.add_column(m, justify="right")
            for rec in summary.to_dict("records"):
                cells = [
                    f"{_fmt(rec[m + '_mean'], 3)} ± {_fmt(rec[m + '_std'], 3)} "
                    f"({rec[m + '_n_nan']})"
                    for m in metrics
                ]
                sum_table.add_row(str(rec["tissue"]), *cells)
            console.print(sum_table)
    for path in result.written:
        console.print(f"wrote {path}")
    if result.failures:
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        err.print(f"{len(result.failures)} case(s) failed:", markup=False)
        for case, message in result.failures:
            err.print(f"  {case}: {message}", markup=False)


def _print_objects(result, console) -> None:
    """Print the object metrics per case and, for several cases, their mean and pooled split."""
    from rich.table import Table

    if not len(result.rows):
        return
    kind = "instance map" if result.label_format == "instances" else "binary mask components"
    table = Table(title=f"Object metrics (reference: {kind})", title_justify="left")
    cols = ["case", "num_pred", "num_target", "pixel_iou", "dice", "bf_score", "pixel_error"]
    cols += ["rand_error", "v_rand", "v_info", "ap", "ap_50", "f1_at_05", "split_rate"]
    headers = {"num_pred": "# pred", "num_target": "# ref", "pixel_iou": "pixel IoU"}
    headers |= {
        "dice": "Dice",
        "bf_score": "BF",
        "pixel_error": "pixel err",
        "rand_error": "Rand err",
        "v_rand": "V_Rand",
        "v_info": "V_Info",
    }
    headers |= {"ap": "AP", "ap_50": "AP@0.5", "f1_at_05": "F1@0.5", "split_rate": "split"}
    table.add_column("case", overflow="fold")  # long ids (DSB2018 hashes) wrap, never cut
    for col in cols[1:]:
        table.add_column(headers.get(col, col), justify="right")
    for rec in result.rows.to_dict("records"):
        cells = [_fmt(rec[c]) for c in cols[:-1]]
        split = f"{rec['touching_split']}/{rec['touching_pairs']}"
        table.add_row(*cells, f"{_fmt(rec['split_rate'], 3)} ({split})")
    if len(result.rows) > 1:
        s = result.summary.to_dict("records")[0]
        table.add_section()
        cells = [f"mean of {s['n_cases']}", "", ""]  # the totals are printed below
        cells += [_fmt(s[f"{c}_mean"]) for c in cols[3:-1]]
        cells.append(f"{_fmt(s['split_rate_mean'], 3)} ({s['split_rate_n_nan']} NaN)")
        table.add_row(*cells)
    console.print(table)
    if len(result.rows) > 1:
        s = result.summary.to_dict("records")[0]
        line = (
            f"pooled split rate: {s['touching_split']}/{s['touching_pairs']} touching pairs = "
            f"{_fmt(s['split_rate_pooled'], 3)}; objects: {s['num_pred']} predicted, "
            f"{s['num_target']} in the reference"
        )
        nans = [f"{c} {s[c + '_n_nan']}" for c in cols[3:] if s[c + "_n_nan"]]
        if nans:
            line += f"; means skip NaN cases ({', '.join(nans)})"
        console.print(line)


@app.command("validate")
def validate_cmd(
    manifest: Annotated[
        Path, typer.Argument(help="Manifest CSV, nnU-Net folder or datalist JSON to check.")
    ],
    data_root: Annotated[
        Optional[Path],
        typer.Option("--data-root", help="Root of manifest paths (default: $MEDSEG_DATA_ROOT)."),
    ] = None,
    check_labels: Annotated[
        bool,
        typer.Option("--labels/--no-labels", help="Also read label maps to check their values."),
    ] = True,
) -> None:
    """Check a manifest: files, image/label grids and label values; list every problem."""
    from medseg.manifest import load_valid_manifest

    # schema and file problems together, as one list (the rows with schema problems are
    # not opened): the checks that train, evaluate and batch make when they load it
    loaded = load_valid_manifest(manifest, data_root=data_root, check_labels=check_labels)
    typer.echo(f"{manifest}: {len(loaded.cases)} cases OK (data root {loaded.data_root})")


@app.command("info")
def info_cmd(
    path: Annotated[Path, typer.Argument(help="Image or label file (or DICOM folder).")],
    series: Annotated[
        Optional[str],
        typer.Option(
            "--series",
            help="DICOM folder with several series: the one to show, by SeriesInstanceUID "
            "or SeriesNumber (without it, the series are listed).",
        ),
    ] = None,
) -> None:
    """Show an image's shape (C, Z, Y, X), spacing, orientation and intensity range."""
    import numpy as np

    from medseg.io import is_dicom_folder, list_dicom_series, read_image, read_volume_info

    if series is None and path.is_dir() and is_dicom_folder(path):
        found = list_dicom_series(path)
        if len(found) > 1:
            _print_dicom_series(path, found)
            return
    vol = read_image(path, series=series)
    arr = vol.array
    geo = vol.geometry
    typer.echo(f"file:        {path}")
    typer.echo(f"shape:       {tuple(arr.shape)}  (C, Z, Y, X)")
    if path.is_file():  # header only; a DICOM folder is never a time series
        num_timepoints = read_volume_info(path).num_timepoints
        if num_timepoints > 1:
            typer.echo(f"time points: {num_timepoints}  (a 4D time series; read as C)")
    typer.echo(f"spacing_mm:  {tuple(round(float(s), 6) for s in geo.spacing_mm)}  (z, y, x)")
    typer.echo(f"orientation: {_orientation(geo)}")
    typer.echo(f"axial axis:  {_axial_axis_name(geo)}")
    typer.echo(f"range:       {float(np.min(arr)):.6g} .. {float(np.max(arr)):.6g}")


def _print_dicom_series(path: Path, found) -> None:
    """List a DICOM folder's series (``medseg info DIR`` without ``--series``)."""
    typer.echo(f"folder:      {path}")
    typer.echo(f"series:      {len(found)} DICOM series; show one with --series UID|NUMBER")
    for s in found:
        size = f"{s.rows} x {s.columns}" if s.rows and s.columns else "? x ?"
        number = "-" if s.number is None else str(s.number)
        typer.echo(
            f"  {number:>6}  {s.description!r}  {s.modality or '?'}, {s.num_files} files "
            f"of {size}, uid {s.uid}"
        )


def _axial_axis_name(geometry) -> str:
    from medseg.io import axial_axis

    axis = axial_axis(geometry)
    return f"{axis} ({'ZYX'[axis]})"


_AXIS_NAMES = {
    "R": "right",
    "L": "left",
    "A": "anterior",
    "P": "posterior",
    "S": "superior",
    "I": "inferior",
}


def _orientation(geometry) -> str:
    """``RAS  (array X, Y, Z increase towards right, anterior, superior)``.

    The codes are nibabel's ``aff2axcodes`` of the RAS affine: for each voxel axis x, y, z
    (array X, Y, Z), the world direction it comes nearest to as its index grows.
    """
    import numpy as np
    from nibabel.orientations import aff2axcodes

    codes = "".join(code or "?" for code in aff2axcodes(geometry.affine))
    towards = ", ".join(_AXIS_NAMES.get(c, "?") for c in codes)
    columns = geometry.affine[:3, :3] / np.linalg.norm(geometry.affine[:3, :3], axis=0)
    cosines = np.clip(np.abs(columns).max(axis=0), 0.0, 1.0)  # per voxel axis, nearest world axis
    degrees = float(np.degrees(np.arccos(cosines.min())))
    oblique = f"; oblique, up to {degrees:.1f} deg off those axes" if degrees >= 0.05 else ""
    return f"{codes}  (array X, Y, Z increase towards {towards}{oblique})"


@app.command("patches")
def patches_cmd(
    path: Annotated[Path, typer.Argument(help="Volume to plan a patch grid for.")],
    patch_size: Annotated[
        tuple[int, int], typer.Option("--patch-size", help="In-plane patch size (y x), voxels.")
    ] = (40, 40),
    stride: Annotated[
        tuple[int, int], typer.Option("--stride", help="In-plane stride (y x), voxels.")
    ] = (10, 10),
    num_slices: Annotated[
        int, typer.Option("--num-slices", help="Input slices per 2.5D patch (odd).")
    ] = 3,
    slice_axis: Annotated[
        Optional[int],
        typer.Option("--slice-axis", help="Slice axis of (Z, Y, X); default: the axial axis."),
    ] = None,
    coverage: Annotated[
        Optional[Path],
        typer.Option("--coverage", help="Write the votes-per-voxel map here (source geometry)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --coverage file.")
    ] = False,
) -> None:
    """Plan the 2.5D patch grid of a volume: patch count, votes per voxel, memory."""
    import numpy as np

    from medseg.io import axial_axis, read_image, write_label
    from medseg.patches import PatchSpec, make_grid

    vol = read_image(path, allow_2d=num_slices == 1)
    axis = axial_axis(vol.geometry) if slice_axis is None else slice_axis
    spec = PatchSpec.two_and_half_d(patch_size, stride, num_slices=num_slices, slice_axis=axis)
    shape = np.moveaxis(vol.array[0], axis, 0).shape
    grid = make_grid(shape, spec)
    channels = vol.array.shape[0] * num_slices
    typer.echo(f"volume (slice axis first): {shape}, slice axis {axis} ({'ZYX'[axis]})")
    typer.echo(f"patch grid (z, y, x):      {grid.grid_shape} = {grid.num_patches} patches")
    typer.echo(f"model input:               ({channels}, {patch_size[0]}, {patch_size[1]})")
    typer.echo(f"votes per voxel:           up to {grid.max_votes()}")
    if coverage is not None:
        counts = np.moveaxis(grid.coverage(), 0, axis)
        if counts.max() > 255:
            raise ValueError(
                f"--coverage needs at most 255 votes per voxel, got {counts.max()}; raise --stride"
            )
        write_label(coverage, counts.astype(np.uint8), vol.geometry, overwrite=overwrite)
        typer.echo(f"coverage map:              {coverage}")


def _register_subcommands() -> None:
    from medseg.cli_batch import batch_app  # light: torch and dask load inside its commands

    app.add_typer(batch_app, name="batch")
    from medseg.cli_crossval import crossval_cmd
    from medseg.cli_manifest import manifest_app

    app.command("crossval")(crossval_cmd)
    app.add_typer(manifest_app, name="manifest")


_register_subcommands()


def _error_console():  # rich console on stderr, created lazily
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _click_exceptions():
    """The click exception module that this Typer uses (Typer >= 0.24 vendors click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older Typer depends on click itself
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 1 error).

    ``--debug`` anywhere on the command line re-raises errors with their traceback.
    """
    import warnings

    click_errors = _click_exceptions()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    _STATE["debug"] = debug
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning  # one line each, no source line
        return _run(args, debug, click_errors)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning as one line, ``Warning: <message>``, on stderr."""
    text = " ".join(str(message).split())
    _error_console().print(f"Warning: {text}", markup=False)


def _run(args: list[str], debug: bool, click_errors) -> int:
    """:func:`main` inside its warning display."""
    try:
        status = app(args=args, prog_name="medseg", standalone_mode=False)
        if isinstance(status, int):  # click returns typer.Exit codes when not standalone
            return status
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        _error_console().print("Aborted.", markup=False)
        return 1
    except click_errors.ClickException as exc:
        if isinstance(exc, click_errors.NoArgsIsHelpError):
            typer.echo(exc.format_message())  # the help text; asking for it is not an error
            return 0
        if debug:
            raise
        # usage errors (unknown option, missing argument, bad type): one line, exit 1
        _error_console().print(f"Error: {exc.format_message()}", markup=False)
        return 1
    except _USER_ERRORS as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        _error_console().print(f"Error: {message}", markup=False)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
