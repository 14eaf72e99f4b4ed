"""Benchmark: training throughput of medseg against its own ceiling and against MONAI.

In one run, on IBSR-18 (5 training subjects) and one config (default: the paper-width
U-SegNet, ``configs/usegnet_ibsr18.yaml``):

* ``medseg train()``: the real training loop, ``medseg.train.train(config)``, for a short
  schedule (``--epochs`` of ``--patches-per-epoch`` patches) in a temporary run folder,
  with a temporary manifest that keeps the training split and one validation subject (so
  the validation after the last epoch is short). Its ``log.csv`` gives ``patches_per_s``
  (validation excluded) and ``data_fraction`` per epoch; the mean is over the epochs after
  the first (epoch 1 includes warm-up and ``torch.compile``).
* ``synthetic ceiling``: the same model, loss, optimiser, scheduler and batch size on random
  tensors already on the device: forward + backward + optimiser step only (bf16 autocast
  and channels-last on CUDA when the config has ``amp``, as ``train()`` does).
* ``data pipeline``: medseg's patch sampler and augmentation alone (the code path of
  ``train()``: ``PatchSampler`` on the device plus ``medseg.train_step.augment_batch``), with the
  run's settings and with settings matched to the MONAI pipeline (class-balanced,
  elastic sigma 10 px on a 3x3 grid, the config's flips), against MONAI: CacheDataset of
  the same 5 volumes (LoadImaged, NormalizeIntensityd nonzero, ClassesToIndicesd),
  RandCropByLabelClassesd, Rand2DElasticd, RandFlipd, through monai.data.DataLoader with
  0 and 2 workers.

Targets (issue #5, on a GPU): data share of the step time <= 10 %, real loop >= 90 % of
the synthetic ceiling. The results go to ``benchmarks/results_train.md``.

Usage:
    python benchmarks/bench_train.py [--config configs/usegnet_ibsr18.yaml] [--set key=value]
        [--device auto|cpu|cuda] [--epochs 3] [--patches-per-epoch N] [--batch-size B]
        [--compile] [--data-patches N] [--data-root ../shared/data] [--skip-monai]

Small CPU check:
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --device cpu --epochs 2 \\
        --patches-per-epoch 256 --batch-size 32 --set model.kwargs.base_features=8
"""

from __future__ import annotations

import argparse
import csv
import gc
import math
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import describe_machine

