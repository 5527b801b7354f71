"""Multi-label scoring: one sigmoid per finding, uncertain and blank entries left out.

A multi-label model (CheXpert's, MIMIC-CXR's, NIH's fourteen findings) gives
each image a probability per finding, and each (image, finding) entry is
scored on its own: an entry that the labeller left uncertain (under the
``ignore`` policy) or that the report did not mention is *masked* and counts
nowhere, neither in a finding's ROC-AUC nor in the pooled (micro) figure nor in
the loss (see :func:`xrayfeat.data.labels.targets`).

:func:`score_multilabel` is the multi-label :func:`~xrayfeat.analysis.metrics.score`:
per-finding ROC-AUC and average precision, their macro means, the micro ROC-AUC
over every counted entry, the masked binary cross-entropy, and bootstrap
intervals that resample *patients* when patient ids are known. One resample's
patient weights serve every finding at once, so the macro interval keeps the
correlation between findings of one image, and the weighted ROC-AUC of
:mod:`.metrics` keeps 1,000 resamples of 14 findings over 10,000 images to a
few seconds. :func:`choose_multilabel_thresholds` picks one threshold per
finding on validation data by the rules of :func:`~xrayfeat.analysis.metrics.choose_thresholds`.

Everything returned is plain Python, ready for ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from xrayfeat.analysis import metrics
from xrayfeat.analysis.metrics import (
    _BLOCK,
    _RATES,
    _as_keys,
    _AucPlan,
    _cells,
    _check_bootstrap,
    _checked_thresholds,
    _clusters,
    _count_distributions,
    _cumulative,
    _interval,
    _parse_rule,
    _point,
    _rates,
    _threshold,
    _weight_blocks,
    _weighted_auc,
)

__all__ = ["choose_multilabel_thresholds", "headline_multilabel", "score_multilabel"]

TASK = "multilabel"
"""The ``task`` a :func:`score_multilabel` result names (single-label results have no ``task`` key)."""


# --------------------------------------------------------------------------- inputs


def _as_findings(findings: Sequence[str]) -> list[str]:
    if isinstance(findings, str):
        raise TypeError(f"'findings' must be a sequence of finding names. Got the string {findings!r} instead.")
    names = [str(f) for f in findings]
    if not names:
        raise ValueError("'findings' must name at least one finding. Got [] instead.")
    if len(set(names)) != len(names):
        raise ValueError(f"'findings' must be unique. Got {names!r} instead.")
    return names


def _as_columns(values, k: int, name: str, dtype) -> np.ndarray:
    a = np.asarray(values, dtype=dtype)
    if k == 1 and a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2 or a.shape[1] != k:
        raise ValueError(f"'{name}' must have shape (n, {k}), one column per finding. Got shape {np.shape(values)} "
                         f"instead.")
    return a


def _as_multilabel(y, mask, proba, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(targets, mask, probabilities) as float64, bool, float64 (n, k) arrays, validated; masked targets set to 0."""
    p = _as_columns(proba, k, "proba", np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError("'proba' contains NaN or infinite values.")
    if p.size and (p.min() < -1e-6 or p.max() > 1 + 1e-6):
        raise ValueError(f"'proba' must hold sigmoid probabilities in [0, 1]. Got values in [{p.min():.4g}, "
                         f"{p.max():.4g}] instead (logits? apply a sigmoid first).")
    t = _as_columns(y, k, "y", np.float64)
    if mask is None:
        m = np.ones(t.shape, dtype=bool)
    else:
        raw = np.asarray(mask)
        if raw.size and raw.dtype != bool and not (np.issubdtype(raw.dtype, np.integer) and np.isin(raw, (0, 1)).all()):
            raise ValueError(f"'mask' must be boolean (True where an entry counts). Got dtype {raw.dtype} instead.")
        m = _as_columns(raw, k, "mask", bool)
    if len(p) == 0:
        raise ValueError("'y' is empty: nothing to evaluate.")
    if t.shape != p.shape or m.shape != p.shape:
        raise ValueError(f"'y', 'mask' and 'proba' must have one shape. Got {t.shape}, {m.shape} and {p.shape} "
                         f"instead.")
    counted = t[m]
    if counted.size and not np.isin(counted, (0.0, 1.0)).all():
        bad = counted[~np.isin(counted, (0.0, 1.0))][0]
        raise ValueError(f"'y' must hold 0 or 1 wherever 'mask' is True (uncertain and blank entries are masked). "
                         f"Got {bad!r} instead.")
    return np.where(m, t, 0.0), m, p


# --------------------------------------------------------------------------- point estimates


def _bce(y: np.ndarray, mask: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy over the counted entries, probabilities clipped to [eps, 1 - eps] like scikit-learn."""
    eps = np.finfo(np.float64).eps
    q = np.clip(p[mask], eps, 1.0 - eps)
    t = y[mask]
    return float(-np.mean(t * np.log(q) + (1.0 - t) * np.log1p(-q)))


def _finding_point(y: np.ndarray, mask: np.ndarray, p: np.ndarray, j: int) -> dict:
    rows = mask[:, j]
    t, s = y[rows, j], p[rows, j]
    n, positives = int(rows.sum()), int(t.sum())
    entry = {"n": n, "positives": positives, "prevalence": positives / n if n else None,
             "roc_auc": None, "roc_auc_ci": None, "average_precision": None, "average_precision_ci": None}
    if 0 < positives < n:
        entry["roc_auc"] = float(roc_auc_score(t, s))
        entry["average_precision"] = float(average_precision_score(t, s))
    return entry


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _micro_auc(y: np.ndarray, mask: np.ndarray, p: np.ndarray) -> float | None:
    t, s = y[mask], p[mask]
    if t.all() or not t.any():
        return None
    return float(roc_auc_score(t, s))


# --------------------------------------------------------------------------- bootstrap


class _ApPlan:
    """What the weighted average precision needs beyond an :class:`_AucPlan` of the same score.

    Each run of tied scores is one threshold, as in scikit-learn's
    precision-recall curve; only runs holding a positive add to the average.
    For each of them we keep where it starts among all scores (in the ascending
    order of the AUC plan) and which positives it holds ([lo, hi) among the
    plan's positives, which are in the same order).
    """

    def __init__(self, auc: _AucPlan):
        first = np.concatenate([[True], auc.start[1:] != auc.start[:-1]])
        self.lo = np.flatnonzero(first)
        self.hi = np.append(self.lo[1:], len(auc.start))
        self.run_start = auc.start[self.lo]


def _weighted_ap(weights: np.ndarray, auc: _AucPlan, plan: _ApPlan, cum: np.ndarray | None = None) -> np.ndarray:
    """Average precision for each row of ``weights`` (b, n), exactly as with integer-repeated samples.

    AP = Σ over thresholds t of (positive weight at t / all positive weight) x
    precision at t, where precision at t is the positive weight scoring >= t
    over all weight scoring >= t. From the ascending cumulative sums of
    :func:`metrics._cumulative` (``cum``, shared with the ROC-AUC) and of the
    positives' weights. NaN where a resample has no positives or no negatives
    (as the point estimate is None there).
    """
    if cum is None:
        cum = _cumulative(weights, auc)
    b = len(weights)
    cum_pos = np.zeros((b, len(auc.pos_index) + 1), dtype=weights.dtype)
    np.cumsum(weights[:, auc.pos_index], axis=1, out=cum_pos[:, 1:])
    total = cum[:, -1].astype(np.float64)
    total_pos = cum_pos[:, -1].astype(np.float64)
    below = cum_pos[:, plan.lo]
    gained = (cum_pos[:, plan.hi] - below).astype(np.float64)
    hits = total_pos[:, None] - below
    called = total[:, None] - cum[:, plan.run_start]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(called > 0, hits / np.where(called > 0, called, 1.0), 0.0)
        ap = np.einsum("ij,ij->i", gained, precision) / np.where(total_pos > 0, total_pos, 1.0)
    return np.where((total_pos > 0) & (total > total_pos), ap, np.nan)


def _in_slices(fn, weights: np.ndarray, plan, n: int) -> np.ndarray:
    """``fn(weights, plan)`` over slices of resamples, so a plan longer than ``n`` keeps memory at a block's."""
    step = max(1, _BLOCK * n // max(1, len(plan.order)))
    if step >= len(weights):
        return fn(weights, plan)
    return np.concatenate([fn(weights[i:i + step], plan) for i in range(0, len(weights), step)])


class _Plans:
    """The plans of every finding (its counted rows only) and of the pooled entries, made once per table."""

    def __init__(self, y: np.ndarray, mask: np.ndarray, p: np.ndarray, *, with_ap: bool, with_micro: bool):
        k = y.shape[1]
        self.n = len(y)
        self.auc: list[_AucPlan | None] = [None] * k
        self.ap: list[_ApPlan | None] = [None] * k
        for j in range(k):
            rows = np.flatnonzero(mask[:, j])
            pos = y[rows, j] == 1
            if pos.any() and not pos.all():
                self.auc[j] = _AucPlan(p[rows, j], pos, rows)
                if with_ap:
                    self.ap[j] = _ApPlan(self.auc[j])
        self.micro = None
        if with_micro:
            rows, cols = np.nonzero(mask)
            pos = y[rows, cols] == 1
            if pos.any() and not pos.all():
                self.micro = _AucPlan(p[rows, cols], pos, rows)


def _distributions(plans: _Plans, cluster: np.ndarray, n_clusters: int, n_boot: int,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Bootstrap distributions: ``roc_auc`` and ``average_precision`` (n_boot, k), ``micro_roc_auc`` (n_boot,).

    Every finding is scored on the same resamples of patients; a finding
    without a plan (no positives or no negatives) stays NaN.
    """
    k = len(plans.auc)
    auc = np.full((n_boot, k), np.nan)
    ap = np.full((n_boot, k), np.nan)
    micro = np.full(n_boot, np.nan)
    done = 0
    for w in _weight_blocks(rng, n_boot, cluster, n_clusters):
        at = slice(done, done + len(w))
        for j in range(k):
            if plans.auc[j] is None:
                continue
            cum = _cumulative(w, plans.auc[j])
            auc[at, j] = _weighted_auc(w, plans.auc[j], cum)
            if plans.ap[j] is not None:
                ap[at, j] = _weighted_ap(w, plans.auc[j], plans.ap[j], cum)
        if plans.micro is not None:
            micro[at] = _in_slices(_weighted_auc, w, plans.micro, plans.n)
        done += len(w)
    return {"roc_auc": auc, "average_precision": ap, "micro_roc_auc": micro}


def _macro(per_finding: np.ndarray, kept: Sequence[int]) -> np.ndarray:
    """Each resample's mean over the ``kept`` findings that are defined in it (NaN if none is)."""
    if not kept:
        return np.full(len(per_finding), np.nan)
    values = per_finding[:, list(kept)]
    defined = np.isfinite(values)
    count = defined.sum(axis=1)
    total = np.where(defined, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)


def _ci_method(grp, n_boot: int) -> str:
    if n_boot == 0:
        return "none"
    return f"bootstrap over {'patients' if grp is not None else 'images'}, {n_boot} resamples"


def _macro_table(y: np.ndarray, mask: np.ndarray, p: np.ndarray, findings: list[str], grp, n_boot: int,
                rng: np.random.Generator, ci: float, *, per_finding: bool) -> dict:
    """Macro ROC-AUC (and, with ``per_finding``, each finding's) with intervals, for a table's rows.

    What :func:`score_multilabel` reports per source, and :mod:`.subgroups` per
    group value: the bootstrap resamples the table's own patients. Internal to
    the analysis package (``y``, ``mask``, ``p`` already validated).
    """
    aucs = [_finding_point(y, mask, p, j)["roc_auc"] for j in range(len(findings))]
    kept = [j for j, a in enumerate(aucs) if a is not None]
    out: dict = {"macro_roc_auc": _mean(aucs), "ci_macro_roc_auc": None}
    intervals = [None] * len(findings)
    if n_boot > 0 and kept:
        cluster, n_clusters = _clusters(grp, len(y))
        plans = _Plans(y, mask, p, with_ap=False, with_micro=False)
        dist = _distributions(plans, cluster, n_clusters, n_boot, rng)["roc_auc"]
        out["ci_macro_roc_auc"] = _interval(_macro(dist, kept), ci)
        intervals = [_interval(dist[:, j], ci) if j in kept else None for j in range(len(findings))]
    if per_finding:
        out["per_finding"] = {name: {"roc_auc": aucs[j], "roc_auc_ci": intervals[j]} for j, name in enumerate(findings)}
    return out


# --------------------------------------------------------------------------- score


def score_multilabel(
    y,
    mask,
    proba,
    findings: Sequence[str],
    *,
    groups=None,
    sources=None,
    subgroups: Mapping[str, Sequence[str | None]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    thresholds: Mapping[str, Mapping] | None = None,
    threshold_rule: str | None = None,
) -> dict:
    """Score sigmoid probabilities against multi-label targets, entry by entry, with bootstrap intervals.

    Parameters
    ----------
    y : (n, k) 0/1 targets, one column per finding (what
        :func:`xrayfeat.data.labels.targets` gives; masked entries may hold anything, NaN included).
    mask : (n, k) bool, False where an entry does not count (uncertain under
        ``ignore``, or blank); None counts every entry.
    proba : (n, k) sigmoid probabilities ((n,) for one finding).
    findings : the finding names, in column order.
    groups : optional (n,) patient ids: the bootstrap then resamples patients
        (every finding of every image of a drawn patient comes along), as
        :func:`~xrayfeat.analysis.metrics.score` does. Missing ids are patients of their own.
    sources : optional (n,) source per image; adds ``by_source``.
    subgroups : optional ``{group: (n,) values}`` (``{"sex": ["F", "M", None, ...]}``);
        adds ``by_group`` (see :func:`xrayfeat.analysis.subgroups.by_group`).
    n_boot, seed, ci : as in :func:`~xrayfeat.analysis.metrics.score`.
    thresholds : optional ``{finding: {"threshold", "note"}}`` from
        :func:`choose_multilabel_thresholds` (chosen on validation); adds ``operating_points``.
    threshold_rule : the rule text they were chosen by; required with ``thresholds``.

    Returns
    -------
    dict of plain Python values: ``task`` ("multilabel"), ``n`` (images),
    ``n_patients`` (with ``groups``), ``findings``, ``per_finding`` ({finding:
    {n (counted entries), positives, prevalence, roc_auc, roc_auc_ci,
    average_precision, average_precision_ci}}, the figures None where the
    finding has no positive or no negative counted entry), ``macro_roc_auc``
    (mean over the findings with a ROC-AUC), ``micro_roc_auc`` (every counted
    entry pooled), ``macro_average_precision``, ``loss`` (mean binary
    cross-entropy over counted entries, clipped like scikit-learn), ``ci``
    ({macro_roc_auc, micro_roc_auc, macro_average_precision}: [lo, hi] or
    None), ``ci_method``, ``ci_level``, ``by_source`` ({source: {n,
    macro_roc_auc, ci_macro_roc_auc}}), ``by_group``, ``calibration``
    ({finding: :func:`~xrayfeat.analysis.metrics.calibration` of its counted
    entries, a binary task, or None}) and ``operating_points`` (as
    :func:`~xrayfeat.analysis.metrics.operating_points` gives them, ``classes``
    keyed by finding; ``argmax`` is the sigmoid's own decision, p > 0.5).

    A resample's macro mean is over the findings (among those with a point
    ROC-AUC) that have positives and negatives in that resample; a finding's
    own interval is None when more than half its resamples lack them. By-source,
    by-group and operating-point intervals use generators of their own from
    ``seed``, so that every other value is the same with or without them.
    """
    names = _as_findings(findings)
    k = len(names)
    n_boot = _check_bootstrap(n_boot, ci)
    if thresholds is not None and threshold_rule is None:
        raise ValueError("'threshold_rule' must be given with 'thresholds' (the rule text they were chosen by).")
    t, m, p = _as_multilabel(y, mask, proba, k)
    if not m.any():
        raise ValueError("'mask' leaves out every entry: nothing to evaluate.")
    n = len(t)
    grp = _as_keys(groups, n, "groups")
    src = _as_keys(sources, n, "sources")

    per_finding = {name: _finding_point(t, m, p, j) for j, name in enumerate(names)}
    aucs = [per_finding[name]["roc_auc"] for name in names]
    aps = [per_finding[name]["average_precision"] for name in names]
    kept = [j for j, a in enumerate(aucs) if a is not None]
    result: dict = {
        "task": TASK,
        "n": int(n),
        "findings": list(names),
        "per_finding": per_finding,
        "macro_roc_auc": _mean(aucs),
        "micro_roc_auc": _micro_auc(t, m, p),
        "macro_average_precision": _mean(aps),
        "loss": _bce(t, m, p),
    }
    cluster, n_clusters = _clusters(grp, n)
    if grp is not None:
        result["n_patients"] = int(n_clusters)
    result["ci"] = {"macro_roc_auc": None, "micro_roc_auc": None, "macro_average_precision": None}
    if n_boot > 0:
        plans = _Plans(t, m, p, with_ap=True, with_micro=True)
        dist = _distributions(plans, cluster, n_clusters, n_boot, np.random.default_rng(seed))
        for j in kept:
            per_finding[names[j]]["roc_auc_ci"] = _interval(dist["roc_auc"][:, j], ci)
            per_finding[names[j]]["average_precision_ci"] = _interval(dist["average_precision"][:, j], ci)
        result["ci"] = {
            "macro_roc_auc": _interval(_macro(dist["roc_auc"], kept), ci) if kept else None,
            "micro_roc_auc": _interval(dist["micro_roc_auc"], ci) if result["micro_roc_auc"] is not None else None,
            "macro_average_precision": _interval(_macro(dist["average_precision"], kept), ci) if kept else None,
        }
    result["ci_method"] = _ci_method(grp, n_boot)
    result["ci_level"] = float(ci)

    if src is not None:
        rng = np.random.default_rng([seed, 1])
        by_source = {}
        for name in sorted({s for s in src if s is not None}):
            rows = src == name
            entry = _macro_table(t[rows], m[rows], p[rows], names, grp[rows] if grp is not None else None, n_boot,
                                rng, ci, per_finding=False)
            by_source[name] = {"n": int(rows.sum()), **entry}
        result["by_source"] = by_source
    if subgroups is not None:
        from xrayfeat.analysis.subgroups import by_group

        result["by_group"] = by_group(subgroups, t, p, names, multilabel=True, mask=m, groups=grp, n_boot=n_boot,
                                      seed=seed, ci=ci)

    result["calibration"] = {
        name: metrics.calibration(t[m[:, j], j].astype(np.int64), p[m[:, j], j], ["0", "1"]) if m[:, j].any()
        else None for j, name in enumerate(names)}
    if thresholds is not None:
        result["operating_points"] = _operating_points(t, m, p, names, thresholds, threshold_rule, grp, n_boot, seed,
                                                       ci)
    return result


def headline_multilabel(m: Mapping) -> dict:
    """The headline figures of a :func:`score_multilabel` result."""
    return {"macro_roc_auc": m["macro_roc_auc"], "macro_roc_auc_ci": m["ci"]["macro_roc_auc"],
            "micro_roc_auc": m["micro_roc_auc"], "loss": m["loss"], "n": m["n"]}


# --------------------------------------------------------------------------- thresholds


def choose_multilabel_thresholds(y_val, mask_val, proba_val, findings: Sequence[str], rule: str) -> dict[str, dict]:
    """One threshold per finding, chosen by ``rule`` on the data given (validation, never test).

    The rules of :func:`~xrayfeat.analysis.metrics.choose_thresholds`
    (``youden``, ``sens=X``, ``spec=X``, a fixed probability), applied to each
    finding's counted entries alone (masked ones, uncertain or blank, take no
    part). Returns ``{finding: {"threshold": float | None, "note": str | None}}``;
    a data-driven rule needs positive and negative entries of the finding, and
    without them the threshold is None and the note says why.
    """
    names = _as_findings(findings)
    kind, value = _parse_rule(rule)
    t, m, p = _as_multilabel(y_val, mask_val, proba_val, len(names))
    out = {}
    for j, name in enumerate(names):
        rows = m[:, j]
        positive = t[rows, j] == 1
        if kind != "fixed" and (positive.all() or not positive.any()):
            lacking = "positive" if not positive.any() else "negative"
            out[name] = {"threshold": None, "note": f"no {lacking} entries of {name!r} to choose the {rule!r} "
                                                    f"threshold on (uncertain and blank entries do not count): "
                                                    f"it needs both"}
            continue
        out[name] = _threshold(kind, value, p[rows, j], positive, name, rule)
    return out


def _operating_points(t: np.ndarray, m: np.ndarray, p: np.ndarray, names: list[str], thresholds: Mapping,
                      rule: str, grp, n_boot: int, seed: int, ci: float) -> dict:
    """:func:`metrics.operating_points` for each finding, one-vs-rest over its counted entries."""
    _parse_rule(rule)
    chosen = _checked_thresholds(thresholds, names)
    points: list[tuple[str, str]] = []
    columns = []
    for j, entry in chosen:
        truth = t[:, j] == 1
        counted = m[:, j].astype(np.int64)[:, None]  # a masked entry is in no cell
        points.append((names[j], "argmax"))
        columns.append(_cells(truth, p[:, j] > 1.0 - p[:, j]) * counted)  # the argmax of (1 - p, p)
        if entry["threshold"] is not None:
            points.append((names[j], "at_threshold"))
            columns.append(_cells(truth, p[:, j] >= entry["threshold"]) * counted)
    cells = np.stack(columns, axis=1)
    no_ci = dict.fromkeys(_RATES)
    intervals = [no_ci] * len(points)
    if n_boot > 0:
        cluster, n_clusters = _clusters(grp, len(t))
        counts = _count_distributions(cells, cluster, n_clusters, n_boot, np.random.default_rng(seed))
        rates = _rates(*np.moveaxis(counts, -1, 0))
        intervals = [{name: _interval(rates[name][:, i], ci) for name in _RATES} for i in range(len(points))]
    scored = {names[j]: {**entry, "argmax": None, "at_threshold": None} for j, entry in chosen}
    for i, (name, where) in enumerate(points):
        scored[name][where] = _point(cells[:, i].sum(axis=0), dict(intervals[i]))
    return {"rule": str(rule), "chosen_on": "validation", "classes": scored}


# --------------------------------------------------------------------------- warnings


#: Fewer positive test images than this make a finding's AUROC interval too wide to compare.
FEW_POSITIVES = 10


def few_positives_warning(head_metrics: dict) -> str | None:
    """A sentence naming the findings with fewer than :data:`FEW_POSITIVES` counted positive test images."""
    few = [f"{name} ({entry['positives']})" for name, entry in head_metrics["per_finding"].items()
           if entry["positives"] < FEW_POSITIVES]
    if not few:
        return None
    return (f"findings with fewer than {FEW_POSITIVES} positive test images: {', '.join(few)}; their AUROC "
            f"intervals are wide, so treat differences between them as noise")
