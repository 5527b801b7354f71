"""The seed head's training step with its large Dense layer fused into one pass (CPU, jax backend).

Why: on a CPU the head's training step is bound by memory traffic over the
hidden Dense kernel (51,200 × 256 float32 for InceptionV3's maps), which Keras'
step reads and writes about 16 times (:mod:`xrayfeat.models.fused_kernel`).
This step splits the head at that kernel and lets Keras do everything else:

1. BatchNormalization (training mode: batch statistics, moving averages) and
   Flatten: the layers' own ``stateless_call`` on jax, jitted;
2. the kernel's forward product ``x_n @ W``: one pass over the kernel (:func:`fused_kernel.forward`);
3. the bias, ReLU, Dropout (the layer's own seed generator, so the same masks
   as Keras' step draws), the output layer, the model's compiled loss
   (``model.compute_loss``, sample and multi-label weights included) and its
   compiled metrics with the loss tracker: jitted, differentiated by jax with
   respect to the Dense pre-activation, the bias and the output layer;
4. the kernel's gradient, its L2 term and Adam on kernel and moments, plus the
   gradient w.r.t. ``x_n``: one fused pass (:func:`fused_kernel.step`);
5. BatchNormalization's gradient w.r.t. its scale and offset (a jax
   ``vjp`` of step 1) and Adam on the small variables, in one jitted call,
   with the formula of ``keras.optimizers.Adam.update_step`` (the kernel's
   α is the same formula in numpy float32, :func:`fused_kernel.adam_alpha`).

The kernel and its moments live in numpy arrays during training; every
variable is written back to the model at the end of every epoch, before
validation and the epoch-end hooks, and the
optimizer's moments and step count at the end, so a saved head carries the
same optimizer state as after ``fit``. The training history is Keras': the
loss tracker and compiled metrics are the model's own. The L2 term of the
reported loss is ``l2 · Σ W²``, with the sum made in float64 by the fused pass.

When it applies (:func:`unavailable` says why not, one phrase each): the
jax backend on a CPU; the plain seed head (no backbone tail); Adam without
AMSGrad, weight decay, clipping, EMA or a schedule; an L2 (or no) kernel
regularizer; numba present and its kernel agreeing with a numpy reference
(:func:`fused_kernel.check_kernel`); the Keras internals the write-back needs
(the optimizer's ``_momentums``, ``_velocities`` and ``_get_variable_index``).
:func:`xrayfeat.models.head.train_head` falls back to Keras' own step (the
jax loop) with one notice otherwise. Results equal Keras' step up to the
order of float32 additions (tests/test_head_fused.py says how close).
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np

from xrayfeat.devices import backend_device
from xrayfeat.models import fused_kernel
from xrayfeat.models import head_jax
from xrayfeat.models.head_numpy import is_plain_head

__all__ = ["STEP_NAME", "fit_fused", "unavailable"]

#: What ``settings["loop"]`` says when this step trained the head.
STEP_NAME = "fused"


def unavailable(model, batch) -> list[str]:
    """Why the fused step cannot train ``model`` (compiled by ``train_head``) here, one phrase each; [] when it can.

    ``batch``: the first training batch, ``(x, y)`` or ``(x, y, w)``; the
    jitted pieces are traced with it (shapes only, no computation), and
    :func:`fit_fused` then trains with those traces and the arrays copied for them.
    """
    import keras

    if keras.backend.backend() != "jax":
        return [f"the Keras backend is {keras.backend.backend()}, not jax"]
    if backend_device() != "cpu":
        return [f"the head trains on a {backend_device().upper()} (the fused step is for CPUs)"]
    if not is_plain_head(model):
        return ["the model is not the plain seed head (a backbone tail trains with Keras' step)"]
    problems = _layer_problems(model)
    if problems:
        return problems
    # the jax loop's internals it shares (the model's build, the epochs, the callbacks); Keras' steps, which it never
    # calls, are not traced
    problems = head_jax.missing_internals(model, batch, steps=False) or _optimizer_problems(model.optimizer)
    if problems:
        return problems
    problem = fused_kernel.check_kernel()
    if problem:
        return [problem]
    try:
        pieces, state = _Pieces(model), _State(model)
        pieces.trace(state, batch)
    except Exception as exc:  # whatever tracing raises means this Keras does not work as the step expects
        return [f"the step's jax pieces do not trace with Keras {keras.__version__} ({head_jax._one_line(exc)})"]
    _TRACED[model] = pieces, state  # fit_fused trains with these: traced once, the kernel copied once
    return []


#: ``(pieces, state)`` :func:`unavailable` traced for a model, for :func:`fit_fused` to take (and drop).
_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layers(model) -> tuple:
    """The head's BatchNormalization, hidden Dense, Dropout and output layers."""
    return tuple(model.get_layer(n) for n in ("head_bn", "head_dense", "head_dropout", "head_output"))


