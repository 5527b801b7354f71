"""Run folders that are never read wrong: kill -9 during fit-head, two writers, swapped artifacts, HTML payloads.

One real fit-head (module fixture, cheap settings) on a dataset whose class
folders, file names, data folder and run folder carry HTML payloads serves the
report, swap and kill tests; its cache makes the killed fit-head reach training
at once. Every refusal is checked for its exact one line.
"""

from __future__ import annotations

import errno
import html
import json
import multiprocessing
import os
import pickle
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import run_cli, run_cli_here, write_tiny_dataset
from xrayfeat.runs import folder as run_folder
from xrayfeat.runs import record as runs
from xrayfeat.report.writer import write_report
from xrayfeat.errors import RunError
from xrayfeat.runs.folder import MARKER
from xrayfeat.runs.loaded import load_run

#: Class folder names (and so file names: ``<class>_<split>_<i>.png``) a browser would run if not escaped.
SCRIPT = "<script>alert(1)<script>"  # a file name cannot hold "/", so the closing tag cannot be spelt
IMG = "<img src=x onerror=alert(2)> \"q\" 'a' & b"
DATA_NAME = "data <img src=x onerror=alert(3)>"
RUN_NAME = "run \"<script>alert(4)<script>\" & 'x'"
CHEAP = ("-b", "vgg16", "--weights", "none", "--image-size", "32", "--workers", "0", "--n-bootstrap", "50")


@pytest.fixture(scope="module")
def payload_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs-reliability")
    data = write_tiny_dataset(root / DATA_NAME, classes=(SCRIPT, IMG), per_split=(("train", 5), ("test", 3)), size=32)
    run = root / RUN_NAME
    run_cli_here("fit-head", data, *CHEAP, "--epochs", "2", "--baselines", "logreg", "--head-backend", "tensorflow",
            "--cache-dir", root / "cache", "--out", run, check=True)  # in-process head: no second framework to start
    return {"root": root, "data": data, "run": run, "cache": root / "cache"}


