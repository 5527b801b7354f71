"""The stores of a cache folder: every folder under it that holds a ``fingerprint.json``.

``cache ls``, ``cache verify`` and ``cache gc`` walk this list: :func:`cache_ls`,
:func:`cache_verify` and :func:`cache_gc` are those commands, each returning a
typed result whose ``as_json()`` is the command's ``--json``. One damaged
store must not hide the others: a folder whose ``fingerprint.json`` cannot be
read is listed as a :class:`DamagedStore`, in its place, with a warning naming
the folder and its repair (left to the caller with ``warn=False``: the ``cache``
commands show it themselves, once), and every other store is listed as usual.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from xrayfeat.errors import StoreError
from xrayfeat.store.feature_store import FeatureStore
from xrayfeat.store.fingerprint import FINGERPRINT_FIELDS, is_imported

__all__ = ["DamagedStore", "check_cache_folder", "check_cache_target", "hash_memory", "list_stores", "is_store_folder", "is_cache_folder",
           "STORE_MARKER", "HASH_MEMORY", "cache_ls", "cache_verify", "cache_gc", "CacheListing", "CacheCheck", "CacheCleanup"]

log = logging.getLogger("xrayfeat")

#: The file that makes a folder a feature store: its definition (:mod:`xrayfeat.store.fingerprint`).
STORE_MARKER = "fingerprint.json"
#: The hash memory a cache folder keeps beside its stores (:mod:`xrayfeat.data.hashes`).
HASH_MEMORY = "file-hashes.json"


@dataclass(frozen=True)
class DamagedStore:
    """A store folder that cannot be opened (its ``fingerprint.json`` is damaged); ``problem`` says so in one line.

    It answers what ``cache ls/verify/gc`` ask of a store: :meth:`info` (its
    fingerprint unknown: ``"?"``), :meth:`verify` (the problem, so ``cache
    verify`` fails naming it) and :meth:`gc` (nothing it can repair; the problem
    says what to do). ``damaged`` tells it from a :class:`FeatureStore`.
    """

    path: Path
    problem: str  # the file, what is wrong and the repair
    damaged: ClassVar[bool] = True

    def __len__(self) -> int:
        return 0

    def info(self) -> dict:
        files = [p for p in self.path.rglob("*") if p.is_file()]
        return {
            "path": str(self.path),
            "damaged": self.problem,
            "fingerprint_id": None,
            "fingerprint": {field: "?" for field in FINGERPRINT_FIELDS},
            "rows": 0,
            "shards": sum(1 for p in files if p.parent.name == "shards" and p.suffix == ".h5"),
            "bytes": sum(p.stat().st_size for p in files),
            "random_weights": False,
        }

    def verify(self) -> list[str]:
        return [self.problem]

    def gc(self, *, min_age_s: float = 0.0, on_wait=None) -> dict:
        """Nothing is touched: without its definition the store's shards cannot be checked."""
        return {"store": str(self.path), "damaged": self.problem, "removed_temp_files": [], "damaged_shards": [],
                "kept_rows": 0, "lost_rows": 0, "rebuilt_index": False, "merged_shards": 0, "dropped_duplicates": 0}


def check_cache_folder(cache_dir: str | os.PathLike) -> Path:
    """``cache_dir`` as a folder to read, or :class:`~xrayfeat.errors.CacheFolderError` (exit 2) naming it and the fix.

    For the commands that read a cache (``cache ls``, ``verify``, ``gc``): a mistyped
    path must not read as a healthy, empty cache.
    """
    from xrayfeat.errors import CacheFolderError

    root = Path(cache_dir)
    fix = "pass --cache-dir the folder extract wrote its features to"
    try:
        mode = root.stat().st_mode
    except FileNotFoundError:
        raise CacheFolderError(f"{root}: no such folder: {fix}") from None
    except NotADirectoryError:
        raise CacheFolderError(f"{root}: a part of this path is a file, not a folder: {fix}") from None
    except OSError as exc:
        raise CacheFolderError(f"{root}: cannot be read ({exc.strerror or exc}): check the path and its permissions") from None
    if not stat.S_ISDIR(mode):
        raise CacheFolderError(f"{root}: is a file, not a cache folder: {fix}")
    return root


def check_cache_target(cache_dir: str | os.PathLike) -> Path:
    """``cache_dir`` as a folder a command may create or add to, or :class:`~xrayfeat.errors.CacheFolderError` (exit 2).

    For the commands that write a cache (``extract``, ``fit-head``, ``embed``,
    ``predict``, ``explain``, ``evaluate``, ``cache export``), before anything is
    created: a folder that does not exist yet is fine (it is made); a file, a path
    under a file, a name over the file system's limit or a link loop is one line
    naming the path and the fix. A folder this user may not write to passes: a
    read-only cache is read (a lab's shared cache), and a write it needs is
    refused where it happens, naming the store (:mod:`xrayfeat.store.feature_store`).
    """
    from xrayfeat.errors import CacheFolderError, FileSystemError
    from xrayfeat.fileio import check_writable

    root = Path(cache_dir)
    fix = "pass --cache-dir a folder (a new one is made there)"
    try:
        check_writable(root, folder=True)
    except FileSystemError as exc:
        import errno

        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return root  # read-only: reading needs no write permission
        if exc.errno == errno.ENOTDIR and Path(exc.filename) == root:
            raise CacheFolderError(f"{root}: is a file, not a cache folder: {fix}") from None
        if exc.errno == errno.ENOTDIR:
            raise CacheFolderError(f"{exc.filename}: a part of --cache-dir {root} is a file, not a folder: {fix}") from None
        raise CacheFolderError(f"{exc}; or {fix}") from None
    return root


