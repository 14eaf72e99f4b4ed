"""The commands that describe rather than compute: ``models``, ``validate``, ``info`` and
``patches``.

``models`` lists the built-in models and the input they expect, ``validate`` checks a
manifest, ``info`` shows an image's shape, spacing and orientation (or a DICOM folder's
series) and ``patches`` plans a 2.5D patch grid. Torch, numpy and nibabel load inside the
command bodies, so ``medseg --help`` stays instant. :mod:`medseg.cli` registers the
commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def models_cmd() -> None:
    """List the built-in models and what input they expect."""
    from medseg.checkpoint import BUILTIN_MODELS, load_checkpoint

    for name in sorted(BUILTIN_MODELS):
        try:
            ckpt = load_checkpoint(name)
        except FileNotFoundError:
            typer.echo(f"{name}: not installed")
            continue
        labels = ", ".join(f"{k}={v}" for k, v in sorted(ckpt.label_names.items()) if k)
        p = ckpt.patch_settings
        norm = f"{ckpt.normalization_settings.method} normalisation"
        if ckpt.is_tile_model:
            if ckpt.normalization_settings.colour != "keep":
                channels = "any-stain (grey, RGB or H&E; made grey with a dark background)"
            elif ckpt.image_channels == 3:
                channels = "RGB (grey is repeated)"
            else:
                channels = "greyscale"
            typer.echo(
                f"{name}: {ckpt.model_name} {ckpt.model_kwargs}; input: 2D {channels} PNG/TIFF "
                f"image (or TIFF stack: predicted slice by slice, objects joined in 3D), any "
                f"size, overlap-tile with {ckpt.inference_settings.tile_size} px output tiles; "
                f"labels: {labels}; "
                f"objects: {ckpt.postprocess_settings.method}; {norm} over the whole image"
                f"{_object_size_text(ckpt)}"
            )
            continue
        line = (
            f"{name}: {ckpt.model_name} {ckpt.model_kwargs}; input: {ckpt.image_channels}-channel "
            f"3D volume, {p.size}x{p.size} patches on {p.num_slices} slices "
            f"({p.slice_axis}); labels: {labels}; {norm}"
        )
        line += _brain_input_text(ckpt)
        typer.echo(line)


def _object_size_text(ckpt) -> str:
    """The training objects' size and the default scale of a 2D model (``models``)."""
    from medseg.predict import training_diameter

    trained = training_diameter(ckpt)
    text = "" if trained is None else f"; trained on objects of median diameter {trained:g} px"
    default = ckpt.inference_settings.diameter
    if default == "auto":
        text += "; scale chosen per image (--diameter auto: 1, 1/2, 1/4 or 1/8)"
    elif isinstance(default, float):
        text += f"; --diameter {default:g} by default"
    return text


def _brain_input_text(ckpt) -> str:
    """What a 3D model expects of its input and how its labels are defined (``models``)."""
    from medseg.predict import model_grid

    text = ""
    if ckpt.uses_brain_extraction:
        text += (
            "; input requirements: a T1-weighted adult head (DICOM folder, NIfTI, MGZ, ...), "
            "raw or skull-stripped: the skull is removed with deepbet when present "
            "(--skull-strip auto)"
        )
    grid = model_grid(ckpt)
    if grid is not None:
        low, high = grid.spacing_range_mm
        span = " x ".join(
            f"{lo:.3g}" if abs(lo - hi) < 1e-6 else f"{lo:.3g}-{hi:.3g}"
            for lo, hi in zip(low, high, strict=True)
        )
        text += (
            f"; trained on {grid.orientation or 'mixed'}-oriented voxels of {span} mm (z, y, x): "
            "other orientations are turned and other spacings resampled, and the labels come "
            "back on the input's grid"
        )
    if ckpt.labels_note:
        text += f"; {ckpt.labels_note}"
    return text


def validate_cmd(
    manifest: Annotated[
        Path, typer.Argument(help="Manifest CSV, nnU-Net folder or datalist JSON to check.")
    ],
    data_root: Annotated[
        Optional[Path],
        typer.Option("--data-root", help="Root of manifest paths (default: $MEDSEG_DATA_ROOT)."),
    ] = None,
    check_labels: Annotated[
        bool,
        typer.Option("--labels/--no-labels", help="Also read label maps to check their values."),
    ] = True,
) -> None:
    """Check a manifest: files, image/label grids and label values; list every problem."""
    from medseg.manifest import load_valid_manifest

    # schema and file problems together, as one list (the rows with schema problems are
    # not opened): the checks that train, evaluate and batch make when they load it
    loaded = load_valid_manifest(manifest, data_root=data_root, check_labels=check_labels)
    typer.echo(f"{manifest}: {len(loaded.cases)} cases OK (data root {loaded.data_root})")


