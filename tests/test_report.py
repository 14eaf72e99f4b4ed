"""Tests for medseg.report: label names, per-case rows, summaries, writers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from medseg.metrics import boundary_f1, surface_distances
from medseg.report import (
    CASE_COLUMNS,
    INSTANCE_BF_TOLERANCE_PX,
    INSTANCE_COLUMNS,
    INSTANCE_METRIC_COLUMNS,
    ROW_COLUMNS,
    evaluate_case,
    evaluate_instances,
    format_table,
    parse_label_names,
    summarize,
    summarize_instances,
    write_instance_report,
    write_report,
)
from tests.reference import boundary_f1_brute

NAMES = {1: "CSF", 2: "GM", 3: "WM"}
SPACING = (1.5, 0.9375, 0.9375)  # mm; one voxel is 1.318359375 uL

# One 4x4 slice (Z == 1); label 1: 5 target voxels, 5 predicted, 4 shared (Dice 0.8);
# label 2: 2 target voxels, 1 predicted and shared (Dice 2/3); label 3 absent from both.
TARGET = np.array([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 0], [2, 2, 0, 0]]], dtype=np.uint8)
PRED = np.array([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 0, 0], [2, 0, 0, 0]]], dtype=np.uint8)


# ---------------------------------------------------------------------------
# parse_label_names
# ---------------------------------------------------------------------------


def test_parse_label_names():
    assert parse_label_names("1=CSF,2=GM,3=WM") == NAMES
    assert parse_label_names(" 0 = background , 3=white matter") == {
        0: "background",
        3: "white matter",
    }
    assert list(parse_label_names("3=WM,1=CSF")) == [3, 1]  # order kept


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "label names must not be empty"),
        ("1=CSF,GM", "label names item must be VALUE=NAME, got 'GM'"),
        ("1=CSF,,2=GM", "label names item must be VALUE=NAME, got ''"),
        ("a=CSF", "label names item must be VALUE=NAME, got 'a=CSF'"),
        ("1=", "label names item must be VALUE=NAME, got '1='"),
        ("1.5=CSF", r"label names item must be VALUE=NAME, got '1\.5=CSF'"),
        ("-1=CSF", "label value must be >= 0, got -1 in item '-1=CSF'"),
        ("1=CSF,1=GM", "label values must be distinct, got 1 twice"),
        ("1=GM,2=GM", "label names must be distinct, got 'GM' twice"),
    ],
)
def test_parse_label_names_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_label_names(text)


def test_parse_label_names_type_error():
    with pytest.raises(TypeError, match="label names must be a string, got dict"):
        parse_label_names({1: "CSF"})


# ---------------------------------------------------------------------------
# evaluate_case
# ---------------------------------------------------------------------------


def test_evaluate_case_rows_and_volumes():
    rows, case = evaluate_case(PRED, TARGET, label_names=NAMES, spacing_mm=SPACING, case="c1")
    assert tuple(rows.columns) == ROW_COLUMNS
    assert rows["tissue"].tolist() == ["CSF", "GM", "WM"]
    assert rows["label"].tolist() == [1, 2, 3]
    assert (rows["case"] == "c1").all()
    assert_allclose(rows["dice"], [0.8, 2 / 3, math.nan])
    assert_allclose(rows["iou"], [4 / 6, 1 / 2, math.nan])
    assert rows["n_pred"].tolist() == [5, 1, 0]
    assert rows["n_target"].tolist() == [5, 2, 0]
    voxel_ml = 1.5 * 0.9375 * 0.9375 / 1000  # mm^3 -> mL
    assert_allclose(rows["volume_ml"], [5 * voxel_ml, 1 * voxel_ml, 0.0])
    assert_allclose(rows["target_volume_ml"], [5 * voxel_ml, 2 * voxel_ml, 0.0])
    # distances agree with the metric functions (2D: in-plane); WM absent: NaN
    d = surface_distances(PRED, TARGET, classes=[1, 2, 3], spacing_mm=SPACING)
    assert_allclose(rows["hd95_mm"], d["hd95_mm"], equal_nan=True)
    assert_allclose(rows["assd_mm"], d["assd_mm"], equal_nan=True)
    bf = boundary_f1(PRED, TARGET, classes=[1, 2, 3], spacing_mm=SPACING, tolerance_mm=2.0)
    assert_allclose(rows["bf_score"], bf, equal_nan=True)
    assert np.isnan(rows.loc[2, ["hd95_mm", "assd_mm", "bf_score"]].astype(float)).all()
    # case-level values: K = 4 (0..3), background included; weighted Dice over tissues
    assert set(CASE_COLUMNS) <= set(case)
    assert case["case"] == "c1"
    assert case["accuracy"] == pytest.approx(13 / 16)
    assert case["mean_iou"] == pytest.approx(125 / 198)  # class 3 absent: skipped
    assert case["fw_iou"] == pytest.approx(359 / 528)
    assert case["mean_class_accuracy"] == pytest.approx(197 / 270)
    assert case["weighted_dice"] == pytest.approx(16 / 21)  # (5 * 0.8 + 2 * 2/3) / 7
    assert case["confusion"] == [[8, 1, 0, 0], [1, 4, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert case["confusion_labels"] == [0, 1, 2, 3]
    json.dumps(case)  # plain Python values only


def test_evaluate_case_without_distances_and_background_name():
    names = {0: "background", **NAMES}
    rows, _ = evaluate_case(PRED, TARGET, label_names=names, spacing_mm=SPACING, distances=False)
    assert rows["tissue"].tolist() == ["CSF", "GM", "WM"]  # label 0 gets no row
    assert rows[["hd95_mm", "assd_mm", "hd_mm", "bf_score"]].isna().all().all()


def test_evaluate_case_3d_identity():
    rng = np.random.default_rng(0)  # seed only picks the labels
    x = rng.integers(0, 4, (5, 6, 7), dtype=np.uint8)
    rows, case = evaluate_case(x, x, label_names=NAMES, spacing_mm=(2, 1, 1))
    assert (
        (rows["dice"] == 1).all() and (rows["hd95_mm"] == 0).all() and (rows["bf_score"] == 1).all()
    )
    assert case["accuracy"] == 1.0 and case["weighted_dice"] == 1.0


def test_evaluate_case_unknown_label_value():
    pred = PRED.copy()
    pred[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"pred label values .* got unknown label value 7; add it"):
        evaluate_case(pred, TARGET, label_names=NAMES, spacing_mm=SPACING)
    # a value inside 0..max(label_names) that has no name, in pred, then in target only
    with pytest.raises(ValueError, match="pred label values .* got unknown label value 2"):
        evaluate_case(PRED, TARGET, label_names={1: "CSF", 3: "WM"}, spacing_mm=SPACING)
    pred = PRED.copy()
    pred[pred == 2] = 0
    with pytest.raises(ValueError, match="target label values .* got unknown label value 2"):
        evaluate_case(pred, TARGET, label_names={1: "CSF", 3: "WM"}, spacing_mm=SPACING)
    neg = TARGET.astype(np.int16)
    neg[0, 0, 0] = -3
    with pytest.raises(ValueError, match="target label values must be >= 0, got -3"):
        evaluate_case(PRED, neg, label_names=NAMES, spacing_mm=SPACING)


def test_evaluate_case_argument_errors():
    kw = {"spacing_mm": SPACING}
    with pytest.raises(TypeError, match="label_names must be a dict"):
        evaluate_case(PRED, TARGET, label_names="1=CSF", **kw)
    with pytest.raises(
        ValueError, match=r"label_names keys must be int label values in \[0, 4096\), got '1'"
    ):
        evaluate_case(PRED, TARGET, label_names={"1": "CSF"}, **kw)
    with pytest.raises(ValueError, match="label_names values must be non-empty strings, got ''"):
        evaluate_case(PRED, TARGET, label_names={1: ""}, **kw)
    with pytest.raises(ValueError, match="label_names must name at least one tissue label"):
        evaluate_case(PRED, TARGET, label_names={0: "background"}, **kw)
    with pytest.raises(ValueError, match="same shape"):
        evaluate_case(PRED, TARGET[:, :3], label_names=NAMES, **kw)
    with pytest.raises(ValueError, match=r"pred must be a \(Z, Y, X\) label map"):
        evaluate_case(PRED[0], TARGET[0], label_names=NAMES, **kw)
    with pytest.raises(ValueError, match="spacing_mm must be 3 positive numbers"):
        evaluate_case(PRED, TARGET, label_names=NAMES, spacing_mm=(1, 1))
    with pytest.raises(ValueError, match="tolerance_mm must be a finite number"):
        evaluate_case(PRED, TARGET, label_names=NAMES, tolerance_mm=-1.0, **kw)


# ---------------------------------------------------------------------------
# summarize, format_table
# ---------------------------------------------------------------------------


def _two_cases() -> tuple[pd.DataFrame, list[dict]]:
    rows1, case1 = evaluate_case(PRED, TARGET, label_names=NAMES, spacing_mm=SPACING, case="c1")
    target = TARGET.copy()
    target[TARGET == 3] = 0
    target[0, 3, 3] = 3  # WM present in case 2 only, missed by the prediction: Dice 0
    rows2, case2 = evaluate_case(TARGET, target, label_names=NAMES, spacing_mm=SPACING, case="c2")
    return pd.concat([rows1, rows2], ignore_index=True), [case1, case2]


def test_summarize_nan_counting():
    rows, _ = _two_cases()
    s = summarize(rows)
    assert s["tissue"].tolist() == ["CSF", "GM", "WM"]
    assert s["n_cases"].tolist() == [2, 2, 2]
    csf, gm, wm = (s.iloc[i] for i in range(3))
    assert csf["dice_mean"] == pytest.approx((0.8 + 1.0) / 2)
    assert csf["dice_std"] == pytest.approx(np.std([0.8, 1.0], ddof=1))
    assert csf["dice_n_nan"] == 0
    # WM: case 1 absent from both (NaN, skipped and counted), case 2 missed (0)
    assert wm["dice_mean"] == 0.0 and wm["dice_n_nan"] == 1 and np.isnan(wm["dice_std"])
    assert wm["hd95_mm_n_nan"] == 2 and np.isnan(wm["hd95_mm_mean"])  # pred empty in case 2
    assert gm["precision_n_nan"] == 0
    assert s["dice_n_nan"].dtype.kind == "i"
    for m in ("dice", "hd95_mm", "bf_score", "volume_ml"):
        assert {f"{m}_mean", f"{m}_std", f"{m}_n_nan"} <= set(s.columns)


def test_summarize_errors_and_empty():
    with pytest.raises(TypeError, match="rows must be a pandas DataFrame"):
        summarize([{"tissue": "GM"}])
    with pytest.raises(ValueError, match=r"rows must have the columns .*missing \['label'\]"):
        summarize(pd.DataFrame({"tissue": ["GM"], "dice": [0.5]}))
    empty = summarize(pd.DataFrame(columns=list(ROW_COLUMNS)))
    assert len(empty) == 0 and "dice_mean" in empty.columns


def test_format_table():
    rows, _ = _two_cases()
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["case", "tissue", "dice", "iou"]
    assert len(lines) == 2 + len(rows)
    assert "0.800" in text and "nan" in text
    with pytest.raises(ValueError, match=r"missing \['dice'\]"):
        format_table(rows.drop(columns="dice"))


# ---------------------------------------------------------------------------
# write_report
# ---------------------------------------------------------------------------


def test_write_report_writes_three_files(tmp_path):
    rows, cases = _two_cases()
    written = write_report(rows, cases, tmp_path / "report.csv")
    assert [p.name for p in written] == ["report.csv", "report.md", "report_cases.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    back = pd.read_csv(written[0])
    assert tuple(back.columns) == ROW_COLUMNS
    assert_allclose(back["dice"], rows["dice"], equal_nan=True)
    markdown = written[1].read_text(encoding="utf-8")
    assert "## Per case and tissue" in markdown and "## Per case" in markdown
    assert "0.9000 ± 0.1414 (0)" in markdown  # CSF Dice: mean of 0.8 and 1.0, no NaN
    cases_back = pd.read_csv(written[2])
    assert cases_back["case"].tolist() == ["c1", "c2"]
    assert json.loads(cases_back.loc[0, "confusion"]) == cases[0]["confusion"]


def test_write_report_refuses_to_overwrite_and_writes_nothing(tmp_path):
    rows, cases = _two_cases()
    existing = tmp_path / "report_cases.csv"
    existing.write_text("keep me")
    with pytest.raises(FileExistsError, match="report outputs must not exist.*report_cases.csv"):
        write_report(rows, cases, tmp_path / "report.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["report_cases.csv"]  # no partial, no temp
    assert existing.read_text(encoding="utf-8") == "keep me"
    written = write_report(rows, cases, tmp_path / "report.csv", overwrite=True)
    assert all(p.exists() for p in written)
    assert existing.read_text(encoding="utf-8") != "keep me"
    assert len(list(tmp_path.iterdir())) == 3


def test_write_report_failure_mid_way_leaves_nothing(tmp_path, monkeypatch):
    rows, cases = _two_cases()
    calls = []

    def failing_to_csv(self, *args, **kwargs):  # the second CSV write fails
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    original = pd.DataFrame.to_csv
    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_to_csv)
    with pytest.raises(OSError, match="disk full"):
        write_report(rows, cases, tmp_path / "report.csv")
    assert list(tmp_path.iterdir()) == []


def test_write_report_argument_errors(tmp_path):
    rows, cases = _two_cases()
    with pytest.raises(ValueError, match=r"report path must end in \.csv, got .*report\.md"):
        write_report(rows, cases, tmp_path / "report.md")
    with pytest.raises(FileNotFoundError, match="output folder .* must exist"):
        write_report(rows, cases, tmp_path / "missing" / "report.csv")
    with pytest.raises(ValueError, match=r"rows must have the columns .*missing \['hd95_mm'\]"):
        write_report(rows.drop(columns="hd95_mm"), cases, tmp_path / "report.csv")
    with pytest.raises(TypeError, match="cases must be a list of dicts"):
        write_report(rows, [1], tmp_path / "report.csv")
    with pytest.raises(
        ValueError, match=r"cases must be dicts with the keys .*missing \['fw_iou'\]"
    ):
        write_report(
            rows, [{k: v for k, v in cases[0].items() if k != "fw_iou"}], tmp_path / "r.csv"
        )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# evaluate_instances, summarize_instances, write_instance_report (object metrics)
# ---------------------------------------------------------------------------

# One 6x6 slice (Z == 1). Objects 1 and 2 (6 px each) touch along columns 2|3; object 3
# (2 px) touches nothing.
#     0 0 0 0 0 0
#     0 1 1 2 2 0
#     0 1 1 2 2 0
#     0 1 1 2 2 0
#     0 0 0 0 0 0
#     0 0 0 0 3 3
OBJ_TARGET = np.zeros((1, 6, 6), dtype=np.int32)
OBJ_TARGET[0, 1:4, 1:3] = 1
OBJ_TARGET[0, 1:4, 3:5] = 2
OBJ_TARGET[0, 5, 4:6] = 3


def _merged() -> np.ndarray:
    """The prediction merges objects 1 and 2 into id 7 and finds 3 as id 9 (ids not 1..N)."""
    pred = np.zeros_like(OBJ_TARGET)
    pred[OBJ_TARGET > 0] = 9
    pred[(OBJ_TARGET == 1) | (OBJ_TARGET == 2)] = 7
    return pred


def test_evaluate_instances_merged_touching_pair():
    row = evaluate_instances(_merged(), OBJ_TARGET, case="merged")
    assert list(row) == list(INSTANCE_COLUMNS)
    assert row["case"] == "merged"
    assert (row["num_pred"], row["num_target"]) == (2, 3)
    # Same foreground (14 px): pixel IoU 1, Dice 1, pixel error 0.
    assert (row["pixel_iou"], row["dice"], row["pixel_error"]) == (1.0, 1.0, 0.0)
    # IoU(7, 1) = IoU(7, 2) = 6 / 12 = 0.5, not > 0.5: no match; IoU(9, 3) = 1.
    # Every threshold: TP 1, FP 1 (id 7), FN 2 (1 and 2) -> 1 / 4. F1 = 2 / (2 + 3).
    assert row["ap"] == 0.25 and row["ap_50"] == 0.25 and row["f1_at_05"] == 0.4
    # The one touching pair (1, 2) is not split.
    assert (row["touching_pairs"], row["touching_split"], row["split_rate"]) == (1, 0, 0.0)
    # Rand, 14 target-foreground px: sum n_ij^2 = 36 + 36 + 4 = 76, pred sizes 12, 2 -> 148,
    # target sizes 6, 6, 2 -> 76: P = 76 / 148, R = 1, F = 152 / 224, error 72 / 224.
    assert row["rand_precision"] == pytest.approx(76 / 148)
    assert row["rand_recall"] == pytest.approx(1.0)
    assert row["rand_error"] == pytest.approx(72 / 224)


def test_evaluate_instances_one_missed_pixel():
    pred = OBJ_TARGET.copy()
    pred[0, 1, 1] = 0  # object 1 loses 1 of its 6 px
    row = evaluate_instances(pred, OBJ_TARGET, case="miss")
    assert (row["num_pred"], row["num_target"]) == (3, 3)
    # Foreground 13 of 14 px: IoU 13 / 14, Dice 26 / 27, 1 of 36 px wrong.
    assert row["pixel_iou"] == pytest.approx(13 / 14)
    assert row["dice"] == pytest.approx(26 / 27)
    assert row["pixel_error"] == pytest.approx(1 / 36)
    # IoU(1, 1) = 5 / 6 = 0.833: matched at 0.5 ... 0.8 (7 thresholds, precision 1), not at
    # 0.85, 0.9, 0.95 (TP 2, FP 1, FN 1 -> 2 / 4). AP = (7 * 1 + 3 * 0.5) / 10 = 0.85.
    assert row["ap"] == pytest.approx(0.85)
    assert row["ap_50"] == 1.0 and row["f1_at_05"] == 1.0
    assert (row["touching_pairs"], row["touching_split"], row["split_rate"]) == (1, 1, 1.0)
    # Rand: the missed px is a singleton; sum n_ij^2 = 25 + 1 + 36 + 4 = 66 = sum of pred
    # sizes^2 -> P = 1; R = 66 / 76; error = 1 - 132 / 142 = 10 / 142.
    assert row["rand_precision"] == pytest.approx(1.0)
    assert row["rand_recall"] == pytest.approx(66 / 76)
    assert row["rand_error"] == pytest.approx(10 / 142)


def test_evaluate_instances_foreground_boundary_f1_by_hand():
    # Target: a 3x3 object (8 boundary px, the centre is inside); pred: the same shifted 3 px
    # right, with another id. Pred boundary column 4 is 1 px from target column 3 (3 px
    # matched), column 5's two boundary px are 2 px away (matched: tolerance 2 px), column 6
    # is 3 px away (3 px unmatched): precision 5 / 8, recall 5 / 8 by symmetry, BF 5 / 8.
    target = np.zeros((5, 10), dtype=np.int32)
    target[1:4, 1:4] = 4
    pred = np.roll(target, 3, axis=1) * 2
    assert INSTANCE_BF_TOLERANCE_PX == 2.0
    assert evaluate_instances(pred, target)["bf_score"] == pytest.approx(5 / 8)
    assert evaluate_instances(np.roll(target, 2, axis=1), target)["bf_score"] == 1.0


def test_evaluate_instances_boundary_f1_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(5):
        target = (rng.random((1, 9, 11)) < 0.4).astype(np.int32) * rng.integers(1, 5, (1, 9, 11))
        pred = (rng.random((1, 9, 11)) < 0.4).astype(np.int32) * 7
        expected = boundary_f1_brute(
            (pred > 0).astype(np.uint8), (target > 0).astype(np.uint8), 1, (1, 1, 1), 2.0
        )
        assert evaluate_instances(pred, target)["bf_score"] == pytest.approx(expected)


def test_evaluate_instances_invariants():
    ident = evaluate_instances(OBJ_TARGET, OBJ_TARGET)
    assert ident["ap"] == 1.0 and ident["split_rate"] == 1.0 and ident["rand_error"] == 0.0
    assert ident["case"] == "case"
    # ids need not be contiguous: renumbering both maps changes nothing
    renum = evaluate_instances(OBJ_TARGET * 1000 + (OBJ_TARGET > 0), OBJ_TARGET * 3)
    assert renum == ident
    # (Y, X) input gives the same row as (1, Y, X)
    assert evaluate_instances(OBJ_TARGET[0], OBJ_TARGET[0]) == ident
    # empty maps: every ratio with a zero denominator is NaN; the pixel error is 0
    empty = np.zeros((1, 4, 5), dtype=np.uint16)
    row = evaluate_instances(empty, empty)
    assert row["pixel_error"] == 0.0 and row["num_pred"] == 0 and row["touching_pairs"] == 0
    nan_keys = ("pixel_iou", "dice", "bf_score", "rand_error", "ap", "ap_50", "f1_at_05")
    for key in (*nan_keys, "split_rate"):
        assert math.isnan(row[key]), key
    # nothing predicted: AP 0, Rand recall counts every px as a singleton
    row = evaluate_instances(np.zeros_like(OBJ_TARGET), OBJ_TARGET)
    assert row["ap"] == 0.0 and row["pixel_iou"] == 0.0 and row["split_rate"] == 0.0
    assert row["rand_precision"] == 1.0


def test_evaluate_instances_errors():
    with pytest.raises(ValueError, match=r"must have the same shape, got pred \(1, 6, 6\)"):
        evaluate_instances(OBJ_TARGET, OBJ_TARGET[:, :5])
    with pytest.raises(TypeError, match="pred must be an integer ndarray .*got dtype float64"):
        evaluate_instances(OBJ_TARGET.astype(np.float64), OBJ_TARGET)
    with pytest.raises(ValueError, match="target ids must be >= 0, got -1"):
        evaluate_instances(OBJ_TARGET, OBJ_TARGET - 1)
    with pytest.raises(TypeError, match="pred must be an integer ndarray"):
        evaluate_instances(OBJ_TARGET.tolist(), OBJ_TARGET)


def _object_rows() -> pd.DataFrame:
    """merged (split 0/1), one missed px (split 1/1), and a case without touching pairs."""
    pred = OBJ_TARGET.copy()
    pred[0, 1, 1] = 0
    lone = (OBJ_TARGET == 3).astype(np.int32)
    return pd.DataFrame(
        [
            evaluate_instances(_merged(), OBJ_TARGET, case="merged"),
            evaluate_instances(pred, OBJ_TARGET, case="miss"),
            evaluate_instances(lone, lone, case="lone"),
        ]
    )


def test_summarize_instances_nan_and_pooled_split():
    s = summarize_instances(_object_rows()).to_dict("records")[0]
    assert s["n_cases"] == 3
    assert s["ap_mean"] == pytest.approx((0.25 + 0.85 + 1.0) / 3) and s["ap_n_nan"] == 0
    # split rate: 0.0, 1.0 and NaN (no touching pair: skipped in the mean, counted)
    assert s["split_rate_mean"] == pytest.approx(0.5) and s["split_rate_n_nan"] == 1
    assert s["split_rate_std"] == pytest.approx(np.std([0.0, 1.0], ddof=1))
    # pooled: (0 + 1 + 0) split of (1 + 1 + 0) pairs
    assert (s["touching_split"], s["touching_pairs"], s["split_rate_pooled"]) == (1, 2, 0.5)
    assert (s["num_pred"], s["num_target"]) == (2 + 3 + 1, 3 + 3 + 1)
    for m in INSTANCE_METRIC_COLUMNS:
        assert {f"{m}_mean", f"{m}_std", f"{m}_n_nan"} <= set(s)


def test_summarize_instances_pooled_differs_from_mean():
    rows = _object_rows().reindex(columns=INSTANCE_COLUMNS)
    rows.loc[1, ["touching_pairs", "touching_split", "split_rate"]] = [9, 9, 1.0]
    s = summarize_instances(rows).to_dict("records")[0]
    assert s["split_rate_mean"] == pytest.approx(0.5)  # every case counts once
    assert s["split_rate_pooled"] == pytest.approx(9 / 10)  # every pair counts once


def test_summarize_instances_errors_and_empty():
    with pytest.raises(TypeError, match="rows must be a pandas DataFrame"):
        summarize_instances([{"case": "a"}])
    with pytest.raises(ValueError, match=r"rows must have the columns .*missing \['ap'\]"):
        summarize_instances(_object_rows().drop(columns="ap"))
    s = summarize_instances(pd.DataFrame(columns=list(INSTANCE_COLUMNS))).to_dict("records")[0]
    assert s["n_cases"] == 0 and math.isnan(s["ap_mean"]) and math.isnan(s["split_rate_pooled"])


def test_write_instance_report(tmp_path):
    from medseg.report import instance_report_paths

    rows = _object_rows()
    written = write_instance_report(rows, tmp_path / "nuclei.csv")
    assert written == instance_report_paths(tmp_path / "nuclei.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei.csv", "nuclei.md"]
    back = pd.read_csv(written[0])
    assert tuple(back.columns) == INSTANCE_COLUMNS
    assert back["case"].tolist() == ["merged", "miss", "lone"]
    assert_allclose(back["ap"], rows["ap"])
    assert back["split_rate"].isna().tolist() == [False, False, True]
    markdown = written[1].read_text(encoding="utf-8")
    assert "# Object segmentation report" in markdown and "## Summary over 3 cases" in markdown
    assert "0.7000 ± 0.3969 (0)" in markdown  # AP: mean of 0.25, 0.85, 1.0; std (ddof 1)
    assert "0.5000 ± 0.7071 (1)" in markdown  # split rate: 0 and 1, one NaN case
    assert "Pooled split rate over all touching pairs: 1 / 2 = 0.5000" in markdown


def test_write_instance_report_refuses_to_overwrite_and_writes_nothing(tmp_path):
    rows = _object_rows()
    existing = tmp_path / "nuclei.md"
    existing.write_text("keep me")
    with pytest.raises(FileExistsError, match="report outputs must not exist.*nuclei.md"):
        write_instance_report(rows, tmp_path / "nuclei.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["nuclei.md"]  # no CSV, no temp file
    assert existing.read_text(encoding="utf-8") == "keep me"
    write_instance_report(rows, tmp_path / "nuclei.csv", overwrite=True)
    assert existing.read_text(encoding="utf-8") != "keep me" and len(list(tmp_path.iterdir())) == 2


def test_write_instance_report_argument_errors(tmp_path):
    rows = _object_rows()
    with pytest.raises(ValueError, match=r"report path must end in \.csv, got .*nuclei\.md"):
        write_instance_report(rows, tmp_path / "nuclei.md")
    with pytest.raises(FileNotFoundError, match="output folder .* must exist"):
        write_instance_report(rows, tmp_path / "missing" / "nuclei.csv")
    with pytest.raises(ValueError, match=r"missing \['split_rate'\]"):
        write_instance_report(rows.drop(columns="split_rate"), tmp_path / "nuclei.csv")
    assert list(tmp_path.iterdir()) == []
