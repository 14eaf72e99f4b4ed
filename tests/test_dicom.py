"""DICOM folders as scanners write them: any file names, several series per folder.

The real series is the studyforrest T1 in ../shared/data (384 files ``N2D_0001.dcm`` ...);
the tests copy (some of) its files under suffix-less names into temporary folders and
add series written here with SimpleITK, independent of medseg's own writer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import medseg._dicom
from medseg.cli import main
from medseg.io import (
    DicomSeries,
    Geometry,
    is_dicom_folder,
    list_dicom_series,
    read_image,
    read_label,
    read_volume_info,
    write_image,
)

FORREST_UID = "1.2.826.0.1.3680043.2.1143.515404396022363061013111326823367652"
OTHER_UID = "1.2.826.0.1.3680043.2.1125.7.7"
SUBSET = slice(180, 192)  # 12 consecutive slices of the real series, in slice order
OTHER_SHAPE = (5, 6, 7)  # (Z, Y, X) of the series written here


@pytest.fixture(scope="module")
def forrest(shared_data) -> Path:
    folder = shared_data / "studyforrest_t1_dicom"
    if not folder.is_dir():
        pytest.skip(f"real DICOM series not found at {folder}")
    return folder


@pytest.fixture(scope="module")
def forrest_files(forrest) -> list[Path]:
    """The real series' files in slice order (GDCM's sort, read without medseg)."""
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(forrest), FORREST_UID)
    assert len(names) == 384
    return [Path(n) for n in names]


@pytest.fixture(scope="module")
def forrest_volume(forrest):
    return read_image(forrest)


def _write_series(
    folder: Path, zyx: np.ndarray, *, uid: str, number: int | None, description: str
) -> None:
    """One file per z slice, named ``<uid>.<k>`` (no suffix, as some scanners name them)."""
    folder.mkdir(exist_ok=True)
    itk_image = sitk.GetImageFromArray(zyx.astype(np.int16))
    itk_image.SetSpacing((0.5, 0.75, 2.0))  # (x, y, z)
    itk_image.SetOrigin((-10.0, 20.0, 5.0))  # LPS
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # no suffix to choose the format from
    writer.KeepOriginalImageUIDOn()
    for k in range(itk_image.GetDepth()):
        plane = itk_image[:, :, k]
        tags = {
            "0020|000e": uid,  # series instance UID
            "0008|103e": description,  # series description
            "0008|0060": "OT",  # modality
            "0020|0037": "1\\0\\0\\0\\1\\0",  # image orientation (patient)
            "0020|0032": "\\".join(
                str(v) for v in itk_image.TransformIndexToPhysicalPoint((0, 0, k))
            ),
            "0020|0013": str(k + 1),  # instance number
        }
        if number is not None:
            tags["0020|0011"] = str(number)  # series number
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{uid}.{k + 1}"))
        writer.Execute(plane)


def _other_array() -> np.ndarray:
    return np.arange(np.prod(OTHER_SHAPE), dtype=np.int16).reshape(OTHER_SHAPE)  # 0..209


@pytest.fixture()
def mixed(tmp_path, forrest_files) -> Path:
    """12 real slices renamed ``IM0012`` .. ``IM0001`` (name order is the reverse of slice
    order) plus a 5-slice series 7 'mask' with dotted names: two series, no suffixes."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    subset = forrest_files[SUBSET]
    for i, source in enumerate(subset):
        shutil.copyfile(source, folder / f"IM{len(subset) - i:04d}")
    _write_series(folder, _other_array(), uid=OTHER_UID, number=7, description="mask")
    return folder


# --------------------------------------------------------------------------------------
# is_dicom_folder: by content, not by name


