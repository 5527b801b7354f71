"""The backbone registry: every fact about a backbone, written down once.

The feature fingerprint, the CLI choices, ``describe`` and the tests all read
:data:`REGISTRY`. Nothing here imports Keras at module level: resolving weights
and fingerprints must stay cheap, because a cache hit must not load the
deep-learning framework at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import WeightsError, XrayfeatError
from .fileio import atomic_path, file_digest

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
        cut_points=("block4_pool",),
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


# --------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights a backbone carries. ``identity`` goes into the feature fingerprint."""

    kind: str  # "imagenet", "none" or "file"
    path: str | None = None
    md5: str | None = None
    seed: int | None = None

    @property
    def identity(self) -> str:
        if self.kind == "none":
            return f"none:seed={self.seed}"
        return f"{self.kind}:md5={self.md5}"

    @property
    def random(self) -> bool:
        return self.kind == "none"

    def describe(self) -> str:
        if self.random:
            return f"RANDOM weights (seed {self.seed}): features carry no ImageNet knowledge"
        return f"{self.kind} weights {self.path} (md5 {self.md5})"


def keras_home() -> Path:
    """Keras' own cache folder: ``$KERAS_HOME`` or ``~/.keras``."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def weights_dir() -> Path:
    return keras_home() / "models"


_MD5_SEEN: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> md5, for this process


def file_md5(path: str | os.PathLike) -> str:
    """md5 of a file; remembered per file version, since one command resolves weights several times."""
    st = os.stat(path)
    key = (os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _MD5_SEEN:
        _MD5_SEEN[key] = file_digest(path, "md5")
    return _MD5_SEEN[key]


def resolve_weights(spec: BackboneSpec, weights: str, seed: int = 0) -> WeightsInfo:
    """Turn ``--weights imagenet|none|FILE`` into a checked :class:`WeightsInfo`.

    ``imagenet`` must already be in ``$KERAS_HOME/models`` with the right md5: this
    tool never falls back to random weights on its own, because features from
    random weights look like features and quietly change every result.
    """
    if weights == "none":
        return WeightsInfo("none", seed=int(seed))
    if weights == "imagenet":
        path = weights_dir() / spec.weights_file
        if not path.is_file():
            raise WeightsError(
                f"ImageNet weights for {spec.name} not found: {path} is missing and cannot be "
                f"downloaded here; get {spec.weights_file} ({spec.weights_url}) and run "
                f"`xrayfeat weights install FILE`, or pass --weights none for random weights"
            )
        md5 = file_md5(path)
        if md5 != spec.weights_md5:
            raise WeightsError(
                f"{path}: md5 {md5} is not the expected {spec.weights_md5} for {spec.name}; "
                f"the file is damaged or another version: delete it and run `xrayfeat weights install FILE`"
            )
        return WeightsInfo("imagenet", path=str(path), md5=md5)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"--weights {weights!r}: no such file; pass imagenet, none or the path of a weights file"
        )
    return WeightsInfo("file", path=str(path.resolve()), md5=file_md5(path))


def weights_status() -> list[dict]:
    """What ImageNet weight files are installed, and whether their md5 checks out."""
    rows = []
    for spec in REGISTRY.values():
        path = weights_dir() / spec.weights_file
        present = path.is_file()
        md5 = file_md5(path) if present else None
        rows.append(
            {
                "backbone": spec.name,
                "file": str(path),
                "present": present,
                "verified": md5 == spec.weights_md5,
                "md5": md5,
                "expected_md5": spec.weights_md5,
            }
        )
    return rows


def install_weights(source: str | os.PathLike) -> dict:
    """Copy a downloaded ImageNet weight file into ``$KERAS_HOME/models`` after checking its md5.

    The file is recognised by its md5 alone (names of downloads vary); the copy is
    written beside its destination and renamed, so a half-copied file never sits
    under the final name.
    """
    source = Path(source)
    if not source.is_file():
        raise WeightsError(f"{source}: no such file; pass the path of a downloaded weight file")
    md5 = file_md5(source)
    matches = [s for s in REGISTRY.values() if s.weights_md5 == md5]
    if not matches:
        known = "; ".join(f"{s.weights_file} md5 {s.weights_md5}" for s in REGISTRY.values())
        raise WeightsError(f"{source}: md5 {md5} matches no known weight file (expected one of: {known})")
    spec = matches[0]
    target = weights_dir() / spec.weights_file
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return {"backbone": spec.name, "file": str(target), "md5": md5}


# --------------------------------------------------------------------------- models


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
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WeightsError(
                f"{weights.path}: cannot be loaded into {spec.name} ({reason}); "
                f"pass a no-top weight file made for {spec.name}"
            ) from None
    model.trainable = False
    return model


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

    class Preprocess(keras.layers.Layer):
        def __init__(self, mode, **kwargs):
            super().__init__(dtype="float32", **kwargs)
            self.mode = mode

        def call(self, pixels):
            x = ops.cast(pixels, "float32")
            if self.mode == "caffe":
                x = ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_MEAN_BGR, "float32")
            else:
                x = x / 127.5 - 1.0
            return x

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
        trunk = keras.Model(backbone.input, backbone.get_layer(cut).output, name=f"{spec.name}_to_{cut}")
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
    return tail


def replace_md5(spec: BackboneSpec, md5: str) -> BackboneSpec:
    """A copy of ``spec`` expecting another weights md5 (tests use it with weight files they write)."""
    from dataclasses import replace

    return replace(spec, weights_md5=md5)
