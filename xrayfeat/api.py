"""The notebook face of xrayfeat: a folder (or manifest, or Dataset) in, arrays, runs and maps out.

Every function takes the data as a folder, a CSV manifest or a
:class:`~xrayfeat.data.datasets.Dataset`, and options either as keyword arguments
(the field names of :class:`~xrayfeat.options.settings.FeatureOptions`,
:class:`~xrayfeat.options.settings.RunOptions`, :class:`~xrayfeat.options.settings.HeadOptions`)
or as those dataclasses. Each CLI command is one of these calls (or the study
function it wraps), so a notebook can do everything the command line does.
See ``docs/python-api.md`` for a walk from a folder of X-rays to a trained run.
"""

from __future__ import annotations

import os
from dataclasses import fields


from xrayfeat.data.datasets import Dataset
from xrayfeat.data.datasets import discover as _discover
from xrayfeat.options.settings import EmbedOptions, FeatureOptions, HeadOptions, RunOptions, backbone_names, renamed_keywords
from xrayfeat.options.constraints import Choice, Interval, check_value, declaration, validate_params
from xrayfeat.runs.loaded import Run, load_run
from xrayfeat.runtime import library_call
from xrayfeat.store.shards import PARTS



def _field_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def _pop(cls, kwargs: dict, *, skip=()) -> dict:
    """Remove and return the keyword arguments that are fields of option class ``cls`` (except ``skip``)."""
    return {name: kwargs.pop(name) for name in sorted(_field_names(cls) - set(skip)) if name in kwargs}


def _given(cls, value, built: dict):
    """``value`` when the caller passed an options object (then no loose keywords for it), else ``cls(**built)``."""
    if value is None:
        return cls(**built)
    if not isinstance(value, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(value).__name__}")
    if built:
        raise TypeError(f"pass either a {cls.__name__} or its fields as keywords, not both ({', '.join(built)})")
    return value


def _no_leftovers(kwargs: dict, where: str) -> None:
    if kwargs:
        raise TypeError(f"{where}() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")


def _features(backbone, given: FeatureOptions | None, kwargs: dict) -> FeatureOptions:
    """The FeatureOptions given, or built from ``backbone`` and the feature keywords in ``kwargs`` (popped)."""
    built = _pop(FeatureOptions, kwargs, skip=("backbone",))
    if given is not None:
        return _given(FeatureOptions, given, built)
    if backbone is None:
        raise TypeError("pass a backbone (e.g. 'vgg16') or features=FeatureOptions(...)")
    return FeatureOptions(backbone=backbone, **built)


@library_call
@validate_params({"cache_dir": {**declaration(RunOptions, "cache_dir"), "none": True},
                  "on_error": declaration(RunOptions, "on_error")})
def discover(data, *, classes=None, cache_dir: str | os.PathLike | None = "data_cache",
             on_error: str = "fail") -> Dataset:
    """The labelled images of a folder or manifest (``Dataset``); ``Dataset`` in, the same out.

    Layouts: ``DATA/<split>/<class>/*``, ``DATA/<class>/*`` or a CSV manifest
    (``path,label[,split][,patient_id][,source]``). File hashes are remembered in
    ``cache_dir/file-hashes.json`` (``cache_dir=None``: not remembered).
    ``on_error="skip"`` leaves out files that cannot be images (empty, unreadable,
    a text file in a class folder), each listed in ``Dataset.skipped`` with why.
    """
    if isinstance(data, Dataset):
        return data.select_classes(classes) if classes else data
    hash_cache = None
    if cache_dir is not None:
        from xrayfeat.store.catalog import hash_memory

        hash_cache = hash_memory(cache_dir)  # a file there: one line, nothing made
    return _discover(data, classes=list(classes) if classes else None, hash_cache=hash_cache, on_error=on_error)


@library_call
def extract(data, backbone=None, *, features: FeatureOptions | None = None, run: RunOptions | None = None,
            classes=None, **options):
    """Compute what the feature cache lacks for ``data``; one :class:`~xrayfeat.extraction.pipeline.ExtractResult`.

    ``backbone`` may also be a list, a comma-separated text or ``"all"`` (several
    backbones of one input size share a decoding pass); the result is then a list. Keyword options: the fields of
    FeatureOptions and RunOptions (``weights="none"``, ``image_size=64``,
    ``cache_dir=...``, ``device="cpu"``...).
    """
    from xrayfeat.extraction.pipeline import extract as _extract

    run = _given(RunOptions, run, _pop(RunOptions, options))
    feature_kw = _pop(FeatureOptions, options, skip=("backbone",))
    _no_leftovers(options, "extract")
    if features is not None:
        feature_list = [_given(FeatureOptions, features, feature_kw)]
    else:
        names = backbone_names(backbone) if isinstance(backbone, str) else [backbone] if backbone is None else list(backbone)
        feature_list = [FeatureOptions(backbone=b, **feature_kw) for b in names]
    results = _extract(discover(data, classes=classes, cache_dir=run.cache_dir, on_error=run.on_error), feature_list, run)
    return results[0] if len(results) == 1 else results


