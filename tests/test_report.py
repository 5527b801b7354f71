"""xrayfeat.report.writer: tables per task, warnings grouped by kind, a self-contained and escaped HTML file.

Run folders are faked in tmp_path with the files fit-head writes: a
:class:`~xrayfeat.runs.record.RunRecord` written by :func:`~xrayfeat.runs.record.write_record`,
metrics.json, history.csv and PNG figures recorded as artifacts with their
sha256 (and one folder in the first, schema-less layout); no model is trained.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayfeat.runs import folder
from xrayfeat.runs import record as runs
from xrayfeat.errors import XrayfeatError
from xrayfeat.fileio import atomic_write, write_json
from xrayfeat.report.writer import write_report
from xrayfeat.runs.record import WARNING_KINDS, RunWarning
from xrayfeat.errors import RunError

RANDOM = RunWarning("random_weights",
                    "RANDOM backbone weights (--weights none): results say nothing about ImageNet transfer")
TINY = RunWarning("small_test", "test set has 20 images: accuracy ±0.2 at 95%; treat differences below that as noise")
# One message per kind, as fit-head words them.
BY_KIND = {
    "random_weights": RANDOM.message,
    "leakage": "3 images in test are byte-identical to images in train: test accuracy is optimistic",
    "shortcut": "a logistic regression on 32x32 grayscale pixels scores 0.8, above the deep model (0.7): the data",
    "source_gap": "accuracy differs by source beyond the intervals: a 0.90 [0.80, 0.95] (n=40) vs b 0.50 (n=40)",
    "group_gap": "sex: accuracy 0.62 [0.55, 0.69] for F against 0.81 [0.76, 0.86] for M; the gap exceeds both intervals",
    "small_test": TINY.message,
    "overlap": "3 of 120 images of /data/hosp_b are byte-identical to the run's training or validation images",
    "missing_class": "covid absent from /data/hosp_b: per-class figures for it and the macro ROC-AUC are undefined",
    "not_external": "all 6 images of /data/hosp_b are the run's own test images: this is not an external evaluation",
    "shared_source": "the external images come from site_a, a source the run trained and was tested on",
    "device": "trained on the CPU although a GPU was requested: timings are not comparable",
    "imbalance": "train has 48 pneumonia and 16 normal images (3.0:1): consider --class-weight balanced",
    "subsample": "baselines logreg fitted on a stratified random sample of 4 of 9 training images",
    "replay": "replaying runs/r1 with other versions than it recorded: keras 3.0.0 in the run, 3.15.1 here",
    "other": "something a study noticed",
}


def _metrics(classes, accuracy, n=20, by_source=None):
    k = len(classes)
    per = n // k
    m = {
        "n": n, "accuracy": accuracy, "loss": 0.5, "balanced_accuracy": accuracy - 0.01,
        "per_class": {c: {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": per} for c in classes},
        "roc_auc": 0.9, "roc_auc_per_class": {c: 0.9 for c in classes},
        "confusion": [[per if i == j else 0 for j in range(k)] for i in range(k)],
        "ci": {"accuracy": [accuracy - 0.1, min(1.0, accuracy + 0.1)], "balanced_accuracy": [0.6, 0.9],
               "roc_auc": [0.8, 0.95]},
        "ci_method": "bootstrap over images, 1000 resamples", "ci_level": 0.95,
    }
    if by_source:
        m["by_source"] = by_source
    return m


def make_run(root: Path, name: str, *, classes=("normal", "pneumonia"), backbone="vgg16", weights="imagenet",
             baselines=("logreg", "pixels"), warnings=(), accuracy=0.8, by_source=None, figures=True,
             embed=False, layer="block5_pool", data="/data/cxr") -> Path:
    """A run folder as fit-head writes it, small but shaped like the real ones: artifacts first, the record last."""
    run = root / name
    run.mkdir(parents=True)
    classes = list(classes)
    random = weights == "none"
    identity = "none:seed=0" if random else f"{weights}:md5=0123abcd"
    fingerprint = {"backbone": backbone, "backend": "tensorflow", "image_size": 64, "keras": "3.15.1",
                   "layer": layer, "precision": "float32", "preprocess": "caffe", "store_dtype": "float16",
                   "weights": identity}
    write_json(run / "metrics.json", {"head": _metrics(classes, accuracy, by_source=by_source),
                                      "baselines": {b: _metrics(classes, 0.7) for b in baselines}})
    atomic_write(run / "history.csv", "epoch,accuracy,loss,val_accuracy,val_loss,seconds\n"
                                      "1,0.5,1.2,0.55,1.1,9.5\n2,0.7,0.8,0.65,0.9,0.4\n3,0.8,0.6,0.7,0.8,0.3\n")
    artifacts = [runs.artifact(run, "metrics", "metrics.json"), runs.artifact(run, "history", "history.csv")]
    if figures:
        rng = np.random.default_rng(0)
        for fname, size in (("curves.png", (60, 24)), ("confusion.png", (30, 30)), ("roc.png", (30, 30))):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(run / fname)
            artifacts.append(runs.artifact(run, fname[:-len(".png")], fname))
    record = runs.RunRecord(
        xrayfeat="0.1.0", created="2026-11-26T07:31:04Z", data=data,
        task=folder.task_name(classes), classes=classes,
        counts={"train": 64, "val": 16, "test": 20, "skipped": 0}, validation="20% of train, stratified",
        features={"backbone": backbone, "weights": weights, "image_size": 64, "layer": None,
                  "precision": "auto", "store_dtype": "float16", "seed": 0},
        head={"epochs": 3, "batch_size": 10, "steps_per_epoch": 10, "validation_steps": 2, "lr": 0.001,
              "units": 256, "dropout": 0.3, "l2": 0.001, "train_tail": False, "val_fraction": 0.2,
              "baselines": list(baselines), "seed": 0, "n_boot": 1000, "n_jobs": None},
        run={"device": "auto", "batch_size": 32, "cache_dir": "cache"},
        store={"path": f"cache/{backbone}-{layer}-64", "fingerprint": fingerprint,
               "fingerprint_id": "74d7cb09ce8676a1"},
        weights={"kind": weights, "identity": identity, "path": None, "random": random},
        params={"total": 527620, "trainable": 526596, "non_trainable": 1024},
        training={"backend": "tensorflow", "device": "cpu"},
        timings={"extraction_seconds": 32.6, "extracted_images": 100, "head_seconds": 13.5,
                 "seconds_per_epoch": 4.49, "baselines_seconds": 20.0, "total_seconds": 70.0},
        baselines={b: {"name": b, "cv_accuracy": 0.7, "cv_accuracy_std": 0.05} for b in baselines},
        versions={"python": "3.11.7", "keras": "3.15.1", "keras_backend": "tensorflow"},
        artifacts=dict(artifacts),
        warnings=list(warnings),
    )
    if embed:  # drawn later by `xrayfeat embed --from-run`: in the folder, not in the record
        rng = np.random.default_rng(1)
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(run / "embed-tsne.png")
        np.savez(run / "embed-tsne.png.coords.npz", xy=np.zeros((4, 2)))
    runs.write_record(record, run)
    return run


def add_external(run: Path, name: str, *, head: dict, baselines: dict | None = None, n=120, excluded=3,
                 classes=None, warnings=(), figures=("confusion", "roc")) -> Path:
    """An external result recorded as ``xrayfeat evaluate`` (external._write) records it: files, artifacts, record."""
    record = runs.read_record(run)
    folder = run / "external" / name
    folder.mkdir(parents=True)
    write_json(folder / "metrics.json", {"head": head, "baselines": baselines or {}})
    atomic_write(folder / "predictions.csv", "path,sha256,patient_id,source,label,y_true,head:normal,head:pneumonia\n"
                                             "a.png,00,,,normal,0,0.6,0.4\n")
    parts = [("metrics", "metrics.json"), ("predictions", "predictions.csv")]
    rng = np.random.default_rng(2)
    for part in figures:
        Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(folder / f"{part}.png")
        parts.append((part, f"{part}.png"))
    for part, file in parts:
        key, artifact = runs.artifact(run, f"external/{name}/{part}", f"external/{name}/{file}")
        record.artifacts[key] = artifact
    record.external[name] = {
        "data": f"/data/{name}", "created": "2026-12-01T10:00:00Z", "n": n, "excluded": excluded,
        "classes": list(record.classes if classes is None else classes),
        "warnings": [{"kind": w.kind, "message": w.message} for w in warnings],
    }
    runs.write_record(record, run)
    return folder


def record_as_written(run: Path) -> runs.RunRecord:
    """The run's config.json as a record, its artifacts unchecked (for a fixture that changes one, then records it)."""
    return runs.RunRecord.from_json(json.loads((run / "config.json").read_text()), run)


