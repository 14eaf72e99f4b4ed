"""The input conversions of the notebook API (:mod:`medseg.api`): an image argument (file
path, nibabel or SimpleITK image, :class:`medseg.io.Volume`, numpy array) -> a float32
``(C, Z, Y, X)`` Volume with its geometry, and a label / instance map argument (a result of
:mod:`medseg.results`, file, nibabel image, integer array) -> a Volume or array with its
label names.

Arrays follow ARCHITECTURE.md section 2. A nibabel image's data are ``(x, y, z)``: the image
itself carries its geometry, its data array is in the other axis order.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medseg.io import Geometry, Volume, read_image, read_instances, read_label, volume_from_nifti
from medseg.results import CellSegmentation, Segmentation

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
# Label maps (evaluation)


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
