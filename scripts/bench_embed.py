"""Benchmark ``embed_features`` per method (given an ``out_path``, as ``xrayfeat embed`` calls it): seconds,
CPU seconds and peak memory, against a time budget.

Synthetic "backbone features": four Gaussian clusters in a random 20-d subspace
of a ``--dim``-dimensional space, plus isotropic noise, passed through a ReLU
(pooled CNN features are non-negative with many near-dead channels), made in
blocks of 10,000 rows so that only the float32 matrix itself stays in memory.

Each method runs in a FRESH child process, one after the other, as a user of
``xrayfeat embed`` meets it: imports, numba's compilation for UMAP, PCA, the
layout on the neighbours :func:`xrayfeat.analysis.maps.neighbour_method` picks,
the neighbourhood scores and the figure. Per method it reports wall seconds,
process CPU seconds (all threads), the part spent in PCA + layout (the rest is
scores and figure), and the child's peak resident memory (``ru_maxrss``)
beside its resident memory once the features were made, so the embedding's
own share can be told apart. The 1-minute load average is printed before and
after: on a shared machine wall time is inflated by other processes.

    python scripts/bench_embed.py --n 100000 --dim 2048      # the issue's target: <= 300 s per method
    python scripts/bench_embed.py --n 100000 --exact-max 0   # force approximate neighbours to compare
    python scripts/bench_embed.py --n 10000 --sklearn        # also scikit-learn's t-SNE (PCA + layout only)

Ends with one ``key=value`` line, ratios to the budget first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

BUDGET_S = 300.0
_BLOCK = 10_000


def synthetic_features(n: int, dim: int, seed: int, *, clusters: int = 4, subspace: int = 20):
    """(features float32 (n, dim) >= 0, labels (n,)): separated clusters in a random subspace, plus noise."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((subspace, dim)).astype(np.float32) / np.sqrt(subspace)
    centres = rng.standard_normal((clusters, subspace)) * 3.0
    labels = rng.integers(0, clusters, n)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, _BLOCK):
        rows = slice(start, min(start + _BLOCK, n))
        latent = centres[labels[rows]] + rng.standard_normal((rows.stop - start, subspace))
        block = latent.astype(np.float32) @ basis + 0.5 * rng.standard_normal((rows.stop - start, dim), dtype=np.float32)
        np.maximum(block, 0.0, out=x[rows])
    return x, labels


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _child(args) -> dict:
    """One method in this (fresh) process; the figures as a dict."""
    from xrayfeat.analysis import maps as E

    x, y = synthetic_features(args.n, args.dim, args.seed)
    data_mib = _peak_rss_mib()
    method = "tsne" if args.child == "sklearn-tsne" else args.child
    if args.exact_max is not None:
        E.EXACT_NEIGHBOURS_MAX[method] = args.exact_max
    wall, cpu = time.perf_counter(), time.process_time()
    if args.child == "sklearn-tsne":
        z = E._reduce(x, 50, args.seed)
        E._tsne(z, perplexity=30.0, seed=args.seed, n_jobs=E._resolve_n_jobs(args.n_jobs), implementation="sklearn")
        extra = {"neighbors": "exact", "layout_s": time.perf_counter() - wall}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            r = E.embed_features(x, y, os.path.join(tmp, "map.png"), method=method, seed=args.seed,
                                 n_jobs=args.n_jobs, classes=["a", "b", "c", "d"])
            with np.load(r.coords_path) as npz:
                layout_s = float(npz["compute_seconds"])
        extra = {"neighbors": r.params.get("neighbors", "exact"), "layout_s": layout_s,
                 "knn_agreement_2d": r.scores["knn_agreement_2d"], "plotted": r.plotted}
    return {"s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "peak_rss_mib": _peak_rss_mib(),
            "data_rss_mib": data_mib, **extra}


def _run_child(method: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, "--n", str(args.n), "--dim", str(args.dim),
           "--seed", str(args.seed)]
    for flag, value in (("--n-jobs", args.n_jobs), ("--exact-max", args.exact_max)):
        if value is not None:
            cmd += [flag, str(value)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if out.returncode != 0:
        raise SystemExit(f"{method} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-jobs", type=int, default=None, help="threads for t-SNE and exact neighbours (default: all)")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help="seconds allowed per method (default: 300)")
    ap.add_argument("--exact-max", type=int, default=None,
                    help="override EXACT_NEIGHBOURS_MAX for the measured method (0: always approximate)")
    ap.add_argument("--sklearn", action="store_true", help="also time scikit-learn's t-SNE (PCA + layout)")
    ap.add_argument("--child", choices=["tsne", "umap", "sklearn-tsne"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return 0

    print(f"bench_embed: n={args.n} dim={args.dim} seed={args.seed} n_jobs={args.n_jobs} cores={os.cpu_count()} "
          f"load={os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    results = {}
    for method in ["tsne", "umap"] + (["sklearn-tsne"] if args.sklearn else []):
        results[method] = r = _run_child(method, args)
        print(f"  {method}: {r['s']:.1f} s ({r['cpu_s']:.1f} s CPU; PCA + layout {r['layout_s']:.1f} s), "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB ({r['data_rss_mib']:.0f} MiB after making the features), "
              f"neighbours {r['neighbors']}, load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)

    figures: dict = {f"ratio_{m.replace('-', '_')}_to_budget": r["s"] / args.budget_s for m, r in results.items()}
    for m, r in results.items():
        prefix = m.replace("-", "_")
        figures.update({f"{prefix}_{k}": v for k, v in r.items()})
    figures.update(budget_s=args.budget_s, n=args.n, dim=args.dim, cores=os.cpu_count(), load_avg=os.getloadavg()[0])
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