def rewrite_metrics(run: Path, change) -> None:
    """Let ``change`` edit the run's metrics.json, then record the file's new sha256 as fit-head would have."""
    metrics = json.loads((run / "metrics.json").read_text())
    change(metrics)
    write_json(run / "metrics.json", metrics)
    record = record_as_written(run)  # read_record would refuse the metrics until their sha256 is recorded
    record.artifacts.update([runs.artifact(run, "metrics", "metrics.json")])
    runs.write_record(record, run)


def point(sensitivity, specificity, ppv, npv, f1, counts, ci=0.1):
    """One operating point as metrics.operating_points writes it, each interval ``ci`` either side (None: none)."""
    rates = {"sensitivity": sensitivity, "specificity": specificity, "ppv": ppv, "npv": npv, "f1": f1}
    return {**rates, **dict(zip(("tp", "fp", "tn", "fn"), counts)),
            "ci": {k: None if ci is None or v is None else [round(v - ci, 3), round(min(1.0, v + ci), 3)]
                   for k, v in rates.items()}}


ARGMAX = point(0.7, 0.9, 0.875, 0.75, 0.778, (7, 1, 9, 3))
AT_THRESHOLD = point(0.9, 0.6, 0.692, 0.857, 0.783, (9, 4, 6, 1))


def operating_points(classes, threshold=0.312, rule="youden", argmax=ARGMAX, at=AT_THRESHOLD):
    return {"rule": rule, "chosen_on": "validation",
            "classes": {c: {"threshold": threshold, "note": None, "argmax": argmax, "at_threshold": at}
                        for c in classes}}


def calibration(brier, ece):
    curve = [{"lo": k / 10, "hi": (k + 1) / 10, "n": 0, "confidence": None, "accuracy": None} for k in range(10)]
    return {"brier": brier, "ece": ece, "n_bins": 10, "curve": curve}


def spread(values):
    """A ``repeats`` entry: mean, SD (ddof 1), min, max and the values."""
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)), "min": min(values),
            "max": max(values), "values": list(values)}


def add_figure(run: Path, name: str, size=(40, 20)) -> None:
    """A PNG ``<name>.png`` recorded as artifact ``name`` (calibration, gradcam)."""
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(run / f"{name}.png")
    record = runs.read_record(run)
    record.artifacts.update([runs.artifact(run, name, f"{name}.png")])
    runs.write_record(record, run)


def enrich(run: Path, *, positive="pneumonia", accuracy_seeds=None) -> Path:
    """What fit-head adds since issue 13: operating points and calibration per model, the positive class and
    threshold rule, the calibration figure and, given the head's accuracy per seed, ``repeats``."""
    def change(metrics):
        classes = [positive] if positive else list(metrics["head"]["per_class"])
        metrics["head"]["operating_points"] = operating_points(classes)
        metrics["head"]["calibration"] = calibration(0.142, 0.061)
        for m in metrics["baselines"].values():
            m["operating_points"] = operating_points(classes, threshold=0.5, at=ARGMAX)
            m["calibration"] = calibration(0.2, 0.1)
        metrics.update(positive=positive, threshold_rule="youden")
        if accuracy_seeds:
            seeds = list(range(len(accuracy_seeds)))
            metrics["repeats"] = {"seeds": seeds, "head": {
                "accuracy": spread(accuracy_seeds), "balanced_accuracy": spread([a - 0.01 for a in accuracy_seeds]),
                "roc_auc": spread([0.9] * len(seeds))}}
    rewrite_metrics(run, change)
    add_figure(run, "calibration", (30, 30))
    return run


def make_legacy_run(root: Path, name: str, **kwargs) -> Path:
    """A run in the first config.json layout: no schema, warnings as strings, files.head/files.baselines."""
    run = make_run(root, name, **kwargs)
    config = runs.read_record(run).to_json()
    del config["schema"]
    config.pop("artifacts")
    config["warnings"] = [w["message"] for w in config["warnings"]]
    config["files"] = {"head": {"file": "head.keras", "sha256": "0" * 64}, "baselines": {}}
    (run / "config.json").write_text(json.dumps(config, indent=2))
    return run


