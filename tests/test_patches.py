"""Tests for medseg.patches: against the loop references in tests/reference.py,
hand-computed cases and invariants."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from medseg.patches import (
    PatchSpec,
    _gaussian_weight,
    _pad_indices,
    _VotePacking,
    active_windows,
    extract_patches,
    extract_patches_at,
    grid_starts,
    make_grid,
    predict_sliding_window,
    reassemble_patches,
)
from tests import reference as ref

SHAPES_2P5D = [(1, 5, 13, 17), (2, 4, 9, 11), (1, 1, 6, 6), (1, 7, 10, 10)]
SPECS_2P5D = [((6, 5), (3, 2), 3), ((4, 4), (1, 3), 5), ((4, 4), (2, 2), 1), ((10, 10), (4, 4), 3)]


def _unique_image(shape) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


# --- grids ------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,patch,stride", list(itertools.product([7, 10, 23, 40, 41], [1, 4, 7], [1, 3, 4]))
)
def test_grid_starts_matches_reference(size, patch, stride):
    if stride > patch:
        pytest.skip("stride > patch is rejected by PatchSpec")
    assert grid_starts(size, patch, stride).tolist() == ref.grid_starts_loop(size, patch, stride)


def test_grid_starts_hand_cases():
    # 128 rows, 40x40 patches at stride 10: 0..80 then one flush start at 88
    assert grid_starts(128, 40, 10).tolist() == [0, 10, 20, 30, 40, 50, 60, 70, 80, 88]
    assert grid_starts(40, 40, 10).tolist() == [0]


def test_grid_covers_every_voxel():
    g = make_grid((3, 37, 53), PatchSpec.two_and_half_d(40 // 4, 3))
    covered = np.zeros(g.spatial_shape, bool)
    for z, y, x in g.locations():
        covered[z, y : y + 10, x : x + 10] = True
    assert covered.all()


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_pad_indices_matches_reference(mode, n):
    idx = np.arange(-7, n + 7)
    got = _pad_indices(idx, n, mode)
    if mode == "constant":
        expected = [i if 0 <= i < n else -1 for i in idx]
    else:
        expected = [ref.pad_index_loop(int(i), n, mode) for i in idx]
    assert got.tolist() == expected


# --- extraction -------------------------------------------------------------


@pytest.mark.parametrize("shape,spec_args", list(itertools.product(SHAPES_2P5D, SPECS_2P5D)))
@pytest.mark.parametrize("pad_mode", ["reflect", "replicate"])
def test_extract_2p5d_matches_loop(shape, spec_args, pad_mode):
    size, stride, slices = spec_args
    if size[0] > shape[2] or size[1] > shape[3]:
        pytest.skip("patch larger than image")
    image = _unique_image(shape)
    spec = PatchSpec.two_and_half_d(size, stride, num_slices=slices, pad_mode=pad_mode)
    patches, grid = extract_patches(image, spec)
    expected, starts = ref.extract_patches_2p5d_loop(image, size, stride, slices, pad_mode)
    np.testing.assert_array_equal(patches, expected)
    np.testing.assert_array_equal(grid.locations(), starts)
    patches_t, _ = extract_patches(torch.from_numpy(image), spec)
    assert isinstance(patches_t, torch.Tensor)
    np.testing.assert_array_equal(patches_t.numpy(), expected)


def test_extract_2p5d_constant_padding_is_zero():
    image = _unique_image((1, 3, 7, 8)) + 1
    patches, _ = extract_patches(image, PatchSpec.two_and_half_d((7, 8), 1, pad_mode="constant"))
    padded = np.pad(image[0], ((1, 1), (0, 0), (0, 0)))
    for z in range(3):
        np.testing.assert_array_equal(patches[z], padded[z : z + 3])


def test_extract_hand_case_2p5d_channels():
    # 3 slices of 4x4, patch 4x4: slice z's patch holds slices z-1, z, z+1 (reflect at ends)
    image = np.stack([np.full((4, 4), v, np.float32) for v in (10, 20, 30)])[None]
    patches, _ = extract_patches(image, PatchSpec.two_and_half_d(4, 1))
    assert patches[:, :, 0, 0].tolist() == [[20, 10, 20], [10, 20, 30], [20, 30, 20]]


@pytest.mark.parametrize(
    "shape,patch,stride",
    [((1, 9, 10, 11), (4, 5, 6), (2, 3, 2)), ((2, 5, 6, 7), (5, 3, 7), (1, 1, 4))],
)
def test_extract_3d_matches_loop(shape, patch, stride):
    image = _unique_image(shape)
    patches, grid = extract_patches(image, PatchSpec(patch, stride))
    expected, starts = ref.extract_patches_loop(image, patch, stride)
    np.testing.assert_array_equal(patches, expected)
    np.testing.assert_array_equal(grid.locations(), starts)


def test_extract_slice_axis_moves_the_volume():
    image = _unique_image((1, 5, 6, 7))
    spec = PatchSpec.two_and_half_d(4, 2, slice_axis=2)
    patches, grid = extract_patches(image, spec)
    moved = np.moveaxis(image, 3, 1)
    expected, _ = ref.extract_patches_2p5d_loop(moved, (4, 4), (2, 2), 3, "reflect")
    np.testing.assert_array_equal(patches, expected)
    assert grid.spatial_shape == (7, 5, 6)


def test_extract_is_a_view_free_copy():
    # patches must not alias the image: writing to them leaves the image unchanged
    image = _unique_image((1, 3, 8, 8))
    patches, _ = extract_patches(image, PatchSpec.two_and_half_d(4, 2))
    patches[...] = -1
    assert image.min() == 0


# --- reassembly ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_classes", [2, 4, 5, 11])
def test_vote_matches_loop(seed, num_classes):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(6, 15)), int(rng.integers(6, 15)))
    size, stride = (4, 5), (int(rng.integers(1, 5)), int(rng.integers(1, 6)))
    grid = make_grid(shape, PatchSpec.two_and_half_d(size, stride))
    labels = rng.integers(0, num_classes, (grid.num_patches, 1, *size)).astype(np.uint8)
    out = reassemble_patches(labels, grid, num_classes=num_classes)
    exp_labels, exp_agree = ref.vote_loop(labels, grid.locations(), shape, num_classes)
    np.testing.assert_array_equal(out.labels, exp_labels)
    np.testing.assert_allclose(out.confidence, exp_agree, rtol=1e-6)
    out_t = reassemble_patches(torch.from_numpy(labels), grid, num_classes=num_classes)
    np.testing.assert_array_equal(out_t.labels.numpy(), exp_labels)
    np.testing.assert_allclose(out_t.confidence.numpy(), exp_agree, rtol=1e-6)


def test_vote_3d_matches_loop():
    rng = np.random.default_rng(7)
    grid = make_grid((9, 10, 11), PatchSpec((4, 5, 6), (2, 3, 2)))
    labels = rng.integers(0, 6, (grid.num_patches, 4, 5, 6)).astype(np.uint8)
    out = reassemble_patches(labels, grid, num_classes=6)
    exp_labels, exp_agree = ref.vote_loop(labels, grid.locations(), (9, 10, 11), 6)
    np.testing.assert_array_equal(out.labels, exp_labels)
    np.testing.assert_allclose(out.confidence, exp_agree, rtol=1e-6)


def test_vote_hand_case_and_tie_rule():
    # 1x4 row, patches of width 2 at stride 1 (starts 0, 1, 2); votes typed out:
    # patch0 -> [1, 1], patch1 -> [2, 2], patch2 -> [2, 0]
    grid = make_grid((1, 1, 4), PatchSpec((1, 1, 2), (1, 1, 1)))
    labels = np.array([[1, 1], [2, 2], [2, 0]], np.uint8).reshape(3, 1, 1, 2)
    out = reassemble_patches(labels, grid, num_classes=3)
    # voxel0: {1};  voxel1: {1, 2} tie -> lowest class 1;  voxel2: {2, 2};  voxel3: {0}
    assert out.labels.ravel().tolist() == [1, 1, 2, 0]
    np.testing.assert_allclose(out.confidence.ravel(), [1.0, 0.5, 1.0, 1.0])


def test_vote_identical_one_hot_patches_return_labels():
    rng = np.random.default_rng(3)
    volume = rng.integers(0, 4, (3, 23, 19)).astype(np.uint8)
    spec = PatchSpec.two_and_half_d(8, 3)
    patches, grid = extract_patches(volume[None].astype(np.float32), spec)
    centre = patches[:, 1].astype(np.int64)  # each patch's own labels
    one_hot = np.eye(4, dtype=np.float32)[centre].transpose(0, 3, 1, 2)  # (N, K, py, px)
    out = reassemble_patches(one_hot, grid)
    np.testing.assert_array_equal(out.labels, volume)
    assert float(out.confidence.min()) == 1.0


@pytest.mark.parametrize("mode", ["mean", "gaussian"])
def test_mean_modes_match_loop(mode):
    rng = np.random.default_rng(5)
    grid = make_grid((2, 11, 13), PatchSpec.two_and_half_d((6, 5), (2, 3)))
    scores = rng.normal(size=(grid.num_patches, 3, 6, 5)).astype(np.float32)
    out = reassemble_patches(scores, grid, mode=mode, return_probs=True)
    probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    weight = _gaussian_weight((1, 6, 5)) if mode == "gaussian" else None
    expected = ref.weighted_mean_loop(probs[:, :, None], grid.locations(), (2, 11, 13), weight)
    np.testing.assert_allclose(out.probs, expected, atol=1e-5)
    np.testing.assert_array_equal(out.labels, expected.argmax(0))
    np.testing.assert_allclose(out.confidence, expected.max(0), atol=1e-5)


def test_mean_hand_case():
    # two 1x2 patches on a 1x3 row (starts 0 and 1); class-1 probability typed out
    grid = make_grid((1, 1, 3), PatchSpec((1, 1, 2), (1, 1, 1)))
    p1 = np.array([[0.2, 0.6], [0.8, 0.4]])  # patch0 voxels 0,1; patch1 voxels 1,2
    scores = np.log(np.stack([1 - p1, p1], axis=1)).astype(np.float32).reshape(2, 2, 1, 1, 2)
    out = reassemble_patches(scores, grid, mode="mean", return_probs=True)
    np.testing.assert_allclose(out.probs[1].ravel(), [0.2, 0.7, 0.4], atol=1e-6)
    assert out.labels.ravel().tolist() == [0, 1, 0]


def test_gaussian_weight_shape_and_centre():
    w = _gaussian_weight((1, 40, 40))
    assert w.shape == (1, 40, 40) and w.dtype == np.float32
    assert w.max() == pytest.approx(1.0) and w[0, 0, 0] < 0.01
    np.testing.assert_allclose(w, w[:, ::-1, ::-1])  # symmetric


@pytest.mark.parametrize(
    "num_classes,max_votes", [(4, 16), (4, 255), (7, 16), (4, 300), (20, 40000)]
)
def test_vote_packing_roundtrip(num_classes, max_votes):
    packing = _VotePacking.for_votes(num_classes, max_votes)
    rng = np.random.default_rng(0)
    counts = rng.integers(0, max_votes + 1, (num_classes, 5, 3))
    words = np.einsum("wk,k...->w...", packing.lut().astype(np.int64), counts)
    words = words.astype(packing.lut().dtype)
    np.testing.assert_array_equal(packing.unpack(words), counts)
    np.testing.assert_array_equal(packing.unpack(torch.from_numpy(words)).numpy(), counts)


# --- invariants: extraction followed by reassembly is the identity -------------


@pytest.mark.parametrize(
    "shape,size,stride",
    [
        ((1, 3, 13, 17), (5, 7), (2, 3)),
        ((2, 1, 9, 40), (9, 10), (4, 10)),
        ((1, 4, 41, 43), (40, 40), (10, 10)),
    ],
)
@pytest.mark.parametrize("mode", ["mean", "gaussian"])
def test_extract_then_reassemble_is_identity_2p5d(shape, size, stride, mode):
    image = _unique_image(shape)
    spec = PatchSpec.two_and_half_d(size, stride)
    patches, grid = extract_patches(image, spec)
    centre = patches.reshape(patches.shape[0], shape[0], 3, *size)[:, :, 1]  # (N, C, py, px)
    values = np.log(np.clip(centre, 1e-6, None))  # softmax(log x) = x / sum(x)
    out = reassemble_patches(values.astype(np.float32), grid, mode=mode, return_probs=True)
    expected = image / np.clip(image, 1e-6, None).sum(0, keepdims=True) if shape[0] > 1 else None
    if expected is None:  # one channel: softmax is all ones, so test the labels path below
        assert np.allclose(out.probs, 1.0)
    else:
        np.testing.assert_allclose(
            out.probs, np.clip(image, 1e-6, None) / np.clip(image, 1e-6, None).sum(0), rtol=1e-4
        )


@pytest.mark.parametrize(
    "shape,patch,stride",
    [
        ((5, 6, 7), (2, 3, 4), (1, 2, 3)),
        ((9, 10, 11), (4, 5, 6), (3, 5, 1)),
        ((3, 3, 3), (3, 3, 3), (1, 1, 1)),
    ],
)
def test_extract_then_vote_is_identity_3d(shape, patch, stride):
    volume = (np.arange(int(np.prod(shape))) % 7).reshape(shape).astype(np.uint8)
    patches, grid = extract_patches(volume[None].astype(np.float32), PatchSpec(patch, stride))
    out = reassemble_patches(patches[:, 0].astype(np.uint8), grid, num_classes=7)
    np.testing.assert_array_equal(out.labels, volume)


# --- streaming prediction -----------------------------------------------------


class _Conv2p5d(torch.nn.Module):
    """A fixed, spatially varying 2D predictor: 3 slice channels -> 4 logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)  # fixed weights; expected values depend only on this seed
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("mode", ["vote", "mean", "gaussian"])
@pytest.mark.parametrize("patches_per_slab", [1, 50, 100_000])
def test_streaming_equals_one_shot(mode, patches_per_slab):
    rng = np.random.default_rng(1)
    image = rng.random((1, 9, 23, 19), dtype=np.float32)
    model = _Conv2p5d().eval()
    spec = PatchSpec.two_and_half_d(8, 3, slice_axis=2)
    out = predict_sliding_window(
        image,
        model,
        spec,
        mode=mode,
        patches_per_slab=patches_per_slab,
        batch_size=7,
        return_probs=True,
    )
    patches, grid = extract_patches(image, spec)
    with torch.no_grad():
        logits = model(torch.from_numpy(patches)).numpy()
    one_shot = reassemble_patches(logits, grid, mode=mode, return_probs=True)
    np.testing.assert_array_equal(out.labels, np.moveaxis(one_shot.labels, 0, 2))
    np.testing.assert_allclose(out.confidence, np.moveaxis(one_shot.confidence, 0, 2), atol=1e-6)
    np.testing.assert_allclose(out.probs, np.moveaxis(one_shot.probs, 1, 3), atol=1e-5)
    assert out.labels.dtype == np.uint8 and out.labels.shape == (9, 23, 19)


