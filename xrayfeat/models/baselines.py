"""scikit-learn baselines beside the Keras head.

Why baselines at all: a deep head that scores 0.85 means little until we know
what a linear model on the same cached features scores, and what a linear model
on the raw pixels scores. The last one, ``pixels``, is a *sentinel*: logistic
regression on the images downsampled to 32x32 grayscale. When it does as well
as the backbone, the data (a shortcut such as a hospital's marker, an age
difference between the classes) and not the model is doing the work.

Three baselines, each a :class:`~sklearn.pipeline.Pipeline` with steps named
``scale``, ``pca`` and ``clf`` and a small hyper-parameter grid searched by
cross-validation on the training split only:

``logreg``
    ``StandardScaler -> [PCA] -> LogisticRegression`` on pooled features.
    Grid: 5 values of ``C`` (1e-4 .. 1), times PCA on/off when there are many
    features per sample (``n_features > n_samples / 2``), where truncating to
    the top components is a useful extra regulariser. At most 10 candidates.
``svm``
    ``StandardScaler -> PCA -> SVC(kernel="rbf")`` on pooled features.
    Grid: ``C`` in {0.1, 1, 10} times ``gamma`` in {"scale" and about 4x on
    either side}: 9 candidates. PCA to at most 128 components is always applied
    when there are more features than that, because libsvm's cost is
    proportional to the feature count (one fit on 10,000 x 2048 took 3-4.5
    minutes, on 128 components about 10 s), and an RBF distance is dominated
    by the high-variance directions PCA keeps. An SVC also costs about
    n_samples**2, so above 2,000 training images the search runs on a
    stratified random subsample of 2,000 (``n_search_samples_``); the chosen
    SVC is calibrated and refitted on all images.
``pixels``
    ``StandardScaler -> PCA(<= 50) -> LogisticRegression`` on flattened 32x32
    pixels. Grid: 5 values of ``C`` (1e-3 .. 10).

Choosing the scoring
    Candidates are *selected* by cross-validated log-loss (``neg_log_loss``)
    for the two logistic models: it is a proper scoring rule, so it picks the
    regularisation that gives honest probabilities (which the run record's
    log-loss and ROC curves need), and it is continuous, whereas accuracy on a
    fold of ~60 images moves in steps of 1/60 and ties between candidates are
    common. The SVM is selected by accuracy, because an SVC has no probabilities
    without an extra internal cross-validation (Platt scaling), which would make
    every candidate fit about 6x dearer. The score *reported* (``cv_score_``)
    is always the mean cross-validated accuracy of the chosen candidate, so the
    three baselines and the head can be compared on one scale.

SVM probabilities
    ``SVC(probability=True)`` is deprecated in scikit-learn 1.9 in favour of
    ``CalibratedClassifierCV(SVC(), ensemble=False)``, which does the same
    thing (sigmoid/Platt calibration of the decision function on
    cross-validated predictions, then one fit on all data) at the same cost,
    about 5-6 plain fits (measured on 4,000 x 128: 1.6 s plain, 9.4 s
    ``probability=True``, 8.3 s calibrated). So the search picks ``C`` and
    ``gamma`` with plain SVCs, and the calibration is done once, for the chosen
    candidate, on the same folds. Inside every candidate it would have made
    the search about 6x dearer.

Cost (one core's CPU time; 4 classes, 2048 features, hard synthetic data)
    300 images: about 3 s each for ``logreg`` (50 fits) and ``svm``.
    10,000 images: about 40 s for ``logreg`` and 105 s for ``svm``, of which
    the 2,000-image search is under a quarter and the calibration and refit on
    all 10,000 the rest. Searching on all 10,000 would take about 45 fits x 5 s
    = 4 CPU-minutes more, and Platt scaling inside every candidate about 25.

Class weights
    ``class_weight="balanced"`` weights every class as if the classes were
    equally frequent in the training data (scikit-learn's ``n / (K * count_k)``
    for class k): it is passed as ``class_weight="balanced"`` to each
    :class:`LogisticRegression` (``logreg``, ``pixels``) and to the SVCs the
    search tries. The chosen SVM gets the same weights per sample instead,
    because its Platt sigmoid must be fitted on weighted data too: fitted
    unweighted, it learns the training data's class frequencies back and undoes
    the weighting (on the 4:1 data of tests/test_imbalance.py it gave exactly
    the unweighted SVM's predictions). Per-sample weights reach the SVC inside
    as well, which scales each sample's C as the class weights would, so the
    weights apply once. The default, ``"none"``, is the seed's. The scores the
    search selects by stay unweighted.

Cross-validation
    :func:`cv_splitter` gives stratified folds, grouped by patient when patient
    ids are known (images of one patient in both the fitting and the validation
    fold would reward memorising patients). The folds are computed once and
    shared by the search and the calibration, so everything is deterministic
    for a seed. Parallelism is ``n_jobs`` of :class:`GridSearchCV` (joblib).
    During the search the scaler and PCA are cached per fold (a joblib
    ``Memory`` in a temporary folder), so PCA is fitted once per fold, not once
    per candidate.

Multi-label tasks
    One-vs-rest (:class:`MultiLabelBaseline`): for each finding, the baseline
    above, fitted on the rows whose mask counts that finding (uncertain or
    blank entries left out), with its own search and folds (grouped by patient
    when known). ``predict_proba`` gives each finding's positive-class
    probability, (n, K). A finding that cannot be cross-validated among its
    counted rows (one class only, or under 2 images or patients of a class) is
    predicted as its training prevalence, a constant, and its summary says
    why. ``class_weight="balanced"`` balances each finding's two classes.

Memory
    A baseline is fitted on its whole training matrix as float64. When that
    matrix would exceed the memory budget (``--memory-budget``),
    :func:`fit_baselines` (given ``budget_bytes``) fits the baselines reading it on a stratified
    random sample of the rows that fits (:func:`sample_rows`, seeded; every
    class keeps at least 2 rows, so it can still be cross-validated) and says
    so (:class:`Subsample`: a log line here, a run warning in fit-head); the
    models stay the same kind, and the search and its scores are as above, on
    the sample. Pooled features may then be a :class:`~xrayfeat.store.rows.StoreRows`,
    of which only the sampled rows are read. :func:`predict_rows` predicts a
    block of rows at a time when the rows to predict exceed the budget.

Saved models are joblib pickles. Unpickling runs code, so :func:`load_baseline`
loads only a file whose SHA-256 matches the one :func:`save_baseline` returned
and the run record stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, make_scorer
from sklearn.model_selection import GridSearchCV, ParameterGrid, PredefinedSplit, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_sample_weight

from xrayfeat.errors import XrayfeatError
from xrayfeat.fileio import atomic_path, file_digest
from xrayfeat.options.settings import BASELINES, HeadOptions
from xrayfeat.options.parsers import Names, parse_list
from xrayfeat.options.constraints import Choice, Interval, Is, declaration, validate_params
from xrayfeat.store.rows import StoreRows, human_bytes

__all__ = [
    "BASELINES",
    "CrossValidationError",
    "MultiLabelBaseline",
    "columns_for",
    "read_pixels",
    "FittedBaseline",
    "cv_splitter",
    "fit_baseline",
    "fit_baselines",
    "predict_rows",
    "sample_rows",
    "Subsample",
    "baseline_from_bytes",
    "load_baseline",
    "make_search",
    "parse_baselines",
    "save_baseline",
]

logger = logging.getLogger(__name__)


class CrossValidationError(XrayfeatError):
    """The training data cannot be cross-validated: one class only, or too few images (patients) of a class.

    A multi-label baseline catches it for one finding and predicts that
    finding's training prevalence instead (see :class:`MultiLabelBaseline`).
    """


#: Which training array each baseline reads (the argument name of :func:`fit_baselines`).
_INPUTS = {"logreg": "pooled_train", "svm": "pooled_train", "pixels": "pixels_train"}

_MAX_SPLITS = 5
_LOGREG_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_PIXELS_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
_SVM_CS = (0.1, 1.0, 10.0)
_SVM_GAMMA_FACTORS = (0.25, 4.0)  # around "scale" (~1/n_features after StandardScaler)
_FEATURES_PCA = 128  # components for pooled features (svm always, logreg as an option)
_PIXELS_PCA = 50
_LOGREG_MAX_ITER = 5000
_SVM_CACHE_MB = 500
#: Above this many training images the SVM's search runs on a subsample of this size.
_SVM_SEARCH_MAX = 2000
#: Bytes per value of the matrix a baseline is fitted on (:func:`_as_matrix` widens to float64).
_MATRIX_ITEMSIZE = 8


def parse_baselines(text: str) -> tuple[str, ...]:
    """Parse the CLI option ``--baselines logreg,svm,pixels|none`` (see :func:`xrayfeat.options.parsers.parse_list`).

    Order is kept, duplicates are dropped, names are case-insensitive and may
    have spaces around them; ``"none"`` gives ``()``. Anything else (an unknown
    name, an empty item, ``none`` mixed with names, not a string) raises
    :class:`~xrayfeat.errors.XrayfeatError` quoting what was passed.
    """
    return parse_list(text, BASELINES, "baselines", none=True)


#: The declared constraints of the baselines' parameters; the options of fit-head reuse HeadOptions' declarations.
_NAME = Choice(BASELINES)
_OPTIONS = {name: declaration(HeadOptions, name) for name in ("seed", "n_jobs", "class_weight")}
_COUNT = Interval(1, None, integer=True)


def _pca_components(cap: int, n_features: int, n_samples: int) -> int:
    # A training fold holds at least about half the samples (>= 2 folds), and PCA
    # needs n_components <= min(fold size, n_features).
    return max(1, min(cap, n_features, n_samples // 2))


@validate_params({"name": _NAME, "n_features": _COUNT, "n_samples": _COUNT, **_OPTIONS})
def make_search(
    name: str,
    *,
    n_features: int,
    n_samples: int,
    seed: int = 0,
    cv: Any,
    n_jobs: int | None = None,
    classes: Any = None,
    memory: Any = None,
    class_weight: str = "none",
) -> GridSearchCV:
    """Build the (unfitted) hyper-parameter search for one baseline.

    ``n_features`` and ``n_samples`` (of the training data) size the PCA and decide
    whether PCA is offered; ``cv`` is anything :class:`GridSearchCV` accepts
    (see :func:`cv_splitter`). ``classes``, when given, are passed to the
    log-loss scorer so that a validation fold missing a class still scores.
    ``memory`` caches the scaler/PCA per fold (see :class:`Pipeline`).
    ``class_weight="balanced"`` gives the classifier scikit-learn's balanced
    class weights (see the module docstring).

    The search scores every candidate by accuracy and, for ``logreg`` and
    ``pixels``, log-loss; ``refit`` names the selection metric (``neg_log_loss``
    or ``accuracy``, see the module docstring). For ``svm`` the refitted
    ``best_estimator_`` is a plain SVC pipeline without probabilities;
    :func:`fit_baseline` adds the calibration.
    """
    weights = None if class_weight == "none" else "balanced"

    scoring: dict[str, Any] = {"accuracy": "accuracy"}
    if name == "svm":
        refit = "accuracy"
    else:
        labels = None if classes is None else np.asarray(classes)
        scoring["neg_log_loss"] = make_scorer(
            log_loss, greater_is_better=False, response_method="predict_proba", labels=labels
        )
        refit = "neg_log_loss"

    def logistic() -> LogisticRegression:
        return LogisticRegression(max_iter=_LOGREG_MAX_ITER, random_state=seed, class_weight=weights)

    grid: dict[str, list[Any]]
    if name == "logreg":
        pca: Any = "passthrough"
        grid = {"clf__C": list(_LOGREG_CS)}
        if n_features > n_samples / 2:
            k = _pca_components(_FEATURES_PCA, n_features, n_samples)
            if k < n_features:
                grid["pca"] = ["passthrough", PCA(n_components=k, random_state=seed)]
        clf: Any = logistic()
    elif name == "svm":
        k = _pca_components(_FEATURES_PCA, n_features, n_samples)
        pca = PCA(n_components=k, random_state=seed) if k < n_features else "passthrough"
        # After StandardScaler the total variance is n_features, so gamma="scale"
        # is about 1/n_features (a little more when PCA drops some variance).
        scale = 1.0 / n_features
        gammas = [_SVM_GAMMA_FACTORS[0] * scale, "scale", _SVM_GAMMA_FACTORS[1] * scale]
        grid = {"clf__C": list(_SVM_CS), "clf__gamma": gammas}
        clf = SVC(kernel="rbf", cache_size=_SVM_CACHE_MB, random_state=seed, class_weight=weights)
    else:  # pixels
        k = _pca_components(_PIXELS_PCA, n_features, n_samples)
        pca = PCA(n_components=k, random_state=seed)
        grid = {"clf__C": list(_PIXELS_CS)}
        clf = logistic()

    pipeline = Pipeline([("scale", StandardScaler()), ("pca", pca), ("clf", clf)], memory=memory)
    return GridSearchCV(
        pipeline,
        grid,
        scoring=scoring,
        refit=refit,
        cv=cv,
        n_jobs=n_jobs,
        error_score="raise",
    )


def cv_splitter(y: Any, groups: Any = None, seed: int = 0) -> StratifiedKFold | StratifiedGroupKFold:
    """Stratified folds for ``y``, grouped by ``groups`` (patient ids) when given.

    ``n_splits`` is ``min(5, smallest class count)``, the count being images per
    class, or distinct patients per class when grouped, so that every class can
    be in every training fold. Folds are shuffled with ``seed``. A class with
    fewer than 2 images (patients) cannot be cross-validated and raises
    :class:`CrossValidationError` (an :class:`~xrayfeat.errors.XrayfeatError`).
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0:
        raise XrayfeatError(f"Cannot cross-validate: labels must be a non-empty 1-D array; got shape {y.shape}.")
    classes, y_idx = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise CrossValidationError(
            f"Cannot cross-validate: the training data has only one class ({_label(classes[0])!r}); at least 2 are needed."
        )
    if groups is None:
        counts = np.bincount(y_idx)
        unit = "image"
    else:
        groups = np.asarray(groups)
        if groups.shape != y.shape:
            raise XrayfeatError(
                f"Cannot cross-validate: groups (patient ids) must have one entry per label; "
                f"got {groups.shape[0] if groups.ndim else 0} for {y.shape[0]} labels."
            )
        counts = np.array([np.unique(groups[y_idx == c]).size for c in range(classes.size)])
        unit = "patient"
    smallest = int(counts.min())
    if smallest < 2:
        worst = _label(classes[int(counts.argmin())])
        raise CrossValidationError(
            f"Cannot cross-validate: class {worst!r} has {smallest} {unit} in the training data; "
            f"every class needs at least 2 {unit}s."
        )
    n_splits = min(_MAX_SPLITS, smallest)
    if groups is None:
        return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)


