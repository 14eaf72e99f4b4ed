"""Tests for medseg.data: 2D microscopy cases through load_training_volume and PatchSampler.

Every case is a tiny hand-made PNG pair in tmp_path: a 24 x 30 image (grey, RGB, RGBA or
16-bit) and a label drawn as ASCII art below (instance ids, with touching objects and
non-contiguous ids up to 65000, or a 0/255 binary mask).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

import medseg.weightmap
from medseg.data import (
    PatchSampler,
    VolumeOptions,
    crop_margin,
    load_training_volume,
    window_starts,
)
from medseg.instances import carve_touching
from medseg.patches import PatchSpec
from medseg.weightmap import unet_weight_map

# Objects: a = 3 and b = 65000 touch along faces; c = 9 touches b; d = 5 and e = 2 touch
# only diagonally (not carved). 24 rows (y) x 30 columns (x): UPPER_ART (rows 0-11) above
# LOWER_ART (rows 12-23).
UPPER_ART = """
..............................
..............................
...aaaa.......................
..aaaaaa......................
..aaaaaabbbb..................
..aaaaaabbbbb.................
...aaaabbbbbb.................
.......bbbbbb.................
........bbbbcc................
.........bbbccc...............
............cccc..............
.............ccc..............
"""

# After carving: the lower id of each face-touching pair gives up its rim pixels
# (a loses (4, 7), (5, 7), (6, 6) to b; c loses (8, 12), (9, 12) to b).
CARVED_UPPER_ART = """
..............................
..............................
...aaaa.......................
..aaaaaa......................
..aaaaa.bbbb..................
..aaaaa.bbbbb.................
...aaa.bbbbbb.................
.......bbbbbb.................
........bbbb.c................
.........bbb.cc...............
............cccc..............
.............ccc..............
"""

# Rows 12-23, where carving changes nothing (d and e touch only diagonally).
LOWER_ART = """
..............................
..............................
.....................dddd.....
.....................dddd.....
.....................dddd.....
.........................eee..
.........................eee..
..............................
..............................
..............................
..............................
..............................
"""
LABEL_ART = UPPER_ART + LOWER_ART
CARVED_ART = CARVED_UPPER_ART + LOWER_ART

IDS = {".": 0, "a": 3, "b": 65000, "c": 9, "d": 5, "e": 2}
SHAPE = (24, 30)
W0, SIGMA = 10.0, 5.0


def _art(text: str) -> np.ndarray:
    """ASCII art -> int32 (Y, X) instance ids."""
    return np.array([[IDS[ch] for ch in row] for row in text.split()], dtype=np.int32)


def _write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def _rgb(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _pair(tmp_path: Path, image: np.ndarray | None = None) -> tuple[Path, Path]:
    """RGB image and the uint16 instance label of LABEL_ART."""
    img = _write_png(tmp_path / "img.png", _rgb() if image is None else image)
    lab = _write_png(tmp_path / "lab.png", _art(LABEL_ART).astype(np.uint16))
    return img, lab


def _spec(size: int = 8) -> PatchSpec:
    return PatchSpec.two_and_half_d(size, size, num_slices=1)


def _options(**kwargs) -> VolumeOptions:
    base = dict(
        num_classes=2,
        normalize_mask="all",
        label_format="instances",
        separate_touching=True,
        weight_map=(W0, SIGMA),
    )
    return VolumeOptions(**(base | kwargs))


def _zscore(pixels: np.ndarray) -> np.ndarray:
    """(Y, X, C) or (Y, X) pixels -> float32 (C, 1, Y, X), per-channel z-score, all pixels."""
    x = pixels.astype(np.float64)
    x = x[..., None] if x.ndim == 2 else x
    x = np.moveaxis(x, -1, 0)[:, None]
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = x.std(axis=(1, 2, 3), keepdims=True)
    return ((x - mean) / std).astype(np.float32)


# ---------------------------------------------------------------------------
# Carving, weight map, padding
# ---------------------------------------------------------------------------


def test_carved_classes_and_instances_equal_hand_typed_art(tmp_path):
    img, lab = _pair(tmp_path)
    vol = load_training_volume(img, lab, case="c1", spec=_spec(), options=_options())
    expected = _art(CARVED_ART)
    image, label = vol.unpadded()
    np.testing.assert_array_equal(label.numpy(), (expected > 0)[None].astype(np.uint8))
    assert label.dtype == torch.uint8 and image.shape == (3, 1, *SHAPE)
    assert vol.instances is not None and vol.instances.dtype == np.int32
    np.testing.assert_array_equal(vol.instances, expected[None])  # file ids kept (65000)
    assert vol.channels == 3 and vol.shape == (1, *SHAPE) and vol.case == "c1"


def test_without_carving_the_classes_are_the_raw_foreground(tmp_path):
    img, lab = _pair(tmp_path)
    options = _options(separate_touching=False, weight_map=None)
    vol = load_training_volume(img, lab, case="c1", spec=_spec(), options=options)
    np.testing.assert_array_equal(vol.unpadded()[1].numpy()[0], _art(LABEL_ART) > 0)
    np.testing.assert_array_equal(vol.instances[0], _art(LABEL_ART))
    assert vol.weight is None


def test_weight_map_is_unet_weight_map_of_the_carved_target(tmp_path):
    img, lab = _pair(tmp_path)
    vol = load_training_volume(img, lab, case="c1", spec=_spec(), options=_options())
    expected = unet_weight_map(carve_touching(_art(LABEL_ART)[None]), w0=W0, sigma=SIGMA)
    assert vol.pad == 0 and vol.weight is not None and vol.weight.dtype == torch.float32
    np.testing.assert_array_equal(vol.weight.numpy(), expected)
    # the border term is there: gap pixels between a and b weigh more than w_c
    assert vol.weight[0, 4, 7] > vol.weight[0, 0, 0] + 1.0


def test_padding_is_margin_plus_context_mirrored(tmp_path):
    pixels = _rgb(1)
    img, lab = _pair(tmp_path, pixels)
    options = _options(margin=2, context=3)
    vol = load_training_volume(img, lab, case="c1", spec=_spec(), options=options)
    p = 5
    assert vol.pad == p
    assert vol.image.shape == (3, 1, SHAPE[0] + 2 * p, SHAPE[1] + 2 * p)
    assert vol.label.shape == vol.weight.shape == (1, SHAPE[0] + 2 * p, SHAPE[1] + 2 * p)
    normed = _zscore(pixels)
    np.testing.assert_allclose(vol.unpadded()[0].numpy(), normed, rtol=1e-5, atol=1e-5)
    classes = (_art(CARVED_ART) > 0).astype(np.uint8)[None]
    weight = unet_weight_map(carve_touching(_art(LABEL_ART)[None]), w0=W0, sigma=SIGMA)
    pads = ((0, 0), (p, p), (p, p))
    np.testing.assert_allclose(
        vol.image.numpy(), np.pad(normed, ((0, 0), *pads), mode="reflect"), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(vol.label.numpy(), np.pad(classes, pads, mode="reflect"))
    np.testing.assert_array_equal(vol.weight.numpy(), np.pad(weight, pads, mode="reflect"))
    # mirror without repeating the edge: padded row p - k is source row k (k = 1..p)
    for k in range(1, p + 1):
        np.testing.assert_array_equal(vol.label[0, p - k, p:-p].numpy(), classes[0, k])
        np.testing.assert_array_equal(vol.label[0, p:-p, p - k].numpy(), classes[0, :, k])
    # starts stay in unpadded coordinates: every window of 8 holding foreground
    np.testing.assert_array_equal(vol.starts.numpy(), window_starts(classes, (8, 8)))


# ---------------------------------------------------------------------------
# Weight-map cache
# ---------------------------------------------------------------------------


def _refuse(*args, **kwargs):
    raise RuntimeError("unet_weight_map must not run: the cache holds this map")


def test_weight_map_cache_is_written_then_read(tmp_path, monkeypatch):
    img, lab = _pair(tmp_path)
    cache = tmp_path / "cache"
    options = _options(cache_dir=str(cache))
    first = load_training_volume(img, lab, case="c1", spec=_spec(), options=options)
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 1 and files[0].name.startswith("weightmap_lab_")
    np.testing.assert_array_equal(np.load(files[0]), first.weight.numpy())

    monkeypatch.setattr(medseg.weightmap, "unet_weight_map", _refuse)
    again = load_training_volume(img, lab, case="c1", spec=_spec(), options=options)
    np.testing.assert_array_equal(again.weight.numpy(), first.weight.numpy())
    # margin and context only pad the map: the same cache entry serves them
    padded = load_training_volume(
        img, lab, case="c1", spec=_spec(), options=_options(cache_dir=str(cache), margin=3)
    )
    np.testing.assert_array_equal(padded.weight[:, 3:-3, 3:-3].numpy(), first.weight.numpy())
    assert len(list(cache.glob("*.npy"))) == 1
    # another w0, or no carving, is another map: computed, not read
    for other in ({"weight_map": (5.0, 5.0)}, {"separate_touching": False}):
        options = _options(cache_dir=str(cache), **other)
        with pytest.raises(RuntimeError, match="must not run"):
            load_training_volume(img, lab, case="c1", spec=_spec(), options=options)


def test_weight_map_cache_follows_a_changed_label_file(tmp_path):
    img, lab = _pair(tmp_path)
    options = _options(cache_dir=str(tmp_path / "cache"))
    load_training_volume(img, lab, case="c1", spec=_spec(), options=options)
    changed = _art(LABEL_ART)
    changed[20:23, 2:6] = 7  # a new object: the cached map is stale
    _write_png(lab, changed.astype(np.uint16))
    vol = load_training_volume(img, lab, case="c1", spec=_spec(), options=options)
    expected = unet_weight_map(carve_touching(changed[None]), w0=W0, sigma=SIGMA)
    np.testing.assert_array_equal(vol.weight.numpy(), expected)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_without_cache_dir_nothing_is_written(tmp_path):
    img, lab = _pair(tmp_path)
    before = sorted(tmp_path.iterdir())
    load_training_volume(img, lab, case="c1", spec=_spec(), options=_options())
    assert sorted(tmp_path.iterdir()) == before


# ---------------------------------------------------------------------------
# PatchSampler
# ---------------------------------------------------------------------------


def test_sampler_weights_are_taken_where_the_labels_are(tmp_path):
    img, lab = _pair(tmp_path, _rgb(2))
    margin = 4
    vol = load_training_volume(
        img, lab, case="c1", spec=_spec(), options=_options(margin=1, context=3)
    )
    gen = torch.Generator().manual_seed(0)
    sampler = PatchSampler([vol], _spec(), margin=margin, generator=gen)
    inputs, labels, weights = sampler.sample(12)
    size = 8 + 2 * margin
    assert inputs.shape == (12, 3, size, size) and inputs.dtype == torch.float32
    assert labels.shape == weights.shape == (12, size, size) and labels.dtype == torch.int64
    # locate each patch by its (random, so unique) image window, then compare label and
    # weight windows at that place
    windows = sliding_window_view(vol.image[:, 0].numpy(), (size, size), axis=(1, 2))
    starts = {tuple(s) for s in vol.starts.tolist()}
    for i in range(12):
        match = np.all(windows == inputs[i].numpy()[:, None, None], axis=(0, 3, 4))
        ((y, x),) = np.argwhere(match)
        np.testing.assert_array_equal(labels[i], vol.label[0, y : y + size, x : x + size])
        np.testing.assert_array_equal(weights[i], vol.weight[0, y : y + size, x : x + size])
        assert (0, y, x) in starts  # the output window holds foreground
    # crop_margin leaves the output window
    assert crop_margin(labels, margin).shape == (12, 8, 8)
    assert crop_margin(labels, 0) is labels


def test_sampler_without_weight_maps_returns_none(tmp_path):
    img, lab = _pair(tmp_path)
    options = _options(separate_touching=False, weight_map=None)
    vol = load_training_volume(img, lab, case="c1", spec=_spec(), options=options)
    _, _, weights = PatchSampler([vol], _spec(), margin=0).sample(3)
    assert weights is None


def test_sampler_errors(tmp_path):
    img, lab = _pair(tmp_path)
    with pytest.raises(ValueError, match="volumes must hold at least one training volume"):
        PatchSampler([], _spec(), margin=0)
    _write_png(tmp_path / "empty.png", np.zeros(SHAPE, np.uint16))
    empty = load_training_volume(
        img, tmp_path / "empty.png", case="e", spec=_spec(), options=_options(weight_map=None)
    )
    with pytest.raises(ValueError, match="volumes must contain foreground to sample from"):
        PatchSampler([empty], _spec(), margin=0)


def _source_of(patch: torch.Tensor, volumes) -> int:
    """Index of the one volume whose image holds ``patch`` as a window."""
    size = patch.shape[-1]
    found = []
    for index, vol in enumerate(volumes):
        windows = sliding_window_view(vol.image[:, 0].numpy(), (size, size), axis=(1, 2))
        if np.all(windows == patch.numpy()[:, None, None], axis=(0, 3, 4)).any():
            found.append(index)
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("sample_by", ["window", "case"])
def test_sampler_draws_cases_by_windows_or_uniformly(tmp_path, sample_by):
    # case 0: LABEL_ART (many foreground windows); case 1: one pixel of foreground in a
    # corner (one window); case 2: no foreground (never drawn)
    volumes = []
    for index, label in enumerate(
        (_art(LABEL_ART), np.zeros(SHAPE, np.int32), np.zeros(SHAPE, np.int32))
    ):
        if index == 1:
            label[0, 0] = 7
        folder = tmp_path / str(index)
        folder.mkdir()
        img = _write_png(folder / "img.png", _rgb(10 + index))
        lab = _write_png(folder / "lab.png", label.astype(np.uint16))
        options = _options(weight_map=None)
        volumes.append(
            load_training_volume(img, lab, case=f"c{index}", spec=_spec(), options=options)
        )
    windows = [len(v.starts) for v in volumes]
    assert windows[1] == 1 and windows[2] == 0 and windows[0] > 50
    gen = torch.Generator().manual_seed(1)
    sampler = PatchSampler(volumes, _spec(), margin=0, sample_by=sample_by, generator=gen)
    n = 400
    inputs, _, _ = sampler.sample(n)
    drawn = np.bincount([_source_of(x, volumes) for x in inputs], minlength=3)
    p0 = 0.5 if sample_by == "case" else windows[0] / (windows[0] + windows[1])
    # binomial count of case 0 within 4.5 standard deviations (one in 10^5 fails by chance)
    assert abs(drawn[0] - n * p0) <= 4.5 * np.sqrt(n * p0 * (1 - p0)) + 1
    assert drawn[2] == 0
    if sample_by == "case":
        assert drawn[1] > 100  # the one-window case is drawn like the other
    else:
        assert drawn[1] < 40


def test_sampler_refuses_an_unknown_sample_by(tmp_path):
    img, lab = _pair(tmp_path)
    vol = load_training_volume(img, lab, case="c1", spec=_spec(), options=_options())
    with pytest.raises(ValueError, match="sample_by must be 'window' or 'case', got 'image'"):
        PatchSampler([vol], _spec(), margin=0, sample_by="image")


def test_window_starts_brute_force():
    rng = np.random.default_rng(3)
    mask = (rng.random((2, 7, 9)) > 0.93).astype(np.uint8) * rng.integers(1, 4, (2, 7, 9))
    for window in ((1, 1), (3, 2), (7, 9)):
        for classes in (None, [2], [1, 3]):
            hit = mask != 0 if classes is None else np.isin(mask, classes)
            expected = [
                [z, y, x]
                for z in range(2)
                for y in range(7 - window[0] + 1)
                for x in range(9 - window[1] + 1)
                if hit[z, y : y + window[0], x : x + window[1]].any()
            ]
            got = window_starts(mask, window, classes=classes)
            assert got.dtype == np.int64 and got.tolist() == expected


# ---------------------------------------------------------------------------
# Image and label formats
# ---------------------------------------------------------------------------


def test_binary_label_gives_classes_0_1_and_component_instances(tmp_path):
    img = _write_png(tmp_path / "img.png", _rgb()[..., 0])  # grey
    mask = np.where(_art(LABEL_ART) > 0, 255, 0).astype(np.uint8)
    lab = _write_png(tmp_path / "mask.png", mask)
    options = _options(label_format="binary", foreground_value=255)
    vol = load_training_volume(img, lab, case="em", spec=_spec(), options=options)
    np.testing.assert_array_equal(vol.label.numpy()[0], mask // 255)
    assert set(np.unique(vol.label.numpy())) == {0, 1}
    # objects are 4-connected components: a, b, c merge; d and e stay apart
    assert vol.instances is not None and len(np.unique(vol.instances)) - 1 == 3
    assert vol.channels == 1
    mask[0, 0] = 128
    _write_png(lab, mask)
    with pytest.raises(ValueError, match="must hold only 0 and the foreground value 255"):
        load_training_volume(img, lab, case="em", spec=_spec(), options=options)


def test_sixteen_bit_grey_image_keeps_its_values(tmp_path):
    pixels = np.random.default_rng(4).integers(0, 60000, SHAPE).astype(np.uint16)
    img = _write_png(tmp_path / "img16.png", pixels)
    with Image.open(img) as pil:
        assert pil.mode.startswith("I;16")
    lab = _write_png(tmp_path / "lab.png", _art(LABEL_ART).astype(np.uint16))
    vol = load_training_volume(img, lab, case="g", spec=_spec(), options=_options())
    assert vol.channels == 1
    np.testing.assert_allclose(vol.unpadded()[0].numpy(), _zscore(pixels), rtol=1e-5, atol=1e-5)


def test_opaque_rgba_is_rgb_and_transparent_rgba_is_refused(tmp_path):
    pixels = np.concatenate([_rgb(5), np.full((*SHAPE, 1), 255, np.uint8)], axis=-1)
    img, lab = _pair(tmp_path, pixels)
    vol = load_training_volume(img, lab, case="c", spec=_spec(), options=_options())
    np.testing.assert_allclose(
        vol.unpadded()[0].numpy(), _zscore(pixels[..., :3]), rtol=1e-5, atol=1e-5
    )
    pixels[3, 4, 3] = 0
    _write_png(img, pixels)
    with pytest.raises(ValueError, match=r"img\.png' must be opaque .* 1 transparent"):
        load_training_volume(img, lab, case="c", spec=_spec(), options=_options())


def test_nonzero_mask_keeps_zero_pixels_at_zero(tmp_path):
    pixels = np.maximum(_rgb(6)[..., 0], 1)
    pixels[:5] = 0  # the only zeros: outside the mask
    img = _write_png(tmp_path / "img.png", pixels)
    lab = _write_png(tmp_path / "lab.png", _art(LABEL_ART).astype(np.uint16))
    vol = load_training_volume(
        img, lab, case="c", spec=_spec(), options=_options(normalize_mask="nonzero")
    )
    image = vol.unpadded()[0].numpy()[0, 0]
    assert np.all(image[:5] == 0)
    inside = pixels[5:].astype(np.float64)
    np.testing.assert_allclose(
        image[5:], (inside - inside.mean()) / inside.std(), rtol=1e-5, atol=1e-5
    )


def test_boundary_targets_and_grey_input(tmp_path):
    """targets="boundary": the three-class target of the uncarved instances; colour
    "grey": one channel, the channel mean, normalised over all pixels."""
    from medseg.boundary import boundary_classes

    pixels = _rgb(3)
    img, lab = _pair(tmp_path, pixels)
    options = _options(
        num_classes=3, separate_touching=False, weight_map=None, targets="boundary",
        colour="grey", boundary_width=1,
    )  # fmt: skip
    vol = load_training_volume(img, lab, case="c1", spec=_spec(), options=options)
    image, label = vol.unpadded()
    expected = boundary_classes(_art(LABEL_ART)[None])
    np.testing.assert_array_equal(label.numpy(), expected)
    assert set(np.unique(expected)) == {0, 1, 2}
    grey = pixels.astype(np.float64).mean(axis=-1)
    if (((grey - grey.mean()) / grey.std()) ** 3).mean() < 0.5:  # light background: inverted
        grey = grey.max() + grey.min() - grey
    np.testing.assert_allclose(image.numpy(), _zscore(grey), atol=1e-5)
    assert vol.channels == 1


def test_boundary_targets_weight_map_is_the_border_term_of_the_carved_map(tmp_path):
    """With three classes the weight map is w = 1 + the border term of the carved
    instances: high on the contact between touching objects, 1 inside them."""
    img, lab = _pair(tmp_path)
    options = _options(num_classes=3, separate_touching=False, targets="boundary")
    vol = load_training_volume(img, lab, case="c1", spec=_spec(), options=options)
    carved = carve_touching(_art(LABEL_ART)[None])
    expected = unet_weight_map(carved, w0=W0, sigma=SIGMA, class_weights=(1.0, 1.0))
    assert vol.weight is not None
    np.testing.assert_array_equal(vol.weight.numpy(), expected)
    contact = (carved == 0) & (_art(LABEL_ART)[None] > 0)  # carved pixels: the contacts
    assert contact.any() and (vol.weight.numpy()[contact] > 1.0 + 0.5 * W0).all()
    assert (vol.weight.numpy()[carved > 0] == 1.0).all()
    assert (vol.unpadded()[1].numpy()[contact] == 2).all()  # contacts are boundary class


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"normalize_mask": "brain"}, r"normalize_mask must be one of \['nonzero', 'all'\]"),
        ({"margin": -1}, "margin and context must be >= 0, got -1 and 0"),
        ({"context": -2}, "margin and context must be >= 0, got 0 and -2"),
        (
            {"label_format": "classes", "weight_map": (10.0, 5.0)},
            "label_format must be 'instances' or 'binary' for separate_touching or weight maps",
        ),
        (
            {"label_format": "classes", "separate_touching": True},
            "label_format must be 'instances' or 'binary'.*got 'classes'",
        ),
        (
            {"label_format": "classes", "targets": "boundary"},
            "label_format must be 'instances' or 'binary' for boundary targets",
        ),
    ],
)
def test_volume_options_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VolumeOptions(num_classes=2, **kwargs)


def test_label_of_another_size_names_both_files(tmp_path):
    img = _write_png(tmp_path / "image_a.png", _rgb())
    lab = _write_png(tmp_path / "label_b.png", np.zeros((24, 31), np.uint16))
    with pytest.raises(ValueError, match=r"label_b\.png' must be on the same voxel grid as") as e:
        load_training_volume(img, lab, case="c", spec=_spec(), options=_options())
    assert "image_a.png" in str(e.value) and "(1, 24, 31) vs (1, 24, 30)" in str(e.value)


def test_load_errors(tmp_path):
    img, lab = _pair(tmp_path)
    with pytest.raises(ValueError, match=re.escape("patch size (25, 25) must fit the slices")):
        load_training_volume(img, lab, case="c", spec=_spec(25), options=_options())
    with pytest.raises(ValueError, match=r"img\.png' must be 3D for 3-slice 2\.5D.*num_slices=1"):
        spec = PatchSpec.two_and_half_d(8, 8, num_slices=3)
        load_training_volume(img, lab, case="c", spec=spec, options=_options())
    classes = _write_png(tmp_path / "classes.png", np.full(SHAPE, 2, np.uint8))
    options = VolumeOptions(num_classes=2, normalize_mask="all")
    with pytest.raises(ValueError, match=r"label values must be < num_classes=2, got 2"):
        load_training_volume(img, classes, case="c", spec=_spec(), options=options)


def test_int32_tiff_label_keeps_ids_above_uint16(tmp_path):
    import tifffile

    ids = _art(LABEL_ART)
    ids[ids == 65000] = 70000  # more than a uint16 PNG can hold
    img = _write_png(tmp_path / "img.png", _rgb())
    tifffile.imwrite(tmp_path / "lab.tif", ids)
    vol = load_training_volume(
        img, tmp_path / "lab.tif", case="t", spec=_spec(), options=_options()
    )
    expected = _art(CARVED_ART)
    expected[expected == 65000] = 70000
    np.testing.assert_array_equal(vol.instances[0], expected)
    np.testing.assert_array_equal(vol.label.numpy()[0], expected > 0)


def test_sampler_refuses_a_mix_of_weighted_and_unweighted_volumes_up_front(tmp_path):
    img, lab = _pair(tmp_path)
    with_map = load_training_volume(img, lab, case="a", spec=_spec(), options=_options())
    without = load_training_volume(
        img, lab, case="b", spec=_spec(), options=_options(weight_map=None)
    )
    with pytest.raises(ValueError, match="volumes must all have weight maps or none"):
        PatchSampler([with_map, without], _spec(), margin=0)
