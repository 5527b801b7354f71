"""Helpers die with their command, and write only into the run they were started for.

Every helper process (the head's child, the decode pool, joblib's workers, a
local Dask cluster's workers) ends within seconds of its command, whether the
command was interrupted (SIGTERM, SIGHUP: the CLI unwinds as for SIGINT) or
killed (SIGKILL: each helper notices its parent is gone), and its temporary
files go with it. A helper checks the run's claim before each write, so a run
folder deleted and claimed again by a new fit-head is never written by the old
one's helpers. See :mod:`xrayfeat.distributed.lifetime`.

The tests that signal or kill processes carry the ``fault`` marker (``./scripts/test.sh -m fault``; CI runs them).

Processes are followed through ``/proc`` (pid and start time, so a reused pid
is never mistaken for a helper; a zombie counts as ended).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import write_tiny_dataset
from test_headproc import needs_jax
from xrayfeat.distributed.lifetime import Interrupted, WriteGuard, guarded_path, signals_unwind
from xrayfeat.errors import RunError
from xrayfeat.fileio import file_digest
from xrayfeat.runs import folder as run_folder
from xrayfeat.runs.folder import MARKER

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="follows processes through /proc (Linux)")

#: How long every helper may take to end after its command did (the watch polls every 0.2 s).
HELPERS_END_WITHIN = 5.0

#: The one line an interrupted command ends with (the signal named unless it is SIGINT).
INTERRUPTED = "xrayfeat: interrupted by {}; completed batches are kept, rerun to resume"


# --------------------------------------------------------------------------- following processes


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, start time, state) of a process, None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces and ")"
    return int(fields[1]), fields[19], fields[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> dict[tuple[int, str], str]:
    """Every process below ``pid`` now: ``{(pid, start time): command line}``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    found, todo = {}, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        stat = _stat(child)
        if stat is not None:
            found[(child, stat[1])] = _cmdline(child)
            todo += children.get(child, [])
    return found


def _alive(key: tuple[int, str]) -> bool:
    stat = _stat(key[0])
    return stat is not None and stat[1] == key[1] and stat[2] not in ("Z", "X")


def still_running(processes, timeout: float) -> dict:
    """Those of ``processes`` still running after up to ``timeout`` seconds (empty as soon as all ended)."""
    deadline = time.monotonic() + timeout
    while True:
        left = {key: cmd for key, cmd in processes.items() if _alive(key)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _kill_all(processes) -> None:
    """Clean up after a failed test: SIGKILL whatever of ``processes`` still runs."""
    for key in processes:
        if _alive(key):
            try:
                os.kill(key[0], signal.SIGKILL)
            except ProcessLookupError:
                pass


def _env(tmp: Path) -> dict:
    """The environment of a command under test: its temporary files in ``tmp``, which the test then inspects."""
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _start(args, tmp: Path, **kwargs) -> subprocess.Popen:
    """``args`` as a process whose stderr lines a thread collects in ``proc.lines`` (a helper that outlived it
    may hold the pipe open: reading it here could wait forever)."""
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp), **kwargs)
    proc.lines = []

    def pump():
        for line in proc.stderr:
            proc.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc


def _wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            time.sleep(0.5)
            raise AssertionError(f"the command ended (status {proc.returncode}) before {what}:\n{''.join(proc.lines)}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _last_line(proc) -> str:
    """The last stderr line of an ended command (the thread may still be reading what was written last)."""
    time.sleep(0.5)
    return proc.lines[-1].rstrip("\n") if proc.lines else ""


# --------------------------------------------------------------------------- a helper writes only into its run


def _claim_given_up(run: Path) -> None:
    (run / "splits.csv").write_text("written\n")
    run_folder.abandon_run_dir(run, RuntimeError("a bug"))


def _claim_released(run: Path) -> None:  # what write_record does once config.json is written
    (run / "config.json").write_text("{}")
    (run / MARKER).unlink()


def _claimed_again(run: Path) -> None:  # the user follows the advice: delete the folder, run fit-head again
    shutil.rmtree(run)
    run_folder.new_run_dir(run, "binary", "vgg16")


@pytest.mark.parametrize("change", [_claimed_again, _claim_given_up, _claim_released],
                         ids=["deleted-and-claimed-again", "given-up", "finished"])
def test_a_helper_refuses_to_write_into_a_folder_whose_claim_changed(tmp_path, change):
    run = run_folder.new_run_dir(tmp_path / "run", "binary", "vgg16")
    guard = run_folder.claim_guard(run)
    with guarded_path(run / "head.npz", guard) as tmp:
        tmp.write_bytes(b"while the claim holds")
    assert (run / "head.npz").read_bytes() == b"while the claim holds"
    (run / "head.npz").unlink()

    change(run)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RunError) as info:
        with guarded_path(run / "head.keras", guard):
            raise AssertionError("the guard let a write begin")
    assert str(info.value).startswith(f"{run}: no longer the run folder this fit-head was started for")
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written, no temporary left
    # the helper as fit-head starts it: a job for that run is refused before anything is trained
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.json").write_text(json.dumps({"head_file": str(run / "head.keras"), "train": {}, "repeat_seeds": [],
                                              "rows": {}, "guard": guard.to_json()}))
    from xrayfeat.models.head_process import _child_main

    assert _child_main(job) == 1
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_claim_that_changes_while_a_file_is_written_keeps_the_file_out(tmp_path):
    run = run_folder.new_run_dir(tmp_path / "run", "binary", "vgg16")
    guard = run_folder.claim_guard(run)
    with pytest.raises(RunError):
        with guarded_path(run / "head.keras", guard) as tmp:
            tmp.write_bytes(b"half of a head")
            _claimed_again(run)  # meanwhile
    assert sorted(p.name for p in run.iterdir()) == [MARKER]
    assert WriteGuard.from_json(guard.to_json()) == guard


