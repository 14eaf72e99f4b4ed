"""Before the model: brain extraction, the model's grid, bias-field correction.

What a scanner or converter writes is rarely what a brain model was trained on. This
module holds the steps that bring a raw T1 to the model and the model's labels back:

* **Brain extraction** (:func:`brain_mask`): ``"auto"`` decides from the image whether it
  still has its skull (:func:`detect_skull_stripped`) and strips it with deepbet (Fisch et
  al., Computers in Biology and Medicine 2024; MIT licence, weights inside its wheel) only
  then; ``"always"`` and ``"never"`` force the choice. The mask also gives the
  intracranial volume (TIV).
* **The model's grid** (:class:`ModelGrid`, :class:`GridMapping`): each checkpoint records
  the orientation and the range of voxel spacings it was trained on. An input is turned
  to that orientation exactly (axis permutation and flips, no interpolation) and resampled
  only along axes whose spacing lies outside the trained range, to the nearest trained
  spacing; predictions go back to the input's exact grid (nearest for labels, linear for
  probabilities and confidence).
* **N4 bias-field correction** (:func:`n4_correct`, SimpleITK's filter, inside the mask).
* **Cropping** (:func:`bounding_box`): the box around a mask plus context, so that the
  sliding window does only useful work.

Arrays follow ARCHITECTURE.md section 2: images float32 ``(C, Z, Y, X)``, masks bool and label
maps uint8 ``(Z, Y, X)``; spacings are ``(z, y, x)`` in mm.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg import options
from medseg.io import Geometry

SKULL_STRIP_MODES = options.SKULL_STRIP_MODES
"""``--skull-strip`` choices."""

STRIPPED_FAR_MM = 10.0
STRIPPED_FAR_FRACTION = 0.05
"""An image counts as skull-stripped when less than ``STRIPPED_FAR_FRACTION`` of its
foreground lies farther than ``STRIPPED_FAR_MM`` from the brain mask found by deepbet: a
raw head's scalp, skull, face and neck lie farther out, while a stripping tool's mask and
deepbet's differ by a few mm at most. Measured (fraction beyond 10 mm): IBSR-18 whole
volumes 0.000, IBSR slabs of 12-60 slices 0.000-0.006 (where deepbet's mask is poor: only
73-83% of their foreground inside it), the MNI152 template 0.000; the raw studyforrest T1
0.50 and slabs of it 0.21-0.49."""

MIN_HEAD_EXTENT_MM = 100.0
"""``auto`` consults deepbet only when the foreground spans at least this along two axes
(an adult brain spans about 140 x 170 x 120 mm): a small crop from inside a brain fills
its whole field of view, and deepbet, which expects a head, would cut it."""

_ORIENTATION_LETTERS = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


# --------------------------------------------------------------------------------------
# Orientation


def orientation_code(geometry: Geometry) -> str:
    """The axis code of a geometry: where voxel axes x, y, z (array X, Y, Z) point.

    Each letter names the world direction, in RAS+ terms, that its voxel axis points to
    (nibabel's convention: ``"RAS"`` means x to the right, y anterior, z superior;
    DICOM's usual ``"LPS"`` means x to the left, y posterior, z superior).

    Example:
        >>> orientation_code(Geometry.from_spacing((1.0, 1.0, 1.0)))
        'RAS'
        >>> orientation_code(Geometry((1.0, 1.0, 1.0), np.diag([-1.0, -1.0, 1.0, 1.0])))
        'LPS'
    """
    import nibabel as nib

    return "".join(nib.aff2axcodes(geometry.affine))


def _check_code(code: str, name: str) -> str:
    letters = str(code).upper()
    axes = sorted({_ORIENTATION_LETTERS[c] if c in "LPI" else c for c in letters})  # L -> R ...
    if len(letters) != 3 or not set(letters) <= set(_ORIENTATION_LETTERS) or axes != list("ARS"):
        raise ValueError(
            f"{name} must be a 3-letter axis code with one of R/L, A/P, S/I each (e.g. 'RAS'), "
            f"got {code!r}"
        )
    return letters


# --------------------------------------------------------------------------------------
# The model's grid


@dataclass(frozen=True)
class ModelGrid:
    """The voxel grid a model was trained on.

    Attributes:
        orientation: Axis code (:func:`orientation_code`) of the training volumes, or None
            when they did not share one (inputs are then not reoriented).
        spacing_mm: The median training spacing ``(z, y, x)`` in mm, in that orientation.
        spacing_range_mm: ``(low, high)``, each ``(z, y, x)`` in mm: the smallest and
            largest training spacing per axis. Inputs inside the range are not resampled.

    Example:
        >>> grid = ModelGrid("RAS", (1.0, 1.5, 1.0), ((0.8, 1.5, 0.8), (1.0, 1.5, 1.0)))
        >>> grid.target_spacing((0.7, 0.7, 0.9))
        (0.8, 1.5, 0.9)
    """

    orientation: str | None
    spacing_mm: tuple[float, float, float]
    spacing_range_mm: tuple[tuple[float, float, float], tuple[float, float, float]]

    def __post_init__(self) -> None:
        if self.orientation is not None:
            object.__setattr__(self, "orientation", _check_code(self.orientation, "orientation"))
        spacing = tuple(float(s) for s in self.spacing_mm)
        low, high = (tuple(float(s) for s in r) for r in self.spacing_range_mm)
        if (
            len(spacing) != 3
            or len(low) != 3
            or len(high) != 3
            or not all(0 < lo <= hi for lo, hi in zip(low, high, strict=True))
            or not all(sp > 0 for sp in spacing)
        ):
            raise ValueError(
                "grid spacing_mm must be 3 positive sizes (z, y, x) and spacing_range_mm "
                f"(low, high) with 0 < low <= high, got {self.spacing_mm!r} and "
                f"{self.spacing_range_mm!r}"
            )
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "spacing_range_mm", (low, high))

    def target_spacing(self, spacing_mm: tuple[float, ...]) -> tuple[float, float, float]:
        """Per axis: the input's spacing if the model was trained at it, else the nearest
        trained spacing (the input spacing clipped to :attr:`spacing_range_mm`)."""
        low, high = self.spacing_range_mm
        z, y, x = (
            float(min(max(s, lo), hi)) for s, lo, hi in zip(spacing_mm, low, high, strict=True)
        )
        return (z, y, x)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint."""
        return {
            "orientation": self.orientation,
            "spacing_mm": list(self.spacing_mm),
            "spacing_range_mm": [list(self.spacing_range_mm[0]), list(self.spacing_range_mm[1])],
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelGrid:
        """Inverse of :meth:`as_dict`."""
        spacing = tuple(float(s) for s in values["spacing_mm"])
        low, high = values.get("spacing_range_mm") or (spacing, spacing)
        return cls(values.get("orientation"), spacing, (tuple(low), tuple(high)))  # type: ignore[arg-type]

    @classmethod
    def from_geometries(cls, geometries: list[Geometry]) -> ModelGrid:
        """The grid of a set of training volumes: shared orientation, median and range.

        Spacings are compared after turning every volume to the first one's orientation.

        Example:
            >>> gs = [Geometry.from_spacing((s, 1.5, s)) for s in (0.8, 1.0, 0.9)]
            >>> ModelGrid.from_geometries(gs).as_dict()["spacing_range_mm"]
            [[0.8, 1.5, 0.8], [1.0, 1.5, 1.0]]
        """
        if not geometries:
            raise ValueError("geometries must hold at least one training volume, got none")
        codes = [orientation_code(g) for g in geometries]
        code = codes[0] if len(set(codes)) == 1 else None
        target = codes[0]
        spacings = np.array([_spacing_in(g, target) for g in geometries])
        median = tuple(float(s) for s in np.median(spacings, axis=0))
        low = tuple(float(s) for s in spacings.min(axis=0))
        high = tuple(float(s) for s in spacings.max(axis=0))
        return cls(code, median, (low, high))  # type: ignore[arg-type]


def _orientation_transform(geometry: Geometry, code: str) -> np.ndarray:
    """nibabel orientation transform (3, 2) from a geometry's voxel axes to ``code``."""
    import nibabel as nib

    start = nib.orientations.io_orientation(geometry.affine)
    return nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(tuple(code)))


def _spacing_in(geometry: Geometry, code: str) -> tuple[float, float, float]:
    """A geometry's spacing ``(z, y, x)`` after turning it to ``code``."""
    xyz = np.array(geometry.spacing_mm[::-1])
    order = _orientation_transform(geometry, code)[:, 0].astype(int)  # input axis i -> order[i]
    out = np.empty(3)
    out[order] = xyz
    return (float(out[2]), float(out[1]), float(out[0]))


@dataclass(frozen=True)
class GridMapping:
    """How an input's grid maps to a model's grid and back.

    Built by :meth:`between`. :meth:`to_model` turns and resamples arrays of the input's
    grid to the model's; :meth:`to_input` brings model-grid arrays back to the input's
    exact shape. Turning is exact; resampling keeps the field of view (voxel centres are
    placed as ``torch.nn.functional.interpolate`` with ``align_corners=False`` places
    them), so the model grid's spacing is the target spacing rounded to a whole number of
    voxels.

    Attributes:
        input_shape: ``(Z, Y, X)`` of the input.
        transform: nibabel orientation transform (3, 2) from the input's voxel axes to the
            model's, or None (no turning).
        turned_shape: ``(Z, Y, X)`` after turning.
        model_shape: ``(Z, Y, X)`` on the model's grid.
        geometry: The model grid's geometry (spacing and affine).
    """

    input_shape: tuple[int, int, int]
    transform: np.ndarray | None
    turned_shape: tuple[int, int, int]
    model_shape: tuple[int, int, int]
    geometry: Geometry

    @classmethod
    def between(
        cls, shape: tuple[int, ...], geometry: Geometry, grid: ModelGrid | None
    ) -> GridMapping:
        """The mapping of an input of spatial ``shape`` (Z, Y, X) and ``geometry`` to ``grid``.

        ``grid`` None maps to the input's own grid (the identity).

        Example:
            >>> g = Geometry.from_spacing((1.0, 1.0, 1.0))
            >>> grid = ModelGrid("RAS", (2.0, 1.0, 1.0), ((2.0, 1.0, 1.0), (2.0, 1.0, 1.0)))
            >>> m = GridMapping.between((4, 5, 6), g, grid)
            >>> m.model_shape, m.geometry.spacing_mm
            ((2, 5, 6), (2.0, 1.0, 1.0))
        """
        import nibabel as nib

        shape3 = tuple(int(s) for s in shape[-3:])
        affine = np.array(geometry.affine)
        transform = None
        turned = shape3
        spacing = geometry.spacing_mm
        if grid is not None and grid.orientation is not None:
            transform = _orientation_transform(geometry, grid.orientation)
            if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
                transform = None
            else:
                xyz = shape3[::-1]
                affine = affine @ nib.orientations.inv_ornt_aff(transform, xyz)
                new_xyz = [0, 0, 0]
                for i, (axis, _) in enumerate(transform):
                    new_xyz[int(axis)] = xyz[i]
                turned = (new_xyz[2], new_xyz[1], new_xyz[0])
                spacing = _spacing_in(geometry, grid.orientation)
        target = grid.target_spacing(spacing) if grid is not None else spacing
        model_shape = tuple(
            max(1, int(round(n * s / t))) for n, s, t in zip(turned, spacing, target, strict=True)
        )
        if model_shape == turned:
            model_spacing = tuple(float(s) for s in spacing)
        else:
            # keep the field of view: voxel centres at (j + 0.5) * n / m - 0.5 input voxels
            scale_zyx = np.array(turned) / np.array(model_shape)
            scale_xyz = scale_zyx[::-1]
            step = np.diag([*scale_xyz, 1.0])
            step[:3, 3] = 0.5 * scale_xyz - 0.5
            affine = affine @ step
            model_spacing = tuple(float(s * f) for s, f in zip(spacing, scale_zyx, strict=True))
        return cls(
            input_shape=shape3,  # type: ignore[arg-type]
            transform=transform,
            turned_shape=turned,  # type: ignore[arg-type]
            model_shape=model_shape,  # type: ignore[arg-type]
            geometry=Geometry(model_spacing, affine),  # type: ignore[arg-type]
        )

    @property
    def is_identity(self) -> bool:
        """No turning and no resampling."""
        return self.transform is None and self.model_shape == self.input_shape

    @property
    def resamples(self) -> bool:
        """Whether any axis is resampled (not just turned)."""
        return self.model_shape != self.turned_shape

    def to_model(self, array: np.ndarray, *, order: int) -> np.ndarray:
        """An input-grid array on the model's grid.

        Args:
            array: ``(C, Z, Y, X)`` float (images, probabilities) or ``(Z, Y, X)`` (masks,
                labels), on the input's grid.
            order: 0 (nearest: masks, labels) or 1 (linear: intensities, probabilities).

        Returns:
            The same kind of array (same dtype) on the model's grid.
        """
        out = self._turn(array, self.transform)
        return _resize(out, self.model_shape, order=order)

    def to_input(self, array: np.ndarray, *, order: int) -> np.ndarray:
        """A model-grid array back on the input's exact grid (inverse of :meth:`to_model`)."""
        out = _resize(array, self.turned_shape, order=order)
        if self.transform is None:
            return out
        back = np.empty_like(self.transform)  # input axis i went to axis[i]: undo it
        for i, (axis, flip) in enumerate(self.transform):
            back[int(axis)] = (i, flip)
        return self._turn(out, back)

    @staticmethod
    def _turn(array: np.ndarray, transform: np.ndarray | None) -> np.ndarray:
        import nibabel as nib

        if transform is None:
            return array
        lead = array.ndim - 3
        xyz = np.moveaxis(array, (-1, -2, -3), (0, 1, 2))  # (x, y, z, *lead)
        turned = nib.orientations.apply_orientation(xyz, transform)
        back = np.moveaxis(turned, (0, 1, 2), (-1, -2, -3))
        assert back.ndim == lead + 3
        return np.ascontiguousarray(back)


def _resize(array: np.ndarray, shape: tuple[int, ...], *, order: int) -> np.ndarray:
    """Resample the last three axes to ``shape`` (centres as ``align_corners=False``)."""
    import torch
    import torch.nn.functional as F

    if tuple(array.shape[-3:]) == tuple(shape):
        return array
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (linear), got {order}")
    lead = array.shape[:-3]
    flat = torch.from_numpy(np.ascontiguousarray(array)).reshape(1, -1, *array.shape[-3:])
    if order == 0:
        src = flat if flat.dtype in (torch.uint8, torch.float32) else flat.to(torch.float32)
        if src.dtype == torch.bool:
            src = src.to(torch.uint8)
        out = F.interpolate(src, size=tuple(shape), mode="nearest-exact")
    else:
        out = F.interpolate(
            flat.to(torch.float32), size=tuple(shape), mode="trilinear", align_corners=False
        )
    result = out.reshape(*lead, *shape).numpy()
    return result.astype(array.dtype, copy=False)


# --------------------------------------------------------------------------------------
# Brain extraction


@dataclass(frozen=True)
class BrainMask:
    """A brain mask and how it was found.

    Attributes:
        mask: bool ``(Z, Y, X)`` on the input's grid: the intracranial region (brain and
            the CSF around it) for a stripped image, or the input's foreground.
        stripped: Whether medseg removed the skull (voxels outside ``mask`` were zeroed).
        reason: One line for reports, e.g. ``"auto: skull found (50% of the foreground
            > 10 mm outside the brain); stripped with deepbet"``.
        far_fraction: Fraction of the input's foreground farther than
            :data:`STRIPPED_FAR_MM` from deepbet's mask (NaN when deepbet did not run).
        is_brain: Whether ``mask`` is the intracranial region (deepbet's mask, or the
            foreground of an image found to be skull-stripped), so that its volume is the
            TIV; False when the image was kept as given without that check (``"never"``, a
            partial view, no brain found): the mask is then only the image's foreground.
    """

    mask: np.ndarray
    stripped: bool
    reason: str
    far_fraction: float = float("nan")
    is_brain: bool = True

    def volume_ml(self, spacing_mm: tuple[float, ...]) -> float:
        """The mask's volume in mL (the TIV when :attr:`is_brain`)."""
        return float(self.mask.sum()) * float(np.prod(spacing_mm)) / 1000.0


FOREGROUND_FRACTION = 1e-3
"""Foreground: above the minimum by more than this fraction of the range up to the 99th
percentile, so that the near-zero residue a resampled, stripped image keeps around its
brain (nilearn's 2 mm MNI152: 266k voxels below 1e-3 of its maximum) is background."""


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Voxels brighter than the image's background, bool ``(Z, Y, X)``.

    The background is the minimum plus :data:`FOREGROUND_FRACTION` of the range from the
    minimum to the 99th percentile of the voxels above it.

    Args:
        image: Intensities, float ``(C, Z, Y, X)``; the first channel decides.

    Example:
        >>> img = np.zeros((1, 1, 2, 3), np.float32); img[0, 0, 1, 2] = 5; img[0, 0, 0, 1] = 1e-6
        >>> foreground_mask(img).astype(int).tolist()
        [[[0, 0, 0], [0, 0, 1]]]
    """
    first = image[0]
    low = float(first.min())
    above = first[first > low]
    if above.size == 0:
        return np.zeros(first.shape, bool)
    high = float(np.percentile(above, 99))
    return np.asarray(first > low + FOREGROUND_FRACTION * (high - low))


def extract_brain(image: np.ndarray, geometry: Geometry, *, device: Any = "cpu") -> np.ndarray:
    """The brain mask of a T1 found by deepbet, bool ``(Z, Y, X)`` on the input's grid.

    deepbet turns the volume to RAS itself, finds the brain's box at low resolution, then
    segments the box at 256^3 and keeps the largest component with its holes filled.

    Args:
        image: A T1, float32 ``(C, Z, Y, X)`` (the first channel is used), skull on or off.
        geometry: Its spacing and affine.
        device: Where deepbet runs (a CUDA device or the CPU).

    Raises:
        ValueError: deepbet found no brain (an empty mask).
    """
    import torch
    from deepbet import BrainExtraction

    from medseg.io import to_nifti

    use_gpu = torch.device(str(device)).type == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deepbet / nibabel chatter about headers
        bet = BrainExtraction(no_gpu=not use_gpu)
        try:
            _, mask_img, _ = bet.run(to_nifti(np.ascontiguousarray(image[0]), geometry))
        except (AssertionError, ValueError) as err:  # deepbet asserts on empty volumes
            raise ValueError(
                f"image must show a head for brain extraction, got none found by deepbet ({err})"
            ) from err
    mask_xyz = np.asarray(mask_img.dataobj).astype(bool)
    return np.ascontiguousarray(mask_xyz.transpose(2, 1, 0))


def detect_skull_stripped(
    foreground: np.ndarray, brain: np.ndarray, spacing_mm: tuple[float, ...]
) -> tuple[bool, float]:
    """Decide whether an image is already skull-stripped.

    A stripped image has its non-brain voxels set to the background value, so its
    foreground hugs a brain mask; a raw head's scalp, skull and neck lie centimetres
    outside it (:data:`STRIPPED_FAR_MM`, :data:`STRIPPED_FAR_FRACTION`). Distances are
    measured on a grid of about 2 mm (every n-th voxel), which is plenty for 10 mm.

    Args:
        foreground: bool ``(Z, Y, X)``, the image's voxels above background
            (:func:`foreground_mask`).
        brain: bool ``(Z, Y, X)``, a brain mask of the same image (:func:`extract_brain`).
        spacing_mm: Voxel size ``(z, y, x)`` in mm.

    Returns:
        ``(stripped, far_fraction)``: the decision, and the fraction of the foreground
        farther than :data:`STRIPPED_FAR_MM` from the brain mask.

    Example:
        >>> fg = np.ones((1, 40, 40), bool)  # rows 20-39 lie > 10 mm below the brain
        >>> brain = np.zeros((1, 40, 40), bool); brain[0, :9] = True
        >>> detect_skull_stripped(fg, brain, (1.0, 1.0, 1.0))
        (False, 0.5)
        >>> detect_skull_stripped(fg, fg, (1.0, 1.0, 1.0))
        (True, 0.0)
    """
    from scipy import ndimage

    step = tuple(max(1, int(2.0 / s)) for s in spacing_mm)
    view = tuple(slice(None, None, k) for k in step)
    fg, inside = foreground[view], brain[view]
    total = int(fg.sum())
    if total == 0:
        return False, float("nan")
    if not inside.any():
        return False, 1.0
    sampling = tuple(float(s) * k for s, k in zip(spacing_mm, step, strict=True))
    distance = ndimage.distance_transform_edt(~inside, sampling=sampling)
    far = float(np.count_nonzero(distance[fg] > STRIPPED_FAR_MM)) / total
    return far < STRIPPED_FAR_FRACTION, far


def brain_mask(
    image: np.ndarray,
    geometry: Geometry,
    *,
    mode: str = "auto",
    device: Any = "cpu",
    what: str = "image",
) -> BrainMask:
    """Find the brain of a T1 and decide whether to strip its skull.

    ``"auto"`` runs deepbet and strips only when the image still has its skull
    (:func:`detect_skull_stripped`); an already stripped image keeps every voxel, and its
    own foreground is the mask. ``"always"`` strips; ``"never"`` keeps the image as it is
    (mask: its foreground).

    Args:
        image: A T1, float32 ``(C, Z, Y, X)``.
        geometry: Its spacing and affine.
        mode: ``"auto"``, ``"always"`` or ``"never"``.
        device: Where deepbet runs.
        what: How errors name the image.

    Raises:
        ValueError: unknown mode, or an empty mask (nothing above background, or no brain
            found).
    """
    if mode not in SKULL_STRIP_MODES:
        raise ValueError(
            f"--skull-strip must be one of {', '.join(SKULL_STRIP_MODES)}, got {mode!r}"
        )
    foreground = foreground_mask(image)
    if not foreground.any():
        raise ValueError(
            f"{what} must have voxels above its background value, got a constant image "
            f"(every voxel {float(image.flat[0]):g}); check the file"
        )
    if mode == "never":
        return BrainMask(_filled(foreground), False, "never: kept as given", is_brain=False)
    box = bounding_box(foreground, (0, 0, 0))
    extent = [(b.stop - b.start) * s for b, s in zip(box, geometry.spacing_mm, strict=True)]
    if mode == "auto" and sorted(extent)[1] < MIN_HEAD_EXTENT_MM:
        size = " x ".join(f"{e:.0f}" for e in extent)
        warnings.warn(
            f"{what}: the image shows {size} mm (z, y, x), less than a whole head, so the "
            "skull is not checked for and the image is kept as given; use --skull-strip "
            "never to silence this",
            stacklevel=3,
        )
        why = f"auto: partial view ({size} mm); kept as given"
        return BrainMask(_filled(foreground), False, why, is_brain=False)
    try:
        brain = extract_brain(image, geometry, device=device)
    except ValueError:
        brain = np.zeros_like(foreground)
    if not brain.any():
        if mode == "always":
            raise ValueError(
                f"{what} must show a brain for --skull-strip always, got an empty brain mask "
                "from deepbet; check that it is a T1-weighted head scan, or use --skull-strip "
                "never"
            )
        warnings.warn(
            f"{what}: deepbet found no brain (a partial or unusual image?), so it is kept as "
            "given, as if skull-stripped; use --skull-strip never to silence this",
            stacklevel=3,
        )
        why = "auto: no brain found by deepbet; kept as given"
        return BrainMask(_filled(foreground), False, why, is_brain=False)
    stripped, far = detect_skull_stripped(foreground, brain, geometry.spacing_mm)
    pct = f"{100 * far:.0f}% of the foreground > {STRIPPED_FAR_MM:g} mm outside the brain"
    if mode == "auto" and stripped:
        return BrainMask(_filled(foreground), False, f"auto: already skull-stripped ({pct})", far)
    why = "always" if mode == "always" else f"auto: skull found ({pct})"
    return BrainMask(brain, True, f"{why}; stripped with deepbet", far)


def _filled(mask: np.ndarray) -> np.ndarray:
    """A mask with its enclosed holes filled, slice-independent (3D)."""
    from scipy import ndimage

    return np.asarray(ndimage.binary_fill_holes(mask))


# --------------------------------------------------------------------------------------
# Bias field, box


def n4_correct(
    image: np.ndarray,
    mask: np.ndarray,
    spacing_mm: tuple[float, ...],
    *,
    shrink: int = 4,
    iterations: tuple[int, ...] = (50, 50, 50, 50),
) -> np.ndarray:
    """N4 bias-field correction (Tustison et al., IEEE TMI 2010) inside a mask.

    The field is fitted on a copy shrunk by ``shrink`` per axis (as ANTs and nnU-Net users
    do, for speed) and applied at full resolution: ``image / exp(log_field)``.

    Args:
        image: Intensities, float32 ``(C, Z, Y, X)``; every channel gets its own field.
        mask: bool ``(Z, Y, X)``: where the field is fitted (the brain).
        spacing_mm: Voxel size ``(z, y, x)`` in mm.
        shrink: Shrink factor for the fit (1: no shrinking).
        iterations: Iterations per fitting level.

    Returns:
        float32 ``(C, Z, Y, X)``: corrected inside the mask, unchanged outside it.

    Raises:
        ValueError: an empty mask, or a mask of another shape.
    """
    import SimpleITK as sitk

    if mask.shape != image.shape[1:]:
        raise ValueError(f"mask must have shape {image.shape[1:]}, got {mask.shape}")
    if not mask.any():
        raise ValueError("mask must hold at least one voxel for N4, got an empty mask")
    out = np.array(image, dtype=np.float32, copy=True)
    mask_img = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_img.SetSpacing(tuple(float(s) for s in spacing_mm[::-1]))
    for c in range(image.shape[0]):
        channel = np.maximum(image[c], 0).astype(np.float32)
        full = sitk.GetImageFromArray(channel)
        full.SetSpacing(tuple(float(s) for s in spacing_mm[::-1]))
        small = sitk.Shrink(full, [shrink] * 3) if shrink > 1 else full
        small_mask = sitk.Shrink(mask_img, [shrink] * 3) if shrink > 1 else mask_img
        n4 = sitk.N4BiasFieldCorrectionImageFilter()
        n4.SetMaximumNumberOfIterations(list(iterations))
        n4.Execute(small, small_mask)
        log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(full))
        corrected = channel / np.exp(log_field).astype(np.float32)
        out[c] = np.where(mask, corrected, image[c])
    return out


def bounding_box(mask: np.ndarray, margin: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """The box around a mask's True voxels, widened by ``margin`` voxels per side.

    Args:
        mask: bool ``(Z, Y, X)``.
        margin: ``(z, y, x)`` voxels added on each side (clipped to the volume).

    Returns:
        ``(z, y, x)`` slices; the whole volume for an empty mask.

    Example:
        >>> m = np.zeros((5, 6, 7), bool); m[2, 3, 4] = True
        >>> bounding_box(m, (1, 0, 9))
        (slice(1, 4, None), slice(3, 4, None), slice(0, 7, None))
    """
    if not mask.any():
        return (slice(0, mask.shape[0]), slice(0, mask.shape[1]), slice(0, mask.shape[2]))
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others))
        lo = max(0, int(hit[0]) - margin[axis])
        hi = min(mask.shape[axis], int(hit[-1]) + 1 + margin[axis])
        box.append(slice(lo, hi))
    return (box[0], box[1], box[2])
