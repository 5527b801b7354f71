"""fit-head --cv K: patient-grouped, stratified folds of the training images on cached features.

One module-scoped run (the session's shared data, annotated with patient ids: 3 patients of 2 images per class in
train; features from a copy of the shared run's cache) with --cv 3 --repeats 2 through the CLI; the tests read it.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict

import numpy as np
import pytest

from conftest import run_cli_here
from xrayfeat.analysis import metrics
from xrayfeat.runs import crossval

K, REPEATS = 3, 2


def _annotate(data, per_patient: int | None = None):
    """A manifest.csv giving every image a patient: ``per_patient`` training images each (default: 2 for the first
    patient of each class, 1 for the other 4), one per test image."""
    rows = [["path", "patient_id"]]
    for split in ("train", "test"):
        for cls_dir in sorted((data / split).iterdir()):
            for k, image in enumerate(sorted(cls_dir.iterdir())):
                if split == "test":
                    number = k
                else:
                    number = k // per_patient if per_patient else max(0, k - 1)
                patient = f"{split}-{cls_dir.name}-{number}"
                rows.append([image.relative_to(data).as_posix(), patient])
    with open(data / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def _table(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cv_run(shared_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    data = shutil.copytree(shared_run.data, root / "data")
    _annotate(data)
    cache = shared_run.copy_cache(root / "cache")
    proc = run_cli_here("fit-head", data, "-b", "vgg16", "--weights", "none", "--image-size", "32", "--epochs", "2",
                        "--steps-per-epoch", "3", "--units", "16", "--baselines", "logreg", "--n-bootstrap", "20",
                        "--cv", K, "--repeats", REPEATS, "--cache-dir", cache, "--out", root / "run", "--json",
                        check=True)
    return root / "run", json.loads(proc.stdout), proc.stderr


def test_every_training_image_is_out_of_fold_once_per_repeat_and_patients_stay_in_one_fold(cv_run):
    run, result, _ = cv_run
    splits = _table(run / "splits.csv")
    training = {r["sha256"] for r in splits if r["split"] in ("train", "val")}
    test = {r["sha256"] for r in splits if r["split"] == "test"}
    oof = _table(run / "predictions-oof.csv")
    assert list(oof[0])[6:8] == ["fold", "repeat"] and list(oof[0])[8:] == ["head:a", "head:b", "logreg:a", "logreg:b"]
    for repeat in map(str, range(1, REPEATS + 1)):
        rows = [r for r in oof if r["repeat"] == repeat]
        assert sorted(r["sha256"] for r in rows) == sorted(training)  # each training image exactly once
        assert {r["fold"] for r in rows} == {str(f) for f in range(1, K + 1)}
        folds_of = defaultdict(set)
        for r in rows:
            folds_of[r["patient_id"]].add(r["fold"])
        assert len(folds_of) == 10 and all(len(f) == 1 for f in folds_of.values())  # no patient spans two folds
        for fold in {r["fold"] for r in rows}:  # stratified: both classes in every fold
            assert {r["label"] for r in rows if r["fold"] == fold} == {"a", "b"}
    assert not test & {r["sha256"] for r in oof}  # the test split never appears out of fold


def test_per_fold_figures_recompute_from_the_oof_table_and_summarise(cv_run):
    run, result, stderr = cv_run
    cv = json.loads((run / "metrics.json").read_text())["cv"]
    assert result["cv"] == cv and cv["k"] == K and cv["seeds"] == [0, 1] and cv["grouped_by"] == "patient"
    assert [(f["repeat"], f["fold"]) for f in cv["folds"]] == [(r, f) for r in (1, 2) for f in (1, 2, 3)]
    for r in (1, 2):
        folds = [f for f in cv["folds"] if f["repeat"] == r]
        assert sum(f["n_out"] for f in folds) == 12 and sum(f["n_patients_out"] for f in folds) == 10
        assert all(f["n_fit"] + f["n_val"] + f["n_out"] == 12 for f in folds)
    oof = _table(run / "predictions-oof.csv")
    for model in ("head", "logreg"):
        figures = cv["models"][model]
        for j, fold in enumerate(cv["folds"]):
            rows = [r for r in oof if (int(r["repeat"]), int(r["fold"])) == (fold["repeat"], fold["fold"])]
            proba = np.array([[float(r[f"{model}:a"]), float(r[f"{model}:b"])] for r in rows])
            y = np.array([int(r["y_true"]) for r in rows])
            assert figures["accuracy"]["values"][j] == pytest.approx(float((proba.argmax(1) == y).mean()), abs=1e-5)
            assert figures["roc_auc"]["values"][j] == pytest.approx(
                metrics.score(y, proba, ["a", "b"], n_boot=0)["roc_auc"], abs=1e-5)
        values = figures["accuracy"]["values"]
        assert figures["accuracy"]["mean"] == pytest.approx(np.mean(values))
        assert figures["accuracy"]["sd"] == pytest.approx(np.std(values, ddof=1))
    assert "cross-validation on the 12 training images (3 folds × 2 repeats" in stderr


def test_cv_reads_the_cache_only_and_the_run_loads(cv_run):
    import xrayfeat as xf

    run, result, _ = cv_run
    assert result["timings"]["extracted_images"] == 0  # every feature came from the cache
    loaded = xf.load_run(run)  # config.json names predictions-oof.csv with its sha256; metrics.json's cv is checked
    assert "predictions_oof" in loaded.record.artifacts
    table = loaded.cv()  # one row per (model, repeat, fold), then each model's mean and SD
    assert len(table) == 2 * (K * REPEATS + 2)
    means = table[table.index.get_level_values("fold") == "mean"]
    assert list(means.index.get_level_values("model")) == ["head", "logreg"]
    assert means["accuracy"].iloc[0] == loaded.metrics["cv"]["models"]["head"]["accuracy"]["mean"]


def test_report_shows_the_cross_validation(cv_run, tmp_path):
    run, _, _ = cv_run
    run_cli_here("report", run, "--out", tmp_path / "report", check=True)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Cross-validation" in text and "3 folds × 2 repeats" in text


@pytest.mark.parametrize("k, per_patient, message", [
    (5, 3, "--cv 5 needs at least 5 training patients, but the training images come from 4 patients; use --cv 4 or "
           "fewer"),
    (2, 2, "--cv 2 needs a patient of every class in each fold and 3 more in the other folds (for their validation "
           "split and the baselines), but class a has training images from only 3 patients; add training images of a"),
])
def test_too_many_folds_are_refused_in_one_line(shared_run, tmp_path, k, per_patient, message):
    data = shutil.copytree(shared_run.data, tmp_path / "data")
    _annotate(data, per_patient)
    proc = run_cli_here("fit-head", data, "-b", "vgg16", "--weights", "none", "--image-size", "32", "--cv", k,
                        "--cache-dir", tmp_path / "cache", "--out", tmp_path / "run")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob("cache/**/*.h5"))  # refused before extracting


def test_each_repeat_draws_its_own_folds_and_one_seed_always_the_same():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 2)
    strata = rng.integers(0, 2, 40).repeat(2)
    first, again, other = (crossval.assign_folds(strata, groups, 4, seed) for seed in (0, 0, 1))
    assert (first == again).all() and (first != other).any()
    for fold in (first, other):
        assert all(len(set(fold[groups == g])) == 1 for g in range(40))
        assert sorted(np.bincount(fold)) and set(fold) == {0, 1, 2, 3}
