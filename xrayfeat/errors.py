"""The one exception family of xrayfeat.

Every error a user can cause (bad data, bad options, missing weights, a damaged
cache) is an :class:`XrayfeatError`. The CLI prints ``str(error)`` as one line and
exits with ``error.exit_code``; library users catch the class they care about.
A message that quotes another exception quotes :func:`first_line` of it.

:func:`one_line` is the terminal's encoder: every line the CLI prints (errors,
warnings, human output) goes through it, so a name that carries a newline, an
escape sequence or a bidi override is shown escaped and can never forge a line
or repaint the terminal.

:func:`describe_os_error` is the one table of operating-system errors: each
errno a reason and a fix, and :func:`os_error` the one-line
:class:`FileSystemError` (naming the file) the CLI prints for an OSError that
reached it, exit 2 where the path is the user's input (a missing folder, no
permission, a name too long), 1 otherwise.

A refusal to write where the user pointed (an existing run, an output folder)
names the fix in the words of whoever called: the CLI's ``--out`` on the command
line, the ``out=`` and ``overwrite=True`` keywords from Python. The CLI says it is
the caller (:func:`called_from`, around every command); the library's default is
Python. :func:`out_words` and :func:`another_out` build those words.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno as _errno
import os
import re

# C0, DEL, C1; Unicode's line and paragraph separators; the bidi embeddings, overrides, isolates and marks
# (a right-to-left override shows "gnp.exe" as "exe.png"); lone surrogates (the bytes of a non-UTF-8 file name)
_CONTROLS = "\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[{_CONTROLS}]")
_UNSAFE = re.compile(f"[{_CONTROLS}\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte Python could not decode ("surrogateescape"): the byte itself
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def one_line(text) -> str:
    """``text`` as one line safe for a terminal: every control character written as an escape.

    C0 and C1 controls, DEL, U+2028/U+2029 and the bidi controls become ``\\n``,
    ``\\r``, ``\\t``, ``\\xNN`` or ``\\uNNNN``; a non-UTF-8 byte of a file name becomes
    ``\\xNN``. Anything else (accents, CJK, emoji) is kept. The result holds no
    character it would escape, so applying it twice changes nothing.
    """
    text = str(text)
    return _UNSAFE.sub(_escaped, text) if _UNSAFE.search(text) else text


def control_characters(text: str) -> list[str]:
    """The control characters :func:`one_line` escapes that ``text`` holds, each once and as escaped.

    A non-UTF-8 byte of a file name is not one: it is data a terminal shows as
    ``\\xNN``, not a control.
    """
    return list(dict.fromkeys(one_line(char) for char in _CONTROL.findall(text)))


def first_line(exc: BaseException, *, typed: bool = False) -> str:
    """An exception as one line for a message: the first non-blank line of its text, stripped.

    An exception with no text gives its type's name. ``typed`` puts the type in
    front (``"ValueError: bad value"``; ``"ValueError"`` alone when there is no text).
    """
    line = next((text.strip() for text in str(exc).splitlines() if text.strip()), "")
    name = type(exc).__name__
    if typed:
        return f"{name}: {line}" if line else name
    return line or name


class XrayfeatError(Exception):
    """Base class. ``exit_code`` 2 means bad usage or input, 1 any other failure."""

    exit_code = 2


class DatasetError(XrayfeatError):
    """A dataset folder or manifest cannot be used as given."""


class ImageReadError(XrayfeatError):
    """One image file cannot be decoded; names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class WeightsError(XrayfeatError):
    """Backbone weights are missing, damaged or do not fit the backbone."""


class StoreError(XrayfeatError):
    """The feature store is missing rows, damaged, or opened with the wrong fingerprint."""

    exit_code = 1


class CacheFolderError(XrayfeatError):
    """The cache folder a command reads is missing or is not a folder (exit 2, bad input)."""


class DeviceError(XrayfeatError):
    """The requested device or precision is not available."""


