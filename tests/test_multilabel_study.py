"""A multi-label study end to end, as a user runs it: phantoms with co-occurring findings, fit-head, then every command.

One module-scoped study (the multi-label phantoms: three findings, uncertain
labels, patient groups) is trained once and read by every test; tests that
write (evaluate, export) work on a copy of the run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

import xrayfeat as xf
from xrayfeat.data.phantoms import FINDINGS, write_phantoms

from conftest import run_cli_here

OPTIONS = dict(weights="none", image_size=32, epochs=2, baselines=("logreg", "pixels"), n_bootstrap=20,
               class_weight="balanced")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    manifest = write_phantoms(root / "data", task="multilabel", per_class=8, size=40, seed=1)
    run = xf.fit_head(manifest, "vgg16", cache_dir=root / "cache", out=root / "run", **OPTIONS)
    return {"root": root, "manifest": manifest, "run": run, "cache": root / "cache"}


def _table(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_run_is_multilabel_and_its_figures_are_recomputable_from_its_predictions(study):
    run = study["run"]
    assert run.record.multilabel and run.classes == list(FINDINGS) and run.task == "3finding"
    training = run.record.training  # the default head backend on a CPU: a jax child, the fused step, each finding balanced
    if importlib.util.find_spec("jax") is not None:
        fused = importlib.util.find_spec("numba") is not None
        assert training["backend"] == "jax" and training["process"] == "child process"
        assert training["loop"] == ("fused" if fused else "jax")
    assert training["multilabel"] is True and training["class_weight"] == "balanced"
    head = run.metrics["head"]
    assert head["task"] == "multilabel" and list(head["per_finding"]) == list(FINDINGS)
    rows = _table(run.path / "predictions.csv")
    assert {f"true:{f}" for f in FINDINGS} <= set(rows[0]) and {"group:sex", "group:age", "group:view"} <= set(rows[0])
    for finding in FINDINGS:
        truth = np.array([float(r[f"true:{finding}"]) if r[f"true:{finding}"] else np.nan for r in rows])
        proba = np.array([float(r[f"head:{finding}"]) for r in rows])
        counted = np.isin(truth, (0.0, 1.0))  # --uncertain ignore (the default): -1 and blank count nowhere
        entry = head["per_finding"][finding]
        assert entry["n"] == counted.sum() and entry["positives"] == (truth == 1).sum()
        if 0 < entry["positives"] < counted.sum():
            assert entry["roc_auc"] == pytest.approx(roc_auc_score(truth[counted], proba[counted]), abs=1e-5)
            assert entry["average_precision"] == pytest.approx(
                average_precision_score(truth[counted], proba[counted]), abs=1e-5)
    assert set(head["by_group"]) == {"age", "sex", "view"}
    sexes = head["by_group"]["sex"]
    assert sum(v["n"] for v in sexes["values"].values()) + sexes["unknown"] == len(rows)


def test_thresholds_are_chosen_per_finding_on_validation_and_decide_predict(study, tmp_path):
    run = study["run"]
    points = run.metrics["head"]["operating_points"]["classes"]
    assert set(points) == set(FINDINGS)
    test_images = sorted(p for p in (study["manifest"].parent / "test").glob("*.png"))
    result = run.predict(test_images, out=tmp_path / "pred.csv", progress=False)
    table = result.table
    for _, row in table.iterrows():
        called = {f for f in FINDINGS if row[f"head:{f}"] >= (points[f]["threshold"] if points[f]["threshold"]
                                                                     is not None else 0.5)}
        assert set(filter(None, str(row["head:predicted"]).split("|"))) == called
    assert set(result.counts["head"]) == set(FINDINGS)


def test_uncertain_policies_read_the_table_as_irvin_et_al():
    from xrayfeat.data.labels import targets

    values = np.array([[1, 0, -1, np.nan]], dtype=np.float32)
    y, mask = targets(values, "ignore")
    assert mask.tolist() == [[True, True, False, False]] and y[0, :2].tolist() == [1, 0]
    y, mask = targets(values, "zeros")
    assert mask.tolist() == [[True, True, True, False]] and y[0, 2] == 0
    y, mask = targets(values, "ones")
    assert mask.tolist() == [[True, True, True, False]] and y[0, 2] == 1


def test_evaluate_scores_another_site_per_finding_and_refuses_single_label_data(study, tmp_path):
    run = xf.load_run(shutil.copytree(study["run"].path, tmp_path / "run"))
    other = write_phantoms(tmp_path / "site2", task="multilabel", per_class=4, size=48, seed=9)
    result = run.evaluate(other, name="site2", cache_dir=study["cache"], progress=False)
    assert "macro_roc_auc" in result.external["head"]
    figures = xf.load_run(run.path).record.external_metrics("site2")
    assert figures["head"]["task"] == "multilabel"
    single = write_phantoms(tmp_path / "single", task="binary", per_class=4, size=48, seed=9)
    done = run_cli_here("evaluate", run.path, single.parent, "--cache-dir", study["cache"])
    assert done.returncode == 2 and "one label per image" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_report_shows_findings_groups_and_the_multilabel_comparison(study, tmp_path):
    done = run_cli_here("report", study["run"].path, "--out", tmp_path / "report", check=True)
    assert done.returncode == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Macro ROC-AUC [95% CI]" in md and "### Per finding (head, test)" in md
    assert "### By patient group (head, test)" in md and "confusion" not in md


def test_explain_maps_one_finding_and_features_give_the_multi_hot_matrix(study, tmp_path):
    image = sorted((study["manifest"].parent / "test").glob("*.png"))[0]
    result = study["run"].explain([image], tmp_path / "maps", target_class="consolidation", progress=False)
    assert result.rows[0]["explained"] == "consolidation"
    with np.load(result.rows[0]["npz"]) as saved:
        assert str(saved["explained"]) == "consolidation" and saved["probabilities"].shape == (3,)
    X, y, meta = xf.features(study["manifest"], "vgg16", weights="none", image_size=32, cache_dir=study["cache"])
    assert meta.attrs["multilabel"] and y.shape == (len(meta), 3) and set(np.unique(y[~np.isnan(y)])) <= {-1, 0, 1}
    assert "group:sex" in meta.columns


def test_export_gives_one_sigmoid_per_finding_matching_predict(study, tmp_path):
    keras = pytest.importorskip("keras")
    from xrayfeat.data.images import read_image

    run = study["run"]
    export = xf.export(run, tmp_path / "export")
    info = json.loads((tmp_path / "export" / "export.json").read_text())
    assert info["multilabel"] is True and info["output_shape"] == [None, 3]
    model = keras.saving.load_model(export.model, compile=False)
    image = sorted((study["manifest"].parent / "test").glob("*.png"))[0]
    exported = np.asarray(model(read_image(image, 32)[None]))
    predicted = run.predict([image], progress=False).table
    assert np.allclose(exported[0], [predicted[f"head:{f}"].iat[0] for f in FINDINGS], atol=1e-4)


def test_a_finding_column_with_an_unknown_value_is_refused_in_one_line(study, tmp_path):
    bad = tmp_path / "bad.csv"
    image = sorted((study["manifest"].parent / "test").glob("*.png"))[0]
    shutil.copy(image, tmp_path / "x.png")
    bad.write_text("path,split,Effusion\nx.png,train,2.0\n")
    done = run_cli_here("inspect", bad)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "'2.0'" in done.stderr and "bad.csv" in done.stderr


def test_a_multilabel_map_colours_by_the_one_positive_finding_else_several_or_none(study):
    from xrayfeat.data.datasets import discover
    from xrayfeat.runs.maps import NONE, SEVERAL, map_colours

    dataset = discover(study["manifest"])
    labels, names = map_colours(dataset)
    assert names == [*FINDINGS, SEVERAL, NONE]
    positive = dataset.targets == 1
    for k, row in zip(labels, positive):
        expected = int(np.argmax(row)) if row.sum() == 1 else (3 if row.sum() > 1 else 4)
        assert k == expected


def test_a_finding_without_training_positives_warns_and_a_task_without_any_is_refused(tmp_path):
    from xrayfeat.data.datasets import discover
    from xrayfeat.errors import DatasetError
    from xrayfeat.runs.fit import check_task, rare_findings_warning

    from PIL import Image

    for i in range(8):
        Image.new("L", (8, 8), i * 20).save(tmp_path / f"{i}.png")
    rows = [f"{i}.png,{'test' if i > 5 else 'train'},{i % 2},{int(i < 3)},0" for i in range(8)]
    (tmp_path / "m.csv").write_text("path,split,Effusion,Mass,Hernia\n" + "\n".join(rows) + "\n")
    dataset = discover(tmp_path / "m.csv")
    check_task(dataset)  # Effusion has both in train: the study runs
    train = [item for item in dataset.items if item.split == "train"]
    assert "Hernia (0 positive, 6 negative)" in rare_findings_warning(train, dataset.classes)
    assert "Effusion" not in rare_findings_warning(train, dataset.classes)
    with pytest.raises(DatasetError, match="no finding has 2 positive and 2 negative training images"):
        check_task(dataset.select_classes(["Hernia"]))


def test_validation_strata_follow_each_image_s_rarest_finding_and_fold_rare_ones_into_none():
    from xrayfeat.runs.fit import finding_strata

    y = np.array([[1, 0], [1, 1], [1, 0], [1, 0], [1, 0], [0, 1], [0, 0], [0, 0]], dtype=np.float32)
    mask = np.ones_like(y, dtype=bool)
    assert finding_strata(y, mask).tolist() == [0, 1, 0, 0, 0, 1, 2, 2]  # finding 1 is rarer: row 1 is its
    assert finding_strata(y, mask, min_members=3).tolist() == [0, 2, 0, 0, 0, 2, 2, 2]  # 2 members: too few for 3 folds
    groups = np.array(["a", "b", "c", "d", "e", "b", "f", "g"])
    assert finding_strata(y, mask, groups, min_members=2).tolist() == [0, 2, 0, 0, 0, 2, 2, 2]  # one patient: folded
    masked = mask.copy()
    masked[1, 1] = False  # an uncertain entry under ignore is not a positive
    assert finding_strata(y, masked)[1] == 0


def test_evaluate_leaves_out_findings_the_run_lacks_and_refuses_data_with_nothing_counted(study, tmp_path):
    run = xf.load_run(shutil.copytree(study["run"].path, tmp_path / "run"))
    test_images = sorted((study["manifest"].parent / "test").glob("*.png"))[:6]
    for i, image in enumerate(test_images):
        shutil.copy(image, tmp_path / f"{i}.png")
    rows = [f"{i}.png,{i % 2},{int(i < 3)},{i % 2}" for i in range(len(test_images))]
    (tmp_path / "other.csv").write_text("path,consolidation,Fracture,ground_glass\n" + "\n".join(rows) + "\n")
    done = run_cli_here("evaluate", run.path, tmp_path / "other.csv", "--name", "other", "--cache-dir", study["cache"])
    assert done.returncode == 0, done.stderr
    loaded = xf.load_run(run.path)  # the record stays readable: the unknown finding was not scored
    assert loaded.record.external["other"]["classes"] == ["ground_glass", "consolidation"]
    assert "Fracture" not in loaded.record.external_metrics("other")["head"]["per_finding"]
    (tmp_path / "unsure.csv").write_text("path,consolidation\n" + "\n".join(f"{i}.png,-1" for i in range(3)) + "\n")
    done = run_cli_here("evaluate", run.path, tmp_path / "unsure.csv", "--name", "unsure", "--cache-dir", study["cache"])
    assert done.returncode == 2 and "no entry of the run's findings counts" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_one_group_in_two_columns_and_control_characters_in_groups_are_refused(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "0.png")
    for name, text, words in (("two.csv", "path,Edema,Group:Sex,group: sex\n0.png,1,F,M\n", "two columns of the group"),
                              ("value.csv", "path,label,group:sex\n0.png,a,F\x1b[31m\n", "group value"),
                              ("name.csv", "path,label,group:s\x1bx\n0.png,a,F\n", "group name")):
        (tmp_path / name).write_text(text)
        done = run_cli_here("inspect", tmp_path / name)
        assert done.returncode == 2 and words in done.stderr and len(done.stderr.strip().splitlines()) == 1
