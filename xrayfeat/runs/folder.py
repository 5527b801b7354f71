"""The run folder: claiming it, marking it unfinished, and telling whose it is.

fit-head claims ``runs/<name>/`` with an ``INCOMPLETE`` marker created exclusively,
naming the process (host, pid, start time, token) that writes the run; the record
(:mod:`xrayfeat.runs.record`) removes the marker when ``config.json`` lands. A
folder with a marker is unfinished: still being written by a live process, or
abandoned by a dead one; :func:`unfinished` says which.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path

from xrayfeat.distributed.lifetime import TOKEN_KEY, WriteGuard, signal_of
from xrayfeat.errors import DiskFullError, RunError, another_out
from xrayfeat.fileio import as_disk_full, atomic_write, fsync_dir, sibling, writing_to
from xrayfeat.provenance import utc_timestamp


#: The file fit-head creates first in a run folder and removes last (after ``config.json``): see the module docstring.
MARKER = "INCOMPLETE"


def default_run_name(task: str, backbone: str) -> str:
    """``<task>-<backbone>-<UTC time>``, e.g. ``4class-inception_v3-20261126-071502``."""
    return f"{task}-{backbone}-{utc_timestamp('%Y%m%d-%H%M%S')}"


def task_name(classes, multilabel: bool = False) -> str:
    """A short task label: ``binary`` for two classes, else ``<K>class``; ``<K>finding`` for a multi-label task."""
    if multilabel:
        return f"{len(classes)}finding"
    return "binary" if len(classes) == 2 else f"{len(classes)}class"


def new_run_dir(out: str | os.PathLike | None, task: str, backbone: str, root: str | os.PathLike = "runs") -> Path:
    """A new, empty run folder (``root/<task>-<backbone>-<time>`` unless ``out`` is given), claimed by this process.

    The claim is the :data:`MARKER` file, created only if absent, so of two
    fit-heads started on one folder exactly one gets it; the other, and one
    started on a folder that already holds anything, gets a :class:`RunError`
    saying what the folder holds (a run being written, an incomplete run, a
    finished run, other files). :func:`write_record` releases the claim; after
    a failure, :func:`abandon_run_dir` does.
    """
    path = Path(out) if out else Path(root) / default_run_name(task, backbone)
    if path.exists() and not path.is_dir():
        raise RunError(f"{path}: exists and is a file, not a folder; {another_out('pass another --out')}")
    created = not path.exists()
    try:
        with writing_to(path, option="--out"):  # a full disk: one line, and no empty folder left behind
            path.mkdir(parents=True, exist_ok=True)
            _claim(path, created)
    except DiskFullError:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    if _holds_files(path):
        (path / MARKER).unlink()
        raise RunError(f"{path}: {_occupied(path)}")
    return path


def replaceable(path: str | os.PathLike) -> bool:
    """Whether ``overwrite=True`` may replace ``path``: a finished run, or one a stopped fit-head left incomplete.

    Never a run another fit-head is writing (or may be, on another host), nor a folder of other files.
    """
    path = Path(path)
    if not path.is_dir() or not ((path / "config.json").is_file() or (path / MARKER).exists()
                                 or any((path / name).exists() for name in RUN_FILES)):
        return False
    state = unfinished_state(path)
    return state is None or state[0] == "stopped"


def staging_dir(target: str | os.PathLike) -> Path:
    """A hidden sibling of ``target`` where a run that will replace it is written (:func:`replace_run`)."""
    target = Path(target)
    return sibling(target, f".{uuid.uuid4().hex[:12]}.new.tmp", hidden=True)  # within 255 bytes, as every derived name


def replace_run(staged: Path, target: Path) -> None:
    """Put the finished run ``staged`` in place of the run ``target``; the old one is deleted only after.

    Checks again that ``target`` may be replaced (:func:`replaceable`): a fit-head
    that claimed it meanwhile keeps it, and the new run stays at ``staged``, named in the error.
    """
    if target.exists() and not replaceable(target):
        raise RunError(f"{target}: {_occupied(target)} (the new run is complete at {staged})")
    old = sibling(target, f".{uuid.uuid4().hex[:12]}.old.tmp", hidden=True)
    if target.exists():
        os.rename(target, old)
    os.rename(staged, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def abandon_run_dir(path: str | os.PathLike, error: BaseException, guard: WriteGuard | None = None) -> None:
    """After fit-head failed on the folder this process claimed: make the folder say so, or give it back.

    A folder that holds nothing but the claim is left as it was found (a
    re-run may use it); one with some run files keeps its marker, now naming
    the failure (or the signal, for an interrupt), so every reader calls it an
    incomplete run even while this process lives on (a notebook). A failure
    because a write found no room (:func:`~xrayfeat.fileio.no_room`) is recorded
    as "the disk was full"; on that full disk the marker is rewritten in place if
    a new copy finds no room (:func:`_note_failure`). The marker loses its token,
    so no helper still running writes there. Does nothing to a folder claimed by
    another process, nor (with ``guard``, the claim this fit-head holds:
    :func:`claim_guard`) to one claimed again since.
    """
    path = Path(path)
    info = _marker_info(path)
    if not info or not _is_this_process(info) or (guard is not None and info.get(TOKEN_KEY) != guard.token):
        return
    if not _holds_files(path):
        (path / MARKER).unlink()
        if info.get("created"):
            try:
                path.rmdir()
            except OSError:  # something arrived meanwhile: leave it
                pass
        return
    info = {key: value for key, value in info.items() if key != TOKEN_KEY}
    if isinstance(error, KeyboardInterrupt):
        _note_failure(path, {**info, "interrupted": signal.Signals(signal_of(error)).name})
    else:
        _note_failure(path, {**info, **_failure(error)})


#: How a marker names a write that found no room, by errno (the quota and the file size limit are not the disk).
_NO_ROOM_WORDS = {errno.EDQUOT: "the disk quota was full", errno.EFBIG: "a file reached the size limit"}


def _failure(error: BaseException) -> dict:
    """What a marker records about the failure that stopped fit-head: ``failed`` (one line), ``disk_full`` if it was.

    ``disk_full`` is true for every write that found no room (:data:`xrayfeat.fileio.NO_ROOM`); ``failed`` says
    which: "the disk was full (FOLDER: no space left on the device (N MB free))", or the quota, or the size limit.
    """
    full = as_disk_full(error)
    if full is not None:
        where = f"{full.folder}: " if full.folder else ""
        words = _NO_ROOM_WORDS.get(full.errno, "the disk was full")
        return {"failed": " ".join(f"{words} ({where}{full.reason})".split()), "disk_full": True}
    reason = " ".join(f"{type(error).__name__}: {error}".split()) if str(error) else type(error).__name__
    return {"failed": reason}


def _note_failure(path: Path, info: dict) -> None:
    """Replace ``path``'s marker by ``info``: atomically, else (no room for a new file) overwritten in place.

    A full disk may have no room for the new copy :func:`~xrayfeat.fileio.atomic_write`
    makes; the marker's own block has room for a note of under 4 KiB, so it is
    overwritten and cut to length (a reader meanwhile sees an unreadable
    marker, which still means an incomplete run).
    """
    content = (json.dumps(info) + "\n").encode()
    try:
        atomic_write(path / MARKER, content)
    except DiskFullError:
        with open(path / MARKER, "r+b") as fh:
            fh.write(content)
            fh.truncate()
            fh.flush()
            os.fsync(fh.fileno())


def claim_guard(path: str | os.PathLike) -> WriteGuard:
    """The :class:`~xrayfeat.distributed.lifetime.WriteGuard` of this process' claim on ``path`` (see the module docstring)."""
    path = Path(path)
    info = _marker_info(path)
    if not info or not _is_this_process(info) or not isinstance(info.get(TOKEN_KEY), str):
        raise RunError(f"{path}: not a run folder claimed by this process; claim it with new_run_dir first")
    return WriteGuard(path / MARKER, info[TOKEN_KEY])


