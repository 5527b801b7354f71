"""The seed's Keras classification head, trained on cached backbone features.

Head: BatchNormalization → Flatten → Dense(units, ReLU, L2 on the kernel) →
Dropout → Dense(1, sigmoid) for two classes or Dense(K, softmax) for K; for a
multi-label task of K findings (``multilabel=True``), Dense(K, sigmoid) with
binary cross-entropy over the entries that count (:mod:`xrayfeat.models.multilabel`).
With ``tail`` (a model of the backbone's last block), the head first runs the
cached cut-point activations through that block, which is trained too.
Compiled on jax, the head trains in the loop of :mod:`xrayfeat.models.head_jax` when
the Keras internals it needs are there, else with ``model.fit``. Options beyond
the seed's: class weights for imbalanced training data (``class_weight``) and
keeping the epoch with the best validation score (``restore_best``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

from xrayfeat.devices import backend_device
from xrayfeat.fileio import atomic_path
from xrayfeat.models import head_fused as heads_fused
from xrayfeat.models import head_jax as heads_jax
from xrayfeat.models.head_numpy import is_plain_head
from xrayfeat.models.multilabel import MULTILABEL_MODEL_NAME
from xrayfeat.options.settings import HeadOptions
from xrayfeat.options.constraints import AnyOf, Choice, Interval, Is, check_value, declaration, validate_params

__all__ = [
    "TrainedHead",
    "seed_everything",
    "build_head",
    "build_seed_model",
    "count_params",
    "load_head",
    "output_units",
    "resolve_jit_compile",
    "steady_epoch_seconds",
    "train_head",
]

_logger = logging.getLogger(__name__)

#: A classifier's class count.
_N_CLASSES = Interval(2, None, integer=True)
#: ``n_classes`` as declared where it may also count a multi-label task's findings (one is enough there).
_N_OUTPUTS = Interval(1, None, integer=True)
#: The head's layers, as HeadOptions declares them.
_LAYERS = {name: declaration(HeadOptions, name) for name in ("units", "dropout", "l2")}
#: train_head's counts of batches: None (one pass, or the whole validation set) or at least one
#: (HeadOptions' 0 means None there).
_STEPS = {"check": Interval(1, None, integer=True), "none": True}


def output_units(n_classes: int) -> int:
    """The seed used one sigmoid unit for two classes, K softmax units otherwise."""
    return 1 if n_classes == 2 else n_classes


def _check_n_classes(owner: str, n_classes: int, multilabel: bool) -> None:
    """A single-label task needs two classes at least (the message of :data:`_N_CLASSES`); findings, one."""
    if not multilabel:
        check_value(owner, "n_classes", n_classes, _N_CLASSES)


def _head_layers(n_classes: int, units: int, dropout: float, l2: float, multilabel: bool = False):
    import keras

    binary = n_classes == 2 or multilabel
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
            n_classes if multilabel else output_units(n_classes),
            activation="sigmoid" if binary else "softmax",
            name="head_output",
        ),
    ]


@validate_params({"n_classes": _N_OUTPUTS, "multilabel": Is((bool,)), **_LAYERS})
def build_head(
    input_shape: tuple[int, ...],
    n_classes: int,
    *,
    units: int = 256,
    dropout: float = 0.3,
    l2: float = 1e-3,
    tail=None,
    multilabel: bool = False,
):
    """The uncompiled head model taking cached features of ``input_shape``.

    ``tail``: optional Keras model (the backbone after the cut layer) inserted
    before the head and left trainable. ``multilabel``: ``n_classes`` counts
    findings, and the head ends in that many sigmoid units (its model is named
    :data:`~xrayfeat.models.multilabel.MULTILABEL_MODEL_NAME`, which is how a saved head says so).
    """
    import keras

    _check_n_classes("build_head", n_classes, multilabel)
    features = keras.Input(tuple(input_shape), name="features")
    x = tail(features) if tail is not None else features
    for layer in _head_layers(n_classes, units, dropout, l2, multilabel):
        x = layer(x)
    return keras.Model(features, x, name=MULTILABEL_MODEL_NAME if multilabel else "head")


def build_seed_model(backbone, n_classes: int, *, units: int = 256, dropout: float = 0.3, l2: float = 1e-3,
                     multilabel: bool = False):
    """The seed's whole model: the frozen backbone followed by the head (for ``describe``).

    ``multilabel``: ``n_classes`` findings, one sigmoid unit each (see :func:`build_head`).
    """
    import keras

    _check_n_classes("build_seed_model", n_classes, multilabel)
    backbone.trainable = False
    x = backbone.output
    for layer in _head_layers(n_classes, units, dropout, l2, multilabel):
        x = layer(x)
    return keras.Model(backbone.input, x, name=f"{backbone.name}_seed")


def count_params(model) -> dict:
    """Total, trainable and non-trainable parameter counts, as Keras' summary reports them."""
    import numpy as np

    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    frozen = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {"total": trainable + frozen, "trainable": trainable, "non_trainable": frozen}


@dataclass
class ModelDescription:
    """What ``xrayfeat describe`` shows: the seed's full model (frozen backbone + head) and its parameter counts.

    ``summary``: Keras' model summary, one string per line (as the command prints it).
    """

    backbone: str
    classes: int
    image_size: int
    total: int
    trainable: int
    non_trainable: int
    summary: list = field(default_factory=list)
    backbone_params: int = 0  # the frozen backbone alone, as Keras' count_params() counts it

    def as_json(self) -> dict:
        """What ``xrayfeat describe --json`` prints."""
        return {"backbone": self.backbone, "classes": self.classes, "image_size": self.image_size,
                "total": self.total, "trainable": self.trainable, "non_trainable": self.non_trainable,
                "backbone_params": self.backbone_params}


