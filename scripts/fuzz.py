#!/usr/bin/env python
"""Fuzz the image reader, the manifest parser and the run record for a fixed time; only xrayfeat's own errors may escape.

    python scripts/fuzz.py --target images --seconds 600
    python scripts/fuzz.py --target manifest --seconds 600 --seed 7 --cli-every 50
    python scripts/fuzz.py --target records --seconds 600 --run runs/my-run --cli-every 25
    python scripts/fuzz.py --target images --replay fuzz-failures/images-0123456789ab.bin

Hypothesis draws every case, so a failure is shrunk to a small input before it
is reported:

* ``images`` — small valid PNG (8- and 16-bit, gray, RGB, RGBA, palette), JPEG
  (gray, RGB, progressive, CMYK, EXIF-rotated) and DICOM files, mutated (bytes
  flipped, overwritten with boundary integers, inserted, deleted, truncated,
  spliced; PNG chunk CRCs optionally recomputed so the damage reaches the
  decoder), or plain random bytes; each goes through :func:`xrayfeat.data.images.probe`,
  :func:`~xrayfeat.data.images.read_image` and :func:`~xrayfeat.data.images.read_gray`.
* ``manifest`` — CSV text built from plausible and hostile headers and cells
  (real, missing, absolute, parent and folder paths; odd labels and splits;
  quotes, newlines, NUL), in UTF-8, UTF-8 with BOM or another encoding, then
  byte-mutated; each goes through :func:`xrayfeat.data.datasets.discover` (as a CSV
  manifest and as a folder's ``manifest.csv``) and
  :func:`~xrayfeat.data.datasets.gather_images`; with ``--cli-every N`` every Nth case also
  goes through ``xrayfeat inspect`` in a subprocess.
* ``records`` — a run folder (``--run``, or a small synthetic one written with xrayfeat's own
  writers) whose ``config.json``, ``metrics.json`` or ``predictions.csv``, or whose export's
  ``export.json``, is mutated: fields dropped, added and retyped (strings of digits, booleans,
  null, containers, huge and non-finite numbers), the schema version flipped, classes swapped,
  duplicated, added and renamed, keys written twice, values nested thousands deep, the text
  truncated or byte-mutated; the changed file's sha256 is optionally recorded again in
  ``config.json`` so that the damage reaches the schema rather than the checksum. Each goes through
  :func:`xrayfeat.load_run` and every framework-free reader of the run (metrics, summary, history,
  predictions, splits, the head's arrays, the baselines, the feature options, the report) and
  :func:`xrayfeat.runs.export.read_export`; with ``--cli-every N`` every Nth case also through
  ``xrayfeat report`` in a subprocess, which must exit 0, or 2 with one ``xrayfeat: error:`` line.

A case passes when the call returns or raises an
:class:`~xrayfeat.errors.XrayfeatError`; any other exception is a failure: its
input is saved under ``--out`` and a ``--replay`` command is printed. Hypothesis
runs in batches of ``--batch`` cases with seeds ``--seed``, ``--seed``+1, …,
until ``--seconds`` have passed. The pixel limit is lowered to ``--max-pixels``
and the address space to ``--max-memory-mb`` so that a mutated header cannot
take the shared machine's memory (a MemoryError is reported as a failure).
The last line holds the figures as key=value.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import re
import resource
import sys
import tempfile
import time
import traceback
import json
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

TARGETS = ("images", "manifest", "records")
# boundary values a header field is worth trying
_INTEGERS = (0, 1, 2, 7, 8, 15, 16, 255, 256, 32767, 65535, 65536, 2**31 - 1, 2**32 - 1)


# ---------------------------------------------------------------------- mutation


def _mutation_strategy():
    """(kind, position, payload) triples, applied in order by :func:`_mutate`."""
    from hypothesis import strategies as st

    kinds = st.sampled_from(("flip", "integer", "insert", "delete", "truncate", "splice", "overwrite"))
    return st.tuples(kinds, st.integers(0, 1 << 16), st.binary(max_size=24))


def _mutate(data: bytes, mutations) -> bytes:
    """Apply (kind, position, payload) mutations; positions wrap around the current length."""
    buf = bytearray(data)
    for kind, position, payload in mutations:
        at = position % (len(buf) + 1)
        if kind == "flip" and buf:
            at %= len(buf)
            buf[at] ^= 1 << (position % 8)
        elif kind == "integer":
            value = _INTEGERS[position % len(_INTEGERS)]
            width = (1, 2, 4)[position % 3]
            order = "big" if position % 2 else "little"
            buf[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, order)
        elif kind == "insert":
            buf[at:at] = payload
        elif kind == "delete":
            del buf[at : at + 1 + len(payload)]
        elif kind == "truncate":
            del buf[at:]
        elif kind == "splice":
            buf[at:] = buf[: len(buf) - at]  # the file's own head pasted over its tail
        elif kind == "overwrite":
            buf[at : at + len(payload)] = payload
    return bytes(buf)


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every PNG chunk's CRC, so the damage gets past PIL's checksum test to the decoder."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, at = bytearray(data[:8]), 8
    while at + 8 <= len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        end = at + 8 + length
        if end + 4 > len(data):
            break
        out += data[at:end] + zlib.crc32(data[at + 4 : end]).to_bytes(4, "big")
        at = end + 4
    return bytes(out + data[at:])


# ---------------------------------------------------------------------- images


def _image_seeds() -> list[tuple[str, bytes]]:
    """(suffix, bytes) of small valid images of every kind the reader handles."""
    from PIL import Image

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (7, 9, 4), dtype=np.uint8)

    def encoded(im, fmt, **kw):
        out = io.BytesIO()
        im.save(out, fmt, **kw)
        return out.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    seeds = [
        (".png", encoded(Image.fromarray(gray), "PNG")),
        (".png", encoded(Image.fromarray(rgb), "PNG")),
        (".png", encoded(Image.fromarray(rgba), "PNG")),
        (".png", encoded(Image.fromarray(gray).convert("LA"), "PNG")),
        (".png", encoded(palette, "PNG", transparency=0)),
        (".png", encoded(Image.fromarray(gray.astype(np.uint16) * 257), "PNG")),
        (".jpg", encoded(Image.fromarray(gray), "JPEG", quality=90)),
        (".jpg", encoded(Image.fromarray(rgb), "JPEG", quality=90, progressive=True)),
        (".jpg", encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG")),
        (".jpg", encoded(Image.fromarray(rgb), "JPEG", exif=exif.tobytes())),
    ]
    seeds.extend(_dicom_seeds(gray))
    return seeds


def _dicom_seeds(gray: np.ndarray) -> list[tuple[str, bytes]]:
    """A MONOCHROME2 and a MONOCHROME1 DICOM (none when pydicom is absent)."""
    try:
        from pydicom.dataset import Dataset
        from pydicom.uid import SecondaryCaptureImageStorage
    except ImportError:
        return []
    seeds = []
    for photometric, pixels, bits in (("MONOCHROME2", gray.astype(np.uint16) * 16, 12), ("MONOCHROME1", gray, 8)):
        ds = Dataset()
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.set_pixel_data(pixels, photometric, bits)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        seeds.append((".dcm", out.getvalue()))
    return seeds


class _ImagesTarget:
    """Writes a case as an image file and reads it every way xrayfeat does."""

    name = "images"

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.seeds = _image_seeds()

    def strategy(self):
        from hypothesis import strategies as st

        mutated = st.builds(self._build, st.integers(0, len(self.seeds) - 1),
                            st.lists(_mutation_strategy(), max_size=6), st.booleans())
        raw = st.tuples(st.sampled_from((".png", ".jpg", ".dcm")), st.binary(max_size=400))
        return st.one_of(mutated, mutated, mutated, raw)

    def _build(self, seed: int, mutations, fix_crcs: bool) -> tuple[str, bytes]:
        suffix, data = self.seeds[seed]
        data = _mutate(data, mutations)
        return suffix, (_fix_png_crcs(data) if fix_crcs else data)

    def encode(self, case) -> bytes:
        suffix, data = case
        return suffix.encode() + b"\n" + data

    def decode(self, blob: bytes):
        suffix, data = blob.split(b"\n", 1)
        return suffix.decode(), data

    def run(self, case) -> list[str]:
        """'<reader>:ok' or '<reader>:refused' for each reader; any exception other than xrayfeat's propagates."""
        from xrayfeat.data import images

        suffix, data = case
        path = self.scratch / f"case{suffix}"
        path.write_bytes(data)  # a scratch input, rewritten for every case: no fsync wanted
        return [_outcome(name, read, path) for name, read in (
            ("probe", images.probe),
            ("read_image", lambda p: images.read_image(p, 16)),
            ("read_gray", lambda p: images.read_gray(p, 5)),
        )]


