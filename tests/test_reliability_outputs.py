"""Outputs never overwrite what a run recorded, and one writer at a time per run record.

Every command that writes where its user says (predict, explain, embed, report,
export, cache export) refuses, before any work and in one line (exit 2), a path
in a run folder or a feature cache, however it is spelled (a link, ``..``, a
trailing slash, a path relative to a folder inside the run), except the place it
owns in its own run. Commands that add to a run hold the run's lock and read the
record again under it, so two evaluations at once both land.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import xrayfeat as xf
from xrayfeat.runs.outputs import OutputError
from xrayfeat.runs.lock import RunLockError, run_lock


def _tree(*folders: Path) -> dict:
    """Every file under ``folders`` (links not followed) → its sha256: what must not change."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def place(shared_run, tmp_path, monkeypatch):
    """A copy of the shared run and of its cache side by side, links into both, and the cwd in ``tmp_path``."""
    run = shared_run.copy(tmp_path / "run")
    cache = shared_run.copy_cache(tmp_path / "cache")
    (tmp_path / "runlink").symlink_to(run)
    (tmp_path / "alias.csv").symlink_to(run / "predictions.csv")
    claimed = tmp_path / "claimed"  # a run fit-head is still writing: only its marker so far
    claimed.mkdir()
    (claimed / "INCOMPLETE").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _store(root: Path) -> Path:
    [store] = (root / "cache").glob("*/fingerprint.json")
    return store.parent


#: (id, the --out as given, the refusal after "OUT: ", the folder the test runs from), {run}, {cache}, {store},
#: {shard}, {claimed} and {command} filled in; the path is given relative to the test's folder.
CASES = [
    ("recorded-table", "run/metrics.json",
     "is metrics.json, a file the run {run} recorded; writing there would overwrite it; pass an out= outside the run folder", "."),
    ("the-record", "run/config.json",
     "is config.json, a file the run {run} recorded; writing there would overwrite it; pass an out= outside the run folder", "."),
    ("a-baseline", "run/baselines/logreg.joblib",
     "is baselines/logreg.joblib, a file the run {run} recorded; writing there would overwrite it; pass an out= outside "
     "the run folder", "."),
    ("new-file-in-run", "run/mine.csv",
     "lies inside the run folder {run}, where {command} must not write; pass an out= outside the run folder", "."),
    ("the-run-folder", "run", "is the run folder {run}; pass an out= outside the run folder", "."),
    ("trailing-slash", "run/", "is the run folder {run}; pass an out= outside the run folder", "."),
    ("dot-dot", "run/baselines/../head.keras",
     "is head.keras, a file the run {run} recorded; writing there would overwrite it; pass an out= outside the run folder", "."),
    ("file-with-trailing-slash", "run/metrics.json/",
     "is metrics.json, a file the run {run} recorded; writing there would overwrite it; pass an out= outside the run folder", "."),
    ("linked-folder", "runlink/predictions.csv",
     "is predictions.csv, a file the run {run} recorded; writing there would overwrite it; pass an out= outside the run "
     "folder", "."),
    ("linked-file", "alias.csv",
     "is predictions.csv, a file the run {run} recorded; writing there would overwrite it; pass an out= outside the run "
     "folder", "."),
    ("relative-inside-run", "../predictions.csv",
     "is predictions.csv, a file the run {run} recorded; writing there would overwrite it; pass an out= outside the run "
     "folder", "run/baselines"),
    ("another-evaluation", "run/external/site_b/metrics.json",
     "lies in {run}/external/site_b, where `evaluate --name site_b` records its result; pass an out= outside the run "
     "folder", "."),
    ("embed-map-of-the-run", "run/embed-tsne.png",
     "is embed-tsne.png in the run folder {run}, where only `embed --from-run {run}` draws its maps; pass an out= "
     "outside the run folder", "."),
    ("unfinished-run", "claimed/out", "lies inside the run folder {claimed}, where {command} must not write; pass an "
                                      "out= outside the run folder", "."),
    ("cache-root", "cache", "is the feature cache folder {cache} (its stores and hash memory); pass an out= outside it", "."),
    ("hash-memory", "cache/file-hashes.json",
     "lies inside the feature cache folder {cache} (its stores and hash memory); pass an out= outside it", "."),
    ("new-file-in-cache", "cache/features.npz",
     "lies inside the feature cache folder {cache} (its stores and hash memory); pass an out= outside it", "."),
    ("a-store", "{store}", "is the feature store {store}; pass an out= outside the cache folder {cache}", "."),
    ("a-store-index", "{store}/index.npz",
     "lies inside the feature store {store}; pass an out= outside the cache folder {cache}", "."),
    ("a-store-shard", "{shard}", "lies inside the feature store {store}; pass an out= outside the cache folder {cache}", "."),
]


