"""The ``medseg`` command line (Typer + rich).

Heavy imports (torch, numpy, nibabel, pandas) happen inside the command bodies so
that ``medseg --help`` answers instantly. One handler, :func:`main`, turns expected
errors into a one-line ``Error: ...`` message and exit status 1; ``--debug`` shows
the traceback instead.

This module holds the app, its root options, the error handler and the small commands;
the others live in ``cli_predict``, ``cli_evaluate``, ``cli_info``, ``cli_crossval``,
``cli_batch`` and ``cli_manifest``, and :func:`_register_subcommands` attaches them all in
the order of ``medseg --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from medseg.cli_common import STATE as _STATE
from medseg.cli_common import error_console as _error_console
from medseg.cli_evaluate import evaluate_cmd  # registered below, and importable from here
from medseg.cli_info import info_cmd, models_cmd, patches_cmd, validate_cmd
from medseg.cli_predict import predict_cmd
from medseg.options import ObjectMetric


def _readable_list_arguments() -> None:
    """Typer shows a list argument's type as ``<list[Path]>``; show ``<path>`` instead (the
    argument's name already ends in ``...``).

    Only the help text of ``TyperArgument`` changes (recent Typer); parsing is untouched.
    """
    from typer import core

    argument = getattr(core, "TyperArgument", None)
    original = getattr(argument, "display_type_rich", None)
    if argument is None or original is None or getattr(original, "medseg", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> Any:
        text = original(self, ctx)
        if isinstance(text, str) and text.startswith("<list[") and text.endswith("]>"):
            return f"<{text[len('<list[') : -2].lower()}>"
        return text

    display_type_rich.medseg = True  # type: ignore[attr-defined]
    argument.display_type_rich = display_type_rich


_readable_list_arguments()

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
"""``-h`` as well as ``--help``, on every command."""

app = typer.Typer(
    name="medseg",
    help="Segment 3D brain MRI and microscopy images; evaluate segmentations.",
    no_args_is_help=True,
    context_settings=HELP_OPTIONS,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Errors that are the user's input, reported in one line. Anything else is a bug
# and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, OSError, KeyError)


def _print_version(value: bool) -> None:
    if value:
        from medseg import __version__

        typer.echo(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback when a command fails.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose", "-v", count=True, help="More messages from the library (-vv: debug)."
        ),
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")
    ] = False,
) -> None:
    """Segment 3D brain MRI and microscopy images; evaluate segmentations."""
    from medseg._logging import configure

    configure(verbosity=-1 if quiet else verbose)


def version_cmd() -> None:
    """Print the medseg version."""
    from medseg import __version__

    typer.echo(__version__)


def train_cmd(
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML/JSON run configuration.")
    ] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override one key, e.g. --set schedule.epochs=5 (repeatable).",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in out_dir from its last.pt.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start again in an out_dir that holds a run.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    no_weight_map: Annotated[
        bool,
        typer.Option(
            "--no-weight-map",
            help="Ablation: train with plain cross-entropy instead of the U-Net weight map.",
        ),
    ] = False,
    extend_epochs: Annotated[
        int,
        typer.Option(
            "--extend-epochs",
            metavar="N",
            help="With --resume: train N epochs more than the run planned (recorded in "
            "config.json and log.csv). Other changes to a resumed run are refused.",
        ),
    ] = 0,
) -> None:
    """Train a model: 2.5D patches, augmentation, whole-volume validation, checkpoints."""
    from medseg.config import load_config
    from medseg.train import is_main_process, train

    if resume and overwrite:
        raise ValueError("--resume and --overwrite must not be combined, got both")
    overrides = list(set_ or [])
    resolved = load_config(config, overrides)
    if no_weight_map:
        if not resolved.loss.weight_map:
            raise ValueError(
                "--no-weight-map needs a config that trains with a weight map "
                f"(loss.weight_map true), got loss.name {resolved.loss.name!r} without one"
            )
        resolved = load_config(config, overrides + ["loss.weight_map=false", "loss.name=ce"])
    from medseg._logging import progress_wanted

    best = train(
        resolved,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet and progress_wanted(),
        extend_epochs=extend_epochs,
    )
    if is_main_process():  # under torchrun, one line rather than one per rank
        typer.echo(f"best checkpoint: {best}")


def export_cmd(
    output: Annotated[
        Path, typer.Argument(help="Output file: .onnx (ONNX) or .pt/.ts (TorchScript).")
    ],
    model: Annotated[
        str,
        typer.Option("-m", "--model", help="Checkpoint file or built-in model name."),
    ] = "brain-tissue",
    format: Annotated[
        Optional[str],
        typer.Option("--format", help="onnx or torchscript (default: from the suffix)."),
    ] = None,
    opset: Annotated[
        Optional[int], typer.Option("--opset", help="ONNX opset (default: the exporter's).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing file.")
    ] = False,
) -> None:
    """Export a model to ONNX or TorchScript, checked against PyTorch after writing."""
    from medseg.checkpoint import load_checkpoint
    from medseg.export import export_model

    result = export_model(
        load_checkpoint(model), output, format=format, overwrite=overwrite, opset=opset
    )
    typer.echo(result.summary())


def tune_postprocess_cmd(
    output: Annotated[Path, typer.Argument(help="The tuned checkpoint to write (.pt).")],
    manifest: Annotated[
        Path,
        typer.Option(
            "--manifest",
            help="Manifest CSV (or nnU-Net folder, datalist JSON) with labelled validation cases.",
        ),
    ],
    model: Annotated[
        str, typer.Option("-m", "--model", help="Checkpoint file or built-in model name.")
    ] = "brain-tissue",
    data_root: Annotated[
        Optional[Path],
        typer.Option("--data-root", help="Root of manifest paths (default: $MEDSEG_DATA_ROOT)."),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="The validation split.")] = "val",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, mps or cuda[:N].")] = "auto",
    fast: Annotated[
        bool, typer.Option("--fast", help="Predict whole slices instead of voting patches.")
    ] = False,
    crf: Annotated[
        bool, typer.Option("--crf/--no-crf", help="Grid-search the CRF's appearance kernel.")
    ] = True,
    cleanup: Annotated[
        bool,
        typer.Option("--cleanup/--no-cleanup", help="Choose the largest-component clean-up."),
    ] = True,
    w_appearance: Annotated[
        Optional[list[float]],
        typer.Option("--w-appearance", metavar="W1", help="CRF w1 values to try (repeatable)."),
    ] = None,
    sigma_alpha_mm: Annotated[
        Optional[list[float]],
        typer.Option(
            "--sigma-alpha-mm", metavar="MM", help="CRF position sigma values to try (mm)."
        ),
    ] = None,
    sigma_beta: Annotated[
        Optional[list[float]],
        typer.Option(
            "--sigma-beta", metavar="SIGMA", help="CRF intensity sigma values (normalised units)."
        ),
    ] = None,
    objects: Annotated[
        bool,
        typer.Option(
            "--objects/--no-objects",
            help="2D object models: choose components or the seeded watershed (and its "
            "parameters), and a boundary model's foreground threshold.",
        ),
    ] = True,
    objects_metric: Annotated[
        ObjectMetric,
        typer.Option("--objects-metric", help="Choose objects by rand_error (EM) or ap (nuclei)."),
    ] = "rand_error",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output.")
    ] = False,
) -> None:
    """Choose CRF parameters, the clean-up or the object method on validation cases; write a
    tuned checkpoint."""
    from medseg.checkpoint import load_checkpoint
    from medseg.tuning import (
        crf_table_markdown,
        objects_choice,
        objects_table_markdown,
        tune_postprocess,
    )

    grid = {
        k: tuple(v)
        for k, v in (
            ("w_appearance", w_appearance),
            ("sigma_alpha_mm", sigma_alpha_mm),
            ("sigma_beta", sigma_beta),
        )
        if v
    }
    result = tune_postprocess(
        load_checkpoint(model),
        manifest,
        output,
        data_root=data_root,
        split=split,
        device=device,
        fast=fast,
        crf=crf,
        cleanup=cleanup,
        crf_grid=grid,
        objects=objects,
        objects_metric=objects_metric,
        overwrite=overwrite,
        progress=True,
    )
    typer.echo(f"validation cases ({split}): {', '.join(result.cases)}")
    if result.objects_table is not None:
        tried = len(result.objects_table)
        typer.echo(f"objects ({tried} settings, best first by {objects_metric}):")
        typer.echo(objects_table_markdown(result.objects_table))
        typer.echo(f"stored: {objects_choice(result.objects_table)}")
    if result.crf_table is not None:
        typer.echo("CRF grid search (best first; the first row is without CRF):")
        typer.echo(crf_table_markdown(result.crf_table))
        table = result.crf_table
        gain = float(table.loc[table["crf"], "delta_dice"].iloc[0])
        if gain < 0:
            typer.echo(
                f"the best CRF setting lowered the mean validation Dice by {-gain:.4f}: "
                "predict without --crf for this model (the parameters are stored anyway)"
            )
    if result.cleanup is not None:
        typer.echo("largest-component clean-up (kept if the mean Dice does not drop):")
        for c in result.cleanup.candidates:
            verdict = "kept" if c.applied else "rejected"
            typer.echo(
                f"  {c.target}: mean Dice {c.dice_before:.4f} -> {c.dice_after:.4f} ({verdict})"
            )
    typer.echo(f"wrote {result.output}")
    if result.failures:  # tuned on the others; the exit status says it was not all
        err = _error_console()
        err.print(
            f"{len(result.failures)} validation case(s) failed and were left out:", markup=False
        )
        for case, reason in result.failures:
            err.print(f"  {case}: {reason}", markup=False)
        raise typer.Exit(1)


def _register_subcommands() -> None:
    """Attach the commands to :data:`app` in the order ``medseg --help`` lists them."""
    app.command("version")(version_cmd)
    app.command("train")(train_cmd)
    app.command("predict")(predict_cmd)
    app.command("export")(export_cmd)
    app.command("tune-postprocess")(tune_postprocess_cmd)
    app.command("models")(models_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("validate")(validate_cmd)
    app.command("info")(info_cmd)
    app.command("patches")(patches_cmd)
    from medseg.cli_batch import batch_app  # light: torch and dask load inside its commands

    app.add_typer(batch_app, name="batch")
    from medseg.cli_crossval import crossval_cmd
    from medseg.cli_manifest import manifest_app

    app.command("crossval")(crossval_cmd)
    app.add_typer(manifest_app, name="manifest")


_register_subcommands()


def _click_exceptions():
    """The click exception module that this Typer uses (Typer >= 0.24 vendors click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older Typer depends on click itself
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 1 error).

    ``--debug`` anywhere on the command line re-raises errors with their traceback.
    """
    import warnings

    click_errors = _click_exceptions()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    _STATE["debug"] = debug
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning  # one line each, no source line
        return _run(args, debug, click_errors)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning as one line, ``Warning: <message>``, on stderr."""
    text = " ".join(str(message).split())
    _error_console().print(f"Warning: {text}", markup=False)


def _run(args: list[str], debug: bool, click_errors) -> int:
    """:func:`main` inside its warning display."""
    try:
        status = app(args=args, prog_name="medseg", standalone_mode=False)
        if isinstance(status, int):  # click returns typer.Exit codes when not standalone
            return status
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        _error_console().print("Aborted.", markup=False)
        return 1
    except click_errors.ClickException as exc:
        if isinstance(exc, click_errors.NoArgsIsHelpError):
            typer.echo(exc.format_message())  # the help text; asking for it is not an error
            return 0
        if debug:
            raise
        # usage errors (unknown option, missing argument, bad type): one line, exit 1
        _error_console().print(f"Error: {exc.format_message()}", markup=False)
        return 1
    except _USER_ERRORS as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        _error_console().print(f"Error: {message}", markup=False)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
