"""The store's promises under faults: kill -9, damage, a full disk, a read-only folder, another fingerprint.

Writers run in forked children that write through the store API (no backbone:
small synthetic arrays, many small batches), so a kill lands anywhere in a
shard write, between shards or in compaction. The "random" moments come from
fixed seeds, printed with every failure, so a failure reproduces.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import os
import random
import resource
import shutil
import signal
import stat
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_cli
from test_store import FP, rows
from xrayfeat.store import shards
from xrayfeat.errors import StoreError
from xrayfeat.store.fingerprint import store_dirname
from xrayfeat.store.feature_store import FeatureStore

FORK = multiprocessing.get_context("fork")
KILL_SEED = 20261201
BATCHES = [rows(3, start=3 * k) for k in range(12)]
EXPECTED = {key: (s.astype(np.float16), p.astype(np.float16))
            for hashes, spatial, pooled in BATCHES for key, s, p in zip(hashes, spatial, pooled)}
ORDER = list(EXPECTED)
READ_ONLY_FIX = "the cache folder is read-only: make it writable, or pass another --cache-dir; the store is as it was"


def _store(cache: Path) -> FeatureStore:
    return FeatureStore.at(cache / store_dirname(FP))


def _filled(cache: Path, batches=BATCHES) -> FeatureStore:
    store = FeatureStore.open(cache, FP, create=True)
    with store.writer() as w:
        for batch in batches:
            w.append(*batch)
    return store


def _assert_reads_what_was_written(store: FeatureStore, hashes, context="") -> None:
    store.refresh()
    if not hashes:
        return
    out = store.read(list(hashes))
    for i, h in enumerate(hashes):
        assert np.array_equal(out["spatial"][i], EXPECTED[h][0]), f"{context}: spatial of {h[:8]}"
        assert np.array_equal(out["pooled"][i], EXPECTED[h][1]), f"{context}: pooled of {h[:8]}"


def _resume_and_tidy(store: FeatureStore) -> None:
    """What re-running extract and then `cache gc` do: write the missing rows, then repair and compact."""
    missing = set(store.missing(ORDER))
    with store.writer() as w:
        for h, s, p in BATCHES:
            keep = [i for i, key in enumerate(h) if key in missing]
            if keep:
                w.append([h[i] for i in keep], s[keep], p[keep])
    store.gc()
    assert store.verify() == []
    _assert_reads_what_was_written(store, ORDER, "after resume")


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(exc) -> str:
    text = str(exc.value if hasattr(exc, "value") else exc)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------- kill -9


def _write_batches(cache: Path, progress) -> None:
    store = FeatureStore.open(cache, FP, create=True)
    with store.writer() as w:
        for k, batch in enumerate(BATCHES, start=1):
            progress.value = k  # about to write batch k
            w.append(*batch)
        progress.value = len(BATCHES) + 1  # compaction and the index from here on


def _kill_when(proc, progress, step: int, delay: float) -> None:
    deadline = time.monotonic() + 60
    while progress.value < step and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.0002)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()


@pytest.mark.fault
def test_kill_9_at_random_moments_of_a_writer_leaves_whole_batches_that_read_right(tmp_path):
    rng = random.Random(KILL_SEED)
    print(f"kill seed {KILL_SEED}")
    cut_short = 0
    for moment in range(12):
        step, delay = rng.randint(1, len(BATCHES) + 1), rng.uniform(0, 0.006)
        context = f"seed {KILL_SEED}, moment {moment}: killed at step {step} + {delay * 1000:.1f} ms"
        cache = tmp_path / f"cache{moment}"
        progress = FORK.Value("i", 0)
        proc = FORK.Process(target=_write_batches, args=(cache, progress))
        proc.start()
        _kill_when(proc, progress, step, delay)
        store = _store(cache)
        assert store.verify() == [], context
        present = set(ORDER) - set(store.missing(ORDER))
        for h, _, _ in BATCHES:
            assert len(present & set(h)) in (0, len(h)), f"{context}: a batch is half visible"
        _assert_reads_what_was_written(store, [h for h in ORDER if h in present], context)
        cut_short += len(present) < len(ORDER)
        _resume_and_tidy(store)
    assert cut_short >= 3, f"seed {KILL_SEED}: the kills came too late to interrupt the writer"


def _many_small_shards(cache: Path, monkeypatch) -> FeatureStore:
    with monkeypatch.context() as m:
        m.setattr(FeatureStore, "compact", lambda self: 0)
        return _filled(cache)


def _gc(cache: Path) -> None:
    _store(cache).gc()


@pytest.mark.fault
def test_kill_9_during_gc_compaction_leaves_a_store_that_reads_right(tmp_path, monkeypatch):
    template = _many_small_shards(tmp_path / "template", monkeypatch).path.parent
    started = time.perf_counter()
    _store(shutil.copytree(template, tmp_path / "timed")).gc()
    seconds = time.perf_counter() - started
    rng = random.Random(KILL_SEED)
    interrupted = 0
    for moment in range(6):
        delay = rng.uniform(0, seconds)
        context = f"seed {KILL_SEED}, moment {moment}: gc killed after {delay * 1000:.1f} ms"
        cache = shutil.copytree(template, tmp_path / f"cache{moment}")
        proc = FORK.Process(target=_gc, args=(cache,))
        proc.start()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        store = _store(cache)
        assert store.verify() == [], context
        assert store.missing(ORDER) == [], context
        _assert_reads_what_was_written(store, ORDER, context)
        interrupted += len(store.shard_names()) > 1
        store.gc()
        assert store.verify() == [] and len(store.shard_names()) == 1, context
        _assert_reads_what_was_written(store, ORDER, context)
    assert interrupted >= 2, f"seed {KILL_SEED}: the kills missed the compaction"


def _write_in_sessions(cache: Path) -> None:
    store = FeatureStore.open(cache, FP, create=True)
    for batch in BATCHES:
        with store.writer() as w:
            w.append(*batch)


@pytest.mark.fault
def test_gc_while_a_writer_writes_waits_its_turn_and_loses_nothing(tmp_path):
    FeatureStore.open(tmp_path / "cache", FP, create=True)
    store = _store(tmp_path / "cache")
    proc = FORK.Process(target=_write_in_sessions, args=(tmp_path / "cache",))
    proc.start()
    runs = 0
    while proc.is_alive() or runs == 0:
        store.gc()
        runs += 1
    proc.join()
    assert proc.exitcode == 0 and runs >= 2
    assert store.verify() == []
    _assert_reads_what_was_written(store, ORDER, "gc beside a writer")


# ---------------------------------------------------------------------- damage


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x08
    path.write_bytes(bytes(data))


def _pooled_row_offset(path: Path, row: int) -> int:
    with h5py.File(path, "r") as f:
        pooled = f["pooled"]
        return pooled.id.get_offset() + row * pooled.dtype.itemsize * pooled.shape[1]


def _superblock_offset(path: Path) -> int:
    return shards.USERBLOCK + 9  # a byte of HDF5's own superblock, after the user block


@pytest.mark.parametrize("damage, lost", [
    ("flip a pooled value of row 5", [5]),
    ("flip a byte of HDF5's superblock", list(range(12))),
    ("flip a byte of the file digest", []),
    ("truncate to half", list(range(12))),
])
def test_damaged_shard_is_named_refused_and_repaired_by_gc(tmp_path, damage, lost):
    store = _filled(tmp_path / "cache", BATCHES[:4])
    [name] = store.shard_names()
    path = store.path / "shards" / name
    keys = [h.decode() for h in shards.read_hashes(path)]
    if damage.startswith("flip a pooled"):
        _flip(path, _pooled_row_offset(path, 5))
    elif damage.startswith("flip a byte of HDF5"):
        _flip(path, _superblock_offset(path))
    elif damage.startswith("flip a byte of the file"):
        _flip(path, 30)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    [problem] = store.verify()
    assert problem.startswith(f"{path}: ") and _one_line(problem)
    assert f"the shard is damaged: run `xrayfeat cache gc --cache-dir {store.path.parent}`" in problem
    store.refresh()
    if lost:
        with pytest.raises(StoreError, match=rf"{name}: .*cache gc --cache-dir .* then re-run `xrayfeat extract`") as exc:
            store.read(keys)
        _one_line(exc)
    result = store.gc()
    assert result["damaged_shards"] == [name]
    assert result["kept_rows"] == 12 - len(lost)
    assert store.verify() == []
    store.refresh()
    assert store.missing(keys) == [keys[i] for i in lost]  # what re-running extract recomputes
    _assert_reads_what_was_written(store, [k for k in keys if k in store], damage)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_index_is_named_refused_and_rebuilt_by_gc(tmp_path, damage):
    store = _filled(tmp_path / "cache", BATCHES[:4])
    index = store.path / "index.npz"
    for offset in range(0, index.stat().st_size, 97) if damage == "flip" else [index.stat().st_size - 10, 0]:
        original = index.read_bytes()
        if damage == "flip":
            _flip(index, offset)
        else:
            index.write_bytes(original[:offset])
        store.refresh()
        expected = rf"{index}: does not match its checksum; the index is damaged: run `xrayfeat cache gc --cache-dir "
        for reader in (len, lambda s: s.missing(ORDER), lambda s: s.read(ORDER[:12])):
            with pytest.raises(StoreError, match=expected) as exc:
                reader(store)
            _one_line(exc)
        [problem] = store.verify()
        assert problem.startswith(f"{index}: does not match its checksum"), f"{damage} at {offset}"
        assert store.gc()["rebuilt_index"] is True
        assert store.verify() == []
        _assert_reads_what_was_written(store, ORDER[:12], f"{damage} at {offset}")
        index.write_bytes(original)


def test_cache_verify_and_gc_commands_name_repair_and_exit_as_promised(tmp_path):
    store = _filled(tmp_path / "cache", BATCHES[:4])
    [name] = store.shard_names()
    path = store.path / "shards" / name
    _flip(path, _pooled_row_offset(path, 5))
    verify = run_cli("cache", "verify", "--cache-dir", tmp_path / "cache")
    assert verify.returncode == 1
    assert verify.stderr.count("\n") == 1 and verify.stderr.startswith(f"xrayfeat: error: 1 problem(s) found; first: {path}: ")
    assert f"{path}: " in verify.stdout and "1 of 12 rows do not match their checksums" in verify.stdout
    gc = run_cli("cache", "gc", "--cache-dir", tmp_path / "cache")
    assert gc.returncode == 0, gc.stderr
    assert "replaced 1 damaged shards by their 11 sound rows (1 rows lost: re-run extract to recompute them)" in gc.stdout
    assert run_cli("cache", "verify", "--cache-dir", tmp_path / "cache").returncode == 0


def test_shard_from_an_older_xrayfeat_is_refused_until_gc_removes_it(tmp_path):
    store = _filled(tmp_path / "cache", BATCHES[:2])
    [name] = store.shard_names()
    with h5py.File(store.path / "shards" / name, "r+") as f:  # what a shard without row digests looks like
        del f.attrs["format"]
    store.refresh()
    with pytest.raises(StoreError, match=rf"{name}: written by an older xrayfeat without row checksums, so it cannot "
                                         rf"be checked; the shard is damaged: run `xrayfeat cache gc"):
        store.read(ORDER[:6])
    assert store.gc()["damaged_shards"] == [name]
    store.refresh()
    assert store.missing(ORDER[:6]) == ORDER[:6] and store.verify() == []


def test_shard_of_another_fingerprint_is_refused_and_dropped_by_gc(tmp_path):
    store = _filled(tmp_path / "cache", BATCHES[:2])
    other = FeatureStore.open(tmp_path / "other", {**FP, "layer": "block4_pool"}, create=True)
    with other.writer() as w:
        w.append(*rows(3, start=100))
    [stray] = other.shard_names()
    shutil.copy(other.path / "shards" / stray, store.path / "shards" / stray)
    store.refresh()
    with pytest.raises(StoreError, match=rf"{stray}: belongs to fingerprint {other.fingerprint_id}, not this store's "
                                         rf"{store.fingerprint_id} \(copied from another store\?\)") as exc:
        store.read(ORDER[:6])
    _one_line(exc)
    assert any(stray in p for p in store.verify())
    assert store.gc()["damaged_shards"] == [stray]
    assert store.verify() == []
    _assert_reads_what_was_written(store, ORDER[:6], "after dropping the stray shard")


def test_store_of_another_fingerprint_asked_for_under_this_name_is_one_line(tmp_path):
    # what fit-head and extract meet when a store folder was renamed or copied by hand
    store = _filled(tmp_path / "cache", BATCHES[:1])
    wanted = {**FP, "precision": "mixed_bfloat16"}
    shutil.copytree(store.path, tmp_path / "cache" / store_dirname(wanted))
    with pytest.raises(StoreError, match=rf"fingerprint.json: holds fingerprint {store.fingerprint_id}, not the "
                                         rf"\w+ its folder name promises .* rename the folder to {store.path.name}") as exc:
        FeatureStore.open(tmp_path / "cache", wanted, create=True)
    _one_line(exc)


# ---------------------------------------------------------------------- a full disk, a read-only folder


def _in_child(work, *args):
    """Run ``work(*args)`` in a forked child; return what it returned (a str) or the text of the error it raised."""
    receive, send = FORK.Pipe(duplex=False)

    def child():
        try:
            send.send(work(*args))
        except Exception as exc:  # the parent asserts on the type and the text
            send.send(f"{type(exc).__name__}: {exc}")

    proc = FORK.Process(target=child)
    proc.start()
    result = receive.recv()
    proc.join()
    return result


def _with_file_size_limit(limit: int, work, *args):
    """``work`` where no file may grow past ``limit`` bytes: writes fail with EFBIG, as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return work(*args)


