#!/usr/bin/env python
"""The seed's head trained on features streamed from the store vs the same features in memory: seconds per step.

    python scripts/bench_stream.py                      # 3,000 rows of 5x5x2048 float16 (InceptionV3's maps)
    python scripts/bench_stream.py --rows 6000 --repeats 3 --dir /tmp/bench --keep

What ``fit-head --memory-budget`` does when the features exceed the budget: the
head reads each training batch from the store (:class:`xrayfeat.store.rows.StoreRows`,
every row checked against its digest) instead of from a float32 array, on a
thread that reads the next batches while the current one trains
(:meth:`~xrayfeat.store.rows.StoreRows.read_ahead`). A third run reads from the
store without reading ahead (``sync``: each batch read when the step asks for
it, as before the read-ahead; the view behind a wrapper that is no
``StoreRows``), so the read-ahead's gain is measured in the same run. The
rows are synthetic, written through the store API into a temporary store
(about 300 MB for 3,000 rows); the page cache is warm, since they were just
written, so a cold disk adds its read time to the streamed steps. The runs
train the same head (13.1 M parameters on 5x5x2048 maps, batch 10) with the
same seed on the same rows, in this process, on ``KERAS_BACKEND`` (jax by
default when installed, as fit-head trains the head on a CPU), timing every
step (``train_head(step_timing=True)``: the mean step after the first epoch).
The runs alternate, ``--repeats`` times each; the table shows the median of
each, a single batch read, and whether all the histories are identical. The last line holds the
figures as key=value, ratios first: ``ratio_step`` (streamed with read-ahead /
in memory, the figure the read-ahead is judged by) and ``ratio_sync``
(streamed without it / in memory); ``load1`` is the load average at the end.

``measure()`` is the same measurement for other scripts (``scripts/bench_cluster.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FINGERPRINT = {
    "backbone": "bench", "weights": "none:seed=0", "image_size": 299, "preprocess": "tf", "decode": "v1",
    "layer": "synthetic", "precision": "float32", "store_dtype": "float16", "keras": "-", "backend": "-",
}


def _build(cache: Path, n_rows: int, shape: tuple, write_rows: int = 250):
    """A store of ``n_rows`` synthetic rows (a spatial map of ``shape`` and its mean as the pooled vector); their keys."""
    from xrayfeat.store.feature_store import FeatureStore

    store = FeatureStore.open(cache, FINGERPRINT, create=True)
    rng = np.random.default_rng(0)
    hashes = [hashlib.sha256(b"row %d" % i).hexdigest() for i in range(n_rows)]
    with store.writer() as writer:
        for start in range(0, n_rows, write_rows):
            keys = hashes[start:start + write_rows]
            spatial = rng.gamma(1.0, 0.5, (len(keys), *shape)).astype(np.float32)
            writer.append(keys, spatial, spatial.mean(axis=(1, 2)))
    return store, hashes


def _train(x, y, *, epochs: int, steps: int, batch_size: int, seed: int):
    from xrayfeat.models.head import train_head

    return train_head(x, y, n_classes=2, epochs=epochs, steps_per_epoch=steps, batch_size=batch_size, seed=seed,
                      step_timing=True)


class _Synchronous:
    """The view as plain indexable features, no :class:`~xrayfeat.store.rows.StoreRows`: ``train_head`` then reads
    each batch through it when the step asks for it (what it did before reading ahead)."""

    def __init__(self, view):
        self.view, self.shape, self.dtype = view, view.shape, view.dtype

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, rows):
        return self.view[rows]


def _read_batch_ms(view, batch_size: int, reads: int = 50) -> float:
    """Median milliseconds to read one random sorted batch of rows through the view."""
    rng = np.random.default_rng(1)
    times = []
    for _ in range(reads):
        rows = np.sort(rng.choice(len(view), batch_size, replace=False))
        t = time.perf_counter()
        view[rows]
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def measure(n_rows: int = 3000, shape: tuple = (5, 5, 2048), *, epochs: int = 3, steps: int = 15,
            batch_size: int = 10, repeats: int = 2, seed: int = 0, directory=None, keep: bool = False) -> dict:
    """Train the head from memory and from the store, alternating ``repeats`` times; the figures as a dict.

    ``step_s_memory``/``step_s_stream``/``step_s_sync``: the median over repeats of
    the mean step (after the first epoch), in memory, streamed with read-ahead,
    streamed without; ``ratio_step``: stream / memory; ``ratio_sync``: sync / memory; ``read_batch_ms``:
    one batch read through the view; ``identical``: whether every run gave the
    same history; ``build_s``: writing the synthetic store. ``directory``: where
    the store goes (a temporary folder by default, removed unless ``keep``).
    """
    import keras

    from xrayfeat.store.rows import StoreRows

    folder = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        t = time.perf_counter()
        store, hashes = _build(folder / "cache", n_rows, tuple(shape))
        build_s = time.perf_counter() - t
        view = StoreRows(store, hashes, "spatial")
        t = time.perf_counter()
        array = view.read()
        load_s = time.perf_counter() - t
        y = (np.arange(n_rows) % 2).astype(int)
        steps_s = {"memory": [], "stream": [], "sync": []}
        histories = []
        for _ in range(repeats):
            for name, x in (("memory", array), ("stream", view), ("sync", _Synchronous(view))):
                trained = _train(x, y, epochs=epochs, steps=steps, batch_size=batch_size, seed=seed)
                steps_s[name].append(trained.step_seconds)
                histories.append(trained.history)
        memory, stream, sync = (statistics.median(steps_s[name]) for name in ("memory", "stream", "sync"))
        return {
            "ratio_step": stream / memory, "ratio_sync": sync / memory,
            "step_s_memory": memory, "step_s_stream": stream, "step_s_sync": sync,
            "read_batch_ms": _read_batch_ms(view, batch_size), "identical": all(h == histories[0] for h in histories),
            "rows": n_rows, "gib_float32": array.nbytes / 2**30, "load_s": load_s, "build_s": build_s,
            "backend": keras.backend.backend(), "steps_per_run": epochs * steps, "repeats": repeats,
        }
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000, help="Synthetic rows in the store (default 3000).")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs per run (the first is left out of the step time).")
    parser.add_argument("--steps", type=int, default=15, help="Steps per epoch.")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each, alternating (default 2).")
    parser.add_argument("--dir", type=Path, default=None, help="Folder for the store (default: a temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the store folder.")
    args = parser.parse_args(argv)
    if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("jax"):
        os.environ["KERAS_BACKEND"] = "jax"  # what fit-head trains the head on, on a CPU (before Keras is imported)
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    r = measure(args.rows, epochs=args.epochs, steps=args.steps, repeats=args.repeats, directory=args.dir,
                keep=args.keep)
    print(f"{'rows':>8} {'GiB f32':>8} {'backend':>10} {'memory s/step':>14} {'stream s/step':>14} {'ratio':>6} "
          f"{'sync s/step':>12} {'ratio':>6} {'read ms/batch':>14} {'identical':>9}")
    print(f"{r['rows']:>8} {r['gib_float32']:>8.2f} {r['backend']:>10} {r['step_s_memory']:>14.4f} "
          f"{r['step_s_stream']:>14.4f} {r['ratio_step']:>6.3f} {r['step_s_sync']:>12.4f} {r['ratio_sync']:>6.3f} "
          f"{r['read_batch_ms']:>14.2f} {str(r['identical']):>9}")
    print(f"ratio_step={r['ratio_step']:.3f} ratio_sync={r['ratio_sync']:.3f} memory_step_s={r['step_s_memory']:.4f} "
          f"stream_step_s={r['step_s_stream']:.4f} sync_step_s={r['step_s_sync']:.4f} "
          f"read_batch_ms={r['read_batch_ms']:.2f} identical={int(r['identical'])} rows={r['rows']} "
          f"load_s={r['load_s']:.2f} build_s={r['build_s']:.1f} backend={r['backend']} repeats={r['repeats']} "
          f"load1={os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
