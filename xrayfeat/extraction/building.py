"""Building Keras models from the registry: the frozen backbone, the extractor and the trainable tail.

Keras is imported inside each function, so importing this module stays cheap.
Each backbone's preprocessing is a layer equal to Keras' own ``preprocess_input``
(``caffe``: BGR minus ImageNet means; ``tf``: scaled to [-1, 1]; ``torch``: scaled to
[0, 1], then ImageNet mean and std; ``in_model``: float pixels, which the model itself
normalizes; see :data:`xrayfeat.backbones.PREPROCESS_MODES`).
"""

from __future__ import annotations

import contextlib
import hashlib

from xrayfeat.backbones import CAFFE_MEAN_BGR, PRECISIONS, PREPROCESS_MODES, TORCH_MEAN_RGB, TORCH_STD_RGB, BackboneSpec
from xrayfeat.errors import WeightsError, XrayfeatError, first_line
from xrayfeat.extraction.weights import WeightsInfo


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Build layers under a Keras dtype policy, then restore the previous one."""
    import keras

    if precision not in PRECISIONS:
        raise XrayfeatError(
            f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}"
        )
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_backbone(spec: BackboneSpec, weights: WeightsInfo, image_size: int | None = None):
    """The frozen no-top Keras backbone with the resolved weights loaded.

    Random weights are drawn after ``keras.utils.set_random_seed(seed)``, which
    makes them identical from one process to the next on the same backend.
    """
    import keras

    size = image_size or spec.input_size
    if size < spec.min_input_size:
        raise XrayfeatError(
            f"--image-size {size} is too small for {spec.name}: use at least {spec.min_input_size}"
        )
    if weights.random:
        keras.utils.set_random_seed(weights.seed)
    constructor = getattr(keras.applications, spec.constructor)
    model = constructor(include_top=False, weights=None, input_shape=(size, size, 3))
    if weights.path:
        try:
            model.load_weights(weights.path)
        except (ValueError, OSError, KeyError) as exc:
            raise WeightsError(
                f"{weights.path}: cannot be loaded into {spec.name} ({first_line(exc)}); "
                f"pass a no-top weight file made for {spec.name}"
            ) from None
        if spec.loaded_input_scale:
            _fold_input_scale(model, spec.loaded_input_scale)
    model.trainable = False
    return model


def _fold_input_scale(model, scale) -> None:
    """Multiply the model's input normalization by ``scale`` per channel, as Keras' ImageNet build does.

    Keras' EfficientNet adds ``Rescaling(scale)`` right after its ``Normalization``
    layer only when it downloads the ImageNet weights itself; a model built with
    ``weights=None`` and given the same file lacks it. ``(x - m) / sqrt(v) * s`` is
    ``(x - m) / sqrt(v / s**2)``, so the factor goes into the normalization's variance:
    the same function, with Keras layers only (an export loads with Keras alone).
    """
    import keras
    import numpy as np

    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    mean, variance, count = norm.get_weights()
    factor = np.asarray(scale, dtype="float64").reshape(variance.shape)
    norm.set_weights([mean, (variance.astype("float64") / factor**2).astype(variance.dtype), count])
    norm.finalize_state()  # the layer computes from copies of its statistics, refreshed here (as Keras' loaders do)


def cut_output(backbone, spec: BackboneSpec, cut: str):
    """The output of layer ``cut`` of ``backbone``; the final layer is the model's output (Keras may leave it unnamed)."""
    return backbone.output if cut == spec.final_layer else backbone.get_layer(cut).output


def weights_digest(model) -> str:
    """SHA-256 of every weight array, in order: proves two builds carry the same weights."""
    import numpy as np

    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _preprocess_layer(mode: str):
    """A layer that takes uint8 RGB pixels and applies the backbone's preprocessing.

    It lives inside the compiled model, so only uint8 pixels travel to the device
    and the arithmetic happens there (and never in place on a caller's array).
    """
    import keras
    from keras import ops

    if mode not in PREPROCESS_MODES:
        raise ValueError(f"The 'mode' parameter must be one of {{{', '.join(map(repr, PREPROCESS_MODES))}}}. "
                         f"Got {mode!r} instead.")

    class Preprocess(keras.layers.Layer):
        def __init__(self, mode, **kwargs):
            super().__init__(dtype="float32", **kwargs)
            self.mode = mode

        def call(self, pixels):
            x = ops.cast(pixels, "float32")
            if self.mode == "caffe":
                x = ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_MEAN_BGR, "float32")
            elif self.mode == "tf":
                x = x / 127.5 - 1.0
            elif self.mode == "torch":
                x = x / 255.0 - ops.convert_to_tensor(TORCH_MEAN_RGB, "float32")
                x = x / ops.convert_to_tensor(TORCH_STD_RGB, "float32")
            return x  # in_model: the float pixels, which the model normalizes itself

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    return Preprocess(mode, name="preprocess")


def build_extractor(
    spec: BackboneSpec,
    weights: WeightsInfo,
    *,
    image_size: int | None = None,
    layer: str | None = None,
    precision: str = "float32",
):
    """uint8 pixels (N, S, S, 3) → [spatial map at the cut layer, its global average] in float32.

    Returns ``(model, backbone)``; the backbone is returned so callers can record
    :func:`weights_digest`.
    """
    import keras

    size = image_size or spec.input_size
    cut = spec.layer(layer)
    with dtype_policy(precision):
        backbone = build_backbone(spec, weights, size)
        pixels = keras.Input((size, size, 3), dtype="uint8", name="pixels")
        x = _preprocess_layer(spec.preprocess)(pixels)
        trunk = keras.Model(backbone.input, cut_output(backbone, spec, cut), name=f"{spec.name}_to_{cut}")
        spatial = keras.layers.Activation("linear", dtype="float32", name="spatial")(trunk(x))
        pooled = keras.layers.GlobalAveragePooling2D(dtype="float32", name="pooled")(spatial)
        model = keras.Model(pixels, [spatial, pooled], name=f"{spec.name}_extractor")
    model.trainable = False
    return model, backbone


def build_tail(spec: BackboneSpec, weights: WeightsInfo, *, image_size: int | None, layer: str):
    """The part of the backbone after ``layer``, with the same weights, as its own model.

    ``fit-head --train-tail`` trains it on cached activations at the cut: the cached
    equivalent of fine-tuning the last block(s).
    """
    import keras

    backbone = build_backbone(spec, weights, image_size)
    cut = spec.layer(layer)
    if cut == spec.final_layer:
        raise XrayfeatError(
            f"--train-tail needs features stored at a cut point, not at the final layer; "
            f"extract with --layer {spec.layer_choices()[0]}"
        )
    tail = keras.Model(backbone.get_layer(cut).output, backbone.output, name=f"{spec.name}_tail")
    tail.trainable = True
    for layer in tail.layers:  # the backbone was frozen layer by layer; unfreeze the tail's layers
        layer.trainable = True
    if not tail.trainable_weights:
        raise XrayfeatError(
            f"--train-tail from {spec.name}:{cut} has nothing to train (the layers after it have no weights); "
            f"extract with --layer {spec.layer_choices()[0]}"
        )
    return tail
