"""Hostile input: files whose headers declare more than the limit or than the file holds.

Every reader refuses them before allocating, in one line naming the file and the declared
shape, through every entry point; a folder run goes on past them; peak memory stays small.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from medseg import _limits
from medseg.checkpoint import load_checkpoint
from medseg.cli import main
from medseg.io import read_image, read_label

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"


def _nifti_header(shape, dtype=np.float32) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms((1.0,) * len(shape))
    return header.binaryblock + b"\0" * 4  # 352 bytes: vox_offset


def _png(width: int, height: int) -> bytes:
    """A real PNG signature and IHDR declaring width x height grey, with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def _tiff_claiming(path: Path, width: int, height: int) -> Path:
    """A small real TIFF whose ImageWidth / ImageLength tags are rewritten to claim more."""
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), photometric="minisblack")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        for name, value in (("ImageWidth", width), ("ImageLength", height)):
            tag = tags[name]
            fmt = "<I" if tag.dtype == 4 else "<H"
            data[tag.valueoffset : tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (file, words its refusal must contain)."""
    root = tmp_path_factory.mktemp("bombs")
    over = "must have at most 1,000,000,000 voxels"
    short = "must hold the voxels its header declares"
    out: dict[str, tuple[Path, str]] = {}
    path = root / "huge.nii"
    path.write_bytes(_nifti_header((30000, 30000, 30000)) + b"\0" * 96)  # 452 bytes
    out["nifti_over_limit"] = (path, over)
    path = root / "huge.nii.gz"
    path.write_bytes(gzip.compress(_nifti_header((2048, 2048, 2048)) + b"\0" * 1000))
    out["nifti_gz_over_limit"] = (path, over)
    path = root / "truncated.nii"
    path.write_bytes(_nifti_header((512, 512, 512)) + b"\0" * 5000)
    out["nifti_truncated"] = (path, short)
    path = root / "inflated.nii.gz"  # under the limit, but no codec expands 100 bytes to 2.9 GB
    path.write_bytes(gzip.compress(_nifti_header((900, 900, 900)) + b"\0" * 100))
    out["nifti_gz_impossible_ratio"] = (path, short)
    path = root / "huge.mgz"
    mgh = nib.freesurfer.mghformat.MGHHeader()
    mgh["dims"] = np.array([4000, 4000, 4000, 1])
    mgh["type"] = 3  # float
    path.write_bytes(gzip.compress(mgh.binaryblock + b"\0" * 64))
    out["mgh_over_limit"] = (path, over)
    for name, dims in (("huge.mha", "5000 5000 5000"), ("inflated.mha", "800 800 800")):
        path = root / name
        header = (
            f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = MET_FLOAT\n"
            "ElementDataFile = LOCAL\n"
        )
        path.write_bytes(header.encode() + b"\0" * 200)
        out[name.replace(".", "_")] = (path, over if name == "huge.mha" else short)
    path = root / "huge.nrrd"
    path.write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4000 4000 4000\n"
        + b"endian: little\nencoding: raw\n\n"
        + b"\0" * 64
    )
    out["nrrd_over_limit"] = (path, over)
    path = root / "inflated.png"
    path.write_bytes(_png(10000, 10000))  # 1e8 pixels in 120 bytes
    out["png_impossible_ratio"] = (path, short)
    out["tiff_over_limit"] = (_tiff_claiming(root / "huge.tif", 60000, 60000), over)
    return out


@pytest.mark.parametrize(
    "name",
    [
        "nifti_over_limit", "nifti_gz_over_limit", "nifti_truncated", "nifti_gz_impossible_ratio",
        "mgh_over_limit", "huge_mha", "inflated_mha", "png_impossible_ratio", "tiff_over_limit",
        "nrrd_over_limit",
    ],
)  # fmt: skip
def test_every_reader_refuses_a_bomb_before_reading(bombs, name):
    path, words = bombs[name]
    for reader in (read_image, read_label):
        with pytest.raises(ValueError) as info:
            reader(path)
        message = str(info.value)
        assert words in message and str(path) in message and "\n" not in message


def test_limit_comes_from_the_environment(bombs, monkeypatch):
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "1000")
    with pytest.raises(ValueError, match="at most 1,000 voxels"):
        read_image(GOLDEN / "brain_volume.nii.gz")
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "lots")
    with pytest.raises(ValueError, match="MEDSEG_MAX_VOXELS must be a positive number"):
        read_image(GOLDEN / "brain_volume.nii.gz")
    monkeypatch.delenv("MEDSEG_MAX_VOXELS")
    assert read_image(GOLDEN / "brain_volume.nii.gz").array.size < _limits.DEFAULT_MAX_VOXELS


def test_dicom_series_claiming_huge_frames_is_refused(shared_data, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    folder = tmp_path / "series"
    folder.mkdir()
    for i in (100, 101):
        ds = pydicom.dcmread(shared_data / "studyforrest_t1_dicom" / f"N2D_{i:04d}.dcm")
        ds.Rows, ds.Columns = 60000, 60000
        ds.save_as(folder / f"x{i}.dcm")
    with pytest.raises(ValueError, match="must have at most 1,000,000,000 voxels"):
        read_image(folder)
    assert main(["info", str(folder)]) == 1  # and through the command line, in one line


def test_batch_run_on_a_folder_goes_on_past_a_bomb(bombs, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(GOLDEN / "brain_volume.nii.gz", folder / "a_t1.nii.gz")
    shutil.copy(bombs["nifti_gz_over_limit"][0], folder / "b_t1.nii.gz")
    out = tmp_path / "out"
    args = ["batch", "run", "--manifest", str(folder), "--out", str(out)]
    assert main([*args, "-m", str(GOLDEN / "brain_tiny.pt"), "--workers", "0"]) == 1
    captured = capsys.readouterr()
    assert (out / "predictions" / "a.nii.gz").is_file()
    assert "b (predict):" in captured.err and "must have at most" in captured.err
    assert "Traceback" not in captured.err


BOMBS = [
    "nifti_over_limit", "nifti_gz_over_limit", "nifti_truncated", "nifti_gz_impossible_ratio",
    "mgh_over_limit", "huge_mha", "inflated_mha", "png_impossible_ratio", "tiff_over_limit",
    "nrrd_over_limit",
]  # fmt: skip


@pytest.mark.parametrize("name", BOMBS)
@pytest.mark.parametrize("command", ["info", "predict", "validate_label", "evaluate", "api"])
def test_bombs_through_every_entry_point_are_one_line_without_traceback(
    bombs, name, command, tmp_path, capsys
):
    path, words = bombs[name]
    if command == "api":  # the notebook API refuses as the readers do
        import medseg

        with pytest.raises(ValueError, match=words.replace("(", "\\(")):
            medseg.predict_volume(path, str(GOLDEN / "brain_tiny.pt"), device="cpu")
        return
    if command == "info":
        args = ["info", str(path)]
    elif command == "predict":
        model = str(GOLDEN / "brain_tiny.pt")
        args = ["predict", str(path), "-o", str(tmp_path / "o.nii.gz"), "-m", model]
    elif command == "evaluate":
        args = ["evaluate", str(path), str(GOLDEN / "brain_expected_seg.nii.gz")]
    else:
        manifest = tmp_path / "m.csv"
        good = GOLDEN / "brain_volume.nii.gz"
        manifest.write_text(f"case,image,label,split\nc,{good},{path},test\n")
        (tmp_path / "m.labels.json").write_text('{"labels": {"0": "bg", "1": "a"}}')
        args = ["validate", str(manifest)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.nii.gz").exists()


def test_a_folder_run_goes_on_past_a_bomb(bombs, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(GOLDEN / "brain_volume.nii.gz", folder / "a_t1.nii.gz")
    shutil.copy(bombs["nifti_gz_over_limit"][0], folder / "b_t1.nii.gz")
    shutil.copy(GOLDEN / "brain_volume.nii.gz", folder / "c_t1.nii.gz")
    out = tmp_path / "out"
    args = ["predict", str(folder), "-o", str(out), "-m", str(GOLDEN / "brain_tiny.pt")]
    assert main([*args, "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert (out / "a_t1_seg.nii.gz").is_file() and (out / "c_t1_seg.nii.gz").is_file()
    assert not (out / "b_t1_seg.nii.gz").exists()
    assert "1 of 3 input(s) failed" in captured.err and "b_t1.nii.gz" in captured.err
    assert "Traceback" not in captured.err


def test_a_folder_run_goes_on_past_any_exception(tmp_path, capsys, monkeypatch):
    """Not only the expected errors: a MemoryError (or a torch error) of one input too."""
    import medseg.predict

    real = medseg.predict.predict_case

    def predict_case(path, *args, **kwargs):
        if Path(path).name.startswith("b"):
            raise MemoryError("cannot allocate 34 GB")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(medseg.predict, "predict_case", predict_case)
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(GOLDEN / "brain_volume.nii.gz", folder / f"{name}_t1.nii.gz")
    out = tmp_path / "out"
    args = ["predict", str(folder), "-o", str(out), "-m", str(GOLDEN / "brain_tiny.pt")]
    assert main([*args, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "b_t1.nii.gz: MemoryError: cannot allocate 34 GB" in err and "Traceback" not in err
    assert (out / "a_t1_seg.nii.gz").is_file() and (out / "c_t1_seg.nii.gz").is_file()


def test_peak_memory_of_a_refused_bomb_is_small(bombs):
    """``medseg info`` on each bomb in a fresh process: its peak RSS stays under 200 MB.

    The peak is the kernel's VmHWM, reset at the child's start (``clear_refs`` 5): a child
    of this (large) test process would otherwise inherit the parent's high-water mark.
    """
    code = (
        "import sys\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "from medseg.cli import main\n"
        "status = main(['info', sys.argv[1]])\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(int(hwm.split()[1]))\n"
        "sys.exit(status)\n"
    )
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure the peak memory")
    for name in ("nifti_over_limit", "nifti_gz_over_limit", "inflated_mha", "png_impossible_ratio"):
        path, _ = bombs[name]
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 1, proc.stderr
        peak_mb = int(proc.stdout.strip().splitlines()[-1]) / 1024  # kB
        assert peak_mb < 200, (name, peak_mb)


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("optim.lr=.inf", "optim.lr must be a finite number, got inf"),
        ("optim.lr=.nan", "optim.lr must be a finite number, got nan"),
        ("optim.lr=-.inf", "optim.lr must be a finite number, got -inf"),
        ("augment.elastic_sigma=.nan", "augment.elastic_sigma must be a finite number"),
        ("optim.lr=[1,", "--set optim.lr must be a YAML value"),
        ("schedule.epochs={a: 1", "--set schedule.epochs must be a YAML value"),
        ("optim.lr='unclosed", "--set optim.lr must be a YAML value"),
    ],
)
def test_bad_set_values_are_one_line_and_write_nothing(setting, words, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "-c", "configs/usegnet_ibsr18_cpu.yaml", "--set", setting]
    assert main([*args, "--set", f"out_dir={out}"]) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def _edited_checkpoint(path: Path, edit) -> Path:
    import torch

    data = torch.load(GOLDEN / "brain_tiny.pt", weights_only=True)
    edit(data)
    torch.save(data, path)
    return path


def _nan_weights(data) -> None:
    first = next(k for k, v in data["state_dict"].items() if v.is_floating_point())
    data["state_dict"][first] = data["state_dict"][first] * float("nan")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d["model_kwargs"].update(base_features=10**6), "must hold the "),
        (lambda d: d["model_kwargs"].update(base_features=3), "the checkpoint is damaged"),
        (_nan_weights, "must hold finite weights, got NaN or Inf in 1 tensor(s)"),
        (lambda d: d.update(model_name="no-such-net"), "no-such-net"),
        (lambda d: d["model_kwargs"].update(colour="blue"), "colour"),
        (lambda d: d["patch"].update(size=-4), "must hold usable settings, got patch_size"),
        (lambda d: d["patch"].update(stride=0), "must hold usable settings, got stride"),
        (lambda d: d["patch"].update(num_slices=2), "num_slices must be a positive odd"),
        (lambda d: d["inference"].update(mode="median"), "inference mode must be one of"),
        (lambda d: d["normalization"].update(method="magic"), "normalization method must be"),
    ],
    ids=[
        "huge-width",
        "other-width",
        "nan-weights",
        "unknown-model",
        "unknown-kwarg",
        "negative-patch",
        "zero-stride",
        "even-slices",
        "unknown-mode",
        "unknown-normalisation",
    ],  # fmt: skip
)
def test_a_damaged_checkpoint_is_refused_in_one_line_naming_it(edit, words, tmp_path, capsys):
    ckpt = _edited_checkpoint(tmp_path / "bad.pt", edit)
    out = tmp_path / "o.nii.gz"
    args = ["predict", str(GOLDEN / "brain_volume.nii.gz"), "-m", str(ckpt), "-o", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and str(ckpt) in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def _tiny_run_config(tiny_ibsr: Path, tmp_path: Path, **schedule) -> Path:
    import json

    config = {
        "model": {"name": "usegnet", "kwargs": {"base_features": 4}},
        "data": {"manifest": str(tiny_ibsr / "tiny.csv"), "data_root": str(tiny_ibsr)},
        "patches": {"patches_per_epoch": 64, "class_balanced": True},
        "schedule": {"epochs": 2, "batch_size": 32, "val_every": 1, **schedule},
        "inference": {"batch_size": 256},
        "device": "cpu",
        "out_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return path


def test_resume_refuses_a_changed_run_in_one_line_and_extends_on_request(
    tiny_ibsr, tmp_path, capsys
):
    import json

    import pandas as pd

    config = _tiny_run_config(tiny_ibsr, tmp_path)
    run = tmp_path / "run"
    assert main(["train", "-c", str(config), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for changes, words in (
        (["optim.lr=0.01"], "optim.lr 0.001 -> 0.01"),
        (["schedule.epochs=5"], "schedule.epochs 2 -> 5"),
        (["model.kwargs={base_features: 8}"], "model.kwargs"),  # another width: no traceback
        (["loss.name=dice", "seed=3"], "seed 0 -> 3"),
    ):
        args = ["train", "-c", str(config), "--resume", "--quiet"]
        for item in changes:
            args += ["--set", item]
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert "--resume must continue the run in" in err and words in err, err
        assert "--extend-epochs N" in err and len(err.splitlines()) == 1
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # where and how fast it runs may change: nothing to train, the run is finished
    args = ["train", "-c", str(config), "--resume", "--quiet", "--set", "inference.batch_size=64"]
    assert main(args) == 0
    # one epoch more, recorded
    assert main(["train", "-c", str(config), "--resume", "--quiet", "--extend-epochs", "1"]) == 0
    recorded = json.loads((run / "config.json").read_text())["schedule"]
    assert recorded["epochs"] == 3 and recorded["extended_from"] == [2]
    log = pd.read_csv(run / "log.csv")
    assert log["epoch"].tolist() == [1, 2, 3] and log["planned_epochs"].tolist() == [2, 2, 3]
    assert load_checkpoint(run / "last.pt").epoch == 3
    assert main(["train", "-c", str(config), "--quiet", "--extend-epochs", "1"]) == 1
    assert "--extend-epochs needs --resume" in capsys.readouterr().err


def test_an_extended_cosine_run_follows_the_longer_curve(tiny_ibsr, tmp_path):
    """A run planned for 2 epochs (cosine, 2 steps each) ends at learning rate 0. Extended
    by 2 epochs it continues on the cosine of 8 steps: after epoch 3 (step 6) the rate is
    1e-3 * (1 + cos(6 pi / 8)) / 2, hand-computed; torch's recursive update alone keeps 0."""
    import math

    import pandas as pd

    config = _tiny_run_config(tiny_ibsr, tmp_path, val_every=2)
    run = tmp_path / "run"
    assert main(["train", "-c", str(config), "--quiet"]) == 0
    assert pd.read_csv(run / "log.csv")["lr"].iloc[-1] == 0.0
    assert main(["train", "-c", str(config), "--resume", "--quiet", "--extend-epochs", "2"]) == 0
    lrs = pd.read_csv(run / "log.csv")["lr"].tolist()
    expected = [1e-3 * (1 + math.cos(math.pi * step / 8)) / 2 for step in (6, 8)]
    assert lrs[2:] == pytest.approx(expected, abs=1e-12)
    assert lrs[2] > 1e-4


def _nifti_with(path: Path, *, pixdim=None, srow_z=None, shape=(4, 5, 6)) -> Path:
    """A small NIfTI file with raw header fields overwritten (as a careless tool writes)."""
    image = nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4))
    plain = path.with_name(path.name.removesuffix(".gz") + ".tmp.nii")
    image.to_filename(plain)
    data = bytearray(plain.read_bytes())
    plain.unlink()
    if pixdim is not None:
        struct.pack_into("<f", data, 80, pixdim)  # pixdim[1], the x voxel size
    if srow_z is not None:
        struct.pack_into("<4f", data, 312, *srow_z)  # the sform's z row
    path.write_bytes(gzip.compress(bytes(data)) if path.suffix == ".gz" else bytes(data))
    return path


