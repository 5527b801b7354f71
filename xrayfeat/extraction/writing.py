"""The writer: where computed rows go, in this process (each store's writer) or on a Dask worker (a staged shard).

:func:`writing_session` holds the write lock of every store an extraction
fills and says which images still need computing once it holds them (not
those a store knows it cannot read), and remembers the files found unreadable
(:mod:`xrayfeat.store.unreadable`); :class:`ChunkWriter` collects a worker's
rows into one shard in the store's staging folder, for the process holding the
lock to adopt.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import numpy as np

from xrayfeat.errors import StoreError
from xrayfeat.store.unreadable import load_unreadable, save_unreadable

__all__ = ["ChunkWriter", "WritingSession", "writing_session"]

log = logging.getLogger("xrayfeat")


def _unique_todo(dataset, hashes: set[str]) -> list[tuple[str, str]]:
    """(sha256, path) for each hash to compute, first occurrence in dataset order."""
    seen, todo = set(), []
    for item in dataset.items:
        if item.sha256 in hashes and item.sha256 not in seen:
            seen.add(item.sha256)
            todo.append((item.sha256, str(item.path)))
    return todo


@dataclass
class WritingSession:
    """What an extraction holds while it writes: every store's writer, what each lacks, what is to be decoded.

    ``writers`` pairs each store's writer with its config, in the order of the
    stores' paths; ``wanted`` is, for each, the hashes it lacks and will
    compute; ``todo`` the ``(sha256, path)`` to decode, each hash once;
    ``known`` maps each store's path to the files it lacks and knows it cannot
    read under ``decoder`` (sha256 → reason): they are not decoded again.
    """

    writers: list
    wanted: list
    todo: list
    known: dict
    decoder: str
    records: list = field(repr=False)  # each store's whole record of unreadable files, read under its lock

    def remember(self, failures: dict[str, str]) -> None:
        """Record in each store that wanted them the files that cannot be decoded (sha256 → reason).

        Only failures that belong to the files' bytes are to be passed. A store
        that cannot be written keeps no record: the files are then tried again.
        """
        for (writer, _), wanted, record in zip(self.writers, self.wanted, self.records):
            new = {sha: reason for sha, reason in failures.items() if sha in wanted}
            if new:
                try:
                    save_unreadable(writer.store.path, self.decoder, {**record, **new})
                except StoreError as exc:
                    log.info("the files that cannot be read are not remembered: %s", exc)


@contextlib.contextmanager
def writing_session(dataset, stores, configs, provenance=lambda config: {}, *, decoder: str):
    """Hold every store's writer; yield the :class:`WritingSession` of ``dataset``.

    Stores are locked in the order of their paths, so two runs never wait on
    each other crosswise. ``provenance(config)`` is what the writer records in
    the shards it writes. After a run that raised nothing, the float16
    subnormal warning; leaving compacts each store.
    """
    with contextlib.ExitStack() as stack:
        writers = [
            (stack.enter_context(store.writer(
                provenance(config),
                on_wait=lambda s=store: log.warning("%s is being written by another process; waiting for it", s.path),
            )), config)
            for store, config in sorted(zip(stores, configs), key=lambda pair: str(pair[0].path))
        ]
        records = [load_unreadable(writer.store.path, decoder) for writer, _ in writers]
        lacking = [writer.missing(dataset.hashes) for writer, _ in writers]
        known = {str(writer.store.path): {sha: record[sha] for sha in lacks if sha in record}
                 for (writer, _), lacks, record in zip(writers, lacking, records)}
        wanted = [set(lacks).difference(record) for lacks, record in zip(lacking, records)]
        yield WritingSession(writers, wanted, _unique_todo(dataset, set().union(*wanted)), known, decoder, records)
        for writer, _ in writers:
            writer.warn_subnormal()


class ChunkWriter:
    """Collects a chunk's rows for one store; :meth:`finish` writes them as one shard into its staging folder."""

    def __init__(self, store, provenance: dict):
        self.store = store
        self.provenance = provenance
        self.blocks: list = []

    def append(self, hashes, spatial: np.ndarray, pooled: np.ndarray) -> None:
        self.blocks.append((list(hashes), spatial, pooled))

    def finish(self) -> dict | None:
        """Write the shard; what the committing process needs to adopt it (None when no row was computed)."""
        if not self.blocks:
            return None
        hashes = [h for block in self.blocks for h in block[0]]
        spatial = np.concatenate([block[1] for block in self.blocks])
        pooled = np.concatenate([block[2] for block in self.blocks])
        self.store.staging_dir.mkdir(exist_ok=True)
        path, share = self.store.write_rows(hashes, spatial, pooled, self.provenance, folder=self.store.staging_dir)
        return {"store": str(self.store.path), "path": str(path), "hashes": hashes, "subnormal": share,
                "weights_digest": self.provenance["weights_digest"]}
