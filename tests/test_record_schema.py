"""Run records checked against their schema: a damaged record is one line, exit 2, from every reader.

Each case damages one file of a copy of the shared run (recording the file's sha256 again, so that the
damage reaches the schema and not only the checksum) and names the line it must give: the file, the
field, the problem. One case per rule of :mod:`xrayfeat.runs.schema`, so each fails without its check.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import xrayfeat as xf
from xrayfeat import fileio
from xrayfeat.cli.main import main
from xrayfeat.runs.export import export_run, read_export
from xrayfeat.runs.schema import MAX_DEPTH, Damaged

FIX = {"config.json": "restore config.json or re-run fit-head"}


def _json(change):
    """An edit of a JSON file: ``change(data)`` on its parsed value."""
    def edit(text: str) -> str:
        data = json.loads(text)
        change(data)
        return json.dumps(data, indent=2)
    return edit


def _sub(pattern: str, replacement: str):
    """An edit of a file's text: the first match of ``pattern`` replaced (for what JSON cannot hold)."""
    def edit(text: str) -> str:
        changed = re.sub(pattern, replacement, text, count=1)
        assert changed != text, pattern
        return changed
    return edit


def _set(path: str, value):
    def change(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return _json(change)


_DELETE = object()


def damage(run: Path, file: str, edit) -> None:
    """Apply ``edit`` to ``run/file``; for a file other than config.json, record its new sha256 as fit-head would."""
    target = run / file
    changed = edit(target.read_text())
    target.write_bytes(changed if isinstance(changed, bytes) else changed.encode())
    if file != "config.json":
        config = json.loads((run / "config.json").read_text())
        for entry in config["artifacts"].values():
            if entry["file"] == file:
                entry["sha256"] = fileio.file_digest(target)
        (run / "config.json").write_text(json.dumps(config, indent=2))


#: rule: (damaged file, edit, the file the line names, what follows "run record damaged: ")
RULES = {
    # an extra or a missing field
    "extra-field": ("config.json", _set("quantum", 1), "config.json",
                    "quantum: unexpected field (the schema has no such field)"),
    "extra-nested-field": ("metrics.json", _set("head.extra", 1), "metrics.json", "head.extra: unexpected field"),
    "extra-option": ("config.json", _set("features.colour", "red"), "config.json",
                     "features.colour: unexpected field (FeatureOptions has no such option)"),
    "missing-field": ("config.json", _set("classes", _DELETE), "config.json", "classes: missing (a required field)"),
    "missing-nested-field": ("metrics.json", _set("head.accuracy", _DELETE), "metrics.json",
                             "head.accuracy: missing (a required field)"),
    # a wrong type, a version written as a string, a boolean where a number is expected
    "string-for-number": ("metrics.json", _set("head.accuracy", "0.9"), "metrics.json",
                          'head.accuracy: expected a number in [0, 1], got "0.9"'),
    "version-as-string": ("config.json", _set("schema", "2"), "config.json",
                          'schema: expected a positive integer, got "2"'),
    "version-as-float": ("config.json", _set("schema", 2.0), "config.json",
                         "schema: expected a positive integer, got 2.0"),
    "bool-for-count": ("config.json", _set("counts.test", True), "config.json",
                       "counts.test: expected an integer >= 0, got true"),
    "bool-for-number": ("metrics.json", _set("head.n", False), "metrics.json",
                        "head.n: expected an integer >= 0, got false"),
    "bool-for-option": ("config.json", _set("head.epochs", True), "config.json",
                        "head.epochs: expected an int in [1, inf] or null, got true"),
    "nested-wrong-type": ("metrics.json", _set("head.per_class.a.support", "3"), "metrics.json",
                          'head.per_class.a.support: expected an integer >= 0, got "3"'),
    "out-of-range": ("metrics.json", _set("head.accuracy", 1.5), "metrics.json",
                     "head.accuracy: expected a number in [0, 1], got 1.5"),
    "short-interval": ("metrics.json", _set("head.ci.accuracy", [0.1]), "metrics.json",
                       "head.ci.accuracy: expected an interval [low, high], got 1 items"),
    # what JSON does not hold: NaN, Infinity, numbers beyond range, a key twice, nesting without end
    "nan-literal": ("metrics.json", _sub(r'"loss": [-0-9.e]+', '"loss": NaN'), "metrics.json",
                    "not valid JSON (NaN is not a JSON number)"),
    "infinity-literal": ("config.json", _sub(r'"total_seconds": [-0-9.e]+', '"total_seconds": -Infinity'),
                         "config.json", "not valid JSON (-Infinity is not a JSON number)"),
    "huge-float": ("metrics.json", _sub(r'"loss": [-0-9.e]+', '"loss": 1e999'), "metrics.json",
                   "not valid JSON (the number 1e999 is beyond the range of a float)"),
    "huge-integer": ("config.json", _sub(r'"train": \d+', f'"train": {2**64}'),
                     "config.json", f"not valid JSON (the integer {2**64} is beyond 64 bits)"),
    "duplicate-key": ("config.json", _sub(r'"task": ', '"task": "4class", "task": '), "config.json",
                      'not valid JSON (the key "task" appears twice in one object)'),
    "deep-nesting": ("config.json", _sub(r'"versions": ', '"versions": ' + "[" * 100_000 + "]" * 100_000 + ', "v": '),
                     "config.json", f"not valid JSON (nested more than {MAX_DEPTH} levels deep)"),
    "not-utf8": ("config.json", lambda text: text.encode().replace(b'"task"', b'"t\xffask"'), "config.json",
                 "not UTF-8 text (invalid start byte at byte"),
    # classes that disagree with one another, the task, the head's settings, the metrics, the predictions
    "duplicate-class": ("config.json", _set("classes", ["a", "a"]), "config.json", 'classes[1]: "a" appears twice'),
    "control-character-class": ("config.json", _set("classes", ["a", "b\n"]), "config.json",
                                'classes[1]: expected a class name (printable text), got "b\\n"'),
    "classes-vs-task": ("config.json", _set("classes", ["a", "b", "c"]), "config.json",
                        'task: is "binary", but the record has 3 classes (a task "3class")'),
    "classes-vs-head-settings": ("config.json", _json(lambda d: d.update(classes=["a", "b", "c"], task="3class")),
                                 "config.json", "training.n_classes: the head was trained for 2 classes, but the "
                                                "record has 3"),
    "classes-vs-metrics": ("config.json", _set("classes", ["a", "z"]), "metrics.json",
                           'head.per_class.b: is not a class of the run ("a", "z")'),
    "swapped-classes": ("config.json", _set("classes", ["b", "a"]), "metrics.json",
                        'head.per_class: lists the classes in another order ("a", "b") than the run ("b", "a")'),
    "swapped-prediction-columns": ("predictions.csv", _sub(r"head:a,head:b", "head:b,head:a"), "predictions.csv",
                                   'header: the head columns ("b", "a") are not one per class of this run, in its '
                                   'order ("a", "b")'),
    "per-class-missing": ("metrics.json", _set("head.per_class.b", _DELETE), "metrics.json",
                          'head.per_class: has no entry for class "b" (the run has 2 classes)'),
    "confusion-size": ("metrics.json", _set("head.confusion", [[6]]), "metrics.json",
                       "head.confusion: expected a 2 x 2 matrix (one row and column per class), got 1 rows of [1] "
                       "columns"),
    "operating-point-class": ("metrics.json", _json(lambda d: d["head"]["operating_points"]["classes"].update(
        z=d["head"]["operating_points"]["classes"]["b"])), "metrics.json",
        'head.operating_points.classes.z: is not a class of the run ("a", "b")'),
    "positive-class": ("metrics.json", _set("positive", "z"), "metrics.json",
                       'positive: "z" is not a class of the run ("a", "b")'),
    "classes-vs-predictions": ("predictions.csv", _sub(r"head:b", "head:z"), "predictions.csv",
                               'header: "head:z" is not a <model>:<class> column of this run (classes "a", "b")'),
    # a path that leaves the run folder, a file or evaluation the record cannot hold
    "path-outside": ("config.json", _set("artifacts.metrics.file", "../metrics.json"), "config.json",
                     'artifacts.metrics.file: expected a relative path inside the run folder, got "../metrics.json"'),
    "path-absolute": ("config.json", _set("artifacts.head.file", "/etc/passwd"), "config.json",
                      'artifacts.head.file: expected a relative path inside the run folder, got "/etc/passwd"'),
    "artifact-of-another-kind": ("config.json", _set("artifacts.head.file", "metrics.json"), "config.json",
                                 'artifacts.head.file: expected a .keras file, got "metrics.json"'),
    "one-file-two-artifacts": ("config.json", _set("artifacts.confusion.file", "roc.png"), "config.json",
                               'artifacts.roc.file: "roc.png" is the file of artifacts.confusion too'),
    "unknown-artifact": ("config.json", _set("artifacts.weights", {"file": "w.h5", "sha256": "0" * 64}),
                         "config.json", "artifacts.weights: is not an artifact fit-head or evaluate records"),
    "evaluation-without-metrics": ("config.json", _set("external.site_b", {
        "data": "d", "created": "t", "n": 3, "excluded": 0, "classes": ["a"], "warnings": []}), "config.json",
        "external.site_b: has no metrics artifact (external/site_b/metrics)"),
}


def _expected(copy: Path, where: str, problem: str) -> str:
    return f"{copy / where}: run record damaged: {problem}"


@pytest.mark.parametrize("rule", RULES)
def test_each_schema_rule_refuses_a_damaged_record_in_one_line(shared_run, tmp_path, rule):
    file, edit, where, problem = RULES[rule]
    copy = shared_run.copy(tmp_path / "run")
    damage(copy, file, edit)
    with pytest.raises(Damaged) as info:
        xf.load_run(copy)
    message = str(info.value)
    assert message.startswith(_expected(copy, where, problem)), message
    assert message.endswith("; " + FIX.get(where, "re-run fit-head")) and "\n" not in message


def test_a_head_with_other_outputs_than_the_classes_is_refused(shared_run, tmp_path):
    copy = shared_run.copy(tmp_path / "run")
    with np.load(copy / "head.npz") as data:
        arrays = {name: data[name] for name in data.files}
    arrays["out_kernel"] = np.ones((arrays["out_kernel"].shape[0], 3), np.float32)
    arrays["out_bias"] = np.zeros(3, np.float32)
    np.savez(copy / "head.npz", **arrays)
    config = json.loads((copy / "config.json").read_text())
    config["artifacts"]["head_arrays"]["sha256"] = fileio.file_digest(copy / "head.npz")
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(Damaged) as info:
        xf.load_run(copy).head_arrays()
    assert str(info.value) == (f"{copy / 'head.npz'}: run record damaged: the head has 3 outputs, but config.json "
                               f"has 2 classes (a head for them has 1); re-run fit-head")


@pytest.mark.parametrize("table,edit,problem,read", [
    ("splits.csv", _sub(r",(train|val|test),", ",holdout,"), 'row 1: split: expected train, val or test, got "holdout"',
     lambda run: run.record.split_hashes()),
    ("splits.csv", _sub(r"^sha256,", "digest,"), 'header: has no column "sha256"', lambda run: run.record.split_hashes()),
    ("history.csv", _sub(r"^epoch,", "step,"), 'header: has no column "epoch"', lambda run: run.history()),
    ("history.csv", _sub(r"\n1,", "\none,"), "row 1: expected an epoch number and one value per column",
     lambda run: run.history()),
])
def test_a_damaged_table_is_refused_by_its_reader(shared_run, tmp_path, table, edit, problem, read):
    copy = shared_run.copy(tmp_path / "run")
    damage(copy, table, edit)
    with pytest.raises(Damaged) as info:
        read(xf.load_run(copy))
    assert str(info.value) == f"{copy / table}: run record damaged: {problem}; re-run fit-head"


def test_a_config_json_that_is_not_a_regular_file_is_damaged(shared_run, tmp_path):
    copy = shared_run.copy(tmp_path / "run")
    (copy / "config.json").unlink()
    (copy / "config.json").mkdir()
    with pytest.raises(Damaged, match=r"config\.json: run record damaged: not a regular file; restore config\.json"):
        xf.load_run(copy)


COMMANDS = {  # every command that reads a run: its arguments, given the run, its data and a scratch folder
    "predict": lambda run, data, out: ["predict", run, data / "test", "--out", out / "p.csv"],
    "evaluate": lambda run, data, out: ["evaluate", run, data / "test", "--name", "again"],
    "explain": lambda run, data, out: ["explain", run, data / "test", "--out", out / "maps"],
    "embed": lambda run, data, out: ["embed", data, "--from-run", run, "--out", out / "map.png",
                                     "--cache-dir", out.parent / "cache"],  # discovery remembers hashes there first
    "report": lambda run, data, out: ["report", run, "--out", out / "report"],
    "export": lambda run, data, out: ["export", run, "--out", out / "export"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_damaged_record_in_one_line_and_writes_nothing(shared_run, tmp_path, command):
    copy = shared_run.copy(tmp_path / "run")
    damage(copy, "metrics.json", _set("head.accuracy", "0.9"))
    before = sorted(p.name for p in copy.rglob("*"))
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(main, list(map(str, COMMANDS[command](copy, shared_run.data, out))))
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"xrayfeat: error: {copy / 'metrics.json'}: run record damaged: head.accuracy: expected a number in [0, 1], "
        f'got "0.9"; re-run fit-head']
    assert list(out.iterdir()) == [] and sorted(p.name for p in copy.rglob("*")) == before


# --------------------------------------------------------------------------- export.json


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("xrayfeat_fuzz", Path(__file__).parents[1] / "scripts" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXPORT_RULES = {
    "extra-field": (lambda d: d.update(quantum=1), "quantum: unexpected field (the schema has no such field)"),
    "missing-field": (lambda d: d.pop("classes"), "classes: missing (a required field)"),
    "bool-for-number": (lambda d: d.update(image_size=True), "image_size: expected an integer in [32, 2048], got true"),
    "classes-vs-outputs": (lambda d: d.update(output_shape=[None, 3]),
                           "output_shape: says 3 outputs, but classes holds 2 names"),
    "duplicate-class": (lambda d: d.update(classes=["a", "a"]), 'classes[1]: "a" appears twice'),
    "path-outside": (lambda d: d.update(sha256={"../model.keras": "0" * 64}),
                     'sha256["../model.keras"]: expected a relative path inside the export folder, got "../model.keras"'),
}


@pytest.mark.parametrize("rule", EXPORT_RULES)
def test_a_damaged_export_json_is_refused_and_its_folder_never_replaced(shared_run, tmp_path, rule):
    change, problem = EXPORT_RULES[rule]
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.keras").write_bytes(b"a previous model")
    sound = _fuzz_module()._export_record(shared_run.path)
    (out / "export.json").write_text(json.dumps(sound))
    assert read_export(out) == json.loads(json.dumps(sound))
    change(sound)
    (out / "export.json").write_text(json.dumps(sound))
    expected = f"{out / 'export.json'}: export record damaged: {problem}; re-run xrayfeat export into an empty folder"
    with pytest.raises(Damaged) as info:
        read_export(out)
    assert str(info.value) == expected
    with pytest.raises(Damaged) as info:  # refused before any model is built
        export_run(shared_run.path, out)
    assert str(info.value) == expected and (out / "model.keras").read_bytes() == b"a previous model"


# --------------------------------------------------------------------------- fuzzing


def test_a_short_fuzz_of_the_record_lets_only_xrayfeat_errors_escape(shared_run, tmp_path):
    """A few hundred mutated records (scripts/fuzz.py's records target) through load_run and every reader."""
    fuzz = _fuzz_module()
    target = fuzz.make_target("records", tmp_path, run=shared_run.path, report_every=125)
    fuzzer = fuzz._Fuzzer(target, tmp_path / "failures")
    fuzzer.batch(seed=21, examples=250)
    assert fuzzer.failures == {}
    assert fuzzer.outcomes["cases"] >= 250
    assert fuzzer.outcomes["load_run:refused"] > 100 and fuzzer.outcomes["read_export:refused"] > 10


def test_a_timing_that_is_not_a_number_is_written_as_null_and_the_record_still_loads(shared_run, tmp_path):
    """JSON has no NaN, and the reader refuses the literal: a writer never puts one in config.json."""
    from xrayfeat.runs import record as runs

    copy = shared_run.copy(tmp_path / "run")
    record = runs.read_record(copy)
    record.timings["seconds_per_step"] = float("nan")
    runs.write_record(record, copy)
    assert "NaN" not in (copy / "config.json").read_text()
    assert xf.load_run(copy).record.timings["seconds_per_step"] is None
