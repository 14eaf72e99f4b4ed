"""The public Python API: segment images in memory, get arrays, tables and nibabel images.

Five functions cover what the notebooks and most scripts need, with results that stay
in memory (numpy arrays, pandas DataFrames, nibabel images) instead of only files:

* :func:`load_model`: a built-in model (``"brain-tissue"``, ``"brain-tissue-unetpp"``,
  ``"nuclei"``, ``"em-membrane"``), a checkpoint file, or several of them as an ensemble ->
  :class:`Model`.
* :func:`predict_volume`: a 3D brain MRI volume (file, nibabel or SimpleITK image, array) ->
  :class:`Segmentation` (labels, confidence, optional probabilities, the label map as a
  nibabel image in the input's exact geometry, tissue volumes in mL, ``save``).
* :func:`segment_cells`: a 2D microscopy image -> :class:`CellSegmentation` (class mask,
  instance map, overlay).
* :func:`evaluate`: per-tissue Dice, IoU, HD95, BF ... of a label map against a reference
  (:func:`medseg.report.evaluate_case`); :func:`evaluate_objects`: the object metrics (AP,
  F1 at IoU 0.5, ...) of an instance map (:func:`medseg.report.evaluate_instances`).

Prediction runs the same in-memory core as :func:`medseg.predict.predict_case` (which
``medseg predict`` runs), :func:`medseg.predict.segment_volume` and
:func:`medseg.predict.segment_objects`, so a file gives the same labels here and on the
command line.

Arrays follow ARCHITECTURE.md section 2: an image is ``(C, Z, Y, X)``, a label map ``(Z, Y, X)``.
A nibabel image's data are ``(x, y, z)``: pass the nibabel image itself (its geometry
comes with it), never its data array, which is in the other axis order.

The result classes :class:`Segmentation` and :class:`CellSegmentation` live in
:mod:`medseg.results` and keep their import path here (ARCHITECTURE.md section 1); the
conversions of image and label-map arguments are in :mod:`medseg._api_inputs`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from medseg import options
from medseg._api_inputs import _describe, _image_volume, _label_volume, _spacing_of
from medseg.checkpoint import Checkpoint
from medseg.io import Volume, check_same_grid
from medseg.predict import (
    DEFAULT_MODEL,
    load_predictor,
    resolve_device,
    segment_objects_scaled,
    segment_volume,
)
from medseg.results import (  # noqa: F401  (re-exported: their home is results)
    CellSegmentation,
    Segmentation,
)
from medseg.typing import PathLike

MODEL_KINDS = ("brain", "cells")
""":attr:`Model.kind`: ``"brain"`` (2.5D volume model) or ``"cells"`` (2D object model)."""

REASSEMBLY_MODES = options.REASSEMBLY_MODES
OBJECT_OPTIONS = (
    "method",
    "min_size",
    "fill_gaps",
    "seed_threshold",
    "seed_distance",
    "sigma",
    "mask_threshold",
    "merge_threshold",
)
"""Keys of :func:`segment_cells`'s ``objects`` overrides."""


