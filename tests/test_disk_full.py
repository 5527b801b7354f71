"""A real full disk (ENOSPC) at every kind of write: one line naming the folder and the fix, exit 1, nothing truncated.

Each case runs in a driver process (this file run as a script) that mounts a small tmpfs in a
private mount namespace (``unshare``: as root, or as a user mapped to root), fills it with a
filler file, runs ``xrayfeat`` on it as a user would and reports what it printed and what it
left. The mount ends with the namespace, when the driver ends, even if the test is killed.
Where no namespace can be made and the test is not root, the cases skip and say why.

TensorFlow starts in two commands only (the extract and the fit-head of
:func:`test_extract_then_fit_head_on_a_full_disk`, and the export case); the other cases are
framework-free commands.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # when run as the driver

from conftest import run_cli, write_tiny_dataset  # noqa: E402

HERE = Path(__file__).resolve()
FEATURES = ("--backbone", "vgg16", "--weights", "none", "--image-size", "32")
NO_SPACE = r"no space left on the device \(\d+\.\d MB free\)"


# --------------------------------------------------------------------------- the driver (in the namespace)


def _fill(disk: Path, leave: int = 0) -> None:
    """Grow ``disk/filler`` until at most ``leave`` bytes are free (0: until a write fails for lack of room)."""
    with open(disk / "filler", "ab") as fh:
        while True:
            free = shutil.disk_usage(disk).free
            if free <= leave:
                return
            try:
                fh.write(b"\0" * min(free - leave, 1 << 16))
                fh.flush()
            except OSError:  # ENOSPC: full
                return


def _cli(*args, stdout=None) -> dict:
    """``xrayfeat ARGS``: its exit status and stderr (stdout to a file when given)."""
    if stdout is None:
        proc = run_cli(*args)
        return {"rc": proc.returncode, "stderr": proc.stderr}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(stdout, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "xrayfeat", *map(str, args)], stdout=fh, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=600)
    return {"rc": proc.returncode, "stderr": proc.stderr}


def _temps(folder: Path) -> list[str]:
    """Temporary files (``.<name>.<random>.tmp*``) left anywhere under ``folder``."""
    return sorted(str(p) for p in folder.rglob(".*.tmp*"))


def _whole(path: Path) -> bool:
    """Whether a run file reads as a whole file of its kind (zip archives, JSON, PNG), without a deep-learning framework."""
    try:
        if path.suffix in (".keras", ".npz"):
            with zipfile.ZipFile(path) as archive:
                return archive.testzip() is None
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                image.load()
    except Exception:  # truncated or damaged
        return False
    return True


def _store_state(cache: Path) -> dict:
    from xrayfeat.store.feature_store import FeatureStore

    [folder] = [p for p in cache.iterdir() if p.is_dir()]
    store = FeatureStore.at(folder)
    return {"verify": store.verify(), "rows": len(store), "temps": _temps(folder)}


def _case_extract_then_fit_head(disk: Path, work: Path, args: dict) -> dict:
    """Extract into a cache whose disk fills mid-run; then, with room, fit-head whose disk fills after head.keras."""
    data, cache, run = Path(args["data"]), disk / "cache", disk / "run"
    out = {}
    _fill(disk, leave=40_000)  # room for the hash cache and a shard or two of the 18 rows, not for all of them
    out["extract"] = _cli("extract", data, *FEATURES, "--cache-dir", cache, "--batch-size", "4")
    out["after_extract"] = _store_state(cache)
    out["verify_cli"] = _cli("cache", "verify", "--cache-dir", cache)
    (disk / "filler").unlink()

    def fill_once_the_head_lands():  # the run's first artifact is written; the next ones find the disk full
        while not (run / "head.keras").exists():
            time.sleep(0.005)
        _fill(disk)

    watcher = threading.Thread(target=fill_once_the_head_lands, daemon=True)
    watcher.start()
    out["fit"] = _cli("fit-head", data, *FEATURES, "--cache-dir", cache, "--out", run, "--epochs", "2",
                      "--units", "16", "--baselines", "logreg", "--n-bootstrap", "0")
    out["after_fit"] = _store_state(cache)
    out["run_files"] = {p.relative_to(run).as_posix(): _whole(p) for p in sorted(run.rglob("*")) if p.is_file()}
    out["run_temps"] = _temps(run)
    out["marker"] = json.loads((run / "INCOMPLETE").read_text()) if (run / "INCOMPLETE").is_file() else None
    out["report"] = _cli("report", run, "--out", work / "report")
    return out


def _case_output(disk: Path, work: Path, args: dict) -> dict:
    """One command whose output goes to the full disk (``args["argv"]``, ``{disk}`` replaced), then what it left."""
    _fill(disk, leave=args["leave"])
    argv = [a.replace("{disk}", str(disk)) for a in args["argv"]]
    stdout = args.get("stdout")
    result = _cli(*argv, stdout=None if stdout is None else disk / stdout)
    result["left"] = sorted(p.relative_to(disk).as_posix() for p in disk.rglob("*") if p.name != "filler")
    result["temps"] = _temps(disk)
    return result


def _case_marker(disk: Path, work: Path, args: dict) -> dict:
    """fit-head's failure on a disk with no room left even for a new marker: the marker is rewritten in place."""
    from xrayfeat.errors import DiskFullError, RunError
    from xrayfeat.fileio import atomic_write
    from xrayfeat.runs import folder
    from xrayfeat.runs.loaded import load_run

    run = folder.new_run_dir(disk / "run", "binary", "vgg16")
    (run / "splits.csv").write_text("path,label,split,sha256\n")
    _fill(disk)
    inode = (run / folder.MARKER).stat().st_ino
    try:
        atomic_write(run / "history.csv", "epoch,loss\n" * 1000)
        raise AssertionError("the write found room on a full disk")
    except DiskFullError as exc:
        error = exc
    folder.abandon_run_dir(run, error)
    try:
        load_run(run)
        refused = None
    except RunError as exc:
        refused = str(exc)
    return {"error": str(error), "marker": json.loads((run / folder.MARKER).read_text()),
            "in_place": (run / folder.MARKER).stat().st_ino == inode, "refused": refused,
            "files": sorted(p.name for p in run.iterdir())}


