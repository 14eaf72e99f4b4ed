"""Volume I/O: the only module that knows file axis order (STYLE.md section 2).

Output files are always written atomically: data go to a temporary file in the
destination folder, which is renamed over the destination only once complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medseg.typing import PathLike


def _full_suffix(path: Path) -> str:
    """Return the suffix including a compression suffix, e.g. ``.nii.gz``."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in {".gz", ".bz2"}:
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def check_output_path(path: PathLike, *, overwrite: bool = False) -> Path:
    """Check that ``path`` may be written.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
        FileNotFoundError: if the parent folder does not exist.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> check_output_path(d / "out.csv").name
        'out.csv'
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"output {str(path)!r} must not exist, got an existing file; "
            "pass --overwrite (overwrite=True) to replace it"
        )
    if not path.parent.exists():
        raise FileNotFoundError(
            f"output folder {str(path.parent)!r} must exist, got a missing folder "
            f"(for output {str(path)!r}); create it first"
        )
    return path


@contextlib.contextmanager
def atomic_output(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary file keeps the destination's suffix (e.g. ``.nii.gz``) so that
    writers choosing the format from the suffix work unchanged. If the body raises,
    the temporary file is removed and ``path`` is left untouched.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_output(out) as tmp:
        ...     _ = tmp.write_text("done")
        >>> out.read_text()
        'done'
    """
    path = check_output_path(path, overwrite=overwrite)
    suffix = _full_suffix(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not overwrite and path.exists():  # appeared while we were writing
            raise FileExistsError(
                f"output {str(path)!r} must not exist, got a file created during the write; "
                "pass --overwrite to replace it"
            )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
