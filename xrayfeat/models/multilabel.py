"""Multi-label targets for the models: checked targets and masks, per-finding balanced weights, the head's masked loss.

A multi-label task has K findings. Each image has a 0/1 target per finding
and a mask entry saying whether that target counts (False: uncertain under the
``ignore`` policy, or blank; see :func:`xrayfeat.data.labels.targets`). A
masked entry is left out of every loss and every score; what its target holds
does not matter (it may be NaN or -1).

The head receives targets, mask and weights as one array of shape (n, 2K)
(:func:`keras_targets`): the targets in the first K columns (0 where masked),
each entry's weight in the last K (0 where masked, else 1 or its balanced
class weight). Keras carries it as ``y_true`` through its public API, so the
batch stream, ``model.fit`` and the jax loop (Keras' own ``train_step``) run
unchanged on every backend, and the weights travel with the rows they belong
to. :class:`MaskedBinaryCrossentropy` is binary cross-entropy summed over the
entries that count, weighted, and divided by their number in the batch;
:class:`MaskedBinaryAccuracy` is binary accuracy (threshold 0.5) over those
entries. Validation targets carry weight 1 where the mask is True, so
``val_loss`` is unweighted, as for a single-label head.

``class_weight="balanced"`` (:func:`balanced_weights`) applies scikit-learn's
``n / (2 * count)`` to each finding on its own, counted over that finding's
entries that count: positives weigh ``n_k / (2 * pos_k)``, negatives
``n_k / (2 * neg_k)``, so a finding's positives and negatives weigh in equally
(positives ``neg_k / pos_k`` times a negative, the usual positive weight) and
the mean weight is 1. The baselines' one-vs-rest classifiers get the same
weights from scikit-learn's ``class_weight="balanced"``.

Keras is imported only by :func:`masked_objects`, which defines (once) and
registers the loss and the metric as serialisable Keras objects.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

__all__ = ["MULTILABEL_MODEL_NAME", "REGISTERED_PACKAGE", "balanced_weights", "check_targets", "keras_targets", "masked_objects"]

_logger = logging.getLogger(__name__)

#: The name of a multi-label head's Keras model: what tells a saved head with K sigmoid units (one per finding)
#: from a single-label one (a binary head has one sigmoid unit too; :mod:`.head_numpy` records it in ``head.npz``).
MULTILABEL_MODEL_NAME = "head_multilabel"

#: The package name the loss and the metric are registered under (``xrayfeat>MaskedBinaryCrossentropy``).
REGISTERED_PACKAGE = "xrayfeat"


def check_targets(y, mask, n_findings: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, mask)``: float32 0/1 targets of shape (n, K), 0 where masked, and the bool mask (n, K).

    ``y``: (n, K) 0/1 targets (masked entries may hold anything, NaN included);
    ``mask``: (n, K) bool, True where the entry counts, or None (every entry
    counts). ``name`` says which arguments a refusal is about.
    """
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[1] != n_findings:
        raise ValueError(f"{name}: multi-label targets must have shape (n, {n_findings}), one column per finding; "
                         f"got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise ValueError(f"{name}: multi-label targets must be numbers (0 or 1); got dtype {y.dtype}")
    if mask is None:
        mask = np.ones(y.shape, dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != y.shape:
            raise ValueError(f"{name}: the mask must have the targets' shape {y.shape}; got shape {mask.shape}")
        if mask.dtype != np.bool_:
            raise ValueError(f"{name}: the mask must be a bool array (True where an entry counts); got dtype {mask.dtype}")
    values = y.astype(np.float64)
    counted = values[mask]
    if counted.size and not np.all((counted == 0) | (counted == 1)):
        bad = counted[(counted != 0) & (counted != 1)][0]
        raise ValueError(f"{name}: multi-label targets must be 0 or 1 where the mask is True; got {bad!r}")
    return np.where(mask, values, 0.0).astype(np.float32), mask


def balanced_weights(targets: np.ndarray, mask: np.ndarray, *, log_as: str | None = None) -> np.ndarray:
    """One weight per entry, (n, K) float32: each finding's positives and negatives balanced; 0 where masked.

    See the module docstring. A finding without a positive or without a
    negative among its counted entries keeps weight 1 (nothing to balance).
    ``log_as``: when given, the per-finding positive and negative weights are
    logged under that name.
    """
    targets = np.asarray(targets, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    n = mask.sum(axis=0).astype(np.float64)
    pos = (mask & (targets == 1)).sum(axis=0).astype(np.float64)
    neg = n - pos
    both = (pos > 0) & (neg > 0)
    w_pos = np.where(both, n / (2 * np.maximum(pos, 1)), 1.0)
    w_neg = np.where(both, n / (2 * np.maximum(neg, 1)), 1.0)
    if log_as:
        _logger.info("%s: balanced weights per finding (positive, negative) %s", log_as,
                     [(round(float(p), 4), round(float(q), 4)) for p, q in zip(w_pos, w_neg)])
    weights = np.where(targets == 1, w_pos[None, :], w_neg[None, :])
    return np.where(mask, weights, 0.0).astype(np.float32)


def keras_targets(targets: np.ndarray, mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The head's ``y_true``, (n, 2K) float32: targets (0 where masked), then weights (``mask`` as 0/1 without)."""
    targets = np.asarray(targets, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    w = mask.astype(np.float32) if weights is None else np.where(mask, np.asarray(weights, np.float32), 0.0)
    return np.concatenate([np.where(mask, targets, 0.0), w], axis=1).astype(np.float32)


@functools.cache
def masked_objects() -> tuple[type, type]:
    """``(MaskedBinaryCrossentropy, MaskedBinaryAccuracy)``: Keras classes, defined and registered on the first call.

    Both read ``y_true`` as :func:`keras_targets` lays it out, with K the
    model's output units. Registered with ``keras.saving.register_keras_serializable``
    under :data:`REGISTERED_PACKAGE`, so a head saved compiled also loads
    compiled once this has run (:func:`xrayfeat.models.head.load_head` loads
    uncompiled and needs neither).
    """
    import keras
    from keras import ops

    def split(y_true, y_pred):
        k = y_pred.shape[-1]
        return y_true[..., :k], y_true[..., k:]

    @keras.saving.register_keras_serializable(package=REGISTERED_PACKAGE)
    class MaskedBinaryCrossentropy(keras.losses.Loss):
        """Binary cross-entropy over the entries that count, weighted, divided by their number in the batch.

        ``call`` gives each row its share, ``sum_k w_ik * bce_ik / max(count, 1)``,
        and the ``"sum"`` reduction adds the rows up.
        """

        def __init__(self, name="masked_binary_crossentropy", reduction="sum", dtype=None):
            super().__init__(name=name, reduction=reduction, dtype=dtype)

        def call(self, y_true, y_pred):
            target, weight = split(y_true, y_pred)
            bce = ops.binary_crossentropy(target, y_pred, from_logits=False)
            count = ops.maximum(ops.sum(ops.cast(weight > 0, y_pred.dtype)), 1.0)
            return ops.sum(weight * bce, axis=-1) / count

    @keras.saving.register_keras_serializable(package=REGISTERED_PACKAGE)
    class MaskedBinaryAccuracy(keras.metrics.Metric):
        """The share of counted entries whose prediction (above ``threshold``) matches the target."""

        def __init__(self, name="accuracy", threshold=0.5, dtype=None):
            super().__init__(name=name, dtype=dtype)
            self.threshold = float(threshold)
            self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
            self.counted = self.add_variable(shape=(), initializer="zeros", name="counted")

        def update_state(self, y_true, y_pred, sample_weight=None):
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            y_true = ops.convert_to_tensor(y_true, dtype=self.dtype)
            target, weight = split(y_true, y_pred)
            counts = ops.cast(weight > 0, self.dtype)
            hits = ops.cast(ops.equal(target > 0.5, y_pred > self.threshold), self.dtype)
            self.correct.assign_add(ops.sum(hits * counts))
            self.counted.assign_add(ops.sum(counts))

        def result(self):
            return ops.divide_no_nan(self.correct, self.counted)

        def reset_state(self):
            self.correct.assign(0.0)
            self.counted.assign(0.0)

        def get_config(self):
            return {**super().get_config(), "threshold": self.threshold}

    return MaskedBinaryCrossentropy, MaskedBinaryAccuracy
