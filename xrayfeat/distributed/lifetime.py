"""Helper processes end with their command, and write only into the run they were started for.

A command may start helper processes: the head's trainer
(:mod:`xrayfeat.models.head_process`), the decode pool
(:mod:`xrayfeat.extraction.decoding`), joblib's workers and the workers of a
local Dask cluster (:mod:`xrayfeat.distributed.session`). Three rules hold for
every one of them, and this module is the one place that makes them hold (it
sits low in the layers, beside the Dask session, so that extraction, models,
runs and the CLI all reach it):

1. **A signal unwinds the command.** Around every command the CLI makes
   SIGTERM and SIGHUP raise :class:`Interrupted` (:func:`signals_unwind`), a
   :class:`KeyboardInterrupt` as SIGINT raises: ``finally`` blocks and context
   managers run, so helpers are stopped, temporary files removed and a run
   folder marked interrupted, and the command exits ``128 + signal``
   (:func:`signal_of`). A second such signal while it unwinds ends the process
   at once, as the signal would have; rule 2 still ends its helpers.
2. **A helper dies with its parent**, however the parent ended, SIGKILL
   included. :func:`die_with_parent`, the first thing every helper runs (a
   pool's ``initializer``, the head child's start, a Dask worker plugin),
   starts a daemon thread that polls ``os.getppid()``: a helper whose parent
   ended is re-parented, and the thread then removes the helper's temporary
   files (:func:`removed_on_death`) and ends the process at once.
   Why polling rather than Linux's ``prctl(PR_SET_PDEATHSIG)``: that signal
   fires when the *thread* that started the helper ends, and pools and Dask
   start helpers from threads of their own (loky's manager thread, Dask's event
   loop); a SIGKILL from the kernel gives the helper no chance to remove its
   temporary files; and it is Linux only. Polling works on every POSIX system,
   needs no pipe threaded through a pool's machinery, and costs one system call
   per :data:`POLL_SECONDS`. The parent's pid is handed to the helper, never
   read in it, so a parent that died before the helper started is noticed at
   once. Helpers ignore SIGINT and SIGHUP, which a terminal sends to the whole
   process group: their parent stops them (:data:`GROUP_SIGNALS`).
3. **A helper writes only into its run.** fit-head's claim on its run folder
   (the ``INCOMPLETE`` marker, :mod:`xrayfeat.runs.folder`) carries a random
   token. A :class:`WriteGuard` holding that token is checked before each write
   into the folder and again before the written file takes its name
   (:func:`guarded_path`); a folder whose claim changed (deleted and claimed by
   a new fit-head, given up after a failure, or finished) is never written:
   :class:`~xrayfeat.errors.RunError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from xrayfeat.errors import RunError
from xrayfeat.fileio import atomic_path

__all__ = ["GROUP_SIGNALS", "Interrupted", "POLL_SECONDS", "TOKEN_KEY", "WriteGuard", "die_with_parent", "end_now",
           "guarded_path", "removed_on_death", "signal_of", "signals_unwind"]

#: How often a helper looks whether its parent is still there (seconds).
POLL_SECONDS = 0.2

#: What a helper exits with when its parent is gone.
PARENT_GONE_STATUS = 1

#: Signals the CLI turns into :class:`Interrupted` (SIGINT already raises :class:`KeyboardInterrupt`).
UNWINDING = (signal.SIGTERM, signal.SIGHUP)

#: Signals a terminal sends to a whole process group; helpers ignore them and leave the decision to their parent.
GROUP_SIGNALS = (signal.SIGINT, signal.SIGHUP)

#: The key of the token in a claim file (see :class:`WriteGuard`).
TOKEN_KEY = "token"


# --------------------------------------------------------------------------- rule 1: a signal unwinds the command


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the command is, as SIGINT raises :class:`KeyboardInterrupt`."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)


def signal_of(exc: BaseException) -> int:
    """The signal that interrupted: :class:`Interrupted`'s, else SIGINT (a plain :class:`KeyboardInterrupt`)."""
    return getattr(exc, "signum", signal.SIGINT)


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise :class:`Interrupted`; a second one ends the process at once.

    Only the main thread receives signals; elsewhere the block changes nothing.
    The handlers found are put back when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def again(signum, frame):  # already unwinding: end now, as the signal would have (helpers follow by rule 2)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def first(signum, frame):
        for number in UNWINDING:
            signal.signal(number, again)
        raise Interrupted(signum)

    previous = {number: signal.getsignal(number) for number in UNWINDING}
    for number in UNWINDING:
        signal.signal(number, first)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


