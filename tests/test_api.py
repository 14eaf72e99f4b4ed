"""Tests for medseg.api (the in-memory public API) on the tiny golden inputs.

Reference for every prediction: ``medseg predict`` (the CLI, run through
:func:`medseg.cli.main` in a temporary folder) on the same file with the same tiny
checkpoint; the API must give the same labels from a path, a nibabel image and an array.
Geometry, volumes and metrics are checked against nibabel headers, hand counts and
:func:`medseg.report.evaluate_case` / :func:`medseg.report.evaluate_instances`.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from PIL import Image
from typer.testing import CliRunner

import medseg
from medseg.api import CellSegmentation, Model, Segmentation
from medseg.cli import main
from medseg.io import Geometry, read_image, read_instances, read_label, to_nifti, volume_from_nifti
from medseg.report import evaluate_case, evaluate_instances

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
BRAIN = GOLDEN / "brain_volume.nii.gz"
BRAIN_CKPT = GOLDEN / "brain_tiny.pt"
CELLS = GOLDEN / "cells.png"
CELLS_CKPT = GOLDEN / "cells_tiny.pt"


def _cli(tmp: Path, *args: str | Path) -> None:
    """Run `medseg ARGS` with ``tmp`` as the working folder; fail on a non-zero exit."""
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        with CliRunner().isolation() as (_, err, _):
            code = main([str(a) for a in args])
            assert code == 0, err.getvalue().decode()
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def brain_model() -> Model:
    return medseg.load_model(BRAIN_CKPT, device="cpu")


@pytest.fixture(scope="module")
def cells_model() -> Model:
    return medseg.load_model(CELLS_CKPT, device="cpu")


@pytest.fixture(scope="module", params=[False, True], ids=["vote", "fast"])
def brain_cli(request, tmp_path_factory) -> dict:
    """`medseg predict` outputs for the golden volume: labels and confidence (Z, Y, X)."""
    out = tmp_path_factory.mktemp("cli_brain")
    fast = ["--fast"] if request.param else []
    _cli(
        out, "predict", BRAIN, "-m", BRAIN_CKPT, "-o", out, "--confidence", "--device", "cpu", *fast
    )
    return {
        "fast": request.param,
        "labels": read_label(out / "brain_volume_seg.nii.gz").array,
        "confidence": read_image(out / "brain_volume_confidence.nii.gz").array[0],
        "file": out / "brain_volume_seg.nii.gz",
    }


@pytest.fixture(scope="module")
def cells_cli(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cli_cells")
    _cli(out, "predict", CELLS, "-m", CELLS_CKPT, "-o", out, "--device", "cpu")
    return {
        "mask": read_label(out / "cells_mask.png").array,
        "instances": read_instances(out / "cells_instances.png").array,
    }


# --------------------------------------------------------------------------------------
# Package surface


def test_import_medseg_does_not_import_torch():
    code = "import sys, medseg; medseg.__all__; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_every_export_resolves():
    for name in medseg._EXPORTS:
        assert getattr(medseg, name) is not None, name
    assert medseg.predict_volume is medseg.api.predict_volume  # not medseg.predict's


# --------------------------------------------------------------------------------------
# load_model


def test_load_model_properties(brain_model, cells_model):
    from medseg.checkpoint import load_checkpoint

    ckpt = load_checkpoint(BRAIN_CKPT)
    assert brain_model.kind == "brain" and cells_model.kind == "cells"
    assert brain_model.label_names == ckpt.label_names
    assert brain_model.num_classes == ckpt.num_classes == 4
    assert brain_model.image_channels == 1 and cells_model.image_channels == 3
    assert str(brain_model.device) == "cpu"
    text = repr(brain_model)
    assert "brain_tiny.pt" in text and "kind='brain'" in text and "usegnet" in text


def test_load_model_ensemble_of_one_model_twice_predicts_the_same(brain_model):
    from medseg.ensemble import CombinedPredictor

    pair = medseg.load_model([BRAIN_CKPT, BRAIN_CKPT], device="cpu")
    assert isinstance(pair.network, CombinedPredictor) and len(pair.names) == 2
    assert "2 members" in repr(pair)
    single = medseg.predict_volume(BRAIN, brain_model, fast=True, return_probs=True)
    double = medseg.predict_volume(BRAIN, pair, fast=True, return_probs=True)
    np.testing.assert_allclose(double.probs, single.probs, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------
# predict_volume


def _inputs():
    """The golden volume as a path, a nibabel image, a Volume and an array + affine."""
    image = read_image(BRAIN)
    return {
        "path": (BRAIN, {}),
        "str": (str(BRAIN), {}),
        "nibabel": (nib.load(BRAIN), {}),
        "sitk": (sitk.ReadImage(str(BRAIN)), {}),
        "volume": (image, {}),
        "array": (image.array, {"affine": image.geometry.affine}),
        "array_zyx": (image.array[0], {"affine": image.geometry.affine}),
    }


@pytest.mark.parametrize("kind", ["path", "str", "nibabel", "sitk", "volume", "array", "array_zyx"])
def test_predict_volume_matches_cli(kind, brain_model, brain_cli):
    image, extra = _inputs()[kind]
    seg = medseg.predict_volume(image, brain_model, fast=brain_cli["fast"], **extra)
    assert isinstance(seg, Segmentation)
    assert seg.labels.dtype == np.uint8 and seg.confidence.dtype == np.float32
    np.testing.assert_array_equal(seg.labels, brain_cli["labels"])
    np.testing.assert_allclose(seg.confidence, brain_cli["confidence"], rtol=0, atol=1e-6)
    assert seg.probs is None
    assert seg.label_names == brain_model.label_names and seg.model == str(BRAIN_CKPT)


def test_predict_volume_by_path_name_loads_the_model(brain_cli):
    if brain_cli["fast"]:
        pytest.skip("one mode is enough")
    seg = medseg.predict_volume(BRAIN, BRAIN_CKPT, device="cpu")
    np.testing.assert_array_equal(seg.labels, brain_cli["labels"])


def test_label_image_has_the_input_geometry(brain_model, brain_cli):
    source = nib.load(BRAIN)
    for image in (BRAIN, source):
        seg = medseg.predict_volume(image, brain_model, fast=brain_cli["fast"])
        label_image = seg.label_image
        assert isinstance(label_image, nib.Nifti1Image)
        assert label_image.shape == source.shape  # (x, y, z)
        np.testing.assert_array_equal(label_image.affine, source.affine)
        assert label_image.header.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(label_image.header.get_zooms(), source.header.get_zooms())
        cli_file = nib.load(brain_cli["file"])
        np.testing.assert_array_equal(np.asanyarray(label_image.dataobj), cli_file.dataobj)
        # nibabel order (x, y, z) is the label map (z, y, x) transposed
        np.testing.assert_array_equal(
            np.asanyarray(label_image.dataobj).transpose(2, 1, 0), seg.labels
        )


def test_plot_shows_three_planes_of_the_input_with_the_overlay(brain_model):
    from matplotlib.figure import Figure

    from medseg.visualize import overlay_rgb

    seg = medseg.predict_volume(BRAIN, brain_model, fast=True)
    image = read_image(BRAIN).array[0]
    np.testing.assert_array_equal(seg.image, image)  # the input, kept for plotting
    fig = seg.plot(z=3, y=5, x=7)
    assert isinstance(fig, Figure)
    views = [ax.images[0].get_array() for ax in fig.axes[:3]]
    expected = [
        overlay_rgb(image[3], seg.labels[3]),
        overlay_rgb(image[:, 5], seg.labels[:, 5]),
        overlay_rgb(image[:, :, 7], seg.labels[:, :, 7]),
    ]
    for view, want in zip(views, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(view), want)
    assert [ax.get_title() for ax in fig.axes[:3]] == [
        "z = 3 (chosen)", "y = 5 (chosen)", "x = 7 (chosen)",
    ]  # fmt: skip
    assert "GM" in fig._suptitle.get_text()
    default = seg.plot()  # through the middle (no brain mask for this model)
    mid = [n // 2 for n in seg.labels.shape]
    assert default.axes[0].get_title() == f"z = {mid[0]} (middle)"
    with pytest.raises(ValueError, match="cut\\[0\\] must be in 0"):
        seg.plot(z=seg.labels.shape[0])
    bare = Segmentation(seg.labels, seg.confidence, seg.geometry, seg.label_names, "m")
    with pytest.raises(ValueError, match="image must be given to plot"):
        bare.plot()
    assert isinstance(bare.plot(image), Figure)


def test_label_image_is_a_copy(brain_model):
    seg = medseg.predict_volume(BRAIN, brain_model, fast=True)
    label_image = seg.label_image
    before = np.asanyarray(label_image.dataobj).copy()
    seg.labels[...] = 0
    np.testing.assert_array_equal(np.asanyarray(label_image.dataobj), before)


def test_volumes_against_a_hand_count(brain_model):
    seg = medseg.predict_volume(BRAIN, brain_model, fast=True)
    zooms = nib.load(BRAIN).header.get_zooms()[:3]
    voxel_ml = float(zooms[0] * zooms[1] * zooms[2]) / 1000.0
    table = seg.volumes()
    assert list(table.columns) == ["label", "tissue", "num_voxels", "volume_ml"]
    assert table["tissue"].tolist() == ["CSF", "GM", "WM"]
    for row in table.itertuples():
        count = sum(int(v == row.label) for v in seg.labels.ravel().tolist())
        assert row.num_voxels == count
        assert math.isclose(row.volume_ml, count * voxel_ml, rel_tol=1e-12)
    stats = seg.statistics()
    for row in table.itertuples():
        assert math.isclose(stats[f"{row.tissue}_ml"], row.volume_ml, rel_tol=1e-12)
    brain = seg.labels > 0
    assert math.isclose(
        stats["mean_agreement"],
        float(seg.confidence[brain].astype(np.float64).mean()),
        rel_tol=1e-9,
    )
    assert "GM" in repr(seg) and "mL" in repr(seg)


def test_save_writes_the_label_image(brain_model, tmp_path):
    seg = medseg.predict_volume(BRAIN, brain_model, fast=True)
    out = seg.save(tmp_path / "seg.nii.gz")
    written = nib.load(out)
    np.testing.assert_array_equal(written.affine, nib.load(BRAIN).affine)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), seg.label_image.dataobj)
    with pytest.raises(FileExistsError, match="must not exist"):
        seg.save(out)
    seg.save(out, overwrite=True)


def test_return_probs(brain_model):
    seg = medseg.predict_volume(BRAIN, brain_model, fast=True, return_probs=True)
    assert seg.probs.shape == (4, *seg.labels.shape) and seg.probs.dtype == np.float32
    np.testing.assert_array_equal(seg.probs.argmax(0), seg.labels)
    np.testing.assert_allclose(seg.probs.sum(0), 1.0, atol=1e-5)


def test_array_spacing_and_affine(brain_model):
    image = read_image(BRAIN)
    zyx = image.array[0]
    by_spacing = medseg.predict_volume(zyx, brain_model, fast=True, spacing_mm=(1.5, 1.0, 1.0))
    assert by_spacing.geometry == Geometry.from_spacing((1.5, 1.0, 1.0))
    by_affine = medseg.predict_volume(zyx, brain_model, fast=True, affine=image.geometry.affine)
    assert by_affine.geometry.spacing_mm == image.geometry.spacing_mm
    np.testing.assert_array_equal(by_affine.label_image.affine, image.geometry.affine)
    with pytest.warns(UserWarning, match="spacing_mm was not given"):
        medseg.predict_volume(zyx, brain_model, fast=True)


# --------------------------------------------------------------------------------------
# predict_volume errors


MM = {"spacing_mm": (1.0, 1.0, 1.0)}  # arrays get a spacing, so that no warning is raised


@pytest.mark.parametrize(
    ("image", "extra", "error", "match"),
    [
        (np.zeros((4, 5)), MM, ValueError, r"image must be \(Z, Y, X\) or \(C, Z, Y, X\)"),
        (np.zeros((1, 1, 4, 5, 6)), MM, ValueError, r"got shape \(1, 1, 4, 5, 6\)"),
        (np.ones((1, 1, 20, 30), np.float32), MM, ValueError, r"must be 3D \(Z > 1\)"),
        (np.ones((2, 6, 20, 30), np.float32), MM, ValueError, r"1 channel.*got 2"),
        (np.full((6, 20, 30), np.nan), MM, ValueError, "finite"),
        (np.ones((6, 20, 30), bool), MM, ValueError, "real numbers"),
        (np.ones((6, 20, 30), np.float32), MM, ValueError, "constant"),
        (np.ones((6, 20, 30)), {"affine": np.eye(3)}, ValueError, r"affine must be a \(4, 4\)"),
        (BRAIN, MM, ValueError, "spacing_mm must be None for a file"),
        (CELLS, {}, ValueError, r"must be 3D \(Z > 1\).*segment_cells"),
        ([[1.0]], {}, TypeError, "got list"),
        (GOLDEN / "missing.nii.gz", {}, FileNotFoundError, "must exist"),
    ],
)
def test_predict_volume_errors(image, extra, error, match, brain_model):
    with pytest.raises(error, match=match):
        medseg.predict_volume(image, brain_model, fast=True, **extra)


def test_predict_volume_refuses_cell_models_and_unknown_names(cells_model):
    with pytest.raises(ValueError, match="2D object model; use medseg.segment_cells"):
        medseg.predict_volume(BRAIN, cells_model)
    with pytest.raises(FileNotFoundError, match="built-in model name"):
        medseg.predict_volume(BRAIN, "no-such-model", device="cpu")
    with pytest.raises(ValueError, match="mode must be None or one of"):
        medseg.predict_volume(BRAIN, cells_model, mode="median")
    with pytest.raises(ValueError, match="tta must be one of"):
        medseg.load_model(BRAIN_CKPT, device="cpu", tta="rotate")
    with pytest.raises(ValueError, match="at least one model"):
        medseg.load_model([], device="cpu")


# --------------------------------------------------------------------------------------
# segment_cells


def _cell_inputs():
    rgb = np.asarray(Image.open(CELLS).convert("RGB"))  # (Y, X, 3) uint8
    return {
        "path": (CELLS, {}),
        "channels_last": (rgb, {"channels_last": True}),
        "czyx": (read_image(CELLS).array, {}),
    }


@pytest.mark.parametrize("kind", ["path", "channels_last", "czyx"])
def test_segment_cells_matches_cli(kind, cells_model, cells_cli):
    image, extra = _cell_inputs()[kind]
    cells = medseg.segment_cells(image, cells_model, **extra)
    assert isinstance(cells, CellSegmentation)
    np.testing.assert_array_equal(cells.mask, cells_cli["mask"])
    np.testing.assert_array_equal(cells.instances, cells_cli["instances"])
    assert cells.instances.dtype == np.int32 and cells.mask.dtype == np.uint8
    assert cells.num_objects == len(np.unique(cells_cli["instances"])) - 1 == 5
    overlay = cells.overlay()
    assert overlay.shape == (30, 40, 3) and overlay.dtype == np.uint8
    assert "5 objects" in repr(cells)


def test_cell_table_is_what_predict_table_writes(cells_model, tmp_path):
    """CellSegmentation.table() against the CSV of `medseg predict --table`, and by hand:
    one row per object, areas summing to the foreground."""
    cells = medseg.segment_cells(str(CELLS), cells_model)
    table = cells.table()
    out = tmp_path / "out"
    _cli(tmp_path, "predict", CELLS, "-m", CELLS_CKPT, "-o", out, "--device", "cpu", "--table")
    written = pd.read_csv(out / "cells_objects.csv")
    assert list(table.columns) == list(written.columns)
    np.testing.assert_allclose(table.to_numpy(float), written.to_numpy(float), rtol=1e-5)
    assert len(table) == cells.num_objects
    assert table["area_px"].sum() == np.count_nonzero(cells.instances)
    for row in table.itertuples():
        ys, xs = np.nonzero(cells.instances[0] == row.id)
        assert row.area_px == ys.size and row.centroid_y == pytest.approx(ys.mean())


def test_dir_lists_the_lazy_api():
    names = dir(medseg)
    assert {"load_model", "predict_volume", "segment_cells", "evaluate"} <= set(names)
    assert set(medseg._EXPORTS) <= set(names) and "__version__" in names


def test_segment_cells_grey_is_repeated_to_rgb(cells_model):
    grey = read_image(CELLS).array.mean(axis=0)[0]  # (Y, X)
    from_grey = medseg.segment_cells(grey, cells_model)
    from_rgb = medseg.segment_cells(np.repeat(grey[None, None], 3, axis=0), cells_model)
    np.testing.assert_array_equal(from_grey.instances, from_rgb.instances)
    assert from_grey.image.shape == (1, 1, 30, 40)  # as given, for the overlay


def test_segment_cells_object_overrides(cells_model):
    small = medseg.segment_cells(CELLS, cells_model)
    sizes = np.bincount(small.instances.ravel())[1:]
    threshold = int(sizes.max())  # drop every object but the largest (or those tied)
    kept = medseg.segment_cells(CELLS, cells_model, objects={"min_size": threshold})
    assert kept.num_objects == int(np.count_nonzero(sizes >= threshold))


@pytest.mark.parametrize(
    ("image", "extra", "match"),
    [
        (np.zeros((30, 40, 3)), {}, r"channels_last=True"),
        (np.zeros((30, 40, 4)), {"channels_last": True}, "drop an alpha channel"),
        (np.zeros((30, 40)), {"channels_last": True}, r"must be \(Y, X, C\)"),
        (CELLS, {"channels_last": True}, "channels_last must be False"),
        (CELLS, {"objects": {"size": 3}}, "objects keys must be among"),
        (
            CELLS,
            {"objects": {"method": "otsu"}},
            r"objects\['method'\] must be one of \['components', 'watershed', 'boundary', "
            r"'seeded'\], got 'otsu'",
        ),
        (np.ones((30, 40)), {}, "constant"),
        (np.ones((2, 1, 30, 40)), {}, r"3 channel\(s\).*got 2"),
    ],
)
def test_segment_cells_errors(image, extra, match, cells_model):
    with pytest.raises(ValueError, match=match):
        medseg.segment_cells(image, cells_model, **extra)


def test_segment_cells_refuses_brain_models(brain_model):
    with pytest.raises(ValueError, match="2.5D volume model; use medseg.predict_volume"):
        medseg.segment_cells(CELLS, brain_model)


def test_segment_cells_rgb_to_grey_model(tmp_path):
    """A grey model refuses RGB input with a fix (em-membrane is the shipped grey model)."""
    model = medseg.load_model("em-membrane", device="cpu")
    with pytest.raises(ValueError, match="convert it to greyscale first"):
        medseg.segment_cells(CELLS, model)


# --------------------------------------------------------------------------------------
# evaluate / evaluate_objects


def test_evaluate_matches_evaluate_case(brain_model):
    seg = medseg.predict_volume(BRAIN, brain_model, fast=True)
    target_file = GOLDEN / "brain_expected_seg.nii.gz"
    target = read_label(target_file)
    names = {1: "CSF", 2: "GM", 3: "WM"}
    want, _ = evaluate_case(
        seg.labels, target.array, label_names=names, spacing_mm=(1.5, 1.0, 1.0), case="c"
    )
    for pred, tgt, extra in [
        (seg, target_file, {}),
        (seg, nib.load(target_file), {}),
        (seg, target.array, {}),
        (seg.label_image, target_file, {"label_names": names}),
        (seg.labels, target.array, {"label_names": names, "spacing_mm": (1.5, 1.0, 1.0)}),
    ]:
        got = medseg.evaluate(pred, tgt, case="c", **extra)
        pd.testing.assert_frame_equal(got, want)


def test_evaluate_errors(brain_model):
    seg = medseg.predict_volume(BRAIN, brain_model, fast=True)
    with pytest.raises(ValueError, match="label_names must be given"):
        medseg.evaluate(seg.labels, seg.labels, spacing_mm=(1, 1, 1))
    with pytest.raises(ValueError, match="spacing_mm must be given"):
        medseg.evaluate(seg.labels, seg.labels, label_names={1: "CSF", 2: "GM", 3: "WM"})
    with pytest.raises(ValueError, match="spacing_mm must match"):
        medseg.evaluate(seg, seg.labels, spacing_mm=(1, 1, 1))
    with pytest.raises(TypeError, match="integer array"):
        medseg.evaluate(seg, seg.labels.astype(np.float32))
    with pytest.raises(TypeError, match="got list"):
        medseg.evaluate(seg, [0, 1])
    moved = to_nifti(seg.labels, Geometry.from_spacing((1.5, 1.0, 1.0)))
    with pytest.raises(ValueError, match="same voxel grid"):
        medseg.evaluate(seg, moved)


def test_evaluate_objects_matches_evaluate_instances(cells_model):
    cells = medseg.segment_cells(CELLS, cells_model)
    target_file = GOLDEN / "cells_expected_instances.png"
    target = read_instances(target_file).array
    want = evaluate_instances(cells.instances, target, case="c")
    for pred, tgt in [(cells, target_file), (cells.instances, target), (cells, target[0])]:
        assert medseg.evaluate_objects(pred, tgt, case="c") == want
    with pytest.raises(TypeError, match="integer array"):
        medseg.evaluate_objects(cells, target.astype(float))


# --------------------------------------------------------------------------------------
# medseg.io in-memory NIfTI (used by the API)


def test_to_nifti_and_back_keeps_geometry_and_values():
    angle = np.deg2rad(20.0)
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    ) @ np.diag([0.7, 0.8, 1.5])
    affine[:3, 3] = [-3.0, 4.5, 10.0]
    geometry = Geometry((1.5, 0.8, 0.7), affine)
    labels = (np.arange(5 * 6 * 7) % 4).astype(np.uint8).reshape(5, 6, 7)  # (Z, Y, X)
    image = (np.arange(2 * 5 * 6 * 7, dtype=np.float32) / 3).reshape(2, 5, 6, 7)
    label_image = to_nifti(labels, geometry)
    assert label_image.shape == (7, 6, 5)
    np.testing.assert_array_equal(label_image.affine, affine)
    # independent of medseg.io: nibabel's (x, y, z) data transposed
    np.testing.assert_array_equal(np.asanyarray(label_image.dataobj).transpose(2, 1, 0), labels)
    back = volume_from_nifti(label_image, kind="label")
    np.testing.assert_array_equal(back.array, labels)
    assert back.geometry.same_as(geometry, atol_mm=1e-6)
    multi = to_nifti(image, geometry)
    assert multi.shape == (7, 6, 5, 2)
    np.testing.assert_array_equal(volume_from_nifti(multi).array, image)
    instances = volume_from_nifti(
        to_nifti(labels.astype(np.int32) * 1000, geometry), kind="instances"
    )
    assert instances.array.dtype == np.int32 and int(instances.array.max()) == 3000


def test_in_memory_nifti_errors():
    geometry = Geometry.from_spacing((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(Z, Y, X\) map or \(C, Z, Y, X\) image"):
        to_nifti(np.zeros((3, 4)), geometry)
    with pytest.raises(TypeError, match="data must be a numpy array"):
        to_nifti([[[1]]], geometry)
    with pytest.raises(TypeError, match="nibabel.Nifti1Image"):
        volume_from_nifti(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="kind must be one of"):
        volume_from_nifti(to_nifti(np.zeros((2, 3, 4), np.uint8), geometry), kind="mask")
    fractional = to_nifti(np.full((2, 3, 4), 0.5, np.float32), geometry)
    with pytest.raises(ValueError, match="non-integer value"):
        volume_from_nifti(fractional, kind="label")
