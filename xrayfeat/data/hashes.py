"""The SHA-256 of every image file, and ``file-hashes.json``, the cache that spares re-reading them.

The feature store is keyed by the content of each image file, so discovery
hashes every file. :func:`hash_files` stats the files, takes each hash it can
from a :class:`HashCache` and reads the rest, in a thread pool when there is
enough data to make that pay. The cache remembers each file's hash with its
size, modification time and inode, so an unchanged folder is discovered at the
cost of one ``stat`` per file.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from xrayfeat.fileio import atomic_write, file_digest, writing_to

__all__ = ["HashCache", "hash_files"]

logger = logging.getLogger(__name__)

_THREADS_FROM_BYTES = 16 << 20  # hash in a thread pool when this much data needs hashing


class HashCache:
    """File hashes remembered across runs: absolute path -> [size, mtime_ns, inode, sha256].

    An entry is trusted only when size, mtime_ns and inode all equal the file's
    current ``stat``; anything else means the file may have changed and is hashed
    again. An unreadable or corrupt cache file is treated as empty, never as an
    error: it is only a shortcut. Entries of files outside the current dataset
    are kept, so datasets sharing one cache directory do not evict each other.
    The file is written (atomically) only when an entry changed; when two runs
    save at once the last one wins, which costs only re-hashing, never a wrong hash.
    ``path=None`` is a cache that remembers nothing across runs.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else os.path.abspath(os.fspath(path))
        self.entries: dict = self._load(self.path) if self.path else {}
        self.changed = False

    @staticmethod
    def _load(path: str) -> dict:
        try:
            with open(path, "rb") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable hash cache %s (%s); files will be hashed again", path, error)
            return {}
        if not isinstance(data, dict):
            logger.warning("ignoring hash cache %s: not a JSON object; files will be hashed again", path)
            return {}
        return data

    def lookup(self, key: str, st: os.stat_result) -> str | None:
        entry = self.entries.get(key)
        if (type(entry) is list and len(entry) == 4 and entry[0] == st.st_size
                and entry[1] == st.st_mtime_ns and entry[2] == st.st_ino
                and type(entry[3]) is str and len(entry[3]) == 64):
            return entry[3]
        return None

    def lookup_many(self, keys: Sequence[str], stats: Sequence[os.stat_result | None]) -> list[str | None]:
        """:meth:`lookup` of each key with its stat (None where the stat is None), in one pass over 10^5 files."""
        found: list[str | None] = []
        add = found.append
        for entry, st in zip(map(self.entries.get, keys), stats):
            if (st is not None and type(entry) is list and len(entry) == 4 and entry[0] == st.st_size
                    and entry[1] == st.st_mtime_ns and entry[2] == st.st_ino
                    and type(entry[3]) is str and len(entry[3]) == 64):
                add(entry[3])
            else:
                add(None)
        return found

    def store(self, key: str, st: os.stat_result, digest: str) -> None:
        entry = [st.st_size, st.st_mtime_ns, st.st_ino, digest]
        if self.entries.get(key) != entry:
            self.entries[key] = entry
            self.changed = True

    def save(self) -> None:
        """Write the cache if an entry changed; a failure is logged, not raised, except a full disk.

        A full disk (:class:`~xrayfeat.errors.DiskFullError`, naming the cache
        folder and ``--cache-dir``) stops the command here, before any work whose
        results the same disk could not hold; the file is left as it was.
        """
        if self.path is None or not self.changed:
            return
        folder = os.path.dirname(self.path)
        try:
            with writing_to(folder, option="--cache-dir"):
                os.makedirs(folder, exist_ok=True)
                atomic_write(self.path, json.dumps(self.entries, separators=(",", ":")))
            self.changed = False
        except OSError as error:
            logger.warning("could not save hash cache %s (%s); files will be hashed again next time", self.path, error)


def hash_files(paths: Sequence[str], cache: HashCache, error: Callable[[int, str], Exception | None], *,
               known: Sequence[os.stat_result | None] | None = None,
               ) -> tuple[list[os.stat_result | None], list[str | None]]:
    """The ``stat`` and hex SHA-256 of each file, reusing cached hashes where size, mtime and inode match.

    ``paths`` are absolute. ``known``, where given, are the files' ``os.stat``
    taken by the caller just before (a manifest's rows are stat'ed once, not
    twice); a ``None`` among them is stat'ed here. Fresh hashes are added to ``cache`` (not saved).
    A file that cannot be read, is empty or is not a regular file calls ``error(i, reason)``: the
    caller names ``paths[i]`` the way its user wrote it and returns the
    exception to raise, or ``None`` to leave the file out, whose stat and
    digest are then ``None`` (``--on-error skip``: one bad file does not stop
    the discovery of the others).
    """
    stats: list[os.stat_result | None] = []
    for i, path in enumerate(paths):
        given = known[i] if known is not None else None
        stats.append(_stat(i, path, error) if given is None else _checked(i, given, error))
    digests = cache.lookup_many(paths, stats)
    todo = [i for i, (st, digest) in enumerate(zip(stats, digests)) if st is not None and digest is None]

    def work(i: int) -> tuple[int, str | None]:
        try:
            return i, file_digest(paths[i])
        except OSError as exc:
            _refuse(error(i, f"cannot read ({exc.strerror or exc}); check the file"), exc)
            return i, None

    if len(todo) > 1 and sum(stats[i].st_size for i in todo) >= _THREADS_FROM_BYTES:
        # hashlib releases the GIL on large buffers, so threads overlap reading and
        # hashing across cores; on many tiny files they only add overhead.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            fresh = list(pool.map(work, todo))
    else:
        fresh = [work(i) for i in todo]
    for i, digest in fresh:
        if digest is None:
            stats[i] = None
            continue
        digests[i] = digest
        cache.store(paths[i], stats[i], digest)
    return stats, digests


def _stat(i: int, path: str, error: Callable[[int, str], Exception | None]) -> os.stat_result | None:
    """The file's ``stat``, or ``None`` when ``error`` leaves an unreadable or empty file out."""
    try:
        st = os.stat(path)
    except OSError as exc:
        _refuse(error(i, f"cannot read ({exc.strerror or exc}); check the file"), exc)
        return None
    except ValueError:  # a NUL byte in the name: no file can have it
        _refuse(error(i, "the name holds a NUL byte, which no file name can; fix the path"), None)
        return None
    return _checked(i, st, error)


def _checked(i: int, st: os.stat_result, error: Callable[[int, str], Exception | None]) -> os.stat_result | None:
    """``st`` when it is a non-empty regular file's, else ``None`` once ``error`` leaves the file out."""
    if not stat.S_ISREG(st.st_mode):  # reading a pipe or a device could wait forever
        _refuse(error(i, "not a regular file (a folder, pipe or device); replace it with the image file"), None)
        return None
    if st.st_size == 0:
        _refuse(error(i, "is empty (0 bytes): remove or replace it"), None)
        return None
    return st


def _refuse(exc: Exception | None, cause: BaseException | None) -> None:
    """Raise ``exc`` (from ``cause``) when the caller wants the file to stop discovery; else nothing."""
    if exc is not None:
        raise exc from cause
