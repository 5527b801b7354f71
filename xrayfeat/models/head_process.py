"""Train the head on a Keras backend of its own, in a child process when it differs from this process'.

Why: Keras fixes its backend once per process, and the two halves of the study
want different ones on a CPU. TensorFlow extracts InceptionV3 1.7× faster than
jax (``scripts/bench_extract.py --compare-backends``), and the head (13.1 M
parameters, batch 10) trains about 1.8× faster per step on jax than on
TensorFlow with XLA (``scripts/bench_head.py --compare-backends``; both in
BENCHMARKS.md). The store's
fingerprint names the *extraction* backend and stays as it is; the head's
backend only decides how the head is trained, and the run record says which
was used and why.

How: the child (``python -m xrayfeat.models.head_process --wait --parent PID``,
with ``KERAS_BACKEND`` set) makes a job folder of its own and says where on
its stdout, then imports Keras while this process works. The features go to
that folder as ``.npy`` files (a multi-label head's masks too; features streamed from the store,
:class:`~xrayfeat.store.rows.StoreRows`, go as the store's folder and the rows'
keys in ``job.json``, and the child reads them from the store itself); the
line ``run`` on the child's stdin starts it: it runs
:func:`xrayfeat.models.head.train_head`, saves ``head.keras`` where the caller
asked, and writes the validation and test probabilities and what training
recorded back into the folder. A ``.keras`` file is backend-neutral, so the
head loads anywhere afterwards.

Lifetime (:mod:`xrayfeat.distributed.lifetime`): the child dies with this process, however
it ends, and its job folder with it; this process kills it and removes the
folder when it is interrupted or fails. The head files are written only while
the run's claim holds (a :class:`~xrayfeat.distributed.lifetime.WriteGuard`, checked before
training and before each file takes its name), so a child never writes into a
run folder that was given up, or deleted and claimed by a new fit-head.

Repeats: ``repeat_seeds`` trains the head again once per seed on the same data
and settings (the spread over seeds says how much of a result is the seed's
luck). They run where the head runs, one after the other in the same process
(one child for all of them: each child pays the Keras import), and only their
probabilities and best epochs come back; only the first head is saved.

Cross-validation (``cv``, :class:`CrossValidation`): after the head and its
repeats, one more head per fold, trained on that fold's rows of the training
matrix and predicting its held-out rows, in the same process too. The matrix
travels once (the folds as one small table of row roles), and only the held-out
probabilities come back; no fold's head is saved.

The child also gets glibc malloc settings that keep freed memory for reuse
(:data:`MALLOC_TUNABLES`): every training step allocates ~52 MB gradient and
update buffers, and by default glibc returns each to the kernel, which then
faults and zeroes the pages again on the next step. Measured on 2 cores,
4-class InceptionV3 head, ``scripts/bench_head.py --compare-backends`` (one
run, interleaved): 1.57× faster per step (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from xrayfeat.devices import keras_backend_name, release_jax_at_exit
from xrayfeat.distributed.lifetime import WriteGuard, die_with_parent, end_now, guarded_path, removed_on_death
from xrayfeat.models import compile_cache, head_numpy
from xrayfeat.errors import DiskFullError, XrayfeatError
from xrayfeat.fileio import disk_full, writing_to
from xrayfeat.options.settings import HEAD_BACKENDS
from xrayfeat.store.rows import StoreRows, take

log = logging.getLogger("xrayfeat")

#: Rows predicted at a time from a :class:`~xrayfeat.store.rows.StoreRows`: a multiple of the prediction batch (256), so
#: every prediction batch holds the rows it would hold on the whole array, and the probabilities are the same.
PREDICT_ROWS = 4 * 256

# 2 GiB mmap threshold (large buffers come from the heap) and 4 GiB trim threshold (the heap is not
# handed back after every step); only read by glibc when a process starts, so only set for the child
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295"


def process_backend() -> str:
    """The Keras backend of this process: the imported one, else the one Keras will pick."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    return keras_backend_name()


def _installed(backend: str) -> bool:
    return importlib.util.find_spec(backend) is not None


