"""Tests for medseg.cohort: tissue statistics, cohort tables and the HTML/Markdown report."""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from medseg.cohort import (
    REPORT_FILES,
    case_table,
    failed_table,
    group_summary,
    order_cases,
    statistic_keys,
    tissue_statistics,
    tiv_keys,
    tiv_statistics,
    write_cohort_report,
)
from medseg.io import Geometry, write_image, write_label
from medseg.report import evaluate_case

NAMES = {1: "CSF", 2: "GM", 3: "WM"}
SPACING = (2.0, 1.0, 0.5)  # mm (z, y, x); one voxel is 1 mm^3 = 0.001 mL

# (Z, Y, X) = (2, 3, 4). Counts: 0 -> 6, CSF (1) -> 3, GM (2) -> 6, WM (3) -> 9.
LABELS = np.array(
    [
        [[0, 1, 1, 2], [2, 2, 3, 3], [3, 3, 3, 0]],  # 10 labelled voxels
        [[0, 0, 0, 0], [2, 2, 2, 1], [3, 3, 3, 3]],  # 8 labelled voxels
    ],
    dtype=np.uint8,
)


# ---------------------------------------------------------------------------
# tissue_statistics
# ---------------------------------------------------------------------------


def test_tissue_statistics_hand_computed():
    stats = tissue_statistics(LABELS, spacing_mm=SPACING, label_names=NAMES)
    assert list(stats) == statistic_keys(NAMES)
    expected = {
        "CSF_ml": 3 * 0.001,
        "GM_ml": 6 * 0.001,
        "WM_ml": 9 * 0.001,
        "brain_ml": (6 + 9) * 0.001,
        "icv_ml": (3 + 6 + 9) * 0.001,
        "gm_fraction": 6 / 18,
    }
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-12), key
    assert math.isnan(stats["mean_agreement"])  # no confidence map
    assert all(isinstance(v, float) for v in stats.values())


def test_tissue_statistics_mean_agreement_over_labelled_voxels_only():
    confidence = np.zeros(LABELS.shape, dtype=np.float32)  # background: 0, must not count
    confidence[0][LABELS[0] != 0] = 1.0  # 10 voxels
    confidence[1][LABELS[1] != 0] = 0.5  # 8 voxels
    stats = tissue_statistics(LABELS, spacing_mm=SPACING, label_names=NAMES, confidence=confidence)
    assert stats["mean_agreement"] == pytest.approx((10 * 1.0 + 8 * 0.5) / 18)
    assert stats["GM_ml"] == pytest.approx(0.006)  # the confidence changes no volume


def test_tissue_statistics_spelled_names_and_background_entry():
    names = {0: "background", 1: "cerebrospinal fluid", 2: "Gray_Matter", 3: "white-matter"}
    stats = tissue_statistics(LABELS, spacing_mm=SPACING, label_names=names)
    assert "background_ml" not in stats
    assert stats["Gray_Matter_ml"] == pytest.approx(0.006)
    assert stats["brain_ml"] == pytest.approx(0.015)
    assert stats["gm_fraction"] == pytest.approx(1 / 3)


def test_tissue_statistics_absent_tissue_names_give_nan():
    names = {1: "ventricle", 2: "grey matter", 3: "lesion"}  # no WM, no CSF
    stats = tissue_statistics(LABELS, spacing_mm=SPACING, label_names=names)
    assert list(stats) == [
        "ventricle_ml",
        "grey matter_ml",
        "lesion_ml",
        "brain_ml",
        "icv_ml",
        "gm_fraction",
        "mean_agreement",
    ]
    assert stats["lesion_ml"] == pytest.approx(0.009)
    assert stats["icv_ml"] == pytest.approx(0.018)  # every non-background label
    assert math.isnan(stats["brain_ml"]) and math.isnan(stats["gm_fraction"])


