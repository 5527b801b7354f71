"""Cached features as arrays: the rows of a store for a dataset, and :class:`CachedFeatures`, a scikit-learn transformer.

:func:`read_part` is the one way the library turns a dataset into a feature
array: extract what the store lacks (:func:`~xrayfeat.extraction.pipeline.extract`),
then read one part of every kept image from the store. ``xf.features`` and
:class:`CachedFeatures` both call it.

:class:`CachedFeatures` maps image file paths to their cached features, so a
scikit-learn pipeline can start from files::

    model = make_pipeline(CachedFeatures("vgg16", weights="none", image_size=32), StandardScaler(),
                          LogisticRegression())
    cross_val_score(model, paths, labels, groups=patients, cv=GroupKFold(3))

Features are computed once per image and feature fingerprint, into the cache
folder; every later ``fit`` or ``transform`` (another fold, a clone, a new
session) reads them and builds no backbone.
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from xrayfeat.errors import DatasetError, XrayfeatError
from xrayfeat.extraction.pipeline import ExtractResult, extract
from xrayfeat.extraction.selection import store_for
from xrayfeat.options.constraints import Choice, check_value, declaration
from xrayfeat.options.settings import FeatureOptions, RunOptions
from xrayfeat.store.catalog import hash_memory
from xrayfeat.store.feature_store import FeatureStore
from xrayfeat.store.shards import PARTS
from xrayfeat.runtime import library_call

__all__ = ["CachedFeatures", "EXPECTED_FAILED_CHECKS", "PathsError", "read_part"]


def read_part(dataset, features: FeatureOptions, run: RunOptions, part: str) -> tuple[ExtractResult, object, np.ndarray]:
    """``(extraction result, the images kept, their features)``: ``part`` of every kept image of ``dataset``, float32.

    Extracts what the store of ``features`` lacks first; images left out by
    ``run.on_error="skip"`` have no row and are not in the kept dataset.
    ``part="spatial"`` gives (n, H, W, C), ``"pooled"`` (n, C).
    """
    [result] = extract(dataset, features, run)
    kept = result.kept(dataset)
    X = FeatureStore.at(result.store).read(kept.hashes, (part,))[part].astype(np.float32)
    return result, kept, X


#: Why a check of scikit-learn's ``check_estimator`` cannot apply to CachedFeatures, by reason.
_FITS_NUMBERS = ("it fits on a random numeric array, and CachedFeatures' input is image file paths (a number is "
                 "refused in one line); the property it checks is tested on image paths in tests/test_sklearn.py")
_NUMBER_MESSAGE = ("it expects scikit-learn's message for a numeric array ({}); CachedFeatures refuses the numbers "
                   "before that, saying it takes image file paths")
#: The checks of ``check_estimator`` that CachedFeatures cannot meet, each with the reason (every other check
#: applies and passes): ``check_estimator(CachedFeatures(), expected_failed_checks=EXPECTED_FAILED_CHECKS)``.
EXPECTED_FAILED_CHECKS = {
    **dict.fromkeys((
        "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
        "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_n_features_in_after_fitting",
        "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_dtype_object",
        "check_pipeline_consistency", "check_estimators_pickle", "check_f_contiguous_array_estimator",
        "check_transformer_data_not_an_array", "check_transformer_general", "check_methods_sample_order_invariance",
        "check_methods_subset_invariance", "check_fit2d_1sample", "check_dict_unchanged", "check_fit_idempotent",
        "check_fit_check_is_fitted", "check_n_features_in", "check_fit2d_predict1d",
    ), _FITS_NUMBERS),
    "check_complex_data": _NUMBER_MESSAGE.format("'Complex data not supported'"),
    "check_estimators_empty_data_messages": _NUMBER_MESSAGE.format("'0 feature(s) (shape=(n, 0))'"),
    "check_estimators_nan_inf": _NUMBER_MESSAGE.format("one naming NaN or infinity"),
    "check_fit2d_1feature": _NUMBER_MESSAGE.format("'1 feature(s)'"),
}

#: The parameters of CachedFeatures that are FeatureOptions' and RunOptions' fields (validated by their declarations).
_FEATURE_FIELDS = ("backbone", "weights", "image_size", "layer", "precision", "store_dtype", "seed", "keep")
_RUN_FIELDS = ("cache_dir", "device", "batch_size", "workers")


class CachedFeatures(TransformerMixin, BaseEstimator):
    """Image file paths in, their cached backbone features out: a scikit-learn transformer.

    Parameters are :class:`~xrayfeat.options.settings.FeatureOptions`' fields
    (``backbone``, ``weights``, ``image_size``, ``layer``, ``precision``,
    ``store_dtype``, ``seed``, ``keep``: what a feature value depends on),
    ``part`` (``"pooled"``: (n, C); ``"spatial"``: each map flattened to
    H·W·C values) and :class:`~xrayfeat.options.settings.RunOptions`'
    (``cache_dir``, ``device``, ``batch_size``, ``workers``: how to compute
    them). ``__init__`` stores them as given; :meth:`fit` validates them with
    the same declarations as every other call (a bad value: a ``ValueError``
    or ``TypeError`` naming the parameter).

    ``X``: image file paths, one row per image: a list, tuple, 1-D array or
    pandas Series of paths, a 1-column 2-D array, or a DataFrame with a
    ``path`` column (or one column). Relative paths are relative to the
    working folder. A missing file, a folder or a file that is not an image is
    a :class:`~xrayfeat.errors.DatasetError` with one line naming it, and an
    image that cannot be decoded an :class:`~xrayfeat.errors.ImageReadError`:
    a transformer keeps one output row per input, so nothing is skipped.

    :meth:`fit` computes the features of ``X`` that the cache lacks and
    records ``n_features_in_`` (1: a column of paths), ``n_features_out_``,
    ``fingerprint_`` (the store's fingerprint: backbone, weights, layer,
    precision...), ``store_`` (its folder), ``options_`` (the feature options,
    "auto" resolved) and ``extracted_``/``reused_`` (rows computed and read by
    that fit). :meth:`transform` computes only what the cache lacks: a second
    ``fit`` or ``transform`` on the same images builds no backbone.

    scikit-learn's ``check_estimator`` passes where it applies: cloning,
    parameters, ``repr``, tags, unfitted errors, sparse input refused, a 1-D
    array refused. The checks that fit on random numeric arrays cannot apply
    to a transformer of file paths (a number is refused in one line); the
    property each checks (fit returns self, pickling, idempotence, order and
    subset invariance, nothing in ``__dict__`` changed by ``transform``) is
    tested on image paths instead: check_fit_score_takes_y,
    check_estimators_overwrite_params, check_dont_overwrite_parameters,
    check_estimators_fit_returns_self, check_readonly_memmap_input,
    check_n_features_in_after_fitting, check_positive_only_tag_during_fit,
    check_estimators_dtypes, check_dtype_object, check_pipeline_consistency,
    check_estimators_pickle, check_f_contiguous_array_estimator,
    check_transformer_data_not_an_array, check_transformer_general,
    check_methods_sample_order_invariance, check_methods_subset_invariance,
    check_fit2d_1sample, check_dict_unchanged, check_fit_idempotent,
    check_fit_check_is_fitted, check_n_features_in, check_fit2d_predict1d.
    Four more expect scikit-learn's own message for a numeric array, which
    CachedFeatures refuses first, saying it takes paths: check_complex_data,
    check_estimators_empty_data_messages, check_estimators_nan_inf,
    check_fit2d_1feature. :data:`EXPECTED_FAILED_CHECKS` holds each with its
    reason: ``check_estimator(CachedFeatures(), expected_failed_checks=EXPECTED_FAILED_CHECKS)``.
    """

    def __init__(self, backbone="vgg16", *, weights="imagenet", image_size=None, layer=None, precision="auto",
                 store_dtype="float16", seed=0, keep="both", part="pooled", cache_dir="data_cache", device="auto",
                 batch_size=32, workers=None):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.layer = layer
        self.precision = precision
        self.store_dtype = store_dtype
        self.seed = seed
        self.keep = keep
        self.part = part
        self.cache_dir = cache_dir
        self.device = device
        self.batch_size = batch_size
        self.workers = workers

    # ------------------------------------------------------------------ scikit-learn API

    @library_call
    def fit(self, X, y=None):
        """Compute the features of ``X`` the cache lacks; record their store and width (see the class docstring)."""
        self._fit(X)
        return self

    def fit_transform(self, X, y=None, **fit_params):
        """:meth:`fit`, then :meth:`transform` of the same ``X``, in one pass over the store."""
        return self._fit(X)

    @library_call
    def transform(self, X):
        """The features of ``X``, one row per path in its order, float32; only what the cache lacks is computed."""
        check_is_fitted(self, "fingerprint_")
        _, rows = self._rows(X, self.options_, self._run_options())
        return rows

    def get_feature_names_out(self, input_features=None):
        """``<backbone>_<part><k>`` for each output column (``vgg16_pooled0`` ...), as an object array."""
        check_is_fitted(self, "n_features_out_")
        prefix = f"{self.options_.backbone}_{self.part}"
        return np.asarray([f"{prefix}{k}" for k in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True  # file paths
        tags.transformer_tags.preserves_dtype = []  # paths in, float32 features out
        tags.requires_fit = True
        return tags

    # ------------------------------------------------------------------ the work

    def _fit(self, X) -> np.ndarray:
        features, run = self._validated()
        features = store_for(features, run.cache_dir, (self.part,), f"CachedFeatures(part={self.part!r})", run.device)
        result, rows = self._rows(X, features, run)
        store = FeatureStore.at(result.store)
        self.options_ = features
        self.store_ = str(store.path)
        self.fingerprint_ = dict(store.fingerprint)
        self.extracted_ = result.extracted
        self.reused_ = result.reused
        self.n_features_in_ = 1
        self.n_features_out_ = int(rows.shape[1])
        return rows

    def _validated(self) -> tuple[FeatureOptions, RunOptions]:
        """The parameters checked against the options' declarations (errors name CachedFeatures), as option objects."""
        for cls, names in ((FeatureOptions, _FEATURE_FIELDS), (RunOptions, _RUN_FIELDS)):
            for name in names:
                spec = declaration(cls, name)
                check_value(type(self).__name__, name, getattr(self, name), spec["check"], spec["none"])
        check_value(type(self).__name__, "part", self.part, Choice(PARTS))
        features = FeatureOptions(**{name: getattr(self, name) for name in _FEATURE_FIELDS})
        return features, self._run_options()

    def _run_options(self) -> RunOptions:
        return RunOptions(**{name: getattr(self, name) for name in _RUN_FIELDS})

    def _rows(self, X, features: FeatureOptions, run: RunOptions) -> tuple[ExtractResult, np.ndarray]:
        """(extraction result, one float32 row per path of ``X``), computing what the cache lacks."""
        from xrayfeat.data.datasets import gather_images

        paths = _paths(X)
        dataset = gather_images(sorted(set(paths)), hash_cache=hash_memory(run.cache_dir))
        result, kept, rows = read_part(dataset, features, run, self.part)
        fitted = getattr(self, "fingerprint_", None)
        if fitted is not None and result.store != self.store_:
            raise XrayfeatError(f"{result.store}: these features are not the ones CachedFeatures was fitted on "
                                f"({self.store_}); fit it again")
        where = {os.fspath(item.path): k for k, item in enumerate(kept.items)}
        rows = rows.reshape(len(rows), -1)
        return result, rows[[where[p] for p in paths]]


