"""Stain augmentation (medseg.augment.stain) and its path through training.

The perturbation is checked against a pixel-by-pixel reference with the stain colours
typed in (tests/reference.py) and against hand-computed white pixels; the training path
on real DSB2018 colour images (CC0): a restained volume equals the restained image loaded
from a file, the sampler draws from the new image, and a tiny `medseg train` with
``augment.stain_sigma`` resumes bit-identical after an interruption.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from typer.testing import CliRunner

from medseg.augment import AugmentConfig
from medseg.augment.stain import draw_stain_jitter, is_stained_colour, jitter_stains, white_level
from medseg.checkpoint import load_checkpoint
from medseg.cli import main
from medseg.data import PatchSampler, VolumeOptions, load_training_volume
from medseg.io import read_image
from medseg.patches import PatchSpec
from tests.reference import stain_jitter_loop

REPO = Path(__file__).resolve().parents[1]
COLOUR = ("1d9eacb3", "3c4c6758")  # DSB2018 stage-1 test: 524 x 348 H&E-like tissue
GREY = "0a849e0e"  # 256 x 256 fluorescence, stored as RGB with equal channels


def _dsb(shared_data: Path, prefix: str, kind: str = "images") -> Path:
    return next((shared_data / "dsb2018_stage1_test" / kind).glob(f"{prefix}*.png"))


def _array(path: Path) -> np.ndarray:
    return read_image(path, allow_2d=True).array


# ---------------------------------------------------------------------------
# The perturbation
# ---------------------------------------------------------------------------


def test_jitter_matches_the_pixel_loop_on_a_real_colour_crop(shared_data):
    crop = _array(_dsb(shared_data, COLOUR[0]))[:, :, 100:109, 40:51]
    rng = np.random.default_rng(4)
    for sigma in (0.05, 0.2):
        alpha, beta = draw_stain_jitter(rng, sigma)
        got = jitter_stains(crop, alpha, beta)
        expected = stain_jitter_loop(crop, alpha, beta, white=255.0)
        assert got.dtype == np.float32 and got.shape == crop.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
        assert np.abs(got - crop).max() > 1.0  # it did change the colours


def test_no_perturbation_gives_the_image_back(shared_data):
    image = _array(_dsb(shared_data, COLOUR[1]))
    back = jitter_stains(image, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(back, image, atol=1e-3)


def test_white_pixels_by_hand():
    # a haematoxylin amount of 0.05 (optical density) on white light leaves exp(-0.05 v)
    # of each channel, v = (0.65, 0.70, 0.29): 246.85, 246.23, 251.33
    white = np.full((3, 1, 1, 1), 255.0, np.float32)
    got = jitter_stains(white, np.ones(3), np.array([0.05, 0.0, 0.0]))[:, 0, 0, 0]
    np.testing.assert_allclose(got, [246.85, 246.23, 251.33], atol=0.01)
    # that pixel with its haematoxylin doubled (alpha 2): exp(-0.1 v)
    doubled = jitter_stains(got.reshape(3, 1, 1, 1), np.array([2.0, 1.0, 1.0]), np.zeros(3))
    np.testing.assert_allclose(doubled[:, 0, 0, 0], [238.95, 237.76, 247.71], atol=0.01)
    # a negative offset cannot make light brighter than white
    assert jitter_stains(white, np.ones(3), np.full(3, -0.1)).max() == 255.0


def test_white_level_and_sixteen_bit_scale():
    assert white_level(np.array([0.0, 255.0])) == 255.0
    assert white_level(np.array([256.0])) == 65535.0
    pixel = np.full((3, 1, 1, 1), 65535.0, np.float32)
    got = jitter_stains(pixel, np.ones(3), np.array([0.05, 0.0, 0.0]))[0, 0, 0, 0]
    assert got == pytest.approx(65535 * np.exp(-0.05 * 0.65), rel=1e-5)


def test_which_images_are_stained_colour(shared_data):
    colour = _array(_dsb(shared_data, COLOUR[0]))
    grey_rgb = _array(_dsb(shared_data, GREY))
    assert grey_rgb.shape[0] == 3 and np.array_equal(grey_rgb[0], grey_rgb[2])
    assert is_stained_colour(colour)
    assert not is_stained_colour(grey_rgb)  # equal channels
    assert not is_stained_colour(255 - colour)  # dark background: fluorescence-like
    assert not is_stained_colour(colour[:1])  # one channel


def test_draws_and_their_ranges():
    alpha, beta = draw_stain_jitter(np.random.default_rng(7), 0.2)
    same = np.random.default_rng(7)
    np.testing.assert_array_equal(alpha, same.uniform(0.8, 1.2, 3))
    np.testing.assert_array_equal(beta, same.uniform(-0.2, 0.2, 3))
    many = [draw_stain_jitter(np.random.default_rng(s), 0.05) for s in range(200)]
    a, b = np.array([m[0] for m in many]), np.array([m[1] for m in many])
    assert a.min() >= 0.95 and a.max() <= 1.05 and b.min() >= -0.05 and b.max() <= 0.05
    assert a.max() - a.min() > 0.09  # spread over the range
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="sigma must be in"):
            draw_stain_jitter(np.random.default_rng(0), bad)
    with pytest.raises(ValueError, match="stain_sigma must be in"):
        AugmentConfig(stain_sigma=1.2)
    with pytest.raises(ValueError, match="image must be RGB"):
        jitter_stains(np.zeros((1, 1, 2, 2)), np.ones(3), np.zeros(3))


# ---------------------------------------------------------------------------
# Training volumes and the sampler
# ---------------------------------------------------------------------------


def _options(**kwargs) -> VolumeOptions:
    base = dict(
        num_classes=3,
        normalization="percentile",
        percentiles=(1.0, 99.8),
        normalize_mask="all",
        label_format="instances",
        colour="grey-darkest",
        targets="boundary",
        margin=2,
        context=3,
        keep_stain_source=True,
    )
    return VolumeOptions(**(base | kwargs))


def _spec() -> PatchSpec:
    return PatchSpec.two_and_half_d(16, 16, num_slices=1)


def test_restained_volume_equals_the_restained_image_loaded(shared_data, tmp_path):
    image, label = _dsb(shared_data, COLOUR[0]), _dsb(shared_data, COLOUR[0], "labels")
    vol = load_training_volume(image, label, case="c", spec=_spec(), options=_options())
    assert vol.stain_source is not None
    before = vol.image.clone()
    alpha, beta = np.array([1.3, 0.7, 1.0]), np.array([0.15, -0.1, 0.05])
    vol.restain(alpha, beta)
    # the same stain written as an 8-bit file, then loaded as a plain case
    pixels = np.rint(jitter_stains(_array(image), alpha, beta)[:, 0]).astype(np.uint8)
    Image.fromarray(np.moveaxis(pixels, 0, -1)).save(tmp_path / "stained.png")
    plain = _options(keep_stain_source=False)
    loaded = load_training_volume(
        tmp_path / "stained.png", label, case="s", spec=_spec(), options=plain
    )
    assert loaded.stain_source is None
    assert vol.image.shape == loaded.image.shape
    assert (vol.image - loaded.image).abs().max() < 0.02  # the 8-bit rounding
    assert (vol.image - before).abs().mean() > 0.01  # and the stain did change the input
    # no perturbation: the image as loaded
    vol.restain(np.ones(3), np.zeros(3))
    assert (vol.image - before).abs().max() < 1e-4


def test_grey_image_keeps_no_stain_source(shared_data):
    image, label = _dsb(shared_data, GREY), _dsb(shared_data, GREY, "labels")
    vol = load_training_volume(image, label, case="g", spec=_spec(), options=_options())
    assert vol.stain_source is None
    with pytest.raises(ValueError, match="case 'g' must keep its stain source"):
        vol.restain(np.ones(3), np.zeros(3))


def test_sampler_restains_colour_volumes_and_draws_from_the_new_image(shared_data):
    volumes = [
        load_training_volume(
            _dsb(shared_data, p), _dsb(shared_data, p, "labels"), case=p, spec=_spec(),
            options=_options(margin=0, context=0),
        )
        for p in (GREY, COLOUR[0])
    ]  # fmt: skip
    grey_before, colour_before = volumes[0].image.clone(), volumes[1].image.clone()
    sampler = PatchSampler(volumes[1:2], _spec(), margin=0, generator=torch.Generator())
    both = PatchSampler(volumes, _spec(), margin=0)
    assert both.restain(np.random.default_rng(0), 0.2) == 1
    assert torch.equal(volumes[0].image, grey_before)
    assert not torch.equal(volumes[1].image, colour_before)
    sampler.restain(np.random.default_rng(1), 0.2)
    inputs, _, _ = sampler.sample(6)
    windows = sliding_window_view(volumes[1].image[:, 0].numpy(), (16, 16), axis=(1, 2))
    for patch in inputs:
        assert np.all(windows == patch.numpy()[:, None, None], axis=(0, 3, 4)).any()


# ---------------------------------------------------------------------------
# medseg train
# ---------------------------------------------------------------------------

TINY = [
    "model.kwargs={base_features: 4, depth: 2, padding: valid, dropout: 0.0}",
    "patches.size=16",
    "patches.stride=16",
    "patches.patches_per_epoch=8",
    "schedule.epochs=2",
    "schedule.val_every=2",
    "schedule.batch_size=8",
    "device=cpu",
    "cpu_amp=false",
]


def _manifest(shared_data: Path, folder: Path, cases: dict[str, str]) -> Path:
    source = REPO / "data_manifests" / "dsb2018_stage1_test.csv"
    with open(source, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["case"][:8] in cases]
    manifest = folder / "tiny.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([r | {"split": cases[r["case"][:8]]} for r in rows])
    shutil.copyfile(source.with_suffix(".labels.json"), folder / "tiny.labels.json")
    return manifest


def _train(
    manifest: Path, shared_data: Path, out: Path, *extra: str, resume: bool = False
) -> tuple[int, str]:
    sets = [
        *TINY,
        f"data.manifest={manifest}",
        f"data.data_root={shared_data}",
        f"data.cache_dir={out.parent / 'cache'}",
        f"out_dir={out}",
        *extra,
    ]
    args = ["train", "-c", str(REPO / "configs" / "unet_dsb2018_boundary.yaml"), "--quiet"]
    args += [a for s in sets for a in ("--set", s)] + (["--resume"] if resume else [])
    with CliRunner().isolation() as (_, err, _):
        code = main(args)
        return code, err.getvalue().decode()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


def test_training_with_stains_resumes_bit_identical(shared_data, tmp_path, interrupt_training):
    manifest = _manifest(shared_data, tmp_path, {COLOUR[0]: "train", COLOUR[1]: "val"})
    stain = "augment.stain_sigma=0.2"
    code, err = _train(manifest, shared_data, tmp_path / "full", stain)
    assert code == 0, err
    code, err = _train(manifest, shared_data, tmp_path / "plain")
    assert code == 0, err
    full, plain = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "plain" / "last.pt")
    assert not all(torch.equal(full[k], plain[k]) for k in full)  # the stains changed training

    interrupt_training(2)  # killed while saving epoch 2: epoch 1 is on disk
    code, _ = _train(manifest, shared_data, tmp_path / "cut", stain)
    assert code == 130
    interrupt_training(None)
    code, err = _train(manifest, shared_data, tmp_path / "cut", stain, resume=True)
    cut = _weights(tmp_path / "cut" / "last.pt")
    assert code == 0, err
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_stain_sigma_without_colour_images_is_one_line_error(shared_data, tmp_path):
    manifest = _manifest(shared_data, tmp_path, {GREY: "train", "e17b7aed": "val"})
    code, err = _train(manifest, shared_data, tmp_path / "run", "augment.stain_sigma=0.05")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "augment.stain_sigma" in lines[0] and "brightfield colour" in lines[0]
    assert not (tmp_path / "run").exists()
