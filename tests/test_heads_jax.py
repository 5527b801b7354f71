"""train_head's own jax loop (heads_jax.fit) against Keras' fit, in a jax process.

Keras fixes its backend once per process and this suite runs on TensorFlow, so
the check runs in a child process with KERAS_BACKEND=jax and reports back as
JSON. The loop runs Keras' own train_step, so its training history and weights
must equal fit's on the same batch stream (the XLA option it adds must not
change a bit); its validation must take exactly validation_steps consecutive
batches per epoch from the validation stream. When heads_jax.missing_internals
reports a Keras internal missing, train_head must say so once and train with
fit, to the same history and weights. The same holds with class weights (a
third element in every training batch), and restore_best must leave the
weights of the best epoch in either loop.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                       reason="jax is not installed; the jax loop only runs on the jax backend"),
    # the jax loop is now the fused step's fallback (tests/test_head_fused.py is in the suite): .ci/run runs these
    pytest.mark.heavy,
]

CHILD = textwrap.dedent(
    """
    import json, logging, sys
    import keras, numpy as np
    from xrayfeat.models import head as heads, head_jax as heads_jax

    class WeightsPerEpoch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.weights = []
        def on_epoch_end(self, epoch, logs=None):
            self.weights.append(self.model.get_weights())

    def same(a, b):
        return all(np.array_equal(u, v) for u, v in zip(a, b))

    def weighted_run(result, recorder):
        best = result.settings["best_epoch"]
        return {"loop": result.settings["loop"], "history": result.history, "best_epoch": best,
                "restored": same(result.model.get_weights(), recorder.weights[best - 1])}

    class Counter(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.train, self.val = [], []
        def on_epoch_begin(self, epoch, logs=None):
            self.train.append(0)
        def on_train_batch_end(self, batch, logs=None):
            self.train[-1] += 1
        def on_test_begin(self, logs=None):
            self.val.append(0)
        def on_test_batch_end(self, batch, logs=None):
            self.val[-1] += 1

    k, val_steps = int(sys.argv[1]), (None if sys.argv[2] == "all" else int(sys.argv[2]))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3, 3, 8)).astype("float32"); y = np.arange(60) % k
    xv = rng.normal(size=(25, 3, 3, 8)).astype("float32"); yv = np.arange(25) % k
    args = dict(n_classes=k, epochs=3, batch_size=10, steps_per_epoch=4, units=16, seed=3, step="keras")  # Keras' own step
    counter = Counter()
    loop = heads.train_head(x, y, xv, yv, validation_steps=val_steps, callbacks=[counter], **args)

    # Keras' fit on the same model, seed and training stream
    keras.utils.set_random_seed(3)
    model = heads.build_head(x.shape[1:], k, units=16)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="binary_crossentropy" if k == 2 else "sparse_categorical_crossentropy", metrics=["accuracy"])
    fit = model.fit(heads._batches(x, y, 10, 3), epochs=3, steps_per_epoch=4, shuffle=False, verbose=0).history

    # the validation loss of the last epoch, recomputed from the batches the loop should have used
    if val_steps is None:
        drawn = [(xv[s:s + 10], yv[s:s + 10]) for s in range(0, 25, 10)]
    else:
        stream = heads._batches(xv, yv, 10, 4)
        drawn = [next(stream) for _ in range(3 * val_steps)][-val_steps:]
    xs = np.concatenate([b[0] for b in drawn]); ys = np.concatenate([b[1] for b in drawn])
    proba = loop.predict_proba(xs)
    loss = -np.log(np.clip(proba[np.arange(len(ys)), ys], 1e-7, 1)).mean()
    l2 = 1e-3 * float((loop.model.get_layer("head_dense").kernel.numpy() ** 2).sum())

    # the check passes on this Keras, and sees a step that takes the state groups in another order
    batch = next(heads._batches(x, y, 10, 3))
    check = heads_jax.missing_internals(model, batch)
    train_step = model.train_step
    model.train_step = lambda state, data: train_step((state[0], state[2], state[1], state[3]), data)
    swapped = heads_jax.missing_internals(model, batch)
    del model.train_step
    y_rare = np.minimum(np.arange(60) % 5, k - 1)  # imbalanced: 12 of class 0 and 48 of 1, or 12, 12, 12, 24
    weighted_batch = next(heads._batches(x, y_rare, 10, 3, heads._sample_weights(y_rare, "balanced")))
    weighted_check = heads_jax.missing_internals(model, weighted_batch)

    # class weights and restore_best, in the loop and then in fit: on the 4-class head only (whole validation set,
    # so both loops see the same validation scores), to keep the file fast
    weigh = k == 4
    weighted_args = dict(validation_steps=val_steps, class_weight="balanced", restore_best="val_accuracy", **args)
    recorders = [WeightsPerEpoch(), WeightsPerEpoch()]
    weighted = heads.train_head(x, y_rare, xv, yv, callbacks=[recorders[0]], **weighted_args) if weigh else None

    # the same training with one internal reported missing (after the real check ran): a notice, then fit
    notices = []
    class Notices(logging.Handler):
        def emit(self, record):
            notices.append(record.getMessage())
    logging.getLogger("xrayfeat").addHandler(Notices(logging.WARNING))
    real = heads_jax.missing_internals
    heads_jax.missing_internals = lambda model, batch, **kw: [*real(model, batch, **kw), "model._symbolic_build (test)"]
    fallback = heads.train_head(x, y, xv, yv, validation_steps=val_steps, **args)
    fallback_notices = list(notices)
    weighted_fit = heads.train_head(x, y_rare, xv, yv, callbacks=[recorders[1]], **weighted_args) if weigh else None
    heads_jax.missing_internals = real
    print(json.dumps({
        "loop": loop.history, "fit": fit, "counter": [counter.train, counter.val], "settings": loop.settings,
        "weights_equal": all(np.array_equal(a, b) for a, b in zip(loop.model.get_weights(), model.get_weights())),
        "val_loss_recomputed": float(loss + l2),
        "check": check, "swapped": swapped,
        "fallback": fallback.history, "fallback_settings": fallback.settings, "notices": fallback_notices,
        "fallback_weights_equal": all(
            np.array_equal(a, b) for a, b in zip(loop.model.get_weights(), fallback.model.get_weights())),
        "weighted_check": weighted_check,
        "weighted": weighted_run(weighted, recorders[0]) if weigh else None,
        "weighted_fit": weighted_run(weighted_fit, recorders[1]) if weigh else None,
        "weighted_epochs_equal": weigh and [same(a, b) for a, b in zip(recorders[0].weights, recorders[1].weights)],
        "weighted_final_equal": weigh and same(weighted.model.get_weights(), weighted_fit.model.get_weights()),
    }))
    """
)


def run_child(k: int, val_steps: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(k), val_steps], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=[(2, "2"), (4, "all")], ids=["binary-2-val-steps", "4class-whole-val"])
def child(request):
    return request.param, run_child(*request.param)


def test_training_equals_keras_fit(child):
    _, result = child
    assert result["settings"]["loop"] == "jax"
    for key in ("loss", "accuracy"):
        assert result["loop"][key] == result["fit"][key]
    assert result["weights_equal"]


def test_hooks_and_validation_batches(child):
    (k, val_steps), result = child
    train, val = result["counter"]
    assert train == [4, 4, 4]
    assert val == [2 if val_steps == "2" else 3] * 3  # exactly validation_steps, or the whole set (25 in 10s)
    assert set(result["loop"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in result["loop"].values())


def test_validation_uses_the_next_consecutive_batches(child):
    _, result = child
    # the final weights evaluated on the batches epoch 3 should have drawn: the same loss, up to float32 rounding
    assert result["loop"]["val_loss"][-1] == pytest.approx(result["val_loss_recomputed"], rel=1e-4)


def test_check_passes_here_and_sees_another_state_layout(child):
    _, result = child
    assert result["check"] == []
    assert result["swapped"] and "model.train_step" in result["swapped"][0]


def test_fallback_to_fit_when_an_internal_is_missing(child):
    (k, val_steps), result = child
    assert result["fallback_settings"]["loop"] == "keras-fit"
    assert len(result["notices"]) == 1
    assert "unavailable" in result["notices"][0] and "model._symbolic_build (test)" in result["notices"][0]
    assert "model.fit" in result["notices"][0]
    for key in ("loss", "accuracy"):
        assert result["fallback"][key] == result["loop"][key]
    assert result["fallback_weights_equal"]
    if val_steps == "all":  # with validation_steps, fit's generator adapter reads ahead: other validation batches
        for key in ("val_loss", "val_accuracy"):
            assert result["fallback"][key] == pytest.approx(result["loop"][key], rel=1e-4)



def test_class_weights_in_the_loop_equal_fit(child):
    (k, _), result = child
    assert result["weighted_check"] == []  # the state layout check passes with (x, y, sample_weight) batches
    if k == 2:
        pytest.skip("weighted training is compared on the 4-class head only, to keep the file fast")
    loop, fit = result["weighted"], result["weighted_fit"]
    assert (loop["loop"], fit["loop"]) == ("jax", "keras-fit")
    for key in ("loss", "accuracy"):
        assert loop["history"][key] == fit["history"][key]
    assert loop["history"]["loss"] != result["loop"]["loss"]  # other labels, weighted: another training
    assert result["weighted_epochs_equal"] == [True, True, True]  # the same weights at every epoch end
    assert loop["best_epoch"] == fit["best_epoch"] and result["weighted_final_equal"]


@pytest.mark.parametrize("run", ["weighted", "weighted_fit"], ids=["jax-loop", "keras-fit"])
def test_restore_best_keeps_the_best_epoch_in_either_loop(child, run):
    (k, _), result = child
    if k == 2:
        pytest.skip("restore_best is checked on the 4-class head only, to keep the file fast")
    trained = result[run]
    values = trained["history"]["val_accuracy"]
    assert trained["best_epoch"] == int(np.argmax(values)) + 1  # the first of equal epochs
    assert trained["restored"]  # the weights the epoch-end hook saw at the best epoch
    assert len(values) == 3  # the history keeps every epoch