def resolve_head_backend(requested: str = "auto", *, device: str = "cpu", train_tail: bool = False) -> tuple[str, str]:
    """The backend the head trains on, and why, for ``--head-backend`` (logged and recorded by the caller).

    ``auto``: jax on a CPU when jax is installed (the fastest measured for this
    head); otherwise this process' backend. The head stays on this process'
    backend with ``train_tail`` (the tail's random weights are backend-specific,
    so it must match the store's) and on a GPU (the extraction backend is the one
    known to see it). An explicit backend must be installed.
    """
    current = process_backend()
    if requested not in ("auto", *HEAD_BACKENDS):
        raise XrayfeatError(f"--head-backend must be one of auto, {', '.join(HEAD_BACKENDS)}; got {requested!r}")
    if requested != "auto":
        if train_tail and requested != current:
            raise XrayfeatError(
                f"--train-tail trains the backbone's tail, which must run on the extraction backend ({current}); "
                f"drop --head-backend {requested} or set KERAS_BACKEND={requested} for the whole run"
            )
        if requested != current and not _installed(requested):
            raise XrayfeatError(f"--head-backend {requested}: {requested} is not installed; pip install {requested}, or use --head-backend auto")
        return requested, "requested"
    if train_tail:
        return current, "the tail trains on the extraction backend"
    if device == "gpu":
        return current, "GPU run: the head stays on the extraction backend"
    if current != "jax" and _installed("jax"):
        return "jax", "auto: jax trains this head fastest on a CPU"
    return current, "auto: the extraction backend"


@dataclass
class HeadOutcome:
    """What training the head produced: the :class:`~xrayfeat.models.head.TrainedHead` record, probabilities, where it ran.

    ``proba_val``: the head's probabilities on ``x_val`` (None without it), for
    choosing thresholds on validation data. ``repeats``: one dict per repeat
    seed, in order, ``{"seed": int, "proba_val": array | None, "proba_test":
    array, "best_epoch": int | None}`` (``best_epoch`` as in the head's
    ``settings``).
    """

    history: dict
    epoch_seconds: list
    seconds: float
    step_seconds: float
    params: dict
    settings: dict
    proba_test: np.ndarray
    proba_val: np.ndarray | None = None
    repeats: list = field(default_factory=list)
    cv: list = field(default_factory=list)  # per fold of CrossValidation: {"proba_out": array, "best_epoch": int|None}
    process: str = "in-process"
    process_seconds: float = float("nan")


#: The fields of :class:`HeadOutcome` that a :class:`~xrayfeat.models.head.TrainedHead` records, all JSON-ready.
_RECORD_FIELDS = ("history", "epoch_seconds", "seconds", "step_seconds", "params", "settings")


#: The role of a row in one fold of :class:`CrossValidation` (``roles``): not used, trained on, validation, held out.
UNUSED, FIT, VAL, OUT = -1, 0, 1, 2


@dataclass
class CrossValidation:
    """The folds a head is trained on after the main fit: one matrix, and each fold's role for each of its rows.

    ``x``: the training matrix (an array or a :class:`~xrayfeat.store.rows.StoreRows`),
    ``y`` its targets and ``mask`` (multi-label only) where they count.
    ``roles[j, i]``: what row ``i`` is in fold ``j`` (:data:`FIT`, :data:`VAL`,
    :data:`OUT` or :data:`UNUSED`); ``seeds[j]``: the seed fold ``j``'s head trains with.
    """

    x: object
    y: np.ndarray
    roles: np.ndarray
    seeds: list
    mask: np.ndarray | None = None

    def rows(self, j: int, role: int) -> np.ndarray:
        """The rows (sorted) that have ``role`` in fold ``j``."""
        return np.flatnonzero(self.roles[j] == role)


def _record(trained) -> dict:
    """What a :class:`~xrayfeat.models.head.TrainedHead` (or a :class:`HeadOutcome`) recorded, as ``HeadOutcome`` fields."""
    return {name: getattr(trained, name) for name in _RECORD_FIELDS}