def test_is_dicom_folder_by_content(tmp_path, forrest, mixed):
    (tmp_path / "empty").mkdir()
    (tmp_path / "niftis").mkdir()
    (tmp_path / "niftis" / "a.nii.gz").write_bytes(b"\x1f\x8b" + bytes(300))
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "DICOMDIR").write_bytes(bytes(128) + b"DICM" + bytes(64))
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "IM0001").write_bytes(b"DICM")  # too short for the preamble

    assert is_dicom_folder(forrest) and is_dicom_folder(mixed) and is_dicom_folder(str(mixed))
    assert not is_dicom_folder(tmp_path / "empty")
    assert not is_dicom_folder(tmp_path / "niftis")
    assert not is_dicom_folder(tmp_path / "index")  # a DICOMDIR index holds no image
    assert not is_dicom_folder(tmp_path / "short")
    assert not is_dicom_folder(mixed / "IM0001")  # a file is not a folder
    assert not is_dicom_folder(tmp_path / "missing")


def test_is_dicom_folder_opens_a_bounded_number_of_files(tmp_path, monkeypatch):
    for i in range(200):
        (tmp_path / f"note{i}.txt").write_text("not DICOM")
    opened = []

    def counting(path: Path) -> bool:
        opened.append(path)
        return False

    monkeypatch.setattr(medseg._dicom, "is_dicom_file", counting)
    assert not is_dicom_folder(tmp_path)
    assert len(opened) == medseg._dicom.MAX_PROBED_FILES < 200


# --------------------------------------------------------------------------------------
# The real series under other names


def test_real_series_without_suffix_reads_identically(tmp_path, forrest_files, forrest_volume):
    folder = tmp_path / "scanner"
    folder.mkdir()
    for i, source in enumerate(reversed(forrest_files)):  # names unrelated to slice order
        shutil.copyfile(source, folder / f"1.3.12.2.1107.5.2.43.{i + 1}")

    copy = read_image(folder)

    assert copy.array.shape == forrest_volume.array.shape == (1, 384, 384, 274)
    np.testing.assert_array_equal(copy.array, forrest_volume.array)
    assert copy.geometry == forrest_volume.geometry  # spacing and affine exactly
    [series] = list_dicom_series(folder)
    assert (series.uid, series.number, series.description) == (FORREST_UID, 401, "anat-T1w")
    assert (series.modality, series.num_files, series.rows, series.columns) == ("MR", 384, 384, 274)


# --------------------------------------------------------------------------------------
# Several series in one folder


def test_list_dicom_series(mixed):
    found = list_dicom_series(mixed)

    assert [s.number for s in found] == [7, 401]  # sorted by SeriesNumber
    other, t1 = found
    assert isinstance(t1, DicomSeries)
    assert (t1.uid, t1.description, t1.modality, t1.num_files) == (
        FORREST_UID,
        "anat-T1w",
        "MR",
        12,
    )
    assert (t1.rows, t1.columns) == (384, 274)
    assert (other.uid, other.description, other.modality, other.num_files) == (
        OTHER_UID,
        "mask",
        "OT",
        5,
    )
    assert (other.rows, other.columns) == OTHER_SHAPE[1:]
    assert [p.name for p in other.files] == [f"{OTHER_UID}.{k}" for k in range(1, 6)]
    assert t1.summary() == f"401 'anat-T1w' (12 files, uid {FORREST_UID})"


def test_several_series_without_a_choice_is_an_error(mixed):
    listing = (
        rf"7 'mask' \(5 files, uid {OTHER_UID}\), "
        rf"401 'anat-T1w' \(12 files, uid {FORREST_UID}\)"
    )
    with pytest.raises(
        ValueError,
        match=rf"image '.*mixed' must hold one DICOM series or name one, got 2 series: "
        rf"{listing}; choose one with --series UID\|NUMBER",
    ):
        read_image(mixed)
    with pytest.raises(ValueError, match="label '.*mixed' must hold one DICOM series"):
        read_label(mixed)
    with pytest.raises(ValueError, match="got 2 series"):
        read_volume_info(mixed)


@pytest.mark.parametrize("series", [401, "401", FORREST_UID])
def test_choose_the_real_series(mixed, series, forrest_volume):
    image = read_image(mixed, series=series)

    # the 12 copied slices, in slice order although their names run backwards
    np.testing.assert_array_equal(image.array, forrest_volume.array[:, SUBSET])
    full = forrest_volume.geometry
    assert image.geometry.spacing_mm[1:] == full.spacing_mm[1:]
    np.testing.assert_allclose(image.geometry.affine[:3, :3], full.affine[:3, :3], atol=1e-4)
    first_slice = full.affine @ [0, 0, SUBSET.start, 1]  # voxel (x, y, z) of slice 180
    np.testing.assert_allclose(image.geometry.affine[:, 3], first_slice, atol=1e-4)