def _fill(text: str, root: Path, command: str) -> str:
    store = _store(root)
    [shard] = store.glob("shards/*.h5")
    return text.format(run=root / "run", cache=root / "cache", store=store, shard=shard, claimed=root / "claimed",
                       command=command)


def _calls(shared_run, cache: Path):
    """Each command's library call, writing to ``out`` (everything else valid, the cache ``cache``): command → call."""
    from xrayfeat.report.writer import write_report
    from xrayfeat.runs.export import export_run

    data = shared_run.data / "test"
    return {
        "predict": lambda out: xf.predict(shared_run.path, data, out=out, cache_dir=cache),
        "explain": lambda out: xf.explain(shared_run.path, data, out, cache_dir=cache),
        "embed": lambda out: xf.embed(shared_run.data, "vgg16", out=out, weights="none", image_size=32,
                                      cache_dir=cache),
        "report": lambda out: write_report([shared_run.path], out),
        "export": lambda out: export_run(shared_run.path, out),
    }


@pytest.mark.parametrize("given, refusal, cwd", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_writer_refuses_a_run_or_cache_path_in_one_line_and_changes_nothing(shared_run, place, given, refusal,
                                                                                    cwd, monkeypatch):
    given = _fill(given, place, "?") if "{" in given else given
    before = _tree(place / "run", place / "cache", place / "claimed")
    monkeypatch.chdir(place / cwd)
    for command, call in _calls(shared_run, place / "cache").items():
        with pytest.raises(OutputError) as info:
            call(given)
        assert str(info.value) == f"{given}: {_fill(refusal, place, command)}", command
    assert _tree(place / "run", place / "cache", place / "claimed") == before
    assert not (place / cwd / "data_cache").exists()  # refused before the data was discovered


def test_embed_from_a_run_may_draw_its_own_map_but_not_anothers(shared_run, place, monkeypatch):
    """``embed --from-run R`` owns ``R/embed-*.png``: allowed there (under R's lock), refused in another run."""
    from xrayfeat.runs.outputs import check_output

    run = place / "run"
    assert check_output(run / "embed-umap.png", "embed", run=run) == run  # the caller then takes the run's lock
    assert check_output(place / "runlink" / "embed-umap.png", "embed", run=run) == run
    with pytest.raises(OutputError) as info:  # another run's map
        xf.embed(shared_run.data, out=run / "embed-tsne.png", from_run=shared_run.path, cache_dir=shared_run.cache)
    assert str(info.value) == (f"{run / 'embed-tsne.png'}: is embed-tsne.png in the run folder {run}, where only "
                               f"`embed --from-run {run}` draws its maps; pass an out= outside the run folder")
    with pytest.raises(OutputError) as info:  # its own run, but not the file it owns there
        xf.embed(shared_run.data, out=run / "history.csv", from_run=run, cache_dir=shared_run.cache)
    assert str(info.value) == (f"{run / 'history.csv'}: is history.csv, a file the run {run} recorded; writing there "
                               f"would overwrite it; pass an out= outside the run folder, or {run}/embed-*.png")


def test_the_cache_folder_a_command_is_told_to_use_is_a_cache_folder_before_it_exists(shared_run, tmp_path):
    fresh = tmp_path / "fresh"
    line = f"{fresh / 'out.csv'}: lies inside the feature cache folder {fresh} (its stores and hash memory); pass an out= outside it"
    with pytest.raises(OutputError) as info:
        xf.predict(shared_run.path, shared_run.data / "test", out=fresh / "out.csv", cache_dir=fresh)
    assert str(info.value) == line
    with pytest.raises(OutputError) as info:
        xf.embed(shared_run.data, "vgg16", out=fresh / "out.csv", weights="none", image_size=32, cache_dir=fresh)
    assert str(info.value) == line
    assert not fresh.exists()


def test_an_out_holding_a_nul_byte_is_one_line_not_a_traceback(shared_run, tmp_path):
    with pytest.raises(OutputError) as info:
        xf.predict(shared_run.path, shared_run.data / "test", out="pred\0.csv", cache_dir=tmp_path / "cache")
    assert str(info.value) == "'pred\\x00.csv': not a path (it holds a NUL byte); pass another out="


def test_an_evaluation_may_not_write_through_a_link_out_of_its_run(shared_run, place):
    """``RUN/external`` made a link into another run (or out of the run) is refused before any scoring."""
    run, other = place / "run", shared_run.copy(place / "other")
    (run / "external").symlink_to(other)
    with pytest.raises(OutputError) as info:
        xf.evaluate(run, shared_run.data / "test", name="site_b", cache_dir=place / "cache")
    assert str(info.value) == (f"{run / 'external' / 'site_b'}: lies inside the run folder {other}, where evaluate must "
                               f"not write; pass an out= outside the run folder")
    (run / "external").unlink()
    (run / "external").symlink_to(place / "elsewhere", target_is_directory=True)
    with pytest.raises(OutputError) as info:
        xf.evaluate(run, shared_run.data / "test", name="site_b", cache_dir=place / "cache")
    assert str(info.value) == (f"{run / 'external' / 'site_b'}: leads outside the run folder {run} (a link); remove the "
                               f"link, then re-run")


@pytest.mark.parametrize("argv", [
    ("predict", "{run}", "{data}", "--out", "run/metrics.json"),
    ("explain", "{run}", "{data}", "--out", "runlink/"),
    ("embed", "{data}", "--from-run", "run", "--out", "run/history.csv"),
    ("report", "{run}", "--out", "cache"),
    ("export", "{run}", "--out", "run/baselines/.."),
    ("cache", "export", "{data}", "-b", "vgg16", "--weights", "none", "--image-size", "32", "--cache-dir", "cache",
     "--out", "cache/features.npz"),
], ids=["predict", "explain", "embed", "report", "export", "cache-export"])
def test_the_cli_refuses_in_one_line_with_exit_2(shared_run, place, argv):
    from click.testing import CliRunner

    from xrayfeat.cli.main import main

    args = [a.format(run=shared_run.path, data=shared_run.data / "test") for a in argv]
    result = CliRunner().invoke(main, args)
    out = args[args.index("--out") + 1]
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"xrayfeat: error: {out}: "), lines
    assert "pass an --out outside" in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("argv, where", [
    (("fit-head", "{data}", "-b", "vgg16", "--out", "run/again"), "lies inside the run folder"),
    (("fit-head", "{data}", "-b", "vgg16", "--out", "runlink/baselines/more"), "lies inside the run folder"),
    (("fit-head", "{data}", "-b", "vgg16", "--out", "claimed/sub"), "lies inside the run folder"),
    (("fit-head", "{data}", "-b", "vgg16", "--cache-dir", "cache", "--out", "cache"), "is the feature cache folder"),
    (("fit-head", "{data}", "-b", "vgg16", "--out", "{store}/run"), "lies inside the feature store"),
    (("demo", "--quick", "--out", "run/demo"), "lies inside the run folder"),
    (("demo", "--quick", "--out", "cache/demo"), "lies inside the feature cache folder"),
], ids=["fit-head-in-run", "fit-head-through-link", "fit-head-in-claimed", "fit-head-is-cache", "fit-head-in-store",
        "demo-in-run", "demo-in-cache"])
