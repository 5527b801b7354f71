"""The one way xrayfeat writes a file, the one way it digests one, and what a full disk becomes.

:func:`atomic_path` yields a temporary path beside the target (a unique name, so
two processes writing the same file never share a temporary); when the block
ends the file is fsync-ed, renamed over the target and the folder fsync-ed. A
reader sees the old file or the new one, never half of one; a writer killed in
the block leaves only a ``.<name>.<random>.tmp[suffix]`` file that ``cache gc`` removes. When
two processes write the same target at once, the last rename wins and the file
is always one of the two complete versions.

:func:`atomic_write` and :func:`write_json` are the common cases;
:func:`file_digest` hashes a file with :func:`hashlib.file_digest`.

:func:`csv_text` is the one way xrayfeat writes CSV: every cell goes through
:func:`csv_cell`, which neutralises what a spreadsheet would run as a formula
(a name such as ``=HYPERLINK(...)``, ``@SUM(1)`` or ``-2+3.png``), headers
included, as OWASP advises for CSV injection; :func:`csv_value` undoes it, so
xrayfeat reading its own CSVs gets the names back exactly.

Every name xrayfeat derives from another (a temporary beside its target, a
``.coords.npz`` beside a map, an overlay named after an image) comes from
:func:`sibling` or :func:`bounded_name`, which keep it within :data:`NAME_MAX`
bytes (as the file system encodes it, :func:`os.fsencode`): a target whose name
is already 255 bytes long still gets a temporary, its stem shortened and ended by
a digest of the whole name, so two long names never share one.

A full disk (``ENOSPC``), a full quota (``EDQUOT``) or the file size limit
(``EFBIG``) is one failure wherever it strikes: :func:`no_room` recognises it,
in an OSError or in the text of a library's own exception (HDF5, TensorFlow);
:func:`disk_full` makes it one :class:`~xrayfeat.errors.DiskFullError` line
naming the folder, the free space and the fix; :func:`writing_to` does that for
a block of writes, naming the folder and the option that chooses another one.
:func:`atomic_path` raises it itself, after removing its temporary file, so a
full disk never leaves a truncated file under a real name.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import numbers
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from xrayfeat.errors import DiskFullError, FileSystemError, XrayfeatError, os_error

TEMP_GLOB = ".*.tmp*"  # what a killed writer leaves behind (see atomic_path)

#: The longest file name (one path component) in bytes, as Linux, macOS and Windows file systems allow.
NAME_MAX = 255
#: The longest path Linux takes in one system call, in bytes.
PATH_MAX = 4096
_DIGEST_CHARS = 10  # hex digits of sha256 that keep a shortened name unique ("~" and these end the shortened part)

#: The errors of a write that finds no room: a full filesystem, a full quota, a file over the size limit.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_HDF5_ERRNO = re.compile(r"errno = (\d+)")  # how HDF5 (through h5py) quotes the system's error in its own


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fs_len(text: str) -> int:
    return len(os.fsencode(text))


def _mark(name: str) -> str:
    """What ends a shortened ``name``: ``~`` and the first hex digits of the whole name's sha256."""
    return "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:_DIGEST_CHARS]