@pytest.mark.parametrize("patches_per_slab", [1, 7, 10_000])
def test_streaming_3d_pointwise_predictor_equals_direct(patches_per_slab):
    rng = np.random.default_rng(2)
    image = rng.random((1, 9, 10, 11), dtype=np.float32)
    weight = torch.from_numpy(rng.normal(size=(5, 1, 1, 1, 1)).astype(np.float32))

    def predictor(x):
        return torch.nn.functional.conv3d(x, weight)

    out = predict_sliding_window(
        image,
        predictor,
        PatchSpec((4, 5, 6), (2, 3, 2)),
        patches_per_slab=patches_per_slab,
        batch_size=3,
    )
    direct = torch.nn.functional.conv3d(torch.from_numpy(image)[None], weight)[0].argmax(0).numpy()
    np.testing.assert_array_equal(out.labels, direct)
    assert float(out.confidence.min()) == 1.0


def test_streaming_torch_input_returns_torch():
    image = torch.rand(1, 4, 12, 12)
    out = predict_sliding_window(
        image,
        lambda x: torch.cat([x[:, 1:2], 1 - x[:, 1:2]], 1),
        PatchSpec.two_and_half_d(8, 2),
        channels_last=False,
    )
    assert isinstance(out.labels, torch.Tensor) and out.labels.dtype == torch.uint8
    np.testing.assert_array_equal(out.labels.numpy(), (image[0] < 0.5).numpy())


