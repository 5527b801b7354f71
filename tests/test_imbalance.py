"""class_weight="balanced" on imbalanced training data: the head and the baselines find the rare class more often.

Training data 4:1, the rare class shifted but overlapping the common one; held
out, a balanced set. Without weights the models lean to the common class (the
training loss rewards it); balanced weights must raise the balanced accuracy
(the mean of the per-class recalls) and the share of rare-class predictions.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score
from threadpoolctl import threadpool_limits

keras = pytest.importorskip("keras")

from xrayfeat.models import head as heads  # noqa: E402
from xrayfeat.models.baselines import fit_baseline  # noqa: E402

# lbfgs must converge with the max_iter we set: a warning here is a failure.
pytestmark = pytest.mark.filterwarnings("error::sklearn.exceptions.ConvergenceWarning")


def two_classes(n_common: int, n_rare: int, seed: int, shape: tuple, shift: float, informative: int):
    """Unit-noise features; the rare class (1) is shifted by ``shift`` in its first ``informative`` values."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_common, int), np.ones(n_rare, int)]
    x = rng.normal(size=(len(y), *shape))
    x.reshape(len(y), -1)[:, :informative] += shift * y[:, None]
    return x.astype("float32"), y


def compare(predict_none, predict_balanced, x_test, y_test):
    """Balanced accuracy and the share predicted rare, for both models, on the balanced held-out set."""
    scores = {}
    for name, predict in (("none", predict_none), ("balanced", predict_balanced)):
        predicted = predict(x_test)
        scores[name] = (balanced_accuracy_score(y_test, predicted), float(np.mean(predicted == 1)))
    return scores


def test_balanced_head_finds_the_rare_class():
    shape = (1, 1, 4)
    x, y = two_classes(160, 40, seed=0, shape=shape, shift=0.75, informative=4)
    x_test, y_test = two_classes(200, 200, seed=1, shape=shape, shift=0.75, informative=4)
    args = dict(n_classes=2, epochs=4, steps_per_epoch=10, units=16, learning_rate=1e-2, seed=0,
                jit_compile=False if keras.backend.backend() == "tensorflow" else "auto")
    none = heads.train_head(x, y, **args)
    balanced = heads.train_head(x, y, class_weight="balanced", **args)
    assert (none.settings["class_weight"], balanced.settings["class_weight"]) == ("none", "balanced")
    scores = compare(none.predict, balanced.predict, x_test, y_test)
    assert scores["balanced"][0] > scores["none"][0]
    assert scores["balanced"][1] > scores["none"][1]


@pytest.mark.parametrize("name", ["logreg", "svm"])
def test_balanced_baseline_finds_the_rare_class(name):
    x, y = two_classes(160, 40, seed=1, shape=(16,), shift=1.2, informative=4)
    x_test, y_test = two_classes(200, 200, seed=101, shape=(16,), shift=1.2, informative=4)
    with threadpool_limits(limits=1, user_api="blas"):  # tiny matrices: BLAS threads cost more than they save
        none = fit_baseline(name, x, y, seed=0)
        balanced = fit_baseline(name, x, y, seed=0, class_weight="balanced")
    assert (none.summary()["class_weight"], balanced.summary()["class_weight"]) == ("none", "balanced")
    scores = compare(none.predict, balanced.predict, x_test, y_test)
    assert scores["balanced"][0] > scores["none"][0]
    assert scores["balanced"][1] > scores["none"][1]
