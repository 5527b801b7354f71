"""Where work runs when it outgrows one process: a Dask cluster (``dask.distributed``).

This module decides *where* things run; what runs stays in the pipeline
modules (extraction decodes, computes and writes a chunk; the study fits
baselines). ``--cluster local:N`` starts a ``LocalCluster`` of N worker
processes on this machine; ``--cluster tcp://HOST:PORT`` joins a scheduler
started with ``dask scheduler`` and fed by ``dask worker`` processes on any
number of machines.

What a user of Dask expects, and what this module promises:

* **One session per address and process.** :func:`session` starts (or joins)
  once; extraction and then the baselines of one ``fit-head`` share it, and it
  closes when the process ends. Its workers, scheduler and dashboard address
  are said once, on stderr for the CLI.
* **A shared cache folder, checked.** Workers write shards straight into the
  store, so ``--cache-dir`` must be the same folder for every worker and for
  this process. :meth:`Session.check_shared` makes every worker write a probe
  file there and reads each one back here before any work is sent, and says
  which worker cannot be reached and how to fix it when one is missing: a folder
  the workers cannot write or see is bad input (exit 2), a worker that crashed or
  did not answer the check a fault of the cluster (:class:`ClusterError`, exit 1).
* **Failure.** A worker that dies mid-task (killed, out of memory, its machine
  gone) has its task run again on another worker by the scheduler; a task that
  kills ``distributed.scheduler.allowed-failures`` workers in a row fails the
  run with one line. Losing the scheduler fails the run with one line (exit 1)
  that says how much was committed; work committed before stays, so running the
  same command again resumes from it.
* **Nothing left running.** A local cluster whose client cannot connect is
  closed before the error is raised, and a session whose scheduler was lost is
  closed before another replaces it. The workers of a local cluster die with
  this process however it ends, SIGKILL included: Dask's own pipe from each
  worker to its parent ends it, and :func:`~xrayfeat.distributed.lifetime.die_with_parent`
  runs on every worker too (the rule every xrayfeat helper follows). A worker's
  scratch folder goes when the cluster closes; after a SIGKILL, Dask removes it
  the next time a cluster starts. joblib's workers on this machine
  (:func:`joblib_backend` without a session) die with this process as well.
* **Quiet.** Dask's own log lines stay off the user's terminal below CRITICAL
  (xrayfeat's one line says what failed; ``silence_logs`` on local workers);
  ``XRAYFEAT_DEBUG=1`` shows them.

``dask.distributed`` is imported only here and only when a cluster is asked
for: without ``--cluster`` nothing changes, and nothing here is imported.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from xrayfeat.errors import ClusterError, XrayfeatError, first_line, one_line
from xrayfeat.distributed.lifetime import die_with_parent
from xrayfeat.options.parsers import parse_cluster

log = logging.getLogger("xrayfeat")

_SESSIONS: dict[str, Session] = {}


@dataclass
class Session:
    """A Dask client and, for ``local:N``, the cluster it started."""

    address: str  # what the user asked for: local:N or the scheduler's address
    client: object
    cluster: object | None = None
    shared: set = field(default_factory=set)  # folders already checked by check_shared
    scheduler: str = ""  # the scheduler's address, kept for messages after the connection is gone

    def __post_init__(self):
        self.scheduler = self.scheduler or self.client.scheduler.address

    @property
    def dashboard(self) -> str | None:
        """The dashboard's address, None when the scheduler runs none (``--no-dashboard``, or bokeh missing)."""
        services = self.client.scheduler_info(n_workers=0).get("services", {})
        return self.client.dashboard_link if "dashboard" in services else None

    def workers(self) -> list[str]:
        """The addresses of the workers connected now."""
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    def host_threads(self) -> dict[str, int]:
        """Each worker's address → the Dask threads of all this session's workers on its machine.

        That is how many tasks may run on the machine at once, which share its
        cores (:func:`task_cores`). Machines are told apart by the host Dask
        knows each worker by.
        """
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        on_host: dict[str, int] = {}
        for info in workers.values():
            on_host[info["host"]] = on_host.get(info["host"], 0) + int(info["nthreads"])
        return {address: on_host[info["host"]] for address, info in workers.items()}

    def describe(self) -> dict:
        """What the run record keeps: where it ran and on how many workers."""
        return {"cluster": self.address, "scheduler": self.scheduler, "workers": len(self.workers()),
                "dashboard": self.dashboard}

    def check_shared(self, folder: str | os.PathLike) -> None:
        """Make sure every worker sees ``folder`` as this process does, or say which one does not.

        Each worker writes a probe file with its own address into ``folder``;
        this process reads every one back. A worker that cannot write there, or
        whose file does not arrive here (the path is another disk on its machine),
        fails the check with one line naming the worker and the fix: bad input
        (:class:`XrayfeatError`, exit 2). A worker that crashed or did not answer,
        or a scheduler that did not, is the cluster's fault (:class:`ClusterError`, exit 1).
        """
        folder = Path(folder).resolve()
        if folder in self.shared:
            return
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        probes = folder / f".xrayfeat-probe-{token}"
        try:
            try:  # each worker's exception comes back as its answer; the call itself fails when the scheduler does
                written = self.client.run(write_probe, str(probes), token, on_error="return")
            except Exception as exc:
                raise ClusterError(f"{folder}: the Dask cluster at {self.scheduler} did not answer the shared-folder "
                                   f"check ({first_line(exc, typed=True)}); check that its scheduler and workers are running, then "
                                   f"run the same command again") from None
            if not written:
                raise ClusterError(f"{folder}: no Dask worker answered the shared-folder check; start workers with "
                                   f"`dask worker {self.scheduler}`, then run the same command again")
            for worker, answer in sorted(written.items()):
                _check_answer(folder, worker, answer)
            for worker, answer in sorted(written.items()):
                _check_probe(folder, probes, worker, answer, token)
        finally:
            for probe in probes.glob("*") if probes.is_dir() else []:
                probe.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                probes.rmdir()
        self.shared.add(folder)

    def prepare(self, name: str, function, *args) -> None:
        """Run ``function(*args)`` on every worker now, and on each worker that joins or restarts later.

        It runs in the worker's event-loop thread before the worker takes tasks
        (a Dask ``WorkerPlugin``), where no other thread of the worker runs Python
        meanwhile. That matters for models with seeded random weights: Keras
        draws their initial values from Python's global ``random``, which Dask's
        own threads also draw from (``dask.sizeof`` samples with it), so a model
        built inside a task could differ from worker to worker.
        """
        from distributed.diagnostics.plugin import WorkerPlugin

        class _Prepare(WorkerPlugin):
            def __init__(self):
                self.name = name

            def setup(self, worker):
                function(*args)

        self.client.register_plugin(_Prepare(), name=name)

    def map(self, function, jobs: list, *, on_result, what: str = "chunk") -> None:
        """Run ``function(job)`` for every job on the workers; ``on_result(job, result)`` here as each finishes.

        Results are handled in this process one at a time, in the order the tasks
        finish, so ``on_result`` may commit them without a lock. When anything
        fails, the tasks not yet finished are cancelled and what ``on_result``
        committed stays.
        """
        run_id = uuid.uuid4().hex[:8]
        futures = self.client.map(function, jobs, key=[f"xrayfeat-{what}-{run_id}-{i}" for i in range(len(jobs))],
                                  pure=False, retries=0)
        by_key = {future.key: job for future, job in zip(futures, jobs)}
        done = 0
        try:
            for future in self._finished(futures):
                on_result(by_key[future.key], self._result(future))
                done += 1
        except (XrayfeatError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise self._failure(exc, done, len(jobs), what) from None
        finally:
            with contextlib.suppress(Exception):
                self.client.cancel(futures)

    def _finished(self, futures):
        """The futures in the order they finish, on this session's client."""
        from distributed import as_completed

        with self.client.as_current():
            yield from as_completed(futures)

    def _result(self, future):
        """The task's result, its killed-worker failure as one line; other errors propagate to :meth:`map`."""
        from distributed import KilledWorker

        try:
            return future.result()
        except KilledWorker as exc:
            raise ClusterError(
                f"a task killed {_allowed_failures()} Dask workers in a row ({exc}); the workers may lack memory "
                f"for it: give them more, or pass a smaller --chunk-images"
            ) from None

    def _failure(self, exc: Exception, done: int, total: int, what: str) -> ClusterError:
        """One line for a run that failed on the cluster; says what was kept and how to resume."""
        reason = first_line(exc)
        if not self._scheduler_alive():
            self.close(timeout=2)  # the client would otherwise try to reconnect for its whole timeout at exit
            _SESSIONS.pop(self.address, None)
            return ClusterError(
                f"lost the Dask scheduler at {self.scheduler} ({type(exc).__name__}: {reason}) after {done} of "
                f"{total} {what}s were committed; run the same command again to resume from them"
            )
        return ClusterError(f"a {what} failed on the cluster ({type(exc).__name__}: {reason}) after {done} of "
                            f"{total} were committed; run the same command again to resume from them")

    def _scheduler_alive(self) -> bool:
        """Whether the scheduler is still there: the client holds its connection and its port still listens.

        A gather can fail on the closed connection before the client itself has
        noticed (its status still says running), so the port is asked too; asking
        the scheduler through the client would wait out a timeout instead.
        """
        return self.client.status == "running" and _listens(self.scheduler)

    def close(self, timeout: float = 5) -> None:
        """Close the client and a local cluster, giving up after ``timeout`` seconds each.

        A ``LocalCluster`` whose worker was killed and restarted can wait for
        that worker's process forever when closed; the work is committed by then,
        so the process exits instead of waiting (its workers end with it).
        """
        _close(self.client, self.cluster, timeout)


def _listens(address: str, timeout: float = 2.0) -> bool:
    """Whether a TCP or TLS scheduler address accepts a connection within ``timeout`` seconds (other protocols: True)."""
    from distributed.comm import parse_address, parse_host_port

    protocol, location = parse_address(address)
    if protocol not in ("tcp", "tls"):
        return True
    try:
        with socket.create_connection(parse_host_port(location), timeout=timeout):
            return True
    except OSError:
        return False


def _close(client, cluster, timeout: float) -> None:
    """Close a client, then a local cluster (either may be None), each given up after ``timeout`` seconds."""
    for thing in (client, cluster):
        if thing is not None:
            with contextlib.suppress(Exception):
                thing.close(timeout=timeout)


def task_cores(host_threads: dict[str, int]) -> int:
    """(In a Dask task) this task's share of its machine's cores: at least 1.

    The cores this process may run on (its CPU affinity), divided by the tasks
    that may run on the machine at once: the threads of the session's workers
    there (:meth:`Session.host_threads`, sent with the task), else this worker's
    own (a worker that joined later). Outside a Dask task: every core. So one
    ``dask worker --nthreads 1`` per GPU on a 16-core machine gets 16, and
    ``local:2`` on 2 cores gets 1 per worker.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a Dask task
        return max(1, cores)
    threads = host_threads.get(worker.address) or worker.state.nthreads
    return max(1, cores // max(1, threads))


def write_probe(folder: str, token: str, dask_worker=None) -> dict:
    """(On a worker) write ``<folder>/<worker id>`` holding the token; say what happened and who we are."""
    name = f"{socket.gethostname()}-{os.getpid()}"
    answer = {"host": socket.gethostname(), "file": name, "error": None}
    try:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), "w") as fh:
            fh.write(token)
    except OSError as exc:
        answer["error"] = os.strerror(exc.errno) if exc.errno else str(exc)
    return answer


def _check_answer(folder: Path, worker: str, answer) -> None:
    """A worker's answer to the probe is :func:`write_probe`'s; anything else (its exception) is a cluster fault."""
    if isinstance(answer, BaseException):
        raise ClusterError(f"{folder}: Dask worker {worker} crashed or did not answer the shared-folder check "
                           f"({first_line(answer, typed=True)}); check the worker (its log, its memory), then run the same command again")
    if not (isinstance(answer, dict) and isinstance(answer.get("host"), str) and isinstance(answer.get("file"), str)
            and isinstance(answer.get("error"), (str, type(None)))):
        raise ClusterError(f"{folder}: Dask worker {worker} answered the shared-folder check with "
                           f"{type(answer).__name__} {str(answer)[:80]!r}, not a probe's answer; give every worker "
                           f"the xrayfeat of this process, then run the same command again")


def _check_probe(folder: Path, probes: Path, worker: str, answer: dict, token: str) -> None:
    fix = ("put --cache-dir on storage every worker mounts at the same path (e.g. NFS), "
           "or run without --cluster")
    if answer["error"] is not None:
        raise XrayfeatError(f"{folder}: Dask worker {worker} on {answer['host']} cannot write there "
                            f"({answer['error']}); {fix}")
    probe = probes / answer["file"]
    try:
        seen = probe.read_text()
    except OSError:
        seen = None
    if seen != token:
        raise XrayfeatError(f"{folder}: not the same folder for Dask worker {worker} on {answer['host']}: the "
                            f"probe file it wrote there does not appear here; {fix}")


def _allowed_failures() -> int:
    import dask

    return int(dask.config.get("distributed.scheduler.allowed-failures"))


def session(address: str, *, announce: bool = False) -> Session:
    """The session for ``address`` (``local:N`` or a scheduler's), started or joined on first use.

    ``announce`` writes one line to stderr when it starts: the workers, the
    scheduler and the dashboard, where the tasks can be watched.
    """
    live = _SESSIONS.get(address)
    if live is not None and live.client.status == "running":
        return live
    if live is not None:  # its scheduler was lost, or it was closed: close what is left before starting another
        _SESSIONS.pop(address, None)
        live.close(timeout=2)
    kind, value = parse_cluster(address)
    # our one line says what failed; Dask's own lines (e.g. its client giving up on a lost scheduler) stay out
    quiet = logging.DEBUG if os.environ.get("XRAYFEAT_DEBUG") else logging.CRITICAL
    _quiet_dask(quiet)
    import distributed

    if kind == "local":
        refuse_unguarded_main(address)
        try:
            cluster = distributed.LocalCluster(n_workers=value, threads_per_worker=1, processes=True,
                                               dashboard_address=":0", silence_logs=quiet)
        except Exception as exc:
            raise ClusterError(f"cannot start a local Dask cluster of {value} worker(s) ({first_line(exc, typed=True)}); run "
                               f"without --cluster, or with fewer workers") from None
        try:
            client = distributed.Client(cluster, set_as_default=False)
        except BaseException as exc:  # the cluster's processes must not outlive a client that never was
            _close(None, cluster, timeout=2)
            if not isinstance(exc, Exception):
                raise
            raise ClusterError(f"cannot connect to the local Dask cluster it started ({first_line(exc, typed=True)}); run "
                               f"without --cluster, or with fewer workers") from None
    else:
        cluster = None
        try:
            client = distributed.Client(value, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {value} ({exc}); start it with "
                               f"`dask scheduler` and workers with `dask worker {value}`") from None
    try:
        live = Session(address, client, cluster)
        if cluster is not None:  # our own workers: each dies with this process (remote ones belong to their machines)
            live.prepare("xrayfeat-die-with-parent", _die_with, os.getpid())
        workers = live.workers()
    except BaseException:
        _close(client, cluster, timeout=2)
        raise
    if not workers:
        live.close()
        raise ClusterError(f"the Dask scheduler at {live.scheduler} has no workers; start some with "
                           f"`dask worker {live.scheduler}`")
    _SESSIONS[address] = live
    line = (f"Dask: {len(live.workers())} worker(s), scheduler {live.scheduler}, "
            f"dashboard {live.dashboard or 'off (start the scheduler with one, and install bokeh)'}")
    log.info("%s", line)
    if announce:
        print(one_line(line), file=sys.stderr, flush=True)
    return live


def refuse_unguarded_main(address: str) -> None:
    """:class:`XrayfeatError` at once where a local cluster's workers would run the caller's script again.

    Dask starts a local cluster's workers with ``multiprocessing``'s spawn,
    which imports the main module of this process again in each one (as
    ``__mp_main__``). Code of a script that is not under an ``if __name__ ==
    "__main__":`` guard then runs in every worker (it starts clusters of its own
    and waits on the locks this process holds), and a script read from standard
    input cannot be imported at all. Both are refused here, in one line that
    says what to add. ``python -c``, IPython and Jupyter have no main file to
    import: nothing to check.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None:
        return
    if not os.path.isfile(path):
        raise XrayfeatError(f"cluster={address!r} starts Dask worker processes, which import the main script again, "
                            f"and a script read from {path} cannot be: save it to a file with its work under "
                            f"`if __name__ == \"__main__\":`, or leave out the cluster (decoding runs in "
                            f"worker processes all the same)")
    line = _main_call_line(main)
    if line is not None and not _guarded(path, line):
        raise XrayfeatError(f"cluster={address!r} starts Dask worker processes, which run {path} again: line {line} "
                            f"is not under `if __name__ == \"__main__\":`, so each worker would run it too; put the "
                            f"script's work under that guard (or leave out the cluster)")


def _main_call_line(main) -> int | None:
    """The line of the main module's top-level code that this call comes from, None if not from there (or unknown)."""
    import inspect

    frame = inspect.currentframe()  # public; None where the interpreter keeps no frames (then nothing is refused)
    line = None
    while frame is not None:
        if frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
        frame = frame.f_back
    return line


def _guarded(path: str, line: int) -> bool:
    """Whether ``line`` of the script at ``path`` lies under an ``if __name__ == "__main__":`` (unknown: True)."""
    import ast

    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return True
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_test(node.test) and node.body:
            if node.body[0].lineno <= line <= (node.body[-1].end_lineno or line):
                return True
    return False


def _is_main_test(test) -> bool:
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    mains = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(mains) == 1


def _quiet_dask(level: int) -> None:
    """Dask's loggers at ``level`` in this process (workers get ``silence_logs``).

    Dask's logging configuration gives several of its loggers (``distributed.client``
    among them) levels of their own, so each is set, not only the parent.
    """
    import distributed  # noqa: F401  (configures its loggers on import)

    for name in [*logging.root.manager.loggerDict, "distributed", "bokeh", "tornado"]:
        if name.split(".")[0] in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(level)


def _die_with(parent: int) -> None:
    """(On a local worker) die with ``parent``; Dask's workers keep their own signal handling."""
    die_with_parent(parent, group_signals=False)


@contextlib.contextmanager
def joblib_backend(live: Session | None):
    """joblib's Dask backend on ``live`` (scikit-learn's searches then run on the workers).

    Without a session, joblib's process workers on this machine (loky), which
    die with this process however it ends (:func:`~xrayfeat.distributed.lifetime.die_with_parent`
    as their initializer; loky's own workers would otherwise wait out their
    idle timeout, 300 s, after a SIGKILL). Naming the backend makes it explicit
    to joblib: a ``prefer="threads"`` hint no longer picks threads, while a
    ``require="sharedmem"`` still does.
    """
    import joblib

    if live is None:
        with joblib.parallel_config(backend="loky", initializer=die_with_parent, initargs=(os.getpid(),)):
            yield
        return

    with live.client.as_current(), joblib.parallel_config(backend="dask"):
        yield


def close_sessions() -> None:
    """Close every session this process opened (also called when it exits)."""
    while _SESSIONS:
        _, live = _SESSIONS.popitem()
        live.close()


atexit.register(close_sessions)
