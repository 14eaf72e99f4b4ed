"""Tests for medseg.augment: elastic deformation, shift/rotation/flips, grey values.

Slow references live here (not in tests/reference.py): the coarse-to-fine field via scipy's
own spline (map_coordinates on the control grid), and the composed pull-back map written
out pixel by pixel.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg import augment as aug
from medseg.augment import (
    AffineParams,
    AugmentConfig,
    AugmentParams,
    ElasticParams,
    IntensityParams,
    adjust_intensity,
    adjust_intensity_torch,
    apply_augment,
    apply_augment_torch,
    displacement_field,
    elastic_deform,
    elastic_deform_label,
    elastic_deform_sample,
    elastic_deform_torch,
    interpolation_matrix,
    sample_affine_params,
    sample_augment_params,
    sample_elastic_params,
    sample_intensity_params,
    warp_image,
    warp_label,
    warp_torch,
)

# Stated tolerances (module docstring): linear and cubic B-spline on both paths agree to
# LINEAR_TOL of the image range; nearest label maps differ on at most LABEL_MISMATCH of pixels.
LINEAR_TOL = 1e-4
LABEL_MISMATCH = 1e-3


# ---------------------------------------------------------------------------
# Helpers and slow references
# ---------------------------------------------------------------------------


def _smooth_image(rng, shape, sigma=2.0):
    """Float32 (C, Z, Y, X) in [0, 1], Gaussian-smoothed noise (natural-image-like slopes)."""
    img = ndimage.gaussian_filter(rng.random(shape), (0, 0, sigma, sigma))
    img = (img - img.min()) / (img.max() - img.min())
    return img.astype(np.float32)


def _labels_from(image):
    """uint8 (Z, Y, X) with 4 classes by thresholding channel 0."""
    return np.digitize(image[0], [0.3, 0.5, 0.7]).astype(np.uint8)


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def _ref_field(params):
    """Field by scipy's cubic spline (mirror) on the control grid, at t = (G-1) i / (size-1)."""
    axes = (1, 2) if params.ndim == 2 else (0, 1, 2)
    g = params.grid_points
    pos = [
        (g - 1) * np.arange(params.spatial_shape[a]) / (params.spatial_shape[a] - 1) for a in axes
    ]
    coords = np.stack(np.meshgrid(*pos, indexing="ij"))
    return np.stack(
        [
            ndimage.map_coordinates(params.displacement[c], coords, order=3, mode="mirror")
            for c in range(params.ndim)
        ]
    )


def _ref_coordinates(params: AugmentParams):
    """q(p) = c + (R / s) F (p + d(p) - c) - t, pixel by pixel (2D params on one slice)."""
    _, ny, nx = params.spatial_shape
    theta = math.radians(params.affine.rotation_deg[0])
    # forward rotation of the content in (y, x): y' = cos y - sin x, x' = sin y + cos x
    forward = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    pull = np.linalg.inv(forward * params.affine.zoom)  # content turned, then magnified
    flips = np.array([-1.0 if a in params.affine.flip_axes else 1.0 for a in (1, 2)])
    centre = np.array([(ny - 1) / 2, (nx - 1) / 2])
    shift = np.array(params.affine.shift)
    d = _ref_field(params.elastic) if params.elastic is not None else np.zeros((2, ny, nx))
    q = np.zeros((2, ny, nx))
    for y in range(ny):
        for x in range(nx):
            p = np.array([y, x], dtype=np.float64) + d[:, y, x]
            q[:, y, x] = centre + pull @ (flips * (p - centre)) - shift
    return q


def _zero_elastic(shape, ndim):
    return ElasticParams(np.zeros((ndim,) + (3,) * ndim), spatial_shape=shape, ndim=ndim)


