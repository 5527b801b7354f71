"""The seed's Keras classification head, trained on cached backbone features.

Head: BatchNormalization → Flatten → Dense(units, ReLU, L2 on the kernel) →
Dropout → Dense(1, sigmoid) for two classes or Dense(K, softmax) for K.
With ``tail`` (a model of the backbone's last block), the head first runs the
cached cut-point activations through that block, which is trained too.
"""

from __future__ import annotations


def output_units(n_classes: int) -> int:
    """The seed used one sigmoid unit for two classes, K softmax units otherwise."""
    return 1 if n_classes == 2 else n_classes


def _head_layers(n_classes: int, units: int, dropout: float, l2: float):
    import keras

    binary = n_classes == 2
    return [
        keras.layers.BatchNormalization(name="head_bn"),
        keras.layers.Flatten(name="head_flatten"),
        keras.layers.Dense(
            units,
            activation="relu",
            kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
            name="head_dense",
        ),
        keras.layers.Dropout(dropout, name="head_dropout"),
        keras.layers.Dense(
            output_units(n_classes),
            activation="sigmoid" if binary else "softmax",
            name="head_output",
        ),
    ]


def build_head(
    input_shape: tuple[int, ...],
    n_classes: int,
    *,
    units: int = 256,
    dropout: float = 0.3,
    l2: float = 1e-3,
    tail=None,
):
    """The uncompiled head model taking cached features of ``input_shape``.

    ``tail``: optional Keras model (the backbone after the cut layer) inserted
    before the head and left trainable.
    """
    import keras

    if n_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes; got {n_classes}")
    features = keras.Input(tuple(input_shape), name="features")
    x = tail(features) if tail is not None else features
    for layer in _head_layers(n_classes, units, dropout, l2):
        x = layer(x)
    return keras.Model(features, x, name="head")


def build_seed_model(backbone, n_classes: int, *, units: int = 256, dropout: float = 0.3, l2: float = 1e-3):
    """The seed's whole model: the frozen backbone followed by the head (for ``describe``)."""
    import keras

    backbone.trainable = False
    x = backbone.output
    for layer in _head_layers(n_classes, units, dropout, l2):
        x = layer(x)
    return keras.Model(backbone.input, x, name=f"{backbone.name}_seed")


def count_params(model) -> dict:
    """Total, trainable and non-trainable parameter counts, as Keras' summary reports them."""
    import numpy as np

    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    frozen = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {"total": trainable + frozen, "trainable": trainable, "non_trainable": frozen}
