"""One writer at a time per run: the run folder's lock, and the record updated under it.

fit-head writes a run alone (its ``INCOMPLETE`` claim, :mod:`xrayfeat.runs.folder`).
Every later command that adds to a finished run (``evaluate`` records
``external/<name>/``; ``embed --from-run`` draws ``embed-<method>.png``, the
place each owns in the run: :data:`xrayfeat.runs.outputs.OWNED`) holds the run's
:data:`RUN_LOCK` exclusively while it writes there, and
:func:`updating_record` reads ``config.json`` again under it: the record
written back keeps whatever another command added meanwhile (two evaluations
started together both land), and replaces the old one atomically.

The lock is an fcntl ``flock`` (:func:`xrayfeat.store.locks.flock`): the kernel
drops it when its process ends, however it ends, so a killed writer never
blocks the next one. While held, the lock file names its holder (command, pid,
host, since). A command that finds the run locked says once, as a warning,
whom it waits for; after :func:`lock_timeout` seconds it gives up with one line
naming the holder (:class:`RunLockError`, exit 1), never waiting silently for ever.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from xrayfeat.errors import RunError, XrayfeatError, first_line
from xrayfeat.provenance import utc_timestamp
from xrayfeat.runs.record import RunRecord, read_record, write_record
from xrayfeat.store.locks import READ_ONLY, flock, holder

log = logging.getLogger("xrayfeat")

#: The lock file in a run folder (created by the first command that adds to the run).
RUN_LOCK = "write.lock"

#: How long a command waits for another one writing the same run, in seconds, unless
#: ``XRAYFEAT_RUN_LOCK_TIMEOUT`` says otherwise (:func:`lock_timeout`).
LOCK_TIMEOUT_S = 600.0


class RunLockError(RunError):
    """The run is being written by another command for longer than we wait, or its lock cannot be taken."""

    exit_code = 1


def lock_timeout() -> float:
    """Seconds to wait for a run's lock: ``XRAYFEAT_RUN_LOCK_TIMEOUT`` when set, else :data:`LOCK_TIMEOUT_S`."""
    given = os.environ.get("XRAYFEAT_RUN_LOCK_TIMEOUT")
    if given is None or not given.strip():
        return LOCK_TIMEOUT_S
    try:
        seconds = float(given)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise XrayfeatError(f"XRAYFEAT_RUN_LOCK_TIMEOUT={given!r}: not a number of seconds; set e.g. 600, or unset it")
    return seconds


@contextlib.contextmanager
def run_lock(path: str | os.PathLike, command: str, *, timeout: float | None = None):
    """Hold run folder ``path``'s lock exclusively for the block, naming ``command`` (and this process) as its holder.

    Waits at most ``timeout`` seconds (default :func:`lock_timeout`) for another
    holder, saying once whom it waits for; then :class:`RunLockError` names it.
    """
    folder = Path(path)
    lock = folder / RUN_LOCK
    timeout = lock_timeout() if timeout is None else timeout

    def waiting():
        log.warning("%s: waiting for %s to finish writing this run (at most %g s)", folder, lock_holder(folder), timeout)

    held = contextlib.ExitStack()
    try:
        held.enter_context(flock(lock, fcntl.LOCK_EX, on_wait=waiting, timeout=timeout, failure=_unlockable,
                                 about={"command": command, "since": utc_timestamp()}))
    except TimeoutError:
        raise RunLockError(f"{folder}: {lock_holder(folder)} has been writing this run for more than {timeout:g} s; "
                           f"wait for it to finish (or stop it), then re-run") from None
    with held:
        yield


@contextlib.contextmanager
def updating_record(path: str | os.PathLike, command: str):
    """The run's record, read again under the run's lock; written back (atomically) when the block ends without error.

    The one way a command adds to a finished run's record: what another command
    recorded before the lock was ours is in the record yielded, so it is kept.
    """
    with run_lock(path, command):
        record: RunRecord = read_record(path)
        yield record
        write_record(record, Path(path))


def lock_holder(path: str | os.PathLike) -> str:
    """Who holds run folder ``path``'s lock, as its lock file says (``evaluate (pid 12 on host, since T)``)."""
    info = holder(Path(path) / RUN_LOCK)
    if info is None or not info.get("command"):
        return "another xrayfeat command"
    return (f"{info['command']} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"since {info.get('since', '?')})")


def _unlockable(exc: OSError, path: Path) -> RunLockError:
    """One line for a run lock file that cannot be opened: the file, the reason, the fix."""
    reason = os.strerror(exc.errno) if exc.errno else first_line(exc)
    fix = "the run folder is read-only: make it writable" if exc.errno in READ_ONLY else "check the run folder"
    return RunLockError(f"{path}: cannot take the run's lock ({reason}); {fix}, then re-run; the run is as it was")
