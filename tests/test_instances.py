"""Tests for medseg.instances: small-object removal, relabelling, foreground -> instances."""

from __future__ import annotations

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
def test_watershed_on_dsb2018_touching_nuclei(dense_dsb_instances):
    label = dense_dsb_instances
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
    with pytest.raises(ValueError, match="instances ids must be >= 0"):
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


# ---------------------------------------------------------------------------
# carve_touching / fill_gaps / instances_from_prediction (U-Net microscopy targets)
# (imports are local: this section was appended below the module's tests)
# ---------------------------------------------------------------------------

CARVE_SHAPES = [(1, 1, 1), (1, 5, 7), (1, 9, 4), (3, 4, 6), (2, 1, 5), (4, 5, 3)]


def _random_instances(rng: np.random.Generator, shape, num_ids: int) -> np.ndarray:
    """Dense random ids (many touching pairs) from a non-contiguous pool, 0 = background."""
    pool = np.array([0, 0, 1, 2, 7, 40, 41, 65535, 70000][: num_ids + 2])
    return rng.choice(pool, size=shape).astype(np.int64)


@pytest.mark.parametrize("shape", CARVE_SHAPES, ids=str)
@pytest.mark.parametrize("num_ids", [1, 3, 7])
def test_carve_touching_matches_loop_reference(shape, num_ids):
    from medseg.instances import carve_touching
    from tests.reference import carve_touching_loop

    rng = np.random.default_rng(sum(shape) * 10 + num_ids)  # fixed seed per case
    for _ in range(4):
        instances = _random_instances(rng, shape, num_ids)
        before = instances.copy()
        out = carve_touching(instances)
        assert out.dtype == np.int32 and out.shape == shape
        np.testing.assert_array_equal(out, carve_touching_loop(instances))
        np.testing.assert_array_equal(instances, before)  # input untouched


@pytest.mark.parametrize("shape", CARVE_SHAPES, ids=str)
@pytest.mark.parametrize("num_ids", [1, 3, 7])
def test_fill_gaps_matches_loop_reference(shape, num_ids):
    from medseg.instances import fill_gaps
    from tests.reference import fill_gaps_loop

    rng = np.random.default_rng(sum(shape) * 10 + num_ids + 1000)  # fixed seed per case
    for _ in range(4):
        instances = _random_instances(rng, shape, num_ids).astype(np.uint32)
        out = fill_gaps(instances)
        assert out.dtype == np.int32 and out.shape == shape
        np.testing.assert_array_equal(out, fill_gaps_loop(instances))


