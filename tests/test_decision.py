"""The decision in predict (--decision) and calibration fitted on validation (fit-head --calibrate)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import xrayfeat as xf
from tests.conftest import run_cli_here
from xrayfeat import fileio
from xrayfeat.analysis.calibrators import apply_calibrator, check_calibration_data, fit_calibrator
from xrayfeat.analysis.decision import decide
from xrayfeat.errors import XrayfeatError


def _truth(run) -> dict:
    """sha256 -> true class of the run's test images (its predictions.csv)."""
    table = run.predictions()
    return dict(zip(table.sha256, (run.classes[k] for k in table.y_true)))


def _counts(table: pd.DataFrame, truth: dict, model: str, name: str, calls) -> dict:
    """tp/fp/tn/fn of class ``name`` when ``calls(row)`` says the row is called ``name``."""
    positive = np.array([truth[s] == name for s in table.sha256])
    called = np.array([calls(row) for _, row in table.iterrows()])
    return {"tp": int((positive & called).sum()), "fp": int((~positive & called).sum()),
            "tn": int((~positive & ~called).sum()), "fn": int((positive & ~called).sum())}


def _check_points(run, table: pd.DataFrame, models, where: str) -> None:
    """Each model's decisions in ``table`` give exactly the counts metrics.json recorded at ``where``."""
    truth = _truth(run)
    for model in models:
        figures = run.metrics["head"] if model == "head" else run.metrics["baselines"][model]
        for name, point in figures["operating_points"]["classes"].items():
            expected = {key: point[where][key] for key in ("tp", "fp", "tn", "fn")}
            got = _counts(table, truth, model, name, lambda row: row[f"{model}:predicted"] == name)
            assert got == expected, (model, name, where)


def test_predict_reproduces_the_runs_operating_points_by_its_rule_and_by_argmax(shared_run, tmp_path):
    run = shared_run.run
    assert run.metrics["decision"] == "threshold"  # the run's own rule: it chose thresholds on validation
    out = tmp_path / "pred.csv"
    summary = json.loads(run_cli_here("predict", run.path, shared_run.data / "test", "--out", out, "--json",
                                      check=True).stdout)
    table = pd.read_csv(out, keep_default_na=False)
    models = summary["models"]
    _check_points(run, table, models, "at_threshold")
    for model in models:
        figures = run.metrics["head"] if model == "head" else run.metrics["baselines"][model]
        [(positive, point)] = figures["operating_points"]["classes"].items()  # binary: the positive class's
        assert set(table[f"{model}:decision"]) == {"threshold"}
        assert np.allclose(table[f"{model}:threshold:{positive}"], point["threshold"])
        assert summary["decisions"][model] == {"decision": "threshold", "thresholds": {positive: point["threshold"]}}
    argmax = run.predict(shared_run.data / "test", decision="argmax", progress=False).table
    _check_points(run, argmax, models, "argmax")
    assert set(argmax["head:decision"]) == {"argmax"} and "head:threshold:b" not in argmax.columns


def _as_older_run(shared_run, dest):
    """A copy of the shared run as an xrayfeat before decisions wrote it: no decision, no operating points."""
    path = shared_run.copy(dest)
    metrics = json.loads((path / "metrics.json").read_text())
    del metrics["decision"]
    for figures in [metrics["head"], *metrics["baselines"].values()]:
        del figures["operating_points"]
    (path / "metrics.json").write_text(json.dumps(metrics))
    config = json.loads((path / "config.json").read_text())
    config["artifacts"]["metrics"]["sha256"] = fileio.file_digest(path / "metrics.json")
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_an_older_run_predicts_the_argmax_and_refuses_threshold_in_one_line(shared_run, tmp_path):
    path = _as_older_run(shared_run, tmp_path / "old")
    result = xf.predict(path, shared_run.data / "test", progress=False)
    probabilities = result.table[["head:a", "head:b"]].to_numpy()
    assert result.table["head:predicted"].tolist() == [("a", "b")[k] for k in probabilities.argmax(axis=1)]
    assert result.decisions["head"] == {"decision": "argmax", "thresholds": None}
    out = tmp_path / "refused.csv"
    proc = run_cli_here("predict", path, shared_run.data / "test", "--decision", "threshold", "--out", out)
    assert proc.returncode == 2 and not out.exists()
    [line] = proc.stderr.strip().splitlines()
    assert "--decision threshold" in line and "--decision argmax" in line and "re-run fit-head" in line
    assert run_cli_here("predict", path, shared_run.data / "test", "--decision", "best").returncode == 2


@pytest.fixture(scope="module")
def calibrated(shared_run, tmp_path_factory):
    """The shared run's study again with --calibrate temperature (1 epoch, the head alone, no bootstrap)."""
    root = tmp_path_factory.mktemp("calibrated")
    cache = shared_run.copy_cache(root / "cache")
    run = root / "run"
    run_cli_here("fit-head", shared_run.data, "-b", "vgg16", "--weights", "none", "--image-size", "32", "--epochs", "1",
                 "--baselines", "none", "--n-bootstrap", "0", "--calibrate", "temperature", "--cache-dir", cache,
                 "--out", run, check=True)
    return xf.load_run(run), cache