def bounded_name(name: str, tail: str = "", *, head: str = "") -> str:
    """``head + name + tail`` when that is within :data:`NAME_MAX` bytes; else ``name`` shortened to fit.

    ``head`` and ``tail`` (a leading ``.``, a ``.<random>.tmp`` or ``.coords.npz``)
    are kept whole; ``name`` is cut at a character (never inside one) and ended by
    ``~`` and a digest of the whole ``name``, so the result depends on ``name``
    alone (a cache file is found again) and two names that differ only past the
    cut still differ. Lengths are the bytes the file system is given
    (:func:`os.fsencode`, so a non-UTF-8 byte of a name counts as one byte).
    """
    whole = head + name + tail
    if _fs_len(whole) <= NAME_MAX:
        return whole
    mark = _mark(name)
    room = NAME_MAX - _fs_len(head + tail + mark)
    if room < 1:
        raise ValueError(f"no room for a name within {NAME_MAX} bytes beside {head!r} and {tail!r}")
    cut = name
    while _fs_len(cut) > room:
        cut = cut[:len(cut) - max(1, (_fs_len(cut) - room) // 4)]  # a character is 1 to 4 bytes: never too much
    return head + cut + mark + tail


def sibling(path: str | os.PathLike, tail: str, *, hidden: bool = False) -> Path:
    """A file beside ``path`` named after it: ``NAME`` + ``tail`` (``.NAME`` + ``tail`` when ``hidden``).

    The one way a name is derived from another (:func:`bounded_name`): within
    :data:`NAME_MAX` bytes however long ``path``'s own name is.
    """
    path = Path(path)
    return path.with_name(bounded_name(path.name, tail, head="." if hidden else ""))


def is_sibling_of(candidate: str | os.PathLike, path: str | os.PathLike, *, hidden: bool = False) -> bool:
    """Whether ``candidate`` is a :func:`sibling` of ``path`` (beside it, named after it, with some tail)."""
    candidate, path = Path(candidate), Path(path)
    if candidate.parent != path.parent:
        return False
    head, name, found = "." if hidden else "", path.name, candidate.name
    if found.startswith(head + name + "."):
        return True
    cut, sep, _ = found.partition(_mark(name))
    return bool(sep) and cut.startswith(head) and name.startswith(cut[len(head):])


def check_name_lengths(path: str | os.PathLike) -> None:
    """Refuse (``ENAMETOOLONG``, exit 2) a path with a name over :data:`NAME_MAX` bytes or over :data:`PATH_MAX` in all."""
    path = os.fspath(path)
    too_long = len(os.fsencode(os.path.abspath(path))) >= PATH_MAX or any(
        len(os.fsencode(part)) > NAME_MAX for part in Path(path).parts)
    if too_long:
        raise os_error(OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path))


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Refuse, before any work, an output ``path`` the system would refuse to create; ``path`` when it may be.

    ``folder``: the output is a folder (else a file). The same one line as the
    write itself would give (:func:`~xrayfeat.errors.os_error`, exit 2), naming the
    part of the path at fault: a name over :data:`NAME_MAX` bytes or a path over
    :data:`PATH_MAX` (``ENAMETOOLONG``), a file where a folder must be (``ENOTDIR``),
    a folder where the file must be (``EISDIR``), a folder that exists where nothing
    may be written (``EACCES``, ``EROFS``: checked with :func:`os.access`, which
    the super-user passes except on a read-only file system). Folders missing on
    the way are fine: the command makes them.
    """
    path = Path(os.fspath(path))

    def refuse(code: int, where) -> FileSystemError:
        return os_error(OSError(code, os.strerror(code), os.fspath(where)))

    check_name_lengths(path)
    try:
        if path.is_dir():
            if not folder:
                raise refuse(errno.EISDIR, path)
        elif path.exists() and folder:
            raise FileSystemError(errno.ENOTDIR, f"{path}: is a file, where a folder is expected; pass the path of a "
                                  "folder (a new one is made)", os.fspath(path))
        existing = path
        while not existing.exists():
            if existing.is_symlink():  # a dangling link or a link loop on the way: the write would fail on it
                try:
                    os.stat(existing)
                except OSError as exc:
                    raise os_error(exc, existing) from None
                raise refuse(errno.ENOENT, existing)
            existing = existing.parent
        if existing == path:  # the output exists, as the file or folder it must be: what matters is its folder
            existing = path.parent if not folder else path
        if not existing.is_dir():
            raise refuse(errno.ENOTDIR, existing)
    except OSError as exc:  # a link loop, a folder we may not look into
        raise os_error(exc, path) from None
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = False
        with contextlib.suppress(OSError):
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        raise refuse(errno.EROFS if read_only else errno.EACCES, existing)
    return path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a unique temporary path beside ``target``; on success it replaces ``target`` atomically.

    ``suffix`` ends the temporary name, for writers that insist on an extension
    (``numpy.savez`` appends ``.npz`` to any other name). On an exception the
    temporary file is removed and ``target`` is left as it was; a write that
    found no room (:func:`no_room`, whoever wrote) becomes :func:`disk_full`'s
    line for ``target``'s folder, once the temporary file's space is given back.
    """
    target = Path(target)
    tmp = sibling(target, f".{uuid.uuid4().hex[:12]}.tmp{suffix}", hidden=True)
    try:
        # O_EXCL: never share a temporary; mode 0o666 less the umask, as open() gives (mkstemp would give 0600)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        if exc.errno in NO_ROOM:
            raise disk_full(target.parent, exc.errno) from exc
        raise
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        code = no_room(exc) if isinstance(exc, Exception) and not isinstance(exc, DiskFullError) else None
        if code is not None:
            raise disk_full(target.parent, code) from exc
        raise
    fsync_dir(target.parent)


def atomic_write(target: str | os.PathLike, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def write_json(target: str | os.PathLike, data) -> None:
    """Pretty JSON (numpy scalars and arrays and paths allowed), written atomically."""
    atomic_write(target, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, without importing numpy here
    if callable(tolist):
        return tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``hashlib.file_digest``: large buffers, the GIL released)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


# A spreadsheet runs a cell as a formula when it starts with one of these (OWASP, "CSV Injection"); tab, CR and LF
# also count, and so do the first characters after leading blanks, which some spreadsheets drop.
_FORMULA_START = ("=", "+", "-", "@")
_BLANKS = " \t\r\n"
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")  # -0.5, 1e-05: a number, never a formula


def csv_cell(value) -> str:
    """``value`` as a CSV cell that a spreadsheet shows as text and never runs as a formula.

    Numbers (``int``, ``float``, numpy scalars) and plain decimal strings such as
    ``-0.25`` stay numbers. Any other string that starts with ``=``, ``+``,
    ``-``, ``@``, a tab, CR or LF (after leading blanks, too) gets a leading
    ``'``, as OWASP recommends: ``=HYPERLINK(...)`` is written ``'=HYPERLINK(...)``,
    ``-2+3.png`` is written ``'-2+3.png``. A string that already starts with ``'``
    gets one more, so :func:`csv_value` restores every string exactly. ``None``
    is the empty cell.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        return str(value)
    if value.startswith("'") or _runs_as_formula(value):
        return "'" + value
    return value


def _runs_as_formula(text: str) -> bool:
    if text[:1] in ("\t", "\r", "\n"):
        return True
    head = text.lstrip(_BLANKS)
    return head[:1] in _FORMULA_START and not _NUMBER.fullmatch(head.rstrip(_BLANKS))


def csv_value(cell: str) -> str:
    """The string :func:`csv_cell` was given for ``cell``: its added ``'`` removed, anything else as it is.

    Only a quote :func:`csv_cell` would have added is removed, so a hand-written
    CSV whose cell is ``'quoted'`` reads as written.
    """
    if cell.startswith("'") and csv_cell(cell[1:]) == cell:
        return cell[1:]
    return cell


def csv_text(rows, *, float_format: str | None = None, lineterminator: str = "\r\n") -> str:
    """Rows (the header first) as CSV text, every cell through :func:`csv_cell`.

    ``float_format`` (e.g. ``".6g"``) formats the float cells (Python and numpy
    floats; NaN is the empty cell); without it a float is written as ``str`` does.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=lineterminator)
    for row in rows:
        writer.writerow([_formatted(value, float_format) for value in row])
    return out.getvalue()


def _formatted(value, float_format: str | None) -> str:
    if float_format and isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        value = float(value)
        return "" if math.isnan(value) else format(value, float_format)
    return csv_cell(value)


def csv_rows(text: str) -> list[list[str]]:
    """CSV text (as :func:`csv_text` writes it) as rows of strings, every cell through :func:`csv_value`."""
    return [[csv_value(cell) for cell in row] for row in csv.reader(io.StringIO(text))]

# --------------------------------------------------------------------------- a write that finds no room


def no_room(exc: BaseException | None) -> int | None:
    """The errno (one of :data:`NO_ROOM`) when ``exc``, or an exception it came from, is a write that found no room.

    Reads the ``errno`` of an OSError and of xrayfeat's own errors that carry one
    (:class:`~xrayfeat.errors.DiskFullError`, a store's write failure); libraries that wrap the system's error leave it only in their text, so the
    text of any other exception is read too: HDF5's ``errno = 28`` (h5py raises
    RuntimeError or an OSError without it), or the system's own message
    (``No space left on device``, as TensorFlow quotes it). Follows
    ``__cause__`` and ``__context__``; None when nothing says so.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "errno", None)
        if isinstance(exc, (OSError, XrayfeatError)) and code in NO_ROOM:
            return code
        if not isinstance(exc, XrayfeatError):  # our own lines are read through their causes, never their text
            text = str(exc)
            quoted = [int(n) for n in _HDF5_ERRNO.findall(text)]
            code = next((n for n in quoted if n in NO_ROOM), None) or next(
                (n for n in sorted(NO_ROOM) if os.strerror(n) in text), None)
            if code:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 10e6 else f"{n / 1e6:,.0f} MB"


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes free for this user on the filesystem of ``folder`` (or of its nearest existing parent); None if unknown."""
    path = Path(os.path.abspath(folder))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full(folder: str | os.PathLike | None, code: int, *, option: str | None = None) -> DiskFullError:
    """The one line for a write into ``folder`` that found no room (``code``: ENOSPC, EDQUOT or EFBIG).

    Names the folder as an absolute path (which disk it is matters), says what
    is full (with the free space the filesystem reports) and the fix: free
    space, or choose another folder with ``option`` (``--out``, ``--cache-dir``)
    when one does; then re-run.
    """
    folder = None if folder is None else os.path.abspath(folder)
    elsewhere = f" or choose another {option}" if option else ""
    if code == errno.EFBIG:  # a process or filesystem limit on one file's size
        reason, fix = f"cannot write ({os.strerror(code)})", "free disk space (or raise the file size limit), then re-run"
    elif code == errno.EDQUOT:
        reason, fix = "disk quota exceeded", f"free space within your quota{elsewhere}, then re-run"
    else:
        free = None if folder is None else free_bytes(folder)
        reason = "no space left on the device" + (f" ({_megabytes(free)} free)" if free is not None else "")
        fix = f"free space{' there' if folder else ''}{elsewhere}, then re-run"
    return DiskFullError(folder, code, reason, fix, option)


def _folder_of(exc: BaseException) -> Path | None:
    """The folder of the file an OSError (or one it came from) names; None when none names a file."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.filename:
            named = Path(os.fsdecode(exc.filename))
            return named if named.is_dir() else named.parent
        exc = exc.__cause__ or exc.__context__
    return None


def as_disk_full(exc: BaseException, folder: str | os.PathLike | None = None) -> DiskFullError | None:
    """``exc`` as a full disk: the DiskFullError it is or came from, else one naming the folder of the file it names
    (or ``folder``); None when ``exc`` is not a write that found no room (:func:`no_room`)."""
    seen = set()
    cause = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, DiskFullError):
            return cause
        cause = cause.__cause__ or cause.__context__
    code = no_room(exc)
    return None if code is None else disk_full(_folder_of(exc) or folder, code)


def _belongs_to(inner: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``inner`` is ``folder``, inside it, or inside a temporary folder beside it (``.<name>.<random>.tmp``)."""
    inner, folder = Path(os.path.abspath(inner)), Path(os.path.abspath(folder))
    beside = [p for p in (inner, *inner.parents) if is_sibling_of(p, folder, hidden=True)]
    return inner == folder or folder in inner.parents or bool(beside)


@contextlib.contextmanager
def writing_to(folder: str | os.PathLike | None, *, option: str | None = None):
    """Turn a write inside the block that finds no room into one :class:`~xrayfeat.errors.DiskFullError`.

    The line names ``folder`` (None: the folder of the file the error names) and
    ``option``, the flag that chooses another folder. A DiskFullError raised by
    :func:`atomic_path` for a file in ``folder`` (or in a temporary folder beside
    it) is named the same way; one that already names its option (an inner
    ``writing_to`` that knows better, e.g. ``TMPDIR``) or another folder, and
    every other error, pass unchanged, except that an OSError naming no file is
    given ``folder`` as its ``filename``, so its one line names where the write was.
    """
    try:
        yield
    except DiskFullError as exc:
        if exc.option is not None or (folder is not None and not _belongs_to(exc.folder, folder)):
            raise
        raise disk_full(folder or exc.folder, exc.errno, option=option) from exc
    except XrayfeatError:
        raise
    except Exception as exc:
        code = no_room(exc)
        where = folder or _folder_of(exc)
        if code is None and isinstance(exc, OSError) and exc.filename is None and folder is not None:
            exc.filename = os.fspath(folder)  # named after what was written (errors.describe_os_error reads it)
        if code is None or where is None:
            raise
        raise disk_full(where, code, option=option) from exc