def hash_memory(cache_dir: str | os.PathLike) -> Path:
    """The cache folder's file-hash memory (:data:`HASH_MEMORY`), the folder checked (:func:`check_cache_target`) and made.

    Where every command that hashes images for a cache keeps their hashes, so the
    next command on the same files reads no bytes.
    """
    root = check_cache_target(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    return root / HASH_MEMORY


def list_stores(cache_dir: str | os.PathLike, *, warn: bool = True) -> list[FeatureStore | DamagedStore]:
    """Every store under ``cache_dir`` (folders that hold a fingerprint.json), sorted by folder.

    A store that cannot be opened is a :class:`DamagedStore` in the list (its
    ``damaged`` is true, a store's false), and a warning names it and its repair
    (not with ``warn=False``, for a caller that shows ``problem`` itself).
    """
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    stores = []
    for meta in sorted(root.glob("*/fingerprint.json")):
        try:
            stores.append(FeatureStore.at(meta.parent))
        except StoreError as exc:
            if warn:
                log.warning("%s", exc)
            stores.append(DamagedStore(meta.parent, str(exc)))
    return stores


def is_store_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a feature store: a folder holding a :data:`STORE_MARKER` (damaged or not)."""
    return (Path(path) / STORE_MARKER).is_file()


def is_cache_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a feature cache folder: it holds the :data:`HASH_MEMORY` or a store (:func:`list_stores`' folders).

    Folders are read by ``scandir``: only sub-folders cost a ``stat`` each.
    """
    root = Path(path)
    if (root / HASH_MEMORY).is_file():
        return True
    try:
        with os.scandir(root) as entries:
            return any(entry.is_dir() and is_store_folder(entry.path) for entry in entries)
    except OSError:  # not a folder, or not one we may list
        return False


@dataclass
class CacheListing:
    """``xrayfeat cache ls``: each store's :meth:`~xrayfeat.store.feature_store.FeatureStore.info` (a damaged one flagged)."""

    cache_dir: str
    stores: list = field(default_factory=list)

    def as_json(self) -> dict:
        return {"cache_dir": self.cache_dir, "stores": self.stores}


@dataclass
class CacheCheck:
    """``xrayfeat cache verify``: store folder → its problems (each names the file, what is wrong and the repair)."""

    cache_dir: str
    stores: dict = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        return [p for ps in self.stores.values() for p in ps]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict:
        return {"ok": self.ok, "stores": self.stores}

    def raise_for_problems(self) -> None:
        """:class:`~xrayfeat.errors.StoreError` (exit 1) counting the problems and naming the first, if any."""
        if self.problems:
            raise StoreError(f"{len(self.problems)} problem(s) found; first: {self.problems[0]}")


@dataclass
class CacheCleanup:
    """``xrayfeat cache gc``: what gc did to each store (temporary files removed, shards repaired and merged...)."""

    cache_dir: str
    stores: list = field(default_factory=list)

    def as_json(self) -> dict:
        return {"stores": self.stores}


def cache_ls(cache_dir: str | os.PathLike = "data_cache") -> CacheListing:
    """The feature stores of ``cache_dir``: fingerprints, rows, size (``xrayfeat cache ls``).

    A missing folder, or a file, is a :class:`~xrayfeat.errors.CacheFolderError` naming it.
    """
    from xrayfeat.store.imported import imported_names

    check_cache_folder(cache_dir)
    infos = [s.info() for s in list_stores(cache_dir, warn=False)]
    names = imported_names(cache_dir)
    for info in infos:  # an imported store: the names -b takes for it (cache import --name)
        if is_imported(info["fingerprint"]):
            info["names"] = sorted(n for n, e in names.items() if isinstance(e, dict) and
                                   e.get("store") == Path(info["path"]).name)
    return CacheListing(str(cache_dir), infos)


def cache_verify(cache_dir: str | os.PathLike = "data_cache") -> CacheCheck:
    """Every shard's checksum and every index checked (``xrayfeat cache verify``); ``result.ok`` says whether all are sound.

    Nothing is raised for a damaged store: ``result.problems`` lists them
    (``result.raise_for_problems()`` raises as the command exits, 1).
    """
    check_cache_folder(cache_dir)
    # a damaged store's problem is listed in its place, once
    return CacheCheck(str(cache_dir), {str(store.path): store.verify() for store in list_stores(cache_dir, warn=False)})


def cache_gc(cache_dir: str | os.PathLike = "data_cache", *, on_wait: Callable | None = None) -> CacheCleanup:
    """Repair damaged shards and indexes, remove what killed runs left, compact small shards (``xrayfeat cache gc``).

    Waits for a running extraction; ``on_wait(store)`` is called first when it must.
    """
    check_cache_folder(cache_dir)
    stores = list_stores(cache_dir, warn=False)
    return CacheCleanup(str(cache_dir), [s.gc(on_wait=None if on_wait is None else (lambda s=s: on_wait(s)))
                                         for s in stores])
