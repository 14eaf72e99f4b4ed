"""Training: ``train(config) -> checkpoint path``.

One readable loop (ARCHITECTURE.md section 3) in named phases: the checked configuration,
the run (seed, data, model, optimiser, a resumed state), then per epoch the training steps
(:mod:`medseg.train_step`), validation on whole reassembled volumes
(:mod:`medseg.validation`) and checkpoints, with the log and progress of
:mod:`medseg._train_log`.

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

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from medseg._device import resolve_device
from medseg._train_log import (
    LOG_COLUMNS,
    EpochBar,
    TensorBoard,
    check_tensorboard,
    elapsed,
    epoch_bar,
    print_epoch,
    write_log,
)
from medseg.checkpoint import (
    InferenceSettings,
    NormalizationSettings,
    PatchSettings,
    PostprocessSettings,
    load_checkpoint,
    save_checkpoint,
)
from medseg.config import TrainConfig, save_config
from medseg.data import (
    PatchSampler,
    TrainingVolume,
    VolumeOptions,
    load_training_volume,
    training_object_size,
)
from medseg.io import atomic_output
from medseg.losses import create_loss
from medseg.manifest import load_manifest
from medseg.models import create_model
from medseg.patches import PatchSpec
from medseg.train_step import Heads, augment_batch, training_step
from medseg.validation import (
    best_epoch,
    json_metrics,
    object_metrics,
    patch_spec,
    predict_validation_volume,
    selection_score,
    uses_amp,
    validate,
)

__all__ = [
    "LOG_COLUMNS",
    "EpochBar",
    "TensorBoard",
    "input_settings",
    "is_main_process",
    "margin_for",
    "model_context",
    "model_kwargs",
    "object_metrics",
    "patch_spec",
    "predict_validation_volume",
    "resolve_device",
    "selection_score",
    "train",
    "training_step",
    "uses_amp",
    "validate",
    "volume_options",
]


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
    elif config.augment.stain_sigma > 0:  # restained at every epoch (PatchSampler.restain)
        options = replace(options, keep_stain_source=True)
    volumes = [
        load_training_volume(
            c.image, c.label, case=c.case, spec=spec, options=options, device=device
        )
        for c in cases
        if c.label is not None
    ]
    if options.keep_stain_source and not any(v.stain_source is not None for v in volumes):
        raise ValueError(
            f"augment.stain_sigma perturbs the stains of brightfield colour images, got none "
            f"in split {split!r} of {config.data.manifest!r} (stain_sigma "
            f"{config.augment.stain_sigma}); set it to 0"
        )
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


def _stretch_cosine(scheduler, steps: int) -> None:
    """Put a resumed cosine schedule on the curve of a run planned for ``steps`` steps.

    An extended run (``--extend-epochs``) continues as if it had been planned that long:
    the learning rate is the closed form ``eta_min + (base - eta_min)(1 + cos(pi t / T))/2``
    at the step reached. (Changing ``T_max`` alone is not enough: torch's recursive cosine
    update keeps a learning rate of 0 at 0, so a run extended after its last epoch would
    not train.) A schedule whose length has not changed is left alone, so a plain resume
    stays bit-exact.
    """
    if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        return
    if scheduler.T_max == steps:
        return
    scheduler.T_max = steps
    step = scheduler.last_epoch
    lrs = [
        scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * step / steps)) / 2
        for base in scheduler.base_lrs
    ]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs


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

    The phases, in order: :func:`_checked_config` (nothing read yet), :func:`_build_run`
    (seeds, data, loss, model, optimiser, the resumed state; then the run folder), then per
    epoch :func:`_train_epoch` and :func:`_end_epoch` (validation, checkpoints, log), and
    :func:`_write_report`.

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
    config = _checked_config(config, resume, overwrite, extend_epochs, world)
    run = _build_run(config, device, rank, world, resume=resume)
    board = TensorBoard(
        run.out / "tensorboard" if config.tensorboard and rank == 0 else None,
        purge_step=(run.start_epoch - 1) * run.steps_per_epoch + 1 if resume else None,
    )
    for epoch in range(run.start_epoch, config.schedule.epochs + 1):
        row = _train_epoch(run, epoch, board, progress=progress)
        _end_epoch(run, epoch, row, board, progress=progress)
    board.close()
    best_path = run.out / "best.pt"
    if rank == 0:
        _write_report(run)
        if not best_path.exists():  # no validation ran: the last weights are the result
            shutil.copyfile(run.out / "last.pt", best_path)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return best_path


@dataclass
class _Run:
    """What the epochs of one training run share (built by :func:`_build_run`)."""

    config: TrainConfig
    out: Path
    device: torch.device
    rank: int
    world: int
    rng: np.random.Generator
    gen: torch.Generator
    sampler: PatchSampler
    val_volumes: list[TrainingVolume]
    criterion: torch.nn.Module
    model: torch.nn.Module
    net: torch.nn.Module  # what the steps call: the model, its heads, DDP or compiled
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    meta: dict[str, Any]  # the settings every checkpoint holds
    margin: int
    context: int
    crop: tuple[slice, ...]
    amp: bool
    deep_supervision: bool
    start_epoch: int
    best: float
    log_rows: list[dict[str, Any]]


def _checked_config(
    config: TrainConfig, resume: bool, overwrite: bool, extend_epochs: int, world: int
) -> TrainConfig:
    """Phase 1, before any data is read: the run folder, a resume's configuration (the
    same run, or a documented extension), TensorBoard and the loss/model pairing."""
    out = Path(config.out_dir)
    if extend_epochs and not resume:
        raise ValueError(f"--extend-epochs needs --resume, got {extend_epochs} without it")
    _check_run_dir(out, resume=resume, overwrite=overwrite)
    if resume:
        config = _resumable(config, out / "last.pt", extend_epochs)
    check_tensorboard(config)
    if world > 1:  # every rank has checked the folder before rank 0 writes to it
        dist.barrier()
    if config.loss.name == "unetpp" and config.model.name != "unetpp":
        raise ValueError(
            f"loss.name 'unetpp' (deep supervision) needs model.name 'unetpp', got "
            f"{config.model.name!r}; use another loss"
        )
    return config


def _build_run(
    config: TrainConfig, device: torch.device, rank: int, world: int, *, resume: bool
) -> _Run:
    """Phase 2: seeds, data, loss, model and optimiser, the state of a resumed run; only
    then (rank 0) the run folder is written."""
    out = Path(config.out_dir)
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
        sample_by=config.patches.sample_by,
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
        _stretch_cosine(scheduler, steps_per_epoch * config.schedule.epochs)
        _restore_rng(ckpt, rng, gen, rank, world, out / "last.pt")
        start_epoch = ckpt.epoch + 1
        best = float(ckpt.extra.get("best_metric", -math.inf))
        log_rows = list(ckpt.extra.get("log", []))
    deep_supervision = config.loss.name == "unetpp"
    if rank == 0:  # data and model are ready: only now is anything written
        _start_run_dir(out, config, resume=resume)
    net: torch.nn.Module = Heads(model) if deep_supervision else model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:  # after DDP, so that its optimiser splits graphs at gradient buckets
        net = torch.compile(net)  # type: ignore[assignment]
    window = slice(margin, margin + config.patches.size + 2 * context)
    return _Run(
        config=config,
        out=out,
        device=device,
        rank=rank,
        world=world,
        rng=rng,
        gen=gen,
        sampler=sampler,
        val_volumes=val_volumes,
        criterion=criterion,
        model=model,
        net=net,
        optimizer=optimizer,
        scheduler=scheduler,
        steps_per_epoch=steps_per_epoch,
        meta=_checkpoint_meta(config, kwargs, manifest),
        margin=margin,
        context=context,
        crop=(slice(0, 1), window, window),
        amp=uses_amp(config, device),
        deep_supervision=deep_supervision,
        start_epoch=start_epoch,
        best=best,
        log_rows=log_rows,
    )


def _checkpoint_meta(config: TrainConfig, kwargs: dict[str, Any], manifest) -> dict[str, Any]:
    """The settings every checkpoint of the run holds: what ``medseg predict`` needs."""
    pp = config.postprocess
    seeded: dict[str, Any] = pp.seeded_parameters() if pp.method == "seeded" else {}
    if pp.method == "boundary":
        seeded = {"mask_threshold": pp.mask_threshold}
    return {
        "model_name": config.model.name,
        "model_kwargs": kwargs,
        "label_names": _label_names(manifest, config),
        "normalization": NormalizationSettings(
            method=config.data.normalization,
            percentiles=config.data.percentiles,
            mask=config.data.normalize_mask,
            colour=config.data.colour,
        ).to_dict(),
        "patch": _settings_of(PatchSettings, config.patches),
        "inference": _settings_of(InferenceSettings, config.inference),
        "config": config.to_dict(),
        "extra": {
            "postprocess": PostprocessSettings(
                method=pp.method, min_size=pp.min_size, fill_gaps=pp.fill_gaps, **seeded
            ).to_dict(),
            "label_format": manifest.label_format,
            "foreground_value": manifest.foreground_value,
            **input_settings(manifest.split(config.data.train_split), config),
            **_object_size(config, manifest),
        },
    }


def _object_size(config: TrainConfig, manifest) -> dict[str, Any]:
    """``{"object_size": ...}`` of a 2D object model's training labels (or nothing)."""
    if not config.inference.is_tile:
        return {}
    labels = [c.label for c in manifest.split(config.data.train_split) if c.label is not None]
    size = training_object_size(
        labels, label_format=manifest.label_format, foreground_value=manifest.foreground_value
    )
    return {} if size is None else {"object_size": size}


