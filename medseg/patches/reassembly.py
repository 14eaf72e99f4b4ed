"""Reassembly of overlapping patch predictions into one volume.

:func:`_fold` overlap-adds patch values onto the slab they cover, :class:`_VotePacking`
packs per-class vote counters into integer words, :class:`_SlabAccumulator` folds and
emits finished slices slab by slab, and :func:`reassemble_patches` reassembles the patches
of a whole grid at once into a :class:`Reassembled`. The modes (vote, mean, gaussian), the
tie rule and the confidence are defined in the package docstring of :mod:`medseg.patches`
("the module docstring" below); arrays follow ARCHITECTURE.md section 2.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.options import REASSEMBLY_MODES
from medseg.patches._backend import _is_torch, _moveaxis, _zeros_like_backend
from medseg.patches.grid import PatchGrid, _coverage
from medseg.typing import Shape3

GAUSSIAN_SIGMA_SCALE = 0.125  # sigma = patch size / 8


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
        >>> from medseg.patches import PatchSpec, extract_patches
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
