"""The pipelines behind the commands: the fit-head study, maps of cached features, and feature export.

:func:`fit_head` does the seed's study on cached features, one step per function:

1. :func:`check_task`: the dataset makes an honest classification task (train
   and test splits, every test class seen in train, at least two classes);
2. :func:`_extract_split`: extracts whatever the store lacks (usually nothing)
   and takes the train and test rows as :class:`~xrayfeat.store.rows.StoreRows`;
   :func:`_hold` reads them into memory where they fit ``--memory-budget``,
   else the head streams its batches from the store; the baselines fit on a
   sample when their matrix exceeds what the features in memory leave of the
   budget (:func:`_baselines_budget`);
3. :func:`_validation`: takes validation from the ``val`` split, else a
   stratified ``val_fraction`` of train, grouped by patient when the dataset
   knows patients (:func:`split_validation`);
4. :func:`_train`: the seed's Keras head (and, with ``train_tail``, the
   backbone's last block) on the cached features, on its own backend; with
   ``repeats`` the head again under the next seeds;
5. :func:`_baselines`: the scikit-learn baselines on pooled features and the
   pixels sentinel, fitted on the same training rows as the head;
6. :func:`choose_model_thresholds`: each model's operating point, chosen on the
   validation rows only (test labels never reach it); with ``calibrate``
   (``--calibrate temperature|isotonic``) each model's calibrator is fitted on
   those rows first (:func:`_calibrate`), and the thresholds, the test figures
   and the predictions are those of the calibrated probabilities (the
   cross-validation folds are not calibrated); :func:`run_decision` records the
   rule predict applies by default;
7. :func:`study_warnings`: what this field must be told (random weights,
   leakage, tiny test sets, shortcuts, source gaps, class imbalance);
8. :func:`_write_run`: metrics with bootstrap intervals, operating points and
   calibration, predictions (test and validation), history, figures and the
   :class:`~xrayfeat.runs.record.RunRecord`.

With ``cv`` (``--cv K``, :mod:`xrayfeat.runs.crossval`), steps 3 to 5 also run
per fold of the training images (:func:`_cross_validation`, :func:`_cv_baselines`):
the head and the baselines trained on K-1 folds predict the held-out one, from
the features already read (nothing more is extracted), and the run adds
``predictions-oof.csv`` and the ``cv`` part of ``metrics.json``
(:func:`_score_folds`). The main fit is the same with or without it.

Every figure and every metric is computed from ``predictions.csv`` (test) and
``predictions-val.csv`` (validation, where thresholds come from), so anyone can
recompute them from the run folder.

:func:`embed_map` draws a map of pooled features or of a run head's
penultimate layer; :func:`export_features` writes a dataset's cached features
to one ``.npz``. Each returns a record the CLI prints.
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from xrayfeat import __version__
from xrayfeat.runs import crossval, folder
from xrayfeat.runs.outputs import check_new_folder
from xrayfeat.runs import record as runs
from xrayfeat.analysis import metrics
from xrayfeat.analysis import calibrators, plots
from xrayfeat.analysis.calibrators import apply_calibrator, check_calibration_data, fit_calibrator
from xrayfeat.backbones import get_spec
from xrayfeat.data.datasets import Dataset
from xrayfeat.data.labels import finding_values, targets
from xrayfeat.devices import keras_backend_name
from xrayfeat.errors import DatasetError, XrayfeatError, one_line
from xrayfeat.extraction.config import resolve
from xrayfeat.extraction.pipeline import extract
from xrayfeat.extraction.selection import store_for
from xrayfeat.analysis.multilabel import few_positives_warning
from xrayfeat.analysis.subgroups import GROUP_GAP, group_gap_warnings
from xrayfeat.analysis.scoring import (choose_model_thresholds, evaluate_models, fold_figures, groups_of, headline,
                                       positive_class, seed_spread)
from xrayfeat.models.head_process import FIT, OUT, VAL, CrossValidation
from xrayfeat.fileio import write_json, writing_to
from xrayfeat.models.head import steady_epoch_seconds
from xrayfeat.options.settings import FeatureOptions, HeadOptions, RunOptions
from xrayfeat.provenance import library_versions, utc_timestamp
from xrayfeat.store.rows import StoreRows, float32_bytes, human_bytes, resolve_budget, take
from xrayfeat.runs.record import RunWarning
from xrayfeat.store.feature_store import FeatureStore
from xrayfeat.store.fingerprint import drawing_size
from xrayfeat.store.imported import imported_options
from xrayfeat.data.summary import imbalance_warning

log = logging.getLogger("xrayfeat")


# --------------------------------------------------------------------------- checks and splits


def check_task(dataset: Dataset) -> None:
    """Stop early, in one line, on datasets that cannot make an honest classification study."""
    if dataset.multilabel:
        return _check_findings(dataset)
    root = dataset.root
    if len(dataset.classes) < 2:
        raise DatasetError(f"{root}: only one class ({', '.join(dataset.classes)}); a classifier needs at least two")
    _check_splits(dataset, "use DATA/train/<class>/ and DATA/test/<class>/ or a manifest with a split column")
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



def _check_findings(dataset: Dataset) -> None:
    """A multi-label study needs train and test, and some finding with 2 positive and 2 negative training images.

    Findings short of that still train (their figures are then undefined or
    noise, and :func:`rare_findings_warning` says so): NIH's Hernia has 227
    positives in 112,120 images, and a sample of the table may have none.
    """
    root = dataset.root
    _check_splits(dataset, "give the manifest a split column")
    short = _short_findings([item for item in dataset.items if item.split in ("train", "val")], dataset.classes)
    if len(short) == len(dataset.classes):
        raise DatasetError(one_line(
            f"{root}: no finding has 2 positive and 2 negative training images ({', '.join(short)}); "
            f"add images or give the images findings"))


def _check_splits(dataset: Dataset, fix: str) -> None:
    """A study needs a train and a test split; one line with ``fix`` when the dataset lacks either."""
    splits = set(dataset.splits)
    if "train" not in splits or "test" not in splits:
        raise DatasetError(f"{dataset.root}: fit-head needs a train and a test split (found: "
                           f"{', '.join(sorted(splits)) or 'none'}); {fix}")


def _short_findings(items, findings) -> list[str]:
    """Findings with fewer than 2 positive or 2 negative ``items``, each with its counts."""
    values = finding_values(items, len(findings))
    return [f"{name} ({int(pos)} positive, {int(neg)} negative)"
            for name, pos, neg in zip(findings, (values == 1).sum(0), (values == 0).sum(0)) if min(pos, neg) < 2]


def rare_findings_warning(train, findings) -> str | None:
    """A sentence naming the findings with fewer than 2 positive or 2 negative training images, if any."""
    short = _short_findings(train, findings)
    if not short:
        return None
    return (f"findings with fewer than 2 positive or 2 negative training images: {', '.join(short)}; the head learns "
            f"nothing useful for them and their figures are undefined or noise; add images or leave them out with "
            f"--classes")


def finding_strata(y: np.ndarray, mask: np.ndarray, groups=None, min_members: int = 2) -> np.ndarray:
    """One stratum per multi-label image, for stratified splits: its rarest counted positive finding, else "none".

    A stratum with fewer than ``min_members`` patients (images, without
    patients) joins the "none" stratum (index K), so every stratum can be split
    into the folds asked for: a finding seen in 3 patients does not make
    validation take half of train.
    """
    k = y.shape[1]
    positive = (y == 1) & mask
    frequency = positive.sum(axis=0)
    rarity = np.where(positive, frequency[None, :], np.iinfo(np.int64).max)
    strata = np.where(positive.any(axis=1), np.argmin(rarity, axis=1), k)
    members = groups if groups is not None else np.arange(len(y))
    for stratum in np.unique(strata):
        if stratum != k and len(set(members[strata == stratum])) < min_members:
            strata[strata == stratum] = k
    return strata


def split_validation(train_items, y, val_fraction: float, seed: int, *, root="DATA", say_share: bool = True):
    """Indices (fit, val) of a stratified split of train, grouped by patient when known.

    ``root`` is the dataset (folder or manifest) named in the error when no
    patient-grouped split is possible. ``say_share``: log when few patients make
    validation's share larger than ``val_fraction`` (``--cv`` says it once, not per fold).
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

    groups = groups_of(train_items)
    if groups is None:
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        fit_idx, val_idx = next(splitter.split(np.zeros(len(y)), y))
        return np.sort(fit_idx), np.sort(val_idx)
    # each class needs a patient in every fold; with few patients the validation share grows
    patients_per_class = min(len(set(groups[y == k])) for k in np.unique(y))
    if patients_per_class < 2:
        raise DatasetError(
            f"{root}: a class has fewer than 2 training patients, so no validation split by patient is possible; "
            f"add images or a val split"
        )
    n_splits = min(max(2, round(1 / val_fraction)), patients_per_class)
    if n_splits < round(1 / val_fraction) and say_share:
        log.warning("only %d patients in the smallest class: validation takes 1/%d of train", patients_per_class, n_splits)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fit_idx, val_idx = next(splitter.split(np.zeros(len(y)), y, groups))
    return np.sort(fit_idx), np.sort(val_idx)


