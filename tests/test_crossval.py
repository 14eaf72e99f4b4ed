"""medseg crossval: fold assignment, no leakage, reports against a direct Dice."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medseg import crossval as cv
from medseg.cli import main
from medseg.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]


def test_ibsr_folds_span_the_spacing_groups(shared_data):
    manifest = load_manifest(REPO / "data_manifests" / "ibsr18.csv", data_root=shared_data)
    cases = list(manifest.cases)
    fold_of = cv.assign_folds(cases, 4, "spacing_group")
    assert sorted(fold_of) == sorted(c.case for c in cases)  # every case exactly once
    sizes = np.bincount(list(fold_of.values()))
    assert sizes.tolist() == [2, 2, 2, 2]
    # groups: 0.8370536 (16, 18), 0.9375 (01, 03, 04, 05), 1.0 (07, 08), dealt in that order
    assert fold_of == {
        "IBSR_16": 0, "IBSR_18": 1, "IBSR_01": 2, "IBSR_03": 3,
        "IBSR_04": 0, "IBSR_05": 1, "IBSR_07": 2, "IBSR_08": 3,
    }  # fmt: skip
    with pytest.raises(ValueError, match="--folds must be between 2 and the number of labelled"):
        cv.assign_folds(cases, 9, None)


def test_em_blocks_are_contiguous_and_nested_splits_never_leak(shared_data):
    manifest = load_manifest(REPO / "data_manifests" / "isbi2012_em.csv", data_root=shared_data)
    cases = list(manifest.cases)
    fold_of = cv.assign_blocks(cases, 5)
    assert [fold_of[f"slice_{i:02d}"] for i in range(15)] == [i // 3 for i in range(15)]
    assert list(cv.assign_blocks(cases[:7], 3).values()) == [0, 0, 0, 1, 1, 2, 2]
    tested = []
    for fold in range(5):
        splits = cv.split_of(fold_of, fold, 5, True)
        test = {c for c, s in splits.items() if s == "test"}
        val = {c for c, s in splits.items() if s == "val"}
        train = {c for c, s in splits.items() if s == "train"}
        assert test == {c for c, f in fold_of.items() if f == fold}
        assert val == {c for c, f in fold_of.items() if f == (fold - 1) % 5}
        assert len(train) == 9 and not (train & test) and not (val & test)
        tested += sorted(test)
    assert sorted(tested) == sorted(fold_of)  # every section scored exactly once
    plain = cv.split_of(fold_of, 2, 5, False)  # without nesting: the fold is the val split
    assert {c for c, s in plain.items() if s == "val"} == {"slice_06", "slice_07", "slice_08"}
    with pytest.raises(ValueError, match="--folds must be between 2 and the number of labelled"):
        cv.assign_blocks(cases, 16)


TINY = {
    "model": {"name": "usegnet", "kwargs": {"base_features": 4}},
    "patches": {"patches_per_epoch": 64, "class_balanced": True},
    "schedule": {"epochs": 2, "batch_size": 32, "val_every": 1},
    "inference": {"batch_size": 256},
    "device": "cpu",
}


@pytest.fixture()
def config(tiny_ibsr, tmp_path) -> Path:
    """A 2-epoch config on the 3 tiny IBSR crops (its manifest's splits are ignored)."""
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**TINY, "data": {"manifest": str(tiny_ibsr / "tiny.csv")}}))
    return path


def _dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    p, r = pred == label, ref == label
    return 2.0 * float(np.sum(p & r)) / float(p.sum() + r.sum())


