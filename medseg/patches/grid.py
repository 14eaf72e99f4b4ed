"""Patch specs, patch grids and vectorised patch extraction (2.5D and 3D).

:class:`PatchSpec` says where patches are taken and what the model sees, :class:`PatchGrid`
(:func:`make_grid`) where they lie on a volume; :func:`extract_patches`,
:func:`extract_patches_at` and :func:`window_view` gather them without a Python loop over
patches. Arrays follow ARCHITECTURE.md section 2. The terms (spec, grid, padding) are
defined in the package docstring of :mod:`medseg.patches` ("the module docstring" below).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from medseg.patches._backend import _as_index, _is_torch, _moveaxis
from medseg.typing import Shape3

PAD_MODES = ("reflect", "replicate", "constant")


def _as_shape3(value: int | Sequence[int], name: str) -> Shape3:
    if isinstance(value, (int, np.integer)):
        return (1, int(value), int(value))
    vals = tuple(int(v) for v in value)
    if len(vals) == 2:
        return (1, vals[0], vals[1])
    if len(vals) != 3:
        raise ValueError(f"{name} must have 2 (y, x) or 3 (z, y, x) entries, got {tuple(value)}")
    return vals  # type: ignore[return-value]


@dataclass(frozen=True)
class PatchSpec:
    """Where patches are taken and what the model sees.

    Attributes:
        patch_size: Output patch size ``(pz, py, px)`` in voxels, along the slice axis first.
        stride: Step between patch starts ``(sz, sy, sx)`` in voxels; 1 <= stride <= patch.
        num_slices: Input slices per patch (odd). ``> 1`` means 2.5D: the output patch is
            one slice thick and the ``num_slices // 2`` neighbours on each side become
            extra input channels. ``1`` means plain 2D/3D patches.
        slice_axis: Array axis of the ``(Z, Y, X)`` volume used as the slice axis
            (0 = Z, the axial axis for axial-first volumes).
        pad_mode: How neighbour slices beyond the volume are filled: one of
            ``PAD_MODES`` (see the module docstring).

    Example:
        >>> spec = PatchSpec.two_and_half_d(40, 10)
        >>> spec.patch_size, spec.stride, spec.num_slices
        ((1, 40, 40), (1, 10, 10), 3)
    """

    patch_size: Shape3
    stride: Shape3
    num_slices: int = 1
    slice_axis: int = 0
    pad_mode: str = "reflect"

    def __post_init__(self) -> None:
        patch = _as_shape3(self.patch_size, "patch_size")
        stride = _as_shape3(self.stride, "stride")
        object.__setattr__(self, "patch_size", patch)
        object.__setattr__(self, "stride", stride)
        if min(patch) < 1:
            raise ValueError(f"patch_size must be positive, got {patch}")
        for p, s in zip(patch, stride, strict=True):
            if not 1 <= s <= p:
                raise ValueError(
                    f"stride must be between 1 and the patch size on every axis, got stride "
                    f"{stride} for patch_size {patch}; a larger stride would leave voxels "
                    "without any prediction"
                )
        if self.num_slices < 1 or self.num_slices % 2 == 0:
            raise ValueError(f"num_slices must be a positive odd number, got {self.num_slices}")
        if self.num_slices > 1 and patch[0] != 1:
            raise ValueError(
                f"patch_size along the slice axis must be 1 for 2.5D patches "
                f"(num_slices={self.num_slices}), got {patch}"
            )
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (z, y, x), got {self.slice_axis}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")

    @classmethod
    def two_and_half_d(
        cls,
        size: int | Sequence[int] = 40,
        stride: int | Sequence[int] = 10,
        *,
        num_slices: int = 3,
        slice_axis: int = 0,
        pad_mode: str = "reflect",
    ) -> PatchSpec:
        """The 2.5D spec: ``size`` x ``size`` in-plane windows, ``num_slices`` input slices."""
        return cls(
            patch_size=_as_shape3(size, "patch_size"),
            stride=_as_shape3(stride, "stride"),
            num_slices=num_slices,
            slice_axis=slice_axis,
            pad_mode=pad_mode,
        )

    @property
    def is_2d_model_input(self) -> bool:
        """True when patches are fed to a 2D model as ``(N, C * num_slices, py, px)``."""
        return self.patch_size[0] == 1


def grid_starts(size: int, patch: int, stride: int) -> np.ndarray:
    """Patch starts along one axis: ``0, stride, ...`` plus one flush with the border.

    Returns:
        int64 ``(n,)`` sorted starts; every index in ``[0, size)`` is covered.

    Example:
        >>> grid_starts(25, 10, 10).tolist()
        [0, 10, 15]
        >>> grid_starts(40, 40, 10).tolist()
        [0]
    """
    if patch > size:
        raise ValueError(f"patch size {patch} must not exceed the image size {size} on its axis")
    starts = np.arange(0, size - patch + 1, stride, dtype=np.int64)
    if starts[-1] + patch < size:
        starts = np.append(starts, size - patch)
    return starts


def _coverage(size: int, starts: np.ndarray, patch: int, weight: np.ndarray | None = None):
    """1D sum over patches of ``weight`` (ones by default) placed at ``starts``: float64 (size,)."""
    w = np.ones(patch) if weight is None else weight
    out = np.zeros(size)
    for s in starts:
        out[s : s + patch] += w
    return out


@dataclass(frozen=True)
class PatchGrid:
    """The patch locations on a volume whose slice axis is axis 0.

    Attributes:
        spatial_shape: ``(Z, Y, X)`` of the volume, slice axis first.
        spec: The :class:`PatchSpec`.
        starts: Per-axis int64 start arrays ``(zs, ys, xs)`` of the output patches.
    """

    spatial_shape: Shape3
    spec: PatchSpec
    starts: tuple[np.ndarray, np.ndarray, np.ndarray] = field(compare=False, repr=False)

    @property
    def grid_shape(self) -> Shape3:
        """Number of patch starts per axis ``(nz, ny, nx)``."""
        return tuple(len(s) for s in self.starts)  # type: ignore[return-value]

    @property
    def num_patches(self) -> int:
        return int(np.prod(self.grid_shape))

    def locations(self) -> np.ndarray:
        """int64 ``(N, 3)`` start ``(z, y, x)`` of every patch, z-major then y then x.

        Example:
            >>> g = make_grid((2, 5, 6), PatchSpec((1, 4, 4), (1, 2, 2)))
            >>> g.locations()[:3].tolist()
            [[0, 0, 0], [0, 0, 2], [0, 1, 0]]
        """
        zz, yy, xx = np.meshgrid(*self.starts, indexing="ij")
        return np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1)

    def coverage(self) -> np.ndarray:
        """Number of patches covering each voxel, int64 ``(Z, Y, X)`` (slice axis first).

        Example:
            >>> make_grid((1, 1, 5), PatchSpec((1, 1, 3), (1, 1, 2))).coverage().ravel().tolist()
            [1, 1, 2, 1, 1]
        """
        per_axis = [
            _coverage(n, s, p).astype(np.int64)
            for n, s, p in zip(self.spatial_shape, self.starts, self.spec.patch_size, strict=True)
        ]
        return per_axis[0][:, None, None] * per_axis[1][None, :, None] * per_axis[2][None, None, :]

    def max_votes(self) -> int:
        """Largest number of patches covering any voxel."""
        return int(
            np.prod(
                [
                    _coverage(n, s, p).max()
                    for n, s, p in zip(
                        self.spatial_shape, self.starts, self.spec.patch_size, strict=True
                    )
                ]
            )
        )


def make_grid(spatial_shape: Sequence[int], spec: PatchSpec) -> PatchGrid:
    """Build the patch grid of a volume whose slice axis has been moved to axis 0.

    Args:
        spatial_shape: ``(Z, Y, X)`` with the spec's slice axis first.
        spec: Patch size, stride and slices.

    Raises:
        ValueError: if the patch does not fit in the volume.

    Example:
        >>> g = make_grid((3, 25, 40), PatchSpec.two_and_half_d(10, 10))
        >>> g.grid_shape, g.num_patches
        ((3, 3, 4), 36)
    """
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != 3:
        raise ValueError(f"spatial_shape must be (Z, Y, X), got {shape}")
    if any(p > n for p, n in zip(spec.patch_size, shape, strict=True)):
        raise ValueError(
            f"patch_size {spec.patch_size} exceeds image shape {shape} (slice axis first); "
            "lower patch_size or pad the image"
        )
    starts = tuple(
        grid_starts(n, p, s) for n, p, s in zip(shape, spec.patch_size, spec.stride, strict=True)
    )
    return PatchGrid(shape, spec, starts)  # type: ignore[arg-type]


def _pad_indices(index: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Map possibly out-of-range slice indices to source slices (``-1`` = zero slice)."""
    if mode == "replicate":
        return np.clip(index, 0, size - 1)
    if mode == "constant":
        return np.where((index < 0) | (index >= size), -1, index)
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)  # reflect: ..., 2, 1, [0, 1, ..., n-1], n-2, ...
    folded = np.abs(index) % period
    return np.where(folded >= size, period - folded, folded)