# --------------------------------------------------------------------------- the fit-head study


@dataclass
class FitResult:
    """What fit-head prints: the run folder, the head's and baselines' headline test figures, warnings, timings."""

    run: str
    test: dict
    baselines: dict
    warnings: list[RunWarning] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    operating: dict | None = None  # the head's operating points on test (metrics.json's head.operating_points)
    repeats: dict | None = None  # the head across seeds (metrics.json's repeats), with --repeats > 1
    cv: dict | None = None  # cross-validation (metrics.json's cv), with --cv K
    skipped_files: list[str] = field(default_factory=list)  # "path: reason" per image left out (--on-error skip)
    decision: str | None = None  # the rule predict applies by default (metrics.json's decision)
    calibrated: dict | None = None  # the calibrators and their before/after figures (metrics.json's calibrated)
    replay_of: dict | None = None  # a replay (fit-head --config): the run it repeats (config.json's replay_of)

    def as_json(self) -> dict:
        return {"run": self.run, "test": self.test, "baselines": self.baselines, "operating": self.operating,
                "repeats": self.repeats, "cv": self.cv, "warnings": [asdict(w) for w in self.warnings], "timings": self.timings,
                "skipped_files": self.skipped_files, "decision": self.decision, "calibrated": self.calibrated,
                **({"replay_of": self.replay_of} if self.replay_of else {})}


@dataclass
class _Split:
    """The study's rows: train (with val) and test items, their labels, and the store they are read from."""

    extraction: object
    store: FeatureStore
    train: list
    test: list
    y_train: np.ndarray
    y_test: np.ndarray
    train_arrays: dict
    test_arrays: dict
    seconds: float
    # a multi-label study: y_* are (n, findings) 0/1 targets and mask_* say which entries count
    mask_train: np.ndarray | None = None
    mask_test: np.ndarray | None = None

    @property
    def multilabel(self) -> bool:
        return self.mask_train is not None



def study_parts(head: HeadOptions) -> tuple[str, ...]:
    """The feature parts fit-head reads: the head's input, and pooled vectors for the baselines."""
    return tuple(dict.fromkeys((head.head_input, *(("pooled",) if head.baselines else ()))))


def _check_options(dataset, features: FeatureOptions, head: HeadOptions, run: RunOptions):
    """Validate the options against each other and the dataset; the resolved feature config.

    Its ``options`` select the store that holds the parts the study reads
    (:func:`~xrayfeat.extraction.pipeline.store_for`): a pooled-only store serves a
    pooled head, and a head that needs spatial maps is refused in one line where
    only such a store exists.
    """
    features = imported_options(features, run.cache_dir)  # a name of imported features: its store's options
    for options in (features, head, run):
        options.validate()
    check_task(dataset)
    positive_class(dataset.classes, head.positive)
    if head.cv:
        _check_cv(dataset, head)
    if head.train_tail and head.head_input == "pooled":
        raise XrayfeatError("--train-tail trains the backbone's last block, which gives spatial maps, not pooled "
                            "vectors: drop --head-input pooled or --train-tail")
    features = store_for(features, run.cache_dir, study_parts(head), f"fit-head with --head-input {head.head_input}",
                         run.device)
    config = resolve(features, run.device, cache_dir=run.cache_dir)
    if config.options.imported:
        if head.train_tail:
            raise XrayfeatError(f"--train-tail trains the backbone's last block, and the features imported as "
                                f"{features.backbone!r} come from no backbone here: drop --train-tail")
        return config
    spec = get_spec(features.backbone)
    if head.train_tail and config.fingerprint["layer"] == spec.final_layer:
        raise XrayfeatError(
            f"--train-tail needs features stored at a cut point; add --layer {spec.layer_choices()[0]} "
            f"(the last block is then trained on the cached activations)"
        )
    return config


