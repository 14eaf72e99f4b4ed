"""Tests of medseg.batch and ``medseg batch``: a tiny synthetic cohort on real Dask clusters.

The cohort: five synthetic T1-like heads (concentric CSF / GM / WM shells, different shapes
and spacings; four labelled) and three bad cases -- a truncated .nii.gz, a 2D image and a
2-channel image -- segmented with the committed tiny golden checkpoint
(tests/data/golden/brain_tiny.pt, see tests/data/make_golden.py). Most Dask tests share one
real LocalCluster of 2 worker processes (the ``scheduler`` fixture, reached through
``--scheduler``); one test starts the embedded cluster of ``--workers 2`` itself. The brain
model tests (skull stripping, brain mask, TIV) run the built-in ``brain-tissue`` model on two
64 x 64 x 12 crops of real IBSR volumes (the ``tiny_ibsr`` fixture), without Dask.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medseg.batch import (
    BatchConfig,
    CaseOutcome,
    PredictJob,
    format_outcome,
    map_cases,
    predict_manifest,
    predict_task,
    run_batch,
)
from medseg.cli import main
from medseg.io import Geometry, read_image, read_label, write_image, write_label

GOLDEN_CKPT = Path(__file__).resolve().parent / "data" / "golden" / "brain_tiny.pt"
LABEL_NAMES = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}
# case -> (shape (Z, Y, X), spacing (z, y, x) mm, split, site, labelled)
GOOD = {
    "g1": ((12, 20, 24), (1.5, 1.0, 1.0), "train", "A", True),
    "g2": ((14, 24, 20), (1.2, 0.9, 0.9), "train", "B", True),
    "g3": ((10, 22, 26), (2.0, 1.0, 1.1), "val", "A", True),
    "g4": ((12, 26, 22), (1.5, 0.8, 0.8), "val", "B", True),
    "g5": ((10, 20, 20), (1.5, 1.0, 1.0), "test", "A", False),
}
BAD = {  # case -> words its error must contain (besides its file name)
    "corrupt": ("NIfTI",),
    "flat": ("3D",),
    "twochan": ("channel",),
}


def _head(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic T1-like head as make_golden.brain_volume: float32 image, uint8 classes."""
    z, y, x = np.indices(shape, dtype=np.float64)
    half = [(n - 1) / 2 for n in shape]
    r = np.sqrt(sum(((a - c) / (c + 0.5)) ** 2 for a, c in zip((z, y, x), half, strict=True)))
    classes = np.select([r < 0.5, r < 0.8, r < 1.0], [3, 2, 1], 0).astype(np.uint8)
    rng = np.random.default_rng(seed)  # predictions depend on this noise
    noisy = np.array([0.0, 30.0, 70.0, 110.0])[classes] + rng.normal(0.0, 6.0, shape)
    image = np.where(classes > 0, np.clip(np.round(noisy), 1, None), 0.0)
    return image.astype(np.float32), classes


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """Data root, manifest (with a labels sidecar and a ``site`` column) and truths."""
    base = tmp_path_factory.mktemp("cohort")
    root = base / "root"
    root.mkdir()
    rows = ["case,image,label,split,site"]
    truth = {}
    for i, (case, (shape, spacing, split, site, labelled)) in enumerate(GOOD.items()):
        image, classes = _head(shape, seed=i)
        geometry = Geometry.from_spacing(spacing)
        write_image(root / f"{case}_t1.nii.gz", image[None], geometry)
        label = ""
        if labelled:
            write_label(root / f"{case}_labels.nii.gz", classes, geometry)
            label = f"{case}_labels.nii.gz"
        truth[case] = (classes, spacing)
        rows.append(f"{case},{case}_t1.nii.gz,{label},{split},{site}")
    data = (root / "g1_t1.nii.gz").read_bytes()
    (root / "corrupt_t1.nii.gz").write_bytes(data[: len(data) // 2])  # truncated
    g = Geometry.from_spacing((1.0, 1.0, 1.0))
    write_image(root / "flat_t1.nii.gz", np.ones((1, 1, 20, 20), np.float32), g)
    write_image(root / "twochan_t1.nii.gz", np.ones((2, 10, 20, 20), np.float32), g)
    rows += [f"{case},{case}_t1.nii.gz,,test,B" for case in BAD]
    manifest = base / "toy.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    sidecar = {"labels": {str(k): v for k, v in LABEL_NAMES.items()}}
    (base / "toy.labels.json").write_text(json.dumps(sidecar), encoding="utf-8")
    return {"root": root, "manifest": manifest, "truth": truth}


@pytest.fixture(scope="module")
def scheduler():
    """A real LocalCluster with 2 worker processes; a worker death fails its task at once."""
    import dask
    from distributed import LocalCluster

    # allowed-failures 0: KilledWorker on the first death, so the killed-worker test is quick
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
    yield cluster.scheduler_address
    cluster.close()


def _config(cohort, **kwargs) -> BatchConfig:
    kwargs.setdefault("model", str(GOLDEN_CKPT))
    if "scheduler" not in kwargs:
        kwargs.setdefault("workers", 0)
    # one torch thread per task: quick on a busy 2-core machine (the fixture cluster's two
    # workers share it, so their default of cpus // nthreads = 2 each would oversubscribe it)
    kwargs.setdefault("threads", 1)
    return BatchConfig(cohort["manifest"], cohort["root"], **kwargs)


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _base(cohort, command: str = "run") -> list:
    return ["batch", command, "--manifest", cohort["manifest"], "--data-root", cohort["root"]]


@pytest.fixture(scope="module")
def plain_run(cohort, tmp_path_factory):
    """run_batch without Dask (workers=0), shared by the comparison tests."""
    out = tmp_path_factory.mktemp("plain")
    return run_batch(_config(cohort), out), out


# --------------------------------------------------------------------------------------
# End to end on clusters


def _capture(args: list) -> dict:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in args])
    return {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


@pytest.fixture(scope="module")
def dask_run(cohort, scheduler, tmp_path_factory) -> dict:
    """Predict on the embedded cluster of ``--workers 2``, then run on ``--scheduler``."""
    out = tmp_path_factory.mktemp("dask") / "out"
    model = ["-m", GOLDEN_CKPT]
    predict = [*_base(cohort, "predict"), "--out", out / "predictions", *model, "--workers", "2"]
    run = [*_base(cohort), "--out", out, *model, "--scheduler", scheduler, "--threads", "1"]
    return {"predict": _capture(predict), "run": _capture(run), "out": out}


@pytest.mark.slow
def test_dask_runs_record_failures_and_a_rerun_does_nothing(cohort, scheduler, dask_run, capsys):
    out = dask_run["out"]
    predict, run = dask_run["predict"], dask_run["run"]
    assert predict["code"] == 1  # embedded LocalCluster: every good case, 3 failures
    assert "5 predicted, 0 skipped, 3 failed; predictions:" in predict["stdout"]
    for case in GOOD:
        assert (out / "predictions" / f"{case}.nii.gz").is_file()
        assert (out / "predictions" / f"{case}_confidence.nii.gz").is_file()
    for case in BAD:
        assert f"{case} (predict):" in predict["stderr"]
    for captured in (predict, run):  # both clusters say where their dashboard is
        assert re.search(r"^Dask dashboard: http://\S+/status$", captured["stderr"], re.M)
    assert run["code"] == 1  # --scheduler: the finished cases are skipped, the bad retried
    assert "0 predicted, 5 skipped, 3 failed; report:" in run["stdout"]
    assert "(unchanged)" not in run["stdout"]
    cases = pd.read_csv(out / "report" / "cases.csv", keep_default_na=False).set_index("case")
    assert set(cases.index[cases["status"] == "ok"]) == set(GOOD)
    for case, words in BAD.items():
        row = cases.loc[case]
        assert row["status"] == "failed" and row["stage"] == "predict"
        assert str(cohort["root"] / f"{case}_t1.nii.gz") in row["error"]
        assert "\n" not in row["error"] and all(w in row["error"] for w in words)
        assert f"{case} (predict):" in run["stderr"]
    assert (out / "report" / "report.html").is_file() and (out / "report" / "report.md").is_file()

    # rerun: nothing new, the same failures
    before = _mtimes(out)
    args = [*_base(cohort), "--out", out, "-m", GOLDEN_CKPT, "--scheduler", scheduler]
    args += ["--threads", "1"]
    code, stdout, stderr = _cli(capsys, *args)
    assert code == 1
    assert "0 predicted, 5 skipped, 3 failed" in stdout and "(unchanged)" in stdout
    assert _mtimes(out) == before
    assert stderr.count("(predict):") == 3 and all(f"{case} (predict):" in stderr for case in BAD)


def test_model_is_built_once_per_worker(cohort, scheduler, tmp_path):
    ckpt = shutil.copy(GOLDEN_CKPT, tmp_path / "tiny.pt")  # a new file: a new cache key
    result = predict_manifest(_config(cohort, model=str(ckpt), scheduler=scheduler), tmp_path / "p")
    ran = [o for o in result.predicted if o.status == "predicted"]
    assert len(ran) == len(GOOD)
    loads: dict[int, int] = {}
    for o in ran:
        assert o.worker_pid is not None and o.model_loads is not None
        loads[o.worker_pid] = max(loads.get(o.worker_pid, 0), o.model_loads)
    assert os.getpid() not in loads  # the tasks ran in worker processes
    assert 1 <= len(loads) <= 2  # the cluster has 2 worker processes
    assert set(loads.values()) == {1}  # one build per worker, not one per case
    assert sum(loads.values()) == len(loads) < len(ran)


@pytest.mark.slow
def test_plain_and_dask_runs_give_identical_results(plain_run, dask_run):
    plain, plain_out = plain_run
    for case in GOOD:
        a = plain_out / "predictions" / f"{case}.nii.gz"
        b = dask_run["out"] / "predictions" / f"{case}.nii.gz"
        np.testing.assert_array_equal(read_label(a).array, read_label(b).array)
        ca, cb = (read_image(p.with_name(f"{case}_confidence.nii.gz")).array for p in (a, b))
        np.testing.assert_allclose(ca, cb, atol=1e-6)
    fa = plain.cases.set_index("case")
    fb = pd.read_csv(dask_run["out"] / "report" / "cases.csv")  # worst first: reorder
    fb = fb.drop(columns="qc_flag").set_index("case").loc[fa.index]
    pd.testing.assert_index_equal(fa.index, fb.index)
    assert list(fa.columns) == list(fb.columns)
    for column in ("status", "stage", "error", "split", "site"):
        assert fa[column].tolist() == fb[column].fillna("").astype(str).tolist()
    numbers = [c for c in fa.columns if c.endswith("_ml") or c.startswith("dice_")]
    numbers += ["gm_fraction", "mean_agreement", "weighted_dice"]
    np.testing.assert_allclose(fa[numbers].to_numpy(float), fb[numbers].to_numpy(float), atol=1e-6)


def test_batch_run_on_a_folder_of_scans_matches_the_manifest_run(
    cohort, plain_run, tmp_path, capsys
):
    """A folder instead of a manifest: its images are the cases, *_labels beside them the truth."""
    plain, _ = plain_run
    folder = tmp_path / "scans"
    folder.mkdir()
    for case in ("g1", "g3", "g5"):  # g5 has no label: predicted, not scored
        shutil.copy(cohort["root"] / f"{case}_t1.nii.gz", folder)
        if GOOD[case][4]:
            shutil.copy(cohort["root"] / f"{case}_labels.nii.gz", folder)
    out = tmp_path / "out"
    args = ["batch", "run", "--manifest", folder, "--out", out, "-m", GOLDEN_CKPT]
    code, stdout, _ = _cli(capsys, *args, "--workers", "0", "--threads", "1")
    assert code == 0, stdout
    cases = pd.read_csv(out / "report" / "cases.csv").set_index("case").sort_index()
    assert cases.index.tolist() == ["g1", "g3", "g5"]
    expected = plain.cases.set_index("case").loc[["g1", "g3", "g5"]]
    dice = [c for c in expected.columns if c.startswith("dice_")]
    np.testing.assert_allclose(
        cases[dice].to_numpy(float), expected[dice].to_numpy(float), atol=1e-6, equal_nan=True
    )
    volumes = [c for c in expected.columns if c.endswith("_ml")]
    np.testing.assert_allclose(cases[volumes].to_numpy(float), expected[volumes].to_numpy(float))


def test_killed_worker_is_recorded_and_the_others_finish(cohort, scheduler, tmp_path):
    (tmp_path / "p").mkdir()
    jobs = [
        PredictJob(
            case=case,
            image=cohort["root"] / f"{case}_t1.nii.gz",
            output=tmp_path / "p" / f"{case}.nii.gz",
            model=str(GOLDEN_CKPT),
            device="cpu",
            mode=None,
            fast=False,
            overwrite=False,
            threads=1,
            settings={},
        )
        for case in ("g1", "g2", "g3")
    ]

    def die_on_g2(job):  # a closure: pickled by value to the workers
        if job.case == "g2":
            os._exit(1)  # the worker process dies mid-case
        return predict_task(job)

    from distributed import Client

    with Client(scheduler, set_as_default=False) as client:
        outcomes = map_cases(die_on_g2, jobs, client=client)
    by_case = {o.case: o for o in outcomes}
    assert [o.case for o in outcomes] == ["g1", "g2", "g3"]  # job order
    killed = by_case["g2"]
    assert killed.failed and killed.stage == "predict"
    assert "KilledWorker" in killed.error and str(jobs[1].image) in killed.error
    for case in ("g1", "g3"):
        assert by_case[case].status == "predicted"
        assert (tmp_path / "p" / f"{case}.nii.gz").is_file()
    assert not (tmp_path / "p" / "g2.nii.gz").exists()


# --------------------------------------------------------------------------------------
# Resuming, evaluation, statistics


def test_restarted_run_finishes_the_rest(cohort, scheduler, tmp_path, capsys):
    pred = tmp_path / "pred"
    # a run "killed" after the train split: only those cases are finished
    first = predict_manifest(_config(cohort, split="train"), pred)
    assert first.num_predicted == 2 and first.num_failed == 0
    done = _mtimes(pred)
    # a case killed between its two files: the label map is there, the rest is not
    (pred / "g3.nii.gz").write_bytes(b"partial")
    code, stdout, _ = _cli(
        capsys, *_base(cohort, "predict"), "--out", pred, "-m", GOLDEN_CKPT,
        "--scheduler", scheduler, "--threads", "1",
    )  # fmt: skip
    assert code == 1  # the three bad cases
    assert "3 predicted, 2 skipped, 3 failed" in stdout
    assert "g1: skipped" in stdout and "g3: predicted" in stdout
    now = _mtimes(pred)
    assert all(now[name] == done[name] for name in done if name.startswith(("g1", "g2")))
    assert read_label(pred / "g3.nii.gz").array.shape == GOOD["g3"][0]  # redone, readable
    for case in BAD:
        assert json.loads((pred / f"{case}.json").read_text())["status"] == "failed"

    # --overwrite redoes finished cases (here those of the val split)
    before = _mtimes(pred)
    code, stdout, _ = _cli(
        capsys, *_base(cohort, "predict"), "--out", pred, "-m", GOLDEN_CKPT,
        "--scheduler", scheduler, "--threads", "1", "--split", "val", "--overwrite",
    )  # fmt: skip
    assert code == 0 and "2 predicted, 0 skipped, 0 failed" in stdout
    after = _mtimes(pred)
    assert after["g3.nii.gz"] > before["g3.nii.gz"] and after["g4.nii.gz"] > before["g4.nii.gz"]
    assert after["g1.nii.gz"] == before["g1.nii.gz"]


def test_evaluate_alone_reports_predict_failures_and_missing_predictions(
    cohort, plain_run, tmp_path, capsys
):
    _, plain_out = plain_run
    pred = tmp_path / "pred"
    shutil.copytree(plain_out / "predictions", pred)
    for name in ("g4.nii.gz", "g4_confidence.nii.gz", "g4.json"):
        (pred / name).unlink()
    report = tmp_path / "report"
    args = [*_base(cohort, "evaluate"), "--pred-dir", pred, "--out", report]
    code, stdout, stderr = _cli(capsys, *args, "--workers", "0", "--group-by", "site")
    assert code == 1
    assert "4 evaluated, 4 failed; report:" in stdout
    cases = pd.read_csv(report / "cases.csv", keep_default_na=False).set_index("case")
    assert cases.loc["g4", "stage"] == "evaluate" and "must exist" in cases.loc["g4", "error"]
    for case in BAD:  # the predict errors recorded in <case>.json
        assert cases.loc[case, "stage"] == "predict"
        assert str(cohort["root"] / f"{case}_t1.nii.gz") in cases.loc[case, "error"]
    assert "g4 (evaluate):" in stderr
    assert json.loads((report / "batch_report.json").read_text())["group_by"] == "site"


def test_cases_table_matches_a_hand_computation(cohort, plain_run):
    result, out = plain_run
    cases = result.cases.set_index("case")
    assert list(result.cases.columns[:8]) == [
        "case", "status", "error", "stage", "image", "prediction", "label", "seconds"
    ]  # fmt: skip
    assert list(result.cases.columns[8:10]) == ["split", "site"]
    written = pd.read_csv(out / "report" / "cases.csv").set_index("case")
    for case, (truth, spacing) in cohort["truth"].items():
        pred = read_label(out / "predictions" / f"{case}.nii.gz").array
        conf = read_image(out / "predictions" / f"{case}_confidence.nii.gz").array[0]
        voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
        ml = {name: float(np.sum(pred == k)) * voxel_ml for k, name in LABEL_NAMES.items() if k}
        expected = {f"{name}_ml": v for name, v in ml.items()}
        expected["brain_ml"] = ml["GM"] + ml["WM"]
        expected["icv_ml"] = ml["CSF"] + ml["GM"] + ml["WM"]
        expected["gm_fraction"] = ml["GM"] / (ml["GM"] + ml["WM"] + ml["CSF"])
        expected["mean_agreement"] = float(np.mean(conf[pred > 0], dtype=np.float64))
        if GOOD[case][4]:  # labelled: Dice from voxel sets, weighted by reference volume
            dice, sizes = {}, {}
            for k, name in LABEL_NAMES.items():
                if k:
                    p, t = pred == k, truth == k
                    dice[name] = 2 * np.sum(p & t) / (np.sum(p) + np.sum(t))
                    sizes[name] = np.sum(t)
                    expected[f"dice_{name}"] = dice[name]
            expected["weighted_dice"] = sum(sizes[n] * dice[n] for n in dice) / sum(sizes.values())
        else:
            assert np.isnan(cases.loc[case, "weighted_dice"])
        for key, value in expected.items():
            assert cases.loc[case, key] == pytest.approx(value, rel=1e-6), (case, key)
            assert written.loc[case, key] == pytest.approx(value, rel=1e-6), (case, key)
        assert cases.loc[case, "status"] == "ok" and cases.loc[case, "seconds"] > 0
    assert result.cases["weighted_dice"].dropna().gt(0.5).all()  # the tiny model segments
    # not a brain model: no brain mask, no volumes CSV, no TIV
    pred_dir = out / "predictions"
    assert not [
        p.name for p in pred_dir.iterdir() if p.name.endswith(("_brainmask.nii.gz", ".csv"))
    ]
    assert result.cases["tiv_ml"].isna().all() and written["GM_fraction_of_tiv"].isna().all()
    assert json.loads((pred_dir / "g1.json").read_text())["settings"]["skull_strip"] == "never"


# --------------------------------------------------------------------------------------
# Brain models: skull stripping, brain mask, TIV

# --split train: IBSR_01 and IBSR_05; deepbet runs on each (about 3 s per crop on 2 cores)
# the tiny crops are partial views, which --skull-strip auto keeps as given without a TIV;
# "always" gives them deepbet's mask, an intracranial mask with a TIV
BRAIN_ARGS = ["-m", "brain-tissue", "--workers", "0", "--threads", "1", "--split", "train"]
BRAIN_ARGS += ["--skull-strip", "always"]
BRAIN_CASES = ("IBSR_01", "IBSR_05")
# a 64 x 64 x 12 crop is no whole adult brain: predict_case warns about its volume
quiet_brain = pytest.mark.filterwarnings("ignore:input .*brain volume:UserWarning")


def _brain_base(tiny_ibsr, command: str = "run") -> list:
    return ["batch", command, "--manifest", tiny_ibsr / "tiny.csv", "--data-root", tiny_ibsr]


@pytest.fixture(scope="module")
def brain_run(tiny_ibsr, tmp_path_factory) -> dict:
    """``medseg batch run`` of the built-in brain model, ``--skull-strip always``."""
    out = tmp_path_factory.mktemp("brain") / "out"
    args = [*_brain_base(tiny_ibsr), "--out", out, *BRAIN_ARGS]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "input .*brain volume", UserWarning)
        result = _capture(args)
    return {**result, "out": out, "args": args}


