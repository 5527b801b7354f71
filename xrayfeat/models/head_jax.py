"""The head's fast training loop on jax: Keras' own jax steps, jitted and looped here instead of by ``fit``.

Optional, never fragile. The loop leans on Keras internals that are not public
API: ``model._symbolic_build``, the ``(state, data)`` signature of the jax
``train_step``/``test_step`` and the layout of the state tuple they take and
return. :func:`missing_internals` checks every one of them before the loop is
used; when it reports anything, :func:`xrayfeat.models.head.train_head` trains with
the public ``model.fit`` instead, which gives the same training history and
weights (tests/test_heads_jax.py compares the two).

Nothing heavy is imported when this module is: Keras and jax are imported by
the functions that need them.
"""

from __future__ import annotations

import inspect
import itertools
import math

from xrayfeat.devices import backend_device
from xrayfeat.errors import first_line

__all__ = ["CPU_STEP_COMPILER_OPTIONS", "fit", "missing_internals", "run_epochs"]

# Given to XLA for the jax training step only, on a CPU: without it XLA copies the 52 MB Dense
# kernel every step before updating it in place (seen in the optimised HLO); the results are
# bit-identical either way (tests/test_heads_jax.py compares them with Keras' fit).
CPU_STEP_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}

# The public attributes the loop reads on a compiled model (a missing one is reported like a private one).
_MODEL_ATTRIBUTES = ("trainable_variables", "non_trainable_variables", "metrics_variables", "reset_metrics")


def missing_internals(model, batch, *, steps: bool = True) -> list[str]:
    """What the fast loop needs and this Keras does not offer, one phrase each; empty when the loop can run.

    ``model``: the compiled head; ``batch``: its first training batch, ``(x, y)``
    or, with class weights, ``(x, y, sample_weight)`` (the steps are traced with
    it, so a weighted batch is checked as the loop will run it).
    Checked in order, stopping at the first group that fails: the backend is jax;
    the model has ``_symbolic_build``, ``train_step(state, data)`` and
    ``test_step(state, data)``, an optimizer with ``variables``, and the variable
    lists the state is made of; ``keras.callbacks.CallbackList`` takes
    ``add_history`` and ``add_progbar``. Then the model is built the way ``fit``
    builds it (``_symbolic_build``: the optimizer's and the metrics' variables;
    ``fit`` skips this when it is done), and both steps are traced with
    ``jax.eval_shape`` (no computation): each must take the state tuple laid
    out as :func:`_state_variables` says and return ``(logs, state)`` with a
    state of the same layout, shapes and dtypes. ``steps=False`` leaves out that
    tracing: for a loop that builds the model and runs the epochs as this one
    does but never calls Keras' steps (the fused step: about 0.5 s less).
    """
    import keras

    backend = keras.backend.backend()
    if backend != "jax":
        return [f"the Keras backend is {backend}, not jax"]
    missing = []
    if not callable(getattr(model, "_symbolic_build", None)):
        missing.append("model._symbolic_build")
    for name in ("train_step", "test_step"):
        step = getattr(model, name, None)
        if not callable(step) or _parameters(step) != ["state", "data"]:
            missing.append(f"model.{name}(state, data)")
    if getattr(model, "optimizer", None) is None or not hasattr(model.optimizer, "variables"):
        missing.append("model.optimizer.variables")
    missing += [f"model.{name}" for name in _MODEL_ATTRIBUTES if not hasattr(model, name)]
    callback_list = getattr(keras.callbacks, "CallbackList", None)
    if callback_list is None or not {"add_history", "add_progbar"} <= set(_parameters(callback_list)):
        missing.append("keras.callbacks.CallbackList(add_history=, add_progbar=)")
    if missing:
        return missing

    try:
        model._symbolic_build(data_batch=batch)
    except Exception as exc:  # a private call: whatever it raises means the loop cannot rely on it
        return [f"model._symbolic_build(data_batch=...) failed ({_one_line(exc)})"]
    if not steps:
        return []
    problems = [
        _layout_problem(model, "train_step", optimizer=True, batch=batch),
        _layout_problem(model, "test_step", optimizer=False, batch=batch),
    ]
    return [problem for problem in problems if problem]


