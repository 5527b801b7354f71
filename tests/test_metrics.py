"""xrayfeat.metrics: point estimates against scikit-learn, bootstrap properties, warnings."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from xrayfeat import metrics
from xrayfeat.metrics import (
    evaluate,
    overlap_warnings,
    sentinel_warning,
    source_gap_warning,
    split_overlap,
    tiny_test_warning,
)

CLASSES4 = ["covid", "normal", "bacterial", "viral"]

# Eight hand-made predictions over four classes; rows sum to one, some mistakes, one tie in scores.
Y4 = np.array([0, 0, 1, 1, 2, 2, 3, 3])
P4 = np.array(
    [
        [0.70, 0.10, 0.10, 0.10],
        [0.30, 0.40, 0.20, 0.10],
        [0.10, 0.80, 0.05, 0.05],
        [0.25, 0.25, 0.40, 0.10],
        [0.05, 0.05, 0.60, 0.30],
        [0.10, 0.10, 0.50, 0.30],
        [0.20, 0.10, 0.30, 0.40],
        [0.10, 0.10, 0.10, 0.70],
    ]
)


def _synthetic(n, k=2, signal=1.5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- point estimates


def test_four_classes_match_sklearn_exactly():
    r = evaluate(Y4, P4, CLASSES4, n_boot=0)
    pred = P4.argmax(axis=1)
    assert r["n"] == 8
    assert r["accuracy"] == pytest.approx(np.mean(pred == Y4), abs=1e-15)
    assert r["accuracy"] == pytest.approx(6 / 8)
    assert r["loss"] == pytest.approx(log_loss(Y4, P4, labels=range(4)), rel=1e-12)
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y4, pred), rel=1e-12)
    assert r["roc_auc"] == pytest.approx(roc_auc_score(Y4, P4, multi_class="ovr", average="macro"), rel=1e-12)
    assert r["confusion"] == confusion_matrix(Y4, pred, labels=range(4)).tolist()
    prec, rec, f1, sup = precision_recall_fscore_support(Y4, pred, labels=range(4), zero_division=0)
    for i, c in enumerate(CLASSES4):
        assert r["per_class"][c] == pytest.approx(
            {"precision": prec[i], "recall": rec[i], "f1": f1[i], "support": int(sup[i])}, rel=1e-12
        )
    for i, c in enumerate(CLASSES4):
        assert r["roc_auc_per_class"][c] == pytest.approx(roc_auc_score(Y4 == i, P4[:, i]), rel=1e-12)


def test_result_is_plain_json():
    r = evaluate(Y4, P4, CLASSES4, groups=list("aabbccdd"), sources=["s1"] * 4 + ["s2"] * 4, n_boot=50)
    back = json.loads(json.dumps(r))
    assert back == r
    assert type(r["accuracy"]) is float and type(r["n"]) is int
    assert type(r["confusion"][0][0]) is int
    assert all(type(v) is float for v in r["ci"]["accuracy"])


@pytest.mark.parametrize("shape", ["n", "n1", "n2"])
def test_binary_sigmoid_outputs(shape):
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2, 0.6, 0.9])
    proba = {"n": p1, "n1": p1[:, None], "n2": np.column_stack([1 - p1, p1])}[shape]
    r = evaluate(y, proba, ["normal", "pneumonia"], n_boot=0)
    pred = (p1 > 0.5).astype(int)
    assert r["accuracy"] == pytest.approx(np.mean(pred == y))
    assert r["roc_auc"] == pytest.approx(roc_auc_score(y, p1), rel=1e-12)
    assert r["loss"] == pytest.approx(log_loss(y, np.column_stack([1 - p1, p1])), rel=1e-12)
    assert r["confusion"] == confusion_matrix(y, pred).tolist()


def test_perfect_predictions():
    y = np.array([0, 1, 2, 3] * 5)
    p = np.eye(4)[y]
    r = evaluate(y, p, CLASSES4, n_boot=200)
    assert r["accuracy"] == 1.0 and r["balanced_accuracy"] == 1.0 and r["roc_auc"] == 1.0
    assert r["loss"] == pytest.approx(0.0, abs=1e-12)
    assert r["ci"]["accuracy"] == [1.0, 1.0]
    assert r["confusion"] == (np.eye(4, dtype=int) * 5).tolist()
    assert all(r["per_class"][c]["f1"] == 1.0 for c in CLASSES4)


def test_all_wrong_predictions():
    y = np.array([0, 1] * 6)
    p = 1.0 - y.astype(float)  # sigmoid says the opposite, with certainty
    r = evaluate(y, p, ["a", "b"], n_boot=100)
    assert r["accuracy"] == 0.0 and r["balanced_accuracy"] == 0.0 and r["roc_auc"] == 0.0
    assert r["loss"] == pytest.approx(log_loss(y, np.column_stack([1 - p, p])), rel=1e-12)
    assert r["loss"] > 30
    assert r["confusion"] == [[0, 6], [6, 0]]
    assert r["ci"]["accuracy"] == [0.0, 0.0]
    assert all(r["per_class"][c] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 6} for c in "ab")


def test_class_absent_from_y_true_does_not_crash():
    keep = Y4 != 3  # no "viral" in the ground truth, but the model still predicts it
    y, p = Y4[keep], P4[keep]
    p[0] = [0.1, 0.1, 0.1, 0.7]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warnings leak out of evaluate
        r = evaluate(y, p, CLASSES4, n_boot=100)
    assert r["roc_auc"] is None
    assert r["ci"]["roc_auc"] is None
    assert r["roc_auc_per_class"]["viral"] is None
    assert r["per_class"]["viral"]["support"] == 0
    assert r["per_class"]["viral"]["precision"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)), rel=1e-12)
    assert r["ci"]["accuracy"] is not None


def test_single_class_binary_has_no_auc():
    r = evaluate([1, 1, 1], [0.9, 0.2, 0.7], ["normal", "pneumonia"], n_boot=20)
    assert r["roc_auc"] is None and r["ci"]["roc_auc"] is None
    assert r["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"y_true": [0, 1], "proba": [[0.5, 0.5, 0.0]] * 2}, "shape"),
        ({"y_true": [0, 2], "proba": [[0.5, 0.5]] * 2}, "class indices"),
        ({"y_true": [0, 1, 1], "proba": [[0.5, 0.5]] * 2}, "rows"),
        ({"y_true": [0, 1], "proba": [[np.nan, 0.5]] * 2}, "NaN"),
        ({"y_true": [0, 1], "proba": [[3.0, -2.0]] * 2}, "logits"),
        ({"y_true": [], "proba": np.zeros((0, 2))}, "empty"),
        ({"y_true": [0, 1], "proba": [[0.5, 0.5]] * 2, "groups": ["a"]}, "groups"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate(classes=["a", "b"], n_boot=0, **kwargs)


# --------------------------------------------------------------------------- bootstrap


def test_weighted_auc_matches_sklearn_sample_weight():
    rng = np.random.default_rng(3)
    score = np.round(rng.random(300), 1)  # many ties
    pos = rng.random(300) < 0.4
    w = rng.integers(0, 4, size=(5, 300))
    got = metrics._weighted_auc(w, metrics._AucPlan(score, pos))
    want = [roc_auc_score(pos, score, sample_weight=wi) for wi in w]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_ci_contains_point_estimate_and_narrows_with_more_data():
    widths = []
    for n in (100, 3000):
        y, p = _synthetic(n, k=4, signal=1.0, seed=n)
        r = evaluate(y, p, CLASSES4, n_boot=400, seed=1)
        for key in ("accuracy", "balanced_accuracy", "roc_auc"):
            lo, hi = r["ci"][key]
            assert lo <= r[key] <= hi, key
        widths.append(r["ci"]["accuracy"][1] - r["ci"]["accuracy"][0])
        assert r["ci_method"] == "bootstrap over images, 400 resamples"
    assert widths[1] < widths[0] / 3  # ~ sqrt(30) narrower


def test_deterministic_with_seed():
    y, p = _synthetic(500, k=4, seed=2)
    groups = np.arange(500) // 5
    a = evaluate(y, p, CLASSES4, groups=groups, n_boot=200, seed=7)
    b = evaluate(y, p, CLASSES4, groups=groups, n_boot=200, seed=7)
    c = evaluate(y, p, CLASSES4, groups=groups, n_boot=200, seed=8)
    assert a == b
    assert a["ci"] != c["ci"]


def test_cluster_bootstrap_is_wider_for_correlated_patients():
    # 40 patients x 25 images; whether the model is right depends on the patient,
    # so the effective sample size is 40, not 1,000.
    rng = np.random.default_rng(0)
    n_pat, per = 40, 25
    patient = np.repeat(np.arange(n_pat), per)
    right = np.repeat(rng.random(n_pat) < 0.7, per)
    y = rng.integers(0, 2, n_pat * per)
    p1 = np.where(right, np.where(y == 1, 0.8, 0.2), np.where(y == 1, 0.3, 0.7))
    by_image = evaluate(y, p1, ["a", "b"], n_boot=500, seed=0)
    by_patient = evaluate(y, p1, ["a", "b"], groups=[f"p{i}" for i in patient], n_boot=500, seed=0)
    assert by_image["accuracy"] == by_patient["accuracy"]
    w_img = np.diff(by_image["ci"]["accuracy"])[0]
    w_pat = np.diff(by_patient["ci"]["accuracy"])[0]
    assert w_pat > 3 * w_img
    assert by_patient["ci_method"] == "bootstrap over patients, 500 resamples"
    assert by_image["ci_method"] == "bootstrap over images, 500 resamples"
    assert by_patient["n_patients"] == n_pat
    lo, hi = by_patient["ci"]["accuracy"]
    assert lo <= by_patient["accuracy"] <= hi


def test_groups_of_one_image_behave_like_image_bootstrap():
    y, p = _synthetic(2000, seed=4)
    a = evaluate(y, p, ["a", "b"], n_boot=400, seed=0)
    b = evaluate(y, p, ["a", "b"], groups=[None] * 2000, n_boot=400, seed=1)  # missing ids: one image each
    wa, wb = np.diff(a["ci"]["accuracy"])[0], np.diff(b["ci"]["accuracy"])[0]
    assert 0.8 < wb / wa < 1.25
    assert b["n_patients"] == 2000


def test_n_boot_zero_turns_intervals_off():
    r = evaluate(Y4, P4, CLASSES4, sources=["x"] * 8, n_boot=0)
    assert r["ci"] == {"accuracy": None, "balanced_accuracy": None, "roc_auc": None}
    assert r["ci_method"] == "none"
    assert r["by_source"]["x"]["ci_accuracy"] is None


def test_bootstrap_on_10k_predictions_gives_intervals():
    # speed is measured by scripts, never asserted in unit tests
    y, p = _synthetic(10_000, k=4, seed=5)
    r = evaluate(y, p, CLASSES4, n_boot=1000)
    assert r["ci"]["roc_auc"] is not None
    lo, hi = r["ci"]["accuracy"]
    assert lo <= r["accuracy"] <= hi


# --------------------------------------------------------------------------- by source


def test_by_source_breakdown():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 1])
    p = np.array([0.1, 0.9, 0.2, 0.8, 0.9, 0.1, 0.3, 0.2, 0.7])
    sources = ["A", "A", "A", "A", "B", "B", "B", "B", None]
    r = evaluate(y, p, ["normal", "pneumonia"], sources=sources, n_boot=200)
    assert set(r["by_source"]) == {"A", "B"}  # None is skipped
    a, b = r["by_source"]["A"], r["by_source"]["B"]
    assert a["n"] == 4 and a["accuracy"] == 1.0 and a["balanced_accuracy"] == 1.0
    assert b["n"] == 4 and b["accuracy"] == 0.25
    assert b["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y[4:8], (p[4:8] > 0.5).astype(int)))
    assert a["ci_accuracy"] == [1.0, 1.0]
    lo, hi = b["ci_accuracy"]
    assert lo <= 0.25 <= hi
    assert r["n"] == 9  # the image without a source still counts overall


# --------------------------------------------------------------------------- leakage


def test_split_overlap_and_warnings():
    o = split_overlap(
        ["h1", "h2", "h3", "h4"],
        ["h9", "h3", "h2", "h1"],
        train_patients=["p1", "p2", "p3", "p4", "p5", "p6", None],
        test_patients=["p6", "p5", "p4", "p3", "p2", "x", None, ""],
    )
    assert o == {"files": ["h1", "h2", "h3"], "patients": ["p2", "p3", "p4", "p5", "p6"]}
    assert overlap_warnings(o) == [
        "3 images in test are byte-identical to images in train: test accuracy is optimistic",
        "patients in both train and test: 5 (e.g. p2, p3): split by patient_id",
    ]


def test_overlap_warnings_small_and_empty():
    assert overlap_warnings(split_overlap(["a"], ["b"])) == []
    assert split_overlap(["a"], ["b"], ["p1"], None)["patients"] == []
    assert overlap_warnings({"files": ["a"], "patients": ["p1"]}) == [
        "1 image in test is byte-identical to an image in train: test accuracy is optimistic",
        "patients in both train and test: 1 (p1): split by patient_id",
    ]


# --------------------------------------------------------------------------- warnings


def test_tiny_test_warning():
    assert tiny_test_warning(20, 0.5) == (
        "test set has 20 images: accuracy ±0.2 at 95%; treat differences below that as noise"
    )
    assert tiny_test_warning(20, 1.0) is not None  # a perfect score on 20 images is still 20 images
    assert tiny_test_warning(1, None).startswith("test set has 1 image:")
    assert tiny_test_warning(0, None).startswith("test set is empty")
    assert tiny_test_warning(2000, 0.9) is None
    assert tiny_test_warning(300, 0.5) is not None  # ±0.056
    assert tiny_test_warning(400, 0.5) is None  # ±0.049


def test_sentinel_warning():
    assert sentinel_warning(0.95, 0.70) is None
    within = sentinel_warning(0.85, 0.815)
    assert within.startswith("a logistic regression on 32x32 grayscale pixels scores 0.815, within 0.05 of")
    assert "the data, not the model, is doing the work" in within
    above = sentinel_warning(0.80, 0.82)
    assert "0.82, above the deep model (0.8)" in above
    assert sentinel_warning(0.90, 0.86, margin=0.02) is None
    assert sentinel_warning(None, 0.8) is None and sentinel_warning(0.8, None) is None


def test_source_gap_warning():
    gap = {
        "hospital_a": {"n": 200, "accuracy": 0.97, "ci_accuracy": [0.94, 0.99]},
        "hospital_b": {"n": 150, "accuracy": 0.70, "ci_accuracy": [0.62, 0.77]},
        "hospital_c": {"n": 100, "accuracy": 0.85, "ci_accuracy": [0.78, 0.91]},
    }
    msg = source_gap_warning(gap)
    assert msg.startswith("accuracy differs by source beyond the intervals: hospital_a 0.97")
    assert "hospital_b 0.70 [0.62, 0.77] (n=150)" in msg
    assert "confounded with source" in msg
    close = {"a": {"n": 50, "accuracy": 0.9, "ci_accuracy": [0.8, 0.96]},
             "b": {"n": 50, "accuracy": 0.84, "ci_accuracy": [0.72, 0.92]}}
    assert source_gap_warning(close) is None
    assert source_gap_warning({"a": gap["hospital_a"]}) is None
    assert source_gap_warning({}) is None and source_gap_warning(None) is None
    # without intervals it falls back to Wilson intervals from n
    assert source_gap_warning({"a": {"n": 300, "accuracy": 0.95}, "b": {"n": 300, "accuracy": 0.6}}) is not None
    assert source_gap_warning({"a": {"n": 10, "accuracy": 0.9}, "b": {"n": 10, "accuracy": 0.7}}) is None


def test_source_gap_warning_from_evaluate():
    rng = np.random.default_rng(0)
    n = 600
    src = np.array(["A", "B"])[np.arange(n) % 2]
    y = rng.integers(0, 2, n)
    good = np.where(src == "A", rng.random(n) < 0.97, rng.random(n) < 0.65)
    p = np.where(good == (y == 1), 0.8, 0.2)
    r = evaluate(y, p, ["n", "p"], sources=src, n_boot=200)
    assert "A 0.9" in source_gap_warning(r["by_source"])
