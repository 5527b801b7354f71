"""The report's cross-validation parts (``fit-head --cv``): a run's section, and the comparison table's cell.

Read from ``metrics.json``'s ``cv`` (:func:`~xrayfeat.runs.schema.cv_metrics`): per model, the mean ± SD over the
folds of each figure, then every fold's value, in the order the folds were drawn.
"""

from __future__ import annotations

from xrayfeat.report.cells import DASH, number
from xrayfeat.report.document import Heading, Para, Span, Table

#: The figures a section shows, with their labels: single-label runs, then multi-label ones.
LABELS = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced acc.", "roc_auc": "ROC-AUC",
          "macro_roc_auc": "Macro ROC-AUC", "micro_roc_auc": "Micro ROC-AUC",
          "macro_average_precision": "Macro AP"}


def folds_text(cv: dict) -> str:
    """``3 folds × 2 repeats`` (``3 folds`` under one seed)."""
    repeats = len(cv["seeds"])
    return f"{cv['k']} folds" + (f" × {repeats} repeats" if repeats > 1 else "")


def mean_sd(spread: dict | None) -> str:
    """``0.750 ± 0.100``; a dash where no fold defines the figure, ``± –`` where one fold does."""
    if spread is None:
        return DASH
    return f"{number(spread['mean'])} ± {number(spread['sd']) if spread['sd'] is not None else DASH}"


def comparison_cell(metrics: dict, figure: str = "accuracy") -> list:
    """The head's cross-validated ``figure`` for the comparison table, with the folds under it; a dash without ``--cv``."""
    cv = metrics.get("cv")
    if not cv:
        return [DASH]
    return [mean_sd(cv["models"]["head"].get(figure)), Span(f" ({folds_text(cv)})", "sub")]


def section(metrics: dict, model_label) -> list:
    """``Cross-validation``: each model's mean ± SD over the folds, every fold's value, and how the folds were drawn."""
    cv = metrics.get("cv")
    if not cv:
        return []
    models = cv["models"]
    figures = [key for key in LABELS if any(key in m for m in models.values())]
    summary = [[model_label(name), *(mean_sd(m.get(key)) for key in figures)] for name, m in models.items()]
    folds = cv["folds"]
    repeated = len(cv["seeds"]) > 1
    header = ["Model", "Figure", *(f"R{f['repeat']}·F{f['fold']}" if repeated else f"F{f['fold']}" for f in folds)]
    per_fold = [[model_label(name), LABELS[key], *(DASH if v is None else number(v) for v in m[key]["values"])]
                for name, m in models.items() for key in figures if m.get(key)]
    sizes = ["Held out", "images (patients)", *(f"{f['n_out']} ({f['n_patients_out']})" for f in folds)]
    n = sum(f["n_out"] for f in folds) // len(cv["seeds"])
    return [Heading(3, f"Cross-validation ({folds_text(cv)})"),
            Table(["Model", *(f"{LABELS[key]} (mean ± SD)" for key in figures)], summary, set(range(1, len(figures) + 1))),
            Table(header, [sizes, *per_fold], set(range(2, len(header)))),
            Para(f"The {n} training images (all but test) in {cv['k']} folds grouped by {cv['grouped_by']} and "
                 f"stratified by class, drawn with seed{'s' if repeated else ''} {', '.join(map(str, cv['seeds']))}; "
                 f"in each fold every model trained on the other folds ({cv['validation']}) and predicted the held-out "
                 f"one. SD with ddof 1 over all folds; the figures are threshold-free (argmax or ranking). The test "
                 f"results above are the main fit's, on all training images; out-of-fold predictions are in "
                 f"predictions-oof.csv.", cls="note")]
