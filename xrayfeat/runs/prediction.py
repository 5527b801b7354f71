"""Using a trained run on new images: the run's own features, its head and every saved baseline.

:func:`predict` takes image files, folders (no class folders needed) or CSVs of
paths, computes the run's own features (the store fingerprint the run was
trained on: same backbone, weights, input size, cut layer and precision) into
the run's cache folder or another one, and returns one row per image with each
model's predicted class and class probabilities. Images already in the cache
are not computed again, so predicting twice costs only the models.

Before anything is computed it refuses, in one line, what would give wrong
numbers: a run whose artifacts changed since they were written (sha256), weights
that are not installed, or a feature fingerprint this installation cannot
reproduce (another Keras version or backend changes feature values).

The features are read from any store of the run's features that keeps the
parts its models read (:func:`model_parts`): the head's input (``spatial``, or
``pooled`` for a ``--head-input pooled`` run) and pooled vectors for the
logreg and svm baselines; what a store keeps never changes a value.

Every model's probabilities go through the calibrator fit-head fitted on
validation (``fit-head --calibrate``; none for runs without one), and then the
decision (:func:`run_decisions`, :func:`xrayfeat.analysis.decision.decide`):
``decision="argmax"`` or ``"threshold"`` (the run's thresholds, chosen on those
calibrated validation probabilities), by default the rule the run recorded
(``metrics.json``'s ``decision``; argmax for runs written before it, each
finding at its threshold for a multi-label run). The table says, per model,
the rule applied (``<model>:decision``) and each threshold
(``<model>:threshold:<class>``), and with more than two classes by thresholds
the classes called one-vs-rest (``<model>:called``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from xrayfeat.analysis.calibrators import apply_calibrator
from xrayfeat.analysis.decision import NONE, decide
from xrayfeat.errors import DatasetError, XrayfeatError, one_line
from xrayfeat.extraction.config import resolve
from xrayfeat.extraction.pipeline import extract
from xrayfeat.extraction.selection import store_for
from xrayfeat.fileio import atomic_write, csv_text, writing_to
from xrayfeat.store.fingerprint import FINGERPRINT_FIELDS, fingerprint_id, is_imported
from xrayfeat.options.constraints import check_value, declaration
from xrayfeat.options.settings import DecisionOptions, FeatureOptions, RunOptions
from xrayfeat.store.feature_store import FeatureStore
from xrayfeat.models.baselines import columns_for, read_pixels
from xrayfeat.runs.outputs import check_output

log = logging.getLogger("xrayfeat")


class ReproduceError(XrayfeatError):
    """This installation would compute features other than those the run was trained on."""


@dataclass
class Scored:
    """Every model's class probabilities for a set of images (rows in the dataset's order).

    ``dataset`` holds the images scored: those given, less any left out at
    decoding by ``on_error="skip"``, which ``skipped_files`` lists ("path: reason").
    """

    dataset: object
    probabilities: dict  # model name -> (n, K)
    extracted: int
    reused: int
    store: str
    skipped_files: list[str] = field(default_factory=list)
    calibration: str | None = None  # the run's calibration method, applied to every model's probabilities


@dataclass
class PredictResult:
    """What :func:`predict` produced: the table, and the file it was written to (if any)."""

    table: object  # pandas DataFrame
    out: str | None
    images: int
    extracted: int
    reused: int
    models: list[str]
    counts: dict = field(default_factory=dict)  # model -> {class: images predicted as it}
    decisions: dict = field(default_factory=dict)  # model -> {"decision", "thresholds": {class: t} | None}
    undecided: dict = field(default_factory=dict)  # model -> images no class reached the threshold of (K > 2)
    calibration: str | None = None  # the calibration applied to the probabilities (fit-head --calibrate)

    def as_json(self) -> dict:
        return {"out": self.out, "images": self.images, "extracted": self.extracted, "reused": self.reused,
                "models": self.models, "counts": self.counts, "decisions": self.decisions,
                "undecided": self.undecided, "calibration": self.calibration}

    def __repr__(self) -> str:
        from xrayfeat.runs.display import predict_repr

        return predict_repr(self)

    def _repr_html_(self) -> str:
        """In a notebook: the images predicted as each class per model, and the table's first rows."""
        from xrayfeat.runs.display import predict_html

        return predict_html(self)


def run_feature_options(run) -> FeatureOptions:
    """The run's feature options with everything "auto" pinned to what the run's store holds."""
    fingerprint = run.record.store["fingerprint"]
    if is_imported(fingerprint):  # nothing to pin: the name selects the imported store
        return run.feature_options()
    return replace(run.feature_options(), precision=fingerprint["precision"], image_size=fingerprint["image_size"],
                   layer=fingerprint["layer"].split(":")[-1] if fingerprint.get("layer") else None)


