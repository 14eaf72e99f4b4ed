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