@library_call
@validate_params({"part": Choice(PARTS)})
def features(data, backbone=None, *, part: str = "pooled", features: FeatureOptions | None = None,
             run: RunOptions | None = None, classes=None, **options):
    """``X, y, meta``: cached features of every image of ``data``, extracting only what is missing.

    ``part``: ``"pooled"`` (n, C) or ``"spatial"`` (n, H, W, C), as float32.
    ``y``: class indices into ``meta.attrs["classes"]`` (sorted class names);
    for a multi-label dataset, the multi-hot (n, findings) float32 matrix of
    its findings as the data gives them (1, 0, -1 uncertain, NaN blank; apply a
    policy with :func:`xrayfeat.data.labels.targets`), the findings in
    ``meta.attrs["classes"]`` and ``meta.attrs["multilabel"]`` True.
    ``meta``: a pandas DataFrame, one row per image in the dataset's order, with
    path, sha256, label, split, patient_id and source, and a ``group:<name>``
    column per patient group the data gives. Images skipped by
    ``on_error="skip"`` are left out of all three. The store is the existing one
    of these features that keeps ``part``, whatever its ``keep`` (as the CLI
    commands choose it: :func:`~xrayfeat.extraction.selection.store_for`).
    """
    import pandas as pd

    from xrayfeat.extraction.selection import store_for
    from xrayfeat.extraction.transformer import read_part

    run = _given(RunOptions, run, _pop(RunOptions, options))
    features = _features(backbone, features, options)
    _no_leftovers(options, "features")
    features = store_for(features, run.cache_dir, (part,), f"features(part={part!r})", run.device)
    dataset = discover(data, classes=classes, cache_dir=run.cache_dir, on_error=run.on_error)
    result, kept, X = read_part(dataset, features, run, part)
    items = kept.items
    y = kept.targets if kept.multilabel else kept.labels
    meta = pd.DataFrame({
        "path": [str(i.path) for i in items], "sha256": [i.sha256 for i in items],
        "label": [i.label for i in items], "split": [i.split for i in items],
        "patient_id": [i.patient_id for i in items], "source": [i.source for i in items],
        **{f"group:{name}": [i.group(name) for i in items] for name in kept.group_names},
    })
    meta.attrs["classes"] = list(dataset.classes)
    meta.attrs["multilabel"] = dataset.multilabel
    meta.attrs["store"] = str(result.store)
    return X, y, meta


@library_call
def fit_head(data=None, backbone=None, *, features: FeatureOptions | None = None, head: HeadOptions | None = None,
             run: RunOptions | None = None, classes=None, out=None, runs_root="runs", overwrite: bool = False,
             config=None, **options):
    """Train the seed's head and the baselines on cached features; the written run as a :class:`~xrayfeat.runs.loaded.Run`.

    Keyword options: fields of FeatureOptions, HeadOptions and RunOptions, each
    name meaning what it means everywhere: ``batch_size`` is the backbone's (as in
    :func:`extract`), ``head_batch_size`` the head's. ``seed`` seeds both the
    random weights and the study. The names of the previous release (``lr``,
    ``n_boot``, ``backend``, ``extract_batch_size``; see
    :data:`~xrayfeat.options.settings.RENAMED`) still work, with a ``DeprecationWarning``.

    A folder ``out`` that holds a run is refused; ``overwrite=True`` replaces
    that run once the new one is complete (re-running a notebook cell).

    ``config="RUN/config.json"`` (or the run folder) runs that run's study again
    with the options it recorded (``fit-head --config``; see
    :mod:`xrayfeat.runs.replay`): beside it only ``data`` (where the run's data
    is now; default: where the record says), ``out``, ``runs_root``,
    ``overwrite`` and how to run (``cache_dir``, ``workers``, ``cluster``,
    ``chunk_images``, ``progress``). Data that differs from the run's
    ``splits.csv`` is refused before anything is computed; other library versions
    than the run recorded are warned about, and the study runs.
    """
    from xrayfeat.runs.fit import fit_head as _fit_head

    if config is not None:
        return _replay(config, data, backbone, features, head, run, classes, out, runs_root, overwrite, options)
    if data is None:
        raise TypeError("fit_head() needs data (a folder, a manifest or a Dataset), or config='RUN/config.json' "
                        "to run a recorded study again")
    options = renamed_keywords("fit_head", options)
    run = _given(RunOptions, run, _pop(RunOptions, options))
    seed = options.get("seed", 0)  # one seed for the random weights and the study, as on the command line
    feature_kw = _pop(FeatureOptions, options, skip=("backbone", "seed"))
    if features is None:
        feature_kw["seed"] = seed
    features = _features(backbone, features, feature_kw)
    head = _given(HeadOptions, head, _pop(HeadOptions, options))
    _no_leftovers(options, "fit_head")
    dataset = discover(data, classes=classes, cache_dir=run.cache_dir, on_error=run.on_error)
    result = _fit_head(dataset, features, head, run, out=out, runs_root=runs_root, overwrite=overwrite)
    return load_run(result.run)