# --------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True, eq=False, repr=False)
class Model:
    """A loaded model: its checkpoint (settings) and its network (weights), ready to predict.

    Make one with :func:`load_model`.

    Attributes:
        checkpoint: The (first) checkpoint: normalisation, patch geometry, inference and
            post-processing settings, label names.
        network: The network, or a :class:`medseg.ensemble.CombinedPredictor` for an
            ensemble and/or test-time augmentation; in eval mode.
        names: The model names or checkpoint paths it was loaded from.
        tta: Test-time augmentation, ``"none"`` or ``"flip"``.
    """

    checkpoint: Checkpoint
    network: torch.nn.Module
    names: tuple[str, ...]
    tta: str = "none"

    @property
    def name(self) -> str:
        """The model's name, e.g. ``"brain-tissue"``; ensemble members joined by ``+``."""
        return "+".join(self.names)

    @property
    def kind(self) -> str:
        """``"cells"`` for 2D object models (overlap-tile inference), else ``"brain"``."""
        return "cells" if self.checkpoint.is_tile_model else "brain"

    @property
    def label_names(self) -> dict[int, str]:
        """Class value -> name, background (0) included, e.g. ``{0: "background", 1: "CSF"}``."""
        return dict(self.checkpoint.label_names)

    @property
    def num_classes(self) -> int:
        """K, the number of classes the network predicts (background included)."""
        return self.checkpoint.num_classes

    @property
    def image_channels(self) -> int:
        """C, the channels of the images it takes (1 grey, 3 RGB)."""
        return self.checkpoint.image_channels

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        return next(self.network.parameters()).device

    def __repr__(self) -> str:
        ckpt = self.checkpoint
        if self.kind == "brain":
            how = f"2.5D, {ckpt.num_slices} slices, {ckpt.patch_settings.size} px"
        else:
            how = f"2D overlap-tile, {ckpt.inference_settings.tile_size} px tiles"
        members = f", {len(self.names)} members" if len(self.names) > 1 else ""
        tta = f", tta={self.tta!r}" if self.tta != "none" else ""
        return (
            f"Model({self.name!r}, kind={self.kind!r} ({ckpt.model_name}, {how}{members}), "
            f"channels={self.image_channels}, classes={self.label_names}{tta}, "
            f"device={str(self.device)!r})"
        )


def load_model(
    name_or_path: PathLike | Sequence[PathLike] = DEFAULT_MODEL,
    *,
    device: str | None = "auto",
    tta: str = "none",
    combine: str = "mean",
) -> Model:
    """Load a model by built-in name or checkpoint path, or several as an ensemble.

    Args:
        name_or_path: ``"brain-tissue"`` or the slower, more accurate
            ``"brain-tissue-unetpp"`` (3D T1 brain MRI: CSF, GM, WM), ``"nuclei"`` or
            ``"em-membrane"`` (2D microscopy), a checkpoint file, or a list of these to
            ensemble (they must share input geometry, normalisation and classes).
        device: Where the network lives: ``"auto"`` (CUDA if available, else CPU),
            ``"cpu"`` or ``"cuda[:N]"``.
        tta: Test-time augmentation: ``"none"`` or ``"flip"`` (four in-plane mirrorings).
        combine: How ensemble members and TTA views combine: ``"mean"`` probabilities or
            ``"vote"`` (:mod:`medseg.ensemble`).

    Returns:
        The :class:`Model`.

    Raises:
        FileNotFoundError: for a name that is neither built in nor an existing file.
        ValueError: for an unknown ``tta`` / ``combine``, an unavailable device, or
            ensemble members that do not match.

    Example:
        >>> model = load_model("nuclei", device="cpu")
        >>> model.kind, model.num_classes, model.label_names[1]
        ('cells', 3, 'interior')
    """
    if isinstance(name_or_path, (str, os.PathLike)):
        names: list[PathLike] = [name_or_path]
    elif isinstance(name_or_path, Sequence):
        names = list(name_or_path)
    else:
        raise TypeError(
            f"name_or_path must be a model name, a checkpoint path or a list of them, got "
            f"{type(name_or_path).__name__}"
        )
    if not names:
        raise ValueError("name_or_path must name at least one model, got an empty list")
    ckpt, network = load_predictor(names, device=device, tta=tta, combine=combine)
    return Model(ckpt, network.eval(), tuple(str(n) for n in names), tta)


def _as_model(model: Model | PathLike | Sequence[PathLike], device: str | None) -> Model:
    """A Model, loading it when given names; moved to ``device`` when that is given."""
    if isinstance(model, Model):
        if device is not None:
            model.network.to(resolve_device(device))
        return model
    return load_model(model, device=device or "auto")


# --------------------------------------------------------------------------------------
# Brain volumes


