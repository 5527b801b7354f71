"""``xrayfeat cache import``: features computed elsewhere as a store that ``-b NAME`` selects.

One tiny dataset and one imported npz (random float32 features and 2×2 spatial maps) are shared by the module;
each test imports what else it needs into its own cache folder or under its own name.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli_here, write_tiny_dataset


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(data folder, cache folder, the dataset, the float32 features, the spatial maps) with them imported as 'toy'."""
    import xrayfeat as xf

    root = tmp_path_factory.mktemp("import")
    data = write_tiny_dataset(root / "data", size=32)
    cache = root / "cache"
    dataset = xf.discover(data, cache_dir=cache)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(dataset), 8)).astype(np.float32)
    features[1, 1] = np.float32(1e-40)  # a subnormal, kept as it is
    spatial = rng.normal(size=(len(dataset), 2, 2, 8)).astype(np.float32)
    np.savez(root / "emb.npz", sha256=np.array(dataset.hashes), features=features, spatial=spatial)
    run_cli_here("cache", "import", root / "emb.npz", "--name", "toy", "--model", "random numbers",
                 "--cache-dir", cache, check=True)
    return data, cache, dataset, features, spatial


def _export(data, cache, name, out):
    run_cli_here("cache", "export", data, "-b", name, "--cache-dir", cache, "--out", out, check=True)
    return np.load(out)


def test_an_npz_import_exports_back_bit_for_bit(imported, tmp_path):
    data, cache, _, features, spatial = imported
    exported = _export(data, cache, "toy", tmp_path / "out.npz")
    assert exported["pooled"].dtype == np.float32 and exported["pooled"].tobytes() == features.tobytes()
    assert exported["spatial"].tobytes() == spatial.tobytes()


def test_a_csv_keyed_by_path_is_hashed_at_import_and_exports_back_bit_for_bit(imported, tmp_path):
    data, _, dataset, features, _ = imported
    cache = tmp_path / "cache"
    lines = ["path," + ",".join(f"f{j}" for j in range(features.shape[1]))]
    for item, row in zip(dataset.items, features):  # paths relative to the CSV's folder, numbers as numpy writes float32
        lines.append(f"{item.path.relative_to(data.parent)}," + ",".join(np.format_float_positional(v) for v in row))
    (data.parent / "emb.csv").write_text("\n".join(lines) + "\n")
    result = run_cli_here("cache", "import", data.parent / "emb.csv", "--name", "toy-csv", "--cache-dir", cache,
                          "--json", check=True)
    made = json.loads(result.stdout)
    assert made["key"] == "path" and made["spatial"] is None and made["converted"] is None
    exported = _export(data, cache, "toy-csv", tmp_path / "out.npz")
    assert exported["pooled"].tobytes() == features.tobytes() and "spatial" not in exported.files


def test_the_store_id_is_the_file_and_the_declarations(imported, tmp_path):
    import xrayfeat as xf

    _, cache, dataset, features, _ = imported
    file = cache.parent / "emb.npz"
    again = xf.import_features(file, "toy", cache_dir=cache, model="random numbers")
    first = json.loads((cache / "imports.json").read_text())["names"]["toy"]
    assert again.fingerprint_id == first["fingerprint_id"] and again.written == 0
    other = xf.import_features(file, "toy-v2", cache_dir=cache, model="random numbers v2")
    assert other.fingerprint_id != again.fingerprint_id
    changed = tmp_path / "emb.npz"
    np.savez(changed, sha256=np.array(dataset.hashes), features=features + 1)
    moved = xf.import_features(changed, "toy-v3", cache_dir=cache, model="random numbers")
    assert moved.fingerprint_id not in (again.fingerprint_id, other.fingerprint_id)
    fingerprint = json.loads((cache / f"imported-pooled-{moved.fingerprint_id}" / "fingerprint.json").read_text())
    assert fingerprint["kind"] == "imported" and not {"backbone", "weights", "image_size", "preprocess"} & set(fingerprint)


def test_xf_features_takes_the_name(imported):
    import xrayfeat as xf

    data, cache, dataset, features, spatial = imported
    X, y, meta = xf.features(data, "toy", cache_dir=cache)
    assert X.tobytes() == features.tobytes() and list(meta["sha256"]) == dataset.hashes
    S, _, _ = xf.features(data, "toy", part="spatial", cache_dir=cache)
    assert S.tobytes() == spatial.tobytes()


