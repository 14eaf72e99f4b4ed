"""BIDS: ``medseg predict BIDS_ROOT -o BIDS_ROOT/derivatives/medseg`` on a tiny BIDS tree,
through the real entry point, and the derivative layout checked against the BIDS rules."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.bids import find_t1w, is_bids_root
from medseg.cli import main

# BIDS derivative file names: entities in order, desc last, then the suffix
NAME = re.compile(
    r"^sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?(_(acq|ce|rec|run)-[A-Za-z0-9]+)*"
    r"_desc-medseg_(dseg\.nii\.gz|dseg\.json|volumes\.tsv)$"
)


@pytest.fixture()
def bids_root(tiny_ibsr, tmp_path) -> Path:
    """Two subjects, one with a session and a run; decoys that are not T1w inputs."""
    root = tmp_path / "ds"
    a = root / "sub-01" / "anat"
    b = root / "sub-02" / "ses-1" / "anat"
    for folder in (a, b, root / "derivatives" / "other" / "sub-01" / "anat"):
        folder.mkdir(parents=True)
    shutil.copy(tiny_ibsr / "IBSR_01_t1.nii.gz", a / "sub-01_T1w.nii.gz")
    shutil.copy(tiny_ibsr / "IBSR_04_t1.nii.gz", b / "sub-02_ses-1_run-2_T1w.nii.gz")
    shutil.copy(tiny_ibsr / "IBSR_05_t1.nii.gz", a / "sub-01_T2w.nii.gz")  # not T1w
    shutil.copy(
        tiny_ibsr / "IBSR_05_t1.nii.gz",
        root / "derivatives" / "other" / "sub-01" / "anat" / "sub-01_T1w.nii.gz",
    )
    (a / "sub-01_T1w.json").write_text("{}")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"})
    )
    return root


def test_find_t1w_skips_derivatives_and_other_suffixes(bids_root):
    assert is_bids_root(bids_root) and not is_bids_root(bids_root / "sub-01" / "anat")
    found = find_t1w(bids_root)
    assert [i.relative for i in found] == [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_run-2_T1w.nii.gz",
    ]
    assert [(i.subject, i.session, i.entities) for i in found] == [
        ("01", "", "sub-01"),
        ("02", "1", "sub-02_ses-1_run-2"),
    ]


def _voxel_ml(path: Path) -> float:
    return float(np.prod(nib.load(path).header.get_zooms()[:3])) / 1000.0


def test_predict_bids_dataset_writes_bids_derivatives(bids_root, tiny_usegnet, tmp_path, capsys):
    model = tiny_usegnet(tmp_path / "tiny.pt", size=16, stride=8)
    out = bids_root / "derivatives" / "medseg"
    args = ["predict", str(bids_root), "-o", str(out), "-m", str(model), "--skull-strip", "never"]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "wrote " + str(out / "dataset_description.json") in stdout

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "medseg"
    assert description["SourceDatasets"][0]["URL"] == bids_root.resolve().as_uri()
    with (out / "dseg.tsv").open() as file:
        rows = list(csv.reader(file, delimiter="\t"))
    assert rows == [["index", "name"], ["0", "background"], ["1", "CSF"], ["2", "GM"], ["3", "WM"]]

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    per_image = [f for f in files if f.startswith("sub-")]
    assert per_image == [
        "sub-01/anat/sub-01_desc-medseg_dseg.json",
        "sub-01/anat/sub-01_desc-medseg_dseg.nii.gz",
        "sub-01/anat/sub-01_desc-medseg_volumes.tsv",
        "sub-02/ses-1/anat/sub-02_ses-1_run-2_desc-medseg_dseg.json",
        "sub-02/ses-1/anat/sub-02_ses-1_run-2_desc-medseg_dseg.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_run-2_desc-medseg_volumes.tsv",
    ]
    assert set(files) - set(per_image) == {"dataset_description.json", "dseg.tsv", "volumes.tsv"}
    for name in per_image:  # BIDS rules: the entities of the folder, in order
        path = Path(name)
        assert NAME.match(path.name), name
        assert path.parts[0] == path.name.split("_")[0]  # sub-XX folder = sub- entity
        if "_ses-" in path.name:
            assert path.parts[1] == path.name.split("_")[1]

    sources = {
        "sub-01/anat/sub-01_T1w.nii.gz": out / "sub-01/anat/sub-01_desc-medseg_dseg.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_run-2_T1w.nii.gz": out
        / "sub-02/ses-1/anat/sub-02_ses-1_run-2_desc-medseg_dseg.nii.gz",
    }
    with (out / "volumes.tsv").open() as file:
        group = {row["source"]: row for row in csv.DictReader(file, delimiter="\t")}
    assert set(group) == set(sources)
    for source, seg in sources.items():
        image = nib.load(bids_root / source)
        label = nib.load(seg)
        np.testing.assert_allclose(label.affine, image.affine)  # on the source's grid
        sidecar = json.loads(seg.with_name(seg.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Sources"] == [f"bids:raw:{source}"]
        data = np.asarray(label.dataobj)
        voxel = _voxel_ml(seg)
        row = group[source]
        assert row["participant_id"] == "sub-" + source.split("/")[0][4:]
        for value, tissue in ((1, "CSF"), (2, "GM"), (3, "WM")):
            # hand computation: voxels of the class x the voxel volume
            assert float(row[f"{tissue}_ml"]) == pytest.approx(
                np.sum(data == value) * voxel, abs=0.006
            )
        table = seg.with_name(seg.name.replace("dseg.nii.gz", "volumes.tsv"))
        with table.open() as file:
            tissues = {r["tissue"]: r for r in csv.DictReader(file, delimiter="\t")}
        assert float(tissues["GM"]["volume_ml"]) == pytest.approx(float(row["GM_ml"]))
    assert group["sub-02/ses-1/anat/sub-02_ses-1_run-2_T1w.nii.gz"]["session_id"] == "ses-1"
    assert group["sub-01/anat/sub-01_T1w.nii.gz"]["session_id"] == "n/a"

    # nothing is overwritten without --overwrite; with it the run is redone
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "must not exist" in err and "--overwrite" in err
    assert main([*args, "--overwrite"]) == 0


def test_bids_input_errors(bids_root, tiny_usegnet, tmp_path, capsys):
    model = str(tiny_usegnet(tmp_path / "tiny.pt", size=16, stride=8))
    cases = [
        (["predict", str(bids_root), "-m", model], "must come alone, with -o a folder"),
        (["predict", str(bids_root), str(bids_root), "-o", str(tmp_path / "d"), "-m", model],
         "must come alone"),
    ]  # fmt: skip
    for args, words in cases:
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1
    # another pipeline's derivatives folder is not taken over
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "dataset_description.json").write_text(
        json.dumps({"Name": "fmriprep", "GeneratedBy": [{"Name": "fMRIPrep"}]})
    )
    args = ["predict", str(bids_root), "-o", str(foreign), "-m", model, "--skull-strip", "never"]
    assert main(args) == 1
    assert "must be medseg's derivative description" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["dataset_description.json"]  # untouched
    empty = tmp_path / "empty_ds"
    (empty / "sub-01" / "anat").mkdir(parents=True)
    assert main(["predict", str(empty), "-o", str(tmp_path / "e"), "-m", model]) == 1
    assert "must hold T1w images" in capsys.readouterr().err
