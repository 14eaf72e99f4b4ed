"""Tests for medseg.normalize: hand cases, real IBSR volumes, errors."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.normalize import normalize_intensity


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