def _check_image(image: Any) -> None:
    shape = tuple(image.shape)
    if len(shape) != 4:
        raise ValueError(f"image must be 4D (C, Z, Y, X), got shape {shape}")


def _gather_slices(image: Any, source: np.ndarray) -> Any:
    """``image[:, source]`` with ``-1`` meaning a zero slice: (C, len(source), Y, X)."""
    valid = source >= 0
    idx = _as_index(image, np.where(valid, source, 0))
    out = image[:, idx]
    if not valid.all():
        out[:, _as_index(image, np.flatnonzero(~valid))] = 0
    return out


def _windows(block: Any, window: Shape3, zi: np.ndarray, yi: np.ndarray, xi: np.ndarray) -> Any:
    """Copy the windows of a (C, Zb, Y, X) block at the given starts.

    Returns (nz * ny * nx, C, wz, wy, wx), ordered z-major then y then x. One gather,
    no Python loop over patches: the windows are a strided view first.
    """
    c = block.shape[0]
    if _is_torch(block):
        view = block.permute(1, 2, 3, 0)  # (Zb, Y, X, C)
        view = view.unfold(0, window[0], 1).unfold(1, window[1], 1).unfold(2, window[2], 1)
    else:
        view = sliding_window_view(np.moveaxis(block, 0, -1), window, axis=(0, 1, 2))
    zi, yi, xi = (_as_index(block, a) for a in (zi, yi, xi))
    out = view[zi[:, None, None], yi[None, :, None], xi[None, None, :]]  # (nz, ny, nx, C, *win)
    return out.reshape(-1, c, *window)


