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


def _evaluate_manifest(manifest, preds, options, capsys):
    """`medseg evaluate --manifest MANIFEST --pred-dir PREDS OPTIONS...`: (code, stdout, stderr)."""
    args = ["evaluate", "--manifest", str(manifest), "--pred-dir", str(preds)]
    return _run([*args, *options], capsys)


def test_help_is_instant_and_does_not_import_torch():
    code = (
        "import sys; from medseg.cli import main; main(['--help']); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True
    )
    assert "evaluate" in proc.stdout and "validate" in proc.stdout
    assert proc.stdout.strip().endswith("NO-TORCH")


def test_console_script_exit_code_and_one_line_error(tmp_path):
    exe = Path(sys.executable).with_name("medseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "medseg.cli"]
    missing = tmp_path / "nope.nii.gz"
    proc = subprocess.run(
        [*cmd, "evaluate", str(missing), str(missing)], capture_output=True, encoding="utf-8"
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "nope.nii.gz" in lines[0]
    assert "Traceback" not in proc.stderr


def _console(*args: str) -> subprocess.CompletedProcess:
    """The installed ``medseg`` entry point (or ``python -m medseg.cli``) with ``args``."""
    exe = Path(sys.executable).with_name("medseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "medseg.cli"]
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([*cmd, *args], capture_output=True, encoding="utf-8", env=env)


def test_short_help_version_and_completion_through_the_entry_point():
    from medseg import __version__

    for args in (["-h"], ["predict", "-h"], ["batch", "-h"], ["batch", "run", "-h"]):
        proc = _console(*args)
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: medseg"), (args, proc)
    version = _console("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"medseg {__version__}"
    assert "--install-completion" in _console("-h").stdout


def test_choices_are_shown_and_checked_before_any_work(tmp_path):
    """Choice options show their values in help and refuse others in one line (exit 1)."""
    text = " ".join(_console("predict", "-h").stdout.split())
    for shown in (
        "--mode <vote|mean|gaussian>",
        "--objects <components|watershed|boundary|seeded>",
        "--tta <none|flip|flip-all>",
        "--ensemble <mean|vote>",
        "--skull-strip <auto|always|never>",
        "--precision <auto|fp32|bf16>",
        "--output-format <auto|dicom-seg>",
        "-m, --model MODEL",
        "INPUT... <path>",
    ):
        assert shown in text, shown
    assert "list[" not in text  # no Python type names in help
    for command in (["crossval"], ["manifest", "init"], ["batch", "run"], ["evaluate"]):
        helptext = " ".join(_console(*command, "-h").stdout.split())
        assert "list[" not in helptext, command
    missing = tmp_path / "absent.nii.gz"
    for option, bad in (("--mode", "median"), ("--objects", "otsu"), ("--tta", "rot")):
        proc = _console("predict", str(missing), option, bad, "-o", str(tmp_path / "out"))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert f"Invalid value for '{option}'" in lines[0] and f"'{bad}'" in lines[0]
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_predict_folder_then_evaluate_reads_its_names(tiny_ibsr, tmp_path):
    """`medseg predict DIR -o OUT` then `medseg evaluate --manifest M --pred-dir OUT`, with
    no renaming: predict writes <image stem>_seg.nii.gz (IBSR_01_t1_seg), evaluate finds it
    from the manifest's image path although the case id (IBSR_01) differs."""
    tiny = Path(__file__).resolve().parent / "data" / "golden" / "brain_tiny.pt"
    images = tmp_path / "images"
    images.mkdir()
    for case in ("IBSR_01", "IBSR_04"):
        os.symlink(tiny_ibsr / f"{case}_t1.nii.gz", images / f"{case}_t1.nii.gz")
    out = tmp_path / "out"
    proc = _console("predict", str(images), "-m", str(tiny), "-o", str(out), "--fast",
                    "--skull-strip", "never", "--device", "cpu")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["IBSR_01_t1_seg.nii.gz", "IBSR_04_t1_seg.nii.gz"]
    report = tmp_path / "report.csv"
    proc = _console("evaluate", "--manifest", str(tiny_ibsr / "tiny.csv"), "--data-root",
                    str(tiny_ibsr), "--pred-dir", str(out), "-o", str(report))  # fmt: skip
    # IBSR_05 has no prediction: reported, exit 1, the other two scored
    assert proc.returncode == 1 and "IBSR_05" in proc.stdout + proc.stderr
    rows = pd.read_csv(report)
    assert sorted(set(rows["case"])) == ["IBSR_01", "IBSR_04"]
    assert rows["dice"].notna().all()


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
    assert out.read_text(encoding="utf-8") == "keep me"
    assert not (tmp_path / "report.md").exists()
    code, _, _ = _run(["evaluate", str(pred), str(label), "-o", str(out), "--overwrite"], capsys)
    assert code == 0 and out.read_text(encoding="utf-8") != "keep me"


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
    code, stdout, err = _evaluate_manifest(
        manifest, preds, ["--data-root", str(root), "-o", str(out)], capsys
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
    options = ["--data-root", str(shared_data), "--split", "val", "--no-distances", "-o", str(out)]
    code, stdout, err = _evaluate_manifest(manifest, preds, options, capsys)
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
        encoding="utf-8",
    )
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out / "report.csv").set_index("tissue")
    assert rows.index.tolist() == ["CSF", "GM", "WM"]
    # the built-in model against the template's tissue maps (measured: GM 0.93, WM 0.92);
    # the template's CSF includes sulcal CSF, which IBSR (the training data) calls background
    assert rows.loc["GM", "dice"] > 0.8 and rows.loc["WM", "dice"] > 0.8
    for name in ("mni152_seg.nii.gz", "mni152_confidence.nii.gz", "mni152_overlay.png"):
        assert (out / name).is_file(), name
    assert "tissue volumes: CSF" in proc.stdout


# ---------------------------------------------------------------------------
# evaluate: object (microscopy) label formats
# ---------------------------------------------------------------------------

# 6x6: objects 1 and 2 touch, 3 is alone (the hand case of tests/test_report.py)
from tests.test_evaluation import TARGET as OBJ_TARGET  # noqa: E402
from tests.test_evaluation import _png  # noqa: E402


@pytest.fixture()
def object_pair(tmp_path):
    merged = np.where(OBJ_TARGET > 0, 9, 0)
    merged[(OBJ_TARGET == 1) | (OBJ_TARGET == 2)] = 7  # 1 and 2 merged: AP 0.25, no split
    return _png(tmp_path / "c1_instances.png", merged), _png(tmp_path / "lab.png", OBJ_TARGET)


def test_evaluate_instances_pair_writes_object_report(object_pair, tmp_path, capsys):
    pred, label = object_pair
    out = tmp_path / "nuclei.csv"
    args = ["evaluate", str(pred), str(label), "--label-format", "instances", "-o", str(out)]
    code, stdout, err = _run(args, capsys)
    assert code == 0, err
    assert "Object metrics" in stdout and "AP@0.5" in stdout and "Rand err" in stdout
    assert "0.2500" in stdout and "0.000 (0/1)" in stdout  # AP; split 0 of 1 pair
    assert "Per-tissue" not in stdout and "mean of" not in stdout  # one case: no mean row
    assert pd.read_csv(out)["case"].tolist() == ["c1"]
    assert sorted(p.name for p in tmp_path.glob("nuclei*")) == ["nuclei.csv", "nuclei.md"]


def test_evaluate_binary_pair_mask_against_itself(tmp_path, capsys):
    em = _png(tmp_path / "em.png", np.where(OBJ_TARGET > 0, 255, 0), dtype=np.uint8)
    args = ["evaluate", str(em), str(em), "--label-format", "binary", "--foreground-value", "255"]
    code, stdout, err = _run(args, capsys)
    assert code == 0, err
    assert "binary mask components" in stdout and "nan (0/0)" in stdout


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            ["--label-format", "nuclei"],
            "Invalid value for '--label-format': Value error, 'nuclei' is not one of "
            "'classes', 'instances', 'binary'",
        ),
        (["--label-format", "binary"], "foreground_value must be an integer 1..65535"),
        (["--label-format", "instances", "--foreground-value", "255"], "must be omitted"),
        (["--label-format", "instances", "--labels", "1=x"], "labels must be omitted"),
        (["--foreground-value", "255"], "foreground_value must be omitted"),
    ],
)
def test_evaluate_object_option_errors(object_pair, tmp_path, capsys, extra, words):
    pred, label = object_pair
    code, _, err = _run(["evaluate", str(pred), str(label), *extra], capsys)
    assert code == 1 and words in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_evaluate_object_shape_mismatch(object_pair, tmp_path, capsys):
    _, label = object_pair
    pred = _png(tmp_path / "small.png", OBJ_TARGET[:5])
    code, _, err = _run(["evaluate", str(pred), str(label), "--label-format", "instances"], capsys)
    assert code == 1 and "small.png" in err and "lab.png" in err and "(1, 5, 6)" in err


