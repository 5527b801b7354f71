"""A run's recorded metrics as pandas tables: what ``Run.summary()``, ``Run.per_class()``... return.

Every table is read off the metrics a run recorded (``metrics.json`` and each
``external/<name>/metrics.json``, read by :class:`~xrayfeat.runs.record.RunRecord`
after their sha256 and schema checks): nothing is recomputed, so a table says
exactly what the report and the record say. A figure the record holds as null
(an AUC undefined for a class absent from test) is NaN; a section a run lacks
(runs written before operating points, calibration or sources) is a table with
its columns and no rows.

A multi-label run's tables hold its figures: macro and micro ROC-AUC in the
summary, one row per finding in :func:`per_class_table`, macro ROC-AUC per
source, and calibration per (model, finding).

pandas is imported by each function, never at import.
"""

from __future__ import annotations

__all__ = ["RATES", "models_of", "summary_row", "summary_table", "per_class_table", "per_source_table",
           "per_group_table", "operating_points_table", "calibration_table", "external_table"]

#: The rates of an operating point, in the order the tables show them.
RATES = ("sensitivity", "specificity", "ppv", "npv", "f1")
_COUNTS = ("tp", "fp", "tn", "fn")
_SUMMARY = ("accuracy", "accuracy_low", "accuracy_high", "balanced_accuracy", "roc_auc", "loss", "n")
_MULTILABEL_SUMMARY = ("macro_roc_auc", "macro_roc_auc_low", "macro_roc_auc_high", "micro_roc_auc",
                       "macro_average_precision", "loss", "n")


def _multilabel(m: dict) -> bool:
    return m.get("task") == "multilabel"


def _summary_columns(metrics: dict) -> tuple:
    return _MULTILABEL_SUMMARY if _multilabel(metrics["head"]) else _SUMMARY


def _interval(ci) -> tuple:
    """``(low, high)`` of a recorded interval, ``(None, None)`` when there is none."""
    return (ci[0], ci[1]) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)


def _frame(rows: list[dict], columns, index):
    import pandas as pd

    table = pd.DataFrame(rows, columns=[*([index] if isinstance(index, str) else index), *columns])
    return table.set_index(index)


def models_of(metrics: dict) -> dict:
    """``{"head": {...}, name: {...}}``: the head's figures, then each baseline's, in the record's order."""
    return {"head": metrics["head"], **(metrics.get("baselines") or {})}


def summary_row(m: dict) -> dict:
    """One model's headline figures: accuracy and its interval, balanced accuracy, ROC-AUC, log-loss, n.

    Multi-label: macro ROC-AUC and its interval, micro ROC-AUC, macro average precision, loss, n.
    """
    if _multilabel(m):
        low, high = _interval(m["ci"].get("macro_roc_auc"))
        return {"macro_roc_auc": m["macro_roc_auc"], "macro_roc_auc_low": low, "macro_roc_auc_high": high,
                "micro_roc_auc": m["micro_roc_auc"], "macro_average_precision": m["macro_average_precision"],
                "loss": m["loss"], "n": m["n"]}
    low, high = _interval((m.get("ci") or {}).get("accuracy"))
    return {"accuracy": m["accuracy"], "accuracy_low": low, "accuracy_high": high,
            "balanced_accuracy": m["balanced_accuracy"], "roc_auc": m["roc_auc"], "loss": m["loss"], "n": m["n"]}


def summary_table(metrics: dict):
    """One row per model (head, then baselines), indexed by ``model``: :func:`summary_row`'s columns."""
    rows = [{"model": name, **summary_row(m)} for name, m in models_of(metrics).items()]
    return _frame(rows, _summary_columns(metrics), "model")


