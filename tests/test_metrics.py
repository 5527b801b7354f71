"""xrayfeat.analysis.metrics: point estimates against scikit-learn, bootstrap properties, warnings."""

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

from xrayfeat.analysis import metrics
from xrayfeat.analysis.metrics import (
    score,
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
    r = score(Y4, P4, CLASSES4, n_boot=0)
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
    r = score(Y4, P4, CLASSES4, groups=list("aabbccdd"), sources=["s1"] * 4 + ["s2"] * 4, n_boot=50)
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
    r = score(y, proba, ["normal", "pneumonia"], n_boot=0)
    pred = (p1 > 0.5).astype(int)
    assert r["accuracy"] == pytest.approx(np.mean(pred == y))
    assert r["roc_auc"] == pytest.approx(roc_auc_score(y, p1), rel=1e-12)
    assert r["loss"] == pytest.approx(log_loss(y, np.column_stack([1 - p1, p1])), rel=1e-12)
    assert r["confusion"] == confusion_matrix(y, pred).tolist()


def test_perfect_predictions():
    y = np.array([0, 1, 2, 3] * 5)
    p = np.eye(4)[y]
    r = score(y, p, CLASSES4, n_boot=200)
    assert r["accuracy"] == 1.0 and r["balanced_accuracy"] == 1.0 and r["roc_auc"] == 1.0
    assert r["loss"] == pytest.approx(0.0, abs=1e-12)
    assert r["ci"]["accuracy"] == [1.0, 1.0]
    assert r["confusion"] == (np.eye(4, dtype=int) * 5).tolist()
    assert all(r["per_class"][c]["f1"] == 1.0 for c in CLASSES4)


def test_all_wrong_predictions():
    y = np.array([0, 1] * 6)
    p = 1.0 - y.astype(float)  # sigmoid says the opposite, with certainty
    r = score(y, p, ["a", "b"], n_boot=100)
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
        r = score(y, p, CLASSES4, n_boot=100)
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
    r = score([1, 1, 1], [0.9, 0.2, 0.7], ["normal", "pneumonia"], n_boot=20)
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
        score(classes=["a", "b"], n_boot=0, **kwargs)


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
        r = score(y, p, CLASSES4, n_boot=400, seed=1)
        for key in ("accuracy", "balanced_accuracy", "roc_auc"):
            lo, hi = r["ci"][key]
            assert lo <= r[key] <= hi, key
        widths.append(r["ci"]["accuracy"][1] - r["ci"]["accuracy"][0])
        assert r["ci_method"] == "bootstrap over images, 400 resamples"
    assert widths[1] < widths[0] / 3  # ~ sqrt(30) narrower


def test_deterministic_with_seed():
    y, p = _synthetic(500, k=4, seed=2)
    groups = np.arange(500) // 5
    a = score(y, p, CLASSES4, groups=groups, n_boot=200, seed=7)
    b = score(y, p, CLASSES4, groups=groups, n_boot=200, seed=7)
    c = score(y, p, CLASSES4, groups=groups, n_boot=200, seed=8)
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
    by_image = score(y, p1, ["a", "b"], n_boot=500, seed=0)
    by_patient = score(y, p1, ["a", "b"], groups=[f"p{i}" for i in patient], n_boot=500, seed=0)
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
    a = score(y, p, ["a", "b"], n_boot=400, seed=0)
    b = score(y, p, ["a", "b"], groups=[None] * 2000, n_boot=400, seed=1)  # missing ids: one image each
    wa, wb = np.diff(a["ci"]["accuracy"])[0], np.diff(b["ci"]["accuracy"])[0]
    assert 0.8 < wb / wa < 1.25
    assert b["n_patients"] == 2000


def test_n_boot_zero_turns_intervals_off():
    r = score(Y4, P4, CLASSES4, sources=["x"] * 8, n_boot=0)
    assert r["ci"] == {"accuracy": None, "balanced_accuracy": None, "roc_auc": None}
    assert r["ci_method"] == "none"
    assert r["by_source"]["x"]["ci_accuracy"] is None


def test_bootstrap_on_10k_predictions_gives_intervals():
    # speed is measured by scripts, never asserted in unit tests
    y, p = _synthetic(10_000, k=4, seed=5)
    r = score(y, p, CLASSES4, n_boot=1000)
    assert r["ci"]["roc_auc"] is not None
    lo, hi = r["ci"]["accuracy"]
    assert lo <= r["accuracy"] <= hi


# --------------------------------------------------------------------------- by source


def test_by_source_breakdown():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 1])
    p = np.array([0.1, 0.9, 0.2, 0.8, 0.9, 0.1, 0.3, 0.2, 0.7])
    sources = ["A", "A", "A", "A", "B", "B", "B", "B", None]
    r = score(y, p, ["normal", "pneumonia"], sources=sources, n_boot=200)
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
    r = score(y, p, ["n", "p"], sources=src, n_boot=200)
    assert "A 0.9" in source_gap_warning(r["by_source"])