def test_streaming_on_real_ibsr_slab(ibsr_case):
    """A thresholding predictor on a real IBSR slab reproduces the direct threshold."""
    image = ibsr_case["image"][:, 100:108]  # (1, 8, 128, 256) slab
    thr = float(np.percentile(image[image > 0], 50))

    def predictor(x):
        centre = x[:, 1:2]
        return torch.cat([thr - centre, centre - thr], 1)

    out = predict_sliding_window(image, predictor, PatchSpec.two_and_half_d(40, 10))
    np.testing.assert_array_equal(out.labels, (image[0] > thr).astype(np.uint8))
    assert out.labels.shape == image.shape[1:]


# --- errors -----------------------------------------------------------------


def test_error_volume_smaller_than_patch():
    with pytest.raises(
        ValueError, match=r"patch_size \(1, 40, 40\) exceeds image shape \(3, 30, 256\)"
    ):
        extract_patches(np.zeros((1, 3, 30, 256), np.float32), PatchSpec.two_and_half_d(40, 10))


def test_error_image_not_4d():
    with pytest.raises(ValueError, match=r"image must be 4D \(C, Z, Y, X\), got shape \(30, 256\)"):
        extract_patches(np.zeros((30, 256), np.float32), PatchSpec.two_and_half_d(4, 2))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"patch_size": (1, 4, 4), "stride": (1, 5, 1)},
            "stride must be between 1 and the patch size",
        ),
        (
            {"patch_size": (1, 4, 4), "stride": (1, 0, 1)},
            "stride must be between 1 and the patch size",
        ),
        (
            {"patch_size": (1, 4, 4), "stride": (1, 2, 2), "num_slices": 2},
            "num_slices must be a positive odd",
        ),
        ({"patch_size": (3, 4, 4), "stride": (1, 2, 2), "num_slices": 3}, "must be 1 for 2.5D"),
        (
            {"patch_size": (1, 4, 4), "stride": (1, 2, 2), "slice_axis": 3},
            "slice_axis must be 0, 1 or 2",
        ),
        (
            {"patch_size": (1, 4, 4), "stride": (1, 2, 2), "pad_mode": "wrap"},
            "pad_mode must be one of",
        ),
        ({"patch_size": (4, 4, 4, 4), "stride": (1, 2, 2)}, "patch_size must have 2"),
        ({"patch_size": (1, 0, 4), "stride": (1, 1, 1)}, "patch_size must be positive"),
    ],
)
def test_patch_spec_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PatchSpec(**kwargs)


