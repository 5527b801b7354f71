"""Messy image folders: each broken file is left out once with its reason, or stops the run in one line.

docs/RELIABILITY.md (sections Images and Datasets) lists every case and the test that proves it. A CLI
process pays TensorFlow's start-up, so ONE folder holds every broken case beside good images and is
extracted once per ``--on-error`` mode; decoded pixel values are checked through the library, here and
in tests/test_images.py.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayfeat.data import images
from xrayfeat.cli.kit import quiet_frameworks
from xrayfeat.data.datasets import discover, printable
from xrayfeat.errors import DatasetError, ImageReadError
from xrayfeat.extraction.pipeline import FeatureOptions, RunOptions, extract
from xrayfeat.options.constraints import OptionError
from xrayfeat.store.catalog import list_stores

NON_UTF8_FILE = os.fsdecode(b"caf\xe9.png")  # the byte 0xE9 alone is not UTF-8
NON_UTF8_CLASS = os.fsdecode(b"clase-\xff")
FEATURES = ["-b", "vgg16", "--weights", "none", "--image-size", "32"]


# --------------------------------------------------------------------------- writers


def _png_raw(path: Path, width: int, height: int, bit_depth: int, color_type: int, rows) -> Path:
    """A PNG written by hand from an iterable of raw scanlines (PIL writes no 16-bit colour, no bombs)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    compressor = zlib.compressobj(1)
    idat = b"".join(compressor.compress(b"\x00" + row) for row in rows) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _ramp(h: int, w: int, lo: float, hi: float) -> np.ndarray:
    return np.repeat(np.linspace(lo, hi, h)[:, None], w, axis=1)


def _save(path: Path, im: Image.Image, **kw) -> Path:
    im.save(path, **kw)
    return path


def _noise(seed: int, shape=(64, 64)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def _cut(path: Path, source: Path) -> Path:
    """The first half of ``source``'s bytes: an interrupted download."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    source.unlink()
    return path


def _dicom(path: Path, arr: np.ndarray, photometric: str, bits: int, *, pixels: bool = True) -> Path:
    from pydicom.dataset import Dataset
    from pydicom.uid import SecondaryCaptureImageStorage

    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.set_pixel_data(arr, photometric, bits)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if not pixels:
        del ds.PixelData  # a header-only export: Rows/Columns say there is an image, none is stored
    ds.save_as(path, enforce_file_format=True)
    return path


def _dicom_jpeg_ls(path: Path) -> Path:
    """A DICOM whose pixel data claims JPEG-LS, a compression no installed package decodes."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    ds = pydicom.dcmread(_dicom(path, np.zeros((8, 8), np.uint16), "MONOCHROME2", 12))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not really JPEG-LS"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _exif_jpeg(path: Path, orientation: int) -> Path:
    arr = np.full((40, 60), 40, np.uint8)
    arr[:12, :12] = 250
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(path, Image.fromarray(arr), quality=95, exif=exif.tobytes())


def _rgba16(path: Path) -> Path:
    arr = np.dstack([_ramp(32, 32, 2000, 40000)] * 3 + [np.full((32, 32), 65535.0)]).astype(">u2")
    arr[:, 24:, 3] = 0
    return _png_raw(path, 32, 32, 16, 6, (row.tobytes() for row in arr.reshape(32, -1)))


def _palette_transparent(path: Path) -> Path:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:16, :16] = (255, 0, 0)
    rgb[16:, 16:] = (0, 0, 255)
    im = Image.fromarray(rgb).quantize(colors=4)
    return _save(path, im, transparency=im.getpixel((4, 4)))


def _la(path: Path) -> Path:
    arr = np.zeros((32, 32, 2), np.uint8)
    arr[:, :, 0] = 200
    arr[:, :16, 1] = 255
    return _save(path, Image.fromarray(arr, mode="LA"))


def _random_bytes(path: Path, seed: int) -> Path:
    data = bytearray(np.random.default_rng(seed).integers(0, 256, 600, dtype=np.uint8).tobytes())
    data[0] = 0x00  # not by chance a PNG, JPEG or other known signature
    path.write_bytes(bytes(data))
    return path


def _link(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)  # reading it would wait forever
    return path