def _layer_problems(model) -> list[str]:
    import keras

    bn, dense, _, out = _layers(model)
    problems = []
    if bn.axis not in (-1, len(model.inputs[0].shape) - 1) or not (bn.center and bn.scale):
        problems.append("head_bn is not a centred, scaled BatchNormalization over the channels")
    regularizer = dense.kernel.regularizer
    if regularizer is not None and type(regularizer) is not keras.regularizers.L2:
        problems.append(f"head_dense's kernel regularizer is {type(regularizer).__name__}, not L2")
    if dense.bias is None or getattr(dense, "lora_enabled", False) or getattr(dense, "quantization_mode", None):
        problems.append("head_dense is not a plain Dense layer with a bias")
    if out.kernel.regularizer is not None or out.bias is None:
        problems.append("head_output is not a plain Dense layer with a bias")
    if keras.config.dtype_policy().name != "float32":
        problems.append(f"the dtype policy is {keras.config.dtype_policy().name}, not float32")
    return problems


def _optimizer_problems(optimizer) -> list[str]:
    import keras

    if type(optimizer) is not keras.optimizers.Adam:
        return [f"the optimizer is {type(optimizer).__name__}, not Adam"]
    config = optimizer.get_config()
    settings = {k: config.get(k) for k in ("amsgrad", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm",
                                         "use_ema", "loss_scale_factor", "gradient_accumulation_steps")}
    problems = [f"Adam's {k} is {val!r}" for k, val in settings.items() if val not in (None, False)]
    if not isinstance(config.get("learning_rate"), (int, float)):
        problems.append("Adam's learning rate is a schedule")
    for name in ("_momentums", "_velocities", "_get_variable_index"):
        if not hasattr(optimizer, name):
            problems.append(f"optimizer.{name}")
    return problems


