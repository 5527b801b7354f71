"""The report's document model and its two renderers: Markdown and one self-contained HTML file.

A report is built once as a list of blocks (:class:`Heading`, :class:`Para`,
:class:`Table`, :class:`List`, :class:`Figures`, :class:`Folded`) and rendered
twice, so the two outputs always say the same thing. Inline content is a
``str``, a :class:`Span`, or a list of those.

:func:`render_markdown` refers to figures by their relative ``md_path``;
:func:`render_html` embeds every figure as a ``data:`` URI and carries its own
CSS (screen and print), so the page opens offline and loads nothing from
anywhere. Every string is escaped by both renderers: text from a run record is
data, not markup. Each sink has one encoder: :func:`md_text` (Markdown:
backslash escapes for what would start emphasis, code, a table cell, a link or
an image, ``&lt;`` and ``&amp;`` for raw HTML and entities, and a marker at the
start of a block that would make a heading, list, quote or link definition),
:func:`_md_code` (code spans fenced by a longer run of backticks than they
hold), :func:`html_text` (``html.escape`` with quotes, for text and attribute
values alike) and :func:`url_path` (percent-encoding for ``href``s and image
paths). All of them show control characters escaped
(:func:`~xrayfeat.errors.one_line`), never raw. The page fits a laptop screen: every table sits in a box of
the page's width that scrolls sideways when the table is wider, long words in
text and headers wrap instead of widening the page, and figures scale down.

What the blocks say (which tables, which sections) is :mod:`xrayfeat.report.writer`'s
business; this module knows nothing of runs.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from dataclasses import dataclass, field

from xrayfeat.display import html_text, md_code as _md_code, md_text, png_size

__all__ = ["Span", "Heading", "Para", "Table", "List", "Figure", "Figures", "Folded", "png_size",
           "render_markdown", "render_html", "md_text", "html_text", "url_path"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A figure at least this much wider than tall gets the full page width.
_WIDE_ASPECT = 1.8


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Span:
    """Inline text with a role.

    ``flag`` (RANDOM), ``muted``, ``sub`` (secondary detail: its own small line in
    HTML table cells, inline in Markdown), ``code``, ``strong`` or ``link`` (to the
    anchor ``target``).
    """

    text: str
    role: str = ""
    target: str = ""


@dataclass
class Heading:
    level: int
    text: str
    anchor: str = ""
    cls: str = ""


@dataclass
class Para:
    content: object
    cls: str = ""


@dataclass
class Table:
    header: list
    rows: list
    numeric: set = field(default_factory=set)  # column indices aligned right
    cls: str = ""  # "kv": a settings list, rendered without a header row in HTML


@dataclass
class List:
    items: list
    cls: str = ""


@dataclass
class Figure:
    """A PNG figure: embedded in the HTML, referred to by ``md_path`` (relative to the report) in the Markdown."""

    caption: str
    data: bytes
    md_path: str
    full: bool = False  # the full page width whatever its shape (a grid of small images to be read)

    @property
    def wide(self) -> bool:
        """Wide figures (training curves) and ``full`` ones get the full page width."""
        size = png_size(self.data)
        return self.full or (bool(size) and size[1] > 0 and size[0] / size[1] >= _WIDE_ASPECT)


@dataclass
class Figures:
    figures: list


@dataclass
class Folded:
    """Blocks of detail under a one-line ``summary``: closed until clicked in HTML, shown in full in Markdown."""

    summary: object
    blocks: list


# --------------------------------------------------------------------------- Markdown


# what makes a line a heading, quote, list item, thematic break, setext underline or link reference definition
_MD_BLOCK_START = re.compile(r"^(\s*)([#>+=\-\[]|\d{1,9}(?=[.)]))")
# a link the renderer made ("[text](#anchor)": its text holds no bracket, and escaped text never holds "](")
_MD_OWN_LINK = re.compile(r"\s*\[[^\[\]]*\]\(#")


def _md_block_start(line: str) -> str:
    """A block's first line with the character that would make it a heading, list, quote or link definition escaped."""
    match = _MD_BLOCK_START.match(line)
    if not match or _MD_OWN_LINK.match(line):
        return line
    if match.group(2)[0].isdigit():  # "1. x" or "1) x": escape the dot
        end = match.end()
        return line[:end] + "\\" + line[end:]
    return line[:match.start(2)] + "\\" + line[match.start(2):]


