"""fit-head --config RUN/config.json: a recorded study run again, and what it refuses.

One replay of the session's shared run (a copy of its folder, whose record is made to claim an older xrayfeat
and Keras, on a copy of its data elsewhere, as a reviewer has it) gives the same metrics.json, predictions and
head, bit for bit, warns once about the versions and records what it repeats. The refusals stop before anything
is extracted, so they cost a discovery each.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import run_cli_here

#: What metrics.json may hold that a replay changes: nothing. It records no timing, path or timestamp (those live
#: in config.json's timings, data, store and created), so every figure of the two runs is compared.
EXCLUDED_METRICS: tuple[str, ...] = ()
#: The versions the copied record is made to claim.
CLAIMED = {"xrayfeat": "0.0.1", "keras": "3.0.0"}


def _copy_run(shared_run, dest: Path, **changes) -> Path:
    """A copy of the shared run whose config.json has ``changes`` (top-level keys; ``versions`` merged)."""
    run = shared_run.copy(dest)
    if changes:
        config = json.loads((run / "config.json").read_text())
        versions = changes.pop("versions", {})
        config.update(changes)
        config["versions"].update(versions)
        (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.fixture(scope="module")
def replayed(shared_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    original = _copy_run(shared_run, root / "original", xrayfeat=CLAIMED["xrayfeat"],
                         versions={"keras": CLAIMED["keras"]})
    data = shutil.copytree(shared_run.data, root / "moved" / "data")  # the same images, elsewhere
    proc = run_cli_here("fit-head", data, "--config", original / "config.json", "--out", root / "again",
                        "--cache-dir", shared_run.copy_cache(root / "cache"), "--json")
    return SimpleNamespace(proc=proc, original=original, again=root / "again", data=data, root=root)


def _weights(keras_file: Path) -> dict[str, np.ndarray]:
    """Every array of a .keras file's weights (model.weights.h5 inside the zip), by its HDF5 path."""
    import h5py

    arrays = {}
    with zipfile.ZipFile(keras_file) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
        h5.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def _same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:  # bit for bit: the same dtype, shape and bytes
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name


def test_the_same_code_and_data_give_the_same_metrics_and_head(replayed, shared_run):
    assert replayed.proc.returncode == 0, replayed.proc.stderr
    first, again = shared_run.path, replayed.again
    metrics = [{k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if k not in EXCLUDED_METRICS}
               for run in (first, again)]
    assert metrics[0] == metrics[1]
    for table in ("predictions.csv", "predictions-val.csv", "splits.csv"):
        assert (first / table).read_bytes() == (again / table).read_bytes(), table
    # the head: its Keras weights and its numpy arrays, bit for bit (head.keras itself differs in its save date)
    _same_arrays(_weights(first / "head.keras"), _weights(again / "head.keras"))
    with np.load(first / "head.npz") as a, np.load(again / "head.npz") as b:
        _same_arrays(dict(a), dict(b))


def test_the_replay_has_every_option_of_the_run_and_says_what_it_repeats(replayed, shared_run):
    from xrayfeat.fileio import file_digest
    from xrayfeat.runs.record import read_record

    before, after = read_record(shared_run.path), read_record(replayed.again)
    assert (after.features, after.head, after.classes, after.counts) == (before.features, before.head, before.classes,
                                                                       before.counts)
    assert {k: after.run[k] for k in ("device", "batch_size")} == {k: before.run[k] for k in ("device", "batch_size")}
    assert after.data == str(replayed.data)  # where the data is now
    provenance = after.replay_of
    assert provenance["path"] == str(replayed.original) and provenance["name"] == "original"
    assert provenance["config_sha256"] == file_digest(replayed.original / "config.json")
    assert provenance["created"] == before.created
    assert [d.split(" ")[0] for d in provenance["differences"]] == ["xrayfeat", "keras"]
    assert [w.kind for w in after.warnings].count("replay") == 1
    assert json.loads(replayed.proc.stdout)["replay_of"] == provenance
    assert before.replay_of is None and "replay_of" not in json.loads((shared_run.path / "config.json").read_text())


def test_other_versions_are_named_in_one_warning_and_the_run_goes(replayed):
    from xrayfeat import __version__

    lines = [line for line in replayed.proc.stderr.splitlines() if "other versions" in line]
    assert len(lines) == 1, replayed.proc.stderr  # said before the study, not again after it
    assert lines[0].startswith("xrayfeat: warning: replaying ")
    assert f"xrayfeat {CLAIMED['xrayfeat']} in the run, {__version__} here" in lines[0]
    assert f"keras {CLAIMED['keras']} in the run, " in lines[0]
    assert "2 differences, each in a warning above" in replayed.proc.stderr


def test_version_differences_name_each_library():
    from xrayfeat.runs.replay import version_differences

    assert version_differences({"keras": "3.1", "jax": "0.4"}, {"keras": "3.1", "jax": "0.5", "torch": "2.0"}) == [
        "jax 0.4 in the run, 0.5 here", "torch not installed in the run, 2.0 here"]
    assert version_differences({"numpy": "2.0"}, {"numpy": "2.0"}) == []


# --------------------------------------------------------------------------- refusals, each before any extraction


