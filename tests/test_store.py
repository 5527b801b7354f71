"""The HDF5 feature store on its own: no backbone, hand-made arrays."""

from __future__ import annotations

import hashlib
import json
import warnings

import h5py
import numpy as np
import pytest

from xrayfeat.store import shards
from xrayfeat.errors import StoreError
from xrayfeat.store.fingerprint import FINGERPRINT_FIELDS, fingerprint_id, store_dirname
from xrayfeat.store.catalog import list_stores
from xrayfeat.store.feature_store import FeatureStore

FP = {
    "backbone": "vgg16", "weights": "none:seed=0", "image_size": 32, "preprocess": "caffe",
    "decode": "v1", "layer": "block5_pool", "precision": "float32", "store_dtype": "float16",
    "keras": "3.0", "backend": "tensorflow",
}


def rows(n, start=0, seed=0):
    rng = np.random.default_rng(seed + start)
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)]
    spatial = rng.uniform(0, 5, (n, 2, 2, 3)).astype(np.float32)
    return hashes, spatial, spatial.mean(axis=(1, 2))


def filled(tmp_path, batches=((0, 4), (4, 3), (7, 5))):
    store = FeatureStore.open(tmp_path / "cache", FP, create=True)
    expected = {}
    with store.writer() as w:
        for start, n in batches:
            h, s, p = rows(n, start)
            w.append(h, s, p)
            expected.update({k: (a, b) for k, a, b in zip(h, s, p)})
    return store, expected


@pytest.mark.parametrize("field", FINGERPRINT_FIELDS)
def test_every_fingerprint_field_changes_the_id(field):
    changed = {**FP, field: f"{FP[field]}x"}
    assert fingerprint_id(changed) != fingerprint_id(FP)
    assert store_dirname(changed) != store_dirname(FP)


def test_fingerprint_ignores_key_order_and_extra_fields():
    shuffled = dict(reversed(list(FP.items())))
    assert fingerprint_id(shuffled) == fingerprint_id(FP)
    assert fingerprint_id({**FP, "batch_size": 7}) == fingerprint_id(FP)


