"""The fused training step (xrayfeat/models/head_fused.py) against Keras' own step, and its checked fallback.

What is compared: the same head (seed, batches, dropout masks drawn by the
Dropout layer's own seed generator) trained by Keras' jitted ``train_step``
(``step="keras"``) and by the fused step (``step="fused"``): every epoch's
loss, accuracy, validation loss and accuracy, every variable (BatchNormalization's
moving statistics included), Adam's moments and step count, and the predicted
probabilities. The two compute the same float32 formulas and differ only in the
order of float32 additions (the kernel's rank-B gradient and its input
gradient, the forward product in chunks, the L2 sum in float64), so the
tolerance is float32's, scaled by what those orders can move:

- short runs on small random heads (this file's fast tests): a relative
  difference of 1e-4 of each array's scale, ~1000 float32 ulps (2^-23 ≈ 1.2e-7)
  after ~10-30 Adam steps, where a step moves a weight by up to the learning
  rate (1e-3) and a rounding flip in the sign of a tiny gradient moves it by
  that much;
- 100 epochs on the shared sample (``heavy``): float32 rounding alone moves a
  1,000-step training far (it is chaotic: a ReLU or a dropout-scaled unit flips
  on a last bit, and the runs part), so the tolerance there is measured in the
  same test: three fused runs that differ only in the order of one float32 sum
  spread by some amount per quantity, and Keras' step must lie within 4 times
  that spread of them; after one epoch they still agree to 1e-4.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None or importlib.util.find_spec("numba") is None,
    reason="jax and numba are needed: the fused step trains on the jax backend with a numba kernel",
)

CHILD_PRELUDE = textwrap.dedent(
    """
    import json, logging, sys
    import numpy as np
    from xrayfeat.models import fused_kernel, head as heads

    def arrays(trained):
        opt = trained.model.optimizer
        return {
            "history": trained.history, "loop": trained.settings["loop"],
            "weights": [w.tolist() for w in trained.model.get_weights()],
            "optimizer": {v.path.split("/", 1)[-1]: np.asarray(v.numpy()).tolist() for v in opt.variables},
        }
    """
)

FAST_CHILD = CHILD_PRELUDE + textwrap.dedent(
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3, 3, 16)).astype("float32")
    xv = rng.normal(size=(25, 3, 3, 16)).astype("float32")
    common = dict(epochs=3, batch_size=10, steps_per_epoch=4, units=24, seed=5)
    cases = {
        "binary": dict(y=np.arange(60) % 2, yv=np.arange(25) % 2, n_classes=2, validation_steps=2),
        "four": dict(y=np.arange(60) % 4, yv=np.arange(25) % 4, n_classes=4),
        "four-weighted-best": dict(y=np.minimum(np.arange(60) % 5, 3), yv=np.arange(25) % 4, n_classes=4,
                                   class_weight="balanced", restore_best="val_loss"),
    }
    ym = (rng.random((60, 3)) < 0.4).astype("float32"); ymv = (rng.random((25, 3)) < 0.4).astype("float32")
    mask = rng.random((60, 3)) < 0.8; maskv = rng.random((25, 3)) < 0.8
    cases["multilabel-masked"] = dict(y=ym, yv=ymv, n_classes=3, multilabel=True, mask_train=mask, mask_val=maskv)
    out = {}
    for name, case in cases.items():
        y, yv = case.pop("y"), case.pop("yv")
        runs = {}
        for step in ("keras", "fused"):
            trained = heads.train_head(x, y, xv, yv, step=step, **common, **case)
            runs[step] = {**arrays(trained), "proba": trained.predict_proba(xv).tolist(),
                          "best_epoch": trained.settings["best_epoch"]}
        out[name] = runs

    # the kernel gives the same result whatever the number of threads (blocks are summed in one order)
    import numba
    w0 = rng.normal(size=(200, 24)).astype("float32"); xn = rng.normal(size=(10, 200)).astype("float32")
    dz = rng.normal(size=(10, 24)).astype("float32")
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
        z, xt = fused_kernel.forward(xn, w)
        dx, ss = fused_kernel.step(xt, dz, w, m, v, l2=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                                   alpha=fused_kernel.adam_alpha(1e-3, 0.9, 0.999, 1))
        results.append([z, dx, w, m, v, ss])
    out["threads_identical"] = all(np.array_equal(a, b) for a, b in zip(*results))

    # forced fallback: the start-up check reports a problem -> one notice, Keras' step trains, same results as keras
    notices = []
    class Notices(logging.Handler):
        def emit(self, record):
            notices.append(record.getMessage())
    logging.getLogger("xrayfeat").addHandler(Notices(logging.WARNING))
    real_check = fused_kernel.check_kernel
    fused_kernel.check_kernel = lambda: "numba is not installed (pip install numba)"
    y4 = np.arange(60) % 4
    fallback = heads.train_head(x, y4, xv, np.arange(25) % 4, n_classes=4, **common)
    try:
        heads.train_head(x, y4, n_classes=4, step="fused", **common)
        refused = None
    except ValueError as exc:
        refused = str(exc)
    fused_kernel.check_kernel = real_check
    out["fallback"] = {"loop": fallback.settings["loop"], "notices": notices, "refused": refused,
                       "history": fallback.history}

    # seeding without importing TensorFlow (the head's jax child never needs it) builds the same head as Keras' call
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    import keras
    heads.seed_everything(7)
    ours = heads.build_head((3, 3, 16), 4, units=24).get_weights()
    keras.utils.set_random_seed(7)
    public = heads.build_head((3, 3, 16), 4, units=24).get_weights()
    out["same_seeding"] = all(np.array_equal(a, b) for a, b in zip(ours, public))
    print(json.dumps(out))
    """
)


