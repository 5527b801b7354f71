"""Classification metrics with honest uncertainty, and the warnings that go with them.

Chest X-ray test sets are small, images come several per patient, and classes are
often drawn from different hospitals. A bare accuracy hides all three, so
:func:`score` returns, beside the usual point estimates, bootstrap confidence
intervals that resample *patients* when patient ids are known (images of one
patient are correlated; resampling images would make the interval too narrow),
and a per-source breakdown. The ``*_warning`` helpers turn the numbers into
one-line sentences that say what is wrong and what to do about it.

A probability is not yet a decision. :func:`choose_thresholds` picks an
operating point per class by a rule (Youden's J, a target sensitivity or
specificity, or a fixed probability) on the data it is given: the validation
split, never the test split, or the test figures would be optimistic.
:func:`operating_points` scores the argmax and those thresholds on test with the
same patient bootstrap. :func:`calibration` says whether the probabilities can be
read as probabilities (Brier score, top-label reliability curve, ECE).

Everything returned is plain Python (floats, ints, lists, dicts, ``None``) so that
it can be written to ``metrics.json`` as is. Only numpy and scikit-learn are used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from xrayfeat.options.parsers import Threshold, parse_threshold

__all__ = [
    "as_proba",
    "score",
    "choose_thresholds",
    "operating_points",
    "calibration",
    "split_overlap",
    "overlap_warnings",
    "tiny_test_warning",
    "sentinel_warning",
    "source_gap_warning",
]

# Resamples are processed in blocks of this many, so that memory stays at
# about _BLOCK * n * 8 bytes per temporary whatever n_boot is.
_BLOCK = 100
# A bootstrap interval for ROC-AUC is reported only when at least this fraction
# of resamples have every class present (otherwise the interval describes a
# different population from the point estimate).
_MIN_DEFINED_FRACTION = 0.5
_Z95 = 1.959963984540054


# --------------------------------------------------------------------------- inputs


def as_proba(proba, n_classes: int) -> np.ndarray:
    """Return ``proba`` as a float (n, K) array, validated.

    For ``n_classes == 2`` a sigmoid output of shape (n,) or (n, 1) — the
    probability of ``classes[1]`` — is expanded to the two columns ``[1 - p, p]``.
    Rows are not renormalised: a model's outputs are scored as given.
    """
    p = np.asarray(proba, dtype=np.float64)
    if n_classes == 2 and (p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1)):
        p = p.reshape(-1)
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(
            f"'proba' must have shape (n, {n_classes}) for {n_classes} classes"
            + (" (or (n,) / (n, 1) sigmoid outputs)" if n_classes == 2 else "")
            + f". Got shape {np.shape(proba)} instead."
        )
    if not np.all(np.isfinite(p)):
        raise ValueError("'proba' contains NaN or infinite values.")
    if p.size and (p.min() < -1e-6 or p.max() > 1 + 1e-6):
        raise ValueError(
            f"'proba' must hold probabilities in [0, 1]. Got values in "
            f"[{p.min():.4g}, {p.max():.4g}] instead (logits? apply softmax/sigmoid first)."
        )
    return p


def _as_labels(y_true, n_classes: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise ValueError(f"'y_true' must be a 1-D array of class indices. Got shape {y.shape} instead.")
    if y.size and not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.equal(np.mod(y, 1), 0)):
            y = y.astype(np.int64)
        else:
            raise ValueError(
                f"'y_true' must hold integer class indices in [0, {n_classes}). "
                f"Got dtype {y.dtype} instead."
            )
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"'y_true' must hold class indices in [0, {n_classes}). "
            f"Got values in [{y.min()}, {y.max()}] instead."
        )
    return y


def _as_classes(classes: Sequence[str]) -> list[str]:
    names = [str(c) for c in classes]
    if len(names) < 2:
        raise ValueError(f"'classes' must name at least two classes. Got {names!r} instead.")
    if len(set(names)) != len(names):
        raise ValueError(f"'classes' must be unique. Got {names!r} instead.")
    return names


def _as_predictions(y_true, proba, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and (n, K) probabilities, validated, non-empty and of one length."""
    p = as_proba(proba, n_classes)
    y = _as_labels(y_true, n_classes)
    if len(y) == 0:
        raise ValueError("'y_true' is empty: nothing to evaluate.")
    if p.shape[0] != len(y):
        raise ValueError(f"'proba' has {p.shape[0]} rows but 'y_true' has {len(y)} labels.")
    return y, p


