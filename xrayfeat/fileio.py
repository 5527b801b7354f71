"""The one way xrayfeat writes a file, and the one way it digests one.

:func:`atomic_path` yields a temporary path beside the target (a unique name, so
two processes writing the same file never share a temporary); when the block
ends the file is fsync-ed, renamed over the target and the folder fsync-ed. A
reader sees the old file or the new one, never half of one; a writer killed in
the block leaves only a ``.<name>.<random>.tmp[suffix]`` file that ``cache gc`` removes. When
two processes write the same target at once, the last rename wins and the file
is always one of the two complete versions.

:func:`atomic_write` and :func:`write_json` are the common cases;
:func:`file_digest` hashes a file with :func:`hashlib.file_digest`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterator

TEMP_GLOB = ".*.tmp*"  # what a killed writer leaves behind (see atomic_path)


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


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a unique temporary path beside ``target``; on success it replaces ``target`` atomically.

    ``suffix`` ends the temporary name, for writers that insist on an extension
    (``numpy.savez`` appends ``.npz`` to any other name). On an exception the
    temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    # O_EXCL: never share a temporary; mode 0o666 less the umask, as open() gives (mkstemp would give 0600)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
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
