"""Rows of the feature store read on demand, and the memory budget that decides when to read them so.

100,000 InceptionV3 maps at 224 px are 20 GB as float32: more than a training
machine may hold. :class:`StoreRows` is one part (``spatial`` or ``pooled``) of
a list of store rows that looks enough like an array for
:func:`xrayfeat.models.head.train_head` (``shape``, ``dtype``, ``len`` and indexing
by rows), but reads only the rows asked for, through
:meth:`~xrayfeat.store.feature_store.FeatureStore.read` (so every row is checked against its
digest, and the values are exactly those ``read`` gives: float16 stored,
float32 out). Training on a view is therefore bitwise training on the array
``read`` returns, for the same seed. A view pickles, and travels as JSON
(:meth:`StoreRows.spec`), as the store's folder, its fingerprint id, the row
keys and the part, so a head child process rebuilds it (:meth:`StoreRows.from_spec`)
instead of receiving the arrays.

Training reads its batches ahead (:meth:`StoreRows.read_ahead`, a
:class:`ReadAhead`): a thread reads the next batches while the model trains on
the current one, so a streamed step does not wait for the store
(``scripts/bench_stream.py``), and reads a few batches' rows at a time
(:data:`READ_BYTES`), which costs 40% less CPU per batch than reading each
alone (the store's per-read work: its lock, its index, opening the shards).
The batches, their order and their values are those the synchronous reads
give. An error is the one the synchronous read of the batch that meets it
gives (a group that fails is read again batch by batch), raised in the caller
when it asks for that batch; closing the :class:`ReadAhead` (end of training,
an error, Ctrl-C) stops the thread, whose reads close their shard files as
they end.

:func:`resolve_budget` turns ``--memory-budget`` into bytes; by default half of
the memory available when the run starts (``MemAvailable`` in
``/proc/meminfo``, else the free physical pages ``os.sysconf`` reports), which
leaves the other half to the model, the baselines and the rest of the machine.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np

from xrayfeat.errors import StoreError
from xrayfeat.options.parsers import parse_size
from xrayfeat.store.feature_store import FeatureStore

__all__ = ["READ_AHEAD", "READ_BATCHES", "READ_BYTES", "Budget", "ReadAhead", "ReadingAhead", "StoreRows", "available_memory", "float32_bytes", "human_bytes", "resolve_budget", "take"]

log = logging.getLogger("xrayfeat")

#: The default budget's share of the available memory.
DEFAULT_SHARE = 0.5

#: Batches a :class:`ReadAhead` holds read and waiting for their step.
READ_AHEAD = 3

#: How many rows :meth:`StoreRows.read_ahead` reads at a time: whole batches up to this many bytes as float32, at
#: least one and at most :data:`READ_BATCHES` (4 batches of 10 InceptionV3 maps at 224 px; one of 256).
READ_BYTES = 8 << 20
READ_BATCHES = 8


class StoreRows:
    """One part of the store rows keyed by ``hashes``, in that order, read on demand as float32.

    ``view[rows]`` (a 1-D int array, in any order) and ``view[start:stop:step]``
    give a float32 array of those rows; ``view[i]`` one row. :meth:`subset` gives a
    view of some rows without reading them; :meth:`batches` reads the rows in
    order a block at a time, keeping the shard files open between blocks.
    ``row_shape`` spares reading the first row to learn it.
    """

    dtype = np.dtype("float32")

    def __init__(self, store: FeatureStore, hashes, part: str, *, row_shape=None):
        if part not in ("spatial", "pooled"):
            raise ValueError(f"The 'part' parameter of StoreRows must be one of {{'spatial', 'pooled'}}. Got {part!r} instead.")
        self.store = store
        self.hashes = np.asarray(list(hashes), dtype="U64")
        self.part = part
        if row_shape is None:
            if not len(self.hashes):
                raise ValueError("StoreRows needs row_shape when it holds no rows")
            row_shape = store.read(self.hashes[:1].tolist(), (part,))[part].shape[1:]
        self.row_shape = tuple(int(d) for d in row_shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.hashes), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def nbytes(self) -> int:
        """What the rows would take in memory as float32."""
        return float32_bytes(self.shape)

    def __len__(self) -> int:
        return len(self.hashes)

    def __repr__(self) -> str:
        return f"StoreRows({self.store.path.name}, {self.part}, shape={self.shape})"

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return self[np.array([key])][0]
        return self._read(self.hashes[self._positions(key)])

    def __array__(self, dtype=None, copy=None):
        raise TypeError(f"{self!r} is read in batches: index it with rows (view[rows]) or iterate view.batches(n)")

    def _positions(self, key) -> np.ndarray:
        """Row positions of an index key: a slice or a 1-D integer array within the view."""
        if isinstance(key, slice):
            return np.arange(len(self))[key]
        rows = np.asarray(key)
        if rows.ndim != 1 or not (rows.dtype.kind in "iu" or rows.size == 0):
            raise TypeError(f"StoreRows is indexed by a slice or a 1-D array of row numbers; got {key!r}")
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row numbers must lie in [-{len(self)}, {len(self) - 1}]; got {rows.min()} to {rows.max()}")
        return rows

    def _read(self, hashes: np.ndarray) -> np.ndarray:
        if not len(hashes):
            return np.empty((0, *self.row_shape), dtype=self.dtype)
        return self.store.read(hashes.tolist(), (self.part,))[self.part]

    def subset(self, rows) -> StoreRows:
        """A view of some of these rows (a slice or row numbers), nothing read."""
        return StoreRows(self.store, self.hashes[self._positions(rows)], self.part, row_shape=self.row_shape)

    def batches(self, rows: int):
        """The rows in order, ``rows`` at a time, as float32 arrays (one pass through the store)."""
        if not len(self):
            return
        for chunk in self.store.iter_batches(self.hashes.tolist(), (self.part,), batch_size=int(rows)):
            yield chunk[self.part]

    def read(self) -> np.ndarray:
        """Every row at once: exactly ``store.read(hashes, (part,))[part]``."""
        return self._read(self.hashes)

    def read_ahead(self, row_batches, depth: int = READ_AHEAD) -> ReadAhead:
        """``(rows, view[rows])`` for each array of row numbers ``row_batches`` yields, read on a thread ahead of use.

        See :class:`ReadAhead`; ``row_batches`` is consumed on that thread (its
        first batch here). The rows of as many batches as :data:`READ_BYTES`
        holds (judged by the first batch; :data:`READ_BATCHES` at most) are read at once, with the values
        read one batch at a time gives. Memory: ``depth`` batches waiting, and
        one such read.
        """
        row_batches = iter(row_batches)
        first = next(row_batches, None)
        if first is None:
            return ReadAhead(self._read_batches, iter(()), depth)
        group = max(1, min(READ_BATCHES, READ_BYTES // max(1, float32_bytes((len(first), *self.row_shape)))))
        return ReadAhead(self._read_batches, itertools.chain([first], row_batches), depth, group=group)

    def _read_batches(self, batches: list):
        """The rows of each of ``batches`` (arrays of row numbers), in order: read together, split; if that read fails,
        one batch at a time, so that the batches before the one that fails come, and its error is its own read's."""
        try:
            block = self[np.concatenate(batches)] if len(batches) > 1 else None
        except Exception:
            block = None
        if block is None:
            for rows in batches:
                yield self[rows]
            return
        yield from np.split(block, np.cumsum([len(rows) for rows in batches])[:-1])

    # ------------------------------------------------------------------ travelling to another process

    def spec(self) -> dict:
        """A JSON-ready description from which :meth:`from_spec` rebuilds the view in another process."""
        return {"store": str(self.store.path), "fingerprint_id": self.store.fingerprint_id, "part": self.part,
                "row_shape": list(self.row_shape), "hashes": self.hashes.tolist()}

    @classmethod
    def from_spec(cls, spec: dict) -> StoreRows:
        """The view :meth:`spec` described; :class:`StoreError` if the store there holds another fingerprint."""
        store = FeatureStore.at(spec["store"])
        if store.fingerprint_id != spec["fingerprint_id"]:
            raise StoreError(f"{store.path}: holds fingerprint {store.fingerprint_id}, not the "
                             f"{spec['fingerprint_id']} these rows were taken from (the store was replaced meanwhile)")
        return cls(store, spec["hashes"], spec["part"], row_shape=spec["row_shape"])

    def __reduce__(self):
        return StoreRows.from_spec, (self.spec(),)


