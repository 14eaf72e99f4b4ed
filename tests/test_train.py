"""End-to-end training tests on small crops of real IBSR volumes (CPU, seconds).

The fixture writes 12 axial slices x 64 x 64 crops of three IBSR subjects as NIfTI with
a manifest (2 train, 1 val), so a full `medseg train` + `medseg predict` runs in CI time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medseg.checkpoint import load_checkpoint
from medseg.cli import main

TINY = {
    "model": {"name": "usegnet", "kwargs": {"base_features": 4}},
    "patches": {"patches_per_epoch": 128, "class_balanced": True},
    "augment": {"elastic_sigma": 10.0, "flip_axes": [2]},
    "schedule": {"epochs": 2, "batch_size": 32},
    "optim": {"lr": 0.003},
    "inference": {"batch_size": 256},
    "device": "cpu",
}


def _config(root: Path, tmp_path: Path, name: str, **overrides) -> Path:
    data = json.loads(json.dumps(TINY))
    data["data"] = {"manifest": str(root / "tiny.csv"), "data_root": str(root)}
    data["out_dir"] = str(tmp_path / name)
    for key, value in overrides.items():
        data.setdefault(key, {}).update(value) if isinstance(value, dict) else data.update(
            {key: value}
        )
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


def test_train_then_predict_end_to_end(tiny_ibsr, tmp_path, capsys):
    config = _config(tiny_ibsr, tmp_path, "run")
    assert main(["train", "-c", str(config), "--quiet"]) == 0
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt", "log.csv", "config.json", "manifest.csv", "report.json"):
        assert (run / name).is_file(), name
    log = pd.read_csv(run / "log.csv")
    assert log["epoch"].tolist() == [1, 2]
    assert np.isfinite(log["train_loss"]).all() and log["val_mean_dice"].notna().all()
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt.model_name == "usegnet" and ckpt.model_kwargs["in_channels"] == 3
    assert ckpt.label_names == {0: "background", 1: "CSF", 2: "GM", 3: "WM"}
    assert ckpt.config["schedule"]["epochs"] == 2  # the resolved config travels along

    image = tiny_ibsr / "IBSR_04_t1.nii.gz"
    out = tmp_path / "pred"
    code = main(["predict", str(image), "-m", str(run / "best.pt"), "-o", str(out), "--confidence"])
    assert code == 0
    seg = nib.load(out / "IBSR_04_t1_seg.nii.gz")
    src = nib.load(image)
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
    assert seg.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    conf = np.asarray(nib.load(out / "IBSR_04_t1_confidence.nii.gz").dataobj)
    assert 0.0 < conf.min() and conf.max() <= 1.0
    assert "GM" in capsys.readouterr().out  # tissue volumes printed


def test_same_seed_same_weights_on_cpu(tiny_ibsr, tmp_path):
    one = {"schedule": {"epochs": 1}}
    for name in ("a", "b"):
        assert main(["train", "-c", str(_config(tiny_ibsr, tmp_path, name, **one)), "--quiet"]) == 0
    wa, wb = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = _config(tiny_ibsr, tmp_path, "c", seed=1, **one)
    assert main(["train", "-c", str(c), "--quiet"]) == 0
    wc = _weights(tmp_path / "c" / "last.pt")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_after_interruption_equals_uninterrupted(tiny_ibsr, tmp_path, interrupt_training):
    full = _config(tiny_ibsr, tmp_path, "full")
    assert main(["train", "-c", str(full), "--quiet"]) == 0

    interrupted = _config(tiny_ibsr, tmp_path, "cut")
    interrupt_training(2)  # killed during epoch 2's save: epoch 1 is on disk
    assert main(["train", "-c", str(interrupted), "--quiet"]) == 130  # Ctrl-C exit status
    interrupt_training(None)
    assert load_checkpoint(tmp_path / "cut" / "last.pt").epoch == 1
    assert main(["train", "-c", str(interrupted), "--resume", "--quiet"]) == 0
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert pd.read_csv(tmp_path / "cut" / "log.csv")["epoch"].tolist() == [1, 2]


def test_existing_run_needs_resume_or_overwrite(tiny_ibsr, tmp_path, capsys):
    config = _config(tiny_ibsr, tmp_path, "run", schedule={"epochs": 1})
    assert main(["train", "-c", str(config), "--quiet"]) == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    assert main(["train", "-c", str(config), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and "run" in err
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_config_errors_exit_1(tiny_ibsr, tmp_path, capsys):
    config = _config(tiny_ibsr, tmp_path, "run")
    assert main(["train", "-c", str(config), "--set", "schedule.epochz=3"]) == 1
    assert "schedule.epochz" in capsys.readouterr().err
    assert main(["train", "-c", str(config), "--set", "schedule.epochs=three"]) == 1
    assert "schedule.epochs must be an integer" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written for a bad config


def test_resume_without_checkpoint(tiny_ibsr, tmp_path, capsys):
    config = _config(tiny_ibsr, tmp_path, "new")
    assert main(["train", "-c", str(config), "--resume"]) == 1
    assert "last.pt" in capsys.readouterr().err


def test_missing_manifest_entry_file(tiny_ibsr, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_ibsr.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "IBSR_05_t1.nii.gz").unlink()
    config = _config(broken, tmp_path, "run")
    assert main(["train", "-c", str(config), "--quiet"]) == 1
    assert "IBSR_05_t1.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing half-started: a retry is not refused


def test_deep_supervision_loss_needs_unetpp(tiny_ibsr, tmp_path, capsys):
    config = _config(tiny_ibsr, tmp_path, "bad", loss={"name": "unetpp"})
    assert main(["train", "-c", str(config), "--quiet"]) == 1
    assert "needs model.name 'unetpp'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_unetpp_trains_with_deep_supervision(tiny_ibsr, tmp_path):
    config = _config(
        tiny_ibsr,
        tmp_path,
        "pp",
        model={"name": "unetpp", "kwargs": {"base_features": 4}},
        loss={"name": "unetpp"},
        schedule={"epochs": 1},
    )
    assert main(["train", "-c", str(config), "--quiet"]) == 0
    assert (tmp_path / "pp" / "best.pt").is_file()


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Two CPU ranks (gloo) under torchrun, running the CLI through tests/ddp_worker.py."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(Path(__file__).with_name("ddp_worker.py"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command + [str(tmp_path), *args],
        capture_output=True,
        encoding="utf-8",  # whatever the locale: a killed rank's report holds non-ASCII
        errors="replace",
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_ddp_ranks_share_weights_and_draw_their_own_patches(tiny_ibsr, tmp_path):
    """torchrun with 2 processes trains one model: every rank ends with the weights in
    last.pt, the schedule takes one step per global batch, only rank 0 writes."""
    config = _config(tiny_ibsr, tmp_path, "ddp")
    done = _torchrun(tmp_path, "train", "-c", str(config), "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("best checkpoint:") == 1  # printed by rank 0 only
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    saved = _weights(tmp_path / "ddp" / "last.pt")
    assert saved.keys() == r0["state"].keys()
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    for k, v in saved.items():  # rank 0 writes the checkpoint
        assert torch.equal(v, r0["state"][k]), k
        if not k.endswith(buffers):  # BN statistics stay per rank after the last step
            assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert not torch.equal(r0["first_batch"], r1["first_batch"])
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    steps = TINY["patches"]["patches_per_epoch"] // (TINY["schedule"]["batch_size"] * 2)
    assert ckpt.extra["scheduler"]["last_epoch"] == steps * TINY["schedule"]["epochs"]
    assert len(ckpt.extra["rng"]["ranks"]) == 2
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "best.pt",
        "config.json",
        "last.pt",
        "log.csv",
        "manifest.csv",
        "report.json",
    ]
    # the single-process run of the same config is a different run (twice the steps)
    single = _config(tiny_ibsr, tmp_path, "single")
    assert main(["train", "-c", str(single), "--quiet"]) == 0
    one = _weights(tmp_path / "single" / "last.pt")
    assert not all(torch.equal(one[k], saved[k]) for k in saved)


@pytest.mark.slow
def test_ddp_resume_after_kill_equals_uninterrupted(tiny_ibsr, tmp_path):
    """A DDP run killed after epoch 1 and resumed under torchrun ends bit-identical to an
    uninterrupted DDP run: each rank gets its own sampling state back."""
    full = _config(tiny_ibsr, tmp_path, "full")
    assert _torchrun(tmp_path, "train", "-c", str(full), "--quiet").returncode == 0
    cut = _config(tiny_ibsr, tmp_path, "cut")
    killed = _torchrun(tmp_path, "--die-after", "1", "train", "-c", str(cut), "--quiet")
    assert killed.returncode != 0
    assert load_checkpoint(tmp_path / "cut" / "last.pt").epoch == 1
    resumed = _torchrun(tmp_path, "train", "-c", str(cut), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert pd.read_csv(tmp_path / "cut" / "log.csv")["epoch"].tolist() == [1, 2]
    # resuming with another number of processes is refused in one line, nothing written
    before = (tmp_path / "cut" / "last.pt").stat().st_mtime_ns
    assert main(["train", "-c", str(cut), "--resume", "--quiet"]) == 1
    assert (tmp_path / "cut" / "last.pt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_torch_compile_trains_the_same_model(tiny_ibsr, tmp_path):
    """`compile: true` (inductor on CPU) takes the same steps as eager mode, to float
    rounding, and its checkpoint has the plain model's keys. (SGD: Adam would turn the
    rounding noise in the near-zero gradients of conv biases before batch norm into
    full-size steps.)"""
    short = {
        "schedule": {"epochs": 1},
        "patches": {"patches_per_epoch": 64},
        "optim": {"name": "sgd", "lr": 0.01},
    }
    eager = _config(tiny_ibsr, tmp_path, "eager", **short)
    compiled = _config(tiny_ibsr, tmp_path, "compiled", compile=True, **short)
    assert main(["train", "-c", str(eager), "--quiet"]) == 0
    # inductor in a fresh process with its own cache (no state shared with other runs on
    # the machine), in UTF-8 mode (it decodes compiler messages with the locale's codec)
    env = {**os.environ, "PYTHONUTF8": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    code = "import sys; from medseg.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "--debug", "train", "-c", str(compiled), "--quiet"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _weights(tmp_path / "eager" / "last.pt"), _weights(tmp_path / "compiled" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:  # measured: max |diff| 2.4e-7; the steps move BN weights by 2e-4 and more
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-6), k
    la, lb = (pd.read_csv(tmp_path / name / "log.csv") for name in ("eager", "compiled"))
    assert la["train_loss"].tolist() == pytest.approx(lb["train_loss"].tolist(), rel=1e-5)


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard events, read back with TensorBoard's own reader
    (which drops the events a resumed run purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_tensorboard_logs_what_log_csv_holds_and_survives_resume(
    tiny_ibsr, tmp_path, interrupt_training
):
    pytest.importorskip("tensorboard")

    full = _config(tiny_ibsr, tmp_path, "full", tensorboard=True)
    assert main(["train", "-c", str(full), "--quiet"]) == 0
    log = pd.read_csv(tmp_path / "full" / "log.csv")
    steps = TINY["patches"]["patches_per_epoch"] // TINY["schedule"]["batch_size"]
    scalars = _scalars(tmp_path / "full")
    assert [s for s, _ in scalars["train/loss_step"]] == list(range(1, 2 * steps + 1))
    ends = [e * steps for e in log["epoch"]]
    for key in ("train_loss", "lr", "patches_per_s", "data_fraction"):
        assert [s for s, _ in scalars[f"train/{key}"]] == ends
        assert [v for _, v in scalars[f"train/{key}"]] == pytest.approx(log[key].tolist())
    val = log.dropna(subset=["val_mean_dice"])
    assert [v for _, v in scalars["val/mean_dice"]] == pytest.approx(val["val_mean_dice"].tolist())
    dice = json.loads(val["val_dice"].iloc[-1])
    for name, value in zip(("CSF", "GM", "WM"), dice, strict=True):
        assert scalars[f"val/dice_{name}"][-1][1] == pytest.approx(value, abs=1e-5)
    # per-step losses average to the epoch's loss
    first = [v for s, v in scalars["train/loss_step"] if s <= steps]
    assert np.mean(first) == pytest.approx(log["train_loss"].iloc[0], rel=1e-5)

    # killed after epoch 2's events but before its last.pt: the resumed run's events
    # replace them, so every step appears once, with the uninterrupted run's values
    cut = _config(tiny_ibsr, tmp_path, "cut", tensorboard=True)
    interrupt_training(2)
    assert main(["train", "-c", str(cut), "--quiet"]) == 130
    interrupt_training(None)
    assert main(["train", "-c", str(cut), "--resume", "--quiet"]) == 0
    resumed = _scalars(tmp_path / "cut")
    for tag in ("train/loss_step", "train/train_loss", "val/mean_dice"):
        assert [s for s, _ in resumed[tag]] == [s for s, _ in scalars[tag]], tag
        assert [v for _, v in resumed[tag]] == pytest.approx([v for _, v in scalars[tag]]), tag


def test_tensorboard_missing_package_fails_before_writing(tiny_ibsr, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name)
    )
    config = _config(tiny_ibsr, tmp_path, "tb", tensorboard=True)
    assert main(["train", "-c", str(config), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "needs the tensorboard package" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "tb").exists()


def test_uses_amp_cuda_follows_amp_and_cpu_needs_cpu_amp_and_native_bf16(monkeypatch):
    import torch

    import medseg.predict as predict
    from medseg.config import TrainConfig
    from medseg.train import uses_amp

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_amp(TrainConfig(amp=True), cuda) and not uses_amp(TrainConfig(amp=False), cuda)
    monkeypatch.setattr(predict, "cpu_has_native_bf16", lambda: True)
    assert not uses_amp(TrainConfig(amp=True), cpu)  # amp alone is CUDA only
    assert uses_amp(TrainConfig(cpu_amp=True), cpu)
    monkeypatch.setattr(predict, "cpu_has_native_bf16", lambda: False)
    assert not uses_amp(TrainConfig(cpu_amp=True), cpu)  # emulated bf16 would be slow


def test_margin_reaches_as_far_as_a_zoom_out_reads():
    """Hand values: size 100, no other move: a zoom down to 0.8 reads 100 / 2 * (1 / 0.8 - 1)
    = 12.5 -> 13 px beyond the patch; a zoom range above 1 reads nothing outside it."""
    from medseg.config import config_from_dict
    from medseg.train import margin_for

    base = {"patches": {"size": 100, "stride": 100}, "augment": {"elastic_sigma": 0.0}}
    assert margin_for(config_from_dict(base)) == 0
    zoom_out = {**base, "augment": {"elastic_sigma": 0.0, "zoom_range": [0.8, 1.5]}}
    assert margin_for(config_from_dict(zoom_out)) == 13
    zoom_in = {**base, "augment": {"elastic_sigma": 0.0, "zoom_range": [1.0, 1.5]}}
    assert margin_for(config_from_dict(zoom_in)) == 0
    both = {**base, "augment": {"elastic_sigma": 10.0, "zoom_range": [0.5, 1.0]}}
    assert margin_for(config_from_dict(both)) == 30 + 50


@pytest.mark.parametrize(
    "grey",
    [{"noise_std": [0.1, 0.2], "noise_prob": 1.0}, {"blur_sigma": [1.0, 2.0], "blur_prob": 1.0}],
)
def test_noise_or_blur_alone_turns_the_batch_augmentation_on(grey):
    """A config whose only augmentation is noise (or blur): each image gets exactly its own
    draw's grey-value change (the same draws from the same stream), labels untouched."""
    from dataclasses import replace as dc_replace

    from medseg.augment import adjust_intensity, sample_augment_params
    from medseg.config import config_from_dict
    from medseg.train_step import augment_batch

    config = config_from_dict(
        {"patches": {"size": 12, "stride": 12}, "augment": {"elastic_sigma": 0.0, **grey}}
    )
    gen = np.random.default_rng(5)
    inputs = torch.from_numpy(gen.random((3, 1, 12, 12), dtype=np.float32))
    targets = torch.from_numpy(gen.integers(0, 2, (3, 12, 12)))
    window = slice(0, 12)
    image, label, weight = augment_batch(
        inputs, targets, None, config, np.random.default_rng(9), (slice(0, 1), window, window), 0, 0
    )
    assert weight is None and torch.equal(label, targets)
    rng = np.random.default_rng(9)
    in_plane = dc_replace(config.augment, ndim=2)
    for i in range(3):
        p = sample_augment_params(rng, (1, 12, 12), in_plane).intensity
        assert p.noise_std > 0 or p.blur_sigma > 0
        expected = adjust_intensity(inputs[i].numpy()[:, None], p)[:, 0]
        assert not np.allclose(expected, inputs[i].numpy())
        np.testing.assert_allclose(image[i].numpy(), expected, rtol=1e-5, atol=1e-5)
