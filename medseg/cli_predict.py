"""``medseg predict``: segment images with a trained model, one input after another.

The command parses its options, expands folders and BIDS datasets into image files and
calls :func:`medseg.predict.predict_case` for each; a BIDS input also gets its
derivatives sidecars and group table (:mod:`medseg.bids`). Torch, numpy and nibabel load
inside the command body, so ``medseg --help`` stays instant. :mod:`medseg.cli` registers
the command and turns its errors into one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from medseg.cli_common import STATE, error_console
from medseg.options import (
    CombineMode,
    ObjectMethod,
    OutputFormat,
    Precision,
    ReassemblyMode,
    SkullStrip,
    TtaMode,
)


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
    diameter: Annotated[
        Optional[str],
        typer.Option(
            "--diameter",
            help="2D object models: the objects' typical diameter in pixels, to scale the "
            "image to the training objects' size; auto (each image at scale 1, 1/2, 1/4, "
            "1/8, keeping the one the model is surest of) or none; default: the model's.",
        ),
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
    from medseg.options import REASSEMBLY_MODES

    if mode is not None and mode not in REASSEMBLY_MODES:
        raise ValueError(f"--mode must be one of {', '.join(REASSEMBLY_MODES)}, got {mode!r}")
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
    size = _diameter_option(diameter)
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
        from medseg.predict import check_default_model_inputs

        check_default_model_inputs(files)
    ckpt, net = load_predictor(model or ["brain-tissue"], device=device, tta=tta, combine=ensemble)
    if size is not None and not ckpt.is_tile_model:
        raise ValueError(
            f"--diameter needs a 2D object model (-m nuclei), got {ckpt.model_name}, which "
            f"segments tissues; drop --diameter"
        )
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
                    diameter=size,
                )
                if path in bids:
                    bids_rows.append(_bids_outputs(bids[path], out, result, model, overwrite))
            except Exception as exc:  # one input's failure, whatever it is, stops only it
                if len(files) == 1 or STATE["debug"]:
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
        err = error_console()
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


def _stem(path: Path) -> str:
    """A file's name without its image suffix (``t1.nii.gz`` -> ``t1``), or a folder's name."""
    from medseg.predict import split_suffix

    return split_suffix(path.name)[0]


def _diameter_option(value: str | None) -> float | str | None:
    """``--diameter``: None, ``auto``, ``none`` or a positive number of pixels."""
    from medseg._validate import check_diameter

    if value is None or value in ("auto", "none"):
        return value
    try:
        number = float(value)
    except ValueError:
        raise ValueError(
            f"--diameter must be auto, none or a positive number of pixels, got {value!r}"
        ) from None
    return check_diameter(number, "--diameter")
