"""Slow, obviously correct reference implementations used by the tests.

Every function here is written for clarity, with explicit Python loops; none of
it is imported by ``medseg``. Tests compare the fast implementations against these.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------
# Patch grids, extraction and reassembly
# ---------------------------------------------------------------------------


def grid_starts_loop(size: int, patch: int, stride: int) -> list[int]:
    """Starts 0, stride, 2*stride, ... and one last start flush with the border."""
    starts = []
    s = 0
    while s + patch <= size:
        starts.append(s)
        s += stride
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


def pad_index_loop(i: int, n: int, mode: str) -> int:
    """Source index for (possibly out-of-range) index ``i`` on an axis of length ``n``."""
    if 0 <= i < n:
        return i
    if mode == "replicate":
        return 0 if i < 0 else n - 1
    if mode == "reflect":  # mirror without repeating the edge: -1 -> 1, n -> n-2
        if n == 1:
            return 0
        while i < 0 or i >= n:
            i = -i if i < 0 else 2 * (n - 1) - i
        return i
    raise ValueError(mode)


def extract_patches_loop(image: np.ndarray, patch_size, stride) -> tuple[np.ndarray, np.ndarray]:
    """Patches of a (C, Z, Y, X) image, z-major then y then x; returns (patches, starts)."""
    _, nz, ny, nx = image.shape
    zs = grid_starts_loop(nz, patch_size[0], stride[0])
    ys = grid_starts_loop(ny, patch_size[1], stride[1])
    xs = grid_starts_loop(nx, patch_size[2], stride[2])
    patches, starts = [], []
    for z in zs:
        for y in ys:
            for x in xs:
                p = image[:, z : z + patch_size[0], y : y + patch_size[1], x : x + patch_size[2]]
                patches.append(p.copy())
                starts.append((z, y, x))
    return np.stack(patches), np.array(starts)


def extract_patches_2p5d_loop(
    image: np.ndarray, patch_size, stride, num_slices: int = 3, pad_mode: str = "reflect"
) -> tuple[np.ndarray, np.ndarray]:
    """2.5D patches of a (C, Z, Y, X) image: (N, C*num_slices, py, px), channel = c*S + s.

    Slice s of the patch at slice z is image slice z - num_slices//2 + s (padded at the ends).
    """
    c_in, nz, ny, nx = image.shape
    half = num_slices // 2
    ys = grid_starts_loop(ny, patch_size[0], stride[0])
    xs = grid_starts_loop(nx, patch_size[1], stride[1])
    patches, starts = [], []
    for z in range(nz):
        for y in ys:
            for x in xs:
                p = np.empty((c_in * num_slices, patch_size[0], patch_size[1]), image.dtype)
                for c in range(c_in):
                    for s in range(num_slices):
                        src = pad_index_loop(z - half + s, nz, pad_mode)
                        p[c * num_slices + s] = image[c, src, y : y + patch_size[0], x : x + patch_size[1]]
                patches.append(p)
                starts.append((z, y, x))
    return np.stack(patches), np.array(starts)


def vote_loop(labels: np.ndarray, starts: np.ndarray, shape, num_classes: int):
    """Majority vote: (N, pz, py, px) labels at (N, 3) starts -> (labels, agreement).

    Ties go to the lowest class index. Agreement is winner votes / all votes.
    """
    counts = np.zeros((num_classes, *shape), dtype=np.int64)
    pz, py, px = labels.shape[1:]
    for n in range(labels.shape[0]):
        z0, y0, x0 = starts[n]
        for dz in range(pz):
            for dy in range(py):
                for dx in range(px):
                    counts[labels[n, dz, dy, dx], z0 + dz, y0 + dy, x0 + dx] += 1
    out = np.zeros(shape, dtype=np.uint8)
    agree = np.zeros(shape, dtype=np.float32)
    for z in range(shape[0]):
        for y in range(shape[1]):
            for x in range(shape[2]):
                c = counts[:, z, y, x]
                best = 0
                for k in range(num_classes):
                    if c[k] > c[best]:
                        best = k
                out[z, y, x] = best
                agree[z, y, x] = c[best] / c.sum()
    return out, agree


def weighted_mean_loop(probs: np.ndarray, starts: np.ndarray, shape, weight: np.ndarray | None = None):
    """Weighted mean of (N, K, pz, py, px) patch values at starts -> (K, Z, Y, X)."""
    n, k = probs.shape[:2]
    psize = probs.shape[2:]
    if weight is None:
        weight = np.ones(psize)
    total = np.zeros((k, *shape))
    wsum = np.zeros(shape)
    for i in range(n):
        z0, y0, x0 = starts[i]
        for dz in range(psize[0]):
            for dy in range(psize[1]):
                for dx in range(psize[2]):
                    w = weight[dz, dy, dx]
                    total[:, z0 + dz, y0 + dy, x0 + dx] += w * probs[i, :, dz, dy, dx]
                    wsum[z0 + dz, y0 + dy, x0 + dx] += w
    return total / wsum
