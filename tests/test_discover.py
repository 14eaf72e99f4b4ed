"""Bring your own data: case ids, matching, splits, ``medseg manifest init`` through the CLI,
absolute-path manifests, nnU-Net v2 folders and MSD/MONAI datalists as ``--manifest``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from medseg.cli import main
from medseg.datalists import read_datalist
from medseg.discover import (
    assign_splits,
    case_id,
    find_cases,
    label_names_from_files,
    parse_split_fractions,
)
from medseg.manifest import Case, load_manifest, load_valid_manifest, write_manifest


@pytest.mark.parametrize(
    ("name", "label", "expected"),
    [
        ("IBSR_01_t1.nii.gz", False, "IBSR_01"),
        ("brain_007_0000.nii.gz", False, "brain_007"),
        ("sub-01_T1w.nii", False, "sub-01"),
        ("slice_00.png", False, "slice_00"),
        ("t1.nii.gz", False, "t1"),  # a marker alone is the whole name, not stripped
        ("IBSR_01_labels.nii.gz", True, "IBSR_01"),
        ("brain_007.nii.gz", True, "brain_007"),
        ("case3_t1_seg.nrrd", True, "case3"),
        ("x_MASK.tif", True, "x"),
        ("series_dir", False, "series_dir"),
    ],
)
def test_case_id(name, label, expected):
    assert case_id(name, label=label) == expected


def test_ibsr_folder_matches_every_case_by_id(shared_data):
    found = find_cases(shared_data / "ibsr18")  # labels beside the images, nested folders
    assert [c for c, _, _ in found.cases] == [
        "IBSR_01", "IBSR_03", "IBSR_04", "IBSR_05", "IBSR_07", "IBSR_08", "IBSR_16", "IBSR_18",
    ]  # fmt: skip
    for case, image, label in found.cases:
        assert image.name == f"{case}_t1.nii.gz" and label is not None
        assert label.name == f"{case}_labels.nii.gz"
    assert found.unmatched_labels == [] and found.ambiguous == [] and found.unlabelled == []


def test_unmatched_and_ambiguous_files_are_reported(tmp_path, shared_data):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    em = shared_data / "isbi2012_em"
    for i in (0, 1, 2):
        shutil.copy(em / "images" / f"slice_0{i}.png", images)
    shutil.copy(em / "labels" / "slice_00.png", labels)
    shutil.copy(em / "labels" / "slice_01.png", labels / "slice_01_seg.png")
    shutil.copy(em / "labels" / "slice_01.png", labels / "slice_01.png")  # two labels for 01
    shutil.copy(em / "labels" / "slice_02.png", labels / "slice_09.png")  # no such image
    (images / "slice_00_confidence.png").write_bytes(b"")  # a predict output: never a case
    (images / "notes.txt").write_text("not an image")
    found = find_cases(images, labels)
    assert [(c, lab is not None) for c, _, lab in found.cases] == [
        ("slice_00", True),
        ("slice_02", False),
    ]
    assert found.unlabelled == ["slice_02"]
    assert [p.name for p in found.unmatched_labels] == ["slice_09.png"]
    ((case, paths),) = found.ambiguous
    assert case == "slice_01" and len(paths) == 3
    with pytest.raises(FileNotFoundError, match="must exist, got a missing folder"):
        find_cases(tmp_path / "nope")
    with pytest.raises(ValueError, match="must contain images"):
        find_cases(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_splits_are_seeded_sized_and_leave_training_cases():
    ids = [f"c{i:02d}" for i in range(10)]
    first = assign_splits(ids, {"val": 0.2, "test": 0.1}, seed=0)
    assert first == assign_splits(list(reversed(ids)), {"val": 0.2, "test": 0.1}, seed=0)
    assert sorted(first.values()).count("val") == 2
    assert sorted(first.values()).count("test") == 1
    assert assign_splits(ids, {"val": 0.2}, seed=1) != assign_splits(ids, {"val": 0.2}, seed=0)
    assert list(assign_splits(ids[:3], {"val": 0.01}).values()).count("val") == 1  # at least 1
    assert list(assign_splits(ids, {"val": 3}).values()).count("val") == 3  # a count
    with pytest.raises(ValueError, match="must leave at least one of the 3 labelled"):
        assign_splits(ids[:3], {"val": 2, "test": 1})
    assert parse_split_fractions(["val=0.2", "test=4"]) == {"val": 0.2, "test": 4.0}
    for bad, match in [
        ("val", "must be val=FRACTION or test=FRACTION, got 'val'"),
        ("train=0.5", "got 'train=0.5'"),
        ("val=abc", "must be a fraction in \\(0, 1\\) or a count, got 'abc'"),
        ("val=1.5", "got 1.5"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_split_fractions([bad])
    with pytest.raises(ValueError, match="must leave cases to train on"):
        parse_split_fractions(["val=0.6", "test=0.4"])


def test_label_names_from_files(shared_data):
    ibsr = shared_data / "ibsr18" / "IBSR_01" / "IBSR_01_labels.nii.gz"
    names, fg = label_names_from_files([ibsr])
    assert names == {0: "background", 1: "label_1", 2: "label_2", 3: "label_3"} and fg is None
    em = shared_data / "isbi2012_em" / "labels" / "slice_00.png"
    assert label_names_from_files([em], "binary") == ({0: "background", 1: "foreground"}, 255)
    dsb = next((shared_data / "dsb2018_stage1_test" / "labels").glob("*.png"))
    with pytest.raises(ValueError, match="must hold 0 and one foreground value"):
        label_names_from_files([dsb], "binary")


def test_manifest_init_cli_then_validate_and_train_without_a_data_root(
    tiny_ibsr, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("MEDSEG_DATA_ROOT", raising=False)
    images = tmp_path / "scans"
    images.mkdir()
    for case in ("IBSR_01", "IBSR_04", "IBSR_05"):
        shutil.copy(tiny_ibsr / f"{case}_t1.nii.gz", images)
        shutil.copy(tiny_ibsr / f"{case}_labels.nii.gz", images)
    out = tmp_path / "m.csv"
    args = ["manifest", "init", str(images), "-o", str(out), "--split", "val=1"]
    assert main([*args, "--label-names", "1=CSF,2=GM,3=WM"]) == 0
    text = capsys.readouterr().out
    assert "3 cases: 3 labelled (2 train, 1 val, 0 test), 0 without a label" in text
    table = pd.read_csv(out)
    assert table["split"].value_counts().to_dict() == {"train": 2, "val": 1}
    assert all(Path(p).is_absolute() for p in [*table["image"], *table["label"]])
    sidecar = json.loads(out.with_name("m.labels.json").read_text())
    assert sidecar == {"labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"}}
    # the same split on a second run (seed 0), and no overwrite without --overwrite
    assert main([*args, "--label-names", "1=CSF,2=GM,3=WM"]) == 1
    assert "must not exist, got an existing file; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--label-names", "1=CSF,2=GM,3=WM", "--overwrite"]) == 0
    assert pd.read_csv(out).equals(table)
    # absolute paths: valid and trainable with no data root anywhere
    assert main(["validate", str(out)]) == 0
    assert "3 cases OK" in capsys.readouterr().out
    config = tmp_path / "tiny.json"
    config.write_text(
        json.dumps(
            {
                "model": {"name": "usegnet", "kwargs": {"base_features": 4}},
                "data": {"manifest": str(out)},
                "patches": {"patches_per_epoch": 32, "class_balanced": True},
                "schedule": {"epochs": 1, "batch_size": 16, "val_every": 1},
                "inference": {"batch_size": 256},
                "device": "cpu",
                "out_dir": str(tmp_path / "run"),
            }
        )
    )
    assert main(["train", "-c", str(config), "--quiet"]) == 0
    assert (tmp_path / "run" / "best.pt").is_file()


def test_manifest_init_errors_are_one_line_and_write_nothing(tmp_path, shared_data, capsys):
    out = tmp_path / "m.csv"
    em = shared_data / "isbi2012_em"
    cases = [
        (["--split", "val=2.5"], "--split val must be a fraction in (0, 1) or a count, got 2.5"),
        (["--label-format", "bogus"], "Invalid value for '--label-format'"),
        (["-o", str(tmp_path / "m.txt")], "--output must be a .csv file, got"),
        (["--labels", str(tmp_path / "nope")], "must exist, got a missing folder"),
    ]
    for extra, message in cases:
        code = main(["manifest", "init", str(em / "images"), "-o", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_write_manifest_round_trip_relative_and_absolute(tmp_path, shared_data):
    root = shared_data.resolve()
    inside = Case("a", root / "ibsr18/IBSR_01/IBSR_01_t1.nii.gz", None, "test", {"site": "x"})
    outside = Case("b", tmp_path / "b.nii.gz", tmp_path / "b_seg.nii.gz", "train", {})
    path = tmp_path / "m.csv"
    write_manifest(path, [inside, outside], label_names={0: "bg", 1: "fg"}, data_root=root)
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert rows.loc[0, "image"] == "ibsr18/IBSR_01/IBSR_01_t1.nii.gz"  # under the root
    assert rows.loc[1, "image"] == (tmp_path / "b.nii.gz").as_posix()  # absolute
    assert rows.loc[1, "site"] == "" and rows.loc[0, "site"] == "x"
    loaded = load_manifest(path, data_root=root)
    assert [c.image for c in loaded.cases] == [inside.image, outside.image]
    assert loaded.cases[1].label == outside.label and loaded.label_names == {0: "bg", 1: "fg"}
    with pytest.raises(FileExistsError):
        write_manifest(path, [inside])
    with pytest.raises(ValueError, match="case ids must be unique, got a repeated"):
        write_manifest(tmp_path / "n.csv", [inside, inside])


def test_relative_paths_still_need_a_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSEG_DATA_ROOT", raising=False)
    path = tmp_path / "m.csv"
    path.write_text("case,image,label,split\nc,c.nii.gz,,test\n")
    with pytest.raises(ValueError, match="data_root must be given"):
        load_manifest(path)


def _nnunet_dataset(tiny_ibsr: Path, folder: Path) -> Path:
    """A tiny nnU-Net v2 raw dataset: 2 training cases, 1 test case."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    for case in ("IBSR_01", "IBSR_05"):
        shutil.copy(tiny_ibsr / f"{case}_t1.nii.gz", folder / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copy(tiny_ibsr / f"{case}_labels.nii.gz", folder / "labelsTr" / f"{case}.nii.gz")
    shutil.copy(tiny_ibsr / "IBSR_04_t1.nii.gz", folder / "imagesTs" / "IBSR_04_0000.nii.gz")
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T1"},
                "labels": {"background": 0, "CSF": 1, "GM": 2, "WM": 3},
                "numTraining": 2,
                "file_ending": ".nii.gz",
            }
        )
    )
    return folder


