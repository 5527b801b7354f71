"""xrayfeat.analysis.maps: shapes, determinism, neighbourhood scores (property tests), caching, errors.

Embeddings are checked openTSNE-style, by the class structure they preserve,
never by exact coordinates. Real layouts run on ~200 points with one thread;
the caching tests swap the layout for a fast stand-in and count its calls.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from xrayfeat.analysis import maps as E
from xrayfeat.errors import XrayfeatError

N = 200


def clusters(n=N, d=64, k=4, seed=0, sep=4.0):
    """k well-separated Gaussian clusters in a random 8-d subspace plus noise, ReLU'd like CNN features."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    basis = rng.standard_normal((8, d)) / np.sqrt(8)
    latent = rng.standard_normal((k, 8))[y] * sep + rng.standard_normal((n, 8)) * 0.5
    x = latent @ basis + 0.2 * rng.standard_normal((n, d))
    return np.maximum(x, 0).astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    return clusters()


@pytest.fixture(scope="module")
def embedded(data):
    x, _ = data
    return {m: E.embed_features(x, method=m, seed=0, n_jobs=1).coords for m in E.METHODS}


# --------------------------------------------------------------------------- embed_features (computed only)


@pytest.mark.parametrize("method", E.METHODS)
def test_coordinates_are_finite_float32_pairs(embedded, method):
    coords = embedded[method]
    assert coords.shape == (N, 2)
    assert coords.dtype == np.float32
    assert np.isfinite(coords).all()
    assert coords.std(axis=0).min() > 0  # not collapsed


@pytest.mark.parametrize("method", E.METHODS)
def test_same_seed_gives_bitwise_same_coordinates(data, embedded, method):
    # Holds for UMAP too because it is seeded (single-threaded layout) and gets exact neighbours.
    again = E.embed_features(data[0], method=method, seed=0, n_jobs=1).coords
    np.testing.assert_array_equal(again, embedded[method])


def test_tsne_does_not_depend_on_n_jobs():
    x, _ = clusters(n=40, d=64, seed=3)  # goes through PCA (to 39 dims)
    one = E.embed_features(x, method="tsne", n_jobs=1).coords
    two = E.embed_features(x, method="tsne", n_jobs=2).coords
    np.testing.assert_array_equal(one, two)


def test_other_seed_gives_other_umap_layout(data, embedded):
    other = E.embed_features(data[0], method="umap", seed=1, n_jobs=1).coords
    assert not np.array_equal(other, embedded["umap"])


def test_without_opentsne_tsne_falls_back_to_sklearn_and_says_how_to_install(monkeypatch):
    real = E.importlib.util.find_spec
    monkeypatch.setattr(E.importlib.util, "find_spec", lambda name, *a: None if name == "openTSNE" else real(name, *a))
    monkeypatch.setattr(E, "_warned_no_opentsne", False)
    with pytest.warns(RuntimeWarning, match=r"pip install 'openTSNE>=1\.0'"):
        assert E.tsne_implementation() == "sklearn"
    x, y = clusters(n=40, d=64)
    coords = E.embed_features(x, method="tsne", n_jobs=1).coords
    assert coords.shape == (40, 2) and coords.dtype == np.float32
    assert E.neighbourhood_scores(x, coords, y, k=5)["knn_agreement_2d"] > 0.95
    assert E._key_params("tsne", 0, 50, 30.0, 15, 0.1, 40)["implementation"] == "sklearn"  # so the cache key changes


@pytest.mark.parametrize("method", E.METHODS)
def test_separated_clusters_stay_together(data, embedded, method):
    x, y = data
    s = E.neighbourhood_scores(x, embedded[method], y, k=10)
    assert s["knn_agreement_features"] > 0.95
    assert s["knn_agreement_2d"] > 0.95
    assert s["trustworthiness"] > 0.85
    assert s["chance_agreement"] == pytest.approx(4 * 50 * 49 / (200 * 199))


def test_random_labels_score_near_chance(data, embedded):
    x, _ = data
    shuffled = np.random.default_rng(1).integers(0, 4, N)
    s = E.neighbourhood_scores(x, embedded["tsne"], shuffled, k=10)
    assert abs(s["knn_agreement_2d"] - s["chance_agreement"]) < 0.08
    assert abs(s["knn_agreement_features"] - s["chance_agreement"]) < 0.08
    assert s["trustworthiness"] > 0.85  # labels do not enter trustworthiness


