"""The content-addressed HDF5 feature store.

A frozen backbone is a pure function of (pixels, backbone, weights, preprocessing,
input size, cut layer, precision). One store holds the outputs of one such
function — its *fingerprint* (:mod:`xrayfeat.store.fingerprint`) — keyed by the SHA-256
of each image file's bytes, so an image is computed once whatever folder or
experiment it appears in.

Layout of one store (``<cache-dir>/<backbone>-<layer>-<size>-<precision>-<id>/``)::

    fingerprint.json        the fields that define every value in the store, and what it keeps (--keep)
    shards/<name>.h5        immutable HDF5 files: keys, the parts kept (spatial, pooled), a digest per row and part
    shards/.<name>.*.tmp    a shard being written; never read; removed by ``gc``
    incoming/<name>.h5      complete shards of Dask workers, until the writer moves them into shards/
    index.npz               hash → (shard, row), a cache of what the shards say, sealed by a digest
    write.lock, read.lock   fcntl locks

The promises, after SQLite's and HDF5's: a crash, a full disk or a read-only
folder never leaves a store that reads wrong, and damage is found, refused and
repairable.

* Crash safety: a shard is written completely under a temporary name, flushed,
  fsync-ed and renamed into place (:mod:`xrayfeat.store.shards`, through
  :func:`xrayfeat.fileio.atomic_path`), so a reader sees a whole shard or none;
  ``fingerprint.json`` and ``index.npz`` are replaced the same way. Shards are
  never modified; compaction writes a new shard and only then deletes the ones
  it replaces (a reader tolerates the brief duplicates: the first shard wins).
  The index is derived data: whenever it lists other shards than the folder
  holds it is brought up to date from the shards, so a run killed at any moment
  leaves a store that reads correctly and lacks at most the batch in flight.
* Damage: every row read is checked against its digest, the key column against
  its own when the index is built from it, and the index against the digest
  saved with it (:mod:`xrayfeat.store.shards`). A damaged shard or index is refused by
  every reader with one line naming the file and the repair; :meth:`FeatureStore.verify`
  (``cache verify``) streams the whole store and names every damaged file;
  :meth:`FeatureStore.gc` (``cache gc``) replaces a damaged shard by its sound
  rows and rebuilds a damaged index, so re-running ``extract`` recomputes
  exactly the rows that were lost.
* A full disk or a read-only folder: the write fails before anything is renamed
  into place, and the error is one :class:`StoreError` line naming the file, the
  reason and the fix; the store is as it was. A read-only store can still be read.

Concurrency: one writer at a time holds ``write.lock`` for a whole extraction
(a second one waits, then finds the rows already there; ``gc`` waits the same
way); readers take a shared ``read.lock``, which compaction and repair take
exclusively only to delete old shards.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrayfeat import __version__
from xrayfeat.store import shards
from xrayfeat.errors import StoreError
from xrayfeat.fileio import TEMP_GLOB, atomic_write, fsync_dir
from xrayfeat.store.fingerprint import (
    FLOAT16_TINY,
    check_storable,
    defining_fields,
    fingerprint_id,
    keep_error,
    kept_parts,
    missing_parts,
    store_dirname,
)

__all__ = ["FeatureStore", "list_stores", "COMPACT_BYTES"]

#: Compaction merges small shards into shards of about this many bytes.
COMPACT_BYTES = 256 << 20
#: What a killed writer leaves in the store folder: fileio's temporaries, and those of versions before it.
_TEMP_GLOBS = (TEMP_GLOB, ".fingerprint.*.tmp", ".index.*.tmp.npz")
_READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _write_failure(exc: OSError, where: Path) -> StoreError:
    """One line for an OS error while changing a store: the file, the reason, the fix."""
    reason = os.strerror(exc.errno) if exc.errno else (str(exc).splitlines() or [type(exc).__name__])[0]
    if exc.errno in _FULL:
        fix = "free disk space (or raise the file size limit), then re-run"
    elif exc.errno in _READ_ONLY:
        fix = "the cache folder is read-only: make it writable, or pass another --cache-dir"
    else:
        fix = "check the cache folder, then re-run"
    return StoreError(f"{where}: cannot write ({reason}); {fix}; the store is as it was")


@contextlib.contextmanager
def _writing(where: Path):
    """Turn an OS error raised while changing the store into :func:`_write_failure`'s line."""
    try:
        yield
    except OSError as exc:
        raise _write_failure(exc, where) from None


