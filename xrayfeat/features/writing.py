"""The writer: where computed rows go, in this process (each store's writer) or on a Dask worker (a staged shard).

:func:`writing_session` holds the write lock of every store an extraction
fills and says which images still need computing once it holds them;
:class:`ChunkWriter` collects a worker's rows into one shard in the store's
staging folder, for the process holding the lock to adopt.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

__all__ = ["ChunkWriter", "writing_session"]

log = logging.getLogger("xrayfeat")


def _unique_todo(dataset, hashes: set[str]) -> list[tuple[str, str]]:
    """(sha256, path) for each hash to compute, first occurrence in dataset order."""
    seen, todo = set(), []
    for item in dataset.items:
        if item.sha256 in hashes and item.sha256 not in seen:
            seen.add(item.sha256)
            todo.append((item.sha256, str(item.path)))
    return todo


@contextlib.contextmanager
def writing_session(dataset, stores, configs, provenance=lambda config: {}):
    """Hold every store's writer; yield (writers as (writer, config), the hashes each lacks, the images to compute).

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
        wanted = [set(writer.missing(dataset.hashes)) for writer, _ in writers]
        yield writers, wanted, _unique_todo(dataset, set().union(*wanted))
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