def _extract_split(dataset, features: FeatureOptions, run: RunOptions, uncertain: str = "ignore") -> _Split:
    """Extract what the store lacks, drop skipped images, read train (with val) and test rows.

    A multi-label dataset's targets and masks follow the ``uncertain`` policy
    (:func:`xrayfeat.data.labels.targets`).
    """
    t = time.perf_counter()
    [extraction] = extract(dataset, features, run)
    seconds = time.perf_counter() - t
    store = FeatureStore.at(extraction.store)
    kept = extraction.kept(dataset)
    items = list(kept.items)
    if extraction.skipped:  # a class whose images were all left out no longer makes an honest task
        check_task(kept)
    train = [item for item in items if item.split in ("train", "val")]
    test = [item for item in items if item.split == "test"]
    if dataset.multilabel:
        (y_train, mask_train), (y_test, mask_test) = (targets(finding_values(part, len(dataset.classes)), uncertain)
                                                      for part in (train, test))
    else:
        class_index = {c: i for i, c in enumerate(dataset.classes)}
        y_train, y_test = (np.array([class_index[i.label] for i in part]) for part in (train, test))
        mask_train = mask_test = None
    return _Split(
        extraction=extraction, store=store, train=train, test=test, y_train=y_train, y_test=y_test,
        train_arrays=_views(store, train), test_arrays=_views(store, test), seconds=seconds,
        mask_train=mask_train, mask_test=mask_test,
    )


def _views(store: FeatureStore, items) -> dict:
    """Each part the store keeps, of ``items``' rows, as a :class:`~xrayfeat.store.rows.StoreRows` (nothing read yet)."""
    return {part: StoreRows(store, [i.sha256 for i in items], part) for part in store.parts}


def _hold(split: _Split, head: HeadOptions, val_idx, n_classes: int) -> dict:
    """Read the head's features, then the pooled ones, into memory while they fit the budget; the record's entry.

    The one place fit-head decides between memory and streaming. A part (train
    and test rows, as float32) is read whole when it fits beside what is read
    already, as before the budget existed; otherwise it stays a
    :class:`~xrayfeat.store.rows.StoreRows` and the head reads it a batch at a time
    (bitwise the same training), the baselines a sample of it. Validation on
    the whole set (``--validation-steps 0``) is read whole by the trainer, so
    when it alone exceeds the budget the run stops and says what to do.

    What is read stays in memory while the baselines fit, so they get the
    budget less it (``baselines_budget_bytes``; see :func:`_baselines_budget`).
    """
    budget = resolve_budget(head.memory_budget)
    part = head.head_input
    held, streamed = 0, 0
    for name in dict.fromkeys((part, "pooled")):
        if name not in split.train_arrays:
            continue
        nbytes = split.train_arrays[name].nbytes + split.test_arrays[name].nbytes
        if budget.fits(held + nbytes):
            split.train_arrays[name], split.test_arrays[name] = split.train_arrays[name].read(), split.test_arrays[name].read()
            held += nbytes
        elif name == part:
            streamed = nbytes
    if streamed and head.seed_validation_steps(n_classes) is None:
        whole = float32_bytes((len(val_idx), *split.train_arrays[part].row_shape))
        if not budget.fits(whole):
            raise XrayfeatError(
                f"--validation-steps 0 evaluates all {len(val_idx)} validation images at once ({human_bytes(whole)}), "
                f"more than the memory budget ({human_bytes(budget.bytes)}): pass --validation-steps N to draw N "
                f"batches per epoch, or raise --memory-budget")
    log.info("head features (%s): %s", part, f"{human_bytes(streamed)} streamed from the store a batch at a time"
             if streamed else "in memory")
    left = max(0, budget.bytes - held)
    log.info("memory budget: %s held by the features read into memory, %s left for the baselines",
             human_bytes(held), human_bytes(left))
    return {**budget.record(), "features_in_memory": not streamed, "streamed_bytes": streamed,
            "features_held_bytes": held, "baselines_budget_bytes": left}


def _validation(dataset, split: _Split, head: HeadOptions):
    """(fit indices, val indices, a sentence saying where validation came from) into ``split.train``."""
    if any(i.split == "val" for i in split.train):
        fit_idx = np.array([k for k, i in enumerate(split.train) if i.split == "train"])
        val_idx = np.array([k for k, i in enumerate(split.train) if i.split == "val"])
        return fit_idx, val_idx, "val split"
    fit_idx, val_idx = _carve_validation(split.train, split.y_train, split.mask_train, head.val_fraction, head.seed,
                                         dataset.root)
    grouped = ", grouped by patient" if groups_of(split.train) is not None else ""
    return fit_idx, val_idx, f"{head.val_fraction:.0%} of train, stratified{grouped}"


def _carve_validation(items, y, mask, val_fraction: float, seed: int, root, say_share: bool = True):
    """(fit, val) indices into ``items``: :func:`split_validation` on the classes, or on a multi-label task's strata."""
    folds = max(2, round(1 / val_fraction))  # the folds split_validation draws validation from
    strata = finding_strata(y, mask, groups_of(items), min_members=folds) if mask is not None else y
    return split_validation(items, strata, val_fraction, seed, root=root, say_share=say_share)


def _cv_strata(items, y, mask, k: int, groups) -> np.ndarray:
    """What the folds are stratified by: the class, or a multi-label image's :func:`finding_strata` (for ``k`` folds)."""
    return finding_strata(y, mask, groups, min_members=k) if mask is not None else y


def _check_cv(dataset, head: HeadOptions) -> None:
    """``--cv K`` against the dataset's training images, before anything is extracted (:func:`crossval.check_folds`)."""
    items = [item for item in dataset.items if item.split in ("train", "val")]
    groups, known = crossval.fold_groups(items)
    if dataset.multilabel:
        y, mask = targets(finding_values(items, len(dataset.classes)), head.uncertain)
        crossval.check_folds(head.cv, _cv_strata(items, y, mask, head.cv, groups), groups, dataset.root, known=known)
        return
    index = {c: i for i, c in enumerate(dataset.classes)}
    y = np.array([index[item.label] for item in items])
    crossval.check_folds(head.cv, y, groups, dataset.root, known=known, baselines=bool(head.baselines),
                         class_names={index[c]: c for c in dataset.classes if c in {i.label for i in items}})


