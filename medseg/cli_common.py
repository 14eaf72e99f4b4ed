"""What the ``medseg`` commands share: the ``--debug`` flag and the stderr console.

:func:`medseg.cli.main` sets :data:`STATE` before a command runs; a command that goes on
after one input fails (``medseg predict``) reads it to re-raise instead under ``--debug``.
Errors, warnings and lists of failures are printed on :func:`error_console`.
"""

from __future__ import annotations

STATE = {"debug": False}  # set by medseg.cli.main(): --debug anywhere on the command line


def error_console():  # rich console on stderr, created lazily
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)
