"""Benchmark: 2.5D patch prediction and reassembly, medseg against its peers.

One 256x128x256 volume (the real IBSR_01 T1 when ../shared/data is present, else
random), 4 classes, 40x40x3 patches at in-plane stride 10, and the same trivial
predictor for every method: a fixed 1x1 conv from 3 slice-channels to 4 logits.

Methods, each run in a fresh subprocess so that its peak memory (max RSS) is its own:

* ``direct``: the conv over whole slices (neighbour slices stacked as channels), no
  patching at all. The lower bound for any patch method.
* ``patch-predictor``: the conv alone on every patch, already extracted (no extraction,
  no reassembly): the work any patch method must do at this stride.
* ``medseg-vote`` / ``medseg-mean`` / ``medseg-gaussian``: medseg.patches.predict_sliding_window.
* ``monai``: monai.inferers.sliding_window_inference, roi (3, 40, 40), overlap 0.75
  (in-plane interval 10, slice interval 1), sw_batch_size 1024, a centre-slice weight
  map (0, 1, 0) so only the centre slice of each window counts, input padded by one
  reflected slice at each end, then argmax.
* ``torchio``: torchio GridSampler (patch (3, 40, 40), overlap (2, 30, 30)) + DataLoader
  (batch 1024) + GridAggregator("average"), input padded likewise, the centre-slice
  logits given to all three slices (the aggregator needs output == patch), then argmax.

Usage: python benchmarks/bench_patches.py [--repeats 3] [--out benchmarks/results_patches.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import describe_machine, write_table

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SHAPE = (256, 128, 256)
METHODS = [
    "direct",
    "patch-predictor",
    "medseg-vote",
    "medseg-mean",
    "medseg-gaussian",
    "monai",
    "torchio",
]


def _load_volume() -> tuple[np.ndarray, str]:
    path = SHARED / "ibsr18" / "IBSR_01" / "IBSR_01_t1.nii.gz"
    if path.exists():
        import nibabel as nib

        data = np.asarray(nib.load(path).dataobj, dtype=np.float32).transpose(2, 1, 0)
        data = (data - data.mean()) / data.std()
        return np.ascontiguousarray(data[None]), "IBSR_01 T1 (z-scored)"
    rng = np.random.default_rng(0)
    return rng.standard_normal((1, *SHAPE), dtype=np.float32), "random normal"


def _predictor():
    import torch

    torch.manual_seed(0)  # the same fixed weights in every subprocess
    conv = torch.nn.Conv2d(3, 4, 1).eval()
    for p in conv.parameters():
        p.requires_grad_(False)
    return conv


def _direct(image, conv):
    import torch

    x = torch.from_numpy(image[0])
    below = torch.cat([x[1:2], x[:-1]])  # reflect padding, as medseg's default
    above = torch.cat([x[1:], x[-2:-1]])
    stacked = torch.stack([below, x, above], 1).contiguous(memory_format=torch.channels_last)
    return conv(stacked).max(1).indices.to(torch.uint8).numpy()


def _patch_predictor(image, conv):
    """Only the predictor's work: every patch extracted beforehand, outside the timing."""
    import torch

    from medseg.patches import PatchSpec, extract_patches

    patches, _ = extract_patches(torch.from_numpy(image), PatchSpec.two_and_half_d(40, 10))
    chunks = [c.contiguous(memory_format=torch.channels_last) for c in torch.split(patches, 4096)]
    del patches
    start = time.perf_counter()
    for c in chunks:
        _ = conv(c).max(1).indices
    return None, time.perf_counter() - start


def _medseg(image, conv, mode):
    from medseg.patches import PatchSpec, predict_sliding_window

    return predict_sliding_window(image, conv, PatchSpec.two_and_half_d(40, 10), mode=mode).labels


