"""Tests for medseg.manifest: schema checks, file validation, data root, the IBSR manifest."""

from __future__ import annotations

import csv
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
    read_target,
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
        "c2,/abs/c2_t1.nii.gz,c2_seg.nii.gz,train,A",  # absolute image: fine
        "c3,c3_t1.nii.gz,C:\\data\\c3_seg.nii.gz,train,A",  # another system's absolute path
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
    assert "got 6 problem(s):" in first_line
    assert len(problem_lines) == 6
    assert "line 4" not in message
    expected = [
        "line 3: case 'c1' must be unique, got a duplicate of line 2",
        "line 5: label 'C:\\\\data\\\\c3_seg.nii.gz' must be a path on this system, got an",
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
    """Missing files (one by absolute path) + shape mismatch + undeclared 7 + duplicate case."""
    _write_case(root, "ok")
    _write_case(root, "shape", label_shape=(4, 6, 7))
    _write_case(root, "seven", label_value=7)
    rows = [
        _row("ok"),
        _row("shape"),
        _row("seven"),
        _row("missing", split="val"),
        f"abs,{root / 'gone_t1.nii.gz'},ok_seg.nii.gz,test,A",  # absolute: checked as any
        _row("ok", split="val"),
    ]
    path = _write_manifest(tmp_path, rows)

    with pytest.raises(ValueError) as excinfo:
        load_valid_manifest(path, data_root=root)

    message = str(excinfo.value)
    assert message.count("\n  - ") == 6
    assert "got 6 problem(s)" in message.splitlines()[0]
    for text in [
        "case 'abs': image 'gone_t1.nii.gz' must exist",
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


# --------------------------------------------------------------------------------------
# Label formats: "binary" (ISBI 2012) and "instances" (DSB2018, MICCAI 2015)

BINARY = {
    "labels": {"0": "membrane", "1": "cell"},
    "label_format": "binary",
    "foreground_value": 255,
}
INSTANCES = {"labels": {"0": "background", "1": "nucleus"}, "label_format": "instances"}
GRID_2D = io.Geometry.from_spacing((1.0, 1.0, 1.0))


def _write_micro_manifest(folder: Path, names: list[str], sidecar: dict, suffix: str) -> Path:
    """``micro.csv`` listing ``<name>_img<suffix>`` / ``<name>_seg<suffix>`` + its sidecar."""
    path = folder / "micro.csv"
    rows = "".join(f"{n},{n}_img{suffix},{n}_seg{suffix},train\n" for n in names)
    path.write_text("case,image,label,split\n" + rows)
    (folder / "micro.labels.json").write_text(json.dumps(sidecar))
    return path


def _write_micro_case(root: Path, name: str, label: np.ndarray, suffix: str = ".png") -> None:
    """A grey (1, 1, 4, 5) image and ``label`` (1, Y, X) as an instance map (uint16 or int32)."""
    image = np.arange(20, dtype=np.float32).reshape(1, 1, 4, 5)
    io.write_image(root / f"{name}_img{suffix}", image, GRID_2D)
    io.write_instances(root / f"{name}_seg{suffix}", label.astype(np.int32), GRID_2D)


def test_binary_labels_list_stray_values_with_counts(tmp_path: Path, root: Path) -> None:
    cells = np.full((1, 4, 5), 255)
    cells[0, :, 2] = 0  # a membrane column
    stray = cells.copy()
    stray[0, 0, :2] = 7
    stray[0, 3, 4] = 128
    _write_micro_case(root, "ok", cells)
    _write_micro_case(root, "empty", np.zeros((1, 4, 5)))  # all membrane: valid
    _write_micro_case(root, "stray", stray)
    path = _write_micro_manifest(tmp_path, ["ok", "empty", "stray"], BINARY, ".png")
    manifest = load_manifest(path, data_root=root)

    problems = validate_manifest(manifest)

    assert (manifest.label_format, manifest.foreground_value) == ("binary", 255)
    assert problems == [
        "case 'stray': label 'stray_seg.png' must hold only 0 and the foreground value 255 "
        "(label_format 'binary' in micro.labels.json), got 7 (2 voxels), 128 (1 voxel); fix "
        "the label map or use label_format 'classes' or 'instances'"
    ]
    assert validate_manifest(manifest, check_labels=False) == []  # values not read


def test_binary_labels_show_at_most_eight_stray_values(tmp_path: Path, root: Path) -> None:
    _write_micro_case(root, "ramp", np.arange(20).reshape(1, 4, 5) * 10)  # 0, 10, ..., 190
    path = _write_micro_manifest(tmp_path, ["ramp"], BINARY, ".png")

    (problem,) = validate_manifest(load_manifest(path, data_root=root))

    assert "got 10 (1 voxel), 20 (1 voxel)," in problem
    assert "80 (1 voxel) and 11 more value(s); fix" in problem


def test_instances_with_sparse_ids_are_valid(tmp_path: Path, root: Path) -> None:
    sparse = np.zeros((1, 4, 5))
    sparse[0, 0, :2] = 3
    sparse[0, 2:, 3:] = 70000  # above uint16: NIfTI holds it
    _write_micro_case(root, "sparse", sparse, ".nii.gz")
    _write_micro_case(root, "empty", np.zeros((1, 4, 5)), ".nii.gz")  # no nuclei: valid
    path = _write_micro_manifest(tmp_path, ["sparse", "empty"], INSTANCES, ".nii.gz")

    manifest = load_manifest(path, data_root=root)

    assert manifest.label_format == "instances" and manifest.foreground_value is None
    assert validate_manifest(manifest) == []
    # The same files as class maps fail: 70000 is no class value.
    (folder := tmp_path / "as_classes").mkdir()
    classes = {"labels": {"0": "background", "3": "a"}}
    manifest = load_manifest(
        _write_micro_manifest(folder, ["sparse"], classes, ".nii.gz"), data_root=root
    )
    (problem,) = validate_manifest(manifest)
    assert "case 'sparse': label " in problem and "must hold integers in 0..255, got" in problem


@pytest.mark.parametrize("sidecar", [INSTANCES, BINARY], ids=["instances", "binary"])
def test_micro_label_off_the_image_grid(tmp_path: Path, root: Path, sidecar: dict) -> None:
    _write_micro_case(root, "wide", np.zeros((1, 4, 6)))
    path = _write_micro_manifest(tmp_path, ["wide"], sidecar, ".png")

    manifest = load_manifest(path, data_root=root)

    for check_labels in (True, False):
        (problem,) = validate_manifest(manifest, check_labels=check_labels)
        assert problem.startswith("case 'wide': ")
        assert "wide_seg.png' must be on the same voxel grid as" in problem
        assert "shape (Z, Y, X) (1, 4, 6) vs (1, 4, 5)" in problem


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"label_format": "masks"},
            ["label_format must be one of ['classes', 'instances', 'binary'], got 'masks'"],
        ),
        (
            {"label_format": "binary"},
            ["foreground_value must be an integer 1..65535 for label_format 'binary', got None"],
        ),
        (
            {"label_format": "binary", "foreground_value": 0},
            ["foreground_value must be an integer 1..65535 for label_format 'binary', got 0"],
        ),
        (
            {"label_format": "binary", "foreground_value": True},
            ["foreground_value must be an integer 1..65535 for label_format 'binary', got True"],
        ),
        (
            {"label_format": "instances", "foreground_value": 255},
            [
                "foreground_value must be absent unless label_format is 'binary', got 255 with "
                "label_format 'instances'"
            ],
        ),
        (
            {"foreground_value": 255},  # label_format defaults to "classes"
            ["foreground_value must be absent unless label_format is 'binary', got 255"],
        ),
        (
            {"label_format": "bin", "foreground_value": 255},
            ["label_format must be one of", "foreground_value must be absent unless"],
        ),
    ],
)
def test_bad_label_format_in_sidecar(
    tmp_path: Path, root: Path, extra: dict, expected: list[str]
) -> None:
    sidecar = {"labels": {"0": "background", "1": "cell"}, **extra}
    path = tmp_path / "micro.csv"
    path.write_text("case,image,label,split\nc1,c1.png,c1_seg.png,nope\n")
    (tmp_path / "micro.labels.json").write_text(json.dumps(sidecar))

    with pytest.raises(ValueError) as excinfo:
        load_manifest(path, data_root=root)

    message = str(excinfo.value)
    assert f"got {len(expected) + 1} problem(s)" in message  # + the unknown split
    assert "line 2: split must be one of train, val, test, got 'nope'" in message
    for text in expected:
        assert f"label names '{tmp_path / 'micro.labels.json'}': {text}" in message, text


