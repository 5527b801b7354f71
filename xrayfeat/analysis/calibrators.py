"""Calibration you can ship: a map fitted on the validation rows that makes probabilities read as probabilities.

``fit-head --calibrate`` fits one calibrator per model (head and each baseline)
on that model's validation probabilities, never on test, and every later use of
the run applies it (predict, evaluate, the thresholds chosen on validation):

- ``temperature``: one scalar T > 0 on the logits, chosen by least log-loss on
  validation (Guo et al. 2017). Single-label: ``softmax(log p / T)`` (log p are
  the logits up to a constant, so this is the softmax of the logits over T);
  multi-label: ``sigmoid(logit(p_j) / T)`` for every finding, one T for all.
  T changes no ranking within a class column of a binary task, nor the argmax.
- ``isotonic``: a non-decreasing step-linear map per class, one-vs-rest
  (scikit-learn's ``IsotonicRegression``, clipped to [0, 1] and to the range
  seen): for two classes it maps the second class's probability and the first
  is its complement; for more, each class is mapped and each row divided by its
  sum (a row every map sends to 0 gets 1/K for each class); for a multi-label
  run each finding is mapped on its own and nothing is renormalised.

A calibrator is plain data (:func:`fit_calibrator` returns a dict that goes into
``metrics.json`` as is), so anyone can apply it without scikit-learn: the
isotonic map is ``numpy.interp(p, x, y)`` over its breakpoints.
"""

from __future__ import annotations

import numpy as np

from xrayfeat.analysis import metrics
from xrayfeat.errors import XrayfeatError

__all__ = ["fit_calibrator", "apply_calibrator", "summary", "check_calibration_data"]

#: Probabilities are clipped to [_EPS, 1 - _EPS] before a logarithm.
_EPS = 1e-12
#: The temperatures searched: log T in [-_LOG_T, _LOG_T] (T from about 0.01 to 100).
_LOG_T = 4.6


def _logits(p: np.ndarray, multilabel: bool) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p) if multilabel else np.log(p)


def _scaled(logits: np.ndarray, t: float, multilabel: bool) -> np.ndarray:
    z = logits / t
    if multilabel:
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(p: np.ndarray, y: np.ndarray, mask, multilabel: bool) -> float:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    if multilabel:
        loss = -(y * np.log(p) + (1 - y) * np.log1p(-p))
        return float(loss[mask].mean()) if mask.any() else 0.0
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def check_calibration_data(method: str, y_val, classes, *, multilabel: bool = False, mask=None) -> None:
    """Refuse, in one line, validation rows that cannot fit ``method`` (checked before any training).

    Every method needs validation rows; isotonic regression of a single-label
    task needs images of every class and of the rest among them (a map fitted
    without positives sends the class to 0 for every image). A multi-label
    finding short of them is left uncalibrated instead, and the record says so.
    """
    if method == "none":
        return
    if len(y_val) == 0:
        raise XrayfeatError(f"--calibrate {method} fits on the validation rows, and this study has none: give the "
                            f"data a val split or leave --calibrate out")
    if method == "isotonic" and not multilabel:
        y = np.asarray(y_val)
        lacking = [c for k, c in enumerate(classes) if not (y == k).any() or (y == k).all()]
        if lacking:
            raise XrayfeatError(f"--calibrate isotonic needs validation images of each class and of the others; "
                                f"validation lacks them for {', '.join(map(repr, lacking))}: use --calibrate "
                                f"temperature, or add validation images")


