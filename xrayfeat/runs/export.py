"""A deployable model from a trained run: raw uint8 pixels in, class probabilities out.

:func:`export_run` joins, in ONE Keras model,

1. the preprocessing the store's features were computed with, rebuilt from
   built-in Keras layers (:func:`portable_preprocess`; bit-for-bit the same as
   :func:`xrayfeat.extraction.building._preprocess_layer`, so a consumer needs no xrayfeat
   class to load the file);
2. the backbone up to the run's cut layer, with the run's weights resolved as
   extraction resolves them (``imagenet``/a file: md5-checked; ``none``: drawn
   with the run's seed by :func:`xrayfeat.extraction.building.build_backbone`, as the
   extractor drew them) and built under the store's precision. The digest of
   those weights is compared with the one the store recorded when it was written
   (when the store is still there), so an export can never silently carry other
   weights than the features the head learnt from;
3. for a head that reads pooled vectors (``--head-input pooled``), the global
   average pooling extraction stores as ``pooled``;
4. the trained head from ``head.keras`` (sha256-checked; with ``--train-tail``
   it holds the trained backbone tail), loaded without its optimizer;
5. for two classes, a fixed layer giving both columns ``[1 - p, p]``, so the
   output matches :meth:`xrayfeat.models.head.TrainedHead.predict_proba`.

Input: ``(None, S, S, 3)`` uint8 RGB, already decoded and resized to the run's
image size the way xrayfeat does it (:func:`xrayfeat.data.images.read_image`: the
whole image squashed to S x S with PIL's bilinear filter, >8-bit images mapped
by their real range, grayscale repeated into three channels). The model does not
resize: a deployment must feed it the same pixels extraction saw.

Output folder ``DIR``: ``model.keras`` (``format="keras"``, loads with
``keras.saving.load_model(path, compile=False)`` anywhere Keras 3 runs) or
``savedmodel/`` (``format="savedmodel"``, a TF SavedModel whose ``serve``
endpoint maps ``pixels`` to ``{"probabilities": ...}``; TensorFlow backend only), and ``export.json`` describing the input,
the classes, the weights, the source run and the sha256 of every model file.
Everything is written in a temporary folder beside ``DIR`` and renamed into
place, so ``DIR`` is either absent, the previous export, or complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from xrayfeat import __version__
from xrayfeat.backbones import CAFFE_MEAN_BGR, PREPROCESS_MODES, TORCH_MEAN_RGB, TORCH_STD_RGB, get_spec
from xrayfeat.extraction.weights import resolve_weights
from xrayfeat.errors import WeightsError, XrayfeatError, another_out, out_words
from xrayfeat.fileio import atomic_write, file_digest, fsync_dir, sibling, write_json, writing_to
from xrayfeat.provenance import utc_timestamp
from xrayfeat.data.images import DECODE_VERSION
from xrayfeat.errors import RunError
from xrayfeat.options.constraints import check_value, declaration
from xrayfeat.options.settings import EXPORT_FORMATS, ExportOptions
from xrayfeat.store.fingerprint import is_imported
from xrayfeat.runs.contract import contract
from xrayfeat.runs.model_card import model_card
from xrayfeat.runs.outputs import check_output

__all__ = ["ExportError", "ExportResult", "FORMATS", "export_run", "portable_preprocess", "read_export"]

log = logging.getLogger("xrayfeat")

#: Export formats (:data:`~xrayfeat.options.settings.EXPORT_FORMATS`) and the file or folder each writes inside ``DIR``.
FORMATS: dict[str, str] = dict(zip(EXPORT_FORMATS, ("model.keras", "savedmodel", "model.onnx", "model.tflite")))
#: The formats written through TensorFlow (its SavedModel machinery, tf2onnx, its LiteRT converter).
_TENSORFLOW_FORMATS = ("savedmodel", "onnx", "litert")
#: The model card every export holds beside export.json.
CARD = "MODEL_CARD.md"
#: What ``DIR`` may already hold to be replaced by a new export (a previous export).
_EXPORT_FILES = frozenset({"export.json", CARD, *FORMATS.values()})
#: The line a missing optional converter or runtime ends with.
EXTRA = 'pip install "xrayfeat[export]"'


class ExportError(XrayfeatError):
    """The export cannot be written as asked (format, backend, output folder)."""


@dataclass
class ExportResult:
    """What :func:`export_run` wrote: the folder, the model file (or folder) and its facts."""

    out: str
    model: str
    format: str
    bytes: int
    classes: list
    image_size: int
    input_dtype: str
    backbone: str
    layer: str
    weights: str
    random_weights: bool
    run: str
    sha256: dict = field(default_factory=dict)  # {path relative to out: sha256}
    params: int = 0
    multilabel: bool = False  # classes are findings, one sigmoid column each
    seconds: float = 0.0
    card: str = ""  # MODEL_CARD.md's path
    decision: str = "argmax"  # the run's decision rule (export.json "decision"), applied outside the model
    calibration: str | None = None  # the run's calibration method, if any
    calibration_applied: bool = False  # whether the exported model applies it

    def as_json(self) -> dict:
        return {
            "out": self.out, "model": self.model, "format": self.format, "bytes": self.bytes,
            "classes": list(self.classes), "image_size": self.image_size, "input_dtype": self.input_dtype,
            "backbone": self.backbone, "layer": self.layer, "weights": self.weights,
            "random_weights": self.random_weights, "run": self.run, "sha256": dict(self.sha256),
            "params": self.params, "seconds": self.seconds, "multilabel": self.multilabel, "card": self.card,
            "decision": self.decision, "calibration": self.calibration,
            "calibration_applied": self.calibration_applied,
        }


# --------------------------------------------------------------------------- building blocks


def portable_preprocess(mode: str) -> list:
    """Built-in Keras layers doing the backbone's preprocessing on uint8 RGB pixels, in float32.

    The same arithmetic as :func:`xrayfeat.extraction.building._preprocess_layer`, bit for
    bit, but with no custom class, so the exported file loads with Keras alone:

    * ``caffe`` (VGG16): cast, then a frozen 1x1 convolution whose kernel
      reverses the channels (RGB → BGR; each output is one input times 1 plus
      zeros, which is exact) and whose bias subtracts the BGR means;
    * ``tf`` (InceptionV3): cast, divide by 127.5 (``Normalization`` with mean 0
      and variance 127.5², whose square root is exact), subtract 1;
    * ``torch`` (DenseNet121): cast, divide by 255 (variance 255², exact), then
      ``Normalization`` with the ImageNet mean and the float32 std squared as variance
      (the square root of a float32's square, rounded to float32, is that float32);
    * ``in_model`` (EfficientNet, ConvNeXt): cast only; the model normalizes its input.
    """
    import keras
    import numpy as np

    cast = keras.layers.Rescaling(1.0, dtype="float32", name="to_float")
    if mode == "caffe":
        swap = keras.layers.Conv2D(3, 1, dtype="float32", trainable=False, name="rgb_to_bgr_minus_mean")
        swap.build((None, None, None, 3))
        kernel = np.zeros((1, 1, 3, 3), "float32")
        for j in range(3):
            kernel[0, 0, 2 - j, j] = 1.0
        swap.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, "float32")])
        return [cast, swap]
    if mode == "tf":
        return [
            cast,
            keras.layers.Normalization(mean=0.0, variance=127.5**2, dtype="float32", name="divide_127_5"),
            keras.layers.Rescaling(1.0, offset=-1.0, dtype="float32", name="minus_1"),
        ]
    if mode == "torch":
        std = np.asarray(TORCH_STD_RGB, "float32").astype("float64")
        return [
            cast,
            keras.layers.Normalization(mean=0.0, variance=255.0**2, dtype="float32", name="divide_255"),
            keras.layers.Normalization(mean=np.asarray(TORCH_MEAN_RGB, "float32").astype("float64"),
                                       variance=std**2, dtype="float32", name="imagenet_mean_std"),
        ]
    if mode == "in_model":
        return [cast]
    raise ValueError(f"The 'mode' parameter of portable_preprocess must be one of {{{', '.join(map(repr, PREPROCESS_MODES))}}}. "
                     f"Got {mode!r} instead.")


def _both_columns():
    """A frozen Dense(2) mapping a sigmoid output p to ``[1 - p, p]`` (``-p + 1`` rounds as ``1 - p`` does)."""
    import keras
    import numpy as np

    layer = keras.layers.Dense(2, dtype="float32", trainable=False, name="probabilities")
    layer.build((None, 1))
    layer.set_weights([np.array([[-1.0, 1.0]], "float32"), np.array([1.0, 0.0], "float32")])
    return layer


def _load(run):
    from xrayfeat.runs.loaded import Run, load_run

    return run if isinstance(run, Run) else load_run(run)


def _check_out(out: Path, overwrite: bool = False) -> None:
    """``out`` must be absent, empty, or a previous export (which the new one replaces); any folder with ``overwrite``."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out}: is a file; pass a folder for {out_words()}")
    if overwrite:  # the caller asked for the folder to be replaced (check_output has kept runs and caches out)
        return
    names = {p.name for p in out.iterdir()}
    if names and ("export.json" not in names or names - _EXPORT_FILES):
        raise ExportError(f"{out}: folder exists and holds other files than a previous export; "
                          f"{another_out('pass another --out or empty it', overwrite=True)}")
    if names:  # replaced only when it is one: its record sound, the model it names the one there
        model = read_export(out)["model"]
        if names - {"export.json", CARD, model}:
            raise ExportError(f"{out}: folder holds {', '.join(sorted(names - {'export.json', CARD, model}))} beside the "
                              f"export its export.json describes ({model}); "
                              f"{another_out('pass another --out or empty it', overwrite=True)}")