class ClusterError(XrayfeatError):
    """The Dask cluster failed the run: the scheduler was lost, or a chunk kept killing its workers."""

    exit_code = 1


class WorkerError(XrayfeatError):
    """A helper process of this machine (a decode worker) ended before it answered: killed, or out of memory."""

    exit_code = 1


class RunError(XrayfeatError):
    """A folder is not a run, or a run's record or artifact is missing or damaged."""


class DiskFullError(XrayfeatError):
    """A write found no room: the filesystem or the quota is full, or a file reached the size limit.

    Made by :func:`xrayfeat.fileio.disk_full` (see :func:`xrayfeat.fileio.writing_to`):
    ``folder`` is where the file was being written (None where nothing said), ``errno`` one of
    :data:`xrayfeat.fileio.NO_ROOM`, ``reason`` and ``fix`` the two halves of
    the line, ``option`` the flag that chooses another folder (None when unknown).
    """

    exit_code = 1

    def __init__(self, folder: str | os.PathLike | None, errno: int, reason: str, fix: str, option: str | None = None):
        self.folder = None if folder is None else os.fspath(folder)
        self.errno = errno
        self.reason = reason
        self.fix = fix
        self.option = option
        super().__init__(f"{self.folder or 'a write'}: {reason}; {fix}")

    def __reduce__(self):  # whole across processes (a Dask worker, the head's child)
        return type(self), (self.folder, self.errno, self.reason, self.fix, self.option)


# --------------------------------------------------------------------------- operating-system errors

#: Where a failure names a path the user gave (or its folder): exit 2, bad input. Any other errno: exit 1.
_INPUT_ERRNOS = frozenset({_errno.ENOENT, _errno.EACCES, _errno.EPERM, _errno.EROFS, _errno.ENAMETOOLONG,
                           _errno.EISDIR, _errno.ENOTDIR, _errno.EEXIST, _errno.ELOOP, _errno.ENOTEMPTY})

#: errno -> (reason, fix): the one table every OSError a user sees is described by (:func:`describe_os_error`).
#: A full disk (ENOSPC, EDQUOT, EFBIG) written by xrayfeat becomes :func:`xrayfeat.fileio.disk_full`'s line, which
#: also gives the free space; these rows are for the rest (a full disk met while reading, say).
OS_ERRORS: dict[int, tuple[str, str]] = {
    _errno.ENOENT: ("no such file or folder", "check the path (every folder in it must exist: create it first)"),
    _errno.EACCES: ("permission denied", "check the permissions of this path and of the folders above it, "
                    "or choose another path"),
    _errno.EPERM: ("operation not permitted", "check the permissions and attributes (chattr, mount options) of this "
                   "path, or choose another path"),
    _errno.EROFS: ("read-only file system", "choose a path on a writable file system"),
    _errno.ENOSPC: ("no space left on the device", "free space there or choose another path, then re-run"),
    _errno.EDQUOT: ("disk quota exceeded", "free space within your quota or choose another path, then re-run"),
    _errno.EFBIG: ("file too large", "free disk space (or raise the file size limit), then re-run"),
    _errno.ENAMETOOLONG: ("the name is too long (at most 255 bytes per name and 4096 per path)",
                          "choose a shorter name or a shorter path"),
    _errno.EISDIR: ("is a folder, where a file is expected", "pass the path of a file (in this folder, say)"),
    _errno.ENOTDIR: ("a part of this path is a file, not a folder", "check the path: every part but the last must be "
                     "a folder"),
    _errno.EMFILE: ("too many open files (this process's limit)", "raise the limit (ulimit -n) or use fewer --workers, "
                    "then re-run"),
    _errno.ENFILE: ("too many open files on this system", "close other programs or raise the system's limit "
                    "(fs.file-max), then re-run"),
    _errno.EEXIST: ("already exists", "remove it or choose another path"),
    _errno.ENOTEMPTY: ("the folder is not empty", "empty or remove it, or choose another path"),
    _errno.ELOOP: ("too many levels of symbolic links (a link loop?)", "fix or remove the link"),
    _errno.EXDEV: ("cannot be moved to another file system", "keep the output on one file system "
                   "(choose another path)"),
    _errno.EBUSY: ("busy (in use, or a mount point)", "wait until it is free or choose another path, then re-run"),
    _errno.EIO: ("input/output error (the disk or network file system failed)", "check the disk and its "
                 "connection (dmesg), then re-run"),
}
_DEFAULT_FIX = "check the path and its file system, then re-run"


