"""``medseg manifest init``: a manifest CSV from a folder of images (and one of labels).

The command finds the cases (:func:`medseg.discover.find_cases`), draws the splits
(:func:`medseg.discover.assign_splits`), names the label values and writes the CSV and its
``.labels.json`` sidecar (:func:`medseg.manifest.write_manifest`), then prints what it
matched and what it did not. Labelled cases train unless ``--split`` sends some to ``val``
or ``test``; images without a label are ``test`` cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medseg.options import LabelFormat

manifest_app = typer.Typer(
    name="manifest",
    help="Build manifests (the CSV that train, evaluate and batch read) from folders.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@manifest_app.command("init")
def init_cmd(
    images: Annotated[
        Path,
        typer.Argument(
            metavar="IMAGES", help="Folder of images, searched recursively (DICOM folders too)."
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The manifest CSV to write.")],
    labels: Annotated[
        Optional[Path],
        typer.Option(
            "--labels",
            help="Folder of label maps, matched to the images by case id (default: label "
            "files among the images, named *_labels, *_seg, *_mask, ...).",
        ),
    ] = None,
    split: Annotated[
        Optional[list[str]],
        typer.Option(
            "--split",
            metavar="NAME=SIZE",
            help="Hold out labelled cases: val=0.2 (a fraction) or test=3 (a count); repeatable.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random split.")] = 0,
    data_root: Annotated[
        Optional[Path],
        typer.Option(
            "--data-root",
            help="Write paths relative to this folder (then pass it to the other commands); "
            "default: absolute paths.",
        ),
    ] = None,
    label_names: Annotated[
        Optional[str],
        typer.Option(
            "--label-names",
            metavar="VALUE=NAME,...",
            help="Name the label values, e.g. '0=background,1=CSF,2=GM,3=WM' (default: "
            "label_<value> for every value found).",
        ),
    ] = None,
    label_format: Annotated[
        LabelFormat,
        typer.Option("--label-format", help="classes (tissues), instances or binary (objects)."),
    ] = "classes",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing manifest.")
    ] = False,
) -> None:
    """Write a manifest from a folder of images (and labels), with a random validation split."""
    from medseg.discover import (
        assign_splits,
        find_cases,
        label_names_from_files,
        parse_split_fractions,
    )
    from medseg.io import check_output_path
    from medseg.manifest import Case, labels_path_for, write_manifest
    from medseg.report import parse_label_names

    if output.suffix.lower() != ".csv":
        raise ValueError(f"--output must be a .csv file, got {str(output)!r}")
    for target in (output, labels_path_for(output)):
        check_output_path(target, overwrite=overwrite)  # before any file is read
    fractions = parse_split_fractions(split or [])
    if data_root is not None and not data_root.is_dir():
        raise FileNotFoundError(f"--data-root {str(data_root)!r} must be a folder, got none")
    found = find_cases(images, labels)
    labelled = [case for case, _, label in found.cases if label is not None]
    if fractions and not labelled:
        raise ValueError(f"--split needs labelled cases, got none among {len(found.cases)}")
    splits = assign_splits(labelled, fractions, seed=seed)
    names: dict[int, str] | None = None
    foreground = None
    if label_names is not None:
        names = parse_label_names(label_names)
        names.setdefault(0, "background")
    elif labelled:
        label_files = [label for _, _, label in found.cases if label is not None]
        names, foreground = label_names_from_files(label_files, label_format)
    if label_format == "binary" and foreground is None and names is not None:
        raise ValueError("--label-format binary needs the labels to be read, got --label-names")
    cases = [
        Case(case, image, label, splits.get(case, "test")) for case, image, label in found.cases
    ]
    written = write_manifest(
        output,
        cases,
        label_names=names,
        label_format=label_format,
        foreground_value=foreground,
        data_root=data_root,
        overwrite=overwrite,
    )
    counts = {name: sum(c.split == name for c in cases) for name in ("train", "val", "test")}
    typer.echo(
        f"{len(cases)} cases: {len(labelled)} labelled ({counts['train']} train, "
        f"{counts['val']} val, {counts['test'] - len(found.unlabelled)} test), "
        f"{len(found.unlabelled)} without a label (test)"
    )
    if names:
        typer.echo("labels: " + ", ".join(f"{v}={n}" for v, n in names.items()))
    for case in found.unlabelled:
        typer.echo(f"no label: {case}")
    for path in found.unmatched_labels:
        typer.echo(f"no image for label: {path}")
    for case, paths in found.ambiguous:
        typer.echo(f"left out, ambiguous case id {case!r}: {', '.join(map(str, paths))}")
    for path in written:
        typer.echo(f"wrote {path}")
