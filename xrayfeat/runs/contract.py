"""The deployment contract of an export: what the model's numbers mean and how far they can be trusted.

:func:`contract` gathers, from the run's checked record only (``config.json``,
``metrics.json``, each evaluation's ``metrics.json``), the sections
``export.json`` carries beside the model's input and output, and that
:mod:`xrayfeat.runs.model_card` turns into ``MODEL_CARD.md``:

* ``decision``: the rule predict applies by default and its thresholds
  (:func:`xrayfeat.runs.prediction.run_decisions`), chosen on validation;
* ``calibration``: the calibrator fit-head fitted on validation (plain data:
  a temperature, or isotonic breakpoints for ``numpy.interp``), its Brier/ECE
  before and after, and whether the exported model applies it;
* ``metrics``: the head's internal test figures with their confidence
  intervals (per class, per patient group), and ``external``: every
  evaluation's, with the change from internal;
* ``warnings`` (kind and sentence; random weights always first when so),
  ``data`` (counts, task, where it came from), ``preprocessing`` and ``versions``.
"""

from __future__ import annotations

import sys

from xrayfeat.runs.record import RANDOM_WEIGHTS_WARNING, RunWarning, WARNING_KINDS

__all__ = ["contract", "headline_figures", "external_drops", "INTENDED_USE"]

#: What every export may be used for, said first in its card and in export.json.
INTENDED_USE = ("Research use only: not a medical device, not validated for clinical decisions, diagnosis or "
                "triage. A model trained on one collection of chest X-rays; its figures hold for images like those.")

# a model's headline figures: single-label, multi-label
_SINGLE = ("accuracy", "balanced_accuracy", "roc_auc")
_MULTI = ("macro_roc_auc", "micro_roc_auc", "macro_average_precision")


def headline_figures(figures: dict) -> dict:
    """A model's headline figures with their intervals: ``{figure: {"value", "ci"}}``, plus n and the CI method."""
    names = _MULTI if figures.get("task") == "multilabel" else _SINGLE
    out = {name: {"value": figures.get(name), "ci": (figures.get("ci") or {}).get(name)} for name in names}
    return {"n": figures.get("n"), "n_patients": figures.get("n_patients"), **out,
            "ci_method": figures.get("ci_method"), "ci_level": figures.get("ci_level")}


def _per_class(figures: dict) -> dict:
    """Per class (or finding): ROC-AUC, and sensitivity/specificity at the threshold chosen on validation."""
    points = ((figures.get("operating_points") or {}).get("classes")) or {}
    out = {}
    if figures.get("task") == "multilabel":
        for name, f in figures["per_finding"].items():
            out[name] = {"n": f["n"], "positives": f["positives"], "roc_auc": f["roc_auc"], "roc_auc_ci": f["roc_auc_ci"]}
    else:
        for name, f in figures["per_class"].items():
            out[name] = {"support": f["support"], "precision": f["precision"], "recall": f["recall"],
                         "roc_auc": figures["roc_auc_per_class"].get(name)}
    for name, point in points.items():
        at = point.get("at_threshold") or {}
        out.setdefault(name, {})["at_threshold"] = {
            "threshold": point.get("threshold"), "sensitivity": at.get("sensitivity"),
            "specificity": at.get("specificity"), "ci": {k: (at.get("ci") or {}).get(k) for k in ("sensitivity", "specificity")}}
    return out


def _groups(figures: dict) -> dict:
    """``by_group`` reduced to each value's n and headline figure with its interval."""
    out = {}
    multilabel = figures.get("task") == "multilabel"
    for group, table in (figures.get("by_group") or {}).items():
        values = {}
        for value, v in table["values"].items():
            name = "macro_roc_auc" if multilabel else "accuracy"
            values[value] = {"n": v["n"], name: v[name], "ci": v["ci"][name]}
            if not multilabel:
                values[value].update(roc_auc=v.get("roc_auc"), roc_auc_ci=v["ci"].get("roc_auc"))
        out[group] = {"unknown": table["unknown"], "values": values}
    return out


def _warnings(record) -> list[dict]:
    found = list(record.warnings)
    if record.random_weights and not any(w.kind == "random_weights" for w in found):
        found = [RANDOM_WEIGHTS_WARNING] + [w for w in found if w.message != RANDOM_WEIGHTS_WARNING.message]
    order = list(WARNING_KINDS)
    found = sorted(dict.fromkeys(found), key=lambda w: order.index(w.kind))  # most serious first, stable
    return [{"kind": w.kind, "message": w.message} for w in found]


def _external(record) -> dict:
    out = {}
    for name, info in (record.external or {}).items():
        figures = record.external_metrics(name)["head"]  # sha256 and schema checked
        warnings = []
        for w in info.get("warnings") or []:
            kind, message = (w.get("kind"), w.get("message")) if isinstance(w, dict) else ("other", w)
            warnings.append(RunWarning(kind if kind in WARNING_KINDS else "other", str(message)))
        out[name] = {"data": info.get("data"), "created": info.get("created"), "n": info.get("n"),
                     "excluded": info.get("excluded"), "head": headline_figures(figures), "per_class": _per_class(figures),
                     "warnings": [{"kind": w.kind, "message": w.message} for w in dict.fromkeys(warnings)]}
    return out


