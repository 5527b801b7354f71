"""Benchmark: the head's training step, fused and Keras' own, vs bare Keras ``fit`` on arrays.

Three variants train the same seed head (BatchNormalization → Flatten →
Dense(256) → Dropout → Dense(K)) on random cached features of one backbone's
shape, with batch 10 and 10 steps per epoch, and time each training step the
same way (a callback; the first epoch, which compiles, is left out):

- ``bare``: bare Keras, ``model.fit`` on in-memory numpy arrays;
- ``loop``: ``heads.train_head(step="keras")``, Keras' own jitted step in
  xrayfeat's loop (on jax; ``model.fit`` on another backend);
- ``fused``: ``heads.train_head(step="fused")``, the fused step of
  ``xrayfeat/models/head_fused.py`` (jax on a CPU only; left out elsewhere).

Repetitions are interleaved (the order rotates every round) so that load from
other processes hits all alike; each figure is the median over rounds, each
ratio the median of per-round ratios. The backend is ``KERAS_BACKEND``, jax
when unset (where fit-head trains the head on a CPU).

    python scripts/bench_head.py --backbone inception_v3 --classes 4
    KERAS_BACKEND=tensorflow python scripts/bench_head.py --jit 0     # TensorFlow without XLA (no fused step)

``--compare-backends`` runs this script again in child processes, interleaved
round by round, for TensorFlow without XLA, TensorFlow with XLA, JAX, and JAX
with the glibc malloc settings fit-head gives its head's child process
(``xrayfeat.models.head_process.MALLOC_TUNABLES``), and compares their
train_head step times with Keras' own step (a backend is fixed per process).

The last line holds the key=value figures, ratios first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")

SHAPES = {"inception_v3": (5, 5, 2048), "vgg16": (7, 7, 512)}
JIT = {"auto": "auto", "0": False, "1": True}


def _features(n: int, shape, classes: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape), dtype="float32")
    y = rng.integers(0, classes, n)
    return x, y


def _bare(x, y, args, jit):
    """Bare Keras: the same head, ``model.fit`` on in-memory numpy arrays."""
    import keras

    from xrayfeat.models import head as heads

    keras.utils.set_random_seed(0)
    model = heads.build_head(x.shape[1:], args.classes, units=256, dropout=0.3, l2=1e-3)
    binary = args.classes == 2
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit,
    )
    timing = heads._timing_callback()
    target = y.reshape(-1, 1).astype("float32") if binary else y
    with warnings.catch_warnings():
        # Keras 3 cuts an epoch short ("ran out of data") when steps_per_epoch * batch
        # crosses the end of the arrays; that is bare fit's behaviour, timed as is.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(
            x, target, batch_size=10, steps_per_epoch=10, epochs=args.epochs, callbacks=[timing], verbose=0
        )
    return timing


def _head(x, y, args, jit, step="keras"):
    from xrayfeat.models import head as heads

    timing = heads._timing_callback()  # the same clock as bare's
    trained = heads.train_head(
        x, y, n_classes=args.classes, epochs=args.epochs, batch_size=10, steps_per_epoch=10,
        seed=0, jit_compile=jit, callbacks=[timing], step_timing=True, step=step,
    )
    if step == "fused" and trained.settings["loop"] != "fused":
        raise SystemExit(f"the fused step did not train ({trained.settings['loop']})")
    return timing


def bench(args) -> dict:
    import keras

    from xrayfeat.models import head as heads

    jit = heads.resolve_jit_compile(JIT[args.jit])
    shape = SHAPES[args.backbone]
    x, y = _features(args.n, shape, args.classes)
    variants = ["bare", "loop"] + (["fused"] if keras.backend.backend() == "jax" and jit else [])
    rows = {name: [] for name in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for name in order:
            t = _bare(x, y, args, jit) if name == "bare" else _head(x, y, args, jit, "keras" if name == "loop" else "fused")
            row = {"step": t.mean_step(), "cpu": t.mean_step(cpu=True), "first": t.epoch_seconds[0],
                   "fit": t.train_end - t.train_start}
            rows[name].append(row)
            print(f"round {r + 1}/{args.rounds} {name:5s}: {row['step'] * 1e3:7.1f} ms/step "
                  f"(cpu {row['cpu'] * 1e3:7.1f} ms)  first epoch {row['first']:5.1f} s  fit {row['fit']:6.1f} s",
                  file=sys.stderr, flush=True)

    def med(name, key):
        return statistics.median(row[key] for row in rows[name])

    def ratio(a, b, key="step"):
        return statistics.median(u[key] / v[key] for u, v in zip(rows[a], rows[b]))

    figures = {}
    if "fused" in rows:
        figures.update(ratio_fused_bare=ratio("fused", "bare"), ratio_fused_loop=ratio("fused", "loop"),
                       ratio_cpu_fused_bare=ratio("fused", "bare", "cpu"))
    figures.update(ratio_loop_bare=ratio("loop", "bare"), ratio_cpu_loop_bare=ratio("loop", "bare", "cpu"))
    for name in rows:
        figures[f"{name}_ms"] = med(name, "step") * 1e3
    for name in rows:
        figures[f"{name}_cpu_ms"] = med(name, "cpu") * 1e3
    for name in rows:
        figures[f"{name}_first_s"] = med(name, "first")
    return {
        **figures,
        "backend": keras.backend.backend(),
        "jit": int(jit),
        "backbone": args.backbone,
        "shape": "x".join(map(str, shape)),
        "classes": args.classes,
        "n": args.n,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "params": heads.count_params(heads.build_head(shape, args.classes))["total"],
    }


def _line(figures: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())


def _parse(line: str) -> dict:
    return dict(item.split("=", 1) for item in line.split())


REGION_FLAG = "--xla_cpu_copy_insertion_use_region_analysis=true"


def compare_backends(args) -> dict:
    """Child processes per (backend, jit), interleaved round by round; one fit each."""
    from xrayfeat.models.head_process import MALLOC_TUNABLES

    # the last: jax with glibc malloc keeping freed memory, as fit-head's head child runs (xrayfeat/models/head_process.py)
    # and the same with XLA's region analysis in copy insertion (drops a copy of the 52 MB kernel per step; not used by
    # fit-head: in fit-head's own path an interleaved A/B did not show the gain, see BENCHMARKS.md)
    configs = [("tensorflow", "0", "tf"), ("tensorflow", "1", "tf_xla"), ("jax", "1", "jax"), ("jax", "1", "jax_malloc"),
               ("jax", "1", "jax_region")]
    rows = {label: [] for _, _, label in configs}
    for r in range(args.rounds):
        order = configs if r % 2 == 0 else configs[::-1]
        for backend, jit, label in order:
            cmd = [sys.executable, __file__, "--backbone", args.backbone, "--classes", str(args.classes),
                   "--epochs", str(args.epochs), "--n", str(args.n), "--jit", jit, "--rounds", "1",
                   "--head-only"]
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
            env.pop("GLIBC_TUNABLES", None)
            if label in ("jax_malloc", "jax_region"):
                env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
            if label == "jax_region":
                env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + REGION_FLAG).strip()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            figures = _parse(out.strip().splitlines()[-1])
            rows[label].append({k: float(figures[k]) for k in ("head_ms", "head_cpu_ms", "head_first_s")})
            row = rows[label][-1]
            print(f"round {r + 1}/{args.rounds} {label:6s}: {row['head_ms']:7.1f} ms/step "
                  f"(cpu {row['head_cpu_ms']:7.1f} ms)  first epoch {row['head_first_s']:5.1f} s",
                  file=sys.stderr, flush=True)

    def med(label, key):
        return statistics.median(row[key] for row in rows[label])

    def ratio(a, b, key="head_ms"):
        return statistics.median(x[key] / y[key] for x, y in zip(rows[a], rows[b]))

    figures = {
        "ratio_tf_jax": ratio("tf", "jax"),
        "ratio_xla_jax": ratio("tf_xla", "jax"),
        "ratio_tf_xla": ratio("tf", "tf_xla"),
        "ratio_jax_malloc": ratio("jax", "jax_malloc"),
        "ratio_jax_region": ratio("jax_malloc", "jax_region"),
        # CPU time per step: steadier than wall time when other processes share the cores.
        "ratio_cpu_tf_jax": ratio("tf", "jax", "head_cpu_ms"),
        "ratio_cpu_xla_jax": ratio("tf_xla", "jax", "head_cpu_ms"),
        "ratio_cpu_tf_xla": ratio("tf", "tf_xla", "head_cpu_ms"),
        "ratio_cpu_jax_malloc": ratio("jax", "jax_malloc", "head_cpu_ms"),
    }
    for label in rows:
        figures[f"{label}_ms"] = med(label, "head_ms")
    for label in rows:
        figures[f"{label}_cpu_ms"] = med(label, "head_cpu_ms")
    for label in rows:
        figures[f"{label}_first_s"] = med(label, "head_first_s")
    figures.update(backbone=args.backbone, classes=args.classes, n=args.n, epochs=args.epochs, rounds=args.rounds)
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=sorted(SHAPES), default="inception_v3")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6, help="per fit; the first (compile) is not timed")
    parser.add_argument("--n", type=int, default=160, help="training samples (random features)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--jit", choices=sorted(JIT), default="auto",
                        help="jit_compile for both: auto (train_head's choice), 0 or 1")
    parser.add_argument("--compare-backends", action="store_true",
                        help="compare train_head on TensorFlow, TensorFlow+XLA, JAX, and JAX with fit-head's malloc "
                             "settings (child processes)")
    parser.add_argument("--head-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch compiles and is not timed")

    start = time.perf_counter()
    if args.compare_backends:
        figures = compare_backends(args)
        print(f"\ntrain_head, {args.backbone} {args.classes}-class head, n={args.n}, batch 10, "
              f"median ms/step over {args.rounds} interleaved rounds")
        print(f"  {'':8s} {'ms/step':>8s} {'cpu ms/step':>12s} {'1st epoch s':>12s}")
        for label in ("tf", "tf_xla", "jax", "jax_malloc", "jax_region"):
            print(f"  {label:8s} {figures[label + '_ms']:8.1f} {figures[label + '_cpu_ms']:12.1f} "
                  f"{figures[label + '_first_s']:12.1f}")
    elif args.head_only:
        import keras

        from xrayfeat.models import head as heads

        x, y = _features(args.n, SHAPES[args.backbone], args.classes)
        t = _head(x, y, args, heads.resolve_jit_compile(JIT[args.jit]))
        figures = {"head_ms": t.mean_step() * 1e3, "head_cpu_ms": t.mean_step(cpu=True) * 1e3,
                   "head_first_s": t.epoch_seconds[0], "backend": keras.backend.backend()}
    else:
        figures = bench(args)
        print(f"\n{args.backbone} {args.classes}-class head ({figures['params']:,} parameters), "
              f"n={args.n}, batch 10, 10 steps/epoch, {args.epochs} epochs, backend "
              f"{figures['backend']}, jit_compile={bool(figures['jit'])}")
        print(f"  {'':26s} {'ms/step':>8s} {'cpu ms/step':>12s} {'1st epoch s':>12s}")
        labels = {"bare": "bare model.fit", "loop": "train_head, Keras' step", "fused": "train_head, fused step"}
        for key, label in labels.items():
            if f"{key}_ms" in figures:
                print(f"  {label:26s} {figures[key + '_ms']:8.1f} {figures[key + '_cpu_ms']:12.1f} "
                      f"{figures[key + '_first_s']:12.1f}")
        if "ratio_fused_bare" in figures:
            print(f"  fused / bare per step (median of per-round ratios): wall {figures['ratio_fused_bare']:.3f}, "
                  f"cpu {figures['ratio_cpu_fused_bare']:.3f}; fused / Keras' step {figures['ratio_fused_loop']:.3f}")
        print(f"  Keras' step in train_head / bare: wall {figures['ratio_loop_bare']:.3f}, cpu {figures['ratio_cpu_loop_bare']:.3f}")
    figures["wall_s"] = time.perf_counter() - start
    print(_line(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