def _md_inline(content) -> str:
    if isinstance(content, list):
        parts = [_md_inline(c) for c in content]
        # a fragment ending in "]" followed by one starting with "(" would join into a link: keep them apart
        return "".join(p if i == 0 or not (parts[i - 1].endswith("]") and p.startswith("(")) else "\\" + p
                       for i, p in enumerate(parts))
    if isinstance(content, Span):
        text = md_text(content.text)
        if content.role in ("flag", "strong"):
            stripped = text.strip()
            return text.replace(stripped, f"**{stripped}**") if stripped else text
        if content.role == "code":
            return _md_code(content.text)
        if content.role == "link":
            return f"[{text.replace('[', '(').replace(']', ')')}](#{url_path(content.target)})"
        return text
    return md_text(content)


def _md_block(b) -> str:
    if isinstance(b, Heading):
        return "#" * b.level + " " + md_text(b.text).replace("#", "\\#")  # a closing "#" sequence would be dropped
    if isinstance(b, Para):
        text = _md_block_start(_md_inline(b.content))
        return f"*{text}*" if b.cls == "note" and not text.startswith("`") else text
    if isinstance(b, List):
        return "\n".join("- " + _md_block_start(_md_inline(item)) for item in b.items)
    if isinstance(b, Table):
        lines = ["| " + " | ".join(_md_inline(h) for h in b.header) + " |",
                 "|" + "|".join("---:" if i in b.numeric else "---" for i in range(len(b.header))) + "|"]
        lines += ["| " + " | ".join(_md_inline(c) for c in row) + " |" for row in b.rows]
        return "\n".join(lines)
    if isinstance(b, Figures):
        return "\n\n".join(
            f"![{md_text(f.caption).replace('[', '(').replace(']', ')')}]({url_path(f.md_path)})  \n*{md_text(f.caption)}*"
            for f in b.figures)
    if isinstance(b, Folded):  # Markdown has no folding: the summary, then everything
        return "\n\n".join([_md_block_start(_md_inline(b.summary)), *(_md_block(inner) for inner in b.blocks)])
    raise TypeError(f"A report block must be a Heading, Para, List, Table, Figures or Folded. Got {b!r} instead.")


def render_markdown(blocks) -> str:
    """The blocks as Markdown (GitHub flavour: pipe tables); figures by their ``md_path``."""
    return "\n\n".join(_md_block(b) for b in blocks) + "\n"


