"""Tests for medseg.normalize: hand cases, real IBSR volumes, errors."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.normalize import grey_dark_background, model_input_channels, normalize_intensity


def test_zscore_hand_case():
    img = np.array([0, 0, 2, 4, 6], np.float32).reshape(1, 1, 1, 5)
    out, stats = normalize_intensity(img)
    s = np.sqrt(8 / 3)  # population std of (2, 4, 6)
    np.testing.assert_allclose(out.ravel(), [0, 0, -2 / s, 0, 2 / s], rtol=1e-6)
    assert (stats.method, stats.offset, stats.num_masked) == ("zscore", 4.0, 3)
    assert stats.scale == pytest.approx(s)


def test_percentile_hand_case():
    img = np.arange(1, 102, dtype=np.float32).reshape(1, 1, 1, 101)  # 1..101, no zeros
    out, stats = normalize_intensity(img, method="percentile", percentiles=(0, 100))
    np.testing.assert_allclose(out.ravel(), (np.arange(1, 102) - 1) / 100, rtol=1e-6)
    assert stats.offset == 1.0 and stats.scale == 100.0


def test_explicit_mask_and_outside_is_zero():
    img = np.full((1, 2, 2, 2), 5.0, np.float32)
    img[0, 0] = [[1, 3], [5, 7]]
    mask = np.zeros((2, 2, 2), bool)
    mask[0] = True
    out, _ = normalize_intensity(img, mask=mask)
    assert (out[0, 1] == 0).all()
    assert out[0, 0].mean() == pytest.approx(0, abs=1e-6)


def test_real_ibsr_volumes_normalised_alike(ibsr_case):
    image = ibsr_case["image"]
    scaled = image * 7.5  # a subject with another intensity scale
    out_a, _ = normalize_intensity(image)
    out_b, _ = normalize_intensity(scaled)
    np.testing.assert_allclose(out_a, out_b, atol=1e-5)
    inside = out_a[0][image[0] != 0]
    assert inside.mean() == pytest.approx(0, abs=1e-4) and inside.std() == pytest.approx(
        1, abs=1e-4
    )


@pytest.mark.parametrize(
    "kwargs,image,match",
    [
        ({"method": "minmax"}, np.ones((1, 1, 2, 2)), "method must be one of"),
        ({}, np.ones((2, 2, 2)), r"image must be 4D \(C, Z, Y, X\)"),
        ({"method": "percentile", "percentiles": (99, 1)}, np.ones((1, 1, 2, 2)), "low < high"),
        ({"mask": np.ones((3, 3, 3), bool)}, np.ones((1, 1, 2, 2)), "spatial shape"),
        ({}, np.zeros((1, 1, 2, 2)), "empty mask"),
        ({}, np.full((1, 1, 2, 2), 3.0), "must vary inside the mask"),
    ],
)
def test_errors(kwargs, image, match):
    with pytest.raises(ValueError, match=match):
        normalize_intensity(image.astype(np.float32), **kwargs)


def test_grey_dark_background_hand_cases():
    # Dark background, two bright pixels: kept (mean of the channels).
    dark = np.zeros((3, 1, 4, 4), np.float32)
    dark[:, 0, 1, 1] = [90.0, 120.0, 150.0]
    dark[:, 0, 2, 3] = 60.0
    grey, inverted = grey_dark_background(dark)
    assert not inverted and grey.shape == (1, 1, 4, 4) and grey.dtype == np.float32
    assert grey[0, 0, 1, 1] == 120.0 and grey[0, 0, 2, 3] == 60.0 and grey[0, 0, 0, 0] == 0.0
    # Light background with dark objects: inverted within its own range [80, 200]
    # (grey 200 - g becomes 200 + 80 - (200 - g) = 80 + g).
    light = 200.0 - dark
    grey, inverted = grey_dark_background(light)
    assert inverted
    np.testing.assert_allclose(grey, 80.0 + grey_dark_background(dark)[0])
    # A constant image is not inverted.
    assert not grey_dark_background(np.full((1, 1, 2, 2), 7.0))[1]
    with pytest.raises(ValueError, match="4D"):
        grey_dark_background(np.zeros((4, 4)))


def test_darkest_channel_of_light_background_images_hand_cases():
    # Light background (230) with a purple nucleus pixel (R 100, G 40, B 160): the mean is
    # 100, the darkest channel 40. Inverted within the range: nucleus 230, background 100
    # (mean) or 40 (darkest).
    he = np.full((3, 1, 3, 3), 230.0, np.float32)
    he[:, 0, 1, 1] = [100.0, 40.0, 160.0]
    mean = model_input_channels(he, "grey")
    darkest = model_input_channels(he, "grey-darkest")
    assert mean[0, 0, 1, 1] == darkest[0, 0, 1, 1] == 230.0
    assert mean[0, 0, 0, 0] == 100.0 and darkest[0, 0, 0, 0] == 40.0
    # A dark background keeps the mean with either option: a fluorescence stain may light
    # one channel only, whose minimum over channels would be 0.
    fluo = np.zeros((3, 1, 3, 3), np.float32)
    fluo[2, 0, 1, 1] = 90.0  # blue only
    for colour in ("grey", "grey-darkest"):
        out = model_input_channels(fluo, colour)
        assert out[0, 0, 1, 1] == 30.0 and out[0, 0, 0, 0] == 0.0
    assert model_input_channels(he, "keep") is he
    with pytest.raises(ValueError, match="colour must be one of"):
        model_input_channels(he, "gray")
    with pytest.raises(ValueError, match="light must be one of"):
        grey_dark_background(he, light="red")


@pytest.mark.parametrize("kind", ["gray_dark_bg", "color"])
def test_grey_dark_background_on_real_dsb2018_images(kind):
    """Fluorescence stays, colour (H&E-like, light background) is inverted: nuclei end up
    brighter than the background either way."""
    import csv
    from pathlib import Path

    from medseg.io import read_image, read_instances

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018_stage1_test"
    with open(root / "index.csv", newline="") as file:
        row = next(r for r in csv.DictReader(file) if r["kind"] == kind)
    image = read_image(root / "images" / f"{row['image_id']}.png").array
    nuclei = read_instances(root / "labels" / f"{row['image_id']}.png").array > 0
    grey, inverted = grey_dark_background(image)
    assert inverted == (kind == "color")
    assert np.median(grey[0][nuclei]) > np.median(grey[0][~nuclei])
    darkest = model_input_channels(image, "grey-darkest")
    if kind == "color":  # the darkest channel parts nuclei and background further

        def contrast(g):
            return (np.median(g[0][nuclei]) - np.median(g[0][~nuclei])) / np.ptp(g)

        assert contrast(darkest) > contrast(grey)
    else:
        np.testing.assert_array_equal(darkest, grey)
