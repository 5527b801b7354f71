"""Every option of xrayfeat, declared once: allowed values, default, help.

The dataclasses here are what the Python API takes and what the CLI builds from
its flags; the CLI derives its choices, defaults and help from these
declarations (see :mod:`xrayfeat.options.constraints`), so they are never spelled twice.
Each ``validate()`` raises :class:`~xrayfeat.options.constraints.OptionError` (a
``ValueError``) naming the parameter, what is allowed and what was passed.

* :class:`FeatureOptions` selects a feature store (what a feature value depends on);
* :class:`RunOptions` says how to run an extraction (nothing here changes a value);
* :class:`HeadOptions` are the seed's head hyper-parameters and the study's options;
* :class:`EmbedOptions` choose the map method and its seed;
* :class:`PhantomOptions` shape the built-in synthetic data set (``xrayfeat phantoms``).

Public functions that take these options as plain keywords declare them with
:func:`~xrayfeat.options.constraints.validate_params`, reusing a field's
:func:`~xrayfeat.options.constraints.declaration`.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from dataclasses import dataclass, replace

from xrayfeat.backbones import PRECISIONS, REGISTRY
from xrayfeat.options.constraints import AnyOf, Choice, Constant, Interval, Is, OptionError, Subset, option, validate
from xrayfeat.options.parsers import ByteSize, Cluster, Threshold, parse_list

#: Backbone names, in the registry's order.
BACKBONES: tuple[str, ...] = tuple(REGISTRY)
#: ``-b all`` (extract): every backbone of the registry, in its order.
ALL_BACKBONES = "all"
#: The ``weights`` of feature options that name features imported with ``xrayfeat cache import`` (no backbone ran).
IMPORTED_WEIGHTS = "imported"
#: A name given to imported features (``cache import --name``): lowercase letters, digits, ``_``, ``-`` and ``.``,
#: starting with a letter or digit, at most 64 characters; never a backbone's name (checked by :func:`check_import_name`).
IMPORT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
STORE_DTYPES: tuple[str, ...] = ("float16", "float32")
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")
ON_ERROR: tuple[str, ...] = ("fail", "skip")
#: Keras backends a head can train on; each is also the name of the module that provides it.
HEAD_BACKENDS: tuple[str, ...] = ("tensorflow", "jax", "torch")
#: The baselines fit-head knows, in the order reports list them.
BASELINES: tuple[str, ...] = ("logreg", "svm", "pixels")
METHODS: tuple[str, ...] = ("tsne", "umap")
#: What a feature store keeps of each image: both parts, the pooled vector only, or the spatial map only.
KEEPS: tuple[str, ...] = ("both", "pooled", "spatial")
#: The feature part the head reads: the spatial map (the seed's) or the pooled vector.
HEAD_INPUTS: tuple[str, ...] = ("spatial", "pooled")
CLASS_WEIGHTS: tuple[str, ...] = ("none", "balanced")
#: How the head's training step runs: the fused step where it applies (the plain seed head on jax on a CPU), else
#: Keras' own (auto); the fused step or a one-line refusal (fused); Keras' own step always (keras).
HEAD_STEPS: tuple[str, ...] = ("auto", "fused", "keras")
#: What ``--restore-best`` may monitor on the validation data.
RESTORE_BEST: tuple[str, ...] = ("val_loss", "val_accuracy")
#: The tasks of the built-in synthetic data set: four classes, or covid against normal.
PHANTOM_TASKS: tuple[str, ...] = ("four", "binary", "multilabel")
#: What a multi-label study makes of an uncertain finding (-1): the U-Ignore, U-Zeros and U-Ones policies of
#: Irvin et al. 2019. ``ignore`` masks it out of the loss and the metrics.
UNCERTAIN_POLICIES: tuple[str, ...] = ("ignore", "zeros", "ones")
#: How fit-head calibrates each model's probabilities on the validation rows: not at all, one temperature on the
#: logits (softmax, or sigmoid per finding), or isotonic regression per class one-vs-rest (per finding).
CALIBRATIONS: tuple[str, ...] = ("none", "temperature", "isotonic")
#: How predict turns probabilities into a decision: the most probable class, or the run's thresholds (chosen on
#: validation) per class; a multi-label run always calls each finding at its threshold.
DECISIONS: tuple[str, ...] = ("argmax", "threshold")
#: What ``export`` writes the deployable model as: one .keras file (any Keras 3 backend), a TensorFlow SavedModel,
#: an ONNX file or a LiteRT (.tflite) flatbuffer; the last three need the TensorFlow backend, ONNX the export extra.
EXPORT_FORMATS: tuple[str, ...] = ("keras", "savedmodel", "onnx", "litert")
#: ``n_jobs`` wherever it is taken (the baselines, the maps), as scikit-learn means it: a number of jobs
#: (at least 1) or -1 for every core; None (allowed beside it) leaves the choice to the callee. 0 is refused.
N_JOBS = AnyOf((Interval(1, None, integer=True), Constant(-1)))


def backbone_names(text: str, imported=()) -> tuple[str, ...]:
    """``--backbone``'s text: a backbone, a comma-separated list of them, or ``all`` (:data:`BACKBONES`).

    ``imported`` are the names of imported features that may be named too (``all`` does not include them).
    Order kept, duplicates dropped, case and spaces ignored (:func:`~xrayfeat.options.parsers.parse_list`).
    """
    names = parse_list(text, (*BACKBONES, *imported, ALL_BACKBONES), "backbone")
    return BACKBONES if ALL_BACKBONES in names else names


def bounded(low: int, high: int, why: str) -> Interval:
    """A whole number in [low, high] for an option that sizes an allocation: the maximum and ``why`` it is there.

    Refused before anything is made (the CLI at parse time, the API by its
    declaration), so a mistyped 10**6 never starts allocating or writing.
    """
    return Interval(low, high, integer=True, why=f"at most {high:,}: {why}")


#: The maxima of the options that size an allocation (docs/RELIABILITY.md, Operating-system errors).
MAX_BATCH_SIZE = 4096
MAX_WORKERS = 256
MAX_CHUNK_IMAGES = 100_000
MAX_HEAD_BATCH_SIZE = 65_536
MAX_UNITS = 65_536
MAX_BOOTSTRAP = 100_000
MAX_REPEATS = 1000
MAX_FOLDS = 1000
MAX_PHANTOM_SIZE = 2048  # the largest --image-size a backbone reads; one image takes minutes to draw at 4096
MAX_PHANTOMS_PER_CLASS = 100_000


@dataclass(frozen=True)
class Renamed:
    """An option under a new name; the old one works for one more release, with a notice naming the new one.

    ``name``/``flag``: the Python keyword and the CLI flag now. ``old``: the keyword before (None: the
    Python name did not change), still taken by the option classes and ``xf`` functions in
    ``accepted_by``. ``old_flag``: the flag before (None: the flag did not change), a hidden alias on
    ``commands``.
    """

    name: str
    flag: str
    old: str | None = None
    accepted_by: tuple[str, ...] = ()
    old_flag: str | None = None
    commands: tuple[str, ...] = ()


#: Every renamed option, read by the CLI (hidden aliases, :func:`xrayfeat.cli.kit.renamed_flags`), the option
#: classes and ``xf.fit_head`` (:func:`renamed_keywords`) and the run record (:func:`current_keys`).
RENAMED: tuple[Renamed, ...] = (
    Renamed("learning_rate", "--learning-rate", "lr", ("HeadOptions", "fit_head"), "--lr", ("fit-head",)),
    Renamed("n_bootstrap", "--n-bootstrap", "n_boot", ("HeadOptions", "fit_head"), "--bootstrap", ("fit-head",)),
    Renamed("head_backend", "--head-backend", "backend", ("HeadOptions", "fit_head")),
    Renamed("head_batch_size", "--head-batch-size", "batch_size", ("HeadOptions",)),
    Renamed("batch_size", "--batch-size", "extract_batch_size", ("fit_head",), "--extract-batch-size", ("fit-head",)),
    Renamed("n_classes", "--n-classes", old_flag="--classes", commands=("describe",)),
)


@dataclass(frozen=True)
class Redefined:
    """A name kept with a new meaning: for one release, using it says what it means now and what to use instead."""

    name: str
    flag: str
    commands: tuple[str, ...]
    functions: tuple[str, ...]
    now: str  # what it means now
    instead: str  # the keyword for what it meant before


#: ``batch_size`` was the head's batch in fit-head (the backbone's was ``extract_batch_size``) and the backbone's elsewhere.
REDEFINED: tuple[Redefined, ...] = (
    Redefined("batch_size", "--batch-size", ("fit-head",), ("fit_head",),
              now="the backbone's batch, as in extract, predict and explain", instead="head_batch_size"),
)


def flag_of(name: str) -> str:
    """The CLI flag of a Python keyword: ``head_batch_size`` → ``--head-batch-size``."""
    return "--" + name.replace("_", "-")


def renamed_keywords(owner: str, kwargs: dict, stacklevel: int = 3) -> dict:
    """``kwargs`` given to ``owner`` (an option class or an ``xf`` function) with old keywords under their new names.

    An old keyword gives a ``DeprecationWarning`` naming the new one; passing both is a ``TypeError``.
    A keyword whose meaning changed (:data:`REDEFINED`) gives a ``FutureWarning`` saying what to use.
    """
    for changed in REDEFINED:
        if owner in changed.functions and changed.name in kwargs:
            warnings.warn(f"{owner}({changed.name}=...) is now {changed.now} (for what it meant before, use "
                          f"{changed.instead}); this warning goes in the next release", FutureWarning, stacklevel=stacklevel)
    for rename in RENAMED:
        if owner in rename.accepted_by and rename.old in kwargs:
            if rename.name in kwargs:
                raise TypeError(f"{owner}() got {rename.old!r} and its new name {rename.name!r}; pass {rename.name!r} only")
            warnings.warn(f"{owner}({rename.old}=...) is renamed {rename.name}; the old name goes in the next release",
                          DeprecationWarning, stacklevel=stacklevel)
            kwargs[rename.name] = kwargs.pop(rename.old)
    return kwargs


def current_keys(owner: str, values: dict) -> dict:
    """``owner``'s fields as a dict written by an older xrayfeat (a run record's ``head``), old keys under new names."""
    values = dict(values)
    for rename in RENAMED:
        if owner in rename.accepted_by and rename.old in values and rename.name not in values:
            values[rename.name] = values.pop(rename.old)
    return values


def _old_names_work(cls):
    """``cls(...)`` takes, and its instances answer to, the old names of its fields (:data:`RENAMED`), with a warning."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **renamed_keywords(cls.__name__, kwargs))

    def old_attribute(rename: Renamed):
        def get(self):
            warnings.warn(f"{cls.__name__}.{rename.old} is renamed {rename.name}; the old name goes in the next release",
                          DeprecationWarning, stacklevel=2)
            return getattr(self, rename.name)

        return property(get, doc=f"The old name of :attr:`{rename.name}` (goes in the next release).")

    cls.__init__ = __init__
    for rename in RENAMED:
        if cls.__name__ in rename.accepted_by:
            setattr(cls, rename.old, old_attribute(rename))
    return cls