def read_export(folder) -> dict:
    """``export.json`` of an export folder, checked against :func:`~xrayfeat.runs.schema.export_schema`.

    One :class:`~xrayfeat.runs.schema.Damaged` line (exit 2) naming the file and the field when it is not
    what :func:`export_run` writes; ``export_run`` replaces a previous export only after this check.
    """
    from xrayfeat.runs import schema

    path = Path(folder) / "export.json"
    fix = "re-run xrayfeat export into an empty folder"
    data = schema.read_json(path, fix=fix, what="export record")
    try:
        classes = data.get("classes") if isinstance(data, dict) and isinstance(data.get("classes"), list) else []
        schema.check(data, schema.export_schema(), {"classes": classes})
    except schema.Problem as problem:
        raise schema.Damaged.of(path, str(problem), fix, what="export record") from None
    return data


def _weights(record):
    """The run's weights resolved as extraction resolves them; one line with the fix when they are not here."""
    fingerprint = record.store["fingerprint"]
    spec = get_spec(fingerprint["backbone"])
    kind = record.weights.get("kind") or ("none" if record.random_weights else "imagenet")
    source = (record.weights.get("path") or record.features.get("weights")) if kind == "file" else kind
    if kind == "file" and not Path(source).expanduser().is_file():
        raise WeightsError(f"{record.path}: the run's weights file {source} is missing ({fingerprint['weights']}); "
                           f"put that file back there and export again")
    try:
        weights = resolve_weights(spec, source, int(record.features.get("seed", 0)))
    except WeightsError as exc:  # the same class (a failed download is exit 1, missing weights exit 2)
        raise type(exc)(f"{record.path}: the run's {kind} weights are not available here: {exc}") from None
    if weights.identity != fingerprint["weights"]:
        raise WeightsError(
            f"{record.path}: the run's features were computed with weights {fingerprint['weights']}, but "
            f"{weights.path or source} is now {weights.identity}; restore the weights the run used, or re-run fit-head"
        )
    return spec, weights


