"""From probabilities to a decision: the argmax, or the run's thresholds chosen on validation.

:func:`decide` is the one rule predict applies, so that predicting a run's own
test images gives the very counts of its operating points (``metrics.json``,
:func:`xrayfeat.analysis.metrics.operating_points`):

- ``argmax``: the most probable class (ties to the first class);
- ``threshold``, two classes: the positive class (the one the thresholds name)
  when its probability is >= its threshold, else the other class;
- ``threshold``, more classes: each class is *called* one-vs-rest when its
  probability is >= its own threshold (``called``: what the operating points
  count). The decision is the called class furthest above its threshold
  (largest p - t; ties to the first class), and none (an empty name) when no
  class reaches its threshold: an image the model does not place is shown as
  such, for a reader to look at, rather than forced into its likeliest class;
- multi-label (every rule): each finding is called at its own threshold,
  and the decision names the findings called, joined by ``|`` (empty for none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xrayfeat.data.labels import positive_names

__all__ = ["Decision", "decide", "NONE"]

#: The decision of an image no class reaches the threshold of (more than two classes, ``threshold``).
NONE = ""


@dataclass
class Decision:
    """Each image's decision (``predicted``) and, for more than two classes by thresholds, the classes called."""

    predicted: list[str]
    called: list[str] | None = None  # "|"-joined classes at or above their thresholds; None where not applicable
    calls: np.ndarray | None = None  # (n, K) bool: the one-vs-rest calls behind ``called`` (multi-label: the findings)


def decide(proba, classes, rule: str, thresholds: dict | None = None, *, multilabel: bool = False) -> Decision:
    """Each row of ``proba`` (n, K) decided by ``rule`` (see the module docstring).

    ``thresholds``: {class: threshold} for ``threshold`` and multi-label runs;
    two classes need the positive class's alone, more classes every class's.
    """
    classes = list(classes)
    p = np.asarray(proba, dtype=np.float64)
    if multilabel:
        t = np.array([thresholds[c] for c in classes], dtype=np.float64)
        calls = p >= t[None, :]
        return Decision(predicted=[positive_names(row, classes) for row in calls], calls=calls)
    if rule == "argmax":
        return Decision(predicted=[classes[k] for k in p.argmax(axis=1)])
    if rule != "threshold":
        raise ValueError(f"The 'rule' parameter must be 'argmax' or 'threshold'. Got {rule!r} instead.")
    if len(classes) == 2:
        [positive] = list(thresholds)
        k = classes.index(positive)
        called = p[:, k] >= float(thresholds[positive])
        return Decision(predicted=[classes[k] if c else classes[1 - k] for c in called])
    t = np.array([thresholds[c] for c in classes], dtype=np.float64)
    calls = p >= t[None, :]
    margin = np.where(calls, p - t[None, :], -np.inf)
    best = margin.argmax(axis=1)
    predicted = [classes[b] if row.any() else NONE for b, row in zip(best, calls)]
    return Decision(predicted=predicted, called=[positive_names(row, classes) for row in calls], calls=calls)