@dataclass
class FittedBaseline:
    """One fitted baseline: the refitted best pipeline and how it was chosen.

    ``estimator_`` is a :class:`Pipeline` (``scale``, ``pca``, ``clf``) fitted on
    all training data with ``best_params_``; for ``svm`` the ``clf`` step is a
    :class:`CalibratedClassifierCV` around the chosen SVC. ``cv_score_`` is the
    mean cross-validated accuracy of that choice, ``cv_std_`` its standard
    deviation over folds, ``selection_metric_`` what picked it. ``class_weight``:
    ``"none"`` or ``"balanced"``, as asked (see the module docstring).
    """

    name: str
    estimator_: Pipeline
    best_params_: dict[str, Any]
    cv_score_: float
    fit_seconds_: float
    cv_std_: float = float("nan")
    selection_metric_: str = "accuracy"
    n_splits_: int = 0
    n_candidates_: int = 0
    n_search_samples_: int = 0
    cv_log_loss_: float | None = None
    class_weight: str = "none"

    @property
    def classes_(self) -> np.ndarray:
        """Class labels in the column order of :meth:`predict_proba`."""
        return self.estimator_.classes_

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape ``(n, K)``, rows summing to 1, columns in ``classes_`` order."""
        return self.estimator_.predict_proba(_as_matrix(X, self.name, "X"))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row (argmax of :meth:`predict_proba`)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable description for the run record."""
        return {
            "name": self.name,
            "cv_accuracy": self.cv_score_,
            "cv_accuracy_std": self.cv_std_,
            "cv_log_loss": self.cv_log_loss_,
            "selection_metric": self.selection_metric_,
            "n_splits": self.n_splits_,
            "n_candidates": self.n_candidates_,
            "n_search_samples": self.n_search_samples_,
            "best_params": {k: _jsonable(v) for k, v in self.best_params_.items()},
            "class_weight": self.class_weight,
            "fit_seconds": self.fit_seconds_,
        }