def copy_run(payload_run, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(payload_run["run"], copy)
    return copy


def error_line(proc) -> str:
    """The one ``xrayfeat: error:`` line of a failed command (warnings may precede it; nothing may follow)."""
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("xrayfeat: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0].removeprefix("xrayfeat: error: ")


# --------------------------------------------------------------------------- HTML payloads


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_in_class_file_data_and_run_names_is_escaped_in_the_report(payload_run, tmp_path):
    run = payload_run["run"]
    assert load_run(run).classes == [IMG, SCRIPT]  # the payloads went through fit-head as class names
    assert any(SCRIPT in line for line in load_run(run).record.read_bytes("predictions").decode().splitlines()[1:])
    proc = run_cli_here("report", run, "--out", tmp_path / "report")
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "report" / "report.html").read_text()
    for raw in ("<script", "<img src=x", "alert(1)<", "\"q\" 'a'"):
        assert raw not in page
    for payload in (SCRIPT, IMG, DATA_NAME, RUN_NAME):
        assert html.escape(payload, quote=True) in page, payload
    parser = _Tags()
    parser.feed(page)
    assert not [tag for tag, _ in parser.tags if tag == "script"]
    assert not [(tag, name) for tag, attrs in parser.tags for name in attrs if name.startswith("on")]
    assert all(attrs.get("src", "").startswith("data:image/png;base64,") for tag, attrs in parser.tags if tag == "img")
    markdown = (tmp_path / "report" / "report.md").read_text()
    prose = re.sub(r"`[^`]*`", "", markdown)  # a code span shows its text as it is, markup included
    assert "<script" not in prose and "<img src=x" not in prose and "&lt;script>alert(1)" in prose


# --------------------------------------------------------------------------- swapped artifacts


def _append_newline(path: Path) -> None:  # still valid JSON, CSV and PNG: only the sha256 can tell
    path.write_bytes(path.read_bytes() + b"\n")


def _add_zip_member(path: Path) -> None:  # still a valid .keras / .npz archive
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("swapped.txt", "another file")


def _other_joblib(path: Path) -> None:  # a valid joblib file of another object
    import joblib

    joblib.dump({"swapped": True}, path)


READERS = {
    "head": lambda run, data, out: load_run(run).head(),
    "head_arrays": lambda run, data, out: load_run(run).head_arrays(),
    "baseline": lambda run, data, out: load_run(run).baseline("logreg"),
    "predict": lambda run, data, out: load_run(run).predict(data / "test"),
    "metrics": lambda run, data, out: load_run(run).metrics,
    "predictions": lambda run, data, out: load_run(run).predictions(),
    "history": lambda run, data, out: load_run(run).history(),
    "figures": lambda run, data, out: load_run(run).figures,
    "report": lambda run, data, out: write_report([run], out),
}


SWAPS = [  # file, its artifact name, how it is swapped, the public readers that must refuse it
    ("head.keras", "head", _add_zip_member, ("head", "predict")),
    ("head.npz", "head_arrays", _add_zip_member, ("head_arrays", "predict")),
    ("baselines/logreg.joblib", "baseline/logreg", _other_joblib, ("baseline", "predict")),
    ("metrics.json", "metrics", _append_newline, ("metrics", "report")),
    ("predictions.csv", "predictions", _append_newline, ("predictions",)),
    ("history.csv", "history", _append_newline, ("history", "report")),
    ("curves.png", "curves", _append_newline, ("figures", "report")),
]


@pytest.mark.parametrize("file,artifact,swap,readers", SWAPS, ids=[Path(case[0]).name for case in SWAPS])
def test_a_swapped_artifact_is_refused_by_every_reader_in_one_line(payload_run, tmp_path, file, artifact, swap,
                                                                     readers):
    copy = copy_run(payload_run, tmp_path)
    assert runs.read_record(copy).verified(artifact) == copy / file  # before the swap it is the recorded file
    swap(copy / file)
    expected = (f"{copy / file}: sha256 differs from the one recorded in config.json; refusing to read it "
                f"(restore the file or re-run fit-head)")
    for reader in readers:
        with pytest.raises(RunError) as info:
            READERS[reader](copy, payload_run["data"], tmp_path / "report")
        assert str(info.value) == expected, reader
    assert not (tmp_path / "report" / "report.html").exists()


def test_an_untouched_run_loads_its_models_from_the_checked_bytes(payload_run):
    import numpy as np

    run = load_run(payload_run["run"])
    pooled = np.zeros((3, 512), np.float32)  # VGG16 at 32 px: 1x1x512 maps, 512 pooled values
    assert run.head_arrays().predict_proba(pooled.reshape(3, 1, 1, 512)).shape == (3, 2)
    assert run.baseline("logreg").predict_proba(pooled).shape == (3, 2)


class _CreatesFile:
    """Unpickling this object creates ``path``: what a malicious ``.joblib`` could do instead."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_pickle_payload_in_a_swapped_joblib_is_never_unpickled(payload_run, tmp_path):
    import joblib

    control = tmp_path / "control-created"
    joblib.load(_payload_file(tmp_path / "control.joblib", control)).close()
    assert control.is_file()  # the payload does create its file when unpickled
    copy = copy_run(payload_run, tmp_path)
    sentinel = tmp_path / "payload-created"
    _payload_file(copy / "baselines" / "logreg.joblib", sentinel)
    for reader in ("baseline", "predict"):
        with pytest.raises(RunError, match=r"logreg\.joblib: sha256 differs"):
            READERS[reader](copy, payload_run["data"], None)
    assert not sentinel.exists()


def _payload_file(path: Path, creates: Path) -> Path:
    path.write_bytes(pickle.dumps(_CreatesFile(creates)))
    return path


# --------------------------------------------------------------------------- kill -9 and a second writer


def _start_fit_head(payload_run, folder: Path) -> subprocess.Popen:
    """``fit-head -v`` into ``folder``, training far longer than any test waits; its own process group."""
    args = [sys.executable, "-m", "xrayfeat", "-v", "fit-head", payload_run["data"], *CHEAP, "--epochs", "100000",
            "--baselines", "none", "--cache-dir", payload_run["cache"], "--out", folder]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, start_new_session=True)
    proc.lines = queue.Queue()  # its stderr lines as they come (None at the end), by a thread: the pipe never fills

    def pump():
        for line in proc.stderr:
            proc.lines.put(line)
        proc.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc


def _read_until(proc, text: str | None, timeout: float = 300) -> list[str]:
    """``proc``'s stderr lines up to the first holding ``text`` (``None``: up to its end)."""
    seen = []
    while True:
        line = proc.lines.get(timeout=timeout)
        if line is None:
            assert text is None, f"fit-head ended before {text!r}:\n{''.join(seen)}"
            return seen
        seen.append(line)
        if text is not None and text in line:
            return seen


def _kill_group(proc) -> None:
    """SIGKILL to the fit-head (if alive), then to what it left in its process group (the head's trainer)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.fault
def test_two_fit_heads_into_one_out_then_kill_9_during_training(payload_run, tmp_path):
    folder = tmp_path / "contested"
    started = [_start_fit_head(payload_run, folder) for _ in range(2)]
    try:
        deadline = time.monotonic() + 300
        while all(p.poll() is None for p in started):  # the one that loses the claim stops within seconds
            assert time.monotonic() < deadline, "neither fit-head stopped"
            time.sleep(0.1)
        [loser] = [p for p in started if p.poll() is not None]
        [winner] = [p for p in started if p is not loser]
        _read_until(winner, "head backend:")  # logged as training starts (the cache holds every row)
        marker = json.loads((folder / MARKER).read_text())
        writer = f"pid {winner.pid} on {socket.gethostname()}, started {marker['started']}"
        assert loser.returncode == 2 and winner.poll() is None
        refused = _read_until(loser, None)
        assert refused[-1] == (f"xrayfeat: error: {folder}: another fit-head is writing a run into this folder "
                               f"({writer}); choose another --out\n"), refused
        assert sum(line.startswith("xrayfeat: error:") for line in refused) == 1
        with pytest.raises(RunError) as info:
            load_run(folder)
        assert str(info.value) == f"{folder}: fit-head is still writing this run ({writer}); wait for it to finish"
    finally:
        for p in started:
            _kill_group(p)
    assert winner.returncode == -signal.SIGKILL
    assert not (folder / "config.json").exists() and (folder / MARKER).is_file()

    incomplete = f"an incomplete run (fit-head stopped before finishing it: killed or interrupted; {writer})"
    for proc in (run_cli("report", folder, "--out", tmp_path / "report"),
                 run_cli("predict", folder, payload_run["data"] / "test", "--out", tmp_path / "p.csv")):
        assert proc.returncode == 2
        assert error_line(proc) == f"{folder}: {incomplete}; delete the folder and re-run fit-head"
    assert not (tmp_path / "report").exists() and not (tmp_path / "p.csv").exists()
    with pytest.raises(RunError) as info:
        run_folder.new_run_dir(folder, "binary", "vgg16")
    assert str(info.value) == f"{folder}: not empty: it holds {incomplete}; pass overwrite=True or another out="


def test_a_finished_run_is_never_overwritten(payload_run):
    run = payload_run["run"]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(RunError) as info:
        run_folder.new_run_dir(run, "binary", "vgg16")
    assert str(info.value) == f"{run}: not empty: it already holds a finished run; pass overwrite=True or another out="
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # no marker left either


def _claim(folder: str, start, done, results) -> None:
    start.wait()
    try:
        run_folder.new_run_dir(folder, "binary", "vgg16")
        results.put(("claimed", os.getpid()))
        done.wait()  # hold the claim, alive, until every other process has tried
    except RunError as exc:
        results.put(("refused", str(exc)))


def _no_hard_links(*args, **kwargs):
    """``os.link`` on a filesystem without hard links (some FUSE and SMB mounts)."""
    raise OSError(errno.EPERM, "Operation not permitted")


def _claim_without_links(folder: str, start, done, results) -> None:
    os.link = _no_hard_links  # this spawned process only
    _claim(folder, start, done, results)


@pytest.mark.fault
@pytest.mark.parametrize("claim", [_claim, _claim_without_links], ids=["hard-links", "no-hard-links"])
def test_of_concurrent_claims_on_one_folder_exactly_one_wins(tmp_path, claim):
    folder = tmp_path / "contested"
    context = multiprocessing.get_context("spawn")
    n = 4
    start, done, results = context.Barrier(n), context.Event(), context.Queue()
    procs = [context.Process(target=claim, args=(str(folder), start, done, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(n)]
    done.set()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    [winner] = [value for kind, value in outcomes if kind == "claimed"]
    refusals = [value for kind, value in outcomes if kind == "refused"]
    assert len(refusals) == n - 1
    for message in refusals:
        assert message.startswith(f"{folder}: another fit-head is writing a run into this folder (pid {winner} on ")
        assert message.endswith("; pass another out=")  # from Python; the CLI says "choose another --out"
    assert sorted(p.name for p in folder.iterdir()) == [MARKER]  # no staged marker left behind


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV],
                         ids=["EPERM", "ENOTSUP", "EOPNOTSUPP", "EXDEV"])
def test_a_folder_is_claimed_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch, code):
    def no_links(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    claimed = run_folder.new_run_dir(tmp_path / "run", "binary", "vgg16")
    marker = json.loads((claimed / MARKER).read_text())  # complete: the exclusive create wrote it whole
    assert marker["pid"] == os.getpid() and marker["host"] == socket.gethostname()
    assert sorted(p.name for p in claimed.iterdir()) == [MARKER]  # no staged marker left behind
    with pytest.raises(RunError) as info:
        run_folder.new_run_dir(claimed, "binary", "vgg16")
    assert str(info.value).startswith(f"{claimed}: another fit-head is writing a run into this folder (pid {os.getpid()}")
    assert sorted(p.name for p in claimed.iterdir()) == [MARKER]


def test_a_marker_seen_before_its_one_write_lands_is_read_again(tmp_path, monkeypatch):
    """Without hard links the marker exists, empty, until its write lands: a reader waits for it, not calls it damaged."""
    monkeypatch.setattr(os, "link", _no_hard_links)
    claimed = run_folder.new_run_dir(tmp_path / "run", "binary", "vgg16")
    content = (claimed / MARKER).read_bytes()
    (claimed / MARKER).write_bytes(b"")
    writer = threading.Timer(0.05, lambda: (claimed / MARKER).write_bytes(content))
    writer.start()
    try:
        assert run_folder.unfinished_state(claimed)[0] == "running"
    finally:
        writer.join()


# --------------------------------------------------------------------------- failures inside one process


def test_a_failed_fit_head_gives_an_untouched_folder_back_and_marks_a_written_one(tmp_path):
    fresh = run_folder.new_run_dir(tmp_path / "fresh", "binary", "vgg16")
    run_folder.abandon_run_dir(fresh, ValueError("no images"))
    assert not fresh.exists()  # nothing was written: as if fit-head never ran

    written = run_folder.new_run_dir(tmp_path / "written", "binary", "vgg16")
    (written / "metrics.json").write_text("{}")
    run_folder.abandon_run_dir(written, MemoryError("out of\nmemory"))
    with pytest.raises(RunError) as info:
        load_run(written)
    assert str(info.value).startswith(f"{written}: an incomplete run (fit-head failed before finishing it: "
                                      f"MemoryError: out of memory; pid {os.getpid()} on ")
    assert str(info.value).endswith("; delete the folder and re-run fit-head")


def test_run_files_without_a_record_or_marker_are_an_incomplete_run(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "head.keras").write_bytes(b"a head")
    with pytest.raises(RunError) as info:
        load_run(tmp_path / "old")
    assert str(info.value) == (f"{tmp_path / 'old'}: an incomplete run (run files but no config.json: fit-head stopped "
                               f"before finishing it); delete the folder and re-run fit-head")


# --------------------------------------------------------------------------- evaluate: one discovery for Python and the CLI


def _external_site(payload_run, tmp_path) -> tuple[Path, Path, Path]:
    """Another site's labelled images (the run's test images), one of them an empty file; a copy of the run's cache."""
    site = tmp_path / "site_b"
    for folder in sorted((payload_run["data"] / "test").iterdir()):
        shutil.copytree(folder, site / folder.name)
    broken = site / IMG / "broken.png"
    broken.write_bytes(b"")  # cannot be an image
    cache = tmp_path / "cache"
    shutil.copytree(payload_run["cache"], cache)  # the features are there: nothing is computed
    return site, broken, cache


