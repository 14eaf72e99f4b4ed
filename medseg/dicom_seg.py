"""DICOM Segmentation objects (DICOM-SEG) that a PACS and its viewers link to the scan.

``medseg predict DICOM_FOLDER --output-format dicom-seg`` writes one SEG instance (a
multi-frame ``.dcm``) beside or instead of the NIfTI label map. It is built with
``highdicom`` (the optional extra ``pip install 'medseg[dicom]'``) from the source series'
own headers, so it carries the source's patient and study (same StudyInstanceUID, a new
series in that study), its FrameOfReferenceUID, and a reference to every source image
(ReferencedSeriesSequence / per-frame DerivationImageSequence): viewers such as OHIF and
3D Slicer show it over the scan.

One segment per non-background label value, numbered 1..N in value order, labelled with
the model's tissue names and coded with SNOMED CT where the name is a known tissue (CSF,
GM, WM, nucleus, cell, membrane); the algorithm is recorded as automatic, named medseg with
its version and the model. Segmentation type BINARY (the form every SEG reader supports).

The label map (as medseg reads the series, :mod:`medseg.io`) is taken back to each source
image's pixel grid through the affine, so it does not matter how the reader ordered the
slices; a label map that is not on the series' grid is refused.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg.io import Geometry, atomic_output, check_output_path
from medseg.typing import PathLike

INSTALL_HINT = "pip install 'medseg[dicom]' (highdicom)"
_LPS = np.diag([-1.0, -1.0, 1.0])  # DICOM patient (LPS) <-> RAS+ (nibabel, medseg)
_GRID_TOLERANCE = 0.05  # voxels: how far a source pixel may sit from a label voxel centre


def available() -> bool:
    """Whether highdicom is installed (the ``dicom`` extra)."""
    return importlib.util.find_spec("highdicom") is not None


def require() -> None:
    """Raise a one-line error with the fix when highdicom is missing."""
    if not available():
        raise ValueError(
            f"--output-format dicom-seg needs the highdicom package, got it not installed; "
            f"{INSTALL_HINT}"
        )


def frames_from_labels(labels: np.ndarray, geometry: Geometry, datasets: Sequence) -> np.ndarray:
    """The label map resampled onto the source images' pixel grids (nearest voxel).

    Args:
        labels: uint8 ``(Z, Y, X)`` in medseg's axes (ARCHITECTURE.md section 2).
        geometry: The label map's geometry (its affine maps voxel (x, y, z) to RAS+ mm).
        datasets: The source images (pydicom datasets with ImagePositionPatient,
            ImageOrientationPatient, PixelSpacing, Rows, Columns).

    Returns:
        uint8 ``(len(datasets), rows, columns)``: frame ``i`` is the label map on
        ``datasets[i]``'s pixels.

    Raises:
        ValueError: a source pixel does not fall on a label voxel centre (the label map is
            not on the series' grid) or falls outside the label map.
    """
    inverse = np.linalg.inv(geometry.affine)
    shape_xyz = labels.shape[::-1]
    frames = np.zeros(
        (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), dtype=np.uint8
    )
    for i, ds in enumerate(datasets):
        rows, cols = int(ds.Rows), int(ds.Columns)
        origin = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        row_dir, col_dir = iop[:3], iop[3:]  # along a row (columns grow), along a column
        dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing, column spacing
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        lps = origin + c[..., None] * dc * row_dir + r[..., None] * dr * col_dir
        ras = lps @ _LPS.T
        ijk = ras @ inverse[:3, :3].T + inverse[:3, 3]  # voxel (x, y, z), float
        nearest = np.rint(ijk)
        off = float(np.max(np.abs(ijk - nearest)))
        if off > _GRID_TOLERANCE:
            raise ValueError(
                f"label map must lie on the DICOM series' grid, got source image "
                f"{getattr(ds, 'SOPInstanceUID', i)} {off:.2f} voxels off it"
            )
        index = nearest.astype(np.int64)
        inside = np.all((index >= 0) & (index < np.asarray(shape_xyz)), axis=-1)
        if not inside.all():
            raise ValueError(
                f"label map must cover the DICOM series, got source image "
                f"{getattr(ds, 'SOPInstanceUID', i)} outside its {labels.shape} voxels"
            )
        frames[i] = labels[index[..., 2], index[..., 1], index[..., 0]]
    return frames


def _property_type(name: str):
    """A SNOMED CT code for a tissue name, or the generic 'Tissue'."""
    from pydicom.sr.codedict import codes

    known = {
        "csf": codes.SCT.CerebrospinalFluid,
        "gm": codes.SCT.CerebralGrayMatter,
        "grey matter": codes.SCT.CerebralGrayMatter,
        "gray matter": codes.SCT.CerebralGrayMatter,
        "wm": codes.SCT.CerebralWhiteMatter,
        "white matter": codes.SCT.CerebralWhiteMatter,
        "cell": codes.SCT.Cell,
        "nucleus": codes.SCT.Cell,
    }
    return known.get(name.strip().lower(), codes.SCT.Tissue)


def write_dicom_seg(
    path: PathLike,
    labels: np.ndarray,
    geometry: Geometry,
    source_files: Sequence[PathLike],
    *,
    label_names: Mapping[int, str],
    model: str = "",
    overwrite: bool = False,
) -> Path:
    """Write a label map as a DICOM Segmentation of its source series (module docstring).

    Args:
        path: The ``.dcm`` file to write (atomically).
        labels: uint8 ``(Z, Y, X)`` on the series' grid, 0 = background.
        geometry: Its geometry, as medseg read the series.
        source_files: The series' DICOM files.
        label_names: Value -> name; every non-zero value present needs a name.
        model: The model's name, recorded in the algorithm identification.
        overwrite: Replace an existing file.

    Returns:
        ``path``.

    Raises:
        ValueError: highdicom missing, an unnamed label value, a label map off the grid.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    require()
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from medseg import __version__

    check_output_path(path, overwrite=overwrite)
    datasets = [pydicom.dcmread(str(f)) for f in source_files]
    values = [int(v) for v in np.unique(labels) if v != 0]
    unnamed = [v for v in values if v not in label_names]
    if unnamed:
        raise ValueError(f"label values must have names for DICOM-SEG, got unnamed {unnamed}")
    frames = frames_from_labels(labels, geometry, datasets)
    numbered = np.zeros_like(frames)
    for number, value in enumerate(values, start=1):
        numbered[frames == value] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medseg",
        family=codes.cid7162.ArtificialIntelligence,
        version=f"{__version__}{' ' + model if model else ''}"[:64],
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(label_names[value])[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=_property_type(str(label_names[value])),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(values, start=1)
    ]
    if not segments:  # an empty prediction still gives a valid (empty) SEG of one segment
        segments = [
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="background only",
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        ]
    series_number = int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 1000
    with warnings.catch_warnings():  # the source's own names, e.g. "Jane_Doe": not ours to fix
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
        seg = _segmentation(hd, datasets, numbered, segments, series_number, model, __version__)
    with atomic_output(path, overwrite=overwrite) as tmp:
        seg.save_as(str(tmp))
    return Path(path)


def _segmentation(hd, datasets, numbered, segments, series_number, model, version):
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=numbered,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name=(model or "medseg")[:64],
        software_versions=version,
        device_serial_number="0",
        series_description=f"medseg {model}".strip()[:64],
        omit_empty_frames=False,
    )


def seg_path(input_path: PathLike, output: PathLike) -> Path:
    """Where the SEG of ``input_path`` goes: ``output`` if it ends in ``.dcm``, else
    ``<output>/<input name>_seg.dcm``.

    Example:
        >>> seg_path("scans/t1_series", "out").as_posix()
        'out/t1_series_seg.dcm'
    """
    output = Path(output)
    if output.name.lower().endswith(".dcm"):
        return output
    return output / f"{Path(input_path).name}_seg.dcm"


def read_dicom_seg_labels(path: PathLike, source_files: Sequence[PathLike]) -> np.ndarray:
    """Read a SEG back as uint8 ``(len(source_files), rows, columns)`` segment numbers, the
    frames in the order of ``source_files`` (0 where no segment is set)."""
    require()
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(str(path))
    uids = [pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID for f in source_files]
    volume = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    return np.asarray(volume, dtype=np.uint8)