def test_scores_on_random_points_are_chance_like_and_subsample_trustworthiness():
    rng = np.random.default_rng(0)
    n = 3000
    x = rng.random((n, 32)).astype(np.float32)
    coords = rng.random((n, 2)).astype(np.float32)
    y = rng.integers(0, 2, n)
    s = E.neighbourhood_scores(x, coords, y, k=10)
    assert s["trustworthiness_points"] == 2000
    assert s["knn_agreement_points"] == n
    assert s["knn_agreement_2d"] == pytest.approx(0.5, abs=0.05)
    assert s["trustworthiness"] < 0.7  # a random map keeps no neighbourhoods
    assert set(s) == {"k", "knn_agreement_2d", "knn_agreement_features", "knn_agreement_points",
                      "chance_agreement", "trustworthiness", "trustworthiness_points"}


def test_agreement_on_sampled_queries_past_the_plot_limit_leaves_each_query_out(monkeypatch):
    # 50 far-apart pairs of identical points, one of each class: each point's nearest other point is its
    # twin, of the other class, so agreement is 0; counting a point as its own neighbour would give 0.5 or 1.
    y = np.tile([0, 1], 50)
    coords = np.repeat(np.random.default_rng(0).random((50, 2)).astype(np.float32) * 100, 2, axis=0)
    monkeypatch.setattr(E, "PLOT_MAX_POINTS", 30)
    s = E._scores(coords, coords, y, k=1, seed=0)
    assert s["knn_agreement_points"] == 30
    assert s["knn_agreement_2d"] == 0.0 and s["knn_agreement_features"] == 0.0


@pytest.mark.parametrize("method", E.METHODS)
def test_tiny_sets_are_embedded_with_adjusted_parameters(method, caplog):
    x, _ = clusters(n=E.MIN_POINTS, d=10, k=2, seed=2)
    with caplog.at_level(logging.WARNING, logger="xrayfeat.analysis.maps"):
        coords = E.embed_features(x, method=method, n_jobs=1).coords
    assert coords.shape == (E.MIN_POINTS, 2) and np.isfinite(coords).all()
    word = "perplexity" if method == "tsne" else "n_neighbors"
    assert any(word in r.getMessage() and "too large" in r.getMessage() for r in caplog.records)


def test_too_few_points_is_a_clear_error():
    with pytest.raises(XrayfeatError, match=f"at least {E.MIN_POINTS} images"):
        E.embed_features(np.ones((E.MIN_POINTS - 1, 8), np.float32))


def test_pca_components_are_capped_by_n_and_d():
    x, _ = clusters(n=30, d=12)
    assert E._reduce(x, 50, 0).shape == (30, 12)  # d < 50: centred only
    assert E._reduce(x, 50, 0).mean(axis=0) == pytest.approx(np.zeros(12), abs=1e-5)
    assert E._reduce(x, 5, 0).shape == (30, 5)
    wide = np.random.default_rng(0).random((20, 100)).astype(np.float32)
    assert E._reduce(wide, 50, 0).shape == (20, 19)  # rank of centred data is n - 1


@pytest.mark.parametrize("bad", ["pca", "TSNE", None, 3])
def test_unknown_method_names_parameter_allowed_values_and_input(bad):
    with pytest.raises(XrayfeatError) as info:
        E.embed_features(np.ones((10, 4), np.float32), method=bad)
    msg = str(info.value)
    assert "'method'" in msg and "'tsne'" in msg and "'umap'" in msg and repr(bad) in msg


@pytest.mark.parametrize("kwargs, name", [
    ({"perplexity": 0}, "perplexity"),
    ({"n_neighbors": 1}, "n_neighbors"),
    ({"min_dist": -0.1}, "min_dist"),
    ({"pca_components": 1}, "pca_components"),
    ({"seed": -1}, "seed"),
    ({"n_jobs": 0}, "n_jobs"),
])
def test_bad_parameters_are_named(kwargs, name):
    with pytest.raises(XrayfeatError, match=f"'{name}'"):
        E.embed_features(np.ones((10, 4), np.float32), **kwargs)


@pytest.mark.parametrize("features, match", [
    (np.ones(10, np.float32), "2-D"),
    (np.array([[np.nan, 1.0]] * 10, np.float32), "non-finite"),
    (np.array([["a", "b"]] * 10), "numeric"),
])
def test_bad_features_are_refused(features, match):
    with pytest.raises(XrayfeatError, match=match):
        E.embed_features(features)


# --------------------------------------------------------------------------- caching


