"""The one exception family of xrayfeat.

Every error a user can cause (bad data, bad options, missing weights, a damaged
cache) is an :class:`XrayfeatError`. The CLI prints ``str(error)`` as one line and
exits with ``error.exit_code``; library users catch the class they care about.
A message that quotes another exception quotes :func:`first_line` of it.

:func:`one_line` is the terminal's encoder: every line the CLI prints (errors,
warnings, human output) goes through it, so a name that carries a newline, an
escape sequence or a bidi override is shown escaped and can never forge a line
or repaint the terminal.
"""

from __future__ import annotations

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