def info_cmd(
    path: Annotated[Path, typer.Argument(help="Image or label file (or DICOM folder).")],
    series: Annotated[
        Optional[str],
        typer.Option(
            "--series",
            help="DICOM folder with several series: the one to show, by SeriesInstanceUID "
            "or SeriesNumber (without it, the series are listed).",
        ),
    ] = None,
) -> None:
    """Show an image's shape (C, Z, Y, X), spacing, orientation and intensity range."""
    import numpy as np

    from medseg.io import is_dicom_folder, list_dicom_series, read_image, read_volume_info

    if series is None and path.is_dir() and is_dicom_folder(path):
        found = list_dicom_series(path)
        if len(found) > 1:
            _print_dicom_series(path, found)
            return
    vol = read_image(path, series=series)
    arr = vol.array
    geo = vol.geometry
    typer.echo(f"file:        {path}")
    typer.echo(f"shape:       {tuple(arr.shape)}  (C, Z, Y, X)")
    if path.is_file():  # header only; a DICOM folder is never a time series
        num_timepoints = read_volume_info(path).num_timepoints
        if num_timepoints > 1:
            typer.echo(f"time points: {num_timepoints}  (a 4D time series; read as C)")
    typer.echo(f"spacing_mm:  {tuple(round(float(s), 6) for s in geo.spacing_mm)}  (z, y, x)")
    typer.echo(f"orientation: {_orientation(geo)}")
    typer.echo(f"axial axis:  {_axial_axis_name(geo)}")
    typer.echo(f"range:       {float(np.min(arr)):.6g} .. {float(np.max(arr)):.6g}")


def _print_dicom_series(path: Path, found) -> None:
    """List a DICOM folder's series (``medseg info DIR`` without ``--series``)."""
    typer.echo(f"folder:      {path}")
    typer.echo(f"series:      {len(found)} DICOM series; show one with --series UID|NUMBER")
    for s in found:
        size = f"{s.rows} x {s.columns}" if s.rows and s.columns else "? x ?"
        number = "-" if s.number is None else str(s.number)
        typer.echo(
            f"  {number:>6}  {s.description!r}  {s.modality or '?'}, {s.num_files} files "
            f"of {size}, uid {s.uid}"
        )


def _axial_axis_name(geometry) -> str:
    from medseg.io import axial_axis

    axis = axial_axis(geometry)
    return f"{axis} ({'ZYX'[axis]})"


_AXIS_NAMES = {
    "R": "right",
    "L": "left",
    "A": "anterior",
    "P": "posterior",
    "S": "superior",
    "I": "inferior",
}


def _orientation(geometry) -> str:
    """``RAS  (array X, Y, Z increase towards right, anterior, superior)``.

    The codes are nibabel's ``aff2axcodes`` of the RAS affine: for each voxel axis x, y, z
    (array X, Y, Z), the world direction it comes nearest to as its index grows.
    """
    import numpy as np
    from nibabel.orientations import aff2axcodes

    codes = "".join(code or "?" for code in aff2axcodes(geometry.affine))
    towards = ", ".join(_AXIS_NAMES.get(c, "?") for c in codes)
    columns = geometry.affine[:3, :3] / np.linalg.norm(geometry.affine[:3, :3], axis=0)
    cosines = np.clip(np.abs(columns).max(axis=0), 0.0, 1.0)  # per voxel axis, nearest world axis
    degrees = float(np.degrees(np.arccos(cosines.min())))
    oblique = f"; oblique, up to {degrees:.1f} deg off those axes" if degrees >= 0.05 else ""
    return f"{codes}  (array X, Y, Z increase towards {towards}{oblique})"


def patches_cmd(
    path: Annotated[Path, typer.Argument(help="Volume to plan a patch grid for.")],
    patch_size: Annotated[
        tuple[int, int], typer.Option("--patch-size", help="In-plane patch size (y x), voxels.")
    ] = (40, 40),
    stride: Annotated[
        tuple[int, int], typer.Option("--stride", help="In-plane stride (y x), voxels.")
    ] = (10, 10),
    num_slices: Annotated[
        int, typer.Option("--num-slices", help="Input slices per 2.5D patch (odd).")
    ] = 3,
    slice_axis: Annotated[
        Optional[int],
        typer.Option("--slice-axis", help="Slice axis of (Z, Y, X); default: the axial axis."),
    ] = None,
    coverage: Annotated[
        Optional[Path],
        typer.Option("--coverage", help="Write the votes-per-voxel map here (source geometry)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --coverage file.")
    ] = False,
) -> None:
    """Plan the 2.5D patch grid of a volume: patch count, votes per voxel, memory."""
    import numpy as np

    from medseg.io import axial_axis, read_image, write_label
    from medseg.patches import PatchSpec, make_grid

    vol = read_image(path, allow_2d=num_slices == 1)
    axis = axial_axis(vol.geometry) if slice_axis is None else slice_axis
    spec = PatchSpec.two_and_half_d(patch_size, stride, num_slices=num_slices, slice_axis=axis)
    shape = np.moveaxis(vol.array[0], axis, 0).shape
    grid = make_grid(shape, spec)
    channels = vol.array.shape[0] * num_slices
    typer.echo(f"volume (slice axis first): {shape}, slice axis {axis} ({'ZYX'[axis]})")
    typer.echo(f"patch grid (z, y, x):      {grid.grid_shape} = {grid.num_patches} patches")
    typer.echo(f"model input:               ({channels}, {patch_size[0]}, {patch_size[1]})")
    typer.echo(f"votes per voxel:           up to {grid.max_votes()}")
    if coverage is not None:
        counts = np.moveaxis(grid.coverage(), 0, axis)
        if counts.max() > 255:
            raise ValueError(
                f"--coverage needs at most 255 votes per voxel, got {counts.max()}; raise --stride"
            )
        write_label(coverage, counts.astype(np.uint8), vol.geometry, overwrite=overwrite)
        typer.echo(f"coverage map:              {coverage}")
