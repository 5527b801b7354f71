"""The head's numpy inference equals Keras' on the same weights (binary and multiclass), and knows its limits."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from xrayfeat.models import head_numpy
from xrayfeat.models.head import build_head


def trained_like_head(n_classes: int, shape=(3, 3, 16), seed=0):
    """A seed head with non-trivial weights and BatchNormalization statistics (as after training)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_head(shape, n_classes, units=32)
    rng = np.random.default_rng(seed)
    bn = model.get_layer("head_bn")
    gamma, beta, mean, variance = bn.get_weights()
    bn.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.5, beta.shape),
                    rng.normal(0, 2, mean.shape), rng.uniform(0.1, 4, variance.shape)])
    return model


@pytest.mark.parametrize("n_classes", [2, 4])
def test_numpy_head_equals_keras(tmp_path, n_classes):
    model = trained_like_head(n_classes)
    assert head_numpy.save(model, tmp_path / "head.npz")
    x = np.random.default_rng(1).normal(0, 3, (50, 3, 3, 16)).astype(np.float16)  # as the store keeps them
    keras_p = np.asarray(model.predict(x.astype(np.float32), verbose=0))
    if n_classes == 2:
        keras_p = np.concatenate([1 - keras_p, keras_p], axis=1)
    numpy_p = head_numpy.NumpyHead(tmp_path / "head.npz").predict_proba(x, batch_size=16)
    assert numpy_p.shape == (50, n_classes)
    np.testing.assert_allclose(numpy_p, keras_p, atol=2e-6)
    np.testing.assert_allclose(numpy_p.sum(axis=1), 1, atol=1e-6)


def test_a_head_with_a_tail_has_no_arrays(tmp_path):
    import keras

    tail = keras.Sequential([keras.layers.Conv2D(4, 1, name="tail_conv")], name="tail")
    model = build_head((3, 3, 8), 3, units=8, tail=tail)
    assert head_numpy.arrays_of(model) is None
    assert not head_numpy.save(model, tmp_path / "head.npz") and not (tmp_path / "head.npz").exists()


def test_importing_the_numpy_head_loads_no_framework():
    code = ("import sys, xrayfeat.models.head_numpy; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
