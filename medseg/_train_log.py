"""What a training run reports as it goes: the ``log.csv`` columns and writer, the epoch
progress bar, the printed epoch line and the optional TensorBoard events (rank 0 only).
:mod:`medseg.train` drives them.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import time
from pathlib import Path
from typing import Any

import torch

from medseg.config import TrainConfig
from medseg.io import atomic_output

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


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


class EpochBar:
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


class TensorBoard:
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


def check_tensorboard(config: TrainConfig) -> None:
    """``tensorboard: true`` without the package fails before anything is written."""
    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "config key 'tensorboard' true needs the tensorboard package, got it not "
            "installed; pip install 'medseg[tensorboard]' or set tensorboard=false"
        )


def epoch_bar(enabled: bool, epoch: int, epochs: int, steps: int) -> EpochBar:
    return EpochBar(enabled, epoch, epochs, steps)


def print_epoch(row: dict[str, Any]) -> None:
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