@dataclass
class MultiLabelBaseline:
    """One baseline for a multi-label task: one-vs-rest, a binary :class:`FittedBaseline` per finding.

    Finding k's baseline is fitted on the rows whose mask is True for k, with
    its own search, folds grouped by patient when patient ids are known
    (:func:`fit_baseline`). A finding that cannot be cross-validated there (one
    class only among its counted rows, or too few images or patients of a
    class) gets no model: it is predicted as its training prevalence, the share
    of positives among its counted rows (0.5 with none), and
    ``constant_reasons_[k]`` says why. ``findings_[k]``: the fitted baseline or
    None; ``prevalence_[k]``; ``n_rows_[k]``: its counted training rows.
    ``classes_`` are the finding indices, so :func:`columns_for` and a run's
    loader read it as a classifier whose columns are the findings.
    """

    name: str
    findings_: list
    prevalence_: list
    n_rows_: list
    constant_reasons_: list
    fit_seconds_: float
    class_weight: str = "none"

    @property
    def classes_(self) -> np.ndarray:
        """The finding indices, in the column order of :meth:`predict_proba`."""
        return np.arange(len(self.findings_))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Each finding's positive-class probability, shape ``(n, K)`` (rows do not sum to 1)."""
        X = _as_matrix(X, self.name, "X")
        columns = []
        for fitted, prevalence in zip(self.findings_, self.prevalence_):
            if fitted is None:
                columns.append(np.full(X.shape[0], prevalence, dtype=np.float64))
            else:
                positive = int(np.flatnonzero(np.asarray(fitted.classes_) == 1)[0])
                columns.append(fitted.estimator_.predict_proba(X)[:, positive])
        return np.stack(columns, axis=1)

    def predict(self, X: Any) -> np.ndarray:
        """``(n, K)`` 0/1: each finding predicted present when its probability is at least 0.5."""
        return (self.predict_proba(X) >= 0.5).astype(np.int64)

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable description for the run record: the findings' mean scores, then each finding's.

        ``cv_accuracy`` and ``cv_log_loss`` are the means over the findings that
        have a model (None when none has); ``findings`` holds, per finding,
        ``rows``, ``prevalence``, ``constant`` (True: predicted as its
        prevalence, with the ``reason``) and, for a fitted one, its
        :meth:`FittedBaseline.summary` fields.
        """
        fitted = [f for f in self.findings_ if f is not None]
        losses = [f.cv_log_loss_ for f in fitted if f.cv_log_loss_ is not None]
        findings = []
        for k, (model, prevalence, rows, reason) in enumerate(
                zip(self.findings_, self.prevalence_, self.n_rows_, self.constant_reasons_)):
            entry = {"finding": k, "rows": int(rows), "prevalence": float(prevalence), "constant": model is None}
            if model is None:
                entry["reason"] = reason
            else:
                entry.update({key: value for key, value in model.summary().items() if key != "name"})
            findings.append(entry)
        return {
            "name": self.name,
            "multilabel": True,
            "cv_accuracy": float(np.mean([f.cv_score_ for f in fitted])) if fitted else None,
            "cv_log_loss": float(np.mean(losses)) if losses else None,
            "class_weight": self.class_weight,
            "fit_seconds": self.fit_seconds_,
            "findings": findings,
        }


def _label(value: Any) -> Any:
    """A class label or group id as a plain Python value, for messages."""
    return value.item() if isinstance(value, np.generic) else value


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _as_matrix(X: Any, name: str, param: str) -> np.ndarray:
    """Rows of float64 features; pixel images ``(n, h, w)`` are flattened."""
    if X is None:
        raise XrayfeatError(f"The '{name}' baseline needs {param}; got None.")
    X = np.asarray(X)
    if X.ndim > 2 and name == "pixels":
        X = X.reshape(X.shape[0], -1)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise XrayfeatError(
            f"The '{name}' baseline needs {param} as a non-empty 2-D array (n_samples, n_features); "
            f"got shape {X.shape}."
        )
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise XrayfeatError(f"The '{name}' baseline needs numeric {param}; got dtype {X.dtype}.")
    # float16 (the feature store's dtype) is too coarse for StandardScaler's sums.
    X = X.astype(np.float64, copy=False)
    if not np.isfinite(X).all():
        raise XrayfeatError(f"The '{name}' baseline got {param} with NaN or infinite values.")
    return X


def _folds(name: str, y: np.ndarray, groups: np.ndarray | None, seed: int) -> PredefinedSplit:
    """The cross-validation folds, fixed once (so search and calibration share them)."""
    splitter = cv_splitter(y, groups, seed)
    classes = np.unique(y)
    test_fold = np.full(y.shape[0], -1, dtype=np.int64)
    splits = list(splitter.split(np.zeros((y.shape[0], 1)), y, groups))
    for i, (train, test) in enumerate(splits):
        missing = np.setdiff1d(classes, y[train])
        if missing.size:
            raise CrossValidationError(
                f"Cannot cross-validate the '{name}' baseline: fold {i + 1} of {len(splits)} has no training "
                f"example of class {_label(missing[0])!r} (too few patients of that class)."
            )
        test_fold[test] = i
    return PredefinedSplit(test_fold)


def _search_rows(name: str, y: np.ndarray, groups: np.ndarray | None, seed: int, n_splits: int) -> np.ndarray:
    """The rows the hyper-parameter search uses: all of them, except for a large SVM.

    An RBF SVC costs about n_samples**2, and the search fits it
    ``n_candidates x n_folds`` = 45 times, so for ``svm`` on more than
    :data:`_SVM_SEARCH_MAX` images the search runs on a stratified random
    subsample of that size (classes with fewer than 50 images are kept whole);
    the chosen SVC is then calibrated and refitted on every image. If the
    subsample could not be cross-validated as finely as the full data, all rows
    are used.
    """
    n = y.shape[0]
    if name != "svm" or n <= _SVM_SEARCH_MAX:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    rows = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        take = min(members.size, max(round(_SVM_SEARCH_MAX * members.size / n), 50))
        rows.append(rng.choice(members, size=take, replace=False))
    rows = np.sort(np.concatenate(rows))
    try:
        sub_splits = cv_splitter(y[rows], None if groups is None else groups[rows], seed).get_n_splits()
    except XrayfeatError:
        sub_splits = 0
    if sub_splits < n_splits:
        logger.info("baseline %s: the subsample would allow only %d folds; searching on all %d rows", name, sub_splits, n)
        return np.arange(n)
    return rows


@validate_params({"name": _NAME, "multilabel": Is((bool,)), **_OPTIONS})
def fit_baseline(
    name: str,
    X_train: Any,
    y_train: Any,
    *,
    groups: Any = None,
    seed: int = 0,
    n_jobs: int | None = None,
    class_weight: str = "none",
    multilabel: bool = False,
    mask: Any = None,
) -> FittedBaseline | MultiLabelBaseline:
    """Choose hyper-parameters by cross-validation on the training data, then refit on all of it.

    ``X_train`` is pooled features ``(n, C)`` for ``logreg``/``svm`` and pixels
    ``(n, 32, 32)`` or ``(n, 1024)`` for ``pixels``. ``groups`` are patient ids
    (folds never split a patient). ``n_jobs`` runs candidates in parallel through
    joblib. The result depends only on the data and ``seed``. ``class_weight``:
    ``"none"`` or ``"balanced"`` (see the module docstring).

    For ``svm`` on more than :data:`_SVM_SEARCH_MAX` images the search runs on a
    stratified subsample (see :func:`_search_rows`); ``n_search_samples_`` says
    how many rows it used.

    ``multilabel=True``: ``y_train`` is (n, K) 0/1 targets and ``mask`` (n, K)
    bool, True where an entry counts (None: every entry counts); the result is a
    :class:`MultiLabelBaseline`, one-vs-rest (see there).
    """
    mask = _multilabel_mask(mask, multilabel, f"The '{name}' baseline")
    if multilabel:
        return _fit_one_vs_rest(name, X_train, y_train, mask, groups=groups, seed=seed, n_jobs=n_jobs,
                                class_weight=class_weight)
    start = time.perf_counter()
    X = _as_matrix(X_train, name, "X_train")
    y = np.asarray(y_train)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise XrayfeatError(
            f"The '{name}' baseline needs one label per row: X_train has {X.shape[0]} rows, "
            f"y_train has shape {y.shape}."
        )
    if groups is not None:
        groups = np.asarray(groups)
    cv = _folds(name, y, groups, seed)
    n_splits = cv.get_n_splits()
    rows = _search_rows(name, y, groups, seed, n_splits)
    subsampled = rows.size < y.shape[0]
    search_cv = _folds(name, y[rows], None if groups is None else groups[rows], seed) if subsampled else cv
    X_search, y_search = (X[rows], y[rows]) if subsampled else (X, y)

    with tempfile.TemporaryDirectory(prefix="xrayfeat-baseline-") as cache_dir:
        search = make_search(
            name,
            n_features=X.shape[1],
            n_samples=rows.size,
            seed=seed,
            cv=search_cv,
            n_jobs=n_jobs,
            classes=np.unique(y),
            memory=joblib.Memory(cache_dir, verbose=0),
            class_weight=class_weight,
        )
        metric = search.refit
        # The refit is done below, without the cache (and with calibration for svm).
        search.set_params(refit=False)
        n_candidates = len(ParameterGrid(search.param_grid))
        logger.info(
            "baseline %s: %d candidates x %d folds on %d x %d%s",
            name, n_candidates, n_splits, rows.size, X.shape[1],
            " (grouped by patient)" if groups is not None else "",
        )
        search.fit(X_search, y_search)
        base = clone(search.estimator)
    search_seconds = time.perf_counter() - start
    results = search.cv_results_
    # Ties go to the first candidate in grid order: the smallest C (and gamma).
    best = int(np.argmin(results[f"rank_test_{metric}"]))
    best_params = dict(results["params"][best])

    # Clone the values: the grid's PCA object must stay unfitted in best_params_.
    estimator = base.set_params(memory=None, **clone(best_params, safe=False))
    fit_params = _calibrate_svm(estimator, y, cv, n_jobs, class_weight) if name == "svm" else {}
    estimator.fit(X, y, **fit_params)

    fitted = FittedBaseline(
        name=name,
        estimator_=estimator,
        best_params_=best_params,
        cv_score_=float(results["mean_test_accuracy"][best]),
        cv_std_=float(results["std_test_accuracy"][best]),
        fit_seconds_=time.perf_counter() - start,
        selection_metric_=metric,
        n_splits_=n_splits,
        n_candidates_=n_candidates,
        n_search_samples_=int(rows.size),
        cv_log_loss_=None if name == "svm" else float(-results["mean_test_neg_log_loss"][best]),
        class_weight=class_weight,
    )
    logger.info(
        "baseline %s: chose %s, cv accuracy %.3f +/- %.3f, %.1f s (search %.1f s, refit %.1f s)",
        name, {k: _jsonable(v) for k, v in best_params.items()}, fitted.cv_score_, fitted.cv_std_,
        fitted.fit_seconds_, search_seconds, fitted.fit_seconds_ - search_seconds,
    )
    return fitted


def _multilabel_mask(mask: Any, multilabel: bool, who: str) -> np.ndarray | None:
    """``mask`` as an array (None stays None), refused in one line without ``multilabel``."""
    if mask is not None and not multilabel:
        raise XrayfeatError(f"{who}: a mask applies to multi-label targets; pass multilabel=True with (n, K) "
                            f"targets, or leave mask None.")
    return None if mask is None else np.asarray(mask)


def _fit_one_vs_rest(name: str, X_train: Any, y_train: Any, mask: Any, *, groups: Any, seed: int,
                     n_jobs: int | None, class_weight: str) -> MultiLabelBaseline:
    """:class:`MultiLabelBaseline`: per finding, :func:`fit_baseline` on the rows that count, or its prevalence."""
    from xrayfeat.models.multilabel import check_targets

    start = time.perf_counter()
    X = _as_matrix(X_train, name, "X_train")
    y = np.asarray(y_train)
    if y.ndim != 2 or y.shape[0] != X.shape[0]:
        raise XrayfeatError(
            f"The '{name}' baseline needs one row of finding targets per row: X_train has {X.shape[0]} rows, "
            f"y_train has shape {y.shape}.")
    try:
        targets, mask = check_targets(y, mask, y.shape[1], "y_train/mask")
    except ValueError as exc:
        raise XrayfeatError(f"The '{name}' baseline: {exc}.") from None
    if groups is not None:
        groups = np.asarray(groups)
    findings, prevalence, n_rows, reasons = [], [], [], []
    for k in range(targets.shape[1]):
        rows = np.flatnonzero(mask[:, k])
        y_k = targets[rows, k].astype(np.int64)
        n_rows.append(int(rows.size))
        prevalence.append(float(y_k.mean()) if rows.size else 0.5)
        reason = _constant_reason(y_k)
        fitted = None
        if reason is None:
            try:
                fitted = fit_baseline(name, X[rows], y_k, groups=None if groups is None else groups[rows], seed=seed,
                                      n_jobs=n_jobs, class_weight=class_weight)
            except CrossValidationError as exc:
                reason = str(exc)
        if fitted is None:
            logger.info("baseline %s: finding %d predicted as its training prevalence %.4g: %s", name, k,
                        prevalence[-1], reason)
        findings.append(fitted)
        reasons.append(reason)
    return MultiLabelBaseline(name=name, findings_=findings, prevalence_=prevalence, n_rows_=n_rows,
                              constant_reasons_=reasons, fit_seconds_=time.perf_counter() - start,
                              class_weight=class_weight)


def _constant_reason(y: np.ndarray) -> str | None:
    """Why a finding's counted training targets ``y`` give no classifier (no rows, one class), or None."""
    if y.size == 0:
        return "no training row counts for this finding"
    if np.unique(y).size < 2:
        return f"all {y.size} counted training rows are {'positive' if y[0] == 1 else 'negative'}"
    return None


