"""Display in a notebook: short reprs, HTML that escapes names and puts warnings first, figures inline, tables as DataFrames."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrayfeat.data.datasets import Dataset, Item
from xrayfeat.options.constraints import OptionError
from xrayfeat import display as notebook
from xrayfeat.display import png_size
from xrayfeat.runs import tables
from xrayfeat.runs.explanation import ExplainResult
from xrayfeat.runs.external import EvaluateResult
from xrayfeat.runs.prediction import PredictResult
from xrayfeat.runs.record import RunWarning

HOSTILE = "<script>alert(1)</script>"
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _dataset(n: int, classes, *, root="/data/xrays") -> Dataset:
    """``n`` synthetic items spread over ``classes`` and two splits; no file is read."""
    items = tuple(Item(path=Path(root) / f"{i}.png", relpath=f"{i}.png", label=classes[i % len(classes)],
                       split="train" if i % 4 else "test", patient_id=f"p{i // 2}", source=None,
                       sha256=f"{i:064x}", nbytes=100) for i in range(n))
    return Dataset(root=Path(root), items=items, classes=tuple(sorted(classes)), layout="manifest")


def _unescaped(html: str) -> None:
    """No hostile markup got through: the script tag and the bold tag appear only escaped."""
    assert "<script" not in html and "<b>" not in html


# --------------------------------------------------------------------------- Dataset


def test_a_large_dataset_has_a_short_repr_and_a_bounded_table():
    classes = [f"class-{k:03d}-" + "x" * 60 for k in range(50)]
    ds = _dataset(10_000, classes)
    text = repr(ds)
    assert len(text) < 700 and "\n" not in text
    assert "images=10000" in text and "+42 more" in text and "'train': 7500, 'test': 2500" in text
    html = ds._repr_html_()
    assert len(html) < 40_000
    assert f"… {50 - notebook.MAX_ROWS} more rows" in html
    assert re.search(r"<td[^>]*>total</td><td[^>]*>7500</td><td[^>]*>2500</td><td[^>]*>10000</td>", html)
    # the dataclass is as it was: its fields, and equality by value
    assert [f.name for f in dataclasses.fields(Dataset)] == ["root", "items", "classes", "layout", "skipped", "multilabel",
                                                            "manifest"]
    assert ds == _dataset(10_000, classes) and ds != _dataset(9_999, classes)


def test_a_dataset_shows_its_counts_per_split_and_class_with_hostile_names_escaped():
    ds = _dataset(12, ["<b>x</b>", HOSTILE, "normal"], root="/data/<i>&")
    html = ds._repr_html_()
    _unescaped(html)
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "/data/&lt;i&gt;&amp;" in html
    by_class = {c: [sum(1 for i in ds.items if i.label == c and i.split == s) for s in ("train", "test")]
                for c in ds.classes}
    for name, (train, test) in by_class.items():
        cell = re.escape(notebook.html_text(name))
        assert re.search(rf"<td[^>]*>{cell}</td><td[^>]*>{train}</td><td[^>]*>{test}</td><td[^>]*>{train + test}</td>",
                         html), name
    assert "6 patients" in html
    assert repr(ds).startswith("Dataset('/data/<i>&', layout='manifest', images=12")


def test_the_display_modules_import_nothing_heavy():
    # (a Dataset's display, in xrayfeat.data.summary, loads what discovery has loaded already: Pillow, for image headers)
    code = ("import sys, xrayfeat.display, xrayfeat.runs.display, xrayfeat.runs.tables, xrayfeat.runs.loaded; "
            "print(sorted(m for m in ('pandas', 'matplotlib', 'PIL', 'keras', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- Run


def test_a_run_shows_warnings_first_then_its_summary_then_thumbnails(shared_run):
    run = shared_run.run
    text = repr(run)
    assert len(text) < 300 and f"warnings={len(run.warnings)}" in text and "backbone='vgg16'" in text
    html = run._repr_html_()
    warnings_at, table_at = html.index("xrayfeat-warnings"), html.index("<table")
    assert warnings_at < table_at
    for w in run.warnings:
        assert notebook.html_text(w.message) in html[warnings_at:table_at]
    recorded = json.loads((shared_run.path / "metrics.json").read_text())
    for name, m in [("head", recorded["head"]), *recorded["baselines"].items()]:
        low, high = m["ci"]["accuracy"]
        row = (rf"<td[^>]*>{name}</td><td[^>]*>{m['accuracy']:.3f} \[{low:.3f}, {high:.3f}\]</td>"
               rf"<td[^>]*>{m['balanced_accuracy']:.3f}</td><td[^>]*>{m['roc_auc']:.3f}</td><td[^>]*>{m['loss']:.3f}</td>"
               rf"<td[^>]*>{m['n']}</td>")
        assert re.search(row, html), name
    thumbs = IMG.findall(html)
    assert len(thumbs) == len(run.figure_names(external=False)) == 5
    assert html.index("<img") > html.rindex("</table>")
    for data in thumbs:
        size = png_size(base64.b64decode(data))
        assert size and max(size) <= notebook.THUMB_PIXELS


def test_a_run_escapes_its_path_and_warnings(shared_run, tmp_path):
    import xrayfeat as xf

    run = xf.load_run(shared_run.copy(tmp_path / "<i>r&d</i>"))
    run.record.warnings = [RunWarning("other", HOSTILE), *run.record.warnings]  # in memory only
    html = run._repr_html_()
    _unescaped(html)
    assert "&lt;i&gt;r&amp;d&lt;/i&gt;" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.index("alert(1)") < html.index("<table")


def test_a_changed_figure_is_shown_as_its_error_not_raised(shared_run, tmp_path):
    import xrayfeat as xf

    path = shared_run.copy(tmp_path / "run")
    (path / "roc.png").write_bytes(b"not the figure")
    run = xf.load_run(path)
    html = run._repr_html_()
    assert "sha256 differs" in html and len(IMG.findall(html)) == 4
    with pytest.raises(xf.XrayfeatError, match="sha256 differs"):
        run.show("roc")


def test_show_gives_the_recorded_figure_and_names_the_known_ones(shared_run):
    run = shared_run.run
    for name in run.figure_names():
        shown = run.show(name)
        data = (shared_run.path / f"{name}.png").read_bytes()
        assert shown.data == data and shown._repr_png_() == data
        assert Path(shown) == shared_run.path / f"{name}.png"
    with pytest.raises(OptionError) as caught:
        run.show("curve")
    message = str(caught.value)
    assert "'curves', 'confusion', 'roc', 'calibration', 'gradcam'" in message and "Got 'curve'" in message


def test_show_inside_ipython_displays_the_figure_inline(shared_run, monkeypatch):
    shown = []
    display = types.ModuleType("IPython.display")
    display.Image = lambda data, format: ("Image", data, format)
    display.display = shown.append
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: object()  # a running shell
    ipython.display = display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    assert shared_run.run.show("confusion") is None
    assert shown == [("Image", (shared_run.path / "confusion.png").read_bytes(), "png")]


# --------------------------------------------------------------------------- tables


def test_metrics_keep_their_structure_and_say_where_baselines_are(shared_run):
    run = shared_run.run
    recorded = json.loads((shared_run.path / "metrics.json").read_text())
    assert run.metrics == recorded and isinstance(run.metrics, dict)
    assert list(run.metrics) == ["head", "baselines", "positive", "threshold_rule", "decision"]
    with pytest.raises(KeyError, match=re.escape("run.metrics['baselines']['logreg']")):
        run.metrics["logreg"]


def test_each_table_equals_the_record(shared_run):
    run = shared_run.run
    recorded = json.loads((shared_run.path / "metrics.json").read_text())
    models = {"head": recorded["head"], **recorded["baselines"]}

    summary = run.summary()
    assert list(summary.index) == list(models)
    for name, m in models.items():
        assert summary.loc[name, "accuracy"] == m["accuracy"] and summary.loc[name, "n"] == m["n"]
        assert [summary.loc[name, "accuracy_low"], summary.loc[name, "accuracy_high"]] == m["ci"]["accuracy"]
        assert summary.loc[name, "roc_auc"] == m["roc_auc"] and summary.loc[name, "loss"] == m["loss"]

        per_class = run.per_class(name)
        assert list(per_class.index) == run.classes
        for c in run.classes:
            assert per_class.loc[c, ["precision", "recall", "f1", "support"]].tolist() == [
                m["per_class"][c][k] for k in ("precision", "recall", "f1", "support")]
            assert per_class.loc[c, "roc_auc"] == m["roc_auc_per_class"][c]

        points = run.operating_points(name)
        assert points.attrs == {"rule": m["operating_points"]["rule"], "chosen_on": m["operating_points"]["chosen_on"]}
        for c, entry in m["operating_points"]["classes"].items():
            at = points.loc[(c, "threshold")]
            assert at["threshold"] == entry["threshold"]
            for rate in tables.RATES:
                for decision, key in (("argmax", "argmax"), ("threshold", "at_threshold")):
                    value, ci = entry[key][rate], entry[key]["ci"].get(rate)
                    got = points.loc[(c, decision)]
                    assert (np.isnan(got[rate]) if value is None else got[rate] == value), (name, c, decision, rate)
                    if ci:
                        assert [got[f"{rate}_low"], got[f"{rate}_high"]] == ci
            assert points.loc[(c, "argmax"), ["tp", "fp", "tn", "fn"]].tolist() == [
                entry["argmax"][k] for k in ("tp", "fp", "tn", "fn")]

    calibration = run.calibration()
    for name, m in models.items():
        assert calibration.loc[name].tolist() == [m["calibration"][k] for k in ("brier", "ece", "n_bins")]
    assert run.per_source().empty and list(run.per_source().columns) == [
        "n", "accuracy", "accuracy_low", "accuracy_high", "balanced_accuracy"]
    assert run.external().empty
    with pytest.raises(OptionError, match=r"'model' parameter of Run.per_class must be one of \{'head', 'logreg', 'pixels'\}"):
        run.per_class("svm")


def test_per_source_reads_the_recorded_sources():
    m = {"by_source": {"hosp_a": {"n": 10, "accuracy": 0.9, "balanced_accuracy": 0.85, "ci_accuracy": [0.7, 1.0]},
                       "<b>x</b>": {"n": 4, "accuracy": 0.5, "balanced_accuracy": None, "ci_accuracy": None}}}
    table = tables.per_source_table(m)
    assert table.loc["hosp_a"].tolist() == [10, 0.9, 0.7, 1.0, 0.85]
    assert table.loc["<b>x</b>", "n"] == 4 and np.isnan(table.loc["<b>x</b>", "accuracy_low"])


# --------------------------------------------------------------------------- results of predict, evaluate, explain


@pytest.fixture(scope="module")
def used_run(shared_run, tmp_path_factory):
    """A copy of the shared run, evaluated, predicted and explained on its own test images (all cached)."""
    import xrayfeat as xf

    root = tmp_path_factory.mktemp("used")
    run = xf.load_run(shared_run.copy(root / "run"))
    test = shared_run.data / "test"
    evaluated = run.evaluate(test, name="again", cache_dir=shared_run.cache)
    predicted = run.predict(test, cache_dir=shared_run.cache)
    explained = run.explain(test, root / "explained", cache_dir=shared_run.cache)
    return xf.load_run(root / "run"), evaluated, predicted, explained


def test_an_evaluation_shows_its_warnings_first_and_its_figures(used_run):
    run, evaluated, _, _ = used_run
    text = repr(evaluated)
    assert len(text) < 300 and "name='again', n=6" in text and f"warnings={len(evaluated.warnings)}" in text
    html = evaluated._repr_html_()
    assert evaluated.warnings and html.index("xrayfeat-warnings") < html.index("<table")
    for w in evaluated.warnings:
        assert notebook.html_text(w.message) in html
    for model, m in evaluated.external.items():
        assert re.search(rf"<td[^>]*>{model}</td><td[^>]*>{evaluated.internal[model]['accuracy']:.3f} \[", html)
        assert f"{m['accuracy']:.3f} [{m['accuracy_ci'][0]:.3f}, {m['accuracy_ci'][1]:.3f}]" in html

    external = run.external()
    recorded = json.loads((run.path / "external" / "again" / "metrics.json").read_text())
    for model, m in {"head": recorded["head"], **recorded["baselines"]}.items():
        row = external.loc[("again", model)]
        assert row["accuracy"] == m["accuracy"] and row["n"] == m["n"] and row["excluded"] == 0
        assert [row["accuracy_low"], row["accuracy_high"]] == m["ci"]["accuracy"]
        assert row["internal_accuracy"] == run.summary().loc[model, "accuracy"]
    assert "External: <code>again</code>" in run._repr_html_()
    assert run.show("external/again/roc").data == (run.path / "external" / "again" / "roc.png").read_bytes()


def test_predictions_show_counts_per_class_and_the_first_rows(used_run):
    _, _, predicted, _ = used_run
    text = repr(predicted)
    assert text == "PredictResult(images=6, models=['head', 'logreg', 'pixels'], extracted=0, reused=6, out=None)"
    html = predicted._repr_html_()
    for model, counts in predicted.counts.items():
        assert re.search(rf"<td[^>]*>{model}</td>" + "".join(rf"<td[^>]*>{counts[c]}</td>" for c in counts), html)
    first = predicted.table.iloc[0]
    label = first["head:predicted"]
    assert f"{label} ({first[f'head:{label}']:.3f})" in html


def test_an_explanation_shows_its_overlays_as_thumbnails(used_run):
    _, _, _, explained = used_run
    assert repr(explained).startswith("ExplainResult(images=6, layer='vgg16:block5_pool', map_size=(1, 1)")
    html = explained._repr_html_()
    thumbs = IMG.findall(html)
    assert len(thumbs) == 6
    for data in thumbs:
        assert max(png_size(base64.b64decode(data))) <= notebook.THUMB_PIXELS // 2
    for row in explained.rows:
        assert f"{row['probability']:.3f}" in html


def test_results_escape_hostile_class_names_and_stay_short():
    classes = ["<b>x</b>", HOSTILE]
    table = pd.DataFrame({"path": [f"/in/{HOSTILE}{i}.png" for i in range(100)],
                          "head:predicted": [classes[i % 2] for i in range(100)],
                          f"head:{classes[0]}": np.full(100, 0.25), f"head:{classes[1]}": np.full(100, 0.75)})
    predicted = PredictResult(table=table, out=None, images=100, extracted=0, reused=100, models=["head"],
                              counts={"head": {classes[0]: 50, classes[1]: 50}})
    html = predicted._repr_html_()
    _unescaped(html)
    assert "&lt;b&gt;x&lt;/b&gt; (0.250)" in html and f"… {100 - notebook.MAX_ROWS} more rows" in html
    assert len(repr(predicted)) < 200

    brief = {"accuracy": 0.5, "accuracy_ci": [0.2, 0.8], "loss": 1.0, "balanced_accuracy": 0.5, "roc_auc": None, "n": 4}
    evaluated = EvaluateResult(run="r", name="b", folder="r/external/b", n=4, excluded=0, external={"head": brief},
                               internal={"head": brief}, warnings=[RunWarning("overlap", HOSTILE)])
    html = evaluated._repr_html_()
    _unescaped(html)
    assert "&lt;script&gt;" in html and "—" in html  # an AUC that is undefined is a dash

    rows = [{"path": f"/in/{i}.png", "predicted": classes[i % 2], "probability": 0.75, "explained": classes[1],
             "png": f"/nowhere/{HOSTILE}.png"} for i in range(40)]
    explained = ExplainResult(out="o", csv="o/explain.csv", images=40, extracted=0, reused=40, layer="vgg16:block5_pool",
                              map_size=(7, 7), target_class=HOSTILE, rows=rows)
    html = explained._repr_html_()
    _unescaped(html)
    assert html.count("No such file") == notebook.MAX_THUMBS and "… 10 more rows" in html
    assert len(repr(explained)) < 200
