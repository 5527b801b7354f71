"""Tests for xrayfeat.models.baselines: small synthetic data, each fit a second or two."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from xrayfeat.models.baselines import (
    BASELINES,
    FittedBaseline,
    cv_splitter,
    fit_baseline,
    fit_baselines,
    load_baseline,
    make_search,
    parse_baselines,
    save_baseline,
)
from xrayfeat.errors import XrayfeatError

# lbfgs must converge with the max_iter we set: a warning here is a failure.
pytestmark = pytest.mark.filterwarnings("error::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """The matrices here are tiny: BLAS threads cost more than they save, and on a
    loaded 2-core box OpenBLAS's spinning threads made these tests 3x slower."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _pooled(n_classes: int, n_train: int, n_test: int, seed: int = 0):
    """Separable 'pooled features': 48 columns, 8 of them informative."""
    X, y = make_classification(
        n_samples=n_train + n_test,
        n_features=48,
        n_informative=8,
        n_redundant=8,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=2.0,
        random_state=seed,
    )
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def _pixels(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """32x32 uint8 noise images with a brighter square whose position depends on the class."""
    rng = np.random.default_rng(seed)
    images = rng.normal(100, 30, (len(y), 32, 32))
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        images[i, 4 + 14 * r : 14 + 14 * r, 4 + 14 * c : 14 + 14 * c] += 40
    return images.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def four_class():
    X_tr, y_tr, X_te, y_te = _pooled(4, 200, 120)
    P_tr, P_te = _pixels(y_tr, seed=1), _pixels(y_te, seed=2)
    fitted, _ = fit_baselines(BASELINES, pooled_train=X_tr, pixels_train=P_tr, y_train=y_tr, seed=0)
    return fitted, X_te, P_te, y_te


@pytest.fixture(scope="module")
def binary():
    X_tr, y_tr, X_te, y_te = _pooled(2, 80, 40, seed=3)
    P_tr, P_te = _pixels(y_tr, seed=4), _pixels(y_te, seed=5)
    fitted, _ = fit_baselines(BASELINES, pooled_train=X_tr, pixels_train=P_tr, y_train=y_tr, seed=0)
    return fitted, X_te, P_te, y_te


def _test_input(name, X_te, P_te):
    return P_te if name == "pixels" else X_te


# --- parse_baselines ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, expected",
    [
        ("logreg,svm,pixels", ("logreg", "svm", "pixels")),
        ("pixels,logreg", ("pixels", "logreg")),
        ("svm", ("svm",)),
        ("logreg,svm,logreg", ("logreg", "svm")),
        (" SVM , Pixels ", ("svm", "pixels")),
        ("none", ()),
        ("None", ()),
    ],
)
def test_parse_baselines(text, expected):
    assert parse_baselines(text) == expected


@pytest.mark.parametrize("text", ["x", "", "logreg,", "none,logreg", "logreg,foo", "log reg"])
def test_parse_baselines_rejects(text):
    with pytest.raises(XrayfeatError) as info:
        parse_baselines(text)
    assert str(info.value) == (
        "The 'baselines' option must be a comma-separated subset of {logreg, svm, pixels} "
        f"or 'none'. Got '{text}' instead."
    )


# --- the splitter ------------------------------------------------------------------------------

def test_cv_splitter_ungrouped_n_splits():
    assert isinstance(cv_splitter(np.repeat([0, 1], 50)), StratifiedKFold)
    assert cv_splitter(np.repeat([0, 1], 50)).get_n_splits() == 5
    assert cv_splitter(np.array([0] * 50 + [1] * 3)).get_n_splits() == 3
    assert cv_splitter(np.array(["a", "a", "b", "b"])).get_n_splits() == 2