def predict_volume(
    image: PathLike | np.ndarray | Any,
    model: Model | PathLike | Sequence[PathLike] = DEFAULT_MODEL,
    *,
    spacing_mm: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
    device: str | None = None,
    fast: bool = False,
    mode: str | None = None,
    crf: bool | dict[str, Any] = False,
    return_probs: bool = False,
    skull_strip: str = "auto",
    n4: bool = False,
    precision: str = "auto",
) -> Segmentation:
    """Segment a 3D volume (brain MRI) with a 2.5D model; the friendly, in-memory entry point.

    Runs the same steps as ``medseg predict`` (:func:`medseg.predict.predict_case`), so a
    file gives the same labels here: for brain models, brain extraction when the skull is
    still on and the model's grid (:mod:`medseg.preprocess`); normalisation from the
    checkpoint, patches on the slice axis nearest to axial, majority vote (or whole slices
    with ``fast``), the checkpoint's clean-up, and optionally the CRF.

    Args:
        image: A file path (NIfTI, MetaImage, NRRD, TIFF, or a DICOM folder), a
            ``nibabel.Nifti1Image``, a ``SimpleITK.Image``, a :class:`medseg.io.Volume` (from
            :func:`medseg.read_image`), or intensities as a numpy array ``(Z, Y, X)`` or
            ``(C, Z, Y, X)`` (any real dtype; z is the first axis: pass nibabel images
            themselves, not their ``(x, y, z)`` data).
        model: A :class:`Model`, or what :func:`load_model` takes (default
            ``"brain-tissue"``).
        spacing_mm: Voxel size ``(z, y, x)`` in mm, for an array only (default: from
            ``affine``, else 1 mm with a warning).
        affine: Voxel ``(x, y, z)`` -> world (RAS, mm) 4 x 4 matrix, for an array only
            (default: axis-aligned with ``spacing_mm``).
        device: Where the network runs: ``"auto"``, ``"cpu"``, ``"cuda[:N]"``; None keeps a
            given Model where it is (``"auto"`` when loading by name). A Model's network is
            moved there.
        fast: One pass over whole slices instead of overlapping patches (several times
            faster; confidence is then the winner's probability).
        mode: Patch reassembly, ``"vote"``, ``"mean"`` or ``"gaussian"`` (default: the
            checkpoint's); ignored with ``fast``.
        crf: Refine with the fully connected CRF: True (the checkpoint's tuned parameters)
            or a dict of :func:`medseg.postprocess.dense_crf` arguments.
        return_probs: Keep the class probabilities float32 ``(K, Z, Y, X)`` (K x 4 bytes
            per voxel).
        skull_strip: Brain models: ``"auto"`` (strip with deepbet only if the skull is
            on), ``"always"`` or ``"never"``.
        n4: Brain models: N4 bias-field correction inside the brain mask.
        precision: ``"auto"`` (bfloat16 where the device computes it natively: CUDA, CPUs
            with AMX or AVX-512 BF16; else float32), ``"fp32"`` or ``"bf16"``.

    Returns:
        The :class:`Segmentation`: ``labels`` uint8 ``(Z, Y, X)``, ``confidence``,
        ``probs``, ``label_image`` (nibabel), ``volumes()`` (mL), ``save(path)``,
        ``brain_mask`` and ``tiv_ml``.

    Raises:
        FileNotFoundError: for a missing file or unknown model name.
        TypeError: for an unsupported image type.
        ValueError: for a 2D image (Z == 1), a 2D object model (use
            :func:`segment_cells`), the wrong number of channels, a bad shape, NaN/Inf
            intensities, a constant image, ``spacing_mm`` / ``affine`` given with a file,
            or an unknown ``mode``.

    See also:
        :func:`medseg.predict.predict_volume`, the array-level core this calls: it takes a
        network, an already normalised float32 ``(C, Z, Y, X)`` image and a
        :class:`medseg.patches.PatchSpec`, and returns a
        :class:`medseg.patches.Reassembled` without geometry or post-processing.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> volume = rng.uniform(1, 100, (12, 24, 20)).astype(np.float32)  # (Z, Y, X)
        >>> seg = predict_volume(volume, "brain-tissue", spacing_mm=(1.5, 1.0, 1.0),
        ...                      device="cpu", fast=True, skull_strip="never")
        >>> seg.labels.shape, seg.labels.dtype.name, seg.label_image.shape  # (x, y, z)
        ((12, 24, 20), 'uint8', (20, 24, 12))
    """
    if mode is not None and mode not in REASSEMBLY_MODES:
        raise ValueError(f"mode must be None or one of {', '.join(REASSEMBLY_MODES)}, got {mode!r}")
    from medseg.preprocess import SKULL_STRIP_MODES

    if skull_strip not in SKULL_STRIP_MODES:
        raise ValueError(
            f"skull_strip must be one of {', '.join(SKULL_STRIP_MODES)}, got {skull_strip!r}"
        )
    volume = _image_volume(image, spacing_mm=spacing_mm, affine=affine)
    net = _as_model(model, device)
    what = _describe(volume)
    if net.kind != "brain":
        raise ValueError(
            f"model must be a 2.5D volume model for predict_volume, got {net.name!r}, a 2D "
            "object model; use medseg.segment_cells for microscopy images"
        )
    ckpt = net.checkpoint
    if volume.spatial_shape[0] == 1 and ckpt.num_slices > 1:
        raise ValueError(
            f"{what} must be 3D (Z > 1) for the 2.5D model {net.name!r}, got shape (C, Z, Y, X) "
            f"{volume.array.shape}; give a 3D volume, or use medseg.segment_cells with a 2D "
            "model (nuclei, em-membrane) for 2D images"
        )
    dev = resolve_device(device) if device is not None else net.device
    result = segment_volume(
        volume,
        ckpt,
        net.network,
        what=what,
        device=dev,
        mode=mode,
        fast=fast,
        return_probs=return_probs,
        crf=crf,
        cleanup=True,
        skull_strip=None if skull_strip == "auto" else skull_strip,
        n4=n4,
        precision=precision,
    )
    return Segmentation(
        labels=result.labels,
        confidence=result.confidence,
        geometry=volume.geometry,
        label_names=net.label_names,
        model=net.name,
        probs=result.probs,
        source=volume.path,
        brain_mask=None if result.brain is None else result.brain.mask,
        skull_strip="" if result.brain is None else result.brain.reason,
        brain_is_intracranial=result.brain is not None and result.brain.is_brain,
        image=np.asarray(volume.array[0], dtype=np.float32),
    )


