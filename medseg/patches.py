"""Patch grids, vectorised patch extraction and reassembly (2.5D and 3D).

Terms (arrays follow ARCHITECTURE.md section 2; a case is ``(C, Z, Y, X)``):

* A **patch spec** (:class:`PatchSpec`) gives the *output* patch size and stride in
  ``(z, y, x)`` voxels along a chosen slice axis, and the number of input slices.
  The 2.5D patches of the U-SegNet paper (Kumar et al. 2018) are
  ``PatchSpec.two_and_half_d(40, 10, num_slices=3)``: a 40×40 window on one slice,
  the slices above and below as extra channels, an in-plane stride of 10. The model
  predicts the centre slice only, so the output patch is ``(1, 40, 40)``.
  A 3D spec (``num_slices=1``, any ``(pz, py, px)``) gives plain N-D patch grids.
* The **grid** (:class:`PatchGrid`) covers every voxel: starts are ``0, s, 2s, ...``
  and one last start flush with the border (``size - patch``) when the regular
  starts stop short of it.
* Out-of-volume neighbour slices at the first and last slice are **padded**:
  ``"reflect"`` mirrors without repeating the edge slice (slice -1 is slice 1, as in
  the U-Net overlap-tile strategy), ``"replicate"`` repeats the edge slice, and
  ``"constant"`` uses zeros.
* **Reassembly** combines overlapping patch predictions into one volume:

  - ``"vote"`` (majority vote): every patch votes for its argmax class at every voxel
    it covers; per-class vote counters are small integers (8 bits each while at most
    255 patches overlap a voxel), packed so one integer add updates all classes at
    once. **Tie rule:** among classes with equal votes the lowest class index wins;
    this is deterministic and the agreement map shows where ties happened (<= 0.5).
  - ``"mean"``: the mean of the softmax probabilities of the overlapping patches.
  - ``"gaussian"``: the same mean weighted by a separable Gaussian centred on each
    patch, sigma = patch size / 8 per axis (the nnU-Net and MONAI choice); axes of
    size 1 get weight 1.

  Reassembly also returns a per-voxel confidence: for ``"vote"`` the **vote
  agreement**, the fraction of votes won by the winning class; for the mean modes the
  mean probability of the winning class.

Predictions stream slab by slab along the slice axis (:func:`predict_sliding_window`),
so peak memory is bounded by the slab, not by the number of patches in the volume.
All functions take numpy arrays or torch tensors (on any device) and return the same
kind.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from medseg.options import REASSEMBLY_MODES
from medseg.typing import Shape3

PAD_MODES = ("reflect", "replicate", "constant")
GAUSSIAN_SIGMA_SCALE = 0.125  # sigma = patch size / 8
DEFAULT_PATCHES_PER_SLAB = 4096


# ---------------------------------------------------------------------------
# Backend helpers: the same code runs on numpy arrays and torch tensors
# ---------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _zeros_like_backend(ref: Any, shape: Sequence[int], dtype: Any) -> Any:
    if _is_torch(ref):
        import torch

        return torch.zeros(tuple(shape), dtype=dtype, device=ref.device)
    return np.zeros(tuple(shape), dtype=dtype)


def _as_index(ref: Any, values: np.ndarray) -> Any:
    """Index array on the backend (and device) of ``ref``."""
    if _is_torch(ref):
        import torch

        return torch.as_tensor(values, dtype=torch.long, device=ref.device)
    return values


def _moveaxis(x: Any, src: int, dst: int) -> Any:
    if _is_torch(x):
        return x.movedim(src, dst)
    return np.moveaxis(x, src, dst)


# ---------------------------------------------------------------------------
# Patch specs and grids
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Reassembly
# ---------------------------------------------------------------------------


def _fold(values: Any, grid: PatchGrid, z_index: slice, z_extent: int) -> Any:
    """Overlap-add patch values onto the slab they cover, one axis at a time.

    Args:
        values: ``(*lead, nz, ny, nx, pz, py, px)`` values of the patches whose z-start
            index is in ``z_index``, in grid order.
        z_extent: Number of slices of the output slab, which starts at the first z-start.

    Returns:
        ``(*lead, z_extent, Y, X)`` sums. Cost: one add per patch element per axis;
        the Python loops run over grid positions (tens), never over patches.

    1D picture for x (patch 4, starts 0 and 2):  out[0:4] += v[0];  out[2:6] += v[1]
    """
    zs = grid.starts[0][z_index]
    ys, xs = grid.starts[1], grid.starts[2]
    pz, py, px = grid.spec.patch_size
    big_y, big_x = grid.spatial_shape[1], grid.spatial_shape[2]
    lead = tuple(values.shape[:-6])
    dtype = values.dtype

    if len(xs) == 1 and px == big_x:
        out_x = values[..., 0, :, :, :]
    else:
        out_x = _zeros_like_backend(values, (*lead, len(zs), len(ys), pz, py, big_x), dtype)
        for j, x0 in enumerate(xs.tolist()):
            out_x[..., x0 : x0 + px] += values[..., j, :, :, :]
    # out_x: (*lead, nz, ny, pz, py, X)
    if len(ys) == 1 and py == big_y:
        out_y = out_x[..., 0, :, :, :]
    else:
        out_y = _zeros_like_backend(values, (*lead, len(zs), pz, big_y, big_x), dtype)
        for i, y0 in enumerate(ys.tolist()):
            out_y[..., y0 : y0 + py, :] += out_x[..., i, :, :, :]
    # out_y: (*lead, nz, pz, Y, X)
    rel = zs - zs[0]
    if pz == 1 and np.array_equal(rel, np.arange(len(zs))) and z_extent == len(zs):
        return out_y.reshape(*lead, z_extent, big_y, big_x)
    out = _zeros_like_backend(values, (*lead, z_extent, big_y, big_x), dtype)
    for k, z0 in enumerate(rel.tolist()):
        out[..., z0 : z0 + pz, :, :] += out_y[..., k, :, :, :]
    return out


@dataclass(frozen=True)
class _VotePacking:
    """Per-class vote counters packed into integer words (8 or 16 bits per counter)."""

    num_classes: int
    bits: int
    per_word: int
    num_words: int
    word_dtype: str  # "int32" or "int64"

    @classmethod
    def for_votes(cls, num_classes: int, max_votes: int) -> _VotePacking:
        if max_votes <= 255:
            bits = 8
        elif max_votes <= 32767:  # torch has no general uint16: keep int16 counters positive
            bits = 16
        else:
            bits = 32
        if bits == 8 and num_classes <= 4:
            return cls(num_classes, 8, 4, 1, "int32")
        per_word = 64 // bits
        return cls(num_classes, bits, per_word, math.ceil(num_classes / per_word), "int64")

    def lut(self) -> np.ndarray:
        """(num_words, K) word value that a vote for class k adds to each word."""
        dtype = np.int32 if self.word_dtype == "int32" else np.int64
        table = np.zeros((self.num_words, self.num_classes), dtype=dtype)
        for k in range(self.num_classes):
            word, slot = divmod(k, self.per_word)
            table[word, k] = 1 << (self.bits * slot)  # < 2**63 for int64, 2**31 for int32
        return table

    def unpack(self, words: Any) -> Any:
        """(num_words, *S) packed sums -> (K, *S) per-class counts (uint8/16/32)."""
        words = words.contiguous() if _is_torch(words) else np.ascontiguousarray(words)
        if _is_torch(words):
            import torch

            if sys.byteorder != "little":  # pragma: no cover - no big-endian torch targets
                raise RuntimeError("packed vote counters assume a little-endian machine")
            unit = {8: torch.uint8, 16: torch.int16, 32: torch.int32}[self.bits]
            counts = words.view(unit).reshape(*words.shape, -1)
        else:
            words = words.astype(words.dtype.newbyteorder("<"), copy=False)
            np_unit: Any = {8: np.uint8, 16: np.uint16, 32: np.uint32}[self.bits]
            counts = words.view(np_unit).reshape(*words.shape, -1)
        # (W, *S, per_word) -> (W * per_word, *S) -> first K
        counts = _moveaxis(counts, -1, 1)
        counts = counts.reshape(-1, *words.shape[1:])
        return counts[: self.num_classes]


def _gaussian_weight(patch_size: Shape3) -> np.ndarray:
    """Separable Gaussian importance (pz, py, px), float32, max 1, sigma = size / 8."""
    axes = []
    for p in patch_size:
        if p == 1:
            axes.append(np.ones(1))
            continue
        x = np.arange(p) - (p - 1) / 2.0
        axes.append(np.exp(-0.5 * (x / (GAUSSIAN_SIGMA_SCALE * p)) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (w / w.max()).astype(np.float32)


@dataclass(frozen=True)
class Reassembled:
    """A reassembled prediction.

    Attributes:
        labels: Predicted classes, uint8 ``(Z, Y, X)``.
        confidence: float32 ``(Z, Y, X)`` in [0, 1]: the vote agreement (fraction of
            votes won by the winner) for ``"vote"``, the winner's mean probability for
            the mean modes.
        probs: Mean class probabilities, float32 ``(K, Z, Y, X)``, or None when not
            requested.
    """

    labels: Any
    confidence: Any
    probs: Any = None


class _SlabAccumulator:
    """Accumulates folded patch values slab by slab and emits finished slices.

    Slices are final once no later patch can cover them, so only a band of about one
    patch depth plus one slab is ever held in memory.
    """

    def __init__(self, grid: PatchGrid, mode: str, num_classes: int, want_probs: bool, ref: Any):
        self.grid, self.mode, self.k = grid, mode, num_classes
        self.want_probs = want_probs or mode != "vote"
        self.ref = ref
        self.packing = (
            _VotePacking.for_votes(num_classes, grid.max_votes()) if mode == "vote" else None
        )
        if self.packing is not None:
            self.lut = self._backend_array(self.packing.lut())
        spec = grid.spec
        weight = _gaussian_weight(spec.patch_size) if mode == "gaussian" else None
        self.patch_weight = None if weight is None else self._backend_array(weight)
        # separable normaliser: sum of weights covering each voxel = wz(z) * wy(y) * wx(x)
        w1d = (
            [None, None, None]
            if weight is None
            else [
                weight[:, 0, 0] / weight[:, 0, 0].max(),
                weight[0, :, 0] / weight[0, :, 0].max(),
                weight[0, 0, :] / weight[0, 0, :].max(),
            ]
        )
        self.norm = [
            _coverage(n, s, p, w)
            for n, s, p, w in zip(
                grid.spatial_shape, grid.starts, spec.patch_size, w1d, strict=True
            )
        ]
        self.lo = 0  # first slice not yet emitted
        self.votes: Any = None  # packed vote sums over slices [lo, lo + len)
        self.sums: Any = None  # probability sums over the same slices

    def _backend_array(self, a: np.ndarray) -> Any:
        if _is_torch(self.ref):
            import torch

            return torch.as_tensor(a, device=self.ref.device)
        return a

    def _add(self, acc: Any, new: Any, offset: int) -> Any:
        """Add ``new`` (lead, n, Y, X) starting at slice ``offset`` (relative to lo)."""
        need = offset + new.shape[-3]
        if acc is None:
            acc = _zeros_like_backend(new, (*new.shape[:-3], need, *new.shape[-2:]), new.dtype)
        elif acc.shape[-3] < need:
            grown = _zeros_like_backend(new, (*acc.shape[:-3], need, *acc.shape[-2:]), acc.dtype)
            grown[..., : acc.shape[-3], :, :] = acc
            acc = grown
        acc[..., offset:need, :, :] += new
        return acc

    def add(self, z_index: slice, pred_labels: Any, probs: Any) -> None:
        """Add the predictions of the patches with z-start index in ``z_index``.

        ``pred_labels``: (N, pz, py, px) int; ``probs``: (N, K, pz, py, px) float or None.
        """
        grid = self.grid
        zs = grid.starts[0][z_index]
        nz = len(zs)
        ny, nx = grid.grid_shape[1:]
        extent = int(zs[-1] - zs[0]) + grid.spec.patch_size[0]
        offset = int(zs[0]) - self.lo
        if self.packing is not None:
            idx = pred_labels
            if _is_torch(idx) and idx.dtype != __import__("torch").int64:
                idx = idx.long()
            words = self.lut[:, idx]  # (W, N, pz, py, px)
            words = words.reshape(words.shape[0], nz, ny, nx, *words.shape[2:])
            self.votes = self._add(self.votes, _fold(words, grid, z_index, extent), offset)
        if self.want_probs:
            if self.patch_weight is not None:
                probs = probs * self.patch_weight
            p = probs.reshape(nz, ny, nx, self.k, *probs.shape[2:])
            p = _moveaxis(p, 3, 0)  # (K, nz, ny, nx, pz, py, px)
            self.sums = self._add(self.sums, _fold(p, grid, z_index, extent), offset)

    def emit(self, upto: int) -> Reassembled:
        """Finalise slices ``[lo, upto)`` and drop them from the accumulator."""
        n = upto - self.lo
        sl = slice(self.lo, upto)
        probs: Any = None
        if self.sums is not None:
            norm = self.norm[0][sl][:, None, None] * self.norm[1][None, :, None] * self.norm[2]
            probs = self.sums[:, :n] / self._backend_array(norm.astype(np.float32))
            self.sums = self.sums[:, n:]
        if self.packing is not None:
            counts = self.packing.unpack(self.votes[:, :n])  # (K, n, Y, X)
            self.votes = self.votes[:, n:]
            best = counts.max(0)
            if _is_torch(counts):
                top, labels = best.values, best.indices
                total = counts.sum(0, dtype=__import__("torch").float32)
                conf = top.float() / total
            else:
                labels = counts.argmax(0)  # first maximum: lowest class wins ties
                top = best
                conf = top.astype(np.float32) / counts.sum(0, dtype=np.float32)
        else:
            if _is_torch(probs):
                best = probs.max(0)
                conf, labels = best.values, best.indices
            else:
                labels = probs.argmax(0)
                conf = probs.max(0)
        self.lo = upto
        labels = (
            labels.to(__import__("torch").uint8) if _is_torch(labels) else labels.astype(np.uint8)
        )
        return Reassembled(labels, conf, probs if self.want_probs else None)


def _split_logits(logits: Any, mode: str, want_probs: bool) -> tuple[Any, Any]:
    """(N, K, ...) logits -> (argmax labels (N, ...), softmax probs or None)."""
    if _is_torch(logits):
        # max(1).indices: first maximum like argmax, but ~10x faster on CPU for small K;
        # kept int64 because the vote lookup table indexes with it directly
        labels = logits.max(1).indices
        probs = logits.float().softmax(1) if (want_probs or mode != "vote") else None
        return labels, probs
    labels = logits.argmax(1).astype(np.uint8)
    probs = None
    if want_probs or mode != "vote":
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs = (e / e.sum(1, keepdims=True)).astype(np.float32)
    return labels, probs


def _concat(parts: list[Any], axis: int) -> Any:
    if _is_torch(parts[0]):
        import torch

        return torch.cat(parts, dim=axis)
    return np.concatenate(parts, axis=axis)


def reassemble_patches(
    values: Any,
    grid: PatchGrid,
    *,
    mode: str = "vote",
    num_classes: int | None = None,
    return_probs: bool = False,
) -> Reassembled:
    """Reassemble per-patch predictions into one volume.

    Args:
        values: Per-patch predictions in grid order (as from :func:`extract_patches`):
            class scores (logits or probabilities), float ``(N, K, *patch)``, or, for
            ``mode="vote"`` only, class labels, integer ``(N, *patch)``. ``*patch`` is
            ``(py, px)`` for one-slice patches or ``(pz, py, px)``.
        grid: The grid the patches came from.
        mode: ``"vote"``, ``"mean"`` or ``"gaussian"`` (module docstring).
        num_classes: K; required when ``values`` are labels.
        return_probs: Also return mean probabilities (scores are softmaxed first).

    Returns:
        :class:`Reassembled` on the grid's volume (slice axis first).

    Example:
        >>> img = np.zeros((1, 1, 6, 6), np.float32)
        >>> _, g = extract_patches(img, PatchSpec((1, 4, 4), (1, 2, 2)))
        >>> labels = np.ones((g.num_patches, 4, 4), np.uint8)
        >>> out = reassemble_patches(labels, g, num_classes=2)
        >>> int(out.labels.sum()), float(out.confidence.min())
        (36, 1.0)
    """
    if mode not in REASSEMBLY_MODES:
        raise ValueError(f"mode must be one of {REASSEMBLY_MODES}, got {mode!r}")
    patch = grid.spec.patch_size
    n = grid.num_patches
    is_labels = values.ndim in (3, 4) and not (
        values.dtype.is_floating_point
        if _is_torch(values)
        else np.issubdtype(values.dtype, np.floating)
    )
    if is_labels:
        if mode != "vote" or return_probs:
            raise ValueError(
                f"values must be class scores (N, K, *patch) for mode={mode!r} "
                f"or return_probs, got integer labels of shape {tuple(values.shape)}"
            )
        if num_classes is None:
            raise ValueError("num_classes must be given when values are labels, got None")
        if values.shape[0] != n or int(np.prod(values.shape[1:])) != int(np.prod(patch)):
            raise ValueError(
                f"values must hold {n} patches of {patch}, got shape {tuple(values.shape)}"
            )
        labels, probs = values.reshape(n, *patch), None
        k = num_classes
    else:
        k = values.shape[1]
        if values.shape[0] != n or int(np.prod(values.shape[2:])) != int(np.prod(patch)):
            raise ValueError(
                f"values must hold {n} patches of {patch}, got shape {tuple(values.shape)}"
            )
        if num_classes is not None and num_classes != k:
            raise ValueError(f"num_classes must match values.shape[1] = {k}, got {num_classes}")
        labels, probs = _split_logits(values, mode, return_probs)
        labels = labels.reshape(n, *patch)
        if probs is not None:
            probs = probs.reshape(n, k, *patch)
    expected = (n, *patch)
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"values must hold {n} patches of {patch}, got shape {tuple(values.shape)}"
        )
    if k > 256:
        raise ValueError(f"num_classes must be at most 256 (uint8 labels), got {k}")
    acc = _SlabAccumulator(grid, mode, k, return_probs, values)
    acc.add(slice(None), labels, probs)
    return acc.emit(grid.spatial_shape[0])


# ---------------------------------------------------------------------------
# Streaming sliding-window prediction
# ---------------------------------------------------------------------------


def _num_groups(grid: PatchGrid, patches_per_slab: int) -> int:
    per_start = grid.grid_shape[1] * grid.grid_shape[2]
    return max(1, patches_per_slab // per_start)


def predict_sliding_window(
    image: Any,
    predictor: Callable[[Any], Any],
    spec: PatchSpec,
    *,
    mode: str = "vote",
    batch_size: int = 1024,
    patches_per_slab: int = DEFAULT_PATCHES_PER_SLAB,
    return_probs: bool = False,
    device: Any = None,
    channels_last: bool = True,
    roi: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Reassembled:
    """Predict a whole volume from overlapping patches, streaming slab by slab.

    Patches are extracted for a slab of slices at a time, sent through ``predictor`` in
    batches of ``batch_size``, and folded into per-class counters (or probability sums)
    that cover only the slab; finished slices are reduced to labels right away. Peak
    memory is therefore set by ``patches_per_slab``, not by the size of the volume.

    Args:
        image: Intensities, float32 ``(C, Z, Y, X)``, numpy or torch (any device).
        predictor: Maps a float32 torch batch of model inputs ((B, C * num_slices, py,
            px) for one-slice patches, else (B, C, pz, py, px)) to logits (B, K, py, px)
            or (B, K, pz, py, px). Called under ``torch.inference_mode()``.
        spec: Patch size, stride, slices, slice axis and padding.
        mode: ``"vote"`` (default), ``"mean"`` or ``"gaussian"``.
        batch_size: Patches per predictor call.
        patches_per_slab: About how many patches are extracted and reduced at once.
        return_probs: Also return mean probabilities (K, Z, Y, X).
        device: Where patches are extracted and reduced (default: the image's device,
            CPU for numpy input). The predictor is called on tensors on this device.
        channels_last: Hand the predictor channels-last tensors (NHWC / NDHWC memory,
            the same logical shape), which oneDNN and cuDNN convolutions run several
            times faster. Pass False for a predictor that calls ``.view`` on its input.
        roi: bool ``(Z, Y, X)`` (input axis order) or None. With a region of interest (a
            brain mask), a patch whose output window holds no ROI voxel is not sent to
            the predictor: it votes background (probability 1 for class 0). Voxels of the
            ROI get exactly the votes they would get without it.
        progress: Called as ``progress(done, total)`` with the number of patches finished
            (skipped ROI patches included) after every slab; None (default): silent.

    Returns:
        :class:`Reassembled` in the input's axis order, numpy for numpy input and torch
        (on ``device``) for torch input.

    Example:
        >>> import torch
        >>> img = np.random.default_rng(0).random((1, 4, 12, 12), dtype=np.float32)
        >>> def predictor(x):  # class 1 where the centre slice is bright
        ...     centre = x[:, 1:2]
        ...     return torch.cat([0.5 - centre, centre - 0.5], dim=1)
        >>> out = predict_sliding_window(img, predictor, PatchSpec.two_and_half_d(8, 2))
        >>> bool((out.labels == (img[0] > 0.5)).all())
        True
    """
    import torch

    _check_image(image)
    if mode not in REASSEMBLY_MODES:
        raise ValueError(f"mode must be one of {REASSEMBLY_MODES}, got {mode!r}")
    if batch_size < 1 or patches_per_slab < 1:
        raise ValueError(
            f"batch_size and patches_per_slab must be >= 1, got {batch_size} and {patches_per_slab}"
        )
    is_numpy = not _is_torch(image)
    vol = torch.from_numpy(np.ascontiguousarray(image)) if is_numpy else image
    if device is not None:
        vol = vol.to(device)
    vol = vol.float().movedim(1 + spec.slice_axis, 1)
    grid = make_grid(vol.shape[1:], spec)
    active = None
    if roi is not None:
        roi = np.asarray(roi, dtype=bool)
        if roi.shape != tuple(image.shape[1:]):
            raise ValueError(
                f"roi must have the image's spatial shape {tuple(image.shape[1:])}, got {roi.shape}"
            )
        active = active_windows(np.moveaxis(roi, spec.slice_axis, 0), grid)

    out_shape = grid.spatial_shape
    labels_out = torch.empty(out_shape, dtype=torch.uint8, device=vol.device)
    conf_out = torch.empty(out_shape, dtype=torch.float32, device=vol.device)
    probs_out = None
    acc: _SlabAccumulator | None = None
    zs = grid.starts[0]
    step = _num_groups(grid, patches_per_slab)
    k = 0
    finished = 0
    with torch.inference_mode():
        for a in range(0, len(zs), step):
            z_index = slice(a, min(a + step, len(zs)))
            inputs = _extract_for_starts(vol, grid, z_index)
            if channels_last:
                fmt = torch.channels_last if inputs.ndim == 4 else torch.channels_last_3d
                inputs = inputs.contiguous(memory_format=fmt)
            keep = None if active is None else active[z_index].reshape(-1)
            run = inputs
            if keep is not None and not keep.all():
                # at least one patch, so that the number of classes is known
                idx = np.flatnonzero(keep) if keep.any() or acc is not None else np.arange(1)
                run = inputs[_as_index(inputs, idx)]
            label_parts, prob_parts = [], []
            for b in range(0, run.shape[0], batch_size):
                logits = predictor(run[b : b + batch_size])
                _check_logits(logits, run[b : b + batch_size], spec)
                lab, prob = _split_logits(logits, mode, return_probs)
                label_parts.append(lab)
                prob_parts.append(prob)
            if label_parts:
                k = int(logits.shape[1])
            if run is not inputs and keep is not None:
                label_parts, prob_parts = _background_elsewhere(
                    label_parts,
                    prob_parts,
                    idx,
                    keep,
                    inputs,
                    spec,
                    k,
                    want_probs=return_probs or mode != "vote",
                )
            if acc is None:
                if k > 256:
                    raise ValueError(f"predictor must return at most 256 classes, got {k}")
                acc = _SlabAccumulator(grid, mode, k, return_probs, vol)
                if return_probs:
                    probs_out = torch.empty((k, *out_shape), dtype=torch.float32, device=vol.device)
            labels = _concat(label_parts, 0).reshape(-1, *spec.patch_size)
            probs = None
            if prob_parts[0] is not None:
                probs = _concat(prob_parts, 0).reshape(-1, k, *spec.patch_size)
            acc.add(z_index, labels, probs)
            done = int(zs[z_index.stop]) if z_index.stop < len(zs) else out_shape[0]
            lo = acc.lo
            part = acc.emit(done)
            labels_out[lo:done] = part.labels
            conf_out[lo:done] = part.confidence
            if probs_out is not None:
                probs_out[:, lo:done] = part.probs
            if progress is not None:
                finished += inputs.shape[0]
                progress(finished, grid.num_patches)
    axis = spec.slice_axis
    labels_t, conf_t = labels_out.movedim(0, axis), conf_out.movedim(0, axis)
    probs_t = None if probs_out is None else probs_out.movedim(1, 1 + axis)
    if is_numpy:
        return Reassembled(
            np.ascontiguousarray(labels_t.cpu().numpy()),
            np.ascontiguousarray(conf_t.cpu().numpy()),
            None if probs_t is None else np.ascontiguousarray(probs_t.cpu().numpy()),
        )
    return Reassembled(labels_t, conf_t, probs_t)


def active_windows(roi: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """Which patches of a grid hold at least one ROI voxel in their output window.

    Args:
        roi: bool ``(Z, Y, X)`` with the grid's slice axis first.
        grid: The patch grid of that volume.

    Returns:
        bool ``grid.grid_shape`` ``(nz, ny, nx)``, z-major like :meth:`PatchGrid.locations`.

    Example:
        >>> roi = np.zeros((1, 6, 6), bool); roi[0, 5, 5] = True
        >>> g = make_grid((1, 6, 6), PatchSpec((1, 4, 4), (1, 2, 2)))
        >>> active_windows(roi, g).astype(int).tolist()
        [[[0, 0], [0, 1]]]
    """
    # summed-volume table: a window's sum from its 8 corners (inclusion-exclusion)
    table = np.zeros(tuple(n + 1 for n in roi.shape), dtype=np.int64)
    table[1:, 1:, 1:] = roi.cumsum(0).cumsum(1).cumsum(2)
    lo = np.meshgrid(*grid.starts, indexing="ij")
    hi = [a + p for a, p in zip(lo, grid.spec.patch_size, strict=True)]
    total = np.zeros(grid.grid_shape, dtype=np.int64)
    for corner in range(8):
        pick = [(hi, lo)[(corner >> axis) & 1][axis] for axis in range(3)]
        sign = -1 if bin(corner).count("1") % 2 else 1
        total += sign * table[pick[0], pick[1], pick[2]]
    return total > 0


def _background_elsewhere(
    label_parts: list[Any],
    prob_parts: list[Any],
    idx: np.ndarray,
    keep: np.ndarray,
    inputs: Any,
    spec: PatchSpec,
    k: int,
    want_probs: bool,
) -> tuple[list[Any], list[Any]]:
    """Predictions for every patch of a slab from those of the patches ``idx``: patches
    outside the ROI (``keep`` False) vote background (class 0, probability 1)."""
    import torch

    num, dev = int(inputs.shape[0]), inputs.device
    out_shape = tuple(spec.patch_size[1:]) if spec.is_2d_model_input else tuple(spec.patch_size)
    full = torch.zeros((num, *out_shape), dtype=torch.int64, device=dev)
    ran = np.flatnonzero(keep[idx]) if len(idx) else idx  # the patches run that count
    if label_parts:
        labels = _concat(label_parts, 0)
        full[torch.as_tensor(idx[ran], device=dev)] = labels[torch.as_tensor(ran, device=dev)]
    probs_full = None
    if want_probs:
        probs_full = torch.zeros((num, k, *out_shape), dtype=torch.float32, device=dev)
        probs_full[:, 0] = 1.0
        if prob_parts:
            probs = _concat(prob_parts, 0)
            where = torch.as_tensor(idx[ran], device=dev)
            probs_full[where] = probs[torch.as_tensor(ran, device=dev)].float()
    return [full], [probs_full]


def _check_logits(logits: Any, inputs: Any, spec: PatchSpec) -> None:
    expected_spatial = (
        tuple(inputs.shape[2:]) if not spec.is_2d_model_input else tuple(spec.patch_size[1:])
    )
    if (
        not _is_torch(logits)
        or logits.ndim != 2 + len(expected_spatial)
        or tuple(logits.shape[2:]) != expected_spatial
        or logits.shape[0] != inputs.shape[0]
    ):
        got = tuple(logits.shape) if hasattr(logits, "shape") else type(logits).__name__
        raise ValueError(
            f"predictor output must be a torch tensor of shape ({inputs.shape[0]}, K, "
            f"{', '.join(map(str, expected_spatial))}), got {got}"
        )
