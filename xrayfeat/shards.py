"""One shard file of the feature store: writing it, checksumming it, reading it.

A shard is an immutable HDF5 file ``shards/<time_ns>-<random>.h5`` with three
datasets of equal length, ``sha256`` (n,) S64, ``spatial`` (n, H, W, C) and
``pooled`` (n, C), and attributes that carry the fingerprint id, the provenance,
the row count and ``content_sha256``, a checksum of the data (:class:`ShardDigest`).

:func:`write_shard` writes one through :func:`xrayfeat.fileio.atomic_path`: the
file is filled under a temporary name, checksummed, fsync-ed and renamed into
place, so a reader sees a whole shard or none. A writer killed on the way
leaves a ``.<name>.<random>.tmp`` file (``.tmp-<name>`` before xrayfeat used fileio);
:data:`TEMP_GLOBS` is how ``cache gc`` finds both.

h5py is imported only when a shard is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from .errors import StoreError
from .fileio import TEMP_GLOB, atomic_path

__all__ = [
    "COPY_ROWS", "TEMP_GLOBS", "ShardDigest", "ShardWriter", "ShardCheck",
    "write_shard", "read_hashes", "read_attrs", "stored_rows", "storage_bytes",
    "shard_layout", "iter_rows", "check_shard",
]

#: Rows read at once when streaming a shard (compaction, verify).
COPY_ROWS = 256
#: What a killed shard writer leaves in ``shards/``: fileio's temporary, and the older ``.tmp-<name>``.
TEMP_GLOBS = (TEMP_GLOB, ".tmp-*")
_DATASETS = ("sha256", "spatial", "pooled")


class ShardDigest:
    """Checksum of a shard's data, fed row block by row block (so shards can be streamed).

    Hashes, spatial maps and pooled vectors are digested separately and combined,
    so the result only depends on the rows and their order, not on block sizes.
    """

    def __init__(self):
        self._parts = [hashlib.sha256() for _ in range(3)]

    def update(self, hashes: np.ndarray, spatial: np.ndarray, pooled: np.ndarray) -> None:
        for digest, array in zip(self._parts, (hashes, spatial, pooled)):
            digest.update(np.ascontiguousarray(array).tobytes())

    def hexdigest(self) -> str:
        return hashlib.sha256("".join(d.hexdigest() for d in self._parts).encode()).hexdigest()


# ---------------------------------------------------------------------- writing


class ShardWriter:
    """Fills one shard file opened by :func:`write_shard`; ``write`` appends rows in order."""

    def __init__(self, path: Path, name: str, rows: int, spatial_shape, pooled_shape, dtype, attrs: dict):
        import h5py

        self.name = name  # the final name, under which the shard appears once complete
        self.path = path  # the temporary file being filled
        self.rows = rows
        self.filled = 0
        self.digest = ShardDigest()
        self.file = h5py.File(path, "w")
        self.file.create_dataset("sha256", (rows,), dtype="S64")
        self.file.create_dataset("spatial", (rows, *spatial_shape), dtype=dtype, chunks=(1, *spatial_shape))
        self.file.create_dataset("pooled", (rows, *pooled_shape), dtype=dtype)
        for key, value in attrs.items():
            self.file.attrs[key] = value

    def write(self, hashes: np.ndarray, spatial: np.ndarray, pooled: np.ndarray) -> None:
        end = self.filled + len(hashes)
        self.file["sha256"][self.filled : end] = hashes
        self.file["spatial"][self.filled : end] = spatial
        self.file["pooled"][self.filled : end] = pooled
        self.digest.update(np.asarray(hashes, "S64"), spatial, pooled)
        self.filled = end

    def _finish(self) -> None:
        if self.filled != self.rows:
            raise StoreError(f"{self.path}: shard got {self.filled} rows, expected {self.rows}")
        self.file.attrs["content_sha256"] = self.digest.hexdigest()
        self.file.attrs["rows"] = self.rows


@contextlib.contextmanager
def write_shard(folder: Path, rows: int, spatial_shape, pooled_shape, dtype, attrs: dict) -> Iterator[ShardWriter]:
    """Write one shard of exactly ``rows`` rows into ``folder``; it appears under ``writer.name`` at the end.

    On a clean exit the checksum and row count are stored and the file is
    fsync-ed and renamed into place; on an exception, or if fewer or more rows
    were written (:class:`StoreError`), nothing is left behind.
    """
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.h5"
    with atomic_path(Path(folder) / name) as tmp:
        shard = ShardWriter(tmp, name, rows, spatial_shape, pooled_shape, dtype, attrs)
        try:
            yield shard
            shard._finish()
        finally:
            shard.file.close()


# ---------------------------------------------------------------------- reading


def read_hashes(path: Path) -> np.ndarray:
    """The ``sha256`` column of a shard, in row order."""
    import h5py

    with h5py.File(path, "r") as f:
        return f["sha256"][:]


def read_attrs(path: Path) -> dict:
    """A shard's HDF5 attributes as plain Python values."""
    import h5py

    with h5py.File(path, "r") as f:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}