def _append_big_batch(cache: Path) -> str:
    store = _store(cache)
    hashes = [hashlib.sha256(b"big%d" % i).hexdigest() for i in range(200)]
    spatial = np.ones((200, 4, 4, 64), np.float32)
    with store.writer() as w:
        w.append(hashes, spatial, spatial.mean(axis=(1, 2)))
    return "written"


@pytest.mark.parametrize("when", ["a shard write", "gc compaction"])
def test_disk_full_is_one_line_and_leaves_the_store_as_it_was(tmp_path, monkeypatch, when):
    if when == "a shard write":
        store, work = _filled(tmp_path / "cache"), _append_big_batch
    else:
        store, work = _many_small_shards(tmp_path / "cache", monkeypatch), _gc
    before = _digests(store.path)
    result = _in_child(_with_file_size_limit, 4096, work, tmp_path / "cache")
    assert result.startswith(f"StoreError: {store.path}")
    assert result.endswith(": cannot write (File too large); free disk space (or raise the file size limit), then "
                           "re-run; the store is as it was"), result
    assert _digests(store.path) == before
    _assert_reads_what_was_written(store, ORDER, f"after a full disk in {when}")


def _without_privileges(work, *args):
    """``work`` with no capabilities, so that file permissions bind even a root process."""
    if os.geteuid() == 0:
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()) != 0:  # _LINUX_CAPABILITY_VERSION_3
            raise OSError(ctypes.get_errno(), "capset")
    return work(*args)