# ---------------------------------------------------------------------------
# Interpolation matrices and the field
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 3, 5, 8, 33, 100, 513])
@pytest.mark.parametrize("grid_points", [2, 3, 4, 7])
def test_interpolation_matrix_matches_scipy_spline(size, grid_points):
    w = interpolation_matrix(size, grid_points)
    t = (grid_points - 1) * np.arange(size) / (size - 1)
    ref = np.stack(
        [
            ndimage.map_coordinates(np.eye(grid_points)[j], t[None], order=3, mode="mirror")
            for j in range(grid_points)
        ],
        axis=1,
    )
    np.testing.assert_allclose(w, ref, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("size", [5, 9, 101, 513])
def test_interpolation_matrix_reproduces_control_values(size):
    w = interpolation_matrix(size, 3)
    control_rows = [0, (size - 1) // 2, size - 1] if size % 2 else [0, size - 1]
    expected = np.eye(3)[[0, 1, 2]] if size % 2 else np.eye(3)[[0, 2]]
    np.testing.assert_allclose(w[control_rows], expected, atol=1e-12)


def test_interpolation_matrix_is_smooth():
    size = 201
    w = interpolation_matrix(size, 3)
    h = 2 / (size - 1)  # grid units per pixel
    first = np.diff(w, axis=0) / h
    second = np.diff(w, 2, axis=0) / h**2
    # C2 cubic spline: bounded first and second derivatives, no jumps in the slope
    assert np.abs(first).max() < 2.0
    assert np.abs(second).max() < 6.0
    assert np.abs(np.diff(first, axis=0)).max() < 6.0 * h
    # mirror boundary: zero slope at both ends of the image
    np.testing.assert_allclose(first[0], 0.0, atol=3 * h)
    np.testing.assert_allclose(first[-1], 0.0, atol=3 * h)


@pytest.mark.parametrize(
    ("shape", "ndim", "crop"),
    [
        ((1, 23, 31), 2, None),
        ((4, 23, 31), 2, (slice(None), slice(3, 17), slice(0, 31))),
        ((9, 12, 15), 3, None),
        ((9, 12, 15), 3, (slice(2, 7), slice(None), slice(4, 11))),
    ],
)
def test_displacement_field_matches_reference(shape, ndim, crop):
    params = ElasticParams(
        np.random.default_rng(3).normal(0, 4, (ndim,) + (3,) * ndim), shape, ndim=ndim
    )
    ref = _ref_field(params)
    if crop is not None:
        ref = ref[(slice(None), *crop[3 - ndim :])]
    np.testing.assert_allclose(displacement_field(params, crop=crop), ref, atol=1e-5)


def test_displacement_std_matches_sigma():
    rng = np.random.default_rng(123)
    draws = np.stack([sample_elastic_params(rng, (1, 512, 512)).displacement for _ in range(2000)])
    assert draws.shape == (2000, 2, 3, 3)
    assert abs(draws.std() / 10.0 - 1.0) < 0.03  # 36 000 values: std error ~0.4 %
    assert abs(draws.mean()) < 3 * 10.0 / math.sqrt(draws.size)
    per_point = draws.reshape(2000, -1).std(axis=0)
    assert np.all(np.abs(per_point / 10.0 - 1.0) < 0.1)  # every control point, 2000 draws


# ---------------------------------------------------------------------------
# Identity, determinism, label values
# ---------------------------------------------------------------------------

IDENTITY_CASES = [((1, 1, 5, 7), 2), ((2, 3, 9, 11), 2), ((2, 5, 6, 7), 3)]


@pytest.mark.parametrize(("shape", "ndim"), IDENTITY_CASES)
@pytest.mark.parametrize("order", [0, 1, 3])
def test_zero_displacement_is_identity_numpy(shape, ndim, order):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    label = (np.arange(np.prod(shape[1:])) % 5).astype(np.uint8).reshape(shape[1:])
    params = _zero_elastic(shape[1:], ndim)
    out_image, out_label, out_weight = elastic_deform_sample(
        image, label, image[0], params=params, order=order
    )
    assert np.array_equal(out_image, image) and out_image is not image
    assert np.array_equal(out_label, label)
    assert np.array_equal(out_weight, image[0])


@pytest.mark.parametrize(
    ("shape", "ndim", "mode"),
    [
        (shape, ndim, mode)
        for shape, ndim in IDENTITY_CASES
        for mode in ("nearest", "bilinear", "bicubic", "bspline")
        if not (mode == "bicubic" and ndim == 3)  # torch has no 3D bicubic
    ],
)
def test_zero_displacement_is_identity_torch(shape, ndim, mode):
    batch = torch.arange(2 * np.prod(shape), dtype=torch.float32).reshape(2, *shape)
    params = [_zero_elastic(shape[1:], ndim)] * 2
    assert torch.equal(elastic_deform_torch(batch, params, mode=mode), batch)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("size", [2, 3, 6, 7, 33, 128, 255, 512, 1000])
def test_interpolation_path_at_integer_positions_torch(mode, size):
    """Zero offsets through grid_sample: nearest is exact; linear/cubic are off only by the
    float32 rounding of the normalized grid (< 3e-8 (size - 1) px) and of the weights."""
    batch = torch.arange(3 * size, dtype=torch.float32).reshape(1, 1, 1, 3, size)
    index = [torch.arange(3)[None], torch.arange(size)[None]]
    zeros = [torch.zeros((1, 3, size))] * 2
    grid = aug._TorchGrid((3, size), index, zeros, torch.float32)
    out = aug._sample_torch(batch, grid, mode, [None])
    if mode == "nearest":
        assert torch.equal(out, batch)
    else:
        assert (out - batch).abs().max() <= 1e-6 * batch.abs().max()


@pytest.mark.parametrize(("shape", "ndim"), IDENTITY_CASES)
def test_interpolation_path_at_integer_positions_numpy(shape, ndim):
    image = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1) ** 1.5
    axes = (2, 3) if ndim == 2 else (1, 2, 3)
    plan = aug._Plan(
        ndim,
        None,
        tuple(np.arange(shape[a]) for a in axes),
        np.zeros((ndim, *[shape[a] for a in axes])),
    )
    for order in (0, 1):
        assert np.array_equal(aug._resample_numpy(image, plan, order), image)
    np.testing.assert_allclose(aug._resample_numpy(image, plan, 3), image, rtol=1e-6)


def test_two_and_half_d_shares_one_field():
    rng = np.random.default_rng(0)
    one = _smooth_image(rng, (1, 1, 64, 72))
    stack = np.repeat(one, 3, axis=1)  # 3 identical slices
    params = sample_elastic_params(np.random.default_rng(1), (3, 64, 72), ndim=2)
    params_1 = ElasticParams(params.displacement, (1, 64, 72), ndim=2)
    out = elastic_deform(stack, params, order=3)
    expected = elastic_deform(one, params_1, order=3)
    for z in range(3):
        assert np.array_equal(out[:, z], expected[:, 0])
    out_t = elastic_deform_torch(_t(stack)[None], [params], mode="bspline")[0]
    for z in range(3):
        assert torch.equal(out_t[:, z], out_t[:, 0])


def test_same_seed_same_output_and_different_seeds_differ():
    image = _smooth_image(np.random.default_rng(0), (1, 1, 64, 64))
    cfg = AugmentConfig(max_shift=4, max_rotation_deg=20, flip_axes=(1, 2), gamma_range=(0.7, 1.5))

    def run(seed):
        params = sample_augment_params(np.random.default_rng(seed), (1, 64, 64), cfg)
        return apply_augment(image, None, None, params)[0]

    assert np.array_equal(run(7), run(7))
    assert not np.allclose(run(7), run(8))

    def run_torch(seed):
        params = sample_augment_params(np.random.default_rng(seed), (1, 64, 64), cfg)
        return apply_augment_torch(_t(image)[None], None, None, [params], mode="bspline")[0]

    assert torch.equal(run_torch(7), run_torch(7))
    assert not torch.allclose(run_torch(7), run_torch(8))
    a = sample_elastic_params(np.random.default_rng(5), (1, 64, 64)).displacement
    b = sample_elastic_params(np.random.default_rng(5), (1, 64, 64)).displacement
    assert np.array_equal(a, b)


def test_label_values_preserved_both_paths():
    rng = np.random.default_rng(2)
    values = np.array([0, 3, 7, 200], dtype=np.uint8)
    label = values[rng.integers(0, 4, (2, 64, 80))]
    label = ndimage.median_filter(label, size=(1, 5, 5))  # blobs, many edges
    cfg = AugmentConfig(max_rotation_deg=30, max_shift=3.3, flip_axes=(2,))
    for seed in range(3):
        params = sample_augment_params(np.random.default_rng(seed), (2, 64, 80), cfg)
        out = warp_label(label, elastic=params.elastic, affine=params.affine)
        assert set(np.unique(out)) <= set(values)
        out_t = apply_augment_torch(
            torch.zeros((1, 1, 2, 64, 80)), _t(label)[None], None, [params]
        )[1]
        assert out_t.dtype == torch.uint8
        assert set(np.unique(out_t.numpy())) <= set(values)


# ---------------------------------------------------------------------------
# numpy vs torch agreement
# ---------------------------------------------------------------------------


def _agreement_case(ndim):
    rng = np.random.default_rng(11 + ndim)
    if ndim == 2:
        shape, cfg = (3, 96, 80), AugmentConfig(max_shift=5, max_rotation_deg=25, flip_axes=(1,))
        image = _smooth_image(rng, (2, *shape))
    else:
        shape = (20, 28, 24)
        cfg = AugmentConfig(
            ndim=3, elastic_sigma=2.0, max_shift=2, max_rotation_deg=10, max_tilt_deg=10
        )
        image = ndimage.gaussian_filter(rng.random((2, *shape)), (0, 1.5, 1.5, 1.5))
        image = ((image - image.min()) / (image.max() - image.min())).astype(np.float32)
    params = sample_augment_params(rng, shape, cfg)
    return image, _labels_from(image), image[1].copy(), params


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(("order", "mode"), [(1, "bilinear"), (3, "bspline")])
def test_numpy_and_torch_agree(ndim, order, mode):
    image, label, weight, params = _agreement_case(ndim)
    ref_image, ref_label, ref_weight = apply_augment(image, label, weight, params, order=order)
    out_image, out_label, out_weight = apply_augment_torch(
        _t(image)[None], _t(label)[None], _t(weight)[None], [params], mode=mode
    )
    span = float(image.max() - image.min())
    assert np.abs(out_image[0].numpy() - ref_image).max() <= LINEAR_TOL * span
    assert np.abs(out_weight[0].numpy() - ref_weight).max() <= LINEAR_TOL * span
    assert (out_label[0].numpy() != ref_label).mean() <= LABEL_MISMATCH


def test_numpy_and_torch_agree_on_noise_and_512_slice():
    """Worst case for coordinate rounding: white noise, 512 px (float32 grid)."""
    rng = np.random.default_rng(4)
    image = rng.random((1, 1, 512, 512), dtype=np.float32)
    label = (image[0] * 4).astype(np.uint8)
    params = sample_elastic_params(rng, (1, 512, 512))
    ref = elastic_deform(image, params, order=1)
    out = elastic_deform_torch(_t(image)[None], [params], mode="bilinear")[0].numpy()
    assert np.abs(out - ref).max() <= LINEAR_TOL
    ref_label = elastic_deform_label(label, params)
    out_label = elastic_deform_torch(_t(label)[None, None], [params], mode="nearest")[0, 0]
    assert (out_label.numpy() != ref_label).mean() <= LABEL_MISMATCH


def test_batch_uses_per_sample_params():
    rng = np.random.default_rng(6)
    image = _smooth_image(rng, (1, 1, 40, 48))
    cfg = AugmentConfig(
        elastic_sigma=3.0, max_rotation_deg=30, flip_axes=(2,), gamma_range=(0.5, 2)
    )
    params = [sample_augment_params(rng, (1, 40, 48), cfg) for _ in range(3)]
    batch = _t(np.stack([image] * 3))
    out = apply_augment_torch(batch, None, None, params, mode="bilinear")[0]
    for k in range(3):
        single = apply_augment_torch(batch[k : k + 1], None, None, [params[k]])[0][0]
        torch.testing.assert_close(out[k], single, rtol=0, atol=1e-6)
    assert not torch.allclose(out[0], out[1])


def test_keys_bicubic_is_close_to_bspline_on_smooth_images():
    """torch 'bicubic' is a different cubic kernel (Keys); close, not equal, to order=3."""
    image = _smooth_image(np.random.default_rng(8), (1, 1, 80, 80), sigma=4)
    params = sample_elastic_params(np.random.default_rng(9), (1, 80, 80), sigma=5)
    ref = elastic_deform(image, params, order=3)
    keys = elastic_deform_torch(_t(image)[None], [params], mode="bicubic")[0].numpy()
    assert 1e-6 < np.abs(keys - ref).max() < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_gpu_agree():
    image, label, weight, params = _agreement_case(2)
    args = (_t(image)[None], _t(label)[None], _t(weight)[None])
    for mode in ("bilinear", "bspline", "bicubic"):
        cpu = apply_augment_torch(*args, [params], mode=mode)
        gpu = apply_augment_torch(*(a.cuda() for a in args), [params], mode=mode)
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=0, atol=1e-5)
        assert (gpu[1].cpu() != cpu[1]).float().mean() <= LABEL_MISMATCH