class _Pieces:
    """The jitted jax pieces of one step, and the model's variables they take, for ``model``."""

    def __init__(self, model):
        import jax

        self.model = model
        self.bn, self.dense, self.dropout, self.out = _layers(model)
        tracker = [m for m in model.metrics if m.name == "loss"]
        if not tracker:
            raise RuntimeError("the compiled model has no loss tracker")
        self.tracker = tracker[0]
        config = model.optimizer.get_config()
        #: Adam's learning rate, β₁, β₂ and ε, as Python floats (a constant learning rate: :func:`unavailable`)
        self.adam_settings = tuple(float(config[k]) for k in ("learning_rate", "beta_1", "beta_2", "epsilon"))
        # where each small variable's gradient comes from, in the order of _State.small
        sources = {id(v): ("bn", i) for i, v in enumerate(self.bn.trainable_variables)}
        sources[id(self.dense.bias)] = ("bias", 0)
        sources.update({id(v): ("out", i) for i, v in enumerate(self.out.trainable_variables)})
        self.sources = [sources[id(v)] for v in model.trainable_variables if v is not self.dense.kernel]
        self.front = jax.jit(self._front)
        self.back = jax.jit(self._back)
        self.update = jax.jit(self._update)
        self.front_eval = jax.jit(self._front_eval)
        self.back_eval = jax.jit(self._back_eval)

    # --- the pieces (pure functions of arrays)

    def _front(self, bn_trainable, bn_non_trainable, x):
        """BatchNormalization in training mode, then Flatten: (x_n, the new moving statistics)."""
        y, moving = self.bn.stateless_call(bn_trainable, bn_non_trainable, x, training=True)
        return y.reshape(y.shape[0], -1), moving

    def _front_eval(self, bn_trainable, bn_non_trainable, x):
        """BatchNormalization in inference mode (its moving statistics), then Flatten: x_n."""
        y, _ = self.bn.stateless_call(bn_trainable, bn_non_trainable, x, training=False)
        return y.reshape(y.shape[0], -1)

    def _back_eval(self, z0, dense_bias, out_vars, metrics_vars, regularization, y, sample_weight):
        """Keras' ``test_step`` from the kernel's product on: the loss (its L2 term given) and the metrics updated."""
        import keras

        h = self.dense.activation(keras.ops.add(z0, dense_bias))  # Dropout does nothing at inference
        y_pred, _ = self.out.stateless_call(out_vars, [], h)
        data = self.model.compute_loss(x=None, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
        return self._metrics(metrics_vars, data, regularization, y, y_pred, sample_weight)

    def _metrics(self, metrics_vars, data, regularization, y, y_pred, sample_weight):
        """The loss tracker and the compiled metrics updated as Keras' steps update them: (logs, new metric variables).

        ``data``: the compiled loss of the batch; the tracker gets it plus the
        kernel's L2 term ``regularization`` (None: none), weighted by the batch size.
        """
        import keras

        total = keras.ops.sum([data, regularization]) if regularization is not None else data
        mapping = list(zip(self.model.metrics_variables, metrics_vars))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self.tracker.update_state(total, sample_weight=y_pred.shape[0])
            logs = self.model.compute_metrics(None, y, y_pred, sample_weight)
        return logs, [scope.get_current_value(v) if scope.get_current_value(v) is not None else value
                      for v, value in mapping]

    def _front_grads(self, bn_trainable, bn_non_trainable, x, dx_n):
        """The gradient of the loss w.r.t. BatchNormalization's scale and offset, given the one w.r.t. x_n."""
        import jax

        def flat(trainable):
            return self._front(trainable, bn_non_trainable, x)[0]

        return jax.vjp(flat, bn_trainable)[1](dx_n)[0]

    def _back(self, z0, dense_bias, out_vars, dropout_vars, metrics_vars, regularization, y, sample_weight):
        """From the kernel's product to the loss: (logs, gradients, new dropout state, new metric variables)."""
        import jax
        import keras

        def loss(z0, dense_bias, out_vars):
            h = self.dense.activation(keras.ops.add(z0, dense_bias))
            h, dropout_state = self.dropout.stateless_call([], dropout_vars, h, training=True)
            y_pred, _ = self.out.stateless_call(out_vars, [], h)
            data = self.model.compute_loss(x=None, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            return data, (y_pred, dropout_state)

        (data, (y_pred, dropout_state)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
            z0, dense_bias, out_vars)
        logs, new_metrics = self._metrics(metrics_vars, data, regularization, y, y_pred, sample_weight)
        return logs, grads, dropout_state, new_metrics

    def _update(self, bn_trainable, bn_non_trainable, x, dx_n, d_bias, d_out, values, moments, velocities, iteration):
        """BatchNormalization's gradient (from the one w.r.t. x_n), then Adam on every small variable, as
        ``keras.optimizers.Adam.update_step`` does: (new values, first moments, second moments)."""
        from keras import ops

        grads = {"bn": self._front_grads(bn_trainable, bn_non_trainable, x, dx_n), "bias": [d_bias], "out": d_out}
        learning_rate, beta_1, beta_2, epsilon = self.adam_settings
        dtype = "float32"
        local_step = ops.cast(iteration + 1, dtype)
        alpha = ops.cast(learning_rate, dtype) * ops.sqrt(1 - ops.power(ops.cast(beta_2, dtype), local_step)) / (
            1 - ops.power(ops.cast(beta_1, dtype), local_step))
        new_values, new_moments, new_velocities = [], [], []
        for (group, index), var, m, v in zip(self.sources, values, moments, velocities):
            g = grads[group][index]
            m = m + (g - m) * (1 - beta_1)
            v = v + (ops.square(g) - v) * (1 - beta_2)
            new_values.append(var - (m * alpha) / (ops.sqrt(v) + epsilon))
            new_moments.append(m)
            new_velocities.append(v)
        return new_values, new_moments, new_velocities

    def trace(self, state: _State, batch) -> None:
        """Trace every jitted piece with ``state``'s arrays and ``batch``, shapes only: raises when this Keras breaks
        the step.

        The traces are jax's own (``jit(...).trace``), kept by jax for the calls
        that follow with the same shapes, so training does not trace again.
        """
        import jax

        x, y, w = _unpack(batch)
        with _unregularized(self.dense):  # as fit_fused calls them: the traces hold what is read while tracing
            x_n, moving = self.front.trace(state.bn_trainable, state.bn_non_trainable, x).out_info
            z0 = jax.ShapeDtypeStruct((x_n.shape[0], self.dense.units), "float32")
            _, (_, d_bias, d_out), _, _ = self.back.trace(z0, state.dense_bias, state.out_vars, state.dropout_vars,
                                                          state.metrics_vars, state.regularization(), y, w).out_info
            self.update.trace(state.bn_trainable, state.bn_non_trainable, x, x_n, d_bias, d_out,
                              state.small_values, state.small_m, state.small_v, state.iteration)
            self.front_eval.trace(state.bn_trainable, state.bn_non_trainable, x)
            self.back_eval.trace(z0, state.dense_bias, state.out_vars, state.metrics_vars, state.regularization(), y, w)


@contextlib.contextmanager
def _unregularized(dense):
    """``dense``'s kernel without its regularizer inside the block, put back however it ends.

    While the fused step trains, the fused pass adds the L2 term's gradient and
    the pieces take its loss as an argument (:meth:`_State.regularization`), so
    Keras must not add it again from the layer.
    """
    regularizer = dense.kernel.regularizer
    dense.kernel.regularizer = None
    try:
        yield
    finally:
        dense.kernel.regularizer = regularizer


class _State:
    """The head's variables as arrays during training: the kernel and its moments in numpy, the rest in jax."""

    def __init__(self, model):
        optimizer = model.optimizer
        self.model = model
        self.bn, self.dense, self.dropout, self.out = _layers(model)
        regularizer = self.dense.kernel.regularizer
        self.l2 = float(regularizer.l2) if regularizer is not None else 0.0
        self.kernel = np.array(self.dense.kernel.numpy(), np.float32, order="C")
        self.kernel_m = np.array(self._slot(optimizer._momentums, self.dense.kernel), np.float32, order="C")
        self.kernel_v = np.array(self._slot(optimizer._velocities, self.dense.kernel), np.float32, order="C")
        self.sumsq = float(np.square(self.kernel, dtype=np.float64).sum())
        self.small = self._small_variables()
        self._index = {id(v): i for i, v in enumerate(self.small)}  # where a small variable's value is
        self.small_values = [v.value for v in self.small]
        self.small_m = [self._slot(optimizer._momentums, v) for v in self.small]
        self.small_v = [self._slot(optimizer._velocities, v) for v in self.small]
        self.bn_non_trainable = [v.value for v in self.bn.non_trainable_variables]
        self.dropout_vars = [v.value for v in self.dropout.non_trainable_variables]
        self.metrics_vars = [v.value for v in model.metrics_variables]
        self.iteration = int(np.asarray(optimizer.iterations.numpy()))

    def _slot(self, slots, variable):
        return slots[self.model.optimizer._get_variable_index(variable)].value

    def _small_variables(self) -> list:
        """Every trainable variable but the kernel, in the order of ``model.trainable_variables``."""
        return [v for v in self.model.trainable_variables if v is not self.dense.kernel]

    def _values_of(self, variables) -> list:
        return [self.small_values[self._index[id(v)]] for v in variables]

    @property
    def bn_trainable(self):
        return self._values_of(self.bn.trainable_variables)

    @property
    def dense_bias(self):
        return self._values_of([self.dense.bias])[0]

    @property
    def out_vars(self):
        return self._values_of(self.out.trainable_variables)

    def regularization(self):
        """This step's L2 loss of the kernel, ``l2 · Σ W²`` (None without a regularizer), in float32."""
        return np.float32(self.l2 * self.sumsq) if self.l2 else None

    def write_back(self, *, optimizer_state: bool) -> None:
        """Assign the arrays to the model's variables (and, with ``optimizer_state``, to Adam's)."""
        self.dense.kernel.assign(self.kernel)
        for variable, value in zip(self.small, self.small_values):
            variable.assign(value)
        for variable, value in zip(self.bn.non_trainable_variables, self.bn_non_trainable):
            variable.assign(value)
        for variable, value in zip(self.dropout.non_trainable_variables, self.dropout_vars):
            variable.assign(value)
        for variable, value in zip(self.model.metrics_variables, self.metrics_vars):
            variable.assign(value)
        if optimizer_state:
            optimizer = self.model.optimizer
            index = optimizer._get_variable_index
            optimizer._momentums[index(self.dense.kernel)].assign(self.kernel_m)
            optimizer._velocities[index(self.dense.kernel)].assign(self.kernel_v)
            for variable, m, v in zip(self.small, self.small_m, self.small_v):
                optimizer._momentums[index(variable)].assign(m)
                optimizer._velocities[index(variable)].assign(v)
            optimizer.iterations.assign(self.iteration)


def _unpack(batch):
    """``(x, y, sample_weight or None)`` of a training batch."""
    x, y, *rest = batch
    return np.asarray(x, np.float32), y, (rest[0] if rest else None)


def _train_step(pieces: _Pieces, state: _State, batch) -> dict:
    """One training step on ``batch``; updates ``state``; returns the step's logs (Keras' running metrics).

    Three jitted calls (the front, the back, the small variables' update) around
    the two kernels; the batch is put on the device once for the two that read it.
    """
    import jax

    x, y, w = _unpack(batch)
    x = jax.device_put(x)
    bn_trainable = state.bn_trainable
    x_n, moving = pieces.front(bn_trainable, state.bn_non_trainable, x)
    z0, x_t = fused_kernel.forward(x_n, state.kernel)
    logs, (dz0, d_bias, d_out), dropout_state, metrics = pieces.back(
        z0, state.dense_bias, state.out_vars, state.dropout_vars, state.metrics_vars, state.regularization(), y, w)
    learning_rate, beta_1, beta_2, epsilon = pieces.adam_settings
    alpha = fused_kernel.adam_alpha(learning_rate, beta_1, beta_2, state.iteration + 1)
    dx_n, sumsq = fused_kernel.step(x_t, np.asarray(dz0), state.kernel, state.kernel_m, state.kernel_v, l2=state.l2,
                                    beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, alpha=alpha)
    state.small_values, state.small_m, state.small_v = pieces.update(
        bn_trainable, state.bn_non_trainable, x, dx_n, d_bias, d_out, state.small_values, state.small_m,
        state.small_v, state.iteration)
    state.iteration += 1
    state.sumsq = sumsq
    state.bn_non_trainable = list(moving)
    state.dropout_vars = list(dropout_state)
    state.metrics_vars = list(metrics)
    return logs


def _validate(pieces: _Pieces, state: _State, batches, n: int, callbacks) -> dict:
    """``n`` validation batches as Keras' ``test_step`` evaluates them; the ``val_`` logs, as ``fit`` reports them.

    The batches are drawn first and go through the kernel's forward product
    together (one read of the kernel for all of them, where a ``test_step``
    per batch reads it twice: the product and the L2 term); the rest runs per
    batch with the model's loss and metrics, reset first, as in ``fit``.
    """
    import jax

    drawn = [_unpack(next(batches)) for _ in range(n)]
    x = jax.device_put(np.concatenate([b[0] for b in drawn]))
    x_n = pieces.front_eval(state.bn_trainable, state.bn_non_trainable, x)
    z0, _ = fused_kernel.forward(x_n, state.kernel)
    state.model.reset_metrics()
    metrics = [v.value for v in state.model.metrics_variables]
    callbacks.on_test_begin()
    start = 0
    for step, (xb, yb, wb) in enumerate(drawn):
        callbacks.on_test_batch_begin(step)
        logs, metrics = pieces.back_eval(z0[start:start + len(xb)], state.dense_bias, state.out_vars, metrics,
                                         state.regularization(), yb, wb)
        start += len(xb)
        callbacks.on_test_batch_end(step, logs)
    logs = {k: float(v) for k, v in logs.items()}
    callbacks.on_test_end(logs)
    for variable, value in zip(state.model.metrics_variables, metrics):
        variable.assign(value)
    return {f"val_{k}": v for k, v in logs.items()}


def fit_fused(model, batches, *, epochs: int, steps: int, validation: dict, callbacks: list, verbose: int) -> dict:
    """Train ``model`` with the fused step; the same contract as :func:`xrayfeat.models.head_jax.fit`.

    Call only when :func:`unavailable` reported nothing for ``model`` and the
    first batch of ``batches``. The regularizer of the hidden kernel is taken
    off the model while training (the fused pass adds its gradient and its
    loss) and put back however this returns.
    """
    import itertools

    import keras

    traced = _TRACED.pop(model, None)  # taken first: an entry holds its model, so it must not stay behind
    first = next(batches)
    batches = itertools.chain([first], batches)
    model._symbolic_build(data_batch=first)  # the optimizer's and the metrics' variables, as fit builds them
    pieces, state = traced if traced is not None else (_Pieces(model), None)
    val_batches, val_steps = head_jax._validation_batches(validation)
    callbacks = keras.callbacks.CallbackList(
        callbacks, add_history=False, add_progbar=verbose != 0, verbose=verbose, epochs=epochs, steps=steps, model=model
    )
    state = state if state is not None else _State(model)

    def begin_epoch():
        state.metrics_vars = [v.value for v in model.metrics_variables]

    def validate():
        return None if val_batches is None else _validate(pieces, state, val_batches, val_steps, callbacks)

    with _unregularized(pieces.dense):
        history, epoch_logs = head_jax.run_epochs(
            model, batches, callbacks, epochs=epochs, steps=steps, begin_epoch=begin_epoch,
            step=lambda batch: _train_step(pieces, state, batch),
            end_epoch=lambda: state.write_back(optimizer_state=False), validate=validate)
    state.write_back(optimizer_state=True)
    callbacks.on_train_end(epoch_logs)
    return history