#: The width of Keras' summary table (its four columns, "Param #" last).
SUMMARY_WIDTH = 100


@contextlib.contextmanager
def _summary_width(width: int):
    """Keras draws its summary on a rich console of its own, as wide as the terminal (80 columns where there
    is none: a pipe, a file, a notebook), which cuts the table's last column: that console is told the table's
    width (rich reads ``COLUMNS`` when the console is made, inside ``summary()``)."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before


def describe_seed_model(backbone: str, n_classes: int, *, image_size: int | None = None, units: int = 256,
                        dropout: float = 0.3, l2: float = 1e-3) -> ModelDescription:
    """The seed's full model for ``backbone`` and ``n_classes`` (random weights: only the shapes matter), described."""
    from xrayfeat.backbones import get_spec
    from xrayfeat.extraction.building import build_backbone
    from xrayfeat.extraction.weights import WeightsInfo

    spec = get_spec(backbone)
    frozen = build_backbone(spec, WeightsInfo("none", seed=0), image_size)
    model = build_seed_model(frozen, n_classes, units=units, dropout=dropout, l2=l2)
    counts = count_params(model)
    texts: list[str] = []
    with _summary_width(SUMMARY_WIDTH):
        model.summary(print_fn=lambda text, line_break=None: texts.append(text), line_length=SUMMARY_WIDTH,
                      expand_nested=False)
    lines = [line for text in texts for line in text.splitlines()]  # Keras hands its whole summary over at once
    return ModelDescription(backbone=backbone, classes=n_classes, image_size=image_size or spec.input_size,
                            summary=lines, backbone_params=count_params(frozen)["total"], **counts)


# --------------------------------------------------------------------------- training


def _batch_stream(n: int, batch_size: int, rng):
    """Endless index batches of ``batch_size`` from a shuffled stream of ``n`` samples.

    The seed's Keras generators drew every batch from one stream that runs on
    across epochs and is reshuffled at each pass over the data; this is that
    stream. Every pass is a fresh permutation, so each sample appears exactly
    once per pass. Batches are always full (a batch at a pass boundary takes the
    end of one permutation and the start of the next) so that the compiled step
    sees one shape; the samples already in such a straddling batch are moved to
    the back of the next permutation so that no batch holds a sample twice.
    """
    import numpy as np

    pending = np.empty(0, dtype=np.int64)
    while True:
        perm = rng.permutation(n)
        if len(pending):
            clash = np.isin(perm, pending)
            perm = np.concatenate([perm[~clash], perm[clash]])
        stream = np.concatenate([pending, perm])
        full = len(stream) // batch_size * batch_size
        for start in range(0, full, batch_size):
            yield stream[start : start + batch_size]
        pending = stream[full:]


def _batches(x, y, batch_size: int, seed: int, sample_weight=None, *, reading=None):
    """``(x, y)`` batches from :func:`_batch_stream`, for ``model.fit``; ``(x, y, w)`` with ``sample_weight``.

    Rows are gathered in increasing index order (the order inside a batch does
    not matter to the loss), which also suits h5py datasets, and cast to float32
    one batch at a time, so float16 features from the store are never widened as
    a whole. ``sample_weight`` (one weight per row) does not change which rows a
    batch holds: weighted and unweighted training see the same stream.

    ``reading`` (a :class:`~xrayfeat.store.rows.ReadingAhead`): features streamed
    from the store (:class:`~xrayfeat.store.rows.StoreRows`) are read ahead on a
    thread (the same batches, in the same order) that stops when ``reading``
    closes; without it, and for any other features, each batch is read when it
    is asked for.
    """
    import numpy as np

    from xrayfeat.store.rows import StoreRows

    rows = (np.sort(idx) for idx in _batch_stream(len(x), batch_size, np.random.default_rng(seed)))
    if reading is not None and isinstance(x, StoreRows):
        blocks = reading.start(x, rows)
    else:
        blocks = ((idx, x[idx]) for idx in rows)
    for idx, block in blocks:
        if sample_weight is None:
            yield np.asarray(block, dtype="float32"), y[idx]
        else:
            yield np.asarray(block, dtype="float32"), y[idx], sample_weight[idx]


def _features(x, name: str):
    """Features as given when they can be indexed by row (no copy), else a float32 array."""
    import numpy as np

    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return x
    if not isinstance(x, np.ndarray) and hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "__getitem__"):
        return x  # e.g. an h5py dataset or a memmap: read batch by batch
    try:
        return np.asarray(x, dtype="float32")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: features must be a float array; got {type(x).__name__} ({exc})") from None


def _check_xy(x, y, n_classes: int, name: str):
    import numpy as np

    x = _features(x, name)
    y = np.asarray(y)
    if len(x.shape) < 2:
        raise ValueError(f"{name}: features must have shape (n, ...); got shape {tuple(x.shape)}")
    if y.shape != (len(x),):
        raise ValueError(
            f"{name}: labels must have shape ({len(x)},) to match the features; got shape {y.shape}"
        )
    if len(x) == 0:
        raise ValueError(f"{name}: no samples")
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.mod(y, 1) == 0):
        raise ValueError(f"{name}: labels must be integer class indices; got {y.dtype} values")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(
            f"{name}: labels must lie in [0, {n_classes - 1}] for n_classes={n_classes}; "
            f"got values from {y.min()} to {y.max()}"
        )
    # Binary: one sigmoid unit, float targets of shape (n, 1); K classes: int indices.
    y = y.astype("float32").reshape(-1, 1) if n_classes == 2 else y.astype("int32")
    return x, y