def _face_touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different object ids that share a face (in-plane only when Z == 1)."""
    pairs = set()
    axes = (1, 2) if instances.shape[0] == 1 else (0, 1, 2)
    for axis in axes:
        a = np.moveaxis(instances, axis, 0)
        here, there = a[:-1].ravel(), a[1:].ravel()
        touching = (here > 0) & (there > 0) & (here != there)
        pairs |= {tuple(sorted(p)) for p in zip(here[touching], there[touching], strict=True)}
    return pairs


@pytest.mark.parametrize("shape", [(1, 12, 15), (5, 6, 7)], ids=str)
def test_carving_leaves_no_face_touching_objects(shape):
    from medseg.instances import carve_touching

    rng = np.random.default_rng(7)
    for _ in range(10):
        instances = _random_instances(rng, shape, 7)
        assert _face_touching_pairs(instances)  # the random maps do touch
        carved = carve_touching(instances)
        assert not _face_touching_pairs(carved)
        # only object voxels are removed, and nothing is relabelled
        kept = carved > 0
        np.testing.assert_array_equal(carved[kept], instances[kept])


def test_carve_and_fill_hand_case():
    from medseg.instances import carve_touching, fill_gaps

    # 5 and 9 touch along a vertical face; 2 touches 9 only diagonally (not carved)
    instances = np.array(
        [
            [
                [5, 5, 9, 9, 0],
                [5, 5, 9, 9, 0],
                [0, 0, 0, 0, 2],
            ]
        ]
    )
    carved = carve_touching(instances)
    assert carved.tolist() == [[[5, 0, 9, 9, 0], [5, 0, 9, 9, 0], [0, 0, 0, 0, 2]]]
    # the carved column goes back to 5; the two background pixels beside both 9 and 2
    # (the diagonal contact) are "between two objects" too and join the lower id, 2
    assert fill_gaps(carved).tolist() == [[[5, 5, 9, 9, 0], [5, 5, 9, 9, 2], [0, 0, 0, 2, 2]]]
    # a z neighbour counts only in 3D: two slices of different ids
    stack = np.array([[[3, 3]], [[4, 4]]])
    assert carve_touching(stack).tolist() == [[[0, 0]], [[4, 4]]]
    assert fill_gaps(np.array([[[3, 0, 4]], [[0, 0, 0]]])).tolist() == [
        [[3, 3, 4]],
        [[0, 0, 0]],
    ]
    # 2D (Z == 1): a pixel between 3 and 4 along y is filled as well
    assert fill_gaps(np.array([[[3], [0], [4]]])).tolist() == [[[3], [3], [4]]]


def _strip_blob_map(rng: np.random.Generator, num_slots: tuple[int, int]) -> np.ndarray:
    """Slots of 11 x 11 px with 2 px of background between them, each holding a disc, a
    rectangle, or a rectangle cut into 2 or 3 strips (rows or columns) of >= 3 px: convex
    objects at least 3 px thick that touch only in pairs along a whole side, so that no
    background pixel of the map lies beside two objects."""
    size, gap = 11, 2
    ny, nx = num_slots
    out = np.zeros((1, ny * (size + gap) + gap, nx * (size + gap) + gap), dtype=np.int64)
    ids = iter(rng.permutation(np.arange(1, 5000))[: 3 * ny * nx] * 3)  # non-contiguous
    yy, xx = np.mgrid[:size, :size]
    for sy in range(ny):
        for sx in range(nx):
            slot = np.zeros((size, size), dtype=np.int64)
            kind = rng.integers(3)
            h, w = int(rng.integers(3, size + 1)), int(rng.integers(6, size + 1))
            if kind == 0:  # a disc
                r = rng.uniform(1.5, 5.4)
                slot[(yy - 5) ** 2 + (xx - 5) ** 2 <= r * r] = next(ids)
            elif kind == 1:  # a rectangle
                slot[:h, :w] = next(ids)
            else:  # strips of >= 3 px
                cuts = [0, int(rng.integers(3, w - 2)), w]
                if w >= 9 and rng.integers(2):
                    cuts = [0, 3, int(rng.integers(6, w - 2)), w]
                for left, right in zip(cuts[:-1], cuts[1:], strict=True):
                    slot[:h, left:right] = next(ids)
            if rng.integers(2):
                slot = slot.T
            y0, x0 = gap + sy * (size + gap), gap + sx * (size + gap)
            out[0, y0 : y0 + size, x0 : x0 + size] = slot
    return out


def test_fill_gaps_undoes_carving_of_convex_blobs():
    from medseg.instances import carve_touching, fill_gaps

    rng = np.random.default_rng(11)
    carved_any = False
    for _ in range(6):
        instances = _strip_blob_map(rng, (4, 5))
        carved = carve_touching(instances)
        carved_any |= bool((carved != instances).any())
        np.testing.assert_array_equal(fill_gaps(carved), instances)
    assert carved_any  # the maps had touching pairs
    # 3D: a box cut into slabs along z, and one cut along x (no line where three meet)
    box = np.zeros((8, 7, 16), dtype=np.int64)
    box[1:4, 1:6, 1:6], box[4:7, 1:6, 1:6] = 30, 8
    box[1:7, 1:6, 8:11], box[1:7, 1:6, 11:15] = 12, 5
    assert (carve_touching(box) != box).any()
    np.testing.assert_array_equal(fill_gaps(carve_touching(box)), box)


def _beside_two_objects(instances: np.ndarray) -> np.ndarray:
    """bool: pixels whose face neighbourhood (itself included) holds >= 2 object ids."""
    from tests.reference import face_neighbours_loop

    out = np.zeros(instances.shape, dtype=bool)
    for index in np.ndindex(*instances.shape):
        around = {int(instances[nb]) for nb in face_neighbours_loop(index, instances.shape)}
        out[index] = len((around | {int(instances[index])}) - {0}) >= 2
    return out


def test_fill_gaps_after_carving_differs_only_where_objects_meet():
    from medseg.instances import carve_touching, fill_gaps

    # touching discs: not an exact inverse (a one-pixel end of a contact stays carved, and
    # background in the corner where two outlines part is filled), but every difference
    # lies on a pixel beside two objects
    yy, xx = np.mgrid[:30, :40]
    discs = np.zeros((1, 30, 40), dtype=np.int64)
    discs[0][(yy - 14) ** 2 + (xx - 12) ** 2 <= 49] = 4
    discs[0][((yy - 14) ** 2 + (xx - 22) ** 2 <= 49) & (discs[0] == 0)] = 2  # overlap
    restored = fill_gaps(carve_touching(discs))
    changed = restored != discs
    assert changed.any() and np.all(_beside_two_objects(discs)[changed])
    rng = np.random.default_rng(5)
    for _ in range(3):
        instances = _strip_blob_map(rng, (2, 3))
        instances[0, 4:9, 2:20] = 77  # a bar across slots: partial contacts and corners
        changed = fill_gaps(carve_touching(instances)) != instances
        assert changed.any() and np.all(_beside_two_objects(instances)[changed])


def test_instances_from_prediction_hand_case():
    from medseg.instances import instances_from_prediction

    # classes 1 and 2 are both foreground; the lone pixel at the right end is 1 px big
    pred = np.array([[[1, 1, 0, 2, 2, 0, 0, 1], [1, 0, 0, 2, 0, 0, 0, 0]]], dtype=np.uint8)
    out = instances_from_prediction(pred)
    assert out.dtype == np.int32
    assert out.tolist() == [[[1, 1, 0, 2, 2, 0, 0, 3], [1, 0, 0, 2, 0, 0, 0, 0]]]
    out = instances_from_prediction(pred, min_size=2)
    assert out.tolist() == [[[1, 1, 0, 2, 2, 0, 0, 0], [1, 0, 0, 2, 0, 0, 0, 0]]]
    # fill: (0, 2) lies between objects 1 and 2 and joins 1; (1, 1) and (1, 2) touch one
    # object each and stay background; small objects go before filling
    out = instances_from_prediction(pred, min_size=2, fill=True)
    assert out.tolist() == [[[1, 1, 1, 2, 2, 0, 0, 0], [1, 0, 0, 2, 0, 0, 0, 0]]]
    # watershed on objects too small for a seed: each component is its own object
    out = instances_from_prediction(pred, method="watershed", min_size=2)
    assert out.tolist() == [[[1, 1, 0, 2, 2, 0, 0, 0], [1, 0, 0, 2, 0, 0, 0, 0]]]
    assert not instances_from_prediction(np.zeros((1, 3, 4), np.uint8), fill=True).any()


def test_carve_fill_prediction_errors():
    from medseg.instances import carve_touching, fill_gaps, instances_from_prediction

    for fn in (carve_touching, fill_gaps):
        with pytest.raises(TypeError, match="instances must be an integer ndarray"):
            fn(np.zeros((1, 2, 2), dtype=np.float32))
        with pytest.raises(TypeError, match="instances must be an integer ndarray"):
            fn(np.zeros((1, 2, 2), dtype=bool))
        with pytest.raises(ValueError, match=r"instances must be 3D \(Z, Y, X\)"):
            fn(np.zeros((2, 2), dtype=np.int32))
        with pytest.raises(ValueError, match="instances ids must be >= 0, got -4"):
            fn(np.array([[[0, -4]]]))
    with pytest.raises(TypeError, match="pred must be an integer ndarray"):
        instances_from_prediction(np.zeros((1, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"pred must be 3D \(Z, Y, X\)"):
        instances_from_prediction(np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="method must be one of"):
        instances_from_prediction(np.zeros((1, 2, 2), dtype=np.uint8), method="otsu")
    with pytest.raises(ValueError, match="min_size must be an integer >= 0"):
        instances_from_prediction(np.zeros((1, 2, 2), dtype=np.uint8), min_size=-1)