def _cross_validation(dataset, split: _Split, head: HeadOptions) -> tuple[CrossValidation, list[dict]]:
    """The folds of every repeat over ``split.train`` (repeat-major), each with its validation carved out.

    Returns the head's :class:`~xrayfeat.models.head_process.CrossValidation`
    (its matrix is the head's training input) and one description per fold for
    ``metrics.json``. Nothing is trained here, so a fold that cannot carve out
    its validation stops the run before any training.
    """
    k = head.cv
    groups, known = crossval.fold_groups(split.train)
    crossval.check_folds(k, split.y_train if not split.multilabel else np.zeros(len(groups)), groups, dataset.root,
                         known=known, baselines=bool(head.baselines), class_names=None if split.multilabel else
                         {i: c for i, c in enumerate(dataset.classes) if (split.y_train == i).any()})
    strata = _cv_strata(split.train, split.y_train, split.mask_train, k, groups)
    seeds = [head.seed + r for r in range(head.repeats)]
    roles = np.full((len(seeds) * k, len(split.train)), -1, dtype=np.int8)
    folds = []
    for r, seed in enumerate(seeds):
        fold = crossval.assign_folds(strata, groups, k, seed)
        for f in range(k):
            j = r * k + f
            rest = np.flatnonzero(fold != f)
            items = [split.train[i] for i in rest]
            mask = None if split.mask_train is None else split.mask_train[rest]
            try:
                fit_rel, val_rel = _carve_validation(items, split.y_train[rest], mask, head.val_fraction, seed,
                                                     dataset.root, say_share=False)
            except DatasetError as exc:
                reason = str(exc).removeprefix(f"{dataset.root}: ")
                raise DatasetError(one_line(f"{dataset.root}: --cv {k}, fold {f + 1} of repeat {r + 1}: no validation "
                                            f"split in the other folds ({reason}); use fewer folds")) from None
            roles[j, rest[fit_rel]] = FIT
            roles[j, rest[val_rel]] = VAL
            roles[j, fold == f] = OUT
            folds.append({"repeat": r + 1, "seed": seed, "fold": f + 1, "n_fit": len(fit_rel), "n_val": len(val_rel),
                          "n_out": int((fold == f).sum()), "n_patients_out": len(set(groups[fold == f]))})
    share = np.mean([f["n_val"] / (f["n_fit"] + f["n_val"]) for f in folds])
    if share > head.val_fraction + 0.05:
        log.warning("cross-validation: few patients per fold, so validation takes %.0f%% of each fold's training "
                    "images on average (--val-fraction %g)", 100 * share, head.val_fraction)
    cv = CrossValidation(split.train_arrays[head.head_input], split.y_train, roles, [f["seed"] for f in folds],
                         split.mask_train)
    return cv, folds


def _train(config, split: _Split, fit_idx, val_idx, head: HeadOptions, n_classes: int, head_file: Path,
           backend: str, child, guard, cv: CrossValidation | None = None):
    """Train the seed's head (and the tail with ``train_tail``) and predict test; see :mod:`xrayfeat.models.head_process`."""
    from xrayfeat.models.head_process import train_and_predict

    tail = None
    if head.train_tail:
        from xrayfeat.extraction.building import build_tail

        spec = get_spec(config.options.backbone)
        tail = build_tail(spec, config.weights, image_size=config.fingerprint["image_size"], layer=config.fingerprint["layer"])
    x, y = split.train_arrays[head.head_input], split.y_train
    masks = {} if not split.multilabel else {"multilabel": True, "mask_train": split.mask_train[fit_idx],
                                             "mask_val": split.mask_train[val_idx]}
    return train_and_predict(
        backend, take(x, fit_idx), y[fit_idx], take(x, val_idx), y[val_idx], split.test_arrays[head.head_input],
        head_file=head_file, tail=tail, child=child, device=config.device, guard=guard,
        n_classes=n_classes, epochs=head.epochs, batch_size=head.head_batch_size,
        steps_per_epoch=head.steps_per_epoch or None, validation_steps=head.seed_validation_steps(n_classes),
        learning_rate=head.learning_rate, units=head.units, dropout=head.dropout, l2=head.l2, seed=head.seed,
        class_weight=head.class_weight, restore_best=head.restore_best, step=head.head_step,
        repeat_seeds=tuple(range(head.seed + 1, head.seed + head.repeats)), cv=cv, **masks,
    )


def _baselines_budget(memory: dict, widths, y_fit) -> tuple[int, str]:
    """The bytes the baselines may hold, and what a ``subsample`` warning adds about where the budget went.

    The features :func:`_hold` read into memory stay there while the baselines
    fit, so the baselines get ``--memory-budget`` less them. When the features
    leave less than the smallest sample the baselines can cross-validate (2
    images per class of the widest input, as float64), they get that sample and
    the warning says so; a budget below that sample even without features is
    refused by :func:`~xrayfeat.models.baselines.sample_rows`, as before.
    """
    budget, held, left = memory["memory_budget_bytes"], memory["features_held_bytes"], memory["baselines_budget_bytes"]
    if not held:
        return left, ""
    taken = f"; the features read into memory take {human_bytes(held)} of the {human_bytes(budget)} memory budget, "
    smallest = 2 * len(np.unique(y_fit)) * np.dtype(np.float64).itemsize * max(widths, default=0)
    if left >= smallest or budget < smallest:
        return left, f"{taken}leaving {human_bytes(left)} for the baselines"
    return smallest, (f"{taken}leaving {human_bytes(left) if left else 'nothing'} for the baselines: they were fitted "
                      f"on the smallest sample they can cross-validate (2 images per class, {human_bytes(smallest)})")


def _baselines(split: _Split, head: HeadOptions, n_classes: int, run_dir: Path, fit_idx, val_idx, memory: dict,
               cluster: str | None, guard, pixels_train=None):
    """Fit the baselines on the head's training rows, predict validation and test, save each.

    With ``cluster`` (``--cluster``), the grid searches run on its Dask workers
    through joblib's Dask backend, every candidate and fold a task; the models
    and their scores are the same as on this machine's cores.

    The validation rows are held out of the baselines as they are of the head,
    so every model's threshold is chosen on images it never trained on. A
    training matrix larger than what ``memory`` (:func:`_hold`'s record)
    leaves them (:func:`_baselines_budget`) is sampled (see
    :func:`~xrayfeat.models.baselines.fit_baselines`), and each sample
    becomes a ``subsample`` warning. ``memory["baselines_budget_bytes"]`` is
    set to the bytes they were given. The models are saved only while
    ``guard`` (the claim on the run folder) holds. ``pixels_train``: the
    training images' pixels when already read (:func:`_pixels`). Returns (test
    probabilities, validation probabilities, artifacts, summaries, warnings).
    """
    from xrayfeat.models.baselines import columns_for, fit_baselines, predict_rows, read_pixels, save_baseline
    from xrayfeat.distributed.session import joblib_backend, session

    if not head.baselines:
        return {}, {}, {}, {}, []
    needs_pixels = "pixels" in head.baselines
    if needs_pixels and pixels_train is None:
        pixels_train = read_pixels(split.train, n_jobs=head.n_jobs)
    fit_items = [split.train[k] for k in fit_idx]
    pooled = split.train_arrays.get("pooled")
    widths = [int(np.prod(x.shape[1:])) for x in (pooled, pixels_train) if x is not None]
    budget_bytes, where = _baselines_budget(memory, widths, split.y_train[fit_idx])
    memory["baselines_budget_bytes"] = budget_bytes
    live = session(cluster) if cluster else None
    with joblib_backend(live):
        fitted, samples = fit_baselines(
            head.baselines, budget_bytes,
            pooled_train=None if pooled is None else take(pooled, fit_idx),
            pixels_train=pixels_train[fit_idx] if needs_pixels else None,
            y_train=split.y_train[fit_idx], groups=groups_of(fit_items), seed=head.seed,
            n_jobs=-1 if live else head.n_jobs, class_weight=head.class_weight,
            **({"multilabel": True, "mask": split.mask_train[fit_idx]} if split.multilabel else {}),
        )
    inputs = {
        "test": (split.test_arrays.get("pooled"), read_pixels(split.test, n_jobs=head.n_jobs) if needs_pixels else None),
        "val": (None if pooled is None else take(pooled, val_idx), pixels_train[val_idx] if needs_pixels else None),
    }
    _guarded(guard, (run_dir / "baselines").mkdir, exist_ok=True)
    probabilities = {"test": {}, "val": {}}
    artifacts, summaries = {}, {}
    for name, model in fitted.items():
        for role, (pooled_x, pixels) in inputs.items():
            x = pixels.reshape(len(pixels), -1).astype(np.float32) if name == "pixels" else pooled_x
            probabilities[role][name] = columns_for(model, predict_rows(model, x, budget_bytes), n_classes)
        file = f"baselines/{name}.joblib"
        artifacts[f"baseline/{name}"] = runs.Artifact(file, _guarded(guard, save_baseline, model, run_dir / file))
        summaries[name] = model.summary()
    for sample in samples:
        for name in sample.names:
            summaries[name]["subsample"] = {"rows": sample.rows, "of": sample.of}
    return (probabilities["test"], probabilities["val"], artifacts, summaries,
            [RunWarning("subsample", sample.message + where) for sample in samples])


