"""xf.CachedFeatures: image file paths in, cached features out, inside scikit-learn pipelines and cross-validation.

The phantoms are tiny (64 px files, 32 px backbone input, random weights) and their features are computed
once, by the module's fixture; every later fit reads them from the cache, which the tests assert.
"""

from __future__ import annotations

import pickle
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import xrayfeat as xf
from xrayfeat.extraction import pipeline
from xrayfeat.extraction.transformer import EXPECTED_FAILED_CHECKS, PathsError

OPTIONS = dict(weights="none", image_size=32, workers=0)

#: The checks of check_estimator CachedFeatures cannot meet (see its docstring for each reason): all fit on numbers.
CANNOT_APPLY = {
    "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_dtype_object",
    "check_pipeline_consistency", "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_transformer_data_not_an_array", "check_transformer_general", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_fit2d_1sample", "check_dict_unchanged", "check_fit_idempotent",
    "check_fit_check_is_fitted", "check_n_features_in", "check_fit2d_predict1d",
    # these four expect scikit-learn's own message for a numeric array; a number is refused before, as not a path
    "check_complex_data", "check_estimators_empty_data_messages", "check_estimators_nan_inf", "check_fit2d_1feature",
}


class Phantoms:
    """Four-class phantom X-rays with patients, and a cache that already holds their features."""

    def __init__(self, root):
        manifest = xf.write_phantoms(root / "xrays", task="four", per_class=6, size=64, seed=0)
        self.manifest, self.cache = manifest, root / "cache"
        ds = xf.discover(manifest, cache_dir=self.cache)
        self.paths = [str(p) for p in ds.paths]
        self.labels = np.array([item.label for item in ds.items])
        self.patients = np.array([item.patient_id for item in ds.items])
        self.first = xf.CachedFeatures("vgg16", cache_dir=self.cache, **OPTIONS).fit(self.paths)

    def transformer(self, **options):
        return xf.CachedFeatures("vgg16", cache_dir=self.cache, **{**OPTIONS, **options})


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return Phantoms(tmp_path_factory.mktemp("sklearn"))


@pytest.fixture
def no_backbone(monkeypatch):
    """Building a backbone fails the test: everything must come from the cache."""
    def refuse(*args, **kwargs):
        raise AssertionError("a backbone was built: the cache should have held every row")

    monkeypatch.setattr(pipeline, "_build", refuse)


def test_the_first_fit_computes_every_image_and_records_the_store(phantoms):
    first = phantoms.first
    assert (first.extracted_, first.reused_) == (len(phantoms.paths), 0)
    assert first.n_features_in_ == 1 and first.n_features_out_ == 512
    assert first.fingerprint_["backbone"] == "vgg16" and first.fingerprint_["image_size"] == 32
    assert first.fingerprint_["weights"].startswith("none")
    assert first.store_ == str(xf.FeatureStore.at(first.store_).path)
    assert list(first.get_feature_names_out()[:2]) == ["vgg16_pooled0", "vgg16_pooled1"]


def test_a_second_fit_and_transform_compute_nothing(phantoms, no_backbone):
    again = phantoms.transformer().fit(phantoms.paths)
    assert (again.extracted_, again.reused_) == (0, len(phantoms.paths))
    assert again.fingerprint_ == phantoms.first.fingerprint_
    X = again.transform(phantoms.paths)
    assert X.shape == (len(phantoms.paths), 512) and X.dtype == np.float32
    np.testing.assert_array_equal(X, phantoms.first.transform(phantoms.paths))
    np.testing.assert_array_equal(X, phantoms.transformer().fit_transform(phantoms.paths))
    X_features, _, meta = xf.features(phantoms.manifest, "vgg16", cache_dir=phantoms.cache, weights="none", image_size=32)
    rows = {p: k for k, p in enumerate(meta.path)}
    np.testing.assert_array_equal(X, X_features[[rows[p] for p in phantoms.paths]])  # the same rows as xf.features