class PathsError(DatasetError, ValueError):
    """What was given as ``X`` is not image file paths, one per row (a ``ValueError`` too, as scikit-learn expects)."""


def _paths(X) -> list[str]:
    """The absolute path of each row of ``X`` (see :class:`CachedFeatures`); a folder or a non-path is one :class:`PathsError` line."""
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):  # a scipy sparse matrix or array
        raise PathsError("sparse input is not supported: CachedFeatures takes image file paths, one per row")
    column = X
    if hasattr(X, "columns") and hasattr(X, "iloc"):  # a pandas DataFrame
        names = [str(c).lower() for c in X.columns]
        if "path" in names:
            column = X.iloc[:, names.index("path")]
        elif len(names) == 1:
            column = X.iloc[:, 0]
        else:
            raise PathsError(f"a DataFrame of {len(names)} columns without a 'path' column: pass one with a "
                               "'path' column (one image file per row), or that column")
    if isinstance(column, (str, os.PathLike)):
        raise PathsError(f"{os.fspath(column)}: one path, not a list of them: pass [path] (one image file per row)")
    values = np.asarray(column.to_numpy() if hasattr(column, "to_numpy") else list(column), dtype=object)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise PathsError(f"an array of shape {values.shape}: CachedFeatures takes image file paths, one per row "
                           "(a list, a 1-column array or a DataFrame with a 'path' column)")
    if not len(values):
        raise PathsError("no image paths given: pass image file paths, one per row")
    out = []
    for value in values:
        if not isinstance(value, (str, os.PathLike)):
            raise PathsError(f"{value!r} ({type(value).__name__}) is not a file path: CachedFeatures takes image "
                               "file paths, one per row (a list, a 1-column array or a DataFrame with a 'path' column)")
        path = os.path.abspath(os.fspath(value))
        if os.path.isdir(path):
            raise PathsError(f"{os.fspath(value)}: a folder, not an image file: CachedFeatures takes one image "
                               "file per row (list a folder's images with xf.discover(folder).paths)")
        if path.lower().endswith(".csv"):
            raise PathsError(f"{os.fspath(value)}: a CSV, not an image file: CachedFeatures takes one image file "
                               "per row (pass the CSV's path column: pandas.read_csv(csv)[\"path\"])")
        out.append(path)
    return out
