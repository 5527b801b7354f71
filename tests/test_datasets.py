"""Tests for xrayfeat.data.datasets: layouts, manifests, ordering, hashing, the hash cache, errors, summaries."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayfeat.data import hashes as filehashes
from xrayfeat.data.datasets import Item, discover
from xrayfeat.errors import DatasetError
from xrayfeat.data.summary import summarize

_counter = itertools.count(1)


def png(path: Path, *, size: tuple[int, int] = (6, 5), mode: str = "L") -> Path:
    """Write a tiny PNG whose pixels (hence bytes) differ from every other one written here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = next(_counter)
    image = Image.new(mode, size)
    image.putpixel((0, 0), n % 256 if mode == "L" else (n % 256,) * len(mode))
    image.putpixel((1, 0), n // 256 % 256 if mode == "L" else (n // 256 % 256,) * len(mode))
    image.save(path, format="PNG")
    return path


def make_tree(root: Path, relpaths: list[str]) -> Path:
    """A PNG at each relpath under root."""
    for rel in relpaths:
        png(root / rel)
    return root


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def count_hashing(monkeypatch):
    """Record every file whose contents discover() reads."""
    calls: list[str] = []
    real = filehashes.file_digest

    def counting(path, algorithm="sha256"):
        calls.append(os.fspath(path))
        return real(path, algorithm)

    monkeypatch.setattr(filehashes, "file_digest", counting)
    return calls


SPLIT_TREE = [
    "train/covid/a.png", "train/covid/b.png", "train/normal/c.png",
    "val/covid/d.png", "val/normal/e.png",
    "test/normal/f.png", "test/covid/g.png",
]
CLASS_TREE = ["covid/a.png", "covid/b.png", "normal/c.png"]


# ---------------------------------------------------------------- layouts

@pytest.mark.parametrize(
    "tree, layout, splits, relpaths",
    [
        (SPLIT_TREE, "split-folders", ("train", "val", "test"),
         ["train/covid/a.png", "train/covid/b.png", "train/normal/c.png", "val/covid/d.png",
          "val/normal/e.png", "test/covid/g.png", "test/normal/f.png"]),
        (CLASS_TREE, "class-folders", ("train",), ["covid/a.png", "covid/b.png", "normal/c.png"]),
        (["train/covid/a.png", "test/covid/b.png", "test/normal/c.png"], "split-folders", ("train", "test"),
         ["train/covid/a.png", "test/covid/b.png", "test/normal/c.png"]),
    ],
    ids=["split-folders", "class-folders", "no-val"],
)
def test_folder_layouts(tmp_path, tree, layout, splits, relpaths):
    ds = discover(make_tree(tmp_path / "data", tree))
    assert ds.layout == layout
    assert ds.root == (tmp_path / "data").absolute()
    assert ds.classes == ("covid", "normal")
    assert ds.splits == splits
    assert [item.relpath for item in ds.items] == relpaths
    assert len(ds) == len(tree)
    assert all(item.path.is_absolute() and item.path == ds.root / item.relpath for item in ds)
    assert all(item.patient_id is None and item.source is None for item in ds)
    assert not ds.has_patients and not ds.has_sources
    if layout == "class-folders":
        assert {item.split for item in ds} == {"train"}


def test_split_folder_names_are_case_insensitive(tmp_path):
    ds = discover(make_tree(tmp_path, ["Train/covid/a.png", "TEST/covid/b.png"]))
    assert ds.layout == "split-folders"
    assert [(item.split, item.relpath) for item in ds] == [("train", "Train/covid/a.png"), ("test", "TEST/covid/b.png")]


def test_skips_hidden_docs_and_os_junk(tmp_path):
    root = make_tree(tmp_path, ["train/covid/a.png", "train/normal/b.png"])
    (root / ".cache").mkdir()
    png(root / ".cache" / "x.png")
    (root / "train" / "covid" / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "covid" / "Thumbs.db").write_bytes(b"junk")
    (root / "__MACOSX" / "train").mkdir(parents=True)
    (root / "README.md").write_text("hello")
    (root / "SOURCE.md").write_text("where from")
    (root / "LICENSE").write_text("licence")
    (root / "train" / "labels.txt").write_text("not in a class folder, ignored")
    ds = discover(root)
    assert [item.relpath for item in ds] == ["train/covid/a.png", "train/normal/b.png"]


def test_accepts_all_image_suffixes_case_insensitively(tmp_path):
    root = tmp_path / "data"
    for i, name in enumerate(["a.png", "b.PNG", "c.jpg", "d.JPEG", "e.dcm", "f.dicom"]):
        (root / "covid").mkdir(parents=True, exist_ok=True)
        (root / "covid" / name).write_bytes(b"not decoded by discover %d" % i)
    ds = discover(root)
    assert len(ds) == 6


# ---------------------------------------------------------------- manifests

def test_manifest_csv(tmp_path):
    make_tree(tmp_path / "imgs", ["a.png", "b.png", "sub/c.png", "d.png"])
    manifest = write_csv(tmp_path / "imgs" / "list.csv", [
        ["Path", "label", "split", "patient_id", "source", "notes"],
        ["a.png", "normal", "train", "p1", "hospA", "x"],
        ["sub/c.png", "covid", "", "", "", "no split: train"],
        ["./b.png", "covid", "test", "p2", "hospB", ""],
        [],
        ["d.png", "covid", "VAL", "p3", "", ""],
    ])
    ds = discover(manifest)
    assert ds.layout == "manifest"
    assert ds.root == (tmp_path / "imgs").absolute()
    assert ds.classes == ("covid", "normal")
    by_rel = {item.relpath: item for item in ds}
    assert set(by_rel) == {"a.png", "sub/c.png", "b.png", "d.png"}
    assert by_rel["a.png"] == Item(
        path=(tmp_path / "imgs" / "a.png").absolute(), relpath="a.png", label="normal", split="train",
        patient_id="p1", source="hospA", sha256=sha256(tmp_path / "imgs" / "a.png"),
        nbytes=(tmp_path / "imgs" / "a.png").stat().st_size,
    )
    assert (by_rel["sub/c.png"].split, by_rel["sub/c.png"].patient_id, by_rel["sub/c.png"].source) == ("train", None, None)
    assert by_rel["b.png"].split == "test"
    assert by_rel["d.png"].split == "val"
    assert [item.relpath for item in ds] == ["sub/c.png", "a.png", "d.png", "b.png"]
    assert ds.has_patients and ds.has_sources


def test_manifest_without_optional_columns(tmp_path):
    make_tree(tmp_path, ["x/1.png", "x/2.png"])
    ds = discover(write_csv(tmp_path / "m.csv", [["label", "path"], ["b", "x/1.png"], ["a", "x/2.png"]]))
    assert [(item.relpath, item.label, item.split) for item in ds] == [("x/2.png", "a", "train"), ("x/1.png", "b", "train")]
    assert not ds.has_patients


def test_folder_manifest_annotates_items(tmp_path):
    root = make_tree(tmp_path / "data", ["train/covid/a.png", "train/normal/b.png", "test/covid/c.png"])
    write_csv(root / "manifest.csv", [
        ["path", "label", "split", "patient_id", "source"],
        ["train/covid/a.png", "covid", "train", "P1", "phantom-a"],
        ["test/covid/c.png", "covid", "test", "P1", ""],
        ["train/covid/not-there.png", "covid", "train", "P9", "x"],
    ])
    ds = discover(root)
    assert ds.layout == "split-folders"  # the manifest annotates, it does not define the dataset
    got = {item.relpath: (item.patient_id, item.source) for item in ds}
    assert got == {"train/covid/a.png": ("P1", "phantom-a"), "train/normal/b.png": (None, None),
                   "test/covid/c.png": ("P1", None)}


@pytest.mark.parametrize("header", [
    ["relpath", "bytes", "sha256", "split", "label"],  # the real sample's kind of manifest
    ["path", "label", "split"],  # no patient_id/source: nothing to annotate
])
def test_folder_manifest_with_other_columns_is_ignored(tmp_path, header):
    root = make_tree(tmp_path / "data", ["covid/a.png", "normal/b.png"])
    write_csv(root / "manifest.csv", [header, ["covid/a.png"] + ["x"] * (len(header) - 1)])
    ds = discover(root)
    assert ds.layout == "class-folders" and len(ds) == 2 and not ds.has_patients


def test_garbage_folder_manifest_is_ignored(tmp_path):
    root = make_tree(tmp_path / "data", ["covid/a.png"])
    (root / "manifest.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert len(discover(root)) == 1


# ---------------------------------------------------------------- order, classes, labels

def test_classes_sorted_like_keras_and_stable_order(tmp_path):
    root = make_tree(tmp_path / "data", ["covid/z.png", "covid/a.png", "Normal/m.png", "b/q.png"])
    ds = discover(root)
    assert ds.classes == tuple(sorted(["covid", "Normal", "b"])) == ("Normal", "b", "covid")
    assert [item.relpath for item in ds] == ["Normal/m.png", "b/q.png", "covid/a.png", "covid/z.png"]
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [0, 1, 2, 2]
    assert discover(root) == ds


def test_dataset_views(tmp_path):
    ds = discover(make_tree(tmp_path, SPLIT_TREE))
    test = ds.subset("test")
    assert test.classes == ds.classes and test.layout == ds.layout and test.root == ds.root
    assert [item.relpath for item in test] == ["test/covid/g.png", "test/normal/f.png"]
    assert test.splits == ("test",)
    assert len(ds.subset("val")) == 2
    assert ds.hashes == [item.sha256 for item in ds.items]
    assert ds.paths == [item.path for item in ds.items]
    with pytest.raises(DatasetError, match="unknown split 'validation'"):
        ds.subset("validation")


def test_select_classes(tmp_path):
    tree = [f"{split}/{name}/{i}.png" for split in ("train", "test")
            for name in ("covid", "normal", "pneumonia_bac", "pneumonia_vir") for i in range(2)]
    ds = discover(make_tree(tmp_path, tree))
    assert ds.classes == ("covid", "normal", "pneumonia_bac", "pneumonia_vir")
    two = ds.select_classes(["pneumonia_vir", "normal"])
    assert two.classes == ("normal", "pneumonia_vir")
    assert len(two) == 8
    assert two.labels.tolist() == [0, 0, 1, 1] * 2
    assert {item.label for item in two} == {"normal", "pneumonia_vir"}
    assert ds.select_classes("covid").classes == ("covid",)
    with pytest.raises(DatasetError) as info:
        ds.select_classes(["covid", "Covid", "flu"])
    message = str(info.value)
    assert "'Covid', 'flu'" in message and "available: covid, normal, pneumonia_bac, pneumonia_vir" in message
    with pytest.raises(DatasetError, match="at least one class"):
        ds.select_classes([])


def test_discover_classes_filter_hashes_only_kept_classes(tmp_path, count_hashing):
    root = make_tree(tmp_path, ["train/covid/a.png", "train/normal/b.png", "train/flu/c.png", "test/flu/d.png"])
    (root / "train" / "flu" / "notes.txt").write_text("not checked: flu is not selected")
    ds = discover(root, classes=["normal", "covid"])
    assert ds.classes == ("covid", "normal")
    assert [item.relpath for item in ds] == ["train/covid/a.png", "train/normal/b.png"]
    assert sorted(Path(p).name for p in count_hashing) == ["a.png", "b.png"]
    with pytest.raises(DatasetError, match=r"unknown class 'cat'; available: covid, flu, normal"):
        discover(root, classes=["cat"])
    manifest = write_csv(tmp_path / "m.csv", [["path", "label"], ["train/covid/a.png", "covid"], ["train/flu/c.png", "flu"]])
    assert discover(manifest, classes=["flu"]).hashes == [sha256(root / "train/flu/c.png")]


# ---------------------------------------------------------------- hashing and the hash cache

def test_sha256_and_sizes(tmp_path):
    ds = discover(make_tree(tmp_path, SPLIT_TREE))
    for item in ds:
        assert item.sha256 == sha256(item.path)
        assert item.nbytes == item.path.stat().st_size


def test_sha256_of_file_larger_than_a_read_buffer(tmp_path):
    big = tmp_path / "covid" / "big.png"
    big.parent.mkdir()
    big.write_bytes(os.urandom((3 << 20) + 123))
    assert discover(tmp_path).items[0].sha256 == sha256(big)


def test_thread_pool_hashing_matches(tmp_path, monkeypatch, count_hashing):
    root = make_tree(tmp_path, [f"c{i % 3}/{i}.png" for i in range(40)])
    monkeypatch.setattr(filehashes, "_THREADS_FROM_BYTES", 0)
    ds = discover(root)
    assert len(count_hashing) == 40
    assert ds.hashes == [sha256(item.path) for item in ds]


def test_hash_cache_reuses_unchanged_files(tmp_path, count_hashing):
    root = make_tree(tmp_path / "data", SPLIT_TREE)
    cache_file = tmp_path / "cache" / "file-hashes.json"  # the folder does not exist yet
    first = discover(root, hash_cache=cache_file)
    assert len(count_hashing) == len(SPLIT_TREE)
    entries = json.loads(cache_file.read_text())
    item = first.items[0]
    st = item.path.stat()
    assert entries[str(item.path)] == [st.st_size, st.st_mtime_ns, st.st_ino, item.sha256]

    count_hashing.clear()
    saved = cache_file.stat().st_mtime_ns
    os.utime(cache_file, ns=(saved - 10**9, saved - 10**9))
    second = discover(root, hash_cache=str(cache_file))
    assert count_hashing == []
    assert second == first
    assert cache_file.stat().st_mtime_ns == saved - 10**9  # nothing changed, so not rewritten
    assert [p.name for p in cache_file.parent.iterdir()] == ["file-hashes.json"]  # no temp files left


@pytest.mark.parametrize("change", ["touch", "rewrite-bigger", "replace-same-size-same-mtime"])
def test_hash_cache_rehashes_changed_files(tmp_path, count_hashing, change):
    root = make_tree(tmp_path / "data", CLASS_TREE)
    cache_file = tmp_path / "file-hashes.json"
    discover(root, hash_cache=cache_file)
    target = root / "covid" / "b.png"
    st = target.stat()
    if change == "touch":
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    elif change == "rewrite-bigger":
        png(target, size=(9, 9))
    else:  # same size and mtime, but a new file (new inode) with other bytes
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        fresh = root / "covid" / "b.tmp"
        fresh.write_bytes(bytes(data))
        os.utime(fresh, ns=(st.st_atime_ns, st.st_mtime_ns))
        keep_inode_busy = root.parent / "old-b"
        os.link(target, keep_inode_busy)  # keep the old inode alive so it cannot be reused
        os.replace(fresh, target)
    count_hashing.clear()
    ds = discover(root, hash_cache=cache_file)
    assert [Path(p).name for p in count_hashing] == ["b.png"]
    assert ds.hashes == [sha256(item.path) for item in ds]
    entries = json.loads(cache_file.read_text())
    assert entries[str(target.absolute())][3] == sha256(target)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2, 3]", b'{"/x": "nonsense"}', b"\xff\xfe", b""])
def test_corrupt_hash_cache_is_ignored(tmp_path, count_hashing, content):
    root = make_tree(tmp_path / "data", CLASS_TREE)
    cache_file = tmp_path / "file-hashes.json"
    cache_file.write_bytes(content)
    ds = discover(root, hash_cache=cache_file)
    assert len(count_hashing) == 3
    assert ds.hashes == [sha256(item.path) for item in ds]
    assert len(json.loads(cache_file.read_text())) >= 3  # rewritten as a valid cache


def test_hash_cache_keeps_other_datasets_entries(tmp_path):
    cache_file = tmp_path / "file-hashes.json"
    discover(make_tree(tmp_path / "one", ["covid/a.png"]), hash_cache=cache_file)
    discover(make_tree(tmp_path / "two", ["covid/b.png"]), hash_cache=cache_file)
    assert sorted(Path(key).name for key in json.loads(cache_file.read_text())) == ["a.png", "b.png"]


# ---------------------------------------------------------------- errors

def _setup_error_case(root: Path, case: str) -> tuple[Path, str]:
    """Build a broken dataset under root; return (what to pass to discover, the offending path)."""
    data = root / "DATA"
    if case == "non-image":
        make_tree(data, ["train/covid/a.png"])
        (data / "train/covid/notes.txt").write_text("hi")
        return data, str(data / "train/covid/notes.txt")
    if case == "zero-bytes":
        make_tree(data, ["covid/a.png"])
        (data / "covid/empty.png").write_bytes(b"")
        return data, str(data / "covid/empty.png")
    if case == "missing":
        return data, str(data)
    if case == "empty-class":
        make_tree(data, ["covid/a.png"])
        (data / "normal").mkdir()
        return data, str(data / "normal")
    if case == "nested":
        make_tree(data, ["train/covid/a.png", "train/covid/deeper/b.png"])
        return data, str(data / "train/covid/deeper")
    if case == "no-classes":
        data.mkdir()
        (data / "README.md").write_text("nothing here")
        return data, str(data)
    if case == "mixed-splits":
        make_tree(data, ["train/covid/a.png", "validation/covid/b.png"])
        return data, str(data)
    if case == "empty-split":
        make_tree(data, ["train/covid/a.png"])
        (data / "test").mkdir()
        return data, str(data / "test")
    if case == "image-at-root":
        make_tree(data, ["covid/a.png", "stray.png"])
        return data, str(data / "stray.png")
    if case == "image-in-split":
        make_tree(data, ["train/covid/a.png", "train/stray.jpg"])
        return data, str(data / "train/stray.jpg")
    if case == "not-csv":
        data.parent.mkdir(parents=True, exist_ok=True)
        (root / "data.txt").write_text("x")
        return root / "data.txt", str(root / "data.txt")
    if case == "broken-link":
        make_tree(data, ["covid/a.png"])
        (data / "covid/gone.png").symlink_to(root / "nowhere.png")
        return data, str(data / "covid/gone.png")
    make_tree(root, ["imgs/a.png"])
    csv_path = root / "m.csv"
    rows = {
        "csv-columns": [["relpath", "class"], ["imgs/a.png", "covid"]],
        "csv-missing-files": [["path", "label"]] + [[f"imgs/missing{i}.png", "covid"] for i in range(7)],
        "csv-split": [["path", "label", "split"], ["imgs/a.png", "covid", "validation"]],
        "csv-empty": [],
        "csv-header-only": [["path", "label"]],
        "csv-twice": [["path", "label"], ["imgs/a.png", "covid"], ["./imgs/a.png", "normal"]],
        "csv-no-label": [["path", "label"], ["imgs/a.png", " "]],
        "csv-non-image": [["path", "label"], ["imgs/a.txt", "covid"]],
    }[case]
    write_csv(csv_path, rows)
    return csv_path, str(csv_path)


ERROR_CASES = {
    # case: fragments the message must contain (besides the offending path)
    "non-image": ["not an image (allowed: .dcm, .dicom, .jpeg, .jpg, .png); move it out of the class folder"],
    "zero-bytes": ["is empty (0 bytes): remove or replace it"],
    "missing": ["no such folder or CSV file"],
    "empty-class": ["class folder is empty"],
    "nested": ["nested folder"],
    "no-classes": ["no classes found"],
    "mixed-splits": ["found: train, validation", "train, val, test"],
    "empty-split": ["no class folders"],
    "image-at-root": ["has no class"],
    "image-in-split": ["has no class"],
    "not-csv": ["neither a folder nor a .csv"],
    "broken-link": ["not a regular file"],
    "csv-columns": ["lacks columns path, label", "found: relpath, class"],
    "csv-missing-files": ["7 listed files do not exist", "imgs/missing0.png", "imgs/missing4.png", "and 2 more"],
    "csv-split": ["unknown split value 'validation' (line 2)", "allowed: train, val, test"],
    "csv-empty": ["manifest is empty"],
    "csv-header-only": ["no rows"],
    "csv-twice": ["listed twice (lines 2 and 3)"],
    "csv-no-label": ["line 2", "empty label"],
    "csv-non-image": ["not an image"],
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_name_the_path_on_one_line(tmp_path, case):
    data, offending = _setup_error_case(tmp_path, case)
    with pytest.raises(DatasetError) as info:
        discover(data)
    message = str(info.value)
    assert offending in message
    assert "\n" not in message and "\r" not in message
    for fragment in ERROR_CASES[case]:
        assert fragment in message


@pytest.mark.parametrize("tree, fragment", [
    (["training/covid/a.png", "testing/covid/b.png"], "name the split folders train, val, test"),
    (["all/train/covid/a.png"], "is the dataset, pass it as DATA"),
])
def test_nested_folder_hints(tmp_path, tree, fragment):
    with pytest.raises(DatasetError, match=fragment):
        discover(make_tree(tmp_path, tree))


def test_missing_files_error_lists_a_few_only(tmp_path):
    data, _ = _setup_error_case(tmp_path, "csv-missing-files")
    with pytest.raises(DatasetError) as info:
        discover(data)
    assert "imgs/missing5.png" not in str(info.value)


def test_newline_in_file_name_stays_on_one_line(tmp_path):
    make_tree(tmp_path, ["covid/a.png"])
    (tmp_path / "covid" / "bad\nname.txt").write_text("x")
    with pytest.raises(DatasetError) as info:
        discover(tmp_path)
    assert "\n" not in str(info.value) and "bad\\nname.txt" in str(info.value)


# ---------------------------------------------------------------- a large manifest, read column by column

def _outcome(manifest, **kwargs):
    """discover()'s dataset, or the text of its refusal."""
    try:
        return discover(manifest, **kwargs)
    except DatasetError as error:
        return f"refused: {error}"


def _readings(manifest, monkeypatch, **kwargs):
    """discover(manifest) read column by column by pyarrow, then row by row (pyarrow absent; a small manifest).

    Returns the outcomes and, for the first, whether the column reading gave the dataset.
    """
    from xrayfeat.data import datasets

    answered = []
    quick = datasets._quick_manifest
    monkeypatch.setattr(datasets, "_quick_manifest", lambda *a, **k: answered.append(quick(*a, **k)) or answered[-1])
    monkeypatch.setattr(datasets, "_COLUMNS_FROM_BYTES", 0)  # every manifest counts as large
    by_columns = _outcome(manifest, **kwargs)
    with monkeypatch.context() as without:
        without.setitem(sys.modules, "pyarrow", None)  # as where the parquet extra is not installed
        without_pyarrow = _outcome(manifest, **kwargs)
    monkeypatch.setattr(datasets, "_COLUMNS_FROM_BYTES", 1 << 60)
    by_rows = _outcome(manifest, **kwargs)
    return [by_columns, without_pyarrow, by_rows], bool(answered) and answered[0] is not None


def _large_manifest_data(root: Path) -> None:
    """Images in folders (33 in one folder, so that it is listed), a linked file and a linked folder inside."""
    make_tree(root, [f"p{i:02d}/s1/v.png" for i in range(33)] + ["a,b.png", "sub/c.png", "d.png", "-2+3.png", ".h.PNG"])
    os.symlink(root / "d.png", root / "link.png")
    os.symlink(root / "p00", root / "p_link")


@pytest.mark.parametrize("case", ["label", "labels", "findings", "findings-classes", "label-classes", "70-findings"])
def test_column_reading_gives_the_row_readings_dataset(tmp_path, monkeypatch, case):
    _large_manifest_data(tmp_path)
    many = [f"p{i:02d}/s1/v.png" for i in range(33)]
    if case.startswith("label-") or case == "label":
        rows = [["Path", "label", "split", "patient_id", "source", "notes"],
                ["a,b.png", "normal", "train", "p1", "hospA", "x"], ["sub/c.png", " covid", "", "", "", "no split"],
                ["./d.png", "'=covid", " TEST ", "p2", "'-hospB", ""], ["link.png", "covid", "val", "p2", "", ""],
                ["'-2+3.png", "normal", "test", "p3", "", ""], ["p_link/s1/v.png", "normal", "test", "p0", "", ""],
                [".h.PNG", "normal", "train", "p4", "", ""]]
        rows += [[path, "covid" if i % 3 else "normal", "train", f"p{i % 7}", "", ""] for i, path in enumerate(many)]
        if case == "label-classes":  # an empty file of a class not asked for is not read
            (tmp_path / "empty.png").write_bytes(b"")
            rows.append(["empty.png", "covid", "", "", "", ""])
    elif case == "labels":
        rows = [["path", "labels", "split", "group:sex"], ["a,b.png", "B|A", "train", "F"], ["sub//c.png", "", "test", ""],
                ["d.png", "C| A |C", "val", "M"], ["link.png", "A", "", "M"]]
        rows += [[path, "|".join("ABC"[: i % 4]), "train", "FM"[i % 2]] for i, path in enumerate(many)]
    elif case == "70-findings":  # more combinations than one int64 numbers, and labels named per combination
        rows = [["path"] + [f"F{j}" for j in range(70)]]
        rows += [[path] + ["1" if (i + j) % 3 == 0 else "-1" if (i * j) % 5 == 1 else "" for j in range(70)]
                 for i, path in enumerate(["a,b.png", "sub/c.png", "d.png"] + many)]
    else:
        cells = ["1", "0", "-1", "", "1.0", " 0.0 ", "-1.0"]
        rows = [["path", "No Finding", "Edema", "Effusion", "patient_id", "group:Sex", "group:age", "group:view"],
                ["a,b.png", "1", "", "0", "p1", "F", "20-40", "PA"], ["sub/c.png", "", "-1", "1.0", "p1", "F", "", "AP"],
                ["d.png", "0", "1", "1", "p2", "M", "80+", "Lateral"], ["link.png", "", "", "", "p3", "", "", ""]]
        rows += [[path, cells[i % 7], cells[i * 3 % 7], cells[i * 5 % 7], f"p{i % 5}", "FM"[i % 2], "40-60", "PA"]
                 for i, path in enumerate(many)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    kwargs = {"classes": ["Edema", "No Finding"]} if case == "findings-classes" else {}
    kwargs = {"classes": "normal"} if case == "label-classes" else kwargs
    outcomes, by_columns = _readings(manifest, monkeypatch, hash_cache=tmp_path / "hashes.json", **kwargs)
    assert by_columns, "the column reading left this clean manifest to the row reading"
    assert not isinstance(outcomes[0], str), outcomes[0]
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert len(outcomes[0]) == len(rows) - 1 - (sum(row[1] != "normal" for row in rows[1:]) if case == "label-classes" else 0)
    again, _ = _readings(manifest, monkeypatch, hash_cache=tmp_path / "hashes.json", **kwargs)  # the hashes cached
    assert again == outcomes


BAD_LARGE_MANIFESTS = {  # case: (the rows after a good one, or the file's bytes; what the refusal says)
    "missing-file": ([["nowhere.png", "1"]], "listed file does not exist"),
    "finding-value": ([["sub/c.png", "2"]], "column 'Edema' holds '2'"),
    "listed-twice": ([["./d.png", "1"]], "listed twice (lines 2 and 36)"),
    "leaves-folder": ([["../x.png", "1"]], "leaves the manifest's folder"),
    "link-out": ([["out/s1/v.png", "1"]], "through a symbolic link"),
    "not-image": ([["notes.txt", "1"]], "not an image"),
    "no-suffix": ([["README", "1"]], "not an image"),
    "empty-file": ([["empty.png", "1"]], "is empty (0 bytes)"),
    "empty-path": ([["", "1"]], "line 36 has an empty path"),
    "blank-row": ([["", ""], ["sub/c.png", "0"]], None),  # skipped, as the row reading skips it
    "bad-header": (b"path,Edema,Edema\nd.png,1\n", "has the column 'edema' twice"),
    "not-utf8": (b"path,Edema\nd.png,1\n\xff.png,0\n", "not UTF-8 text"),
    "ragged": (b"path,Edema\nd.png,1,extra\nsub/c.png\n", None),
    # the classes asked for are checked once every file is found, and before any is read
    "missing-file, unknown class": ([["nowhere.png", "1"]], "listed file does not exist"),
    "empty-file, unknown class": ([["empty.png", "1"]], "unknown class 'Nope'"),
}


@pytest.mark.parametrize("case", sorted(BAD_LARGE_MANIFESTS))
def test_column_reading_leaves_problems_to_the_row_reading(tmp_path, monkeypatch, case):
    _large_manifest_data(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    make_tree(tmp_path.parent / f"{tmp_path.name}-outside", ["s1/v.png"])
    os.symlink(tmp_path.parent / f"{tmp_path.name}-outside", tmp_path / "out")  # beside 33 folders: the folder is listed
    rows, fragment = BAD_LARGE_MANIFESTS[case]
    manifest = tmp_path / "m.csv"
    if isinstance(rows, bytes):
        manifest.write_bytes(rows)
    else:
        write_csv(manifest, [["path", "Edema"], ["d.png", "1"]] + [[f"p{i:02d}/s1/v.png", "0"] for i in range(33)] + rows)
    outcomes, by_columns = _readings(manifest, monkeypatch, **({"classes": ["Nope"]} if "class" in case else {}))
    assert not by_columns
    assert outcomes[0] == outcomes[1] == outcomes[2]
    if fragment is not None:
        assert isinstance(outcomes[0], str) and fragment in outcomes[0], outcomes[0]
    else:
        assert not isinstance(outcomes[0], str), outcomes[0]
    skipped, _ = _readings(manifest, monkeypatch, on_error="skip")
    assert skipped[0] == skipped[1] == skipped[2]


# ---------------------------------------------------------------- summarize

def test_summarize(tmp_path):
    root = tmp_path / "data"
    png(root / "train/covid/a.png", size=(10, 20), mode="RGB")
    png(root / "train/normal/b.png", size=(30, 7))
    png(root / "test/normal/c.png", size=(12, 12))
    (root / "test/covid").mkdir()
    shutil.copyfile(root / "train/covid/a.png", root / "test/covid/dup-of-a.png")
    shutil.copyfile(root / "train/normal/b.png", root / "train/normal/dup-of-b.png")
    (root / "test/covid/broken.png").write_bytes(b"this is not a PNG")
    write_csv(root / "manifest.csv", [
        ["path", "label", "split", "patient_id"],
        ["train/covid/a.png", "covid", "train", "P1"],
        ["test/covid/dup-of-a.png", "covid", "test", "P1"],
        ["train/normal/b.png", "normal", "train", "P2"],
        ["train/normal/dup-of-b.png", "normal", "train", "P2"],
        ["test/normal/c.png", "normal", "test", "P3"],
    ])
    ds = discover(root)
    summary = summarize(ds)
    json.dumps(summary)  # serialisable as is
    assert summary["root"] == str(root.absolute())
    assert summary["layout"] == "split-folders"
    assert summary["classes"] == ["covid", "normal"]
    assert summary["images"] == 6
    assert summary["counts"] == {"train": {"covid": 1, "normal": 2}, "test": {"covid": 2, "normal": 1}}
    assert summary["bytes"] == sum(p.stat().st_size for p in root.rglob("*.png"))
    assert summary["formats"] == {"PNG": 5}
    assert summary["modes"] == {"L": 3, "RGB": 2}
    assert summary["width"] == [10, 30] and summary["height"] == [7, 20]
    duplicates = sorted(summary["duplicates"], key=lambda d: d["paths"])
    assert duplicates == [
        {"sha256": sha256(root / "train/covid/a.png"), "paths": ["train/covid/a.png", "test/covid/dup-of-a.png"],
         "splits": ["train", "test"], "labels": ["covid"], "cross_split": True},
        {"sha256": sha256(root / "train/normal/b.png"), "paths": ["train/normal/b.png", "train/normal/dup-of-b.png"],
         "splits": ["train"], "labels": ["normal"], "cross_split": False},
    ]
    assert summary["patients_in_several_splits"] == [{"patient_id": "P1", "splits": ["train", "test"]}]
    assert [entry["path"] for entry in summary["unreadable"]] == ["test/covid/broken.png"]
    assert summary["unreadable"][0]["reason"]


def test_summarize_without_probing(tmp_path, monkeypatch):
    import xrayfeat.data.images

    def boom(path):
        raise AssertionError("probe must not be called")

    monkeypatch.setattr(xrayfeat.data.images, "probe", boom)
    summary = summarize(discover(make_tree(tmp_path, CLASS_TREE)), probe_images=False)
    json.dumps(summary)
    assert summary["counts"] == {"train": {"covid": 2, "normal": 1}}
    assert summary["formats"] == {} and summary["width"] is None and summary["unreadable"] == []
    assert summary["duplicates"] == [] and summary["patients_in_several_splits"] == []


def test_summarize_empty_view(tmp_path):
    ds = discover(make_tree(tmp_path, CLASS_TREE)).subset("test")
    summary = summarize(ds)
    assert summary["images"] == 0 and summary["counts"] == {} and summary["width"] is None


# ---------------------------------------------------------------- the real sample

REAL = Path(__file__).resolve().parents[1].parent / "shared/data/cxr-sample/all"


@pytest.mark.realdata
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real X-ray sample not found at {REAL}")
def test_real_sample(tmp_path):
    ds = discover(REAL, hash_cache=tmp_path / "file-hashes.json")
    assert ds.layout == "split-folders"
    assert ds.classes == ("covid", "normal", "pneumonia_bac", "pneumonia_vir")
    assert ds.splits == ("train", "test")
    for split, per_class in (("train", 40), ("test", 31)):
        part = ds.subset(split)
        assert len(part) == 4 * per_class
        assert np.bincount(part.labels).tolist() == [per_class] * 4
    with open(REAL.parent / "manifest.csv", newline="") as handle:
        expected = {row["relpath"]: row["sha256"] for row in csv.DictReader(handle)}
    assert {f"{REAL.name}/{item.relpath}": item.sha256 for item in ds} == expected
    assert discover(REAL, hash_cache=tmp_path / "file-hashes.json") == ds  # from the cache
    summary = summarize(ds)
    assert summary["duplicates"] == []
    assert summary["unreadable"] == []
    assert summary["images"] == 284
    two = ds.select_classes(["normal", "covid"])
    assert two.classes == ("covid", "normal") and len(two) == 142


def test_an_item_keeps_its_path_as_text_and_replace_keeps_it():
    """Discovery builds no Path per image (Item.file); Item.path makes one, and dataclasses.replace carries the file."""
    import inspect
    from dataclasses import fields, replace

    parameters = [p for p in inspect.signature(Item).parameters if p != "file"]  # Item() sets its fields in this order
    assert ["file", *parameters[1:]] == [f.name for f in fields(Item)] and parameters[0] == "path"
    item = Item(Path("/x/a.png"), "a.png", "covid", "train", "p1", None, "0" * 64, 3)
    assert item.file == "/x/a.png" and item.path == Path("/x/a.png")
    moved = replace(item, split="val")
    assert (moved.split, moved.file, moved.relpath, moved.patient_id) == ("val", "/x/a.png", "a.png", "p1")
    assert item == Item(path="/x/a.png", relpath="a.png", label="covid", split="train", patient_id="p1", source=None,
                        sha256="0" * 64, nbytes=3)
    with pytest.raises(TypeError, match="sha256"):
        Item("/x/a.png", "a.png", "covid", "train")
