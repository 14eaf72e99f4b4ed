"""Tests for medseg.manifest: schema checks, file validation, data root, the IBSR manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg import io
from medseg.manifest import (
    DATA_ROOT_ENV,
    Case,
    Manifest,
    load_label_names,
    load_manifest,
    load_valid_manifest,
    require_valid,
    validate_manifest,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IBSR_MANIFEST = REPO / "data_manifests" / "ibsr18.csv"

LABELS = {"labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"}}
HEADER = "case,image,label,split,site\n"


def _write_manifest(folder: Path, rows: list[str], labels: dict | None = LABELS) -> Path:
    path = folder / "toy.csv"
    path.write_text(HEADER + "".join(row + "\n" for row in rows))
    if labels is not None:
        (folder / "toy.labels.json").write_text(json.dumps(labels))
    return path


def _write_case(
    root: Path,
    name: str,
    *,
    label_shape: tuple[int, int, int] = (5, 6, 7),
    label_value: int = 3,
    label_spacing: tuple[float, float, float] = (2.0, 1.0, 1.0),
) -> None:
    """Write ``<name>_t1.nii.gz`` (1, 5, 6, 7) and ``<name>_seg.nii.gz`` under ``root``."""
    image = np.arange(5 * 6 * 7, dtype=np.float32).reshape(1, 5, 6, 7)
    io.write_image(root / f"{name}_t1.nii.gz", image, io.Geometry.from_spacing((2.0, 1.0, 1.0)))
    label = np.zeros(label_shape, np.uint8)
    label[1, 2, 3] = label_value
    io.write_label(root / f"{name}_seg.nii.gz", label, io.Geometry.from_spacing(label_spacing))


def _row(name: str, split: str = "train", site: str = "A") -> str:
    return f"{name},{name}_t1.nii.gz,{name}_seg.nii.gz,{split},{site}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data_root = tmp_path / "data"
    data_root.mkdir()
    return data_root


# --------------------------------------------------------------------------------------
# Loading


def test_load_synthetic_manifest(tmp_path: Path, root: Path) -> None:
    _write_case(root, "c1")
    path = _write_manifest(tmp_path, [_row("c1"), "c2,c2_t1.nii.gz,,test,B"])

    manifest = load_manifest(path, data_root=root)

    assert [case.case for case in manifest.cases] == ["c1", "c2"]
    first, second = manifest.cases
    assert first == Case(
        "c1", root / "c1_t1.nii.gz", root / "c1_seg.nii.gz", "train", {"site": "A"}
    )
    assert second.label is None and second.metadata == {"site": "B"}
    assert manifest.split("test") == (second,)
    assert manifest.split("val") == ()
    assert manifest.label_names == {0: "background", 1: "CSF", 2: "GM", 3: "WM"}
    assert manifest.data_root == root.resolve()


def test_split_name_must_be_known(tmp_path: Path, root: Path) -> None:
    manifest = load_manifest(_write_manifest(tmp_path, [_row("c1")]), data_root=root)
    with pytest.raises(ValueError, match="split must be one of train, val, test, got 'training'"):
        manifest.split("training")


def test_schema_problems_are_reported_together(tmp_path: Path, root: Path) -> None:
    rows = [
        _row("c1"),
        _row("c1", split="val"),  # duplicate id
        "c2,/abs/c2_t1.nii.gz,c2_seg.nii.gz,train,A",  # absolute image
        "c3,c3_t1.nii.gz,C:\\data\\c3_seg.nii.gz,train,A",  # absolute (Windows) label
        "c4,,c4_seg.nii.gz,train,A",  # empty image
        "c5,c5_t1.nii.gz,,training,A",  # unknown split
        ",c6_t1.nii.gz,,train,A",  # empty case id
        "c7,c7_t1.nii.gz,,train",  # too few fields
    ]
    path = _write_manifest(tmp_path, rows)

    with pytest.raises(ValueError) as excinfo:
        load_manifest(path, data_root=root)

    message = str(excinfo.value)
    first_line, *problem_lines = message.splitlines()
    assert "toy.csv' must follow data_manifests/README.md" in first_line
    assert "got 7 problem(s):" in first_line
    assert len(problem_lines) == 7
    expected = [
        "line 3: case 'c1' must be unique, got a duplicate of line 2",
        "line 4: image '/abs/c2_t1.nii.gz' must be relative to the data root, got an absolute",
        "line 5: label 'C:\\\\data\\\\c3_seg.nii.gz' must be relative to the data root",
        "line 6: image must be a path, got an empty field",
        "line 7: split must be one of train, val, test, got 'training'",
        "line 8: case must be a non-empty id, got an empty field",
        "line 9: must have 5 fields like the header, got 4",
    ]
    for text in expected:
        assert text in message, text


def test_missing_columns(tmp_path: Path, root: Path) -> None:
    path = tmp_path / "toy.csv"
    path.write_text("case,image,image\nc1,a.nii.gz,b.nii.gz\n")

    with pytest.raises(ValueError) as excinfo:
        load_manifest(path, data_root=root)

    message = str(excinfo.value)
    assert "got 2 problem(s)" in message
    assert "(missing: label, split)" in message
    assert "header columns must be unique, got 'image'" in message


def test_empty_manifest(tmp_path: Path, root: Path) -> None:
    path = tmp_path / "toy.csv"
    path.write_text(HEADER)
    with pytest.raises(ValueError, match="must list at least one case, got none"):
        load_manifest(path, data_root=root)


def test_missing_manifest_file(tmp_path: Path, root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest '.*nope.csv' must exist"):
        load_manifest(tmp_path / "nope.csv", data_root=root)


# --------------------------------------------------------------------------------------
# Data root


def test_data_root_from_environment(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_case(root, "c1")
    path = _write_manifest(tmp_path, [_row("c1")])
    monkeypatch.setenv(DATA_ROOT_ENV, str(root))

    manifest = load_manifest(path)

    assert manifest.cases[0].image == root.resolve() / "c1_t1.nii.gz"
    assert validate_manifest(manifest) == []


def test_argument_beats_environment(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "elsewhere"))
    manifest = load_manifest(_write_manifest(tmp_path, [_row("c1")]), data_root=root)
    assert manifest.data_root == root.resolve()


def test_missing_data_root_says_how_to_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    path = _write_manifest(tmp_path, [_row("c1")])

    with pytest.raises(ValueError, match=r"data_root must be given.*set MEDSEG_DATA_ROOT"):
        load_manifest(path)


def test_data_root_that_does_not_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "gone"))
    path = _write_manifest(tmp_path, [_row("c1")])

    with pytest.raises(FileNotFoundError, match=r"gone' \(from \$MEDSEG_DATA_ROOT\) must be"):
        load_manifest(path)


# --------------------------------------------------------------------------------------
# File validation


def test_file_problems_are_reported_together(tmp_path: Path, root: Path) -> None:
    _write_case(root, "ok")
    _write_case(root, "shape", label_shape=(5, 6, 8))
    _write_case(root, "spacing", label_spacing=(2.0, 1.0, 1.2))
    _write_case(root, "seven", label_value=7)
    (root / "corrupt_t1.nii.gz").write_bytes(b"not a nifti file at all")
    rows = [_row(name) for name in ("ok", "shape", "spacing", "seven", "missing", "corrupt")]
    manifest = load_manifest(_write_manifest(tmp_path, rows), data_root=root)

    problems = validate_manifest(manifest)

    assert len(problems) == 7, problems  # the corrupt case also lacks its label file
    text = "\n".join(problems)
    assert "case 'shape': " in text and "shape (Z, Y, X) (5, 6, 8) vs (5, 6, 7)" in text
    assert "case 'spacing': " in text and "spacing_mm (2, 1, 1.2) vs (2, 1, 1)" in text
    assert (
        "case 'seven': label 'seven_seg.nii.gz' must hold only the values declared in "
        "toy.labels.json (0, 1, 2, 3), got 7 (1 voxel)"
    ) in text
    assert "case 'missing': image 'missing_t1.nii.gz' must exist under the data root" in text
    assert "case 'missing': label 'missing_seg.nii.gz' must exist" in text
    assert "corrupt_t1.nii.gz' must be a readable NIfTI file" in text
    assert "case 'corrupt': label 'corrupt_seg.nii.gz' must exist" in text
    assert not any(problem.startswith("case 'ok'") for problem in problems)
    with pytest.raises(ValueError, match=r"got 7 problem\(s\):\n  - case 'shape'"):
        require_valid(manifest)


def test_header_only_validation_skips_label_values(tmp_path: Path, root: Path) -> None:
    _write_case(root, "seven", label_value=7)
    manifest = load_manifest(_write_manifest(tmp_path, [_row("seven")]), data_root=root)

    assert validate_manifest(manifest, check_labels=False) == []
    assert len(validate_manifest(manifest)) == 1


def test_label_values_need_the_sidecar(tmp_path: Path, root: Path) -> None:
    _write_case(root, "c1")
    manifest = load_manifest(_write_manifest(tmp_path, [_row("c1")], labels=None), data_root=root)

    assert manifest.label_names == {}
    assert validate_manifest(manifest, check_labels=False) == []
    (problem,) = validate_manifest(manifest)
    assert "toy.labels.json' must exist to check label values" in problem


def test_one_error_lists_schema_and_file_problems(tmp_path: Path, root: Path) -> None:
    """Missing file + shape mismatch + undeclared 7 + absolute path + duplicate case."""
    _write_case(root, "ok")
    _write_case(root, "shape", label_shape=(4, 6, 7))
    _write_case(root, "seven", label_value=7)
    rows = [
        _row("ok"),
        _row("shape"),
        _row("seven"),
        _row("missing", split="val"),
        f"abs,{root / 'ok_t1.nii.gz'},ok_seg.nii.gz,test,A",
        _row("ok", split="val"),
    ]
    path = _write_manifest(tmp_path, rows)

    with pytest.raises(ValueError) as excinfo:
        load_valid_manifest(path, data_root=root)

    message = str(excinfo.value)
    assert message.count("\n  - ") == 6
    assert "got 6 problem(s)" in message.splitlines()[0]
    for text in [
        "line 6: image '/",  # absolute path, reported before the file checks
        "line 7: case 'ok' must be unique, got a duplicate of line 2",
        "case 'shape': ",
        "case 'seven': label 'seven_seg.nii.gz' must hold only the values declared",
        "case 'missing': image 'missing_t1.nii.gz' must exist",
        "case 'missing': label 'missing_seg.nii.gz' must exist",
    ]:
        assert text in message, text


# --------------------------------------------------------------------------------------
# Label names


def test_load_label_names(tmp_path: Path) -> None:
    path = tmp_path / "x.labels.json"
    path.write_text(json.dumps({"labels": {"3": "WM", "0": "background"}}))
    assert load_label_names(path) == {0: "background", 3: "WM"}
    assert list(load_label_names(path)) == [0, 3]


def test_bad_label_names_list_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "x.labels.json"
    path.write_text(json.dumps({"labels": {"0": "bg", "256": "big", "x": "y", "2": "", "3": "bg"}}))

    with pytest.raises(ValueError) as excinfo:
        load_label_names(path)

    message = str(excinfo.value)
    assert "got 4 problem(s)" in message
    assert "key '256' must be a label value 0..255" in message
    assert "key 'x' must be a label value 0..255" in message
    assert "name of label 2 must be a non-empty string, got ''" in message
    assert "name 'bg' must name one label, got several" in message


def test_label_names_not_json(tmp_path: Path) -> None:
    path = tmp_path / "x.labels.json"
    path.write_text("{labels: 0}")
    with pytest.raises(ValueError, match=r"x.labels.json' must be valid JSON .*line 1 column 2"):
        load_label_names(path)
    path.write_text('{"0": "background"}')
    with pytest.raises(ValueError, match=r"must be an object like .*got \{\"0\": \"background\"\}"):
        load_label_names(path)


def test_bad_sidecar_is_a_manifest_problem(tmp_path: Path, root: Path) -> None:
    path = _write_manifest(tmp_path, [_row("c1", split="nope")], labels={"labels": {"0": ""}})

    with pytest.raises(ValueError) as excinfo:
        load_manifest(path, data_root=root)

    assert "got 2 problem(s)" in str(excinfo.value)
    assert "name of label 0 must be a non-empty string" in str(excinfo.value)


# --------------------------------------------------------------------------------------
# The real IBSR-18 manifest (../shared/data); skipped when absent


@pytest.fixture
def ibsr_manifest() -> Manifest:
    if not (DATA / "ibsr18").is_dir():
        pytest.skip(f"real data not found at {DATA / 'ibsr18'}")
    return load_manifest(IBSR_MANIFEST, data_root=DATA)


def test_ibsr_manifest_loads(ibsr_manifest: Manifest) -> None:
    def ids(split: str) -> list[str]:
        return [case.case for case in ibsr_manifest.split(split)]

    assert ids("train") == ["IBSR_01", "IBSR_03", "IBSR_05", "IBSR_07", "IBSR_16"]
    assert ids("val") == ["IBSR_04", "IBSR_08", "IBSR_18"]
    assert ids("test") == []
    assert ibsr_manifest.label_names == {0: "background", 1: "CSF", 2: "GM", 3: "WM"}
    for case in ibsr_manifest.cases:
        assert case.image == DATA.resolve() / "ibsr18" / case.case / f"{case.case}_t1.nii.gz"
        assert set(case.metadata) == {"spacing_group"}


def test_ibsr_manifest_validates_clean(ibsr_manifest: Manifest) -> None:
    assert validate_manifest(ibsr_manifest) == []
    require_valid(ibsr_manifest)


def test_ibsr_spacing_groups_match_headers(ibsr_manifest: Manifest) -> None:
    groups = {}
    for case in ibsr_manifest.cases:
        spacing_mm = io.read_volume_info(case.image).geometry.spacing_mm
        assert spacing_mm[1] == pytest.approx(1.5)
        assert spacing_mm[2] == pytest.approx(float(case.metadata["spacing_group"]), abs=1e-6)
        groups.setdefault(case.metadata["spacing_group"], []).append(case.split)
    assert all(splits.count("val") == 1 for splits in groups.values())


def test_manifest_must_be_utf8(tmp_path: Path, root: Path) -> None:
    path = tmp_path / "toy.csv"
    path.write_bytes("case,image,label,split\nc\xe9,c.png,,train\n".encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"toy.csv' must be UTF-8 text, got byte 0xe9 at offset 24"
    ):
        load_manifest(path, data_root=root)