class ReadAhead:
    """``(key, value)`` for each key ``keys`` yields, in order, read on a thread ahead of their use.

    ``read`` takes a list of up to ``group`` consecutive keys and yields their
    values in order. At most ``depth`` items wait read; the thread then holds
    at most ``group`` more (the bound on memory). Iterate it, and close it (or
    use it as a context manager) when done: closing stops the thread and waits
    for it, so no read runs afterwards and every file a read opened is closed.
    An exception raised by ``read`` or by ``keys`` (a damaged row, a shard
    removed) is raised by ``next`` at the item that met it, after the items
    before it, as the same exception object, and kept in :attr:`error`;
    iteration then ends. Closed, it yields nothing more. ``keys`` is consumed
    on the thread, so it must not be touched elsewhere meanwhile.
    """

    _END = object()
    _POLL_S = 0.1

    def __init__(self, read, keys, depth: int = READ_AHEAD, *, group: int = 1):
        for name, value in (("depth", depth), ("group", group)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"The {name!r} parameter of ReadAhead must be an int >= 1. Got {value!r} instead.")
        self._read, self._keys, self._group = read, keys, group
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self.error: BaseException | None = None  # what __next__ raised, once it has
        self._thread = threading.Thread(target=self._run, name="xrayfeat-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            keys = iter(self._keys)
            while not self._stop.is_set():
                group = list(itertools.islice(keys, self._group))
                if not group:
                    break
                for key, value in zip(group, self._read(group)):
                    if not self._put((key, value)):
                        return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)
        else:
            self._put(self._END)

    def _put(self, item) -> bool:
        """Queue ``item`` once there is room; False if the reader was closed meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=self._POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> ReadAhead:
        return self

    def __next__(self):
        while not self._done:
            try:
                item = self._queue.get(timeout=self._POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():  # closed: nothing more will come
                    self._done = True
                continue
            if item is self._END:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                self.error = item
                raise item
            else:
                return item
        raise StopIteration

    def close(self) -> None:
        """Stop the thread and wait for it (a read under way finishes first); what was read ahead is dropped."""
        self._done = True
        self._stop.set()
        self._thread.join()
        while not self._queue.empty():
            self._queue.get_nowait()

    @property
    def running(self) -> bool:
        """Whether the reading thread is still alive."""
        return self._thread.is_alive()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ReadingAhead:
    """The read-ahead threads of one training (:class:`ReadAhead`): started by :meth:`start`, all stopped by :meth:`close`.

    :attr:`error` is the first error one of them raised to its consumer: a
    training that fails because of it can raise it as it is, instead of the
    error a framework wrapped it in (TensorFlow's ``fit`` reads its batches on
    a thread of its own and reports ``UnknownError: Graph execution error``).
    """

    def __init__(self):
        self._readers: list[ReadAhead] = []
        self._lock = threading.Lock()

    def start(self, view: StoreRows, row_batches, depth: int = READ_AHEAD) -> ReadAhead:
        """``view.read_ahead(row_batches, depth)``, stopped with the others on :meth:`close`."""
        reader = view.read_ahead(row_batches, depth)
        with self._lock:
            self._readers.append(reader)
        return reader

    @property
    def error(self) -> BaseException | None:
        return next((r.error for r in self._readers if r.error is not None), None)

    def close(self) -> None:
        """Stop every thread started so far and wait for them."""
        with self._lock:
            readers = list(self._readers)
        for reader in readers:
            reader.close()

    def __enter__(self) -> ReadingAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def take(x, rows):
    """``x[rows]`` for an array; for a :class:`StoreRows`, a view of those rows that reads nothing yet."""
    return x.subset(rows) if isinstance(x, StoreRows) else x[rows]


def float32_bytes(shape) -> int:
    """Bytes of a float32 array of ``shape``."""
    return 4 * int(np.prod(shape, dtype=np.int64))


def human_bytes(n: int) -> str:
    """``n`` bytes for a log line: ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def available_memory() -> int:
    """Bytes of memory available to a new allocation: ``MemAvailable`` on Linux, else the free physical pages."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Budget:
    """The memory budget for feature matrices, in bytes, and where it came from (for the log and the record)."""

    bytes: int
    source: str

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.bytes

    def record(self) -> dict:
        return {"memory_budget_bytes": self.bytes, "memory_budget_from": self.source}


def resolve_budget(value=None) -> Budget:
    """``--memory-budget`` in bytes (see :func:`xrayfeat.options.parsers.parse_size`); None: half the available memory. Logged."""
    if value is None:
        free = available_memory()
        budget = Budget(int(free * DEFAULT_SHARE), f"default: half of the {human_bytes(free)} available")
    else:
        budget = Budget(parse_size(value), f"--memory-budget {value}")
    log.info("memory budget for features: %s (%s)", human_bytes(budget.bytes), budget.source)
    return budget
