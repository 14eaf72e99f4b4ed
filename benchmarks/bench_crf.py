"""Benchmark: the fully connected CRF (`medseg.postprocess.dense_crf`) on real data.

* ``IBSR``: one 256x128x256 IBSR volume (default IBSR_04, a validation case), read with
  medseg.io, z-scored inside its non-zero mask, class probabilities from the shipped
  ``brain-tissue`` model in fast mode (whole slices); dense_crf at the module defaults,
  5 mean-field iterations, on CPU and, when CUDA is available, on CUDA; also the
  smoothness kernel alone (w_appearance = 0), to show the appearance term's share. Each
  CPU run is a fresh subprocess so that its peak resident memory (ru_maxrss) can be
  compared with its memory once the inputs are loaded; CUDA reports
  torch.cuda.max_memory_allocated. The per-tissue Dice against the manual labels is
  printed with and without the CRF.
* ``crop``: a 6x8x10 crop from the middle of the same volume (probabilities and image),
  the exact O(N^2) mean field of tests/reference.py (dense_crf_naive, explicit pairwise
  kernel matrix, Python loops, float64) against dense_crf, same parameters; the time ratio,
  the max |dQ| and the share of equal labels.
* ``RGB``: a 512x680 colour DSB2018 image (2D, C = 3: a 5-D bilateral grid), z-scored per
  channel over the whole image as the shipped nuclei model does, with synthetic 2-class
  probabilities (a logistic function of the image's darkness; timing only), sigma_alpha
  20 px, sigma_beta 0.5.

Timings are single runs (the CRF runs are long; the crop's medseg time is the median of 3)
and depend on the machine's load, which is printed (os.getloadavg). On a loaded machine
``--threads 1`` can be faster than torch's default: every parallel region then waits for
a descheduled thread (a tiny crop took 0.9-3.6 s with 2 threads and 30 ms with 1).

Usage: python benchmarks/bench_crf.py [--case IBSR_04] [--iterations 5] [--threads N]
       [--out benchmarks/results_crf.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe_machine

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))  # medseg and tests.reference from this checkout

from medseg import postprocess  # noqa: E402
from medseg.io import read_image, read_label  # noqa: E402
from medseg.metrics import confusion_matrix, overlap_metrics  # noqa: E402
from medseg.normalize import normalize_intensity  # noqa: E402
from tests.reference import dense_crf_naive  # noqa: E402

RGB_ID = "0f1f896d9ae5a04752d3239c690402c022db4d72c0d2c087d73380896f72c466"  # 512 x 680
RGB_PARAMS = dict(w_appearance=0.01, sigma_alpha_mm=20.0, sigma_beta=0.5, w_smoothness=0.3)
TISSUES = {1: "CSF", 2: "GM", 3: "WM"}


def _rss_mib() -> float:
    """Current resident memory of this process (MiB)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(folder: Path, params: dict) -> None:
    """Run dense_crf once on folder/{probs,image}.npy; print seconds and memory as JSON."""
    probs = torch.from_numpy(np.load(folder / "probs.npy"))
    image = torch.from_numpy(np.load(folder / "image.npy"))
    spacing = tuple(np.load(folder / "spacing.npy").tolist())
    before = _rss_mib()
    start = time.perf_counter()
    q = postprocess.dense_crf(probs, image, spacing_mm=spacing, **params)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    np.save(folder / "labels.npy", q.argmax(0).to(torch.uint8).numpy())
    print(json.dumps({"seconds": seconds, "rss_inputs_mib": before, "peak_rss_mib": peak}))