# --------------------------------------------------------------------------------------
# Cells (2D objects)


def segment_cells(
    image: PathLike | np.ndarray | Any,
    model: Model | PathLike | Sequence[PathLike] = "nuclei",
    *,
    channels_last: bool = False,
    device: str | None = None,
    objects: Mapping[str, Any] | None = None,
    return_probs: bool = False,
    diameter: float | str | None = None,
) -> CellSegmentation:
    """Find the objects (nuclei, cells) in a 2D microscopy image with a 2D model.

    Runs the same steps as ``medseg predict -m nuclei`` (:func:`medseg.predict.predict_case`):
    normalisation from the checkpoint, overlap-tile prediction
    (:func:`medseg.tiling.predict_tiled`), then objects from the class mask as the
    checkpoint's post-processing says (:func:`medseg.instances.instances_from_prediction`).
    A grey image given to a model trained on RGB is repeated into three channels.

    Args:
        image: A file path (PNG, TIFF, ...), a ``nibabel.Nifti1Image``, a
            ``SimpleITK.Image``, a :class:`medseg.io.Volume`, or a numpy array:
            ``(Y, X)`` grey, ``(C, Z, Y, X)`` (C = 1 or 3; Z > 1 is predicted slice by
            slice and objects are joined in 3D), or ``(Y, X, C)`` RGB with
            ``channels_last=True`` (as Pillow and scikit-image give it). A 3D array
            without ``channels_last`` is refused: (Y, X, 3) and (Z, Y, X) look alike.
        model: A :class:`Model`, or what :func:`load_model` takes (default ``"nuclei"``).
        channels_last: The array is ``(Y, X, C)``.
        device: As :func:`predict_volume`.
        objects: Overrides of the checkpoint's post-processing: ``method``
            (``"components"`` or ``"watershed"``), ``min_size`` (pixels), ``fill_gaps``.
        return_probs: Keep the class probabilities float32 ``(K, Z, Y, X)``.
        diameter: The objects' typical diameter in pixels, ``"auto"`` or ``"none"``, as
            ``medseg predict --diameter`` (None: the model's setting;
            :func:`medseg.predict.segment_objects_scaled`).

    Returns:
        The :class:`CellSegmentation`: ``mask``, ``instances``, ``num_objects``,
        ``overlay()``, ``scale``.

    Raises:
        FileNotFoundError: for a missing file or unknown model name.
        TypeError: for an unsupported image type.
        ValueError: for a volume model (use :func:`predict_volume`), a bad shape, the wrong
            number of channels (an RGB image to a grey model), a constant image or bad
            ``objects``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> image = rng.uniform(0, 255, (40, 50)).astype(np.float32)  # (Y, X) grey
        >>> cells = segment_cells(image, "nuclei", device="cpu")
        >>> cells.mask.shape, cells.instances.dtype.name, cells.overlay().shape
        ((1, 40, 50), 'int32', (40, 50, 3))
    """

    overrides = dict(objects or {})
    unknown = sorted(set(overrides) - set(OBJECT_OPTIONS))
    if unknown:
        raise ValueError(f"objects keys must be among {', '.join(OBJECT_OPTIONS)}, got {unknown}")
    from medseg.instances import OBJECT_METHODS

    if overrides.get("method", "components") not in OBJECT_METHODS:
        raise ValueError(
            f"objects['method'] must be one of {list(OBJECT_METHODS)}, got {overrides['method']!r}"
        )
    volume = _image_volume(
        image, spacing_mm=None, affine=None, channels_last=channels_last, cells=True
    )
    net = _as_model(model, device)
    what = _describe(volume)
    if net.kind != "cells":
        raise ValueError(
            f"model must be a 2D object model for segment_cells (nuclei, em-membrane), got "
            f"{net.name!r}, a 2.5D volume model; use medseg.predict_volume for volumes"
        )
    dev = resolve_device(device) if device is not None else net.device
    result, instances, scale = segment_objects_scaled(
        volume,
        net.checkpoint,
        net.network.to(dev).eval(),
        what=what,
        device=dev,
        return_probs=return_probs,
        objects=overrides,
        diameter=diameter,
    )
    return CellSegmentation(
        mask=result.labels,
        instances=instances,
        confidence=result.confidence,
        image=volume.array,
        geometry=volume.geometry,
        label_names=net.label_names,
        model=net.name,
        probs=result.probs,
        source=volume.path,
        scale=scale,
    )


