"""Tests for medseg.metrics: hand values, empty-mask policy, brute-force references, MONAI."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import reference as ref
from numpy.testing import assert_allclose, assert_array_equal
from scipy import ndimage

from medseg.metrics import (
    OverlapMetrics,
    boundary_f1,
    confusion_matrix,
    dice_score,
    overlap_metrics,
    surface_distances,
    weighted_dice,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NAN = math.nan

# Hand fixture, one 4x4 slice (Z == 1). Class 1: 5 target voxels, 5 predicted, 4 shared.
HAND_TARGET = np.array(
    [[[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 0], [2, 2, 0, 0]]],
    dtype=np.uint8,
)
HAND_PRED = np.array(
    [[[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 0, 0], [2, 0, 0, 0]]],
    dtype=np.uint8,
)
HAND_CM = np.array([[8, 1, 0], [1, 4, 0], [1, 0, 1]])  # rows = target


# ---------------------------------------------------------------------------
# Confusion matrix
# ---------------------------------------------------------------------------


def test_confusion_matrix_hand():
    cm = confusion_matrix(HAND_PRED, HAND_TARGET, num_classes=3)
    assert cm.dtype == np.int64
    assert_array_equal(cm, HAND_CM)
    # an absent class adds a zero row and column
    cm4 = confusion_matrix(HAND_PRED, HAND_TARGET, num_classes=4)
    assert_array_equal(cm4[:3, :3], HAND_CM)
    assert cm4[3].sum() == 0 and cm4[:, 3].sum() == 0


@pytest.mark.parametrize(
    ("num_classes", "dtype"),
    [(1, np.uint8), (2, np.bool_), (4, np.uint8), (5, np.int64), (16, np.uint16), (17, np.int8)]
    + [(20, np.uint8), (181, np.int32), (182, np.uint8), (300, np.int16)],
)
def test_confusion_matrix_matches_loop(num_classes, dtype):
    # K <= 16 uses a uint8 pair index, K <= 181 int16, above that int32
    rng = np.random.default_rng(num_classes)  # seed only picks the random labels
    high = min(num_classes, 2 if dtype == np.bool_ else num_classes)
    pred = rng.integers(0, high, (5, 6, 7)).astype(dtype)
    target = rng.integers(0, high, (5, 6, 7)).astype(dtype)
    cm = confusion_matrix(pred, target, num_classes=num_classes)
    assert cm.shape == (num_classes, num_classes)
    assert_array_equal(cm, ref.confusion_matrix_loop(pred, target, num_classes))


def test_confusion_matrix_non_contiguous_and_empty():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, (7, 6, 5), dtype=np.uint8).transpose(2, 1, 0)  # a strided view
    target = rng.integers(0, 4, (5, 6, 7), dtype=np.uint8)
    assert_array_equal(
        confusion_matrix(pred, target, num_classes=4),
        ref.confusion_matrix_loop(pred, target, 4),
    )
    empty = np.zeros((0, 3, 3), dtype=np.uint8)
    assert_array_equal(confusion_matrix(empty, empty, num_classes=2), np.zeros((2, 2)))


def test_confusion_matrix_does_not_modify_inputs():
    pred, target = HAND_PRED.copy(), HAND_TARGET.copy()
    confusion_matrix(pred, target, num_classes=3)
    assert_array_equal(pred, HAND_PRED)
    assert_array_equal(target, HAND_TARGET)


def test_confusion_matrix_errors():
    a = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"same shape, got pred \(4, 4\) and target \(4, 5\)"):
        confusion_matrix(a, np.zeros((4, 5), dtype=np.uint8), num_classes=2)
    bad = a.copy()
    bad[1, 2] = 7
    with pytest.raises(
        ValueError, match=r"pred label values must be < num_classes=3, got 7 .*\(1, 2\)"
    ):
        confusion_matrix(bad, a, num_classes=3)
    with pytest.raises(ValueError, match=r"target label values must be < num_classes=3, got 7"):
        confusion_matrix(a, bad, num_classes=3)
    neg = np.zeros((4, 4), dtype=np.int16)
    neg[3, 0] = -1
    with pytest.raises(ValueError, match=r"target label values must be >= 0, got -1 .*\(3, 0\)"):
        confusion_matrix(neg * 0, neg, num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be an int in"):
        confusion_matrix(a, a, num_classes=0)
    with pytest.raises(ValueError, match="num_classes must be an int in"):
        confusion_matrix(a, a, num_classes=2.0)
    with pytest.raises(
        TypeError, match="pred must be an integer or bool label map, got dtype float32"
    ):
        confusion_matrix(a.astype(np.float32), a, num_classes=2)
    with pytest.raises(TypeError, match="target must be a numpy integer label map, got list"):
        confusion_matrix(a, [[0]], num_classes=2)


# ---------------------------------------------------------------------------
# Overlap metrics
# ---------------------------------------------------------------------------


def test_overlap_metrics_hand_values():
    m = overlap_metrics(HAND_CM)
    assert isinstance(m, OverlapMetrics)
    assert m.dice[1] == pytest.approx(0.8)
    assert_allclose(m.dice, [16 / 19, 0.8, 2 / 3])
    assert_allclose(m.iou, [8 / 11, 4 / 6, 1 / 2])
    assert_allclose(m.precision, [8 / 10, 4 / 5, 1.0])
    assert_allclose(m.recall, [8 / 9, 4 / 5, 1 / 2])
    assert_allclose(m.specificity, [5 / 7, 10 / 11, 1.0])
    assert m.accuracy == pytest.approx(13 / 16)
    assert m.mean_iou == pytest.approx(125 / 198)  # (8/11 + 2/3 + 1/2) / 3
    assert m.fw_iou == pytest.approx(359 / 528)  # (9*8/11 + 5*2/3 + 2*1/2) / 16
    assert m.mean_class_accuracy == pytest.approx(197 / 270)  # (8/9 + 4/5 + 1/2) / 3
    assert m.dice.dtype == np.float64 and m.dice.shape == (3,)
    assert_array_equal(m.confusion, HAND_CM)
    with pytest.raises(ValueError, match="read-only"):
        m.dice[0] = 1.0


def test_empty_class_policy():
    # class 3 absent from both; class 2 only in target after removing it from pred
    pred = HAND_PRED.copy()
    pred[pred == 2] = 0
    m = overlap_metrics(confusion_matrix(pred, HAND_TARGET, num_classes=4))
    assert np.isnan(m.dice[3]) and np.isnan(m.iou[3])
    assert np.isnan(m.precision[3]) and np.isnan(m.recall[3])
    assert m.specificity[3] == 1.0
    assert m.dice[2] == 0.0 and m.iou[2] == 0.0 and m.recall[2] == 0.0
    assert np.isnan(m.precision[2])  # never predicted
    # means skip the NaN class, so they equal the K = 3 values
    m3 = overlap_metrics(confusion_matrix(pred, HAND_TARGET, num_classes=3))
    assert m.mean_iou == pytest.approx(m3.mean_iou)
    assert m.fw_iou == pytest.approx(m3.fw_iou)
    assert m.mean_class_accuracy == pytest.approx(m3.mean_class_accuracy)
    # nothing at all: every ratio is NaN, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m0 = overlap_metrics(np.zeros((2, 2), dtype=np.int64))
    assert np.isnan(m0.accuracy) and np.isnan(m0.mean_iou) and np.isnan(m0.fw_iou)
    assert np.isnan(m0.mean_class_accuracy) and np.all(np.isnan(m0.dice))


def test_dice_score_hand_and_invariants():
    assert dice_score(HAND_PRED, HAND_TARGET, label=1) == pytest.approx(0.8)
    assert dice_score(HAND_PRED, HAND_TARGET, label=2) == pytest.approx(2 / 3)
    assert np.isnan(dice_score(HAND_PRED, HAND_TARGET, label=5))  # both empty
    assert dice_score(np.zeros_like(HAND_PRED), HAND_TARGET, label=1) == 0.0  # one empty
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, (5, 6, 7), dtype=np.uint8)
    for k in range(4):
        assert dice_score(x, x, label=k) == 1.0
    assert_array_equal(overlap_metrics(confusion_matrix(x, x, num_classes=4)).dice, 1.0)
    with pytest.raises(ValueError, match="label must hold non-negative int labels, got -1"):
        dice_score(x, x, label=-1)
    with pytest.raises(ValueError, match="same shape"):
        dice_score(x, x[:1], label=1)


def test_weighted_dice_hand():
    assert weighted_dice(HAND_CM, classes=[1, 2]) == pytest.approx(16 / 21)  # (5*0.8 + 2*2/3)/7
    assert weighted_dice(HAND_CM, classes=[1]) == pytest.approx(0.8)
    cm4 = np.zeros((4, 4), dtype=np.int64)
    cm4[:3, :3] = HAND_CM
    assert weighted_dice(cm4, classes=[1, 2, 3]) == pytest.approx(16 / 21)  # absent: weight 0
    assert np.isnan(weighted_dice(cm4, classes=[3]))
    with pytest.raises(ValueError, match=r"classes must be distinct labels in \[0, 3\)"):
        weighted_dice(HAND_CM, classes=[1, 3])
    with pytest.raises(ValueError, match="classes must be distinct labels"):
        weighted_dice(HAND_CM, classes=[1, 1])
    with pytest.raises(ValueError, match="classes must be distinct labels"):
        weighted_dice(HAND_CM, classes=[])
    with pytest.raises(TypeError, match="classes must be a sequence of int labels, got int"):
        weighted_dice(HAND_CM, classes=1)
    with pytest.raises(ValueError, match="classes must hold non-negative int labels"):
        weighted_dice(HAND_CM, classes=[1.5])


def test_overlap_metrics_cm_errors():
    with pytest.raises(TypeError, match="cm must be a numpy"):
        overlap_metrics([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match=r"cm must be a square .*got shape \(2, 3\)"):
        overlap_metrics(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="cm must hold integer counts, got dtype float64"):
        overlap_metrics(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="cm must hold non-negative counts, got minimum -1"):
        overlap_metrics(np.array([[1, -1], [0, 1]]))


def _blobs(rng: np.random.Generator, shape, num_classes: int, sigma: float) -> np.ndarray:
    """Smooth random label map (uint8): argmax of Gaussian-smoothed noise channels."""
    noise = rng.random((num_classes, *shape))
    smooth = np.stack([ndimage.gaussian_filter(c, sigma) for c in noise]) if sigma else noise
    return np.argmax(smooth, axis=0).astype(np.uint8)


# (shape, spacing_mm, sigma, seed): odd shapes, anisotropic spacing, a 2D case (Z == 1),
# iid labels (sigma 0, mostly boundary) and smooth blobs; seeds only pick the random maps.
RANDOM_CASES = [
    ((5, 6, 7), (2.0, 0.7, 1.3), 1.0, 0),
    ((5, 6, 7), (1.0, 1.0, 1.0), 0.0, 1),
    ((4, 3, 8), (0.5, 1.5, 1.0), 0.8, 2),
    ((1, 9, 11), (3.0, 0.8, 1.1), 1.2, 3),
    ((6, 5, 4), (1.2, 0.9, 0.9), 1.0, 4),
]


@pytest.mark.parametrize(("shape", "spacing", "sigma", "seed"), RANDOM_CASES)
def test_overlap_matches_set_reference(shape, spacing, sigma, seed):
    rng = np.random.default_rng(seed)
    target = _blobs(rng, shape, 4, sigma)
    pred = _blobs(rng, shape, 4, sigma)
    pred[pred == 3] = 0  # class 3 absent from pred: precision NaN, Dice 0
    m = overlap_metrics(confusion_matrix(pred, target, num_classes=5))  # class 4 absent from both
    for k in range(5):
        expected = ref.set_metrics(pred, target, k)
        for name, value in expected.items():
            assert_allclose(getattr(m, name)[k], value, equal_nan=True, err_msg=f"{name}[{k}]")
        assert_allclose(dice_score(pred, target, label=k), expected["dice"], equal_nan=True)
    for name, value in ref.global_metrics_loop(pred, target, 5).items():
        assert getattr(m, name) == pytest.approx(value), name
    assert weighted_dice(m.confusion, classes=[1, 2, 3]) == pytest.approx(
        ref.weighted_dice_loop(pred, target, [1, 2, 3])
    )


# ---------------------------------------------------------------------------
# Boundaries, surface distances, BF score
# ---------------------------------------------------------------------------


def test_single_voxel_distances_hand():
    # one voxel each, offset (2, 1, 3) voxels at spacing (2, 1, 0.5) mm: sqrt(16 + 1 + 2.25)
    pred = np.zeros((3, 3, 4), dtype=np.uint8)
    target = np.zeros_like(pred)
    pred[0, 0, 0] = 1
    target[2, 1, 3] = 1
    d = surface_distances(pred, target, classes=[1], spacing_mm=(2, 1, 0.5))
    for key in ("hd95_mm", "hd_mm", "assd_mm"):
        assert_allclose(d[key], [math.sqrt(19.25)])
    bf = [
        boundary_f1(pred, target, classes=[1], spacing_mm=(2, 1, 0.5), tolerance_mm=t)[0]
        for t in (4.3, 4.4)
    ]
    assert bf == [0.0, 1.0]


def test_identical_masks_and_percentile_key():
    rng = np.random.default_rng(5)
    x = _blobs(rng, (5, 6, 7), 3, 1.0)
    d = surface_distances(x, x, classes=[0, 1, 2], spacing_mm=(1, 2, 3))
    assert_array_equal(d["hd95_mm"], 0.0)
    assert_array_equal(d["assd_mm"], 0.0)
    assert_array_equal(
        boundary_f1(x, x, classes=[0, 1, 2], spacing_mm=(1, 2, 3), tolerance_mm=0), 1.0
    )
    assert sorted(surface_distances(x, x, classes=[1], spacing_mm=(1, 1, 1), percentile=99.5)) == [
        "assd_mm",
        "hd99.5_mm",
        "hd_mm",
    ]


def test_empty_masks_give_nan():
    x = np.zeros((3, 4, 5), dtype=np.uint8)
    y = x.copy()
    y[1, 1:3, 1:4] = 1
    for pred, target in ((x, y), (y, x), (x, x)):  # one empty, other empty, both empty
        d = surface_distances(pred, target, classes=[1], spacing_mm=(1, 1, 1))
        assert all(np.isnan(v[0]) for v in d.values())
        assert np.isnan(boundary_f1(pred, target, classes=[1], spacing_mm=(1, 1, 1))[0])
    assert surface_distances(y, y, classes=[], spacing_mm=(1, 1, 1))["hd95_mm"].shape == (0,)


def test_boundary_touches_array_border():
    # a full block: all voxels on the array faces are boundary (outside the array = background)
    from medseg.metrics import _boundary

    full = np.ones((3, 4, 5), dtype=bool)
    edge = _boundary(full)
    assert edge.sum() == 3 * 4 * 5 - 1 * 2 * 3
    assert_array_equal(edge, ref.boundary_loop(full))
    # 2D (Z == 1): in-plane boundary only, not every voxel
    block = np.zeros((1, 5, 6), dtype=np.uint8)
    block[0, 1:4, 1:5] = 1
    shifted = np.roll(block, 1, axis=1)
    d = surface_distances(shifted, block, classes=[1], spacing_mm=(7.0, 1.0, 1.0))
    expected = ref.surface_distances_brute(shifted, block, 1, (7.0, 1.0, 1.0))
    assert_allclose([d["hd95_mm"][0], d["hd_mm"][0], d["assd_mm"][0]], expected)
    assert d["hd_mm"][0] == 1.0  # a z spacing of 7 mm plays no part


@pytest.mark.parametrize(("shape", "spacing", "sigma", "seed"), RANDOM_CASES)
def test_boundary_matches_loop(shape, spacing, sigma, seed):
    from medseg.metrics import _boundary

    mask = _blobs(np.random.default_rng(seed), shape, 3, sigma) == 1
    assert_array_equal(_boundary(mask), ref.boundary_loop(mask))
    eroded = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(mask.ndim, 1))
    assert_array_equal(_boundary(mask), mask & ~eroded)


@pytest.mark.parametrize(("shape", "spacing", "sigma", "seed"), RANDOM_CASES)
def test_distances_match_brute_force(shape, spacing, sigma, seed):
    rng = np.random.default_rng(seed + 100)
    target = _blobs(rng, shape, 3, sigma)
    pred = _blobs(rng, shape, 3, sigma)
    pred[pred == 2] = 1  # class 2 empty in pred -> NaN; class 3 empty in both -> NaN
    classes = [0, 1, 2, 3]
    for q in (95.0, 50.0):
        d = surface_distances(pred, target, classes=classes, spacing_mm=spacing, percentile=q)
        expected = np.array(
            [ref.surface_distances_brute(pred, target, k, spacing, q) for k in classes]
        )
        key = f"hd{q:g}_mm"
        assert_allclose(d[key], expected[:, 0], rtol=1e-12, equal_nan=True)
        assert_allclose(d["hd_mm"], expected[:, 1], rtol=1e-12, equal_nan=True)
        assert_allclose(d["assd_mm"], expected[:, 2], rtol=1e-12, equal_nan=True)
    assert np.isnan(d["hd_mm"][2]) and np.isnan(d["hd_mm"][3])
    for tol in (0.0, 1.0, 1.3, 2.5):
        bf = boundary_f1(pred, target, classes=classes, spacing_mm=spacing, tolerance_mm=tol)
        expected_bf = [ref.boundary_f1_brute(pred, target, k, spacing, tol) for k in classes]
        assert_allclose(bf, expected_bf, rtol=1e-12, equal_nan=True, err_msg=f"tolerance {tol}")


def test_boundary_f1_large_tolerance_uses_edt_path():
    # > 2000 offsets in the tolerance ball switches to an EDT; both must match the reference
    rng = np.random.default_rng(7)
    target = _blobs(rng, (6, 7, 8), 3, 1.0)
    pred = _blobs(rng, (6, 7, 8), 3, 1.0)
    spacing = (0.3, 0.25, 0.2)
    for tol in (0.45, 2.0):  # about 100 offsets, then about 500 000 offsets
        bf = boundary_f1(pred, target, classes=[0, 1, 2], spacing_mm=spacing, tolerance_mm=tol)
        expected = [ref.boundary_f1_brute(pred, target, k, spacing, tol) for k in (0, 1, 2)]
        assert_allclose(bf, expected, rtol=1e-12)


def test_distance_argument_errors():
    x = np.zeros((3, 4, 5), dtype=np.uint8)
    kw = {"classes": [1], "spacing_mm": (1, 1, 1)}
    with pytest.raises(ValueError, match=r"pred must be a \(Z, Y, X\) label map, got ndim 2"):
        surface_distances(x[0], x[0], **kw)
    with pytest.raises(ValueError, match=r"target must be a \(Z, Y, X\) label map, got ndim 4"):
        boundary_f1(x, x[None], **kw)
    with pytest.raises(ValueError, match="same shape"):
        surface_distances(x, x[:2], **kw)
    with pytest.raises(
        ValueError, match=r"spacing_mm must be 3 positive numbers \(z, y, x\) in mm, got \(1, 1\)"
    ):
        surface_distances(x, x, classes=[1], spacing_mm=(1, 1))
    with pytest.raises(ValueError, match="spacing_mm must be 3 positive numbers"):
        boundary_f1(x, x, classes=[1], spacing_mm=(1, 0, 1))
    with pytest.raises(ValueError, match="spacing_mm must be 3 positive numbers"):
        boundary_f1(x, x, classes=[1], spacing_mm=None)
    with pytest.raises(ValueError, match="percentile must be a number in"):
        surface_distances(x, x, percentile=101, **kw)
    with pytest.raises(ValueError, match="tolerance_mm must be a finite number >= 0, got -1"):
        boundary_f1(x, x, tolerance_mm=-1, **kw)
    with pytest.raises(ValueError, match="tolerance_mm must be a finite number >= 0, got inf"):
        boundary_f1(x, x, tolerance_mm=math.inf, **kw)
    with pytest.raises(ValueError, match="classes must hold non-negative int labels, got -2"):
        boundary_f1(x, x, classes=[-2], spacing_mm=(1, 1, 1))
    with pytest.raises(TypeError, match="classes must be a sequence"):
        surface_distances(x, x, classes="1", spacing_mm=(1, 1, 1))
    with pytest.raises(TypeError, match="pred must be an integer or bool label map"):
        surface_distances(x.astype(np.float64), x, **kw)


# ---------------------------------------------------------------------------
# Agreement with MONAI and scipy
# ---------------------------------------------------------------------------

# MONAI computes distances in float32 and we in float64: agreement to 1e-4 mm + 1e-5 relative.
# Overlap scores are ratios of the same integer counts: agreement to 1e-6.
MONAI_DIST_TOL = {"rtol": 1e-5, "atol": 1e-4}
MONAI_OVERLAP_TOL = {"rtol": 0, "atol": 1e-6}


def _monai_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int, spacing) -> dict:
    """MONAI Dice, IoU (all classes) and HD95 / ASSD (foreground) on one-hot tensors."""
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")

    def one_hot(x):  # (Z, Y, X) -> (1, K, Z, Y, X) float32
        return torch.from_numpy(
            np.eye(num_classes, dtype=np.float32)[x].transpose(3, 0, 1, 2)[None].copy()
        )

    p, t = one_hot(pred), one_hot(target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": monai_metrics.DiceMetric(include_background=True, reduction="none")(p, t)[0],
            "iou": monai_metrics.MeanIoU(include_background=True, reduction="none")(p, t)[0],
            "hd95_mm": monai_metrics.HausdorffDistanceMetric(percentile=95)(p, t, spacing=spacing)[
                0
            ],
            "assd_mm": monai_metrics.SurfaceDistanceMetric(symmetric=True)(p, t, spacing=spacing)[
                0
            ],
            "hd_mm": monai_metrics.HausdorffDistanceMetric()(p, t, spacing=spacing)[0],
        }


def _check_against_monai(pred, target, num_classes, spacing):
    expected = _monai_metrics(pred, target, num_classes, spacing)
    m = overlap_metrics(confusion_matrix(pred, target, num_classes=num_classes))
    assert_allclose(m.dice, expected["dice"].numpy(), **MONAI_OVERLAP_TOL)
    assert_allclose(m.iou, expected["iou"].numpy(), **MONAI_OVERLAP_TOL)
    d = surface_distances(pred, target, classes=list(range(1, num_classes)), spacing_mm=spacing)
    for key in ("hd95_mm", "assd_mm", "hd_mm"):
        assert_allclose(d[key], expected[key].numpy(), **MONAI_DIST_TOL, err_msg=key)


@pytest.mark.parametrize(("shape", "spacing", "sigma", "seed"), RANDOM_CASES[:3] + RANDOM_CASES[4:])
def test_small_random_cases_match_monai(shape, spacing, sigma, seed):
    # 3D only: MONAI would treat a Z == 1 volume as 3D with every voxel on the boundary
    rng = np.random.default_rng(seed + 200)
    target = _blobs(rng, shape, 3, sigma)
    pred = _blobs(rng, shape, 3, sigma)
    if not all((x == k).any() for x in (pred, target) for k in range(3)):
        pytest.skip("a class is empty in this draw; MONAI reports inf there, we NaN")
    _check_against_monai(pred, target, 3, spacing)


def _load_ibsr_labels(subject: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """IBSR labels as uint8 (Z, Y, X) plus spacing (z, y, x) mm (nibabel gives x, y, z)."""
    nib = pytest.importorskip("nibabel")
    path = DATA / "ibsr18" / subject / f"{subject}_labels.nii.gz"
    if not path.exists():
        pytest.skip(f"IBSR data not found at {path}")
    img = nib.load(path)
    labels = np.asarray(img.dataobj, dtype=np.uint8).transpose(2, 1, 0)
    zooms = img.header.get_zooms()[:3]
    return np.ascontiguousarray(labels), (float(zooms[2]), float(zooms[1]), float(zooms[0]))


# A 64 x 48 x 64 block through ventricles, cortex and white matter of IBSR_01 (Z, Y, X).
IBSR_CROP = (slice(100, 164), slice(40, 88), slice(96, 160))


def _ibsr_pair(kind: str):
    target, spacing = _load_ibsr_labels("IBSR_01")
    if kind == "perturbed":  # shift 2 voxels along x, then erode white matter by one voxel
        pred = np.zeros_like(target)
        pred[:, :, 2:] = target[:, :, :-2]
        wm = pred == 3
        pred[wm & ~ndimage.binary_erosion(wm)] = 2
    else:  # another subject with the same spacing group
        pred, _ = _load_ibsr_labels("IBSR_03")
    return np.ascontiguousarray(pred[IBSR_CROP]), np.ascontiguousarray(target[IBSR_CROP]), spacing


@pytest.mark.parametrize("kind", ["perturbed", "other_subject"])
def test_real_ibsr_matches_monai(kind):
    pred, target, spacing = _ibsr_pair(kind)
    assert all((x == k).any() for x in (pred, target) for k in range(4))
    _check_against_monai(pred, target, 4, spacing)


def test_real_ibsr_boundary_f1_matches_scipy():
    # boundary = mask & ~scipy erosion (cross, border 0); BF from scipy EDTs on the whole crop
    pred, target, spacing = _ibsr_pair("perturbed")
    cross = ndimage.generate_binary_structure(3, 1)
    expected = []
    for k in (1, 2, 3):
        pb, tb = [
            (x == k) & ~ndimage.binary_erosion(x == k, cross, border_value=0)
            for x in (pred, target)
        ]
        d_pt = ndimage.distance_transform_edt(~tb, sampling=spacing)[pb]
        d_tp = ndimage.distance_transform_edt(~pb, sampling=spacing)[tb]
        precision, recall = np.mean(d_pt <= 2.0 + 1e-6), np.mean(d_tp <= 2.0 + 1e-6)
        expected.append(2 * precision * recall / (precision + recall))
    got = boundary_f1(pred, target, classes=[1, 2, 3], spacing_mm=spacing, tolerance_mm=2.0)
    assert_allclose(got, expected, rtol=1e-12)
    assert np.all((got > 0.3) & (got < 1.0))  # a real, imperfect overlap
