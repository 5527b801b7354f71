"""Tests for xrayfeat.data.images: every format and mode we promise, and every way a file can be bad.

Fixtures write tiny images into tmp_path; one test reads the real sample X-rays when present.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from xrayfeat.errors import ImageReadError
from xrayfeat.data.images import (
    DECODE_VERSION,
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    MAX_DECODE_BYTES_ENV,
    MAX_PIXELS_ENV,
    probe,
    read_gray,
    read_image,
)

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/cxr-sample/all"
REAL_COUNT = 284


@pytest.fixture(autouse=True)
def _default_pixel_limit(monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    monkeypatch.delenv(MAX_DECODE_BYTES_ENV, raising=False)


# -- writers -------------------------------------------------------------------------


def _gradient(h: int, w: int, lo: float = 0, hi: float = 255) -> np.ndarray:
    """Rows ramp from lo (top) to hi (bottom); smooth, so resizes barely change it."""
    return np.repeat(np.linspace(lo, hi, h)[:, None], w, axis=1)


def _save(im: Image.Image, path: Path, **kw) -> Path:
    im.save(path, **kw)
    return path


def _png_raw(path: Path, width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> Path:
    """Write a PNG by hand (PIL cannot write 16-bit colour); raw = filtered scanlines."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def _png16(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit LA (H, W, 2), RGB (H, W, 3) or RGBA (H, W, 4) PNG, filter type 0 on every row."""
    h, w, c = arr.shape
    rows = arr.astype(">u2").reshape(h, w * c)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return _png_raw(path, w, h, 16, {2: 4, 3: 2, 4: 6}[c], raw)


def _dicom(path: Path, arr: np.ndarray, photometric: str, bits: int, **elements) -> Path:
    from pydicom.dataset import Dataset
    from pydicom.uid import SecondaryCaptureImageStorage

    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.set_pixel_data(arr, photometric, bits)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpeg_with_orientation(path: Path, orientation: int) -> Path:
    """60x40 gray JPEG with a bright 12x12 marker at the stored top-left corner."""
    arr = np.full((40, 60), 40, np.uint8)
    arr[:12, :12] = 250
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(arr), path, quality=95, exif=exif.tobytes())


def _big_jpeg(path: Path, progressive: bool = False) -> Path:
    """A 1600x2000 smooth 'X-ray-like' image: a ramp plus two soft blobs."""
    y, x = np.mgrid[0:2000, 0:1600].astype(np.float32)
    arr = 60 + 0.05 * y + 120 * np.exp(-(((x - 500) / 250) ** 2 + ((y - 900) / 400) ** 2))
    arr += 90 * np.exp(-(((x - 1150) / 200) ** 2 + ((y - 1000) / 350) ** 2))
    return _save(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), path, quality=92, progressive=progressive)


# -- every supported kind of file: a table of (writer, check) -----------------------


def _check_gray_gradient(out):
    col = out[:, :, 0].astype(int)
    assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
    assert col[0].mean() < 20 and col[-1].mean() > 235


def _check_png16_stretched(out):
    """16-bit 1000..3000 must span 0..255 exactly, linearly (not clipped, not /257)."""
    assert out.min() == 0 and out.max() == 255
    expected = np.linspace(0, 255, out.shape[0])
    assert np.abs(out[:, 5, 0] - expected).max() <= 1.5


def _check_rgba_partial(out):
    """Left: opaque red; right: fully transparent white -> black; middle: half alpha."""
    assert tuple(out[10, 2]) == (255, 0, 0)
    assert tuple(out[10, -2]) == (0, 0, 0)
    assert abs(int(out[30, 16, 1]) - 128) <= 2  # white at alpha 128 over black


def _check_red_blue(out):
    assert tuple(out[4, 4]) == (255, 0, 0) and tuple(out[-4, -4]) == (0, 0, 255)


def _check_palette_transparent(out):
    assert tuple(out[4, 4]) == (0, 0, 0)  # transparent palette index over black
    assert tuple(out[-4, -4]) == (0, 0, 255)


def _check_cmyk_red(out):
    r, g, b = out.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def _check_png16_rgb_levels(out):
    """Values 1000..1255 have 2 distinct high bytes; all 16 bits give one level per row."""
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out)) == 64


def _check_png16_rgba(out):
    assert tuple(out[10, -2]) == (0, 0, 0)  # transparent -> black
    assert out[:, :8].max() == 255  # opaque part stretched to the full range


