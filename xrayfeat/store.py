"""The content-addressed HDF5 feature store.

A frozen backbone is a pure function of (pixels, backbone, weights, preprocessing,
input size, cut layer, precision). One store holds the outputs of one such
function — its *fingerprint* (:mod:`xrayfeat.fingerprint`) — keyed by the SHA-256
of each image file's bytes, so an image is computed once whatever folder or
experiment it appears in.

Layout of one store (``<cache-dir>/<backbone>-<layer>-<size>-<precision>-<id>/``)::

    fingerprint.json        the fields that define every value in the store
    shards/<name>.h5        immutable HDF5 files: sha256 (n,), spatial (n,H,W,C), pooled (n,C)
    shards/.<name>.*.tmp    a shard being written; never read; removed by ``gc``
    index.npz               hash → (shard, row), a cache of what the shards say
    write.lock, read.lock   fcntl locks

Crash safety: a shard is written completely under a temporary name, flushed,
fsync-ed and renamed into place (:mod:`xrayfeat.shards`, through
:func:`xrayfeat.fileio.atomic_path`), so a reader sees a whole shard or none;
``fingerprint.json`` and ``index.npz`` are replaced the same way. Shards
are never modified; compaction writes a new shard and only then deletes the
ones it replaces (a reader tolerates the brief duplicates). The index is
derived data: whenever it disagrees with the shard list it is rebuilt from the
shards, so a run killed at any moment leaves a store that reads correctly and
lacks at most the batch in flight.

Concurrency: one writer at a time holds ``write.lock`` for a whole extraction
(a second one waits, then finds the rows already there); readers take a shared
``read.lock``, which compaction takes exclusively only to delete old shards.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, shards
from .errors import StoreError
from .fileio import TEMP_GLOB, atomic_path, atomic_write
from .fingerprint import FINGERPRINT_FIELDS, FLOAT16_TINY, check_storable, fingerprint_id, store_dirname

__all__ = ["FeatureStore", "list_stores", "COMPACT_BYTES"]

#: Compaction merges small shards into shards of about this many bytes.
COMPACT_BYTES = 256 << 20
#: What a killed writer leaves in the store folder: fileio's temporaries, and those of versions before it.
_TEMP_GLOBS = (TEMP_GLOB, ".fingerprint.*.tmp", ".index.*.tmp.npz")


@contextlib.contextmanager
def _flock(path: Path, mode: int, *, on_wait=None):
    """Hold an fcntl lock on ``path``; call ``on_wait()`` once if we have to wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
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

        Without ``create``, a missing store raises :class:`StoreError`.
        """
        path = Path(cache_dir) / store_dirname(fingerprint)
        meta = path / "fingerprint.json"
        if meta.is_file():
            stored = json.loads(meta.read_text())
            if fingerprint_id(stored) != fingerprint_id(fingerprint):
                raise StoreError(f"{meta}: fingerprint does not match its folder name; the store is damaged")
            return cls(path, stored)
        if not create:
            raise StoreError(f"no feature store for this fingerprint in {cache_dir} (looked for {path.name})")
        (path / "shards").mkdir(parents=True, exist_ok=True)
        atomic_write(meta, json.dumps({k: fingerprint[k] for k in FINGERPRINT_FIELDS}, indent=1, sort_keys=True))
        return cls(path, fingerprint)

    @classmethod
    def at(cls, path: str | os.PathLike) -> FeatureStore:
        """Open an existing store by its folder (for ``cache ls/verify/gc``)."""
        path = Path(path)
        meta = path / "fingerprint.json"
        if not meta.is_file():
            raise StoreError(f"{path}: not a feature store (no fingerprint.json)")
        return cls(path, json.loads(meta.read_text()))

    def provenance(self) -> dict:
        """The HDF5 attributes of the oldest shard (empty for an empty store)."""
        names = self.shard_names()
        if not names:
            return {}
        return shards.read_attrs(self.path / "shards" / names[0])

    @property
    def random_weights(self) -> bool:
        return str(self.fingerprint.get("weights", "")).startswith("none")

    # ------------------------------------------------------------------ index

    def shard_names(self) -> list[str]:
        return sorted(p.name for p in (self.path / "shards").glob("*.h5") if not p.name.startswith("."))

    def _read_index(self) -> _Index:
        """The index, rebuilt from the shards when it no longer matches them."""
        names = self.shard_names()
        index_path = self.path / "index.npz"
        cached = None
        if index_path.is_file():
            try:
                with np.load(index_path, allow_pickle=False) as npz:
                    cached = _Index(list(npz["shards"].astype(str)), npz["hashes"], npz["shard_of"], npz["row_of"])
            except (OSError, ValueError, KeyError):
                cached = None
        if cached is not None and cached.shards == names:
            return cached
        return self._build_index(names, cached)

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
                try:
                    h = shards.read_hashes(self.path / "shards" / name)
                except (OSError, KeyError) as exc:
                    raise StoreError(f"{self.path / 'shards' / name}: unreadable shard ({exc}); run `xrayfeat cache verify`") from None
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
        with atomic_path(self.path / "index.npz", suffix=".npz") as tmp:
            np.savez(tmp, shards=np.array(index.shards, dtype="U"), hashes=index.hashes,
                     shard_of=index.shard_of, row_of=index.row_of)

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
        """
        import h5py

        hashes = list(hashes)
        index, lookup = self._ensure_index()
        absent = [h for h in hashes if h.encode() not in lookup]
        if absent:
            raise StoreError(
                f"{len(absent)} of {len(hashes)} images have no features in {self.path} "
                f"(e.g. {absent[0][:12]}); run `xrayfeat extract` with the same feature options first"
            )
        with _flock(self.path / "read.lock", fcntl.LOCK_SH):
            files: dict[int, h5py.File] = {}
            try:
                for start in range(0, max(len(hashes), 1), batch_size):
                    chunk = hashes[start : start + batch_size]
                    positions = np.array([lookup[h.encode()] for h in chunk], dtype=np.int64)
                    out = {}
                    for part in parts:
                        out[part] = self._gather(files, index, positions, part)
                    yield out
            finally:
                for f in files.values():
                    f.close()

    def _gather(self, files, index: _Index, positions: np.ndarray, part: str) -> np.ndarray:
        import h5py

        shard_of = index.shard_of[positions]
        row_of = index.row_of[positions]
        result = None
        for number in np.unique(shard_of):
            if number not in files:
                files[number] = h5py.File(self.path / "shards" / index.shards[number], "r")
            dataset = files[number][part]
            if result is None:
                result = np.empty((len(positions), *dataset.shape[1:]), dtype=np.float32)
            where = np.nonzero(shard_of == number)[0]
            rows = row_of[where]
            order = np.argsort(rows)
            unique_rows, inverse = np.unique(rows[order], return_inverse=True)
            block = dataset[unique_rows]  # h5py wants increasing, unique indices
            result[where[order]] = block[inverse]
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

    def _commit(self, hashes: np.ndarray, spatial: np.ndarray, pooled: np.ndarray, attrs: dict) -> str:
        """Write one immutable shard in one go. Returns its name."""
        with shards.write_shard(self.path / "shards", len(hashes), spatial.shape[1:], pooled.shape[1:],
                                spatial.dtype, attrs) as shard:
            shard.write(hashes, spatial, pooled)
        return shard.name

    def compact(self) -> int:
        """Merge small shards into shards of about :data:`COMPACT_BYTES`; returns how many were merged.

        Streams rows shard by shard, so memory stays at one small shard whatever
        the store's size. The caller holds the write lock.
        """
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
        self._save_index(self._read_index())
        return merged

    def _merge(self, names: list[str], index: _Index) -> None:
        """Copy the rows the index points to in ``names`` into one new shard, then delete ``names``."""
        numbers = {n: i for i, n in enumerate(index.shards)}
        plan = []  # (name, rows to keep in increasing order)
        for name in names:
            rows = np.sort(index.row_of[index.shard_of == numbers[name]])
            plan.append((name, rows))
        total = sum(len(rows) for _, rows in plan)
        spatial_shape, pooled_shape, dtype, attrs = shards.shard_layout(self.path / "shards" / names[0])
        attrs["compacted_from"] = len(names)
        with shards.write_shard(self.path / "shards", total, spatial_shape, pooled_shape, dtype, attrs) as shard:
            for name, rows in plan:
                for block in shards.iter_rows(self.path / "shards" / name, rows):
                    shard.write(*block)
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
        """Check every shard's checksum, shapes and fingerprint, and the index; return the problems."""
        problems = []
        shapes = set()
        rows_total = 0
        for name in self.shard_names():
            check = shards.check_shard(self.path / "shards" / name, self.fingerprint_id)
            problems.extend(check.problems)
            if check.shapes is not None:
                shapes.add(check.shapes)
            rows_total += check.rows
        if len(shapes) > 1:
            problems.append(f"{self.path}: shards disagree on feature shapes {sorted(map(str, shapes))}")
        if not problems:
            rebuilt = self._build_index(self.shard_names(), None)
            saved = self._read_index()
            if saved.shards == rebuilt.shards and not (
                np.array_equal(saved.hashes, rebuilt.hashes)
                and np.array_equal(saved.shard_of, rebuilt.shard_of)
                and np.array_equal(saved.row_of, rebuilt.row_of)
            ):
                problems.append(f"{self.path / 'index.npz'}: index disagrees with the shards; run `xrayfeat cache gc`")
            duplicates = rows_total - len(rebuilt.hashes)
            if duplicates:
                problems.append(f"{self.path}: {duplicates} rows stored twice (interrupted compaction); run `xrayfeat cache gc`")
        return problems

    def gc(self, *, min_age_s: float = 0.0) -> dict:
        """Remove temporary files left by killed writers and compact shards (takes the write lock).

        Temporary files are those of :func:`xrayfeat.fileio.atomic_path`
        (``.<name>.<random>.tmp[suffix]``) and of older versions
        (``.fingerprint.*.tmp``, ``.index.*.tmp.npz``, ``shards/.tmp-*``);
        ``min_age_s`` spares younger ones.
        """
        removed = []
        with _flock(self.path / "write.lock", fcntl.LOCK_EX):
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
            duplicates = self._drop_duplicates(self._read_index())
            merged = self.compact()
        return {"store": str(self.path), "removed_temp_files": removed, "merged_shards": merged, "dropped_duplicates": duplicates}

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
                with _flock(self.path / "read.lock", fcntl.LOCK_EX):
                    (self.path / "shards" / name).unlink()
        if dropped:
            self.refresh()
            self._save_index(self._read_index())
        return dropped


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
        dtype = self.store.fingerprint["store_dtype"]
        share = max(check_storable(spatial, dtype), check_storable(pooled, dtype))
        self.subnormal_share = max(self.subnormal_share, share)
        hashes = np.asarray(hashes, dtype="S64")
        attrs = {
            "fingerprint_id": self.store.fingerprint_id,
            "fingerprint": json.dumps(self.store.fingerprint, sort_keys=True),
            "xrayfeat_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "random_weights": bool(self.store.random_weights),
            **{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in self.provenance.items()},
        }
        if self.store.random_weights:
            attrs["WARNING"] = "RANDOM WEIGHTS: these features were computed without ImageNet weights"
        name = self.store._commit(hashes, spatial.astype(dtype), pooled.astype(dtype), attrs)
        self.rows_written += len(hashes)
        return name

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
