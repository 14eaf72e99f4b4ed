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