#: What ``fit_head(config=...)`` takes beside the record, as keywords: how the study runs, never what it computes.
_REPLAY_KEYWORDS = ("cache_dir", "workers", "cluster", "chunk_images", "progress")


def _replay(config, data, backbone, features, head, run, classes, out, runs_root, overwrite, options) -> Run:
    """``fit_head(config=...)``: the recorded study again (:func:`xrayfeat.runs.replay.replay`), loaded."""
    from xrayfeat.runs.replay import replay

    given = [name for name, value in (("backbone", backbone), ("features", features), ("head", head), ("run", run),
                                      ("classes", classes)) if value is not None]
    given += sorted(set(options) - set(_REPLAY_KEYWORDS))
    if given:
        raise TypeError(f"fit_head(config=...) runs the recorded study with its own options; got {', '.join(given)} "
                        f"(beside config: data, out, runs_root, overwrite, {', '.join(_REPLAY_KEYWORDS)}); for other "
                        f"options, call fit_head without config (a new study)")
    result = replay(config, data=data, out=out, runs_root=runs_root, overwrite=overwrite, **options)
    return load_run(result.run)


@library_call
@validate_params({"method": declaration(EmbedOptions, "method"), "seed": declaration(EmbedOptions, "seed")})
def embed(data, backbone=None, *, out, method: str = "tsne", seed: int = 0, from_run=None,
          features: FeatureOptions | None = None, run: RunOptions | None = None, classes=None, **options):
    """A 2-D map (PCA, then t-SNE or UMAP) of pooled features, or of a run head's penultimate layer, saved to ``out``.

    Images left out by ``on_error="skip"`` are not on the map; the outcome's ``skipped_files`` lists them.
    """
    from xrayfeat.runs.maps import embed_map
    from xrayfeat.runs.outputs import check_output

    run = _given(RunOptions, run, _pop(RunOptions, options))
    features = None if from_run is not None else _features(backbone, features, options)
    _no_leftovers(options, "embed")
    check_output(out, "embed", run=from_run.path if isinstance(from_run, Run) else from_run,  # before discovery
                 cache=run.cache_dir)
    dataset = discover(data, classes=classes, cache_dir=run.cache_dir, on_error=run.on_error)
    if from_run is not None and not isinstance(from_run, Run):
        from_run = load_run(from_run)
    return embed_map(dataset, features, out, EmbedOptions(method=method, seed=seed), from_run=from_run, run=run)


@library_call
def predict(run, inputs, **options):
    """Classify new images with a trained run (a :class:`~xrayfeat.runs.loaded.Run` or its folder); see ``Run.predict``."""
    return (run if isinstance(run, Run) else load_run(run)).predict(inputs, **options)


@library_call
def explain(run, inputs, out, **options):
    """Grad-CAM overlays of a trained run's head on images, written to the folder ``out``; see ``Run.explain``."""
    return (run if isinstance(run, Run) else load_run(run)).explain(inputs, out, **options)


@library_call
def evaluate(run, data, **options):
    """Score a trained run on another site's labelled data; see ``Run.evaluate``."""
    return (run if isinstance(run, Run) else load_run(run)).evaluate(data, **options)


# --------------------------------------------------------------------------- the rest of the CLI, call by call


@library_call
def inspect(data, *, classes=None):
    """``xrayfeat inspect DATA``: counts per split and class, formats, sizes, duplicates and patient overlap.

    ``data``: a folder, a manifest or a Dataset. Returns an
    :class:`~xrayfeat.data.summary.Inspection`; ``as_json()`` is the command's ``--json``.
    """
    from xrayfeat.data.summary import inspect_data

    return inspect_data(data, classes=classes)