def test_evaluate_in_python_discovers_as_the_cli_does(payload_run, tmp_path):
    from xrayfeat.errors import DatasetError

    copy = copy_run(payload_run, tmp_path)
    site, broken, cache = _external_site(payload_run, tmp_path)
    run = load_run(copy)
    with pytest.raises(DatasetError, match=re.escape(str(broken))):  # on_error="fail", the default
        run.evaluate(site, name="site_b", cache_dir=cache)
    result = run.evaluate(site, name="site_b", cache_dir=cache, on_error="skip")
    assert result.n == 6 and result.excluded == 0
    assert [line.split(": ", 1)[0] for line in result.skipped_files] == [str(broken)]
    remembered = json.loads((cache / "file-hashes.json").read_text())  # the hash memory of the cache folder
    assert {str(p) for p in site.rglob("*.png") if p != broken} <= set(remembered)
    reloaded = load_run(copy)
    assert reloaded.record.external["site_b"]["skipped_files"] == result.skipped_files
    assert reloaded.record.external["site_b"]["n"] == 6


def test_evaluate_in_the_cli_is_the_same_call(payload_run, tmp_path):
    copy = copy_run(payload_run, tmp_path)
    site, broken, cache = _external_site(payload_run, tmp_path)
    proc = run_cli_here("evaluate", copy, site, "--name", "site_b", "--cache-dir", cache, "--json")
    assert proc.returncode == 2 and error_line(proc).startswith(f"{broken}: ")
    proc = run_cli_here("evaluate", copy, site, "--name", "site_b", "--cache-dir", cache, "--on-error", "skip", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 6 and [line.split(": ", 1)[0] for line in result["skipped_files"]] == [str(broken)]


def test_evaluate_skips_a_found_file_that_cannot_be_decoded_as_fit_head_does(payload_run, tmp_path):
    from xrayfeat.errors import ImageReadError

    copy = copy_run(payload_run, tmp_path)
    site, broken, cache = _external_site(payload_run, tmp_path)
    broken.unlink()
    corrupt = site / IMG / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)  # found as a PNG, then not decodable
    run = load_run(copy)
    with pytest.raises(ImageReadError, match=re.escape(str(corrupt))):  # on_error="fail", the default
        run.evaluate(site, name="site_b", cache_dir=cache)
    result = run.evaluate(site, name="site_b", cache_dir=cache, on_error="skip")
    assert result.n == 6 and [line.split(": ", 1)[0] for line in result.skipped_files] == [str(corrupt)]
    recorded = load_run(copy).record.external["site_b"]
    assert recorded["n"] == 6 and recorded["skipped_files"] == result.skipped_files
    predictions = (copy / "external" / "site_b" / "predictions.csv").read_text()
    assert "corrupt.png" not in predictions and len(predictions.strip().splitlines()) == 1 + 6
    proc = run_cli_here("evaluate", copy, site, "--name", "site_c", "--cache-dir", cache, "--on-error", "skip", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [line.split(": ", 1)[0] for line in json.loads(proc.stdout)["skipped_files"]] == [str(corrupt)]
