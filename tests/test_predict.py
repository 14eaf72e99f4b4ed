"""Tests for medseg.predict and medseg.checkpoint: geometry, fast mode, bad input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.cli import main
from medseg.models import create_model
from medseg.patches import PatchSpec
from medseg.predict import output_paths, predict_array

AFFINE = np.array([[-0.9, 0, 0, 90], [0, 1.1, 0, -100], [0, 0, 1.5, -60], [0, 0, 0, 1.0]])
META = {
    "label_names": {0: "background", 1: "CSF", 2: "GM", 3: "WM"},
    "normalization": {"method": "zscore", "percentiles": [1.0, 99.0]},
    "patch": dict(size=16, stride=8, num_slices=3, slice_axis="axial", pad_mode="reflect"),
    "inference": {"mode": "vote", "batch_size": 64},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)  # a fixed random model; tests check geometry and plumbing only
    kwargs = {"in_channels": 3, "num_classes": 4, "base_features": 4}
    model = create_model("usegnet", **kwargs)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return save_checkpoint(path, model_name="usegnet", model_kwargs=kwargs, model=model, **META)


@pytest.fixture()
def volume(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (24, 20, 10)).astype(np.float32)  # file axes (x, y, z)
    data[:2] = 0
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


class _Pointwise(torch.nn.Module):
    """A 1x1 conv: every patch and every whole slice agree on every voxel."""

    divisor = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_fast_mode_equals_patches_for_a_pointwise_model():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(1, 5, 21, 27)).astype(np.float32)
    spec = PatchSpec.two_and_half_d(16, 8)
    patches = predict_array(_Pointwise(), image, spec, device="cpu")
    fast = predict_array(_Pointwise(), image, spec, device="cpu", fast=True, return_probs=True)
    np.testing.assert_array_equal(fast.labels, patches.labels)
    assert fast.labels.shape == (5, 21, 27) and fast.probs.shape == (4, 5, 21, 27)
    np.testing.assert_allclose(fast.confidence, fast.probs.max(0), rtol=1e-6)


def test_predict_writes_in_input_geometry(checkpoint, volume, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(volume),
                "-m",
                str(checkpoint),
                "-o",
                str(out),
                "--confidence",
                "--probs",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    src = nib.load(volume)
    seg = nib.load(out / "t1_seg.nii.gz")
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
    assert seg.header.get_zooms() == src.header.get_zooms()
    probs = nib.load(out / "t1_probs.nii.gz")
    assert probs.shape == (*src.shape, 4)
    np.testing.assert_allclose(np.asarray(probs.dataobj).sum(-1), 1.0, atol=1e-4)
    assert "CSF" in capsys.readouterr().out


def test_predict_fast_and_modes_from_cli(checkpoint, volume, tmp_path):
    for args in (["--fast"], ["--mode", "gaussian"], ["--mode", "mean"]):
        out = tmp_path / f"out{len(args)}{args[-1]}"
        assert main(["predict", str(volume), "-m", str(checkpoint), "-o", str(out), *args]) == 0
        assert (out / "t1_seg.nii.gz").exists()


def test_output_file_name_and_overwrite(checkpoint, volume, tmp_path, capsys):
    target = tmp_path / "seg.nii.gz"
    assert main(["predict", str(volume), "-m", str(checkpoint), "-o", str(target)]) == 0
    before = target.read_bytes()
    assert main(["predict", str(volume), "-m", str(checkpoint), "-o", str(target)]) == 1
    assert "--overwrite" in capsys.readouterr().err and target.read_bytes() == before
    assert (
        main(["predict", str(volume), "-m", str(checkpoint), "-o", str(target), "--overwrite"]) == 0
    )


def test_output_paths():
    paths = output_paths("in/t1.nii.gz", "out/seg.nii.gz", confidence=True, probs=True)
    assert [str(paths[k]) for k in ("labels", "confidence", "probs")] == [
        "out/seg.nii.gz",
        "out/seg_confidence.nii.gz",
        "out/seg_probs.nii.gz",
    ]
    assert str(output_paths("a/b.png", "o/", confidence=True, probs=False)["confidence"]) == (
        "o/b_confidence.nii.gz"
    )


def test_wrong_channels(checkpoint, tmp_path, capsys):
    two = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((24, 20, 10, 2), np.float32), AFFINE), two)
    assert main(["predict", str(two), "-m", str(checkpoint), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "two.nii.gz" in err and "must have 1 channel" in err and "got 2" in err


def test_2d_image_for_a_brain_model(checkpoint, tmp_path, capsys):
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((24, 20, 1), np.float32), AFFINE), flat)
    assert main(["predict", str(flat), "-m", str(checkpoint), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "flat.nii.gz" in err and "3D" in err
    assert not list(tmp_path.glob("flat_seg*"))


def test_corrupt_and_foreign_checkpoints(checkpoint, volume, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:1000])
    assert main(["predict", str(volume), "-m", str(corrupt), "-o", str(tmp_path)]) == 1
    assert "corrupt.pt" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert main(["predict", str(volume), "-m", str(foreign), "-o", str(tmp_path)]) == 1
    assert "must be a medseg checkpoint" in capsys.readouterr().err
    # a checkpoint claiming another model than its weights
    data = torch.load(checkpoint, weights_only=True)
    data["model_name"] = "segnet"
    other = tmp_path / "other.pt"
    torch.save(data, other)
    assert main(["predict", str(volume), "-m", str(other), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err  # found before the network is allocated
    assert "other.pt' must hold the" in err and "its model 'segnet'" in err
    assert not list(tmp_path.glob("t1_seg*"))


def test_batch_keeps_going_past_a_bad_input(checkpoint, volume, tmp_path, capsys):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    out = tmp_path / "out"
    assert main(["predict", str(volume), str(bad), "-m", str(checkpoint), "-o", str(out)]) == 1
    assert (out / "t1_seg.nii.gz").exists()
    err = capsys.readouterr().err
    assert "1 of 2 input(s) failed" in err and "bad.nii.gz" in err


def test_missing_input_and_unknown_model(checkpoint, volume, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope.nii.gz"), "-m", str(checkpoint)]) == 1
    assert "nope.nii.gz" in capsys.readouterr().err
    assert main(["predict", str(volume), "-m", "no-such-model", "-o", str(tmp_path)]) == 1
    assert "no-such-model" in capsys.readouterr().err


def test_checkpoint_round_trip_half(tmp_path):
    torch.manual_seed(0)
    kwargs = {"in_channels": 3, "num_classes": 4, "base_features": 4}
    model = create_model("segnet", **kwargs).eval()
    path = save_checkpoint(
        tmp_path / "h.pt", model_name="segnet", model_kwargs=kwargs, model=model, half=True, **META
    )
    ckpt = load_checkpoint(path)
    assert all(v.dtype == torch.float16 for v in ckpt.state_dict.values() if v.is_floating_point())
    rebuilt = ckpt.build_model()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("name", ["brain-tissue", "brain-tissue-unetpp"])
def test_builtin_brain_models_segment_a_real_validation_slab(name, shared_data):
    """Each shipped brain model, on 12 axial slices of IBSR_04 (a validation subject, never
    trained on), whole slices: measured Dice CSF/GM/WM 0.71/0.91/0.86 (U-SegNet) and
    0.75/0.91/0.85 (UNet++); a broken or swapped weight file scores far lower."""
    import medseg
    from medseg.checkpoint import BUILTIN_MODELS, WEIGHTS_DIR
    from medseg.metrics import confusion_matrix, overlap_metrics

    assert name in BUILTIN_MODELS and (WEIGHTS_DIR / f"{name}.md").is_file()  # model card
    folder = shared_data / "ibsr18" / "IBSR_04"
    slab = (slice(None), slice(None), slice(120, 132))  # file axes RAS: z is the third
    image = nib.load(folder / "IBSR_04_t1.nii.gz").slicer[slab]
    ref = np.asarray(nib.load(folder / "IBSR_04_labels.nii.gz").slicer[slab].dataobj)
    seg = medseg.predict_volume(image, name, device="cpu", fast=True)
    pred = np.asarray(seg.label_image.dataobj)
    assert pred.shape == ref.shape[:3]
    cm = confusion_matrix(
        pred.astype(np.uint8), ref.reshape(pred.shape).astype(np.uint8), num_classes=4
    )
    csf, gm, wm = overlap_metrics(cm).dice[1:]
    assert csf > 0.6 and gm > 0.85 and wm > 0.8, (csf, gm, wm)


def test_the_old_core_names_warn_and_still_work():
    """Issue #20 step 5: one predict_volume (the Python API) and one loader per purpose;
    the array core is predict_array, and the old names still work for a release."""
    import medseg.predict as predict

    with pytest.warns(DeprecationWarning, match="predict_array"):
        old = predict.predict_volume
    assert old is predict.predict_array
    with pytest.warns(DeprecationWarning, match="load_predictor"):
        ckpt, net = predict.load_model("nuclei", device="cpu")
    assert ckpt.is_tile_model and not net.training
    with pytest.raises(AttributeError, match="no attribute 'predict_volumes'"):
        _ = predict.predict_volumes
