"""The library works whatever calls it: a script without a main guard, ``python -``, ``python -c``, IPython.

Each case runs a real interpreter as a user would, with a timeout, so a hang
fails the test instead of hanging the suite. The decode workers are started
(``workers=2``) and give the same features as decoding in one process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tiny_dataset

#: Long enough for TensorFlow's start and a tiny extraction on a busy 2-core machine; a hang takes it all.
TIMEOUT = 240

#: What each caller runs: features with decode workers, saved beside the reference for the test to compare.
SCRIPT = """\
import sys
import numpy as np
import xrayfeat as xf
X, y, meta = xf.features({data!r}, "vgg16", weights="none", image_size=32, cache_dir={cache!r}, workers=2)
np.save({out!r}, X)
print("done", X.shape)
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny data set and its features decoded in this process (workers=0), from their own cache."""
    import xrayfeat as xf

    root = tmp_path_factory.mktemp("callers")
    data = write_tiny_dataset(root / "data", per_split=(("train", 10), ("test", 4)), size=40)
    X, _, _ = xf.features(str(data), "vgg16", weights="none", image_size=32, cache_dir=str(root / "ref-cache"),
                          workers=0)
    return data, X


def _env(tmp: Path) -> dict:
    env = {**os.environ, "TMPDIR": str(tmp)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the library's own default must hold
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def _case(tmp_path, reference):
    data, X = reference
    out = tmp_path / "X.npy"
    code = SCRIPT.format(data=str(data), cache=str(tmp_path / "cache"), out=str(out))
    (tmp_path / "tmp").mkdir()
    return code, out, X


def _check(proc: subprocess.CompletedProcess, out: Path, X: np.ndarray) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done" in proc.stdout
    np.testing.assert_array_equal(np.load(out), X)
    assert "Traceback" not in proc.stderr and "BrokenProcessPool" not in proc.stderr, proc.stderr


def test_a_script_without_a_main_guard_finishes_with_the_same_features(tmp_path, reference):
    code, out, X = _case(tmp_path, reference)
    script = tmp_path / "study.py"
    script.write_text(code)  # no `if __name__ == "__main__":` anywhere
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=tmp_path, env=_env(tmp_path / "tmp"))
    _check(proc, out, X)


def test_a_script_on_standard_input_finishes_with_the_same_features(tmp_path, reference):
    code, out, X = _case(tmp_path, reference)
    proc = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=tmp_path, env=_env(tmp_path / "tmp"))
    _check(proc, out, X)


def test_python_c_finishes_with_the_same_features_and_no_tensorflow_start_up_lines(tmp_path, reference):
    code, out, X = _case(tmp_path, reference)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=tmp_path, env=_env(tmp_path / "tmp"))
    _check(proc, out, X)
    # TensorFlow's C++ start-up lines (cuDNN/cuInit registration, oneDNN notices, absl's banner) stay off
    for noise in ("oneDNN", "cuInit", "cuDNN", "absl::InitializeLog", "tensorflow/core", "I0000", "E0000"):
        assert noise not in proc.stderr, proc.stderr


@pytest.mark.skipif(shutil.which("ipython", path=os.path.dirname(sys.executable)) is None,
                    reason="IPython is not installed")
def test_ipython_finishes_with_the_same_features(tmp_path, reference):
    code, out, X = _case(tmp_path, reference)
    script = tmp_path / "cell.ipy"
    script.write_text(code)
    ipython = shutil.which("ipython", path=os.path.dirname(sys.executable))
    proc = subprocess.run([ipython, "--no-banner", "--quick", str(script)], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=tmp_path, env=_env(tmp_path / "tmp"))
    _check(proc, out, X)


def test_an_embedded_interpreter_whose_executable_is_not_python_still_decodes_in_workers(tmp_path, reference):
    """An embedded interpreter's ``sys.executable`` is its host program: the workers run this installation's Python."""
    code, out, X = _case(tmp_path, reference)
    host = textwrap.dedent("""\
        import sys
        sys.executable = "/bin/false"   # what an application embedding Python may report
        from xrayfeat.extraction import decode_worker
        python = decode_worker.interpreter()
        assert python and python != "/bin/false" and "python" in python, python
        """)
    proc = subprocess.run([sys.executable, "-c", host + code], capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=tmp_path, env=_env(tmp_path / "tmp"))
    _check(proc, out, X)
    assert "decoding in this process" not in proc.stderr  # the workers did start


def test_with_no_interpreter_to_run_decoding_happens_here_with_one_warning(tmp_path, reference):
    code, out, X = _case(tmp_path, reference)
    host = ("from xrayfeat.extraction import decode_worker\n"
            "decode_worker.interpreter = lambda: None\n")
    proc = subprocess.run([sys.executable, "-c", host + code], capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=tmp_path, env=_env(tmp_path / "tmp"))
    _check(proc, out, X)
    assert "decoding in this process: the decode workers cannot start" in proc.stderr


# --------------------------------------------------------------------------- a lock held by one's own process tree


def test_a_lock_held_by_the_parent_is_refused_at_once_in_the_child_that_runs_its_script_again(tmp_path):
    """The issue's hang: a script without a main guard holds a store lock and starts a spawned child, which runs
    the script again and asks for the same lock while the parent waits for it. The child now says so at once."""
    lock = tmp_path / "write.lock"
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""\
        import fcntl, multiprocessing
        from xrayfeat.store.locks import flock
        with flock({str(lock)!r}, fcntl.LOCK_EX):   # runs again in the spawned child, as __mp_main__
            child = multiprocessing.get_context("spawn").Process(target=print)
            child.start()
            child.join()
            print("child exit", child.exitcode, flush=True)
        """))
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=_env(tmp_path / "tmp"))
    assert proc.returncode == 0 and "child exit 1" in proc.stdout, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("xrayfeat.store.locks.LockedBySelfError: ") and str(lock) in last, proc.stderr
    assert "which started this one and runs the same script" in last
    assert 'if __name__ == "__main__":' in last