def test_cache_key_is_stable_and_sensitive():
    base = E.cache_key("abc", "tsne", {"seed": 0, "perplexity": 30.0})
    assert base == E.cache_key("abc", "tsne", {"perplexity": 30.0, "seed": 0})
    assert len(base) == 64
    others = [
        E.cache_key("abd", "tsne", {"seed": 0, "perplexity": 30.0}),
        E.cache_key("abc", "umap", {"seed": 0, "perplexity": 30.0}),
        E.cache_key("abc", "tsne", {"seed": 1, "perplexity": 30.0}),
        E.cache_key("abc", "tsne", {"seed": 0, "perplexity": 20.0}),
    ]
    assert base not in others and len(set(others)) == len(others)


def test_features_digest_sees_values_dtype_and_shape():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = E.features_digest(x)
    assert d == E.features_digest(x.copy())
    y = x.copy()
    y[1, 2] += 1
    assert E.features_digest(y) != d
    assert E.features_digest(x.astype(np.float16)) != d
    assert E.features_digest(x.reshape(4, 3)) != d


@pytest.fixture
def layout_calls(monkeypatch):
    """Replace the expensive layout with a fast deterministic stand-in and count its calls."""
    calls = []

    def fake(z, *, method, seed, **kwargs):
        calls.append((method, seed, kwargs))
        return (z[:, :2] + seed + (method == "umap")).astype(np.float32)

    monkeypatch.setattr(E, "_layout", fake)
    return calls


def test_embed_features_reuses_then_recomputes_on_any_relevant_change(tmp_path, data, layout_calls):
    x, y = data
    out = tmp_path / "emb.png"
    first = E.embed_features(x, y, out, method="tsne", seed=0, plot=False)
    assert not first.reused and len(layout_calls) == 1
    assert first.coords_path == tmp_path / "emb.coords.npz" and first.coords_path.is_file()

    again = E.embed_features(x, y, out, method="tsne", seed=0, plot=False, min_dist=0.5, n_jobs=1, title="new")
    assert again.reused and len(layout_calls) == 1  # min_dist, n_jobs and title do not affect t-SNE
    np.testing.assert_array_equal(again.coords, first.coords)
    assert again.scores == first.scores and again.key == first.key

    changed_features = x.copy()
    changed_features[0, 0] += 1.0
    for kwargs in ({"seed": 1}, {"method": "umap"}, {"perplexity": 10.0}, {"pca_components": 20},
                   {"features": changed_features}):
        args = {"method": "tsne", "seed": 0, **kwargs}
        feats = args.pop("features", x)
        before = len(layout_calls)
        r = E.embed_features(feats, y, out, plot=False, **args)
        assert not r.reused and len(layout_calls) == before + 1, kwargs
        r2 = E.embed_features(feats, y, out, plot=False, **args)
        assert r2.reused and len(layout_calls) == before + 1, kwargs

    forced = E.embed_features(changed_features, y, out, plot=False, reuse=False)
    assert not forced.reused


def test_embed_features_writes_plot_and_npz(tmp_path, data, layout_calls):
    x, y = data
    out = tmp_path / "figs" / "embedding_umap.png"
    splits = np.where(np.arange(N) % 5 == 0, "test", "train")
    r = E.embed_features(x, y, out, method="umap", seed=0, classes=["a", "b", "c", "d"], splits=splits,
                       title="clusters")
    assert r.plot_path == out and out.is_file() and out.stat().st_size > 2000
    with np.load(r.coords_path, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["coords"], r.coords)
        assert npz["key"].item() == r.key
        assert '"n_neighbors": 15' in npz["params"].item()
    assert r.params == {"seed": 0, "pca_components": 50, "n_neighbors": 15, "min_dist": 0.1}
    assert r.seconds > 0 and r.method == "umap"


def test_changed_labels_reuse_coordinates_but_rescore(tmp_path, data, layout_calls):
    x, y = data
    out = tmp_path / "emb.png"
    first = E.embed_features(x, y, out, plot=False)
    shuffled = np.random.default_rng(0).permutation(y)
    second = E.embed_features(x, shuffled, out, plot=False)
    assert second.reused and len(layout_calls) == 1
    assert second.scores["knn_agreement_2d"] < first.scores["knn_agreement_2d"] - 0.3


def test_damaged_cache_file_is_recomputed(tmp_path, data, layout_calls, caplog):
    x, y = data
    out = tmp_path / "emb.png"
    E.embed_features(x, y, out, plot=False)
    E.coords_path_for(out).write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING, logger="xrayfeat.analysis.maps"):
        r = E.embed_features(x, y, out, plot=False)
    assert not r.reused and len(layout_calls) == 2
    assert any("unreadable" in rec.getMessage() for rec in caplog.records)
    assert E.embed_features(x, y, out, plot=False).reused


