"""How datasets, runs and results look in a notebook: a short ``repr`` and an HTML ``_repr_html_``.

Jupyter and IPython show an object through its ``_repr_html_`` (and ``repr`` in
a terminal), as pandas shows a DataFrame and scikit-learn an estimator. Each
function here builds one of them for :class:`~xrayfeat.data.datasets.Dataset`,
:class:`~xrayfeat.runs.loaded.Run`, and the results of ``predict``, ``evaluate``
and ``explain``; the classes call them.

* A ``repr`` is one line of bounded length whatever the dataset's size: counts,
  at most :data:`SHOWN_NAMES` class names (each cut at :data:`NAME_CHARS`), the
  place, the number of warnings.
* The HTML puts a run's or an evaluation's warnings first, in a box that cannot
  be missed, then the tables (counts per split × class; each model's accuracy
  with its interval, balanced accuracy, ROC-AUC and loss), then thumbnails of the
  figures: each PNG scaled down to at most :data:`THUMB_PIXELS` and inlined as a
  ``data:`` URI, shown no larger than that. Long tables are cut at
  :data:`MAX_ROWS` rows, with a line saying how many more there are.

Names are data: every string placed in the HTML (a class, a path, a warning, a
column) goes through :func:`~xrayfeat.report.document.html_text`, the report's
own encoder, so a class named ``<script>`` is shown, never run. A run's figures
and metrics are read through its record (sha256-checked); a file that fails the
check is shown as its one-line error in place of the figure or table, never
raised from a display.
"""

from __future__ import annotations

import base64
import io
import os
from collections import Counter

from xrayfeat.errors import XrayfeatError, first_line
from xrayfeat.report.document import html_text

__all__ = ["SHOWN_NAMES", "NAME_CHARS", "MAX_ROWS", "THUMB_PIXELS", "short", "names_repr", "dataset_repr",
           "dataset_html", "run_repr", "run_html", "predict_repr", "predict_html", "evaluate_repr", "evaluate_html",
           "explain_repr", "explain_html", "thumbnail", "FigureImage"]

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
_DASH = "—"

_BOX = "font-family:sans-serif;font-size:13px;line-height:1.4"
_WARN = ("border-left:4px solid #c0392b;background:#fdecea;color:#611a15;padding:6px 10px;margin:6px 0")
_TABLE = "border-collapse:collapse;margin:6px 0"
_CELL = "border:1px solid #ccc;padding:2px 8px"
_MUTED = "color:#666"


# --------------------------------------------------------------------------- text


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


def _path_repr(path) -> str:
    """A path for a ``repr``: quoted, cut in the middle beyond 120 characters; ``None`` as it is."""
    return "None" if path is None else repr(short(os.fspath(path), 120))


def _num(x, digits: int = 3) -> str:
    from xrayfeat.runs.record import finite_float

    x = finite_float(x)
    return _DASH if x is None else f"{x:.{digits}f}"


def _with_ci(value, ci) -> str:
    text = _num(value)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and text != _DASH:
        text += f" [{_num(ci[0])}, {_num(ci[1])}]"
    return text


def _signed(x) -> str:
    text = _num(x)
    return text if text == _DASH or text.startswith("-") else "+" + text


def _change(inside, outside):
    from xrayfeat.runs.record import finite_float

    a, b = finite_float(inside), finite_float(outside)
    return None if a is None or b is None else b - a


# --------------------------------------------------------------------------- HTML pieces


