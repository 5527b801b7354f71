"""The seed's head as plain arrays: its inference in numpy, without a deep-learning framework.

The seed's head is BatchNormalization → Flatten → Dense(ReLU) → Dropout →
Dense(sigmoid or softmax); a multi-label head ends in one sigmoid unit per
finding, and ``head.npz`` says so (``multilabel``). At inference Dropout does nothing and
BatchNormalization is an affine map with its moving statistics, so the whole
head is two matrix products. ``fit-head`` saves the trained head's parameters
(read through Keras' public ``get_weights``) as ``head.npz`` beside
``head.keras``; ``predict`` on cached features then needs no Keras import (about
5 s of TensorFlow start-up on a 2-core machine), as the warm ``extract`` path
needs none. A head with a trained backbone tail has no arrays file and is run
by Keras. ``tests/test_head_numpy.py`` checks the two agree.
"""

from __future__ import annotations

import os

import numpy as np

from xrayfeat.distributed.lifetime import WriteGuard, guarded_path
from xrayfeat.models.multilabel import MULTILABEL_MODEL_NAME

#: The layers of the seed's head, in order (see :func:`xrayfeat.models.head.build_head`).
LAYOUT = ("head_bn", "head_flatten", "head_dense", "head_dropout", "head_output")


def is_plain_head(model) -> bool:
    """Whether ``model``'s layers are the plain seed head's, :data:`LAYOUT` (no backbone tail)."""
    return tuple(layer.name for layer in model.layers if type(layer).__name__ != "InputLayer") == LAYOUT


def arrays_of(model) -> dict | None:
    """The head's inference parameters as numpy arrays; None when ``model`` is not the plain seed head."""
    if not is_plain_head(model):
        return None
    bn, dense, out = model.get_layer("head_bn"), model.get_layer("head_dense"), model.get_layer("head_output")
    rank = len(model.inputs[0].shape)
    if not (bn.center and bn.scale) or bn.axis not in (-1, rank - 1):
        return None
    gamma, beta, mean, variance = (np.asarray(w, np.float32) for w in bn.get_weights())
    hidden_kernel, hidden_bias = (np.asarray(w, np.float32) for w in dense.get_weights())
    out_kernel, out_bias = (np.asarray(w, np.float32) for w in out.get_weights())
    activation = out.get_config()["activation"]
    if dense.get_config()["activation"] != "relu" or activation not in ("sigmoid", "softmax"):
        return None
    arrays = {"bn_gamma": gamma, "bn_beta": beta, "bn_mean": mean, "bn_variance": variance,
              "bn_epsilon": np.float32(bn.epsilon), "hidden_kernel": hidden_kernel, "hidden_bias": hidden_bias,
              "out_kernel": out_kernel, "out_bias": out_bias, "activation": np.array(activation)}
    if model.name == MULTILABEL_MODEL_NAME:  # only then: a single-label head's arrays stay as they were
        if activation != "sigmoid":
            return None
        arrays["multilabel"] = np.array(True)
    return arrays


def save(model, path: str | os.PathLike, *, guard: WriteGuard | None = None) -> bool:
    """Write ``model``'s arrays to ``path`` (``.npz``, atomically); False when it is not the plain seed head.

    ``guard``: the claim on the run folder, checked before the file is written
    and before it takes its name (:func:`~xrayfeat.distributed.lifetime.guarded_path`).
    """
    arrays = arrays_of(model)
    if arrays is None:
        return False
    with guarded_path(path, guard, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return True


class NumpyHead:
    """The head's forward pass at inference, from the arrays :func:`save` wrote."""

    def __init__(self, path: str | os.PathLike):
        with np.load(path, allow_pickle=False) as data:
            self.arrays = {name: data[name] for name in data.files}
        a = self.arrays
        # BatchNormalization at inference: (x - mean) / sqrt(variance + epsilon) * gamma + beta, per channel
        self._scale = (a["bn_gamma"] / np.sqrt(a["bn_variance"] + a["bn_epsilon"])).astype(np.float32)
        self._shift = (a["bn_beta"] - a["bn_mean"] * self._scale).astype(np.float32)
        self.activation = str(a["activation"])
        # arrays written before multi-label heads existed have no flag: K sigmoid units were always one (binary)
        self.multilabel = bool(a["multilabel"]) if "multilabel" in a else False

    def predict_proba(self, x, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities, shape (n, K); for two classes the columns are [1 - p, p] (as Keras' head gives).

        A multi-label head gives each finding's sigmoid probability, shape (n, K), as Keras' head does.

        ``x``: what the head was trained on, spatial maps (n, H, W, C) or pooled vectors (n, C).
        """
        out = [self._forward(np.asarray(x[i:i + batch_size], np.float32)) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self._classes()), np.float32)

    def _classes(self) -> int:
        k = self.arrays["out_kernel"].shape[1]
        return 2 if k == 1 and not self.multilabel else k

    def _forward(self, x: np.ndarray) -> np.ndarray:
        a = self.arrays
        x = (x * self._scale + self._shift).reshape(len(x), -1)  # BatchNormalization, then Flatten
        h = np.maximum(x @ a["hidden_kernel"] + a["hidden_bias"], 0)  # Dense + ReLU; Dropout is off at inference
        z = h @ a["out_kernel"] + a["out_bias"]
        if self.activation == "sigmoid":
            p = 1 / (1 + np.exp(-z))
            return p if self.multilabel else np.concatenate([1 - p, p], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