def _monai(image, conv):
    import torch
    from monai.inferers import sliding_window_inference

    def predictor(x):  # (B, 1, 3, 40, 40) -> logits on the centre slice only
        out = torch.zeros((x.shape[0], 4, 3, 40, 40))
        out[:, :, 1] = conv(x[:, 0])
        return out

    x = torch.from_numpy(image)
    padded = torch.cat([x[:, 1:2], x, x[:, -2:-1]], 1)[None]  # (1, 1, Z+2, Y, X)
    weight = torch.zeros((3, 40, 40))
    weight[1] = 1.0
    out = sliding_window_inference(
        padded, (3, 40, 40), 1024, predictor, overlap=0.75, roi_weight_map=weight
    )
    return out[0, :, 1:-1].argmax(0).to(torch.uint8).numpy()


def _torchio(image, conv):
    import torch
    import torchio as tio

    x = torch.from_numpy(image)
    padded = torch.cat([x[:, 1:2], x, x[:, -2:-1]], 1)
    subject = tio.Subject(img=tio.ScalarImage(tensor=padded))
    sampler = tio.inference.GridSampler(subject, patch_size=(3, 40, 40), patch_overlap=(2, 30, 30))
    loader = torch.utils.data.DataLoader(sampler, batch_size=1024)
    aggregator = tio.inference.GridAggregator(sampler, overlap_mode="average")
    for batch in loader:
        logits = conv(batch["img"][tio.DATA][:, 0])
        aggregator.add_batch(logits[:, :, None].expand(-1, -1, 3, -1, -1), batch[tio.LOCATION])
    return aggregator.get_output_tensor()[:, 1:-1].argmax(0).to(torch.uint8).numpy()


def run_method(method: str, repeats: int) -> dict:
    """Run one method in this process; return timings, peak RSS and agreement."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    image, source = _load_volume()
    conv = _predictor()
    reference = None
    times = []
    with torch.inference_mode():
        reference = _direct(image, conv)
        for _ in range(repeats):
            start = time.perf_counter()
            if method == "direct":
                labels = _direct(image, conv)
            elif method == "patch-predictor":
                labels, elapsed = _patch_predictor(image, conv)
                times.append(elapsed)
                continue
            elif method.startswith("medseg-"):
                labels = _medseg(image, conv, method.split("-", 1)[1])
            elif method == "monai":
                labels = _monai(image, conv)
            elif method == "torchio":
                labels = _torchio(image, conv)
            else:
                raise ValueError(f"method must be one of {METHODS}, got {method!r}")
            times.append(time.perf_counter() - start)
    agreement = None
    if labels is not None:
        agreement = float((labels[1:-1] == reference[1:-1]).mean())
    return {
        "method": method,
        "seconds": float(np.median(times)),
        "runs": len(times),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "agreement": agreement,
        "source": source,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, help="run one method (internal)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per fast method (median)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results_patches.md")
    parser.add_argument("--skip", nargs="*", default=[], choices=METHODS, help="methods to skip")
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_method(args.method, args.repeats)))
        return

    results = {}
    for method in METHODS:
        if method in args.skip:
            continue
        repeats = 1 if method in ("monai", "torchio") else args.repeats
        proc = subprocess.run(
            [sys.executable, __file__, "--method", method, "--repeats", str(repeats)],
            capture_output=True,
            text=True,
            check=True,
        )
        results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[method]
        print(f"{method:16s} {r['seconds']:8.3f} s  rss {r['max_rss_mb']:7.0f} MB", flush=True)

    vote = results["medseg-vote"]["seconds"]
    direct = results["direct"]["seconds"]
    lines = [
        f"Volume {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} ({results['direct']['source']}), 4 classes, "
        "40x40x3 patches, in-plane stride 10, fixed 1x1 conv predictor (3 -> 4).",
        f"Machine: {describe_machine()}.",
        "",
        "| method | time (s) | vs medseg vote | vs direct | peak RSS (MB) | labels = direct |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, r in results.items():
        agree = "-" if r["agreement"] is None else f"{100 * r['agreement']:.2f} %"
        lines.append(
            f"| {method} | {r['seconds']:.2f} | {r['seconds'] / vote:.2f}x | "
            f"{r['seconds'] / direct:.1f}x | {r['max_rss_mb']:.0f} | {agree} |"
        )
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
