"""Two-dimensional maps of cached features: PCA, then t-SNE or UMAP, and how faithful the map is.

What it does
    :func:`embed_features` turns an ``(n, d)`` feature matrix (pooled backbone
    features, or a trained head's penultimate layer) into ``(n, 2)`` float32
    coordinates: centre, PCA to at most ``pca_components`` dimensions, then
    t-SNE or UMAP. With labels it says how much of the class structure survived
    (:func:`neighbourhood_scores`). Given an ``out_path`` (what the CLI does) it
    also draws the scatter plot and keeps the coordinates beside the image as
    ``<out>.coords.npz``, reusing them when asked again with the same inputs.

Why these choices
    * **No per-feature standardisation, PCA on centred features.** This is the
      usual t-SNE/UMAP preprocessing (van der Maaten 2014; Kobak & Berens 2019).
      Post-ReLU CNN features have many near-dead channels; scaling each to unit
      variance would give their noise the same weight as the informative
      channels. PCA keeps the variance scale, drops the noise tail, and makes
      the neighbour search 40x cheaper (50 instead of 2,048 dimensions).
    * **t-SNE is openTSNE's FFT-accelerated t-SNE when openTSNE is installed,
      scikit-learn's Barnes-Hut TSNE otherwise** (with a warning that says how
      to install openTSNE). Measured by ``scripts/bench_embed.py`` on
      10,000 x 2,048 features with one thread: openTSNE 41 s, scikit-learn
      107 s (PCA 3.4 s more). The budget is 60 s on 2 cores, PCA included;
      only openTSNE meets it with room to spare. Both run on exact nearest
      neighbours so that the result does not depend on ``n_jobs``; the
      implementation is part of the cache key.
    * **UMAP is given exact nearest neighbours computed by scikit-learn**
      (up to 50,000 points). UMAP's own NN-descent search must be compiled by
      numba in every fresh process (~50 s of CPU); under the same load a fresh
      process took 111 s with it and 42 s with exact neighbours, which cost
      about a second at 10,000 points. ``import umap`` also imports TensorFlow
      when it is installed (for umap's ParametricUMAP): ~5 s, paid once.
    * **Approximate neighbours only past** :data:`EXACT_NEIGHBOURS_MAX`
      **points**: 150,000 for t-SNE, 50,000 for UMAP. Exact brute-force search
      in the 50 PCA dimensions is one matrix product per block: measured on
      100,000 points (2 threads, load ~1.5) it took 46 s (85 s of CPU) for
      t-SNE's 90 neighbours, while openTSNE's Annoy search (50 trees) took
      124 s of CPU on one thread and more on two. Exact search grows as n^2,
      Annoy as about n log n; they cost the same near 150,000 points, past
      which t-SNE runs on Annoy with FFT gradients. UMAP needs only 15
      neighbours, and its seeded NN-descent took 9 s of CPU at 100,000 points
      plus ~80 s of numba compilation in a fresh process: about what exact
      search costs there, so UMAP keeps its earlier 50,000 (and the maps
      cached under it). The neighbour method is part of the cache key, and of
      the figure's subtitle, when it is not exact.
    * **Past** :data:`PLOT_MAX_POINTS` **points the figure shows a stratified
      random subsample** (the same share of each class, seeded), and says so
      in its subtitle and in a logged warning; the coordinates file keeps every
      point. A subsample rather than a 2-D density: a density of all classes
      together hides which class is where, and one density per class cannot be
      overlaid legibly for more than two or three classes, while a subsample
      keeps the class colours and split markers of the smaller maps, and with
      20,000 points it still shows every cluster of more than a few dozen.
    * **Scores on a sample of queries past** :data:`PLOT_MAX_POINTS` **points.**
      The k-NN agreements then average over a seeded random 20,000 points,
      each with its neighbours among all points: exact, unbiased, and linear
      instead of quadratic in n (at 100,000 points a fifth of the 46 s that
      the exact search for every point takes).
    * **Deterministic for a fixed seed.** The same features and seed give
      bitwise the same coordinates on the same machine, whatever ``n_jobs``.
      Exact neighbours do not depend on it. openTSNE's Annoy search builds
      different trees for different thread counts, so it always runs on
      :data:`_APPROX_SEARCH_THREADS` threads, whatever ``n_jobs`` and the
      number of cores; UMAP's seeded NN-descent runs on one thread; openTSNE's
      gradients (Barnes-Hut or FFT) give the same result on any thread count.
      The
      BLAS thread count is another matter: OpenBLAS with 1 thread and with 2
      threads gives PCA results that differ in the last bits, so this module
      leaves BLAS threading alone (``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``
      are the user's) and the guarantee is per machine and environment.
      UMAP is reproducible only when seeded, and a seeded UMAP runs its layout
      on one thread (umap-learn's rule): we give up the second core for
      reproducible figures and a cache that means something. Measured on
      10,000 points a seeded first call still fits the 60 s budget.

Everything heavy (scikit-learn, openTSNE, umap-learn) is imported when first
used; importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrayfeat import __version__
from xrayfeat.errors import XrayfeatError
from xrayfeat.fileio import atomic_path, sibling
from xrayfeat.options.constraints import Interval, declaration, validate_params
from xrayfeat.options.settings import METHODS, N_JOBS, EmbedOptions
from xrayfeat.provenance import library_versions

__all__ = [
    "METHODS",
    "EMBED_VERSION",
    "MIN_POINTS",
    "EXACT_NEIGHBOURS_MAX",
    "PLOT_MAX_POINTS",
    "EmbedResult",
    "embed_features",
    "neighbourhood_scores",
    "neighbour_method",
    "stratified_subsample",
    "features_digest",
    "cache_key",
    "coords_path_for",
    "tsne_implementation",
    "OPENTSNE_REQUIREMENT",
]

log = logging.getLogger(__name__)

#: The embedding methods :func:`embed_features` accepts.

#: Bumped whenever a change here changes the coordinates for the same inputs; part of every cache key.
EMBED_VERSION = 1

#: Fewest points embedded: fewer make no map worth drawing (and t-SNE needs 3 * perplexity <= n - 1).
MIN_POINTS = 5

#: Up to this many points each method runs on exact neighbours; beyond, on approximate ones:
#: openTSNE's Annoy search (t-SNE) or UMAP's own NN-descent (module docstring).
EXACT_NEIGHBOURS_MAX = {"tsne": 150_000, "umap": 50_000}

#: Threads of openTSNE's Annoy search, fixed: its trees depend on the thread count, the map must not.
_APPROX_SEARCH_THREADS = 2

#: Past this many points the figure draws a stratified subsample of this size, and the k-NN
#: agreement scores average over this many query points.
PLOT_MAX_POINTS = 20_000

#: Trustworthiness is O(m^2): it is computed on a seeded subsample of at most this many points.
_TRUST_MAX = 2_000

#: What to install for the fast t-SNE (the project's dependency string).
OPENTSNE_REQUIREMENT = "openTSNE>=1.0"

_warned_no_opentsne = False


# --------------------------------------------------------------------------- validation

#: The declared constraints of the map parameters, shared by :func:`embed_features` and the scores.
_METHOD = declaration(EmbedOptions, "method")
_SEED = declaration(EmbedOptions, "seed")
_PCA_COMPONENTS = {"check": Interval(2, None, integer=True), "none": True}
_K = Interval(1, None, integer=True)
_LAYOUT = {
    "method": _METHOD,
    "seed": _SEED,
    "pca_components": _PCA_COMPONENTS,
    "perplexity": Interval(0, None, low_open=True),
    "n_neighbors": Interval(2, None, integer=True),
    "min_dist": Interval(0, 1),
    # None or -1: every core this process may use
    "n_jobs": {"check": N_JOBS, "none": True},
}


def _as_features(features) -> np.ndarray:
    """The features as a finite float32 (n, d) array with n >= MIN_POINTS (no copy if already so)."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise XrayfeatError(f"'features' must be a 2-D array (n_images, n_features). Got shape {x.shape} instead.")
    if x.dtype.kind not in "fiub":
        raise XrayfeatError(f"'features' must be numeric. Got dtype {x.dtype} instead.")
    n, d = x.shape
    if n < MIN_POINTS or d < 1:
        raise XrayfeatError(
            f"An embedding needs at least {MIN_POINTS} images with at least one feature. "
            f"Got {n} image(s) with {d} feature(s)."
        )
    x = np.asarray(x, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise XrayfeatError(
            f"'features' contain {bad} non-finite value(s) (NaN or inf); "
            "run `xrayfeat cache verify` and re-extract the affected images."
        )
    return x


def _resolve_n_jobs(n_jobs) -> int:
    """``n_jobs`` (checked by the caller's declaration), None and -1 resolved to every core this process may use."""
    if n_jobs is None or n_jobs == -1:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    return int(n_jobs)


# --------------------------------------------------------------------------- the steps


def tsne_implementation() -> str:
    """``"openTSNE"`` when openTSNE can be imported, else ``"sklearn"`` (warned once per process)."""
    global _warned_no_opentsne
    if importlib.util.find_spec("openTSNE") is not None:
        return "openTSNE"
    if not _warned_no_opentsne:
        _warned_no_opentsne = True
        warnings.warn(
            "openTSNE is not installed: t-SNE falls back to scikit-learn's Barnes-Hut TSNE, which is "
            f"several times slower on large sets. Install it with: pip install '{OPENTSNE_REQUIREMENT}'",
            RuntimeWarning,
            stacklevel=3,
        )
    return "sklearn"


@validate_params({"method": _METHOD})
def neighbour_method(method: str, n: int, implementation: str | None = None) -> str:
    """How :func:`embed_features` finds the neighbours of ``n`` points: ``"exact"``, ``"annoy"`` or ``"nndescent"``.

    Exact up to :data:`EXACT_NEIGHBOURS_MAX` ``[method]`` points; beyond,
    openTSNE's Annoy search for t-SNE and UMAP's own NN-descent. scikit-learn's
    t-SNE (``implementation="sklearn"``) always searches exactly.
    """
    if n <= EXACT_NEIGHBOURS_MAX[method]:
        return "exact"
    if method == "umap":
        return "nndescent"
    return "annoy" if (implementation or tsne_implementation()) == "openTSNE" else "exact"


def _reduce(x: np.ndarray, pca_components: int | None, seed: int) -> np.ndarray:
    """Centre, then PCA to min(pca_components, n - 1, d) dimensions (float32).

    When that is all of ``d`` the PCA would only rotate the data, which changes
    no distance, so the centred features are returned as they are.
    """
    n, d = x.shape
    centred_only = pca_components is None or min(pca_components, n - 1) >= d
    if centred_only:
        return (x - x.mean(axis=0, dtype=np.float64).astype(np.float32)).astype(np.float32, copy=False)
    from sklearn.decomposition import PCA

    m = min(int(pca_components), n - 1)
    z = PCA(n_components=m, svd_solver="auto", random_state=seed).fit_transform(x)
    return np.ascontiguousarray(z, dtype=np.float32)


def _effective_perplexity(perplexity: float, n: int) -> float:
    """t-SNE uses 3 * perplexity neighbours, so it needs 3 * perplexity <= n - 1."""
    cap = float((n - 1) // 3)
    if perplexity <= cap:
        return float(perplexity)
    log.warning("perplexity %g is too large for %d points (t-SNE needs 3 * perplexity <= n - 1); using %g",
                perplexity, n, cap)
    return cap


def _opentsne(z: np.ndarray, *, perplexity: float, seed: int, n_jobs: int, neighbours: str) -> np.ndarray:
    import openTSNE

    if neighbours == "exact":
        # neighbors="exact": the Annoy default gives different neighbours for different n_jobs.
        emb = openTSNE.TSNE(
            n_components=2, perplexity=perplexity, initialization="pca", neighbors="exact",
            negative_gradient_method="auto", n_jobs=n_jobs, random_state=seed,
        ).fit(z)
        return np.asarray(emb, dtype=np.float32)
    # Annoy's trees depend on its thread count: the search runs on a fixed number, the gradients on n_jobs.
    affinities = openTSNE.affinity.PerplexityBasedNN(
        z, perplexity=perplexity, method=neighbours, n_jobs=_APPROX_SEARCH_THREADS, random_state=seed)
    emb = openTSNE.TSNE(
        n_components=2, initialization="pca", negative_gradient_method="fft", n_jobs=n_jobs, random_state=seed,
    ).fit(z, affinities=affinities)
    return np.asarray(emb, dtype=np.float32)


def _tsne(z: np.ndarray, *, perplexity: float, seed: int, n_jobs: int, implementation: str,
          neighbours: str = "exact") -> np.ndarray:
    perp = _effective_perplexity(perplexity, len(z))
    if implementation == "openTSNE":
        return _opentsne(z, perplexity=perp, seed=seed, n_jobs=n_jobs, neighbours=neighbours)
    if implementation == "sklearn":
        from sklearn.manifold import TSNE

        emb = TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto",
                   random_state=seed, n_jobs=n_jobs).fit_transform(z)
        return np.asarray(emb, dtype=np.float32)
    raise XrayfeatError(f"Unknown t-SNE implementation {implementation!r}; expected 'openTSNE' or 'sklearn'.")


def _exact_knn(z: np.ndarray, k: int, n_jobs: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point's k nearest points, itself included (UMAP's convention), by brute force."""
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute", n_jobs=n_jobs).fit(z).kneighbors(z)
    return idx.astype(np.int32), dist.astype(np.float32)


def _umap(z: np.ndarray, *, n_neighbors: int, min_dist: float, seed: int, n_jobs: int,
          neighbours: str = "exact") -> np.ndarray:
    n = len(z)
    nn = min(int(n_neighbors), n - 1)
    if nn != n_neighbors:
        log.warning("n_neighbors %d is too large for %d points; using %d", n_neighbors, n, nn)
    kwargs = {}
    if neighbours == "exact":
        kwargs["precomputed_knn"] = _exact_knn(z, nn, n_jobs)
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=nn, min_dist=float(min_dist), random_state=seed,
                        n_jobs=1, **kwargs)
    with warnings.catch_warnings():
        # Without an NN-descent index UMAP cannot .transform() new points; we never do.
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        emb = reducer.fit_transform(z)
    return np.asarray(emb, dtype=np.float32)


def _layout(z: np.ndarray, *, method: str, seed: int, perplexity: float, n_neighbors: int, min_dist: float,
            n_jobs: int, tsne_impl: str | None = None) -> np.ndarray:
    """The 2-D layout of PCA-reduced features (the expensive step, and the one the cache saves)."""
    neighbours = neighbour_method(method, len(z), tsne_impl)
    if neighbours != "exact":
        log.info("%d points: %s runs on approximate neighbours (%s)", len(z), method, neighbours)
    if method == "tsne":
        coords = _tsne(z, perplexity=perplexity, seed=seed, n_jobs=n_jobs,
                       implementation=tsne_impl or tsne_implementation(), neighbours=neighbours)
    else:
        coords = _umap(z, n_neighbors=n_neighbors, min_dist=min_dist, seed=seed, n_jobs=n_jobs,
                       neighbours=neighbours)
    if coords.shape != (len(z), 2) or not np.isfinite(coords).all():
        err = XrayfeatError(f"{method} produced invalid coordinates (shape {coords.shape}, or NaN/inf values).")
        err.exit_code = 1
        raise err
    return coords


# --------------------------------------------------------------------------- public: embed


# --------------------------------------------------------------------------- public: scores


def _knn_agreement(points: np.ndarray, labels: np.ndarray, k: int, algorithm: str = "auto",
                   queries: np.ndarray | None = None) -> float:
    """Mean share of same-class points among each query point's k nearest others (all points when ``queries`` is None)."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k, algorithm=algorithm).fit(points)
    if queries is None:
        # kneighbors() without X leaves each point out of its own neighbour list.
        idx = index.kneighbors(return_distance=False)
        return float(np.mean(labels[idx] == labels[:, None]))
    found = index.kneighbors(points[queries], n_neighbors=k + 1, return_distance=False)
    idx = np.stack([row[row != q][:k] for row, q in zip(found, queries)])  # each query without itself
    return float(np.mean(labels[idx] == labels[queries, None]))


def _as_labels(labels, n: int) -> np.ndarray:
    lab = np.asarray(labels).reshape(-1)
    if len(lab) != n:
        raise XrayfeatError(f"'labels' has {len(lab)} entries but 'features' has {n} rows.")
    return lab


def _scores(z: np.ndarray, coords: np.ndarray, labels: np.ndarray, *, k: int, seed: int) -> dict:
    from sklearn.manifold import trustworthiness

    n = len(z)
    kk = min(int(k), n - 1)
    _, counts = np.unique(labels, return_counts=True)
    chance = float(np.sum(counts * (counts - 1)) / (n * (n - 1)))
    m = min(n, _TRUST_MAX)
    sub = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False)) if m < n else np.arange(n)
    kt = min(kk, (m - 1) // 2)  # scikit-learn requires n_neighbors < m / 2
    trust = float(trustworthiness(z[sub], coords[sub], n_neighbors=kt)) if kt >= 1 else float("nan")
    q = min(n, PLOT_MAX_POINTS)
    queries = np.sort(np.random.default_rng(seed).choice(n, size=q, replace=False)) if q < n else None
    return {
        "k": kk,
        "knn_agreement_2d": _knn_agreement(coords, labels, kk, queries=queries),
        "knn_agreement_features": _knn_agreement(z, labels, kk, algorithm="brute", queries=queries),
        "knn_agreement_points": int(q),
        "chance_agreement": chance,
        "trustworthiness": trust,
        "trustworthiness_points": int(m),
    }


@validate_params({"k": _K, "pca_components": _PCA_COMPONENTS, "seed": _SEED})
def neighbourhood_scores(features, coords, labels, *, k: int = 10, pca_components: int | None = 50,
                         seed: int = 0) -> dict:
    """How well a 2-D map keeps classes and neighbourhoods together.

    Returns a dict of plain numbers:

    * ``knn_agreement_2d`` -- for each point, the fraction of its ``k`` nearest
      neighbours in the map that share its class, averaged over points.
    * ``knn_agreement_features`` -- the same in feature space, after the same PCA
      as :func:`embed_features` (same ``pca_components`` and ``seed``). Compare the two:
      the map should not invent class structure the features lack.
    * ``chance_agreement`` -- what both would be with labels shuffled
      (``sum_c n_c (n_c - 1) / (n (n - 1))``), e.g. 0.25 for four balanced classes.
    * ``knn_agreement_points`` -- how many points the two agreements average
      over: all of them up to :data:`PLOT_MAX_POINTS`, else a seeded random
      sample of that many, each with its neighbours among all points (the
      exact search in feature space costs O(n^2) for all points).
    * ``trustworthiness`` -- :func:`sklearn.manifold.trustworthiness` between the
      PCA space and the map (1 = no false neighbours in the map), on a seeded
      random subsample of at most 2,000 points (``trustworthiness_points``),
      because it costs O(m^2); neighbourhoods are then those within the subsample.
    * ``k`` -- the neighbourhood size used (``k`` lowered to ``n - 1`` for tiny sets).

    About two seconds on 10,000 points.
    """
    x = _as_features(features)
    xy = np.asarray(coords, dtype=np.float32)
    if xy.shape != (len(x), 2):
        raise XrayfeatError(f"'coords' must have shape ({len(x)}, 2). Got shape {xy.shape} instead.")
    lab = _as_labels(labels, len(x))
    return _scores(_reduce(x, pca_components, seed), xy, lab, k=k, seed=seed)


# --------------------------------------------------------------------------- public: caching


def features_digest(features) -> str:
    """SHA-256 over the array's dtype, shape and bytes (hex)."""
    a = np.ascontiguousarray(features)
    if a.dtype.kind not in "fiub":
        raise XrayfeatError(f"'features' must be numeric. Got dtype {a.dtype} instead.")
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def cache_key(features_digest: str, method: str, params: dict) -> str:
    """SHA-256 over the features' digest, the method, its parameters and :data:`EMBED_VERSION`.

    ``params`` must be JSON-serialisable; key order does not matter. Parameters
    that do not change the coordinates (``n_jobs``, the plot title) do not belong in it.
    """
    blob = json.dumps({"embed_version": EMBED_VERSION, "features": features_digest, "method": method,
                       "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def coords_path_for(out_path) -> Path:
    """Where :func:`embed_features` keeps the coordinates for the image ``out_path``: ``emb.png`` -> ``emb.coords.npz``."""
    out = Path(os.fspath(out_path))
    return sibling(out.with_name(out.stem), ".coords.npz")  # within NAME_MAX (fileio.sibling)


@dataclass(frozen=True)
class EmbedResult:
    """What :func:`embed_features` did.

    ``coords`` (n, 2) float32; ``scores`` as :func:`neighbourhood_scores`
    (``None`` without labels); ``reused`` whether the coordinates came from
    ``coords_path``; ``seconds`` the wall time of the call; ``coords_path`` the
    coordinates file and ``key`` its cache key (``None`` when nothing is cached:
    no ``out_path``); ``plot_path`` the PNG (``None`` when not drawn);
    ``params`` the parameters in the key (method-specific, including ``seed``,
    for t-SNE the ``implementation``, and ``neighbors`` when they are
    approximate); ``plotted`` how many points the PNG shows (fewer than
    ``len(coords)`` past :data:`PLOT_MAX_POINTS`; 0 when not drawn).
    """

    coords: np.ndarray
    scores: dict | None
    reused: bool
    seconds: float
    coords_path: Path | None
    plot_path: Path | None
    method: str
    key: str | None
    params: dict
    plotted: int = 0


def _key_params(method, seed, pca_components, perplexity, n_neighbors, min_dist, n: int) -> dict:
    """The parameters that change the coordinates of ``n`` points (exact neighbours are the unnamed default)."""
    params = {"seed": int(seed), "pca_components": None if pca_components is None else int(pca_components)}
    if method == "tsne":
        params.update(perplexity=float(perplexity), implementation=tsne_implementation())
    else:
        params.update(n_neighbors=int(n_neighbors), min_dist=float(min_dist))
    neighbours = neighbour_method(method, n, params.get("implementation"))
    if neighbours != "exact":
        params["neighbors"] = neighbours
    return params


#: Bumped when the scores' definition changes: stored scores are then recomputed (the coordinates are kept).
_SCORES_VERSION = 2


def _labels_key(labels: np.ndarray, k: int) -> str:
    h = hashlib.sha256(f"k={int(k)};scores={_SCORES_VERSION};".encode())
    h.update("\x1f".join(map(str, labels.tolist())).encode())
    return h.hexdigest()


def _versions(method: str, params: dict) -> dict:
    """Provenance only: library versions are not in the cache key (an upgrade does not invalidate a map)."""
    names = ["scikit-learn", "umap-learn" if method == "umap" else params.get("implementation")]
    libraries = library_versions([name for name in names if name and name != "sklearn"], keep_missing=True)
    return {"xrayfeat": __version__, "embed_version": EMBED_VERSION, **libraries}


def _load(path: Path, key: str, n: int):
    """(coords, scores, scores_key, compute_seconds) from ``path`` if it holds coordinates for ``key``, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key = str(data["key"].item())
            coords = np.asarray(data["coords"], dtype=np.float32)
            scores = json.loads(str(data["scores"].item())) if "scores" in data else None
            scores_key = str(data["scores_key"].item()) if "scores_key" in data else ""
            seconds = float(data["compute_seconds"]) if "compute_seconds" in data else 0.0
    except Exception as exc:  # a damaged or foreign file must not stop the embedding
        log.warning("ignoring unreadable coordinates file %s (%s); recomputing", path, exc)
        return None
    if stored_key != key:
        log.info("%s holds coordinates for other inputs or parameters; recomputing", path)
        return None
    if coords.shape != (n, 2) or not np.isfinite(coords).all():
        log.warning("ignoring damaged coordinates in %s; recomputing", path)
        return None
    return coords, scores, scores_key, seconds


def _save(path: Path, *, coords, key, method, params, scores, scores_key, seconds) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # readers see the old file or the new one, never half of one
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh, coords=coords, key=np.array(key), method=np.array(method),
            params=np.array(json.dumps(params, sort_keys=True)),
            scores=np.array(json.dumps(scores, sort_keys=True)), scores_key=np.array(scores_key),
            versions=np.array(json.dumps(_versions(method, params), sort_keys=True)),
            compute_seconds=np.array(float(seconds)),
        )


def _subtitle(method: str, params: dict, scores: dict) -> str:
    if method == "tsne":
        what = f"t-SNE ({params['implementation']}), perplexity {params['perplexity']:g}"
    else:
        what = f"UMAP, n_neighbors {params['n_neighbors']}, min_dist {params['min_dist']:g}"
    pca = "no PCA" if params["pca_components"] is None else f"PCA {params['pca_components']}"
    if "neighbors" in params:
        pca += f", approximate neighbours ({params['neighbors']})"
    return (
        f"{what}, {pca}, seed {params['seed']}\n"
        f"{scores['k']}-NN class agreement {scores['knn_agreement_2d']:.3f} in 2-D, "
        f"{scores['knn_agreement_features']:.3f} in features (chance {scores['chance_agreement']:.3f}); "
        f"trustworthiness {scores['trustworthiness']:.3f}"
    )


@validate_params({"size": Interval(1, None, integer=True), "seed": _SEED})
def stratified_subsample(labels, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded random ``size`` of the rows, each class keeping its share.

    Class ``c`` with ``n_c`` of the ``n`` rows gets ``floor(size * n_c / n)``
    rows, and the ``size`` minus their sum rows left over go one each to the
    classes with the largest remainders (ties: class order), so the counts are
    exact and add up to ``size``. ``size >= n`` returns every index.
    """
    lab = np.asarray(labels).reshape(-1)
    n = len(lab)
    if size >= n:
        return np.arange(n)
    classes, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
    exact = counts * (int(size) / n)
    quota = np.floor(exact).astype(np.int64)
    quota[np.argsort(-(exact - quota), kind="stable")[: int(size) - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(inverse == c), size=int(quota[c]), replace=False) for c in range(len(classes))]
    return np.sort(np.concatenate(picked))


def _plot(coords, labels, classes, splits, out_path, *, title: str, subtitle: str, seed: int, coords_path: Path):
    """Draw the map (a stratified subsample past PLOT_MAX_POINTS, said in the subtitle); (path, points drawn)."""
    from xrayfeat.analysis.plots import plot_embedding

    if labels.dtype.kind not in "iu":
        raise XrayfeatError(f"'labels' must be class indices (integers) into 'classes' to be plotted. "
                            f"Got dtype {labels.dtype} instead.")
    int_labels = labels.astype(np.int64)
    names = list(classes) if classes is not None else [str(c) for c in range(int(int_labels.max()) + 1)]
    n = len(coords)
    shown = stratified_subsample(int_labels, PLOT_MAX_POINTS, seed) if n > PLOT_MAX_POINTS else np.arange(n)
    if len(shown) < n:
        note = (f"showing a stratified random {len(shown):,} of {n:,} points (class shares kept, seed {seed}); "
                f"all in {coords_path.name}")
        log.warning("%s: %s points are too many for a readable scatter; %s", out_path, f"{n:,}", note)
        subtitle = f"{subtitle}\n{note}"
        splits = None if splits is None else [splits[i] for i in shown]
    path = plot_embedding(coords[shown], int_labels[shown], names, out_path, splits=splits, title=title,
                          subtitle=subtitle)
    return path, len(shown)


@validate_params({**_LAYOUT, "k": _K})
def embed_features(
    features,
    labels=None,
    out_path=None,
    *,
    method: str = "tsne",
    seed: int = 0,
    classes=None,
    splits=None,
    title: str = "",
    plot: bool = True,
    reuse: bool = True,
    k: int = 10,
    pca_components: int | None = 50,
    perplexity: float = 30.0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    n_jobs: int | None = None,
) -> EmbedResult:
    """2-D coordinates for an ``(n, d)`` feature matrix; with ``labels`` scored, with ``out_path`` cached and drawn.

    The map: centres the features, reduces them by PCA to ``min(pca_components,
    n - 1, d)`` dimensions (``None`` skips the PCA), then lays them out with
    t-SNE (``perplexity``) or UMAP (``n_neighbors``, ``min_dist``), on exact
    nearest neighbours up to :data:`EXACT_NEIGHBOURS_MAX` points and approximate
    ones beyond (:func:`neighbour_method`). The same inputs and ``seed`` give
    bitwise the same ``coords`` ((n, 2) float32) on the same machine, whatever
    ``n_jobs``: the threads for t-SNE and the exact neighbour search (``None`` or
    -1: every core this process may use; a seeded UMAP layout is
    single-threaded regardless; PCA uses BLAS's own threads). For small ``n`` a
    too-large ``perplexity`` or ``n_neighbors`` is lowered and the change
    logged; fewer than :data:`MIN_POINTS` points is an error.

    ``labels`` (class indices into ``classes``, default ``"0"``, ``"1"``, ...,
    as :attr:`xrayfeat.data.datasets.Dataset.labels`) add the
    :func:`neighbourhood_scores` (``k`` neighbours) to the result; without them
    ``scores`` is None.

    Without ``out_path`` nothing is written or read: the map is computed (and
    scored) and returned, with ``coords_path``, ``plot_path`` and ``key`` None.
    With ``out_path`` (a PNG; ``labels`` needed) the coordinates go to
    :func:`coords_path_for` ``(out_path)`` (``emb.png`` -> ``emb.coords.npz``)
    with their cache key, parameters, scores and library versions. When that
    file holds coordinates for the same :func:`cache_key` -- same feature bytes,
    method, parameters (``seed`` included) and :data:`EMBED_VERSION` -- they are
    reused and nothing is recomputed (``reused=True``); anything else recomputes
    and overwrites it. ``reuse=False`` forces recomputation. The scores are
    reused too unless ``labels`` or ``k`` changed. The PNG is always redrawn
    (``plot=False`` skips it), so a new ``title`` costs no embedding; ``splits``
    (optional, one split name per row) are drawn as marker shapes. Past
    :data:`PLOT_MAX_POINTS` points it shows a stratified random subsample of
    that many (:func:`stratified_subsample`, seeded by ``seed``), says so in its
    subtitle and in a logged warning, and the coordinates file still holds all.

    Raises :class:`~xrayfeat.options.constraints.OptionError` (a ``ValueError``
    and an :class:`~xrayfeat.errors.XrayfeatError`) for an unknown ``method`` or
    an out-of-range parameter (:data:`_LAYOUT`, the declared constraints), and
    :class:`~xrayfeat.errors.XrayfeatError` for features that are not a finite 2-D array.

    Example (the CLI's call)::

        result = embed_features(features, dataset.labels, "runs/x/embedding_tsne.png",
                                method="tsne", seed=0, classes=dataset.classes,
                                splits=[item.split for item in dataset.items], title="VGG16 block5")
        result.reused, result.scores["knn_agreement_2d"], result.coords_path
        coords = embed_features(features, method="umap").coords  # computed only
    """
    t0 = time.perf_counter()
    x = _as_features(features)
    lab = None if labels is None else _as_labels(labels, len(x))
    if out_path is not None and lab is None:
        raise XrayfeatError("'out_path' needs 'labels': the map is scored and drawn by class. "
                            "Pass labels, or leave out_path out to only compute the coordinates.")
    jobs = _resolve_n_jobs(n_jobs)
    params = _key_params(method, seed, pca_components, perplexity, n_neighbors, min_dist, len(x))
    if out_path is None:
        z = _reduce(x, pca_components, seed)
        coords = _layout(z, method=method, seed=seed, perplexity=perplexity, n_neighbors=n_neighbors,
                         min_dist=min_dist, n_jobs=jobs, tsne_impl=params.get("implementation"))
        scores = None if lab is None else _scores(z, coords, lab, k=k, seed=seed)
        return EmbedResult(coords=coords, scores=scores, reused=False, seconds=time.perf_counter() - t0,
                           coords_path=None, plot_path=None, method=method, key=None, params=params)
    key = cache_key(features_digest(features), method, params)
    scores_key = _labels_key(lab, k)
    path = coords_path_for(out_path)

    cached = _load(path, key, len(x)) if reuse else None
    z = None
    compute_seconds = 0.0
    if cached is not None:
        coords, scores, stored_scores_key, compute_seconds = cached
        if scores is None or stored_scores_key != scores_key:
            scores = None
        log.info("reusing %s coordinates from %s", method, path)
    else:
        t1 = time.perf_counter()
        z = _reduce(x, pca_components, seed)
        coords = _layout(z, method=method, seed=seed, perplexity=perplexity, n_neighbors=n_neighbors,
                         min_dist=min_dist, n_jobs=jobs, tsne_impl=params.get("implementation"))
        compute_seconds = time.perf_counter() - t1
        scores = None
    if scores is None:
        if z is None:
            z = _reduce(x, pca_components, seed)
        scores = _scores(z, coords, lab, k=k, seed=seed)
        _save(path, coords=coords, key=key, method=method, params=params, scores=scores,
              scores_key=scores_key, seconds=compute_seconds)

    plot_path, plotted = None, 0
    if plot:
        plot_path, plotted = _plot(coords, lab, classes, splits, out_path, title=title, seed=seed,
                                   subtitle=_subtitle(method, params, scores), coords_path=path)
    return EmbedResult(coords=coords, scores=scores, reused=cached is not None,
                       seconds=time.perf_counter() - t0, coords_path=path, plot_path=plot_path,
                       method=method, key=key, params=params, plotted=plotted)