def _check_backend(record, weights) -> str:
    """The backend this export runs on; random weights must be drawn by the store's backend."""
    import keras

    backend = keras.backend.backend()
    store_backend = record.store["fingerprint"].get("backend")
    if weights.random and store_backend and backend != store_backend:
        raise WeightsError(
            f"{record.path}: random weights (--weights none, seed {weights.seed}) are drawn by the Keras backend; "
            f"the run's store was computed on {store_backend}, this process runs {backend}: "
            f"run with KERAS_BACKEND={store_backend}"
        )
    return backend


def _stored_digest(record) -> str | None:
    """The weights digest the store recorded when its rows were written; None when the store is gone."""
    from xrayfeat.errors import StoreError
    from xrayfeat.store.feature_store import FeatureStore

    path = record.store.get("path")
    if not path or not Path(path).is_dir():
        return None
    try:
        return FeatureStore.at(path).provenance().get("weights_digest") or None
    except (StoreError, OSError) as exc:
        log.warning("%s: cannot read the store's provenance (%s); the export's weights are not cross-checked",
                    path, exc)
        return None


def _trunk(spec, weights, record):
    """The backbone up to the cut layer, under the store's precision, and its weights digest."""
    import random

    import keras
    import numpy as np

    from xrayfeat.extraction.building import build_backbone, cut_output, dtype_policy, weights_digest

    fingerprint = record.store["fingerprint"]
    saved = random.getstate(), np.random.get_state()  # build_backbone reseeds the global generators
    try:
        with dtype_policy(fingerprint["precision"]):
            backbone = build_backbone(spec, weights, int(fingerprint["image_size"]))
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    digest = weights_digest(backbone)
    stored = _stored_digest(record)
    if stored and stored != digest:
        raise WeightsError(
            f"{record.path}: the {spec.name} weights built now differ from those the run's features were computed "
            f"with (weights digest {digest[:12]} vs {stored[:12]} in {record.store['path']}); "
            f"export with Keras {fingerprint.get('keras')} on KERAS_BACKEND={fingerprint.get('backend')}, "
            f"as the store was made"
        )
    if stored is None and weights.random and fingerprint.get("keras") not in (None, keras.__version__):
        raise WeightsError(
            f"{record.path}: random weights are drawn by Keras {fingerprint['keras']} for this run and this is "
            f"Keras {keras.__version__}, and the run's store ({record.store.get('path')}) is not here to prove they "
            f"are the same; export with Keras {fingerprint['keras']}, or where the store is"
        )
    if stored is None:
        log.warning("%s: the run's store is not here, so the export's %s weights cannot be checked against it "
                    "(weights %s, digest %s)", record.path, spec.name, weights.identity, digest[:12])
    cut = fingerprint["layer"]
    trunk = keras.Model(backbone.input, cut_output(backbone, spec, cut), name=f"{spec.name}_to_{cut}")
    trunk.trainable = False
    return trunk, digest