def test_grouped_cv_never_splits_a_patient():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(40), rng.integers(1, 6, 40))  # 1..5 images per patient
    labels = (patients % 4)[:]  # one label per patient, 10 patients per class
    splitter = cv_splitter(labels, groups=patients, seed=0)
    assert isinstance(splitter, StratifiedGroupKFold)
    assert splitter.get_n_splits() == 5
    X = np.zeros((len(labels), 1))
    seen_test = []
    for train, test in splitter.split(X, labels, patients):
        assert not set(patients[train]) & set(patients[test])
        assert set(labels[train]) == {0, 1, 2, 3}
        seen_test.append(test)
    assert sorted(np.concatenate(seen_test)) == list(range(len(labels)))


def test_grouped_n_splits_counts_patients_not_images():
    # class 1 has 30 images but only 3 patients
    labels = np.array([0] * 30 + [1] * 30)
    patients = np.concatenate([np.arange(30), 100 + np.arange(30) % 3])
    assert cv_splitter(labels, groups=patients).get_n_splits() == 3


def test_fit_baseline_with_groups_runs():
    X, y, _, _ = _pooled(2, 60, 0)
    groups = np.arange(60) // 3
    y = (groups % 2).astype(int)  # labels constant within a patient
    fitted = fit_baseline("logreg", X, y, groups=groups)
    assert fitted.n_splits_ == 5
    assert 0 <= fitted.cv_score_ <= 1


@pytest.mark.parametrize(
    "labels, groups, message",
    [
        (["a", "a", "a", "b"], None, "class 'b' has 1 image in the training data; every class needs at least 2 images"),
        (["a", "a", "b", "b"], [1, 2, 3, 3], "class 'b' has 1 patient in the training data; every class needs at least 2 patients"),
        (["a", "a", "a"], None, "only one class ('a')"),
    ],
)
def test_too_few_samples(labels, groups, message):
    with pytest.raises(XrayfeatError, match="^Cannot cross-validate") as info:
        cv_splitter(np.array(labels), None if groups is None else np.array(groups))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_fit_baseline_too_few_samples():
    X = np.random.default_rng(0).normal(size=(5, 4))
    with pytest.raises(XrayfeatError, match="^Cannot cross-validate: class 1 has 1 image"):
        fit_baseline("logreg", X, np.array([0, 0, 0, 0, 1]))


# --- the searches ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("n_features, n_samples", [(2048, 300), (512, 300), (2048, 10_000), (1024, 40)])
def test_grids_are_small(name, n_features, n_samples):
    search = make_search(name, n_features=n_features, n_samples=n_samples, cv=3)
    n_candidates = 1
    for values in search.param_grid.values():
        n_candidates *= len(values)
    assert 2 <= n_candidates <= 12


def test_pca_offered_only_with_many_features_per_sample():
    assert "pca" in make_search("logreg", n_features=2048, n_samples=300, cv=3).param_grid
    assert "pca" not in make_search("logreg", n_features=2048, n_samples=10_000, cv=3).param_grid
    svm = make_search("svm", n_features=2048, n_samples=10_000, cv=3)
    assert svm.estimator.named_steps["pca"].n_components == 128
    pixels = make_search("pixels", n_features=1024, n_samples=40, cv=3)
    assert pixels.estimator.named_steps["pca"].n_components == 20  # a fold holds >= half the samples


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("class_weight, expected", [("none", None), ("balanced", "balanced")])
def test_class_weight_reaches_the_classifier(name, class_weight, expected):
    search = make_search(name, n_features=64, n_samples=100, cv=3, class_weight=class_weight)
    assert search.estimator.named_steps["clf"].class_weight == expected
    assert make_search(name, n_features=64, n_samples=100, cv=3).estimator.named_steps["clf"].class_weight is None


def test_balanced_svm_weighs_samples_instead():
    """The chosen SVC gets the balanced weights per sample, so the Platt sigmoid sees them too, and not twice.

    (Fitted unweighted, the sigmoid undoes the weighting: tests/test_imbalance.py fails then.)
    """
    X, _, _, _ = _pooled(2, 60, 0)
    y = (np.arange(60) % 4 == 0).astype(int)  # 15 of class 1, 45 of class 0
    fitted = fit_baseline("svm", X, y, class_weight="balanced")
    assert fitted.summary()["class_weight"] == "balanced"
    assert fitted.estimator_.named_steps["clf"].estimator.class_weight is None