def _mha_with(path: Path, *, spacing="1 1 1", dims="4 5 6") -> Path:
    header = (
        f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementSpacing = {spacing}\n"
        "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    )
    size = int(np.prod([int(d) for d in dims.split()]))
    path.write_bytes(header.encode() + np.ones(size, np.float32).tobytes())
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: _nifti_with(d / "zero.nii", pixdim=0.0), "pixdim (x, y, z) (0.0, 1.0, 1.0)"),
        (lambda d: _nifti_with(d / "neg.nii.gz", pixdim=-2.0), "pixdim (x, y, z) (-2.0, 1.0"),
        (lambda d: _nifti_with(d / "nan.nii", pixdim=float("nan")), "(nan, 1.0, 1.0)"),
        (lambda d: _nifti_with(d / "flat.nii", srow_z=(0, 0, 0, 0)), "affine must be invertible"),
        (lambda d: _nifti_with(d / "empty.nii", shape=(4, 0, 6)), "at least one voxel"),
        (lambda d: _mha_with(d / "zero.mha", spacing="0 1 1"), "ElementSpacing = 0 1 1"),
        (lambda d: _mha_with(d / "neg.mha", spacing="-2 1 1"), "ElementSpacing = -2 1 1"),
        (lambda d: _mha_with(d / "nan.mha", spacing="nan 1 1"), "ElementSpacing = nan"),
        (lambda d: _mha_with(d / "empty.mha", dims="4 0 6"), "at least one voxel"),
    ],
    ids=[
        "nifti-zero-size", "nifti-negative-size", "nifti-nan-size", "nifti-singular-affine",
        "nifti-empty-axis", "mha-zero-size", "mha-negative-size", "mha-nan-size",
        "mha-empty-axis",
    ],
)  # fmt: skip
def test_bad_grids_are_refused_naming_the_file_with_nothing_else_on_stderr(
    make, words, tmp_path, capfd
):
    path = make(tmp_path)
    model = ["-m", str(GOLDEN / "brain_tiny.pt")]
    for args in (["info", str(path)], ["predict", str(path), "-o", str(tmp_path / "o.nii.gz")]):
        assert main(args + (model if args[0] == "predict" else [])) == 1
        err = capfd.readouterr().err.strip()  # file-descriptor level: library loggers too
        assert words in err and str(path) in err, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.nii.gz").exists()