def test_fit_head_on_imported_features_records_them_and_predict_refuses_images_the_file_lacks(imported, tmp_path):
    import xrayfeat as xf
    from PIL import Image

    data, cache, *_ = imported
    run = xf.fit_head(data, "toy", cache_dir=cache, epochs=1, baselines=(), n_bootstrap=0,
                      out=tmp_path / "run")
    record = json.loads((run.path / "config.json").read_text())
    assert record["features"]["weights"] == "imported" and record["features"]["image_size"] is None
    assert record["weights"]["kind"] == "imported" and record["weights"]["identity"].startswith("imported:sha256=")
    assert record["store"]["fingerprint"]["kind"] == "imported"
    assert record["store"]["fingerprint"]["model"] == "random numbers"
    predicted = run_cli_here("predict", run.path, data / "test", "--out", tmp_path / "p.csv")
    assert predicted.returncode == 0, predicted.stderr
    new = tmp_path / "new"
    new.mkdir()
    Image.fromarray(np.full((32, 39), 7, dtype=np.uint8)).save(new / "unseen.png")
    for command in (("predict", run.path, new, data / "test" / "a", "--out", tmp_path / "q.csv"),
                    ("explain", run.path, new, "--out", tmp_path / "maps")):
        refused = run_cli_here(*command)
        assert refused.returncode == 2
        line = refused.stderr.strip()
        assert "\n" not in line and "1 of 4 images" in line.replace("1 of 1 images", "1 of 4 images")
        assert "not in the features imported as 'toy'" in line and "unseen.png" in line


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _bad(kind, folder, hashes):
    """A file that ``cache import`` must refuse, and what its one line says."""
    x = np.ones((len(hashes), 4), dtype=np.float32)
    if kind == "duplicate keys":
        return _npz(folder / "f.npz", sha256=np.array([hashes[0], *hashes[:-1]]), features=x), "duplicate keys"
    if kind == "non-finite values":
        x[2, 1] = np.nan
        return _npz(folder / "f.npz", sha256=np.array(hashes), features=x), "NaN or infinite"
    if kind == "ragged rows":
        (folder / "f.csv").write_text(f"sha256,a,b\n{hashes[0]},1,2\n{hashes[1]},1\n")
        return folder / "f.csv", "ragged rows"
    if kind == "no key column":
        return _npz(folder / "f.npz", names=np.array(hashes), features=x), "no key array"
    if kind == "empty file":
        (folder / "f.csv").write_bytes(b"")
        return folder / "f.csv", "empty file"
    if kind == "wrong file type":
        (folder / "f.txt").write_text("sha256,a\n")
        return folder / "f.txt", "give a .npz, .csv or .parquet file"
    if kind == "not a number":
        (folder / "f.csv").write_text(f"sha256,a\n{hashes[0]},one\n")
        return folder / "f.csv", "'one' is not a number"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["duplicate keys", "non-finite values", "ragged rows", "no key column", "empty file",
                                  "wrong file type", "not a number"])
def test_a_bad_file_is_refused_in_one_line(imported, tmp_path, kind):
    _, _, dataset, _, _ = imported
    file, says = _bad(kind, tmp_path, dataset.hashes)
    result = run_cli_here("cache", "import", file, "--name", "bad", "--cache-dir", tmp_path / "cache")
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("xrayfeat: error: ")
    assert not (tmp_path / "cache" / "imports.json").exists()


def test_a_name_is_refused_when_a_backbone_has_it_or_other_features_do(imported, tmp_path):
    _, cache, dataset, features, _ = imported
    file = _npz(tmp_path / "other.npz", sha256=np.array(dataset.hashes), features=features * 2)
    backbone = run_cli_here("cache", "import", file, "--name", "vgg16", "--cache-dir", cache)
    assert backbone.returncode == 2 and "is a backbone's" in backbone.stderr and backbone.stderr.count("\n") == 1
    taken = run_cli_here("cache", "import", file, "--name", "toy", "--cache-dir", cache)
    assert taken.returncode == 2 and "already names other imported features" in taken.stderr
    assert "--replace" in taken.stderr and taken.stderr.count("\n") == 1
    replaced = run_cli_here("cache", "import", file, "--name", "toy-copy", "--cache-dir", cache)
    assert replaced.returncode == 0
    again = run_cli_here("cache", "import", cache.parent / "emb.npz", "--name", "toy-copy", "--replace",
                         "--cache-dir", cache, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["replaced"]


def test_parquet_without_an_engine_is_one_line_naming_the_extra(imported, tmp_path, monkeypatch):
    from xrayfeat.store import imported as module

    monkeypatch.setattr(module, "_importable", lambda name: False)  # as on a machine without pyarrow or fastparquet
    (tmp_path / "f.parquet").write_bytes(b"PAR1 not really")
    result = run_cli_here("cache", "import", tmp_path / "f.parquet", "--name", "pq", "--cache-dir", tmp_path / "c")
    assert result.returncode == 2 and "pip install pyarrow" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("layout", ["one column per feature", "a list column 'features'"])
def test_a_parquet_import_exports_back_bit_for_bit(imported, tmp_path, layout):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow", reason="the test extra installs pyarrow; without it parquet is refused (above)")
    data, _, dataset, features, _ = imported
    if layout == "one column per feature":
        table = pd.DataFrame({f"f{j}": features[:, j] for j in range(features.shape[1])})
    else:
        table = pd.DataFrame({"features": list(features)})
    table.insert(0, "sha256", dataset.hashes)
    table.to_parquet(tmp_path / "emb.parquet", engine="pyarrow")
    cache = tmp_path / "cache"
    run_cli_here("cache", "import", tmp_path / "emb.parquet", "--name", "toy-pq", "--cache-dir", cache, check=True)
    exported = _export(data, cache, "toy-pq", tmp_path / "out.npz")
    assert exported["pooled"].dtype == np.float32 and exported["pooled"].tobytes() == features.tobytes()
