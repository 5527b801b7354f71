"""heads.train_head and TrainedHead on tiny synthetic features (fast: (3, 3, 8) maps, 16 units)."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from xrayfeat.models import head as heads  # noqa: E402

SHAPE = (3, 3, 8)
UNITS = 16
EPOCHS = 6
# XLA compilation costs seconds per model on a small CPU; the head's behaviour is
# the same either way, so on TensorFlow most tests train without it and one checks
# it. JAX without jit runs op by op (slower), so there the default stays.
FAST = {"units": UNITS, "jit_compile": False if keras.backend.backend() == "tensorflow" else "auto"}


def blobs(n: int, classes: int, seed: int, shape=SHAPE, spread: float = 1.5):
    """Separable features: one random centre per class plus unit noise."""
    centres = np.random.default_rng(1234).normal(size=(classes, *shape)).astype("float32") * spread
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    x = centres[y] + rng.normal(size=(n, *shape)).astype("float32")
    return x, y


class BatchCounter(keras.callbacks.Callback):
    """Counts training batches per epoch and validation batches per evaluation."""

    def on_train_begin(self, logs=None):
        self.per_epoch, self.val_batches = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1

    def on_test_begin(self, logs=None):
        self.val_batches.append(0)

    def on_test_batch_end(self, batch, logs=None):
        self.val_batches[-1] += 1


def weights_equal(a, b) -> bool:
    return all(np.array_equal(u, v) for u, v in zip(a.model.get_weights(), b.model.get_weights()))


@pytest.fixture(scope="module", params=[2, 4], ids=["binary", "4class"])
def trained(request):
    """(n_classes, TrainedHead, held-out x, held-out y, batch counter, train args)."""
    k = request.param
    x, y = blobs(120, k, seed=0)
    xv, yv = blobs(40, k, seed=1)
    xt, yt = blobs(80, k, seed=2)
    counter = BatchCounter()
    args = dict(n_classes=k, epochs=EPOCHS, seed=0, **FAST)
    result = heads.train_head(x, y, xv, yv, callbacks=[counter], **args)
    return k, result, xt, yt, counter, (x, y, xv, yv, args)


def test_learns_separable_problem(trained):
    k, result, xt, yt, _, _ = trained
    assert (result.predict(xt) == yt).mean() > 0.9
    assert result.history["val_accuracy"][-1] > 0.9


def test_history_and_timings(trained):
    _, result, _, _, _, _ = trained
    assert set(result.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == EPOCHS for v in result.history.values())
    assert len(result.epoch_seconds) == EPOCHS
    assert result.seconds >= sum(result.epoch_seconds) * 0.99
    assert 0 < result.step_seconds < result.seconds
    assert result.settings["steps_per_epoch"] == 10 and result.settings["batch_size"] == 10
    assert (result.settings["class_weight"], result.settings["restore_best"], result.settings["best_epoch"]) == (
        "none", None, None)  # the seed's: unweighted, the last epoch's weights


def test_params_match_the_model(trained):
    k, result, _, _, _, _ = trained
    assert result.params == heads.count_params(result.model)
    flat = math.prod(SHAPE)
    bn = 4 * SHAPE[-1]
    dense = flat * UNITS + UNITS + (UNITS + 1) * heads.output_units(k)
    assert result.params["total"] == bn + dense
    assert result.params["non_trainable"] == 2 * SHAPE[-1]  # BN moving mean and variance


def test_steps_per_epoch_counts_batches(trained):
    k, _, _, _, counter, _ = trained
    assert counter.per_epoch == [10] * EPOCHS
    assert counter.val_batches == [4] * EPOCHS  # validation_steps=None: all 40 in batches of 10


def test_steps_per_epoch_none_is_one_pass():
    x, y = blobs(45, 2, seed=0)
    xv, yv = blobs(30, 2, seed=1)
    counter = BatchCounter()
    # float16, as the feature store keeps them: cast batch by batch, never as a whole.
    result = heads.train_head(x.astype("float16"), y, xv.astype("float16"), yv, n_classes=2, epochs=2,
                              steps_per_epoch=None, batch_size=10, validation_steps=2,
                              callbacks=[counter], **FAST)
    assert counter.per_epoch == [5, 5]  # ceil(45 / 10)
    assert counter.val_batches == [2, 2]
    assert len(result.history["val_loss"]) == 2
    assert result.predict_proba(xv.astype("float16")).shape == (30, 2)


def test_batches_cast_per_batch_and_read_rows_in_order():
    x = np.arange(20, dtype="float16").reshape(20, 1)
    y = np.arange(20)
    xb, yb = next(heads._batches(x, y, 5, seed=0))
    assert xb.dtype == np.float32 and xb.shape == (5, 1)
    assert list(yb) == sorted(yb) and np.array_equal(xb[:, 0], yb)


def test_balanced_weights_are_sklearns_and_ride_in_the_batches():
    from sklearn.utils.class_weight import compute_sample_weight

    y = np.r_[np.zeros(30, int), np.ones(6, int), np.full(12, 3)]  # class 2 absent, as it may be from a split
    x = np.arange(len(y), dtype="float32").reshape(-1, 1)
    assert heads._sample_weights(y, "none") is None
    weights = heads._sample_weights(y, "balanced")
    np.testing.assert_allclose(weights, compute_sample_weight("balanced", y), rtol=1e-6)
    assert weights.dtype == np.float32 and weights.mean() == pytest.approx(1.0)
    plain, weighted = heads._batches(x, y, 8, seed=0), heads._batches(x, y, 8, seed=0, sample_weight=weights)
    for _ in range(12):  # two passes: the same rows in the same batches, with each row's weight
        (xa, ya), (xb, yb, wb) = next(plain), next(weighted)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(wb, weights[xb[:, 0].astype(int)])


class WeightsPerEpoch(keras.callbacks.Callback):
    """The model's weights at every epoch end."""

    def on_train_begin(self, logs=None):
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def test_restore_best_keeps_the_best_epochs_weights():
    x, y = blobs(60, 2, seed=0)
    xv, yv = blobs(20, 2, seed=1)
    recorder = WeightsPerEpoch()
    # validation labels flipped: the better the head learns, the worse its val_loss, so epoch 1 is the best
    result = heads.train_head(x, y, xv, 1 - yv, n_classes=2, epochs=4, steps_per_epoch=3, seed=0,
                              restore_best="val_loss", callbacks=[recorder], **FAST)
    assert len(result.history["val_loss"]) == 4  # the history still has every epoch
    assert result.settings["best_epoch"] == int(np.argmin(result.history["val_loss"])) + 1 == 1
    assert result.settings["restore_best"] == "val_loss"
    restored = result.model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(restored, recorder.weights[0]))
    assert not all(np.array_equal(a, b) for a, b in zip(restored, recorder.weights[-1]))


