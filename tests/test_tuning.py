"""Post-processing from the CLI: ``medseg tune-postprocess``, ``predict --crf``, clean-up.

On the tiny golden brain model and three synthetic heads (generated like the golden
volume, with their true classes as labels): tuning writes the grid search's best CRF
parameters and the clean-up decision into a copy of the checkpoint; ``predict --crf``
equals :func:`medseg.postprocess.dense_crf` applied by hand to ``predict --probs``; a
stored clean-up equals :func:`medseg.postprocess.keep_largest_component` applied by hand,
and ``--no-cleanup`` turns it off.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.cli import main
from medseg.io import Geometry, read_image, read_label, write_image, write_label
from medseg.postprocess import crf_grid_search, dense_crf, keep_largest_component
from medseg.predict import prepare_image

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
TINY = GOLDEN / "brain_tiny.pt"
CRF = {"w_appearance": 0.5, "sigma_alpha_mm": 3.0, "sigma_beta": 0.5}


def _cli(*args) -> tuple[int, str, str]:
    with CliRunner().isolation() as (out, err, _):
        code = main([str(a) for a in args])
        return code, out.getvalue().decode(), err.getvalue().decode()


def _predict(src: Path, checkpoint: Path, out: Path, *options) -> None:
    """`medseg predict SRC -m CHECKPOINT OPTIONS... -o OUT`, which must succeed."""
    code, _, err = _cli("predict", src, "-m", checkpoint, *options, "-o", out)
    assert code == 0, err


def _head(seed: int, shape=(24, 28, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic T1-like head and its classes (as tests/data/make_golden.py makes them)."""
    z, y, x = np.indices(shape, dtype=np.float64)
    c = [(s - 1) / 2 for s in shape]
    r = np.sqrt(sum(((a - m) / (m - 0.5)) ** 2 for a, m in zip((z, y, x), c, strict=True)))
    classes = np.select([r < 0.5, r < 0.8, r < 1.0], [3, 2, 1], 0).astype(np.uint8)
    rng = np.random.default_rng(seed)
    noisy = np.array([0.0, 30.0, 70.0, 110.0])[classes] + rng.normal(0.0, 12.0, shape)
    return np.where(classes > 0, np.clip(noisy, 1, None), 0.0).astype(np.float32), classes


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path]:
    """(manifest, data root): three labelled validation heads and one training head."""
    root = tmp_path_factory.mktemp("tune_data")
    rows = []
    geometry = Geometry.from_spacing((1.2, 1.0, 0.9))
    for i, split in enumerate(("val", "val", "val", "train")):
        image, classes = _head(seed=i)
        write_image(root / f"h{i}.nii.gz", image[None], geometry)
        write_label(root / f"h{i}_labels.nii.gz", classes, geometry)
        rows.append([f"h{i}", f"h{i}.nii.gz", f"h{i}_labels.nii.gz", split])
    manifest = root / "heads.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["case", "image", "label", "split"], *rows])
    names = {"0": "background", "1": "CSF", "2": "GM", "3": "WM"}
    (root / "heads.labels.json").write_text(json.dumps({"labels": names}), encoding="utf-8")
    return manifest, root


@pytest.fixture(scope="module")
def tuned(cohort, tmp_path_factory) -> tuple[Path, str]:
    manifest, root = cohort
    out = tmp_path_factory.mktemp("tuned") / "tuned.pt"
    code, stdout, err = _cli(
        "tune-postprocess", out, "-m", TINY, "--manifest", manifest, "--data-root", root,
        "--device", "cpu", "--w-appearance", 0.2, "--w-appearance", 0.5,
        "--sigma-alpha-mm", 3, "--sigma-beta", 0.5, "--sigma-beta", 1.0,
    )  # fmt: skip
    assert code == 0, err
    return out, stdout