def _head_model(run, features):
    """The trained head (with its tail when the run trained one), checked against the features it is fed."""
    import keras

    record = run.record
    head = run.head().model
    tails = [layer for layer in head.layers if isinstance(layer, keras.Model)]
    if bool(record.head.get("train_tail")) != bool(tails):
        raise RunError(f"{record.path}: config.json says train_tail={record.head.get('train_tail')} but head.keras "
                       f"{'holds' if tails else 'has no'} a backbone tail; re-run fit-head")
    want, got = tuple(head.input_shape[1:]), tuple(features.shape[1:])
    if want != got:
        raise RunError(f"{record.path}: head.keras takes features of shape {want} but the {record.head_input} "
                       f"features are {got}; the run's record and head disagree (re-run fit-head)")
    head.trainable = False
    return head


def _store_rounding(fingerprint, format: str):
    """Layers rounding the features as the store keeps them (``store_dtype`` float16), or [] for a float32 store.

    The head learnt, chose its thresholds and was scored on features read back
    from the store, so the export feeds it the same values: a float16 cast and
    back (round to nearest even, as numpy stores them). tf2onnx folds a bare
    float32 → float16 → float32 cast pair into one cast (its back-to-back
    optimizer treats float casts as lossless), so the ONNX graph does the
    float16 step with ``ReLU(negative_slope=1, max_value=65504)``: the identity
    on every finite float16, computed in float16. The LiteRT converter keeps the
    casts, and its builtin kernels have no float16 arithmetic, so it gets the
    plain pair.
    """
    import keras

    if fingerprint.get("store_dtype") != "float16":
        return []
    if format == "onnx":
        first = keras.layers.ReLU(max_value=65504.0, negative_slope=1.0, dtype="float16", name="store_float16")
    else:
        first = keras.layers.Activation("linear", dtype="float16", name="store_float16")
    return [first, keras.layers.Activation("linear", dtype="float32", name="read_as_float32")]


def _logit_head(head):
    """The head up to its output layer's pre-activation (the logits), and the output's activation name."""
    import keras

    try:
        output = head.get_layer("head_output")
    except ValueError:
        output = None
    if output is None or head.layers[-1] is not output:
        raise ExportError(f"the head has no final 'head_output' layer ({head.layers[-1].name}); a temperature cannot "
                          f"be put into the exported model: export the run uncalibrated or re-run fit-head")
    penultimate = keras.Model(head.inputs, output.input, name="head_to_logits")
    logits = keras.layers.Dense(output.units, dtype="float32", trainable=False, name="head_logits")
    logits.build((None, output.input.shape[-1]))
    logits.set_weights(output.get_weights())
    return penultimate, logits, keras.activations.serialize(output.activation)


