"""One shard file of the feature store: writing it, reading it with every row checked, checking it whole.

A shard is an immutable HDF5 file ``shards/<time_ns>-<random>.h5`` holding, for
``n`` rows:

* ``sha256`` (n,) S64 — the key of each row (the image file's SHA-256, hex);
* ``spatial`` (n, H, W, C) and ``pooled`` (n, C) — the features, each only
  when the store keeps it (``--keep``: a pooled-only store's shards hold no
  ``spatial``, a spatial-only store's no ``pooled``; :func:`parts_of`);
* ``spatial_digest`` and ``pooled_digest`` (n, 32) uint8 — for each row and
  part held, the SHA-256 of the row's key followed by the row's bytes
  (:func:`row_digests`);

the attributes ``fingerprint_id``, the provenance, ``rows``, ``format``
(:data:`FORMAT`) and ``keys_sha256``, the SHA-256 of the whole key column; and,
in the HDF5 user block before the data (:data:`USERBLOCK` bytes HDF5 leaves to
its users), the SHA-256 of every other byte of the file.

Integrity, the promise being "a shard reads right or is refused":

* every row a reader gets has been checked against its digest, which ties the
  values to the key they were stored for (:class:`ShardReader`), so damage to
  the data, to the digests, or an index that points at the wrong row is found
  by reading the row; compaction copies rows only through the same check;
* the key column is checked against ``keys_sha256`` whenever it is read whole
  (:func:`read_hashes`, which is how the store's index is built);
* the HDF5 structure and attributes are checksummed by HDF5 itself (files are
  written with ``libver="v110"``, whose metadata blocks carry checksums), and a
  truncated file fails HDF5's end-of-file check when it is opened;
* the file digest covers every byte, unused ones included, so :func:`sealed`
  finds any change to the file; readers do not pay for it (it reads the whole
  file), :func:`check_shard` does;
* :func:`check_shard` streams a whole shard through all of the above and says
  which rows are sound, for ``cache verify`` and the repair in ``cache gc``.

A failed check raises :class:`~xrayfeat.errors.StoreError` with one line naming
the file, what is wrong and the repair (:func:`damaged`). Shards written before
row digests existed (no ``format`` attribute) are refused the same way: they
cannot be checked, and ``cache gc`` removes them so ``extract`` recomputes their rows.

:func:`write_shard` writes a shard through :func:`xrayfeat.fileio.atomic_path`:
the file is filled under a temporary name, flushed (so a full disk fails here),
closed, sealed with its digest, fsync-ed and renamed into place, so a reader sees a whole shard or none. A
writer killed on the way leaves a ``.<name>.<random>.tmp`` file (``.tmp-<name>``
before xrayfeat used fileio); :data:`TEMP_GLOBS` is how ``cache gc`` finds both.
A write that fails (a full disk) closes the HDF5 file at once without writing
to the disk again (:func:`_discard`), so no h5py object is left to fail once
more, print "Exception ignored" or crash the process as it is freed.

h5py is imported only when a shard is opened.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import time
import uuid
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from xrayfeat.errors import StoreError, first_line
from xrayfeat.fileio import TEMP_GLOB, atomic_path

__all__ = [
    "BLOCK_BYTES", "FORMAT", "PARTS", "TEMP_GLOBS", "USERBLOCK", "ShardWriter", "ShardReader", "ShardCheck",
    "write_shard", "row_digests", "damaged", "sealed", "read_hashes", "read_attrs", "stored_rows", "parts_of",
    "storage_bytes", "shard_layout", "iter_rows", "check_shard",
]

#: Bytes of feature rows read at once when streaming a shard (compaction, verify): memory stays near this.
BLOCK_BYTES = 16 << 20
#: The shard layout written by this version: row digests and ``keys_sha256`` (a shard may hold one part or both).
FORMAT = 2
#: The feature parts a row may have, each with its digest column ``<part>_digest``.
PARTS = ("spatial", "pooled")
#: What a killed shard writer leaves in ``shards/``: fileio's temporary, and the older ``.tmp-<name>``.
TEMP_GLOBS = (TEMP_GLOB, ".tmp-*")
#: Bytes before the HDF5 data (HDF5's "user block"), where the file's own digest is written.
USERBLOCK = 512
_SEAL = b"xrayfeat shard sha256 "  # then the file digest, 64 hex digits; the rest of the user block is zeros
_SEALED = len(_SEAL) + 64
# what h5py raises for a file it cannot make sense of
_HDF5_ERRORS = (OSError, KeyError, ValueError, RuntimeError)


def row_digests(keys: np.ndarray, block: np.ndarray) -> np.ndarray:
    """(n, 32) uint8: SHA-256 of each row's key (S64) followed by the row's bytes."""
    keys = np.asarray(keys, dtype="S64").tolist()
    block = np.ascontiguousarray(block)
    rows = block.reshape(len(keys), int(np.prod(block.shape[1:]))).view(np.uint8)
    sha256 = hashlib.sha256
    digests = b"".join(sha256(key + row.tobytes()).digest() for key, row in zip(keys, rows))
    return np.frombuffer(digests, dtype=np.uint8).reshape(len(keys), 32)


def damaged(path: Path, reason: str) -> StoreError:
    """The one-line error for a shard that fails a check: the file, the reason, the repair."""
    cache_dir = Path(path).parent.parent.parent
    return StoreError(
        f"{path}: {reason}; the shard is damaged: run `xrayfeat cache gc --cache-dir {cache_dir}` "
        f"(it keeps the sound rows), then re-run `xrayfeat extract` to recompute the rest"
    )


# ---------------------------------------------------------------------- writing


class ShardWriter:
    """Fills one shard file opened by :func:`write_shard`; ``write`` appends rows in order.

    A part whose shape is None is not stored (a store that does not keep it).
    """

    def __init__(self, path: Path, name: str, rows: int, spatial_shape, pooled_shape, dtype, attrs: dict):
        import h5py

        self.name = name  # the final name, under which the shard appears once complete
        self.path = path  # the temporary file being filled
        self.rows = rows
        self.filled = 0
        self._keys_digest = hashlib.sha256()
        shapes = {"spatial": spatial_shape, "pooled": pooled_shape}
        self.parts = tuple(part for part in PARTS if shapes[part] is not None)
        if not self.parts:
            raise ValueError("A shard must hold at least one part; both 'spatial_shape' and 'pooled_shape' are None.")
        self.file = h5py.File(path, "w", libver="v110", userblock_size=USERBLOCK)  # checksummed metadata
        # the datasets stay open until the file closes: closing one flushes its chunk cache, which would
        # fail unseen (in h5py's __dealloc__) on a full disk if a temporary dataset object were freed
        self._datasets = {}
        try:
            create = self.file.create_dataset
            self._datasets["sha256"] = create("sha256", (rows,), dtype="S64")
            if "spatial" in self.parts:
                self._datasets["spatial"] = create("spatial", (rows, *spatial_shape), dtype=dtype,
                                                   chunks=(1, *spatial_shape))
            if "pooled" in self.parts:
                self._datasets["pooled"] = create("pooled", (rows, *pooled_shape), dtype=dtype)
            for part in self.parts:
                self._datasets[f"{part}_digest"] = create(f"{part}_digest", (rows, 32), dtype=np.uint8)
            for key, value in attrs.items():
                self.file.attrs[key] = value
        except BaseException:
            _discard(self.file)
            raise

    def write(self, hashes: np.ndarray, spatial: np.ndarray | None, pooled: np.ndarray | None) -> None:
        """Append rows; the block of a part this shard does not hold is ignored (may be None)."""
        hashes = np.asarray(hashes, dtype="S64")
        end = self.filled + len(hashes)
        rows = slice(self.filled, end)
        datasets = self._datasets
        datasets["sha256"][rows] = hashes
        for part, block in zip(PARTS, (spatial, pooled)):
            if part not in self.parts:
                continue
            block = np.asarray(block, dtype=datasets[part].dtype)
            datasets[part][rows] = block
            datasets[f"{part}_digest"][rows] = row_digests(hashes, block)
        self._keys_digest.update(hashes.tobytes())
        self.filled = end

    def _finish(self) -> None:
        if self.filled != self.rows:
            raise StoreError(f"{self.path}: shard got {self.filled} rows, expected {self.rows}")
        self.file.attrs["keys_sha256"] = self._keys_digest.hexdigest()
        self.file.attrs["rows"] = self.rows
        self.file.attrs["format"] = FORMAT
        self.file.flush()  # a full disk fails here, before the file can be renamed into place


@contextlib.contextmanager
def write_shard(folder: Path, rows: int, spatial_shape, pooled_shape, dtype, attrs: dict) -> Iterator[ShardWriter]:
    """Write one shard of exactly ``rows`` rows into ``folder``; it appears under ``writer.name`` at the end.

    A part whose shape is None is left out of the shard.
    On a clean exit the key digest, row count and format are stored and the file
    is flushed, fsync-ed and renamed into place; on an exception (a full disk
    included), or if fewer or more rows were written (:class:`StoreError`),
    nothing is left behind.
    """
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.h5"
    with atomic_path(Path(folder) / name) as tmp:
        shard = ShardWriter(tmp, name, rows, spatial_shape, pooled_shape, dtype, attrs)
        try:
            yield shard
            shard._finish()
            shard.file.close()
        except BaseException as exc:
            _discard(shard.file)
            if isinstance(exc, (OSError, RuntimeError)):
                raise _os_error(exc) from None
            raise
        _seal(tmp)


def _discard(f) -> None:
    """Close an HDF5 file being written that will be thrown away, without writing to its disk again.

    Closing flushes HDF5's caches; after a full disk (or the file size limit)
    that flush fails too, the file stays open, and each h5py object of it then
    fails again when freed ("Exception ignored in ... __dealloc__") or crashes
    the process. So the file's descriptor (h5py's ``get_vfd_handle``) is first
    pointed at the null device, where every write succeeds and lands nowhere;
    the close then succeeds, and the caller deletes the temporary file.
    """
    if not f.id.valid:
        return
    with contextlib.suppress(*_HDF5_ERRORS):
        fd = f.id.get_vfd_handle()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
    with contextlib.suppress(*_HDF5_ERRORS):
        f.close()


def _os_error(exc: OSError | RuntimeError) -> OSError:
    """An HDF5 write failure as the OSError it was: h5py raises RuntimeError for some, the errno only in the text."""
    if isinstance(exc, OSError) and exc.errno:
        return exc
    found = re.search(r"errno = (\d+)", str(exc))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code))


def _file_digest(path: Path) -> str:
    """SHA-256 of a shard's bytes, the sealed head of its user block read as zeros."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        head = fh.read(_SEALED)
        digest.update(bytes(len(head)))
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _seal(path: Path) -> None:
    """Write the file's digest into its user block (HDF5 never reads it)."""
    digest = _file_digest(path)
    with open(path, "r+b") as fh:
        fh.write(_SEAL + digest.encode())


