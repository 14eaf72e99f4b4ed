"""The results of the notebook API (:mod:`medseg.api`): :class:`Segmentation`, a segmented
volume from :func:`medseg.api.predict_volume` (volumes in mL, statistics, plot, ``save``), and
:class:`CellSegmentation`, the objects from :func:`medseg.api.segment_cells` (overlay, object
table).

:mod:`medseg.api` re-exports both classes under their old import path, and the lazy table of
:mod:`medseg` exports them as ``medseg.Segmentation`` and ``medseg.CellSegmentation``. Arrays
follow ARCHITECTURE.md section 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medseg.io import Geometry, to_nifti, write_label
from medseg.typing import LabelArray, PathLike

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
        scale: The scale the network saw the image at (1.0: as it is; 0.25: shrunk 4x
            to the training objects' size, :mod:`medseg.object_size`).
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
    scale: float = 1.0

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