def test_nnunet_v2_folder_is_a_manifest(tiny_ibsr, tmp_path, capsys):
    folder = _nnunet_dataset(tiny_ibsr, tmp_path / "Dataset001_Tiny")
    manifest = load_valid_manifest(folder)
    assert [(c.case, c.split, c.label is not None) for c in manifest.cases] == [
        ("IBSR_01", "train", True),
        ("IBSR_05", "train", True),
        ("IBSR_04", "test", False),
    ]
    assert manifest.cases[0].image == (folder / "imagesTr" / "IBSR_01_0000.nii.gz").resolve()
    assert manifest.label_names == {0: "background", 1: "CSF", 2: "GM", 3: "WM"}
    # nnU-Net's splits_final.json (fold 0) marks the validation cases
    (folder / "splits_final.json").write_text(
        json.dumps([{"train": ["IBSR_01"], "val": ["IBSR_05"]}])
    )
    assert load_manifest(folder / "dataset.json").split("val")[0].case == "IBSR_05"
    assert main(["validate", str(folder)]) == 0
    assert "3 cases OK" in capsys.readouterr().out
    # problems are listed together, one line through the CLI
    data = json.loads((folder / "dataset.json").read_text())
    data.update(channel_names={"0": "T1", "1": "T2"}, numTraining=5)
    (folder / "dataset.json").write_text(json.dumps(data))
    assert main(["validate", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "channel_names must hold one channel" in err and "numTraining is 5" in err
    assert len(err.strip().splitlines()) == 1


def test_msd_monai_datalist_is_a_manifest(tiny_ibsr, tmp_path):
    folder = tmp_path / "Task01"
    folder.mkdir()
    for name in ("IBSR_01_t1", "IBSR_01_labels", "IBSR_04_t1", "IBSR_04_labels", "IBSR_05_t1"):
        shutil.copy(tiny_ibsr / f"{name}.nii.gz", folder)
    datalist = {
        "labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"},
        "training": [
            {"image": "./IBSR_01_t1.nii.gz", "label": "./IBSR_01_labels.nii.gz", "fold": 0}
        ],
        "validation": [{"image": "IBSR_04_t1.nii.gz", "label": "IBSR_04_labels.nii.gz"}],
        "test": [str(folder / "IBSR_05_t1.nii.gz")],  # bare and absolute
    }
    (folder / "datalist.json").write_text(json.dumps(datalist))
    manifest = load_valid_manifest(folder / "datalist.json")
    assert [(c.case, c.split) for c in manifest.cases] == [
        ("IBSR_01", "train"),
        ("IBSR_04", "val"),
        ("IBSR_05", "test"),
    ]
    assert manifest.cases[0].metadata == {"fold": "0"}
    assert manifest.cases[2].metadata == {"fold": ""}
    assert manifest.cases[1].label == (folder / "IBSR_04_labels.nii.gz").resolve()
    broken = read_datalist_problems(folder, {"training": [{"label": "x"}], "labels": {"a": 1}})
    assert "training[0] must be a path or an object with 'image'" in broken[1]
    assert "labels key 'a' must be a value 0..255" in broken[0]


def read_datalist_problems(folder: Path, data: dict) -> list[str]:
    path = folder / "broken.json"
    path.write_text(json.dumps(data))
    return read_datalist(path).problems


def test_input_files_of_a_folder_as_predict_reads_it(shared_data, tmp_path):
    from medseg.discover import input_files

    folder = tmp_path / "scans"
    (folder / "series").mkdir(parents=True)
    (folder / "nested").mkdir()
    for i in (100, 101):  # a DICOM series folder is one input
        shutil.copy(shared_data / "studyforrest_t1_dicom" / f"N2D_{i:04d}.dcm", folder / "series")
    for name in ("b_t1.nii.gz", "a_t1.nii.gz", "a_t1_confidence.nii.gz", ".hidden.nii.gz"):
        (folder / name).write_bytes(b"")
    (folder / "nested" / "c_t1.nii.gz").write_bytes(b"")  # subfolders are not searched
    assert [p.name for p in input_files(folder)] == ["a_t1.nii.gz", "b_t1.nii.gz", "series"]
    assert input_files(folder / "series") == [folder / "series"]  # a series given itself
    with pytest.raises(FileNotFoundError, match="must exist, got nothing there"):
        input_files(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="must contain images"):
        input_files(_empty(tmp_path))
