"""Training past memory: store rows read on demand, ``--memory-budget``, baselines on a sample that fits."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import itertools
import json
import pickle
import re
import threading

import h5py

import numpy as np
import pytest

from conftest import write_tiny_dataset
from xrayfeat.models import head as heads
from xrayfeat.models import head_process as headproc
from xrayfeat.models.head import train_head
from xrayfeat.models.baselines import sample_rows
from xrayfeat.cli.main import main
from xrayfeat.data.datasets import discover
from xrayfeat.errors import StoreError, XrayfeatError
from xrayfeat.options.settings import FeatureOptions, RunOptions
from xrayfeat.options.parsers import parse_size
from xrayfeat.options.constraints import OptionError
from xrayfeat.store.rows import ReadAhead, ReadingAhead, StoreRows
from xrayfeat.store.feature_store import FeatureStore
from xrayfeat.runs.fit import HeadOptions, fit_head

FP = {
    "backbone": "vgg16", "weights": "none:seed=0", "image_size": 32, "preprocess": "caffe",
    "decode": "v1", "layer": "block5_pool", "precision": "float32", "store_dtype": "float16",
    "keras": "3.0", "backend": "tensorflow",
}


def small_store(tmp_path, n=40, shape=(2, 2, 6)):
    """A store of ``n`` random rows in two shards, and their keys."""
    rng = np.random.default_rng(3)
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    spatial = rng.normal(0, 2, (n, *shape)).astype(np.float32)
    store = FeatureStore.open(tmp_path / "cache", FP, create=True)
    with store.writer() as writer:
        for part in (slice(0, n // 3), slice(n // 3, n)):
            writer.append(hashes[part], spatial[part], spatial[part].mean(axis=(1, 2)))
    return store, hashes


def test_a_view_reads_exactly_what_the_store_reads(tmp_path):
    store, hashes = small_store(tmp_path)
    order = hashes[::-1]  # another order than the store's, across both shards
    expected = store.read(order, ("spatial", "pooled"))
    view = StoreRows(store, order, "spatial")
    assert (view.shape, view.dtype, len(view), view.nbytes) == ((40, 2, 2, 6), np.float32, 40, 40 * 24 * 4)
    rows = np.array([0, 3, 4, 17, 39])

    def same(got, want):
        assert got.dtype == np.float32 and np.array_equal(got, want)

    same(view[rows], expected["spatial"][rows])
    same(view[np.array([17, 3])], expected["spatial"][[17, 3]])
    same(view[2:30:3], expected["spatial"][2:30:3])
    same(view[5], expected["spatial"][5])
    same(view.read(), expected["spatial"])
    same(np.concatenate(list(view.batches(7))), expected["spatial"])
    same(StoreRows(store, order, "pooled")[rows], expected["pooled"][rows])
    sub = view.subset(rows)
    same(sub.read(), expected["spatial"][rows])
    same(pickle.loads(pickle.dumps(sub)).read(), expected["spatial"][rows])
    same(StoreRows.from_spec(json.loads(json.dumps(sub.spec()))).read(), expected["spatial"][rows])
    with pytest.raises(TypeError, match="read in batches"):
        np.asarray(view)
    with pytest.raises(IndexError):
        view[np.array([40])]
    with pytest.raises(StoreError, match="the store was replaced meanwhile"):
        StoreRows.from_spec({**sub.spec(), "fingerprint_id": "0" * 16})


def test_training_on_views_is_bitwise_training_in_memory(tmp_path):
    """The same head, history and probabilities from store rows streamed a batch at a time as from arrays."""
    store, hashes = small_store(tmp_path)
    y = np.arange(40) % 2
    parts = (slice(0, 24), slice(24, 32), slice(32, 40))
    views = [StoreRows(store, hashes[p], "spatial") for p in parts]
    arrays = [v.read() for v in views]
    train = {"n_classes": 2, "epochs": 2, "steps_per_epoch": 3, "units": 8, "validation_steps": 2,
             "jit_compile": False if headproc.process_backend() == "tensorflow" else "auto"}
    out = {}
    for name, (x_fit, x_val, x_test) in (("views", views), ("arrays", arrays)):
        out[name] = headproc.train_and_predict(headproc.process_backend(), x_fit, y[parts[0]], x_val, y[parts[1]],
                                               x_test, head_file=tmp_path / f"{name}.keras", **train)
    assert out["views"].history == out["arrays"].history
    assert not _readers_alive()  # training read its batches ahead (tests below), and stopped reading when it ended
    assert np.array_equal(out["views"].proba_val, out["arrays"].proba_val)
    assert np.array_equal(out["views"].proba_test, out["arrays"].proba_test)
    with np.load(tmp_path / "views.npz") as a, np.load(tmp_path / "arrays.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


@pytest.mark.parametrize("text,expected", [("8G", 8 << 30), ("512m", 512 << 20), ("1.5GiB", 3 << 29), ("4096", 4096),
                                           (2048, 2048), ("2 KB", 2048)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "", "0", "-1G", "nan", 0, True, 1.5])
def test_bad_budgets_are_refused_with_the_house_message(bad):
    with pytest.raises(OptionError, match=r"The 'memory_budget' parameter of HeadOptions must be a positive byte count"):
        HeadOptions(memory_budget=bad).validate()


def test_sample_rows_is_stratified_seeded_and_fits():
    y = np.array([0] * 30 + [1] * 10)
    assert sample_rows(y, 4, 40 * 32) is None  # the float64 matrix fits: all rows
    rows = sample_rows(y, 4, 20 * 32, seed=5)
    assert len(rows) == 20 and np.bincount(y[rows]).tolist() == [15, 5]
    assert np.array_equal(rows, sample_rows(y, 4, 20 * 32, seed=5)) and np.all(np.diff(rows) > 0)
    with pytest.raises(XrayfeatError, match="holds 3 rows of 4 features for the baselines logreg; .* needs at least 4"):
        sample_rows(y, 4, 3 * 32, names=("logreg",))


def head_columns(path):
    with open(path) as fh:
        return [{k: v for k, v in row.items() if not k.startswith("logreg:")} for row in csv.DictReader(fh)]


@pytest.mark.heavy  # costly end to end: .ci/run runs it, ./scripts/test.sh leaves it out
def test_fit_head_streams_past_a_tiny_budget_with_the_same_head(tmp_path, shared_run):
    """A budget below the features: the head streams (in the jax child where jax is installed) and is the same head;
    the baselines fit on a stratified sample and say so."""
    data = shared_run.data  # the session's tiny dataset, its features in a cache of this test's own
    features = FeatureOptions("vgg16", weights="none", image_size=32)  # 1x1x512 maps: 2 KiB a row as float32
    run = RunOptions(cache_dir=shared_run.copy_cache(tmp_path / "cache"), workers=0, batch_size=8)
    quick = {"epochs": 2, "steps_per_epoch": 3, "units": 8, "n_bootstrap": 20}
    dataset = discover(data)
    fit_head(dataset, features, HeadOptions(**quick, baselines=()), run, out=tmp_path / "memory")  # the head alone
    tiny = fit_head(dataset, features, HeadOptions(**quick, baselines=("logreg",), memory_budget="20K"), run,
                    out=tmp_path / "stream")

    memory, stream = (json.loads((tmp_path / r / "config.json").read_text()) for r in ("memory", "stream"))
    assert memory["training"]["features_in_memory"] is True and memory["training"]["streamed_bytes"] == 0
    assert stream["training"]["features_in_memory"] is False
    assert stream["training"]["streamed_bytes"] == (12 + 6) * 512 * 4  # 12 train (with val) and 6 test maps
    assert stream["training"]["memory_budget_bytes"] == 20 << 10
    assert head_columns(tmp_path / "stream" / "predictions.csv") == head_columns(tmp_path / "memory" / "predictions.csv")
    assert stream["params"] == memory["params"]
    with np.load(tmp_path / "stream" / "head.npz") as a, np.load(tmp_path / "memory" / "head.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in b.files)
    history = [(tmp_path / r / "history.csv").read_text().splitlines() for r in ("memory", "stream")]
    assert [line.split(",")[:5] for line in history[0]] == [line.split(",")[:5] for line in history[1]]

    # 9 fit rows of 512 float64 pooled features are 36 KiB; 20 KiB hold 5 rows, drawn 2 per class
    n_fit = stream["counts"]["train"]
    assert stream["baselines"]["logreg"]["subsample"] == {"rows": 4, "of": n_fit}
    notices = [w.message for w in tiny.warnings if w.kind == "subsample"]
    assert len(notices) == 1 and f"stratified random sample of 4 of {n_fit} training images" in notices[0]
    assert (tmp_path / "stream" / "gradcam.png").read_bytes() == (tmp_path / "memory" / "gradcam.png").read_bytes()


def test_cli_bad_memory_budget_exits_2(tmp_path):
    from click.testing import CliRunner

    data = write_tiny_dataset(tmp_path / "data", per_split=(("train", 2), ("test", 1)))
    result = CliRunner().invoke(main, ["fit-head", str(data), "-b", "vgg16", "--weights", "none", "--image-size", "32",
                                       "--cache-dir", str(tmp_path / "cache"), "--memory-budget", "lots"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "xrayfeat: error: The 'memory_budget' parameter of HeadOptions must be a positive byte count or a size like "
        "'512M', '8G' or '1.5T' (units of 1024) or None. Got 'lots' instead.")
    assert not (tmp_path / "cache").exists()


def _fit_rows_labels(run_dir) -> np.ndarray:
    """The labels of the rows the baselines were fitted on (role ``train`` in splits.csv), as class indices."""
    with open(run_dir / "splits.csv") as fh:
        labels = [row["label"] for row in csv.DictReader(fh) if row["split"] == "train"]
    return np.unique(labels, return_inverse=True)[1]


@pytest.mark.parametrize("budget,left", [("60K", 24 << 10), ("36K", 0)], ids=["some-left", "nothing-left"])
def test_the_baselines_get_the_budget_the_features_in_memory_leave(tmp_path, shared_run, budget, left):
    """The head's maps read into memory take their share of --memory-budget; the baselines get what is left,
    sample down to it and say so; with nothing left, the smallest sample they can cross-validate."""
    data = shared_run.data  # the session's tiny dataset, its features in a cache of this test's own
    features = FeatureOptions("vgg16", weights="none", image_size=32)  # 1x1x512 maps: 2 KiB a row as float32
    run = RunOptions(cache_dir=shared_run.copy_cache(tmp_path / "cache"), workers=0, batch_size=8)
    head = HeadOptions(epochs=1, steps_per_epoch=2, units=8, baselines=("logreg",), memory_budget=budget)
    result = fit_head(discover(data), features, head, run, out=tmp_path / "run")

    record = json.loads((tmp_path / "run" / "config.json").read_text())
    held = (12 + 6) * 512 * 4  # the head's 12 train (with val) and 6 test maps, 36 KiB: within the budget
    assert record["training"]["features_in_memory"] is True
    assert record["training"]["memory_budget_bytes"] == parse_size(budget)
    assert record["training"]["features_held_bytes"] == held
    y_fit = _fit_rows_labels(tmp_path / "run")
    smallest = 2 * 2 * 512 * 8  # 2 rows per class of 512 float64 pooled features
    assert record["training"]["baselines_budget_bytes"] == max(left, smallest)
    rows = sample_rows(y_fit, 512, max(left, smallest))  # 9 fit rows are 36 KiB as float64: more than is left
    assert record["baselines"]["logreg"]["subsample"] == {"rows": len(rows), "of": len(y_fit)}
    [notice] = [w.message for w in result.warnings if w.kind == "subsample"]
    assert f"stratified random sample of {len(rows)} of {len(y_fit)} training images" in notice
    assert f"the features read into memory take 36.0 KiB of the {budget[:-1]}.0 KiB memory budget" in notice
    if left:
        assert notice.endswith("leaving 24.0 KiB for the baselines")
    else:
        assert notice.endswith("leaving nothing for the baselines: they were fitted on the smallest sample they can "
                               "cross-validate (2 images per class, 16.0 KiB)")


# --------------------------------------------------------------------------- reading ahead


def _readers_alive() -> list:
    """The read-ahead threads still running in this process."""
    return [t for t in threading.enumerate() if t.name == "xrayfeat-read-ahead" and t.is_alive()]


def _open_hdf5_files() -> int:
    import h5py

    return len(h5py.h5f.get_obj_ids(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE))


def _damage(store, shard: int, row: int) -> None:
    """A valid HDF5 edit of one stored value (HDF5's own checksums agree): only the row's digest tells."""
    with h5py.File(store.path / "shards" / store.shard_names()[shard], "r+") as f:
        f["spatial"][row, 0, 0, 0] += 1.0


def _train_kwargs(**more) -> dict:
    return {"n_classes": 2, "units": 8, "epochs": 1, "steps_per_epoch": 4, "batch_size": 10, "validation_steps": 2,
            "jit_compile": False if headproc.process_backend() == "tensorflow" else "auto", **more}


def test_read_ahead_gives_the_synchronous_batches_in_order(tmp_path):
    """The batch stream read ahead on a thread is the synchronous stream (and the in-memory one), batch for batch,
    across passes and their straddling batches; closing stops the thread and leaves no shard file open."""
    store, hashes = small_store(tmp_path)
    view = StoreRows(store, hashes, "spatial")
    y = np.arange(40) % 2
    weights = np.linspace(0.5, 1.5, 40).astype("float32")
    n = 25  # 175 rows: four passes and more, batches of 7 straddling their ends
    sync = list(itertools.islice(heads._batches(view, y, 7, 5, weights), n))
    memory = list(itertools.islice(heads._batches(view.read(), y, 7, 5, weights), n))
    files = _open_hdf5_files()
    with ReadingAhead() as reading:
        ahead = list(itertools.islice(heads._batches(view, y, 7, 5, weights, reading=reading), n))
        assert len(_readers_alive()) == 1
    assert not _readers_alive() and _open_hdf5_files() == files
    assert len(ahead) == len(sync) == len(memory) == n
    for a, s, m in zip(ahead, sync, memory):
        assert len(a) == 3 and all(np.array_equal(u, v) and np.array_equal(u, w) for u, v, w in zip(a, s, m))
        assert a[0].dtype == np.float32


def test_read_ahead_is_bounded_and_raises_the_readers_error_in_order():
    reads, groups = [], []

    def read(keys):
        groups.append(keys)
        for key in keys:
            reads.append(key)
            yield key * 10

    for group, held in ((1, [0, 1, 2, 3]), (3, [0, 1, 2, 3])):  # 1 taken, 2 queued, 1 read and waiting for room
        reads.clear(), groups.clear()
        with ReadAhead(read, itertools.count(), depth=2, group=group) as ahead:
            assert next(ahead) == (0, 0)
            for _ in range(100):  # until the queue is full and the thread waits with the next item read
                if ahead._queue.full() and len(reads) == len(held):
                    break
                threading.Event().wait(0.05)
            threading.Event().wait(0.3)
            assert reads == held and groups == [list(range(i, i + group)) for i in range(0, len(held), group)]
            assert [next(ahead) for _ in range(3)] == [(1, 10), (2, 20), (3, 30)]
        assert not ahead.running and list(ahead) == []

    error = StoreError("shard.h5: spatial of row 3 does not match its checksum")

    def failing(keys):
        for key in keys:
            if key == 3:
                raise error
            yield key

    with ReadAhead(failing, iter(range(10)), group=2) as ahead:
        assert [next(ahead) for _ in range(3)] == [(0, 0), (1, 1), (2, 2)]
        with pytest.raises(StoreError) as raised:
            next(ahead)
        assert raised.value is error and ahead.error is error and list(ahead) == []
    assert not ahead.running
    for name in ("depth", "group"):
        with pytest.raises(ValueError, match=f"The '{name}' parameter of ReadAhead must be an int >= 1. Got 0 instead."):
            ReadAhead(read, iter(()), **{name: 0})


@pytest.mark.parametrize("harm", ["damaged row", "shard removed"])
def test_a_store_error_met_ahead_is_raised_by_training_as_the_store_raises_it(tmp_path, harm):
    """A row that fails its checksum (in the third batch: read on the thread that feeds the steps), or the shard
    removed after the first step: training raises the store's own one-line error, the one reading each batch when
    the step asks for it gives (on TensorFlow too, whose fit would wrap it in a "Graph execution error"), rather
    than hanging; no reader thread or file stays open."""
    import keras

    class Remove(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                (store.path / "shards" / store.shard_names()[0]).unlink()

    store, hashes = small_store(tmp_path)
    y = np.arange(40) % 2
    x, x_val = StoreRows(store, hashes[:30], "spatial"), StoreRows(store, hashes[30:], "spatial")
    if harm == "damaged row":
        third = next(itertools.islice(heads._batch_stream(30, 10, np.random.default_rng(0)), 2, None))
        _damage(store, 0, int(third[-1]))
        with pytest.raises(StoreError) as synchronous:  # the training stream read batch by batch
            list(itertools.islice(heads._batches(x, y[:30], 10, 0), 3))
        expected = re.escape(str(synchronous.value))
    else:
        expected = rf"^10 of 10 images have no features in {re.escape(str(store.path))} \(e\.g\. [0-9a-f]{{12}}\); run"
    files = _open_hdf5_files()
    with pytest.raises(StoreError, match=expected):
        train_head(x, y[:30], x_val, y[30:], callbacks=[Remove()] if harm == "shard removed" else [],
                   **_train_kwargs(epochs=2))
    assert not _readers_alive() and _open_hdf5_files() == files


def test_an_interrupted_training_stops_its_readers(tmp_path):
    """Ctrl-C in a step (a callback raising KeyboardInterrupt): the interrupt propagates, the read-ahead threads of
    the training and validation streams stop, and no shard file stays open."""
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                raise KeyboardInterrupt

    store, hashes = small_store(tmp_path)
    y = np.arange(40) % 2
    x, x_val = StoreRows(store, hashes[:30], "spatial"), StoreRows(store, hashes[30:], "spatial")
    files = _open_hdf5_files()
    with pytest.raises(KeyboardInterrupt):
        train_head(x, y[:30], x_val, y[30:], callbacks=[Interrupt()], **_train_kwargs())
    assert not _readers_alive() and _open_hdf5_files() == files


@pytest.mark.heavy  # a jax child: .ci/run runs it, ./scripts/test.sh leaves it out
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_a_store_error_met_ahead_in_the_jax_child_is_its_one_line(tmp_path):
    """The head child (jax, its own loop) reading ahead meets a damaged row: the parent gets the one line it gave
    before reading ahead (the child's error, named), not a hang."""
    store, hashes = small_store(tmp_path)
    y = np.arange(40) % 2
    x, x_val, x_test = (StoreRows(store, hashes[p], "spatial") for p in (slice(0, 30), slice(30, 36), slice(36, 40)))
    third = next(itertools.islice(heads._batch_stream(30, 10, np.random.default_rng(0)), 2, None))
    _damage(store, 0, int(third[-1]))
    with pytest.raises(StoreError) as synchronous:
        list(itertools.islice(heads._batches(x, y[:30], 10, 0), 3))
    train = _train_kwargs(epochs=2, jit_compile="auto")
    with pytest.raises(XrayfeatError) as failed:
        headproc.train_and_predict("jax", x, y[:30], x_val, y[30:36], x_test, head_file=tmp_path / "h.keras", **train)
    text = str(failed.value)
    assert "\n" not in text and text.startswith(f"training the head on jax failed: StoreError: {synchronous.value}; ")
