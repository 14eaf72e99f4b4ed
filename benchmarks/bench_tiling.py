"""Benchmark: U-Net overlap-tile prediction of large 2D images, medseg against one whole pass.

The model is the architecture of the shipped ``nuclei`` model, UNet(in_channels=3,
num_classes=2, base_features=16, depth=3, padding="valid"), with seeded random weights in
eval mode; the images are seeded random float32 (3, 1, N, N). In one run, for every size N:

* ``medseg``: medseg.tiling.predict_tiled (Ronneberger et al. 2015, Fig. 2: output tiles of
  ``--tile-size`` pixels, 44 pixels of mirrored context, ``--batch-size`` tiles per pass);
* ``naive``: the image mirror-padded by the halo on every side (and on the far side up to a
  valid input size), one forward pass of the whole image, softmax, argmax, crop. It runs
  only where its estimated activation memory is at most ``--mem-fraction`` of the
  available memory (MemAvailable of /proc/meminfo, or free CUDA memory), else it is skipped
  with the reason printed.

Both return labels, confidence and class probabilities. Every measurement runs in a fresh
subprocess that reads its own peak resident memory (VmHWM of /proc/self/status, reset just
before the timed call), so that one method's allocations do not hide the other's; "work MB"
is that peak minus the resident memory just before the call (interpreter, torch, model and
input image excluded). Where both ran, the max abs difference of their probabilities is the
tiling-equivalence check at scale (float round-off, ~1e-6 on the CPU; on CUDA both run under
bf16 autocast as predict_tiled does, so larger).

Usage: python benchmarks/bench_tiling.py [--sizes 512 1024 2048 4096] [--tile-size 196 388 772]
    [--repeats 1] [--device cpu cuda] [--out benchmarks/results_tiling.md] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe_machine

from medseg.models.unet import UNet
from medseg.patches import Reassembled
from medseg.tiling import plan_tiles, predict_tiled

MODEL_KWARGS = {
    "in_channels": 3,
    "num_classes": 2,
    "base_features": 16,
    "depth": 3,
    "padding": "valid",
    "dropout": 0.0,
}
SEED = 0
BYTES_PER_FLOAT = 4
# Measured resident peak of the whole-image forward pass over the activation count of
# _naive_activation_bytes (oneDNN reorders, allocator slack): about 1.1 at 1116 x 1116 on
# the CPU. 1.25 keeps the estimate on the safe side.
BACKEND_OVERHEAD = 1.25
RESULT_TAG = "RESULT "


def _model(device: torch.device) -> UNet:
    torch.manual_seed(SEED)
    return UNet(**MODEL_KWARGS).eval().to(device)


def _image(size: int) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    return rng.standard_normal((MODEL_KWARGS["in_channels"], 1, size, size), dtype=np.float32)


def _padded_input_size(model: UNet, size: int) -> tuple[int, int]:
    """(input size, halo) of the whole-image pass for an image axis of ``size`` pixels."""
    input_size = UNet.input_size_for(size, depth=model.depth, padding="valid")
    output_size = model.output_shape((input_size, input_size))[0]
    return input_size, (input_size - output_size) // 2


def _naive_activation_bytes(size: int) -> int:
    """Estimated peak memory of the whole-image pass over a ``size`` x ``size`` image.

    Per pixel of the padded input: the input, the skip tensors held by the encoder
    (``f_l / 4**l`` at level ``l``), the transients of the last decoder level (up-conv
    output, concatenation of twice its channels, two convolution outputs: ``5 * f_0``) and
    the outputs (logits, probabilities, confidence and labels: about ``3 K``), in float32,
    times BACKEND_OVERHEAD.
    """
    depth, base = MODEL_KWARGS["depth"], MODEL_KWARGS["base_features"]
    input_size = UNet.input_size_for(size, depth=depth, padding="valid")
    per_pixel = (
        MODEL_KWARGS["in_channels"]
        + sum(base * 2**level / 4**level for level in range(depth))
        + 5 * base
        + 3 * MODEL_KWARGS["num_classes"]
    )
    return int(input_size**2 * per_pixel * BYTES_PER_FLOAT * BACKEND_OVERHEAD)


def naive_whole_image(image: np.ndarray, model: UNet, device: torch.device) -> Reassembled:
    """One forward pass per z-slice over the mirror-padded whole slice (see module doc)."""
    channels, nz, ny, nx = image.shape
    in_y, halo_y = _padded_input_size(model, ny)
    in_x, halo_x = _padded_input_size(model, nx)
    k = MODEL_KWARGS["num_classes"]
    labels = np.empty((nz, ny, nx), dtype=np.uint8)
    confidence = np.empty((nz, ny, nx), dtype=np.float32)
    probs = np.empty((k, nz, ny, nx), dtype=np.float32)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    for z in range(nz):
        pad = ((0, 0), (halo_y, in_y - halo_y - ny), (halo_x, in_x - halo_x - nx))
        padded = np.pad(image[:, z], pad, mode="reflect")
        with torch.inference_mode():
            with autocast:
                logits = model(torch.from_numpy(padded)[None].to(device))
            del padded
            p = torch.softmax(logits[0, :, :ny, :nx].float(), dim=0)
            del logits
            conf, lab = p.max(dim=0)
            labels[z] = lab.to(torch.uint8).cpu().numpy()
            confidence[z] = conf.cpu().numpy()
            probs[:, z] = p.cpu().numpy()
    return Reassembled(labels, confidence, probs)


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not in /proc/meminfo")


def _worker(spec: dict) -> None:
    """Time one method in this (fresh) process and print its figures as one JSON line."""
    device = torch.device(spec["device"])
    model = _model(device)
    image = _image(spec["size"])
    if spec["method"] == "medseg":

        def run() -> Reassembled:
            return predict_tiled(
                image,
                model,
                tile_size=spec["tile_size"],
                batch_size=spec["batch_size"],
                device=device,
                return_probs=True,
            )
    else:

        def run() -> Reassembled:
            return naive_whole_image(image, model, device)

    out = None
    for _ in range(spec["warmup"]):
        out = run()
    out = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    reset = _reset_peak_rss()
    before_kb = _proc_status_kb("VmRSS")
    seconds = []
    for _ in range(spec["repeats"]):
        out = None
        start = time.perf_counter()
        out = run()  # returns numpy arrays: synchronised on CUDA
        seconds.append(time.perf_counter() - start)
    result = {
        "seconds": min(seconds),
        "peak_mb": _proc_status_kb("VmHWM") / 1024,
        "work_mb": (_proc_status_kb("VmHWM") - before_kb) / 1024 if reset else None,
        "gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
    }
    if spec.get("probs_path") and out is not None:
        np.save(spec["probs_path"], out.probs)
    print(RESULT_TAG + json.dumps(result), flush=True)


def _measure(spec: dict) -> dict:
    """Run _worker(spec) in a fresh interpreter; its figures, or {"error": ...}."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"worker exit {proc.returncode}: {tail}"}


