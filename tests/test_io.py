"""Tests for medseg.io: axis order, geometry round trips per format, and bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from medseg.io import (
    SUPPORTED_SUFFIXES,
    Geometry,
    Volume,
    atomic_output,
    axial_axis,
    check_same_grid,
    read_image,
    read_instances,
    read_label,
    read_volume_info,
    split_suffix,
    write_image,
    write_instances,
    write_label,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IBSR = DATA / "ibsr18"

# Different lengths per axis, so that any swapped axes fail (ARCHITECTURE.md section 11).
SHAPE = (5, 6, 7)  # (Z, Y, X)


def _unique_label() -> np.ndarray:
    """uint8 (5, 6, 7) with every voxel different (210 values)."""
    return np.arange(np.prod(SHAPE), dtype=np.uint8).reshape(SHAPE)


def _unique_image(num_channels: int = 1) -> np.ndarray:
    """float32 (C, 5, 6, 7) with every voxel different, not all integers."""
    size = num_channels * int(np.prod(SHAPE))
    return (np.arange(size, dtype=np.float32) * 0.25 - 10).reshape(num_channels, *SHAPE)


def _oblique_geometry() -> Geometry:
    """Rotated 30 degrees about world z, anisotropic, shifted: catches any axis / sign slip."""
    angle = np.deg2rad(30.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.8, 1.5])  # voxel sizes x, y, z
    affine[:3, 3] = [-12.5, 30.25, 4.0]
    return Geometry((1.5, 0.8, 0.7), affine)


def _names(folder: Path) -> list[str]:
    """Every entry in ``folder`` (hidden temporary files included)."""
    return sorted(p.name for p in folder.iterdir())


def _assert_same_geometry(got: Geometry, expected: Geometry, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(got.spacing_mm, expected.spacing_mm, rtol=0, atol=atol)
    np.testing.assert_allclose(got.affine, expected.affine, rtol=0, atol=atol)


# --------------------------------------------------------------------------------------
# Axis order against each library's own convention


def test_nifti_xyz_maps_to_zyx(tmp_path: Path) -> None:
    xyz = np.arange(7 * 6 * 5, dtype=np.int16).reshape(7, 6, 5)  # nibabel (x, y, z)
    affine = np.diag([0.5, 0.75, 2.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    nib.Nifti1Image(xyz, affine).to_filename(tmp_path / "a.nii.gz")

    image = read_image(tmp_path / "a.nii.gz")

    assert image.array.shape == (1, 5, 6, 7)
    assert image.array.dtype == np.float32
    for i, j, k in [(0, 0, 0), (6, 0, 0), (1, 2, 3), (6, 5, 4), (3, 1, 0)]:
        assert image.array[0, k, j, i] == xyz[i, j, k]
    assert image.geometry.spacing_mm == (2.0, 0.75, 0.5)
    np.testing.assert_array_equal(image.geometry.affine, affine)
    assert image.spatial_shape == (5, 6, 7)


def test_nifti_4d_is_channels_last_in_file(tmp_path: Path) -> None:
    xyzc = np.arange(7 * 6 * 5 * 2, dtype=np.float32).reshape(7, 6, 5, 2)
    nib.Nifti1Image(xyzc, np.eye(4)).to_filename(tmp_path / "a.nii")

    image = read_image(tmp_path / "a.nii")

    assert image.array.shape == (2, 5, 6, 7)
    assert image.array[1, 4, 3, 2] == xyzc[2, 3, 4, 1]


def test_nifti_trailing_singleton_label(tmp_path: Path) -> None:
    xyz1 = np.arange(7 * 6 * 5, dtype=np.int16).reshape(7, 6, 5, 1)  # as some IBSR copies
    nib.Nifti1Image(xyz1, np.eye(4)).to_filename(tmp_path / "a.nii.gz")

    label = read_label(tmp_path / "a.nii.gz")

    assert label.array.shape == (5, 6, 7)
    assert label.array.dtype == np.uint8
    assert label.array[4, 3, 2] == xyz1[2, 3, 4, 0]


@pytest.mark.parametrize("trailing", [(1,), (1, 1), (1, 1, 1)])
def test_nifti_trailing_singleton_axes_are_one_channel(tmp_path: Path, trailing: tuple) -> None:
    xyz = np.arange(7 * 6 * 5, dtype=np.int16).reshape(7, 6, 5)  # nibabel (x, y, z)
    affine = np.diag([0.5, 0.75, 2.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    nib.Nifti1Image(xyz.reshape(*xyz.shape, *trailing), affine).to_filename(tmp_path / "a.nii.gz")

    image = read_image(tmp_path / "a.nii.gz")
    info = read_volume_info(tmp_path / "a.nii.gz")

    assert image.array.shape == (1, 5, 6, 7)
    np.testing.assert_array_equal(image.array[0], xyz.transpose(2, 1, 0))
    assert image.geometry.spacing_mm == info.geometry.spacing_mm == (2.0, 0.75, 0.5)
    np.testing.assert_array_equal(image.geometry.affine, affine)
    assert (info.spatial_shape, info.num_channels, info.num_timepoints) == ((5, 6, 7), 1, 1)
    assert read_label(tmp_path / "a.nii.gz").array.shape == (5, 6, 7)


def _nifti_4d(path: Path, shape: tuple, *, units=None, step=None, intent=None) -> Path:
    """A 4D/5D NIfTI written with nibabel; ``step`` is pixdim[4], ``units`` (space, time)."""
    image = nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), np.eye(4))
    if units is not None:
        image.header.set_xyzt_units(*units)
    if step is not None:
        image.header.set_zooms((1.0, 1.0, 1.0, step, *image.header.get_zooms()[4:]))
    if intent is not None:
        image.header.set_intent(intent)
    image.to_filename(path)
    return path


@pytest.mark.parametrize(
    ("shape", "header", "num_timepoints"),
    [
        ((7, 6, 5, 4), {"units": ("mm", "sec"), "step": 2.0}, 4),  # fMRI as converters write it
        ((7, 6, 5, 4), {"units": ("mm", "msec"), "step": 800.0}, 4),
        ((7, 6, 5, 4), {"step": 2.5}, 4),  # a TR without a unit
        ((7, 6, 5, 4, 1), {"units": ("mm", "sec"), "step": 2.0}, 4),  # t with a singleton 5th axis
        ((7, 6, 5, 1, 4), {"intent": "time series"}, 4),  # the time series as a vector
        ((7, 6, 5, 4), {}, 1),  # nibabel's default 4D image (pixdim[4] 1): channels
        ((7, 6, 5, 3), {"units": ("mm", "unknown"), "step": 0.0}, 1),
        ((7, 6, 5, 4), {"units": ("mm", "hz"), "step": 2.0}, 1),  # a spectrum
        ((7, 6, 5, 3), {"units": ("mm", "sec"), "intent": "vector"}, 1),  # vector data
        ((7, 6, 5, 1, 3), {"units": ("mm", "sec"), "intent": "vector"}, 1),
        ((7, 6, 5, 1), {"units": ("mm", "sec"), "step": 2.0}, 1),  # one time point: 3D
    ],
)
def test_nifti_time_series_from_header(
    tmp_path: Path, shape: tuple, header: dict, num_timepoints: int
) -> None:
    path = _nifti_4d(tmp_path / "a.nii.gz", shape, **header)

    info = read_volume_info(path)
    image = read_image(path)  # read as before: the 4th (or vector) axis as channels

    assert info.num_timepoints == num_timepoints
    assert info.is_time_series == (num_timepoints > 1)
    channels = max(shape[3:])
    assert info.num_channels == channels and image.array.shape == (channels, 5, 6, 7)


def test_multichannel_nifti_written_by_medseg_is_not_a_time_series(tmp_path: Path) -> None:
    fmri = read_volume_info(
        _nifti_4d(tmp_path / "bold.nii.gz", (7, 6, 5, 4), units=("mm", "sec"), step=2.0)
    )
    assert fmri.num_timepoints == 4
    moved = fmri.geometry.affine.copy()
    moved[:3, 3] = [5.0, -6.0, 7.0]  # the source header's affine no longer applies
    geometry = Geometry(fmri.geometry.spacing_mm, moved, fmri.geometry.header)

    out = write_image(tmp_path / "probs.nii.gz", _unique_image(num_channels=3), geometry)

    info = read_volume_info(out)
    assert (info.num_channels, info.num_timepoints) == (3, 1)
    written = nib.load(out)
    assert written.header.get_xyzt_units() == ("mm", "unknown")
    assert written.header["pixdim"][4] == 1.0
    np.testing.assert_allclose(written.affine, moved)


def test_nifti_micron_units_become_mm(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((7, 6, 5), np.float32), np.diag([500.0, 500.0, 2000.0, 1]))
    image.header.set_xyzt_units("micron")
    image.to_filename(tmp_path / "um.nii")

    volume = read_label(tmp_path / "um.nii")
    write_label(tmp_path / "out.nii", volume.array, volume.geometry)

    assert volume.geometry.spacing_mm == (2.0, 0.5, 0.5)
    np.testing.assert_allclose(volume.geometry.affine.diagonal(), [0.5, 0.5, 2.0, 1.0])
    written = nib.load(tmp_path / "out.nii")
    assert written.header.get_xyzt_units()[0] == "micron"
    np.testing.assert_allclose(written.affine, image.affine)


def test_nifti_moved_geometry_keeps_header_codes(tmp_path: Path) -> None:
    source = nib.Nifti1Image(np.zeros((7, 6, 5), np.int16), np.diag([0.5, 0.75, 2.0, 1.0]))
    source.header.set_qform(source.affine, code=1)
    source.header.set_sform(source.affine, code=4)
    source.to_filename(tmp_path / "source.nii.gz")
    read = read_label(tmp_path / "source.nii.gz")
    moved = read.geometry.affine.copy()
    moved[:3, 3] = [5.0, -6.0, 7.0]

    write_label(
        tmp_path / "moved.nii.gz",
        read.array,
        Geometry(read.geometry.spacing_mm, moved, read.geometry.header),
    )

    written = nib.load(tmp_path / "moved.nii.gz")
    np.testing.assert_allclose(written.affine, moved)
    np.testing.assert_allclose(written.get_qform(), moved)
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 4)


def test_simpleitk_xyz_spacing_and_lps(tmp_path: Path) -> None:
    zyx = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    itk_image = sitk.GetImageFromArray(zyx)
    itk_image.SetSpacing((0.5, 0.75, 2.0))  # (x, y, z)
    itk_image.SetOrigin((1.0, 2.0, 3.0))  # LPS
    sitk.WriteImage(itk_image, str(tmp_path / "a.mha"))

    image = read_image(tmp_path / "a.mha")

    np.testing.assert_array_equal(image.array[0], zyx)
    assert image.geometry.spacing_mm == (2.0, 0.75, 0.5)
    expected = np.diag([-0.5, -0.75, 2.0, 1.0])  # LPS -> RAS flips x and y
    expected[:3, 3] = [-1.0, -2.0, 3.0]
    np.testing.assert_allclose(image.geometry.affine, expected)
    # The affine maps voxel (x, y, z) = array index reversed to the same point as ITK.
    k, j, i = 4, 3, 2
    lps = np.array(itk_image.TransformIndexToPhysicalPoint((i, j, k)))
    ras = image.geometry.affine @ [i, j, k, 1]
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1])


# --------------------------------------------------------------------------------------
# Round trips per format

ORIENTED_SUFFIXES = [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr"]


@pytest.mark.parametrize("suffix", ORIENTED_SUFFIXES)
def test_image_round_trip_oriented(tmp_path: Path, suffix: str) -> None:
    image, geometry = _unique_image(), _oblique_geometry()
    out = write_image(tmp_path / f"image{suffix}", image, geometry)

    back = read_image(out)

    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, image)
    _assert_same_geometry(back.geometry, geometry)
    assert not [n for n in _names(tmp_path) if n.startswith(".")]  # no temporary files


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd", ".tif"])
def test_multichannel_image_round_trip(tmp_path: Path, suffix: str) -> None:
    image = _unique_image(num_channels=2)
    geometry = Geometry.from_spacing((2.0, 0.5, 0.25))
    back = read_image(write_image(tmp_path / f"image{suffix}", image, geometry))

    np.testing.assert_array_equal(back.array, image)
    _assert_same_geometry(back.geometry, geometry)


@pytest.mark.parametrize("suffix", [*ORIENTED_SUFFIXES, ""])  # "" = DICOM series folder
def test_label_round_trip_oriented(tmp_path: Path, suffix: str) -> None:
    label, geometry = _unique_label(), _oblique_geometry()
    # a DICOM series is written as an image (label maps go to DICOM-SEG) and read as labels
    write = write_label if suffix else _write_as_image
    out = write(tmp_path / f"label{suffix}", label, geometry)

    back = read_label(out)

    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, label)
    _assert_same_geometry(back.geometry, geometry)
    info = read_volume_info(out)
    assert (info.spatial_shape, info.num_channels) == (SHAPE, 1)
    _assert_same_geometry(info.geometry, geometry)


def test_detached_header_keeps_data_file_name(tmp_path: Path) -> None:
    write_label(tmp_path / "label.mhd", _unique_label(), Geometry.from_spacing((1, 1, 1)))

    assert _names(tmp_path) == ["label.mhd", "label.zraw"]
    assert "ElementDataFile = label.zraw" in (tmp_path / "label.mhd").read_text(encoding="utf-8")


def test_tiff_3d_round_trip_with_spacing(tmp_path: Path) -> None:
    geometry = Geometry.from_spacing((0.002, 0.00065, 0.0005))  # microscopy, in mm
    image = _unique_image()

    back = read_image(write_image(tmp_path / "stack.tif", image, geometry))
    label = read_label(write_label(tmp_path / "stack_label.tiff", _unique_label(), geometry))

    np.testing.assert_array_equal(back.array, image)
    np.testing.assert_allclose(back.geometry.spacing_mm, geometry.spacing_mm, rtol=1e-6)
    np.testing.assert_allclose(back.geometry.affine, geometry.affine, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(label.array, _unique_label())
    info = read_volume_info(tmp_path / "stack.tif")
    assert (info.num_channels, info.spatial_shape) == (1, SHAPE)
    np.testing.assert_allclose(info.geometry.spacing_mm, geometry.spacing_mm, rtol=1e-6)


def test_tiff_2d_round_trip(tmp_path: Path) -> None:
    image = np.arange(6 * 7, dtype=np.float32).reshape(1, 1, 6, 7)
    back = read_image(write_image(tmp_path / "plane.tif", image, Geometry.from_spacing((1, 1, 1))))

    assert back.array.shape == (1, 1, 6, 7)
    np.testing.assert_array_equal(back.array, image)
    assert back.geometry.spacing_mm == pytest.approx((1.0, 1.0, 1.0))


def test_png_label_round_trip(tmp_path: Path) -> None:
    label = np.arange(42, dtype=np.uint8).reshape(1, 6, 7)
    out = write_label(tmp_path / "label.png", label, Geometry.from_spacing((1, 1, 1)))

    assert Image.open(out).mode == "L"
    back = read_label(out)
    np.testing.assert_array_equal(back.array, label)
    assert back.geometry == Geometry.from_spacing((1.0, 1.0, 1.0))


def test_png_image_round_trip_gray_and_rgb(tmp_path: Path) -> None:
    geometry = Geometry.from_spacing((1, 1, 1))
    gray = np.arange(42, dtype=np.float32).reshape(1, 1, 6, 7)
    rgb = np.arange(3 * 42, dtype=np.float32).reshape(3, 1, 6, 7)
    wide = gray * 1000  # needs 16 bits

    for name, image in [("gray.png", gray), ("rgb.png", rgb), ("wide.png", wide)]:
        np.testing.assert_array_equal(
            read_image(write_image(tmp_path / name, image, geometry)).array, image
        )
    assert Image.open(tmp_path / "wide.png").mode == "I;16"


def test_png_instances_uint16_round_trip(tmp_path: Path) -> None:
    instances = (np.arange(42, dtype=np.int32) * 1500).reshape(1, 6, 7)  # up to 61500
    out = write_instances(tmp_path / "nuclei.png", instances, Geometry.from_spacing((1, 1, 1)))

    assert Image.open(out).mode == "I;16"
    back = read_instances(out)
    assert back.array.dtype == np.int32
    np.testing.assert_array_equal(back.array, instances)


def test_instances_above_uint16_need_nifti(tmp_path: Path) -> None:
    instances = np.full((1, 2, 3), 70_000, dtype=np.int32)
    geometry = Geometry.from_spacing((1, 1, 1))

    with pytest.raises(ValueError, match="at most 65535 for PNG.*write .nii.gz"):
        write_instances(tmp_path / "nuclei.png", instances, geometry)
    assert _names(tmp_path) == []
    back = read_instances(write_instances(tmp_path / "nuclei.nii.gz", instances, geometry))
    np.testing.assert_array_equal(back.array, instances)


# --------------------------------------------------------------------------------------
# Cross-format


def test_nifti_to_mha_keeps_affine(tmp_path: Path) -> None:
    geometry = _oblique_geometry()
    nifti = read_image(write_image(tmp_path / "a.nii.gz", _unique_image(), geometry))
    mha = read_image(write_image(tmp_path / "a.mha", nifti.array, nifti.geometry))
    nifti_again = read_image(write_image(tmp_path / "b.nii.gz", mha.array, mha.geometry))

    np.testing.assert_allclose(mha.geometry.affine, nifti.geometry.affine, rtol=0, atol=1e-5)
    np.testing.assert_allclose(nifti_again.geometry.affine, nifti.geometry.affine, atol=1e-5)
    np.testing.assert_array_equal(nifti_again.array, nifti.array)
    assert axial_axis(mha.geometry) == axial_axis(nifti.geometry) == 0


# --------------------------------------------------------------------------------------
# DICOM


def _write_series_with_simpleitk(folder: Path, zyx: np.ndarray) -> sitk.Image:
    """Write a DICOM series the way SimpleITK's own example does (independent of medseg)."""
    folder.mkdir()
    itk_image = sitk.GetImageFromArray(zyx)
    itk_image.SetSpacing((0.5, 0.75, 2.0))
    itk_image.SetOrigin((-10.0, 20.0, 5.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(itk_image.GetDepth()):
        plane = itk_image[:, :, k]
        plane.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.42")
        plane.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        position = itk_image.TransformIndexToPhysicalPoint((0, 0, k))
        plane.SetMetaData("0020|0032", "\\".join(str(v) for v in position))
        plane.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"IM{k:03d}.dcm"))
        writer.Execute(plane)
    return itk_image