def _outcome(name: str, call, *args) -> str:
    """Call; '<name>:ok', or '<name>:refused' when it raises xrayfeat's own error (others propagate)."""
    from xrayfeat.errors import XrayfeatError

    try:
        call(*args)
    except XrayfeatError:
        return f"{name}:refused"
    return f"{name}:ok"


# ---------------------------------------------------------------------- manifest

_COLUMNS = ("path", "label", "split", "patient_id", "source")
_FILES = ("a.png", "b.jpg", "sub/c.png", "tree/a/x.png", "tree/b/y.png")
_EMPTY = "empty.png"
_FOLDER_NAMED_LIKE_AN_IMAGE = "d.png"


class _ManifestTarget:
    """Writes a case as a CSV manifest beside real images and parses it every way xrayfeat does."""

    name = "manifest"

    def __init__(self, scratch: Path, cli_every: int = 0):
        self.scratch = scratch
        self.cli = _CliSample(cli_every)
        png = _image_seeds()[0][1]
        for relpath in _FILES:
            (scratch / relpath).parent.mkdir(parents=True, exist_ok=True)
            (scratch / relpath).write_bytes(png + relpath.encode())  # distinct content, distinct hashes
        (scratch / _EMPTY).write_bytes(b"")
        (scratch / _FOLDER_NAMED_LIKE_AN_IMAGE).mkdir(exist_ok=True)

    def strategy(self):
        from hypothesis import strategies as st

        text = st.text(st.characters(codec="utf-8"), max_size=12)
        column = st.sampled_from((*_COLUMNS, " Path ", "LABEL", "", "extra"))
        valid_header = st.one_of(st.permutations(_COLUMNS[:2]), st.permutations(_COLUMNS[:3]), st.permutations(_COLUMNS))
        header = st.one_of(valid_header, valid_header, valid_header, st.lists(st.one_of(column, text), max_size=6))
        paths = st.sampled_from((*_FILES, "a/x.png", "./a.png", "sub\\c.png", "../a.png", "/nonexistent/z.png",
                                 _EMPTY, _FOLDER_NAMED_LIKE_AN_IMAGE, "missing.png", "notes.txt", "A.PNG", "a.png "))
        labels = st.sampled_from(("a", "b", " ", ""))
        splits = st.sampled_from(("train", "test", "val", "", "TEST", "bogus"))
        row = st.fixed_dictionaries({
            "path": st.one_of(paths, paths, paths, text), "label": st.one_of(labels, labels, labels, text),
            "split": st.one_of(splits, splits, text), "patient_id": text, "source": text,
        })
        body = st.lists(row, max_size=5)
        encodings = st.sampled_from(("utf-8",) * 6 + ("utf-8-sig", "utf-16", "latin-1"))
        mutations = st.one_of(st.just([]), st.just([]), st.lists(_mutation_strategy(), min_size=1, max_size=3))
        return st.builds(self._build, header, body, st.sampled_from((",",) * 4 + (";", "\t")), encodings, mutations)

    @staticmethod
    def _build(header, body, delimiter, encoding, mutations) -> bytes:
        """The CSV bytes: each row's cells in the header's column order (a blank for a column it lacks)."""
        text = io.StringIO()
        writer = csv.writer(text, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows([row.get(column.strip().lower(), "") for column in header] for row in body)
        return _mutate(text.getvalue().encode(encoding, errors="replace"), mutations)

    def encode(self, case) -> bytes:
        return case

    def decode(self, blob: bytes):
        return blob

    def run(self, case) -> list[str]:
        """'<parser>:ok' or '<parser>:refused' for each parser; other exceptions propagate."""
        from xrayfeat.data.datasets import MANIFEST_NAME, discover, gather_images

        manifest = self.scratch / "manifest-case.csv"
        manifest.write_bytes(case)  # scratch inputs, rewritten for every case: no fsync wanted
        (self.scratch / "tree" / MANIFEST_NAME).write_bytes(case)
        return [
            _outcome("discover_csv", discover, manifest),
            _outcome("discover_csv_class_a", lambda: discover(manifest, classes=["a"])),
            _outcome("discover_folder_manifest", discover, self.scratch / "tree"),
            _outcome("gather_images", gather_images, [manifest]),
            *self.cli.run("inspect", manifest),
        ]


# ---------------------------------------------------------------------- the command line, on a sample


class _CliSample:
    """Every ``every``-th case also runs ``xrayfeat ARGS`` in a subprocess: exit 0, or 2 with one error line."""

    def __init__(self, every: int):
        self.every = every
        self.seen = 0

    def run(self, *args) -> list[str]:
        self.seen += 1
        if not self.every or self.seen % self.every:
            return []
        import subprocess

        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run([sys.executable, "-m", "xrayfeat", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=600)
        lines = proc.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("xrayfeat: error: ")]
        if proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr:
            return [f"cli_{args[0]}:refused"]
        if proc.returncode == 0 and not errors:
            return [f"cli_{args[0]}:ok"]
        raise AssertionError(f"xrayfeat {args[0]} exited {proc.returncode} with stderr {proc.stderr[-600:]!r}")


# ---------------------------------------------------------------------- records

#: Values a field is worth retyping to: strings of numbers, booleans, null, containers, huge and odd numbers.
_VALUES = ("0.9", "2", "", "\n", "a\u0000b", True, False, None, [], {}, [1, 2], {"x": 1}, -1, 0, 1, 2**70, 1e308,
           0.5, -0.5, 3, "../../etc/passwd", "/abs/path", "\u202egnp.exe", "x" * 300)
#: What a schema version is worth flipping to (DELETE removes the key: the first layout).
_SCHEMAS = ("2", 3, 1, 0, -1, True, None, 2.0, "DELETE")
#: Mutations of a JSON record, applied in order by :meth:`_RecordsTarget.mutate_json`.
_JSON_OPS = ("drop", "add", "retype", "schema", "classes", "truncate", "bytes", "constant", "duplicate", "nest",
             "rename")


def _nodes(value, path=()):
    """Every (path, value) of a JSON value, the root first."""
    yield path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _nodes(child, (*path, key))


def _at(root, path):
    for key in path:
        root = root[key]
    return root


class _RecordsTarget:
    """Mutates one file of a sound run (or its export's record) and reads the run every way xrayfeat does."""

    name = "records"
    FILES = ("config.json", "metrics.json", "predictions.csv", "export.json")

    def __init__(self, scratch: Path, run: Path | None = None, cli_every: int = 0, report_every: int = 1):
        import shutil

        self.scratch = scratch
        self.base = scratch / "base"
        if run is None:
            _synthetic_run(self.base)
        else:
            shutil.copytree(run, self.base)
        self.case = scratch / "case"
        shutil.copytree(self.base, self.case)
        self.texts = {name: (self.base / name).read_bytes() for name in self.FILES[:3]}
        self.texts["export.json"] = json.dumps(_export_record(self.base), indent=2).encode()
        self.export = scratch / "export"
        self.export.mkdir()
        (self.export / "model.keras").write_bytes(b"not read")
        self.cli = _CliSample(cli_every)
        self.report_every = report_every
        self.cases = 0
        self.dirty: set[str] = set()
        self.replay_args = f" --run {run}" if run is not None else ""  # a case is a change to this run

    def strategy(self):
        from hypothesis import strategies as st

        op = st.tuples(st.sampled_from(_JSON_OPS), st.integers(0, 1 << 20), st.sampled_from(_VALUES))
        return st.tuples(st.sampled_from(self.FILES), st.lists(op, min_size=1, max_size=4), st.booleans())

    def encode(self, case) -> bytes:
        return json.dumps(case).encode()

    def decode(self, blob: bytes):
        file, ops, rerecord = json.loads(blob)
        return file, [tuple(op) for op in ops], rerecord

    # .................................................................. mutations

    def mutate(self, file: str, ops) -> bytes:
        data = self.texts[file]
        if file.endswith(".csv"):
            return self.mutate_csv(data, ops)
        return self.mutate_json(data, ops)

    def mutate_json(self, data: bytes, ops) -> bytes:
        """Structure-aware changes while the text parses, then changes to the text itself."""
        value = json.loads(data)
        text = None
        for kind, position, payload in ops:
            if text is None and kind in ("drop", "add", "retype", "schema", "classes", "rename"):
                value = self._change(value, kind, position, payload)
                continue
            text = json.dumps(value, indent=2) if text is None else text
            text = self._change_text(text, kind, position, payload)
        return (json.dumps(value, indent=2) if text is None else text).encode("utf-8", "surrogatepass")

    def _change(self, value, kind, position, payload):
        import copy

        payload = copy.deepcopy(payload)  # Hypothesis hands out the same list or dict again
        nodes = list(_nodes(value))
        path, node = nodes[position % len(nodes)]
        if kind == "schema" and isinstance(value, dict):
            flip = _SCHEMAS[position % len(_SCHEMAS)]
            if flip == "DELETE":
                value.pop("schema", None)
            else:
                value["schema"] = flip
        elif kind == "classes":
            value = self._swap_classes(value, position)
        elif kind == "drop" and path:
            parent = _at(value, path[:-1])
            del parent[path[-1]]
        elif kind == "add" and isinstance(node, dict):
            node[f"extra{position % 7}"] = payload
        elif kind == "add" and isinstance(node, list):
            node.append(payload)
        elif kind == "rename" and path and isinstance(path[-1], str):
            parent = _at(value, path[:-1])
            parent[path[-1] + "_"] = parent.pop(path[-1])
        elif kind == "retype":
            if not path:
                return payload
            _at(value, path[:-1])[path[-1]] = payload
        return value

    @staticmethod
    def _swap_classes(value, position):
        """Classes reordered, duplicated, added, dropped or renamed wherever a record lists or keys them."""
        targets = [(p, n) for p, n in _nodes(value) if p and p[-1] in ("classes", "per_class", "roc_auc_per_class")]
        if not targets:
            return value
        path, node = targets[position % len(targets)]
        how = position % 5
        if isinstance(node, list) and node:
            node[:] = [node[::-1], node + node[:1], node + ["zebra"], node[1:], ["Zebra" if i == 0 else c for i, c in
                                                                              enumerate(node)]][how]
        elif isinstance(node, dict) and node:
            keys = list(node)
            if how == 0:
                node.pop(keys[0])
            elif how == 1:
                node["zebra"] = node[keys[0]]
            else:
                node[keys[0] + "x"] = node.pop(keys[0])
        return value

    @staticmethod
    def _change_text(text: str, kind, position, payload) -> str:
        at = position % (len(text) + 1)
        if kind == "truncate":
            return text[:at]
        if kind == "bytes":
            return _mutate(text.encode(), [("flip", position, b""), ("insert", position * 7, str(payload).encode())]
                           ).decode("utf-8", "replace")
        if kind == "constant":  # a number replaced by what JSON does not have
            numbers = list(re.finditer(r"(?<=: )-?\d[\d.e+-]*", text))
            if numbers:
                m = numbers[position % len(numbers)]
                return text[:m.start()] + ("NaN", "Infinity", "-Infinity", "1e999", "9" * 400)[position % 5] + text[m.end():]
        if kind == "duplicate":  # a key written twice in one object
            keys = list(re.finditer(r'\n(\s*)("[^"]+": [^\n]*?),?\n', text))
            if keys:
                m = keys[position % len(keys)]
                return text[:m.start()] + f"\n{m.group(1)}{m.group(2).rstrip(',')}," + text[m.start():]
        if kind == "nest":  # a value nested deeper than any parser's stack
            depth = (50, 70, 5000, 200000)[position % 4]
            return text.replace(": ", ": " + "[" * depth + "1" + "]" * depth, 1)
        return text

    @staticmethod
    def mutate_csv(data: bytes, ops) -> bytes:
        text = data.decode()
        header, _, body = text.partition("\n")
        columns = header.split(",")
        for kind, position, payload in ops:
            at = position % max(len(columns), 1)
            if kind in ("drop", "classes") and len(columns) > 1:
                del columns[at]
            elif kind in ("add", "duplicate"):
                columns.insert(at, columns[at] if kind == "duplicate" else f"head:{payload}")
            elif kind in ("retype", "rename"):
                columns[at] = str(payload)
            elif kind == "truncate":
                body = body[: position % (len(body) + 1)]
            else:
                body = _mutate(body.encode(), [("flip", position, b"")]).decode("utf-8", "replace")
        return (",".join(columns) + "\n" + body).encode("utf-8", "surrogatepass")

    # .................................................................. the readers

    def write(self, case) -> Path:
        """The case's run folder: every record file as in the sound run, then the mutated one."""
        from xrayfeat.fileio import file_digest

        file, ops, rerecord = case
        for name in self.dirty:  # the files the last case changed, as in the sound run
            (self.case / name).write_bytes(self.texts[name])
        self.dirty = set()
        data = self.mutate(file, ops)
        if file == "export.json":
            (self.export / "export.json").write_bytes(data)
            return self.case
        (self.case / file).write_bytes(data)
        self.dirty = {file, "config.json"} if rerecord else {file}
        if rerecord and file != "config.json":  # the damage reaches the schema, not only the sha256
            config = json.loads(self.texts["config.json"])
            for entry in config.get("artifacts", {}).values():
                if entry.get("file") == file:
                    entry["sha256"] = file_digest(self.case / file)
            (self.case / "config.json").write_text(json.dumps(config, indent=2))
        return self.case

    def run(self, case) -> list[str]:
        import shutil

        from xrayfeat.runs.export import read_export

        folder = self.write(case)
        self.cases += 1
        if case[0] == "export.json":
            return [_outcome("read_export", read_export, self.export)]
        found = [_outcome("load_run", _load_and_read, folder)]
        if self.report_every and self.cases % self.report_every == 0:
            from xrayfeat.report.writer import write_report

            out = self.scratch / "report"
            shutil.rmtree(out, ignore_errors=True)
            found.append(_outcome("report", write_report, [folder], out))
        found += self.cli.run("report", folder, "--out", self.scratch / "cli-report")
        shutil.rmtree(self.scratch / "cli-report", ignore_errors=True)
        return found


def _load_and_read(folder: Path) -> None:
    """:func:`xrayfeat.load_run`, then every reader of the run that needs no deep-learning framework."""
    import xrayfeat as xf

    run = xf.load_run(folder)
    run.metrics
    run.summary()
    run.history()
    run.predictions()
    run.record.split_hashes()
    run.head_arrays()
    for name in run.record.baseline_names:
        run.baseline(name)
    run.figures
    run.feature_options()
    repr(run)


def _export_record(run: Path) -> dict:
    """An ``export.json`` as :func:`xrayfeat.runs.export.export_run` would write it for ``run`` (no model is built)."""
    import xrayfeat as xf

    record = xf.load_run(run).record
    fingerprint = record.store["fingerprint"]
    size, k = fingerprint["image_size"], len(record.classes)
    return {
        "xrayfeat": xf.__version__, "created": record.created, "format": "keras", "model": "model.keras",
        "sha256": {"model.keras": "0" * 64}, "bytes": 8, "params": 1000, "input": f"uint8 RGB {size}x{size}",
        "input_name": "pixels", "input_shape": [None, size, size, 3], "input_dtype": "uint8", "image_size": size,
        "output": "class probabilities", "output_shape": [None, k], "classes": list(record.classes),
        "backbone": fingerprint["backbone"], "layer": fingerprint["layer"], "preprocess": fingerprint["preprocess"],
        "precision": fingerprint["precision"], "train_tail": False,
        "weights": {"kind": record.weights["kind"], "identity": record.weights["identity"], "path": None,
                    "random": record.weights["random"], "digest": "0" * 64},
        "run": {"path": str(run), "name": run.name, "created": record.created, "config_sha256": "0" * 64,
                "head_sha256": record.artifacts["head"].sha256, "store_fingerprint_id": None},
        "keras": "3", "backend": "tensorflow", "load": "keras.saving.load_model('model.keras', compile=False)",
    }


def _synthetic_run(folder: Path) -> None:
    """A small sound run written with xrayfeat's own writers and scores (no deep-learning framework)."""
    from dataclasses import asdict
    from types import SimpleNamespace

    from xrayfeat import __version__
    from xrayfeat.analysis.metrics import score
    from xrayfeat.fileio import write_json
    from xrayfeat.options.settings import FeatureOptions, HeadOptions
    from xrayfeat.runs import record as runs

    folder.mkdir(parents=True)
    classes = ["covid", "normal", "viral"]
    rng = np.random.default_rng(0)
    y = np.arange(12) % 3
    proba = rng.dirichlet(np.ones(3), 12)
    items = [SimpleNamespace(relpath=f"test/{classes[k]}/{i}.png", sha256=f"{i:064x}", patient_id=f"p{i // 2}",
                             source="site_a" if i % 2 else "site_b", label=classes[k]) for i, k in enumerate(y)]
    metrics = score(y, proba, classes, groups=[i.patient_id for i in items], sources=[i.source for i in items],
                    n_boot=20, thresholds={c: {"threshold": 0.4, "note": None} for c in classes},
                    threshold_rule="youden")
    write_json(folder / "metrics.json", {"head": metrics, "baselines": {}, "positive": None, "threshold_rule": "youden"})
    runs.write_predictions(folder / "predictions.csv", items, y, classes, {"head": proba})
    runs.write_history(folder / "history.csv", {"loss": [1.0, 0.5], "accuracy": [0.4, 0.6]}, [0.5, 0.1])
    runs.write_splits(folder / "splits.csv", [(item, "test") for item in items])
    arrays = {"bn_gamma": np.ones(4, np.float32), "bn_beta": np.zeros(4, np.float32), "bn_mean": np.zeros(4, np.float32),
              "bn_variance": np.ones(4, np.float32), "bn_epsilon": np.float32(1e-3),
              "hidden_kernel": np.ones((4, 2), np.float32), "hidden_bias": np.zeros(2, np.float32),
              "out_kernel": np.ones((2, 3), np.float32), "out_bias": np.zeros(3, np.float32),
              "activation": np.array("softmax")}
    np.savez(folder / "head.npz", **arrays)
    (folder / "head.keras").write_bytes(b"a head")
    fingerprint = {"backbone": "vgg16", "weights": "none:seed=0", "image_size": 32, "preprocess": "caffe",
                   "decode": "pil-draft-bilinear-v1", "layer": "block5_pool", "precision": "float32",
                   "store_dtype": "float16", "keras": "3", "backend": "tensorflow"}
    record = runs.RunRecord(
        xrayfeat=__version__, created="2026-12-01T00:00:00Z", data=str(folder.parent / "data"), task="3class",
        classes=classes, counts={"train": 24, "val": 6, "test": 12, "skipped": 0}, validation="val split",
        features=asdict(FeatureOptions("vgg16", weights="none", image_size=32)),
        head={**asdict(HeadOptions(epochs=2, baselines=())), "validation_steps": 5, "baselines": []},
        run={"device": "auto", "batch_size": 32, "cache_dir": str(folder.parent / "cache")},
        store={"path": str(folder.parent / "cache" / "store"), "fingerprint": fingerprint, "fingerprint_id": "0" * 16},
        weights={"kind": "none", "identity": "none:seed=0", "path": None, "random": True},
        params={"total": 30, "trainable": 22, "non_trainable": 8}, training={"n_classes": 3, "backend": "jax"},
        timings={"head_seconds": 1.0}, baselines={}, versions={"python": "3"},
        warnings=[runs.RANDOM_WEIGHTS_WARNING],
    )
    files = {"head": "head.keras", "head_arrays": "head.npz", "metrics": "metrics.json", "history": "history.csv",
             "predictions": "predictions.csv", "splits": "splits.csv"}
    record.artifacts = dict(runs.artifact(folder, name, file) for name, file in files.items())
    runs.write_record(record, folder)


# ---------------------------------------------------------------------- the loop


class _Fuzzer:
    """Runs Hypothesis batches against one target, counting outcomes and keeping failing inputs."""

    def __init__(self, target, out: Path):
        self.target = target
        self.out = out
        self.outcomes: Counter[str] = Counter()
        self.failures: dict[tuple, Path] = {}
        self._last_failure: tuple | None = None

    def check(self, case) -> None:
        self.outcomes["cases"] += 1
        try:
            self.outcomes.update(self.target.run(case))
        except Exception as exc:
            self.outcomes["failing_cases"] += 1
            self._last_failure = (case, exc)
            raise

    def batch(self, seed: int, examples: int) -> None:
        """One Hypothesis run; a failure (shrunk by Hypothesis) is saved and reported, and fuzzing goes on."""
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as fixed_seed

        @fixed_seed(seed)
        @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink))
        @given(self.target.strategy())
        def test(case):
            self.check(case)

        try:
            test()
        except Exception:  # Hypothesis re-raises the shrunk failure last, so _last_failure is the minimal input
            self._report(seed)

    def _report(self, seed: int) -> None:
        from xrayfeat.fileio import atomic_write

        case, exc = self._last_failure
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        key = (type(exc).__name__, frame.filename, frame.lineno)
        if key in self.failures:
            return
        blob = self.target.encode(case)
        path = self.out / f"{self.target.name}-{hashlib.sha256(blob).hexdigest()[:12]}.bin"
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, blob)
        self.failures[key] = path
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"FAILURE (batch seed {seed}): {type(exc).__name__}: {first} at {frame.filename}:{frame.lineno}; "
              f"reproduce: python scripts/fuzz.py --target {self.target.name}{getattr(self.target, 'replay_args', '')} "
              f"--replay {path}", flush=True)