class HeadChild:
    """A child process started ahead of time: it imports Keras on ``backend`` while this process works.

    Start it before extraction and hand it to :func:`train_and_predict`; its
    import (about 4 s for Keras on jax) then overlaps with the work here. It
    makes its job folder first (:meth:`job_folder`), then waits for the line
    ``run`` on its stdin; end of input makes it remove the folder and exit, and
    so does this process ending, however it ends (:mod:`xrayfeat.distributed.lifetime`).
    """

    def __init__(self, backend: str, device: str = "cpu"):
        self.backend, self.device = backend, device
        self._folder: Path | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xrayfeat.models.head_process", "--wait", "--parent", str(os.getpid())],
            env=_child_env(backend, device), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def job_folder(self) -> Path | None:
        """The folder the child made for its job (it says where on its first line); None if it died first."""
        if self._folder is None:
            line = self.proc.stdout.readline().strip()
            self._folder = Path(line) if line else None
        return self._folder

    def run(self, folder: Path) -> tuple[int, str]:
        """Start the job in ``folder`` (:meth:`job_folder`, filled) and wait for the child: (exit status, stderr)."""
        try:
            _, err = self.proc.communicate("run\n")
        except BaseException:  # interrupted: the child goes now, not when it has finished training
            self.stop()
            raise
        return self.proc.returncode, err

    def close(self) -> None:
        """Let an unused child go (on end of input it removes its folder and exits)."""
        if self.proc.poll() is None:
            self.proc.communicate("")

    def stop(self) -> None:
        """End the child now if it still runs, and remove its job folder."""
        if self.proc.poll() is None:
            self.proc.kill()
        out, _ = self.proc.communicate()
        if self._folder is None and out.strip():
            self._folder = Path(out.splitlines()[0].strip())
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


def start_child(backend: str, device: str = "cpu") -> HeadChild | None:
    """A :class:`HeadChild` for ``backend`` when the head will train outside this process, else None.

    The child :func:`started_early` for the same backend and device is taken
    when there is one (it has been importing Keras for a while already).
    """
    if backend == process_backend():
        return None
    early = _take_early()
    if early is not None and (early.backend, early.device) == (backend, device) and early.proc.poll() is None:
        return early
    if early is not None:
        early.stop()
    return HeadChild(backend, device)


#: The child :func:`started_early` made and :func:`start_child` has not taken yet.
_EARLY: HeadChild | None = None


def _take_early() -> HeadChild | None:
    """The child :func:`started_early` made, now the caller's (None when there is none)."""
    global _EARLY
    early, _EARLY = _EARLY, None
    return early


def _stop_early() -> None:
    """Stop the child :func:`started_early` made, if nobody took it."""
    early = _take_early()
    if early is not None:
        early.stop()


@contextlib.contextmanager
def started_early(requested: str = "auto", *, device: str = "cpu", train_tail: bool = False):
    """Start the head's child before anything else, for the :func:`start_child` of a study run inside this block.

    Why: a warm ``fit-head`` does about 4 s of its own work (imports, the data's
    discovery) before its study starts the child, and the child then imports
    Keras for about 5 s while the study has nothing left to do; started at
    the command's start, the two overlap. ``requested``, ``device`` and
    ``train_tail`` as for :func:`resolve_head_backend` (``device="auto"`` is taken
    as the CPU until the study finds a GPU); nothing is started when
    the head would train in this process, or when they are refused (the study
    says why). A child the block did not use is stopped when it ends, however
    it ends.
    """
    global _EARLY
    device = "cpu" if device == "auto" else device  # a GPU found later keeps the head here: the child is then stopped
    try:
        backend, _ = resolve_head_backend(requested, device=device, train_tail=train_tail)
    except XrayfeatError:
        backend = process_backend()
    _stop_early()
    _EARLY = None if backend == process_backend() else HeadChild(backend, device)
    try:
        yield
    finally:
        _stop_early()