def sealed(path: Path) -> bool:
    """Whether every byte of the shard file is as it was written (reads the whole file)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SEALED)
        return head[: len(_SEAL)] == _SEAL and head[len(_SEAL) :] == _file_digest(path).encode()
    except OSError:
        return False


# ---------------------------------------------------------------------- reading


@contextlib.contextmanager
def _open(path: Path, fingerprint_id: str | None = None):
    """The shard open for reading; :func:`damaged` if HDF5 cannot read it, it is too old, or of another fingerprint."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except _HDF5_ERRORS as exc:
        raise damaged(path, f"unreadable ({first_line(exc)})") from None
    try:
        if f.attrs.get("format") != FORMAT:
            raise damaged(path, "written by an older xrayfeat without row checksums, so it cannot be checked")
        owner = f.attrs.get("fingerprint_id")
        if fingerprint_id is not None and owner != fingerprint_id:
            raise damaged(path, f"belongs to fingerprint {owner}, not this store's {fingerprint_id} "
                                f"(copied from another store?)")
        yield f
    except _HDF5_ERRORS as exc:
        raise damaged(path, f"unreadable ({first_line(exc)})") from None
    finally:
        with contextlib.suppress(*_HDF5_ERRORS):
            f.close()


def _keys_match(f, keys: np.ndarray) -> bool:
    return hashlib.sha256(keys.astype("S64").tobytes()).hexdigest() == f.attrs.get("keys_sha256")


