"""The Dask path's own pieces (chunk jobs sent, computed, committed), with an in-process stand-in for the session.

tests/test_cluster.py runs the real thing on a LocalCluster (slow); here the
session's ``map`` calls each job in this process, so the chunk jobs, their
staged shards, the commit and the decode failures they report are checked in
seconds, against single-process extraction.
"""

from __future__ import annotations

import numpy as np
import pytest

from xrayfeat.data.datasets import discover
from xrayfeat.extraction.pipeline import extract
from xrayfeat.extraction.selection import open_store
from xrayfeat.options.settings import FeatureOptions, RunOptions

OPTIONS = FeatureOptions("vgg16", weights="none", image_size=32)


class _InProcess:
    """What extraction asks of a :class:`~xrayfeat.distributed.session.Session`, run here, job by job."""

    scheduler = "inproc://stand-in"

    def __init__(self):
        self.jobs = 0

    def check_shared(self, folder):
        pass

    def workers(self):
        return ["inproc://worker"]

    def host_threads(self):
        return {"inproc://worker": 1}

    def prepare(self, name, function, *args):
        function(*args)

    def map(self, function, jobs, *, on_result, what="chunk"):
        for job in jobs:
            self.jobs += 1
            on_result(job, function(job))

    def describe(self):
        return {"cluster": "local:1", "scheduler": self.scheduler, "workers": 1, "dashboard": None}


@pytest.fixture
def in_process(monkeypatch):
    from xrayfeat.distributed import session

    live = _InProcess()
    monkeypatch.setattr(session, "session", lambda address, announce=False: live)
    return live


def test_chunks_skip_and_remember_a_corrupt_file_as_one_process_does(tmp_path, tiny_data, in_process):
    bad = tiny_data / "train" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    dataset = discover(tiny_data)
    single = RunOptions(cache_dir=tmp_path / "single", workers=0, batch_size=2, on_error="skip")
    chunked = RunOptions(cache_dir=tmp_path / "chunked", workers=0, batch_size=2, on_error="skip",
                         cluster="local:1", chunk_images=5)
    [one] = extract(dataset, OPTIONS, single)
    [many] = extract(dataset, OPTIONS, chunked)
    assert in_process.jobs == 4 and many.cluster["workers"] == 1  # 19 images in chunks of 5
    assert (many.extracted, many.skipped, many.remembered) == (one.extracted, one.skipped, 0) == (18, 1, 0)
    assert many.skipped_reasons == one.skipped_reasons
    good = [item.sha256 for item in dataset.items if item.path != bad]
    a = open_store(OPTIONS, tmp_path / "single").read(good)
    b = open_store(OPTIONS, tmp_path / "chunked").read(good)
    for part in ("spatial", "pooled"):  # a skipped file shifts later images to other places in their batches
        np.testing.assert_allclose(a[part], b[part], rtol=2e-3, atol=1e-4)
    assert not list((tmp_path / "chunked").glob("*/incoming/*"))  # every staged shard was adopted

    [again] = extract(dataset, OPTIONS, chunked)  # the corrupt file is known: no chunk is sent
    assert in_process.jobs == 4 and (again.extracted, again.skipped, again.remembered) == (0, 1, 1)


def test_a_chunk_decodes_with_a_pool_kept_from_chunk_to_chunk_and_stores_the_same_bits(tmp_path, tiny_data, in_process):
    """A worker's chunks decode in processes (``workers=2``), started once for every chunk, into the rows one thread gives."""
    import psutil

    from xrayfeat.extraction.decoding import end_kept_pools

    dataset = discover(tiny_data)
    runs = {workers: RunOptions(cache_dir=tmp_path / f"w{workers}", workers=workers, batch_size=2, cluster="local:1",
                                chunk_images=6) for workers in (0, 2)}
    started = set()
    real_map = in_process.map

    def map_watching_the_pool(function, jobs, *, on_result, what="chunk"):
        def watched(job):
            result = function(job)
            started.update(child.pid for child in psutil.Process().children()
                           if "decode_worker" in " ".join(child.cmdline()))
            return result
        real_map(watched, jobs, on_result=on_result, what=what)

    in_process.map = map_watching_the_pool
    try:
        results = {workers: extract(dataset, OPTIONS, run)[0] for workers, run in runs.items()}
    finally:
        end_kept_pools()
    assert in_process.jobs == 6 and results[0].extracted == results[2].extracted == 18  # 18 images in chunks of 6
    assert len(started) == 2  # one pool of two processes served all three chunks
    a = open_store(OPTIONS, tmp_path / "w0").read(dataset.hashes)
    b = open_store(OPTIONS, tmp_path / "w2").read(dataset.hashes)
    for part in ("spatial", "pooled"):
        np.testing.assert_array_equal(a[part], b[part], err_msg=part)


def test_a_task_decodes_with_its_share_of_its_machines_cores(monkeypatch):
    """The default pool: the cores a worker may run on ÷ the Dask threads of the session's workers on its machine."""
    import os
    from types import SimpleNamespace

    import distributed

    from xrayfeat.distributed.session import Session, task_cores

    workers = {"tcp://gpu:1": {"host": "gpu", "nthreads": 1},  # one GPU worker alone on its machine
               "tcp://cpu:1": {"host": "cpu", "nthreads": 2}, "tcp://cpu:2": {"host": "cpu", "nthreads": 2}}
    client = SimpleNamespace(scheduler=SimpleNamespace(address="tcp://scheduler:8786"),
                             scheduler_info=lambda n_workers=0: {"workers": workers})
    shares = Session("tcp://scheduler:8786", client).host_threads()
    assert shares == {"tcp://gpu:1": 1, "tcp://cpu:1": 4, "tcp://cpu:2": 4}

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert task_cores(shares) == 16  # not in a Dask task: every core
    for address, nthreads, expected in (("tcp://gpu:1", 1, 16), ("tcp://cpu:1", 2, 4),
                                        ("tcp://late:1", 4, 4), ("tcp://late:1", 32, 1)):  # joined later: its own threads
        worker = SimpleNamespace(address=address, state=SimpleNamespace(nthreads=nthreads))
        monkeypatch.setattr(distributed, "get_worker", lambda worker=worker: worker)
        assert task_cores(shares) == expected, address