def _check_bootstrap(n_boot, ci) -> int:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"'ci' must be in (0, 1). Got {ci!r} instead.")
    if int(n_boot) < 0:
        raise ValueError(f"'n_boot' must be >= 0. Got {n_boot!r} instead.")
    return int(n_boot)


def _as_keys(values, n: int, name: str) -> np.ndarray | None:
    """Object array of str keys (``None`` kept) for groups/sources, or None."""
    if values is None:
        return None
    v = list(values)
    if len(v) != n:
        raise ValueError(f"'{name}' must have one entry per prediction ({n}). Got {len(v)} instead.")
    out = np.empty(n, dtype=object)
    for i, x in enumerate(v):
        out[i] = None if _is_missing(x) else str(x)
    return out


def _is_missing(x) -> bool:
    if x is None:
        return True
    if isinstance(x, float) and math.isnan(x):
        return True
    return isinstance(x, str) and x.strip() == ""


# --------------------------------------------------------------------------- point estimates


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-probability of the true class, clipped like scikit-learn."""
    eps = np.finfo(np.float64).eps
    pt = np.clip(p[np.arange(len(y)), y], eps, 1.0 - eps)
    return float(-np.mean(np.log(pt)))


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y`` (scikit-learn's definition)."""
    support = np.bincount(y, minlength=n_classes)
    hits = np.bincount(y[pred == y], minlength=n_classes)
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


def _auc_per_class(y: np.ndarray, p: np.ndarray, n_classes: int) -> list[float | None]:
    """One-vs-rest ROC-AUC per class; ``None`` where the class or its complement is absent."""
    out: list[float | None] = []
    for k in range(n_classes):
        pos = y == k
        if pos.all() or not pos.any():
            out.append(None)
        else:
            out.append(float(roc_auc_score(pos, p[:, k])))
    return out


def _summary_auc(per_class: list[float | None], n_classes: int) -> float | None:
    """Binary: AUC of ``classes[1]``; multiclass: macro mean, ``None`` if any class is undefined."""
    if n_classes == 2:
        return per_class[1]
    if any(a is None for a in per_class):
        return None
    return float(np.mean(per_class))


# --------------------------------------------------------------------------- bootstrap


class _AucPlan:
    """What the weighted ROC-AUC of one score needs, computed once for all resamples.

    Scores are sorted once; for each positive we keep its position in that order
    and the bounds [start, end) of its run of tied scores. ``rows``, when given,
    says which column of the weights each score belongs to (a subset of the
    predictions, or several scores per prediction), so that one resample's
    weights over all predictions serve every plan.
    """

    def __init__(self, score: np.ndarray, positive: np.ndarray, rows: np.ndarray | None = None):
        order = np.argsort(score, kind="mergesort")
        s = score[order]
        n = len(s)
        new_run = np.concatenate([[True], s[1:] != s[:-1]])
        run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
        run_end_marks = np.concatenate([s[1:] != s[:-1], [True]])
        run_end = np.minimum.accumulate(np.where(run_end_marks, np.arange(n) + 1, n)[::-1])[::-1]
        where_pos = np.flatnonzero(positive[order])
        if rows is not None:
            order = np.asarray(rows)[order]
        self.order = order
        self.pos_index = order[where_pos]
        self.start = run_start[where_pos]
        self.end = run_end[where_pos]


def _cumulative(weights: np.ndarray, plan: _AucPlan) -> np.ndarray:
    """(b, n + 1) cumulative weight of the plan's scores in ascending order, with a leading zero."""
    cum = np.zeros((len(weights), len(plan.order) + 1), dtype=weights.dtype)
    np.cumsum(weights[:, plan.order], axis=1, out=cum[:, 1:])
    return cum


