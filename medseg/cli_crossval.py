"""``medseg crossval``: k-fold cross-validation of a training config (:mod:`medseg.crossval`).

The command parses its options into a :class:`medseg.crossval.CrossvalOptions`, calls
:func:`medseg.crossval.crossval` and prints the summary. The fold assignments and kept
folds are logged (``medseg -q`` hides them). Exit status 1 when a fold failed (after the
others ran and the summary was written) or for a bad argument (nothing written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medseg.options import ObjectMetric


def crossval_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML/JSON run configuration.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the folds and summary.")],
    folds: Annotated[int, typer.Option("--folds", help="Number of folds.")] = 4,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set", metavar="KEY=VALUE", help="Override a config key for every fold (repeatable)."
        ),
    ] = None,
    data_root: Annotated[
        Optional[Path],
        typer.Option(
            "--data-root",
            help="Root of manifest paths (default: the config's, then $MEDSEG_DATA_ROOT).",
        ),
    ] = None,
    group_column: Annotated[
        str,
        typer.Option(
            "--group-column",
            help="Manifest column that every fold spans (ignored when the manifest lacks it).",
        ),
    ] = "spacing_group",
    blocks: Annotated[
        bool,
        typer.Option("--blocks", help="Contiguous folds by case id (serial sections)."),
    ] = False,
    inner_val: Annotated[
        bool,
        typer.Option(
            "--inner-val",
            help="Nested: choose the checkpoint on the previous fold, score only this one.",
        ),
    ] = False,
    tune: Annotated[
        bool,
        typer.Option(
            "--tune", help="Run tune-postprocess on the inner validation fold (needs --inner-val)."
        ),
    ] = False,
    tune_crf: Annotated[
        bool, typer.Option("--tune-crf/--no-tune-crf", help="Let --tune grid-search the CRF.")
    ] = True,
    objects_metric: Annotated[
        ObjectMetric,
        typer.Option("--objects-metric", help="What --tune chooses 2D objects by."),
    ] = "rand_error",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, mps or cuda[:N].")] = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start every fold again instead of continuing.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No training progress bars.")] = False,
) -> None:
    """K-fold cross-validation of a training config: train, choose and score every fold."""
    from medseg._device import check_device_name
    from medseg._logging import progress_wanted
    from medseg.crossval import CrossvalOptions, crossval

    options = CrossvalOptions(
        folds=folds,
        blocks=blocks,
        inner_val=inner_val,
        tune=tune,
        tune_crf=tune_crf,
        objects_metric=objects_metric,
        group_column=group_column or None,
        device=check_device_name(device, "--device"),
        overwrite=overwrite,
        progress=not quiet and progress_wanted(),
    )
    result = crossval(config, out, overrides=list(set_ or []), data_root=data_root, options=options)
    if result.summary is not None:
        typer.echo(f"wrote {result.report}\nwrote {result.summary}")
        typer.echo(result.summary.read_text(encoding="utf-8"))
    if result.failures:
        for fold, reason in result.failures:
            typer.echo(f"fold {fold} failed: {reason}", err=True)
        raise typer.Exit(1)