def train_and_predict(backend: str, x_fit, y_fit, x_val, y_val, x_test, *, head_file, tail=None,
                      child: HeadChild | None = None, device: str = "cpu", repeat_seeds=(),
                      guard: WriteGuard | None = None, multilabel: bool = False, mask_train=None, mask_val=None,
                      cv: CrossValidation | None = None, **train_kwargs) -> HeadOutcome:
    """Train the head on ``backend``, predict ``x_val`` and ``x_test``, save the model to ``head_file``.

    Runs here when ``backend`` is this process' backend, else in a child process
    (``child`` if one was started with :func:`start_child`; see the module
    docstring). ``train_kwargs`` go to :func:`xrayfeat.models.head.train_head` (e.g.
    ``seed``, ``class_weight``, ``restore_best``) and must be JSON-serialisable.
    ``repeat_seeds``: after the head, train it again with each of these seeds
    and the same data and settings, in the same process; their probabilities
    are in :attr:`HeadOutcome.repeats`, and only the first head is saved.
    ``guard``: the claim on the run folder ``head_file`` goes into, checked
    before training and before each head file is written (here or in the
    child); None writes unconditionally.

    ``multilabel=True``: a multi-label head (see :func:`~xrayfeat.models.head.train_head`):
    ``n_classes`` findings, ``y_fit``/``y_val`` (n, K) 0/1 targets and
    ``mask_train``/``mask_val`` (n, K) bool masks for them (True where an entry
    counts; None: all count). The masks go to a child as ``.npy`` files in its
    job folder beside the other arrays; every repeat trains with them too. The
    probabilities are then (n, K), one sigmoid per finding.

    ``cv``: after the repeats, a head per fold of this :class:`CrossValidation`
    (same settings, the fold's seed and rows); the held-out probabilities are
    in :attr:`HeadOutcome.cv`, in the folds' order.
    """
    started = time.perf_counter()
    seeds = _seeds(repeat_seeds)
    masks = _masks(multilabel, mask_train, mask_val)
    if multilabel:
        train_kwargs = {**train_kwargs, "multilabel": True}
    if backend == process_backend():
        outcome = _train_all(x_fit, y_fit, x_val, y_val, x_test, head_file=head_file, seeds=seeds, tail=tail,
                             train=train_kwargs, guard=guard, masks=masks, cv=cv)
        return replace(outcome, process="in-process", process_seconds=time.perf_counter() - started)
    if tail is not None:
        raise XrayfeatError("a backbone tail can only be trained on the extraction backend; use --head-backend auto")
    child = child or HeadChild(backend, device)
    try:
        folder = child.job_folder()
        if folder is not None:
            with writing_to(folder.parent, option="TMPDIR"):  # the job's folder is the system's temporary one
                arrays = {"x_fit": x_fit, "y_fit": y_fit, "x_val": x_val, "y_val": y_val, "x_test": x_test, **masks}
                if cv is not None:
                    arrays.update({"cv_x": cv.x, "cv_y": cv.y, "cv_roles": cv.roles, "cv_mask": cv.mask})
                for name, value in arrays.items():
                    if value is not None and not isinstance(value, StoreRows):
                        np.save(folder / f"{name}.npy", np.asarray(value))
                rows = {name: value.spec() for name, value in arrays.items() if isinstance(value, StoreRows)}
                job = {"head_file": str(Path(head_file).resolve()), "train": train_kwargs, "repeat_seeds": seeds,
                       "rows": rows, "guard": None if guard is None else guard.to_json()}
                if cv is not None:
                    job["cv_seeds"] = _seeds(cv.seeds)
                (folder / "job.json").write_text(json.dumps(job))
        _run_child(folder, child)
        outcome = _read_outcome(folder)
    finally:  # the child is done, failed, or this process was interrupted: it goes, and its folder with it
        child.stop()
    return replace(outcome, process="child process", process_seconds=time.perf_counter() - started)


def _masks(multilabel: bool, mask_train, mask_val) -> dict:
    """``{"mask_train": ..., "mask_val": ...}`` for a multi-label head (the ones given); {} for a single-label one.

    A mask without ``multilabel=True`` is refused here, before a child is asked to train.
    """
    if not isinstance(multilabel, bool):
        raise TypeError(f"The 'multilabel' parameter must be a bool. Got {multilabel!r} instead.")
    masks = {name: mask for name, mask in (("mask_train", mask_train), ("mask_val", mask_val)) if mask is not None}
    if masks and not multilabel:
        raise ValueError(f"{' and '.join(masks)} mask the entries of multi-label targets: pass multilabel=True, "
                         f"or leave {' and '.join(masks)} None")
    return {name: np.asarray(mask) for name, mask in masks.items()}