def _object_manifest(tmp_path, cases, sidecar):
    root = tmp_path / "root"
    root.mkdir()
    for case in cases:
        _png(root / f"{case}_img.png", np.zeros((6, 6)), dtype=np.uint8)
        _png(root / f"{case}_lab.png", OBJ_TARGET)
    rows = [[c, f"{c}_img.png", f"{c}_lab.png", "val"] for c in cases]
    return _manifest(tmp_path, rows, labels=sidecar), root


def test_evaluate_manifest_objects_keeps_going_past_a_bad_case(object_pair, tmp_path, capsys):
    sidecar = '{"labels": {"0": "background", "1": "nucleus"}, "label_format": "instances"}'
    manifest, root = _object_manifest(tmp_path, ("n1", "n2", "n3"), sidecar)
    merged, _ = object_pair
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "n1_instances.png").write_bytes(merged.read_bytes())  # AP 0.25, split 0/1
    _png(preds / "n2_instances.png", OBJ_TARGET)  # perfect, split 1/1; n3 missing
    out = tmp_path / "report.csv"
    options = ["--data-root", str(root), "-o", str(out)]
    code, stdout, err = _evaluate_manifest(manifest, preds, options, capsys)
    assert code == 1
    assert "1 case(s) failed" in err and "n3" in err and "n3_instances<suffix>" in err
    assert "mean of 2" in stdout and "0.6250" in stdout  # mean AP (0.25 + 1) / 2
    assert "pooled split rate: 1/2 touching pairs = 0.500" in stdout
    assert pd.read_csv(out)["case"].tolist() == ["n1", "n2"]
    # the sidecar decides: a conflicting --label-format is an error, before anything runs
    out.unlink()
    options = ["--data-root", str(root), "--label-format", "binary", "-o", str(out)]
    code, _, err = _evaluate_manifest(manifest, preds, options, capsys)
    assert code == 1 and "label_format must be the manifest's 'instances'" in err
    assert not out.exists()