def test_dicom_series_read(tmp_path: Path) -> None:
    zyx = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) - 100
    _write_series_with_simpleitk(tmp_path / "series", zyx)

    image = read_image(tmp_path / "series")

    assert image.array.shape == (1, *SHAPE)
    np.testing.assert_array_equal(image.array[0], zyx)
    np.testing.assert_allclose(image.geometry.spacing_mm, (2.0, 0.75, 0.5))
    expected = np.diag([-0.5, -0.75, 2.0, 1.0])
    expected[:3, 3] = [10.0, -20.0, 5.0]
    np.testing.assert_allclose(image.geometry.affine, expected, atol=1e-6)
    assert image.geometry.header["0020|0013"].strip() in {"1", "5"}


def test_dicom_image_round_trip_integers(tmp_path: Path) -> None:
    image = np.round(_unique_image() * 4) - 50  # integer-valued, negative too
    out = write_image(tmp_path / "series", image, _oblique_geometry())

    assert len(list(out.glob("*.dcm"))) == SHAPE[0]
    back = read_image(out)
    np.testing.assert_array_equal(back.array, image)
    _assert_same_geometry(back.geometry, _oblique_geometry())


def test_dicom_round_trip_keeps_the_process_locale(tmp_path: Path) -> None:
    # GDCM sets the C locale to "C", which made Python's default text encoding ASCII
    import locale

    before = (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False))
    image = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    write_image(tmp_path / "series", image, Geometry.from_spacing((2.0, 1.0, 1.0)))
    assert (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)) == before
    read_image(tmp_path / "series")
    assert (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)) == before