def _seeds(repeat_seeds) -> list[int]:
    """``repeat_seeds`` as a list of ints (they travel to a child as JSON)."""
    seeds = list(repeat_seeds) if isinstance(repeat_seeds, (list, tuple, range)) else None
    if seeds is None or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in seeds):
        raise TypeError(f"The 'repeat_seeds' parameter must be a list or tuple of ints. Got {repeat_seeds!r} instead.")
    return [int(s) for s in seeds]


def _train_all(x_fit, y_fit, x_val, y_val, x_test, *, head_file, seeds: list, tail, train: dict,
               guard: WriteGuard | None = None, masks: dict | None = None,
               cv: CrossValidation | None = None) -> HeadOutcome:
    """Train the head, predict validation and test, save it; then train and predict once more per repeat seed.

    ``masks``: ``mask_train``/``mask_val`` of a multi-label head, given to every training.

    With a tail (in-process only), every repeat fine-tunes it again from the
    weights it had before the first training, as the first head did; the tail
    is left as the last training left it. So does every fold of ``cv``.
    """
    if guard is not None:  # a run given up or claimed again already: train nothing (not even import Keras)
        guard.check()
    from xrayfeat.models.head import train_head

    start_tail = tail.get_weights() if tail is not None and (seeds or cv is not None) else None
    train = {**train, **(masks or {})}
    trained = train_head(x_fit, y_fit, x_val, y_val, tail=tail, **train)
    proba_val, proba_test = _predict(trained, x_val, x_test)
    _save(trained, head_file, guard)
    repeats = []
    for seed in seeds:
        if start_tail is not None:
            tail.set_weights(start_tail)
        again = train_head(x_fit, y_fit, x_val, y_val, tail=tail, **{**train, "seed": seed})
        val, test = _predict(again, x_val, x_test)
        repeats.append({"seed": seed, "proba_val": val, "proba_test": test, "best_epoch": again.settings["best_epoch"]})
    folds = []
    for j, seed in enumerate(cv.seeds if cv is not None else ()):
        if start_tail is not None:
            tail.set_weights(start_tail)
        if guard is not None:
            guard.check()
        fit, val, out = (cv.rows(j, role) for role in (FIT, VAL, OUT))
        fold_masks = {} if cv.mask is None else {"mask_train": cv.mask[fit], "mask_val": cv.mask[val]}
        head = train_head(take(cv.x, fit), cv.y[fit], take(cv.x, val), cv.y[val], tail=tail,
                          **{**train, **fold_masks, "seed": seed})
        folds.append({"proba_out": _predict_rows(head, take(cv.x, out)), "best_epoch": head.settings["best_epoch"]})
    return HeadOutcome(**_record(trained), proba_test=proba_test, proba_val=proba_val, repeats=repeats, cv=folds)


def _predict(trained, x_val, x_test) -> tuple:
    """(validation probabilities or None, test probabilities) of a trained head."""
    return (None if x_val is None else _predict_rows(trained, x_val)), _predict_rows(trained, x_test)


def _predict_rows(trained, x):
    """The head's probabilities on an array, or on a :class:`~xrayfeat.store.rows.StoreRows` read :data:`PREDICT_ROWS` at a time."""
    if not isinstance(x, StoreRows):
        return trained.predict_proba(x)
    return np.concatenate([trained.predict_proba(block) for block in x.batches(PREDICT_ROWS)])