@validate_params({"jit_compile": AnyOf((Is((bool,)), Choice(("auto",))))})
def resolve_jit_compile(jit_compile="auto") -> bool:
    """Resolve ``jit_compile="auto"`` for the current Keras backend.

    Keras' own ``"auto"`` turns XLA off on CPU-only TensorFlow, but for this head
    XLA is the faster choice there: each step is memory-bound on the large Dense
    kernel, and XLA fuses the L2 penalty and Adam's element-wise update into far
    fewer passes over it (measured in ``scripts/bench_head.py``). So ``"auto"``
    means XLA on TensorFlow (CPU or GPU) and ``jax.jit`` on JAX (without it JAX
    runs op by op), and eager on torch (``torch.compile`` costs more than it
    saves for a few hundred small steps).
    """
    import keras

    if jit_compile == "auto":
        return keras.backend.backend() != "torch"
    return jit_compile


def _freeze_tail_batchnorm(tail, freeze: bool):
    """Make the tail trainable, with its BatchNormalization layers frozen when ``freeze``.

    Setting ``trainable`` on every layer (not only on the tail model) is needed:
    a model cut out of a frozen backbone keeps its layers frozen when only the
    outer model is marked trainable. A frozen BatchNormalization layer runs in
    inference mode in Keras 3 (moving statistics, fixed beta), which is what
    fine-tuning wants: batch statistics from batches of 10 are noise, and they
    would overwrite the statistics the backbone was trained with.
    """
    import keras

    def layers(model):
        for layer in model.layers:
            yield layer
            if hasattr(layer, "layers"):
                yield from layers(layer)

    tail.trainable = True
    frozen = 0
    for layer in layers(tail):
        bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = not (bn and freeze)
        frozen += bn and freeze
    return frozen