def _write_png_l(p):
    return _save(Image.fromarray(_gradient(64, 64).astype(np.uint8)), p / "l.png")


def _write_png_i16(p):
    return _save(Image.fromarray(_gradient(64, 64, 1000, 3000).astype(np.uint16)), p / "i16.png")


def _write_png_rgb(p):
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:32, :32] = (255, 0, 0)
    arr[32:, 32:] = (0, 0, 255)
    return _save(Image.fromarray(arr), p / "rgb.png")


def _write_png_rgba(p):
    arr = np.zeros((64, 64, 4), np.uint8)
    arr[:, :16] = (255, 0, 0, 255)
    arr[:, 16:48] = (255, 255, 255, 128)
    arr[:, 48:] = (255, 255, 255, 0)
    return _save(Image.fromarray(arr), p / "rgba.png")


def _write_png_rgba_opaque(p):
    rgb = np.asarray(Image.open(_write_png_rgb(p)))
    arr = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    return _save(Image.fromarray(arr), p / "rgba_opaque.png")


def _write_png_la(p):
    arr = np.zeros((64, 64, 2), np.uint8)
    arr[:, :, 0] = 200
    arr[:, :32, 1] = 255
    return _save(Image.fromarray(arr, mode="LA"), p / "la.png")


def _write_png_p(p, transparency=None):
    im = Image.fromarray(np.asarray(Image.open(_write_png_rgb(p)))).quantize(colors=4)
    if transparency is not None:
        red = im.getpixel((4, 4))
        return _save(im, p / "p_t.png", transparency=red)
    return _save(im, p / "p.png")


def _write_jpeg_cmyk(p):
    return _save(Image.new("CMYK", (48, 40), (0, 255, 255, 0)), p / "cmyk.jpg", quality=95)


def _write_jpeg_progressive(p):
    return _save(Image.fromarray(_gradient(96, 80).astype(np.uint8)), p / "prog.jpg", quality=95, progressive=True)


def _write_png16_rgb(p):
    ramp = _gradient(64, 64, 1000, 1255).astype(np.uint16)
    return _png16(p / "rgb16.png", np.dstack([ramp] * 3))


def _write_png16_rgba(p):
    arr = np.dstack([_gradient(64, 64, 2000, 40000)] * 3 + [np.full((64, 64), 65535.0)]).astype(np.uint16)
    arr[:, 48:, 3] = 0
    return _png16(p / "rgba16.png", arr)


def _write_png16_la(p):
    """PIL reads 16-bit grey+alpha as 8-bit RGBA (high bytes): still gray, alpha applied."""
    arr = np.dstack([_gradient(64, 64, 0, 65535), np.full((64, 64), 65535.0)]).astype(np.uint16)
    arr[:, 48:, 1] = 0
    return _png16(p / "la16.png", arr)


def _check_png16_la(out):
    assert (out[:, -2] == 0).all()  # transparent -> black
    assert out[0, 2, 0] < 5 and out[-1, 2, 0] > 250  # the ramp survives in the opaque part
    assert (out[:, :, 0] == out[:, :, 2]).all()


def _write_dicom_no_preamble(p):
    from pydicom.dataset import Dataset
    from pydicom.uid import SecondaryCaptureImageStorage

    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.set_pixel_data(_gradient(64, 64, 0, 1000).astype(np.uint16), "MONOCHROME2", 10)
    ds.save_as(p / "old.dcm", enforce_file_format=False)  # no 128-byte preamble, no "DICM"
    assert (p / "old.dcm").read_bytes()[128:132] != b"DICM"
    return p / "old.dcm"


def _write_dicom_mono2_8(p):
    return _dicom(p / "m2.dcm", _gradient(64, 64, 10, 200).astype(np.uint8), "MONOCHROME2", 8)


def _write_dicom_rgb(p):
    arr = np.asarray(Image.open(_write_png_rgb(p)))
    return _dicom(p / "rgb.dcm", np.ascontiguousarray(arr), "RGB", 8)


def _write_dicom_multiframe(p):
    frames = np.zeros((2, 64, 64), np.uint16)
    frames[0] = _gradient(64, 64, 0, 4000)  # frame 0: dark top, bright bottom
    frames[1] = _gradient(64, 64, 4000, 0)  # frame 1: the opposite
    return _dicom(p / "frames.dcm", frames, "MONOCHROME2", 12)