def _write_outcome(folder: Path, outcome: HeadOutcome) -> None:
    """The child's answer: every probability array in ``proba.npz``, then the rest in ``result.json``.

    ``result.json`` is written last: the parent takes its presence as the sign that the child finished.
    """
    arrays = {"test": outcome.proba_test, "val": outcome.proba_val}
    for i, repeat in enumerate(outcome.repeats):
        arrays[f"repeat{i}_test"], arrays[f"repeat{i}_val"] = repeat["proba_test"], repeat["proba_val"]
    for j, fold in enumerate(outcome.cv):
        arrays[f"cv{j}_out"] = fold["proba_out"]
    np.savez(folder / "proba.npz", **{name: value for name, value in arrays.items() if value is not None})
    repeats = [{"seed": r["seed"], "best_epoch": r["best_epoch"]} for r in outcome.repeats]
    cv = {"cv": [{"best_epoch": f["best_epoch"]} for f in outcome.cv]} if outcome.cv else {}
    (folder / "result.json").write_text(json.dumps({**_record(outcome), "repeats": repeats, **cv}))


def _read_outcome(folder: Path) -> HeadOutcome:
    """The :class:`HeadOutcome` a child wrote with :func:`_write_outcome`."""
    result = json.loads((folder / "result.json").read_text())
    with np.load(folder / "proba.npz") as arrays:
        proba = {name: arrays[name] for name in arrays.files}
    repeats = [
        {"seed": r["seed"], "proba_val": proba.get(f"repeat{i}_val"), "proba_test": proba[f"repeat{i}_test"],
         "best_epoch": r["best_epoch"]}
        for i, r in enumerate(result.pop("repeats"))
    ]
    folds = [{"proba_out": proba[f"cv{j}_out"], "best_epoch": f["best_epoch"]} for j, f in enumerate(result.pop("cv", []))]
    return HeadOutcome(**result, proba_test=proba["test"], proba_val=proba.get("val"), repeats=repeats, cv=folds)


def _save(trained, head_file, guard: WriteGuard | None = None) -> None:
    """``head.keras``, and beside it ``head.npz`` (the plain head's arrays, for inference without Keras).

    Each is written atomically and only while ``guard`` holds (:func:`~xrayfeat.distributed.lifetime.guarded_path`).
    """
    with guarded_path(head_file, guard, suffix=".keras") as tmp:
        trained.save(tmp)
    head_numpy.save(trained.model, Path(head_file).with_suffix(".npz"), guard=guard)


def _child_env(backend: str, device: str = "cpu") -> dict:
    """The child's environment: its Keras backend, glibc malloc settings, jax kept off accelerators on a CPU run,
    and jax's compiled programs kept on disk (:mod:`xrayfeat.models.compile_cache`).

    On a GPU run (only with an explicit ``--head-backend``) jax picks its device
    itself; the device it trained on is recorded (``settings["device"]``) and
    ``fit-head`` warns when it is not the GPU asked for.
    """
    env = dict(os.environ, KERAS_BACKEND=backend)
    if sys.platform.startswith("linux"):
        env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
    if backend == "jax" and device == "cpu":
        env.setdefault("JAX_PLATFORMS", "cpu")
    if backend == "jax":  # its XLA programs compiled once per machine (compile_cache)
        env.update(compile_cache.cache_env(env))
    return env