def test_evaluate_real_dsb2018_label_against_itself(shared_data, capsys):
    index = pd.read_csv(shared_data / "dsb2018_stage1_test" / "index.csv")
    row = index[index["touching_pairs"] > 0].iloc[0]
    label = shared_data / "dsb2018_stage1_test" / "labels" / f"{row['image_id']}.png"
    args = ["evaluate", str(label), str(label), "--label-format", "instances"]
    code, stdout, err = _run(args, capsys)
    assert code == 0, err
    pairs = int(row["touching_pairs"])
    assert f"1.000 ({pairs}/{pairs})" in stdout  # every touching pair split
    assert stdout.count("1.0000") >= 5  # pixel IoU, Dice, AP, AP@0.5, F1@0.5


def test_evaluate_real_isbi2012_manifest(shared_data, tmp_path, capsys):
    manifest = REPO / "data_manifests" / "isbi2012_em.csv"
    if not manifest.exists():
        pytest.skip(f"{manifest} is absent")
    preds = tmp_path / "preds"
    preds.mkdir()
    os.symlink(shared_data / "isbi2012_em" / "labels" / "slice_00.png", preds / "slice_00.png")
    code, stdout, err = _evaluate_manifest(
        manifest, preds, ["--data-root", str(shared_data)], capsys
    )
    assert code == 1 and "slice_01" in err  # only slice_00 has a prediction
    assert "slice_00" in stdout and "binary mask components" in stdout