@pytest.mark.fault
def test_a_fit_head_whose_folder_is_claimed_again_meanwhile_writes_nothing_more_there(tmp_path, shared_run,
                                                                                    monkeypatch):
    import xrayfeat as xf
    from xrayfeat.runs import fit as fit_module

    run = tmp_path / "run"
    write_json = fit_module.write_json

    def then_claimed_again(*args, **kwargs):  # metrics.json is written; then the folder is deleted and claimed again
        write_json(*args, **kwargs)
        _claimed_again(run)

    monkeypatch.setattr(fit_module, "write_json", then_claimed_again)
    with pytest.raises(RunError, match="no longer the run folder this fit-head was started for"):
        xf.fit_head(shared_run.data, "vgg16", weights="none", image_size=32, epochs=1, baselines=(), n_bootstrap=50,
                    head_backend="tensorflow", cache_dir=shared_run.copy_cache(tmp_path / "cache"), out=run)
    assert sorted(p.name for p in run.iterdir()) == [MARKER]  # the other claim, untouched: nothing written after it
    assert run_folder.unfinished_state(run)[0] == "running"


@pytest.mark.fault
def test_sigterm_and_sighup_unwind_as_sigint_does():
    for number in (signal.SIGTERM, signal.SIGHUP):
        before = signal.getsignal(number)
        with pytest.raises(Interrupted) as info:
            with signals_unwind():
                os.kill(os.getpid(), number)
                time.sleep(5)  # the handler raises here
        assert isinstance(info.value, KeyboardInterrupt) and info.value.signum == number
        assert signal.getsignal(number) == before  # put back


