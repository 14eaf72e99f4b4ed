"""DICOM-SEG output (the optional ``dicom`` extra): masks read back with highdicom and
pydicom equal the label map, and the SEG references the real source series it came from."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg import dicom_seg
from medseg.cli import main
from medseg.io import Geometry, dicom_series_files, read_image, read_label

SLICES = range(186, 192)  # 6 sagittal slices of the real studyforrest series


@pytest.fixture(scope="module")
def series(shared_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "t1_series"
    folder.mkdir()
    for i in SLICES:
        shutil.copy(shared_data / "studyforrest_t1_dicom" / f"N2D_{i:04d}.dcm", folder)
    return folder


def _labels(image: np.ndarray) -> np.ndarray:
    """A made-up 3-class label map from intensity quantiles (uint8 (Z, Y, X))."""
    return np.digitize(image, np.percentile(image, [50, 75, 90])).astype(np.uint8)


def test_seg_frames_follow_the_source_images_by_position(series, tmp_path):
    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    volume = read_image(series)
    labels = _labels(volume.array[0])
    files = dicom_series_files(series)
    shuffled = [files[i] for i in (3, 0, 5, 1, 4, 2)]  # any order: frames found by position
    names = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}
    path = dicom_seg.write_dicom_seg(
        tmp_path / "x_seg.dcm", labels, volume.geometry, shuffled, label_names=names, model="m"
    )
    back = dicom_seg.read_dicom_seg_labels(path, files)  # frames in the series' slice order
    np.testing.assert_array_equal(back, labels)

    seg = hd.seg.segread(str(path))
    source = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.StudyInstanceUID == source.StudyInstanceUID  # the scan's study
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID  # a new series in it
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.PatientID == source.PatientID and seg.PatientName == source.PatientName
    (ref,) = seg.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == source.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in ref.ReferencedInstanceSequence}
    uids = {pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID for f in files}
    assert referenced == uids
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["CSF", "GM", "WM"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "65216001"
    # pydicom alone, frame by frame: segment k's frames are the mask of label value k
    raw = pydicom.dcmread(str(path))
    frames = raw.pixel_array  # (segments x slices, rows, cols), binary
    order = [
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for item in raw.PerFrameFunctionalGroupsSequence
    ]
    segment_of = [
        int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for item in raw.PerFrameFunctionalGroupsSequence
    ]
    slice_of = {
        pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID: k
        for k, f in enumerate(files)
    }
    for frame, uid, number in zip(frames, order, segment_of, strict=True):
        np.testing.assert_array_equal(frame > 0, labels[slice_of[uid]] == number)


def test_label_map_off_the_grid_or_unnamed_is_refused(series, tmp_path):
    pytest.importorskip("highdicom")
    volume = read_image(series)
    labels = _labels(volume.array[0])
    files = dicom_series_files(series)
    shifted = volume.geometry.affine.copy()
    shifted[:3, 3] += 0.3 * shifted[:3, 0]  # a third of a voxel along x
    moved = Geometry(volume.geometry.spacing_mm, shifted)
    with pytest.raises(ValueError, match="must lie on the DICOM series' grid"):
        names = {1: "CSF", 2: "GM", 3: "WM"}
        dicom_seg.write_dicom_seg(tmp_path / "a.dcm", labels, moved, files, label_names=names)
    with pytest.raises(ValueError, match="must have names for DICOM-SEG, got unnamed \\[3\\]"):
        dicom_seg.write_dicom_seg(
            tmp_path / "a.dcm", labels, volume.geometry, files, label_names={1: "a", 2: "b"}
        )
    assert not (tmp_path / "a.dcm").exists()


@pytest.mark.slow
def test_predict_dicom_series_to_dicom_seg_through_the_cli(series, tiny_usegnet, tmp_path, capsys):
    pytest.importorskip("highdicom")
    model = str(tiny_usegnet(tmp_path / "tiny.pt", size=16, stride=16))
    common = ["-m", model, "--skull-strip", "never", "--device", "cpu"]
    assert main(["predict", str(series), "-o", str(tmp_path / "nifti"), *common]) == 0
    out = tmp_path / "seg"
    args = ["predict", str(series), "-o", str(out), *common, "--output-format", "dicom-seg"]
    assert main(args) == 0
    assert f"wrote {out / 't1_series_seg.dcm'}" in capsys.readouterr().out
    expected = read_label(tmp_path / "nifti" / "t1_series_seg.nii.gz").array
    back = dicom_seg.read_dicom_seg_labels(out / "t1_series_seg.dcm", dicom_series_files(series))
    values = [v for v in np.unique(expected) if v]  # segment k = k-th label value present
    remapped = np.zeros_like(expected)
    for number, value in enumerate(values, start=1):
        remapped[expected == value] = number
    np.testing.assert_array_equal(back, remapped)
    assert main(args) == 1  # no overwrite without --overwrite
    assert "must not exist" in capsys.readouterr().err
    # a named .dcm output
    named = tmp_path / "named.dcm"
    assert (
        main(["predict", str(series), "-o", str(named), *common, "--output-format", "dicom-seg"])
        == 0
    )
    assert named.is_file()


def test_dicom_seg_errors_are_one_line(
    series, tiny_usegnet, tmp_path, capsys, monkeypatch, tiny_ibsr
):
    model = str(tiny_usegnet(tmp_path / "tiny.pt", size=16, stride=16))
    nifti = str(tiny_ibsr / "IBSR_01_t1.nii.gz")
    args = ["predict", nifti, "-o", str(tmp_path), "-m", model, "--output-format", "dicom-seg"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "--output-format dicom-seg needs a DICOM series (a folder) as input" in err
    assert len(err.splitlines()) == 1
    monkeypatch.setattr(dicom_seg, "available", lambda: False)  # as without the extra
    args[1] = str(series)
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "needs the highdicom package" in err and "pip install 'medseg[dicom]'" in err
    assert list(tmp_path.glob("*.dcm")) == []
