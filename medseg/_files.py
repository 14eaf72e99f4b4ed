"""Atomic output files (ARCHITECTURE.md section 6): every file medseg writes goes to a
temporary file in the destination folder, which is renamed over the destination only once
complete; the destination folder is probed for writability before any work.

:func:`check_output_path` and :func:`atomic_output` are also importable from
:mod:`medseg.io`, where they lived first (``from medseg.io import atomic_output``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medseg.typing import PathLike


def full_suffix(path: Path) -> str:
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
    parent = path.parent
    if not parent.exists():
        raise FileNotFoundError(
            f"output folder {str(parent)!r} must exist, got a missing folder "
            f"(for output {str(path)!r}); create it first"
        )
    if not parent.is_dir():
        raise NotADirectoryError(
            f"output folder {str(parent)!r} must be a folder, got a file (for output {str(path)!r})"
        )
    try:  # a real probe: permissions, read-only mounts and pseudo file systems alike
        before = os.stat(parent)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
        with contextlib.suppress(OSError):  # the probe leaves the folder as it found it
            os.utime(parent, ns=(before.st_atime_ns, before.st_mtime_ns))
    except OSError as err:
        reason = (err.strerror or type(err).__name__).lower()
        raise PermissionError(
            f"output {str(path)!r} must be writable, got {reason} for its folder "
            f"{str(parent)!r}; choose another -o"
        ) from None
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
    suffix = full_suffix(path)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not overwrite and path.exists():  # appeared while we were writing
            raise FileExistsError(
                f"output {str(path)!r} must not exist, got a file created during the write; "
                "pass --overwrite to replace it"
            )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_output_folder(path: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_output`, for an output folder: yield a temporary folder, rename it."""
    path = check_output_path(path, overwrite=overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = tmp.with_name(tmp.name + ".old")
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            if not overwrite:  # appeared while we were writing
                raise FileExistsError(
                    f"output {str(path)!r} must not exist, got one created during the write; "
                    "pass --overwrite to replace it"
                )
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            _remove(leftover)


@contextlib.contextmanager
def atomic_output_detached(path: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_output`, for a header that names its data file (``.mhd``).

    Yields ``path``'s name inside a temporary folder; the writer puts the data file
    beside it. All files are then moved next to ``path``, the header last, so a reader
    never finds a header without its data.
    """
    path = check_output_path(path, overwrite=overwrite)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield folder / path.name
        written = sorted(folder.iterdir(), key=lambda p: p.name == path.name)  # header last
        if not overwrite:
            for existing in (path.parent / p.name for p in written):
                if existing.exists():
                    raise FileExistsError(
                        f"output {str(existing)!r} must not exist, got an existing file "
                        f"(written with {str(path)!r}); pass --overwrite to replace it"
                    )
        for item in written:
            os.replace(item, path.parent / item.name)
    finally:
        _remove(folder)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