def _pixels(split: _Split, head: HeadOptions):
    """The training images' 32×32 pixels when the pixels baseline is fitted more than once (``--cv``), else None."""
    from xrayfeat.models.baselines import read_pixels

    return read_pixels(split.train, n_jobs=head.n_jobs) if head.cv and "pixels" in head.baselines else None


def _cv_baselines(split: _Split, head: HeadOptions, n_classes: int, cv: CrossValidation, pixels_train,
                  budget_bytes: int, cluster: str | None) -> tuple[list[dict], list[RunWarning]]:
    """Each baseline fitted on every fold's training rows (the head's, validation held out) and predicting its
    held-out rows, within the budget the main baselines had; ({name: held-out probabilities} per fold, warnings).

    Nothing is saved: the main fit's baselines are the run's models.
    """
    from xrayfeat.models.baselines import columns_for, fit_baselines, predict_rows
    from xrayfeat.distributed.session import joblib_backend, session

    if not head.baselines:
        return [{} for _ in cv.seeds], []
    pooled = split.train_arrays.get("pooled")
    live = session(cluster) if cluster else None
    per_fold, found = [], {}
    for j, seed in enumerate(cv.seeds):
        fit, out = cv.rows(j, FIT), cv.rows(j, OUT)
        with joblib_backend(live):
            fitted, samples = fit_baselines(
                head.baselines, budget_bytes,
                pooled_train=None if pooled is None else take(pooled, fit),
                pixels_train=None if pixels_train is None else pixels_train[fit],
                y_train=split.y_train[fit], groups=groups_of([split.train[i] for i in fit]), seed=seed,
                n_jobs=-1 if live else head.n_jobs, class_weight=head.class_weight,
                **({"multilabel": True, "mask": split.mask_train[fit]} if split.multilabel else {}),
            )
        probabilities = {}
        for name, model in fitted.items():
            x = (pixels_train[out].reshape(len(out), -1).astype(np.float32) if name == "pixels"
                 else take(pooled, out))
            probabilities[name] = columns_for(model, predict_rows(model, x, budget_bytes), n_classes)
        per_fold.append(probabilities)
        for sample in samples:
            found.setdefault(sample.message, RunWarning("subsample", f"cross-validation: {sample.message}"))
    return per_fold, list(found.values())


def _score_folds(dataset, split: _Split, head: HeadOptions, cv: CrossValidation, folds: list[dict],
                 head_folds: list[dict], baseline_folds: list[dict]) -> tuple[dict, dict]:
    """The ``cv`` part of ``metrics.json``, and the out-of-fold probabilities of each model per repeat."""
    classes, k = dataset.classes, head.cv
    n, n_out = len(split.train), len(classes)
    names = ["head", *(baseline_folds[0] if baseline_folds else {})]
    oof = {name: np.full((head.repeats, n, n_out), np.nan) for name in names}
    figures = {name: [] for name in names}
    for j, info in enumerate(folds):
        out = cv.rows(j, OUT)
        mask = None if split.mask_train is None else split.mask_train[out]
        for name in names:
            proba = head_folds[j]["proba_out"] if name == "head" else baseline_folds[j][name]
            oof[name][info["repeat"] - 1, out] = proba
            figures[name].append(fold_figures(split.y_train[out], proba, classes, multilabel=split.multilabel,
                                              mask=mask))
    grouped = ", grouped by patient" if groups_of(split.train) is not None else ""
    validation = (f"{head.val_fraction:.0%} of each fold's training images, stratified{grouped}, as the main fit's "
                  f"validation (thresholds are not used: the figures are threshold-free)")
    summary = crossval.cv_summary(k, [head.seed + r for r in range(head.repeats)], folds, figures,
                                  grouped=bool(grouped), validation=validation)
    return summary, oof


def _write_oof(path: Path, split: _Split, classes, cv: CrossValidation, folds: list[dict], oof: dict,
               repeats: int) -> None:
    """``predictions-oof.csv``: every training image once per repeat, with its held-out fold (and repeat, with
    ``--repeats``), then each model's out-of-fold probabilities: the columns of ``predictions.csv`` otherwise."""
    n = len(split.train)
    fold = np.full((repeats, n), -1, dtype=np.int64)
    for j, info in enumerate(folds):
        fold[info["repeat"] - 1, cv.rows(j, OUT)] = info["fold"]
    extra = {"fold": [int(f) for f in fold.ravel()]}
    if repeats > 1:
        extra["repeat"] = [r + 1 for r in range(repeats) for _ in range(n)]
    runs.write_predictions(path, split.train * repeats, np.tile(split.y_train, repeats) if not split.multilabel
                           else None, classes, {name: p.reshape(repeats * n, -1) for name, p in oof.items()},
                           multilabel=split.multilabel, extra=extra)


