"""Extraction on a Dask cluster, as a user runs it: the CLI with --cluster, against single-process extraction.

Each test starts real Dask processes: a 2-worker ``LocalCluster`` (``local:2``),
or a ``dask scheduler`` and ``dask worker`` started here as a user would. The
checks are the issue's: the same ``cache export`` as one process, a worker
killed mid-run, a cache folder a worker cannot see (a worker in its own mount
namespace, with a private folder mounted over the cache's path), and a lost
scheduler.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_tiny_dataset

pytestmark = pytest.mark.slow

N_IMAGES = 36
FEATURES = ("-b", "vgg16", "--weights", "none", "--image-size", "32")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("cluster") / "data", per_split=(("train", 12), ("test", 6)))


@pytest.fixture(scope="module")
def reference(data) -> dict:
    """The single-process extraction's ``cache export``: what every cluster run must reproduce."""
    cache = data.parent / "single"
    proc = run_cli("extract", data, *FEATURES, "--cache-dir", cache, "--batch-size", "2", "--workers", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["extracted"] == N_IMAGES
    return export(data, cache, data.parent / "single.npz")


def export(data: Path, cache: Path, out: Path) -> dict:
    proc = run_cli("cache", "export", data, *FEATURES, "--cache-dir", cache, "--out", out)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as arrays:
        return {key: arrays[key] for key in arrays.files}


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b) == {"sha256", "path", "label", "split", "pooled", "spatial"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # bitwise: same backend, same precision


def stored_rows(cache: Path) -> int:
    """Rows in every shard file of the one store (a row stored twice counts twice)."""
    from xrayfeat.store import shards

    return sum(shards.stored_rows(path) for path in cache.glob("*/shards/*.h5"))


def extract_cmd(data: Path, cache: Path, cluster: str, *extra) -> list[str]:
    return [sys.executable, "-m", "xrayfeat", "extract", str(data), *FEATURES, "--cache-dir", str(cache),
            "--batch-size", "2", "--cluster", cluster, *extra]


def wait_for_shards(cache: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    """Wait until ``n`` shards are committed (or the run ends); how many there are."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = len(list(cache.glob("*/shards/*.h5")))
        if found >= n:
            return found
        time.sleep(0.02)
    return len(list(cache.glob("*/shards/*.h5")))


def worker_processes(parent: int) -> list[int]:
    """The Dask worker processes a ``local:N`` run started (its spawned children)."""
    import psutil

    return [child.pid for child in psutil.Process(parent).children(recursive=True)
            if "spawn_main" in " ".join(child.cmdline())]


LOADED = (  # runs the CLI, then prints which deep-learning frameworks this process imported
    "import sys, json; from xrayfeat.cli.main import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
    "print(json.dumps({'code': code, 'loaded': sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') "
    "if m in sys.modules)}))"
)


@pytest.mark.fault
def test_local_cluster_equals_one_process_even_with_a_worker_killed_mid_run(tmp_path, data, reference):
    """``local:2`` against one process, with one of its two workers killed by SIGKILL once two chunks are in."""
    cache = tmp_path / "cache"
    args = extract_cmd(data, cache, "local:2", "--chunk-images", "2", "--json")[3:]
    proc = subprocess.Popen([sys.executable, "-c", LOADED, *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_shards(cache, 2, proc) >= 2 and proc.poll() is None, "the run ended before a worker was killed"
        workers = worker_processes(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    result, loaded = map(json.loads, out.strip().splitlines())
    assert loaded == {"code": 0, "loaded": []}, err  # the workers compute; this process imports no framework
    assert (result["extracted"], result["reused"], result["skipped"]) == (N_IMAGES, 0, 0)
    assert result["cluster"]["cluster"] == "local:2" and result["cluster"]["workers"] == 2
    assert result["cluster"]["dashboard"].startswith("http://")
    # stderr holds xrayfeat's lines only, a killed worker included: random weights, the cluster, the summary
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "RANDOM weights" in lines[0], lines
    assert lines[1].startswith("Dask: 2 worker(s), scheduler tcp://127.0.0.1:") and "dashboard http://" in lines[1]
    assert f"{N_IMAGES} images, {N_IMAGES} extracted" in lines[2]
    # the killed worker's chunk was computed again: every row, once, bitwise what one process computes
    assert_same(export(data, cache, tmp_path / "cluster.npz"), reference)
    assert stored_rows(cache) == N_IMAGES
    assert not any(cache.glob("*/incoming/*"))
    assert run_cli("cache", "verify", "--cache-dir", cache).returncode == 0
    again = run_cli(*extract_cmd(data, cache, "local:2", "--json")[3:])
    assert again.returncode == 0 and json.loads(again.stdout)["reused"] == N_IMAGES


def decode_processes(parent: int) -> list:
    """The decode pool's processes below ``parent`` (psutil processes)."""
    import psutil

    found = []
    for child in psutil.Process(parent).children(recursive=True):
        try:
            if "xrayfeat.extraction.decode_worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # it ended meanwhile
            pass
    return found


def ended(processes: list, timeout: float) -> bool:
    """Whether every one of ``processes`` ends (or is a zombie) within ``timeout`` seconds."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in processes):
                return True
        except psutil.Error:
            continue  # one ended between the two questions: ask again
        time.sleep(0.05)
    return False


@pytest.mark.fault
def test_a_worker_decodes_with_a_pool_a_killed_decode_process_fails_in_one_line_and_a_rerun_resumes(tmp_path, data,
                                                                                                     reference):
    """``local:1``: the worker decodes its chunks with its default pool; killing it fails the run in one line; the
    rerun resumes, and when its worker is killed the worker's pool ends with it; the rows equal one process's."""
    cache = tmp_path / "cache"
    proc = subprocess.Popen(extract_cmd(data, cache, "local:1", "--chunk-images", "2"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_shards(cache, 2, proc) >= 2 and proc.poll() is None, "the run ended before its pool was killed"
        pool = decode_processes(proc.pid)
        assert pool, "the worker decodes in its own thread, not in a pool"
        for process in pool:  # stopped first: the chunk that runs (or is about to) waits on them, then they die
            process.send_signal(signal.SIGSTOP)
        time.sleep(1)
        for process in pool:
            process.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    lines = [line for line in err.strip().splitlines() if "RANDOM weights" not in line and line.startswith("xrayfeat")]
    assert len(lines) == 1, err
    assert lines[0].startswith("xrayfeat: error: Dask worker on ") and \
        ": a decode worker was killed by SIGKILL while decoding " in lines[0] and "rerun to resume" in lines[0], lines
    committed = stored_rows(cache)
    assert 2 <= committed < N_IMAGES

    proc = subprocess.Popen(extract_cmd(data, cache, "local:1", "--chunk-images", "2", "--json"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (pool := decode_processes(proc.pid)) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert pool and proc.poll() is None, "the rerun ended before its pool was seen"
        [worker] = worker_processes(proc.pid)
        os.kill(worker, signal.SIGKILL)
        assert ended(pool, 5), "the decode pool outlived its Dask worker"
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert (result["extracted"], result["reused"]) == (N_IMAGES - committed, committed)
    assert_same(export(data, cache, tmp_path / "cluster.npz"), reference)
    assert stored_rows(cache) == N_IMAGES and not any(cache.glob("*/incoming/*"))


@pytest.fixture
def scheduler(tmp_path):
    """A ``dask scheduler`` on a free port; yields (address, the scheduler file, started processes)."""
    dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    if dask is None:
        pytest.skip("the dask command is not installed")
    file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([dask, "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file", str(file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.time() + 60
    while not file.exists() and time.time() < deadline:
        time.sleep(0.1)
    address = json.loads(file.read_text())["address"]
    try:
        yield address, file, procs, dask
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def start_worker(scheduler_file: Path, dask: str, *prefix: str) -> subprocess.Popen:
    return subprocess.Popen([*prefix, dask, "worker", "--scheduler-file", str(scheduler_file), "--nworkers", "1",
                             "--nthreads", "1", "--no-dashboard"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_workers(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(n, timeout=120)


def test_a_cache_folder_a_worker_cannot_see_is_refused_in_one_line(tmp_path, data, scheduler):
    address, file, procs, dask = scheduler
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--mount", "--map-root-user", "true"], capture_output=True)
    if unshare is None or probe.returncode != 0:
        pytest.skip("needs unshare(1) with user and mount namespaces, to give a worker its own view of the folder")
    cache = tmp_path / "cache"
    cache.mkdir()
    # the worker sees a private, empty folder at the cache's path: another machine's local disk
    procs.append(start_worker(file, dask, unshare, "--mount", "--map-root-user", "sh", "-c",
                              f'mount -t tmpfs none "{cache}" && exec "$0" "$@"'))
    wait_workers(address, 1)
    proc = run_cli(*extract_cmd(data, cache, address)[3:])
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"xrayfeat: error: {cache}: not the same folder for Dask worker tcp://"), line
    assert "mounts at the same path" in line
    assert not any(cache.glob("*/shards/*")) and not any(cache.glob(".xrayfeat-probe-*"))


@pytest.mark.fault
def test_a_lost_scheduler_fails_in_one_line_and_a_rerun_resumes(tmp_path, data, scheduler):
    address, file, procs, dask = scheduler
    procs.append(start_worker(file, dask))
    wait_workers(address, 1)
    cache = tmp_path / "cache"
    proc = subprocess.Popen(extract_cmd(data, cache, address, "--chunk-images", "1"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_shards(cache, 2, proc) >= 2 and proc.poll() is None, "the run ended before the scheduler died"
        procs[0].kill()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    lines = [line for line in err.strip().splitlines() if "RANDOM weights" not in line and line.startswith("xrayfeat")]
    assert len(lines) == 1 and lines[0].startswith(f"xrayfeat: error: lost the Dask scheduler at {address}"), err
    assert "run the same command again to resume" in lines[0]
    assert "distributed" not in err  # Dask's own log lines stay off the terminal
    committed = stored_rows(cache)
    assert 2 <= committed < N_IMAGES
    # resumed here, without the cluster (the same batch size: a backbone's float rounding depends on it)
    rerun = run_cli("extract", data, *FEATURES, "--cache-dir", cache, "--batch-size", "2", "--json")
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert (result["extracted"], result["reused"]) == (N_IMAGES - committed, committed)


def test_a_bad_cluster_value_exits_2_before_any_work(tmp_path, data):
    proc = run_cli("extract", data, *FEATURES, "--cache-dir", tmp_path / "cache", "--cluster", "local:0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "xrayfeat: error: The 'cluster' parameter of RunOptions must be 'local:N' with N >= 1, or a scheduler "
        "address such as 'tcp://HOST:PORT' or None. Got 'local:0' instead."]
    assert not (tmp_path / "cache").exists()


def test_baselines_grid_searches_on_dask_choose_and_predict_as_on_local_cores():
    from xrayfeat.models.baselines import fit_baselines
    from xrayfeat.distributed.session import close_sessions, joblib_backend, session

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    pooled = (rng.normal(size=(60, 12)) + y[:, None] * 0.8).astype(np.float32)
    fit = dict(pooled_train=pooled, pixels_train=None, y_train=y, groups=None, seed=0, class_weight="none")
    local, _ = fit_baselines(("logreg",), 1 << 30, n_jobs=1, **fit)
    live = session("local:2")
    try:
        with joblib_backend(live):
            on_dask, _ = fit_baselines(("logreg",), 1 << 30, n_jobs=-1, **fit)
        tasks = live.client.run(lambda dask_worker: dask_worker.state.executed_count)
    finally:
        close_sessions()
    assert sum(tasks.values()) > 0  # the search's fits ran on the workers
    timeless = [{k: v for k, v in m["logreg"].summary().items() if k != "fit_seconds"} for m in (on_dask, local)]
    assert timeless[0] == timeless[1]  # the same grid point chosen, with the same scores
    np.testing.assert_array_equal(on_dask["logreg"].predict_proba(pooled), local["logreg"].predict_proba(pooled))


def test_a_scheduler_port_is_asked_directly_whether_it_still_listens():
    """A gather can fail before the client notices the scheduler is gone; the port itself is asked then."""
    import socket

    from xrayfeat.distributed.session import _listens

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    address = "tcp://127.0.0.1:%d" % server.getsockname()[1]
    assert _listens(address)
    server.close()
    assert not _listens(address)
    assert _listens("inproc://somewhere/1/2")