def _calibrate_svm(estimator: Pipeline, y: np.ndarray, cv: Any, n_jobs: int | None, class_weight: str) -> dict:
    """Wrap the chosen SVC in its calibration; the fit parameters that carry balanced weights, if asked.

    With ``class_weight="balanced"`` the SVC's class weights become per-sample
    weights of the whole calibrated step (the SVC and the Platt sigmoid both
    see them; see the module docstring).
    """
    svc = estimator.named_steps["clf"]
    fit_params = {}
    if class_weight == "balanced":
        svc.set_params(class_weight=None)
        fit_params = {"clf__sample_weight": compute_sample_weight("balanced", y)}
    estimator.set_params(clf=CalibratedClassifierCV(svc, method="sigmoid", cv=cv, ensemble=False, n_jobs=n_jobs))
    return fit_params


#: ``names`` of :func:`fit_baselines`: a list or tuple of baseline names, or the CLI's text (``"logreg,svm"``, ``"none"``).
_NAMES = Names(BASELINES, none=True)


def _present_inputs(names: tuple[str, ...], arrays: Mapping[str, Any]) -> Mapping[str, Any]:
    """``arrays`` once every input a named baseline reads is there; one line naming the first that is not."""
    for name in names:
        param = _INPUTS[name]
        what = "pooled backbone features (n, C)" if param == "pooled_train" else "32x32 grayscale pixels (n, 32, 32)"
        if arrays[param] is None:
            raise XrayfeatError(f"The '{name}' baseline needs {param} ({what}); got None.")
    return arrays