def external_drops(info: dict) -> list[dict]:
    """Each evaluation where the head's headline figure falls below its internal value: name, figure, both, change."""
    internal = info["metrics"]["head"]
    drops = []
    for name, entry in info["external"].items():
        for figure, pair in entry["head"].items():
            if not isinstance(pair, dict):
                continue
            inside, outside = internal.get(figure, {}).get("value"), pair.get("value")
            if inside is not None and outside is not None and outside < inside:
                drops.append({"evaluation": name, "figure": figure, "internal": inside, "external": outside,
                              "change": outside - inside})
    return drops


def _calibration(run, applied: bool, note: str) -> dict:
    calibrated = run.metrics.get("calibrated")
    if not calibrated:
        return {"method": None, "applied_in_model": False, "calibrator": None,
                "note": "not calibrated (fit-head --calibrate none): the probabilities are the head's own"}
    head = calibrated["models"]["head"]
    calibrator = {k: head[k] for k in ("temperature", "isotonic") if k in head}
    return {"method": calibrated["method"], "fitted_on": calibrated["fitted_on"], "n": calibrated["n"],
            "calibrator": calibrator, "applied_in_model": applied, "note": note,
            "validation": head["validation"], "test": head["test"]}


def _decision(run) -> dict:
    from xrayfeat.runs.prediction import run_decisions

    rule = run_decisions(run, ["head"])["head"]
    metrics = run.metrics
    points = (metrics["head"].get("operating_points") or {})
    if run.record.multilabel:
        how = "each finding is called when its probability is >= its threshold (multi-label)"
    elif rule["decision"] == "argmax":
        how = "the most probable class (argmax)"
    elif len(run.classes) == 2:
        how = (f"{next(iter(rule['thresholds']))!r} when its probability is >= its threshold, else the other class")
    else:
        how = ("each class is called when its probability is >= its own threshold; the decision is the called class "
               "furthest above its threshold, none (an empty name) when no class reaches its threshold")
    return {"rule": rule["decision"], "thresholds": rule["thresholds"], "how": how,
            "threshold_rule": points.get("rule") or metrics.get("threshold_rule"),
            "chosen_on": points.get("chosen_on"), "positive": metrics.get("positive"),
            "applied_in_model": False,
            "note": "the model outputs probabilities; apply the rule to them (xrayfeat predict does)"}


def contract(run, facts: dict, applied: bool, note: str) -> dict:
    """The contract sections of ``export.json`` for ``run`` (see the module docstring).

    ``facts``: what :func:`~xrayfeat.runs.export.build_portable_model` found (weights, sizes, rounding);
    ``applied``/``note``: whether the exported model applies the run's calibrator, and what to do if not.
    """
    import keras

    from xrayfeat.data.images import DECODE_VERSION
    from xrayfeat.fileio import file_digest

    record = run.record
    fingerprint = record.store["fingerprint"]
    weights, size = facts["weights"], facts["size"]
    weights_sha256 = None
    if weights.path:
        try:
            weights_sha256 = file_digest(weights.path)
        except OSError:
            weights_sha256 = None
    metrics = run.metrics
    framework = {name: module.__version__ for name in ("tensorflow", "jax", "torch")
                 if (module := sys.modules.get(name)) is not None and hasattr(module, "__version__")}
    return {
        "intended_use": INTENDED_USE,
        "task": record.task,
        "data": {"path": record.data, "counts": dict(record.counts), "validation": record.validation,
                 "created": record.created},
        "decision": _decision(run),
        "calibration": _calibration(run, applied, note),
        "metrics": {"head": headline_figures(metrics["head"]), "per_class": _per_class(metrics["head"]),
                    "by_group": _groups(metrics["head"]),
                    "baselines": {name: headline_figures(figures) for name, figures in metrics.get("baselines", {}).items()}},
        "external": _external(record),
        "warnings": _warnings(record),
        "weights_file": {"kind": weights.kind, "file": weights.path, "md5": weights.md5, "sha256": weights_sha256,
                         "random": weights.random, "seed": weights.seed},
        "preprocessing": {"mode": fingerprint["preprocess"], "image_size": size, "decode": DECODE_VERSION,
                          "store_dtype": fingerprint.get("store_dtype"), "features_rounded_to": facts["rounding"],
                          "model_input": f"uint8 RGB (n, {size}, {size}, 3): the image decoded and squashed to "
                                         f"{size}x{size} as xrayfeat.data.images.read_image does; the model does "
                                         f"the {fingerprint['preprocess']} preprocessing itself"},
        "versions": {"xrayfeat": facts["xrayfeat"], "keras": keras.__version__, "backend": facts["backend"],
                     **framework, "trained_with": dict(record.versions)},
    }