def run_child(folder: Path, params: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", str(folder), "--params", json.dumps(params)]
    cmd += ["--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def save_inputs(folder: Path, probs: np.ndarray, image: np.ndarray, spacing) -> None:
    np.save(folder / "probs.npy", np.ascontiguousarray(probs, dtype=np.float32))
    np.save(folder / "image.npy", np.ascontiguousarray(image, dtype=np.float32))
    np.save(folder / "spacing.npy", np.asarray(spacing, dtype=np.float64))


def grid_shape(image: np.ndarray, spacing, params: dict) -> tuple[list[int], float]:
    """Bilateral grid shape and spacing h that dense_crf will use (same rule, not built)."""
    sa, sb = params["sigma_alpha_mm"], params["sigma_beta"]
    extent = [(n - 1) * s / sa for n, s in zip(image.shape[1:], spacing, strict=True) if n > 1]
    extent += [float(c.max() - c.min()) / sb for c in image]
    cell = postprocess._grid_cell(extent)
    return [int(np.floor(e / cell)) + 2 for e in extent], cell


def dice(pred: np.ndarray, target: np.ndarray) -> list[float]:
    d = overlap_metrics(confusion_matrix(pred, target, num_classes=4)).dice
    return [float(d[k]) for k in TISSUES]


def ibsr_inputs(case: str):
    from medseg.data import resolve_slice_axis
    from medseg.predict import load_predictor, predict_array, spec_from_checkpoint

    folder = SHARED / "ibsr18" / case
    volume = read_image(folder / f"{case}_t1.nii.gz")
    target = read_label(folder / f"{case}_labels.nii.gz").array
    image, _ = normalize_intensity(volume.array, method="zscore")  # non-zero mask
    ckpt, net = load_predictor(["brain-tissue"], device="cpu")
    axis = resolve_slice_axis(ckpt.patch.get("slice_axis", "axial"), volume.geometry)
    spec = spec_from_checkpoint(ckpt, axis)
    start = time.perf_counter()
    out = predict_array(net, image, spec, fast=True, return_probs=True, device="cpu")
    print(f"{case}: model probabilities (fast) in {time.perf_counter() - start:.1f} s")
    return out.probs, image, target, volume.geometry.spacing_mm


def rgb_inputs():
    volume = read_image(SHARED / "dsb2018_stage1_test" / "images" / f"{RGB_ID}.png")
    ones = np.ones(volume.array.shape[1:], bool)
    image, _ = normalize_intensity(volume.array, method="zscore", mask=ones)
    darkness = -image.mean(0)  # nuclei are darker than the background in H&E-like images
    foreground = 1.0 / (1.0 + np.exp(-4.0 * darkness))
    probs = np.stack([1.0 - foreground, foreground]).astype(np.float32)
    return probs, image, volume.geometry.spacing_mm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="IBSR_04", help="IBSR subject")
    parser.add_argument("--iterations", type=int, default=5, help="mean-field iterations")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results_crf.md")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        child(args.child, json.loads(args.params))
        return

    machine = describe_machine()
    print(f"Machine: {machine}")
    print(f"Load average at start: {os.getloadavg()[0]:.1f}")
    defaults = dict(num_iterations=args.iterations)  # module defaults otherwise
    full = dict(
        w_appearance=postprocess.DEFAULT_W_APPEARANCE,
        sigma_alpha_mm=postprocess.DEFAULT_SIGMA_ALPHA_MM,
        sigma_beta=postprocess.DEFAULT_SIGMA_BETA,
    )
    rows = []  # (input, size, d, grid, h, variant, device, seconds, memory)
    variant_dice: dict[str, list[float]] = {}
    probs, image, target, spacing = ibsr_inputs(args.case)
    shape = "x".join(str(n) for n in image.shape[1:])
    dims, cell = grid_shape(image, spacing, full)
    grid_text = "x".join(str(n) for n in dims)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_inputs(folder, probs, image, spacing)
        for variant, params in (
            ("defaults", defaults),
            ("smoothness only", {**defaults, "w_appearance": 0.0}),
        ):
            res = run_child(folder, params)
            labels = np.load(folder / "labels.npy")
            extra = res["peak_rss_mib"] - res["rss_inputs_mib"]
            print(
                f"IBSR {shape} {variant}, cpu: {res['seconds']:.1f} s, peak RSS "
                f"{res['peak_rss_mib']:.0f} MiB ({extra:+.0f} MiB over the loaded inputs)"
            )
            rows.append(
                (f"IBSR {args.case}", shape, 4, grid_text, cell, variant, "cpu",
                 res["seconds"], f"{res['peak_rss_mib']:.0f} RSS ({extra:+.0f})")
            )  # fmt: skip
            variant_dice[variant] = dice(labels, target)
    if torch.cuda.is_available():
        p = torch.from_numpy(probs).cuda()
        im = torch.from_numpy(image).cuda()
        postprocess.dense_crf(p, im, spacing_mm=spacing, num_iterations=1)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        postprocess.dense_crf(p, im, spacing_mm=spacing, **defaults)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"IBSR {shape} defaults, cuda: {seconds:.2f} s, peak allocated {peak:.0f} MiB")
        rows.append(
            (f"IBSR {args.case}", shape, 4, grid_text, cell, "defaults", "cuda", seconds,
             f"{peak:.0f} allocated")
        )  # fmt: skip
        del p, im
    base_dice = dice(probs.argmax(0).astype(np.uint8), target)

    # exact dense mean field on a crop
    z0, y0, x0 = (n // 2 for n in image.shape[1:])
    crop = (slice(z0, z0 + 6), slice(y0, y0 + 8), slice(x0, x0 + 10))
    crop_probs = np.ascontiguousarray(probs[(slice(None), *crop)])
    crop_image = np.ascontiguousarray(image[(slice(None), *crop)])
    params = dict(
        w_appearance=postprocess.DEFAULT_W_APPEARANCE,
        sigma_alpha_mm=postprocess.DEFAULT_SIGMA_ALPHA_MM,
        sigma_beta=postprocess.DEFAULT_SIGMA_BETA,
        w_smoothness=postprocess.DEFAULT_W_SMOOTHNESS,
        sigma_gamma_mm=postprocess.DEFAULT_SIGMA_GAMMA_MM,
        num_iterations=args.iterations,
    )
    start = time.perf_counter()
    q_naive = dense_crf_naive(crop_probs, crop_image, spacing, **params)
    t_naive = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        q = postprocess.dense_crf(
            torch.from_numpy(crop_probs), torch.from_numpy(crop_image), spacing_mm=spacing,
            **params,
        ).numpy()  # fmt: skip
        times.append(time.perf_counter() - start)
    t_ours = statistics.median(times)
    diff = float(np.abs(q - q_naive).max())
    agree = float((q.argmax(0) == q_naive.argmax(0)).mean())
    moved = float(np.abs(q_naive - crop_probs).max())
    print(
        f"crop 6x8x10: naive {t_naive:.2f} s, medseg {t_ours * 1e3:.1f} ms, speed-up "
        f"{t_naive / t_ours:.0f}x, max |dQ| {diff:.4f} (CRF moves Q by up to {moved:.3f}), "
        f"labels equal {agree:.1%}"
    )

    # 2D RGB 512 x 680
    rgb_probs, rgb_image, rgb_spacing = rgb_inputs()
    rgb_dims, rgb_cell = grid_shape(rgb_image, rgb_spacing, RGB_PARAMS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_inputs(folder, rgb_probs, rgb_image, rgb_spacing)
        res = run_child(folder, {**RGB_PARAMS, "num_iterations": args.iterations})
    extra = res["peak_rss_mib"] - res["rss_inputs_mib"]
    rgb_shape = "x".join(str(n) for n in rgb_image.shape[2:])
    print(
        f"RGB {rgb_shape}: {res['seconds']:.1f} s, grid "
        f"{'x'.join(str(n) for n in rgb_dims)} at h = {rgb_cell:.2f}, peak RSS "
        f"{res['peak_rss_mib']:.0f} MiB ({extra:+.0f})"
    )
    rows.append(
        (f"DSB2018 RGB {RGB_ID[:8]}", rgb_shape, 5, "x".join(str(n) for n in rgb_dims),
         rgb_cell, "sigma_alpha 20 px, sigma_beta 0.5", "cpu", res["seconds"],
         f"{res['peak_rss_mib']:.0f} RSS ({extra:+.0f})")
    )  # fmt: skip
    load = os.getloadavg()[0]

    lines = [
        f"Fully connected CRF (`medseg.postprocess.dense_crf`), {args.iterations} mean-field "
        "iterations. Defaults: w_appearance "
        f"{postprocess.DEFAULT_W_APPEARANCE:g}, sigma_alpha {postprocess.DEFAULT_SIGMA_ALPHA_MM:g}"
        f" mm, sigma_beta {postprocess.DEFAULT_SIGMA_BETA:g} (z-units), w_smoothness "
        f"{postprocess.DEFAULT_W_SMOOTHNESS:g}, sigma_gamma {postprocess.DEFAULT_SIGMA_GAMMA_MM:g}"
        " mm. Appearance kernel on a bilateral grid of spacing h (standard deviations), "
        "smoothness kernel exact. Single runs; memory: peak resident set of a fresh process "
        "(in brackets: above the process with its inputs loaded), or CUDA peak allocated.",
        f"Machine: {machine}. Load average {load:.1f} at the end (other jobs were running).",
        "",
        "| input | size | d | grid | h | variant | device | seconds | memory (MiB) |",
        "|---|---|---:|---|---:|---|---|---:|---:|",
    ]
    for name, size, d, grid_text, h, variant, device, seconds, memory in rows:
        lines.append(
            f"| {name} | {size} | {d} | {grid_text} | {h:.2f} | {variant} | {device} | "
            f"{seconds:.1f} | {memory} |"
        )
    lines += [
        "",
        f"Exact dense mean field (tests/reference.py `dense_crf_naive`) on a 6x8x10 crop of "
        f"{args.case} at the defaults: naive {t_naive:.2f} s, medseg {t_ours * 1e3:.1f} ms "
        f"(median of 3), speed-up {t_naive / t_ours:.0f}x; max abs difference of Q "
        f"{diff:.4f} (the CRF itself moves Q by up to {moved:.3f}), labels equal in "
        f"{agree:.1%} of voxels.",
        "",
        f"Dice on {args.case} (brain-tissue model, fast mode) against the manual labels:",
        "",
        "| | CSF | GM | WM | mean |",
        "|---|---:|---:|---:|---:|",
        "| no CRF | " + " | ".join(f"{v:.4f}" for v in base_dice)
        + f" | {np.mean(base_dice):.4f} |",
    ]  # fmt: skip
    for variant, values in variant_dice.items():
        lines.append(
            f"| CRF, {variant} | " + " | ".join(f"{v:.4f}" for v in values)
            + f" | {np.mean(values):.4f} |"
        )  # fmt: skip
    args.out.write_text("\n".join(lines) + "\n")
    print("Dice no CRF:", [round(v, 4) for v in base_dice])
    for variant, values in variant_dice.items():
        print(f"Dice CRF {variant}:", [round(v, 4) for v in values])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