def _weighted_auc(weights: np.ndarray, plan: _AucPlan, cum: np.ndarray | None = None) -> np.ndarray:
    """ROC-AUC for each row of ``weights`` (b, n), exactly as with integer-repeated samples.

    ``n`` is the number of predictions; a plan made with ``rows`` scores only those columns.

    The Mann-Whitney form: the weighted fraction of (positive, negative) pairs the
    score orders correctly, ties counting one half. With ``A`` the cumulative
    weight of all samples in score order, a positive in the tied run [s, e) sits
    above ``A[s] + (A[e] - A[s]) / 2`` of weight; subtracting the positive-positive
    pairs (exactly half of ``Wp**2``, ties included) leaves the negatives. One
    cumulative sum per block of resamples. NaN where a resample has no positives
    or no negatives. ``cum``: :func:`_cumulative`, when the caller needs it too.
    """
    n = len(plan.order)
    if cum is None:
        cum = _cumulative(weights, plan)
    wp = weights[:, plan.pos_index]
    above = cum[:, plan.start] + cum[:, plan.end]
    total_pos = wp.sum(axis=1)
    total_neg = cum[:, n] - total_pos
    num = 0.5 * np.einsum("ij,ij->i", wp, above).astype(np.float64) - 0.5 * total_pos.astype(np.float64) ** 2
    den = total_pos.astype(np.float64) * total_neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _resample_weights(rng: np.random.Generator, b: int, cluster: np.ndarray, n_clusters: int) -> np.ndarray:
    """(b, n) multiplicities: how often each prediction appears in each resample.

    Clusters (patients, or single images) are drawn with replacement; every
    prediction of a drawn cluster comes along.
    """
    draws = rng.integers(0, n_clusters, size=(b, n_clusters))
    offsets = (np.arange(b) * n_clusters)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=b * n_clusters).reshape(b, n_clusters)
    return counts[:, cluster]


def _weight_blocks(rng: np.random.Generator, n_boot: int, cluster: np.ndarray, n_clusters: int):
    """The ``n_boot`` resamples' weights, in blocks of at most :data:`_BLOCK` rows (bounds memory)."""
    done = 0
    while done < n_boot:
        b = min(_BLOCK, n_boot - done)
        yield _resample_weights(rng, b, cluster, n_clusters)
        done += b


def _bootstrap(
    y: np.ndarray,
    p: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    cluster: np.ndarray,
    n_clusters: int,
    n_boot: int,
    rng: np.random.Generator,
    with_auc: bool,
) -> dict[str, np.ndarray]:
    """Bootstrap distributions of accuracy, balanced accuracy and (optionally) ROC-AUC."""
    # Integer weights keep every sum exact and make cumulative sums several times faster.
    correct = (pred == y).astype(np.int64)
    onehot = np.zeros((len(y), n_classes), dtype=np.int64)
    onehot[np.arange(len(y)), y] = 1
    hit_onehot = onehot * correct[:, None]
    auc_classes = [1] if n_classes == 2 else list(range(n_classes))
    plans = [_AucPlan(p[:, k], y == k) for k in auc_classes] if with_auc else []
    acc, bal, auc = [], [], []
    for w in _weight_blocks(rng, n_boot, cluster, n_clusters):
        total = w.sum(axis=1)
        acc.append(w @ correct / total)
        support = w @ onehot
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(support > 0, (w @ hit_onehot) / np.where(support > 0, support, 1.0), np.nan)
        bal.append(np.nanmean(recall, axis=1))
        if with_auc:
            per = np.stack([_weighted_auc(w, plan) for plan in plans], axis=1)
            auc.append(per.mean(axis=1))  # NaN if any class is undefined in this resample
    out = {"accuracy": np.concatenate(acc), "balanced_accuracy": np.concatenate(bal)}
    if with_auc:
        out["roc_auc"] = np.concatenate(auc)
    return out


