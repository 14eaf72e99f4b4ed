"""Where the voxels of a volume lie in the world: :class:`Geometry`, :class:`Volume`,
:class:`VolumeInfo` and the voxel-grid helpers (ARCHITECTURE.md section 2).

:class:`Geometry` keeps the voxel-to-world mapping as a nibabel-style affine: it maps the
voxel index ``(x, y, z)`` -- the array index ``(z, y, x)`` reversed -- to RAS+ world
coordinates in mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from medseg.typing import Shape3, Spacing3

# LPS (ITK, DICOM) <-> RAS (NIfTI, nibabel): flip the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------
# Geometry and volumes


class GeometryError(ValueError):
    """A voxel grid that cannot be used: non-positive or non-finite spacing, a singular or
    non-finite affine."""


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where the voxels of a volume lie in the world.

    Attributes:
        spacing_mm: Voxel size in (z, y, x) order, in mm. For NIfTI, the header zooms.
        affine: float64 (4, 4), read-only. Maps the voxel index (x, y, z) -- the array
            index (z, y, x) reversed -- to RAS+ world coordinates in mm (nibabel convention).
        header: The source file's header, kept so that writing a NIfTI file reproduces it
            (a nibabel header), or the source's SimpleITK / DICOM metadata (a dict, for
            reference only), or None. Ignored by comparisons.

    ``==`` means spacing and affine are exactly equal; :meth:`same_as` allows a tolerance.

    Example:
        >>> g = Geometry.from_spacing((3.0, 1.0, 0.5))
        >>> g.affine.diagonal().tolist()
        [0.5, 1.0, 3.0, 1.0]
        >>> g.same_as(Geometry((3.0, 1.0, 0.5), np.diag([0.5, 1.0, 3.0005, 1.0])))
        True
    """

    spacing_mm: Spacing3
    affine: npt.NDArray[np.float64]
    header: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in np.ravel(self.spacing_mm))
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise GeometryError(
                f"spacing_mm must be 3 positive finite sizes in mm (z, y, x), "
                f"got {self.spacing_mm!r}"
            )
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise GeometryError(f"affine must have shape (4, 4), got shape {affine.shape}")
        if not np.all(np.isfinite(affine)) or not np.array_equal(affine[3], [0, 0, 0, 1]):
            raise GeometryError(
                f"affine must be finite with last row (0, 0, 0, 1), got {affine.tolist()}"
            )
        # Invertible, whatever the voxel size (nm to m): compare the volume spanned by the
        # three voxel axes with the product of their lengths.
        lengths = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(lengths == 0) or abs(np.linalg.det(affine[:3, :3])) < 1e-6 * lengths.prod():
            raise GeometryError(f"affine must be invertible, got {_format_affine(affine)}")
        affine.setflags(write=False)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "affine", affine)

    @classmethod
    def from_spacing(cls, spacing_mm: Spacing3) -> Geometry:
        """Make an axis-aligned geometry with its origin at the world origin.

        Used for files without orientation (PNG, TIFF) and for synthetic data.

        Args:
            spacing_mm: Voxel size in (z, y, x) order, in mm.

        Example:
            >>> Geometry.from_spacing((2.0, 1.0, 0.5)).affine[:3, :3].diagonal().tolist()
            [0.5, 1.0, 2.0]
        """
        spacing = tuple(float(s) for s in np.ravel(spacing_mm))
        if len(spacing) != 3:
            raise ValueError(f"spacing_mm must be 3 sizes in mm (z, y, x), got {spacing_mm!r}")
        z, y, x = spacing
        return cls((z, y, x), np.diag([x, y, z, 1.0]))

    def same_as(self, other: Geometry, *, atol_mm: float = 1e-3) -> bool:
        """Return whether spacing and affine agree within ``atol_mm`` (mm, per entry).

        Example:
            >>> g = Geometry.from_spacing((1.0, 1.0, 1.0))
            >>> g.same_as(Geometry.from_spacing((1.0, 1.0, 1.01)))
            False
            >>> g.same_as(Geometry.from_spacing((1.0, 1.0, 1.01)), atol_mm=0.05)
            True
        """
        return bool(
            np.allclose(self.spacing_mm, other.spacing_mm, rtol=0.0, atol=atol_mm)
            and np.allclose(self.affine, other.affine, rtol=0.0, atol=atol_mm)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return self.spacing_mm == other.spacing_mm and np.array_equal(self.affine, other.affine)

    def __hash__(self) -> int:
        return hash((self.spacing_mm, self.affine.tobytes()))


@dataclass(frozen=True, eq=False)
class Volume:
    """An array read from (or to be written to) a file, with its geometry.

    Attributes:
        array: An image, float32 (C, Z, Y, X); a label map, uint8 (Z, Y, X); or an
            instance map, int32 (Z, Y, X). See ARCHITECTURE.md section 2.
        geometry: Voxel spacing and affine of the spatial axes (Z, Y, X).
        path: The file or DICOM folder it was read from, or None.

    Example:
        >>> v = Volume(np.zeros((1, 2, 3, 4), np.float32), Geometry.from_spacing((1, 1, 1)))
        >>> v.spatial_shape
        (2, 3, 4)
    """

    array: np.ndarray
    geometry: Geometry
    path: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray) or self.array.ndim not in (3, 4):
            shape = getattr(self.array, "shape", type(self.array).__name__)
            raise ValueError(f"array must be (C, Z, Y, X) or (Z, Y, X), got {shape}")
        _check_geometry(self.geometry)

    @property
    def spatial_shape(self) -> Shape3:
        """The shape (Z, Y, X) of the spatial axes, in voxels."""
        z, y, x = self.array.shape[-3:]
        return (int(z), int(y), int(x))


