"""The extraction pipeline: dataset → missing rows → decode pool → device batches → store.

The expensive path (decoding and the backbone) runs only for images whose
content hash has no row in the store. When every row is there, nothing here
imports the deep-learning framework: the fingerprint is computed from names,
versions and file digests alone.

Several backbones of the same input size can be extracted in one pass: each
image is decoded once and fed to every model.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from xrayfeat.data import images
from xrayfeat.backbones import get_spec
from xrayfeat.features.weights import WeightsInfo, resolve_weights
from xrayfeat.data.datasets import printable
from xrayfeat.devices import confirm_device, device_scope, gpu_likely, keras_backend_name
from xrayfeat.errors import DatasetError, ImageReadError, StoreError, XrayfeatError
from xrayfeat.store.fingerprint import OPTIONAL_FIELDS, fingerprint_id, keep_error, missing_parts, store_dirname
from xrayfeat.options.settings import KEEPS, FeatureOptions, RunOptions
from xrayfeat.store.feature_store import FeatureStore

log = logging.getLogger("xrayfeat")

_WARNED_RANDOM: set = set()  # say it once per process and backbone, not on every call
_SHOW_SKIPPED = 20  # skipped files named on stderr; --json and the result list them all
_SKIP_HINT = "(or pass --on-error skip to leave such files out)"


@dataclass(frozen=True)
class FeatureConfig:
    """Resolved options: the fingerprint plus what is needed to compute it."""

    options: FeatureOptions
    weights: WeightsInfo
    fingerprint: dict
    device: str  # "cpu" or "gpu" (as resolved or guessed)


@dataclass
class ExtractResult:
    """What one extraction did for one feature store.

    ``images`` counts every image file of the dataset, including those left
    out: ``images == extracted + reused + skipped``. ``skipped_reasons`` maps
    the absolute path of each file left out by ``on_error="skip"`` (at discovery
    or at decoding) to why; two paths with the same broken bytes are two entries.
    """

    store: str
    images: int
    extracted: int
    reused: int
    seconds: float
    images_per_s: float
    skipped_reasons: dict = field(default_factory=dict)
    random_weights: bool = False
    cluster: dict | None = None  # with --cluster: the scheduler, the workers and the dashboard

    @property
    def skipped(self) -> int:
        """How many image files were left out."""
        return len(self.skipped_reasons)

    @property
    def skipped_files(self) -> list[str]:
        """Each file left out as "path: reason", sorted, printable (non-UTF-8 bytes as ``\\xNN``)."""
        return [printable(f"{path}: {reason}") for path, reason in sorted(self.skipped_reasons.items())]

    @property
    def skipped_paths(self) -> set[str]:
        """The absolute paths of the files left out, as ``str(item.path)`` gives them."""
        return set(self.skipped_reasons)

    def as_json(self) -> dict:
        out = {k: getattr(self, k) for k in ("store", "images", "extracted", "reused", "skipped", "seconds", "images_per_s")}
        out["random_weights"] = self.random_weights
        if self.cluster:
            out["cluster"] = self.cluster
        if self.skipped_files:
            out["skipped_files"] = self.skipped_files
        return out


# --------------------------------------------------------------------------- resolution (no framework import)


def resolve(options: FeatureOptions, device: str = "auto", *, gpu: bool | None = None) -> FeatureConfig:
    """Weights, device, precision and the fingerprint, without loading the framework.

    ``precision="auto"`` means float32 on a CPU and mixed_bfloat16 on a GPU; with
    ``device="auto"`` the GPU is guessed here and confirmed once a model is built.
    ``keep`` enters the fingerprint only when it is not ``both``, so stores made
    before ``--keep`` keep their id (:mod:`xrayfeat.store.fingerprint`).
    """
    options.validate()
    spec = get_spec(options.backbone)
    weights = resolve_weights(spec, options.weights, options.seed)
    if device == "auto":
        device = "gpu" if (gpu if gpu is not None else gpu_likely()) else "cpu"
    precision = options.precision
    if precision == "auto":
        precision = "mixed_bfloat16" if device == "gpu" else "float32"
    fingerprint = {
        "backbone": spec.name,
        "weights": weights.identity,
        "image_size": int(options.image_size or spec.input_size),
        "preprocess": spec.preprocess,
        "decode": images.DECODE_VERSION,
        "layer": spec.layer(options.layer),
        "precision": precision,
        "store_dtype": options.store_dtype,
        "keras": importlib.metadata.version("keras"),
        "backend": keras_backend_name(),
    }
    if options.keep != OPTIONAL_FIELDS["keep"]:
        fingerprint["keep"] = options.keep
    return FeatureConfig(options, weights, fingerprint, device)


# --------------------------------------------------------------------------- decoding


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


# --------------------------------------------------------------------------- extraction


def _unique_todo(dataset, hashes: set[str]) -> list[tuple[str, str]]:
    """(sha256, path) for each hash to compute, first occurrence in dataset order."""
    seen, todo = set(), []
    for item in dataset.items:
        if item.sha256 in hashes and item.sha256 not in seen:
            seen.add(item.sha256)
            todo.append((item.sha256, str(item.path)))
    return todo


def extract(dataset, features: list[FeatureOptions] | FeatureOptions, run: RunOptions = RunOptions()) -> list[ExtractResult]:
    """Make sure every image of ``dataset`` has a row in the store of each feature option set.

    Returns one :class:`ExtractResult` per option set. Images that cannot be decoded
    stop the run (``on_error="fail"``, naming the file) or are left out and
    reported (``"skip"``). Rows computed before a failure stay in the store.
    """
    if isinstance(features, FeatureOptions):
        features = [features]
    run.validate()
    if dataset.skipped and run.on_error == "fail":  # discovered with on_error="skip"
        first = dataset.skipped[0]
        raise DatasetError(printable(f"{first.path}: {first.reason} {_SKIP_HINT}"))
    started = time.perf_counter()
    configs = [resolve(f, run.device) for f in features]
    sizes = {c.fingerprint["image_size"] for c in configs}
    if len(sizes) > 1:
        raise XrayfeatError("backbones extracted together must share --image-size; run them separately")
    for config in configs:
        if config.weights.random and (config.options.backbone, config.weights.seed) not in _WARNED_RANDOM:
            _WARNED_RANDOM.add((config.options.backbone, config.weights.seed))
            log.warning(
                "%s runs with RANDOM weights (--weights none, seed %s): features carry no ImageNet "
                "knowledge; the store is flagged random_weights", config.options.backbone, config.weights.seed,
            )

    stores = [FeatureStore.open(run.cache_dir, c.fingerprint, create=True) for c in configs]
    all_hashes = dataset.hashes
    if all(not s.missing(all_hashes) for s in stores):
        return _results(dataset, stores, configs, set(), {}, time.perf_counter() - started)

    if run.cluster:  # cold path on Dask: the workers load the framework, this process does not
        return _extract_on_cluster(dataset, stores, configs, run, started)
    # cold path: the framework is loaded from here on
    device = confirm_device(run.device)
    if device != configs[0].device:
        log.warning("--device %s: a GPU driver is present but the %s backend sees no GPU; computing on the CPU "
                    "(recorded in the store's provenance)", run.device, configs[0].fingerprint["backend"])
    if device != configs[0].device and any(f.precision == "auto" for f in features):
        log.info("device resolved to %s; precision auto follows it", device)
        configs = [resolve(f, device) for f in features]
        stores = [FeatureStore.open(run.cache_dir, c.fingerprint, create=True) for c in configs]
    log.info("extracting on %s (%s)", device, ", ".join(f"{c.options.backbone} {c.fingerprint['precision']}" for c in configs))

    computed: set[str] = set()
    skipped: dict[str, str] = {}
    def provenance(config: FeatureConfig) -> dict:
        return {"device": device, "backend": config.fingerprint["backend"], "weights_path": config.weights.path or "",
                "batch_size": run.batch_size}

    with _writing_session(dataset, stores, configs, provenance) as (writers, wanted, todo):
        if todo:
            models = [_build(config, writer, device) for writer, config in writers]
            computed, skipped = _run_batches(todo, writers, wanted, models, run, device, configs[0].fingerprint["image_size"])
    return _results(dataset, stores, configs, computed, skipped, time.perf_counter() - started)


@contextlib.contextmanager
def _writing_session(dataset, stores, configs, provenance=lambda config: {}):
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


def _build(config: FeatureConfig, writer, device: str):
    """The compiled extractor; checks random weights match those already in the store."""
    model, digest = build_model(config, device)
    check_weights(writer.store, digest, config.options.backbone)
    writer.provenance["weights_digest"] = digest
    return model


def build_model(config: FeatureConfig, device: str):
    """``(compiled extractor, digest of its weights)`` for one feature configuration."""
    from xrayfeat.features.building import build_extractor, weights_digest

    with device_scope(device):
        model, backbone = build_extractor(
            get_spec(config.options.backbone), config.weights,
            image_size=config.fingerprint["image_size"], layer=config.fingerprint["layer"],
            precision=config.fingerprint["precision"],
        )
    return model, weights_digest(backbone)


def check_weights(store: FeatureStore, digest: str, backbone: str) -> None:
    """Refuse weights that differ from those the store's rows were computed with (e.g. a changed seed build)."""
    recorded = store.provenance().get("weights_digest")
    if recorded and recorded != digest:
        raise StoreError(
            f"{store.path}: the {backbone} weights built now differ from those its rows "
            f"were computed with (weights digest {digest[:12]} vs {recorded[:12]}); use a new --cache-dir"
        )