def test_dicom_write_refuses_what_it_cannot_store(tmp_path: Path) -> None:
    mirrored = Geometry((1.0, 1.0, 1.0), np.diag([-1.0, 1.0, 1.0, 1.0]))  # left-handed
    with pytest.raises(ValueError, match="non-integer values.*write .nii.gz"):
        write_image(tmp_path / "series", _unique_image(), _oblique_geometry())
    with pytest.raises(ValueError, match="right-handed orthogonal voxel grid for DICOM"):
        write_image(tmp_path / "series", _unique_image().round(), mirrored)
    # label maps go to DICOM as DICOM-SEG, never as an image series of class values
    for writer in (write_label, write_instances):
        with pytest.raises(ValueError, match="got a path without one .a DICOM series folder.*"
                           "--output-format dicom-seg"):  # fmt: skip
            writer(tmp_path / "series", _unique_label(), Geometry.from_spacing((1.0, 1.0, 1.0)))
    assert _names(tmp_path) == []


def test_dicom_folder_without_series(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")

    with pytest.raises(ValueError, match="must be a folder holding a DICOM series.*1 file"):
        read_image(tmp_path / "empty")


def test_dicom_file_suffix_points_to_folder(tmp_path: Path) -> None:
    (tmp_path / "IM0001.dcm").write_bytes(b"")
    with pytest.raises(ValueError, match="pass the folder that holds the .dcm files"):
        read_label(tmp_path / "IM0001.dcm")


# --------------------------------------------------------------------------------------
# FreeSurfer MGH / MGZ


def test_mgh_xyz_maps_to_zyx_like_nibabel(tmp_path: Path) -> None:
    xyz = np.arange(7 * 6 * 5, dtype=np.int16).reshape(7, 6, 5)  # nibabel (x, y, z)
    affine = np.array(  # FreeSurfer's conformed LIA orientation, 1 x 1.25 x 2 mm, shifted
        [[-1.0, 0, 0, 3.5], [0, 0, 2.0, -4.0], [0, -1.25, 0, 6.0], [0, 0, 0, 1]]
    )
    nib.MGHImage(xyz, affine).to_filename(tmp_path / "brain.mgz")

    image = read_image(tmp_path / "brain.mgz")

    assert image.array.shape == (1, 5, 6, 7) and image.array.dtype == np.float32
    for i, j, k in [(0, 0, 0), (6, 0, 0), (1, 2, 3), (6, 5, 4)]:
        assert image.array[0, k, j, i] == xyz[i, j, k]
    assert image.geometry.spacing_mm == (2.0, 1.25, 1.0)
    np.testing.assert_allclose(image.geometry.affine, affine, atol=1e-5)
    assert nib.aff2axcodes(image.geometry.affine) == ("L", "I", "A")


@pytest.mark.parametrize("suffix", [".mgz", ".mgh"])
def test_mgh_round_trip(tmp_path: Path, suffix: str) -> None:
    image, label, geometry = _unique_image(), _unique_label(), _oblique_geometry()

    image_back = read_image(write_image(tmp_path / f"image{suffix}", image, geometry))
    label_back = read_label(write_label(tmp_path / f"label{suffix}", label, geometry))

    np.testing.assert_array_equal(image_back.array, image)
    np.testing.assert_array_equal(label_back.array, label)
    assert label_back.array.dtype == np.uint8
    for back in (image_back, label_back):  # MGH stores the geometry as float32
        _assert_same_geometry(back.geometry, geometry, atol=1e-4)
    written = nib.load(tmp_path / f"label{suffix}")
    assert isinstance(written, nib.MGHImage) and written.get_data_dtype() == np.uint8
    assert written.shape == SHAPE[::-1]  # (x, y, z) on disk
    np.testing.assert_allclose(written.affine, geometry.affine, atol=1e-4)
    np.testing.assert_allclose(written.header.get_zooms(), geometry.spacing_mm[::-1], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), label)