def study_warnings(train, test, head_metrics: dict, baseline_metrics: dict, random_weights: bool) -> list[RunWarning]:
    """The warnings this field needs, each with its kind (see :data:`xrayfeat.runs.record.WARNING_KINDS`)."""
    found = []
    if random_weights:
        found.append(runs.RANDOM_WEIGHTS_WARNING)
    overlap = metrics.split_overlap(
        [i.sha256 for i in train], [i.sha256 for i in test],
        [i.patient_id for i in train if i.patient_id], [i.patient_id for i in test if i.patient_id],
    )
    found += [RunWarning("leakage", text) for text in metrics.overlap_warnings(overlap)]
    multilabel = "per_finding" in head_metrics
    tiny = None if multilabel else metrics.tiny_test_warning(len(test), head_metrics["accuracy"])
    if tiny:
        found.append(RunWarning("small_test", tiny))
    if multilabel:  # a finding's interval is as wide as its positives are few
        rare = rare_findings_warning(train, list(head_metrics["per_finding"]))
        if rare:
            found.append(RunWarning("imbalance", rare))
        few = few_positives_warning(head_metrics)
        if few:
            found.append(RunWarning("small_test", few))
    figure = "macro_roc_auc" if multilabel else "accuracy"  # what the sentinel compares: the task's headline
    if "pixels" in baseline_metrics:
        deep = max([head_metrics[figure] or 0.0] + [m[figure] or 0.0 for n, m in baseline_metrics.items()
                                                    if n != "pixels"])
        sentinel = metrics.sentinel_warning(deep, baseline_metrics["pixels"][figure])
        if sentinel:
            found.append(RunWarning("shortcut", f"macro ROC-AUC: {sentinel}" if multilabel else sentinel))
    if head_metrics.get("by_source") and not multilabel:
        gap = metrics.source_gap_warning(head_metrics["by_source"])
        if gap:
            found.append(RunWarning("source_gap", gap))
    found += [RunWarning(GROUP_GAP, text) for text in group_gap_warnings(head_metrics.get("by_group"))]
    if not multilabel:
        labels = sorted({i.label for i in [*train, *test]})
        imbalance = imbalance_warning({c: sum(1 for i in train if i.label == c) for c in labels})
        if imbalance:
            found.append(RunWarning("imbalance", imbalance))
    return found