def _run_batches(todo, writers, wanted, models, run: RunOptions, device: str, size: int):
    """Decode → batch → every model → every store that lacks the rows.

    Returns (computed hashes, skipped {hash: reason}); a hash that fails once is
    not decoded again from another path with the same bytes.
    """
    workers = default_workers(len(todo), run.batch_size) if run.workers is None else run.workers
    paths = [path for _, path in todo]
    computed: set[str] = set()
    skipped: dict[str, str] = {}
    batch_hashes: list[str] = []
    batch = np.zeros((run.batch_size, size, size, 3), dtype=np.uint8)
    progress = _progress(run.progress, len(todo))

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

    with progress:
        for (sha, path), (pixels, error) in zip(todo, decoded(paths, size, workers)):
            if error is not None:
                if run.on_error == "fail":  # the path as it can be printed: its message is the CLI's one line
                    raise ImageReadError(printable(path), f"{error} {_SKIP_HINT}")
                skipped[sha] = error
                progress.advance(1)
                continue
            batch[len(batch_hashes)] = pixels
            batch_hashes.append(sha)
            if len(batch_hashes) == run.batch_size:
                flush()
        if batch_hashes:
            batch[len(batch_hashes):] = 0
            flush()
    return computed, skipped


# --------------------------------------------------------------------------- on a Dask cluster