# --------------------------------------------------------------------------- HTML

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: #1f2328;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 24px 56px; }
h1, h2, h3, h4, h5, p, li, figcaption { overflow-wrap: anywhere; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 5px; border-bottom: 2px solid #d8dee4; }
h3 { font-size: 15.5px; margin: 22px 0 8px; }
h4 { font-size: 14px; margin: 18px 0 6px; color: #424a53; }
h5 { font-size: 13px; margin: 14px 0 4px; color: #424a53; }
p { margin: 6px 0 10px; }
p.lead { color: #424a53; }
p.note { color: #57606a; font-size: 12.5px; max-width: 78em; }
a { color: #0550ae; text-decoration: none; }
a:hover { text-decoration: underline; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  background: #f3f4f6; padding: 1px 4px; border-radius: 3px; word-break: break-all; }
ul.toc { list-style: none; padding: 0; margin: 8px 0 0; display: flex; flex-wrap: wrap; gap: 4px 18px; }
ul.warnings { padding-left: 20px; }
ul.warnings li { margin: 4px 0; }
h2 + ul.warnings { border-left: 4px solid #bf8700; background: #fff8c5; padding: 8px 12px 8px 30px; }
.scroll { overflow-x: auto; max-width: 100%; margin: 4px 0 8px; }
details { margin: 4px 0 10px; }
summary { cursor: pointer; color: #57606a; font-size: 12.5px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 5px 9px; border-bottom: 1px solid #d8dee4; text-align: left; vertical-align: top; }
thead th { background: #f6f8fa; border-bottom: 1px solid #afb8c1; font-weight: 600; overflow-wrap: break-word; }
tbody tr:nth-child(even) { background: #fafbfc; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
.sub { color: #6e7781; }
td .sub { display: block; font-size: 11.5px; }
table.compare { font-size: 12.5px; }
table.compare th, table.compare td { padding: 5px 6px; }
table.compare thead th { vertical-align: bottom; }
table.compare td:first-child { overflow-wrap: anywhere; min-width: 7em; }
table.kv { width: 100%; }
table.kv td:first-child { width: 11em; color: #424a53; white-space: nowrap; }
table.kv tbody tr:nth-child(even) { background: none; }
.muted { color: #6e7781; }
.flag { display: inline-block; background: #cf222e; color: #fff; font-weight: 700; font-size: 11.5px;
  letter-spacing: .04em; padding: 0 6px; border-radius: 3px; line-height: 1.6; }
.figs { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; max-width: calc(50% - 7px); border: 1px solid #d8dee4; border-radius: 4px; padding: 6px; }
figure.wide { max-width: 100%; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: #57606a; margin-top: 4px; }
@media (max-width: 800px) { figure { max-width: 100%; } main { padding: 16px; } }
@media print {
  body { font-size: 11px; }
  main { max-width: none; padding: 0; }
  h2.run { break-before: page; }
  h2, h3, h4, h5 { break-after: avoid; }
  figure, tr, ul.warnings li { break-inside: avoid; }
  .scroll { overflow: visible; }
  table, table.compare { font-size: 9.5px; }
  td .sub { font-size: 8.5px; }
  th, td, table.compare th, table.compare td { padding: 3px 3px; }
  p.note, figcaption { font-size: 9.5px; }
  .flag { font-size: 8.5px; padding: 0 3px; }
  h1 { font-size: 20px; } h2 { font-size: 16px; } h3 { font-size: 13px; } h4 { font-size: 12px; }
  figure { max-width: calc(50% - 7px); }
  figure.wide { max-width: 100%; }
  a { color: inherit; }
  ul.toc { display: none; }
  .flag, h2 + ul.warnings, thead th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


_esc = html_text


def url_path(text) -> str:
    """``text`` as a URL path or fragment: everything but letters, digits, ``-._~`` and ``/`` percent-encoded.

    For the ``#anchor`` of a link and a Markdown image's relative path, so a name
    with a space, a parenthesis or a quote can never end the URL early.
    """
    return urllib.parse.quote(str(text), safe="/")


def _html_inline(content) -> str:
    if isinstance(content, list):
        return "".join(_html_inline(c) for c in content)
    if isinstance(content, Span):
        text = _esc(content.text)
        if content.role == "link":
            return f'<a href="#{_esc(url_path(content.target))}">{text}</a>'
        if content.role == "code":
            return f"<code>{text}</code>"
        if content.role == "strong":
            return f"<strong>{text}</strong>"
        if content.role in ("flag", "muted", "sub"):
            return f'<span class="{content.role}">{text}</span>'
        return text
    return _esc(content)


def _cls(name: str) -> str:
    return f' class="{_esc(name)}"' if name else ""


def _html_table(b: Table) -> str:
    """A table in its own sideways-scrolling box, so a wide one never widens the page."""
    def cell(tag, i, content):
        return f"<{tag}{_cls('num' if i in b.numeric else '')}>{_html_inline(content)}</{tag}>"

    rows = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in b.rows)
    if b.cls == "kv":  # a settings list: no header row
        return f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>'
    head = "".join(cell("th", i, h) for i, h in enumerate(b.header))
    return f'<div class="scroll"><table{_cls(b.cls)}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _html_figures(b: Figures) -> str:
    figs = []
    for f in b.figures:
        uri = "data:image/png;base64," + base64.b64encode(f.data).decode("ascii")
        figs.append(f'<figure{_cls("wide" if f.wide else "")}><img src="{uri}" alt="{_esc(f.caption)}">'
                    f"<figcaption>{_esc(f.caption)}</figcaption></figure>")
    return '<div class="figs">' + "".join(figs) + "</div>"


def _html_block(b) -> str:
    if isinstance(b, Heading):
        anchor = f' id="{_esc(b.anchor)}"' if b.anchor else ""
        return f"<h{b.level}{anchor}{_cls(b.cls)}>{_esc(b.text)}</h{b.level}>"
    if isinstance(b, Para):
        return f"<p{_cls(b.cls)}>{_html_inline(b.content)}</p>"
    if isinstance(b, List):
        items = "".join(f"<li>{_html_inline(item)}</li>" for item in b.items)
        return f"<ul{_cls(b.cls)}>{items}</ul>"
    if isinstance(b, Table):
        return _html_table(b)
    if isinstance(b, Figures):
        return _html_figures(b)
    if isinstance(b, Folded):
        inner = "\n".join(_html_block(inner) for inner in b.blocks)
        return f"<details><summary>{_html_inline(b.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"A report block must be a Heading, Para, List, Table, Figures or Folded. Got {b!r} instead.")


def render_html(blocks, title: str) -> str:
    """The blocks as one HTML page with its CSS and every figure inline; it loads nothing."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(_html_block(b) for b in blocks) + "\n</main>\n</body>\n</html>\n")