@dataclass(frozen=True)
class FeatureOptions:
    """Everything that selects a feature store; changing any field changes the features."""

    backbone: str = option(check=Choice(BACKBONES), help="Backbone (extract accepts a comma-separated list, or all).")
    weights: str = option("imagenet", check=Is((str,)),
                          help="imagenet (from $KERAS_HOME/models, md5-checked), none (random, seeded) or a weights file.")
    image_size: int | None = option(None, check=Interval(32, 2048, integer=True), none=True,
                                    help="Input size in pixels (default: the backbone's, 224 for both, as in the seed).")
    layer: str | None = option(None, check=Is((str,)), none=True,
                               help="Cut point, e.g. inception_v3:mixed9 or vgg16:block4_pool for --train-tail, "
                                    "or vgg16:block5_conv3 for a 14×14 Grad-CAM map (default: the last layer).")
    precision: str = option("auto", check=Choice(("auto", *PRECISIONS)),
                            help="auto: float32 on CPU, mixed_bfloat16 on GPU. Part of the fingerprint.")
    store_dtype: str = option("float16", check=Choice(STORE_DTYPES), help="How features are stored.")
    seed: int = option(0, check=Interval(0, None, integer=True), help="Seed (random weights, splits, training).")
    keep: str = option("both", check=Choice(KEEPS),
                       help="What the store keeps: both parts, the pooled vector only (25-50x smaller; enough for "
                            "the baselines, embed and --head-input pooled) or the spatial map only.")

    def validate(self) -> None:
        if self.weights == IMPORTED_WEIGHTS:  # features imported under a name: the name, then the other fields
            check_import_name(self.backbone, "FeatureOptions")
            validate(replace(self, backbone=BACKBONES[0]))
            return
        validate(self)

    @property
    def imported(self) -> bool:
        """Whether these options name features imported with ``xrayfeat cache import`` (no backbone computes them)."""
        return self.weights == IMPORTED_WEIGHTS