def _settings_of(cls: type, section: Any) -> dict[str, Any]:
    """The checkpoint dict of a settings class whose fields the config ``section`` has
    under the same names (``patches`` -> :class:`PatchSettings`, ``inference``)."""
    names = [f.name for f in fields(cls) if f.name != "other"]
    return cls(**{name: getattr(section, name) for name in names}).to_dict()


def _train_epoch(run: _Run, epoch: int, board: TensorBoard, *, progress: bool) -> dict[str, Any]:
    """Phase 3: one epoch of training steps; returns its ``log.csv`` row (no validation yet)."""
    config, device = run.config, run.device
    run.net.train()
    t_epoch = time.perf_counter()
    data_time, losses = 0.0, []
    if config.augment.stain_sigma > 0:  # a new stain per colour image, from the run's rng
        run.sampler.restain(run.rng, config.augment.stain_sigma)
    task = epoch_bar(progress and run.rank == 0, epoch, config.schedule.epochs, run.steps_per_epoch)
    for step in range(run.steps_per_epoch):
        t0 = time.perf_counter()
        inputs, targets, weights = run.sampler.sample(config.schedule.batch_size)
        inputs, targets, weights = augment_batch(
            inputs, targets, weights, config, run.rng, run.crop, run.margin, run.context
        )
        if device.type == "cuda":
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        data_time += elapsed(t0, device)
        loss = training_step(
            run.net, run.criterion, run.optimizer, run.scheduler, inputs, targets, weights,
            deep_supervision=run.deep_supervision, amp=run.amp,
        )  # fmt: skip
        losses.append(float(loss.detach()))
        task.advance(losses[-1])
        board.step((epoch - 1) * run.steps_per_epoch + step + 1, losses[-1])
    task.close()
    seconds = time.perf_counter() - t_epoch
    return {
        "epoch": epoch,
        "planned_epochs": config.schedule.epochs,
        "train_loss": float(np.mean(losses)),
        "lr": float(run.scheduler.get_last_lr()[0]),
        "patches_per_s": run.steps_per_epoch * config.schedule.batch_size * run.world / seconds,
        "data_fraction": data_time / seconds,
        "val_mean_dice": "",
        "val_dice": "",
        "val_select": "",
        "val_objects": "",
        "seconds": seconds,
    }