# --------------------------------------------------------------------------- thresholds

BINARY = ["normal", "pneumonia"]
# Ten validation images, five per class; p(pneumonia) by hand so that every rule's answer is known.
YB = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
PB = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.35, 0.5, 0.7, 0.8, 0.9])


@pytest.mark.parametrize(
    "rule, want",
    [
        ("youden", 0.7),  # J = 0.6 at 0.35, 0.5 and 0.7: the largest wins
        ("sens=0.95", 0.35),  # every positive must be called: the lowest positive score
        ("sens=0.8", 0.5),  # 4 of 5 positives
        ("spec=0.9", 0.7),  # all five negatives below it, 0.6 included
        ("spec=0.6", 0.35),  # 3 of 5 negatives below it
        ("0.3", 0.3),
    ],
)
def test_choose_thresholds_binary_rules(rule, want):
    got = metrics.choose_thresholds(YB, PB, BINARY, rule)
    assert got == {"pneumonia": {"threshold": want, "note": None}}


def test_choose_thresholds_other_positive_and_sigmoid_shapes():
    # with 'normal' positive its score is 1 - p: J = 0.6 at 0.4, 0.6 and 0.7
    got = metrics.choose_thresholds(YB, PB, BINARY, "youden", positive="normal")
    assert list(got) == ["normal"] and got["normal"]["threshold"] == pytest.approx(0.7)
    assert metrics.choose_thresholds(YB, np.column_stack([1 - PB, PB]), BINARY, "youden") == \
        metrics.choose_thresholds(YB, PB, BINARY, "youden")


def test_choose_thresholds_without_positives_or_negatives():
    keep = Y4 != 3  # no 'viral' in the validation data
    got = metrics.choose_thresholds(Y4[keep], P4[keep], CLASSES4, "sens=0.9")
    assert list(got) == CLASSES4
    assert got["viral"]["threshold"] is None
    assert got["viral"]["note"] == "no images of 'viral' to choose the 'sens=0.9' threshold on: it needs both"
    assert got["covid"] == {"threshold": 0.3, "note": None}  # lowest covid score
    assert metrics.choose_thresholds(Y4[keep], P4[keep], CLASSES4, "0.25")["viral"] == {"threshold": 0.25, "note": None}
    only = metrics.choose_thresholds([1, 1], [0.2, 0.9], BINARY, "youden")["pneumonia"]
    assert only["threshold"] is None and only["note"].startswith("no images other than 'pneumonia'")
    tied = metrics.choose_thresholds([0, 0, 1], [0.9, 0.9, 0.5], BINARY, "spec=0.6")["pneumonia"]
    assert tied == {"threshold": None, "note": "no observed score reaches specificity 0.6 for 'pneumonia': "
                                               "2 of its 2 negatives share the highest score"}


def test_choose_thresholds_bad_arguments():
    with pytest.raises(ValueError, match="The 'rule' parameter must be 'youden'.*Got 'median' instead"):
        metrics.choose_thresholds(YB, PB, BINARY, "median")
    with pytest.raises(ValueError, match="'positive' parameter"):
        metrics.choose_thresholds(YB, PB, BINARY, "youden", positive="covid")


# --------------------------------------------------------------------------- operating points


def _counts(point):
    return tuple(point[key] for key in ("tp", "fp", "tn", "fn"))


