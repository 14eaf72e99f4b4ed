"""Tests for medseg.visualize: hand-computed blend, PNG written atomically, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medseg.visualize import DEFAULT_COLORS, overlay_rgb, save_overlay_png


def test_overlay_hand_values():
    image = np.array([[0.0, 1.0], [0.5, 1.0]])  # percentiles 1/99 ~ 0.005 / 1.0
    labels = np.array([[0, 1], [0, 2]])
    rgb = overlay_rgb(image, labels, alpha=0.5)
    assert rgb[0, 0].tolist() == [0, 0, 0]  # darkest, unlabelled
    expected = np.round((0.5 * 1.0 + 0.5 * np.array(DEFAULT_COLORS[1])) * 255).astype(int)
    assert rgb[0, 1].tolist() == expected.tolist()
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)


def test_overlay_shape_error():
    with pytest.raises(ValueError, match="must be 2D arrays of one shape"):
        overlay_rgb(np.zeros((3, 4)), np.zeros((4, 3), int))


def test_save_overlay_png(tmp_path):
    image = np.random.default_rng(0).random((6, 20, 30))
    labels = (image > 0.5).astype(np.uint8) * 2
    out = save_overlay_png(
        tmp_path / "o.png",
        image,
        labels,
        spacing_mm=(2.0, 1.0, 1.0),
        label_names={2: "GM"},
        title="t",
    )
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size[0] > 300
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_overlay_png(out, image, labels)
    with pytest.raises(ValueError, match=r"must be \(Z, Y, X\) of one shape"):
        save_overlay_png(tmp_path / "p.png", image, labels[0], overwrite=True)
    assert not (tmp_path / "p.png").exists()


# ---------------------------------------------------------------------------
# instance_overlay_rgb (microscopy objects; imports local to this appended section)
# ---------------------------------------------------------------------------


def _two_objects() -> np.ndarray:
    """(6, 9) ids: a 4 x 4 object 3 (interior 2 x 2) and a 3 x 3 object 70000 (interior 1)."""
    ids = np.zeros((6, 9), dtype=np.int64)
    ids[1:5, 1:5] = 3
    ids[2:5, 5:8] = 70000  # touches object 3 along a side
    return ids


def test_instance_overlay_outlines_interiors_and_background():
    from medseg.visualize import instance_overlay_rgb

    image = np.zeros((1, 6, 9))
    image[0, :, ::2] = 1.0  # half 0, half 1: percentiles 1 / 99 are 0 and 1 exactly
    ids = _two_objects()
    rgb = instance_overlay_rgb(image, ids, alpha=0.25)
    assert rgb.shape == (6, 9, 3) and rgb.dtype == np.uint8
    # background keeps the grey of the image: 0 -> black, 1 -> white, same in R, G, B
    background = ids == 0
    expected_grey = np.round(image[0] * 255)[background]
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel][background], expected_grey)
    # outline pixels (an object pixel with a 4-neighbour outside it) are the solid colour
    outline_3 = [(1, 1), (1, 4), (4, 1), (4, 4), (2, 1), (2, 4), (3, 4)]
    colour_3 = rgb[1, 1].astype(int)
    for y, x in outline_3:
        assert rgb[y, x].tolist() == colour_3.tolist()
    outline_7 = [(2, 5), (2, 7), (3, 5), (3, 7), (4, 5), (4, 6), (4, 7), (2, 6)]
    colour_7 = rgb[2, 5].astype(int)
    for y, x in outline_7:
        assert rgb[y, x].tolist() == colour_7.tolist()
    assert colour_3.tolist() != colour_7.tolist()  # one colour per object
    assert len({tuple(colour_3), (0, 0, 0), (255, 255, 255)}) == 3  # not a grey
    # interiors are tinted: (1 - alpha) * grey + alpha * colour
    for (y, x), colour in (((2, 2), colour_3), ((3, 3), colour_3), ((3, 6), colour_7)):
        grey = image[0, y, x]
        expected = 0.75 * grey * 255 + 0.25 * colour
        assert np.all(np.abs(rgb[y, x] - expected) <= 1.0), (y, x)


def test_instance_overlay_alpha_and_rgb_image():
    from medseg.visualize import instance_overlay_rgb

    ids = _two_objects()
    rng = np.random.default_rng(0)
    image = rng.random((3, 6, 9))
    plain = instance_overlay_rgb(image, np.zeros_like(ids))
    # no objects: each channel scaled by its own 1st / 99th percentiles
    for c in range(3):
        lo, hi = np.percentile(image[c], [1, 99])
        expected = np.round(np.clip((image[c] - lo) / (hi - lo), 0, 1) * 255)
        np.testing.assert_array_equal(plain[..., c], expected)
    clear = instance_overlay_rgb(image, ids, alpha=0.0)
    solid = instance_overlay_rgb(image, ids, alpha=1.0)
    interior = np.zeros(ids.shape, dtype=bool)
    interior[2:4, 2:4] = True  # object 3 without its outline
    np.testing.assert_array_equal(clear[interior], plain[interior])  # alpha 0: the image
    np.testing.assert_array_equal(solid[interior], np.broadcast_to(solid[1, 1], (4, 3)))
    np.testing.assert_array_equal(clear[ids == 0], plain[ids == 0])
    # constant image: white background
    white = instance_overlay_rgb(np.full((1, 6, 9), 7.0), ids)
    assert np.all(white[ids == 0] == 255)


def test_instance_overlay_shape_errors():
    from medseg.visualize import instance_overlay_rgb

    ids = np.zeros((4, 5), dtype=np.int64)
    msg = r"image must be \(C, Y, X\) with C 1 or 3 and instances \(Y, X\) of the same size"
    with pytest.raises(ValueError, match=msg + r", got \(2, 4, 5\) and \(4, 5\)"):
        instance_overlay_rgb(np.zeros((2, 4, 5)), ids)
    with pytest.raises(ValueError, match=msg + r", got \(1, 4, 6\) and \(4, 5\)"):
        instance_overlay_rgb(np.zeros((1, 4, 6)), ids)
    with pytest.raises(ValueError, match=msg + r", got \(4, 5\) and \(4, 5\)"):
        instance_overlay_rgb(np.zeros((4, 5)), ids)
    with pytest.raises(ValueError, match=msg + r", got \(1, 4, 5\) and \(1, 4, 5\)"):
        instance_overlay_rgb(np.zeros((1, 4, 5)), ids[None])