def _compare(path_a: Path, path_b: Path) -> tuple[float, int]:
    """Max abs difference of two saved probability maps and the number of differing argmaxes."""
    a = np.load(path_a, mmap_mode="r")
    b = np.load(path_b, mmap_mode="r")
    diff = 0.0
    labels = 0
    for z in range(a.shape[1]):
        pa, pb = np.asarray(a[:, z]), np.asarray(b[:, z])
        diff = max(diff, float(np.abs(pa - pb).max()))
        labels += int((pa.argmax(0) != pb.argmax(0)).sum())
    return diff, labels


def _ratio(naive: dict | None, medseg: dict, key: str) -> str:
    if naive is None or "error" in naive or "error" in medseg:
        return "-"
    if naive.get(key) is None or not medseg.get(key):
        return "-"
    return f"{naive[key] / medseg[key]:.2f}x"


def _cells(res: dict | None, mpix: float, cuda: bool) -> list[str]:
    """seconds, MP/s, peak RSS MB, work MB (, GPU peak MB) of one measurement."""
    width = 5 if cuda else 4
    if res is None:
        return ["skipped (memory)"] + [""] * (width - 1)
    if "error" in res:
        return [res["error"].replace("|", "/")] + [""] * (width - 1)
    cells = [
        f"{res['seconds']:.2f}",
        f"{mpix / res['seconds']:.2f}",
        f"{res['peak_mb']:.0f}",
        "-" if res["work_mb"] is None else f"{res['work_mb']:.0f}",
    ]
    if cuda:
        cells.append(f"{res['gpu_mb']:.0f}")
    return cells


def _progress(device: str, size: int, what: str, res: dict) -> None:
    if "error" in res:
        print(f"{device} {size}x{size} {what}: {res['error']}", flush=True)
        return
    work = "-" if res["work_mb"] is None else f"{res['work_mb']:.0f}"
    gpu = "" if res["gpu_mb"] is None else f", GPU peak {res['gpu_mb']:.0f} MB"
    print(
        f"{device} {size}x{size} {what}: {res['seconds']:.2f} s, peak RSS "
        f"{res['peak_mb']:.0f} MB (work {work} MB){gpu}",
        flush=True,
    )