def per_class_table(m: dict):
    """One row per class of one model: precision, recall, F1, one-vs-rest ROC-AUC, support (images on test).

    Multi-label: one row per finding: counted images, positives, prevalence, ROC-AUC and its interval, average
    precision.
    """
    if _multilabel(m):
        rows = []
        for name, f in m["per_finding"].items():
            low, high = _interval(f.get("roc_auc_ci"))
            rows.append({"finding": name, "n": f["n"], "positives": f["positives"], "prevalence": f["prevalence"],
                         "roc_auc": f["roc_auc"], "roc_auc_low": low, "roc_auc_high": high,
                         "average_precision": f["average_precision"]})
        return _frame(rows, ("n", "positives", "prevalence", "roc_auc", "roc_auc_low", "roc_auc_high",
                             "average_precision"), "finding")
    auc = m.get("roc_auc_per_class") or {}
    rows = [{"class": name, "precision": c["precision"], "recall": c["recall"], "f1": c["f1"],
             "roc_auc": auc.get(name), "support": c["support"]} for name, c in (m.get("per_class") or {}).items()]
    return _frame(rows, ("precision", "recall", "f1", "roc_auc", "support"), "class")


def per_source_table(m: dict):
    """One row per source (hospital, scanner) of one model, when the data named them: n, accuracy and its interval."""
    rows = []
    if _multilabel(m):
        for source, s in (m.get("by_source") or {}).items():
            low, high = _interval(s.get("ci_macro_roc_auc"))
            rows.append({"source": source, "n": s["n"], "macro_roc_auc": s["macro_roc_auc"],
                         "macro_roc_auc_low": low, "macro_roc_auc_high": high})
        return _frame(rows, ("n", "macro_roc_auc", "macro_roc_auc_low", "macro_roc_auc_high"), "source")
    for source, s in (m.get("by_source") or {}).items():
        low, high = _interval(s.get("ci_accuracy"))
        rows.append({"source": source, "n": s["n"], "accuracy": s["accuracy"], "accuracy_low": low,
                     "accuracy_high": high, "balanced_accuracy": s["balanced_accuracy"]})
    return _frame(rows, ("n", "accuracy", "accuracy_low", "accuracy_high", "balanced_accuracy"), "source")


def per_group_table(m: dict):
    """One row per (group, value) of one model (sex, age band, view...): images, patients, the headline figure.

    Single-label: accuracy, balanced accuracy and ROC-AUC with their intervals;
    multi-label: macro ROC-AUC and its interval. ``attrs["unknown"]`` holds, per
    group, the images without a value (left out of its rows).
    """
    multilabel = _multilabel(m)
    figures = ("macro_roc_auc",) if multilabel else ("accuracy", "balanced_accuracy", "roc_auc")
    columns = ["n", "n_patients", *(f"{f}{end}" for f in figures for end in ("", "_low", "_high"))]
    rows, unknown = [], {}
    for group, table in (m.get("by_group") or {}).items():
        unknown[group] = table["unknown"]
        for value, v in table["values"].items():
            row = {"group": group, "value": value, "n": v["n"], "n_patients": v.get("n_patients")}
            for figure in figures:
                low, high = _interval(v["ci"].get(figure))
                row.update({figure: v[figure], f"{figure}_low": low, f"{figure}_high": high})
            rows.append(row)
    table = _frame(rows, columns, ["group", "value"])
    table.attrs["unknown"] = unknown
    return table