@dataclass(frozen=True)
class Subsample:
    """Baselines fitted on ``rows`` of their ``of`` training rows: the whole matrix (``matrix_bytes``) exceeded the budget."""

    names: tuple[str, ...]
    rows: int
    of: int
    matrix_bytes: int
    budget_bytes: int

    @property
    def message(self) -> str:
        return (f"baselines {', '.join(self.names)} fitted on a stratified random sample of {self.rows} of {self.of} "
                f"training images: all of them ({human_bytes(self.matrix_bytes)} as float64) exceed the memory "
                f"budget ({human_bytes(self.budget_bytes)}); raise --memory-budget to fit them on every image")


def sample_rows(y: Any, n_features: int, budget_bytes: int, seed: int = 0, *,
                names: tuple[str, ...] = (), mask: Any = None) -> np.ndarray | None:
    """None when the float64 matrix of all rows fits ``budget_bytes``; else the sorted rows of a sample that fits.

    The sample is stratified (each class in proportion, at least 2 rows each so
    it can be cross-validated) and drawn with ``numpy.random.default_rng(seed)``.
    A budget below 2 rows per class raises :class:`~xrayfeat.errors.XrayfeatError`
    naming the baselines (``names``).

    Multi-label targets ``y`` (n, K), with their ``mask`` (None: all count): the
    strata are the rows' label sets (each entry positive, negative or masked)
    when the budget holds 2 rows of each; with more label sets than that, the
    sample is a plain random one of as many rows as fit (same seed). Either way
    at most the rows that fit, and at least 4 (2 of each class) must fit.
    """
    y = np.asarray(y)
    row_bytes = _MATRIX_ITEMSIZE * int(n_features)
    fit = int(budget_bytes) // row_bytes
    if fit >= len(y):
        return None
    if y.ndim == 2:
        return _sample_multilabel(y, mask, fit, n_features, budget_bytes, seed, names)
    labels, counts = np.unique(y, return_counts=True)
    if fit < 2 * len(labels):
        raise XrayfeatError(
            f"the memory budget ({human_bytes(budget_bytes)}) holds {fit} rows of {n_features} features for the "
            f"baselines {', '.join(names)}; cross-validating {len(labels)} classes needs at least {2 * len(labels)}: "
            f"raise --memory-budget, or leave them out with --baselines")
    take = np.minimum(counts, np.maximum(2, fit * counts // len(y)))
    while take.sum() > fit:  # the minimum of 2 per class took rows from the larger classes
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == label), size=k, replace=False)
                                   for label, k in zip(labels, take)]))


