"""Reading X-ray pixels: PNG, JPEG and DICOM files to small uint8 arrays.

Every backbone input and every pixel baseline comes through :func:`read_image`
(or :func:`read_gray`), so the exact pixels a feature was computed from are
defined here and versioned by :data:`DECODE_VERSION`.

The rules, and why:

* The whole image is squashed to ``size x size`` (aspect ratio not kept), as
  Keras' ``flow_from_directory`` does, with PIL's antialiased BILINEAR resize.
* 8-bit images keep their values. Images with more than 8 bits (16-bit PNG,
  every DICOM) are mapped to 0..255 by their real range (min..max of the
  full-resolution pixel values), because X-rays often use 10-14 of 16 bits: a
  fixed ``/257`` would leave them dark, and clipping at 255 would destroy them.
  The resize is done in float32 before this mapping, so no precision is lost.
* Transparent pixels are composited over black; palettes are expanded; CMYK and
  other colour modes become RGB; the EXIF orientation is applied.
* JPEGs are decoded with ``draft`` (libjpeg's DCT scaling by 1/2, 1/4 or 1/8),
  which never goes below the target size and is several times faster on large
  radiographs.
* DICOM: modality LUT (rescale slope/intercept), then the VOI LUT or window,
  then MONOCHROME1 is inverted so that bone is bright, like MONOCHROME2; the
  first frame of a multi-frame file is used. This is done silently (it is the
  documented meaning of MONOCHROME1, not a problem with the file).
* Width x height, and the bytes decoding will hold, are checked from the header
  before any decoding (a guard against decompression bombs); see
  :data:`DEFAULT_MAX_PIXELS` and :data:`DEFAULT_MAX_DECODE_BYTES`. Peak memory
  while decoding one file stays under ``5 x`` those bytes plus 64 MiB
  (docs/RELIABILITY.md, ## Images; measured by the tests).
* Pixel data shorter than the header declares is refused before decoding (a
  PNG's inflated IDAT stream, a JPEG without its end-of-image marker, a DICOM's
  PixelData): decoders would fill the rest with zeros.
* Every failure is an :class:`~xrayfeat.errors.ImageReadError` naming the file,
  the reason and, where there is one, the fix. Truncated files are errors,
  never silently padded; running out of memory is one too, never a MemoryError.
* Decoders' warnings about a file's metadata (pydicom on invalid values, which
  real DICOM files often have; Pillow on corrupt EXIF) are not shown: the file
  then decodes, or fails with its reason. ``warnings.catch_warnings`` is
  process-wide before Python 3.14, so decode from processes, not threads.

This module runs inside decoding worker processes: it imports only numpy and
PIL (pydicom lazily, for DICOM files) and must never import Keras/TensorFlow.
It changes no global state (PIL's own bomb check is bypassed by opening files
with the PNG/JPEG plugin classes directly, and replaced by ours).
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

from xrayfeat.data.labels import age_band
from xrayfeat.errors import ImageReadError, control_characters

__all__ = [
    "DECODE_VERSION",
    "DEFAULT_MAX_DECODE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MAX_DECODE_BYTES_ENV",
    "MAX_PIXELS_ENV",
    "decode_bytes",
    "dicom_groups",
    "probe",
    "read_gray",
    "read_image",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
"""File suffixes treated as images (compare ``Path.suffix.lower()``)."""

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
"""The image suffixes of DICOM files: the only files whose headers :func:`dicom_groups` reads."""

DEFAULT_MAX_PIXELS = 150_000_000
"""Largest width x height decoded; more is refused as a likely decompression
bomb. Set the environment variable ``XRAYFEAT_MAX_PIXELS`` to change it."""

MAX_PIXELS_ENV = "XRAYFEAT_MAX_PIXELS"

DEFAULT_MAX_DECODE_BYTES = 512 * 1024 * 1024
"""Largest number of bytes decoding one file may hold (see :func:`decode_bytes`);
more is refused from the header, before decoding. Decoding one file peaks
under ``5 x`` this plus 64 MiB. Set ``XRAYFEAT_MAX_DECODE_BYTES`` to change it."""

MAX_DECODE_BYTES_ENV = "XRAYFEAT_MAX_DECODE_BYTES"

DECODE_VERSION = "pil-draft-bilinear-v1"
"""Identifies the decoding rules; part of the feature-cache fingerprint.
Bump it whenever a change here alters decoded pixel values (resize filter,
draft use, range scaling, alpha, DICOM LUTs...), so that stale features are
never mixed with new ones. Pure refactors and new error messages keep it."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_OTHER_FORMATS = {  # magic bytes of formats people mistake for PNG/JPEG
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"RIFF": "WebP (or another RIFF)",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
    b"%PDF": "PDF",
}
_PIL_PLUGINS = {"PNG": PngImagePlugin.PngImageFile, "JPEG": JpegImagePlugin.JpegImageFile}
# What PIL raises on damaged files (Image.open catches the same family).
_PIL_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    Image.DecompressionBombError,
)
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ORIENT = {  # EXIF orientation -> the numpy transform that displays it upright
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}
_DAMAGED = "the file is damaged or incomplete: re-export or re-download it"


