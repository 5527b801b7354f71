"""``xrayfeat export``: one model from uint8 pixels to the run's probabilities, loadable with Keras alone.

The slow tests share the session's tiny run (VGG16, random weights, 32 px) and check the
exported model in fresh processes that import only keras and numpy, on the pixels
xrayfeat's own decoder produces (the SavedModel, served by TensorFlow alone:
tests/test_export_savedmodel.py).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import run_cli, run_cli_here
from xrayfeat.runs.export import read_export

SIZE = 32
# The store keeps features as float16; the run's predictions.csv (6 significant
# digits) came from the head on those rounded features, the export feeds it the
# float32 map. Measured: largest difference 8.6e-6 (VGG16, random weights, 32 px);
# the tolerance sits just above it.
ATOL = 2e-5

# Runs in a fresh interpreter: keras and numpy only. argv: model, pixels.npy, out.npy.
KERAS_CHILD = """
import json, sys
import numpy as np
import keras
model = keras.saving.load_model(sys.argv[1], compile=False)
np.save(sys.argv[3], np.asarray(model.predict(np.load(sys.argv[2]), verbose=0)))
print(json.dumps({
    "backend": keras.backend.backend(),
    "optimizer": repr(getattr(model, "optimizer", None)),
    "input_dtype": str(model.inputs[0].dtype),
    "input_shape": list(model.inputs[0].shape),
    "output_shape": list(model.outputs[0].shape),
    "xrayfeat_imported": sorted(m for m in sys.modules if m.startswith("xrayfeat")),
}))
"""


def _child(code: str, *args, env=None) -> dict:
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=600, cwd=os.path.dirname(str(args[0])))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export_inputs(shared_run, root) -> dict:
    """The session's trained binary run (tests/conftest.py; only its head is exported), the test pixels decoded
    as xrayfeat decodes them, and the run's probabilities. ``root`` is the module's own folder, where the
    exports go (the run's folder is shared, and export never writes into it)."""
    from xrayfeat.data.images import read_image

    run = shared_run.run
    assert run.record.features["image_size"] == SIZE
    predictions = run.predictions()
    pixels = np.stack([read_image(shared_run.data / path, SIZE) for path in predictions["path"]])
    np.save(root / "pixels.npy", pixels)
    expected = predictions[[f"head:{c}" for c in run.classes]].to_numpy(dtype=np.float64)
    return {"root": root, "run": run, "pixels": root / "pixels.npy", "expected": expected}


@pytest.fixture(scope="module")
def tiny_run(shared_run, tmp_path_factory):
    return export_inputs(shared_run, tmp_path_factory.mktemp("export"))


def _export(run, out, *extra) -> dict:
    proc = run_cli_here("export", run.path, "--out", out, *extra, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _h5_groups(keras_file) -> set[str]:
    """Top-level groups of the weights inside a .keras archive (``optimizer`` when one was saved)."""
    import h5py

    with zipfile.ZipFile(keras_file) as archive:
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
            return set(weights.keys())


@pytest.fixture(scope="module")
def deployed(tiny_run) -> dict:
    """The shared run exported once with no option (format keras), as ``export --json`` reported it."""
    out = tiny_run["root"] / "deploy"
    return {"out": out, "result": _export(tiny_run["run"], out)}


@pytest.mark.slow
@pytest.mark.heavy  # costly end to end: .ci/run runs it, ./scripts/test.sh leaves it out
def test_keras_export_reproduces_the_run_in_a_keras_only_process(tiny_run, deployed):
    run, root = tiny_run["run"], tiny_run["root"]
    out, result = deployed["out"], deployed["result"]
    model_file = out / "model.keras"
    assert result["model"] == str(model_file) and model_file.is_file()
    assert result["classes"] == ["a", "b"] and result["image_size"] == SIZE and result["input_dtype"] == "uint8"
    assert result["random_weights"] is True and result["weights"] == "none:seed=0"

    info = json.loads((out / "export.json").read_text())
    assert read_export(out) == info  # what export_run writes is what its schema holds
    from xrayfeat.fileio import file_digest

    assert info["sha256"] == {"model.keras": file_digest(model_file)}
    assert info["input"].startswith(f"uint8 RGB {SIZE}x{SIZE}, resized as xrayfeat.data.images does")
    assert info["input_shape"] == [None, SIZE, SIZE, 3] and info["input_dtype"] == "uint8"
    assert info["classes"] == run.classes and info["output_shape"] == [None, 2]
    assert (info["backbone"], info["layer"], info["preprocess"]) == ("vgg16", "block5_pool", "caffe")
    assert info["weights"]["identity"] == "none:seed=0"
    assert info["run"]["head_sha256"] == run.record.artifacts["head"].sha256
    assert info["xrayfeat"] == __import__("xrayfeat").__version__

    # the .keras file is backend-neutral: load it on both backends, with nothing of xrayfeat
    for backend in ("tensorflow", "jax"):
        probs = root / f"probs-{backend}.npy"
        seen = _child(KERAS_CHILD, model_file, tiny_run["pixels"], probs,
                      env={"KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"})
        assert seen["backend"] == backend
        assert seen["xrayfeat_imported"] == []
        assert seen["optimizer"] == "None"
        assert seen["input_dtype"] == "uint8" and seen["input_shape"] == [None, SIZE, SIZE, 3]
        assert seen["output_shape"] == [None, 2]
        got = np.load(probs)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(got, tiny_run["expected"], rtol=0, atol=ATOL)

    # no optimizer state: head.keras carries Adam's moments, the export does not, and its size is its weights
    head_file = run.path / "head.keras"
    assert "optimizer" in _h5_groups(head_file)
    assert "optimizer" not in _h5_groups(model_file)
    size = model_file.stat().st_size
    assert size == result["bytes"]
    assert size <= 4 * result["params"] * 1.005 + 65536, (size, result["params"])
    backbone_bytes = 4 * (result["params"] - run.head().params["total"])
    assert size < head_file.stat().st_size + backbone_bytes


@pytest.mark.slow
def test_a_previous_export_is_replaced_and_a_foreign_folder_is_refused(tiny_run):
    import keras

    from xrayfeat.runs.export import ExportError, export_run

    run, root = tiny_run["run"], tiny_run["root"]
    out = root / "again"
    export_run(run, out, format="savedmodel" if keras.backend.backend() == "tensorflow" else "keras")
    second = export_run(run, out)
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "export.json", "model.keras"]
    assert json.loads((out / "export.json").read_text())["sha256"] == second.sha256
    assert not [p for p in root.iterdir() if p.name.startswith(".again.")]  # no temporary folder left

    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="holds other files"):
        export_run(run, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


@pytest.mark.slow
@pytest.mark.parametrize("extra,message", [
    (("--format", "savedmodel"), "KERAS_BACKEND=tensorflow"),  # SavedModel on jax
    ((), "KERAS_BACKEND=tensorflow"),  # random weights drawn by another backend than the store's
])
def test_refusals_on_another_backend_are_one_line(tiny_run, extra, message):
    if tiny_run["run"].record.store["fingerprint"]["backend"] != "tensorflow":
        pytest.skip("this check needs a store extracted on TensorFlow")
    out = tiny_run["root"] / "jax-out"
    proc = run_cli("export", tiny_run["run"].path, "--out", out, *extra, env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_weights_other_than_the_stores_are_refused(tiny_run, tmp_path, monkeypatch):
    from xrayfeat import errors
    from xrayfeat.runs import export

    monkeypatch.setattr(export, "_stored_digest", lambda record: "0" * 64)
    with pytest.raises(errors.WeightsError, match="weights digest"):
        export.export_run(tiny_run["run"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_exporting_a_folder_that_is_not_a_run_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "missing", tmp_path / "empty"):
        proc = run_cli("export", target, "--out", tmp_path / "out")
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0
        assert proc.stderr.startswith("xrayfeat: error:") and "not a run folder" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["caffe", "tf"])
def test_portable_preprocessing_is_bit_identical_to_extraction(mode):
    import keras

    from xrayfeat.extraction.building import _preprocess_layer
    from xrayfeat.runs.export import portable_preprocess

    pixels = np.arange(256 * 3, dtype=np.int64).reshape(1, 16, 16, 3) % 256
    pixels = np.concatenate([pixels, pixels[:, ::-1]]).astype(np.uint8)  # every value in every channel
    inputs = keras.Input((16, 16, 3), dtype="uint8")
    x = inputs
    for layer in portable_preprocess(mode):
        x = layer(x)
    got = np.asarray(keras.Model(inputs, x)(pixels))
    want = np.asarray(_preprocess_layer(mode)(pixels))
    assert got.dtype == want.dtype == np.float32
    assert np.array_equal(got, want)


def test_the_export_carries_the_contract_and_the_model_card(tiny_run, deployed):
    """export.json holds the decision, calibration, metrics with CIs, warnings, weights and preprocessing of the
    run's record; MODEL_CARD.md says them in Mitchell et al.'s sections, random weights and the shortcut first."""
    from xrayfeat.fileio import file_digest
    from xrayfeat.runs.model_card import RANDOM_LINE, SECTIONS
    from xrayfeat.runs.prediction import run_decisions

    run, out, result = tiny_run["run"], deployed["out"], deployed["result"]
    info = read_export(out)
    record, metrics = run.record, run.metrics
    assert result["card"] == str(out / "MODEL_CARD.md") and info["card"] == "MODEL_CARD.md"
    assert info["run_id"] == file_digest(run.path / "config.json") == info["run"]["config_sha256"]
    # the decision predict applies by default, with the thresholds chosen on validation
    decision = run_decisions(run, ["head"])["head"]
    assert (info["decision"]["rule"], info["decision"]["thresholds"]) == (decision["decision"], decision["thresholds"])
    assert result["decision"] == decision["decision"] == "threshold"
    assert info["decision"]["chosen_on"] == "validation" and info["decision"]["positive"] == metrics["positive"]
    assert info["calibration"]["method"] is None and info["calibration"]["applied_in_model"] is False
    # internal metrics with their intervals, per class, and the baselines (the pixels sentinel among them)
    head = metrics["head"]
    for figure in ("accuracy", "balanced_accuracy", "roc_auc"):
        assert info["metrics"]["head"][figure] == {"value": head[figure], "ci": head["ci"][figure]}
    assert info["metrics"]["head"]["n"] == head["n"] == record.counts["test"]
    positive = metrics["positive"]
    point = head["operating_points"]["classes"][positive]
    assert info["metrics"]["per_class"][positive]["at_threshold"]["sensitivity"] == point["at_threshold"]["sensitivity"]
    assert sorted(info["metrics"]["baselines"]) == sorted(metrics["baselines"]) == ["logreg", "pixels"]
    assert info["external"] == {}
    # the warnings as the record holds them, random weights first; the weights' provenance; the preprocessing
    assert info["warnings"][0] == {"kind": "random_weights", "message": record.warnings[0].message}
    assert sorted(map(str, (w["message"] for w in info["warnings"]))) == sorted(w.message for w in record.warnings)
    assert info["weights_file"] == {"kind": "none", "file": None, "md5": None, "sha256": None, "random": True, "seed": 0}
    assert info["preprocessing"]["mode"] == "caffe" and info["preprocessing"]["image_size"] == SIZE
    assert info["preprocessing"]["features_rounded_to"] == record.store["fingerprint"]["store_dtype"] == "float16"
    assert info["versions"]["xrayfeat"] == info["xrayfeat"] and info["versions"]["trained_with"] == record.versions
    assert info["data"]["counts"] == record.counts and info["intended_use"].startswith("Research use only")

    card = (out / "MODEL_CARD.md").read_text()
    lines = card.splitlines()
    assert lines[0] == f"# Model card: {run.path.name}"
    assert lines[2:5] == ["> **Read this first**", ">", f"> - **{RANDOM_LINE}**"]
    shortcut = next(w.message for w in record.warnings if w.kind == "shortcut")  # the shared run's pixels ≈ head
    assert lines[5].startswith("> - **Shortcut sentinel:** ") and lines[5].endswith(shortcut[-40:])
    headings = [line[3:] for line in lines if line.startswith("## ")]
    assert headings == list(SECTIONS)
    assert card.index("## Intended use") < card.index("Research use only") < card.index("## Factors")
    assert f"- Trained on: `{record.data}`" in card
    assert f"| accuracy | {head['accuracy']:.3f} [{head['ci']['accuracy'][0]:.3f}, {head['ci']['accuracy'][1]:.3f}] |" in card
    assert f"thresholds `{positive}` {decision['thresholds'][positive]:.4f} (rule youden, chosen on validation)" in card

    # an external evaluation that scores lower is said in the box, after the sentinel, with both figures
    from xrayfeat.runs.model_card import model_card

    worse = {**info["metrics"]["head"], "accuracy": {"value": 0.25, "ci": [0.0, 0.5]}}
    info["external"] = {"site_b": {"data": "site_b", "created": "now", "n": 4, "excluded": 0, "head": worse,
                                   "per_class": {}, "warnings": []}}
    lines = model_card(info).splitlines()
    drop = f"> - **External drop (site_b):** accuracy {head['accuracy']:.3f} internal → 0.250 external ({0.25 - head['accuracy']:+.3f})"
    assert lines[6] == drop, lines[:8]


def test_calibration_layers_match_numpy(tmp_path):
    """The isotonic maps as Keras layers give numpy.interp's values (clamped at both ends), columns kept apart."""
    import keras

    from xrayfeat.runs.export import _interp_layers

    rng = np.random.default_rng(0)
    x1 = np.sort(rng.random(40)).astype(np.float32).astype(np.float64)
    x1 = np.unique(x1)
    y1 = np.sort(rng.random(len(x1)))
    # breakpoints are float32 values, as fit-head's are (the head's float32 probabilities); a steep segment 4 ulp wide
    a = np.float32(0.2)
    steep = [float(a), float(a + 4 * np.spacing(a)), float(np.float32(0.9))]
    maps = [{"x": x1.tolist(), "y": y1.tolist()}, None, {"x": [0.3], "y": [0.7]},  # None: unchanged; one point: constant
            {"x": steep, "y": [0.0, 0.5, 1.0]}]
    p = np.concatenate([rng.random((500, 4)), [[0.0] * 4, [1.0] * 4, [0.2, 0.5, 0.3, a + 2 * np.spacing(a)]]]).astype(np.float32)
    inputs = keras.Input((4,), dtype="float32")
    z = inputs
    for layer in _interp_layers(maps, "cal"):
        z = layer(z)
    got = np.asarray(keras.Model(inputs, z)(p), dtype=np.float64)
    want = np.stack([np.interp(p[:, 0], x1, y1), p[:, 1], np.full(len(p), 0.7),
                     np.interp(p[:, 3], steep, [0.0, 0.5, 1.0])], axis=1)
    assert want[-1, 3] == pytest.approx(0.25)  # half-way up the steep segment's first half
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_a_missing_converter_is_one_line_naming_the_extra(shared_run, tmp_path, monkeypatch):
    import keras

    from xrayfeat.runs import export

    if keras.backend.backend() != "tensorflow":
        pytest.skip("--format onnx needs the TensorFlow backend")
    monkeypatch.setattr(export, "_missing", lambda modules: ["tf2onnx"])
    proc = run_cli_here("export", shared_run.path, "--out", tmp_path / "onnx", "--format", "onnx")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and 'pip install "xrayfeat[export]"' in proc.stderr
    assert not (tmp_path / "onnx").exists()
