"""Benchmark: medseg.metrics on one 256x128x256 uint8 label pair with 4 classes.

Pair: the real IBSR_01 labels (target) against a perturbed copy (pred: shifted by
(1, 1, 2) voxels and the white-matter rim relabelled grey matter) when ../shared/data is
present, else smooth synthetic blobs perturbed the same way. Spacing is the file's
(1.5, 0.9375, 0.9375) mm, or 1 mm for the synthetic pair.

Timed (median over repeats, wall clock, one process):

* ``np.bincount`` of the flattened uint8 target (minlength 4): the baseline;
* ``confusion_matrix`` alone, and ``confusion_matrix`` + ``overlap_metrics`` + ``weighted_dice``
  (every overlap metric): the target is <= 2x the baseline;
* ``boundary_f1`` (tolerance 2 mm) and ``surface_distances`` (HD95, ASSD, HD) for classes 1-3;
* MONAI ``DiceMetric`` (all 4 classes) and ``HausdorffDistanceMetric(percentile=95)``
  (classes 1-3, with spacing) on one-hot float32 tensors built outside the timer.

Usage: python benchmarks/bench_metrics.py [--repeats 15] [--out benchmarks/results_metrics.md]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine import describe_machine
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SHAPE = (256, 128, 256)  # (Z, Y, X)
NUM_CLASSES = 4
TARGET_RATIO = 2.0


def _perturb(target: np.ndarray) -> np.ndarray:
    """Shift by (1, 1, 2) voxels (zero fill) and relabel the white-matter rim (3) as GM (2)."""
    pred = np.zeros_like(target)
    pred[1:, 1:, 2:] = target[:-1, :-1, :-2]
    wm = pred == 3
    pred[wm & ~ndimage.binary_erosion(wm)] = 2
    return pred


def _load_pair() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], str]:
    path = SHARED / "ibsr18" / "IBSR_01" / "IBSR_01_labels.nii.gz"
    if path.exists():
        import nibabel as nib

        img = nib.load(path)
        # nibabel gives (x, y, z); medseg arrays are (z, y, x)
        target = np.ascontiguousarray(np.asarray(img.dataobj, dtype=np.uint8).transpose(2, 1, 0))
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        spacing = (zooms[2], zooms[1], zooms[0])
        source = "IBSR_01 labels vs a perturbed copy"
    else:
        rng = np.random.default_rng(0)  # fixed synthetic pair
        coarse = rng.standard_normal((SHAPE[0] // 8, SHAPE[1] // 8, SHAPE[2] // 8))
        field = ndimage.zoom(ndimage.gaussian_filter(coarse, 1.0), 8, order=1)
        levels = np.quantile(field, [0.55, 0.6, 0.8])
        target = np.digitize(field, levels).astype(np.uint8)
        spacing = (1.0, 1.0, 1.0)
        source = "synthetic smooth blobs vs a perturbed copy"
    assert target.shape == SHAPE, target.shape
    return _perturb(target), target, spacing, source


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: imports, allocator, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of the fast steps")
    parser.add_argument(
        "--slow-repeats", type=int, default=3, help="timed runs of the distance steps"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results_metrics.md",
        help="Markdown file for the results table",
    )
    args = parser.parse_args()

    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    from medseg.metrics import (
        boundary_f1,
        confusion_matrix,
        overlap_metrics,
        surface_distances,
        weighted_dice,
    )

    pred, target, spacing, source = _load_pair()
    flat = target.ravel()
    tissues = [1, 2, 3]

    def all_overlap():
        cm = confusion_matrix(pred, target, num_classes=NUM_CLASSES)
        return overlap_metrics(cm), weighted_dice(cm, classes=tissues)

    def one_hot(x: np.ndarray) -> torch.Tensor:  # (Z, Y, X) -> (1, K, Z, Y, X) float32
        return torch.from_numpy(
            np.eye(NUM_CLASSES, dtype=np.float32)[x].transpose(3, 0, 1, 2)[None].copy()
        )

    pred_1h, target_1h = one_hot(pred), one_hot(target)
    monai_dice = DiceMetric(include_background=True, reduction="none")
    monai_hd95 = HausdorffDistanceMetric(percentile=95.0)

    steps: list[tuple[str, Callable[[], object], int]] = [
        ("np.bincount (baseline)", lambda: np.bincount(flat, minlength=NUM_CLASSES), args.repeats),
        ("confusion_matrix", lambda: confusion_matrix(pred, target, num_classes=4), args.repeats),
        ("confusion + all overlap metrics", all_overlap, args.repeats),
        (
            "boundary_f1 (2 mm, 3 classes)",
            lambda: boundary_f1(pred, target, classes=tissues, spacing_mm=spacing),
            args.slow_repeats,
        ),
        (
            "surface_distances (HD95/ASSD/HD, 3 classes)",
            lambda: surface_distances(pred, target, classes=tissues, spacing_mm=spacing),
            args.slow_repeats,
        ),
        ("MONAI DiceMetric (one-hot input)", lambda: monai_dice(pred_1h, target_1h), args.repeats),
        (
            "MONAI HausdorffDistanceMetric(95) (one-hot)",
            lambda: monai_hd95(pred_1h, target_1h, spacing=spacing),
            args.slow_repeats,
        ),
    ]
    timings = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn, repeats in steps:
            timings[name] = (_median_ms(fn, repeats), repeats)

    # sanity: medseg and MONAI agree on this pair
    m, _ = all_overlap()
    d = surface_distances(pred, target, classes=tissues, spacing_mm=spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice_monai = monai_dice(pred_1h, target_1h)[0].numpy()
        hd95_monai = monai_hd95(pred_1h, target_1h, spacing=spacing)[0].numpy()
    assert np.allclose(m.dice, dice_monai, atol=1e-6), (m.dice, dice_monai)
    assert np.allclose(d["hd95_mm"], hd95_monai, rtol=1e-5, atol=1e-4), (d["hd95_mm"], hd95_monai)
    bf = boundary_f1(pred, target, classes=tissues, spacing_mm=spacing)

    base = timings["np.bincount (baseline)"][0]
    ratio = timings["confusion + all overlap metrics"][0] / base
    lines = [
        "## Metrics benchmark (`benchmarks/bench_metrics.py`)",
        "",
        f"Pair: {source}, shape {SHAPE} (Z, Y, X) uint8, {NUM_CLASSES} classes, "
        f"spacing {tuple(round(s, 4) for s in spacing)} mm.",
        f"Machine: {describe_machine()}.",
        "",
        "| step | median ms | runs | ratio to np.bincount |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, (ms, repeats) in timings.items():
        lines.append(f"| {name} | {ms:.1f} | {repeats} | {ms / base:.2f}x |")
    lines += [
        "",
        f"Target: confusion + all overlap metrics <= {TARGET_RATIO:g}x np.bincount: "
        f"{ratio:.2f}x, {'met' if ratio <= TARGET_RATIO else 'NOT met'}.",
        f"Values on this pair (classes 1-3): Dice {np.round(m.dice[1:], 4).tolist()}, "
        f"HD95 {np.round(d['hd95_mm'], 3).tolist()} mm, "
        f"ASSD {np.round(d['assd_mm'], 3).tolist()} mm, "
        f"BF(2 mm) {np.round(bf, 4).tolist()}; MONAI Dice and HD95 agree (1e-6, 1e-4 mm).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text, encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