def _seal(npz: bytes) -> bytes:
    """The .npz with the SHA-256 of all its bytes before the archive comment written as that comment.

    A zip archive ends with its end record, whose last field is the length of
    the archive comment that follows it; numpy writes no comment, so the bytes
    end with that zero length. The result is still an archive numpy reads.
    """
    body = npz[:-2]
    digest = hashlib.sha256(body).hexdigest().encode()
    return body + len(digest).to_bytes(2, "little") + digest


def _intact(fh, size: int) -> bool:
    """Whether every byte of a sealed file (``size`` bytes, read from ``fh``) is as :func:`_seal` wrote it.

    Streams the file, so checking a large index costs no memory.
    """
    if size < 66:
        return False
    digest, left = hashlib.sha256(), size - 66
    while left:
        chunk = fh.read(min(left, 1 << 20))
        if not chunk:
            return False
        digest.update(chunk)
        left -= len(chunk)
    return fh.read(66) == (64).to_bytes(2, "little") + digest.hexdigest().encode()


def _lock_file(path: Path, *, required: bool):
    """The lock file opened for locking, or None where a read-only folder has none and ``required`` is false.

    In a read-only folder an existing lock file is opened for reading: ``flock`` works on it all the same.
    """
    try:
        return open(path, "a+")
    except OSError as exc:
        if exc.errno in _READ_ONLY and path.is_file():
            return open(path)
        if exc.errno in _READ_ONLY and not required:
            return None
        raise _write_failure(exc, path) from None


@contextlib.contextmanager
def _flock(path: Path, mode: int, *, on_wait=None, required: bool = True):
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


@dataclass
class _Index:
    """hash → (shard number, row), plus the shard names it was built from."""

    shards: list[str]
    hashes: np.ndarray  # (n,) S64
    shard_of: np.ndarray  # (n,) int32
    row_of: np.ndarray  # (n,) int32

    def lookup(self) -> dict[bytes, int]:
        return {h: i for i, h in enumerate(self.hashes.tolist())}


