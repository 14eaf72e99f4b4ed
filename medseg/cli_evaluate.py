"""``medseg evaluate``: score predictions against reference labels and print the tables.

The command parses its options and calls :func:`medseg.evaluation.evaluate_files` (one
pair) or :func:`medseg.evaluation.evaluate_manifest` (a manifest and a folder of
predictions); the helpers below print the per-tissue, case-level and object metrics with
rich. Pandas and the metrics load inside the command body, so ``medseg --help`` stays
instant. :mod:`medseg.cli` registers the command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from medseg.options import LabelFormat


def evaluate_cmd(
    pred: Annotated[
        Optional[Path],
        typer.Argument(help="Predicted label map, instance map or mask (any supported format)."),
    ] = None,
    label: Annotated[
        Optional[Path], typer.Argument(help="Reference label map with the same grid.")
    ] = None,
    manifest: Annotated[
        Optional[Path],
        typer.Option(
            "--manifest",
            help="Manifest CSV, nnU-Net folder, datalist JSON or image folder: evaluate every "
            "case that has a label.",
        ),
    ] = None,
    pred_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--pred-dir",
            help="With --manifest: folder holding <case>.nii.gz etc. (object label formats: "
            "<case>_instances.png first, else <case>.png).",
        ),
    ] = None,
    data_root: Annotated[
        Optional[Path],
        typer.Option("--data-root", help="Root of manifest paths (default: $MEDSEG_DATA_ROOT)."),
    ] = None,
    split: Annotated[
        Optional[str], typer.Option("--split", help="With --manifest: only cases of this split.")
    ] = None,
    labels: Annotated[
        Optional[str],
        typer.Option(
            "--labels", help='Label names, e.g. "1=CSF,2=GM,3=WM" (default: manifest sidecar).'
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "-o",
            "--output",
            help="Report CSV; a .md (and for classes a _cases.csv) is written beside.",
        ),
    ] = None,
    tolerance_mm: Annotated[
        float, typer.Option("--tolerance-mm", help="Boundary F1 tolerance in mm.")
    ] = 2.0,
    distances: Annotated[
        bool,
        typer.Option("--distances/--no-distances", help="Compute HD95, ASSD and boundary F1."),
    ] = True,
    label_format: Annotated[
        Optional[LabelFormat],
        typer.Option(
            "--label-format",
            help="How LABEL encodes the truth: classes (tissue metrics; default), instances "
            "(0 bg, one id per object) or binary (objects = components of --foreground-value); "
            "instances/binary give object metrics. With --manifest the sidecar decides.",
        ),
    ] = None,
    foreground_value: Annotated[
        Optional[int],
        typer.Option(
            "--foreground-value",
            help="With --label-format binary: LABEL's foreground value, e.g. 255 (ISBI 2012).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing report files.")
    ] = False,
) -> None:
    """Per-tissue Dice, IoU, HD95, BF and volumes, or object metrics (AP, Rand error, splits)."""
    from medseg import evaluation

    formats = ("classes", "instances", "binary")
    if label_format is not None and label_format not in formats:
        raise ValueError(
            f"--label-format must be classes, instances or binary, got {label_format!r}"
        )
    if manifest is not None:
        if pred is not None or label is not None:
            raise ValueError(
                "PRED and LABEL must be omitted with --manifest, got "
                f"{[str(p) for p in (pred, label) if p is not None]}"
            )
        if pred_dir is None:
            raise ValueError("--pred-dir must be given with --manifest, got nothing")
        result = evaluation.evaluate_manifest(
            manifest,
            pred_dir,
            data_root=data_root,
            split=split,
            labels=labels,
            distances=distances,
            tolerance_mm=tolerance_mm,
            label_format=label_format,
            foreground_value=foreground_value,
            output=output,
            overwrite=overwrite,
        )
    else:
        if pred is None or label is None:
            raise ValueError(
                "PRED and LABEL must both be given (or use --manifest with --pred-dir), "
                f"got PRED={pred} LABEL={label}"
            )
        result = evaluation.evaluate_files(
            pred,
            label,
            labels=labels,
            distances=distances,
            tolerance_mm=tolerance_mm,
            label_format=label_format or "classes",
            foreground_value=foreground_value,
            output=output,
            overwrite=overwrite,
        )
    _print_result(result)
    if result.failures:
        raise typer.Exit(1)


def _fmt(value, digits: int = 4) -> str:
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _print_result(result) -> None:
    """Print per-tissue rows, case-level values, the summary and failures with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    rows = result.rows
    if result.is_objects:
        _print_objects(result, console)
    elif len(rows):
        table = Table(title="Per-tissue metrics", title_justify="left")
        cols = ["case", "tissue", "label", "dice", "iou", "precision", "recall", "hd95_mm"]
        cols += ["bf_score", "volume_ml", "target_volume_ml"]
        headers = {"precision": "prec", "hd95_mm": "hd95 mm", "bf_score": "BF"}
        headers |= {"volume_ml": "vol mL", "target_volume_ml": "ref mL"}
        for col in cols:
            justify: Literal["left", "right"] = "left" if col in ("case", "tissue") else "right"
            table.add_column(headers.get(col, col), justify=justify)
        for rec in rows[cols].to_dict("records"):
            digits = {"volume_ml": 2, "target_volume_ml": 2, "hd95_mm": 2}
            table.add_row(*(_fmt(rec[c], digits.get(c, 4)) for c in cols))
        console.print(table)
        case_table = Table(title="Case-level metrics", title_justify="left")
        case_cols = ["case", "accuracy", "mean_iou", "fw_iou", "mean_class_accuracy"]
        case_cols += ["weighted_dice"]
        case_headers = {"mean_class_accuracy": "mean acc", "weighted_dice": "wt. Dice"}
        for col in case_cols:
            justify = "left" if col == "case" else "right"  # type: ignore[assignment]
            case_table.add_column(case_headers.get(col, col), justify=justify)
        for values in result.cases:
            case_table.add_row(*(_fmt(values[c]) for c in case_cols))
        console.print(case_table)
        if len(result.cases) == 1:
            values = result.cases[0]
            cm_table = Table(
                title="Confusion matrix (rows: reference, columns: prediction)",
                title_justify="left",
            )
            cm_table.add_column("label")
            for lab in values["confusion_labels"]:
                cm_table.add_column(str(lab), justify="right")
            for lab, counts in zip(values["confusion_labels"], values["confusion"], strict=True):
                cm_table.add_row(str(lab), *(str(int(c)) for c in counts))
            console.print(cm_table)
        else:
            summary = result.summary
            sum_table = Table(
                title=f"Mean ± std over {len(result.cases)} cases (NaN cases)", title_justify="left"
            )
            metrics = ["dice", "iou", "precision", "recall", "hd95_mm", "bf_score", "volume_ml"]
            sum_table.add_column("tissue")
            for m in metrics:
                sum_table.add_column(m, justify="right")
            for rec in summary.to_dict("records"):
                cells = [
                    f"{_fmt(rec[m + '_mean'], 3)} ± {_fmt(rec[m + '_std'], 3)} "
                    f"({rec[m + '_n_nan']})"
                    for m in metrics
                ]
                sum_table.add_row(str(rec["tissue"]), *cells)
            console.print(sum_table)
    for path in result.written:
        console.print(f"wrote {path}")
    if result.failures:
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        err.print(f"{len(result.failures)} case(s) failed:", markup=False)
        for case, message in result.failures:
            err.print(f"  {case}: {message}", markup=False)