def os_reason(exc: OSError) -> str:
    """What went wrong, in the table's words (:data:`OS_ERRORS`), else the system's own (``strerror``)."""
    code = getattr(exc, "errno", None)
    if code in OS_ERRORS:
        return OS_ERRORS[code][0]
    return exc.strerror or (os.strerror(code) if code else first_line(exc))


def describe_os_error(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """``PATH: reason; fix`` for an OSError: the file it names (or ``path``), the table's reason and fix.

    The path is the exception's ``filename`` (with ``filename2`` for a rename or
    link: ``A -> B``); ``path`` is used when the exception names none (the file or
    folder the caller was writing). Without either, the line says ``a file``, never nothing.
    """
    named = getattr(exc, "filename", None)
    where = os.fsdecode(named) if named is not None else (os.fspath(path) if path is not None else None)
    other = getattr(exc, "filename2", None)
    if where is not None and other is not None:
        where = f"{where} -> {os.fsdecode(other)}"
    code = getattr(exc, "errno", None)
    fix = OS_ERRORS[code][1] if code in OS_ERRORS else _DEFAULT_FIX
    return f"{where if where is not None else 'a file'}: {os_reason(exc)}; {fix}"


class FileSystemError(XrayfeatError, OSError):
    """An OSError as one line (:func:`describe_os_error`); still an OSError (``errno``, ``filename``) for callers.

    ``exit_code`` is 2 where the errno says the path is wrong (missing, not permitted,
    too long, a file for a folder or a folder for a file), else 1.
    """

    def __init__(self, code: int | None, line: str, filename=None):
        OSError.__init__(self, code, line, filename)
        self.line = line
        self.exit_code = 2 if code in _INPUT_ERRNOS else 1

    def __str__(self):
        return self.line

    def __reduce__(self):
        return type(self), (self.errno, self.line, self.filename)


def os_error(exc: OSError, path: str | os.PathLike | None = None) -> FileSystemError:
    """``exc`` as the one line the CLI prints (:func:`describe_os_error`), the same errno and file kept."""
    if isinstance(exc, FileSystemError):
        return exc
    named = getattr(exc, "filename", None)
    return FileSystemError(getattr(exc, "errno", None), describe_os_error(exc, path),
                           named if named is not None else (None if path is None else os.fspath(path)))


#: Who called the library: ``"python"`` (the default) or ``"cli"`` (set by every command, :func:`called_from`).
_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("xrayfeat_caller", default="python")


@contextlib.contextmanager
def called_from(caller: str):
    """Within this block the library is called by ``caller`` (``"cli"`` or ``"python"``): refusals use its words."""
    if caller not in ("cli", "python"):
        raise ValueError(f"caller must be 'cli' or 'python'; got {caller!r}")
    token = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(token)


def caller() -> str:
    """``"cli"`` inside a command, else ``"python"``."""
    return _CALLER.get()


def out_words() -> str:
    """How the caller names the output path: ``--out`` on the command line, ``out=`` from Python."""
    return "--out" if caller() == "cli" else "out="


def another_out(cli: str, *, overwrite: bool = False) -> str:
    """The fix of a refusal to write at an output path, in the caller's words.

    ``cli``: the command line's words (they name ``--out``), returned unchanged
    there. From Python: ``pass overwrite=True or another out=`` when
    ``overwrite=True`` would be allowed to replace what is there, else ``pass
    another out=``.
    """
    if caller() == "cli":
        return cli
    return "pass overwrite=True or another out=" if overwrite else "pass another out="
