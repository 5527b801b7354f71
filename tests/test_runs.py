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
        head={"epochs": 2}, run={"device": "cpu"}, store={"path": "s", "fingerprint": {"weights": "none-seed0"}},
        weights={"kind": "none", "identity": "none-seed0", "path": None, "random": True}, params={}, training={},
        timings={"head_seconds": 1.0}, baselines={}, versions={},
        warnings=[RunWarning("random_weights", "RANDOM backbone weights"), RunWarning("small_test", "tiny")],
    )
    return RunRecord(**{**fields, **overrides})


def write_run(folder: Path) -> RunRecord:
    folder.mkdir(parents=True, exist_ok=True)
    fileio.write_json(folder / "metrics.json", {"head": {"accuracy": 0.75}, "baselines": {}})
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
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "head.keras").write_bytes(b"model")
    (folder / "metrics.json").write_text(json.dumps({"head": {"accuracy": 0.5}, "baselines": {}}))
    legacy = make_record().to_json()
    for key in ("schema", "artifacts", "warnings"):
        legacy.pop(key)
    legacy["files"] = {"head": {"file": "head.keras", "sha256": fileio.file_digest(folder / "head.keras")},
                       "baselines": {}}
    legacy["warnings"] = ["RANDOM backbone weights (--weights none): results say nothing about ImageNet transfer"]
    (folder / "config.json").write_text(json.dumps(legacy))
    record = runs.read_record(folder)
    assert record.warnings == [RunWarning("other", legacy["warnings"][0])]
    assert record.verified("head").name == "head.keras"
    assert record.metrics()["head"]["accuracy"] == 0.5


def test_unknown_warning_kind_is_a_value_error():
    with pytest.raises(ValueError, match="'kind' of RunWarning"):
        RunWarning("gossip", "x")


def _rewrite_record(folder: str, task: str, times: int) -> None:
    record = runs.read_record(folder)
    for _ in range(times):
        record.task = task
        runs.write_record(record, Path(folder))


@pytest.mark.slow
def test_two_processes_writing_one_run_record_never_corrupt_it(tmp_path):
    folder = tmp_path / "run"
    write_run(folder)
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_rewrite_record, args=(str(folder), task, 150)) for task in ("binary", "4class")]
    for w in writers:
        w.start()
    seen = set()
    while any(w.is_alive() for w in writers):
        seen.add(runs.read_record(folder).task)  # raises if a reader ever sees half a file
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert runs.read_record(folder).task in {"binary", "4class"}
    assert seen <= {"binary", "4class"}
    assert not list(folder.glob(".*tmp*"))


def test_importing_runs_loads_no_framework():
    code = ("import sys, xrayfeat.runs.record, xrayfeat.runs.loaded; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'sklearn', 'h5py', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