def test_read_target_binary_gives_4_connected_cells(tmp_path: Path) -> None:
    mask = np.array(
        [
            [255, 255, 0, 255, 255],
            [0, 255, 0, 0, 255],
            [255, 0, 255, 0, 0],
            [255, 0, 0, 255, 255],
        ]
    )[None]
    path = io.write_label(tmp_path / "em.png", mask, GRID_2D)

    target = read_target(path, label_format="binary", foreground_value=255)

    # (2, 2) and (3, 3) touch (1, 1) and (2, 2) only diagonally: separate cells.
    expected = [[[1, 1, 0, 2, 2], [0, 1, 0, 0, 2], [3, 0, 4, 0, 0], [3, 0, 0, 5, 5]]]
    assert target.instances is not None and target.instances.dtype == np.int32
    assert target.instances.tolist() == expected
    assert target.classes.dtype == np.uint8
    assert target.classes.tolist() == (mask // 255).tolist()
    assert target.path == path and target.geometry.spacing_mm == (1.0, 1.0, 1.0)


def test_read_target_instances_keeps_file_ids(tmp_path: Path) -> None:
    ids = np.array([[0, 3, 3, 0], [70000, 0, 0, 3]])[None]
    path = io.write_instances(tmp_path / "nuclei.nii.gz", ids, GRID_2D)

    target = read_target(path, label_format="instances")

    assert target.instances is not None and target.instances.dtype == np.int32
    assert target.instances.tolist() == [[[0, 3, 3, 0], [70000, 0, 0, 3]]]
    assert target.classes.dtype == np.uint8
    assert target.classes.tolist() == [[[0, 1, 1, 0], [1, 0, 0, 1]]]


def test_read_target_classes_has_no_instances(tmp_path: Path) -> None:
    label = np.array([[0, 1, 2], [3, 0, 1]], dtype=np.uint8)[None]
    path = io.write_label(tmp_path / "brain.png", label, GRID_2D)

    target = read_target(path)  # label_format="classes"

    assert target.classes.tolist() == [[[0, 1, 2], [3, 0, 1]]]
    assert target.instances is None


def test_read_target_errors(tmp_path: Path, root: Path) -> None:
    path = io.write_label(tmp_path / "em.png", np.array([[[0, 7, 255]]]), GRID_2D)
    with pytest.raises(ValueError, match=r"label_format must be one of .*got 'masks'"):
        read_target(path, label_format="masks")
    with pytest.raises(ValueError, match="foreground_value must be given exactly for label_fo"):
        read_target(path, label_format="binary")
    with pytest.raises(ValueError, match="foreground_value must be given exactly for label_fo"):
        read_target(path, label_format="instances", foreground_value=255)
    with pytest.raises(
        ValueError, match=r"em.png' must hold only 0 and the foreground value 255 .*values \[7\]"
    ):
        read_target(path, label_format="binary", foreground_value=255)
    manifest = load_manifest(_write_manifest(tmp_path, ["c2,c2_t1.nii.gz,,test,B"]), data_root=root)
    with pytest.raises(ValueError, match="case 'c2' must have a label to read, got none"):
        manifest.read_target(manifest.cases[0])


# --------------------------------------------------------------------------------------
# The real microscopy manifests (../shared/data); skipped when absent

MICRO_SPLITS = {
    "isbi2012_em": [f"slice_{i:02d}" for i in range(11, 15)],
    "dsb2018_stage1_test": [
        "1962d0c5faf3e85cda80e0578e0cb7aca50826d781620e5c1c4cc586bc69f81a",
        "4be73d68f433869188fe5e7f09c7f681ed51003da6aa5d19ce368726d8e271ee",
        "697a05c6fe4a07c601d46da80885645ad574ea19b47ee795ccff216c9f1f1808",
        "a984e7fb886aa02e29d112766d3ce26a4f78eac540ce7bbdbd42af2761928f6d",
        "b83d1d77935b6cfd44105b54600ffc4b6bd82de57dec65571bcb117fa8398ba3",
        "e17b7aedd251a016c01ef9158e6e4aa940d9f1b35942d86028dc1222192a9258",
    ],
    "miccai2015_nuclei_he": ["image07", "image15"],
}


def _micro_manifest(name: str, shared_data: Path) -> Manifest:
    return load_manifest(REPO / "data_manifests" / f"{name}.csv", data_root=shared_data)


def _index_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("name", sorted(MICRO_SPLITS))
def test_micro_manifest_validates_clean(name: str, shared_data: Path) -> None:
    manifest = _micro_manifest(name, shared_data)

    assert validate_manifest(manifest) == []
    assert [case.case for case in manifest.split("val")] == MICRO_SPLITS[name]
    assert manifest.split("test") == ()
    assert manifest.label_names[0] in ("membrane", "background")
    for case in manifest.cases:
        assert case.image.stem == case.case and case.label is not None
        assert case.label.stem == case.case


def test_isbi_split_is_contiguous_and_binary(shared_data: Path) -> None:
    manifest = _micro_manifest("isbi2012_em", shared_data)

    assert [case.split for case in manifest.cases] == ["train"] * 11 + ["val"] * 4
    assert (manifest.label_format, manifest.foreground_value) == ("binary", 255)
    assert manifest.label_names == {0: "membrane", 1: "cell"}


def test_dsb_val_is_every_fifth_image_of_each_kind(shared_data: Path) -> None:
    manifest = _micro_manifest("dsb2018_stage1_test", shared_data)
    rows = _index_rows(shared_data / "dsb2018_stage1_test" / "index.csv")

    seen: dict[str, int] = {}
    for row, case in zip(rows, manifest.cases, strict=True):
        seen[row["kind"]] = seen.get(row["kind"], 0) + 1
        assert case.case == row["image_id"]
        assert case.split == ("val" if seen[row["kind"]] % 5 == 0 else "train")
        for column in ("kind", "n_nuclei", "touching_pairs", "height", "width"):
            assert case.metadata[column] == row[column]
    assert seen == {"gray_dark_bg": 27, "color": 6}


def test_isbi_cells_are_4_connected_components(shared_data: Path) -> None:
    from PIL import Image
    from scipy import ndimage

    manifest = _micro_manifest("isbi2012_em", shared_data)
    case = manifest.cases[0]
    pixels = np.array(Image.open(shared_data / "isbi2012_em" / "labels" / "slice_00.png"))

    target = manifest.read_target(case)

    _, num_cells = ndimage.label(pixels == 255)  # default structure: 4-connected in 2D
    assert case.case == "slice_00" and num_cells > 50
    assert target.instances is not None
    assert np.unique(target.instances).tolist() == list(range(num_cells + 1))
    assert np.array_equal(target.classes[0], (pixels == 255).astype(np.uint8))


@pytest.mark.parametrize("name", ["dsb2018_stage1_test", "miccai2015_nuclei_he"])
def test_nuclei_ids_match_index_counts(name: str, shared_data: Path) -> None:
    manifest = _micro_manifest(name, shared_data)
    id_column = "image_id" if name.startswith("dsb") else "image"
    counts = {
        row[id_column]: int(row["n_nuclei"])
        for row in _index_rows(shared_data / name / "index.csv")
    }

    for case in manifest.cases:
        target = manifest.read_target(case)
        assert target.instances is not None
        ids = np.unique(target.instances)
        assert np.count_nonzero(ids) == counts[case.case], case.case
        assert target.classes.shape == target.instances.shape
        assert np.array_equal(target.classes, (target.instances > 0).astype(np.uint8))


def test_dsb_train_manifest_is_stratified_and_disjoint_from_the_test_set(shared_data: Path) -> None:
    """dsb2018_stage1_train: 664 images, every 7th of each kind is val (issue #16); no image
    is also in dsb2018_stage1_test, the external test set."""
    manifest = _micro_manifest("dsb2018_stage1_train", shared_data)
    rows = _index_rows(shared_data / "dsb2018_stage1_train" / "index.csv")
    test_ids = {c.case for c in _micro_manifest("dsb2018_stage1_test", shared_data).cases}

    seen: dict[str, int] = {}
    for row, case in zip(rows, manifest.cases, strict=True):
        seen[row["kind"]] = seen.get(row["kind"], 0) + 1
        assert case.case == row["id"] and case.metadata["kind"] == row["kind"]
        assert case.split == ("val" if seen[row["kind"]] % 7 == 0 else "train")
        assert case.metadata["n_nuclei"] == row["nuclei"]
    assert seen == {"gray_dark_bg": 541, "color": 107, "gray_light_bg": 16}
    assert len(manifest.split("val")) == 77 + 15 + 2 and manifest.split("test") == ()
    assert not test_ids & {c.case for c in manifest.cases}
    assert manifest.label_format == "instances"
    assert validate_manifest(manifest, check_labels=False) == []
    for case in manifest.cases[:: len(manifest.cases) // 4]:  # a few labels, by hand
        target = manifest.read_target(case)
        assert np.count_nonzero(np.unique(target.instances)) == int(case.metadata["n_nuclei"])