def test_append_then_read_in_any_order(tmp_path):
    store, expected = filled(tmp_path)
    assert len(store) == 12
    order = list(expected)[::-1]
    order = order[5:] + order[:5]
    out = store.read(order)
    for i, h in enumerate(order):
        np.testing.assert_array_equal(out["spatial"][i], expected[h][0].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(out["pooled"][i], expected[h][1].astype(np.float16).astype(np.float32))


def test_read_repeated_hashes(tmp_path):
    store, expected = filled(tmp_path)
    h = list(expected)[3]
    out = store.read([h, h, h], ("pooled",))
    assert out["pooled"].shape == (3, 3)
    assert np.all(out["pooled"] == out["pooled"][0])


def test_small_shards_are_compacted_and_index_saved(tmp_path):
    store, _ = filled(tmp_path)
    assert len(store.shard_names()) == 1
    assert (store.path / "index.npz").is_file()
    assert store.verify() == []


def test_missing_keeps_order_and_drops_repeats(tmp_path):
    store, expected = filled(tmp_path)
    new = [hashlib.sha256(b"new%d" % i).hexdigest() for i in range(3)]
    asked = [new[2], list(expected)[0], new[0], new[2], new[1]]
    assert store.missing(asked) == [new[2], new[0], new[1]]


def test_reading_absent_rows_says_what_to_run(tmp_path):
    store, _ = filled(tmp_path)
    with pytest.raises(StoreError, match="run `xrayfeat extract`"):
        store.read([hashlib.sha256(b"absent").hexdigest()])


def test_other_fingerprint_is_another_store(tmp_path):
    filled(tmp_path)
    with pytest.raises(StoreError, match="no feature store"):
        FeatureStore.open(tmp_path / "cache", {**FP, "precision": "mixed_bfloat16"})
    other = FeatureStore.open(tmp_path / "cache", {**FP, "layer": "block4_pool"}, create=True)
    assert len(other) == 0
    assert len(list_stores(tmp_path / "cache")) == 2


@pytest.mark.parametrize("where, name", [
    ("shards", ".99999999999999999999-deadbeef.h5.k3j4l5.tmp"),  # fileio.atomic_path's temporary
    ("shards", ".tmp-99999999999999999999-deadbeef.h5"),  # left by versions before fileio
    (".", ".index.npz.k3j4l5.tmp.npz"),
    (".", ".fingerprint.json.k3j4l5.tmp"),
    (".", ".index.0123456789abcdef.tmp.npz"),  # left by versions before fileio
    (".", ".fingerprint.0123456789abcdef.tmp"),  # left by versions before fileio
])
def test_half_written_file_is_invisible_and_gc_removes_it(tmp_path, where, name):
    store, expected = filled(tmp_path)
    tmp = store.path / where / name
    tmp.write_bytes(b"\x89HDF half written")
    store.refresh()
    assert len(store) == len(expected)
    assert store.verify() == []
    result = store.gc()
    assert result["removed_temp_files"] == [tmp.name]
    assert not tmp.exists()
    assert len(store) == len(expected) and store.verify() == []


def test_gc_spares_temporary_files_younger_than_min_age(tmp_path):
    store, _ = filled(tmp_path)
    tmp = store.path / "shards" / ".x.h5.abc.tmp"
    tmp.write_bytes(b"being written")
    assert store.gc(min_age_s=3600)["removed_temp_files"] == []
    assert tmp.exists()


def test_failed_shard_write_leaves_nothing(tmp_path):
    store, expected = filled(tmp_path)
    before = sorted((store.path / "shards").iterdir())
    h, s, p = rows(2, start=50)
    with pytest.raises(StoreError, match="shard got 2 rows, expected 3"):
        with shards.write_shard(store.path / "shards", 3, s.shape[1:], p.shape[1:], np.float16, {}) as shard:
            shard.write(np.asarray(h, "S64"), s, p)
    with pytest.raises(KeyError):
        with shards.write_shard(store.path / "shards", 2, s.shape[1:], p.shape[1:], np.float16, {}) as shard:
            raise KeyError("killed")
    assert sorted((store.path / "shards").iterdir()) == before
    store.refresh()
    assert len(store) == len(expected)


def test_writing_leaves_no_temporary_files_and_a_real_index(tmp_path):
    store, _ = filled(tmp_path)
    assert [p.name for p in store.path.rglob(".*")] == []
    with np.load(store.path / "index.npz") as npz:  # the data, not an empty file beside a stray .npz
        assert len(npz["hashes"]) == len(store)


def test_broken_index_is_refused_until_gc_rebuilds_it(tmp_path):
    store, expected = filled(tmp_path)
    (store.path / "index.npz").write_bytes(b"not an npz")
    store.refresh()
    with pytest.raises(StoreError, match=r"index.npz: does not match its checksum; .*run `xrayfeat cache gc --cache-dir "):
        store.read(list(expected))
    assert store.gc()["rebuilt_index"] is True
    store.refresh()
    out = store.read(list(expected))
    assert out["pooled"].shape == (len(expected), 3) and store.verify() == []


def test_index_follows_shards_added_by_another_writer(tmp_path):
    store, expected = filled(tmp_path)
    other = FeatureStore.open(tmp_path / "cache", FP)
    h, s, p = rows(2, start=100)
    with other.writer() as w:
        w.append(h, s, p)
    store.refresh()
    assert len(store) == len(expected) + 2


def test_interrupted_compaction_duplicates_are_harmless_and_gc_fixes_them(tmp_path):
    store, expected = filled(tmp_path)
    [name] = store.shard_names()
    # what a kill between "merged shard renamed" and "old shards deleted" leaves behind
    copy = store.path / "shards" / f"{'9' * 20}-copy.h5"
    copy.write_bytes((store.path / "shards" / name).read_bytes())
    store.refresh()
    assert len(store) == len(expected)
    assert store.verify() == []  # both copies are sound; the first shard's rows are read
    assert store.gc()["dropped_duplicates"] == len(expected)
    assert store.shard_names() == [name]
    assert store.verify() == [] and len(store) == len(expected)


def test_shard_edited_through_hdf5_is_named_by_verify_and_refused_by_readers(tmp_path):
    store, expected = filled(tmp_path)
    [name] = store.shard_names()
    with h5py.File(store.path / "shards" / name, "r+") as f:  # a valid HDF5 edit: HDF5's own checksums agree
        key = f["sha256"][0].decode()
        f["pooled"][0, 0] = 1234.0
    problems = store.verify()
    assert len(problems) == 1 and name in problems[0] and "1 of 12 rows do not match their checksums" in problems[0]
    with pytest.raises(StoreError, match=rf"{name}: pooled of row 0 does not match its checksum; .*cache gc"):
        store.read([key], ("pooled",))
    assert store.read([key], ("spatial",))["spatial"].shape == (1, 2, 2, 3)  # the sound part still reads


def test_truncated_shard_is_reported_not_raised(tmp_path):
    store, _ = filled(tmp_path)
    [name] = store.shard_names()
    path = store.path / "shards" / name
    path.write_bytes(path.read_bytes()[:200])
    problems = store.verify()
    assert problems and name in problems[0]


def test_float16_overflow_is_refused(tmp_path):
    store = FeatureStore.open(tmp_path / "cache", FP, create=True)
    h, s, p = rows(2)
    s[0, 0, 0, 0] = 70000.0
    with pytest.raises(StoreError, match="--store-dtype float32"):
        with store.writer() as w:
            w.append(h, s, p)
    assert len(store) == 0


def test_float32_store_keeps_large_values(tmp_path):
    store = FeatureStore.open(tmp_path / "cache", {**FP, "store_dtype": "float32"}, create=True)
    h, s, p = rows(2)
    s[0, 0, 0, 0] = 70000.0
    with store.writer() as w:
        w.append(h, s, p)
    assert store.read(h)["spatial"][0, 0, 0, 0] == 70000.0


def test_nan_features_are_refused(tmp_path):
    store = FeatureStore.open(tmp_path / "cache", FP, create=True)
    h, s, p = rows(2)
    p[1, 1] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        with store.writer() as w:
            w.append(h, s, p)


def test_many_tiny_values_warn(tmp_path):
    store = FeatureStore.open(tmp_path / "cache", FP, create=True)
    h, s, p = rows(3)
    s *= 1e-6
    p *= 1e-6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with store.writer() as w:
            w.append(h, s, p)
            w.warn_subnormal()
    assert any("below float16's normal range" in str(c.message) for c in caught)


def test_stream_batches_match_read(tmp_path):
    store, expected = filled(tmp_path)
    order = list(expected)
    chunks = list(store.iter_batches(order, ("pooled",), batch_size=5))
    assert [len(c["pooled"]) for c in chunks] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([c["pooled"] for c in chunks]), store.read(order, ("pooled",))["pooled"])