def test_mgh_label_from_a_nifti_image_keeps_its_geometry(tmp_path: Path) -> None:
    nifti = write_image(tmp_path / "t1.nii.gz", _unique_image(), _oblique_geometry())
    source = read_image(nifti)

    out = write_label(tmp_path / "t1_seg.mgz", _unique_label(), source.geometry)

    assert nib.load(out).shape == nib.load(nifti).shape
    np.testing.assert_allclose(nib.load(out).affine, nib.load(nifti).affine, atol=1e-4)
    assert read_volume_info(out).geometry.same_as(source.geometry, atol_mm=1e-4)


def test_mgh_instances_and_frames(tmp_path: Path) -> None:
    instances = np.arange(np.prod(SHAPE), dtype=np.int32).reshape(SHAPE) * 300  # > 255
    geometry = Geometry.from_spacing((2.0, 1.0, 1.0))
    out = write_instances(tmp_path / "nuclei.mgz", instances, geometry)
    assert nib.load(out).get_data_dtype() == np.dtype(">i4")  # FreeSurfer has no uint16
    np.testing.assert_array_equal(read_instances(out).array, instances)

    image = _unique_image(num_channels=2)
    back = read_image(write_image(tmp_path / "two.mgz", image, geometry))
    np.testing.assert_array_equal(back.array, image)
    assert read_volume_info(tmp_path / "two.mgz").num_timepoints == 1