def _use_read_only(cache: Path) -> dict:
    store = FeatureStore.open(cache, FP)
    out = {"read": store.read(ORDER)["pooled"].tobytes(), "missing": store.missing(ORDER), "verify": store.verify()}
    out["gc"] = store.gc()  # nothing to repair or compact: nothing to write
    attempts = {
        "append": lambda: _append_big_batch(cache),
        "create": lambda: FeatureStore.open(cache, {**FP, "layer": "block4_pool"}, create=True),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            out[name] = "no error"
        except StoreError as exc:
            out[name] = str(exc)
    return out


def _set_writable(folder: Path, writable: bool) -> None:
    for p in [folder, *folder.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_read_only_cache_reads_and_refuses_writes_leaving_it_as_it_was(tmp_path):
    store = _filled(tmp_path / "cache")
    expected = store.read(ORDER)["pooled"].tobytes()
    before = _digests(tmp_path / "cache")
    _set_writable(tmp_path / "cache", False)
    try:
        out = _in_child(_without_privileges, _use_read_only, tmp_path / "cache")
    finally:
        _set_writable(tmp_path / "cache", True)
    assert isinstance(out, dict), out
    assert out["read"] == expected and out["missing"] == [] and out["verify"] == []
    assert out["gc"]["merged_shards"] == 0 and out["gc"]["damaged_shards"] == []
    for name in ("append", "create"):
        assert _one_line(out[name]).endswith(f": cannot write (Permission denied); {READ_ONLY_FIX}"), (name, out[name])
    assert out["append"].startswith(f"{store.path / 'shards'}")
    assert out["create"].startswith(f"{tmp_path / 'cache'}")
    assert _digests(tmp_path / "cache") == before
