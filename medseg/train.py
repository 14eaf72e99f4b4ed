"""Training: ``train(config) -> checkpoint path``.

One readable loop (ARCHITECTURE.md section 3): seed, data, model, optimiser, then per epoch
the training steps, validation on whole reassembled volumes and checkpoints.

* **Data** (:mod:`medseg.data`): manifest cases normalised and held on the training
  device; random 2.5D patches drawn there in one gather per batch, all-background
  windows skipped, optionally class-balanced; augmentation (:mod:`medseg.augment`) on
  the batch, on the device, evaluated only on the patch (the margin gives context).
* **Loss** (:mod:`medseg.losses`), optionally with median-frequency or natural class
  weights computed on the training split (:mod:`medseg.weightmap`).
* **Validation** predicts every validation volume through the patch engine with the
  configured reassembly (majority vote by default), or 2D images by overlap-tile
  (:mod:`medseg.tiling`), and computes Dice on the whole volume, not on patches; with
  object targets also the microscopy metrics (AP, F1, pixel IoU, Rand error, split rate)
  after the configured post-processing. The best checkpoint is kept by
  ``schedule.select_metric`` (mean foreground Dice by default).
* **Microscopy** (U-Net paper): 2D grey/RGB images, instance or binary targets, the
  touching-cell weight map in the loss, valid-padding networks fed mirrored context.
* **Checkpoints** (:mod:`medseg.checkpoint`): ``last.pt`` after every epoch (with the
  optimiser, scheduler and RNG states, for ``resume``) and ``best.pt``; both hold all
  that ``medseg predict`` needs. ``log.csv`` gets one row per epoch.
* **Devices**: CUDA with bf16 autocast when ``amp`` is on, optional ``torch.compile``;
  several GPUs (or CPU processes, on gloo) through ``torchrun`` with no change to the
  command (DDP; each rank draws its own patches from its own seed, rank 0 validates and
  writes; ``resume`` gives every rank its own sampling state back, and needs the same
  number of processes); CPU for tests and small runs.
* **TensorBoard** (``tensorboard: true``, needs ``medseg[tensorboard]``): the same figures
  as ``log.csv`` plus the loss at every step, in ``<out_dir>/tensorboard``.

Determinism: with the same seed a CPU run repeats exactly. On CUDA, cuDNN autotuning,
atomics in some backward kernels and bf16 rounding make runs differ slightly; the
patch draws and augmentation parameters still repeat exactly.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from medseg._device import resolve_device
from medseg.augment import apply_augment_torch, sample_augment_params
from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.config import TrainConfig, save_config
from medseg.data import (
    PatchSampler,
    TrainingVolume,
    VolumeOptions,
    crop_margin,
    load_training_volume,
)
from medseg.io import atomic_output
from medseg.losses import create_loss
from medseg.manifest import load_manifest
from medseg.metrics import confusion_matrix, overlap_metrics
from medseg.models import create_model
from medseg.patches import PatchSpec, predict_sliding_window

LOG_COLUMNS = (
    "epoch",
    "planned_epochs",
    "train_loss",
    "lr",
    "patches_per_s",
    "data_fraction",
    "val_mean_dice",
    "val_dice",
    "val_select",
    "val_objects",
    "seconds",
)


def _ddp() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) without."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, local, world


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0 (the process that writes and prints)."""
    return os.environ.get("RANK", "0") == "0"


def _rng_states(rng: np.random.Generator, gen: torch.Generator, world: int) -> list[dict]:
    """Every rank's sampling state (a collective under DDP: all ranks must call it)."""
    state = {"numpy": json.dumps(rng.bit_generator.state), "torch_gen": gen.get_state()}
    if world == 1:
        return [state]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, state)
    return states


def _restore_rng(ckpt, rng, gen, rank: int, world: int, path: Path) -> None:
    """Give this rank back its own sampling state from ``last.pt``."""
    saved = ckpt.extra["rng"]
    states = saved.get("ranks", [saved])  # one state per rank
    if len(states) != world:
        raise ValueError(
            f"--resume must use the number of processes of the run in {str(path)!r}, "
            f"{len(states)}, got {world}; restart torchrun with --nproc_per_node {len(states)}"
        )
    rng.bit_generator.state = json.loads(states[rank]["numpy"])
    gen.set_state(states[rank]["torch_gen"])