def test_reassemble_errors():
    grid = make_grid((1, 6, 6), PatchSpec.two_and_half_d(4, 2))
    with pytest.raises(ValueError, match="mode must be one of"):
        reassemble_patches(np.zeros((4, 2, 4, 4), np.float32), grid, mode="median")
    with pytest.raises(ValueError, match="num_classes must be given"):
        reassemble_patches(np.zeros((4, 4, 4), np.uint8), grid)
    with pytest.raises(ValueError, match="values must be class scores"):
        reassemble_patches(np.zeros((4, 4, 4), np.uint8), grid, mode="mean", num_classes=2)
    with pytest.raises(ValueError, match="values must hold 4 patches"):
        reassemble_patches(np.zeros((5, 2, 4, 4), np.float32), grid)
    with pytest.raises(ValueError, match="num_classes must match"):
        reassemble_patches(np.zeros((4, 2, 4, 4), np.float32), grid, num_classes=3)


def test_predictor_output_shape_error():
    with pytest.raises(
        ValueError, match=r"predictor output must be a torch tensor of shape \(4, K, 4, 4\)"
    ):
        predict_sliding_window(
            np.zeros((1, 1, 6, 6), np.float32),
            lambda x: x[:, :, :2, :2],
            PatchSpec.two_and_half_d(4, 2),
        )
    with pytest.raises(ValueError, match="batch_size and patches_per_slab must be >= 1"):
        predict_sliding_window(
            np.zeros((1, 1, 6, 6), np.float32),
            lambda x: x,
            PatchSpec.two_and_half_d(4, 2),
            batch_size=0,
        )


