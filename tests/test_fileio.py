"""xrayfeat.fileio: atomic replacement under failures and under two writers at once."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xrayfeat.fileio import TEMP_GLOB, atomic_path, atomic_write, file_digest, write_json

REPO = Path(__file__).resolve().parents[1]
WRITES = 200
PAYLOAD = 1 << 16  # large enough that one write is several system calls' worth of bytes


def test_failed_block_leaves_the_target_untouched_and_no_temporary(tmp_path):
    target = tmp_path / "record.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and fnmatch.fnmatch(tmp.name, TEMP_GLOB)  # what `cache gc` removes
            tmp.write_text("half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_failed_block_creates_no_target(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "new.npz", suffix=".npz") as tmp:
            assert fnmatch.fnmatch(tmp.name, TEMP_GLOB)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_writes_replace_the_target(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": 1, "path": tmp_path})
    assert json.loads(target.read_text()) == {"x": 1, "path": str(tmp_path)}
    atomic_write(target, b"bytes")
    assert target.read_bytes() == b"bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_file_digest_is_hashlib_of_the_bytes(tmp_path, algorithm):
    data = os.urandom((1 << 20) + 7)
    (tmp_path / "f").write_bytes(data)
    assert file_digest(tmp_path / "f", algorithm) == hashlib.new(algorithm, data).hexdigest()


# ------------------------------------------------------------- two processes at once

_WRITER = textwrap.dedent("""
    import json, os, sys, time
    from xrayfeat.fileio import write_json
    target, letter, go, n, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    open(go + "." + letter, "w").close()  # ready
    while not os.path.exists(go):
        time.sleep(0.001)
    for i in range(n):
        write_json(target, {"writer": letter, "i": i, "data": letter * size})
""")

_HASHER = textwrap.dedent("""
    import os, sys, time
    from xrayfeat.errors import DatasetError
    from xrayfeat.data.hashes import HashCache, hash_files
    cache_file, folder, go, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder))
    open(go + "." + os.path.basename(folder), "w").close()  # ready
    while not os.path.exists(go):
        time.sleep(0.001)
    for i in range(n):
        os.utime(paths[i % len(paths)], ns=(10**18 + i, 10**18 + i))  # one file changed: the cache is saved
        cache = HashCache(cache_file)  # warns on a torn file
        hash_files(paths, cache, lambda j, reason: DatasetError(f"{paths[j]}: {reason}"))
        cache.save()  # warns if its temporary vanished under it
""")


def _run_at_once(script: str, go: Path, args: list[list[str]], check) -> int:
    """Start one child per argument list, release them together, call ``check()`` until all end.

    Returns how many checks ran while the children were writing.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", script, *a], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in args]
    try:
        deadline = time.monotonic() + 30
        while len(list(go.parent.glob(go.name + ".*"))) < len(procs):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "children did not start"
            time.sleep(0.01)
        go.touch()
        checks = 0
        while any(p.poll() is None for p in procs):
            checks += check()
        outs = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [(p.returncode, err) for p, (_, err) in zip(procs, outs)] == [(0, "")] * len(procs)
    return checks


def test_two_processes_writing_one_file_never_tear_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "record.json"
    seen = set()

    def check() -> int:
        try:
            text = target.read_text()
        except FileNotFoundError:  # before the first rename
            return 0
        record = json.loads(text)  # always a whole file ...
        assert record["writer"] in "ab" and record["data"] == record["writer"] * PAYLOAD  # ... of one writer
        seen.add(record["writer"])
        return 1

    checks = _run_at_once(_WRITER, tmp_path / "go", [[str(target), letter, str(tmp_path / "go"), str(WRITES), str(PAYLOAD)]
                                                     for letter in "ab"], check)
    assert checks > 0
    assert check() == 1 and seen
    assert [p.name for p in out.iterdir()] == ["record.json"]  # no temporary left


