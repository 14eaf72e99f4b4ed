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
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medseg import options
from medseg.checkpoint import Checkpoint
from medseg.io import (
    Geometry,
    Volume,
    check_same_grid,
    read_image,
    read_instances,
    read_label,
    to_nifti,
    volume_from_nifti,
    write_label,
)
from medseg.predict import (
    DEFAULT_MODEL,
    load_predictor,
    resolve_device,
    segment_objects,
    segment_volume,
)
from medseg.typing import LabelArray, PathLike

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
        return "cells" if str(self.checkpoint.inference.get("mode")) == "tile" else "brain"

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
            how = f"2.5D, {int(ckpt.patch['num_slices'])} slices, {int(ckpt.patch['size'])} px"
        else:
            how = f"2D overlap-tile, {int(ckpt.inference.get('tile_size', 0))} px tiles"
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
# Inputs


def _geometry_for_array(
    spacing_mm: Sequence[float] | None, affine: np.ndarray | None, *, warn: bool
) -> Geometry:
    """Geometry of an array input: from ``affine`` and/or ``spacing_mm``, else 1 mm."""
    if affine is not None:
        matrix = np.asarray(affine, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise ValueError(f"affine must be a (4, 4) array, got shape {matrix.shape}")
        if spacing_mm is None:  # voxel sizes = lengths of the affine's x, y, z columns
            x, y, z = np.linalg.norm(matrix[:3, :3], axis=0)
            spacing_mm = (float(z), float(y), float(x))
        return Geometry(tuple(spacing_mm), matrix)  # type: ignore[arg-type]
    if spacing_mm is None and warn:
        warnings.warn(
            "spacing_mm was not given for an array image; assuming 1 mm isotropic voxels "
            "(volumes in mL and the axial slice axis depend on it): pass spacing_mm=(z, y, x) "
            "or affine=",
            stacklevel=4,  # the caller of predict_volume
        )
    if spacing_mm is None:
        spacing_mm = (1.0, 1.0, 1.0)
    return Geometry.from_spacing(tuple(spacing_mm))  # type: ignore[arg-type]


def _image_volume(
    image: Any,
    *,
    spacing_mm: Sequence[float] | None,
    affine: np.ndarray | None,
    channels_last: bool = False,
    cells: bool = False,
) -> Volume:
    """A path, nibabel or SimpleITK image, Volume or array -> float32 (C, Z, Y, X) with its
    geometry."""
    import nibabel as nib

    if isinstance(image, (str, os.PathLike, nib.Nifti1Image, Volume)):
        given = [k for k, v in (("spacing_mm", spacing_mm), ("affine", affine)) if v is not None]
        if given:
            raise ValueError(
                f"{given[0]} must be None for a file, nibabel image or Volume (it carries its "
                f"geometry), got {spacing_mm if given[0] == 'spacing_mm' else 'an affine'}"
            )
        if channels_last:
            raise ValueError(
                "channels_last must be False for a file, nibabel image or Volume (its channel "
                "axis is known), got True"
            )
        if isinstance(image, (str, os.PathLike)):
            return read_image(image)
        if isinstance(image, Volume):  # e.g. from medseg.read_image
            array = image.array if image.array.ndim == 4 else image.array[None]
            return Volume(np.asarray(array, dtype=np.float32), image.geometry, image.path)
        return volume_from_nifti(image)
    if type(image).__module__.startswith("SimpleITK"):  # without importing SimpleITK first
        from medseg.io import volume_from_sitk

        if spacing_mm is not None or affine is not None or channels_last:
            raise ValueError(
                "spacing_mm, affine and channels_last must be unset for a SimpleITK image "
                "(it carries its geometry and channel axis), got one set"
            )
        return volume_from_sitk(image)
    if isinstance(image, torch.Tensor):
        raise TypeError(
            "image must be a numpy array, a path or a nibabel image, got a torch.Tensor"
        )
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"image must be a file path, a nibabel.Nifti1Image, a SimpleITK.Image or a numpy "
            f"array, got "
            f"{type(image).__name__}"
        )
    if image.dtype.kind not in "iuf" or image.size == 0:
        raise ValueError(
            f"image must be a non-empty array of real numbers, got dtype {image.dtype} "
            f"and shape {image.shape}"
        )
    if channels_last:
        if image.ndim != 3 or image.shape[-1] not in (1, 3):
            raise ValueError(
                f"image with channels_last=True must be (Y, X, C) with C 1 or 3, got shape "
                f"{image.shape}; drop an alpha channel with image[..., :3]"
            )
        array = np.moveaxis(image, -1, 0)[:, None]  # (Y, X, C) -> (C, 1, Y, X)
    elif image.ndim == 4:
        array = image
    elif cells and image.ndim == 2:
        array = image[None, None]  # (Y, X) -> (1, 1, Y, X)
    elif not cells and image.ndim == 3:
        array = image[None]  # (Z, Y, X) -> (1, Z, Y, X)
    else:
        accepted = (
            "(Y, X) grey, (C, Z, Y, X), or (Y, X, C) with channels_last=True"
            if cells
            else "(Z, Y, X) or (C, Z, Y, X)"
        )
        raise ValueError(f"image must be {accepted}, got shape {image.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    num_bad = int(np.count_nonzero(~np.isfinite(array)))
    if num_bad:
        raise ValueError(f"image must have finite intensities, got {num_bad} NaN/Inf voxel(s)")
    # microscopy arrays, like PNG files, default to 1 unit per pixel without a warning
    return Volume(array, _geometry_for_array(spacing_mm, affine, warn=not cells))


def _describe(volume: Volume) -> str:
    return f"image {str(volume.path)!r}" if volume.path is not None else "image"


# --------------------------------------------------------------------------------------
# Brain volumes


@dataclass(frozen=True, eq=False, repr=False)
class Segmentation:
    """A segmented volume in the input's geometry (from :func:`predict_volume`).

    Attributes:
        labels: Predicted classes, uint8 ``(Z, Y, X)``, values keys of ``label_names``.
        confidence: float32 ``(Z, Y, X)`` in [0, 1]: the vote agreement (fraction of the
            overlapping patches that voted for the winner) in vote mode, else the winner's
            probability (``fast=True``, mean modes, CRF).
        geometry: Spacing ``(z, y, x)`` in mm and affine of the input; with the input's
            NIfTI header when it came from NIfTI.
        label_names: Class value -> name, background (0) included.
        model: The model's name.
        probs: Class probabilities, float32 ``(K, Z, Y, X)``, or None unless requested.
        source: The input file, or None for in-memory input.
        brain_mask: bool ``(Z, Y, X)``: the brain mask (brain models), else None.
        brain_is_intracranial: Whether ``brain_mask`` is the intracranial region (its
            volume is the TIV) rather than only the image's foreground.
        skull_strip: How the skull was handled, one line (e.g. ``"auto: skull found ...;
            stripped with deepbet"``), or ``""``.
        image: The input's intensities (its first channel), float32 ``(Z, Y, X)``, for
            :meth:`plot`; None if not kept.
    """

    labels: LabelArray
    confidence: np.ndarray
    geometry: Geometry
    label_names: dict[int, str]
    model: str
    probs: np.ndarray | None = None
    source: Path | None = None
    brain_mask: np.ndarray | None = None
    skull_strip: str = ""
    brain_is_intracranial: bool = False
    image: np.ndarray | None = None

    def plot(
        self,
        image: np.ndarray | None = None,
        *,
        z: int | None = None,
        y: int | None = None,
        x: int | None = None,
        title: str | None = None,
    ) -> Any:
        """Three orthogonal slices of the input with the tissues overlaid (and the brain
        mask's outline), through the brain's centre unless ``z``/``y``/``x`` say where.

        Args:
            image: Intensities ``(Z, Y, X)`` to draw under the labels (default: the input
                kept in :attr:`image`).
            z, y, x: Voxel indices of the slices.
            title: Figure title (default: the model, the source and the volumes).

        Returns:
            A ``matplotlib.figure.Figure``; a notebook shows it, ``fig.savefig("x.png")``
            writes it.

        Raises:
            ValueError: no image kept or given, or an index outside the volume.
        """
        from medseg.visualize import overlay_figure

        base = self.image if image is None else np.asarray(image, dtype=np.float32)
        if base is None:
            raise ValueError(
                "image must be given to plot this Segmentation (its input was not kept), got None"
            )
        if title is None:
            source = f" of {self.source.name}" if self.source is not None else ""
            title = f"{self.model}{source}: " + ", ".join(
                f"{r.tissue} {r.volume_ml:.0f} mL" for r in self.volumes().itertuples()
            )
        return overlay_figure(
            base,
            self.labels,
            spacing_mm=self.geometry.spacing_mm,
            label_names=self.label_names,
            title=title,
            mask=self.brain_mask,
            cut=(z, y, x),
        )

    @property
    def tiv_ml(self) -> float | None:
        """Volume of the brain mask in mL (the intracranial volume), or None (no brain
        model, or a brain mask that is only the image's foreground: ``skull_strip="never"``,
        a partial view)."""
        if self.brain_mask is None or not self.brain_is_intracranial:
            return None
        return float(self.brain_mask.sum()) * math.prod(self.geometry.spacing_mm) / 1000.0

    @property
    def label_image(self) -> Any:
        """The label map as a ``nibabel.Nifti1Image`` (uint8) in the input's geometry.

        Same affine and shape as the input (and its header, for NIfTI input), so it
        overlays the input in any viewer; ``nibabel.save(seg.label_image, "seg.nii.gz")``
        writes it (or use :meth:`save`, which writes atomically and any format).
        """
        return to_nifti(self.labels, self.geometry)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size ``(z, y, x)`` in mm."""
        return self.geometry.spacing_mm

    def volumes(self) -> pd.DataFrame:
        """Volume of each labelled class, in mL.

        Returns:
            One row per non-background class in ``label_names`` (ascending value), columns
            ``label`` (int), ``tissue`` (str), ``num_voxels`` (int) and ``volume_ml``
            (voxels x prod(spacing_mm) mm^3 / 1000, float).
        """
        voxel_ml = math.prod(self.geometry.spacing_mm) / 1000.0
        values = sorted(k for k in self.label_names if k != 0)
        counts = np.bincount(self.labels.ravel(), minlength=max(values, default=0) + 1)
        return pd.DataFrame(
            {
                "label": np.asarray(values, dtype=np.int64),
                "tissue": [self.label_names[k] for k in values],
                "num_voxels": counts[values].astype(np.int64),
                "volume_ml": counts[values] * voxel_ml,
            }
        )

    def statistics(self) -> dict[str, float]:
        """Tissue volumes, brain volume, ICV, GM fraction and mean agreement.

        Returns:
            :func:`medseg.cohort.tissue_statistics` of this label map and its confidence:
            ``"<name>_ml"`` per tissue, ``"brain_ml"`` (GM + WM), ``"icv_ml"`` (every
            non-background label), ``"gm_fraction"`` and ``"mean_agreement"`` (the mean
            confidence over non-background voxels); brain keys are NaN for models without
            GM / WM / CSF classes.
        """
        from medseg.cohort import tissue_statistics

        return tissue_statistics(
            self.labels,
            spacing_mm=self.geometry.spacing_mm,
            label_names=self.label_names,
            confidence=self.confidence,
        )

    def save(self, path: PathLike, *, overwrite: bool = False) -> Path:
        """Write the label map atomically in the input's geometry (:func:`medseg.io.write_label`).

        Args:
            path: Output file; the format follows the suffix (``.nii.gz``, ``.mha``, ...).
            overwrite: Replace an existing file.

        Returns:
            ``path``.

        Raises:
            FileExistsError: if ``path`` exists and ``overwrite`` is False.
        """
        return write_label(path, self.labels, self.geometry, overwrite=overwrite)

    def __repr__(self) -> str:
        vols = ", ".join(f"{r.tissue} {r.volume_ml:.1f} mL" for r in self.volumes().itertuples())
        spacing = tuple(round(s, 4) for s in self.geometry.spacing_mm)
        return (
            f"Segmentation(model={self.model!r}, shape (Z, Y, X)={self.labels.shape}, "
            f"spacing_mm={spacing}, {vols})"
        )


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
    if volume.spatial_shape[0] == 1 and int(ckpt.patch.get("num_slices", 1)) > 1:
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


@dataclass(frozen=True, eq=False, repr=False)
class CellSegmentation:
    """Objects found in a microscopy image (from :func:`segment_cells`).

    Attributes:
        mask: Predicted classes, uint8 ``(Z, Y, X)`` (Z == 1 for a 2D image), e.g.
            0 background / 1 nucleus interior / 2 nucleus boundary for the built-in
            ``nuclei`` model (the model's ``label_names``).
        instances: Object ids, int32 ``(Z, Y, X)``: 0 background, 1..N one per object.
        confidence: The winner's probability, float32 ``(Z, Y, X)`` in [0, 1].
        image: The input intensities as given (not normalised), float32 ``(C, Z, Y, X)``,
            for overlays.
        geometry: Spacing ``(z, y, x)`` in mm (1 mm per pixel when the file has none).
        label_names: Class value -> name.
        model: The model's name.
        probs: Class probabilities, float32 ``(K, Z, Y, X)``, or None unless requested.
        source: The input file, or None for in-memory input.
    """

    mask: LabelArray
    instances: LabelArray
    confidence: np.ndarray
    image: np.ndarray
    geometry: Geometry
    label_names: dict[int, str]
    model: str
    probs: np.ndarray | None = None
    source: Path | None = None

    @property
    def num_objects(self) -> int:
        """N, the number of objects (distinct non-zero ids)."""
        ids = np.unique(self.instances)
        return int(np.count_nonzero(ids))

    def overlay(self, *, z: int | None = None, alpha: float = 0.35) -> np.ndarray:
        """The objects over the image: tinted interiors, outlines, one colour per object.

        Args:
            z: The slice to draw (default: the middle one; 0 for a 2D image).
            alpha: Opacity of the interior tint.

        Returns:
            RGB, uint8 ``(Y, X, 3)`` (:func:`medseg.visualize.instance_overlay_rgb`).
        """
        from medseg.visualize import instance_overlay_rgb

        num_slices = self.instances.shape[0]
        index = num_slices // 2 if z is None else z
        if not 0 <= index < num_slices:
            raise ValueError(f"z must be in 0..{num_slices - 1}, got {z}")
        return instance_overlay_rgb(self.image[:, index], self.instances[index], alpha=alpha)

    def table(self) -> Any:
        """One row per object: id, area (px, and µm² when the pixel size is known),
        centroid and mean intensity (:func:`medseg.object_table.object_table`, what
        ``medseg predict --table`` writes).

        Returns:
            A pandas DataFrame in increasing id.
        """
        from medseg.object_table import object_table

        return object_table(self.instances, self.image, spacing_mm=self.geometry.spacing_mm)

    def __repr__(self) -> str:
        return (
            f"CellSegmentation(model={self.model!r}, shape (Z, Y, X)={self.mask.shape}, "
            f"{self.num_objects} objects)"
        )


def segment_cells(
    image: PathLike | np.ndarray | Any,
    model: Model | PathLike | Sequence[PathLike] = "nuclei",
    *,
    channels_last: bool = False,
    device: str | None = None,
    objects: Mapping[str, Any] | None = None,
    return_probs: bool = False,
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

    Returns:
        The :class:`CellSegmentation`: ``mask``, ``instances``, ``num_objects``,
        ``overlay()``.

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
    result, instances = segment_objects(
        volume,
        net.checkpoint,
        net.network.to(dev).eval(),
        what=what,
        device=dev,
        return_probs=return_probs,
        objects=overrides,
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
    )


# --------------------------------------------------------------------------------------
# Evaluation


def _label_volume(value: Any, name: str, kind: str) -> tuple[Volume | np.ndarray, dict | None]:
    """A label / instance map argument -> (Volume with geometry, or bare array; names)."""
    import nibabel as nib

    if isinstance(value, Segmentation):
        return Volume(value.labels, value.geometry, value.source), value.label_names
    if isinstance(value, CellSegmentation):
        array = value.mask if kind == "label" else value.instances
        return Volume(array, value.geometry, value.source), value.label_names
    if isinstance(value, (str, os.PathLike)):
        reader = read_label if kind == "label" else read_instances
        return reader(value), None
    if isinstance(value, nib.Nifti1Image):
        return volume_from_nifti(value, kind=kind), None
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise TypeError(
                f"{name} must be an integer array, got dtype {value.dtype}; cast explicitly, "
                "e.g. np.rint(x).astype(np.uint8)"
            )
        if kind == "instances" and value.ndim == 2:
            return value[None], None  # (Y, X) -> (1, Y, X)
        if value.ndim != 3:
            raise ValueError(
                f"{name} must be a (Z, Y, X) array, got shape {value.shape}; "
                "use shape (1, Y, X) for 2D data"
            )
        return value, None
    raise TypeError(
        f"{name} must be a Segmentation, a file path, a nibabel.Nifti1Image or a numpy array, "
        f"got {type(value).__name__}"
    )


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


def _spacing_of(volumes: list[Volume], spacing_mm: Sequence[float] | None) -> Sequence[float]:
    """The spacing to evaluate with: given, or the inputs' (which must then agree)."""
    if not volumes:
        if spacing_mm is None:
            raise ValueError(
                "spacing_mm must be given for arrays without geometry, got None; "
                "pass spacing_mm=(z, y, x) in mm"
            )
        return spacing_mm
    known = volumes[0].geometry.spacing_mm
    if spacing_mm is not None and not np.allclose(spacing_mm, known, rtol=0, atol=1e-3):
        raise ValueError(
            f"spacing_mm must match the inputs' geometry {known}, got {tuple(spacing_mm)}; "
            "leave it out to use the geometry"
        )
    return known


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