def test_a_lock_held_by_a_parent_that_forked_this_process_is_waited_for(tmp_path):
    """A parent holding the lock may release it (here after a second): its child waits, then takes it."""
    import fcntl
    import time

    from xrayfeat.store.locks import flock

    (tmp_path / "tmp").mkdir()
    lock = tmp_path / "write.lock"
    code = (f"import fcntl, time\nfrom xrayfeat.store.locks import flock\nstart = time.monotonic()\n"
            f"with flock({str(lock)!r}, fcntl.LOCK_EX):\n    print(round(time.monotonic() - start, 1))\n")
    with flock(lock, fcntl.LOCK_EX):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=_env(tmp_path / "tmp"))
        time.sleep(3)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert float(out) >= 1.0  # it waited for the parent, then got the lock


def test_a_lock_held_by_this_process_is_refused_at_once(tmp_path):
    import fcntl

    from xrayfeat.store.locks import LockedBySelfError, flock

    lock = tmp_path / "write.lock"
    with flock(lock, fcntl.LOCK_EX):
        with pytest.raises(LockedBySelfError, match="already locked by this thread"):
            with flock(lock, fcntl.LOCK_EX):
                pass
    assert lock.read_text() == ""  # released: it names nobody
    with flock(lock, fcntl.LOCK_EX):  # free again
        pass


# --------------------------------------------------------------------------- a local Dask cluster needs a main guard

CLUSTER = """\
import xrayfeat as xf
xf.features({data!r}, "vgg16", weights="none", image_size=32, cache_dir={cache!r}, cluster="local:1")
"""


def test_a_local_cluster_from_a_script_without_a_main_guard_is_refused_at_once_saying_what_to_add(tmp_path,
                                                                                                 reference):
    data, _ = reference
    script = tmp_path / "study.py"
    script.write_text(CLUSTER.format(data=str(data), cache=str(tmp_path / "cache")))
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=tmp_path, env=_env(tmp_path / "tmp"))
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert f"which run {script} again: line 2 is not under `if __name__ == \"__main__\":`" in last, proc.stderr
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.h5"))


def test_a_local_cluster_from_a_script_on_standard_input_is_refused_at_once(tmp_path, reference):
    data, _ = reference
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run([sys.executable, "-"], input=CLUSTER.format(data=str(data), cache=str(tmp_path / "cache")),
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path, env=_env(tmp_path / "tmp"))
    assert proc.returncode == 1
    assert "a script read from <stdin> cannot be: save it to a file" in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_a_guarded_call_passes_the_main_guard_check(tmp_path, monkeypatch):
    import types

    from xrayfeat.distributed import session

    script = tmp_path / "guarded.py"
    script.write_text("import xrayfeat\n\nif __name__ == '__main__':\n    x = 1\n    work()\n")
    assert session._guarded(str(script), 5) and not session._guarded(str(script), 1)
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    session.refuse_unguarded_main("local:1")  # not called from the script's top level: nothing to refuse