def check_import_name(name, owner: str = "cache import") -> str:
    """``name`` if it may name imported features (:data:`IMPORT_NAME`, not a backbone's), else :class:`OptionError`."""
    if not isinstance(name, str) or not IMPORT_NAME.fullmatch(name):
        raise OptionError(f"The 'name' of imported features ({owner}) must be 1 to 64 lowercase letters, digits, "
                          f"'_', '-' or '.', starting with a letter or digit. Got {name!r} instead.")
    if name in BACKBONES or name == ALL_BACKBONES:
        raise OptionError(f"The name {name!r} is a backbone's ({', '.join(BACKBONES)}, all): imported features "
                          f"need another name, e.g. {name}-imported")
    return name


@dataclass(frozen=True)
class RunOptions:
    """How to run an extraction; none of these change a feature value."""

    device: str = option("auto", check=Choice(DEVICES), help="auto: the GPU when one is visible, else the CPU.")
    batch_size: int = option(32, check=bounded(1, MAX_BATCH_SIZE, "a batch of decoded images is held in memory at once"),
                             flag="--batch-size",
                             help="Images per backbone batch.")
    workers: int | None = option(None, check=bounded(0, MAX_WORKERS, "each is a process with its own memory "
                                                                    "and open files"), none=True,
                                 help="Decoding processes (default: one per core, or none for fewer than two batches "
                                      "of images; 0: decode in this process). With --cluster, per task on each worker "
                                      "(default: the task's share of its machine's cores).")
    cache_dir: str | os.PathLike = option("data_cache", check=Is((str, os.PathLike)), help="Feature cache folder.")
    on_error: str = option("fail", check=Choice(ON_ERROR),
                           help="An undecodable image stops the run (fail) or is left out and reported (skip).")
    progress: bool = option(True, check=Is((bool,)),
                            help="Show progress: a bar on a terminal or in Jupyter, else a line on stderr every "
                                 "XRAYFEAT_PROGRESS_EVERY seconds (default 10).")
    cluster: str | None = option(None, check=Cluster(), none=True,
                                 help="Compute missing features on Dask: local:N starts N worker processes here, "
                                      "tcp://HOST:PORT joins a running scheduler; --cache-dir must be the same "
                                      "folder on every worker (checked). Default: this process.")
    chunk_images: int = option(256, check=bounded(1, MAX_CHUNK_IMAGES, "a chunk's features are one shard, held in "
                                                  "memory before it is written"),
                               help="With --cluster: images per Dask task; each task writes one shard.")

    def validate(self) -> None:
        validate(self)


