"""``xrayfeat export --format onnx|litert``: each file loaded by its own runtime, in a process of its own, gives
``predict``'s probabilities within 1e-4 on the same pixels (marker ``heavy``: converting VGG16 takes tens of seconds).

Two runs: the session's shared run (uncalibrated, sigmoid head) and one trained here with ``--calibrate isotonic``
(the maps are inside the exported model), so the calibration travels in every format.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SHARED_RUN_OPTIONS
from test_export import SIZE, _child, _export
from xrayfeat.runs.export import read_export

pytestmark = pytest.mark.heavy

ONNX_CHILD = """
import json, sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
np.save(sys.argv[3], session.run(["probabilities"], {"pixels": np.load(sys.argv[2])})[0])
print(json.dumps({"inputs": [[i.name, i.type, i.shape[1:]] for i in session.get_inputs()],
                  "outputs": [o.name for o in session.get_outputs()],
                  "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("xrayfeat", "tensorflow", "keras"))}))
"""

LITERT_CHILD = """
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
runner = Interpreter(model_path=sys.argv[1]).get_signature_runner()
np.save(sys.argv[3], runner(pixels=np.load(sys.argv[2]))["probabilities"])
print(json.dumps({"imported": sorted(m for m in sys.modules if m.split(".")[0] in ("xrayfeat", "tensorflow", "keras"))}))
"""


@pytest.fixture(scope="module")
def runs(shared_run, tmp_path_factory):
    """Both runs, their test pixels as xrayfeat decodes them, and ``xf.predict``'s head probabilities on them."""
    import keras

    import xrayfeat as xf
    from xrayfeat.data.images import read_image

    if keras.backend.backend() != "tensorflow":
        pytest.skip("--format onnx and litert need the TensorFlow backend")
    root = tmp_path_factory.mktemp("export-formats")
    calibrated = root / "calibrated"
    options = {**SHARED_RUN_OPTIONS, "baselines": ("logreg",)}
    xf.fit_head(shared_run.data, "vgg16", cache_dir=shared_run.copy_cache(root / "cache"), out=calibrated,
                calibrate="isotonic", **options)
    out = {}
    for name, path in (("shared", shared_run.path), ("isotonic", calibrated)):
        run = xf.load_run(path)
        images = sorted((shared_run.data / "test").rglob("*.png"))
        table = xf.predict(run, images, out=root / f"{name}.csv", models=["head"], progress=False).table
        pixels = np.stack([read_image(p, SIZE) for p in table["path"]])
        np.save(root / f"{name}-pixels.npy", pixels)
        expected = table[[f"head:{c}" for c in run.classes]].to_numpy(np.float64)
        out[name] = {"run": run, "pixels": root / f"{name}-pixels.npy", "expected": expected, "root": root}
    assert out["isotonic"]["run"].metrics["calibrated"]["method"] == "isotonic"
    return out


@pytest.mark.parametrize("name", ["shared", "isotonic"])
@pytest.mark.parametrize("format,child,file", [("onnx", ONNX_CHILD, "model.onnx"), ("litert", LITERT_CHILD, "model.tflite")])
def test_each_format_in_its_runtime_gives_predicts_probabilities(runs, name, format, child, file):
    case = runs[name]
    out = case["root"] / f"{name}-{format}"
    result = _export(case["run"], out, "--format", format)
    assert result["model"] == str(out / file) and result["format"] == format
    info = read_export(out)
    assert info["format"] == format and list(info["sha256"]) == [file]
    assert (out / "MODEL_CARD.md").is_file()
    calibrated = name == "isotonic"
    assert info["calibration"]["applied_in_model"] is calibrated and result["calibration_applied"] is calibrated

    probs = case["root"] / f"{name}-{format}.npy"
    seen = _child(child, out / file, case["pixels"], probs)
    assert seen["imported"] == []  # the runtime alone: no xrayfeat, TensorFlow or Keras
    if format == "onnx":
        assert seen["inputs"] == [["pixels", "tensor(uint8)", [SIZE, SIZE, 3]]]
        assert seen["outputs"] == ["probabilities"]
    np.testing.assert_allclose(np.load(probs), case["expected"], rtol=0, atol=1e-4)


def test_export_json_of_a_calibrated_run_holds_its_calibrator(runs):
    case = runs["isotonic"]
    out = case["root"] / "isotonic-keras"
    _export(case["run"], out)
    info = json.loads((out / "export.json").read_text())
    head = case["run"].metrics["calibrated"]["models"]["head"]
    assert info["calibration"]["calibrator"] == {"isotonic": head["isotonic"]}
    assert info["calibration"]["method"] == "isotonic" and info["calibration"]["applied_in_model"] is True
    assert info["calibration"]["test"] == head["test"]
