"""Tests for medseg.boundary: three-class targets and the seeded watershed, against the
loop references, by hand and on real DSB2018 nuclei."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from reference import (
    boundary_classes_from_probs_loop,
    boundary_classes_loop,
    instances_from_boundary_loop,
)

from medseg.boundary import boundary_classes, classes_from_probs, instances_from_boundary
from medseg.instances import instances_from_prediction
from medseg.metrics import average_precision

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _random_instances(rng: np.random.Generator, shape, num_ids: int) -> np.ndarray:
    """Blocky random objects that touch each other and the image edge."""
    coarse = rng.integers(0, num_ids + 1, size=(shape[0], shape[1] // 2 + 1, shape[2] // 2 + 1))
    return np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)[:, : shape[1], : shape[2]]


@pytest.mark.parametrize("shape", [(1, 9, 11), (1, 16, 7), (3, 6, 8)])
@pytest.mark.parametrize("width", [1, 2])
def test_boundary_classes_match_loop_reference(shape, width):
    rng = np.random.default_rng(sum(shape) * width)
    for num_ids in (1, 4):
        instances = _random_instances(rng, shape, num_ids)
        np.testing.assert_array_equal(
            boundary_classes(instances, width=width), boundary_classes_loop(instances, width)
        )


def _grid(text: str) -> np.ndarray:
    """Hand-typed digits, one row per line -> int64 (1, Y, X)."""
    return np.array([[int(c) for c in row] for row in text.split()])[None]


def test_boundary_classes_hand_case():
    # Two touching 3 x 4 objects and one lone pixel; width 1 (8 neighbours).
    instances = _grid("0000000 0111220 0111220 0111220 0000003")
    expected = _grid("0000000 0222220 0212220 0222220 0000002")
    np.testing.assert_array_equal(boundary_classes(instances), expected)
    # An object filling the image has no rim: the edge is not a boundary.
    np.testing.assert_array_equal(boundary_classes(np.full((1, 3, 3), 5)), np.ones((1, 3, 3)))


@pytest.mark.parametrize("seed", range(6))
def test_instances_from_boundary_match_loop_reference(seed):
    rng = np.random.default_rng(seed)
    shape = (1, 12 + seed, 15)
    # Random class maps, and the targets of random objects (realistic rims).
    random_classes = rng.choice(3, size=shape, p=[0.3, 0.3, 0.4])
    targets = boundary_classes(_random_instances(rng, shape, 5))
    for classes in (random_classes, targets):
        np.testing.assert_array_equal(
            instances_from_boundary(classes), instances_from_boundary_loop(classes)
        )


def test_instances_from_boundary_hand_case():
    classes = _grid("2222200 2122120 2222220 0000002")
    # Seeds (1,1) -> 1 and (1,4) -> 2 grow one face step a round: round 1 gives (1,2) to
    # 1 and (1,3) to 2; round 2 gives (0,2) and (2,2) to 1, whose only labelled neighbours
    # are then 1's. The seedless pixel at (3,6) is object 3.
    expected = _grid("1112200 1112220 1112220 0000003")
    np.testing.assert_array_equal(instances_from_boundary(classes), expected)
    small = instances_from_boundary(classes, min_size=2)
    assert small.max() == 2 and small[0, 3, 6] == 0
    # The same through the object post-processing of 2D models.
    np.testing.assert_array_equal(instances_from_prediction(classes, method="boundary"), expected)


def test_boundary_round_trip_splits_touching_discs():
    yy, xx = np.mgrid[:40, :50]
    left = (yy - 20) ** 2 + (xx - 15) ** 2 <= 64
    right = ((yy - 20) ** 2 + (xx - 29) ** 2 <= 64) & ~left
    instances = (left * 1 + right * 2)[None].astype(np.int32)
    assert (boundary_classes(instances) == 1).sum() > 0
    # A plain foreground would merge them; the boundary head keeps them apart.
    assert instances_from_prediction((instances > 0).astype(np.uint8)).max() == 1
    out = instances_from_boundary(boundary_classes(instances))
    assert out.max() == 2
    for obj in (left, right):
        ids, counts = np.unique(out[0][obj], return_counts=True)
        best = ids[np.argmax(counts)]
        iou = np.count_nonzero((out[0] == best) & obj) / np.count_nonzero((out[0] == best) | obj)
        assert iou > 0.95


def test_boundary_round_trip_on_real_dsb2018_nuclei(dense_dsb_instances):
    """The target of a real DSB2018 instance map, read back as objects, gives back the
    nuclei: every nucleus is matched at IoU 0.5 and the mean AP over 0.5:0.95 is high."""
    truth = dense_dsb_instances
    out = instances_from_boundary(boundary_classes(truth))
    ap = average_precision(out, truth)
    assert ap["precision"][0] == 1.0  # IoU 0.5: every nucleus, nothing else
    assert ap["ap"] > 0.9


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.6])
def test_classes_from_probs_match_loop_reference(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=(2, 9, 13)).transpose(3, 0, 1, 2)
    probs[:, 0, 0, :3] = [[0.5, 0.4, 0.6], [0.25, 0.3, 0.2], [0.25, 0.3, 0.2]]  # ties
    out = classes_from_probs(probs.astype(np.float32), mask_threshold=threshold)
    np.testing.assert_array_equal(out, boundary_classes_from_probs_loop(probs, threshold))
    assert out.dtype == np.uint8


def test_classes_from_probs_hand_case():
    # Pixel 0: background is the single most likely class (argmax 0), but the object
    # classes together hold 0.6: an object pixel. Pixel 1: background 0.55: background.
    # Pixel 2: boundary 0.45 > interior 0.35: boundary. Pixel 3: as pixel 0 at threshold
    # 0.65: background.
    probs = np.array([[0.4, 0.55, 0.2, 0.4], [0.35, 0.25, 0.35, 0.35], [0.25, 0.2, 0.45, 0.25]])
    probs = probs[:, None, None, :]
    assert probs.argmax(0).tolist() == [[[0, 0, 2, 0]]]
    assert classes_from_probs(probs).tolist() == [[[1, 0, 2, 1]]]
    assert classes_from_probs(probs, mask_threshold=0.65).tolist() == [[[0, 0, 2, 0]]]
    # The objects: the interior pixel 0 seeds one object, which takes in nothing else
    # (pixel 1 is background); pixel 2 and 3 form a seeded object (3 is interior).
    np.testing.assert_array_equal(
        instances_from_boundary(classes_from_probs(probs)), [[[1, 0, 2, 2]]]
    )
    with pytest.raises(TypeError, match="floating ndarray"):
        classes_from_probs(np.zeros((3, 1, 2, 2), int))
    with pytest.raises(ValueError, match=r"\(3, Z, Y, X\)"):
        classes_from_probs(np.zeros((2, 1, 2, 2)))
    with pytest.raises(ValueError, match="mask_threshold must be a number in \\(0, 1\\)"):
        classes_from_probs(probs, mask_threshold=1.0)


def test_boundary_errors():
    with pytest.raises(TypeError, match="integer ndarray"):
        boundary_classes(np.zeros((1, 3, 3), bool))
    with pytest.raises(ValueError, match="3D"):
        boundary_classes(np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="width must be an integer >= 1"):
        boundary_classes(np.zeros((1, 3, 3), int), width=0)
    with pytest.raises(ValueError, match="0 .background., 1 .interior. and 2"):
        instances_from_boundary(np.full((1, 3, 3), 3))
    with pytest.raises(ValueError, match="connectivity must be an integer in 1..2"):
        instances_from_boundary(np.zeros((1, 3, 3), int), connectivity=3)
    with pytest.raises(ValueError, match="min_size"):
        instances_from_boundary(np.zeros((1, 3, 3), int), min_size=-1)


def test_boundary_objects_of_a_two_class_model_come_from_its_class_map(tmp_path):
    """`--objects boundary` on a two-class model (the golden cells model): no boundary
    probabilities to decide from, so its class map's objects, as before."""
    from medseg.checkpoint import load_checkpoint
    from medseg.io import read_image
    from medseg.predict import segment_objects

    golden = Path(__file__).resolve().parent / "data" / "golden"
    ckpt = load_checkpoint(golden / "cells_tiny.pt")
    assert ckpt.num_classes == 2
    image = read_image(golden / "cells.png", allow_2d=True)
    result, instances = segment_objects(
        image, ckpt, ckpt.build_model("cpu"), what="cells", device="cpu",
        objects={"method": "boundary"},
    )  # fmt: skip
    size = ckpt.postprocess_settings.min_size
    expected = instances_from_prediction(result.labels, method="boundary", min_size=size)
    assert result.probs is None and instances.max() > 0
    np.testing.assert_array_equal(instances, expected)
