"""The extraction's progress: a bar where someone watches, lines where a log is written.

Where it goes (:func:`progress_bar`):

* **A terminal**: a rich progress bar on stderr with images per second, gone
  when the run ends (transient).
* **Jupyter** (an IPython kernel): an HTML bar in the cell's output, updated in
  place through ``IPython.display`` (``display_id``), at most every half second:
  no ipywidgets needed. It stays, with the time taken, when the run ends.
* **Anything else** (a pipe, a log file, ``nohup``, a batch job): one line on
  stderr every :func:`progress_every` seconds (``XRAYFEAT_PROGRESS_EVERY``,
  default 10), no carriage returns, and one last line when a run that printed
  any ends. A run shorter than the interval prints nothing.
"""

from __future__ import annotations

import html
import os
import sys
import time

__all__ = ["PROGRESS_EVERY_ENV", "in_notebook", "progress_bar", "progress_every"]

#: Seconds between two progress lines where stderr is not a terminal.
PROGRESS_EVERY_ENV = "XRAYFEAT_PROGRESS_EVERY"
DEFAULT_EVERY = 10.0


def progress_every() -> float:
    """:data:`PROGRESS_EVERY_ENV` in seconds when set to a positive number, else :data:`DEFAULT_EVERY`."""
    try:
        seconds = float(os.environ.get(PROGRESS_EVERY_ENV, "").strip() or DEFAULT_EVERY)
    except ValueError:
        return DEFAULT_EVERY
    return seconds if seconds > 0 else DEFAULT_EVERY


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (an IPython kernel shell); IPython is never imported here."""
    from xrayfeat.display import ipython_shell

    return type(ipython_shell()).__name__ == "ZMQInteractiveShell"


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


class _Counter:
    """Images done, rate and time left: what every form shows."""

    def __init__(self, total: int, label: str):
        self.total, self.label = total, label
        self.done = 0
        self.start = time.monotonic()

    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.start, 1e-9)

    def text(self) -> str:
        percent = 100 * self.done / self.total if self.total else 100
        line = f"{self.label}: {self.done}/{self.total} images ({percent:.0f}%)"
        rate = self.rate()
        if self.done and self.done < self.total:
            line += f", {rate:.1f} img/s, about {_eta((self.total - self.done) / rate)} left"
        elif self.done >= self.total:
            line += f" in {_eta(time.monotonic() - self.start)}"
        return line


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n):
        pass


class _RichProgress:
    """A rich progress bar on stderr with images per second; gone when the run ends (transient)."""

    def __init__(self, total: int, console, label: str = "extract"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn(label), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self._task = self._progress.add_task(label, total=total, rate="-")
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


class _LineProgress(_Counter):
    """One line on stderr every ``every`` seconds (none for a run shorter than that), and one at the end."""

    def __init__(self, total: int, label: str, every: float):
        super().__init__(total, label)
        self.every = every
        self.last = self.start
        self.printed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self.printed and exc_type is None:
            self._say()
        return False

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            self._say()

    def _say(self) -> None:
        self.printed = True
        print(f"xrayfeat: {self.text()}", file=sys.stderr, flush=True)


class _HtmlBar:
    """What the notebook shows: an HTML ``<progress>`` bar (and the same line as text for plain frontends)."""

    def __init__(self, counter: _Counter):
        self.counter = counter

    def _repr_html_(self) -> str:
        c = self.counter
        return (f'<div style="font-family: monospace"><progress value="{c.done}" max="{max(c.total, 1)}" '
                f'style="width: 40ex; vertical-align: middle"></progress> {html.escape(c.text())}</div>')

    def __repr__(self) -> str:
        return self.counter.text()


class _NotebookProgress(_Counter):
    """An HTML bar in the cell's output, updated in place (``display_id``) at most every half second."""

    def __init__(self, total: int, label: str):
        super().__init__(total, label)
        self.handle = None
        self.last = 0.0

    def __enter__(self):
        from IPython.display import display

        self.handle = display(_HtmlBar(self), display_id=True)
        self.last = time.monotonic()
        return self

    def __exit__(self, *exc):
        self._update()
        return False

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= 0.5:
            self.last = now
            self._update()

    def _update(self) -> None:
        if self.handle is not None:
            self.handle.update(_HtmlBar(self))


def progress_bar(enabled: bool, total: int, label: str = "extract"):
    """The progress of ``total`` images (a context manager with ``advance(n)``): see the module's text for where."""
    if not enabled or total <= 0:
        return _NoProgress()
    if in_notebook():
        return _NotebookProgress(total, label)
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal:
        return _RichProgress(total, console, label)
    return _LineProgress(total, label, progress_every())
