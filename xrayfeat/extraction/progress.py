"""The extraction's progress bar: shown only where someone watches it, and gone when the run ends."""

from __future__ import annotations

import time

__all__ = ["progress_bar"]


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n):
        pass


class _RichProgress:
    """A rich progress bar on stderr with images per second; gone when the run ends (transient)."""

    def __init__(self, total: int, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("extract"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self._task = self._progress.add_task("extract", total=total, rate="-")
        self._start = time.perf_counter()
        self._done = 0

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def advance(self, n: int) -> None:
        self._done += n
        rate = self._done / max(time.perf_counter() - self._start, 1e-9)
        self._progress.update(self._task, advance=n, rate=f"{rate:.1f}")


def progress_bar(enabled: bool, total: int):
    """A progress bar (a context manager with ``advance(n)``) on a terminal; never in a pipe or a log file."""
    if enabled:
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            return _RichProgress(total, console)
    return _NoProgress()