def _interval(values: np.ndarray, ci: float) -> list[float] | None:
    ok = values[np.isfinite(values)]
    if ok.size == 0 or ok.size < _MIN_DEFINED_FRACTION * values.size:
        return None
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def _clusters(groups: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Cluster index per prediction; predictions without a group are their own cluster."""
    if groups is None:
        return np.arange(n), n
    keys = [g if g is not None else ("\0image", i) for i, g in enumerate(groups)]
    index: dict = {}
    cluster = np.fromiter((index.setdefault(k, len(index)) for k in keys), dtype=np.int64, count=n)
    return cluster, len(index)


# --------------------------------------------------------------------------- score


def score(
    y_true,
    proba,
    classes: Sequence[str],
    *,
    groups=None,
    sources=None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    thresholds: Mapping[str, Mapping] | None = None,
    threshold_rule: str | None = None,
    subgroups: Mapping[str, Sequence[str | None]] | None = None,
) -> dict:
    """Score predicted probabilities against true labels, with bootstrap intervals.

    Parameters
    ----------
    y_true : (n,) int class indices into ``classes``.
    proba : (n, K) probabilities, ``K == len(classes)``; for two classes a sigmoid
        output (n,) or (n, 1) giving the probability of ``classes[1]`` is accepted.
    classes : class names, in index order.
    groups : optional (n,) patient ids. When given, the bootstrap resamples
        patients (a cluster bootstrap): images of one patient are not independent,
        and resampling them one by one gives intervals that are too narrow.
        Missing ids (None, NaN, "") count as a patient of their own.
    sources : optional (n,) source (hospital, dataset) per image; adds ``by_source``.
        Missing sources are left out of the breakdown (not out of the totals).
    n_boot : bootstrap resamples; 0 turns intervals off (``ci`` values are None).
    seed : seeds the ``np.random.Generator``, so results are reproducible.
    ci : coverage of the percentile intervals.
    thresholds : optional operating points from :func:`choose_thresholds` (chosen
        on validation data); adds ``operating_points``.
    threshold_rule : the rule text the thresholds were chosen by; required with
        ``thresholds``.
    subgroups : optional ``{group: (n,) values}`` (``{"sex": ["F", "M", None, ...]}``);
        adds ``by_group``, the figures per value of each group with patient-bootstrap
        intervals (see :func:`xrayfeat.analysis.subgroups.by_group`).

    Returns
    -------
    dict of plain Python values: ``n``, ``accuracy``, ``loss`` (log-loss of the
    true class, clipped to [eps, 1 - eps] like scikit-learn), ``balanced_accuracy``
    (mean recall over classes present in ``y_true``), ``per_class``
    ({name: {precision, recall, f1, support}}, zero_division=0), ``roc_auc``
    (binary: AUC of ``classes[1]``; multiclass: macro one-vs-rest; None when a
    class is absent from ``y_true``), ``roc_auc_per_class``, ``confusion``
    (K x K, rows = true class), ``ci`` ({accuracy, balanced_accuracy, roc_auc}:
    [lo, hi] or None), ``ci_method``, ``ci_level``, ``n_patients`` (when
    ``groups`` given) and ``by_source`` (when ``sources`` given:
    {source: {n, accuracy, balanced_accuracy, ci_accuracy}}), ``calibration``
    (see :func:`calibration`) and ``operating_points`` (when ``thresholds`` given;
    see :func:`operating_points`, bootstrapped with a generator of its own from
    ``seed``, so that every other value is the same with or without it) and
    ``by_group`` (when ``subgroups`` given; a generator of its own too).

    Predictions are the argmax of ``proba`` (ties go to the lower index; for a
    sigmoid that is a 0.5 threshold with 0.5 itself predicting ``classes[0]``).
    Bootstrap resamples in which a class is missing are left out of the ROC-AUC
    interval; when more than half are, the interval is None.
    """
    classes = _as_classes(classes)
    k = len(classes)
    n_boot = _check_bootstrap(n_boot, ci)
    if thresholds is not None and threshold_rule is None:
        raise ValueError("'threshold_rule' must be given with 'thresholds' (the rule text they were chosen by).")
    y, p = _as_predictions(y_true, proba, k)
    n = len(y)
    grp = _as_keys(groups, n, "groups")
    src = _as_keys(sources, n, "sources")

    pred = np.argmax(p, axis=1)
    labels = list(range(k))
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    auc_per_class = _auc_per_class(y, p, k)
    auc = _summary_auc(auc_per_class, k)

    result: dict = {
        "n": int(n),
        "accuracy": float(np.mean(pred == y)),
        "loss": _log_loss(y, p),
        "balanced_accuracy": _balanced_accuracy(y, pred, k),
        "per_class": {
            c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(sup[i])}
            for i, c in enumerate(classes)
        },
        "roc_auc": auc,
        "roc_auc_per_class": dict(zip(classes, auc_per_class)),
        "confusion": confusion_matrix(y, pred, labels=labels).astype(int).tolist(),
    }

    rng = np.random.default_rng(seed)
    cluster, n_clusters = _clusters(grp, n)
    unit = "patients" if grp is not None else "images"
    if grp is not None:
        result["n_patients"] = int(n_clusters)
    if n_boot > 0:
        dist = _bootstrap(y, p, pred, k, cluster, n_clusters, n_boot, rng, with_auc=auc is not None)
        result["ci"] = {
            "accuracy": _interval(dist["accuracy"], ci),
            "balanced_accuracy": _interval(dist["balanced_accuracy"], ci),
            "roc_auc": _interval(dist["roc_auc"], ci) if auc is not None else None,
        }
        result["ci_method"] = f"bootstrap over {unit}, {n_boot} resamples"
    else:
        result["ci"] = {"accuracy": None, "balanced_accuracy": None, "roc_auc": None}
        result["ci_method"] = "none"
    result["ci_level"] = float(ci)

    if src is not None:
        by_source: dict = {}
        names = sorted({s for s in src if s is not None})
        for name in names:
            mask = src == name
            ys, ps, preds = y[mask], p[mask], pred[mask]
            entry: dict = {
                "n": int(mask.sum()),
                "accuracy": float(np.mean(preds == ys)),
                "balanced_accuracy": _balanced_accuracy(ys, preds, k),
                "ci_accuracy": None,
            }
            if n_boot > 0:
                c_idx, c_n = _clusters(grp[mask] if grp is not None else None, len(ys))
                d = _bootstrap(ys, ps, preds, k, c_idx, c_n, n_boot, rng, with_auc=False)
                entry["ci_accuracy"] = _interval(d["accuracy"], ci)
            by_source[name] = entry
        result["by_source"] = by_source
    if subgroups is not None:
        from xrayfeat.analysis.subgroups import by_group  # it builds on this module

        result["by_group"] = by_group(subgroups, y, p, classes, groups=grp, n_boot=n_boot, seed=seed, ci=ci)

    result["calibration"] = calibration(y, p, classes)
    if thresholds is not None:
        result["operating_points"] = operating_points(
            y, p, classes, thresholds, rule=threshold_rule, groups=grp, n_boot=n_boot, seed=seed, ci=ci
        )
    return result


# --------------------------------------------------------------------------- thresholds


def _scored_classes(classes: list[str], positive: str | None) -> list[int]:
    """Indices of the classes that get an operating point: the positive one of two, else all."""
    if positive is not None and positive not in classes:
        raise ValueError(f"The 'positive' parameter must be one of {classes!r} or None. Got {positive!r} instead.")
    if len(classes) > 2:
        return list(range(len(classes)))
    return [classes.index(positive) if positive is not None else 1]


def _parse_rule(rule) -> tuple[str, float | None]:
    try:
        return parse_threshold(rule)
    except (TypeError, ValueError) as err:
        raise ValueError(f"The 'rule' parameter must be {Threshold().describe()}. Got {rule!r} instead.") from err


def choose_thresholds(y_val, proba_val, classes: Sequence[str], rule: str, *,
                      positive: str | None = None) -> dict[str, dict]:
    """Pick each class's operating point by ``rule``, on the data given (validation, never test).

    Two classes give one threshold, for ``positive`` (default ``classes[1]``);
    more give one per class, one-vs-rest (``positive``, when given, must still
    name a class). An image counts as positive when its probability of the class
    is >= the threshold, and only observed scores are candidates. Rules
    (:func:`xrayfeat.options.parsers.parse_threshold`):

    - ``youden``: maximises sensitivity + specificity - 1; among equal values,
      the largest threshold (the fewest false positives);
    - ``sens=X``: the largest threshold whose sensitivity is >= X;
    - ``spec=X``: the smallest threshold whose specificity is >= X;
    - a number: that probability, whatever the data.

    Returns ``{class: {"threshold": float | None, "note": str | None}}``. A
    data-driven rule needs positives and negatives of the class; without them
    (or when no observed score reaches the specificity) the threshold is None
    and the note says why. The result depends on nothing but the arguments.
    """
    classes = _as_classes(classes)
    kind, value = _parse_rule(rule)
    which = _scored_classes(classes, positive)
    y, p = _as_predictions(y_val, proba_val, len(classes))
    return {classes[c]: _threshold(kind, value, p[:, c], y == c, classes[c], rule) for c in which}


def _threshold(kind: str, value: float | None, score: np.ndarray, positive: np.ndarray, name: str, rule: str) -> dict:
    """One class's threshold (see :func:`choose_thresholds`), from exact integer counts."""
    if kind == "fixed":
        return {"threshold": float(value), "note": None}
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        lacking = f"no images of {name!r}" if n_pos == 0 else f"no images other than {name!r}"
        return {"threshold": None, "note": f"{lacking} to choose the {rule!r} threshold on: it needs both"}
    candidates = np.unique(score)  # ascending
    tp = n_pos - np.searchsorted(np.sort(score[positive]), candidates, side="left")
    tn = np.searchsorted(np.sort(score[~positive]), candidates, side="left")
    if kind == "youden":
        j = tp * n_neg + tn * n_pos  # n_pos * n_neg * (J + 1), exact: ties are real ties
        chosen = np.flatnonzero(j == j.max())[-1]
    elif kind == "sensitivity":
        chosen = np.flatnonzero(tp / n_pos >= value)[-1]  # the lowest score reaches sensitivity 1
    else:
        reaching = np.flatnonzero(tn / n_neg >= value)
        if reaching.size == 0:
            tied = n_neg - int(tn[-1])
            return {"threshold": None, "note": f"no observed score reaches specificity {value:g} for {name!r}: "
                                               f"{tied} of its {n_neg} negatives share the highest score"}
        chosen = reaching[0]
    return {"threshold": float(candidates[chosen]), "note": None}


# --------------------------------------------------------------------------- operating points

_RATES = ("sensitivity", "specificity", "ppv", "npv", "f1")


def _ratio(num, den) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _rates(tp, fp, tn, fn) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV and F1 from counts (scalars or arrays); NaN for 0/0."""
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _cells(truth: np.ndarray, called: np.ndarray) -> np.ndarray:
    """(n, 4) int indicators of tp, fp, tn, fn for one operating point."""
    return np.column_stack([truth & called, ~truth & called, ~truth & ~called, truth & ~called]).astype(np.int64)


def _count_distributions(cells: np.ndarray, cluster: np.ndarray, n_clusters: int, n_boot: int,
                         rng: np.random.Generator) -> np.ndarray:
    """(n_boot, m, 4) bootstrap counts for ``cells`` (n, m, 4): one product per block of resamples."""
    n, m, _ = cells.shape
    flat = cells.reshape(n, m * 4)
    return np.concatenate([(w @ flat).reshape(len(w), m, 4) for w in _weight_blocks(rng, n_boot, cluster, n_clusters)])


def _point(counts: np.ndarray, intervals: dict) -> dict:
    tp, fp, tn, fn = (int(c) for c in counts)
    rates = _rates(tp, fp, tn, fn)
    out: dict = {name: (None if np.isnan(rates[name]) else float(rates[name])) for name in _RATES}
    out.update(tp=tp, fp=fp, tn=tn, fn=fn, ci=intervals)
    return out


def _checked_thresholds(thresholds: Mapping[str, Mapping], classes: list[str]) -> list[tuple[int, dict]]:
    """(class index, {"threshold", "note"}) in class order, validated."""
    if not thresholds:
        raise ValueError("'thresholds' must hold at least one class's threshold. Got an empty mapping instead.")
    out = []
    for name, entry in thresholds.items():
        if name not in classes:
            raise ValueError(f"'thresholds' must be keyed by names in {classes!r}. Got {name!r} instead.")
        if not isinstance(entry, Mapping) or "threshold" not in entry:
            raise ValueError(f"'thresholds' must map each class to {{'threshold': t, 'note': ...}} as "
                             f"choose_thresholds returns. Got {entry!r} for {name!r} instead.")
        t = entry["threshold"]
        if t is not None and not math.isfinite(float(t)):
            raise ValueError(f"The threshold of {name!r} must be a finite number or None. Got {t!r} instead.")
        out.append((classes.index(name), {"threshold": None if t is None else float(t), "note": entry.get("note")}))
    return sorted(out, key=lambda item: item[0])


def operating_points(
    y_true,
    proba,
    classes: Sequence[str],
    thresholds: Mapping[str, Mapping],
    *,
    rule: str,
    groups=None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict:
    """Sensitivity, specificity, PPV, NPV and F1 per class, at the argmax and at the thresholds.

    ``thresholds`` is what :func:`choose_thresholds` returned on the validation
    data (``{class: {"threshold": t | None, "note": ...}}``); its classes are the
    ones scored, one-vs-rest. At ``argmax`` an image is called positive for a
    class when that class has the highest probability; at ``at_threshold``
    when its probability is >= the threshold (``at_threshold`` is None where
    the threshold is). Rates are None where undefined (0/0).

    Intervals come from the bootstrap of :func:`score`: patients are
    resampled when ``groups`` are given, and the thresholds stay fixed (they
    were chosen on other data, so choosing them again per resample would
    describe a different procedure). A rate's interval is None when it is
    undefined in more than half the resamples; all are None when ``n_boot`` is 0.

    Returns ``{"rule": rule, "chosen_on": "validation", "classes": {class:
    {"threshold", "note", "argmax": P, "at_threshold": P | None}}}``, with
    P = ``{sensitivity, specificity, ppv, npv, f1, tp, fp, tn, fn, ci: {rate: [lo, hi] | None}}``.
    """
    classes = _as_classes(classes)
    _parse_rule(rule)
    n_boot = _check_bootstrap(n_boot, ci)
    y, p = _as_predictions(y_true, proba, len(classes))
    chosen = _checked_thresholds(thresholds, classes)
    grp = _as_keys(groups, len(y), "groups")

    pred = np.argmax(p, axis=1)
    points: list[tuple[str, str]] = []  # (class, "argmax" | "at_threshold"), one per column of cells
    columns = []
    for c, entry in chosen:
        truth = y == c
        points.append((classes[c], "argmax"))
        columns.append(_cells(truth, pred == c))
        if entry["threshold"] is not None:
            points.append((classes[c], "at_threshold"))
            columns.append(_cells(truth, p[:, c] >= entry["threshold"]))
    cells = np.stack(columns, axis=1)  # (n, m, 4)

    no_ci = dict.fromkeys(_RATES)
    intervals = [no_ci] * len(points)
    if n_boot > 0:
        cluster, n_clusters = _clusters(grp, len(y))
        counts = _count_distributions(cells, cluster, n_clusters, n_boot, np.random.default_rng(seed))
        rates = _rates(*np.moveaxis(counts, -1, 0))  # each (n_boot, m)
        intervals = [{name: _interval(rates[name][:, j], ci) for name in _RATES} for j in range(len(points))]

    scored = {classes[c]: {**entry, "argmax": None, "at_threshold": None} for c, entry in chosen}
    for j, (name, where) in enumerate(points):
        scored[name][where] = _point(cells[:, j].sum(axis=0), dict(intervals[j]))
    return {"rule": str(rule), "chosen_on": "validation", "classes": scored}


# --------------------------------------------------------------------------- calibration


def calibration(y_true, proba, classes: Sequence[str], n_bins: int = 10) -> dict:
    """Can the probabilities be read as probabilities? Brier score and a top-label reliability curve.

    Brier: for two classes the mean of (p(classes[1]) - y)^2; for more, the mean
    over images of the sum over classes of (p_k - onehot_k)^2. The curve bins
    the top-label confidence (the highest probability) into ``n_bins`` equal-width
    bins of [0, 1] (a value on an edge goes to the upper bin, 1.0 to the last)
    and compares it with the accuracy of the argmax in each bin; ECE is
    Σ n_b / N · |accuracy_b - confidence_b|. Empty bins have n = 0 and None.

    Returns ``{"brier", "ece", "n_bins", "curve": [{"lo", "hi", "n", "confidence", "accuracy"}, ...]}``.
    """
    classes = _as_classes(classes)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
        raise TypeError(f"The 'n_bins' parameter must be an int. Got {n_bins!r} instead.")
    if n_bins < 1:
        raise ValueError(f"The 'n_bins' parameter must be >= 1. Got {n_bins!r} instead.")
    n_bins = int(n_bins)
    k = len(classes)
    y, p = _as_predictions(y_true, proba, k)
    onehot = np.eye(k)[y]
    if k == 2:
        brier = np.mean((p[:, 1] - onehot[:, 1]) ** 2)
    else:
        brier = np.mean(np.sum((p - onehot) ** 2, axis=1))

    confidence = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y).astype(np.float64)
    bins = np.clip(np.floor(confidence * n_bins), 0, n_bins - 1).astype(np.int64)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    hit_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    curve, ece = [], 0.0
    for b in range(n_bins):
        n_b = int(count[b])
        conf = float(conf_sum[b] / n_b) if n_b else None
        acc = float(hit_sum[b] / n_b) if n_b else None
        if n_b:
            ece += n_b / len(y) * abs(acc - conf)
        curve.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": n_b, "confidence": conf, "accuracy": acc})
    return {"brier": float(brier), "ece": float(ece), "n_bins": n_bins, "curve": curve}


# --------------------------------------------------------------------------- leakage


def split_overlap(
    train_hashes: Iterable[str],
    test_hashes: Iterable[str],
    train_patients: Iterable | None = None,
    test_patients: Iterable | None = None,
) -> dict[str, list[str]]:
    """What train and test share: identical files (by SHA-256) and patients.

    Either is leakage: the model is scored on what it was trained on, so test
    accuracy is optimistic. Missing patient ids (None, NaN, "") never match.
    Returns ``{"files": [sha256, ...], "patients": [id, ...]}``, sorted, as str.
    """
    files = sorted({str(h) for h in train_hashes} & {str(h) for h in test_hashes})
    patients: list[str] = []
    if train_patients is not None and test_patients is not None:
        tr = {str(x) for x in train_patients if not _is_missing(x)}
        te = {str(x) for x in test_patients if not _is_missing(x)}
        patients = sorted(tr & te)
    return {"files": files, "patients": patients}


def overlap_warnings(overlap: Mapping[str, Sequence[str]]) -> list[str]:
    """One-line warnings for a :func:`split_overlap` result; empty when there is no leak."""
    out: list[str] = []
    files = list(overlap.get("files") or [])
    patients = list(overlap.get("patients") or [])
    if files:
        if len(files) == 1:
            out.append("1 image in test is byte-identical to an image in train: test accuracy is optimistic")
        else:
            out.append(
                f"{len(files)} images in test are byte-identical to images in train: test accuracy is optimistic"
            )
    if patients:
        shown = ", ".join(patients[:2])
        ids = f"({shown})" if len(patients) <= 2 else f"(e.g. {shown})"
        out.append(f"patients in both train and test: {len(patients)} {ids}: split by patient_id")
    return out


# --------------------------------------------------------------------------- warnings


def _wilson_half_width(n: int, p: float, z: float = _Z95) -> float:
    """Half the width of the Wilson score interval (stays > 0 at p = 0 or 1)."""
    denom = 1.0 + z * z / n
    return float(z / denom * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)))


def tiny_test_warning(n_test: int, accuracy: float | None = None, *, max_half_width: float = 0.05) -> str | None:
    """Warn when the test set is too small for its accuracy to mean much.

    The 95% half-width comes from the Wilson interval at the observed accuracy
    (0.5, the worst case, when ``accuracy`` is None), so a perfect score on 20
    images still warns. Returns None when the half-width is at most
    ``max_half_width``.

    >>> tiny_test_warning(20, 0.5)
    'test set has 20 images: accuracy ±0.2 at 95%; treat differences below that as noise'
    """
    n_test = int(n_test)
    if n_test <= 0:
        return "test set is empty: there is no test accuracy; add a test split"
    p = 0.5 if accuracy is None or not math.isfinite(accuracy) else min(max(float(accuracy), 0.0), 1.0)
    h = _wilson_half_width(n_test, p)
    if h <= max_half_width:
        return None
    noun = "image" if n_test == 1 else "images"
    return f"test set has {n_test} {noun}: accuracy ±{h:.2g} at 95%; treat differences below that as noise"


def sentinel_warning(deep_accuracy: float | None, pixels_accuracy: float | None, margin: float = 0.05) -> str | None:
    """The pixels sentinel: is the deep model doing better than raw thumbnails?

    A logistic regression on 32x32 grayscale pixels cannot know anatomy. When it
    scores above the deep model, or within ``margin`` of it, the labels are
    predictable from crude image statistics (source hospital, exposure, text
    markers, borders): the data, not the model, is doing the work. Returns None
    when the deep model is clearly ahead or either accuracy is missing.
    """
    if deep_accuracy is None or pixels_accuracy is None:
        return None
    deep, pix = float(deep_accuracy), float(pixels_accuracy)
    if not (math.isfinite(deep) and math.isfinite(pix)):
        return None
    if pix < deep - margin:
        return None
    how = "above" if pix > deep else f"within {margin:g} of"
    return (
        f"a logistic regression on 32x32 grayscale pixels scores {pix:.3g}, {how} the deep model ({deep:.3g}): "
        "the data, not the model, is doing the work; look for source confounding or shortcuts "
        "(hospital, markers, borders) before trusting the deep result"
    )


def source_gap_warning(by_source: Mapping[str, Mapping] | None) -> str | None:
    """Warn when accuracy differs between sources by more than their intervals allow.

    Compares the best and the worst source; when their accuracy intervals
    (``ci_accuracy``, or a Wilson 95% interval when absent) do not overlap, the
    difference is unlikely to be noise. A model that is good on one hospital and
    poor on another often learnt the hospital: classes drawn from different
    sources are confounded with them.
    """
    if not by_source:
        return None
    rows = []
    for name, m in by_source.items():
        n = int(m.get("n") or 0)
        acc = m.get("accuracy")
        if n <= 0 or acc is None:
            continue
        lohi = m.get("ci_accuracy")
        if not lohi:
            h = _wilson_half_width(n, float(acc))
            lohi = [max(0.0, acc - h), min(1.0, acc + h)]
        rows.append((str(name), n, float(acc), float(lohi[0]), float(lohi[1])))
    if len(rows) < 2:
        return None
    best = max(rows, key=lambda r: r[2])
    worst = min(rows, key=lambda r: r[2])
    if best[3] <= worst[4]:
        return None

    def show(r):
        return f"{r[0]} {r[2]:.2f} [{r[3]:.2f}, {r[4]:.2f}] (n={r[1]})"

    return (
        f"accuracy differs by source beyond the intervals: {show(best)} vs {show(worst)}: "
        "classes may be confounded with source; check class counts per source and evaluate within each source"
    )