def _parameters(function) -> list[str]:
    """The parameter names of ``function`` (without ``self``), or [] when Python cannot tell."""
    try:
        return [p for p in inspect.signature(function).parameters if p != "self"]
    except (TypeError, ValueError):
        return []


def _layout_problem(model, name: str, *, optimizer: bool, batch) -> str | None:
    """Why ``model.<name>`` does not map the state tuple to one of the same layout, or None when it does."""
    import jax

    state = _jax_state(model, optimizer)
    try:
        out = jax.eval_shape(getattr(model, name), state, batch)
    except Exception as exc:  # tracing a step that expects another layout fails in many ways
        return f"model.{name} does not take the state tuple {_layout(optimizer)} ({_one_line(exc)})"
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict)):
        return f"model.{name} does not return (logs, state)"
    spec = [[(tuple(v.shape), v.dtype) for v in group] for group in state]
    returned = out[1]
    if not (isinstance(returned, (tuple, list)) and len(returned) == len(spec)) or any(
        not isinstance(group, (tuple, list)) or [(tuple(v.shape), v.dtype) for v in group] != want
        for group, want in zip(returned, spec)
    ):
        return f"model.{name} does not return the state tuple {_layout(optimizer)}"
    return None


def _one_line(exc: Exception, limit: int = 200) -> str:
    """An exception as one short line, for the one-line notice ``train_head`` logs."""
    text = first_line(exc, typed=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _layout(optimizer: bool) -> str:
    names = ["trainable", "non_trainable", *(["optimizer"] if optimizer else []), "metrics"]
    return f"({', '.join(names)})"


def fit(model, batches, *, epochs: int, steps: int, validation: dict, callbacks: list, verbose: int) -> dict:
    """Keras' own jax ``train_step``/``test_step``, jitted and looped here instead of by ``model.fit``.

    Call only when :func:`missing_internals` reported nothing for ``model``
    and the first batch of ``batches`` (which builds the model). Why not
    ``fit``: the loop lets the training step be compiled with
    :data:`CPU_STEP_COMPILER_OPTIONS`, and it draws exactly ``validation_steps``
    batches per epoch from the validation stream (``fit``'s generator adapter
    reads ahead and drops batches). The steps themselves are Keras' (same loss,
    metrics, optimizer, random state; a batch's third element weights its
    samples' loss, as in ``fit``), so the training history equals ``fit``'s;
    callbacks get the same hooks and logs; the trained state is written back to
    the model's variables at the end of every epoch, before the epoch-end hooks,
    as ``fit`` does, and the train-end hooks run after the last write, so
    weights a callback sets there (``train_head``'s ``restore_best``) stay.
    A multi-label head trains here unchanged: its masked loss and accuracy
    are the model's compiled loss and metric, and its masks and weights
    ride in each batch's targets (:mod:`xrayfeat.models.multilabel`).

    ``validation``: ``{}``, ``{"validation_data": (x, y), "validation_batch_size": n}``
    (the whole set each epoch) or ``{"validation_data": batches, "validation_steps": n}``
    (``n`` batches per epoch from a stream), as for ``model.fit``.
    """
    import jax
    import keras

    first = next(batches)
    batches = itertools.chain([first], batches)
    model._symbolic_build(data_batch=first)  # builds the optimizer and the compiled metrics, as fit does
    train_step = jax.jit(model.train_step, donate_argnums=0)
    if backend_device() == "cpu":
        shapes = _jax_state(model, optimizer=True)  # lowering reads shapes only; nothing is donated
        train_step = train_step.lower(shapes, first).compile(compiler_options=CPU_STEP_COMPILER_OPTIONS)
    test_step = jax.jit(model.test_step, donate_argnums=0)
    val_batches, val_steps = _validation_batches(validation)

    callbacks = keras.callbacks.CallbackList(
        callbacks, add_history=False, add_progbar=verbose != 0, verbose=verbose, epochs=epochs, steps=steps, model=model
    )
    held = {}

    def begin_epoch():
        held["state"] = _jax_state(model, optimizer=True)  # the variables are current at every epoch start

    def step(batch):
        logs, held["state"] = train_step(held["state"], batch)
        return logs

    def validate():
        return None if val_batches is None else _evaluate(model, test_step, val_batches, val_steps, callbacks)

    history, epoch_logs = run_epochs(model, batches, callbacks, epochs=epochs, steps=steps, begin_epoch=begin_epoch,
                                     step=step, end_epoch=lambda: _write_back(model, held["state"], optimizer=True),
                                     validate=validate)
    callbacks.on_train_end(epoch_logs)
    return history


def run_epochs(model, batches, callbacks, *, epochs: int, steps: int, begin_epoch, step, end_epoch, validate):
    """The epoch loop of the jax loops (this one and :mod:`~xrayfeat.models.head_fused`'s), with ``fit``'s hooks.

    Per epoch: the metrics reset, ``begin_epoch()``, up to ``steps`` times
    ``step(batch) -> logs`` between the batch hooks, ``end_epoch()`` (the
    trained state written to the model's variables), then ``validate()`` (the
    ``val_`` logs, or None without validation) and the epoch-end hooks. Stops
    early when a callback sets ``model.stop_training``. Calls
    ``on_train_begin`` but not ``on_train_end``: the caller writes its final
    state first. Returns (the history, the last epoch's logs).
    """
    history: dict = {}
    epoch_logs: dict = {}
    model.stop_training = False
    callbacks.on_train_begin()
    for epoch in range(epochs):
        model.reset_metrics()
        begin_epoch()
        callbacks.on_epoch_begin(epoch)
        for index in range(steps):
            callbacks.on_train_batch_begin(index)
            logs = step(next(batches))
            callbacks.on_train_batch_end(index, logs)
            if model.stop_training:
                break
        end_epoch()
        epoch_logs = {k: float(v) for k, v in logs.items()}
        epoch_logs.update(validate() or {})
        for key, value in epoch_logs.items():
            history.setdefault(key, []).append(value)
        callbacks.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    return history, epoch_logs


def _state_variables(model, optimizer: bool) -> list:
    """The model's variable lists in the order of the state tuple Keras' jax ``train_step`` (with
    ``optimizer``) or ``test_step`` (without) takes and returns."""
    groups = [model.trainable_variables, model.non_trainable_variables, model.metrics_variables]
    if optimizer:
        groups.insert(2, model.optimizer.variables)
    return groups


def _jax_state(model, optimizer: bool):
    """The model's current values as that state tuple."""
    return tuple([v.value for v in group] for group in _state_variables(model, optimizer))


def _write_back(model, state, optimizer: bool):
    """Assign a state returned by a step to the model's variables (the buffers passed in were donated)."""
    for refs, values in zip(_state_variables(model, optimizer), state):
        for ref, value in zip(refs, values):
            ref.assign(value)


def _validation_batches(validation: dict):
    """(batch iterator, batches per evaluation) for the validation settings ``train_head`` built, or (None, 0)."""
    if not validation:
        return None, 0
    if "validation_steps" in validation:
        return validation["validation_data"], validation["validation_steps"]
    x_val, y_val = validation["validation_data"]
    size = validation["validation_batch_size"]
    return _whole_set_batches(x_val, y_val, size), math.ceil(len(x_val) / size)


def _whole_set_batches(x, y, size: int):
    """The whole validation set in order, in batches of ``size``, over and over (one pass per evaluation)."""
    while True:
        for start in range(0, len(x), size):
            yield x[start : start + size], y[start : start + size]


def _evaluate(model, test_step, batches, n: int, callbacks) -> dict:
    """``n`` validation batches through Keras' ``test_step``; the ``val_`` logs, as ``fit`` reports them."""
    model.reset_metrics()
    state = _jax_state(model, optimizer=False)
    callbacks.on_test_begin()
    for step in range(n):
        callbacks.on_test_batch_begin(step)
        logs, state = test_step(state, next(batches))
        callbacks.on_test_batch_end(step, logs)
    logs = {k: float(v) for k, v in logs.items()}
    callbacks.on_test_end(logs)
    _write_back(model, state, optimizer=False)
    return {f"val_{k}": v for k, v in logs.items()}