def test_tuning_stores_the_grid_search_best_and_the_cleanup(cohort, tuned) -> None:
    manifest, root = cohort
    out, stdout = tuned
    assert "h0, h1, h2" in stdout and "h3" not in stdout  # validation cases only
    ckpt = load_checkpoint(out)
    pp = ckpt.extra["postprocess"]
    # the same grid search by hand on the same validation cases
    base = load_checkpoint(TINY)
    net = base.build_model()
    cases = []
    for i in range(3):
        image = read_image(root / f"h{i}.nii.gz")
        plain = out.parent / "plain" / ""
        _predict(root / f"h{i}.nii.gz", TINY, plain, "--probs", "--no-cleanup", "--device", "cpu")
        probs = read_image(plain / f"h{i}_probs.nii.gz").array
        normed = prepare_image(image, base, what="test")
        target = read_label(root / f"h{i}_labels.nii.gz").array
        cases.append((torch.from_numpy(probs), torch.from_numpy(normed), target, (1.2, 1.0, 0.9)))
    del net
    table = crf_grid_search(
        cases, num_classes=4, classes=[1, 2, 3], w_appearance=(0.2, 0.5),
        sigma_alpha_mm=(3.0,), sigma_beta=(0.5, 1.0),
    )  # fmt: skip
    best = table[table["crf"]].iloc[0]
    for key in ("w_appearance", "sigma_alpha_mm", "sigma_beta", "w_smoothness"):
        assert pp["crf"][key] == pytest.approx(float(best[key]))
    assert pp["tuning"]["crf_mean_dice"] == pytest.approx(float(best["mean_dice"]), abs=1e-3)
    assert set(pp["cleanup"]) == {"foreground", "classes", "connectivity"}
    assert len(pp["tuning"]["cleanup_candidates"]) == 4  # foreground, then CSF, GM, WM
    # the weights and everything else are the original model's
    assert ckpt.model_name == base.model_name and ckpt.patch == base.patch
    for k, v in base.state_dict.items():
        torch.testing.assert_close(ckpt.state_dict[k].float(), v.float())


def test_predict_crf_equals_dense_crf_by_hand(cohort, tmp_path) -> None:
    _, root = cohort
    src = root / "h1.nii.gz"
    ckpt_path = _with_postprocess(tmp_path / "crf.pt", {"crf": CRF})
    _predict(src, ckpt_path, tmp_path / "crf" / "", "--crf")
    _predict(src, ckpt_path, tmp_path / "plain" / "", "--probs")
    probs = read_image(tmp_path / "plain" / "h1_probs.nii.gz").array
    normed = prepare_image(read_image(src), load_checkpoint(ckpt_path), what="test")
    q = dense_crf(
        torch.from_numpy(probs), torch.from_numpy(normed), spacing_mm=(1.2, 1.0, 0.9), **CRF
    )
    expected = q.argmax(0).numpy()
    got = read_label(tmp_path / "crf" / "h1_seg.nii.gz").array
    plain = read_label(tmp_path / "plain" / "h1_seg.nii.gz").array
    assert np.count_nonzero(expected != plain) > 0  # the CRF changes something here
    # the stored probabilities are rounded to float32 in the file: allow a rare tie flip
    assert np.count_nonzero(got != expected) <= 2


def test_stored_cleanup_is_applied_and_can_be_turned_off(cohort, tmp_path) -> None:
    _, root = cohort
    image, _ = _head(seed=7)
    image[2:5, 2:5, 2:5] = 110.0  # a bright island outside the head: a stray WM component
    src = tmp_path / "island.nii.gz"
    write_image(src, image[None], Geometry.from_spacing((1.2, 1.0, 0.9)))
    cleanup = {"foreground": True, "classes": [3], "connectivity": 3}
    ckpt_path = _with_postprocess(tmp_path / "clean.pt", {"cleanup": cleanup})
    _predict(src, ckpt_path, tmp_path / "on" / "")
    _predict(src, ckpt_path, tmp_path / "off" / "", "--no-cleanup")
    off = read_label(tmp_path / "off" / "island_seg.nii.gz").array
    on = read_label(tmp_path / "on" / "island_seg.nii.gz").array
    expected = keep_largest_component(off, classes="foreground")
    expected = keep_largest_component(expected, classes=[3])
    np.testing.assert_array_equal(on, expected)
    assert np.count_nonzero(on != off) > 0 and (off[2:5, 2:5, 2:5] > 0).any()
    assert not (on[2:5, 2:5, 2:5] > 0).any()


