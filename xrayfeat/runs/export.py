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
from xrayfeat.fileio import file_digest, fsync_dir, sibling, write_json, writing_to
from xrayfeat.provenance import utc_timestamp
from xrayfeat.data.images import DECODE_VERSION
from xrayfeat.errors import RunError
from xrayfeat.store.fingerprint import is_imported
from xrayfeat.runs.outputs import check_output

__all__ = ["ExportError", "ExportResult", "FORMATS", "export_run", "portable_preprocess", "read_export"]

log = logging.getLogger("xrayfeat")

#: Export formats and the file or folder each writes inside ``DIR``.
FORMATS: dict[str, str] = {"keras": "model.keras", "savedmodel": "savedmodel"}
#: What ``DIR`` may already hold to be replaced by a new export (a previous export).
_EXPORT_FILES = frozenset({"export.json", *FORMATS.values()})


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

    def as_json(self) -> dict:
        return {
            "out": self.out, "model": self.model, "format": self.format, "bytes": self.bytes,
            "classes": list(self.classes), "image_size": self.image_size, "input_dtype": self.input_dtype,
            "backbone": self.backbone, "layer": self.layer, "weights": self.weights,
            "random_weights": self.random_weights, "run": self.run, "sha256": dict(self.sha256),
            "params": self.params, "seconds": self.seconds, "multilabel": self.multilabel,
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
        if names - {"export.json", model}:
            raise ExportError(f"{out}: folder holds {', '.join(sorted(names - {'export.json', model}))} beside the "
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
        schema.check(data, schema.export_schema())
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


def build_portable_model(run):
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
    head = _head_model(run, x)
    p = head(x)
    if len(record.classes) == 2 and not record.multilabel:
        p = _both_columns()(p)
    else:
        p = keras.layers.Activation("linear", dtype="float32", name="probabilities")(p)
    model = keras.Model(pixels, p, name="xrayfeat_export")
    model.trainable = False
    facts = {"spec": spec, "weights": weights, "digest": digest, "backend": backend, "size": size}
    return model, facts


# --------------------------------------------------------------------------- writing


def _save(model, folder: Path, format: str) -> Path:
    """Write the model into ``folder``: ``model.keras``, or ``savedmodel/`` with a ``serve`` endpoint.

    The SavedModel is written with :class:`keras.export.ExportArchive` rather
    than ``model.export``: on the TensorFlow backend ``model.export`` stores every
    weight twice (keras-team/keras#23553: once through ``track(model)``, once as
    the endpoint's captured variables), doubling the file and the serving memory.
    Without ``track`` the archive keeps the variables its endpoint uses, once.
    The endpoint (and TF Serving's ``serving_default``) maps ``pixels`` to
    ``{"probabilities": ...}``.
    """
    import keras

    target = folder / FORMATS[format]
    if format == "keras":
        model.save(str(target))
        return target

    def serve(pixels):
        return {"probabilities": model(pixels, training=False)}

    shape = tuple(model.inputs[0].shape)
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serve", serve, input_signature=[keras.InputSpec(shape=shape, dtype="uint8", name="pixels")])
    archive.write_out(str(target), verbose=False)
    return target


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
        "load": ("keras.saving.load_model('model.keras', compile=False)" if format == "keras"
                 else "tf.saved_model.load('savedmodel').serve(pixels)['probabilities']"),
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
    if format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}; got {format!r}")
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
    if format == "savedmodel":
        import keras

        if keras.backend.backend() != "tensorflow":
            raise ExportError(f"--format savedmodel needs the TensorFlow backend (this process runs "
                              f"{keras.backend.backend()}); run with KERAS_BACKEND=tensorflow, or use --format keras")
    model, facts = build_portable_model(run)
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
        multilabel=bool(record.multilabel),
    )