def _interp_layers(maps: list, name: str):
    """Layers mapping each column k of (n, K) probabilities by ``numpy.interp(p, x_k, y_k)`` (None: unchanged).

    Exact in float32 to a few units in the last place of the output: for each
    segment i of column k, a = relu(p_k - x_i) (p and x are float32 values: the
    subtraction is exact where it matters), r = relu(dx_i - a), so
    dx_i - r = min(a, dx_i) = clip(p_k, x_i, x_{i+1}) - x_i, and the output is
    y_last - sum_i slope_i * r_i, which is numpy.interp with its clamping at both
    ends. Exact when the breakpoints are float32 values, as fit-head's are (its
    isotonic maps are fitted on the head's float32 probabilities). Steps
    (repeated x) have no slope and are refused.
    """
    import keras
    import numpy as np

    k_cols = len(maps)
    rows, lows, widths, slopes, ends = [], [], [], [], []
    for k, curve in enumerate(maps):
        if curve is None:  # unchanged: the identity is the map 0 → 0, 1 → 1
            curve = {"x": [0.0, 1.0], "y": [0.0, 1.0]}
        x, y = np.asarray(curve["x"], np.float64), np.asarray(curve["y"], np.float64)
        dx = np.diff(x)
        if (dx <= 0).any():
            raise ExportError(f"the isotonic map of column {k} repeats a breakpoint (a step), which a piecewise-linear "
                              f"layer cannot reproduce exactly; export the run uncalibrated")
        ends.append(y[-1])
        for i in range(len(dx)):
            rows.append(k)
            lows.append(x[i])
            widths.append(dx[i])
            slopes.append((y[i + 1] - y[i]) / dx[i])
    m = max(len(rows), 1)
    select = np.zeros((k_cols, m), np.float32)
    for unit, k in enumerate(rows):
        select[k, unit] = 1.0
    bias = np.zeros(m, np.float32)
    bias[:len(lows)] = -np.asarray(lows, np.float32)
    width = np.zeros(m, np.float64)
    width[:len(widths)] = widths
    combine = np.zeros((m, k_cols), np.float32)
    for unit, k in enumerate(rows):
        combine[unit, k] = -slopes[unit]
    above = keras.layers.Dense(m, activation="relu", dtype="float32", trainable=False, name=f"{name}_above")
    above.build((None, k_cols))
    above.set_weights([select, bias])
    # r = relu(dx - a): -a + dx in one rounding (Rescaling by -1, which is exact, with dx as its offset)
    minus = keras.layers.Rescaling(-1.0, offset=np.asarray(width, np.float32), dtype="float32", name=f"{name}_width_left")
    rest = keras.layers.ReLU(dtype="float32", name=f"{name}_rest")
    out = keras.layers.Dense(k_cols, dtype="float32", trainable=False, name=name)
    out.build((None, m))
    out.set_weights([combine, np.asarray(ends, np.float32)])
    return [above, minus, rest, out]


