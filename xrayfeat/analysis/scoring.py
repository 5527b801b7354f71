"""Scoring several models' probabilities on the same rows: metrics, thresholds, seed spread.

fit-head and evaluate score every model (the head and each baseline) through
:func:`evaluate_models`, so internal and external figures are computed one way:
patients resampled in the bootstrap, sources broken down, and each model's
operating points at thresholds chosen on validation only (:func:`choose_model_thresholds`).
A multi-label task (``multilabel=True``, targets with their mask) is scored by
:func:`xrayfeat.analysis.multilabel.score_multilabel` the same way; images in
patient groups (:attr:`~xrayfeat.data.datasets.Item.groups`) add the figures per group.
"""

from __future__ import annotations

import numpy as np

from xrayfeat.analysis import metrics
from xrayfeat.analysis.multilabel import TASK as MULTILABEL
from xrayfeat.analysis.multilabel import choose_multilabel_thresholds, headline_multilabel, score_multilabel
from xrayfeat.options.constraints import OptionError


def groups_of(items) -> np.ndarray | None:
    """Patient ids where known (an image without one is its own patient); None if no patient is known."""
    if not any(item.patient_id for item in items):
        return None
    return np.array([item.patient_id or f"image:{item.sha256}" for item in items])


def subgroups_of(items) -> dict[str, list[str | None]] | None:
    """Each image's value of every group some image is in (``{"sex": ["F", None, ...]}``); None if none is in any."""
    names = sorted({key for item in items for key, _ in item.groups})
    if not names:
        return None
    return {name: [item.group(name) for item in items] for name in names}


def evaluate_models(probabilities: dict, y, classes, items, *, n_boot: int, seed: int,
                    thresholds: dict | None = None, rule: str | None = None, multilabel: bool = False,
                    mask=None) -> dict:
    """:func:`metrics.score` for each model's probabilities on ``items``: patients resampled, sources broken down.

    ``thresholds`` ({model: {class: {"threshold", "note"}}}, chosen on validation
    by :func:`choose_model_thresholds`) add each model's operating points under ``rule``.
    Images in patient groups add ``by_group`` (:func:`subgroups_of`). With
    ``multilabel``, ``y`` holds (n, findings) 0/1 targets, ``mask`` where they
    count (None: everywhere) and ``classes`` the findings; each model is scored
    by :func:`xrayfeat.analysis.multilabel.score_multilabel`.
    """
    if mask is not None and not multilabel:
        raise ValueError("'mask' applies to multi-label scoring; pass multilabel=True with it, or leave it out.")
    groups = groups_of(items)
    sources = [i.source for i in items] if any(i.source for i in items) else None
    subgroups = subgroups_of(items)
    thresholds = thresholds or {}
    if multilabel:
        return {name: score_multilabel(
                    y, mask, proba, list(classes), groups=groups, sources=sources, subgroups=subgroups, n_boot=n_boot,
                    seed=seed, thresholds=thresholds.get(name), threshold_rule=rule if name in thresholds else None)
                for name, proba in probabilities.items()}
    return {name: metrics.score(y, proba, list(classes), groups=groups, sources=sources, n_boot=n_boot, seed=seed,
                                   thresholds=thresholds.get(name), threshold_rule=rule if name in thresholds else None,
                                   subgroups=subgroups)
            for name, proba in probabilities.items()}


def positive_class(classes, positive: str | None) -> str | None:
    """The positive class of a binary task (``positive``, default the second class); None for multiclass tasks."""
    classes = list(classes)
    if positive is not None and positive not in classes:
        raise OptionError(f"--positive {positive!r} is not a class of this task ({', '.join(classes)})")
    if len(classes) != 2:
        if positive is not None:
            raise OptionError(f"--positive applies to binary tasks; with {len(classes)} classes every class is "
                              f"reported one-vs-rest, so leave it out")
        return None
    return positive or classes[1]