@pytest.mark.parametrize("series", [7, " 7", OTHER_UID])
def test_choose_the_written_series(mixed, series):
    image = read_image(mixed, series=series)
    label = read_label(mixed, series=series)
    info = read_volume_info(mixed, series=series)

    np.testing.assert_array_equal(image.array[0], _other_array())
    expected = np.diag([-0.5, -0.75, 2.0, 1.0])  # LPS -> RAS flips x and y
    expected[:3, 3] = [10.0, -20.0, 5.0]
    np.testing.assert_allclose(image.geometry.affine, expected, atol=1e-6)
    assert label.array.dtype == np.uint8 and label.array.shape == OTHER_SHAPE
    assert (info.spatial_shape, info.num_channels, info.num_timepoints) == (OTHER_SHAPE, 1, 1)


def test_one_series_needs_no_choice_but_a_wrong_one_fails(tmp_path):
    folder = tmp_path / "one"
    _write_series(folder, _other_array(), uid=OTHER_UID, number=None, description="")

    assert read_image(folder).array.shape == (1, *OTHER_SHAPE)
    [series] = list_dicom_series(folder)
    assert series.number is None and series.summary() == f"- '' (5 files, uid {OTHER_UID})"
    with pytest.raises(
        ValueError,
        match=rf"series 3 must be the SeriesInstanceUID or SeriesNumber of a series in image "
        rf"'.*one', got no match among 1 series: - '' \(5 files, uid {OTHER_UID}\)",
    ):
        read_image(folder, series=3)


def test_series_that_matches_nothing(mixed):
    with pytest.raises(
        ValueError, match=r"series '1\.2\.3' must be the SeriesInstanceUID .*got no match among 2"
    ):
        read_image(mixed, series="1.2.3")
    with pytest.raises(ValueError, match=r"series 99 must be .*7 'mask' .*401 'anat-T1w'"):
        read_image(mixed, series=99)


def test_series_number_shared_by_two_series(tmp_path):
    folder = tmp_path / "two"
    _write_series(folder, _other_array(), uid="1.2.3.4.1", number=7, description="a")
    _write_series(folder, _other_array()[:3], uid="1.2.3.4.2", number=7, description="b")

    with pytest.raises(
        ValueError,
        match=r"series 7 must name one series of image .*got 2 series with "
        r"SeriesNumber 7: .*; choose one by its UID",
    ):
        read_image(folder, series=7)
    assert read_image(folder, series="1.2.3.4.2").array.shape == (1, 3, 6, 7)


def test_series_argument_type_and_non_dicom_input(tmp_path):
    folder = tmp_path / "one"
    _write_series(folder, _other_array(), uid=OTHER_UID, number=7, description="mask")
    nifti = write_image(
        tmp_path / "a.nii.gz", np.zeros((1, 2, 3, 4), np.float32), Geometry.from_spacing((1, 1, 1))
    )

    with pytest.raises(TypeError, match=r"series must be a SeriesInstanceUID .*got float 7\.0"):
        read_image(folder, series=7.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got bool True"):
        read_label(folder, series=True)
    with pytest.raises(
        ValueError, match=r"series must be None for image '.*a\.nii\.gz', which is a NIfTI file"
    ):
        read_image(nifti, series=7)


# --------------------------------------------------------------------------------------
# Folders and files that are not a DICOM series


def test_folder_errors_name_what_is_there(tmp_path):
    (tmp_path / "cd").mkdir()
    (tmp_path / "cd" / "DICOMDIR").write_bytes(bytes(128) + b"DICM" + bytes(64))
    (tmp_path / "cd" / "DICOM").mkdir()
    (tmp_path / "nested" / "study").mkdir(parents=True)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "IM0001").write_bytes(bytes(128) + b"DICM" + b"\xff" * 64)

    with pytest.raises(
        ValueError, match="must be a folder holding a DICOM series.*DICOMDIR index: pass the sub"
    ):
        read_image(tmp_path / "cd")
    with pytest.raises(ValueError, match=r"no DICOM file \(0 file\(s\), 1 subfolder\(s\).*sub"):
        read_image(tmp_path / "nested")
    with pytest.raises(ValueError, match="got a folder with DICOM files but no image series"):
        read_image(tmp_path / "broken")


