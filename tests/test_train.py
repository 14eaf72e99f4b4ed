"""End-to-end training tests on small crops of real IBSR volumes (CPU, seconds).

The fixture writes 12 axial slices x 64 x 64 crops of three IBSR subjects as NIfTI with
a manifest (2 train, 1 val), so a full `medseg train` + `medseg predict` runs in CI time.
"""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def tiny_ibsr(shared_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_ibsr")
    rows = []
    for case, split in (("IBSR_01", "train"), ("IBSR_05", "train"), ("IBSR_04", "val")):
        folder = shared_data / "ibsr18" / case
        for kind in ("t1", "labels"):
            img = nib.load(folder / f"{case}_{kind}.nii.gz")
            data = np.asarray(img.dataobj)[96:160, 32:96, 120:132]  # file axes (x, y, z)
            nib.save(nib.Nifti1Image(data, img.affine, img.header), root / f"{case}_{kind}.nii.gz")
        rows.append([case, f"{case}_t1.nii.gz", f"{case}_labels.nii.gz", split])
    pd.DataFrame(rows, columns=["case", "image", "label", "split"]).to_csv(
        root / "tiny.csv", index=False
    )
    (root / "tiny.labels.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"}})
    )
    return root


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


def test_resume_after_interruption_equals_uninterrupted(tiny_ibsr, tmp_path, monkeypatch):
    import medseg.train as train_module

    full = _config(tiny_ibsr, tmp_path, "full")
    assert main(["train", "-c", str(full), "--quiet"]) == 0

    interrupted = _config(tiny_ibsr, tmp_path, "cut")
    real_save = train_module.save_checkpoint

    def save_then_die(path, **kwargs):
        if Path(path).name == "last.pt" and kwargs["epoch"] == 2:
            raise KeyboardInterrupt  # killed during epoch 2's save: epoch 1 is on disk
        return real_save(path, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    assert main(["train", "-c", str(interrupted), "--quiet"]) == 130  # Ctrl-C exit status
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
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
