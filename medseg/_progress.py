"""Progress bars for long work: an overall bar (cases) and one for the current case (patches).

The library's long functions take a plain ``progress(done, total)`` callback and draw
nothing themselves; :class:`Bars` turns those callbacks into rich bars with a rate and an
estimate of the time left. The commands create one per run, enabled when stderr is a
terminal and ``medseg -q`` was not given (:func:`bars_wanted`); disabled, every method
does nothing, so a batch job's log stays clean.

Example:
    >>> with Bars(total=2, description="predict", enabled=False) as bars:
    ...     for name in ("a.nii.gz", "b.nii.gz"):
    ...         callback = bars.item(name)
    ...         callback(10, 10)
    ...         bars.advance()
    >>> bars.completed
    2
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any


def bars_wanted(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is a terminal and ``-q`` was not given."""
    from medseg._logging import progress_wanted

    stream = sys.stderr if stream is None else stream
    return progress_wanted() and bool(getattr(stream, "isatty", lambda: False)())


class Bars:
    """An overall bar over ``total`` items and a bar for the item in progress.

    Args:
        total: Number of items (cases, images, folds).
        description: What the overall bar counts, e.g. ``"predict"``.
        unit: The item noun shown after the count.
        enabled: Draw; None: :func:`bars_wanted` (with ``file``: unless ``-q``).
        file: Where to draw (default stderr); a terminal is assumed when given (tests).
    """

    def __init__(
        self,
        total: int,
        description: str,
        *,
        unit: str = "cases",
        enabled: bool | None = None,
        file: IO[str] | None = None,
    ) -> None:
        self.total = total
        self.completed = 0
        if enabled is None:
            from medseg._logging import progress_wanted

            enabled = progress_wanted() if file is not None else bars_wanted()
        self._enabled = enabled
        self._file = file
        self._description = description
        self._unit = unit
        self._progress: Any = None
        self._overall: Any = None
        self._current: Any = None

    def __enter__(self) -> Bars:
        if not self._enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        console = (
            Console(file=self._file, force_terminal=True, width=100)
            if self._file is not None
            else Console(stderr=True)
        )
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            _count_column(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            _eta_column(),
            console=console,
            transient=True,
            redirect_stdout=sys.stdout.isatty() and self._file is None,
            redirect_stderr=False,
        )
        self._progress.start()
        self._overall = self._progress.add_task(
            self._description, total=self.total, unit=self._unit
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def item(self, name: str, unit: str = "patches") -> Callable[[int, int], None]:
        """Start the bar of one item; return its ``progress(done, total)`` callback."""
        if self._progress is None:
            return _ignore
        if self._current is not None:
            self._progress.remove_task(self._current)
        self._current = self._progress.add_task(f"  {name}", total=None, unit=unit)
        task, bar, overall, before = self._current, self._progress, self._overall, self.completed

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            if total:  # the overall bar moves with the item, so its estimate starts early
                bar.update(overall, completed=before + min(done / total, 1.0))

        return update

    def advance(self) -> None:
        """One more item done."""
        self.completed += 1
        if self._progress is not None:
            self._progress.update(self._overall, completed=self.completed)

    def print(self, text: str) -> None:
        """A line above the bars (or plain stdout when they are off)."""
        if self._progress is not None and self._file is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)


def _ignore(done: int, total: int) -> None:
    """The callback of a disabled bar."""


def _count_column() -> Any:
    """``done/total``, whole numbers (the overall bar moves in fractions of an item)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Count(ProgressColumn):
        def render(self, task: Any) -> Text:
            total = "?" if task.total is None else f"{int(task.total)}"
            return Text(f"{int(task.completed)}/{total}")

    return Count()


def _eta_column() -> Any:
    """``eta M:SS`` from the mean rate since the task started (steadier than rich's window,
    and known after the first update)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Eta(ProgressColumn):
        def render(self, task: Any) -> Text:
            elapsed, done, total = task.elapsed, task.completed, task.total
            if not elapsed or not done or not total:
                return Text("eta -:--")
            left = max(0.0, elapsed * (total - done) / done)
            minutes, seconds = divmod(int(round(left)), 60)
            hours, minutes = divmod(minutes, 60)
            text = f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
            return Text(f"eta {text}")

    return Eta()