@pytest.mark.parametrize("n,batch", [(45, 10), (23, 10), (12, 5), (7, 7)])
def test_batch_stream_is_a_continuing_reshuffled_stream(n, batch):
    stream = heads._batch_stream(n, batch, np.random.default_rng(0))
    batches = [next(stream) for _ in range(4 * n)]  # 4 * batch passes
    assert all(len(b) == batch and len(set(b)) == batch for b in batches)
    flat = np.concatenate(batches)
    passes = flat[: len(flat) // n * n].reshape(-1, n)
    assert all(sorted(p) == list(range(n)) for p in passes)  # each pass: every sample once
    assert len({tuple(p) for p in passes}) > 1  # reshuffled between passes


def test_same_seed_same_result_different_seed_different(trained):
    k, result, _, _, _, (x, y, xv, yv, args) = trained
    if k == 2:
        pytest.skip("checked on the 4-class head only, to keep the file fast")
    again = heads.train_head(x, y, xv, yv, **args)
    assert weights_equal(result, again)
    assert again.history == result.history
    other = heads.train_head(x, y, xv, yv, **{**args, "seed": 1})
    assert not weights_equal(result, other)


@pytest.mark.slow
def test_jit_compile_is_deterministic_and_resolved():
    x, y = blobs(40, 4, seed=0)
    runs = [heads.train_head(x, y, x, y, n_classes=4, epochs=2, steps_per_epoch=3, units=UNITS)
            for _ in range(2)]
    assert runs[0].settings["jit_compile"] is heads.resolve_jit_compile("auto")
    assert weights_equal(*runs)
    assert runs[0].history == runs[1].history


def test_predict_proba_and_embed(trained):
    k, result, xt, _, _, _ = trained
    p = result.predict_proba(xt)
    assert p.shape == (len(xt), k)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert (p >= 0).all() and (p <= 1).all()
    if k == 2:
        raw = result.model.predict(xt, batch_size=256, verbose=0)[:, 0]
        np.testing.assert_array_equal(p[:, 1], raw)
        np.testing.assert_allclose(p[:, 0], 1 - raw, atol=1e-7)
    e = result.embed(xt)
    assert e.shape == (len(xt), UNITS)
    assert (e >= 0).all()  # post-ReLU


def test_save_load_round_trip(trained, tmp_path):
    k, result, xt, _, _, _ = trained
    path = result.save(tmp_path / f"head{k}.keras")
    loaded = heads.load_head(path)
    np.testing.assert_array_equal(loaded.predict_proba(xt), result.predict_proba(xt))
    np.testing.assert_array_equal(loaded.embed(xt), result.embed(xt))
    assert loaded.params == result.params
    assert loaded.n_classes == k
    with pytest.raises(ValueError, match=r"\.keras"):
        result.save(tmp_path / "head.h5")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_classes": 1}, "n_classes"),
        ({"n_classes": 2, "epochs": 0}, "epochs"),
        ({"n_classes": 2, "steps_per_epoch": 0}, "steps_per_epoch"),
        ({"n_classes": 2, "y": [0, 1, 2, 0]}, r"labels must lie in \[0, 1\]"),
        ({"n_classes": 2, "y": [0, 1]}, "shape"),
        ({"n_classes": 2, "x_val": np.zeros((2, *SHAPE), "float32")}, "together"),
        ({"n_classes": 2, "class_weight": "auto"},
         r"^The 'class_weight' parameter of train_head must be one of \{'none', 'balanced'\}\. Got 'auto' instead\.$"),
        ({"n_classes": 2, "restore_best": "loss"}, r"^The 'restore_best' parameter of train_head must be one of "
         r"\{'val_loss', 'val_accuracy'\} or None\. Got 'loss' instead\.$"),
        ({"n_classes": 2, "restore_best": "val_accuracy"}, "validation score: pass x_val and y_val"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, match):
    kwargs = dict(kwargs)
    x = kwargs.pop("x", np.zeros((4, *SHAPE), "float32"))
    y = np.asarray(kwargs.pop("y", [0, 1, 0, 1]))
    x_val = kwargs.pop("x_val", None)
    with pytest.raises(ValueError, match=match):
        heads.train_head(x, y, x_val, None, **kwargs)


class RaiseAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        raise RuntimeError("stop here")


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
def test_leaves_the_global_random_state_as_it_found_it(fails):
    x, y = blobs(20, 2, seed=0)
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    args = dict(n_classes=2, epochs=1, steps_per_epoch=1, seed=0, **FAST)
    if fails:
        with pytest.raises(RuntimeError, match="stop here"):
            heads.train_head(x, y, callbacks=[RaiseAtStart()], **args)
    else:
        heads.train_head(x, y, **args)
    assert (random.random(), np.random.random()) == expected  # set_random_seed(0) would give other draws


@pytest.mark.parametrize(
    "n,batch_size,steps_per_epoch,expected",
    [(45, 10, 10, (10, 10)), (45, 10, None, (10, 5)), (7, 10, None, (7, 1)), (7, 10, 3, (7, 3))],
)
def test_batch_and_steps(n, batch_size, steps_per_epoch, expected):
    assert heads._batch_and_steps(n, batch_size, steps_per_epoch) == expected


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="on jax the check passes (tests/test_heads_jax.py)")
def test_jax_loop_check_names_the_backend():
    from xrayfeat.models import head_jax as heads_jax

    model = heads.build_head(SHAPE, 2, units=UNITS)
    batch = (np.zeros((2, *SHAPE), "float32"), np.zeros((2, 1), "float32"))
    assert heads_jax.missing_internals(model, batch) == [f"the Keras backend is {keras.backend.backend()}, not jax"]


