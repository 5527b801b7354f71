"""Benchmark the 2-D embedding step: PCA, each available t-SNE, UMAP (first call and warm).

Synthetic "backbone features": four Gaussian clusters in a random 20-d subspace
of a ``--dim``-dimensional space, plus isotropic noise, passed through a ReLU
(pooled CNN features are non-negative with many near-dead channels). Everything
is timed in ONE process so that the figures compare under the same load; the
process is fresh, so UMAP's first call includes importing umap-learn and numba's
compilation, as a user of ``xrayfeat embed`` experiences it. Its second call on
the same data is warm; the difference is the compilation.

Each step reports wall seconds and process CPU seconds (all threads) and the
1-minute load average after it: on a shared machine wall time is inflated by
other processes, and a multi-threaded step's CPU time by threads spinning while
waiting for a core. The target is 60 s per method on 2 cores, PCA included.

    python scripts/bench_embed.py --n 10000 --dim 2048 --seed 0
    python scripts/bench_embed.py --n 10000 --dim 2048 --umap-nndescent   # also UMAP's own NN search

Ends with one ``key=value`` line, ratios first.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time

import numpy as np

TARGET_S = 60.0


def synthetic_features(n: int, dim: int, seed: int, *, clusters: int = 4, subspace: int = 20):
    """(features float32 (n, dim) >= 0, labels (n,)): separated clusters in a random subspace, plus noise."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((subspace, dim)).astype(np.float32) / np.sqrt(subspace)
    centres = rng.standard_normal((clusters, subspace)) * 3.0
    labels = rng.integers(0, clusters, n)
    latent = centres[labels] + rng.standard_normal((n, subspace))
    x = (latent.astype(np.float32) @ basis) + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    return np.maximum(x, 0.0, out=x), labels


class Timer:
    def __init__(self, rows: list, name: str):
        self.rows, self.name = rows, name

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w
        self.cpu = time.process_time() - self.c
        self.rows.append((self.name, self.wall, self.cpu, os.getloadavg()[0]))
        print(f"  {self.name}: {self.wall:.1f} s", file=sys.stderr, flush=True)
        return False


_NNDESCENT_CHILD = """
import sys, time, warnings, numpy as np
z = np.load(sys.argv[1])
t = time.perf_counter()
import umap
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    umap.UMAP(n_components=2, random_state=0, n_jobs=1).fit_transform(z)
print(time.perf_counter() - t)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-jobs", type=int, default=None, help="threads for t-SNE and the neighbour search (default: all)")
    ap.add_argument("--skip-sklearn", action="store_true", help="do not time scikit-learn's t-SNE (the slowest)")
    ap.add_argument("--umap-nndescent", action="store_true",
                    help="also time plain UMAP (its own NN-descent search) in a fresh subprocess")
    args = ap.parse_args(argv)

    from xrayfeat import embedding as E

    jobs = E._resolve_n_jobs(args.n_jobs)
    print(f"bench_embed: n={args.n} dim={args.dim} seed={args.seed} threads={jobs} cores={os.cpu_count()} "
          f"load={os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    x, y = synthetic_features(args.n, args.dim, args.seed)
    rows: list = []
    quality: dict[str, float] = {}

    with Timer(rows, f"PCA {args.dim}->50 (centred)") as t_pca:
        z = E._reduce(x, 50, args.seed)

    def score(name, coords):
        quality[name] = E._scores(z, coords, y, k=10, seed=args.seed)["knn_agreement_2d"]

    t_sk = t_ot = None
    if not args.skip_sklearn:
        with Timer(rows, "t-SNE scikit-learn Barnes-Hut (import+fit)") as t_sk:
            c = E._tsne(z, perplexity=30.0, seed=args.seed, n_jobs=jobs, implementation="sklearn")
        score("sklearn", c)
    have_ot = importlib.util.find_spec("openTSNE") is not None
    if have_ot:
        with Timer(rows, "t-SNE openTSNE (FFT from 10k points; import+fit)") as t_ot:
            c = E._tsne(z, perplexity=30.0, seed=args.seed, n_jobs=jobs, implementation="openTSNE")
        score("openTSNE", c)
    else:
        print("  openTSNE not installed: skipped", file=sys.stderr)

    with Timer(rows, "import umap (pulls in TensorFlow)") as t_imp:
        import umap  # noqa: F401
    with Timer(rows, "UMAP first call (exact kNN + layout + numba JIT)") as t_u1:
        c = E._umap(z, n_neighbors=15, min_dist=0.1, seed=args.seed, n_jobs=jobs)
    score("umap", c)
    with Timer(rows, "UMAP second call (warm)") as t_u2:
        c2 = E._umap(z, n_neighbors=15, min_dist=0.1, seed=args.seed, n_jobs=jobs)
    umap_bitwise = bool(np.array_equal(c, c2))

    nnd_s = None
    if args.umap_nndescent:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            p = os.path.join(tmp, "z.npy")
            np.save(p, z)
            with Timer(rows, "UMAP own NN-descent, fresh process (import+fit)") as t_nnd:
                out = subprocess.run([sys.executable, "-c", _NNDESCENT_CHILD, p], capture_output=True, text=True,
                                     env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            nnd_s = float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else float("nan")

    print()
    print(f"{'step':<52} {'wall s':>8} {'cpu s':>8} {'load':>6}")
    for name, wall, cpu, load in rows:
        print(f"{name:<52} {wall:>8.1f} {cpu:>8.1f} {load:>6.1f}")
    print()
    print("10-NN class agreement in 2-D (chance 0.25): "
          + ", ".join(f"{k} {v:.3f}" for k, v in quality.items()))
    print(f"UMAP seeded twice, bitwise equal: {umap_bitwise}")

    tsne_impl = "openTSNE" if have_ot else "sklearn"
    tsne_layout = t_ot if have_ot else t_sk
    tsne_s = t_pca.wall + tsne_layout.wall if tsne_layout else float("nan")
    umap_s = t_pca.wall + t_imp.wall + t_u1.wall
    compile_s = t_u1.wall - t_u2.wall
    figures = {
        "ratio_tsne_to_target": tsne_s / TARGET_S,
        "ratio_umap_to_target": umap_s / TARGET_S,
        "tsne_s": tsne_s,
        "umap_s": umap_s,
        "tsne_impl": tsne_impl,
        "pca_s": t_pca.wall,
        "sklearn_tsne_s": t_sk.wall if t_sk else float("nan"),
        "sklearn_tsne_cpu_s": t_sk.cpu if t_sk else float("nan"),
        "opentsne_s": t_ot.wall if t_ot else float("nan"),
        "opentsne_cpu_s": t_ot.cpu if t_ot else float("nan"),
        "ratio_sklearn_to_opentsne": (t_sk.wall / t_ot.wall) if (t_sk and t_ot) else float("nan"),
        "umap_import_s": t_imp.wall,
        "umap_first_s": t_u1.wall,
        "umap_warm_s": t_u2.wall,
        "umap_compile_s": compile_s,
        "umap_first_cpu_s": t_u1.cpu,
        "umap_warm_cpu_s": t_u2.cpu,
    }
    if nnd_s is not None:
        figures["umap_nndescent_fresh_s"] = nnd_s
    figures.update(threads=jobs, load_avg=os.getloadavg()[0], n=args.n, dim=args.dim)
    print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