def _why(exc: BaseException) -> str:
    """A library exception's text on one line (the CLI prints one line per error)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def read_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode an image file to a C-contiguous ``uint8`` array ``(size, size, 3)``, RGB.

    Grayscale images are repeated into the three channels. Raises
    :class:`ImageReadError` for any file that cannot be decoded.
    """
    arr = _decode(path, size)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def read_gray(path: str | os.PathLike, size: int = 32) -> np.ndarray:
    """Decode an image file to a C-contiguous ``uint8`` array ``(size, size)``, grayscale.

    The same decoding as :func:`read_image` (colour becomes ITU-R 601 luma);
    used by the 'pixels' sentinel baseline.
    """
    arr = _decode(path, size)
    if arr.ndim == 3:
        arr = np.asarray(Image.fromarray(arr).convert("L"))
    return np.ascontiguousarray(arr)


def probe(path: str | os.PathLike) -> dict:
    """Read only the header: ``{"format", "width", "height", "mode", "bit_depth"}``.

    ``format`` is "PNG", "JPEG" or "DICOM"; ``mode`` the PIL mode or the DICOM
    photometric interpretation; ``bit_depth`` bits per sample (PNG IHDR, JPEG
    precision, DICOM BitsStored). Width and height are as stored (before any
    EXIF rotation). Fast enough for thousands of files; the pixel limit is not
    applied. Raises :class:`ImageReadError` for unreadable files.
    """
    path = os.fspath(path)
    with _open(path) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # see _decode
        kind, head = _sniff(path, f)
        if kind == "DICOM":
            _, header = _read_dicom(path, f, stop_before_pixels=True)
            return {"format": "DICOM", "width": header.columns, "height": header.rows,
                    "mode": header.photometric, "bit_depth": header.bits}
        im = _open_pil(path, f, kind)
        bits = head[24] if kind == "PNG" else getattr(im, "bits", 8)
        return {"format": kind, "width": im.width, "height": im.height, "mode": im.mode, "bit_depth": int(bits)}