def patch_spec(config: TrainConfig, slice_axis: int = 0) -> PatchSpec:
    """The training/inference patch spec of a config (slice axis resolved per volume)."""
    p = config.patches
    return PatchSpec.two_and_half_d(
        p.size, p.stride, num_slices=p.num_slices, slice_axis=slice_axis, pad_mode=p.pad_mode
    )


def margin_for(config: TrainConfig) -> int:
    """In-plane context around training patches: room for the elastic/affine moves."""
    a = config.augment
    zoom_out = 1.0 / min(a.zoom_range[0], 1.0) - 1.0  # a zoom < 1 reads further out
    if a.elastic_sigma == 0 and a.max_shift == 0 and a.max_rotation_deg == 0 and zoom_out == 0:
        return 0
    reach = (
        3.0 * a.elastic_sigma
        + a.max_shift
        + config.patches.size * math.sin(math.radians(min(a.max_rotation_deg, 90.0))) / 2
        + config.patches.size * zoom_out / 2
    )
    return int(math.ceil(min(reach, config.patches.size)))


def model_kwargs(config: TrainConfig, channels: int = 1) -> dict[str, Any]:
    """Constructor arguments: the config's, plus in_channels (image channels x slices)
    and num_classes from the data."""
    return {
        **config.model.kwargs,
        "in_channels": channels * config.patches.num_slices,
        "num_classes": config.data.num_classes,
    }


def model_context(config: TrainConfig) -> int:
    """Pixels of context per side that the network consumes around a patch.

    0 for same-padding networks; for a valid-padding U-Net, ``(input - output) / 2`` for an
    output of ``patches.size`` (92 for the paper's depth-4 U-Net).

    Raises:
        ValueError: the network cannot output exactly ``patches.size`` pixels.
    """
    probe = create_model(config.model.name, **model_kwargs(config))
    if getattr(probe, "padding", "same") != "valid":
        return 0
    size = config.patches.size
    inp = type(probe).input_size_for(size, depth=probe.depth, padding="valid")  # type: ignore[attr-defined]
    out = probe.output_shape((inp, inp))[0]  # type: ignore[operator]
    if out != size:
        raise ValueError(
            f"patches.size must be an output size of the valid-padding {config.model.name} "
            f"(depth {probe.depth}), got {size}; the nearest is {out} (input {inp})"
        )
    return (inp - size) // 2


def volume_options(config: TrainConfig, manifest, *, margin: int, context: int) -> VolumeOptions:
    """The per-case preparation options of a config and its manifest's label format."""
    d, loss = config.data, config.loss
    return VolumeOptions(
        num_classes=d.num_classes,
        margin=margin,
        context=context,
        normalization=d.normalization,
        percentiles=d.percentiles,
        normalize_mask=d.normalize_mask,
        slice_axis=config.patches.slice_axis,
        skip_background=config.patches.skip_background,
        label_format=manifest.label_format,
        foreground_value=manifest.foreground_value,
        separate_touching=d.separate_touching,
        weight_map=(loss.w0, loss.sigma) if loss.weight_map else None,
        cache_dir=d.cache_dir,
        colour=d.colour,
        targets=d.targets,
        boundary_width=d.boundary_width,
    )


