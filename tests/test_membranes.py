"""medseg.membranes: the seeded watershed on a foreground probability, against a written-out
Meyer flooding, by hand, and on a real ISBI 2012 section with the shipped EM model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.membranes import (
    boundary_strengths,
    instances_from_probability,
    merge_weak_boundaries,
    seeded_parameters,
)
from medseg.metrics import rand_error
from tests.reference import boundary_strengths_loop, seeded_watershed_loop


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a renumbering of the ids (0 must stay 0)."""
    if ((a == 0) != (b == 0)).any():
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def _cells(rng: np.random.Generator, shape=(24, 28)) -> np.ndarray:
    """A smooth random 'cells and membranes' probability map with distinct values."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    field = (field - field.min()) / (field.max() - field.min())
    return (0.02 + 0.96 * field + rng.uniform(0, 1e-4, shape)).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_flooding_matches_the_written_out_reference(seed):
    prob = _cells(np.random.default_rng(seed))
    got = instances_from_probability(
        prob[None], seed_threshold=0.75, seed_distance=1, sigma=0, mask_threshold=0.4
    )[0]
    want = seeded_watershed_loop(prob, seed_threshold=0.75, mask_threshold=0.4)
    assert got.max() > 1  # several objects: the comparison means something
    assert _same_partition(got, want)


def test_a_faint_membrane_gap_parts_two_cells_where_components_join_them():
    # two square cells; the membrane between them (column 6) has a 2-pixel gap that the
    # class map calls cell (p 0.6), so components see one object
    prob = np.full((12, 13), 0.95, dtype=np.float32)
    prob[0, :], prob[-1, :], prob[:, 0], prob[:, -1] = 0.05, 0.05, 0.05, 0.05
    prob[:, 6] = 0.1
    prob[5:7, 6] = 0.6
    assert ndimage.label(prob > 0.5)[1] == 1
    got = instances_from_probability(prob[None], sigma=0)[0]
    assert got.max() == 2
    assert (got[1:-1, 1:6] == got[1, 1]).all() and (got[1:-1, 7:-1] == got[1, 7]).all()
    assert got[1, 1] != got[1, 7]
    assert (got[prob <= 0.5] == 0).all()  # membranes stay background


def test_seed_distance_keeps_a_thin_bridge_from_seeding():
    # a thick cell and a thin (1-px) confident spur: with seed_distance 2 the spur seeds nothing
    prob = np.full((9, 15), 0.05, dtype=np.float32)
    prob[2:7, 2:7] = 0.95
    prob[4, 7:13] = 0.9
    two = instances_from_probability(prob[None], sigma=0, seed_distance=1)[0]
    one = instances_from_probability(prob[None], sigma=0, seed_distance=2)[0]
    assert two.max() == 1 and one.max() == 1  # the spur is attached: one object either way
    prob[4, 7] = 0.55  # a weak neck: the spur is a seed of its own only at distance 1
    assert instances_from_probability(prob[None], sigma=0, seed_distance=1)[0].max() == 2
    assert instances_from_probability(prob[None], sigma=0, seed_distance=2)[0].max() == 1


def test_boundary_strengths_and_merging_against_the_loop():
    rng = np.random.default_rng(3)
    labels = ndimage.label(rng.uniform(size=(3, 10, 12)) > 0.3)[0]
    labels = np.where(labels > 0, rng.integers(1, 7, labels.shape), 0)  # touching ids
    boundary = rng.uniform(size=labels.shape)
    a, b, strength = boundary_strengths(labels, boundary)
    want = boundary_strengths_loop(labels, boundary)
    got = {(int(i), int(j)): float(v) for i, j, v in zip(a, b, strength, strict=True)}
    assert got.keys() == want.keys() and len(got) > 3
    for pair, value in want.items():
        assert got[pair] == pytest.approx(value)
    merged = merge_weak_boundaries(labels, boundary, threshold=0.6)
    weak = [pair for pair, value in want.items() if value < 0.6]
    for i, j in weak:  # every weak pair ends in one object
        assert merged[labels == i][0] == merged[labels == j][0]
    assert ((merged == 0) == (labels == 0)).all()


def test_parameters_are_checked_with_their_names():
    prob = np.full((1, 4, 4), 0.9, dtype=np.float32)
    with pytest.raises(ValueError, match="seed_threshold must be a number in \\(0, 1\\), got 1.5"):
        instances_from_probability(prob, seed_threshold=1.5)
    with pytest.raises(ValueError, match="seed_distance must be a number >= 1"):
        instances_from_probability(prob, seed_distance=0)
    with pytest.raises(ValueError, match="probability must hold finite values in \\[0, 1\\]"):
        instances_from_probability(prob * 2)
    with pytest.raises(TypeError, match="probability must be a floating ndarray"):
        instances_from_probability((prob > 0.5).astype(np.uint8))
    with pytest.raises(ValueError, match="must be a \\(Z, Y, X\\) array"):
        instances_from_probability(prob[0])
    assert seeded_parameters({"method": "seeded", "merge_threshold": 0.3}) == {
        "seed_threshold": 0.8,
        "seed_distance": 1.0,
        "sigma": 1.0,
        "mask_threshold": 0.5,
        "merge_threshold": 0.3,
    }


def test_real_isbi_section_seeded_beats_components(shared_data):
    """The shipped em-membrane model on a real section: the seeded watershed lowers the
    foreground-restricted Rand error of connected components (it was chosen elsewhere)."""
    from medseg.checkpoint import load_checkpoint
    from medseg.io import read_image
    from medseg.manifest import load_valid_manifest
    from medseg.predict import segment_objects

    manifest = load_valid_manifest("data_manifests/isbi2012_em.csv", data_root=shared_data)
    case = next(c for c in manifest.cases if c.case == "slice_05")
    ckpt = load_checkpoint("em-membrane")
    net = ckpt.build_model("cpu")
    image = read_image(case.image, allow_2d=True)
    target = np.asarray(manifest.read_target(case).instances)
    _, comp = segment_objects(image, ckpt, net, what="s", objects={"method": "components"})
    at_half = {"method": "seeded", "mask_threshold": 0.5}
    _, seeded = segment_objects(image, ckpt, net, what="s", objects=at_half)
    _, shipped = segment_objects(image, ckpt, net, what="s", objects={"method": "seeded"})
    before = rand_error(comp, target)["rand_error"]
    after = rand_error(seeded, target)["rand_error"]
    assert after < 0.8 * before, (before, after)
    assert ((seeded > 0) == (comp > 0)).all()  # the same pixels, other objects
    # the shipped setting floods below 0.5 too: a superset of the pixels, fewer singletons
    assert ((shipped > 0) >= (comp > 0)).all()
    assert rand_error(shipped, target)["rand_error"] < after