@dataclass(frozen=True)
class ChunkJob:
    """One Dask task: decode these images, run each backbone, write one shard per store into its staging folder."""

    todo: tuple  # ((sha256, path), ...)
    stores: tuple  # ((cache_dir, fingerprint, FeatureOptions, wanted hashes), ...), one per store
    device: str
    batch_size: int
    on_error: str
    provenance: dict


def _extract_on_cluster(dataset, stores, configs, run: RunOptions, started: float) -> list[ExtractResult]:
    """:func:`extract`'s cold path on Dask: chunks of missing rows go to workers; this process commits their shards.

    This process holds each store's write lock throughout, so it is the one
    writer; workers write complete shards into the store's staging folder and
    :meth:`FeatureStore.adopt` moves each in as its task finishes. The device is
    ``--device`` as resolved here (``auto`` guesses from this machine; pass
    ``cpu`` or ``gpu`` for a remote cluster); every worker confirms it.
    """
    from xrayfeat.distributed.session import session

    live = session(run.cluster, announce=run.progress)
    live.check_shared(run.cache_dir)
    device = configs[0].device
    log.info("extracting on Dask (%s, %d workers) on %s", live.scheduler, len(live.workers()), device)
    computed: set[str] = set()
    skipped: dict[str, str] = {}
    with _writing_session(dataset, stores, configs) as (writers, wanted, todo):  # provenance comes from the workers
        if todo:
            computed, skipped = _run_chunks(live, todo, writers, wanted, run, device)
    results = _results(dataset, stores, configs, computed, skipped, time.perf_counter() - started)
    for result in results:
        result.cluster = live.describe()
    return results