def test_mgh_frames_with_a_tr_are_a_time_series(tmp_path: Path) -> None:
    frames = nib.MGHImage(np.zeros((7, 6, 5, 4), np.float32), np.eye(4))
    frames.header["tr"] = 2000.0  # ms
    frames.to_filename(tmp_path / "bold.mgz")

    info = read_volume_info(tmp_path / "bold.mgz")

    assert (info.num_channels, info.num_timepoints, info.spatial_shape) == (4, 4, (5, 6, 7))


def test_mgh_garbage_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "bad.mgz").write_bytes(b"not gzip at all")
    (tmp_path / "bad.mgh").write_bytes(b"\x00" * 10)
    for name in ("bad.mgz", "bad.mgh"):
        with pytest.raises(ValueError, match=rf"image '.*{name}' must be a readable FreeSurfer"):
            read_image(tmp_path / name)


# --------------------------------------------------------------------------------------
# PNG specifics


def test_png_gray_rgb_rgba(tmp_path: Path) -> None:
    rgb = np.arange(6 * 7 * 3, dtype=np.uint8).reshape(6, 7, 3)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")

    gray_image = read_image(tmp_path / "gray.png")
    rgb_image = read_image(tmp_path / "rgb.png")
    rgba_image = read_image(tmp_path / "rgba.png")

    assert gray_image.array.shape == (1, 1, 6, 7)
    assert rgb_image.array.shape == (3, 1, 6, 7)
    assert rgb_image.array[2, 0, 5, 6] == rgb[5, 6, 2]  # channel c at (y, x)
    np.testing.assert_array_equal(rgba_image.array, rgb_image.array)
    assert rgb_image.geometry.spacing_mm == (1.0, 1.0, 1.0)
    assert read_volume_info(tmp_path / "rgba.png").num_channels == 3


def test_png_transparent_rgba_is_an_error(tmp_path: Path) -> None:
    rgba = np.full((6, 7, 4), 255, np.uint8)
    rgba[0, :3, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "cutout.png")

    with pytest.raises(ValueError, match=r"cutout.png' must be opaque.*got 3 transparent"):
        read_image(tmp_path / "cutout.png")