def _bench_device(args: argparse.Namespace, device: str, tmp: Path) -> tuple[list[str], list[str]]:
    """The markdown table rows of one device and the reasons for skipped naive passes."""
    dev = torch.device(device)
    model = _model(torch.device("cpu"))
    cuda = dev.type == "cuda"
    warmup = args.warmup if args.warmup is not None else int(cuda)
    mem_key = "gpu_mb" if cuda else "work_mb"
    head = ["image", "method", "tile in->out (tiles)", "seconds", "MP/s", "peak RSS MB", "work MB"]
    head += ["GPU peak MB"] if cuda else []
    head += ["naive/medseg time", "naive/medseg memory", "max abs diff probs", "labels differing"]
    rows = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    skipped = []
    for size in args.sizes:
        mpix = size * size / 1e6
        base = {
            "device": device,
            "size": size,
            "repeats": args.repeats,
            "warmup": warmup,
            "batch_size": args.batch_size,
        }
        medseg = []
        for tile in args.tile_size:
            plan = plan_tiles(model, tile_size=tile, image_shape=(size, size))
            ny, nx = plan.num_tiles((size, size))
            probs = tmp / f"medseg_{device}_{size}_{tile}.npy"
            spec = {**base, "method": "medseg", "tile_size": tile, "probs_path": str(probs)}
            res = _measure(spec)
            label = f"{plan.input_size[0]}->{plan.output_size[0]} ({ny * nx})"
            _progress(device, size, f"medseg tile {label}", res)
            medseg.append((label, res, probs))

        in_size, _ = _padded_input_size(model, size)
        naive_label = f"{in_size}->{model.output_shape((in_size, in_size))[0]} (1)"
        naive_probs = tmp / f"naive_{device}_{size}.npy"
        estimate = _naive_activation_bytes(size)
        available = _available_bytes(dev)
        naive: dict | None = None
        if estimate > args.mem_fraction * available:
            reason = (
                f"naive {size}x{size} on {device} skipped: estimated activations "
                f"{estimate / 2**30:.1f} GiB > {args.mem_fraction:.0%} of the available "
                f"{available / 2**30:.1f} GiB"
            )
            print(reason, flush=True)
            skipped.append(reason)
        else:
            print(
                f"{device} {size}x{size} naive: estimated activations {estimate / 2**30:.2f} "
                f"GiB, available {available / 2**30:.1f} GiB",
                flush=True,
            )
            naive = _measure({**base, "method": "naive", "probs_path": str(naive_probs)})
            _progress(device, size, f"naive whole image {naive_label}", naive)

        for label, res, probs in medseg:
            diff = differing = "-"
            if naive is not None and "error" not in naive and "error" not in res:
                d, n = _compare(probs, naive_probs)
                diff, differing = f"{d:.1e}", str(n)
                print(f"  tile {label}: max abs diff probs {d:.2e}, labels differing {n}")
            probs.unlink(missing_ok=True)
            cells = [f"{size}²", "medseg predict_tiled", label, *_cells(res, mpix, cuda)]
            cells += [_ratio(naive, res, "seconds"), _ratio(naive, res, mem_key), diff, differing]
            rows.append("| " + " | ".join(cells) + " |")
        cells = [f"{size}²", "naive whole image", naive_label, *_cells(naive, mpix, cuda)]
        rows.append("| " + " | ".join(cells + ["", "", "", ""]) + " |")
        naive_probs.unlink(missing_ok=True)
    return rows, skipped


def _load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument(
        "--tile-size",
        type=int,
        nargs="+",
        default=[196],
        help="output tile sizes of predict_tiled (a sweep: 196 388 772)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs (the fastest counts)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed runs first (default 0 CPU, 1 CUDA)"
    )
    parser.add_argument(
        "--device",
        nargs="+",
        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
    )
    parser.add_argument(
        "--mem-fraction",
        type=float,
        default=0.6,
        help="run the naive pass only if its estimated memory is at most this share of the "
        "available memory",
    )
    parser.add_argument("--note", default="", help="a line for the report (e.g. machine load)")
    parser.add_argument("--out", type=Path, default=None, help="write the tables here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        _worker(json.loads(args.worker))
        return

    if any(torch.device(d).type == "cuda" for d in args.device) and not torch.cuda.is_available():
        parser.error(f"--device must be available, got {args.device} but CUDA is not")
    machine = describe_machine()
    load = _load_average()
    start = time.perf_counter()
    lines = [
        "U-Net overlap-tile prediction of (3, 1, N, N) float32 images, UNet "
        f"{MODEL_KWARGS} (the nuclei architecture, random weights), batch "
        f"{args.batch_size} tiles, fastest of {args.repeats} run(s), labels + confidence + "
        "probabilities returned, one fresh process per measurement.",
        f"Machine: {machine}; load average {load} at the start.",
    ]
    if args.note:
        lines.append(f"Note: {args.note}")
    skipped_all = []
    with tempfile.TemporaryDirectory() as tmp:
        for device in args.device:
            rows, skipped = _bench_device(args, device, Path(tmp))
            lines += ["", f"Device {device}:", "", *rows]
            skipped_all += skipped
    lines += [
        "",
        "work MB: peak resident memory of the measuring process minus its resident memory "
        "just before the call (torch, model and input image excluded); naive/medseg memory "
        "compares work MB on the CPU, GPU peak MB on CUDA. max abs diff probs: medseg's "
        "class probabilities against the naive pass's. MP/s: image megapixels per second.",
    ]
    lines += [f"Skipped: {reason}." for reason in skipped_all]
    lines.append(f"Total benchmark time {time.perf_counter() - start:.0f} s.")
    table = "\n".join(lines)
    print()
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