def _run_chunks(live, todo, writers, wanted, run: RunOptions, device: str):
    """Send ``todo`` to the workers in chunks of ``run.chunk_images``; commit each finished chunk's shards here.

    Returns (computed hashes, skipped {hash: reason}), as :func:`_run_batches`.
    A chunk whose worker dies is run again elsewhere by the scheduler; its
    half-written file, or a whole shard that was never reported, stays in the
    staging folder and is cleared when the run ends, so no row is stored twice.
    """
    provenance = {"device": device, "batch_size": run.batch_size, "cluster": live.scheduler}
    jobs = []
    for start in range(0, len(todo), run.chunk_images):
        part = tuple(todo[start : start + run.chunk_images])
        hashes = {sha for sha, _ in part}
        jobs.append(ChunkJob(
            part,
            tuple((str(Path(run.cache_dir).resolve()), config.fingerprint, config.options,
                   tuple(sha for sha, _ in part if sha in missing)) for (_, config), missing in zip(writers, wanted)
                  if hashes & missing),
            device, run.batch_size, run.on_error, provenance,
        ))
    for writer, _ in writers:
        writer.store.clear_staging()
    models = tuple((config.options, config.fingerprint) for _, config in writers)
    live.prepare(f"xrayfeat-models-{'-'.join(w.store.fingerprint_id for w, _ in writers)}-{device}",
                 prepare_worker, models, device)
    by_path = {str(Path(run.cache_dir).resolve() / writer.store.path.name): writer for writer, _ in writers}
    computed: set[str] = set()
    skipped: dict[str, str] = {}
    progress = _progress(run.progress, len(todo))
    saved = [time.monotonic()]

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
        computed.update(result["computed"])
        skipped.update(result["skipped"])
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
    return computed, skipped


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
        writers.append((_ChunkWriter(store, provenance), config))
        models.append(model)
        wanted.append(set(hashes))
    run = RunOptions(device=job.device, batch_size=job.batch_size, workers=0, on_error=job.on_error)
    size = writers[0][1].fingerprint["image_size"]
    computed, skipped = _run_batches(list(job.todo), writers, wanted, models, run, job.device, size)
    shards = [shard for shard in (writer.finish() for writer, _ in writers) if shard is not None]
    return {"shards": shards, "computed": sorted(computed), "skipped": skipped}


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


class _ChunkWriter:
    """Collects a chunk's rows for one store; :meth:`finish` writes them as one shard into its staging folder."""

    def __init__(self, store: FeatureStore, provenance: dict):
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


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n):
        pass


