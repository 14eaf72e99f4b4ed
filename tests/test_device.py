"""medseg._device: one resolve_device for predict, train and batch; mps accepted by name."""

from __future__ import annotations

import pytest
import torch

from medseg._device import check_device_name, mps_available, resolve_device


def test_names_are_checked_with_the_argument_named():
    for ok in ("auto", "cpu", "mps", "cuda", "cuda:1"):
        assert check_device_name(ok) == ok
    for bad in ("tpu", "cuda:x", "CPU", 0):
        with pytest.raises(ValueError, match="--device must be auto, cpu, mps, cuda or cuda:N"):
            check_device_name(bad)


def test_auto_and_unavailable_devices():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if mps_available() else "cpu")
    assert resolve_device("auto").type == expected == resolve_device(None).type
    assert resolve_device("cpu") == torch.device("cpu")
    if not mps_available():
        with pytest.raises(ValueError, match="got 'mps' but this torch build or machine"):
            resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="got 'cuda:0' but CUDA is not; use cpu"):
            resolve_device("cuda:0")


def test_every_entry_point_accepts_mps_by_name(tmp_path):
    """train's config and batch's options take 'mps' like 'cuda'; the one resolver then
    decides whether this machine has it (here, in CI, it says so in one line)."""
    from medseg.batch import BatchConfig
    from medseg.config import TrainConfig
    from medseg.predict import resolve_device as predict_resolve
    from medseg.train import resolve_device as train_resolve

    assert TrainConfig(device="mps").device == "mps"
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")
    assert predict_resolve is resolve_device is train_resolve
    manifest = tmp_path / "m.csv"
    manifest.write_text("case,image,label,split\n")
    config = BatchConfig(manifest=manifest, device="mps")
    assert config.device == "mps"
