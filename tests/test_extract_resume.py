"""Extraction that is interrupted or doubled: kill -9 then a rerun, and two extractions into one cache at once.

Both end with the export of one uninterrupted extraction (module fixture). Split from
tests/test_extract.py: each test starts several ``xrayfeat`` processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import run_cli, write_tiny_dataset
from test_extract import assert_same_export, export, extract_cmd


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny dataset both tests extract (neither changes it)."""
    return write_tiny_dataset(tmp_path_factory.mktemp("resume") / "data")


@pytest.fixture(scope="module")
def reference_export(data, tmp_path_factory):
    """One uninterrupted extraction's ``cache export``: what a resumed or a doubled extraction must reproduce."""
    fresh = tmp_path_factory.mktemp("reference")
    proc = run_cli(*extract_cmd(data, fresh / "cache")[3:], "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["extracted"] == 18
    return export(data, fresh / "cache", fresh / "fresh.npz")


@pytest.mark.fault
@pytest.mark.parametrize("wait_shards", [2])  # tests/test_store_faults.py kills a writer at 12 more moments
def test_kill_9_then_rerun_gives_the_same_export(tmp_path, data, reference_export, wait_shards):
    cache = tmp_path / "cache"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(extract_cmd(data, cache), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    shards = None
    while time.time() < deadline and proc.poll() is None:
        found = list(cache.glob("*/shards/*.h5")) + list(cache.glob("*/shards/.*.tmp*"))
        if len(found) >= wait_shards:
            shards = found
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert shards, "extraction finished or stalled before it could be killed"
    rerun = run_cli(*extract_cmd(data, cache)[3:], "--json")
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["extracted"] + result["reused"] == 18 and result["extracted"] > 0
    verify = run_cli("cache", "verify", "--cache-dir", cache)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert_same_export(export(data, cache, tmp_path / "resumed.npz"), reference_export)


@pytest.mark.fault
def test_two_extractions_at_once_both_succeed_with_no_row_lost_or_doubled(tmp_path, data, reference_export):
    cache = tmp_path / "cache"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen(extract_cmd(data, cache, "--json"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    results = [json.loads(o[0]) for o in outs]
    assert sorted(r["extracted"] for r in results) == [0, 18]
    assert all(r["extracted"] + r["reused"] == 18 for r in results)
    assert run_cli("cache", "verify", "--cache-dir", cache).returncode == 0
    assert_same_export(export(data, cache, tmp_path / "both.npz"), reference_export)
    from xrayfeat.store.catalog import list_stores

    [store] = list_stores(cache)
    assert len(store) == 18 and store.verify() == []