def choose_model_thresholds(y_val, val_probabilities: dict, classes, rule: str, positive: str | None, *,
                            multilabel: bool = False, mask=None) -> dict:
    """Each model's operating-point thresholds, chosen on the validation rows alone (never on test).

    With ``multilabel``, one threshold per finding
    (:func:`xrayfeat.analysis.multilabel.choose_multilabel_thresholds`), ``mask``
    as in :func:`evaluate_models`; there is no positive class then.
    """
    if multilabel:
        if positive is not None:
            raise OptionError(f"--positive applies to binary tasks; a multi-label task gets one threshold per "
                              f"finding, so leave it out (got {positive!r})")
        return {name: choose_multilabel_thresholds(y_val, mask, proba, list(classes), rule)
                for name, proba in val_probabilities.items()}
    if mask is not None:
        raise ValueError("'mask' applies to multi-label scoring; pass multilabel=True with it, or leave it out.")
    return {name: metrics.choose_thresholds(y_val, proba, list(classes), rule, positive=positive)
            for name, proba in val_probabilities.items()}


def seed_spread(primary: dict, repeats: list[dict], y_test, classes, seeds: list[int], *, mask=None) -> dict | None:
    """The head's accuracy, balanced accuracy and ROC-AUC across seeds: mean, SD (ddof=1), min, max, values.

    ``primary`` is the first seed's test metrics; ``repeats`` the other seeds'
    test probabilities (:class:`~xrayfeat.models.head_process.HeadOutcome` ``repeats``).
    A multi-label ``primary`` (``mask`` as in :func:`evaluate_models`) gives the
    spread of its macro and micro ROC-AUC and macro average precision instead.
    """
    if not repeats:
        return None
    if primary.get("task") == MULTILABEL:
        scored = [primary] + [score_multilabel(y_test, mask, r["proba_test"], list(classes), n_boot=0)
                              for r in repeats]
        keys = ("macro_roc_auc", "micro_roc_auc", "macro_average_precision")
    elif mask is not None:
        raise ValueError("'mask' applies to multi-label scoring; leave it out for single-label figures.")
    else:
        scored = [primary] + [metrics.score(y_test, r["proba_test"], list(classes), n_boot=0) for r in repeats]
        keys = ("accuracy", "balanced_accuracy", "roc_auc")
    spread = {}
    for key in keys:
        values = [m[key] for m in scored]
        spread[key] = None if any(v is None for v in values) else spread_of(values)
    return {"seeds": list(seeds), "head": spread}


def spread_of(values: list) -> dict | None:
    """Mean, SD (ddof 1; null with one value), min and max of the values that are defined, and every value in order.

    None when none is defined (a ROC-AUC of folds holding one class). Seeds
    (:func:`seed_spread`) and cross-validation folds are summarised by it.
    """
    defined = np.array([v for v in values if v is not None], dtype=float)
    if not len(defined):
        return None
    return {"mean": float(defined.mean()), "sd": float(defined.std(ddof=1)) if len(defined) > 1 else None,
            "min": float(defined.min()), "max": float(defined.max()),
            "values": [None if v is None else float(v) for v in values]}


def headline(m: dict) -> dict:
    """The headline figures of a :func:`metrics.score` result, or of a multi-label one (:func:`headline_multilabel`)."""
    if m.get("task") == MULTILABEL:
        return headline_multilabel(m)
    return {
        "accuracy": m["accuracy"], "accuracy_ci": m["ci"]["accuracy"], "loss": m["loss"],
        "balanced_accuracy": m["balanced_accuracy"], "roc_auc": m["roc_auc"], "n": m["n"],
    }


#: The figures ``fit-head --cv`` gives per fold and across folds: single-label, and multi-label.
FOLD_FIGURES = ("accuracy", "balanced_accuracy", "roc_auc")
MULTILABEL_FOLD_FIGURES = ("macro_roc_auc", "micro_roc_auc", "macro_average_precision")


def fold_figures(y, proba, classes, *, multilabel: bool = False, mask=None) -> dict:
    """One held-out fold's figures, threshold-free and without intervals: :data:`FOLD_FIGURES` (argmax accuracy,
    balanced accuracy, ROC-AUC), or :data:`MULTILABEL_FOLD_FIGURES` with ``multilabel`` (``mask`` as in
    :func:`evaluate_models`). A figure the fold cannot define (one class present) is None.
    """
    if multilabel:
        scored = score_multilabel(y, mask, proba, list(classes), n_boot=0)
        return {key: scored[key] for key in MULTILABEL_FOLD_FIGURES}
    if mask is not None:
        raise ValueError("'mask' applies to multi-label scoring; pass multilabel=True with it, or leave it out.")
    scored = metrics.score(y, proba, list(classes), n_boot=0)
    return {key: scored[key] for key in FOLD_FIGURES}
