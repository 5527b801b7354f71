"""Operating points, calibration, best epoch, seed repeats and imbalance through fit-head (issue 13).

One small run (module fixture) is checked from its files alone: every new
figure must come back from ``predictions.csv`` and ``predictions-val.csv``.
"""

from __future__ import annotations

import csv
import json
import os
import random

import numpy as np
import pytest

from conftest import run_cli, write_tiny_dataset
from xrayfeat.analysis import metrics
from xrayfeat.data.datasets import discover
from xrayfeat.extraction.pipeline import FeatureOptions, RunOptions
from xrayfeat.options.constraints import OptionError
from xrayfeat.runs.fit import HeadOptions, fit_head

CLASSES = ["a", "b"]
HEAD = HeadOptions(epochs=4, steps_per_epoch=3, units=16, baselines=("logreg",), n_bootstrap=200,
                   restore_best="val_loss", repeats=2, threshold="youden")


def _fit(data, tmp_path, name, head=HEAD):
    features = FeatureOptions("vgg16", weights="none", image_size=32)
    run = RunOptions(cache_dir=tmp_path / "cache", workers=0, batch_size=8)
    return fit_head(discover(data), features, head, run, out=tmp_path / name)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("operating")
    data = write_tiny_dataset(tmp / "data", per_split=(("train", 10), ("test", 6)))
    result = _fit(data, tmp, "run")
    return tmp, data, result


def _table(path):
    """(y_true, {model: probabilities}) from a predictions CSV."""
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([int(r["y_true"]) for r in rows])
    models = sorted({key.split(":")[0] for key in rows[0] if ":" in key})
    return y, {m: np.array([[float(r[f"{m}:{c}"]) for c in CLASSES] for r in rows]) for m in models}


def _labels_by_image(path) -> dict:
    with open(path) as fh:
        return {row["sha256"]: row["label"] for row in csv.DictReader(fh)}


def test_every_new_figure_recomputes_from_the_prediction_files(fitted):
    tmp, _, _ = fitted
    run = tmp / "run"
    saved = json.loads((run / "metrics.json").read_text())
    y_val, val = _table(run / "predictions-val.csv")
    y_test, test = _table(run / "predictions.csv")
    assert saved["positive"] == "b" and saved["threshold_rule"] == "youden"
    for model in ("head", "logreg"):
        recorded = saved["head"] if model == "head" else saved["baselines"][model]
        thresholds = metrics.choose_thresholds(y_val, val[model], CLASSES, "youden", positive="b")
        assert list(thresholds) == ["b"]
        assert thresholds["b"]["threshold"] == pytest.approx(recorded["operating_points"]["classes"]["b"]["threshold"],
                                                             rel=1e-5)
        again = metrics.score(y_test, test[model], CLASSES, n_boot=200, seed=0,
                                 thresholds=thresholds, threshold_rule="youden")
        for at in ("argmax", "at_threshold"):
            point, kept = again["operating_points"]["classes"]["b"][at], recorded["operating_points"]["classes"]["b"][at]
            assert {k: point[k] for k in ("tp", "fp", "tn", "fn")} == {k: kept[k] for k in ("tp", "fp", "tn", "fn")}
        assert again["calibration"]["brier"] == pytest.approx(recorded["calibration"]["brier"], rel=1e-4)
        assert again["calibration"]["ece"] == pytest.approx(recorded["calibration"]["ece"], rel=1e-4, abs=1e-6)
    config = json.loads((run / "config.json").read_text())
    for name in ("calibration", "predictions_val"):
        assert (run / config["artifacts"][name]["file"]).is_file(), name


def test_thresholds_never_see_test_labels(fitted):
    """The same study with the test labels shuffled chooses the same thresholds (only test metrics move)."""
    tmp, data, _ = fitted
    items = discover(data).items
    test = [i for i in items if i.split == "test"]
    labels = [i.label for i in test]
    random.Random(3).shuffle(labels)
    assert labels != [i.label for i in test]
    shuffled = dict(zip((i.path for i in test), labels))
    manifest = tmp / "shuffled.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        for item in items:
            writer.writerow([os.path.relpath(item.path, tmp), shuffled.get(item.path, item.label), item.split])
    _fit(manifest, tmp, "shuffled")
    before = json.loads((tmp / "run" / "metrics.json").read_text())
    after = json.loads((tmp / "shuffled" / "metrics.json").read_text())
    for model in ("head",):
        kept = before[model]["operating_points"]["classes"]["b"]["threshold"]
        assert after[model]["operating_points"]["classes"]["b"]["threshold"] == kept
    assert before["baselines"]["logreg"]["operating_points"]["classes"]["b"]["threshold"] == \
        after["baselines"]["logreg"]["operating_points"]["classes"]["b"]["threshold"]
    assert _labels_by_image(tmp / "run" / "predictions.csv") != _labels_by_image(tmp / "shuffled" / "predictions.csv")


def test_best_epoch_and_seed_repeats_are_recorded(fitted):
    tmp, _, result = fitted
    run = tmp / "run"
    config = json.loads((run / "config.json").read_text())
    with open(run / "history.csv") as fh:
        losses = [float(r["val_loss"]) for r in csv.DictReader(fh)]
    assert config["training"]["restore_best"] == "val_loss"
    assert config["training"]["best_epoch"] == int(np.argmin(losses)) + 1
    repeats = json.loads((run / "metrics.json").read_text())["repeats"]
    assert repeats["seeds"] == [0, 1]
    accuracy = repeats["head"]["accuracy"]
    assert accuracy["values"][0] == result.test["accuracy"]
    assert accuracy["min"] <= accuracy["mean"] <= accuracy["max"]
    assert result.repeats == repeats


def test_external_evaluation_applies_the_runs_thresholds(fitted, tmp_path):
    tmp, _, _ = fitted
    other = write_tiny_dataset(tmp_path / "other", per_split=(("test", 5),), seed=7)
    from xrayfeat.runs.loaded import load_run

    run = load_run(tmp / "run")
    run.evaluate(other / "test", name="other", cache_dir=tmp / "cache")
    inside = run.metrics["head"]["operating_points"]["classes"]["b"]["threshold"]
    outside = json.loads((tmp / "run" / "external" / "other" / "metrics.json").read_text())
    assert outside["head"]["operating_points"]["classes"]["b"]["threshold"] == inside
    assert "calibration" in outside["head"]


@pytest.mark.parametrize("positive, classes, fragment", [
    ("c", ("a", "b"), "is not a class"),
    ("a", ("a", "b", "c"), "applies to binary tasks"),
])
def test_positive_class_is_checked_before_any_work(tmp_path, positive, classes, fragment):
    data = write_tiny_dataset(tmp_path / "data", classes=classes, per_split=(("train", 2), ("test", 1)))
    with pytest.raises(OptionError, match=fragment):
        fit_head(discover(data), FeatureOptions("vgg16", weights="none", image_size=32),
                 HeadOptions(positive=positive), RunOptions(cache_dir=tmp_path / "cache"), out=tmp_path / "run")
    assert not (tmp_path / "cache").exists()


def test_inspect_warns_when_train_is_imbalanced(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", per_split=(("train", 2), ("test", 2)))
    write_tiny_dataset(tmp_path / "more", classes=("b",), per_split=(("train", 6),), seed=5)
    for path in (tmp_path / "more" / "train" / "b").iterdir():
        path.rename(data / "train" / "b" / f"extra_{path.name}")
    done = run_cli("inspect", str(data), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["imbalance"].startswith("train is imbalanced: b has 8 images, 4.0×")
    assert "warning: train is imbalanced" in done.stderr
