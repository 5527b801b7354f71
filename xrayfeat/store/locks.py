"""Changing a store safely: its fcntl locks, and an OS error while writing turned into one line.

One writer at a time holds ``write.lock`` for a whole extraction (a second one
waits, then finds the rows already there; ``gc`` waits the same way); readers
take a shared ``read.lock``, which compaction and repair take exclusively only
to delete old shards. A read-only copy of a store is still read: where its
folder has no lock file to take, readers read without one.

A full disk or a read-only folder fails a write before anything is renamed
into place; :func:`write_failure` is the one :class:`~xrayfeat.errors.StoreError`
line that says so, naming the file, the reason and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from xrayfeat.errors import StoreError, first_line

__all__ = ["READ_ONLY", "flock", "write_failure", "writing"]

#: The errors of a folder that cannot be written (read-only mount, permissions).
READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def write_failure(exc: OSError, where: Path) -> StoreError:
    """One line for an OS error while changing a store: the file, the reason, the fix."""
    reason = os.strerror(exc.errno) if exc.errno else first_line(exc)
    if exc.errno in _FULL:
        fix = "free disk space (or raise the file size limit), then re-run"
    elif exc.errno in READ_ONLY:
        fix = "the cache folder is read-only: make it writable, or pass another --cache-dir"
    else:
        fix = "check the cache folder, then re-run"
    return StoreError(f"{where}: cannot write ({reason}); {fix}; the store is as it was")


@contextlib.contextmanager
def writing(where: Path):
    """Turn an OS error raised while changing the store into :func:`write_failure`'s line."""
    try:
        yield
    except OSError as exc:
        raise write_failure(exc, where) from None


def _lock_file(path: Path, *, required: bool):
    """The lock file opened for locking, or None where a read-only folder has none and ``required`` is false.

    In a read-only folder an existing lock file is opened for reading: ``flock`` works on it all the same.
    """
    try:
        return open(path, "a+")
    except OSError as exc:
        if exc.errno in READ_ONLY and path.is_file():
            return open(path)
        if exc.errno in READ_ONLY and not required:
            return None
        raise write_failure(exc, path) from None


@contextlib.contextmanager
def flock(path: Path, mode: int, *, on_wait=None, required: bool = True):
    """Hold an fcntl lock on ``path``; call ``on_wait()`` once if we have to wait for it.

    ``required=False`` (readers) reads without a lock where a read-only folder has no lock file to take.
    """
    fh = _lock_file(path, required=required)
    if fh is None:
        yield
        return
    with fh:
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fh, mode)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
