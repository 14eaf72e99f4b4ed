"""Prediction: ``predict_array`` (arrays) and ``predict_case`` (files).

A volume is normalised as the model was trained (stored in its checkpoint), turned so
its slice axis comes first, and predicted from overlapping 2.5D patches streamed slab
by slab (:func:`medseg.patches.predict_sliding_window`), reassembled by majority vote
by default (``"mean"`` and ``"gaussian"`` averaging are options). The label map is
written in the input's exact geometry, atomically, with an optional confidence map
(vote agreement) and class probabilities.

``fast=True`` runs the fully convolutional network once over every whole slice (its
neighbours as channels) instead of over overlapping patches: each voxel gets one
prediction instead of ~11 votes, so it is several times faster; the reassembly mode
does not apply, and the confidence is the winner's probability.

2D models (microscopy; checkpoints with inference mode ``"tile"``) predict images of
any size by the U-Net overlap-tile strategy (:mod:`medseg.tiling`), then separate the
foreground into objects as configured (:func:`medseg.instances.instances_from_prediction`)
and write three files: the class mask, the instance map (uint16) and an overlay PNG.
A grey image given to a model trained on RGB is repeated into three channels (grey
stored as RGB, as DSB2018's fluorescence images are); an RGB image given to a grey
model is refused. 16-bit images are normalised like 8-bit ones; transparent pixels
and constant (empty) images are refused.

:func:`load_predictor` builds ensembles of checkpoints and test-time mirroring
(:mod:`medseg.ensemble`), which take a single network's place everywhere above.
:func:`refine_prediction` applies the fully connected CRF and the largest-component
clean-up chosen on validation data (:mod:`medseg.postprocess`, :mod:`medseg.tuning`).
:func:`segment_volume` and :func:`segment_objects` are the in-memory core that
:func:`predict_case` and the Python API (:mod:`medseg.api`) share.

The code of the two paths lives in private modules, and every name keeps its import path
here (ARCHITECTURE.md section 1): the precision helpers, :func:`prepare_image` and
:func:`refine_prediction` in :mod:`medseg._inference`; :func:`predict_array`,
:func:`segment_volume` and the rest of the 2.5D volume path in
:mod:`medseg._predict_volume`; :func:`segment_objects` and :func:`write_overlay` in
:mod:`medseg._predict_objects`. This module is the file-level driver: :func:`predict_case`,
:func:`output_paths`, :class:`CaseResult` and :func:`load_predictor` (``load_model`` and
``predict_volume`` are deprecated names of ``load_predictor([name])`` and :func:`predict_array`).
The driver looks :func:`segment_volume` and :func:`segment_objects` up in this module at
call time, so patching ``medseg.predict.segment_volume`` reaches :func:`predict_case`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg import options
from medseg._device import resolve_device
from medseg._inference import (  # noqa: F401  (re-exported: their home is _inference)
    PRECISIONS,
    cpu_has_native_bf16,
    inference_network,
    prepare_image,
    refine_prediction,
    uses_bf16,
)
from medseg._predict_objects import (  # noqa: F401  (re-exported: their home is _predict_objects)
    segment_objects,
    segment_objects_scaled,
    training_diameter,
    write_overlay,
)
from medseg._predict_volume import (  # noqa: F401  (re-exported: their home is _predict_volume)
    FAST_ROI_MARGIN,
    PATCHES_PER_SLICE,
    VolumePrediction,
    check_brain_input,
    crop_box,
    model_grid,
    predict_array,
    segment_volume,
    spec_from_checkpoint,
    uses_brain_extraction,
)
from medseg.checkpoint import Checkpoint, load_checkpoint
from medseg.io import (
    Volume,
    check_output_path,
    read_image,
    split_suffix,
    write_image,
    write_label,
)
from medseg.object_size import describe_scale
from medseg.typing import PathLike
from medseg.volumes import warn_implausible_brain, write_volume_report

DEFAULT_MODEL = "brain-tissue"


@dataclass
class CaseResult:
    """What :func:`predict_case` wrote and measured."""

    input: Path
    labels: np.ndarray
    confidence: np.ndarray
    geometry: Any
    label_names: dict[int, str]
    written: list[Path] = field(default_factory=list)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    instances: np.ndarray | None = None
    tiv_ml: float | None = None
    skull_strip: str = ""
    resampled: str = ""

    @property
    def brain_ml(self) -> float:
        """CSF + GM + WM (every non-background label), mL."""
        return float(sum(self.volumes_ml.values()))

    @property
    def num_objects(self) -> int | None:
        """Number of objects (2D object models), else None."""
        return None if self.instances is None else int(np.unique(self.instances).size - 1)


def output_paths(
    input_path: PathLike,
    output: PathLike,
    *,
    confidence: bool,
    probs: bool,
    objects: bool = False,
) -> dict[str, Path]:
    """Where :func:`predict_case` writes.

    ``output`` is a folder (ends in ``/``, exists as a folder, or has no suffix): the label
    map is ``<input stem>_seg<input suffix>`` there (a DICOM folder input gives
    ``.nii.gz``). Otherwise ``output`` is the label-map file itself. The confidence map and
    probabilities go beside it as ``<stem>_confidence`` / ``<stem>_probs``, as NIfTI when
    the label format cannot hold floats (PNG). With ``objects`` (2D object models) the
    class mask is ``<stem>_mask``, the instance map ``<stem>_instances`` (same format as
    the input; NIfTI for DICOM input) and the overlay ``<stem>_overlay.png``.

    Example:
        >>> paths = output_paths("in/t1.nii.gz", "out/", confidence=True, probs=False)
        >>> [str(paths[k]) for k in sorted(paths)]
        ['out/t1_confidence.nii.gz', 'out/t1_seg.nii.gz']
    """
    input_path, output = Path(input_path), Path(output)
    if str(output).endswith(("/", "\\")) or output.is_dir() or not split_suffix(output.name)[1]:
        stem, suffix = split_suffix(input_path.name)
        labels = output / f"{stem}_seg{suffix or '.nii.gz'}"
    else:
        labels = output
    stem, suffix = split_suffix(labels.name)
    stem = stem[: -len("_seg")] if stem.endswith("_seg") else stem
    float_suffix = ".nii.gz" if suffix == ".png" else suffix
    out = {"labels": labels}
    if objects:  # mask and instances in the label map's format (PNG for PNG input)
        out["labels"] = labels.with_name(f"{stem}_mask{suffix}")
        out["instances"] = labels.with_name(f"{stem}_instances{suffix}")
        out["overlay"] = labels.with_name(f"{stem}_overlay.png")
    if confidence:
        out["confidence"] = labels.with_name(f"{stem}_confidence{float_suffix}")
    if probs:
        out["probs"] = labels.with_name(f"{stem}_probs{float_suffix}")
    return out


def predict_case(
    input_path: PathLike,
    checkpoint: Checkpoint,
    output: PathLike,
    *,
    model: torch.nn.Module | None = None,
    device: str | torch.device | None = None,
    mode: str | None = None,
    fast: bool = False,
    confidence: bool = False,
    probs: bool = False,
    batch_size: int | None = None,
    overwrite: bool = False,
    objects: dict[str, Any] | None = None,
    crf: bool | dict[str, Any] = False,
    cleanup: bool = True,
    skull_strip: str | None = None,
    n4: bool = False,
    brain_mask: PathLike | None = None,
    series: str | None = None,
    report: bool = True,
    overlay: bool = False,
    precision: str = "auto",
    table: bool = False,
    progress: Callable[[int, int], None] | None = None,
    output_format: str = "auto",
    diameter: float | str | None = None,
) -> CaseResult:
    """Segment one image file and write the results in its geometry.

    Args:
        input_path: Image file (or DICOM folder).
        checkpoint: A loaded checkpoint (:func:`medseg.checkpoint.load_checkpoint`).
        output: Label-map file, or a folder (``<stem>_seg.nii.gz`` is written there).
        model: The checkpoint's network, if already built (batch jobs build it once).
        device, fast, batch_size: As :func:`predict_array`.
        mode: Reassembly (default: the checkpoint's).
        confidence: Also write the confidence map (``<stem>_confidence``).
        probs: Also write class probabilities (``<stem>_probs``, K channels).
        overwrite: Replace existing outputs.
        objects: 2D object models: overrides of the checkpoint's post-processing
            (``method``: ``"components"`` / ``"watershed"``, ``min_size``, ``fill_gaps``).
        crf: Refine with the fully connected CRF (:func:`refine_prediction`): True uses
            the checkpoint's tuned parameters (or the defaults), a dict gives them.
        cleanup: Apply the checkpoint's connected-component clean-up, if validation chose
            one (``medseg tune-postprocess``).
        skull_strip, n4: As :func:`segment_volume` (3D models).
        brain_mask: Also write the brain mask (uint8, 1 = brain) to this file.
        series: For a DICOM folder with several series: the SeriesInstanceUID or
            SeriesNumber to read.
        report: For brain models, write ``<stem>_volumes.csv`` beside the label map: each
            tissue's volume (mL) and fraction of the TIV, the brain and the TIV.
        overlay: 3D models: also write ``<stem>_overlay.png``, three views through the
            brain with the tissues and the brain mask's outline, to check the result.
        precision: 3D models: as :func:`predict_array`.
        table: 2D object models: also write ``<stem>_objects.csv``, one row per object
            (:func:`medseg.object_table.object_table`).
        progress: ``progress(done, total)`` as the network works through the image
            (patches or tiles); None: silent.
        output_format: ``"auto"``: the label map's format follows its suffix;
            ``"dicom-seg"``: for a DICOM series input, the label map is a DICOM
            Segmentation of that series, ``<name>_seg.dcm`` (:mod:`medseg.dicom_seg`).
        diameter: 2D object models: the scale to predict at, as
            :func:`segment_objects_scaled` (None: the checkpoint's setting).

    Raises:
        FileExistsError: an output exists (checked before any work). ValueError: the
            image has the wrong number of channels or is 2D, or cannot be read, or a
            ``diameter`` for a volume model.
    """
    import time

    start = time.perf_counter()
    object_model = checkpoint.is_tile_model
    named = Path(output)
    if output_format == "dicom-seg" and named.name.lower().endswith(".dcm"):
        named = named.with_name(named.name[: -len(".dcm")] + ".nii.gz")  # siblings' names
    targets = output_paths(
        input_path, named, confidence=confidence, probs=probs, objects=object_model
    )
    if output_format not in options.OUTPUT_FORMATS:
        raise ValueError(
            f"--output-format must be one of {', '.join(options.OUTPUT_FORMATS)}, "
            f"got {output_format!r}"
        )
    seg_files: list[Path] = []
    if output_format == "dicom-seg":
        targets["labels"], seg_files = _dicom_seg_target(input_path, output, object_model, series)
    if diameter is not None and not object_model:
        raise ValueError(
            f"--diameter needs a 2D object model (-m nuclei), got {checkpoint.model_name}, "
            f"which segments tissues; drop --diameter"
        )
    if table:
        if not object_model:
            raise ValueError(
                f"--table needs a 2D object model (-m nuclei, -m em-membrane), got "
                f"{checkpoint.model_name}, which segments tissues; drop --table"
            )
        stem = split_suffix(targets["labels"].name)[0]
        stem = stem[: -len("_mask")] if stem.endswith("_mask") else stem
        targets["table"] = targets["labels"].with_name(f"{stem}_objects.csv")
    if report and not object_model and checkpoint.uses_brain_extraction:
        stem = split_suffix(targets["labels"].name)[0]
        stem = stem[: -len("_seg")] if stem.endswith("_seg") else stem
        targets["report"] = targets["labels"].with_name(f"{stem}_volumes.csv")
    if brain_mask is not None:
        targets["brain_mask"] = Path(brain_mask)
    if overlay and not object_model:
        stem = split_suffix(targets["labels"].name)[0]
        stem = stem[: -len("_seg")] if stem.endswith("_seg") else stem
        targets["overlay"] = targets["labels"].with_name(f"{stem}_overlay.png")
    source = Path(input_path).resolve()
    for path in targets.values():
        if path.resolve() == source:
            raise ValueError(
                f"-o must not be the input {str(input_path)!r}, got the same file (even with "
                "--overwrite the scan would be lost); choose another output"
            )
        check_output_path(path, overwrite=overwrite)
    image: Volume = read_image(input_path, series=series)
    what = f"input {str(input_path)!r}"
    if not object_model:
        check_brain_input(image, checkpoint, what=what)
    net = model if model is not None else checkpoint.build_model()
    if object_model:
        return _predict_objects(
            input_path,
            image,
            checkpoint,
            net,
            targets,
            device=device,
            batch_size=batch_size,
            confidence=confidence,
            probs=probs,
            overwrite=overwrite,
            start=start,
            objects=objects,
            crf=crf,
            diameter=diameter,
            progress=progress,
        )
    result = segment_volume(
        image,
        checkpoint,
        net,
        what=what,
        device=device,
        mode=mode,
        fast=fast,
        batch_size=batch_size,
        return_probs=probs,
        crf=crf,
        cleanup=cleanup,
        skull_strip=skull_strip,
        n4=n4,
        precision=precision,
        progress=progress,
    )
    if seg_files:
        from medseg.dicom_seg import write_dicom_seg

        label_map = write_dicom_seg(
            targets["labels"], result.labels, image.geometry, seg_files,
            label_names=checkpoint.label_names, model=checkpoint.model_name,
            overwrite=overwrite,
        )  # fmt: skip
    else:
        label_map = write_label(
            targets["labels"], result.labels, image.geometry, overwrite=overwrite
        )
    written = [label_map]
    if brain_mask is not None:
        if result.brain is None:
            raise ValueError(
                f"--brain-mask needs a brain model, got {checkpoint.model_name}, which "
                "segments any volume; drop --brain-mask"
            )
        written.append(
            write_label(
                targets["brain_mask"],
                result.brain.mask.astype(np.uint8),
                image.geometry,
                overwrite=overwrite,
            )
        )
    if confidence:
        written.append(
            write_image(
                targets["confidence"], result.confidence[None], image.geometry, overwrite=overwrite
            )
        )
    if probs:
        written.append(
            write_image(targets["probs"], result.probs, image.geometry, overwrite=overwrite)
        )
    voxel_ml = float(np.prod(image.geometry.spacing_mm)) / 1000.0
    counts = np.bincount(result.labels.ravel(), minlength=checkpoint.num_classes)
    volumes = {
        name: float(counts[k] * voxel_ml)
        for k, name in checkpoint.label_names.items()
        if k != 0 and k < len(counts)
    }
    case = CaseResult(
        input=Path(input_path),
        labels=result.labels,
        confidence=result.confidence,
        geometry=image.geometry,
        label_names=checkpoint.label_names,
        written=written,
        volumes_ml=volumes,
        tiv_ml=(
            result.brain.volume_ml(image.geometry.spacing_mm)
            if result.brain is not None and result.brain.is_brain
            else None
        ),
        skull_strip="" if result.brain is None else result.brain.reason,
        resampled=_describe_mapping(result.mapping, image),
    )
    if result.brain is not None:
        warn_implausible_brain(case.volumes_ml, what)
    if "report" in targets:
        written.append(
            write_volume_report(
                targets["report"], case.volumes_ml, case.tiv_ml, overwrite=overwrite
            )
        )
    if "overlay" in targets:
        from medseg.visualize import save_overlay_png

        title = f"{Path(input_path).name}: {checkpoint.model_name}"
        if case.tiv_ml:
            title += f"; brain {case.brain_ml / 1000:.2f} L, TIV {case.tiv_ml / 1000:.2f} L"
        written.append(
            save_overlay_png(
                targets["overlay"],
                image.array[0],
                result.labels,
                spacing_mm=image.geometry.spacing_mm,
                label_names=checkpoint.label_names,
                title=title,
                overwrite=overwrite,
                mask=None if result.brain is None else result.brain.mask,
            )
        )
    case.seconds = time.perf_counter() - start
    return case


def _dicom_seg_target(
    input_path: PathLike, output: PathLike, object_model: bool, series: str | None
) -> tuple[Path, list[Path]]:
    """The SEG file for ``--output-format dicom-seg`` and the source series' files."""
    from medseg import dicom_seg
    from medseg.io import dicom_series_files, is_dicom_folder

    if object_model:
        raise ValueError(
            "--output-format dicom-seg needs a 3D model of a DICOM series, got a 2D object "
            "model; drop --output-format"
        )
    if not is_dicom_folder(input_path):
        raise ValueError(
            f"--output-format dicom-seg needs a DICOM series (a folder) as input, got "
            f"{str(input_path)!r}; drop --output-format for other inputs"
        )
    dicom_seg.require()
    return dicom_seg.seg_path(input_path, output), dicom_series_files(input_path, series)


def _describe_mapping(mapping: Any, image: Volume) -> str:
    """One line: how the input reached the model's grid (empty when it did not move)."""
    if mapping is None or mapping.is_identity:
        return ""
    from medseg.preprocess import orientation_code

    src = orientation_code(image.geometry)
    dst = orientation_code(mapping.geometry)
    spacing = " x ".join(f"{s:.3g}" for s in mapping.geometry.spacing_mm)
    step = f"turned {src} -> {dst}" if mapping.transform is not None else f"kept {src}"
    if mapping.resamples:
        step += f", resampled to {spacing} mm (z, y, x) and back"
    return step


def _predict_objects(
    input_path: PathLike,
    image: Volume,
    checkpoint: Checkpoint,
    net: torch.nn.Module,
    targets: dict[str, Path],
    *,
    device: str | torch.device | None,
    batch_size: int | None,
    confidence: bool,
    probs: bool,
    overwrite: bool,
    start: float,
    objects: dict[str, Any] | None = None,
    crf: bool | dict[str, Any] = False,
    diameter: float | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CaseResult:
    """The 2D object path of :func:`predict_case`: overlap-tile, objects, three files."""
    import time

    from medseg.io import write_instances

    result, instances, scale = segment_objects_scaled(
        image,
        checkpoint,
        net,
        what=f"input {str(input_path)!r}",
        device=device,
        batch_size=batch_size,
        return_probs=probs,
        crf=crf,
        objects=objects,
        diameter=diameter,
        progress=progress,
    )
    g = image.geometry
    written = [
        write_label(targets["labels"], result.labels, g, overwrite=overwrite),
        write_instances(targets["instances"], instances, g, overwrite=overwrite),
    ]
    written.append(write_overlay(targets["overlay"], image.array, instances, overwrite=overwrite))
    if "table" in targets:
        from medseg.object_table import object_table, write_object_table

        rows = object_table(instances, image.array, spacing_mm=g.spacing_mm)
        written.append(write_object_table(targets["table"], rows, overwrite=overwrite))
    if confidence:
        written.append(
            write_image(targets["confidence"], result.confidence[None], g, overwrite=overwrite)
        )
    if probs:
        written.append(write_image(targets["probs"], result.probs, g, overwrite=overwrite))
    return CaseResult(
        input=Path(input_path),
        labels=result.labels,
        confidence=result.confidence,
        geometry=g,
        label_names=checkpoint.label_names,
        written=written,
        seconds=time.perf_counter() - start,
        instances=instances,
        resampled=describe_scale(scale),  # a 2D image's scale, for the CLI's step line
    )


def load_predictor(
    names: Sequence[PathLike] = (DEFAULT_MODEL,),
    *,
    device: str | None = None,
    tta: str = "none",
    combine: str = "mean",
) -> tuple[Checkpoint, torch.nn.Module]:
    """Checkpoints (built-in names or files) -> ``(checkpoint, predictor)``.

    One checkpoint without TTA gives its network. Several checkpoints (an ensemble of
    folds or architectures) and/or ``tta="flip"`` give a
    :class:`medseg.ensemble.CombinedPredictor`; the checkpoints must share their input
    geometry, normalisation and classes, and the first one's settings drive prediction.

    Args:
        names: Built-in model names or checkpoint paths (at least one).
        device: Where the networks live (``"auto"``: CUDA if available).
        tta: ``"none"``, ``"flip"`` (mirroring along the in-plane axes the first model was
            trained with flips on) or ``"flip-all"`` (both in-plane axes); see
            :func:`medseg.ensemble.tta_flips`.
        combine: ``"mean"`` probabilities or ``"vote"`` (see :mod:`medseg.ensemble`).
    """
    from medseg.ensemble import CombinedPredictor, check_compatible, tta_flips

    if len(names) == 0:
        raise ValueError("-m/--model must name at least one model, got none")
    ckpts = [load_checkpoint(n) for n in names]
    check_compatible(ckpts, [str(n) for n in names])
    trained = (ckpts[0].config.get("augment") or {}).get("flip_axes") or ()
    flips = tta_flips(tta, trained_axes=trained)
    from medseg.models import fold_batch_norm

    dev = resolve_device(device)
    nets = [fold_batch_norm(c.build_model(dev)) for c in ckpts]
    if len(nets) == 1 and len(flips) == 1:
        return ckpts[0], nets[0]
    return ckpts[0], CombinedPredictor(nets, flips=flips, combine=combine).eval()


def check_default_model_inputs(
    files: Sequence[PathLike], *, fix: str = "use -m nuclei or -m em-membrane"
) -> None:
    """Refuse a run of the default model (:data:`DEFAULT_MODEL`, which segments 3D T1
    volumes) whose every input is a 2D image, before any model loads.

    ``medseg predict`` without ``-m`` and ``medseg batch`` with the default model call it
    (``fix`` says what to do instead). Inputs whose header cannot be read are left to fail
    on their own, and in a mixed run each 2D input fails alone.

    Raises:
        ValueError: naming the first 2D input and the 2D models to use instead.
    """
    from medseg.io import read_volume_info

    flat = []
    for path in map(Path, files):
        try:
            if path.is_file() and read_volume_info(path).spatial_shape[0] == 1:
                flat.append(path)
        except (ValueError, OSError):
            continue  # reported with the other failures of the run
    if flat and len(flat) == len(files):
        raise ValueError(
            f"-m/--model must name a 2D model for the 2D image {str(flat[0])!r}, got none "
            f"(the default {DEFAULT_MODEL} model segments 3D T1 volumes); {fix}"
        )


def load_model(name_or_path: PathLike = DEFAULT_MODEL, device: str | None = None):
    """Deprecated (issue #20): ``load_predictor([name_or_path], device=device)``, or
    :func:`medseg.load_model` for the :class:`medseg.api.Model` of the Python API."""
    import warnings

    warnings.warn(
        "medseg.predict.load_model is deprecated; use medseg.predict.load_predictor([name]) "
        "or medseg.load_model(name)",
        DeprecationWarning,
        stacklevel=2,
    )
    return load_predictor([name_or_path], device=device)


def __getattr__(name: str) -> Any:
    """``predict_volume``, this module's old name of :func:`predict_array` (issue #20: the
    Python API's :func:`medseg.predict_volume` is the one ``predict_volume``), with a
    DeprecationWarning."""
    if name == "predict_volume":
        import warnings

        warnings.warn(
            "medseg.predict.predict_volume is deprecated; it is medseg.predict.predict_array "
            "(arrays), and medseg.predict_volume is the Python API (files and images)",
            DeprecationWarning,
            stacklevel=2,
        )
        return predict_array
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
