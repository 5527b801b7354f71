"""A store's index: hash → (shard, row), a cache of what the shards say, sealed by a digest.

``index.npz`` is derived data. Whenever it lists other shards than the folder
holds it is brought up to date from the shards (:func:`read_index`), reusing
what it says about shards that are still there, so a run killed at any moment
leaves a store that reads correctly. It is replaced atomically
(:func:`xrayfeat.fileio.atomic_write`) and sealed: the SHA-256 of its bytes is
written as the zip archive's comment (:func:`seal`), and every byte is checked
(:func:`intact`) before numpy parses any of it. A damaged index is refused
with one line naming the file and the repair (``cache gc`` rebuilds it).

Rows stored twice (a compaction interrupted before it deleted its inputs) are
indexed once: the first shard wins.
"""

from __future__ import annotations

import io
import os
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrayfeat.errors import StoreError
from xrayfeat.fileio import atomic_write
from xrayfeat.store import shards

__all__ = [
    "StoreIndex", "seal", "intact", "repair_hint", "shard_names", "load_index", "check_index", "build_index",
    "write_index", "read_index", "save_index_if_stale",
]

_FILE = "index.npz"


@dataclass
class StoreIndex:
    """hash → (shard number, row), plus the shard names it was built from."""

    shards: list[str]
    hashes: np.ndarray  # (n,) S64
    shard_of: np.ndarray  # (n,) int32
    row_of: np.ndarray  # (n,) int32

    def lookup(self) -> dict[bytes, int]:
        return {h: i for i, h in enumerate(self.hashes.tolist())}


def seal(npz: bytes) -> bytes:
    """The .npz with the SHA-256 of all its bytes before the archive comment written as that comment.

    A zip archive ends with its end record, whose last field is the length of
    the archive comment that follows it; numpy writes no comment, so the bytes
    end with that zero length. The result is still an archive numpy reads.
    """
    body = npz[:-2]
    digest = hashlib.sha256(body).hexdigest().encode()
    return body + len(digest).to_bytes(2, "little") + digest


def intact(fh, size: int) -> bool:
    """Whether every byte of a sealed file (``size`` bytes, read from ``fh``) is as :func:`seal` wrote it.

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


def repair_hint(folder: Path) -> str:
    """The repair of a damaged store file: ``cache gc`` over the store's cache folder."""
    return f"run `xrayfeat cache gc --cache-dir {Path(folder).parent}`"


def shard_names(folder: Path) -> list[str]:
    """The store's shards, by name (temporary files of killed writers left out)."""
    return sorted(p.name for p in (Path(folder) / "shards").glob("*.h5") if not p.name.startswith("."))


def _damaged(folder: Path) -> StoreError:
    return StoreError(f"{Path(folder) / _FILE}: does not match its checksum; the index is damaged: "
                      f"{repair_hint(folder)} (it rebuilds the index from the shards)")


def load_index(folder: Path) -> StoreIndex | None:
    """The saved index, None if there is none; :class:`StoreError` if it is damaged.

    Every byte is checked (:func:`intact`) before numpy parses any of it.
    """
    try:
        data = (Path(folder) / _FILE).read_bytes()
    except FileNotFoundError:
        return None
    if not intact(io.BytesIO(data), len(data)):
        raise _damaged(folder)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return StoreIndex(list(npz["shards"].astype(str)), npz["hashes"], npz["shard_of"], npz["row_of"])


def check_index(folder: Path) -> list[str]:
    """The damaged-index line, if the saved index is damaged; streams it."""
    try:
        with open(Path(folder) / _FILE, "rb") as fh:
            return [] if intact(fh, os.fstat(fh.fileno()).st_size) else [str(_damaged(folder))]
    except FileNotFoundError:
        return []


def build_index(folder: Path, fingerprint_id: str, names: list[str], cached: StoreIndex | None) -> StoreIndex:
    """The index of the shards ``names``, reading the key column of each shard ``cached`` does not describe."""
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
            h = shards.read_hashes(Path(folder) / "shards" / name, fingerprint_id)
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
    return StoreIndex(names, all_h, all_s, all_r)


def write_index(folder: Path, index: StoreIndex) -> None:
    """Replace ``index.npz`` (sealed) by ``index``."""
    buffer = io.BytesIO()
    np.savez(buffer, shards=np.array(index.shards, dtype="U"), hashes=index.hashes,
             shard_of=index.shard_of, row_of=index.row_of)
    atomic_write(Path(folder) / _FILE, seal(buffer.getvalue()))


def read_index(folder: Path, fingerprint_id: str, *, repair: bool = False) -> StoreIndex:
    """The index, brought up to date from the shards when it lists others; ``repair`` ignores a damaged one."""
    names = shard_names(folder)
    try:
        saved = load_index(folder)
    except StoreError:
        if not repair:
            raise
        saved = None
    if saved is not None and saved.shards == names:
        return saved
    return build_index(folder, fingerprint_id, names, saved)


def save_index_if_stale(folder: Path, fingerprint_id: str) -> None:
    """Save the index unless the saved one already lists the shards there are (a read-only store stays untouched)."""
    names = shard_names(folder)
    saved = load_index(folder)  # read and checked once
    if saved is None or saved.shards != names:
        write_index(folder, build_index(folder, fingerprint_id, names, saved))