def test_pipeline_fits_predicts_clones_and_cross_validates_by_patient(phantoms, no_backbone):
    model = make_pipeline(phantoms.transformer(), StandardScaler(), LogisticRegression(max_iter=2000))
    twin = clone(model)
    assert twin.get_params()["cachedfeatures__image_size"] == 32 and not hasattr(twin[0], "fingerprint_")

    scores = cross_val_score(model, phantoms.paths, phantoms.labels, groups=phantoms.patients, cv=GroupKFold(3))
    assert scores.shape == (3,) and np.isfinite(scores).all()
    for train, test in GroupKFold(3).split(phantoms.paths, phantoms.labels, phantoms.patients):
        assert not set(phantoms.patients[train]) & set(phantoms.patients[test])

    fitted = model.fit(phantoms.paths, phantoms.labels)
    predicted = fitted.predict(phantoms.paths[:5])
    assert set(predicted) <= set(phantoms.labels) and len(predicted) == 5
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict_proba(phantoms.paths), fitted.predict_proba(phantoms.paths))


def test_every_shape_of_a_path_column_gives_the_same_rows_in_the_order_given(phantoms, no_backbone):
    fitted = phantoms.first
    paths = phantoms.paths[:6]
    expected = fitted.transform(paths)
    frame = pd.DataFrame({"label": phantoms.labels[:6], "path": paths})
    for given in (frame, frame[["path"]], frame["path"], np.array(paths), np.array(paths)[:, None], tuple(paths)):
        np.testing.assert_array_equal(fitted.transform(given), expected)
    reordered = [paths[3], paths[0], paths[3], paths[5]]  # order kept, a repeated path gives its row twice
    np.testing.assert_array_equal(fitted.transform(reordered), expected[[3, 0, 3, 5]])
    spatial = phantoms.transformer(part="spatial").fit_transform(paths)
    assert spatial.shape == (6, 512)  # a 1x1x512 map at 32 px, flattened
    with_names = phantoms.transformer().set_output(transform="pandas").fit_transform(paths)
    assert list(with_names.columns[:2]) == ["vgg16_pooled0", "vgg16_pooled1"]


def test_bad_paths_and_options_give_the_library_one_line_errors(phantoms, tmp_path, no_backbone):
    fitted = phantoms.first
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    cases = [
        ([str(tmp_path / "missing.png")], xf.DatasetError, "missing.png: no such file or folder"),
        ([str(tmp_path)], xf.DatasetError, "a folder, not an image file"),
        ([str(notes)], xf.DatasetError, "notes.txt: not an image file"),
        (np.zeros((4, 3)), PathsError, "takes image file paths"),
        ([1.5, 2.5], PathsError, "1.5 (float) is not a file path"),
        ([], PathsError, "no image paths given"),
        (pd.DataFrame({"a": [1], "b": [2]}), PathsError, "without a 'path' column"),
        (phantoms.paths[0], PathsError, "one path, not a list of them"),
    ]
    for given, error, words in cases:
        with pytest.raises(error, match=re.escape(words)) as caught:
            fitted.transform(given)
        assert "\n" not in str(caught.value)
    assert issubclass(PathsError, ValueError)
    with pytest.raises(ValueError, match=re.escape("The 'image_size' parameter of CachedFeatures must be")):
        phantoms.transformer(image_size=8).fit(phantoms.paths)
    with pytest.raises(ValueError, match=re.escape("The 'part' parameter of CachedFeatures must be one of")):
        phantoms.transformer(part="both").fit(phantoms.paths)
    with pytest.raises(TypeError, match=re.escape("The 'batch_size' parameter of CachedFeatures must be an int")):
        phantoms.transformer(batch_size="32").fit(phantoms.paths)
    unfitted = phantoms.transformer()
    with pytest.raises(Exception, match="not fitted"):
        unfitted.transform(phantoms.paths)


def test_the_checks_it_cannot_meet_are_listed_with_their_reasons_in_the_docstring():
    assert set(EXPECTED_FAILED_CHECKS) == CANNOT_APPLY
    doc = " ".join(xf.CachedFeatures.__doc__.split())
    for name, reason in EXPECTED_FAILED_CHECKS.items():
        assert name in doc and reason


@parametrize_with_checks([xf.CachedFeatures(weights="none", image_size=32)],
                         expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS, xfail_strict=True)
def test_scikit_learn_checks(estimator, check, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default cache_dir is relative: nothing may land in the repository
    check(estimator)