@_old_names_work
@dataclass(frozen=True)
class HeadOptions:
    """The seed's hyper-parameters (its values are the defaults) and the study's options."""

    epochs: int = option(40, check=Interval(1, None, integer=True), help="Training epochs (the seed's 40; 100 for 4 classes).")
    head_batch_size: int = option(10, check=bounded(1, MAX_HEAD_BATCH_SIZE, "a batch of feature maps is held in "
                                                    "memory at once"),
                                  help="Head training batch size (the seed's 10; the backbone's is --batch-size).")
    steps_per_epoch: int = option(10, check=Interval(0, None, integer=True),
                                  help="Batches per epoch, drawn from a continuing shuffled stream (0: one pass over train).")
    validation_steps: int | None = option(None, check=Interval(0, None, integer=True), none=True,
                                          help="Validation batches per epoch (default: the seed's 2 binary, 5 otherwise; "
                                               "0: the whole validation set).")
    learning_rate: float = option(1e-3, check=Interval(0, None, low_open=True), help="Adam learning rate.")
    units: int = option(256, check=bounded(1, MAX_UNITS, "the hidden layer's weights grow with it"),
                        help="Units of the hidden Dense layer.")
    dropout: float = option(0.3, check=Interval(0, 1, high_open=True), help="Dropout after the hidden layer.")
    l2: float = option(1e-3, check=Interval(0, None), help="L2 penalty on the hidden layer's kernel.")
    train_tail: bool = option(False, check=Is((bool,)),
                              help="Also train the backbone after the cut point (needs --layer).")
    head_input: str = option("spatial", check=Choice(HEAD_INPUTS),
                             help="What the head reads: the spatial map (the seed's) or the pooled vector (works on "
                                  "a --keep pooled store; no Grad-CAM).")
    val_fraction: float = option(0.2, check=Interval(0, 1, low_open=True, high_open=True),
                                 help="Validation share of train when there is no val split (stratified, grouped by patient).")
    baselines: tuple[str, ...] = option(BASELINES, check=Subset(BASELINES),
                                        help="Comma-separated subset of logreg,svm,pixels, or none.")
    seed: int = option(0, check=Interval(0, None, integer=True), help="Seed (splits, training, bootstrap).")
    n_bootstrap: int = option(1000, check=bounded(0, MAX_BOOTSTRAP, "every resample is scored for every model; "
                                                  "intervals settle long before"),
                              help="Bootstrap resamples for confidence intervals (0: none).")
    n_jobs: int | None = option(None, check=N_JOBS, none=True,
                                help="Parallel jobs of the baselines, as scikit-learn's n_jobs (-1: all cores; default: "
                                     "one job for their grid searches, all cores to read the pixels baseline's images).")
    head_backend: str = option("auto", check=Choice(("auto", *HEAD_BACKENDS)),
                               help="Keras backend the head trains on (auto: jax on a CPU when installed, in a child process; "
                                    "features stay in the extraction backend's store).")

    head_step: str = option("auto", check=Choice(HEAD_STEPS),
                            help="The head's training step: fused (its Dense kernel's gradient, L2 and Adam in one pass; "
                                 "the plain head on jax on a CPU), keras (Keras' own step), or auto (fused where it "
                                 "applies, else keras). Both give the same results up to float32 rounding.")
    class_weight: str = option("none", check=Choice(CLASS_WEIGHTS),
                               help="Weight classes by inverse frequency in train (balanced) for the head and the "
                                    "baselines, or not (none, the seed's).")
    restore_best: str | None = option(None, check=Choice(RESTORE_BEST), none=True,
                                      help="Keep the head's weights from the epoch with the best val_loss or "
                                           "val_accuracy (default: the last epoch, as the seed).")
    repeats: int = option(1, check=bounded(1, MAX_REPEATS, "each repeat trains and keeps a head"),
                          help="Train the head N times (seeds seed..seed+N-1) on the same features and split; "
                               "report mean, SD and range across seeds.")
    cv: int | None = option(None, check=bounded(2, MAX_FOLDS, "each fold trains a head and the baselines"), none=True,
                            help="Also cross-validate on the training images (all but test): K folds grouped by "
                                 "patient and stratified by class, the head and the baselines trained on K-1 folds "
                                 "(validation carved out of them) and predicting the held-out one; out-of-fold "
                                 "predictions in predictions-oof.csv, per-fold figures and mean ± SD in metrics.json "
                                 "and the report. With --repeats, each repeat draws new folds with its seed. The "
                                 "main fit and the test split are unchanged (default: no cross-validation).")
    threshold: str = option("youden", check=Threshold(),
                            help="Operating point chosen on the validation data, never on test: youden, sens=X, "
                                 "spec=X, or a fixed probability.")
    positive: str | None = option(None, check=Is((str,)), none=True,
                                  help="The positive class of a binary task (default: the second class); "
                                       "multiclass tasks report every class one-vs-rest.")
    calibrate: str = option("none", check=Choice(CALIBRATIONS),
                            help="Calibrate each model's probabilities on the validation rows only: temperature (one "
                                 "scalar on the logits, by least log-loss) or isotonic (per class one-vs-rest, "
                                 "renormalised; per finding for multi-label). Thresholds are then chosen on the "
                                 "calibrated probabilities, and predict, evaluate and export apply it (default: none).")
    uncertain: str = option("ignore", check=Choice(UNCERTAIN_POLICIES),
                            help="Multi-label tasks: an uncertain finding (-1) is masked out of the loss and the metrics "
                                 "(ignore), or read as negative (zeros) or positive (ones); blank entries are always masked.")
    memory_budget: str | int | None = option(None, check=ByteSize(), none=True,
                                             help="Memory for features, e.g. 8G: larger head inputs are streamed from "
                                                  "the store, larger baseline training sets are subsampled "
                                                  "(default: half the available memory).")

    def validate(self) -> None:
        validate(self)

    def seed_validation_steps(self, n_classes: int) -> int | None:
        """Validation batches per epoch for ``train_head``: None means the whole validation set."""
        if self.validation_steps is None:
            return 2 if n_classes == 2 else 5
        return self.validation_steps or None