def _extract_for_starts(image: Any, grid: PatchGrid, z_index: slice) -> Any:
    """Model inputs for the patches whose z-start index lies in ``z_index``.

    ``image`` has its slice axis at axis 1. Returns (N, C*S, py, px) for 2D model input
    or (N, C, pz, py, px) for 3D.
    """
    spec = grid.spec
    zs = grid.starts[0][z_index]
    half = spec.num_slices // 2
    pz = spec.patch_size[0]
    first, last = int(zs[0]) - half, int(zs[-1]) + pz + half  # input slices [first, last)
    source = _pad_indices(np.arange(first, last), grid.spatial_shape[0], spec.pad_mode)
    if first >= 0 and last <= grid.spatial_shape[0]:
        block = image[:, first:last]  # view, no padding needed
    else:
        block = _gather_slices(image, source)
    window = (pz + 2 * half, spec.patch_size[1], spec.patch_size[2])
    patches = _windows(block, window, zs - zs[0], grid.starts[1], grid.starts[2])
    if spec.is_2d_model_input:
        n, c = patches.shape[:2]
        return patches.reshape(n, c * window[0], window[1], window[2])
    return patches


def extract_patches(image: Any, spec: PatchSpec) -> tuple[Any, PatchGrid]:
    """Extract every patch of a volume, vectorised (no Python loop over patches).

    Args:
        image: Intensities, ``(C, Z, Y, X)``, numpy array or torch tensor on any device.
        spec: Patch size, stride, slices and slice axis.

    Returns:
        ``(patches, grid)``. For 2.5D/2D specs (output patch one slice thick) patches are
        ``(N, C * num_slices, py, px)`` with channel ``c * num_slices + s`` holding slice
        ``z - num_slices // 2 + s`` of input channel ``c``; for 3D specs they are
        ``(N, C, pz, py, px)``. Same dtype and backend as ``image``. ``grid`` refers to
        the volume with its slice axis moved first; patch ``n`` starts at
        ``grid.locations()[n]``.

    Example:
        >>> img = np.arange(2 * 5 * 6, dtype=np.float32).reshape(1, 2, 5, 6)
        >>> p, g = extract_patches(img, PatchSpec.two_and_half_d(4, 2))
        >>> p.shape, g.grid_shape
        ((8, 3, 4, 4), (2, 2, 2))
    """
    _check_image(image)
    image = _moveaxis(image, 1 + spec.slice_axis, 1)
    grid = make_grid(image.shape[1:], spec)
    return _extract_for_starts(image, grid, slice(None)), grid


