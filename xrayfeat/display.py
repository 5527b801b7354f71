"""How xrayfeat's objects look in a notebook: the pieces every ``repr`` and ``_repr_html_`` is built from.

Jupyter and IPython show an object through its ``_repr_html_`` (and ``repr`` in
a terminal), as pandas shows a DataFrame and scikit-learn an estimator. The
classes build theirs where they live (a dataset's in
:mod:`xrayfeat.data.summary`, a run's and its results' in
:mod:`xrayfeat.runs.display`) from the pieces here:

* a ``repr`` is one line of bounded length whatever the data's size: at most
  :data:`SHOWN_NAMES` names (each cut at :data:`NAME_CHARS`, :func:`short`);
* HTML tables cut at :data:`MAX_ROWS` rows, with a line saying how many more;
  warnings in a box that cannot be missed, placed first; figures as thumbnails
  (each PNG scaled down to at most :data:`THUMB_PIXELS`, inlined as a ``data:``
  URI); :func:`show_figure` displays a figure inline, never in a window.

Names are data: every string placed in HTML (a class, a path, a warning, a
column) goes through :func:`html_text`, the one HTML encoder (the report uses it
too), so a class named ``<script>`` is shown, never run.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import struct

from xrayfeat.errors import one_line

__all__ = ["SHOWN_NAMES", "NAME_CHARS", "MAX_ROWS", "THUMB_PIXELS", "MAX_THUMBS", "MUTED", "html_text", "md_text", "md_code", "png_size",
           "short", "names_repr", "path_repr", "html_table", "html_title", "warnings_box", "error_box", "html_block",
           "thumbnail", "html_figure", "FigureImage", "ipython_shell", "show_figure"]

#: How many class (or model) names a ``repr`` lists before ``+N more``.
SHOWN_NAMES = 8
#: A name or path longer than this is cut in the middle in a ``repr`` (``…``).
NAME_CHARS = 40
#: Rows an HTML table shows before ``… N more``.
MAX_ROWS = 30
#: The largest side of a thumbnail, in pixels.
THUMB_PIXELS = 320
#: The overlays an explanation shows as thumbnails.
MAX_THUMBS = 12

#: The styles of the HTML (inline: a notebook keeps no stylesheet of ours).
BOX_STYLE = "font-family:sans-serif;font-size:13px;line-height:1.4"
WARN_STYLE = ("border-left:4px solid #c0392b;background:#fdecea;color:#611a15;padding:6px 10px;margin:6px 0")
TABLE_STYLE = "border-collapse:collapse;margin:6px 0"
CELL_STYLE = "border:1px solid #ccc;padding:2px 8px"
MUTED = "color:#666"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- text


def html_text(text) -> str:
    """``text`` for HTML, as element content or a double-quoted attribute value: ``& < > " '`` escaped.

    Control characters are shown escaped (``\\x1b``), as on the terminal.
    """
    return html.escape(one_line(text), quote=True)


# Markdown characters escaped wherever they are: emphasis (* ~), code (`), tables (|), backslash itself
_MD_ALWAYS = re.compile(r"[\\`*~|]")
# "_" opens emphasis only at a word's edge ("hosp_b" stays as it is); "](" is where a link or an image starts
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_text(text) -> str:
    """``text`` as Markdown that shows it as it is: no emphasis, code, link, image, HTML or table cell can come of it.

    Control characters are shown escaped (``\\n``), so the text stays on its line.
    """
    text = one_line(text)
    text = _MD_ALWAYS.sub(lambda m: "\\" + m.group(), text)
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("](", "]\\(")


def md_code(text) -> str:
    """``text`` as a code span: fenced by more backticks than it holds in a row, pipes escaped for table cells."""
    text = one_line(text).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk; None when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(_PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def short(text, limit: int = NAME_CHARS) -> str:
    """``text`` cut in the middle to at most ``limit`` characters (``…`` marks the cut)."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = limit - 1
    return text[: keep - keep // 2] + "…" + text[len(text) - keep // 2:]


def names_repr(names, limit: int = SHOWN_NAMES) -> str:
    """``['a', 'b', … +N more]``: at most ``limit`` names, each cut at :data:`NAME_CHARS` and shown by ``repr``."""
    names = list(names)
    shown = ", ".join(repr(short(n)) for n in names[:limit])
    if len(names) > limit:
        shown += f", … +{len(names) - limit} more"
    return f"[{shown}]"


def path_repr(path) -> str:
    """A path for a ``repr``: quoted, cut in the middle beyond 120 characters; ``None`` as it is."""
    return "None" if path is None else repr(short(os.fspath(path), 120))


# --------------------------------------------------------------------------- HTML pieces


def html_table(header, rows, *, more: int = 0) -> str:
    """An HTML table: every header and cell escaped by :func:`html_text`; ``more`` rows left out said below it."""
    head = "".join(f'<th style="{CELL_STYLE}">{html_text(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(f'<td style="{CELL_STYLE}">{html_text(c)}</td>' for c in row) + "</tr>" for row in rows)
    tail = f'<div style="{MUTED}">… {more} more row{"s" if more != 1 else ""}</div>' if more > 0 else ""
    return f'<table style="{TABLE_STYLE}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{tail}'


def html_title(kind: str, text: str, detail: str = "") -> str:
    line = f"<strong>{html_text(kind)}</strong> <code>{html_text(text)}</code>"
    return f"<div>{line}" + (f' <span style="{MUTED}">{html_text(detail)}</span>' if detail else "") + "</div>"


def warnings_box(warnings) -> str:
    """The warnings, first and unmissable: a red-edged box, one line each with its kind."""
    warnings = list(warnings)
    if not warnings:
        return ""
    items = "".join(f"<li><strong>{html_text(getattr(w, 'kind', 'other'))}</strong>: {html_text(str(w))}</li>"
                    for w in warnings[:MAX_ROWS])
    more = f"<li>… {len(warnings) - MAX_ROWS} more</li>" if len(warnings) > MAX_ROWS else ""
    n = len(warnings)
    return (f'<div class="xrayfeat-warnings" style="{WARN_STYLE}"><strong>{n} warning{"s" if n != 1 else ""}</strong>'
            f'<ul style="margin:2px 0;padding-left:18px">{items}{more}</ul></div>')


def error_box(text: str) -> str:
    return f'<div style="{WARN_STYLE}">{html_text(text)}</div>'


def html_block(*parts: str) -> str:
    return f'<div class="xrayfeat" style="{BOX_STYLE}">' + "".join(p for p in parts if p) + "</div>"


def thumbnail(data: bytes, pixels: int = THUMB_PIXELS) -> bytes:
    """A PNG no larger than ``pixels`` on its longer side: ``data`` scaled down (Pillow), or as it is when it fits.

    ``data`` that Pillow cannot read is given back as it is; the ``<img>`` that
    shows it bounds its size anyway.
    """
    size = png_size(data)
    if size and max(size) <= pixels:
        return data
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((pixels, pixels))
            out = io.BytesIO()
            image.save(out, format="PNG", optimize=True)
            return out.getvalue()
    except Exception:  # a figure Pillow cannot read: shown unscaled, bounded by the <img>'s style
        return data


def html_figure(data: bytes, caption: str, pixels: int = THUMB_PIXELS) -> str:
    uri = "data:image/png;base64," + base64.b64encode(thumbnail(data, pixels)).decode("ascii")
    return (f'<figure style="display:inline-block;margin:4px;vertical-align:top;text-align:center">'
            f'<img src="{uri}" alt="{html_text(caption)}" style="max-width:{pixels}px;max-height:{pixels}px">'
            f'<figcaption style="{MUTED}">{html_text(caption)}</figcaption></figure>')


# --------------------------------------------------------------------------- figures


class FigureImage:
    """A figure's PNG bytes and the file they came from; a notebook shows it inline (``_repr_png_``).

    What ``Run.show`` returns outside IPython; ``os.fspath`` gives the file.
    """

    def __init__(self, name: str, path, data: bytes):
        self.name, self.path, self.data = name, path, data

    def _repr_png_(self) -> bytes:
        return self.data

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"FigureImage({self.name!r}, {path_repr(self.path)}, {len(self.data)} bytes)"


def ipython_shell():
    """The running IPython shell (a terminal IPython or a Jupyter kernel), or None; IPython is never imported here.

    Only a running IPython has imported it, so its absence from ``sys.modules`` is a plain interpreter.
    """
    import sys

    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    try:
        return ipython.get_ipython()
    except Exception:  # an IPython too old or too broken to say: treated as none
        return None


def show_figure(name: str, path, data: bytes):
    """Display the PNG inline when running inside IPython/Jupyter (and return None), else return a :class:`FigureImage`.

    Never opens a window: the bytes are the figure file the run recorded.
    """
    if ipython_shell() is not None:
        from IPython.display import Image, display

        display(Image(data=data, format="png"))
        return None
    return FigureImage(name, path, data)