def make_target(name: str, scratch: Path, *, run: Path | None = None, cli_every: int = 0, report_every: int = 1):
    """The fuzz target ``name`` working in ``scratch`` (``run``: the sound run the records target mutates)."""
    if name == "images":
        return _ImagesTarget(scratch)
    if name == "manifest":
        return _ManifestTarget(scratch, cli_every)
    return _RecordsTarget(scratch, run, cli_every, report_every)


def _limit_resources(max_pixels: int, max_memory_mb: int) -> None:
    """Keep a mutated header from taking the shared machine's memory."""
    from xrayfeat.data.images import MAX_PIXELS_ENV

    os.environ.setdefault(MAX_PIXELS_ENV, str(max_pixels))
    limit = max_memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _replay(target, blob_path: Path) -> int:
    """Run one saved input and show what escapes, with its traceback."""
    case = target.decode(blob_path.read_bytes())
    try:
        print(f"outcome: {' '.join(target.run(case))}")
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--seconds", type=float, default=60.0, help="Time budget (default 60).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the first batch; batch k uses seed+k.")
    parser.add_argument("--batch", type=int, default=300, help="Cases per Hypothesis run (default 300).")
    parser.add_argument("--out", type=Path, default=Path("fuzz-failures"), help="Where failing inputs are saved.")
    parser.add_argument("--replay", type=Path, help="Run one saved failing input and print its traceback.")
    parser.add_argument("--max-pixels", type=int, default=4_000_000, help="Pixel limit for the image reader.")
    parser.add_argument("--max-memory-mb", type=int, default=6144, help="Address-space limit of this process.")
    parser.add_argument("--run", type=Path, help="records: the sound run to mutate (default: a small synthetic one).")
    parser.add_argument("--cli-every", type=int, default=0,
                        help="manifest, records: also run every Nth case through the CLI in a subprocess (0: never).")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # pydicom warns about many a damaged file; only exceptions matter here
    _limit_resources(args.max_pixels, args.max_memory_mb)
    with tempfile.TemporaryDirectory(prefix="xrayfeat-fuzz-") as scratch:
        target = make_target(args.target, Path(scratch), run=args.run, cli_every=args.cli_every)
        if args.replay:
            return _replay(target, args.replay)
        fuzzer = _Fuzzer(target, args.out)
        started = time.monotonic()
        next_note = started + 60
        batch = 0
        while time.monotonic() - started < args.seconds:
            fuzzer.batch(args.seed + batch, args.batch)
            batch += 1
            if time.monotonic() >= next_note:
                next_note += 60
                print(f"{time.monotonic() - started:.0f} s: {fuzzer.outcomes['cases']} cases "
                      f"{dict(fuzzer.outcomes)}", file=sys.stderr, flush=True)
        seconds = time.monotonic() - started
    cases = fuzzer.outcomes.pop("cases", 0)
    print(f"target={args.target} seed={args.seed} batches={batch} cases={cases} seconds={seconds:.0f} "
          f"cases_per_s={cases / seconds:.1f} " + " ".join(f"{k}={v}" for k, v in sorted(fuzzer.outcomes.items()))
          + f" distinct_failures={len(fuzzer.failures)}")
    return 1 if fuzzer.failures else 0


if __name__ == "__main__":
    sys.exit(main())