def _unwritable_folder() -> Path:
    """A folder no one may create files in, root included (sysfs); skip where there is none."""
    import tempfile

    folder = Path("/sys")
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return folder
    import os

    os.close(fd)
    os.unlink(probe)
    pytest.skip("no unwritable folder on this machine")


@pytest.mark.parametrize("where", ["unwritable", "under-a-file"])
def test_outputs_are_checked_before_any_work_naming_the_argument(where, tmp_path, capsys):
    if where == "unwritable":
        folder, words = _unwritable_folder(), "must be writable, got permission denied"
    else:
        folder, words = tmp_path / "a_file", "must be a folder, got a file"
        folder.write_text("x")
    seg = str(GOLDEN / "brain_expected_seg.nii.gz")
    commands = [
        ["predict", str(GOLDEN / "brain_volume.nii.gz"), "-m", str(GOLDEN / "brain_tiny.pt"),
         "-o", str(folder / "x.nii.gz")],
        ["evaluate", seg, seg, "-o", str(folder / "report.csv")],
        ["manifest", "init", str(GOLDEN), "-o", str(folder / "m.csv")],
    ]  # fmt: skip
    for args in commands:
        assert main(args) == 1
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert words in err and str(folder) in err and len(err.splitlines()) == 1, err
        assert ".tmp" not in err  # the output is named, not a temporary file
        assert "Dice" not in captured.out  # refused before any work