def test_a_dicom_file_without_suffix_points_to_its_folder(mixed):
    with pytest.raises(
        ValueError, match=r"got 'no suffix'; it is a DICOM file: pass the folder that holds"
    ):
        read_image(mixed / "IM0001")
    with pytest.raises(ValueError, match=r"got '\.1'; it is a DICOM file: pass the folder"):
        read_image(mixed / f"{OTHER_UID}.1")


def test_list_dicom_series_errors(tmp_path, mixed):
    (tmp_path / "empty").mkdir()

    assert list_dicom_series(tmp_path / "empty") == []
    with pytest.raises(FileNotFoundError, match=r"folder '.*missing' must exist"):
        list_dicom_series(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"folder '.*IM0001' must be a folder of DICOM files"):
        list_dicom_series(mixed / "IM0001")


# --------------------------------------------------------------------------------------
# Command line: medseg info lists the series, medseg predict takes suffix-less folders


def _run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_real_series(forrest, capsys):
    code, stdout, _ = _run(["info", str(forrest)], capsys)

    assert code == 0
    assert "shape:       (1, 384, 384, 274)  (C, Z, Y, X)" in stdout
    # its rows run along +x of LPS (left), its columns along +y (posterior), slices upwards
    assert "orientation: LPS  (array X, Y, Z increase towards left, posterior, superior" in stdout
    assert "oblique, up to 7.7 deg" in stdout  # the slices are tilted, nearest axes given


def test_info_lists_several_series_and_shows_one(mixed, capsys):
    code, stdout, _ = _run(["info", str(mixed)], capsys)

    assert code == 0
    assert "2 DICOM series; show one with --series UID|NUMBER" in stdout
    lines = stdout.splitlines()
    assert "7  'mask'  OT, 5 files of 6 x 7, uid " + OTHER_UID in lines[2]
    assert "401  'anat-T1w'  MR, 12 files of 384 x 274, uid " + FORREST_UID in lines[3]

    code, stdout, _ = _run(["info", str(mixed), "--series", "7"], capsys)
    assert code == 0 and "(1, 5, 6, 7)" in stdout and "orientation: LPS" in stdout
    code, stdout, _ = _run(["info", str(mixed), "--series", FORREST_UID], capsys)
    assert code == 0 and "(1, 12, 384, 274)" in stdout

    code, _, err = _run(["info", str(mixed), "--series", "8"], capsys)
    assert code == 1 and err.startswith("Error: series '8' must be the SeriesInstanceUID")
    assert len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_usegnet) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return tiny_usegnet(path, size=8, stride=8)


def test_predict_takes_a_folder_of_suffixless_dicom_files(tmp_path, checkpoint, capsys):
    series = tmp_path / "1.2.840.113619.2.55"  # a folder named like a UID
    zyx = np.arange(5 * 16 * 20, dtype=np.int16).reshape(5, 16, 20) % 300
    _write_series(series, zyx, uid=OTHER_UID, number=3, description="t1")
    out = tmp_path / "out"

    code, stdout, err = _run(
        ["predict", str(series), "-m", str(checkpoint), "-o", str(out), "--device", "cpu"],
        capsys,
    )

    assert code == 0, err
    seg = read_label(out / "1.2.840.113619.2.55_seg.nii.gz")
    assert seg.array.shape == zyx.shape
    assert seg.geometry.same_as(read_image(series).geometry, atol_mm=1e-5)
    assert "wrote" in stdout


def test_predict_refuses_to_guess_a_series(mixed, tmp_path, checkpoint, capsys):
    args = ["predict", str(mixed), "-m", str(checkpoint), "-o", str(tmp_path / "out")]
    code, _, err = _run([*args, "--device", "cpu"], capsys)

    assert code == 1 and "got 2 series: 7 'mask'" in err and "--series UID|NUMBER" in err
