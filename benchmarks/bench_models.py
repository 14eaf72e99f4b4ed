"""Benchmark: model throughput on 2.5D patch batches (64 x 3 x 40 x 40), medseg vs MONAI.

For every registered model (default configuration for in_channels=3, num_classes=4,
2D) and for MONAI BasicUNet / BasicUNetPlusPlus of similar size, in one run:

* forward throughput (patches/s, eval mode, inference_mode),
* forward + backward throughput (patches/s, train mode, cross-entropy, SGD step excluded),
* UNet++ pruned ("fast", levels 1..L) against the full "accurate" forward.

On CUDA the same is measured with AMP (bf16 autocast) and channels-last inputs.

Usage: python benchmarks/bench_models.py [--device cpu|cuda] [--iters 5] [--batch 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from machine import describe_machine, write_table

from medseg.models import create_model, list_models
from medseg.models.blocks import count_parameters

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _throughput(fn, batch: int, iters: int, device: torch.device) -> float:
    fn()  # warm-up (cudnn autotune, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return batch * iters / (time.perf_counter() - start)


def measure(model: torch.nn.Module, *, batch: int, iters: int, device: torch.device) -> tuple:
    model = model.to(device)
    fmt = torch.channels_last
    x = torch.randn(batch, 3, 40, 40, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 4, (batch, 40, 40), device=device)
    amp = device.type == "cuda"

    def logits():
        out = model(x)
        return out[-1] if isinstance(out, list) else out  # MONAI's UNet++ returns a list

    def forward():
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
            logits()

    def train_step():
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(logits().float(), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.eval()
    fwd = _throughput(forward, batch, iters, device)
    model.train()
    fwd_bwd = _throughput(train_step, batch, max(1, iters // 2), device)
    return fwd, fwd_bwd


def _monai_models() -> dict[str, torch.nn.Module]:
    from monai.networks.nets import BasicUNet, BasicUNetPlusPlus

    # widths chosen so the parameter counts are close to medseg's U-Net / UNet++ defaults
    return {
        "MONAI BasicUNet (32..256)": BasicUNet(
            spatial_dims=2, in_channels=3, out_channels=4, features=(32, 64, 128, 256, 512, 32)
        ),
        "MONAI BasicUNetPlusPlus (32..256)": BasicUNetPlusPlus(
            spatial_dims=2, in_channels=3, out_channels=4, features=(32, 64, 128, 256, 512, 32)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results_models.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    rows = []
    for name in list_models():
        model = create_model(name, in_channels=3, num_classes=4)
        fwd, fwd_bwd = measure(model, batch=args.batch, iters=args.iters, device=device)
        rows.append((name, count_parameters(model), fwd, fwd_bwd))
        print(f"{name:34s} {rows[-1][1]:>12,d} {fwd:10.0f} {fwd_bwd:10.0f}", flush=True)
    for name, model in _monai_models().items():
        fwd, fwd_bwd = measure(model, batch=args.batch, iters=args.iters, device=device)
        rows.append((name, count_parameters(model), fwd, fwd_bwd))
        print(f"{name:34s} {rows[-1][1]:>12,d} {fwd:10.0f} {fwd_bwd:10.0f}", flush=True)

    # UNet++ pruned inference
    unetpp = create_model("unetpp", in_channels=3, num_classes=4).to(device).eval()
    x = torch.randn(args.batch, 3, 40, 40, device=device)
    prune_rows = []

    def run_mode(mode, prune_level=None):
        def fn():
            with torch.inference_mode():
                unetpp.set_mode(mode, prune_level)
                unetpp(x)

        return fn

    full = _throughput(run_mode("accurate"), args.batch, args.iters, device)
    for level in range(1, unetpp.depth + 1):
        fast = _throughput(run_mode("fast", level), args.batch, args.iters, device)
        prune_rows.append((level, fast, fast / full))
    unetpp.set_mode("accurate")

    amp = " with bf16 AMP" if device.type == "cuda" else ""
    lines = [
        f"Batch {args.batch} x 3 x 40 x 40, 4 classes, {args.device}{amp}, channels-last input, "
        f"{args.iters} timed iterations after one warm-up.",
        f"Machine: {describe_machine()}.",
        "",
        "| model | parameters | forward (patches/s) | forward+backward (patches/s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {n} | {p:,} | {f:,.0f} | {fb:,.0f} |" for n, p, f, fb in rows]
    lines += [
        "",
        f"UNet++ pruned inference (forward, patches/s): full 'accurate' = {full:,.0f}",
        "",
        "| prune level | patches/s | speed-up vs full |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {lvl} | {f:,.0f} | {r:.2f}x |" for lvl, f, r in prune_rows]
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
