"""The extraction pipeline: dataset → missing rows → decode → device batches → store.

The expensive path (decoding and the backbone) runs only for images whose
content hash has no row in the store. When every row is there, nothing here
imports the deep-learning framework: the fingerprint is computed from names,
versions and file digests alone (:mod:`xrayfeat.extraction.config`).

The pipeline is reader → mapper → writer: :mod:`xrayfeat.extraction.decoding`
decodes ahead of the device, :mod:`xrayfeat.extraction.runner` feeds full batches
to every backbone, :mod:`xrayfeat.extraction.writing` holds each store's writer.
The same pipeline runs in this process or, with ``--cluster``, in chunks on Dask
workers (:mod:`xrayfeat.extraction.chunks`). Several backbones of the same input
size can be extracted in one pass: each image is decoded once and fed to every model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from xrayfeat.data.datasets import Dataset, printable
from xrayfeat.devices import confirm_device
from xrayfeat.errors import DatasetError, ImageReadError, XrayfeatError, one_line
from xrayfeat.extraction.chunks import run_chunks
from xrayfeat.extraction.config import FeatureConfig, resolve
from xrayfeat.extraction.decoding import decoder_version
from xrayfeat.extraction.runner import SKIP_HINT, build_model, check_weights, run_batches
from xrayfeat.extraction.writing import writing_session
from xrayfeat.options.settings import FeatureOptions, RunOptions
from xrayfeat.store.feature_store import FeatureStore
from xrayfeat.store.unreadable import UNREADABLE_FILE, load_unreadable

__all__ = ["ExtractResult", "MissingFeaturesError", "extract"]

log = logging.getLogger("xrayfeat")


class MissingFeaturesError(DatasetError):
    """Images the imported features lack, which xrayfeat cannot compute (exit 2: the fix is the input)."""


_WARNED_RANDOM: set = set()  # say it once per process and backbone, not on every call
_SHOW_SKIPPED = 20  # skipped files named on stderr; --json and the result list them all


@dataclass
class ExtractResult:
    """What one extraction did for one feature store.

    ``images`` counts every image file of the dataset, including those left
    out: ``images == extracted + reused + skipped``. ``skipped_reasons`` maps
    the absolute path of each file left out by ``on_error="skip"`` (at discovery
    or at decoding) to why; two paths with the same broken bytes are two entries.
    ``remembered`` counts those of them the store knew it cannot read (from an
    earlier run, under the same decoder version): they were not decoded again.
    """

    store: str
    images: int
    extracted: int
    reused: int
    seconds: float
    images_per_s: float
    skipped_reasons: dict = field(default_factory=dict)
    random_weights: bool = False
    remembered: int = 0
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

    def kept(self, dataset: Dataset) -> Dataset:
        """``dataset`` without the images this extraction left out: those with a row to read, in order.

        Every reader of an extraction's rows (fit-head, embed, ``xf.features``,
        predict and evaluate) reads ``kept(dataset).hashes``, so an image left out
        by ``on_error="skip"`` is never asked of the store. ``dataset`` itself when
        none of its images were left out.
        """
        skipped = self.skipped_paths
        if not any(str(item.path) in skipped for item in dataset.items):
            return dataset
        return replace(dataset, items=tuple(item for item in dataset.items if str(item.path) not in skipped))

    def as_json(self) -> dict:
        out = {k: getattr(self, k) for k in ("store", "images", "extracted", "reused", "skipped", "seconds", "images_per_s")}
        out["random_weights"] = self.random_weights
        if self.cluster:
            out["cluster"] = self.cluster
        if self.skipped_files:
            out["skipped_files"] = self.skipped_files
        if self.remembered:
            out["remembered_unreadable"] = self.remembered
        return out


def extract(dataset, features: list[FeatureOptions] | FeatureOptions, run: RunOptions = RunOptions()) -> list[ExtractResult]:
    """Make sure every image of ``dataset`` has a row in the store of each feature option set.

    Returns one :class:`ExtractResult` per option set. Images that cannot be decoded
    stop the run (``on_error="fail"``, naming the file) or are left out and
    reported (``"skip"``). Rows computed before a failure stay in the store.

    A file left out at decoding is remembered by its store (by content hash,
    :mod:`xrayfeat.store.unreadable`), so a rerun neither decodes it again nor
    loads the framework for it: it is skipped again, or, with ``"fail"``, named.
    """
    if isinstance(features, FeatureOptions):
        features = [features]
    run.validate()
    if dataset.skipped and run.on_error == "fail":  # discovered with on_error="skip"
        first = dataset.skipped[0]
        raise DatasetError(one_line(f"{first.path}: {first.reason} {SKIP_HINT}"))
    started = time.perf_counter()
    configs = [resolve(f, run.device, cache_dir=run.cache_dir) for f in features]
    if any(c.options.imported for c in configs):
        return [_imported(dataset, configs, run, started)]
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
    decoder = decoder_version()
    lacking = {str(s.path): s.missing(dataset.hashes) for s in stores}
    known = {path: _known(path, lacks, decoder) for path, lacks in lacking.items()}
    if run.on_error == "fail":
        _fail_on_known(dataset, known)
    if all(set(lacks) <= set(known[path]) for path, lacks in lacking.items()):
        return _results(dataset, stores, configs, set(), {}, known, time.perf_counter() - started)

    if run.cluster:  # cold path on Dask: the workers load the framework, this process does not
        return _extract_on_cluster(dataset, stores, configs, run, started, decoder)
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

    with writing_session(dataset, stores, configs, provenance, decoder=decoder) as session:
        if session.todo:
            models = [_build(config, writer, device) for writer, config in session.writers]
            computed, skipped, lasting = run_batches(session.todo, session.writers, session.wanted, models, run, device,
                                                     configs[0].fingerprint["image_size"])
            session.remember({sha: skipped[sha] for sha in lasting})
    return _results(dataset, stores, configs, computed, skipped, session.known, time.perf_counter() - started)


def _imported(dataset, configs, run: RunOptions, started: float) -> ExtractResult:
    """:func:`extract` for imported features: nothing can be computed, so images the file lacks are refused or left out.

    With ``on_error="fail"`` one line counts the images the imported file lacks
    and says what to do; with ``"skip"`` they are left out, each with why.
    """
    if len(configs) > 1:
        raise XrayfeatError(f"{', '.join(c.options.backbone for c in configs)}: imported features are read one name at a "
                            f"time, never together with others: name one --backbone")
    [config] = configs
    store = FeatureStore.open(run.cache_dir, config.fingerprint)
    name = config.options.backbone
    lacking = store.missing(dataset.hashes)
    if lacking and run.on_error == "fail":
        first = next(item.path for item in dataset.items if item.sha256 == lacking[0])
        raise MissingFeaturesError(one_line(
            f"{len(lacking)} of {len(set(dataset.hashes))} images of {dataset.root} are not in the features imported "
            f"as {name!r} from {config.weights.path} (first: {first}), and xrayfeat cannot compute imported features: "
            f"leave those images out of the input (fit-head, embed, evaluate and extract take --on-error skip), or "
            f"import a file that also holds them (`xrayfeat cache import FILE --name NAME`)"))
    skipped = dict.fromkeys(lacking, f"not in the features imported as {name!r}")
    return _results(dataset, [store], [config], set(), skipped, {}, time.perf_counter() - started)[0]


def _known(path: str, lacking: list[str], decoder: str) -> dict[str, str]:
    """Of the hashes a store lacks, those it knows it cannot read under ``decoder`` (sha256 → reason)."""
    if not lacking:
        return {}
    record = load_unreadable(path, decoder)
    return {sha: record[sha] for sha in lacking if sha in record}


def _fail_on_known(dataset, known: dict[str, dict[str, str]]) -> None:
    """With ``on_error="fail"``: the first file a store knows it cannot read, named as decoding would name it."""
    reasons = {sha: reason for record in known.values() for sha, reason in record.items()}
    for item in dataset.items:
        if item.sha256 in reasons:
            raise ImageReadError(one_line(item.path), f"{reasons[item.sha256]} {SKIP_HINT}")


def _build(config: FeatureConfig, writer, device: str):
    """The compiled extractor; checks random weights match those already in the store."""
    model, digest = build_model(config, device)
    check_weights(writer.store, digest, config.options.backbone)
    writer.provenance["weights_digest"] = digest
    return model


def _extract_on_cluster(dataset, stores, configs, run: RunOptions, started: float, decoder: str) -> list[ExtractResult]:
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
    with writing_session(dataset, stores, configs, decoder=decoder) as session:  # provenance comes from the workers
        if session.todo:
            computed, skipped, lasting = run_chunks(live, session.todo, session.writers, session.wanted, run, device)
            session.remember({sha: skipped[sha] for sha in lasting})
    results = _results(dataset, stores, configs, computed, skipped, session.known, time.perf_counter() - started)
    for result in results:
        result.cluster = live.describe()
    return results


def _results(dataset, stores, configs, computed, skipped, known, seconds) -> list[ExtractResult]:
    """One result per store, after a warning per file left out.

    ``skipped`` maps the hashes that failed to decode to why; ``known`` maps
    each store's path to the hashes it knew it cannot read (not decoded) and why.
    """
    found = {str(s.path): s.reason for s in dataset.skipped}
    found.update((str(item.path), skipped[item.sha256]) for item in dataset.items if item.sha256 in skipped)
    remembered = {
        path: {str(item.path): record[item.sha256] for item in dataset.items if item.sha256 in record}
        for path, record in known.items()
    }
    _warn_skipped({**found, **{path: reason for by_path in remembered.values() for path, reason in by_path.items()}})
    n_computed = sum(1 for item in dataset.items if item.sha256 in computed)
    images = len(dataset.items) + len(dataset.skipped)
    results = []
    for store, config in zip(stores, configs):
        reasons = {**found, **remembered.get(str(store.path), {})}
        n_known = len(reasons) - len(found)
        if n_known:
            log.warning("%d known unreadable file%s skipped (remembered from an earlier run); to try %s again, delete %s",
                        n_known, "s" if n_known > 1 else "", "them" if n_known > 1 else "it",
                        store.path / UNREADABLE_FILE)
        results.append(ExtractResult(
            store=str(store.path),
            images=images,
            extracted=n_computed,
            reused=images - n_computed - len(reasons),
            seconds=round(seconds, 3),
            images_per_s=round(n_computed / seconds, 2) if n_computed and seconds > 0 else 0.0,
            skipped_reasons=reasons,
            random_weights=config.weights.random,
            remembered=n_known,
        ))
    return results


def _warn_skipped(reasons: dict[str, str]) -> None:
    """One warning per file left out, up to a few; the rest are counted (the result lists them all)."""
    lines = sorted(reasons.items())
    for path, reason in lines[:_SHOW_SKIPPED]:
        log.warning("%s", one_line(f"skipped {path}: {reason}"))
    if len(lines) > _SHOW_SKIPPED:
        log.warning("skipped %d more files (see skipped_files in --json output)", len(lines) - _SHOW_SKIPPED)