def test_brain_model_writes_mask_and_volumes_and_reports_tiv(tiny_ibsr, brain_run):
    assert brain_run["code"] == 0, brain_run["stderr"]
    assert "2 predicted, 0 skipped, 0 failed; report:" in brain_run["stdout"]
    assert "IBSR_01: " in brain_run["stdout"] and " TIV " in brain_run["stdout"]
    pred, report = brain_run["out"] / "predictions", brain_run["out"] / "report"
    cases = pd.read_csv(report / "cases.csv").set_index("case")
    assert sorted(cases.index) == list(BRAIN_CASES)
    for case in BRAIN_CASES:
        for suffix in (".nii.gz", "_confidence.nii.gz", "_brainmask.nii.gz", "_volumes.csv"):
            assert (pred / f"{case}{suffix}").is_file(), suffix
        settings = json.loads((pred / f"{case}.json").read_text())["settings"]
        assert settings["skull_strip"] == "always" and settings["n4"] is False
        # by hand, with nibabel: a binary uint8 mask on the image's grid
        image = nib.load(tiny_ibsr / f"{case}_t1.nii.gz")
        mask_file = nib.load(pred / f"{case}_brainmask.nii.gz")
        mask = np.asarray(mask_file.dataobj)
        assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 1} and mask.any()
        assert mask.shape == image.shape and np.allclose(mask_file.affine, image.affine)
        voxel_ml = float(np.prod(mask_file.header.get_zooms()[:3])) / 1000.0
        tiv = np.count_nonzero(mask) * voxel_ml
        assert cases.loc[case, "tiv_ml"] == pytest.approx(tiv, rel=1e-6)
        labels = np.asarray(nib.load(pred / f"{case}.nii.gz").dataobj)
        for value, tissue in LABEL_NAMES.items():
            if value:
                fraction = np.count_nonzero(labels == value) / np.count_nonzero(mask)
                column = f"{tissue}_fraction_of_tiv"
                assert cases.loc[case, column] == pytest.approx(fraction, rel=1e-6), column
        volumes = pd.read_csv(pred / f"{case}_volumes.csv").set_index("structure")
        assert volumes.loc["TIV", "volume_ml"] == pytest.approx(tiv, abs=0.005)
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "TIV (mL)" in text and "GM / TIV" in text


