"""Benchmark: U-Net border weight map (eq. 2), medseg's windowed EDT vs the naive reference.

The naive reference (``tests/reference.py: unet_weight_map_naive``) is what most public code
does: one Euclidean distance transform per cell over the whole image, stacked (N, Y, X),
sorted along N, the two smallest distances per pixel. ``medseg.weightmap.unet_weight_map``
computes each cell's transform only inside its bounding box grown by
floor(R - 1) px, R = sigma * sqrt(2 ln(w0 / 1e-5)) (R = 26.3, 25 px for w0 = 10, sigma = 5),
and keeps a running smallest and second-smallest squared distance.

Inputs (w0 = 10, sigma = 5, default class balance):

* ``synthetic``: 512x512, 150 seeded Voronoi cells clipped to 24 px around their seed,
  touching cells separated by 1-px gaps (seed 0; always available).
* ``dsb2018``: the DSB2018 development image with the most nuclei (3c4c6758..., 524x348,
  205 nuclei, 86 touching pairs), if ../shared/data is present.
* ``miccai2015``: image01 (488x643, 351 nuclei), if present.
* ``isbi2012``: slice_00 of the ISBI 2012 EM labels, cells = connected components of the
  255 (interior) region, if present.

Times are medians over repeated runs in this process (medseg after one warm-up run).

Usage: python benchmarks/bench_weightmap.py [--repeats 7] [--naive-repeats 3]
       [--out benchmarks/results_weightmap.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine import describe_machine

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))  # medseg and tests.reference from this checkout

from medseg.io import read_instances, read_label  # noqa: E402
from medseg.weightmap import instances_from_mask, unet_weight_map  # noqa: E402
from tests.reference import unet_weight_map_naive, voronoi_cells  # noqa: E402

W0 = 10.0
SIGMA = 5.0
DSB_ID = "3c4c675825f7509877bc10497f498c9a2e3433bf922bd870914a2eb21a54fd26"


def load_inputs() -> list[tuple[str, np.ndarray]]:
    synthetic = voronoi_cells((512, 512), num_cells=150, seed=0, radius=24.0)[None]
    inputs = [("synthetic (Voronoi, 1-px gaps)", synthetic)]
    dsb = SHARED / "dsb2018_stage1_test" / "labels" / f"{DSB_ID}.png"
    if dsb.exists():
        inputs.append((f"dsb2018 {DSB_ID[:8]}", read_instances(dsb).array))
    miccai = SHARED / "miccai2015_nuclei_he" / "labels" / "image01.png"
    if miccai.exists():
        inputs.append(("miccai2015 image01", read_instances(miccai).array))
    isbi = SHARED / "isbi2012_em" / "labels" / "slice_00.png"
    if isbi.exists():
        cells = instances_from_mask(read_label(isbi).array)  # 255 = cell interior
        inputs.append(("isbi2012 slice_00 (components)", cells))
    return inputs


def median_time(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    times = []
    out = None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    assert out is not None
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of medseg")
    parser.add_argument("--naive-repeats", type=int, default=3, help="timed runs of naive")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results_weightmap.md")
    args = parser.parse_args()

    machine = describe_machine()
    print(f"Machine: {machine}")
    rows = []
    for name, cells in load_inputs():
        num_cells = len(np.unique(cells)) - 1

        def ours(cells=cells):
            return unet_weight_map(cells, w0=W0, sigma=SIGMA)

        def naive(cells=cells):
            return unet_weight_map_naive(cells, w0=W0, sigma=SIGMA)

        ours()  # warm-up
        t_ours, w_ours = median_time(ours, args.repeats)
        t_naive, w_naive = median_time(naive, args.naive_repeats)
        diff = float(np.abs(w_ours.astype(np.float64) - w_naive).max())
        stack_mb = num_cells * cells.size * 8 / 2**20
        row = (name, cells.shape[1:], num_cells, t_naive, t_ours, t_naive / t_ours, diff, stack_mb)
        rows.append(row)
        print(
            f"{name}: {cells.shape[1]}x{cells.shape[2]}, {num_cells} cells: naive "
            f"{t_naive:.3f} s, medseg {t_ours * 1e3:.1f} ms, speed-up {t_naive / t_ours:.1f}x, "
            f"max abs diff {diff:.2e}"
        )

    lines = [
        f"U-Net weight map (eq. 2), w0 = {W0:g}, sigma = {SIGMA:g} px: "
        "`medseg.weightmap.unet_weight_map` (windowed EDT, exact to 1e-5 + float32 rounding) "
        "vs the naive reference (one full-image EDT per cell, stack, sort; "
        "`tests/reference.py: unet_weight_map_naive`). "
        f"Median of {args.repeats} (medseg) and {args.naive_repeats} (naive) runs.",
        f"Machine: {machine}.",
        "",
        "| image | size (Y x X) | cells | naive (s) | medseg (ms) | speed-up | max abs diff "
        "| naive distance stack (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, shape, num_cells, t_naive, t_ours, speedup, diff, stack_mb in rows:
        lines.append(
            f"| {name} | {shape[0]} x {shape[1]} | {num_cells} | {t_naive:.2f} | "
            f"{t_ours * 1e3:.1f} | {speedup:.1f}x | {diff:.1e} | {stack_mb:.0f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
