"""The whole CLI in Python: each xf call is its command's library call (same --json), refusals in Python's words.

Also: ``overwrite=True`` (fit_head's run, export's folder) replaces only once the new output is complete,
and ``evaluate`` says when the "external" data is the run's own test images or shares its sources.
"""

from __future__ import annotations

import json
import shutil

import pytest

import xrayfeat as xf
from tests.conftest import SHARED_RUN_OPTIONS, run_cli_here
from xrayfeat.errors import RunError
from xrayfeat.runs.export import ExportError


def _cli_json(*args):
    proc = run_cli_here(*args, "--json")
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


def test_inspect_and_describe_equal_their_commands(shared_run):
    code, cli, _ = _cli_json("inspect", shared_run.data)
    assert code == 0 and xf.inspect(shared_run.data).as_json() == cli
    inspection = xf.inspect(shared_run.data, classes=["a"])
    assert inspection.classes == ["a"] and inspection.images == 9

    code, cli, _ = _cli_json("describe", "-b", "vgg16", "--n-classes", "3", "--image-size", "32")
    described = xf.describe("vgg16", 3, image_size=32)
    assert code == 0 and described.as_json() == cli
    assert described.total == described.trainable + described.non_trainable and described.summary
    with pytest.raises(ValueError, match="'n_classes' parameter of describe"):
        xf.describe("vgg16", 1)


def test_cache_ls_verify_gc_equal_their_commands(shared_run, tmp_path):
    cache = shared_run.copy_cache(tmp_path / "cache")
    code, cli, _ = _cli_json("cache", "ls", "--cache-dir", cache)
    listing = xf.cache_ls(cache)
    assert code == 0 and listing.as_json() == cli and len(listing.stores) == 1
    code, cli, _ = _cli_json("cache", "verify", "--cache-dir", cache)
    checked = xf.cache_verify(cache)
    assert code == 0 and checked.as_json() == cli and checked.ok and checked.problems == []
    code, cli, _ = _cli_json("cache", "gc", "--cache-dir", cache)
    cleaned = xf.cache_gc(cache)
    assert code == 0 and cleaned.as_json().keys() == cli.keys() and len(cleaned.stores) == 1
    with pytest.raises(xf.XrayfeatError, match="no such folder"):
        xf.cache_ls(tmp_path / "nowhere")


def test_a_damaged_cache_is_a_result_in_python_and_exit_1_in_the_cli(shared_run, tmp_path):
    cache = shared_run.copy_cache(tmp_path / "cache")
    [shard] = list(cache.glob("*/shards/*.h5"))
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    checked = xf.cache_verify(cache)
    assert not checked.ok and checked.problems
    code, cli, stderr = _cli_json("cache", "verify", "--cache-dir", cache)
    assert code == 1 and cli == checked.as_json()
    assert stderr.strip().endswith(f"{len(checked.problems)} problem(s) found; first: {checked.problems[0]}")


def test_export_equals_the_command_and_overwrite_replaces_a_folder_only_when_asked(shared_run, tmp_path):
    ours = xf.export(shared_run.path, tmp_path / "python")
    code, cli, _ = _cli_json("export", shared_run.path, "--out", tmp_path / "cli")
    assert code == 0
    mine = ours.as_json()
    assert mine.keys() == cli.keys()
    for key in ("out", "model", "card", "seconds", "sha256", "bytes"):  # paths; a .keras file is a zip stamped with its time
        mine.pop(key), cli.pop(key)
    assert mine == cli

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ExportError) as info:
        xf.export(shared_run.path, taken)
    assert str(info.value) == (f"{taken}: folder exists and holds other files than a previous export; "
                               "pass overwrite=True or another out=")
    proc = run_cli_here("export", shared_run.path, "--out", taken)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("pass another --out or empty it")
    assert (taken / "notes.txt").read_text() == "mine"
    replaced = xf.export(shared_run.path, taken, overwrite=True)
    assert sorted(p.name for p in taken.iterdir()) == ["MODEL_CARD.md", "export.json", "model.keras"]
    assert replaced.out == str(taken) and replaced.classes == ours.classes
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing staged left


