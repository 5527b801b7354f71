"""Extraction on Dask: chunks of missing rows sent to workers, computed there, committed here.

This process holds each store's write lock throughout, so it is the one
writer: :func:`run_chunks` sends :class:`ChunkJob`\\ s, each worker runs
:func:`compute_chunk` (the same :func:`~xrayfeat.extraction.runner.run_batches`
as a single-process extraction) and writes one complete shard per store into
the store's staging folder, and this process adopts each shard as its task
finishes. A worker builds each extractor once (:func:`prepare_worker`) and
keeps it for every chunk it is sent.

A worker decodes its chunk with the same decode pool as one process
(:func:`~xrayfeat.extraction.decoding.decoded`): ``--workers`` processes, by
default the task's share of its machine's cores
(:func:`~xrayfeat.distributed.session.task_cores`), kept from chunk to chunk and
ended with the worker. So a GPU worker is fed by every core of its machine, not
one; the rows are the same whatever the pool's size.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from xrayfeat.devices import confirm_device
from xrayfeat.distributed.session import task_cores
from xrayfeat.errors import WorkerError, XrayfeatError
from xrayfeat.extraction.config import FeatureConfig, resolve
from xrayfeat.extraction.decoding import default_workers
from xrayfeat.extraction.progress import progress_bar
from xrayfeat.extraction.runner import build_model, check_weights, run_batches
from xrayfeat.extraction.writing import ChunkWriter
from xrayfeat.options.settings import FeatureOptions, RunOptions
from xrayfeat.store.feature_store import FeatureStore
from xrayfeat.store.fingerprint import fingerprint_id

__all__ = ["ChunkJob", "compute_chunk", "prepare_worker", "run_chunks"]

log = logging.getLogger("xrayfeat")


@dataclass(frozen=True)
class ChunkJob:
    """One Dask task: decode these images, run each backbone, write one shard per store into its staging folder."""

    todo: tuple  # ((sha256, path), ...)
    stores: tuple  # ((cache_dir, fingerprint, FeatureOptions, wanted hashes), ...), one per store
    device: str
    batch_size: int
    on_error: str
    provenance: dict
    workers: int | None = None  # decode processes (--workers); None: the task's share of its machine's cores
    host_threads: tuple = ()  # ((worker address, Dask threads on its machine), ...): Session.host_threads


def run_chunks(live, todo, writers, wanted, run: RunOptions, device: str):
    """Send ``todo`` to the workers in chunks of ``run.chunk_images``; commit each finished chunk's shards here.

    Returns (computed hashes, skipped {hash: reason}, the skipped hashes whose failure belongs to their
    bytes), as :func:`~xrayfeat.extraction.runner.run_batches`.
    A chunk whose worker dies is run again elsewhere by the scheduler; its
    half-written file, or a whole shard that was never reported, stays in the
    staging folder and is cleared when the run ends, so no row is stored twice.
    """
    provenance = {"device": device, "batch_size": run.batch_size, "cluster": live.scheduler}
    host_threads = tuple(sorted(live.host_threads().items()))
    jobs = []
    for start in range(0, len(todo), run.chunk_images):
        part = tuple(todo[start : start + run.chunk_images])
        hashes = {sha for sha, _ in part}
        jobs.append(ChunkJob(
            part,
            tuple((str(Path(run.cache_dir).resolve()), config.fingerprint, config.options,
                   tuple(sha for sha, _ in part if sha in missing)) for (_, config), missing in zip(writers, wanted)
                  if hashes & missing),
            device, run.batch_size, run.on_error, provenance, run.workers, host_threads,
        ))
    for writer, _ in writers:
        writer.store.clear_staging()
    models = tuple((config.options, config.fingerprint) for _, config in writers)
    live.prepare(f"xrayfeat-models-{'-'.join(w.store.fingerprint_id for w, _ in writers)}-{device}",
                 prepare_worker, models, device)
    by_path = {str(Path(run.cache_dir).resolve() / writer.store.path.name): writer for writer, _ in writers}
    computed: set[str] = set()
    skipped: dict[str, str] = {}
    lasting: set[str] = set()
    progress = progress_bar(run.progress, len(todo))
    saved = [time.monotonic()]
    decoders: dict[str, int] = {}

    def commit(job: ChunkJob, result: dict) -> None:
        if "error" in result:
            error = XrayfeatError(result["error"])
            error.exit_code = result["exit_code"]
            raise error
        for shard in result["shards"]:
            writer = by_path[shard["store"]]
            check_weights(writer.store, shard["weights_digest"], writer.store.fingerprint["backbone"])
            writer.store.adopt(Path(shard["path"]), shard["hashes"])
            writer.note_subnormal(shard["subnormal"])
            writer.rows_written += len(shard["hashes"])
        if result["worker"] not in decoders:  # the default resolved on each machine, said once per machine
            decoders[result["worker"]] = result["decoders"]
            log.info("Dask worker on %s decodes each chunk with %s", result["worker"],
                     f"{result['decoders']} processes" if result["decoders"] else "its own thread")
        computed.update(result["computed"])
        skipped.update(result["skipped"])
        lasting.update(result["lasting"])
        progress.advance(len(job.todo))
        if time.monotonic() - saved[0] > 30:  # readers rebuild a stale index themselves; this saves them the work
            for writer in by_path.values():
                writer.store.save_index()
            saved[0] = time.monotonic()

    try:
        with progress:
            live.map(compute_chunk, jobs, on_result=commit)
    finally:
        for writer, _ in writers:
            writer.store.clear_staging()
    return computed, skipped, lasting


def compute_chunk(job: ChunkJob) -> dict:
    """(On a Dask worker) decode, compute and write one chunk; errors come back as data, not exceptions.

    xrayfeat's errors carry their one line and exit status back to the process
    that sent the job (their constructors differ, so they are not pickled).
    """
    try:
        return _compute_chunk(job)
    except XrayfeatError as exc:
        return {"error": str(exc), "exit_code": exc.exit_code}


_WORKER_MODELS: dict = {}  # (fingerprint id, device) → (model, weights digest, config) or the error: one build per worker


def prepare_worker(models: tuple, device: str) -> None:
    """(On a Dask worker, before its first task: :meth:`Session.prepare`) build each extractor once.

    An error is kept and reported by the first task that needs the model, in
    one line, instead of failing the worker.
    """
    for options, fingerprint in models:
        key = (fingerprint_id(fingerprint), device)
        if key not in _WORKER_MODELS:
            try:
                _WORKER_MODELS[key] = _worker_model(options, fingerprint, device)
            except XrayfeatError as exc:
                _WORKER_MODELS[key] = exc


def _worker_model(options: FeatureOptions, fingerprint: dict, device: str):
    """``(model, digest, config)`` built on this worker, after checking its device and that it computes the store's features."""
    import socket

    confirmed = confirm_device(device)
    if confirmed != device:
        raise XrayfeatError(f"Dask worker on {socket.gethostname()}: --device {device} was asked for but this "
                            f"worker computes on the {confirmed}; pass the --device every worker has")
    config = _worker_config(options, fingerprint, device)
    return (*build_model(config, device), config)


