"""How a run and the results of ``predict``, ``evaluate`` and ``explain`` look in a notebook.

A short ``repr`` and a ``_repr_html_`` for :class:`~xrayfeat.runs.loaded.Run`,
:class:`~xrayfeat.runs.prediction.PredictResult`,
:class:`~xrayfeat.runs.external.EvaluateResult` and
:class:`~xrayfeat.runs.explanation.ExplainResult`, built from the pieces in
:mod:`xrayfeat.display`. A run's HTML puts its warnings first, then each
model's test results (and each external evaluation's, with the change from the
internal figure), then thumbnails of its figures. Its metrics and figures are
read through its record (sha256-checked); a file that fails the check is shown
as its one-line error in place of the figure or table, never raised from a display.
"""

from __future__ import annotations

import os

from xrayfeat.display import (MAX_ROWS, MAX_THUMBS, MUTED, THUMB_PIXELS, error_box, html_block, html_figure, html_table,
                              html_text, html_title, names_repr, path_repr, short, warnings_box)
from xrayfeat.errors import XrayfeatError, first_line
from xrayfeat.runs.record import finite_float

__all__ = ["run_repr", "run_html", "predict_repr", "predict_html", "evaluate_repr", "evaluate_html", "explain_repr",
           "explain_html"]

_DASH = "—"


def _num(x, digits: int = 3) -> str:
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
    a, b = finite_float(inside), finite_float(outside)
    return None if a is None or b is None else b - a


# --------------------------------------------------------------------------- Run


def run_repr(run) -> str:
    """``Run('PATH', task=…, backbone=…, classes=[…], warnings=N)``."""
    return (f"Run({path_repr(run.path)}, task={short(run.task)!r}, backbone={run.backbone!r}, "
            f"classes={names_repr(run.classes)}, warnings={len(run.record.warnings)})")


def _summary_rows(models: dict) -> list[list]:
    rows = []
    for name, m in models.items():
        if m.get("task") == "multilabel":
            rows.append([name, _with_ci(m["macro_roc_auc"], m["ci"]["macro_roc_auc"]), _num(m["micro_roc_auc"]),
                         _num(m["macro_average_precision"]), _num(m["loss"]), m["n"]])
        else:
            rows.append([name, _with_ci(m["accuracy"], (m.get("ci") or {}).get("accuracy")),
                         _num(m["balanced_accuracy"]), _num(m["roc_auc"]), _num(m["loss"]), m["n"]])
    return rows


_SUMMARY_HEADER = ["model", "accuracy [CI]", "balanced accuracy", "ROC-AUC", "loss", "n"]
_MULTILABEL_HEADER = ["model", "macro ROC-AUC [CI]", "micro ROC-AUC", "macro AP", "loss", "n"]


def _headline(m: dict) -> tuple[str, str, str]:
    """(label, value key, interval key) of a headline's main figure: accuracy, or a multi-label run's macro ROC-AUC."""
    if "macro_roc_auc" in m:
        return "macro ROC-AUC", "macro_roc_auc", "macro_roc_auc_ci"
    return "accuracy", "accuracy", "accuracy_ci"


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
    parts = [html_title("Run", str(run.path), detail), warnings_box(record.warnings)]
    try:
        models = models_of(run.metrics)
        multilabel = models["head"].get("task") == "multilabel"
        parts.append(html_table(_MULTILABEL_HEADER if multilabel else _SUMMARY_HEADER, _summary_rows(models)))
    except XrayfeatError as exc:
        parts.append(error_box(first_line(exc)))
        models = {}
    for name, info in (record.external or {}).items():
        try:
            outside = models_of(record.external_metrics(name))
        except XrayfeatError as exc:
            parts.append(error_box(first_line(exc)))
            continue
        figure, label = ("macro_roc_auc", "macro ROC-AUC") if "task" in outside["head"] else ("accuracy", "accuracy")
        rows = [[model, _with_ci(m[figure], (m.get("ci") or {}).get(figure)),
                 _signed(_change((models.get(model) or {}).get(figure), m[figure])),
                 _num(m.get("micro_roc_auc" if figure != "accuracy" else "roc_auc")), m["n"]]
                for model, m in outside.items()]
        parts.append(f"<div>External: <code>{html_text(name)}</code> "
                     f'<span style="{MUTED}">{html_text(info.get("excluded", 0))} excluded</span></div>')
        auc = "micro ROC-AUC" if figure != "accuracy" else "ROC-AUC"
        parts.append(html_table(["model", f"{label} [CI]", f"Δ {label} vs internal", auc, "n"], rows))
    figures = []
    for name, data, error in _run_figures(run):
        figures.append(html_figure(data, name) if data is not None else error_box(f"{name}: {error}"))
    if figures:
        parts.append("<div>" + "".join(figures) + "</div>")
    return html_block(*parts)