def test_calibration_is_fitted_on_validation_recorded_and_applied_in_predict(calibrated, shared_run, tmp_path):
    run, cache = calibrated
    found = run.metrics["calibrated"]
    assert found["method"] == "temperature" and found["fitted_on"] == "validation" and found["n"] == run.record.counts["val"]
    assert set(found["models"]) == {"head"}
    for model in found["models"].values():
        assert model["temperature"] > 0
        for where in ("validation", "test"):
            assert set(model[where]) == {"before", "after"}
        # the temperature minimises the log-loss on validation, so Brier there moves with it; the record holds both
        assert model["validation"]["after"]["brier"] is not None
    result = run.predict(shared_run.data / "test", progress=False)
    assert result.calibration == "temperature"
    internal = run.predictions().set_index("sha256")  # the run's test probabilities, calibrated
    table = result.table.set_index("sha256")
    for model in ("head",):
        columns = [f"{model}:{c}" for c in run.classes]
        np.testing.assert_allclose(table.loc[internal.index, columns].to_numpy(), internal[columns].to_numpy(), atol=1e-5)
    _check_points(run, result.table, ["head"], "at_threshold")
    report = tmp_path / "report"
    run_cli_here("report", run.path, "--out", report, check=True)
    text = (report / "report.md").read_text()
    assert "Calibrated on validation (temperature)" in text and "→" in text


def test_calibrate_is_refused_without_validation_rows_or_classes_in_one_line():
    with pytest.raises(XrayfeatError, match="--calibrate temperature fits on the validation rows, and this study has none"):
        check_calibration_data("temperature", np.array([], dtype=int), ["a", "b"])
    with pytest.raises(XrayfeatError, match=r"validation lacks them for 'c': use --calibrate temperature"):
        check_calibration_data("isotonic", np.array([0, 1, 0, 1]), ["a", "b", "c"])
    check_calibration_data("none", np.array([], dtype=int), ["a", "b"])


def test_temperature_recovers_a_known_temperature_and_keeps_the_argmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 3))
    true_t = 2.5
    p_true = np.exp(logits / true_t) / np.exp(logits / true_t).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p_true])
    overconfident = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    fitted = fit_calibrator("temperature", y, overconfident, ["a", "b", "c"])
    assert abs(fitted["temperature"] - true_t) < 0.25
    out = apply_calibrator(fitted, overconfident, ["a", "b", "c"])
    np.testing.assert_allclose(out, p_true, atol=0.03)
    assert (out.argmax(axis=1) == overconfident.argmax(axis=1)).all()


def test_isotonic_is_sklearns_map_per_class_renormalised_and_per_finding():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(1)
    p = rng.dirichlet([1, 1, 1], 300)
    y = np.array([rng.choice(3, p=row) for row in p])
    fitted = fit_calibrator("isotonic", y, p, ["a", "b", "c"])
    out = apply_calibrator(fitted, p, ["a", "b", "c"])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    raw = np.column_stack([IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p[:, k], y == k).predict(p[:, k])
                           for k in range(3)])
    total = raw.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, np.where(total > 0, raw / np.where(total > 0, total, 1), 1 / 3), atol=1e-12)
    # multi-label: each finding on its own; one without positives in validation stays as it was
    targets = np.column_stack([(rng.random(300) < p[:, 0]).astype(float), np.zeros(300)])
    fitted = fit_calibrator("isotonic", targets, p[:, :2], ["x", "y"], multilabel=True, mask=np.ones((300, 2), bool))
    assert fitted["isotonic"]["y"] is None
    out = apply_calibrator(fitted, p[:, :2], ["x", "y"], multilabel=True)
    np.testing.assert_array_equal(out[:, 1], p[:, 1])


def test_more_classes_by_thresholds_decide_the_class_furthest_above_its_own_or_none():
    proba = np.array([[0.5, 0.3, 0.2],     # a (0.1 above) and b (0.2 above) called -> b
                      [0.2, 0.05, 0.75],   # only c
                      [0.34, 0.05, 0.5],   # nothing reaches its threshold -> none
                      [0.45, 0.05, 0.5]])  # only a (c is 0.05 short), though c is the most probable
    decided = decide(proba, ["a", "b", "c"], "threshold", {"a": 0.4, "b": 0.1, "c": 0.55})
    assert decided.predicted == ["b", "c", "", "a"]
    assert decided.called == ["a|b", "c", "", "a"]
    assert decide(proba, ["a", "b", "c"], "argmax").predicted == ["a", "c", "c", "c"]
    binary = decide(np.array([[0.7, 0.3], [0.8, 0.2]]), ["n", "p"], "threshold", {"p": 0.25})
    assert binary.predicted == ["p", "n"]