@library_call
def convert_manifest(dataset: str, root, out, **filters):
    """``xrayfeat manifest DATASET ROOT --out OUT``: a public dataset's official tables as a manifest, reading no image.

    ``dataset``: ``nih``, ``chexpert``, ``mimic``, ``rsna`` or ``covidx``
    (:data:`~xrayfeat.data.converters.convert.CONVERTERS`). ``out`` is a ``.csv``
    in ``root`` or a folder above it; its record is written beside it as
    ``out.json``. ``filters``: ``frontal_only=True`` (chexpert, mimic),
    ``valid_as="val"`` (chexpert), ``patients=PATH`` (mimic), ``seed=N`` (the
    patient-grouped split of nih without its split lists, and of rsna). Returns a
    :class:`~xrayfeat.data.converters.convert.ConversionResult` (counts, missing
    images); ``as_json()`` is the record and the command's ``--json``.
    """
    from xrayfeat.data.converters.convert import convert_manifest as _convert_manifest

    return _convert_manifest(dataset, root, out, **filters)


@library_call
def describe(backbone: str, n_classes: int, *, image_size: int | None = None, units: int = 256,
             dropout: float = 0.3, l2: float = 1e-3):
    """``xrayfeat describe``: the seed's full model (frozen backbone + head) and its parameter counts.

    Returns a :class:`~xrayfeat.models.head.ModelDescription` (``total``,
    ``trainable``, ``non_trainable``, Keras' ``summary`` lines); ``as_json()`` is the command's ``--json``.
    """
    from xrayfeat.models.head import describe_seed_model

    for cls, name, value in ((FeatureOptions, "image_size", image_size), (HeadOptions, "units", units),
                             (HeadOptions, "dropout", dropout), (HeadOptions, "l2", l2)):
        spec = declaration(cls, name)
        check_value("describe", name, value, spec["check"], spec["none"])
    check_value("describe", "backbone", backbone, declaration(FeatureOptions, "backbone")["check"])
    check_value("describe", "n_classes", n_classes, Interval(2, None, integer=True))
    return describe_seed_model(backbone, n_classes, image_size=image_size, units=units, dropout=dropout, l2=l2)


@library_call
def export(run, out, *, format: str = "keras", overwrite: bool = False):
    """``xrayfeat export RUN --out OUT``: the run's deployable model (uint8 pixels in, class probabilities out).

    ``format``: ``"keras"``, ``"savedmodel"``, ``"onnx"`` or ``"litert"``
    (:class:`~xrayfeat.options.settings.ExportOptions`). The folder also holds
    ``export.json`` (the contract) and ``MODEL_CARD.md``. Returns an :class:`~xrayfeat.runs.export.ExportResult`. A previous export
    at ``out`` is replaced; a folder holding anything else is refused unless
    ``overwrite=True`` (the new export takes its place only once complete).
    """
    from xrayfeat.runs.export import export_run

    return export_run(run, out, format=format, overwrite=overwrite)


@library_call
def cache_ls(cache_dir="data_cache"):
    """``xrayfeat cache ls``: the feature stores of ``cache_dir`` (:class:`~xrayfeat.store.catalog.CacheListing`)."""
    from xrayfeat.store.catalog import cache_ls as _cache_ls

    return _cache_ls(cache_dir)


@library_call
def cache_verify(cache_dir="data_cache"):
    """``xrayfeat cache verify``: every shard and index checked (:class:`~xrayfeat.store.catalog.CacheCheck`; ``.ok``)."""
    from xrayfeat.store.catalog import cache_verify as _cache_verify

    return _cache_verify(cache_dir)


@library_call
def cache_gc(cache_dir="data_cache"):
    """``xrayfeat cache gc``: repair, clean up and compact every store (:class:`~xrayfeat.store.catalog.CacheCleanup`)."""
    from xrayfeat.store.catalog import cache_gc as _cache_gc

    return _cache_gc(cache_dir)


@library_call
def import_features(file, name: str, *, cache_dir="data_cache", model: str = "", source_url: str = "",
                    description: str = "", root=None, replace: bool = False):
    """``xrayfeat cache import FILE --name NAME``: embeddings computed elsewhere as a store that ``backbone=name`` selects.

    ``file``: an ``.npz`` (arrays ``sha256`` or ``path``, ``features`` (n, c),
    optionally ``spatial`` (n, h, w, c)), a ``.csv`` (a ``sha256`` or ``path``
    column, one numeric column per feature) or a ``.parquet`` (as the CSV;
    needs pyarrow). ``path`` keys are hashed now, relative to ``root`` (default:
    the file's folder). ``model``, ``source_url``, ``description``: the
    provenance you declare, part of the store's fingerprint with the file's
    SHA-256. ``replace``: point ``name`` at these features when it names others.
    Returns an :class:`~xrayfeat.store.imported.ImportResult`; see
    :mod:`xrayfeat.store.imported` for what is refused.
    """
    from xrayfeat.store.imported import import_features as _import_features

    return _import_features(file, name, cache_dir=cache_dir, model=model, source_url=source_url,
                            description=description, root=root, replace_name=replace)