# --- patches at arbitrary starts (training) -------------------------------------


@pytest.mark.parametrize("pad_mode", ["reflect", "replicate", "constant"])
@pytest.mark.parametrize("num_slices", [1, 3, 5])
def test_extract_at_grid_locations_equals_extract(pad_mode, num_slices):
    image = _unique_image((2, 4, 13, 11))
    spec = PatchSpec.two_and_half_d((5, 4), (2, 3), num_slices=num_slices, pad_mode=pad_mode)
    expected, grid = extract_patches(image, spec)
    got = extract_patches_at(image, grid.locations(), spec)
    np.testing.assert_array_equal(got, expected)
    got_t = extract_patches_at(torch.from_numpy(image), torch.from_numpy(grid.locations()), spec)
    np.testing.assert_array_equal(got_t.numpy(), expected)


def test_extract_at_random_3d_starts_match_slicing():
    rng = np.random.default_rng(4)
    image = _unique_image((1, 9, 10, 11))
    spec = PatchSpec((4, 5, 6), (1, 1, 1))
    starts = np.stack(
        [rng.integers(0, n - p + 1, 20) for n, p in zip((9, 10, 11), (4, 5, 6), strict=True)], 1
    )
    got = extract_patches_at(image, starts, spec)
    for n, (z, y, x) in enumerate(starts):
        np.testing.assert_array_equal(got[n], image[:, z : z + 4, y : y + 5, x : x + 6])