class FeatureStore:
    """One fingerprint's features. Open with :meth:`FeatureStore.open`.

    >>> store = FeatureStore.open("data_cache", fingerprint, create=True)   # doctest: +SKIP
    >>> store.missing(dataset.hashes)                                       # doctest: +SKIP
    >>> arrays = store.read(dataset.hashes, ("pooled",))                    # doctest: +SKIP
    """

    def __init__(self, path: Path, fingerprint: dict):
        self.path = Path(path)
        self.fingerprint = dict(fingerprint)
        self.fingerprint_id = fingerprint_id(fingerprint)
        self._index: _Index | None = None
        self._lookup: dict[bytes, int] | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, cache_dir: str | os.PathLike, fingerprint: dict, *, create: bool = False) -> FeatureStore:
        """The store for ``fingerprint`` under ``cache_dir``; ``create`` makes it if absent.

        Without ``create``, a missing store raises :class:`StoreError`; so does a
        folder whose ``fingerprint.json`` holds another fingerprint than its name says.
        """
        path = Path(cache_dir) / store_dirname(fingerprint)
        meta = path / "fingerprint.json"
        if meta.is_file():
            stored = _read_fingerprint(meta)
            if fingerprint_id(stored) != fingerprint_id(fingerprint):
                raise StoreError(
                    f"{meta}: holds fingerprint {fingerprint_id(stored)}, not the {fingerprint_id(fingerprint)} its "
                    f"folder name promises (a store renamed or copied by hand?): rename the folder to "
                    f"{store_dirname(stored)}, or delete it and re-run extract"
                )
            return cls(path, stored)
        if not create:
            raise StoreError(f"no feature store for this fingerprint in {cache_dir} (looked for {path.name})")
        with _writing(Path(cache_dir)):
            (path / "shards").mkdir(parents=True, exist_ok=True)
            for lock in ("write.lock", "read.lock"):  # so that readers of a read-only copy find them
                (path / lock).touch()
            atomic_write(meta, json.dumps(defining_fields(fingerprint), indent=1, sort_keys=True))
        return cls(path, fingerprint)

    @classmethod
    def at(cls, path: str | os.PathLike) -> FeatureStore:
        """Open an existing store by its folder (for ``cache ls/verify/gc``)."""
        path = Path(path)
        meta = path / "fingerprint.json"
        if not meta.is_file():
            raise StoreError(f"{path}: not a feature store (no fingerprint.json)")
        return cls(path, _read_fingerprint(meta))

    def provenance(self) -> dict:
        """The HDF5 attributes of the oldest shard (empty for an empty store)."""
        names = self.shard_names()
        if not names:
            return {}
        return shards.read_attrs(self.path / "shards" / names[0])

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts of each row this store keeps (``--keep``): ``("spatial", "pooled")``, ``("pooled",)`` or ``("spatial",)``."""
        return kept_parts(self.fingerprint)

    def check_parts(self, need, purpose: str = "this command") -> None:
        """Refuse, in one line naming the fix, a ``purpose`` that needs parts this store does not keep."""
        if missing_parts(self.fingerprint, need):
            raise keep_error(self.path, self.fingerprint, need, purpose)

    @property
    def random_weights(self) -> bool:
        return str(self.fingerprint.get("weights", "")).startswith("none")

    @property
    def _repair_hint(self) -> str:
        return f"run `xrayfeat cache gc --cache-dir {self.path.parent}`"

    # ------------------------------------------------------------------ index

    def shard_names(self) -> list[str]:
        return sorted(p.name for p in (self.path / "shards").glob("*.h5") if not p.name.startswith("."))

    def _load_index(self) -> _Index | None:
        """The saved index, None if there is none; :class:`StoreError` if it is damaged.

        Every byte is checked (:func:`_intact`) before numpy parses any of it.
        """
        path = self.path / "index.npz"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if not _intact(io.BytesIO(data), len(data)):
            raise self._damaged_index()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return _Index(list(npz["shards"].astype(str)), npz["hashes"], npz["shard_of"], npz["row_of"])

    def _damaged_index(self) -> StoreError:
        return StoreError(f"{self.path / 'index.npz'}: does not match its checksum; the index is damaged: "
                          f"{self._repair_hint} (it rebuilds the index from the shards)")

    def _check_index(self) -> list[str]:
        """The damaged-index line, if the saved index is damaged; streams it."""
        path = self.path / "index.npz"
        try:
            with open(path, "rb") as fh:
                return [] if _intact(fh, os.fstat(fh.fileno()).st_size) else [str(self._damaged_index())]
        except FileNotFoundError:
            return []

    def _read_index(self, *, repair: bool = False) -> _Index:
        """The index, brought up to date from the shards when it lists others; ``repair`` ignores a damaged one."""
        names = self.shard_names()
        try:
            saved = self._load_index()
        except StoreError:
            if not repair:
                raise
            saved = None
        if saved is not None and saved.shards == names:
            return saved
        return self._build_index(names, saved)

    def _build_index(self, names: list[str], cached: _Index | None) -> _Index:
        known = {}
        if cached is not None:
            # reuse what the old index says about shards that still exist
            for number, name in enumerate(cached.shards):
                if name in names:
                    known[name] = cached.hashes[cached.shard_of == number], cached.row_of[cached.shard_of == number]
        hashes, shard_of, row_of = [], [], []
        for number, name in enumerate(names):
            if name in known:
                h, rows = known[name]
            else:
                h = shards.read_hashes(self.path / "shards" / name, self.fingerprint_id)
                rows = np.arange(len(h), dtype=np.int32)
            hashes.append(h.astype("S64"))
            shard_of.append(np.full(len(h), number, dtype=np.int32))
            row_of.append(rows.astype(np.int32))
        if hashes:
            all_h = np.concatenate(hashes)
            all_s = np.concatenate(shard_of)
            all_r = np.concatenate(row_of)
            # duplicates (a compaction interrupted before it deleted its inputs): first shard wins
            _, first = np.unique(all_h, return_index=True)
            first.sort()
            all_h, all_s, all_r = all_h[first], all_s[first], all_r[first]
        else:
            all_h = np.empty(0, "S64")
            all_s = all_r = np.empty(0, np.int32)
        return _Index(names, all_h, all_s, all_r)

    def _save_index(self, index: _Index) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, shards=np.array(index.shards, dtype="U"), hashes=index.hashes,
                 shard_of=index.shard_of, row_of=index.row_of)
        atomic_write(self.path / "index.npz", _seal(buffer.getvalue()))

    def _save_index_if_stale(self) -> None:
        """Save the index unless the saved one already lists the shards there are (a read-only store stays untouched)."""
        names = self.shard_names()
        saved = self._load_index()  # read and checked once
        if saved is None or saved.shards != names:
            self._save_index(self._build_index(names, saved))

    def refresh(self) -> None:
        """Forget the in-memory index (another process may have added rows)."""
        self._index = self._lookup = None

    def _ensure_index(self) -> tuple[_Index, dict[bytes, int]]:
        if self._index is None:
            self._index = self._read_index()
            self._lookup = self._index.lookup()
        return self._index, self._lookup

    def __len__(self) -> int:
        return len(self._ensure_index()[0].hashes)

    def __contains__(self, sha256: str) -> bool:
        return sha256.encode() in self._ensure_index()[1]

    def missing(self, hashes) -> list[str]:
        """The hashes (in the given order, without repeats) that have no row yet."""
        lookup = self._ensure_index()[1]
        seen, out = set(), []
        for h in hashes:
            if h not in seen and h.encode() not in lookup:
                seen.add(h)
                out.append(h)
        return out

    # ------------------------------------------------------------------ reading

    def read(self, hashes, parts=("pooled", "spatial")) -> dict[str, np.ndarray]:
        """Arrays for ``hashes`` in the given order (float32). Every hash must be present."""
        (chunk,) = list(self.iter_batches(hashes, parts, batch_size=max(len(hashes), 1)))
        return chunk

    def iter_batches(self, hashes, parts=("pooled", "spatial"), *, batch_size: int = 1024):
        """Yield dicts of float32 arrays for consecutive slices of ``hashes``.

        Memory stays at one batch, so datasets larger than RAM can be streamed.
        Every row is checked against its digest; a damaged shard or index raises
        :class:`StoreError` naming the file and the repair, and a part the store
        does not keep (``--keep``) a :class:`~xrayfeat.store.fingerprint.KeepError`.
        """
        self.check_parts(parts, f"reading {' and '.join(parts)} features")
        hashes = list(hashes)
        with _flock(self.path / "read.lock", fcntl.LOCK_SH, required=False):
            if self._index is not None and self._index.shards != self.shard_names():
                self.refresh()  # shards compacted or added since the index was read
            index, lookup = self._ensure_index()
            absent = [h for h in hashes if h.encode() not in lookup]
            if absent:
                raise StoreError(
                    f"{len(absent)} of {len(hashes)} images have no features in {self.path} "
                    f"(e.g. {absent[0][:12]}); run `xrayfeat extract` with the same feature options first"
                )
            readers: dict[int, shards.ShardReader] = {}
            try:
                for start in range(0, max(len(hashes), 1), batch_size):
                    chunk = hashes[start : start + batch_size]
                    positions = np.array([lookup[h.encode()] for h in chunk], dtype=np.int64)
                    yield {part: self._gather(readers, index, positions, part) for part in parts}
            finally:
                for reader in readers.values():
                    reader.close()

    def _gather(self, readers, index: _Index, positions: np.ndarray, part: str) -> np.ndarray:
        shard_of = index.shard_of[positions]
        row_of = index.row_of[positions]
        result = None
        for number in np.unique(shard_of):
            if number not in readers:
                readers[number] = shards.ShardReader(self.path / "shards" / index.shards[number], self.fingerprint_id)
            where = np.nonzero(shard_of == number)[0]
            # h5py wants increasing, unique rows; each is checked against the key the index gives it
            rows, first, inverse = np.unique(row_of[where], return_index=True, return_inverse=True)
            block = readers[number].read(part, rows, index.hashes[positions[where[first]]])
            if result is None:
                result = np.empty((len(positions), *block.shape[1:]), dtype=np.float32)
            result[where] = block[inverse]
        if result is None:
            raise StoreError(f"{self.path}: no rows to read")
        return result

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writer(self, provenance: dict | None = None, *, on_wait=None):
        """Exclusive writing session: ``append`` commits shards; compaction and index on exit.

        ``on_wait`` is called once if another process holds the store.
        """
        with _flock(self.path / "write.lock", fcntl.LOCK_EX, on_wait=on_wait):
            self.refresh()
            session = _Writer(self, provenance or {})
            yield session
            self.compact()

    def write_rows(self, hashes, spatial: np.ndarray, pooled: np.ndarray, provenance: dict, *,
                   folder: Path | None = None) -> tuple[Path, float]:
        """Write one immutable shard of these rows; ``(its path, share of float16-subnormal values)``.

        Float32 in, stored as the store's dtype; values the dtype cannot hold are
        refused (:func:`~xrayfeat.store.fingerprint.check_storable`). Only the parts
        the store keeps are stored (:attr:`parts`; the other may be None). The shard goes to
        ``shards/``, where readers see it at once, or to ``folder``: a Dask
        worker writes its chunk to :meth:`staging_dir` and the process that holds
        the write lock moves it in with :meth:`adopt`. Needs no lock itself.
        """
        dtype = self.fingerprint["store_dtype"]
        kept = [block if part in self.parts else None for part, block in zip(shards.PARTS, (spatial, pooled))]
        share = max(check_storable(block, dtype) for block in kept if block is not None)
        hashes = np.asarray(hashes, dtype="S64")
        target = Path(folder) if folder is not None else self.path / "shards"
        shapes = [None if block is None else block.shape[1:] for block in kept]
        with _writing(target):
            with shards.write_shard(target, len(hashes), *shapes, np.dtype(dtype),
                                    self._shard_attrs(provenance)) as shard:
                shard.write(hashes, *(None if block is None else block.astype(dtype) for block in kept))
        return target / shard.name, share

    def _shard_attrs(self, provenance: dict) -> dict:
        """The HDF5 attributes of a new shard: the fingerprint, the version, the time and the provenance."""
        attrs = {
            "fingerprint_id": self.fingerprint_id,
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "xrayfeat_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "random_weights": bool(self.random_weights),
            **{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in provenance.items()},
        }
        if self.random_weights:
            attrs["WARNING"] = "RANDOM WEIGHTS: these features were computed without ImageNet weights"
        return attrs

    @property
    def staging_dir(self) -> Path:
        """Where workers of a cluster run write complete shards before :meth:`adopt` moves them in.

        Anything left there belongs to no run: the process that holds the write
        lock clears it (:meth:`clear_staging`), and so does ``gc``.
        """
        return self.path / "incoming"

    def adopt(self, staged: Path, hashes) -> str:
        """Move a complete shard from :meth:`staging_dir` into ``shards/``; the caller holds the write lock.

        The shard must belong to this store and hold exactly ``hashes`` (its key
        column is checked against its digest on the way), so a shard written for
        another chunk, or damaged in transit, is refused with one line. The
        rename is the commit: readers see the whole shard from then on.
        """
        staged = Path(staged)
        keys = shards.read_hashes(staged, self.fingerprint_id)
        if keys.tolist() != np.asarray(hashes, dtype="S64").tolist():
            raise StoreError(f"{staged}: holds other rows than the chunk it was written for; "
                             f"{self._repair_hint} and re-run")
        target = self.path / "shards" / staged.name
        with _writing(target):
            os.replace(staged, target)
            fsync_dir(target.parent)
        return staged.name

    def clear_staging(self, min_age_s: float = 0.0) -> list[str]:
        """Delete what killed or duplicated workers left in :meth:`staging_dir`; the caller holds the write lock."""
        removed, now = [], time.time()
        for leftover in sorted(self.staging_dir.glob("*")) if self.staging_dir.is_dir() else []:
            with contextlib.suppress(FileNotFoundError):
                if now - leftover.stat().st_mtime >= min_age_s:
                    leftover.unlink()
                    removed.append(f"incoming/{leftover.name}")
        return removed

    def save_index(self) -> None:
        """Bring ``index.npz`` up to date with the shards (readers rebuild it themselves; this saves them the work)."""
        with _writing(self.path):
            self.refresh()
            self._save_index_if_stale()

    def compact(self) -> int:
        """Merge small shards into shards of about :data:`COMPACT_BYTES`; returns how many were merged.

        Streams rows shard by shard, so memory stays at one small shard whatever
        the store's size; rows are checked on the way. The caller holds the write lock.
        """
        with _writing(self.path):
            index = self._read_index()
            groups, group, group_bytes = [], [], 0
            for name in index.shards:
                nbytes = shards.storage_bytes(self.path / "shards" / name)
                if nbytes >= COMPACT_BYTES // 2:
                    continue
                if group and group_bytes + nbytes > COMPACT_BYTES:
                    groups.append(group)
                    group, group_bytes = [], 0
                group.append(name)
                group_bytes += nbytes
            groups.append(group)
            merged = 0
            for names in (g for g in groups if len(g) > 1):
                self._merge(names, index)
                merged += len(names)
            self.refresh()
            self._save_index_if_stale()
        return merged

    def _merge(self, names: list[str], index: _Index) -> None:
        """Copy the rows the index points to in ``names`` into one new shard, then delete ``names``."""
        numbers = {n: i for i, n in enumerate(index.shards)}
        plan = [(name, np.sort(index.row_of[index.shard_of == numbers[name]])) for name in names]
        self._copy_rows(plan, {"compacted_from": len(names)})
        self._delete(names)

    def _copy_rows(self, plan: list[tuple[str, np.ndarray]], note: dict) -> None:
        """Write the given rows (increasing) of the given shards into one new shard, checking each row."""
        total = sum(len(rows) for _, rows in plan)
        spatial_shape, pooled_shape, dtype, attrs = shards.shard_layout(self.path / "shards" / plan[0][0])
        with shards.write_shard(self.path / "shards", total, spatial_shape, pooled_shape, dtype,
                                {**attrs, **note}) as shard:
            for name, rows in plan:
                for block in shards.iter_rows(self.path / "shards" / name, rows):
                    shard.write(*block)

    def _delete(self, names: list[str]) -> None:
        """Delete shards once no reader is inside one."""
        with _flock(self.path / "read.lock", fcntl.LOCK_EX):
            for name in names:
                (self.path / "shards" / name).unlink()

    # ------------------------------------------------------------------ maintenance

    def info(self) -> dict:
        names = self.shard_names()
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return {
            "path": str(self.path),
            "fingerprint_id": self.fingerprint_id,
            "fingerprint": self.fingerprint,
            "rows": len(self),
            "shards": len(names),
            "bytes": size,
            "random_weights": self.random_weights,
        }

    def verify(self) -> list[str]:
        """Check every shard (every byte, every row's digests, its fingerprint) and the index; one line per damaged file.

        Streams each shard a block of rows at a time (:data:`xrayfeat.store.shards.BLOCK_BYTES`)
        and the index file in chunks, so memory does not grow with the store.
        Leftovers of killed runs (temporary files, rows stored twice by an
        interrupted compaction) read correctly and are not problems; ``gc``
        reclaims them.
        """
        problems = []
        with _flock(self.path / "read.lock", fcntl.LOCK_SH, required=False):
            shapes = set()
            for name in self.shard_names():
                check = shards.check_shard(self.path / "shards" / name, self.fingerprint_id, self.parts)
                problems.extend(check.problems)
                if check.shapes is not None:
                    shapes.add(check.shapes)
            if len(shapes) > 1:
                problems.append(f"{self.path}: shards disagree on feature shapes {sorted(map(str, shapes))}; "
                                f"delete the store and re-run extract")
            problems.extend(self._check_index())
        return problems

    def gc(self, *, min_age_s: float = 0.0, on_wait=None) -> dict:
        """Repair and tidy the store (takes the write lock; ``on_wait`` is called once if it must wait).

        In order: remove temporary files left by killed writers (``min_age_s``
        spares younger ones); replace each damaged shard by a shard of its sound
        rows and rebuild a damaged index (:meth:`_repair`), so that ``extract``
        recomputes exactly the rows lost; drop rows stored twice; compact small
        shards. Temporary files are those of :func:`xrayfeat.fileio.atomic_path`
        (``.<name>.<random>.tmp[suffix]``) and of older versions
        (``.fingerprint.*.tmp``, ``.index.*.tmp.npz``, ``shards/.tmp-*``).
        """
        with _writing(self.path):
            with _flock(self.path / "write.lock", fcntl.LOCK_EX, on_wait=on_wait):
                removed = self._remove_temps(min_age_s) + self.clear_staging(min_age_s)
                repaired = self._repair()
                duplicates = self._drop_duplicates(self._read_index())
                merged = self.compact()
        return {"store": str(self.path), "removed_temp_files": removed, **repaired, "merged_shards": merged,
                "dropped_duplicates": duplicates}

    def _remove_temps(self, min_age_s: float) -> list[str]:
        removed = []
        now = time.time()
        temps = set()
        for pattern in _TEMP_GLOBS:
            temps.update(self.path.glob(pattern))
        for pattern in shards.TEMP_GLOBS:
            temps.update((self.path / "shards").glob(pattern))
        for tmp in sorted(temps):
            with contextlib.suppress(FileNotFoundError):  # renamed into place meanwhile
                if now - tmp.stat().st_mtime >= min_age_s:
                    tmp.unlink()
                    removed.append(tmp.name)
        return removed

    def _repair(self) -> dict:
        """Replace each damaged shard by one holding its sound rows; rebuild the index if it is damaged.

        Returns ``damaged_shards`` (names), ``kept_rows`` (sound rows copied out of
        them), ``lost_rows`` (rows they held that failed their checks; the rows of
        a shard HDF5 cannot open at all are not counted) and ``rebuilt_index``.
        """
        rebuilt = bool(self._check_index())
        damaged, kept, lost = [], 0, 0
        for name in self.shard_names():
            check = shards.check_shard(self.path / "shards" / name, self.fingerprint_id, self.parts)
            if not check.problems:
                continue
            sound = np.nonzero(check.sound)[0]
            if len(sound):
                self._copy_rows([(name, sound)], {"repaired_from": name})
            self._delete([name])
            damaged.append(name)
            kept += len(sound)
            lost += check.rows - len(sound)
        if damaged or rebuilt:
            self.refresh()
            self._save_index(self._read_index(repair=True))
        return {"damaged_shards": damaged, "kept_rows": kept, "lost_rows": lost, "rebuilt_index": rebuilt}

    def _drop_duplicates(self, index: _Index) -> int:
        """Rewrite any shard holding rows the index does not point to (left by an interrupted merge)."""
        dropped = 0
        for number, name in enumerate(index.shards):
            stored = shards.stored_rows(self.path / "shards" / name)
            referenced = int(np.count_nonzero(index.shard_of == number))
            if referenced == stored:
                continue
            dropped += stored - referenced
            if referenced:
                self._merge([name], index)
            else:
                self._delete([name])
        if dropped:
            self.refresh()
            self._save_index(self._read_index())
        return dropped


def _read_fingerprint(meta: Path) -> dict:
    """A store's fingerprint.json; one line naming the file and the fix when it is damaged."""
    try:
        stored = json.loads(meta.read_text())
        fingerprint_id(stored)
    except (OSError, ValueError, TypeError) as exc:
        raise StoreError(f"{meta}: unreadable ({type(exc).__name__}); the store's definition is damaged: delete "
                         f"{meta.parent} and re-run extract") from None
    return stored


class _Writer:
    """Appends rows to a store, one immutable shard per call."""

    def __init__(self, store: FeatureStore, provenance: dict):
        self.store = store
        self.provenance = provenance
        self.rows_written = 0
        self.subnormal_share = 0.0

    def missing(self, hashes) -> list[str]:
        """Re-read under the lock: another writer may have added rows since we last looked."""
        self.store.refresh()
        return self.store.missing(hashes)

    def append(self, hashes, spatial: np.ndarray, pooled: np.ndarray) -> str:
        """Commit one batch of rows (float32 in, stored as the store dtype)."""
        path, share = self.store.write_rows(hashes, spatial, pooled, self.provenance)
        self.subnormal_share = max(self.subnormal_share, share)
        self.rows_written += len(hashes)
        return path.name

    def note_subnormal(self, share: float) -> None:
        """Count a shard written elsewhere (a Dask worker) towards :meth:`warn_subnormal`."""
        self.subnormal_share = max(self.subnormal_share, share)

    def warn_subnormal(self) -> None:
        if self.subnormal_share > 0.05:
            warnings.warn(
                f"{self.subnormal_share:.0%} of the nonzero feature values are below float16's normal "
                f"range ({FLOAT16_TINY:.1e}) and lose precision; use --store-dtype float32 to keep them",
                stacklevel=2,
            )


def list_stores(cache_dir: str | os.PathLike) -> list[FeatureStore]:
    """Every store under ``cache_dir`` (folders that hold a fingerprint.json)."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    return [FeatureStore.at(p.parent) for p in sorted(root.glob("*/fingerprint.json"))]