def test_tissue_statistics_empty_label_map():
    labels = np.zeros((1, 2, 3), dtype=np.uint8)
    stats = tissue_statistics(
        labels,
        spacing_mm=(1, 1, 1),
        label_names=NAMES,
        confidence=np.ones((1, 2, 3), np.float32),
    )
    assert stats["icv_ml"] == 0.0 and stats["brain_ml"] == 0.0
    assert math.isnan(stats["gm_fraction"])  # 0 / 0
    assert math.isnan(stats["mean_agreement"])  # no labelled voxel


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"labels": LABELS.astype(np.float32)}, TypeError, "labels must be an integer ndarray"),
        ({"labels": LABELS.tolist()}, TypeError, "labels must be an integer ndarray"),
        ({"labels": LABELS[0]}, ValueError, r"labels must be a \(Z, Y, X\) label map"),
        ({"labels": LABELS.astype(np.int8) - 1}, ValueError, "labels must be >= 0"),
        ({"labels": LABELS * 2}, ValueError, r"unknown label value\(s\) \[4, 6\]"),
        ({"spacing_mm": (1.0, 1.0)}, ValueError, "spacing_mm must be 3 positive"),
        ({"spacing_mm": (1.0, 0.0, 1.0)}, ValueError, "spacing_mm must be 3 positive"),
        ({"label_names": "1=CSF"}, TypeError, "label_names must be a dict"),
        ({"label_names": {1: "GM", 2: "grey matter"}}, ValueError, "must name GM once"),
        ({"label_names": {1: "brain", 2: "GM"}}, ValueError, "reserved"),
        ({"confidence": np.ones((2, 3), np.float32)}, ValueError, "confidence must have the shape"),
        ({"confidence": np.ones(LABELS.shape, int)}, TypeError, "confidence must be a float"),
        ({"confidence": np.full(LABELS.shape, 1.5)}, ValueError, r"confidence must be in \[0, 1\]"),
        ({"confidence": np.full(LABELS.shape, np.nan)}, ValueError, r"must be in \[0, 1\]"),
    ],
)
def test_tissue_statistics_errors(kwargs, error, match):
    args = {"labels": LABELS, "spacing_mm": SPACING, "label_names": NAMES, **kwargs}
    labels = args.pop("labels")
    with pytest.raises(error, match=match):
        tissue_statistics(labels, **args)


def test_tiv_statistics_hand_computed():
    mask = np.zeros(LABELS.shape, dtype=np.uint8)
    mask[0] = 1  # 12 voxels: 12 mm^3; labels there: CSF 2, GM 3, WM 5
    stats = tiv_statistics(LABELS, mask, spacing_mm=SPACING, label_names=NAMES)
    assert list(stats) == tiv_keys(NAMES) == [
        "tiv_ml", "CSF_fraction_of_tiv", "GM_fraction_of_tiv", "WM_fraction_of_tiv"
    ]  # fmt: skip
    assert stats["tiv_ml"] == pytest.approx(12 * 0.001, rel=1e-12)
    # every voxel of a tissue counts, also those outside the mask (CSF 3, GM 6, WM 9)
    assert stats["CSF_fraction_of_tiv"] == pytest.approx(3 / 12, rel=1e-12)
    assert stats["GM_fraction_of_tiv"] == pytest.approx(6 / 12, rel=1e-12)
    assert stats["WM_fraction_of_tiv"] == pytest.approx(9 / 12, rel=1e-12)
    same = tiv_statistics(LABELS, mask.astype(bool), spacing_mm=SPACING, label_names=NAMES)
    assert same == stats
    empty = tiv_statistics(LABELS, 0 * mask, spacing_mm=SPACING, label_names=NAMES)
    assert empty["tiv_ml"] == 0.0 and math.isnan(empty["GM_fraction_of_tiv"])


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (np.ones((2, 3), np.uint8), ValueError, r"brain_mask must have the shape of labels"),
        (np.full(LABELS.shape, 2, np.uint8), ValueError, r"only 0 and 1, got value\(s\) \[2\]"),
        (np.ones(LABELS.shape, np.float32), TypeError, "brain_mask must be a bool or integer"),
        (LABELS.tolist(), TypeError, "brain_mask must be a bool or integer"),
    ],
)
def test_tiv_statistics_errors(mask, error, match):
    with pytest.raises(error, match=match):
        tiv_statistics(LABELS, mask, spacing_mm=SPACING, label_names=NAMES)


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def _frame() -> pd.DataFrame:
    """Six cases in sites A and B. Hand ordering, worst first:
    e (failed); b and f tie on weighted Dice 0.8, b has the lower agreement; a (0.9);
    then c and d without a reference, by agreement (0.70 < 0.92).
    """
    return pd.DataFrame(
        {
            "case": ["a", "b", "c", "d", "e", "f"],
            "status": ["ok", "ok", "ok", "ok", "failed", "ok"],
            "error": ["", "", "", "", "boom <b>", ""],
            "stage": ["", "", "", "", "predict", ""],
            "site": ["A", "A", "B", "B", "B", "A"],
            "weighted_dice": [0.9, 0.8, np.nan, np.nan, np.nan, 0.8],
            "dice_GM": [0.91, 0.7, np.nan, np.nan, np.nan, 0.75],
            "GM_ml": [10.0, 14.0, 20.0, 30.0, 1000.0, 12.0],  # e's value must be ignored
            "mean_agreement": [0.95, 0.85, 0.70, 0.92, np.nan, 0.93],
        }
    )