def _decode(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode to ``uint8`` ``(size, size)`` or ``(size, size, 3)``; the shared path."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    size = int(size)
    path = os.fspath(path)
    # Decoders warn about odd metadata (invalid DICOM values, corrupt EXIF); the file
    # then either decodes or fails with its reason, so the warnings are not shown.
    with _open(path) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kind, head = _sniff(path, f)
        try:
            if kind == "DICOM":
                return _decode_dicom(path, f, size)
            return _decode_pil(path, f, kind, size, head)
        except MemoryError:
            raise ImageReadError(path, f"not enough memory to decode it: free memory, "
                                       f"or set {MAX_PIXELS_ENV} lower to refuse images this large") from None


def _open(path: str):
    """Open for binary reading, turning OS errors into ImageReadError."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied: check the file's permissions") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot open the file ({exc.strerror or exc})") from None


def _sniff(path: str, f) -> tuple[str, bytes]:
    """Identify the format from the content (not the suffix): PNG, JPEG or DICOM."""
    try:
        head = f.read(132)
        f.seek(0)
    except OSError as exc:
        raise ImageReadError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if not head:
        raise ImageReadError(path, "file is empty (0 bytes): remove it or replace it with the original image")
    for kind, magic in (("PNG", _PNG_MAGIC), ("JPEG", _JPEG_MAGIC)):
        if head.startswith(magic) or magic.startswith(head):  # (a cut-off signature too)
            return kind, head
    if head[128:132] == b"DICM" or Path(path).suffix.lower() in (".dcm", ".dicom"):
        return "DICOM", head
    for magic, name in _OTHER_FORMATS.items():
        if head.startswith(magic):
            raise ImageReadError(path, f"this is a {name} file, not PNG, JPEG or DICOM: convert it to PNG")
    raise ImageReadError(
        path,
        f"not an image: the content is not PNG, JPEG or DICOM (it starts with {head[:12]!r}); "
        "remove it from the dataset or replace it with the real image",
    )


def _env_limit(path: str, name: str, default: int) -> int:
    """A positive whole number from the environment variable ``name`` (``default`` when unset)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ImageReadError(path, f"{name}={raw!r} is not a positive whole number: fix or unset it")
    return value


def _max_pixels(path: str) -> int:
    return _env_limit(path, MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)


def _max_decode_bytes(path: str) -> int:
    return _env_limit(path, MAX_DECODE_BYTES_ENV, DEFAULT_MAX_DECODE_BYTES)


def _check_pixels(path: str, width: int, height: int) -> None:
    """Refuse images over the pixel limit, from header sizes, before decoding."""
    limit = _max_pixels(path)
    pixels = int(width) * int(height)
    if pixels > limit:
        raise ImageReadError(
            path,
            f"image is {width}x{height} = {pixels:,} pixels, over the limit of {limit:,} "
            f"(a guard against decompression bombs): if it is genuine, set {MAX_PIXELS_ENV}={pixels}",
        )


def decode_bytes(width: int, height: int, samples: int, bits: int, *, stored_bytes: int = 0) -> int:
    """Bytes decoding a ``width x height`` image of ``samples`` per pixel at ``bits`` holds.

    Samples of 8 bits or fewer are held as one byte each; deeper ones (16-bit
    PNG, every DICOM) as float32, four bytes each. ``stored_bytes``: what is
    read whole besides (a DICOM's pixel data, every frame of it).
    """
    per_sample = 1 if bits <= 8 else 4
    return int(width) * int(height) * int(samples) * per_sample + int(stored_bytes)


def _check_bytes(path: str, width: int, height: int, samples: int, bits: int, *, stored_bytes: int = 0) -> None:
    """Refuse images whose decoding would hold more than the byte limit, from the header, before decoding."""
    limit = _max_decode_bytes(path)
    held = decode_bytes(width, height, samples, bits, stored_bytes=stored_bytes)
    if held > limit:
        how = f"{samples} sample{'s' * (samples != 1)} x {'1 byte' if bits <= 8 else f'4 bytes (float32, from {bits} bits)'}"
        stored = f" + {stored_bytes:,} bytes of stored pixel data" if stored_bytes else ""
        raise ImageReadError(
            path,
            f"image is {width}x{height} x {how}{stored} = {held:,} bytes decoded, over the limit of {limit:,} "
            f"(a guard against decompression bombs): if it is genuine, set {MAX_DECODE_BYTES_ENV}={held}",
        )


def _short(path: str, kind: str, got: int | None, expected: int | None, what: str = "") -> ImageReadError:
    """Pixel data that ends before the header's size: never decoded (decoders would fill the rest with zeros)."""
    counts = f" ({got:,} of {expected:,} bytes)" if got is not None else ""
    return ImageReadError(path, f"the {kind} pixel data is shorter than the header declares{counts}{what}: {_DAMAGED}")


# -- PNG and JPEG (PIL) --------------------------------------------------------------


def _open_pil(path: str, f, kind: str):
    """Parse the PNG/JPEG header with the plugin class (skips PIL's global bomb check)."""
    try:
        return _PIL_PLUGINS[kind](f)
    except _PIL_ERRORS as exc:
        raise ImageReadError(path, f"cannot read the {kind} header ({_why(exc)}): {_DAMAGED}") from None


def _decode_pil(path: str, f, kind: str, size: int, head: bytes) -> np.ndarray:
    im = _open_pil(path, f, kind)
    _check_pixels(path, *im.size)
    if kind == "JPEG":
        im.draft(im.mode, (size, size))  # DCT scaling; the result stays >= size
        _check_bytes(path, *im.size, len(im.getbands()), 8)
        _check_jpeg_end(path, f)
    else:
        width, height, bits, color_type, interlace = struct.unpack(">IIBB2xB", head[16:29])
        _check_bytes(path, width, height, _PNG_SAMPLES.get(color_type, 4), bits)
        _check_png_data(path, f, width, height, bits, color_type, interlace)
    try:
        pixels = _load_pixels(im, f)
        orientation = _orientation(im)
        if isinstance(pixels, np.ndarray):
            out = _resize_stretch(pixels, size)
        else:
            out = np.asarray(pixels.resize((size, size), Image.Resampling.BILINEAR))
    except _PIL_ERRORS as exc:
        raise ImageReadError(path, f"cannot decode the {kind} pixel data ({_why(exc)}): {_DAMAGED}") from None
    return _ORIENT.get(orientation, lambda a: a)(out)

# PNG colour type -> samples held per pixel (a palette is expanded to RGBA)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel as stored
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_CHUNK = 1 << 16


def _png_raw_size(width: int, height: int, bits: int, color_type: int, interlace: int) -> int:
    """Bytes the IDAT stream must inflate to: each row's filter byte and packed samples, per Adam7 pass if interlaced."""
    bits_per_pixel = bits * _PNG_CHANNELS.get(color_type, 4)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            total += h * (1 + (w * bits_per_pixel + 7) // 8)
    return total


def _check_png_data(path: str, f, width: int, height: int, bits: int, color_type: int, interlace: int) -> None:
    """Refuse a PNG whose IDAT data inflates to fewer bytes than its header declares.

    Pillow fills the missing rows with zeros (a black image, stored and trained
    on). The IDAT chunks are inflated in pieces, counting bytes and keeping
    none, and only up to the declared size.
    """
    expected = _png_raw_size(width, height, bits, color_type, interlace)
    inflate = zlib.decompressobj()
    got, seen_idat = 0, False
    try:
        f.seek(8)
        while got < expected and not inflate.eof:
            header = f.read(8)
            if len(header) < 8:
                break
            length, tag = struct.unpack(">I4s", header)
            if tag != b"IDAT":
                if seen_idat or tag == b"IEND":  # IDAT chunks are consecutive
                    break
                f.seek(length + 4, os.SEEK_CUR)
                continue
            seen_idat, left = True, length
            while left and got < expected and not inflate.eof:
                data = f.read(min(left, _CHUNK))
                if not data:
                    break
                left -= len(data)
                while data and got < expected and not inflate.eof:
                    got += len(inflate.decompress(data, _CHUNK))
                    data = inflate.unconsumed_tail
            f.seek(left + 4, os.SEEK_CUR)
    except (OSError, zlib.error) as exc:
        raise ImageReadError(path, f"cannot decode the PNG pixel data ({_why(exc)}): {_DAMAGED}") from None
    finally:
        f.seek(0)
    if got < expected:
        raise _short(path, "PNG", got, expected)


def _check_jpeg_end(path: str, f) -> None:
    """Refuse a JPEG whose data ends before its end-of-image marker (cut, or padded with zeros).

    Walks the marker segments and the entropy-coded data of each scan, in
    pieces; libjpeg would fill what is missing with grey and only warn.
    """
    try:
        if not _jpeg_has_end(f):
            raise _short(path, "JPEG", None, None, " (the data ends before its end-of-image marker)")
    except OSError as exc:
        raise ImageReadError(path, f"cannot read the file ({exc.strerror or exc})") from None
    finally:
        f.seek(0)


def _jpeg_has_end(f) -> bool:
    f.seek(2)  # after SOI
    while True:
        if not _next_ff(f):  # bytes between segments: libjpeg skips them too
            return False
        byte = f.read(1)
        while byte == b"\xff":  # fill bytes
            byte = f.read(1)
        if not byte:
            return False
        marker = byte[0]
        if marker == 0xD9:
            return True
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue
        size = f.read(2)
        if len(size) < 2:
            return False
        f.seek(struct.unpack(">H", size)[0] - 2, os.SEEK_CUR)
        if marker == 0xDA and not _skip_entropy_data(f):
            return False


def _next_ff(f) -> bool:
    """Move ``f`` to the next 0xFF byte; False at the end of the file."""
    while True:
        start = f.tell()
        block = f.read(_CHUNK)
        if not block:
            return False
        at = block.find(b"\xff")
        if at != -1:
            f.seek(start + at)
            return True


def _skip_entropy_data(f) -> bool:
    """Move ``f`` to the marker after a scan's entropy-coded data; False at the end of the file."""
    carry = b""
    while True:
        start = f.tell() - len(carry)
        block = carry + f.read(_CHUNK)
        if len(block) <= len(carry):
            return False
        at = block.find(b"\xff")
        while at != -1 and at + 1 < len(block):
            nxt = block[at + 1]
            if nxt != 0x00 and not 0xD0 <= nxt <= 0xD7 and nxt != 0xFF:
                f.seek(start + at)
                return True
            at = block.find(b"\xff", at + 1)
        carry = block[-1:] if block.endswith(b"\xff") else b""


def _load_pixels(im, f) -> Image.Image | np.ndarray:
    """Load ``im``: an 8-bit "L"/"RGB" image, or a float array for >8-bit data."""
    rawmode = im.tile[0][3] if len(im.tile) == 1 else None  # (codec, extents, offset, args)
    if im.format == "PNG" and rawmode in ("RGB;16B", "RGBA;16B"):
        return _png16_color(im, f)
    im.load()
    if im.mode in _HIGH_BIT_MODES:
        return np.asarray(im, dtype=np.float32)
    if im.mode in ("P", "PA", "La", "RGBa"):
        im = im.convert("RGBA")  # palette (with its transparency) or premultiplied alpha
    elif im.mode in ("L", "RGB") and "transparency" in im.info:
        im = im.convert("LA" if im.mode == "L" else "RGBA")  # tRNS colour key
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode not in ("L", "RGB", "LA", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, ...
    if im.mode in ("LA", "RGBA"):
        color = im.convert(im.mode[:-1])
        alpha = im.getchannel("A")
        if alpha.getextrema()[0] < 255:  # composite over black, else just drop alpha
            color = Image.composite(color, Image.new(color.mode, im.size), alpha)
        im = color
    return im


def _png16_color(im, f) -> np.ndarray:
    """A 16-bit RGB(A) PNG as float, all 16 bits.

    PIL has no 16-bit colour mode: it keeps the high byte of each sample. The
    same zlib stream unpacked as little-endian ("...;16L") yields the low bytes,
    so a second decode (about twice the time) recovers the full values. Alpha is
    composited over black. (16-bit grey+alpha PNGs, which PIL opens as RGBA from
    "LA;16B", have no such unpacker and keep PIL's 8-bit reduction.)
    """
    codec, extents, offset, rawmode = im.tile[0]
    im.load()
    f.seek(0)
    low = PngImagePlugin.PngImageFile(f)
    low.tile = [(codec, extents, offset, rawmode.replace(";16B", ";16L"))]
    low.load()
    arr = np.asarray(im, dtype=np.float32) * 256 + np.asarray(low)  # exact in float32
    if arr.shape[2] == 4:
        alpha = arr[:, :, 3]
        arr = arr[:, :, :3] * (alpha / 65535)[:, :, None] if alpha.min() < 65535 else arr[:, :, :3]
    return arr


def _orientation(im) -> int:
    """The EXIF (or XMP) orientation tag; 1 when absent or unreadable metadata."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except _PIL_ERRORS:  # damaged EXIF must not make the pixels unreadable
        return 1


def _resize_stretch(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize a float ``(H, W[, C])`` array per channel, then map its min..max to 0..255.

    The range is taken from the full-resolution values (one range for all
    channels, so colours keep their balance); the resize stays within it.
    """
    lo, hi = float(arr.min()), float(arr.max())
    channels = arr[:, :, None] if arr.ndim == 2 else arr
    out = np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(channels[:, :, c], dtype=np.float32)).resize(
                    (size, size), Image.Resampling.BILINEAR
                )
            )
            for c in range(channels.shape[2])
        ],
        axis=2,
    )
    scale = 255.0 / (hi - lo) if hi > lo else 0.0  # a constant image becomes black
    out = np.clip(np.rint((out - lo) * scale), 0, 255).astype(np.uint8)
    return out[:, :, 0] if arr.ndim == 2 else out