def check_reproducible(run, options: FeatureOptions, device: str = "auto", cache_dir=None) -> None:
    """Refuse when resolving the run's options here gives another fingerprint than the one it was trained on.

    Only the fields that change a value count: a store that keeps other parts (``keep``) holds the same values.
    Imported features: the name must still select the store the run was trained on (in ``cache_dir``).
    """
    recorded = run.record.store["fingerprint"]
    if is_imported(recorded):
        here = resolve(options, device, cache_dir=cache_dir).fingerprint
        if fingerprint_id(here) != fingerprint_id(recorded):
            raise ReproduceError(one_line(
                f"{run.path}: {options.backbone!r} in {cache_dir} now names other imported features (file sha256 "
                f"{here.get('file_sha256', '?')[:12]}) than the run was trained on (file sha256 "
                f"{recorded['file_sha256'][:12]}, {run.record.weights.get('path')}): import that file again under a "
                f"name (`xrayfeat cache import FILE --name {options.backbone} --replace`)"))
        return
    here = resolve(options, device).fingerprint
    differs = [key for key in FINGERPRINT_FIELDS if key in recorded and here.get(key) != recorded[key]]
    if not differs:
        return
    fixes = {"keras": "install the Keras version it names", "backend": "set KERAS_BACKEND to the backend it names",
             "weights": "install the weights file the run used", "decode": "use the xrayfeat version that trained it"}
    details = "; ".join(f"{key}: run {recorded[key]!r}, here {here.get(key)!r}" for key in differs)
    fix = "; ".join(dict.fromkeys(fixes.get(key, "re-run fit-head here") for key in differs))
    raise ReproduceError(f"{run.path}: this installation cannot reproduce the run's features ({details}); {fix}")


def cache_dir_of(run, cache_dir=None) -> Path:
    """The cache folder a command on ``run`` uses, found or not: ``cache_dir`` if given, else the one holding its store."""
    return Path(cache_dir) if cache_dir is not None else Path(run.record.store["path"]).parent


def run_cache_dir(run, cache_dir=None) -> Path:
    """Where the run's features live: ``cache_dir`` if given, else the folder holding the run's store (it must exist)."""
    if cache_dir is not None:
        from xrayfeat.store.catalog import check_cache_target

        return check_cache_target(cache_dir)  # a file, or a path under one: one line, exit 2
    folder = cache_dir_of(run)
    if not folder.is_dir():
        raise XrayfeatError(f"{run.path}: its cache folder {folder} is not found from here; pass --cache-dir "
                            f"(the run's features are computed into it if missing)")
    return folder


def score_images(run, dataset, *, cache_dir=None, device: str = "auto", batch_size: int = 32,
                 workers: int | None = None, cluster: str | None = None, progress: bool = False,
                 on_error: str = "fail", models=None) -> Scored:
    """Every model of ``run`` (head and saved baselines, or ``models``) on every image of ``dataset``.

    Checks first (sha256 of each model file, weights, fingerprint), then
    extracts what the cache lacks, then predicts. An image that cannot be
    decoded stops the call (``on_error="fail"``) or is left out of the result
    and listed in its ``skipped_files`` (``"skip"``), as fit-head does.
    """
    names = model_names(run, models)
    # sha256 checked here; the plain head runs in numpy (no Keras import), a head with a tail in Keras
    run.record.verified("head")  # a changed head.keras means a changed run, even when its arrays are what runs
    loaded = {name: (run.head_arrays() or run.head()) if name == "head" else run.baseline(name) for name in names}
    need = model_parts(run, names)
    result, store = run_features(run, dataset, cache_dir=cache_dir, device=device, batch_size=batch_size,
                                 workers=workers, cluster=cluster, progress=progress, on_error=on_error, need=need)
    dataset = result.kept(dataset)
    if result.skipped and not len(dataset):
        raise DatasetError(f"{dataset.root}: every image was left out (none can be decoded; see the lines above)")
    parts = store.read(dataset.hashes, need)
    n_classes = len(run.classes)
    probabilities = {}
    for name, model in loaded.items():
        if name == "head":
            probabilities[name] = np.asarray(model.predict_proba(parts[run.record.head_input]), dtype=np.float64)
        elif name == "pixels":
            x = read_pixels(dataset.items).reshape(len(dataset), -1).astype(np.float32)
            probabilities[name] = columns_for(model, model.predict_proba(x), n_classes)
        else:
            probabilities[name] = columns_for(model, model.predict_proba(parts["pooled"]), n_classes)
    calibrated = run.metrics.get("calibrated")
    if calibrated:  # fitted on the run's validation rows: every use of the run applies it
        probabilities = {name: apply_calibrator(calibrated["models"].get(name), proba, run.classes,
                                                multilabel=run.record.multilabel)
                         for name, proba in probabilities.items()}
    return Scored(dataset=dataset, probabilities=probabilities, extracted=result.extracted, reused=result.reused,
                  store=str(store.path), skipped_files=result.skipped_files,
                  calibration=calibrated["method"] if calibrated else None)


