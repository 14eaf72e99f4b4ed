"""Tests for medseg.preprocess (orientation, model grid, brain mask, N4, boxes) and the
ROI arguments of medseg.predict (crop_box, predict_array(roi=...)): against the loop
references in tests/reference.py, hand-computed cases and real data."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg import preprocess
from medseg.io import Geometry, read_image, volume_from_nifti
from medseg.models import create_model
from medseg.patches import PatchSpec, make_grid
from medseg.predict import crop_box, predict_array
from medseg.preprocess import (
    STRIPPED_FAR_MM,
    BrainMask,
    GridMapping,
    ModelGrid,
    _resize,
    bounding_box,
    brain_mask,
    detect_skull_stripped,
    extract_brain,
    foreground_mask,
    n4_correct,
    orientation_code,
)
from tests import reference as ref

_WORLD_AXIS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0)}
_WORLD_AXIS["I"] = (2, -1.0)


def _geometry(code: str, spacing_xyz, origin=(12.5, -30.0, 7.25)) -> Geometry:
    """An axis-aligned geometry whose voxel axes x, y, z point to ``code``'s letters, with
    voxel sizes ``spacing_xyz`` (x, y, z) in mm: the columns of a diagonal spacing
    matrix, permuted and flipped."""
    affine = np.eye(4)
    for i, letter in enumerate(code):
        world, sign = _WORLD_AXIS[letter]
        affine[:3, i] = 0.0
        affine[world, i] = sign * spacing_xyz[i]
    affine[:3, 3] = origin
    sx, sy, sz = spacing_xyz
    return Geometry((sz, sy, sx), affine)


def _unique(shape, dtype=np.int64) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


def _ball(shape, centre, radius_vox) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    cz, cy, cx = centre
    return (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_vox**2


WIDE = ModelGrid("RAS", (1.0, 1.0, 1.0), ((0.5, 0.5, 0.5), (3.0, 3.0, 3.0)))  # turn only
NARROW = ModelGrid("RAS", (1.2, 1.2, 1.2), ((1.0, 1.0, 1.0), (1.5, 1.5, 1.5)))
CODES = ["RAS", "LPS", "LAS", "PSR", "ILA", "SRP"]


# --- orientation ---------------------------------------------------------------------


@pytest.mark.parametrize("code", CODES + ["RPI", "ASL"])
def test_orientation_code_of_permuted_flipped_affines(code):
    assert orientation_code(_geometry(code, (0.7, 1.1, 2.0))) == code


def test_orientation_code_of_an_oblique_affine_names_the_nearest_axes():
    # voxel x mostly to the left, y mostly posterior, z superior, rotated by ~5 degrees
    c, s = np.cos(0.09), np.sin(0.09)
    affine = np.diag([-0.7, -0.7, 0.7, 1.0])
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ affine[:3, :3]
    assert orientation_code(Geometry((0.7, 0.7, 0.7), affine)) == "LPS"


# --- ModelGrid -----------------------------------------------------------------------


def test_target_spacing_clips_each_axis_to_the_trained_range():
    grid = ModelGrid("RAS", (1.0, 1.5, 1.0), ((0.8, 1.5, 0.8), (1.0, 1.5, 1.0)))
    assert grid.target_spacing((0.7, 0.7, 0.9)) == (0.8, 1.5, 0.9)  # low, clipped, kept
    assert grid.target_spacing((2.0, 1.5, 1.0)) == (1.0, 1.5, 1.0)  # high, kept, kept
    assert grid.target_spacing((0.8, 3.0, 0.85)) == (0.8, 1.5, 0.85)


def test_from_geometries_median_and_range_by_hand():
    # (z, y, x) spacings 1/2/3, 2/2/1, 1.5/1/2 in one orientation
    gs = [_geometry("RAS", (3.0, 2.0, 1.0)), _geometry("RAS", (1.0, 2.0, 2.0))]
    gs.append(_geometry("RAS", (2.0, 1.0, 1.5)))
    grid = ModelGrid.from_geometries(gs)
    assert grid.orientation == "RAS"
    assert grid.spacing_mm == (1.5, 2.0, 2.0)  # medians of z 1,2,1.5; y 2,2,1; x 3,1,2
    assert grid.spacing_range_mm == ((1.0, 1.0, 1.0), (2.0, 2.0, 3.0))


def test_from_geometries_turns_spacings_to_the_first_orientation():
    # second volume: voxel x -> S (4 mm), y -> R (5 mm), z -> A (6 mm); in RAS terms its
    # spacing is R 5, A 6, S 4, i.e. (z, y, x) = (4, 6, 5)
    first = _geometry("RAS", (3.0, 2.0, 1.0))
    second = _geometry("SRA", (4.0, 5.0, 6.0))
    grid = ModelGrid.from_geometries([first, second])
    assert grid.orientation is None  # orientations differ
    assert grid.spacing_mm == (2.5, 4.0, 4.0)
    assert grid.spacing_range_mm == ((1.0, 2.0, 3.0), (4.0, 6.0, 5.0))


def test_from_geometries_needs_a_volume():
    with pytest.raises(ValueError, match="geometries must hold at least one training volume"):
        ModelGrid.from_geometries([])


@pytest.mark.parametrize("orientation", ["LPS", None])
def test_model_grid_dict_round_trip(orientation):
    grid = ModelGrid(orientation, (1.0, 1.5, 0.9), ((0.8, 1.5, 0.8), (1.2, 1.5, 1.0)))
    values = grid.as_dict()
    assert values == {
        "orientation": orientation,
        "spacing_mm": [1.0, 1.5, 0.9],
        "spacing_range_mm": [[0.8, 1.5, 0.8], [1.2, 1.5, 1.0]],
    }
    assert ModelGrid.from_dict(values) == grid


def test_model_grid_from_dict_without_range_uses_the_spacing():
    grid = ModelGrid.from_dict({"orientation": "RAS", "spacing_mm": [1, 2, 3]})
    assert grid.spacing_range_mm == ((1.0, 2.0, 3.0), (1.0, 2.0, 3.0))


def test_model_grid_orientation_is_upper_cased():
    assert ModelGrid("las", (1, 1, 1), ((1, 1, 1), (1, 1, 1))).orientation == "LAS"


@pytest.mark.parametrize("code", ["XYZ", "RRS", "RA", "RASL", "RLS", ""])
def test_model_grid_rejects_bad_orientation(code):
    with pytest.raises(ValueError, match="orientation must be a 3-letter axis code"):
        ModelGrid(code, (1.0, 1.0, 1.0), ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)))


@pytest.mark.parametrize(
    "spacing,spacing_range",
    [
        ((1.0, 1.0), ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0))),  # 2 sizes
        ((1.0, 1.0, 1.0), ((1.0, 1.0), (1.0, 1.0))),  # 2-size range
        ((1.0, 1.0, 1.0), ((1.0, 2.0, 1.0), (1.0, 1.0, 1.0))),  # low > high
        ((1.0, 1.0, 1.0), ((0.0, 1.0, 1.0), (1.0, 1.0, 1.0))),  # zero
        ((1.0, 1.0, 1.0), ((float("nan"), 1.0, 1.0), (1.0, 1.0, 1.0))),
    ],
)
def test_model_grid_rejects_bad_spacings(spacing, spacing_range):
    with pytest.raises(ValueError, match="grid spacing_mm must be 3 positive sizes"):
        ModelGrid("RAS", spacing, spacing_range)


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (-1.0, 1.0, 1.0)])
def test_model_grid_rejects_non_positive_median_spacing(spacing):
    with pytest.raises(ValueError, match="grid spacing_mm must be 3 positive sizes"):
        ModelGrid("RAS", spacing, ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)))


# --- _resize ---------------------------------------------------------------------------


def test_resize_nearest_exact_by_hand():
    # 6 -> 4 voxels: centres at (j + 0.5) * 1.5 - 0.5 = 0.25, 1.75, 3.25, 4.75 -> 0, 2, 3, 5
    a = np.array([10, 11, 12, 13, 14, 15], np.uint8).reshape(1, 1, 6)
    out = _resize(a, (1, 1, 4), order=0)
    assert out.dtype == np.uint8
    assert out.ravel().tolist() == [10, 12, 13, 15]
    # 3 -> 5 voxels: centres at (j + 0.5) * 0.6 - 0.5 = -0.2, 0.4, 1.0, 1.6, 2.2 -> 0, 0, 1, 2, 2
    b = np.array([True, False, True]).reshape(1, 1, 3)
    out = _resize(b, (1, 1, 5), order=0)
    assert out.dtype == bool
    assert out.ravel().tolist() == [True, True, False, True, True]


def test_resize_linear_by_hand():
    # 4 -> 2 voxels: centres at 0.5 and 2.5, half-way between neighbours
    a = np.array([0.0, 10.0, 20.0, 40.0], np.float32).reshape(1, 1, 1, 4)
    out = _resize(a, (1, 1, 2), order=1)
    assert out.dtype == np.float32 and out.shape == (1, 1, 1, 2)
    np.testing.assert_allclose(out.ravel(), [5.0, 30.0])
    # 2 -> 4: centres at -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1)
    b = np.array([0.0, 8.0], np.float32).reshape(1, 1, 2)
    np.testing.assert_allclose(_resize(b, (1, 1, 4), order=1).ravel(), [0.0, 2.0, 6.0, 8.0])


def test_resize_same_shape_returns_the_array_and_bad_order_raises():
    a = np.zeros((2, 3, 4), np.float32)
    assert _resize(a, (2, 3, 4), order=0) is a
    with pytest.raises(ValueError, match=r"order must be 0 \(nearest\) or 1 \(linear\), got 3"):
        _resize(a, (2, 3, 5), order=3)


# --- GridMapping -----------------------------------------------------------------------


def _assert_matches_reference(mapping, geometry, array):
    got = mapping.to_model(array, order=0)
    assert got.shape == mapping.model_shape and got.dtype == array.dtype
    first, second = ref.nearest_on_grid_loop(
        array, geometry.affine, mapping.geometry.affine, mapping.model_shape
    )
    ok = (got == first) | (got == second)
    assert ok.all(), np.argwhere(~ok)[:5]
    return first, second


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("spacing_xyz", [(1.0, 1.2, 2.0), (0.7, 1.2, 2.3), (2.6, 0.6, 1.5)])
def test_to_model_nearest_matches_world_reference(code, spacing_xyz):
    geometry = _geometry(code, spacing_xyz)
    shape = (5, 6, 7)
    array = _unique(shape)
    for grid in (WIDE, NARROW):
        mapping = GridMapping.between(shape, geometry, grid)
        first, second = _assert_matches_reference(mapping, geometry, array)
        assert (first != second).sum() <= first.size // 4  # ties are rare
        assert orientation_code(mapping.geometry) == grid.orientation
        # the geometry's spacing is its affine's column lengths
        lengths = np.linalg.norm(mapping.geometry.affine[:3, :3], axis=0)
        np.testing.assert_allclose(lengths[::-1], mapping.geometry.spacing_mm)
        if grid is WIDE:  # every spacing is trained: turned only
            assert not mapping.resamples
            assert mapping.is_identity == (code == "RAS")
            assert (first == second).all()
        else:
            # NARROW: 0.6/0.7 -> 1.0 and 2.0/2.3/2.6 -> 1.5 per axis (rounded to voxels)
            assert mapping.resamples and not mapping.is_identity
            low, high = grid.spacing_range_mm
            assert all(
                lo - 0.25 <= s <= hi + 0.25
                for s, lo, hi in zip(mapping.geometry.spacing_mm, low, high, strict=True)
            )


@pytest.mark.parametrize("grid", [WIDE, NARROW], ids=["turn", "resample"])
def test_to_model_nearest_matches_world_reference_for_an_oblique_scan(grid):
    # voxel x to the left, y posterior, z superior, rotated by ~6 degrees about two axes
    geometry = _geometry("LPS", (0.7, 1.2, 2.3))
    a, b = 0.1, 0.08
    rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.array(geometry.affine)
    affine[:3, :3] = rot_z @ rot_x @ affine[:3, :3]
    geometry = Geometry(geometry.spacing_mm, affine)
    assert orientation_code(geometry) == "LPS"
    mapping = GridMapping.between((5, 6, 7), geometry, grid)
    assert orientation_code(mapping.geometry) == "RAS"
    _assert_matches_reference(mapping, geometry, _unique((5, 6, 7)))


@pytest.mark.parametrize("code", ["LPS", "PSR"])
def test_to_model_with_no_grid_orientation_resamples_in_input_axes(code):
    grid = ModelGrid(None, (1.2, 1.2, 1.2), ((1.0, 1.0, 1.0), (1.5, 1.5, 1.5)))
    geometry = _geometry(code, (0.7, 1.2, 2.3))
    mapping = GridMapping.between((5, 6, 7), geometry, grid)
    assert mapping.transform is None and mapping.resamples
    assert mapping.turned_shape == (5, 6, 7)
    assert mapping.model_shape == (8, 6, 5)  # z 5 * 2.3 / 1.5, y kept, x 7 * 0.7 / 1.0
    assert orientation_code(mapping.geometry) == code
    _assert_matches_reference(mapping, geometry, _unique((5, 6, 7)))


def test_between_hand_case_and_identity():
    g = Geometry.from_spacing((1.0, 1.0, 1.0))
    grid = ModelGrid("RAS", (2.0, 1.0, 1.0), ((2.0, 1.0, 1.0), (2.0, 1.0, 1.0)))
    m = GridMapping.between((1, 4, 5, 6), g, grid)  # channels in front are ignored
    assert m.input_shape == (4, 5, 6) and m.model_shape == (2, 5, 6)
    assert m.geometry.spacing_mm == (2.0, 1.0, 1.0)
    # slice centres at input z = 0.5 and 2.5: the affine moves the origin by 0.5 mm
    np.testing.assert_allclose(m.geometry.affine[:3, 3], [0.0, 0.0, 0.5])
    for grid in (None, ModelGrid("RAS", (1, 1, 1), ((1, 1, 1), (1, 1, 1)))):
        ident = GridMapping.between((4, 5, 6), g, grid)
        assert ident.is_identity and not ident.resamples
        a = _unique((4, 5, 6))
        assert ident.to_model(a, order=0) is a and ident.to_input(a, order=1) is a


@pytest.mark.parametrize("code", CODES)
def test_to_model_linear_is_exact_on_a_world_linear_field(code):
    """Trilinear interpolation reproduces a linear function of world position wherever
    the model's voxel centres lie among the input's (here: every axis is downsampled)."""
    geometry = _geometry(code, (0.6, 0.7, 0.8))
    shape = (9, 10, 11)
    mapping = GridMapping.between(shape, geometry, NARROW)
    assert all(m < t for m, t in zip(mapping.model_shape, mapping.turned_shape, strict=True))

    def field(affine, shape3):
        zz, yy, xx = np.indices(shape3)
        voxels = np.stack([xx, yy, zz, np.ones_like(xx)]).reshape(4, -1)
        world = (affine @ voxels)[:3]
        return (0.3 * world[0] - 0.2 * world[1] + 0.5 * world[2] + 7.0).reshape(shape3)

    image = field(geometry.affine, shape)[None].astype(np.float32)
    got = mapping.to_model(image, order=1)
    assert got.shape == (1, *mapping.model_shape) and got.dtype == np.float32
    expected = field(mapping.geometry.affine, mapping.model_shape)
    np.testing.assert_allclose(got[0], expected, atol=1e-4)


@pytest.mark.parametrize("code", CODES)
def test_turning_only_is_exact_and_to_input_inverts_it(code):
    geometry = _geometry(code, (0.9, 1.1, 1.3))
    mapping = GridMapping.between((5, 6, 7), geometry, WIDE)
    assert not mapping.resamples
    labels = (_unique((5, 6, 7)) % 251).astype(np.uint8)
    image = np.random.default_rng(0).random((2, 5, 6, 7), dtype=np.float32)
    turned = mapping.to_model(labels, order=0)
    # a pure permutation of the voxels: every value kept once
    assert sorted(turned.ravel().tolist()) == sorted(labels.ravel().tolist())
    np.testing.assert_array_equal(mapping.to_input(turned, order=0), labels)
    turned_image = mapping.to_model(image, order=1)
    np.testing.assert_array_equal(turned_image[1], mapping.to_model(image[1], order=1))
    np.testing.assert_array_equal(mapping.to_input(turned_image, order=1), image)


@pytest.mark.parametrize("code", ["RAS", "LPS", "PSR"])
def test_resampled_round_trip_keeps_a_label_blob(code):
    shape = (22, 26, 30)
    labels = np.zeros(shape, np.uint8)
    labels[_ball(shape, (11, 13, 15), 9)] = 1
    labels[_ball(shape, (11, 13, 15), 5)] = 2
    geometry = _geometry(code, (0.7, 2.3, 1.2))
    mapping = GridMapping.between(shape, geometry, NARROW)
    assert mapping.resamples
    back = mapping.to_input(mapping.to_model(labels, order=0), order=0)
    assert back.shape == shape and back.dtype == np.uint8
    blob = labels > 0
    assert (back[blob] == labels[blob]).mean() >= 0.95
    assert (back == labels).mean() >= 0.95
    probs = np.stack([labels == k for k in range(3)]).astype(np.float32)
    probs_back = mapping.to_input(mapping.to_model(probs, order=1), order=1)
    assert probs_back.shape == (3, *shape)
    np.testing.assert_allclose(probs_back.sum(0), 1.0, atol=1e-5)  # linear keeps the sum


# --- foreground and skull-stripped decision --------------------------------------------


def test_foreground_mask_uses_the_first_channel_and_its_minimum():
    image = np.full((2, 2, 2, 2), -5.0, np.float32)
    image[0, 0, 0, 0] = -4.0
    image[1] = 100.0  # the second channel does not decide
    mask = foreground_mask(image)
    assert mask.dtype == bool and mask.sum() == 1 and mask[0, 0, 0]


def _slab_masks(brain_slices: int, far_slice: int | None, near_slice: int | None = None):
    """(40, 8, 8) masks: the brain is slices 0..brain_slices-1; the foreground is the brain
    plus whole slices at far_slice and near_slice."""
    brain = np.zeros((40, 8, 8), bool)
    brain[:brain_slices] = True
    fg = brain.copy()
    for s in (far_slice, near_slice):
        if s is not None:
            fg[s] = True
    return fg, brain


def test_detect_skull_stripped_by_hand():
    spacing = (2.0, 2.0, 2.0)  # no subsampling at 2 mm
    fg, brain = _slab_masks(5, None)
    assert detect_skull_stripped(fg, brain, spacing) == (True, 0.0)
    # a shell slice 15 slices (30 mm) beyond the brain's last slice, one 4 slices (8 mm)
    fg, brain = _slab_masks(5, far_slice=19, near_slice=8)
    stripped, far = detect_skull_stripped(fg, brain, spacing)
    assert not stripped and far == pytest.approx(64 / (7 * 64))
    # exactly 10 mm (5 slices) away is not farther than STRIPPED_FAR_MM
    assert STRIPPED_FAR_MM == 10.0
    fg, brain = _slab_masks(5, far_slice=9)
    assert detect_skull_stripped(fg, brain, spacing) == (True, 0.0)
    fg, brain = _slab_masks(5, far_slice=10)  # 12 mm
    assert detect_skull_stripped(fg, brain, spacing) == (False, pytest.approx(1 / 6))


def test_detect_skull_stripped_threshold_by_hand():
    # one far slice of 64 voxels: 1/21 < 0.05 is stripped, 1/20 = 0.05 is not
    fg, brain = _slab_masks(20, far_slice=35)
    assert detect_skull_stripped(fg, brain, (2.0, 2.0, 2.0)) == (True, pytest.approx(1 / 21))
    fg, brain = _slab_masks(19, far_slice=35)
    assert detect_skull_stripped(fg, brain, (2.0, 2.0, 2.0)) == (False, pytest.approx(1 / 20))


def test_detect_skull_stripped_empty_masks():
    empty = np.zeros((4, 4, 4), bool)
    full = np.ones((4, 4, 4), bool)
    stripped, far = detect_skull_stripped(empty, full, (1.0, 1.0, 1.0))
    assert not stripped and np.isnan(far)
    assert detect_skull_stripped(full, empty, (1.0, 1.0, 1.0)) == (False, 1.0)


@pytest.mark.parametrize(
    "spacing", [(2.0, 2.0, 2.0), (1.0, 1.0, 1.0), (0.9375, 1.5, 0.9375), (3.0, 0.5, 1.2)]
)
def test_detect_skull_stripped_matches_brute_force(spacing):
    rng = np.random.default_rng(int(10 * sum(spacing)))
    shape = (14, 16, 12)
    brain = _ball(shape, (7, 8, 6), 3)
    fg = brain | (rng.random(shape) < 0.08)
    stripped, far = detect_skull_stripped(fg, brain, spacing)
    expected = ref.far_fraction_brute(fg, brain, spacing, STRIPPED_FAR_MM)
    assert far == pytest.approx(expected, abs=1e-12)
    assert stripped == (expected < 0.05)


# --- brain_mask: decision logic (deepbet replaced) --------------------------------------


def _head(shape=(30, 32, 32)):
    """A bright 'brain' ball (115 mm across) in a dimmer 'skull' shell (145 mm), zero
    background, 5 mm voxels: a whole head for brain_mask's size check."""
    image = np.zeros((1, *shape), np.float32)
    centre = tuple(n // 2 for n in shape)
    image[0][_ball(shape, centre, 14)] = 30.0
    brain = _ball(shape, centre, 11)
    image[0][brain] = 100.0
    return image, brain, Geometry.from_spacing((5.0, 5.0, 5.0))


def _fake_deepbet(monkeypatch, result):
    """Replace deepbet by ``result`` (a mask, or an exception to raise); returns the calls."""
    calls = []

    def fake(image, geometry, device="cpu"):
        calls.append(image.shape)
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr(preprocess, "extract_brain", fake)
    return calls


def test_brain_mask_decisions_with_a_given_brain(monkeypatch):
    image, brain, geometry = _head()
    calls = _fake_deepbet(monkeypatch, brain)
    auto = brain_mask(image, geometry, mode="auto")
    assert auto.stripped and np.array_equal(auto.mask, brain)
    assert auto.reason.startswith("auto: skull found") and "deepbet" in auto.reason
    # the shell's outer voxels (radius > 13) lie > 2 voxels (10 mm) outside the brain
    assert auto.far_fraction > 0.05
    # the same image already stripped: keep it, its (hole-filled) foreground is the mask
    stripped_image = np.where(brain, image, 0).astype(np.float32)
    stripped_image[0, 15, 16, 16] = 0.0  # a hole inside the brain
    kept = brain_mask(stripped_image, geometry, mode="auto")
    assert not kept.stripped and kept.far_fraction == 0.0
    assert kept.reason.startswith("auto: already skull-stripped")
    np.testing.assert_array_equal(kept.mask, brain)  # hole filled
    forced = brain_mask(stripped_image, geometry, mode="always")
    assert forced.stripped and forced.reason == "always; stripped with deepbet"
    never = brain_mask(image, geometry, mode="never")
    assert not never.stripped and np.isnan(never.far_fraction)
    assert never.reason == "never: kept as given"
    np.testing.assert_array_equal(never.mask, image[0] > 0)
    assert len(calls) == 3  # "never" does not run deepbet


def test_brain_mask_keeps_a_partial_view_without_deepbet(monkeypatch):
    image, brain, geometry = _head()
    calls = _fake_deepbet(monkeypatch, brain)
    small = Geometry.from_spacing((3.0, 3.0, 3.0))  # the same voxels span 87 mm
    with pytest.warns(UserWarning, match="scan: the image shows 87 x 87 x 87 mm"):
        kept = brain_mask(image, small, mode="auto", what="scan")
    assert not kept.stripped and kept.reason.startswith("auto: partial view (87 x 87 x 87 mm)")
    np.testing.assert_array_equal(kept.mask, image[0] > 0)
    assert calls == []
    forced = brain_mask(image, small, mode="always")  # forced: deepbet runs all the same
    assert forced.stripped and len(calls) == 1


@pytest.mark.parametrize("found", ["empty", "error"])
def test_brain_mask_without_a_brain_from_deepbet(monkeypatch, found):
    image, brain, geometry = _head()
    _fake_deepbet(monkeypatch, np.zeros_like(brain) if found == "empty" else ValueError("no head"))
    with pytest.warns(UserWarning, match="scan: deepbet found no brain"):
        kept = brain_mask(image, geometry, mode="auto", what="scan")
    assert not kept.stripped and kept.reason == "auto: no brain found by deepbet; kept as given"
    np.testing.assert_array_equal(kept.mask, image[0] > 0)
    with pytest.raises(
        ValueError, match="scan must show a brain for --skull-strip always, got an empty brain"
    ):
        brain_mask(image, geometry, mode="always", what="scan")


def test_brain_mask_errors():
    image, _, geometry = _head()
    with pytest.raises(ValueError, match="--skull-strip must be one of auto, always, never"):
        brain_mask(image, geometry, mode="sometimes")
    for mode in ("auto", "always", "never"):
        with pytest.raises(ValueError, match=r"scan must have voxels .* got a constant image"):
            brain_mask(np.full((1, 4, 4, 4), 7.0, np.float32), geometry, mode=mode, what="scan")


def test_brain_mask_volume_ml_by_hand():
    mask = np.zeros((4, 4, 4), bool)
    mask[:2, :2, :2] = True  # 8 voxels of 2 x 1.5 x 1 mm = 24 mm^3
    assert BrainMask(mask, True, "").volume_ml((2.0, 1.5, 1.0)) == pytest.approx(0.024)


def test_extract_brain_refuses_an_empty_volume():
    with pytest.raises(ValueError, match="image must show a head for brain extraction"):
        extract_brain(np.zeros((1, 32, 32, 32), np.float32), Geometry.from_spacing((1, 1, 1)))


# --- brain_mask on real data (deepbet) -------------------------------------------------


@pytest.fixture(scope="module")
def ibsr04(shared_data):
    """IBSR_04 (skull-stripped), its mode="auto" BrainMask and deepbet's own mask."""
    vol = read_image(shared_data / "ibsr18" / "IBSR_04" / "IBSR_04_t1.nii.gz")
    seen = []
    real = preprocess.extract_brain

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(preprocess, "extract_brain", spy)
        auto = brain_mask(vol.array, vol.geometry, mode="auto")
    assert len(seen) == 1
    return vol, auto, seen[0]


def test_real_stripped_ibsr_is_not_stripped_again(ibsr04, shared_data):
    vol, auto, deepbet_mask = ibsr04
    assert not auto.stripped and auto.reason.startswith("auto: already skull-stripped")
    assert auto.far_fraction < 0.05
    from scipy import ndimage

    np.testing.assert_array_equal(auto.mask, ndimage.binary_fill_holes(vol.array[0] > 0))
    # deepbet's mask lies on the right grid: it matches the expert brain labels
    labels = read_image(shared_data / "ibsr18" / "IBSR_04" / "IBSR_04_labels.nii.gz").array[0]
    truth = labels > 0
    dice = 2 * (deepbet_mask & truth).sum() / (deepbet_mask.sum() + truth.sum())
    assert dice > 0.9, dice


def test_real_ibsr_always_strips(ibsr04, monkeypatch):
    vol, _, deepbet_mask = ibsr04
    monkeypatch.setattr(preprocess, "extract_brain", lambda *a, **k: deepbet_mask)  # cached
    forced = brain_mask(vol.array, vol.geometry, mode="always")
    assert forced.stripped and forced.reason == "always; stripped with deepbet"
    assert forced.mask is deepbet_mask
    never = brain_mask(vol.array, vol.geometry, mode="never")
    assert not never.stripped


def test_real_ibsr_slab_is_not_stripped(shared_data):
    img = nib.load(shared_data / "ibsr18" / "IBSR_04" / "IBSR_04_t1.nii.gz")
    slab = volume_from_nifti(img.slicer[:, :, 120:132])
    assert slab.spatial_shape[0] == 12
    result = brain_mask(slab.array, slab.geometry, mode="auto")
    assert not result.stripped, result.reason
    np.testing.assert_array_equal(result.mask[slab.array[0] > 0], True)


def _mni(resolution: int):
    datasets = pytest.importorskip("nilearn.datasets")
    return volume_from_nifti(datasets.load_mni152_template(resolution=resolution))


def test_real_mni152_2mm_template_is_not_stripped():
    mni = _mni(2)
    result = brain_mask(mni.array, mni.geometry, mode="auto")
    assert not result.stripped, result.reason


@pytest.mark.slow
def test_real_mni152_1mm_template_is_not_stripped():
    mni = _mni(1)
    result = brain_mask(mni.array, mni.geometry, mode="auto")
    assert not result.stripped, result.reason


def test_real_raw_dicom_head_is_stripped(shared_data):
    vol = read_image(shared_data / "studyforrest_t1_dicom")
    # every 2nd voxel: twice the spacing, the same origin, the affine's columns doubled
    array = np.ascontiguousarray(vol.array[:, ::2, ::2, ::2])
    geometry = Geometry(
        tuple(2 * s for s in vol.geometry.spacing_mm),
        vol.geometry.affine @ np.diag([2.0, 2.0, 2.0, 1.0]),
    )
    result = brain_mask(array, geometry, mode="auto")
    assert result.stripped and result.reason.startswith("auto: skull found"), result.reason
    assert result.far_fraction > 0.2
    tiv = result.volume_ml(geometry.spacing_mm)
    assert 1200 <= tiv <= 2000, tiv  # an adult's intracranial volume
    assert result.mask.shape == array.shape[1:]


# --- N4 --------------------------------------------------------------------------------


def _phantom(n=40):
    """Three tissues in a sphere and a smooth multiplicative bias (x ramp, z ramp)."""
    shape = (n, n, n)
    centre = (n // 2, n // 2, n // 2)
    truth = np.zeros(shape, np.float32)
    truth[_ball(shape, centre, 16)] = 60.0  # GM-like shell
    wm = _ball(shape, centre, 11)
    truth[wm] = 100.0  # the brightest tissue
    truth[_ball(shape, centre, 4)] = 30.0  # CSF-like core
    wm &= ~_ball(shape, centre, 5)
    wm &= _ball(shape, centre, 10)  # away from partial volumes
    rng = np.random.default_rng(0)
    truth = truth + rng.normal(0, 1.0, shape).astype(np.float32) * (truth > 0)
    ramp = np.linspace(-1, 1, n, dtype=np.float32)
    bias_x = np.exp(0.5 * ramp)[None, None, :]
    bias_z = np.exp(-0.4 * ramp)[:, None, None]
    image = np.stack([truth * bias_x, truth * bias_z]).astype(np.float32)
    return image, _ball(shape, centre, 16), wm


def _cv(values):
    return float(values.std() / values.mean())


def test_n4_flattens_a_smooth_bias_inside_the_mask():
    image, mask, wm = _phantom()
    out = n4_correct(image, mask, (1.5, 1.5, 1.5))
    assert out.shape == image.shape and out.dtype == np.float32
    for c in range(2):  # each channel has its own bias
        before, after = _cv(image[c][wm]), _cv(out[c][wm])
        assert before > 0.08  # the bias spreads the brightest tissue
        assert after < 0.3 * before, (c, before, after)
        np.testing.assert_array_equal(out[c][~mask], image[c][~mask])  # outside: unchanged


def test_n4_errors():
    image = np.ones((1, 8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="mask must hold at least one voxel for N4, got an empty"):
        n4_correct(image, np.zeros((8, 8, 8), bool), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"mask must have shape \(8, 8, 8\), got \(8, 8, 7\)"):
        n4_correct(image, np.ones((8, 8, 7), bool), (1.0, 1.0, 1.0))


# --- bounding_box ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_bounding_box_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(3, 15, 3))
    for density in (0.002, 0.02, 0.3):
        mask = rng.random(shape) < density
        for margin in [(0, 0, 0), (1, 2, 3), (20, 0, 1), tuple(rng.integers(0, 6, 3))]:
            margin = tuple(int(m) for m in margin)
            assert bounding_box(mask, margin) == ref.bounding_box_loop(mask, margin)


def test_bounding_box_hand_cases():
    mask = np.zeros((5, 6, 7), bool)
    assert bounding_box(mask, (1, 1, 1)) == (slice(0, 5), slice(0, 6), slice(0, 7))
    mask[0, 5, 3] = True  # on two borders: the margin is clipped there
    mask[1, 4, 4] = True
    assert bounding_box(mask, (2, 2, 0)) == (slice(0, 4), slice(2, 6), slice(3, 5))


# --- crop_box and predict_array(roi=...) (medseg.predict) -----------------------------


def _full_grid_windows_in_box(roi, spec):
    """(active windows of the whole volume, shifted into the box) and the box's windows."""
    moved = np.moveaxis(roi, spec.slice_axis, 0)
    grid = make_grid(moved.shape, spec)
    active = ref.active_windows_loop(moved, grid).reshape(-1)
    box = crop_box(roi, spec)
    order = [spec.slice_axis] + [a for a in range(3) if a != spec.slice_axis]
    moved_box = [box[a] for a in order]
    start = np.array([s.start for s in moved_box])
    needed = {tuple(loc - start) for loc, on in zip(grid.locations(), active, strict=True) if on}
    box_grid = make_grid([s.stop - s.start for s in moved_box], spec)
    have = {tuple(loc) for loc in box_grid.locations()}
    return needed, have, moved_box, moved


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
@pytest.mark.parametrize("seed", range(4))
def test_crop_box_keeps_every_window_that_touches_the_roi(slice_axis, seed):
    rng = np.random.default_rng(seed)
    shape = (11, 37, 30)
    roi = np.zeros(shape, bool)
    lo = [int(rng.integers(0, n - 2)) for n in shape]
    hi = [int(rng.integers(a + 1, min(n, a + 12) + 1)) for a, n in zip(lo, shape, strict=True)]
    roi[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = (
        rng.random((hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2])) < 0.5
    )
    roi[lo[0], lo[1], lo[2]] = True
    for size, stride, slices in [(8, 4, 3), ((7, 9), (3, 2), 5), (6, 6, 1)]:
        spec = PatchSpec.two_and_half_d(size, stride, num_slices=slices, slice_axis=slice_axis)
        needed, have, moved_box, moved = _full_grid_windows_in_box(roi, spec)
        assert needed <= have
        # along the slice axis: the ROI's slices and the neighbours a patch reads
        z = np.flatnonzero(moved.any(axis=(1, 2)))
        half = slices // 2
        assert moved_box[0] == slice(max(0, z[0] - half), min(moved.shape[0], z[-1] + 1 + half))


def test_crop_box_keeps_the_windows_of_3d_patches():
    roi = np.zeros((20, 20, 20), bool)
    roi[6, 10, 10] = True  # whole-volume windows along z start at 4 and 6 (stride 2)
    needed, have, moved_box, _ = _full_grid_windows_in_box(roi, PatchSpec((4, 6, 6), (2, 3, 3)))
    assert needed <= have, (moved_box, needed, have)


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    return create_model(
        "usegnet", in_channels=3, num_classes=4, spatial_dims=2, base_features=4
    ).eval()


def _roi_volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 1, (1, *shape)).astype(np.float32)
    # two balls; the ROI's box starts off the stride's multiples (y 13, x 9 for 30 x 28)
    roi = _ball(shape, (shape[0] // 2, shape[1] // 2 + 2, shape[2] // 2 - 1), 4)
    roi |= _ball(shape, (shape[0] // 2 + 1, shape[1] // 2 + 1, shape[2] // 2 + 4), 3)
    return image, roi


@pytest.mark.parametrize("slice_axis", [0, 1])
def test_predict_volume_with_roi_equals_without_on_the_roi(small_net, slice_axis):
    image, roi = _roi_volume((14, 30, 28))
    spec = PatchSpec.two_and_half_d(8, 4, slice_axis=slice_axis)
    full = predict_array(small_net, image, spec, mode="vote", device="cpu", return_probs=True)
    part = predict_array(
        small_net, image, spec, mode="vote", device="cpu", return_probs=True, roi=roi
    )
    assert len(np.unique(full.labels[roi])) > 1  # a real test: several classes in the ROI
    np.testing.assert_array_equal(part.labels[roi], full.labels[roi])
    np.testing.assert_array_equal(part.confidence[roi], full.confidence[roi])
    np.testing.assert_allclose(part.probs[:, roi], full.probs[:, roi], rtol=0, atol=1e-6)
    box = crop_box(roi, spec)
    outside = np.ones(roi.shape, bool)
    outside[box] = False
    assert outside.sum() > 0.3 * outside.size  # the box is a part of the volume
    assert (part.labels[outside] == 0).all() and (part.confidence[outside] == 1).all()
    assert (part.probs[0][outside] == 1).all() and (part.probs[1:, outside] == 0).all()


def test_predict_volume_fast_with_roi_zeroes_slices_without_roi(small_net):
    image, roi = _roi_volume((12, 40, 40))
    roi[:4] = False  # slices 0..3 without ROI voxels
    spec = PatchSpec.two_and_half_d(16, 8)
    out = predict_array(small_net, image, spec, device="cpu", fast=True, roi=roi)
    empty = ~roi.any(axis=(1, 2))
    assert empty.sum() >= 4
    assert (out.labels[empty] == 0).all() and (out.confidence[empty] == 1).all()
    assert out.labels.shape == roi.shape and out.labels.dtype == np.uint8
    assert len(np.unique(out.labels[roi])) > 1


def test_predict_volume_fast_with_roi_pointwise_net_equals_without_on_the_roi():
    """A 1x1 convolution sees no context, so cropping cannot change its ROI voxels."""
    image, roi = _roi_volume((14, 32, 32))
    torch.manual_seed(1)
    net = _Counting(torch.nn.Conv2d(3, 4, 1)).eval()
    spec = PatchSpec.two_and_half_d(8, 4)
    full = predict_array(net, image, spec, device="cpu", fast=True, return_probs=True)
    part = predict_array(net, image, spec, device="cpu", fast=True, return_probs=True, roi=roi)
    assert len(np.unique(full.labels[roi])) > 1
    np.testing.assert_array_equal(part.labels[roi], full.labels[roi])
    np.testing.assert_array_equal(part.confidence[roi], full.confidence[roi])
    np.testing.assert_array_equal(part.probs[:, roi], full.probs[:, roi])
    empty = ~roi.any(axis=(1, 2))
    assert (part.labels[empty] == 0).all() and (part.probs[0][empty] == 1).all()


def test_predict_volume_fast_with_roi_is_close_to_without_on_the_roi(small_net):
    """Whole slices cropped to the box plus FAST_ROI_MARGIN px: the network sees less
    context near the box's edge, so the agreement is high but not exact (documented)."""
    image, roi = _roi_volume((14, 40, 40))
    spec = PatchSpec.two_and_half_d(8, 4)
    full = predict_array(small_net, image, spec, device="cpu", fast=True)
    part = predict_array(small_net, image, spec, device="cpu", fast=True, roi=roi)
    assert (part.labels[roi] == full.labels[roi]).mean() >= 0.97


class _Counting(torch.nn.Module):
    """Wraps a network and counts the slices (batch items) it is given."""

    divisor = 8  # whole-slice (fast) prediction pads slices to this

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.seen = 0

    def forward(self, x):
        self.seen += int(x.shape[0])
        return self.net(x)


def test_predict_volume_fast_with_roi_runs_only_roi_slices_and_their_neighbours():
    image, roi = _roi_volume((14, 32, 32))
    torch.manual_seed(1)
    net = _Counting(torch.nn.Conv2d(3, 4, 1)).eval()
    spec = PatchSpec.two_and_half_d(8, 4)  # fp32: a bfloat16 run would count on a copy
    predict_array(net, image, spec, device="cpu", fast=True, roi=roi, precision="fp32")
    z = np.flatnonzero(roi.any(axis=(1, 2)))
    assert net.seen == min(14, z[-1] + 2) - max(0, z[0] - 1)  # one context slice per side


def test_predict_volume_roi_shape_error(small_net):
    image, roi = _roi_volume((6, 20, 20))
    with pytest.raises(ValueError, match=r"roi must have shape \(6, 20, 20\), got \(6, 20, 19\)"):
        predict_array(
            small_net, image, PatchSpec.two_and_half_d(8, 4), device="cpu", roi=roi[..., 1:]
        )