def _calibrated(run, head, x, binary: bool):
    """The head's output on ``x``, through the run's calibrator when a Keras graph can apply it exactly.

    Returns ``(p, applied, note)``: ``p`` the head's output (one column for a
    binary head), ``applied`` whether the calibrator is in it. Temperature:
    the head's logits over T, then its own activation (softmax, or sigmoid per
    unit), which is what :func:`~xrayfeat.analysis.calibrators.apply_calibrator`
    computes from the probabilities. Isotonic: each mapped column by
    :func:`_interp_layers` (binary: the positive column, the other its
    complement; multi-label: each finding); with more than two single-label
    classes the mapped row is divided by its sum, which built-in Keras layers
    cannot do exactly: that export keeps the head's own probabilities and says so.
    """
    import keras

    record = run.record
    calibrated = run.metrics.get("calibrated")
    if not calibrated:
        return head(x), False, "not calibrated (fit-head --calibrate none): the probabilities are the head's own"
    calibrator = calibrated["models"]["head"]
    if "temperature" in calibrator:
        t = float(calibrator["temperature"])
        penultimate, logits, activation = _logit_head(head)
        z = keras.layers.Rescaling(1.0 / t, dtype="float32", name="over_temperature")(logits(penultimate(x)))
        p = keras.layers.Activation(activation, dtype="float32", name="calibrated")(z)
        return p, True, f"temperature T={t:.6g} applied inside the model (the head's logits divided by T)"
    maps = calibrator["isotonic"]
    classes = list(record.classes)
    if not record.multilabel and len(classes) > 2:
        note = ("isotonic calibration NOT applied by the exported model (the per-class maps are renormalised by the "
                "row sum, a division Keras' built-in layers cannot do exactly): apply export.json "
                "calibration.calibrator to its output (numpy.interp(p[:, k], x, y) per class, then divide each row "
                "by its sum; 1/K where the sum is 0), as xrayfeat predict does")
        log.warning("%s: %s", record.path, note)
        return head(x), False, note
    columns = [maps[classes[1]]] if binary else [maps[c] for c in classes]
    p = head(x)
    for layer in _interp_layers(columns, "calibrated"):
        p = layer(p)
    return p, True, "isotonic maps applied inside the model (piecewise linear, as numpy.interp)"


def build_portable_model(run, format: str = "keras"):
    """The export model of a run (uint8 pixels → probabilities) and the facts ``export.json`` records."""
    import keras

    run = _load(run)
    record = run.record
    spec, weights = _weights(record)
    backend = _check_backend(record, weights)
    trunk, digest = _trunk(spec, weights, record)
    size = int(record.store["fingerprint"]["image_size"])

    pixels = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    x = pixels
    for layer in portable_preprocess(spec.preprocess):
        x = layer(x)
    x = keras.layers.Activation("linear", dtype="float32", name="features")(trunk(x))
    if record.head_input == "pooled":  # as the extractor pools what it stores
        x = keras.layers.GlobalAveragePooling2D(dtype="float32", name="pooled")(x)
    rounding = _store_rounding(record.store["fingerprint"], format)
    for layer in rounding:
        x = layer(x)
    head = _head_model(run, x)
    binary = len(record.classes) == 2 and not record.multilabel
    p, applied, note = _calibrated(run, head, x, binary)
    if binary:
        p = _both_columns()(p)
    else:
        p = keras.layers.Activation("linear", dtype="float32", name="probabilities")(p)
    model = keras.Model(pixels, p, name="xrayfeat_export")
    model.trainable = False
    facts = {"spec": spec, "weights": weights, "digest": digest, "backend": backend, "size": size,
             "rounding": "float16" if rounding else None, "calibration_applied": applied, "calibration_note": note,
             "xrayfeat": __version__}
    return model, facts


# --------------------------------------------------------------------------- writing