def _run_child(folder: Path | None, child: HeadChild) -> None:
    """Run the job in ``folder`` (None: the child died before making it) and turn a failure into one line."""
    log.info("training the head on %s in a child process", child.backend)
    if folder is None:  # the child ended before making its folder: its stderr says why
        _, err = child.proc.communicate("")
        status = child.proc.returncode
    else:
        status, err = child.run(folder)
    if os.environ.get("XRAYFEAT_DEBUG"):
        sys.stderr.write(err)
    for line in err.splitlines():
        log.debug("head child: %s", line)
    if status != 0 or folder is None or not (folder / "result.json").exists():
        lines = [line for line in err.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {status}"
        if reason.startswith(_NO_ROOM_LINE):  # the child's write found no room: the same line as if written here
            code, where, option = json.loads(reason[len(_NO_ROOM_LINE):])
            raise disk_full(where, code, option=option)
        raise XrayfeatError(
            f"training the head on {child.backend} failed: {reason}; rerun with --head-backend {process_backend()} "
            f"to train in this process, or XRAYFEAT_DEBUG=1 for the child's traceback"
        )


def _child_main(folder: Path) -> int:
    """Entry point of the child: train, predict, save, then the repeats; one line on stderr and status 1 on failure."""
    try:
        job = json.loads((folder / "job.json").read_text())
        guard = WriteGuard.from_json(job["guard"]) if job.get("guard") else None

        def load(name):
            if name in job["rows"]:
                return StoreRows.from_spec(job["rows"][name])
            path = folder / f"{name}.npy"
            return np.load(path, mmap_mode="r") if path.exists() else None

        masks = {name: mask for name in ("mask_train", "mask_val") if (mask := load(name)) is not None}
        cv = None
        if "cv_seeds" in job:
            cv = CrossValidation(load("cv_x"), np.asarray(load("cv_y")), np.asarray(load("cv_roles")), job["cv_seeds"],
                                 None if (mask := load("cv_mask")) is None else np.asarray(mask))
        outcome = _train_all(load("x_fit"), load("y_fit"), load("x_val"), load("y_val"), load("x_test"),
                             head_file=job["head_file"], seeds=job["repeat_seeds"], tail=None, train=job["train"],
                             guard=guard, masks=masks, cv=cv)
        with writing_to(folder.parent, option="TMPDIR"):
            _write_outcome(folder, outcome)
        return 0
    except Exception as error:  # reported to the parent as one line
        if os.environ.get("XRAYFEAT_DEBUG"):
            import traceback

            traceback.print_exc()
        print(_failure_line(error), file=sys.stderr)
        return 1


#: How the child's last stderr line starts when a write found no room; JSON ``[errno, folder, option]`` follows.
_NO_ROOM_LINE = "xrayfeat-no-room: "


def _failure_line(error: Exception) -> str:
    """The child's one line about ``error`` for the parent: a full disk as :data:`_NO_ROOM_LINE`, else type and text."""
    if isinstance(error, DiskFullError):
        return _NO_ROOM_LINE + json.dumps([error.errno, error.folder, error.option])
    return f"{type(error).__name__}: {error}".replace("\n", " ")


def _wait_main(parent: int) -> int:
    """``--wait``: make the job folder and say where, import Keras and the trainer, then run the job on ``run``.

    The child dies with ``parent`` and its folder goes with it
    (:func:`~xrayfeat.distributed.lifetime.die_with_parent`); on end of input (an unused
    child) it removes the folder itself. After a job the parent reads the
    folder, then removes it.
    """
    die_with_parent(parent)
    folder = Path(tempfile.mkdtemp(prefix="xrayfeat-head-"))
    with removed_on_death(folder):
        print(folder, flush=True)
        import keras  # noqa: F401  (the slow part, done while the parent works)

        from xrayfeat.models import head as heads  # noqa: F401
        from xrayfeat.models.fused_kernel import warm_up

        warm_up()  # the fused step's kernels, compiled or loaded from numba's cache, while the parent works

        if sys.stdin.readline().strip() != "run":
            shutil.rmtree(folder, ignore_errors=True)
            return 0
        return _child_main(folder)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xrayfeat.models.head_process")
    parser.add_argument("--wait", action="store_true", help="make a job folder, then wait for `run` on stdin")
    parser.add_argument("--parent", type=int, default=None, help="the parent's pid: the child dies with it")
    parser.add_argument("folder", nargs="?", type=Path, help="without --wait: run the job in this folder")
    return parser.parse_args(argv)


if __name__ == "__main__":
    # the parent reads the child's last stderr line as its failure reason: no jax traceback may follow it at exit
    release_jax_at_exit()
    if os.environ.get("KERAS_BACKEND") not in (None, "tensorflow"):
        # keep TensorFlow out of a jax or torch child: Keras would import it (4 s) only to seed it
        sys.modules["tensorflow"] = None
    arguments = _arguments(sys.argv[1:])
    parent = arguments.parent if arguments.parent is not None else os.getppid()
    if arguments.wait:
        status = _wait_main(parent)
    else:
        die_with_parent(parent)
        status = _child_main(arguments.folder)
    end_now(status)  # everything is written and closed; the parent waits for this exit, not for jax's teardown
