"""The ``medseg`` command line (Typer + rich).

Heavy imports (torch, numpy, nibabel, pandas) happen inside the command bodies so
that ``medseg --help`` answers instantly. One handler, :func:`main`, turns expected
errors into a one-line ``Error: ...`` message and exit status 1; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

app = typer.Typer(
    name="medseg",
    help="Segment 3D brain MRI and microscopy images; evaluate segmentations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Errors that are the user's input, reported in one line. Anything else is a bug
# and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, OSError, KeyError)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback when a command fails.")
    ] = False,
) -> None:
    """Segment 3D brain MRI and microscopy images; evaluate segmentations."""


@app.command("version")
def version_cmd() -> None:
    """Print the medseg version."""
    from medseg import __version__

    typer.echo(__version__)


def _error_console():  # rich console on stderr, created lazily
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


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
    click_errors = _click_exceptions()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="medseg", standalone_mode=False)
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
