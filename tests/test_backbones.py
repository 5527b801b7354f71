"""The backbones beyond the seed's two (DenseNet121, ResNet50, EfficientNetB0, ConvNeXtTiny), each against Keras.

Cheap by design: random weights, 32 px (the smallest size Keras allows for each of them), two images, each
model built as few times as the check allows. The seed's VGG16 and InceptionV3 keep their own checks
(tests/test_extract.py, test_fit_tail.py, test_export.py).
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

import xrayfeat as xf
from conftest import run_cli_here, write_tiny_dataset
from xrayfeat.backbones import REGISTRY, SEED_BACKBONES
from xrayfeat.extraction.weights import WeightsInfo
from xrayfeat.options.settings import BACKBONES, backbone_names

NEW = tuple(name for name in REGISTRY if name not in SEED_BACKBONES)
SIZE = 32
#: Each backbone's module in keras.applications: the one whose preprocess_input it must equal.
KERAS_MODULES = {"vgg16": "vgg16", "inception_v3": "inception_v3", "densenet121": "densenet", "resnet50": "resnet",
                 "efficientnet_b0": "efficientnet", "convnext_tiny": "convnext"}


def keras_preprocess(backbone: str, pixels):
    """``keras.applications.<module>.preprocess_input`` of uint8 pixels, as a float32 array."""
    module = importlib.import_module(f"keras.applications.{KERAS_MODULES[backbone]}")
    return module.preprocess_input(np.asarray(pixels).astype("float32"))


def test_the_new_backbones_are_the_issues_four_and_all_names_every_one():
    assert NEW == ("densenet121", "resnet50", "efficientnet_b0", "convnext_tiny")
    assert set(KERAS_MODULES) == set(REGISTRY)
    assert backbone_names("all") == BACKBONES == tuple(REGISTRY)
    assert backbone_names(" ResNet50, densenet121 ,resnet50") == ("resnet50", "densenet121")
    with pytest.raises(Exception, match="'backbone' option must be a comma-separated subset of"):
        backbone_names("vgg16,alexnet")


@pytest.mark.parametrize("backbone", sorted(REGISTRY))
def test_preprocessing_equals_keras_preprocess_input(backbone):
    """On random uint8 pixels, the extractor's layer and the export's portable layers against Keras' own function.

    Both compute in float32 as Keras' NumPy path does (a float32 array, scalar operations in float32), so the
    values agree to one float32 rounding of values below 152 in magnitude (rtol 1e-6, atol 1e-6; on this
    machine they are equal); the export's layers equal the extractor's bit for bit.
    """
    import keras

    from xrayfeat.extraction.building import _preprocess_layer
    from xrayfeat.runs.export import portable_preprocess

    spec = REGISTRY[backbone]
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    got = np.asarray(_preprocess_layer(spec.preprocess)(pixels))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, keras_preprocess(backbone, pixels), rtol=1e-6, atol=1e-6)

    inputs = keras.Input((8, 8, 3), dtype="uint8")
    x = inputs
    for layer in portable_preprocess(spec.preprocess):
        x = layer(x)
    assert np.array_equal(np.asarray(keras.Model(inputs, x)(pixels)), got)


def check_against_keras(backbone, weights, reference, pixels):
    """The extractor cut at the first cut point, and the ``--train-tail`` model after it, against ``reference``.

    ``reference``: Keras' own model with the same weights, fed ``preprocess_input`` of the same uint8 pixels;
    its map at the cut must be the extractor's (spatial and pooled), and the tail fed the extractor's map must
    give the reference's no-top output. float32 throughout: agreement to float32 rounding (rtol 1e-5, and
    1e-6 of the largest value).
    """
    import keras

    from xrayfeat.extraction.building import build_extractor, build_tail

    spec = REGISTRY[backbone]
    assert reference.count_params() == spec.params  # the registry's count, which the report shows, is Keras'
    for name in spec.cut_points:
        reference.get_layer(name)  # every cut point is a layer of Keras' model
    cut = spec.cut_points[0]
    at_cut, final = (np.asarray(a) for a in keras.Model(reference.input, [reference.get_layer(cut).output,
                                                                          reference.output])(keras_preprocess(backbone, pixels)))
    extractor, _ = build_extractor(spec, weights, image_size=SIZE, layer=f"{backbone}:{cut}")
    spatial, pooled = (np.asarray(a) for a in extractor(pixels))
    scale = np.abs(at_cut).max()
    np.testing.assert_allclose(spatial, at_cut, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(pooled, at_cut.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6 * scale)

    tail = build_tail(spec, weights, image_size=SIZE, layer=cut)
    assert tail.trainable_weights and tuple(tail.output.shape) == tuple(reference.output.shape)
    np.testing.assert_allclose(np.asarray(tail(spatial)), final, rtol=1e-5, atol=1e-6 * np.abs(final).max())


def pixels_of(seed):
    return np.random.default_rng(seed).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("backbone", ["resnet50", "convnext_tiny"])
def test_extractor_and_tail_compute_what_keras_computes(backbone):
    """Random weights: Keras' ``<Constructor>(include_top=False, weights=None)`` drawn after the same seed."""
    import keras

    keras.utils.set_random_seed(0)
    reference = getattr(keras.applications, REGISTRY[backbone].constructor)(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    check_against_keras(backbone, WeightsInfo("none", seed=0), reference, pixels_of(3))


def test_efficientnet_with_a_weight_file_computes_what_keras_imagenet_model_computes(tmp_path, monkeypatch):
    """Keras' EfficientNet adds a Rescaling after its input normalization only when it loads ImageNet weights.

    A no-top file written from a random EfficientNetB0 (its normalization holding the ImageNet statistics)
    stands in for the ImageNet file: Keras' own ``weights="imagenet"`` build is pointed at it (its download
    function returns the file), and xrayfeat's extractor and tail with that file must compute the same.
    """
    import h5py
    import keras
    from keras.src.applications import efficientnet
    from keras.src.legacy.saving import legacy_h5_format

    from xrayfeat.extraction.weights import resolve_weights

    spec = REGISTRY["efficientnet_b0"]
    keras.utils.set_random_seed(5)
    source = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    norm = next(layer for layer in source.layers if isinstance(layer, keras.layers.Normalization))
    mean, variance, count = norm.get_weights()
    norm.set_weights([np.array([0.485, 0.456, 0.406], "float32") * np.ones_like(mean),
                      np.array([0.229, 0.224, 0.225], "float32") ** 2 * np.ones_like(variance), count])
    path = tmp_path / spec.weights_file
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    monkeypatch.setattr(efficientnet.file_utils, "get_file", lambda *args, **kwargs: str(path))
    reference = keras.applications.EfficientNetB0(include_top=False, weights="imagenet", input_shape=(SIZE, SIZE, 3))

    norm.finalize_state()  # without Keras' extra scale the features differ: the check below can fail
    pixels = pixels_of(4)
    assert not np.allclose(np.asarray(source(keras_preprocess("efficientnet_b0", pixels))),
                           np.asarray(reference(keras_preprocess("efficientnet_b0", pixels))), rtol=1e-2)
    check_against_keras("efficientnet_b0", resolve_weights(spec, str(path)), reference, pixels)


@pytest.mark.heavy  # costly end to end: .ci/run runs it, ./scripts/test.sh leaves it out
def test_densenet_extracts_fits_explains_exports_and_describes_as_keras_does(tmp_path):
    """extract → fit-head → explain → export with DenseNet121 (random weights, 32 px), checked against Keras:

    the stored features are Keras' DenseNet121 (the export's trunk, built from the same seed) on Keras'
    ``preprocess_input`` of the decoded pixels; the export's probabilities are the run's; ``describe`` counts
    the backbone's parameters as Keras' ``count_params()`` does. (The tails are checked on the other three.)
    """
    from xrayfeat.data import images
    from xrayfeat.runs.export import build_portable_model
    from xrayfeat.store.feature_store import FeatureStore

    data = write_tiny_dataset(tmp_path / "data", per_split=(("train", 4), ("test", 2)), size=40)
    run = xf.fit_head(data, "densenet121", weights="none", image_size=SIZE, epochs=1, steps_per_epoch=2, units=8,
                      baselines=(), n_bootstrap=0, head_backend="tensorflow", cache_dir=tmp_path / "cache",
                      out=tmp_path / "run")
    assert run.record.store["fingerprint"]["preprocess"] == "torch"
    xf.explain(run.path, data / "test" / "a", tmp_path / "explained")
    assert len(list((tmp_path / "explained").rglob("*.png"))) >= 2

    model, _ = build_portable_model(run)
    trunk = model.get_layer("densenet121_to_relu")
    table = run.predictions()
    pixels = np.stack([images.read_image(data / p, SIZE) for p in table.path])
    expected = table[[f"head:{c}" for c in run.classes]].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(np.asarray(model(pixels)), expected, rtol=1e-4, atol=1e-5)

    for name in REGISTRY["densenet121"].cut_points:
        trunk.get_layer(name)  # every cut point is a layer of Keras' model
    final = np.asarray(trunk(keras_preprocess("densenet121", pixels)))
    stored = FeatureStore.at(run.record.store["path"]).read(list(table.sha256))
    scale = np.abs(final).max()
    np.testing.assert_allclose(stored["spatial"], final, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(stored["pooled"], final.mean(axis=(1, 2)), rtol=1e-3, atol=1e-4 * scale)

    proc = run_cli_here("describe", "-b", "densenet121", "--n-classes", "2", "--image-size", SIZE, "--json")
    assert proc.returncode == 0, proc.stderr
    described = json.loads(proc.stdout)
    assert described["backbone_params"] == trunk.count_params() == REGISTRY["densenet121"].params == 7_037_504
    assert described["total"] == described["trainable"] + described["non_trainable"] > trunk.count_params()