# -- DICOM (pydicom, imported lazily) -------------------------------------------------


class _DicomHeader(NamedTuple):
    """What decoding needs from a DICOM header, read once where errors are caught."""

    rows: int
    columns: int
    photometric: str
    bits: int
    has_pixels: bool
    samples: int = 1
    stored_bytes: int = 0  # Rows x Columns x SamplesPerPixel x BitsAllocated / 8 x NumberOfFrames


def _dicom_errors() -> tuple[type[BaseException], ...]:
    """What pydicom raises on damaged files: its own errors, and plain ones from parsing garbage lazily."""
    from pydicom.errors import BytesLengthException, InvalidDicomError

    return (InvalidDicomError, BytesLengthException, OSError, ValueError, TypeError, EOFError, KeyError,
            AttributeError, IndexError, NotImplementedError, RuntimeError, OverflowError, struct.error)


def _read_dicom(path: str, f, stop_before_pixels: bool):
    """Read a DICOM dataset and its :class:`_DicomHeader` (``force``, so files without the preamble work too).

    pydicom parses elements when they are first used, so every header value is
    read here, inside the one place that turns a damaged file into its error.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(f, force=True, stop_before_pixels=stop_before_pixels)
        rows, cols = ds.get("Rows"), ds.get("Columns")
        if not rows or not cols:
            raise ImageReadError(
                path, "no image in this DICOM file (no Rows/Columns; a report, DICOMDIR or not DICOM at all?): "
                "export the image itself from the PACS or viewer"
            )
        header = _DicomHeader(
            rows=int(rows), columns=int(cols),
            photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
            bits=int(ds.get("BitsStored", ds.get("BitsAllocated", 8))),
            has_pixels=any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")),
            samples=max(1, int(ds.get("SamplesPerPixel", 1) or 1)),
            stored_bytes=_dicom_stored_bytes(ds, int(rows), int(cols)),
        )
    except _dicom_errors() as exc:
        raise ImageReadError(path, f"cannot read the DICOM file ({_why(exc)}): {_DAMAGED}") from None
    return ds, header


def _dicom_stored_bytes(ds, rows: int, cols: int) -> int:
    """The pixel data's declared size: Rows x Columns x SamplesPerPixel x BitsAllocated / 8 x NumberOfFrames."""
    samples = max(1, int(ds.get("SamplesPerPixel", 1) or 1))
    allocated = max(1, int(ds.get("BitsAllocated", 8) or 8))
    frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    return (rows * cols * samples * allocated * frames + 7) // 8