def test_extract_at_errors():
    spec = PatchSpec.two_and_half_d(4, 2)
    image = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"starts must keep patches of \(1, 4, 4\) inside"):
        extract_patches_at(image, np.array([[0, 5, 0]]), spec)
    with pytest.raises(ValueError, match=r"starts must be an \(N, 3\) integer array"):
        extract_patches_at(image, np.array([0, 1, 2]), spec)


# --- regions of interest: active_windows and predict_sliding_window(roi=...) -------------

ROI_SPECS = [
    PatchSpec((1, 4, 4), (1, 2, 2)),
    PatchSpec((1, 5, 3), (1, 3, 1)),
    PatchSpec((1, 6, 6), (1, 6, 6)),
    PatchSpec((3, 4, 5), (2, 2, 3)),
    PatchSpec((4, 4, 4), (1, 3, 4)),
    PatchSpec((2, 7, 2), (2, 7, 1)),
]


@pytest.mark.parametrize("spec", ROI_SPECS)
@pytest.mark.parametrize("shape", [(7, 9, 11), (4, 7, 6), (9, 13, 8)])
def test_active_windows_matches_reference(spec, shape):
    rng = np.random.default_rng(sum(shape))
    grid = make_grid(shape, spec)
    rois = [np.zeros(shape, bool), np.ones(shape, bool)]
    rois += [rng.random(shape) < p for p in (0.002, 0.01, 0.05, 0.3)]
    one = np.zeros(shape, bool)
    one[tuple(n - 1 for n in shape)] = True  # the far corner: only the flush windows
    rois.append(one)
    for roi in rois:
        got = active_windows(roi, grid)
        assert got.dtype == bool and got.shape == grid.grid_shape
        np.testing.assert_array_equal(got, ref.active_windows_loop(roi, grid))


def test_active_windows_hand_case():
    # 1 x 6 x 6, 4 x 4 windows at stride 2: starts 0 and 2 per axis
    g = make_grid((1, 6, 6), PatchSpec((1, 4, 4), (1, 2, 2)))
    roi = np.zeros((1, 6, 6), bool)
    roi[0, 1, 4] = True  # rows 0-3 (y start 0), columns 2-5 (x start 2)
    assert active_windows(roi, g).astype(int).tolist() == [[[0, 1], [0, 0]]]
    roi[0, 3, 3] = True  # inside all four windows
    assert active_windows(roi, g).astype(int).tolist() == [[[1, 1], [1, 1]]]