def test_embed_features_checks_method_before_any_work(tmp_path, data, layout_calls):
    x, y = data
    with pytest.raises(XrayfeatError, match="'method'.*'tsne', 'umap'.*'pca'"):
        E.embed_features(x, y, tmp_path / "e.png", method="pca")
    assert not layout_calls and not list(tmp_path.iterdir())


def test_without_out_path_nothing_is_written_and_labels_only_add_scores(tmp_path, data, layout_calls, monkeypatch):
    x, y = data
    monkeypatch.chdir(tmp_path)
    bare = E.embed_features(x, method="umap", seed=0)
    assert bare.scores is None and bare.coords_path is None and bare.plot_path is None and bare.key is None
    assert not bare.reused and bare.plotted == 0 and bare.coords.shape == (N, 2) and len(layout_calls) == 1
    scored = E.embed_features(x, y, method="umap", seed=0, k=5)
    np.testing.assert_array_equal(scored.coords, bare.coords)
    assert scored.scores == E.neighbourhood_scores(x, bare.coords, y, k=5) and scored.coords_path is None
    assert len(layout_calls) == 2 and list(tmp_path.iterdir()) == []  # computed each time, never cached or drawn
    cached = E.embed_features(x, y, tmp_path / "e.png", method="umap", seed=0, plot=False)
    np.testing.assert_array_equal(cached.coords, bare.coords)
    assert cached.params == bare.params and cached.coords_path.is_file()


def test_out_path_without_labels_is_refused_before_any_work(tmp_path, data, layout_calls):
    with pytest.raises(XrayfeatError, match="'out_path' needs 'labels'"):
        E.embed_features(data[0], out_path=tmp_path / "e.png")
    assert not layout_calls and not list(tmp_path.iterdir())


def test_embed_features_for_real_then_reused(tmp_path, data):
    x, y = data
    out = tmp_path / "umap.png"
    first = E.embed_features(x, y, out, method="umap", n_jobs=1, classes=list("abcd"), title="real")
    assert not first.reused and first.plot_path.is_file()
    assert first.scores["knn_agreement_2d"] > 0.95
    second = E.embed_features(x, y, out, method="umap", n_jobs=1, classes=list("abcd"))
    assert second.reused
    np.testing.assert_array_equal(second.coords, first.coords)
    assert second.scores == first.scores
    with np.load(second.coords_path, allow_pickle=False) as npz:
        assert "umap-learn" in npz["versions"].item()


# --------------------------------------------------------------------------- large sets


@pytest.mark.parametrize("method, n, implementation, expected", [
    ("tsne", 150_000, "openTSNE", "exact"),
    ("tsne", 150_001, "openTSNE", "annoy"),
    ("tsne", 150_001, "sklearn", "exact"),  # scikit-learn's t-SNE has no approximate search
    ("umap", 50_000, None, "exact"),
    ("umap", 50_001, None, "nndescent"),
])
def test_neighbour_method_is_exact_up_to_the_documented_sizes(method, n, implementation, expected):
    assert E.neighbour_method(method, n, implementation) == expected


def test_approximate_tsne_uses_annoy_on_fixed_threads_fft_and_is_reproducible(monkeypatch):
    import functools

    import openTSNE

    affinity_calls, tsne_calls = [], []
    real_affinity, real_tsne = openTSNE.affinity.PerplexityBasedNN, openTSNE.TSNE

    def affinity(*args, **kwargs):
        affinity_calls.append(kwargs)
        return real_affinity(*args, **kwargs)

    def short_tsne(**kwargs):  # FFT gradients cost ~20 ms an iteration even on 100 points: run 10, not 750
        tsne_calls.append(kwargs)
        return functools.partial(real_tsne, early_exaggeration_iter=5, n_iter=5)(**kwargs)

    monkeypatch.setattr(openTSNE.affinity, "PerplexityBasedNN", affinity)
    monkeypatch.setattr(openTSNE, "TSNE", short_tsne)
    monkeypatch.setitem(E.EXACT_NEIGHBOURS_MAX, "tsne", 99)
    x, _ = clusters(n=100)
    one = E.embed_features(x, method="tsne", n_jobs=1).coords
    two = E.embed_features(x, method="tsne", n_jobs=2).coords
    np.testing.assert_array_equal(one, two)
    assert [(c["method"], c["n_jobs"]) for c in affinity_calls] == [("annoy", E._APPROX_SEARCH_THREADS)] * 2
    assert [(c["negative_gradient_method"], c["n_jobs"]) for c in tsne_calls] == [("fft", 1), ("fft", 2)]