def stored_rows(path: Path) -> int:
    """The row count a shard says it holds."""
    import h5py

    with h5py.File(path, "r") as f:
        return int(f.attrs.get("rows", len(f["sha256"])))


def storage_bytes(path: Path) -> int:
    """Bytes a shard's datasets take on disk (what compaction sizes shards by)."""
    import h5py

    with h5py.File(path, "r") as f:
        return sum(f[k].id.get_storage_size() for k in _DATASETS)


def shard_layout(path: Path) -> tuple[tuple, tuple, np.dtype, dict]:
    """(spatial shape, pooled shape, dtype, attributes) of a shard, to write another one like it.

    The attributes leave out ``content_sha256`` and ``rows``, which belong to this shard's data.
    """
    import h5py

    with h5py.File(path, "r") as f:
        attrs = {k: v for k, v in f.attrs.items() if k not in ("content_sha256", "rows")}
        return f["spatial"].shape[1:], f["pooled"].shape[1:], f["spatial"].dtype, attrs


def iter_rows(path: Path, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (hashes, spatial, pooled) for ``rows`` (increasing, unique) in blocks of :data:`COPY_ROWS`."""
    import h5py

    with h5py.File(path, "r") as f:
        for start in range(0, len(rows), COPY_ROWS):
            sel = rows[start : start + COPY_ROWS]
            yield f["sha256"][sel], f["spatial"][sel], f["pooled"][sel]


class ShardCheck(NamedTuple):
    """What :func:`check_shard` found: problems, ``(spatial shape, pooled shape, dtype)`` and rows.

    ``shapes`` is None and ``rows`` 0 when the shard's row counts disagree or it cannot be read.
    """

    problems: list[str]
    shapes: tuple | None
    rows: int


def check_shard(path: Path, fingerprint_id: str) -> ShardCheck:
    """Check one shard's row counts, checksum and fingerprint, streaming its data."""
    import h5py

    problems: list[str] = []
    try:
        with h5py.File(path, "r") as f:
            h, s, p = (f[k] for k in _DATASETS)
            if not (len(h) == len(s) == len(p) == int(f.attrs.get("rows", -1))):
                return ShardCheck([f"{path}: datasets have different row counts"], None, 0)
            digest = ShardDigest()
            for start in range(0, len(h), COPY_ROWS):
                end = start + COPY_ROWS
                digest.update(h[start:end], s[start:end], p[start:end])
            if f.attrs.get("fingerprint_id") != fingerprint_id:
                problems.append(f"{path}: belongs to fingerprint {f.attrs.get('fingerprint_id')}, not {fingerprint_id}")
            if f.attrs.get("content_sha256") != digest.hexdigest():
                problems.append(f"{path}: checksum mismatch (data damaged)")
            return ShardCheck(problems, (s.shape[1:], p.shape[1:], str(s.dtype)), len(h))
    except (OSError, KeyError) as exc:
        problems.append(f"{path}: unreadable ({str(exc).splitlines()[0]})")
        return ShardCheck(problems, None, 0)
