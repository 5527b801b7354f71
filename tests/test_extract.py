"""Extraction into the store: fidelity, reuse, errors, backends (resumption and concurrency: tests/test_extract_resume.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_cli
from xrayfeat.data import images
from xrayfeat.backbones import REGISTRY, SEED_BACKBONES
from xrayfeat.data.datasets import discover
from xrayfeat.errors import DeviceError, ImageReadError
from xrayfeat.extraction.pipeline import extract
from xrayfeat.extraction.selection import open_store
from xrayfeat.options.settings import FeatureOptions, RunOptions

# small inputs: shape and arithmetic are what matter here, not accuracy
SIZES = {"vgg16": 32, "inception_v3": 75}


def run(cache, **kw):
    return RunOptions(cache_dir=cache, workers=kw.pop("workers", 0), batch_size=kw.pop("batch_size", 4), **kw)


@pytest.mark.parametrize("backbone", SEED_BACKBONES)  # the other backbones: tests/test_backbones.py, cheaper
def test_stored_features_equal_the_backbone_on_the_same_pixels(tmp_path, tiny_data, backbone):
    import keras

    size = SIZES[backbone]
    options = FeatureOptions(backbone, weights="none", image_size=size)
    dataset = discover(tiny_data)
    [result] = extract(dataset, options, run(tmp_path / "cache"))
    assert result.extracted == len(dataset) and result.random_weights

    # reference: Keras' own preprocess_input and a freshly built backbone with the same seed
    keras.utils.set_random_seed(0)
    spec = REGISTRY[backbone]
    reference = getattr(keras.applications, spec.constructor)(include_top=False, weights=None, input_shape=(size, size, 3))
    module = keras.applications.vgg16 if backbone == "vgg16" else keras.applications.inception_v3
    pixels = np.stack([images.read_image(p, size) for p in dataset.paths]).astype("float32")
    expected = np.asarray(reference.predict_on_batch(module.preprocess_input(pixels.copy())))

    stored = open_store(options, tmp_path / "cache").read(dataset.hashes)
    np.testing.assert_allclose(stored["spatial"], expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    np.testing.assert_allclose(stored["pooled"], expected.mean(axis=(1, 2)), rtol=2e-3, atol=1e-3 * np.abs(expected).max())


def test_second_run_reuses_everything_and_one_new_image_costs_one_row(tmp_path, tiny_data):
    options = FeatureOptions("vgg16", weights="none", image_size=32)
    cache = tmp_path / "cache"
    first = extract(discover(tiny_data), options, run(cache))[0]
    again = extract(discover(tiny_data), options, run(cache))[0]
    assert (again.extracted, again.reused) == (0, first.images)
    shutil.copy(next((tiny_data / "train" / "a").glob("*.png")), tiny_data / "train" / "b" / "copy_of_a.png")
    from PIL import Image

    Image.new("L", (40, 40), 77).save(tiny_data / "test" / "a" / "new.png")
    third = extract(discover(tiny_data), options, run(cache))[0]
    # the copy has the same bytes as an existing image: nothing to compute for it
    assert (third.images, third.extracted, third.reused) == (first.images + 2, 1, first.images + 1)
    assert len(open_store(options, cache)) == first.images + 1


def test_same_image_in_two_datasets_is_computed_once(tmp_path, tiny_data):
    options = FeatureOptions("vgg16", weights="none", image_size=32)
    cache = tmp_path / "cache"
    subset = tmp_path / "two"
    shutil.copytree(tiny_data / "train", subset / "train")
    extract(discover(subset), options, run(cache))
    result = extract(discover(tiny_data), options, run(cache))[0]
    assert result.reused == 12 and result.extracted == 6


def test_two_backbones_share_one_pass(tmp_path, tiny_data):
    features = [FeatureOptions("vgg16", weights="none", image_size=80), FeatureOptions("inception_v3", weights="none", image_size=80)]
    results = extract(discover(tiny_data), features, run(tmp_path / "cache"))
    assert [r.extracted for r in results] == [18, 18]
    assert results[0].store != results[1].store


def test_process_pool_gives_the_same_rows(tmp_path, tiny_data):
    options = FeatureOptions("vgg16", weights="none", image_size=32)
    dataset = discover(tiny_data)
    extract(dataset, options, run(tmp_path / "inline"))
    extract(dataset, options, run(tmp_path / "pool", workers=2))
    a = open_store(options, tmp_path / "inline").read(dataset.hashes)
    b = open_store(options, tmp_path / "pool").read(dataset.hashes)
    np.testing.assert_array_equal(a["spatial"], b["spatial"])


def test_corrupt_image_fails_naming_the_file_or_is_skipped(tmp_path, tiny_data):
    bad = tiny_data / "train" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    options = FeatureOptions("vgg16", weights="none", image_size=32)
    with pytest.raises(ImageReadError, match="broken.png.*--on-error skip"):
        extract(discover(tiny_data), options, run(tmp_path / "cache"))
    [result] = extract(discover(tiny_data), options, run(tmp_path / "cache", on_error="skip"))
    assert result.skipped == 1 and "broken.png" in result.skipped_files[0]
    assert result.extracted + result.reused == result.images - 1


def test_fingerprint_separates_precision_and_layer(tmp_path, tiny_data):
    dataset = discover(tiny_data)
    base = FeatureOptions("vgg16", weights="none", image_size=32)
    extract(dataset, base, run(tmp_path / "cache"))
    cut = FeatureOptions("vgg16", weights="none", image_size=32, layer="vgg16:block4_pool")
    [result] = extract(dataset, cut, run(tmp_path / "cache"))
    assert result.extracted == len(dataset)
    assert open_store(cut, tmp_path / "cache").read(dataset.hashes[:1])["spatial"].shape == (1, 2, 2, 512)


def test_gpu_requested_without_gpu_is_one_clear_error(tmp_path, tiny_data):
    from xrayfeat.devices import gpu_available

    if gpu_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(DeviceError, match="--device gpu: the .* backend sees no GPU"):
        extract(discover(tiny_data), FeatureOptions("vgg16", weights="none", image_size=32), run(tmp_path / "c", device="gpu"))


# --------------------------------------------------------------------------- as a user runs it


def export(data, cache, out, *extra, env=None):
    proc = run_cli("cache", "export", data, "-b", "vgg16", "--weights", "none", "--image-size", "32",
                   "--cache-dir", cache, "--out", out, *extra, env=env)
    assert proc.returncode == 0, proc.stderr
    return np.load(out)


def assert_same_export(a, b):
    assert set(a.files) == set(b.files) == {"sha256", "path", "label", "split", "pooled", "spatial"}
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def extract_cmd(data, cache, *extra):
    return [sys.executable, "-m", "xrayfeat", "extract", str(data), "-b", "vgg16", "--weights", "none",
            "--image-size", "32", "--cache-dir", str(cache), "--batch-size", "2", "--workers", "0", *extra]


def test_warm_run_does_not_import_the_framework(tmp_path, tiny_data):
    run_cli(*extract_cmd(tiny_data, tmp_path / "cache")[3:], check=True)
    code = (
        "import sys, json; from xrayfeat.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        "print(json.dumps({'code': code, 'loaded': sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules)}))"
    )
    proc = subprocess.run([sys.executable, "-c", code, *extract_cmd(tiny_data, tmp_path / "cache")[3:], "--json"],
                          capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[0])["extracted"] == 0
    assert json.loads(lines[-1]) == {"code": 0, "loaded": []}


@pytest.mark.slow
@pytest.mark.heavy  # costly end to end: .ci/run runs it, ./scripts/test.sh leaves it out
def test_jax_backend_extracts_into_its_own_store(tmp_path, tiny_data):
    pytest.importorskip("jax")
    env = {"KERAS_BACKEND": "jax"}
    proc = run_cli(*extract_cmd(tiny_data, tmp_path / "cache")[3:], "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    store = json.loads(proc.stdout)["store"]
    fingerprint = json.loads(open(os.path.join(store, "fingerprint.json")).read())
    assert fingerprint["backend"] == "jax"
    data = export(tiny_data, tmp_path / "cache", tmp_path / "jax.npz", env=env)
    assert np.isfinite(data["pooled"]).all() and data["pooled"].shape == (18, 512)


# --------------------------------------------------------------------------- files that cannot be decoded, remembered


def corrupt(data):
    bad = data / "train" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    return bad


WARM = (
    "import sys, json; from xrayfeat.cli.main import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
    "print(json.dumps({'code': code, 'loaded': sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules)}))"
)


def test_a_rerun_skips_a_known_unreadable_file_without_loading_the_framework(tmp_path, tiny_data):
    bad = corrupt(tiny_data)
    first = run_cli(*extract_cmd(tiny_data, tmp_path / "cache")[3:], "--on-error", "skip", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["skipped"] == 1 and "remembered" not in first.stderr
    proc = subprocess.run([sys.executable, "-c", WARM, *extract_cmd(tiny_data, tmp_path / "cache")[3:],
                           "--on-error", "skip", "--json"], capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"code": 0, "loaded": []}, proc.stderr
    result = json.loads("\n".join(lines[:-1]))
    assert (result["extracted"], result["reused"], result["skipped"]) == (0, 18, 1)
    assert str(bad) in result["skipped_files"][0] and result["remembered_unreadable"] == 1
    assert "1 known unreadable file skipped (remembered from an earlier run)" in proc.stderr


def test_a_known_unreadable_file_fails_fast_or_is_retried_by_another_decoder(tmp_path, tiny_data, monkeypatch):
    from xrayfeat.extraction import pipeline as extraction

    bad = corrupt(tiny_data)
    options = FeatureOptions("vgg16", weights="none", image_size=32)
    [first] = extract(discover(tiny_data), options, run(tmp_path / "cache", on_error="skip"))
    assert first.skipped == 1 and first.remembered == 0

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was built for a file known to be unreadable")

    with monkeypatch.context() as patch:
        patch.setattr(extraction, "_build", no_backbone)
        [again] = extract(discover(tiny_data), options, run(tmp_path / "cache", on_error="skip"))
        assert (again.skipped, again.remembered, again.extracted, again.reused) == (1, 1, 0, 18)
        assert again.skipped_reasons == first.skipped_reasons
        with pytest.raises(ImageReadError, match="broken.png.*--on-error skip"):  # named without building a model
            extract(discover(tiny_data), options, run(tmp_path / "cache"))
    shutil.copy(bad, tiny_data / "test" / "b" / "same_bytes.png")  # the bytes are what is remembered, not the path
    [copy] = extract(discover(tiny_data), options, run(tmp_path / "cache", on_error="skip"))
    assert (copy.skipped, copy.remembered) == (2, 2)

    monkeypatch.setattr(extraction, "decoder_version", lambda: "a decoder that may read it")
    [retried] = extract(discover(tiny_data), options, run(tmp_path / "cache", on_error="skip"))
    assert (retried.skipped, retried.remembered) == (2, 0)