def _big(path: Path, side: int = 10_000) -> Path:
    """A ``side`` x ``side`` 8-bit gray PNG, dark top half, bright bottom half: ~0.1 MB on disk."""
    dark, bright = b"\x20" * side, b"\xe0" * side
    return _png_raw(path, side, side, 8, 0, (dark if y < side // 2 else bright for y in range(side)))


def _short_png(path: Path) -> Path:
    """64 x 64 gray, every CRC right and a complete zlib stream, but only 10 rows of pixel data."""
    _png_raw(path, 64, 64, 8, 0, [b"\xc8" * 64] * 10)
    return path


def _zero_padded_jpeg(path: Path) -> Path:
    """A JPEG cut inside its scan and padded with zeros to its size (a pre-allocated download): no end marker."""
    data = _save(path, _noise(13, (64, 64)), quality=95).read_bytes()
    path.write_bytes(data[: len(data) // 2] + b"\x00" * (len(data) - len(data) // 2))
    return path


def _short_dicom(path: Path) -> Path:
    """Two 32 x 32 frames declared, one stored."""
    import pydicom

    _dicom(path, _ramp(32, 32, 0, 255).astype(np.uint8), "MONOCHROME2", 8)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.save_as(path, enforce_file_format=True)
    return path


# good: (class, file name, writer); every file holds different bytes
GOOD = {
    "png-16bit-gray": ("normal", "gray16.png",
                       lambda p: _save(p, Image.fromarray(_ramp(32, 32, 1000, 3000).astype(np.uint16)))),
    "png-16bit-rgba": ("normal", "rgba16.png", _rgba16),
    "png-palette-transparency": ("normal", "palette_t.png", _palette_transparent),
    "png-LA": ("normal", "la.png", _la),
    "png-1x1": ("normal", "one_pixel.png", lambda p: _save(p, Image.new("L", (1, 1), 77))),
    "jpeg-CMYK": ("normal", "cmyk.jpg", lambda p: _save(p, Image.new("CMYK", (48, 40), (0, 255, 255, 0)), quality=95)),
    "jpeg-progressive": ("normal", "progressive.jpg",
                         lambda p: _save(p, Image.fromarray(_ramp(48, 40, 0, 255).astype(np.uint8)), progressive=True)),
    "jpeg-exif-rotated": ("normal", "exif6.jpg", lambda p: _exif_jpeg(p, 6)),
    "dicom-MONOCHROME1": ("normal", "m1.dcm",
                          lambda p: _dicom(p, _ramp(32, 32, 0, 4000).astype(np.uint16), "MONOCHROME1", 12)),
    "dicom-MONOCHROME2": ("normal", "m2.dcm",
                          lambda p: _dicom(p, _ramp(32, 32, 10, 200).astype(np.uint8), "MONOCHROME2", 8)),
    "name-with-spaces": ("normal", "chest film 1.png", lambda p: _save(p, _noise(1))),
    "name-unicode": ("normal", "ñandú_tórax.png", lambda p: _save(p, _noise(2))),
    "name-non-utf8": ("normal", NON_UTF8_FILE, lambda p: _save(p, _noise(3))),
    "class-unicode-and-spaces": ("neumonía viral", "a.png", lambda p: _save(p, _noise(4))),
    "class-non-utf8": (NON_UTF8_CLASS, "b.png", lambda p: _save(p, _noise(5))),
}

ODD_NAMES = ("name-with-spaces", "name-unicode", "name-non-utf8", "class-unicode-and-spaces", "class-non-utf8")

# broken: (class, file name, writer, what the reason must say)
BROKEN = {
    "zero-bytes": ("normal", "empty.png", lambda p: p.write_bytes(b""), "is empty (0 bytes): remove or replace it"),
    "truncated-png": ("normal", "cut.png", lambda p: _cut(p, _save(p.with_suffix(".src.png"), _noise(6))),
                      "damaged or incomplete: re-export or re-download it"),
    "truncated-jpeg": ("normal", "cut.jpg", lambda p: _cut(p, _save(p.with_suffix(".src.jpg"), _noise(7), quality=95)),
                       "damaged or incomplete: re-export or re-download it"),
    "random-bytes-png": ("normal", "random.png", lambda p: _random_bytes(p, 8), "not an image: the content is not"),
    "random-bytes-jpeg": ("normal", "random.jpg", lambda p: _random_bytes(p, 9), "not an image: the content is not"),
    "text-in-class-folder": ("normal", "notes.txt", lambda p: p.write_text("patient list"),
                             "not an image (allowed: .dcm, .dicom, .jpeg, .jpg, .png); move it out of the class"),
    "text-named-dcm": ("normal", "notes.dcm", lambda p: p.write_text("patient list\n" * 20), "DICOM file"),
    "decompression-bomb": ("normal", "bomb.png", lambda p: _png_raw(p, 20_000, 20_000, 8, 0, [b"\x00" * 99]),
                           "over the limit of 150,000,000 (a guard against decompression bombs)"),
    "dicom-compressed-no-decoder": ("normal", "ls.dcm", _dicom_jpeg_ls,
                                    "install a decoder for it: pip install pyjpegls"),
    "dicom-no-pixel-data": ("normal", "header_only.dcm",
                            lambda p: _dicom(p, np.zeros((8, 8), np.uint8), "MONOCHROME2", 8, pixels=False),
                            "no pixel data (only a header): export the image itself"),
    "symlink-loop": ("normal", "loop.png", lambda p: _link(p, "loop.png"), "Too many levels of symbolic links"),
    "dangling-link": ("normal", "gone.png", lambda p: _link(p, "nowhere.png"), "not a regular file"),
    "fifo": ("normal", "pipe.png", _fifo, "not a regular file"),
    "identical-broken-1": ("normal", "dup_a.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30),
                           "damaged or incomplete"),
    "identical-broken-2": ("neumonía viral", "dup_b.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30),
                           "damaged or incomplete"),
    "broken-in-non-utf8-class": (NON_UTF8_CLASS, "empty2.png", lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "decode-bytes-bomb": ("normal", "tiny_bomb.png", lambda p: _tiny_bomb(p),
                          "= 2,304,000,000 bytes decoded, over the limit of 536,870,912 (a guard against decompression "
                          "bombs): if it is genuine, set XRAYFEAT_MAX_DECODE_BYTES=2304000000"),
    "short-png": ("normal", "short.png", lambda p: _short_png(p), "the PNG pixel data is shorter than the header "
                  "declares (650 of 4,160 bytes): the file is damaged or incomplete: re-export or re-download it"),
    "short-jpeg": ("normal", "short.jpg", lambda p: _zero_padded_jpeg(p), "the JPEG pixel data is shorter than the "
                   "header declares (the data ends before its end-of-image marker): the file is damaged"),
    "short-dicom": ("normal", "short.dcm", lambda p: _short_dicom(p), "the DICOM pixel data is shorter than the "
                    "header declares (1,024 of 2,048 bytes): the file is damaged or incomplete"),
}


def _write_cases(root: Path, cases: dict) -> dict[str, Path]:
    paths = {}
    for name, (label, file, writer, *_) in cases.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        paths[name] = root / label / file
        writer(paths[name])
    return paths


def _names_supported(tmp: Path) -> bool:
    try:
        (tmp / NON_UTF8_FILE).write_bytes(b"x")
    except (OSError, UnicodeError):
        return False
    (tmp / NON_UTF8_FILE).unlink()
    return True


#: Run first, before ``xrayfeat``: every allocation while the interpreter shuts down then collects (an exit
#: handler registered first runs last), so a gc callback that outlives its module (jax's ``_xla_gc_callback``,
#: which Keras brings in) would print "Exception ignored in: ..." and a traceback every time, not by chance.
TEARDOWN_COLLECTS = "import atexit, gc; atexit.register(gc.set_threshold, 1)\n"


def _cli(*args, teardown_collects=False) -> subprocess.CompletedProcess:
    """``xrayfeat ARGS`` as a user runs it: none of the test suite's quieting variables are set.

    ``teardown_collects``: the same command, started after :data:`TEARDOWN_COLLECTS`.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "XRAYFEAT_DEBUG", images.MAX_PIXELS_ENV, images.MAX_DECODE_BYTES_ENV)}
    start = ([sys.executable, "-c", TEARDOWN_COLLECTS + "import runpy\n"
              "runpy.run_module('xrayfeat', run_name='__main__', alter_sys=True)\n"] if teardown_collects
             else [sys.executable, "-m", "xrayfeat"])
    return subprocess.run([*start, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)


def _stored_rows(cache: Path) -> int:
    return sum(len(store) for store in list_stores(cache)) if cache.exists() else 0


# --------------------------------------------------------------------------- the messy folder, through the CLI


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """One folder with every broken case beside good images, and what `extract --on-error skip --json` made of it."""
    tmp = tmp_path_factory.mktemp("messy")
    if not _names_supported(tmp):
        pytest.skip("this file system refuses non-UTF-8 file names")
    data = tmp / "DATA"
    good, broken = _write_cases(data, GOOD), _write_cases(data, BROKEN)
    proc = _cli("extract", data, *FEATURES, "--cache-dir", tmp / "cache", "--on-error", "skip", "--json")
    return {"tmp": tmp, "data": data, "good": good, "broken": broken, "proc": proc}


def _skip_lines(messy, path: Path) -> list[str]:
    return [line for line in json.loads(messy["proc"].stdout)["skipped_files"]
            if line.startswith(printable(str(path)) + ": ")]


def test_skip_run_succeeds_and_counts_every_path(messy):
    proc = messy["proc"]
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["skipped"] == len(BROKEN) == len(out["skipped_files"])
    assert out["extracted"] == len(GOOD) and out["reused"] == 0
    assert out["images"] == out["extracted"] + out["reused"] + out["skipped"]


def test_skip_run_stderr_is_xrayfeat_lines_only(messy):
    """No TensorFlow C++ lines, no decoder warnings, no progress bar: one warning per skipped file, no traceback."""
    *lines, summary = [line for line in messy["proc"].stderr.splitlines() if line]
    # --json puts the human summary on stderr
    assert summary.startswith(f"{messy['tmp'] / 'cache'}{os.sep}") and f" {len(BROKEN)} skipped " in summary
    assert all(line.startswith("xrayfeat: ") for line in lines), messy["proc"].stderr
    assert sum(line.startswith("xrayfeat: warning: skipped ") for line in lines) == len(BROKEN)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_file_is_listed_once_with_its_reason(messy, case):
    [line] = _skip_lines(messy, messy["broken"][case])
    assert BROKEN[case][3] in line and "\n" not in line


@pytest.mark.parametrize("case", sorted(GOOD))
def test_each_good_file_is_extracted(messy, case):
    assert _skip_lines(messy, messy["good"][case]) == []


def test_non_utf8_names_are_reported_readably(messy):
    [line] = _skip_lines(messy, messy["broken"]["broken-in-non-utf8-class"])
    assert "clase-\\xff" in line and line.encode("utf-8")  # printable, storable as UTF-8


def test_fail_mode_stops_at_discovery_in_one_line_and_writes_nothing(messy):
    cache = messy["tmp"] / "cache-fail"
    proc = _cli("extract", messy["data"], *FEATURES, "--cache-dir", cache)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"xrayfeat: error: {messy['data']}{os.sep}")
    assert any(BROKEN[case][1] in line and BROKEN[case][3] in line for case in BROKEN), line
    assert _stored_rows(cache) == 0


def test_unicode_space_and_non_utf8_names_export_end_to_end(messy):
    """`cache export` of a clean folder with the same odd names (same bytes: rows come from the skip run)."""
    clean = messy["tmp"] / "names"
    for case in ODD_NAMES:
        label, file, _ = GOOD[case]
        (clean / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(messy["good"][case], clean / label / file)
    out = messy["tmp"] / "names.npz"
    proc = _cli("cache", "export", clean, *FEATURES, "--cache-dir", messy["tmp"] / "cache", "--out", out)
    assert proc.returncode == 0, proc.stderr
    exported = np.load(out)
    expected = sorted((GOOD[case][0], f"{GOOD[case][0]}/{GOOD[case][1]}") for case in ODD_NAMES)
    assert sorted(zip(exported["label"], exported["path"])) == expected
    assert np.isfinite(exported["pooled"]).all() and exported["pooled"].shape == (5, 512)


def test_decode_failure_after_tensorflow_starts_is_xrayfeat_lines_only(tmp_path):
    """`--on-error fail` on a file that only decoding finds broken: TensorFlow is loaded by then, yet stderr
    holds only xrayfeat's random-weights warning and its one-line error, even when every allocation of the
    interpreter's shutdown collects (no jax gc-hook traceback after the error); the failing batch writes no row."""
    data = tmp_path / "DATA"
    for label, seed in (("a", 10), ("b", 11)):
        (data / label).mkdir(parents=True)
        _save(data / label / "ok.png", _noise(seed))
    broken = _cut(data / "b" / "cut.png", _save(tmp_path / "src.png", _noise(12)))
    proc = _cli("extract", data, *FEATURES, "--cache-dir", tmp_path / "cache", "--workers", "0", teardown_collects=True)
    assert proc.returncode == 2
    warning, error = proc.stderr.splitlines()
    assert warning.startswith("xrayfeat: warning: vgg16 runs with RANDOM weights")
    assert error.startswith(f"xrayfeat: error: {broken}: the PNG pixel data is shorter than the header declares (")
    assert error.endswith("damaged or incomplete: re-export or re-download it "
                          "(or pass --on-error skip to leave such files out)")
    assert _stored_rows(tmp_path / "cache") == 0


@pytest.mark.parametrize("case", ["short-png", "decode-bytes-bomb"])
def test_crafted_image_stops_extract_in_one_line_in_fail_mode(tmp_path, case):
    """Pixel data shorter than the header, or more bytes to decode than the limit: `--on-error fail` exits 2
    with one line naming the file and the reason (never a zero-filled image stored); skip mode lists it
    (`test_each_broken_file_is_listed_once_with_its_reason`)."""
    data = tmp_path / "DATA"
    for label, seed in (("a", 20), ("b", 21)):
        (data / label).mkdir(parents=True)
        _save(data / label / "ok.png", _noise(seed))
    label, name, writer, reason = BROKEN[case]
    broken = data / "b" / name
    writer(broken)
    proc = _cli("extract", data, *FEATURES, "--cache-dir", tmp_path / "cache", "--workers", "0")
    assert proc.returncode == 2, proc.stderr
    error = proc.stderr.splitlines()[-1]
    assert error.startswith(f"xrayfeat: error: {broken}: ") and reason in error, proc.stderr
    assert error.endswith("(or pass --on-error skip to leave such files out)")
    assert _stored_rows(tmp_path / "cache") == 0


# --------------------------------------------------------------------------- decoding, through the library


def test_one_pixel_image_is_resized(tmp_path):
    png = _save(tmp_path / "one.png", Image.new("L", (1, 1), 77))
    jpeg = _save(tmp_path / "one.jpg", Image.new("RGB", (1, 1), (200, 30, 30)), quality=100)
    assert (images.read_image(png, 32) == 77).all()
    out = images.read_image(jpeg, 32).reshape(-1, 3)
    assert (out == out[0]).all() and out[0, 0] > 180 and out[0, 1] < 60


def test_ten_thousand_pixel_square_decodes_without_a_full_size_copy(tmp_path):
    path = _big(tmp_path / "big.png")
    tracemalloc.start()  # numpy arrays are traced: a float copy would be 400 MB, a uint8 one 100 MB
    try:
        out = images.read_image(path, 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, peak
    column = out[:, 0, 0]
    assert (column[:14] == 32).all() and (column[-14:] == 224).all()


def test_dicom_without_pixel_data_is_one_line_with_the_fix(tmp_path):
    path = _dicom(tmp_path / "h.dcm", np.zeros((8, 8), np.uint8), "MONOCHROME2", 8, pixels=False)
    with pytest.raises(ImageReadError) as info:
        images.read_image(path, 8)
    assert str(info.value) == (f"{path}: this DICOM file has no pixel data (only a header): "
                               f"export the image itself from the PACS or viewer")


def test_running_out_of_memory_is_an_image_read_error(tmp_path, monkeypatch):
    def exhausted(*args):
        raise MemoryError

    monkeypatch.setattr(images, "_load_pixels", exhausted)
    with pytest.raises(ImageReadError, match=f"not enough memory to decode it: .*set {images.MAX_PIXELS_ENV} lower"):
        images.read_image(_save(tmp_path / "x.png", _noise(0)), 8)


def _mutations(data: bytes, seed: int, n: int):
    """``n`` copies of ``data``, each with a few bytes changed, every fourth also cut short."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        out = bytearray(data)
        for _ in range(rng.integers(1, 6)):
            out[rng.integers(0, len(out))] = rng.integers(0, 256)
        yield bytes(out[: rng.integers(1, len(out))] if i % 4 == 0 else out)


@pytest.mark.parametrize("case", ["png-16bit-gray", "png-palette-transparency", "jpeg-exif-rotated",
                                  "dicom-MONOCHROME1"])
def test_damaged_files_only_ever_raise_image_read_error_and_no_warning(tmp_path, case):
    """Seeded byte flips and cuts: a decoder's own exception or warning never escapes; only the one-line error."""
    _, name, writer = GOOD[case]
    source = writer(tmp_path / name).read_bytes()
    path = tmp_path / f"mutated{Path(name).suffix}"
    failures = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for data in _mutations(source, seed=len(case), n=120):
            path.write_bytes(data)
            try:
                images.read_image(path, 16)
            except ImageReadError as exc:
                failures += 1
                assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
    assert failures > 0  # the mutations do reach the error paths


# --------------------------------------------------------------------------- discovery, through the library


def test_skip_mode_discovery_lists_problem_files_with_label_split_and_reason(tmp_path):
    for seed, (split, label) in enumerate((("train", "a"), ("test", "a"), ("train", "b"))):
        (tmp_path / "DATA" / split / label).mkdir(parents=True)
        _save(tmp_path / "DATA" / split / label / "ok.png", _noise(seed))
    (tmp_path / "DATA/train/b/empty.png").write_bytes(b"")
    (tmp_path / "DATA/test/a/notes.txt").write_text("x")
    dataset = discover(tmp_path / "DATA", on_error="skip")
    assert len(dataset) == 3 and dataset.classes == ("a", "b")
    assert [(s.relpath, s.label, s.split) for s in dataset.skipped] == [
        ("train/b/empty.png", "b", "train"), ("test/a/notes.txt", "a", "test")]
    assert [s.relpath for s in dataset.subset("test").skipped] == ["test/a/notes.txt"]
    assert [s.relpath for s in dataset.select_classes(["b"]).skipped] == ["train/b/empty.png"]
    with pytest.raises(DatasetError, match=r"notes\.txt: not an image"):
        discover(tmp_path / "DATA")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_skipped_or_one_line(tmp_path):
    (tmp_path / "DATA" / "a").mkdir(parents=True)
    _save(tmp_path / "DATA/a/ok.png", _noise(0))
    locked = _save(tmp_path / "DATA/a/locked.png", _noise(1))
    locked.chmod(0)
    [skipped] = discover(tmp_path / "DATA", on_error="skip").skipped
    assert skipped.relpath == "a/locked.png" and "Permission denied" in skipped.reason
    with pytest.raises(DatasetError, match=r"locked\.png: cannot read \(Permission denied\)"):
        discover(tmp_path / "DATA")


def _manifest(tmp_path: Path, rows: list[list[str]]) -> Path:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        _save(tmp_path / "imgs" / name, _noise(len(name) + ord(name[0])))
    _save(tmp_path / "outside.png", _noise(99))
    path = tmp_path / "imgs" / "list.csv"
    path.write_text("\n".join(",".join(row) for row in rows) + "\n", encoding="utf-8")
    return path


def _with_empty_class(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    _save(root / "a" / "x.png", _noise(0))
    (root / "b").mkdir()
    return root


DATASET_PROBLEMS = {
    # case: (a dataset that skip mode must still refuse, what the one line says)
    "empty-class": (lambda t: _with_empty_class(t / "D"), "class folder is empty"),
    "manifest-missing-columns": (lambda t: _manifest(t, [["file", "class"], ["a.png", "x"]]),
                                 "lacks columns path, label"),
    "manifest-duplicate-rows": (lambda t: _manifest(t, [["path", "label"], ["a.png", "x"], ["./a.png", "y"]]),
                                "listed twice (lines 2 and 3)"),
    "manifest-unknown-split": (lambda t: _manifest(t, [["path", "label", "split"], ["a.png", "x", "holdout"]]),
                               "unknown split value 'holdout' (line 2)"),
    "manifest-path-leaves-folder": (lambda t: _manifest(t, [["path", "label"], ["a.png", "x"],
                                                            ["../outside.png", "y"]]),
                                    "line 3 path ../outside.png leaves the manifest's folder"),
    "manifest-absolute-path-outside": (lambda t: _manifest(t, [["path", "label"], [str(t / "outside.png"), "y"]]),
                                       "leaves the manifest's folder"),
}


@pytest.mark.parametrize("case", sorted(DATASET_PROBLEMS))
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_dataset_problems_stop_discovery_in_both_modes(tmp_path, case, on_error):
    make, message = DATASET_PROBLEMS[case]
    with pytest.raises(DatasetError) as info:
        discover(make(tmp_path), on_error=on_error)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_manifest_rows_without_a_usable_file_are_skipped(tmp_path):
    csv = _manifest(tmp_path, [["path", "label", "split"], ["a.png", "x", "train"], ["b.png", "y", "test"],
                               ["missing.png", "x", "train"], ["notes.txt", "y", "test"]])
    dataset = discover(csv, on_error="skip")
    assert [item.relpath for item in dataset] == ["a.png", "b.png"]
    assert [(s.relpath, s.reason.split(";")[0]) for s in dataset.skipped] == [
        ("missing.png", "does not exist"), ("notes.txt", "not an image (allowed: .dcm, .dicom, .jpeg, .jpg, .png)")]
    with pytest.raises(DatasetError, match="1 listed file does not exist: missing.png"):
        discover(_manifest(tmp_path, [["path", "label"], ["a.png", "x"], ["missing.png", "x"]]))


def test_manifest_values_are_never_evaluated(tmp_path):
    """Shell syntax in a manifest is a file name like any other: missing, and nothing runs."""
    csv = _manifest(tmp_path, [["path", "label"], ["a.png", "x"], ["$(touch PWNED).png", "x"],
                               ["`touch PWNED2`.png", "x"], ["a.png; touch PWNED3.png", "$(id)"]])
    with pytest.raises(DatasetError, match=r"3 listed files do not exist: \$\(touch PWNED\)\.png"):
        discover(csv)
    dataset = discover(csv, on_error="skip")
    assert len(dataset.skipped) == 3
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


def test_skip_discovered_dataset_in_fail_mode_stops_before_any_work(tmp_path):
    (tmp_path / "DATA" / "a").mkdir(parents=True)
    _save(tmp_path / "DATA/a/ok.png", _noise(0))
    (tmp_path / "DATA/a/empty.png").write_bytes(b"")
    dataset = discover(tmp_path / "DATA", on_error="skip")
    options = FeatureOptions("vgg16", weights="none", image_size=32)
    with pytest.raises(DatasetError, match=r"empty\.png: is empty .*--on-error skip"):
        extract(dataset, options, RunOptions(cache_dir=tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_discover_names_the_allowed_on_error_values():
    expected = r"The 'on_error' parameter of discover must be one of \{'fail', 'skip'\}\. Got 'ignore' instead\."
    with pytest.raises(OptionError, match=expected):
        discover(".", on_error="ignore")


# --------------------------------------------------------------------------- TensorFlow's start-up lines


@pytest.mark.parametrize("env, expected", [
    ({}, "3"),  # nothing set: TensorFlow's C++ logging is silenced
    ({"TF_CPP_MIN_LOG_LEVEL": "0"}, "0"),  # the user's own choice is kept
    ({"XRAYFEAT_DEBUG": "1"}, None),  # debugging: TensorFlow's default, everything shown
], ids=["unset", "set-by-user", "debug"])
def test_quiet_frameworks_sets_the_tensorflow_log_level(monkeypatch, env, expected):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delenv("XRAYFEAT_DEBUG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    quiet_frameworks()
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == expected


# --------------------------------------------------------------------------- crafted images: bytes, short data, memory

#: The bound docs/RELIABILITY.md states: decoding one file peaks under 5 x XRAYFEAT_MAX_DECODE_BYTES + 64 MiB
#: above what the process held before (plus the output array, 224 x 224 x 3 bytes here).
PEAK_FACTOR, PEAK_SLACK = 5, 64 * 2**20
SMALL_LIMIT = 16 * 2**20  # XRAYFEAT_MAX_DECODE_BYTES in the memory tests: worst cases just under it stay cheap

_MEASURE = r"""
import json, resource, sys
from xrayfeat.data import images
from xrayfeat.errors import ImageReadError
for warm in sys.argv[3:]:  # the decoders' imports and first-use allocations are not the file's
    images.read_image(warm, 8)
if len(sys.argv) > 3:  # were the guard gone, fail with MemoryError rather than take the machine's memory
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    room = int(status["VmSize"].split()[0]) * 1024 + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (room, room))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
    images.read_image(sys.argv[1], int(sys.argv[2]))
    error = None
except ImageReadError as exc:
    error = exc.reason
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": after - before, "error": error}))
"""


def _measure(path: Path, warm: list[Path], env: dict, size: int = 224) -> dict:
    """Decode ``path`` to ``size`` in a fresh interpreter: how far its peak resident memory rose, and the error
    if refused. With ``warm`` files (decoded first), the address space is capped 1 GiB above what it is then."""
    env = {**{k: v for k, v in os.environ.items() if k not in (images.MAX_PIXELS_ENV, images.MAX_DECODE_BYTES_ENV)},
           **env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(size), *map(str, warm)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _png_rows(path: Path, width: int, height: int, bit_depth: int, color_type: int, extra: bytes = b"") -> Path:
    """A ``width x height`` PNG of varied rows (so it is not one repeated line), with optional chunks before IDAT."""
    row_bytes = (width * bit_depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type] + 7) // 8
    pattern = (bytes(range(256)) * (row_bytes // 256 + 2))
    _png_raw(path, width, height, bit_depth, color_type, (pattern[y % 256: y % 256 + row_bytes] for y in range(height)))
    if extra:  # PLTE/tRNS go between IHDR and IDAT
        data = path.read_bytes()
        path.write_bytes(data[:33] + extra + data[33:])
    return path


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _side(per_pixel: int, limit: int = SMALL_LIMIT) -> int:
    """The largest square side whose decoding holds at most ``limit`` bytes at ``per_pixel`` bytes a pixel."""
    side = int((limit / per_pixel) ** 0.5)
    while side * side * per_pixel > limit:
        side -= 1
    return side


def _worst_dicom(path: Path) -> Path:
    """8-bit DICOM with a rescale and a window: pydicom's LUTs work in float64, the heaviest DICOM path."""
    side = _side(5, SMALL_LIMIT - 4096)  # a float32 working copy + the file, read whole (its header: 4 KiB)
    arr = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    path = _dicom(path, arr, "MONOCHROME2", 8)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1.5, -10, 100, 200
    ds.save_as(path, enforce_file_format=True)
    return path


WORST = {  # name -> writer of a file whose decoding holds just under SMALL_LIMIT
    "png-8bit-rgba": lambda p: _png_rows(p, _side(4), _side(4), 8, 6),
    "png-palette-transparency": lambda p: _png_rows(p, _side(4), _side(4), 8, 3, _chunk(b"PLTE", bytes(range(256)) * 3)
                                                    + _chunk(b"tRNS", bytes(range(0, 256, 2)))),
    "png-1bit-palette": lambda p: _png_rows(p, _side(4), _side(4), 1, 3, _chunk(b"PLTE", b"\0\0\0\xff\xff\xff")),
    "png-16bit-rgba": lambda p: _png_rows(p, _side(16), _side(16), 16, 6),
    "png-16bit-rgb": lambda p: _png_rows(p, _side(12), _side(12), 16, 2),
    "png-16bit-gray": lambda p: _png_rows(p, _side(4), _side(4), 16, 0),
    "png-8bit-gray": lambda p: _png_rows(p, _side(1), _side(1), 8, 0),
    "jpeg-cmyk": lambda p: _save(p, Image.fromarray(np.random.default_rng(1).integers(
        0, 256, (_side(4), _side(4), 4), dtype=np.uint8), mode="CMYK"), quality=90),
    "dicom-8bit-rescaled-windowed": _worst_dicom,
}


@pytest.fixture(scope="module")
def warm_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warm")
    return [_png_rows(tmp / "w16.png", 4, 4, 16, 6), _save(tmp / "w.jpg", _noise(1, (8, 8))),
            _dicom(tmp / "w.dcm", np.zeros((4, 4), np.uint8), "MONOCHROME2", 8)]


@pytest.mark.parametrize("case", sorted(WORST))
def test_decoding_one_file_peaks_under_the_documented_bound(tmp_path, warm_files, case):
    """A crafted worst case of each decoding path, holding just under the byte limit: it decodes, and peak
    resident memory, in a fresh interpreter, rises by less than the documented bound; under half that limit,
    the same file is refused from its header, before its pixels take any memory."""
    suffix = ".dcm" if case.startswith("dicom") else ".jpg" if case.startswith("jpeg") else ".png"
    path = WORST[case](tmp_path / f"worst{suffix}")
    size = Image.open(path).width if case.startswith("jpeg") else 224  # no draft scaling: the full decode
    result = _measure(path, warm_files, {images.MAX_DECODE_BYTES_ENV: str(SMALL_LIMIT)}, size)
    assert result["error"] is None
    assert result["peak"] < PEAK_FACTOR * SMALL_LIMIT + PEAK_SLACK + size * size * 3, result
    refused = _measure(path, warm_files, {images.MAX_DECODE_BYTES_ENV: str(SMALL_LIMIT // 2)}, size)
    assert f"bytes decoded, over the limit of {SMALL_LIMIT // 2:,} " in refused["error"]
    suggested = int(refused["error"].rsplit(f"set {images.MAX_DECODE_BYTES_ENV}=", 1)[1])
    assert SMALL_LIMIT // 2 < suggested <= SMALL_LIMIT  # what it holds: under the limit it decoded at
    assert refused["peak"] < 8 * 2**20, refused


def _tiny_bomb(path: Path) -> Path:
    """Under 200 bytes declaring 12000 x 12000 16-bit RGBA: 144 million pixels, under the pixel limit, but
    2.3 GB to decode as float32 (and about 5 GB before the byte limit existed)."""
    ihdr = struct.pack(">IIBBBBB", 12_000, 12_000, 16, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 96_001))
                     + _chunk(b"IEND", b""))
    return path


def test_tiny_png_declaring_12000_square_16bit_rgba_is_refused_with_bounded_memory(tmp_path, warm_files):
    path = _tiny_bomb(tmp_path / "tiny.png")
    assert path.stat().st_size < 200
    result = _measure(path, warm_files, {})  # the default limits; a fresh interpreter capped 1 GiB above its start
    assert result["error"] == (
        "image is 12000x12000 x 4 samples x 4 bytes (float32, from 16 bits) = 2,304,000,000 bytes decoded, "
        f"over the limit of {images.DEFAULT_MAX_DECODE_BYTES:,} (a guard against decompression bombs): "
        f"if it is genuine, set {images.MAX_DECODE_BYTES_ENV}=2304000000")
    assert result["peak"] < 8 * 2**20, result
