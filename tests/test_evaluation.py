"""Tests for medseg.evaluation: file pairs and manifests, tissue and object label formats."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medseg.evaluation import (
    evaluate_files,
    evaluate_manifest,
    find_prediction,
    prediction_instances,
    report_paths,
)
from medseg.report import INSTANCE_COLUMNS

# The 6x6 case of tests/test_report.py: objects 1 and 2 (6 px each) touch, 3 (2 px) is alone.
#     0 0 0 0 0 0
#     0 1 1 2 2 0
#     0 1 1 2 2 0
#     0 1 1 2 2 0
#     0 0 0 0 0 0
#     0 0 0 0 3 3
TARGET = np.zeros((6, 6), dtype=np.uint16)
TARGET[1:4, 1:3] = 1
TARGET[1:4, 3:5] = 2
TARGET[5, 4:6] = 3


def _png(path: Path, yx: np.ndarray, dtype=np.uint16) -> Path:
    """Write a (Y, X) array as a greyscale PNG with Pillow directly (16-bit for uint16)."""
    Image.fromarray(np.asarray(yx, dtype=dtype)).save(path)
    return path


def _merged() -> np.ndarray:
    """Objects 1 and 2 merged into id 7, object 3 found as id 9."""
    pred = np.where(TARGET > 0, 9, 0).astype(np.uint16)
    pred[(TARGET == 1) | (TARGET == 2)] = 7
    return pred


# ---------------------------------------------------------------------------
# prediction_instances
# ---------------------------------------------------------------------------


def test_prediction_instances_mask_becomes_components():
    mask = np.array([[[255, 255, 0, 255], [0, 0, 0, 255], [255, 0, 0, 0]]], dtype=np.int32)
    # 4-connectivity: (0, 0)-(0, 1) one object, the right column another, (2, 0) a third
    expected = [[[1, 1, 0, 2], [0, 0, 0, 2], [3, 0, 0, 0]]]
    assert prediction_instances(mask).tolist() == expected
    assert prediction_instances((mask > 0).astype(np.int32)).tolist() == expected  # 0/1
    assert prediction_instances(np.zeros((1, 2, 3), np.int32)).tolist() == [[[0, 0, 0]] * 2]


def test_prediction_instances_keeps_instance_maps():
    inst = np.array([[[4, 4, 0, 9], [0, 0, 0, 9], [4, 0, 0, 0]]], dtype=np.int32)
    out = prediction_instances(inst)
    assert out.tolist() == inst.tolist()  # disconnected pieces of 4 stay one object


# ---------------------------------------------------------------------------
# evaluate_files with object formats
# ---------------------------------------------------------------------------


def test_evaluate_files_instances_hand_case(tmp_path):
    pred = _png(tmp_path / "c1_instances.png", _merged())
    label = _png(tmp_path / "label.png", TARGET)
    result = evaluate_files(pred, label, label_format="instances")
    assert result.is_objects and result.label_format == "instances"
    assert tuple(result.rows.columns) == INSTANCE_COLUMNS and len(result.rows) == 1
    row = result.cases[0]
    assert row["case"] == "c1"  # "_instances" is dropped from the file name
    # IoU(7, 1) = IoU(7, 2) = 0.5 (no match), IoU(9, 3) = 1: 1 / (1 + 1 + 2) at every threshold
    assert row["ap"] == 0.25 and row["f1_at_05"] == 0.4
    assert (row["split_rate"], row["touching_pairs"]) == (0.0, 1)
    assert result.summary.loc[0, "split_rate_pooled"] == 0.0
    assert result.failures == [] and result.written == []


@pytest.mark.parametrize("mask_value", [1, 255])
def test_evaluate_files_binary_mask_prediction_becomes_components(tmp_path, mask_value):
    # A 0/v mask of the reference foreground: its components merge the touching pair 1-2,
    # so it scores like _merged(): 2 objects, AP 0.25, no split.
    mask = np.where(TARGET > 0, mask_value, 0)
    pred = _png(tmp_path / "mask.png", mask, dtype=np.uint8)
    label = _png(tmp_path / "label.png", TARGET)
    row = evaluate_files(pred, label, label_format="instances").cases[0]
    assert (row["num_pred"], row["num_target"]) == (2, 3)
    assert row["ap"] == 0.25 and row["split_rate"] == 0.0 and row["pixel_iou"] == 1.0


def test_evaluate_files_binary_label_format(tmp_path):
    # binary reference: 255 = cell interior, 0 = membrane; the cells are the components of
    # 255 (1 and 2 touch, so the reference has 2 objects: 12 px and 2 px)
    label = _png(tmp_path / "em.png", np.where(TARGET > 0, 255, 0), dtype=np.uint8)
    same = evaluate_files(label, label, label_format="binary", foreground_value=255).cases[0]
    assert same["num_target"] == 2 and same["rand_error"] == 0.0 and same["ap"] == 1.0
    assert math.isnan(same["split_rate"])  # components never touch
    # an instance prediction that splits the 12 px cell: Rand precision = (36 + 36 + 4) /
    # (36 + 36 + 4), recall = 76 / (144 + 4)
    pred = _png(tmp_path / "pred.png", TARGET)
    row = evaluate_files(pred, label, label_format="binary", foreground_value=255).cases[0]
    assert row["rand_precision"] == pytest.approx(1.0)
    assert row["rand_recall"] == pytest.approx(76 / 148)
    assert row["num_pred"] == 3 and row["ap"] == pytest.approx(1 / 4)


def test_evaluate_files_object_argument_errors(tmp_path):
    label = _png(tmp_path / "label.png", TARGET)
    with pytest.raises(ValueError, match="label_format must be one of .*got 'objects'"):
        evaluate_files(label, label, label_format="objects")
    with pytest.raises(ValueError, match="foreground_value must be an integer 1..65535 .*None"):
        evaluate_files(label, label, label_format="binary")
    with pytest.raises(ValueError, match="foreground_value must be omitted .*'instances'"):
        evaluate_files(label, label, label_format="instances", foreground_value=255)
    with pytest.raises(ValueError, match="labels must be omitted for label_format 'instances'"):
        evaluate_files(label, label, label_format="instances", labels="1=nucleus")
    with pytest.raises(ValueError, match=r"label .*label\.png.* must hold only 0 and .* 255"):
        evaluate_files(label, label, label_format="binary", foreground_value=255)


def test_evaluate_files_object_shape_mismatch_names_both_files(tmp_path):
    pred = _png(tmp_path / "pred.png", TARGET[:, :5])
    label = _png(tmp_path / "label.png", TARGET)
    with pytest.raises(ValueError) as info:
        evaluate_files(pred, label, label_format="instances")
    message = str(info.value)
    assert "pred.png" in message and "label.png" in message
    assert "(1, 6, 5)" in message and "(1, 6, 6)" in message


def test_evaluate_files_object_report(tmp_path):
    pred = _png(tmp_path / "pred.png", _merged())
    label = _png(tmp_path / "label.png", TARGET)
    out = tmp_path / "out" / "nuclei.csv"
    out.parent.mkdir()
    result = evaluate_files(pred, label, label_format="instances", output=out)
    assert result.written == report_paths(out, label_format="instances")
    assert sorted(p.name for p in out.parent.iterdir()) == ["nuclei.csv", "nuclei.md"]
    assert pd.read_csv(out)["ap"].tolist() == [0.25]
    out.write_text("keep me")
    with pytest.raises(FileExistsError, match="nuclei.csv"):
        evaluate_files(pred, label, label_format="instances", output=out)
    assert out.read_text(encoding="utf-8") == "keep me"
    evaluate_files(pred, label, label_format="instances", output=out, overwrite=True)
    assert out.read_text(encoding="utf-8") != "keep me"


def test_evaluate_files_classes_unchanged(tmp_path):
    label = _png(tmp_path / "label.png", np.where(TARGET > 0, 1, 0), dtype=np.uint8)
    result = evaluate_files(label, label, labels="1=cell", distances=False)
    assert not result.is_objects and result.rows["tissue"].tolist() == ["cell"]
    assert result.rows["dice"].tolist() == [1.0]


# ---------------------------------------------------------------------------
# find_prediction
# ---------------------------------------------------------------------------


def test_find_prediction_prefers_instances_for_object_formats(tmp_path):
    for name in ("c1.png", "c1_instances.png", "c1_mask.png", "c1_overlay.png", "c2.png"):
        (tmp_path / name).write_bytes(b"")
    assert find_prediction(tmp_path, "c1", label_format="instances").name == "c1_instances.png"
    assert find_prediction(tmp_path, "c1", label_format="binary").name == "c1_instances.png"
    assert find_prediction(tmp_path, "c1").name == "c1.png"  # classes: today's name
    assert find_prediction(tmp_path, "c2", label_format="instances").name == "c2.png"
    (tmp_path / "c3_mask.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"c3_instances<suffix> or c3<suffix>"):
        find_prediction(tmp_path, "c3", label_format="instances")
    (tmp_path / "c1_instances.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="must be one file, got .*c1_instances"):
        find_prediction(tmp_path, "c1", label_format="instances")


# ---------------------------------------------------------------------------
# evaluate_manifest with object formats
# ---------------------------------------------------------------------------


def _object_manifest(tmp_path: Path, labels: dict[str, np.ndarray], sidecar: dict, dtype) -> Path:
    """Write root/img_<case>.png, root/lab_<case>.png, m.csv and m.labels.json."""
    root = tmp_path / "root"
    root.mkdir()
    with open(tmp_path / "m.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "image", "label", "split"])
        for case, label in labels.items():
            _png(root / f"img_{case}.png", np.zeros(label.shape), dtype=np.uint8)
            _png(root / f"lab_{case}.png", label, dtype=dtype)
            writer.writerow([case, f"img_{case}.png", f"lab_{case}.png", "val"])
    (tmp_path / "m.labels.json").write_text(json.dumps(sidecar))
    return tmp_path / "m.csv"


INSTANCES_SIDECAR = {"labels": {"0": "background", "1": "nucleus"}, "label_format": "instances"}
BINARY_SIDECAR = {
    "labels": {"0": "membrane", "1": "cell"},
    "label_format": "binary",
    "foreground_value": 255,
}


def test_evaluate_manifest_instances_keeps_going_past_bad_cases(tmp_path):
    manifest = _object_manifest(
        tmp_path, {c: TARGET for c in ("a", "b", "c", "d", "e")}, INSTANCES_SIDECAR, np.uint16
    )
    preds = tmp_path / "preds"
    preds.mkdir()
    _png(preds / "a_instances.png", _merged())  # AP 0.25, split 0 / 1
    _png(preds / "a.png", TARGET)  # ignored: _instances wins
    _png(preds / "b.png", TARGET)  # fallback name; perfect
    (preds / "c_instances.png").write_bytes(b"not a png")  # unreadable
    _png(preds / "d_instances.png", TARGET[:5])  # wrong shape; e has no prediction
    out = tmp_path / "report.csv"
    result = evaluate_manifest(manifest, preds, data_root=tmp_path / "root", output=out)
    assert result.label_format == "instances"
    assert result.rows["case"].tolist() == ["a", "b"]
    assert result.rows["ap"].tolist() == [0.25, 1.0]
    failed = dict(result.failures)
    assert sorted(failed) == ["c", "d", "e"]
    assert "c_instances.png" in failed["c"]
    assert "d_instances.png" in failed["d"] and "(1, 5, 6)" in failed["d"]
    assert "e_instances<suffix> or e<suffix>" in failed["e"]
    s = result.summary.to_dict("records")[0]
    assert s["n_cases"] == 2 and s["ap_mean"] == pytest.approx(0.625)
    assert (s["touching_split"], s["touching_pairs"], s["split_rate_pooled"]) == (1, 2, 0.5)
    assert [p.name for p in result.written] == ["report.csv", "report.md"]
    assert pd.read_csv(out)["case"].tolist() == ["a", "b"]


def test_evaluate_manifest_binary(tmp_path):
    em = np.where(TARGET > 0, 255, 0)
    manifest = _object_manifest(tmp_path, {"s0": em, "s1": em}, BINARY_SIDECAR, np.uint8)
    preds = tmp_path / "preds"
    preds.mkdir()
    _png(preds / "s0.png", em, dtype=np.uint8)  # the mask itself: components, perfect
    _png(preds / "s1_instances.png", TARGET)  # splits the 12 px cell in two
    result = evaluate_manifest(manifest, preds, data_root=tmp_path / "root")
    assert result.label_format == "binary" and result.failures == []
    s0, s1 = result.cases
    assert s0["rand_error"] == 0.0 and s0["ap"] == 1.0
    assert s1["rand_recall"] == pytest.approx(76 / 148) and s1["num_pred"] == 3


def test_evaluate_manifest_object_argument_errors(tmp_path):
    manifest = _object_manifest(tmp_path, {"a": TARGET}, INSTANCES_SIDECAR, np.uint16)
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="label_format must be the manifest's 'instances'"):
        evaluate_manifest(manifest, tmp_path, data_root=root, label_format="binary")
    with pytest.raises(ValueError, match="foreground_value must be the manifest's None"):
        evaluate_manifest(manifest, tmp_path, data_root=root, foreground_value=255)
    with pytest.raises(ValueError, match="labels must be omitted for label_format 'instances'"):
        evaluate_manifest(manifest, tmp_path, data_root=root, labels="1=nucleus")
    existing = tmp_path / "r.md"
    existing.write_text("keep me")
    with pytest.raises(FileExistsError, match="r.md"):
        evaluate_manifest(manifest, tmp_path, data_root=root, output=tmp_path / "r.csv")
    assert not (tmp_path / "r.csv").exists()
    # the sidecar's own format may be repeated
    preds = tmp_path / "preds"
    preds.mkdir()
    _png(preds / "a.png", TARGET)
    result = evaluate_manifest(manifest, preds, data_root=root, label_format="instances")
    assert result.cases[0]["ap"] == 1.0


# ---------------------------------------------------------------------------
# Real data (skipped where ../shared/data is absent)
# ---------------------------------------------------------------------------


def _dsb_case_with_touching_pairs(shared_data: Path) -> tuple[str, int]:
    index = pd.read_csv(shared_data / "dsb2018_stage1_test" / "index.csv")
    row = index[index["touching_pairs"] > 0].iloc[0]
    return str(row["image_id"]), int(row["touching_pairs"])


def test_real_dsb2018_label_against_itself(shared_data):
    case, pairs = _dsb_case_with_touching_pairs(shared_data)
    label = shared_data / "dsb2018_stage1_test" / "labels" / f"{case}.png"
    row = evaluate_files(label, label, label_format="instances").cases[0]
    assert row["ap"] == 1.0 and row["f1_at_05"] == 1.0 and row["rand_error"] == 0.0
    assert row["split_rate"] == 1.0 and row["touching_pairs"] == pairs  # index.csv's count
    assert row["num_pred"] == row["num_target"] > 0


def test_real_isbi2012_label_against_itself(shared_data):
    label = shared_data / "isbi2012_em" / "labels" / "slice_00.png"
    row = evaluate_files(label, label, label_format="binary", foreground_value=255).cases[0]
    assert row["rand_error"] == 0.0 and row["pixel_error"] == 0.0 and row["ap"] == 1.0
    assert row["num_target"] > 10  # many cells, separated by membranes


def test_real_dsb2018_manifest_with_instance_predictions(shared_data, tmp_path):
    """The repo manifest with `<case>_instances.png` predictions = the labels themselves."""
    manifest = Path(__file__).resolve().parents[1] / "data_manifests" / "dsb2018_stage1_test.csv"
    if not manifest.exists():
        pytest.skip(f"{manifest} is absent")
    cases = pd.read_csv(manifest)
    val = cases[cases["split"] == "val"]
    preds = tmp_path / "preds"
    preds.mkdir()
    for case in val["case"][:2]:
        src = shared_data / "dsb2018_stage1_test" / "labels" / f"{case}.png"
        os.symlink(src, preds / f"{case}_instances.png")
    result = evaluate_manifest(manifest, preds, data_root=shared_data, split="val")
    assert result.label_format == "instances"
    assert result.rows["case"].tolist() == val["case"][:2].tolist()
    assert result.rows["ap"].tolist() == [1.0, 1.0]
    assert len(result.failures) == len(val) - 2  # the others have no prediction


def test_isbi2012_cli_bad_predictions_one_line_each_and_the_good_one_scored(shared_data, tmp_path):
    """`medseg evaluate` on real ISBI sections: a prediction of the wrong size and a float
    probability map given as an instance map each fail in one line naming the file, the
    expected and the received value; the good case is still scored (V_Rand 1 on itself)."""
    import tifffile
    from typer.testing import CliRunner

    from medseg.cli import main

    labels = shared_data / "isbi2012_em" / "labels"
    preds = tmp_path / "preds"
    preds.mkdir()
    Image.fromarray(np.zeros((100, 100), np.uint16)).save(preds / "slice_11_instances.png")
    probability = np.random.default_rng(0).uniform(size=(512, 512)).astype(np.float32)
    tifffile.imwrite(preds / "slice_12_instances.tif", probability)
    os.symlink(labels / "slice_13.png", preds / "slice_13.png")  # 0 / 255: components
    manifest = Path(__file__).resolve().parents[1] / "data_manifests" / "isbi2012_em.csv"
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        args = ["evaluate", "--manifest", manifest, "--data-root", shared_data]
        args += ["--pred-dir", preds, "--split", "val", "-o", tmp_path / "r.csv"]
        code = main([str(a) for a in args])
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    assert code == 1
    text = " ".join((stdout + stderr).split())
    assert "slice_11_instances.png' must be on the same voxel grid" in text
    assert "(1, 100, 100) vs (1, 512, 512)" in text
    assert "slice_12_instances.tif' must hold integers" in text and "non-integer value" in text
    assert "Traceback" not in stdout + stderr
    report = pd.read_csv(tmp_path / "r.csv")
    row = report[report["case"] == "slice_13"].iloc[0]
    assert row["v_rand"] == 1.0 and row["v_info"] == 1.0 and row["rand_error"] == 0.0
    assert set(report["case"]) == {"slice_13"}
