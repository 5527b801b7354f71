"""Keeping a store sound and small: verify, repair, gc and compaction, as functions of an open store.

:class:`~xrayfeat.store.feature_store.FeatureStore` keeps the public methods
(``store.verify()``, ``store.gc()``, ``store.compact()``); they call these.

* :func:`verify_store` (``cache verify``) streams every shard and the index and
  names every damaged file, one line each with the repair.
* :func:`gc_store` (``cache gc``) removes what killed writers left, replaces a
  damaged shard by its sound rows and rebuilds a damaged index (so re-running
  ``extract`` recomputes exactly the rows that were lost), drops rows stored
  twice and compacts small shards.
* :func:`compact_store` merges small shards into shards of about
  :data:`COMPACT_BYTES`; a writing session compacts when it ends.

Shards are never modified: compaction and repair write a new shard and only
then delete the ones it replaces, under an exclusive ``read.lock`` so that no
reader is inside one (a reader tolerates the brief duplicates: the first shard wins).
"""

from __future__ import annotations

import contextlib
import fcntl
import time

import numpy as np

from xrayfeat.fileio import TEMP_GLOB
from xrayfeat.store import shards
from xrayfeat.store.index import StoreIndex, check_index, read_index, save_index_if_stale, shard_names, write_index
from xrayfeat.store.locks import flock, writing

__all__ = ["COMPACT_BYTES", "compact_store", "verify_store", "gc_store"]

#: Compaction merges small shards into shards of about this many bytes.
COMPACT_BYTES = 256 << 20
#: What a killed writer leaves in the store folder: fileio's temporaries, and those of versions before it.
_TEMP_GLOBS = (TEMP_GLOB, ".fingerprint.*.tmp", ".index.*.tmp.npz")


def compact_store(store) -> int:
    """Merge small shards into shards of about :data:`COMPACT_BYTES`; returns how many were merged.

    Streams rows shard by shard, so memory stays at one small shard whatever
    the store's size; rows are checked on the way. The caller holds the write lock.
    """
    with writing(store.path):
        index = read_index(store.path, store.fingerprint_id)
        groups, group, group_bytes = [], [], 0
        for name in index.shards:
            nbytes = shards.storage_bytes(store.path / "shards" / name)
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
            _merge(store, names, index)
            merged += len(names)
        store.refresh()
        save_index_if_stale(store.path, store.fingerprint_id)
    return merged


def _merge(store, names: list[str], index: StoreIndex) -> None:
    """Copy the rows the index points to in ``names`` into one new shard, then delete ``names``."""
    numbers = {n: i for i, n in enumerate(index.shards)}
    plan = [(name, np.sort(index.row_of[index.shard_of == numbers[name]])) for name in names]
    _copy_rows(store, plan, {"compacted_from": len(names)})
    _delete(store, names)


def _copy_rows(store, plan: list[tuple[str, np.ndarray]], note: dict) -> None:
    """Write the given rows (increasing) of the given shards into one new shard, checking each row."""
    total = sum(len(rows) for _, rows in plan)
    spatial_shape, pooled_shape, dtype, attrs = shards.shard_layout(store.path / "shards" / plan[0][0])
    with shards.write_shard(store.path / "shards", total, spatial_shape, pooled_shape, dtype,
                            {**attrs, **note}) as shard:
        for name, rows in plan:
            for block in shards.iter_rows(store.path / "shards" / name, rows):
                shard.write(*block)


def _delete(store, names: list[str]) -> None:
    """Delete shards once no reader is inside one."""
    with flock(store.path / "read.lock", fcntl.LOCK_EX):
        for name in names:
            (store.path / "shards" / name).unlink()