# ---------------------------------------------------------------------------
# Composition: one resampling, crop
# ---------------------------------------------------------------------------


def test_composed_map_matches_pixelwise_reference():
    rng = np.random.default_rng(10)
    image = _smooth_image(rng, (1, 1, 31, 37))
    params = AugmentParams(
        AffineParams((1, 31, 37), shift=(1.5, -2.25), rotation_deg=(17.0,), flip_axes=(2,)),
        elastic=ElasticParams(rng.normal(0, 3, (2, 3, 3)), (1, 31, 37)),
    )
    q = _ref_coordinates(params)
    for order in (1, 3):
        ref = ndimage.map_coordinates(image[0, 0].astype(np.float64), q, order=order, mode="mirror")
        out = apply_augment(image, None, None, params, order=order)[0]
        np.testing.assert_allclose(out[0, 0], ref, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(
    "crop",
    [
        (slice(1, 3), slice(5, 25), slice(7, 19)),  # interior window
        (slice(0, 2), slice(0, 9), slice(13, 24)),  # touches the border: mirrored window
    ],
)
def test_crop_equals_window_of_full_output(ndim, crop):
    """The spline paths prefilter only the window the crop reads; same result."""
    image, label, weight, params = _agreement_case(ndim)
    full = apply_augment(image, label, weight, params, order=3)
    part = apply_augment(image, label, weight, params, order=3, crop=crop)
    np.testing.assert_allclose(part[0], full[0][(slice(None), *crop)], atol=1e-6)
    assert np.array_equal(part[1], full[1][crop])
    np.testing.assert_allclose(part[2], full[2][crop], atol=1e-6)
    args = (_t(image)[None], _t(label)[None], _t(weight)[None])
    full_t = apply_augment_torch(*args, [params], mode="bspline")
    part_t = apply_augment_torch(*args, [params], mode="bspline", crop=crop)
    torch.testing.assert_close(part_t[0][0], full_t[0][0][(slice(None), *crop)], rtol=0, atol=1e-5)
    assert torch.equal(part_t[1][0], full_t[1][0][crop])


def test_apply_augment_is_warp_then_intensity():
    image, label, weight, params = _agreement_case(2)
    params = AugmentParams(params.affine, params.elastic, IntensityParams(1.3, 0.8))
    out = apply_augment(image, label, weight, params)
    warped = warp_image(image, elastic=params.elastic, affine=params.affine)
    np.testing.assert_array_equal(out[0], adjust_intensity(warped, params.intensity))
    np.testing.assert_array_equal(
        out[1], warp_label(label, elastic=params.elastic, affine=params.affine)
    )


# ---------------------------------------------------------------------------
# Hand cases: flips, shift, rotation (axis lengths differ, so swapped axes fail)
# ---------------------------------------------------------------------------

ARANGE_SHAPE = (1, 1, 5, 7)


def _arange(shape=ARANGE_SHAPE):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def _both_paths(image, affine, order=1, mode="bilinear"):
    out_np = warp_image(image, affine=affine, order=order)
    out_t = warp_torch(_t(image)[None], affine=[affine], mode=mode)[0].numpy()
    return out_np, out_t


@pytest.mark.parametrize("axis", [1, 2])
def test_flip_hand_case(axis):
    image = _arange()
    out_np, out_t = _both_paths(image, AffineParams(ARANGE_SHAPE[1:], flip_axes=(axis,)))
    expected = np.flip(image, axis + 1)
    assert np.array_equal(out_np, expected) and np.array_equal(out_t, expected)


def test_flip_z_in_two_and_half_d_reverses_slices():
    shape = (1, 3, 4, 6)
    image = _arange(shape)
    out_np, out_t = _both_paths(image, AffineParams(shape[1:], flip_axes=(0,)))
    assert np.array_equal(out_np, image[:, ::-1]) and np.array_equal(out_t, image[:, ::-1])


def test_integer_shift_hand_case():
    image = _arange()
    out_np, out_t = _both_paths(image, AffineParams(ARANGE_SHAPE[1:], shift=(1, -2)))
    row = np.arange(7)
    # content moves down 1 and left 2: out[y, x] = in[y - 1, x + 2], mirrored at the edges
    src_y = np.array([1, 0, 1, 2, 3])
    src_x = np.array([2, 3, 4, 5, 6, 5, 4])
    expected = (src_y[:, None] * 7 + row[src_x][None, :]).astype(np.float32)
    assert np.array_equal(out_np[0, 0], expected) and np.array_equal(out_t[0, 0], expected)


def test_half_pixel_shift_averages_neighbours():
    image = _arange()
    out_np, out_t = _both_paths(image, AffineParams(ARANGE_SHAPE[1:], shift=(0, 0.5)))
    expected = image[0, 0].copy()
    expected[:, 1:] = (image[0, 0, :, 1:] + image[0, 0, :, :-1]) / 2
    expected[:, 0] = (image[0, 0, :, 0] + image[0, 0, :, 1]) / 2  # -0.5 mirrors to 0.5
    np.testing.assert_allclose(out_np[0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(out_t[0, 0], expected, atol=1e-4)


def test_rotation_90_is_rot90_in_plane():
    shape = (1, 2, 5, 5)  # 2.5D: both slices rotate the same way
    image = _arange(shape)
    out_np, out_t = _both_paths(image, AffineParams(shape[1:], rotation_deg=(90.0,)))
    expected = np.rot90(image, 1, axes=(2, 3))
    assert np.array_equal(out_np, expected)
    np.testing.assert_allclose(out_t, expected, atol=1e-4)
    out_np, out_t = _both_paths(image, AffineParams(shape[1:], rotation_deg=(-90.0,)))
    assert np.array_equal(out_np, np.rot90(image, -1, axes=(2, 3)))


@pytest.mark.parametrize(
    ("shape", "angles", "axes"),
    [
        ((4, 5, 5), (90.0, 0.0, 0.0), (1, 2)),  # about z: plane (y, x)
        ((5, 6, 5), (0.0, 90.0, 0.0), (0, 2)),  # about y: plane (z, x)
        ((5, 5, 7), (0.0, 0.0, 90.0), (0, 1)),  # about x: plane (z, y)
    ],
)
def test_rotation_90_3d_hand_cases(shape, angles, axes):
    image = _arange((1, *shape))
    affine = AffineParams(shape, ndim=3, rotation_deg=angles)
    out_np, out_t = _both_paths(image, affine)
    expected = np.rot90(image[0], 1, axes=axes)[None]
    assert np.array_equal(out_np, expected)
    np.testing.assert_allclose(out_t, expected, atol=1e-3)


def test_rotation_small_angle_matches_reference():
    image = _arange((1, 1, 9, 13))
    params = AugmentParams(AffineParams((1, 9, 13), rotation_deg=(10.0,)))
    ref = ndimage.map_coordinates(
        image[0, 0].astype(np.float64), _ref_coordinates(params), order=1, mode="mirror"
    )
    out_np, out_t = _both_paths(image, params.affine)
    np.testing.assert_allclose(out_np[0, 0], ref, atol=1e-5)
    np.testing.assert_allclose(out_t[0, 0], ref, atol=1e-3)


def test_zoom_matches_reference_with_rotation_field_and_flip():
    rng = np.random.default_rng(5)
    image = _smooth_image(rng, (1, 1, 17, 21))
    elastic = sample_elastic_params(rng, (1, 17, 21), sigma=2.0)
    for zoom in (0.7, 1.6):
        params = AugmentParams(
            AffineParams((1, 17, 21), rotation_deg=(25.0,), flip_axes=(2,), zoom=zoom),
            elastic=elastic,
        )
        ref = ndimage.map_coordinates(
            image[0, 0].astype(np.float64), _ref_coordinates(params), order=1, mode="mirror"
        )
        out_np = apply_augment(image, None, None, params, order=1)[0]
        out_t = apply_augment_torch(_t(image)[None], None, None, [params], mode="bilinear")[0]
        np.testing.assert_allclose(out_np[0, 0], ref, atol=1e-5)
        np.testing.assert_allclose(out_t[0, 0, 0].numpy(), ref, atol=1e-4)


def test_zoom_two_doubles_a_disk_about_the_centre():
    """Hand case: a disk of radius 4 at (20, 25) in a 41 x 41 image (centre 20, 20), zoom 2.
    Output pixel p reads the source at 20 + (p - 20) / 2, nearest with ties rounded up, so
    source pixel s lands on p = 2s - 21 and 2s - 20: a 2 x 2 block each. The disk keeps its
    shape, its area is 4 times as large and its centre moves to 2 * 20 - 20.5 = 19.5,
    2 * 25 - 20.5 = 29.5."""
    yy, xx = np.mgrid[:41, :41]
    disk = ((yy - 20) ** 2 + (xx - 25) ** 2 <= 16).astype(np.uint8)
    params = AugmentParams(AffineParams((1, 41, 41), zoom=2.0))
    _, label, _ = apply_augment(disk[None, None].astype(np.float32), disk[None], None, params)
    assert label is not None
    src = np.floor(20 + (np.arange(41) - 20) / 2 + 0.5).astype(int)
    assert np.array_equal(label[0], disk[np.ix_(src, src)])
    assert np.count_nonzero(label[0]) == 4 * np.count_nonzero(disk)
    assert np.allclose(ndimage.center_of_mass(label[0]), (19.5, 29.5))


def test_sample_zoom_log_uniform_and_off_by_default():
    rng = np.random.default_rng(0)
    zooms = np.array(
        [sample_affine_params(rng, (1, 32, 32), zoom_range=(0.5, 2.0)).zoom for _ in range(800)]
    )
    assert 0.5 <= zooms.min() and zooms.max() <= 2.0
    assert abs(np.median(zooms) - 1.0) < 0.08  # log-uniform: median = geometric mean
    assert abs(np.mean(zooms < 1.0) - 0.5) < 0.06
    # without a zoom range no number is drawn for it: the stream continues as before
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    sample_affine_params(a, (1, 8, 8), max_rotation_deg=10)
    assert sample_affine_params(b, (1, 8, 8), max_rotation_deg=10).zoom == 1.0
    assert a.uniform() == b.uniform()
    with pytest.raises(ValueError, match="zoom must be a finite number > 0"):
        AffineParams((1, 8, 8), zoom=0.0)
    with pytest.raises(ValueError, match="zoom_range"):
        AugmentConfig(zoom_range=(2.0, 1.0))


def test_flip_label_and_crop_gather():
    label = np.arange(35, dtype=np.uint8).reshape(1, 5, 7)
    affine = AffineParams((1, 5, 7), flip_axes=(1, 2))
    crop = (slice(None), slice(1, 4), slice(2, 5))
    assert np.array_equal(warp_label(label, affine=affine, crop=crop), label[:, ::-1, ::-1][crop])


@pytest.mark.parametrize(
    ("shape", "ndim", "mode", "order"),
    [((3, 11, 13), 2, "bicubic", 3), ((1, 11, 13), 2, "bilinear", 1), ((6, 7, 9), 3, "bspline", 3)],
)
def test_flip_only_batches_equal_the_numpy_reference(shape, ndim, mode, order):
    """Flip-only draws take the index-reversal shortcut on torch: every sample, its label,
    weight and crop must equal the numpy resampling path exactly; a batch where one sample
    also shifts takes the resampling path and still agrees."""
    rng = np.random.default_rng(3)
    n = 8
    image = rng.normal(size=(n, 2, *shape)).astype(np.float32)
    label = rng.integers(0, 5, size=(n, *shape)).astype(np.int64)
    weight = rng.random((n, *shape)).astype(np.float32)
    crop = (slice(0, shape[0]), slice(2, shape[1] - 1), slice(1, shape[2] - 3))
    axes = (0, 1, 2)
    flips = [tuple(a for a in axes if rng.random() < 0.5) for _ in range(n)]
    flips[0], flips[1] = (), (1, 2)  # at least the identity and a double flip
    for shifted in (False, True):
        params = [
            AugmentParams(
                AffineParams(shape, ndim=ndim, flip_axes=f, shift=(0.0, 1.0) if ndim == 2 else None)
                if shifted and i == 3
                else AffineParams(shape, ndim=ndim, flip_axes=f),
                intensity=IntensityParams(gamma=0.8) if i == 2 else IntensityParams(),
            )
            for i, f in enumerate(flips)
        ]
        if shifted and ndim == 3:
            continue
        out = aug.apply_augment_torch(
            torch.from_numpy(image),
            torch.from_numpy(label),
            torch.from_numpy(weight),
            params,
            mode=mode,
            crop=crop,
        )
        for i, p in enumerate(params):
            ref = aug.apply_augment(image[i], label[i], weight[i], p, order=order, crop=crop)
            if shifted:  # resampled (float interpolation weights)
                np.testing.assert_allclose(out[0][i].numpy(), ref[0], atol=1e-4)
            else:
                np.testing.assert_allclose(out[0][i].numpy(), ref[0], rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(out[1][i].numpy(), ref[1])
            np.testing.assert_allclose(out[2][i].numpy(), ref[2], atol=1e-6)
        assert out[1].dtype == torch.int64


# ---------------------------------------------------------------------------
# Grey values
# ---------------------------------------------------------------------------


def test_gamma_hand_values_keep_range_per_channel():
    image = np.array([[1.0, 2.0, 3.0, 5.0], [7.0, 7.0, 7.0, 7.0]], np.float32).reshape(2, 1, 1, 4)
    out = adjust_intensity(image, IntensityParams(gamma=0.5))
    # channel 0: m = 1, M = 5: 1 + 4 * sqrt((x - 1) / 4); channel 1 is constant: unchanged
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 3.0, 1 + 4 * math.sqrt(0.5), 5.0], rtol=1e-6)
    np.testing.assert_array_equal(out[1], image[1])
    out_t = adjust_intensity_torch(_t(image)[None], [IntensityParams(gamma=0.5)])[0]
    np.testing.assert_allclose(out_t.numpy(), out, rtol=1e-6)


def test_contrast_hand_values():
    image = np.array([1.0, 2.0, 3.0, 6.0], np.float32).reshape(1, 1, 2, 2)
    out = adjust_intensity(image, IntensityParams(contrast=0.5))  # mean 3
    np.testing.assert_allclose(out.ravel(), [2.0, 2.5, 3.0, 4.5])
    out_t = adjust_intensity_torch(_t(image)[None], [IntensityParams(contrast=0.5)])[0]
    np.testing.assert_allclose(out_t.numpy().ravel(), [2.0, 2.5, 3.0, 4.5])


def test_intensity_identity_and_per_sample_torch():
    image = _smooth_image(np.random.default_rng(1), (2, 1, 8, 8))
    same = adjust_intensity(image, IntensityParams())
    assert np.array_equal(same, image) and same is not image
    batch = _t(np.stack([image, image]))
    out = adjust_intensity_torch(batch, [IntensityParams(), IntensityParams(1.7, 1.2)])
    assert torch.equal(out[0], batch[0])
    ref = adjust_intensity(image, IntensityParams(1.7, 1.2))
    np.testing.assert_allclose(out[1].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_sample_intensity_ranges():
    rng = np.random.default_rng(0)
    draws = [
        sample_intensity_params(rng, gamma_range=(0.7, 1.5), contrast_range=(0.75, 1.25))
        for _ in range(2000)
    ]
    gammas = np.array([d.gamma for d in draws])
    contrasts = np.array([d.contrast for d in draws])
    assert 0.7 <= gammas.min() and gammas.max() <= 1.5
    assert 0.75 <= contrasts.min() and contrasts.max() <= 1.25
    # log-uniform gamma: the median is the geometric mean of the bounds
    assert abs(np.median(gammas) - math.sqrt(0.7 * 1.5)) < 0.03


def test_noise_is_the_seeded_normal_field_on_both_paths():
    """Hand-built reference: x + std * default_rng(seed).standard_normal(shape, float32),
    after gamma and contrast; the torch batch adds the same noise to the same sample."""
    image = _smooth_image(np.random.default_rng(2), (2, 1, 9, 7))
    p = IntensityParams(contrast=0.5, noise_std=0.3, noise_seed=17)
    expected = adjust_intensity(image, IntensityParams(contrast=0.5)) + np.float32(
        0.3
    ) * np.random.default_rng(17).standard_normal(image.shape, dtype=np.float32)
    out = adjust_intensity(image, p)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert out.dtype == image.dtype
    batch = _t(np.stack([image, image]))
    out_t = adjust_intensity_torch(batch, [IntensityParams(), p])
    assert torch.equal(out_t[0], batch[0])  # the sample without noise is untouched
    np.testing.assert_allclose(out_t[1].numpy(), out, rtol=1e-6, atol=1e-6)
    # the noise has the requested spread and differs between seeds
    residual = adjust_intensity(image, IntensityParams(noise_std=0.3, noise_seed=17)) - image
    assert abs(residual.std() - 0.3) < 0.05
    other = adjust_intensity(image, IntensityParams(noise_std=0.3, noise_seed=18)) - image
    assert not np.allclose(residual, other)
    with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
        IntensityParams(noise_std=-0.1)
    with pytest.raises(ValueError, match="noise_seed must be an int >= 0"):
        IntensityParams(noise_std=0.1, noise_seed=-1)


@pytest.mark.parametrize(("sigma", "shape"), [(1.0, (2, 3, 20, 17)), (2.5, (1, 1, 6, 40))])
def test_blur_is_scipy_gaussian_filter_in_plane_on_both_paths(sigma, shape):
    """Reference: scipy.ndimage.gaussian_filter over Y and X only (mirror edges, truncate 4),
    also where the kernel (radius 10 at sigma 2.5) is wider than the image (6 rows)."""
    image = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    ref = ndimage.gaussian_filter(
        image.astype(np.float64), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0
    )
    p = IntensityParams(blur_sigma=sigma)
    np.testing.assert_allclose(adjust_intensity(image, p), ref, atol=1e-5)
    out_t = adjust_intensity_torch(_t(image)[None], [p])[0]
    np.testing.assert_allclose(out_t.numpy(), ref, atol=1e-5)


def test_blur_hand_values_and_per_sample_torch():
    """A point in the middle spreads into the outer product of the normalised kernel
    exp(-x^2 / 2 sigma^2) / sum, radius int(4 sigma + 0.5); an unblurred sample is untouched."""
    image = np.zeros((1, 1, 15, 15), np.float32)
    image[0, 0, 7, 7] = 1.0
    x = np.arange(-4, 5)
    k = np.exp(-(x**2) / 2.0)
    k /= k.sum()
    expected = np.zeros((15, 15))
    expected[3:12, 3:12] = np.outer(k, k)
    p = IntensityParams(blur_sigma=1.0)
    np.testing.assert_allclose(adjust_intensity(image, p)[0, 0], expected, atol=1e-7)
    batch = _t(np.stack([image, image]))
    out = adjust_intensity_torch(batch, [IntensityParams(), p])
    assert torch.equal(out[0], batch[0])
    np.testing.assert_allclose(out[1, 0, 0].numpy(), expected, atol=1e-7)
    with pytest.raises(ValueError, match="blur_sigma must be a finite number >= 0"):
        IntensityParams(blur_sigma=-1.0)


def test_sample_noise_range_probability_and_stream():
    rng = np.random.default_rng(0)
    draws = [
        sample_intensity_params(rng, noise_std=(0.02, 0.1), noise_prob=0.5) for _ in range(2000)
    ]
    stds = np.array([d.noise_std for d in draws])
    noisy = stds[stds > 0]
    assert abs(len(noisy) / len(stds) - 0.5) < 0.04
    assert 0.02 <= noisy.min() and noisy.max() <= 0.1
    assert abs(noisy.mean() - 0.06) < 0.004  # uniform in the range
    assert len({d.noise_seed for d in draws if d.noise_std > 0}) == len(noisy)
    # without noise no number is drawn for it: the stream continues as before
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    sample_intensity_params(a, gamma_range=(0.7, 1.5))
    assert sample_intensity_params(b, gamma_range=(0.7, 1.5), noise_prob=0.0).noise_std == 0.0
    assert a.uniform() == b.uniform()
    blurs = np.array(
        [
            sample_intensity_params(rng, blur_sigma=(0.5, 2.0), blur_prob=0.25).blur_sigma
            for _ in range(2000)
        ]
    )
    assert abs(np.mean(blurs > 0) - 0.25) < 0.04
    assert 0.5 <= blurs[blurs > 0].min() and blurs.max() <= 2.0
    cfg = AugmentConfig(noise_std=(0.0, 0.1), noise_prob=0.5, blur_sigma=(0.0, 1.0))
    assert cfg.adds_blur and not AugmentConfig().adds_blur
    assert cfg.adds_noise and not AugmentConfig().adds_noise
    with pytest.raises(ValueError, match="noise_std must be"):
        AugmentConfig(noise_std=(0.2, 0.1))
    with pytest.raises(ValueError, match="noise_prob must be in"):
        AugmentConfig(noise_prob=1.5)
    with pytest.raises(ValueError, match="blur_sigma must be"):
        AugmentConfig(blur_sigma=(1.0, 0.5))


def test_sample_affine_ranges():
    rng = np.random.default_rng(0)
    draws = [
        sample_affine_params(
            rng,
            (8, 32, 32),
            ndim=3,
            max_shift=3,
            max_rotation_deg=20,
            max_tilt_deg=5,
            flip_axes=(0, 2),
            flip_prob=0.25,
        )
        for _ in range(800)
    ]
    shifts = np.array([d.shift for d in draws])
    angles = np.array([d.rotation_deg for d in draws])
    assert np.abs(shifts).max() <= 3 and np.abs(shifts).max() > 2.5
    assert np.abs(angles[:, 0]).max() <= 20 and np.abs(angles[:, 1:]).max() <= 5
    flipped = np.mean([0 in d.flip_axes for d in draws])
    assert 0.19 < flipped < 0.31
    assert all(1 not in d.flip_axes for d in draws)


# ---------------------------------------------------------------------------
# elasticdeform (reference implementation of the same model)
# ---------------------------------------------------------------------------


def test_matches_elasticdeform():
    """Same coarse grid -> same field and warp as elasticdeform.deform_grid (mode='mirror').

    Both place control points at linspace(0, size-1, G), interpolate the grid with a mirror
    cubic B-spline and sample at p + d(p) with a mirror spline of the given order. Measured
    differences: 0 (order 0 and 1), ~1e-7 of the range (order 3: they prefilter in float32).
    """
    elasticdeform = pytest.importorskip("elasticdeform")
    rng = np.random.default_rng(21)
    image = _smooth_image(rng, (1, 3, 90, 70))
    label = _labels_from(image)
    params = sample_elastic_params(rng, (3, 90, 70))
    for order in (0, 1, 3):
        ref = elasticdeform.deform_grid(
            image[0], params.displacement, order=order, mode="mirror", axis=(1, 2)
        )
        out = elastic_deform(image, params, order=order)[0]
        assert np.abs(out - ref).max() <= 1e-6
    ref_label = elasticdeform.deform_grid(
        label, params.displacement, order=0, mode="mirror", axis=(1, 2)
    )
    assert np.array_equal(elastic_deform_label(label, params), ref_label)
    vol = _smooth_image(rng, (1, 12, 20, 16), sigma=1.5)
    params3 = ElasticParams(rng.normal(0, 2, (3, 3, 3, 3)), (12, 20, 16), ndim=3)
    ref3 = elasticdeform.deform_grid(vol[0], params3.displacement, order=3, mode="mirror")
    assert np.abs(elastic_deform(vol, params3)[0] - ref3).max() <= 1e-6


# ---------------------------------------------------------------------------
# Errors and warnings
# ---------------------------------------------------------------------------

GOOD = (1, 16, 16)


def _elastic(shape=GOOD, ndim=2):
    return ElasticParams(np.zeros((ndim,) + (3,) * ndim), shape, ndim=ndim)


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: ElasticParams(np.zeros((2, 3)), GOOD), ValueError, "displacement must have shape"),
        (
            lambda: ElasticParams(np.full((2, 3, 3), np.nan), GOOD),
            ValueError,
            "displacement must be finite",
        ),
        (lambda: ElasticParams(np.zeros((2, 3, 3)), GOOD, ndim=4), ValueError, "ndim must be 2"),
        (
            lambda: ElasticParams(np.zeros((2, 3, 3)), GOOD, grid_points=1),
            ValueError,
            "grid_points must be an int >= 2",
        ),
        (
            lambda: ElasticParams(np.zeros((2, 3, 3)), (16, 16)),
            ValueError,
            "spatial_shape must be 3",
        ),
        (
            lambda: ElasticParams(np.zeros((3, 3, 3, 3)), (1, 16, 16), ndim=3),
            ValueError,
            "use ndim=2 for single-slice",
        ),
        (lambda: AffineParams(GOOD, shift=(1.0,)), ValueError, "shift must be 2 finite"),
        (lambda: AffineParams(GOOD, rotation_deg=(1.0, 2.0)), ValueError, "rotation_deg must be 1"),
        (lambda: AffineParams(GOOD, flip_axes=(3,)), ValueError, "flip_axes must be spatial"),
        (lambda: IntensityParams(gamma=0.0), ValueError, "gamma must be a finite number > 0"),
        (lambda: IntensityParams(contrast=-1.0), ValueError, "contrast must be a finite"),
        (lambda: AugmentParams("x"), TypeError, "affine must be AffineParams"),
        (lambda: AugmentParams(AffineParams(GOOD), intensity=1.0), TypeError, "intensity must be"),
        (lambda: AugmentParams(AffineParams(GOOD), elastic=1.0), TypeError, "elastic must be"),
        (
            lambda: AugmentParams(AffineParams((1, 8, 8)), elastic=_elastic()),
            ValueError,
            "elastic params must match affine",
        ),
        (lambda: AugmentConfig(ndim=1), ValueError, "ndim must be 2"),
        (lambda: AugmentConfig(elastic_sigma=-1), ValueError, "elastic_sigma must be"),
        (lambda: AugmentConfig(elastic_grid_points=1), ValueError, "grid_points must be"),
        (lambda: AugmentConfig(max_shift=math.inf), ValueError, "max_shift must be"),
        (lambda: AugmentConfig(max_tilt_deg=5), ValueError, "max_tilt_deg must be 0 for ndim=2"),
        (lambda: AugmentConfig(flip_axes=(5,)), ValueError, "flip_axes must be spatial"),
        (lambda: AugmentConfig(flip_prob=2), ValueError, "flip_prob must be in"),
        (lambda: AugmentConfig(gamma_range=(1.5, 0.7)), ValueError, "gamma_range must be"),
        (lambda: AugmentConfig(contrast_range=(0, 1)), ValueError, "contrast_range must be"),
        (lambda: interpolation_matrix(1, 3), ValueError, "size must be an int >= 2"),
        (lambda: sample_elastic_params(0, GOOD), TypeError, "rng must be a numpy.random.Generator"),
        (
            lambda: sample_elastic_params(np.random.default_rng(), GOOD, sigma=-1),
            ValueError,
            "sigma must be",
        ),
        (
            lambda: sample_augment_params(np.random.default_rng(), GOOD, {}),
            TypeError,
            "config must be an AugmentConfig",
        ),
    ],
)
def test_params_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


