"""Tests for medseg.augment.objects (faint objects for training, issue #16): the regions
against a brute-force reference, the contrast scaling on hand-computed cases, and the
batch path of :func:`medseg.train_step.augment_batch`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.augment import AugmentConfig
from medseg.augment.objects import (
    OBJECT_MARGIN,
    OBJECT_SMOOTH,
    augment_object_contrast,
    object_regions,
    sample_object_factors,
    scale_object_contrast,
)
from tests.reference import object_regions_loop


def _discs(shape, centres, radius):
    """Boundary-head class map: 1 inside each disc, 2 on its 1-px rim, 0 elsewhere."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    classes = np.zeros(shape, np.int64)
    for cy, cx in centres:
        d = np.hypot(yy - cy, xx - cx)
        classes[(d <= radius) & (classes == 0)] = 1
        classes[(d > radius) & (d <= radius + 1) & (classes == 0)] = 2
    return classes


@pytest.mark.parametrize("seed", range(6))
def test_object_regions_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    classes = rng.choice([0, 0, 0, 1, 1, 2], size=(14, 17)).astype(np.int64)
    margin = float(rng.choice([0.0, 1.0, 1.5, 2.0, 3.0]))
    got = object_regions(classes, margin)
    want, unique = object_regions_loop(classes, margin)
    np.testing.assert_array_equal(got[unique], want[unique])
    # where two objects tie, the pixel still goes to one of them (never background)
    np.testing.assert_array_equal(got[~unique] > 0, want[~unique] > 0)


def test_object_regions_hand_case():
    classes = np.array([[0, 1, 2, 0, 0, 0, 1, 0, 0, 0]])
    assert object_regions(classes, 1.0).tolist() == [[1, 1, 1, 0, 0, 2, 2, 2, 0, 0]]
    assert object_regions(classes, 0.0).tolist() == [[0, 1, 1, 0, 0, 0, 2, 0, 0, 0]]
    assert object_regions(np.zeros((3, 3), np.int64)).max() == 0


def test_scale_keeps_far_background_and_scales_object_centres():
    """Far from the objects nothing moves; deep inside a disc the grey value is exactly
    b + f (x - b), b the background median; factor 1 is the identity."""
    classes = _discs((64, 64), [(16, 16), (44, 44)], radius=9)
    rng = np.random.default_rng(0)
    background = 0.1 + 0.01 * rng.standard_normal((64, 64))
    image = np.where(classes > 0, 0.8, background)[None].astype(np.float32)
    b = float(np.median(image[0][classes == 0]))
    out = scale_object_contrast(image, classes, np.array([0.25, 1.0]))
    reach = 9 + 1 + OBJECT_MARGIN + 4 * OBJECT_SMOOTH
    yy, xx = np.mgrid[:64, :64]
    far = (np.hypot(yy - 16, xx - 16) > reach) & (np.hypot(yy - 44, xx - 44) > reach)
    np.testing.assert_allclose(out[0][far], image[0][far], atol=1e-6)
    deep = np.hypot(yy - 16, xx - 16) <= 9 - 4 * OBJECT_SMOOTH
    np.testing.assert_allclose(out[0][deep], b + 0.25 * (0.8 - b), atol=1e-5)
    untouched = np.hypot(yy - 44, xx - 44) <= 9 - 4 * OBJECT_SMOOTH
    np.testing.assert_allclose(out[0][untouched], 0.8, atol=1e-6)
    same = scale_object_contrast(image, classes, np.array([1.0, 1.0]))
    np.testing.assert_allclose(same, image, atol=1e-6)


def test_scale_without_background_or_objects_is_the_identity():
    image = np.random.default_rng(1).random((2, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(
        scale_object_contrast(image, np.ones((8, 8), np.int64), np.array([0.2])), image
    )
    np.testing.assert_array_equal(
        scale_object_contrast(image, np.zeros((8, 8), np.int64), np.zeros(0)), image
    )


def test_sample_object_factors_probability_and_range():
    rng = np.random.default_rng(3)
    f = sample_object_factors(rng, 20000, 0.3, (0.2, 0.6))
    chosen = f != 1.0
    assert abs(chosen.mean() - 0.3) < 0.02
    assert f[chosen].min() >= 0.2 and f[chosen].max() <= 0.6
    assert np.all(sample_object_factors(rng, 50, 0.0, (0.2, 0.6)) == 1.0)


def test_augment_batch_dims_objects_from_the_same_stream():
    """augment_batch with only the object contrast on: each patch equals
    augment_object_contrast with the same generator; the labels are untouched."""
    from medseg.config import config_from_dict
    from medseg.train_step import augment_batch

    config = config_from_dict(
        {
            "patches": {"size": 40, "stride": 40},
            "postprocess": {"method": "components"},
            "augment": {
                "elastic_sigma": 0.0,
                "object_contrast_prob": 0.5,
                "object_contrast_range": [0.2, 0.6],
            },
        }
    )
    classes = np.stack([_discs((40, 40), [(10, 10), (28, 26)], 6), _discs((40, 40), [(20, 20)], 8)])
    gen = np.random.default_rng(2)
    images = np.where(classes > 0, 0.9, 0.05)[:, None] + 0.01 * gen.random((2, 1, 40, 40))
    inputs = torch.from_numpy(images.astype(np.float32))
    targets = torch.from_numpy(classes)
    window = slice(0, 40)
    image, label, _ = augment_batch(
        inputs, targets, None, config, np.random.default_rng(9), (slice(0, 1), window, window), 0, 0
    )
    assert torch.equal(label, targets)
    want = augment_object_contrast(
        images.astype(np.float32), classes, np.random.default_rng(9), 0.5, (0.2, 0.6)
    )
    np.testing.assert_allclose(image.numpy(), want, atol=1e-6)
    assert not np.allclose(want, images)  # at least one object of the draw was dimmed


def test_config_checks_the_object_contrast_options():
    assert AugmentConfig().object_contrast_prob == 0.0
    with pytest.raises(ValueError, match="object_contrast_prob must be in"):
        AugmentConfig(object_contrast_prob=1.5)
    with pytest.raises(ValueError, match="object_contrast_range must be"):
        AugmentConfig(object_contrast_range=(0.0, 0.5))


def test_object_contrast_needs_an_object_model():
    from medseg.config import config_from_dict

    with pytest.raises(ValueError, match="postprocess.method must be components"):
        config_from_dict({"augment": {"object_contrast_prob": 0.3}})
    on = {"augment": {"object_contrast_prob": 0.3}, "postprocess": {"method": "boundary"}}
    on["data"] = {"targets": "boundary", "num_classes": 3}
    assert config_from_dict(on).augment.object_contrast_prob == 0.3