def _end_epoch(
    run: _Run, epoch: int, row: dict[str, Any], board: TensorBoard, *, progress: bool
) -> None:
    """Phase 4: validation when due, ``best.pt`` on a better score, ``log.csv`` and
    ``last.pt`` (with the optimiser, scheduler and every rank's sampling state)."""
    config, meta = run.config, run.meta
    rng_states = _rng_states(run.rng, run.gen, run.world)  # a collective: every rank
    if run.rank != 0:
        return
    metrics: dict[str, Any] = {}
    if epoch % config.schedule.val_every == 0 or epoch == config.schedule.epochs:
        metrics = validate(run.model, run.val_volumes, config, run.device, progress=progress)
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
        if score > run.best:
            run.best = score
            save_checkpoint(
                run.out / "best.pt",
                model=run.model,
                epoch=epoch,
                metrics=json_metrics(metrics),
                **{**meta, "extra": {**meta["extra"], "best_metric": run.best}},
            )
    run.log_rows.append(row)
    write_log(run.out / "log.csv", run.log_rows)
    board.epoch(epoch * run.steps_per_epoch, row, meta["label_names"], metrics)
    save_checkpoint(
        run.out / "last.pt",
        model=run.model,
        epoch=epoch,
        metrics=json_metrics(metrics),
        **{k: v for k, v in meta.items() if k != "extra"},
        extra={
            **meta["extra"],
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": {**rng_states[0], "ranks": rng_states},
            "best_metric": run.best,
            "log": run.log_rows,
        },
    )
    if progress:
        print_epoch(row)


def _write_report(run: _Run) -> None:
    """Phase 5 (rank 0): ``report.json``, the selection metric, its best value and epoch."""
    with atomic_output(run.out / "report.json", overwrite=True) as tmp:
        best, select = run.best, run.config.schedule.select_metric
        finite = math.isfinite(best)
        report = {
            "select_metric": select,
            # the selection score is the metric, negated for rand_error (lower is better)
            "best_value": (-best if select == "rand_error" else best) if finite else None,
            "best_epoch": best_epoch(run.log_rows, select),
            "log": run.log_rows,
        }
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _label_names(manifest, config: TrainConfig) -> dict[int, str]:
    if config.data.targets == "boundary":
        from medseg.boundary import LABEL_NAMES

        return dict(LABEL_NAMES)
    names = dict(manifest.label_names) if manifest.label_names else {}
    return {
        k: names.get(k, "background" if k == 0 else f"label_{k}")
        for k in range(config.data.num_classes)
    }