IMAGE = np.zeros((1, 1, 16, 16), np.float32)
LABEL = np.zeros((1, 16, 16), np.uint8)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: elastic_deform(IMAGE.tolist(), _elastic()), TypeError, "image must be a numpy"),
        (lambda: elastic_deform(IMAGE[0], _elastic()), ValueError, "image must be 4D"),
        (lambda: elastic_deform(IMAGE.astype(int), _elastic()), TypeError, "float dtype"),
        (lambda: elastic_deform(IMAGE, _elastic((1, 8, 8))), ValueError, "image spatial shape"),
        (lambda: elastic_deform(IMAGE, _elastic(), order=7), ValueError, "order must be one of"),
        (lambda: elastic_deform(IMAGE, "p"), TypeError, "params must be ElasticParams"),
        (lambda: elastic_deform_label(LABEL, "p"), TypeError, "params must be ElasticParams"),
        (lambda: elastic_deform_label(IMAGE[0], _elastic()), TypeError, "integer or bool"),
        (
            lambda: elastic_deform_sample(IMAGE, LABEL, IMAGE, params=_elastic()),
            ValueError,
            "weight must be 3D",
        ),
        (
            lambda: elastic_deform_sample(IMAGE, LABEL[:, :8], params=_elastic()),
            ValueError,
            "label spatial shape",
        ),
        (lambda: elastic_deform_sample(IMAGE, None, params=1), TypeError, "params must be Elastic"),
        (lambda: warp_image(IMAGE), ValueError, "must not both be None"),
        (lambda: warp_image(IMAGE, elastic=1), TypeError, "elastic must be ElasticParams"),
        (lambda: warp_image(IMAGE, affine=1), TypeError, "affine must be AffineParams"),
        (
            lambda: warp_image(IMAGE, elastic=_elastic(), affine=AffineParams((1, 8, 8))),
            ValueError,
            "must share spatial_shape",
        ),
        (
            lambda: warp_image(IMAGE, elastic=_elastic(), crop=(slice(None),)),
            ValueError,
            "3 slices",
        ),
        (
            lambda: warp_image(
                IMAGE, elastic=_elastic(), crop=(slice(None),) * 2 + (slice(0, 9, 2),)
            ),
            ValueError,
            "step 1",
        ),
        (
            lambda: warp_image(
                IMAGE, elastic=_elastic(), crop=(slice(None),) * 2 + (slice(4, 20),)
            ),
            ValueError,
            "0 <= start < stop <= size",
        ),
        (lambda: adjust_intensity(IMAGE, 1.0), TypeError, "params must be IntensityParams"),
        (lambda: apply_augment(IMAGE, None, None, 1.0), TypeError, "params must be AugmentParams"),
    ],
)
def test_numpy_apply_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


