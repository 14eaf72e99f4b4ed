"""Benchmark: nuclei prediction time per megapixel, with and without the watershed (issue #16).

The images are the 33 DSB2018 stage-1 test images of ``data_manifests/dsb2018_stage1_test.csv``
(256 x 256 to 520 x 696, 5.61 megapixels in all). For each image, in one run, with the
model given by ``-m`` (default: the built-in ``nuclei``), as ``medseg predict`` runs it:

* ``network``: read, grey input and normalisation (:func:`medseg.predict.prepare_image`),
  overlap-tile prediction (:func:`medseg.tiling.predict_tiled`, float32) -> the class map
  and the class probabilities;
* then objects from that class map by each method of :func:`instances_from_prediction`:
  ``components`` (no watershed: connected components of the foreground), ``boundary``
  (the seeded watershed of the three-class head: interiors grown through the foreground),
  ``watershed`` (the distance-transform watershed of the foreground);
* ``boundary from probabilities``: what ``medseg predict`` runs for the three-class head:
  the classes decided foreground first from the probabilities
  (:func:`medseg.boundary.classes_from_probs`), then the same seeded growth;
* ``skimage boundary`` (when scikit-image is installed): the peer a scikit-image user would
  write for the boundary head: ``skimage.segmentation.watershed`` of the distance to the
  interior, seeded with the interior's components, inside the foreground.
* ``whole path, --diameter none`` and ``whole path, --diameter auto``: the in-memory
  path of ``medseg predict`` (:func:`medseg.predict.segment_objects_scaled`: input,
  network, objects), the image as it is against the scale chosen among 1, 1/2, 1/4 and
  1/8 (:mod:`medseg.object_size`); their ratio is the cost of the automatic scale.

It prints seconds per megapixel for each step and the network + objects total, and the
ratio of the object step to the network. ``--repeats`` takes the best of several passes.

Usage: python benchmarks/bench_nuclei.py [-m nuclei] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from machine import describe_machine
from scipy import ndimage

from medseg.boundary import classes_from_probs, instances_from_boundary
from medseg.instances import instances_from_prediction
from medseg.io import read_image
from medseg.predict import (
    load_predictor,
    prepare_image,
    resolve_device,
    segment_objects_scaled,
)
from medseg.tiling import predict_tiled

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
METHODS = ("components", "boundary", "watershed")
PROBS = "boundary from probabilities"


def _skimage_boundary(classes: np.ndarray) -> np.ndarray | None:
    try:
        from skimage.segmentation import watershed
    except ImportError:
        return None
    plane = classes[0]
    seeds, _ = ndimage.label(plane == 1)
    elevation = ndimage.distance_transform_edt(plane != 1)
    return watershed(elevation, seeds, mask=plane > 0)[None]


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default="nuclei")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results_nuclei.md")
    args = parser.parse_args()

    checkpoint, net = load_predictor([args.model], device="cpu")
    device = resolve_device("cpu")
    inf = checkpoint.inference
    with open(REPO / "data_manifests" / "dsb2018_stage1_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = ("whole path, --diameter none", "whole path, --diameter auto")
    seconds = {k: 0.0 for k in ("network", *METHODS, PROBS, "skimage boundary", *paths)}
    megapixels = 0.0
    have_skimage = True
    for row in rows:
        volume = read_image(DATA / row["image"])
        megapixels += volume.array.shape[-1] * volume.array.shape[-2] / 1e6

        def network(volume=volume, what=row["case"]):
            normed = prepare_image(volume, checkpoint, what=what)
            return predict_tiled(
                normed,
                net,
                tile_size=int(inf.get("tile_size", 196)),
                batch_size=int(inf.get("batch_size", 4)),
                device=device,
                return_probs=True,
            )

        dt, result = _best(network, args.repeats)
        labels, probs = result.labels, result.probs
        seconds["network"] += dt
        dt, _ = _best(
            lambda p=probs: instances_from_boundary(classes_from_probs(p), min_size=8),
            args.repeats,
        )
        seconds[PROBS] += dt
        for method in METHODS:
            dt, _ = _best(
                lambda m=method, x=labels: instances_from_prediction(x, method=m, min_size=8),
                args.repeats,
            )
            seconds[method] += dt
        dt, out = _best(lambda x=labels: _skimage_boundary(x), args.repeats)
        have_skimage = have_skimage and out is not None
        seconds["skimage boundary"] += dt
        for diameter in ("none", "auto"):
            dt, _ = _best(
                lambda v=volume, d=diameter, what=row["case"]: segment_objects_scaled(
                    v, checkpoint, net, what=what, device=device, diameter=d
                ),
                args.repeats,
            )
            seconds[f"whole path, --diameter {diameter}"] += dt

    lines = [
        f"# Nuclei prediction per megapixel ({args.model}), {len(rows)} DSB2018 stage-1 test "
        f"images, {megapixels:.2f} MPx",
        "",
        f"Machine: {describe_machine()}; best of {args.repeats}.",
        "",
        "| step | s / MPx | network + step, s / MPx | step / network |",
        "|---|---:|---:|---:|",
    ]
    net_mpx = seconds["network"] / megapixels
    lines.append(f"| network (overlap-tile, float32) | {net_mpx:.3f} | | |")
    for method in (*METHODS, PROBS, "skimage boundary"):
        if method == "skimage boundary" and not have_skimage:
            lines.append("| skimage boundary | scikit-image not installed | | |")
            continue
        s = seconds[method] / megapixels
        lines.append(f"| objects: {method} | {s:.4f} | {net_mpx + s:.3f} | {s / net_mpx:.3f} |")
    none, auto = (seconds[k] / megapixels for k in paths)
    lines += [
        "",
        "| whole `medseg predict` path (input, network, objects) | s / MPx | ratio to none |",
        "|---|---:|---:|",
        f"| --diameter none (the image as it is) | {none:.3f} | 1.00 |",
        f"| --diameter auto (scales 1, 1/2, 1/4, 1/8; the surest kept) | {auto:.3f} | "
        f"{auto / none:.2f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
