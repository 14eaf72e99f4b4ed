"""One line per failure: how a multi-input run reports an input that failed, whatever raised.

The user's errors (ValueError, OSError, TypeError, KeyError) carry medseg's one-line
messages; anything else (MemoryError, a torch RuntimeError, a bug) is named by its type,
so the line says what went wrong while the other inputs still run.
"""

from __future__ import annotations

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, KeyError)
"""The errors whose message is the whole story (medseg's own "must ..., got ..." lines)."""


def one_line(err: BaseException) -> str:
    """``err`` as one line: its message, prefixed by its type unless it is a user error.

    Example:
        >>> one_line(ValueError("image 'a.nii' must be 3D,\\n got 2D"))
        "image 'a.nii' must be 3D, got 2D"
        >>> one_line(MemoryError("cannot allocate 34 GB"))
        'MemoryError: cannot allocate 34 GB'
    """
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, USER_ERRORS):
        return text
    return f"{type(err).__name__}: {text}"
