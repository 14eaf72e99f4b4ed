"""Prediction: ``predict_volume`` (arrays) and ``predict_case`` (files).

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
from medseg.checkpoint import Checkpoint, load_checkpoint
from medseg.io import (
    Volume,
    check_output_path,
    read_image,
    resolve_slice_axis,
    split_suffix,
    write_image,
    write_label,
)
from medseg.normalize import normalize_intensity
from medseg.patches import PatchSpec, Reassembled, predict_sliding_window
from medseg.typing import PathLike
from medseg.volumes import warn_implausible_brain, write_volume_report

DEFAULT_MODEL = "brain-tissue"
PATCHES_PER_SLICE = 64  # batch_size is given in patches; fast mode batches whole slices
FAST_ROI_MARGIN = 64
"""Extra in-plane pixels around the ROI's box that whole-slice (``fast``) prediction keeps
as context (the built-in brain networks see about 40-70 px around a pixel)."""


PRECISIONS = options.PRECISIONS
"""Inference precision: ``"auto"`` runs the network under bfloat16 autocast where the
device computes bfloat16 natively (CUDA; CPUs with AMX or AVX-512 BF16), else float32."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's own check: AMX/AVX-512 BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether the network runs in bfloat16 (:data:`PRECISIONS`).

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return precision == "bf16"


class _Bfloat16(torch.nn.Module):
    """A copy of a network with bfloat16 weights: float32 in, float32 logits out.

    On the CPU this is faster than autocast, which casts around every layer (measured on
    the U-SegNet: 3,448 -> 3,848 patches/s); the outputs agree with autocast's to bfloat16
    precision.
    """

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        import copy

        self.network = copy.deepcopy(network).to(torch.bfloat16).eval()
        self.divisor = getattr(network, "divisor", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.to(torch.bfloat16)).float()


def inference_network(
    model: torch.nn.Module, device: torch.device, precision: str = "auto"
) -> tuple[torch.nn.Module, Any]:
    """The network and the context a forward pass runs in, for a precision.

    float32: the network itself, no context. bfloat16: on CUDA, autocast (as in training);
    on the CPU, a bfloat16 copy of the network (:class:`_Bfloat16`).

    Raises:
        ValueError: an unknown precision.
    """
    import contextlib

    if not uses_bf16(device, precision):
        return model, contextlib.nullcontext()
    if device.type == "cuda":
        return model, torch.autocast("cuda", torch.bfloat16)
    return _Bfloat16(model).to(device), contextlib.nullcontext()


def _spec_from_checkpoint(ckpt: Checkpoint, slice_axis: int) -> PatchSpec:
    p = ckpt.patch
    return PatchSpec.two_and_half_d(
        int(p["size"]),
        int(p["stride"]),
        num_slices=int(p["num_slices"]),
        slice_axis=slice_axis,
        pad_mode=str(p.get("pad_mode", "reflect")),
    )