FORMATS = {
    "png-L": (_write_png_l, _check_gray_gradient),
    "png-I16": (_write_png_i16, _check_png16_stretched),
    "png-RGB": (_write_png_rgb, _check_red_blue),
    "png-RGBA-partial": (_write_png_rgba, _check_rgba_partial),
    "png-RGBA-opaque": (_write_png_rgba_opaque, _check_red_blue),
    "png-LA": (_write_png_la, lambda out: (out[:, 2] == 200).all() and (out[:, -2] == 0).all()),
    "png-P": (_write_png_p, _check_red_blue),
    "png-P-transparency": (lambda p: _write_png_p(p, transparency=True), _check_palette_transparent),
    "png-RGB16": (_write_png16_rgb, _check_png16_rgb_levels),
    "png-RGBA16": (_write_png16_rgba, _check_png16_rgba),
    "png-LA16": (_write_png16_la, _check_png16_la),
    "jpeg-CMYK": (_write_jpeg_cmyk, _check_cmyk_red),
    "jpeg-progressive": (_write_jpeg_progressive, _check_gray_gradient),
    "dicom-MONOCHROME2-8bit": (_write_dicom_mono2_8, _check_gray_gradient),
    "dicom-RGB": (_write_dicom_rgb, _check_red_blue),
    "dicom-no-preamble": (_write_dicom_no_preamble, _check_gray_gradient),
    "dicom-multiframe-first": (_write_dicom_multiframe, _check_gray_gradient),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_decodes(tmp_path, name):
    writer, check = FORMATS[name]
    path = writer(tmp_path)
    out = read_image(path, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert check(out) is not False
    again = read_image(Path(path), 64)  # determinism, and Path or str both work
    assert np.array_equal(out, again)
    gray = read_gray(path, 16)
    assert gray.shape == (16, 16) and gray.dtype == np.uint8 and gray.flags.c_contiguous


@pytest.mark.parametrize("size", [1, 7, 224])
def test_any_size_is_square(tmp_path, size):
    out = read_image(_write_png_rgb(tmp_path), size)
    assert out.shape == (size, size, 3) and out.flags.c_contiguous


def test_constant_16bit_image_does_not_divide_by_zero(tmp_path):
    path = _save(Image.fromarray(np.full((20, 30), 1234, np.uint16)), tmp_path / "flat.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from 0/0
        out = read_image(path, 8)
    assert (out == 0).all()


def test_16bit_range_is_the_full_resolution_range(tmp_path):
    """A full-range 16-bit image reads like its 8-bit version: the range comes from
    the stored pixels, not from the (smoothed) resized ones."""
    rng = np.random.default_rng(1)
    v8 = rng.integers(0, 256, (90, 70), dtype=np.uint8)
    v8[0, 0], v8[0, 1] = 0, 255
    p8 = _save(Image.fromarray(v8), tmp_path / "v8.png")
    p16 = _save(Image.fromarray(v8.astype(np.uint16) * 257), tmp_path / "v16.png")
    out8, out16 = read_image(p8, 20).astype(int), read_image(p16, 20).astype(int)
    assert np.abs(out8 - out16).max() <= 1 and out16.max() < 230  # the noise averages out


def test_aspect_is_squashed_not_cropped(tmp_path):
    arr = np.zeros((20, 80), np.uint8)
    arr[:, :40] = 255  # left half white
    out = read_image(_save(Image.fromarray(arr), tmp_path / "wide.png"), 20)
    assert out[:, :8].min() == 255 and out[:, 12:].max() == 0


def test_read_gray_matches_read_image_for_gray_files(tmp_path):
    path = _write_png_i16(tmp_path)
    assert np.array_equal(read_gray(path, 32), read_image(path, 32)[:, :, 0])


def test_read_gray_uses_luma_for_colour(tmp_path):
    path = _save(Image.new("RGB", (16, 16), (0, 255, 0)), tmp_path / "green.png")
    assert read_gray(path, 4).mean() == pytest.approx(150, abs=1)  # 0.587 * 255


# -- JPEG orientation and draft --------------------------------------------------------


@pytest.mark.parametrize("orientation, corner", [(6, "top-right"), (8, "bottom-left"), (3, "bottom-right")])
def test_exif_orientation_moves_the_marker(tmp_path, orientation, corner):
    out = read_image(_jpeg_with_orientation(tmp_path / "o.jpg", orientation), 40)[:, :, 0]
    quadrants = {
        "top-left": out[:8, :8],
        "top-right": out[:8, -8:],
        "bottom-left": out[-8:, :8],
        "bottom-right": out[-8:, -8:],
    }
    for name, block in quadrants.items():
        assert (block.mean() > 200) == (name == corner), (name, block.mean())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exif_transpose(tmp_path, orientation):
    path = _jpeg_with_orientation(tmp_path / "o.jpg", orientation)
    with Image.open(path) as im:
        ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB").resize((30, 30), Image.Resampling.BILINEAR))
    assert np.abs(read_image(path, 30).astype(int) - ref).max() <= 2


@pytest.mark.parametrize("progressive", [False, True])
def test_draft_decode_is_close_to_full_decode(tmp_path, progressive):
    path = _big_jpeg(tmp_path / "big.jpg", progressive)
    with Image.open(path) as im:  # reference: full-size decode, then the same resize
        ref = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)).astype(int)
    out = read_image(path, 224)
    assert np.abs(out.astype(int) - ref).mean() < 1.5
    assert np.array_equal(out, read_image(path, 224))  # draft is deterministic


def test_large_jpeg_takes_the_draft_path(tmp_path, monkeypatch):
    sizes = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    read_image(_big_jpeg(tmp_path / "big.jpg"), 224)
    assert sizes == [(400, 500)]  # 1600x2000 decoded at 1/4 scale, still >= 224


# -- DICOM ------------------------------------------------------------------------------


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = np.full((64, 64), 100, np.uint16)
    stored[:, :32] = 4000  # high stored values = white in MONOCHROME1's inverse sense = dark
    out = read_image(_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", 12), 32)
    assert out[:, :12].max() < 30 and out[:, 20:].min() > 225


def test_dicom_rescale_then_window(tmp_path):
    """Stored 100/600/1100 -> slope 2, intercept -1024 -> -824/176/1176; window 176 +- 200.

    Without the rescale the middle band (stored 600) would land above the window (255).
    """
    stored = np.zeros((60, 60), np.uint16)
    stored[:20], stored[20:40], stored[40:] = 100, 600, 1100
    path = _dicom(
        tmp_path / "ct.dcm",
        stored,
        "MONOCHROME2",
        16,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=176,
        WindowWidth=400,
    )
    out = read_image(path, 60)[:, :, 0]
    assert out[5:15].max() == 0
    assert abs(int(np.median(out[25:35])) - 128) <= 3
    assert out[45:55].min() == 255
    assert probe(path) == {"format": "DICOM", "width": 60, "height": 60, "mode": "MONOCHROME2", "bit_depth": 16}


def test_dicom_found_by_magic_without_suffix(tmp_path):
    path = _write_dicom_mono2_8(tmp_path).rename(tmp_path / "IM0001")
    assert read_image(path, 16).shape == (16, 16, 3)
    assert probe(path)["format"] == "DICOM"


def test_dicom_compressed_without_decoder_names_the_package(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    path = _dicom(tmp_path / "ls.dcm", np.zeros((8, 8), np.uint16), "MONOCHROME2", 12)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7not really JPEG-LS"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError) as info:
        read_image(path, 8)
    assert str(info.value).startswith(str(path)) and "pip install pyjpegls" in str(info.value)
    assert "\n" not in str(info.value)


# -- probe --------------------------------------------------------------------------------

PROBES = {
    "png-L": ("PNG", 64, 64, "L", 8),
    "png-I16": ("PNG", 64, 64, "I;16", 16),
    "png-RGBA16": ("PNG", 64, 64, "RGBA", 16),
    "png-P": ("PNG", 64, 64, "P", 2),  # a 4-colour palette is stored with 2-bit indices
    "jpeg-CMYK": ("JPEG", 48, 40, "CMYK", 8),
    "dicom-multiframe-first": ("DICOM", 64, 64, "MONOCHROME2", 12),
}


@pytest.mark.parametrize("name", sorted(PROBES))
def test_probe_reads_the_header(tmp_path, name):
    info = probe(FORMATS[name][0](tmp_path))
    assert info == dict(zip(("format", "width", "height", "mode", "bit_depth"), PROBES[name]))


# -- errors -------------------------------------------------------------------------------


def _truncated(src: Path, fraction: float) -> Path:
    data = src.read_bytes()
    out = src.with_name("cut-" + src.name)
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def _noise_png(p):
    """Incompressible pixels, so half the file is half the image data."""
    rng = np.random.default_rng(0)
    return _save(Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)), p / "noise.png")


BAD_FILES = {
    "zero-byte": (lambda p: _touch(p / "empty.png", b""), "empty (0 bytes)"),
    "text-named-png": (lambda p: _touch(p / "notes.png", b"patient list\n" * 20), "not an image"),
    "text-named-dcm": (lambda p: _touch(p / "notes.dcm", b"patient list\n" * 20), "DICOM"),
    "gif-named-png": (lambda p: _save(Image.new("L", (8, 8)), p / "x.png", format="GIF"), "GIF"),
    "truncated-png": (lambda p: _truncated(_noise_png(p), 0.5), "damaged or incomplete"),
    "truncated-jpeg": (lambda p: _truncated(_big_jpeg(p / "big.jpg"), 0.5), "damaged or incomplete"),
    "truncated-png-header": (lambda p: _touch(p / "h.png", _write_png_l(p).read_bytes()[:30]), "damaged or incomplete"),
    "truncated-png-magic": (lambda p: _touch(p / "m.png", b"\x89PN"), "damaged or incomplete"),
    "truncated-dicom": (lambda p: _truncated(_write_dicom_multiframe(p), 0.5), "DICOM"),
    "missing": (lambda p: p / "nope.png", "not found"),
    "directory": (lambda p: _mkdir(p / "dir.png"), "directory"),
}


def _touch(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("name", sorted(BAD_FILES))
@pytest.mark.parametrize(
    "reader", [lambda p: read_image(p, 32), read_gray, probe], ids=["read_image", "read_gray", "probe"]
)
def test_bad_files_raise_image_read_error(tmp_path, name, reader):
    writer, reason = BAD_FILES[name]
    path = writer(tmp_path)
    if reader is probe and name in ("truncated-png", "truncated-jpeg", "truncated-dicom"):
        probe(path)  # the header is intact: probe does not decode pixels
        return
    with pytest.raises(ImageReadError) as info:
        reader(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and info.value.path == str(path)
    assert reason in message and "\n" not in message


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_truncation_anywhere_never_leaks_library_errors(tmp_path, kind):
    src = _noise_png(tmp_path) if kind == "png" else _big_jpeg(tmp_path / "big.jpg")
    data = src.read_bytes()
    cut = tmp_path / f"cut.{kind}"
    for n in sorted({1, 7, 8, 20, 33, 60, 100, 400, *range(1000, len(data), max(1, len(data) // 23))}):
        cut.write_bytes(data[:n])
        try:
            out = read_image(cut, 16)
        except ImageReadError as exc:
            assert str(exc).startswith(str(cut))
        else:  # only a cut after the last pixel byte may decode
            assert n > 0.9 * len(data) and out.shape == (16, 16, 3)


def test_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")
    path = _write_png_l(tmp_path)  # 64 x 64 = 4096 pixels
    with pytest.raises(ImageReadError) as info:
        read_image(path, 8)
    assert str(info.value).startswith(str(path)) and f"{MAX_PIXELS_ENV}=4096" in str(info.value)
    monkeypatch.setenv(MAX_PIXELS_ENV, "4096")
    assert read_image(path, 8).shape == (8, 8, 3)


def test_too_many_pixels_dicom(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(ImageReadError, match="over the limit"):
        read_image(_write_dicom_mono2_8(tmp_path), 8)


def test_bad_pixel_limit_setting_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ImageReadError, match=MAX_PIXELS_ENV):
        read_image(_write_png_l(tmp_path), 8)


def test_decompression_bomb_header_never_reaches_pil_or_its_warnings(tmp_path, monkeypatch):
    """A 20000 x 20000 header with almost no data: PIL's own Image.open would raise
    DecompressionBombError; we refuse it with our error, and when the limit is raised,
    the missing data is reported as damage, with no PIL warning and no global change."""
    path = _png_raw(tmp_path / "bomb.png", 20_000, 20_000, 8, 0, b"\x00" * 100)
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageReadError, match="decompression bombs"):
            read_image(path, 8)
        monkeypatch.setenv(MAX_PIXELS_ENV, str(500_000_000))
        with pytest.raises(ImageReadError, match="damaged or incomplete"):
            read_image(path, 8)
        assert probe(path)["width"] == 20_000
    assert Image.MAX_IMAGE_PIXELS == before


@pytest.mark.parametrize("size", [0, -3, 2.5, "224", True])
def test_bad_size_is_a_programming_error(tmp_path, size):
    with pytest.raises(ValueError, match="size"):
        read_image(_write_png_l(tmp_path), size)


def test_constants():
    assert IMAGE_SUFFIXES == {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}
    assert DEFAULT_MAX_PIXELS == 150_000_000
    assert isinstance(DECODE_VERSION, str) and DECODE_VERSION


def test_import_stays_light():
    """Decoding runs in worker processes: importing images must not pull in a DL framework."""
    code = (
        "import sys, xrayfeat.data.images; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'jax', 'torch', 'pydicom')]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the real sample ---------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real X-ray sample not found at {REAL_DATA}")
def test_real_sample_decodes_and_probes():
    files = sorted(p for p in REAL_DATA.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    assert len(files) == REAL_COUNT
    formats = set()
    for path in files:
        out = read_image(path, 224)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous, path
        info = probe(path)
        assert info["width"] > 0 and info["height"] > 0, path
        formats.add((info["format"], info["bit_depth"]))
    assert formats >= {("JPEG", 8), ("PNG", 8), ("PNG", 16)}


# -- crafted headers: bytes held and pixel data shorter than declared ---------------------


def test_too_many_bytes_is_refused_before_decoding(tmp_path, monkeypatch):
    """64 x 64 gray is 4,096 bytes held: refused under that byte limit (though under the pixel limit), decoded at it."""
    monkeypatch.setenv(MAX_DECODE_BYTES_ENV, "4095")
    path = _write_png_l(tmp_path)
    with pytest.raises(ImageReadError) as info:
        read_image(path, 8)
    assert str(info.value) == (
        f"{path}: image is 64x64 x 1 sample x 1 byte = 4,096 bytes decoded, over the limit of 4,095 "
        f"(a guard against decompression bombs): if it is genuine, set {MAX_DECODE_BYTES_ENV}=4096")
    monkeypatch.setenv(MAX_DECODE_BYTES_ENV, "4096")
    assert read_image(path, 8).shape == (8, 8, 3)


@pytest.mark.parametrize("value", ["lots", "0", "-5", "1.5"])
def test_bad_byte_limit_setting_is_explained(tmp_path, monkeypatch, value):
    monkeypatch.setenv(MAX_DECODE_BYTES_ENV, value)
    with pytest.raises(ImageReadError, match=f"{MAX_DECODE_BYTES_ENV}='{value}' is not a positive whole number: fix or unset it"):
        read_image(_write_png_l(tmp_path), 8)


def test_byte_limit_counts_what_decoding_holds(tmp_path, monkeypatch):
    """16-bit samples are held as float32 (4 bytes), a palette as RGBA, a JPEG at its draft size, a DICOM as
    float32 plus the file read whole."""
    monkeypatch.setenv(MAX_DECODE_BYTES_ENV, "1")
    cases = {
        _png16(tmp_path / "rgb16.png", np.zeros((10, 20, 3))): "20x10 x 3 samples x 4 bytes (float32, from 16 bits) = 2,400 bytes",
        _save(Image.new("P", (20, 10)), tmp_path / "p.png"): "20x10 x 4 samples x 1 byte = 800 bytes",
        _big_jpeg(tmp_path / "big.jpg"): "200x250 x 1 sample x 1 byte = 50,000 bytes",  # 1600x2000 drafted to 1/8
    }
    for path, held in cases.items():
        with pytest.raises(ImageReadError, match=re.escape(held)):
            read_image(path, 200)
    dicom = _write_dicom_mono2_8(tmp_path)
    with pytest.raises(ImageReadError, match=re.escape(
            f"x 1 sample x 4 bytes (float32, from 9 bits) + {dicom.stat().st_size:,} bytes of stored pixel data")):
        read_image(dicom, 8)


def _short_png(path: Path, rows_present: int, *, width: int = 64, height: int = 64) -> Path:
    """A valid PNG (every CRC right, a complete zlib stream) whose IDAT holds only ``rows_present`` rows."""
    raw = b"".join(b"\x00" + bytes([200]) * width for _ in range(rows_present))
    return _png_raw(path, width, height, 8, 0, raw)


@pytest.mark.parametrize("rows", [0, 1, 32, 63])
def test_png_whose_pixel_data_is_short_is_refused_not_zero_filled(tmp_path, rows):
    path = _short_png(tmp_path / "short.png", rows)
    with pytest.raises(ImageReadError) as info:
        read_image(path, 8)
    assert str(info.value) == (
        f"{path}: the PNG pixel data is shorter than the header declares ({rows * 65:,} of 4,160 bytes): "
        "the file is damaged or incomplete: re-export or re-download it")
    assert (read_image(_short_png(tmp_path / "full.png", 64), 8) == 200).all()


def test_png_short_data_is_counted_across_idat_chunks_and_interlacing(tmp_path):
    """The stream split into many IDAT chunks decodes; an interlaced (Adam7) image is measured pass by pass."""
    data = _write_png_l(tmp_path).read_bytes()
    ihdr_end = 8 + 25
    idat_len = struct.unpack(">I", data[ihdr_end:ihdr_end + 4])[0]
    stream = data[ihdr_end + 8:ihdr_end + 8 + idat_len]

    def chunk(tag, payload):
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    split = data[:ihdr_end] + b"".join(chunk(b"IDAT", stream[i:i + 7]) for i in range(0, len(stream), 7)) + chunk(b"IEND", b"")
    (tmp_path / "split.png").write_bytes(split)
    assert read_image(tmp_path / "split.png", 8).shape == (8, 8, 3)
    arr = np.random.default_rng(3).integers(0, 256, (37, 23), dtype=np.uint8)
    passes = [b"".join(b"\x00" + arr[y, x0::dx].tobytes() for y in range(y0, 37, dy))
              for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                                     (0, 1, 1, 2))]
    adam7 = tmp_path / "adam7.png"
    _png_raw(adam7, 23, 37, 8, 0, b"".join(passes))
    adam7.write_bytes(adam7.read_bytes().replace(struct.pack(">IIBBBBB", 23, 37, 8, 0, 0, 0, 0),
                                                 struct.pack(">IIBBBBB", 23, 37, 8, 0, 0, 0, 1)))
    ihdr = adam7.read_bytes()[12:29]
    adam7.write_bytes(adam7.read_bytes()[:29] + struct.pack(">I", zlib.crc32(ihdr)) + adam7.read_bytes()[33:])
    flat = _save(Image.fromarray(arr), tmp_path / "flat.png")
    assert (read_image(adam7, 8) == read_image(flat, 8)).all()
    short = tmp_path / "adam7-short.png"
    _png_raw(short, 23, 37, 8, 0, b"".join(passes[:-1]))
    short.write_bytes(short.read_bytes()[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + short.read_bytes()[33:])
    with pytest.raises(ImageReadError, match="PNG pixel data is shorter than the header declares"):
        read_image(short, 8)


def test_jpeg_without_its_end_marker_is_refused(tmp_path):
    """A JPEG whose scan is cut and padded with zeros (a pre-allocated download) decodes in libjpeg with only a
    warning; the end-of-image marker is missing, so it is refused. Trailing bytes after the marker are fine."""
    good = _big_jpeg(tmp_path / "good.jpg")
    data = good.read_bytes()
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data[: len(data) - 40] + b"\x00" * 4000)
    with pytest.raises(ImageReadError) as info:
        read_image(padded, 64)
    assert str(info.value) == (f"{padded}: the JPEG pixel data is shorter than the header declares (the data ends "
                               "before its end-of-image marker): the file is damaged or incomplete: re-export or re-download it")
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes(data + b"\x00" * 100)
    assert read_image(trailing, 64).shape == (64, 64, 3)
    assert read_image(_save(Image.open(good), tmp_path / "prog.jpg", progressive=True), 64).shape == (64, 64, 3)


def test_dicom_whose_pixel_data_is_short_is_refused(tmp_path):
    """Two frames declared, one stored: pydicom would decode frame 0; the file is incomplete."""
    import pydicom

    path = _write_dicom_mono2_8(tmp_path)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.save_as(path, enforce_file_format=True)
    size = ds.Rows * ds.Columns
    with pytest.raises(ImageReadError) as info:
        read_image(path, 8)
    assert str(info.value) == (f"{path}: the DICOM pixel data is shorter than the header declares ({size:,} of "
                               f"{2 * size:,} bytes): the file is damaged or incomplete: re-export or re-download it")