def test_png_palette_label_gives_indices(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    pil = Image.fromarray(indices, mode="P")
    pil.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    pil.save(tmp_path / "palette.png")

    np.testing.assert_array_equal(read_label(tmp_path / "palette.png").array[0], indices)
    image = read_image(tmp_path / "palette.png")  # an image shows the palette colours
    assert image.array.shape == (3, 1, 2, 3)
    assert image.array[:, 0, 0, 1].tolist() == [255.0, 0.0, 0.0]


# --------------------------------------------------------------------------------------
# TIFF specifics


def test_tiff_stack_and_pages(tmp_path: Path) -> None:
    zyx = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
    tifffile.imwrite(tmp_path / "stack.tif", zyx, photometric="minisblack")
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:  # plain pages, no metadata
        for plane in zyx:
            tif.write(plane, photometric="minisblack", metadata=None)

    for name in ("stack.tif", "pages.tif"):
        image = read_image(tmp_path / name)
        assert image.array.shape == (1, *SHAPE)
        np.testing.assert_array_equal(image.array[0], zyx)


def test_tiff_rgb_comes_from_photometric_tag(tmp_path: Path) -> None:
    planes = np.arange(3 * 6 * 7, dtype=np.uint8).reshape(3, 6, 7)
    tifffile.imwrite(tmp_path / "rgb.tif", np.moveaxis(planes, 0, -1), photometric="rgb")
    tifffile.imwrite(tmp_path / "three_slices.tif", planes, photometric="minisblack")

    rgb = read_image(tmp_path / "rgb.tif")
    stack = read_image(tmp_path / "three_slices.tif")  # length-3 axis, but not RGB

    assert rgb.array.shape == (3, 1, 6, 7)
    assert stack.array.shape == (1, 3, 6, 7)
    np.testing.assert_array_equal(rgb.array[:, 0], planes)
    np.testing.assert_array_equal(stack.array[0], planes)


def test_tiff_rgba_alpha(tmp_path: Path) -> None:
    rgba = np.full((6, 7, 4), 255, np.uint8)
    tifffile.imwrite(tmp_path / "opaque.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    rgba[2, 3, 3] = 10
    tifffile.imwrite(tmp_path / "cutout.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])

    assert read_image(tmp_path / "opaque.tif").array.shape == (3, 1, 6, 7)
    with pytest.raises(ValueError, match="must be opaque.*got 1 transparent"):
        read_image(tmp_path / "cutout.tif")


def test_ome_tiff_physical_sizes_from_other_writers(tmp_path: Path) -> None:
    zyx = np.zeros((4, 8, 9), np.uint16)
    # OME-XML sizes in nm (x) and the default unit, micrometres (y, z); tags say 1 px/cm
    tifffile.imwrite(
        tmp_path / "a.ome.tif", zyx, ome=True, resolution=(1.0, 1.0), resolutionunit="CENTIMETER",
        metadata={"axes": "ZYX", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
                  "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0},
    )  # fmt: skip
    spacing = read_image(tmp_path / "a.ome.tif").geometry.spacing_mm
    np.testing.assert_allclose(spacing, (0.002, 0.0005, 0.00025))  # the XML wins over tags
    # OME without physical sizes: the resolution tags (2 px per µm = 0.0005 mm)
    tifffile.imwrite(
        tmp_path / "b.ome.tif", zyx, ome=True, resolution=(2.0, 4.0),
        resolutionunit="MICROMETER", metadata={"axes": "ZYX"},
    )  # fmt: skip
    np.testing.assert_allclose(
        read_image(tmp_path / "b.ome.tif").geometry.spacing_mm, (1.0, 0.00025, 0.0005)
    )


def test_ome_tiff_written_by_medseg_is_ome_with_its_spacing(tmp_path: Path) -> None:
    geometry = Geometry.from_spacing((0.002, 0.00025, 0.0005))
    data = np.arange(2 * 3 * 5 * 6, dtype=np.float32).reshape(2, 3, 5, 6)
    path = write_image(tmp_path / "cells.ome.tif", data, geometry)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
    assert float(pixels["PhysicalSizeX"]) == pytest.approx(0.5)  # micrometres
    assert float(pixels["PhysicalSizeZ"]) == pytest.approx(2.0)
    back = read_image(path)
    np.testing.assert_array_equal(back.array, data)
    np.testing.assert_allclose(back.geometry.spacing_mm, geometry.spacing_mm)
    assert split_suffix("cells.ome.tif") == ("cells", ".ome.tif")


def test_tiff_resolution_tags_in_cm(tmp_path: Path) -> None:
    # 20000 pixels per cm = 0.0005 mm per pixel in x; 10000 per cm = 0.001 mm in y
    tifffile.imwrite(
        tmp_path / "scan.tif",
        np.zeros((6, 7), np.uint8),
        resolution=(20000, 10000),
        resolutionunit="CENTIMETER",
    )

    spacing = read_image(tmp_path / "scan.tif").geometry.spacing_mm

    np.testing.assert_allclose(spacing, (1.0, 0.001, 0.0005))


def test_tiff_imagej_spacing_in_microns(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "ij.tif",
        np.zeros((3, 6, 7), np.uint8),
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.5),  # pixels per micron in x, y
        metadata={"axes": "ZYX", "spacing": 2.0, "unit": "micron"},
    )

    spacing = read_image(tmp_path / "ij.tif").geometry.spacing_mm

    np.testing.assert_allclose(spacing, (0.002, 0.0005, 0.00025))


def test_tiff_time_series_is_an_error(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "movie.tif",
        np.zeros((2, 3, 6, 7), np.uint8),
        imagej=True,
        metadata={"axes": "TZYX"},
    )
    with pytest.raises(ValueError, match=r"must have axes Y, X .*got axes 'TZYX'"):
        read_image(tmp_path / "movie.tif")


# --------------------------------------------------------------------------------------
# Geometry, grids, axial axis


def test_geometry_equality_and_hash() -> None:
    a = _oblique_geometry()
    b = Geometry(a.spacing_mm, a.affine.copy(), header={"ignored": "yes"})
    shifted_affine = a.affine.copy()
    shifted_affine[0, 3] += 1e-4

    assert a == b and hash(a) == hash(b)
    assert a != Geometry(a.spacing_mm, shifted_affine)
    assert a.same_as(Geometry(a.spacing_mm, shifted_affine))
    assert not a.same_as(Geometry(a.spacing_mm, shifted_affine), atol_mm=1e-5)
    assert not a.affine.flags.writeable


def test_geometry_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="spacing_mm must be 3 positive"):
        Geometry((1.0, 0.0, 1.0), np.eye(4))
    with pytest.raises(ValueError, match=r"affine must have shape \(4, 4\), got shape \(3, 3\)"):
        Geometry((1.0, 1.0, 1.0), np.eye(3))
    with pytest.raises(ValueError, match="affine must be invertible"):
        Geometry((1.0, 1.0, 1.0), np.diag([1.0, 0.0, 1.0, 1.0]))


def test_check_same_grid_names_files_and_values() -> None:
    g = Geometry.from_spacing((1.0, 1.0, 1.0))
    other = Geometry.from_spacing((2.0, 1.0, 1.0))
    image = Volume(np.zeros((2, *SHAPE), np.float32), g, Path("img.nii.gz"))

    check_same_grid(image, Volume(np.zeros(SHAPE, np.uint8), g, Path("lab.nii.gz")))
    with pytest.raises(ValueError) as excinfo:
        check_same_grid(image, Volume(np.zeros((5, 6, 8), np.uint8), other, Path("lab.nii.gz")))

    message = str(excinfo.value)
    assert "'lab.nii.gz' must be on the same voxel grid as 'img.nii.gz'" in message
    assert "shape (Z, Y, X) (5, 6, 8) vs (5, 6, 7)" in message
    assert "spacing_mm (2, 1, 1) vs (1, 1, 1)" in message
    assert "affine [1 0 0 0; 0 1 0 0; 0 0 2 0] vs [1 0 0 0; 0 1 0 0; 0 0 1 0]" in message
    assert "\n" not in message


def test_axial_axis_follows_world_superior() -> None:
    # voxel axes (x, y, z) -> world (x, z, y): array axis 1 (Y) runs superior-inferior
    coronal = np.array([[1.0, 0, 0, 0], [0, 0, -2.0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])
    assert axial_axis(Geometry((2.0, 1.5, 1.0), coronal)) == 1
    assert axial_axis(_oblique_geometry()) == 0
    sagittal = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 1]])
    assert axial_axis(Geometry((1.0, 1.0, 1.0), sagittal)) == 2