def fit_calibrator(method: str, y_val, proba_val, classes, *, multilabel: bool = False, mask=None) -> dict | None:
    """The calibrator of one model, fitted on its validation probabilities: None for ``"none"``.

    Returns ``{"temperature": T}`` or ``{"isotonic": {class: {"x": [...], "y": [...]} | None}}``
    (the breakpoints of each class's map; None: a multi-label finding without
    positives or negatives in validation, left as it is). ``y_val``: class
    indices, or (n, K) 0/1 targets with ``mask`` (where they count) for ``multilabel``.
    """
    if method == "none":
        return None
    classes = list(classes)
    p = np.asarray(proba_val, dtype=np.float64)
    if multilabel:
        y = np.asarray(y_val, dtype=np.float64)
        mask = np.ones(y.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    else:
        y = np.asarray(y_val, dtype=np.int64)
        p = metrics.as_proba(p, len(classes))
    if method == "temperature":
        from scipy.optimize import minimize_scalar

        logits = _logits(p, multilabel)
        found = minimize_scalar(lambda s: _nll(_scaled(logits, float(np.exp(s)), multilabel), y, mask, multilabel),
                                bounds=(-_LOG_T, _LOG_T), method="bounded", options={"xatol": 1e-6})
        return {"temperature": float(np.exp(found.x))}
    if method == "isotonic":
        return {"isotonic": _fit_isotonic(y, p, classes, multilabel, mask)}
    raise ValueError(f"The 'method' parameter must be one of 'none', 'temperature', 'isotonic'. Got {method!r} instead.")


def _fit_isotonic(y, p, classes, multilabel: bool, mask) -> dict:
    from sklearn.isotonic import IsotonicRegression

    maps = {}
    columns = range(len(classes)) if (multilabel or len(classes) > 2) else [1]
    for k in columns:
        if multilabel:
            truth, score = y[mask[:, k], k], p[mask[:, k], k]
        else:
            truth, score = (y == k).astype(np.float64), p[:, k]
        if not multilabel and len(classes) == 2:
            maps[classes[0]] = None  # the complement of the second class
        if len(truth) == 0 or truth.min() == truth.max():
            maps[classes[k]] = None
            continue
        fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, truth)
        maps[classes[k]] = {"x": [float(v) for v in fitted.X_thresholds_], "y": [float(v) for v in fitted.y_thresholds_]}
    return {c: maps.get(c) for c in classes}


def apply_calibrator(calibrator: dict | None, proba, classes, *, multilabel: bool = False) -> np.ndarray:
    """``proba`` (n, K) through a calibrator of :func:`fit_calibrator` (None: unchanged)."""
    p = np.asarray(proba, dtype=np.float64)
    if calibrator is None:
        return p
    if "temperature" in calibrator:
        return _scaled(_logits(p, multilabel), float(calibrator["temperature"]), multilabel)
    maps = calibrator["isotonic"]
    classes = list(classes)
    out = p.copy()
    if not multilabel and len(classes) == 2:
        second = maps[classes[1]]
        out[:, 1] = np.interp(p[:, 1], second["x"], second["y"])
        out[:, 0] = 1.0 - out[:, 1]
        return out
    for k, name in enumerate(classes):
        if maps.get(name) is not None:
            out[:, k] = np.interp(p[:, k], maps[name]["x"], maps[name]["y"])
    if multilabel:
        return out
    total = out.sum(axis=1, keepdims=True)
    return np.where(total > 0, out / np.where(total > 0, total, 1.0), 1.0 / len(classes))


def _figures(y, p, classes, multilabel: bool, mask) -> dict:
    """Brier score and ECE (:func:`xrayfeat.analysis.metrics.calibration`); multi-label: their means over findings."""
    if not multilabel:
        found = metrics.calibration(y, p, classes)
        return {"brier": found["brier"], "ece": found["ece"]}
    briers, eces = [], []
    for k in range(len(classes)):
        counted = mask[:, k]
        if counted.any():
            found = metrics.calibration(y[counted, k].astype(np.int64), p[counted, k], ["0", "1"])
            briers.append(found["brier"])
            eces.append(found["ece"])
    if not briers:
        return {"brier": None, "ece": None}
    return {"brier": float(np.mean(briers)), "ece": float(np.mean(eces))}


def summary(calibrator: dict, rows: dict, classes, *, multilabel: bool = False) -> dict:
    """One model's calibration record: the calibrator and its Brier/ECE before and after on each set of ``rows``.

    ``rows`` maps a name ("validation", "test") to ``(y, mask, raw probabilities)``.
    """
    out = dict(calibrator)
    for name, (y, mask, raw) in rows.items():
        if multilabel:
            y = np.asarray(y)
            mask = np.ones(y.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        after = apply_calibrator(calibrator, raw, classes, multilabel=multilabel)
        out[name] = {"before": _figures(y, raw, classes, multilabel, mask),
                     "after": _figures(y, after, classes, multilabel, mask)}
    return out