def extract_patches_at(image: Any, starts: Any, spec: PatchSpec) -> Any:
    """Extract the patches whose output windows start at arbitrary ``starts`` (training).

    Unlike :func:`extract_patches`, the starts need not form a grid: this is how random
    training patches are drawn, in one vectorised gather on the image's device.

    Args:
        image: Intensities, ``(C, Z, Y, X)``, numpy or torch, with the spec's slice axis
            already first (``spec.slice_axis`` is not applied here).
        starts: int ``(N, 3)`` output-patch starts ``(z, y, x)``; each patch must fit:
            ``0 <= start`` and ``start + patch_size <= (Z, Y, X)``.
        spec: Patch size and slices; neighbour slices beyond the volume are padded with
            ``spec.pad_mode``.

    Returns:
        Model inputs as in :func:`extract_patches`: ``(N, C * num_slices, py, px)`` for
        one-slice patches, else ``(N, C, pz, py, px)``.

    Example:
        >>> img = np.arange(3 * 8 * 9, dtype=np.float32).reshape(1, 3, 8, 9)
        >>> spec = PatchSpec.two_and_half_d(4, 2)
        >>> p = extract_patches_at(img, np.array([[0, 1, 2], [2, 4, 5]]), spec)
        >>> p.shape, float(p[1, 1, 0, 0]) == float(img[0, 2, 4, 5])
        ((2, 3, 4, 4), True)
    """
    _check_image(image)
    starts_np = np.asarray(starts.cpu() if _is_torch(starts) else starts, dtype=np.int64)
    shape = np.array(image.shape[1:])
    patch = np.array(spec.patch_size)
    if starts_np.ndim != 2 or starts_np.shape[1] != 3:
        raise ValueError(f"starts must be an (N, 3) integer array, got shape {starts_np.shape}")
    bad = (starts_np < 0).any(1) | (starts_np + patch > shape).any(1)
    if bad.any():
        first = starts_np[np.flatnonzero(bad)[0]].tolist()
        raise ValueError(
            f"starts must keep patches of {spec.patch_size} inside the image {tuple(shape)}, "
            f"got {int(bad.sum())} outside, e.g. {first}"
        )
    view = window_view(image, spec)
    zi, yi, xi = (_as_index(image, starts_np[:, k]) for k in range(3))
    return patches_from_view(view, zi, yi, xi, spec)


def window_view(image: Any, spec: PatchSpec) -> Any:
    """Every patch window of ``image`` as one strided view (no copy of the windows).

    The image is padded once along z by ``num_slices // 2`` neighbour slices (the spec's
    ``pad_mode``); element ``[z, y, x]`` of the view is the ``(C, wz, wy, wx)`` window of
    the patch whose output starts at ``(z, y, x)``. Training samplers build it once per
    volume and index it with :func:`patches_from_view` at every batch.

    Args:
        image: ``(C, Z, Y, X)``, numpy or torch, slice axis first.
        spec: Patch size and slices.

    Returns:
        ``(Z', Y', X', C, wz, wy, wx)`` view (numpy or torch, on the image's device).
    """
    _check_image(image)
    size = int(image.shape[1])
    half = spec.num_slices // 2
    source = _pad_indices(np.arange(-half, size + half), size, spec.pad_mode)
    padded = _gather_slices(image, source) if half else image  # (C, Z + 2 * half, Y, X)
    window = (spec.patch_size[0] + 2 * half, spec.patch_size[1], spec.patch_size[2])
    if _is_torch(image):
        view = padded.permute(1, 2, 3, 0)
        return view.unfold(0, window[0], 1).unfold(1, window[1], 1).unfold(2, window[2], 1)
    return sliding_window_view(np.moveaxis(padded, 0, -1), window, axis=(0, 1, 2))


def patches_from_view(view: Any, zi: Any, yi: Any, xi: Any, spec: PatchSpec) -> Any:
    """The patches starting at ``(zi, yi, xi)`` (index arrays on the view's backend and
    device, already checked to fit) from a :func:`window_view`, shaped as
    :func:`extract_patches` returns them."""
    patches = view[zi, yi, xi]  # (N, C, wz, wy, wx); padded z index = z - half + half
    if spec.is_2d_model_input:
        n, c, wz, wy, wx = patches.shape
        return patches.reshape(n, c * wz, wy, wx)
    return patches