#: What ``os.link`` fails with where the filesystem has no hard links (some FUSE, SMB and FAT mounts).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS})


def _claim(path: Path, created: bool) -> None:
    """Create ``path``'s marker, naming this process; :class:`RunError` when the folder already has one.

    The marker is written complete under a staging name, then hard-linked to
    :data:`MARKER`: a link fails when the name exists, so the claim is atomic
    and exclusive, and no reader ever sees a half-written marker. Where the
    filesystem has no hard links, :func:`_create_exclusive` makes the claim.
    """
    info = {"command": "fit-head", "pid": os.getpid(), "host": socket.gethostname(),
            "started": utc_timestamp(), "process": _process_token(os.getpid()),
            "created": created, TOKEN_KEY: uuid.uuid4().hex}
    content = (json.dumps(info) + "\n").encode()
    staged = path / f".{MARKER}.{uuid.uuid4().hex[:12]}"
    atomic_write(staged, content)
    try:
        os.link(staged, path / MARKER)
    except FileExistsError:
        raise RunError(f"{path}: {_occupied(path)}") from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _create_exclusive(path, content)
    finally:
        staged.unlink()
    fsync_dir(path)


def _create_exclusive(path: Path, content: bytes) -> None:
    """The claim without hard links: ``O_CREAT | O_EXCL`` creates the marker only if absent, then one write and fsync.

    Of two claimants exactly one creates the name. The marker is visible from
    its creation until its one write lands, empty or shorter than its content:
    :func:`_marker_info` reads such a marker again for a moment before it calls
    it unreadable.
    """
    target = path / MARKER
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    except FileExistsError:
        raise RunError(f"{path}: {_occupied(path)}") from None
    try:
        written = os.write(fd, content)
        while written < len(content):
            written += os.write(fd, content[written:])
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    os.close(fd)


