"""CLI tests: commands, one-line errors with exit 1, --debug, nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medseg.cli import main

REPO = Path(__file__).resolve().parents[1]
AFFINE = np.diag([0.9, 1.5, 1.1, 1.0])


def _nifti(path: Path, zyx: np.ndarray, dtype=np.uint8, affine=AFFINE) -> Path:
    """Write a (Z, Y, X) array as NIfTI (x, y, z on disk) with nibabel directly."""
    nib.save(nib.Nifti1Image(np.asarray(zyx, dtype=dtype).transpose(2, 1, 0), affine), path)
    return path


@pytest.fixture()
def pair(tmp_path):
    target = np.zeros((6, 7, 8), np.uint8)
    target[1:5, 2:6, 2:7] = 2
    target[2:4, 3:5, 3:6] = 3
    target[0, 0, :3] = 1
    pred = target.copy()
    pred[1, 2, 2:7] = 0  # 5 GM voxels missed
    return _nifti(tmp_path / "pred.nii.gz", pred), _nifti(tmp_path / "label.nii.gz", target)


def _run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_is_instant_and_does_not_import_torch():
    code = (
        "import sys; from medseg.cli import main; main(['--help']); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "evaluate" in proc.stdout and "validate" in proc.stdout
    assert proc.stdout.strip().endswith("NO-TORCH")


def test_console_script_exit_code_and_one_line_error(tmp_path):
    exe = Path(sys.executable).with_name("medseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "medseg.cli"]
    missing = tmp_path / "nope.nii.gz"
    proc = subprocess.run(
        [*cmd, "evaluate", str(missing), str(missing)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "nope.nii.gz" in lines[0]
    assert "Traceback" not in proc.stderr


def test_evaluate_pair_writes_report(pair, tmp_path, capsys):
    pred, label = pair
    out = tmp_path / "report.csv"
    code, stdout, _ = _run(
        ["evaluate", str(pred), str(label), "--labels", "1=CSF,2=GM,3=WM", "-o", str(out)], capsys
    )
    assert code == 0
    assert "GM" in stdout and "Confusion matrix" in stdout
    rows = pd.read_csv(out)
    required = ["case", "tissue", "label", "dice", "iou", "precision", "recall", "hd95_mm"]
    assert set(required + ["bf_score", "volume_ml"]) <= set(rows.columns)
    assert rows["tissue"].tolist() == ["CSF", "GM", "WM"]
    gm = rows.set_index("tissue").loc["GM"]
    # GM: target 4*4*5 - 2*2*3 = 68 voxels, prediction misses 5 -> Dice 2*63/(63+68)
    assert gm["dice"] == pytest.approx(2 * 63 / 131)
    assert gm["volume_ml"] == pytest.approx(63 * 0.9 * 1.5 * 1.1 / 1000)
    assert (tmp_path / "report.md").exists() and (tmp_path / "report_cases.csv").exists()


def test_evaluate_refuses_to_overwrite(pair, tmp_path, capsys):
    pred, label = pair
    out = tmp_path / "report.csv"
    out.write_text("keep me")
    code, _, err = _run(["evaluate", str(pred), str(label), "-o", str(out)], capsys)
    assert code == 1 and "--overwrite" in err and "report.csv" in err
    assert out.read_text() == "keep me"
    assert not (tmp_path / "report.md").exists()
    code, _, _ = _run(["evaluate", str(pred), str(label), "-o", str(out), "--overwrite"], capsys)
    assert code == 0 and out.read_text() != "keep me"


def test_evaluate_shape_mismatch(tmp_path, capsys):
    a = _nifti(tmp_path / "a.nii.gz", np.zeros((6, 7, 8)))
    b = _nifti(tmp_path / "b.nii.gz", np.zeros((6, 7, 9)))
    out = tmp_path / "r.csv"
    code, _, err = _run(["evaluate", str(a), str(b), "-o", str(out)], capsys)
    assert code == 1 and "a.nii.gz" in err and "b.nii.gz" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_evaluate_geometry_mismatch(tmp_path, capsys):
    a = _nifti(tmp_path / "a.nii.gz", np.zeros((6, 7, 8)))
    b = _nifti(tmp_path / "b.nii.gz", np.zeros((6, 7, 8)), affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    code, _, err = _run(["evaluate", str(a), str(b)], capsys)
    assert code == 1 and "a.nii.gz" in err and "b.nii.gz" in err


def test_evaluate_unknown_label_value(pair, capsys):
    pred, label = pair
    code, _, err = _run(["evaluate", str(pred), str(label), "--labels", "1=CSF,2=GM"], capsys)
    assert code == 1 and "3" in err and "label" in err.lower()


def test_evaluate_corrupt_nifti(pair, tmp_path, capsys):
    _, label = pair
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(label.read_bytes()[:100])  # truncated
    code, _, err = _run(["evaluate", str(bad), str(label)], capsys)
    assert code == 1 and "bad.nii.gz" in err and "Traceback" not in err


def test_debug_shows_traceback(tmp_path):
    missing = str(tmp_path / "nope.nii.gz")
    with pytest.raises(FileNotFoundError):
        main(["--debug", "evaluate", missing, missing])


def test_usage_errors_exit_1(capsys):
    code, _, err = _run(["evaluate", "--no-such-flag"], capsys)
    assert code == 1 and "no-such-flag" in err
    code, _, err = _run(["evaluate"], capsys)
    assert code == 1 and "PRED and LABEL must both be given" in err


def _manifest(
    tmp_path, rows, labels='{"labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"}}'
):
    path = tmp_path / "m.csv"
    pd.DataFrame(rows, columns=["case", "image", "label", "split"]).to_csv(path, index=False)
    (tmp_path / "m.labels.json").write_text(labels)
    return path


def test_evaluate_manifest_keeps_going_past_a_bad_case(pair, tmp_path, capsys):
    pred, label = pair
    root = tmp_path / "root"
    root.mkdir()
    for case in ("c1", "c2", "c3"):
        (root / f"{case}_img.nii.gz").write_bytes(label.read_bytes())
        (root / f"{case}_lab.nii.gz").write_bytes(label.read_bytes())
    manifest = _manifest(
        tmp_path, [[c, f"{c}_img.nii.gz", f"{c}_lab.nii.gz", "val"] for c in ("c1", "c2", "c3")]
    )
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "c1.nii.gz").write_bytes(pred.read_bytes())
    (preds / "c3.nii.gz").write_bytes(b"not a nifti")  # corrupt; c2 missing
    out = tmp_path / "report.csv"
    code, stdout, err = _run(
        [
            "evaluate",
            "--manifest",
            str(manifest),
            "--pred-dir",
            str(preds),
            "--data-root",
            str(root),
            "-o",
            str(out),
        ],
        capsys,
    )
    assert code == 1
    assert "2 case(s) failed" in err and "c2" in err and "c3" in err
    rows = pd.read_csv(out)
    assert set(rows["case"]) == {"c1"}


def test_evaluate_real_ibsr_manifest(shared_data, tmp_path, capsys):
    """Predictions = the reference labels themselves: every Dice is exactly 1."""
    manifest = REPO / "data_manifests" / "ibsr18.csv"
    preds = tmp_path / "preds"
    preds.mkdir()
    for case in ("IBSR_04", "IBSR_08"):
        src = shared_data / "ibsr18" / case / f"{case}_labels.nii.gz"
        os.symlink(src, preds / f"{case}.nii.gz")
    out = tmp_path / "ibsr.csv"
    code, stdout, err = _run(
        [
            "evaluate",
            "--manifest",
            str(manifest),
            "--pred-dir",
            str(preds),
            "--data-root",
            str(shared_data),
            "--split",
            "val",
            "--no-distances",
            "-o",
            str(out),
        ],
        capsys,
    )
    rows = pd.read_csv(out)
    assert set(rows["case"]) == {"IBSR_04", "IBSR_08"}  # IBSR_18 has no prediction
    assert code == 1 and "IBSR_18" in err
    assert np.allclose(rows["dice"], 1.0)
    assert set(rows["tissue"]) == {"CSF", "GM", "WM"}


def test_validate_real_manifest(shared_data, capsys):
    manifest = REPO / "data_manifests" / "ibsr18.csv"
    code, stdout, _ = _run(["validate", str(manifest), "--data-root", str(shared_data)], capsys)
    assert code == 0 and "8 cases OK" in stdout


def test_validate_reports_all_problems(pair, tmp_path, capsys):
    _, label = pair
    root = tmp_path / "root"
    root.mkdir()
    _nifti(root / "img.nii.gz", np.zeros((6, 7, 9)), dtype=np.float32)
    (root / "lab.nii.gz").write_bytes(label.read_bytes())
    manifest = _manifest(
        tmp_path, [["a", "img.nii.gz", "lab.nii.gz", "train"], ["b", "missing.nii.gz", "", "train"]]
    )
    code, _, err = _run(["validate", str(manifest), "--data-root", str(root)], capsys)
    assert code == 1 and "missing.nii.gz" in err and "img.nii.gz" in err


def test_info_and_patches_on_real_volume(shared_data, tmp_path, capsys):
    t1 = shared_data / "ibsr18" / "IBSR_01" / "IBSR_01_t1.nii.gz"
    code, stdout, _ = _run(["info", str(t1)], capsys)
    assert code == 0 and "(1, 256, 128, 256)" in stdout
    coverage = tmp_path / "coverage.nii.gz"
    code, stdout, _ = _run(["patches", str(t1), "--coverage", str(coverage)], capsys)
    assert code == 0
    # axial slices 128 x 256: 10 x 23 starts per slice, 256 slices
    assert "(256, 10, 23) = 58880 patches" in stdout and "up to 25" in stdout
    counts = np.asarray(nib.load(coverage).dataobj)
    assert counts.shape == (256, 128, 256) and counts.min() == 1 and counts.max() == 25
    code, _, err = _run(["patches", str(t1), "--coverage", str(coverage)], capsys)
    assert code == 1 and "--overwrite" in err


def test_patches_volume_smaller_than_patch(tmp_path, capsys):
    small = _nifti(tmp_path / "small.nii.gz", np.zeros((5, 30, 50)), dtype=np.float32)
    code, _, err = _run(["patches", str(small)], capsys)
    assert code == 1 and "exceeds image shape" in err


def test_patches_2d_image_where_3d_needed(tmp_path, capsys):
    flat = _nifti(tmp_path / "flat.nii.gz", np.zeros((1, 50, 50)), dtype=np.float32)
    code, _, err = _run(["patches", str(flat)], capsys)
    assert code == 1 and "flat.nii.gz" in err and "3D" in err


@pytest.mark.slow
def test_demo_pipeline_runs(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "demo.py"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out / "report.csv").set_index("tissue")
    assert rows.index.tolist() == ["CSF", "GM", "WM"]
    # the built-in model against the template's tissue maps (measured: GM 0.92, WM 0.91);
    # the template's CSF includes sulcal CSF, which IBSR (the training data) calls background
    assert rows.loc["GM", "dice"] > 0.8 and rows.loc["WM", "dice"] > 0.8
    for name in ("mni152_seg.nii.gz", "mni152_confidence.nii.gz", "mni152_overlay.png"):
        assert (out / name).is_file(), name
    assert "tissue volumes: CSF" in proc.stdout
