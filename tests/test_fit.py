"""fit-head end to end: run records, recomputable metrics, determinism, bad combinations.

The record and determinism tests read the session's shared run (tests/conftest.py). Elsewhere:
--train-tail in tests/test_fit_tail.py, learning the four-class phantoms in tests/test_fit_learns.py,
the real sample in tests/test_fit_real.py.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

import xrayfeat as xf

from conftest import run_cli_here, write_tiny_dataset
from xrayfeat.analysis import metrics
from xrayfeat.data.datasets import discover
from xrayfeat.errors import DatasetError
from xrayfeat.extraction.pipeline import FeatureOptions, RunOptions
from xrayfeat.runs.fit import HeadOptions, fit_head

QUICK = HeadOptions(epochs=3, steps_per_epoch=4, units=16, baselines=("logreg", "pixels"), n_bootstrap=200)


def quick_fit(data, tmp_path, name="run", features=None, head=QUICK, **kw):
    features = features or FeatureOptions("vgg16", weights="none", image_size=32)
    run = RunOptions(cache_dir=tmp_path / "cache", workers=0, batch_size=8)
    return fit_head(discover(data, **kw), features, head, run, out=tmp_path / name)


def read_predictions(path):
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return rows


def sentinel_messages(warnings) -> list[str]:
    """The messages of the pixels-sentinel warnings among RunWarnings or their JSON dicts."""
    as_dicts = [w if isinstance(w, dict) else {"kind": w.kind, "message": w.message} for w in warnings]
    return [w["message"] for w in as_dicts if w["kind"] == "shortcut"]


def has_sentinel(warnings) -> bool:
    return bool(sentinel_messages(warnings))


def sentinel_expected(head, baselines, margin=0.05) -> bool:
    """The rule, restated: pixels within ``margin`` of (or above) the best deep model warns."""
    if "pixels" not in baselines:
        return False
    deep = max([head["accuracy"]] + [m["accuracy"] for name, m in baselines.items() if name != "pixels"])
    return baselines["pixels"]["accuracy"] >= deep - margin


def test_run_record_holds_every_artifact_and_metrics_recompute(shared_run):
    """The session's run (tests/conftest.py: 3 epochs, logreg and pixels) and the FitResult fit_head returned for it."""
    result = shared_run.result
    run = shared_run.path
    assert shared_run.arguments[1].epochs == 3 and shared_run.arguments[1].baselines == ("logreg", "pixels")
    for name in ("config.json", "metrics.json", "history.csv", "predictions.csv", "head.keras",
                 "curves.png", "confusion.png", "roc.png", "baselines/logreg.joblib", "baselines/pixels.joblib"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    config = json.loads((run / "config.json").read_text())
    assert config["weights"]["random"] is True
    assert config["store"]["fingerprint"]["backbone"] == "vgg16"
    assert config["params"]["total"] > config["params"]["trainable"] > 0
    assert config["artifacts"]["baseline/logreg"]["sha256"]
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 3

    rows = read_predictions(run / "predictions.csv")
    assert len(rows) == 6
    y = np.array([int(r["y_true"]) for r in rows])
    saved = json.loads((run / "metrics.json").read_text())
    for model in ("head", "logreg", "pixels"):
        proba = np.array([[float(r[f"{model}:{c}"]) for c in ("a", "b")] for r in rows])
        again = metrics.score(y, proba, ["a", "b"], n_boot=0)
        recorded = saved["head"] if model == "head" else saved["baselines"][model]
        assert again["accuracy"] == recorded["accuracy"]
        assert again["loss"] == pytest.approx(recorded["loss"], rel=1e-5)
    assert result.test["accuracy"] == saved["head"]["accuracy"]
    assert any("RANDOM" in str(w) for w in result.warnings)
    assert has_sentinel(result.warnings) == sentinel_expected(result.test, result.baselines)


def test_same_seed_same_results_on_cpu(shared_run, tmp_path):
    """The session's run trained again with the options it was trained with, on its features: the same results
    (the shared run may even come from the other xdist worker's process)."""
    features, head, run = shared_run.arguments
    run = replace(run, cache_dir=shared_run.copy_cache(tmp_path / "cache"))
    a = shared_run.result
    dataset = xf.discover(shared_run.data, cache_dir=run.cache_dir, on_error=run.on_error)  # as xf.fit_head does
    b = fit_head(dataset, features, head, run, out=tmp_path / "b")
    assert (shared_run.path / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()
    assert a.test == b.test


def test_patient_groups_keep_validation_apart(tmp_path):
    from xrayfeat.runs.fit import split_validation
    from xrayfeat.analysis.scoring import groups_of

    data = write_tiny_dataset(tmp_path / "d", per_split=(("train", 12), ("test", 2)))
    dataset = discover(data)
    train = [i for i in dataset.items if i.split == "train"]
    # two images per patient
    from dataclasses import replace

    train = [replace(item, patient_id=f"{item.label}-{k // 2}") for k, item in enumerate(train)]
    y = np.array([dataset.classes.index(i.label) for i in train])
    fit_idx, val_idx = split_validation(train, y, 0.25, seed=0)
    groups = groups_of(train)
    assert not set(groups[fit_idx]) & set(groups[val_idx])
    assert set(y[val_idx]) == {0, 1}


def test_single_class_dataset_is_refused(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", classes=("only",))
    with pytest.raises(DatasetError, match="only one class"):
        quick_fit(data, tmp_path)


def test_test_class_absent_from_train_is_refused(tmp_path):
    data = write_tiny_dataset(tmp_path / "d", per_split=(("train", 4), ("test", 2)))
    extra = data / "test" / "c"
    extra.mkdir()
    (data / "test" / "a" / "a_test_0.png").rename(extra / "c0.png")
    with pytest.raises(DatasetError, match=r"test has classes absent from train \(c\)"):
        quick_fit(data, tmp_path)


def test_cli_json_and_bad_combination(tmp_path, shared_run):
    # the session's tiny dataset, its features in a cache of this test's own: the command starts no TensorFlow
    args = ["fit-head", shared_run.data, "-b", "vgg16", "--weights", "none", "--image-size", "32", "--epochs", "2",
            "--steps-per-epoch", "2", "--units", "8", "--baselines", "logreg", "--n-bootstrap", "50",
            "--cache-dir", shared_run.copy_cache(tmp_path / "cache")]
    proc = run_cli_here(*args, "--out", tmp_path / "cli", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) >= {"run", "test", "baselines"} and set(data["baselines"]) == {"logreg"}
    assert 0 <= data["test"]["accuracy"] <= 1
    bad = run_cli_here(*args, "--train-tail", "--out", tmp_path / "bad")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("xrayfeat: error: --train-tail needs")
    again = run_cli_here(*args, "--out", tmp_path / "cli")
    assert again.returncode == 2 and "not empty" in again.stderr


def test_few_patients_still_split_or_say_why(tmp_path):
    from dataclasses import replace

    from xrayfeat.runs.fit import split_validation

    dataset = discover(write_tiny_dataset(tmp_path / "d", per_split=(("train", 3), ("test", 1))))
    train = [i for i in dataset.items if i.split == "train"]
    y = np.array([dataset.classes.index(i.label) for i in train])
    with_patients = [replace(item, patient_id=f"{item.label}-{k}") for k, item in enumerate(train)]
    fit_idx, val_idx = split_validation(with_patients, y, 0.2, seed=0)  # 3 patients per class: 3 folds
    assert len(val_idx) == 2 and set(y[val_idx]) == {0, 1}
    one_patient = [replace(item, patient_id=item.label) for item in train]
    with pytest.raises(DatasetError, match="fewer than 2 training patients"):
        split_validation(one_patient, y, 0.2, seed=0)


# the pixels sentinel, on the warning function fit-head calls, with accuracies chosen by hand
SENTINEL_CASES = [
    # (head accuracy, {baseline: accuracy}, warns)
    (0.80, {"logreg": 0.78, "pixels": 0.80}, True),   # pixels as good as the best deep model
    (0.80, {"logreg": 0.70, "pixels": 0.90}, True),   # pixels above it
    (0.80, {"logreg": 0.70, "pixels": 0.77}, True),   # within the 0.05 margin
    (0.50, {"svm": 0.90, "pixels": 0.88}, True),      # the best deep model is a baseline, not the head
    (0.80, {"logreg": 0.78, "pixels": 0.60}, False),  # pixels clearly worse
    (0.95, {"logreg": 0.60, "pixels": 0.70}, False),  # beats logreg, but the head is clearly ahead
    (0.50, {"svm": 0.95, "pixels": 0.70}, False),     # beats the head, but a deep baseline is clearly ahead
    (0.60, {"logreg": 0.60}, False),                  # no sentinel run, no sentinel warning
]


@pytest.mark.parametrize("head,baselines,warns", SENTINEL_CASES,
                         ids=[f"head{h}-" + "-".join(f"{n}{a}" for n, a in b.items()) for h, b, _ in SENTINEL_CASES])
def test_pixels_sentinel_warns_only_when_pixels_keep_up(head, baselines, warns):
    from types import SimpleNamespace

    from xrayfeat.runs.fit import study_warnings

    train = [SimpleNamespace(sha256=f"train{i}", patient_id=None, label="ab"[i % 2]) for i in range(400)]
    test = [SimpleNamespace(sha256=f"test{i}", patient_id=None, label="ab"[i % 2]) for i in range(400)]
    head_metrics = {"accuracy": head}
    baseline_metrics = {name: {"accuracy": acc} for name, acc in baselines.items()}
    found = study_warnings(train, test, head_metrics, baseline_metrics, random_weights=False)
    sentinel = sentinel_messages(found)
    assert len(sentinel) == int(warns), found
    assert warns == sentinel_expected(head_metrics, baseline_metrics)  # the table agrees with the rule it states
    if warns:
        assert f"pixels scores {baselines['pixels']:.3g}" in sentinel[0] and "32x32 grayscale" in sentinel[0]


@pytest.mark.parametrize("per_class, warns", [((200, 200), False), ((200, 100), False), ((201, 100), True),
                                              ((400, 100), True)])
def test_imbalance_warns_past_twice_the_smallest_class(per_class, warns):
    from types import SimpleNamespace

    from xrayfeat.runs.fit import study_warnings

    train = [SimpleNamespace(sha256=f"{c}{i}", patient_id=None, label=c)
             for c, n in zip("ab", per_class) for i in range(n)]
    test = [SimpleNamespace(sha256=f"test{i}", patient_id=None, label="ab"[i % 2]) for i in range(400)]
    found = [w for w in study_warnings(train, test, {"accuracy": 0.8}, {}, random_weights=False) if w.kind == "imbalance"]
    assert len(found) == int(warns), found
    if warns:
        assert found[0].message.startswith(f"train is imbalanced: a has {per_class[0]} images, "
                                           f"{per_class[0] / per_class[1]:.1f}× the 100 of b")
