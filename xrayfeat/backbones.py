"""The backbone registry: every fact about a backbone, written down once.

The feature fingerprint, the CLI choices (:mod:`xrayfeat.options`), ``describe``
and the tests all read :data:`REGISTRY`. This module holds facts only (no Keras,
no file or network access), so the options that read them sit above it; finding
weights lives in :mod:`xrayfeat.extraction.weights` and building a model in
:mod:`xrayfeat.extraction.building`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from xrayfeat.errors import XrayfeatError


#: Per-channel means that Keras' "caffe" preprocessing subtracts, in BGR order.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: ImageNet mean and standard deviation (RGB, of pixels scaled to [0, 1]) of Keras' "torch" preprocessing.
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)
#: Each backbone's preprocessing, as Keras' ``preprocess_input`` of its module does it, on float RGB pixels 0..255:
#: ``caffe`` (RGB → BGR, minus :data:`CAFFE_MEAN_BGR`), ``tf`` (x / 127.5 - 1), ``torch`` (x / 255, minus
#: :data:`TORCH_MEAN_RGB`, divided by :data:`TORCH_STD_RGB`) and ``in_model`` (the identity: the Keras model
#: scales and normalizes its input itself, and its module's ``preprocess_input`` passes pixels through).
PREPROCESS_MODES = ("caffe", "tf", "torch", "in_model")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how to build it, how to feed it, where to cut it, which weights fit it."""

    name: str
    constructor: str  # attribute of keras.applications
    input_size: int  # default square input size (the seed used 224 for both)
    min_input_size: int
    preprocess: str  # one of PREPROCESS_MODES
    final_layer: str  # the no-top output, the default cut (read as the model's output, whatever Keras named it)
    cut_points: tuple[str, ...]  # layers where features may be stored for --train-tail
    weights_file: str  # Keras' ImageNet no-top weight file name
    weights_md5: str  # the file's md5 as Keras declares it ("" where Keras declares a sha256 instead)
    weights_url: str = field(default="", compare=False)
    weights_sha256: str = ""  # the file's sha256, where Keras declares that rather than an md5 (ConvNeXt)
    #: A per-channel factor that Keras multiplies in after the model's own input normalization only when it loads
    #: the ImageNet weights itself (``weights="imagenet"``; EfficientNet's 1/sqrt(std), tensorflow/tensorflow#49930).
    #: Applied whenever a weight file is loaded, so the model computes what Keras' ImageNet model computes.
    loaded_input_scale: tuple[float, ...] = ()
    #: The no-top backbone's parameter count as Keras' ``count_params()`` gives it (any input size): the report's
    #: comparison of backbones shows it without building one; tests/test_backbones.py checks it against Keras.
    params: int = 0

    @property
    def weights_hash(self) -> tuple[str, str]:
        """``(algorithm, hex digest)`` that the ImageNet weight file must have, as Keras declares it."""
        return ("sha256", self.weights_sha256) if self.weights_sha256 else ("md5", self.weights_md5)

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
        params=14_714_688,
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
        params=21_802_784,
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
    # The rows below: file names, URLs and hashes as keras/src/applications/<module>.py declares them for the
    # no-top ImageNet weights; the minimum size is the min_size Keras enforces (32 for each of them).
    "densenet121": BackboneSpec(
        name="densenet121",
        params=7_037_504,
        constructor="DenseNet121",
        input_size=224,
        min_input_size=32,
        preprocess="torch",
        final_layer="relu",
        cut_points=("pool4_pool", "pool3_pool"),  # the inputs of dense blocks 4 and 3 (7×7 and 14×14 at 224 px)
        weights_file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_md5="30ee3e1110167f948a6b9946edeeb738",
        weights_url=f"{_KERAS_WEIGHTS}/densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "resnet50": BackboneSpec(  # ResNet50 V1 (keras.applications.ResNet50), "caffe" preprocessing as VGG16
        name="resnet50",
        params=23_587_712,
        constructor="ResNet50",
        input_size=224,
        min_input_size=32,
        preprocess="caffe",
        final_layer="conv5_block3_out",
        cut_points=("conv5_block2_out", "conv4_block6_out"),  # the last block's input; stage 4's output (14×14)
        weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_md5="4d473c1dd8becc155b73f8504c6f6626",
        weights_url=f"{_KERAS_WEIGHTS}/resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "efficientnet_b0": BackboneSpec(
        name="efficientnet_b0",
        params=4_049_571,
        constructor="EfficientNetB0",
        input_size=224,
        min_input_size=32,
        preprocess="in_model",  # Rescaling(1/255) and Normalization are the model's first layers
        final_layer="top_activation",
        cut_points=("block7a_project_bn", "block6d_add"),  # the input of the top conv; stage 6's output
        weights_file="efficientnetb0_notop.h5",
        weights_md5="50bc09e76180e00e4465e1a485ddc09d",
        weights_url="https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
        loaded_input_scale=tuple(1.0 / math.sqrt(std) for std in TORCH_STD_RGB),
    ),
    "convnext_tiny": BackboneSpec(
        name="convnext_tiny",
        params=27_820_128,
        constructor="ConvNeXtTiny",
        input_size=224,
        min_input_size=32,
        preprocess="in_model",  # the model's first layer normalizes with the ImageNet mean and std
        final_layer="layer_normalization",  # Keras leaves it unnamed: read as the model's output
        # the inputs of stages 4 and 3 (a stage's blocks end in an unnamed residual add, so no block output is a layer)
        cut_points=("convnext_tiny_downsampling_block_2", "convnext_tiny_downsampling_block_1"),
        weights_file="convnext_tiny_notop.h5",
        weights_md5="",
        weights_sha256="d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
        weights_url=f"{_KERAS_WEIGHTS}/convnext/convnext_tiny_notop.h5",
    ),
}

#: The seed's two backbones: what the demo extracts, and what the costlier tests run on.
SEED_BACKBONES: tuple[str, ...] = ("vgg16", "inception_v3")


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