# --------------------------------------------------------------------------------------
# Evaluation


def evaluate(
    pred: Segmentation | PathLike | np.ndarray | Any,
    target: PathLike | np.ndarray | Any,
    *,
    label_names: Mapping[int, str] | None = None,
    spacing_mm: Sequence[float] | None = None,
    case: str = "case",
    distances: bool = True,
) -> pd.DataFrame:
    """Compare a label map with a reference: one row of metrics per tissue.

    Args:
        pred: The prediction: a :class:`Segmentation`, a label file, a nibabel image or
            an integer array ``(Z, Y, X)``.
        target: The reference (e.g. manual labels), in the same forms, same voxel grid.
        label_names: Label value -> tissue name; default: the Segmentation's. Every value
            in pred or target must be 0 or named.
        spacing_mm: Voxel size ``(z, y, x)`` in mm; default: from pred or target when
            they carry a geometry (needed for arrays only).
        case: Written in the ``case`` column.
        distances: Compute HD95 / ASSD / HD / BF (the slow part); NaN when False.

    Returns:
        :func:`medseg.report.evaluate_case`'s rows: columns ``case``, ``tissue``, ``label``,
        ``dice``, ``iou``, ``precision``, ``recall``, ``specificity``, ``hd95_mm``,
        ``assd_mm``, ``hd_mm``, ``bf_score``, ``volume_ml``, ``target_volume_ml``,
        ``n_pred``, ``n_target`` (:data:`medseg.report.ROW_COLUMNS`). Case-level values
        (accuracy, mean IoU, weighted Dice, confusion matrix) come from
        :func:`medseg.evaluate_case`.

    Raises:
        TypeError: for an unsupported input type or a non-integer array.
        ValueError: for different voxel grids, a ``spacing_mm`` that contradicts the
            inputs' geometry, missing ``label_names`` / ``spacing_mm``, or the errors of
            :func:`medseg.report.evaluate_case` (unknown label values, ...).

    Example:
        >>> target = np.zeros((2, 3, 4), np.uint8); target[:, 1:, 1:] = 1
        >>> pred = target.copy(); pred[0] = 0
        >>> rows = evaluate(pred, target, label_names={1: "GM"}, spacing_mm=(1, 1, 1))
        >>> rows[["tissue", "dice", "n_pred", "n_target"]].to_dict("records")
        [{'tissue': 'GM', 'dice': 0.6666666666666666, 'n_pred': 6, 'n_target': 12}]
    """
    from medseg.report import evaluate_case

    p, pred_names = _label_volume(pred, "pred", "label")
    t, _ = _label_volume(target, "target", "label")
    with_geometry = [v for v in (p, t) if isinstance(v, Volume)]
    if len(with_geometry) == 2:
        check_same_grid(t, p)  # type: ignore[arg-type]
    names = dict(label_names) if label_names is not None else pred_names
    if names is None:
        raise ValueError(
            "label_names must be given when pred is not a Segmentation, got None; "
            "e.g. {1: 'CSF', 2: 'GM', 3: 'WM'}"
        )
    spacing = _spacing_of(with_geometry, spacing_mm)
    rows, _ = evaluate_case(
        p.array if isinstance(p, Volume) else p,
        t.array if isinstance(t, Volume) else t,
        label_names=names,
        spacing_mm=spacing,
        case=case,
        distances=distances,
    )
    return rows