def _with_postprocess(path: Path, postprocess: dict) -> Path:
    ckpt = load_checkpoint(TINY)
    return save_checkpoint(
        path,
        model_name=ckpt.model_name,
        model_kwargs=ckpt.model_kwargs,
        model=ckpt.build_model(),
        label_names=ckpt.label_names,
        normalization=ckpt.normalization,
        patch=ckpt.patch,
        inference=ckpt.inference,
        config=ckpt.config,
        extra={"postprocess": postprocess},
    )


def test_tune_errors_write_nothing(cohort, tmp_path) -> None:
    manifest, root = cohort
    out = tmp_path / "t.pt"
    base = ["tune-postprocess", out, "-m", TINY, "--manifest", manifest, "--data-root", root]
    code, _, err = _cli(*base, "--no-crf", "--no-cleanup")
    assert code == 1 and "must tune something" in err
    code, _, err = _cli(*base, "--split", "test")
    assert code == 1 and "labelled cases in split 'test'" in err
    out.write_bytes(b"keep")
    code, _, err = _cli(*base, "--no-crf")
    assert code == 1 and "--overwrite" in err and out.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pt"]


def test_tuning_says_when_the_crf_hurts(cohort, tmp_path) -> None:
    """A far too strong appearance kernel lowers validation Dice, and the CLI says so."""
    manifest, root = cohort
    code, stdout, err = _cli(
        "tune-postprocess", tmp_path / "t.pt", "-m", TINY, "--manifest", manifest,
        "--data-root", root, "--no-cleanup", "--w-appearance", 50, "--sigma-alpha-mm", 10,
        "--sigma-beta", 2.0,
    )  # fmt: skip
    assert code == 0, err
    assert "lowered the mean validation Dice" in stdout and "without --crf" in stdout
    tuning = load_checkpoint(tmp_path / "t.pt").extra["postprocess"]["tuning"]
    assert tuning["crf_mean_dice"] < tuning["no_crf_mean_dice"]
    assert "cleanup" not in load_checkpoint(tmp_path / "t.pt").extra["postprocess"]


# ---------------------------------------------------------------------------
# 2D object models: components or the seeded watershed, chosen on validation cases
# ---------------------------------------------------------------------------