def run_child(script: str, *args, timeout: int = 600) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fast():
    return run_child(FAST_CHILD)


def _close(a, b, rel: float) -> bool:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return a.shape == b.shape and float(np.max(np.abs(a - b), initial=0)) <= rel * max(1.0, float(np.max(np.abs(b), initial=0)))


@pytest.mark.parametrize("case", ["binary", "four", "four-weighted-best", "multilabel-masked"])
def test_the_fused_step_trains_as_keras_step_does(fast, case):
    keras_run, fused = fast[case]["keras"], fast[case]["fused"]
    assert (keras_run["loop"], fused["loop"]) == ("jax", "fused")
    assert set(fused["history"]) == set(keras_run["history"]) and len(fused["history"]["loss"]) == 3
    for key, values in keras_run["history"].items():
        assert _close(fused["history"][key], values, 1e-4), (key, fused["history"][key], values)
    assert len(fused["weights"]) == len(keras_run["weights"]) == 8  # BN 4 (moving statistics too), Dense 2, output 2
    for got, want in zip(fused["weights"], keras_run["weights"]):
        assert _close(got, want, 1e-4)
    assert fused["optimizer"].keys() == keras_run["optimizer"].keys()
    for name, want in keras_run["optimizer"].items():  # Adam's step count and moments are written back
        assert _close(fused["optimizer"][name], want, 1e-4), name
    assert _close(fused["proba"], keras_run["proba"], 1e-4)
    assert fused["best_epoch"] == keras_run["best_epoch"]


def test_the_fused_step_is_not_the_same_run_twice(fast):
    # the comparison above can fail: other labels train another head, far beyond the tolerance
    a, b = fast["four"]["fused"], fast["four-weighted-best"]["fused"]
    assert not _close(a["weights"][4], b["weights"][4], 1e-4)


def test_the_head_is_seeded_as_keras_seeds_it_without_importing_tensorflow(fast):
    assert fast["tensorflow_imported"] is False  # ten heads trained on jax, and TensorFlow never imported
    assert fast["same_seeding"] is True


def test_the_kernel_does_not_depend_on_the_number_of_threads(fast):
    assert fast["threads_identical"] is True


def test_a_failed_start_up_check_falls_back_to_keras_step_with_one_notice(fast):
    fallback = fast["fallback"]
    assert fallback["loop"] == "jax"
    fused_notices = [n for n in fallback["notices"] if "fused training step" in n]
    assert len(fused_notices) == 1 and "numba is not installed" in fused_notices[0]
    assert fallback["history"] == fast["four"]["keras"]["history"]  # Keras' step, bit for bit
    assert fallback["refused"] and "numba is not installed" in fallback["refused"] and "--head-step" in fallback["refused"]


def test_the_kernel_check_passes_and_catches_a_wrong_kernel(monkeypatch):
    from xrayfeat.models import fused_kernel

    assert fused_kernel.check_kernel() is None
    real = fused_kernel.step

    def wrong(x_t, dz, w, m, v, **settings):  # forgets the L2 term: a plausible slip the check must see
        return real(x_t, dz, w, m, v, **{**settings, "l2": 0.0})

    monkeypatch.setattr(fused_kernel, "step", wrong)
    assert "differs from the numpy reference" in fused_kernel.check_kernel()