def test_approximate_umap_leaves_the_search_to_seeded_nndescent(monkeypatch):
    import umap

    made = []

    class FakeUMAP:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def fit_transform(self, z):
            return z[:, :2]

    def no_exact(*args, **kwargs):
        raise AssertionError("exact neighbours computed past the threshold")

    monkeypatch.setattr(umap, "UMAP", FakeUMAP)
    monkeypatch.setattr(E, "_exact_knn", no_exact)
    monkeypatch.setitem(E.EXACT_NEIGHBOURS_MAX, "umap", 99)
    E.embed_features(clusters(n=100)[0], method="umap", seed=3)
    [kwargs] = made
    assert "precomputed_knn" not in kwargs and kwargs["random_state"] == 3 and kwargs["n_jobs"] == 1


def test_approximate_neighbours_change_the_cache_key_and_are_shown(tmp_path, data, layout_calls, monkeypatch):
    x, y = data
    out = tmp_path / "emb.png"
    exact = E.embed_features(x, y, out, plot=False)
    assert "neighbors" not in exact.params
    monkeypatch.setitem(E.EXACT_NEIGHBOURS_MAX, "tsne", N - 1)
    approx = E.embed_features(x, y, out, plot=False)
    assert approx.params["neighbors"] == "annoy" and approx.key != exact.key
    assert not approx.reused and len(layout_calls) == 2
    assert "approximate neighbours (annoy)" in E._subtitle("tsne", approx.params, approx.scores)


def test_stratified_subsample_keeps_each_class_share_exactly():
    labels = np.repeat(["d", "c", "b", "a"], [50, 150, 300, 500])  # shuffled order does not matter
    labels = np.random.default_rng(0).permutation(labels)
    idx = E.stratified_subsample(labels, 101, seed=0)
    # 101 * share = 50.5, 30.3, 15.15, 5.05: floors 50, 30, 15, 5 and the one left goes to the largest remainder
    assert dict(zip(*np.unique(labels[idx], return_counts=True))) == {"a": 51, "b": 30, "c": 15, "d": 5}
    assert len(set(idx.tolist())) == 101 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(E.stratified_subsample(labels, 101, seed=0), idx)
    assert not np.array_equal(E.stratified_subsample(labels, 101, seed=1), idx)
    np.testing.assert_array_equal(E.stratified_subsample(labels, 1000, seed=0), np.arange(1000))
    with pytest.raises(ValueError, match="'size'.*Got 0"):
        E.stratified_subsample(labels, 0)


def test_large_map_draws_a_stratified_subsample_says_so_and_keeps_all_coordinates(
        tmp_path, data, layout_calls, monkeypatch, caplog):
    from xrayfeat.analysis import plots

    x, y = data
    drawn = []
    real_plot = plots.plot_embedding

    def spy(coords, labels, classes, path, **kwargs):
        drawn.append((coords, labels, kwargs))
        return real_plot(coords, labels, classes, path, **kwargs)

    monkeypatch.setattr(plots, "plot_embedding", spy)
    monkeypatch.setattr(E, "PLOT_MAX_POINTS", 60)
    splits = np.where(np.arange(N) % 4 == 0, "test", "train")
    with caplog.at_level(logging.WARNING, logger="xrayfeat.analysis.maps"):
        r = E.embed_features(x, y, tmp_path / "emb.png", classes=list("abcd"), splits=splits)
    [(coords, labels, kwargs)] = drawn
    assert r.plotted == 60 and len(coords) == 60 and r.plot_path.is_file()
    assert np.bincount(labels).tolist() == [15, 15, 15, 15]  # 50 of each class in 200
    shown = E.stratified_subsample(y, 60, seed=0)
    np.testing.assert_array_equal(coords, r.coords[shown])
    assert list(kwargs["splits"]) == list(splits[shown])
    assert "showing a stratified random 60 of 200 points" in kwargs["subtitle"]
    assert "emb.coords.npz" in kwargs["subtitle"]
    assert any("too many for a readable scatter" in rec.getMessage() for rec in caplog.records)
    with np.load(r.coords_path, allow_pickle=False) as npz:
        assert npz["coords"].shape == (N, 2)
