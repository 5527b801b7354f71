"""Grad-CAM from cached maps: equal to Grad-CAM through the whole model, and ``explain`` on new and cached images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import xrayfeat as xf
from tests.conftest import write_tiny_dataset
from xrayfeat.cli.main import main
from xrayfeat.analysis.gradcam import choose_examples, example_grid, grad_cam

pytestmark = pytest.mark.slow

#: float16 keeps 11 significant bits: a stored value is within 2**-11 of the computed one, relatively.
FLOAT16_REL = 2.0 ** -11


def invoke(*args):
    """``xrayfeat ARGS`` in this process (the run's features and Keras are already loaded here)."""
    from click.testing import CliRunner

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny binary run (VGG16, random weights, 64 px, cut at block4_pool: 4×4 maps), its data and head arrays."""
    root = tmp_path_factory.mktemp("explain")
    data = write_tiny_dataset(root / "data")
    run = xf.fit_head(data, "vgg16", weights="none", image_size=64, layer="vgg16:block4_pool", epochs=2,
                      steps_per_epoch=3, units=32, baselines=(), n_bootstrap=0, head_backend="tensorflow",
                      cache_dir=root / "cache", out=root / "run")
    with np.load(run.path / "head.npz") as arrays:
        head = {name: arrays[name] for name in arrays.files}
    return run, data, head


def _head_logits_model(head_model):
    """The head up to its output layer's pre-activation (the Grad-CAM class score), as a Keras model."""
    import keras

    out = head_model.get_layer("head_output")
    x = head_model.inputs[0]
    for name in ("head_bn", "head_flatten", "head_dense"):  # Dropout is the identity at inference
        x = head_model.get_layer(name)(x)
    logits = keras.layers.Dense(out.units, name="logits")(x)
    model = keras.Model(head_model.inputs, logits)
    model.get_layer("logits").set_weights(out.get_weights())
    return model


def _score(logits, target: int, *, binary: bool):
    """The class score: the logit (a sigmoid head's one logit for class 1, minus it for class 0)."""
    return (logits[:, 0] if target == 1 else -logits[:, 0]) if binary else logits[:, target]


def _cam(spatial, grads):
    """Grad-CAM from a map and the gradient of the score with respect to it: (cam, channel weights)."""
    import tensorflow as tf

    weights = tf.reduce_mean(grads, axis=(1, 2))
    return tf.nn.relu(tf.einsum("nhwc,nc->nhw", spatial, weights)).numpy(), weights.numpy()


@pytest.mark.parametrize("n_classes", [2, 4])
def test_analytic_gradient_equals_autodiff_on_the_head(tmp_path, n_classes):
    import tensorflow as tf

    from tests.test_head_numpy import trained_like_head
    from xrayfeat.models import head_numpy

    model = trained_like_head(n_classes, shape=(3, 3, 16))
    head = head_numpy.arrays_of(model)
    logits = _head_logits_model(model)
    x = np.random.default_rng(2).normal(0, 3, (20, 3, 3, 16)).astype(np.float32)
    for target in range(n_classes):
        ours = grad_cam(x, head, target)
        spatial = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(spatial)
            score = _score(logits(spatial), target, binary=n_classes == 2)
        cam, weights = _cam(spatial, tape.gradient(score, spatial))
        np.testing.assert_allclose(ours.weights, weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours.maps, cam, rtol=1e-5, atol=1e-5)
        assert (ours.target == target).all()
    head_numpy.save(model, tmp_path / "head.npz")
    np.testing.assert_allclose(ours.proba, head_numpy.NumpyHead(tmp_path / "head.npz").predict_proba(x), atol=1e-6)


def test_grad_cam_from_the_cache_equals_grad_cam_through_backbone_and_head(trained):
    """From the decoded X-ray through VGG16 to block4_pool and the head, gradients by GradientTape at that layer.

    The cached map is the float32 map rounded to float16: each value within
    ``2**-11`` of itself (``2**-25`` absolute below float16's normal range). The
    head's gradient with respect to the map depends on the map only through which
    hidden units are active, so the channel weights agree to float32 rounding.
    Each map value ``sum_c w_c A_c`` then differs by at most
    ``sum_c |dw_c| |A_c| + sum_c |w_c| |dA_c|``, plus float32 summation slack
    (ReLU cannot enlarge a difference): that is the tolerance, per value.
    """
    import keras
    import tensorflow as tf

    from xrayfeat.backbones import get_spec
    from xrayfeat.extraction.building import build_extractor
    from xrayfeat.extraction.config import resolve
    from xrayfeat.data.images import read_image
    from xrayfeat.runs.prediction import run_feature_options
    from xrayfeat.store.feature_store import FeatureStore

    run, data, head = trained
    fingerprint = run.record.store["fingerprint"]
    config = resolve(run_feature_options(run), "cpu")
    extractor, _ = build_extractor(get_spec("vgg16"), config.weights, image_size=fingerprint["image_size"],
                                   layer=fingerprint["layer"], precision="float32")
    pixels = keras.Input(extractor.inputs[0].shape[1:], dtype="uint8")
    spatial = extractor(pixels)[0]
    whole = keras.Model(pixels, [spatial, _head_logits_model(run.head().model)(spatial)])

    table = run.predictions()
    images = np.stack([read_image(data / p, fingerprint["image_size"]) for p in table.path])
    cached = FeatureStore.at(run.record.store["path"]).read(list(table.sha256), ("spatial",))["spatial"]
    peaks = []
    for target in (0, 1):
        with tf.GradientTape() as tape:
            spatial, logits = whole(images)
            score = _score(logits, target, binary=True)
        cam, weights = _cam(spatial, tape.gradient(score, spatial))
        a32 = spatial.numpy()
        assert cam.shape == (6, 4, 4)
        np.testing.assert_allclose(cached, a32, rtol=FLOAT16_REL, atol=2.0 ** -24)  # the same image, the same map
        ours = grad_cam(cached, head, target)
        np.testing.assert_allclose(ours.weights, weights, rtol=1e-4, atol=1e-7)
        a, w = np.abs(a32), np.abs(weights)
        bound = (np.einsum("nhwc,nc->nhw", a, np.abs(ours.weights - weights))
                 + np.einsum("nhwc,nc->nhw", FLOAT16_REL * a + 2.0 ** -25, w)
                 + 1e-6 * np.einsum("nhwc,nc->nhw", a, w))
        assert (np.abs(ours.maps - cam) <= bound).all()
        peaks.append(cam.max() / bound.max())
    assert max(peaks) > 10  # a map, not noise, was compared (one class's map may be zero everywhere)


def test_explain_uses_the_cache_and_extracts_only_new_images(trained, tmp_path, monkeypatch):
    from xrayfeat.extraction import pipeline as extraction

    run, data, _ = trained

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was built for images already in the cache")

    with monkeypatch.context() as patch:
        patch.setattr(extraction, "_build", no_backbone)
        cached = xf.explain(run.path, data / "test", tmp_path / "cached")
    assert cached.extracted == 0 and cached.reused == 6
    expected = run.predictions().set_index("sha256")
    for row in cached.rows:
        p = expected.loc[row["sha256"], [f"head:{c}" for c in run.classes]].to_numpy(float)
        assert row["predicted"] == row["explained"] == run.classes[int(p.argmax())]
        assert row["probability"] == pytest.approx(p.max(), abs=1e-5)

    new = write_tiny_dataset(tmp_path / "new", seed=5, per_split=(("x", 1),)) / "x" / "b" / "b_x_0.png"
    fresh = run.explain([new, data / "test" / "a"], tmp_path / "fresh")
    assert (fresh.extracted, fresh.reused) == (1, 3)
    with np.load(tmp_path / "fresh" / "b_x_0.npz") as saved:
        assert saved["cam"].shape == fresh.map_size == (4, 4)
        assert str(saved["layer"]) == "vgg16:block4_pool"


def test_cli_writes_an_overlay_and_a_map_per_image_and_class_picks_the_map(trained, tmp_path):
    run, data, _ = trained
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(data / "train" / "b" / "b_train_0.png", other / "a_test_0.png")  # a stem that collides
    out = tmp_path / "out"
    proc = invoke("explain", run.path, data / "test", other, "--out", out, "--class", "a", "--json")
    assert proc.exit_code == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["images"], result["extracted"], result["map"]) == (7, 0, [4, 4])
    stems = sorted(p.stem for p in out.glob("*.png"))
    assert stems == sorted(p.stem for p in out.glob("*.npz")) and len(stems) == 7 and "a_test_0-2" in stems
    assert {row["explained"] for row in result["explained"]} == {"a"}
    assert (out / "explain.csv").read_text().count("\n") == 8

    default = run.explain([data / "test", other], tmp_path / "default")  # each image's predicted class
    for row in default.rows:
        name = Path(row["npz"]).name
        with np.load(out / name) as of_a, np.load(tmp_path / "default" / name) as predicted:
            assert str(of_a["explained"]) == "a" and str(predicted["explained"]) == row["predicted"]
            np.testing.assert_allclose(of_a["probabilities"], predicted["probabilities"])
            if row["predicted"] == "b":  # a sigmoid head: class a's score is minus class b's, so are its weights
                np.testing.assert_allclose(of_a["channel_weights"], -predicted["channel_weights"], rtol=1e-5)
                assert (np.minimum(of_a["cam"], predicted["cam"]) < 1e-6).all() and predicted["cam"].max() > 1e-3
            else:
                np.testing.assert_array_equal(of_a["cam"], predicted["cam"])