def _table(header, rows, *, more: int = 0) -> str:
    """An HTML table: every header and cell escaped by :func:`html_text`; ``more`` rows left out said below it."""
    head = "".join(f'<th style="{_CELL}">{html_text(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(f'<td style="{_CELL}">{html_text(c)}</td>' for c in row) + "</tr>" for row in rows)
    tail = f'<div style="{_MUTED}">… {more} more row{"s" if more != 1 else ""}</div>' if more > 0 else ""
    return f'<table style="{_TABLE}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{tail}'


def _title(kind: str, text: str, detail: str = "") -> str:
    line = f"<strong>{html_text(kind)}</strong> <code>{html_text(text)}</code>"
    return f"<div>{line}" + (f' <span style="{_MUTED}">{html_text(detail)}</span>' if detail else "") + "</div>"


def _warnings_box(warnings) -> str:
    """The warnings, first and unmissable: a red-edged box, one line each with its kind."""
    warnings = list(warnings)
    if not warnings:
        return ""
    items = "".join(f"<li><strong>{html_text(getattr(w, 'kind', 'other'))}</strong>: {html_text(str(w))}</li>"
                    for w in warnings[:MAX_ROWS])
    more = f"<li>… {len(warnings) - MAX_ROWS} more</li>" if len(warnings) > MAX_ROWS else ""
    n = len(warnings)
    return (f'<div class="xrayfeat-warnings" style="{_WARN}"><strong>{n} warning{"s" if n != 1 else ""}</strong>'
            f'<ul style="margin:2px 0;padding-left:18px">{items}{more}</ul></div>')


def _error(text: str) -> str:
    return f'<div style="{_WARN}">{html_text(text)}</div>'


def _wrap(*parts: str) -> str:
    return f'<div class="xrayfeat" style="{_BOX}">' + "".join(p for p in parts if p) + "</div>"


def thumbnail(data: bytes, pixels: int = THUMB_PIXELS) -> bytes:
    """A PNG no larger than ``pixels`` on its longer side: ``data`` scaled down (Pillow), or as it is when it fits.

    ``data`` that Pillow cannot read is given back as it is; the ``<img>`` that
    shows it bounds its size anyway.
    """
    from xrayfeat.report.document import png_size

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


def _img(data: bytes, caption: str, pixels: int = THUMB_PIXELS) -> str:
    uri = "data:image/png;base64," + base64.b64encode(thumbnail(data, pixels)).decode("ascii")
    return (f'<figure style="display:inline-block;margin:4px;vertical-align:top;text-align:center">'
            f'<img src="{uri}" alt="{html_text(caption)}" style="max-width:{pixels}px;max-height:{pixels}px">'
            f'<figcaption style="{_MUTED}">{html_text(caption)}</figcaption></figure>')


# --------------------------------------------------------------------------- Dataset


def _dataset_counts(dataset) -> tuple[Counter, Counter]:
    by_cell = Counter((item.label, item.split) for item in dataset.items)
    by_split = Counter(item.split for item in dataset.items)
    return by_cell, by_split


def dataset_repr(dataset) -> str:
    """``Dataset('ROOT', layout=…, images=N, classes=[…], splits={…}, skipped=K)``, bounded whatever N."""
    _, by_split = _dataset_counts(dataset)
    splits = ", ".join(f"{s!r}: {by_split[s]}" for s in dataset.splits)
    return (f"Dataset({_path_repr(dataset.root)}, layout={dataset.layout!r}, images={len(dataset.items)}, "
            f"classes={names_repr(dataset.classes)}, splits={{{splits}}}, skipped={len(dataset.skipped)})")


def dataset_html(dataset) -> str:
    """The images per class (rows) and split (columns) with totals, under the root, layout and what items carry."""
    by_cell, by_split = _dataset_counts(dataset)
    splits = list(dataset.splits)
    rows = [[name, *(by_cell[name, s] for s in splits), sum(by_cell[name, s] for s in splits)]
            for name in dataset.classes[:MAX_ROWS]]
    rows.append(["total", *(by_split[s] for s in splits), len(dataset.items)])
    notes = [f"layout {dataset.layout}", f"{len(dataset.items)} images", f"{len(dataset.classes)} classes"]
    if dataset.has_patients:
        notes.append(f"{len({i.patient_id for i in dataset.items if i.patient_id is not None})} patients")
    if dataset.has_sources:
        notes.append(f"{len({i.source for i in dataset.items if i.source is not None})} sources")
    if dataset.skipped:
        notes.append(f"{len(dataset.skipped)} files skipped (see .skipped)")
    return _wrap(_title("Dataset", str(dataset.root), " · ".join(notes)),
                 _table(["class", *splits, "total"], rows, more=len(dataset.classes) - MAX_ROWS))


# --------------------------------------------------------------------------- Run


def run_repr(run) -> str:
    """``Run('PATH', task=…, backbone=…, classes=[…], warnings=N)``."""
    return (f"Run({_path_repr(run.path)}, task={short(run.task)!r}, backbone={run.backbone!r}, "
            f"classes={names_repr(run.classes)}, warnings={len(run.record.warnings)})")


def _summary_rows(models: dict) -> list[list]:
    rows = []
    for name, m in models.items():
        rows.append([name, _with_ci(m["accuracy"], (m.get("ci") or {}).get("accuracy")), _num(m["balanced_accuracy"]),
                     _num(m["roc_auc"]), _num(m["loss"]), m["n"]])
    return rows


_SUMMARY_HEADER = ["model", "accuracy [CI]", "balanced accuracy", "ROC-AUC", "loss", "n"]


def _run_figures(run) -> list[tuple[str, bytes | None, str]]:
    """(name, bytes or None, error) of each figure of the run, its recorded ones read sha256-checked."""
    found = []
    for name in run.figure_names(external=False):
        try:
            found.append((name, run.figure_bytes(name), ""))
        except (XrayfeatError, OSError) as exc:
            found.append((name, None, first_line(exc)))
    return found


def run_html(run) -> str:
    """The run's warnings, its test summary (and external results), then thumbnails of its figures."""
    from xrayfeat.runs.tables import models_of

    record = run.record
    counts = " · ".join(f"{k} {v}" for k, v in record.counts.items() if k != "skipped" or v)
    detail = f"task {record.task} · {record.backbone}{' (RANDOM weights)' if record.random_weights else ''} · " \
             f"{len(record.classes)} classes · {counts}"
    parts = [_title("Run", str(run.path), detail), _warnings_box(record.warnings)]
    try:
        models = models_of(run.metrics)
        parts.append(_table(_SUMMARY_HEADER, _summary_rows(models)))
    except XrayfeatError as exc:
        parts.append(_error(first_line(exc)))
        models = {}
    for name, info in (record.external or {}).items():
        try:
            outside = models_of(record.external_metrics(name))
        except XrayfeatError as exc:
            parts.append(_error(first_line(exc)))
            continue
        rows = [[model, _with_ci(m["accuracy"], (m.get("ci") or {}).get("accuracy")),
                 _signed(_change((models.get(model) or {}).get("accuracy"), m["accuracy"])), _num(m["roc_auc"]), m["n"]]
                for model, m in outside.items()]
        parts.append(f"<div>External: <code>{html_text(name)}</code> "
                     f'<span style="{_MUTED}">{html_text(info.get("excluded", 0))} excluded</span></div>')
        parts.append(_table(["model", "accuracy [CI]", "Δ accuracy vs internal", "ROC-AUC", "n"], rows))
    figures = []
    for name, data, error in _run_figures(run):
        figures.append(_img(data, name) if data is not None else _error(f"{name}: {error}"))
    if figures:
        parts.append("<div>" + "".join(figures) + "</div>")
    return _wrap(*parts)


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
        return f"FigureImage({self.name!r}, {_path_repr(self.path)}, {len(self.data)} bytes)"


def show_figure(name: str, path, data: bytes):
    """Display the PNG inline when running inside IPython/Jupyter (and return None), else return a :class:`FigureImage`.

    Never opens a window: the bytes are the figure file the run recorded.
    """
    import sys

    shell = None
    if "IPython" in sys.modules:  # only a running IPython has imported it; never imported here
        try:
            shell = sys.modules["IPython"].get_ipython()
        except Exception:
            shell = None
    if shell is not None:
        from IPython.display import Image, display

        display(Image(data=data, format="png"))
        return None
    return FigureImage(name, path, data)


# --------------------------------------------------------------------------- results


def predict_repr(result) -> str:
    return (f"PredictResult(images={result.images}, models={names_repr(result.models)}, extracted={result.extracted}, "
            f"reused={result.reused}, out={_path_repr(result.out)})")


def predict_html(result) -> str:
    """Images predicted as each class, per model; then the first rows of the table (each model's class and p)."""
    classes = list(next(iter(result.counts.values()), {}))
    count_rows = [[model, *(counts.get(c, 0) for c in classes)] for model, counts in result.counts.items()]
    table = result.table
    preview = []
    for i in range(min(MAX_ROWS, len(table))):
        row = [os.path.basename(str(table["path"].iat[i]))]
        for model in result.models:
            label = table[f"{model}:predicted"].iat[i]
            column = f"{model}:{label}"
            p = table[column].iat[i] if column in table.columns else None
            row.append(f"{label} ({_num(p)})")
        preview.append(row)
    detail = f"{result.images} images · {result.extracted} extracted · {result.reused} from the cache"
    if result.out:
        detail += f" · written to {result.out}"
    return _wrap(_title("Predictions", ", ".join(result.models), detail),
                 "<div>Images predicted as each class</div>", _table(["model", *classes], count_rows),
                 _table(["image", *(f"{m} (p)" for m in result.models)], preview, more=len(table) - MAX_ROWS),
                 f'<div style="{_MUTED}">The full table: <code>.table</code> (a pandas DataFrame).</div>')


def evaluate_repr(result) -> str:
    head = result.external.get("head") or {}
    internal = result.internal.get("head") or {}
    return (f"EvaluateResult(name={short(result.name)!r}, n={result.n}, excluded={result.excluded}, "
            f"head_accuracy={_num(head.get('accuracy'))} (internal {_num(internal.get('accuracy'))}), "
            f"warnings={len(result.warnings)}, folder={_path_repr(result.folder)})")


def evaluate_html(result) -> str:
    """The evaluation's warnings first, then each model's external figures beside its internal ones."""
    rows = []
    for model, m in result.external.items():
        own = result.internal.get(model) or {}
        rows.append([model, _with_ci(own.get("accuracy"), own.get("accuracy_ci")),
                     _with_ci(m.get("accuracy"), m.get("accuracy_ci")), _signed(_change(own.get("accuracy"), m.get("accuracy"))),
                     _num(own.get("roc_auc")), _num(m.get("roc_auc")), _num(m.get("balanced_accuracy")), m.get("n")])
    detail = f"{result.n} images · {result.excluded} excluded as the run's own"
    if result.skipped_files:
        detail += f" · {len(result.skipped_files)} files skipped"
    return _wrap(_title("External evaluation", result.name, detail), _warnings_box(result.warnings),
                 _table(["model", "internal accuracy [CI]", "external accuracy [CI]", "Δ accuracy", "internal ROC-AUC",
                         "external ROC-AUC", "external balanced accuracy", "n"], rows),
                 f'<div style="{_MUTED}">Recorded in <code>{html_text(result.folder)}</code>; Δ is external − internal.</div>')


def explain_repr(result) -> str:
    return (f"ExplainResult(images={result.images}, layer={result.layer!r}, map_size={tuple(result.map_size)}, "
            f"target_class={None if result.target_class is None else short(result.target_class)!r}, "
            f"out={_path_repr(result.out)})")


def explain_html(result) -> str:
    """The first overlays as thumbnails, with each image's predicted and explained class; the rest counted."""
    rows = [[os.path.basename(str(r.get("path", ""))), r.get("predicted"), _num(r.get("probability")), r.get("explained")]
            for r in result.rows[:MAX_ROWS]]
    thumbs = []
    for r in result.rows[:MAX_THUMBS]:
        try:
            data = open(r["png"], "rb").read()
        except (OSError, KeyError, TypeError) as exc:
            thumbs.append(_error(f"{r.get('png')}: {first_line(exc)}"))
            continue
        thumbs.append(_img(data, os.path.basename(str(r.get("path", ""))), THUMB_PIXELS // 2))
    detail = (f"{result.images} images · {result.map_size[0]}×{result.map_size[1]} maps · "
              f"{'each image’s predicted class' if result.target_class is None else 'class ' + str(result.target_class)}"
              f" · in {result.out}")
    return _wrap(_title("Grad-CAM", result.layer, detail), "<div>" + "".join(thumbs) + "</div>",
                 _table(["image", "predicted", "p", "explained"], rows, more=len(result.rows) - MAX_ROWS))