@pytest.mark.fault
def test_a_second_signal_while_unwinding_ends_the_process_at_once():
    code = textwrap.dedent("""
        import os, signal, time
        from xrayfeat.distributed.lifetime import Interrupted, signals_unwind
        with signals_unwind():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except Interrupted:  # unwinding (stopping helpers, removing files) when the second one comes
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
        print("not ended")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM and proc.stdout == "", proc.stderr


def test_an_interrupted_fit_head_marks_its_run_interrupted(tmp_path):
    run = run_folder.new_run_dir(tmp_path / "run", "binary", "vgg16")
    guard = run_folder.claim_guard(run)
    (run / "splits.csv").write_text("written\n")
    run_folder.abandon_run_dir(run, Interrupted(signal.SIGTERM))
    state, detail = run_folder.unfinished_state(run)
    assert state == "stopped"
    assert detail.startswith(f"fit-head was interrupted by SIGTERM before finishing it; pid {os.getpid()} on ")
    with pytest.raises(RunError):  # and its helpers write nothing more there
        guard.check()


# --------------------------------------------------------------------------- every kind of helper dies with its parent


#: A parent for each kind of helper: it starts them, prints "ready" and waits to be killed.
PARENTS = {
    "decode-pool": """
        import sys, time
        from xrayfeat.extraction.decoding import decoded
        for i, _ in enumerate(decoded(sys.argv[1:], 32, 2, chunk=1, ahead=1)):
            print("ready", flush=True)
            time.sleep(1)  # a slow consumer: the workers stay busy, then wait for more
    """,
    "joblib": """
        import os, time
        from joblib import Parallel, delayed
        from xrayfeat.distributed.session import joblib_backend
        with joblib_backend(None):
            Parallel(n_jobs=2)(delayed(os.getpid)() for _ in range(4))
        print("ready", flush=True)
        time.sleep(120)  # loky keeps its workers for the next call
    """,
    "dask": """
        import time
        from xrayfeat.distributed.session import session
        session("local:1")
        print("ready", flush=True)
        time.sleep(120)
    """,
    "head-child": """
        import time
        from xrayfeat.models.head_process import HeadChild
        print(HeadChild("jax").job_folder(), flush=True)
        print("ready", flush=True)
        time.sleep(120)
    """,
}


@needs_proc
@pytest.mark.fault
@pytest.mark.parametrize("kind", sorted(PARENTS))
def test_helpers_die_with_a_parent_killed_by_sigkill(tmp_path, kind):
    if kind == "head-child":
        pytest.importorskip("jax")
    data = write_tiny_dataset(tmp_path / "data", per_split=(("train", 10),), size=32)
    images = sorted(str(p) for p in data.rglob("*.png"))
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PARENTS[kind]), *images], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path / "tmp"))
    helpers = {}
    try:
        lines = []
        _wait_for(lambda: lines.append(parent.stdout.readline()) or lines[-1] in ("ready\n", ""), 120, "ready")
        assert lines[-1] == "ready\n", parent.stderr.read()
        helpers = _wait_for(lambda: descendants(parent.pid), 30, "the helpers", parent)
        parent.kill()
        parent.wait()
        assert still_running(helpers, HELPERS_END_WITHIN) == {}
        # the head child's job folder went with it; Dask's scratch space is Dask's (it purges a dead worker's
        # folder in it the next time a cluster starts)
        assert [p.name for p in (tmp_path / "tmp").iterdir()] == (["dask-scratch-space"] if kind == "dask" else [])
    finally:
        parent.kill()
        parent.wait()
        _kill_all(helpers)


# --------------------------------------------------------------------------- fit-head killed while its head child trains


def _record_digests(run: Path) -> dict:
    """Every file of a finished run and its sha256, after checking them against the record."""
    record = json.loads((run / "config.json").read_text())
    files = {p.relative_to(run).as_posix(): file_digest(p) for p in run.rglob("*") if p.is_file()}
    for artifact in record["artifacts"].values():
        assert files[artifact["file"]] == artifact["sha256"], artifact["file"]
    return files


@needs_proc
@needs_jax
@pytest.mark.fault
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda n: signal.Signals(n).name)
def test_fit_head_ended_while_its_head_child_trains_leaves_nothing_then_a_rerun_stays_intact(tmp_path, shared_run,
                                                                                             number):
    from click.testing import CliRunner

    from xrayfeat.cli.main import main

    cache = shared_run.copy_cache(tmp_path / "cache")  # every feature is there: the head child starts training at once
    run = tmp_path / "run"
    common = [str(shared_run.data), "-b", "vgg16", "--weights", "none", "--image-size", "32", "--workers", "0",
              "--units", "8", "--baselines", "none", "--n-bootstrap", "50", "--cache-dir", str(cache), "--out", str(run)]
    # long enough to be ended while training, short enough that a surviving child would write head.keras in the test
    first = _start([sys.executable, "-m", "xrayfeat", "-v", "fit-head", *common, "--epochs", "3000",
                    "--head-backend", "jax"], tmp_path / "tmp", start_new_session=True)
    helpers = {}
    try:
        _wait_for(lambda: any("training the head on jax" in line for line in first.lines), 300, "the head child", first)
        time.sleep(3)  # the child has its job and trains (or is still importing Keras)
        helpers = descendants(first.pid)
        assert any("xrayfeat.models.head_process" in cmd for cmd in helpers.values()), helpers
        os.kill(first.pid, number)
        first.wait(timeout=60)
        survivors = still_running(helpers, HELPERS_END_WITHIN)
        left_in_tmp = sorted(p.name for p in (tmp_path / "tmp").iterdir())
        left_in_run = sorted(p.name for p in run.iterdir()) if run.exists() else None
        shutil.rmtree(run, ignore_errors=True)  # what the reader's line advises for an incomplete run

        again = CliRunner().invoke(main, ["fit-head", *common, "--epochs", "2", "--head-backend", "tensorflow"],
                                   catch_exceptions=False)
        assert again.exit_code == 0, again.output
        finished = _record_digests(run)
        # a head child that outlived its command would finish training and write head.keras here: wait for it
        still_running(helpers, 120)
        assert _record_digests(run) == finished

        assert survivors == {}, f"helpers still running {HELPERS_END_WITHIN} s after fit-head ended: {survivors}"
        assert left_in_tmp == []
        if number == signal.SIGKILL:  # an incomplete run, which every reader names (nothing else was written)
            assert first.returncode == -signal.SIGKILL and left_in_run == [MARKER]
        else:  # the command unwound: one line, 128 + the signal, and the folder given back (nothing was written)
            assert first.returncode == 128 + number
            assert _last_line(first) == INTERRUPTED.format(signal.Signals(number).name), first.lines
            assert left_in_run is None
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
        _kill_all(helpers)


# --------------------------------------------------------------------------- extract interrupted while its decode pool runs


@needs_proc
@pytest.mark.fault
def test_sigterm_of_an_extract_leaves_no_decode_worker(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", per_split=(("train", 300),), size=64)
    proc = _start([sys.executable, "-m", "xrayfeat", "extract", data, "-b", "vgg16", "--weights", "none",
                   "--image-size", "32", "--workers", "2", "--cache-dir", tmp_path / "cache"], tmp_path / "tmp")
    helpers = {}
    try:
        def pool():
            found = descendants(proc.pid)
            return found if any("xrayfeat.extraction.decode_worker" in cmd for cmd in found.values()) else None

        helpers = _wait_for(pool, 300, "the decode pool", proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert still_running(helpers, HELPERS_END_WITHIN) == {}
        assert proc.returncode == 128 + signal.SIGTERM, proc.lines
        assert _last_line(proc) == INTERRUPTED.format("SIGTERM"), proc.lines
        assert list((tmp_path / "tmp").iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        _kill_all(helpers)