def input_settings(cases: Sequence[Any], config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint records about its inputs, for prediction on other scans.

    ``grid``: the training volumes' orientation and spacings
    (:meth:`medseg.preprocess.ModelGrid.from_geometries`), for 3D (2.5D) models;
    ``input``: whether the training images were skull-stripped T1 (``data.brain_extraction``),
    so that prediction strips raw heads first.

    Args:
        cases: The training split's manifest cases (image paths).
        config: The run's configuration.
    """
    from medseg.io import read_volume_info
    from medseg.preprocess import ModelGrid

    out: dict[str, Any] = {"input": {"brain_extraction": bool(config.data.brain_extraction)}}
    if config.patches.num_slices > 1 or config.data.brain_extraction:
        geometries = [read_volume_info(c.image).geometry for c in cases]
        if geometries:
            out["grid"] = ModelGrid.from_geometries(geometries).as_dict()
    return out


def _load_split(
    config: TrainConfig,
    split: str,
    device: torch.device,
    spec: PatchSpec,
    margin: int,
    context: int = 0,
    *,
    for_validation: bool = False,
):
    manifest = load_manifest(config.data.manifest, data_root=config.data.data_root)
    cases = [c for c in manifest.split(split) if c.label is not None]
    if not cases:
        raise ValueError(
            f"manifest {config.data.manifest!r} must have labelled cases in split {split!r}, "
            f"got none"
        )
    options = volume_options(config, manifest, margin=margin, context=context)
    if for_validation:  # scored against the real target: no carving, no weight map
        options = replace(options, weight_map=None, separate_touching=False)
    volumes = [
        load_training_volume(
            c.image, c.label, case=c.case, spec=spec, options=options, device=device
        )
        for c in cases
        if c.label is not None
    ]
    channels = {v.channels for v in volumes}
    if len(channels) > 1:
        raise ValueError(
            f"images of split {split!r} must all have the same number of channels, got "
            f"{sorted(channels)} in {config.data.manifest!r}"
        )
    return manifest, volumes


def _class_weights(config: TrainConfig, manifest) -> list[float] | None:
    if config.loss.class_weights == "none":
        return None
    if manifest.label_format != "classes":
        raise ValueError(
            f"loss.class_weights must be 'none' for {manifest.label_format!r} labels (use the "
            f"weight map's class balance, loss.weight_map), got {config.loss.class_weights!r}"
        )
    from medseg.weightmap import manifest_class_weights

    weights = manifest_class_weights(
        manifest,
        num_classes=config.data.num_classes,
        method=config.loss.class_weights,  # type: ignore[arg-type]  # checked by LossConfig
        split=config.data.train_split,
    )
    return [float(w) for w in weights]


def predict_validation_volume(
    model: torch.nn.Module,
    vol: TrainingVolume,
    config: TrainConfig,
    device: torch.device,
    *,
    foreground: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Predict one validation case as ``medseg predict`` would: uint8 ``(Z, Y, X)``.

    With ``foreground`` (object models) it returns ``(labels, probability)``, the latter
    float32 ``(Z, Y, X)``: ``1 - probs[0]``, what ``postprocess.method: seeded`` needs.
    ``progress(done, total)`` is called in patches or tiles.
    """
    image, _ = vol.unpadded()
    inf = config.inference
    with torch.autocast(device.type, torch.bfloat16, enabled=uses_amp(config, device)):
        if inf.mode == "tile":
            from medseg.tiling import predict_tiled

            tiled = predict_tiled(
                image.cpu().numpy(),
                model,
                tile_size=inf.tile_size,
                halo=inf.halo,
                batch_size=inf.batch_size,
                device=device,
                return_probs=foreground,
                progress=progress,
            )
            if foreground:
                return tiled.labels, (1.0 - tiled.probs[0]).astype(np.float32)
            return tiled.labels
        out = predict_sliding_window(
            image,
            model,
            patch_spec(config),
            mode=inf.mode,
            batch_size=inf.batch_size,
            progress=progress,
        )
    return out.labels.cpu().numpy()


def uses_amp(config: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast: on CUDA with ``amp``; on a CPU with native bf16 (AMX / AVX-512
    BF16, :func:`medseg.predict.cpu_has_native_bf16`) with ``cpu_amp``."""
    if device.type == "cuda":
        return bool(config.amp)
    if device.type == "cpu" and config.cpu_amp:
        from medseg.predict import cpu_has_native_bf16

        return cpu_has_native_bf16()
    return False


def object_metrics(pred_instances: np.ndarray, target_instances: np.ndarray) -> dict[str, float]:
    """The microscopy metrics of one case (U-Net paper, ISBI 2012, DSB2018)."""
    from medseg.metrics import average_precision, foreground_iou, rand_error, touching_split_rate

    ap = average_precision(pred_instances, target_instances)
    split = touching_split_rate(pred_instances, target_instances)
    return {
        "ap": float(ap["ap"]),  # type: ignore[arg-type]
        "f1_at_05": float(ap["f1_at_05"]),  # type: ignore[arg-type]
        "pixel_iou": foreground_iou(pred_instances, target_instances),
        "rand_error": float(rand_error(pred_instances, target_instances)["rand_error"]),
        "num_pairs": int(split["num_pairs"]),
        "num_split": int(split["num_split"]),
    }


def validate(
    model: torch.nn.Module,
    volumes: list[TrainingVolume],
    config: TrainConfig,
    device: torch.device,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics on whole predicted validation cases (majority vote or overlap-tile).

    Returns ``mean_dice`` and per-class ``dice`` (foreground classes, mean over cases),
    ``per_case`` Dice and, with ``postprocess.method`` set and object targets, the means
    of :func:`object_metrics` over cases plus the pooled touching-pair ``split_rate``.
    With ``progress``, bars show the cases and the current case's patches on a terminal
    (:class:`medseg._progress.Bars`).
    """
    from medseg._progress import Bars

    with Bars(len(volumes), "validation", enabled=None if progress else False) as bars:
        return _validate(model, volumes, config, device, bars)


def _validate(
    model: torch.nn.Module,
    volumes: list[TrainingVolume],
    config: TrainConfig,
    device: torch.device,
    bars: Any,
) -> dict[str, Any]:
    """:func:`validate` inside its progress bars."""
    from medseg.instances import instances_from_prediction

    model.eval()
    k = config.data.num_classes
    per_case: dict[str, list[float]] = {}
    objects: dict[str, dict[str, float]] = {}
    pp = config.postprocess
    seeded = pp.method == "seeded" and config.inference.mode == "tile"
    for vol in volumes:
        probability = None
        step = bars.item(vol.case)
        if seeded:
            labels, probability = predict_validation_volume(
                model, vol, config, device, foreground=True, progress=step
            )
        else:
            labels = predict_validation_volume(model, vol, config, device, progress=step)
        _, label = vol.unpadded()
        case_cm = confusion_matrix(labels, label.cpu().numpy(), num_classes=k)
        per_case[vol.case] = overlap_metrics(case_cm).dice[1:].tolist()
        if pp.method != "none" and vol.instances is not None:
            if probability is not None:
                from medseg.membranes import instances_from_probability

                pred = instances_from_probability(
                    probability, min_size=pp.min_size, **pp.seeded_parameters()
                )
            else:
                pred = instances_from_prediction(
                    labels, method=pp.method, min_size=pp.min_size, fill=pp.fill_gaps
                )
            objects[vol.case] = object_metrics(pred, vol.instances)
        bars.advance()
    dice = np.array([np.nanmean([d[c] for d in per_case.values()]) for c in range(k - 1)])
    model.train()
    result: dict[str, Any] = {
        "mean_dice": float(np.nanmean(dice)),
        "dice": dice.tolist(),
        "per_case": per_case,
    }
    if objects:
        for key in ("ap", "f1_at_05", "pixel_iou", "rand_error"):
            result[key] = float(np.nanmean([m[key] for m in objects.values()]))
        pairs = sum(m["num_pairs"] for m in objects.values())
        split = sum(m["num_split"] for m in objects.values())
        result["split_rate"] = split / pairs if pairs else float("nan")
        result["objects"] = objects
    return result


def selection_score(metrics: dict[str, Any], name: str) -> float:
    """Higher is better: the metric, or minus it for ``rand_error``; -inf when missing."""
    value = metrics.get(name)
    if value is None or not np.isfinite(value):
        return -math.inf
    return -float(value) if name == "rand_error" else float(value)


def _make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = config.optim
    if o.name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def _make_scheduler(config: TrainConfig, optimizer, steps: int):
    kind = config.optim.schedule
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if kind == "poly":  # DeepLab's poly schedule, power 0.9
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1 - s / steps) ** 0.9)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def _resumable(config: TrainConfig, last: Path, extend_epochs: int) -> TrainConfig:
    """The config to resume with: ``config`` if it is the run's own (``extend_epochs`` more
    epochs recorded), else a one-line ValueError listing what changed."""
    from dataclasses import replace

    from medseg.config import config_changes

    if extend_epochs < 0:
        raise ValueError(f"--extend-epochs must be >= 0, got {extend_epochs}")
    stored = load_checkpoint(last).config
    ignore = ("schedule.epochs", "schedule.extended_from") if extend_epochs else ()
    changes = config_changes(stored, config, ignore=ignore)
    if changes:
        listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes[:6])
        more = f" and {len(changes) - 6} more" if len(changes) > 6 else ""
        raise ValueError(
            f"--resume must continue the run in {str(last.parent)!r} with its own settings, "
            f"got {listed}{more}; start a new out_dir (or --overwrite) for a new run, or "
            "--extend-epochs N to train N epochs more"
        )
    if not extend_epochs:
        return config
    schedule = stored.get("schedule", {})
    epochs = int(schedule.get("epochs", config.schedule.epochs))
    history = (*tuple(schedule.get("extended_from", ())), epochs)
    extended = replace(config.schedule, epochs=epochs + extend_epochs, extended_from=history)
    return replace(config, schedule=extended)


