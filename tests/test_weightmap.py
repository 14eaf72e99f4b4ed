"""Tests for medseg.weightmap: the naive reference (one full-image EDT per cell), hand cases,
real instance maps (DSB2018, MICCAI, ISBI 2012), class weights and every error."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from medseg.io import Geometry, read_instances, read_label, write_label
from medseg.manifest import load_manifest
from medseg.weightmap import (
    BORDER_TOLERANCE,
    class_frequencies,
    instances_from_mask,
    manifest_class_weights,
    median_frequency_weights,
    natural_frequency_weights,
    unet_weight_map,
)
from tests import reference as ref

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-4  # agreement required with the naive reference

DSB_IDS = (  # dev images with many touching nuclei (index.csv: 16 and 47 touching pairs)
    "0a849e0eb15faa8a6d7329c3dd66aabe9a294cccb52ed30a90c8ca99092ae732",
    "1962d0c5faf3e85cda80e0578e0cb7aca50826d781620e5c1c4cc586bc69f81a",
)


def _voronoi_cells(shape, num_cells: int, seed: int, radius: float) -> np.ndarray:
    """``ref.voronoi_cells`` with non-contiguous ids: cell k (1..num_cells) becomes 7 * k - 4,
    so the ids are 3, 10, 17, ... in a seeded order. int32, ``shape``."""
    cells = ref.voronoi_cells(shape, num_cells, seed, radius)
    return np.where(cells > 0, 7 * cells - 4, 0)


def _check_against_naive(instances, **kwargs) -> np.ndarray:
    got = unet_weight_map(instances, **kwargs)
    want = ref.unet_weight_map_naive(instances, **kwargs)
    assert got.dtype == np.float32
    assert got.shape == instances.shape
    assert_allclose(got, want, rtol=0, atol=ATOL)
    return got


# ---------------------------------------------------------------------------
# unet_weight_map against the naive reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "num_cells", "seed", "radius", "w0", "sigma"),
    [
        ((1, 96, 110), 25, 0, 12, 10.0, 5.0),
        ((1, 150, 170), 60, 1, 10, 10.0, 3.0),  # windows much smaller than the image
        ((1, 64, 70), 20, 2, 8, 5.0, 2.0),
        ((1, 50, 61), 8, 3, 30, 30.0, 8.0),  # windows cover the whole image
        ((1, 40, 45), 30, 4, 100, 10.0, 5.0),  # cells fill the image: touch the border
    ],
)
def test_voronoi_cells_match_naive(shape, num_cells, seed, radius, w0, sigma):
    cells = _voronoi_cells(shape, num_cells, seed, radius)
    assert len(np.unique(cells)) > 2
    _check_against_naive(cells, w0=w0, sigma=sigma)


def test_square_grid_with_one_pixel_gaps_matches_naive():
    cells = np.zeros((1, 69, 77), dtype=np.int32)
    ids = iter(range(5, 10_000, 11))  # non-contiguous
    for y in range(0, 69, 7):
        for x in range(0, 77, 7):
            cells[0, y : y + 6, x : x + 6] = next(ids)  # 6x6 squares, 1-px gaps
    got = _check_against_naive(cells)
    # a gap pixel between two squares: d1 = d2 = 1, w = w_c(bg) + 10 exp(-4 / 50)
    n_bg = int((cells == 0).sum())
    w_bg = cells.size / (2 * n_bg)
    assert_allclose(got[0, 3, 6], w_bg + 10 * math.exp(-4 / 50), atol=1e-5)


def test_cells_touching_the_border_match_naive():
    cells = np.zeros((1, 30, 41), dtype=np.int32)
    cells[0, :5, :] = 4  # along the top edge
    cells[0, 8:, :3] = 9  # along the left edge
    cells[0, 10:20, 30:] = 2  # on the right edge
    cells[0, 25:, 10:25] = 1000  # on the bottom edge
    _check_against_naive(cells)


def test_two_dimensional_input_equals_z1_input():
    cells = _voronoi_cells((1, 40, 45), 10, 5, 9)
    w2d = unet_weight_map(cells[0])
    assert w2d.shape == (40, 45)
    assert_array_equal(w2d, unet_weight_map(cells)[0])
    assert_allclose(w2d, ref.unet_weight_map_naive(cells[0]), rtol=0, atol=ATOL)


def test_3d_stack_matches_naive():
    cells = _voronoi_cells((9, 40, 44), 18, 6, 7)
    assert len(np.unique(cells[:, 0, :])) > 1  # cells span several slices
    _check_against_naive(cells, sigma=2.0)
    # 3D differs from slice-by-slice 2D
    per_slice = np.stack([unet_weight_map(s, sigma=2.0) for s in cells])
    assert np.abs(per_slice - unet_weight_map(cells, sigma=2.0)).max() > 0.1


@pytest.mark.parametrize("spacing", [(3.0, 1.0, 1.0), (1.0, 0.5, 1.5), (2.5, 2.0, 0.7)])
def test_anisotropic_spacing_matches_naive(spacing):
    cells = _voronoi_cells((8, 36, 40), 16, 7, 8)
    _check_against_naive(cells, sigma=3.0, spacing=spacing)


def test_spacing_of_2d_map_ignores_z():
    cells = _voronoi_cells((1, 50, 60), 15, 8, 10)
    got = _check_against_naive(cells, sigma=4.0, spacing=(7.0, 0.8, 1.3))
    assert_array_equal(got, unet_weight_map(cells, sigma=4.0, spacing=(1.0, 0.8, 1.3)))
    assert_array_equal(got[0], unet_weight_map(cells[0], sigma=4.0, spacing=(0.8, 1.3)))


@pytest.mark.parametrize("class_weights", [{0: 1.0, 1: 3.0}, (0.5, 0.0), [2, 2]])
def test_class_weights_override_matches_naive(class_weights):
    cells = _voronoi_cells((1, 48, 52), 14, 9, 9)
    got = _check_against_naive(cells, class_weights=class_weights)
    values = list(class_weights.values()) if isinstance(class_weights, dict) else class_weights
    assert_allclose(got[cells > 0], values[1])


def test_single_cell_gets_class_weights_only():
    cells = np.zeros((1, 20, 23), dtype=np.int64)
    cells[0, 5:9, 4:12] = 17
    got = _check_against_naive(cells)
    n, n_cell = cells.size, 32
    assert_allclose(got[cells == 0], n / (2 * (n - n_cell)), rtol=1e-6)
    assert_allclose(got[cells > 0], n / (2 * n_cell), rtol=1e-6)


def test_empty_image_and_all_cells_image_get_ones():
    empty = np.zeros((1, 9, 11), dtype=np.uint16)
    assert_array_equal(_check_against_naive(empty), np.ones(empty.shape, np.float32))
    full = np.full((3, 5, 7), 4, dtype=np.int32)
    assert_array_equal(_check_against_naive(full), np.ones(full.shape, np.float32))
    two_cells_no_background = np.repeat(np.array([[[1, 2]]]), 3, axis=1)
    assert_array_equal(unet_weight_map(two_cells_no_background), np.ones((1, 3, 2), np.float32))


def test_hand_two_cells_with_two_pixel_gap():
    # columns: cell 1 at x = 0, 1; background at x = 2, 3; cell 2 at x = 4, 5.
    # Distance convention: from a background pixel to the nearest pixel OF the cell, so
    # at x = 2: d1 = 1 (to x = 1), d2 = 2 (to x = 4); at x = 3 the same by symmetry.
    cells = np.repeat(np.array([[[1, 1, 0, 0, 2, 2]]]), 4, axis=1)  # (1, 4, 6)
    w = unet_weight_map(cells, w0=10.0, sigma=5.0)
    w_bg = 24 / (2 * 8)  # N / (K N_bg) = 1.5
    w_cell = 24 / (2 * 16)  # 0.75
    expected_gap = w_bg + 10 * math.exp(-9 / 50)
    assert_allclose(expected_gap, 9.852702108, atol=1e-8)  # typed out
    assert_allclose(w[0, :, 2:4], expected_gap, atol=1e-6)
    assert_allclose(w[0, :, [0, 1, 4, 5]], w_cell, atol=1e-7)


def test_default_class_weights_balance_background_and_cells():
    cells = _voronoi_cells((1, 70, 80), 20, 10, 10)
    background = cells == 0
    # w0 tiny: the border term vanishes, w = w_c
    w = unet_weight_map(cells, w0=1e-30).astype(np.float64)
    assert_allclose(w[background].sum(), w[~background].sum(), rtol=1e-5)
    assert_allclose(w[background].sum(), cells.size / 2, rtol=1e-5)
    # with the border term, cell pixels still carry exactly w_c and background gets more
    w_full = unet_weight_map(cells)
    assert_array_equal(w_full[~background], w[~background].astype(np.float32))
    assert (w_full[background] >= w[background].astype(np.float32)).all()


def test_error_bound_holds_where_windows_cut_distances():
    # sparse cells far apart: many background pixels lie outside some windows
    cells = _voronoi_cells((1, 160, 180), 12, 11, 6)
    got = unet_weight_map(cells, w0=10.0, sigma=2.0)
    want = ref.unet_weight_map_naive(cells, w0=10.0, sigma=2.0)
    assert np.abs(got.astype(np.float64) - want).max() <= BORDER_TOLERANCE + 1e-6


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint32, np.int64, np.uint64])
def test_integer_dtypes_and_huge_sparse_ids(dtype):
    cells = _voronoi_cells((1, 45, 50), 12, 13, 9)  # ids 3..80
    want = ref.unet_weight_map_naive(cells)
    assert_allclose(unet_weight_map(cells.astype(dtype)), want, rtol=0, atol=ATOL)
    if np.iinfo(dtype).max > 2**40:  # ids far above the pixel count are relabelled
        huge = np.where(cells > 0, cells.astype(dtype) * (2**33) + 1, 0).astype(dtype)
        assert_allclose(unet_weight_map(huge), want, rtol=0, atol=ATOL)


def test_axis_longer_than_int32_squared_distances():
    # sum of squared axis lengths > 2**31: squared distances are kept in int64
    cells = np.zeros((2, 50_000), dtype=np.int32)
    cells[:, :3] = 1
    cells[:, 6:9] = 2
    cells[:, 49_990:] = 3
    _check_against_naive(cells)


def test_pure_and_deterministic():
    cells = _voronoi_cells((1, 30, 33), 8, 12, 8)
    before = cells.copy()
    first = unet_weight_map(cells)
    assert_array_equal(cells, before)
    assert_array_equal(first, unet_weight_map(cells))


# ---------------------------------------------------------------------------
# Real instance maps (../shared/data); skipped where absent
# ---------------------------------------------------------------------------


def _real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data file {path} is absent")
    return path


@pytest.mark.parametrize("image_id", DSB_IDS)
def test_dsb2018_matches_naive(image_id):
    path = _real(DATA / "dsb2018_stage1_test" / "labels" / f"{image_id}.png")
    cells = read_instances(path).array[:, :256, :256]
    assert len(np.unique(cells)) > 40
    got = _check_against_naive(cells)
    assert got.max() > 5  # touching / close nuclei get a strong border term


def test_miccai_matches_naive():
    path = _real(DATA / "miccai2015_nuclei_he" / "labels" / "image07.png")
    cells = read_instances(path).array[:, 100:356, 100:356]
    assert len(np.unique(cells)) > 50
    _check_against_naive(cells)


def test_isbi_components_match_naive():
    path = _real(DATA / "isbi2012_em" / "labels" / "slice_00.png")
    label = read_label(path).array
    cells = instances_from_mask(label)
    assert cells.dtype == np.int32 and cells.shape == (1, 512, 512)
    assert cells.max() > 100  # many cell profiles separated by membranes
    crop = cells[:, :160, :200]
    _check_against_naive(crop)


# ---------------------------------------------------------------------------
# instances_from_mask
# ---------------------------------------------------------------------------


def test_instances_from_mask_hand():
    mask = np.array(
        [[[255, 255, 0, 0, 255], [0, 0, 255, 0, 255], [255, 0, 0, 0, 0]]], dtype=np.uint8
    )
    assert_array_equal(
        instances_from_mask(mask),
        [[[1, 1, 0, 0, 2], [0, 0, 3, 0, 2], [4, 0, 0, 0, 0]]],
    )
    # 8-connectivity joins the diagonal pixel (1, 2) to the first component
    assert_array_equal(
        instances_from_mask(mask, connectivity=2),
        [[[1, 1, 0, 0, 2], [0, 0, 1, 0, 2], [3, 0, 0, 0, 0]]],
    )
    assert_array_equal(instances_from_mask(mask[0] > 0), instances_from_mask(mask)[0])


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_instances_from_mask_3d_matches_flood_fill(connectivity):
    mask = np.random.default_rng(connectivity).random((4, 5, 6)) < 0.35  # seeded
    got = instances_from_mask(mask, connectivity=connectivity)
    assert_array_equal(got, ref.connected_components_loop(mask, connectivity))


def test_instances_from_mask_isbi_crop_matches_flood_fill():
    path = _real(DATA / "isbi2012_em" / "labels" / "slice_03.png")
    label = read_label(path).array[:, 200:264, 300:360]
    assert_array_equal(instances_from_mask(label), ref.connected_components_loop(label, 1))


# ---------------------------------------------------------------------------
# Class frequencies and dataset class weights
# ---------------------------------------------------------------------------

MAP_A = np.array([[[0, 0, 1], [0, 1, 1]]], dtype=np.uint8)  # c0: 3, c1: 3
MAP_B = np.array([[[0, 0, 0], [0, 0, 2]]], dtype=np.uint8)  # c0: 5, c2: 1
MAP_C = np.array([[[1, 1, 1, 2], [2, 2, 1, 1]]], dtype=np.uint8)  # c1: 5, c2: 3
# counts (8, 8, 4, 0); pixels of the maps holding the class (6+6, 6+8, 6+8, 0)
# freq (2/3, 4/7, 2/7), median 4/7 -> weights (4/7 / 2/3, 1, 4/7 / 2/7, 0)
HAND_WEIGHTS = [6 / 7, 1.0, 2.0, 0.0]


def test_class_frequencies_hand():
    counts, image_pixels = class_frequencies([MAP_A, MAP_B, MAP_C], num_classes=4)
    assert counts.dtype == np.int64 and image_pixels.dtype == np.int64
    assert counts.tolist() == [8, 8, 4, 0]
    assert image_pixels.tolist() == [12, 14, 14, 0]


def test_median_frequency_weights_hand_and_absent_class_warns():
    with pytest.warns(UserWarning, match=r"classes \[3\] never occur"):
        weights = median_frequency_weights([MAP_A, MAP_B, MAP_C], num_classes=4)
    assert weights.dtype == np.float64
    assert_allclose(weights, HAND_WEIGHTS, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all classes present: no warning
        assert_allclose(median_frequency_weights([MAP_A, MAP_B], num_classes=3), [0.75, 1, 3])


def test_natural_frequency_weights_hand():
    with pytest.warns(UserWarning, match=r"classes \[3\] never occur"):
        weights = natural_frequency_weights([MAP_A, MAP_B, MAP_C], num_classes=4)
    assert weights.tolist() == [1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("seed", range(4))
def test_class_frequencies_match_loop(seed):
    rng = np.random.default_rng(seed)  # seeded shapes and values
    maps = [
        rng.integers(0, rng.integers(1, 6), size=rng.integers(1, 6, size=3)).astype(np.uint8)
        for _ in range(5)
    ]
    counts, image_pixels = class_frequencies(maps, num_classes=6)
    want_counts, want_pixels = ref.class_frequencies_loop(maps, 6)
    assert counts.tolist() == want_counts and image_pixels.tolist() == want_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some classes are absent on purpose
        got = median_frequency_weights(maps, num_classes=6)
    assert_allclose(got, ref.median_frequency_weights_loop(maps, 6), rtol=1e-12)


def test_streaming_equals_list_and_one_big_array():
    rng = np.random.default_rng(0)  # seeded
    maps = [rng.integers(0, 3, size=(2, 7, 9)).astype(np.uint8) for _ in range(4)]
    for m in maps:  # every class in every map, so "images where present" = all images
        m[0, 0, :3] = [0, 1, 2]
    as_list = median_frequency_weights(maps, num_classes=3)
    as_generator = median_frequency_weights((m for m in maps), num_classes=3)
    one_big = median_frequency_weights([np.concatenate(maps)], num_classes=3)
    assert_array_equal(as_list, as_generator)
    assert_allclose(as_list, one_big, rtol=1e-12)
    counts, _ = class_frequencies(iter(maps), num_classes=3)
    assert_array_equal(counts, np.bincount(np.concatenate(maps).ravel(), minlength=3))


def test_bool_maps_count_as_two_classes():
    counts, image_pixels = class_frequencies([np.array([[[True, False, True]]])], num_classes=2)
    assert counts.tolist() == [1, 2] and image_pixels.tolist() == [3, 3]


def _write_manifest(folder: Path, rows: list[tuple[str, str | None, str]]) -> Path:
    lines = ["case,image,label,split"]
    lines += [f"{case},{case}.png,{label or ''},{split}" for case, label, split in rows]
    path = folder / "toy.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_manifest_class_weights_on_written_labels(tmp_path):
    geometry = Geometry.from_spacing((1.0, 1.0, 1.0))
    write_label(tmp_path / "a.png", MAP_A, geometry)
    write_label(tmp_path / "b.png", MAP_B, geometry)
    write_label(tmp_path / "c.png", MAP_C, geometry)
    rows = [("a", "a.png", "train"), ("b", "b.png", "train"), ("c", "c.png", "val")]
    rows.append(("u", None, "test"))  # unlabelled: skipped
    manifest = load_manifest(_write_manifest(tmp_path, rows), data_root=tmp_path)
    with pytest.warns(UserWarning, match="never occur"):
        weights = manifest_class_weights(manifest, num_classes=4)
    assert_allclose(weights, HAND_WEIGHTS, rtol=1e-12)
    with pytest.warns(UserWarning, match=r"classes \[3\]"):
        train = manifest_class_weights(manifest, num_classes=4, split="train")
    assert_allclose(train, [0.75, 1.0, 3.0, 0.0], rtol=1e-12)
    natural = manifest_class_weights(manifest, num_classes=3, method="natural", split="train")
    assert natural.tolist() == [1.0, 1.0, 1.0]


def test_manifest_class_weights_ibsr(tmp_path):
    csv = REPO / "data_manifests" / "ibsr18.csv"
    if not csv.exists() or not (DATA / "ibsr18" / "IBSR_01").is_dir():
        pytest.skip("IBSR-18 manifest or data is absent")
    rows = [
        r
        for r in csv.read_text(encoding="utf-8").splitlines()
        if r.startswith(("case,", "IBSR_01,"))
    ]
    rows += [r for r in csv.read_text(encoding="utf-8").splitlines() if r.startswith("IBSR_08,")]
    small = tmp_path / "ibsr_two.csv"  # 2 cases (1 train, 1 val), paths as in the repo
    small.write_text("\n".join(rows) + "\n")
    manifest = load_manifest(small, data_root=DATA)
    assert [c.split for c in manifest.cases] == ["train", "val"]
    weights = manifest_class_weights(manifest, num_classes=4)
    # independent expectation from nibabel arrays and the definition
    import nibabel as nib

    counts = np.zeros(4)
    image_pixels = np.zeros(4)
    for case in manifest.cases:
        label = np.asarray(nib.load(case.label).dataobj).astype(np.int64)
        per = np.bincount(label.ravel(), minlength=4)
        counts += per
        image_pixels[per > 0] += label.size
    freq = counts / image_pixels
    assert_allclose(weights, np.median(freq) / freq, rtol=1e-12)
    assert weights.argmin() == 0 and weights.argmax() == 1  # background least, CSF most
    val = manifest_class_weights(manifest, num_classes=4, split="val")
    assert not np.allclose(val, weights)
    natural = manifest_class_weights(manifest, num_classes=4, method="natural", split="train")
    assert natural.tolist() == [1.0, 1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------
# Errors: every raise, matched on its message
# ---------------------------------------------------------------------------

CELLS = np.array([[[1, 1, 0, 0, 2, 2]]], dtype=np.int32)


@pytest.mark.parametrize(
    ("instances", "error", "match"),
    [
        ([[1, 0], [0, 2]], TypeError, "instances must be an integer ndarray"),
        (CELLS.astype(np.float32), TypeError, "got dtype float32; cast"),
        (CELLS > 0, TypeError, "got a bool mask; label its objects first with .*from_mask"),
        (np.zeros(5, np.int32), ValueError, r"instances must be 2D \(Y, X\) or 3D"),
        (np.zeros((1, 1, 4, 5), np.int32), ValueError, r"got shape \(1, 1, 4, 5\)"),
        (np.zeros((0, 4), np.int32), ValueError, "instances must be non-empty"),
        (np.array([[0, -3, 1]]), ValueError, r"ids must be >= 0, got -3 \(first at voxel \(0, 1\)"),
    ],
)
def test_unet_weight_map_bad_instances(instances, error, match):
    with pytest.raises(error, match=match):
        unet_weight_map(instances)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"w0": 0.0}, "w0 must be a finite number > 0, got 0.0"),
        ({"w0": -1}, "w0 must be a finite number > 0, got -1"),
        ({"w0": math.nan}, "w0 must be a finite number > 0, got nan"),
        ({"sigma": 0}, "sigma must be a finite number > 0, got 0"),
        ({"sigma": math.inf}, "sigma must be a finite number > 0, got inf"),
        ({"class_weights": {0: 1.0}}, r"class_weights must have the keys \{0, 1\}"),
        ({"class_weights": {0: 1, 1: 2, 2: 3}}, r"got keys \[0, 1, 2\]"),
        ({"class_weights": (1.0, 2.0, 3.0)}, "class_weights must be 2 values"),
        ({"class_weights": (1.0, -2.0)}, r"class_weights must be finite numbers >= 0"),
        ({"class_weights": {0: math.nan, 1: 1}}, r"finite numbers >= 0, got \[nan, 1\]"),
        ({"class_weights": ("a", 1)}, r"class_weights must be finite numbers >= 0"),
        ({"spacing": (1.0, 1.0)}, r"spacing must be \(z, y, x\) of finite numbers > 0"),
        ({"spacing": (1.0, 0.0, 1.0)}, r"spacing must be .*got \(1.0, 0.0, 1.0\)"),
        ({"spacing": "111"}, r"spacing must be \(z, y, x\)"),
    ],
)
def test_unet_weight_map_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        unet_weight_map(CELLS, **kwargs)


def test_unet_weight_map_option_of_the_wrong_type_is_a_type_error():
    instances = np.zeros((1, 8, 8), np.int32)
    with pytest.raises(TypeError, match="w0 must be a number, got bool True"):
        unet_weight_map(instances, w0=True)
    with pytest.raises(TypeError, match="sigma must be a number, got str '5'"):
        unet_weight_map(instances, sigma="5")


def test_unet_weight_map_bad_class_weights_type_and_2d_spacing():
    with pytest.raises(TypeError, match="class_weights must be a dict .* got float"):
        unet_weight_map(CELLS, class_weights=1.0)
    with pytest.raises(ValueError, match=r"spacing must be \(z, y, x\) or \(y, x\)"):
        unet_weight_map(CELLS[0], spacing=(1.0,))


@pytest.mark.parametrize(
    ("mask", "kwargs", "error", "match"),
    [
        (np.ones((2, 3), np.float64), {}, TypeError, "mask must be a bool or integer ndarray"),
        ([[0, 1]], {}, TypeError, "mask must be a bool or integer ndarray, got list"),
        (np.ones(4, bool), {}, ValueError, r"mask must be 2D \(Y, X\) or 3D"),
        (np.array([[0, 1, 2]]), {}, ValueError, r"one positive value, got values \[0, 1, 2\]"),
        (np.array([[0, -1]]), {}, ValueError, r"got values \[-1, 0\]; pass \(label == k\)"),
        (np.ones((1, 3, 3), bool), {"connectivity": 3}, ValueError, r"in 1..2 for a 2D mask"),
        (np.ones((2, 3, 3), bool), {"connectivity": 0}, ValueError, r"in 1..3 for a 3D mask"),
        (np.ones((3, 3), bool), {"connectivity": 1.0}, ValueError, "got 1.0"),
    ],
)
def test_instances_from_mask_errors(mask, kwargs, error, match):
    with pytest.raises(error, match=match):
        instances_from_mask(mask, **kwargs)


@pytest.mark.parametrize(
    ("labels", "num_classes", "error", "match"),
    [
        (MAP_A, 2, TypeError, r"got a single ndarray of shape \(1, 2, 3\); wrap it"),
        (5, 2, TypeError, "labels must be an iterable of label maps, got int"),
        ([MAP_A, MAP_A.astype(float)], 2, TypeError, r"labels\[1\] must be an integer or bool"),
        ([MAP_A, [0, 1]], 2, TypeError, r"labels\[1\] .* got list"),
        ([MAP_B], 2, ValueError, r"labels\[0\] values must be in 0..1 .*got 2; raise num_"),
        ([np.array([0, -1])], 2, ValueError, r"labels\[0\] values must be in 0..1 .*got -1"),
        ([MAP_A], 0, ValueError, "num_classes must be an integer >= 1 .*got 0"),
        ([MAP_A], 2.0, ValueError, "num_classes must be an integer >= 1 .*got 2.0"),
    ],
)
def test_class_frequencies_errors(labels, num_classes, error, match):
    with pytest.raises(error, match=match):
        class_frequencies(labels, num_classes=num_classes)


@pytest.mark.parametrize("function", [median_frequency_weights, natural_frequency_weights])
def test_weights_without_pixels_raise(function):
    with pytest.raises(ValueError, match="labels must hold at least one pixel"):
        function([], num_classes=3)
    with pytest.raises(ValueError, match="labels must hold at least one pixel"):
        function([np.zeros((1, 0, 4), np.uint8)], num_classes=3)


def test_manifest_class_weights_errors(tmp_path):
    write_label(tmp_path / "a.png", MAP_A, Geometry.from_spacing((1.0, 1.0, 1.0)))
    rows = [("a", "a.png", "train"), ("u", None, "val")]
    manifest = load_manifest(_write_manifest(tmp_path, rows), data_root=tmp_path)
    with pytest.raises(TypeError, match="manifest must be a medseg.manifest.Manifest, got str"):
        manifest_class_weights("toy.csv", num_classes=2)
    with pytest.raises(ValueError, match="method must be one of 'median', 'natural', got 'mean'"):
        manifest_class_weights(manifest, num_classes=2, method="mean")
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        manifest_class_weights(manifest, num_classes=0)
    with pytest.raises(ValueError, match="split must be one of"):
        manifest_class_weights(manifest, num_classes=2, split="training")
    with pytest.raises(ValueError, match=r"at least one case with a label in split 'val'"):
        manifest_class_weights(manifest, num_classes=2, split="val")
    with pytest.raises(ValueError, match=r"label file '.*a.png' values must be in 0..0"):
        manifest_class_weights(manifest, num_classes=1)