def _holds_files(path: Path) -> bool:
    """Whether ``path`` holds anything but its marker and the markers other fit-heads are staging.

    Staged markers are ``.INCOMPLETE.<id>``, and ``..INCOMPLETE.<id>.<id>.tmp``
    while :func:`~xrayfeat.fileio.atomic_write` writes one.
    """
    return any(p.name != MARKER and not (p.name.startswith(".") and p.name.lstrip(".").startswith(f"{MARKER}."))
               for p in path.iterdir())


def _occupied(path: Path) -> str:
    """Why fit-head cannot write a run into ``path``, and what to do instead."""
    unfinished = unfinished_state(path)
    if unfinished:
        state, detail = unfinished
        if state == "running":
            return f"another fit-head is writing a run into this folder ({detail}); {another_out('choose another --out')}"
        return (f"not empty: it holds an incomplete run ({detail}); "
                f"{another_out('delete it or choose another --out', overwrite=state == 'stopped')}")
    if (path / "config.json").is_file():
        return f"not empty: it already holds a finished run; {another_out('choose another --out or delete it', overwrite=True)}"
    return f"run folder exists and is not empty; {another_out('choose another --out or delete it')}"


def unfinished_state(path: Path) -> tuple[str, str] | None:
    """``(state, detail)`` for a folder fit-head began and has not finished; None for any other folder.

    ``state`` is ``running`` (the writer is alive on this host), ``elsewhere``
    (it ran on another host, which this one cannot ask) or ``stopped`` (killed,
    or failed); ``detail`` says what is known, naming the writer.
    """
    info = _marker_info(path)
    if info is None:
        if not (path / "config.json").exists() and any((path / name).exists() for name in RUN_FILES):
            return "stopped", "run files but no config.json: fit-head stopped before finishing it"
        return None
    if not info:  # a marker that cannot be read names no writer
        return "stopped", f"its {MARKER} file cannot be read: fit-head did not finish it"
    writer = f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"
    if info.get("failed"):
        return "stopped", f"fit-head failed before finishing it: {info['failed']}; {writer}"
    if info.get("interrupted"):
        return "stopped", f"fit-head was interrupted by {info['interrupted']} before finishing it; {writer}"
    if info.get("host") != socket.gethostname():
        return "elsewhere", f"fit-head is writing it on another host, or stopped there; {writer}"
    process = info.get("process")
    if process is not None and _process_token(info.get("pid")) == process:
        return "running", writer
    return "stopped", f"fit-head stopped before finishing it: killed or interrupted; {writer}"


#: How a reader names an unfinished run in each state, and the fix it gives.
UNFINISHED = {
    "running": ("fit-head is still writing this run", "wait for it to finish"),
    "elsewhere": ("an unfinished run", "wait for it, or if it stopped, delete the folder and re-run fit-head"),
    "stopped": ("an incomplete run", "delete the folder and re-run fit-head"),
}


def _marker_info(path: Path) -> dict | None:
    """What ``path``'s marker says (pid, host, started, process, created, failed); None without a marker.

    A marker that does not parse may be one :func:`_create_exclusive` is still
    writing (on a filesystem without hard links): it is read again for up to
    :data:`_MARKER_SETTLE` seconds before it counts as unreadable.
    """
    deadline = time.monotonic() + _MARKER_SETTLE
    while True:
        try:
            data = json.loads((path / MARKER).read_bytes())
        except FileNotFoundError:
            return None
        except OSError:  # unreadable: still a claim, with nothing known about it
            return {}
        except ValueError:  # being written, or not ours
            if time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            return {}
        return data if isinstance(data, dict) else {}


#: How long a marker that does not parse is read again before it counts as unreadable (see :func:`_marker_info`).
_MARKER_SETTLE = 0.2


def _is_this_process(info: dict) -> bool:
    return info.get("host") == socket.gethostname() and info.get("process") == _process_token(os.getpid())


def _process_token(pid) -> str | None:
    """A name for live process ``pid`` that a later process given the same pid does not share; None if none lives.

    On Linux the pid and the process' start time (``/proc/<pid>/stat``; a
    zombie counts as dead); elsewhere the pid of a process that exists.
    """
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():  # Linux: no such process
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # it exists, owned by someone else
            pass
        return str(pid)
    except OSError:
        return None
    state, *rest = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces and ")"
    return None if state in ("Z", "X") else f"{pid}:{rest[18]}"  # field 22 of proc(5): start time


#: Files only fit-head writes (an ``external/<name>/`` folder of evaluate holds metrics and predictions too):
#: a folder holding one of them but no ``config.json`` is an unfinished run.
RUN_FILES = ("head.keras", "splits.csv", "predictions-val.csv", "history.csv")
