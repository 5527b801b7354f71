"""Shared fixtures: tiny image folders written into tmp_path, the optional real sample, one trained run per session.

``shared_run`` is the one small run (VGG16, random weights, 32 px, 3 epochs, logreg and pixels baselines)
that every test which only reads a trained run uses, built once per session even under xdist (see
:func:`shared_run`). A test that changes a run works on a copy (:meth:`SharedRun.copy`); a test that
needs other options (another layer, image size, head backend, repeats, thresholds, names) trains its own.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Two xdist workers on as many cores: each worker, and every process it starts, computes on one thread, so the
# frameworks' thread pools do not fight over the cores (measured on 2 cores: the four heaviest model files took
# 110 s instead of 126 s). Set before anything imports TensorFlow or jax; a value already set is kept.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0) >= (os.cpu_count() or 1):  # set in xdist's workers only
    for _name, _value in {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
                          "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}.items():
        os.environ.setdefault(_name, _value)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from xrayfeat.devices import release_jax_at_exit

# The workers import Keras, and with it jax, in-process: without this, jax's gc hook can print
# "Exception ignored in: <function _xla_gc_callback ...>" and a traceback after pytest's last line.
release_jax_at_exit()

REAL_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-sample" / "all"

#: Seconds each file took in the default run of scripts/test.sh on 2 cores (files under 5 s left out); only their
#: order matters. scripts/test.sh runs ``--dist loadfile --no-loadscope-reorder``: the workers take whole files in
#: collection order, so the longest files start first and the many short ones fill in at the end (without the
#: option xdist orders files by their number of tests, and a long file with few tests may start last).
FILE_COST = {  # seconds in ./scripts/test.sh (heavy tests, run by .ci/run's second half, are not counted)
    "test_callers.py": 76, "test_docs.py": 55, "test_reliability_images.py": 59, "test_cli.py": 51, "test_heads.py": 48,
    "test_headproc.py": 46, "test_extract.py": 45, "test_progress_output.py": 43, "test_operating.py": 40,
    "test_head_fused.py": 34, "test_cv.py": 35, "test_fit.py": 31, "test_multilabel_study.py": 30, "test_api.py": 28,
    "test_explain.py": 23, "test_backbones.py": 22, "test_streaming.py": 28, "test_import.py": 20, "test_decision.py": 18,
    "test_multilabel_models.py": 18, "test_python_calls.py": 18, "test_predict.py": 17, "test_replay.py": 17,
    "test_headproc_cli.py": 16, "test_export.py": 15, "test_reliability_runs.py": 15, "test_baselines.py": 13,
    "test_keep.py": 12, "test_cluster.py": 12, "test_exit_quiet.py": 11, "test_embed.py": 8, "test_plots.py": 7,
    "test_record_schema.py": 6, "test_store.py": 6, "test_imbalance.py": 6, "test_weights.py": 5, "test_fit_tail.py": 5,
    "test_multilabel_metrics.py": 5, "test_export_savedmodel.py": 3, "test_demo.py": 3, "test_fit_real.py": 2,
    "test_fit_learns.py": 2, "test_converters.py": 2, "test_export_formats.py": 95, "test_notebook.py": 30,
}


def pytest_collection_modifyitems(config, items):
    """The costliest files first (:data:`FILE_COST`); a stable sort, so each file keeps its own order."""
    items.sort(key=lambda item: -FILE_COST.get(item.path.name, 0))


def write_tiny_dataset(root: Path, *, classes=("a", "b"), per_split=(("train", 6), ("test", 3)), size=40, seed=0) -> Path:
    """Folder layout DATA/<split>/<class>/*.png of small noisy images; class b has a bright blob."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in per_split:
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.normal(90, 25, (size, size + 7)).clip(0, 255)
                if k:
                    img[size // 4 : size // 2, size // 4 : size // 2] += 60 * k
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{name}_{split}_{i}.png")
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "data")


@pytest.fixture
def real_sample() -> Path:
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real chest X-ray sample not found at {REAL_SAMPLE} (../shared is absent here)")
    return REAL_SAMPLE


def run_cli(*args, cwd=None, env=None, check=False, timeout=600) -> subprocess.CompletedProcess:
    """Run ``xrayfeat ARGS`` as a user would, in a subprocess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "xrayfeat", *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"xrayfeat {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def run_cli_here(*args, env=None, check=False) -> subprocess.CompletedProcess:
    """Run ``xrayfeat ARGS`` in this process through click's runner, with :func:`run_cli`'s result.

    The same command, exit code, stdout and stderr, without a new interpreter's imports (seconds per call):
    for tests about what a command computes and prints. Tests about the process itself (stderr free of
    third-party lines, imports, signals, environment read at start-up) keep :func:`run_cli`.
    """
    from click.testing import CliRunner

    from xrayfeat.cli.main import main

    words = [str(a) for a in args]
    result = CliRunner().invoke(main, words, env={"TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}, catch_exceptions=False)
    if check and result.exit_code != 0:
        raise AssertionError(f"xrayfeat {' '.join(words)} exited {result.exit_code}:\n{result.stderr}")
    return subprocess.CompletedProcess(["xrayfeat", *words], result.exit_code, result.stdout, result.stderr)


#: What the shared run is trained with, as keyword options of ``xf.fit_head`` (its data: ``write_tiny_dataset`` defaults).
SHARED_RUN_OPTIONS = dict(weights="none", image_size=32, epochs=3, baselines=("logreg", "pixels"), n_bootstrap=50)


@dataclass(frozen=True)
class SharedRun:
    """The session's trained run. Read it, never change it: its folders are shared by both xdist workers."""

    root: Path  # the shared folder
    data: Path  # its tiny dataset: DATA/{train,test}/{a,b}/*.png, 6 and 3 images per class
    cache: Path  # the feature cache it was trained from
    path: Path  # the run folder
    result: object  # the FitResult xrayfeat.runs.fit.fit_head returned for it (through xf.fit_head)
    arguments: tuple  # (FeatureOptions, HeadOptions, RunOptions) xf.fit_head passed to xrayfeat.runs.fit.fit_head

    @property
    def run(self):
        """The run, loaded (a fresh :class:`~xrayfeat.runs.loaded.Run` per call)."""
        import xrayfeat as xf

        return xf.load_run(self.path)

    def copy(self, dest: Path) -> Path:
        """A copy of the run folder at ``dest``, for a test that changes a run (its record still names the shared store)."""
        shutil.copytree(self.path, dest)
        return dest

    def copy_cache(self, dest: Path) -> Path:
        """A copy of the feature cache at ``dest``, for a test that writes into the cache it uses."""
        shutil.copytree(self.cache, dest)
        return dest


def _train_shared_run(root: Path) -> None:
    """Train the shared run into ``root`` through ``xf.fit_head``, keeping what it returned and passed down."""
    import xrayfeat as xf
    from xrayfeat.runs import fit as fit_module

    data = write_tiny_dataset(root / "data")
    seen = {}
    inner = fit_module.fit_head

    def recording(dataset, features, head, run, **kwargs):
        seen["arguments"] = (features, head, run)
        seen["result"] = inner(dataset, features, head, run, **kwargs)
        return seen["result"]

    fit_module.fit_head = recording
    try:
        xf.fit_head(data, "vgg16", cache_dir=root / "cache", out=root / "run", **SHARED_RUN_OPTIONS)
    finally:
        fit_module.fit_head = inner
    assert set(seen) == {"arguments", "result"}, "xf.fit_head no longer calls xrayfeat.runs.fit.fit_head at call time"
    (root / "fit.pickle").write_bytes(pickle.dumps((seen["result"], seen["arguments"])))


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> SharedRun:
    """The one shared run, trained by the first worker that asks and reused by the other.

    Under xdist every worker's base temporary folder lies in the session's own
    (``.../pytest-N/popen-gwK``), so the run goes into that parent folder. The first
    worker takes an exclusive ``flock`` and trains; the second blocks on the lock
    and finds the finished run (``fit.pickle`` is written last). A build that failed
    half-way leaves no ``fit.pickle``: the next worker clears it and trains again.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by this session's workers, and by no other session
    root = base / "shared-run"
    with open(base / "shared-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (root / "fit.pickle").is_file():
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir()
                _train_shared_run(root)
            result, arguments = pickle.loads((root / "fit.pickle").read_bytes())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return SharedRun(root=root, data=root / "data", cache=root / "cache", path=root / "run", result=result,
                     arguments=arguments)
