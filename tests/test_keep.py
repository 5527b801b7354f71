"""--keep pooled|spatial|both and --head-input pooled: smaller stores, pooled heads, one-line refusals."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_tiny_dataset

from xrayfeat.analysis import maps as embedding
from xrayfeat.store import shards
from xrayfeat.cli.main import main
from xrayfeat.data.datasets import discover
from xrayfeat.errors import XrayfeatError
from xrayfeat.runs.explanation import explain
from xrayfeat.extraction.config import resolve
from xrayfeat.extraction.pipeline import extract
from xrayfeat.extraction.selection import open_store
from xrayfeat.store.fingerprint import KeepError, fingerprint_id, store_dirname
from xrayfeat.options.settings import EmbedOptions, FeatureOptions, HeadOptions, RunOptions
from xrayfeat.store.feature_store import FeatureStore
from xrayfeat.runs.fit import fit_head
from xrayfeat.extraction.feature_export import export_features
from xrayfeat.runs.maps import embed_map
from xrayfeat.runs.loaded import load_run

# a fingerprint as every store before --keep had it, and the id it was given then
FP = {"backbone": "vgg16", "weights": "none:seed0", "image_size": 32, "preprocess": "caffe", "decode": 2,
      "layer": "vgg16:block5_pool", "precision": "float32", "store_dtype": "float16", "keras": "3.0.0",
      "backend": "tensorflow"}
FP_ID = "8b7c071360efc3c5"
POOLED = FeatureOptions("vgg16", weights="none", image_size=32, keep="pooled")
QUICK = HeadOptions(epochs=2, steps_per_epoch=2, units=8, baselines=(), n_bootstrap=0)


def rows(n, start=0):
    rng = np.random.default_rng(start)
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)]
    spatial = rng.uniform(0, 5, (n, 7, 7, 64)).astype(np.float32)
    return hashes, spatial, spatial.mean(axis=(1, 2))


def store_of(tmp_path, keep, batches=((0, 4), (4, 3))):
    store = FeatureStore.open(tmp_path / "cache", {**FP, "keep": keep}, create=True)
    with store.writer() as w:
        for start, n in batches:
            w.append(*rows(n, start))
    return store


def stores_in(cache) -> list:
    return sorted(p for p in cache.iterdir() if (p / "fingerprint.json").is_file())


def shard_bytes(store) -> int:
    """Bytes of the store's shard files, HDF5's own structures included."""
    return sum(p.stat().st_size for p in (store.path / "shards").glob("*.h5"))


def test_keep_both_stores_keep_their_id_and_folder_name():
    assert fingerprint_id(FP) == FP_ID
    assert fingerprint_id({**FP, "keep": "both"}) == FP_ID
    assert store_dirname({**FP, "keep": "both"}) == f"vgg16-vgg16:block5_pool-32-f32-{FP_ID}"
    pooled = {**FP, "keep": "pooled"}
    assert fingerprint_id(pooled) != FP_ID
    assert store_dirname(pooled) == f"vgg16-vgg16:block5_pool-32-f32-pooled-{fingerprint_id(pooled)}"


def test_pooled_only_store_holds_no_spatial_and_is_smaller(tmp_path):
    pooled = store_of(tmp_path, "pooled")
    both = store_of(tmp_path, "both")
    (h1, _, m1), (h2, _, m2) = rows(4, 0), rows(3, 4)
    hashes, mean = h1 + h2, np.concatenate([m1, m2])
    assert pooled.parts == ("pooled",) and both.parts == ("spatial", "pooled")
    [name] = pooled.shard_names()  # the two writes were compacted into one shard
    with h5py.File(pooled.path / "shards" / name, "r") as f:
        assert sorted(f) == ["pooled", "pooled_digest", "sha256"]
    np.testing.assert_array_equal(pooled.read(hashes, ("pooled",))["pooled"], both.read(hashes, ("pooled",))["pooled"])
    np.testing.assert_allclose(pooled.read(hashes, ("pooled",))["pooled"], mean, rtol=1e-3)
    assert shard_bytes(pooled) < shard_bytes(both)
    data = [shards.storage_bytes(s.path / "shards" / s.shard_names()[0]) for s in (pooled, both)]
    assert data[0] * 20 < data[1]  # 64 of 7*7*64+64 values a row, beside the keys and digests
    with pytest.raises(KeepError, match=r"keeps pooled vectors only \(--keep pooled\).*--keep both"):
        pooled.read(hashes, ("spatial",))


def test_verify_gc_and_repair_of_pooled_only_shards(tmp_path):
    store = store_of(tmp_path, "pooled", batches=((0, 4), (4, 3), (7, 2)))
    assert store.verify() == []
    report = store.gc()
    assert report["damaged_shards"] == [] and report["lost_rows"] == 0
    [name] = store.shard_names()
    with h5py.File(store.path / "shards" / name, "r+") as f:  # damage one row's value
        f["pooled"][2] = f["pooled"][2] + 1
    assert len(store.verify()) == 1
    report = store.gc()
    assert (report["kept_rows"], report["lost_rows"]) == (8, 1)
    assert store.verify() == [] and len(store) == 8


def test_a_shard_lacking_a_part_its_store_keeps_is_damaged(tmp_path):
    store = store_of(tmp_path, "both", batches=((0, 3),))
    hashes, _, pooled = rows(2, 10)
    with shards.write_shard(store.path / "shards", 2, None, pooled.shape[1:], np.float16,
                            store._shard_attrs({})) as shard:
        shard.write(hashes, None, pooled)
    assert any("lacks the spatial part its store keeps" in problem for problem in store.verify())
    assert store.gc()["lost_rows"] == 2 and len(store) == 3


@pytest.fixture(scope="module")
def pooled_cache(tmp_path_factory):
    """A tiny dataset and a cache holding only its pooled vectors (vgg16, random weights, 32 px).

    The rows are written as extraction writes them (the store's writer, both parts in), with
    values standing in for the backbone's, so that no test here loads it; the classes differ.
    """
    root = tmp_path_factory.mktemp("keep")
    data = write_tiny_dataset(root / "data", per_split=(("train", 5), ("test", 2)), size=32)
    dataset = discover(data)
    store = FeatureStore.open(root / "cache", resolve(POOLED, "cpu").fingerprint, create=True)
    rng = np.random.default_rng(0)
    spatial = rng.uniform(0, 1, (len(dataset), 1, 1, 512)).astype(np.float32)
    spatial[:, :, :, :8] += 2 * np.array([item.label == "b" for item in dataset.items])[:, None, None, None]
    with store.writer() as writer:
        writer.append(dataset.hashes, spatial, spatial.mean(axis=(1, 2)))
    [result] = extract(dataset, POOLED, RunOptions(cache_dir=root / "cache", device="cpu", workers=0))
    assert (result.store, result.extracted, result.reused) == (str(store.path), 0, 14)
    return data, root / "cache", store


def test_keep_pooled_makes_a_pooled_store(pooled_cache):
    _, cache, store = pooled_cache
    assert store.path.name.startswith("vgg16-") and "-pooled-" in store.path.name
    assert store.parts == ("pooled",) and len(store) == 14
    assert stores_in(cache) == [store.path]
    with h5py.File(store.path / "shards" / store.shard_names()[0], "r") as f:
        assert "spatial" not in f and f["pooled"].shape == (14, 512)


def test_spatial_head_on_pooled_only_cache_is_refused_in_one_line(pooled_cache, tmp_path):
    data, cache, store = pooled_cache
    args = ["fit-head", data, "--backbone", "vgg16", "--weights", "none", "--image-size", "32",
            "--cache-dir", cache, "--device", "cpu", "--out", tmp_path / "run"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert str(store.path) in line and "--keep pooled" in line and "--head-input spatial needs spatial maps" in line
    assert "xrayfeat extract DATA --backbone vgg16 --keep both" in line
    assert not (tmp_path / "run").exists()


def test_pooled_head_trains_predicts_and_explain_refuses(pooled_cache, tmp_path):
    data, cache, store = pooled_cache
    head = replace(QUICK, head_input="pooled")
    features = FeatureOptions("vgg16", weights="none", image_size=32)  # keep both: the pooled store serves it
    result = fit_head(discover(data), features, head, RunOptions(cache_dir=cache, device="cpu", workers=0), out=tmp_path / "run")
    run = load_run(result.run)
    assert run.head_input == "pooled" and run.record.features["keep"] == "pooled"
    assert run.record.store["path"] == str(store.path)
    assert "gradcam" not in run.record.artifacts and not (tmp_path / "run" / "gradcam.png").exists()
    table = run.predict(data / "test", device="cpu").table
    assert len(table) == 4
    np.testing.assert_allclose(table[["head:a", "head:b"]].sum(axis=1), 1.0, rtol=1e-5)
    assert stores_in(cache) == [store.path]  # predict read the pooled store, made no other
    with pytest.raises(XrayfeatError, match=r"cannot explain this run: its head reads pooled vectors") as caught:
        explain(run, data / "test", tmp_path / "maps")
    assert "\n" not in str(caught.value) and not (tmp_path / "maps").exists()


def test_train_tail_with_a_pooled_head_is_refused(pooled_cache, tmp_path):
    data, cache, _ = pooled_cache
    head = replace(QUICK, head_input="pooled", train_tail=True)
    features = FeatureOptions("vgg16", weights="none", image_size=32, layer="vgg16:block4_pool")
    with pytest.raises(XrayfeatError, match="--train-tail .* drop --head-input pooled or --train-tail"):
        fit_head(discover(data), features, head, RunOptions(cache_dir=cache, device="cpu", workers=0), out=tmp_path / "run")


def test_embed_and_export_read_the_pooled_store(pooled_cache, tmp_path, monkeypatch):
    data, cache, store = pooled_cache
    laid_out = []

    def layout(z, *, method, seed, **kwargs):  # a fast stand-in for t-SNE: what it is fed is what matters
        laid_out.append(z)
        return np.asarray(z[:, :2], np.float32)

    monkeypatch.setattr(embedding, "_layout", layout)
    features = FeatureOptions("vgg16", weights="none", image_size=32)
    outcome = embed_map(discover(data), features, tmp_path / "map.png", EmbedOptions(method="tsne"),
                        run=RunOptions(cache_dir=cache, device="cpu", workers=0))
    assert (tmp_path / "map.png").is_file() and outcome.images == 14 and len(laid_out[0]) == 14
    assert outcome.source == "vgg16 pooled features"
    assert open_store(features, cache, "cpu", need=("pooled",)).path == store.path
    with pytest.raises(KeepError, match="keeps pooled vectors only"):
        open_store(features, cache, "cpu", need=("spatial",), purpose="a test")
    exported = export_features(discover(data), features, tmp_path / "x.npz", cache_dir=cache, device="cpu")
    assert (exported.pooled, exported.spatial) == ([14, 512], None)
    with np.load(tmp_path / "x.npz") as npz:
        assert "spatial" not in npz.files and npz["pooled"].shape == (14, 512)