def _refused(proc, *fragments) -> str:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("xrayfeat: error: ")]
    assert len(errors) == 1 and proc.stderr.count("Traceback") == 0, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_data_that_changed_is_refused_with_the_counts_before_extraction(shared_run, tmp_path):
    data = shutil.copytree(shared_run.data, tmp_path / "data")
    changed = data / "test" / "b" / "b_test_0.png"
    changed.write_bytes(changed.read_bytes() + b"\0")  # other bytes, the same picture
    (data / "train" / "a" / "a_train_2.png").unlink()
    shutil.copy(data / "train" / "a" / "a_train_3.png", data / "train" / "a" / "a_extra.png")
    cache = tmp_path / "cache"
    proc = run_cli_here("fit-head", data, "--config", shared_run.path / "config.json", "--out", tmp_path / "again",
                        "--cache-dir", cache)
    line = _refused(proc, f"{data}: 1 of 18 images changed, 1 missing, 1 added since the run {shared_run.path}",
                    "changed: test/b/b_test_0.png", "missing: train/a/a_train_2.png", "added: train/a/a_extra.png",
                    "restore the data the run used")
    assert "\n" not in line and not (tmp_path / "again").exists()
    assert [p.name for p in cache.iterdir()] == ["file-hashes.json"]  # hashed, nothing extracted


def test_an_image_relabelled_or_in_another_split_is_refused(shared_run):
    """A manifest can change an image's label or split and keep its path and bytes: that is other data too."""
    from dataclasses import replace

    from xrayfeat.data.datasets import discover
    from xrayfeat.errors import DatasetError
    from xrayfeat.runs.record import read_record
    from xrayfeat.runs.replay import check_data

    record, dataset = read_record(shared_run.path), discover(shared_run.data)
    check_data(record, dataset, "DATA")  # the data as it was: nothing to say
    items = list(dataset.items)
    first_test = next(i for i, item in enumerate(items) if item.split == "test")
    items[0] = replace(items[0], label="b")
    items[first_test] = replace(items[first_test], split="train")
    with pytest.raises(DatasetError, match=r"^DATA: 0 of 18 images changed, 0 missing, 0 added, 1 relabelled, 1 in "
                                           r"another split since the run .*\(relabelled: train/a/a_train_0.png; in "
                                           r"another split: test/a/a_test_0.png\)"):
        check_data(record, replace(dataset, items=tuple(items)), "DATA")
    # an image the run left out as unreadable (--on-error skip) and readable now is other data; one left out is not
    extra = replace(items[1], relpath="train/a/fixed.png")
    with pytest.raises(DatasetError, match=r"0 of 18 images changed, 0 missing, 1 added .*added: train/a/fixed.png"):
        check_data(record, replace(dataset, items=(*dataset.items, extra)), "DATA")
    record.skipped_files = [f"{shared_run.data / 'train/a/fixed.png'}: not an image (empty file)"]
    check_data(record, replace(dataset, items=(*dataset.items, extra)), "DATA")


@pytest.mark.parametrize("content, fragment", [
    ('{"schema": 2, "classes": 3}', "config.json: run record damaged: "),
    ("not json", "config.json: run record damaged: "),
])
def test_a_damaged_config_is_refused_in_one_line(shared_run, tmp_path, content, fragment):
    run = shared_run.copy(tmp_path / "run")
    (run / "config.json").write_text(content)
    _refused(run_cli_here("fit-head", "--config", run / "config.json", "--out", tmp_path / "again"), fragment)
    _refused(run_cli_here("fit-head", "--config", run / "metrics.json"), "not a run's config.json")


def test_the_runs_data_not_found_says_to_pass_where_it_is(shared_run, tmp_path):
    run = _copy_run(shared_run, tmp_path / "run", data=str(tmp_path / "gone"))
    _refused(run_cli_here("fit-head", "--config", run / "config.json", "--out", tmp_path / "again"),
             f"the run's data {tmp_path / 'gone'} is not there; pass the folder or manifest where it is now")


@pytest.mark.parametrize("option, flag", [(["--epochs", "5"], "--epochs"), (["-b", "vgg16"], "--backbone"),
                                          (["--seed", "1"], "--seed"), (["--lr", "0.1"], "--lr"),
                                          (["--device", "cpu"], "--device")])
def test_an_option_that_would_change_the_study_is_refused(shared_run, tmp_path, option, flag):
    proc = run_cli_here("fit-head", "--config", shared_run.path / "config.json", *option, "--out", tmp_path / "x")
    _refused(proc, f"--config runs the recorded study with its own options, and {flag} would change it")


def test_without_config_data_and_backbone_are_still_required(tmp_path):
    _refused(run_cli_here("fit-head", "-b", "vgg16"), "Missing argument 'DATA'")
    _refused(run_cli_here("fit-head", tmp_path), "Missing option '--backbone'")


def test_the_python_call_takes_the_same_and_refuses_the_same(shared_run, tmp_path):
    import xrayfeat as xf
    from xrayfeat.errors import DatasetError

    with pytest.raises(TypeError, match=r"runs the recorded study with its own options; got epochs"):
        xf.fit_head(config=shared_run.path / "config.json", epochs=5)
    with pytest.raises(TypeError, match=r"needs data"):
        xf.fit_head()
    data = shutil.copytree(shared_run.data, tmp_path / "data")
    (data / "test" / "a" / "a_test_1.png").unlink()
    with pytest.raises(DatasetError, match=r"0 of 18 images changed, 1 missing, 0 added"):
        xf.fit_head(data, config=shared_run.path, out=tmp_path / "again", cache_dir=tmp_path / "cache")