def test_brain_rerun_does_nothing_and_other_skull_strip_or_n4_is_stale(brain_run, capsys):
    out = brain_run["out"]
    before = _mtimes(out)
    code, stdout, _ = _cli(capsys, *brain_run["args"])
    assert code == 0 and "0 predicted, 2 skipped, 0 failed" in stdout and "(unchanged)" in stdout
    assert _mtimes(out) == before
    for extra, now, then in (
        (["--skull-strip", "never"], "skull_strip='never'", "(skull_strip='always')"),
        (["--skull-strip", "auto"], "skull_strip='auto'", "(skull_strip='always')"),
        (["--n4"], "n4=True", "(n4=False)"),
    ):
        code, _, stderr = _cli(capsys, *brain_run["args"], *extra)
        assert code == 1 and stderr.startswith("Error: ") and stderr.count("\n") == 1
        assert "same settings" in stderr and "--overwrite" in stderr
        assert now in stderr and f"IBSR_01 {then}" in stderr, stderr
    assert _mtimes(out) == before  # nothing new


@quiet_brain
def test_brain_case_missing_its_mask_or_with_a_left_over_mask_is_redone(
    tiny_ibsr, brain_run, tmp_path, capsys
):
    pred = tmp_path / "pred"
    shutil.copytree(brain_run["out"] / "predictions", pred)
    mask = read_label(pred / "IBSR_01_brainmask.nii.gz").array
    # IBSR_01 finished but for its brain mask; IBSR_05 left only its brain mask behind
    (pred / "IBSR_01_brainmask.nii.gz").unlink()
    for suffix in (".nii.gz", "_confidence.nii.gz", "_volumes.csv", ".json"):
        (pred / f"IBSR_05{suffix}").unlink()
    code, stdout, stderr = _cli(capsys, *_brain_base(tiny_ibsr, "predict"), "--out", pred,
                                *BRAIN_ARGS)  # fmt: skip
    assert code == 0, stderr
    assert "2 predicted, 0 skipped, 0 failed" in stdout
    np.testing.assert_array_equal(read_label(pred / "IBSR_01_brainmask.nii.gz").array, mask)
    for suffix in (".nii.gz", "_confidence.nii.gz", "_volumes.csv"):
        assert (pred / f"IBSR_05{suffix}").is_file()
    assert json.loads((pred / "IBSR_05.json").read_text())["status"] == "ok"