def verify_store(store) -> list[str]:
    """Check every shard (every byte, every row's digests, its fingerprint) and the index; one line per damaged file.

    Streams each shard a block of rows at a time (:data:`xrayfeat.store.shards.BLOCK_BYTES`)
    and the index file in chunks, so memory does not grow with the store.
    Leftovers of killed runs (temporary files, rows stored twice by an
    interrupted compaction) read correctly and are not problems; ``gc``
    reclaims them.
    """
    problems = []
    with flock(store.path / "read.lock", fcntl.LOCK_SH, required=False):
        shapes = set()
        for name in shard_names(store.path):
            check = shards.check_shard(store.path / "shards" / name, store.fingerprint_id, store.parts)
            problems.extend(check.problems)
            if check.shapes is not None:
                shapes.add(check.shapes)
        if len(shapes) > 1:
            problems.append(f"{store.path}: shards disagree on feature shapes {sorted(map(str, shapes))}; "
                            f"delete the store and re-run extract")
        problems.extend(check_index(store.path))
    return problems


def gc_store(store, *, min_age_s: float = 0.0, on_wait=None) -> dict:
    """Repair and tidy the store (takes the write lock; ``on_wait`` is called once if it must wait).

    In order: remove temporary files left by killed writers (``min_age_s``
    spares younger ones) and what workers left in the staging folder; replace
    each damaged shard by a shard of its sound rows and rebuild a damaged index
    (:func:`_repair`), so that ``extract`` recomputes exactly the rows lost;
    drop rows stored twice; compact small shards. Temporary files are those of
    :func:`xrayfeat.fileio.atomic_path` (``.<name>.<random>.tmp[suffix]``) and
    of older versions (``.fingerprint.*.tmp``, ``.index.*.tmp.npz``, ``shards/.tmp-*``).
    """
    with writing(store.path):
        with flock(store.path / "write.lock", fcntl.LOCK_EX, on_wait=on_wait):
            removed = _remove_temps(store, min_age_s) + store.clear_staging(min_age_s)
            repaired = _repair(store)
            duplicates = _drop_duplicates(store, read_index(store.path, store.fingerprint_id))
            merged = compact_store(store)
    return {"store": str(store.path), "removed_temp_files": removed, **repaired, "merged_shards": merged,
            "dropped_duplicates": duplicates}


def _remove_temps(store, min_age_s: float) -> list[str]:
    removed = []
    now = time.time()
    temps = set()
    for pattern in _TEMP_GLOBS:
        temps.update(store.path.glob(pattern))
    for pattern in shards.TEMP_GLOBS:
        temps.update((store.path / "shards").glob(pattern))
    for tmp in sorted(temps):
        with contextlib.suppress(FileNotFoundError):  # renamed into place meanwhile
            if now - tmp.stat().st_mtime >= min_age_s:
                tmp.unlink()
                removed.append(tmp.name)
    return removed


def _repair(store) -> dict:
    """Replace each damaged shard by one holding its sound rows; rebuild the index if it is damaged.

    Returns ``damaged_shards`` (names), ``kept_rows`` (sound rows copied out of
    them), ``lost_rows`` (rows they held that failed their checks; the rows of
    a shard HDF5 cannot open at all are not counted) and ``rebuilt_index``.
    """
    rebuilt = bool(check_index(store.path))
    damaged, kept, lost = [], 0, 0
    for name in shard_names(store.path):
        check = shards.check_shard(store.path / "shards" / name, store.fingerprint_id, store.parts)
        if not check.problems:
            continue
        sound = np.nonzero(check.sound)[0]
        if len(sound):
            _copy_rows(store, [(name, sound)], {"repaired_from": name})
        _delete(store, [name])
        damaged.append(name)
        kept += len(sound)
        lost += check.rows - len(sound)
    if damaged or rebuilt:
        store.refresh()
        write_index(store.path, read_index(store.path, store.fingerprint_id, repair=True))
    return {"damaged_shards": damaged, "kept_rows": kept, "lost_rows": lost, "rebuilt_index": rebuilt}


def _drop_duplicates(store, index: StoreIndex) -> int:
    """Rewrite any shard holding rows the index does not point to (left by an interrupted merge)."""
    dropped = 0
    for number, name in enumerate(index.shards):
        stored = shards.stored_rows(store.path / "shards" / name)
        referenced = int(np.count_nonzero(index.shard_of == number))
        if referenced == stored:
            continue
        dropped += stored - referenced
        if referenced:
            _merge(store, [name], index)
        else:
            _delete(store, [name])
    if dropped:
        store.refresh()
        write_index(store.path, read_index(store.path, store.fingerprint_id))
    return dropped