def _check_run_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Fail early (writing nothing) if the run folder does not fit resume/overwrite."""
    if resume:
        if not (out / "last.pt").is_file():
            raise FileNotFoundError(
                f"--resume needs {str(out / 'last.pt')!r} from an earlier run, got nothing there"
            )
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"run folder {str(out)!r} must be new or empty, got an earlier run; "
            "pass --resume to continue it or --overwrite to start again"
        )


def _start_run_dir(out: Path, config: TrainConfig, *, resume: bool) -> None:
    """Create the run folder (removing an earlier run's files unless resuming), write the
    resolved config and a copy of the manifest."""
    if not resume and out.exists():
        for name in ("last.pt", "best.pt", "log.csv", "config.json", "report.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.json", overwrite=True)
    shutil.copyfile(config.data.manifest, out / "manifest.csv")


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    extend_epochs: int = 0,
) -> Path:
    """Train a model as configured; return the path of the best checkpoint.

    ``resume`` continues the run in ``out_dir`` from its ``last.pt`` exactly, and only with
    the configuration it was started with (:func:`medseg.config.config_changes`; where and
    how fast it runs may change, :data:`medseg.config.RESUME_FREE_KEYS`).
    ``extend_epochs`` (with ``resume``) trains that many epochs more: the run's
    ``schedule.epochs`` grows, the earlier count is recorded in ``schedule.extended_from``
    (``config.json``) and every ``log.csv`` row gives the epochs planned when it was
    written; the learning-rate schedule continues from the current rate towards the new
    end.

    Raises:
        FileExistsError: the run folder holds an earlier run (and neither ``resume`` nor
            ``overwrite``). FileNotFoundError / ValueError: bad manifest or data, or a
            resume whose configuration differs from the run's (one line listing the
            changes).
    """
    rank, local_rank, world = _ddp()
    device = resolve_device(config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    out = Path(config.out_dir)
    if extend_epochs and not resume:
        raise ValueError(f"--extend-epochs needs --resume, got {extend_epochs} without it")
    _check_run_dir(out, resume=resume, overwrite=overwrite)
    if resume:  # before any data is read: the same run, or a documented extension
        config = _resumable(config, out / "last.pt", extend_epochs)
    _check_tensorboard(config)
    if world > 1:  # every rank has checked the folder before rank 0 writes to it
        dist.barrier()
    if config.loss.name == "unetpp" and config.model.name != "unetpp":
        raise ValueError(
            f"loss.name 'unetpp' (deep supervision) needs model.name 'unetpp', got "
            f"{config.model.name!r}; use another loss"
        )

    # seed: one SeedSequence per rank; numpy for augmentation params, torch for patches
    seeds = np.random.SeedSequence(config.seed).spawn(world)[rank]
    rng = np.random.default_rng(seeds)
    torch.manual_seed(int(seeds.generate_state(1)[0]))
    gen = torch.Generator(device=device).manual_seed(int(seeds.generate_state(2)[1]))

    # data
    spec = patch_spec(config)
    margin = margin_for(config)
    context = model_context(config)
    manifest, train_volumes = _load_split(
        config, config.data.train_split, device, spec, margin, context
    )
    _, val_volumes = _load_split(
        config, config.data.val_split, device, spec, 0, 0, for_validation=True
    )
    channels = train_volumes[0].channels
    if val_volumes[0].channels != channels:
        raise ValueError(
            f"validation images must have {channels} channel(s) like the training images, got "
            f"{val_volumes[0].channels} (in {config.data.manifest!r})"
        )
    sampler = PatchSampler(
        train_volumes,
        spec,
        margin=margin + context,
        class_balanced=config.patches.class_balanced,
        generator=gen,
    )
    class_weights = _class_weights(config, manifest)
    loss_kwargs = dict(config.loss.kwargs)
    if class_weights is not None:
        loss_kwargs["class_weight"] = class_weights
    criterion = create_loss(config.loss.name, **loss_kwargs).to(device)

    # model and optimiser
    kwargs = model_kwargs(config, channels)
    model = create_model(config.model.name, **kwargs).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = _make_optimizer(config, model)
    steps_per_epoch = max(
        1, config.patches.patches_per_epoch // (config.schedule.batch_size * world)
    )
    scheduler = _make_scheduler(config, optimizer, steps_per_epoch * config.schedule.epochs)
    start_epoch, best, log_rows = 1, -math.inf, []
    if resume:
        ckpt = load_checkpoint(out / "last.pt")
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
        )
        optimizer.load_state_dict(ckpt.extra["optimizer"])
        scheduler.load_state_dict(ckpt.extra["scheduler"])
        if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            scheduler.T_max = steps_per_epoch * config.schedule.epochs  # an extended run
        _restore_rng(ckpt, rng, gen, rank, world, out / "last.pt")
        start_epoch = ckpt.epoch + 1
        best = float(ckpt.extra.get("best_metric", -math.inf))
        log_rows = list(ckpt.extra.get("log", []))
    deep_supervision = config.loss.name == "unetpp"
    if rank == 0:  # data and model are ready: only now is anything written
        _start_run_dir(out, config, resume=resume)
    net: torch.nn.Module = _Heads(model) if deep_supervision else model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:  # after DDP, so that its optimiser splits graphs at gradient buckets
        net = torch.compile(net)  # type: ignore[assignment]

    meta: dict[str, Any] = {
        "model_name": config.model.name,
        "model_kwargs": kwargs,
        "label_names": _label_names(manifest, config),
        "normalization": {
            "method": config.data.normalization,
            "percentiles": list(config.data.percentiles),
            "mask": config.data.normalize_mask,
            "colour": config.data.colour,
        },
        "patch": {
            "size": config.patches.size,
            "stride": config.patches.stride,
            "num_slices": config.patches.num_slices,
            "slice_axis": config.patches.slice_axis,
            "pad_mode": config.patches.pad_mode,
        },
        "inference": {
            "mode": config.inference.mode,
            "batch_size": config.inference.batch_size,
            "tile_size": config.inference.tile_size,
            "halo": config.inference.halo,
        },
        "config": config.to_dict(),
        "extra": {
            "postprocess": {
                "method": config.postprocess.method,
                "min_size": config.postprocess.min_size,
                "fill_gaps": config.postprocess.fill_gaps,
                **(
                    config.postprocess.seeded_parameters()
                    if config.postprocess.method == "seeded"
                    else {}
                ),
            },
            "label_format": manifest.label_format,
            "foreground_value": manifest.foreground_value,
            **input_settings(manifest.split(config.data.train_split), config),
        },
    }
    amp = uses_amp(config, device)
    crop = (
        slice(0, 1),
        slice(margin, margin + config.patches.size + 2 * context),
        slice(margin, margin + config.patches.size + 2 * context),
    )
    best_path = out / "best.pt"
    board = _TensorBoard(
        out / "tensorboard" if config.tensorboard and rank == 0 else None,
        purge_step=(start_epoch - 1) * steps_per_epoch + 1 if resume else None,
    )
    for epoch in range(start_epoch, config.schedule.epochs + 1):
        net.train()
        t_epoch = time.perf_counter()
        data_time, losses = 0.0, []
        task = _progress(progress and rank == 0, epoch, config.schedule.epochs, steps_per_epoch)
        for step in range(steps_per_epoch):
            t0 = time.perf_counter()
            inputs, targets, weights = sampler.sample(config.schedule.batch_size)
            inputs, targets, weights = _augment(
                inputs, targets, weights, config, rng, crop, margin, context
            )
            if device.type == "cuda":
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            data_time += _elapsed(t0, device)
            loss = training_step(
                net, criterion, optimizer, scheduler, inputs, targets, weights,
                deep_supervision=deep_supervision, amp=amp,
            )  # fmt: skip
            losses.append(float(loss.detach()))
            task.advance(losses[-1])
            board.step((epoch - 1) * steps_per_epoch + step + 1, losses[-1])
        task.close()
        seconds = time.perf_counter() - t_epoch
        row: dict[str, Any] = {
            "epoch": epoch,
            "planned_epochs": config.schedule.epochs,
            "train_loss": float(np.mean(losses)),
            "lr": float(scheduler.get_last_lr()[0]),
            "patches_per_s": steps_per_epoch * config.schedule.batch_size * world / seconds,
            "data_fraction": data_time / seconds,
            "val_mean_dice": "",
            "val_dice": "",
            "val_select": "",
            "val_objects": "",
            "seconds": seconds,
        }
        rng_states = _rng_states(rng, gen, world)
        if rank == 0:
            metrics: dict[str, Any] = {}
            if epoch % config.schedule.val_every == 0 or epoch == config.schedule.epochs:
                metrics = validate(model, val_volumes, config, device, progress=progress)
                row["val_mean_dice"] = metrics["mean_dice"]
                row["val_dice"] = json.dumps([round(d, 5) for d in metrics["dice"]])
                select = config.schedule.select_metric
                row["val_select"] = metrics.get(select, "")
                if "ap" in metrics:
                    row["val_objects"] = json.dumps(
                        {
                            k: round(metrics[k], 5)
                            for k in ("ap", "f1_at_05", "pixel_iou", "rand_error", "split_rate")
                        }
                    )
                score = selection_score(metrics, select)
                if score > best:
                    best = score
                    save_checkpoint(
                        best_path,
                        model=model,
                        epoch=epoch,
                        metrics=_json_metrics(metrics),
                        **{**meta, "extra": {**meta["extra"], "best_metric": best}},
                    )
            log_rows.append(row)
            _write_log(out / "log.csv", log_rows)
            board.epoch(epoch * steps_per_epoch, row, meta["label_names"], metrics)
            save_checkpoint(
                out / "last.pt",
                model=model,
                epoch=epoch,
                metrics=_json_metrics(metrics),
                **{k: v for k, v in meta.items() if k != "extra"},
                extra={
                    **meta["extra"],
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": {**rng_states[0], "ranks": rng_states},
                    "best_metric": best,
                    "log": log_rows,
                },
            )
            if progress:
                _print_epoch(row)
    board.close()
    if rank == 0:
        with atomic_output(out / "report.json", overwrite=True) as tmp:
            finite, select = math.isfinite(best), config.schedule.select_metric
            report = {
                "select_metric": config.schedule.select_metric,
                # the selection score is the metric, negated for rand_error (lower is better)
                "best_value": (-best if select == "rand_error" else best) if finite else None,
                "best_epoch": _best_epoch(log_rows, select),
                "log": log_rows,
            }
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if not best_path.exists():  # no validation ran: the last weights are the result
            shutil.copyfile(out / "last.pt", best_path)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return best_path


def _label_names(manifest, config: TrainConfig) -> dict[int, str]:
    if config.data.targets == "boundary":
        from medseg.boundary import LABEL_NAMES

        return dict(LABEL_NAMES)
    names = dict(manifest.label_names) if manifest.label_names else {}
    return {
        k: names.get(k, "background" if k == 0 else f"label_{k}")
        for k in range(config.data.num_classes)
    }


def _augment(inputs, targets, weights, config: TrainConfig, rng, crop, margin: int, context: int):
    """Augment a batch of margin patches (and weight maps) on its device; return the
    network inputs (margin cropped) and the targets and weights of the output window."""
    size = config.patches.size
    shape = (1, inputs.shape[-2], inputs.shape[-1])
    a = config.augment
    active = (
        a.elastic_sigma > 0
        or a.max_shift > 0
        or a.max_rotation_deg > 0
        or a.zoom_range != (1.0, 1.0)
        or a.flip_axes
        or a.gamma_range != (1.0, 1.0)
        or a.contrast_range != (1.0, 1.0)
    )
    if not active:
        image = crop_margin(inputs, margin)
        label = crop_margin(targets, margin + context)
        weight = None if weights is None else crop_margin(weights, margin + context)
        return image, label, weight
    in_plane = replace(a, ndim=2)
    params = [sample_augment_params(rng, shape, in_plane) for _ in range(len(inputs))]
    warped, warped_label, warped_weight = apply_augment_torch(
        inputs[:, :, None],
        targets[:, None],
        None if weights is None else weights[:, None],
        params,
        mode=a.interpolation,
        crop=crop,
    )
    assert warped_label is not None
    n, full = len(inputs), size + 2 * context
    image = warped[:, :, 0].reshape(n, -1, full, full)
    label = crop_margin(warped_label[:, 0], context)
    weight = None if warped_weight is None else crop_margin(warped_weight[:, 0], context)
    return image, label, weight


def _best_epoch(rows: list[dict[str, Any]], select: str) -> int | None:
    """The epoch whose validation gave the best selection score (the first of ties)."""
    scored = [
        (selection_score({select: r["val_select"]}, select), -int(r["epoch"]))
        for r in rows
        if r.get("val_select") not in ("", None)
    ]
    return -max(scored)[1] if scored else None


def _json_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Validation metrics as plain values (checkpoints load with weights_only=True)."""
    return json.loads(json.dumps(metrics, default=float))