def _print_objects(result, console) -> None:
    """Print the object metrics per case and, for several cases, their mean and pooled split."""
    from rich.table import Table

    if not len(result.rows):
        return
    kind = "instance map" if result.label_format == "instances" else "binary mask components"
    table = Table(title=f"Object metrics (reference: {kind})", title_justify="left")
    cols = ["case", "num_pred", "num_target", "pixel_iou", "dice", "bf_score", "pixel_error"]
    cols += ["rand_error", "v_rand", "v_info", "ap", "ap_50", "f1_at_05", "split_rate"]
    headers = {"num_pred": "# pred", "num_target": "# ref", "pixel_iou": "pixel IoU"}
    headers |= {
        "dice": "Dice",
        "bf_score": "BF",
        "pixel_error": "pixel err",
        "rand_error": "Rand err",
        "v_rand": "V_Rand",
        "v_info": "V_Info",
    }
    headers |= {"ap": "AP", "ap_50": "AP@0.5", "f1_at_05": "F1@0.5", "split_rate": "split"}
    table.add_column("case", overflow="fold")  # long ids (DSB2018 hashes) wrap, never cut
    for col in cols[1:]:
        table.add_column(headers.get(col, col), justify="right")
    for rec in result.rows.to_dict("records"):
        cells = [_fmt(rec[c]) for c in cols[:-1]]
        split = f"{rec['touching_split']}/{rec['touching_pairs']}"
        table.add_row(*cells, f"{_fmt(rec['split_rate'], 3)} ({split})")
    if len(result.rows) > 1:
        s = result.summary.to_dict("records")[0]
        table.add_section()
        cells = [f"mean of {s['n_cases']}", "", ""]  # the totals are printed below
        cells += [_fmt(s[f"{c}_mean"]) for c in cols[3:-1]]
        cells.append(f"{_fmt(s['split_rate_mean'], 3)} ({s['split_rate_n_nan']} NaN)")
        table.add_row(*cells)
    console.print(table)
    if len(result.rows) > 1:
        s = result.summary.to_dict("records")[0]
        line = (
            f"pooled split rate: {s['touching_split']}/{s['touching_pairs']} touching pairs = "
            f"{_fmt(s['split_rate_pooled'], 3)}; objects: {s['num_pred']} predicted, "
            f"{s['num_target']} in the reference"
        )
        nans = [f"{c} {s[c + '_n_nan']}" for c in cols[3:] if s[c + "_n_nan"]]
        if nans:
            line += f"; means skip NaN cases ({', '.join(nans)})"
        console.print(line)