def _drive(case: str, work: Path, size: str, args: dict) -> None:
    """Mount a ``size`` tmpfs at ``work/disk``, run ``case`` there, write ``work/result.json``, unmount."""
    disk = work / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    try:
        result = globals()[f"_case_{case}"](disk, work, args)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    (work / "result.json").write_text(json.dumps(result))


# --------------------------------------------------------------------------- the tests


@functools.lru_cache(maxsize=1)
def _namespace() -> tuple[list[str] | None, str]:
    """The command prefix under which a process may mount a tmpfs of its own, or None and why there is none.

    ``unshare`` gives a private mount namespace (as root; otherwise with the user
    mapped to root); a root process without ``unshare`` mounts in its own namespace
    and unmounts in a ``finally``.
    """
    root = os.geteuid() == 0
    unshare = shutil.which("unshare")
    candidates = []
    if unshare:
        candidates.append([unshare, "--mount", "--propagation", "private"] if root else [unshare, "-rm"])
    if root:
        candidates.append([])
    why = []
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"xrayfeat-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        for prefix in candidates:
            proc = subprocess.run([*prefix, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{probe}' && umount '{probe}'"],
                                  capture_output=True, text=True, timeout=60)
            if proc.returncode == 0:
                return prefix, ""
            why.append(f"{' '.join(prefix) or 'mount'}: {proc.stderr.strip() or proc.returncode}")
    finally:
        probe.rmdir()
    if not candidates:
        why.append("not root, and no unshare(1) to make a private mount namespace")
    return None, "cannot mount a small tmpfs to fill here (" + "; ".join(why) + ")"


def _on_small_disk(tmp_path: Path, case: str, size: str = "8m", **args) -> dict:
    """Run the driver's ``case`` on a ``size`` tmpfs at ``tmp_path/disk``; its result (skips where no mount is possible)."""
    prefix, why = _namespace()
    if prefix is None:
        pytest.skip(why)
    proc = subprocess.run([*prefix, sys.executable, str(HERE), case, str(tmp_path), size, json.dumps(args)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"driver failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads((tmp_path / "result.json").read_text())


def _assert_one_error_line(result: dict, pattern: str, *, warnings: bool = False) -> None:
    """Exit 1 and ``pattern`` as the one error line: nothing else on stderr but xrayfeat's warnings where expected."""
    stderr = result["stderr"]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    lines = stderr.splitlines()
    assert result["rc"] == 1, stderr
    assert lines and re.fullmatch(pattern, lines[-1]), stderr
    others = lines[:-1]
    assert all(line.startswith("xrayfeat: warning: ") for line in others) if warnings else not others, stderr


def _line(folder: Path, option: str | None = None) -> str:
    other = f" or choose another {option}" if option else ""
    return rf"xrayfeat: error: {re.escape(str(folder))}: {NO_SPACE}; free space there{other}, then re-run"


@pytest.mark.fault
def test_extract_then_fit_head_on_a_full_disk(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    disk = tmp_path / "disk"
    result = _on_small_disk(tmp_path, "extract_then_fit_head", data=str(data))

    # extract: one line naming the store's shards folder, the store as it was: only whole shards, verify clean
    extract = result["extract"]
    pattern = (rf"xrayfeat: error: {re.escape(str(disk / 'cache'))}/vgg16-[^/]+/shards: {NO_SPACE}; "
               rf"free space there or choose another --cache-dir, then re-run; the store is as it was")
    _assert_one_error_line(extract, pattern, warnings=True)
    state = result["after_extract"]
    assert state["verify"] == [] and state["temps"] == [] and state["rows"] < 18, state
    assert result["verify_cli"]["rc"] == 0, result["verify_cli"]

    # fit-head with room again: extraction resumes and completes the store; the run's disk fills after head.keras
    _assert_one_error_line(result["fit"], _line(disk / "run", "--out"), warnings=True)
    assert result["after_fit"] == {"verify": [], "rows": 18, "temps": []}
    assert "head.keras" in result["run_files"] and all(result["run_files"].values()), result["run_files"]
    assert "config.json" not in result["run_files"] and result["run_temps"] == []
    marker = result["marker"]
    assert marker["disk_full"] is True and marker["failed"].startswith(f"the disk was full ({disk / 'run'}: no space")
    report = result["report"]
    assert report["rc"] == 2 and report["stderr"].count("\n") == 1, report
    assert "an incomplete run (fit-head failed before finishing it: the disk was full (" in report["stderr"]
    assert "killed or interrupted" not in report["stderr"]


#: case → (argv with {disk}, bytes left free, stdout file or None, the folder the line names, its option, warnings)
OUTPUTS = {
    "hash-cache": (["extract", "{data}", *FEATURES, "--cache-dir", "{disk}/cache"], 0, None, "cache", "--cache-dir", False),
    "report": (["report", "{run}", "--out", "{disk}/report"], 20_000, None, "report", "--out", False),
    "predict": (["predict", "{run}", "{data}/test", "--out", "{disk}/predictions.csv"], 0, None, "", "--out", True),
    "export": (["export", "{run}", "--out", "{disk}/export"], 200_000, None, "export", "--out", True),
    "explain": (["explain", "{run}", "{data}/test", "--out", "{disk}/explain"], 0, None, "explain", "--out", True),
    "embed": (["embed", "{data}", *FEATURES, "--cache-dir", "{cache}", "--out", "{disk}/map.png"], 0, None, "", "--out",
              True),
    "cache-export": (["cache", "export", "{data}", *FEATURES, "--cache-dir", "{cache}", "--out", "{disk}/features.npz"],
                     0, None, "", "--out", True),
    "phantoms": (["phantoms", "{disk}/phantoms", "--per-class", "10", "--size", "64"], 100_000, None, "phantoms", None,
                 False),
    "stdout": (["cache", "ls", "--cache-dir", "{cache}"], 0, "ls.txt", "ls.txt", None, False),
}


@pytest.mark.fault
@pytest.mark.parametrize("case", list(OUTPUTS))
def test_each_output_on_a_full_disk_is_one_line_and_leaves_nothing_truncated(tmp_path, shared_run, case):
    argv, leave, stdout, named, option, warnings = OUTPUTS[case]
    given = {"{data}": str(shared_run.data), "{run}": str(shared_run.path), "{cache}": str(shared_run.cache)}
    argv = [functools.reduce(lambda a, kv: a.replace(*kv), given.items(), a) for a in argv]
    result = _on_small_disk(tmp_path, "output", argv=argv, leave=leave, stdout=stdout)
    disk = tmp_path / "disk"
    _assert_one_error_line(result, _line(disk / named if named else disk, option), warnings=warnings)
    assert result["temps"] == [], result
    left = {"hash-cache": [], "predict": [], "export": [], "phantoms": [], "stdout": ["ls.txt"], "embed": [],
            "cache-export": []}
    if case in left:
        assert [p for p in result["left"] if p not in ("cache", "explain")] == left[case], result["left"]
    else:  # report, explain: the folder may hold whole figures, but not the file that lists them all
        assert not {"report/report.html", "explain/explain.csv"} & set(result["left"]), result["left"]


@pytest.mark.fault
def test_the_run_marker_says_the_disk_was_full_even_without_room_for_a_new_marker(tmp_path):
    result = _on_small_disk(tmp_path, "marker", size="1m")
    disk = tmp_path / "disk"
    assert re.fullmatch(rf"{re.escape(str(disk / 'run'))}: {NO_SPACE}; free space there, then re-run", result["error"])
    assert result["in_place"], "the marker was replaced: this case is meant to leave no room for a new one"
    assert result["marker"]["disk_full"] is True
    assert result["marker"]["failed"].startswith(f"the disk was full ({disk / 'run'}: no space left on the device")
    assert "the disk was full" in result["refused"] and "killed or interrupted" not in result["refused"]
    assert result["files"] == ["INCOMPLETE", "splits.csv"]


@pytest.mark.parametrize("raised, code", [
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
    (OSError(errno.EFBIG, "File too large"), errno.EFBIG),
    (RuntimeError("Can't decrement id ref count (file write failed: time = Mon Dec  7 05:43:08 2026\n, filename = "
                  "'x.h5', file descriptor = 14, errno = 28, error message = 'No space left on device')"), errno.ENOSPC),
    (OSError("Can't synchronously write data (file write failed: ... errno = 27, error message = 'File too large')"),
     errno.EFBIG),
    (RuntimeError("UNKNOWN: model/variables.data-00000-of-00001.tempstate; No space left on device"), errno.ENOSPC),
    (ValueError("unsupported pixel format"), None),
    (OSError(errno.EACCES, "Permission denied"), None),
], ids=["ENOSPC", "EDQUOT", "EFBIG", "h5py-dealloc", "h5py-write", "tensorflow", "other", "EACCES"])
def test_a_write_that_found_no_room_is_recognised_in_every_library_s_words(raised, code):
    from xrayfeat.fileio import no_room

    assert no_room(raised) == code
    try:  # and through the exception a library raised from it
        try:
            raise raised
        except Exception as inner:
            raise KeyError("wrapped") from inner
    except KeyError as outer:
        assert no_room(outer) == code


def test_a_full_disk_in_the_head_child_is_the_parent_s_one_line(tmp_path):
    from xrayfeat.errors import DiskFullError
    from xrayfeat.fileio import disk_full
    from xrayfeat.models import head_process

    full = disk_full(tmp_path / "run", errno.ENOSPC)  # what the child's atomic head.keras write raises

    class Child:  # the child's answer: its stderr, the failure line last
        backend = "jax"

        def run(self, folder):
            return 1, "some jax log line\n" + head_process._failure_line(full) + "\n"

    with pytest.raises(DiskFullError) as caught:
        head_process._run_child(tmp_path, Child())
    assert str(caught.value) == str(full) and caught.value.errno == errno.ENOSPC


if __name__ == "__main__":  # the driver: CASE WORK SIZE ARGS_JSON
    _drive(sys.argv[1], Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]))