def test_operating_points_binary_by_hand():
    th = metrics.choose_thresholds(YB, PB, BINARY, "sens=0.95")
    op = metrics.operating_points(YB, PB, BINARY, th, rule="sens=0.95", n_boot=0)
    assert op["rule"] == "sens=0.95" and op["chosen_on"] == "validation" and list(op["classes"]) == ["pneumonia"]
    entry = op["classes"]["pneumonia"]
    assert entry["threshold"] == 0.35 and entry["note"] is None
    at, arg = entry["at_threshold"], entry["argmax"]
    assert _counts(at) == (5, 2, 3, 0)  # 0.4 and 0.6 are false positives
    assert (at["sensitivity"], at["specificity"], at["npv"]) == (1.0, 0.6, 1.0)
    assert at["ppv"] == pytest.approx(5 / 7) and at["f1"] == pytest.approx(10 / 12)
    assert _counts(arg) == (3, 1, 4, 2)  # argmax: p > 0.5, 0.5 itself goes to 'normal'
    assert arg["sensitivity"] == pytest.approx(0.6) and arg["specificity"] == pytest.approx(0.8)
    assert arg["ppv"] == pytest.approx(0.75) and arg["npv"] == pytest.approx(4 / 6) and arg["f1"] == pytest.approx(6 / 9)
    assert at["ci"] == arg["ci"] == dict.fromkeys(["sensitivity", "specificity", "ppv", "npv", "f1"])


def test_operating_points_four_classes_by_hand():
    th = metrics.choose_thresholds(Y4, P4, CLASSES4, "0.3")
    op = metrics.operating_points(Y4, P4, CLASSES4, th, rule="0.3", n_boot=0)["classes"]
    assert list(op) == CLASSES4
    assert _counts(op["covid"]["argmax"]) == (1, 0, 6, 1)
    assert _counts(op["covid"]["at_threshold"]) == (2, 0, 6, 0)  # 0.30 >= 0.3
    assert _counts(op["normal"]["argmax"]) == _counts(op["normal"]["at_threshold"]) == (1, 1, 5, 1)
    assert _counts(op["bacterial"]["argmax"]) == (2, 1, 5, 0)
    assert _counts(op["bacterial"]["at_threshold"]) == (2, 2, 4, 0)
    assert _counts(op["viral"]["at_threshold"]) == (2, 2, 4, 0)
    b = op["bacterial"]["at_threshold"]
    assert (b["sensitivity"], b["ppv"], b["npv"]) == (1.0, 0.5, 1.0)
    assert b["specificity"] == pytest.approx(4 / 6) and b["f1"] == pytest.approx(2 / 3)


def test_operating_points_undefined_rates_are_none():
    keep = Y4 != 3  # no 'viral' in the truth, and nothing called 'viral'
    y, p = Y4[keep], P4[keep]
    th = {"viral": {"threshold": 0.9, "note": None}, "covid": {"threshold": None, "note": "why"}}
    op = metrics.operating_points(y, p, CLASSES4, th, rule="0.9", n_boot=50)["classes"]
    assert list(op) == ["covid", "viral"]  # class order
    assert op["covid"]["at_threshold"] is None and op["covid"]["note"] == "why"
    for where in ("argmax", "at_threshold"):
        v = op["viral"][where]
        assert _counts(v) == (0, 0, 6, 0)
        assert (v["sensitivity"], v["specificity"], v["ppv"], v["npv"], v["f1"]) == (None, 1.0, None, 1.0, None)
        assert v["ci"]["sensitivity"] is None and v["ci"]["specificity"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="'thresholds' must be keyed by names"):
        metrics.operating_points(y, p, CLASSES4, {"flu": {"threshold": 0.5}}, rule="0.5")
    with pytest.raises(ValueError, match="'thresholds' must map each class"):
        metrics.operating_points(y, p, CLASSES4, {"covid": 0.5}, rule="0.5")


def test_operating_point_intervals_contain_the_estimate():
    y, p = _synthetic(300, k=4, signal=1.5, seed=6)
    th = metrics.choose_thresholds(y, p, CLASSES4, "youden")
    op = metrics.operating_points(y, p, CLASSES4, th, rule="youden", n_boot=300, seed=1)["classes"]
    for entry in op.values():
        for where in ("argmax", "at_threshold"):
            point = entry[where]
            for rate, (lo, hi) in point["ci"].items():
                assert lo <= point[rate] <= hi and lo < hi, (where, rate)