class _Refs(HTMLParser):
    """Every tag and its src/href, plus url(...) inside style."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.style += data


def _parse(path) -> _Refs:
    parser = _Refs()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    return parser


def _tables_md(md: str) -> list[list[str]]:
    """Markdown tables as lists of lines (header first)."""
    tables, current = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


@pytest.fixture
def two_tasks(tmp_path):
    root = tmp_path / "runs"
    a = make_run(root, "bin-vgg", baselines=("logreg",), warnings=[TINY])
    b = make_run(root, "bin-rand", weights="none", baselines=("svm", "pixels"), warnings=[RANDOM, TINY], embed=True)
    c = make_run(root, "four-inc", classes=("covid", "normal", "bac", "vir"), backbone="inception_v3",
                 baselines=(), layer="mixed10")
    return [a, b, c]


def test_returns_paths_and_counts(two_tasks, tmp_path):
    out = tmp_path / "nested" / "report"  # created when missing
    result = write_report(two_tasks, out)
    assert result.as_json() == {"markdown": str(out / "report.md"), "html": str(out / "report.html"), "runs": 3, "tables": 2}
    assert Path(result["markdown"]).is_file() and Path(result["html"]).is_file()


def test_two_tasks_two_tables_with_union_of_baselines(two_tasks, tmp_path):
    result = write_report(two_tasks, tmp_path / "out")
    md = Path(result["markdown"]).read_text()
    compare = [t for t in _tables_md(md) if t[0].startswith("| Run |")]
    assert len(compare) == 2
    binary, four = compare
    assert "Task binary: normal, pneumonia (2 runs)" in md
    assert "Task 4class: covid, normal, bac, vir (1 run)" in md
    header = binary[0]
    # union of the two runs' baselines, the pixels sentinel last
    assert header.index("logreg acc.") < header.index("svm acc.") < header.index("pixels acc. (sentinel)")
    rows = binary[2:]
    assert len(rows) == 2
    vgg = next(r for r in rows if "bin-vgg" in r)
    cells = [c.strip() for c in vgg.strip("|").split(" | ")]
    assert cells[-3:] == ["0.700", "—", "—"]  # logreg only
    assert "acc." not in four[0].split("ROC-AUC")[1]  # no baseline columns for a run without baselines
    assert "inception_v3" in four[2] and "mixed10" in four[2]
    assert "21.8M frozen params" in four[2] and "14.7M frozen params" in vgg  # each backbone's size, as Keras counts it
    # the accuracy with its interval
    assert "0.800 [0.700, 0.900]" in vgg


def test_random_flag(two_tasks, tmp_path):
    result = write_report(two_tasks, tmp_path / "out")
    md = Path(result["markdown"]).read_text()
    compare = [t for t in _tables_md(md) if t[0].startswith("| Run |")][0]
    rand = next(r for r in compare if "bin-rand" in r)
    vgg = next(r for r in compare if "bin-vgg" in r)
    assert "**RANDOM**" in rand and "RANDOM" not in vgg and "imagenet" in vgg
    page = Path(result["html"]).read_text()
    assert re.search(r'<span class="flag">RANDOM</span>', page)


def _warnings_section(md: str) -> str:
    return md.split("## Warnings\n", 1)[1].split("\n## ", 1)[0]


def _labels(section: str) -> list[str]:
    return re.findall(r"^- \*\*([^*]+):\*\*", section, flags=re.M)


def test_random_flag_from_record_even_without_warning(tmp_path):
    run = make_run(tmp_path, "r", weights="none", warnings=[])
    result = write_report([run], tmp_path / "out")
    section = _warnings_section(Path(result["markdown"]).read_text())
    assert f"- **Random weights:** {RANDOM.message}" in section


def test_warnings_collected_deduplicated_and_attributed(two_tasks, tmp_path):
    result = write_report(two_tasks, tmp_path / "out")
    md = Path(result["markdown"]).read_text()
    section = _warnings_section(md)
    items = [line for line in section.splitlines() if line.startswith("- ")]
    assert len(items) == 2  # TINY raised by two runs appears once
    assert items[0].startswith("- **Random weights:**")  # most serious first
    tiny = next(i for i in items if TINY.message in i)
    assert tiny.startswith("- **Small test set:**")
    assert "[bin-vgg](#run-bin-vgg)" in tiny and "[bin-rand](#run-bin-rand)" in tiny
    assert "four-inc" not in section
    assert "2 distinct warnings" in md
    # each run section lists its own warnings; a run without any says so
    four = md.split("## Run four-inc", 1)[1]
    assert "### Warnings\n\nNone." in four


def test_every_kind_is_sorted_and_headed_by_its_recorded_kind(tmp_path):
    warnings = [RunWarning(kind, text) for kind, text in reversed(BY_KIND.items())]
    warnings.append(RunWarning("device", "patients in both train and test: 2"))  # the kind decides, not the words
    run = make_run(tmp_path, "r", weights="none", warnings=warnings)
    md = Path(write_report([run], tmp_path / "out")["markdown"]).read_text()
    expected = [heading for kind, heading in WARNING_KINDS.items() for _ in range(2 if kind == "device" else 1)]
    assert _labels(_warnings_section(md)) == expected
    assert _labels(md.split("## Run r", 1)[1]) == expected  # the run's own list too
    assert "- **Device:** patients in both train and test: 2" in md


def test_warnings_of_two_runs_grouped_by_kind(tmp_path):
    gap = RunWarning("source_gap", BY_KIND["source_gap"])
    leak = RunWarning("leakage", BY_KIND["leakage"])
    a = make_run(tmp_path, "a", warnings=[TINY, gap])
    b = make_run(tmp_path, "b", warnings=[TINY, leak])
    md = Path(write_report([a, b], tmp_path / "out")["markdown"]).read_text()
    section = _warnings_section(md)
    assert _labels(section) == [WARNING_KINDS[k] for k in ("leakage", "source_gap", "small_test")]
    items = [line for line in section.splitlines() if line.startswith("- ")]
    assert items[0].endswith("— run: [b](#run-b)")
    assert items[1].endswith("— run: [a](#run-a)")
    assert items[2].endswith("— runs: [a](#run-a), [b](#run-b)")


def test_legacy_record_still_reports(tmp_path):
    """A config.json of the first layout (no schema, warnings as plain strings): its warnings go under Other."""
    run = make_legacy_run(tmp_path, "old", weights="none", warnings=[RANDOM, TINY])
    assert "schema" not in json.loads((run / "config.json").read_text())
    result = write_report([run], tmp_path / "out")
    md = Path(result["markdown"]).read_text()
    section = _warnings_section(md)
    # the random-weights warning comes from the record's weights, once; the rest has no recorded kind
    assert _labels(section) == ["Random weights", "Other"]
    assert f"- **Other:** {TINY.message}" in section
    assert section.count(RANDOM.message) == 1
    assert "**RANDOM**" in md and "0.800 [0.700, 0.900]" in md
    assert "best validation accuracy 0.700 at epoch 3" in md
    assert len(re.findall(r"!\[[^\]]*\]\(figures/", md)) == 3  # figures the old layout did not record


def test_a_run_written_before_checksums_says_in_the_report_that_it_was_not_verified(tmp_path):
    import html

    old = make_legacy_run(tmp_path, "old <b>&")
    new = make_run(tmp_path, "new")
    assert not runs.read_record(old).verified_artifacts and runs.read_record(new).verified_artifacts
    result = write_report([old, new], tmp_path / "out")
    md, page = Path(result["markdown"]).read_text(), Path(result["html"]).read_text()
    unchecked = ", ".join(runs.read_record(old).unverified_artifacts)
    assert unchecked.startswith("metrics, history")  # the tables the first layout wrote without a sha256
    assert md.count(runs.UNVERIFIED_NOTE) == 1
    assert f"**{runs.UNVERIFIED_NOTE}** ({unchecked}: read as they are)" in md
    assert md.index("## Run old") < md.index(runs.UNVERIFIED_NOTE) < md.index("## Run new")
    assert page.count(runs.UNVERIFIED_NOTE) == 1
    assert f"<strong>{html.escape(runs.UNVERIFIED_NOTE)}</strong> ({html.escape(unchecked)}: read as they are)" in page
    assert "old <b>&" not in page  # the run's name is escaped like everything else


def test_html_is_self_contained(two_tasks, tmp_path):
    result = write_report(two_tasks, tmp_path / "out")
    refs = _parse(result["html"])
    imgs = [attrs for tag, attrs in refs.tags if tag == "img"]
    assert len(imgs) == 3 + 4 + 3  # three runs' figures, one embedding
    for attrs in imgs:
        assert attrs["src"].startswith("data:image/png;base64,")
    for tag, attrs in refs.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:", "#")), (tag, key, value[:60])
        assert tag not in ("link", "script", "iframe", "object", "embed")
    assert "url(" not in refs.style and "@import" not in refs.style
    assert not re.search(r"(https?|file):", Path(result["html"]).read_text().split("<main>")[0])
    # internal links point at ids that exist
    ids = {attrs["id"] for _, attrs in refs.tags if "id" in attrs}
    for _, attrs in refs.tags:
        if attrs.get("href", "").startswith("#"):
            assert attrs["href"][1:] in ids


def test_markdown_image_links_exist(two_tasks, tmp_path):
    out = tmp_path / "out"
    md = Path(write_report(two_tasks, out)["markdown"]).read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 10
    for link in links:
        assert not Path(link).is_absolute() and link.startswith("figures/")
        assert (out / link).is_file()
    assert "figures/bin-rand-embed-tsne.png" in links
    assert not list((out / "figures").glob("*.npz"))


def test_text_from_records_is_escaped(tmp_path):
    run = make_run(tmp_path, "r", classes=("<b>", "a&b"),
                   warnings=[RunWarning("other", '<script>alert("x")</script> in test')], by_source={
                       "<i>site</i>": {"n": 10, "accuracy": 0.8, "balanced_accuracy": 0.8, "ci_accuracy": [0.6, 0.9]}})
    enrich(run, positive=None)  # the class names in the operating points tables too

    def change(metrics):
        metrics["head"]["operating_points"]["rule"] = "<i>rule</i>"
        metrics["head"]["operating_points"]["classes"]["a&b"].update(threshold=None, note="<b>no</b> positives")

    rewrite_metrics(run, change)
    result = write_report([run], tmp_path / "out")
    page = Path(result["html"]).read_text()
    assert "(&lt;i&gt;rule&lt;/i&gt;)" in page and "&lt;b&gt;no&lt;/b&gt; positives" in page
    assert page.count("<td>&lt;b&gt;</td>") == 2 + 2 + 1  # the head's two rows, two baselines, per class
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert "a&amp;b" in page
    assert "&lt;script&gt;" in page and "<script" not in page
    assert "&lt;i&gt;site&lt;/i&gt;" in page and "<i>" not in page
    tags = {tag for tag, _ in _parse(result["html"]).tags}
    assert not tags & {"b", "i", "script"}
    md = Path(result["markdown"]).read_text()
    assert "<b>" not in md and "&lt;b>" in md


def test_by_source_table(tmp_path):
    src = {"hospA": {"n": 10, "accuracy": 0.9, "balanced_accuracy": 0.9, "ci_accuracy": [0.7, 1.0]},
           "hospB": {"n": 10, "accuracy": 0.5, "balanced_accuracy": 0.5, "ci_accuracy": [0.2, 0.8]}}
    run = make_run(tmp_path, "r", by_source=src)
    md = Path(write_report([run], tmp_path / "out")["markdown"]).read_text()
    assert "### By source" in md
    assert "| hospA | 10 | 0.900 [0.700, 1.000] | 0.900 |" in md
    other = make_run(tmp_path, "s")
    assert "By source" not in Path(write_report([other], tmp_path / "out2")["markdown"]).read_text()


def test_run_section_summarises_config(two_tasks, tmp_path):
    md = Path(write_report(two_tasks, tmp_path / "out")["markdown"]).read_text()
    run = md.split("## Run bin-vgg", 1)[1].split("\n## ", 1)[0]
    for expected in ("/data/cxr", "train 64 · val 16 · test 20", "20% of train, stratified", "epochs 3",
                     "batch 10", "steps/epoch 10", "| **Seed** | 0 |", "`74d7cb09ce8676a1`", "keras 3.15.1",
                     "### Per class (head)", "| normal | 0.800 | 0.700 | 0.750 | 0.900 | 10 |",
                     "best validation accuracy 0.700 at epoch 3"):
        assert expected in run, expected


def test_missing_figures_and_same_names(tmp_path):
    a = make_run(tmp_path / "x", "r1", figures=False)
    b = make_run(tmp_path / "y", "r1")
    result = write_report([a, b], tmp_path / "out")
    md = Path(result["markdown"]).read_text()
    assert result["runs"] == 2
    assert "## Run r1" in md and "## Run y-r1" in md
    assert "No figures in the run folder." in md
    assert (tmp_path / "out" / "figures" / "y-r1-curves.png").is_file()


def test_not_a_run_names_the_folder(tmp_path):
    good = make_run(tmp_path, "good")
    bad = tmp_path / "empty"
    bad.mkdir()
    with pytest.raises(XrayfeatError, match="empty: not a run folder") as info:
        write_report([good, bad], tmp_path / "out")
    assert "\n" not in str(info.value)
    with pytest.raises(XrayfeatError, match="missing: not a run folder"):
        write_report([tmp_path / "missing"], tmp_path / "out")
    with pytest.raises(XrayfeatError, match="config.json: not a run folder"):
        write_report([good / "config.json"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_damaged_record_and_no_runs(tmp_path):
    run = make_run(tmp_path, "r")
    (run / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="config.json: run record damaged: not valid JSON") as info:
        write_report([run], tmp_path / "out")
    assert "\n" not in str(info.value)
    with pytest.raises(XrayfeatError, match="no runs"):
        write_report([], tmp_path / "out")


@pytest.mark.parametrize("file", ["metrics.json", "history.csv", "curves.png"])
def test_tampered_artifact_is_one_line_run_error(tmp_path, file):
    run = make_run(tmp_path, "r")
    with open(run / file, "ab") as fh:
        fh.write(b" ")
    with pytest.raises(RunError, match="sha256 differs") as info:
        write_report([run], tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(run / file))
    assert not (tmp_path / "out" / "report.md").exists()


def test_runs_on_different_test_sets_are_noted(tmp_path):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", data="/data/other")
    md = Path(write_report([a, b], tmp_path / "out")["markdown"]).read_text()
    assert "tested on different data or test sets" in md
    md = Path(write_report([a], tmp_path / "out1")["markdown"]).read_text()
    assert "tested on different data" not in md


# --------------------------------------------------------------------------- external validation

OVERLAP = RunWarning("overlap", BY_KIND["overlap"])
MISSING = RunWarning("missing_class", BY_KIND["missing_class"])


def _external(accuracy, ci, *, classes=("normal", "pneumonia"), roc_auc=0.61, present=None, n=120):
    """External metrics as evaluate records them (with roc_auc_present), accuracy interval given."""
    m = _metrics(list(classes), accuracy, n=n)
    m["ci"]["accuracy"] = list(ci)
    m["roc_auc"] = roc_auc
    m["roc_auc_present"] = roc_auc if roc_auc is not None else present
    return m


def _block(md: str, start: str) -> str:
    """From the heading ``start`` to the next heading of the same or a higher level."""
    level = start.split(" ", 1)[0]
    rest = md.split(start + "\n", 1)[1]
    return re.split(rf"\n#{{1,{len(level)}}} ", rest, maxsplit=1)[0]


@pytest.fixture
def shifted(tmp_path):
    """bin-vgg (internal head 0.800, AUC 0.900) scored on hosp_b: head falls to chance, logreg holds."""
    run = make_run(tmp_path / "runs", "bin-vgg", warnings=[TINY])
    add_external(run, "hosp_b", head=_external(0.488, (0.41, 0.57)),
                 baselines={"logreg": _external(0.72, (0.63, 0.8), roc_auc=0.95),
                            "pixels": _external(0.5, (0.41, 0.59), roc_auc=0.5)},
                 warnings=[OVERLAP, TINY])
    return run


def test_internal_vs_external_rows_and_signs(shifted, tmp_path):
    md = Path(write_report([shifted], tmp_path / "out")["markdown"]).read_text()
    section = _block(md, "### Internal vs external")
    table = _tables_md(section)[0]
    assert table[0] == ("| Model | Internal acc. [95% CI] | hosp_b acc. [95% CI] | hosp_b Δ acc. | Internal ROC-AUC "
                        "| hosp_b ROC-AUC | hosp_b Δ AUC |")
    assert table[2:] == [
        "| head | 0.800 [0.700, 0.900] | 0.488 [0.410, 0.570] | −0.312 | 0.900 | 0.610 | −0.290 |",
        "| logreg | 0.700 [0.600, 0.800] | 0.720 [0.630, 0.800] | +0.020 | 0.900 | 0.950 | +0.050 |",
        "| pixels (sentinel) | 0.700 [0.600, 0.800] | 0.500 [0.410, 0.590] | −0.200 | 0.900 | 0.500 | −0.400 |",
    ]
    run = md.split("## Run bin-vgg", 1)[1]
    assert run.index("### Test results") < run.index("### Internal vs external") < run.index("### Per class (head)")
    assert ("Data `/data/hosp_b` · 120 images scored as test data · 3 left out as byte-identical to training or "
            "validation images · classes normal, pneumonia · evaluated 2026-12-01T10:00:00Z") in section


def test_external_overview_after_comparison(shifted, tmp_path):
    md = Path(write_report([shifted], tmp_path / "out")["markdown"]).read_text()
    assert md.index("## Comparison") < md.index("## External validation") < md.index("## Warnings")
    assert "- [External validation](#external)" in md
    assert "1 run in 1 task; 2 distinct warnings; 1 external evaluation. Generated" in md
    table = _tables_md(_block(md, "## External validation"))[0]
    assert table[0] == ("| Run | External data | n | Excluded | Head acc. internal → external | Δ acc. "
                        "| Head ROC-AUC internal → external | Δ AUC |")
    assert table[2:] == ["| [bin-vgg](#run-bin-vgg) | [hosp_b](#run-bin-vgg-external-hosp_b) | 120 | 3 "
                         "| 0.800 → 0.488 [0.410, 0.570] | −0.312 | 0.900 → 0.610 | −0.290 |"]


NOTE_CASES = [
    # internal head accuracy, external accuracy and interval, classes, the sentence (None: no note)
    (0.8, 0.488, (0.41, 0.57), 2,
     "Head accuracy on hosp_b is 0.488: its 95% interval [0.410, 0.570] includes chance (1/2 = 0.500) and it is "
     "0.312 below the internal 0.800; the internal result does not carry to hosp_b."),
    (0.6, 0.55, (0.45, 0.65), 2,
     "Head accuracy on hosp_b is 0.550: its 95% interval [0.450, 0.650] includes chance (1/2 = 0.500); "
     "the internal result does not carry to hosp_b."),
    (0.9, 0.75, (0.66, 0.83), 2,
     "Head accuracy on hosp_b is 0.750: it is 0.150 below the internal 0.900; the internal result does not carry "
     "to hosp_b."),
    (0.4, 0.3, (0.22, 0.38), 4,
     "Head accuracy on hosp_b is 0.300: its 95% interval [0.220, 0.380] includes chance (1/4 = 0.250); "
     "the internal result does not carry to hosp_b."),
    (0.8, 0.75, (0.66, 0.83), 2, None),
    (0.8, 0.7, (0.61, 0.79), 2, None),  # a drop of exactly 0.1 does not exceed it
    (0.6, 0.45, (0.26, 0.49), 4, "Head accuracy on hosp_b is 0.450: it is 0.150 below the internal 0.600; "
                                 "the internal result does not carry to hosp_b."),
]


@pytest.mark.parametrize("internal, accuracy, ci, k, note", NOTE_CASES)
def test_chance_or_drop_note(tmp_path, internal, accuracy, ci, k, note):
    classes = ("normal", "pneumonia", "covid", "tb")[:k]
    run = make_run(tmp_path, "r", classes=classes, accuracy=internal)
    add_external(run, "hosp_b", head=_external(accuracy, ci, classes=classes))
    md = Path(write_report([run], tmp_path / "out")["markdown"]).read_text()
    run_part = _block(md, "### Internal vs external")
    overview = _block(md, "## External validation")
    if note is None:
        assert "does not carry" not in md
    else:
        assert f"\n\n{note}\n\n" in run_part
        assert f"- [r](#run-r): {note}" in overview
        assert md.count("does not carry") == 2


def test_auc_over_present_classes_is_marked(tmp_path):
    run = make_run(tmp_path, "r", baselines=())
    add_external(run, "hosp_c", head=_external(0.75, (0.66, 0.83), roc_auc=None, present=0.64), classes=["normal"],
                 warnings=[MISSING])
    md = Path(write_report([run], tmp_path / "out")["markdown"]).read_text()
    section = _block(md, "### Internal vs external")
    assert ("| head | 0.800 [0.700, 0.900] | 0.750 [0.660, 0.830] | −0.050 | 0.900 | 0.640† | −0.260† |"
            in section)
    footnote = ("*† Mean one-vs-rest ROC-AUC over the classes present: the macro ROC-AUC is undefined when a class "
                "is absent (absent from hosp_c: pneumonia).*")
    assert footnote in section and footnote in _block(md, "## External validation")
    assert "| 0.900 → 0.640† | −0.260† |" in md
    assert "classes normal · absent: pneumonia" in section
    # no external AUC at all: a dash, not a number
    other = make_run(tmp_path, "s", baselines=())
    add_external(other, "hosp_c", head=_external(0.75, (0.66, 0.83), roc_auc=None, present=None))
    md = Path(write_report([other], tmp_path / "out2")["markdown"]).read_text()
    assert "| head | 0.800 [0.700, 0.900] | 0.750 [0.660, 0.830] | −0.050 | 0.900 | — | — |" in md
    assert "†" not in md


def test_external_warnings_grouped_by_kind_and_attributed(tmp_path):
    a = make_run(tmp_path, "a", warnings=[TINY])
    add_external(a, "hosp_b", head=_external(0.78, (0.7, 0.85)), warnings=[MISSING, OVERLAP, TINY])
    b = make_run(tmp_path, "b", warnings=[RunWarning("leakage", BY_KIND["leakage"])])
    md = Path(write_report([a, b], tmp_path / "out")["markdown"]).read_text()
    section = _warnings_section(md)
    assert _labels(section) == [WARNING_KINDS[k] for k in ("leakage", "small_test", "overlap", "missing_class")]
    items = [line for line in section.splitlines() if line.startswith("- ")]
    assert items[1] == (f"- **Small test set:** {TINY.message} — runs: [a](#run-a), "
                        f"[a (external: hosp_b)](#run-a-external-hosp_b)")
    assert items[2] == (f"- **External data overlaps training:** {OVERLAP.message} — "
                        f"run: [a (external: hosp_b)](#run-a-external-hosp_b)")
    assert items[3].endswith("— run: [a (external: hosp_b)](#run-a-external-hosp_b)")
    assert "4 distinct warnings" in md
    # under the external heading, most serious first; the run's own list keeps its own
    external = _block(md, "#### External: hosp_b")
    assert _labels(external) == [WARNING_KINDS[k] for k in ("small_test", "overlap", "missing_class")]
    assert _labels(_block(md, "## Run a").split("\n### Warnings\n", 1)[1]) == ["Small test set"]
    # every link points at an id of the page
    refs = _parse(Path(tmp_path / "out" / "report.html"))
    ids = {attrs["id"] for _, attrs in refs.tags if "id" in attrs}
    assert "run-a-external-hosp_b" in ids and "external" in ids
    for _, attrs in refs.tags:
        if attrs.get("href", "").startswith("#"):
            assert attrs["href"][1:] in ids


def test_external_figures_in_markdown_and_html(shifted, tmp_path):
    out = tmp_path / "out"
    result = write_report([shifted], out)
    md = Path(result["markdown"]).read_text()
    external = _block(md, "#### External: hosp_b")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", external)
    assert links == ["figures/bin-vgg-external-hosp_b-confusion.png", "figures/bin-vgg-external-hosp_b-roc.png"]
    for link, part in zip(links, ("confusion", "roc")):
        assert (out / link).read_bytes() == (shifted / "external" / "hosp_b" / f"{part}.png").read_bytes()
    assert "*confusion matrix (head, external: hosp_b)*" in external
    imgs = [attrs for tag, attrs in _parse(result["html"]).tags if tag == "img"]
    assert len(imgs) == 3 + 2
    assert all(attrs["src"].startswith("data:image/png;base64,") for attrs in imgs)
    assert 'alt="ROC curves (head, external: hosp_b)"' in Path(result["html"]).read_text()


@pytest.mark.parametrize("file", ["metrics.json", "confusion.png"])
def test_tampered_external_artifact_is_one_line_run_error(shifted, tmp_path, file):
    target = shifted / "external" / "hosp_b" / file
    with open(target, "ab") as fh:
        fh.write(b" ")
    with pytest.raises(RunError, match="sha256 differs") as info:
        write_report([shifted], tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(target))
    assert not (tmp_path / "out" / "report.md").exists()


def test_external_metrics_not_json_is_one_line_run_error(tmp_path):
    run = make_run(tmp_path, "r")
    add_external(run, "hosp_b", head=_external(0.7, (0.6, 0.8)))
    target = run / "external" / "hosp_b" / "metrics.json"
    target.write_text("{not json")
    record = record_as_written(run)
    record.artifacts.update([runs.artifact(run, "external/hosp_b/metrics", "external/hosp_b/metrics.json")])
    runs.write_record(record, run)
    with pytest.raises(RunError, match=r"metrics.json: run record damaged: not valid JSON .*re-run xrayfeat evaluate") as info:
        write_report([run], tmp_path / "out")
    assert "\n" not in str(info.value) and str(info.value).startswith(str(target))


def test_runs_without_external_results_are_unchanged(shifted, tmp_path):
    plain = make_run(tmp_path / "runs", "plain")
    md = Path(write_report([plain], tmp_path / "alone")["markdown"]).read_text()
    assert "External" not in md and "Internal vs external" not in md and "does not carry" not in md
    assert "\n- [Comparison](#comparison)\n- [Warnings](#warnings)\n- [Run plain](#run-plain)\n" in md
    assert "1 run in 1 task; 0 distinct warnings. Generated" in md
    both = Path(write_report([shifted, plain], tmp_path / "both")["markdown"]).read_text()
    own = both.split("## Run plain\n", 1)[1]
    assert own == md.split("## Run plain\n", 1)[1]  # its section is the same with another run's externals beside it


# --------------------------------------------------------------------------- operating points, calibration, seeds

EXTERNAL_AT = point(0.5, 0.7, 0.625, 0.583, 0.556, (30, 18, 42, 30))


def _shifted_points(run: Path) -> Path:
    """``run`` scored on hosp_b, where its validation threshold loses sensitivity (0.900 → 0.500)."""
    head = _external(0.488, (0.41, 0.57))
    head["operating_points"] = operating_points(["pneumonia"], at=EXTERNAL_AT)
    head["calibration"] = calibration(0.31, 0.22)
    add_external(run, "hosp_b", head=head, baselines={"logreg": _external(0.72, (0.63, 0.8))},
                 figures=("confusion", "roc", "calibration"))
    return run


def test_operating_points_on_test_and_external_data(tmp_path):
    run = _shifted_points(enrich(make_run(tmp_path, "r")))
    result = write_report([run], tmp_path / "out")
    md = Path(result["markdown"]).read_text()
    section = _block(md, "### Operating points")
    assert ("Thresholds chosen on the validation split by the rule youden, never on the test split, then applied "
            "unchanged to the test images. Positive class: pneumonia.") in section
    head, baselines = _tables_md(section)
    assert head[0] == "| Class | Decision | Sensitivity | Specificity | PPV | NPV | F1 | TP · FP · TN · FN |"
    assert head[2:] == [
        "| pneumonia | argmax | 0.700 [0.600, 0.800] | 0.900 [0.800, 1.000] | 0.875 [0.775, 0.975] "
        "| 0.750 [0.650, 0.850] | 0.778 [0.678, 0.878] | 7 · 1 · 9 · 3 |",
        "| pneumonia | P ≥ 0.312 (youden) | 0.900 [0.800, 1.000] | 0.600 [0.500, 0.700] | 0.692 [0.592, 0.792] "
        "| 0.857 [0.757, 0.957] | 0.783 [0.683, 0.883] | 9 · 4 · 6 · 1 |",
    ]
    assert baselines[2:] == [
        "| logreg | pneumonia | 0.500 | 0.700 → 0.700 | 0.900 → 0.900 | 0.875 → 0.875 | 0.750 → 0.750 "
        "| 0.778 → 0.778 |",
        "| pixels (sentinel) | pneumonia | 0.500 | 0.700 → 0.700 | 0.900 → 0.900 | 0.875 → 0.875 | 0.750 → 0.750 "
        "| 0.778 → 0.778 |",
    ]
    # on the external data, the same threshold: the head's rows, and no baseline that lacks operating points
    external = _block(md, "##### Operating points on hosp_b")
    assert "The run's thresholds, chosen on its own validation split, applied unchanged to hosp_b" in external
    (table,) = _tables_md(external)
    assert table[3] == ("| pneumonia | P ≥ 0.312 (youden) | 0.500 [0.400, 0.600] | 0.700 [0.600, 0.800] "
                        "| 0.625 [0.525, 0.725] | 0.583 [0.483, 0.683] | 0.556 [0.456, 0.656] | 30 · 18 · 42 · 30 |")
    run_part = md.split("## Run r", 1)[1]
    assert (run_part.index("### Test results") < run_part.index("### Operating points")
            < run_part.index("### Internal vs external") < run_part.index("##### Operating points on hosp_b"))
    # HTML: the baselines folded under their summary, the head's table open
    page = Path(result["html"]).read_text()
    folded = re.search(r"<details><summary>Baselines, each at its own validation threshold[^<]*</summary>(.*?)"
                       r"</details>", page, re.S)
    assert folded and "<td>logreg</td>" in folded.group(1) and "P ≥ 0.312" not in folded.group(1)
    assert page.count("<details>") == 1


def test_operating_point_without_threshold_and_one_vs_rest(tmp_path):
    classes = ("covid", "normal", "pneumonia")
    run = make_run(tmp_path, "r", classes=classes, baselines=())

    def change(metrics):
        points = operating_points(classes, threshold=0.41, rule="sens=0.95")
        points["classes"]["covid"].update(threshold=None, at_threshold=None,
                                          note="no images of 'covid' to choose the 'sens=0.95' threshold on")
        metrics["head"]["operating_points"] = points
        metrics.update(positive=None, threshold_rule="sens=0.95")

    rewrite_metrics(run, change)
    md = Path(write_report([run], tmp_path / "out")["markdown"]).read_text()
    section = _block(md, "### Operating points")
    assert "by the rule sens=0.95" in section and "Each class against the rest." in section
    (table,) = _tables_md(section)  # no baseline table when no baseline has operating points
    assert [row.split(" | ")[:2] for row in table[2:]] == [
        ["| covid", "argmax"], ["| covid", "no threshold (no images of 'covid' to choose the 'sens=0.95' threshold on)"],
        ["| normal", "argmax"], ["| normal", "P ≥ 0.410 (sens=0.95)"],
        ["| pneumonia", "argmax"], ["| pneumonia", "P ≥ 0.410 (sens=0.95)"]]
    assert table[3].endswith("| — | — | — | — | — | — |")
    assert "Baselines, each at its own validation threshold" not in md


def test_calibration_table_and_figures(tmp_path):
    run = _shifted_points(enrich(make_run(tmp_path, "r")))
    out = tmp_path / "out"
    result = write_report([run], out)
    md = Path(result["markdown"]).read_text()
    section = _block(md, "### Calibration")
    assert _tables_md(section)[0] == [
        "| Model | Brier | ECE | hosp_b Brier | hosp_b ECE |", "|---|---:|---:|---:|---:|",
        "| head | 0.142 | 0.061 | 0.310 | 0.220 |",
        "| logreg | 0.200 | 0.100 | — | — |",  # the external logreg has no calibration recorded
        "| pixels (sentinel) | 0.200 | 0.100 | — | — |",
    ]
    assert "over 10 equal-width confidence bins" in section
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "figures/r-calibration.png" in links and "figures/r-external-hosp_b-calibration.png" in links
    assert (out / "figures" / "r-calibration.png").read_bytes() == (run / "calibration.png").read_bytes()
    assert "*reliability diagram (one curve per model, external: hosp_b)*" in md
    assert 'alt="reliability diagram (test, one curve per model)"' in Path(result["html"]).read_text()


def test_tampered_calibration_figure_is_one_line_run_error(tmp_path):
    run = enrich(make_run(tmp_path, "r"))
    with open(run / "calibration.png", "ab") as fh:
        fh.write(b" ")
    with pytest.raises(RunError, match="calibration.png: sha256 differs"):
        write_report([run], tmp_path / "out")


def test_seed_spread_in_comparison_and_run_section(tmp_path):
    wide = enrich(make_run(tmp_path, "wide"), accuracy_seeds=[0.56, 0.66, 0.72, 0.8])  # 0.240 > the interval's 0.200
    narrow = enrich(make_run(tmp_path, "narrow"), accuracy_seeds=[0.78, 0.8, 0.8, 0.82])
    single = make_run(tmp_path, "single")
    md = Path(write_report([wide, narrow, single], tmp_path / "out")["markdown"]).read_text()
    compare = _tables_md(_block(md, "## Comparison"))[0]
    header = [c.strip() for c in compare[0].strip("|").split(" | ")]
    assert header.index("Accuracy [95% CI]") + 1 == header.index("Accuracy over seeds (mean ± SD)")
    column = header.index("Accuracy over seeds (mean ± SD)")
    cells = [[c.strip() for c in row.strip("|").split(" | ")][column] for row in compare[2:]]
    assert cells == ["0.685 ± 0.101 [0.560–0.800] (4 seeds)", "0.800 ± 0.016 [0.780–0.820] (4 seeds)", "—"]
    sentence = ("head accuracy over 4 seeds ranged from 0.560 to 0.800, a spread of 0.240 that the 95% bootstrap "
                "interval of one run [0.700, 0.900] (width 0.200) does not show")
    assert f"- [wide](#run-wide): {sentence}" in _block(md, "## Comparison")
    assert md.count("does not show") == 2  # the comparison and wide's own section; narrow fits inside its interval
    own = _block(md, "### Seed variance (head)")
    assert _tables_md(own)[0][2:] == ["| Accuracy | 0.685 | 0.101 | 0.560 | 0.800 | 4 |",
                                      "| Balanced accuracy | 0.675 | 0.101 | 0.550 | 0.790 | 4 |",
                                      "| ROC-AUC | 0.900 | 0.000 | 0.900 | 0.900 | 4 |"]
    assert "seeds 0, 1, 2, 3" in own and "H" + sentence[1:] in own
    assert "Seed variance" not in _block(md, "## Run single")
    alone = Path(write_report([single], tmp_path / "alone")["markdown"]).read_text()
    assert "over seeds" not in alone  # no column when no run has repeats


def test_gradcam_section_names_the_cut_layer(tmp_path):
    run = make_run(tmp_path, "r", layer="block4_pool")
    add_figure(run, "gradcam", (60, 60))
    result = write_report([run, make_run(tmp_path, "plain")], tmp_path / "out")
    md = Path(result["markdown"]).read_text()
    section = _block(md, "### Grad-CAM (head, test)")
    caption = ("Grad-CAM of the head on test images: per class, right and wrong predictions; map resolution is the "
               "cut layer's (block4_pool)")
    assert re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", section) == [(caption, "figures/r-gradcam.png")]
    assert "Grad-CAM" not in md.split("## Run plain", 1)[1]
    # the full page width although square: a grid of small images to be read
    assert re.search(r'<figure class="wide"><img src="data:image/png;base64,[^"]+" alt="'
                     + re.escape(caption.replace("'", "&#x27;")) + '"', Path(result["html"]).read_text())
    run_part = _block(md, "## Run r")
    assert run_part.index("### Figures") < run_part.index("### Grad-CAM") < run_part.index("### Warnings")


def test_runs_before_issue_13_have_none_of_its_sections(tmp_path):
    md = Path(write_report([make_run(tmp_path, "old")], tmp_path / "out")["markdown"]).read_text()
    for absent in ("Operating points", "Calibration", "Seed variance", "Grad-CAM", "over seeds", "reliability"):
        assert absent not in md, absent


def test_head_options_in_configuration(tmp_path):
    run = make_run(tmp_path, "r")
    record = runs.read_record(run)
    record.head.update(class_weight="balanced", restore_best="val_loss", repeats=4, threshold="sens=0.95",
                       positive="pneumonia")
    record.training.update(restore_best="val_loss", best_epoch=2)
    runs.write_record(record, run)
    md = Path(write_report([run], tmp_path / "out")["markdown"]).read_text()
    assert ("l2 0.001 · class weight balanced · restore best val_loss · repeats 4 · threshold sens=0.95 · "
            "positive class pneumonia |") in md
    assert "best validation accuracy 0.700 at epoch 3; weights kept from epoch 2 (best val_loss);" in md


def test_imbalance_warnings_grouped_and_attributed(tmp_path):
    imbalance = RunWarning("imbalance", BY_KIND["imbalance"])
    a = make_run(tmp_path, "a", warnings=[imbalance, TINY])
    b = make_run(tmp_path, "b", warnings=[imbalance])
    section = _warnings_section(Path(write_report([a, b], tmp_path / "out")["markdown"]).read_text())
    assert _labels(section) == ["Small test set", "Class imbalance"]
    assert f"- **Class imbalance:** {imbalance.message} — runs: [a](#run-a), [b](#run-b)" in section