def _save(model, folder: Path, format: str) -> Path:
    """Write the model into ``folder``: ``model.keras``, ``savedmodel/``, ``model.onnx`` or ``model.tflite``.

    The SavedModel is written with :class:`keras.export.ExportArchive` rather
    than ``model.export``: on the TensorFlow backend ``model.export`` stores every
    weight twice (keras-team/keras#23553: once through ``track(model)``, once as
    the endpoint's captured variables), doubling the file and the serving memory.
    Without ``track`` the archive keeps the variables its endpoint uses, once.
    The endpoint (and TF Serving's ``serving_default``) maps ``pixels`` to
    ``{"probabilities": ...}``.

    ONNX and LiteRT go through Keras' own exporters (``Model.export(format=...)``:
    tf2onnx, and TensorFlow's LiteRT converter), on a model whose output is named
    ``probabilities``; the LiteRT converter is held to the builtin operators, so
    the file runs in the plain LiteRT interpreter (no Flex delegate).
    """
    import keras

    target = folder / FORMATS[format]
    if format == "keras":
        model.save(str(target))
        return target
    shape = tuple(model.inputs[0].shape)
    signature = [keras.InputSpec(shape=shape, dtype="uint8", name="pixels")]
    if format == "savedmodel":
        def serve(pixels):
            return {"probabilities": model(pixels, training=False)}

        archive = keras.export.ExportArchive()
        archive.add_endpoint("serve", serve, input_signature=signature)
        archive.write_out(str(target), verbose=False)
        return target
    named = keras.Model(model.inputs, {"probabilities": model.outputs[0]}, name="xrayfeat_export")
    with _quiet_converters():
        if format == "onnx":
            _normalization_as_constants(named)
            named.export(str(target), format="onnx", verbose=False, input_signature=signature)
        else:
            import tensorflow as tf

            named.export(str(target), format="litert", verbose=False, input_signature=signature,
                         target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    return target


def _normalization_as_constants(model) -> None:
    """Hold each ``Normalization`` layer's mean and variance as numpy arrays, so a traced graph embeds them.

    Keras makes them tensors when the layer is built; tf2onnx takes tensors
    captured that way for inputs of the graph (the ONNX file would ask the caller
    for ``.../Sub/y:0``). The values are the same float32 numbers, so the
    arithmetic (and :func:`portable_preprocess`'s bit-exactness) is unchanged.
    """
    import keras
    import numpy as np

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _normalization_as_constants(layer)
        elif isinstance(layer, keras.layers.Normalization) and layer.mean is not None:
            layer.mean = np.asarray(layer.mean)
            layer.variance = np.asarray(layer.variance)


@contextlib.contextmanager
def _quiet_converters():
    """tf2onnx's and the LiteRT converter's Python warnings and INFO logs kept off the user's stderr."""
    import warnings

    loggers = [logging.getLogger(name) for name in ("tf2onnx", "absl", "tensorflow")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _missing(modules) -> list[str]:
    """The modules of ``modules`` that are not installed."""
    import importlib.util

    return [name for name in modules if importlib.util.find_spec(name) is None]


def _check_format(format: str) -> None:
    """The format's backend and optional packages, checked before anything is built (one line, exit 2)."""
    import keras

    if format in _TENSORFLOW_FORMATS and keras.backend.backend() != "tensorflow":
        raise ExportError(f"--format {format} needs the TensorFlow backend (this process runs "
                          f"{keras.backend.backend()}); run with KERAS_BACKEND=tensorflow, or use --format keras")
    if format == "onnx":
        missing = _missing(("tf2onnx", "onnx"))
        if missing:
            raise ExportError(f"--format onnx converts with {' and '.join(missing)}, which is not installed; {EXTRA}")


def _digests(folder: Path, target: Path) -> dict[str, str]:
    """sha256 of each file of the model, by path relative to the export folder."""
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): file_digest(p) for p in files}


def _describe(run, facts: dict, format: str, sha256: dict, n_bytes: int, params: int) -> dict:
    """The contents of ``export.json``."""
    import keras

    record = run.record
    fingerprint = record.store["fingerprint"]
    size, weights = facts["size"], facts["weights"]
    config = record.path / "config.json"
    return {
        "xrayfeat": __version__,
        "created": utc_timestamp(),
        "format": format,
        "model": FORMATS[format],
        "sha256": sha256,
        "bytes": n_bytes,
        "params": params,
        "input": f"uint8 RGB {size}x{size}, resized as xrayfeat.data.images does "
                 f"(xrayfeat.data.images.read_image(path, {size}), decode {DECODE_VERSION})",
        "input_name": "pixels",
        "input_shape": [None, size, size, 3],
        "input_dtype": "uint8",
        "image_size": size,
        "output": _output_text(record),
        "output_shape": [None, len(record.classes)],
        "classes": list(record.classes),
        "multilabel": bool(record.multilabel),
        "backbone": fingerprint["backbone"],
        "layer": fingerprint["layer"],
        "preprocess": fingerprint["preprocess"],
        "precision": fingerprint["precision"],
        "train_tail": bool(record.head.get("train_tail")),
        "weights": {"kind": weights.kind, "identity": weights.identity, "path": weights.path,
                    "random": weights.random, "digest": facts["digest"]},
        "run": {"path": str(record.path.resolve()), "name": record.name, "created": record.created,
                "config_sha256": file_digest(config), "head_sha256": record.artifacts["head"].sha256,
                "store_fingerprint_id": record.store.get("fingerprint_id")},
        "keras": keras.__version__,
        "backend": facts["backend"],
        "load": _LOAD[format],
        "run_id": file_digest(config),
        "card": CARD,
        **contract(run, facts, facts["calibration_applied"], facts["calibration_note"]),
    }