def operating_points_table(m: dict):
    """Per (class, decision) of one model: ``argmax``, then ``threshold`` (chosen on validation), with each rate.

    Columns: ``threshold`` (NaN on the argmax row, and where no threshold could
    be chosen, ``note`` saying why), each of :data:`RATES` with its ``_low`` and
    ``_high`` interval ends, and the counts ``tp, fp, tn, fn``. ``attrs`` holds
    the ``rule`` and the split it was ``chosen_on``.
    """
    points = m.get("operating_points") or {}
    columns = ["threshold", "note", *(f"{r}{end}" for r in RATES for end in ("", "_low", "_high")), *_COUNTS]
    rows = []
    for name, entry in (points.get("classes") or {}).items():
        for decision, key, threshold in (("argmax", "argmax", None), ("threshold", "at_threshold", entry.get("threshold"))):
            point = entry.get(key) or {}
            ci = point.get("ci") or {}
            row = {"class": name, "decision": decision, "threshold": threshold,
                   "note": entry.get("note") if decision == "threshold" else None}
            for rate in RATES:
                low, high = _interval(ci.get(rate))
                row.update({rate: point.get(rate), f"{rate}_low": low, f"{rate}_high": high})
            row.update({k: point.get(k) for k in _COUNTS})
            rows.append(row)
    table = _frame(rows, columns, ["class", "decision"])
    table.attrs.update({"rule": points.get("rule"), "chosen_on": points.get("chosen_on")})
    return table


def calibration_table(metrics: dict):
    """One row per model: Brier score, expected calibration error and its number of bins (NaN when not recorded).

    Multi-label: one row per (model, finding), each finding calibrated on its own.
    """
    rows = []
    if _multilabel(metrics["head"]):
        for name, m in models_of(metrics).items():
            for finding, found in (m.get("calibration") or {}).items():
                found = found or {}
                rows.append({"model": name, "finding": finding, "brier": found.get("brier"), "ece": found.get("ece"),
                             "n_bins": found.get("n_bins")})
        return _frame(rows, ("brier", "ece", "n_bins"), ["model", "finding"])
    for name, m in models_of(metrics).items():
        found = m.get("calibration") or {}
        rows.append({"model": name, "brier": found.get("brier"), "ece": found.get("ece"), "n_bins": found.get("n_bins")})
    return _frame(rows, ("brier", "ece", "n_bins"), "model")


def external_table(record, internal: dict):
    """One row per (evaluation, model) of the run's external evaluations, beside the internal accuracy and AUC.

    ``record`` is the run's :class:`~xrayfeat.runs.record.RunRecord` (each evaluation's
    metrics read checked); ``internal`` the run's own metrics. Columns: ``excluded``
    (images left out as the run's own), :func:`summary_row`'s, ``internal_accuracy``
    and ``internal_roc_auc`` (NaN for a model the run did not test).
    """
    inside = models_of(internal)
    multilabel = _multilabel(internal["head"])
    figures = ("macro_roc_auc", "micro_roc_auc") if multilabel else ("accuracy", "roc_auc")
    rows = []
    for name, info in (record.external or {}).items():
        for model, m in models_of(record.external_metrics(name)).items():
            own = inside.get(model) or {}
            rows.append({"evaluation": name, "model": model, "excluded": info.get("excluded"), **summary_row(m),
                         **{f"internal_{f}": own.get(f) for f in figures}})
    return _frame(rows, ("excluded", *_summary_columns(internal), *(f"internal_{f}" for f in figures)),
                  ["evaluation", "model"])


def cv_table(metrics: dict):
    """One row per (model, fold) of ``fit-head --cv`` (repeat, fold, seed, images held out, each figure), then each
    model's mean and SD (rows ``fold`` = ``"mean"``, ``"sd"``); empty for a run without cross-validation."""
    cv = metrics.get("cv")
    rows = []
    for model, figures in (cv or {}).get("models", {}).items():
        keys = list(figures)
        for j, fold in enumerate(cv["folds"]):
            rows.append({"model": model, "repeat": fold["repeat"], "fold": fold["fold"], "seed": fold["seed"],
                         "n": fold["n_out"], **{key: (figures[key] or {}).get("values", [None] * (j + 1))[j]
                                                for key in keys}})
        for stat in ("mean", "sd"):
            rows.append({"model": model, "repeat": None, "fold": stat, "seed": None, "n": None,
                         **{key: (figures[key] or {}).get(stat) for key in keys}})
    keys = list(rows[0])[5:] if rows else []
    return _frame(rows, ["seed", "n", *keys], ["model", "repeat", "fold"])