def test_an_unknown_class_or_a_tail_head_is_refused_in_one_line(trained, tmp_path):
    run, data, _ = trained
    proc = invoke("explain", run.path, data / "test", "--out", tmp_path / "out", "--class", "zebra")
    assert proc.exit_code == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'zebra' is not a class of" in lines[0] and lines[0].endswith("a, b")
    assert not (tmp_path / "out").exists()

    shutil.copytree(run.path, tmp_path / "tail")
    record = json.loads((tmp_path / "tail" / "config.json").read_text())
    del record["artifacts"]["head_arrays"]
    record["head"]["train_tail"] = True
    (tmp_path / "tail" / "config.json").write_text(json.dumps(record))
    with pytest.raises(xf.XrayfeatError, match="trained backbone tail .* re-run fit-head without --train-tail"):
        xf.load_run(tmp_path / "tail").explain(data / "test", tmp_path / "out")


def test_choose_examples_is_right_and_wrong_per_class_most_confident_first():
    y = [0, 0, 0, 0, 1, 1, 1, 2]
    proba = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.7, 0.1], [0.9, 0.05, 0.05],
                      [0.1, 0.8, 0.1], [0.5, 0.3, 0.2], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6]])
    assert choose_examples(y, proba, per_class=2) == [([0, 3], [2]), ([4, 6], [5]), ([7], [])]
    assert choose_examples(y, proba, per_class=1) == [([0], [2]), ([4], [5]), ([7], [])]
    with pytest.raises(ValueError, match="'per_class' parameter"):
        choose_examples(y, proba, per_class=0)


def test_example_grid_draws_the_test_images_or_nothing(trained, tmp_path):
    from xrayfeat.store.feature_store import FeatureStore

    run, data, head = trained
    table = run.predictions()
    proba = table[[f"head:{c}" for c in run.classes]].to_numpy(float)
    spatial = FeatureStore.at(run.record.store["path"]).read(list(table.sha256), ("spatial",))["spatial"]
    paths = [data / p for p in table.path]
    out = example_grid(paths, spatial, head, table.y_true.to_numpy(), proba, run.classes, tmp_path / "grid.png",
                       image_size=64, title="binary · vgg16")
    assert out == tmp_path / "grid.png" and out.stat().st_size > 10_000
    assert example_grid([], spatial[:0], head, [], proba[:0], run.classes, tmp_path / "none.png", image_size=64) is None
    assert not (tmp_path / "none.png").exists()