def test_jax_loop_and_devices_import_no_framework():
    code = (
        "import sys; import xrayfeat.models.head_jax, xrayfeat.devices; "
        "print(sorted(m for m in ('keras', 'jax', 'tensorflow', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- train-tail


def _tail_case(name: str, size: int, layer: str, batchnorm: int):
    from xrayfeat import backbones
    from xrayfeat.extraction import building, weights

    spec = backbones.get_spec(name)
    tail = building.build_tail(spec, weights.WeightsInfo("none", seed=0), image_size=size, layer=layer)
    before = [w.copy() for w in tail.get_weights()]
    shape = tuple(tail.input_shape[1:])
    x, y = blobs(30, 2, seed=0, shape=shape)
    x = np.maximum(x, 0)  # cut-point activations are post-ReLU
    result = heads.train_head(x, y, x[:10], y[:10], n_classes=2, epochs=2, steps_per_epoch=2,
                              tail=tail, **FAST)
    after = tail.get_weights()
    names = [w.path for w in tail.weights]
    changed = {n for n, a, b in zip(names, before, after) if not np.array_equal(a, b)}
    kernels = [n for n in names if n.endswith("kernel")]
    assert kernels and set(kernels) <= changed  # every conv kernel of the tail trained

    bn_layers = [l for l in tail.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bn_layers) == batchnorm
    for layer in bn_layers:  # frozen: inference mode, statistics untouched
        assert not layer.trainable
        assert not any(w.path in changed for w in layer.weights)

    tail_params = heads.count_params(tail)
    assert result.params["tail"] == tail_params
    assert tail_params["total"] > 0 and tail_params["trainable"] > 0
    assert tail_params["non_trainable"] == sum(int(np.prod(w.shape)) for l in bn_layers for w in l.weights)
    assert result.params["total"] == heads.count_params(result.model)["total"]
    assert result.params["trainable"] > tail_params["trainable"]
    return result, x


def test_train_tail_vgg16(tmp_path):
    result, x = _tail_case("vgg16", 32, "block4_pool", batchnorm=0)
    assert result.settings["tail"] == "vgg16_tail"
    loaded = heads.load_head(result.save(tmp_path / "tail.keras"))
    np.testing.assert_allclose(loaded.predict_proba(x), result.predict_proba(x), rtol=1e-5, atol=1e-6)
    assert loaded.params == result.params


@pytest.mark.slow
def test_train_tail_inception_v3(tmp_path):
    result, x = _tail_case("inception_v3", 75, "mixed9", batchnorm=9)
    loaded = heads.load_head(result.save(tmp_path / "tail.keras"))
    np.testing.assert_allclose(loaded.predict_proba(x), result.predict_proba(x), rtol=1e-5, atol=1e-6)
    assert loaded.params == result.params  # frozen BatchNormalization stays frozen