from medseg.config import TrainConfig, load_config
from medseg.data import PatchSampler
from medseg.losses import create_loss
from medseg.manifest import labels_path_for
from medseg.models import create_model
from medseg.models.blocks import count_parameters
from medseg.train import (
    _load_split,
    _make_optimizer,
    _make_scheduler,
    augment_batch,
    margin_for,
    model_context,
    model_kwargs,
    patch_spec,
    train,
    training_step,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "usegnet_ibsr18.yaml"
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
MATCHED_SIGMA = 10.0  # px, U-Net paper elastic deformation
MATCHED_GRID_POINTS = 3
MONAI_WORKERS = (0, 2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"Error: --device must be available, got {name!r} but CUDA is not")
    return torch.device(name)


def _source_manifest(config: TrainConfig) -> Path:
    """The config's manifest, relative to the working directory or else to the repo."""
    path = Path(config.data.manifest)
    if not path.is_absolute() and not path.is_file():
        path = REPO / path
    if not path.is_file():
        raise SystemExit(f"Error: data.manifest must be an existing CSV, got {str(path)!r}")
    return path


def write_short_manifest(config: TrainConfig, folder: Path) -> Path:
    """Copy the manifest (and its label-names sidecar) keeping the training split and only
    the first validation case, so that the end-of-run validation is short."""
    source = _source_manifest(config)
    with source.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    train_rows = [r for r in rows if r["split"] == config.data.train_split]
    val_rows = [r for r in rows if r["split"] == config.data.val_split][:1]
    if not train_rows or not val_rows:
        raise SystemExit(
            f"Error: manifest {str(source)!r} must have {config.data.train_split!r} and "
            f"{config.data.val_split!r} cases, got {len(train_rows)} and {len(val_rows)}"
        )
    out = folder / source.name
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(train_rows + val_rows)
    sidecar = labels_path_for(source)
    if sidecar.is_file():
        shutil.copyfile(sidecar, labels_path_for(out))
    return out


# ---------------------------------------------------------------------------
# 1. The real training loop
# ---------------------------------------------------------------------------


def run_training(config: TrainConfig, folder: Path) -> list[dict[str, float]]:
    """Run ``train()`` into ``folder / "run"``; return the per-epoch rows of ``log.csv``
    (``epoch``, ``patches_per_s``, ``data_fraction``, ``seconds``)."""
    out = folder / "run"
    config = replace(config, out_dir=str(out))
    train(config, progress=False)
    with (out / "log.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    keys = ("epoch", "patches_per_s", "data_fraction", "seconds")
    return [{k: float(r[k]) for k in keys} for r in rows]


# ---------------------------------------------------------------------------
# 2. The synthetic ceiling
# ---------------------------------------------------------------------------


def synthetic_ceiling(
    config: TrainConfig, device: torch.device, *, channels: int, steps: int, warmup: int
) -> tuple[float, int]:
    """Patches/s of forward + backward + optimiser step on random tensors on the device.

    The model, loss, optimiser and scheduler are built as ``train()`` builds them (no class
    weights); inputs float32 ``(B, channels * num_slices, P, P)`` with ``P = size + 2 *
    context``, targets int64 ``(B, size, size)`` in ``[0, num_classes)``.

    Returns:
        (patches per second, number of model parameters).
    """
    torch.manual_seed(config.seed)
    model = create_model(config.model.name, **model_kwargs(config, channels)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    loss_kwargs = {k: v for k, v in config.loss.kwargs.items() if k != "class_weight"}
    criterion = create_loss(config.loss.name, **loss_kwargs).to(device)
    optimizer = _make_optimizer(config, model)
    scheduler = _make_scheduler(config, optimizer, warmup + steps)
    deep_supervision = config.loss.name == "unetpp"
    forward: Any = model.forward_heads if deep_supervision else model
    if config.compile:
        forward = torch.compile(forward)
    batch, size = config.schedule.batch_size, config.patches.size
    full = size + 2 * model_context(config)
    in_channels = channels * config.patches.num_slices
    inputs = torch.randn(batch, in_channels, full, full, device=device)
    if device.type == "cuda":
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    targets = torch.randint(
        0, config.data.num_classes, (batch, size, size), device=device, generator=gen
    )
    weights = torch.ones(batch, size, size, device=device) if config.loss.weight_map else None
    amp = config.amp and device.type == "cuda"

    def step() -> None:  # the training loop's own step, on synthetic tensors
        training_step(
            forward, criterion, optimizer, scheduler, inputs, targets, weights,
            deep_supervision=deep_supervision, amp=amp,
        )  # fmt: skip

    model.train()
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start), count_parameters(model)


# ---------------------------------------------------------------------------
# 3. Data pipelines alone
# ---------------------------------------------------------------------------


def matched_config(config: TrainConfig) -> TrainConfig:
    """The config with the sampling and augmentation of the MONAI pipeline: class-balanced
    draws, elastic sigma 10 px on a 3x3 grid, the config's flips and nothing else."""
    augment = replace(
        config.augment,
        elastic_sigma=MATCHED_SIGMA,
        elastic_grid_points=MATCHED_GRID_POINTS,
        max_shift=0.0,
        max_rotation_deg=0.0,
        gamma_range=(1.0, 1.0),
        contrast_range=(1.0, 1.0),
        noise_std=(0.0, 0.0),
        blur_sigma=(0.0, 0.0),
    )
    patches = replace(config.patches, class_balanced=True)
    return replace(config, augment=augment, patches=patches)


def describe_data_settings(config: TrainConfig) -> str:
    a = config.augment
    parts = ["class-balanced" if config.patches.class_balanced else "uniform windows"]
    if a.elastic_sigma > 0:
        parts.append(
            f"elastic sigma {a.elastic_sigma:g} px, {a.elastic_grid_points}x"
            f"{a.elastic_grid_points} grid, {a.interpolation}"
        )
    else:
        parts.append("no elastic")
    if a.flip_axes:
        parts.append(f"flip axes {list(a.flip_axes)} p {a.flip_prob:g}")
    if a.max_shift or a.max_rotation_deg:
        parts.append(f"shift {a.max_shift:g} px, rotation {a.max_rotation_deg:g} deg")
    if a.gamma_range != (1.0, 1.0) or a.contrast_range != (1.0, 1.0):
        parts.append("intensity")
    if a.adds_noise:
        parts.append(f"noise std {a.noise_std[0]:g}-{a.noise_std[1]:g} p {a.noise_prob:g}")
    if a.adds_blur:
        parts.append(f"blur sigma {a.blur_sigma[0]:g}-{a.blur_sigma[1]:g} p {a.blur_prob:g}")
    parts.append(f"margin {margin_for(config)} px")
    return ", ".join(parts)


def medseg_pipeline(
    config: TrainConfig, device: torch.device, *, num_patches: int
) -> tuple[float, int, int]:
    """Patches/s of medseg's sampler + augmentation, built as ``train()`` builds them.

    Returns:
        (patches per second, image channels, array slice axis of the first volume).
    """
    spec = patch_spec(config)
    margin = margin_for(config)
    context = model_context(config)
    _, volumes = _load_split(config, config.data.train_split, device, spec, margin, context)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    sampler = PatchSampler(
        volumes,
        spec,
        margin=margin + context,
        class_balanced=config.patches.class_balanced,
        generator=gen,
    )
    size = config.patches.size
    crop = (
        slice(0, 1),
        slice(margin, margin + size + 2 * context),
        slice(margin, margin + size + 2 * context),
    )
    batch = config.schedule.batch_size

    def draw() -> None:
        inputs, targets, weights = sampler.sample(batch)
        inputs, targets, weights = augment_batch(
            inputs, targets, weights, config, rng, crop, margin, context
        )
        if device.type == "cuda":
            inputs = inputs.contiguous(memory_format=torch.channels_last)

    draw()  # warm-up
    _sync(device)
    steps = max(1, math.ceil(num_patches / batch))
    start = time.perf_counter()
    for _ in range(steps):
        draw()
    _sync(device)
    rate = steps * batch / (time.perf_counter() - start)
    return rate, volumes[0].channels, volumes[0].slice_axis


def _slices_to_channels(x: torch.Tensor, axis: int) -> torch.Tensor:
    """(1, A, B, C) file-order crop -> (S, *in-plane): the slice axis becomes channels."""
    return torch.movedim(x[0], axis, 0)


def _centre_slice(x: torch.Tensor, axis: int) -> torch.Tensor:
    """(1, A, B, C) file-order label crop -> (1, *in-plane) at the centre slice."""
    return x[0].select(axis, x.shape[1 + axis] // 2)[None]


def monai_transforms(config: TrainConfig, *, file_slice_axis: int, num_samples: int):
    """The MONAI Compose mirroring :func:`matched_config` (see the module docstring)."""
    from monai.transforms import (
        ClassesToIndicesd,
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        Lambdad,
        LoadImaged,
        NormalizeIntensityd,
        Rand2DElasticd,
        RandCropByLabelClassesd,
        RandFlipd,
    )

    size = config.patches.size + 2 * model_context(config)
    margin = margin_for(config)
    window = size + 2 * margin
    crop_size = [window, window, window]
    crop_size[file_slice_axis] = config.patches.num_slices
    a = config.augment
    k = config.data.num_classes
    keys = ["image", "label"]
    # a 3x3 grid over the (size + 2 margin) window puts control points (window - 1) / 2 apart
    spacing = (window - 1) / (a.elastic_grid_points - 1)
    flips = [
        RandFlipd(keys, prob=a.flip_prob, spatial_axis=2 - axis) for axis in a.flip_axes if axis
    ]
    return Compose(
        [
            LoadImaged(keys),
            EnsureChannelFirstd(keys),
            NormalizeIntensityd("image", nonzero=True),
            ClassesToIndicesd("label", num_classes=k),
            EnsureTyped(keys, track_meta=False),
            RandCropByLabelClassesd(
                keys,
                label_key="label",
                spatial_size=crop_size,
                ratios=[0] + [1] * (k - 1),  # medseg: a foreground class uniformly
                num_classes=k,
                num_samples=num_samples,
                indices_key="label_cls_indices",
            ),
            Lambdad("image", partial(_slices_to_channels, axis=file_slice_axis)),
            Lambdad("label", partial(_centre_slice, axis=file_slice_axis)),
            Rand2DElasticd(
                keys,
                spacing=(spacing, spacing),
                magnitude_range=(a.elastic_sigma, a.elastic_sigma),
                spatial_size=(size, size),
                prob=1.0,
                mode=(a.interpolation if a.interpolation != "bspline" else "bicubic", "nearest"),
                padding_mode="reflection",
            ),
            *flips,
        ]
    )


def monai_cached_dataset(config: TrainConfig, data_root: Path, *, slice_axis: int):
    """CacheDataset of the training cases: reading, normalising and class indices cached."""
    from monai.data import CacheDataset

    from medseg.manifest import load_manifest

    manifest = load_manifest(config.data.manifest, data_root=data_root)
    cases = [c for c in manifest.split(config.data.train_split) if c.label is not None]
    files = [{"image": str(c.image), "label": str(c.label)} for c in cases]
    transform = monai_transforms(
        config, file_slice_axis=2 - slice_axis, num_samples=config.schedule.batch_size
    )
    transform.set_random_state(config.seed)
    return CacheDataset(files, transform, cache_rate=1.0, num_workers=1, progress=False)


def monai_pipeline(
    dataset, device: torch.device, *, num_workers: int, num_patches: int, seed: int
) -> float:
    """Patches/s of the MONAI loader (one item = one batch of patches from one volume),
    moved to the device as int64 labels, after one warm-up pass (workers started)."""
    from monai.data import DataLoader

    torch.manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=1,
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )

    def one_pass() -> int:
        count = 0
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True).long()
            count += x.shape[0]
            del x, y
        return count

    per_pass = one_pass()  # warm-up: starts the workers
    passes = max(1, math.ceil(num_patches / per_pass))
    _sync(device)
    start = time.perf_counter()
    count = sum(one_pass() for _ in range(passes))
    _sync(device)
    return count / (time.perf_counter() - start)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def _monai_grid_points(size: int, spacing: float) -> int:
    """Control points per axis of MONAI's grid for an output of ``size`` pixels (as in
    ``monai.transforms.utils.create_control_grid``)."""
    if size % 2 == 0:
        return int(math.ceil((size - 1.0) / (2.0 * spacing) + 0.5) * 2 + 2)
    return int(math.ceil((size - 1.0) / (2.0 * spacing)) * 2 + 3)


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def build_config(args: argparse.Namespace, device: torch.device, manifest: Path | None):
    overrides = list(args.set)
    overrides += [
        f"schedule.epochs={args.epochs}",
        f"schedule.val_every={args.epochs}",
        f"patches.patches_per_epoch={args.patches_per_epoch}",
        f"schedule.batch_size={args.batch_size}",
        f"device={device.type}",
        f"compile={'true' if args.compile else 'false'}",
        f"data.data_root={args.data_root}",
        "tensorboard=false",
    ]
    if manifest is not None:
        overrides.append(f"data.manifest={manifest}")
    return load_config(args.config, overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training YAML")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the real loop")
    parser.add_argument(
        "--patches-per-epoch", type=int, default=None, help="default 4096 (CPU), 65536 (CUDA)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 (CPU), 256 (CUDA)")
    parser.add_argument("--compile", action="store_true", help="compile=true (torch.compile)")
    parser.add_argument(
        "--data-patches", type=int, default=4096, help="patches timed per data pipeline"
    )
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--skip-monai", action="store_true", help="no MONAI data pipeline")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results_train.md")
    args = parser.parse_args()
    device = _resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.patches_per_epoch is None:
        args.patches_per_epoch = 65536 if cuda else 4096
    if args.batch_size is None:
        args.batch_size = 256 if cuda else 64
    args.data_root = args.data_root.resolve()
    command = shlex.join(["python", "benchmarks/bench_train.py", *sys.argv[1:]])

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        folder = Path(tmp)
        manifest = write_short_manifest(build_config(args, device, None), folder)
        config = build_config(args, device, manifest)

        # 1. the real loop
        epochs = run_training(config, folder)
        timed = epochs[1:] or epochs  # epoch 1 includes warm-up / compile
        real = float(np.mean([r["patches_per_s"] for r in timed]))
        data_share = float(np.mean([r["data_fraction"] for r in timed]))
        print(f"medseg train(): {real:,.0f} patches/s, data {100 * data_share:.1f} %", flush=True)
        gc.collect()

        # 3a. medseg data pipelines (before the ceiling: gives channels and slice axis)
        pipeline_rows: list[tuple[str, str, float]] = []
        rate, channels, slice_axis = medseg_pipeline(config, device, num_patches=args.data_patches)
        pipeline_rows.append(
            ("medseg sampler + augment, run settings", describe_data_settings(config), rate)
        )
        print(f"medseg data pipeline (run settings): {rate:,.0f} patches/s", flush=True)
        matched = matched_config(config)
        rate, _, _ = medseg_pipeline(matched, device, num_patches=args.data_patches)
        pipeline_rows.append(
            ("medseg sampler + augment, matched", describe_data_settings(matched), rate)
        )
        print(f"medseg data pipeline (matched): {rate:,.0f} patches/s", flush=True)
        gc.collect()

        # 2. the synthetic ceiling
        steps = max(1, args.patches_per_epoch // config.schedule.batch_size)
        ceiling, num_params = synthetic_ceiling(
            config, device, channels=channels, steps=steps, warmup=10 if config.compile else 3
        )
        print(f"synthetic ceiling: {ceiling:,.0f} patches/s", flush=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

        # 3b. MONAI
        if not args.skip_monai:
            dataset = monai_cached_dataset(matched, args.data_root, slice_axis=slice_axis)
            for workers in MONAI_WORKERS:
                rate = monai_pipeline(
                    dataset,
                    device,
                    num_workers=workers,
                    num_patches=args.data_patches,
                    seed=config.seed,
                )
                pipeline_rows.append(
                    (f"MONAI DataLoader, num_workers {workers}", "matched (see notes)", rate)
                )
                print(f"MONAI num_workers {workers}: {rate:,.0f} patches/s", flush=True)
            del dataset

    matched_rate = pipeline_rows[1][2]
    amp = " bf16 autocast + channels-last" if cuda and config.amp else ""
    compiled = ", torch.compile" if config.compile else ""
    ratio = real / ceiling
    lines = [
        f"`{command}`",
        "",
        f"Machine: {describe_machine()}.",
        "",
        f"Config {args.config.name} ({', '.join(args.set) or 'no --set'}): model "
        f"{config.model.name} {dict(config.model.kwargs)} ({num_params:,} parameters), "
        f"loss {config.loss.name}, {config.optim.name} lr {config.optim.lr:g}; batch "
        f"{config.schedule.batch_size}, {config.patches.size}x{config.patches.size}x"
        f"{config.patches.num_slices} patches; device {device.type}{amp}{compiled}; "
        f"{config.schedule.epochs} epochs x {config.patches.patches_per_epoch} patches; "
        f"data pipelines timed on {args.data_patches} patches.",
        "",
        "### Training throughput",
        "",
        "| measurement | patches/s | vs synthetic | data share |",
        "|---|---:|---:|---:|",
        f"| medseg train(), mean of epochs {int(timed[0]['epoch'])}-{int(timed[-1]['epoch'])} "
        f"| {real:,.0f} | {ratio:.2f}x | {100 * data_share:.1f} % |",
    ]
    lines += [
        f"| medseg train(), epoch {int(r['epoch'])} | {r['patches_per_s']:,.0f} | "
        f"{r['patches_per_s'] / ceiling:.2f}x | {100 * r['data_fraction']:.1f} % |"
        for r in epochs
    ]
    lines += [
        f"| synthetic ceiling (random tensors on {device.type}) | {ceiling:,.0f} | 1.00x | - |",
        "",
        "### Data pipeline alone (sampling + augmentation)",
        "",
        "| pipeline | settings | patches/s | vs medseg matched |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {n} | {s} | {r:,.0f} | {r / matched_rate:.2f}x |" for n, s, r in pipeline_rows]
    size = config.patches.size
    window = size + 2 * margin_for(matched)
    spacing = (window - 1) / (MATCHED_GRID_POINTS - 1)
    points = _monai_grid_points(size, spacing)
    lines += [
        "",
        "Notes:",
        "",
        "* **medseg train()**: `medseg.train.train` on the 5 training subjects (temporary "
        "manifest with one validation subject, validated after the last epoch only). "
        "patches/s and data share come from the run's `log.csv`: patches/s excludes "
        "validation; the data share is the part of the step time spent drawing and "
        "augmenting patches (with a CUDA synchronise). The mean leaves out epoch 1 (warm-up, "
        "cuDNN autotuning, compilation) when there is more than one epoch.",
        "* **synthetic ceiling**: the same model (`model_kwargs` + `create_model`), loss "
        "(no class weights), optimiser and LR scheduler at the same batch size on random "
        "tensors already on the device, forward + backward + step only (no per-step "
        "`loss.item()` synchronisation, no data); warm-up steps first, then one epoch's "
        "steps timed between CUDA synchronisations.",
        f"* **Targets (issue #5, GPU)**: data share <= 10 %: "
        f"{_met(data_share <= 0.10)} ({100 * data_share:.1f} %); real loop >= 90 % of the "
        f"synthetic ceiling: {_met(ratio >= 0.90)} ({100 * ratio:.0f} %)"
        + (
            "."
            if cuda
            else "; on a CPU they are for information only (the model, not the data, "
            "dominates there)."
        ),
        "* **medseg data pipeline**: `PatchSampler` as `train()` builds it (volumes "
        "normalised and held on the device, margin from `margin_for`) plus "
        "`medseg.train_step.augment_batch`, one batch per call (plus channels-last on CUDA); "
        "'matched' uses the settings the MONAI pipeline mirrors: class-balanced draws, "
        f"elastic sigma {MATCHED_SIGMA:g} px on a 3x3 grid over the {window}x{window} "
        "margin window, the config's flips, no other augmentation.",
    ]
    if not args.skip_monai:
        lines += [
            "* **MONAI**: `CacheDataset` of the same 5 volumes caching `LoadImaged`, "
            "`EnsureChannelFirstd`, `NormalizeIntensityd(nonzero=True)` (z-score inside the "
            "head, as medseg) and `ClassesToIndicesd` (so neither file reading nor the "
            "class index search is timed); per item `RandCropByLabelClassesd` draws one "
            f"batch ({config.schedule.batch_size}) of {window}x{window}x"
            f"{config.patches.num_slices} windows with ratios (0, 1, 1, 1) (medseg's class "
            "balance picks a foreground class uniformly), 3 slices along the file axis "
            f"{'xyz'[2 - slice_axis]} (medseg's axial slice axis for IBSR), moved to "
            "channels (label: centre slice); then `Rand2DElasticd` per patch with "
            f"spacing {spacing:g} px, magnitude_range ({MATCHED_SIGMA:g}, "
            f"{MATCHED_SIGMA:g}) (control offsets N(0, 1) x {MATCHED_SIGMA:g} px), "
            f"spatial_size ({config.patches.size}, {config.patches.size}) (the centre of the "
            "window, so context comes from the margin as in medseg), bicubic image / "
            "nearest label, reflection padding, and `RandFlipd` for the config's in-plane "
            "flips; `monai.data.DataLoader` (batch_size 1 item, shuffle, persistent "
            "workers), batches moved to the device and labels to int64. Timed after one "
            "warm-up pass over the 5 volumes.",
            "* **Elastic approximation**: MONAI lays its control grid over the output and "
            f"pads it, so a spacing of {spacing:g} px gives {points}x{points} points "
            f"{spacing:g} px apart around the {size}x{size} output (medseg: 3x3 points "
            f"{spacing:g} px apart over the {window}x{window} margin window, centred on the "
            "output), and it upsamples the control offsets bicubically (Keys) where medseg "
            f"uses a cubic B-spline; the offset scale ({MATCHED_SIGMA:g} px at the control "
            f"points) and the correlation length ({spacing:g} px) are the same.",
            "* MONAI runs on the CPU in its DataLoader workers; medseg's pipeline runs on "
            "the training device.",
        ]
    table = "\n".join(lines)
    print()
    print(table)
    args.out.write_text(table + "\n", encoding="utf-8")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