def test_operating_point_intervals_resample_patients():
    # Every patient has two identical images: resampling patients must give exactly the
    # intervals of one image per patient, and resampling images narrower ones.
    y, p = _synthetic(60, seed=3)
    th = metrics.choose_thresholds(y, p, ["a", "b"], "youden")
    single = metrics.operating_points(y, p, ["a", "b"], th, rule="youden", n_boot=300, seed=2)
    y2, p2, patients = np.repeat(y, 2), np.repeat(p, 2, axis=0), np.repeat(np.arange(60), 2)
    by_patient = metrics.operating_points(y2, p2, ["a", "b"], th, rule="youden", groups=patients, n_boot=300, seed=2)
    by_image = metrics.operating_points(y2, p2, ["a", "b"], th, rule="youden", n_boot=300, seed=2)
    for where in ("argmax", "at_threshold"):
        ci_patient = by_patient["classes"]["b"][where]["ci"]
        assert ci_patient == single["classes"]["b"][where]["ci"]  # doubled counts, the same ratios
        ci_image = by_image["classes"]["b"][where]["ci"]
        for rate in ("sensitivity", "specificity", "f1"):
            assert np.diff(ci_patient[rate])[0] > 1.15 * np.diff(ci_image[rate])[0], (where, rate)


# --------------------------------------------------------------------------- calibration


def test_calibration_of_a_calibrated_model():
    # confidence 0.75 with 3 of 4 right, confidence 0.9 with 9 of 10 right
    y = np.array([1, 1, 1, 0] + [0] * 9 + [1])
    p1 = np.array([0.75] * 4 + [0.1] * 10)
    cal = metrics.calibration(y, p1, BINARY)
    assert cal["ece"] == pytest.approx(0.0, abs=1e-12)
    assert cal["brier"] == pytest.approx((3 * 0.25**2 + 0.75**2 + 9 * 0.1**2 + 0.9**2) / 14, rel=1e-12)
    assert cal["n_bins"] == 10 and len(cal["curve"]) == 10
    assert cal["curve"][7] == {"lo": 0.7, "hi": 0.8, "n": 4, "confidence": 0.75, "accuracy": 0.75}
    assert cal["curve"][9]["n"] == 10 and cal["curve"][9]["accuracy"] == 0.9
    assert cal["curve"][0] == {"lo": 0.0, "hi": 0.1, "n": 0, "confidence": None, "accuracy": None}
    assert sum(b["n"] for b in cal["curve"]) == 14


def test_calibration_of_an_overconfident_model_and_multiclass_brier():
    over = metrics.calibration([0, 1] * 5, [0.9] * 10, BINARY)  # 90% sure, right half the time
    assert over["ece"] == pytest.approx(0.4, rel=1e-12)
    assert over["brier"] == pytest.approx(0.41, rel=1e-12)
    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    cal = metrics.calibration([0, 2], p, ["a", "b", "c"], n_bins=4)
    assert cal["brier"] == pytest.approx((0.09 + 0.04 + 0.01 + 0.04 + 0.25 + 0.49) / 2, rel=1e-12)
    assert [b["n"] for b in cal["curve"]] == [0, 0, 2, 0]  # 0.5 on an edge goes up, to 0.7's bin
    assert cal["ece"] == pytest.approx(abs(0.5 - 0.6), rel=1e-12)  # one bin: accuracy 1/2, confidence 0.6
    assert metrics.calibration([0, 2], p, ["a", "b", "c"])["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.5, rel=1e-12)
    assert metrics.calibration([0], [[0.0, 1.0, 0.0]], ["a", "b", "c"], n_bins=4)["curve"][3]["n"] == 1
    with pytest.raises(ValueError, match="'n_bins'"):
        metrics.calibration([0], [[0.5, 0.5]], BINARY, n_bins=0)
    with pytest.raises(TypeError, match="'n_bins'"):
        metrics.calibration([0], [[0.5, 0.5]], BINARY, n_bins=2.5)


def test_evaluate_adds_calibration_and_operating_points_only():
    groups = list("aabbccdd")
    th = metrics.choose_thresholds(Y4, P4, CLASSES4, "youden")
    plain = score(Y4, P4, CLASSES4, groups=groups, n_boot=100, seed=3)
    full = score(Y4, P4, CLASSES4, groups=groups, n_boot=100, seed=3, thresholds=th, threshold_rule="youden")
    assert full.pop("operating_points") == metrics.operating_points(
        Y4, P4, CLASSES4, th, rule="youden", groups=groups, n_boot=100, seed=3)
    assert full == plain
    assert plain["calibration"] == metrics.calibration(Y4, P4, CLASSES4)
    assert json.loads(json.dumps(full)) == full
    with pytest.raises(ValueError, match="'threshold_rule'"):
        score(Y4, P4, CLASSES4, n_boot=0, thresholds=th)
