#!/usr/bin/env python
"""Fuzz the image reader and the manifest parser for a fixed time; only xrayfeat's own errors may escape.

    python scripts/fuzz.py --target images --seconds 600
    python scripts/fuzz.py --target manifest --seconds 600 --seed 7
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
  :func:`~xrayfeat.data.datasets.gather_images`.

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
import resource
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

TARGETS = ("images", "manifest")
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

    def __init__(self, scratch: Path):
        self.scratch = scratch
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
        ]


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
              f"reproduce: python scripts/fuzz.py --target {self.target.name} --replay {path}", flush=True)


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
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # pydicom warns about many a damaged file; only exceptions matter here
    _limit_resources(args.max_pixels, args.max_memory_mb)
    with tempfile.TemporaryDirectory(prefix="xrayfeat-fuzz-") as scratch:
        target = (_ImagesTarget if args.target == "images" else _ManifestTarget)(Path(scratch))
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