# --------------------------------------------------------------------------------------
# Bad input: clear one-line errors, nothing written


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"image '.*nope.nii.gz' must exist"):
        read_image(tmp_path / "nope.nii.gz")
    with pytest.raises(FileNotFoundError, match="label .* must exist"):
        read_label(tmp_path / "series_that_is_not_there")


def test_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")
    label = _unique_label()

    with pytest.raises(ValueError, match=r"must have a suffix in \.nii, \.nii\.gz.*got '\.jpg'"):
        read_image(tmp_path / "photo.jpg")
    with pytest.raises(ValueError, match=r"must have a suffix in .*\.tiff or none.*'\.jpg'"):
        write_label(tmp_path / "out.jpg", label, Geometry.from_spacing((1, 1, 1)))
    assert _names(tmp_path) == ["photo.jpg"]
    assert ".nii.gz" in SUPPORTED_SUFFIXES and ".nhdr" in SUPPORTED_SUFFIXES


def test_truncated_nifti_gz(tmp_path: Path) -> None:
    whole = tmp_path / "whole.nii.gz"
    write_image(
        whole,
        _unique_image() + np.random.default_rng(0).random(SHAPE, np.float32),
        _oblique_geometry(),
    )
    data = whole.read_bytes()
    (tmp_path / "half.nii.gz").write_bytes(data[: len(data) // 2])

    with pytest.raises(
        ValueError, match="half.nii.gz' must be a readable NIfTI.*could not be read as NIfTI"
    ) as excinfo:
        read_image(tmp_path / "half.nii.gz")
    assert excinfo.value.__cause__ is not None
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("junk.nii", "NIfTI"),
        ("junk.nii.gz", "NIfTI"),
        ("junk.mha", "MetaImage"),
        ("junk.nrrd", "NRRD"),
        ("junk.png", "PNG"),
        ("junk.tif", "TIFF"),
    ],
)
def test_garbage_bytes(tmp_path: Path, name: str, fmt: str) -> None:
    payload = b"this is not an image " * 40
    (tmp_path / name).write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)

    with pytest.raises(ValueError, match=f"could not be read as {fmt}") as excinfo:
        read_label(tmp_path / name)
    assert excinfo.value.__cause__ is not None
    assert "\n" not in str(excinfo.value)


def test_nan_and_inf_intensities(tmp_path: Path) -> None:
    xyz = np.ones((7, 6, 5), np.float32)
    xyz[0, 0, 0], xyz[1, 2, 3], xyz[6, 5, 4] = np.nan, np.inf, -np.inf
    nib.Nifti1Image(xyz, np.eye(4)).to_filename(tmp_path / "bad.nii.gz")

    with pytest.raises(
        ValueError, match=r"bad.nii.gz' must have finite intensities, got 3 NaN/Inf"
    ):
        read_image(tmp_path / "bad.nii.gz")


def test_label_values_out_of_range(tmp_path: Path) -> None:
    values = np.zeros((7, 6, 5), np.int16)
    values[1, 1, 1], values[2, 2, 2] = 300, 3
    nib.Nifti1Image(values, np.eye(4)).to_filename(tmp_path / "big.nii.gz")
    fractional = np.zeros((7, 6, 5), np.float32)
    fractional[0, 0, 1] = 1.5
    nib.Nifti1Image(fractional, np.eye(4)).to_filename(tmp_path / "frac.nii.gz")
    negative = values.copy()
    negative[0, 0, 0] = -1
    nib.Nifti1Image(negative, np.eye(4)).to_filename(tmp_path / "neg.nii.gz")

    with pytest.raises(
        ValueError,
        match=r"label '.*big.nii.gz' must hold integers in 0..255, got value 300 \(1 voxel",
    ):
        read_label(tmp_path / "big.nii.gz")
    with pytest.raises(
        ValueError, match="frac.nii.gz' must hold integers in 0..255, got non-integer value 1.5"
    ):
        read_label(tmp_path / "frac.nii.gz")
    with pytest.raises(ValueError, match="got value -1"):
        read_label(tmp_path / "neg.nii.gz")
    assert read_instances(tmp_path / "big.nii.gz").array.max() == 300


def test_label_with_three_channels(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(tmp_path / "rgb_label.png")
    with pytest.raises(ValueError, match="must have one channel, got 3 channels"):
        read_label(tmp_path / "rgb_label.png")


def test_allow_2d_false(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(tmp_path / "x.png")

    with pytest.raises(
        ValueError, match=r"image '.*x.png' must be 3D \(Z > 1\), got shape \(1, 1, 64, 80\)"
    ):
        read_image(tmp_path / "x.png", allow_2d=False)
    with pytest.raises(
        ValueError, match=r"label '.*x.png' must be 3D \(Z > 1\), got shape \(1, 64, 80\)"
    ):
        read_label(tmp_path / "x.png", allow_2d=False)
    assert read_image(tmp_path / "x.png").array.shape == (1, 1, 64, 80)


def _write_as_image(path, label, geometry, **kwargs):
    return write_image(path, label[None].astype(np.float32), geometry, **kwargs)


def _read_as_label(path):
    return Volume(read_image(path).array[0].astype(np.uint8), read_image(path).geometry)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".mhd", ".png", ".tif", ""])
