"""The fit-head experiment: extract what is missing, train the head and the baselines, record everything.

One function, :func:`fit_head`, does the seed's study on cached features:

1. checks the dataset makes a classification task (train and test splits, every
   test class seen in train, at least two classes);
2. extracts whatever the store lacks (usually nothing);
3. takes validation from the ``val`` split, else a stratified ``val_fraction``
   of train, grouped by patient when the dataset knows patients;
4. trains the seed's Keras head (and, with ``train_tail``, the backbone's last
   block) on the cached features;
5. fits the scikit-learn baselines on pooled features, and the pixels sentinel;
6. evaluates everything on test with bootstrap intervals, raises the warnings this
   field needs (leakage, tiny test set, shortcuts, source gaps), and writes the
   run record (see :mod:`xrayfeat.runs`).
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import __version__, metrics, plots, runs
from .backbones import get_spec
from .errors import DatasetError, XrayfeatError
from .extract import FeatureOptions, RunOptions, extract, resolve
from .store import FeatureStore

log = logging.getLogger("xrayfeat")


@dataclass(frozen=True)
class HeadOptions:
    """The seed's hyper-parameters (its values are the defaults) and the study's options."""

    epochs: int = 40
    batch_size: int = 10
    steps_per_epoch: int | None = 10
    validation_steps: int | None = None  # None: the seed's 2 (binary) or 5 (more classes)
    lr: float = 1e-3
    units: int = 256
    dropout: float = 0.3
    l2: float = 1e-3
    train_tail: bool = False
    val_fraction: float = 0.2
    baselines: tuple[str, ...] = ("logreg", "svm", "pixels")
    seed: int = 0
    n_boot: int = 1000
    n_jobs: int | None = None
    backend: str = "auto"  # the head's Keras backend; see xrayfeat.headproc

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "units"):
            if getattr(self, name) < 1:
                raise XrayfeatError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise XrayfeatError(f"--val-fraction must be between 0 and 1; got {self.val_fraction}")
        if not 0 <= self.dropout < 1:
            raise XrayfeatError(f"--dropout must be in [0, 1); got {self.dropout}")
        if self.lr <= 0 or self.l2 < 0:
            raise XrayfeatError(f"--lr must be > 0 and --l2 >= 0; got lr={self.lr}, l2={self.l2}")


# --------------------------------------------------------------------------- checks and splits


def check_task(dataset) -> None:
    """Stop early, in one line, on datasets that cannot make an honest classification study."""
    root = dataset.root
    if len(dataset.classes) < 2:
        raise DatasetError(f"{root}: only one class ({', '.join(dataset.classes)}); a classifier needs at least two")
    splits = set(dataset.splits)
    if "train" not in splits or "test" not in splits:
        raise DatasetError(
            f"{root}: fit-head needs a train and a test split (found: {', '.join(sorted(splits)) or 'none'}); "
            f"use DATA/train/<class>/ and DATA/test/<class>/ or a manifest with a split column"
        )
    train_counts = {c: 0 for c in dataset.classes}
    test_classes = set()
    for item in dataset.items:
        if item.split == "train":
            train_counts[item.label] += 1
        elif item.split == "test":
            test_classes.add(item.label)
    unseen = sorted(c for c in test_classes if train_counts[c] == 0)
    if unseen:
        raise DatasetError(f"{root}: test has classes absent from train ({', '.join(unseen)}); add training images for them")
    few = sorted(c for c, n in train_counts.items() if n < 2)
    if few:
        raise DatasetError(f"{root}: classes with fewer than 2 training images ({', '.join(few)}); add images or drop the class with --classes")


def groups_of(items) -> np.ndarray | None:
    """Patient ids where known (an image without one is its own patient); None if no patient is known."""
    if not any(item.patient_id for item in items):
        return None
    return np.array([item.patient_id or f"image:{item.sha256}" for item in items])


def split_validation(train_items, y, val_fraction: float, seed: int):
    """Indices (fit, val) of a stratified split of train, grouped by patient when known."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

    groups = groups_of(train_items)
    if groups is not None:
        # each class needs a patient in every fold; with few patients the validation share grows
        patients_per_class = min(len(set(groups[y == k])) for k in np.unique(y))
        if patients_per_class < 2:
            raise DatasetError(
                f"{train_items[0].path.parent.parent.parent}: a class has fewer than 2 training patients, so no "
                f"validation split by patient is possible; add images or a val split"
            )
        n_splits = min(max(2, round(1 / val_fraction)), patients_per_class)
        if n_splits < round(1 / val_fraction):
            log.warning("only %d patients in the smallest class: validation takes 1/%d of train", patients_per_class, n_splits)
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        fit_idx, val_idx = next(splitter.split(np.zeros(len(y)), y, groups))
    else:
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        fit_idx, val_idx = next(splitter.split(np.zeros(len(y)), y))
    return np.sort(fit_idx), np.sort(val_idx)