def model_names(run, models=None) -> list[str]:
    """``models`` (default: the head and every saved baseline), each checked to be a model of ``run``."""
    names = ["head", *run.record.baseline_names] if models is None else list(models)
    unknown = [m for m in names if m != "head" and m not in run.record.baseline_names]
    if unknown:
        raise ValueError(f"{run.path} has no model(s) {unknown}; it has head and {run.record.baseline_names}")
    return names


def model_parts(run, names) -> tuple[str, ...]:
    """The feature parts the models ``names`` of ``run`` read: the head its input, logreg and svm pooled vectors."""
    parts = [run.record.head_input] if "head" in names else []
    if any(name not in ("head", "pixels") for name in names):
        parts.append("pooled")
    return tuple(dict.fromkeys(parts))


def gather_inputs(run, inputs, cache_dir=None):
    """(the images of ``inputs``, the run's cache folder): files, folders or CSVs, hashed with that folder's memory."""
    from xrayfeat.data.datasets import gather_images

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    from xrayfeat.store.catalog import hash_memory

    folder = run_cache_dir(run, cache_dir)
    return gather_images(inputs, hash_cache=hash_memory(folder)), folder


def run_features(run, dataset, *, cache_dir=None, device: str = "auto", batch_size: int = 32,
                 workers: int | None = None, cluster: str | None = None, progress: bool = False,
                 on_error: str = "fail", need=(), purpose: str = "predict"):
    """(extraction result, store) of the run's own features for ``dataset``, computed where the cache lacks them.

    The store is one that keeps the parts ``need`` (:func:`~xrayfeat.extraction.pipeline.store_for`;
    ``purpose`` names the command in its error). Refuses first, in one line,
    features this installation cannot reproduce. ``on_error`` is
    :class:`~xrayfeat.options.settings.RunOptions`' (images left out by ``"skip"``
    have no row: read ``result.kept(dataset)``).
    """
    folder = run_cache_dir(run, cache_dir)
    options = store_for(run_feature_options(run), folder, need, purpose, device)
    check_reproducible(run, options, device, cache_dir=folder)
    run_options = RunOptions(device=device, batch_size=batch_size, workers=workers, cache_dir=folder,
                             progress=progress, cluster=cluster, on_error=on_error)
    [result] = extract(dataset, options, run_options)
    return result, FeatureStore.at(result.store)


def predictions_table(scored: Scored, classes, decisions: dict, multilabel: bool = False):
    """One row per image: path, sha256, then per model its decision, the rule behind it and its probabilities.

    ``decisions`` is :func:`run_decisions`'. Per model: ``<model>:predicted``
    (:func:`~xrayfeat.analysis.decision.decide`: a class; for more than two
    classes by thresholds, empty when no class reaches its threshold; for a
    multi-label run the findings called, joined by ``|``), ``<model>:called``
    (more than two classes by thresholds: every class at or above its
    threshold), ``<model>:decision`` (``argmax`` or ``threshold``),
    ``<model>:threshold:<class>`` (each threshold applied) and ``<model>:<class>``
    (the probabilities, calibrated where the run is).
    """
    import pandas as pd

    columns = {"path": [str(item.path) for item in scored.dataset.items],
               "sha256": [item.sha256 for item in scored.dataset.items]}
    for name, proba in scored.probabilities.items():
        rule = decisions[name]
        decided = decide(proba, classes, rule["decision"], rule["thresholds"], multilabel=multilabel)
        columns[f"{name}:predicted"] = decided.predicted
        if decided.called is not None:
            columns[f"{name}:called"] = decided.called
        columns[f"{name}:decision"] = [rule["decision"]] * len(proba)
        for c, t in (rule["thresholds"] or {}).items():
            columns[f"{name}:threshold:{c}"] = [t] * len(proba)
        for k, c in enumerate(classes):
            columns[f"{name}:{c}"] = proba[:, k]
    return pd.DataFrame(columns)