def test_provenance_is_in_hdf5_attributes(tmp_path):
    store = FeatureStore.open(tmp_path / "cache", FP, create=True)
    with store.writer({"device": "cpu"}) as w:
        w.append(*rows(2))
    attrs = store.provenance()
    assert attrs["random_weights"] is True or attrs["random_weights"] == 1
    assert "RANDOM WEIGHTS" in attrs["WARNING"]
    assert json.loads(attrs["fingerprint"]) == FP
    assert attrs["device"] == "cpu"


def test_tampered_fingerprint_file_is_detected(tmp_path):
    store, _ = filled(tmp_path)
    meta = store.path / "fingerprint.json"
    meta.write_text(json.dumps({**FP, "layer": "other"}))
    with pytest.raises(StoreError, match=r"fingerprint.json: holds fingerprint \w+, not the \w+ its folder name "
                                         r"promises .*rename the folder to vgg16-other-32-f32-"):
        FeatureStore.open(tmp_path / "cache", FP)
    meta.write_text("{not json")
    with pytest.raises(StoreError, match="fingerprint.json: unreadable .*delete .* and re-run extract"):
        FeatureStore.open(tmp_path / "cache", FP)


def test_reading_no_rows_gives_empty_arrays_of_the_stored_width(tmp_path):
    store, _ = filled(tmp_path)
    out = store.read([])
    assert out["spatial"].shape == (0, 2, 2, 3) and out["pooled"].shape == (0, 3)
    assert out["spatial"].dtype == out["pooled"].dtype == np.float32
    assert list(store.iter_batches([], ("pooled",))) == []
    empty = FeatureStore.open(tmp_path / "cache", {**FP, "layer": "block4_pool"}, create=True)
    assert empty.read([], ("pooled",))["pooled"].shape[0] == 0