def test_fit_head_refuses_a_run_in_pythons_words_and_overwrite_replaces_it_once_complete(shared_run, tmp_path,
                                                                                         monkeypatch):
    from xrayfeat.runs import fit

    cache = shared_run.copy_cache(tmp_path / "cache")
    target = shared_run.copy(tmp_path / "run")
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    options = {**SHARED_RUN_OPTIONS, "epochs": 1, "n_bootstrap": 20, "baselines": ("logreg",)}
    with pytest.raises(RunError) as info:
        xf.fit_head(shared_run.data, "vgg16", cache_dir=cache, out=target, **options)
    assert str(info.value) == f"{target}: not empty: it already holds a finished run; pass overwrite=True or another out="
    proc = run_cli_here("fit-head", shared_run.data, "-b", "vgg16", "--weights", "none", "--image-size", "32",
                        "--cache-dir", cache, "--out", target)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("not empty: it already holds a finished run; choose another --out or delete it")

    def broken(*args, **kwargs):
        raise RuntimeError("the study failed half-way")

    with monkeypatch.context() as patch:  # a failure leaves the previous run as it was, and nothing beside it
        patch.setattr(fit, "_study", broken)
        with pytest.raises(RuntimeError, match="half-way"):
            xf.fit_head(shared_run.data, "vgg16", cache_dir=cache, out=target, overwrite=True, **options)
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]

    run = xf.fit_head(shared_run.data, "vgg16", cache_dir=cache, out=target, overwrite=True, **options)
    assert run.path == target and run.record.head["epochs"] == 1 and run.record.baseline_names == ["logreg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]
    assert "external" not in {p.name for p in target.iterdir()} and xf.load_run(target).metrics


def test_evaluate_says_when_the_external_images_are_the_runs_own_test_images(shared_run, tmp_path):
    run_dir = shared_run.copy(tmp_path / "run")
    cache = shared_run.copy_cache(tmp_path / "cache")
    result = xf.evaluate(run_dir, shared_run.data / "test", name="own", cache_dir=cache)
    kinds = {w.kind: w.message for w in result.warnings}
    assert kinds["not_external"] == (f"all 6 images of {shared_run.data / 'test'} are the run's own test images "
                                     "(byte-identical): these are its internal results again, not an external "
                                     "validation; pass another site's images")
    assert {"kind": "not_external", "message": kinds["not_external"]} in result.as_json()["warnings"]
    proc = run_cli_here("evaluate", run_dir, shared_run.data / "test", "--name", "own2", "--cache-dir", cache)
    assert proc.returncode == 0
    assert f"xrayfeat: warning: {kinds['not_external']}" in proc.stderr.splitlines()


def test_evaluate_says_when_the_external_images_share_the_runs_sources(shared_run, tmp_path):
    run_dir = shared_run.copy(tmp_path / "run")
    cache = shared_run.copy_cache(tmp_path / "cache")
    site = tmp_path / "site"
    rows = ["path,label,source"]
    for image in sorted((shared_run.data / "test").rglob("*.png"))[:4]:
        (site / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, site / image.parent.name / image.name)
        rows.append(f"{image.parent.name}/{image.name},{image.parent.name},site_a")
    (site / "manifest.csv").write_text("\n".join(rows) + "\n")
    run = xf.load_run(run_dir)
    run.metrics["head"]["by_source"] = {"site_a": {}, "site_b": {}}  # as a run trained on a manifest with sources
    result = run.evaluate(site / "manifest.csv", name="site", cache_dir=cache)
    kinds = {w.kind: w.message for w in result.warnings}
    assert kinds["shared_source"].startswith(f"images of {site} come from site_a, a source the run's own test data "
                                             "has too")
    assert kinds["not_external"].startswith(f"all 4 images of {site} are the run's own test images")
