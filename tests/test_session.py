"""The Dask session's faults, with stand-ins for Dask's objects where a real cluster is too slow to break on cue.

Which exit a fault gets: a worker that crashed or did not answer is the
cluster's fault (:class:`ClusterError`, exit 1); a cache folder the workers
cannot write, or see, is bad input (exit 2). And nothing leaks: a local
cluster whose client fails is closed, a dead session is closed before another
replaces it. Real clusters are started in ``tests/test_cluster.py``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")

import distributed  # noqa: E402

from xrayfeat.distributed import session as sessions  # noqa: E402
from xrayfeat.errors import ClusterError, XrayfeatError  # noqa: E402

WORKERS = ("tcp://127.0.0.1:40001", "tcp://127.0.0.1:40002")


class FakeClient:
    """What :class:`~xrayfeat.distributed.session.Session` uses of ``distributed.Client``.

    ``answers`` maps a worker to what ``client.run`` gives for it: a callable
    run as Dask would run it there (``write_probe``'s real answer), or an
    exception (the worker crashed or did not answer), returned or raised as
    ``on_error`` asks, as Dask does.
    """

    def __init__(self, answers=None, *, run_error=None, status="running"):
        self.answers = dict({w: None for w in WORKERS} if answers is None else answers)
        self.run_error = run_error
        self.status = status
        self.closed = 0
        self.scheduler = type("Scheduler", (), {"address": "tcp://127.0.0.1:40000"})()
        self.dashboard_link = "http://127.0.0.1:8787/status"
        self.plugins = []  # the names of the worker plugins registered

    def register_plugin(self, plugin, name=None):
        self.plugins.append(name)

    def run(self, function, *args, on_error="raise", **kwargs):
        if self.run_error is not None:
            raise self.run_error
        out = {}
        for worker, answer in self.answers.items():
            if isinstance(answer, BaseException):
                if on_error == "raise":
                    raise answer
                out[worker] = answer
            else:
                out[worker] = function(*args)
        return out

    def scheduler_info(self, n_workers=0):
        return {"workers": {w: {} for w in self.answers}, "services": {}}

    def close(self, timeout=None):
        self.closed += 1
        self.status = "closed"


class FakeCluster:
    instances: list = []

    def __init__(self, *args, **kwargs):
        self.closed = 0
        FakeCluster.instances.append(self)

    def close(self, timeout=None):
        self.closed += 1


@pytest.fixture
def fake_dask(monkeypatch):
    """``distributed.LocalCluster`` and ``distributed.Client`` replaced; the clients made, and the clusters."""
    made = []
    FakeCluster.instances = []

    def client(*args, **kwargs):
        made.append(FakeClient())
        return made[-1]

    monkeypatch.setattr(distributed, "LocalCluster", FakeCluster)
    monkeypatch.setattr(distributed, "Client", client)
    return made, FakeCluster.instances


def test_a_worker_that_crashes_during_the_shared_folder_check_is_a_cluster_fault(tmp_path):
    crashed = distributed.comm.CommClosedError("in <TCP (closed) ...>: Stream is closed")
    live = sessions.Session("tcp://127.0.0.1:40000", FakeClient({WORKERS[0]: None, WORKERS[1]: crashed}))
    with pytest.raises(ClusterError) as info:
        live.check_shared(tmp_path / "cache")
    assert info.value.exit_code == 1
    message = str(info.value)
    assert "\n" not in message and f"Dask worker {WORKERS[1]}" in message
    assert "CommClosedError" in message and "run the same command again" in message
    assert not list((tmp_path / "cache").glob(".xrayfeat-probe-*"))  # the probes are cleaned up
    assert tmp_path / "cache" not in live.shared


@pytest.mark.parametrize("error", [OSError("Timed out trying to connect"), TimeoutError("no answer in 30 s"),
                                   distributed.comm.CommClosedError("Stream is closed")],
                         ids=["OSError", "TimeoutError", "CommClosedError"])
def test_a_cluster_that_does_not_answer_the_check_is_a_cluster_fault(tmp_path, error):
    live = sessions.Session("tcp://127.0.0.1:40000", FakeClient(run_error=error))
    with pytest.raises(ClusterError) as info:
        live.check_shared(tmp_path / "cache")
    assert info.value.exit_code == 1 and type(error).__name__ in str(info.value)


def test_a_worker_answering_something_else_is_a_cluster_fault(tmp_path):
    client = FakeClient()
    client.run = lambda function, *args, **kwargs: {WORKERS[0]: "not a probe answer"}
    with pytest.raises(ClusterError, match=f"Dask worker {WORKERS[0]} .*answered"):
        sessions.Session("tcp://127.0.0.1:40000", client).check_shared(tmp_path / "cache")


def test_no_worker_answering_is_a_cluster_fault(tmp_path):
    client = FakeClient()
    client.run = lambda function, *args, **kwargs: {}
    with pytest.raises(ClusterError, match="no Dask worker answered"):
        sessions.Session("tcp://127.0.0.1:40000", client).check_shared(tmp_path / "cache")


def test_a_folder_the_workers_cannot_write_is_bad_input(tmp_path, monkeypatch):
    def cannot_write(folder, token, dask_worker=None):
        return {"host": "node7", "file": "node7-1", "error": "Read-only file system"}

    monkeypatch.setattr(sessions, "write_probe", cannot_write)
    with pytest.raises(XrayfeatError) as info:
        sessions.Session("tcp://127.0.0.1:40000", FakeClient()).check_shared(tmp_path / "cache")
    assert not isinstance(info.value, ClusterError) and info.value.exit_code == 2
    assert "cannot write there (Read-only file system)" in str(info.value)


def test_every_worker_writing_its_probe_passes_once(tmp_path):
    live = sessions.Session("tcp://127.0.0.1:40000", FakeClient({WORKERS[0]: None}))
    live.check_shared(tmp_path / "cache")
    assert (tmp_path / "cache").resolve() in live.shared
    assert not list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("error", [OSError("could not connect"), TimeoutError("timed out"), RuntimeError("boom")],
                         ids=["OSError", "TimeoutError", "RuntimeError"])
def test_a_local_cluster_is_closed_when_its_client_fails(monkeypatch, error):
    FakeCluster.instances = []

    def failing_client(*args, **kwargs):
        raise error

    monkeypatch.setattr(distributed, "LocalCluster", FakeCluster)
    monkeypatch.setattr(distributed, "Client", failing_client)
    with pytest.raises(ClusterError) as info:
        sessions.session("local:2")
    assert info.value.exit_code == 1 and "local Dask cluster" in str(info.value)
    [cluster] = FakeCluster.instances
    assert cluster.closed == 1
    assert "local:2" not in sessions._SESSIONS


def test_a_local_cluster_that_cannot_start_is_a_cluster_fault(monkeypatch):
    def failing_cluster(*args, **kwargs):
        raise OSError("Address already in use")

    monkeypatch.setattr(distributed, "LocalCluster", failing_cluster)
    with pytest.raises(ClusterError, match="Address already in use"):
        sessions.session("local:2")


def test_a_dead_session_is_closed_before_it_is_replaced(monkeypatch, fake_dask):
    made, clusters = fake_dask
    dead_client, dead_cluster = FakeClient(status="closed"), FakeCluster()
    dead = sessions.Session("local:2", dead_client, dead_cluster)
    monkeypatch.setitem(sessions._SESSIONS, "local:2", dead)
    live = sessions.session("local:2")
    assert live is not dead and live.client is made[-1] and sessions._SESSIONS["local:2"] is live
    assert dead_client.closed == 1 and dead_cluster.closed == 1
    assert sessions.session("local:2") is live  # a live one is kept
    assert live.client.closed == 0
    assert live.client.plugins == ["xrayfeat-die-with-parent"]  # its own workers die with this process


def test_a_session_without_workers_closes_what_it_started(monkeypatch, fake_dask):
    made, clusters = fake_dask

    def empty_client(*args, **kwargs):
        made.append(FakeClient({}))
        return made[-1]

    monkeypatch.setattr(distributed, "Client", empty_client)
    with pytest.raises(ClusterError, match="has no workers"):
        sessions.session("local:2")
    assert made[-1].closed == 1 and clusters[-1].closed == 1
