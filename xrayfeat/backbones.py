"""The backbone registry: every fact about a backbone, written down once.

The feature fingerprint, the CLI choices (:mod:`xrayfeat.options`), ``describe``
and the tests all read :data:`REGISTRY`. This module holds facts only (no Keras,
no file or network access), so the options that read them sit above it; finding
weights lives in :mod:`xrayfeat.extraction.weights` and building a model in
:mod:`xrayfeat.extraction.building`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xrayfeat.errors import XrayfeatError


#: Per-channel means that Keras' "caffe" preprocessing subtracts, in BGR order.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how to build it, how to feed it, where to cut it, which weights fit it."""

    name: str
    constructor: str  # attribute of keras.applications
    input_size: int  # default square input size (the seed used 224 for both)
    min_input_size: int
    preprocess: str  # "caffe" (BGR, mean subtraction) or "tf" (x / 127.5 - 1)
    final_layer: str  # the no-top output, the default cut
    cut_points: tuple[str, ...]  # layers where features may be stored for --train-tail
    weights_file: str  # Keras' ImageNet no-top weight file name
    weights_md5: str
    weights_url: str = field(default="", compare=False)

    def layer(self, layer: str | None) -> str:
        """Resolve ``--layer`` (``None``, ``block4_pool`` or ``vgg16:block4_pool``) to a layer name."""
        if not layer:
            return self.final_layer
        prefix, _, name = layer.rpartition(":")
        if prefix and prefix != self.name:
            raise XrayfeatError(
                f"--layer {layer!r} names backbone {prefix!r} but --backbone is {self.name!r}; "
                f"use one of {', '.join(self.layer_choices())}"
            )
        if name not in (self.final_layer, *self.cut_points):
            raise XrayfeatError(
                f"--layer {layer!r} is not a known cut point of {self.name}; "
                f"choose one of {', '.join(self.layer_choices())}"
            )
        return name

    def layer_choices(self) -> list[str]:
        return [f"{self.name}:{n}" for n in (*self.cut_points, self.final_layer)]


_KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications"

REGISTRY: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        name="vgg16",
        constructor="VGG16",
        input_size=224,
        min_input_size=32,
        preprocess="caffe",
        final_layer="block5_pool",
        cut_points=("block4_pool", "block5_conv3"),  # block5_conv3: a 14×14 map at 224 px, finer Grad-CAM
        weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_md5="6d6bbae143d832006294945121d1f1fc",
        weights_url=f"{_KERAS_WEIGHTS}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "inception_v3": BackboneSpec(
        name="inception_v3",
        constructor="InceptionV3",
        input_size=224,
        min_input_size=75,
        preprocess="tf",
        final_layer="mixed10",
        cut_points=("mixed9", "mixed8"),
        weights_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_md5="bcbd6486424b2319ff4ef7d526e38f63",
        weights_url=f"{_KERAS_WEIGHTS}/inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
}


def get_spec(name: str) -> BackboneSpec:
    """Look a backbone up by name; the error lists the choices."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise XrayfeatError(
            f"unknown backbone {name!r}: choose one of {', '.join(sorted(REGISTRY))}"
        ) from None





def replace_md5(spec: BackboneSpec, md5: str) -> BackboneSpec:
    """A copy of ``spec`` expecting another weights md5 (tests use it with weight files they write)."""
    from dataclasses import replace

    return replace(spec, weights_md5=md5)
