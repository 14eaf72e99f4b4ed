"""Benchmark: prediction on real scans, before and after the brain box (issue #15, item 6).

Part A, in one run per IBSR volume (skull-stripped, 256x128x256, majority vote, the
built-in model):

* ``full volume``: what ``medseg predict`` did before brain-box prediction: normalise,
  then every 40x40x3 window of the volume at stride 10, majority vote, float32, the
  network as stored (BatchNorm layers separate);
* ``predict fp32`` / ``predict default``: ``segment_volume`` as ``medseg predict`` runs it
  now: brain mask and skull decision (deepbet), the model's grid, the brain's box only,
  windows without a brain voxel skipped, BatchNorm folded into the convolutions; with
  ``--precision fp32``, and with the default ``auto`` (bfloat16 autocast where the CPU
  computes bfloat16 natively, as on this machine's AMX);
* ``MONAI``: monai.inferers.sliding_window_inference over the same windows (overlap
  0.75 = stride 10, centre-slice weight map), mean of logits, full volume (the peer a
  MONAI user would write).

It prints the seconds, the speed-ups, and the Dice of each tissue between the new labels and
the full-volume labels (fp32: the crop and the folding must not change them, >= 0.999).

Part B, a raw 256x256x170 T1 DICOM series (the studyforrest scan resampled to 1.0 x 1.0 x
1.13 mm, written as a DICOM folder), from folder to written report by the command line
(a fresh ``medseg`` process each, imports included): vote and ``--fast``, next to deepbet
alone (the brain extraction inside it).

Usage: python benchmarks/bench_raw_scan.py [--cases IBSR_04 IBSR_08 IBSR_18] [--out FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe_machine

from medseg.data import resolve_slice_axis
from medseg.io import read_image
from medseg.metrics import confusion_matrix, overlap_metrics
from medseg.predict import (
    load_predictor,
    predict_array,
    prepare_image,
    segment_volume,
    spec_from_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MEDSEG = [sys.executable, "-m", "medseg.cli"]


def _monai(normed: np.ndarray, axis: int, ckpt, model) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    vol = torch.from_numpy(np.moveaxis(normed, 1 + axis, 1))
    padded = torch.cat([vol[:, 1:2], vol, vol[:, -2:-1]], 1)[None]  # reflect one slice
    size, k = int(ckpt.patch["size"]), ckpt.num_classes
    weight = torch.zeros((3, size, size))
    weight[1] = 1.0

    def predictor(x):  # (B, 1, 3, 40, 40) -> centre-slice logits in a (B, K, 3, 40, 40) window
        out = torch.zeros((x.shape[0], k, 3, size, size))
        out[:, :, 1] = model(x[:, 0].contiguous(memory_format=torch.channels_last))
        return out

    with torch.inference_mode():
        logits = sliding_window_inference(
            padded, (3, size, size), 512, predictor, overlap=0.75, roi_weight_map=weight
        )
    labels = logits[0, :, 1:-1].argmax(0).to(torch.uint8).numpy()
    return np.moveaxis(labels, 0, axis)


def _dice(a: np.ndarray, b: np.ndarray) -> list[float]:
    cm = confusion_matrix(a, b, num_classes=4)
    return [float(d) for d in overlap_metrics(cm).dice[1:]]


def part_a(cases: list[str], model_name: str, monai: bool) -> list[str]:
    from medseg.checkpoint import load_checkpoint

    ckpt, net = load_predictor([model_name], device="cpu")  # BatchNorm folded, as predict loads it
    before = load_checkpoint(model_name).build_model("cpu")  # as predict loaded it before
    rows = [
        "| case | full volume (s) | predict fp32 (s) | speed-up | predict default (s) "
        "| speed-up | MONAI (s) | Dice fp32 vs full (CSF / GM / WM) | Dice default vs full |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for case in cases:
        volume = read_image(DATA / "ibsr18" / case / f"{case}_t1.nii.gz")
        t0 = time.perf_counter()
        normed = prepare_image(volume, ckpt, what=case)
        axis = resolve_slice_axis("axial", volume.geometry)
        full = predict_array(
            before, normed, spec_from_checkpoint(ckpt, axis), mode="vote", batch_size=512,
            device="cpu", precision="fp32",
        )  # fmt: skip
        t_full = time.perf_counter() - t0
        times, labels = {}, {}
        for precision in ("fp32", "auto"):
            t0 = time.perf_counter()
            now = segment_volume(volume, ckpt, net, what=case, device="cpu", precision=precision)
            times[precision] = time.perf_counter() - t0
            labels[precision] = now.labels
        monai_s = "-"
        if monai:
            t0 = time.perf_counter()
            _monai(prepare_image(volume, ckpt, what=case), axis, ckpt, before)
            monai_s = f"{time.perf_counter() - t0:.1f}"
        d32, dauto = (_dice(labels[p], full.labels) for p in ("fp32", "auto"))
        rows.append(
            f"| {case} | {t_full:.1f} | {times['fp32']:.1f} | {t_full / times['fp32']:.2f}x | "
            f"{times['auto']:.1f} | {t_full / times['auto']:.2f}x | {monai_s} | "
            f"{' / '.join(f'{d:.4f}' for d in d32)} | {' / '.join(f'{d:.4f}' for d in dauto)} |"
        )
        print(rows[-1], flush=True)
    return rows


def _raw_series(folder: Path) -> Path:
    """The studyforrest T1 resampled to 256 x 256 x 170 (x 170 sagittal), as DICOM."""
    import torch.nn.functional as F

    from medseg.io import Geometry, write_image

    full = read_image(DATA / "studyforrest_t1_dicom")  # (1, 384, 384, 274), LPS-ish
    shape = (256, 256, 170)
    small = F.interpolate(
        torch.from_numpy(full.array)[None], size=shape, mode="trilinear", align_corners=False
    )[0].numpy()
    scale = np.array(full.spatial_shape) / np.array(shape)  # (z, y, x)
    step = np.diag([*scale[::-1], 1.0])
    step[:3, 3] = 0.5 * scale[::-1] - 0.5
    geometry = Geometry(
        tuple(float(s * f) for s, f in zip(full.geometry.spacing_mm, scale, strict=True)),
        full.geometry.affine @ step,
    )
    write_image(folder, np.round(small).astype(np.int16).astype(np.float32), geometry)
    return folder


def _timed(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, done.stdout


def part_b(tmp: Path) -> list[str]:
    series = _raw_series(tmp / "T1_DICOM")
    rows = [
        "| run | seconds | target | brain / TIV (mL) |",
        "|---|---:|---:|---|",
    ]
    for name, extra, target in (("vote (default)", [], 60), ("--fast", ["--fast"], 15)):
        out = tmp / f"seg_{len(extra)}.nii.gz"
        seconds, stdout = _timed([*MEDSEG, "predict", str(series), "-o", str(out), *extra])
        report = out.with_name(out.name.replace(".nii.gz", "_volumes.csv")).read_text()
        lines = dict(line.split(",", 1) for line in report.splitlines()[1:])
        brain, tiv = lines["brain"].split(",")[0], lines["TIV"].split(",")[0]
        rows.append(f"| medseg predict {name} | {seconds:.1f} | <= {target} | {brain} / {tiv} |")
        print(rows[-1], flush=True)
    code = (
        "import time, nibabel, numpy as np; from deepbet import BrainExtraction; "
        "from medseg.io import read_image, to_nifti; t=time.perf_counter(); "
        f"v=read_image({str(series)!r}); b=BrainExtraction(no_gpu=True); "
        "b.run(to_nifti(v.array[0], v.geometry)); print(time.perf_counter()-t)"
    )
    seconds, _ = _timed([sys.executable, "-c", code])
    rows.append(f"| deepbet alone (read + brain mask, own process) | {seconds:.1f} | - | - |")
    print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["IBSR_04", "IBSR_08", "IBSR_18"])
    parser.add_argument("--model", default="brain-tissue")
    parser.add_argument("--no-monai", action="store_true", help="skip the MONAI peer")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results_raw_scan.md")
    args = parser.parse_args()
    machine = describe_machine()
    print(f"Machine: {machine}", flush=True)
    lines = [f"Machine: {machine}.", "", f"Part A: IBSR, vote, `{args.model}`", ""]
    lines += part_a(args.cases, args.model, monai=not args.no_monai)
    with tempfile.TemporaryDirectory() as tmp:
        lines += ["", "Part B: raw 256x256x170 DICOM T1, folder to written report", ""]
        lines += part_b(Path(tmp))
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