# --------------------------------------------------------------------------------------
# Bad arguments: one line, exit 1, nothing written


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--workers", "-1"], ["--workers", ">= 0", "-1"]),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], ["--workers", "omitted"]),
        (["--group-by", "age"], ["--group-by", "site", "'age'"]),
        (["--mode", "median"], ["--mode", "median"]),
        (["--skull-strip", "sometimes"], ["--skull-strip", "'always', 'never'", "'sometimes'"]),
        (["--device", "tpu"], ["--device", "tpu"]),
        (["--split", "holdout"], ["split", "holdout"]),
        (["--threads", "0"], ["--threads", ">= 1"]),
        (["-m", "nuclei"], ["--model", "2.5D", "nuclei"]),
        (["--scheduler", "nonsense"], ["--scheduler", "nonsense"]),
    ],
)
def test_bad_arguments_fail_before_writing(cohort, tmp_path, capsys, extra, words):
    out = tmp_path / "out"
    if "--workers" not in extra and "--scheduler" not in extra:
        extra = ["--workers", "0", *extra]  # no cluster needed to find these
    code, _, stderr = _cli(capsys, *_base(cohort), "--out", out, *extra)
    assert code == 1
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1
    assert all(w in stderr for w in words), stderr
    assert not out.exists()


def test_missing_manifest_and_unreachable_scheduler(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["batch", "run", "--manifest", tmp_path / "nope.csv", "--out", out]
    code, _, stderr = _cli(capsys, *args, "--data-root", cohort["root"])
    assert code == 1 and "manifest" in stderr and "must exist" in stderr
    address = f"tcp://127.0.0.1:{_closed_port()}"
    code, _, stderr = _cli(
        capsys, *_base(cohort), "--out", out, "--scheduler", address, "--connect-timeout-s", "1"
    )
    assert code == 1 and "--scheduler" in stderr and "reachable" in stderr and address in stderr
    code, _, stderr = _cli(
        capsys, *_base(cohort, "evaluate"), "--pred-dir", tmp_path / "none", "--out", out
    )
    assert code == 1 and "--pred-dir" in stderr
    assert not out.exists()


def test_other_settings_and_foreign_reports_are_refused(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    pred = out / "predictions"
    predict_manifest(_config(cohort, split="val"), pred)
    before = _mtimes(pred)
    args = [*_base(cohort), "--out", out, "-m", GOLDEN_CKPT, "--workers", "0"]
    code, _, stderr = _cli(capsys, *args, "--fast")
    assert code == 1 and "same settings" in stderr and "fast=False" in stderr
    (out / "report").mkdir()
    (out / "report" / "cases.csv").write_text("case\nx\n")
    code, _, stderr = _cli(capsys, *args)
    assert code == 1 and "did not write" in stderr and "--overwrite" in stderr
    assert _mtimes(pred) == before  # nothing new


# --------------------------------------------------------------------------------------
# Small pieces


def test_config_validation_messages():
    with pytest.raises(ValueError, match="--workers must be an integer >= 0"):
        BatchConfig(Path("m.csv"), workers=-2)
    with pytest.raises(ValueError, match="--workers must be omitted with --scheduler"):
        BatchConfig(Path("m.csv"), workers=1, scheduler="tcp://h:1")
    with pytest.raises(ValueError, match="--device must be auto, cpu, mps, cuda or cuda:N"):
        BatchConfig(Path("m.csv"), device="gpu")
    with pytest.raises(
        ValueError, match="--skull-strip must be one of auto, always, never, got 'on'"
    ):
        BatchConfig(Path("m.csv"), skull_strip="on")
    with pytest.raises(ValueError, match="connect_timeout_s must be > 0"):
        BatchConfig(Path("m.csv"), connect_timeout_s=0)
    assert BatchConfig(Path("m.csv")).num_workers == 2
    assert BatchConfig(Path("m.csv"), scheduler="tcp://h:1").num_workers is None


def test_map_cases_in_process_records_a_raising_task():
    def boom(job):
        raise RuntimeError("out of cheese")

    job = PredictJob("c", Path("/data/c.nii.gz"), Path("/o/c.nii.gz"), "m", "cpu", None, False,
                     False, None, {})  # fmt: skip
    seen: list[CaseOutcome] = []
    [outcome] = map_cases(boom, [job], on_done=seen.append)
    assert seen == [outcome] and outcome.failed and outcome.stage == "predict"
    assert outcome.error == "RuntimeError: out of cheese (image '/data/c.nii.gz')"
    assert "out of cheese" in outcome.traceback


def test_format_outcome_lines():
    values = {"GM_ml": 600.04, "brain_ml": 1.0, "gm_fraction": 0.5, "mean_agreement": 0.95}
    ok = CaseOutcome("a", "evaluated", values=values)
    assert format_outcome(ok) == "a: GM 600.0 mL, GM fraction 0.500, agreement 0.950"
    bad = CaseOutcome("b", "failed", stage="predict", error="image 'x' must be 3D")
    assert format_outcome(bad) == "b: FAILED (predict): image 'x' must be 3D"
    assert format_outcome(CaseOutcome("c", "skipped")) == "c: skipped (finished earlier)"
    brain = CaseOutcome("d", "evaluated", values={"GM_ml": 600.0, "tiv_ml": 1450.04})
    assert format_outcome(brain) == "d: GM 600.0 mL, TIV 1450.0 mL"


def test_cli_import_stays_light():
    code = "import sys, medseg.cli; print([m for m in ('torch', 'distributed', 'pandas') if m in sys.modules])"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_brain_run_with_skull_strip_never_reports_no_tiv(tiny_ibsr, tmp_path):
    """With --skull-strip never the mask written is only the image's foreground, so the
    volumes file has no TIV row and the cohort table's TIV columns are NaN."""
    out = tmp_path / "out"
    args = [*_brain_base(tiny_ibsr), "--out", out, *BRAIN_ARGS, "--skull-strip", "never"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "input .*brain volume", UserWarning)
        result = _capture(args)
    assert result["code"] == 0, result["stderr"]
    pred = out / "predictions"
    for case in ("IBSR_01", "IBSR_05"):
        rows = (pred / f"{case}_volumes.csv").read_text().splitlines()
        assert rows[0] == "structure,volume_ml,fraction_of_tiv"
        assert not any(row.startswith("TIV,") for row in rows)
        assert (pred / f"{case}_brainmask.nii.gz").is_file()
    cases = pd.read_csv(out / "report" / "cases.csv").set_index("case")
    assert cases["tiv_ml"].isna().all() and cases["GM_fraction_of_tiv"].isna().all()
    assert cases["GM_ml"].notna().all()


def test_the_default_model_refuses_a_manifest_of_2d_images(tmp_path, capsys):
    """The 2D-model guard of medseg predict (medseg.predict.check_default_model_inputs)
    runs in batch too, before any model loads or anything is written."""
    from PIL import Image

    Image.fromarray(np.full((32, 40), 9, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("case,image,label,split\na,a.png,,test\n")
    out = tmp_path / "out"
    args = ["batch", "predict", "--manifest", tmp_path / "m.csv", "--data-root", tmp_path]
    code, _, stderr = _cli(capsys, *args, "--out", out, "--workers", "0")
    assert code == 1 and stderr.count("\n") == 1, stderr
    assert "must name a 2D model for the 2D image" in stderr and "a.png" in stderr
    assert "run medseg predict -m nuclei on 2D images" in stderr
    assert not out.exists()