def _checked_keys(path: Path, f) -> np.ndarray:
    keys = f["sha256"][:]
    if not _keys_match(f, keys):
        raise damaged(path, "the key column does not match its checksum")
    return keys


def read_hashes(path: Path, fingerprint_id: str | None = None) -> np.ndarray:
    """The ``sha256`` column of a shard, in row order, checked against ``keys_sha256``."""
    with _open(path, fingerprint_id) as f:
        return _checked_keys(path, f)


def read_attrs(path: Path) -> dict:
    """A shard's HDF5 attributes as plain Python values."""
    with _open(path) as f:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}


def stored_rows(path: Path) -> int:
    """The row count a shard says it holds."""
    with _open(path) as f:
        return int(f.attrs["rows"])


def parts_of(f) -> tuple[str, ...]:
    """The feature parts an open shard holds, in :data:`PARTS` order."""
    return tuple(part for part in PARTS if part in f)


def _datasets(f) -> tuple[str, ...]:
    """Every dataset a shard holds: the keys, and each part it holds with its digests."""
    parts = parts_of(f)
    return ("sha256", *parts, *(f"{part}_digest" for part in parts))


def _shapes(f) -> tuple:
    """(spatial shape or None, pooled shape or None, dtype name) of an open shard."""
    parts = parts_of(f)
    shape = {part: f[part].shape[1:] for part in parts}
    return shape.get("spatial"), shape.get("pooled"), str(f[parts[0]].dtype) if parts else None


