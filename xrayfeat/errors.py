"""The one exception family of xrayfeat.

Every error a user can cause (bad data, bad options, missing weights, a damaged
cache) is an :class:`XrayfeatError`. The CLI prints ``str(error)`` as one line and
exits with ``error.exit_code``; library users catch the class they care about.
A message that quotes another exception quotes :func:`first_line` of it.
"""

from __future__ import annotations

import os


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


class DeviceError(XrayfeatError):
    """The requested device or precision is not available."""


class ClusterError(XrayfeatError):
    """The Dask cluster failed the run: the scheduler was lost, or a chunk kept killing its workers."""

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
