"""Tests for medseg.object_size and the scale of 2D object prediction: against the loop
references, by hand, and on a real DSB2018 validation image enlarged 3x."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from reference import (
    bilinear_resize_loop,
    equivalent_diameters_loop,
    foreground_confidence_loop,
)

from medseg.object_size import (
    AUTO_SCALES,
    MIN_SCALED_SIDE,
    choose_scale,
    describe_scale,
    foreground_confidence,
    object_diameters,
    rescale_image,
    resize_probs,
    scale_for_diameter,
    usable_scales,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# a DSB2018 validation image (split "val" of data_manifests/dsb2018_stage1_train.csv) with
# nuclei about 48 px across, 7 of them in its top-left 180 x 180 pixels
VAL_CASE = "03b9306f44e9b8951461623dcbd615550cdcf36ea93b203f2c8fa58ed1dffcbe"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_object_diameters_of_instances_match_the_loop_reference(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=(1, 13, 17)) * (rng.random((1, 13, 17)) < 0.6)
    got = np.sort(object_diameters(labels, instances=True))
    np.testing.assert_allclose(got, np.sort(equivalent_diameters_loop(labels)))


def test_object_diameters_of_classes_are_8_connected_components():
    labels = np.zeros((1, 6, 6), np.uint8)
    labels[0, 0, 0] = labels[0, 1, 1] = 1  # diagonal neighbours: one object of 2 px
    labels[0, 4:6, 3:6] = 2  # 6 px, another class, not touching
    got = np.sort(object_diameters(labels, instances=False))
    np.testing.assert_allclose(got, [2 * math.sqrt(2 / math.pi), 2 * math.sqrt(6 / math.pi)])
    assert object_diameters(np.zeros((4, 4), np.int32), instances=True).size == 0
    with pytest.raises(ValueError, match="2D"):
        object_diameters(np.ones((2, 4, 4), np.int32), instances=True)


@pytest.mark.parametrize("shape", [(9, 14), (5, 3), (20, 20)])
def test_resize_probs_matches_the_loop_reference_and_keeps_sums(shape):
    rng = np.random.default_rng(sum(shape))
    raw = rng.random((3, 2, 7, 6)).astype(np.float32)
    probs = raw / raw.sum(0, keepdims=True)
    got = resize_probs(probs, shape)
    assert got.shape == (3, 2, *shape) and got.dtype == np.float32
    for k in range(3):
        for z in range(2):
            expected = bilinear_resize_loop(probs[k, z], shape)
            np.testing.assert_allclose(got[k, z], expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)


def test_rescale_image_enlarges_like_the_reference_and_shrinks_with_antialiasing():
    rng = np.random.default_rng(3)
    image = rng.random((2, 1, 8, 10)).astype(np.float32)
    big = rescale_image(image, (16, 25))
    np.testing.assert_allclose(big[1, 0], bilinear_resize_loop(image[1, 0], (16, 25)), atol=1e-5)
    # shrinking 2x with antialiasing averages 2 x 2 blocks of a checkerboard to its mean
    board = np.indices((1, 1, 16, 16)).sum(0).astype(np.float32) % 2
    small = rescale_image(board, (8, 8))
    assert small.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(small[0, 0, 1:-1, 1:-1], 0.5, atol=1e-5)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_foreground_confidence_matches_the_loop_reference(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    raw = rng.random((3, 2, 5, 6)) ** 3
    probs = (raw / raw.sum(0, keepdims=True)).astype(np.float32)
    got = foreground_confidence(probs, threshold=threshold)
    assert got == pytest.approx(foreground_confidence_loop(probs, threshold), abs=1e-6)
    assert math.isnan(foreground_confidence(np.stack([np.ones((1, 2, 2)), np.zeros((1, 2, 2))])))


def test_choose_scale_keeps_scale_1_on_ties_and_skips_nan():
    assert choose_scale({1.0: 0.8, 0.5: 0.8, 0.25: 0.7}) == 1.0
    assert choose_scale({1.0: 0.6, 0.5: 0.7, 0.25: 0.9, 0.125: 0.9}) == 0.25
    assert choose_scale({1.0: float("nan"), 0.5: 0.4}) == 0.5
    assert choose_scale({1.0: float("nan"), 0.5: float("nan")}) == 1.0


def test_scales_for_a_diameter_and_for_small_images():
    assert scale_for_diameter(39.6, 19.8) == 0.5
    assert scale_for_diameter(9.9, 19.8) == 2.0
    with pytest.raises(ValueError, match=r"between 4.95 and 316.8 pixels.*got 2"):
        scale_for_diameter(2, 19.8)
    with pytest.raises(ValueError, match="positive"):
        scale_for_diameter(float("nan"), 19.8)
    assert usable_scales((1000, 1000), AUTO_SCALES) == AUTO_SCALES
    side = MIN_SCALED_SIDE * 4  # 1/8 would leave 16 px: dropped
    assert usable_scales((side, 3 * side), AUTO_SCALES) == (1.0, 0.5, 0.25)
    assert usable_scales((10, 10), AUTO_SCALES) == (1.0,)
    assert describe_scale(1.0) == ""
    assert "enlarged 2x" in describe_scale(2.0)


def _enlarged_val_crop():
    from PIL import Image

    image = np.array(Image.open(DATA / "dsb2018_stage1_train" / "images" / f"{VAL_CASE}.png"))
    labels = np.array(Image.open(DATA / "dsb2018_stage1_train" / "labels" / f"{VAL_CASE}.png"))
    crop = (slice(0, 180), slice(0, 180))
    big = Image.fromarray(image[crop][..., :3]).resize((540, 540), Image.BILINEAR)
    target = Image.fromarray(labels[crop].astype(np.int32)).resize((540, 540), Image.NEAREST)
    return np.asarray(big), np.asarray(target).astype(np.int64)


@pytest.mark.skipif(not (DATA / "dsb2018_stage1_train").is_dir(), reason="needs ../shared/data")
def test_auto_scale_finds_nuclei_three_times_the_training_size():
    """Real nuclei about 144 px across (a validation image enlarged 3x): as it is, the
    shipped model breaks them into fragments; ``diameter="auto"`` shrinks the image and
    finds them (AP 0.04 -> 0.86 when this test was written)."""
    from medseg.api import segment_cells
    from medseg.metrics import average_precision

    image, target = _enlarged_val_crop()
    as_is = segment_cells(image, "nuclei", channels_last=True, device="cpu", diameter="none")
    auto = segment_cells(image, "nuclei", channels_last=True, device="cpu", diameter="auto")
    assert as_is.scale == 1.0 and auto.scale < 1.0
    assert auto.instances.shape == target[None].shape
    ap_as_is = average_precision(as_is.instances[0].astype(np.int64), target)["ap"]
    ap_auto = average_precision(auto.instances[0].astype(np.int64), target)["ap"]
    assert ap_as_is < 0.2 and ap_auto > 0.6
    # a diameter given by hand: 144 px nuclei to the training 19.8 px
    by_hand = segment_cells(image, "nuclei", channels_last=True, device="cpu", diameter=144)
    assert by_hand.scale == pytest.approx(19.8 / 144)
    assert average_precision(by_hand.instances[0].astype(np.int64), target)["ap"] > 0.6


@pytest.mark.skipif(not (DATA / "dsb2018_stage1_train").is_dir(), reason="needs ../shared/data")
def test_training_object_size_of_real_labels_matches_the_reference():
    from types import SimpleNamespace

    from medseg.config import load_config
    from medseg.data import training_object_size
    from medseg.manifest import load_manifest
    from medseg.train import _checkpoint_meta

    root = Path(__file__).resolve().parents[1]
    manifest = load_manifest(root / "data_manifests" / "dsb2018_stage1_train.csv", data_root=DATA)
    cases = manifest.split("train")[:4]
    got = training_object_size(
        [c.label for c in cases], label_format=manifest.label_format, foreground_value=None
    )
    from PIL import Image

    every = np.concatenate(
        [equivalent_diameters_loop(np.asarray(Image.open(c.label))) for c in cases]
    )
    assert got is not None and got["objects"] == every.size
    assert got["median_diameter"] == pytest.approx(np.median(every), abs=0.005)
    assert got["p95_diameter"] == pytest.approx(np.percentile(every, 95), abs=0.005)
    # a training run of a 2D object model records them in its checkpoint
    subset = SimpleNamespace(
        label_format=manifest.label_format,
        foreground_value=None,
        label_names={},
        split=lambda split: cases,
    )
    config = load_config(root / "configs" / "unet_dsb2018_boundary.yaml")
    meta = _checkpoint_meta(config, {"in_channels": 1, "num_classes": 3}, subset)
    assert meta["extra"]["object_size"] == got


@pytest.mark.skipif(not (DATA / "dsb2018_stage1_train").is_dir(), reason="needs ../shared/data")
def test_predict_diameter_from_the_command_line(tmp_path, capsys):
    from PIL import Image

    from medseg.cli import main

    image, _ = _enlarged_val_crop()
    path = tmp_path / "big.png"
    Image.fromarray(image).save(path)
    out = tmp_path / "out"
    code = main(["predict", str(path), "-m", "nuclei", "-o", str(out), "--diameter", "144"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "predicted at scale 0.138: the image shrunk 7.27x" in " ".join(printed.split())
    instances = np.asarray(Image.open(out / "big_instances.png"))
    assert instances.shape == (540, 540) and 4 <= len(np.unique(instances)) - 1 <= 12
    for bad, message in (
        ("abc", "--diameter must be auto, none or a positive number of pixels, got 'abc'"),
        ("1", "diameter must be between 4.95 and 316.8 pixels for this model"),
    ):
        args = ["predict", str(path), "-m", "nuclei", "-o", str(tmp_path / "x")]
        code = main([*args, "--diameter", bad])
        err = capsys.readouterr().err
        assert code == 1 and message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "x" / "big_instances.png").exists()


def test_a_checkpoint_without_training_sizes_takes_auto_but_no_number():
    from medseg.checkpoint import load_checkpoint
    from medseg.io import read_image
    from medseg.predict import segment_objects, segment_objects_scaled

    golden = Path(__file__).resolve().parent / "data" / "golden"
    ckpt = load_checkpoint(golden / "cells_tiny.pt")
    net = ckpt.build_model("cpu")
    image = read_image(golden / "cells.png", allow_2d=True)
    assert "object_size" not in ckpt.extra and ckpt.inference_settings.diameter is None
    with pytest.raises(ValueError, match="does not record the diameter of its training objects"):
        segment_objects(image, ckpt, net, what="cells", device="cpu", diameter=30)
    plain, plain_objects = segment_objects(image, ckpt, net, what="cells", device="cpu")
    result, objects, scale = segment_objects_scaled(
        image, ckpt, net, what="cells", device="cpu", diameter="none"
    )
    assert scale == 1.0
    np.testing.assert_array_equal(objects, plain_objects)
    np.testing.assert_array_equal(result.labels, plain.labels)
    result, objects, scale = segment_objects_scaled(
        image, ckpt, net, what="cells", device="cpu", diameter="auto"
    )
    assert scale in usable_scales(image.array.shape[2:], AUTO_SCALES)
    assert result.labels.shape == objects.shape == image.array.shape[1:]


def test_diameter_is_refused_for_a_volume_model(tmp_path, capsys):
    from medseg.checkpoint import load_checkpoint
    from medseg.predict import predict_case

    golden = Path(__file__).resolve().parent / "data" / "golden"
    ckpt = load_checkpoint(golden / "brain_tiny.pt")
    with pytest.raises(ValueError, match="--diameter needs a 2D object model"):
        predict_case(tmp_path / "t1.nii.gz", ckpt, tmp_path / "out", diameter=20)
    from medseg.cli import main

    volume, model = golden / "brain_volume.nii.gz", golden / "brain_tiny.pt"
    code = main(
        ["predict", str(volume), "-m", str(model), "-o", str(tmp_path / "o/"), "--diameter", "20"]
    )
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "--diameter needs a 2D object model" in err and "Traceback" not in err
    assert not list(tmp_path.glob("o/*"))


@pytest.mark.skipif(not (DATA / "dsb2018_stage1_train").is_dir(), reason="needs ../shared/data")
def test_predict_and_evaluate_passes_the_diameter(tmp_path):
    """``pipelines/evaluate_run.py --diameter`` goes through
    :func:`medseg.crossval.predict_and_evaluate`: a manifest of the enlarged validation
    crop, scored as it is and at the diameter given."""
    import json

    import pandas as pd
    from PIL import Image

    from medseg.checkpoint import resolve_checkpoint
    from medseg.crossval import predict_and_evaluate

    image, target = _enlarged_val_crop()
    Image.fromarray(image).save(tmp_path / "big.png")
    Image.fromarray(target.astype(np.uint16)).save(tmp_path / "big_label.png")
    manifest = tmp_path / "m.csv"
    pd.DataFrame(
        [{"case": "big", "image": "big.png", "label": "big_label.png", "split": "val"}]
    ).to_csv(manifest, index=False)
    sidecar = {"labels": {"0": "background", "1": "nucleus"}, "label_format": "instances"}
    (tmp_path / "m.labels.json").write_text(json.dumps(sidecar))
    ap = {}
    for diameter in ("none", 144.0):
        result = predict_and_evaluate(
            resolve_checkpoint("nuclei"), manifest, tmp_path / str(diameter), split="val",
            data_root=tmp_path, device="cpu", diameter=diameter,
        )  # fmt: skip
        assert not result.failures
        ap[diameter] = float(pd.read_csv(tmp_path / str(diameter) / "report.csv")["ap"].iloc[0])
    assert ap["none"] < 0.2 and ap[144.0] > 0.6