def test_a_damaged_store_definition_is_listed_flagged_and_the_others_are_still_listed(tmp_path):
    from conftest import run_cli

    cache = tmp_path / "cache"
    sound = [FeatureStore.open(cache, {**FP, "layer": layer}, create=True) for layer in ("block3_pool", "block5_pool")]
    with sound[0].writer() as w:
        w.append(*rows(2))
    broken = FeatureStore.open(cache, {**FP, "layer": "block4_pool"}, create=True)
    (broken.path / "fingerprint.json").write_text("{not json")
    listed = list_stores(cache)
    assert [s.path for s in listed] == sorted([*(s.path for s in sound), broken.path])
    assert [s.damaged for s in listed] == [s.path == broken.path for s in listed]
    [flagged] = [s for s in listed if s.damaged]
    assert str(broken.path) in flagged.problem and "delete" in flagged.problem and "re-run extract" in flagged.problem

    # each cache command shows the damaged store once, as damaged, with its repair (no warning beside it)
    ls = run_cli("cache", "ls", "--cache-dir", cache, "--json")
    assert ls.returncode == 0, ls.stderr
    assert sorted(s["path"] for s in json.loads(ls.stdout)["stores"]) == sorted(str(s.path) for s in listed)
    assert [line for line in ls.stderr.splitlines() if str(broken.path) in line] == [f"damaged: {flagged.problem}"]
    table = run_cli("cache", "ls", "--cache-dir", cache)
    assert table.returncode == 0 and table.stderr == "" and "?" not in table.stdout  # no row of unknowns
    assert table.stdout.count(flagged.problem) == 1 and table.stdout.rstrip().endswith(f"damaged: {flagged.problem}")
    verify = run_cli("cache", "verify", "--cache-dir", cache)
    assert verify.returncode == 1
    assert all(f"ok   {s.path}" in verify.stdout for s in sound) and f"BAD  {broken.path}\n" in verify.stdout
    assert verify.stdout.count(flagged.problem) == 1
    assert verify.stderr.splitlines() == [f"xrayfeat: error: 1 problem(s) found; first: {flagged.problem}"]
    gc = run_cli("cache", "gc", "--cache-dir", cache, "--json")
    assert gc.returncode == 0, gc.stderr
    assert sorted(r["store"] for r in json.loads(gc.stdout)["stores"]) == sorted(str(s.path) for s in listed)
    assert [line for line in gc.stderr.splitlines() if str(broken.path) in line] == [
        f"damaged, left as is: {flagged.problem}"]


def test_the_record_of_unreadable_files_is_trusted_only_when_sound_and_for_its_decoder(tmp_path):
    from xrayfeat.store.unreadable import UNREADABLE_FILE, load_unreadable, save_unreadable

    store, _ = filled(tmp_path)
    bad = {hashlib.sha256(b"broken").hexdigest(): "cannot decode the PNG pixel data"}
    assert load_unreadable(store.path, "v1") == {}
    save_unreadable(store.path, "v1", bad)
    assert load_unreadable(store.path, "v1") == bad
    assert load_unreadable(store.path, "v2") == {}  # another decoder tries them again
    record = store.path / UNREADABLE_FILE
    text = record.read_text()
    record.write_text(text.replace("cannot decode", "can decode"))  # edited by hand: the seal no longer fits
    assert load_unreadable(store.path, "v1") == {}
    for junk in ("{not json", "[]", '{"format": 1}', ""):
        record.write_text(junk)
        assert load_unreadable(store.path, "v1") == {}
    assert store.verify() == [] and len(store) == 12  # the record is no part of the rows


@pytest.mark.parametrize("command", ["ls", "verify", "gc"])
@pytest.mark.parametrize("kind", ["missing", "file", "under-a-file"])
def test_cache_commands_refuse_a_missing_folder_or_a_file_in_one_line(tmp_path, command, kind):
    """A mistyped --cache-dir is bad input (exit 2, one line naming it and the fix), never a healthy empty cache."""
    from conftest import run_cli

    (tmp_path / "notes.txt").write_text("not a cache")
    path = {"missing": tmp_path / "cahce", "file": tmp_path / "notes.txt", "under-a-file": tmp_path / "notes.txt" / "cache"}[kind]
    proc = run_cli("cache", command, "--cache-dir", path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"xrayfeat: error: {path}: ") and line.endswith("pass --cache-dir the folder extract wrote its features to")
    assert proc.stdout == "" and not (tmp_path / "cahce").exists()