class _Heads(torch.nn.Module):
    """Training view of a deep-supervision model: ``forward`` returns every head.

    Going through ``forward`` (rather than calling ``forward_heads`` directly) keeps DDP's
    gradient synchronisation and ``torch.compile`` working.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_heads(x)  # type: ignore[operator]


def training_step(
    net: Callable[[torch.Tensor], Any],
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    deep_supervision: bool,
    amp: bool,
) -> torch.Tensor:
    """One optimisation step of :func:`train` on a batch; returns the (attached) loss.

    The forward pass runs under bfloat16 autocast when ``amp`` (CUDA only); the loss is
    computed in float32 on every head for UNet++ (``deep_supervision``), with the U-Net
    weight map when ``weights`` is given. ``benchmarks/bench_train.py`` times this same
    function on synthetic tensors.
    """
    with torch.autocast(inputs.device.type, torch.bfloat16, enabled=amp):
        if deep_supervision:  # UNet++: the loss sees every head
            loss = criterion([h.float() for h in net(inputs)], targets)
        elif weights is not None:  # U-Net weight map (eq. 1)
            loss = criterion(net(inputs).float(), targets, weights)
        else:
            loss = criterion(net(inputs).float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss


def _elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


class _Progress:
    """A rich progress bar for one epoch (or nothing when disabled)."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, steps: int) -> None:
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn(f"epoch {epoch}/{epochs}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TimeElapsedColumn(),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=steps, loss=float("nan"))

    def advance(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, loss=loss)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _TensorBoard:
    """Optional TensorBoard event files in ``<out_dir>/tensorboard`` (rank 0 only).

    Every scalar is logged against the global step: the training loss at every step, the
    epoch's figures (mean loss, learning rate, throughput, data share, validation Dice per
    class and object metrics) at the epoch's last step. A resumed run purges the events
    written after the checkpoint it resumes from, so a killed run leaves no duplicates.
    """

    def __init__(self, folder: Path | None, purge_step: int | None) -> None:
        self.writer = None
        if folder is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def step(self, step: int, loss: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss_step", loss, step)

    def epoch(self, step: int, row: dict[str, Any], names: dict[int, str], metrics) -> None:
        if self.writer is None:
            return
        for key in ("train_loss", "lr", "patches_per_s", "data_fraction"):
            self.writer.add_scalar(f"train/{key}", row[key], step)
        if metrics:
            self.writer.add_scalar("val/mean_dice", metrics["mean_dice"], step)
            for k, dice in enumerate(metrics["dice"], start=1):
                self.writer.add_scalar(f"val/dice_{names.get(k, k)}", dice, step)
            for key in ("ap", "f1_at_05", "pixel_iou", "rand_error", "split_rate"):
                if key in metrics:
                    self.writer.add_scalar(f"val/{key}", metrics[key], step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _check_tensorboard(config: TrainConfig) -> None:
    """``tensorboard: true`` without the package fails before anything is written."""
    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "config key 'tensorboard' true needs the tensorboard package, got it not "
            "installed; pip install 'medseg[tensorboard]' or set tensorboard=false"
        )


def _progress(enabled: bool, epoch: int, epochs: int, steps: int) -> _Progress:
    return _Progress(enabled, epoch, epochs, steps)


def _print_epoch(row: dict[str, Any]) -> None:
    from rich.console import Console

    val = row["val_mean_dice"]
    val_text = f"val mean Dice {val:.4f} {row['val_dice']}" if val != "" else ""
    if row.get("val_objects"):
        val_text += f" {row['val_objects']}"
    console = Console(highlight=False)
    console.print(
        f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, "
        f"{row['patches_per_s']:.0f} patches/s (data {100 * row['data_fraction']:.1f} %), "
        f"{row['seconds']:.1f} s  {val_text}"
    )
    console.file.flush()