@dataclass(frozen=True, eq=False)
class VolumeInfo:
    """What a file says about its volume, read without its voxel data.

    Attributes:
        spatial_shape: (Z, Y, X), in voxels.
        num_channels: C, after dropping an all-opaque alpha channel (not checked here).
            A time series counts its time points here, as the readers return them.
        geometry: Voxel spacing and affine.
        path: The file or DICOM folder.
        num_timepoints: T > 1 when the file is a 4D time series (e.g. fMRI) rather than
            a multi-channel image, else 1. Decided from the header (see
            :func:`read_volume_info`); the readers still return T as channels.
    """

    spatial_shape: Shape3
    num_channels: int
    geometry: Geometry
    path: Path | None = None
    num_timepoints: int = 1

    @property
    def is_time_series(self) -> bool:
        """Whether the file is a time series (``num_timepoints > 1``), not channels."""
        return self.num_timepoints > 1


class _Raw(NamedTuple):
    """A volume as read, before the image / label conversion."""

    array: np.ndarray | None  # (C, Z, Y, X), file dtype; None when only the header was read
    shape: tuple[int, int, int, int]  # (C, Z, Y, X)
    geometry: Geometry
    num_timepoints: int = 1  # T > 1: C holds the time points of a time series


# --------------------------------------------------------------------------------------
# Public grid helpers


def check_same_grid(
    a: Volume | VolumeInfo, b: Volume | VolumeInfo, *, atol_mm: float = 1e-3
) -> None:
    """Check that two volumes share one voxel grid: shape (Z, Y, X), spacing and affine.

    Channels are not compared, so an image (C, Z, Y, X) matches its label (Z, Y, X).

    Args:
        a: The reference volume, e.g. the image (or its header from read_volume_info).
        b: The volume that must match it, e.g. the label map.
        atol_mm: Tolerance in mm for every spacing and affine entry.

    Raises:
        ValueError: naming both files and giving both shapes, and both spacings and
            affines where they differ.

    Example:
        >>> g = Geometry.from_spacing((1.0, 1.0, 1.0))
        >>> image = Volume(np.zeros((1, 2, 3, 4), np.float32), g, Path("image.nii.gz"))
        >>> check_same_grid(image, Volume(np.zeros((2, 3, 4), np.uint8), g))
        >>> check_same_grid(image, Volume(np.zeros((2, 3, 5), np.uint8), g))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: '<in memory>' must be on the same voxel grid as 'image.nii.gz' ...; ...
    """
    differences = []
    same_shape = a.spatial_shape == b.spatial_shape
    ga, gb = a.geometry, b.geometry
    if not np.allclose(ga.spacing_mm, gb.spacing_mm, rtol=0.0, atol=atol_mm):
        differences.append(
            f"spacing_mm {_format_floats(gb.spacing_mm)} vs {_format_floats(ga.spacing_mm)}"
        )
    if not np.allclose(ga.affine, gb.affine, rtol=0.0, atol=atol_mm):
        differences.append(f"affine {_format_affine(gb.affine)} vs {_format_affine(ga.affine)}")
    if same_shape and not differences:
        return
    got = ", ".join([f"shape (Z, Y, X) {b.spatial_shape} vs {a.spatial_shape}", *differences])
    raise ValueError(
        f"{_describe_path(b.path)} must be on the same voxel grid as {_describe_path(a.path)} "
        f"(within {atol_mm:g} mm), got {got}; resample one onto the other"
    )


def resolve_slice_axis(slice_axis: str | int, geometry: Geometry) -> int:
    """``"axial"`` -> the array axis closest to superior-inferior (:func:`axial_axis`); the
    ints 0, 1, 2 pass through.

    Example:
        >>> resolve_slice_axis("axial", Geometry.from_spacing((2.0, 1.0, 1.0)))
        0
    """
    if slice_axis == "axial":
        return axial_axis(geometry)
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 'axial', 0, 1 or 2, got {slice_axis!r}")
    return int(slice_axis)


def axial_axis(geometry: Geometry) -> int:
    """Return the array axis (0, 1 or 2 of (Z, Y, X)) closest to world superior-inferior.

    This is the slice axis for 2.5D models working on axial slices. The affine decides,
    so the answer does not depend on the sign of any axis; a tie goes to the lower
    voxel axis (x before y before z).

    Args:
        geometry: Spacing and affine of the volume.

    Example:
        >>> axial_axis(Geometry.from_spacing((1.5, 1.0, 1.0)))
        0
        >>> coronal = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
        >>> axial_axis(Geometry((1.0, 1.0, 1.0), coronal))
        1
    """
    columns = geometry.affine[:3, :3]  # column v = world step of voxel axis v (x, y, z)
    superior_fraction = np.abs(columns[2]) / np.linalg.norm(columns, axis=0)
    voxel_axis = int(np.argmax(superior_fraction))  # 0 = x, 1 = y, 2 = z
    return 2 - voxel_axis  # voxel (x, y, z) = array axes (2, 1, 0)


# --------------------------------------------------------------------------------------
# Checks and message helpers


def _check_geometry(geometry: object) -> None:
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a medseg.io.Geometry, got {type(geometry).__name__}")


def _describe_path(path: Path | None) -> str:
    return repr(str(path)) if path is not None else "'<in memory>'"


def _format_floats(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _format_affine(affine: np.ndarray) -> str:
    """One-line affine: the top three rows, ``[a b c d; ...]``."""
    return "[" + "; ".join(" ".join(f"{v:.6g}" for v in row) for row in affine[:3]) + "]"