def _predict_in_box(
    model: torch.nn.Module,
    image: np.ndarray,
    spec: PatchSpec,
    roi: np.ndarray,
    *,
    mode: str,
    batch_size: int,
    device: str | torch.device | None,
    fast: bool,
    return_probs: bool,
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Reassembled:
    """:func:`predict_volume` on the ROI's box only (its ``roi`` argument)."""
    roi = np.asarray(roi, dtype=bool)
    if roi.shape != image.shape[1:]:
        raise ValueError(f"roi must have shape {image.shape[1:]}, got {roi.shape}")
    box = crop_box(roi, spec, margin=FAST_ROI_MARGIN if fast else 0)
    sub = np.ascontiguousarray(image[(slice(None), *box)])
    sub_roi = roi[box]
    dev = resolve_device(device)
    if fast:
        inner = predict_volume(
            model, sub, spec, mode=mode, batch_size=batch_size, device=dev, fast=True,
            return_probs=return_probs, roi=None, precision=precision, progress=progress,
        )  # fmt: skip
        # whole slices without an ROI voxel are background
        keep = np.moveaxis(sub_roi, spec.slice_axis, 0).any(axis=(1, 2))
        labels = np.moveaxis(inner.labels, spec.slice_axis, 0)
        labels[~keep] = 0
        conf = np.moveaxis(inner.confidence, spec.slice_axis, 0)
        conf[~keep] = 1.0
        if inner.probs is not None:
            probs = np.moveaxis(inner.probs, 1 + spec.slice_axis, 1)
            probs[:, ~keep] = 0.0
            probs[0, ~keep] = 1.0
    else:
        net, autocast = inference_network(model.to(dev).eval(), dev, precision)
        with autocast:
            inner = predict_sliding_window(
                sub, net, spec, mode=mode, batch_size=batch_size, device=dev,
                return_probs=return_probs, roi=sub_roi, progress=progress,
            )  # fmt: skip
    labels = np.zeros(roi.shape, np.uint8)
    labels[box] = inner.labels
    conf = np.ones(roi.shape, np.float32)
    conf[box] = inner.confidence
    probs_out = None
    if inner.probs is not None:
        probs_out = np.zeros((inner.probs.shape[0], *roi.shape), np.float32)
        probs_out[0] = 1.0
        probs_out[(slice(None), *box)] = inner.probs
    return Reassembled(labels, conf, probs_out)


def crop_box(roi: np.ndarray, spec: PatchSpec, *, margin: int = 0) -> tuple[slice, slice, slice]:
    """The box of a volume that a sliding window needs to predict an ROI exactly.

    Every window of the full volume's grid that touches the ROI lies inside the box at the
    same place: along each axis the box starts on a multiple of the stride and reaches one
    patch beyond the ROI, and along the slice axis it also holds the neighbouring slices a
    2.5D patch reads. ROI voxels therefore get the same votes as on the whole volume.

    Args:
        roi: bool ``(Z, Y, X)``.
        spec: The patch spec (size, stride, slices, slice axis).
        margin: Extra in-plane voxels on each side (whole-slice prediction's context).

    Returns:
        ``(z, y, x)`` slices in the input's axis order.

    Example:
        >>> roi = np.zeros((9, 50, 60), bool); roi[4, 25, 30] = True
        >>> crop_box(roi, PatchSpec.two_and_half_d(8, 4))
        (slice(3, 6, None), slice(16, 34, None), slice(20, 39, None))
    """
    from medseg.preprocess import bounding_box

    axis = spec.slice_axis
    moved = np.moveaxis(roi, axis, 0)
    tight = bounding_box(moved, (0, 0, 0))
    box = []
    for i in range(3):
        lo, hi, n = tight[i].start, tight[i].stop, moved.shape[i]
        p, st = spec.patch_size[i], spec.stride[i]
        extra = spec.num_slices // 2 if i == 0 else margin  # 2.5D neighbours / context
        start = (max(0, lo - p + 1 - extra) // st) * st
        stop = min(n, hi + p - 1 + extra + (1 if st > 1 else 0))
        box.append(slice(start, stop))
    rest = [a for a in range(3) if a != axis]
    out = [slice(0, 0)] * 3
    out[axis], out[rest[0]], out[rest[1]] = box[0], box[1], box[2]
    return (out[0], out[1], out[2])


def predict_volume(
    model: torch.nn.Module,
    image: np.ndarray,
    spec: PatchSpec,
    *,
    mode: str = "vote",
    batch_size: int = 512,
    device: str | torch.device | None = None,
    fast: bool = False,
    return_probs: bool = False,
    roi: np.ndarray | None = None,
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Reassembled:
    """Segment a normalised volume.

    Args:
        model: Maps ``(B, C * num_slices, py, px)`` to logits ``(B, K, py, px)``.
        image: Normalised intensities, float32 ``(C, Z, Y, X)``.
        spec: Patch size, stride, slices and slice axis (as the model was trained).
        mode: ``"vote"``, ``"mean"`` or ``"gaussian"`` reassembly (ignored when ``fast``).
        batch_size: Patches (or slices, when ``fast``) per forward pass.
        device: Where the model runs (``"auto"``: CUDA if available).
        fast: Whole slices instead of overlapping patches (module docstring).
        return_probs: Also return class probabilities ``(K, Z, Y, X)``.
        roi: bool ``(Z, Y, X)`` (a brain mask) or None. The volume is cropped to the ROI's
            box plus the context a window needs (:func:`crop_box`), and patches that hold
            no ROI voxel vote background without running the model, so ROI voxels get
            exactly the votes they would get without it. With ``fast``, the whole-slice
            network runs on the ROI's slices (and their neighbours, as context) cropped
            in-plane to the box plus :data:`FAST_ROI_MARGIN` pixels: ROI voxels near the
            box's edge may see less context than on the whole slice. Outside the box, and
            on slices without ROI voxels: background, confidence 1.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (:func:`inference_network`).
        progress: ``progress(done, total)`` in patches (or slices, when ``fast``), as
            :func:`medseg.patches.predict_sliding_window` calls it; None: silent.

    Returns:
        :class:`medseg.patches.Reassembled` with numpy arrays: labels uint8 ``(Z, Y, X)``,
        confidence float32 ``(Z, Y, X)``, probs or None.
    """
    if roi is not None:
        return _predict_in_box(
            model, image, spec, roi,
            mode=mode, batch_size=batch_size, device=device, fast=fast,
            return_probs=return_probs, precision=precision, progress=progress,
        )  # fmt: skip
    dev = resolve_device(device)
    model, autocast = inference_network(model.to(dev).eval(), dev, precision)
    if not fast:
        with autocast:
            return predict_sliding_window(
                image,
                model,
                spec,
                mode=mode,
                batch_size=batch_size,
                device=dev,
                return_probs=return_probs,
                progress=progress,
            )
    # whole slices: one "patch" per slice, padded in-plane to the model's divisor
    divisor = int(getattr(model, "divisor", 1))
    moved = np.moveaxis(image, 1 + spec.slice_axis, 1)
    ny, nx = moved.shape[2:]
    py, px = -(-ny // divisor) * divisor, -(-nx // divisor) * divisor
    pad = (
        (0, 0),
        (0, 0),
        ((py - ny) // 2, py - ny - (py - ny) // 2),
        ((px - nx) // 2, px - nx - (px - nx) // 2),
    )
    padded = np.pad(moved, pad, mode="reflect" if min(ny, nx) > 1 else "edge")
    whole = PatchSpec((1, py, px), (1, py, px), num_slices=spec.num_slices, pad_mode=spec.pad_mode)
    # a whole slice is roughly as much work as PATCHES_PER_SLICE 40x40 patches
    slices_per_batch = max(1, batch_size // PATCHES_PER_SLICE)
    with autocast:
        out = predict_sliding_window(
            padded,
            model,
            whole,
            mode="mean",
            batch_size=slices_per_batch,
            device=dev,
            return_probs=return_probs,
            patches_per_slab=slices_per_batch,
            progress=progress,
        )
    crop = (slice(None), slice(pad[2][0], pad[2][0] + ny), slice(pad[3][0], pad[3][0] + nx))
    labels = np.moveaxis(out.labels[crop], 0, spec.slice_axis)
    conf = np.moveaxis(out.confidence[crop], 0, spec.slice_axis)
    probs = None
    if out.probs is not None:
        probs = np.moveaxis(out.probs[(slice(None), *crop)], 1, 1 + spec.slice_axis)
    return Reassembled(np.ascontiguousarray(labels), np.ascontiguousarray(conf), probs)


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
) -> CaseResult:
    """Segment one image file and write the results in its geometry.

    Args:
        input_path: Image file (or DICOM folder).
        checkpoint: A loaded checkpoint (:func:`medseg.checkpoint.load_checkpoint`).
        output: Label-map file, or a folder (``<stem>_seg.nii.gz`` is written there).
        model: The checkpoint's network, if already built (batch jobs build it once).
        device, fast, batch_size: As :func:`predict_volume`.
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
        precision: 3D models: as :func:`predict_volume`.
        table: 2D object models: also write ``<stem>_objects.csv``, one row per object
            (:func:`medseg.object_table.object_table`).
        progress: ``progress(done, total)`` as the network works through the image
            (patches or tiles); None: silent.
        output_format: ``"auto"``: the label map's format follows its suffix;
            ``"dicom-seg"``: for a DICOM series input, the label map is a DICOM
            Segmentation of that series, ``<name>_seg.dcm`` (:mod:`medseg.dicom_seg`).

    Raises:
        FileExistsError: an output exists (checked before any work). ValueError: the
            image has the wrong number of channels or is 2D, or cannot be read.
    """
    import time

    start = time.perf_counter()
    object_model = str(checkpoint.inference.get("mode")) == "tile"
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
    if table:
        if not object_model:
            raise ValueError(
                f"--table needs a 2D object model (-m nuclei, -m em-membrane), got "
                f"{checkpoint.model_name}, which segments tissues; drop --table"
            )
        stem = split_suffix(targets["labels"].name)[0]
        stem = stem[: -len("_mask")] if stem.endswith("_mask") else stem
        targets["table"] = targets["labels"].with_name(f"{stem}_objects.csv")
    if report and not object_model and uses_brain_extraction(checkpoint):
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


def prepare_image(volume: Volume, checkpoint: Checkpoint, *, what: str) -> np.ndarray:
    """Check an image's channels against a checkpoint and normalise it as in training.

    A grey image given to a 2D object model trained on RGB is repeated into three
    channels (grey stored as RGB, as DSB2018's fluorescence images are). A model trained
    with ``data.colour: grey`` takes any number of channels, turned into one grey channel
    with a dark background (:func:`medseg.normalize.grey_dark_background`).

    Args:
        volume: The image as read, intensities float32 ``(C, Z, Y, X)``.
        checkpoint: Gives the expected channels and the normalisation.
        what: How errors name the image, e.g. ``"input 'a.nii.gz'"``.

    Returns:
        Normalised intensities, float32 ``(C', Z, Y, X)``.

    Raises:
        ValueError: wrong number of channels, or an image normalisation refuses
            (e.g. constant).
    """
    array = volume.array
    channels = array.shape[0]
    object_model = str(checkpoint.inference.get("mode")) == "tile"
    norm = checkpoint.normalization
    if norm.get("colour") == "grey":  # any stain -> one grey channel, dark background
        from medseg.normalize import grey_dark_background

        array, _ = grey_dark_background(array)
    elif object_model and channels == 1 and checkpoint.image_channels == 3:
        array = np.repeat(array, 3, axis=0)  # grey stored as RGB (module docstring)
    elif channels != checkpoint.image_channels:
        fix = "; convert it to greyscale first" if channels == 3 else ""
        raise ValueError(
            f"{what} must have {checkpoint.image_channels} channel(s) for this model "
            f"({checkpoint.model_name}), got {channels}{fix}"
        )
    mask = np.ones(array.shape[1:], bool) if norm.get("mask") == "all" else None
    try:
        normed, _ = normalize_intensity(
            array,
            method=str(norm.get("method", "zscore")),
            percentiles=tuple(norm.get("percentiles", (1.0, 99.0))),  # type: ignore[arg-type]
            mask=mask,
        )
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from err
    return normed


@dataclass(frozen=True)
class VolumePrediction(Reassembled):
    """A brain model's prediction in the input's grid, with what happened before it.

    Attributes:
        labels, confidence, probs: As :class:`medseg.patches.Reassembled`, on the input's
            grid.
        brain: The brain mask and the skull-stripping decision
            (:class:`medseg.preprocess.BrainMask`), or None for models that take any volume.
        mapping: How the input was turned and resampled to the model's grid
            (:class:`medseg.preprocess.GridMapping`), or None when the model records no grid.
    """

    brain: Any = None
    mapping: Any = None


def uses_brain_extraction(checkpoint: Checkpoint) -> bool:
    """Whether a checkpoint was trained on skull-stripped T1 (built-in brain models)."""
    return bool((checkpoint.extra.get("input") or {}).get("brain_extraction", False))


def model_grid(checkpoint: Checkpoint):
    """The checkpoint's :class:`medseg.preprocess.ModelGrid`, or None if it records none."""
    from medseg.preprocess import ModelGrid

    values = checkpoint.extra.get("grid")
    return None if not values else ModelGrid.from_dict(values)


def segment_volume(
    volume: Volume,
    checkpoint: Checkpoint,
    net: torch.nn.Module,
    *,
    what: str,
    device: str | torch.device | None = None,
    mode: str | None = None,
    fast: bool = False,
    batch_size: int | None = None,
    return_probs: bool = False,
    crf: bool | dict[str, Any] = False,
    cleanup: bool = True,
    skull_strip: str | None = None,
    n4: bool = False,
    precision: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> VolumePrediction:
    """Segment a 3D volume in memory with a 2.5D model (the core of :func:`predict_case`).

    For a brain model (one trained on skull-stripped T1, :func:`uses_brain_extraction`):
    finds the brain and strips the skull if the image still has it
    (:func:`medseg.preprocess.brain_mask`), optionally corrects the bias field inside the
    brain (:func:`medseg.preprocess.n4_correct`). Then normalises as the checkpoint says
    (:func:`prepare_image`), turns and resamples to the model's grid if the checkpoint
    records one (:class:`medseg.preprocess.GridMapping`), predicts along the checkpoint's
    slice axis on the brain's box only (:func:`predict_volume`), post-processes
    (:func:`refine_prediction`) and brings the result back to the input's grid (labels
    nearest, confidence and probabilities linear). Labels outside a mask that medseg
    stripped are background.

    Args:
        volume: The image as read, float32 ``(C, Z, Y, X)`` with its geometry.
        checkpoint, net: The model (``net`` may be a :class:`medseg.ensemble.CombinedPredictor`).
        what: How errors name the image.
        device, mode, fast, batch_size: As :func:`predict_volume` (None: the checkpoint's).
        return_probs: Keep the class probabilities ``(K, Z, Y, X)`` in the result.
        crf, cleanup: As :func:`refine_prediction`.
        skull_strip: ``"auto"``, ``"always"`` or ``"never"``; None: ``"auto"`` for brain
            models, ``"never"`` for others.
        n4: N4 bias-field correction inside the brain mask before normalising.
        precision, progress: As :func:`predict_volume`.

    Returns:
        :class:`VolumePrediction`: labels uint8 ``(Z, Y, X)``, confidence float32
        ``(Z, Y, X)``, probs or None, the brain mask and the grid mapping.
    """
    from medseg.preprocess import GridMapping, brain_mask, n4_correct

    check_brain_input(volume, checkpoint, what=what)
    brain_model = uses_brain_extraction(checkpoint)
    strip = skull_strip or ("auto" if brain_model else "never")
    image, geometry = volume.array, volume.geometry
    brain = None
    if brain_model or strip != "never" or n4:
        brain = brain_mask(image, geometry, mode=strip, device=resolve_device(device), what=what)
        if brain.stripped:
            image = np.where(brain.mask, image, np.float32(0)).astype(np.float32, copy=False)
        if n4:
            image = n4_correct(image, brain.mask, geometry.spacing_mm)
    normed = prepare_image(Volume(image, geometry), checkpoint, what=what)
    mapping = GridMapping.between(volume.spatial_shape, geometry, model_grid(checkpoint))
    roi = None if brain is None else brain.mask
    if not mapping.is_identity:
        normed = mapping.to_model(normed, order=1)
        roi = None if roi is None else mapping.to_model(roi.astype(np.uint8), order=0) > 0
        geometry = mapping.geometry
    axis = resolve_slice_axis(checkpoint.patch.get("slice_axis", "axial"), geometry)
    spec = _spec_from_checkpoint(checkpoint, axis)
    shape = normed.shape[1:]
    # a small input can shrink below one patch on the model's grid: pad with background
    rest = [a for a in range(3) if a != axis]
    need = {axis: spec.patch_size[0], rest[0]: spec.patch_size[1], rest[1]: spec.patch_size[2]}
    pad = [(0, max(0, need[a] - shape[a]) if not mapping.is_identity else 0) for a in range(3)]
    if any(after for _, after in pad):
        normed = np.pad(normed, [(0, 0), *pad])
        roi = None if roi is None else np.pad(roi, pad)
    result = predict_volume(
        net,
        normed,
        spec,
        mode=mode or str(checkpoint.inference.get("mode", "vote")),
        batch_size=batch_size or int(checkpoint.inference.get("batch_size", 512)),
        device=device,
        fast=fast,
        return_probs=return_probs or crf is not False,
        roi=roi,
        precision=precision,
        progress=progress,
    )
    if any(after for _, after in pad):
        inside = tuple(slice(0, n) for n in shape)
        normed = normed[(slice(None), *inside)]
        result = Reassembled(
            result.labels[inside],
            result.confidence[inside],
            None if result.probs is None else result.probs[(slice(None), *inside)],
        )
    result = refine_prediction(
        result, normed, geometry.spacing_mm, checkpoint,
        crf=crf, cleanup=cleanup, device=device, keep_probs=return_probs,
    )  # fmt: skip
    labels, conf, probs = result.labels, result.confidence, result.probs
    if not mapping.is_identity:
        labels = mapping.to_input(labels, order=0)
        conf = mapping.to_input(conf, order=1)
        probs = None if probs is None else mapping.to_input(probs, order=1)
    if brain is not None and brain.stripped:
        labels = np.where(brain.mask, labels, np.uint8(0)).astype(np.uint8, copy=False)
    return VolumePrediction(labels, conf, probs, brain=brain, mapping=mapping)


def check_brain_input(volume: Volume, checkpoint: Checkpoint, *, what: str) -> None:
    """Refuse what a 3D (2.5D) model cannot segment, in one line.

    Raises:
        ValueError: a 2D image (one slice), or a 4D series (several volumes, e.g. fMRI or
            DWI) given to a model that takes one channel.
    """
    channels, shape = volume.array.shape[0], volume.spatial_shape
    name = checkpoint.model_name
    if channels > checkpoint.image_channels == 1:
        raise ValueError(
            f"{what} must have 1 channel (one 3D volume) for this model ({name}), got "
            f"{channels}: a 4D series of {channels} volumes of {shape} (Z, Y, X); extract "
            "the T1 volume first (e.g. fslroi, or nibabel: img.slicer[..., 0])"
        )
    if int(checkpoint.patch.get("num_slices", 1)) > 1 and min(shape) == 1:
        raise ValueError(
            f"{what} must be a 3D volume for this model ({name}), got a 2D image of shape "
            f"{shape} (Z, Y, X); use a 2D model (-m nuclei, -m em-membrane) for 2D images"
        )


def segment_objects(
    volume: Volume,
    checkpoint: Checkpoint,
    net: torch.nn.Module,
    *,
    what: str,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    return_probs: bool = False,
    crf: bool | dict[str, Any] = False,
    objects: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Reassembled, np.ndarray]:
    """Segment a 2D image in memory with an object model: classes, then objects.

    Overlap-tile prediction (:func:`medseg.tiling.predict_tiled`), optional CRF
    (:func:`refine_prediction`), then objects from the class mask as the checkpoint's
    post-processing says, with ``objects`` overriding it
    (:func:`medseg.instances.instances_from_prediction`). ``progress(done, total)`` is
    called in tiles, as :func:`medseg.tiling.predict_tiled` does.

    Returns:
        The class prediction (labels uint8 ``(Z, Y, X)``, confidence, probs or None) and
        the instance map, int32 ``(Z, Y, X)`` (0 background, 1..N objects).
    """
    from medseg.instances import instances_from_prediction
    from medseg.tiling import predict_tiled

    pp = {**dict(checkpoint.extra.get("postprocess") or {}), **(objects or {})}
    method = str(pp.get("method", "components"))
    seeded = method == "seeded"
    normed = prepare_image(volume, checkpoint, what=what)
    inf = checkpoint.inference
    result = predict_tiled(
        normed,
        net,
        tile_size=int(inf.get("tile_size", 256)),
        halo=None if inf.get("halo") is None else int(inf["halo"]),
        batch_size=batch_size or int(inf.get("batch_size", 4)),
        device=resolve_device(device),
        return_probs=return_probs or seeded or crf is not False,
        progress=progress,
    )
    result = refine_prediction(
        result, normed, volume.geometry.spacing_mm, checkpoint,
        crf=crf, cleanup=False, device=device, keep_probs=return_probs or seeded,
    )  # fmt: skip
    if seeded:
        from medseg.membranes import instances_from_probability, seeded_parameters

        instances = instances_from_probability(
            1.0 - result.probs[0],
            min_size=int(pp.get("min_size", 0)),
            **seeded_parameters(pp),
        )
        if not return_probs:
            result = Reassembled(result.labels, result.confidence)
        return result, instances
    instances = instances_from_prediction(
        result.labels,
        method="components" if method == "none" else method,
        min_size=int(pp.get("min_size", 0)),
        fill=bool(pp.get("fill_gaps", False)),
    )
    return result, instances


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
    progress: Callable[[int, int], None] | None = None,
) -> CaseResult:
    """The 2D object path of :func:`predict_case`: overlap-tile, objects, three files."""
    import time

    from medseg.io import write_instances

    result, instances = segment_objects(
        image,
        checkpoint,
        net,
        what=f"input {str(input_path)!r}",
        device=device,
        batch_size=batch_size,
        return_probs=probs,
        crf=crf,
        objects=objects,
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
    )


def write_overlay(
    path: PathLike, image: np.ndarray, instances: np.ndarray, *, overwrite: bool = False
) -> Path:
    """Write the object overlay of the middle slice as an RGB PNG, atomically.

    Args:
        path: Output ``.png``.
        image: Intensities as read, float32 ``(C, Z, Y, X)``, C = 1 or 3.
        instances: Object ids, integer ``(Z, Y, X)``.
        overwrite: Replace an existing file.
    """
    from PIL import Image

    from medseg.io import atomic_output
    from medseg.visualize import instance_overlay_rgb

    z = image.shape[1] // 2
    plane = image[:, z] if image.shape[0] in (1, 3) else image[:1, z]
    rgb = instance_overlay_rgb(plane, instances[z])
    with atomic_output(path, overwrite=overwrite) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return Path(path)


def refine_prediction(
    result: Reassembled,
    image: np.ndarray,
    spacing_mm: Any,
    checkpoint: Checkpoint,
    *,
    crf: bool | dict[str, Any] = False,
    cleanup: bool = True,
    device: str | torch.device | None = None,
    keep_probs: bool = True,
) -> Reassembled:
    """Post-process a prediction: fully connected CRF, then connected-component clean-up.

    The CRF (:func:`medseg.postprocess.dense_crf`) takes the class probabilities and the
    normalised image; its labels are the argmax of the mean-field marginals, and the
    confidence becomes the winner's marginal. The clean-up keeps the largest connected
    component of the foreground and/or of single classes, as stored in the checkpoint's
    ``postprocess["cleanup"]`` by ``medseg tune-postprocess``, which keeps a clean-up only
    if it does not lower the mean validation Dice (nnU-Net's rule).

    Args:
        result: Labels uint8 ``(Z, Y, X)``, confidence float32 ``(Z, Y, X)``, and the class
            probabilities float32 ``(K, Z, Y, X)`` (required when ``crf``).
        image: The normalised image the network saw, float32 ``(C, Z, Y, X)``.
        spacing_mm: Voxel size ``(z, y, x)`` in mm (the CRF's position features).
        checkpoint: Supplies the tuned CRF parameters and the clean-up decision.
        crf: False (off), True (the checkpoint's tuned parameters, else the defaults) or a
            dict of :func:`medseg.postprocess.dense_crf` keyword arguments.
        cleanup: Apply the checkpoint's clean-up decision (if any).
        device: Where the CRF runs (``"auto"``: CUDA if available).
        keep_probs: Keep the probabilities (the CRF's marginals after a CRF) in the result.

    Returns:
        A new :class:`medseg.patches.Reassembled` (numpy), or ``result`` itself when
        nothing applies.
    """
    stored = dict(checkpoint.extra.get("postprocess") or {})
    labels, conf, probs = result.labels, result.confidence, result.probs
    if crf is not False:
        if probs is None:
            raise ValueError("result.probs must hold the class probabilities for the CRF, got None")
        from medseg.postprocess import dense_crf

        params = dict(stored.get("crf") or {}) if crf is True else dict(crf)
        dev = resolve_device(device)
        q = dense_crf(
            torch.from_numpy(np.ascontiguousarray(probs)).to(dev),
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(dev),
            spacing_mm=tuple(float(s) for s in spacing_mm),
            **params,
        )
        best = q.max(0)
        labels = best.indices.to(torch.uint8).cpu().numpy()
        conf = best.values.float().cpu().numpy()
        probs = q.float().cpu().numpy()
    decision = stored.get("cleanup") if cleanup else None
    if decision and (decision.get("foreground") or decision.get("classes")):
        from medseg.postprocess import CleanupDecision, apply_cleanup

        labels = apply_cleanup(
            labels,
            CleanupDecision(
                foreground=bool(decision.get("foreground")),
                classes=tuple(int(c) for c in decision.get("classes", ())),
                connectivity=int(decision.get("connectivity", 3)),
                candidates=(),
            ),
        )
    if labels is result.labels and (keep_probs or probs is None):
        return result
    return Reassembled(labels, conf, probs if keep_probs else None)


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


def load_model(name_or_path: PathLike = DEFAULT_MODEL, device: str | None = None):
    """A built-in model name or checkpoint path -> ``(checkpoint, model)`` ready to predict
    (eval mode, BatchNorm folded into the convolutions: :func:`medseg.models.fold_batch_norm`)."""
    from medseg.models import fold_batch_norm

    ckpt = load_checkpoint(name_or_path)
    return ckpt, fold_batch_norm(ckpt.build_model(resolve_device(device)))