def _timing_callback(step_timing: bool = True):
    """A callback recording wall time per epoch and, with ``step_timing``, per training step.

    Per-step timing implements ``on_train_batch_end``, which makes Keras dispatch
    batch callbacks synchronously (the step's logs are read back, so the step has
    finished when its time is taken), the same for every backend. Without it, Keras
    may queue the next step while one runs (asynchronous dispatch; in noisy runs on 2
    cores no clear speed difference was measured), and only epochs are timed; an
    epoch always ends synchronised, because its logs are read.
    """
    import time

    import keras

    class _Timing(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch_seconds = []
            self.step_seconds = []  # wall time, one list per epoch
            self.step_cpu_seconds = []  # this process' CPU time (all threads), same layout
            self.train_start = None
            self.train_end = None

        def on_train_begin(self, logs=None):
            self.train_start = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch_start = self._last = time.perf_counter()
            self._last_cpu = time.process_time()
            self.step_seconds.append([])
            self.step_cpu_seconds.append([])

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(time.perf_counter() - self._epoch_start)

        def on_train_end(self, logs=None):
            self.train_end = time.perf_counter()

        def mean_step(self, cpu: bool = False) -> float:
            """Mean step time, leaving out the first epoch (it holds the compilation); NaN without step timing."""
            steps = self.step_cpu_seconds if cpu else self.step_seconds
            later = [s for epoch in steps[1:] for s in epoch]
            if not later and steps:
                later = steps[0][1:]  # one epoch only: drop its first step
            return float(sum(later) / len(later)) if later else float("nan")

    class _StepTiming(_Timing):
        def on_train_batch_end(self, batch, logs=None):
            now, cpu = time.perf_counter(), time.process_time()
            self.step_seconds[-1].append(now - self._last)
            self.step_cpu_seconds[-1].append(cpu - self._last_cpu)
            self._last, self._last_cpu = now, cpu

    return _StepTiming() if step_timing else _Timing()


def _restore_best_callback(monitor: str):
    """A callback that keeps the weights of the epoch with the best ``monitor`` and puts them back when training ends.

    Lower is better for ``val_loss``, higher for ``val_accuracy``. The first
    epoch is the best so far; a later one replaces it only when strictly better,
    so the first of equal epochs wins, and a NaN never does. Epoch ends see the
    model's current variables in both loops (:func:`xrayfeat.models.head_jax.fit`
    writes its state back before the epoch-end hooks, as ``fit`` on jax does),
    and both call the train-end hooks after their last write, so the weights set
    there stay. ``best_epoch`` is 1-based.
    """
    import math

    import keras

    sign = -1.0 if monitor == "val_loss" else 1.0

    class _RestoreBest(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best_epoch = None
            self._score = -math.inf
            self._weights = None

        def on_epoch_end(self, epoch, logs=None):
            value = float(logs[monitor])
            score = -math.inf if math.isnan(value) else sign * value
            if self.best_epoch is None or score > self._score:
                self.best_epoch, self._score, self._weights = epoch + 1, score, self.model.get_weights()

        def on_train_end(self, logs=None):
            if self._weights is not None:
                self.model.set_weights(self._weights)

    return _RestoreBest()


@validate_params({
    "n_classes": _N_OUTPUTS,
    "multilabel": Is((bool,)),
    "steps_per_epoch": _STEPS,
    "validation_steps": _STEPS,
    **{name: declaration(HeadOptions, name)
       for name in ("epochs", "learning_rate", "units", "dropout", "l2", "seed", "class_weight", "restore_best")},
    "step": declaration(HeadOptions, "head_step"),
    "batch_size": declaration(HeadOptions, "head_batch_size"),
})
def train_head(
    x_train,
    y_train,
    x_val=None,
    y_val=None,
    *,
    n_classes: int,
    epochs: int = 40,
    batch_size: int = 10,
    steps_per_epoch: int | None = 10,
    validation_steps: int | None = None,
    learning_rate: float = 1e-3,
    units: int = 256,
    dropout: float = 0.3,
    l2: float = 1e-3,
    seed: int = 0,
    tail=None,
    callbacks=None,
    freeze_tail_bn: bool = True,
    jit_compile="auto",
    step_timing: bool = False,
    verbose: int = 0,
    class_weight: str = "none",
    restore_best: str | None = None,
    multilabel: bool = False,
    mask_train=None,
    mask_val=None,
    step: str = "auto",
) -> TrainedHead:
    """Train the seed's head (optionally behind a trainable backbone tail) on cached features.

    ``x_*``: features of shape (n, ...), e.g. (n, 7, 7, 512) VGG16 block5_pool or
    (n, 5, 5, 2048) InceptionV3 mixed10; float32 or float16 (as the store keeps
    them; cast to float32 one batch at a time), or anything indexable by sorted
    row indices, like an h5py dataset. ``y_*``: integer class indices in
    ``[0, n_classes)``.

    What it reproduces: the seed trained with Keras generators, ``batch_size`` 10
    and ``steps_per_epoch`` 10, so an "epoch" was 10 batches drawn from one
    shuffled stream that runs on across epochs and is reshuffled at every pass
    over the data (see :func:`_batch_stream`; batches are always full).
    ``steps_per_epoch=None`` makes an epoch ``ceil(n / batch_size)`` batches, one
    pass' worth. Validation: ``validation_steps=None`` evaluates the whole
    validation set each epoch in batches of ``batch_size``; an integer draws that
    many batches per epoch from a continuing shuffled stream of the validation
    set, as the seed's validation generator did (2 batches binary, 5 for 4
    classes). ``x_val=None`` trains without validation.

    Loss follows the output: one sigmoid unit with binary cross-entropy for two
    classes, K softmax units with sparse categorical cross-entropy (categorical
    cross-entropy on integer labels) otherwise; Adam at ``learning_rate``.

    ``class_weight="balanced"`` weights each training sample by scikit-learn's
    ``n / (K * count_k)`` for its class k (counted on ``y_train``), passed as the
    third element of every training batch, so a rare class counts in the
    training loss as much as a common one. The batches draw the same rows as
    without weights. The ``accuracy`` metric and the validation loss and
    accuracy stay unweighted (the validation batches carry no weights), so
    ``val_loss`` compares between weighted and unweighted runs and
    ``restore_best`` judges epochs on the data as it is. ``"none"`` (the seed's)
    trains exactly as before the option existed.

    Multi-label (``multilabel=True``): ``n_classes`` is the number of findings K,
    ``y_*`` are (n, K) 0/1 targets and ``mask_train``/``mask_val`` (n, K) bool
    masks, True where an entry counts (None: every entry counts; a masked
    entry's target may hold anything, NaN included). The head ends in K sigmoid
    units; the loss is binary cross-entropy summed over the entries that count
    and divided by their number in the batch, and ``accuracy`` is binary
    accuracy over them (:mod:`xrayfeat.models.multilabel`), so a masked entry
    changes nothing in training. Targets and masks travel to Keras as ``y_true``
    (targets, then per-entry weights): the batches draw the same rows as for a
    single-label head, on every backend and in either loop. ``class_weight="balanced"``
    balances each finding's positives and negatives among its counted entries
    (:func:`xrayfeat.models.multilabel.balanced_weights`), in the training loss
    only. ``settings["multilabel"]`` is True (the key is absent for a
    single-label head, whose settings are as before).

    ``restore_best="val_loss"`` or ``"val_accuracy"``: when training ends, the
    model holds the weights of the epoch with the lowest validation loss or the
    highest validation accuracy (the first of equal epochs); it needs validation
    data. ``settings["best_epoch"]`` says which epoch (1-based; None without
    ``restore_best``, meaning the last). The history still covers every epoch.

    ``tail``: a model of the backbone after the cut (``building.build_tail``);
    ``x`` are then the cut-point activations and the tail trains with the head.
    The tail is modified in place: its layers are made trainable, except its
    BatchNormalization layers, which stay frozen and in inference mode when
    ``freeze_tail_bn`` (the usual fine-tuning practice: statistics of 10-image
    batches are noise, and training them would overwrite the backbone's).

    ``jit_compile="auto"`` is resolved by :func:`resolve_jit_compile` (XLA on
    TensorFlow, also on CPU, where it is markedly faster for this head) and logged.
    Compiled on jax, the steps are Keras' own ``train_step``/``test_step`` run by
    :func:`xrayfeat.models.head_jax.fit` rather than by ``model.fit``
    (``settings["loop"] == "jax"``): the same history and weights, a training
    step compiled without a per-step copy of the Dense kernel, and exactly
    ``validation_steps`` validation batches per epoch. Callbacks get fit's hooks;
    the model's variables are current at epoch ends (during an epoch the state
    lives in the loop, as in ``fit`` on jax). That loop relies on Keras
    internals, which :func:`xrayfeat.models.head_jax.missing_internals` checks first;
    when one is missing, one warning on the ``"xrayfeat"`` logger says which, and
    the head trains with ``model.fit`` (``settings["loop"] == "keras-fit"``, as on
    the other backends): the same training history and weights, with validation
    as ``fit`` draws it.

    ``step``: ``"auto"`` (the default) trains the plain seed head on jax on a
    CPU with the fused step of :mod:`xrayfeat.models.head_fused`
    (``settings["loop"] == "fused"``): the hidden Dense kernel's gradient, its
    L2 term and Adam in one pass over kernel and moments, everything else by
    Keras' own layers, loss and metrics, so the history, weights and
    predictions equal Keras' step up to the order of float32 additions
    (tests/test_head_fused.py). Where it should apply but cannot (numba
    missing, its kernel failing its start-up check, a Keras without the
    internals it reads), one warning says why and Keras' step trains.
    ``"keras"``: Keras' own step (the jax loop or ``fit``) always. ``"fused"``:
    the fused step, or a ``ValueError`` saying why it cannot run here.

    Timing: epochs are always timed. ``step_timing=True`` also times each step,
    reading its logs back, so steps run synchronously and ``step_seconds`` is the
    real time of a finished step (what ``scripts/bench_head.py`` compares). By
    default steps are dispatched asynchronously, and ``step_seconds`` is
    the median later epoch divided by its steps, so it includes the validation.

    Determinism: with the same inputs and seed on CPU, the history and weights
    are identical. To get there it calls :func:`seed_everything` (``keras.utils.set_random_seed(seed)``,
    without importing TensorFlow only to seed it),
    which reseeds Python's ``random``, NumPy's global generator, TensorFlow's
    global seed (when TensorFlow is the backend or already imported), the torch
    seed on torch, and resets Keras' global seed generator. The states of Python's ``random`` and
    NumPy's global generator are saved first and restored when this call returns
    or raises, so the caller's draws from them continue as if it had not run;
    the backend's seeds stay as ``set_random_seed`` left them. Batches are drawn
    from a private ``numpy.random.default_rng(seed)``.
    """
    import random

    import numpy as np

    from xrayfeat.store.rows import ReadingAhead

    _check_n_classes("train_head", n_classes, multilabel)
    _check_together(x_val, y_val, restore_best)
    _check_masks(multilabel, mask_train, mask_val, x_val)
    if multilabel:
        x_train, y_train = _check_multilabel_xy(x_train, y_train, mask_train, n_classes, "x_train/y_train",
                                                class_weight=class_weight)
        weights = None  # the entries' weights are in y_train
    else:
        x_train, y_train = _check_xy(x_train, y_train, n_classes, "x_train/y_train")
    _check_tail_input(x_train, tail)
    batch, steps = _batch_and_steps(len(x_train), batch_size, steps_per_epoch)
    reading = ReadingAhead()  # the read-ahead of streamed features: stopped however training ends
    validation = _validation(x_val, y_val, x_train, n_classes, batch_size, validation_steps, seed,
                             multilabel=multilabel, mask_val=mask_val, reading=reading)
    jit = _resolve_and_log_jit(jit_compile)
    if not multilabel:
        weights = _sample_weights(y_train, class_weight)

    saved = random.getstate(), np.random.get_state()
    try:
        model = _build_and_compile(
            x_train.shape[1:], n_classes, units=units, dropout=dropout, l2=l2, learning_rate=learning_rate, seed=seed, jit=jit,
            tail=tail, freeze_tail_bn=freeze_tail_bn, multilabel=multilabel,
        )
        timing = _timing_callback(step_timing)
        best = _restore_best_callback(restore_best) if restore_best else None
        history, loop = _run_loop(
            model,
            _batches(x_train, y_train, batch, seed, weights, reading=reading),
            jit=jit,
            epochs=int(epochs),
            steps=steps,
            validation=validation,
            callbacks=[timing, *([best] if best else []), *(callbacks or [])],
            verbose=verbose,
            step=step,
        )
    except Exception:
        if isinstance(reading.error, Exception):  # a store error met reading ahead, as it is (not as TF's fit wraps it)
            raise reading.error from None
        raise
    finally:
        reading.close()
        random.setstate(saved[0])
        np.random.set_state(saved[1])

    settings = {
        "n_classes": n_classes,
        "epochs": int(epochs),
        "batch_size": batch,
        "steps_per_epoch": steps,
        "validation_steps": validation_steps,
        "learning_rate": learning_rate,
        "units": units,
        "dropout": dropout,
        "l2": l2,
        "seed": int(seed),
        "tail": None if tail is None else tail.name,
        "freeze_tail_bn": bool(freeze_tail_bn) if tail is not None else None,
        "jit_compile": jit,
        "loop": loop,
        "class_weight": class_weight,
        "restore_best": restore_best,
        "best_epoch": best.best_epoch if best else None,
        **({"multilabel": True} if multilabel else {}),
    }
    return _result(model, history, timing, tail=tail, steps=steps, step_timing=step_timing, settings=settings)


def _check_together(x_val, y_val, restore_best) -> None:
    """What no one parameter's constraint says: validation data comes whole, and ``restore_best`` needs it."""
    if (x_val is None) != (y_val is None):
        raise ValueError("x_val and y_val must be given together (or both left None)")
    if restore_best is not None and x_val is None:
        raise ValueError(f"restore_best={restore_best!r} picks an epoch by its validation score: pass x_val and y_val")


def _check_masks(multilabel: bool, mask_train, mask_val, x_val) -> None:
    """Masks belong to a multi-label head, and a validation mask to validation data."""
    given = [name for name, mask in (("mask_train", mask_train), ("mask_val", mask_val)) if mask is not None]
    if given and not multilabel:
        raise ValueError(f"{' and '.join(given)} mask the entries of multi-label targets: pass multilabel=True "
                         f"with (n, K) targets, or leave {' and '.join(given)} None")
    if mask_val is not None and x_val is None:
        raise ValueError("mask_val masks the validation targets: pass x_val and y_val with it (or leave it None)")


def _check_multilabel_xy(x, y, mask, n_findings: int, name: str, *, class_weight: str = "none"):
    """Features as :func:`_check_xy` takes them, and ``y_true`` for the masked loss, (n, 2K) (:func:`~xrayfeat.models.multilabel.keras_targets`).

    ``class_weight="balanced"`` puts each counted entry's balanced weight in
    ``y_true``; otherwise every counted entry weighs 1.
    """
    from xrayfeat.models import multilabel as ml

    x = _features(x, name)
    if len(x.shape) < 2:
        raise ValueError(f"{name}: features must have shape (n, ...); got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError(f"{name}: no samples")
    targets, mask = ml.check_targets(y, mask, n_findings, name)
    if len(targets) != len(x):
        raise ValueError(f"{name}: targets must have one row per sample ({len(x)}); got {len(targets)}")
    weights = ml.balanced_weights(targets, mask, log_as="train_head") if class_weight == "balanced" else None
    return x, ml.keras_targets(targets, mask, weights)


def _sample_weights(y_train, class_weight: str):
    """One training weight per sample for ``class_weight``, or None for ``"none"``; the class weights are logged.

    ``"balanced"``: ``n / (K * count_k)`` for a sample of class k, K the classes
    present in ``y_train`` (scikit-learn's formula). Each class then weighs in
    the loss as if the classes were equally frequent, and the mean weight is 1,
    so the loss keeps its scale.
    """
    import numpy as np

    if class_weight == "none":
        return None
    labels = np.asarray(y_train).reshape(-1).astype("int64")
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)
    per_class = np.zeros(len(counts))
    per_class[present] = len(labels) / (len(present) * counts[present])
    _logger.info("train_head: balanced class weights %s", {int(k): round(float(per_class[k]), 4) for k in present})
    return per_class[labels].astype("float32")


def _check_tail_input(x_train, tail) -> None:
    """With a tail, the features must be the tail's input: activations stored at its cut layer."""
    if tail is not None and tuple(x_train.shape[1:]) != tuple(tail.input_shape[1:]):
        raise ValueError(
            f"x_train has feature shape {tuple(x_train.shape[1:])} but the tail expects "
            f"{tuple(tail.input_shape[1:])}: store features at the tail's cut layer"
        )


def _batch_and_steps(n: int, batch_size: int, steps_per_epoch: int | None) -> tuple[int, int]:
    """The batch size (at most ``n``, so batches are always full) and the training steps per epoch.

    ``steps_per_epoch=None`` means one pass' worth of batches, ``ceil(n / batch)``.
    """
    import math

    batch = min(int(batch_size), n)
    steps = int(steps_per_epoch) if steps_per_epoch else math.ceil(n / batch)
    return batch, steps


def _validation(x_val, y_val, x_train, n_classes: int, batch_size: int, validation_steps, seed: int, *,
                multilabel: bool = False, mask_val=None, reading=None) -> dict:
    """The validation arguments for ``model.fit`` (and the jax loop, which reads the same dict); {} without.

    ``validation_steps=None``: the whole set, in memory as float32, evaluated in
    batches of ``batch_size``. An integer: that many batches per epoch from a
    continuing shuffled stream seeded with ``seed + 1``, so it never follows the
    training stream. Multi-label validation targets carry the mask, unweighted.
    ``reading``: as for :func:`_batches`.
    """
    import numpy as np

    if x_val is None:
        return {}
    if multilabel:
        x_val, y_val = _check_multilabel_xy(x_val, y_val, mask_val, n_classes, "x_val/y_val")
    else:
        x_val, y_val = _check_xy(x_val, y_val, n_classes, "x_val/y_val")
    if tuple(x_val.shape[1:]) != tuple(x_train.shape[1:]):
        raise ValueError(f"x_val has feature shape {tuple(x_val.shape[1:])}, x_train {tuple(x_train.shape[1:])}")
    if validation_steps is None:
        x_val = np.asarray(x_val[:], dtype="float32")  # Keras slices in-memory arrays itself
        return {"validation_data": (x_val, y_val), "validation_batch_size": batch_size}
    val_batch = min(int(batch_size), len(x_val))
    return {"validation_data": _batches(x_val, y_val, val_batch, seed + 1, reading=reading),
            "validation_steps": int(validation_steps)}


def _resolve_and_log_jit(jit_compile) -> bool:
    """:func:`resolve_jit_compile`, with what ``"auto"`` (or the given value) became logged."""
    import keras

    jit = resolve_jit_compile(jit_compile)
    _logger.info("train_head: jit_compile=%r resolved to %s on %s", jit_compile, jit, keras.backend.backend())
    return jit


def seed_everything(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)``, without importing TensorFlow only to seed it.

    The public call seeds TensorFlow whenever it is installed, importing it
    (4 s in the head's jax child process, measured; a third of a warm run's
    time outside training). Where the backend is not TensorFlow and TensorFlow
    is not imported yet, nothing this process runs draws from TensorFlow's
    seed, so the same steps are taken without that import: Keras' global seed
    and global seed generator (``keras.src.backend.common.global_state``, a
    private module, checked first), Python's ``random``, NumPy's global
    generator, and torch's on the torch backend. Anything unexpected in that
    private module, and every other case, takes the public call.
    tests/test_head_fused.py checks both give the same head.
    """
    import random
    import sys

    import keras
    import numpy as np

    state = _seed_state() if keras.backend.backend() != "tensorflow" and "tensorflow" not in sys.modules else None
    if state is None:
        keras.utils.set_random_seed(seed)
        return
    global_state, seed_name, generator_name = state
    global_state.set_global_attribute(seed_name, seed)
    global_state.set_global_attribute(generator_name, None)
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch

        torch.manual_seed(seed)


def _seed_state():
    """(Keras' global state module, the global seed's name, the global seed generator's name), or None when this
    Keras does not keep them where :func:`seed_everything` looks (then it calls the public function)."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator
        from keras.src.utils import rng_utils
    except ImportError:
        return None
    names = (getattr(rng_utils, "GLOBAL_RANDOM_SEED", None), getattr(seed_generator, "GLOBAL_SEED_GENERATOR", None))
    if not all(isinstance(name, str) for name in names) or not callable(getattr(global_state, "set_global_attribute", None)):
        return None
    return (global_state, *names)


def _build_and_compile(input_shape, n_classes: int, *, units, dropout, l2, learning_rate, seed, jit, tail, freeze_tail_bn,
                       multilabel: bool = False):
    """Seed every generator, prepare the tail, build the head and compile it with its loss, Adam and accuracy.

    Seeding comes first: the initial weights are drawn when the layers are
    built, from the generators :func:`seed_everything` resets (the caller
    restores Python's and NumPy's global state afterwards).
    """
    import keras

    seed_everything(int(seed))
    frozen_bn = _freeze_tail_batchnorm(tail, freeze_tail_bn) if tail is not None else 0
    if frozen_bn:
        _logger.info("train_head: %d BatchNormalization layers of the tail kept frozen (inference mode)", frozen_bn)
    model = build_head(input_shape, n_classes, units=units, dropout=dropout, l2=l2, tail=tail, multilabel=multilabel)
    if multilabel:
        from xrayfeat.models.multilabel import masked_objects

        masked_loss, masked_accuracy = masked_objects()
        loss, metrics = masked_loss(), [masked_accuracy()]
    else:
        loss = "binary_crossentropy" if n_classes == 2 else "sparse_categorical_crossentropy"
        metrics = ["accuracy"]
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=loss,
        metrics=metrics,
        jit_compile=jit,
    )
    return model


def _run_loop(model, batches, *, jit: bool, epochs: int, steps: int, validation: dict, callbacks: list, verbose: int,
              step: str = "auto"):
    """Train: ``(history, loop)``, where ``loop`` is ``"fused"`` (:func:`xrayfeat.models.head_fused.fit_fused`),
    ``"jax"`` (:func:`xrayfeat.models.head_jax.fit`) or ``"keras-fit"``.

    ``batches``: ``(x, y)`` or, with class weights, ``(x, y, sample_weight)``.
    ``step="auto"``: the fused step where it applies (compiled, on jax, on a
    CPU, the plain seed head) and :func:`xrayfeat.models.head_fused.unavailable`
    finds nothing missing; when it should apply but cannot, one warning says
    why. ``"keras"``: Keras' own step. The jax loop is tried next, only where
    it applies (compiled, on jax), and runs only when
    :func:`xrayfeat.models.head_jax.missing_internals` finds every Keras internal
    it needs (checked on the first batch, weights included); otherwise one
    warning says why, and the public ``model.fit`` trains on the same batch
    stream (the same training history and weights).
    """
    import keras

    on_jax = jit and keras.backend.backend() == "jax"
    if step == "fused" and not on_jax:
        raise _fused_refused([f"the head trains on {keras.backend.backend()}"
                              + ("" if keras.backend.backend() != "jax" else " without jit_compile") + ", not compiled jax"])
    if on_jax:
        first = next(batches)
        batches = _prepend(first, batches)
        if step == "fused" or (step == "auto" and _fused_applies(model)):
            unavailable = heads_fused.unavailable(model, first)
            if not unavailable:
                history = heads_fused.fit_fused(
                    model, batches, epochs=epochs, steps=steps, validation=validation, callbacks=callbacks, verbose=verbose
                )
                return history, heads_fused.STEP_NAME
            if step == "fused":
                raise _fused_refused(unavailable)
            logging.getLogger("xrayfeat").warning(
                "train_head: the fused training step is unavailable (%s); training with Keras' own step instead, "
                "which gives the same results up to float32 rounding", "; ".join(unavailable))
        missing = heads_jax.missing_internals(model, first)
        if not missing:
            history = heads_jax.fit(
                model, batches, epochs=epochs, steps=steps, validation=validation, callbacks=callbacks, verbose=verbose
            )
            return history, "jax"
        logging.getLogger("xrayfeat").warning(
            "train_head: the fast jax training loop is unavailable with Keras %s (%s); "
            "training with Keras' model.fit instead, which gives the same training history and weights",
            keras.__version__,
            "; ".join(missing),
        )
    history = model.fit(
        batches,
        epochs=epochs,
        steps_per_epoch=steps,
        shuffle=False,  # the stream is shuffled already
        callbacks=callbacks,
        verbose=verbose,
        **validation,
    ).history
    return history, "keras-fit"


def _fused_refused(why: list[str]) -> ValueError:
    """The error of ``step="fused"`` where the fused step cannot run, with the reasons and the fix."""
    return ValueError(f"the fused training step cannot train this head here ({'; '.join(why)}); "
                      "use --head-step auto or keras (step='auto' or 'keras')")


def _fused_applies(model) -> bool:
    """Whether the fused step is meant for ``model`` here: the plain seed head, trained on a CPU (else no notice)."""
    return is_plain_head(model) and backend_device() == "cpu"


def _prepend(first, rest):
    """``first``, then everything ``rest`` yields: a generator again, as ``model.fit`` requires."""
    yield first
    yield from rest


def _result(model, history: dict, timing, *, tail, steps: int, step_timing: bool, settings: dict) -> TrainedHead:
    """The :class:`TrainedHead` record: floats for the history and timings, parameter counts, the settings.

    ``settings`` gets how ``step_seconds`` was measured, the backend and the device added.
    """
    import keras

    params = count_params(model)
    if tail is not None:
        params["tail"] = count_params(tail)
    return TrainedHead(
        model=model,
        history={k: [float(v) for v in vals] for k, vals in history.items()},
        epoch_seconds=[float(s) for s in timing.epoch_seconds],
        seconds=float(timing.train_end - timing.train_start),
        step_seconds=timing.mean_step() if step_timing else _step_from_epochs(timing.epoch_seconds, steps),
        params=params,
        settings={
            **settings,
            "step_seconds_from": "timed steps" if step_timing else "median epoch / steps (validation included)",
            "backend": keras.backend.backend(),
            "device": backend_device(),
        },
    )


def steady_epoch_seconds(epoch_seconds) -> float | None:
    """The median epoch time after the first (which holds tracing and compilation); the only one's; None for none."""
    import statistics

    later = list(epoch_seconds[1:] or epoch_seconds)
    return float(statistics.median(later)) if later else None


def _step_from_epochs(epoch_seconds: list, steps: int) -> float:
    """Seconds per step from epoch times: the steady epoch time (:func:`steady_epoch_seconds`) over its steps."""
    epoch = steady_epoch_seconds(epoch_seconds)
    return float(epoch / steps) if epoch is not None else float("nan")


@dataclass
class TrainedHead:
    """A trained head and what its training recorded.

    ``history``: per-epoch lists (``loss``, ``accuracy`` and, with validation,
    ``val_loss``, ``val_accuracy``). ``epoch_seconds``: wall time per epoch,
    validation included. ``seconds``: the whole ``fit``. ``step_seconds``: time
    of one training step after the first epoch (which holds compilation); how it
    was measured is in ``settings["step_seconds_from"]`` (see :func:`train_head`).
    ``params``: ``total``/``trainable``/``non_trainable`` of the whole model, and
    under ``tail`` the same for the backbone tail. ``settings``: the resolved
    training settings (batch size, steps, jit_compile, backend, class_weight,
    restore_best and ``best_epoch``, the 1-based epoch whose weights the model
    holds, None for the last...).
    """

    model: object
    history: dict = field(default_factory=dict, repr=False)
    epoch_seconds: list = field(default_factory=list, repr=False)
    seconds: float = float("nan")
    step_seconds: float = float("nan")
    params: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def multilabel(self) -> bool:
        """Whether the head was built for a multi-label task (its model is named :data:`~xrayfeat.models.multilabel.MULTILABEL_MODEL_NAME`)."""
        return self.model.name == MULTILABEL_MODEL_NAME

    @property
    def n_classes(self) -> int:
        """The classes of a single-label head; the findings of a multi-label one."""
        units = int(self.model.output_shape[-1])
        return 2 if units == 1 and not self.multilabel else units

    def predict_proba(self, x, batch_size: int = 256):
        """Class probabilities, shape (n, K); for two classes the columns are [1 - p, p].

        A multi-label head gives each finding's probability, shape (n, K) (rows do not sum to 1).
        """
        import numpy as np

        p = np.asarray(self.model.predict(np.asarray(x, "float32"), batch_size=batch_size, verbose=0))
        if p.shape[-1] == 1 and not self.multilabel:
            p = np.concatenate([1.0 - p, p], axis=1)
        return p

    def predict(self, x, batch_size: int = 256):
        """The most probable class index for each row; for a multi-label head, (n, K) 0/1 (probability >= 0.5)."""
        proba = self.predict_proba(x, batch_size=batch_size)
        if self.multilabel:
            return (proba >= 0.5).astype("int64")
        return proba.argmax(axis=1)

    def embed(self, x, batch_size: int = 256):
        """The penultimate activations (the Dense(units) layer after its ReLU), shape (n, units).

        What ``embed --from-run`` projects: the representation the classifier reads.
        """
        import keras
        import numpy as np

        sub = keras.Model(self.model.inputs, self.model.get_layer("head_dense").output)
        return np.asarray(sub.predict(np.asarray(x, "float32"), batch_size=batch_size, verbose=0))

    def save(self, path) -> str:
        """Write the model (architecture, weights, optimizer state) as a ``.keras`` file, atomically.

        Through :func:`xrayfeat.fileio.atomic_path`: a full disk leaves no truncated
        file under ``path`` and is one :class:`~xrayfeat.errors.DiskFullError` line.
        """
        path = str(path)
        if not path.endswith(".keras"):
            raise ValueError(f"save path must end in .keras; got {path!r}")
        with atomic_path(path, suffix=".keras") as tmp:  # Keras insists on the suffix
            self.model.save(str(tmp))
        return path


def load_head(path) -> TrainedHead:
    """Load a head written by :meth:`TrainedHead.save`, ready to predict and embed.

    Only the model is stored in the file; history and timings stay with the run
    that produced it, so they come back empty. The model is loaded uncompiled.
    """
    import keras

    model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    params = count_params(model)
    tails = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if tails:
        params["tail"] = count_params(tails[0])
    return TrainedHead(model=model, params=params)
