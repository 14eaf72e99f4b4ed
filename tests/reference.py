"""Slow, obviously correct reference implementations used by the tests.

Every function here is written for clarity, with explicit Python loops; none of
it is imported by ``medseg``. Tests compare the fast implementations against these.
The seeded synthetic inputs at the end serve the tests and the benchmarks alike.
"""

from __future__ import annotations

import math

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
                        p[c * num_slices + s] = image[
                            c, src, y : y + patch_size[0], x : x + patch_size[1]
                        ]
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


def weighted_mean_loop(
    probs: np.ndarray, starts: np.ndarray, shape, weight: np.ndarray | None = None
):
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


# ---------------------------------------------------------------------------
# Metrics (slow references for medseg.metrics; written from the definitions)
# ---------------------------------------------------------------------------


def confusion_matrix_loop(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[t, p] = number of voxels with target t and prediction p, by an explicit loop."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(target.ravel().tolist(), pred.ravel().tolist(), strict=True):
        cm[int(t), int(p)] += 1  # int(): a pair of Python bools would index as a mask
    return cm


def voxel_set(labels: np.ndarray, label: int) -> set[tuple[int, ...]]:
    """The set of coordinate tuples (z, y, x) where ``labels == label``."""
    out = set()
    for index in np.ndindex(*labels.shape):
        if labels[index] == label:
            out.add(tuple(int(i) for i in index))
    return out


def _safe_ratio(num: float, den: float) -> float:
    return num / den if den != 0 else float("nan")


def set_metrics(pred: np.ndarray, target: np.ndarray, label: int) -> dict[str, float]:
    """Dice, IoU, precision, recall, specificity of one label from sets of voxel coordinates."""
    everything = set(tuple(int(i) for i in index) for index in np.ndindex(*pred.shape))
    p = voxel_set(pred, label)
    t = voxel_set(target, label)
    tn = everything - p - t
    return {
        "dice": _safe_ratio(2 * len(p & t), len(p) + len(t)),
        "iou": _safe_ratio(len(p & t), len(p | t)),
        "precision": _safe_ratio(len(p & t), len(p)),
        "recall": _safe_ratio(len(p & t), len(t)),
        "specificity": _safe_ratio(len(tn), len(everything - t)),
    }


def global_metrics_loop(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, float]:
    """Pixel accuracy, mean IoU, frequency-weighted IoU, mean class accuracy (FCN paper)."""
    n = pred.size
    correct = sum(1 for p, t in zip(pred.ravel(), target.ravel(), strict=True) if p == t)
    ious, weights, accs = [], [], []
    for k in range(num_classes):
        m = set_metrics(pred, target, k)
        n_target = len(voxel_set(target, k))
        if m["iou"] == m["iou"]:  # not NaN: k is in pred or target
            ious.append(m["iou"])
        if n_target:
            weights.append((n_target, m["iou"]))
            accs.append(m["recall"])
    return {
        "accuracy": correct / n,
        "mean_iou": sum(ious) / len(ious),
        "fw_iou": sum(w * v for w, v in weights) / sum(w for w, _ in weights),
        "mean_class_accuracy": sum(accs) / len(accs),
    }


def weighted_dice_loop(pred: np.ndarray, target: np.ndarray, classes) -> float:
    """sum_k |T_k| Dice_k / sum_k |T_k| over classes, from sets."""
    num = den = 0.0
    for k in classes:
        size = len(voxel_set(target, k))
        if size:
            num += size * set_metrics(pred, target, k)["dice"]
            den += size
    return num / den if den else float("nan")


def boundary_loop(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask or outside the array (any ndim)."""
    out = np.zeros(mask.shape, dtype=bool)
    for index in np.ndindex(*mask.shape):
        if not mask[index]:
            continue
        for axis in range(mask.ndim):
            for step in (-1, 1):
                nb = list(index)
                nb[axis] += step
                if not 0 <= nb[axis] < mask.shape[axis] or not mask[tuple(nb)]:
                    out[index] = True
    return out


def boundary_points_mm(labels: np.ndarray, label: int, spacing_mm) -> list[tuple[float, ...]]:
    """Boundary voxel centres of ``labels == label`` in mm; a Z == 1 map is treated as 2D."""
    mask = labels == label
    spacing = tuple(spacing_mm)
    if mask.shape[0] == 1:
        mask, spacing = mask[0], spacing[1:]
    edge = boundary_loop(mask)
    return [
        tuple(i * s for i, s in zip(index, spacing, strict=True))
        for index in np.ndindex(*edge.shape)
        if edge[index]
    ]


def nearest_distances(points, others) -> list[float]:
    """For every point, the Euclidean distance to the nearest of ``others`` (brute force)."""
    out = []
    for a in points:
        best = float("inf")
        for b in others:
            best = min(best, sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5)
        out.append(best)
    return out


def percentile_linear(values, q: float) -> float:
    """q-th percentile with linear interpolation between order statistics (numpy's default)."""
    s = sorted(values)
    pos = q / 100 * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def surface_distances_brute(pred, target, label: int, spacing_mm, percentile: float = 95.0):
    """(hd_q, hd, assd) in mm from brute-force boundary distances; NaN if a mask is empty."""
    nan = float("nan")
    if not (pred == label).any() or not (target == label).any():
        return nan, nan, nan
    bp = boundary_points_mm(pred, label, spacing_mm)
    bt = boundary_points_mm(target, label, spacing_mm)
    d_pt = nearest_distances(bp, bt)
    d_tp = nearest_distances(bt, bp)
    hd_q = max(percentile_linear(d_pt, percentile), percentile_linear(d_tp, percentile))
    assd = (sum(d_pt) + sum(d_tp)) / (len(d_pt) + len(d_tp))
    return hd_q, max(max(d_pt), max(d_tp)), assd


def boundary_f1_brute(pred, target, label: int, spacing_mm, tolerance_mm: float) -> float:
    """BF score: boundary precision/recall within tolerance (+1e-6 mm), harmonic mean."""
    if not (pred == label).any() or not (target == label).any():
        return float("nan")
    bp = boundary_points_mm(pred, label, spacing_mm)
    bt = boundary_points_mm(target, label, spacing_mm)
    limit = tolerance_mm + 1e-6
    precision = sum(d <= limit for d in nearest_distances(bp, bt)) / len(bp)
    recall = sum(d <= limit for d in nearest_distances(bt, bp)) / len(bt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------
# Weight maps (slow references for medseg.weightmap)
# ---------------------------------------------------------------------------


def unet_weight_map_naive(
    instances: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights=None,
    spacing=None,
) -> np.ndarray:
    """U-Net eq. (2) as most public code computes it: one full-image Euclidean distance
    transform per cell, stacked (N, ...), sorted along N, the two smallest per pixel.

    Border term on background pixels only; w_c = N / (K * N_k) over the K classes present
    unless ``class_weights`` = (background, cell) or {0: ..., 1: ...}. A (1, Y, X) map is
    computed in 2D; ``spacing`` (z, y, x) is the EDT sampling (z ignored in 2D).
    """
    from scipy import ndimage

    arr = np.asarray(instances)
    lab = arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr
    sampling = None if spacing is None else tuple(float(s) for s in spacing)[-lab.ndim :]
    background = lab == 0
    if class_weights is None:
        n = lab.size
        n_bg = int(background.sum())
        n_fg = n - n_bg
        k = int(n_bg > 0) + int(n_fg > 0)
        w_bg = n / (k * n_bg) if n_bg else 1.0
        w_fg = n / (k * n_fg) if n_fg else 1.0
    else:
        w_bg, w_fg = float(class_weights[0]), float(class_weights[1])
    weight = np.where(background, w_bg, w_fg).astype(np.float64)
    ids = [i for i in np.unique(lab).tolist() if i != 0]
    if len(ids) >= 2:
        dist = np.stack([ndimage.distance_transform_edt(lab != i, sampling=sampling) for i in ids])
        dist.sort(axis=0)
        d1, d2 = dist[0], dist[1]
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
        weight = weight + np.where(background, border, 0.0)
    return weight.astype(np.float32).reshape(arr.shape)


def connected_components_loop(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Flood fill in raster order: int32 labels 1..N of the non-zero pixels (any ndim).

    Two pixels are neighbours when they differ by at most 1 along every axis and along
    at most ``connectivity`` axes.
    """
    fg = np.asarray(mask) != 0
    out = np.zeros(fg.shape, dtype=np.int32)
    offsets = [
        off for off in np.ndindex(*(3,) * fg.ndim) if 0 < sum(o != 1 for o in off) <= connectivity
    ]
    offsets = [tuple(o - 1 for o in off) for off in offsets]
    count = 0
    for start in np.ndindex(*fg.shape):
        if not fg[start] or out[start]:
            continue
        count += 1
        out[start] = count
        stack = [start]
        while stack:
            here = stack.pop()
            for off in offsets:
                nb = tuple(h + o for h, o in zip(here, off, strict=True))
                inside = all(0 <= i < n for i, n in zip(nb, fg.shape, strict=True))
                if inside and fg[nb] and not out[nb]:
                    out[nb] = count
                    stack.append(nb)
    return out


def class_frequencies_loop(labels, num_classes: int) -> tuple[list[int], list[int]]:
    """(pixels of class c, total pixels of the maps containing c), by explicit loops."""
    counts = [0] * num_classes
    image_pixels = [0] * num_classes
    for label in labels:
        per_image = [0] * num_classes
        for value in np.asarray(label).ravel().tolist():
            per_image[int(value)] += 1
        for c in range(num_classes):
            counts[c] += per_image[c]
            if per_image[c] > 0:
                image_pixels[c] += np.asarray(label).size
    return counts, image_pixels


def median_frequency_weights_loop(labels, num_classes: int) -> list[float]:
    """weight(c) = median(freq) / freq(c) over the classes present; 0 for absent classes."""
    counts, image_pixels = class_frequencies_loop(labels, num_classes)
    freq = {c: counts[c] / image_pixels[c] for c in range(num_classes) if counts[c] > 0}
    ordered = sorted(freq.values())
    m = len(ordered)
    median = ordered[m // 2] if m % 2 else (ordered[m // 2 - 1] + ordered[m // 2]) / 2
    return [median / freq[c] if c in freq else 0.0 for c in range(num_classes)]


# ---------------------------------------------------------------------------
# Overlap-tile prediction (medseg.tiling)
# ---------------------------------------------------------------------------


def mirror_pad_loop(plane: np.ndarray, pads) -> np.ndarray:
    """Mirror-pad a (C, Y, X) plane pixel by pixel.

    ``pads`` is ``((before_y, after_y), (before_x, after_x))`` in pixels.

    Out-of-range pixels are mirrored without repeating the edge (-1 -> 1), again and again
    for pads wider than the plane; a 1-pixel axis repeats its pixel (``pad_index_loop``).
    """
    c, ny, nx = plane.shape
    (by, ay), (bx, ax) = pads
    out = np.empty((c, by + ny + ay, bx + nx + ax), dtype=plane.dtype)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            src_y = pad_index_loop(i - by, ny, "reflect")
            src_x = pad_index_loop(j - bx, nx, "reflect")
            out[:, i, j] = plane[:, src_y, src_x]
    return out


def predict_whole_image_loop(image: np.ndarray, model, *, pads, crop_start) -> np.ndarray:
    """Softmax of ONE forward pass per z-slice over the mirror-padded slice, cropped to (Y, X).

    ``image`` is (C, Z, Y, X); ``pads`` as :func:`mirror_pad_loop`; the (Y, X) crop of the
    model output starts at ``crop_start`` (y, x). Returns probs float32 (K, Z, Y, X).
    """
    import torch

    _, nz, ny, nx = image.shape
    slices = []
    for z in range(nz):
        padded = mirror_pad_loop(image[:, z], pads)
        with torch.no_grad():
            logits = model(torch.from_numpy(padded[None].astype(np.float32)))[0]
        probs = torch.softmax(logits.double(), dim=0).numpy()
        cy, cx = crop_start
        slices.append(probs[:, cy : cy + ny, cx : cx + nx])
    return np.stack(slices, axis=1).astype(np.float32)


# ---------------------------------------------------------------------------
# Touching objects: carving gaps and filling them (medseg.instances)
# ---------------------------------------------------------------------------


def face_neighbours_loop(index: tuple[int, int, int], shape) -> list[tuple[int, int, int]]:
    """The face neighbours of a voxel of a (Z, Y, X) map: 4 in-plane when Z == 1, else 6."""
    z, y, x = index
    steps = [(0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]
    if shape[0] > 1:
        steps += [(-1, 0, 0), (1, 0, 0)]
    out = []
    for dz, dy, dx in steps:
        nb = (z + dz, y + dy, x + dx)
        if all(0 <= i < n for i, n in zip(nb, shape, strict=True)):
            out.append(nb)
    return out


def carve_touching_loop(instances: np.ndarray) -> np.ndarray:
    """Voxel by voxel: an object voxel with a face neighbour of a larger id becomes 0."""
    ids = np.asarray(instances).astype(np.int64)
    out = ids.copy()
    for index in np.ndindex(*ids.shape):
        own = ids[index]
        if own > 0 and any(ids[nb] > own for nb in face_neighbours_loop(index, ids.shape)):
            out[index] = 0
    return out.astype(np.int32)


def fill_gaps_loop(instances: np.ndarray) -> np.ndarray:
    """Voxel by voxel: a background voxel whose face neighbours hold two or more different
    object ids takes the smallest of them (neighbours read from the input, not the output)."""
    ids = np.asarray(instances).astype(np.int64)
    out = ids.copy()
    for index in np.ndindex(*ids.shape):
        if ids[index] != 0:
            continue
        around = {int(ids[nb]) for nb in face_neighbours_loop(index, ids.shape)} - {0}
        if len(around) >= 2:
            out[index] = min(around)
    return out.astype(np.int32)


# ---------------------------------------------------------------------------
# Fully connected CRF and largest-component clean-up (medseg.postprocess)
# ---------------------------------------------------------------------------


def dense_crf_naive(
    probs: np.ndarray,
    image: np.ndarray,
    spacing_mm=(1.0, 1.0, 1.0),
    w_appearance: float = 0.0,
    sigma_alpha_mm: float = 1.0,
    sigma_beta: float = 1.0,
    w_smoothness: float = 0.0,
    sigma_gamma_mm: float = 1.0,
    num_iterations: int = 5,
    prob_floor: float = 1e-6,
) -> np.ndarray:
    """Krähenbühl & Koltun 2011, Algorithm 1, with the explicit (N, N) kernel matrix.

    probs float (K, Z, Y, X), image float (C, Z, Y, X); float64 throughout; positions are
    voxel index times spacing_mm (mm); the unary is -log(max(P, prob_floor)). Every pair
    (i, j), i != j, gets k = w1 exp(-|dp|^2/(2 sa^2) - |dI|^2/(2 sb^2)) + w2 exp(-|dp|^2/(2 sg^2));
    messages, the Potts matrix mu = 1 - identity, unary, softmax. Returns Q (K, Z, Y, X).
    """
    probs = np.asarray(probs, dtype=np.float64)
    image = np.asarray(image, dtype=np.float64)
    k = probs.shape[0]
    shape = probs.shape[1:]
    voxels = list(np.ndindex(*shape))
    n = len(voxels)
    pos = np.array([[i * s for i, s in zip(v, spacing_mm, strict=True)] for v in voxels])
    inten = np.array([image[(slice(None), *v)] for v in voxels])  # (N, C)
    kernel = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            dp2 = float(np.sum((pos[i] - pos[j]) ** 2))
            di2 = float(np.sum((inten[i] - inten[j]) ** 2))
            appearance = np.exp(-dp2 / (2 * sigma_alpha_mm**2) - di2 / (2 * sigma_beta**2))
            smoothness = np.exp(-dp2 / (2 * sigma_gamma_mm**2))
            kernel[i, j] = w_appearance * appearance + w_smoothness * smoothness
    potts = np.ones((k, k)) - np.eye(k)
    unary = np.array([[-np.log(max(probs[(c, *v)], prob_floor)) for c in range(k)] for v in voxels])

    def softmax_neg(energy: np.ndarray) -> np.ndarray:
        e = np.exp(-(energy - energy.min(axis=1, keepdims=True)))
        return e / e.sum(axis=1, keepdims=True)

    q = softmax_neg(unary)  # (N, K)
    for _ in range(num_iterations):
        messages = kernel @ q  # (N, K): sum_{j != i} k_ij Q_j(l)
        pairwise = messages @ potts.T  # sum_l' mu(l, l') m(l')
        q = softmax_neg(unary + pairwise)
    out = np.zeros(probs.shape)
    for index, v in enumerate(voxels):
        out[(slice(None), *v)] = q[index]
    return out


def keep_largest_component_loop(pred: np.ndarray, classes, connectivity: int = 3) -> np.ndarray:
    """Per class (or all non-zero labels if classes == "foreground"): flood-fill components
    with ``connected_components_loop``, count sizes by looping, keep the biggest (the first
    found in raster order on ties), set the mask's other voxels to 0."""
    pred = np.asarray(pred)
    out = pred.copy()
    groups = [pred != 0] if classes == "foreground" else [pred == c for c in classes]
    for mask in groups:
        components = connected_components_loop(mask, connectivity=connectivity)
        sizes: dict[int, int] = {}
        for value in components.ravel().tolist():
            if value:
                sizes[value] = sizes.get(value, 0) + 1
        if not sizes:
            continue
        best = max(sorted(sizes), key=lambda c: sizes[c])  # first label wins ties
        for index in np.ndindex(*pred.shape):
            if mask[index] and components[index] != best:
                out[index] = 0
    return out


def appearance_sums_naive(
    image: np.ndarray, values: np.ndarray, spacing_mm, sigma_alpha_mm: float, sigma_beta: float
) -> np.ndarray:
    """sum_{j != i} exp(-|p_i - p_j|^2 / (2 sa^2) - |I_i - I_j|^2 / (2 sb^2)) values_j, pair by
    pair. image (C, Z, Y, X), values (K, Z, Y, X); float64 (K, Z, Y, X)."""
    image = np.asarray(image, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    voxels = list(np.ndindex(*image.shape[1:]))
    out = np.zeros(values.shape)
    for i in voxels:
        for j in voxels:
            if i == j:
                continue
            dp2 = sum(((a - b) * s) ** 2 for a, b, s in zip(i, j, spacing_mm, strict=True))
            di2 = float(np.sum((image[(slice(None), *i)] - image[(slice(None), *j)]) ** 2))
            weight = np.exp(-dp2 / (2 * sigma_alpha_mm**2) - di2 / (2 * sigma_beta**2))
            out[(slice(None), *i)] += weight * values[(slice(None), *j)]
    return out


# ---------------------------------------------------------------------------
# Model grid, brain masks, boxes and ROI windows (medseg.preprocess, medseg.patches)
# ---------------------------------------------------------------------------


def nearest_on_grid_loop(
    array: np.ndarray,
    input_affine: np.ndarray,
    model_affine: np.ndarray,
    model_shape,
    tie_tol: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour values of a (Z, Y, X) input at the voxel centres of a model grid.

    For every model voxel (z, y, x): its centre in world mm is ``model_affine @ (x, y, z, 1)``
    (affines take the voxel index (x, y, z), the array index reversed); ``inv(input_affine)``
    takes it to the input's voxel coordinates, and the nearest input voxel is
    ``floor(coord + 0.5)`` per axis, clipped to the volume. Where ``coord + 0.5`` lies
    within ``tie_tol`` of a whole number (half-way between two input voxels) either
    neighbour is right.

    Returns:
        ``(first, second)``: arrays of ``model_shape``, the value with the lower and with the
        higher neighbour chosen at ties (equal where there is no tie).
    """
    nz, ny, nx = (int(s) for s in model_shape)
    to_input = np.linalg.inv(np.asarray(input_affine, dtype=np.float64)) @ np.asarray(
        model_affine, dtype=np.float64
    )
    in_xyz = array.shape[::-1]
    first = np.empty((nz, ny, nx), array.dtype)
    second = np.empty((nz, ny, nx), array.dtype)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                coord = to_input @ np.array([x, y, z, 1.0])
                low, high = [], []
                for axis in range(3):
                    f = coord[axis] + 0.5
                    whole = round(f)
                    if abs(f - whole) < tie_tol:
                        lo, hi = whole - 1, whole
                    else:
                        lo = hi = int(np.floor(f))
                    n = in_xyz[axis]
                    low.append(min(max(lo, 0), n - 1))
                    high.append(min(max(hi, 0), n - 1))
                first[z, y, x] = array[low[2], low[1], low[0]]
                second[z, y, x] = array[high[2], high[1], high[0]]
    return first, second


def far_fraction_brute(
    foreground: np.ndarray, brain: np.ndarray, spacing_mm, far_mm: float, grid_mm: float = 2.0
) -> float:
    """Fraction of the foreground farther than ``far_mm`` from the nearest brain voxel.

    Both masks are first sampled every ``max(1, int(grid_mm / spacing))`` voxels per axis
    (as ``detect_skull_stripped`` documents); distances in mm between voxel centres by
    checking every pair. NaN for an empty foreground, 1.0 for an empty brain.
    """
    step = [max(1, int(grid_mm / s)) for s in spacing_mm]
    view = tuple(slice(None, None, k) for k in step)
    fg, inside = foreground[view], brain[view]
    sampling = [s * k for s, k in zip(spacing_mm, step, strict=True)]
    fg_points = [np.array(p, float) * sampling for p in np.argwhere(fg)]
    brain_points = [np.array(p, float) * sampling for p in np.argwhere(inside)]
    if not fg_points:
        return float("nan")
    if not brain_points:
        return 1.0
    far = 0
    for p in fg_points:
        nearest = min(float(np.sqrt(((p - q) ** 2).sum())) for q in brain_points)
        if nearest > far_mm:
            far += 1
    return far / len(fg_points)


def bounding_box_loop(mask: np.ndarray, margin) -> tuple[slice, ...]:
    """Box around the True voxels (min/max index per axis), widened by ``margin`` and
    clipped to the volume; the whole volume for an empty mask."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    points = np.argwhere(mask)
    box = []
    for axis, n in enumerate(mask.shape):
        lo = int(points[:, axis].min()) - margin[axis]
        hi = int(points[:, axis].max()) + 1 + margin[axis]
        box.append(slice(max(lo, 0), min(hi, n)))
    return tuple(box)


def active_windows_loop(roi: np.ndarray, grid) -> np.ndarray:
    """For each patch of ``grid`` (z-major, like ``grid.locations()``): does its output
    window hold an ROI voxel? Returns bool ``grid.grid_shape``."""
    pz, py, px = grid.spec.patch_size
    flags = []
    for z, y, x in grid.locations():
        flags.append(bool(roi[z : z + pz, y : y + py, x : x + px].any()))
    return np.array(flags, dtype=bool).reshape(grid.grid_shape)


def covered_by_windows_loop(shape, grid, active: np.ndarray) -> np.ndarray:
    """bool ``shape`` (slice axis first): voxels inside at least one active window."""
    pz, py, px = grid.spec.patch_size
    covered = np.zeros(shape, dtype=bool)
    for (z, y, x), on in zip(grid.locations(), active.reshape(-1), strict=True):
        if on:
            covered[z : z + pz, y : y + py, x : x + px] = True
    return covered


def object_table_loop(instances, image, spacing_mm):
    """Slow :func:`medseg.object_table.object_table`: one object at a time with argwhere.

    Returns a list of dicts, one per object id in increasing order.
    """
    rows = []
    stack = instances.shape[0] > 1
    sz, sy, sx = spacing_mm
    known = not (sy == 1.0 and sx == 1.0)
    for obj in sorted(int(v) for v in np.unique(instances) if v != 0):
        where = np.argwhere(instances == obj)
        row = {"id": obj, ("volume_voxels" if stack else "area_px"): len(where)}
        if known:
            if stack:
                row["volume_um3"] = len(where) * sz * sy * sx * 1e9
            else:
                row["area_um2"] = len(where) * sy * sx * 1e6
        mean = where.mean(axis=0)
        if stack:
            row["centroid_z"] = mean[0]
        row["centroid_y"], row["centroid_x"] = mean[1], mean[2]
        for c in range(image.shape[0]):
            values = [float(image[c, z, y, x]) for z, y, x in where]
            key = "mean_intensity" if image.shape[0] == 1 else f"mean_intensity_c{c}"
            row[key] = sum(values) / len(values)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Three-class boundary head (medseg.boundary)
# ---------------------------------------------------------------------------


def boundary_classes_loop(instances: np.ndarray, width: int) -> np.ndarray:
    """0 background, 1 interior, 2 boundary: an object pixel is boundary when a pixel
    within ``width`` along every axis (in-plane when Z == 1), inside the image, holds
    another id."""
    ids = np.asarray(instances)
    out = np.zeros(ids.shape, dtype=np.uint8)
    reach = (0 if ids.shape[0] == 1 else width, width, width)
    for z, y, x in np.ndindex(*ids.shape):
        own = ids[z, y, x]
        if own == 0:
            continue
        out[z, y, x] = 1
        for dz in range(-reach[0], reach[0] + 1):
            for dy in range(-width, width + 1):
                for dx in range(-width, width + 1):
                    q = (z + dz, y + dy, x + dx)
                    inside = all(0 <= i < n for i, n in zip(q, ids.shape, strict=True))
                    if inside and ids[q] != own:
                        out[z, y, x] = 2
    return out


def instances_from_boundary_loop(classes: np.ndarray) -> np.ndarray:
    """Seeds = 4-connected interior components (raster order); each round every unlabelled
    foreground pixel takes the largest id among its labelled face neighbours of the
    previous round; what no seed reaches is labelled by components, after the seeds.
    2D (Z == 1) only."""
    plane = np.asarray(classes)[0]
    labels = connected_components_loop(plane == 1, connectivity=1)
    num_seeds = int(labels.max())
    fg = plane > 0
    ny, nx = plane.shape
    while True:
        previous = labels.copy()
        changed = False
        for y in range(ny):
            for x in range(nx):
                if not fg[y, x] or previous[y, x]:
                    continue
                best = 0
                for qy, qx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= qy < ny and 0 <= qx < nx:
                        best = max(best, int(previous[qy, qx]))
                if best:
                    labels[y, x] = best
                    changed = True
        if not changed:
            break
    rest = connected_components_loop(fg & (labels == 0), connectivity=1)
    labels = np.where(rest > 0, rest + num_seeds, labels)
    # renumber 1..N in the order of the ids
    out = np.zeros(plane.shape, dtype=np.int32)
    for new, old in enumerate(sorted(set(labels[labels > 0].tolist())), start=1):
        out[labels == old] = new
    return out[None]


def boundary_classes_from_probs_loop(probs: np.ndarray, mask_threshold: float) -> np.ndarray:
    """Pixel by pixel: background unless 1 - p0 > mask_threshold; then interior (1) if
    p1 >= p2, else boundary (2). ``probs``: (3, Z, Y, X)."""
    _, nz, ny, nx = probs.shape
    out = np.zeros((nz, ny, nx), dtype=np.uint8)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                p0, p1, p2 = (float(v) for v in probs[:, z, y, x])
                if 1.0 - p0 > mask_threshold:
                    out[z, y, x] = 1 if p1 >= p2 else 2
    return out


def thin_boundaries_loop(pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ISBI 2012 border thinning, pixel by pixel: each pass gives every 0 pixel the largest
    id among its 3 x 3 in-plane neighbours (read from the previous pass) until no pixel of
    ``mask`` is 0 or nothing changes. ``pred``, ``mask``: (Z, Y, X)."""
    out = pred.astype(np.int64).copy()
    nz, ny, nx = out.shape
    while True:
        if not any(out[z, y, x] == 0 and mask[z, y, x] for z, y, x in np.ndindex(out.shape)):
            return out
        before = out.copy()
        changed = False
        for z, y, x in np.ndindex(out.shape):
            if before[z, y, x] != 0:
                continue
            best = 0
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < ny and 0 <= xx < nx:
                        best = max(best, int(before[z, yy, xx]))
            if best > 0:
                out[z, y, x] = best
                changed = True
        if not changed:
            return out


def isbi_scores_loop(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """V_Rand / V_Info (Arganda-Carreras et al. 2015) from explicit counts and sums.

    Thins ``pred`` (:func:`thin_boundaries_loop`), keeps the pixels with target > 0, counts
    every (pred id, target id) pair in a dict and evaluates the definitions term by term."""
    pred = pred if pred.ndim == 3 else pred[None]
    target = target if target.ndim == 3 else target[None]
    mask = target > 0
    thinned = thin_boundaries_loop(pred, mask)
    joint: dict[tuple[int, int], int] = {}
    for index in np.ndindex(target.shape):
        if mask[index]:
            key = (int(thinned[index]), int(target[index]))
            joint[key] = joint.get(key, 0) + 1
    total = sum(joint.values())
    s: dict[int, float] = {}
    t: dict[int, float] = {}
    for (i, j), n in joint.items():
        s[i] = s.get(i, 0.0) + n / total
        t[j] = t.get(j, 0.0) + n / total
    sum_p2 = sum((n / total) ** 2 for n in joint.values())
    split = sum_p2 / sum(v * v for v in t.values())
    merge = sum_p2 / sum(v * v for v in s.values())
    h_s = -sum(v * math.log(v) for v in s.values())
    h_t = -sum(v * math.log(v) for v in t.values())
    h_st = -sum((n / total) * math.log(n / total) for n in joint.values())
    info = h_s + h_t - h_st
    info_split = info / h_s if h_s > 0 else 1.0
    info_merge = info / h_t if h_t > 0 else 1.0
    return {
        "v_rand": 2 * split * merge / (split + merge),
        "v_rand_split": split,
        "v_rand_merge": merge,
        "v_info": 2 * info_split * info_merge / (info_split + info_merge)
        if info_split + info_merge > 0
        else 0.0,
        "v_info_split": info_split,
        "v_info_merge": info_merge,
    }


def seeded_watershed_loop(
    probability: np.ndarray, *, seed_threshold: float, mask_threshold: float
) -> np.ndarray:
    """Seeded watershed on ``1 - p`` (no smoothing, seed_distance 1, no merging) by Meyer's
    flooding, written out: seeds are the 4-connected components of ``p > seed_threshold``;
    every seed pixel enters a priority queue keyed by ``(1 - p, arrival order)``; the pixel
    popped first labels each unlabelled 4-neighbour of the mask (``p > mask_threshold``)
    with its own label and queues it. Mask parts never reached get ids after the seeds', in
    raster order. (Y, X) in, int64 (Y, X) out, ids renumbered by first raster appearance."""
    import heapq

    ny, nx = probability.shape
    seeds = connected_components_loop((probability > seed_threshold)[None], connectivity=1)[0]
    labels = seeds.astype(np.int64).copy()
    mask = probability > mask_threshold
    queue: list[tuple[float, int, int, int]] = []
    arrivals = 0
    for y, x in np.ndindex(ny, nx):
        if labels[y, x]:
            heapq.heappush(queue, (1.0 - float(probability[y, x]), arrivals, y, x))
            arrivals += 1
    while queue:
        _, _, y, x = heapq.heappop(queue)
        for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= yy < ny and 0 <= xx < nx and mask[yy, xx] and not labels[yy, xx]:
                labels[yy, xx] = labels[y, x]
                heapq.heappush(queue, (1.0 - float(probability[yy, xx]), arrivals, yy, xx))
                arrivals += 1
    rest = connected_components_loop((mask & (labels == 0))[None], connectivity=1)[0]
    labels = np.where(rest > 0, rest + int(seeds.max()), labels)
    order: dict[int, int] = {}
    out = np.zeros_like(labels)
    for y, x in np.ndindex(ny, nx):
        if labels[y, x]:
            out[y, x] = order.setdefault(int(labels[y, x]), len(order) + 1)
    return out


def boundary_strengths_loop(
    labels: np.ndarray, boundary: np.ndarray
) -> dict[tuple[int, int], float]:
    """Mean over face-touching pixel pairs of two different non-zero ids of the larger of the
    two pixels' boundary values, per id pair (a < b); any ndim."""
    sums: dict[tuple[int, int], list[float]] = {}
    for index in np.ndindex(labels.shape):
        for axis in range(labels.ndim):
            nb = list(index)
            nb[axis] += 1
            if nb[axis] >= labels.shape[axis]:
                continue
            a, b = int(labels[index]), int(labels[tuple(nb)])
            if a and b and a != b:
                value = max(float(boundary[index]), float(boundary[tuple(nb)]))
                sums.setdefault((min(a, b), max(a, b)), []).append(value)
    return {pair: sum(v) / len(v) for pair, v in sums.items()}


# ---------------------------------------------------------------------------
# Seeded synthetic inputs (tests and benchmarks/)
# ---------------------------------------------------------------------------


def voronoi_cells(shape, num_cells: int, seed: int, radius: float) -> np.ndarray:
    """Seeded Voronoi cells clipped to ``radius`` around their seed, with 1-px gaps between
    touching cells. int32, ``shape``; the ids are a seeded permutation of 1..num_cells."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, dtype=np.int32)
    points = rng.integers(0, shape, size=(num_cells, len(shape)))
    seeds[tuple(points.T)] = rng.permutation(num_cells) + 1
    dist, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[tuple(nearest)]
    cells[dist > radius] = 0
    gap = np.zeros(shape, dtype=bool)
    for axis in range(len(shape)):  # zero a pixel whose next neighbour is another cell
        a = np.moveaxis(cells, axis, 0)
        g = np.moveaxis(gap, axis, 0)
        g[:-1] |= (a[:-1] != a[1:]) & (a[:-1] > 0) & (a[1:] > 0)
    cells[gap] = 0
    return cells


def object_regions_loop(classes: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Object regions of a 2D class map by brute force: the 4-connected components of
    ``classes == 1`` (:func:`connected_components_loop`), then every pixel of class >= 2 and
    every background pixel within ``margin`` of an object pixel takes the label of the
    object pixel nearest to it (Euclidean). Also returns, per pixel, whether that nearest
    object pixel is unique in label (ties between two objects are implementation-defined)."""
    seeds = connected_components_loop(classes == 1, connectivity=1)
    points = np.argwhere(seeds > 0)
    labels = seeds[seeds > 0] if len(points) else np.zeros(0, np.int32)
    out = seeds.copy()
    unique = np.ones(classes.shape, bool)
    for y, x in np.ndindex(*classes.shape):
        if seeds[y, x] or len(points) == 0:
            continue
        d = np.sqrt(((points - (y, x)) ** 2).sum(axis=1))
        nearest = d.min()
        owners = set(labels[d == nearest].tolist())
        unique[y, x] = len(owners) == 1
        if classes[y, x] >= 2 or (classes[y, x] == 0 and nearest <= margin):
            out[y, x] = min(owners)
    return out, unique


def stain_jitter_loop(image: np.ndarray, alpha, beta, white: float) -> np.ndarray:
    """Tellez et al.'s H&E stain perturbation by brute force, one pixel at a time: the
    optical densities ``od_c = -ln(max(I_c / white, 1e-6))`` are solved for the
    haematoxylin, eosin and DAB amounts ``s`` in ``od = sum_k s_k * v_k``, with
    the Ruifrok-Johnston stain colours ``v_k`` typed in below; each ``s_k`` becomes
    ``alpha_k * s_k + beta_k``, and the pixel is ``white * min(1, exp(-od'))``.
    ``image`` is ``(3, Z, Y, X)``."""
    stains = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    out = np.zeros(image.shape, np.float64)
    for z, y, x in np.ndindex(*image.shape[1:]):
        od = np.array([-math.log(max(float(image[c, z, y, x]) / white, 1e-6)) for c in range(3)])
        amounts = np.linalg.solve(stains.T, od)  # od = stains.T @ amounts
        new = [alpha[k] * amounts[k] + beta[k] for k in range(3)]
        for c in range(3):
            od_c = sum(new[k] * stains[k, c] for k in range(3))
            out[c, z, y, x] = white * min(1.0, math.exp(-od_c))
    return out


def equivalent_diameters_loop(labels: np.ndarray) -> list[float]:
    """Each non-zero id's equivalent diameter 2 * sqrt(area / pi), pixel by pixel,
    sorted by id."""
    areas: dict[int, int] = {}
    for value in np.asarray(labels).ravel().tolist():
        if value != 0:
            areas[value] = areas.get(value, 0) + 1
    return [2.0 * math.sqrt(areas[k] / math.pi) for k in sorted(areas)]


def bilinear_resize_loop(plane: np.ndarray, shape) -> np.ndarray:
    """Bilinear resize of a 2D plane with half-pixel centres (align_corners=False, no
    antialiasing): output pixel i samples the input at (i + 0.5) * in / out - 0.5,
    clamped to the edge pixels, one pixel at a time."""
    rows, cols = plane.shape
    out = np.zeros(shape, dtype=np.float64)
    for i in range(shape[0]):
        y = max((i + 0.5) * rows / shape[0] - 0.5, 0.0)
        y0 = min(int(math.floor(y)), rows - 1)
        y1, fy = min(y0 + 1, rows - 1), y - y0
        for j in range(shape[1]):
            x = max((j + 0.5) * cols / shape[1] - 0.5, 0.0)
            x0 = min(int(math.floor(x)), cols - 1)
            x1, fx = min(x0 + 1, cols - 1), x - x0
            top = (1 - fx) * plane[y0, x0] + fx * plane[y0, x1]
            bottom = (1 - fx) * plane[y1, x0] + fx * plane[y1, x1]
            out[i, j] = (1 - fy) * top + fy * bottom
    return out


def foreground_confidence_loop(probs: np.ndarray, threshold: float) -> float:
    """Mean winning probability over the pixels whose 1 - p(background) > threshold."""
    k, z, y, x = probs.shape
    total, count = 0.0, 0
    for zi in range(z):
        for yi in range(y):
            for xi in range(x):
                column = [float(probs[c, zi, yi, xi]) for c in range(k)]
                if 1.0 - column[0] > threshold:
                    total += max(column)
                    count += 1
    return total / count if count else float("nan")
