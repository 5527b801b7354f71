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
from dataclasses import dataclass, field

import numpy as np

from . import images
from .backbones import WeightsInfo, get_spec, resolve_weights
from .devices import confirm_device, device_scope, gpu_likely, keras_backend_name
from .errors import ImageReadError, StoreError, XrayfeatError
from .options import FeatureOptions, RunOptions
from .store import FeatureStore

log = logging.getLogger("xrayfeat")

_WARNED_RANDOM: set = set()  # say it once per process and backbone, not on every call


@dataclass(frozen=True)
class FeatureConfig:
    """Resolved options: the fingerprint plus what is needed to compute it."""

    options: FeatureOptions
    weights: WeightsInfo
    fingerprint: dict
    device: str  # "cpu" or "gpu" (as resolved or guessed)


@dataclass
class ExtractResult:
    store: str
    images: int
    extracted: int
    reused: int
    skipped: int
    seconds: float
    images_per_s: float
    skipped_files: list = field(default_factory=list)  # "path: reason", one per image left out
    random_weights: bool = False

    @property
    def skipped_paths(self) -> set[str]:
        """The paths of the images left out by ``on_error="skip"``."""
        return {line.split(": ")[0] for line in self.skipped_files}

    def as_json(self) -> dict:
        out = {k: getattr(self, k) for k in ("store", "images", "extracted", "reused", "skipped", "seconds", "images_per_s")}
        out["random_weights"] = self.random_weights
        if self.skipped_files:
            out["skipped_files"] = self.skipped_files
        return out


# --------------------------------------------------------------------------- resolution (no framework import)


def resolve(options: FeatureOptions, device: str = "auto", *, gpu: bool | None = None) -> FeatureConfig:
    """Weights, device, precision and the fingerprint, without loading the framework.

    ``precision="auto"`` means float32 on a CPU and mixed_bfloat16 on a GPU; with
    ``device="auto"`` the GPU is guessed here and confirmed once a model is built.
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
    with contextlib.ExitStack() as stack:
        writers = []
        for store, config in sorted(zip(stores, configs), key=lambda pair: str(pair[0].path)):
            writer = stack.enter_context(store.writer(
                {"device": device, "backend": config.fingerprint["backend"],
                 "weights_path": config.weights.path or "", "batch_size": run.batch_size},
                on_wait=lambda s=store: log.warning("%s is being written by another process; waiting for it", s.path),
            ))
            writers.append((writer, config))
        wanted = [set(writer.missing(all_hashes)) for writer, _ in writers]
        todo = _unique_todo(dataset, set().union(*wanted))
        if todo:
            models = [_build(config, writer, device) for writer, config in writers]
            computed, skipped = _run_batches(todo, writers, wanted, models, run, device, configs[0].fingerprint["image_size"])
        for writer, _ in writers:
            writer.warn_subnormal()
    return _results(dataset, stores, configs, computed, skipped, time.perf_counter() - started)


def _build(config: FeatureConfig, writer, device: str):
    """The compiled extractor; checks random weights match those already in the store."""
    from .backbones import build_extractor, weights_digest

    with device_scope(device):
        model, backbone = build_extractor(
            get_spec(config.options.backbone), config.weights,
            image_size=config.fingerprint["image_size"], layer=config.fingerprint["layer"],
            precision=config.fingerprint["precision"],
        )
    digest = weights_digest(backbone)
    recorded = writer.store.provenance().get("weights_digest")
    if recorded and recorded != digest:
        raise StoreError(
            f"{writer.store.path}: the {config.options.backbone} weights built now differ from those its rows "
            f"were computed with (weights digest {digest[:12]} vs {recorded[:12]}); use a new --cache-dir"
        )
    writer.provenance["weights_digest"] = digest
    return model


def _run_batches(todo, writers, wanted, models, run: RunOptions, device: str, size: int):
    """Decode → batch → every model → every store that lacks the rows.

    Returns (computed hashes, skipped {hash: reason}).
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
                if run.on_error == "fail":
                    raise ImageReadError(path, f"{error} (or pass --on-error skip to leave such files out)")
                log.warning("skipped %s: %s", path, error)
                skipped[sha] = f"{path}: {error}"
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


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n):
        pass


class _RichProgress:
    """A rich progress bar on stderr with images per second."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("extract"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn(),
            console=Console(stderr=True),
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
    return _RichProgress(total) if enabled else _NoProgress()


def _results(dataset, stores, configs, computed, skipped, seconds) -> list[ExtractResult]:
    results = []
    n_computed = sum(1 for item in dataset.items if item.sha256 in computed)
    n_skipped = sum(1 for item in dataset.items if item.sha256 in skipped)
    for store, config in zip(stores, configs):
        results.append(ExtractResult(
            store=str(store.path),
            images=len(dataset.items),
            extracted=n_computed,
            reused=len(dataset.items) - n_computed - n_skipped,
            skipped=n_skipped,
            seconds=round(seconds, 3),
            images_per_s=round(n_computed / seconds, 2) if n_computed and seconds > 0 else 0.0,
            skipped_files=sorted(skipped.values()),
            random_weights=config.weights.random,
        ))
    return results


def open_store(options: FeatureOptions, cache_dir, device: str = "auto") -> FeatureStore:
    """The existing store for these feature options; a clear error says what to run when absent."""
    config = resolve(options, device)
    try:
        return FeatureStore.open(cache_dir, config.fingerprint)
    except StoreError:
        raise StoreError(
            f"no features for {options.backbone} ({config.fingerprint['layer']}, {config.fingerprint['precision']}, "
            f"weights {config.weights.identity}) in {cache_dir}; run `xrayfeat extract DATA --backbone {options.backbone}` "
            f"with the same feature options first"
        ) from None

