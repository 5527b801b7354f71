"""Changing a store safely: its fcntl locks, and an OS error while writing turned into one line.

One writer at a time holds ``write.lock`` for a whole extraction (a second one
waits, then finds the rows already there; ``gc`` waits the same way); readers
take a shared ``read.lock``, which compaction and repair take exclusively only
to delete old shards. A read-only copy of a store is still read: where its
folder has no lock file to take, readers read without one.

A full disk or a read-only folder fails a write before anything is renamed
into place; :func:`write_failure` is the one :class:`~xrayfeat.errors.StoreError`
line that says so, naming the file, the reason and the fix (a full disk in the
words of :func:`xrayfeat.fileio.disk_full`, with ``--cache-dir`` as the other folder).

:func:`flock` is the one fcntl lock of xrayfeat: a run folder's lock
(:mod:`xrayfeat.runs.lock`) is the same lock with a bounded wait (``timeout``)
and its own line for a folder it cannot write (``failure``). A lock dies with
the process that holds it, so a killed writer never blocks the next one.

While an exclusive lock is held, its file names the holder (``{"pid": ..., "host": ...,
"thread": ...}``, a run's lock adds the command). Two waits would never end, and
get one line at once instead (:class:`LockedBySelfError`): a thread asking again
for a lock it holds, and a script that ``multiprocessing``'s spawn runs again in
a child (it runs it as module ``__mp_main__``: code without an ``if __name__ ==
"__main__":`` guard) asking for a lock that the process which started it holds
while it waits for that child. Any other holder, another thread of this process
or a parent that forked this one included, is waited for as usual: it may well
release the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from xrayfeat.errors import DiskFullError, StoreError, XrayfeatError, first_line
from xrayfeat.fileio import NO_ROOM, disk_full

__all__ = ["READ_ONLY", "LockedBySelfError", "flock", "holder", "lineage", "write_failure", "writing"]


class LockedBySelfError(XrayfeatError):
    """A lock is held by this process or one that started it: waiting for it would never end."""

    exit_code = 1

#: The errors of a folder that cannot be written (read-only mount, permissions).
READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_UNCHANGED = "the store is as it was"


def write_failure(exc: OSError | DiskFullError, where: Path) -> StoreError:
    """One line for an OS error (or a full disk) while changing a store: the file, the reason, the fix.

    The error keeps the ``errno`` (:func:`xrayfeat.fileio.no_room` reads it, even
    once the error has crossed from a worker process without its cause).
    """
    if exc.errno in NO_ROOM:
        error = StoreError(f"{disk_full(where, exc.errno, option='--cache-dir')}; {_UNCHANGED}")
    else:
        reason = os.strerror(exc.errno) if exc.errno else first_line(exc)
        if exc.errno in READ_ONLY:
            fix = "the cache folder is read-only: make it writable, or pass another --cache-dir"
        else:
            fix = "check the cache folder, then re-run"
        error = StoreError(f"{where}: cannot write ({reason}); {fix}; {_UNCHANGED}")
    error.errno = exc.errno
    return error


@contextlib.contextmanager
def writing(where: Path):
    """Turn an OS error or a full disk met while changing the store into :func:`write_failure`'s line.

    The line keeps the error as its cause, so :func:`xrayfeat.fileio.no_room`
    still tells a full disk (a run's marker says so).
    """
    try:
        yield
    except (OSError, DiskFullError) as exc:
        raise write_failure(exc, where) from exc


def _lock_file(path: Path, *, required: bool, failure=write_failure):
    """The lock file opened for locking, or None where a read-only folder has none and ``required`` is false.

    In a read-only folder an existing lock file is opened for reading: ``flock`` works on it all the same.
    Any other OS error is ``failure(exc, path)``'s exception.
    """
    try:
        return open(path, "a+")
    except OSError as exc:
        if exc.errno in READ_ONLY and path.is_file():
            return open(path)
        if exc.errno in READ_ONLY and not required:
            return None
        raise failure(exc, path) from exc


@contextlib.contextmanager
def flock(path: Path, mode: int, *, on_wait=None, required: bool = True, timeout: float | None = None,
          failure=write_failure, about: dict | None = None):
    """Hold an fcntl lock on ``path``, yielding the open lock file; call ``on_wait()`` once if we have to wait for it.

    ``required=False`` (readers) reads without a lock where a read-only folder has no lock file to take
    (and yields None). ``timeout``: wait at most that many seconds, then raise :class:`TimeoutError`
    (None: as long as it takes). ``failure(exc, path)``: the exception for a lock file that cannot be
    opened (:func:`write_failure`'s store line by default). ``about``: more of what an exclusive
    holder's record says (a run's lock: the command, since when), beside its pid, host and thread.
    """
    fh = _lock_file(path, required=required, failure=failure)
    if fh is None:
        yield None
        return
    with fh:
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            _refuse_own(path)
            if on_wait:
                on_wait()
            _wait(fh, mode, timeout, path)
        exclusive = mode & fcntl.LOCK_EX
        if exclusive:
            _write_holder(fh, {**(about or {}), "pid": os.getpid(), "host": socket.gethostname(),
                               "thread": threading.get_ident()})
        try:
            yield fh
        finally:
            if exclusive:
                _write_holder(fh, None)
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_holder(fh, holder: dict | None) -> None:
    """Name the holder in the lock file (empty it for None); best effort: a read-only lock file says nothing."""
    try:
        fh.seek(0)
        fh.truncate()
        if holder is not None:
            fh.write(json.dumps(holder) + "\n")
        fh.flush()
    except (OSError, ValueError):  # read-only (io.UnsupportedOperation is both)
        pass


def holder(path: Path) -> dict | None:
    """What the lock file at ``path`` says of its holder (``pid``, ``host``, maybe ``command``), None if nothing."""
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def lineage() -> list[int]:
    """This process and those that started it, nearest first (through ``/proc``; else this process and its parent)."""
    pids = [os.getpid()]
    pid = os.getppid()
    while pid > 1 and pid not in pids and len(pids) < 256:
        pids.append(pid)
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(text.rsplit(")", 1)[1].split()[1])  # the field after the command name, which may hold ")"
    return pids


def _refuse_own(path: Path) -> None:
    """:class:`LockedBySelfError` where waiting for the lock's holder would never end (see the module's text)."""
    info = holder(path)
    if info is None or info.get("host") != socket.gethostname():
        return
    pid = info["pid"]
    if pid == os.getpid() and info.get("thread") == threading.get_ident():
        raise LockedBySelfError(f"{path}: already locked by this thread, so waiting for it would never end; "
                                f"finish the call that holds it before starting another on the same folder")
    # a child of multiprocessing's spawn runs (or ran) the main script as "__mp_main__"; in its parent that
    # name is only an alias of "__main__"
    rerun = getattr(sys.modules.get("__mp_main__"), "__name__", None) == "__mp_main__"
    if rerun and pid in lineage()[1:]:
        command = f" ({info['command']})" if info.get("command") else ""
        raise LockedBySelfError(
            f"{path}: locked by process {pid}{command}, which started this one and runs the same script: this "
            f"process runs it again (multiprocessing's spawn imports the main script in each child), so waiting "
            f"would never end; put the script's work under `if __name__ == \"__main__\":`")


def _wait(fh, mode: int, timeout: float | None, path: Path) -> None:
    """Block until the lock is ours; with a ``timeout``, poll (10 ms, doubling to 200 ms) until it runs out."""
    if timeout is None:
        fcntl.flock(fh, mode)
        return
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{path}: still locked after {timeout:g} s") from None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.2)