BATCH = torch.zeros((1, 1, 1, 16, 16))


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: elastic_deform_torch(IMAGE, [_elastic()]), TypeError, "batch must be a torch"),
        (lambda: elastic_deform_torch(BATCH[0], [_elastic()]), ValueError, "batch must be 5D"),
        (lambda: elastic_deform_torch(BATCH, _elastic()), TypeError, "sequence of ElasticParams"),
        (lambda: elastic_deform_torch(BATCH, [_elastic()] * 2), ValueError, "must hold 1"),
        (lambda: warp_torch(BATCH), ValueError, "must not both be None"),
        (
            lambda: warp_torch(BATCH, elastic=[_elastic()], affine=[AffineParams((1, 8, 8))]),
            ValueError,
            "must share spatial_shape and ndim",
        ),
        (
            lambda: warp_torch(
                torch.zeros((2, 1, 1, 16, 16)),
                elastic=[_elastic(), ElasticParams(np.zeros((2, 4, 4)), GOOD, grid_points=4)],
            ),
            ValueError,
            "share grid_points",
        ),
        (lambda: elastic_deform_torch(BATCH, [_elastic()], mode="cubic"), ValueError, "mode must"),
        (
            lambda: elastic_deform_torch(
                torch.zeros((1, 1, 4, 6, 5)), [_elastic((4, 6, 5), 3)], mode="bicubic"
            ),
            ValueError,
            "no 3D bicubic",
        ),
        (
            lambda: elastic_deform_torch(BATCH.to(torch.uint8), [_elastic()]),
            ValueError,
            "needs mode='nearest'",
        ),
        (
            lambda: adjust_intensity_torch(BATCH.long(), [IntensityParams()]),
            TypeError,
            "float dtype",
        ),
        (
            lambda: apply_augment_torch(
                BATCH.long(), None, None, [AugmentParams(AffineParams(GOOD))]
            ),
            TypeError,
            "image must have a float dtype",
        ),
        (
            lambda: apply_augment_torch(
                BATCH, BATCH[:, 0], None, [AugmentParams(AffineParams(GOOD))]
            ),
            ValueError,
            "label must be an integer",
        ),
        (
            lambda: apply_augment_torch(
                BATCH, None, BATCH[:, 0].long(), [AugmentParams(AffineParams(GOOD))]
            ),
            ValueError,
            "weight must be a float",
        ),
    ],
)
def test_torch_apply_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_folding_warning():
    with pytest.warns(UserWarning, match="large for control points"):
        sample_elastic_params(np.random.default_rng(0), (1, 40, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample_elastic_params(np.random.default_rng(0), (1, 512, 512))


def test_mixed_elastic_none_in_torch_batch():
    shape = (1, 24, 24)
    with_field = sample_augment_params(
        np.random.default_rng(0), shape, AugmentConfig(elastic_sigma=2)
    )
    without = AugmentParams(AffineParams(shape, flip_axes=(2,)))
    batch = torch.arange(2 * 24 * 24, dtype=torch.float32).reshape(2, 1, 1, 24, 24)
    out = apply_augment_torch(batch, None, None, [with_field, without])[0]
    assert torch.allclose(out[1], batch[1].flip(-1), atol=1e-4)