def test_order_cases_worst_first():
    assert order_cases(_frame(), label_names=NAMES)["case"].tolist() == list("ebfacd")


def test_order_cases_by_agreement_without_dice():
    frame = _frame().drop(columns=["weighted_dice", "dice_GM"])
    assert order_cases(frame, label_names=NAMES)["case"].tolist() == list("ecbdfa")


def test_order_cases_ties_by_name_and_defaults():
    frame = pd.DataFrame({"case": ["z", "y"], "status": "ok"})  # no metric column at all
    ordered = order_cases(frame, label_names=NAMES)
    assert ordered["case"].tolist() == ["y", "z"]
    assert ordered["error"].tolist() == ["", ""] and ordered["prediction"].tolist() == ["", ""]


def test_case_table_ok_cases_qc_flags_and_columns():
    table = case_table(_frame(), label_names=NAMES, group_by="site", qc_threshold=0.9)
    assert table["case"].tolist() == list("bfacd")  # failed case e is left out
    assert table.columns.tolist() == [
        "case",
        "site",
        "weighted_dice",
        "dice_GM",
        "CSF_ml",
        "GM_ml",
        "WM_ml",
        "brain_ml",
        "icv_ml",
        "gm_fraction",
        "mean_agreement",
        "qc_flag",
    ]
    assert table["site"].tolist() == ["A", "A", "A", "B", "B"]
    # agreement b 0.85, f 0.93, a 0.95, c 0.70, d 0.92; flagged below 0.9
    assert table["qc_flag"].tolist() == [True, False, False, True, False]
    assert table["WM_ml"].isna().all()  # absent from cases: NaN
    lower = case_table(_frame(), label_names=NAMES, qc_threshold=0.8)
    assert lower["qc_flag"].tolist() == [False, False, False, True, False]


def test_case_table_and_summary_show_tiv_columns_when_present():
    frame = _frame().assign(tiv_ml=[1400.0, 1500.0, np.nan, 1300.0, np.nan, 1600.0])
    frame["GM_fraction_of_tiv"] = frame["GM_ml"] / frame["tiv_ml"]
    table = case_table(frame, label_names=NAMES)
    assert table.columns.tolist()[-5:] == [
        "tiv_ml", "CSF_fraction_of_tiv", "GM_fraction_of_tiv", "WM_fraction_of_tiv", "qc_flag"
    ]  # fmt: skip
    assert table["WM_fraction_of_tiv"].isna().all()  # absent from cases: NaN
    s = group_summary(frame, label_names=NAMES)
    # ok cases a, b, c, d, f: c has no mask (NaN, skipped)
    assert s.loc[0, "tiv_ml_mean"] == pytest.approx((1400 + 1500 + 1300 + 1600) / 4)
    gm = (10 / 1400 + 14 / 1500 + 30 / 1300 + 12 / 1600) / 4
    assert s.loc[0, "GM_fraction_of_tiv_mean"] == pytest.approx(gm)


def test_case_table_nan_agreement_is_not_flagged():
    frame = pd.DataFrame({"case": ["a"], "status": "ok", "mean_agreement": [np.nan]})
    assert case_table(frame, label_names=NAMES)["qc_flag"].tolist() == [False]


