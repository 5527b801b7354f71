"""Multi-label models: the seed's head with K sigmoid units and a masked loss, and one-vs-rest baselines.

Tiny synthetic features ((3, 3, 8) maps, 16 units, a few epochs): two co-occurring findings, each
shifting the features along its own direction, with a fifth of the entries masked (uncertain or blank).
The head is trained here (this process' backend, TensorFlow in the suite) and in a jax child process
(head_process, the default on a CPU), whose masks travel through its job folder.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from sklearn.metrics import roc_auc_score  # noqa: E402

from xrayfeat.errors import XrayfeatError  # noqa: E402
from xrayfeat.models import baselines, head_numpy  # noqa: E402
from xrayfeat.models import head as heads  # noqa: E402
from xrayfeat.models import head_process as headproc  # noqa: E402
from xrayfeat.models import multilabel as ml  # noqa: E402
from xrayfeat.options.constraints import OptionError  # noqa: E402

needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")

SHAPE = (3, 3, 8)
K = 2
TRAIN = {"n_classes": K, "multilabel": True, "epochs": 5, "learning_rate": 3e-3, "units": 16, "seed": 0,
         "jit_compile": False if keras.backend.backend() == "tensorflow" else "auto"}


def findings_data(n: int, seed: int, shape=SHAPE):
    """(x, y, mask): finding 1 co-occurs with finding 0 (70 % of the time), each moves x along its own direction."""
    directions = np.random.default_rng(99).normal(size=(2, *shape)).astype("float32") * 1.5
    rng = np.random.default_rng(seed)
    f0 = rng.random(n) < 0.4
    f1 = np.where(rng.random(n) < 0.7, f0, rng.random(n) < 0.3)
    y = np.stack([f0, f1], axis=1).astype("float32")
    x = rng.normal(size=(n, *shape)).astype("float32") + y[:, 0, None, None, None] * directions[0] \
        + y[:, 1, None, None, None] * directions[1]
    mask = rng.random((n, K)) > 0.2
    return x, y, mask


def data():
    x, y, m = findings_data(120, 0)
    xv, yv, mv = findings_data(40, 1)
    xt, yt, mt = findings_data(100, 2)
    return (x, y, m), (xv, yv, mv), (xt, yt, mt)


def aurocs(y, mask, proba):
    return [roc_auc_score(y[mask[:, k], k], proba[mask[:, k], k]) for k in range(y.shape[1])]


@pytest.fixture(scope="module")
def here(tmp_path_factory):
    """(outcome, head file) of a multi-label head trained in this process, restored to its best validation accuracy."""
    (x, y, m), (xv, yv, mv), (xt, _, _) = data()
    head_file = tmp_path_factory.mktemp("here") / "head.keras"
    out = headproc.train_and_predict(headproc.process_backend(), x, y, xv, yv, xt, head_file=head_file,
                                      mask_train=m, mask_val=mv, restore_best="val_accuracy", **TRAIN)
    return out, head_file


def test_the_head_learns_two_cooccurring_findings(here):
    out, head_file = here
    _, _, (_, yt, mt) = data()
    assert out.proba_test.shape == (100, K) and out.proba_val.shape == (40, K)
    assert min(aurocs(yt, mt, out.proba_test)) > 0.85
    assert set(out.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert out.settings["multilabel"] is True and out.settings["best_epoch"] in range(1, 6)
    assert out.history["val_accuracy"][out.settings["best_epoch"] - 1] == max(out.history["val_accuracy"])


def test_saved_head_keras_and_npz_give_its_sigmoid_probabilities(here):
    out, head_file = here
    _, _, (xt, _, _) = data()
    loaded = heads.load_head(head_file)
    assert loaded.multilabel and loaded.n_classes == K
    np.testing.assert_allclose(loaded.predict_proba(xt), out.proba_test, atol=1e-5)
    assert loaded.predict(xt).shape == (100, K)
    arrays = head_numpy.NumpyHead(head_file.with_suffix(".npz"))
    assert arrays.multilabel and arrays.activation == "sigmoid"
    np.testing.assert_allclose(arrays.predict_proba(xt), out.proba_test, atol=1e-5)
    # compiled, too: the masked loss and accuracy are registered Keras objects
    ml.masked_objects()
    model = keras.saving.load_model(str(head_file))
    assert model.loss.name == "masked_binary_crossentropy"


def test_a_masked_entry_changes_nothing_and_its_mask_reaches_the_child(here, tmp_path, monkeypatch):
    """The masked entries' targets flipped, through the child's job folder: the same head, weight for weight."""
    out, head_file = here
    (x, y, m), (xv, yv, mv), (xt, _, _) = data()
    flipped = np.where(m, y, 1 - y)
    flipped_val = np.where(mv, yv, np.nan)  # a masked target may hold anything

    class ChildHere:  # runs the child's entry point in this process: the whole job-folder protocol
        backend = "this process' backend"

        def job_folder(self):
            return tmp_path / "job"

        def run(self, folder):
            return headproc._child_main(folder), ""

        def stop(self):
            pass

    (tmp_path / "job").mkdir()
    monkeypatch.setattr(headproc, "process_backend", lambda: "another backend")
    there = headproc.train_and_predict("jax", x, flipped, xv, flipped_val, xt, head_file=tmp_path / "c.keras",
                                       child=ChildHere(), mask_train=m, mask_val=mv, restore_best="val_accuracy",
                                       **TRAIN)
    assert {"mask_train.npy", "mask_val.npy"} <= {p.name for p in (tmp_path / "job").iterdir()}
    assert there.history == out.history
    a, b = heads.load_head(head_file).model.get_weights(), heads.load_head(tmp_path / "c.keras").model.get_weights()
    assert all(np.array_equal(u, v) for u, v in zip(a, b))

    # an entry that counts does change the head
    i = int(np.flatnonzero(m[:, 0])[0])
    changed = y.copy()
    changed[i, 0] = 1 - changed[i, 0]
    other = heads.train_head(x, changed, xv, yv, mask_train=m, mask_val=mv, restore_best="val_accuracy", **TRAIN)
    assert not all(np.array_equal(u, v) for u, v in zip(a, other.model.get_weights()))


def test_the_masked_loss_and_accuracy_count_only_the_entries_that_count():
    loss_class, accuracy_class = ml.masked_objects()
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, (6, 3)).astype("float32")
    y = (rng.random((6, 3)) < 0.5).astype("float32")
    mask = rng.random((6, 3)) < 0.6
    w = np.where(mask, rng.uniform(0.5, 2, (6, 3)), 0).astype("float32")
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    expected = (w * bce).sum() / mask.sum()
    y_true = np.concatenate([y, w], axis=1)
    y_other = np.concatenate([np.where(mask, y, 1 - y), w], axis=1)  # masked targets flipped, not zeroed
    for target in (y_true, y_other):
        assert float(loss_class()(target, p)) == pytest.approx(expected, rel=1e-5)
    accuracy = accuracy_class()
    accuracy.update_state(y_other, p)
    assert float(accuracy.result()) == pytest.approx(((p > 0.5) == (y == 1))[mask].mean(), rel=1e-6)
    assert float(loss_class()(np.zeros((2, 6), "float32"), p[:2])) == 0.0  # nothing counts: 0, not NaN


def test_balanced_weights_balance_each_finding_over_its_counted_entries():
    y = np.array([[1, 0], [0, 0], [0, 1], [0, 1], [1, 0]], dtype="float32")
    mask = np.array([[1, 1], [1, 1], [1, 1], [1, 1], [0, 0]], dtype=bool)
    w = ml.balanced_weights(y, mask)
    # finding 0: 1 positive, 3 negatives counted -> 4 / 2 and 4 / 6; finding 1: 2 and 2 -> 1 and 1
    np.testing.assert_allclose(w[:, 0], [2, 2 / 3, 2 / 3, 2 / 3, 0], rtol=1e-6)
    np.testing.assert_allclose(w[:, 1], [1, 1, 1, 1, 0])
    one_class = ml.balanced_weights(np.zeros((3, 1)), np.ones((3, 1), bool))
    np.testing.assert_array_equal(one_class, 1)


def test_a_one_finding_head_keeps_its_one_column(tmp_path):
    model = heads.build_head(SHAPE, 1, units=8, multilabel=True)
    assert head_numpy.save(model, tmp_path / "head.npz")
    x = np.random.default_rng(0).normal(size=(5, *SHAPE)).astype("float32")
    p = head_numpy.NumpyHead(tmp_path / "head.npz").predict_proba(x)
    assert p.shape == (5, 1)
    np.testing.assert_allclose(p, np.asarray(model.predict(x, verbose=0)), atol=1e-6)
    assert heads.TrainedHead(model).predict_proba(x).shape == (5, 1)


@pytest.mark.parametrize("call, message", [
    (lambda x, y, m: heads.train_head(x, y[:, 0], n_classes=2, mask_train=m), "mask_train mask the entries"),
    (lambda x, y, m: heads.train_head(x, y[:, :1], **TRAIN), r"must have shape \(n, 2\)"),
    (lambda x, y, m: heads.train_head(x, y + 1, **TRAIN), "must be 0 or 1 where the mask is True"),
    (lambda x, y, m: heads.train_head(x, y, mask_train=m.astype(int), **TRAIN), "must be a bool array"),
    (lambda x, y, m: headproc.train_and_predict("tensorflow", x, y[:, 0], None, None, x, head_file="h.keras",
                                                mask_train=m, n_classes=2), "pass multilabel=True"),
])
def test_refusals_are_one_line(call, message):
    x, y, m = findings_data(20, 0)
    with pytest.raises((ValueError, XrayfeatError), match=message):
        call(x, y, m)


def test_single_label_n_classes_is_refused_as_before():
    with pytest.raises(OptionError, match=r"^The 'n_classes' parameter of train_head must be an int in \[2, inf\]\. "
                                          r"Got 1 instead\.$"):
        heads.train_head(np.zeros((4, 2)), np.zeros(4), n_classes=1)


# --------------------------------------------------------------------------- baselines


def test_one_vs_rest_baselines_give_each_findings_probability(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    y = np.zeros((n, 4), dtype="float32")
    y[:, 0] = rng.random(n) < 0.5
    y[:, 1] = np.where(rng.random(n) < 0.7, y[:, 0], rng.random(n) < 0.5)
    y[:, 3] = np.arange(n) == 7  # one positive: cannot be cross-validated
    x = rng.normal(size=(n, 5)) + 2.5 * y[:, :2] @ rng.normal(size=(2, 5))
    mask = rng.random((n, 4)) > 0.2
    mask[7, 3] = True
    y[~mask] = np.nan  # a masked target may hold anything
    groups = np.arange(n) // 2  # two images per patient
    fitted, samples = baselines.fit_baselines(["logreg"], pooled_train=x, y_train=y, groups=groups, multilabel=True,
                                              mask=mask)
    model = fitted["logreg"]
    assert isinstance(model, baselines.MultiLabelBaseline) and samples == []
    proba = model.predict_proba(x)
    assert proba.shape == (n, 4) and baselines.columns_for(model, proba, 4).shape == (n, 4)
    assert min(aurocs(np.nan_to_num(y[:, :2]), mask[:, :2], proba[:, :2])) > 0.8
    np.testing.assert_array_equal(proba[:, 2], 0.0)  # every counted row negative: its prevalence
    np.testing.assert_allclose(proba[:, 3], 1 / mask[:, 3].sum())
    summary = model.summary()
    assert [f["constant"] for f in summary["findings"]] == [False, False, True, True]
    assert "negative" in summary["findings"][2]["reason"] and "Cannot cross-validate" in summary["findings"][3]["reason"]
    assert summary["findings"][0]["rows"] == mask[:, 0].sum() and summary["findings"][0]["n_splits"] >= 2
    digest = baselines.save_baseline(model, tmp_path / "logreg.joblib")
    np.testing.assert_array_equal(baselines.load_baseline(tmp_path / "logreg.joblib", digest).predict_proba(x), proba)


def test_a_subsample_of_findings_stays_within_the_budget():
    rng = np.random.default_rng(0)
    y = (rng.random((500, 3)) < 0.3).astype("float32")
    mask = rng.random((500, 3)) > 0.1
    rows = baselines.sample_rows(y, 10, 8 * 10 * 100, seed=0, mask=mask)
    assert len(rows) <= 100 and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, baselines.sample_rows(y, 10, 8 * 10 * 100, seed=0, mask=mask))
    many = (rng.random((500, 12)) < 0.5).astype("float32")  # more label sets than 2 rows each would fit
    rows = baselines.sample_rows(many, 10, 8 * 10 * 50, seed=0)
    assert len(rows) == 50 and len(np.unique(rows)) == 50
    assert baselines.sample_rows(y, 10, 8 * 10 * 500, seed=0, mask=mask) is None
    with pytest.raises(XrayfeatError, match="needs at least 4"):
        baselines.sample_rows(y, 10, 8 * 10 * 3, seed=0, mask=mask)


def test_a_mask_without_multilabel_is_refused():
    x, y = np.zeros((10, 3)), np.arange(10) % 2
    with pytest.raises(XrayfeatError, match="pass multilabel=True"):
        baselines.fit_baselines(["logreg"], pooled_train=x, y_train=y, mask=np.ones((10, 1), bool))