@dataclass(frozen=True)
class DecisionOptions:
    """How predict decides: the option of ``predict --decision`` and ``xf.predict(decision=...)``."""

    decision: str | None = option(None, check=Choice(DECISIONS), none=True,
                                  help="argmax (the most probable class) or threshold (the run's thresholds, chosen on "
                                       "validation: binary, the positive class at its threshold; more classes, the "
                                       "class furthest above its own threshold, none when no class reaches it; "
                                       "multi-label, each finding at its own). Default: the rule the run recorded "
                                       "(threshold for runs that chose thresholds; argmax for runs written before).")

    def validate(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ExportOptions:
    """What export writes: the option of ``export --format`` and ``xf.export(format=...)``."""

    format: str = option("keras", check=Choice(EXPORT_FORMATS),
                         help="keras: one .keras file (any Keras 3 backend); savedmodel: a TF SavedModel (serve "
                              "endpoint, TF Serving); onnx: model.onnx (onnxruntime); litert: model.tflite (the LiteRT "
                              "interpreter). savedmodel, onnx and litert need the TensorFlow backend; onnx needs "
                              'pip install "xrayfeat[export]".')

    def validate(self) -> None:
        validate(self)


@dataclass(frozen=True)
class EmbedOptions:
    """A 2-D map of features: the method and its seed."""

    method: str = option("tsne", check=Choice(METHODS), help="Map method: t-SNE (openTSNE) or UMAP.")
    seed: int = option(0, check=Interval(0, None, integer=True), help="Seed of the map.")

    def validate(self) -> None:
        validate(self)


@dataclass(frozen=True)
class PhantomOptions:
    """The built-in synthetic chest X-rays (:func:`xrayfeat.data.phantoms.write_phantoms`): what and how many."""

    task: str = option("four", check=Choice(PHANTOM_TASKS),
                       help="Four classes, covid against normal (binary), or co-occurring findings (multilabel).")
    per_class: int = option(60, check=bounded(2, MAX_PHANTOMS_PER_CLASS, "each image is a file on disk"),
                            help="Images per class (train + test).")
    size: int = option(256, check=bounded(32, MAX_PHANTOM_SIZE, "each image is drawn in memory, in floating point, "
                                                                 "and no backbone reads more (--image-size)"),
                       help="Image size in pixels.")
    seed: int = option(0, check=Interval(0, None, integer=True), help="Seed (anatomy, findings, exposure, splits).")
    test_fraction: float = option(0.3, check=Interval(0, 1, low_open=True, high_open=True),
                                  help="Share of each class's images in test (split by patient).")

    def validate(self) -> None:
        validate(self)


__all__ = ["FeatureOptions", "RunOptions", "HeadOptions", "DecisionOptions", "ExportOptions", "EmbedOptions", "PhantomOptions",
           "BACKBONES", "ALL_BACKBONES", "backbone_names", "STORE_DTYPES", "DEVICES", "ON_ERROR", "HEAD_BACKENDS", "BASELINES", "METHODS", "KEEPS", "HEAD_INPUTS",
           "CLASS_WEIGHTS", "HEAD_STEPS", "RESTORE_BEST", "N_JOBS", "UNCERTAIN_POLICIES", "CALIBRATIONS", "DECISIONS", "EXPORT_FORMATS",
           "Renamed", "RENAMED", "Redefined", "REDEFINED", "flag_of", "renamed_keywords", "current_keys", "PHANTOM_TASKS"]
