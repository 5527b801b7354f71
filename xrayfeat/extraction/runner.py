"""The mapper: decoded images in full device batches through every backbone, rows out to every writer.

The same runner serves the extraction in this process and each chunk on a Dask
worker (:mod:`xrayfeat.extraction.chunks`), so both compute rows the same way: a
batch is always full (one compiled shape, and rows independent of the batch's
composition), and each image is decoded once however many backbones read it.
"""

from __future__ import annotations

import contextlib

import numpy as np

from xrayfeat.backbones import get_spec
from xrayfeat.devices import device_scope
from xrayfeat.errors import ImageReadError, StoreError, one_line
from xrayfeat.extraction.config import FeatureConfig
from xrayfeat.extraction.decoding import decoded, default_workers
from xrayfeat.extraction.progress import progress_bar
from xrayfeat.fileio import file_digest
from xrayfeat.options.settings import RunOptions

__all__ = ["SKIP_HINT", "build_model", "check_weights", "run_batches"]

#: The fix a user is offered when an image cannot be read.
SKIP_HINT = "(or pass --on-error skip to leave such files out)"


def build_model(config: FeatureConfig, device: str):
    """``(compiled extractor, digest of its weights)`` for one feature configuration."""
    from xrayfeat.extraction.building import build_extractor, weights_digest

    with device_scope(device):
        model, backbone = build_extractor(
            get_spec(config.options.backbone), config.weights,
            image_size=config.fingerprint["image_size"], layer=config.fingerprint["layer"],
            precision=config.fingerprint["precision"],
        )
    return model, weights_digest(backbone)


def check_weights(store, digest: str, backbone: str) -> None:
    """Refuse weights that differ from those the store's rows were computed with (e.g. a changed seed build)."""
    recorded = store.provenance().get("weights_digest")
    if recorded and recorded != digest:
        raise StoreError(
            f"{store.path}: the {backbone} weights built now differ from those its rows "
            f"were computed with (weights digest {digest[:12]} vs {recorded[:12]}); use a new --cache-dir"
        )


def run_batches(todo, writers, wanted, models, run: RunOptions, device: str, size: int, *, keep_pool: bool = False):
    """Decode → batch → every model → every store that lacks the rows.

    ``todo`` is ``[(sha256, path), ...]``; ``writers`` pairs each store's writer
    with its config, ``wanted`` the hashes each lacks, ``models`` its extractor.
    ``run.workers`` decode processes (None: :func:`~xrayfeat.extraction.decoding.default_workers`);
    ``keep_pool`` keeps them for the next call in this process (a Dask worker's
    next chunk: :func:`~xrayfeat.extraction.decoding.decoded`).
    Returns (computed hashes, skipped {hash: reason}, the skipped hashes whose
    failure belongs to their bytes); a hash that fails once is not decoded again
    from another path with the same bytes. A failure belongs to the bytes when
    it did not come from the moment (:attr:`~xrayfeat.extraction.decoding.DecodeFailure.lasting`) and the file
    still holds the bytes its hash was taken from, so the store may remember it
    (:mod:`xrayfeat.store.unreadable`).
    """
    workers = default_workers(len(todo), run.batch_size, kept=keep_pool) if run.workers is None else run.workers
    paths = [path for _, path in todo]
    computed: set[str] = set()
    skipped: dict[str, str] = {}
    lasting: set[str] = set()
    batch_hashes: list[str] = []
    batch = np.zeros((run.batch_size, size, size, 3), dtype=np.uint8)
    progress = progress_bar(run.progress, len(todo))

    def flush():
        n = len(batch_hashes)
        with device_scope(device):
            for (writer, _), missing, model in zip(writers, wanted, models):
                keep = [i for i, h in enumerate(batch_hashes) if h in missing]
                if not keep:
                    continue
                # always a full batch: one compiled shape, and rows independent of batch composition
                spatial, pooled = model.predict_on_batch(batch)
                writer.append([batch_hashes[i] for i in keep], np.asarray(spatial)[keep], np.asarray(pooled)[keep])
        computed.update(batch_hashes)
        progress.advance(n)
        batch_hashes.clear()

    with progress, contextlib.closing(decoded(paths, size, workers, keep=keep_pool)) as images:  # an early stop stops the pool
        for (sha, path), (pixels, failure) in zip(todo, images):
            if failure is not None:
                if run.on_error == "fail":  # the path as it can be printed: its message is the CLI's one line
                    raise ImageReadError(one_line(path), f"{failure.reason} {SKIP_HINT}")
                skipped[sha] = failure.reason
                if failure.lasting and _holds(path, sha):
                    lasting.add(sha)
                progress.advance(1)
                continue
            batch[len(batch_hashes)] = pixels
            batch_hashes.append(sha)
            if len(batch_hashes) == run.batch_size:
                flush()
        if batch_hashes:
            batch[len(batch_hashes):] = 0
            flush()
    return computed, skipped, lasting


def _holds(path: str, sha256: str) -> bool:
    """Whether the file still holds the bytes of this hash (it may have changed, or be unreadable now)."""
    try:
        return file_digest(path) == sha256
    except OSError:
        return False