def test_a_new_run_or_study_is_never_made_inside_a_run_or_a_cache(shared_run, place, argv, where):
    from click.testing import CliRunner

    from xrayfeat.cli.main import main

    before = _tree(place / "run", place / "cache", place / "claimed")
    args = [a.format(data=shared_run.data, store=_store(place)) for a in argv]
    result = CliRunner().invoke(main, args)
    out = args[args.index("--out") + 1]
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"xrayfeat: error: {out}: {where}"), lines
    assert _tree(place / "run", place / "cache", place / "claimed") == before  # nothing made, nothing changed


# --------------------------------------------------------------------------- one writer at a time per run record


#: Each child evaluates the run under its own name, and waits after scoring until the other has scored too: both
#: have then read the record before either writes it, which made one result vanish before the run's lock.
EVALUATE_CHILD = """
import sys, time
from pathlib import Path
import xrayfeat as xf
from xrayfeat.runs import external

run, data, cache, name, gate = sys.argv[1:]
scored = external.score_images

def score_then_wait(*args, **kwargs):
    result = scored(*args, **kwargs)
    Path(gate, name).touch()
    deadline = time.monotonic() + 60
    while len(list(Path(gate).iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    return result

external.score_images = score_then_wait
xf.evaluate(run, data, name=name, cache_dir=cache)
"""