# --------------------------------------------------------------------------- results


def predict_repr(result) -> str:
    return (f"PredictResult(images={result.images}, models={names_repr(result.models)}, extracted={result.extracted}, "
            f"reused={result.reused}, out={path_repr(result.out)})")


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
    return html_block(html_title("Predictions", ", ".join(result.models), detail),
                 "<div>Images predicted as each class</div>", html_table(["model", *classes], count_rows),
                 html_table(["image", *(f"{m} (p)" for m in result.models)], preview, more=len(table) - MAX_ROWS),
                 f'<div style="{MUTED}">The full table: <code>.table</code> (a pandas DataFrame).</div>')


def evaluate_repr(result) -> str:
    head = result.external.get("head") or {}
    internal = result.internal.get("head") or {}
    _, key, _ = _headline(head)
    return (f"EvaluateResult(name={short(result.name)!r}, n={result.n}, excluded={result.excluded}, "
            f"head_{key}={_num(head.get(key))} (internal {_num(internal.get(key))}), "
            f"warnings={len(result.warnings)}, folder={path_repr(result.folder)})")


def evaluate_html(result) -> str:
    """The evaluation's warnings first, then each model's external figures beside its internal ones."""
    rows = []
    label, key, ci = _headline(result.external.get("head") or {})
    auc = "micro_roc_auc" if key != "accuracy" else "roc_auc"
    for model, m in result.external.items():
        own = result.internal.get(model) or {}
        rows.append([model, _with_ci(own.get(key), own.get(ci)), _with_ci(m.get(key), m.get(ci)),
                     _signed(_change(own.get(key), m.get(key))), _num(own.get(auc)), _num(m.get(auc)),
                     _num(m.get("balanced_accuracy")), m.get("n")])
    auc_label = "micro ROC-AUC" if key != "accuracy" else "ROC-AUC"
    detail = f"{result.n} images · {result.excluded} excluded as the run's own"
    if result.skipped_files:
        detail += f" · {len(result.skipped_files)} files skipped"
    return html_block(html_title("External evaluation", result.name, detail), warnings_box(result.warnings),
                 html_table(["model", f"internal {label} [CI]", f"external {label} [CI]", f"Δ {label}",
                             f"internal {auc_label}", f"external {auc_label}", "external balanced accuracy", "n"], rows),
                 f'<div style="{MUTED}">Recorded in <code>{html_text(result.folder)}</code>; Δ is external − internal.</div>')


def explain_repr(result) -> str:
    return (f"ExplainResult(images={result.images}, layer={result.layer!r}, map_size={tuple(result.map_size)}, "
            f"target_class={None if result.target_class is None else short(result.target_class)!r}, "
            f"out={path_repr(result.out)})")


def explain_html(result) -> str:
    """The first overlays as thumbnails, with each image's predicted and explained class; the rest counted."""
    rows = [[os.path.basename(str(r.get("path", ""))), r.get("predicted"), _num(r.get("probability")), r.get("explained")]
            for r in result.rows[:MAX_ROWS]]
    thumbs = []
    for r in result.rows[:MAX_THUMBS]:
        try:
            data = open(r["png"], "rb").read()
        except (OSError, KeyError, TypeError) as exc:
            thumbs.append(error_box(f"{r.get('png')}: {first_line(exc)}"))
            continue
        thumbs.append(html_figure(data, os.path.basename(str(r.get("path", ""))), THUMB_PIXELS // 2))
    detail = (f"{result.images} images · {result.map_size[0]}×{result.map_size[1]} maps · "
              f"{'each image’s predicted class' if result.target_class is None else 'class ' + str(result.target_class)}"
              f" · in {result.out}")
    return html_block(html_title("Grad-CAM", result.layer, detail), "<div>" + "".join(thumbs) + "</div>",
                 html_table(["image", "predicted", "p", "explained"], rows, more=len(result.rows) - MAX_ROWS))