def storage_bytes(path: Path) -> int:
    """Bytes a shard's datasets take on disk (what compaction sizes shards by)."""
    with _open(path) as f:
        return sum(f[k].id.get_storage_size() for k in _datasets(f))


def shard_layout(path: Path) -> tuple[tuple | None, tuple | None, np.dtype, dict]:
    """(spatial shape, pooled shape, dtype, attributes) of a shard, to write another one like it.

    A part the shard does not hold has shape None. The attributes leave out
    those that belong to this shard's data (rows, key digest, format).
    """
    with _open(path) as f:
        attrs = {k: v for k, v in f.attrs.items() if k not in ("keys_sha256", "rows", "format", "content_sha256")}
        spatial, pooled, dtype = _shapes(f)
        if dtype is None:
            raise damaged(path, "it holds no feature part")
        return spatial, pooled, np.dtype(dtype), attrs


def _take(dataset, rows: np.ndarray) -> np.ndarray:
    """``dataset[rows]``, row by row where each row is its own chunk (h5py's fancy indexing is ~10× slower there)."""
    if not dataset.chunks or dataset.chunks[0] != 1:
        return dataset[rows]
    out = np.empty((len(rows), *dataset.shape[1:]), dtype=dataset.dtype)
    for i, row in enumerate(rows.tolist()):
        out[i] = dataset[row]
    return out


