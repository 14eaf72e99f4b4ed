"""The ``medseg`` logger's one handler, as the command line sets it up (``-v`` / ``-q``).

The library only logs, through ``logging.getLogger("medseg.<module>")``, and installs no
handler: in a notebook or a pipeline the messages go wherever the application's logging
sends them (by default warnings only, on stderr). The CLI calls :func:`configure` once per
invocation: info messages by default, debug with ``-v``/``-vv``, warnings and errors only
with ``-q``, which also turns the progress bars off (:func:`progress_wanted`).
"""

from __future__ import annotations

import logging
import sys

_state = {"quiet": False}


class _StderrHandler(logging.Handler):
    """One line per record on the *current* ``sys.stderr``: info bare, others prefixed."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(self.format(record).split("\n"))
            if record.levelno >= logging.ERROR:
                text = f"Error: {text}"
            elif record.levelno >= logging.WARNING:
                text = f"Warning: {text}"
            elif record.levelno < logging.INFO:
                text = f"debug {record.name}: {text}"
            print(text, file=sys.stderr, flush=True)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure(verbosity: int = 0) -> logging.Logger:
    """Route the ``medseg`` logger to stderr at the level ``verbosity`` asks for.

    Args:
        verbosity: -1 (``-q``): warnings; 0: info; 1 or more (``-v``): debug.

    Returns:
        The ``medseg`` logger. Calling again replaces the handler (tests call the CLI
        many times in one process).
    """
    logger = logging.getLogger("medseg")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    _state["quiet"] = verbosity < 0
    return logger


def progress_wanted() -> bool:
    """False after ``medseg -q``: the commands then draw no progress bars."""
    return not _state["quiet"]
