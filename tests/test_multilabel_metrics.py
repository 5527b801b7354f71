"""xrayfeat.analysis.multilabel: per-finding figures against scikit-learn, masking, the patient bootstrap, thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from xrayfeat.analysis import metrics, scoring
from xrayfeat.analysis.multilabel import (
    _ApPlan,
    _weighted_ap,
    choose_multilabel_thresholds,
    headline_multilabel,
    score_multilabel,
)

FINDINGS = ["Atelectasis", "Effusion", "Nodule"]

# Ten images, three findings, by hand. Nodule has no positive among its counted entries;
# masked entries (False) hold a target and a probability that must not matter.
Y = np.array([
    [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0],
    [0, 1, 1], [0, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0],
], dtype=float)
MASK = np.array([
    [1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1],
    [1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1],
], dtype=bool)
P = np.array([
    [0.9, 0.2, 0.1], [0.3, 0.7, 0.2], [0.8, 0.1, 0.3], [0.2, 0.3, 0.1], [0.1, 0.4, 0.2],
    [0.4, 0.6, 0.9], [0.4, 0.5, 0.2], [0.7, 0.8, 0.1], [0.5, 0.9, 0.3], [0.6, 0.2, 0.4],
])


def _synthetic(n, k=4, seed=0, patients=None):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < rng.uniform(0.1, 0.4, k)).astype(float)
    p = 1.0 / (1.0 + np.exp(-(rng.normal(size=(n, k)) + 1.5 * y - 1.0)))
    mask = rng.random((n, k)) > 0.15
    return y, mask, p


# --------------------------------------------------------------------------- point estimates


def test_per_finding_figures_match_sklearn_on_the_masked_column():
    r = score_multilabel(Y, MASK, P, FINDINGS, n_boot=0)
    for j, name in enumerate(FINDINGS):
        rows = MASK[:, j]
        f = r["per_finding"][name]
        assert f["n"] == rows.sum()
        assert f["positives"] == Y[rows, j].sum()
        assert f["prevalence"] == pytest.approx(Y[rows, j].mean())
        if name == "Nodule":  # its one positive is masked
            assert f["roc_auc"] is None and f["average_precision"] is None
            continue
        assert f["roc_auc"] == roc_auc_score(Y[rows, j], P[rows, j])
        assert f["average_precision"] == average_precision_score(Y[rows, j], P[rows, j])
    aucs = [r["per_finding"][n]["roc_auc"] for n in FINDINGS[:2]]
    assert r["macro_roc_auc"] == pytest.approx(np.mean(aucs))
    assert r["macro_average_precision"] == pytest.approx(
        np.mean([r["per_finding"][n]["average_precision"] for n in FINDINGS[:2]]))
    assert r["micro_roc_auc"] == roc_auc_score(Y[MASK], P[MASK])
    assert r["loss"] == pytest.approx(log_loss(Y[MASK], P[MASK], labels=[0, 1]), rel=1e-12)
    assert r["task"] == "multilabel" and r["n"] == 10 and r["findings"] == FINDINGS
    assert r["ci"] == {"macro_roc_auc": None, "micro_roc_auc": None, "macro_average_precision": None}
    assert r["ci_method"] == "none" and "n_patients" not in r


def test_masked_entries_change_nothing():
    groups = list("aabbccddee")
    kw = {"groups": groups, "sources": list("xxyyxxyyxy"), "subgroups": {"sex": list("FMFMFMFMF") + [None]},
              "n_boot": 200, "seed": 3}
    th = {"Atelectasis": {"threshold": 0.5, "note": None}, "Effusion": {"threshold": 0.45, "note": None}}
    before = score_multilabel(Y, MASK, P, FINDINGS, thresholds=th, threshold_rule="0.5", **kw)
    y2, p2 = Y.copy(), P.copy()
    y2[~MASK] = 1 - y2[~MASK]
    p2[~MASK] = np.linspace(0.01, 0.99, (~MASK).sum())
    y2[~MASK & (np.arange(3) == 0)] = np.nan  # a blank entry may hold NaN
    after = score_multilabel(y2, MASK, p2, FINDINGS, thresholds=th, threshold_rule="0.5", **kw)
    assert after == before
    assert choose_multilabel_thresholds(y2, MASK, p2, FINDINGS, "youden") == \
        choose_multilabel_thresholds(Y, MASK, P, FINDINGS, "youden")


def test_result_is_plain_json_and_deterministic():
    y, mask, p = _synthetic(300, seed=1)
    names = list("abcd")
    kw = {"groups": np.arange(300) // 3, "sources": np.array(["s1", "s2"])[np.arange(300) % 2], "n_boot": 100}
    a = score_multilabel(y, mask, p, names, seed=5, **kw)
    assert json.loads(json.dumps(a)) == a
    assert a == score_multilabel(y, mask, p, names, seed=5, **kw)
    assert a["ci"] != score_multilabel(y, mask, p, names, seed=6, **kw)["ci"]


def test_calibration_per_finding_reuses_metrics():
    r = score_multilabel(Y, MASK, P, FINDINGS, n_boot=0)
    rows = MASK[:, 1]
    assert r["calibration"]["Effusion"] == metrics.calibration(Y[rows, 1].astype(int), P[rows, 1], ["no", "yes"])
    assert r["calibration"]["Effusion"]["brier"] == pytest.approx(np.mean((P[rows, 1] - Y[rows, 1]) ** 2))
    masked_out = MASK.copy()
    masked_out[:, 2] = False
    assert score_multilabel(Y, masked_out, P, FINDINGS, n_boot=0)["calibration"]["Nodule"] is None


def test_one_finding_and_a_mask_of_none():
    y = np.array([0, 0, 1, 1, 1.0])
    p = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    r = score_multilabel(y, None, p, ["Edema"], n_boot=0)
    assert r["per_finding"]["Edema"]["roc_auc"] == roc_auc_score(y, p)
    assert r["macro_roc_auc"] == r["micro_roc_auc"] == roc_auc_score(y, p)


@pytest.mark.parametrize("kwargs, match", [
    ({"y": Y[:, :2]}, "'y' must have shape"),
    ({"proba": P * 3}, "'proba' must hold sigmoid probabilities"),
    ({"y": np.where(MASK, 2.0, Y)}, "'y' must hold 0 or 1 wherever 'mask' is True"),
    ({"mask": np.zeros_like(MASK)}, "'mask' leaves out every entry"),
    ({"mask": MASK.astype(float) * 0.5}, "'mask' must be boolean"),
    ({"findings": ["a", "a", "b"]}, "'findings' must be unique"),
    ({"findings": "abc"}, "'findings' must be a sequence"),
    ({"groups": [1, 2]}, "'groups' must have one entry per prediction"),
])
def test_bad_input_names_the_parameter(kwargs, match):
    args = {"y": Y, "mask": MASK, "proba": P, "findings": FINDINGS} | kwargs
    with pytest.raises((TypeError, ValueError), match=match):
        score_multilabel(args.pop("y"), args.pop("mask"), args.pop("proba"), args.pop("findings"), n_boot=0, **args)


# --------------------------------------------------------------------------- bootstrap


def test_weighted_average_precision_matches_sklearn_sample_weight():
    rng = np.random.default_rng(3)
    score = np.round(rng.random(300), 1)  # many ties
    pos = rng.random(300) < 0.3
    rows = np.sort(rng.choice(500, 300, replace=False))  # a plan over some columns of the weights
    w = rng.integers(0, 4, size=(6, 500))
    w[0] = 1
    plan = metrics._AucPlan(score, pos, rows)
    want_ap = [average_precision_score(pos, score, sample_weight=wi[rows]) for wi in w]
    want_auc = [roc_auc_score(pos, score, sample_weight=wi[rows]) for wi in w]
    np.testing.assert_allclose(_weighted_ap(w, plan, _ApPlan(plan)), want_ap, rtol=1e-12)
    np.testing.assert_allclose(metrics._weighted_auc(w, plan), want_auc, rtol=1e-12)


def test_intervals_contain_the_estimates_and_narrow_with_more_data():
    widths = []
    for n in (150, 3000):
        y, mask, p = _synthetic(n, seed=n)
        r = score_multilabel(y, mask, p, list("abcd"), n_boot=300, seed=1)
        for key in ("macro_roc_auc", "micro_roc_auc", "macro_average_precision"):
            lo, hi = r["ci"][key]
            assert lo <= r[key] <= hi, key
        for f in r["per_finding"].values():
            assert f["roc_auc_ci"][0] <= f["roc_auc"] <= f["roc_auc_ci"][1]
            assert f["average_precision_ci"][0] <= f["average_precision"] <= f["average_precision_ci"][1]
        widths.append(np.diff(r["ci"]["macro_roc_auc"])[0])
        assert r["ci_method"] == "bootstrap over images, 300 resamples" and r["ci_level"] == 0.95
    assert widths[1] < widths[0] / 2.5  # ~ sqrt(20) narrower


def test_duplicated_images_of_one_patient_leave_the_intervals_unchanged():
    # Resampling patients: each image copied within its own patient is the same data drawn the same way
    # (every copy comes along with its patient), so every interval is exactly that of the images alone.
    # Taken as independent images instead, the copies narrow the intervals: the error the patients avoid.
    y, mask, p = _synthetic(200, seed=4)
    names = list("abcd")
    alone = score_multilabel(y, mask, p, names, n_boot=300, seed=2)
    twice = np.repeat(np.arange(200), 2)
    copied = score_multilabel(y[twice], mask[twice], p[twice], names, groups=[f"p{i}" for i in twice],
                              n_boot=300, seed=2)
    assert copied["ci"] == alone["ci"]
    assert copied["per_finding"] == {name: {**f, "n": 2 * f["n"], "positives": 2 * f["positives"]}
                                     for name, f in alone["per_finding"].items()}
    assert copied["n_patients"] == 200 and copied["ci_method"] == "bootstrap over patients, 300 resamples"
    naive = score_multilabel(y[twice], mask[twice], p[twice], names, n_boot=300, seed=2)
    assert np.diff(naive["ci"]["macro_roc_auc"])[0] < 0.85 * np.diff(alone["ci"]["macro_roc_auc"])[0]


def test_by_source_macro_with_intervals():
    y, mask, p = _synthetic(400, seed=6)
    src = np.array(["A", "B", None], dtype=object)[np.arange(400) % 3]
    r = score_multilabel(y, mask, p, list("abcd"), sources=src, n_boot=200)
    assert set(r["by_source"]) == {"A", "B"}
    rows = src == "A"
    alone = score_multilabel(y[rows], mask[rows], p[rows], list("abcd"), n_boot=0)
    a = r["by_source"]["A"]
    assert a["n"] == rows.sum() and a["macro_roc_auc"] == alone["macro_roc_auc"]
    assert a["ci_macro_roc_auc"][0] <= a["macro_roc_auc"] <= a["ci_macro_roc_auc"][1]
    # the other figures are those of a run without sources
    plain = score_multilabel(y, mask, p, list("abcd"), n_boot=200)
    assert {k: v for k, v in r.items() if k != "by_source"} == plain


def test_bootstrap_on_10k_images_and_14_findings_gives_intervals():
    # speed is measured by scripts, never asserted in unit tests (about 3 s for 1000 resamples on 2 cores)
    y, mask, p = _synthetic(10_000, k=14, seed=5)
    r = score_multilabel(y, mask, p, [f"f{i}" for i in range(14)], groups=np.arange(10_000) // 3, n_boot=100)
    assert all(r["ci"][key] is not None for key in r["ci"])
    assert r["n_patients"] == 3334


# --------------------------------------------------------------------------- thresholds and operating points


@pytest.mark.parametrize("rule", ["youden", "sens=0.8", "spec=0.7", "0.35"])
def test_thresholds_per_finding_are_metrics_rules_on_the_masked_column(rule):
    got = choose_multilabel_thresholds(Y, MASK, P, FINDINGS, rule)
    for j, name in enumerate(FINDINGS[:2]):
        rows = MASK[:, j]
        want = metrics.choose_thresholds(Y[rows, j].astype(int), P[rows, j], ["no", name], rule)[name]
        assert got[name] == want
    if rule == "0.35":
        assert got["Nodule"] == {"threshold": 0.35, "note": None}
    else:
        assert got["Nodule"]["threshold"] is None
        assert "no positive entries of 'Nodule'" in got["Nodule"]["note"]


def test_thresholds_bad_rule_names_the_parameter():
    with pytest.raises(ValueError, match="'rule'"):
        choose_multilabel_thresholds(Y, MASK, P, FINDINGS, "best")


def test_operating_points_count_only_counted_entries():
    th = choose_multilabel_thresholds(Y, MASK, P, FINDINGS, "youden")
    r = score_multilabel(Y, MASK, P, FINDINGS, n_boot=100, thresholds=th, threshold_rule="youden")
    points = r["operating_points"]
    assert points["rule"] == "youden" and points["chosen_on"] == "validation"
    for j, name in enumerate(FINDINGS):
        rows = MASK[:, j]
        truth, s = Y[rows, j] == 1, P[rows, j]
        entry = points["classes"][name]
        assert entry["threshold"] == th[name]["threshold"]
        half = entry["argmax"]
        called = s > 0.5
        assert (half["tp"], half["fp"], half["tn"], half["fn"]) == (
            (truth & called).sum(), (~truth & called).sum(), (~truth & ~called).sum(), (truth & ~called).sum())
        if entry["threshold"] is None:
            assert entry["at_threshold"] is None
            continue
        at = entry["at_threshold"]
        called = s >= entry["threshold"]
        assert (at["tp"], at["fp"], at["tn"], at["fn"]) == (
            (truth & called).sum(), (~truth & called).sum(), (~truth & ~called).sum(), (truth & ~called).sum())
        assert at["sensitivity"] == pytest.approx(at["tp"] / (at["tp"] + at["fn"]))
        assert set(at["ci"]) == {"sensitivity", "specificity", "ppv", "npv", "f1"}


def test_operating_points_leave_every_other_figure_unchanged():
    y, mask, p = _synthetic(200, seed=8)
    th = choose_multilabel_thresholds(y, mask, p, list("abcd"), "sens=0.9")
    plain = score_multilabel(y, mask, p, list("abcd"), n_boot=100)
    full = score_multilabel(y, mask, p, list("abcd"), n_boot=100, thresholds=th, threshold_rule="sens=0.9")
    assert set(full.pop("operating_points")["classes"]) == set("abcd")
    assert full == plain
    with pytest.raises(ValueError, match="'threshold_rule'"):
        score_multilabel(y, mask, p, list("abcd"), n_boot=0, thresholds=th)


def test_scoring_chooses_on_validation_and_scores_on_test():
    # Validation and test differ: the thresholds must be validation's, whatever test would choose.
    y, mask, p = _synthetic(600, seed=9)
    val, test = slice(0, 300), slice(300, 600)
    names = list("abcd")
    chosen = scoring.choose_model_thresholds(y[val], {"head": p[val]}, names, "youden", None, multilabel=True,
                                             mask=mask[val])
    assert chosen == {"head": choose_multilabel_thresholds(y[val], mask[val], p[val], names, "youden")}
    on_test = choose_multilabel_thresholds(y[test], mask[test], p[test], names, "youden")
    assert chosen["head"] != on_test

    class _Item:
        patient_id, source, sha256, groups = None, None, "x", ()

    items = [_Item() for _ in range(300)]
    scored = scoring.evaluate_models({"head": p[test]}, y[test], names, items, n_boot=50, seed=0, thresholds=chosen,
                                     rule="youden", multilabel=True, mask=mask[test])
    head = scored["head"]
    assert {n: e["threshold"] for n, e in head["operating_points"]["classes"].items()} == \
        {n: e["threshold"] for n, e in chosen["head"].items()}
    assert head == score_multilabel(y[test], mask[test], p[test], names, n_boot=50, seed=0, thresholds=chosen["head"],
                                    threshold_rule="youden")
    assert scoring.headline(head) == headline_multilabel(head) == {
        "macro_roc_auc": head["macro_roc_auc"], "macro_roc_auc_ci": head["ci"]["macro_roc_auc"],
        "micro_roc_auc": head["micro_roc_auc"], "loss": head["loss"], "n": 300}
    with pytest.raises(ValueError, match="'mask'"):
        scoring.evaluate_models({"head": p[test]}, y[test], names, items, n_boot=0, seed=0, mask=mask[test])
    with pytest.raises(Exception, match="--positive"):
        scoring.choose_model_thresholds(y[val], {"head": p[val]}, names, "youden", "a", multilabel=True)


def test_seed_spread_of_a_multilabel_head():
    y, mask, p = _synthetic(200, seed=10)
    names = list("abcd")
    primary = score_multilabel(y, mask, p, names, n_boot=0)
    other = np.clip(p + 0.05, 0, 1)
    spread = scoring.seed_spread(primary, [{"proba_test": other}], y, names, [0, 1], mask=mask)
    again = score_multilabel(y, mask, other, names, n_boot=0)
    assert spread["seeds"] == [0, 1]
    assert set(spread["head"]) == {"macro_roc_auc", "micro_roc_auc", "macro_average_precision"}
    assert spread["head"]["micro_roc_auc"]["values"] == [primary["micro_roc_auc"], again["micro_roc_auc"]]
    assert scoring.seed_spread(primary, [], y, names, [0], mask=mask) is None