def _timings(split: _Split, trained, baselines_seconds: float, started: float) -> dict:
    epochs = trained.epoch_seconds
    return {
        "extraction_seconds": round(split.seconds, 3),
        "extracted_images": split.extraction.extracted,
        "head_seconds": round(trained.seconds, 3),
        "head_process_seconds": round(trained.process_seconds, 3),  # with the child's start-up and saving
        # steady state: the first epoch holds graph tracing/compilation, reported apart
        "seconds_per_epoch": round(steady_epoch_seconds(epochs), 4) if epochs else None,
        "first_epoch_seconds": round(epochs[0], 4) if epochs else None,
        "seconds_per_step": trained.step_seconds,
        "baselines_seconds": round(baselines_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
    }


def study_versions() -> dict:
    """The versions a run records (``versions``): Python, the frameworks and libraries that compute it, Keras' backend."""
    libraries = library_versions(("keras", "tensorflow-cpu", "tensorflow", "jax", "torch", "numpy", "scikit-learn", "h5py"))
    return {"python": platform.python_version(), **libraries, "keras_backend": keras_backend_name()}


def fit_head(dataset: Dataset, features: FeatureOptions, head: HeadOptions = HeadOptions(),
             run: RunOptions = RunOptions(), *, out=None, runs_root="runs", overwrite: bool = False,
             replay=None) -> FitResult:
    """Run the whole study on ``dataset`` and write ``runs/<name>/``; see the module docstring.

    ``overwrite=True`` replaces a previous run at ``out`` (finished, or left
    incomplete by a stopped fit-head: :func:`~xrayfeat.runs.folder.replaceable`):
    the new run is written beside it and takes its place only once complete, so
    a failure leaves the previous run as it was. A run being written, or a folder
    of other files, is still refused.

    ``replay``: the :class:`~xrayfeat.runs.replay.Replay` this study repeats
    (``fit-head --config``, :func:`xrayfeat.runs.replay.replay`); its record then
    says so (``replay_of``), with what differed from the run as warnings.
    """
    from xrayfeat.models.head_process import resolve_head_backend

    started = time.perf_counter()
    config = _check_options(dataset, features, head, run)
    head_backend, backend_reason = resolve_head_backend(head.head_backend, device=config.device, train_tail=head.train_tail)
    check_new_folder(out if out else runs_root, "fit-head", cache=run.cache_dir)  # never a run inside a run or a cache
    target = Path(out) if overwrite and out and folder.replaceable(out) else None
    run_dir = folder.new_run_dir(folder.staging_dir(target) if target else out,
                                 folder.task_name(dataset.classes, dataset.multilabel),
                                 features.backbone, runs_root)
    guard = None
    try:  # config.options: the store chosen for the parts the study reads (its keep may differ from features')
        guard = folder.claim_guard(run_dir)  # every write into the folder checks the claim is still this run's
        with writing_to(run_dir, option="--out"):  # a full disk while writing the run: one line naming it
            result = _study(dataset, config.options, head, run, config, head_backend, backend_reason, run_dir, guard,
                            started, replay)
    except BaseException as exc:  # the folder says fit-head failed (the disk was full), or is given back
        folder.abandon_run_dir(run_dir, exc, guard)
        if target is not None:  # the previous run stays; nothing of the new one is left beside it
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if target is None:
        return result
    folder.replace_run(run_dir, target)
    log.info("replaced the previous run at %s", target)
    return replace(result, run=str(target))


def _study(dataset, features, head, run, config, head_backend: str, backend_reason: str, run_dir: Path, guard,
           started: float, replay=None) -> FitResult:
    """Steps 2 to 8 of :func:`fit_head`, into the run folder it claimed (each write checks ``guard``, the claim)."""
    from xrayfeat.models.head_process import start_child

    # a head on another backend trains in a child process; starting it now overlaps its imports with extraction
    # (if this function fails or is interrupted before training, the child is stopped at once)
    child = start_child(head_backend, config.device)
    try:
        split = _extract_split(dataset, features, run, head.uncertain)
        fit_idx, val_idx, val_source = _validation(dataset, split, head)
        check_calibration_data(head.calibrate, split.y_train[val_idx], dataset.classes, multilabel=split.multilabel,
                               mask=None if not split.multilabel else split.mask_train[val_idx])
        cv, folds = _cross_validation(dataset, split, head) if head.cv else (None, [])
        memory = _hold(split, head, val_idx, len(dataset.classes))
    except BaseException:
        if child is not None:
            child.stop()
        raise
    log.info("validation: %s (%d images)", val_source, len(val_idx))
    log.info("head backend: %s (%s)", head_backend, backend_reason)
    n_classes = len(dataset.classes)
    if cv is not None:  # the head's matrix as _hold left it: in memory, or streamed from the store
        cv.x = split.train_arrays[head.head_input]
        log.info("cross-validation: %d folds%s on %d training images", head.cv,
                 f" × {head.repeats} repeats" if head.repeats > 1 else "", len(split.train))
    trained = _train(config, split, fit_idx, val_idx, head, n_classes, run_dir / "head.keras", head_backend, child,
                     guard, cv)
    roles = np.array(["train"] * len(split.train), dtype=object)
    roles[val_idx] = "val"
    used = [(item, role) for item, role in zip(split.train, roles)] + [(item, "test") for item in split.test]
    found = [] if replay is None else replay.warnings(split.store.fingerprint, trained.settings, used)
    trained_on = trained.settings.get("device")
    if trained_on and trained_on != config.device:
        found.append(RunWarning("device", f"the head trained on the {trained_on.upper()}, not the {config.device.upper()} "
                                          f"this run asked for (--head-backend {head_backend} found no {config.device.upper()})"))

    t = time.perf_counter()
    pixels_train = _pixels(split, head)
    probabilities, val_probabilities, baseline_artifacts, baseline_info, sampled = _baselines(
        split, head, n_classes, run_dir, fit_idx, val_idx, memory, run.cluster, guard, pixels_train)
    baselines_seconds = time.perf_counter() - t
    cv_summary = oof = None
    if cv is not None:
        t = time.perf_counter()
        baseline_folds, cv_sampled = _cv_baselines(split, head, n_classes, cv, pixels_train,
                                                   memory["baselines_budget_bytes"], run.cluster)
        sampled += cv_sampled
        cv_summary, oof = _score_folds(dataset, split, head, cv, folds, trained.cv, baseline_folds)
        cv_seconds = time.perf_counter() - t
    probabilities = {"head": trained.proba_test, **probabilities}
    val_probabilities = {"head": trained.proba_val, **val_probabilities}
    positive = None if split.multilabel else positive_class(dataset.classes, head.positive)
    val_mask = None if not split.multilabel else split.mask_train[val_idx]
    repeats = trained.repeats
    calibrated = None
    if head.calibrate != "none":  # fitted on validation; the thresholds below are chosen on what it gives
        probabilities, val_probabilities, calibrated = _calibrate(head.calibrate, split, val_idx, probabilities,
                                                                  val_probabilities, dataset.classes)
        repeats = _calibrated_repeats(head.calibrate, split, val_idx, repeats, dataset.classes)
    thresholds = choose_model_thresholds(split.y_train[val_idx], val_probabilities, dataset.classes, head.threshold, positive,
                                         multilabel=split.multilabel, mask=val_mask)
    scored = evaluate_models(probabilities, split.y_test, dataset.classes, split.test, n_boot=head.n_bootstrap, seed=head.seed,
                             thresholds=thresholds, rule=head.threshold, multilabel=split.multilabel,
                             mask=split.mask_test)
    head_metrics = scored.pop("head")
    spread = seed_spread(head_metrics, repeats, split.y_test, dataset.classes,
                         list(range(head.seed, head.seed + head.repeats)), mask=split.mask_test)
    found += study_warnings(split.train, split.test, head_metrics, scored, split.extraction.random_weights) + sampled
    for warning in found:
        if replay is None or warning not in replay.told:  # a replay said its version differences before extracting
            log.warning("%s", warning.message)

    record = runs.RunRecord(
        xrayfeat=__version__, created=utc_timestamp(), data=str(dataset.data_path),
        task=folder.task_name(dataset.classes, dataset.multilabel), classes=list(dataset.classes),
        multilabel=dataset.multilabel,
        counts={"train": len(fit_idx), "val": len(val_idx), "test": len(split.test), "skipped": split.extraction.skipped},
        skipped_files=list(split.extraction.skipped_files),
        validation=val_source, features=asdict(features),
        head={**asdict(head), "validation_steps": head.seed_validation_steps(n_classes), "baselines": list(head.baselines)},
        run={"device": run.device, "batch_size": run.batch_size, "cache_dir": str(run.cache_dir), "on_error": run.on_error,
             **({"cluster": run.cluster, "chunk_images": run.chunk_images} if run.cluster else {})},
        store={"path": str(split.store.path), "fingerprint": split.store.fingerprint,
               "fingerprint_id": split.store.fingerprint_id},
        weights={"kind": config.weights.kind, "identity": config.weights.identity, "path": config.weights.path,
                 "random": config.weights.random},
        params=trained.params,
        training={**trained.settings, "backend_requested": head.head_backend, "backend_reason": backend_reason,
                  "process": trained.process, **memory},
        timings=_timings(split, trained, baselines_seconds, started), baselines=baseline_info, versions=study_versions(),
        warnings=found, replay_of=None if replay is None else replay.provenance(),
    )
    if cv is not None:  # the folds' heads trained with the main head (head_process_seconds); their baselines here
        record.timings["cv_baselines_seconds"] = round(cv_seconds, 3)
    _guarded(guard, runs.write_splits, run_dir / "splits.csv", used)
    val_items = [split.train[k] for k in val_idx]
    _guarded(guard, runs.write_predictions, run_dir / "predictions-val.csv", val_items, split.y_train[val_idx],
             dataset.classes, val_probabilities, multilabel=split.multilabel)
    summary = {"head": head_metrics, "baselines": scored, "positive": positive, "threshold_rule": head.threshold,
               **run_decision(thresholds, split.multilabel)}
    if calibrated is not None:
        summary["calibrated"] = calibrated
    if spread:
        summary["repeats"] = spread
    if cv is not None:
        summary["cv"] = cv_summary
        _guarded(guard, _write_oof, run_dir / "predictions-oof.csv", split, dataset.classes, cv, folds, oof,
                 head.repeats)
    _write_run(record, run_dir, split, trained, summary, probabilities, baseline_artifacts, dataset.classes, guard)
    return FitResult(run=str(run_dir), test=headline(head_metrics), baselines={n: headline(m) for n, m in scored.items()},
                     warnings=found, timings=record.timings, operating=head_metrics.get("operating_points"),
                     repeats=spread, cv=cv_summary, skipped_files=record.skipped_files, decision=summary["decision"],
                     calibrated=calibrated, replay_of=record.replay_of)


def run_decision(thresholds: dict, multilabel: bool) -> dict:
    """``metrics.json``'s ``decision``: the rule predict applies by default, and why where it is not the thresholds.

    A multi-label run calls each finding at its threshold. A single-label run
    decides by its thresholds when every model has one for every class it
    scores (:func:`xrayfeat.analysis.decision.decide`), else by the argmax, and
    ``decision_note`` names what is missing.
    """
    if multilabel:
        return {"decision": "threshold"}
    missing = [f"{model} has none for {name!r} ({entry.get('note') or 'none chosen'})"
               for model, chosen in thresholds.items() for name, entry in chosen.items() if entry["threshold"] is None]
    if missing:
        return {"decision": "argmax", "decision_note": "argmax, not the thresholds: " + "; ".join(missing)}
    return {"decision": "threshold"}


def _calibrate(method: str, split: _Split, val_idx, probabilities: dict, val_probabilities: dict, classes):
    """Each model's calibrator, fitted on its validation probabilities: (test, validation) calibrated, and the record.

    The record (``metrics.json``'s ``calibrated``) holds each model's calibrator
    and its Brier score and ECE before and after on validation and test.
    """
    multilabel = split.multilabel
    y_val = split.y_train[val_idx]
    mask_val = split.mask_train[val_idx] if multilabel else None
    models, test, val = {}, {}, {}
    for name, raw_val in val_probabilities.items():
        calibrator = fit_calibrator(method, y_val, raw_val, classes, multilabel=multilabel, mask=mask_val)
        models[name] = calibrators.summary(calibrator, {"validation": (y_val, mask_val, raw_val),
                                                        "test": (split.y_test, split.mask_test, probabilities[name])},
                                           classes, multilabel=multilabel)
        val[name] = apply_calibrator(calibrator, raw_val, classes, multilabel=multilabel)
        test[name] = apply_calibrator(calibrator, probabilities[name], classes, multilabel=multilabel)
        uncalibrated = [c for c, m in (calibrator.get("isotonic") or {}).items() if m is None] if multilabel else []
        if uncalibrated:
            log.warning("%s: findings left uncalibrated (validation has no positive or no negative of them): %s",
                        name, ", ".join(uncalibrated))
    log.info("calibration (%s, fitted on %d validation images): head ECE on validation %.3f -> %.3f", method,
             len(val_idx), models["head"]["validation"]["before"]["ece"] or 0.0,
             models["head"]["validation"]["after"]["ece"] or 0.0)
    return test, val, {"method": method, "fitted_on": "validation", "n": int(len(val_idx)), "models": models}


def _calibrated_repeats(method: str, split: _Split, val_idx, repeats: list[dict], classes) -> list[dict]:
    """The head's other seeds, each through a calibrator fitted on its own validation probabilities (as the first)."""
    multilabel = split.multilabel
    y_val = split.y_train[val_idx]
    mask_val = split.mask_train[val_idx] if multilabel else None
    out = []
    for repeat in repeats:
        calibrator = fit_calibrator(method, y_val, repeat["proba_val"], classes, multilabel=multilabel, mask=mask_val)
        out.append({**repeat, "proba_test": apply_calibrator(calibrator, repeat["proba_test"], classes,
                                                             multilabel=multilabel)})
    return out


def _write_run(record, run_dir: Path, split: _Split, trained, summary: dict, probabilities, baseline_artifacts,
               classes, guard) -> None:
    """Every artifact, then the record naming each with its sha256 (written last: its presence means complete).

    ``guard`` (the claim on the folder) is checked before each write (:func:`_guarded`).
    """
    head_metrics = summary["head"]
    _guarded(guard, write_json, run_dir / "metrics.json", summary)
    _guarded(guard, runs.write_history, run_dir / "history.csv", trained.history, trained.epoch_seconds)
    _guarded(guard, runs.write_predictions, run_dir / "predictions.csv", split.test, split.y_test, classes, probabilities,
             multilabel=split.multilabel)
    title = f"{record.task} · {record.backbone}" + (" · RANDOM weights" if record.weights["random"] else "")
    _guarded(guard, plots.plot_curves, trained.history, run_dir / "curves.png", title=title,
             best_epoch=trained.settings.get("best_epoch"))
    files = {"head": "head.keras", "metrics": "metrics.json", "history": "history.csv",
             "predictions": "predictions.csv", "predictions_val": "predictions-val.csv", "splits": "splits.csv",
             "curves": "curves.png", "confusion": "confusion.png", "roc": "roc.png", "calibration": "calibration.png"}
    if split.multilabel:  # findings have no confusion matrix: each has its operating point instead
        del files["confusion"]
    else:
        _guarded(guard, plots.plot_confusion, head_metrics["confusion"], list(classes), run_dir / "confusion.png",
                 title=title)
    _guarded(guard, plots.plot_roc, split.y_test, probabilities["head"], list(classes), run_dir / "roc.png", title=title,
             mask=split.mask_test)
    models = {"head": head_metrics, **summary["baselines"]}
    _guarded(guard, plots.plot_calibration, plots.calibration_curves(models), run_dir / "calibration.png", title=title)
    if "cv" in summary:
        files["predictions_oof"] = "predictions-oof.csv"
    if (run_dir / "head.npz").is_file():  # the plain seed head's arrays, for inference without Keras
        files["head_arrays"] = "head.npz"
        if split.multilabel:
            log.info("no gradcam.png: a multi-label run explains each finding with xrayfeat explain --class FINDING")
        elif record.head_input != "spatial":
            log.info("no gradcam.png: Grad-CAM needs a head on spatial maps, this one reads %s vectors",
                     record.head_input)
        elif _guarded(guard, _gradcam_grid, record, run_dir, split, trained, classes, title):
            files["gradcam"] = "gradcam.png"
    record.artifacts = dict(runs.artifact(run_dir, name, file) for name, file in files.items())
    record.artifacts.update(baseline_artifacts)
    _guarded(guard, runs.write_record, record, run_dir)


def _guarded(guard, write, *args, **kwargs):
    """``write(*args, **kwargs)``, a write into the run folder, only while the claim on it holds.

    ``guard`` is the :class:`~xrayfeat.distributed.lifetime.WriteGuard` of
    :func:`~xrayfeat.runs.folder.claim_guard`: a folder deleted and claimed by
    another fit-head meanwhile (this one was stopped, say) is never written.
    """
    guard.check()
    return write(*args, **kwargs)


def _gradcam_grid(record, run_dir: Path, split: _Split, trained, classes, title: str) -> bool:
    """``gradcam.png``: Grad-CAM overlays of a few test images per class, right and wrong, from the cached maps.

    Only the maps of the images drawn are read (the grid chooses the same ones
    among them as among all test images).
    """
    from xrayfeat.analysis import gradcam
    from xrayfeat.models import head_numpy

    head = head_numpy.NumpyHead(run_dir / "head.npz").arrays
    rows = np.array(sorted({i for cells in gradcam.choose_examples(split.y_test, trained.proba_test)
                            for half in cells for i in half}), dtype=np.int64)
    drawn = gradcam.example_grid(
        [split.test[i].path for i in rows], split.test_arrays["spatial"][rows], head, split.y_test[rows],
        trained.proba_test[rows], list(classes), run_dir / "gradcam.png",
        image_size=record.features.get("image_size") or drawing_size(split.store.fingerprint), title=title)
    return drawn is not None


# --------------------------------------------------------------------------- maps



# --------------------------------------------------------------------------- export