class _RichProgress:
    """A rich progress bar on stderr with images per second; gone when the run ends (transient)."""

    def __init__(self, total: int, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("extract"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self._task = self._progress.add_task("extract", total=total, rate="-")
        self._start = time.perf_counter()
        self._done = 0

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def advance(self, n: int) -> None:
        self._done += n
        rate = self._done / max(time.perf_counter() - self._start, 1e-9)
        self._progress.update(self._task, advance=n, rate=f"{rate:.1f}")


def _progress(enabled: bool, total: int):
    """A progress bar only where someone watches it: on a terminal, never in a pipe or a log file."""
    if enabled:
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            return _RichProgress(total, console)
    return _NoProgress()


def _results(dataset, stores, configs, computed, skipped, seconds) -> list[ExtractResult]:
    """One result per store, after a warning per file left out.

    ``skipped`` maps the hashes that failed to decode to why.
    """
    reasons = {str(s.path): s.reason for s in dataset.skipped}
    reasons.update((str(item.path), skipped[item.sha256]) for item in dataset.items if item.sha256 in skipped)
    _warn_skipped(reasons)
    n_computed = sum(1 for item in dataset.items if item.sha256 in computed)
    images = len(dataset.items) + len(dataset.skipped)
    return [
        ExtractResult(
            store=str(store.path),
            images=images,
            extracted=n_computed,
            reused=images - n_computed - len(reasons),
            seconds=round(seconds, 3),
            images_per_s=round(n_computed / seconds, 2) if n_computed and seconds > 0 else 0.0,
            skipped_reasons=dict(reasons),
            random_weights=config.weights.random,
        )
        for store, config in zip(stores, configs)
    ]


def _warn_skipped(reasons: dict[str, str]) -> None:
    """One warning per file left out, up to a few; the rest are counted (the result lists them all)."""
    lines = sorted(reasons.items())
    for path, reason in lines[:_SHOW_SKIPPED]:
        log.warning("%s", printable(f"skipped {path}: {reason}"))
    if len(lines) > _SHOW_SKIPPED:
        log.warning("skipped %d more files (see skipped_files in --json output)", len(lines) - _SHOW_SKIPPED)


def store_for(options: FeatureOptions, cache_dir, need, purpose: str, device: str = "auto") -> FeatureOptions:
    """The feature options of the store a command that reads the parts ``need`` should use.

    Stores of the same features that differ only in what they keep serve the
    same values, so: the store ``options.keep`` names if it exists and holds
    ``need``, else any existing one that does (``both`` first); when none
    exists, ``options`` itself (extraction then makes its store). When stores
    of these features exist but none holds ``need``, or ``options.keep`` itself
    cannot hold it, :class:`~xrayfeat.store.fingerprint.KeepError` names the store,
    what it keeps, what ``purpose`` needs and the fix.
    """
    fingerprint = resolve(options, device).fingerprint
    lacking = None
    for keep in (options.keep, *(k for k in KEEPS if k != options.keep)):
        variant = {**fingerprint, "keep": keep}
        path = Path(cache_dir) / store_dirname(variant)
        if path.is_dir() and not missing_parts(variant, need):
            return replace(options, keep=keep)
        if path.is_dir() and lacking is None:
            lacking = (path, variant)
    if lacking is None and not missing_parts(fingerprint, need):
        return options
    where, variant = lacking or (Path(cache_dir) / store_dirname(fingerprint), fingerprint)
    raise keep_error(where, variant, need, purpose)


def open_store(options: FeatureOptions, cache_dir, device: str = "auto", *, need=(),
               purpose: str = "this command") -> FeatureStore:
    """The existing store for these feature options that holds the parts ``need`` (see :func:`store_for`).

    A clear error says what to run when there is none.
    """
    options = store_for(options, cache_dir, need, purpose, device)
    config = resolve(options, device)
    if not (Path(cache_dir) / store_dirname(config.fingerprint)).is_dir():
        raise StoreError(
            f"no features for {options.backbone} ({config.fingerprint['layer']}, {config.fingerprint['precision']}, "
            f"weights {config.weights.identity}) in {cache_dir}; run `xrayfeat extract DATA --backbone {options.backbone}` "
            f"with the same feature options first"
        )
    return FeatureStore.open(cache_dir, config.fingerprint)  # a damaged or foreign store says so itself

