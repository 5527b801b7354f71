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
    unreadable.json         the files that cannot be decoded (hash → reason), so reruns skip them undecoded
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
  saved with it (:mod:`xrayfeat.store.shards`, :mod:`xrayfeat.store.index`). A
  damaged shard or index is refused by every reader with one line naming the
  file and the repair; :meth:`FeatureStore.verify` (``cache verify``) streams
  the whole store and names every damaged file; :meth:`FeatureStore.gc`
  (``cache gc``) replaces a damaged shard by its sound rows and rebuilds a
  damaged index, so re-running ``extract`` recomputes exactly the rows that
  were lost (:mod:`xrayfeat.store.maintenance`).
* A full disk or a read-only folder: the write fails before anything is renamed
  into place, and the error is one :class:`StoreError` line naming the file, the
  reason and the fix; the store is as it was. A read-only store can still be read.

Concurrency: one writer at a time holds ``write.lock`` for a whole extraction
(a second one waits, then finds the rows already there; ``gc`` waits the same
way); readers take a shared ``read.lock``, which compaction and repair take
exclusively only to delete old shards (:mod:`xrayfeat.store.locks`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from xrayfeat import __version__
from xrayfeat.errors import StoreError
from xrayfeat.fileio import atomic_write, fsync_dir
from xrayfeat.provenance import utc_timestamp
from xrayfeat.store import shards
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
from xrayfeat.store.index import StoreIndex, read_index, repair_hint, save_index_if_stale, shard_names
from xrayfeat.store.locks import flock, writing
from xrayfeat.store.maintenance import compact_store, gc_store, verify_store

__all__ = ["FeatureStore"]


class FeatureStore:
    """One fingerprint's features. Open with :meth:`FeatureStore.open`.

    >>> store = FeatureStore.open("data_cache", fingerprint, create=True)   # doctest: +SKIP
    >>> store.missing(dataset.hashes)                                       # doctest: +SKIP
    >>> arrays = store.read(dataset.hashes, ("pooled",))                    # doctest: +SKIP
    """

    #: False: a store that opened (:func:`~xrayfeat.store.catalog.list_stores` lists damaged ones too).
    damaged = False

    def __init__(self, path: Path, fingerprint: dict):
        self.path = Path(path)
        self.fingerprint = dict(fingerprint)
        self.fingerprint_id = fingerprint_id(fingerprint)
        self._index: StoreIndex | None = None
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
        from xrayfeat.store.catalog import check_cache_target

        check_cache_target(cache_dir)  # a file, or a path under one: one line naming it, nothing made
        with writing(Path(cache_dir)):
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

    # ------------------------------------------------------------------ index

    def shard_names(self) -> list[str]:
        return shard_names(self.path)

    def refresh(self) -> None:
        """Forget the in-memory index (another process may have added rows)."""
        self._index = self._lookup = None

    def _ensure_index(self) -> tuple[StoreIndex, dict[bytes, int]]:
        if self._index is None:
            self._index = read_index(self.path, self.fingerprint_id)
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
        """Arrays for ``hashes`` in the given order (float32). Every hash must be present.

        No hashes give arrays of no rows as wide as the store's rows (``(0, C)``
        pooled, ``(0, H, W, C)`` spatial); a store with no rows yet has no width
        to give, so ``(0, 0)`` and ``(0, 0, 0, 0)``.
        """
        hashes = list(hashes)
        if not hashes:
            self.check_parts(parts, f"reading {' and '.join(parts)} features")
            return self._no_rows(parts)
        (chunk,) = list(self.iter_batches(hashes, parts, batch_size=len(hashes)))
        return chunk

    def _no_rows(self, parts) -> dict[str, np.ndarray]:
        with flock(self.path / "read.lock", fcntl.LOCK_SH, required=False):  # no shard is deleted meanwhile
            names = self.shard_names()
            layout = shards.shard_layout(self.path / "shards" / names[0])[:2] if names else (None, None)
        row_shapes = dict(zip(shards.PARTS, layout))
        blank = {"spatial": (0, 0, 0), "pooled": (0,)}
        return {part: np.empty((0, *(row_shapes[part] or blank[part])), dtype=np.float32) for part in parts}

    def iter_batches(self, hashes, parts=("pooled", "spatial"), *, batch_size: int = 1024):
        """Yield dicts of float32 arrays for consecutive slices of ``hashes``.

        Memory stays at one batch, so datasets larger than RAM can be streamed.
        Every row is checked against its digest; a damaged shard or index raises
        :class:`StoreError` naming the file and the repair, and a part the store
        does not keep (``--keep``) a :class:`~xrayfeat.store.fingerprint.KeepError`.
        No hashes yield no batch.
        """
        self.check_parts(parts, f"reading {' and '.join(parts)} features")
        hashes = list(hashes)
        with flock(self.path / "read.lock", fcntl.LOCK_SH, required=False):
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
                for start in range(0, len(hashes), batch_size):
                    chunk = hashes[start : start + batch_size]
                    positions = np.array([lookup[h.encode()] for h in chunk], dtype=np.int64)
                    yield {part: self._gather(readers, index, positions, part) for part in parts}
            finally:
                for reader in readers.values():
                    reader.close()

    def _gather(self, readers, index: StoreIndex, positions: np.ndarray, part: str) -> np.ndarray:
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
        return result

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writer(self, provenance: dict | None = None, *, on_wait=None):
        """Exclusive writing session: ``append`` commits shards; compaction and index on exit.

        ``on_wait`` is called once if another process holds the store.
        """
        with flock(self.path / "write.lock", fcntl.LOCK_EX, on_wait=on_wait):
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
        with writing(target):
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
            "created": utc_timestamp(),
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
                             f"{repair_hint(self.path)} and re-run")
        target = self.path / "shards" / staged.name
        with writing(target):
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
        with writing(self.path):
            self.refresh()
            save_index_if_stale(self.path, self.fingerprint_id)

    def compact(self) -> int:
        """Merge small shards (:func:`~xrayfeat.store.maintenance.compact_store`); the caller holds the write lock."""
        return compact_store(self)

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
        """One line per damaged file, each naming the repair; empty when sound (:func:`~xrayfeat.store.maintenance.verify_store`)."""
        return verify_store(self)

    def gc(self, *, min_age_s: float = 0.0, on_wait=None) -> dict:
        """Repair and tidy the store under its write lock (:func:`~xrayfeat.store.maintenance.gc_store`)."""
        return gc_store(self, min_age_s=min_age_s, on_wait=on_wait)


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
