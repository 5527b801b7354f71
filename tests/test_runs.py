"""The typed run record: round trip, the one sha256 check, the legacy layout, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from xrayfeat import fileio
from xrayfeat.runs import record as runs
from xrayfeat.runs.record import Artifact, RunRecord, RunWarning
from xrayfeat.errors import RunError


def make_record(**overrides) -> RunRecord:
    fields = dict(
        xrayfeat="0.1.0", created="2026-12-01T00:00:00Z", data="data", task="binary", classes=["covid", "normal"],
        counts={"train": 8, "val": 2, "test": 4, "skipped": 0}, validation="val split",
        features={"backbone": "vgg16", "weights": "none", "image_size": 32, "layer": None, "precision": "auto",
                  "store_dtype": "float16", "seed": 0},
        head=HEAD, run={"device": "cpu", "batch_size": 32, "cache_dir": "cache"},
        store={"path": "s", "fingerprint": FINGERPRINT, "fingerprint_id": "0123456789abcdef"},
        weights={"kind": "none", "identity": "none-seed0", "path": None, "random": True},
        params={"total": 10, "trainable": 8, "non_trainable": 2},
        training={"n_classes": 2},
        timings={"head_seconds": 1.0}, baselines={}, versions={},
        warnings=[RunWarning("random_weights", "RANDOM backbone weights"), RunWarning("small_test", "tiny")],
    )
    return RunRecord(**{**fields, **overrides})


HEAD = {"epochs": 2, "head_batch_size": 10, "steps_per_epoch": 10, "validation_steps": 2, "learning_rate": 1e-3,
        "units": 8, "dropout": 0.3, "l2": 1e-3, "train_tail": False, "val_fraction": 0.2, "baselines": [], "seed": 0,
        "n_bootstrap": 0, "n_jobs": None}
FINGERPRINT = {"backbone": "vgg16", "weights": "none-seed0", "image_size": 32, "layer": "block5_pool",
               "precision": "float32", "preprocess": "caffe", "store_dtype": "float16"}


def metrics_of(classes=("covid", "normal"), accuracy=0.75, n=4) -> dict:
    """One model's test figures as metrics.score writes them (the fields every layout has)."""
    k, per = len(classes), n // len(classes)
    return {"n": n, "accuracy": accuracy, "loss": 0.5, "balanced_accuracy": accuracy,
            "per_class": {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": per} for c in classes},
            "roc_auc": 0.5, "roc_auc_per_class": {c: 0.5 for c in classes},
            "confusion": [[per if i == j else 0 for j in range(k)] for i in range(k)],
            "ci": {"accuracy": [0.2, 1.0], "balanced_accuracy": None, "roc_auc": None},
            "ci_method": "none", "ci_level": 0.95}


def write_run(folder: Path) -> RunRecord:
    folder.mkdir(parents=True, exist_ok=True)
    fileio.write_json(folder / "metrics.json", {"head": metrics_of(), "baselines": {}})
    (folder / "head.keras").write_bytes(b"not really a model")
    record = make_record()
    record.artifacts = dict([runs.artifact(folder, "metrics", "metrics.json"), runs.artifact(folder, "head", "head.keras")])
    runs.write_record(record, folder)
    return record


def test_record_round_trips_with_typed_warnings(tmp_path):
    written = write_run(tmp_path / "run")
    read = runs.read_record(tmp_path / "run")
    assert read.schema == runs.SCHEMA_VERSION
    assert read.warnings == written.warnings and isinstance(read.warnings[0], RunWarning)
    assert read.artifacts["head"] == written.artifacts["head"] and isinstance(read.artifacts["head"], Artifact)
    assert read.to_json() == written.to_json()
    assert read.metrics()["head"]["accuracy"] == 0.75


def test_an_artifact_is_read_only_when_its_sha256_matches(tmp_path):
    write_run(tmp_path / "run")
    record = runs.read_record(tmp_path / "run")
    assert record.verified("head") == tmp_path / "run" / "head.keras"
    (tmp_path / "run" / "head.keras").write_bytes(b"tampered")
    with pytest.raises(RunError, match=r"head\.keras: sha256 differs.*refusing"):
        record.verified("head")
    (tmp_path / "run" / "metrics.json").unlink()
    with pytest.raises(RunError, match="metrics.json: missing"):
        record.metrics()
    with pytest.raises(RunError, match="no artifact 'roc'"):
        record.verified("roc")


def test_not_a_run_and_a_damaged_record_are_one_line(tmp_path):
    with pytest.raises(RunError, match="not a run folder \\(does not exist\\)"):
        runs.read_record(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no config.json"):
        runs.read_record(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{truncated")
    with pytest.raises(RunError, match="damaged") as info:
        runs.read_record(tmp_path / "empty")
    assert "\n" not in str(info.value)


def test_a_newer_schema_says_to_upgrade(tmp_path):
    write_run(tmp_path / "run")
    data = json.loads((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.json").write_text(json.dumps({**data, "schema": runs.SCHEMA_VERSION + 1}))
    with pytest.raises(RunError, match="upgrade xrayfeat"):
        runs.read_record(tmp_path / "run")


def test_a_run_of_the_first_layout_still_loads(tmp_path):
    """config.json as fit-head wrote it before the schema: files.head, files.baselines, warnings as strings."""
    warning = "RANDOM backbone weights (--weights none): results say nothing about ImageNet transfer"
    folder = _legacy_run(tmp_path / "old", warnings=[warning])
    record = runs.read_record(folder)
    assert record.warnings == [RunWarning("other", warning)]
    assert record.verified("head").name == "head.keras"
    assert record.metrics()["head"]["accuracy"] == 0.5


def test_unknown_warning_kind_is_a_value_error():
    with pytest.raises(ValueError, match="'kind' parameter of RunWarning"):
        RunWarning("gossip", "x")


def _rewrite_record(folder: str, validation: str, times: int) -> None:
    record = runs.read_record(folder)
    for _ in range(times):
        record.validation = validation  # a field no other field is checked against
        runs.write_record(record, Path(folder))


@pytest.mark.slow
def test_two_processes_writing_one_run_record_never_corrupt_it(tmp_path):
    folder = tmp_path / "run"
    write_run(folder)
    context = multiprocessing.get_context("spawn")
    texts = ("val split", "20% of train")
    writers = [context.Process(target=_rewrite_record, args=(str(folder), text, 150)) for text in texts]
    for w in writers:
        w.start()
    seen = set()
    while any(w.is_alive() for w in writers):
        seen.add(runs.read_record(folder).validation)  # raises if a reader ever sees half a file
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert runs.read_record(folder).validation in set(texts)
    assert seen <= set(texts)
    assert not list(folder.glob(".*tmp*"))


def test_importing_runs_loads_no_framework():
    code = ("import sys, xrayfeat.runs.record, xrayfeat.runs.loaded; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'sklearn', 'h5py', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- malformed and hostile records


def _set(path: str, value):
    """A change to config.json: ``path`` (keys joined by ``.``) set to ``value``, or removed when value is DELETE."""
    def change(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return change


DELETE = object()
ARTIFACT = {"file": "head.keras", "sha256": "0" * 64}

MALFORMED = {  # id: change to a sound schema-2 record
    "task missing": _set("task", DELETE),
    "task null": _set("task", None),
    "classes a dict": _set("classes", {"covid": 0}),
    "classes not strings": _set("classes", ["covid", 3]),
    "classes empty": _set("classes", []),
    "counts a list": _set("counts", [8, 2, 4]),
    "counts not numbers": _set("counts", {"train": "eight"}),
    "features a string": _set("features", "vgg16"),
    "features without backbone": _set("features.backbone", DELETE),
    "backbone a number": _set("features.backbone", 16),
    "head a list": _set("head", []),
    "head_input a list": _set("head.head_input", ["spatial"]),
    "store null": _set("store", None),
    "store without fingerprint": _set("store.fingerprint", DELETE),
    "fingerprint a list": _set("store.fingerprint", ["vgg16"]),
    "store path a number": _set("store.path", 5),
    "weights a list": _set("weights", ["none"]),
    "timings a string": _set("timings", "fast"),
    "artifacts a list": _set("artifacts", [ARTIFACT]),
    "artifact a string": _set("artifacts.head", "head.keras"),
    "artifact file a number": _set("artifacts.head.file", 7),
    "artifact file a list": _set("artifacts.head.file", ["head.keras"]),
    "artifact file empty": _set("artifacts.head.file", ""),
    "artifact file absolute": _set("artifacts.head.file", "/etc/passwd"),
    "artifact file escaping": _set("artifacts.head.file", "../outside.keras"),
    "artifact file escaping inside": _set("artifacts.head.file", "baselines/../../outside.keras"),
    "artifact file with NUL": _set("artifacts.head.file", "head\u0000.keras"),
    "artifact without sha256": _set("artifacts.head.sha256", DELETE),
    "artifact sha256 a number": _set("artifacts.head.sha256", 12),
    "artifact sha256 not hex": _set("artifacts.head.sha256", "z" * 64),
    "model artifact sha256 null": _set("artifacts.head.sha256", None),
    "warnings a string": _set("warnings", "tiny"),
    "warning a list": _set("warnings", [["small_test", "tiny"]]),
    "warning kind a number": _set("warnings", [{"kind": 3, "message": "tiny"}]),
    "warning without message": _set("warnings", [{"kind": "small_test"}]),
    "external a list": _set("external", ["site_b"]),
    "external entry a string": _set("external", {"site_b": "0.8"}),
    "skipped_files a string": _set("skipped_files", "a.png: empty"),
    "schema a string": _set("schema", "2"),
    "schema true": _set("schema", True),
    "schema zero": _set("schema", 0),
    "legacy files a list": lambda d: _legacy(d, files=[ARTIFACT]),
    "legacy head a string": lambda d: _legacy(d, files={"head": "head.keras"}),
    "legacy head file a dict": lambda d: _legacy(d, files={"head": {"file": {"x": 1}, "sha256": "0" * 64}}),
    "legacy baselines a list": lambda d: _legacy(d, files={"head": ARTIFACT, "baselines": ["logreg"]}),
    "legacy baseline escaping": lambda d: _legacy(d, files={"head": ARTIFACT, "baselines": {
        "logreg": {"file": "../../logreg.joblib", "sha256": "0" * 64}}}),
    "legacy warnings a dict": lambda d: _legacy(d, warnings={"tiny": 1}),
}


def _legacy(data: dict, **changes) -> None:
    """The first layout (no schema, files.head/files.baselines, warnings as strings), then ``changes``."""
    for key in ("schema", "artifacts"):
        data.pop(key)
    data["warnings"] = [w["message"] for w in data["warnings"]]
    data["files"] = {"head": ARTIFACT, "baselines": {}}
    data.update(changes)


@pytest.fixture
def sound_run(tmp_path) -> Path:
    folder = tmp_path / "run"
    write_run(folder)
    (tmp_path / "outside.keras").write_bytes(b"a file outside the run")
    return folder


@pytest.mark.parametrize("change", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_record_is_one_run_error_naming_the_file_and_the_fix(sound_run, change):
    import xrayfeat as xf

    data = json.loads((sound_run / "config.json").read_text())
    change(data)
    (sound_run / "config.json").write_text(json.dumps(data))
    with pytest.raises(RunError) as info:
        xf.load_run(sound_run)
    message = str(info.value)
    assert "\n" not in message and "\x00" not in message
    assert message.startswith(f"{sound_run / 'config.json'}: run record damaged: ")
    assert message.endswith("re-run fit-head"), message


def test_malformed_records_make_report_exit_2_with_one_line(sound_run, tmp_path):
    from click.testing import CliRunner

    from xrayfeat.cli.main import main

    for name, change in MALFORMED.items():
        data = json.loads((sound_run / "config.json").read_text())
        change(data)
        (sound_run / "config.json").write_text(json.dumps(data))
        result = CliRunner().invoke(main, ["report", str(sound_run), "--out", str(tmp_path / "report")])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, (name, result.output)
        assert len(lines) == 1 and lines[0].startswith(f"xrayfeat: error: {sound_run / 'config.json'}: run record "
                                                       f"damaged: "), (name, lines)
        assert not (tmp_path / "report").exists()
        write_run(sound_run)  # sound again for the next case


def test_a_hostile_record_in_the_real_cli_is_one_line_without_traceback(sound_run, tmp_path):
    data = json.loads((sound_run / "config.json").read_text())
    data["artifacts"]["metrics"] = {"file": "../outside.keras", "sha256": fileio.file_digest(tmp_path / "outside.keras")}
    (sound_run / "config.json").write_text(json.dumps(data))
    proc = subprocess.run([sys.executable, "-m", "xrayfeat", "report", str(sound_run), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"xrayfeat: error: {sound_run / 'config.json'}: run record damaged: artifacts.metrics.file: expected a "
        f"relative path inside the run folder, got \"../outside.keras\"; restore config.json or re-run fit-head"]


def test_an_artifact_linked_out_of_the_run_folder_is_refused(sound_run, tmp_path):
    (sound_run / "head.keras").unlink()
    (sound_run / "head.keras").symlink_to(tmp_path / "outside.keras")
    data = json.loads((sound_run / "config.json").read_text())
    data["artifacts"]["head"]["sha256"] = fileio.file_digest(tmp_path / "outside.keras")
    (sound_run / "config.json").write_text(json.dumps(data))
    with pytest.raises(RunError, match=r"head\.keras: lies outside the run folder"):
        runs.read_record(sound_run).verified("head")


def test_a_record_from_a_newer_xrayfeat_keeps_what_it_can_read(sound_run):
    """An unknown warning kind is a newer writer's and reads as "other"; an unknown field is damage (a writer that
    adds a field raises the schema version, which says "upgrade xrayfeat")."""
    data = json.loads((sound_run / "config.json").read_text())
    data["warnings"].append({"kind": "solar_flare", "message": "the sun was active"})
    (sound_run / "config.json").write_text(json.dumps(data))
    record = runs.read_record(sound_run)
    assert record.warnings[-1] == RunWarning("other", "the sun was active")
    data["quantum"] = {"entangled": True}
    (sound_run / "config.json").write_text(json.dumps(data))
    with pytest.raises(RunError, match=r"run record damaged: quantum: unexpected field"):
        runs.read_record(sound_run)


def _legacy_run(folder: Path, warnings: list[str] | None = None) -> Path:
    folder.mkdir()
    (folder / "head.keras").write_bytes(b"model")
    (folder / "metrics.json").write_text(json.dumps({"head": metrics_of(accuracy=0.5), "baselines": {}}))
    legacy = make_record().to_json()
    for key in ("schema", "artifacts", "warnings"):
        legacy.pop(key)
    legacy["files"] = {"head": {"file": "head.keras", "sha256": fileio.file_digest(folder / "head.keras")},
                       "baselines": {}}
    if warnings is not None:  # the first layout kept warnings as plain strings
        legacy["warnings"] = warnings
    (folder / "config.json").write_text(json.dumps(legacy))
    return folder


def test_a_legacy_run_says_it_is_unverified_and_invents_no_digest(tmp_path, caplog):
    import xrayfeat as xf

    folder = _legacy_run(tmp_path / "old")
    (folder / "metrics.json").write_text(json.dumps({"head": metrics_of(accuracy=0.99), "baselines": {}}))  # tampered
    run = xf.load_run(folder)
    assert run.record.verified_artifacts is False and run.verified_artifacts is False
    assert run.record.artifacts["metrics"] == Artifact("metrics.json", None)  # no digest computed from today's file
    assert run.record.unverified_artifacts == ["metrics"]
    assert run.record.artifacts["head"].sha256 == fileio.file_digest(folder / "head.keras")  # recorded: still checked
    with caplog.at_level("WARNING", logger="xrayfeat"):
        assert run.metrics["head"]["accuracy"] == 0.99  # read as it is, and said so
        run.record.metrics()
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"{folder / 'metrics.json'}: {runs.UNVERIFIED_NOTE} (a run of the first config.json layout); "
                    f"re-run fit-head for a run whose files are checked"]  # once per record
    (folder / "head.keras").write_bytes(b"swapped")
    with pytest.raises(RunError, match="sha256 differs"):
        run.record.verified("head")


def test_an_unverified_legacy_artifact_stays_unverified_when_the_record_is_rewritten(tmp_path):
    folder = _legacy_run(tmp_path / "old")
    record = runs.read_record(folder)
    runs.write_record(record, folder)  # as `evaluate` does after adding its result
    again = runs.read_record(folder)
    assert again.schema == runs.SCHEMA_VERSION and again.verified_artifacts is False
    assert again.artifacts["metrics"] == Artifact("metrics.json", None)


def test_a_tampered_file_of_a_schema_2_run_is_still_refused(tmp_path):
    write_run(tmp_path / "run")
    assert runs.read_record(tmp_path / "run").verified_artifacts is True
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"head": metrics_of(accuracy=0.99), "baselines": {}}))
    with pytest.raises(RunError, match=r"metrics\.json: sha256 differs"):  # refused when the run is loaded
        runs.read_record(tmp_path / "run")


def test_the_schema_table_names_every_field_of_the_record():
    from dataclasses import fields

    from xrayfeat.runs.schema import config_schema

    assert set(config_schema(runs.SCHEMA_VERSION).fields) == {f.name for f in fields(RunRecord)} - {"path"}