#: How each format is loaded and called, as export.json says it.
_LOAD = {
    "keras": "keras.saving.load_model('model.keras', compile=False)",
    "savedmodel": "tf.saved_model.load('savedmodel').serve(pixels)['probabilities']",
    "onnx": "onnxruntime.InferenceSession('model.onnx').run(['probabilities'], {'pixels': pixels})[0]",
    "litert": "ai_edge_litert.interpreter.Interpreter('model.tflite').get_signature_runner()(pixels=pixels)"
              "['probabilities']",
}


def _output_text(record) -> str:
    """What the model's output columns are, for ``export.json``."""
    if record.multilabel:
        return ("finding probabilities, one sigmoid column per finding in the order of 'classes' (independent: "
                "they need not sum to 1)")
    return ("class probabilities, one column per class in the order of 'classes'"
            + (" ([1 - p, p] of the sigmoid head)" if len(record.classes) == 2 else ""))


def _replace(tmp: Path, out: Path, overwrite: bool = False) -> None:
    """Move the finished temporary folder to ``out`` (replacing a previous export, or with ``overwrite`` any folder)."""
    _check_out(out, overwrite)  # again: another process may have written there meanwhile
    if out.exists():
        old = sibling(out, f".{uuid.uuid4().hex[:12]}.old.tmp", hidden=True)
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    fsync_dir(out.parent)


def export_run(run, out, *, format: str = "keras", overwrite: bool = False) -> ExportResult:
    """Write a run's deployable model (pixels → probabilities) and ``export.json`` to folder ``out``.

    ``run``: a :class:`~xrayfeat.runs.loaded.Run` or a run folder. ``format``:
    ``"keras"`` (``out/model.keras``) or ``"savedmodel"`` (``out/savedmodel/``,
    TensorFlow backend only). See the module docstring for what the model holds
    and the pixels it expects. Errors are :class:`~xrayfeat.errors.XrayfeatError`
    lines: not a run (:class:`~xrayfeat.errors.RunError`), weights missing or not
    those of the run (:class:`~xrayfeat.errors.WeightsError`), a bad format,
    backend or output folder (:class:`ExportError`), an ``out`` inside a run or a
    cache folder (:class:`~xrayfeat.runs.outputs.OutputError`).

    A previous export at ``out`` is replaced; a folder holding anything else is
    refused unless ``overwrite=True``. Either way the new export is written
    beside it and takes its place only once complete.
    """
    check_value("export", "format", format, declaration(ExportOptions, "format")["check"])
    started = time.perf_counter()
    check_output(out, "export")
    out = Path(out)
    run = _load(run)
    if is_imported(run.record.store["fingerprint"]):  # pixels in needs the model that computed the features
        raise ExportError(f"{run.path}: cannot export this run: its features were imported as {run.record.backbone!r} "
                          f"({run.record.weights.get('path')}), and a deployable model needs the backbone that "
                          f"computed them, which xrayfeat does not have; deploy that model and the head "
                          f"(head.keras) together, or fit-head on a backbone xrayfeat has (-b vgg16)")
    _check_out(out, overwrite)
    _check_format(format)
    model, facts = build_portable_model(run, format)
    from xrayfeat.models.head import count_params

    params = count_params(model)["total"]
    with writing_to(out, option="--out"):  # a full disk: one line naming the export's folder, nothing left
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = sibling(out, f".{uuid.uuid4().hex[:12]}.tmp", hidden=True)
        tmp.mkdir()
        try:
            target = _save(model, tmp, format)
            sha256 = _digests(tmp, target)
            n_bytes = sum((tmp / name).stat().st_size for name in sha256)
            info = _describe(run, facts, format, sha256, n_bytes, params)
            write_json(tmp / "export.json", info)
            atomic_write(tmp / CARD, model_card(info))
            _replace(tmp, out, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    record = run.record
    return ExportResult(
        out=str(out), model=str(out / FORMATS[format]), format=format, bytes=n_bytes, classes=list(record.classes),
        image_size=facts["size"], input_dtype="uint8", backbone=info["backbone"], layer=info["layer"],
        weights=facts["weights"].identity, random_weights=facts["weights"].random, run=str(record.path),
        sha256=sha256, params=params, seconds=round(time.perf_counter() - started, 3),
        multilabel=bool(record.multilabel), card=str(out / CARD), decision=info["decision"]["rule"],
        calibration=info["calibration"]["method"], calibration_applied=info["calibration"]["applied_in_model"],
    )
