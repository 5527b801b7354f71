"""The reader: image files decoded ahead of the device by a bounded pool of processes.

Decoding (:func:`xrayfeat.data.images.read_image`) runs in spawned worker
processes, never in threads (decoders' warnings filters are process-wide), and
a failure comes back as data (:class:`DecodeFailure`: its one-line reason), not
as an exception, so one damaged file never stops the pool. The workers die with
this process however it ends (:func:`~xrayfeat.distributed.lifetime.die_with_parent` is
their initializer); when the consumer stops early (an error, an interrupt) the
chunks not yet started are dropped, and the pool ends as soon as each worker
has finished the chunk it holds.

:func:`decoder_version` names what decides whether a file decodes at all; the
store remembers the files that do not under it (:mod:`xrayfeat.store.unreadable`).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import numpy as np

from xrayfeat.data import images
from xrayfeat.errors import ImageReadError
from xrayfeat.distributed.lifetime import die_with_parent
from xrayfeat.provenance import library_versions

__all__ = ["DecodeFailure", "decoded", "decoder_version", "default_workers"]

#: The packages whose versions decide which files decode (Pillow; pydicom and its pixel-data plugins).
_DECODER_PACKAGES = ("pillow", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pyjpegls",
                     "python-gdcm")


class DecodeFailure(NamedTuple):
    """Why a file could not be decoded, and whether that belongs to its bytes.

    ``lasting`` is false where the cause was this machine at that moment (not
    enough memory), so the same bytes may decode another time.
    """

    reason: str
    lasting: bool


def decoder_version() -> str:
    """What decides whether a file decodes: the decoding rules, the decoders' versions and the pixel limit.

    Failures remembered under one version are tried again under another (after
    upgrading Pillow, installing a DICOM decoder or raising
    ``XRAYFEAT_MAX_PIXELS`` or ``XRAYFEAT_MAX_DECODE_BYTES``). Reads package metadata only: no decoder is imported.
    """
    versions = [f"{name} {version}" for name, version in library_versions(_DECODER_PACKAGES).items()]
    limit = os.environ.get(images.MAX_PIXELS_ENV, "").strip() or str(images.DEFAULT_MAX_PIXELS)
    held = os.environ.get(images.MAX_DECODE_BYTES_ENV, "").strip() or str(images.DEFAULT_MAX_DECODE_BYTES)
    return "; ".join([images.DECODE_VERSION, *versions, f"max pixels {limit}", f"max decode bytes {held}"])


def _decode_chunk(paths: list[str], size: int) -> list[tuple[np.ndarray | None, DecodeFailure | None]]:
    """Decode a few files (runs in a worker process); errors come back as data, not exceptions."""
    out = []
    for path in paths:
        try:
            out.append((images.read_image(path, size), None))
        except ImageReadError as exc:  # read_image turns running out of memory into one, from the MemoryError
            out.append((None, DecodeFailure(exc.reason, lasting=not isinstance(exc.__context__, MemoryError))))
    return out


def decoded(paths: list[str], size: int, workers: int, *, chunk: int = 8, ahead: int = 4):
    """Yield ``(array | None, DecodeFailure | None)`` for each path, in order.

    ``workers`` processes decode ahead of the consumer, but at most
    ``workers * ahead`` chunks are in flight, so memory stays bounded however
    slow the device is and however many files there are. A consumer that may
    stop early closes the generator (``contextlib.closing``), so the pool stops
    then, not when the generator is collected.
    """
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    if workers == 0:
        for part in chunks:
            yield from _decode_chunk(part, size)
        return
    import multiprocessing

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))
    try:
        pending: deque = deque()
        for part in chunks:
            pending.append(pool.submit(_decode_chunk, part, size))
            if len(pending) >= workers * ahead:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:  # also when the consumer stops early (an error, an interrupt): chunks not started are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def default_workers(n_images: int, batch_size: int) -> int:
    """All cores, but decode in-process for jobs too small to repay starting a pool."""
    if n_images < 2 * batch_size:
        return 0
    return max(1, os.cpu_count() or 1)