@pytest.mark.fault
def test_two_evaluations_at_once_both_land_in_the_record_and_the_report(shared_run, tmp_path):
    from xrayfeat.report.writer import write_report

    run = shared_run.copy(tmp_path / "run")
    cache = shared_run.copy_cache(tmp_path / "cache")
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    children = [subprocess.Popen([sys.executable, "-c", EVALUATE_CHILD, str(run), str(shared_run.data / "test"),
                                  str(cache), name, str(gate)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
                for name in ("site_a", "site_b")]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
    record = xf.load_run(run).record
    assert sorted(record.external) == ["site_a", "site_b"]
    for name in ("site_a", "site_b"):
        for part in ("metrics", "predictions", "confusion", "roc", "calibration"):
            record.read_bytes(f"external/{name}/{part}")  # recorded, present, and its sha256 matches
    report = write_report([run], tmp_path / "report")
    text = Path(report["markdown"]).read_text()
    assert "site_a" in text and "site_b" in text


#: Holds the run's lock until killed.
HOLDER_CHILD = """
import sys, time
from xrayfeat.runs.lock import run_lock
with run_lock(sys.argv[1], "evaluate"):
    print("held", flush=True)
    time.sleep(120)
"""


class _Said(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_a_held_run_lock_is_waited_for_visibly_and_for_a_bounded_time_and_dies_with_its_holder(shared_run, tmp_path):
    run = shared_run.copy(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_CHILD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        said = _Said()
        logging.getLogger("xrayfeat").addHandler(said)
        try:
            started = time.monotonic()
            with pytest.raises(RunLockError) as info:
                with run_lock(run, "evaluate", timeout=0.3):
                    pass
            waited = time.monotonic() - started
        finally:
            logging.getLogger("xrayfeat").removeHandler(said)
        who = f"evaluate (pid {holder.pid} on {socket.gethostname()}, since "
        assert 0.3 <= waited < 5
        assert str(info.value).startswith(f"{run}: {who}")
        assert str(info.value).endswith("has been writing this run for more than 0.3 s; wait for it to finish "
                                        "(or stop it), then re-run")
        assert info.value.exit_code == 1
        assert len(said.lines) == 1 and said.lines[0].startswith(f"{run}: waiting for {who}")
        assert said.lines[0].endswith("to finish writing this run (at most 0.3 s)")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    started = time.monotonic()
    with run_lock(run, "evaluate", timeout=5):  # the dead holder's lock went with it
        assert json.loads((run / "write.lock").read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 1
    assert (run / "write.lock").read_text() == ""  # released: it names nobody
    xf.load_run(run)  # the lock file does not make the run unreadable


def test_a_run_lock_names_its_holder_once_and_its_own_thread_asking_again_is_refused_at_once(tmp_path):
    """The run's lock is the store's lock with a command: one record of the holder (pid, host, thread, command)."""
    from xrayfeat.runs.lock import RUN_LOCK, lock_holder
    from xrayfeat.store.locks import LockedBySelfError, holder

    folder = tmp_path / "run"
    folder.mkdir()
    with run_lock(folder, "evaluate"):
        info = holder(folder / RUN_LOCK)
        assert info["command"] == "evaluate" and info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert "thread" in info and "since" in info
        assert lock_holder(folder).startswith(f"evaluate (pid {os.getpid()} on {socket.gethostname()}, since ")
        with pytest.raises(LockedBySelfError, match="already locked by this thread"):
            with run_lock(folder, "embed", timeout=60):  # without the refusal: a 60 s wait, then RunLockError
                pass
    assert (folder / RUN_LOCK).read_text() == ""  # released: it names nobody