def test_group_summary_hand_computed():
    s = group_summary(_frame(), label_names=NAMES, group_by="site", qc_threshold=0.9)
    assert s["group"].tolist() == ["A", "B", "(all)"]
    assert s["n_cases"].tolist() == [3, 3, 6]
    assert s["n_failed"].tolist() == [0, 1, 1]
    assert s["n_flagged"].tolist() == [1, 1, 2]  # b in A, c in B
    # GM_ml over ok cases: A {10, 14, 12}, B {20, 30}; e (failed, 1000) is skipped
    assert_allclose(s["GM_ml_mean"], [12.0, 25.0, (10 + 14 + 12 + 20 + 30) / 5])
    all_var = sum((v - 17.2) ** 2 for v in (10, 14, 12, 20, 30)) / 4
    assert_allclose(s["GM_ml_std"], [2.0, math.sqrt(50.0), math.sqrt(all_var)])
    assert_allclose(s["weighted_dice_mean"], [(0.9 + 0.8 + 0.8) / 3, np.nan, 2.5 / 3])
    assert math.isnan(s.loc[1, "weighted_dice_std"])  # B has no reference at all


def test_group_summary_single_group_and_missing_values():
    one = group_summary(_frame(), label_names=NAMES)
    assert one["group"].tolist() == ["all"] and one["n_cases"].tolist() == [6]
    frame = _frame()
    frame.loc[frame["case"] == "d", "site"] = None
    s = group_summary(frame, label_names=NAMES, group_by="site")
    assert s["group"].tolist() == ["A", "B", "(missing)", "(all)"]
    assert s["n_cases"].tolist() == [3, 2, 1, 6]
    assert_allclose(s["GM_ml_mean"], [12.0, 20.0, 30.0, 17.2])
    assert math.isnan(s.loc[2, "GM_ml_std"])  # one value: no sample std


def test_group_summary_orders_numeric_text_groups_by_value():
    frame = pd.DataFrame(
        {"case": list("abcd"), "status": "ok", "size": ["10", "9", "", "9"], "GM_ml": 1.0}
    )
    s = group_summary(frame, label_names=NAMES, group_by="size")
    assert s["group"].tolist() == ["9", "10", "(missing)", "(all)"]  # "" is missing
    assert s["n_cases"].tolist() == [2, 1, 1, 4]


def test_failed_table():
    table = failed_table(_frame(), label_names=NAMES)
    assert table.values.tolist() == [["e", "predict", "boom <b>"]]
    ok = _frame().query("status == 'ok'")
    assert failed_table(ok, label_names=NAMES).empty


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda f: f.to_dict("records"), TypeError, "cases must be a pandas DataFrame"),
        (lambda f: f.drop(columns="status"), ValueError, r"missing \['status'\]"),
        (lambda f: f.iloc[:0], ValueError, "at least one row"),
        (lambda f: f.assign(case="a"), ValueError, r"must be unique, got duplicates \['a'\]"),
        (lambda f: f.assign(status="done"), ValueError, "'status' must be one of"),
        (lambda f: f.assign(dice_GM="high"), ValueError, "'dice_GM' must be numeric"),
    ],
)
def test_table_input_errors(change, error, match):
    with pytest.raises(error, match=match):
        order_cases(change(_frame()), label_names=NAMES)


def test_table_argument_errors():
    with pytest.raises(ValueError, match="group_by must be a column of cases, got 'sex'.*site"):
        group_summary(_frame(), label_names=NAMES, group_by="sex")
    with pytest.raises(ValueError, match=r"qc_threshold must be a number in \[0, 1\]"):
        case_table(_frame(), label_names=NAMES, qc_threshold=1.5)


# ---------------------------------------------------------------------------
# write_cohort_report
# ---------------------------------------------------------------------------

SHAPE = (5, 12, 14)  # (Z, Y, X)
ERROR = 'image "x.nii.gz" <missing> & a|b'  # characters that HTML and Markdown must escape
NUM_PLOTS = 3  # Dice per tissue, volumes by site, volumes against age
NUM_THUMBNAILS = 4  # 2 worst + 2 best of the 4 successful cases


def _reference() -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[:, 1:11, 1:13] = 2  # GM shell
    label[:, 3:9, 3:11] = 3  # WM
    label[:, 5:7, 6:8] = 1  # CSF
    return label