def _check_dicom_length(path: str, ds, header: _DicomHeader) -> None:
    """Refuse native (uncompressed) pixel data shorter than the header declares, for every frame."""
    meta = getattr(ds, "file_meta", None)
    try:
        uid = meta.get("TransferSyntaxUID") if meta is not None else None
        if uid is not None and uid.is_compressed:
            return  # encapsulated: the decoder finds a short frame
        element = next((ds[k] for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
        value = element.value if element is not None else None
    except _dicom_errors():
        return  # pixel_array then gives the reason
    if isinstance(value, (bytes, bytearray)) and len(value) < header.stored_bytes:
        raise _short(path, "DICOM", len(value), header.stored_bytes)


def _decode_dicom(path: str, f, size: int) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

    # The header alone first: the limits hold before the pixel data is read (pydicom reads it whole).
    _, header = _read_dicom(path, f, stop_before_pixels=True)
    _check_pixels(path, header.columns, header.rows)
    f.seek(0, os.SEEK_END)
    file_size = f.tell()
    f.seek(0)
    stored = max(header.stored_bytes, file_size)
    _check_bytes(path, header.columns, header.rows, header.samples, max(header.bits, 9), stored_bytes=stored)
    ds, header = _read_dicom(path, f, stop_before_pixels=False)
    if not header.has_pixels:
        raise ImageReadError(
            path, "this DICOM file has no pixel data (only a header): export the image itself from the PACS or viewer"
        )
    _check_dicom_length(path, ds, header)
    try:
        arr = pixel_array(ds, index=0)  # first frame only; YBR becomes RGB
        if header.photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        elif header.photometric.startswith("MONOCHROME"):
            arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
        arr = np.asarray(arr, dtype=np.float32)
    except _dicom_errors() as exc:
        raise _dicom_decode_error(path, ds, exc) from None
    if header.photometric == "MONOCHROME1":
        arr = -arr  # low values are white; the range mapping then makes them 255
    return _resize_stretch(arr, size)


def _dicom_decode_error(path: str, ds, exc: BaseException) -> ImageReadError:
    """Name the missing decoder package when the transfer syntax is compressed."""
    damaged = ImageReadError(path, f"cannot decode the DICOM pixel data ({_why(exc)}): {_DAMAGED}")
    meta = getattr(ds, "file_meta", None)
    try:
        uid = meta.get("TransferSyntaxUID") if meta is not None else None
        compressed = uid is not None and uid.is_compressed
    except _dicom_errors():  # a damaged or unknown transfer syntax UID
        return damaged
    if not compressed:
        return damaged
    name = uid.name
    if "JPEG-LS" in name:
        fix = "pip install pyjpegls"
    elif "2000" in name or "High-Throughput" in name:
        fix = "pip install pylibjpeg pylibjpeg-openjpeg"
    elif "JPEG" in name:
        fix = "pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm)"
    else:
        fix = "pip install python-gdcm"
    return ImageReadError(
        path, f"pixel data is compressed as '{name}' ({uid}) and could not be decoded ({_why(exc)}); "
        f"if the file is intact, install a decoder for it: {fix}"
    )


# -- patient groups from DICOM headers ------------------------------------------------

_DICOM_GROUP_TAGS = ("PatientSex", "PatientAge", "ViewPosition")
_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}  # DICOM AS: nnnD, nnnW, nnnM, nnnY
_SEXES = frozenset({"F", "M"})


def dicom_groups(path: str | os.PathLike) -> tuple[tuple[str, str], ...]:
    """The patient groups a DICOM header states: ``(("age", "60-80"), ("sex", "F"), ("view", "PA"))``, sorted.

    Reads only the three elements, never the pixel data: PatientSex (0010,0040)
    gives ``sex`` (F or M; O and anything else are left out), PatientAge
    (0010,1010; ``065Y``, ``012M``, ``003W``, ``010D``, or a bare number of
    years) gives ``age`` as a band of :data:`xrayfeat.data.labels.AGE_BANDS`,
    and ViewPosition (0018,5101) gives ``view``, upper case. An element that is
    absent, empty or unreadable is left out, and so is every group of a file
    whose header cannot be read (decoding it later says what is wrong with it).
    """
    import pydicom

    path = os.fspath(path)
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid values are common in real headers; see _decode
            ds = pydicom.dcmread(f, force=True, stop_before_pixels=True, specific_tags=list(_DICOM_GROUP_TAGS))
            sex, age, view = (_dicom_text(ds, tag) for tag in _DICOM_GROUP_TAGS)
    except _dicom_errors():
        return ()
    pairs = []
    band = _dicom_age(age)
    if band is not None:
        pairs.append(("age", band))
    if sex is not None and sex.upper() in _SEXES:
        pairs.append(("sex", sex.upper()))
    if view is not None:
        pairs.append(("view", view.upper()))
    return tuple(pairs)


def _dicom_text(ds, tag: str) -> str | None:
    """One element's value as stripped text; None when absent, empty, multi-valued or holding control characters."""
    from pydicom.multival import MultiValue

    value = ds.get(tag)
    if value is None or isinstance(value, (MultiValue, list, tuple, bytes)):
        return None
    text = str(value).strip()
    return text if text and not control_characters(text) else None


def _dicom_age(text: str | None) -> str | None:
    """The age band of a DICOM age string (``065Y`` is 65 years, ``012M`` one year, ``003W`` three weeks)."""
    if not text:
        return None
    unit = text[-1].upper()
    digits = (text[:-1] if unit in _AGE_UNITS else text).strip()
    if not re.fullmatch(r"[0-9]{1,3}", digits):
        return None
    return age_band(int(digits) * _AGE_UNITS.get(unit, 1.0))
