"""Subgroup metrics: the headline figures per sex, age band, view... with patient-bootstrap intervals.

A model can be good on average and poor for some patients: Seyyed-Kalantari
et al. (2021, Nature Medicine) found chest X-ray classifiers under-diagnosing
female, young, Black and Medicaid patients. :func:`by_group` breaks the
headline figures down by each patient group an image belongs to (manifest
``group:NAME`` columns, DICOM headers; see :attr:`xrayfeat.data.datasets.Item.groups`),
each with an interval from the same patient-cluster bootstrap as
:func:`xrayfeat.analysis.metrics.score`, and :func:`group_gap_warnings` says
where two values of one group differ by more than both intervals.

A study records such a warning with the kind :data:`GROUP_GAP`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from xrayfeat.analysis import metrics
from xrayfeat.analysis.metrics import (
    _as_classes,
    _as_keys,
    _as_predictions,
    _check_bootstrap,
    _clusters,
    _interval,
    _wilson_half_width,
)
from xrayfeat.analysis.multilabel import _as_findings, _as_multilabel, _macro_table
from xrayfeat.errors import one_line

__all__ = ["GROUP_GAP", "MIN_GROUP_IMAGES", "by_group", "group_gap_warnings"]

GROUP_GAP = "group_gap"
"""The kind of warning :func:`group_gap_warnings` gives (a key of ``xrayfeat.runs.record.WARNING_KINDS``)."""

MIN_GROUP_IMAGES = 20
"""A group value with fewer images is shown but never compared by :func:`group_gap_warnings`."""

_GAP_METRICS = {"accuracy": "accuracy", "roc_auc": "ROC-AUC", "macro_roc_auc": "macro ROC-AUC"}
"""The figures compared between values of a group, and how a warning names them."""


def by_group(
    subgroups: Mapping[str, Sequence[str | None]],
    y,
    proba,
    classes: Sequence[str],
    *,
    multilabel: bool = False,
    mask=None,
    groups=None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict:
    """The headline figures for every value of every group, with bootstrap intervals.

    Parameters
    ----------
    subgroups : ``{group: (n,) values}``, e.g. ``{"sex": ["F", "M", None, ...],
        "age": ["40-60", ...]}``; a missing value (None, NaN, "") is unknown.
    y, proba, classes : single-label: class indices, (n, K) probabilities and
        class names as :func:`metrics.score` takes them; with ``multilabel``:
        (n, k) 0/1 targets, (n, k) sigmoid probabilities and the finding names,
        with ``mask`` as :func:`xrayfeat.analysis.multilabel.score_multilabel` takes it.
    groups : optional (n,) patient ids: the bootstrap resamples the patients of
        each group value (images of one patient are correlated).
    n_boot, seed, ci : as in :func:`metrics.score`; the generator is this
        function's own, so the caller's other figures do not depend on it.

    Returns
    -------
    ``{group: {"unknown": images without a value, "values": {value: V}}}``,
    groups and values sorted, where V is ``{n, n_patients (with groups),
    accuracy, balanced_accuracy, roc_auc, ci: {accuracy, balanced_accuracy,
    roc_auc}}`` (single-label) or ``{n, n_patients, macro_roc_auc, ci:
    {macro_roc_auc}, per_finding: {finding: {roc_auc, roc_auc_ci}}}``
    (multi-label). A value's ``n`` and its group's ``unknown`` add up to the
    images scored. Intervals are [lo, hi] or None (``n_boot`` 0, or a figure
    undefined in more than half the resamples).
    """
    n_boot = _check_bootstrap(n_boot, ci)
    if not isinstance(subgroups, Mapping):
        raise TypeError(f"'subgroups' must map group names to one value per image. Got {type(subgroups).__name__} "
                         f"instead.")
    if multilabel:
        names = _as_findings(classes)
        t, m, p = _as_multilabel(y, mask, proba, len(names))
        n = len(t)
    else:
        if mask is not None:
            raise ValueError("'mask' applies to multi-label scoring (multilabel=True); leave it out for one label "
                             "per image.")
        names = _as_classes(classes)
        t, p = _as_predictions(y, proba, len(names))
        n = len(t)
    grp = _as_keys(groups, n, "groups")
    rng = np.random.default_rng([seed, 2])
    out: dict = {}
    for name in sorted(str(key) for key in subgroups):
        keys = _as_keys(subgroups[name], n, f"subgroups[{name!r}]")
        known = np.array([k is not None for k in keys], dtype=bool)
        values: dict = {}
        for value in sorted({k for k in keys if k is not None}):
            rows = keys == value
            sub_grp = grp[rows] if grp is not None else None
            entry: dict = {"n": int(rows.sum())}
            if sub_grp is not None:
                entry["n_patients"] = _clusters(sub_grp, len(sub_grp))[1]
            if multilabel:
                table = _macro_table(t[rows], m[rows], p[rows], names, sub_grp, n_boot, rng, ci, per_finding=True)
                entry.update(macro_roc_auc=table["macro_roc_auc"], ci={"macro_roc_auc": table["ci_macro_roc_auc"]},
                             per_finding=table["per_finding"])
            else:
                entry.update(_single_label(t[rows], p[rows], len(names), sub_grp, n_boot, rng, ci))
            values[value] = entry
        out[name] = {"unknown": int(n - known.sum()), "values": values}
    return out


def _single_label(y: np.ndarray, p: np.ndarray, k: int, grp, n_boot: int, rng: np.random.Generator,
                  ci: float) -> dict:
    """Accuracy, balanced accuracy and ROC-AUC of one group value's images, as :func:`metrics.score` gives them."""
    pred = np.argmax(p, axis=1)
    auc = metrics._summary_auc(metrics._auc_per_class(y, p, k), k)
    entry = {"accuracy": float(np.mean(pred == y)), "balanced_accuracy": metrics._balanced_accuracy(y, pred, k),
             "roc_auc": auc, "ci": {"accuracy": None, "balanced_accuracy": None, "roc_auc": None}}
    if n_boot > 0:
        cluster, n_clusters = _clusters(grp, len(y))
        dist = metrics._bootstrap(y, p, pred, k, cluster, n_clusters, n_boot, rng, with_auc=auc is not None)
        entry["ci"] = {"accuracy": _interval(dist["accuracy"], ci),
                       "balanced_accuracy": _interval(dist["balanced_accuracy"], ci),
                       "roc_auc": _interval(dist["roc_auc"], ci) if auc is not None else None}
    return entry