def _write_cohort(folder: Path) -> pd.DataFrame:
    """Four tiny NIfTI cases whose predictions lose 0..3 GM columns, and one failed case.

    More lost columns -> lower Dice, so the order worst first is c9 (failed), c2, c1, c0,
    then c3 (no reference label, hence no Dice).
    """
    geometry = Geometry.from_spacing(SPACING)
    reference = _reference()
    intensity = np.array([0.0, 30.0, 60.0, 100.0], dtype=np.float32)
    texture = (np.arange(reference.size) % 7).reshape(SHAPE).astype(np.float32)
    rows = []
    for k, (site, age, agreement) in enumerate(
        [("A", 30, 0.97), ("A", 40, 0.93), ("B", 50, 0.88), ("B", 60, 0.80)]
    ):
        case = f"c{k}"
        pred = reference.copy()
        pred[:, 1:11, 1 : 1 + k] = 0
        image = (intensity[reference] + texture)[None]
        write_image(folder / f"{case}_t1.nii.gz", image, geometry)
        write_label(folder / f"{case}_seg.nii.gz", pred, geometry)
        has_label = k != 3
        if has_label:
            write_label(folder / f"{case}_labels.nii.gz", reference, geometry)
        confidence = np.where(pred > 0, agreement, 0.0).astype(np.float32)
        row = {
            "case": case,
            "status": "ok",
            "error": "",
            "stage": "",
            "image": str(folder / f"{case}_t1.nii.gz"),
            "prediction": str(folder / f"{case}_seg.nii.gz"),
            "label": str(folder / f"{case}_labels.nii.gz") if has_label else "",
            "seconds": 1.0,
            "site": site,
            "age": str(age),  # manifest metadata arrive as text
            **tissue_statistics(pred, spacing_mm=SPACING, label_names=NAMES, confidence=confidence),
        }
        if has_label:
            tissue_rows, values = evaluate_case(
                pred, reference, label_names=NAMES, spacing_mm=SPACING, distances=False
            )
            for tissue, dice in zip(tissue_rows["tissue"], tissue_rows["dice"], strict=True):
                row[f"dice_{tissue}"] = dice
            row["weighted_dice"] = values["weighted_dice"]
        rows.append(row)
    rows.append(
        {
            "case": "c9",
            "status": "failed",
            "error": ERROR,
            "stage": "predict",
            "image": str(folder / "c9_t1.nii.gz"),
            "prediction": "",
            "label": "",
            "seconds": 0.5,
            "site": "B",
            "age": "",
        }
    )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    """The synthetic cohort and the folder holding its written report."""
    data = tmp_path_factory.mktemp("cohort_data")
    cases = _write_cohort(data)
    out = tmp_path_factory.mktemp("cohort_report")
    paths = write_cohort_report(
        cases, out, label_names=NAMES, group_by="site", title="Test <cohort>", num_thumbnails=2
    )
    assert paths == [out / name for name in REPORT_FILES]
    return cases, out


