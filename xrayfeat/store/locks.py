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
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path

from xrayfeat.errors import DiskFullError, StoreError, first_line
from xrayfeat.fileio import NO_ROOM, disk_full

__all__ = ["READ_ONLY", "flock", "write_failure", "writing"]

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
          failure=write_failure):
    """Hold an fcntl lock on ``path``, yielding the open lock file; call ``on_wait()`` once if we have to wait for it.

    ``required=False`` (readers) reads without a lock where a read-only folder has no lock file to take
    (and yields None). ``timeout``: wait at most that many seconds, then raise :class:`TimeoutError`
    (None: as long as it takes). ``failure(exc, path)``: the exception for a lock file that cannot be
    opened (:func:`write_failure`'s store line by default).
    """
    fh = _lock_file(path, required=required, failure=failure)
    if fh is None:
        yield None
        return
    with fh:
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            _wait(fh, mode, timeout, path)
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
