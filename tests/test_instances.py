"""Tests for medseg.instances: small-object removal, relabelling, foreground -> instances."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medseg.instances import (
    instances_from_foreground,
    relabel_sequential,
    remove_small_objects,
    semantic_from_probs,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _two_discs() -> tuple[np.ndarray, np.ndarray]:
    """Two discs of radius 8 px, centres 12 px apart: a figure-8, each (40, 50) bool."""
    yy, xx = np.mgrid[:40, :50]
    left = (yy - 20) ** 2 + (xx - 15) ** 2 <= 64
    right = (yy - 20) ** 2 + (xx - 27) ** 2 <= 64
    return left, right


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


# ---------------------------------------------------------------------------
# relabel_sequential / remove_small_objects
# ---------------------------------------------------------------------------


def test_relabel_sequential_keeps_order_and_is_contiguous():
    instances = np.array([[[0, 40, 40], [7, 0, 1000]], [[7, 7, 0], [0, 1000, 40]]])
    out = relabel_sequential(instances)
    expected = np.array([[[0, 2, 2], [1, 0, 3]], [[1, 1, 0], [0, 3, 2]]])
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.int32
    assert relabel_sequential(instances).tolist() == out.tolist()  # input untouched
    assert instances[0, 0, 1] == 40


def test_remove_small_objects_exact_sizes():
    # sizes: id 3 -> 4 voxels, id 5 -> 1, id 8 -> 2, id 9 -> 3
    instances = np.array([[[3, 3, 0, 5, 8, 8], [3, 3, 0, 9, 9, 9]]], dtype=np.uint16)
    out = remove_small_objects(instances, min_size=3)
    np.testing.assert_array_equal(out, [[[1, 1, 0, 0, 0, 0], [1, 1, 0, 2, 2, 2]]])
    assert out.dtype == np.int32
    np.testing.assert_array_equal(
        remove_small_objects(instances, min_size=2), [[[1, 1, 0, 0, 2, 2], [1, 1, 0, 3, 3, 3]]]
    )
    np.testing.assert_array_equal(remove_small_objects(instances, min_size=5), 0)
    # min_size 0 only renumbers non-contiguous ids
    np.testing.assert_array_equal(
        remove_small_objects(instances, min_size=0), relabel_sequential(instances)
    )


# ---------------------------------------------------------------------------
# instances_from_foreground
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["components", "watershed"])
def test_two_separated_squares_give_two_instances(method):
    foreground = np.zeros((1, 12, 20), dtype=np.uint8)
    foreground[0, 2:8, 2:8] = 1
    foreground[0, 3:9, 11:17] = 1
    out = instances_from_foreground(foreground, method=method)
    assert out.shape == foreground.shape and out.dtype == np.int32
    assert out.max() == 2
    assert np.all(out[0, 2:8, 2:8] == 1) and np.all(out[0, 3:9, 11:17] == 2)
    assert np.all((out > 0) == (foreground > 0))


def test_watershed_splits_touching_discs():
    left, right = _two_discs()
    foreground = (left | right)[np.newaxis]
    assert instances_from_foreground(foreground, method="components").max() == 1
    out = instances_from_foreground(foreground, method="watershed")
    assert out.max() == 2
    assert np.all((out > 0) == foreground)
    assert _iou(out[0] == 1, left) > 0.8
    assert _iou(out[0] == 2, right) > 0.8


def test_watershed_splits_touching_balls_in_3d():
    zz, yy, xx = np.mgrid[:24, :26, :40]
    ball_a = (zz - 12) ** 2 + (yy - 13) ** 2 + (xx - 13) ** 2 <= 49
    ball_b = (zz - 12) ** 2 + (yy - 13) ** 2 + (xx - 24) ** 2 <= 49
    foreground = ball_a | ball_b
    assert instances_from_foreground(foreground, method="components").max() == 1
    out = instances_from_foreground(foreground, method="watershed")
    assert out.max() == 2
    assert _iou(out == 1, ball_a) > 0.8 and _iou(out == 2, ball_b) > 0.8


def test_watershed_keeps_seedless_components_and_min_size():
    left, right = _two_discs()
    foreground = (left | right).astype(np.uint8) * 255
    foreground[0:2, 0:30] = 255  # thin 2-px strip: too thin for a seed (min_height 2)
    foreground[38, 48] = 255  # single voxel
    out = instances_from_foreground(foreground[np.newaxis], method="watershed")
    assert out.max() == 4
    assert np.all((out[0] > 0) == (foreground > 0))
    out = instances_from_foreground(foreground[np.newaxis], method="watershed", min_size=2)
    assert out.max() == 3 and out[0, 38, 48] == 0


@pytest.mark.parametrize("method", ["components", "watershed"])
def test_empty_foreground_gives_zeros(method):
    out = instances_from_foreground(np.zeros((2, 5, 6), dtype=bool), method=method)
    assert out.shape == (2, 5, 6) and out.dtype == np.int32 and not out.any()


@pytest.mark.skipif(not DATA.is_dir(), reason="shared/data is not available")
def test_watershed_on_dsb2018_touching_nuclei():
    from medseg.io import read_instances

    root = DATA / "dsb2018_stage1_test"
    with open(root / "index.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    # The image with most touching pairs among the small ones (fast test).
    small = [r for r in rows if int(r["height"]) * int(r["width"]) <= 100_000]
    row = max(small, key=lambda r: int(r["touching_pairs"]))
    assert int(row["touching_pairs"]) >= 10
    label = read_instances(root / "labels" / f"{row['image_id']}.png").array
    num_true = len(np.unique(label)) - 1
    foreground = label > 0
    num_components = instances_from_foreground(foreground).max()
    num_watershed = instances_from_foreground(foreground, method="watershed").max()
    assert num_components < num_true  # touching nuclei merge
    assert num_watershed >= num_components
    assert abs(num_watershed - num_true) < abs(num_components - num_true)
    assert 0.7 * num_true <= num_watershed <= 1.3 * num_true


# ---------------------------------------------------------------------------
# semantic_from_probs
# ---------------------------------------------------------------------------


def test_semantic_from_probs_class_one_and_foreground_probability():
    fg_prob = np.array([[[0.1, 0.5, 0.51], [0.9, 0.0, 1.0]]], dtype=np.float32)
    expected = [[[0, 0, 1], [1, 0, 1]]]
    out = semantic_from_probs(fg_prob)
    assert out.dtype == np.uint8 and out.tolist() == expected
    probs = np.stack([1 - fg_prob, fg_prob, np.zeros_like(fg_prob)])  # K = 3
    assert semantic_from_probs(probs).tolist() == expected
    assert semantic_from_probs(fg_prob, threshold=0.05).tolist() == [[[1, 1, 1], [1, 0, 1]]]


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_instance_errors():
    with pytest.raises(TypeError, match="instances must be an integer ndarray"):
        relabel_sequential(np.zeros((1, 2, 2), dtype=bool))
    with pytest.raises(TypeError, match="instances must be an integer ndarray"):
        remove_small_objects(np.zeros((1, 2, 2), dtype=np.float32), min_size=1)
    with pytest.raises(ValueError, match=r"instances must be 3D \(Z, Y, X\)"):
        relabel_sequential(np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="instances must hold ids >= 0"):
        relabel_sequential(np.array([[[0, -1]]]))
    with pytest.raises(ValueError, match="min_size must be an integer >= 0"):
        remove_small_objects(np.zeros((1, 2, 2), dtype=np.int32), min_size=-1)


def test_foreground_errors():
    foreground = np.zeros((1, 4, 4), dtype=bool)
    with pytest.raises(TypeError, match="foreground must be a bool or integer ndarray"):
        instances_from_foreground(foreground.astype(np.float32))
    with pytest.raises(TypeError, match="foreground must be a bool or integer ndarray"):
        instances_from_foreground([[[0, 1]]])
    with pytest.raises(ValueError, match=r"foreground must be 3D \(Z, Y, X\)"):
        instances_from_foreground(foreground[0])
    with pytest.raises(ValueError, match="foreground must hold 0 and one positive value"):
        instances_from_foreground(np.array([[[0, 1, 2]]]))
    with pytest.raises(ValueError, match=r"method must be one of \['components', 'watershed'\]"):
        instances_from_foreground(foreground, method="otsu")
    with pytest.raises(ValueError, match="min_size must be an integer >= 0"):
        instances_from_foreground(foreground, min_size=-3)
    with pytest.raises(ValueError, match="min_distance must be an integer >= 1"):
        instances_from_foreground(foreground, method="watershed", min_distance=0)
    with pytest.raises(ValueError, match="min_height must be a number >= 0"):
        instances_from_foreground(foreground, min_height=-1.0)
    with pytest.raises(ValueError, match="sigma must be a number >= 0"):
        instances_from_foreground(foreground, sigma=float("nan"))
    with pytest.raises(ValueError, match="connectivity must be an integer in 1..2"):
        instances_from_foreground(foreground, connectivity=3)


def test_probs_errors():
    with pytest.raises(TypeError, match="probs must be a floating ndarray"):
        semantic_from_probs(np.zeros((1, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"probs must be \(K, Z, Y, X\) or \(Z, Y, X\)"):
        semantic_from_probs(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="probs must have K >= 2 classes"):
        semantic_from_probs(np.zeros((1, 1, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\)"):
        semantic_from_probs(np.zeros((1, 2, 2), dtype=np.float32), threshold=1.0)