class ShardReader:
    """One shard open for reading; :meth:`read` returns rows only after checking their digests.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: Path, fingerprint_id: str | None = None):
        self.path = Path(path)
        self._context = _open(self.path, fingerprint_id)
        self.file = self._context.__enter__()

    def read(self, part: str, rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """``part`` at ``rows`` (increasing, unique), each checked to be the value stored for ``keys``."""
        try:
            block = _take(self.file[part], rows)
            stored = self.file[f"{part}_digest"][rows]
        except _HDF5_ERRORS as exc:
            raise damaged(self.path, f"unreadable {part} rows ({first_line(exc)})") from None
        bad = np.nonzero(np.any(row_digests(keys, block) != stored, axis=1))[0]
        if len(bad):
            raise damaged(self.path, f"{part} of row {int(rows[bad[0]])} does not match its checksum"
                                     + (f" ({len(bad)} rows of {len(rows)} read)" if len(bad) > 1 else ""))
        return block

    def keys(self, rows: np.ndarray) -> np.ndarray:
        """The key column at ``rows`` (increasing, unique); checked through the row digests by :meth:`read`."""
        try:
            return self.file["sha256"][rows]
        except _HDF5_ERRORS as exc:
            raise damaged(self.path, f"unreadable keys ({first_line(exc)})") from None

    def close(self) -> None:
        self._context.__exit__(None, None, None)

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_rows(path: Path, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Yield checked (hashes, spatial, pooled) for ``rows`` (increasing, unique) in blocks of :data:`BLOCK_BYTES`.

    A part the shard does not hold comes as None.
    """
    with ShardReader(path) as shard:
        step = _block_rows(shard.file)
        held = parts_of(shard.file)
        for start in range(0, len(rows), step):
            sel = rows[start : start + step]
            keys = shard.keys(sel)
            yield keys, *(shard.read(part, sel, keys) if part in held else None for part in PARTS)


class ShardCheck(NamedTuple):
    """What :func:`check_shard` found.

    ``problems``: one line each; ``shapes``: ``(spatial shape, pooled shape, dtype)``,
    None for a part the shard does not hold; ``rows``: the rows the shard holds; ``sound``: a boolean mask of the rows whose
    key and values pass their checks. ``shapes`` is None, ``rows`` 0 and ``sound``
    empty when the shard cannot be read or belongs to another fingerprint.
    """

    problems: list[str]
    shapes: tuple | None
    rows: int
    sound: np.ndarray


def check_shard(path: Path, fingerprint_id: str, parts: tuple[str, ...] = PARTS) -> ShardCheck:
    """Check one shard's structure, fingerprint, key column and every row's digests, streaming its data.

    ``parts``: what the shard's store keeps; a shard lacking one of them (or a
    part's digests) has no sound row, as its rows cannot be served.
    """
    nothing = np.zeros(0, dtype=bool)
    try:
        with _open(path, fingerprint_id) as f:
            n = int(f.attrs.get("rows", -1))
            if any(len(f[k]) != n for k in _datasets(f)):
                return ShardCheck([str(damaged(path, "its datasets disagree on the row count"))], None, 0, nothing)
            keys = f["sha256"][:]
            absent = [p for p in parts if p not in f or f"{p}_digest" not in f]
            sound = np.zeros(n, dtype=bool) if absent else _sound_rows(f, keys)
            reasons = [] if sealed(path) else ["its bytes do not match the file checksum"]
            if absent:
                reasons.append(f"it lacks the {' and '.join(absent)} part its store keeps")
            if not _keys_match(f, keys):
                reasons.append("the key column does not match its checksum")
            if not sound.all():
                reasons.append(f"{np.count_nonzero(~sound)} of {n} rows do not match their checksums")
            shapes = _shapes(f)
            return ShardCheck([str(damaged(path, " and ".join(reasons)))] if reasons else [], shapes, n, sound)
    except StoreError as exc:
        return ShardCheck([str(exc)], None, 0, nothing)


def _block_rows(f) -> int:
    """Rows per block so that a block of every part takes about :data:`BLOCK_BYTES`."""
    row_bytes = sum(f[part].dtype.itemsize * int(np.prod(f[part].shape[1:])) for part in parts_of(f))
    return max(1, BLOCK_BYTES // max(row_bytes, 1))


def _sound_rows(f, keys: np.ndarray) -> np.ndarray:
    """Mask of rows whose every part matches its digest (a block HDF5 cannot read counts as unsound)."""
    sound = np.ones(len(keys), dtype=bool)
    step = _block_rows(f)
    datasets = [(f[part], f[f"{part}_digest"]) for part in parts_of(f)]
    for start in range(0, len(keys), step):
        end = min(start + step, len(keys))
        for values, digests in datasets:
            try:
                block, stored = values[start:end], digests[start:end]
            except _HDF5_ERRORS:
                sound[start:end] = False
                continue
            sound[start:end] &= np.all(row_digests(keys[start:end], block) == stored, axis=1)
    return sound
