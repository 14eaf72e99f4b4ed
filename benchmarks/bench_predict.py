"""Benchmark: predict one IBSR volume file to file, medseg against MONAI.

In one run, for one 256x128x256 IBSR validation subject and the same trained model:

* ``medseg vote``: `medseg predict` (read, normalise, 40x40x3 patches at stride 10,
  streamed majority vote, write the label map);
* ``medseg --fast``: the same, whole slices instead of overlapping patches;
* ``MONAI``: read and normalise the same way, then monai.inferers.sliding_window_inference
  with roi (3, 40, 40) on the slice-padded volume, overlap 0.75 (in-plane interval 10),
  the centre slice weighted 1 and its neighbours 0, mean of logits, argmax, write.

It prints the seconds, the ratios, and each method's per-tissue Dice against the manual
labels, so that the speed-up of --fast is reported with its Dice difference.

Usage: python benchmarks/bench_predict.py [--model brain-tissue] [--case IBSR_04]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe_machine

from medseg.io import read_image, read_label, write_label
from medseg.metrics import confusion_matrix, overlap_metrics
from medseg.normalize import normalize_intensity
from medseg.predict import load_predictor, predict_case

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ibsr18"


def _monai_file_to_file(image_path: Path, out: Path, ckpt, model, device) -> None:
    from monai.inferers import sliding_window_inference

    from medseg.data import resolve_slice_axis

    image = read_image(image_path)
    normed, _ = normalize_intensity(image.array, method=ckpt.normalization["method"])
    axis = resolve_slice_axis(ckpt.patch["slice_axis"], image.geometry)
    vol = torch.from_numpy(np.moveaxis(normed, 1 + axis, 1)).to(device)
    padded = torch.cat([vol[:, 1:2], vol, vol[:, -2:-1]], 1)[None]  # reflect one slice
    size = int(ckpt.patch["size"])
    weight = torch.zeros((3, size, size), device=device)
    weight[1] = 1.0
    k = ckpt.num_classes

    def predictor(x):  # (B, 1, 3, 40, 40) -> centre-slice logits in a (B, K, 3, 40, 40) window
        out = torch.zeros((x.shape[0], k, 3, size, size), device=x.device)
        out[:, :, 1] = model(x[:, 0])
        return out

    with torch.inference_mode():
        logits = sliding_window_inference(
            padded, (3, size, size), 1024, predictor, overlap=0.75, roi_weight_map=weight
        )
    labels = logits[0, :, 1:-1].argmax(0).to(torch.uint8).cpu().numpy()
    write_label(out, np.moveaxis(labels, 0, axis), image.geometry, overwrite=True)


def _dice(pred_path: Path, label_path: Path) -> list[float]:
    pred = read_label(pred_path).array
    target = read_label(label_path).array
    return overlap_metrics(confusion_matrix(pred, target, num_classes=4)).dice[1:].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brain-tissue")
    parser.add_argument("--case", default="IBSR_04")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results_predict.md")
    args = parser.parse_args()
    image = DATA / args.case / f"{args.case}_t1.nii.gz"
    label = DATA / args.case / f"{args.case}_labels.nii.gz"
    ckpt, model = load_predictor([args.model], device=args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in (
            (
                "medseg vote",
                lambda o: predict_case(
                    image, ckpt, o, model=model, device=args.device, overwrite=True
                ),
            ),
            (
                "medseg --fast",
                lambda o: predict_case(
                    image, ckpt, o, model=model, device=args.device, fast=True, overwrite=True
                ),
            ),
            (
                "MONAI sliding_window_inference",
                lambda o: _monai_file_to_file(image, o, ckpt, model, torch.device(args.device)),
            ),
        ):
            out = Path(tmp) / f"{name.split()[0]}_{len(rows)}.nii.gz"
            start = time.perf_counter()
            run(out)
            seconds = time.perf_counter() - start
            rows.append((name, seconds, _dice(out, label)))
            print(f"{name:32s} {seconds:8.1f} s  Dice CSF/GM/WM {rows[-1][2]}", flush=True)
    vote = rows[0][1]
    lines = [
        f"IBSR {args.case} (256x128x256), model {args.model!r} ({ckpt.model_name} "
        f"{ckpt.model_kwargs}), device {args.device}, file to file.",
        f"Machine: {describe_machine()}.",
        "",
        "| method | seconds | vs medseg vote | Dice CSF | Dice GM | Dice WM |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {s:.1f} | {s / vote:.2f}x | {d[0]:.4f} | {d[1]:.4f} | {d[2]:.4f} |"
        for n, s, d in rows
    ]
    table = "\n".join(lines)
    print()
    print(table)
    args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