def _data_uri_pngs(page: str) -> list[bytes]:
    uris = re.findall(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [base64.b64decode(uri) for uri in uris]


def test_report_files_and_order(cohort):
    cases, out = cohort
    assert all((out / name).is_file() for name in REPORT_FILES)
    written = pd.read_csv(out / "cases.csv", keep_default_na=False)
    assert written["case"].tolist() == ["c9", "c2", "c1", "c0", "c3"]
    assert written["case"].tolist() == order_cases(cases, label_names=NAMES)["case"].tolist()
    flags = dict(zip(written["case"], written["qc_flag"].astype(str), strict=True))
    assert flags == {"c9": "False", "c2": "True", "c1": "False", "c0": "False", "c3": "True"}
    assert list(out.iterdir()) and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_report_html_escapes_and_embeds_pngs(cohort):
    from PIL import Image

    _, out = cohort
    page = (out / "report.html").read_text(encoding="utf-8")
    assert html.escape(ERROR) in page and "<missing>" not in page
    assert "Test &lt;cohort&gt;" in page
    assert "http://" not in page and "https://" not in page  # nothing from the network
    assert page.index("Failed cases") < page.index("Cases, worst first")
    pngs = _data_uri_pngs(page)
    assert len(pngs) == NUM_PLOTS + NUM_THUMBNAILS
    for png in pngs:
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG"
            image.verify()
    assert 'alt="Dice per tissue and group"' in page
    assert page.count('alt="overlay of case') == NUM_THUMBNAILS


def test_report_markdown_tables(cohort):
    _, out = cohort
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "| case" in text and "Failed cases (1)" in text
    assert "a\\|b" in text and "\\<missing>" in text  # one cell; no raw HTML
    assert "LOW AGREEMENT" in text
    assert "TIV" not in text  # no tiv_ml column: no TIV columns or definition


def test_report_shows_tiv_when_given(tmp_path):
    frame = _frame().assign(tiv_ml=[1400.0, 1500.0, np.nan, 1300.0, np.nan, 1600.0])
    write_cohort_report(frame, tmp_path, label_names=NAMES, num_thumbnails=0)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "TIV (mL)" in text and "GM / TIV" in text and "TIV = volume of the brain mask" in text
    assert "1400.0" in text  # case a's TIV, one decimal as every volume
    written = pd.read_csv(tmp_path / "cases.csv").set_index("case")
    assert written.loc["a", "tiv_ml"] == 1400.0 and math.isnan(written.loc["c", "tiv_ml"])


def test_report_refused_without_overwrite_and_nothing_changed(cohort, tmp_path):
    cases, out = cohort
    before = {name: (out / name).read_bytes() for name in REPORT_FILES}
    with pytest.raises(FileExistsError, match="must not exist"):
        write_cohort_report(cases, out, label_names=NAMES, num_thumbnails=0)
    assert {name: (out / name).read_bytes() for name in REPORT_FILES} == before
    # one existing target is enough to refuse; the other two are not created
    (tmp_path / "report.md").write_text("keep")
    with pytest.raises(FileExistsError, match="report.md"):
        write_cohort_report(cases, tmp_path, label_names=NAMES, num_thumbnails=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
    paths = write_cohort_report(
        cases, tmp_path, label_names=NAMES, num_thumbnails=0, overwrite=True
    )
    assert (tmp_path / "report.md").read_text() != "keep" and all(p.is_file() for p in paths)


def test_report_argument_errors(cohort, tmp_path):
    cases, _ = cohort
    with pytest.raises(ValueError, match="group_by must be a column of cases, got 'sex'.*age"):
        write_cohort_report(cases, tmp_path, label_names=NAMES, group_by="sex")
    with pytest.raises(ValueError, match="num_thumbnails must be an int >= 0"):
        write_cohort_report(cases, tmp_path, label_names=NAMES, num_thumbnails=-1)
    with pytest.raises(FileNotFoundError, match="out_dir must be an existing folder"):
        write_cohort_report(cases, tmp_path / "absent", label_names=NAMES)
    assert list(tmp_path.iterdir()) == []


def test_report_unreadable_thumbnail_warns(cohort, tmp_path):
    cases, _ = cohort
    broken = cases.copy()
    broken.loc[broken["case"] == "c2", "prediction"] = str(tmp_path / "gone.nii.gz")
    with pytest.warns(UserWarning, match="thumbnail of case 'c2' skipped"):
        write_cohort_report(broken, tmp_path, label_names=NAMES, num_thumbnails=1)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "thumbnail unavailable" in page and "gone.nii.gz" in page
    # the Dice plot, the volumes-against-age plot and the best case's thumbnail
    assert len(_data_uri_pngs(page)) == 3


# ---------------------------------------------------------------------------
# A real headless browser renders the report
# ---------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_report_renders_in_chromium(cohort, tmp_path):
    from PIL import Image

    if shutil.which(CHROMIUM) is None:
        if os.environ.get("MEDSEG_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"{CHROMIUM} is missing and MEDSEG_REQUIRE_CHROMIUM=1")
        pytest.skip(f"{CHROMIUM} is missing")
    _, out = cohort
    url = (out / "report.html").resolve().as_uri()

    screenshot = tmp_path / "report.png"
    done = _chromium(
        [f"--screenshot={screenshot}", "--window-size=1200,2400", url], tmp_path / "profile1"
    )
    assert screenshot.is_file(), f"no screenshot (rc {done.returncode}): {done.stderr[-2000:]}"
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (2400, 1200)
    assert pixels.std() > 10  # not a blank page
    non_white = np.any(pixels < 200, axis=-1).mean()
    assert non_white > 0.01, f"only {non_white:.2%} of the pixels are not white"
    # some pixels are saturated colours: the plots and overlays, not only black text
    assert (np.ptp(pixels, axis=-1) > 80).mean() > 0.001

    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", url], tmp_path / "profile2")
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, f"no <body> in the dumped DOM (rc {dom.returncode}): {dom.stderr[-2000:]}"
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    assert total and loaded, f"the page's load script did not run: {body.group(0)}"
    assert int(total.group(1)) == NUM_PLOTS + NUM_THUMBNAILS
    assert int(loaded.group(1)) == NUM_PLOTS + NUM_THUMBNAILS