def test_two_processes_saving_one_hash_cache_never_tear_it(tmp_path):
    folders = []
    for name in ("one", "two"):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(10):
            (folder / f"{i}.png").write_bytes(f"{name} {i}".encode())
        folders.append(folder)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    cache_file = cache_dir / "file-hashes.json"

    def check() -> int:
        try:
            text = cache_file.read_text()
        except FileNotFoundError:
            return 0
        assert isinstance(json.loads(text), dict)
        return 1

    checks = _run_at_once(_HASHER, tmp_path / "go", [[str(cache_file), str(f), str(tmp_path / "go"), str(WRITES)]
                                                     for f in folders], check)
    assert checks > 0
    entries = json.loads(cache_file.read_text())
    for key, (_, _, _, digest) in entries.items():
        assert digest == hashlib.sha256(Path(key).read_bytes()).hexdigest()
    assert [p.name for p in cache_dir.iterdir()] == ["file-hashes.json"]


# --------------------------------------------------------------------------- names at the file system's limit

#: Names of exactly NAME_MAX bytes: ASCII, and multi-byte characters whose cut must fall between characters.
LONG_NAMES = {
    "ascii": "r" * 250 + ".json",
    "two-byte": "é" * 125 + ".json",  # 250 bytes + 5
    "four-byte": "🫁" * 62 + "xy.json",  # 248 + 2 + 5 bytes
}


@pytest.mark.parametrize("name", LONG_NAMES.values(), ids=LONG_NAMES.keys())
def test_an_atomic_write_to_a_name_of_255_bytes_works_and_leaves_no_temporary(tmp_path, name):
    from xrayfeat.fileio import NAME_MAX

    assert len(os.fsencode(name)) == NAME_MAX
    target = tmp_path / name
    seen = []
    with atomic_path(target, suffix=".npz") as tmp:
        seen.append(tmp)
        assert len(os.fsencode(tmp.name)) <= NAME_MAX and fnmatch.fnmatch(tmp.name, TEMP_GLOB)  # `cache gc` finds it
        tmp.write_text("data")
    assert target.read_text() == "data"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    write_json(target, {"a": 1})  # and again, over the old one
    assert json.loads(target.read_text()) == {"a": 1} and len(list(tmp_path.iterdir())) == 1


def test_sibling_names_stay_within_the_limit_unique_and_stable():
    from xrayfeat.fileio import NAME_MAX, bounded_name, is_sibling_of, sibling

    short = Path("/x/emb.png")
    assert sibling(short, ".coords.npz") == Path("/x/emb.png.coords.npz")  # short names are left as they are
    assert sibling(short, ".abc.tmp", hidden=True) == Path("/x/.emb.png.abc.tmp")
    a, b = "a" * 250 + "-one.png", "a" * 250 + "-two.png"  # 258 bytes each; differ only past any cut
    names = {bounded_name(n, ".0123456789ab.tmp", head=".") for n in (a, b)}
    assert len(names) == 2 and all(len(os.fsencode(n)) == NAME_MAX for n in names)
    assert bounded_name(a, ".coords.npz") == bounded_name(a, ".coords.npz")  # the same file found again
    for name in (a, "é" * 200, "🫁" * 80, os.fsdecode(b"\xff" * 300)):  # non-UTF-8 bytes count as one byte each
        derived = bounded_name(name, ".coords.npz")
        assert len(os.fsencode(derived)) <= NAME_MAX and derived.endswith(".coords.npz")
        os.fsencode(derived)  # never half a character
        assert is_sibling_of(Path("/x") / bounded_name(name, ".1.tmp", head="."), Path("/x") / name, hidden=True)
    assert not is_sibling_of(Path("/x") / bounded_name(b, ".1.tmp", head="."), Path("/x") / a, hidden=True)


def test_a_map_s_coordinates_beside_a_png_of_255_bytes_stay_within_the_limit(tmp_path):
    from xrayfeat.analysis.maps import coords_path_for

    out = tmp_path / ("m" * 251 + ".png")
    coords = coords_path_for(out)
    assert len(os.fsencode(coords.name)) <= 255 and coords.name.endswith(".coords.npz") and coords.parent == tmp_path
    coords.write_bytes(b"")  # a name the file system takes
    assert coords_path_for(tmp_path / "emb.png").name == "emb.coords.npz"  # as before for ordinary names
