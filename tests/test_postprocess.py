"""Tests for medseg.postprocess: the dense CRF against the exact O(N^2) mean field
(tests/reference.py: dense_crf_naive), hand-computed two-pixel cases, the bilateral grid's
kernel sums against pair-by-pair sums, the grid search, and the largest-component clean-up
against a flood-fill reference and hand cases, plus every error."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

import medseg.postprocess as pp
from medseg.metrics import confusion_matrix, overlap_metrics
from medseg.postprocess import (
    CleanupCandidate,
    CleanupDecision,
    apply_cleanup,
    crf_grid_search,
    dense_crf,
    keep_largest_component,
    select_cleanup,
)
from tests import reference as ref

# (shape (Z, Y, X), K, C, spacing_mm, w_appearance): 2D grey, 2D RGB, 3D anisotropic. The
# appearance weight puts w1 * (mean kernel sum) at about 1-3 nats, the regime a CRF is used
# in: Q moves by 0.06-0.84 (median 0.49) but the mean field is not saturated (at 10+ nats
# it sits at a bifurcation, where any kernel error can flip whole regions).
CRF_CASES = [
    ((1, 7, 9), 2, 1, (1.0, 1.0, 1.0), 0.2),
    ((1, 6, 7), 3, 3, (1.0, 1.0, 1.0), 0.8),
    ((4, 5, 6), 4, 1, (2.0, 1.0, 0.8), 0.1),
]
CASE_IDS = ["2d-grey", "2d-rgb", "3d-aniso"]
SMOOTHNESS_ATOL = 5e-5  # exact filter; measured max |dQ| 2.2e-5 (4-sigma truncation)
# Appearance on: the bilateral grid is approximate (module docstring). Measured over seeds
# 0-19 of these 3 cases x 3 parameter sets (180 runs): max |dQ| 0.071 (median 0.011), labels
# equal in >= 95.2 % of voxels (mean 99.5 %); seed 0 (tested): max |dQ| 0.023, >= 97.6 %.
APPEARANCE_ATOL = 0.1
APPEARANCE_MIN_AGREEMENT = 0.95
APPEARANCE_PARAMS = [
    dict(sigma_alpha_mm=3.0, sigma_beta=1.0, w_smoothness=0.0),
    dict(sigma_alpha_mm=3.0, sigma_beta=1.0, w_smoothness=0.3),
    dict(sigma_alpha_mm=5.0, sigma_beta=0.5, w_smoothness=0.3),
]


def _random_case(shape, k: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of N(0, 1) logits, float32 (K, *shape); N(0, 1) image, float32 (C, *shape)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(k, *shape))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    image = rng.normal(size=(c, *shape))
    return probs.astype(np.float32), image.astype(np.float32)


def _crf(probs: np.ndarray, image: np.ndarray, **kwargs) -> np.ndarray:
    return dense_crf(torch.from_numpy(probs), torch.from_numpy(image), **kwargs).numpy()


# ---------------------------------------------------------------------------
# dense_crf: hand cases and invariants
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 4, 5)])
def test_no_pairwise_returns_probs(shape):
    """w1 = w2 = 0: Q = softmax(log P) = P."""
    probs, image = _random_case(shape, 3, 1)
    q = _crf(probs, image, w_appearance=0.0, w_smoothness=0.0, num_iterations=3)
    assert q.dtype == np.float32 and q.shape == probs.shape
    assert_allclose(q, probs, atol=1e-6)


def test_two_pixels_smoothness_by_hand():
    """Two pixels 1 mm apart, sigma_gamma 1 mm: kernel exp(-1/2) = 0.606531, one iteration.

    Pixel 0, P = (0.9, 0.1): logits log 0.9 + 0.606531 * 0.2 = 0.015946 and
    log 0.1 + 0.606531 * 0.8 = -1.817361, so Q_0 = 1 / (1 + exp(-1.833306)) = 0.862164.
    Pixel 1, P = (0.2, 0.8): -1.609438 + 0.606531 * 0.9 = -1.063560 and
    -0.223144 + 0.606531 * 0.1 = -0.162490, so Q_0 = 1 / (1 + exp(0.901070)) = 0.288833.
    """
    probs = np.array([0.9, 0.2, 0.1, 0.8], np.float32).reshape(2, 1, 1, 2)
    q = _crf(probs, np.zeros((1, 1, 1, 2), np.float32), w_appearance=0.0, num_iterations=1,
             w_smoothness=1.0, sigma_gamma_mm=1.0)  # fmt: skip
    assert_allclose(q[0, 0, 0], [0.862164, 0.288833], atol=1e-5)
    assert_allclose(q.sum(0), 1.0, atol=1e-6)
    # the same pair along z, 2 mm apart with sigma_gamma 2 mm: the same kernel value
    q3 = _crf(probs.reshape(2, 2, 1, 1), np.zeros((1, 2, 1, 1), np.float32),
              spacing_mm=(2.0, 1.0, 1.0), w_appearance=0.0, w_smoothness=1.0,
              sigma_gamma_mm=2.0, num_iterations=1)  # fmt: skip
    assert_allclose(q3[0, :, 0, 0], [0.862164, 0.288833], atol=1e-5)


def test_two_pixels_appearance_by_hand():
    """Intensities 0 and 1, 1 mm apart, sigma_alpha 1 mm, sigma_beta 1: kernel
    exp(-1/2 - 1/2) = 0.367879, w1 = 1, one iteration.

    Pixel 0: -0.105361 + 0.367879 * 0.2 = -0.031785 and -2.302585 + 0.367879 * 0.8 =
    -2.008282, Q_0 = 1 / (1 + exp(-1.976497)) = 0.878303. Pixel 1: -1.609438 + 0.331091 =
    -1.278346 and -0.223144 + 0.036788 = -0.186356, Q_0 = 1 / (1 + exp(1.091990)) = 0.251241.
    The grid gives the kernel as 0.3665 (0.4 % low), so Q agrees to 2e-3.
    """
    probs = np.array([0.9, 0.2, 0.1, 0.8], np.float32).reshape(2, 1, 1, 2)
    image = np.array([0.0, 1.0], np.float32).reshape(1, 1, 1, 2)
    q = _crf(probs, image, w_appearance=1.0, sigma_alpha_mm=1.0, sigma_beta=1.0,
             w_smoothness=0.0, num_iterations=1)  # fmt: skip
    assert_allclose(q[0, 0, 0], [0.878303, 0.251241], atol=2e-3)


def test_class_permutation_equivariance():
    """Permuting the classes of probs permutes Q the same way (Potts is symmetric)."""
    probs, image = _random_case((2, 5, 6), 4, 1, seed=3)
    order = [2, 0, 3, 1]
    kwargs = dict(w_appearance=0.1, sigma_alpha_mm=3.0, sigma_beta=1.0, w_smoothness=0.3)
    q = _crf(probs, image, **kwargs)
    q_perm = _crf(np.ascontiguousarray(probs[order]), image, **kwargs)
    assert_allclose(q_perm, q[order], atol=1e-5)


def test_2d_same_in_any_singleton_layout():
    """A 2D image as (1, Y, X) or (Y, 1, X) with the spacings moved along gives the same Q."""
    probs, image = _random_case((1, 6, 7), 3, 2, seed=4)
    kwargs = dict(w_appearance=0.2, sigma_alpha_mm=2.0, sigma_beta=1.0, w_smoothness=0.5)
    q = _crf(probs, image, spacing_mm=(5.0, 1.2, 0.8), **kwargs)
    moved = _crf(np.ascontiguousarray(probs.transpose(0, 2, 1, 3)),
                 np.ascontiguousarray(image.transpose(0, 2, 1, 3)),
                 spacing_mm=(1.2, 5.0, 0.8), **kwargs)  # fmt: skip
    assert_allclose(moved.transpose(0, 2, 1, 3), q, atol=1e-6)


def test_single_voxel_has_no_neighbours():
    """One voxel: no j != i, so both messages vanish and Q = P (the grid's self-response is
    subtracted exactly)."""
    probs = np.array([0.7, 0.2, 0.1], np.float32).reshape(3, 1, 1, 1)
    image = np.array([0.3, -1.0], np.float32).reshape(2, 1, 1, 1)
    q = _crf(probs, image, w_appearance=5.0, w_smoothness=5.0)
    assert_allclose(q[:, 0, 0, 0], [0.7, 0.2, 0.1], atol=1e-5)


def test_output_is_a_distribution_on_the_input_device():
    probs, image = _random_case((2, 6, 5), 3, 1, seed=5)
    q = dense_crf(torch.from_numpy(probs).double(), torch.from_numpy(image))
    assert q.dtype == torch.float32 and q.device == torch.device("cpu")
    assert q.shape == probs.shape
    assert_allclose(q.sum(0).numpy(), 1.0, atol=1e-5)
    assert float(q.min()) >= 0.0


# ---------------------------------------------------------------------------
# dense_crf against the exact dense mean field
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CRF_CASES, ids=CASE_IDS)
def test_smoothness_only_matches_naive(case):
    """The separable smoothness filter is exact up to the 4-sigma truncation."""
    shape, k, c, spacing, _ = case
    probs, image = _random_case(shape, k, c)
    kwargs = dict(w_appearance=0.0, w_smoothness=1.0, sigma_gamma_mm=1.5, num_iterations=5)
    got = _crf(probs, image, spacing_mm=spacing, **kwargs)
    want = ref.dense_crf_naive(probs, image, spacing, **kwargs)
    assert np.abs(want - probs).max() > 0.5  # the CRF does change Q here
    diff = float(np.abs(got - want).max())
    assert diff < SMOOTHNESS_ATOL, f"max |dQ| {diff:.2e}"
    assert_array_equal(got.argmax(0), want.argmax(0))


@pytest.mark.parametrize("params", APPEARANCE_PARAMS, ids=["app", "app+smooth", "wide+smooth"])
@pytest.mark.parametrize("case", CRF_CASES, ids=CASE_IDS)
def test_appearance_matches_naive_within_grid_error(case, params):
    """Full CRF vs the exact mean field: max |dQ| <= 0.1, >= 95 % equal labels (measured
    figures above APPEARANCE_ATOL)."""
    shape, k, c, spacing, w_appearance = case
    probs, image = _random_case(shape, k, c)
    got = _crf(probs, image, spacing_mm=spacing, w_appearance=w_appearance, **params)
    want = ref.dense_crf_naive(probs, image, spacing, w_appearance=w_appearance, **params)
    assert np.abs(want - probs).max() > 0.05  # the CRF does change Q here
    diff = float(np.abs(got - want).max())
    agreement = float((got.argmax(0) == want.argmax(0)).mean())
    assert diff <= APPEARANCE_ATOL, f"max |dQ| {diff:.3f}, labels equal {agreement:.1%}"
    assert agreement >= APPEARANCE_MIN_AGREEMENT, f"labels equal {agreement:.1%}"


@pytest.mark.parametrize(
    "shape, c, spacing, sigmas",
    [
        ((1, 10, 12), 1, (1.0, 1.0, 1.0), (3.0, 1.0)),
        ((1, 8, 9), 3, (1.0, 0.5, 0.5), (2.0, 1.0)),
        ((4, 5, 6), 1, (2.0, 1.0, 0.8), (3.0, 0.5)),
    ],
    ids=["2d-grey", "2d-rgb", "3d-aniso"],
)
def test_bilateral_grid_sums_within_stated_error(shape, c, spacing, sigmas):
    """Appearance kernel sums (one filtering, no mean field) vs pair-by-pair sums.

    Module docstring bound at h = 0.5: median relative error about 1 %, max below 10 %.
    Measured here: median 0.4-1.4 %, max 2.4-5.5 %.
    """
    rng = np.random.default_rng(1)
    image = rng.normal(size=(c, *shape)).astype(np.float32)
    values = rng.uniform(size=(2, *shape)).astype(np.float32)
    grid = pp._BilateralGrid(torch.from_numpy(image), spacing, *sigmas)
    assert grid.cell == pytest.approx(pp.GRID_CELL)
    got = grid.filter(torch.from_numpy(values).reshape(2, -1).T.contiguous()).T.numpy()
    want = ref.appearance_sums_naive(image, values, spacing, *sigmas).reshape(2, -1)
    rel = np.abs(got - want) / want
    assert np.median(rel) < 0.02, f"median relative error {np.median(rel):.4f}"
    assert rel.max() < 0.10, f"max relative error {rel.max():.4f}"


def test_grid_coarsens_to_fit_and_refuses_beyond(monkeypatch):
    image = torch.linspace(0.0, 20.0, 30 * 40).reshape(1, 1, 30, 40)
    fine = pp._BilateralGrid(image, (1.0, 1.0, 1.0), 2.0, 1.0)  # 31 x 41 x 42 cells at 0.5
    assert fine.cell == pytest.approx(0.5)
    monkeypatch.setattr(pp.crf, "MAX_GRID_CELLS", 10_000)  # read by crf._grid_cell
    coarse = pp._BilateralGrid(image, (1.0, 1.0, 1.0), 2.0, 1.0)
    assert 0.5 < coarse.cell <= pp.MAX_GRID_CELL
    assert math.prod(coarse.dims) <= 10_000
    monkeypatch.setattr(pp.crf, "MAX_GRID_CELLS", 100)  # read by crf._grid_cell
    with pytest.raises(ValueError, match="sigma_alpha_mm and sigma_beta must be large enough"):
        dense_crf(torch.full((2, 1, 30, 40), 0.5), image)


def test_large_rgb_image_runs():
    """A 2D RGB 128 x 170 image (5-D grid) at microscopy-like scales, one iteration
    (benchmarks/bench_crf.py times 512 x 680)."""
    rng = np.random.default_rng(2)
    image = torch.from_numpy(rng.uniform(size=(3, 1, 128, 170)).astype(np.float32))
    probs = torch.from_numpy(np.stack([image[0], 1 - image[0]]).astype(np.float32))
    q = dense_crf(probs, image, w_appearance=0.05, sigma_alpha_mm=20.0, sigma_beta=0.1,
                  w_smoothness=0.3, num_iterations=1)  # fmt: skip
    assert q.shape == probs.shape and bool(torch.isfinite(q).all())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    probs, image = _random_case((3, 9, 10), 3, 1, seed=6)
    kwargs = dict(w_appearance=0.1, sigma_alpha_mm=3.0, sigma_beta=1.0, w_smoothness=0.3)
    cpu = dense_crf(torch.from_numpy(probs), torch.from_numpy(image), **kwargs)
    gpu = dense_crf(torch.from_numpy(probs).cuda(), torch.from_numpy(image).cuda(), **kwargs)
    assert gpu.device.type == "cuda"
    assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=1e-4)


# ---------------------------------------------------------------------------
# dense_crf errors
# ---------------------------------------------------------------------------


def _ok() -> tuple[torch.Tensor, torch.Tensor]:
    probs, image = _random_case((1, 3, 4), 2, 1)
    return torch.from_numpy(probs), torch.from_numpy(image)


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda p, i: (p.numpy(), i), TypeError, "probs must be a torch.Tensor"),
        (lambda p, i: (p, i.numpy()), TypeError, "image must be a torch.Tensor"),
        (lambda p, i: (p[0], i), ValueError, "probs must be 4D"),
        (lambda p, i: ((p > 0.5).long(), i), TypeError, "probs must be a floating-point"),
        (lambda p, i: (p[:1] * 0 + 1, i), ValueError, "K >= 2"),
        (lambda p, i: (p, i[:, :, :2]), ValueError, "same spatial shape"),
        (lambda p, i: (p * 2, i), ValueError, r"probabilities in \[0, 1\]"),
        (lambda p, i: (p * 0.5, i), ValueError, "must sum to 1"),
        (lambda p, i: (p, i * float("nan")), ValueError, "finite intensities"),
        (lambda p, i: (p[:, :, :0], i[:, :, :0]), ValueError, "must not be empty"),
    ],
)
def test_input_errors(mutate, error, match):
    probs, image = mutate(*_ok())
    with pytest.raises(error, match=match):
        dense_crf(probs, image)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(spacing_mm=(1.0, 1.0)), ValueError, "spacing_mm must be 3 positive"),
        (dict(spacing_mm=(1.0, 0.0, 1.0)), ValueError, "spacing_mm must be 3 positive"),
        (dict(spacing_mm="abc"), ValueError, "spacing_mm must be 3 positive"),
        (dict(w_appearance=-1.0), ValueError, "w_appearance must be a finite number >= 0"),
        (dict(w_smoothness=float("inf")), ValueError, "w_smoothness must be"),
        (dict(sigma_alpha_mm=0.0), ValueError, "sigma_alpha_mm must be a finite number > 0"),
        (dict(sigma_beta=-0.5), ValueError, "sigma_beta must be"),
        (dict(sigma_gamma_mm=0), ValueError, "sigma_gamma_mm must be"),
        (dict(sigma_beta="1"), TypeError, "sigma_beta must be a number"),
        (dict(w_appearance=True), TypeError, "w_appearance must be a number"),
        (dict(num_iterations=0), ValueError, "num_iterations must be >= 1"),
        (dict(num_iterations=2.0), TypeError, "num_iterations must be an int"),
    ],
)
def test_parameter_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        dense_crf(*_ok(), **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_error():
    probs, image = _ok()
    with pytest.raises(ValueError, match="same device"):
        dense_crf(probs.cuda(), image)


# ---------------------------------------------------------------------------
# crf_grid_search
# ---------------------------------------------------------------------------


def _dice_of(pred: np.ndarray, target: np.ndarray, classes) -> np.ndarray:
    return overlap_metrics(confusion_matrix(pred, target, num_classes=3)).dice[classes]


def test_grid_search_rows_match_dense_crf():
    probs_a, image_a = _random_case((1, 6, 7), 3, 1, seed=7)
    probs_b, image_b = _random_case((2, 4, 5), 3, 1, seed=8)
    target_a = np.random.default_rng(9).integers(0, 3, size=(1, 6, 7)).astype(np.uint8)
    target_b = probs_b.argmax(0).astype(np.uint8)
    cases = [
        (torch.from_numpy(probs_a), torch.from_numpy(image_a), target_a, (1.0, 1.0, 1.0)),
        (torch.from_numpy(probs_b), torch.from_numpy(image_b), target_b, (2.0, 1.0, 1.0)),
    ]
    table = crf_grid_search(cases, num_classes=3, classes=[1, 2], w_appearance=(0.0, 0.3),
                            sigma_alpha_mm=(2.0, 4.0), sigma_beta=1.0, w_smoothness=0.5,
                            num_iterations=3)  # fmt: skip
    assert isinstance(table, pd.DataFrame) and len(table) == 1 + 2 * 2
    assert list(table["mean_dice"]) == sorted(table["mean_dice"], reverse=True)
    assert {"crf", "delta_dice", "dice_1", "dice_2"} <= set(table.columns)
    base = table[~table["crf"]].iloc[0]
    base_dice = [
        _dice_of(p.argmax(0).astype(np.uint8), t, [1, 2])
        for p, t in ((probs_a, target_a), (probs_b, target_b))
    ]
    assert base["dice_1"] == pytest.approx(np.nanmean([d[0] for d in base_dice]))
    # every CRF row equals running dense_crf with its parameters
    for _, row in table[table["crf"]].iterrows():
        per_case = []
        for probs, image, target, spacing in cases:
            q = dense_crf(probs, image, spacing_mm=spacing, w_appearance=row["w_appearance"],
                          sigma_alpha_mm=row["sigma_alpha_mm"], sigma_beta=row["sigma_beta"],
                          w_smoothness=0.5, num_iterations=3)  # fmt: skip
            per_case.append(_dice_of(q.argmax(0).numpy().astype(np.uint8), target, [1, 2]))
        per_class = np.nanmean(np.stack(per_case), axis=0)
        assert row["mean_dice"] == pytest.approx(np.nanmean(per_class))
        assert row["delta_dice"] == pytest.approx(row["mean_dice"] - base["mean_dice"])


def test_grid_search_errors():
    probs, image = _ok()
    target = np.zeros((1, 3, 4), np.uint8)
    case = (probs, image, target, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="cases must hold at least one"):
        crf_grid_search([], num_classes=2, classes=[1])
    with pytest.raises(ValueError, match="classes must be distinct labels in"):
        crf_grid_search([case], num_classes=2, classes=[2])
    with pytest.raises(ValueError, match=r"cases\[0\] probs must have num_classes=3"):
        crf_grid_search([case], num_classes=3, classes=[1])
    with pytest.raises(ValueError, match=r"cases\[0\] target must be a \(Z, Y, X\) ndarray"):
        crf_grid_search([(probs, image, target[0], (1, 1, 1))], num_classes=2, classes=[1])
    with pytest.raises(ValueError, match=r"cases\[0\] must be a \(probs, image, target"):
        crf_grid_search([(probs, image)], num_classes=2, classes=[1])
    with pytest.raises(ValueError, match="w_appearance must hold at least one value"):
        crf_grid_search([case], num_classes=2, classes=[1], w_appearance=[])
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        crf_grid_search([case], num_classes=1, classes=[0])


# ---------------------------------------------------------------------------
# Largest connected component
# ---------------------------------------------------------------------------


def test_keep_largest_component_by_hand():
    pred = np.zeros((2, 3, 4), np.uint8)
    pred[0, 0, 0] = 1  # a diagonal neighbour (corner) of the 1s below, in 3D
    pred[1, 1, 1:3] = 1  # 2 voxels
    pred[0, 2, 3] = 2
    pred[1, 2, 3] = 2  # face neighbours: one component of 2
    pred[0, 0, 3] = 2
    # connectivity 1: 1 has components {(0,0,0)} and {(1,1,1), (1,1,2)}; 2 has {(0,0,3)}
    # and {(0,2,3), (1,2,3)}; the small ones go to 0
    want = pred.copy()
    want[0, 0, 0] = 0
    want[0, 0, 3] = 0
    assert_array_equal(keep_largest_component(pred, classes=[1, 2], connectivity=1), want)
    # connectivity 3: (0,0,0) touches (1,1,1) by a corner, so 1 is one component
    want3 = pred.copy()
    want3[0, 0, 3] = 0
    assert_array_equal(keep_largest_component(pred, classes=[1, 2], connectivity=3), want3)
    # only class 2 listed: class 1 untouched
    assert keep_largest_component(pred, classes=[2], connectivity=1)[0, 0, 0] == 1


def test_keep_largest_component_foreground_keeps_labels_and_ties_go_first():
    pred = np.array([[[1, 2, 0, 3, 3], [0, 0, 0, 0, 0], [2, 2, 0, 0, 1]]], np.uint8)
    out = keep_largest_component(pred, classes="foreground", connectivity=1)
    # components of the foreground: {1, 2} (top left), {3, 3}, {2, 2} and {1}: sizes 2, 2,
    # 2, 1; the first in raster order wins the tie; labels inside keep their values
    want = np.zeros_like(pred)
    want[0, 0, :2] = [1, 2]
    assert_array_equal(out, want)
    assert out.dtype == np.uint8
    assert pred[0, 0, 3] == 3  # input not modified


@pytest.mark.parametrize("connectivity", [1, 2, 3])
@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 6, 7)])
def test_keep_largest_component_matches_flood_fill(connectivity, shape):
    rng = np.random.default_rng(sum(shape) + connectivity)
    for _ in range(3):
        pred = rng.choice(4, size=shape, p=[0.4, 0.2, 0.2, 0.2]).astype(np.uint8)
        for classes in ([1, 2, 3], [2], "foreground"):
            got = keep_largest_component(pred, classes=classes, connectivity=connectivity)
            want = ref.keep_largest_component_loop(pred, classes, connectivity=connectivity)
            assert_array_equal(got, want, err_msg=f"classes={classes}")


@pytest.mark.parametrize(
    "pred, kwargs, error, match",
    [
        ([[[1]]], dict(classes=[1]), TypeError, "pred must be a numpy uint8"),
        (np.zeros((1, 2, 2), np.float32), dict(classes=[1]), TypeError, "integer label map"),
        (np.zeros((2, 2), np.uint8), dict(classes=[1]), ValueError, r"\(Z, Y, X\) label map"),
        (np.zeros((1, 2, 2), np.uint8), dict(classes=[0]), ValueError, "foreground labels > 0"),
        (np.zeros((1, 2, 2), np.uint8), dict(classes=[1.0]), TypeError, "int labels"),
        (np.zeros((1, 2, 2), np.uint8), dict(classes="all"), ValueError, '"foreground"'),
        (np.zeros((1, 2, 2), np.uint8), dict(classes=3), TypeError, "sequence of int labels"),
        (np.zeros((1, 2, 2), np.uint8), dict(classes=[1], connectivity=4), ValueError,
         "connectivity must be 1"),
        (np.zeros((1, 2, 2), np.uint8), dict(classes=[1], connectivity=1.0), TypeError,
         "connectivity must be an int"),
    ],
)  # fmt: skip
def test_keep_largest_component_errors(pred, kwargs, error, match):
    with pytest.raises(error, match=match):
        keep_largest_component(pred, **kwargs)


# ---------------------------------------------------------------------------
# select_cleanup / apply_cleanup
# ---------------------------------------------------------------------------


def _cleanup_case() -> tuple[np.ndarray, np.ndarray]:
    """Class 1: a 4 x 2 block; class 2: two blocks (2 and 1 voxels) touching it; the
    prediction adds a class-1 island at (1, 7) far from everything."""
    target = np.array(
        [
            [2, 2, 1, 1, 0, 0, 0, 0],
            [0, 0, 1, 1, 0, 0, 0, 0],
            [0, 0, 1, 1, 0, 0, 0, 0],
            [0, 2, 1, 1, 0, 0, 0, 0],
        ],
        np.uint8,
    )[None]
    pred = target.copy()
    pred[0, 1, 7] = 1
    return pred, target


def test_select_cleanup_by_hand():
    """Baseline: Dice_1 = 2*8 / (9 + 8) = 16/17, Dice_2 = 1, mean 0.970588.
    Foreground as one removes the island: mean 1.0, kept. Class 1 then changes nothing:
    1.0 -> 1.0, kept (does not lower). Class 2 drops its 1-voxel block: Dice_2 =
    2*2 / (2 + 3) = 0.8, mean 0.9 < 1.0, not kept."""
    pred, target = _cleanup_case()
    decision = select_cleanup([pred], [target], num_classes=3, classes=[1, 2], connectivity=1)
    assert decision.foreground is True
    assert decision.classes == (1,)
    assert decision.connectivity == 1
    steps = [(c.target, c.applied) for c in decision.candidates]
    assert steps == [("foreground", True), (1, True), (2, False)]
    fg, one, two = decision.candidates
    assert fg.dice_before == pytest.approx((16 / 17 + 1) / 2)
    assert fg.dice_after == pytest.approx(1.0)
    assert (one.dice_before, one.dice_after) == (pytest.approx(1.0), pytest.approx(1.0))
    assert two.dice_after == pytest.approx((1.0 + 0.8) / 2)
    cleaned = apply_cleanup(pred, decision)
    assert_array_equal(cleaned, target)
    with pytest.raises(AttributeError):
        decision.foreground = False  # type: ignore[misc]


def test_select_cleanup_rejects_foreground_when_it_hurts():
    """Class 2 far from class 1: foreground-as-one would delete it, so it is not kept."""
    target = np.array([[[1, 1, 1, 0, 0, 2, 2]]], np.uint8)
    pred = np.array([[[1, 1, 1, 0, 1, 2, 2]]], np.uint8)
    decision = select_cleanup([pred], [target], num_classes=3, classes=[1, 2], connectivity=1)
    assert decision.foreground is False  # it would remove class 2 entirely (Dice 0)
    assert decision.classes == (1, 2)  # class 1 loses its stray voxel; class 2 unchanged
    assert_array_equal(apply_cleanup(pred, decision), target)


def test_apply_cleanup_matches_manual_steps():
    rng = np.random.default_rng(11)
    pred = rng.choice(3, size=(3, 5, 6), p=[0.5, 0.25, 0.25]).astype(np.uint8)
    decision = CleanupDecision(True, (2,), 2, (CleanupCandidate("foreground", 0.5, 0.6, True),))
    manual = keep_largest_component(pred, classes="foreground", connectivity=2)
    manual = keep_largest_component(manual, classes=[2], connectivity=2)
    assert_array_equal(apply_cleanup(pred, decision), manual)
    nothing = CleanupDecision(False, (), 3, ())
    out = apply_cleanup(pred, nothing)
    assert_array_equal(out, pred) and out is not pred


def test_cleanup_errors():
    pred, target = _cleanup_case()
    with pytest.raises(ValueError, match="same length"):
        select_cleanup([pred], [], num_classes=3, classes=[1])
    with pytest.raises(ValueError, match="same length"):
        select_cleanup([], [], num_classes=3, classes=[1])
    with pytest.raises(ValueError, match="foreground labels > 0"):
        select_cleanup([pred], [target], num_classes=3, classes=[0, 1])
    with pytest.raises(ValueError, match=r"targets\[0\] must be a \(Z, Y, X\)"):
        select_cleanup([pred], [target[0]], num_classes=3, classes=[1])
    with pytest.raises(ValueError, match="label values must be < num_classes=2"):
        select_cleanup([pred], [target], num_classes=2, classes=[1])
    with pytest.raises(TypeError, match="decision must be a CleanupDecision"):
        apply_cleanup(pred, {"foreground": True})  # type: ignore[arg-type]