REAL_CHILD = CHILD_PRELUDE + textwrap.dedent(
    """
    data = np.load(sys.argv[1])
    x, y, xt, yt = data["x"], data["y"], data["xt"], data["yt"]
    seed_settings = dict(n_classes=4, epochs=100, batch_size=10, steps_per_epoch=10, validation_steps=5, seed=0)
    out = {}
    for name, chunks in (("keras", None), ("fused", 32), ("twin-blas", 0), ("twin-7", 7)):
        fused_kernel.CHUNKS = 32 if chunks is None else chunks
        trained = heads.train_head(x, y, xt, yt, step="keras" if chunks is None else "fused", **seed_settings)
        # and one epoch, still in the regime where last-bit differences have not grown: equal to float32's 1e-4
        short = heads.train_head(x, y, xt, yt, step="keras" if chunks is None else "fused", **{**seed_settings, "epochs": 1})
        out[name] = {"loop": trained.settings["loop"], "history": trained.history}
        arrays = {f"weights{i}": w for i, w in enumerate(trained.model.get_weights())}
        arrays.update({f"short{i}": w for i, w in enumerate(short.model.get_weights())})
        np.savez(f"{sys.argv[2]}/{name}.npz", proba=trained.predict_proba(xt), **arrays)  # 52 MB kernels: not JSON
    print(json.dumps(out))
    """
)


def gaps(a: dict, b: dict) -> dict:
    """How far two trainings ended apart: each history curve and the test probabilities, by their mean absolute
    difference."""
    out = {f"history:{k}": float(np.mean(np.abs(np.subtract(a["history"][k], b["history"][k])))) for k in b["history"]}
    out["proba"] = float(np.mean(np.abs(np.subtract(a["proba"], b["proba"]))))
    return out


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.heavy  # four 100-epoch trainings: .ci/run runs it, ./scripts/test.sh leaves it out
def test_over_100_epochs_on_the_shared_sample_keras_step_is_one_of_the_fused_steps_float32_twins(tmp_path, real_sample):
    """Over 1,000 steps float32 rounding alone moves this training far (it is chaotic: a ReLU or a dropped unit
    flips on a last bit, and the runs part). So the 100-epoch tolerance is measured, not assumed: three fused runs
    that differ only in the order of one float32 sum (the forward product in 32 or 7 chunks, or by BLAS) spread
    by some amount; Keras' step must lie within 4 times that spread of them (measured here: 0.6 to 1.9 times) in
    every history curve and in the test probabilities, which may not move by 0.05 on average. The weights are
    compared where the runs have not parted yet, after one epoch (10 steps): to float32's 1e-4 (measured: 2e-6;
    a wrong gradient, L2 term or dropout mask would not be), and BatchNormalization's moving statistics, which
    only the batches decide, after all 100 epochs."""
    import xrayfeat as xf

    x, y, meta = xf.features(real_sample, "inception_v3", part="spatial", weights="none", image_size=224,
                             cache_dir=tmp_path / "cache")
    train = (meta["split"] == "train").to_numpy()
    np.savez(tmp_path / "features.npz", x=x[train], y=y[train], xt=x[~train], yt=y[~train])
    runs = run_child(REAL_CHILD, tmp_path / "features.npz", tmp_path, timeout=2400)
    assert [run["loop"] for run in runs.values()] == ["jax", "fused", "fused", "fused"]
    for name, run in runs.items():
        with np.load(tmp_path / f"{name}.npz") as arrays:
            run["proba"] = arrays["proba"]
            run["weights"] = [arrays[f"weights{i}"] for i in range(8)]
            run["short"] = [arrays[f"short{i}"] for i in range(8)]
    keras_run, family = runs["keras"], [runs["fused"], runs["twin-blas"], runs["twin-7"]]
    for member in family:
        for got, want in zip(member["short"], keras_run["short"]):
            assert _close(got, want, 1e-4)
    for member in family:  # the same batches in the same order, 100 epochs on: BatchNormalization's moving statistics
        for i in (2, 3):
            assert _close(member["weights"][i], keras_run["weights"][i], 1e-5)
    spread = [gaps(a, b) for i, a in enumerate(family) for b in family[i + 1:]]
    to_keras = [gaps(keras_run, member) for member in family]
    assert max(s["proba"] for s in spread) > 0  # the twins did sum in other orders
    floors = {"history:accuracy": 0.01, "history:val_accuracy": 0.01}  # one sample in ten steps' hundred
    for key in spread[0]:
        within = max(s[key] for s in spread)
        median = statistics.median(k[key] for k in to_keras)
        assert median <= 4 * within + floors.get(key, 1e-4), (key, [k[key] for k in to_keras], within)
    assert max(k["proba"] for k in to_keras) <= 0.05