@pytest.mark.parametrize("where, call", [
    ("make_search", lambda: make_search("logreg", n_features=4, n_samples=20, cv=2, class_weight="auto")),
    ("fit_baseline", lambda: fit_baseline("logreg", np.zeros((4, 2)), np.array([0, 1, 0, 1]), class_weight="auto")),
    ("fit_baselines", lambda: fit_baselines(["logreg"], pooled_train=np.zeros((4, 2)), y_train=[0, 1, 0, 1],
                                            class_weight="auto")),
])
def test_class_weight_must_be_known(where, call):
    with pytest.raises(XrayfeatError) as info:
        call()
    assert str(info.value) == (
        f"The 'class_weight' parameter of {where} must be one of {{'none', 'balanced'}}. Got 'auto' instead."
    )


def test_make_search_rejects_unknown_name():
    with pytest.raises(XrayfeatError) as info:
        make_search("knn", n_features=10, n_samples=10, cv=2)
    assert str(info.value) == (
        "The 'name' parameter of make_search must be one of {'logreg', 'svm', 'pixels'}. Got 'knn' instead."
    )


# --- fitted baselines --------------------------------------------------------------------------

@pytest.mark.parametrize("name", BASELINES)
def test_beats_chance_on_held_out_data(four_class, name):
    fitted, X_te, P_te, y_te = four_class
    accuracy = np.mean(fitted[name].predict(_test_input(name, X_te, P_te)) == y_te)
    assert accuracy > 0.6, f"{name}: {accuracy:.2f} vs chance 0.25"
    assert fitted[name].cv_score_ > 0.6


@pytest.mark.parametrize("task", ["binary", "four_class"])
@pytest.mark.parametrize("name", BASELINES)
def test_predict_proba_shape_and_sums(request, task, name):
    fitted, X_te, P_te, y_te = request.getfixturevalue(task)
    proba = fitted[name].predict_proba(_test_input(name, X_te, P_te))
    k = 2 if task == "binary" else 4
    assert proba.shape == (len(y_te), k)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert (proba >= 0).all()
    assert list(fitted[name].classes_) == list(range(k))


def test_fitted_attributes(four_class):
    fitted = four_class[0]
    for name, f in fitted.items():
        assert isinstance(f, FittedBaseline)
        assert f.name == name
        assert f.fit_seconds_ > 0
        assert f.n_splits_ == 5
        assert set(f.best_params_) >= {"clf__C"}
        summary = f.summary()
        assert summary["name"] == name and summary["cv_accuracy"] == f.cv_score_
        assert summary["class_weight"] == "none"
    assert fitted["svm"].selection_metric_ == "accuracy" and fitted["svm"].cv_log_loss_ is None
    assert fitted["logreg"].selection_metric_ == "neg_log_loss" and fitted["logreg"].cv_log_loss_ > 0


@pytest.mark.parametrize("name, n_jobs", [("logreg", None), ("svm", 2)])
def test_deterministic_for_a_seed(binary, name, n_jobs):
    X_tr, y_tr, X_te, _ = _pooled(2, 80, 40, seed=3)
    first = binary[0][name]  # fitted with n_jobs=None: parallel gives the same answer
    again = fit_baseline(name, X_tr, y_tr, seed=0, n_jobs=n_jobs)
    assert again.best_params_.keys() == first.best_params_.keys()
    assert again.cv_score_ == first.cv_score_
    np.testing.assert_array_equal(again.predict_proba(X_te), first.predict_proba(X_te))


def test_fit_baselines_missing_array():
    X, y, _, _ = _pooled(2, 40, 0)
    with pytest.raises(XrayfeatError) as info:
        fit_baselines(("logreg", "pixels"), pooled_train=X, y_train=y)
    assert str(info.value) == "The 'pixels' baseline needs pixels_train (32x32 grayscale pixels (n, 32, 32)); got None."
    with pytest.raises(XrayfeatError, match="'svm' baseline needs pooled_train"):
        fit_baselines(["svm"], pixels_train=np.zeros((40, 32, 32)), y_train=y)
    assert fit_baselines((), y_train=y) == ({}, [])
    assert fit_baselines("none", y_train=y) == ({}, [])  # the CLI text is accepted too


