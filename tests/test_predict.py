"""predict and evaluate: a trained run used on new images and on another site's labelled data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

import xrayfeat as xf
from tests.conftest import run_cli, run_cli_here, write_tiny_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(shared_run):
    """The session's tiny binary run (VGG16, random weights, 32 px, 3 epochs, n_bootstrap 50) with two baselines
    (logreg, pixels), its data and its shared folder (tests/conftest.py)."""
    assert shared_run.arguments[1].baselines == ("logreg", "pixels") and shared_run.arguments[1].n_bootstrap == 50
    return shared_run.run, shared_run.data, shared_run.root


def fresh_copy(trained, tmp_path):
    """A copy of the run folder (tests that change a run must not change the shared one)."""
    run, data, root = trained
    shutil.copytree(run.path, tmp_path / "run")
    return xf.load_run(tmp_path / "run"), data, root


def test_predict_on_the_runs_test_images_equals_its_predictions_csv(trained, tmp_path):
    run, data, root = trained
    out = tmp_path / "pred.csv"
    proc = run_cli_here("predict", run.path, data / "test", "--out", out, "--decision", "argmax", "--json", check=True)
    summary = json.loads(proc.stdout)
    assert summary["images"] == 6 and summary["extracted"] == 0 and summary["reused"] == 6
    assert summary["models"] == ["head", "logreg", "pixels"]
    table = pd.read_csv(out).set_index("sha256")
    internal = run.predictions()
    for model in summary["models"]:
        columns = [f"{model}:{c}" for c in run.classes]
        np.testing.assert_allclose(table.loc[internal.sha256, columns].to_numpy(), internal[columns].to_numpy(), atol=1e-5)
        predicted = table.loc[internal.sha256, f"{model}:predicted"].to_list()
        assert predicted == [run.classes[k] for k in internal[columns].to_numpy().argmax(axis=1)]


def test_predict_unlabelled_images_extracts_once(trained, tmp_path):
    run, data, root = trained
    new = write_tiny_dataset(tmp_path / "new", seed=7, per_split=(("x", 2),))  # x/a/*.png, x/b/*.png: 4 new images
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted(new.rglob("*.png"))):
        shutil.copy(path, flat / f"img{i}.png")
    (tmp_path / "list.csv").write_text("path\nflat/img0.png\nflat/img1.png\n")
    first = run.predict([flat, tmp_path / "list.csv"], cache_dir=tmp_path / "cache")
    assert first.images == 4 and first.extracted == 4  # the CSV's two images are already in the list
    again = run.predict(str(flat), cache_dir=tmp_path / "cache")
    assert again.extracted == 0 and again.reused == 4
    pd.testing.assert_frame_equal(first.table, again.table)


@pytest.mark.parametrize("case", ["empty folder", "not an image", "not a run", "damaged head"])
def test_predict_bad_input_is_one_line_exit_2_and_writes_nothing(trained, tmp_path, case):
    run, data, root = trained
    target, inputs = run.path, [data / "test"]
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        inputs = [tmp_path / "empty"]
    elif case == "not an image":
        (tmp_path / "notes.txt").write_text("hello")
        inputs = [tmp_path / "notes.txt"]
    elif case == "not a run":
        target = data
    else:
        copy, _, _ = fresh_copy(trained, tmp_path)
        with open(copy.path / "head.keras", "ab") as fh:
            fh.write(b"x")
        target = copy.path
    out = tmp_path / "pred.csv"
    proc = run_cli("predict", target, *inputs, "--out", out)  # a process of its own: stderr holds nothing else
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xrayfeat: error: "), proc.stderr
    assert not out.exists()


def test_predict_refuses_features_it_cannot_reproduce(trained, tmp_path):
    copy, data, root = fresh_copy(trained, tmp_path)
    record = json.loads((copy.path / "config.json").read_text())
    record["store"]["fingerprint"]["keras"] = "2.0.0"
    (copy.path / "config.json").write_text(json.dumps(record))
    proc = run_cli_here("predict", copy.path, data / "test", "--out", tmp_path / "p.csv")
    assert proc.returncode == 2
    assert "cannot reproduce the run's features (keras: run '2.0.0'" in proc.stderr


def test_evaluate_on_the_runs_own_test_folder_reproduces_its_metrics(trained, tmp_path):
    run, data, root = trained
    copy, _, _ = fresh_copy(trained, tmp_path)
    proc = run_cli_here("evaluate", copy.path, data / "test", "--name", "self", "--json", check=True)
    result = json.loads(proc.stdout)
    assert result["n"] == 6 and result["excluded"] == 0
    external = json.loads((copy.path / "external" / "self" / "metrics.json").read_text())
    internal = run.metrics
    for model, m in [("head", internal["head"]), *internal["baselines"].items()]:
        ext = external["head"] if model == "head" else external["baselines"][model]
        for key in ("accuracy", "balanced_accuracy", "roc_auc", "confusion", "ci"):
            assert ext[key] == m[key], (model, key)
        assert ext["loss"] == pytest.approx(m["loss"], abs=1e-5)
    reloaded = xf.load_run(copy.path)
    assert reloaded.record.external["self"]["n"] == 6
    assert reloaded.record.verified("external/self/metrics").is_file()


def test_evaluate_leaves_out_training_images_and_warns_on_a_missing_class(trained, tmp_path):
    copy, data, root = fresh_copy(trained, tmp_path)
    mixed = tmp_path / "site_b"
    (mixed / "b").mkdir(parents=True)
    for path in sorted((data / "train" / "b").glob("*.png"))[:2] + sorted((data / "test" / "b").glob("*.png")):
        shutil.copy(path, mixed / "b" / path.name)
    result = copy.evaluate(mixed)
    assert result.name == "site_b" and result.excluded == 2 and result.n == 3
    kinds = {w.kind for w in result.warnings}
    assert {"overlap", "missing_class"} <= kinds


def test_evaluate_refuses_a_class_the_run_does_not_know(trained, tmp_path):
    copy, data, root = fresh_copy(trained, tmp_path)
    other = write_tiny_dataset(tmp_path / "other", classes=("a", "zebra"), per_split=(("test", 2),))
    proc = run_cli("evaluate", copy.path, other)
    assert proc.returncode == 2
    assert "zebra unknown to" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (copy.path / "external").exists()


def test_predicting_cached_images_imports_no_deep_learning_framework(trained):
    """The plain head runs in numpy: a warm predict, like a warm extract, never starts TensorFlow."""
    import subprocess
    import sys

    run, data, root = trained
    assert "head_arrays" in run.record.artifacts
    code = (f"import sys, xrayfeat as xf; r = xf.load_run({str(run.path)!r}).predict({str(data / 'test')!r}); "
            "assert r.extracted == 0; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