def test_no_overwrite_without_permission(tmp_path: Path, suffix: str) -> None:
    # a DICOM folder ("") holds images only: its class values are written as an image
    write, read = (write_label, read_label) if suffix else (_write_as_image, _read_as_label)
    label = np.arange(42, dtype=np.uint8).reshape(1, 6, 7)
    geometry = Geometry.from_spacing((1, 1, 1))
    out = write(tmp_path / f"label{suffix}", label, geometry)
    before = _names(tmp_path)

    with pytest.raises(FileExistsError, match="must not exist, got an existing file.*--overwrite"):
        write(out, label + 1, geometry)
    assert _names(tmp_path) == before  # no temporary file left
    np.testing.assert_array_equal(read(out).array, label)

    write(out, label + 1, geometry, overwrite=True)
    assert _names(tmp_path) == before
    np.testing.assert_array_equal(read(out).array, label + 1)


def test_mhd_data_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "label.zraw").write_bytes(b"someone else's data")

    with pytest.raises(FileExistsError, match=r"label.zraw' must not exist.*written with"):
        write_label(tmp_path / "label.mhd", _unique_label(), Geometry.from_spacing((1, 1, 1)))
    assert _names(tmp_path) == ["label.zraw"]


def test_bad_arrays_write_nothing(tmp_path: Path) -> None:
    geometry = Geometry.from_spacing((1, 1, 1))
    nan_image = _unique_image()
    nan_image[0, 1, 2, 3] = np.nan

    with pytest.raises(ValueError, match="image must have finite values, got 1 NaN/Inf"):
        write_image(tmp_path / "a.nii.gz", nan_image, geometry)
    with pytest.raises(
        ValueError, match=r"image must be float32 \(C, Z, Y, X\), got shape \(5, 6, 7\)"
    ):
        write_image(tmp_path / "a.nii.gz", _unique_image()[0], geometry)
    with pytest.raises(
        ValueError, match="label must hold integers in 0..255, got value 309 \\(54 voxel"
    ):
        write_label(tmp_path / "a.nii.gz", _unique_label().astype(np.int32) + 100, geometry)
    with pytest.raises(ValueError, match="label must have an integer dtype, got float32"):
        write_label(tmp_path / "a.nii.gz", _unique_label().astype(np.float32), geometry)
    with pytest.raises(ValueError, match=r"must be 2D \(Z == 1\) for PNG, got shape \(5, 6, 7\)"):
        write_label(tmp_path / "a.png", _unique_label(), geometry)
    with pytest.raises(
        ValueError, match=r"integers in 0..255 for PNG, got non-integer values.*\.tif"
    ):
        write_image(tmp_path / "a.png", _unique_image(3)[:, :1], geometry)
    with pytest.raises(TypeError, match="geometry must be a medseg.io.Geometry, got dict"):
        write_label(tmp_path / "a.nii.gz", _unique_label(), {"spacing": 1})  # type: ignore[arg-type]
    assert _names(tmp_path) == []


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(tmp_path / "a.nii.gz") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert _names(tmp_path) == []


# --------------------------------------------------------------------------------------
# Real data (../shared/data); skipped when absent


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    return path


def test_ibsr_label_round_trip_keeps_header(tmp_path: Path) -> None:
    folder = _require(IBSR / "IBSR_01")
    image = read_image(folder / "IBSR_01_t1.nii.gz")
    label = read_label(folder / "IBSR_01_labels.nii.gz")

    assert image.array.shape == (1, 256, 128, 256)
    assert label.array.shape == (256, 128, 256)
    assert set(np.unique(label.array).tolist()) == {0, 1, 2, 3}
    assert image.geometry.spacing_mm == (0.9375, 1.5, 0.9375)
    assert axial_axis(image.geometry) == 0
    check_same_grid(image, label)

    out = write_label(tmp_path / "pred.nii.gz", label.array, label.geometry)
    back = read_label(out)
    source, written = nib.load(folder / "IBSR_01_labels.nii.gz"), nib.load(out)

    assert back.geometry == label.geometry
    np.testing.assert_array_equal(back.array, label.array)
    np.testing.assert_array_equal(written.affine, source.affine)
    assert written.header.get_zooms() == source.header.get_zooms()
    for key in ("qform_code", "sform_code", "xyzt_units", "srow_x", "srow_y", "srow_z"):
        np.testing.assert_array_equal(written.header[key], source.header[key])
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(source.dataobj))


def test_ibsr_prediction_from_image_geometry(tmp_path: Path) -> None:
    """A label written with the int16 image's header comes back uint8, unscaled."""
    folder = _require(IBSR / "IBSR_07")
    image_info = read_volume_info(folder / "IBSR_07_t1.nii.gz")
    label = np.zeros(image_info.spatial_shape, np.uint8)
    label[100:110, 60:64, 120:130] = 3

    back = read_label(write_label(tmp_path / "pred.nii.gz", label, image_info.geometry))

    np.testing.assert_array_equal(back.array, label)
    assert back.geometry.same_as(image_info.geometry, atol_mm=0)
    assert nib.load(tmp_path / "pred.nii.gz").header["cal_max"] == 0


def test_dsb2018_rgba_png_and_instances() -> None:
    folder = _require(DATA / "dsb2018_stage1_test")
    name = sorted((folder / "images").glob("*.png"))[0].name

    image = read_image(folder / "images" / name)
    instances = read_instances(folder / "labels" / name)

    y, x = Image.open(folder / "images" / name).size[::-1]
    assert image.array.shape == (3, 1, y, x)
    assert instances.array.shape == (1, y, x)
    assert instances.array.dtype == np.int32
    assert instances.array.max() >= 1
    check_same_grid(image, instances)


def test_miccai_instances_exceed_label_range() -> None:
    path = _require(DATA / "miccai2015_nuclei_he" / "labels" / "image01.png")

    assert read_instances(path).array.max() > 255
    with pytest.raises(
        ValueError, match=r"must hold integers in 0..255, got value \d+ .*read_instances"
    ):
        read_label(path)


def test_isbi_em_labels() -> None:
    path = _require(DATA / "isbi2012_em" / "labels" / "slice_00.png")
    assert set(np.unique(read_label(path).array).tolist()) == {0, 255}
