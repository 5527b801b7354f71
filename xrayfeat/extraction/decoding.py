"""The reader: image files decoded ahead of the device by a bounded pool of processes.

Decoding (:func:`xrayfeat.data.images.read_image`) runs in worker processes,
never in threads (decoders' warnings filters are process-wide), and a failure
comes back as data (:class:`DecodeFailure`: its one-line reason), not as an
exception, so one damaged file never stops the pool. Each worker is a fresh
interpreter fed over pipes (:mod:`xrayfeat.extraction.decode_worker`), never a
``multiprocessing`` child: nothing re-imports the caller's ``__main__``, so a
script without a main guard, ``python -``, ``python -c``, IPython, Jupyter and
an embedded interpreter all decode the same way. The workers die with this
process however it ends (:func:`~xrayfeat.distributed.lifetime.die_with_parent` is
the first thing they run); when the consumer stops early (an error, an interrupt)
the pool ends at once, and the chunks not yet decoded are dropped.

A long-lived process that decodes one job after another (a Dask worker, one
chunk per task: :mod:`xrayfeat.extraction.chunks`) keeps its pool between jobs
(``keep=True``): a pool that finished its job cleanly is shelved and the next
job of the same size takes it, so an interpreter's start-up is paid once per
worker, not once per chunk. Its processes still die with that process.

:func:`decoder_version` names what decides whether a file decodes at all; the
store remembers the files that do not under it (:mod:`xrayfeat.store.unreadable`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import sys
import threading
from collections import deque
from typing import NamedTuple

import numpy as np

from xrayfeat.data import images
from xrayfeat.errors import ImageReadError, WorkerError, one_line
from xrayfeat.provenance import library_versions

__all__ = ["DecodeFailure", "decoded", "decoder_version", "default_workers", "end_kept_pools"]

log = logging.getLogger("xrayfeat")

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


def decoded(paths: list[str], size: int, workers: int, *, chunk: int = 8, ahead: int = 4, keep: bool = False):
    """Yield ``(array | None, DecodeFailure | None)`` for each path, in order.

    ``workers`` processes decode ahead of the consumer, but at most
    ``workers * ahead`` chunks are in flight, so memory stays bounded however
    slow the device is and however many files there are. A consumer that may
    stop early closes the generator (``contextlib.closing``), so the pool stops
    then, not when the generator is collected. Where no worker can be started
    (no Python interpreter to run, or it does not start), the files are decoded
    in this process, with one warning.

    ``keep``: take a pool of ``workers`` processes kept from an earlier call in
    this process (or start one), and keep it for the next call when every file
    was yielded; a pool stopped early or failed is ended as without ``keep``.
    """
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    if workers == 0 or len(chunks) == 0:
        for part in chunks:
            yield from _decode_chunk(part, size)
        return
    pool = _shelved(workers) if keep else _Pool(min(workers, len(chunks)))
    finished = False
    try:
        pending: deque = deque()
        done = 0
        for index, part in enumerate(chunks):
            if not pool.submit(index, part, size):
                break
            pending.append(index)
            if len(pending) >= pool.size * ahead:
                answer = pool.result(pending.popleft(), chunks, size)
                done += 1
                finished = done == len(chunks)  # every chunk answered: nothing left in the workers' pipes
                yield from answer
        while pending:
            answer = pool.result(pending.popleft(), chunks, size)
            done += 1
            finished = done == len(chunks)  # a consumer may stop after the last file without asking for more
            yield from answer
        for part in chunks[done:]:  # the pool could not start: this process decodes what is left
            yield from _decode_chunk(part, size)
    finally:  # also when the consumer stops early (an error, an interrupt): chunks not started are dropped
        if keep and finished and not pool.broken:
            _shelve(pool)
        else:
            pool.close()


_SHELF: list = []  # pools kept between calls with keep=True, idle (each dies with this process)
_SHELF_LOCK = threading.Lock()


def _shelved(workers: int) -> _Pool:
    """An idle kept pool of ``workers`` processes, or a new one (one per caller at a time: threads may each decode).

    A kept pool one of whose processes ended while it was idle (killed, out of
    memory) is ended and replaced: no job is sent to it.
    """
    with _SHELF_LOCK:
        found = next((pool for pool in _SHELF if pool.size == workers), None)
        if found is not None:
            _SHELF.remove(found)
    if found is not None and all(proc.poll() is None for proc in found.procs):
        return found
    if found is not None:
        found.close()
    return _Pool(workers)


def _shelve(pool: _Pool) -> None:
    with _SHELF_LOCK:
        _SHELF.append(pool)


def end_kept_pools() -> None:
    """End the idle pools kept by ``keep=True`` now (they would otherwise end with this process)."""
    with _SHELF_LOCK:
        pools = list(_SHELF)
        _SHELF.clear()
    for pool in pools:
        pool.close()


class _Pool:
    """``size`` decode workers (:mod:`xrayfeat.extraction.decode_worker`), chunk ``i`` on worker ``i % size``.

    Each worker answers its requests in order, so chunk ``i``'s answer is the
    next one its worker gives after those of the chunks before it. A thread per
    worker reads its answers as they come (a worker never waits on a full pipe),
    so at most the chunks submitted and not yet consumed are held here. A pool
    that cannot start (no interpreter, or one that ends before its first answer)
    is ``broken``: :meth:`submit` refuses and the caller decodes in-process.
    """

    def __init__(self, size: int):
        import subprocess

        from xrayfeat.extraction.decode_worker import command, interpreter

        self.size = size
        self.procs: list = []
        self.answers: list[queue.Queue] = []
        self.stderr: list[deque] = []
        self.broken = False
        self.answered = False
        python = interpreter()
        if python is None:
            self._give_up("no Python interpreter found to run them (sys.executable is "
                          f"{sys.executable or 'empty'})")
            return
        for _ in range(size):
            try:
                proc = subprocess.Popen(command(python, os.getpid()), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True)  # no terminal signals: see close
            except OSError as exc:
                self._give_up(f"{python} did not start ({exc.strerror or exc})")
                return
            self.procs.append(proc)
            self.answers.append(queue.Queue())
            self.stderr.append(deque(maxlen=20))
            threading.Thread(target=_read_answers, args=(proc.stdout, self.answers[-1]), daemon=True,
                             name="xrayfeat-decode-answers").start()
            threading.Thread(target=_read_lines, args=(proc.stderr, self.stderr[-1]), daemon=True,
                             name="xrayfeat-decode-stderr").start()

    def _give_up(self, why: str) -> None:
        self.broken = True
        log.warning("decoding in this process: the decode workers cannot start: %s", why)

    def submit(self, index: int, paths: list[str], size: int) -> bool:
        if self.broken:
            return False
        proc = self.procs[index % self.size]
        try:
            pickle.dump((paths, size), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
        except (BrokenPipeError, OSError):  # the worker ended: its answer queue says how
            pass
        return True

    def result(self, index: int, chunks: list, size: int) -> list:
        worker = index % self.size
        answer = self.answers[worker].get()
        if answer is not _ENDED:
            self.answered = True
            return answer
        self.answers[worker].put(_ENDED)  # for the next chunk asked of this worker
        proc = self.procs[worker]
        code = proc.wait()
        said = next((line for line in reversed(self.stderr[worker]) if line.strip()), "")
        if not self.answered and not self.broken:  # it never started: decode here instead
            self._give_up(f"a worker exited with status {code} before its first answer"
                          + (f" ({one_line(said.strip())})" if said else ""))
        if self.broken:
            return _decode_chunk(chunks[index], size)
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        raise WorkerError(f"a decode worker {how} while decoding {one_line(chunks[index][0])} and the files after "
                              f"it (out of memory?); completed batches are kept: rerun to resume, with fewer "
                              f"--workers (workers= in Python) or 0 to decode in one process")

    def close(self) -> None:
        """End every worker now: the chunks it was sent and had not answered are dropped."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
        for proc in self.procs:
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    stream.close()


_ENDED = object()  # a worker's answers ended (it exited)


def _read_answers(stream, answers: queue.Queue) -> None:
    try:
        while True:
            answers.put(pickle.load(stream))
    except Exception:  # end of the stream (the worker exited), or a closed pipe
        answers.put(_ENDED)


def _read_lines(stream, lines: deque) -> None:
    with contextlib.suppress(Exception):
        for line in stream:
            lines.append(line.decode(errors="replace"))


def default_workers(n_images: int, batch_size: int, cores: int | None = None, *, kept: bool = False) -> int:
    """One process per core, but in-process for a job too small to repay starting a pool.

    ``cores``: how many this job may use (default: all of this machine's).
    ``kept``: the pool outlives the job (``keep=True`` of :func:`decoded`), so its
    start-up is paid once, not by this job: any job uses it.
    """
    if n_images < 2 * batch_size and not kept:
        return 0
    return max(1, cores or os.cpu_count() or 1)
