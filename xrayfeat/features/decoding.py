"""The reader: image files decoded ahead of the device by a bounded pool of processes.

Decoding (:func:`xrayfeat.data.images.read_image`) runs in spawned worker
processes, never in threads (decoders' warnings filters are process-wide), and
a failure comes back as its one-line reason, not as an exception, so one
damaged file never stops the pool.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from xrayfeat.data import images
from xrayfeat.errors import ImageReadError

__all__ = ["decoded", "default_workers"]


def _decode_chunk(paths: list[str], size: int) -> list[tuple[np.ndarray | None, str | None]]:
    """Decode a few files (runs in a worker process); errors come back as text, not exceptions."""
    out = []
    for path in paths:
        try:
            out.append((images.read_image(path, size), None))
        except ImageReadError as exc:
            out.append((None, exc.reason))
    return out


def decoded(paths: list[str], size: int, workers: int, *, chunk: int = 8, ahead: int = 4):
    """Yield ``(array | None, error | None)`` for each path, in order.

    ``workers`` processes decode ahead of the consumer, but at most
    ``workers * ahead`` chunks are in flight, so memory stays bounded however
    slow the device is and however many files there are.
    """
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    if workers == 0:
        for part in chunks:
            yield from _decode_chunk(part, size)
        return
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque = deque()
        queue = iter(chunks)
        try:
            for part in queue:
                pending.append(pool.submit(_decode_chunk, part, size))
                if len(pending) >= workers * ahead:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def default_workers(n_images: int, batch_size: int) -> int:
    """All cores, but decode in-process for jobs too small to repay starting a pool."""
    if n_images < 2 * batch_size:
        return 0
    return max(1, os.cpu_count() or 1)