def _conv_predictor(in_channels: int, num_classes: int = 4, three_d: bool = False):
    """A fixed random 3x3(x3) convolution, padding 1; counts the patches it sees.

    It convolves one patch at a time, so that a patch's logits do not depend on the
    batch around it (batched convolutions may differ in the last bit)."""
    gen = torch.Generator().manual_seed(7)
    kernel = (3, 3, 3) if three_d else (3, 3)
    weight = torch.randn(num_classes, in_channels, *kernel, generator=gen)
    bias = torch.randn(num_classes, generator=gen)
    conv = torch.nn.functional.conv3d if three_d else torch.nn.functional.conv2d
    seen: list[int] = []

    def predictor(x):
        seen.append(int(x.shape[0]))
        w, b = weight.to(x.device), bias.to(x.device)
        return torch.cat([conv(p[None].contiguous(), w, b, padding=1) for p in x])

    predictor.seen = seen  # type: ignore[attr-defined]
    return predictor


def _blob_roi(shape, seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    c = [n // 2 for n in shape]
    roi = (zz - c[0]) ** 2 / 4 + (yy - c[1]) ** 2 / 9 + (xx - c[2] - 2) ** 2 / 6 <= 1
    roi[rng.random(shape) < 0.003] = True  # a few isolated voxels
    return roi


def _as_numpy(x):
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else x


def _check_roi_prediction(image, predictor, spec, roi, mode, **kwargs):
    """With and without the ROI: the same on ROI voxels, background where no active
    window reaches; returns the prediction with the ROI."""
    full = predict_sliding_window(image, predictor, spec, mode=mode, return_probs=True, **kwargs)
    part = predict_sliding_window(
        image, predictor, spec, mode=mode, return_probs=True, roi=roi, **kwargs
    )
    labels, conf, probs = (_as_numpy(v) for v in (part.labels, part.confidence, part.probs))
    full_labels, full_conf, full_probs = (
        _as_numpy(v) for v in (full.labels, full.confidence, full.probs)
    )
    assert labels.dtype == np.uint8 and conf.dtype == np.float32 and probs.dtype == np.float32
    assert len(np.unique(full_labels[roi])) > 1  # the ROI holds several classes
    np.testing.assert_array_equal(labels[roi], full_labels[roi])
    # the logits of a patch are the same bits in any batch, but torch's softmax of a
    # batch is not (its vectorised exp depends on where the patch sits in the batch):
    # probabilities, and the mean modes' confidence, agree to float32 rounding
    exact = np.testing.assert_array_equal
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # noqa: E731
    (exact if mode == "vote" else close)(conf[roi], full_conf[roi])
    close(probs[:, roi], full_probs[:, roi])
    # voxels that only windows without an ROI voxel cover vote background, unanimously
    moved_roi = np.moveaxis(roi, spec.slice_axis, 0)
    grid = make_grid(moved_roi.shape, spec)
    active = ref.active_windows_loop(moved_roi, grid)
    covered = np.moveaxis(
        ref.covered_by_windows_loop(moved_roi.shape, grid, active), 0, spec.slice_axis
    )
    assert (~covered).sum() > 0
    assert (labels[~covered] == 0).all() and (probs[1:, ~covered] == 0).all()
    # "gaussian" divides weighted sums by a separable normaliser: 1 to float32 rounding
    (exact if mode == "vote" else close)(conf[~covered], 1.0)
    (exact if mode == "vote" else close)(probs[0][~covered], 1.0)
    return part, int(active.sum()), grid.num_patches


@pytest.mark.parametrize("mode", ["vote", "mean", "gaussian"])
@pytest.mark.parametrize("slice_axis", [0, 1, 2])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_predict_with_roi_equals_without_on_the_roi_2p5d(mode, slice_axis, backend):
    rng = np.random.default_rng(slice_axis)
    image = rng.normal(0, 1, (2, 12, 14, 13)).astype(np.float32)
    if backend == "torch":
        image = torch.from_numpy(image)
    roi = _blob_roi((12, 14, 13), seed=slice_axis)
    spec = PatchSpec.two_and_half_d((6, 5), (2, 3), num_slices=3, slice_axis=slice_axis)
    predictor = _conv_predictor(2 * 3)
    part, active, total = _check_roi_prediction(
        image, predictor, spec, roi, mode, batch_size=7, patches_per_slab=40
    )
    assert isinstance(part.labels, np.ndarray if backend == "numpy" else torch.Tensor)
    assert active < total


@pytest.mark.parametrize("mode", ["vote", "mean", "gaussian"])
def test_predict_with_roi_equals_without_on_the_roi_3d(mode):
    image = np.random.default_rng(3).normal(0, 1, (1, 13, 12, 14)).astype(np.float32)
    roi = _blob_roi((13, 12, 14), seed=3)
    spec = PatchSpec((4, 5, 6), (2, 3, 2))
    _check_roi_prediction(
        image, _conv_predictor(1, three_d=True), spec, roi, mode, patches_per_slab=30
    )


def test_predict_with_small_roi_runs_only_its_windows():
    image = np.random.default_rng(0).normal(0, 1, (1, 10, 24, 24)).astype(np.float32)
    roi = np.zeros((10, 24, 24), bool)
    roi[6:8, 10:13, 17:19] = True  # the first slabs hold no ROI voxel
    spec = PatchSpec.two_and_half_d(8, 4)  # starts 0, 4, 8, 12, 16 per axis
    grid = make_grid(roi.shape, spec)
    active = int(ref.active_windows_loop(roi, grid).sum())
    everything = _conv_predictor(3)
    predict_sliding_window(image, everything, spec, patches_per_slab=25)
    assert sum(everything.seen) == grid.num_patches == 10 * 25
    only = _conv_predictor(3)
    predict_sliding_window(image, only, spec, patches_per_slab=25, roi=roi)
    # y rows 10-12: starts 4, 8, 12; x columns 17-18: starts 12, 16
    assert active == 2 * 3 * 2
    # the ROI's windows, plus one patch of the first slab (no ROI voxel in slice 0) to
    # learn the number of classes
    assert sum(only.seen) == active + 1


@pytest.mark.parametrize("mode", ["vote", "mean"])
def test_predict_with_empty_roi_is_background(mode):
    image = torch.randn(1, 6, 10, 10, generator=torch.Generator().manual_seed(0))
    predictor = _conv_predictor(3)
    out = predict_sliding_window(
        image,
        predictor,
        PatchSpec.two_and_half_d(4, 2),
        mode=mode,
        return_probs=True,
        patches_per_slab=16,
        roi=np.zeros((6, 10, 10), bool),
    )
    assert (out.labels == 0).all() and (out.confidence == 1).all()
    assert out.probs.shape == (4, 6, 10, 10)
    assert (out.probs[0] == 1).all() and (out.probs[1:] == 0).all()
    assert sum(predictor.seen) == 1  # one patch, only to learn the number of classes


def test_predict_with_full_roi_is_unchanged():
    image = np.random.default_rng(1).normal(0, 1, (1, 5, 11, 12)).astype(np.float32)
    spec = PatchSpec.two_and_half_d(5, 2)
    full = predict_sliding_window(image, _conv_predictor(3), spec, mode="mean", return_probs=True)
    same = predict_sliding_window(
        image,
        _conv_predictor(3),
        spec,
        mode="mean",
        return_probs=True,
        roi=np.ones((5, 11, 12), np.uint8),  # any 0/1 array works as a mask
    )
    for a, b in zip(full.__dict__.values(), same.__dict__.values(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_predict_with_roi_of_wrong_shape_raises():
    with pytest.raises(
        ValueError, match=r"roi must have the image's spatial shape \(3, 8, 8\), got \(8, 8, 3\)"
    ):
        predict_sliding_window(
            np.zeros((1, 3, 8, 8), np.float32),
            _conv_predictor(3),
            PatchSpec.two_and_half_d(4, 2),
            roi=np.ones((8, 8, 3), bool),
        )