# --------------------------------------------------------------------------- rule 2: a helper dies with its parent

_lock = threading.Lock()
_doomed: list[Path] = []  # what this helper removes when its parent is gone
_watching: list[int] = []  # the parent watched, once a watcher runs


def end_now(status: int) -> None:
    """End this process with ``status`` at once (``os._exit``), after logging's last flush and the standard streams'.

    For a process whose work is written and closed, where the interpreter's
    teardown is only waiting time: the head's child once its files are written
    (jax clears its backends: about 1 s), and the ``xrayfeat`` script from its
    last exit handler (1.3 s after TensorFlow was imported: :mod:`xrayfeat.cli.entry`).
    A stream that cannot be flushed (closed, or its disk full) has said what it
    could already.
    """
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def die_with_parent(parent: int, *, group_signals: bool = True) -> None:
    """(In a helper, first thing.) End this process within :data:`POLL_SECONDS` of ``parent``'s end.

    ``parent`` is the pid the parent gave (its ``os.getpid()``). Before ending,
    the process removes what :func:`removed_on_death` registered. Called again
    in the same process, it changes nothing more. ``group_signals``: ignore
    :data:`GROUP_SIGNALS` (where it can: in the main thread).
    """
    if group_signals and threading.current_thread() is threading.main_thread():
        for number in GROUP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
    with _lock:
        if _watching:
            return
        _watching.append(int(parent))
    if os.getppid() != parent:  # the parent ended before this helper started
        _die()
    threading.Thread(target=_watch, args=(int(parent),), name="xrayfeat-die-with-parent", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    _die()


def _die() -> None:
    """Remove this helper's temporary files and end the process now (no exit handlers: its parent is gone)."""
    with _lock:
        doomed = list(_doomed)
    for path in doomed:
        _remove(path)
    os._exit(PARENT_GONE_STATUS)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def removed_on_death(path: str | os.PathLike) -> Iterator[Path]:
    """Inside the block, ``path`` (a file or a folder) is removed if this helper's parent dies.

    Outside a helper (no :func:`die_with_parent` in this process) it only
    yields the path: the owner removes it as usual.
    """
    path = Path(path)
    with _lock:
        _doomed.append(path)
    try:
        yield path
    finally:
        with _lock:
            _doomed.remove(path)


# --------------------------------------------------------------------------- rule 3: a helper writes only into its run


@dataclass(frozen=True)
class WriteGuard:
    """The right to write into one run folder: its claim file (``claim``) still holds ``token``.

    The claim is fit-head's marker (:mod:`xrayfeat.runs.folder`), created with
    a random token when the folder is claimed and removed (or stripped of its
    token) when the run is finished or given up. A guard travels to a helper
    as JSON (:meth:`to_json`, :meth:`from_json`).
    """

    claim: Path
    token: str

    def check(self) -> None:
        """:class:`~xrayfeat.errors.RunError` unless the claim file still holds this guard's token."""
        try:
            data = json.loads(Path(self.claim).read_bytes())
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or data.get(TOKEN_KEY) != self.token:
            folder = Path(self.claim).parent
            raise RunError(f"{folder}: no longer the run folder this fit-head was started for (it was deleted, "
                           f"finished, given up or claimed again by another fit-head); nothing more is written "
                           f"there: run fit-head again with another --out")

    def to_json(self) -> dict:
        return {"claim": os.fspath(self.claim), "token": self.token}

    @classmethod
    def from_json(cls, data: dict) -> WriteGuard:
        return cls(Path(data["claim"]), str(data["token"]))


@contextlib.contextmanager
def guarded_path(target: str | os.PathLike, guard: WriteGuard | None = None, *, suffix: str = "") -> Iterator[Path]:
    """:func:`~xrayfeat.fileio.atomic_path` for ``target`` in a run folder, only while ``guard`` holds.

    The guard is checked before the temporary file is made and again before it
    replaces ``target``: a folder whose claim changed meanwhile gets nothing
    (the temporary is removed, :class:`~xrayfeat.errors.RunError` raised). The
    temporary is removed too if this helper's parent dies while it is written.
    ``guard=None`` (no claim to honour) is a plain atomic write.
    """
    if guard is not None:
        guard.check()
    doomed = None
    try:
        with atomic_path(target, suffix=suffix) as tmp:
            doomed = tmp
            with _lock:
                _doomed.append(tmp)
            yield tmp
            if guard is not None:
                guard.check()
    finally:
        if doomed is not None:
            with _lock:
                _doomed.remove(doomed)