def group_gap_warnings(by_group: Mapping[str, Mapping] | None, *, min_n: int = MIN_GROUP_IMAGES) -> list[str]:
    """One sentence per group and figure where two values differ by more than both their intervals.

    For each group of a :func:`by_group` result and each headline figure it
    holds (accuracy and ROC-AUC; macro ROC-AUC for multi-label), the values
    with an interval and at least ``min_n`` images are compared pairwise;
    where one's interval lies wholly below the other's, the gap is unlikely to
    be noise. Of such pairs the one with the largest gap is named. Empty when
    there is none.

    A percentile bootstrap of a few images can collapse to a point (4 images
    all right give [1.00, 1.00]), so values under ``min_n`` images are not
    compared, and an accuracy interval is compared no narrower than the
    Wilson 95% interval of its ``n`` (as :func:`metrics.source_gap_warning`
    falls back to). The sentence shows the bootstrap intervals.
    """
    out: list[str] = []
    for group, table in (by_group or {}).items():
        values = (table or {}).get("values") or {}
        for key, label in _GAP_METRICS.items():
            rows = []
            for value, entry in values.items():
                n = int(entry.get("n") or 0)
                estimate, interval = entry.get(key), (entry.get("ci") or {}).get(key)
                if estimate is None or not interval or n < min_n:
                    continue
                lo, hi = float(interval[0]), float(interval[1])
                wide_lo, wide_hi = lo, hi
                if key == "accuracy":
                    w_lo, w_hi = _wilson(n, float(estimate))
                    wide_lo, wide_hi = min(lo, w_lo), max(hi, w_hi)
                rows.append((str(value), n, float(estimate), lo, hi, wide_lo, wide_hi))
            pairs = [(high[2] - low[2], low, high) for low in rows for high in rows if low[6] < high[5]]
            if not pairs:
                continue
            _, low, high = max(pairs, key=lambda pair: pair[0])
            out.append(one_line(
                f"{group}: {label} {_shown(low)} for {low[0]} (n={low[1]}) against {_shown(high)} for {high[0]} "
                f"(n={high[1]}); the gap exceeds both intervals: report results per {group} and check each value's "
                f"class balance and sources (Seyyed-Kalantari et al. 2021 audit such gaps)"))
    return out


def _wilson(n: int, p: float) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion ``p`` of ``n`` (not centred on ``p``; stays inside [0, 1])."""
    p = min(max(p, 0.0), 1.0)
    z2 = metrics._Z95 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    h = _wilson_half_width(n, p)
    return max(0.0, centre - h), min(1.0, centre + h)


def _shown(row: tuple) -> str:
    return f"{row[2]:.2f} [{row[3]:.2f}, {row[4]:.2f}]"