def test_crossval_end_to_end(tiny_ibsr, config, tmp_path, capsys):
    out = tmp_path / "cv"
    args = ["crossval", "-c", str(config), "--folds", "3", "--out", str(out)]
    args += ["--data-root", str(tiny_ibsr), "--quiet"]
    assert main(args) == 0
    # no spacing_group column: dealt by case id; the manifest's own splits are ignored
    expected = {"IBSR_01": 0, "IBSR_04": 1, "IBSR_05": 2}
    report = pd.read_csv(out / "cv_report.csv")
    assert sorted(report["case"].unique()) == sorted(expected)
    assert len(report) == 3 * 3  # 3 cases x 3 tissues, each case from exactly one fold
    for case, fold in expected.items():
        folder = out / f"fold_{fold}"
        split = pd.read_csv(folder / "manifest.csv").set_index("case")["split"]
        assert split.to_dict() == {c: ("val" if c == case else "train") for c in expected}
        config = json.loads((folder / "run" / "config.json").read_text())
        assert config["schedule"]["val_every"] == 2  # validated once, after the last epoch
        assert pd.read_csv(folder / "run" / "log.csv")["val_mean_dice"].notna().sum() == 1
        # the reported Dice is the Dice of the fold's prediction file, computed here directly
        pred = np.asarray(nib.load(folder / "run" / "val_model" / f"{case}.nii.gz").dataobj)
        ref = np.asarray(nib.load(tiny_ibsr / f"{case}_labels.nii.gz").dataobj)
        rows = report[report["case"] == case].set_index("label")
        assert (rows["fold"] == fold).all()
        for label in (1, 2, 3):
            assert rows.loc[label, "dice"] == pytest.approx(_dice(pred, ref, label))
    summary = (out / "cv_summary.md").read_text()
    assert "3 of 3 cases in 3 folds" in summary
    gm = report[report["tissue"] == "GM"]["dice"].mean()
    assert f"{gm:.4f}" in summary  # the mean row

    # a rerun keeps every fold
    capsys.readouterr()
    mtime = (out / "fold_1" / "run" / "best.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert capsys.readouterr().err.count("kept (its report exists)") == 3
    assert (out / "fold_1" / "run" / "best.pt").stat().st_mtime_ns == mtime


def test_crossval_bad_arguments_one_line_and_nothing_written(tiny_ibsr, config, tmp_path, capsys):
    out = tmp_path / "cv"
    base = ["crossval", "-c", str(config), "--out", str(out), "--data-root", str(tiny_ibsr)]
    assert main([*base, "--folds", "4"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "Error: --folds must be between 2 and the number of labelled cases (3), got 4"
    assert main([*base, "--set", "schedule.epochs=abc"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "schedule.epochs must be an integer, got 'abc'" in err
    assert not out.exists()


def test_crossval_nested_tunes_on_the_inner_fold_and_scores_only_the_test_fold(
    tiny_ibsr, config, tmp_path
):
    out = tmp_path / "cv"
    args = ["crossval", "-c", str(config), "--folds", "3", "--out", str(out), "--quiet"]
    args += ["--data-root", str(tiny_ibsr), "--inner-val", "--tune", "--no-tune-crf"]
    assert main(args) == 0
    order = ["IBSR_01", "IBSR_04", "IBSR_05"]  # round-robin by case id: fold i is order[i]
    report = pd.read_csv(out / "cv_report.csv")
    assert sorted(report["case"].unique()) == order
    for fold, case in enumerate(order):
        folder = out / f"fold_{fold}"
        split = pd.read_csv(folder / "manifest.csv").set_index("case")["split"].to_dict()
        inner = order[(fold - 1) % 3]
        assert split[case] == "test" and split[inner] == "val"
        assert list(split.values()).count("train") == 1
        run = folder / "run"
        assert (run / "tuned.pt").is_file()  # chosen on the inner fold
        config = json.loads((run / "config.json").read_text())
        assert config["schedule"]["val_every"] == 1  # the config's own: chooses on val
        scored = pd.read_csv(run / "manifest_test_model" / "report.csv")
        assert set(scored["case"]) == {case}  # only the test case, never the val one


def test_crossval_a_failing_fold_is_reported_and_the_others_still_run(
    tiny_ibsr, config, tmp_path, capsys, monkeypatch
):
    import medseg.train

    real = medseg.train.train

    def train(resolved, **kwargs):
        if Path(resolved.out_dir).parent.name == "fold_1":
            raise ValueError("manifest 'x.nii.gz' must be readable, got a broken file")
        return real(resolved, **kwargs)

    monkeypatch.setattr(medseg.train, "train", train)
    out = tmp_path / "cv"
    args = ["crossval", "-c", str(config), "--folds", "3", "--out", str(out), "--quiet"]
    assert main([*args, "--data-root", str(tiny_ibsr)]) == 1
    err = capsys.readouterr().err
    assert "fold 1 failed: manifest 'x.nii.gz' must be readable, got a broken file" in err
    report = pd.read_csv(out / "cv_report.csv")
    assert sorted(report["case"].unique()) == ["IBSR_01", "IBSR_05"]  # folds 0 and 2
    assert "2 of 3 cases in 3 folds" in (out / "cv_summary.md").read_text()