def test_fit_baselines_samples_only_under_a_budget():
    X, y, _, _ = _pooled(2, 40, 0)
    whole, none_drawn = fit_baselines(("logreg",), pooled_train=X, y_train=y, seed=0)
    assert none_drawn == [] and whole["logreg"].summary()["n_search_samples"] == len(y)
    roomy, none_drawn = fit_baselines(("logreg",), X.nbytes * 8, pooled_train=X, y_train=y, seed=0)
    assert none_drawn == []
    np.testing.assert_array_equal(roomy["logreg"].predict_proba(X), whole["logreg"].predict_proba(X))
    budget = 8 * X.shape[1] * 20  # 20 rows as float64
    sampled, [drawn] = fit_baselines(("logreg",), budget, pooled_train=X, y_train=y, seed=0)
    assert (drawn.names, drawn.rows, drawn.of, drawn.budget_bytes) == (("logreg",), 20, len(y), budget)
    assert sampled["logreg"].summary()["n_search_samples"] == 20


def test_fit_baseline_rejects_bad_input():
    X, y, _, _ = _pooled(2, 40, 0)
    with pytest.raises(XrayfeatError, match="one label per row"):
        fit_baseline("logreg", X, y[:-1])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(XrayfeatError, match="NaN"):
        fit_baseline("logreg", bad, y)
    with pytest.raises(XrayfeatError, match="must be one of"):
        fit_baseline("rf", X, y)


# --- save / load -------------------------------------------------------------------------------

def test_save_load_round_trip(binary, tmp_path):
    fitted, X_te, _, _ = binary
    path = tmp_path / "svm.joblib"
    digest = save_baseline(fitted["svm"], path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_baseline(path, digest)
    assert loaded.name == "svm" and loaded.best_params_ == fitted["svm"].best_params_
    np.testing.assert_array_equal(loaded.predict_proba(X_te), fitted["svm"].predict_proba(X_te))
    assert load_baseline(str(path), digest.upper()).name == "svm"
    assert [p.name for p in tmp_path.iterdir()] == ["svm.joblib"]  # no temporary left behind


def test_load_refuses_tampered_file(binary, tmp_path):
    path = tmp_path / "logreg.joblib"
    digest = save_baseline(binary[0]["logreg"], path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(XrayfeatError) as info:
        load_baseline(path, digest)
    message = str(info.value)
    assert message.startswith(str(path)) and "refusing" in message and "\n" not in message


def test_load_refuses_unknown_hash_and_missing_file(binary, tmp_path):
    path = tmp_path / "pixels.joblib"
    save_baseline(binary[0]["pixels"], path)
    with pytest.raises(XrayfeatError, match="does not match the run record"):
        load_baseline(path, "0" * 64)
    with pytest.raises(XrayfeatError, match="cannot read baseline model"):
        load_baseline(tmp_path / "nope.joblib", "0" * 64)


def test_large_svm_searches_on_a_subsample(monkeypatch):
    import xrayfeat.models.baselines as baselines

    monkeypatch.setattr(baselines, "_SVM_SEARCH_MAX", 60)
    X_tr, y_tr, X_te, y_te = _pooled(2, 200, 60, seed=6)
    fitted = fit_baseline("svm", X_tr, y_tr)
    assert 60 <= fitted.n_search_samples_ < 200  # >= 50 per class are kept
    assert fitted.summary()["n_search_samples"] == fitted.n_search_samples_
    assert np.mean(fitted.predict(X_te) == y_te) > 0.8
    # the final model and its calibration use every row
    assert fitted.estimator_.named_steps["clf"].calibrated_classifiers_[0].estimator.shape_fit_[0] == 200