def test_output_equal_to_the_input_is_refused_even_with_overwrite(tmp_path, capsys):
    scan = tmp_path / "t1.nii.gz"
    shutil.copy(GOLDEN / "brain_volume.nii.gz", scan)
    before = scan.read_bytes()
    args = ["predict", str(scan), "-m", str(GOLDEN / "brain_tiny.pt"), "-o", str(scan)]
    assert main([*args, "--overwrite"]) == 1
    assert "-o must not be the input" in capsys.readouterr().err
    assert scan.read_bytes() == before


def test_validate_refuses_what_the_pipelines_refuse(bombs, tmp_path, capsys):
    """One case check: ids, paths inside the data root, headers within limits. What
    ``validate`` passes, ``batch``, ``evaluate`` and ``train`` accept; what it refuses, they do."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(GOLDEN / "brain_volume.nii.gz", root / "good_t1.nii.gz")
    shutil.copy(bombs["nifti_truncated"][0], root / "short_t1.nii")
    shutil.copy(bombs["nifti_gz_over_limit"][0], root / "bomb_t1.nii.gz")
    rows = [
        "case,image,label,split",
        "good,good_t1.nii.gz,,test",
        "../escape,good_t1.nii.gz,,test",  # a case id that names a file elsewhere
        "outside,../../etc/hostname,,test",  # a path that leaves the data root
        "short,short_t1.nii,,test",  # truncated
        "bomb,bomb_t1.nii.gz,,test",  # over the voxel limit
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    expected = [
        "case '../escape' must be usable as a file name",
        "image '../../etc/hostname' must stay inside the data root",
        "must hold the voxels its header declares",
        "must have at most 1,000,000,000 voxels",
    ]
    assert main(["validate", str(manifest), "--data-root", str(root), "--no-labels"]) == 1
    err = capsys.readouterr().err
    assert all(words in err for words in expected), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # the pipelines refuse the same manifest before any work (schema problems first)
    out = tmp_path / "batch"
    args = ["batch", "run", "--manifest", str(manifest), "--data-root", str(root)]
    assert (
        main([*args, "--out", str(out), "-m", str(GOLDEN / "brain_tiny.pt"), "--workers", "0"]) == 1
    )
    err = capsys.readouterr().err
    assert expected[0] in err and expected[1] in err and not out.exists()


def test_evaluate_manifest_goes_on_past_any_exception_of_one_case(tiny_ibsr, tmp_path, monkeypatch):
    import medseg.evaluation as evaluation

    pred = tmp_path / "pred"
    pred.mkdir()
    for case in ("IBSR_01", "IBSR_04", "IBSR_05"):
        shutil.copy(tiny_ibsr / f"{case}_labels.nii.gz", pred / f"{case}.nii.gz")
    real = evaluation._evaluate_pair

    def pair(pred_path, label, *, case, **kwargs):
        if case == "IBSR_04":
            raise MemoryError("cannot allocate the distance maps")
        return real(pred_path, label, case=case, **kwargs)

    monkeypatch.setattr(evaluation, "_evaluate_pair", pair)
    result = evaluation.evaluate_manifest(tiny_ibsr / "tiny.csv", pred, data_root=tiny_ibsr)
    assert result.failures == [("IBSR_04", "MemoryError: cannot allocate the distance maps")]
    assert sorted(result.rows["case"].unique()) == ["IBSR_01", "IBSR_05"]
    assert (result.rows["dice"] == 1.0).all()  # the others scored, against themselves


def test_yaml_alias_bombs_and_deep_json_are_refused_in_one_line(tmp_path, capsys):
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        levels.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    config = tmp_path / "laughs.yaml"
    config.write_text("\n".join(levels) + "\n")  # 9**10 strings once expanded
    deep = tmp_path / "deep.json"
    deep.write_text('{"training": ' + "[" * 100000 + "]" * 100000 + "}")
    cases = [
        (["train", "-c", str(config)], "must not use YAML aliases"),
        (["train", "--set", "seed=&s 1"], None),  # an anchor alone is harmless YAML
        (["train", "--set", "model.kwargs=[*x]"], "must not use YAML aliases"),
        (["validate", str(deep)], "nested too deeply"),
    ]
    for args, words in cases:
        code = main([*args, "--set", f"out_dir={tmp_path / 'run'}"] if args[0] == "train" else args)
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        if words:
            assert words in err, err


def test_a_folder_with_a_symlink_loop_is_searched_once(tmp_path):
    from medseg.discover import image_files

    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(GOLDEN / "brain_volume.nii.gz", folder / "sub" / "a_t1.nii.gz")
    (folder / "sub" / "again").symlink_to(folder, target_is_directory=True)  # a loop
    found = image_files(folder)
    assert [p.name for p in found] == ["a_t1.nii.gz"]


def test_bad_numbers_on_the_command_line_name_the_option(tmp_path, capsys):
    args = ["predict", str(GOLDEN / "brain_volume.nii.gz"), "-m", str(GOLDEN / "brain_tiny.pt")]
    assert main([*args, "-o", str(tmp_path / "o.nii.gz"), "--batch-size", "-5"]) == 1
    assert capsys.readouterr().err.strip() == "Error: --batch-size must be >= 1, got -5"


def test_tune_postprocess_leaves_out_a_failing_case_and_says_so(tmp_path, capsys, monkeypatch):
    """A multi-input command: the other validation cases are tuned on, the exit status is 1."""
    import json

    import medseg.predict
    from medseg.io import Geometry, write_image, write_label

    real = medseg.predict.segment_volume

    def segment_volume(volume, *args, what, **kwargs):
        if "'c'" in what:
            raise MemoryError("cannot allocate the probabilities")
        return real(volume, *args, what=what, **kwargs)

    monkeypatch.setattr(medseg.predict, "segment_volume", segment_volume)

    geometry = Geometry.from_spacing((1.2, 1.0, 0.9))
    image = read_image(GOLDEN / "brain_volume.nii.gz").array
    labels = read_label(GOLDEN / "brain_expected_seg.nii.gz").array
    rows = ["case,image,label,split"]
    for case in ("a", "b"):
        write_image(tmp_path / f"{case}.nii.gz", image, geometry)
        write_label(tmp_path / f"{case}_labels.nii.gz", labels, geometry)
        rows.append(f"{case},{case}.nii.gz,{case}_labels.nii.gz,val")
    write_image(tmp_path / "c.nii.gz", image, geometry)  # fails while it is predicted
    write_label(tmp_path / "c_labels.nii.gz", labels, geometry)
    rows.append("c,c.nii.gz,c_labels.nii.gz,val")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    names = {"labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"}}
    (tmp_path / "m.labels.json").write_text(json.dumps(names))
    out = tmp_path / "tuned.pt"
    args = ["tune-postprocess", str(out), "-m", str(GOLDEN / "brain_tiny.pt"), "--no-crf"]
    args += ["--manifest", str(tmp_path / "m.csv"), "--data-root", str(tmp_path)]
    assert main([*args, "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "validation cases (val): a, b" in captured.out and out.is_file()
    assert "1 validation case(s) failed and were left out:" in captured.err
    assert "c: MemoryError: cannot allocate the probabilities" in captured.err
    assert "Traceback" not in captured.err
    assert load_checkpoint(out).extra["postprocess"]["tuning"]["cases"] == ["a", "b"]


def test_headers_that_keep_their_voxels_elsewhere_are_not_judged_by_their_size(tmp_path):
    """No false alarm: a small NRRD / MetaImage header whose data file holds the voxels."""
    np.ones((64, 64, 64), np.float32).tofile(tmp_path / "data.raw")  # 1 MB, header 100 bytes
    (tmp_path / "h.nrrd").write_text(
        "NRRD0004\ntype: float\ndimension: 3\nsizes: 64 64 64\nendian: little\n"
        "encoding: raw\ndata file: data.raw\n\n"
    )
    (tmp_path / "h.mha").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 64 64 64\nElementType = MET_FLOAT\n"
        "ElementDataFile = data.raw\n"
    )
    for name in ("h.nrrd", "h.mha"):
        assert read_image(tmp_path / name).array.shape == (1, 64, 64, 64)