def read_pixels(items, size: int = 32, n_jobs: int | None = None) -> np.ndarray:
    """32×32 grayscale pixels of each image, for the pixels sentinel (no backbone)."""
    from joblib import Parallel, delayed

    from .images import read_gray

    paths = [str(item.path) for item in items]
    if len(paths) < 64:
        return np.stack([read_gray(p, size) for p in paths])
    arrays = Parallel(n_jobs=n_jobs or -1, batch_size=16)(delayed(read_gray)(p, size) for p in paths)
    return np.stack(arrays)


# --------------------------------------------------------------------------- the experiment


@dataclass
class FitResult:
    run: str
    test: dict
    baselines: dict
    warnings: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"run": self.run, "test": self.test, "baselines": self.baselines,
                "warnings": self.warnings, "timings": self.timings}


def _brief(m: dict) -> dict:
    """The headline figures of an ``evaluate`` result."""
    return {
        "accuracy": m["accuracy"], "accuracy_ci": m["ci"]["accuracy"], "loss": m["loss"],
        "balanced_accuracy": m["balanced_accuracy"], "roc_auc": m["roc_auc"], "n": m["n"],
    }


def fit_head(dataset, features: FeatureOptions, head: HeadOptions = HeadOptions(), run: RunOptions = RunOptions(),
             *, out=None, runs_root="runs") -> FitResult:
    """Run the whole study on ``dataset`` and write ``runs/<name>/``; see the module docstring."""
    started = time.perf_counter()
    head.validate()
    check_task(dataset)
    config = resolve(features, run.device)
    spec = get_spec(features.backbone)
    if head.train_tail and config.fingerprint["layer"] == spec.final_layer:
        raise XrayfeatError(
            f"--train-tail needs features stored at a cut point; add --layer {spec.layer_choices()[0]} "
            f"(the last block is then trained on the cached activations)"
        )
    from .headproc import resolve_head_backend, start_child

    head_backend, backend_reason = resolve_head_backend(head.backend, device=config.device, train_tail=head.train_tail)
    run_dir = runs.new_run_dir(out, runs.task_name(dataset.classes), features.backbone, runs_root)
    # a head on another backend trains in a child process; starting it now overlaps its imports with extraction
    # (if this function fails before training, the child sees its input close and exits)
    child = start_child(head_backend, config.device)

    # 1. features (computed only where missing)
    t = time.perf_counter()
    [extraction] = extract(dataset, features, run)
    extract_seconds = time.perf_counter() - t
    store = FeatureStore.at(extraction.store)
    skipped = {line.split(": ")[0] for line in extraction.skipped_files}
    items = [item for item in dataset.items if str(item.path) not in skipped]
    train = [item for item in items if item.split in ("train", "val")]
    test = [item for item in items if item.split == "test"]
    class_index = {c: i for i, c in enumerate(dataset.classes)}
    y_train_all = np.array([class_index[i.label] for i in train])
    y_test = np.array([class_index[i.label] for i in test])

    # 2. validation split
    if any(i.split == "val" for i in train):
        fit_idx = np.array([k for k, i in enumerate(train) if i.split == "train"])
        val_idx = np.array([k for k, i in enumerate(train) if i.split == "val"])
        val_source = "val split"
    else:
        fit_idx, val_idx = split_validation([i for i in train], y_train_all, head.val_fraction, head.seed)
        val_source = f"{head.val_fraction:.0%} of train, stratified" + (", grouped by patient" if groups_of(train) is not None else "")
    log.info("validation: %s (%d images)", val_source, len(val_idx))

    train_arrays = store.read([i.sha256 for i in train], ("spatial", "pooled"))
    test_arrays = store.read([i.sha256 for i in test], ("spatial", "pooled"))

    # 3. the head, on its own backend (jax on a CPU when installed; see xrayfeat.headproc)
    from .headproc import train_and_predict

    log.info("head backend: %s (%s)", head_backend, backend_reason)
    tail = None
    if head.train_tail:
        from .backbones import build_tail

        tail = build_tail(spec, config.weights, image_size=config.fingerprint["image_size"], layer=config.fingerprint["layer"])
    validation_steps = head.validation_steps if head.validation_steps is not None else (2 if len(dataset.classes) == 2 else 5)
    head_file = run_dir / "head.keras"
    trained = train_and_predict(
        head_backend,
        train_arrays["spatial"][fit_idx], y_train_all[fit_idx],
        train_arrays["spatial"][val_idx], y_train_all[val_idx],
        test_arrays["spatial"], head_file=head_file, tail=tail, child=child, device=config.device,
        n_classes=len(dataset.classes), epochs=head.epochs, batch_size=head.batch_size,
        steps_per_epoch=head.steps_per_epoch, validation_steps=validation_steps, lr=head.lr,
        units=head.units, dropout=head.dropout, l2=head.l2, seed=head.seed,
    )
    head_proba = trained.proba_test
    trained_on = trained.settings.get("device")
    if trained_on and trained_on != config.device:
        log.warning("the head trained on the %s, not the %s this run asked for (--head-backend %s found no %s); "
                    "recorded in config.json", trained_on.upper(), config.device.upper(), head_backend, config.device.upper())
    groups_test = groups_of(test)
    sources_test = [i.source for i in test] if any(i.source for i in test) else None
    evaluate = lambda proba: metrics.evaluate(  # noqa: E731
        y_test, proba, list(dataset.classes), groups=groups_test, sources=sources_test, n_boot=head.n_boot, seed=head.seed)
    head_metrics = evaluate(head_proba)

    # 4. baselines
    from .baselines import fit_baselines, save_baseline

    probabilities = {"head": head_proba}
    baseline_metrics, baseline_files, baseline_info = {}, {}, {}
    t = time.perf_counter()
    if head.baselines:
        needs_pixels = "pixels" in head.baselines
        fitted = fit_baselines(
            head.baselines,
            pooled_train=train_arrays["pooled"],
            pixels_train=read_pixels(train, n_jobs=head.n_jobs) if needs_pixels else None,
            y_train=y_train_all, groups=groups_of(train), seed=head.seed, n_jobs=head.n_jobs,
        )
        pixels_test = read_pixels(test, n_jobs=head.n_jobs) if needs_pixels else None
        (run_dir / "baselines").mkdir(exist_ok=True)
        for name, model in fitted.items():
            x = pixels_test.reshape(len(test), -1).astype(np.float32) if name == "pixels" else test_arrays["pooled"]
            proba = _columns_for(model, model.predict_proba(x), len(dataset.classes))
            probabilities[name] = proba
            baseline_metrics[name] = evaluate(proba)
            path = run_dir / "baselines" / f"{name}.joblib"
            baseline_files[name] = {"file": f"baselines/{path.name}", "sha256": save_baseline(model, path)}
            baseline_info[name] = model.summary()
    baselines_seconds = time.perf_counter() - t

    # 5. warnings this field needs
    warnings_ = _study_warnings(train, test, head_metrics, baseline_metrics, extraction.random_weights)
    for text in warnings_:
        log.warning("%s", text)

    # 6. the record
    timings = {
        "extraction_seconds": round(extract_seconds, 3),
        "extracted_images": extraction.extracted,
        "head_seconds": round(trained.seconds, 3),
        "head_process_seconds": round(trained.process_seconds, 3),  # with the child's start-up and saving
        # steady state: the first epoch holds graph tracing/compilation, reported apart
        "seconds_per_epoch": round(float(np.median(trained.epoch_seconds[1:] or trained.epoch_seconds)), 4)
        if trained.epoch_seconds else None,
        "first_epoch_seconds": round(trained.epoch_seconds[0], 4) if trained.epoch_seconds else None,
        "seconds_per_step": trained.step_seconds,
        "baselines_seconds": round(baselines_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
    }
    config_record = {
        "xrayfeat": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": str(dataset.root),
        "task": runs.task_name(dataset.classes),
        "classes": list(dataset.classes),
        "counts": {"train": len(fit_idx), "val": len(val_idx), "test": len(test), "skipped": extraction.skipped},
        "validation": val_source,
        "features": asdict(features),
        "head": {**asdict(head), "validation_steps": validation_steps, "baselines": list(head.baselines)},
        "run": {"device": run.device, "batch_size": run.batch_size, "cache_dir": str(run.cache_dir)},
        "store": {"path": str(store.path), "fingerprint": store.fingerprint, "fingerprint_id": store.fingerprint_id},
        "weights": {"kind": config.weights.kind, "identity": config.weights.identity, "path": config.weights.path,
                    "random": config.weights.random},
        "params": trained.params,
        "training": {**trained.settings, "backend_requested": head.backend, "backend_reason": backend_reason,
                     "process": trained.process},
        "timings": timings,
        "files": {"head": {"file": "head.keras", "sha256": runs.file_sha256(head_file)}, "baselines": baseline_files},
        "baselines": baseline_info,
        "versions": _versions(),
        "warnings": warnings_,
    }
    runs.write_json(run_dir / "metrics.json", {"head": head_metrics, "baselines": baseline_metrics})
    runs.write_history(run_dir / "history.csv", trained.history, trained.epoch_seconds)
    runs.write_predictions(run_dir / "predictions.csv", test, y_test, dataset.classes, probabilities)
    title = f"{runs.task_name(dataset.classes)} · {features.backbone}" + (" · RANDOM weights" if config.weights.random else "")
    plots.plot_curves(trained.history, run_dir / "curves.png", title=title)
    plots.plot_confusion(head_metrics["confusion"], list(dataset.classes), run_dir / "confusion.png", title=title)
    plots.plot_roc(y_test, head_proba, list(dataset.classes), run_dir / "roc.png", title=title)
    runs.write_json(run_dir / "config.json", config_record)
    return FitResult(
        run=str(run_dir), test=_brief(head_metrics),
        baselines={name: _brief(m) for name, m in baseline_metrics.items()},
        warnings=warnings_, timings=timings,
    )


def _columns_for(model, proba: np.ndarray, n_classes: int) -> np.ndarray:
    """Put a baseline's probability columns in class-index order (all classes are in train)."""
    out = np.zeros((len(proba), n_classes))
    out[:, np.asarray(model.classes_, dtype=int)] = proba
    return out


def _study_warnings(train, test, head_metrics, baseline_metrics, random_weights) -> list[str]:
    found = []
    if random_weights:
        found.append("RANDOM backbone weights (--weights none): results say nothing about ImageNet transfer")
    overlap = metrics.split_overlap(
        [i.sha256 for i in train], [i.sha256 for i in test],
        [i.patient_id for i in train if i.patient_id], [i.patient_id for i in test if i.patient_id],
    )
    found += metrics.overlap_warnings(overlap)
    tiny = metrics.tiny_test_warning(len(test), head_metrics["accuracy"])
    if tiny:
        found.append(tiny)
    if "pixels" in baseline_metrics:
        deep = max([head_metrics["accuracy"]] + [m["accuracy"] for n, m in baseline_metrics.items() if n != "pixels"])
        sentinel = metrics.sentinel_warning(deep, baseline_metrics["pixels"]["accuracy"])
        if sentinel:
            found.append(sentinel)
    if head_metrics.get("by_source"):
        gap = metrics.source_gap_warning(head_metrics["by_source"])
        if gap:
            found.append(gap)
    return found


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("keras", "tensorflow-cpu", "tensorflow", "jax", "torch", "numpy", "scikit-learn", "h5py"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    from .extract import keras_backend_name

    out["keras_backend"] = keras_backend_name()
    return out