def evaluate_objects(
    pred_instances: CellSegmentation | PathLike | np.ndarray | Any,
    target_instances: PathLike | np.ndarray | Any,
    *,
    case: str = "case",
) -> dict[str, object]:
    """Object (instance) metrics of a segmentation against reference objects.

    Args:
        pred_instances: A :class:`CellSegmentation`, an instance file (e.g. 16-bit PNG), a
            nibabel image or an integer array ``(Z, Y, X)`` / ``(Y, X)``: 0 background,
            one id per object.
        target_instances: The reference objects, in the same forms, same shape.
        case: Written in the ``case`` key.

    Returns:
        :func:`medseg.report.evaluate_instances`'s row: ``num_pred``, ``num_target``,
        ``pixel_iou``, ``dice``, ``bf_score`` (foreground boundary F1, 2 px), ``pixel_error``,
        ``rand_error``, ``ap`` (DSB2018 mean over IoU thresholds 0.5 ... 0.95), ``ap_50``,
        ``f1_at_05`` (F1 at IoU > 0.5), ``split_rate`` and touching-pair counts.

    Raises:
        TypeError: for an unsupported input type or a non-integer array.
        ValueError: for different shapes or negative ids.

    Example:
        >>> target = np.array([[1, 1, 0, 2, 2, 2]])  # (Y, X)
        >>> pred = np.array([[4, 4, 0, 0, 5, 5]])  # IoU 1 and 2/3
        >>> row = evaluate_objects(pred, target)
        >>> row["num_pred"], row["f1_at_05"], round(row["ap"], 3)
        (2, 1.0, 0.6)
    """
    from medseg.report import evaluate_instances

    p, _ = _label_volume(pred_instances, "pred_instances", "instances")
    t, _ = _label_volume(target_instances, "target_instances", "instances")
    p_array = p.array if isinstance(p, Volume) else p
    t_array = t.array if isinstance(t, Volume) else t
    return evaluate_instances(p_array, t_array, case=case)