def _two_cells_with_a_gap() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probability, target) of two square cells whose membrane has a faint gap."""
    prob = np.full((12, 13), 0.95, dtype=np.float32)
    prob[0, :], prob[-1, :], prob[:, 0], prob[:, -1] = 0.05, 0.05, 0.05, 0.05
    prob[:, 6] = 0.1
    prob[5:7, 6] = 0.6
    target = np.zeros((12, 13), dtype=np.int32)
    target[1:-1, 1:6], target[1:-1, 7:-1] = 1, 2
    return (prob > 0.5).astype(np.uint8)[None], prob[None], target[None]


def test_object_grid_search_prefers_the_watershed_that_parts_the_cells():
    from medseg.metrics import rand_error
    from medseg.tuning import object_grid_search

    case = _two_cells_with_a_gap()
    grid = {"seed_threshold": (0.7, 0.9), "sigma": (0.0,)}
    table = object_grid_search([case], grid=grid)
    assert list(table["method"]).count("components") == 1 and len(table) == 3
    best = table.iloc[0]
    assert best["method"] == "seeded" and best["rand_error"] == pytest.approx(0.0, abs=1e-9)
    components = table[table["method"] == "components"].iloc[0]
    merged = np.where(case[0] > 0, 1, 0)  # the one component
    assert components["rand_error"] == pytest.approx(rand_error(merged, case[2])["rand_error"])
    by_ap = object_grid_search([case], grid=grid, metric="ap")
    assert by_ap["ap"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="metric must be one of rand_error, ap, got 'dice'"):
        object_grid_search([case], metric="dice")
    with pytest.raises(ValueError, match="grid keys must be among .* got \\['radius'\\]"):
        object_grid_search([case], grid={"radius": (1,)})
    with pytest.raises(ValueError, match="cases must hold at least one"):
        object_grid_search([])


def test_object_grid_search_scores_a_boundary_models_thresholds():
    """A 3 x 3 nucleus whose rim the network gives 0.45 foreground probability: the
    thresholds 0.3 and 0.4 take the rim in (IoU 1), 0.5 and 0.6 leave the 1-pixel
    interior (IoU 1/9, no match)."""
    from medseg.tuning import object_grid_search

    target = np.zeros((1, 5, 5), np.int32)
    target[0, 1:4, 1:4] = 1
    probs = np.zeros((3, 1, 5, 5), np.float32)
    probs[0] = 1.0
    probs[:, 0, 1:4, 1:4] = np.array([0.55, 0.1, 0.35])[:, None, None]  # rim
    probs[:, 0, 2, 2] = [0.1, 0.8, 0.1]  # interior
    labels = probs.argmax(0).astype(np.uint8)  # the interior pixel only
    case = (labels, (1 - probs[0]).astype(np.float32), target)
    # the seeded watershed at mask threshold 0.5 keeps the interior pixel only: AP 0
    grid = {"seed_threshold": (0.7,), "sigma": (0.0,), "mask_threshold": (0.5,)}
    table = object_grid_search([case], grid=grid, metric="ap", boundary_probs=[probs])
    assert table[table["method"] == "seeded"]["ap"].tolist() == [0.0]
    rows = table[table["method"] == "boundary"].set_index("mask_threshold")
    assert rows.index.tolist() == [0.3, 0.4, 0.5, 0.6]
    assert rows["ap"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert table.iloc[0]["method"] == "boundary" and table.iloc[0]["mask_threshold"] == 0.3
    assert table[table["method"] == "components"]["ap"].iloc[0] == 0.0
    with pytest.raises(ValueError, match="boundary_probs must hold one array per case"):
        object_grid_search([case], boundary_probs=[probs, probs])


@pytest.fixture(scope="module")
def em_val_manifest(shared_data, tmp_path_factory) -> Path:
    """One real ISBI 2012 section as the validation split, one as training."""
    out = tmp_path_factory.mktemp("em") / "em.csv"
    rows = [["case", "image", "label", "split"]]
    for case, split in (("slice_13", "val"), ("slice_02", "train")):
        image, label = f"isbi2012_em/images/{case}.png", f"isbi2012_em/labels/{case}.png"
        rows.append([case, image, label, split])
    with out.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    sidecar = Path(__file__).resolve().parents[1] / "data_manifests" / "isbi2012_em.labels.json"
    (out.parent / "em.labels.json").write_text(sidecar.read_text(encoding="utf-8"))
    return out


def test_tune_objects_on_a_real_em_section_and_predict_applies_it(
    em_val_manifest, shared_data, tmp_path
):
    tuned = tmp_path / "em_tuned.pt"
    code, stdout, err = _cli(
        "tune-postprocess", tuned, "-m", "em-membrane", "--manifest", em_val_manifest,
        "--data-root", shared_data, "--no-crf", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "objects (109 settings, best first by rand_error)" in stdout
    assert "stored: seeded, seed_threshold " in stdout
    stored = load_checkpoint(tuned).extra["postprocess"]
    info = stored["tuning"]["objects"]
    assert stored["method"] == info["method"] == "seeded"  # it parts merged cells here
    assert info["best"]["rand_error"] < info["components"]["rand_error"]
    # predict -m tuned.pt gives what the stored parameters give by hand
    image_path = shared_data / "isbi2012_em" / "images" / "slice_13.png"
    out = tmp_path / "out"
    code, _, err = _cli("predict", image_path, "-m", tuned, "-o", out, "--device", "cpu")
    assert code == 0, err
    from PIL import Image

    from medseg.membranes import instances_from_probability
    from medseg.predict import segment_objects

    written = np.array(Image.open(out / "slice_13_instances.png"))
    ckpt = load_checkpoint(tuned)
    result, _ = segment_objects(
        read_image(image_path, allow_2d=True), ckpt, ckpt.build_model("cpu"), what="s",
        return_probs=True, objects={"method": "components"},
    )  # fmt: skip
    names = ("seed_threshold", "seed_distance", "sigma", "merge_threshold", "mask_threshold")
    params = {k: stored[k] for k in names}
    by_hand = instances_from_probability(
        1.0 - result.probs[0], min_size=int(stored["min_size"]), **params
    )[0]
    assert (written == by_hand).all()


def test_tune_objects_bad_metric_is_one_line(em_val_manifest, shared_data, tmp_path):
    code, _, err = _cli(
        "tune-postprocess", tmp_path / "t.pt", "-m", "em-membrane", "--manifest",
        em_val_manifest, "--data-root", shared_data, "--no-crf", "--objects-metric", "dice",
    )  # fmt: skip
    assert code == 1 and "'--objects-metric'" in err
    assert "'dice' is not one of 'rand_error', 'ap'" in err
    assert not (tmp_path / "t.pt").exists()


def test_tune_a_boundary_models_threshold_on_a_real_image_and_predict_applies_it(
    shared_data, tmp_path
):
    """The built-in nuclei model (three-class boundary head) on one real DSB2018
    validation image with 20 touching pairs: the boundary rows are scored, the best
    setting is stored, and medseg predict -m tuned.pt gives what that setting gives by
    hand. The seeded watershed is given one setting, a poor one on purpose (seeds above
    0.99, objects above 0.9: small objects, AP 0.15 against 0.40-0.44), so the table is
    small and a boundary row is chosen."""
    from medseg.boundary import classes_from_probs, instances_from_boundary
    from medseg.predict import segment_objects
    from medseg.tuning import BOUNDARY_THRESHOLDS, tune_postprocess

    case = "ed8c31b001a0c23c33402f94a5ee6b0209e0c6419eb52d5d02255513e3a672fc"
    image_path = shared_data / "dsb2018_stage1_train" / "images" / f"{case}.png"
    manifest = tmp_path / "nuc.csv"
    manifest.write_text(
        "case,image,label,split\n"
        f"{case},dsb2018_stage1_train/images/{case}.png,dsb2018_stage1_train/labels/{case}.png,val\n",
        encoding="utf-8",
    )
    sidecar = Path(__file__).resolve().parents[1] / "data_manifests"
    (tmp_path / "nuc.labels.json").write_text(
        (sidecar / "dsb2018_stage1_train.labels.json").read_text(encoding="utf-8")
    )
    ckpt = load_checkpoint("nuclei")
    result = tune_postprocess(
        ckpt, manifest, tmp_path / "tuned.pt", data_root=shared_data, crf=False,
        objects_metric="ap", objects_grid={"seed_threshold": (0.99,), "mask_threshold": (0.9,)},
        device="cpu",
    )  # fmt: skip
    table = result.objects_table
    assert table is not None and len(table) == 2 + len(BOUNDARY_THRESHOLDS)
    boundary = table[table["method"] == "boundary"]
    assert sorted(boundary["mask_threshold"]) == list(BOUNDARY_THRESHOLDS)
    # on touching nuclei the boundary head's objects beat the merged components
    assert boundary["ap"].max() > table[table["method"] == "components"]["ap"].iloc[0]
    best = table.iloc[0]
    tuned = load_checkpoint(tmp_path / "tuned.pt")
    stored = tuned.extra["postprocess"]
    assert stored["method"] == best["method"] == "boundary"
    assert stored["mask_threshold"] == best["mask_threshold"]
    from medseg.tuning import objects_choice

    words = objects_choice(table)
    assert words.startswith(f"boundary, mask_threshold {best['mask_threshold']:g} (rand_error")
    out = tmp_path / "out"
    code, _, err = _cli("predict", image_path, "-m", tmp_path / "tuned.pt", "-o", out)
    assert code == 0, err
    from PIL import Image

    written = np.array(Image.open(out / f"{case}_instances.png"))
    res, _ = segment_objects(
        read_image(image_path, allow_2d=True), tuned, tuned.build_model("cpu"), what="s",
        return_probs=True,
    )  # fmt: skip
    by_hand = instances_from_boundary(
        classes_from_probs(res.probs, mask_threshold=float(best["mask_threshold"])), min_size=8
    )[0]
    np.testing.assert_array_equal(written, by_hand)