def _compute_chunk(job: ChunkJob) -> dict:
    import socket

    writers, models, wanted = [], [], []
    for cache_dir, fingerprint, options, hashes in job.stores:
        store = FeatureStore.open(cache_dir, fingerprint)
        key = (store.fingerprint_id, job.device)
        if key not in _WORKER_MODELS:  # a worker the preparation missed: built here (the weights are checked)
            prepare_worker(((options, fingerprint),), job.device)
        if isinstance(_WORKER_MODELS[key], XrayfeatError):
            raise _WORKER_MODELS[key]
        model, digest, config = _WORKER_MODELS[key]
        provenance = {**job.provenance, "weights_path": config.weights.path or "", "weights_digest": digest,
                      "worker": socket.gethostname()}
        writers.append((ChunkWriter(store, provenance), config))
        models.append(model)
        wanted.append(set(hashes))
    workers = job.workers if job.workers is not None else \
        default_workers(len(job.todo), job.batch_size, task_cores(dict(job.host_threads)), kept=True)
    run = RunOptions(device=job.device, batch_size=job.batch_size, workers=workers, on_error=job.on_error,
                     progress=False)
    size = writers[0][1].fingerprint["image_size"]
    try:
        computed, skipped, lasting = run_batches(list(job.todo), writers, wanted, models, run, job.device, size,
                                                 keep_pool=True)
    except WorkerError as exc:  # a decode process died: say on which machine
        raise WorkerError(f"Dask worker on {socket.gethostname()}: {exc}") from None
    shards = [shard for shard in (writer.finish() for writer, _ in writers) if shard is not None]
    return {"shards": shards, "computed": sorted(computed), "skipped": skipped, "lasting": sorted(lasting),
            "decoders": workers, "worker": socket.gethostname()}


def _worker_config(options: FeatureOptions, fingerprint: dict, device: str) -> FeatureConfig:
    """The configuration resolved on this worker; it must give the store's fingerprint, or the rows would differ."""
    import socket

    config = resolve(options, device)
    if config.fingerprint != fingerprint:
        differs = sorted(k for k in fingerprint if config.fingerprint.get(k) != fingerprint[k])
        raise XrayfeatError(
            f"Dask worker on {socket.gethostname()} would compute other features than the store holds "
            f"({', '.join(f'{k}: {config.fingerprint.get(k)} here, {fingerprint[k]} in the store' for k in differs)}); "
            f"install the same versions and KERAS_BACKEND on every worker"
        )
    return config