# --------------------------------------------------------------------------------------
# medseg info: orientation, time series, --series; medseg predict on FreeSurfer .mgz


@pytest.mark.parametrize(
    ("affine", "codes", "towards"),
    [
        (AFFINE, "RAS", "right, anterior, superior"),
        (np.diag([-0.9, -1.5, 1.1, 1.0]), "LPS", "left, posterior, superior"),
        # FreeSurfer's conformed orientation: x to the left, y down, z to the front
        (np.array([[-1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]]), "LIA", None),
    ],
)
def test_info_prints_orientation(tmp_path, capsys, affine, codes, towards):
    path = _nifti(tmp_path / "t1.nii.gz", np.zeros((4, 5, 6)), dtype=np.float32, affine=affine)

    code, stdout, _ = _run(["info", str(path)], capsys)

    assert code == 0
    assert f"orientation: {codes}  (array X, Y, Z increase towards " in stdout
    if towards is not None:
        assert f"towards {towards})" in stdout  # axis-aligned: no oblique note
    assert "time points" not in stdout


def test_info_oblique_orientation(tmp_path, capsys):
    angle = np.deg2rad(20.0)
    affine = np.eye(4)
    affine[:3, :3] = [
        [np.cos(angle), -np.sin(angle), 0],
        [np.sin(angle), np.cos(angle), 0],
        [0, 0, 1],
    ]
    path = _nifti(tmp_path / "t1.nii.gz", np.zeros((4, 5, 6)), dtype=np.float32, affine=affine)

    code, stdout, _ = _run(["info", str(path)], capsys)

    assert code == 0 and "orientation: RAS" in stdout and "oblique, up to 20.0 deg" in stdout


def test_info_time_series_and_series_option(tmp_path, capsys):
    bold = nib.Nifti1Image(np.zeros((6, 5, 4, 3), np.float32), AFFINE)
    bold.header.set_xyzt_units("mm", "sec")
    nib.save(bold, tmp_path / "bold.nii.gz")

    code, stdout, _ = _run(["info", str(tmp_path / "bold.nii.gz")], capsys)
    assert code == 0 and "(3, 4, 5, 6)" in stdout and "time points: 3" in stdout

    code, _, err = _run(["info", str(tmp_path / "bold.nii.gz"), "--series", "2"], capsys)
    assert code == 1 and "series must be None for image" in err and "drop --series" in err


def test_info_folder_without_dicom_files(tmp_path, capsys):
    _nifti(tmp_path / "a.nii.gz", np.zeros((4, 5, 6)))

    code, _, err = _run(["info", str(tmp_path)], capsys)

    assert code == 1 and "must be a folder holding a DICOM series" in err
    assert "no DICOM file (1 file(s), 0 subfolder(s)" in err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_usegnet) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return tiny_usegnet(path, size=16, stride=8)


def test_predict_mgz_writes_mgz(tiny_checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (24, 6, 18)).astype(np.float32)  # (x, y, z); y is axial
    lia = np.array([[-1.0, 0, 0, 12], [0, 0, 1.2, -5], [0, -0.9, 0, 9], [0, 0, 0, 1]])
    nib.MGHImage(data, lia).to_filename(tmp_path / "brain.mgz")
    out = tmp_path / "out"

    code, stdout, err = _run(
        ["predict", str(tmp_path / "brain.mgz"), "-m", str(tiny_checkpoint), "-o", str(out)]
        + ["--device", "cpu"],
        capsys,
    )

    assert code == 0, err
    seg = nib.load(out / "brain_seg.mgz")
    assert isinstance(seg, nib.MGHImage) and seg.get_data_dtype() == np.uint8
    assert seg.shape == data.shape
    np.testing.assert_allclose(seg.affine, lia, atol=1e-5)
    np.testing.assert_allclose(seg.header.get_zooms(), (1.0, 0.9, 1.2), atol=1e-6)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    assert f"wrote {out / 'brain_seg.mgz'}" in stdout