def run_decisions(run, models, decision: str | None = None) -> dict[str, dict]:
    """The rule each of ``models`` is decided by: ``{model: {"decision", "thresholds": {class: t} | None}}``.

    ``decision``: ``"argmax"``, ``"threshold"`` or None (the run's own rule,
    ``metrics.json``'s ``decision``: argmax for runs written before it). A
    multi-label run calls each finding at its threshold (:func:`finding_thresholds`)
    and refuses ``"argmax"``. ``"threshold"`` on a run, or a model, without a
    threshold for every class it scores is refused in one line naming the fix.
    """
    spec = declaration(DecisionOptions, "decision")
    check_value("predict", "decision", decision, spec["check"], spec["none"])
    if run.record.multilabel:
        if decision == "argmax":
            raise XrayfeatError(f"{run.path}: --decision argmax picks one class per image, and this run is "
                                f"multi-label (each finding is called at its own threshold): leave --decision out")
        chosen = finding_thresholds(run, models)
        return {m: {"decision": "threshold", "thresholds": dict(zip(run.classes, map(float, chosen[m])))}
                for m in models}
    rule = decision or run.metrics.get("decision") or "argmax"
    if rule == "argmax":
        return {m: {"decision": "argmax", "thresholds": None} for m in models}
    out = {}
    for model in models:
        figures = run.metrics["head"] if model == "head" else run.metrics["baselines"][model]
        points = (figures.get("operating_points") or {}).get("classes") or {}
        lacking = [c for c in points if points[c].get("threshold") is None]
        if not points or lacking:
            why = (f"none for {', '.join(map(repr, lacking))} ({points[lacking[0]].get('note') or 'none chosen'})"
                   if points else "none (it was written before fit-head chose thresholds)")
            raise XrayfeatError(one_line(
                f"{run.path}: --decision threshold applies the thresholds fit-head chose on validation, and {model} "
                f"has {why}: use --decision argmax, or re-run fit-head (--threshold sets how they are chosen)"))
        out[model] = {"decision": "threshold", "thresholds": {c: float(points[c]["threshold"]) for c in points}}
    return out


def finding_thresholds(run, models) -> dict[str, np.ndarray]:
    """Each model's threshold per finding of a multi-label run: those fit-head chose on validation.

    A finding without one (validation had no positive or no negative of it)
    is called at 0.5, and the log says so.
    """
    chosen = {}
    for model in models:
        figures = run.metrics["head"] if model == "head" else run.metrics["baselines"][model]
        points = (figures.get("operating_points") or {}).get("classes") or {}
        values = []
        for finding in run.classes:
            threshold = (points.get(finding) or {}).get("threshold")
            if threshold is None:
                log.info("%s: no threshold chosen for %s on validation; it is called at 0.5", model, finding)
                threshold = 0.5
            values.append(float(threshold))
        chosen[model] = np.array(values)
    return chosen


def predict(run, inputs, *, out=None, cache_dir=None, device: str = "auto", batch_size: int = 32,
            workers: int | None = None, cluster: str | None = None, progress: bool = False,
            models=None, decision: str | None = None) -> PredictResult:
    """Classify new images with a trained run; see the module docstring.

    ``run``: a loaded :class:`~xrayfeat.runs.loaded.Run` (``xf.load_run``). ``inputs``: image
    files, folders or CSVs with a ``path`` column (a single path is fine).
    ``out``: a CSV to write (atomically), or None; never a run's or a cache's file
    (:func:`~xrayfeat.runs.outputs.check_output`, checked before anything else).
    ``decision``: ``"argmax"``, ``"threshold"`` or None, the run's own rule
    (:func:`run_decisions`, checked before anything is computed).
    """
    decisions = run_decisions(run, model_names(run, models), decision)
    if out is not None:
        check_output(out, "predict", cache=cache_dir_of(run, cache_dir))
    dataset, folder = gather_inputs(run, inputs, cache_dir)
    scored = score_images(run, dataset, cache_dir=folder, device=device, batch_size=batch_size, workers=workers,
                   cluster=cluster, progress=progress, models=models)
    multilabel = run.record.multilabel
    table = predictions_table(scored, run.classes, decisions, multilabel)
    if out is not None:
        with writing_to(Path(out).parent, option="--out"):
            atomic_write(out, csv_text([list(table.columns), *table.itertuples(index=False)], float_format=".6g", lineterminator="\n"))
    undecided = {}
    if multilabel:  # images called positive for each finding
        counts = {name: dict(zip(run.classes, decide(proba, run.classes, "threshold", decisions[name]["thresholds"],
                                                     multilabel=True).calls.sum(axis=0).tolist()))
                  for name, proba in scored.probabilities.items()}
    else:
        counts = {name: {c: int((table[f"{name}:predicted"] == c).sum()) for c in run.classes}
                  for name in scored.probabilities}
        undecided = {name: int((table[f"{name}:predicted"] == NONE).sum()) for name in scored.probabilities
                     if f"{name}:called" in table.columns}
    return PredictResult(table=table, out=None if out is None else str(out), images=len(dataset),
                         extracted=scored.extracted, reused=scored.reused, models=list(scored.probabilities),
                         counts=counts, decisions=decisions, undecided=undecided, calibration=scored.calibration)