def _sample_multilabel(y: np.ndarray, mask: Any, fit: int, n_features: int, budget_bytes: int, seed: int,
                       names: tuple[str, ...]) -> np.ndarray:
    """:func:`sample_rows` for (n, K) targets: stratified by label set when 2 rows of each fit, else random."""
    if fit < 4:
        raise XrayfeatError(
            f"the memory budget ({human_bytes(budget_bytes)}) holds {fit} rows of {n_features} features for the "
            f"baselines {', '.join(names)}; cross-validating a finding's 2 classes needs at least 4: "
            f"raise --memory-budget, or leave them out with --baselines")
    counted = np.ones(y.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    states = np.where(counted, (np.nan_to_num(y.astype(np.float64)) == 1).astype(np.int8), np.int8(2))
    _, label_set = np.unique(states, axis=0, return_inverse=True)
    label_set = label_set.reshape(-1)
    if 2 * (label_set.max() + 1) <= fit:
        return sample_rows(label_set, n_features, budget_bytes, seed, names=names)
    return np.sort(np.random.default_rng(seed).choice(len(y), size=fit, replace=False))


@validate_params({"names": _NAMES, "budget_bytes": {"check": _COUNT, "none": True}, "multilabel": Is((bool,)),
                  **_OPTIONS})
def fit_baselines(
    names: Iterable[str] | str,
    budget_bytes: int | None = None,
    *,
    pooled_train: Any = None,
    pixels_train: Any = None,
    y_train: Any,
    groups: Any = None,
    seed: int = 0,
    n_jobs: int | None = None,
    class_weight: str = "none",
    multilabel: bool = False,
    mask: Any = None,
) -> tuple[dict[str, FittedBaseline | MultiLabelBaseline], list[Subsample]]:
    """Fit each named baseline on its input, within ``budget_bytes``; ``names`` may be the CLI text (:func:`parse_baselines`).

    ``logreg`` and ``svm`` read ``pooled_train`` ``(n, C)`` (an array or a
    :class:`~xrayfeat.store.rows.StoreRows`); ``pixels`` reads ``pixels_train``
    ``(n, 32, 32)`` uint8 (flattened here). Every requested baseline's input is
    checked to be there before anything is fitted, so a missing array fails at
    once, not after minutes of fitting. ``class_weight="balanced"`` weights the
    classes of every baseline (see the module docstring).

    The baselines reading one input are fitted on all its rows when
    ``budget_bytes`` is None or their float64 matrix fits it, else on the rows
    :func:`sample_rows` draws; each sample is logged and returned as a
    :class:`Subsample`. Returns (``{name: FittedBaseline}`` in the order of
    ``names``, the samples drawn).

    ``multilabel=True``: ``y_train`` is (n, K) 0/1 finding targets and ``mask``
    (n, K) bool, True where an entry counts (None: all count); each baseline is
    one-vs-rest, a :class:`MultiLabelBaseline` (see there), and a sample keeps
    the mask rows of the target rows it takes.
    """
    names = _NAMES.parse(names)
    arrays = _present_inputs(names, {"pooled_train": pooled_train, "pixels_train": pixels_train})
    y, groups = np.asarray(y_train), None if groups is None else np.asarray(groups)
    mask = _multilabel_mask(mask, multilabel, "fit_baselines")
    task = {"multilabel": True} if multilabel else {}
    fitted, samples = {}, []
    for param in dict.fromkeys(_INPUTS[name] for name in names):
        group = tuple(name for name in names if _INPUTS[name] == param)
        source = arrays[param]
        rows = None
        if budget_bytes is not None:
            n_features = int(np.prod(source.shape[1:]))
            rows = sample_rows(y, n_features, budget_bytes, seed, names=group, mask=mask)
        if rows is None:
            x, y_fit, g, m = source[:], y, groups, mask
        else:
            x, y_fit, g = source[rows], y[rows], None if groups is None else groups[rows]
            m = None if mask is None else mask[rows]
            samples.append(Subsample(group, len(rows), len(y), _MATRIX_ITEMSIZE * n_features * len(y), int(budget_bytes)))
            logger.info("%s", samples[-1].message)
        matrix = _as_matrix(x, group[0], param)  # one float64 matrix for the baselines that share it
        for name in group:
            if multilabel:
                task["mask"] = m
            fitted[name] = fit_baseline(name, matrix, y_fit, groups=g, seed=seed, n_jobs=n_jobs,
                                        class_weight=class_weight, **task)
    return {name: fitted[name] for name in names}, samples


def predict_rows(model: FittedBaseline, x: Any, budget_bytes: int) -> np.ndarray:
    """``model.predict_proba(x)``, a block of rows at a time when the float64 rows exceed ``budget_bytes``.

    ``x``: an array, or a :class:`~xrayfeat.store.rows.StoreRows` (always read a block at a time).
    """
    block = max(1, int(budget_bytes) // (_MATRIX_ITEMSIZE * int(np.prod(x.shape[1:]))))
    if not isinstance(x, StoreRows) and len(x) <= block:
        return model.predict_proba(x)
    blocks = x.batches(block) if isinstance(x, StoreRows) else (x[i:i + block] for i in range(0, len(x), block))
    return np.concatenate([model.predict_proba(b) for b in blocks])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@validate_params({"fitted": Is((FittedBaseline, MultiLabelBaseline))})
def save_baseline(fitted: FittedBaseline | MultiLabelBaseline, path: str | os.PathLike) -> str:
    """Write ``fitted`` with joblib and return the SHA-256 (hex) of the file written.

    The file is written to a temporary name beside ``path`` and renamed into
    place, so a crash never leaves a half-written model under the real name.
    Store the returned hash in the run record; :func:`load_baseline` needs it.
    """
    with atomic_path(path) as tmp:
        joblib.dump(fitted, tmp)
        digest = file_digest(tmp)
    return digest


def load_baseline(path: str | os.PathLike, expected_sha256: str) -> FittedBaseline | MultiLabelBaseline:
    """Load a baseline written by :func:`save_baseline`, refusing any other file.

    The file is read once, hashed, and unpickled from those same bytes only if
    the SHA-256 equals ``expected_sha256`` (a pickle can run arbitrary code, so
    only files this tool wrote, as recorded in the run record, are loaded).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise XrayfeatError(f"{path}: cannot read baseline model ({exc.strerror or exc}).") from exc
    actual = _sha256(data)
    expected = str(expected_sha256).strip().lower()
    if actual != expected:
        raise XrayfeatError(
            f"{path}: SHA-256 {actual[:16]}... does not match the run record ({expected[:16]}...); "
            f"refusing to unpickle a file xrayfeat did not write."
        )
    return baseline_from_bytes(data, path)


#: Module paths under which earlier releases pickled this module's classes (0.1.0: the flat layout).
_PICKLED_AS = ("xrayfeat.baselines",)


@contextlib.contextmanager
def _earlier_module_names():
    """While a pickle loads, let the module paths of earlier releases name this module (then forget them)."""
    added = [name for name in _PICKLED_AS if name not in sys.modules]
    for name in added:
        sys.modules[name] = sys.modules[__name__]
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def baseline_from_bytes(data: bytes, source: str | os.PathLike) -> FittedBaseline | MultiLabelBaseline:
    """Unpickle a baseline from bytes whose sha256 the caller has already checked (``source`` names them in errors).

    Baselines pickled by earlier releases, whose class lived at another module path, load too.
    """
    with _earlier_module_names():
        fitted = joblib.load(io.BytesIO(data))
    if not isinstance(fitted, (FittedBaseline, MultiLabelBaseline)):
        raise XrayfeatError(f"{os.fspath(source)}: not a saved xrayfeat baseline (found {type(fitted).__name__}).")
    return fitted


def read_pixels(items, size: int = 32, n_jobs: int | None = None) -> np.ndarray:
    """32×32 grayscale pixels of each image, for the pixels sentinel (no backbone).

    Read on this machine's cores (the files are this machine's), by joblib
    workers that die with this process (:func:`~xrayfeat.distributed.session.joblib_backend`).
    """
    from joblib import Parallel, delayed

    from xrayfeat.data.images import read_gray
    from xrayfeat.distributed.session import joblib_backend

    paths = [str(item.path) for item in items]
    if len(paths) < 64:
        return np.stack([read_gray(p, size) for p in paths])
    with joblib_backend(None):
        arrays = Parallel(n_jobs=n_jobs or -1, batch_size=16)(delayed(read_gray)(p, size) for p in paths)
    return np.stack(arrays)


def columns_for(model, proba: np.ndarray, n_classes: int) -> np.ndarray:
    """Put a baseline's probability columns in class-index order (all classes are in train).

    For a :class:`MultiLabelBaseline`, ``n_classes`` is the number of findings
    and the columns are already the findings' (``classes_`` is ``0..K-1``): (n, K).
    """
    out = np.zeros((len(proba), n_classes))
    out[:, np.asarray(model.classes_, dtype=int)] = proba
    return out
